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
