//! The status page, on its own listener (`status.listen`), read-only:
//!
//! * `/`: one self-contained HTML page (`page.html`, embedded; no external
//!   assets) that draws the link and follows it live;
//! * `/events`: server-sent events, one `status` event with the whole view
//!   (JSON) on connecting and on every change of the link;
//! * `/status`: the same view as JSON.
//!
//! One feed task per sidecar follows the link through the same stream the
//! `WatchStatus` RPC uses (`rpc::admin::status_stream`), adds the newest
//! history records, and publishes the view on a `watch` channel that every
//! page reads: the number of viewers does not change the load on etcd.

mod view;

use crate::http::Body;
use crate::sidecar::Shared;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Method, Request, Response, StatusCode};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, info, info_span, warn, Instrument};

/// The page, embedded in the binary.
const PAGE: &str = include_str!("page.html");

/// How often an idle event stream sends a comment, so proxies and the
/// browser see the connection alive.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// How often the view is rebuilt without a change in etcd, so lease ages
/// and the page's "updated" stay current (the page calls a view older than
/// three of these stale).
const REFRESH: Duration = Duration::from_secs(5);

/// How often an idle feed looks for a viewer.
const VIEWER_POLL: Duration = Duration::from_millis(100);

/// How long `/status` waits for a view when nobody was looking (the feed
/// starts, reads etcd and asks the members; with etcd unreachable it gives
/// up and shows the last view marked stale).
const FIRST_VIEW: Duration = Duration::from_secs(5);

/// How soon a browser reconnects a closed event stream.
const RETRY_MS: u64 = 1000;

/// The newest view as JSON, shared by `/status` and `/events`.
type Latest = watch::Receiver<Option<Arc<str>>>;

/// Starts the feed and the page's server on `listener`.
pub(crate) fn start(shared: Arc<Shared>, listener: tokio::net::TcpListener) {
    let (tx, rx) = watch::channel(None);
    let span =
        info_span!("status_page", link = %shared.config.link, member = %shared.config.member_id);
    if let Ok(addr) = listener.local_addr() {
        info!(parent: &span, %addr, "status page listening (status.listen)");
        if !addr.ip().is_loopback() {
            warn!(parent: &span, %addr, "status.listen is not a loopback address: anyone who reaches it sees the link (read-only, no TLS); put an authenticating proxy in front or use 127.0.0.1 with kubectl port-forward (docs/security.md)");
        }
    }
    tokio::spawn(feed(shared.clone(), tx).instrument(span.clone()));
    let cfg = shared.config.status.clone();
    let max_age = cfg.stream_max_age;
    tokio::spawn(
        crate::http::serve_bounded(
            listener,
            cfg.max_connections,
            cfg.header_timeout,
            move |req| {
                let latest = rx.clone();
                async move { answer(&req, latest, max_age).await }
            },
        )
        .instrument(span),
    );
}

/// Whether anyone but the server itself (which keeps one receiver to clone
/// from) looks at the view: an open event stream or a `/status` waiting.
fn watched(tx: &watch::Sender<Option<Arc<str>>>) -> bool {
    tx.receiver_count() > 1
}

