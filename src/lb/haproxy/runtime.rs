//! The Runtime API client (HAProxy's stats socket, `level admin`): sends
//! `;`-separated command lines over one connection each and splits the
//! answer per command, and parses the answers lockstep reads (`show
//! servers state`, `show info`). The parsing is pure.

use super::super::LbError;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tracing::{debug, debug_span, Instrument};

/// Bound on one Runtime API exchange (connect, send, read the answer).
pub(crate) const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

/// Answers larger than this are not HAProxy talking to us.
const MAX_ANSWER_BYTES: u64 = 1 << 20;

/// One HAProxy's Runtime API: where its socket is and how long one exchange
/// may take.
#[derive(Clone, Debug)]
pub(crate) struct RuntimeApi {
    /// The stats socket (`stats socket ... level admin`).
    socket: PathBuf,
    /// Bound on one exchange (connect, send, read the answer).
    timeout: Duration,
}

impl RuntimeApi {
    pub(crate) fn new(socket: PathBuf, timeout: Duration) -> RuntimeApi {
        RuntimeApi { socket, timeout }
    }

    pub(crate) fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Sends one raw Runtime API line (for operators and tests) and returns
    /// HAProxy's answer as is, without judging it.
    pub(crate) async fn command(&self, line: &str) -> Result<String, LbError> {
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
    pub(crate) async fn exchange(&self, commands: &[String]) -> Result<Vec<String>, LbError> {
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
}

/// True for names HAProxy accepts for proxies and servers (letters, digits,
/// `-`, `_`, `.`, `:`). Anything else could also split a Runtime API line.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

/// HAProxy's `srv_admin` maintenance bits: forced (0x01), inherited from a
/// tracked server (0x02), failed DNS resolution (0x20). 0x04 ("`disabled`
/// in the config") is not among them: it stays set after `state ready`.
const ADMIN_MAINT: u32 = 0x01 | 0x02 | 0x20;
/// Drain bits: forced (0x08), inherited (0x10).
const ADMIN_DRAIN: u32 = 0x08 | 0x10;

/// `srv_op_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpState {
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
pub(crate) struct ServerState {
    pub(crate) backend: String,
    pub(crate) name: String,
    pub(crate) op_state: OpState,
    /// `srv_admin_state` bits (see [`ServerState::in_maint`]).
    pub(crate) admin_state: u32,
    /// `srv_check_health`: 0 is down; `rise + fall - 1` is fully healthy.
    pub(crate) check_health: Option<u32>,
    /// `srv_addr` and `srv_port`: where the server is.
    pub(crate) addr: Option<String>,
    pub(crate) port: Option<u16>,
    /// `srv_check_state` bits (see `checks`).
    pub(crate) check_state: Option<u32>,
    /// `srv_check_addr` (`-`: the server's own) and `srv_check_port` (0:
    /// the server's own).
    pub(crate) check_addr: Option<String>,
    pub(crate) check_port: Option<u16>,
}

impl ServerState {
    /// In maintenance: takes no sessions whatever its health checks say.
    pub(crate) fn in_maint(&self) -> bool {
        self.admin_state & ADMIN_MAINT != 0
    }

    pub(crate) fn in_drain(&self) -> bool {
        self.admin_state & ADMIN_DRAIN != 0
    }

    /// Fully serving: enabled, not draining, UP.
    pub(crate) fn serving(&self) -> bool {
        !self.in_maint() && !self.in_drain() && self.op_state == OpState::Running
    }

    /// Might take new sessions (any up state outside maintenance). Errs on
    /// the side of "routes": only `Stopped` or maintenance count as not.
    pub(crate) fn may_route(&self) -> bool {
        !self.in_maint() && self.op_state != OpState::Stopped
    }

    /// Where HAProxy sends this server's health checks, if it says.
    pub(crate) fn check_target(&self) -> Option<(String, u16)> {
        let addr = match self.check_addr.as_deref()? {
            "-" => self.addr.clone()?,
            a => a.to_string(),
        };
        let port = match self.check_port? {
            0 => self.port?,
            p => p,
        };
        Some((addr, port))
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
pub(crate) fn split_answers(raw: &str, commands: usize) -> Result<Vec<String>, LbError> {
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
pub(crate) fn parse_servers_state(command: &str, text: &str) -> Result<Vec<ServerState>, LbError> {
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
            addr: field("srv_addr").ok().map(String::from),
            port: number("srv_port").ok().and_then(|p| u16::try_from(p).ok()),
            check_state: number("srv_check_state").ok(),
            check_addr: field("srv_check_addr").ok().map(String::from),
            check_port: number("srv_check_port")
                .ok()
                .and_then(|p| u16::try_from(p).ok()),
        });
    }
    Ok(out)
}

/// Which HAProxy process answered: a change means it was restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcessIdentity {
    pub(crate) pid: u32,
    /// `Start_time_sec` (HAProxy ≥ 2.6), in seconds since the epoch.
    pub(crate) start_time_sec: Option<u64>,
}

/// Parses `Pid` and `Start_time_sec` out of `show info`.
pub(crate) fn parse_show_info(command: &str, text: &str) -> Result<ProcessIdentity, LbError> {
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    // Captured from Debian's HAProxy 2.6.12 with the rendered config.
    pub(in crate::lb::haproxy) const HEADER: &str = "# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port";
    /// Fresh start: both `disabled` in the config (admin 0x05).
    pub(in crate::lb::haproxy) const FRESH: &str = "3 kme 1 hot 127.0.0.1 0 5 1 1 0 1 0 0 14 0 0 0 - 35863 - 0 45241 127.0.0.1 127.0.0.1 45241\n3 kme 2 warm 127.0.0.1 0 5 1 1 0 1 0 0 14 0 0 0 - 46631 - 0 45241 127.0.0.1 127.0.0.1 45241";
    /// After `set server kme/warm state ready`: UP at once, admin 0x04.
    pub(in crate::lb::haproxy) const WARM_UP: &str = "3 kme 1 hot 127.0.0.1 0 5 1 1 0 1 0 0 14 0 0 0 - 35863 - 0 45241 127.0.0.1 127.0.0.1 45241\n3 kme 2 warm 127.0.0.1 2 4 1 1 0 1 0 1 6 0 0 0 - 46631 - 0 45241 127.0.0.1 127.0.0.1 45241";
    /// Then the check endpoint stopped answering 200: warm DOWN by checks.
    pub(in crate::lb::haproxy) const WARM_DOWN: &str = "3 kme 1 hot 127.0.0.1 0 5 1 1 1 1 0 0 14 0 0 0 - 35863 - 0 45241 127.0.0.1 127.0.0.1 45241\n3 kme 2 warm 127.0.0.1 0 4 1 1 0 17 2 0 6 0 0 0 - 46631 - 0 45241 127.0.0.1 127.0.0.1 45241";
    /// Then `set server kme/warm state drain` (admin 0x0c).
    pub(in crate::lb::haproxy) const WARM_DRAIN: &str = "3 kme 1 hot 127.0.0.1 0 5 1 1 1 1 0 0 14 0 0 0 - 35863 - 0 45241 127.0.0.1 127.0.0.1 45241\n3 kme 2 warm 127.0.0.1 2 12 1 1 0 17 2 0 6 0 0 0 - 46631 - 0 45241 127.0.0.1 127.0.0.1 45241";
    pub(in crate::lb::haproxy) const SHOW_INFO: &str = "Name: HAProxy\nVersion: 2.6.12-1+deb12u4\nRelease_date: 2026/10/17\nNbthread: 2\nNbproc: 1\nProcess_num: 1\nPid: 13175\nUptime: 0d 0h00m01s\nUptime_sec: 1\nMemmax_MB: 0\nUlimit-n: 20000\nMaxsock: 20000\nMaxconn: 9984\nCurrConns: 0\nCumConns: 15\nnode: vm\nStopping: 0\nJobs: 3\nListeners: 2\nBuild info: 2.6.12-1+deb12u4\nStart_time_sec: 1795596007\nTainted: 0";

    pub(in crate::lb::haproxy) fn state(lines: &str) -> String {
        format!("1\n{HEADER}\n{lines}\n")
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
                addr: None,
                port: None,
                check_state: None,
                check_addr: None,
                check_port: None,
            };
            assert_eq!(
                (s.in_maint(), s.in_drain()),
                (maint, drain),
                "admin {admin:#x}"
            );
        }
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

