//! Model checking the switch protocol with stateright, on the real `Member`
//! and `Leader` state machines (see `model/mod.rs` for what is modelled).
//!
//! * `ci_configuration_explores_everything_without_violation`: the bounded
//!   configuration CI runs (`cargo test --workspace`).
//! * `a_paused_sidecar_never_lands_a_stale_serve`: alice restarted as the
//!   request arrives, then a pause with her serve in flight, every
//!   interleaving.
//! * `forged_pushes_move_nothing`, `a_deleted_route_is_re_established_*`:
//!   state the link did not create (an adversary's pushes, the route key
//!   deleted); `an_etcd_restore_never_splits_the_link` (ignored: run by
//!   `scripts/model-check-large`): etcd restored from an old snapshot.
//! * `mutation_*`: each deliberate break must yield a counterexample.
//! * `large_configuration` (ignored): two faults per run instead of one;
//!   run it with `scripts/model-check-large`.

mod model;

use lockstep_core::mutation::Mutation;
use model::{Faults, LinkModel, Timing};
use stateright::report::{ReportData, ReportDiscovery, Reporter};
use stateright::{Checker, Model};
use std::collections::BTreeMap;
use std::time::Instant;

/// Prints the search's progress every 30 s (long runs show they are alive
/// and how far they got); discoveries are reported by `check_all`.
/// stateright's report thread sleeps `delay` between looks and the search
/// waits for it, so `delay` is short (a search ends at most that much
/// after it is done) and the printing is spaced out here.
#[derive(Default)]
struct Progress {
    printed: Option<Instant>,
}

const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

impl Reporter<LinkModel> for Progress {
    fn report_checking(&mut self, d: ReportData) {
        if self.printed.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
            return;
        }
        self.printed = Some(Instant::now());
        println!(
            "  {} states ({} unique), depth {}, {:.0} s{}",
            d.total_states,
            d.unique_states,
            d.max_depth,
            d.duration.as_secs_f64(),
            if d.done { ", done" } else { "" }
        );
    }

    fn report_discoveries(
        &mut self,
        _: &LinkModel,
        _: BTreeMap<&'static str, ReportDiscovery<LinkModel>>,
    ) {
    }

    fn delay(&self) -> std::time::Duration {
        std::time::Duration::from_millis(100)
    }
}

/// D > margin on purpose, as in the sidecar's defaults (D = 1.3 s, margin
/// 1 s); TTL is the smallest the start-up check accepts (TTL > keep-alive
/// interval + D + margin, with keep-alives every unit).
const TIMING: Timing = Timing {
    ttl: 5,
    margin: 1,
    down: 2,
    resend: 1,
    grant: 3,
    failsafe_max: 20,
};

fn ci_model(mutation: Option<Mutation>) -> LinkModel {
    LinkModel {
        members: 2,
        candidates: 2,
        horizon: 6,
        timing: TIMING,
        // One fault of any kind per run: every kind at every point of a
        // switch, exhaustively, in about a minute. Two per run is the
        // `large_configuration`.
        faults: Faults {
            total: 1,
            drop: 1,
            duplicate: 1,
            lb_fail: 1,
            unknown_write: 1,
            member_crash: 1,
            partition: 1,
            leader_crash: 1,
            leader_lease: 1,
            // A pause alone only delays a command that is still valid; it
            // takes a second fault to leave a stale one in flight (the
            // `paused_sidecar_*` tests).
            pause: 0,
            // State the link did not create has configurations of its
            // own (below): together with these, the space explodes.
            forge: 0,
            route_lost: 0,
            restore: 0,
        },
        mutation,
        restarted_at_start: false,
        delayed_reads: false,
        handover: false,
        failsafe: false,
        cut_at_start: 0,
    }
}

/// The bug the chaos suite found (`b867c61`): a sidecar paused with a
/// serve in flight must not land it once its lease may have run out. The
/// serve is put there by a restart (the sidecar synced to the old route):
/// here alice has just restarted as the request arrives, and the pause
/// comes at any point after, every interleaving. `paused_sidecar_model(2)`
/// (in `scripts/model-check-large`) spends a fault on the crash instead,
/// so it can come at any point too.
fn paused_sidecar_model(mutation: Option<Mutation>, faults: u8) -> LinkModel {
    let mut model = ci_model(mutation);
    model.restarted_at_start = faults < 2;
    model.faults = Faults {
        total: faults,
        member_crash: faults - 1,
        pause: 1,
        ..Faults::default()
    };
    model
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(2))
}

