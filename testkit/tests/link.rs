//! End-to-end tests of one link on real etcd, real HAProxy, mock KMEs and
//! `lockstep run` sidecars, all started on free loopback ports.

use lockstep::lb::LoadBalancer;
use lockstep::proto::{self, Setup as PSetup};
use lockstep::protocol::{LbTarget, Setup};
use lockstep_testkit::lab::process::{run_to_end, workspace_program};
use lockstep_testkit::lab::{Lab, LabOptions};
use std::process::Command;
use std::time::{Duration, Instant};

use lockstep_testkit::rt;
use lockstep_testkit::switch_request;

fn switch(to: Setup, reason: &str, wait: bool) -> proto::SwitchRequest {
    proto::SwitchRequest {
        wait,
        ..switch_request(to, reason)
    }
}

#[test]
fn fifty_alternating_switchovers_never_mismatch() {
    rt().block_on(async {
        let lab = Lab::start("fifty", LabOptions::default())
            .await
            .expect("lab");
        let traffic = lab
            .start_traffic(20)
            .await
            .expect("traffic flows on hot before the switches");
        let mut admin = lab.admin(0).await.expect("admin");
        let mut to = Setup::Warm;
        let mut completed = 0;
        for i in 0..50 {
            let reply = admin
                .switchover(switch(to, &format!("test switch {i}"), true))
                .await
                .unwrap_or_else(|e| panic!("switch {i} to {to}: {}", e.message()))
                .into_inner();
            assert!(reply.completed, "switch {i} to {to} did not complete");
            completed += 1;
            // Let some pairs flow on each setup.
            tokio::time::sleep(Duration::from_millis(30)).await;
            to = to.other();
        }
        let report = traffic.stop_and_assert_no_mismatch().await;
        println!("switches completed: {completed}/50");
        assert!(
            report.matched > 100,
            "too little traffic to mean anything: {report}"
        );
        let status = admin
            .status(proto::StatusRequest {})
            .await
            .expect("status")
            .into_inner();
        assert!(status.settled);
        assert_eq!(status.route.expect("route").setup, PSetup::Hot as i32);
        let history = admin
            .history(proto::HistoryRequest {
                limit: 100,
                ..Default::default()
            })
            .await
            .expect("history")
            .into_inner();
        let complete = history
            .records
            .iter()
            .filter(|h| h.outcome == "complete" && h.kind == "switchover")
            .count();
        assert_eq!(complete, 50, "every switch is in the history as complete");
    });
}