    use proptest::prelude::{any, prop_assert, prop_assert_eq};
    use proptest::test_runner::TestCaseError;

    const STATE_CMD: &str = "show servers state kme";

    /// How many answers `raw` holds, counted apart from `split_answers`:
    /// one per empty line, plus a last one cut short.
    fn answers_in(raw: &str) -> usize {
        let (mut n, mut open) = (0, false);
        for line in raw.lines() {
            open = !line.is_empty();
            if !open {
                n += 1;
            }
        }
        n + usize::from(open)
    }

    /// `split_answers`: `n` answers when `raw` holds `n`, none of them with
    /// an empty line in it; `Parse` saying how many otherwise.
    fn check_split(raw: &str, n: usize) -> Result<(), TestCaseError> {
        match split_answers(raw, n) {
            Ok(answers) => {
                prop_assert_eq!(answers_in(raw), n);
                prop_assert_eq!(answers.len(), n);
                for a in &answers {
                    prop_assert!(a.is_empty() || a.lines().all(|l| !l.is_empty()), "{:?}", a);
                }
            }
            Err(LbError::Parse(m)) => {
                prop_assert!(answers_in(raw) != n);
                prop_assert!(
                    m.starts_with(&format!("expected {n} answers from HAProxy, got ")),
                    "{}",
                    m
                );
            }
            Err(e) => return Err(TestCaseError::fail(format!("not Parse: {e:?}"))),
        }
        Ok(())
    }

