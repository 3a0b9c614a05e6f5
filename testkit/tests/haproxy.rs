//! The HAProxy adapter against a real HAProxy 2.6 (Debian's), on free
//! loopback ports. In-test stand-ins: two TCP backends that say who they are
//! ("hot" / "warm") on connect, and an HTTP check server that plays the
//! sidecar's check endpoint (200 for the server names a test allows) and can
//! die or freeze. Timing figures are printed, not asserted, except D.

use lockstep::lb::haproxy::{ExpectedChecks, Haproxy, HaproxyTemplate};
use lockstep::lb::{LbError, LoadBalancer};
use lockstep::protocol::{LbTarget, Setup};
use lockstep_testkit::lab::haproxy::{HaproxyInputs, HaproxyProcess};
use lockstep_testkit::lab::process::find_program;
use lockstep_testkit::lab::sidecar::Timing;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

const HOT: LbTarget = LbTarget::Serve(Setup::Hot);
const WARM: LbTarget = LbTarget::Serve(Setup::Warm);

/// A backend that writes its name on every connection and keeps the
/// session open until the peer closes it.
async fn identifying_backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("backend addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if s.write_all(format!("{name}\n").as_bytes()).await.is_ok() {
                    let mut sink = [0u8; 256];
                    while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
                }
            });
        }
    });
    addr
}

const ANSWER: u8 = 0;
const ANSWER_THEN_REFUSE: u8 = 1;
const ANSWER_THEN_FREEZE: u8 = 2;
const REFUSE: u8 = 3;
const FREEZE: u8 = 4;

/// Plays the sidecar's check endpoint: `GET /check/<server>` answers 200
/// for allowed names, 503 otherwise. It can die (connections refused) or
/// freeze (connections accepted, never answered) right after a 200.
struct CheckServer {
    addr: SocketAddr,
    state: Arc<CheckState>,
}

struct CheckState {
    allowed: Mutex<HashSet<String>>,
    mode: AtomicU8,
    /// When the last 200 was written, per server name.
    last_ok: Mutex<Vec<(String, Instant)>>,
    closed: Notify,
}

impl CheckServer {
    async fn start() -> CheckServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind check");
        let addr = listener.local_addr().expect("check addr");
        let state = Arc::new(CheckState {
            allowed: Mutex::new(HashSet::new()),
            mode: AtomicU8::new(ANSWER),
            last_ok: Mutex::new(Vec::new()),
            closed: Notify::new(),
        });
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((s, _)) = accepted else { return };
                        tokio::spawn(answer_check(s, st.clone()));
                    }
                    // Dropping the listener: connections are refused.
                    _ = st.closed.notified() => return,
                }
            }
        });
        CheckServer { addr, state }
    }

    fn allow(&self, names: &[&str]) {
        *self.state.allowed.lock().expect("lock") = names.iter().map(|s| s.to_string()).collect();
    }

    fn set_mode(&self, mode: u8) {
        self.state.mode.store(mode, Ordering::SeqCst);
        if mode == REFUSE {
            self.state.closed.notify_one();
        }
    }

    fn last_ok(&self, name: &str) -> Option<Instant> {
        self.state
            .last_ok
            .lock()
            .expect("lock")
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, t)| *t)
    }
}

async fn answer_check(s: TcpStream, st: Arc<CheckState>) {
    let mut reader = BufReader::new(s);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).await.is_err() {
        return;
    }
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header).await {
            Ok(0) | Err(_) => return,
            Ok(_) if header == "\r\n" || header == "\n" => break,
            Ok(_) => {}
        }
    }
    match st.mode.load(Ordering::SeqCst) {
        REFUSE => return,
        FREEZE => {
            // Hold the connection unanswered until HAProxy gives up.
            let mut sink = [0u8; 64];
            while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
            return;
        }
        _ => {}
    }
    let name = request_line
        .split_whitespace()
        .nth(1)
        .and_then(|path| path.strip_prefix("/check/"))
        .unwrap_or_default()
        .to_string();
    let ok = st.allowed.lock().expect("lock").contains(&name);
    let status = if ok {
        "200 OK"
    } else {
        "503 Service Unavailable"
    };
    let answer = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    if reader.get_mut().write_all(answer.as_bytes()).await.is_err() || !ok {
        return;
    }
    let now = Instant::now();
    st.last_ok.lock().expect("lock").push((name, now));
    let current = st.mode.load(Ordering::SeqCst);
    let next = match current {
        ANSWER_THEN_REFUSE => REFUSE,
        ANSWER_THEN_FREEZE => FREEZE,
        _ => return,
    };
    let switched = st
        .mode
        .compare_exchange(current, next, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok();
    if switched && next == REFUSE {
        st.closed.notify_one();
    }
}

