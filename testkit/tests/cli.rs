//! The CLI's handling of bad input, with no link running.

use lockstep_testkit::lab::process::{run_to_end, workspace_program};
use lockstep_testkit::pki::{member_uri, Pki};
use std::process::Command;

fn lockstep() -> Command {
    Command::new(workspace_program("lockstep").expect("lockstep built"))
}

/// The example config with its gRPC certificate paths (which exist only in
/// a pod) pointing at certificates made here; keep the directory while
/// using it.
fn example() -> (String, tempfile::TempDir) {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/local/lockstep.example.toml"
    ))
    .expect("example config");
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::create(dir.path(), "cli test CA").expect("pki");
    let files = pki
        .issue("alice-0", &member_uri("qkd-1", "alice-0"), &[])
        .expect("issue");
    let text = text
        .replace("/etc/lockstep/grpc/ca.crt", &files.ca.to_string_lossy())
        .replace("/etc/lockstep/grpc/tls.crt", &files.cert.to_string_lossy())
        .replace("/etc/lockstep/grpc/tls.key", &files.key.to_string_lossy());
    (text, dir)
}

fn run_config(text: &str, verb: &str) -> (i32, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).expect("write");
    let out = run_to_end(lockstep().args([verb, "--config"]).arg(&path)).expect("run");
    (out.code.unwrap_or(-1), out.text())
}

#[test]
fn the_example_config_is_valid_and_check_config_prints_the_bounds() {
    let (example, _tls) = example();
    let (code, text) = run_config(&example, "check-config");
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(
            "D = check_fall x (check_inter + min(1s, check_inter) + check_timeout) = 2.6s"
        ),
        "{text}"
    );
    assert!(
        text.contains("lease_ttl 5s > keepalive 1s + D 2.6s + margin 1s = 4.6s"),
        "{text}"
    );
    assert!(text.contains("TTL - margin = 4s"), "{text}");
    assert!(text.contains("at most the lease TTL: 5s"), "{text}");
}

#[test]
fn a_missing_config_file_is_named() {
    let missing = run_to_end(lockstep().args(["run", "--config", "/nonexistent/lockstep.toml"]))
        .expect("run");
    assert_eq!(missing.code, Some(2));
    let err = &missing.stderr;
    assert!(
        err.contains("cannot read config /nonexistent/lockstep.toml"),
        "{err}"
    );
}

#[test]
fn bad_configs_are_refused_with_the_reason() {
    const BASE: &str = "link = \"x\"\nmember_id = \"a\"\nrole = \"alice\"\n";
    let cases = [
        ("not toml [[[".to_string(), "is not TOML"),
        (format!("{BASE}bogus = 1\n"), "unknown key `bogus`"),
        (
            format!("{BASE}[etcd]\nlease_tll = \"5s\"\n"),
            "unknown key `etcd.lease_tll`",
        ),
        (
            "link = \"x\"\nmember_id = \"a\"\nrole = \"carol\"\n".to_string(),
            "\"carol\" is not one of: alice, bob",
        ),
        (
            format!("{BASE}initial_setup = \"lukewarm\"\n"),
            "lukewarm",
        ),
        (
            "link = \"Bad Link\"\nmember_id = \"a\"\nrole = \"alice\"\n".to_string(),
            "`link`",
        ),
        (
            format!("{BASE}[etcd]\nlease_ttl = \"2500ms\"\n"),
            "etcd.lease_ttl`: 2.5s must be whole seconds",
        ),
        (
            BASE.to_string(),
            "`grpc.tls.ca`: is unset: gRPC needs mutual TLS",
        ),
        (
            format!("{BASE}[grpc]\ninsecure = true\n[etcd]\nlease_ttl = \"3s\"\n"),
            "timing rule broken: etcd.lease_ttl (3s) must exceed etcd.keepalive_interval (1s) + D (2.6s",
        ),
        (
            "member_id = \"a\"\nrole = \"alice\"\n".to_string(),
            "required key `link` is missing",
        ),
    ];
    for (text, needle) in cases {
        for verb in ["run", "check-config"] {
            let (code, out) = run_config(&text, verb);
            assert_eq!(code, 2, "{verb} {text:?} -> {out}");
            assert!(
                out.contains(needle),
                "{verb} {text:?}: expected {needle:?} in {out}"
            );
        }
    }
}

#[test]
fn environment_overrides_are_applied_and_validated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    let (example, _tls) = example();
    std::fs::write(&path, example).expect("write");
    let out = run_to_end(
        lockstep()
            .args(["check-config", "--json", "--config"])
            .arg(&path)
            .env("LOCKSTEP_ETCD__LEASE_TTL", "9s"),
    )
    .expect("run");
    assert!(out.success());
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(v["lease_ttl_ms"], 9000);
    let out = run_to_end(
        lockstep()
            .args(["check-config", "--config"])
            .arg(&path)
            .env("LOCKSTEP_ETCD__LEASE_TTL", "3s"),
    )
    .expect("run");
    assert_eq!(out.code, Some(2));
    let err = &out.stderr;
    assert!(err.contains("timing rule broken"), "{err}");
    assert!(
        err.contains("overridden by LOCKSTEP_ETCD__LEASE_TTL"),
        "{err}"
    );
    // A bad value in the environment names the variable.
    let out = run_to_end(
        lockstep()
            .args(["check-config", "--config"])
            .arg(&path)
            .env("LOCKSTEP_ETCD__LEASE_TTL", "5x"),
    )
    .expect("run");
    assert_eq!(out.code, Some(2));
    let err = &out.stderr;
    assert!(
        err.contains("environment variable LOCKSTEP_ETCD__LEASE_TTL"),
        "{err}"
    );
}