    /// `parse_servers_state`: an answer not opening with the format
    /// version "1" is `Rejected` with the command and the answer; one that
    /// does gives one state per server line or `Parse` naming the line.
    fn check_servers_state(text: &str) -> Result<Option<Vec<ServerState>>, TestCaseError> {
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let versioned = lines.next().map(str::trim) == Some("1");
        let servers: Vec<&str> = lines.filter(|l| !l.starts_with('#')).collect();
        match parse_servers_state(STATE_CMD, text) {
            Ok(states) => {
                prop_assert!(versioned);
                prop_assert_eq!(states.len(), servers.len());
                for (s, line) in states.iter().zip(&servers) {
                    prop_assert!(
                        line.split_whitespace().any(|f| f == s.name),
                        "{:?} in {:?}",
                        s.name,
                        line
                    );
                }
                Ok(Some(states))
            }
            Err(LbError::Rejected { command, answer }) => {
                prop_assert!(!versioned);
                prop_assert_eq!(command, STATE_CMD);
                prop_assert_eq!(answer, text.trim());
                Ok(None)
            }
            Err(LbError::Parse(m)) => {
                prop_assert!(versioned);
                prop_assert!(
                    servers.iter().any(|l| m.contains(&format!("{l:?}"))),
                    "{} names no server line of {:?}",
                    m,
                    servers
                );
                Ok(None)
            }
            Err(e) => Err(TestCaseError::fail(format!("not Rejected or Parse: {e:?}"))),
        }
    }

