//! HAProxy over its Runtime API (the stats socket, `level admin`).
//!
//! Routing is set with `set server <be>/<srv> state ready|maint` and
//! `shutdown sessions server <be>/<srv>`, always break-before-make, and every
//! change is confirmed by reading `show servers state` back. The config
//! ([`HaproxyTemplate::render`]) starts both servers `disabled` and points
//! their health checks at the sidecar: the dead-man's switch.
//!
//! What this relies on was measured on Debian's HAProxy 2.6.12 (see
//! `deploy/haproxy/README.md`):
//! * a server set `ready` from maintenance is UP at once (< 1 ms), without
//!   waiting for `rise` checks; health checks are paused while in maintenance;
//! * HAProxy runs every command of a `;`-separated line even after one fails,
//!   so a break and its make never share a line;
//! * `shutdown sessions server` closes established TCP sessions at once.

use super::{LbError, LoadBalancer, Observed};
use lockstep_core::{LbTarget, Setup};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tracing::{debug, debug_span, Instrument};

/// Bound on one Runtime API exchange (connect, send, read the answer).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

/// `timeout connect` in the rendered config. It also bounds the connect
/// phase of every health check (HAProxy allows `min(timeout connect, inter)`
/// before `timeout check` starts), so it is part of D.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Answers larger than this are not HAProxy talking to us.
const MAX_ANSWER_BYTES: u64 = 1 << 20;

// ---------------------------------------------------------------------------
// Config rendering (pure)
// ---------------------------------------------------------------------------

/// D, the down-detection bound: after the last passing check answer reaches
/// HAProxy, the longest it takes to mark that server DOWN and kill its
/// sessions when no further check passes (sidecar dead, frozen or refusing),
/// for a config rendered by [`HaproxyTemplate::render`]:
///
/// ```text
/// D = inter + (fall - 1) × fastinter + fall × (min(timeout connect, inter) + timeout check)
///   = fall × (inter + min(timeout connect, inter) + timeout check)     (fastinter = inter)
/// ```
///
/// Why, from HAProxy 2.6's check scheduler and measurements:
/// * the next check starts `inter` after the previous one *finished*
///   (not after it started); once one check has failed, later ones start
///   `fastinter` after the previous failure. No `spread-checks`, no jitter;
/// * a failing check ends at once when the port refuses or answers non-200,
///   but a frozen endpoint (the kernel accepts, nobody answers) costs up to
///   the connect allowance `min(timeout connect, inter)` plus `timeout
///   check` ("an additional read timeout", says the manual). Measured with
///   inter 500ms, timeout check 100ms: 250 to 535 ms per check, not 100;
/// * the server goes DOWN on the `fall`-th failure (fewer right after
///   `state ready`, which sets the check health to `rise`), and
///   `on-marked-down shutdown-sessions` kills its sessions within a
///   millisecond.
///
/// `fall × inter + timeout check` (the first guess) is too small for a frozen
/// sidecar: inter 500ms, fall 2, timeout check 300ms took up to 2008 ms,
/// against 1300 ms for the guess and 2600 ms for this bound.
pub fn down_detection_bound(
    check_inter: Duration,
    check_fall: u32,
    check_timeout: Duration,
) -> Duration {
    let inter = rendered(check_inter);
    inter
        .min(CONNECT_TIMEOUT)
        .checked_add(rendered(check_timeout))
        .and_then(|per_failed_check| per_failed_check.checked_add(inter))
        .and_then(|per_check| per_check.checked_mul(check_fall))
        .unwrap_or(Duration::MAX)
}

/// Durations as the config renders them: whole milliseconds, rounded up,
/// at least 1 ms (HAProxy refuses 0 for `inter`).
fn rendered(d: Duration) -> Duration {
    Duration::from_millis(millis(d))
}

fn millis(d: Duration) -> u64 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX).max(1)
}

/// Everything needed to render a HAProxy config that lockstep can drive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HaproxyTemplate {
    /// Where clients (SAEs) connect; TLS passes through to the KME.
    pub frontend_bind: SocketAddr,
    /// The backend holding both setups' servers.
    pub backend: String,
    /// This end's KME in the hot setup.
    pub hot: SocketAddr,
    /// This end's KME in the warm setup.
    pub warm: SocketAddr,
    /// Server names, as the sidecar's `lb.server_hot` / `lb.server_warm`.
    pub server_hot: String,
    pub server_warm: String,
    /// The sidecar's HTTP check endpoint (`[http] listen`).
    pub check_addr: SocketAddr,
    pub check_inter: Duration,
    pub check_fall: u32,
    pub check_rise: u32,
    pub check_timeout: Duration,
    /// The Runtime API socket the sidecar drives (`lb.socket`).
    pub stats_socket: PathBuf,
}

