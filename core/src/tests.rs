//! Protocol tests: focused member/leader cases and seeded whole-link runs.

use crate::leader::*;
use crate::member::*;
use crate::sim::{member_config, Sim};
use crate::time::{Duration, Time};
use crate::types::*;

fn route(epoch: Epoch, phase: Phase, setup: Setup, token: Token) -> Route {
    Route {
        epoch,
        phase,
        setup,
        token,
        reason: String::new(),
        requested_by: String::new(),
        at: String::new(),
        handover: None,
        roster: Vec::new(),
    }
}

/// A revision that grows with the route's step, as etcd's would.
fn rev_of(r: &Route) -> Rev {
    r.epoch as Rev * 10 + r.phase as Rev
}

/// A link read at the route's revision, nothing applied elsewhere.
fn read(route: Option<Route>) -> LinkRead {
    let rev = route.as_ref().map_or(1, rev_of);
    LinkRead {
        route,
        rev,
        floor: 0,
    }
}

/// The route as the etcd watch delivers it.
fn seen(r: Route) -> MemberEvent {
    let rev = rev_of(&r);
    MemberEvent::RouteSeen { route: r, rev }
}

fn push(req: RequestId, phase: Phase, epoch: Epoch, token: Token, setup: Setup) -> MemberEvent {
    MemberEvent::Peer {
        req,
        push: Push {
            phase,
            epoch,
            token,
            setup,
        },
    }
}

fn leader_config() -> LeaderConfig {
    LeaderConfig {
        id: "l".into(),
        token: 10,
        wall_ms_at_start: 0,
        initial_setup: Setup::Hot,
        resend_every: Duration::from_millis(300),
        handover: None,
        failsafe: None,
    }
}

fn record(role: Role, applied: Option<Applied>) -> MemberRecord {
    MemberRecord {
        role,
        grpc: "addr".into(),
        applied,
        lb: applied.map(|a| LbTarget::at(a.phase, a.setup)),
        health: crate::health::RoleHealth {
            hot: Health::Up,
            warm: Health::Up,
        },
        behind: None,
    }
}

fn listed(id: &str, role: Role, applied: Option<Applied>, rev: Rev) -> Listed {
    Listed {
        id: id.into(),
        record: record(role, applied),
        rev,
        lease: 1,
    }
}

fn request(kind: crate::policy::RequestKind, to: Setup) -> crate::policy::Request {
    crate::policy::Request {
        id: "r".into(),
        kind,
        to,
        force: kind == crate::policy::RequestKind::Failover,
        reason: "go".into(),
        requested_by: "u".into(),
        by_note: String::new(),
        at: String::new(),
        deadline_ms: None,
        not_before_ms: None,
        grace_ms: None,
    }
}

fn leader_actions(l: &mut Leader) -> Vec<LeaderAction> {
    std::iter::from_fn(|| l.poll_action()).collect()
}

fn actions(m: &mut Member) -> Vec<MemberAction> {
    std::iter::from_fn(|| m.poll_action()).collect()
}

fn apply_block() -> MemberAction {
    MemberAction::ApplyLb {
        target: LbTarget::Blocked,
        enable_before: None,
    }
}

/// The serve a member decides under a lease whose last acknowledged
/// keep-alive was sent at `lease_sent_at`.
fn apply_serve(setup: Setup, lease_sent_at: Time) -> MemberAction {
    let cfg = member_config("alice-0", Role::Alice);
    MemberAction::ApplyLb {
        target: LbTarget::Serve(setup),
        enable_before: Some(lease_sent_at + cfg.lease_ttl - cfg.margin - cfg.lb_down_bound),
    }
}

/// A synced member whose LB confirms every apply at once.
fn synced_member(route_now: Option<Route>) -> Member {
    let mut m = Member::new(member_config("alice-0", Role::Alice), Time::ZERO);
    m.handle(
        Time(1),
        MemberEvent::Synced {
            read: read(route_now),
            lease_sent_at: Time(1),
            lease: 1,
        },
    );
    confirm_all(&mut m, Time(2));
    m
}

/// Confirms LB applies until the member asks for nothing more; returns the
/// other actions.
fn confirm_all(m: &mut Member, now: Time) -> Vec<MemberAction> {
    let mut other = Vec::new();
    for _ in 0..10 {
        let acts = actions(m);
        if acts.is_empty() {
            break;
        }
        for a in acts {
            match a {
                MemberAction::ApplyLb { target, .. } => {
                    m.handle(now, MemberEvent::LbConfirmed { target })
                }
                a => other.push(a),
            }
        }
    }
    other
}

#[test]
fn member_starts_blocked_and_serves_the_route_it_reads() {
    let mut m = Member::new(member_config("alice-0", Role::Alice), Time::ZERO);
    assert_eq!(actions(&mut m), vec![apply_block()]);
    assert!(!m.view().routable(Setup::Hot, Time(0), Duration::ZERO));
    m.handle(
        Time(1),
        MemberEvent::LbConfirmed {
            target: LbTarget::Blocked,
        },
    );
    m.handle(
        Time(2),
        MemberEvent::Synced {
            read: read(Some(route(3, Phase::Serve, Setup::Hot, 7))),
            lease_sent_at: Time(2),
            lease: 1,
        },
    );
    assert_eq!(actions(&mut m), vec![apply_serve(Setup::Hot, Time(2))]);
    // The check answers routable as soon as the serve is decided, so the LB
    // finds the server up when it is enabled.
    let d = m.config().lb_down_bound;
    assert!(m.view().routable(Setup::Hot, Time(3), d));
    assert!(!m.view().routable(Setup::Warm, Time(3), d));
    m.handle(
        Time(3),
        MemberEvent::LbConfirmed {
            target: LbTarget::Serve(Setup::Hot),
        },
    );
    assert_eq!(
        actions(&mut m),
        vec![MemberAction::WriteApplied(Applied {
            epoch: 3,
            phase: Phase::Serve,
            setup: Setup::Hot
        })]
    );
}

#[test]
fn drain_is_acked_only_after_the_lb_confirms_the_block() {
    let mut m = synced_member(Some(route(1, Phase::Serve, Setup::Hot, 5)));
    // The push is ahead of the watch: one read confirms it.
    m.handle(Time(10), push(1, Phase::Drain, 2, 5, Setup::Warm));
    assert_eq!(actions(&mut m), vec![MemberAction::ReadRoute(1)]);
    assert_eq!(
        m.view().desired,
        LbTarget::Serve(Setup::Hot),
        "a push alone changes nothing"
    );
    let drain = route(2, Phase::Drain, Setup::Warm, 5);
    m.handle(
        Time(10),
        MemberEvent::RouteRead {
            read: 1,
            rev: rev_of(&drain),
            route: Some(drain),
        },
    );
    let acts = actions(&mut m);
    assert_eq!(acts, vec![apply_block()], "no reply before the LB confirms");
    assert!(!m.view().routable(Setup::Hot, Time(10), Duration::ZERO));
    m.handle(
        Time(11),
        MemberEvent::LbConfirmed {
            target: LbTarget::Blocked,
        },
    );
    let drained = Applied {
        epoch: 2,
        phase: Phase::Drain,
        setup: Setup::Warm,
    };
    assert_eq!(
        actions(&mut m),
        vec![
            MemberAction::WriteApplied(drained),
            MemberAction::Reply {
                req: 1,
                result: Ok(drained)
            }
        ]
    );
}

#[test]
fn drain_acks_after_down_bound_when_the_lb_cannot_confirm() {
    let mut m = synced_member(Some(route(1, Phase::Serve, Setup::Hot, 5)));
    m.handle(Time(100), seen(route(2, Phase::Drain, Setup::Warm, 5)));
    m.handle(Time(100), push(9, Phase::Drain, 2, 5, Setup::Warm));
    assert_eq!(actions(&mut m), vec![apply_block()]);
    m.handle(
        Time(110),
        MemberEvent::LbFailed {
            target: LbTarget::Blocked,
        },
    );
    let d = m.config().lb_down_bound;
    assert_eq!(m.poll_timeout(), Some(Time(100) + d).min(m.poll_timeout()));
    // Before D has passed: no ack (retries of the LB command only).
    m.handle(Time(100) + d - Duration::from_millis(1), MemberEvent::Tick);
    assert!(actions(&mut m)
        .iter()
        .all(|a| matches!(a, MemberAction::ApplyLb { .. })));
    m.handle(Time(100) + d, MemberEvent::Tick);
    let acts = actions(&mut m);
    assert!(
        acts.iter().any(|a| matches!(
            a,
            MemberAction::Reply {
                req: 9,
                result: Ok(_)
            }
        )),
        "after D the dead-man's switch has blocked the LB: {acts:?}"
    );
}

