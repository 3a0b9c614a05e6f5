//! `lockstep run`: the sidecar beside one LB, with its logging, until
//! SIGTERM or Ctrl-C.

use super::bounds::load_config;
use super::Failure;
use std::path::Path;
use tracing_subscriber::fmt::format::FmtSpan;

/// How log lines are written (filtered with `RUST_LOG`, default `info`).
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Resolves on SIGTERM (Kubernetes, systemd) or Ctrl-C.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("stop requested: blocking the LB and leaving the link");
}

/// Runs the sidecar with the config at `path` until it is asked to stop;
/// `spans`: also a line when each span closes, with how long it was open.
pub fn run_sidecar(path: &Path, format: LogFormat, spans: bool) -> Result<(), Failure> {
    // Test builds only: failpoints from the FAILPOINTS environment variable
    // (e.g. "leader-after-drain-write=sleep(3000)").
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let config = load_config(path)?;
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // A close line carries how long the span was open (busy + idle).
    let span_events = if spans { FmtSpan::CLOSE } else { FmtSpan::NONE };
    let init = match format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_span_events(span_events)
            .try_init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_span_events(span_events)
            .try_init(),
    };
    init.map_err(|e| Failure::new(1, format!("cannot set up logging: {e}")))?;
    let rt = tokio::runtime::Runtime::new()
        .map_err(|e| Failure::new(1, format!("cannot start the async runtime: {e}")))?;
    rt.block_on(crate::sidecar::run(config, shutdown_signal()))
        .map_err(|e| Failure::new(1, format!("{e:#}")))
}