#[test]
fn a_killed_member_is_fenced_by_its_lb_and_the_switch_waits_for_its_lease() {
    rt().block_on(async {
        let mut lab = Lab::start("kill", LabOptions::default())
            .await
            .expect("lab");
        let traffic = lab.start_traffic(10).await.expect("traffic on hot");
        let mut admin = lab.admin(0).await.expect("admin");
        let status = admin
            .status(proto::StatusRequest {})
            .await
            .expect("status")
            .into_inner();
        // Kill a member that does not lead, so the switch has a leader.
        let victim = lab
            .sidecar_index(|id| id != status.leader)
            .expect("a non-leader member");
        let survivor = 1 - victim;
        let victim_id = lab.sidecars[victim].spec.member_id.clone();
        let ttl = lab.options.timing.lease_ttl;
        let d = lab.options.timing.down_detection();

        lab.sidecars[victim]
            .guard
            .signal(nix::sys::signal::Signal::SIGKILL)
            .expect("kill");
        let killed_at = Instant::now();
        let mut admin = lab.admin(survivor).await.expect("admin on the survivor");
        let switch_task = tokio::spawn(async move {
            let r = admin
                .switchover(switch(Setup::Warm, "member killed", true))
                .await;
            (r, Instant::now(), admin)
        });

        // The victim's LB stops routing by itself (its checks hit a dead sidecar).
        let lb = lab.lbs[victim].adapter();
        let blocked_by_itself = loop {
            if let Ok(o) = lb.observe().await {
                if o.target == LbTarget::Blocked {
                    break killed_at.elapsed();
                }
            }
            assert!(
                killed_at.elapsed() < d + Duration::from_secs(3),
                "the dead member's LB still routes {:?} after the down-detection bound",
                lb.observe().await.map(|o| o.target)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        println!(
            "dead member's LB blocked by its own checks after {blocked_by_itself:?} (D = {d:?})"
        );

        let (reply, done_at, mut admin) = switch_task.await.expect("switch task");
        let reply = reply
            .expect("the switch completes once the lease expires")
            .into_inner();
        let took = done_at - killed_at;
        println!("switch completed {took:?} after the kill (lease TTL {ttl:?})");
        assert!(
            took < ttl + Duration::from_secs(10),
            "switch held up too long: {took:?}"
        );
        let history = admin
            .history(proto::HistoryRequest {
                limit: 5,
                ..Default::default()
            })
            .await
            .expect("history")
            .into_inner();
        let record = history
            .records
            .iter()
            .find(|h| h.epoch == reply.epoch)
            .expect("history record of the switch");
        assert_eq!(
            record.fenced_members,
            vec![victim_id.clone()],
            "the leader waited for the dead member's lease, not for its ack"
        );
        // The survivor serves warm; the victim's LB is still blocked.
        assert_eq!(
            lab.lbs[survivor]
                .adapter()
                .observe()
                .await
                .expect("observe")
                .target,
            LbTarget::Serve(Setup::Warm)
        );
        assert_eq!(
            lb.observe().await.expect("observe").target,
            LbTarget::Blocked
        );

        // The member comes back blocked, reads the route and serves warm.
        lab.sidecars[victim].restart().expect("restart");
        lab.wait_serving(Setup::Warm, Duration::from_secs(15))
            .await
            .expect("the restarted member rejoins on warm");
        traffic.stop_and_assert_no_mismatch().await;
    });
}

#[test]
fn stale_leaders_and_stale_pushes_are_rejected() {
    rt().block_on(async {
        let lab = Lab::start("stale", LabOptions::default())
            .await
            .expect("lab");
        let store = lab.store().await.expect("store");
        let snap = store.snapshot().await.expect("snapshot");
        let (route, route_rev) = snap.route.clone().expect("route");
        let (_, token) = snap.leader.clone().expect("leader");

        // A leader that lost its key (token older than the current one)
        // cannot write the route.
        let mut stale = route.clone();
        stale.epoch += 1;
        stale.phase = lockstep::protocol::Phase::Drain;
        stale.setup = Setup::Warm;
        let res = store
            .write_route(token - 1, &stale, route_rev, None, None, true)
            .await;
        assert_eq!(
            res.err(),
            Some(lockstep::protocol::leader::WriteFailure::LostLeadership)
        );
        let after = store.snapshot().await.expect("snapshot");
        assert_eq!(
            after.route.map(|(r, _)| r),
            Some(route.clone()),
            "route unchanged"
        );

        // Stale pushes to a member: an old token, an old epoch.
        let mut peer = lab.peer(0).await.expect("peer client");
        let old_token = peer
            .drain(proto::DrainRequest {
                link: lab.link.clone(),
                epoch: route.epoch + 1,
                token: token - 1,
                setup: PSetup::Warm as i32,
            })
            .await
            .expect_err("old token refused");
        assert_eq!(
            old_token.code(),
            tonic::Code::Aborted,
            "{}",
            old_token.message()
        );
        assert!(
            old_token.message().contains("stale token"),
            "{}",
            old_token.message()
        );
        let old_epoch = peer
            .serve(proto::ServeRequest {
                link: lab.link.clone(),
                epoch: route.epoch - 1,
                token,
                setup: PSetup::Warm as i32,
            })
            .await
            .expect_err("old epoch refused");
        assert_eq!(
            old_epoch.code(),
            tonic::Code::Aborted,
            "{}",
            old_epoch.message()
        );
        // Nothing moved: every LB still serves hot.
        for lb in &lab.lbs {
            assert_eq!(
                lb.adapter().observe().await.expect("observe").target,
                LbTarget::Serve(route.setup)
            );
        }
    });
}

#[test]
fn refused_requests_change_nothing() {
    rt().block_on(async {
        let lab = Lab::start("refuse", LabOptions::default())
            .await
            .expect("lab");
        let mut admin = lab.admin(0).await.expect("admin");
        let epoch = |s: &proto::StatusReply| s.route.as_ref().map(|r| r.epoch);
        let before = admin
            .status(proto::StatusRequest {})
            .await
            .expect("status")
            .into_inner();

        // Unknown setup.
        let mut bad = switch(Setup::Warm, "bad", false);
        bad.to = 0;
        let e = admin.switchover(bad).await.expect_err("unspecified setup");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());

        // No reason.
        let e = admin
            .switchover(switch(Setup::Warm, " ", false))
            .await
            .expect_err("no reason");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());

        // Paused.
        admin
            .pause(proto::PauseRequest {
                reason: "maintenance".into(),
                requested_by: "test".into(),
            })
            .await
            .expect("pause");
        let e = admin
            .switchover(switch(Setup::Warm, "while paused", false))
            .await
            .expect_err("paused");
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().contains("paused"), "{}", e.message());
        admin
            .resume(proto::PauseRequest {
                reason: "done".into(),
                requested_by: "test".into(),
            })
            .await
            .expect("resume");

        // Unhealthy target: warm's Bob KME goes away.
        lab.set_kme_fault_and_wait(Setup::Warm, "bob", "down", false)
            .await
            .expect("warm seen down");
        let e = admin
            .switchover(switch(Setup::Warm, "to unhealthy", false))
            .await
            .expect_err("unhealthy");
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().contains("not healthy"), "{}", e.message());
        // A non-forced failover is refused too.
        let e = admin
            .failover(switch(Setup::Warm, "failover no force", false))
            .await
            .expect_err("unforced");
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);

        let after = admin
            .status(proto::StatusRequest {})
            .await
            .expect("status")
            .into_inner();
        assert_eq!(
            epoch(&after),
            epoch(&before),
            "no refused request moved the link"
        );
        assert!(after.pending.is_none(), "no refused request left behind");

        // A forced failover goes through.
        let mut forced = switch(Setup::Warm, "forced", true);
        forced.force = true;
        let r = admin
            .failover(forced)
            .await
            .expect("forced failover")
            .into_inner();
        assert!(r.completed);
        lab.kmes
            .set_fault(Setup::Warm, "bob", "ok", 0)
            .await
            .expect("heal");
    });
}