/// One HAProxy with its backends and check server.
struct Rig {
    haproxy: HaproxyProcess,
    check: CheckServer,
    dir: tempfile::TempDir,
}

impl Rig {
    /// With the lab's check timing.
    async fn start(name: &str) -> Rig {
        Rig::start_with(name, &Timing::default()).await
    }

    async fn start_with(name: &str, timing: &Timing) -> Rig {
        let hot = identifying_backend("hot").await;
        let warm = identifying_backend("warm").await;
        let check = CheckServer::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let inputs = HaproxyInputs::new(name, hot, warm, check.addr).with_timing(timing);
        let path = dir.path().to_path_buf();
        // Starting waits (blocking) for HAProxy to listen.
        let haproxy = tokio::task::block_in_place(|| HaproxyProcess::spawn(inputs, &path))
            .expect("start haproxy");
        Rig {
            haproxy,
            check,
            dir,
        }
    }

    fn lb(&self) -> Haproxy {
        self.haproxy.adapter()
    }

    fn d(&self) -> Duration {
        self.haproxy.template().down_detection_bound()
    }

    /// Who answers a new connection through HAProxy, if anyone.
    async fn who(&self) -> Option<String> {
        session(self.haproxy.frontend).await.map(|(_, who)| who)
    }
}

/// A session through HAProxy and the backend's name, or `None` when
/// HAProxy closes it without routing it.
async fn session(frontend: SocketAddr) -> Option<(BufReader<TcpStream>, String)> {
    let s = TcpStream::connect(frontend)
        .await
        .expect("connect to the frontend");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    match tokio::time::timeout(Duration::from_secs(2), r.read_line(&mut line)).await {
        Ok(Ok(n)) if n > 0 => Some((r, line.trim().to_string())),
        _ => None,
    }
}

/// Waits for HAProxy to close an established session; `None` if it stays
/// open for `limit`.
async fn closed_within(s: &mut BufReader<TcpStream>, limit: Duration) -> Option<Instant> {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(limit, s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Some(Instant::now()),
        _ => None,
    }
}