impl HaproxyTemplate {
    /// A template with lockstep's default names (backend `kme`, servers
    /// `hot` and `warm`) and check timing (the sidecar's `[lb]` defaults).
    pub fn new(
        frontend_bind: SocketAddr,
        hot: SocketAddr,
        warm: SocketAddr,
        check_addr: SocketAddr,
        stats_socket: impl Into<PathBuf>,
    ) -> HaproxyTemplate {
        HaproxyTemplate {
            frontend_bind,
            backend: "kme".into(),
            hot,
            warm,
            server_hot: "hot".into(),
            server_warm: "warm".into(),
            check_addr,
            check_inter: Duration::from_millis(500),
            check_fall: 2,
            check_rise: 1,
            check_timeout: Duration::from_millis(300),
            stats_socket: stats_socket.into(),
        }
    }

    /// The server that routes to `setup`.
    pub fn server_name(&self, setup: Setup) -> &str {
        match setup {
            Setup::Hot => &self.server_hot,
            Setup::Warm => &self.server_warm,
        }
    }

    /// D for this template; see [`down_detection_bound`].
    pub fn down_detection_bound(&self) -> Duration {
        down_detection_bound(self.check_inter, self.check_fall, self.check_timeout)
    }

    /// A TCP-mode config (the KME API is mutual TLS, passed through). Both
    /// servers start `disabled`, so a (re)started HAProxy routes nowhere
    /// until its sidecar enables one. Each server's health check asks the
    /// sidecar about that server by name; when the sidecar stops answering
    /// 200, the server goes DOWN and `on-marked-down shutdown-sessions`
    /// kills its sessions.
    pub fn render(&self) -> String {
        let ms = |d: Duration| format!("{}ms", millis(d));
        let inter = ms(self.check_inter);
        let check_ip = haproxy_ip(self.check_addr.ip());
        let check_port = self.check_addr.port();
        let be = &self.backend;
        let socket = self.stats_socket.display();
        format!(
            r#"# Rendered by lockstep (HaproxyTemplate::render). Both servers start
# disabled: this HAProxy routes nowhere until its lockstep sidecar enables one.
# D (down-detection bound) = {d_ms} ms.
global
    stats socket {socket} mode 600 level admin expose-fd listeners
    stats timeout 10s
    log stderr format short local0 notice
    # Keep out: spread-checks (D assumes checks exactly inter apart) and
    # server-state-file (a restarted HAProxy must come up blocked).

defaults
    mode tcp
    log global
    timeout connect {connect}
    timeout client 30s
    timeout server 30s
    timeout check {timeout_check}

frontend {be}_in
    bind {bind}
    default_backend {be}

backend {be}
    option httpchk
    http-check send meth GET uri-lf /check/%[srv_name]
    http-check expect status 200
    default-server inter {inter} fastinter {inter} downinter {inter} fall {fall} rise {rise} on-marked-down shutdown-sessions
    server {hot_name} {hot} check addr {check_ip} port {check_port} disabled
    server {warm_name} {warm} check addr {check_ip} port {check_port} disabled
"#,
            d_ms = self.down_detection_bound().as_millis(),
            connect = ms(CONNECT_TIMEOUT),
            timeout_check = ms(self.check_timeout),
            bind = self.frontend_bind,
            fall = self.check_fall,
            rise = self.check_rise,
            hot_name = self.server_hot,
            hot = self.hot,
            warm_name = self.server_warm,
            warm = self.warm,
        )
    }
}

/// An IP as HAProxy's `addr` keyword takes it: IPv6 in brackets.
fn haproxy_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// True for names HAProxy accepts for proxies and servers (letters, digits,
/// `-`, `_`, `.`, `:`). Anything else could also split a Runtime API line.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

// ---------------------------------------------------------------------------
// Parsing Runtime API answers (pure)
// ---------------------------------------------------------------------------

/// HAProxy's `srv_admin` maintenance bits: forced (0x01), inherited from a
/// tracked server (0x02), failed DNS resolution (0x20). 0x04 ("`disabled`
/// in the config") is not among them: it stays set after `state ready`.
const ADMIN_MAINT: u32 = 0x01 | 0x02 | 0x20;
/// Drain bits: forced (0x08), inherited (0x10).
const ADMIN_DRAIN: u32 = 0x08 | 0x10;

/// `srv_op_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpState {
    /// Down (by health checks, or because it is in maintenance).
    Stopped,
    /// Up, warming up (slowstart).
    Starting,
    /// Up.
    Running,
    /// Up, soft-stopping (no new sessions except persistent ones).
    Stopping,
}

impl OpState {
    fn from_code(code: u32) -> Option<OpState> {
        Some(match code {
            0 => OpState::Stopped,
            1 => OpState::Starting,
            2 => OpState::Running,
            3 => OpState::Stopping,
            _ => return None,
        })
    }
}

