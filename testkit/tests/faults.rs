//! Fail closed: a frozen sidecar and a frozen etcd leave LBs routing nowhere
//! within the stated bounds, never to different setups, and the link comes
//! back by itself once the fault heals.

use lockstep::protocol::{LbTarget, Setup};
use lockstep_testkit::lab::{Lab, LabOptions};
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

use lockstep_testkit::rt;

#[test]
fn a_frozen_sidecar_leaves_its_lb_routing_nowhere_then_recovers() {
    rt().block_on(async {
        let lab = Lab::start("freeze-sidecar", LabOptions::default())
            .await
            .expect("lab");
        let traffic = lab.start_traffic(10).await.expect("traffic");
        let t = &lab.options.timing;
        let d = t.down_detection();

        lab.sidecars[1]
            .guard
            .signal(Signal::SIGSTOP)
            .expect("SIGSTOP");
        // Its HAProxy's checks time out: the server goes down within D.
        let blocked = lab
            .wait_lb(1, LbTarget::Blocked, d + Duration::from_secs(2))
            .await
            .expect("the frozen sidecar's LB routes nowhere");
        println!("frozen sidecar: its LB routes nowhere after {blocked:?} (D = {d:?})");

        // Longer than the lease TTL: its lease expires meanwhile.
        tokio::time::sleep(t.lease_ttl + Duration::from_secs(1)).await;
        lab.sidecars[1]
            .guard
            .signal(Signal::SIGCONT)
            .expect("SIGCONT");
        let back = lab
            .wait_lb(1, LbTarget::Serve(Setup::Hot), Duration::from_secs(15))
            .await
            .expect("the thawed sidecar's LB serves hot again");
        println!("thawed sidecar re-registered and serves hot again after {back:?}");
        traffic
            .wait_for_more_matched(10, Duration::from_secs(10))
            .await
            .expect("key pairs flow again");
        traffic.stop_and_assert_no_mismatch().await;
    });
}

#[test]
fn a_frozen_etcd_fences_every_member_then_the_link_recovers() {
    rt().block_on(async {
        let lab = Lab::start("freeze-etcd", LabOptions::default())
            .await
            .expect("lab");
        let traffic = lab.start_traffic(10).await.expect("traffic");
        let t = &lab.options.timing;

        let frozen = Instant::now();
        lab.etcd.nodes[0]
            .guard
            .signal(Signal::SIGSTOP)
            .expect("SIGSTOP etcd");
        // No keep-alive is acknowledged any more: each member stops
        // answering its LB's checks D before its lease stops being fresh,
        // and fences itself when it does. Bound: TTL - margin after the
        // last ack, which is at most one keep-alive interval before the
        // freeze; plus D for HAProxy to act on the failed checks.
        let bound = t.lease_ttl - t.margin + t.down_detection() + Duration::from_secs(1);
        lab.wait_all_lbs(LbTarget::Blocked, bound)
            .await
            .expect("every LB blocked while etcd is unreachable");
        println!(
            "etcd frozen: every LB routes nowhere after {:?} (bound {bound:?})",
            frozen.elapsed()
        );
        let during = traffic.snapshot();
        assert_eq!(during.mismatched, 0);

        tokio::time::sleep(Duration::from_secs(1)).await;
        lab.etcd.nodes[0]
            .guard
            .signal(Signal::SIGCONT)
            .expect("SIGCONT etcd");
        let healed = Instant::now();
        lab.wait_all_lbs(LbTarget::Serve(Setup::Hot), Duration::from_secs(20))
            .await
            .expect("the link serves again once etcd is back");
        println!(
            "etcd back: the link serves hot again after {:?}",
            healed.elapsed()
        );
        traffic
            .wait_for_more_matched(10, Duration::from_secs(10))
            .await
            .expect("key pairs flow again");
        traffic.stop_and_assert_no_mismatch().await;
    });
}

/// `switchover --wait` across an etcd restart: the Admin's watch of the
/// link breaks mid-switch (the etcd process under it is gone), and the
/// wait opens it again and still answers "complete" once the switch is,
/// instead of "not complete" the moment the watch broke.
#[test]
fn a_switchover_wait_survives_an_etcd_restart_mid_switch() {
    rt().block_on(async {
        let mut lab = Lab::start("wait-etcd-restart", LabOptions::default())
            .await
            .expect("lab");
        let traffic = lab.start_traffic(10).await.expect("traffic");
        let mut admin = lab.admin(0).await.expect("admin");
        // A 2 s grace keeps the switch in flight across the restart.
        let asked = Instant::now();
        let wait = tokio::spawn(async move {
            admin
                .switchover(lockstep::proto::SwitchRequest {
                    grace_ms: 2_000,
                    ..lockstep_testkit::switch_request(Setup::Warm, "etcd restarted mid-switch")
                })
                .await
                .map(|r| r.into_inner())
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        tokio::task::block_in_place(|| lab.etcd.restart(0)).expect("etcd restarted");
        let restarted = asked.elapsed();
        let reply = wait
            .await
            .expect("the call's task")
            .unwrap_or_else(|s| panic!("switchover --wait across the restart: {}", s.message()));
        assert!(reply.completed, "{reply:?}");
        assert!(
            asked.elapsed() > restarted,
            "answered before etcd was back: {reply:?}"
        );
        lab.wait_all_lbs(LbTarget::Serve(Setup::Warm), Duration::from_secs(5))
            .await
            .expect("every LB on warm");
        traffic
            .wait_for_more_matched(50, Duration::from_secs(10))
            .await
            .expect("pairs match on warm");
        let report = traffic.stop_and_assert_no_mismatch().await;
        assert!(report.matched > 50, "{report}");
    });
}
