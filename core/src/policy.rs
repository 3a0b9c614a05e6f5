//! Whether a manual request may run. The Admin endpoint checks it before it
//! stores a request, and the leader checks it again before it acts, since
//! the link may have changed in between.

use crate::health::SetupHealth;
use crate::link::LinkState;
use crate::types::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestKind {
    /// Planned: target must be healthy, link must not be paused.
    Switchover,
    /// Urgent: with `force`, also to an unhealthy target or while paused.
    Failover,
}

impl std::fmt::Display for RequestKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RequestKind::Switchover => "switchover",
            RequestKind::Failover => "failover",
        })
    }
}

/// A manual switch waiting in etcd for the leader.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Request {
    pub id: String,
    pub kind: RequestKind,
    pub to: Setup,
    #[serde(default)]
    pub force: bool,
    pub reason: String,
    /// Who asked: the authenticated identity (the client certificate's).
    pub requested_by: String,
    /// The client's free-text `--by` note (not authenticated), kept apart
    /// from the reason.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub by_note: String,
    #[serde(default)]
    pub at: String,
    /// Wall-clock deadline (Unix ms): no leader carries the request out
    /// after it (one stored while no leader existed is not acted on hours
    /// later). `None` in requests stored before deadlines existed.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Wall-clock time (Unix ms) before which no leader carries it out: a
    /// scheduled switchover (`lockstep switchover --at`). Until then the
    /// leader leaves it pending (and the failover policy runs as usual);
    /// at its time the request is judged like any other, and a refusal is
    /// recorded in the history (nobody waits for its answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<u64>,
    /// This switch's handover grace, instead of the link's
    /// (`lockstep switchover --grace`).
    #[serde(default)]
    pub grace_ms: Option<u64>,
}

/// The link is paused: nothing automatic, and no switchover.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Pause {
    pub reason: String,
    pub requested_by: String,
    /// The client's `--by` note, as in [`Request::by_note`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub by_note: String,
    #[serde(default)]
    pub at: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Start a switch to the target.
    Go,
    /// The target already serves; nothing to do.
    AlreadyActive,
}

/// Which refusal, without its details: what a request's outcome keeps for
/// the caller's machine-readable reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefusedKind {
    Paused,
    Unhealthy,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Refused {
    #[error("link is paused ({reason}, by {by}); run `lockstep resume` first, or `lockstep failover --ignore-health` to override")]
    Paused { reason: String, by: String },
    #[error("target {setup} is not healthy (alice: {alice}, bob: {bob}); fix it first, or use `lockstep failover --ignore-health` to switch anyway")]
    Unhealthy {
        setup: Setup,
        alice: Health,
        bob: Health,
    },
}

impl Refused {
    pub fn kind(&self) -> RefusedKind {
        match self {
            Refused::Paused { .. } => RefusedKind::Paused,
            Refused::Unhealthy { .. } => RefusedKind::Unhealthy,
        }
    }
}

/// Decides a request against the link's current state (judged from what
/// every LB reads back, not from the route alone); `target_health` is the
/// aggregated health of the target.
pub fn check_request(
    request: &Request,
    link: &LinkState,
    paused: Option<&Pause>,
    target_health: &SetupHealth,
) -> Result<Verdict, Refused> {
    let forced = request.kind == RequestKind::Failover && request.force;
    if let Some(p) = paused {
        if !forced {
            return Err(Refused::Paused {
                reason: p.reason.clone(),
                by: p.requested_by.clone(),
            });
        }
    }
    if link.settled() == Some(request.to) {
        return Ok(Verdict::AlreadyActive);
    }
    if !forced && !target_health.healthy() {
        return Err(Refused::Unhealthy {
            setup: request.to,
            alice: target_health.alice,
            bob: target_health.bob,
        });
    }
    Ok(Verdict::Go)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(kind: RequestKind, force: bool) -> Request {
        Request {
            id: "r1".into(),
            kind,
            to: Setup::Warm,
            force,
            reason: "test".into(),
            requested_by: "me".into(),
            by_note: String::new(),
            at: String::new(),
            deadline_ms: None,
            not_before_ms: None,
            grace_ms: None,
        }
    }

    fn health(up: bool) -> SetupHealth {
        let h = if up { Health::Up } else { Health::Down };
        SetupHealth {
            setup: Setup::Warm,
            alice: h,
            bob: Health::Up,
        }
    }

    /// The link as judged when every LB reads back `setup` (or, for a
    /// drain, while it is switching to it).
    fn link(setup: Setup, phase: Phase) -> LinkState {
        match phase {
            Phase::Serve => LinkState::Settled { epoch: 3, setup },
            Phase::Hold | Phase::Drain => LinkState::Switching {
                step: Step::new(3, phase),
                setup,
                waiting: Vec::new(),
            },
        }
    }

    #[test]
    fn switchover_needs_healthy_target_and_no_pause() {
        let r = link(Setup::Hot, Phase::Serve);
        let p = Pause {
            reason: "maintenance".into(),
            requested_by: "ops".into(),
            by_note: String::new(),
            at: String::new(),
        };
        let so = req(RequestKind::Switchover, false);
        assert_eq!(check_request(&so, &r, None, &health(true)), Ok(Verdict::Go));
        assert!(matches!(
            check_request(&so, &r, None, &health(false)),
            Err(Refused::Unhealthy { .. })
        ));
        assert!(matches!(
            check_request(&so, &r, Some(&p), &health(true)),
            Err(Refused::Paused { .. })
        ));
        // `force` does nothing for a switchover.
        let so_forced = req(RequestKind::Switchover, true);
        assert!(check_request(&so_forced, &r, None, &health(false)).is_err());
    }

    #[test]
    fn forced_failover_overrides_health_and_pause() {
        let r = link(Setup::Hot, Phase::Serve);
        let p = Pause {
            reason: "x".into(),
            requested_by: "y".into(),
            by_note: String::new(),
            at: String::new(),
        };
        let fo = req(RequestKind::Failover, true);
        assert_eq!(
            check_request(&fo, &r, Some(&p), &health(false)),
            Ok(Verdict::Go)
        );
        let fo = req(RequestKind::Failover, false);
        assert!(check_request(&fo, &r, None, &health(false)).is_err());
    }

    #[test]
    fn already_serving_target_is_a_no_op_but_a_drain_to_it_is_not() {
        let so = req(RequestKind::Switchover, false);
        let serving = link(Setup::Warm, Phase::Serve);
        assert_eq!(
            check_request(&so, &serving, None, &health(false)),
            Ok(Verdict::AlreadyActive)
        );
        let draining = link(Setup::Warm, Phase::Drain);
        assert_eq!(
            check_request(&so, &draining, None, &health(true)),
            Ok(Verdict::Go)
        );
    }
}