/// One server's line of `show servers state`, the fields lockstep uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerState {
    pub backend: String,
    pub name: String,
    pub op_state: OpState,
    /// `srv_admin_state` bits (see [`ServerState::in_maint`]).
    pub admin_state: u32,
    /// `srv_check_health`: 0 is down; `rise + fall - 1` is fully healthy.
    pub check_health: Option<u32>,
}

impl ServerState {
    /// In maintenance: takes no sessions whatever its health checks say.
    pub fn in_maint(&self) -> bool {
        self.admin_state & ADMIN_MAINT != 0
    }

    pub fn in_drain(&self) -> bool {
        self.admin_state & ADMIN_DRAIN != 0
    }

    /// Fully serving: enabled, not draining, UP.
    pub fn serving(&self) -> bool {
        !self.in_maint() && !self.in_drain() && self.op_state == OpState::Running
    }

    /// Might take new sessions (any up state outside maintenance). Errs on
    /// the side of "routes": only `Stopped` or maintenance count as not.
    pub fn may_route(&self) -> bool {
        !self.in_maint() && self.op_state != OpState::Stopped
    }
}

impl fmt::Display for ServerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = if self.in_maint() {
            "MAINT"
        } else if self.in_drain() {
            "DRAIN"
        } else {
            match self.op_state {
                OpState::Stopped => "DOWN (enabled, failing its health check)",
                OpState::Starting => "STARTING",
                OpState::Running => "UP",
                OpState::Stopping => "STOPPING",
            }
        };
        write!(
            f,
            "{}/{} {status} (admin_state {:#x}",
            self.backend, self.name, self.admin_state
        )?;
        if let Some(h) = self.check_health {
            write!(f, ", check health {h}")?;
        }
        f.write_str(")")
    }
}

/// Splits the answer to a `;`-separated line into one answer per command:
/// HAProxy ends each command's output with an empty line.
pub fn split_answers(raw: &str, commands: usize) -> Result<Vec<String>, LbError> {
    let mut answers = Vec::with_capacity(commands);
    let mut current: Vec<&str> = Vec::new();
    for line in raw.lines() {
        if line.is_empty() {
            answers.push(current.join("\n"));
            current.clear();
        } else {
            current.push(line);
        }
    }
    if !current.is_empty() {
        // Cut short (HAProxy closed mid-answer): keep it for the error.
        answers.push(current.join("\n"));
    }
    if answers.len() != commands {
        return Err(LbError::Parse(format!(
            "expected {commands} answers from HAProxy, got {}: {raw:?}",
            answers.len()
        )));
    }
    Ok(answers)
}

/// Parses `show servers state [<backend>]` (format version 1). Columns are
/// found by the header's names, so a HAProxy that adds columns still parses.
/// An answer that is not in this format (e.g. "Can't find backend.") is
/// `Rejected`.
pub fn parse_servers_state(command: &str, text: &str) -> Result<Vec<ServerState>, LbError> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    if lines.next().map(str::trim) != Some("1") {
        return Err(LbError::Rejected {
            command: command.to_string(),
            answer: text.trim().to_string(),
        });
    }
    // HAProxy 2.6's order, used if the header is missing.
    let mut columns: Vec<String> = [
        "be_id",
        "be_name",
        "srv_id",
        "srv_name",
        "srv_addr",
        "srv_op_state",
        "srv_admin_state",
        "srv_uweight",
        "srv_iweight",
        "srv_time_since_last_change",
        "srv_check_status",
        "srv_check_result",
        "srv_check_health",
    ]
    .map(String::from)
    .to_vec();
    let mut out = Vec::new();
    for line in lines {
        if let Some(header) = line.strip_prefix('#') {
            columns = header.split_whitespace().map(String::from).collect();
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let field = |name: &str| -> Result<&str, LbError> {
            columns
                .iter()
                .position(|c| c == name)
                .and_then(|i| fields.get(i).copied())
                .ok_or_else(|| LbError::Parse(format!("no {name} in server line {line:?}")))
        };
        let number = |name: &str| -> Result<u32, LbError> {
            let v = field(name)?;
            v.parse::<u32>()
                .map_err(|_| LbError::Parse(format!("{name} {v:?} is not a number in {line:?}")))
        };
        let op = number("srv_op_state")?;
        out.push(ServerState {
            backend: field("be_name")?.to_string(),
            name: field("srv_name")?.to_string(),
            op_state: OpState::from_code(op)
                .ok_or_else(|| LbError::Parse(format!("unknown srv_op_state {op} in {line:?}")))?,
            admin_state: number("srv_admin_state")?,
            check_health: number("srv_check_health").ok(),
        });
    }
    Ok(out)
}

/// Which HAProxy process answered: a change means it was restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessIdentity {
    pub pid: u32,
    /// `Start_time_sec` (HAProxy ≥ 2.6), in seconds since the epoch.
    pub start_time_sec: Option<u64>,
}

