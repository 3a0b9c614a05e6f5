//! HTTP: the LB's check endpoint (the dead-man's switch), `/healthz`,
//! `/readyz` and `/metrics`.

use crate::sidecar::Shared;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use std::convert::Infallible;
use std::sync::Arc;
use tracing::{debug, warn};

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    typed(status, body, "text/plain; charset=utf-8")
}

fn typed(status: StatusCode, body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp
}

/// 200 with `Ok`'s body, 503 with `Err`'s.
fn verdict(v: Result<String, String>) -> Response<Full<Bytes>> {
    match v {
        Ok(body) => text(StatusCode::OK, body),
        Err(body) => text(StatusCode::SERVICE_UNAVAILABLE, body),
    }
}

/// What one listener answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Routes {
    /// `/check/<server>`, `/healthz`, `/readyz`, `/metrics`.
    All,
    /// Everything but the checks (they have `http.check_listen`).
    NoChecks,
    /// Only `/check/<server>` (`http.check_listen`).
    ChecksOnly,
}

/// Answers one request. Pure apart from reading the shared view.
pub(crate) fn answer(shared: &Shared, path: &str, routes: Routes) -> Response<Full<Bytes>> {
    let check = path.strip_prefix("/check/");
    match (routes, check) {
        (Routes::NoChecks, Some(_)) => {
            return text(
                StatusCode::NOT_FOUND,
                "not found: the LB's checks are answered on http.check_listen\n".into(),
            )
        }
        (Routes::ChecksOnly, None) => {
            return text(
                StatusCode::NOT_FOUND,
                "not found: this listener answers only /check/<server>\n".into(),
            )
        }
        _ => {}
    }
    if let Some(server) = check {
        let (ok, why) = shared.check(server);
        let status = if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        return text(status, why + "\n");
    }
    match path {
        "/healthz" => verdict(crate::sidecar::health::healthz(shared)),
        "/readyz" => verdict(crate::sidecar::health::readyz(shared)),
        "/metrics" => typed(
            StatusCode::OK,
            shared.metrics.encode(shared.store.request_errors()),
            crate::sidecar::metrics::CONTENT_TYPE,
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /check/<server>, /healthz, /readyz, /metrics\n".into(),
        ),
    }
}

/// The open connections, oldest first, so the oldest can be closed when a
/// new one arrives at the cap.
#[derive(Default)]
struct Open {
    next_id: u64,
    conns: std::collections::VecDeque<(u64, tokio::task::JoinHandle<()>)>,
}

/// Largest request head read (hyper's minimum buffer): the check, health
/// and metrics requests are a line and a few headers.
const MAX_HEAD: usize = 8 * 1024;

/// A response body: whole (`Full`) or streamed (the status page's events).
pub(crate) type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Serves HTTP/1.1 on `listener`. Every connection must send its request
/// head within `http.header_timeout` (also the idle bound between requests
/// on a kept-alive connection); at most `http.max_connections` are open:
/// at the cap the oldest is closed, so a new connection (the LB's next
/// check) is always answered and idle connections cannot lock it out.
pub(crate) async fn serve(shared: Arc<Shared>, listener: tokio::net::TcpListener, routes: Routes) {
    let cap = shared.config.http.max_connections;
    let header_timeout = shared.config.http.header_timeout;
    serve_bounded(listener, cap, header_timeout, move |req| {
        let resp = answer(&shared, req.uri().path(), routes);
        async move { resp.map(|b| b.boxed()) }
    })
    .await
}

/// Serves HTTP/1.1 on `listener` with `handler`: each request head within
/// `header_timeout` (also the idle bound of a kept-alive connection), at
/// most `cap` connections open (at the cap the oldest is closed).
pub(crate) async fn serve_bounded<H, F>(
    listener: tokio::net::TcpListener,
    cap: usize,
    header_timeout: std::time::Duration,
    handler: H,
) where
    H: Fn(Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let cap = cap.max(1);
    let open = Arc::new(std::sync::Mutex::new(Open::default()));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        // At the cap, close the oldest and wait until it is closed (its
        // socket released) before serving the new one: a burst of connects
        // never holds more than `cap` sockets, however fast it comes (a
        // sidecar out of file descriptors could not reach etcd).
        let evicted: Vec<tokio::task::JoinHandle<()>> = {
            let Ok(mut guard) = open.lock() else {
                continue;
            };
            let over = (guard.conns.len() + 1).saturating_sub(cap);
            guard.conns.drain(..over).map(|(_, t)| t).collect()
        };
        for oldest in evicted {
            oldest.abort();
            let _ = oldest.await;
            debug!("HTTP connection cap reached; closed the oldest connection");
        }
        let Ok(mut guard) = open.lock() else {
            continue;
        };
        let id = guard.next_id;
        guard.next_id += 1;
        let registry = open.clone();
        let task = tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let resp = handler(req);
                async move { Ok::<_, Infallible>(resp.await) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(MAX_HEAD);
            if let Err(e) = builder
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await
            {
                debug!(error = %e, "HTTP connection ended");
            }
            if let Ok(mut open) = registry.lock() {
                open.conns.retain(|(i, _)| *i != id);
            }
        });
        guard.conns.push_back((id, task));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The check server's bounds on a real loopback listener, with a
    /// handler that answers every request 200.
    async fn server(cap: usize, header_timeout: Duration) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve_bounded(listener, cap, header_timeout, |_req| async {
            text(StatusCode::OK, "routable\n".into()).map(|b| b.boxed())
        }));
        addr
    }

    /// Everything the server sends until it closes, or `None` if it is
    /// still open after `within`.
    async fn until_closed(s: &mut tokio::net::TcpStream, within: Duration) -> Option<String> {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let until = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(until, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&got).into()),
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Err(_) => return None,
            }
        }
    }

    #[tokio::test]
    async fn a_client_that_sends_its_headers_slowly_is_cut_after_the_header_timeout() {
        let timeout = Duration::from_millis(400);
        let addr = server(8, timeout).await;
        let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let started = tokio::time::Instant::now();
        // A request head that would take 5 s: one byte every 50 ms, each
        // arriving well within the timeout of the one before.
        let head = b"GET /check/hot HTTP/1.1\r\nhost: x\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        let mut cut = None;
        for byte in head.iter().take(100) {
            if slow.write_all(&[*byte]).await.is_err() {
                cut = Some(started.elapsed());
                break;
            }
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(50), slow.read(&mut [0u8; 64])).await
            {
                cut = Some(started.elapsed());
                break;
            }
        }
        let cut = cut.expect("the slow client was never cut");
        assert!(
            cut >= timeout && cut < timeout * 3,
            "cut after {cut:?}, header timeout {timeout:?}"
        );

        // A prompt client is answered meanwhile and after.
        let mut prompt = tokio::net::TcpStream::connect(addr).await.expect("connect");
        prompt
            .write_all(b"GET /check/hot HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .expect("write");
        let answer = until_closed(&mut prompt, Duration::from_secs(2))
            .await
            .expect("answered and closed");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    #[tokio::test]
    async fn a_kept_alive_connection_is_closed_once_idle_for_the_header_timeout() {
        let timeout = Duration::from_millis(300);
        let addr = server(8, timeout).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /check/hot HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .expect("answered")
            .expect("read");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        // Kept alive, then idle: closed after about the header timeout.
        let idle = tokio::time::Instant::now();
        assert!(until_closed(&mut s, Duration::from_secs(2)).await.is_some());
        let after = idle.elapsed();
        assert!(after < timeout * 4, "closed after {after:?}");
    }
}
