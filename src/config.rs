//! Sidecar configuration: one TOML file plus `LOCKSTEP_<SECTION>__<KEY>`
//! environment overrides (e.g. `LOCKSTEP_ETCD__LEASE_TTL=5s`,
//! `LOCKSTEP_MEMBER_ID=alice-0`), validated before anything starts.
//!
//! Validation includes DESIGN §3's timing rule, which self-fencing relies on:
//! `lease_ttl > keepalive_interval + D + margin`, with D the LB's
//! down-detection bound ([`Config::lb_down_detection`]).

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use lockstep_core::{Role, Setup};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Environment variables under the `LOCKSTEP_` prefix that belong to the CLI
/// (and `LOCKSTEP_MUTATION`, read by test builds of the sidecar), not to the
/// config file; without this they would be "unknown keys".
const CLI_ENV_KEYS: &[&str] = &["endpoint", "config", "mutation"];

/// This build's etcd client has no TLS feature: an `https://` endpoint would
/// only fail once the sidecar runs, so the config refuses it up front.
const ETCD_TLS: bool = false;

/// One sidecar's configuration. See [`example`] for every key with comments.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The QKD link; a component of every etcd key, so `[a-z0-9-_]` only.
    pub link: String,
    /// Unique within the link; names this member's etcd key.
    pub member_id: String,
    /// Which end of the link this member's LB fronts.
    pub role: Role,
    /// What a brand-new link (no route in etcd yet) serves first.
    #[serde(default = "default_initial_setup")]
    pub initial_setup: Setup,
    /// Where the election, the route and member records live.
    #[serde(default)]
    pub etcd: EtcdConfig,
    /// Peer (Drain/Serve) and Admin services.
    #[serde(default)]
    pub grpc: GrpcConfig,
    /// What the LB checks, plus health and metrics.
    #[serde(default)]
    pub http: HttpConfig,
    /// The LB this sidecar drives.
    #[serde(default)]
    pub lb: LbConfig,
    /// Health of this member's role's KMEs, which failover decisions use.
    #[serde(default)]
    pub probe: ProbeConfig,
    /// Defaults of admin calls.
    #[serde(default)]
    pub admin: AdminConfig,
    /// When the leader switches on its own.
    #[serde(default)]
    pub failover: FailoverConfig,
}

/// Election, route and member records.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdConfig {
    /// Client URLs, `http://host:port`.
    pub endpoints: Vec<String>,
    /// Keys live under `<prefix>/<link>/`.
    pub prefix: String,
    /// Lease TTL (whole seconds, etcd's unit). Also the longest a dead member
    /// can hold a switch up.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How often the lease is kept alive.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// Self-fencing margin: a member blocks its LB once `lease_ttl - margin`
    /// has passed since its last acknowledged keep-alive was sent.
    #[serde(with = "humantime_serde")]
    pub margin: Duration,
    /// Bound on connecting to etcd at start-up.
    #[serde(with = "humantime_serde")]
    pub dial_timeout: Duration,
    /// Bound on one etcd request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

/// Peer and Admin gRPC services.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// Where the gRPC server binds.
    pub listen: SocketAddr,
    /// `host:port` peers and the CLI dial; empty means `listen`.
    pub advertise: String,
}

/// The LB's check endpoint, `/healthz`, `/readyz` and `/metrics`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Where the HTTP server binds; the LB's `check` points here.
    pub listen: SocketAddr,
}

/// The LB this sidecar drives. `check_*` must match the LB's own settings:
/// they give D, the bound self-fencing relies on.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LbConfig {
    /// Only "haproxy" for now.
    pub kind: String,
    /// HAProxy's admin socket (Runtime API).
    pub socket: PathBuf,
    /// The backend holding both setups' servers.
    pub backend: String,
    pub server_hot: String,
    pub server_warm: String,
    /// HAProxy `inter`: how often it checks the sidecar.
    #[serde(with = "humantime_serde")]
    pub check_inter: Duration,
    /// HAProxy `fall`: failed checks before a server is marked down.
    pub check_fall: u32,
    /// HAProxy `rise`: good checks before a server is marked up.
    pub check_rise: u32,
    /// HAProxy `timeout check`.
    #[serde(with = "humantime_serde")]
    pub check_timeout: Duration,
    /// Bound on one Runtime API command.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// How often the sidecar reads the LB back to catch drift (e.g. a restart).
    #[serde(with = "humantime_serde")]
    pub drift_interval: Duration,
}

