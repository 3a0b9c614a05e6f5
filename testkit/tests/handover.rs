//! A planned switchover strands no key in transit (issue 11), on the real
//! stack: SAE pairs with a transit gap between `enc_keys` at Alice and
//! `dec_keys` at Bob run beside the gapless key-pair checker (the oracle
//! for mismatches); every test asserts 0 mismatched over enough matched.

use lockstep::proto::{self, Setup as PSetup};
use lockstep::protocol::{LbTarget, Setup};
use lockstep_testkit::lab::{Lab, LabOptions};
use lockstep_testkit::rt;
use lockstep_testkit::switch_request;
use lockstep_testkit::transit::{Transit, TransitReport};
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

fn switch(to: Setup, reason: &str) -> proto::SwitchRequest {
    proto::SwitchRequest {
        timeout_ms: 30_000,
        ..switch_request(to, reason)
    }
}

fn options(issuer: &str, grace: Duration) -> LabOptions {
    let mut o = LabOptions::default();
    o.timing.handover_issuer = issuer.into();
    o.timing.handover_grace = grace;
    o
}

/// `n` switchovers one second apart with 8 SAE pairs (gap 200 ms) and the
/// gapless checker running; returns the transit report.
async fn switch_under_sae_traffic(lab: &Lab, n: usize) -> TransitReport {
    let traffic = lab.start_traffic(20).await.expect("gapless pairs flow");
    let transit = Transit::start(lab.transit_config(8, Duration::from_millis(200)));
    transit
        .wait_for_matched(16, Duration::from_secs(10))
        .await
        .expect("SAE pairs flow");
    let mut admin = lab.admin(0).await.expect("admin");
    let mut to = Setup::Warm;
    for i in 0..n {
        let r = admin
            .switchover(switch(to, &format!("planned {i}")))
            .await
            .unwrap_or_else(|e| panic!("switch {i}: {}", e.message()))
            .into_inner();
        assert!(r.completed, "switch {i}");
        tokio::time::sleep(Duration::from_secs(1)).await;
        to = to.other();
    }
    let report = transit.stop().await;
    let gapless = traffic.stop_and_assert_no_mismatch().await;
    assert!(
        gapless.matched > 100,
        "too little gapless traffic: {gapless}"
    );
    println!("{report}");
    report
}

/// With a handover whose grace covers the SAEs' gap, planned switchovers
/// strand no key.
#[test]
fn planned_switchovers_with_a_handover_strand_no_key() {
    rt().block_on(async {
        let lab = Lab::start("handover", options("alice", Duration::from_millis(300)))
            .await
            .expect("lab");
        let report = switch_under_sae_traffic(&lab, 6).await;
        assert_eq!(report.stranded, 0, "{report}: {:?}", report.strands);
        assert!(report.matched > 50, "too few SAE pairs: {report}");
        let history = lab.history(10).await.expect("history");
        let planned: Vec<_> = history
            .records
            .iter()
            .filter(|h| h.kind == "switchover")
            .collect();
        assert_eq!(planned.len(), 6);
        for h in planned {
            assert_eq!(h.grace_ms, 300, "{h:?}");
            assert!(
                h.hold_ms >= 300,
                "the receiving end waited the grace: {h:?}"
            );
        }

        // A grace given with one switch (`switchover --grace`) is the one
        // that switch waits, and the leader counts every grace.
        let mut admin = lab.admin(0).await.expect("admin");
        // Six switches from hot (to warm first) left the link on hot.
        let to = Setup::Warm;
        let r = admin
            .switchover(proto::SwitchRequest {
                grace_ms: 700,
                ..switch(to, "planned with its own grace")
            })
            .await
            .expect("switch with --grace")
            .into_inner();
        assert!(r.completed);
        let history = lab.history(1).await.expect("history");
        let h = &history.records[0];
        assert_eq!((h.kind.as_str(), h.grace_ms), ("switchover", 700), "{h:?}");
        assert!(h.hold_ms >= 700, "the receiving end waited 700 ms: {h:?}");
        let leader = lab
            .leader_index(None, Duration::from_secs(5))
            .await
            .expect("a leader");
        let graces = lab.sidecars[leader]
            .scrape()
            .await
            .expect("scrape the leader")
            .get("lockstep_handover_grace_seconds_total", &[])
            .expect("the grace metric");
        assert!(
            (6.0 * 0.3 + 0.7..10.0).contains(&graces),
            "the leader counted {graces} s of grace over six 300 ms and one 700 ms"
        );
    });
}