/// Parses `Pid` and `Start_time_sec` out of `show info`.
pub fn parse_show_info(command: &str, text: &str) -> Result<ProcessIdentity, LbError> {
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .map(str::trim)
    };
    let Some(pid) = value("Pid") else {
        return Err(LbError::Rejected {
            command: command.to_string(),
            answer: text.trim().to_string(),
        });
    };
    let pid = pid
        .parse()
        .map_err(|_| LbError::Parse(format!("Pid {pid:?} in `show info` is not a number")))?;
    let start_time_sec = match value("Start_time_sec") {
        Some(s) => Some(s.parse().map_err(|_| {
            LbError::Parse(format!(
                "Start_time_sec {s:?} in `show info` is not a number"
            ))
        })?),
        None => None,
    };
    Ok(ProcessIdentity {
        pid,
        start_time_sec,
    })
}

// ---------------------------------------------------------------------------
// The adapter
// ---------------------------------------------------------------------------

/// Drives one HAProxy backend with one server per setup. A clone tracks
/// restarts on its own (each reports a restart to its own caller).
#[derive(Debug)]
pub struct Haproxy {
    socket: PathBuf,
    backend: String,
    server_hot: String,
    server_warm: String,
    timeout: Duration,
    /// The HAProxy process `observe` last saw, to notice restarts.
    identity: Mutex<Option<ProcessIdentity>>,
}

impl Clone for Haproxy {
    fn clone(&self) -> Haproxy {
        let last = *self.identity.lock().unwrap_or_else(|p| p.into_inner());
        Haproxy {
            socket: self.socket.clone(),
            backend: self.backend.clone(),
            server_hot: self.server_hot.clone(),
            server_warm: self.server_warm.clone(),
            timeout: self.timeout,
            identity: Mutex::new(last),
        }
    }
}

impl Haproxy {
    /// An adapter for `backend` on the Runtime API at `socket`, with a
    /// [`DEFAULT_COMMAND_TIMEOUT`] per exchange.
    pub fn new(
        socket: impl Into<PathBuf>,
        backend: impl Into<String>,
        server_hot: impl Into<String>,
        server_warm: impl Into<String>,
    ) -> Haproxy {
        Haproxy {
            socket: socket.into(),
            backend: backend.into(),
            server_hot: server_hot.into(),
            server_warm: server_warm.into(),
            timeout: DEFAULT_COMMAND_TIMEOUT,
            identity: Mutex::new(None),
        }
    }