/// ETSI GS QKD 014 status probes of this member's role's KMEs.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeConfig {
    /// Base URL of the hot setup's KME; none means its health is "unknown".
    pub hot: Option<String>,
    /// Base URL of the warm setup's KME; none means its health is "unknown".
    pub warm: Option<String>,
    /// The SAE in the status path `/api/v1/keys/{sae_id}/status`.
    pub sae_id: String,
    /// Time between probes of one KME.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Bound on one probe; no answer counts as a failure.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Good probes in a row before a KME counts as up.
    pub rise: u32,
    /// Failed probes in a row before a KME counts as down.
    pub fall: u32,
    /// PEM CA bundle the KMEs' certificates must chain to; required when a
    /// URL is `https://`.
    pub ca: Option<PathBuf>,
    /// PEM client certificate (chain) for mutual TLS; needs `client_key`.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// Count `stored_key_count == 0` as a failed probe (else only a warning).
    pub empty_store_unhealthy: bool,
}

/// Automatic failover (DESIGN §5).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverConfig {
    /// Off: only on-call commands switch.
    pub enabled: bool,
    /// How long the active setup must stay unhealthy before moving.
    #[serde(with = "humantime_serde")]
    pub detection: Duration,
    /// No automatic move within this time of any switch.
    #[serde(with = "humantime_serde")]
    pub dwell: Duration,
    /// At most this many automatic switches per window, then pause.
    pub max_auto: u32,
    /// The window `max_auto` counts in.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// "manual", or "after <duration>" (e.g. "after 5m").
    pub failback: String,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            enabled: true,
            detection: Duration::from_secs(2),
            dwell: Duration::from_secs(30),
            max_auto: 3,
            window: Duration::from_secs(600),
            failback: "manual".into(),
        }
    }
}

impl FailoverConfig {
    /// `failback` parsed; the error says what is accepted.
    pub fn failback(&self) -> Result<lockstep_core::failover::Failback, String> {
        let f = self.failback.trim();
        if f == "manual" {
            return Ok(lockstep_core::failover::Failback::Manual);
        }
        if let Some(d) = f.strip_prefix("after ") {
            return humantime::parse_duration(d.trim())
                .map(lockstep_core::failover::Failback::After)
                .map_err(|e| format!("{f:?}: {e}; use e.g. \"after 5m\""));
        }
        Err(format!(
            "{f:?} must be \"manual\" or \"after <duration>\" (e.g. \"after 5m\")"
        ))
    }

    /// The pure policy's parameters; `primary` is where failback returns to.
    pub fn policy(&self, primary: Setup) -> Result<lockstep_core::failover::PolicyConfig, String> {
        Ok(lockstep_core::failover::PolicyConfig {
            enabled: self.enabled,
            detection: self.detection,
            dwell: self.dwell,
            max_auto: self.max_auto,
            window: self.window,
            primary,
            failback: self.failback()?,
        })
    }
}

/// The Admin service.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Bound on a switch called with `wait` when the caller gives none.
    #[serde(with = "humantime_serde")]
    pub switch_timeout: Duration,
}

fn default_initial_setup() -> Setup {
    Setup::Hot
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/lockstep".into(),
            lease_ttl: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(1),
            margin: Duration::from_secs(1),
            dial_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(2),
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            advertise: String::new(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7401)),
        }
    }
}

impl Default for LbConfig {
    fn default() -> Self {
        LbConfig {
            kind: "haproxy".into(),
            socket: PathBuf::from("/run/haproxy/admin.sock"),
            backend: "kme".into(),
            server_hot: "hot".into(),
            server_warm: "warm".into(),
            check_inter: Duration::from_millis(500),
            check_fall: 2,
            check_rise: 1,
            check_timeout: Duration::from_millis(300),
            command_timeout: Duration::from_secs(1),
            drift_interval: Duration::from_millis(500),
        }
    }
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            hot: None,
            warm: None,
            sae_id: String::new(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            rise: 2,
            fall: 2,
            ca: None,
            client_cert: None,
            client_key: None,
            empty_store_unhealthy: false,
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            switch_timeout: Duration::from_secs(30),
        }
    }
}

