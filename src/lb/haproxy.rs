//! HAProxy over its Runtime API (the stats socket, `level admin`).
//!
//! Routing is set with `set server <be>/<srv> state ready|maint` and
//! `shutdown sessions server <be>/<srv>`, always break-before-make, and every
//! change is confirmed by reading `show servers state` back.

use super::{LbError, LoadBalancer, Observed};
use lockstep_core::{LbTarget, Setup};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tracing::debug;

/// One server's line of `show servers state`, the fields we use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerState {
    pub backend: String,
    pub name: String,
    /// 0 stopped (down), 1 starting, 2 running (up), 3 stopping.
    pub op_state: u32,
    /// HAProxy's `srv_admin` bits: 0x01 forced maintenance, 0x02 inherited
    /// maintenance, 0x04 "was `disabled` in the config" (stays set after the
    /// server is enabled, so it does not mean maintenance), 0x08 forced
    /// drain, 0x10 inherited drain, 0x20 maintenance after a failed DNS
    /// resolution, 0x40 FQDN set at run time.
    pub admin_state: u32,
}

/// HAProxy's SRV_ADMF_MAINT mask (forced | inherited | resolution).
const MAINT_BITS: u32 = 0x01 | 0x02 | 0x20;
/// HAProxy's SRV_ADMF_DRAIN mask (forced | inherited).
const DRAIN_BITS: u32 = 0x08 | 0x10;

impl ServerState {
    pub fn in_maint(&self) -> bool {
        self.admin_state & MAINT_BITS != 0
    }

    /// Takes new sessions: not in maintenance or drain, and up.
    pub fn routes(&self) -> bool {
        !self.in_maint() && self.admin_state & DRAIN_BITS == 0 && self.op_state == 2
    }
}

/// Parses `show servers state [<backend>]` (format version 1).
pub fn parse_servers_state(text: &str) -> Result<Vec<ServerState>, LbError> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let version = lines.next().unwrap_or_default().trim();
    if version != "1" {
        return Err(LbError::Parse(format!(
            "unexpected `show servers state` format {version:?}"
        )));
    }
    let mut out = Vec::new();
    for line in lines {
        if line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        // be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state ...
        if f.len() < 7 {
            return Err(LbError::Parse(format!("short server line {line:?}")));
        }
        let num = |s: &str| {
            s.parse::<u32>()
                .map_err(|_| LbError::Parse(format!("bad number {s:?} in {line:?}")))
        };
        out.push(ServerState {
            backend: f[1].to_string(),
            name: f[3].to_string(),
            op_state: num(f[5])?,
            admin_state: num(f[6])?,
        });
    }
    Ok(out)
}

/// Finds `Pid` and `Uptime_sec` style identity in `show info`.
pub fn parse_process_identity(info: &str) -> Option<String> {
    let mut pid = None;
    let mut start = None;
    for line in info.lines() {
        if let Some(v) = line.strip_prefix("Pid:") {
            pid = Some(v.trim().to_string());
        }
        if let Some(v) = line.strip_prefix("Start_time_sec:") {
            start = Some(v.trim().to_string());
        }
    }
    pid.map(|p| format!("{p}/{}", start.unwrap_or_default()))
}

/// What one setup maps to in HAProxy.
#[derive(Clone, Debug)]
pub struct Haproxy {
    pub socket: PathBuf,
    pub backend: String,
    pub server_hot: String,
    pub server_warm: String,
    pub timeout: Duration,
    /// The HAProxy process last seen, to notice restarts.
    identity: std::sync::Arc<Mutex<Option<String>>>,
}

impl Haproxy {
    pub fn new(
        socket: PathBuf,
        backend: &str,
        server_hot: &str,
        server_warm: &str,
        timeout: Duration,
    ) -> Haproxy {
        Haproxy {
            socket,
            backend: backend.into(),
            server_hot: server_hot.into(),
            server_warm: server_warm.into(),
            timeout,
            identity: Default::default(),
        }
    }

    fn server(&self, s: Setup) -> &str {
        match s {
            Setup::Hot => &self.server_hot,
            Setup::Warm => &self.server_warm,
        }
    }

    /// Sends one command line (several commands joined by `;`) and returns
    /// the answer.
    pub async fn command(&self, line: &str) -> Result<String, LbError> {
        let endpoint = self.socket.display().to_string();
        let fut = async {
            let mut s =
                UnixStream::connect(&self.socket)
                    .await
                    .map_err(|source| LbError::Unreachable {
                        endpoint: endpoint.clone(),
                        source,
                    })?;
            s.write_all(format!("{line}\n").as_bytes())
                .await
                .map_err(|source| LbError::Unreachable {
                    endpoint: endpoint.clone(),
                    source,
                })?;
            let mut out = String::new();
            s.read_to_string(&mut out)
                .await
                .map_err(|source| LbError::Unreachable {
                    endpoint: endpoint.clone(),
                    source,
                })?;
            Ok(out)
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| LbError::Timeout {
                endpoint: endpoint.clone(),
                after: self.timeout,
            })?
    }