/// Follows the link and publishes the page's view on every change, while
/// anyone looks (every sidecar serves the page, and each view asks every
/// member for its state: followed by all at once, a switch of N members
/// would cost N² calls per change); when etcd cannot be watched, keeps the
/// last view marked stale and tries again every second.
async fn feed(shared: Arc<Shared>, tx: watch::Sender<Option<Arc<str>>>) {
    let me = shared.config.member_id.clone();
    let mut last: Option<view::PageStatus> = None;
    let mut history = Vec::new();
    loop {
        if !watched(&tx) {
            // Nobody looks: the next one waits for a fresh view rather
            // than reading an old one.
            tx.send_replace(None);
            while !watched(&tx) {
                tokio::time::sleep(VIEWER_POLL).await;
            }
        }
        let error = match crate::rpc::admin::status_stream(shared.clone(), Some(REFRESH)).await {
            Ok(mut rx) => loop {
                if !watched(&tx) {
                    break None;
                }
                let Ok(next) = tokio::time::timeout(3 * REFRESH, rx.recv()).await else {
                    // Neither a change nor a refresh: etcd hangs. Say so
                    // and keep waiting on the same stream.
                    if let Some(mut v) = last.clone() {
                        v.error = Some(format!(
                            "this view is stale: {me} has read nothing from etcd for {:?} (slow or unreachable); still trying",
                            3 * REFRESH
                        ));
                        publish(&tx, &v);
                    }
                    continue;
                };
                match next {
                    Some(Ok(status)) => {
                        match shared.store.history(crate::limits::PAGE_HISTORY).await {
                            Ok(h) => history = h,
                            Err(e) => {
                                debug!(error = %e, "cannot read the history; showing the last read")
                            }
                        }
                        let v = view::build(
                            &status,
                            &history,
                            &me,
                            crate::sidecar::leader::now_rfc3339(),
                        );
                        publish(&tx, &v);
                        last = Some(v);
                    }
                    Some(Err(status)) => break Some(status.message().to_string()),
                    None => break Some("the status stream ended".to_string()),
                }
            },
            Err(status) => Some(status.message().to_string()),
        };
        let Some(error) = error else {
            continue;
        };
        warn!(%error, "status page: cannot follow the link; retrying in 1s");
        let stale = last.clone().map(|mut v| {
            v.error = Some(format!(
                "this view is stale: {me} cannot watch etcd ({error}); retrying"
            ));
            v
        });
        if let Some(v) = stale {
            publish(&tx, &v);
        } else {
            let msg = serde_json::json!({
                "link": shared.config.link,
                "served_by": me,
                "error": format!("{me} cannot read the link from etcd ({error}); retrying"),
            });
            tx.send_replace(Some(Arc::from(msg.to_string())));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn publish(tx: &watch::Sender<Option<Arc<str>>>, v: &view::PageStatus) {
    match serde_json::to_string(v) {
        Ok(json) => {
            tx.send_replace(Some(Arc::from(json)));
        }
        Err(e) => warn!(error = %e, "cannot encode the status page's view"),
    }
}

fn full(status: StatusCode, body: impl Into<Bytes>, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()).boxed());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    secure(h);
    resp
}

/// Headers every answer carries: nothing cached, nothing framed or sniffed,
/// nothing loaded from elsewhere (the page has no external assets).
fn secure(h: &mut hyper::HeaderMap) {
    use hyper::header::{HeaderName, HeaderValue, CACHE_CONTROL};
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        (
            "content-security-policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    ] {
        h.insert(HeaderName::from_static(name), HeaderValue::from_static(value));
    }
}

/// Answers one request; read-only (GET and HEAD).
async fn answer<B>(req: &Request<B>, latest: Latest, max_age: Duration) -> Response<Body> {
    answer_within(req, latest, max_age, FIRST_VIEW).await
}

/// [`answer`], with `/status` waiting at most `first_view` for a view.
async fn answer_within<B>(
    req: &Request<B>,
    mut latest: Latest,
    max_age: Duration,
    first_view: Duration,
) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = full(
            StatusCode::METHOD_NOT_ALLOWED,
            "the status page is read-only: use GET\n",
            "text/plain; charset=utf-8",
        );
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return r;
    }
    match req.uri().path() {
        "/" | "/index.html" => full(StatusCode::OK, PAGE, "text/html; charset=utf-8"),
        "/status" => match fresh(&mut latest, first_view).await {
            Some(json) => full(
                StatusCode::OK,
                Bytes::from(json.as_bytes().to_vec()),
                "application/json",
            ),
            None => full(
                StatusCode::SERVICE_UNAVAILABLE,
                "{\"error\":\"the link has not been read yet; try again in a second\"}",
                "application/json",
            ),
        },
        "/events" => events(latest, max_age),
        _ => full(
            StatusCode::NOT_FOUND,
            "not found: try /, /status or /events\n",
            "text/plain; charset=utf-8",
        ),
    }
}

/// The current view, waiting (a while) for the feed to make one if nobody
/// was looking.
async fn fresh(latest: &mut Latest, within: Duration) -> Option<Arc<str>> {
    let _ = tokio::time::timeout(within, latest.wait_for(Option::is_some)).await;
    let view = latest.borrow().clone();
    view
}

/// The SSE stream: the current view at once, then each new one; a comment
/// when idle; closed after `max_age` (the browser reconnects).
fn events(mut latest: Latest, max_age: Duration) -> Response<Body> {
    let stream = async_stream(move |tx| async move {
        let deadline = tokio::time::sleep(max_age);
        tokio::pin!(deadline);
        if tx
            .send(Bytes::from(format!("retry: {RETRY_MS}\n\n")))
            .await
            .is_err()
        {
            return;
        }
        // Send the view now, and again after each change.
        let mut send = true;
        loop {
            if send {
                let json = latest.borrow_and_update().clone();
                if let Some(json) = json {
                    let frame = format!("event: status\ndata: {json}\n\n");
                    if tx.send(Bytes::from(frame)).await.is_err() {
                        return;
                    }
                }
            }
            tokio::select! {
                r = latest.changed() => {
                    if r.is_err() {
                        return;
                    }
                    send = true;
                }
                _ = tokio::time::sleep(KEEPALIVE) => {
                    if tx.send(Bytes::from_static(b": keep-alive\n\n")).await.is_err() {
                        return;
                    }
                    send = false;
                }
                _ = &mut deadline => return,
            }
        }
    });
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    let h = resp.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    secure(h);
    resp
}

