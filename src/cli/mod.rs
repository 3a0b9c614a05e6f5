//! The `lockstep` command line, apart from its argument definitions (in
//! `src/bin/lockstep.rs`): running the sidecar, checking a config, and the
//! on-call verbs, which call any member's Admin service (the leader carries
//! them out).
//!
//! Exit codes: 0 done; 1 refused or failed (the server's reason is
//! printed); 2 bad usage or bad config; 3 no sidecar reachable.
//!
//! # Layout
//! * [`run`]: `lockstep run`, the sidecar with logging and signal handling.
//! * [`bounds`]: `lockstep check-config`, a config's derived timing bounds.
//! * [`haproxy`]: `lockstep haproxy-config`, the HAProxy config that matches
//!   a sidecar config (every shipped one is generated from it).
//! * [`admin`]: the on-call verbs over gRPC (`status`, `switchover`,
//!   `failover`, `pause`, `resume`, `history`).
//! * `progress`: `--wait`'s progress lines from the status watch.
//! * `render`: human tables and JSON from the Admin replies (pure).

pub mod admin;
pub mod bounds;
pub mod haproxy;
mod progress;
mod render;
pub mod run;

use std::io::Write as _;

/// An error for the user, with its exit code.
#[derive(Debug)]
pub struct Failure {
    /// The process's exit code (see the module doc).
    pub code: u8,
    /// What went wrong and what to do about it.
    pub message: String,
}

impl Failure {
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

/// Prints `text`; a closed pipe (`lockstep history | head`) is not an error.
pub fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// Pretty JSON with a final newline.
fn to_json<T: serde::Serialize>(v: &T) -> Result<String, Failure> {
    serde_json::to_string_pretty(v)
        .map(|mut s| {
            s.push('\n');
            s
        })
        .map_err(|e| Failure::new(1, format!("cannot print JSON: {e}")))
}