#[test]
fn stale_tokens_and_steps_are_rejected() {
    let mut m = synced_member(Some(route(4, Phase::Serve, Setup::Hot, 20)));
    m.handle(Time(5), push(1, Phase::Drain, 5, 19, Setup::Warm));
    assert_eq!(
        actions(&mut m),
        vec![MemberAction::Reply {
            req: 1,
            result: Err(Refusal::StaleToken { got: 19, route: 20 })
        }]
    );
    m.handle(Time(6), push(2, Phase::Serve, 3, 20, Setup::Warm));
    assert_eq!(
        actions(&mut m),
        vec![MemberAction::Reply {
            req: 2,
            result: Err(Refusal::StaleStep {
                got: Step::new(3, Phase::Serve),
                current: Step::new(4, Phase::Serve)
            })
        }]
    );
    // Nothing changed: still serving hot.
    assert_eq!(m.view().desired, LbTarget::Serve(Setup::Hot));
}

#[test]
fn a_serve_naming_another_setup_than_the_route_is_refused() {
    let mut m = synced_member(Some(route(4, Phase::Drain, Setup::Warm, 20)));
    m.handle(Time(5), push(1, Phase::Serve, 4, 20, Setup::Hot));
    assert!(matches!(
        actions(&mut m).as_slice(),
        [MemberAction::Reply {
            result: Err(Refusal::NotConfirmed { route: Some(_), .. }),
            ..
        }]
    ));
}

/// The attack that split a link: one plain-gRPC Serve with a made-up
/// epoch, a large token and the other setup. etcd does not confirm it, so
/// nothing changes: not the LB, not the epoch the member accepts next.
#[test]
fn a_forged_serve_is_refused_once_etcd_does_not_confirm_it() {
    let hot = route(3, Phase::Serve, Setup::Hot, 7);
    let mut m = synced_member(Some(hot.clone()));
    m.handle(Time(5), push(1, Phase::Serve, 1003, 1 << 40, Setup::Warm));
    assert_eq!(actions(&mut m), vec![MemberAction::ReadRoute(1)]);
    m.handle(
        Time(6),
        MemberEvent::RouteRead {
            read: 1,
            rev: rev_of(&hot),
            route: Some(hot.clone()),
        },
    );
    assert_eq!(
        actions(&mut m),
        vec![MemberAction::Reply {
            req: 1,
            result: Err(Refusal::NotConfirmed {
                rev: rev_of(&hot),
                route: Some(hot.step())
            })
        }]
    );
    let view = m.view();
    assert_eq!(view.desired, LbTarget::Serve(Setup::Hot));
    assert_eq!(view.accepted, Some(hot.applied()));
    // A forged Drain with a huge epoch does not raise the epoch accepted
    // next either: the leader's next switch is still taken.
    m.handle(Time(7), push(2, Phase::Drain, 5000, 1 << 40, Setup::Warm));
    m.handle(
        Time(8),
        MemberEvent::RouteRead {
            read: 1,
            rev: rev_of(&hot),
            route: Some(hot),
        },
    );
    assert!(matches!(
        actions(&mut m).as_slice(),
        [
            MemberAction::ReadRoute(1),
            MemberAction::Reply {
                req: 2,
                result: Err(Refusal::NotConfirmed { .. })
            }
        ]
    ));
    let next = route(4, Phase::Drain, Setup::Warm, 7);
    m.handle(Time(9), seen(next));
    assert_eq!(actions(&mut m), vec![apply_block()]);
}

/// Pushes that arrive while a read is in flight need a read issued after
/// them (the one in flight may predate the leader's write); however many
/// arrive, one more read is enough.
#[test]
fn pushes_during_a_read_wait_for_one_more_read() {
    let hot = route(1, Phase::Serve, Setup::Hot, 5);
    let mut m = synced_member(Some(hot.clone()));
    m.handle(Time(5), push(1, Phase::Drain, 2, 5, Setup::Warm));
    m.handle(Time(5), push(2, Phase::Drain, 2, 5, Setup::Warm));
    m.handle(Time(5), push(3, Phase::Drain, 2, 5, Setup::Warm));
    assert_eq!(actions(&mut m), vec![MemberAction::ReadRoute(1)]);
    // The first read predates the write: it refuses push 1 only.
    m.handle(
        Time(6),
        MemberEvent::RouteRead {
            read: 1,
            rev: rev_of(&hot),
            route: Some(hot),
        },
    );
    let acts = actions(&mut m);
    assert!(acts.contains(&MemberAction::ReadRoute(2)), "{acts:?}");
    assert!(
        acts.iter()
            .filter(|a| matches!(a, MemberAction::Reply { .. }))
            .all(|a| matches!(a, MemberAction::Reply { req: 1, .. })),
        "{acts:?}"
    );
    let drain = route(2, Phase::Drain, Setup::Warm, 5);
    m.handle(
        Time(7),
        MemberEvent::RouteRead {
            read: 2,
            rev: rev_of(&drain),
            route: Some(drain),
        },
    );
    let acts = confirm_all(&mut m, Time(8));
    let acked: Vec<RequestId> = acts
        .iter()
        .filter_map(|a| match a {
            MemberAction::Reply { req, result: Ok(_) } => Some(*req),
            _ => None,
        })
        .collect();
    assert_eq!(acked, vec![2, 3]);
}

#[test]
fn member_fences_itself_when_keepalives_stop() {
    let mut m = synced_member(Some(route(1, Phase::Serve, Setup::Hot, 5)));
    let cfg = m.config().clone();
    let fresh_until = Time(1) + cfg.lease_ttl - cfg.margin;
    assert_eq!(m.view().lease_fresh_until, Some(fresh_until));
    // The check stops answering D before the lease stops being fresh.
    assert!(m.view().routable(
        Setup::Hot,
        fresh_until - cfg.lb_down_bound - Duration::from_millis(1),
        cfg.lb_down_bound
    ));
    assert!(!m.view().routable(
        Setup::Hot,
        fresh_until - cfg.lb_down_bound,
        cfg.lb_down_bound
    ));
    m.handle(fresh_until, MemberEvent::Tick);
    assert!(m.view().fenced);
    assert_eq!(actions(&mut m), vec![apply_block()]);
    // A serve push is refused while fenced.
    m.handle(fresh_until, push(3, Phase::Serve, 2, 5, Setup::Hot));
    assert!(actions(&mut m).iter().any(|a| matches!(
        a,
        MemberAction::Reply {
            req: 3,
            result: Err(Refusal::NotServable { .. })
        }
    )));
}

#[test]
fn lease_loss_blocks_and_reregisters_and_late_serves_are_refused() {
    let mut m = synced_member(Some(route(1, Phase::Serve, Setup::Hot, 5)));
    m.handle(Time(10), MemberEvent::LeaseLost);
    let acts = actions(&mut m);
    assert!(acts.contains(&MemberAction::Register));
    assert!(acts.contains(&apply_block()));
    m.handle(
        Time(11),
        MemberEvent::LbConfirmed {
            target: LbTarget::Blocked,
        },
    );
    // While re-registering, a serve (even a current one) is refused.
    m.handle(Time(12), push(4, Phase::Serve, 2, 6, Setup::Warm));
    assert!(actions(&mut m).iter().any(|a| matches!(
        a,
        MemberAction::Reply {
            req: 4,
            result: Err(Refusal::NotServable { .. })
        }
    )));
    m.handle(
        Time(20),
        MemberEvent::Synced {
            read: read(Some(route(3, Phase::Drain, Setup::Warm, 6))),
            lease_sent_at: Time(20),
            lease: 1,
        },
    );
    confirm_all(&mut m, Time(21));
    // A delayed serve of an older epoch is refused after the sync.
    m.handle(Time(22), push(5, Phase::Serve, 2, 6, Setup::Warm));
    assert!(actions(&mut m).iter().any(|a| matches!(
        a,
        MemberAction::Reply {
            req: 5,
            result: Err(Refusal::StaleStep { .. })
        }
    )));
    assert_eq!(m.view().desired, LbTarget::Blocked);
}

#[test]
fn drift_is_reapplied() {
    let mut m = synced_member(Some(route(1, Phase::Serve, Setup::Warm, 5)));
    m.handle(
        Time(50),
        MemberEvent::LbObserved {
            target: LbTarget::Blocked,
            restarted: true,
        },
    );
    assert_eq!(actions(&mut m), vec![apply_serve(Setup::Warm, Time(1))]);
}

#[test]
fn graceful_stop_blocks_before_revoking() {
    let mut m = synced_member(Some(route(1, Phase::Serve, Setup::Warm, 5)));
    m.handle(Time(50), MemberEvent::Stop);
    assert_eq!(actions(&mut m), vec![apply_block()]);
    m.handle(
        Time(51),
        MemberEvent::LbConfirmed {
            target: LbTarget::Blocked,
        },
    );
    assert_eq!(actions(&mut m), vec![MemberAction::RevokeLease]);
}