#[test]
fn the_cli_s_own_variables_are_not_config_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    let (example, _tls) = example();
    std::fs::write(&path, example).expect("write");
    let out = run_to_end(
        lockstep()
            .args(["check-config", "--config"])
            .arg(&path)
            .env("LOCKSTEP_ENDPOINT", "http://127.0.0.1:1")
            // Read by test builds of the sidecar (chaos suite), not config.
            .env("LOCKSTEP_MUTATION", "skip-drain"),
    )
    .expect("run");
    assert!(out.success(), "{}", out.stderr);
}

#[test]
fn unknown_setup_is_a_usage_error_and_nothing_is_sent() {
    // The endpoint does not exist: a usage error must come before any call.
    let out = run_to_end(lockstep().args([
        "--endpoint",
        "http://127.0.0.1:1",
        "switchover",
        "--to",
        "lukewarm",
        "--reason",
        "x",
    ]))
    .expect("run");
    assert_eq!(out.code, Some(2));
    let err = &out.stderr;
    assert!(err.contains("possible values: hot, warm"), "{err}");
}

#[test]
fn usage_errors_exit_2_before_any_call() {
    let cases: [&[&str]; 4] = [
        &["switchover", "--to", "warm"],
        &["failover", "--to", "hot", "--force"],
        &["pause"],
        &["--timeout", "soon", "status"],
    ];
    for args in cases {
        let out = run_to_end(
            lockstep()
                .args(["--endpoint", "http://127.0.0.1:1"])
                .args(args),
        )
        .expect("run");
        let err = &out.stderr;
        assert_eq!(out.code, Some(2), "{args:?}: {err}");
        assert!(
            err.contains("--reason") || err.contains("--timeout"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn an_unreachable_endpoint_says_what_to_do() {
    let port = lockstep_testkit::lab::process::free_port().expect("port");
    for endpoint in [
        format!("http://127.0.0.1:{port}"),
        format!("127.0.0.1:{port}"),
    ] {
        for args in [
            &["status"][..],
            &["switchover", "--to", "warm", "--reason", "test"][..],
        ] {
            let out =
                run_to_end(lockstep().args(["--endpoint", &endpoint]).args(args)).expect("run");
            let err = &out.stderr;
            assert_eq!(out.code, Some(3), "{endpoint} {args:?}: {err}");
            assert!(err.contains("is a sidecar running at"), "{err}");
            assert!(err.contains("set --endpoint or LOCKSTEP_ENDPOINT"), "{err}");
        }
    }
    // The variable works like the flag.
    let out = run_to_end(
        lockstep()
            .arg("status")
            .env("LOCKSTEP_ENDPOINT", format!("http://127.0.0.1:{port}")),
    )
    .expect("run");
    assert_eq!(out.code, Some(3));
    assert!(out.stderr.contains(&format!("127.0.0.1:{port}")));
}

#[test]
fn missing_half_or_expired_client_certificates_are_named_before_any_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::create(dir.path(), "cli test CA").expect("pki");
    let good = pki
        .issue("op", lockstep_testkit::pki::OPERATOR, &[])
        .expect("issue");
    let expired = pki
        .issue_valid("old", lockstep_testkit::pki::OPERATOR, &[], (-30, -1))
        .expect("issue");
    // The endpoint does not exist: each error must come before any call.
    let run = |ca: &std::path::Path, cert: &std::path::Path, key: &std::path::Path| {
        run_to_end(
            lockstep()
                .args(["--endpoint", "127.0.0.1:1", "status", "--ca"])
                .arg(ca)
                .arg("--cert")
                .arg(cert)
                .arg("--key")
                .arg(key),
        )
        .expect("run")
    };
    let missing = dir.path().join("nope.pem");
    let out = run(&good.ca, &missing, &good.key);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("--cert (LOCKSTEP_CERT)") && out.stderr.contains("nope.pem"),
        "{}",
        out.stderr
    );
    let out = run(&good.ca, &expired.cert, &expired.key);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("expired at"), "{}", out.stderr);
    let out = run(&good.ca, &good.cert, &expired.key);
    assert!(out.stderr.contains("does not fit"), "{}", out.stderr);
    let out = run_to_end(
        lockstep()
            .args(["--endpoint", "127.0.0.1:1", "status", "--cert"])
            .arg(&good.cert),
    )
    .expect("run");
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr
            .contains("--ca (LOCKSTEP_CA) and --key (LOCKSTEP_KEY) missing"),
        "{}",
        out.stderr
    );
}
