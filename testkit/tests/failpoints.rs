//! Crashes at chosen protocol steps, driven by failpoints compiled into the
//! sidecar (`--features failpoints`; `scripts/test` runs this target).

use lockstep::proto;
use lockstep::protocol::{LbTarget, Phase, Setup};
use lockstep_testkit::lab::{Lab, LabOptions};
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

use lockstep_testkit::rt;
use lockstep_testkit::switch_request;

#[test]
fn a_leader_killed_right_after_its_drain_write_is_finished_by_the_next_leader() {
    rt().block_on(async {
        // The first drain write (the bootstrap) passes; the next one stalls
        // its leader for 10 s right after it landed in etcd.
        let options = LabOptions {
            sidecar_env: vec![(
                "FAILPOINTS".into(),
                "leader-after-drain-write=1*off->sleep(10000)".into(),
            )],
            ..LabOptions::default()
        };
        let mut lab = Lab::start("fp-drain", options).await.expect("lab");
        let traffic = lab.start_traffic(10).await.expect("traffic");
        let store = lab.store().await.expect("store");
        let before = store.snapshot().await.expect("snapshot");
        let (leader_id, _) = before.leader.clone().expect("leader");
        let epoch = before.route.as_ref().expect("route").0.epoch;
        let leader = lab
            .sidecar_index(|id| id == leader_id)
            .expect("leader index");
        let other = 1 - leader;

        let mut admin = lab.admin(other).await.expect("admin");
        let reply = admin
            .switchover(proto::SwitchRequest {
                wait: false,
                timeout_ms: 10_000,
                ..switch_request(Setup::Warm, "leader dies mid-switch")
            })
            .await
            .expect("switch accepted")
            .into_inner();
        assert_eq!(reply.epoch, epoch + 1);
        // The drain of epoch+1 is in etcd; its leader is stalled.
        let start = Instant::now();
        loop {
            let snap = store.snapshot().await.expect("snapshot");
            let (r, _) = snap.route.clone().expect("route");
            if r.epoch == epoch + 1 && r.phase == Phase::Drain {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "no drain written: {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        lab.sidecars[leader]
            .guard
            .signal(Signal::SIGKILL)
            .expect("kill the leader");
        let killed = Instant::now();

        // The survivor takes over once the dead leader's lease expires,
        // finds the route in drain and finishes it under its own epoch.
        loop {
            let snap = store.snapshot().await.expect("snapshot");
            let (r, _) = snap.route.clone().expect("route");
            if r.phase == Phase::Serve && r.epoch > epoch + 1 {
                assert_eq!(r.epoch, epoch + 2);
                assert_eq!(r.setup, Setup::Warm);
                break;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(20),
                "the new leader never finished the switch: {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "new leader finished the switch {:?} after the kill",
            killed.elapsed()
        );
        let h = admin
            .history(proto::HistoryRequest {
                limit: 5,
                ..Default::default()
            })
            .await
            .expect("history from the survivor")
            .into_inner();
        let last = &h.records[0];
        assert_eq!((last.epoch, last.kind.as_str()), (epoch + 2, "redecide"));

        // The dead member comes back and joins on warm.
        lab.sidecars[leader].restart().expect("restart");
        lab.wait_serving(Setup::Warm, Duration::from_secs(15))
            .await
            .expect("all members on warm");
        traffic.stop_and_assert_no_mismatch().await;
    });
}

#[test]
fn a_stopped_keep_alive_task_fails_healthz_and_its_member_fences() {
    rt().block_on(async {
        // bob-0's keep-alive task returns after 30 ticks (15 s at the lab's
        // 500 ms interval), as a task that died would.
        let mut options = LabOptions::default();
        options.member_env.insert(
            "bob-0".into(),
            vec![("FAILPOINTS".into(), "keep-alive-stop=30*off->return".into())],
        );
        let started = Instant::now();
        let lab = Lab::start("fp-keep-alive", options).await.expect("lab");
        let t = lab.options.timing.clone();
        let (alice, bob) = (&lab.sidecars[0], &lab.sidecars[1]);
        let live = bob.http_get("/healthz").await.expect("healthz");
        assert_eq!(
            live.status,
            200,
            "bob is live before its keep-alive stops ({:?} after the lab started; it stops 15 s after registering)",
            started.elapsed()
        );

        let start = Instant::now();
        let body = loop {
            let reply = bob.http_get("/healthz").await.expect("healthz");
            if reply.status == 503 {
                break String::from_utf8_lossy(&reply.body).to_string();
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "/healthz still {} after the keep-alive task should have stopped; logs in {}",
                reply.status,
                lab.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(body.contains("keep-alive task stopped"), "{body}");
        println!("bob's /healthz: {}", body.trim());
        // Only bob.
        assert_eq!(alice.http_get("/healthz").await.expect("healthz").status, 200);
        // Its lease is no longer renewed: it fences, its LB stops routing,
        // and it is not ready.
        lab.wait_lb(
            1,
            LbTarget::Blocked,
            t.lease_ttl - t.margin + t.down_detection() + Duration::from_secs(1),
        )
        .await
        .expect("bob's LB routes nowhere once its lease went stale");
        assert_eq!(bob.http_get("/readyz").await.expect("readyz").status, 503);
    });
}
