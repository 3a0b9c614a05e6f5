//! Real `kme-mock` processes (run `cargo build --bins` first) and the
//! traffic pointed straight at them, without any LB.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use lockstep::protocol::Setup;
use lockstep_kme_mock::{ErrorBody, KeyContainer, StatusBody, KEY_NOT_FOUND};
use lockstep_testkit::http::{http_once, HttpConn, HttpReply};
use lockstep_testkit::lab::kme::{spawn_link, KmeProcess, LinkKmes};
use lockstep_testkit::lab::process::workspace_program;
use lockstep_testkit::traffic::{Traffic, TrafficConfig};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(5);

/// `target/kme-tests/<name>`, emptied first; logs stay after a failure.
fn log_dir(name: &str) -> PathBuf {
    lockstep_testkit::lab::process::log_dir("kme-tests", name).expect("creating the log dir")
}

fn link(name: &str) -> LinkKmes {
    spawn_link(&log_dir(name)).expect("starting four kme-mock processes")
}

fn body(v: Value) -> Option<Bytes> {
    Some(Bytes::from(v.to_string()))
}

async fn call(kme: &KmeProcess, method: Method, path: &str, b: Option<Value>) -> HttpReply {
    http_once(
        kme.addr,
        method,
        path,
        b.map(|v| Bytes::from(v.to_string())),
        T,
    )
    .await
    .unwrap_or_else(|e| panic!("{} {path}: {e:#}", kme.name()))
}

async fn enc(kme: &KmeProcess) -> (String, String) {
    let r = call(
        kme,
        Method::POST,
        "/api/v1/keys/SAE_B/enc_keys",
        Some(json!({"number": 1, "size": 256})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body_excerpt());
    let c: KeyContainer = serde_json::from_slice(&r.body).expect("key container");
    (c.keys[0].key_id.clone(), c.keys[0].key.clone())
}

fn etsi_error(r: &HttpReply) -> ErrorBody {
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("not an ETSI error body ({e}): {}", r.body_excerpt()))
}