/// The same switches without a handover strand keys: the test can tell.
#[test]
fn without_a_handover_the_same_switchovers_strand_keys() {
    rt().block_on(async {
        let lab = Lab::start("no-handover", options("both", Duration::from_millis(300)))
            .await
            .expect("lab");
        let report = switch_under_sae_traffic(&lab, 6).await;
        assert!(report.stranded > 0, "expected stranded keys: {report}");
        assert!(report.matched > 50, "too few SAE pairs: {report}");
    });
}

/// Alice's HAProxy frozen for 5 s as a switch begins: her sidecar cannot
/// confirm the block, so Bob stays on the old setup until it can (plus the
/// grace); keys Alice's frozen HAProxy hands out when it thaws are still
/// fetched on the old setup at Bob.
#[test]
fn a_frozen_issuing_haproxy_strands_no_key() {
    rt().block_on(async {
        let lab = Lab::start(
            "handover-frozen",
            options("alice", Duration::from_millis(300)),
        )
        .await
        .expect("lab");
        let traffic = lab.start_traffic(20).await.expect("gapless pairs flow");
        let transit = Transit::start(lab.transit_config(8, Duration::from_millis(200)));
        transit
            .wait_for_matched(16, Duration::from_secs(10))
            .await
            .expect("SAE pairs flow");
        let alice = lab
            .sidecar_index(|id| id.starts_with("alice"))
            .expect("alice");
        lab.lbs[alice].signal(Signal::SIGSTOP).expect("freeze");
        let frozen = Instant::now();
        let mut admin = lab.admin(0).await.expect("admin");
        let switch_task = tokio::spawn(async move {
            admin
                .switchover(switch(Setup::Warm, "while alice's HAProxy is frozen"))
                .await
        });
        tokio::time::sleep(Duration::from_secs(5).saturating_sub(frozen.elapsed())).await;
        lab.lbs[alice].signal(Signal::SIGCONT).expect("thaw");
        let reply = switch_task
            .await
            .expect("task")
            .expect("switchover")
            .into_inner();
        assert!(reply.completed);
        lab.wait_all_lbs(LbTarget::Serve(Setup::Warm), Duration::from_secs(10))
            .await
            .expect("every LB on warm");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let report = transit.stop().await;
        traffic.stop_and_assert_no_mismatch().await;
        println!("{report}");
        assert_eq!(report.stranded, 0, "{report}: {:?}", report.strands);
        assert!(report.matched > 30, "too few SAE pairs: {report}");
    });
}

/// Failover skips the grace (the old setup is presumed dead), and so does a
/// switchover whose receiving end reports the old setup down.
#[test]
fn failover_and_a_dead_old_setup_skip_the_grace() {
    rt().block_on(async {
        let mut o = options("alice", Duration::from_secs(2));
        o.timing.failover_enabled = false;
        let lab = Lab::start("handover-skip", o).await.expect("lab");
        let traffic = lab.start_traffic(20).await.expect("pairs flow");
        lab.wait_health(Setup::Warm, true, Duration::from_secs(10))
            .await
            .expect("warm healthy");
        let mut admin = lab.admin(0).await.expect("admin");
        let r = admin
            .failover(proto::SwitchRequest {
                force: true,
                ..switch(Setup::Warm, "failover")
            })
            .await
            .expect("failover")
            .into_inner();
        assert!(r.completed);
        // Bob's (the receiving end's) warm KME dies: a switchover back from
        // warm has nothing to keep Bob on.
        lab.set_kme_fault_and_wait(Setup::Warm, "bob", "down", false)
            .await
            .expect("bob's warm reported down");
        let r = admin
            .switchover(switch(Setup::Hot, "old setup dead at bob"))
            .await
            .expect("switchover")
            .into_inner();
        assert!(r.completed);
        let history = lab.history(5).await.expect("history");
        for h in history
            .records
            .iter()
            .filter(|h| h.kind == "failover" || h.kind == "switchover")
        {
            assert_eq!((h.grace_ms, h.hold_ms), (0, 0), "no grace: {h:?}");
        }
        traffic.stop_and_assert_no_mismatch().await;
    });
}

