//! Whether a manual request may run. The Admin endpoint checks it before it
//! stores a request, and the leader checks it again before it acts, since
//! the link may have changed in between.

use crate::health::SetupHealth;
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
    pub requested_by: String,
    #[serde(default)]
    pub at: String,
}

/// The link is paused: nothing automatic, and no switchover.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Pause {
    pub reason: String,
    pub requested_by: String,
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

#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Refused {
    #[error("link is paused ({reason}, by {by}); run `lockstep resume` first, or `lockstep failover --force` to override")]
    Paused { reason: String, by: String },
    #[error("target {setup} is not healthy (alice: {alice}, bob: {bob}); fix it first, or use `lockstep failover --force` to switch anyway")]
    Unhealthy {
        setup: Setup,
        alice: Health,
        bob: Health,
    },
}

/// Decides a request against the link's current state. `route` is the
/// current route; `target_health` the aggregated health of the target.
pub fn check_request(
    request: &Request,
    route: Option<&Route>,
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
    if let Some(r) = route {
        if r.setup == request.to && r.phase == Phase::Serve {
            return Ok(Verdict::AlreadyActive);
        }
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
            at: String::new(),
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

    fn route(setup: Setup, phase: Phase) -> Route {
        Route {
            epoch: 3,
            phase,
            setup,
            token: 1,
            reason: String::new(),
            requested_by: String::new(),
            at: String::new(),
        }
    }

    #[test]
    fn switchover_needs_healthy_target_and_no_pause() {
        let r = route(Setup::Hot, Phase::Serve);
        let p = Pause {
            reason: "maintenance".into(),
            requested_by: "ops".into(),
            at: String::new(),
        };
        let so = req(RequestKind::Switchover, false);
        assert_eq!(
            check_request(&so, Some(&r), None, &health(true)),
            Ok(Verdict::Go)
        );
        assert!(matches!(
            check_request(&so, Some(&r), None, &health(false)),
            Err(Refused::Unhealthy { .. })
        ));
        assert!(matches!(
            check_request(&so, Some(&r), Some(&p), &health(true)),
            Err(Refused::Paused { .. })
        ));
        // `force` does nothing for a switchover.
        let so_forced = req(RequestKind::Switchover, true);
        assert!(check_request(&so_forced, Some(&r), None, &health(false)).is_err());
    }

    #[test]
    fn forced_failover_overrides_health_and_pause() {
        let r = route(Setup::Hot, Phase::Serve);
        let p = Pause {
            reason: "x".into(),
            requested_by: "y".into(),
            at: String::new(),
        };
        let fo = req(RequestKind::Failover, true);
        assert_eq!(
            check_request(&fo, Some(&r), Some(&p), &health(false)),
            Ok(Verdict::Go)
        );
        let fo = req(RequestKind::Failover, false);
        assert!(check_request(&fo, Some(&r), None, &health(false)).is_err());
    }

    #[test]
    fn already_serving_target_is_a_no_op_but_a_drain_to_it_is_not() {
        let so = req(RequestKind::Switchover, false);
        let serving = route(Setup::Warm, Phase::Serve);
        assert_eq!(
            check_request(&so, Some(&serving), None, &health(false)),
            Ok(Verdict::AlreadyActive)
        );
        let draining = route(Setup::Warm, Phase::Drain);
        assert_eq!(
            check_request(&so, Some(&draining), None, &health(true)),
            Ok(Verdict::Go)
        );
    }
}
