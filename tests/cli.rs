//! The CLI's handling of bad input, with no link running.

use std::process::Command;

fn lockstep() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lockstep"))
}

fn example() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/local/lockstep.example.toml"
    ))
    .expect("example config")
}

fn run_config(text: &str, verb: &str) -> (i32, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).expect("write");
    let out = lockstep()
        .args([verb, "--config"])
        .arg(&path)
        .output()
        .expect("run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn the_example_config_is_valid_and_check_config_prints_the_bounds() {
    let (code, text) = run_config(&example(), "check-config");
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("D = check_inter x check_fall + check_timeout = 1.3s"),
        "{text}"
    );
    assert!(
        text.contains("lease_ttl 5s > keepalive 1s + D 1.3s + margin 1s = 3.3s"),
        "{text}"
    );
}

#[test]
fn bad_configs_are_refused_with_the_reason() {
    let missing = lockstep()
        .args(["run", "--config", "/nonexistent/lockstep.toml"])
        .output()
        .expect("run");
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read config"));

    let cases = [
        ("not toml [[[", "invalid config"),
        (
            "link = \"x\"\nmember_id = \"a\"\nrole = \"alice\"\nbogus = 1\n",
            "bogus",
        ),
        (
            "link = \"x\"\nmember_id = \"a\"\nrole = \"carol\"\n",
            "carol",
        ),
        (
            "link = \"x\"\nmember_id = \"a\"\nrole = \"alice\"\ninitial_setup = \"lukewarm\"\n",
            "lukewarm",
        ),
        (
            "link = \"Bad Link\"\nmember_id = \"a\"\nrole = \"alice\"\n",
            "link",
        ),
        (
            "link = \"x\"\nmember_id = \"a\"\nrole = \"alice\"\n[etcd]\nlease_ttl = \"3s\"\n",
            "timing rule broken",
        ),
        ("member_id = \"a\"\nrole = \"alice\"\n", "link"),
    ];
    for (text, needle) in cases {
        let (code, out) = run_config(text, "run");
        assert_eq!(code, 2, "{text:?} -> {out}");
        assert!(
            out.contains(needle),
            "{text:?}: expected {needle:?} in {out}"
        );
    }
}

#[test]
fn environment_overrides_are_applied_and_validated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, example()).expect("write");
    let out = lockstep()
        .args(["check-config", "--json", "--config"])
        .arg(&path)
        .env("LOCKSTEP_ETCD__LEASE_TTL", "9s")
        .output()
        .expect("run");
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["lease_ttl_ms"], 9000);
    let out = lockstep()
        .args(["check-config", "--config"])
        .arg(&path)
        .env("LOCKSTEP_ETCD__LEASE_TTL", "2s")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("timing rule broken"));
}

#[test]
fn unknown_setup_is_a_usage_error_and_nothing_is_sent() {
    // The endpoint does not exist: a usage error must come before any call.
    let out = lockstep()
        .args([
            "--endpoint",
            "http://127.0.0.1:1",
            "switchover",
            "--to",
            "lukewarm",
            "--reason",
            "x",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("possible values: hot, warm"), "{err}");
}

#[test]
fn a_switch_needs_a_reason() {
    let out = lockstep()
        .args([
            "--endpoint",
            "http://127.0.0.1:1",
            "switchover",
            "--to",
            "warm",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--reason"));
}

#[test]
fn an_unreachable_endpoint_says_what_to_do() {
    let port = lockstep::lab::process::free_port().expect("port");
    let out = lockstep()
        .args(["--endpoint", &format!("http://127.0.0.1:{port}"), "status"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("LOCKSTEP_ENDPOINT"));
}