struct Outcome {
    states: usize,
    unique: usize,
    depth: usize,
    done: bool,
    /// A member cut from etcd served on grants in some explored state.
    failsafe_served: bool,
}

/// Explores the whole space; panics with a trace on any violation.
fn check_all(name: &str, model: LinkModel) -> Outcome {
    check_up_to(name, model, usize::MAX)
}

/// Explores depth-first until `limit` states (the whole space if it is
/// smaller); panics with a trace on any violation.
fn check_up_to(name: &str, model: LinkModel, limit: usize) -> Outcome {
    let started = Instant::now();
    let m = model.clone();
    // Depth-first: the frontier of a breadth-first search holds millions
    // of full states (gigabytes); depth-first keeps only the current path.
    let checker = model
        .checker()
        .threads(threads())
        .target_state_count(limit)
        .spawn_dfs()
        .join_and_report(&mut Progress::default());
    let out = Outcome {
        states: checker.state_count(),
        unique: checker.unique_state_count(),
        depth: checker.max_depth(),
        // A capped search also says "done" when it reaches its cap.
        done: checker.is_done() && checker.state_count() < limit,
        failsafe_served: checker.discovery(model::FAILSAFE_SERVES).is_some(),
    };
    println!(
        "{name}: {} states ({} unique), depth {}, {:.1} s",
        out.states,
        out.unique,
        out.depth,
        started.elapsed().as_secs_f64()
    );
    for p in m.properties() {
        if let Some(path) = checker.discovery(p.name) {
            if p.expectation != stateright::Expectation::Sometimes {
                panic!(
                    "{name}: counterexample to \"{}\":\n{}",
                    p.name,
                    m.trace(&path)
                );
            }
        }
    }
    // A capped search proves only that no "always" broke in what it saw.
    if limit == usize::MAX {
        checker.assert_properties();
    }
    out
}

#[test]
fn ci_configuration_explores_everything_without_violation() {
    let out = check_all("CI configuration", ci_model(None));
    // A whole bootstrap and switch alone take ~20 steps; far fewer states
    // would mean the model stopped exploring (e.g. an action guard broke).
    assert!(out.done, "the checker stopped before exploring everything");
    assert!(
        out.depth >= 20,
        "explored runs are too short: {}",
        out.depth
    );
    assert!(out.unique > 100_000, "the model explored almost nothing");
}

/// Runs a mutant until the first counterexample to `property`; prints it.
fn expect_counterexample(mutation: Mutation, property: &'static str) {
    // Two faults: some breaks need one to set the stage and one to hit
    // (e.g. a lost lease, then a stale write). The search stops at the
    // first counterexample, so the larger space costs little.
    let mut model = ci_model(Some(mutation));
    model.faults.total = 2;
    expect_counterexample_in(model, property);
}

fn expect_counterexample_in(model: LinkModel, property: &'static str) {
    let started = Instant::now();
    let m = model.clone();
    // One thread: BFS then finds a shortest counterexample.
    let checker = model
        .checker()
        .finish_when(stateright::HasDiscoveries::AnyOf(
            [property].into_iter().collect(),
        ))
        .spawn_bfs()
        .join();
    report_counterexample(&m, &checker, property, started);
}

/// Prints the counterexample to `property` the mutant `m` yielded, or
/// panics if there is none.
fn report_counterexample(
    m: &LinkModel,
    checker: &impl Checker<LinkModel>,
    property: &'static str,
    started: Instant,
) {
    let mutation = m.mutation.expect("a mutant");
    let path = checker.discovery(property).unwrap_or_else(|| {
        panic!(
            "{mutation:?}: no counterexample to \"{property}\" in {} states",
            checker.unique_state_count()
        )
    });
    println!(
        "{mutation:?}: counterexample to \"{property}\" after {} states, {:.1} s:\n{}",
        checker.unique_state_count(),
        started.elapsed().as_secs_f64(),
        m.trace(&path)
    );
}

#[test]
fn a_paused_sidecar_never_lands_a_stale_serve() {
    let out = check_all("paused sidecar", paused_sidecar_model(None, 1));
    assert!(out.done, "the checker stopped before exploring everything");
    assert!(out.unique > 10_000, "the model explored almost nothing");
}

#[test]
fn mutation_no_serve_deadline_breaks_s1() {
    expect_counterexample_in(
        paused_sidecar_model(Some(Mutation::NoServeDeadline), 1),
        "S1 no two LBs serve different setups",
    );
}