    /// Runs state-changing commands; any answer text is an error (HAProxy
    /// answers nothing on success for these).
    async fn change(&self, commands: &[String]) -> Result<(), LbError> {
        let line = commands.join("; ");
        let answer = self.command(&line).await?;
        let answer = answer.trim();
        if !answer.is_empty() {
            return Err(LbError::Rejected {
                command: line,
                answer: answer.to_string(),
            });
        }
        Ok(())
    }

    async fn servers(&self) -> Result<(ServerState, ServerState), LbError> {
        let text = self
            .command(&format!("show servers state {}", self.backend))
            .await?;
        if !text.trim_start().starts_with('1') {
            return Err(LbError::Rejected {
                command: format!("show servers state {}", self.backend),
                answer: text.trim().to_string(),
            });
        }
        let all = parse_servers_state(&text)?;
        let find = |name: &str| {
            all.iter()
                .find(|s| s.backend == self.backend && s.name == name)
                .cloned()
                .ok_or_else(|| {
                    LbError::Parse(format!("no server {}/{name} in HAProxy", self.backend))
                })
        };
        Ok((find(&self.server_hot)?, find(&self.server_warm)?))
    }

    fn target_of(&self, hot: &ServerState, warm: &ServerState) -> Result<LbTarget, LbError> {
        match (hot.routes(), warm.routes()) {
            (false, false) => Ok(LbTarget::Blocked),
            (true, false) => Ok(LbTarget::Serve(Setup::Hot)),
            (false, true) => Ok(LbTarget::Serve(Setup::Warm)),
            // Never set by lockstep; report it so the sidecar blocks both.
            (true, true) => Err(LbError::NotConfirmed {
                wanted: LbTarget::Blocked,
                seen: "both setups at once".into(),
            }),
        }
    }

    async fn restarted(&self) -> Result<bool, LbError> {
        let info = self.command("show info").await?;
        let id = parse_process_identity(&info);
        let mut last = self
            .identity
            .lock()
            .map_err(|_| LbError::Parse("poisoned".into()))?;
        let changed = last.is_some() && *last != id;
        *last = id;
        Ok(changed)
    }

    /// The adapter a sidecar's config describes.
    pub fn from_config(c: &crate::config::Config) -> Haproxy {
        Haproxy::new(
            c.lb.socket.clone(),
            &c.lb.backend,
            &c.lb.server_hot,
            &c.lb.server_warm,
            c.lb.command_timeout,
        )
    }
}

/// Everything needed to render a HAProxy config that lockstep can drive.
#[derive(Clone, Debug)]
pub struct HaproxyTemplate {
    pub frontend_bind: SocketAddr,
    pub backend: String,
    pub hot: SocketAddr,
    pub warm: SocketAddr,
    pub server_hot: String,
    pub server_warm: String,
    /// The sidecar's HTTP check endpoint.
    pub check_addr: SocketAddr,
    pub check_inter: Duration,
    pub check_fall: u32,
    pub check_rise: u32,
    pub check_timeout: Duration,
    pub stats_socket: PathBuf,
}

impl HaproxyTemplate {
    /// D: after the sidecar stops answering, the worst case until HAProxy
    /// has marked the server down and killed its sessions: the check in
    /// flight may just have passed, then `fall` more checks fail, each
    /// started `inter` apart and failing after at most `timeout check`.
    pub fn down_detection_bound(&self) -> Duration {
        self.check_inter * self.check_fall + self.check_timeout
    }