#[tokio::test]
async fn same_setup_shares_keys_other_setup_does_not() {
    let kmes = link("shares_keys");
    let (id, key) = enc(&kmes.hot_alice).await;

    let r = call(
        &kmes.hot_bob,
        Method::POST,
        "/api/v1/keys/SAE_A/dec_keys",
        Some(json!({"key_IDs": [{"key_ID": id}]})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body_excerpt());
    assert_eq!(r.setup(), Some(Setup::Hot));
    let c: KeyContainer = serde_json::from_slice(&r.body).expect("key container");
    assert_eq!(
        (c.keys[0].key_id.as_str(), c.keys[0].key.as_str()),
        (id.as_str(), key.as_str())
    );

    let r = call(
        &kmes.hot_bob,
        Method::GET,
        &format!("/api/v1/keys/SAE_A/dec_keys?key_ID={id}"),
        None,
    )
    .await;
    let c: KeyContainer = serde_json::from_slice(&r.body).expect("key container");
    assert_eq!(c.keys[0].key, key);

    let r = call(
        &kmes.warm_bob,
        Method::POST,
        "/api/v1/keys/SAE_A/dec_keys",
        Some(json!({"key_IDs": [{"key_ID": id}]})),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.setup(), Some(Setup::Warm));
    let e = etsi_error(&r);
    assert_eq!(e.message, KEY_NOT_FOUND);
    assert_eq!(e.details[0]["key_ID"], json!(id));
    assert!(e.details[0]["reason"].is_string());

    // GET enc_keys with several keys of another size.
    let r = call(
        &kmes.warm_alice,
        Method::GET,
        "/api/v1/keys/SAE_B/enc_keys?number=3&size=512",
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body_excerpt());
    let c: KeyContainer = serde_json::from_slice(&r.body).expect("key container");
    assert_eq!(c.keys.len(), 3);
    let stats = kmes.warm_alice.stats().await.expect("stats");
    assert_eq!((stats.keys_issued, stats.requests), (3, 1));
}

#[tokio::test]
async fn status_answers_with_the_configured_ids() {
    let kmes = link("status");
    for kme in kmes.iter() {
        let peer = if kme.role.as_str() == "alice" {
            "SAE_B"
        } else {
            "SAE_A"
        };
        let r = call(
            kme,
            Method::GET,
            &format!("/api/v1/keys/{peer}/status"),
            None,
        )
        .await;
        assert_eq!(r.status, 200, "{}: {}", kme.name(), r.body_excerpt());
        assert_eq!(r.setup(), Some(kme.setup));
        let s: StatusBody = serde_json::from_slice(&r.body).expect("status body");
        assert_eq!(
            (s.master_sae_id.as_str(), s.slave_sae_id.as_str()),
            ("SAE_A", "SAE_B")
        );
        assert_eq!(s.source_kme_id, format!("kme-{}-alice", kme.setup));
        assert_eq!(s.target_kme_id, format!("kme-{}-bob", kme.setup));
        assert_eq!(s.key_size, 256);
    }
}

#[tokio::test]
async fn bad_input_is_400_with_an_etsi_body() {
    let kmes = link("bad_input");
    let (a, b) = (&kmes.hot_alice, &kmes.hot_bob);
    let cases: Vec<(&KmeProcess, Method, &str, Option<Value>)> = vec![
        (a, Method::GET, "/api/v1/keys/SAE_B/enc_keys?size=100", None),
        (
            a,
            Method::GET,
            "/api/v1/keys/SAE_B/enc_keys?size=99999",
            None,
        ),
        (
            a,
            Method::GET,
            "/api/v1/keys/SAE_B/enc_keys?number=1000",
            None,
        ),
        (
            a,
            Method::POST,
            "/api/v1/keys/SAE_B/enc_keys",
            Some(json!({"number": 1, "size": 12})),
        ),
        (a, Method::GET, "/api/v1/keys/WRONG/enc_keys", None),
        (a, Method::GET, "/api/v1/keys/WRONG/status", None),
        (b, Method::GET, "/api/v1/keys/SAE_A/enc_keys", None),
        (b, Method::GET, "/api/v1/keys/SAE_A/dec_keys", None),
        (b, Method::GET, "/api/v1/keys/WRONG/dec_keys?key_ID=x", None),
        (
            b,
            Method::POST,
            "/api/v1/keys/SAE_A/dec_keys",
            Some(json!({"keys": []})),
        ),
    ];
    for (kme, method, path, b) in cases {
        let r = call(kme, method.clone(), path, b).await;
        assert_eq!(r.status, 400, "{method} {path}: {}", r.body_excerpt());
        assert!(!etsi_error(&r).message.is_empty());
    }
    // Malformed JSON.
    let r = http_once(
        a.addr,
        Method::POST,
        "/api/v1/keys/SAE_B/enc_keys",
        Some(Bytes::from_static(b"{\"number\":")),
        T,
    )
    .await
    .expect("request");
    assert_eq!(r.status, 400);
    assert_eq!(etsi_error(&r).message, "malformed request body");
    let stats = a.stats().await.expect("stats");
    assert_eq!(stats.keys_issued, 0);
    assert!(stats.rejected >= 7, "{stats:?}");
}

#[tokio::test]
async fn keep_alive_serves_many_requests_on_one_connection() {
    let kmes = link("keep_alive");
    // The start-up readiness probe connected once already.
    let before = kmes.hot_alice.stats().await.expect("stats");
    let mut conn = HttpConn::connect(kmes.hot_alice.addr, T)
        .await
        .expect("connect");
    for _ in 0..20 {
        let r = conn
            .request(
                Method::POST,
                "/api/v1/keys/SAE_B/enc_keys",
                body(json!({"number": 1})),
                T,
            )
            .await
            .expect("request");
        assert_eq!(r.status, 200);
    }
    let stats = kmes.hot_alice.stats().await.expect("stats");
    assert_eq!(
        (
            stats.connections_accepted - before.connections_accepted,
            stats.keys_issued
        ),
        (1, 20)
    );
}

#[tokio::test]
async fn fault_down_closes_connections_and_refuses_new_ones() {
    let kmes = link("fault_down");
    let kme = &kmes.hot_bob;
    let mut conn = HttpConn::connect(kme.addr, T).await.expect("connect");
    let r = conn
        .request(Method::GET, "/api/v1/keys/SAE_A/status", None, T)
        .await
        .expect("status");
    assert_eq!(r.status, 200);

    kme.set_fault("down", 0).await.expect("down");
    let err = conn
        .request(Method::GET, "/api/v1/keys/SAE_A/status", None, T)
        .await;
    assert!(
        err.is_err(),
        "an open connection must be closed, got {err:?}"
    );
    let err = HttpConn::connect(kme.addr, T).await;
    assert!(err.is_err(), "new connections must fail while down");
    // The admin API stays up.
    let stats = kme.stats().await.expect("stats while down");
    assert!(stats.connections_dropped >= 1, "{stats:?}");

    kme.set_fault("ok", 0).await.expect("ok");
    let r = call(kme, Method::GET, "/api/v1/keys/SAE_A/status", None).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn fault_unavailable_answers_503_with_an_etsi_body() {
    let kmes = link("fault_unavailable");
    let kme = &kmes.hot_alice;
    kme.set_fault("unavailable", 0).await.expect("unavailable");
    for path in ["/api/v1/keys/SAE_B/status", "/api/v1/keys/SAE_B/enc_keys"] {
        let r = call(kme, Method::GET, path, None).await;
        assert_eq!(r.status, 503, "{path}");
        assert_eq!(r.setup(), Some(Setup::Hot));
        assert!(!etsi_error(&r).message.is_empty());
    }
    kme.set_fault("ok", 0).await.expect("ok");
    assert_eq!(
        call(kme, Method::GET, "/api/v1/keys/SAE_B/status", None)
            .await
            .status,
        200
    );
    assert!(kme.set_fault("sideways", 0).await.is_err());
}

#[tokio::test]
async fn fault_slow_delays_answers() {
    let kmes = link("fault_slow");
    let kme = &kmes.warm_alice;
    kme.set_fault("slow", 300).await.expect("slow");
    let t = Instant::now();
    let r = call(kme, Method::GET, "/api/v1/keys/SAE_B/status", None).await;
    assert_eq!(r.status, 200);
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    kme.set_fault("ok", 0).await.expect("ok");
    let t = Instant::now();
    call(kme, Method::GET, "/api/v1/keys/SAE_B/status", None).await;
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn invalid_flags_exit_with_a_clear_error() {
    let program = workspace_program("kme-mock").expect("kme-mock built");
    let out = std::process::Command::new(&program)
        .args(["--setup", "tepid", "--role", "alice", "--secret", "s"])
        .output()
        .expect("run kme-mock");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown setup"));
    let out = std::process::Command::new(&program)
        .args([
            "--setup",
            "hot",
            "--role",
            "alice",
            "--secret",
            "s",
            "--key-size",
            "100",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .expect("run kme-mock");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("multiple of 8"));
}

fn traffic_config(alice: &KmeProcess, bob: &KmeProcess) -> TrafficConfig {
    TrafficConfig::new(alice.addr, bob.addr, "SAE_A", "SAE_B")
}

#[tokio::test]
async fn traffic_same_setup_only_matches() {
    let kmes = link("traffic_match");
    let before = kmes.hot_bob.stats().await.expect("stats");
    let t0 = Instant::now();
    let traffic = Traffic::start(traffic_config(&kmes.hot_alice, &kmes.hot_bob));
    traffic
        .wait_for_matched(50, T)
        .await
        .expect("50 matched pairs");
    let first = traffic
        .first_matched_by_after(Setup::Hot, t0)
        .expect("a hot pair");
    assert!(first > t0);
    let report = traffic.stop().await;
    println!("{report}");
    assert_eq!((report.mismatched, report.failed), (0, 0), "{report}");
    assert_eq!(report.served_by.bob.get(&Setup::Hot), Some(&report.matched));
    assert!(!report.served_by.bob.contains_key(&Setup::Warm));
    assert!(report.to_string().starts_with("pairs: matched="));
    // The key-pair traffic keeps one connection per side.
    let after = kmes.hot_bob.stats().await.expect("stats");
    assert_eq!(after.connections_accepted - before.connections_accepted, 1);
}

#[tokio::test]
async fn traffic_sees_mismatches_across_setups() {
    let kmes = link("traffic_mismatch");
    let traffic = Traffic::start(traffic_config(&kmes.hot_alice, &kmes.warm_bob));
    let report = traffic
        .wait_until("20 mismatched pairs", T, |r| r.mismatched >= 20)
        .await
        .expect("mismatches");
    drop(traffic);
    assert_eq!((report.matched, report.failed), (0, 0), "{report}");
    assert_eq!(
        report.served_by.alice.get(&Setup::Hot),
        Some(&report.mismatched)
    );
    assert!(report.last_mismatch.is_some());
}

/// Puts `kme` into fault `mode` (with its delay) until `failed` more pairs
/// failed, then back to `ok` until 5 more matched.
async fn outage(traffic: &Traffic, kme: &KmeProcess, (mode, delay_ms): (&str, u64), failed: u64) {
    kme.set_fault(mode, delay_ms).await.expect(mode);
    traffic
        .wait_for_more_failed(failed, T)
        .await
        .unwrap_or_else(|e| panic!("failures while {mode}: {e:#}"));
    kme.set_fault("ok", 0).await.expect("ok");
    traffic
        .wait_for_more_matched(5, T)
        .await
        .unwrap_or_else(|e| panic!("traffic after {mode}: {e:#}"));
}

#[tokio::test]
async fn traffic_measures_an_outage_and_recovers() {
    let kmes = link("traffic_outage");
    let traffic = Traffic::start(traffic_config(&kmes.hot_alice, &kmes.hot_bob));
    traffic
        .wait_for_matched(20, T)
        .await
        .expect("traffic before the fault");

    kmes.hot_bob.set_fault("down", 0).await.expect("down");
    traffic
        .wait_for_more_failed(3, T)
        .await
        .expect("failures while down");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let during = traffic.snapshot();
    assert!(during.outage_open, "{during}");
    kmes.hot_bob.set_fault("ok", 0).await.expect("ok");
    traffic
        .wait_for_more_matched(20, T)
        .await
        .expect("traffic after the fault");

    // 503s and answers slower than the request timeout are failures too,
    // never mismatches.
    outage(&traffic, &kmes.hot_alice, ("unavailable", 0), 3).await;
    outage(&traffic, &kmes.hot_bob, ("slow", 1500), 1).await;

    let report = traffic.stop_and_assert_no_mismatch().await;
    assert!(report.failed >= 7, "{report}");
    assert_eq!(report.outages.len(), 3, "{report}");
    assert!(!report.outage_open);
    assert!(
        report.longest_outage >= Duration::from_millis(200),
        "{report}"
    );
    assert!(report.longest_outage < Duration::from_secs(5), "{report}");
}