/// State the link did not create: `faults` of the new kinds only (an
/// adversary's pushes, the route key deleted, etcd restored from an old
/// snapshot), on the CI configuration's bounds.
fn untrusted_model(mutation: Option<Mutation>, faults: Faults) -> LinkModel {
    let mut model = ci_model(mutation);
    model.faults = faults;
    model
}

/// `n` forged Drain/Serve pushes (any member, any time, any phase and
/// setup, epoch just ahead of the route, a token far above any real one),
/// with route reads answered at any later point: nothing moves. CI checks
/// one; `scripts/model-check-large` two.
fn forged_pushes_model(mutation: Option<Mutation>, n: u8) -> LinkModel {
    let mut model = untrusted_model(
        mutation,
        Faults {
            total: n,
            forge: n,
            ..Faults::default()
        },
    );
    model.delayed_reads = true;
    model
}

fn route_lost_model(mutation: Option<Mutation>) -> LinkModel {
    untrusted_model(
        mutation,
        Faults {
            total: 1,
            route_lost: 1,
            ..Faults::default()
        },
    )
}

/// etcd restored from the snapshot taken after the bootstrap, and one
/// member crash anywhere (so a member may come back without memory and
/// read the rolled-back route).
fn restore_model(mutation: Option<Mutation>) -> LinkModel {
    untrusted_model(
        mutation,
        Faults {
            total: 2,
            restore: 1,
            member_crash: 1,
            ..Faults::default()
        },
    )
}

#[test]
fn forged_pushes_move_nothing() {
    let out = check_all("forged pushes", forged_pushes_model(None, 1));
    assert!(out.done, "the checker stopped before exploring everything");
    assert!(out.unique > 10_000, "the model explored almost nothing");
}

#[test]
#[ignore = "minutes; run by hand (scripts/model-check-large)"]
fn two_forged_pushes_move_nothing() {
    let out = check_all("two forged pushes", forged_pushes_model(None, 2));
    assert!(out.done, "the checker stopped before exploring everything");
}

#[test]
fn a_deleted_route_is_re_established_without_a_split() {
    let out = check_all("route deleted", route_lost_model(None));
    assert!(out.done, "the checker stopped before exploring everything");
    assert!(out.unique > 100_000, "the model explored almost nothing");
}

#[test]
#[ignore = "several minutes; run by hand (scripts/model-check-large)"]
fn an_etcd_restore_never_splits_the_link() {
    let out = check_all("etcd restored", restore_model(None));
    assert!(out.done, "the checker stopped before exploring everything");
}

#[test]
fn mutation_trust_pushes_breaks_s1() {
    expect_counterexample_in(
        forged_pushes_model(Some(Mutation::TrustPushes), 1),
        "S1 no two LBs serve different setups",
    );
}

#[test]
fn mutation_bootstrap_over_applied_breaks_l1() {
    expect_counterexample_in(
        route_lost_model(Some(Mutation::BootstrapOverApplied)),
        "L1 once faults stop, the switch completes",
    );
}

/// Runs a mutant depth-first until the first counterexample: for spaces
/// whose breadth-first frontier does not fit in memory (the restore
/// configuration's took 24 GB). The trace is a counterexample, not the
/// shortest one.
fn expect_counterexample_dfs(model: LinkModel, property: &'static str) {
    let started = Instant::now();
    let m = model.clone();
    let checker = model
        .checker()
        .threads(threads())
        .finish_when(stateright::HasDiscoveries::AnyOf(
            [property].into_iter().collect(),
        ))
        .spawn_dfs()
        .join();
    report_counterexample(&m, &checker, property, started);
}

/// Depth-first through the restore configuration: the counterexample needs
/// a restore and a fence, and takes 4.8M states (about two minutes), so it
/// runs from `scripts/model-check-large`.
#[test]
#[ignore = "minutes; run by hand (scripts/model-check-large)"]
fn mutation_serve_after_fence_unread_breaks_s1() {
    expect_counterexample_dfs(
        restore_model(Some(Mutation::ServeAfterFenceUnread)),
        "S1 no two LBs serve different setups",
    );
}

