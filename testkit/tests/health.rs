//! What a sidecar tells its orchestrator and its monitoring, on a real lab
//! link: `/metrics` (OpenMetrics, `link` and `member` on every series, the
//! series on-call alerts on), and readiness (`/readyz`, gRPC health) of a
//! member cut from etcd until it fences, and again after the cut heals.
//! (`/healthz` of a member whose keep-alive task stopped: `failpoints.rs`.)

use lockstep::proto;
use lockstep::protocol::{LbTarget, Setup};
use lockstep_testkit::lab::sidecar::SidecarProcess;
use lockstep_testkit::lab::{Lab, LabOptions};
use lockstep_testkit::metrics::Scrape;
use lockstep_testkit::rt;
use lockstep_testkit::switch_request;
use std::time::{Duration, Instant};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Scrapes until `pred` holds (within `timeout`); returns that scrape.
async fn scrape_until(
    s: &SidecarProcess,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&Scrape) -> bool,
) -> Scrape {
    let start = Instant::now();
    loop {
        let scrape = s.scrape().await.expect("scrape");
        if pred(&scrape) {
            return scrape;
        }
        assert!(
            start.elapsed() < timeout,
            "{} never showed {what} within {timeout:?}:\n{}",
            s.spec.member_id,
            scrape.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn leader_index(lab: &Lab) -> usize {
    lab.leader_index(None, Duration::from_secs(10))
        .await
        .expect("a leader")
}

#[test]
fn metrics_carry_link_and_member_and_what_on_call_alerts_on() {
    rt().block_on(async {
        let lab = Lab::start("metrics", LabOptions::default())
            .await
            .expect("lab");
        let t = lab.options.timing.clone();

        for s in &lab.sidecars {
            let id = s.spec.member_id.as_str();
            let reply = s.http_get("/metrics").await.expect("GET /metrics");
            let content_type = reply
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            assert_eq!(
                content_type,
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            );
            assert!(
                reply.body.ends_with(b"# EOF\n"),
                "OpenMetrics ends with # EOF"
            );
            // The mock KMEs report 100000 stored keys; the probe runs every
            // 200 ms.
            let m = scrape_until(s, Duration::from_secs(5), "stored keys", |m| {
                m.get("lockstep_kme_stored_keys", &[("setup", "warm")])
                    .is_some()
                    && m.get("lockstep_kme_stored_keys", &[("setup", "hot")])
                        .is_some()
            })
            .await;
            for sample in &m.samples {
                assert_eq!(
                    (sample.labels.get("link"), sample.labels.get("member")),
                    (Some(&lab.link), Some(&id.to_string())),
                    "series without this member's link and member labels: {sample:?}"
                );
            }
            for setup in ["hot", "warm"] {
                assert_eq!(
                    m.get("lockstep_kme_stored_keys", &[("setup", setup)]),
                    Some(100_000.0)
                );
                assert_eq!(
                    m.get("lockstep_probe_errors_total", &[("setup", setup)]),
                    Some(0.0)
                );
            }
            let age = m.get("lockstep_lease_age_seconds", &[]).expect("lease age");
            assert!(
                age < (t.lease_ttl - t.margin).as_secs_f64(),
                "{id}: lease age {age} s: fresh leases are younger than TTL - margin"
            );
            assert_eq!(m.get("lockstep_paused", &[]), Some(0.0));
            assert!(m.get("lockstep_etcd_request_errors_total", &[]).is_some());
            assert_eq!(m.get("lockstep_switch_failures_total", &[]), Some(0.0));
            let build = m
                .samples
                .iter()
                .find(|s| s.name == "lockstep_build_info")
                .expect("build info");
            assert_eq!(build.value, 1.0);
            assert_eq!(
                build.labels.get("version").map(String::as_str),
                Some(env!("CARGO_PKG_VERSION"))
            );
            assert!(build.labels.contains_key("features") && build.labels.contains_key("profile"));
        }

        // The leader times the steps of each switch it leads (the
        // bootstrap to hot was one).
        let leader = leader_index(&lab).await;
        let l = &lab.sidecars[leader];
        let step = |m: &Scrape, step: &str| {
            m.get("lockstep_switch_step_seconds_count", &[("step", step)])
                .unwrap_or_else(|| panic!("no {step} step count:\n{}", m.text))
        };
        let before = l.scrape().await.expect("scrape");
        let switches = before
            .get("lockstep_switches_total", &[])
            .expect("switches");
        let mut admin = lab.admin(0).await.expect("admin");
        admin
            .switchover(proto::SwitchRequest {
                requested_by: "tests/health.rs".into(),
                timeout_ms: 10_000,
                ..switch_request(Setup::Warm, "metrics test")
            })
            .await
            .expect("switchover to warm");
        let after = scrape_until(l, Duration::from_secs(5), "the switch", |m| {
            m.get("lockstep_switches_total", &[]) == Some(switches + 1.0)
        })
        .await;
        for s in ["drain", "serve"] {
            assert_eq!(step(&after, s), step(&before, s) + 1.0, "{s} step timed");
        }
        let drain = after
            .get("lockstep_switch_step_seconds_sum", &[("step", "drain")])
            .expect("drain sum")
            - before
                .get("lockstep_switch_step_seconds_sum", &[("step", "drain")])
                .expect("drain sum");
        assert!(
            drain > 0.0 && drain < 5.0,
            "the drain step of one lab switch took {drain} s"
        );
        assert_eq!(after.get("lockstep_switch_failures_total", &[]), Some(0.0));

        // Paused: the leader reports it, the others 0.
        let pause = proto::PauseRequest {
            reason: "metrics test".into(),
            requested_by: "tests/health.rs".into(),
        };
        admin.pause(pause.clone()).await.expect("pause");
        scrape_until(l, Duration::from_secs(5), "paused 1", |m| {
            m.get("lockstep_paused", &[]) == Some(1.0)
        })
        .await;
        let other = &lab.sidecars[1 - leader];
        assert_eq!(
            other
                .scrape()
                .await
                .expect("scrape")
                .get("lockstep_paused", &[]),
            Some(0.0)
        );
        admin.resume(pause).await.expect("resume");
        scrape_until(l, Duration::from_secs(5), "paused 0", |m| {
            m.get("lockstep_paused", &[]) == Some(0.0)
        })
        .await;

        // A KME that stops answering: its member counts probe errors and no
        // longer reports a stored key count; the other end is unaffected.
        // (Hot is the standby now: nothing fails over.)
        let alice = &lab.sidecars[0];
        let bob = &lab.sidecars[1];
        lab.kmes
            .set_fault(Setup::Hot, "alice", "down", 0)
            .await
            .expect("fault");
        let m = scrape_until(alice, Duration::from_secs(5), "probe errors", |m| {
            m.get("lockstep_probe_errors_total", &[("setup", "hot")])
                .is_some_and(|n| n >= 2.0)
        })
        .await;
        assert_eq!(m.get("lockstep_kme_stored_keys", &[("setup", "hot")]), None);
        assert_eq!(
            m.get("lockstep_setup_healthy", &[("setup", "hot")]),
            Some(0.0)
        );
        let b = bob.scrape().await.expect("scrape");
        assert_eq!(
            b.get("lockstep_probe_errors_total", &[("setup", "hot")]),
            Some(0.0)
        );
        assert_eq!(
            b.get("lockstep_kme_stored_keys", &[("setup", "hot")]),
            Some(100_000.0)
        );
        lab.wait_all_lbs(LbTarget::Serve(Setup::Warm), Duration::from_secs(1))
            .await
            .expect("still on warm");
    });
}

/// gRPC health of the whole server (`""`) at member `i`, over the lab's
/// (mutual TLS) client.
async fn grpc_health(lab: &Lab, i: usize) -> Result<ServingStatus, String> {
    let endpoint = lab.sidecars[i].endpoint();
    let channel =
        lockstep::tls::client::connect(&endpoint, lab.tls(&lab.tester), Duration::from_secs(1))
            .await
            .map_err(|e| e.to_string())?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|s| s.message().to_string())?;
    Ok(reply.into_inner().status())
}

/// `/readyz` and `/healthz` status codes, and gRPC health.
async fn health(lab: &Lab, i: usize) -> (u16, u16, Result<ServingStatus, String>) {
    let s = &lab.sidecars[i];
    let ready = s.http_get("/readyz").await.expect("readyz").status;
    let live = s.http_get("/healthz").await.expect("healthz").status;
    (ready, live, grpc_health(lab, i).await)
}

/// Polls until member `i` reports `want` (gRPC health) with `/readyz`
/// agreeing; returns the time it took.
async fn until_serving(lab: &Lab, i: usize, want: ServingStatus, bound: Duration) -> Duration {
    let start = Instant::now();
    let ready = want == ServingStatus::Serving;
    loop {
        let (readyz, healthz, grpc) = health(lab, i).await;
        if grpc == Ok(want) && (readyz == 200) == ready {
            assert_eq!(healthz, 200, "member {i} is alive throughout");
            return start.elapsed();
        }
        assert!(
            start.elapsed() < bound,
            "member {i} not {want:?} within {bound:?}: readyz {readyz}, gRPC {grpc:?}; logs in {}",
            lab.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn a_member_cut_from_etcd_is_not_ready_while_fenced_and_ready_again_after() {
    rt().block_on(async {
        let options = LabOptions {
            netns: true,
            ..LabOptions::default()
        };
        let lab = Lab::start("health-cut", options).await.expect("lab");
        let t = lab.options.timing.clone();
        let leader = leader_index(&lab).await;
        // Cut the other member: the leader stays, no election muddies it.
        let victim = 1 - leader;
        for i in 0..2 {
            until_serving(&lab, i, ServingStatus::Serving, Duration::from_secs(2)).await;
        }
        let errors_before = lab.sidecars[victim]
            .scrape()
            .await
            .expect("scrape")
            .get("lockstep_etcd_request_errors_total", &[])
            .expect("etcd errors");

        let cut = lab
            .net
            .as_ref()
            .expect("netns")
            .cut_from_etcd(victim)
            .expect("cut");
        // It fences once TTL − margin has passed since its last acked
        // keep-alive (sent at most one interval before the cut).
        let bound = t.lease_ttl - t.margin + Duration::from_secs(1);
        let fenced = until_serving(&lab, victim, ServingStatus::NotServing, bound).await;
        let body = lab.sidecars[victim]
            .http_get("/readyz")
            .await
            .expect("readyz");
        let body = String::from_utf8_lossy(&body.body).to_string();
        assert!(body.starts_with("not ready: "), "{body}");
        println!(
            "cut from etcd: NOT_SERVING and /readyz 503 after {fenced:?} (TTL - margin = {:?}): {}",
            t.lease_ttl - t.margin,
            body.trim()
        );
        assert!(
            fenced
                >= (t.lease_ttl - t.margin)
                    .saturating_sub(t.keepalive_interval + Duration::from_millis(100)),
            "not before its lease could have gone stale: {fenced:?}"
        );
        let m = lab.sidecars[victim].scrape().await.expect("scrape");
        assert_eq!(m.get("lockstep_fenced", &[]), Some(1.0), "{}", m.text);
        assert!(
            m.get("lockstep_lease_age_seconds", &[]).expect("lease age")
                >= (t.lease_ttl - t.margin).as_secs_f64(),
            "{}",
            m.text
        );
        // The unanswered keep-alive counts once it is given up (lease_ttl
        // after it was sent).
        scrape_until(
            &lab.sidecars[victim],
            t.lease_ttl + Duration::from_secs(1),
            "etcd request errors",
            |m| {
                m.get("lockstep_etcd_request_errors_total", &[])
                    .is_some_and(|n| n > errors_before)
            },
        )
        .await;
        // The other member is unaffected.
        assert_eq!(
            health(&lab, leader).await,
            (200, 200, Ok(ServingStatus::Serving))
        );
        lab.wait_lb(
            victim,
            LbTarget::Blocked,
            t.down_detection() + Duration::from_secs(1),
        )
        .await
        .expect("the fenced member's LB routes nowhere");

        // Fenced is not broken: a member that cannot reach etcd for longer
        // than /healthz's stall bound (2 × (lease_ttl + keep-alive interval
        // + etcd request timeout 2 s), 11 s in the lab) stays live, so its
        // pod is not restarted (it could not start without etcd).
        let stall_bound = 2 * (t.lease_ttl + t.keepalive_interval + Duration::from_secs(2));
        let cut_at = Instant::now() - fenced;
        while cut_at.elapsed() < stall_bound + Duration::from_secs(1) {
            let live = lab.sidecars[victim]
                .http_get("/healthz")
                .await
                .expect("healthz");
            assert_eq!(
                live.status,
                200,
                "{:?} into the cut: {}",
                cut_at.elapsed(),
                String::from_utf8_lossy(&live.body)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        cut.heal().expect("heal");
        let back = until_serving(
            &lab,
            victim,
            ServingStatus::Serving,
            Duration::from_secs(15),
        )
        .await;
        println!("healed: SERVING and /readyz 200 again after {back:?}");
        lab.wait_all_lbs(LbTarget::Serve(Setup::Hot), Duration::from_secs(5))
            .await
            .expect("both LBs serve hot again");
    });
}

/// The LB's checks on a listener of their own (`http.check_listen`, as the
/// Kubernetes deployment runs them): HAProxy's checks go there (the
/// sidecar's start-up comparison of HAProxy's check target accepts it),
/// `http.listen` no longer answers them, a switch goes through with key
/// pairs flowing, and a killed sidecar's LB still blocks within D.
#[test]
fn checks_on_their_own_listener_govern_the_lb() {
    rt().block_on(async {
        let options = LabOptions {
            check_listener: true,
            ..LabOptions::default()
        };
        let mut lab = Lab::start("check-listener", options).await.expect("lab");
        let traffic = lab.start_traffic(20).await.expect("traffic on hot");
        let check = lab.sidecars[0].spec.check.expect("a check listener");
        let get = |addr, path: &'static str| async move {
            lockstep_testkit::http::http_once(
                addr,
                hyper::Method::GET,
                path,
                None,
                Duration::from_secs(2),
            )
            .await
            .expect("GET")
        };
        assert_eq!(get(check, "/check/hot").await.status, 200);
        assert_eq!(get(check, "/check/warm").await.status, 503);
        assert_eq!(get(check, "/metrics").await.status, 404);
        let http = lab.sidecars[0].spec.http;
        let moved = get(http, "/check/hot").await;
        assert_eq!(moved.status, 404);
        assert!(
            String::from_utf8_lossy(&moved.body).contains("http.check_listen"),
            "{moved:?}"
        );
        assert_eq!(get(http, "/metrics").await.status, 200);
        traffic
            .wait_for_more_matched(50, Duration::from_secs(10))
            .await
            .expect("pairs match on hot");

        let mut admin = lab.admin(0).await.expect("admin");
        admin
            .switchover(switch_request(Setup::Warm, "check listener test"))
            .await
            .expect("switchover to warm");
        lab.wait_all_lbs(LbTarget::Serve(Setup::Warm), Duration::from_secs(5))
            .await
            .expect("every LB on warm");
        assert_eq!(get(check, "/check/warm").await.status, 200);

        traffic
            .wait_for_more_matched(50, Duration::from_secs(10))
            .await
            .expect("pairs match on warm");
        // The dead-man's switch runs through the check listener too.
        let d = lab.options.timing.down_detection();
        lab.sidecars[0].guard.kill();
        let blocked = lab
            .wait_lb(0, LbTarget::Blocked, d + Duration::from_secs(2))
            .await
            .expect("a killed sidecar's LB blocks");
        println!("killed sidecar's LB blocked after {blocked:?} (D {d:?})");
        let report = traffic.stop_and_assert_no_mismatch().await;
        assert!(report.matched >= 100, "{report}");
    });
}

/// `grpc.insecure = true` (labs only) is said where on-call looks: a WARN
/// at start naming what it allows, and `insecure` in the status of the
/// link and of each member (`lockstep status` prints "INSECURE").
#[test]
fn plaintext_grpc_is_said_in_the_log_and_the_status() {
    rt().block_on(async {
        let options = LabOptions {
            insecure_grpc: true,
            ..LabOptions::default()
        };
        let lab = Lab::start("insecure", options).await.expect("lab");
        let status = lab.status().await.expect("status over plaintext gRPC");
        assert!(status.insecure, "{status:?}");
        assert_eq!(status.members.len(), 2);
        assert!(status.members.iter().all(|m| m.insecure), "{status:?}");
        for s in &lab.sidecars {
            let log = std::fs::read_to_string(&s.log).expect("sidecar log");
            assert!(
                log.lines()
                    .any(|l| l.contains("WARN") && l.contains("PLAINTEXT without authorization")),
                "{}: no WARN about plaintext gRPC",
                s.spec.member_id
            );
        }
        // With mutual TLS (every other lab), nothing says insecure.
        drop(lab);
        let lab = Lab::start("secure", LabOptions::default())
            .await
            .expect("lab");
        let status = lab.status().await.expect("status over mutual TLS");
        assert!(!status.insecure, "{status:?}");
        assert!(status.members.iter().all(|m| !m.insecure), "{status:?}");
    });
}