impl Config {
    /// D: within this bound after the sidecar stops answering its checks,
    /// the LB marks the sidecar's server down (and kills its sessions):
    /// `check_fall × (check_inter + min(connect timeout, check_inter) +
    /// check_timeout)`, measured on HAProxy 2.6 (see `lb::haproxy`).
    pub fn lb_down_detection(&self) -> Duration {
        crate::lb::haproxy::down_detection_bound(
            self.lb.check_inter,
            self.lb.check_fall,
            self.lb.check_timeout,
        )
    }

    /// How long after sending its last acknowledged keep-alive a member still
    /// counts its lease as fresh: `lease_ttl − margin`. Past it, it fences.
    pub fn lease_fresh_budget(&self) -> Duration {
        self.etcd.lease_ttl.saturating_sub(self.etcd.margin)
    }

    /// The right side of the timing rule: `lease_ttl` must exceed
    /// `keepalive_interval + D + margin`.
    pub fn lease_ttl_lower_bound(&self) -> Duration {
        self.etcd.keepalive_interval + self.lb_down_detection() + self.etcd.margin
    }

    /// The gRPC `host:port` peers dial: `grpc.advertise`, else `grpc.listen`.
    pub fn grpc_advertise(&self) -> String {
        if self.grpc.advertise.is_empty() {
            self.grpc.listen.to_string()
        } else {
            self.grpc.advertise.clone()
        }
    }