#[test]
fn a_link_bootstraps_then_switches_both_ways() {
    for seed in 0..300 {
        let mut sim = Sim::new(2, seed);
        sim.run(10_000)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert!(
            sim.all_serve(Setup::Hot),
            "seed {seed}: bootstrap to hot: {:?}",
            sim.lbs
        );
        for (i, to) in [Setup::Warm, Setup::Hot, Setup::Warm]
            .into_iter()
            .enumerate()
        {
            sim.request(to);
            sim.run(10_000)
                .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            assert!(sim.all_serve(to), "seed {seed} switch {i}: {:?}", sim.lbs);
            let (r, _) = sim.etcd.route.clone().expect("route");
            assert_eq!((r.phase, r.setup), (Phase::Serve, to));
            let h = &sim.etcd.history[&r.epoch];
            assert_eq!(h.outcome, HistoryOutcome::Complete, "seed {seed}");
        }
    }
}

#[test]
fn four_members_switch_without_mismatch() {
    for seed in 0..200 {
        let mut sim = Sim::new(4, seed);
        sim.run(20_000)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        sim.request(Setup::Warm);
        sim.run(20_000)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert!(sim.all_serve(Setup::Warm), "seed {seed}");
    }
}

#[test]
fn a_new_leader_finishes_a_switch_left_in_drain_under_a_new_epoch() {
    for seed in 0..200 {
        let mut sim = Sim::new(2, seed);
        sim.run(10_000).unwrap();
        sim.request(Setup::Warm);
        // Run until the drain is written, then crash the leader.
        while sim
            .etcd
            .route
            .as_ref()
            .is_none_or(|(r, _)| r.phase != Phase::Drain)
        {
            assert!(sim.step());
            sim.check_s1().unwrap();
        }
        let drained_epoch = sim.etcd.route.as_ref().unwrap().0.epoch;
        sim.leader = None;
        sim.run(10_000)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        sim.elect();
        sim.run(10_000)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let (r, _) = sim.etcd.route.clone().unwrap();
        assert_eq!(r.epoch, drained_epoch + 1, "seed {seed}");
        assert_eq!((r.phase, r.setup), (Phase::Serve, Setup::Warm));
        assert!(sim.all_serve(Setup::Warm), "seed {seed}: {:?}", sim.lbs);
    }
}

#[test]
fn a_stale_leader_cannot_write_and_steps_down() {
    let mut sim = Sim::new(2, 7);
    sim.run(10_000).unwrap();
    let old = sim.leader.take().unwrap();
    sim.elect(); // new token
    let mut old = old;
    let before = sim.etcd.route.clone();
    // The old leader acts on a request it sees.
    old.handle(
        sim.now,
        LeaderEvent::RequestPut {
            request: crate::policy::Request {
                id: "x".into(),
                kind: crate::policy::RequestKind::Switchover,
                to: Setup::Warm,
                force: false,
                reason: "r".into(),
                requested_by: "u".into(),
                by_note: String::new(),
                at: String::new(),
                deadline_ms: None,
                not_before_ms: None,
                grace_ms: None,
            },
            rev: 999,
        },
    );
    let write = old.poll_action().expect("old leader tries a write");
    assert!(matches!(write, LeaderAction::WriteRoute { .. }));
    // The store rejects it (token compare), and nothing changed.
    let token = old.token();
    assert!(token < sim.etcd.leader_token);
    old.handle(
        sim.now,
        LeaderEvent::WriteFailed(WriteFailure::LostLeadership),
    );
    assert!(matches!(
        old.poll_action(),
        Some(LeaderAction::StepDown { .. })
    ));
    assert_eq!(sim.etcd.route, before);
}

#[test]
fn leader_waits_for_a_missing_ack_until_the_member_key_is_gone() {
    let mut l = Leader::new(leader_config(), Time(0));
    let served = Some(Applied {
        epoch: 1,
        phase: Phase::Serve,
        setup: Setup::Hot,
    });
    let members = vec![
        listed("a", Role::Alice, served, 3),
        listed("b", Role::Bob, served, 4),
    ];
    l.handle(
        Time(0),
        LeaderEvent::Start {
            route: Some((route(1, Phase::Serve, Setup::Hot, 10), 5)),
            members: members.clone(),
            request: Some((
                request(crate::policy::RequestKind::Switchover, Setup::Warm),
                6,
            )),
            paused: None,
            history_epoch: Some(1),
        },
    );
    assert!(matches!(
        l.poll_action(),
        Some(LeaderAction::WriteRoute {
            list_members: true,
            expect_route_rev: 5,
            ..
        })
    ));
    l.handle(Time(1), LeaderEvent::RouteWritten { rev: 7, members });
    let sends: Vec<_> = std::iter::from_fn(|| l.poll_action()).collect();
    assert_eq!(sends.len(), 2);
    l.handle(
        Time(2),
        LeaderEvent::PeerReplied {
            member: "a".into(),
            applied: Applied {
                epoch: 2,
                phase: Phase::Drain,
                setup: Setup::Warm,
            },
        },
    );
    assert_eq!(l.poll_action(), None, "b has not acked: no serve yet");
    // Resends to b only.
    l.handle(Time(400), LeaderEvent::Tick);
    let resent: Vec<_> = std::iter::from_fn(|| l.poll_action()).collect();
    assert!(matches!(resent.as_slice(), [LeaderAction::Send { member, .. }] if member == "b"));
    // b's lease expires: its key is deleted. Now the serve may be written.
    l.handle(
        Time(5000),
        LeaderEvent::MemberDeleted {
            id: "b".into(),
            rev: 8,
        },
    );
    match l.poll_action() {
        Some(LeaderAction::WriteRoute { route, history, .. }) => {
            assert_eq!((route.epoch, route.phase), (2, Phase::Serve));
            assert_eq!(
                history.expect("history").fenced_members,
                vec!["b".to_string()]
            );
        }
        other => panic!("expected the serve write, got {other:?}"),
    }
}

#[test]
fn a_late_keepalive_ack_lifts_self_fencing() {
    let mut m = synced_member(Some(route(1, Phase::Serve, Setup::Hot, 5)));
    let cfg = m.config().clone();
    let until = Time(1) + cfg.lease_ttl - cfg.margin;
    m.handle(until, MemberEvent::Tick);
    assert!(m.view().fenced);
    confirm_all(&mut m, until);
    m.handle(
        until + Duration::from_millis(10),
        MemberEvent::KeepAliveAcked { sent_at: until },
    );
    assert!(!m.view().fenced);
    // Served again only once the link is read again: etcd may have been
    // restored from an old snapshot while the member could not renew.
    assert_eq!(actions(&mut m), vec![MemberAction::Resync]);
    assert_eq!(m.view().desired, LbTarget::Blocked);
    m.handle(
        until + Duration::from_millis(11),
        MemberEvent::Resynced(read(Some(route(1, Phase::Serve, Setup::Hot, 5)))),
    );
    assert_eq!(m.view().desired, LbTarget::Serve(Setup::Hot));
}

/// The same, but etcd came back from an old snapshot: its route is below
/// what the member applied. The member stays blocked and says why.
#[test]
fn a_member_behind_a_rolled_back_route_stays_blocked() {
    let mut m = synced_member(Some(route(5, Phase::Serve, Setup::Warm, 9)));
    let cfg = m.config().clone();
    let until = Time(1) + cfg.lease_ttl - cfg.margin;
    m.handle(until, MemberEvent::Tick);
    confirm_all(&mut m, until);
    m.handle(until, MemberEvent::KeepAliveAcked { sent_at: until });
    let old = route(2, Phase::Serve, Setup::Hot, 4);
    m.handle(until, MemberEvent::Resynced(read(Some(old.clone()))));
    let view = m.view();
    assert_eq!(view.desired, LbTarget::Blocked);
    assert_eq!(
        view.behind,
        Some(Behind {
            route: Some(old.step()),
            applied: 5
        })
    );
    assert_eq!(view.accepted.map(|a| a.epoch), Some(5), "never moves back");
    // The leader re-establishes above it: drain, then serve.
    m.handle(until, seen(route(6, Phase::Drain, Setup::Hot, 11)));
    m.handle(until, seen(route(6, Phase::Serve, Setup::Hot, 11)));
    assert_eq!(m.view().behind, None);
    assert_eq!(m.view().desired, LbTarget::Serve(Setup::Hot));
}

/// An operator deletes the route (or restores a backup without it): the
/// member blocks rather than serve a link etcd no longer describes.
#[test]
fn a_deleted_route_blocks_until_the_link_is_re_established() {
    let warm = route(4, Phase::Serve, Setup::Warm, 9);
    let mut m = synced_member(Some(warm.clone()));
    m.handle(
        Time(5),
        MemberEvent::RouteGone {
            rev: rev_of(&warm) + 1,
        },
    );
    assert_eq!(m.view().desired, LbTarget::Blocked);
    assert_eq!(
        m.view().behind,
        Some(Behind {
            route: None,
            applied: 4
        })
    );
    // A stale watch event from before the delete changes nothing.
    m.handle(Time(6), seen(warm));
    assert_eq!(m.view().desired, LbTarget::Blocked);
}

