//! Automatic failover from ETSI 014 health on real etcd, HAProxy, mock KMEs
//! and sidecars, with key pairs flowing through both LBs throughout.

use lockstep::proto;
use lockstep::protocol::{LbTarget, Setup};
use lockstep_testkit::lab::{Lab, LabOptions};
use std::time::{Duration, Instant};

use lockstep_testkit::rt;

/// One KME of the hot setup dies; both ends move to warm.
fn kme_death_moves_both_ends(role: &str) {
    rt().block_on(async {
        let mut lab = Lab::start(&format!("death-{role}"), LabOptions::default())
            .await
            .expect("lab");
        let traffic = lab.start_traffic(20).await.expect("traffic on hot");

        let died = Instant::now();
        lab.kmes.get_mut(Setup::Hot, role).expect("kme").kill();
        let first_good = traffic
            .wait_for_matched_by(Setup::Warm, died, Duration::from_secs(15))
            .await
            .expect("key pairs flow on warm after the failover");
        println!(
            "hot-{role} killed: first good pair on warm after {:?}",
            first_good - died
        );
        lab.wait_all_lbs(LbTarget::Serve(Setup::Warm), Duration::from_secs(5))
            .await
            .expect("both LBs on warm");
        traffic.stop_and_assert_no_mismatch().await;

        let history = lab.history(3).await.expect("history");
        let last = &history.records[0];
        assert_eq!(last.kind, "auto-failover");
        assert_eq!(last.to, proto::Setup::Warm as i32);
        assert!(
            last.reason.contains("hot unhealthy"),
            "evidence recorded: {}",
            last.reason
        );
        assert_eq!(last.requested_by, "lockstep:auto");
    });
}

#[test]
fn hot_alice_dies_and_both_ends_move_to_warm() {
    kme_death_moves_both_ends("alice");
}

#[test]
fn only_hot_bob_dies_and_alice_moves_too() {
    kme_death_moves_both_ends("bob");
}

#[test]
fn both_setups_unhealthy_means_no_switch_and_says_so() {
    rt().block_on(async {
        let lab = Lab::start("both-down", LabOptions::default())
            .await
            .expect("lab");
        lab.set_kme_fault_and_wait(Setup::Warm, "alice", "down", false)
            .await
            .expect("warm down");
        lab.set_kme_fault_and_wait(Setup::Hot, "bob", "down", false)
            .await
            .expect("hot down");
        // Give the policy several chances to (wrongly) act.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let s = lab.status().await.expect("status");
        assert_eq!(
            s.route.as_ref().expect("route").setup,
            proto::Setup::Hot as i32
        );
        assert_eq!(
            s.route.as_ref().expect("route").epoch,
            1,
            "no switch happened"
        );
        assert!(
            s.policy.contains("BOTH SETUPS UNHEALTHY"),
            "status says so: {}",
            s.policy
        );
        // The leader's metric says so too.
        let leader = lab
            .sidecar_index(|id| id == s.leader)
            .expect("leader is a lab member");
        let metrics = lab.sidecars[leader].scrape().await.expect("metrics");
        assert_eq!(
            metrics.get("lockstep_no_healthy_setup", &[]),
            Some(1.0),
            "metric: {}",
            metrics.text
        );
    });
}

/// Hot's Alice KME goes down; waits until both LBs serve warm.
async fn hot_alice_down_and_failed_over(lab: &Lab) {
    lab.kmes
        .set_fault(Setup::Hot, "alice", "down", 0)
        .await
        .expect("fault");
    lab.wait_all_lbs(LbTarget::Serve(Setup::Warm), Duration::from_secs(10))
        .await
        .expect("failed over");
}

#[test]
fn no_failback_by_default() {
    rt().block_on(async {
        let lab = Lab::start("no-failback", LabOptions::default())
            .await
            .expect("lab");
        hot_alice_down_and_failed_over(&lab).await;
        lab.set_kme_fault_and_wait(Setup::Hot, "alice", "ok", true)
            .await
            .expect("hot back");
        // Longer than dwell: still on warm.
        tokio::time::sleep(lab.options.timing.failover_dwell + Duration::from_secs(1)).await;
        let s = lab.status().await.expect("status");
        assert_eq!(
            s.route.as_ref().expect("route").setup,
            proto::Setup::Warm as i32
        );
        assert!(
            s.policy.contains("failback to hot is manual"),
            "{}",
            s.policy
        );
    });
}

#[test]
fn failback_after_a_delay_returns_once() {
    rt().block_on(async {
        let mut options = LabOptions::default();
        options.timing.failback = "after 5s".into();
        let lab = Lab::start("failback", options).await.expect("lab");
        let traffic = lab.start_traffic(10).await.expect("traffic");
        hot_alice_down_and_failed_over(&lab).await;
        let healed = Instant::now();
        lab.kmes
            .set_fault(Setup::Hot, "alice", "ok", 0)
            .await
            .expect("heal");
        let back = lab
            .wait_all_lbs(LbTarget::Serve(Setup::Hot), Duration::from_secs(20))
            .await
            .expect("failed back");
        println!("failed back {back:?} after hot healed (failback after 5s)");
        assert!(
            healed.elapsed() >= Duration::from_secs(5),
            "not before the delay"
        );
        // Once: nothing more happens.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let history = lab.history(10).await.expect("history");
        let kinds: Vec<&str> = history.records.iter().map(|h| h.kind.as_str()).collect();
        assert_eq!(kinds, vec!["auto-failback", "auto-failover", "bootstrap"]);
        traffic.stop_and_assert_no_mismatch().await;
    });
}

#[test]
fn a_flapping_kme_is_capped_then_the_link_pauses_itself() {
    rt().block_on(async {
        let mut options = LabOptions::default();
        options.timing.failover_dwell = Duration::from_millis(500);
        options.timing.failover_max_auto = 2;
        let lab = Lab::start("flap", options).await.expect("lab");
        let traffic = lab.start_traffic(10).await.expect("traffic");
        // Whichever setup serves goes down for a second, then comes back.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = lab.status().await.expect("status");
            if s.paused {
                println!("paused: {}", s.paused_reason);
                assert!(s.paused_reason.contains("cap 2"), "{}", s.paused_reason);
                break;
            }
            assert!(Instant::now() < deadline, "the link never paused itself");
            let serving = match s.route.as_ref().map(|r| r.setup) {
                Some(x) if x == proto::Setup::Warm as i32 => Setup::Warm,
                _ => Setup::Hot,
            };
            lab.kmes
                .set_fault(serving, "alice", "down", 0)
                .await
                .expect("fault");
            tokio::time::sleep(Duration::from_secs(1)).await;
            lab.kmes
                .set_fault(serving, "alice", "ok", 0)
                .await
                .expect("heal");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let history = lab.history(20).await.expect("history");
        let auto = history
            .records
            .iter()
            .filter(|h| h.kind.starts_with("auto"))
            .count();
        assert_eq!(auto, 2, "exactly the capped number of automatic switches");
        // The policy's pause is in the history, by the policy.
        let pause = history
            .records
            .iter()
            .find(|h| h.kind == "pause")
            .expect("the pause is recorded");
        assert_eq!(pause.requested_by, "lockstep:auto", "{pause:?}");
        assert!(pause.reason.contains("cap 2"), "{pause:?}");
        traffic.stop_and_assert_no_mismatch().await;
    });
}
