//! A real `lockstep run` beside a real HAProxy whose health-check settings
//! differ from what the sidecar's config assumes: it refuses to start when
//! HAProxy shows the difference, stops (LB blocked) when HAProxy shows it
//! only once a server is enabled, and catches it after HAProxy restarts
//! with a changed config. (The comparison itself: `src/lb/haproxy/checks.rs`;
//! the adapter against HAProxy: `haproxy.rs`.)

use lockstep::lb::LoadBalancer;
use lockstep::protocol::{LbTarget, Setup};
use lockstep::store::Store;
use lockstep_testkit::lab::etcd::EtcdCluster;
use lockstep_testkit::lab::haproxy::{HaproxyInputs, HaproxyProcess};
use lockstep_testkit::lab::process::{log_dir, ChildGuard};
use lockstep_testkit::lab::sidecar::{SidecarProcess, SidecarSpec, Timing};
use lockstep_testkit::lab::{Lab, LabOptions};
use lockstep_testkit::rt;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

/// Waits until the process exits (within `bound`).
async fn exited(guard: &mut ChildGuard, bound: Duration, log: &Path) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = guard.exit_status() {
            return status;
        }
        assert!(
            start.elapsed() < bound,
            "{} still runs after {bound:?}; log {}",
            guard.name,
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn log_of(dir: &Path, member: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{member}.log"))).unwrap_or_default()
}

fn assert_names_the_fall(log: &str) {
    for want in [
        "HAProxy reports fall 5",
        "the config assumes 2 (lb.check_fall)",
    ] {
        assert!(log.contains(want), "missing {want:?} in the log:\n{log}");
    }
}

async fn members(store: &Store) -> Vec<String> {
    let snap = store.snapshot().await.expect("snapshot");
    snap.members.into_iter().map(|m| m.id).collect()
}

#[test]
fn a_sidecar_stops_beside_a_larger_fall_and_then_refuses_to_start() {
    rt().block_on(async {
        let dir = log_dir("lab", "lb-settings-fall").expect("dir");
        let etcd = EtcdCluster::start(1, &dir).expect("etcd");
        etcd.wait_healthy(Duration::from_secs(20))
            .await
            .expect("etcd up");
        let mut spec =
            SidecarSpec::new("lb-settings", "alice-0", "alice", etcd.endpoints()).expect("spec");
        assert_eq!(spec.timing.check_fall, 2, "the sidecar assumes fall 2");
        // HAProxy runs with fall 5. No KME behind it: nothing is sent
        // through, and the sidecar probes nothing.
        let nowhere: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let haproxy_timing = Timing {
            check_fall: 5,
            ..Timing::default()
        };
        let lb = HaproxyProcess::spawn(
            HaproxyInputs::new("alice-0", nowhere, nowhere, spec.http).with_timing(&haproxy_timing),
            &dir,
        )
        .expect("haproxy");
        spec.haproxy_socket = lb.stats_socket.clone();
        let store = Store::connect(
            &etcd.endpoints(),
            "/lockstep",
            "lb-settings",
            Duration::from_secs(2),
            Duration::from_secs(2),
        )
        .await
        .expect("store");

        // 1. Both servers in maintenance: HAProxy shows no fall, so the
        // sidecar starts, leads, and enables hot for the new link; the
        // enable shows fall 5: hot goes back into maintenance and the
        // sidecar stops, leaving the link.
        let started = Instant::now();
        let mut sidecar = match SidecarProcess::spawn(spec.clone(), &dir) {
            Ok(s) => s,
            Err(e) => panic!(
                "the sidecar did not start: {e:#}\n{}",
                log_of(&dir, "alice-0")
            ),
        };
        let status = exited(&mut sidecar.guard, Duration::from_secs(15), &sidecar.log).await;
        println!("stopped {:?} after start, {status}", started.elapsed());
        assert_eq!(status.code(), Some(1), "{status}");
        let log = sidecar.log_text();
        assert!(log.contains("refusing to run"), "{log}");
        assert_names_the_fall(&log);
        let adapter = lb.adapter();
        assert_eq!(
            adapter.observe().await.expect("observe").target,
            LbTarget::Blocked
        );
        assert!(
            members(&store).await.is_empty(),
            "it left the link (lease revoked)"
        );

        // 2. With a server out of maintenance HAProxy shows its fall: a
        // sidecar started now refuses before it joins the link.
        let answer = adapter
            .command("set server kme/hot state ready")
            .await
            .expect("enable hot by hand");
        assert_eq!(answer.trim(), "");
        // Its checks fail (nothing answers them): down within D.
        let d = haproxy_timing.down_detection();
        let t = Instant::now();
        while adapter.observe().await.expect("observe").target != LbTarget::Blocked {
            assert!(
                t.elapsed() < d + Duration::from_secs(1),
                "hot never went down"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let log_len = log_of(&dir, "alice-0").len();
        let refused = SidecarProcess::spawn(spec, &dir);
        let log = log_of(&dir, "alice-0")[log_len..].to_string();
        match refused {
            Err(e) => assert!(e.to_string().contains("exited during start-up"), "{e:#}"),
            Ok(_) => panic!("the sidecar started beside fall 5:\n{log}"),
        }
        assert!(log.contains("refusing to start"), "{log}");
        assert_names_the_fall(&log);
        assert!(members(&store).await.is_empty(), "it never joined");
        println!("{}", log.lines().last().unwrap_or_default());
    });
}

#[test]
fn a_haproxy_restarted_with_a_larger_fall_is_caught_by_its_sidecar() {
    rt().block_on(async {
        let mut lab = Lab::start("lb-settings-restart", LabOptions::default())
            .await
            .expect("lab");
        // Someone edits alice's HAProxy config by hand and restarts it.
        let cfg = std::fs::read_to_string(&lab.lbs[0].config_path).expect("read cfg");
        assert!(cfg.contains(" fall 2 "), "{cfg}");
        std::fs::write(&lab.lbs[0].config_path, cfg.replace(" fall 2 ", " fall 5 "))
            .expect("write cfg");
        let restarted = Instant::now();
        lab.lbs[0].restart().expect("restart haproxy");

        // The sidecar sees the restart, re-applies hot, sees fall 5 with
        // it, blocks again and stops.
        let log = lab.sidecars[0].log.clone();
        let status = exited(&mut lab.sidecars[0].guard, Duration::from_secs(10), &log).await;
        println!(
            "alice's sidecar stopped {:?} after its HAProxy restarted: {status}",
            restarted.elapsed()
        );
        assert_eq!(status.code(), Some(1));
        let text = lab.sidecars[0].log_text();
        assert!(text.contains("refusing to run"), "{text}");
        assert_names_the_fall(&text);
        lab.wait_lb(0, LbTarget::Blocked, Duration::from_secs(1))
            .await
            .expect("alice's LB routes nowhere");
        // Bob is untouched: still on hot, the only member left.
        lab.wait_lb(1, LbTarget::Serve(Setup::Hot), Duration::from_secs(1))
            .await
            .expect("bob still serves hot");
        let store = lab.store().await.expect("store");
        let t = Instant::now();
        while members(&store).await != vec!["bob-0".to_string()] {
            assert!(t.elapsed() < Duration::from_secs(10), "alice never left");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}