/// A member without memory (just started) learns from the member records
/// what the link applied: a route below that is not served.
#[test]
fn a_fresh_member_does_not_serve_a_route_below_the_links_floor() {
    let mut m = Member::new(member_config("bob-0", Role::Bob), Time::ZERO);
    confirm_all(&mut m, Time(0));
    let old = route(2, Phase::Serve, Setup::Hot, 4);
    m.handle(
        Time(1),
        MemberEvent::Synced {
            read: LinkRead {
                rev: rev_of(&old),
                route: Some(old),
                floor: 5,
            },
            lease_sent_at: Time(1),
            lease: 1,
        },
    );
    assert!(confirm_all(&mut m, Time(1)).is_empty());
    assert_eq!(m.view().desired, LbTarget::Blocked);
    assert_eq!(m.view().accepted, None);
    assert!(m.view().behind.is_some());
}

#[test]
fn an_inconsistent_lb_is_set_again() {
    let mut m = synced_member(Some(route(1, Phase::Serve, Setup::Warm, 5)));
    m.handle(Time(50), MemberEvent::LbInconsistent);
    assert_eq!(actions(&mut m), vec![apply_serve(Setup::Warm, Time(1))]);
}

/// A member just (re)started, its LB confirmed blocked, synced at t=1 to
/// a route serving hot: its serve of hot is decided, not yet polled.
fn restarted_and_synced_to_hot() -> Member {
    let mut m = Member::new(member_config("alice-0", Role::Alice), Time::ZERO);
    confirm_all(&mut m, Time(0));
    m.handle(
        Time(1),
        MemberEvent::Synced {
            read: read(Some(route(1, Phase::Serve, Setup::Hot, 5))),
            lease_sent_at: Time(1),
            lease: 1,
        },
    );
    m
}

/// A member that has sent its LB a serve (here: just restarted and synced
/// to a serving route) and then accepts a drain. Its last confirmed LB
/// state is "blocked", but the serve may land any moment (`state ready` is
/// UP at once).
fn member_with_serve_in_flight_then_drained() -> Member {
    let mut m = restarted_and_synced_to_hot();
    assert_eq!(actions(&mut m), vec![apply_serve(Setup::Hot, Time(1))]);
    m.handle(Time(2), seen(route(2, Phase::Drain, Setup::Warm, 5)));
    m.handle(Time(2), push(7, Phase::Drain, 2, 5, Setup::Warm));
    m
}

/// Found by the model checker (S1): the member acked the drain at once
/// because its LB was last confirmed blocked, the leader served warm
/// elsewhere, and then the serve to hot landed.
#[test]
fn a_drain_is_not_acked_while_a_serve_may_still_land() {
    let mut m = member_with_serve_in_flight_then_drained();
    assert_eq!(
        actions(&mut m),
        vec![],
        "no ack while the serve is in flight"
    );
    // Not even once D has passed: the serve could still make its server UP.
    let d = m.config().lb_down_bound;
    m.handle(Time(2) + d, MemberEvent::Tick);
    assert_eq!(actions(&mut m), vec![]);
    // The serve lands and reports; the block follows and is confirmed.
    m.handle(
        Time(3) + d,
        MemberEvent::LbConfirmed {
            target: LbTarget::Serve(Setup::Hot),
        },
    );
    assert_eq!(actions(&mut m), vec![apply_block()]);
    m.handle(
        Time(4) + d,
        MemberEvent::LbConfirmed {
            target: LbTarget::Blocked,
        },
    );
    let drained = Applied {
        epoch: 2,
        phase: Phase::Drain,
        setup: Setup::Warm,
    };
    assert_eq!(
        actions(&mut m),
        vec![
            MemberAction::WriteApplied(drained),
            MemberAction::Reply {
                req: 7,
                result: Ok(drained)
            }
        ]
    );
}

/// When a serve ends (here: fails, possibly after landing) while the check
/// endpoint already refuses, the LB's checks need a full D from then on.
#[test]
fn the_dead_mans_countdown_restarts_when_a_serve_ends() {
    let mut m = member_with_serve_in_flight_then_drained();
    let d = m.config().lb_down_bound;
    let ended = Time(1000);
    m.handle(
        ended,
        MemberEvent::LbFailed {
            target: LbTarget::Serve(Setup::Hot),
        },
    );
    assert_eq!(m.poll_timeout(), Some(ended + d).min(m.poll_timeout()));
    // The block cannot be confirmed either.
    for a in actions(&mut m) {
        if let MemberAction::ApplyLb { target, .. } = a {
            m.handle(ended, MemberEvent::LbFailed { target });
        }
    }
    m.handle(Time(2) + d, MemberEvent::Tick);
    assert!(
        !actions(&mut m)
            .iter()
            .any(|a| matches!(a, MemberAction::Reply { .. })),
        "D from the drain is not enough"
    );
    m.handle(ended + d, MemberEvent::Tick);
    assert!(actions(&mut m).iter().any(|a| matches!(
        a,
        MemberAction::Reply {
            req: 7,
            result: Ok(_)
        }
    )));
}

/// Found by the model checker (S1): bob's lease expired (key deleted at
/// revision 7), bob restarted and registered again (revision 8), and the
/// drain txn listed the new key before the leader's watch delivered the
/// old delete. That delete must not count as bob being fenced.
#[test]
fn a_stale_member_delete_does_not_end_the_wait_for_its_new_key() {
    let mut l = Leader::new(leader_config(), Time(0));
    let served = Some(Applied {
        epoch: 1,
        phase: Phase::Serve,
        setup: Setup::Hot,
    });
    l.handle(
        Time(0),
        LeaderEvent::Start {
            route: Some((route(1, Phase::Serve, Setup::Hot, 10), 5)),
            members: vec![
                listed("a", Role::Alice, served, 3),
                listed("b", Role::Bob, served, 4),
            ],
            request: Some((
                request(crate::policy::RequestKind::Failover, Setup::Warm),
                6,
            )),
            paused: None,
            history_epoch: Some(1),
        },
    );
    assert!(matches!(
        l.poll_action(),
        Some(LeaderAction::WriteRoute { .. })
    ));
    l.handle(
        Time(1),
        LeaderEvent::RouteWritten {
            rev: 9,
            members: vec![
                listed("a", Role::Alice, served, 3),
                listed("b", Role::Bob, None, 8),
            ],
        },
    );
    let _pushes: Vec<_> = std::iter::from_fn(|| l.poll_action()).collect();
    l.handle(
        Time(2),
        LeaderEvent::MemberDeleted {
            id: "b".into(),
            rev: 7,
        },
    );
    l.handle(
        Time(3),
        LeaderEvent::PeerReplied {
            member: "a".into(),
            applied: Applied {
                epoch: 2,
                phase: Phase::Drain,
                setup: Setup::Warm,
            },
        },
    );
    assert_eq!(l.poll_action(), None, "b's new key has not acked: no serve");
    // Its new key going is another matter.
    l.handle(
        Time(4),
        LeaderEvent::MemberDeleted {
            id: "b".into(),
            rev: 10,
        },
    );
    assert!(matches!(
        l.poll_action(),
        Some(LeaderAction::WriteRoute { route, .. }) if route.phase == Phase::Serve
    ));
}

/// A serve may make its server routable only while the check endpoint calls
/// it routable: a driver paused after the decision must not land it later
/// (HAProxy's `state ready` would override the health checks). An expired
/// serve is retried under the fresher lease.
#[test]
fn a_serve_must_land_while_the_check_still_calls_it_routable() {
    let mut m = restarted_and_synced_to_hot();
    let cfg = m.config().clone();
    let d = cfg.lb_down_bound;
    let Some(MemberAction::ApplyLb {
        target: LbTarget::Serve(Setup::Hot),
        enable_before: Some(deadline),
    }) = actions(&mut m).pop()
    else {
        panic!("expected a serve with a deadline");
    };
    let just_before = deadline - Duration::from_millis(1);
    assert!(m.view().routable(Setup::Hot, just_before, d));
    assert!(!m.view().routable(Setup::Hot, deadline, d));

    // The driver woke up too late and refused to send it.
    m.handle(
        deadline,
        MemberEvent::LbFailed {
            target: LbTarget::Serve(Setup::Hot),
        },
    );
    m.handle(deadline, MemberEvent::KeepAliveAcked { sent_at: deadline });
    let retry = deadline + cfg.lb_retry;
    m.handle(retry, MemberEvent::Tick);
    assert_eq!(actions(&mut m), vec![apply_serve(Setup::Hot, deadline)]);
}

fn served(epoch: Epoch, setup: Setup) -> Option<Applied> {
    Some(Applied {
        epoch,
        phase: Phase::Serve,
        setup,
    })
}

/// The first route write of a leader that started on `start`.
fn first_write(start: LeaderEvent) -> (Route, Option<RequestOutcome>) {
    let mut l = Leader::new(leader_config(), Time(0));
    l.handle(Time(0), start);
    match l.poll_action() {
        Some(LeaderAction::WriteRoute { route, consume, .. }) => (route, consume.map(|(_, o)| o)),
        other => panic!("expected a route write, got {other:?}"),
    }
}

