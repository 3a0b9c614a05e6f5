//! Scheduled switchovers (issue 14): `lockstep switchover --at` stores the
//! request with its time; the leader in office then carries it out (here
//! one elected after the request was stored), or refuses it then (paused,
//! or the target unhealthy then) and says why in the history; `lockstep cancel` withdraws it before its time.

use lockstep::proto;
use lockstep::protocol::{LbTarget, Setup};
use lockstep_testkit::lab::{Lab, LabOptions};
use lockstep_testkit::rt;
use std::time::{Duration, Instant, SystemTime};

/// `from_now` ahead, as RFC 3339 (what `--at` takes).
fn at(from_now: Duration) -> (String, SystemTime) {
    let t = SystemTime::now() + from_now;
    (humantime::format_rfc3339_millis(t).to_string(), t)
}

/// `lockstep switchover --to <to> --reason <reason> --at <when> -y` at
/// member `via`: the exit code, and the request id it printed (empty when
/// it failed).
fn schedule(lab: &Lab, via: usize, to: &str, reason: &str, when: &str) -> (Option<i32>, String) {
    let args = [
        "switchover",
        "--to",
        to,
        "--reason",
        reason,
        "--at",
        when,
        "-y",
    ];
    let out = lab.cli(via, &args).expect("run the CLI");
    if out.code != Some(0) {
        return (out.code, String::new());
    }
    assert!(out.stdout.starts_with("scheduled:"), "{}", out.stdout);
    (out.code, request_id(&out.stdout))
}