/// A planned switchover with a handover (alice issues keys): hold, the
/// issuing end's confirmed blocks, the grace, drain, serve; one crash of a
/// member or of the leader anywhere (the grace included): 5.2M states,
/// about 70 s. A cut from etcd and a failed LB command each add about as
/// many again; the one-fault-of-every-kind version runs from
/// `scripts/model-check-large`.
fn handover_model(mutation: Option<Mutation>) -> LinkModel {
    let mut model = ci_model(mutation);
    model.handover = true;
    model.faults = Faults {
        total: 1,
        member_crash: 1,
        leader_crash: 1,
        ..Faults::default()
    };
    model
}

#[test]
#[ignore = "tens of minutes; run by hand (scripts/model-check-large)"]
fn a_handover_under_any_one_fault_keeps_order_and_never_splits() {
    let mut model = handover_model(None);
    model.faults = ci_model(None).faults;
    let out = check_all("handover, any one fault", model);
    assert!(out.done, "the checker stopped before exploring everything");
}

/// A member frozen (SIGSTOP) during the hold: the issuing end's member
/// before or after it confirmed its block, or the receiving end's during
/// its grace, at any point of the hold, every interleaving.
#[test]
fn a_member_frozen_during_a_handover_keeps_order_and_never_splits() {
    let mut model = handover_model(None);
    model.faults = Faults {
        total: 1,
        pause: 1,
        ..Faults::default()
    };
    let out = check_all("handover, a member frozen in the hold", model);
    assert!(out.done, "the checker stopped before exploring everything");
    assert!(out.unique > 10_000, "the model explored almost nothing");
}

#[test]
fn a_handover_keeps_order_and_never_splits() {
    let out = check_all("handover", handover_model(None));
    assert!(out.done, "the checker stopped before exploring everything");
    assert!(out.unique > 100_000, "the model explored almost nothing");
}

#[test]
fn mutation_no_grace_breaks_the_handover_order() {
    expect_counterexample_in(
        handover_model(Some(Mutation::NoGrace)),
        "H the receiving end drains only after the issuing end's confirmed blocks plus the grace",
    );
}

#[test]
fn mutation_serve_after_hold_breaks_s1() {
    expect_counterexample_in(
        handover_model(Some(Mutation::ServeAfterHold)),
        "S1 no two LBs serve different setups",
    );
}

#[test]
fn mutation_skip_drain_breaks_s1() {
    expect_counterexample(Mutation::SkipDrain, "S1 no two LBs serve different setups");
}

#[test]
fn mutation_ack_before_lb_blocked_breaks_s1() {
    expect_counterexample(
        Mutation::AckBeforeLbBlocked,
        "S1 no two LBs serve different setups",
    );
}

#[test]
fn mutation_ignore_token_breaks_s2() {
    expect_counterexample(
        Mutation::IgnoreToken,
        "S2 no write or push under a stale token or step",
    );
}

/// For tuning bounds: `LOCKSTEP_MODEL=members,horizon,faults` explores
/// that configuration, stopping after `LOCKSTEP_MODEL_STATES` states.
#[test]
#[ignore = "tuning aid"]
fn explore_from_env() {
    let spec = std::env::var("LOCKSTEP_MODEL").unwrap_or_else(|_| "2,6,2".into());
    let v: Vec<u64> = spec.split(',').map(|x| x.parse().unwrap()).collect();
    let mut model = ci_model(None);
    if let Ok(t) = std::env::var("LOCKSTEP_MODEL_TIMING") {
        let t: Vec<u64> = t.split(',').map(|x| x.parse().unwrap()).collect();
        model.timing = Timing {
            ttl: t[0],
            margin: t[1],
            down: t[2],
            resend: 1,
            ..model.timing
        };
    }
    model.handover = std::env::var("LOCKSTEP_MODEL_HANDOVER").is_ok();
    if let Ok(cut) = std::env::var("LOCKSTEP_MODEL_FAILSAFE") {
        model = failsafe_model(None, model.faults, v[1]);
        model.cut_at_start = cut.parse().unwrap_or(0);
    }
    model.mutation = match std::env::var("LOCKSTEP_MODEL_MUTATION").as_deref() {
        Ok("FailsafeWithoutEveryGrant") => Some(Mutation::FailsafeWithoutEveryGrant),
        Ok("GrantWhileSeeingEtcd") => Some(Mutation::GrantWhileSeeingEtcd),
        Ok(other) => panic!("unknown mutation {other:?}"),
        Err(_) => None,
    };
    model.members = v[0] as usize;
    model.horizon = v[1];
    model.faults.total = v[2] as u8;
    if let Ok(kinds) = std::env::var("LOCKSTEP_MODEL_FAULTS") {
        let on = |k: &str| kinds.split(',').any(|x| x == k) as u8;
        model.faults = Faults {
            total: model.faults.total,
            drop: on("drop"),
            duplicate: on("dup"),
            lb_fail: on("lb"),
            unknown_write: on("unknown"),
            member_crash: on("crash"),
            partition: on("partition"),
            leader_crash: on("lcrash"),
            leader_lease: on("llease"),
            pause: on("pause"),
            forge: on("forge"),
            route_lost: on("lost"),
            restore: on("restore"),
        };
    }
    let limit: usize = std::env::var("LOCKSTEP_MODEL_STATES")
        .ok()
        .and_then(|x| x.parse().ok())
        .unwrap_or(usize::MAX);
    let started = Instant::now();
    let m = model.clone();
    let checker = model
        .checker()
        .threads(threads())
        .target_state_count(limit)
        .spawn_dfs()
        .join();
    println!(
        "{spec}: {} states ({} unique), depth {}, {:.1} s, done {}",
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth(),
        started.elapsed().as_secs_f64(),
        checker.is_done()
    );
    for p in m.properties() {
        if let Some(path) = checker.discovery(p.name) {
            println!("discovery \"{}\":\n{}", p.name, m.trace(&path));
        }
    }
}