/// The lost-route attack: the route deleted while both LBs serve warm at
/// epoch 7. The leader does not bootstrap "hot at epoch 1": it drains and
/// serves warm again at epoch 8, and says why in the history.
#[test]
fn a_lost_route_is_re_established_above_every_applied_epoch() {
    let (route, _) = first_write(LeaderEvent::Start {
        route: None,
        members: vec![
            listed("alice-0", Role::Alice, served(7, Setup::Warm), 3),
            listed("bob-0", Role::Bob, served(7, Setup::Warm), 4),
        ],
        request: None,
        paused: None,
        history_epoch: Some(7),
    });
    assert_eq!(
        (route.epoch, route.phase, route.setup),
        (8, Phase::Drain, Setup::Warm)
    );
    assert!(
        route.reason.contains("etcd holds no route"),
        "{}",
        route.reason
    );
    assert!(
        route.reason.contains("alice-0 at 7/serve warm"),
        "{}",
        route.reason
    );
}

/// Members that disagree (one restarted onto a rolled-back route) get the
/// initial setup; the epoch still goes above all of them.
#[test]
fn a_rolled_back_route_is_re_established_to_the_initial_setup_when_members_disagree() {
    let (route, _) = first_write(LeaderEvent::Start {
        route: Some((route(2, Phase::Serve, Setup::Warm, 4), 5)),
        members: vec![
            listed("alice-0", Role::Alice, served(2, Setup::Warm), 3),
            listed("bob-0", Role::Bob, served(9, Setup::Hot), 4),
        ],
        request: None,
        paused: None,
        history_epoch: Some(2),
    });
    assert_eq!(
        (route.epoch, route.phase, route.setup),
        (10, Phase::Drain, Setup::Hot)
    );
}

/// A new link (no route, nothing applied) bootstraps, but above the
/// newest history record: epochs never go backwards.
#[test]
fn epochs_continue_above_the_history() {
    let (route, _) = first_write(LeaderEvent::Start {
        route: None,
        members: vec![listed("alice-0", Role::Alice, None, 3)],
        request: None,
        paused: None,
        history_epoch: None,
    });
    assert_eq!((route.epoch, route.setup), (1, Setup::Hot));
    let (route, _) = first_write(LeaderEvent::Start {
        route: None,
        members: vec![listed("alice-0", Role::Alice, None, 3)],
        request: None,
        paused: None,
        history_epoch: Some(41),
    });
    assert_eq!(route.epoch, 42);
}

/// An ack counts only from the member asked, for the epoch and setup
/// asked: a reply naming another setup, or an older epoch, does not let
/// the serve be written.
#[test]
fn an_ack_for_another_epoch_or_setup_does_not_count() {
    let mut l = Leader::new(leader_config(), Time(0));
    l.handle(
        Time(0),
        LeaderEvent::Start {
            route: Some((route(1, Phase::Serve, Setup::Hot, 10), 5)),
            members: vec![listed("a", Role::Alice, served(1, Setup::Hot), 3)],
            request: Some((
                request(crate::policy::RequestKind::Failover, Setup::Warm),
                6,
            )),
            paused: None,
            history_epoch: Some(1),
        },
    );
    leader_actions(&mut l);
    l.handle(
        Time(1),
        LeaderEvent::RouteWritten {
            rev: 7,
            members: vec![listed("a", Role::Alice, served(1, Setup::Hot), 3)],
        },
    );
    leader_actions(&mut l);
    for applied in [
        Applied {
            epoch: 2,
            phase: Phase::Drain,
            setup: Setup::Hot,
        },
        Applied {
            epoch: 1,
            phase: Phase::Serve,
            setup: Setup::Warm,
        },
    ] {
        l.handle(
            Time(2),
            LeaderEvent::PeerReplied {
                member: "a".into(),
                applied,
            },
        );
        assert_eq!(leader_actions(&mut l), vec![], "{applied:?} must not count");
    }
    l.handle(
        Time(3),
        LeaderEvent::PeerReplied {
            member: "a".into(),
            applied: Applied {
                epoch: 2,
                phase: Phase::Drain,
                setup: Setup::Warm,
            },
        },
    );
    let acts = leader_actions(&mut l);
    assert!(
        matches!(
            acts.as_slice(),
            [LeaderAction::WriteRoute { route, .. }] if route.phase == Phase::Serve
        ),
        "{acts:?}"
    );
}

/// A request stored while no leader existed, found by a leader elected
/// after its deadline: nothing moves, and the history says why.
#[test]
fn an_orphaned_request_expires_instead_of_running() {
    let mut l = Leader::new(
        LeaderConfig {
            wall_ms_at_start: 100_000,
            ..leader_config()
        },
        Time(0),
    );
    let mut late = request(crate::policy::RequestKind::Switchover, Setup::Warm);
    late.deadline_ms = Some(90_000);
    l.handle(
        Time(0),
        LeaderEvent::Start {
            route: Some((route(1, Phase::Serve, Setup::Hot, 10), 5)),
            members: vec![listed("a", Role::Alice, served(1, Setup::Hot), 3)],
            request: Some((late, 6)),
            paused: None,
            history_epoch: Some(1),
        },
    );
    let acts = leader_actions(&mut l);
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, LeaderAction::WriteRoute { .. })),
        "{acts:?}"
    );
    assert!(acts.iter().any(|a| matches!(
        a,
        LeaderAction::ResolveRequest { outcome, .. } if outcome.status == RequestStatus::Expired
    )));
    assert!(acts.iter().any(|a| matches!(
        a,
        LeaderAction::WriteHistory(h) if h.kind == HistoryKind::RequestExpired && h.outcome == HistoryOutcome::Expired
    )));

    // One still within its deadline runs, and expires on the clock if it
    // has to wait.
    let mut l = Leader::new(
        LeaderConfig {
            wall_ms_at_start: 100_000,
            ..leader_config()
        },
        Time(0),
    );
    let mut soon = request(crate::policy::RequestKind::Switchover, Setup::Warm);
    soon.deadline_ms = Some(100_500);
    l.handle(
        Time(0),
        LeaderEvent::Start {
            route: Some((route(1, Phase::Serve, Setup::Hot, 10), 5)),
            members: vec![listed("a", Role::Alice, served(1, Setup::Hot), 3)],
            request: None,
            paused: Some(crate::policy::Pause {
                reason: "x".into(),
                requested_by: "y".into(),
                by_note: String::new(),
                at: String::new(),
            }),
            history_epoch: Some(1),
        },
    );
    leader_actions(&mut l);
    assert_eq!(l.poll_timeout(), None);
    l.handle(
        Time(10),
        LeaderEvent::RequestPut {
            request: soon,
            rev: 8,
        },
    );
    // Paused: refused at once, well within the deadline.
    assert!(leader_actions(&mut l).iter().any(|a| matches!(
        a,
        LeaderAction::ResolveRequest { outcome, .. } if outcome.status == RequestStatus::Rejected
    )));
}

/// "Already there" is judged from what every LB reads back: with the route
/// serving warm but bob's LB not reading it back, a switchover to warm
/// runs a switch instead of answering "already".
#[test]
fn already_there_needs_every_lb_to_read_back_the_target() {
    let mut bob = listed("bob-0", Role::Bob, served(3, Setup::Warm), 4);
    bob.record.lb = Some(LbTarget::Blocked);
    let (route, outcome) = first_write(LeaderEvent::Start {
        route: Some((route(3, Phase::Serve, Setup::Warm, 10), 5)),
        members: vec![
            listed("alice-0", Role::Alice, served(3, Setup::Warm), 3),
            bob,
        ],
        request: Some((
            request(crate::policy::RequestKind::Switchover, Setup::Warm),
            6,
        )),
        paused: None,
        history_epoch: Some(3),
    });
    assert_eq!((route.epoch, route.setup), (4, Setup::Warm));
    assert_eq!(outcome.map(|o| o.status), Some(RequestStatus::Started));
}

// ---- handover (planned switches) ----

fn hold_route(epoch: Epoch, to: Setup, token: Token) -> Route {
    Route {
        handover: Some(Handover {
            issuer: Role::Alice,
            from: to.other(),
            grace_ms: 500,
        }),
        ..route(epoch, Phase::Hold, to, token)
    }
}

