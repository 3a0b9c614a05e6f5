//! The client side of gRPC: a tonic connector that dials TCP (no Nagle)
//! and does the TLS handshake with our rustls settings, and the cache of
//! channels to peers that the leader's pushes and the status fan-out share
//! (one HTTP/2 connection per peer, reused, not a handshake per call).

use super::identity::CertInfo;
use super::{client_config, explain, Reloading, ServerCheck, TlsFiles};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

/// Why a TLS handshake failed, as far as the certificates go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsProblem {
    /// The server's certificate is not signed by our CA.
    UntrustedServer,
    /// The server does not accept our certificate (another CA, none sent).
    ClientRefused,
    /// A certificate (ours or the server's) has expired or is not valid yet.
    Expired,
    /// The server's certificate does not name the host dialed.
    WrongName,
    /// Something else in the handshake.
    Other,
}

impl TlsProblem {
    fn of(e: &rustls::Error) -> TlsProblem {
        use rustls::{AlertDescription as A, CertificateError as C, Error as E};
        match e {
            E::InvalidCertificate(C::UnknownIssuer) => TlsProblem::UntrustedServer,
            E::InvalidCertificate(
                C::Expired
                | C::ExpiredContext { .. }
                | C::NotValidYet
                | C::NotValidYetContext { .. },
            )
            | E::AlertReceived(A::CertificateExpired) => TlsProblem::Expired,
            E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
                TlsProblem::WrongName
            }
            E::AlertReceived(
                A::UnknownCA | A::BadCertificate | A::CertificateUnknown | A::CertificateRequired,
            ) => TlsProblem::ClientRefused,
            _ => TlsProblem::Other,
        }
    }
}

/// The TLS problem somewhere in `e`'s chain of causes: our handshake's
/// ([`ConnectError`]), or a TLS alert that came later (with TLS 1.3 the
/// server refuses a client certificate after the client's handshake is
/// done, so it shows on the first call).
pub fn tls_problem_in(e: &(dyn std::error::Error + 'static)) -> Option<TlsProblem> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(c) = err.downcast_ref::<ConnectError>() {
            if c.tls.is_some() {
                return c.tls;
            }
        }
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(TlsProblem::of(r));
        }
        if let Some(r) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(TlsProblem::of(r));
        }
        next = err.source();
    }
    None
}

/// Why a connection could not be set up, in words (host, step, cause),
/// and, when the TLS handshake failed, why in terms of certificates.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ConnectError {
    /// What failed, in words (host, step, cause).
    pub message: String,
    /// `Some`: the handshake was refused over the certificates; `None`:
    /// nothing (or nothing in time) answered.
    pub tls: Option<TlsProblem>,
}

impl ConnectError {
    fn tcp(message: String) -> ConnectError {
        ConnectError { message, tls: None }
    }
}

/// Why [`connect`] failed: the whole cause chain in words, and the TLS
/// problem if the handshake was refused (the CA, the certificate, the
/// name) rather than nothing answering.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ConnectFailure {
    /// The whole cause chain, in words.
    pub message: String,
    /// `Some`: the certificates do not fit the link (the CLI exits 2 with
    /// a hint); `None`: unreachable.
    pub tls: Option<TlsProblem>,
}

/// Dials `host:port` from the URI and runs the TLS handshake.
#[derive(Clone)]
pub struct Connector {
    tls: tokio_rustls::TlsConnector,
    connect_timeout: Duration,
}

impl Connector {
    pub fn new(config: rustls::ClientConfig, connect_timeout: Duration) -> Connector {
        Connector {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            connect_timeout,
        }
    }

    /// A connector presenting `material`'s certificate, checking servers
    /// per `check`.
    pub fn from_material(
        material: &Arc<Reloading>,
        check: ServerCheck,
        connect_timeout: Duration,
    ) -> Result<Connector, String> {
        Ok(Connector::new(
            client_config(material, check)?,
            connect_timeout,
        ))
    }