    /// Checks what serde cannot: formats, ranges and the timing rule.
    /// Errors name the key; their origin reads "config" (see [`load`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| {
            Err(ConfigError::Invalid {
                origin: "config".into(),
                key: key.into(),
                message,
            })
        };
        let positive = |key: &str, d: Duration| {
            if d.is_zero() {
                bad(key, "must be more than 0, e.g. \"500ms\"".into())
            } else {
                Ok(())
            }
        };
        let at_least_one = |key: &str, n: u32| {
            if n == 0 {
                bad(key, "must be at least 1".into())
            } else {
                Ok(())
            }
        };

        if self.link.is_empty()
            || !self
                .link
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        {
            return bad(
                "link",
                format!(
                    "{:?} must be non-empty and use only a-z, 0-9, '-' and '_' (it is part of every etcd key)",
                    self.link
                ),
            );
        }
        if self.member_id.is_empty()
            || !self
                .member_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return bad(
                "member_id",
                format!(
                    "{:?} must be non-empty and use only A-Z, a-z, 0-9, '.', '_' and '-'",
                    self.member_id
                ),
            );
        }

        let e = &self.etcd;
        if e.endpoints.is_empty() {
            return bad(
                "etcd.endpoints",
                "is empty; list at least one etcd client URL, e.g. [\"http://127.0.0.1:2379\"]"
                    .into(),
            );
        }
        for ep in &e.endpoints {
            if ep.starts_with("https://") && !ETCD_TLS {
                return bad(
                    "etcd.endpoints",
                    format!(
                        "{ep:?}: this build has no TLS support for etcd; use an http:// endpoint"
                    ),
                );
            }
            if let Err(why) = check_url(ep) {
                return bad("etcd.endpoints", format!("{ep:?} {why}"));
            }
        }
        if e.lease_ttl.subsec_nanos() != 0 || e.lease_ttl < Duration::from_secs(2) {
            return bad(
                "etcd.lease_ttl",
                format!(
                    "{:?} must be whole seconds ≥ 2s (etcd leases count in seconds)",
                    e.lease_ttl
                ),
            );
        }
        positive("etcd.keepalive_interval", e.keepalive_interval)?;
        if e.keepalive_interval >= e.lease_ttl / 2 {
            return bad(
                "etcd.keepalive_interval",
                format!(
                    "{:?} must be under half of etcd.lease_ttl ({:?}) so a lost keep-alive can be retried before the lease expires",
                    e.keepalive_interval,
                    e.lease_ttl
                ),
            );
        }
        positive("etcd.margin", e.margin)?;
        positive("etcd.dial_timeout", e.dial_timeout)?;
        positive("etcd.request_timeout", e.request_timeout)?;

        if self.grpc.listen == self.http.listen {
            return bad(
                "http.listen",
                format!(
                    "{} is also grpc.listen; give them different ports",
                    self.http.listen
                ),
            );
        }
        if self.grpc.advertise.is_empty() {
            if self.grpc.listen.ip().is_unspecified() {
                return bad(
                    "grpc.advertise",
                    format!(
                        "is empty while grpc.listen is {}, which peers cannot dial; set it to this member's reachable host:port",
                        self.grpc.listen
                    ),
                );
            }
        } else if self.grpc.advertise.contains("://")
            || check_url(&format!("http://{}", self.grpc.advertise)).is_err()
        {
            return bad(
                "grpc.advertise",
                format!(
                    "{:?} must be host:port without a scheme, e.g. \"10.0.0.5:7400\"",
                    self.grpc.advertise
                ),
            );
        }

        let lb = &self.lb;
        if lb.kind != "haproxy" {
            return bad(
                "lb.kind",
                format!("{:?} is not supported; use \"haproxy\"", lb.kind),
            );
        }
        for (key, name) in [
            ("lb.backend", &lb.backend),
            ("lb.server_hot", &lb.server_hot),
            ("lb.server_warm", &lb.server_warm),
        ] {
            if name.is_empty() {
                return bad(key, "is empty; name it as in the HAProxy config".into());
            }
        }
        if lb.server_hot == lb.server_warm {
            return bad(
                "lb.server_warm",
                format!(
                    "{:?} is also lb.server_hot; each setup needs its own server",
                    lb.server_warm
                ),
            );
        }
        positive("lb.check_inter", lb.check_inter)?;
        at_least_one("lb.check_fall", lb.check_fall)?;
        at_least_one("lb.check_rise", lb.check_rise)?;
        positive("lb.check_timeout", lb.check_timeout)?;
        positive("lb.command_timeout", lb.command_timeout)?;
        positive("lb.drift_interval", lb.drift_interval)?;

        let p = &self.probe;
        for (key, url) in [("probe.hot", &p.hot), ("probe.warm", &p.warm)] {
            let Some(url) = url else { continue };
            if url.starts_with("https://") && p.ca.is_none() {
                return bad(
                    "probe.ca",
                    format!("is unset but {key} is {url:?}; set it to the PEM CA bundle that signed the KME's certificate, or use an http:// URL"),
                );
            }
            if let Err(why) = check_url(url) {
                return bad(key, format!("{url:?} {why}"));
            }
            if p.sae_id.is_empty() {
                return bad(
                    "probe.sae_id",
                    format!("is empty but {key} is set; set the SAE id the status path names"),
                );
            }
        }
        positive("probe.interval", p.interval)?;
        positive("probe.timeout", p.timeout)?;
        at_least_one("probe.rise", p.rise)?;
        at_least_one("probe.fall", p.fall)?;
        // Reads and parses the PEM files, so bad ones stop the start-up.
        if let Err(e) = crate::probe::tls_config(p) {
            return bad(&format!("probe.{}", e.key), e.message);
        }

        positive("admin.switch_timeout", self.admin.switch_timeout)?;

        if let Err(why) = self.failover.failback() {
            return bad("failover.failback", why);
        }
        if self.failover.max_auto == 0 {
            return bad(
                "failover.max_auto",
                "must be at least 1 (set failover.enabled = false to turn automatic failover off)"
                    .into(),
            );
        }
        positive("failover.window", self.failover.window)?;

        let d = self.lb_down_detection();
        let sum = self.lease_ttl_lower_bound();
        if e.lease_ttl <= sum {
            return Err(ConfigError::Timing {
                origin: "config".into(),
                lease_ttl: e.lease_ttl,
                keepalive_interval: e.keepalive_interval,
                d,
                margin: e.margin,
                sum,
            });
        }
        Ok(())
    }
}

/// `Ok` for an `http://` or `https://` URL with a host; else why not.
fn check_url(url: &str) -> Result<(), &'static str> {
    let uri: hyper::Uri = url.parse().map_err(|_| "is not a URL")?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("must start with http:// or https://"),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("has no host");
    }
    Ok(())
}

