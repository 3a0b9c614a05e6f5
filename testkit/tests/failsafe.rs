//! Failsafe on the real stack: with `[failsafe] enabled`, an etcd outage no
//! longer stops key delivery while every LB and KME is healthy; a member
//! that dies meanwhile takes the others' grants with it; nothing switches
//! until etcd is back. (Failsafe off is `faults.rs`: every LB blocks.)

use lockstep::lb::LoadBalancer;
use lockstep::protocol::{LbTarget, Setup};
use lockstep_testkit::lab::{Lab, LabOptions};
use lockstep_testkit::traffic::Traffic;
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

use lockstep_testkit::rt;
use lockstep_testkit::webhook::{self, Received};

/// A lab with failsafe on, its notifications sent to a webhook receiver
/// and key pairs flowing, then its etcd frozen (SIGSTOP); and when it
/// froze.
async fn frozen_etcd(name: &str) -> (Lab, Traffic, Instant, Received) {
    let (hook, got) = webhook::receiver().await.expect("webhook");
    let mut options = LabOptions::default();
    options.timing = options.timing.with_failsafe();
    options.sidecar_toml = webhook::notify_toml(hook);
    let lab = Lab::start(name, options).await.expect("lab");
    let traffic = lab.start_traffic(10).await.expect("traffic");
    lab.etcd.nodes[0]
        .guard
        .signal(Signal::SIGSTOP)
        .expect("SIGSTOP etcd");
    (lab, traffic, Instant::now(), got)
}

/// `lockstep_failsafe` as member `i` reports it (1: serving on grants).
async fn failsafe_metric(lab: &Lab, i: usize) -> Option<f64> {
    let scrape = lab.sidecars[i].scrape().await.ok()?;
    scrape.get("lockstep_failsafe", &[])
}

