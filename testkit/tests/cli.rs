//! The CLI's handling of bad input, with no link running.

use lockstep_testkit::lab::process::{run_to_end, workspace_program};
use std::process::Command;

fn lockstep() -> Command {
    Command::new(workspace_program("lockstep").expect("lockstep built"))
}

fn example() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/local/lockstep.example.toml"
    ))
    .expect("example config")
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
    let (code, text) = run_config(&example(), "check-config");
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
            format!("{BASE}[etcd]\nlease_ttl = \"3s\"\n"),
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
    std::fs::write(&path, example()).expect("write");
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
    std::fs::write(&path, example()).expect("write");
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