/// A stream of body frames fed by `produce` through a small channel (the
/// producer waits while the client reads slowly: bounded memory).
fn async_stream<P, F>(
    produce: P,
) -> impl futures::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + Sync + 'static
where
    P: FnOnce(tokio::sync::mpsc::Sender<Bytes>) -> F,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::spawn(produce(tx));
    futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |b| {
        Ok(Frame::data(b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).expect("request")
    }

    #[test]
    fn the_page_is_self_contained() {
        assert!(PAGE.starts_with("<!doctype html>"));
        for external in [
            "src=\"http",
            "href=\"http",
            "@import",
            "url(http",
            "src=\"//",
        ] {
            assert!(!PAGE.contains(external), "{external}");
        }
        assert!(PAGE.contains("new EventSource"));
        assert!(PAGE.contains("name=\"viewport\""));
    }

    #[tokio::test]
    async fn answers_are_read_only_and_status_waits_for_the_first_view() {
        let (tx, rx) = watch::channel(None);
        let max = Duration::from_secs(1);
        let post = Request::post("/status").body(()).expect("request");
        assert_eq!(
            answer(&post, rx.clone(), max).await.status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            answer(&get("/nope"), rx.clone(), max).await.status(),
            StatusCode::NOT_FOUND
        );
        // No view within the wait: "not read yet".
        let short = Duration::from_millis(50);
        assert_eq!(
            answer_within(&get("/status"), rx.clone(), max, short)
                .await
                .status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        // A view that comes while /status waits is the answer.
        let later = tokio::spawn({
            let rx = rx.clone();
            async move { answer(&get("/status"), rx, max).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            tx.receiver_count() > 1,
            "the waiting /status counts as a viewer"
        );
        tx.send_replace(Some(Arc::from("{\"link\":\"x\"}")));
        let r = later.await.expect("answer");
        assert_eq!(r.status(), StatusCode::OK);
        let body = r.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&body[..], b"{\"link\":\"x\"}");
        let page = answer(&get("/"), rx, max).await;
        assert!(page
            .headers()
            .get("content-security-policy")
            .is_some_and(|v| v.to_str().is_ok_and(|v| v.contains("default-src 'none'"))));
    }

    #[tokio::test]
    async fn connections_are_bounded_in_number_and_idle_time() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (_tx, rx) = watch::channel(Some(Arc::from("{}")));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(crate::http::serve_bounded(
            listener,
            2,
            Duration::from_millis(300),
            move |req| {
                let latest = rx.clone();
                async move { answer(&req, latest, Duration::from_secs(60)).await }
            },
        ));
        // Closed by the server: read returns 0 (or an error) within `within`.
        async fn closed(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
            let mut buf = [0u8; 4096];
            let until = tokio::time::Instant::now() + within;
            loop {
                match tokio::time::timeout_at(until, s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return true,
                    Ok(Ok(_)) => continue,
                    Err(_) => return false,
                }
            }
        }
        // An idle connection that never sends a request is closed after
        // the header timeout.
        let mut idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
        assert!(closed(&mut idle, Duration::from_secs(2)).await);
        // Two live pages fill the cap; a third closes the oldest and is
        // answered.
        let mut pages = Vec::new();
        for _ in 0..3 {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(b"GET /events HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .expect("write");
            let mut buf = [0u8; 256];
            let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
                .await
                .expect("answered")
                .expect("read");
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
            pages.push(s);
        }
        assert!(closed(&mut pages[0], Duration::from_secs(2)).await);
        assert!(!closed(&mut pages[2], Duration::from_millis(200)).await);
    }

    #[tokio::test]
    async fn events_send_the_view_then_each_change_and_end_at_max_age() {
        let (tx, rx) = watch::channel(Some(Arc::from("{\"n\":1}")));
        let r = answer(&get("/events"), rx, Duration::from_millis(300)).await;
        let mut body = r.into_body();
        let mut text = String::new();
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.send_replace(Some(Arc::from("{\"n\":2}")));
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(tx);
        });
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.expect("frame").into_data() {
                text.push_str(&String::from_utf8_lossy(&data));
            }
        }
        sender.abort();
        assert!(text.starts_with("retry: 1000\n\n"), "{text}");
        assert!(
            text.contains("event: status\ndata: {\"n\":1}\n\n"),
            "{text}"
        );
        assert!(
            text.contains("event: status\ndata: {\"n\":2}\n\n"),
            "{text}"
        );
    }
}