    /// A TCP-mode config (the KME API is mutual TLS, passed through). Both
    /// servers start `disabled`: a (re)started HAProxy routes nowhere until
    /// its sidecar enables one. Each server's health check asks the sidecar
    /// about that server by name; when the sidecar stops answering 200 the
    /// server goes down and `on-marked-down shutdown-sessions` kills its
    /// sessions (the dead-man's switch).
    pub fn render(&self) -> String {
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        format!(
            r#"# Rendered by lockstep. Servers start disabled; the sidecar enables one.
global
    stats socket {socket} mode 600 level admin expose-fd listeners
    stats timeout 5s
    log stderr format short local0 notice

defaults
    mode tcp
    log global
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout check {ctimeout}

frontend kme
    bind {bind}
    default_backend {backend}

backend {backend}
    # The sidecar answers for each server: 200 only for the setup it serves
    # and only while its etcd lease is fresh.
    option httpchk
    http-check send meth GET uri-lf /check/%[srv_name]
    http-check expect status 200
    default-server inter {inter} fastinter {inter} downinter {inter} fall {fall} rise {rise} on-marked-down shutdown-sessions disabled
    server {hot_name} {hot} check addr {check_ip} port {check_port}
    server {warm_name} {warm} check addr {check_ip} port {check_port}
"#,
            socket = self.stats_socket.display(),
            ctimeout = ms(self.check_timeout),
            bind = self.frontend_bind,
            backend = self.backend,
            inter = ms(self.check_inter),
            fall = self.check_fall,
            rise = self.check_rise,
            hot_name = self.server_hot,
            hot = self.hot,
            warm_name = self.server_warm,
            warm = self.warm,
            check_ip = self.check_addr.ip(),
            check_port = self.check_addr.port(),
        )
    }
}

impl LoadBalancer for Haproxy {
    async fn apply(&self, target: LbTarget) -> Result<Observed, LbError> {
        let started = std::time::Instant::now();
        let be = &self.backend;
        let mut cmds = Vec::new();
        for s in Setup::ALL {
            if target != LbTarget::Serve(s) {
                let srv = self.server(s);
                cmds.push(format!("set server {be}/{srv} state maint"));
                cmds.push(format!("shutdown sessions server {be}/{srv}"));
            }
        }
        if let LbTarget::Serve(s) = target {
            let srv = self.server(s);
            // The sidecar answers this server's check with 200 already, so
            // forcing the health up only saves waiting for `rise` checks.
            cmds.push(format!("set server {be}/{srv} health up"));
            cmds.push(format!("set server {be}/{srv} state ready"));
        }
        self.change(&cmds).await?;
        let (hot, warm) = self.servers().await?;
        let seen = self.target_of(&hot, &warm)?;
        debug!(%target, elapsed_us = started.elapsed().as_micros() as u64, "haproxy apply");
        if seen != target {
            return Err(LbError::NotConfirmed {
                wanted: target,
                seen: format!("{seen} (hot {hot:?}, warm {warm:?})"),
            });
        }
        Ok(Observed {
            target: seen,
            restarted: false,
        })
    }

    async fn observe(&self) -> Result<Observed, LbError> {
        let restarted = self.restarted().await?;
        let (hot, warm) = self.servers().await?;
        Ok(Observed {
            target: self.target_of(&hot, &warm)?,
            restarted,
        })
    }

    fn guarantees(&self) -> &'static str {
        "HAProxy: break-before-make per LB, confirmed by read-back; dead-man's switch through health checks on the sidecar"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: &str = "1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 kme 1 hot 127.0.0.1 2 0 1 1 5 15 3 4 6 0 0 0 - 41000 - 0 41002 127.0.0.1 - 0
3 kme 2 warm 127.0.0.1 0 1 1 1 5 6 3 0 14 0 0 0 - 41001 - 0 41002 127.0.0.1 - 0
";

    #[test]
    fn parses_servers_state() {
        let s = parse_servers_state(STATE).expect("parse");
        assert_eq!(s.len(), 2);
        assert!(s[0].routes());
        assert!(s[1].in_maint() && !s[1].routes());
        assert!(parse_servers_state("2\n").is_err());
        assert!(parse_servers_state("1\n3 kme 1\n").is_err());
    }

    #[test]
    fn the_config_disabled_bit_alone_is_not_maintenance() {
        // After `set server kme/hot state ready` a server `disabled` in the
        // config reads back admin_state 4, and HAProxy routes to it.
        let line = "1\n3 kme 1 hot 127.0.0.1 2 4 1 1 5 15 3 4 6 0 0 0 - 41000 - 0 0 - - 0\n";
        let s = parse_servers_state(line).expect("parse");
        assert!(!s[0].in_maint() && s[0].routes());
    }

    #[test]
    fn a_disabled_server_is_in_maintenance() {
        let line = "1\n3 kme 1 hot 127.0.0.1 0 5 1 1 5 15 3 4 6 0 0 0 - 41000 - 0 0 - - 0\n";
        let s = parse_servers_state(line).expect("parse");
        assert!(s[0].in_maint());
    }

    #[test]
    fn process_identity_changes_with_pid_or_start() {
        let a = parse_process_identity("Name: HAProxy\nPid: 12\nStart_time_sec: 100\n");
        let b = parse_process_identity("Name: HAProxy\nPid: 13\nStart_time_sec: 100\n");
        assert!(a.is_some() && a != b);
    }
}
