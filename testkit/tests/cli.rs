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

// ---- On a live link: confirmation, dry run, exit codes, JSON ----

use lockstep::proto::{self, Setup as PSetup};
use lockstep_testkit::lab::{Lab, LabOptions};
use lockstep_testkit::rt;
use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

/// Runs the CLI against member `i` of `lab` (as the lab's operator),
/// without a terminal; returns the exit code, stdout and stderr.
fn cli(lab: &Lab, i: usize, args: &[&str]) -> (i32, String, String) {
    let out = run_to_end(lockstep().envs(lab.cli_env(i)).args(args)).expect("run lockstep");
    (out.code.unwrap_or(-1), out.stdout, out.stderr)
}

/// Parses the CLI's `--json` output as the proto reply `$t` and checks it
/// round-trips: serialized again, it is the same JSON, field for field.
macro_rules! round_trip {
    ($t:ty, $out:expr) => {{
        let out: &str = &$out;
        let reply: $t = serde_json::from_str(out)
            .unwrap_or_else(|e| panic!("not a {}: {e}: {out}", stringify!($t)));
        let as_printed: serde_json::Value = serde_json::from_str(out).expect("JSON");
        assert_eq!(
            serde_json::to_value(&reply).expect("serialize"),
            as_printed,
            "{} does not round-trip",
            stringify!($t)
        );
        reply
    }};
}

/// What tells whether anything changed: the route, the pending request,
/// the pause and the history.
async fn fingerprint(lab: &Lab) -> (Option<proto::Route>, bool, bool, Vec<proto::HistoryRecord>) {
    let s = lab.status().await.expect("status");
    let h = lab.history(100).await.expect("history");
    (s.route, s.pending.is_some(), s.paused, h.records)
}

/// Runs the CLI on a pseudo-terminal (stdin, stdout and stderr), waits
/// for the `[y/N]` question, answers `answer`, and returns the exit code
/// and everything the terminal showed.
fn on_a_terminal(lab: &Lab, args: &[&str], answer: &str) -> (i32, String) {
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let slave = std::fs::File::from(pty.slave);
    let mut child = lockstep()
        .envs(lab.cli_env(0))
        .args(args)
        .stdin(slave.try_clone().expect("dup"))
        .stdout(slave.try_clone().expect("dup"))
        .stderr(slave)
        .spawn()
        .expect("spawn lockstep");
    // Everything the terminal shows, read on a thread (reads block).
    let mut master = std::fs::File::from(pty.master);
    let mut writer = master.try_clone().expect("dup");
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // EIO once the last writer (the child) is gone.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.contains("[y/N]") {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(chunk) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            Err(_) => {
                let _ = child.kill();
                panic!("no [y/N] question within 20 s; the terminal showed:\n{seen}");
            }
        }
    }
    writer
        .write_all(format!("{answer}\n").as_bytes())
        .expect("answer");
    let status = child.wait().expect("wait");
    while let Ok(chunk) = rx.recv_timeout(Duration::from_millis(500)) {
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    (status.code().unwrap_or(-1), seen)
}

#[test]
fn on_a_terminal_switchover_asks_and_no_changes_nothing_and_yes_switches() {
    rt().block_on(async {
        let lab = Lab::start("cli-confirm", LabOptions::default())
            .await
            .expect("lab");
        let before = fingerprint(&lab).await;
        let args = ["switchover", "--to", "warm", "--reason", "confirm test"];
        let (code, shown) = on_a_terminal(&lab, &args, "n");
        assert_eq!(code, 1, "{shown}");
        // The topology and the plan come before the question.
        assert!(
            shown.contains("alice-0") && shown.contains("bob-0"),
            "{shown}"
        );
        assert!(shown.contains("LB routes hot"), "{shown}");
        assert!(
            shown.contains("plan: switchover from hot to warm"),
            "{shown}"
        );
        assert!(
            shown.contains("[DECLINED]") && shown.contains("nothing changed"),
            "{shown}"
        );
        assert_eq!(
            fingerprint(&lab).await,
            before,
            "answering n changed something"
        );

        let (code, shown) = on_a_terminal(&lab, &args, "y");
        assert_eq!(code, 0, "{shown}");
        lab.wait_all_lbs(
            lockstep::protocol::LbTarget::Serve(lockstep::protocol::Setup::Warm),
            Duration::from_secs(10),
        )
        .await
        .expect("every LB serves warm after y");

        // Without a terminal nothing is asked; -y skips the question on one.
        let (code, out, err) = cli(
            &lab,
            0,
            &["switchover", "--to", "hot", "--reason", "no tty"],
        );
        assert_eq!(code, 0, "{out}{err}");
        assert!(
            !out.contains("[y/N]") && !err.contains("[y/N]"),
            "{out}{err}"
        );
        lab.wait_serving(lockstep::protocol::Setup::Hot, Duration::from_secs(10))
            .await
            .expect("hot again");
        let (code, shown) = on_a_terminal_yes(&lab);
        assert_eq!(code, 0, "{shown}");
        assert!(!shown.contains("[y/N]"), "{shown}");
    });
}