    /// `parse_show_info`: no `Pid:` line is `Rejected`; a `Pid` that is no
    /// number is `Parse` naming it; otherwise the pid it says.
    fn check_show_info(text: &str) -> Result<(), TestCaseError> {
        let value = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .map(str::trim)
        };
        match (parse_show_info("show info", text), value("Pid")) {
            (Err(LbError::Rejected { command, answer }), None) => {
                prop_assert_eq!(command, "show info");
                prop_assert_eq!(answer, text.trim());
            }
            (Ok(id), Some(pid)) => {
                prop_assert_eq!(Ok(id.pid), pid.parse::<u32>());
                prop_assert_eq!(
                    id.start_time_sec,
                    value("Start_time_sec").and_then(|s| s.parse().ok())
                );
            }
            (Err(LbError::Parse(m)), Some(pid)) => {
                let named = if pid.parse::<u32>().is_err() {
                    "Pid"
                } else {
                    "Start_time_sec"
                };
                prop_assert!(
                    m.starts_with(named) && m.contains("is not a number"),
                    "{}",
                    m
                );
            }
            (got, pid) => return Err(TestCaseError::fail(format!("{got:?} for Pid {pid:?}"))),
        }
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(crate::limits::proptest_config())]

        /// HAProxy's answers come from a socket: whatever the bytes, the
        /// parsers answer with the value the text holds or the typed error
        /// that says why not, never a panic.
        #[test]
        fn runtime_answers_never_panic_and_get_a_value_or_a_typed_error(
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
            n in 0usize..5,
            version in proptest::prop_oneof![proptest::strategy::Just(""), proptest::strategy::Just("1\n")],
            pid in proptest::prop_oneof![proptest::strategy::Just(""), proptest::strategy::Just("Pid: 42\n"), proptest::strategy::Just("Pid: x\n")],
        ) {
            let text = String::from_utf8_lossy(&bytes);
            check_split(&text, n)?;
            check_servers_state(&format!("{version}{text}"))?;
            check_show_info(&format!("{pid}{text}"))?;
        }

        /// Lines shaped like `show servers state` with arbitrary fields.
        #[test]
        fn servers_state_like_lines_never_panic_and_get_states_or_parse_errors(
            fields in proptest::collection::vec("[-0-9a-z.:]{0,8}", 0..30),
            rows in 0usize..4,
        ) {
            let row = fields.join(" ");
            let mut text = String::from("1\n");
            text.push_str(HEADER);
            for _ in 0..rows {
                text.push('\n');
                text.push_str(&row);
            }
            check_servers_state(&text)?;
        }

        /// Lines as HAProxy writes them, from typed values: parsed back to
        /// exactly those values.
        #[test]
        fn servers_state_lines_never_panic_and_round_trip(
            servers in proptest::collection::vec((
                "[a-z][a-z0-9_-]{0,10}",
                0u32..4,
                any::<u32>(),
                any::<u32>(),
                any::<u16>(),
                any::<u32>(),
                any::<u16>(),
            ), 0..4),
        ) {
            let mut text = format!("1\n{HEADER}\n");
            let mut want = Vec::new();
            for (i, (name, op, admin, health, port, check_state, check_port)) in servers.into_iter().enumerate() {
                text.push_str(&format!(
                    "3 kme {i} {name} 10.0.0.{i} {op} {admin} 1 1 0 1 0 {health} {check_state} 0 0 0 - {port} - 0 {check_port} 10.1.0.{i} - 0\n"
                ));
                want.push(ServerState {
                    backend: "kme".into(),
                    name,
                    op_state: OpState::from_code(op).ok_or_else(|| TestCaseError::fail("op"))?,
                    admin_state: admin,
                    check_health: Some(health),
                    addr: Some(format!("10.0.0.{i}")),
                    port: Some(port),
                    check_state: Some(check_state),
                    check_addr: Some(format!("10.1.0.{i}")),
                    check_port: Some(check_port),
                });
            }
            prop_assert_eq!(check_servers_state(&text)?, Some(want));
        }

        /// `show info` as HAProxy writes it: the pid and start time back.
        #[test]
        fn show_info_never_panics_and_round_trips(pid in any::<u32>(), start in proptest::option::of(any::<u64>())) {
            let start_line = start.map_or(String::new(), |s| format!("Start_time_sec: {s}\n"));
            let text = format!("Name: HAProxy\nVersion: 2.6.12\nPid: {pid}\n{start_line}Uptime: 0d 0h00m05s\n");
            prop_assert_eq!(
                parse_show_info("show info", &text).ok(),
                Some(ProcessIdentity { pid, start_time_sec: start })
            );
            check_show_info(&text)?;
        }
    }
}
