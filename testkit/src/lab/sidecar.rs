//! Starting `lockstep run` sidecars for labs and tests, each with a config
//! file written from [`SidecarSpec`].

use super::process::{free_port, wait_for_tcp, workspace_program, ChildGuard};
use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Timing shared by a lab's sidecars and HAProxies. Lab defaults are faster
/// than production's so tests that wait for a lease to expire stay short;
/// they satisfy the same rule (TTL > keep-alive + D + margin).
#[derive(Clone, Debug)]
pub struct Timing {
    pub lease_ttl: Duration,
    pub keepalive_interval: Duration,
    pub margin: Duration,
    pub check_inter: Duration,
    pub check_fall: u32,
    pub check_rise: u32,
    pub check_timeout: Duration,
    pub drift_interval: Duration,
    pub probe_interval: Duration,
    /// Probe failures in a row before a KME counts as down.
    pub probe_fall: u32,
    /// Failover policy (see `[failover]` in the config).
    pub failover_detection: Duration,
    pub failover_dwell: Duration,
    pub failover_max_auto: u32,
    pub failover_window: Duration,
    pub failback: String,
    pub failover_enabled: bool,
    /// `handover.issuer`: "alice", "bob" or "both" (no handover).
    pub handover_issuer: String,
    /// `handover.grace`: short in tests (each planned switch waits it).
    pub handover_grace: Duration,
    /// `[failsafe]`: off unless a test (or the lab's main job) turns it
    /// on, with `with_failsafe`.
    pub failsafe: bool,
    pub failsafe_grant: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            lease_ttl: Duration::from_secs(3),
            keepalive_interval: Duration::from_millis(500),
            margin: Duration::from_millis(500),
            check_inter: Duration::from_millis(200),
            check_fall: 2,
            check_rise: 1,
            check_timeout: Duration::from_millis(200),
            drift_interval: Duration::from_millis(250),
            probe_interval: Duration::from_millis(200),
            probe_fall: 2,
            failover_detection: Duration::ZERO,
            failover_dwell: Duration::from_secs(2),
            failover_max_auto: 3,
            failover_window: Duration::from_secs(60),
            failback: "manual".into(),
            failover_enabled: true,
            handover_issuer: "alice".into(),
            handover_grace: Duration::from_millis(100),
            failsafe: false,
            failsafe_grant: Duration::from_millis(2600),
        }
    }
}

impl Timing {
    /// Failsafe on, with a lease long enough to hold a grant: a grant must
    /// outlast D by a quarter of itself, and fit with D, the keep-alive
    /// interval and the margin inside the lease (`config/validate.rs`).
    pub fn with_failsafe(mut self) -> Timing {
        self.failsafe = true;
        self.lease_ttl = Duration::from_secs(6);
        self.failsafe_grant = (self.down_detection() + Duration::from_millis(100)) * 2;
        self
    }

    /// D: how long HAProxy takes to mark a server down once the sidecar
    /// stops answering.
    pub fn down_detection(&self) -> Duration {
        lockstep::lb::haproxy::down_detection_bound(
            self.check_inter,
            self.check_fall,
            self.check_timeout,
        )
    }
}

/// Everything one sidecar's config needs.
#[derive(Clone, Debug)]
pub struct SidecarSpec {
    pub link: String,
    pub member_id: String,
    pub role: String,
    pub etcd_endpoints: Vec<String>,
    pub prefix: String,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    /// The LB's checks on their own listener (`http.check_listen`).
    pub check: Option<SocketAddr>,
    /// The status page (`status.listen`).
    pub status: SocketAddr,
    pub haproxy_socket: PathBuf,
    pub backend: String,
    pub probe_hot: Option<String>,
    pub probe_warm: Option<String>,
    pub sae_id: String,
    pub timing: Timing,
    /// Extra environment for the process (e.g. FAILPOINTS in tests).
    pub env: Vec<(String, String)>,
    /// Network namespace to run in (`/run/netns/<name>`), if any.
    pub netns: Option<PathBuf>,
    /// gRPC mutual TLS; `None`: `grpc.insecure = true`.
    pub tls: Option<SidecarTls>,
    /// Extra lines for the `[etcd]` table (TLS, credentials).
    pub etcd_extra: String,
    /// Appended to the config (whole tables, e.g. `[[notify.webhook]]`).
    pub extra_toml: String,
}