    /// Bounds each exchange with HAProxy (connect, send, read) by `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Haproxy {
        self.timeout = timeout;
        self
    }

    /// The adapter a sidecar's config describes.
    pub fn from_config(c: &crate::config::Config) -> Haproxy {
        Haproxy::new(
            c.lb.socket.clone(),
            c.lb.backend.clone(),
            c.lb.server_hot.clone(),
            c.lb.server_warm.clone(),
        )
        .with_timeout(c.lb.command_timeout)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// The server that routes to `setup`.
    pub fn server(&self, setup: Setup) -> &str {
        match setup {
            Setup::Hot => &self.server_hot,
            Setup::Warm => &self.server_warm,
        }
    }

    /// Sends one raw Runtime API line (for operators and tests) and returns
    /// HAProxy's answer as is, without judging it.
    pub async fn command(&self, line: &str) -> Result<String, LbError> {
        if line.contains(['\n', '\r']) {
            return Err(LbError::Rejected {
                command: line.to_string(),
                answer: "not sent: one line only".into(),
            });
        }
        let started = Instant::now();
        let raw = self
            .send_line(line)
            .instrument(debug_span!("haproxy", socket = %self.socket.display()))
            .await?;
        debug!(command = %line, elapsed_us = started.elapsed().as_micros() as u64, "haproxy answered");
        Ok(raw)
    }

    /// Sends `commands` on one line (`;`-separated, one connection) and
    /// returns one answer per command. HAProxy runs every command of a line
    /// even when an earlier one fails.
    pub async fn exchange(&self, commands: &[String]) -> Result<Vec<String>, LbError> {
        let line = commands.join("; ");
        if let Some(bad) = commands.iter().find(|c| c.contains([';', '\n', '\r'])) {
            return Err(LbError::Rejected {
                command: line.clone(),
                answer: format!("not sent: {bad:?} would split into several commands"),
            });
        }
        let raw = self.command(&line).await?;
        split_answers(&raw, commands.len())
    }

    async fn send_line(&self, line: &str) -> Result<String, LbError> {
        let endpoint = self.socket.display().to_string();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let timed_out = || LbError::Timeout {
            endpoint: endpoint.clone(),
            after: self.timeout,
        };
        let failed = |what: &str, e: std::io::Error| LbError::Unreachable {
            endpoint: endpoint.clone(),
            source: std::io::Error::new(
                e.kind(),
                format!(
                    "{what}: {e}; check that HAProxy runs and its config has \
                     `stats socket {endpoint} level admin`"
                ),
            ),
        };
        let mut stream = tokio::time::timeout_at(deadline, UnixStream::connect(&self.socket))
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| failed("connecting", e))?;
        tokio::time::timeout_at(deadline, stream.write_all(format!("{line}\n").as_bytes()))
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| failed("sending a command", e))?;
        // Without `prompt`, HAProxy answers the one line and closes.
        let mut raw = Vec::new();
        tokio::time::timeout_at(
            deadline,
            (&mut stream).take(MAX_ANSWER_BYTES).read_to_end(&mut raw),
        )
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| failed("reading the answer", e))?;
        Ok(String::from_utf8_lossy(&raw).into_owned())
    }

    fn check_names(&self) -> Result<(), LbError> {
        for name in [&self.backend, &self.server_hot, &self.server_warm] {
            if !valid_name(name) {
                return Err(LbError::Rejected {
                    command: "(nothing sent)".into(),
                    answer: format!(
                        "not sent: {name:?} is not a HAProxy name (letters, digits, \
                         '-', '_', '.', ':'); fix the backend/server names in the config"
                    ),
                });
            }
        }
        Ok(())
    }

    fn set_state(&self, setup: Setup, state: &str) -> String {
        format!(
            "set server {}/{} state {state}",
            self.backend,
            self.server(setup)
        )
    }

    fn shutdown_sessions(&self, setup: Setup) -> String {
        format!(
            "shutdown sessions server {}/{}",
            self.backend,
            self.server(setup)
        )
    }

    fn show_state(&self) -> String {
        format!("show servers state {}", self.backend)
    }

    /// Finds both servers in a `show servers state` answer.
    fn pair(&self, command: &str, answer: &str) -> Result<Pair, LbError> {
        let all = parse_servers_state(command, answer)?;
        let find = |setup: Setup| {
            let name = self.server(setup);
            all.iter()
                .find(|s| s.backend == self.backend && s.name == name)
                .cloned()
                .ok_or_else(|| LbError::Rejected {
                    command: command.to_string(),
                    answer: format!(
                        "no server {name:?} in backend {:?} (servers: {}); fix the {setup} server name",
                        self.backend,
                        all.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                })
        };
        Ok(Pair {
            hot: find(Setup::Hot)?,
            warm: find(Setup::Warm)?,
        })
    }

    /// Runs state-changing commands followed by `show servers state`: any
    /// answer to a change other than an empty line is a rejection.
    async fn change_and_read(&self, changes: Vec<String>) -> Result<Pair, LbError> {
        let mut commands = changes;
        commands.push(self.show_state());
        let answers = self.exchange(&commands).await?;
        let (show, answer) = match (commands.last(), answers.last()) {
            (Some(c), Some(a)) => (c, a),
            _ => return Err(LbError::Parse("HAProxy sent no answer".into())),
        };
        for (command, answer) in commands.iter().zip(&answers).take(commands.len() - 1) {
            if !answer.trim().is_empty() {
                return Err(LbError::Rejected {
                    command: command.clone(),
                    answer: answer.trim().to_string(),
                });
            }
        }
        self.pair(show, answer)
    }
}

/// Which setups an LB may route new sessions to, as HAProxy reports it
/// (see [`ServerState::may_route`]: anything up and out of maintenance
/// counts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Routing {
    pub hot: bool,
    pub warm: bool,
}

impl Haproxy {
    /// Reads what the LB may route to, without judging it: unlike
    /// [`LoadBalancer::observe`], a state lockstep never sets (both setups)
    /// is reported rather than an error. For observers such as the chaos
    /// suite's sampler.
    pub async fn routing(&self) -> Result<Routing, LbError> {
        self.check_names()?;
        let command = self.show_state();
        let answer = self.command(&command).await?;
        let pair = self.pair(&command, &answer)?;
        Ok(Routing {
            hot: pair.hot.may_route(),
            warm: pair.warm.may_route(),
        })
    }
}

/// Both servers of the backend, as read back.
struct Pair {
    hot: ServerState,
    warm: ServerState,
}

impl Pair {
    fn get(&self, setup: Setup) -> &ServerState {
        match setup {
            Setup::Hot => &self.hot,
            Setup::Warm => &self.warm,
        }
    }

    /// What the LB routes new sessions to, or `None` for a state lockstep
    /// never sets (both may route, or one is half up).
    fn target(&self) -> Option<LbTarget> {
        match (self.hot.may_route(), self.warm.may_route()) {
            (false, false) => Some(LbTarget::Blocked),
            (true, false) if self.hot.serving() => Some(LbTarget::Serve(Setup::Hot)),
            (false, true) if self.warm.serving() => Some(LbTarget::Serve(Setup::Warm)),
            _ => None,
        }
    }
}

impl fmt::Display for Pair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; {}", self.hot, self.warm)
    }
}