    async fn connect(
        self,
        uri: hyper::Uri,
    ) -> Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>, ConnectError> {
        let host = uri
            .host()
            .ok_or_else(|| ConnectError::tcp(format!("{uri}: no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((host.as_str(), port)),
        )
        .await
        .map_err(|_| {
            ConnectError::tcp(format!(
                "{host}:{port}: no TCP connection within {:?}",
                self.connect_timeout
            ))
        })?
        .map_err(|e| ConnectError::tcp(format!("{host}:{port}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| ConnectError::tcp(format!("{host}: not a host name for TLS: {e}")))?;
        let tls = tokio::time::timeout(self.connect_timeout, self.tls.connect(name, tcp))
            .await
            .map_err(|_| {
                ConnectError::tcp(format!(
                    "{host}:{port}: TLS handshake not done within {:?}",
                    self.connect_timeout
                ))
            })?
            .map_err(|e| {
                let rustls_error = e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>());
                let why = rustls_error.map_or_else(|| e.to_string(), explain);
                ConnectError {
                    message: format!("TLS handshake with {host}:{port} failed: {why}"),
                    // An I/O error without a TLS cause: the peer went away.
                    tls: rustls_error.map(TlsProblem::of),
                }
            })?;
        Ok(TokioIo::new(tls))
    }
}

impl tower_service::Service<hyper::Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: hyper::Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}

/// The endpoint for `host:port` (the scheme says nothing: TLS, if any, is
/// the connector's).
pub fn endpoint(addr: &str) -> Result<Endpoint, String> {
    let addr = addr
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("bad address {addr:?}: {e}"))
}

/// Checks the certificate of the member (its id) a channel dials.
pub(crate) type AcceptMember = Arc<dyn Fn(&CertInfo, &str) -> Result<(), String> + Send + Sync>;

/// What peer channels present and require over mutual TLS.
#[derive(Clone)]
pub(crate) struct PeerTls {
    pub(crate) material: Arc<Reloading>,
    pub(crate) accept: AcceptMember,
}

/// Channels to peers, one per member at its address, reused by every
/// caller; each checks that the server answering is that member. Bounded:
/// past `MAX_CACHED` (members come and go) it starts afresh.
pub(crate) struct Channels {
    /// `None`: plaintext (`grpc.insecure = true`).
    tls: Option<PeerTls>,
    cache: Mutex<HashMap<(String, String), Channel>>,
}

const MAX_CACHED: usize = 256;

impl Channels {
    pub(crate) fn new(tls: Option<PeerTls>) -> Channels {
        Channels {
            tls,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The channel to member `id` at `addr` (`host:port`), connecting
    /// lazily on first use and again after the connection broke.
    pub(crate) fn get(&self, addr: &str, id: &str) -> Result<Channel, String> {
        let key = (addr.to_string(), id.to_string());
        let mut cache = match self.cache.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone());
        }
        let endpoint = endpoint(addr)?
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        let channel = match &self.tls {
            Some(tls) => {
                let accept = tls.accept.clone();
                let member = id.to_string();
                let check = ServerCheck::Identity(Arc::new(move |cert| accept(cert, &member)));
                let connector =
                    Connector::from_material(&tls.material, check, Duration::from_secs(1))?;
                endpoint.connect_with_connector_lazy(connector)
            }
            None => endpoint.connect_lazy(),
        };
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(key, channel.clone());
        Ok(channel)
    }
}

/// A channel to one sidecar for the CLI and test tools: TLS with `files`
/// (the server's certificate must name the host dialed), or plaintext.
/// Connects now, so a bad certificate shows here, in words.
pub async fn connect(
    addr: &str,
    files: Option<&TlsFiles>,
    connect_timeout: Duration,
) -> Result<Channel, ConnectFailure> {
    let failure = |message: String| ConnectFailure { message, tls: None };
    let endpoint = endpoint(addr)
        .map_err(failure)?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        // A long call (`--wait`) notices a sidecar that died mid-call.
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5));
    let result = match files {
        Some(files) => {
            let material = Reloading::load(files.clone()).map_err(|e| failure(e.to_string()))?;
            let connector = Connector::from_material(&material, ServerCheck::Name, connect_timeout)
                .map_err(failure)?;
            endpoint.connect_with_connector(connector).await
        }
        None => endpoint.connect().await,
    };
    result.map_err(|e| {
        let mut out = e.to_string();
        let mut tls = None;
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            out.push_str(": ");
            out.push_str(&s.to_string());
            if let Some(c) = s.downcast_ref::<ConnectError>() {
                tls = tls.or(c.tls);
            }
            source = s.source();
        }
        ConnectFailure { message: out, tls }
    })
}