/// Waits until every member reports failsafe.
async fn wait_failsafe(lab: &Lab, bound: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let mut all = true;
        for i in 0..lab.sidecars.len() {
            all &= failsafe_metric(lab, i).await == Some(1.0);
        }
        if all {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < bound,
            "not every member entered failsafe within {bound:?}; logs in {}",
            lab.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn a_frozen_etcd_does_not_stop_key_delivery_with_failsafe() {
    rt().block_on(async {
        let (lab, traffic, frozen, got) = frozen_etcd("failsafe-freeze").await;
        let t = lab.options.timing.clone();
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(frozen.elapsed())).await;
        let after_first_second = traffic.snapshot();
        // Leases stop being fresh TTL − margin after the last ack: by then
        // every member serves on grants.
        let entered = wait_failsafe(&lab, t.lease_ttl + Duration::from_secs(3)).await;
        println!("etcd frozen: every member in failsafe after {entered:?}");

        // Each member says so itself, with etcd still frozen: a
        // notification needs no etcd.
        for s in &lab.sidecars {
            let id = s.spec.member_id.as_str();
            let i = webhook::wait_event_within(
                &got,
                0,
                "failsafe-entered",
                Duration::from_secs(3),
                |e| e["member"] == id,
            )
            .await
            .expect("failsafe-entered from every member while etcd is frozen");
            let e = &webhook::events(&got)[i];
            assert_eq!(e["link"], lab.link.as_str(), "{e}");
            assert_eq!(e["to"], "hot", "{e}");
            assert!(e["epoch"].as_u64().is_some(), "{e}");
        }

        // The leader, cut off like everyone, stepped down once its lease was
        // about to lapse, so that it could grant: leading on until its
        // keep-alive failed (4.5 s in) once made its peer fence.
        assert!(
            lab.sidecars
                .iter()
                .any(|s| s.log_text().contains("stepping down so that it may grant")),
            "no sidecar logged the leader's step-down on a lapsing lease"
        );

        // Nothing switches without etcd: a request is refused, and says why.
        let refused = lab
            .cli(
                0,
                &[
                    "switchover",
                    "--to",
                    "warm",
                    "--reason",
                    "test: during failsafe",
                    "--yes",
                ],
            )
            .expect("cli runs");
        assert!(
            !refused.success() && refused.stderr.contains("failsafe"),
            "a switchover during failsafe must be refused naming failsafe: {refused:?}"
        );

        tokio::time::sleep(Duration::from_secs(15).saturating_sub(frozen.elapsed())).await;
        let during = traffic.snapshot();
        for i in 0..lab.sidecars.len() {
            let observed = lab.lbs[i].adapter().observe().await.expect("LB readable");
            assert_eq!(
                observed.target,
                LbTarget::Serve(Setup::Hot),
                "LB {i} must keep serving hot through the outage"
            );
        }
        lab.etcd.nodes[0]
            .guard
            .signal(Signal::SIGCONT)
            .expect("SIGCONT etcd");
        let matched = during.matched - after_first_second.matched;
        let failed = during.failed - after_first_second.failed;
        println!(
            "15 s of frozen etcd: after the first second {matched} pairs matched, {failed} failed, {} mismatched in all",
            during.mismatched
        );
        assert_eq!(failed, 0, "no pair may fail after the first second");
        assert!(
            matched >= 100,
            "key delivery must go on through the outage: {matched} pairs"
        );

        // etcd is back: members register again and leave failsafe without
        // a blocked instant; the history says how long it lasted.
        let healed = Instant::now();
        loop {
            let mut out = 0;
            for i in 0..lab.sidecars.len() {
                out += (failsafe_metric(&lab, i).await == Some(0.0)) as usize;
            }
            if out == lab.sidecars.len() {
                break;
            }
            assert!(
                healed.elapsed() < Duration::from_secs(20),
                "members did not leave failsafe after etcd came back"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("etcd back: every member left failsafe after {:?}", healed.elapsed());
        for s in &lab.sidecars {
            let id = s.spec.member_id.as_str();
            let i = webhook::wait_event_within(
                &got,
                0,
                "failsafe-left",
                Duration::from_secs(5),
                |e| e["member"] == id,
            )
            .await
            .expect("failsafe-left from every member");
            let e = &webhook::events(&got)[i];
            let ms = e["duration_ms"].as_u64().unwrap_or(0);
            // In failsafe from (about TTL − margin after the freeze) until
            // etcd answered again, 15 s after it.
            assert!(
                (3_000..30_000).contains(&ms),
                "failsafe-left's duration_ms: {e}"
            );
            println!("{id}: {}", e["message"]);
        }
        let entered = webhook::events(&got)
            .iter()
            .filter(|e| e["event"] == "failsafe-entered")
            .count();
        assert_eq!(entered, lab.sidecars.len(), "one failsafe-entered each");
        let history = loop {
            let h = lab.cli(0, &["history", "--json"]).expect("history");
            if h.stdout.matches("failsafe-left").count() >= lab.sidecars.len()
                || healed.elapsed() > Duration::from_secs(20)
            {
                break h;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(
            history.stdout.matches("failsafe-entered").count() >= lab.sidecars.len()
                && history.stdout.matches("failsafe-left").count() >= lab.sidecars.len(),
            "each member records failsafe-entered and failsafe-left: {}",
            history.stdout
        );
        traffic
            .wait_for_more_matched(10, Duration::from_secs(10))
            .await
            .expect("key pairs flow after etcd is back");
        let end = traffic.stop().await;
        assert_eq!(
            end.failed - during.failed,
            0,
            "leaving failsafe must not block: {:?}",
            end.last_failure
        );
        assert_eq!(end.mismatched, 0, "{:?}", end.last_mismatch);
    });
}

#[test]
fn a_member_killed_during_failsafe_stops_the_others_within_a_grant() {
    rt().block_on(async {
        let (mut lab, traffic, _, _) = frozen_etcd("failsafe-kill").await;
        let t = lab.options.timing.clone();
        wait_failsafe(&lab, t.lease_ttl + Duration::from_secs(3)).await;

        // Bob's sidecar dies: alice's grant from it runs out, and her LB
        // blocks within a grant's length and D.
        lab.sidecars[1].guard.kill();
        let killed = Instant::now();
        let bound = t.failsafe_grant + t.down_detection() + Duration::from_millis(500);
        let blocked = lab
            .wait_lb(0, LbTarget::Blocked, bound)
            .await
            .expect("alice's LB blocks once bob's grant has run out");
        println!(
            "bob killed in failsafe: alice's LB routes nowhere after {blocked:?} (bound {bound:?})"
        );
        assert!(killed.elapsed() <= bound + Duration::from_millis(200));

        lab.etcd.nodes[0]
            .guard
            .signal(Signal::SIGCONT)
            .expect("SIGCONT etcd");
        let end = traffic.stop().await;
        assert_eq!(end.mismatched, 0, "{:?}", end.last_mismatch);
        assert!(end.matched > 0, "traffic ran");
    });
}