fn not_confirmed(wanted: LbTarget, pair: &Pair, why: &str) -> LbError {
    LbError::NotConfirmed {
        wanted,
        seen: format!("{why}: {pair}"),
    }
}

impl LoadBalancer for Haproxy {
    /// Never reports `restarted`: what it confirms was set on whichever
    /// process answered. Restarts are `observe`'s to report.
    async fn apply(
        &self,
        target: LbTarget,
        enable_before: Option<Instant>,
    ) -> Result<Observed, LbError> {
        self.check_names()?;
        let started = Instant::now();
        let span = debug_span!("haproxy_apply", %target, backend = %self.backend);
        async {
            match target {
                LbTarget::Blocked => {
                    let mut changes = Vec::new();
                    for s in Setup::ALL {
                        changes.push(self.set_state(s, "maint"));
                        changes.push(self.shutdown_sessions(s));
                    }
                    let pair = self.change_and_read(changes).await?;
                    if !(pair.hot.in_maint() && pair.warm.in_maint()) {
                        return Err(not_confirmed(target, &pair, "not both in maintenance"));
                    }
                }
                LbTarget::Serve(y) => {
                    let x = y.other();
                    // Break, confirmed, before make: on its own line, since
                    // HAProxy would run the make even if the break failed.
                    let pair = self
                        .change_and_read(vec![self.set_state(x, "maint"), self.shutdown_sessions(x)])
                        .await?;
                    if !pair.get(x).in_maint() {
                        return Err(not_confirmed(
                            target,
                            &pair,
                            &format!("{x} did not go into maintenance; {y} left as it was"),
                        ));
                    }
                    debug!(elapsed_us = started.elapsed().as_micros() as u64, "break confirmed");
                    // From maintenance, `ready` is UP at once (health set to
                    // `rise`). A server already ready but DOWN by its checks
                    // stays DOWN until `rise` checks pass: lockstep does not
                    // force `health up` over the sidecar's own answers.
                    // Checked as late as possible: `ready` is UP at once and
                    // overrides the health checks that blocked a silent
                    // sidecar, so a late make would outlive the lease.
                    if enable_before.is_some_and(|d| Instant::now() >= d) {
                        return Err(LbError::Expired { wanted: target });
                    }
                    let pair = self.change_and_read(vec![self.set_state(y, "ready")]).await?;
                    if !(pair.get(y).serving() && pair.get(x).in_maint()) {
                        let why = if pair.get(y).op_state == OpState::Stopped && !pair.get(y).in_maint() {
                            format!(
                                "{y} is enabled but DOWN by its health check: the check endpoint \
                                 does not answer 200 for it; HAProxy brings it up after `rise` passing checks"
                            )
                        } else {
                            format!("{y} is not serving or {x} left maintenance")
                        };
                        return Err(not_confirmed(target, &pair, &why));
                    }
                }
            }
            debug!(elapsed_us = started.elapsed().as_micros() as u64, "haproxy apply confirmed");
            Ok(Observed {
                target,
                restarted: false,
            })
        }
        .instrument(span)
        .await
    }

    async fn observe(&self) -> Result<Observed, LbError> {
        self.check_names()?;
        let commands = ["show info".to_string(), self.show_state()];
        let answers = self.exchange(&commands).await?;
        let identity = parse_show_info(&commands[0], &answers[0])?;
        let pair = self.pair(&commands[1], &answers[1])?;
        let target = pair.target().ok_or_else(|| {
            not_confirmed(
                LbTarget::Blocked,
                &pair,
                "a state lockstep never sets (both setups, or one half up)",
            )
        })?;
        // Only a successful read consumes a restart, so none is lost.
        let mut last = self.identity.lock().unwrap_or_else(|p| p.into_inner());
        let restarted = last.is_some_and(|prev| prev != identity);
        if restarted {
            debug!(?identity, previous = ?*last, "haproxy restarted");
        }
        *last = Some(identity);
        Ok(Observed { target, restarted })
    }

