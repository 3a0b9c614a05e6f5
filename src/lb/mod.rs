//! Load-balancer adapters. The sidecar tells its LB what to route to and
//! reads back what it really routes to; it never assumes a command worked.

pub mod haproxy;

use lockstep_core::LbTarget;
use std::future::Future;

/// What the LB reports it routes to, read back from the LB itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observed {
    /// What the LB routes new sessions to.
    pub target: LbTarget,
    /// True when the LB was (re)started since the adapter last looked, so
    /// the sidecar must re-apply its state.
    pub restarted: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error("LB management interface {endpoint} unreachable: {source}")]
    Unreachable {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("LB management interface {endpoint} timed out after {after:?}")]
    Timeout {
        endpoint: String,
        after: std::time::Duration,
    },
    #[error("LB rejected {command:?}: {answer}")]
    Rejected { command: String, answer: String },
    #[error("could not read LB state: {0}")]
    Parse(String),
    #[error("LB did not reach {wanted} (it routes to {seen})")]
    NotConfirmed { wanted: LbTarget, seen: String },
    /// The LB's own settings break what lockstep assumes (e.g. HAProxy's
    /// health checks would take longer than D to block a dead sidecar): the
    /// sidecar refuses to start, or to keep routing through this LB.
    #[error("LB settings differ from what lockstep's config assumes: {0}")]
    Misconfigured(String),
    #[error(
        "not enabling {wanted}: its deadline passed before the command could be sent \
         (the sidecar was paused or slow, so its lease may have lapsed); the other \
         setup is disabled, nothing routes"
    )]
    Expired { wanted: LbTarget },
}

/// An LB that the sidecar drives. Implementations must be break-before-make:
/// `apply(Serve(Y))` disables and closes sessions to the other setup before
/// it enables `Y`, and `apply(Blocked)` closes every session.
pub trait LoadBalancer: Send + Sync + 'static {
    /// Applies `target`, then reads the LB back and returns only when the LB
    /// confirms it (or fails). A server is enabled only if the command doing
    /// it is sent before `enable_before`: a sidecar paused (SIGSTOP, a long
    /// GC-like stall, a starved CPU) after deciding to serve must not enable
    /// its LB once its lease may have lapsed and the link moved on without
    /// it (`LbError::Expired`, the LB left routing nowhere).
    fn apply(
        &self,
        target: LbTarget,
        enable_before: Option<std::time::Instant>,
    ) -> impl Future<Output = Result<Observed, LbError>> + Send;

    /// Reads what the LB routes to now, without changing it.
    fn observe(&self) -> impl Future<Output = Result<Observed, LbError>> + Send;

    /// One line saying which of S1's guarantees this adapter keeps.
    fn guarantees(&self) -> &'static str;

    /// Checks, before the sidecar starts, that the LB's own settings keep
    /// the bounds the config assumes (DESIGN §3's D). `Misconfigured`
    /// refuses the start; other errors (LB not reachable yet) do not, and
    /// the adapter checks again before it enables anything.
    fn preflight(&self) -> impl Future<Output = Result<(), LbError>> + Send {
        async { Ok(()) }
    }

    /// Set once the adapter found the LB's settings unsafe while running
    /// (e.g. after an LB restart): why. From then on it enables nothing,
    /// and the sidecar stops.
    fn refusal(&self) -> Option<String> {
        None
    }
}