/// Why a config was refused. Each message names where the problem is and
/// what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {}: {source}; check the path (--config or LOCKSTEP_CONFIG) and its permissions", .path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {} is not TOML: {message}", .path.display())]
    NotToml { path: PathBuf, message: String },
    #[error(
        "{origin}: unknown key `{key}` (valid here: {expected}); remove it or fix its spelling"
    )]
    UnknownKey {
        origin: String,
        key: String,
        expected: String,
    },
    #[error("{origin}: required key `{key}` is missing; add it (see deploy/local/lockstep.example.toml)")]
    MissingKey { origin: String, key: String },
    #[error("{origin}: `{key}`: {message}")]
    Invalid {
        origin: String,
        key: String,
        message: String,
    },
    #[error("{origin}: timing rule broken: etcd.lease_ttl ({:?}) must exceed etcd.keepalive_interval ({:?}) + D ({:?}, = lb.check_inter × lb.check_fall + lb.check_timeout) + etcd.margin ({:?}) = {:?}; raise etcd.lease_ttl or shorten the others", .lease_ttl, .keepalive_interval, .d, .margin, .sum)]
    Timing {
        origin: String,
        lease_ttl: Duration,
        keepalive_interval: Duration,
        /// The LB's down-detection bound.
        d: Duration,
        margin: Duration,
        /// `keepalive_interval + d + margin`.
        sum: Duration,
    },
}

impl ConfigError {
    fn with_origin(mut self, new: String) -> Self {
        match &mut self {
            ConfigError::UnknownKey { origin, .. }
            | ConfigError::MissingKey { origin, .. }
            | ConfigError::Invalid { origin, .. }
            | ConfigError::Timing { origin, .. } => *origin = new,
            ConfigError::Unreadable { .. } | ConfigError::NotToml { .. } => {}
        }
        self
    }
}

/// Loads `path`, applies `LOCKSTEP_<SECTION>__<KEY>` overrides, validates.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    let env = Env::prefixed("LOCKSTEP_").ignore(CLI_ENV_KEYS).split("__");
    parse(path, &text, Some(env))
}

/// The commented example config (`deploy/local/lockstep.example.toml`).
pub fn example() -> &'static str {
    include_str!("../deploy/local/lockstep.example.toml")
}

/// The env var that overrides `key` (e.g. `etcd.lease_ttl`).
fn env_var(key: &str) -> String {
    format!("LOCKSTEP_{}", key.replace('.', "__").to_uppercase())
}

fn parse(path: &Path, text: &str, env: Option<Env>) -> Result<Config, ConfigError> {
    let file_origin = format!("config {}", path.display());
    let toml = Toml::string(text);
    // Syntax errors surface here, before any key is looked at.
    figment::Provider::data(&toml).map_err(|e| ConfigError::NotToml {
        path: path.to_path_buf(),
        message: e.to_string().trim().to_string(),
    })?;
    let mut figment = Figment::from(toml);
    if let Some(env) = env {
        figment = figment.merge(env);
    }
    let config: Config = figment
        .extract()
        .map_err(|e| from_figment(e, &file_origin))?;
    config.validate().map_err(|e| {
        // Point at the variables when a bad value came from the environment.
        let keys: &[&str] = match &e {
            ConfigError::Invalid { key, .. } => &[key.as_str()],
            ConfigError::Timing { .. } => &TIMING_KEYS,
            _ => &[],
        };
        let set: Vec<String> = keys
            .iter()
            .map(|k| env_var(k))
            .filter(|v| std::env::var_os(v).is_some())
            .collect();
        let origin = if set.is_empty() {
            file_origin.clone()
        } else {
            format!("{file_origin} (overridden by {})", set.join(", "))
        };
        e.with_origin(origin)
    })?;
    Ok(config)
}

/// The keys the timing rule reads.
const TIMING_KEYS: [&str; 6] = [
    "etcd.lease_ttl",
    "etcd.keepalive_interval",
    "etcd.margin",
    "lb.check_inter",
    "lb.check_fall",
    "lb.check_timeout",
];

