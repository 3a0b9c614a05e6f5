//! kme-mock: one mock ETSI GS QKD 014 KME (one setup, one role) over plain
//! HTTP/1.1 or TLS (optionally mutual), with a separate always-up admin
//! listener for fault injection.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use lockstep_core::{Role, Setup};
use lockstep_kme_mock::api::{default_kme_id, other_role};
use lockstep_kme_mock::server::KmeTls;
use lockstep_kme_mock::{
    FaultMode, KmeConfig, KmeFault, KmeServer, DEFAULT_MASTER_SAE_ID, DEFAULT_SLAVE_SAE_ID,
};
use tracing::{error, info};

/// Mock ETSI GS QKD 014 v1.1.1 Key Management Entity.
///
/// Serves `GET /api/v1/keys/{SAE_ID}/status`, `GET|POST .../enc_keys`
/// (role alice) and `GET|POST .../dec_keys` (role bob) on --listen. The
/// alice and bob KMEs of one setup share keys without talking to each other:
/// both derive them from --secret, so give both the same secret and give the
/// other setup a different one; its key_IDs are then "key not found" (400).
///
/// With --tls-cert and --tls-key the API speaks HTTPS; adding --tls-client-ca
/// makes it require client certificates signed by that CA (mutual TLS).
///
/// The admin listener (--admin-listen, plain HTTP, never faulted) serves
/// `POST /mock/fault` with
/// `{"mode":"ok|down|unavailable|slow|empty","delay_ms":N}`,
/// `GET /mock/fault` and `GET /mock/stats`. Every API answer carries
/// `X-Kme-Setup` and `X-Kme-Role` headers.
#[derive(Parser, Debug)]
#[command(name = "kme-mock", version, about, long_about)]
struct Cli {
    /// Address of the ETSI API (HTTP/1.1; TLS with --tls-cert).
    #[arg(long, env = "KME_MOCK_LISTEN", default_value = "127.0.0.1:8014")]
    listen: SocketAddr,

    /// Address of the /mock/ control API; without it faults cannot be injected.
    #[arg(long, env = "KME_MOCK_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,

    /// Which setup this KME belongs to: hot or warm.
    #[arg(long, env = "KME_MOCK_SETUP")]
    setup: Setup,

    /// Which side of the link: alice (master, enc_keys) or bob (slave, dec_keys).
    #[arg(long, env = "KME_MOCK_ROLE")]
    role: Role,

    /// Secret shared by the alice and bob KMEs of this setup (only).
    #[arg(long, env = "KME_MOCK_SECRET", hide_env_values = true)]
    secret: String,

    /// SAE id of the master (Alice's application).
    #[arg(long, default_value = DEFAULT_MASTER_SAE_ID)]
    master_sae_id: String,

    /// SAE id of the slave (Bob's application).
    #[arg(long, default_value = DEFAULT_SLAVE_SAE_ID)]
    slave_sae_id: String,

    /// This KME's id [default: kme-<setup>-<role>].
    #[arg(long)]
    kme_id: Option<String>,

    /// The id of the other KME of this setup [default: kme-<setup>-<other role>].
    #[arg(long)]
    peer_kme_id: Option<String>,

    /// Default key size in bits.
    #[arg(long, default_value_t = 256)]
    key_size: u32,

    /// Smallest key size in bits a request may ask for.
    #[arg(long, default_value_t = 64)]
    min_key_size: u32,

    /// Largest key size in bits a request may ask for (at most 524280).
    #[arg(long, default_value_t = 8192)]
    max_key_size: u32,

    /// Most keys (enc_keys) or key_IDs (dec_keys) per request.
    #[arg(long, default_value_t = 128)]
    max_key_per_request: u32,

    /// Reported as max_key_count and stored_key_count (keys never run out).
    #[arg(long, default_value_t = 100_000)]
    max_key_count: u32,

    /// Fault mode to start in: ok, down, unavailable, slow or empty (status
    /// reports stored_key_count 0; keys are still served).
    #[arg(long, default_value = "ok")]
    fault: FaultMode,

    /// Delay of the slow fault mode, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,

    /// PEM certificate (chain) of the ETSI API; serves HTTPS. Needs --tls-key.
    #[arg(long, env = "KME_MOCK_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "KME_MOCK_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// PEM CA bundle client certificates must chain to; makes client
    /// certificates mandatory (mutual TLS). Needs --tls-cert.
    #[arg(long, env = "KME_MOCK_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    // clap exits with code 2 and a usage message on invalid flags.
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("kme-mock failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let config = KmeConfig {
        setup: cli.setup,
        role: cli.role,
        secret: cli.secret,
        kme_id: cli
            .kme_id
            .unwrap_or_else(|| default_kme_id(cli.setup, cli.role)),
        peer_kme_id: cli
            .peer_kme_id
            .unwrap_or_else(|| default_kme_id(cli.setup, other_role(cli.role))),
        master_sae_id: cli.master_sae_id,
        slave_sae_id: cli.slave_sae_id,
        key_size: cli.key_size,
        min_key_size: cli.min_key_size,
        max_key_size: cli.max_key_size,
        max_key_per_request: cli.max_key_per_request,
        max_key_count: cli.max_key_count,
    };
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    if cli.fault == FaultMode::Slow && cli.delay_ms == 0 {
        anyhow::bail!("--fault slow needs --delay-ms > 0");
    }
    let fault = KmeFault {
        mode: cli.fault,
        delay_ms: cli.delay_ms,
    };
    let tls = match (cli.tls_cert, cli.tls_key) {
        (Some(cert), Some(key)) => Some(KmeTls {
            cert,
            key,
            client_ca: cli.tls_client_ca,
        }),
        // clap's `requires` rules out the other combinations.
        _ => None,
    };
    // A mock with small requests: one thread is plenty and leaves the cores
    // to the rest of the lab.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async move {
        let server =
            KmeServer::start_with_tls(config, cli.listen, cli.admin_listen, fault, tls).await?;
        wait_for_signal().await?;
        info!("shutting down");
        server.shutdown().await;
        Ok(())
    })
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for ctrl-c")?,
        _ = term.recv() => {}
    }
    Ok(())
}