/// A sidecar's gRPC TLS settings.
#[derive(Clone, Debug)]
pub struct SidecarTls {
    pub files: lockstep::tls::TlsFiles,
    /// The `[grpc.roles]` table.
    pub roles_toml: String,
    pub reload_interval: Duration,
}

fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

impl SidecarSpec {
    /// A spec on fresh loopback ports.
    pub fn new(
        link: &str,
        member_id: &str,
        role: &str,
        etcd_endpoints: Vec<String>,
    ) -> Result<Self> {
        Ok(SidecarSpec {
            link: link.into(),
            member_id: member_id.into(),
            role: role.into(),
            etcd_endpoints,
            prefix: "/lockstep".into(),
            grpc: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            http: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            check: None,
            status: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            haproxy_socket: PathBuf::new(),
            backend: "kme".into(),
            probe_hot: None,
            probe_warm: None,
            sae_id: String::new(),
            timing: Timing::default(),
            env: Vec::new(),
            netns: None,
            tls: None,
            etcd_extra: String::new(),
            extra_toml: String::new(),
        })
    }

    /// The config file, in the format `lockstep run --config` reads.
    pub fn to_toml(&self) -> String {
        let t = &self.timing;
        let endpoints = self
            .etcd_endpoints
            .iter()
            .map(|e| format!("{e:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut probe = format!(
            "[probe]\nsae_id = {:?}\ninterval = \"{}\"\ntimeout = \"{}\"\nrise = 1\nfall = {}\n",
            self.sae_id,
            ms(t.probe_interval),
            ms(t.probe_interval),
            t.probe_fall
        );
        if let Some(h) = &self.probe_hot {
            probe.push_str(&format!("hot = {h:?}\n"));
        }
        if let Some(w) = &self.probe_warm {
            probe.push_str(&format!("warm = {w:?}\n"));
        }
        let grpc_security = match &self.tls {
            None => "insecure = true\n".to_string(),
            Some(t) => format!(
                "\n[grpc.tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\nreload_interval = \"{}\"\n\n{}",
                t.files.ca,
                t.files.cert,
                t.files.key,
                ms(t.reload_interval),
                t.roles_toml
            ),
        };
        format!(
            r#"# Written by the lockstep lab.
link = {link:?}
member_id = {id:?}
role = {role:?}
initial_setup = "hot"

[etcd]
endpoints = [{endpoints}]
prefix = {prefix:?}
lease_ttl = "{ttl}s"
keepalive_interval = "{ka}"
margin = "{margin}"
{etcd_extra}
[grpc]
listen = "{grpc}"
{grpc_security}
[http]
listen = "{http}"
{check}

[lb]
kind = "haproxy"
socket = {socket:?}
backend = {backend:?}
server_hot = "hot"
server_warm = "warm"
check_inter = "{inter}"
check_fall = {fall}
check_rise = {rise}
check_timeout = "{ctimeout}"
drift_interval = "{drift}"

[failover]
enabled = {fo_enabled}
detection = "{fo_detection}"
dwell = "{fo_dwell}"
max_auto = {fo_max}
window = "{fo_window}"
failback = {fo_failback:?}

[handover]
issuer = {ho_issuer:?}
grace = "{ho_grace}"

[failsafe]
enabled = {fs_enabled}
grant_ttl = "{fs_grant}"

[status]
listen = "{status}"

{probe}
{extra}"#,
            link = self.link,
            id = self.member_id,
            role = self.role,
            prefix = self.prefix,
            ttl = t.lease_ttl.as_secs(),
            ka = ms(t.keepalive_interval),
            margin = ms(t.margin),
            grpc = self.grpc,
            etcd_extra = self.etcd_extra,
            http = self.http,
            check = self
                .check
                .map_or(String::new(), |c| format!("check_listen = \"{c}\"")),
            socket = self.haproxy_socket.to_string_lossy(),
            backend = self.backend,
            inter = ms(t.check_inter),
            fall = t.check_fall,
            rise = t.check_rise,
            ctimeout = ms(t.check_timeout),
            drift = ms(t.drift_interval),
            fo_enabled = t.failover_enabled,
            fo_detection = ms(t.failover_detection),
            fo_dwell = ms(t.failover_dwell),
            fo_max = t.failover_max_auto,
            fo_window = ms(t.failover_window),
            fo_failback = t.failback,
            ho_issuer = t.handover_issuer,
            ho_grace = ms(t.handover_grace),
            fs_enabled = t.failsafe,
            fs_grant = ms(t.failsafe_grant),
            status = self.status,
            extra = self.extra_toml,
        )
    }
}

/// A running `lockstep run`.
pub struct SidecarProcess {
    pub spec: SidecarSpec,
    pub config_path: PathBuf,
    pub log: PathBuf,
    pub guard: ChildGuard,
}

impl SidecarProcess {
    /// Writes the config and starts the sidecar; waits until its gRPC port
    /// accepts.
    pub fn spawn(spec: SidecarSpec, dir: &Path) -> Result<SidecarProcess> {
        let config_path = dir.join(format!("{}.toml", spec.member_id));
        std::fs::write(&config_path, spec.to_toml())
            .with_context(|| format!("writing {}", config_path.display()))?;
        let log = dir.join(format!("{}.log", spec.member_id));
        let guard = start(&spec, &config_path, &log)?;
        Ok(SidecarProcess {
            spec,
            config_path,
            log,
            guard,
        })
    }