/// The first of figment's errors (fixing one at a time is clear enough), named by key and by where it came from.
fn from_figment(errors: figment::Error, file_origin: &str) -> ConfigError {
    use figment::error::Kind;
    let Some(e) = errors.into_iter().next() else {
        return ConfigError::Invalid {
            origin: file_origin.into(),
            key: String::new(),
            message: "cannot be read".into(),
        };
    };
    let from_env = e
        .metadata
        .as_ref()
        .is_some_and(|m| m.name.contains("environment"));
    let path: Vec<String> = e.path.iter().map(|p| p.to_lowercase()).collect();
    let key = path.join(".");
    let origin = if from_env {
        format!("environment variable {}", env_var(&key))
    } else {
        file_origin.to_string()
    };
    match e.kind {
        Kind::UnknownField(field, expected) => ConfigError::UnknownKey {
            origin,
            // Figment's path ends with the unknown field already.
            key: if path.last() == Some(&field.to_lowercase()) {
                key
            } else {
                join_key(&key, &field)
            },
            expected: expected.join(", "),
        },
        Kind::MissingField(field) => ConfigError::MissingKey {
            origin,
            key: join_key(&key, &field),
        },
        Kind::UnknownVariant(found, expected) => ConfigError::Invalid {
            origin,
            key,
            message: format!("{found:?} is not one of: {}", expected.join(", ")),
        },
        other => {
            let mut message = other.to_string();
            if message.contains("expected a duration") {
                message.push_str("; write durations like \"500ms\" or \"5s\"");
            }
            ConfigError::Invalid {
                origin,
                key,
                message,
            }
        }
    }
}