/// At a hold the issuing end (alice) blocks and acks only once its LB
/// confirmed the block; the receiving end (bob) keeps the old setup.
#[test]
fn a_hold_blocks_the_issuing_end_and_keeps_the_receiving_end() {
    let hot = route(1, Phase::Serve, Setup::Hot, 5);
    let mut alice = synced_member(Some(hot.clone()));
    let mut bob = Member::new(member_config("bob-0", Role::Bob), Time::ZERO);
    bob.handle(
        Time(1),
        MemberEvent::Synced {
            read: read(Some(hot)),
            lease_sent_at: Time(1),
            lease: 1,
        },
    );
    confirm_all(&mut bob, Time(2));
    assert_eq!(bob.view().desired, LbTarget::Serve(Setup::Hot));

    let hold = hold_route(2, Setup::Warm, 5);
    bob.handle(Time(3), seen(hold.clone()));
    assert_eq!(
        bob.view().desired,
        LbTarget::Serve(Setup::Hot),
        "bob keeps hot"
    );
    let acts = confirm_all(&mut bob, Time(3));
    assert_eq!(
        acts,
        vec![MemberAction::WriteApplied(hold.applied())],
        "bob is at the hold with hot still served"
    );

    alice.handle(Time(3), seen(hold.clone()));
    alice.handle(Time(3), push(9, Phase::Hold, 2, 5, Setup::Warm));
    assert_eq!(actions(&mut alice), vec![apply_block()]);
    // The block cannot be confirmed (HAProxy hung): after D the dead-man's
    // switch has blocked it, but a hold is not acked on that alone.
    alice.handle(
        Time(4),
        MemberEvent::LbFailed {
            target: LbTarget::Blocked,
        },
    );
    let d = alice.config().lb_down_bound;
    alice.handle(Time(3) + d + Duration::from_millis(1), MemberEvent::Tick);
    assert!(
        !actions(&mut alice).iter().any(|a| matches!(
            a,
            MemberAction::Reply { .. } | MemberAction::WriteApplied(_)
        )),
        "no hold ack without a confirmed block"
    );
    // Confirmed: now it acks.
    alice.handle(
        Time(3) + d + Duration::from_millis(2),
        MemberEvent::LbConfirmed {
            target: LbTarget::Blocked,
        },
    );
    let acts = actions(&mut alice);
    assert!(
        acts.contains(&MemberAction::WriteApplied(hold.applied())),
        "{acts:?}"
    );
    assert!(acts.iter().any(|a| matches!(
        a,
        MemberAction::Reply {
            req: 9,
            result: Ok(_)
        }
    )));
}

fn handover_leader() -> Leader {
    Leader::new(
        LeaderConfig {
            handover: Some(HandoverConfig {
                issuer: Role::Alice,
                grace: Duration::from_millis(500),
            }),
            ..leader_config()
        },
        Time(0),
    )
}

fn hot_link() -> Vec<Listed> {
    vec![
        listed("alice-0", Role::Alice, served(1, Setup::Hot), 3),
        listed("bob-0", Role::Bob, served(1, Setup::Hot), 4),
    ]
}

/// A planned switchover: hold (alice blocks) → alice's confirmed block →
/// 500 ms of grace with bob still on hot → drain → serve.
#[test]
fn a_switchover_holds_the_receiving_end_for_the_grace_after_the_issuing_end_blocked() {
    let mut l = handover_leader();
    l.handle(
        Time(0),
        LeaderEvent::Start {
            route: Some((route(1, Phase::Serve, Setup::Hot, 10), 5)),
            members: hot_link(),
            request: Some((
                request(crate::policy::RequestKind::Switchover, Setup::Warm),
                6,
            )),
            paused: None,
            history_epoch: Some(1),
        },
    );
    let Some(LeaderAction::WriteRoute { route: hold, .. }) = l.poll_action() else {
        panic!("expected the hold write");
    };
    assert_eq!(
        (hold.epoch, hold.phase, hold.setup),
        (2, Phase::Hold, Setup::Warm)
    );
    assert_eq!(
        hold.handover,
        Some(Handover {
            issuer: Role::Alice,
            from: Setup::Hot,
            grace_ms: 500
        })
    );
    l.handle(
        Time(1),
        LeaderEvent::RouteWritten {
            rev: 7,
            members: hot_link(),
        },
    );
    let pushes = leader_actions(&mut l);
    assert!(
        matches!(pushes.as_slice(), [LeaderAction::Send { member, push, .. }] if member == "alice-0" && push.phase == Phase::Hold),
        "only the issuing end is pushed: {pushes:?}"
    );
    let held = Applied {
        epoch: 2,
        phase: Phase::Hold,
        setup: Setup::Warm,
    };
    l.handle(
        Time(10),
        LeaderEvent::PeerReplied {
            member: "alice-0".into(),
            applied: held,
        },
    );
    assert_eq!(leader_actions(&mut l), vec![], "the grace runs");
    assert_eq!(l.poll_timeout().map(|t| t.min(Time(510))), Some(Time(510)));
    l.handle(Time(509), LeaderEvent::Tick);
    assert!(
        !leader_actions(&mut l)
            .iter()
            .any(|a| matches!(a, LeaderAction::WriteRoute { .. })),
        "no drain before the grace ends"
    );
    l.handle(Time(510), LeaderEvent::Tick);
    let acts = leader_actions(&mut l);
    assert!(
        matches!(acts.as_slice(), [LeaderAction::WriteRoute { route, .. }] if route.phase == Phase::Drain && route.epoch == 2),
        "{acts:?}"
    );
    l.handle(
        Time(511),
        LeaderEvent::RouteWritten {
            rev: 8,
            members: hot_link(),
        },
    );
    leader_actions(&mut l);
    for m in ["alice-0", "bob-0"] {
        l.handle(
            Time(520),
            LeaderEvent::PeerReplied {
                member: m.into(),
                applied: Applied {
                    phase: Phase::Drain,
                    ..held
                },
            },
        );
    }
    match leader_actions(&mut l).as_slice() {
        [LeaderAction::WriteRoute {
            route,
            history: Some(h),
            ..
        }] => {
            assert_eq!(route.phase, Phase::Serve);
            assert_eq!((h.hold_ms, h.grace_ms, h.drain_ms), (510, 500, 9));
        }
        other => panic!("expected the serve write: {other:?}"),
    }
}

/// Failover skips the grace (the old setup is presumed dead), and so does
/// a switchover whose receiving end reports the old setup down.
#[test]
fn failover_and_a_dead_old_setup_skip_the_handover() {
    let start = |kind, members| LeaderEvent::Start {
        route: Some((route(1, Phase::Serve, Setup::Hot, 10), 5)),
        members,
        request: Some((request(kind, Setup::Warm), 6)),
        paused: None,
        history_epoch: Some(1),
    };
    let first = |event| {
        let mut l = handover_leader();
        l.handle(Time(0), event);
        match l.poll_action() {
            Some(LeaderAction::WriteRoute { route, .. }) => route.phase,
            other => panic!("expected a route write, got {other:?}"),
        }
    };
    assert_eq!(
        first(start(crate::policy::RequestKind::Failover, hot_link())),
        Phase::Drain
    );
    let mut members = hot_link();
    members[1].record.health.hot = Health::Down;
    assert_eq!(
        first(start(crate::policy::RequestKind::Switchover, members)),
        Phase::Drain
    );
    assert_eq!(
        first(start(crate::policy::RequestKind::Switchover, hot_link())),
        Phase::Hold
    );
}

#[test]
fn links_with_handover_switch_both_ways_without_mismatch() {
    for seed in 0..200 {
        let mut sim = Sim::new(4, seed);
        sim.handover = Some(HandoverConfig {
            issuer: Role::Alice,
            grace: Duration::from_millis(5),
        });
        sim.elect();
        sim.run(20_000)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        for to in [Setup::Warm, Setup::Hot] {
            sim.request(to);
            sim.run(20_000)
                .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            assert!(sim.all_serve(to), "seed {seed}: {:?}", sim.lbs);
            let (r, _) = sim.etcd.route.clone().expect("route");
            assert_eq!(
                sim.etcd.history[&r.epoch].grace_ms, 5,
                "seed {seed}: a handover ran"
            );
        }
    }
}

/// Found by the model checker (S1): during the drain of a handover, the
/// receiving end's record of the *hold* (it still served the old setup)
/// counted as its drain ack, and the serve was written while its LB served
/// the old setup.
#[test]
fn a_hold_ack_does_not_count_for_the_drain() {
    let mut l = handover_leader();
    l.handle(
        Time(0),
        LeaderEvent::Start {
            route: Some((route(1, Phase::Serve, Setup::Hot, 10), 5)),
            members: hot_link(),
            request: Some((
                request(crate::policy::RequestKind::Switchover, Setup::Warm),
                6,
            )),
            paused: None,
            history_epoch: Some(1),
        },
    );
    leader_actions(&mut l);
    l.handle(
        Time(1),
        LeaderEvent::RouteWritten {
            rev: 7,
            members: hot_link(),
        },
    );
    leader_actions(&mut l);
    let held = Applied {
        epoch: 2,
        phase: Phase::Hold,
        setup: Setup::Warm,
    };
    l.handle(
        Time(2),
        LeaderEvent::PeerReplied {
            member: "alice-0".into(),
            applied: held,
        },
    );
    l.handle(Time(600), LeaderEvent::Tick);
    assert!(matches!(
        leader_actions(&mut l).as_slice(),
        [LeaderAction::WriteRoute { route, .. }] if route.phase == Phase::Drain
    ));
    l.handle(
        Time(601),
        LeaderEvent::RouteWritten {
            rev: 8,
            members: hot_link(),
        },
    );
    leader_actions(&mut l);
    l.handle(
        Time(602),
        LeaderEvent::PeerReplied {
            member: "alice-0".into(),
            applied: Applied {
                phase: Phase::Drain,
                ..held
            },
        },
    );
    // Bob's record says he is at the hold (serving hot): no drain ack.
    l.handle(
        Time(603),
        LeaderEvent::PeerReplied {
            member: "bob-0".into(),
            applied: held,
        },
    );
    assert!(
        !leader_actions(&mut l)
            .iter()
            .any(|a| matches!(a, LeaderAction::WriteRoute { .. })),
        "no serve while bob may still serve hot"
    );
}