/// `switchover -y` on a terminal: no question.
fn on_a_terminal_yes(lab: &Lab) -> (i32, String) {
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let slave = std::fs::File::from(pty.slave);
    let out = lockstep()
        .envs(lab.cli_env(0))
        .args(["switchover", "-y", "--to", "warm", "--reason", "yes flag"])
        .stdin(slave)
        .output()
        .expect("run");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn dry_run_says_what_would_happen_and_changes_nothing() {
    rt().block_on(async {
        let lab = Lab::start("cli-dry", LabOptions::default())
            .await
            .expect("lab");
        let before = fingerprint(&lab).await;
        let (code, out, err) = cli(
            &lab,
            1,
            &["switchover", "--to", "warm", "--reason", "dry", "--dry-run"],
        );
        assert_eq!(code, 0, "{out}{err}");
        assert!(
            out.starts_with("dry run, nothing changed: switchover from hot to warm"),
            "{out}"
        );
        assert!(out.contains("every LB (alice-0, bob-0) blocks"), "{out}");
        let (code, out, err) = cli(
            &lab,
            0,
            &[
                "--json",
                "failover",
                "--to",
                "warm",
                "--reason",
                "dry",
                "--dry-run",
                "--ignore-health",
            ],
        );
        assert_eq!(code, 0, "{out}{err}");
        let reply: proto::SwitchReply = serde_json::from_str(&out).expect("SwitchReply JSON");
        assert!(
            reply.dry_run && !reply.completed && reply.request_id.is_empty(),
            "{reply:?}"
        );
        assert_eq!(reply.from, PSetup::Hot as i32);
        assert!(reply.plan.contains("--ignore-health"), "{}", reply.plan);
        // Already there: said, nothing to do.
        let (code, out, _) = cli(
            &lab,
            0,
            &["switchover", "--to", "hot", "--reason", "d", "--dry-run"],
        );
        assert_eq!(code, 0);
        assert!(out.contains("already on hot"), "{out}");
        assert_eq!(
            fingerprint(&lab).await,
            before,
            "a dry run changed something"
        );

        // A refusal is said with its reason and exit code, and still
        // nothing changes.
        let (code, _, _) = cli(&lab, 0, &["pause", "--reason", "dry test"]);
        assert_eq!(code, 0);
        let paused = fingerprint(&lab).await;
        let (code, out, err) = cli(
            &lab,
            0,
            &["switchover", "--to", "warm", "--reason", "dry", "--dry-run"],
        );
        assert_eq!(code, 1, "{out}{err}");
        assert!(
            err.contains(
                "error [PAUSED]: dry run, nothing changed: it would be refused: link is paused"
            ),
            "{err}"
        );
        let (code, out, _) = cli(
            &lab,
            0,
            &[
                "--json",
                "switchover",
                "--to",
                "warm",
                "--reason",
                "dry",
                "--dry-run",
            ],
        );
        assert_eq!(code, 1);
        let v: serde_json::Value = serde_json::from_str(&out).expect("error JSON");
        assert_eq!(v["error"]["reason"], "PAUSED");
        assert_eq!(v["error"]["exit"], 1);
        assert_eq!(
            fingerprint(&lab).await,
            paused,
            "a refused dry run changed something"
        );
    });
}

#[test]
fn each_exit_code_on_a_live_link() {
    rt().block_on(async {
        let lab = Lab::start("cli-exit", LabOptions::default())
            .await
            .expect("lab");
        // 0: done.
        let (code, out, err) = cli(
            &lab,
            0,
            &["switchover", "--to", "warm", "--reason", "x", "--wait"],
        );
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("every LB serves warm"), "{out}");
        // 1: refused, with the reason from the status details.
        cli(&lab, 0, &["pause", "--reason", "exit codes"]);
        let (code, _, err) = cli(&lab, 1, &["switchover", "--to", "hot", "--reason", "x"]);
        assert_eq!(code, 1, "{err}");
        assert!(err.starts_with("error [PAUSED]: "), "{err}");
        cli(&lab, 0, &["resume", "--reason", "exit codes"]);
        lab.set_kme_fault_and_wait(lockstep::protocol::Setup::Hot, "bob", "down", false)
            .await
            .expect("hot unhealthy");
        let (code, _, err) = cli(&lab, 1, &["switchover", "--to", "hot", "--reason", "x"]);
        assert_eq!(code, 1, "{err}");
        assert!(err.starts_with("error [TARGET_UNHEALTHY]: "), "{err}");
        lab.set_kme_fault_and_wait(lockstep::protocol::Setup::Hot, "bob", "ok", true)
            .await
            .expect("hot healthy again");
        // 2: usage, from the server's own check (a grace longer than the
        // switch may take): nothing stored.
        let before = fingerprint(&lab).await;
        let (code, _, err) = cli(
            &lab,
            0,
            &[
                "--timeout",
                "1s",
                "switchover",
                "-y",
                "--to",
                "hot",
                "--reason",
                "x",
                "--grace",
                "1h",
            ],
        );
        assert_eq!(code, 2, "{err}");
        assert!(err.starts_with("error [INVALID_REQUEST]: "), "{err}");
        assert_eq!(fingerprint(&lab).await, before);
        // 1 again: another request is pending (stored while the leader is
        // frozen, so it stays), for a dry run and a real request alike.
        let status = lab.status().await.expect("status");
        let leader = lab
            .sidecar_index(|id| id == status.leader)
            .expect("the leader");
        lab.sidecars[leader]
            .guard
            .signal(nix::sys::signal::Signal::SIGSTOP)
            .expect("freeze the leader");
        let store = lab.store().await.expect("store");
        let stuck = lockstep::protocol::policy::Request {
            id: "pending-test".into(),
            kind: lockstep::protocol::policy::RequestKind::Switchover,
            to: lockstep::protocol::Setup::Hot,
            force: false,
            reason: "stuck".into(),
            requested_by: "test".into(),
            by_note: String::new(),
            at: String::new(),
            // Already past: the leader, thawed, lets it expire.
            deadline_ms: Some(1),
            not_before_ms: None,
            grace_ms: None,
        };
        let stored = store.put_request(&stuck).await.expect("put the request");
        let dry = cli(
            &lab,
            1 - leader,
            &["switchover", "--to", "hot", "--reason", "x", "--dry-run"],
        );
        let real = cli(
            &lab,
            1 - leader,
            &["switchover", "--to", "hot", "--reason", "x"],
        );
        let (_, pending_json, _) = cli(
            &lab,
            1 - leader,
            &["--json", "switchover", "--to", "hot", "--reason", "x"],
        );
        lab.sidecars[leader]
            .guard
            .signal(nix::sys::signal::Signal::SIGCONT)
            .expect("thaw the leader");
        assert!(stored.is_ok(), "no other request was pending");
        let pending_json: serde_json::Value =
            serde_json::from_str(&pending_json).expect("error JSON");
        for (code, _, err) in [dry, real] {
            assert_eq!(code, 1, "{err}");
            assert!(err.starts_with("error [PENDING_REQUEST]: "), "{err}");
        }
        assert_eq!(pending_json["error"]["facts"]["request_id"], "pending-test");
        let deadline = Instant::now() + Duration::from_secs(10);
        while lab.status().await.expect("status").pending.is_some() {
            assert!(
                Instant::now() < deadline,
                "the expired request stays pending"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // 1: no leader takes a request within its timeout (the leader is
        // frozen, its lease still held): withdrawn, nothing moves.
        let before = fingerprint(&lab).await;
        lab.sidecars[leader]
            .guard
            .signal(nix::sys::signal::Signal::SIGSTOP)
            .expect("freeze the leader");
        let no_leader = cli(
            &lab,
            1 - leader,
            &[
                "--timeout",
                "1s",
                "switchover",
                "--to",
                "hot",
                "--reason",
                "x",
            ],
        );
        lab.sidecars[leader]
            .guard
            .signal(nix::sys::signal::Signal::SIGCONT)
            .expect("thaw the leader");
        assert_eq!(no_leader.0, 1, "{}", no_leader.2);
        assert!(
            no_leader.2.starts_with("error [NO_LEADER]: ") && no_leader.2.contains("withdrawn"),
            "{}",
            no_leader.2
        );
        let after = fingerprint(&lab).await;
        assert_eq!((&after.0, after.1), (&before.0, before.1), "nothing moved");
        // 4: accepted, not complete within the timeout: a frozen member
        // holds the drain up until its lease expires (3 s).
        let status = lab.status().await.expect("status");
        let frozen = lab
            .sidecar_index(|id| id != status.leader)
            .expect("a member that does not lead");
        let asked = 1 - frozen;
        lab.sidecars[frozen]
            .guard
            .signal(nix::sys::signal::Signal::SIGSTOP)
            .expect("freeze");
        let (code, _, err) = cli(
            &lab,
            asked,
            &[
                "--timeout",
                "1s",
                "switchover",
                "--to",
                "hot",
                "--reason",
                "x",
                "--wait",
            ],
        );
        lab.sidecars[frozen]
            .guard
            .signal(nix::sys::signal::Signal::SIGCONT)
            .expect("thaw");
        assert_eq!(code, 4, "{err}");
        assert!(
            err.starts_with("error [NOT_COMPLETE]: ") && err.contains("it goes on"),
            "{err}"
        );
        // 2: a sidecar certificate our --ca does not trust: told apart by
        // the TLS error's type, with what to check. (A client certificate
        // the sidecar refuses shows only on the first call under TLS 1.3,
        // as a dropped connection: exit 3.)
        let dir = tempfile::tempdir().expect("tempdir");
        let other = Pki::create(dir.path(), "another CA").expect("pki");
        let stranger = other
            .issue("op", lockstep_testkit::pki::OPERATOR, &[])
            .expect("issue");
        let ours = &lab.operator;
        let out = run_to_end(
            lockstep()
                .envs(lab.cli_env(0))
                .arg("--ca")
                .arg(&stranger.ca)
                .arg("--cert")
                .arg(&ours.cert)
                .arg("--key")
                .arg(&ours.key)
                .arg("status"),
        )
        .expect("run");
        assert_eq!(out.code, Some(2), "{}", out.stderr);
        assert!(
            out.stderr
                .contains("is --ca the CA that signed the sidecars' certificates?"),
            "{}",
            out.stderr
        );
        // 3: the sidecar answers but cannot reach etcd.
        lab.etcd.nodes[0]
            .guard
            .signal(nix::sys::signal::Signal::SIGSTOP)
            .expect("freeze etcd");
        let (code, _, err) = cli(&lab, 0, &["status"]);
        let _ = lab.etcd.nodes[0]
            .guard
            .signal(nix::sys::signal::Signal::SIGCONT);
        assert_eq!(code, 3, "{err}");
        assert!(err.starts_with("error [ETCD_UNAVAILABLE]: "), "{err}");
    });
}

#[test]
fn json_round_trips_every_field_and_history_records_pauses() {
    rt().block_on(async {
        let lab = Lab::start("cli-json", LabOptions::default())
            .await
            .expect("lab");
        let (code, out, err) = cli(
            &lab,
            0,
            &[
                "--json",
                "switchover",
                "--to",
                "warm",
                "--reason",
                "j",
                "--by",
                "jane",
                "--wait",
            ],
        );
        assert_eq!(code, 0, "{err}");
        let switched = round_trip!(proto::SwitchReply, out);
        assert!(
            switched.completed && !switched.dry_run && !switched.already_active,
            "{out}"
        );
        assert!(
            switched.epoch > 0 && !switched.request_id.is_empty(),
            "{out}"
        );
        assert_eq!(switched.from, PSetup::Hot as i32, "{out}");
        assert!(switched.scheduled_at.is_empty(), "{out}");
        let (code, out, err) = cli(
            &lab,
            0,
            &["--json", "pause", "--reason", "maintenance", "--by", "jane"],
        );
        assert_eq!(code, 0, "{err}");
        let paused = round_trip!(proto::PauseReply, out);
        assert!(paused.paused && paused.changed, "{out}");
        let (code, out, err) = cli(&lab, 1, &["--json", "resume", "--reason", "done"]);
        assert_eq!(code, 0, "{err}");
        let resumed = round_trip!(proto::PauseReply, out);
        assert!(!resumed.paused && resumed.changed, "{out}");
        // Resuming a link that is not paused writes nothing.
        let (code, out, err) = cli(&lab, 1, &["resume", "--reason", "again"]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("not paused; nothing changed"), "{out}");
        let (code, out, err) = cli(&lab, 1, &["--json", "resume", "--reason", "again"]);
        assert_eq!(code, 0, "{err}");
        let unchanged = round_trip!(proto::PauseReply, out);
        assert!(!unchanged.paused && !unchanged.changed, "{out}");

        // History: the CLI's JSON is the reply itself, field for field.
        let (code, out, err) = cli(&lab, 0, &["--json", "history", "--limit", "50"]);
        assert_eq!(code, 0, "{err}");
        let from_cli: proto::HistoryReply = serde_json::from_str(&out).expect("HistoryReply JSON");
        let from_grpc = lab.history(50).await.expect("history");
        assert_eq!(from_cli, from_grpc);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        let kinds: Vec<&str> = from_cli.records.iter().map(|r| r.kind.as_str()).collect();
        assert_eq!(&kinds[..3], ["resume", "pause", "switchover"], "{out}");
        let pause = &from_cli.records[1];
        assert_eq!(
            pause.reason, "maintenance",
            "the note stays out of the reason"
        );
        assert_eq!(pause.by_note, "jane");
        assert_eq!(pause.requested_by, lockstep_testkit::pki::OPERATOR);
        assert_eq!(from_cli.records[2].by_note, "jane");
        assert_eq!(from_cli.records[2].request_id, switched.request_id);
        assert_eq!(from_cli.records[2].epoch, switched.epoch);
        assert_eq!(v["records"][2]["from"], "hot");
        assert_eq!(v["records"][2]["to"], "warm");
        // Text: human names, pause and resume.
        let (_, text, _) = cli(&lab, 0, &["history"]);
        assert!(
            text.contains("hot -> warm") && text.contains("paused") && text.contains("resumed"),
            "{text}"
        );
        assert!(!text.contains("SETUP_"), "{text}");
        // --limit and --since.
        let (_, out, _) = cli(&lab, 0, &["--json", "history", "--limit", "1"]);
        let one: proto::HistoryReply = serde_json::from_str(&out).expect("json");
        assert_eq!(one.records.len(), 1);
        assert_eq!(one.records[0].kind, "resume");
        let (code, out, _) = cli(&lab, 0, &["history", "--since", "2099-01-01T00:00:00Z"]);
        assert_eq!(code, 0);
        assert!(out.contains("no transitions since"), "{out}");
        let (_, out, _) = cli(&lab, 0, &["--json", "history", "--since", "1h"]);
        let recent: proto::HistoryReply = serde_json::from_str(&out).expect("json");
        assert_eq!(recent, from_grpc, "everything happened within the hour");

        // Status: the same reply as over gRPC, but for the lease ages,
        // which move between the two calls.
        let (code, out, err) = cli(&lab, 0, &["--json", "status"]);
        assert_eq!(code, 0, "{err}");
        let mut from_cli: proto::StatusReply =
            serde_json::from_str(&out).expect("StatusReply JSON");
        let mut from_grpc = lab.status().await.expect("status");
        for s in [&mut from_cli, &mut from_grpc] {
            for m in &mut s.members {
                m.lease_age_ms = 0;
            }
        }
        assert_eq!(from_cli, from_grpc);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(v["route"]["setup"], "warm");
        assert_eq!(v["route"]["phase"], "serve");
        assert_eq!(v["members"][0]["role"], "alice");
        assert!(v["members"][0]["health"]["detail"].is_string(), "{out}");

        // A scheduled switchover: its reply, the pending request in
        // `status` (CLI, gRPC and the page's `/status`), and its cancel.
        let when = humantime::format_rfc3339_millis(
            std::time::SystemTime::now() + Duration::from_secs(3600),
        )
        .to_string();
        let (code, out, err) = cli(
            &lab,
            1,
            &[
                "--json",
                "switchover",
                "--to",
                "hot",
                "--reason",
                "planned night work",
                "--by",
                "jane",
                "--at",
                &when,
            ],
        );
        assert_eq!(code, 0, "{err}");
        let scheduled = round_trip!(proto::SwitchReply, out);
        assert!(
            !scheduled.request_id.is_empty() && !scheduled.completed,
            "{out}"
        );
        assert!(!scheduled.scheduled_at.is_empty(), "{out}");
        let (code, out, err) = cli(&lab, 0, &["--json", "status"]);
        assert_eq!(code, 0, "{err}");
        let mut from_cli = round_trip!(proto::StatusReply, out);
        let mut from_grpc = lab.status().await.expect("status");
        for s in [&mut from_cli, &mut from_grpc] {
            for m in &mut s.members {
                m.lease_age_ms = 0;
            }
        }
        assert_eq!(from_cli, from_grpc);
        let pending = from_cli.pending.clone().expect("a pending request");
        assert_eq!(pending.id, scheduled.request_id, "{out}");
        assert_eq!(pending.requested_by, lockstep_testkit::pki::OPERATOR);
        assert_eq!(pending.by_note, "jane");
        assert_eq!(pending.reason, "planned night work");
        assert_eq!(pending.to, PSetup::Hot as i32);
        assert_eq!(pending.kind, "switchover");
        assert_eq!(pending.not_before, scheduled.scheduled_at);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(v["pending"]["to"], "hot", "{out}");
        // The status page's JSON shows it too.
        let page = lockstep_testkit::http::http_once(
            lab.sidecars[1].spec.status,
            hyper::Method::GET,
            "/status",
            None,
            Duration::from_secs(2),
        )
        .await
        .expect("GET /status");
        let page: serde_json::Value = serde_json::from_slice(&page.body).expect("JSON");
        assert_eq!(page["pending"]["id"], pending.id.as_str(), "{page}");
        assert_eq!(page["pending"]["to"], "hot", "{page}");
        assert_eq!(page["pending"]["reason"], "planned night work", "{page}");
        assert_eq!(
            page["pending"]["requested_by"],
            pending.requested_by.as_str()
        );
        assert_eq!(page["pending"]["not_before"], pending.not_before.as_str());
        let (code, out, err) = cli(&lab, 0, &["--json", "cancel", &pending.id]);
        assert_eq!(code, 0, "{err}");
        let cancelled = round_trip!(proto::CancelReply, out);
        assert_eq!(cancelled.id, pending.id, "{out}");
        assert_eq!(cancelled.not_before, pending.not_before, "{out}");
        assert!(lab.status().await.expect("status").pending.is_none());

        // --watch: a line per change; a pause shows within a second or so.
        let mut watch = lockstep()
            .envs(lab.cli_env(0))
            .args(["--json", "status", "--watch"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("watch");
        let stdout = watch.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first: proto::StatusReply = serde_json::from_str(
            &rx.recv_timeout(Duration::from_secs(10))
                .expect("first status"),
        )
        .expect("json line");
        assert!(!first.paused);
        let paused_at = Instant::now();
        cli(&lab, 1, &["pause", "--reason", "watch me"]);
        let mut saw = false;
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
            let s: proto::StatusReply = serde_json::from_str(&line).expect("json line");
            if s.paused {
                saw = true;
                break;
            }
        }
        let _ = watch.kill();
        let _ = watch.wait();
        assert!(saw, "status --watch did not show the pause");
        println!(
            "status --watch showed the pause {:?} after the pause command returned",
            paused_at.elapsed()
        );
    });
}

/// A benchmark figure, not a timed assertion: `lockstep status` (a whole
/// CLI process: start, mutual-TLS connect, the Admin call with its fan-out
/// to both members, the table) against a 2-member lab link on loopback.
#[test]
fn status_latency_figure() {
    rt().block_on(async {
        let lab = Lab::start("cli-latency", LabOptions::default())
            .await
            .expect("lab");
        let env = lab.cli_env(0);
        let mut runs = Vec::new();
        for _ in 0..5 {
            let _ = cli(&lab, 0, &["status"]);
        }
        for _ in 0..200 {
            let t = Instant::now();
            let out = lockstep().envs(env.clone()).arg("status").output().expect("status");
            runs.push(t.elapsed());
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        runs.sort();
        let pct = |p: f64| runs[((runs.len() as f64 * p) as usize).min(runs.len() - 1)];
        println!(
            "lockstep status, 2 members, mutual TLS, loopback, 200 runs: median {:?}, p90 {:?}, p99 {:?}, max {:?}",
            pct(0.5),
            pct(0.9),
            pct(0.99),
            runs[runs.len() - 1]
        );
        // The server's share: the Admin call alone over one open channel.
        let mut admin = lab.admin(0).await.expect("admin");
        let mut calls = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            admin.status(proto::StatusRequest {}).await.expect("status");
            calls.push(t.elapsed());
        }
        calls.sort();
        println!(
            "Admin.Status call alone (open channel), 200 calls: median {:?}, p99 {:?}",
            calls[100],
            calls[198]
        );
    });
}

#[test]
fn help_lists_the_exit_codes_and_force_is_a_hidden_alias() {
    let out = run_to_end(lockstep().arg("--help")).expect("run");
    assert!(out.success());
    for line in [
        "Exit codes:",
        "0  done",
        "1  refused",
        "2  bad usage or bad config",
        "3  unreachable",
        "4  accepted but not complete within the timeout",
    ] {
        assert!(out.stdout.contains(line), "{line:?} in {}", out.stdout);
    }
    let out = run_to_end(lockstep().args(["failover", "--help"])).expect("run");
    assert!(out.stdout.contains("--ignore-health"), "{}", out.stdout);
    assert!(
        out.stdout.contains("--dry-run") && out.stdout.contains("--yes"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("--force"), "{}", out.stdout);
    // The old flag still parses: the call gets as far as the (absent) sidecar.
    let out = run_to_end(lockstep().args([
        "--endpoint",
        "127.0.0.1:1",
        "failover",
        "--to",
        "warm",
        "--reason",
        "x",
        "--force",
    ]))
    .expect("run");
    assert_eq!(out.code, Some(3), "{}", out.stderr);
    // A bad --since is a usage error before any call.
    let out =
        run_to_end(lockstep().args(["--endpoint", "127.0.0.1:1", "history", "--since", "soon"]))
            .expect("run");
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("neither an RFC 3339 time"),
        "{}",
        out.stderr
    );
}

#[test]
fn completions_and_man_pages_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run_to_end(lockstep().args(["completions", shell])).expect("run");
        assert!(out.success(), "{shell}: {}", out.stderr);
        assert!(
            out.stdout.contains("switchover") && out.stdout.contains("ignore-health"),
            "{shell}"
        );
    }
    let out = run_to_end(lockstep().arg("man")).expect("run");
    assert!(out.success(), "{}", out.stderr);
    assert!(
        out.stdout.contains(".TH lockstep 1"),
        "{}",
        &out.stdout[..200.min(out.stdout.len())]
    );
    assert!(
        out.stdout.contains("Exit codes"),
        "the exit codes are in the man page"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run_to_end(lockstep().arg("man").arg("--dir").arg(dir.path())).expect("run");
    assert!(out.success(), "{}", out.stderr);
    for page in ["lockstep.1", "lockstep-switchover.1", "lockstep-status.1"] {
        assert!(dir.path().join(page).exists(), "{page}");
    }
    let out = run_to_end(lockstep().args(["man", "--dir", "/nonexistent/man1"])).expect("run");
    assert_eq!(out.code, Some(2), "{}", out.stderr);
}
