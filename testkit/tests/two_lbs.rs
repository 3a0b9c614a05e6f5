//! Two LBs per end, as deployed (issue: scale): the key-pair traffic
//! reaches an end's LBs as SAEs behind a VIP do, so a frozen or killed
//! sidecar of one of Alice's two LBs leaves key delivery running through
//! the other: its own LB routes nowhere within D, pairs that hit it go to
//! the other, and no pair mismatches.

use lockstep::protocol::{LbTarget, Setup};
use lockstep_testkit::lab::{Lab, LabOptions};
use lockstep_testkit::rt;
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

/// Index of `alice-1` (members alternate alice, bob per index).
const ALICE_1: usize = 2;

#[test]
fn a_frozen_then_killed_sidecar_of_one_of_two_alice_lbs_leaves_key_delivery_running() {
    rt().block_on(async {
        let options = LabOptions {
            members_per_role: 2,
            ..LabOptions::default()
        };
        let mut lab = Lab::start("two-lbs", options).await.expect("lab");
        let t = lab.options.timing.clone();
        let d = t.down_detection();
        let config = lab.traffic_config();
        assert_eq!(config.alice_lbs().len(), 2, "{config:?}");
        assert_eq!(config.bob_lbs().len(), 2, "{config:?}");
        let config_lbs: Vec<_> = config
            .alice_lbs()
            .into_iter()
            .chain(config.bob_lbs())
            .collect();
        let traffic = lockstep_testkit::traffic::Traffic::start(config);
        let start = traffic
            .wait_for_matched(100, Duration::from_secs(10))
            .await
            .expect("key pairs through both ends");
        // Every LB carries pairs (the rotation, as behind a VIP).
        for lb in config_lbs.iter() {
            assert!(
                start.matched_at.get(lb).is_some_and(|&n| n >= 10),
                "LB {lb} carried too few pairs: {:?}",
                start.matched_at
            );
        }

        // Frozen longer than its lease: before, a one-LB end lost every
        // key for the whole freeze.
        let before = traffic.snapshot();
        let frozen = Instant::now();
        lab.sidecars[ALICE_1]
            .guard
            .signal(Signal::SIGSTOP)
            .expect("SIGSTOP");
        let blocked = lab
            .wait_lb(ALICE_1, LbTarget::Blocked, d + Duration::from_secs(2))
            .await
            .expect("the frozen sidecar's LB routes nowhere");
        tokio::time::sleep(t.lease_ttl + Duration::from_secs(1)).await;
        let during = traffic.snapshot();
        let freeze = frozen.elapsed();
        lab.sidecars[ALICE_1]
            .guard
            .signal(Signal::SIGCONT)
            .expect("SIGCONT");
        let matched = during.matched - before.matched;
        println!(
            "alice-1 frozen {freeze:?}: its LB blocked after {blocked:?} (D = {d:?}); \
             {matched} pairs matched meanwhile, longest outage {:?}",
            during.longest_outage
        );
        assert!(
            matched >= 200,
            "key delivery stopped while one of two Alice LBs was out: {during}"
        );
        assert!(
            during.longest_outage < freeze / 2,
            "an outage as long as the freeze: {during}"
        );
        // It comes back by itself (re-registers, resyncs, serves).
        lab.wait_lb(
            ALICE_1,
            LbTarget::Serve(Setup::Hot),
            Duration::from_secs(20),
        )
        .await
        .expect("the thawed sidecar serves again");

        // Killed: the same, and started again.
        let before = traffic.snapshot();
        let killed = Instant::now();
        lab.sidecars[ALICE_1].guard.kill();
        lab.wait_lb(ALICE_1, LbTarget::Blocked, d + Duration::from_secs(2))
            .await
            .expect("the killed sidecar's LB routes nowhere");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let during = traffic.snapshot();
        let matched = during.matched - before.matched;
        println!(
            "alice-1 killed for {:?}: {matched} pairs matched meanwhile",
            killed.elapsed()
        );
        assert!(matched >= 100, "key delivery stopped: {during}");
        tokio::task::block_in_place(|| lab.sidecars[ALICE_1].restart()).expect("restart");
        lab.wait_lb(
            ALICE_1,
            LbTarget::Serve(Setup::Hot),
            Duration::from_secs(20),
        )
        .await
        .expect("the restarted sidecar serves again");

        let report = traffic.stop_and_assert_no_mismatch().await;
        assert!(report.matched >= 500, "{report}");
    });
}
