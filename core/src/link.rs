//! What the link does, judged from what every member's LB reads back
//! against etcd's route: the one definition of "the switch is complete",
//! "already there" and "the LBs disagree with the route". The leader, the
//! Admin service, `lockstep status` and `--wait` all ask this.

use crate::types::*;
use serde::{Deserialize, Serialize};
use std::fmt;

/// One member as the link state sees it: what it applied and what its LB
/// was last confirmed (read back) to route to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberLb {
    pub id: MemberId,
    pub role: Role,
    pub applied: Option<Applied>,
    pub lb: Option<LbTarget>,
}

/// The link, judged.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum LinkState {
    /// No route and no member has applied anything: a new link.
    New,
    /// The route serves `setup` and every member applied it and reads it
    /// back: a switch to `setup` is complete.
    Settled { epoch: Epoch, setup: Setup },
    /// A switch is under way: the route drains, or these members have not
    /// applied its serve (or their LB has not read it back) yet.
    Switching {
        step: Step,
        setup: Setup,
        waiting: Vec<MemberId>,
    },
    /// These members have applied more than the route, or another setup at
    /// its epoch: the route was lost or rolled back (an old etcd snapshot,
    /// an operator's delete). The leader re-establishes the link.
    Disagrees {
        route: Option<Step>,
        members: Vec<MemberLb>,
    },
}

impl LinkState {
    /// The setup every LB serves, if the link is settled.
    pub fn settled(&self) -> Option<Setup> {
        match self {
            LinkState::Settled { setup, .. } => Some(*setup),
            _ => None,
        }
    }
}

impl fmt::Display for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkState::New => f.write_str("new link: no route yet"),
            LinkState::Settled { epoch, setup } => {
                write!(f, "every LB serves {setup} (epoch {epoch})")
            }
            LinkState::Switching {
                step,
                setup,
                waiting,
            } => {
                write!(f, "switching to {setup} at {step}")?;
                if !waiting.is_empty() {
                    write!(f, "; waiting for {}", waiting.join(", "))?;
                }
                Ok(())
            }
            LinkState::Disagrees { route, members } => {
                match route {
                    Some(step) => write!(f, "LBs disagree with etcd's route ({step}):")?,
                    None => f.write_str("etcd holds no route, but LBs have applied one:")?,
                }
                for m in members {
                    let applied = m.applied.map_or("nothing".to_string(), |a| {
                        format!("{} {}", a.step(), a.setup)
                    });
                    let lb = m.lb.map_or("unknown".to_string(), |t| t.to_string());
                    write!(f, " {} applied {applied}, LB {lb};", m.id)?;
                }
                f.write_str(" the leader re-establishes the link")
            }
        }
    }
}

/// Judges the link from etcd's `route` and every registered member.
pub fn link_state(route: Option<&Route>, members: impl IntoIterator<Item = MemberLb>) -> LinkState {
    let members: Vec<MemberLb> = members.into_iter().collect();
    let Some(route) = route else {
        let applied: Vec<MemberLb> = members
            .into_iter()
            .filter(|m| m.applied.is_some())
            .collect();
        return if applied.is_empty() {
            LinkState::New
        } else {
            LinkState::Disagrees {
                route: None,
                members: applied,
            }
        };
    };
    let ahead: Vec<MemberLb> = members
        .iter()
        .filter(|m| {
            m.applied.is_some_and(|a| {
                a.epoch > route.epoch || (a.epoch == route.epoch && a.setup != route.setup)
            })
        })
        .cloned()
        .collect();
    if !ahead.is_empty() {
        return LinkState::Disagrees {
            route: Some(route.step()),
            members: ahead,
        };
    }
    // What a member's LB reads back once it applied the route: at a hold's
    // receiving end, the old setup is as good as blocked.
    let reflects = |m: &MemberLb| match (route.phase, route.handover, m.lb) {
        (Phase::Hold, Some(h), Some(LbTarget::Serve(s))) => h.issuer != m.role && s == h.from,
        (phase, _, lb) => lb == Some(LbTarget::at(phase, route.setup)),
    };
    let waiting: Vec<MemberId> = members
        .iter()
        .filter(|m| m.applied != Some(route.applied()) || !reflects(m))
        .map(|m| m.id.clone())
        .collect();
    if route.phase == Phase::Serve && waiting.is_empty() {
        LinkState::Settled {
            epoch: route.epoch,
            setup: route.setup,
        }
    } else {
        LinkState::Switching {
            step: route.step(),
            setup: route.setup,
            waiting,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(epoch: Epoch, phase: Phase, setup: Setup) -> Route {
        Route {
            epoch,
            phase,
            setup,
            token: 1,
            reason: String::new(),
            requested_by: String::new(),
            at: String::new(),
            handover: None,
            roster: Vec::new(),
        }
    }

    fn member(id: &str, applied: Option<(Epoch, Phase, Setup)>, lb: Option<LbTarget>) -> MemberLb {
        MemberLb {
            id: id.into(),
            role: if id.starts_with("alice") {
                Role::Alice
            } else {
                Role::Bob
            },
            applied: applied.map(|(epoch, phase, setup)| Applied {
                epoch,
                phase,
                setup,
            }),
            lb,
        }
    }

    #[test]
    fn settled_only_when_every_lb_reads_back_the_route() {
        let r = route(3, Phase::Serve, Setup::Warm);
        let serving = Some(LbTarget::Serve(Setup::Warm));
        let a = member("alice-0", Some((3, Phase::Serve, Setup::Warm)), serving);
        let b = member("bob-0", Some((3, Phase::Serve, Setup::Warm)), serving);
        assert_eq!(
            link_state(Some(&r), [a.clone(), b.clone()]),
            LinkState::Settled {
                epoch: 3,
                setup: Setup::Warm
            }
        );
        // Applied, but the LB no longer reads it back (drift, HAProxy down).
        let b_lost = member("bob-0", Some((3, Phase::Serve, Setup::Warm)), None);
        assert_eq!(
            link_state(Some(&r), [a.clone(), b_lost]),
            LinkState::Switching {
                step: r.step(),
                setup: Setup::Warm,
                waiting: vec!["bob-0".into()]
            }
        );
        // A drain is never settled.
        let d = route(4, Phase::Drain, Setup::Hot);
        assert!(link_state(Some(&d), [a, b]).settled().is_none());
    }

    #[test]
    fn a_lost_or_rolled_back_route_disagrees_with_the_lbs() {
        let serving = Some(LbTarget::Serve(Setup::Warm));
        let a = member("alice-0", Some((7, Phase::Serve, Setup::Warm)), serving);
        let fresh = member("bob-0", None, Some(LbTarget::Blocked));
        let lost = link_state(None, [a.clone(), fresh.clone()]);
        assert!(
            matches!(&lost, LinkState::Disagrees { route: None, members } if members.len() == 1)
        );
        assert!(
            lost.to_string().contains("alice-0 applied 7/serve warm"),
            "{lost}"
        );
        let rolled_back = route(2, Phase::Serve, Setup::Hot);
        assert!(matches!(
            link_state(Some(&rolled_back), [a, fresh.clone()]),
            LinkState::Disagrees { route: Some(_), .. }
        ));
        assert_eq!(link_state(None, [fresh]), LinkState::New);
    }
}
