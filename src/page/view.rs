//! What the status page shows, as data: the link's `StatusReply` (from the
//! `WatchStatus` stream) and its newest history records, arranged as the
//! page draws them (both ends with their KMEs and LBs, a switch in progress
//! step by step), in human words (`hot`, `drain`). Pure: no I/O. `/status`
//! serves it as JSON; the page renders the same JSON.

use crate::proto;
use crate::rpc::{applied_from_proto, phase_from_proto, setup_from_proto};
use lockstep_core::leader::HistoryRecord;
use lockstep_core::{Applied, Phase, Role, Setup};
use serde::Serialize;

/// The whole page.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct PageStatus {
    pub(crate) link: String,
    /// When this sidecar built this view, RFC 3339.
    pub(crate) updated_at: String,
    /// Set when the view is stale: the sidecar cannot watch etcd now.
    pub(crate) error: Option<String>,
    /// The sidecar serving the page.
    pub(crate) served_by: String,
    pub(crate) leader: String,
    pub(crate) token: i64,
    pub(crate) route: Option<RouteView>,
    /// The link's state in words (settled, switching: waiting for whom, or
    /// the LBs disagreeing with the route).
    pub(crate) state: String,
    pub(crate) settled: bool,
    /// What the failover policy would do next, and why.
    pub(crate) policy: String,
    /// Some member serves gRPC without TLS or authorization.
    pub(crate) insecure: bool,
    /// The pause's reason, by whom and when, while paused.
    pub(crate) paused: Option<String>,
    pub(crate) pending: Option<PendingView>,
    /// Per setup: each end's health and whether the setup is healthy.
    pub(crate) health: Vec<SetupHealthView>,
    /// Alice's end, then Bob's.
    pub(crate) ends: Vec<EndView>,
    /// Set while the LBs have not all reached the route.
    pub(crate) switch: Option<SwitchView>,
    /// The newest records first, at most `limits::PAGE_HISTORY`.
    pub(crate) history: Vec<HistoryView>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct RouteView {
    pub(crate) epoch: u64,
    pub(crate) phase: Option<Phase>,
    pub(crate) setup: Option<Setup>,
    pub(crate) reason: String,
    pub(crate) requested_by: String,
    pub(crate) at: String,
    /// A planned switch's hold: the issuing end blocks; the other end keeps
    /// `from` for `grace_ms`.
    pub(crate) handover: Option<HandoverView>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct HandoverView {
    pub(crate) issuer: Option<Role>,
    pub(crate) from: Option<Setup>,
    pub(crate) grace_ms: u64,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct PendingView {
    pub(crate) id: String,
    pub(crate) to: Option<Setup>,
    pub(crate) force: bool,
    pub(crate) reason: String,
    pub(crate) requested_by: String,
    pub(crate) at: String,
    /// A scheduled switchover's time (RFC 3339); empty otherwise.
    pub(crate) not_before: String,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct SetupHealthView {
    pub(crate) setup: Option<Setup>,
    /// "up", "down" or "unknown".
    pub(crate) alice: String,
    pub(crate) bob: String,
    pub(crate) healthy: bool,
}

/// One end of the link: its two KMEs and its LBs.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct EndView {
    pub(crate) role: Role,
    /// Hot, then warm: the KME's health as this end probes it.
    pub(crate) kmes: Vec<KmeView>,
    pub(crate) lbs: Vec<LbView>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct KmeView {
    pub(crate) setup: Setup,
    pub(crate) health: String,
    /// Whether this end's LBs route to it now (all, some or none).
    pub(crate) routed_by: usize,
}

/// One member: its LB and what it applied.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct LbView {
    pub(crate) id: String,
    /// "hot", "warm", "blocked" or "unknown": what the LB reads back.
    pub(crate) routes: String,
    /// The member's own words for it (e.g. "blocked (by LB checks)").
    pub(crate) routes_detail: String,
    pub(crate) applied: Option<Applied>,
    pub(crate) leader: bool,
    pub(crate) lease_fresh: bool,
    pub(crate) lease_age_ms: u64,
    /// Set while etcd's route is below what it applied: it stays blocked.
    pub(crate) behind: String,
    pub(crate) hot: String,
    pub(crate) warm: String,
    /// Why the health is what it is (e.g. "member did not answer").
    pub(crate) detail: String,
    pub(crate) grpc_address: String,
}

/// A switch in progress, step by step.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct SwitchView {
    pub(crate) epoch: u64,
    pub(crate) from: Option<Setup>,
    pub(crate) to: Option<Setup>,
    pub(crate) steps: Vec<StepView>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct StepView {
    pub(crate) phase: Phase,
    /// What the step does, in words.
    pub(crate) what: String,
    /// "done", "current" or "next".
    pub(crate) state: &'static str,
    /// Members that applied this step (or a later one).
    pub(crate) done: Vec<String>,
    /// Members that have not yet.
    pub(crate) waiting: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct HistoryView {
    pub(crate) epoch: u64,
    pub(crate) kind: String,
    pub(crate) from: Option<Setup>,
    pub(crate) to: Setup,
    pub(crate) outcome: String,
    pub(crate) reason: String,
    pub(crate) requested_by: String,
    pub(crate) leader: String,
    pub(crate) started_at: String,
    pub(crate) drain_ms: u64,
    pub(crate) hold_ms: u64,
    pub(crate) grace_ms: u64,
    pub(crate) total_ms: u64,
    pub(crate) fenced_members: Vec<String>,
}

fn role_from_proto(v: i32) -> Option<Role> {
    match proto::Role::try_from(v).ok()? {
        proto::Role::Alice => Some(Role::Alice),
        proto::Role::Bob => Some(Role::Bob),
        proto::Role::Unspecified => None,
    }
}

/// "hot", "warm", "blocked" or "unknown": what a member's LB routes to.
fn routes_word(lb: proto::LbRoute) -> &'static str {
    match lb {
        proto::LbRoute::Hot => "hot",
        proto::LbRoute::Warm => "warm",
        proto::LbRoute::Blocked => "blocked",
        proto::LbRoute::Unknown => "unknown",
    }
}

fn end_name(role: Role) -> &'static str {
    match role {
        Role::Alice => "Alice",
        Role::Bob => "Bob",
    }
}

fn step_what(phase: Phase, to: Option<Setup>, handover: Option<&HandoverView>) -> String {
    let to = to.map_or("?", Setup::as_str);
    match phase {
        Phase::Hold => match handover.and_then(|h| h.issuer) {
            Some(issuer) => {
                let other = match issuer {
                    Role::Alice => Role::Bob,
                    Role::Bob => Role::Alice,
                };
                let from = handover
                    .and_then(|h| h.from)
                    .map_or("the old setup", Setup::as_str);
                let grace = handover.map_or(0, |h| h.grace_ms);
                format!(
                    "hold: {}'s LBs block (no new keys); {}'s keep {from} for the grace ({grace} ms) so keys in transit can be fetched",
                    end_name(issuer),
                    end_name(other)
                )
            }
            None => {
                "hold: the issuing end blocks; the other keeps the old setup for the grace".into()
            }
        },
        Phase::Drain => "drain: every LB blocks".into(),
        Phase::Serve => format!("serve: every LB routes to {to}"),
    }
}

/// The steps of the switch to `route`, with who has applied each.
fn switch_view(route: &RouteView, lbs: &[(String, Option<Applied>)]) -> SwitchView {
    let mut phases = Vec::new();
    if route.handover.is_some() || route.phase == Some(Phase::Hold) {
        phases.push(Phase::Hold);
    }
    phases.extend([Phase::Drain, Phase::Serve]);
    let steps = phases
        .into_iter()
        .map(|phase| {
            let (mut done, mut waiting) = (Vec::new(), Vec::new());
            for (id, applied) in lbs {
                let reached = applied.is_some_and(|a| {
                    a.epoch > route.epoch || (a.epoch == route.epoch && a.phase >= phase)
                });
                if reached {
                    done.push(id.clone());
                } else {
                    waiting.push(id.clone());
                }
            }
            // The route's phase is the current step until the next write,
            // even once every LB applied it (a hold waits for its grace).
            let state = match route.phase {
                Some(p) if phase < p => "done",
                Some(p) if phase == p => "current",
                _ => "next",
            };
            StepView {
                phase,
                what: step_what(phase, route.setup, route.handover.as_ref()),
                state,
                done,
                waiting,
            }
        })
        .collect();
    let from = route.handover.as_ref().and_then(|h| h.from).or_else(|| {
        lbs.iter()
            .filter_map(|(_, a)| *a)
            .filter(|a| a.epoch < route.epoch && a.phase == Phase::Serve)
            .map(|a| a.setup)
            .next()
    });
    SwitchView {
        epoch: route.epoch,
        from,
        to: route.setup,
        steps,
    }
}

/// The page's view of `status` and the newest `history` records.
pub(crate) fn build(
    status: &proto::StatusReply,
    history: &[HistoryRecord],
    served_by: &str,
    now: String,
) -> PageStatus {
    let route = status.route.as_ref().map(|r| RouteView {
        epoch: r.epoch,
        phase: phase_from_proto(r.phase),
        setup: setup_from_proto(r.setup),
        reason: r.reason.clone(),
        requested_by: r.requested_by.clone(),
        at: r.at.clone(),
        handover: role_from_proto(r.handover_issuer).map(|issuer| HandoverView {
            issuer: Some(issuer),
            from: setup_from_proto(r.handover_from),
            grace_ms: r.grace_ms,
        }),
    });
    let health: Vec<SetupHealthView> = status
        .health
        .iter()
        .map(|h| SetupHealthView {
            setup: setup_from_proto(h.setup),
            alice: h.alice.clone(),
            bob: h.bob.clone(),
            healthy: h.healthy,
        })
        .collect();
    let lb_of = |m: &proto::MemberState| {
        let h = m.health.clone().unwrap_or_default();
        LbView {
            id: m.id.clone(),
            routes: routes_word(m.lb()).into(),
            routes_detail: m.lb_routes.clone(),
            applied: m.applied.as_ref().and_then(applied_from_proto),
            leader: !status.leader.is_empty() && m.id == status.leader,
            lease_fresh: m.lease_fresh,
            lease_age_ms: m.lease_age_ms,
            behind: m.behind.clone(),
            hot: h.hot,
            warm: h.warm,
            detail: h.detail,
            grpc_address: m.grpc_address.clone(),
        }
    };
    let ends = [Role::Alice, Role::Bob]
        .into_iter()
        .map(|role| {
            let mut lbs: Vec<LbView> = status
                .members
                .iter()
                .filter(|m| role_from_proto(m.role) == Some(role))
                .map(lb_of)
                .collect();
            lbs.sort_by(|a, b| a.id.cmp(&b.id));
            let kmes = Setup::ALL
                .into_iter()
                .map(|setup| KmeView {
                    setup,
                    health: health.iter().find(|h| h.setup == Some(setup)).map_or(
                        "unknown".into(),
                        |h| match role {
                            Role::Alice => h.alice.clone(),
                            Role::Bob => h.bob.clone(),
                        },
                    ),
                    routed_by: lbs.iter().filter(|l| l.routes == setup.as_str()).count(),
                })
                .collect();
            EndView { role, kmes, lbs }
        })
        .collect::<Vec<_>>();
    let switch = route.as_ref().filter(|_| !status.settled).map(|r| {
        let lbs: Vec<(String, Option<Applied>)> = ends
            .iter()
            .flat_map(|e| e.lbs.iter().map(|l| (l.id.clone(), l.applied)))
            .collect();
        switch_view(r, &lbs)
    });
    PageStatus {
        link: status.link.clone(),
        updated_at: now,
        error: None,
        served_by: served_by.into(),
        leader: status.leader.clone(),
        token: status.token,
        route,
        state: status.state.clone(),
        settled: status.settled,
        policy: status.policy.clone(),
        insecure: status.insecure,
        paused: status.paused.then(|| status.paused_reason.clone()),
        pending: status.pending.as_ref().map(|p| PendingView {
            id: p.id.clone(),
            to: setup_from_proto(p.to),
            force: p.force,
            reason: p.reason.clone(),
            requested_by: p.requested_by.clone(),
            at: p.at.clone(),
            not_before: p.not_before.clone(),
        }),
        health,
        ends,
        switch,
        history: history
            .iter()
            .take(crate::limits::PAGE_HISTORY)
            .map(|h| HistoryView {
                epoch: h.epoch,
                kind: h.kind.to_string(),
                from: h.from,
                to: h.to,
                outcome: h.outcome.to_string(),
                reason: h.reason.clone(),
                requested_by: h.requested_by.clone(),
                leader: h.leader.clone(),
                started_at: h.started_at.clone(),
                drain_ms: h.drain_ms,
                hold_ms: h.hold_ms,
                grace_ms: h.grace_ms,
                total_ms: h.total_ms,
                fenced_members: h.fenced_members.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::{applied_to_proto, phase_to_proto, role_to_proto, setup_to_proto};

    /// `lb_routes` (the words) is left unlike the page's words on purpose:
    /// the page reads the typed `lb`.
    fn member(id: &str, role: Role, applied: Applied, lb: proto::LbRoute) -> proto::MemberState {
        proto::MemberState {
            id: id.into(),
            role: role_to_proto(role) as i32,
            grpc_address: "127.0.0.1:1".into(),
            applied: Some(applied_to_proto(&applied)),
            lb_routes: format!("{lb:?} (words for people)"),
            lb: lb as i32,
            health: Some(proto::Health {
                hot: "up".into(),
                warm: "up".into(),
                detail: String::new(),
            }),
            lease_age_ms: 10,
            lease_fresh: true,
            behind: String::new(),
            insecure: false,
            failsafe: String::new(),
        }
    }

    fn applied(epoch: u64, phase: Phase, setup: Setup) -> Applied {
        Applied {
            epoch,
            phase,
            setup,
        }
    }

    fn status(phase: Phase, members: Vec<proto::MemberState>, settled: bool) -> proto::StatusReply {
        proto::StatusReply {
            link: "qkd-1".into(),
            leader: "alice-0".into(),
            token: 5,
            route: Some(proto::Route {
                epoch: 3,
                phase: phase_to_proto(phase) as i32,
                setup: setup_to_proto(Setup::Warm) as i32,
                reason: "patching hot".into(),
                ..Default::default()
            }),
            members,
            health: Setup::ALL
                .iter()
                .map(|s| proto::SetupHealth {
                    setup: setup_to_proto(*s) as i32,
                    alice: "up".into(),
                    bob: "down".into(),
                    healthy: false,
                })
                .collect(),
            settled,
            ..Default::default()
        }
    }

    #[test]
    fn a_drain_in_progress_shows_who_has_blocked_and_who_not() {
        let s = status(
            Phase::Drain,
            vec![
                member(
                    "bob-0",
                    Role::Bob,
                    applied(2, Phase::Serve, Setup::Hot),
                    proto::LbRoute::Hot,
                ),
                member(
                    "alice-0",
                    Role::Alice,
                    applied(3, Phase::Drain, Setup::Warm),
                    proto::LbRoute::Blocked,
                ),
            ],
            false,
        );
        let v = build(&s, &[], "alice-0", "now".into());
        assert_eq!(v.ends[0].role, Role::Alice);
        assert_eq!(v.ends[0].lbs[0].routes, "blocked");
        assert!(v.ends[0].lbs[0].leader);
        assert_eq!(v.ends[1].kmes[0].health, "down");
        assert_eq!(v.ends[1].kmes[0].routed_by, 1);
        let sw = v.switch.expect("switch in progress");
        assert_eq!(sw.from, Some(Setup::Hot));
        assert_eq!(sw.to, Some(Setup::Warm));
        let phases: Vec<_> = sw.steps.iter().map(|s| (s.phase, s.state)).collect();
        assert_eq!(phases, [(Phase::Drain, "current"), (Phase::Serve, "next")]);
        assert_eq!(sw.steps[0].done, ["alice-0"]);
        assert_eq!(sw.steps[0].waiting, ["bob-0"]);
    }

    #[test]
    fn a_settled_link_has_no_switch_and_json_uses_human_names() {
        let s = status(
            Phase::Serve,
            vec![member(
                "alice-0",
                Role::Alice,
                applied(3, Phase::Serve, Setup::Warm),
                proto::LbRoute::Warm,
            )],
            true,
        );
        let v = build(&s, &[], "alice-0", "now".into());
        assert!(v.switch.is_none());
        let j = serde_json::to_value(&v).expect("json");
        assert_eq!(j["route"]["phase"], "serve");
        assert_eq!(j["route"]["setup"], "warm");
        assert_eq!(j["ends"][0]["role"], "alice");
        assert_eq!(j["ends"][0]["lbs"][0]["applied"]["setup"], "warm");
    }
}
