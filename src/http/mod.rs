//! HTTP: the LB's check endpoint (the dead-man's switch), `/healthz`,
//! `/readyz` and `/metrics`.

use crate::sidecar::Shared;
use bytes::Bytes;
use http_body_util::Full;
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

/// Answers one request. Pure apart from reading the shared view.
pub(crate) fn answer(shared: &Shared, path: &str) -> Response<Full<Bytes>> {
    if let Some(server) = path.strip_prefix("/check/") {
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

pub(crate) async fn serve(shared: Arc<Shared>, listener: tokio::net::TcpListener) {
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
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let resp = answer(&shared, req.uri().path());
                async move { Ok::<_, Infallible>(resp) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await
            {
                debug!(error = %e, "HTTP connection ended");
            }
        });
    }
}