    /// Starts it again (after a kill) with the same config and ports.
    pub fn restart(&mut self) -> Result<()> {
        self.guard.kill();
        self.guard = start(&self.spec, &self.config_path, &self.log)?;
        Ok(())
    }

    /// Its gRPC `host:port` (TLS unless the spec has none).
    pub fn endpoint(&self) -> String {
        self.spec.grpc.to_string()
    }

    /// The Admin client of this sidecar as the holder of `files` (`None`:
    /// plaintext, which only an insecure sidecar accepts).
    pub async fn admin_as(
        &self,
        files: Option<&lockstep::tls::TlsFiles>,
    ) -> Result<lockstep::proto::admin_client::AdminClient<tonic::transport::Channel>> {
        let channel =
            lockstep::tls::client::connect(&self.endpoint(), files, Duration::from_secs(2))
                .await
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("connecting to {}", self.endpoint()))?;
        Ok(lockstep::proto::admin_client::AdminClient::new(channel))
    }

    /// `GET path` on the sidecar's HTTP listener (`/healthz`, `/readyz`,
    /// `/metrics`, `/check/<server>`).
    pub async fn http_get(&self, path: &str) -> Result<crate::http::HttpReply> {
        crate::http::http_once(
            self.spec.http,
            hyper::Method::GET,
            path,
            None,
            Duration::from_secs(2),
        )
        .await
    }

    /// The status page's base URL, `http://host:port/`.
    pub fn status_url(&self) -> String {
        format!("http://{}/", self.spec.status)
    }

    /// `/metrics`, parsed.
    pub async fn scrape(&self) -> Result<crate::metrics::Scrape> {
        let reply = self.http_get("/metrics").await?;
        if reply.status != 200 {
            bail!(
                "/metrics of {} answered {}",
                self.spec.member_id,
                reply.status
            );
        }
        crate::metrics::Scrape::parse(&String::from_utf8_lossy(&reply.body))
    }

    /// The sidecar's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn start(spec: &SidecarSpec, config: &Path, log: &Path) -> Result<ChildGuard> {
    let mut cmd = Command::new(workspace_program("lockstep")?);
    cmd.arg("run").arg("--config").arg(config);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info,lockstep=debug");
    }
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
    if let Some(ns) = &spec.netns {
        crate::netns::enter_netns(&mut cmd, ns)?;
    }
    let mut guard = ChildGuard::spawn(&spec.member_id, cmd, log)?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if wait_for_tcp(spec.grpc, Duration::from_millis(100)).is_ok() {
            return Ok(guard);
        }
        // A sidecar that cannot start (e.g. no etcd) exits: say so at once.
        if !guard.is_running() {
            bail!(
                "sidecar {} exited during start-up; see {}",
                spec.member_id,
                log.display()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "sidecar {} did not start within 15s; see {}",
                spec.member_id,
                log.display()
            );
        }
    }
}