async fn observed(lb: &Haproxy) -> LbTarget {
    lb.observe().await.expect("observe").target
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_blocked_and_switches_break_before_make() {
    let rig = Rig::start("switch").await;
    let lb = rig.lb();
    rig.check.allow(&["hot", "warm"]);

    let first = lb.observe().await.expect("observe");
    assert_eq!(
        first.target,
        LbTarget::Blocked,
        "a fresh HAProxy routes nowhere"
    );
    assert!(
        !first.restarted,
        "nothing to compare with on the first look"
    );
    assert_eq!(
        rig.who().await,
        None,
        "blocked: connections are closed unrouted"
    );

    assert_eq!(lb.apply(HOT, None).await.expect("serve hot").target, HOT);
    assert_eq!(observed(&lb).await, HOT);
    let (mut to_hot, who) = session(rig.haproxy.frontend).await.expect("routed");
    assert_eq!(who, "hot");

    let switched = Instant::now();
    lb.apply(WARM, None).await.expect("serve warm");
    let killed = closed_within(&mut to_hot, Duration::from_secs(2))
        .await
        .expect("the session to hot is killed by the switch");
    println!(
        "switch to warm: established hot session closed {:?} after apply started",
        killed - switched
    );
    assert_eq!(rig.who().await.as_deref(), Some("warm"));
    assert_eq!(observed(&lb).await, WARM);

    let (mut to_warm, _) = session(rig.haproxy.frontend).await.expect("routed");
    lb.apply(LbTarget::Blocked, None).await.expect("block");
    closed_within(&mut to_warm, Duration::from_secs(2))
        .await
        .expect("blocking kills the session to warm");
    assert_eq!(rig.who().await, None);
    assert_eq!(observed(&lb).await, LbTarget::Blocked);

    // A serve whose deadline has passed (its sidecar was paused after
    // deciding) disables the other setup and enables nothing.
    lb.apply(HOT, None).await.expect("serve hot");
    match lb.apply(WARM, Some(Instant::now())).await {
        Err(lockstep::lb::LbError::Expired { wanted }) => assert_eq!(wanted, WARM),
        other => panic!("expected Expired, got {other:?}"),
    }
    assert_eq!(observed(&lb).await, LbTarget::Blocked);
    assert_eq!(rig.who().await, None, "a late serve routes nowhere");
    lb.apply(LbTarget::Blocked, None).await.expect("block");

    // Re-applying what is already applied changes nothing and keeps sessions.
    lb.apply(HOT, None).await.expect("serve hot");
    let (mut kept, _) = session(rig.haproxy.frontend).await.expect("routed");
    lb.apply(HOT, None).await.expect("serve hot again");
    assert!(
        closed_within(&mut kept, Duration::from_millis(300))
            .await
            .is_none(),
        "re-applying the same setup must not kill its sessions"
    );
    println!("guarantees: {}", lb.guarantees());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_haproxy_comes_up_blocked_and_is_reported() {
    let mut rig = Rig::start("restart").await;
    let lb = rig.lb();
    rig.check.allow(&["hot"]);
    lb.apply(HOT, None).await.expect("serve hot");
    assert!(!lb.observe().await.expect("observe").restarted);
    let old_pid = rig.haproxy.pid();

    tokio::task::block_in_place(|| rig.haproxy.restart()).expect("restart");
    assert_ne!(rig.haproxy.pid(), old_pid);
    assert_eq!(rig.who().await, None, "restarted: routes nowhere");
    let after = lb.observe().await.expect("observe");
    assert_eq!(
        after,
        lockstep::lb::Observed {
            target: LbTarget::Blocked,
            restarted: true
        }
    );
    assert!(
        !lb.observe().await.expect("observe").restarted,
        "a restart is reported once"
    );

    lb.apply(HOT, None)
        .await
        .expect("re-apply after the restart");
    assert_eq!(rig.who().await.as_deref(), Some("hot"));
}

/// Kills or freezes the check endpoint right after a passing check, and
/// measures until HAProxy has killed the session (and marks the server
/// DOWN): the dead-man's switch, against D.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_or_frozen_sidecar_trips_the_dead_mans_switch_within_d() {
    let lab = Timing::default();
    // The shipped config's timing (the sidecar's [lb] defaults).
    let shipped = Timing {
        check_inter: Duration::from_millis(500),
        check_fall: 2,
        check_rise: 1,
        check_timeout: Duration::from_millis(300),
        ..Timing::default()
    };
    for (what, mode, timing) in [
        ("refused (sidecar dead)", ANSWER_THEN_REFUSE, &lab),
        ("no answer (sidecar frozen)", ANSWER_THEN_FREEZE, &lab),
        ("no answer (sidecar frozen)", ANSWER_THEN_FREEZE, &shipped),
    ] {
        let rig = Rig::start_with("deadman", timing).await;
        let lb = rig.lb();
        let d = rig.d();
        rig.check.allow(&["hot"]);
        lb.apply(HOT, None).await.expect("serve hot");
        let (mut s, _) = session(rig.haproxy.frontend).await.expect("routed");
        // Let a passing check through first, so health is at its maximum.
        let deadline = Instant::now() + Duration::from_secs(3);
        while rig.check.last_ok("hot").is_none() {
            assert!(
                Instant::now() < deadline,
                "no check reached the check server"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        rig.check.set_mode(mode);
        let killed = closed_within(&mut s, d + Duration::from_secs(3))
            .await
            .expect("the dead-man's switch kills the session");
        let last_ok = rig.check.last_ok("hot").expect("a passing check");
        let took = killed.saturating_duration_since(last_ok);
        assert_eq!(observed(&lb).await, LbTarget::Blocked, "hot is DOWN");
        let t = &rig.haproxy.template();
        println!(
            "dead-man's switch, check endpoint {what}: session killed {took:?} after the last 200 \
             (inter {:?}, fall {}, timeout check {:?}: D = {d:?})",
            t.check_inter, t.check_fall, t.check_timeout
        );
        // A little slack for this test's own scheduling on a busy machine.
        assert!(
            took <= d + Duration::from_millis(100),
            "{what}: {took:?} exceeds D = {d:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_its_checks_took_down_is_not_forced_up() {
    let rig = Rig::start("down").await;
    let lb = rig.lb();
    rig.check.allow(&["hot"]);
    lb.apply(HOT, None).await.expect("serve hot");
    // The sidecar withdraws its answer: HAProxy takes hot down itself.
    rig.check.allow(&[]);
    let deadline = Instant::now() + rig.d() + Duration::from_secs(2);
    while observed(&lb).await != LbTarget::Blocked {
        assert!(Instant::now() < deadline, "hot not DOWN within D");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    match lb.apply(HOT, None).await {
        Err(LbError::NotConfirmed { wanted, seen }) => {
            assert_eq!(wanted, HOT);
            assert!(seen.contains("DOWN by its health check"), "{seen}");
        }
        other => panic!("applying hot over a failing check must not confirm: {other:?}"),
    }
    // Once the check endpoint answers 200 again, `rise` checks bring it up.
    rig.check.allow(&["hot"]);
    let back = Instant::now();
    while observed(&lb).await != HOT {
        assert!(back.elapsed() < Duration::from_secs(3), "hot not back up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "hot back up {:?} after its check passed again",
        back.elapsed()
    );
    lb.apply(HOT, None).await.expect("serve hot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_haproxys_answer() {
    let rig = Rig::start("errors").await;
    let socket = rig.haproxy.stats_socket.clone();

    let no_backend = Haproxy::new(&socket, "nobe", "hot", "warm");
    match no_backend.apply(LbTarget::Blocked, None).await {
        Err(LbError::Rejected { command, answer }) => {
            assert_eq!(answer, "No such backend.");
            println!("bad backend: {}", LbError::Rejected { command, answer });
        }
        other => panic!("expected Rejected: {other:?}"),
    }
    match no_backend.observe().await {
        Err(LbError::Rejected { answer, .. }) => assert_eq!(answer, "Can't find backend."),
        other => panic!("expected Rejected: {other:?}"),
    }

    // A wrong name for the server to disable: the break fails, so the other
    // server must not be enabled.
    rig.check.allow(&["hot"]);
    let wrong_warm = Haproxy::new(&socket, "kme", "hot", "tepid");
    match wrong_warm.apply(HOT, None).await {
        Err(e @ LbError::Rejected { .. }) => {
            assert!(e.to_string().contains("No such server."), "{e}");
            println!("bad server: {e}");
        }
        other => panic!("expected Rejected: {other:?}"),
    }
    assert_eq!(
        observed(&rig.lb()).await,
        LbTarget::Blocked,
        "hot stayed disabled"
    );

    let missing = Haproxy::new(rig.dir.path().join("nope.sock"), "kme", "hot", "warm");
    match missing.apply(LbTarget::Blocked, None).await {
        Err(e @ LbError::Unreachable { .. }) => println!("missing socket: {e}"),
        other => panic!("expected Unreachable: {other:?}"),
    }

    // A frozen HAProxy: the exchange times out.
    let slow = rig.lb().with_timeout(Duration::from_millis(200));
    rig.haproxy
        .signal(nix::sys::signal::Signal::SIGSTOP)
        .expect("SIGSTOP");
    let result = slow.observe().await;
    rig.haproxy
        .signal(nix::sys::signal::Signal::SIGCONT)
        .expect("SIGCONT");
    match result {
        Err(e @ LbError::Timeout { .. }) => println!("frozen HAProxy: {e}"),
        other => panic!("expected Timeout: {other:?}"),
    }
}

/// What the sidecar's config would assume of `rig`'s checks, with `fall`.
fn expecting(rig: &Rig, timing: &Timing, fall: u32) -> ExpectedChecks {
    ExpectedChecks {
        fall,
        rise: timing.check_rise,
        inter: timing.check_inter,
        timeout: timing.check_timeout,
        target: rig.check.addr,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_larger_fall_than_the_config_assumes_is_refused_when_haproxy_shows_it() {
    // HAProxy runs with fall 5; the sidecar's config says 2.
    let timing = Timing {
        check_fall: 5,
        ..Timing::default()
    };
    let rig = Rig::start_with("fall", &timing).await;
    rig.check.allow(&["hot", "warm"]);
    let assumes_2 = rig.lb().with_expected_checks(expecting(&rig, &timing, 2));

    // Both servers start `disabled`: HAProxy 2.6 shows no fall or rise for
    // servers in maintenance, only where the checks go, and those match.
    let v = assumes_2
        .verify_checks(&expecting(&rig, &timing, 2))
        .await
        .expect("read");
    assert_eq!(v.refusal(), None, "{v:?}");
    assert_eq!(
        v.unshown,
        vec![
            "kme/hot: fall",
            "kme/hot: rise",
            "kme/warm: fall",
            "kme/warm: rise"
        ]
    );
    assumes_2
        .preflight()
        .await
        .expect("nothing unsafe shown yet");

    // Enabling hot shows fall 5 on the same Runtime API line: hot goes back
    // into maintenance at once and the adapter refuses from then on.
    let why = match assumes_2.apply(HOT, None).await {
        Err(LbError::Misconfigured(why)) => why,
        other => panic!("expected Misconfigured, got {other:?}"),
    };
    println!("refused: {why}");
    for want in [
        "server kme/hot",
        "HAProxy reports fall 5",
        "the config assumes 2 (lb.check_fall)",
    ] {
        assert!(why.contains(want), "missing {want:?} in {why}");
    }
    assert_eq!(observed(&rig.lb()).await, LbTarget::Blocked);
    assert_eq!(rig.who().await, None, "nothing routes");
    assert_eq!(assumes_2.refusal().as_deref(), Some(why.as_str()));
    assert!(matches!(
        assumes_2.apply(WARM, None).await,
        Err(LbError::Misconfigured(_))
    ));
    assert_eq!(
        observed(&rig.lb()).await,
        LbTarget::Blocked,
        "warm stayed disabled"
    );
    assert!(
        assumes_2.apply(LbTarget::Blocked, None).await.is_ok(),
        "blocking is always allowed"
    );

    // An adapter whose config agrees (fall 5) serves, and then sees fall 5.
    let assumes_5 = rig.lb().with_expected_checks(expecting(&rig, &timing, 5));
    assert_eq!(
        assumes_5.apply(HOT, None).await.expect("serve hot").target,
        HOT
    );
    let v = assumes_5
        .verify_checks(&expecting(&rig, &timing, 5))
        .await
        .expect("read");
    assert_eq!((v.refusal(), v.differences.len()), (None, 0), "{v:?}");
    assert_eq!(v.unshown, vec!["kme/warm: fall", "kme/warm: rise"]);
    // With hot out of maintenance, a sidecar assuming fall 2 refuses to
    // start.
    let late = rig.lb().with_expected_checks(expecting(&rig, &timing, 2));
    match late.preflight().await {
        Err(LbError::Misconfigured(why)) => assert!(why.contains("fall 5"), "{why}"),
        other => panic!("expected Misconfigured, got {other:?}"),
    }
    // A smaller fall than assumed makes D shorter: only reported.
    let assumes_7 = rig.lb().with_expected_checks(expecting(&rig, &timing, 7));
    assumes_7.preflight().await.expect("fall 5 < 7 is safe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_aimed_elsewhere_are_refused_before_anything_is_enabled() {
    let timing = Timing::default();
    let rig = Rig::start("target").await;
    rig.check.allow(&["hot", "warm"]);
    // The sidecar listens on another port than the one HAProxy checks.
    let mut elsewhere = expecting(&rig, &timing, timing.check_fall);
    elsewhere
        .target
        .set_port(rig.check.addr.port().wrapping_add(1).max(1));
    let lb = rig.lb().with_expected_checks(elsewhere);
    let why = match lb.preflight().await {
        Err(LbError::Misconfigured(why)) => why,
        other => panic!("expected Misconfigured, got {other:?}"),
    };
    assert!(
        why.contains(&format!("check target {}", rig.check.addr)),
        "{why}"
    );
    assert!(matches!(lb.observe().await, Err(LbError::Misconfigured(_))));
    assert!(matches!(
        lb.apply(HOT, None).await,
        Err(LbError::Misconfigured(_))
    ));
    assert_eq!(observed(&rig.lb()).await, LbTarget::Blocked);
    // The same HAProxy with the right target passes.
    let right = rig
        .lb()
        .with_expected_checks(expecting(&rig, &timing, timing.check_fall));
    right.preflight().await.expect("matching settings");
    assert_eq!(right.apply(HOT, None).await.expect("serve").target, HOT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_latency() {
    let rig = Rig::start("latency").await;
    let lb = rig.lb();
    rig.check.allow(&["hot", "warm"]);
    let mut by_kind: Vec<(LbTarget, Vec<Duration>)> =
        vec![(HOT, vec![]), (WARM, vec![]), (LbTarget::Blocked, vec![])];
    for i in 0..51 {
        let (target, samples) = &mut by_kind[i % 3];
        let t = Instant::now();
        lb.apply(*target, None).await.expect("apply");
        samples.push(t.elapsed());
    }
    let mut observe = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        lb.observe().await.expect("observe");
        observe.push(t.elapsed());
    }
    let mut all: Vec<Duration> = by_kind.iter().flat_map(|(_, s)| s.clone()).collect();
    let summary = |s: &mut Vec<Duration>| {
        s.sort();
        format!(
            "median {:?}, p90 {:?}, max {:?} (n={})",
            s[s.len() / 2],
            s[s.len() * 9 / 10],
            s[s.len() - 1],
            s.len()
        )
    };
    println!("apply (all): {}", summary(&mut all));
    for (target, samples) in &mut by_kind {
        println!("apply({target}) after a change: {}", summary(samples));
    }
    println!("observe: {}", summary(&mut observe));
}

fn haproxy_check(cfg: &Path) {
    let haproxy = find_program("haproxy").expect("haproxy");
    let out = std::process::Command::new(haproxy)
        .arg("-c")
        .arg("-f")
        .arg(cfg)
        .output()
        .expect("run haproxy -c");
    assert!(
        out.status.success(),
        "{} is not valid:\n{}",
        cfg.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The config without comments, blank lines or alignment.
fn directives(cfg: &str) -> Vec<String> {
    cfg.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

#[test]
fn rendered_and_shipped_configs_are_valid_and_agree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = |s: &str| s.parse::<SocketAddr>().expect("addr");
    for (check, hot) in [("127.0.0.1:7401", "127.0.0.1:2"), ("[::1]:7401", "[::1]:2")] {
        let t = HaproxyTemplate::new(
            addr("127.0.0.1:1"),
            addr(hot),
            addr("127.0.0.1:3"),
            addr(check),
            dir.path().join("s.sock"),
        );
        let cfg = dir.path().join("rendered.cfg");
        std::fs::write(&cfg, t.render()).expect("write");
        haproxy_check(&cfg);
    }
    let lab = HaproxyTemplate {
        check_inter: Timing::default().check_inter,
        check_fall: Timing::default().check_fall,
        check_timeout: Timing::default().check_timeout,
        ..HaproxyTemplate::new(
            addr("127.0.0.1:1"),
            addr("127.0.0.1:2"),
            addr("127.0.0.1:3"),
            addr("127.0.0.1:4"),
            "/s.sock",
        )
    };
    println!("lab timing: D = {:?}", lab.down_detection_bound());

    let shipped_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/haproxy/haproxy.cfg");
    haproxy_check(Path::new(shipped_path));
    let shipped = std::fs::read_to_string(shipped_path).expect("read the shipped config");
    let example = HaproxyTemplate::new(
        addr("0.0.0.0:8443"),
        addr("10.0.1.10:8443"),
        addr("10.0.2.10:8443"),
        addr("127.0.0.1:7401"),
        "/run/haproxy/admin.sock",
    );
    assert_eq!(
        directives(&shipped),
        directives(&example.render()),
        "deploy/haproxy/haproxy.cfg drifted from HaproxyTemplate::render"
    );
    println!("shipped example: D = {:?}", example.down_detection_bound());
}