#[test]
#[ignore = "an hour or more; run by hand (see the module docs)"]
fn large_configuration() {
    let mut model = ci_model(None);
    model.faults.total = 2;
    check_all("large configuration", model);
}

#[test]
#[ignore = "several minutes; run by hand (scripts/model-check-large)"]
fn paused_sidecar_after_a_crash_at_any_point() {
    check_all(
        "paused sidecar, crash anywhere",
        paused_sidecar_model(None, 2),
    );
}

/// Failsafe: a lease must stay fresh past a grant (3) and D (1), so TTL −
/// margin = 5: a member in touch with etcd is never "about to lapse" and
/// grants nothing; one cut off asks for grants a unit after its last
/// keep-alive and serves on them from the fifth; a grant sent at t keeps
/// it routable through t + 1, when the next ask goes.
const FAILSAFE_TIMING: Timing = Timing {
    ttl: 6,
    margin: 1,
    down: 1,
    resend: 1,
    grant: 3,
    failsafe_max: 20,
};

/// Failsafe on: each candidate runs in its member's process, members cut
/// from etcd (`partition`, per member, healed at any time) ask each other
/// for grants over the lossy network, and the forced failover waits for
/// etcd. `horizon` leaves time for a lease to run out and the switch to go
/// on without the cut member.
fn failsafe_model(mutation: Option<Mutation>, faults: Faults, horizon: u64) -> LinkModel {
    let mut model = ci_model(mutation);
    model.failsafe = true;
    model.candidates = model.members;
    model.timing = FAILSAFE_TIMING;
    model.horizon = horizon;
    model.faults = faults;
    model
}

/// The failsafe spaces are large (grants are messages every member sends
/// each time unit, in any order against everything else): CI explores the
/// first few million states of each depth-first; `scripts/model-check-large`
/// explores them whole.
const FAILSAFE_CI_STATES: usize = 2_000_000;

/// Alice cut from etcd as the request arrives, and one more fault at any
/// point: bob cut too (both serve on each other's grants until one is
/// back), a grant or push lost or duplicated, bob's process crashed (a new
/// process, not in the roster until the leader writes it again), a write
/// whose outcome is unknown. Heals come at any time.
fn failsafe_one_cut(horizon: u64) -> LinkModel {
    let faults = Faults {
        total: 1,
        partition: 1,
        drop: 1,
        duplicate: 1,
        member_crash: 1,
        unknown_write: 1,
        ..Faults::default()
    };
    let mut model = failsafe_model(None, faults, horizon);
    model.cut_at_start = 1;
    model
}

/// Both members cut from etcd as the request arrives, and a grant or push
/// lost or duplicated: they serve on each other's grants; whoever comes
/// back first leads only once its grants have run out, and the switch
/// moves only then.
fn failsafe_both_cut(horizon: u64) -> LinkModel {
    let faults = Faults {
        total: 1,
        drop: 1,
        duplicate: 1,
        ..Faults::default()
    };
    let mut model = failsafe_model(None, faults, horizon);
    model.cut_at_start = 2;
    model
}

#[test]
fn failsafe_never_splits_with_a_member_cut_and_one_more_fault() {
    let out = check_up_to(
        "failsafe, alice cut",
        failsafe_one_cut(8),
        FAILSAFE_CI_STATES,
    );
    assert!(out.unique > 100_000, "the model explored almost nothing");
}