/// Waits until the route is in its hold step.
async fn wait_for_hold(lab: &Lab) {
    let start = Instant::now();
    loop {
        if let Ok(s) = lab.status().await {
            if s.route
                .as_ref()
                .is_some_and(|r| r.phase == proto::Phase::Hold as i32)
            {
                return;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the switch never reached its hold"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The leader SIGKILLed during the grace, then a member SIGSTOPped during
/// the next one: nothing mismatches, and the switch completes (re-decided by
/// the next leader).
#[test]
fn a_leader_killed_and_a_member_frozen_during_the_grace() {
    rt().block_on(async {
        let mut lab = Lab::start("handover-faults", options("alice", Duration::from_secs(2)))
            .await
            .expect("lab");
        let traffic = lab.start_traffic(20).await.expect("pairs flow");
        let leader = lab.status().await.expect("status").leader;
        let killed = lab.sidecar_index(|id| id == leader).expect("leader");
        let via = 1 - killed;
        let mut admin = lab.admin(via).await.expect("admin");
        let task = tokio::spawn(async move {
            admin
                .switchover(switch(Setup::Warm, "leader dies in the grace"))
                .await
        });
        wait_for_hold(&lab).await;
        lab.sidecars[killed]
            .guard
            .signal(Signal::SIGKILL)
            .expect("kill the leader");
        // The switch goes on under the next leader (after the dead one's
        // lease), or the admin call says it goes on.
        let _ = task.await.expect("task");
        lab.wait_lb(via, LbTarget::Serve(Setup::Warm), Duration::from_secs(30))
            .await
            .expect("the next leader finishes the switch");
        let history = lab
            .admin(via)
            .await
            .expect("admin")
            .history(proto::HistoryRequest {
                limit: 3,
                ..Default::default()
            })
            .await
            .expect("history")
            .into_inner();
        assert!(
            history
                .records
                .iter()
                .any(|h| h.kind == "redecide" && h.to == PSetup::Warm as i32),
            "the next leader re-decided the switch left in its hold: {:?}",
            history.records
        );
        lab.sidecars[killed].restart().expect("restart");
        lab.wait_lb(
            killed,
            LbTarget::Serve(Setup::Warm),
            Duration::from_secs(20),
        )
        .await
        .expect("the restarted member serves");

        // A member frozen during the grace.
        let bob = lab.sidecar_index(|id| id.starts_with("bob")).expect("bob");
        let mut admin = lab.admin(1 - bob).await.expect("admin");
        let task = tokio::spawn(async move {
            admin
                .switchover(switch(Setup::Hot, "bob frozen in the grace"))
                .await
        });
        wait_for_hold(&lab).await;
        lab.sidecars[bob]
            .guard
            .signal(Signal::SIGSTOP)
            .expect("freeze bob");
        tokio::time::sleep(Duration::from_secs(1)).await;
        lab.sidecars[bob]
            .guard
            .signal(Signal::SIGCONT)
            .expect("thaw bob");
        let _ = task.await.expect("task");
        lab.wait_all_lbs(LbTarget::Serve(Setup::Hot), Duration::from_secs(30))
            .await
            .expect("the switch completes");
        traffic
            .wait_for_more_matched(100, Duration::from_secs(10))
            .await
            .expect("pairs flow after the switch");
        let report = traffic.stop_and_assert_no_mismatch().await;
        assert!(report.matched > 100, "too little traffic: {report}");
    });
}
