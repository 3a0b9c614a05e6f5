//! The sidecar's gRPC server: the Peer and Admin services, health and
//! reflection, behind the authorization layer (`auth`), over mutual TLS
//! from our own acceptor (`tls::server`, so certificates reload) or, with
//! `grpc.insecure`, plaintext. Bounds: connections, Admin calls in flight,
//! concurrent streams per connection, a per-call timeout, message size.

use super::auth::{AuthLayer, Policy};
use crate::config::Config;
use crate::proto;
use crate::sidecar::member::Input;
use crate::sidecar::Shared;
use crate::tls::client::{Channels, PeerTls};
use crate::tls::{Reloading, ServerCheck};
use anyhow::Context;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::Instrument;
use tracing::{info, warn};

/// HTTP/2 streams one connection may have open (calls in flight).
const MAX_STREAMS_PER_CONNECTION: u32 = 64;

/// The sidecar's TLS, set up once at start.
pub(crate) struct Tls {
    /// `None`: `grpc.insecure`.
    secure: Option<Secure>,
}

struct Secure {
    material: Arc<Reloading>,
    server: Arc<rustls::ServerConfig>,
    /// Peer channels: each checks the member it dials is who answers.
    peers: PeerTls,
    /// Polls the files; aborted when the sidecar's `Tls` is dropped.
    watch: tokio::task::JoinHandle<()>,
}

impl Drop for Secure {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

impl Tls {
    /// Loads the certificates (validation did already, so this fails only
    /// if the files changed since) and starts watching them.
    pub(crate) fn from_config(config: &Config) -> anyhow::Result<Tls> {
        let Some(files) = config.grpc_tls_files().filter(|_| !config.grpc.insecure) else {
            warn!(link = %config.link, member = %config.member_id, "gRPC is PLAINTEXT without authorization (grpc.insecure = true): anyone who reaches {} can switch this link; use only in a lab", config.grpc.listen);
            return Ok(Tls { secure: None });
        };
        let material = Reloading::load(files).context("gRPC TLS")?;
        info!(identities = %material.current().own, "gRPC over mutual TLS");
        let server = crate::tls::server_config(&material)
            .map_err(anyhow::Error::msg)
            .context("gRPC TLS")?;
        let roles = config.grpc.roles.clone();
        let peers = PeerTls {
            material: material.clone(),
            accept: Arc::new(move |cert, id| roles.accept_member(cert, id)),
        };
        // The client side's TLS set-up fails now, not at the first push.
        crate::tls::client_config(&material, ServerCheck::Name)
            .map_err(anyhow::Error::msg)
            .context("gRPC TLS")?;
        let watch = material.spawn_watch(config.grpc.tls.reload_interval);
        Ok(Tls {
            secure: Some(Secure {
                material,
                server: Arc::new(server),
                peers,
                watch,
            }),
        })
    }

    /// The cache of channels to peers, over this TLS.
    pub(crate) fn channels(&self) -> Channels {
        Channels::new(self.secure.as_ref().map(|s| s.peers.clone()))
    }
}

/// Serves gRPC on `listener` until `stop` resolves.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    input: mpsc::Sender<Input>,
    tls: Tls,
    listener: tokio::net::TcpListener,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let config = &shared.config;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    // NOT_SERVING until `drive_grpc_health` finds the member ready.
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    tokio::spawn(
        crate::sidecar::health::drive_grpc_health(
            shared.clone(),
            health_reporter,
            Duration::from_secs(1),
        )
        .instrument(
            tracing::info_span!("grpc_health", link = %config.link, member = %config.member_id),
        ),
    );
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .build_v1();
    let policy = Policy {
        roles: (!config.grpc.insecure).then(|| config.grpc.roles.clone()),
        link: config.link.clone(),
        admin_slots: Arc::new(tokio::sync::Semaphore::new(config.grpc.max_admin_calls)),
        max_admin_calls: config.grpc.max_admin_calls,
    };
    let peer = super::peer::PeerService {
        shared: shared.clone(),
        input,
    };
    let admin = super::admin::AdminService {
        shared: shared.clone(),
    };
    let max = crate::limits::MAX_GRPC_MESSAGE;
    let mut router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .timeout(config.grpc.call_timeout)
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(AuthLayer(Arc::new(policy)))
        .add_service(proto::peer_server::PeerServer::new(peer).max_decoding_message_size(max))
        .add_service(proto::admin_server::AdminServer::new(admin).max_decoding_message_size(max))
        .add_service(health_service);
    match reflection {
        Ok(r) => router = router.add_service(r),
        Err(e) => warn!(error = %e, "gRPC reflection unavailable"),
    }
    let limits = crate::tls::server::Limits {
        max_connections: config.grpc.max_connections,
        handshake_timeout: config.grpc.handshake_timeout,
    };
    match &tls.secure {
        Some(s) => {
            let _keep = s.material.clone();
            router
                .serve_with_incoming_shutdown(
                    crate::tls::server::tls(listener, s.server.clone(), limits),
                    stop,
                )
                .await
        }
        None => {
            router
                .serve_with_incoming_shutdown(crate::tls::server::plain(listener, limits), stop)
                .await
        }
    }
}