#[test]
fn failsafe_serves_through_a_whole_cut_and_never_splits() {
    let out = check_up_to(
        "failsafe, both cut",
        failsafe_both_cut(8),
        FAILSAFE_CI_STATES,
    );
    assert!(out.unique > 100_000, "the model explored almost nothing");
    assert!(
        out.failsafe_served,
        "no explored state had a cut member serving on grants"
    );
}

/// Both members cut from etcd as the request arrives (alice leads), no
/// other fault.
fn failsafe_both_cut_quietly(mutation: Option<Mutation>) -> LinkModel {
    let mut model = failsafe_model(mutation, Faults::default(), 8);
    model.cut_at_start = 2;
    model
}

/// Breadth-first until "every member serves on grants" is reached or
/// `limit` states are explored: whether it was reached, after how many
/// states; panics on any safety violation found on the way.
fn reach_all_serving(name: &str, model: LinkModel, limit: usize) -> (bool, usize) {
    let started = Instant::now();
    let checker = model
        .checker()
        .target_state_count(limit)
        .finish_when(stateright::HasDiscoveries::AnyOf(
            [model::FAILSAFE_ALL_SERVE].into_iter().collect(),
        ))
        .spawn_bfs()
        .join();
    for property in [
        "S1 no two LBs serve different setups",
        "S2 no write or push under a stale token or step",
    ] {
        if let Some(path) = checker.discovery(property) {
            panic!("{name}: {property} violated: {:#?}", path.into_actions());
        }
    }
    let reached = checker.discovery(model::FAILSAFE_ALL_SERVE);
    println!(
        "{name}: {} states ({} unique), depth {}, {:.1} s; every member serving on grants: {}",
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth(),
        started.elapsed().as_secs_f64(),
        reached.as_ref().map_or("not reached".into(), |p| format!(
            "{:?}",
            p.clone().into_actions()
        ))
    );
    (reached.is_some(), checker.state_count())
}

/// The mutant gets about nine times the budget the fix needs (breadth-first:
/// every path up to a greater depth than the fix's shortest).
const QUIET_STATES: usize = 1_000_000;

#[test]
fn a_cut_leader_steps_down_and_grants_so_the_whole_link_serves() {
    let (reached, states) = reach_all_serving(
        "failsafe, both cut, quietly",
        failsafe_both_cut_quietly(None),
        QUIET_STATES,
    );
    assert!(
        reached,
        "the link never served on grants with its leader cut from etcd too"
    );
    assert!(
        states * 5 < QUIET_STATES,
        "reached only after {states} states"
    );
}

#[test]
fn mutation_a_cut_leader_that_leads_on_starves_failsafe() {
    // A liveness break: S1 holds, but the leader's member never grants, so
    // the other member fences (the failure of the frozen-etcd test).
    let (reached, _) = reach_all_serving(
        "failsafe, both cut, quietly, leader leads on",
        failsafe_both_cut_quietly(Some(Mutation::LeadOnLapsingLease)),
        QUIET_STATES,
    );
    assert!(
        !reached,
        "with its leader leading on, the whole link should never serve on grants"
    );
}

#[test]
#[ignore = "tens of minutes; run by hand (scripts/model-check-large)"]
fn failsafe_whole_spaces() {
    for (name, model) in [
        ("failsafe, both cut, whole", failsafe_both_cut(6)),
        ("failsafe, alice cut, whole", failsafe_one_cut(6)),
    ] {
        let out = check_all(name, model);
        assert!(out.done, "the checker stopped before exploring everything");
    }
}

/// Alice cut from etcd as the request arrives, no other fault.
fn failsafe_mutant(mutation: Mutation) -> LinkModel {
    let mut model = failsafe_model(Some(mutation), Faults::default(), 8);
    model.cut_at_start = 1;
    model
}

#[test]
fn mutation_failsafe_without_every_grant_breaks_s1() {
    expect_counterexample_dfs(
        failsafe_mutant(Mutation::FailsafeWithoutEveryGrant),
        "S1 no two LBs serve different setups",
    );
}

#[test]
fn mutation_grant_while_seeing_etcd_breaks_s1() {
    // Its breadth-first frontier does not fit in memory.
    expect_counterexample_dfs(
        failsafe_mutant(Mutation::GrantWhileSeeingEtcd),
        "S1 no two LBs serve different setups",
    );
}