#[test]
fn a_sidecar_refuses_to_start_without_etcd() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = lockstep_testkit::lab::process::free_port().expect("port");
    let mut spec = lockstep_testkit::lab::sidecar::SidecarSpec::new(
        "nolink",
        "alice-0",
        "alice",
        vec![format!("http://127.0.0.1:{port}")],
    )
    .expect("spec");
    spec.haproxy_socket = dir.path().join("none.sock");
    let config = dir.path().join("c.toml");
    std::fs::write(&config, spec.to_toml()).expect("write");
    let mut lockstep = Command::new(workspace_program("lockstep").expect("lockstep built"));
    let out = run_to_end(lockstep.args(["run", "--config"]).arg(&config)).expect("run lockstep");
    assert!(!out.success(), "must fail: {}", out.stderr);
    assert!(
        out.text().contains("etcd"),
        "the error names etcd: {}",
        out.text()
    );
}

#[test]
fn the_cli_drives_a_live_link() {
    rt().block_on(async {
        let lab = Lab::start("cli", LabOptions::default()).await.expect("lab");
        let endpoint = lab.sidecars[1].endpoint();
        let cli = |args: &[&str]| {
            let mut cmd = Command::new(workspace_program("lockstep").expect("lockstep built"));
            let out = run_to_end(
                cmd.envs(lab.cli_env(1))
                    .arg("--endpoint")
                    .arg(&endpoint)
                    .args(args),
            )
            .expect("run lockstep");
            (out.code.unwrap_or(-1), out.text())
        };
        let (code, out) = cli(&["status"]);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("serve hot, settled"), "{out}");
        assert!(out.contains("alice-0") && out.contains("bob-0"), "{out}");

        let (code, out) = cli(&[
            "switchover",
            "--to",
            "warm",
            "--reason",
            "cli",
            "--by",
            "tester",
            "--wait",
        ]);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("every LB serves warm"), "{out}");
        for lb in &lab.lbs {
            assert_eq!(
                lb.adapter().observe().await.expect("observe").target,
                LbTarget::Serve(Setup::Warm)
            );
        }

        let (code, out) = cli(&["pause", "--reason", "maintenance"]);
        assert_eq!(code, 0, "{out}");
        let (code, out) = cli(&["switchover", "--to", "hot", "--reason", "while paused"]);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("paused"), "{out}");
        let (code, out) = cli(&["--json", "status"]);
        assert_eq!(code, 0, "{out}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("status --json is JSON");
        assert_eq!(v["paused"], true);
        assert_eq!(v["route"]["setup"], "warm");
        let (code, _) = cli(&["resume", "--reason", "done"]);
        assert_eq!(code, 0);

        let (code, out) = cli(&["history", "--limit", "5"]);
        assert_eq!(code, 0, "{out}");
        assert!(
            out.contains("hot -> warm") && out.contains("tester") && out.contains("complete"),
            "{out}"
        );
    });
}

