//! A minimal HTTP/1.1 client on one TCP connection per [`HttpConn`], so the
//! caller knows which connection (and so which LB session) carries each
//! request: the key-pair traffic's SAEs, and the mock KMEs' control API.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderMap, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use lockstep_core::Setup;
use lockstep_kme_mock::SETUP_HEADER;
use tokio::net::TcpStream;
use tracing::debug;

/// An answer read in full.
#[derive(Clone, Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HttpReply {
    /// The setup named by the mock KME's `X-Kme-Setup` header.
    pub fn setup(&self) -> Option<Setup> {
        self.headers
            .get(SETUP_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse().ok())
    }

    /// The body as text, shortened for messages.
    pub fn body_excerpt(&self) -> String {
        let s = String::from_utf8_lossy(&self.body);
        let mut out: String = s.chars().take(200).collect();
        if s.chars().count() > 200 {
            out.push('…');
        }
        out
    }
}

/// One HTTP/1.1 client connection over one TCP connection, so the caller
/// knows exactly which connection (and so which LB session) carries each
/// request.
pub struct HttpConn {
    addr: SocketAddr,
    sender: SendRequest<Full<Bytes>>,
}

impl HttpConn {
    /// Connects and handshakes within `timeout`.
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<HttpConn> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connecting to {addr}: timed out after {timeout:?}"))?
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true).context("setting TCP_NODELAY")?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("HTTP/1.1 handshake with {addr}"))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%addr, error = %e, "HTTP connection ended with an error");
            }
        });
        Ok(HttpConn { addr, sender })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// True once the peer (or an error) closed the connection.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Sends one request and reads the whole answer within `timeout`. After
    /// an error the connection's state is unknown: drop it.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<HttpReply> {
        let addr = self.addr;
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(HOST, addr.to_string());
        if body.is_some() {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        let req = builder
            .body(Full::new(body.unwrap_or_default()))
            .with_context(|| format!("building {method} {path}"))?;
        let exchange = async {
            self.sender.ready().await.context("connection not usable")?;
            let resp = self
                .sender
                .send_request(req)
                .await
                .context("sending the request")?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .context("reading the answer body")?
                .to_bytes();
            Ok::<_, anyhow::Error>(HttpReply {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r.with_context(|| format!("{method} http://{addr}{path}")),
            Err(_) => bail!("{method} http://{addr}{path}: no answer within {timeout:?}"),
        }
    }
}

/// One request on a fresh connection.
pub async fn http_once(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<Bytes>,
    timeout: Duration,
) -> Result<HttpReply> {
    let mut conn = HttpConn::connect(addr, timeout).await?;
    conn.request(method, path, body, timeout).await
}