#[test]
fn pause_and_resume_records_sort_after_their_epoch_s_switch_and_by_time() {
    let record = |epoch: Epoch, kind: HistoryKind, at: &str, id: &str| HistoryRecord {
        epoch,
        from: None,
        to: Setup::Hot,
        kind,
        reason: "r".into(),
        requested_by: "op".into(),
        by_note: String::new(),
        leader: "alice-0".into(),
        token: 0,
        started_at: at.into(),
        drain_ms: 0,
        hold_ms: 0,
        grace_ms: 0,
        total_ms: 0,
        fenced_members: Vec::new(),
        outcome: HistoryOutcome::Done,
        request_id: Some(id.into()),
    };
    let switch = record(7, HistoryKind::Switchover, "2026-11-30T10:00:00.000Z", "a");
    let pause = record(7, HistoryKind::Pause, "2026-11-30T10:05:00.000Z", "z");
    let resume = record(7, HistoryKind::Resume, "2026-11-30T10:06:00.000Z", "a");
    let next = record(8, HistoryKind::Switchover, "2026-11-30T10:07:00.000Z", "b");
    assert!(!HistoryKind::Pause.is_switch() && !HistoryKind::Resume.is_switch());
    let keys = [&switch, &pause, &resume, &next].map(|r| r.key());
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(sorted, keys, "history order is time order");
    assert_eq!(HistoryKind::Pause.as_str(), "pause");
    assert_eq!(HistoryOutcome::Done.to_string(), "done");
}

/// A scheduled request (`switchover --at`) waits for its time, with a
/// timer for it; then it runs, or, refused (the link paused, or the target
/// unhealthy then), the history says why, since nobody waits for its
/// answer.
#[test]
fn a_scheduled_request_waits_for_its_time_then_runs_or_is_refused_on_the_record() {
    use crate::policy::RefusedKind;
    for refusal in [
        None,
        Some(RefusedKind::Paused),
        Some(RefusedKind::Unhealthy),
    ] {
        let paused = refusal == Some(RefusedKind::Paused);
        let mut l = Leader::new(
            LeaderConfig {
                wall_ms_at_start: 100_000,
                ..leader_config()
            },
            Time(0),
        );
        let mut r = request(crate::policy::RequestKind::Switchover, Setup::Warm);
        r.not_before_ms = Some(101_000);
        r.deadline_ms = Some(131_000);
        l.handle(
            Time(0),
            LeaderEvent::Start {
                route: Some((route(1, Phase::Serve, Setup::Hot, 10), 5)),
                members: vec![
                    listed("a", Role::Alice, served(1, Setup::Hot), 3),
                    listed("b", Role::Bob, served(1, Setup::Hot), 4),
                ],
                request: Some((r, 6)),
                paused: paused.then(|| crate::policy::Pause {
                    reason: "freeze".into(),
                    requested_by: "y".into(),
                    by_note: String::new(),
                    at: String::new(),
                }),
                history_epoch: Some(1),
            },
        );
        let acts = leader_actions(&mut l);
        assert!(
            !acts.iter().any(|a| matches!(
                a,
                LeaderAction::WriteRoute { .. } | LeaderAction::ResolveRequest { .. }
            )),
            "acted before its time: {acts:?}"
        );
        let due = Time::from_millis(1_000);
        assert_eq!(l.poll_timeout(), Some(due), "a timer for its time");
        if refusal == Some(RefusedKind::Unhealthy) {
            // Healthy when stored; warm goes down at Bob before its time.
            let mut b = listed("b", Role::Bob, served(1, Setup::Hot), 7);
            b.record.health.warm = Health::Down;
            l.handle(Time(500), LeaderEvent::MemberPut(b));
            assert!(leader_actions(&mut l).iter().all(|a| !matches!(
                a,
                LeaderAction::WriteRoute { .. } | LeaderAction::ResolveRequest { .. }
            )));
        }
        l.handle(due, LeaderEvent::Tick);
        let acts = leader_actions(&mut l);
        if let Some(kind) = refusal {
            let words = match kind {
                RefusedKind::Paused => "paused",
                RefusedKind::Unhealthy => "warm is not healthy",
            };
            assert!(acts.iter().any(|a| matches!(
                a,
                LeaderAction::ResolveRequest { outcome, .. } if outcome.status == RequestStatus::Rejected
                    && outcome.refused == Some(kind)
            )), "{acts:?}");
            assert!(
                acts.iter().any(|a| matches!(
                    a,
                    LeaderAction::WriteHistory(h) if h.kind == HistoryKind::RequestRefused
                        && h.outcome == HistoryOutcome::Refused
                        && h.reason.contains(words)
                        && h.request_id.as_deref() == Some("r")
                )),
                "{acts:?}"
            );
            assert!(
                !acts
                    .iter()
                    .any(|a| matches!(a, LeaderAction::WriteRoute { .. })),
                "{acts:?}"
            );
        } else {
            assert!(
                acts.iter()
                    .any(|a| matches!(a, LeaderAction::WriteRoute { .. })),
                "{acts:?}"
            );
        }
    }
}

// ---- failsafe ----

mod failsafe {
    use super::*;
    use crate::failsafe::*;

    const GRANT: Duration = Duration::from_millis(3000);

    fn fs_config(id: &str) -> MemberConfig {
        MemberConfig {
            lease_ttl: Duration::from_secs(10),
            failsafe: Some(FailsafeConfig {
                grant_ttl: GRANT,
                max: Duration::from_secs(60),
            }),
            ..member_config(id, Role::Alice)
        }
    }

    fn inc(id: &str, lease: Lease) -> Incarnation {
        Incarnation {
            id: id.into(),
            lease,
            grpc: format!("{id}:1"),
        }
    }

    /// Epoch 2 serving hot, listing alice-0 (lease 1), bob-0 (2), alice-1 (3).
    fn rostered() -> Route {
        Route {
            roster: vec![inc("alice-0", 1), inc("alice-1", 3), inc("bob-0", 2)],
            ..route(2, Phase::Serve, Setup::Hot, 7)
        }
    }

    /// alice-0 on lease 1, synced to `rostered()` at t = 1 s (its lease is
    /// fresh until 10 s), LB serving hot.
    fn member() -> Member {
        let mut m = Member::new(fs_config("alice-0"), Time::ZERO);
        m.handle(
            Time(1000),
            MemberEvent::Synced {
                read: read(Some(rostered())),
                lease_sent_at: Time(1000),
                lease: 1,
            },
        );
        confirm_all(&mut m, Time(1001));
        m
    }

    /// Ticks from `from` to `to` every 100 ms; each peer in `answer` grants
    /// every ask at once. Returns the LB commands issued.
    fn run(m: &mut Member, from: u64, to: u64, answer: &[(&str, Lease)]) -> Vec<LbTarget> {
        let mut lb = Vec::new();
        let mut t = from;
        while t <= to {
            m.handle(Time(t), MemberEvent::Tick);
            for a in actions(m) {
                match a {
                    MemberAction::AskGrants { epoch, setup, .. } => {
                        for (id, lease) in answer {
                            m.handle(
                                Time(t),
                                MemberEvent::GrantAnswered {
                                    from: (*id).into(),
                                    sent_at: Time(t),
                                    result: Ok(Granted {
                                        lease: *lease,
                                        epoch,
                                        setup,
                                    }),
                                },
                            );
                        }
                    }
                    MemberAction::ApplyLb { target, .. } => {
                        lb.push(target);
                        m.handle(Time(t), MemberEvent::LbConfirmed { target });
                    }
                    _ => {}
                }
            }
            t += 100;
        }
        lb
    }