#[test]
fn haproxy_restarts_and_drift_are_repaired() {
    rt().block_on(async {
        let mut lab = Lab::start("drift", LabOptions::default())
            .await
            .expect("lab");
        let lb = lab.lbs[0].adapter();
        // A restarted HAProxy comes up blocked (servers disabled) ...
        lab.lbs[0].restart().expect("restart haproxy");
        let seen = lb.observe().await.expect("observe").target;
        // ... and the sidecar re-applies hot.
        let serves_hot = || async {
            lab.wait_lb(0, LbTarget::Serve(Setup::Hot), Duration::from_secs(10))
                .await
                .expect("LB 0 serves hot")
        };
        let took = serves_hot().await;
        println!("restarted HAProxy (first seen {seen}) serves hot again after {took:?}");

        // Drift: someone puts hot in maintenance by hand; the sidecar
        // notices on its next read-back and enables it again.
        lb.command("set server kme/hot state maint")
            .await
            .expect("manual change");
        assert_eq!(
            lb.observe().await.expect("observe").target,
            LbTarget::Blocked
        );
        let took = serves_hot().await;
        println!("manual block repaired after {took:?}");
        // Worse drift: warm enabled by hand as well. Never left standing.
        lb.command("set server kme/warm health up; set server kme/warm state ready")
            .await
            .expect("manual change");
        tokio::time::sleep(Duration::from_millis(700)).await;
        let took = serves_hot().await;
        println!("manual enable of warm undone (checked {took:?} after 700ms)");
        let o = lb.observe().await.expect("observe");
        assert_eq!(o.target, LbTarget::Serve(Setup::Hot));
    });
}

#[test]
fn the_shipped_and_rendered_haproxy_configs_are_valid() {
    let haproxy = lockstep_testkit::lab::process::find_program("haproxy").expect("haproxy");
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/haproxy/haproxy.cfg");
    let out = std::process::Command::new(&haproxy)
        .args(["-c", "-f", shipped])
        .output()
        .expect("haproxy -c");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let t = lockstep::lb::haproxy::HaproxyTemplate {
        frontend_bind: "127.0.0.1:1".parse().expect("addr"),
        backend: "kme".into(),
        hot: "127.0.0.1:2".parse().expect("addr"),
        warm: "127.0.0.1:3".parse().expect("addr"),
        server_hot: "hot".into(),
        server_warm: "warm".into(),
        check_addr: "127.0.0.1:4".parse().expect("addr"),
        check_inter: Duration::from_millis(500),
        check_fall: 2,
        check_rise: 1,
        check_timeout: Duration::from_millis(300),
        stats_socket: dir.path().join("s.sock"),
        socket_mode: 0o600,
        socket_gid: None,
    };
    assert_eq!(t.down_detection_bound(), Duration::from_millis(2600));
    let cfg = dir.path().join("h.cfg");
    std::fs::write(&cfg, t.render()).expect("write");
    let out = std::process::Command::new(&haproxy)
        .arg("-c")
        .arg("-f")
        .arg(&cfg)
        .output()
        .expect("haproxy -c");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
