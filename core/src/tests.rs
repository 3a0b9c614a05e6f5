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
    }
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
            route: route_now,
            lease_sent_at: Time(1),
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
            route: Some(route(3, Phase::Serve, Setup::Hot, 7)),
            lease_sent_at: Time(2),
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
    m.handle(
        Time(10),
        MemberEvent::PeerDrain {
            req: 1,
            epoch: 2,
            token: 5,
            setup: Setup::Warm,
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
    m.handle(
        Time(100),
        MemberEvent::PeerDrain {
            req: 9,
            epoch: 2,
            token: 5,
            setup: Setup::Warm,
        },
    );
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
    m.handle(
        Time(5),
        MemberEvent::PeerDrain {
            req: 1,
            epoch: 5,
            token: 19,
            setup: Setup::Warm,
        },
    );
    assert_eq!(
        actions(&mut m),
        vec![MemberAction::Reply {
            req: 1,
            result: Err(Refusal::StaleToken { got: 19, seen: 20 })
        }]
    );
    m.handle(
        Time(6),
        MemberEvent::PeerServe {
            req: 2,
            epoch: 3,
            token: 20,
            setup: Setup::Warm,
        },
    );
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
    m.handle(
        Time(5),
        MemberEvent::PeerServe {
            req: 1,
            epoch: 4,
            token: 20,
            setup: Setup::Hot,
        },
    );
    assert!(matches!(
        actions(&mut m).as_slice(),
        [MemberAction::Reply {
            result: Err(Refusal::Inconsistent { .. }),
            ..
        }]
    ));
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
    m.handle(
        fresh_until,
        MemberEvent::PeerServe {
            req: 3,
            epoch: 2,
            token: 5,
            setup: Setup::Hot,
        },
    );
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
    m.handle(
        Time(12),
        MemberEvent::PeerServe {
            req: 4,
            epoch: 2,
            token: 6,
            setup: Setup::Warm,
        },
    );
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
            route: Some(route(3, Phase::Drain, Setup::Warm, 6)),
            lease_sent_at: Time(20),
        },
    );
    confirm_all(&mut m, Time(21));
    // A delayed serve of an older epoch is refused after the sync.
    m.handle(
        Time(22),
        MemberEvent::PeerServe {
            req: 5,
            epoch: 2,
            token: 6,
            setup: Setup::Warm,
        },
    );
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
            assert_eq!(h.outcome, "complete", "seed {seed}");
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
                at: String::new(),
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
    let mut l = Leader::new(
        LeaderConfig {
            id: "l".into(),
            token: 10,
            initial_setup: Setup::Hot,
            resend_every: Duration::from_millis(300),
        },
        Time(0),
    );
    let rec = |role| MemberRecord {
        role,
        grpc: "addr".into(),
        applied: Some(Applied {
            epoch: 1,
            phase: Phase::Serve,
            setup: Setup::Hot,
        }),
        lb: None,
        health: crate::health::RoleHealth {
            hot: Health::Up,
            warm: Health::Up,
        },
    };
    let members = vec![
        Listed {
            id: "a".into(),
            record: rec(Role::Alice),
            rev: 3,
        },
        Listed {
            id: "b".into(),
            record: rec(Role::Bob),
            rev: 4,
        },
    ];
    l.handle(
        Time(0),
        LeaderEvent::Start {
            route: Some((route(1, Phase::Serve, Setup::Hot, 10), 5)),
            members: members.clone(),
            request: Some((
                crate::policy::Request {
                    id: "r".into(),
                    kind: crate::policy::RequestKind::Switchover,
                    to: Setup::Warm,
                    force: false,
                    reason: "go".into(),
                    requested_by: "u".into(),
                    at: String::new(),
                },
                6,
            )),
            paused: None,
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
    assert!(matches!(resent.as_slice(), [LeaderAction::SendDrain { member, .. }] if member == "b"));
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
    assert_eq!(m.view().desired, LbTarget::Serve(Setup::Hot));
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
            route: Some(route(1, Phase::Serve, Setup::Hot, 5)),
            lease_sent_at: Time(1),
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
    m.handle(
        Time(2),
        MemberEvent::PeerDrain {
            req: 7,
            epoch: 2,
            token: 5,
            setup: Setup::Warm,
        },
    );
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
    let mut l = Leader::new(
        LeaderConfig {
            id: "l".into(),
            token: 10,
            initial_setup: Setup::Hot,
            resend_every: Duration::from_millis(300),
        },
        Time(0),
    );
    let rec = |role, applied| MemberRecord {
        role,
        grpc: "addr".into(),
        applied,
        lb: None,
        health: crate::health::RoleHealth {
            hot: Health::Up,
            warm: Health::Up,
        },
    };
    let served = Some(Applied {
        epoch: 1,
        phase: Phase::Serve,
        setup: Setup::Hot,
    });
    let listed = |id: &str, role, applied, rev| Listed {
        id: id.into(),
        record: rec(role, applied),
        rev,
    };
    l.handle(
        Time(0),
        LeaderEvent::Start {
            route: Some((route(1, Phase::Serve, Setup::Hot, 10), 5)),
            members: vec![
                listed("a", Role::Alice, served, 3),
                listed("b", Role::Bob, served, 4),
            ],
            request: Some((
                crate::policy::Request {
                    id: "r".into(),
                    kind: crate::policy::RequestKind::Failover,
                    to: Setup::Warm,
                    force: true,
                    reason: "go".into(),
                    requested_by: "u".into(),
                    at: String::new(),
                },
                6,
            )),
            paused: None,
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