    #[test]
    fn a_cut_member_serves_on_every_grant_and_blocks_without_one() {
        let mut m = member();
        let d = m.config().lb_down_bound;
        // Lease fresh, no grants asked: etcd decides.
        m.handle(Time(5000), MemberEvent::Tick);
        assert!(!actions(&mut m)
            .iter()
            .any(|a| matches!(a, MemberAction::AskGrants { .. })));
        // From 10 s − grant − D on, it asks both other roster members.
        m.handle(Time(5700), MemberEvent::Tick);
        let asks: Vec<_> = actions(&mut m)
            .into_iter()
            .filter_map(|a| match a {
                MemberAction::AskGrants {
                    epoch,
                    setup,
                    peers,
                } => Some((epoch, setup, peers)),
                _ => None,
            })
            .collect();
        assert_eq!(
            asks,
            vec![(2, Setup::Hot, vec![inc("alice-1", 3), inc("bob-0", 2)])]
        );
        // Its lease lapses at 10 s; with both grants it keeps serving.
        let lb = run(&mut m, 5700, 20_000, &[("bob-0", 2), ("alice-1", 3)]);
        assert!(lb.is_empty(), "no LB change while on grants: {lb:?}");
        let v = m.view();
        assert!(v.fenced, "the lease is stale");
        assert!(v.routable(Setup::Hot, Time(20_000), d));
        assert_eq!(v.failsafe.map(|f| f.serving.epoch), Some(2));
        // A grant from another incarnation of alice-1 does not count: once
        // alice-1's own grant runs out, the member blocks.
        let lb = run(&mut m, 20_100, 24_000, &[("bob-0", 2), ("alice-1", 9)]);
        assert_eq!(lb, vec![LbTarget::Blocked]);
        assert!(!m.view().routable(Setup::Hot, Time(24_000), d));
        // Its grants have run out: no deadline left behind to wake for.
        assert!(
            m.poll_timeout().is_none_or(|t| t > Time(24_000)),
            "{:?}",
            m.poll_timeout()
        );
    }

    #[test]
    fn failsafe_lasts_at_most_max_after_the_lease() {
        let mut m = member();
        let lb = run(&mut m, 5700, 68_000, &[("bob-0", 2), ("alice-1", 3)]);
        // Fresh until 10 s, max 60 s: blocked D before 70 s.
        assert!(lb.is_empty());
        let lb = run(&mut m, 68_100, 69_000, &[("bob-0", 2), ("alice-1", 3)]);
        assert_eq!(lb, vec![LbTarget::Blocked]);
    }

    #[test]
    fn a_member_grants_only_while_its_lease_lapses_and_it_does_not_lead() {
        let mut m = member();
        let ask = |epoch| MemberEvent::GrantAsked {
            req: 1,
            ask: GrantAsk {
                from: "bob-0".into(),
                epoch,
                setup: Setup::Hot,
            },
        };
        let reply = |m: &mut Member| {
            actions(m).into_iter().find_map(|a| match a {
                MemberAction::GrantReply { result, .. } => Some(result),
                _ => None,
            })
        };
        m.handle(Time(2000), ask(2));
        assert_eq!(reply(&mut m), Some(Err(GrantRefusal::SeesEtcd)));
        assert_eq!(m.view().bound_until, None);
        m.handle(Time(6000), ask(2));
        assert_eq!(
            reply(&mut m),
            Some(Ok(Granted {
                lease: 1,
                epoch: 2,
                setup: Setup::Hot
            }))
        );
        assert_eq!(m.view().bound_until, Some(Time(9000)));
        m.handle(Time(6100), ask(3));
        assert!(matches!(
            reply(&mut m),
            Some(Err(GrantRefusal::NotServing { .. }))
        ));
        m.handle(Time(6200), MemberEvent::Leading(Leadership::Campaigning));
        m.handle(Time(6300), ask(2));
        assert_eq!(reply(&mut m), Some(Err(GrantRefusal::Leading)));
        // The leadership ends having written epoch 2 (landed): grants again.
        m.handle(Time(6400), ended(Some(2)));
        m.handle(Time(6500), ask(2));
        assert!(matches!(reply(&mut m), Some(Ok(_))));
        // A write of epoch 3 was sent and may still land: no grant for 2,
        // however often the process campaigns and steps down without writing.
        m.handle(Time(6600), MemberEvent::Leading(Leadership::Campaigning));
        m.handle(Time(6700), ended(Some(3)));
        m.handle(Time(6800), MemberEvent::Leading(Leadership::Campaigning));
        m.handle(Time(6900), ended(None));
        m.handle(Time(7000), ask(2));
        assert_eq!(reply(&mut m), Some(Err(GrantRefusal::Wrote { epoch: 3 })));
        // Nor does it keep serving epoch 2 on its peers' grants: it stops
        // asking for them.
        assert_eq!(asks(&mut m, 9000), 0);
    }

    /// The process's leadership ended, having sent writes up to `wrote`.
    fn ended(wrote: Option<Epoch>) -> MemberEvent {
        MemberEvent::Leading(Leadership::Ended { wrote })
    }

    /// The grant asks a tick at `t` makes the member send.
    fn asks(m: &mut Member, t: u64) -> usize {
        m.handle(Time(t), MemberEvent::Tick);
        actions(m)
            .iter()
            .filter(|a| matches!(a, MemberAction::AskGrants { .. }))
            .count()
    }

    #[test]
    fn a_member_asks_for_grants_only_above_what_its_process_wrote() {
        let mut m = member();
        assert!(asks(&mut m, 6000) > 0);
        m.handle(Time(6100), ended(Some(2)));
        assert!(asks(&mut m, 7000) > 0);
        m.handle(Time(7100), ended(Some(3)));
        assert_eq!(asks(&mut m, 8000), 0);
    }

    #[test]
    fn only_a_roster_process_without_a_running_grant_may_lead() {
        let fs = FailsafeConfig {
            grant_ttl: GRANT,
            max: Duration::from_secs(60),
        };
        let r = rostered();
        let d = Duration::from_millis(1300);
        let t = Time(100_000);
        let may = |leases: &[Lease], gone: Option<Time>, bound: Option<Time>| {
            may_lead(Some(&fs), Some(&r), "alice-0", leases, gone, bound, d, t)
        };
        assert_eq!(may_lead(None, Some(&r), "x", &[], None, None, d, t), Ok(()));
        assert_eq!(may(&[5, 1], None, None), Ok(()));
        assert_eq!(
            may(&[1], None, Some(Time(100_500))),
            Err(LeadBar::Bound {
                until: Time(100_500)
            })
        );
        assert_eq!(
            may(&[4], None, None),
            Err(LeadBar::NotInRoster {
                epoch: 2,
                gone: None
            })
        );
        // A full restart: no roster key live for max + D.
        assert_eq!(
            may(&[4], Some(Time(100_000 - 61_000)), None),
            Err(LeadBar::NotInRoster {
                epoch: 2,
                gone: Some(RosterGone {
                    wait: Duration::from_millis(300)
                })
            })
        );
        assert_eq!(may(&[4], Some(Time(100_000 - 61_300)), None), Ok(()));
        let bare = route(2, Phase::Serve, Setup::Hot, 7);
        assert_eq!(
            may_lead(Some(&fs), Some(&bare), "x", &[], None, None, d, t),
            Ok(())
        );
    }

    fn fs_leader(leases: Vec<Lease>) -> Leader {
        Leader::new(
            LeaderConfig {
                id: "alice-0".into(),
                failsafe: Some(LeaderFailsafe {
                    config: FailsafeConfig {
                        grant_ttl: GRANT,
                        max: Duration::from_secs(60),
                    },
                    leases,
                    roster_gone_since: None,
                    lb_down_bound: Duration::from_millis(1300),
                }),
                ..leader_config()
            },
            Time::ZERO,
        )
    }

    fn member_on(id: &str, role: Role, lease: Lease) -> Listed {
        Listed {
            lease,
            ..listed(
                id,
                role,
                Some(Applied {
                    epoch: 2,
                    phase: Phase::Serve,
                    setup: Setup::Hot,
                }),
                5,
            )
        }
    }

    fn start(l: &mut Leader, members: Vec<Listed>) {
        l.handle(
            Time(1),
            LeaderEvent::Start {
                route: Some((rostered(), 20)),
                members,
                request: None,
                paused: None,
                history_epoch: Some(2),
            },
        );
    }

    #[test]
    fn a_leader_writes_the_roster_again_when_the_incarnations_change() {
        let mut l = fs_leader(vec![1]);
        // bob-0 re-registered (lease 5), alice-1 is gone.
        start(
            &mut l,
            vec![
                member_on("alice-0", Role::Alice, 1),
                member_on("bob-0", Role::Bob, 5),
            ],
        );
        let writes: Vec<Route> = leader_actions(&mut l)
            .into_iter()
            .filter_map(|a| match a {
                LeaderAction::WriteRoute { route, .. } => Some(route),
                _ => None,
            })
            .collect();
        assert_eq!(writes.len(), 1, "one roster write");
        let w = &writes[0];
        assert_eq!((w.epoch, w.phase, w.setup), (3, Phase::Serve, Setup::Hot));
        assert_eq!(
            w.roster,
            vec![
                Incarnation {
                    grpc: "addr".into(),
                    ..inc("alice-0", 1)
                },
                Incarnation {
                    grpc: "addr".into(),
                    ..inc("bob-0", 5)
                }
            ]
        );
    }

    #[test]
    fn a_process_outside_the_roster_steps_down() {
        let mut l = fs_leader(vec![42]);
        start(&mut l, vec![member_on("alice-0", Role::Alice, 42)]);
        assert!(leader_actions(&mut l)
            .iter()
            .any(|a| matches!(a, LeaderAction::StepDown { reason } if reason.contains("roster"))));
    }
}