    fn guarantees(&self) -> &'static str {
        "HAProxy: break-before-make within this LB (old server in maintenance with sessions shut, confirmed, before the new one is enabled), every change read back, and a dead-man's switch (health checks on the sidecar) bounded by D"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from Debian's HAProxy 2.6.12 with the rendered config.
    const HEADER: &str = "# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port";
    /// Fresh start: both `disabled` in the config (admin 0x05).
    const FRESH: &str = "3 kme 1 hot 127.0.0.1 0 5 1 1 0 1 0 0 14 0 0 0 - 35863 - 0 45241 127.0.0.1 127.0.0.1 45241\n3 kme 2 warm 127.0.0.1 0 5 1 1 0 1 0 0 14 0 0 0 - 46631 - 0 45241 127.0.0.1 127.0.0.1 45241";
    /// After `set server kme/warm state ready`: UP at once, admin 0x04.
    const WARM_UP: &str = "3 kme 1 hot 127.0.0.1 0 5 1 1 0 1 0 0 14 0 0 0 - 35863 - 0 45241 127.0.0.1 127.0.0.1 45241\n3 kme 2 warm 127.0.0.1 2 4 1 1 0 1 0 1 6 0 0 0 - 46631 - 0 45241 127.0.0.1 127.0.0.1 45241";
    /// Then the check endpoint stopped answering 200: warm DOWN by checks.
    const WARM_DOWN: &str = "3 kme 1 hot 127.0.0.1 0 5 1 1 1 1 0 0 14 0 0 0 - 35863 - 0 45241 127.0.0.1 127.0.0.1 45241\n3 kme 2 warm 127.0.0.1 0 4 1 1 0 17 2 0 6 0 0 0 - 46631 - 0 45241 127.0.0.1 127.0.0.1 45241";
    /// Then `set server kme/warm state drain` (admin 0x0c).
    const WARM_DRAIN: &str = "3 kme 1 hot 127.0.0.1 0 5 1 1 1 1 0 0 14 0 0 0 - 35863 - 0 45241 127.0.0.1 127.0.0.1 45241\n3 kme 2 warm 127.0.0.1 2 12 1 1 0 17 2 0 6 0 0 0 - 46631 - 0 45241 127.0.0.1 127.0.0.1 45241";
    const SHOW_INFO: &str = "Name: HAProxy\nVersion: 2.6.12-1+deb12u4\nRelease_date: 2026/10/17\nNbthread: 2\nNbproc: 1\nProcess_num: 1\nPid: 13175\nUptime: 0d 0h00m01s\nUptime_sec: 1\nMemmax_MB: 0\nUlimit-n: 20000\nMaxsock: 20000\nMaxconn: 9984\nCurrConns: 0\nCumConns: 15\nnode: vm\nStopping: 0\nJobs: 3\nListeners: 2\nBuild info: 2.6.12-1+deb12u4\nStart_time_sec: 1795596007\nTainted: 0";

    fn state(lines: &str) -> String {
        format!("1\n{HEADER}\n{lines}\n")
    }

    fn adapter() -> Haproxy {
        Haproxy::new("/nonexistent", "kme", "hot", "warm")
    }

    fn pair_of(lines: &str) -> Pair {
        adapter()
            .pair("show servers state kme", &state(lines))
            .expect("pair")
    }

    #[test]
    fn splits_a_multi_command_answer() {
        let raw = format!("\n\n{}\n", state(FRESH));
        let a = split_answers(&raw, 3).expect("split");
        assert_eq!(a[0], "");
        assert_eq!(a[1], "");
        assert!(a[2].starts_with("1\n# be_id"));
        let raw = "No such server.\n\n\n";
        assert_eq!(
            split_answers(raw, 2).expect("split"),
            vec!["No such server.".to_string(), String::new()]
        );
        assert!(matches!(split_answers("\n", 2), Err(LbError::Parse(_))));
    }

    #[test]
    fn parses_servers_state_by_header() {
        let s = parse_servers_state("show servers state kme", &state(WARM_UP)).expect("parse");
        assert_eq!(s.len(), 2);
        assert_eq!(
            (s[0].name.as_str(), s[0].op_state, s[0].admin_state),
            ("hot", OpState::Stopped, 5)
        );
        assert_eq!(
            (s[1].name.as_str(), s[1].op_state, s[1].admin_state),
            ("warm", OpState::Running, 4)
        );
        assert_eq!(s[1].check_health, Some(1));
        // Columns are found by name, not position.
        let moved = "1\n# srv_name be_name srv_admin_state srv_op_state\nhot kme 1 0\n";
        let s = parse_servers_state("show", moved).expect("parse");
        assert!(s[0].in_maint() && s[0].check_health.is_none());
    }

    #[test]
    fn rejects_what_is_not_a_state_answer() {
        assert!(matches!(
            parse_servers_state("show servers state nobe", "Can't find backend."),
            Err(LbError::Rejected { answer, .. }) if answer == "Can't find backend."
        ));
        assert!(matches!(
            parse_servers_state("show", &state("3 kme 1 hot 127.0.0.1 x 5")),
            Err(LbError::Parse(_))
        ));
        assert!(matches!(
            parse_servers_state("show", &state("3 kme 1 hot 127.0.0.1 7 5 1 1 0 1 0 0")),
            Err(LbError::Parse(_))
        ));
    }

    #[test]
    fn config_disabled_servers_are_in_maintenance_until_ready() {
        let p = pair_of(FRESH);
        assert!(p.hot.in_maint() && p.warm.in_maint());
        assert_eq!(p.target(), Some(LbTarget::Blocked));
        // 0x04 alone ("disabled in the config") is not maintenance.
        let p = pair_of(WARM_UP);
        assert!(!p.warm.in_maint() && p.warm.serving());
        assert_eq!(p.target(), Some(LbTarget::Serve(Setup::Warm)));
    }