fn join_key(parent: &str, field: &str) -> String {
    if parent.is_empty() {
        field.to_string()
    } else {
        format!("{parent}.{field}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "link = \"qkd-1\"\nmember_id = \"alice-0\"\nrole = \"alice\"\n";

    /// The required keys plus `extra`, without environment overrides.
    fn cfg(extra: &str) -> Result<Config, ConfigError> {
        parse(Path::new("t.toml"), &format!("{BASE}{extra}"), None)
    }

    /// The key an `Invalid` error names, and its message.
    fn invalid(extra: &str) -> (String, String) {
        match cfg(extra) {
            Err(e) => match &e {
                ConfigError::Invalid { key, .. } => (key.clone(), e.to_string()),
                _ => panic!("expected Invalid for {extra:?}, got {e:?}"),
            },
            Ok(_) => panic!("expected Invalid for {extra:?}, got a valid config"),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn defaults_satisfy_the_rule_and_derive_the_bounds() {
        let c = cfg("").expect("defaults are valid");
        assert_eq!(c.initial_setup, Setup::Hot);
        assert_eq!(c.lb_down_detection(), ms(2600));
        assert_eq!(c.lease_fresh_budget(), ms(4000));
        assert_eq!(c.lease_ttl_lower_bound(), ms(4600));
        assert_eq!(c.grpc_advertise(), "127.0.0.1:7400");
        assert!(c.probe.hot.is_none());
    }

    #[test]
    fn the_example_is_valid_and_sets_every_section() {
        let c = parse(Path::new("example.toml"), example(), None).expect("example is valid");
        assert_eq!(c.role, Role::Alice);
        assert_eq!(c.probe.hot.as_deref(), Some("http://127.0.0.1:8443"));
        assert_eq!(c.admin.switch_timeout, Duration::from_secs(30));
    }

    #[test]
    fn advertise_overrides_listen() {
        let c = cfg("[grpc]\nlisten = \"0.0.0.0:7400\"\nadvertise = \"10.0.0.5:7400\"\n")
            .expect("valid");
        assert_eq!(c.grpc_advertise(), "10.0.0.5:7400");
    }

    #[test]
    fn unreadable_file_names_the_path() {
        let e = load(Path::new("/nonexistent/lockstep.toml")).expect_err("missing");
        assert!(matches!(e, ConfigError::Unreadable { .. }), "{e:?}");
        assert!(e.to_string().contains("/nonexistent/lockstep.toml"), "{e}");
    }

    #[test]
    fn not_toml() {
        let e = parse(Path::new("t.toml"), "not toml [[[", None).expect_err("bad");
        assert!(matches!(e, ConfigError::NotToml { .. }), "{e:?}");
        assert!(
            e.to_string().starts_with("config t.toml is not TOML"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_are_named_with_their_section() {
        for (extra, want) in [
            ("bogus = 1\n", "bogus"),
            ("[etcd]\nlease_tll = \"5s\"\n", "etcd.lease_tll"),
            ("[nope]\nx = 1\n", "nope"),
        ] {
            match cfg(extra) {
                Err(ConfigError::UnknownKey { key, origin, .. }) => {
                    assert_eq!(key, want);
                    assert_eq!(origin, "config t.toml");
                }
                other => panic!("{extra:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn missing_required_keys() {
        for (text, want) in [
            ("member_id = \"a\"\nrole = \"bob\"\n", "link"),
            ("link = \"x\"\nrole = \"bob\"\n", "member_id"),
            ("link = \"x\"\nmember_id = \"a\"\n", "role"),
        ] {
            match parse(Path::new("t.toml"), text, None) {
                Err(ConfigError::MissingKey { key, .. }) => assert_eq!(key, want),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn bad_values_name_the_key() {
        let text = "link = \"x\"\nmember_id = \"a\"\nrole = \"carol\"\n";
        let e = parse(Path::new("t.toml"), text, None).expect_err("bad role");
        assert!(
            e.to_string()
                .contains("\"carol\" is not one of: alice, bob"),
            "{e}"
        );
        for (extra, key) in [
            ("initial_setup = \"lukewarm\"\n", "initial_setup"),
            ("[etcd]\nlease_ttl = \"5x\"\n", "etcd.lease_ttl"),
            ("[etcd]\nlease_ttl = 5\n", "etcd.lease_ttl"),
            ("[grpc]\nlisten = \"localhost\"\n", "grpc.listen"),
            ("[lb]\ncheck_fall = -1\n", "lb.check_fall"),
        ] {
            assert_eq!(invalid(extra).0, key, "{extra:?}");
        }
        assert!(invalid("[etcd]\nmargin = \"1x\"\n").1.contains("\"500ms\""));
    }

    #[test]
    fn names_are_checked() {
        for bad in ["\"Qkd\"", "\"qkd/1\"", "\"\""] {
            let text = format!("link = {bad}\nmember_id = \"a\"\nrole = \"alice\"\n");
            match parse(Path::new("t.toml"), &text, None) {
                Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "link"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        let text = "link = \"x\"\nmember_id = \"alice 0\"\nrole = \"alice\"\n";
        match parse(Path::new("t.toml"), text, None) {
            Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "member_id"),
            other => panic!("{other:?}"),
        }
        assert!(parse(
            Path::new("t.toml"),
            "link = \"qkd_1-a\"\nmember_id = \"Alice.0_x-1\"\nrole = \"bob\"\n",
            None
        )
        .is_ok());
    }

    #[test]
    fn etcd_endpoints() {
        assert_eq!(invalid("[etcd]\nendpoints = []\n").0, "etcd.endpoints");
        assert!(invalid("[etcd]\nendpoints = [\"127.0.0.1:2379\"]\n")
            .1
            .contains("http://"));
        assert!(invalid("[etcd]\nendpoints = [\"https://etcd:2379\"]\n")
            .1
            .contains("no TLS"));
        assert!(invalid("[etcd]\nendpoints = [\"http://\"]\n")
            .1
            .contains("URL"));
    }

    #[test]
    fn lease_ttl_is_whole_seconds_of_at_least_two() {
        for ttl in ["1500ms", "1s", "5500ms"] {
            let (key, text) = invalid(&format!("[etcd]\nlease_ttl = \"{ttl}\"\n"));
            assert_eq!(key, "etcd.lease_ttl");
            assert!(text.contains("whole seconds ≥ 2s"), "{text}");
        }
    }

    #[test]
    fn keepalive_and_margin() {
        let (key, text) = invalid("[etcd]\nkeepalive_interval = \"2500ms\"\n");
        assert_eq!(key, "etcd.keepalive_interval");
        assert!(text.contains("half"), "{text}");
        assert_eq!(
            invalid("[etcd]\nkeepalive_interval = \"0s\"\n").0,
            "etcd.keepalive_interval"
        );
        assert_eq!(invalid("[etcd]\nmargin = \"0s\"\n").0, "etcd.margin");
        assert_eq!(
            invalid("[etcd]\ndial_timeout = \"0s\"\n").0,
            "etcd.dial_timeout"
        );
    }

    #[test]
    fn timing_rule_boundary() {
        // keep-alive 1s + D 2.6s + margin 1.4s = 5s: equal is not enough.
        let at = "[etcd]\nlease_ttl = \"5s\"\nkeepalive_interval = \"1s\"\nmargin = \"1400ms\"\n";
        match cfg(at) {
            Err(ConfigError::Timing {
                lease_ttl, d, sum, ..
            }) => {
                assert_eq!(lease_ttl, Duration::from_secs(5));
                assert_eq!(d, ms(2600));
                assert_eq!(sum, Duration::from_secs(5));
            }
            other => panic!("{other:?}"),
        }
        let below =
            "[etcd]\nlease_ttl = \"5s\"\nkeepalive_interval = \"1s\"\nmargin = \"1399ms\"\n";
        assert!(cfg(below).is_ok());
    }

    #[test]
    fn timing_error_names_all_four_numbers_and_what_to_change() {
        let e = cfg("[etcd]\nlease_ttl = \"3s\"\n").expect_err("3s < 4.6s");
        let text = e.to_string();
        for part in [
            "config t.toml",
            "etcd.lease_ttl (3s)",
            "etcd.keepalive_interval (1s)",
            "D (2.6s",
            "etcd.margin (1s)",
            "= 4.6s",
            "raise etcd.lease_ttl",
        ] {
            assert!(text.contains(part), "{part:?} missing in {text}");
        }
        // D grows with the LB's check settings.
        let e = cfg("[lb]\ncheck_inter = \"1s\"\ncheck_fall = 3\n").expect_err("D = 6.9s");
        assert!(matches!(e, ConfigError::Timing { .. }), "{e:?}");
    }

    #[test]
    fn grpc_and_http_addresses() {
        assert_eq!(
            invalid("[grpc]\nlisten = \"0.0.0.0:7400\"\n").0,
            "grpc.advertise"
        );
        assert_eq!(
            invalid("[grpc]\nadvertise = \"http://10.0.0.5:7400\"\n").0,
            "grpc.advertise"
        );
        assert_eq!(
            invalid("[http]\nlisten = \"127.0.0.1:7400\"\n").0,
            "http.listen"
        );
    }

    #[test]
    fn lb_settings() {
        assert_eq!(invalid("[lb]\nkind = \"nginx\"\n").0, "lb.kind");
        assert_eq!(invalid("[lb]\nserver_warm = \"hot\"\n").0, "lb.server_warm");
        assert_eq!(invalid("[lb]\nbackend = \"\"\n").0, "lb.backend");
        assert_eq!(invalid("[lb]\ncheck_fall = 0\n").0, "lb.check_fall");
        assert_eq!(invalid("[lb]\ncheck_inter = \"0s\"\n").0, "lb.check_inter");
        assert_eq!(
            invalid("[lb]\ndrift_interval = \"0s\"\n").0,
            "lb.drift_interval"
        );
    }

    #[test]
    fn probe_settings() {
        assert_eq!(
            invalid("[probe]\nhot = \"kme:8443\"\nsae_id = \"S\"\n").0,
            "probe.hot"
        );
        assert_eq!(
            invalid("[probe]\nwarm = \"https://kme:8443\"\nsae_id = \"S\"\n").0,
            "probe.ca"
        );
        let (key, message) = invalid(
            "[probe]\nhot = \"https://kme:8443\"\nsae_id = \"S\"\nca = \"/nonexistent/ca.pem\"\n",
        );
        assert_eq!(key, "probe.ca");
        assert!(message.contains("/nonexistent/ca.pem"), "{message}");
        assert_eq!(
            invalid("[probe]\nclient_key = \"/k.pem\"\n").0,
            "probe.client_cert"
        );
        assert_eq!(
            invalid("[probe]\nhot = \"http://kme:8443\"\n").0,
            "probe.sae_id"
        );
        assert_eq!(invalid("[probe]\nfall = 0\n").0, "probe.fall");
        assert_eq!(invalid("[probe]\ninterval = \"0s\"\n").0, "probe.interval");
    }

    #[test]
    fn admin_and_failover() {
        assert_eq!(
            invalid("[admin]\nswitch_timeout = \"0s\"\n").0,
            "admin.switch_timeout"
        );
        assert_eq!(
            invalid("[failover]\nfailback = \"soon\"\n").0,
            "failover.failback"
        );
        assert_eq!(
            invalid("[failover]\nfailback = \"after 5x\"\n").0,
            "failover.failback"
        );
        assert_eq!(invalid("[failover]\nmax_auto = 0\n").0, "failover.max_auto");
        let c = cfg("[failover]\nfailback = \"after 5m\"\n").expect("valid");
        assert!(c.failover.policy(Setup::Hot).is_ok());
    }
}