/// The request id in the CLI's "scheduled: ... (request ID); ..." line.
fn request_id(stdout: &str) -> String {
    stdout
        .split("(request ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("no request id in {stdout:?}"))
        .to_string()
}

async fn status(lab: &Lab, i: usize) -> proto::StatusReply {
    lab.admin(i)
        .await
        .expect("admin")
        .status(proto::StatusRequest {})
        .await
        .expect("status")
        .into_inner()
}

async fn history(lab: &Lab, i: usize) -> Vec<proto::HistoryRecord> {
    lab.admin(i)
        .await
        .expect("admin")
        .history(proto::HistoryRequest {
            limit: 50,
            ..Default::default()
        })
        .await
        .expect("history")
        .into_inner()
        .records
}

#[test]
fn a_scheduled_switchover_is_carried_out_by_the_next_leader_refused_when_paused_or_unhealthy_and_cancelled(
) {
    rt().block_on(async {
        let options = LabOptions {
            members_per_role: 2,
            ..LabOptions::default()
        };
        let mut lab = Lab::start("schedule", options).await.expect("lab");
        let traffic = lab.start_traffic(20).await.expect("traffic on hot");
        let ttl = lab.options.timing.lease_ttl;
        let old = lab
            .leader_index(None, Duration::from_secs(10))
            .await
            .expect("a leader");
        let via = (old + 1) % lab.sidecars.len();

        // Scheduled beyond the next leader's election (one TTL).
        let (when, due) = at(ttl * 2);
        let (code, id) = schedule(&lab, via, "warm", "night maintenance of hot", &when);
        assert_eq!(code, Some(0));
        let s = status(&lab, via).await;
        let pending = s.pending.expect("the scheduled request is pending");
        assert_eq!(pending.id, id);
        assert!(!pending.not_before.is_empty(), "{pending:?}");
        let shown = lab.cli(via, &["status"]).expect("status");
        assert!(
            shown.stdout.contains("scheduled switchover to warm at"),
            "{}",
            shown.stdout
        );

        // The leader that took it in is gone; the next one carries it out.
        lab.sidecars[old].guard.kill();
        let next = lab
            .leader_index(Some(old), ttl * 4)
            .await
            .expect("the next leader");
        assert_ne!(next, old);
        // Nothing moves before its time.
        let early = due
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .saturating_sub(Duration::from_millis(500));
        tokio::time::sleep(early).await;
        assert_eq!(
            status(&lab, via).await.route.map(|r| r.setup),
            Some(proto::Setup::Hot as i32),
            "switched before its time"
        );
        let until = Instant::now() + Duration::from_secs(20);
        let moved = loop {
            let s = status(&lab, via).await;
            if s.route
                .as_ref()
                .is_some_and(|r| r.setup == proto::Setup::Warm as i32)
            {
                break SystemTime::now();
            }
            assert!(Instant::now() < until, "not carried out: {s:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(moved >= due, "moved before its time");
        tokio::task::block_in_place(|| lab.sidecars[old].restart()).expect("restart");
        lab.wait_all_lbs(LbTarget::Serve(Setup::Warm), Duration::from_secs(20))
            .await
            .expect("every LB on warm");
        let h = history(&lab, via).await;
        let done = h
            .iter()
            .find(|r| r.kind == "switchover" && r.reason.starts_with("night maintenance"))
            .unwrap_or_else(|| panic!("no switchover record: {h:?}"));
        assert_eq!(
            done.leader, lab.sidecars[next].spec.member_id,
            "carried out by the leader elected after it was stored"
        );

        // Cancelled before its time: nothing happens.
        let (when, _) = at(Duration::from_secs(60));
        let (code, id) = schedule(&lab, via, "hot", "later", &when);
        assert_eq!(code, Some(0));
        let out = lab.cli(via, &["cancel", &id]).expect("cancel");
        assert_eq!(out.code, Some(0), "{} {}", out.stdout, out.stderr);
        assert!(out.stdout.starts_with("cancelled:"), "{}", out.stdout);
        assert!(status(&lab, via).await.pending.is_none());
        let again = lab.cli(via, &["cancel"]).expect("cancel again");
        assert_eq!(again.code, Some(1), "{}", again.stderr);
        assert!(
            again.stderr.contains("NOTHING_TO_CANCEL"),
            "{}",
            again.stderr
        );

        // Refused at its time while paused, and the history says why.
        let out = lab
            .cli(via, &["pause", "--reason", "freeze"])
            .expect("pause");
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        let (when, due) = at(Duration::from_secs(2));
        let (code, id) = schedule(&lab, via, "hot", "back", &when);
        assert_eq!(code, Some(0));
        let until = Instant::now() + Duration::from_secs(20);
        let refused = loop {
            if let Some(r) = history(&lab, via)
                .await
                .into_iter()
                .find(|r| r.kind == "request-refused" && r.request_id == id)
            {
                break r;
            }
            assert!(Instant::now() < until, "no refusal recorded");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(SystemTime::now() >= due);
        assert!(refused.reason.contains("paused"), "{refused:?}");
        let s = status(&lab, via).await;
        assert!(s.pending.is_none(), "{s:?}");
        assert_eq!(s.route.map(|r| r.setup), Some(proto::Setup::Warm as i32));
        lab.cli(via, &["resume", "--reason", "thaw"])
            .expect("resume");

        // Refused at its time when the target is unhealthy then (healthy
        // when stored): TARGET_UNHEALTHY's words in the history.
        let (when, due) = at(Duration::from_secs(5));
        let (code, id) = schedule(&lab, via, "hot", "back to hot", &when);
        assert_eq!(code, Some(0), "stored while hot is healthy");
        lab.set_kme_fault_and_wait(Setup::Hot, "bob", "down", false)
            .await
            .expect("hot down at bob, seen by the link");
        assert!(
            SystemTime::now() < due,
            "hot was seen down only after the request's time; the test proves nothing"
        );
        let until = Instant::now() + Duration::from_secs(20);
        let refused = loop {
            if let Some(r) = history(&lab, via)
                .await
                .into_iter()
                .find(|r| r.kind == "request-refused" && r.request_id == id)
            {
                break r;
            }
            assert!(Instant::now() < until, "no refusal recorded");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(SystemTime::now() >= due);
        assert!(
            refused.reason.contains("hot is not healthy") && refused.reason.contains("bob: down"),
            "{refused:?}"
        );
        let s = status(&lab, via).await;
        assert!(s.pending.is_none(), "{s:?}");
        assert_eq!(s.route.map(|r| r.setup), Some(proto::Setup::Warm as i32));
        lab.set_kme_fault_and_wait(Setup::Hot, "bob", "ok", true)
            .await
            .expect("hot healthy again");

        // A bad time changes nothing.
        let (code, _) = schedule(&lab, via, "hot", "x", "yesterday");
        assert_eq!(code, Some(2), "a bad time is a usage error");
        assert!(status(&lab, via).await.pending.is_none());

        let report = traffic.stop_and_assert_no_mismatch().await;
        assert!(report.matched > 100, "too little traffic: {report}");
    });
}