    #[test]
    fn a_server_down_by_its_checks_routes_nowhere() {
        let p = pair_of(WARM_DOWN);
        assert!(!p.warm.in_maint() && !p.warm.may_route());
        assert_eq!(p.target(), Some(LbTarget::Blocked));
        assert!(p.warm.to_string().contains("DOWN"), "{}", p.warm);
    }

    #[test]
    fn states_lockstep_never_sets_are_not_a_target() {
        // Draining: up, but takes no new sessions.
        assert_eq!(pair_of(WARM_DRAIN).target(), None);
        // Both up.
        let both = WARM_UP.replace("hot 127.0.0.1 0 5", "hot 127.0.0.1 2 4");
        assert_eq!(pair_of(&both).target(), None);
        // Starting (slowstart) may route but is not serving.
        let starting = WARM_UP.replace("warm 127.0.0.1 2 4", "warm 127.0.0.1 1 4");
        assert_eq!(pair_of(&starting).target(), None);
    }

    #[test]
    fn maintenance_bits() {
        for (admin, maint, drain) in [
            (0x01, true, false),
            (0x02, true, false),
            (0x04, false, false),
            (0x05, true, false),
            (0x08, false, true),
            (0x10, false, true),
            (0x20, true, false),
            (0x40, false, false),
        ] {
            let s = ServerState {
                backend: "kme".into(),
                name: "hot".into(),
                op_state: OpState::Running,
                admin_state: admin,
                check_health: None,
            };
            assert_eq!(
                (s.in_maint(), s.in_drain()),
                (maint, drain),
                "admin {admin:#x}"
            );
        }
    }

    #[test]
    fn a_missing_server_is_named() {
        let err = Haproxy::new("/x", "kme", "hot", "tepid")
            .pair("show servers state kme", &state(FRESH))
            .err()
            .expect("missing server");
        assert!(err.to_string().contains("\"tepid\""), "{err}");
    }

    #[test]
    fn parses_process_identity() {
        let id = parse_show_info("show info", SHOW_INFO).expect("identity");
        assert_eq!(
            id,
            ProcessIdentity {
                pid: 13175,
                start_time_sec: Some(1795596007)
            }
        );
        let other = SHOW_INFO.replace("Pid: 13175", "Pid: 13176");
        assert_ne!(parse_show_info("show info", &other).expect("identity"), id);
        assert!(matches!(
            parse_show_info("show info", "Permission denied"),
            Err(LbError::Rejected { .. })
        ));
    }

    #[test]
    fn names_that_would_split_a_command_are_refused() {
        assert!(valid_name("kme") && valid_name("hot-1.a:b_c"));
        for bad in ["", "a b", "a;b", "a\nb", "a/b", "a#b"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        let h = Haproxy::new("/x", "kme", "hot; shutdown frontend x", "warm");
        assert!(matches!(h.check_names(), Err(LbError::Rejected { .. })));
    }

    #[test]
    fn down_detection_bound_formula() {
        let ms = Duration::from_millis;
        // fall × (inter + min(connect 1s, inter) + timeout check)
        assert_eq!(down_detection_bound(ms(500), 2, ms(300)), ms(2600));
        assert_eq!(down_detection_bound(ms(200), 2, ms(200)), ms(1200));
        // The connect allowance is capped by `timeout connect`.
        assert_eq!(
            down_detection_bound(ms(2000), 3, ms(500)),
            ms(3 * (2000 + 1000 + 500))
        );
        // Sub-millisecond values render (and count) as 1 ms.
        assert_eq!(
            down_detection_bound(Duration::from_micros(10), 1, Duration::ZERO),
            ms(3)
        );
    }

    #[test]
    fn renders_the_dead_mans_switch() {
        let t = HaproxyTemplate::new(
            "127.0.0.1:8443".parse().expect("addr"),
            "10.0.1.10:8443".parse().expect("addr"),
            "[fd00::2]:8443".parse().expect("addr"),
            "[::1]:7401".parse().expect("addr"),
            "/run/haproxy/admin.sock",
        );
        let cfg = t.render();
        for want in [
            "mode tcp",
            "stats socket /run/haproxy/admin.sock mode 600 level admin expose-fd listeners",
            "timeout check 300ms",
            "option httpchk",
            "http-check send meth GET uri-lf /check/%[srv_name]",
            "http-check expect status 200",
            "inter 500ms fastinter 500ms downinter 500ms fall 2 rise 1 on-marked-down shutdown-sessions",
            "server hot 10.0.1.10:8443 check addr [::1] port 7401 disabled",
            "server warm [fd00::2]:8443 check addr [::1] port 7401 disabled",
            "D (down-detection bound) = 2600 ms",
        ] {
            assert!(cfg.contains(want), "missing {want:?} in\n{cfg}");
        }
    }
}
