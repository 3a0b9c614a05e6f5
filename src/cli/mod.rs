//! The `lockstep` command line, apart from its argument definitions (in
//! `src/bin/lockstep.rs`): running the sidecar, checking a config, and the
//! on-call verbs, which call any member's Admin service (the leader carries
//! them out).
//!
//! Exit codes ([`Exit`], listed in `--help`): 0 done; 1 refused (the
//! server's machine-readable reason, from the `google.rpc.ErrorInfo` in the
//! gRPC status, is printed with its message), or a confirmation answered
//! no; 2 bad usage or bad config; 3 unreachable (no sidecar answered, or the
//! sidecar cannot reach etcd); 4 accepted but not complete within the
//! timeout (it goes on).
//!
//! # Layout
//! * [`run`]: `lockstep run`, the sidecar with logging and signal handling.
//! * [`bounds`]: `lockstep check-config`, a config's derived timing bounds.
//! * [`haproxy`]: `lockstep haproxy-config`, the HAProxy config that matches
//!   a sidecar config (every shipped one is generated from it).
//! * [`admin`]: the on-call verbs over gRPC (`status`, `switchover`,
//!   `failover`, `pause`, `resume`, `history`), the confirmation and the
//!   dry run.
//! * `progress`: `--wait`'s progress lines from the status watch.
//! * `render`: human tables from the Admin replies (pure); JSON is the
//!   generated proto types themselves (serde derives, `build.rs`).

pub mod admin;
pub mod bounds;
pub mod haproxy;
mod progress;
mod render;
pub mod run;

use crate::rpc::reason::Reason;
use std::io::Write as _;

/// The process's exit code, by outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Done (with `--dry-run`: it would be done).
    Done = 0,
    /// Refused, with the reason; or the confirmation was answered no.
    Refused = 1,
    /// Bad usage or bad config; nothing was sent.
    Usage = 2,
    /// No sidecar answered, or the sidecar cannot reach etcd.
    Unreachable = 3,
    /// Accepted but not complete within the timeout: it goes on.
    NotComplete = 4,
}

impl Exit {
    /// The exit code for a refusal with `reason`.
    pub fn of(reason: Reason) -> Exit {
        match reason {
            Reason::Paused
            | Reason::TargetUnhealthy
            | Reason::PendingRequest
            | Reason::NoLeader
            | Reason::NotConfirmed
            | Reason::Stale
            | Reason::NotServable
            | Reason::RequestExpired
            | Reason::NotAuthorized
            | Reason::TooBusy
            | Reason::NothingToCancel => Exit::Refused,
            Reason::InvalidRequest => Exit::Usage,
            Reason::EtcdUnavailable => Exit::Unreachable,
            Reason::NotComplete | Reason::OutcomeUnknown => Exit::NotComplete,
        }
    }
}

/// The exit codes as `--help` lists them.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  done (with --dry-run: it would be done)
  1  refused, with a machine-readable reason: PAUSED, TARGET_UNHEALTHY,
     PENDING_REQUEST, NO_LEADER, REQUEST_EXPIRED, NOT_AUTHORIZED, TOO_BUSY, ...;
     or the confirmation was answered no (DECLINED)
  2  bad usage or bad config (INVALID_REQUEST), or certificates that do not fit
     the link (TLS handshake refused); nothing was sent or changed
  3  unreachable: no sidecar answered, or it cannot reach etcd (ETCD_UNAVAILABLE)
  4  accepted but not complete within the timeout (NOT_COMPLETE,
     OUTCOME_UNKNOWN): the switch goes on; follow it with `lockstep status`";

/// An error for the user, with its exit code.
#[derive(Debug)]
pub struct Failure {
    /// The process's exit code (see [`Exit`]).
    pub code: u8,
    /// What went wrong and what to do about it.
    pub message: String,
    /// The machine-readable reason: the server's (`ErrorInfo.reason`), or
    /// the CLI's own ("DECLINED" when the prompt was answered no).
    pub reason: Option<String>,
    /// The server's facts about it (`ErrorInfo.metadata`: the pending
    /// request's id, the epoch of a switch that goes on), for `--json`.
    pub facts: std::collections::BTreeMap<String, String>,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
            reason: None,
            facts: Default::default(),
        }
    }

    pub fn exit(exit: Exit, message: impl Into<String>) -> Failure {
        Failure::new(exit as u8, message)
    }

    /// A refusal carrying the server's `reason`.
    pub(crate) fn refused(reason: Reason, message: impl Into<String>) -> Failure {
        Failure {
            code: Exit::of(reason) as u8,
            message: message.into(),
            reason: Some(reason.as_str().to_string()),
            facts: Default::default(),
        }
    }

    /// The error line: `error [REASON]: message`.
    pub fn line(&self) -> String {
        match &self.reason {
            Some(r) => format!("error [{r}]: {}", self.message),
            None => format!("error: {}", self.message),
        }
    }

    /// The error as JSON (`--json`): `{"error": {"exit", "reason",
    /// "message", "facts"}}`.
    pub fn json(&self) -> String {
        let v = serde_json::json!({
            "error": {
                "exit": self.code,
                "reason": self.reason,
                "message": self.message,
                "facts": self.facts,
            }
        });
        format!("{v}\n")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_an_exit_code_and_help_names_it() {
        for r in Reason::ALL {
            let exit = Exit::of(r);
            assert_ne!(exit, Exit::Done, "{r}");
        }
        for name in [
            "PAUSED",
            "TARGET_UNHEALTHY",
            "PENDING_REQUEST",
            "NO_LEADER",
            "NOT_COMPLETE",
            "ETCD_UNAVAILABLE",
        ] {
            assert!(EXIT_CODES_HELP.contains(name), "{name}");
        }
        assert_eq!(Exit::of(Reason::NotComplete) as u8, 4);
        assert_eq!(Exit::of(Reason::EtcdUnavailable) as u8, 3);
        assert_eq!(Exit::of(Reason::InvalidRequest) as u8, 2);
        assert_eq!(Exit::of(Reason::Paused) as u8, 1);
    }
}
