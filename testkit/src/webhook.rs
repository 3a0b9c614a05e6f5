//! Webhook receivers on loopback for the notification tests (`[notify]`):
//! one that keeps every JSON body it is POSTed, and one that never
//! answers.

use anyhow::{Context, Result};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// JSON bodies POSTed to a [`receiver`], in order.
pub type Received = Arc<Mutex<Vec<Value>>>;

/// A webhook receiver on loopback: answers 200 and keeps every body.
pub async fn receiver() -> Result<(SocketAddr, Received)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the webhook receiver")?;
    let addr = listener.local_addr()?;
    let got: Received = Arc::default();
    let keep = got.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let keep = keep.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let keep = keep.clone();
                        async move {
                            use http_body_util::BodyExt;
                            let body = req.into_body().collect().await.map(|b| b.to_bytes());
                            if let Ok(v) = body
                                .map_err(|_| ())
                                .and_then(|b| serde_json::from_slice::<Value>(&b).map_err(|_| ()))
                            {
                                if let Ok(mut got) = keep.lock() {
                                    got.push(v);
                                }
                            }
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                            ))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok((addr, got))
}

/// A webhook that accepts connections and never answers.
pub async fn black_hole() -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the black hole")?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    Ok(addr)
}

/// The events received so far.
pub fn events(got: &Received) -> Vec<Value> {
    got.lock().map(|g| g.clone()).unwrap_or_default()
}

/// How many events were received so far.
pub fn count(got: &Received) -> usize {
    got.lock().map(|g| g.len()).unwrap_or(0)
}

/// Waits up to `within` until an event `name` (with `pred`) arrived after
/// the first `from` events; returns its index.
pub async fn wait_event_within(
    got: &Received,
    from: usize,
    name: &str,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Result<usize> {
    let deadline = Instant::now() + within;
    loop {
        let events = events(got);
        if let Some(i) = events
            .iter()
            .enumerate()
            .skip(from)
            .find(|(_, e)| e["event"] == name && pred(e))
            .map(|(i, _)| i)
        {
            return Ok(i);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("no {name:?} event within {within:?}; got: {events:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`wait_event_within`] 15 s, panicking (for tests) when none came.
pub async fn wait_event(
    got: &Received,
    from: usize,
    name: &str,
    pred: impl Fn(&Value) -> bool,
) -> usize {
    match wait_event_within(got, from, name, Duration::from_secs(15), pred).await {
        Ok(i) => i,
        Err(e) => panic!("{e}"),
    }
}

/// The `[[notify.webhook]]` table that sends a lab's events to `addr`.
pub fn notify_toml(addr: SocketAddr) -> String {
    format!("\n[[notify.webhook]]\nurl = \"http://{addr}/lockstep\"\ntimeout = \"2s\"\n")
}
