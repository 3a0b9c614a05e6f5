//! The hyper side of the mock KME: the ETSI API listener (which fault
//! injection can take down; plain HTTP, or TLS with optional client
//! certificates) and the always-up, plain-HTTP `/mock/` admin listener.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::api::{self, ApiError, ApiRequest, ApiResponse, FaultMode, Kme, KmeConfig, KmeFault};
use lockstep_core::{Role, Setup};

/// Diagnostic response header naming the setup that answered (not ETSI).
pub const SETUP_HEADER: &str = "x-kme-setup";
/// Diagnostic response header naming the role that answered (not ETSI).
pub const ROLE_HEADER: &str = "x-kme-role";

const MAX_BODY: usize = 1 << 20;
/// A client that stalls its handshake must not hold a connection task.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS for the ETSI API listener (PEM files).
#[derive(Clone, Debug)]
pub struct KmeTls {
    /// Server certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// When set, clients must present a certificate chaining to these CAs
    /// (mutual TLS, as ETSI 014 KMEs require).
    pub client_ca: Option<PathBuf>,
}

impl KmeTls {
    /// The rustls server settings; errors name the file and the flag.
    pub fn server_config(&self) -> Result<rustls::ServerConfig> {
        use lockstep::probe::{load_pem_certs, load_pem_key};
        // An explicit provider: the process-wide default may be unset.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("setting up TLS")?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                let (added, _) = roots.add_parsable_certificates(
                    load_pem_certs(ca)
                        .map_err(anyhow::Error::msg)
                        .context("--tls-client-ca")?,
                );
                if added == 0 {
                    anyhow::bail!(
                        "--tls-client-ca {}: no usable CA certificate in it",
                        ca.display()
                    );
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .with_context(|| format!("--tls-client-ca {}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let chain = load_pem_certs(&self.cert)
            .map_err(anyhow::Error::msg)
            .context("--tls-cert")?;
        let key = load_pem_key(&self.key)
            .map_err(anyhow::Error::msg)
            .context("--tls-key")?;
        let mut config = builder.with_single_cert(chain, key).with_context(|| {
            format!(
                "--tls-key {} does not fit --tls-cert {}; give the key of that certificate",
                self.key.display(),
                self.cert.display()
            )
        })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// Counters served at `GET /mock/stats`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KmeStats {
    pub setup: Setup,
    pub role: Role,
    pub pid: u32,
    pub fault: KmeFault,
    /// ETSI API requests received (all outcomes).
    pub requests: u64,
    pub keys_issued: u64,
    pub keys_decoded: u64,
    /// API answers other than 2xx, 503s from `unavailable` included.
    pub rejected: u64,
    pub connections_accepted: u64,
    /// API connections closed unanswered because the KME went `down`.
    pub connections_dropped: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    keys_issued: AtomicU64,
    keys_decoded: AtomicU64,
    rejected: AtomicU64,
    connections_accepted: AtomicU64,
    connections_dropped: AtomicU64,
}

struct Shared {
    kme: Kme,
    fault: watch::Sender<KmeFault>,
    shutdown: watch::Sender<bool>,
    /// Whether the API listener is open; lets `set_fault` return only once
    /// the listener matches the mode.
    listening: watch::Sender<bool>,
    counters: Counters,
    setup_header: HeaderValue,
    role_header: HeaderValue,
    /// TLS on the API listener; none means plain HTTP.
    tls: Option<TlsAcceptor>,
}

impl Shared {
    fn stats(&self) -> KmeStats {
        let c = &self.counters;
        KmeStats {
            setup: self.kme.config().setup,
            role: self.kme.config().role,
            pid: std::process::id(),
            fault: *self.fault.borrow(),
            requests: c.requests.load(Ordering::Relaxed),
            keys_issued: c.keys_issued.load(Ordering::Relaxed),
            keys_decoded: c.keys_decoded.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            connections_accepted: c.connections_accepted.load(Ordering::Relaxed),
            connections_dropped: c.connections_dropped.load(Ordering::Relaxed),
        }
    }

    /// Sets the fault and waits (up to 2 s) until the API listener is
    /// closed or open again accordingly, so callers can act at once.
    async fn set_fault(&self, fault: KmeFault) {
        info!(mode = %fault.mode, delay_ms = fault.delay_ms, "fault injection changed");
        self.fault.send_replace(fault);
        let want_open = fault.mode != FaultMode::Down;
        let mut rx = self.listening.subscribe();
        let waited = tokio::time::timeout(
            Duration::from_secs(2),
            rx.wait_for(|open| *open == want_open),
        )
        .await;
        if !matches!(waited, Ok(Ok(_))) {
            warn!(
                want_open,
                "the API listener did not follow the fault mode within 2 s"
            );
        }
    }

    fn response(&self, status: u16, body: &Value) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
        *resp.status_mut() =
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(SETUP_HEADER, self.setup_header.clone());
        h.insert(ROLE_HEADER, self.role_header.clone());
        resp
    }
}

/// A running mock KME (in this process). Dropping it stops the listeners;
/// [`KmeServer::shutdown`] also closes open connections.
pub struct KmeServer {
    api_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl KmeServer {
    /// Binds the API listener at `listen` and, if given, the admin listener
    /// at `admin_listen` (port 0 picks a free port), and starts serving.
    pub async fn start(
        config: KmeConfig,
        listen: SocketAddr,
        admin_listen: Option<SocketAddr>,
        initial_fault: KmeFault,
    ) -> Result<KmeServer> {
        KmeServer::start_with_tls(config, listen, admin_listen, initial_fault, None).await
    }

    /// [`KmeServer::start`], serving the ETSI API over TLS when `tls` is set.
    pub async fn start_with_tls(
        config: KmeConfig,
        listen: SocketAddr,
        admin_listen: Option<SocketAddr>,
        initial_fault: KmeFault,
        tls: Option<KmeTls>,
    ) -> Result<KmeServer> {
        let tls = match tls {
            Some(t) => Some(TlsAcceptor::from(Arc::new(t.server_config()?))),
            None => None,
        };
        let setup_header = HeaderValue::from_static(config.setup.as_str());
        let role_header = HeaderValue::from_static(config.role.as_str());
        let kme =
            Kme::new(config).map_err(|e| anyhow::anyhow!("invalid KME configuration: {e}"))?;
        let shared = Arc::new(Shared {
            kme,
            fault: watch::Sender::new(initial_fault),
            shutdown: watch::Sender::new(false),
            listening: watch::Sender::new(true),
            counters: Counters::default(),
            setup_header,
            role_header,
            tls,
        });

        let api_listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding the ETSI API listener at {listen}"))?;
        let api_addr = api_listener
            .local_addr()
            .context("reading the API listener address")?;
        let mut tasks = Vec::new();
        let admin_addr = match admin_listen {
            Some(addr) => {
                let l = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the admin (/mock/) listener at {addr}"))?;
                let bound = l
                    .local_addr()
                    .context("reading the admin listener address")?;
                tasks.push(tokio::spawn(admin_accept_loop(shared.clone(), l)));
                Some(bound)
            }
            None => None,
        };
        // Start `down` as asked: the loop closes the listener at once.
        tasks.push(tokio::spawn(api_accept_loop(
            shared.clone(),
            api_listener,
            api_addr,
        )));
        let c = shared.kme.config();
        info!(
            setup = %c.setup, role = %c.role, %api_addr, admin_addr = ?admin_addr,
            tls = shared.tls.is_some(),
            kme_id = %c.kme_id, master_sae_id = %c.master_sae_id, slave_sae_id = %c.slave_sae_id,
            "mock KME serving"
        );
        Ok(KmeServer {
            api_addr,
            admin_addr,
            shared,
            tasks,
        })
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Sets the fault mode; returns once the API listener follows it.
    pub async fn set_fault(&self, fault: KmeFault) {
        self.shared.set_fault(fault).await;
    }

    pub fn fault(&self) -> KmeFault {
        *self.shared.fault.borrow()
    }

    pub fn stats(&self) -> KmeStats {
        self.shared.stats()
    }

    /// Stops accepting and closes every open connection.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.send_replace(true);
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for KmeServer {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Accepts API connections while the KME is not `down`; when it goes down
/// the listener is closed, so new connections are refused as by a dead
/// process, and it is bound again at the same address when it comes back.
async fn api_accept_loop(shared: Arc<Shared>, listener: TcpListener, addr: SocketAddr) {
    let mut fault_rx = shared.fault.subscribe();
    let mut listener = Some(listener);
    loop {
        match listener.take() {
            Some(l) => {
                if fault_rx.borrow_and_update().mode == FaultMode::Down {
                    drop(l);
                    info!(%addr, "API listener closed (down)");
                    shared.listening.send_replace(false);
                    continue;
                }
                loop {
                    tokio::select! {
                        accepted = l.accept() => match accepted {
                            Ok((stream, peer)) => {
                                tokio::spawn(serve_api_connection(shared.clone(), stream, peer));
                            }
                            Err(e) => {
                                // E.g. EMFILE: back off instead of spinning.
                                warn!(error = %e, "accepting an API connection");
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        },
                        changed = fault_rx.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            if fault_rx.borrow_and_update().mode == FaultMode::Down {
                                break;
                            }
                        }
                    }
                }
                drop(l);
                info!(%addr, "API listener closed (down)");
                shared.listening.send_replace(false);
            }
            None => {
                if fault_rx
                    .wait_for(|f| f.mode != FaultMode::Down)
                    .await
                    .is_err()
                {
                    return;
                }
                match TcpListener::bind(addr).await {
                    Ok(l) => {
                        info!(%addr, "API listener open again");
                        listener = Some(l);
                        shared.listening.send_replace(true);
                    }
                    Err(e) => {
                        warn!(%addr, error = %e, "binding the API listener again; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }
}

async fn serve_api_connection(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    shared
        .counters
        .connections_accepted
        .fetch_add(1, Ordering::Relaxed);
    // Small request/response pairs: do not let Nagle add latency.
    let _ = stream.set_nodelay(true);
    let mut fault_rx = shared.fault.subscribe();
    let mut shutdown_rx = shared.shutdown.subscribe();
    // The handshake sits inside the select, so `down` drops it too.
    let work = async {
        match &shared.tls {
            None => serve_api_http(shared.clone(), stream, peer).await,
            Some(acceptor) => {
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => serve_api_http(shared.clone(), tls, peer).await,
                    // Info: a refused client certificate is worth seeing.
                    Ok(Err(e)) => info!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => info!(%peer, "TLS handshake timed out"),
                }
            }
        }
    };
    tokio::select! {
        () = work => {}
        _ = fault_rx.wait_for(|f| f.mode == FaultMode::Down) => {
            // Dropping the connection closes the socket without answering.
            shared.counters.connections_dropped.fetch_add(1, Ordering::Relaxed);
            debug!(%peer, "closing API connection (down)");
        }
        _ = shutdown_rx.wait_for(|s| *s) => {}
    }
}

async fn serve_api_http<S>(shared: Arc<Shared>, io: S, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| handle_api(shared.clone(), req));
    let conn = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), svc);
    if let Err(e) = conn.await {
        debug!(%peer, error = %e, "API connection ended with an error");
    }
}

async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => Err(ApiError::bad_request(format!(
            "reading the request body: {e}"
        ))),
    }
}

async fn handle_api(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let c = &shared.counters;
    c.requests.fetch_add(1, Ordering::Relaxed);
    let fault = *shared.fault.borrow();
    if fault.mode == FaultMode::Down {
        // Never answer: the connection task drops this connection.
        std::future::pending::<()>().await;
    }
    if fault.mode == FaultMode::Slow {
        tokio::time::sleep(Duration::from_millis(fault.delay_ms)).await;
    }
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let caller = req
        .headers()
        .get(api::CALLER_SAE_HEADER)
        .map(|v| v.to_str().map(str::to_owned).unwrap_or_default());
    let resp: ApiResponse = if fault.mode == FaultMode::Unavailable {
        ApiError::unavailable().into()
    } else {
        match read_body(req.into_body()).await {
            Ok(body) => shared.kme.handle_with(
                ApiRequest {
                    method: &method,
                    path: &path,
                    query: query.as_deref(),
                    body: &body,
                    caller_sae_id: caller.as_deref(),
                },
                fault.mode == FaultMode::Empty,
            ),
            Err(e) => e.into(),
        }
    };
    c.keys_issued.fetch_add(resp.keys_issued, Ordering::Relaxed);
    c.keys_decoded
        .fetch_add(resp.keys_decoded, Ordering::Relaxed);
    if !(200..300).contains(&resp.status) {
        c.rejected.fetch_add(1, Ordering::Relaxed);
    }
    debug!(%method, %path, status = resp.status, "API request");
    Ok(shared.response(resp.status, &resp.body))
}

async fn admin_accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    let mut shutdown_rx = shared.shutdown.subscribe();
                    let svc_shared = shared.clone();
                    let svc = service_fn(move |req| handle_admin(svc_shared.clone(), req));
                    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        res = conn => if let Err(e) = res {
                            debug!(%peer, error = %e, "admin connection ended with an error");
                        },
                        _ = shutdown_rx.wait_for(|s| *s) => {}
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "accepting an admin connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle_admin(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let route = (
        req.method().as_str().to_owned(),
        req.uri().path().to_owned(),
    );
    let result: Result<Value, ApiError> = match (route.0.as_str(), route.1.as_str()) {
        ("GET", "/mock/stats") => serde_json::to_value(shared.stats())
            .map_err(|e| ApiError::new(500, format!("encoding stats: {e}"))),
        ("GET", "/mock/fault") => Ok(json!(*shared.fault.borrow())),
        ("POST", "/mock/fault") => match read_body(req.into_body()).await {
            Ok(body) => match api::parse_fault(&body) {
                Ok(f) => {
                    shared.set_fault(f).await;
                    Ok(json!(f))
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        },
        (_, "/mock/stats" | "/mock/fault") => Err(ApiError::new(
            405,
            format!("method {} not allowed", route.0),
        )),
        _ => Err(ApiError::new(404, format!("no such resource: {}", route.1))),
    };
    Ok(match result {
        Ok(v) => shared.response(200, &v),
        Err(e) => {
            let r: ApiResponse = e.into();
            shared.response(r.status, &r.body)
        }
    })
}
