//! Sidecar configuration: one TOML file plus `LOCKSTEP_*` environment
//! overrides, validated before anything starts.
//!

use lockstep_core::{Role, Setup};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub link: String,
    pub member_id: String,
    pub role: Role,
    #[serde(default = "default_initial_setup")]
    pub initial_setup: Setup,
    #[serde(default)]
    pub etcd: EtcdConfig,
    #[serde(default)]
    pub grpc: GrpcConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub lb: LbConfig,
    #[serde(default)]
    pub probe: ProbeConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub failover: FailoverConfig,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub prefix: String,
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub margin: Duration,
    #[serde(with = "humantime_serde")]
    pub dial_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    pub listen: SocketAddr,
    pub advertise: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LbConfig {
    pub kind: String,
    pub socket: PathBuf,
    pub backend: String,
    pub server_hot: String,
    pub server_warm: String,
    #[serde(with = "humantime_serde")]
    pub check_inter: Duration,
    pub check_fall: u32,
    pub check_rise: u32,
    #[serde(with = "humantime_serde")]
    pub check_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub drift_interval: Duration,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeConfig {
    pub hot: Option<String>,
    pub warm: Option<String>,
    pub sae_id: String,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

/// Automatic failover (DESIGN §5).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverConfig {
    pub enabled: bool,
    /// How long the active setup must stay unhealthy before moving.
    #[serde(with = "humantime_serde")]
    pub detection: Duration,
    /// No automatic move within this time of any switch.
    #[serde(with = "humantime_serde")]
    pub dwell: Duration,
    /// At most this many automatic switches per window, then pause.
    pub max_auto: u32,
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
    pub fn failback(&self) -> Result<lockstep_core::failover::Failback, String> {
        let f = self.failback.trim();
        if f == "manual" {
            return Ok(lockstep_core::failover::Failback::Manual);
        }
        if let Some(d) = f.strip_prefix("after ") {
            return humantime::parse_duration(d.trim())
                .map(lockstep_core::failover::Failback::After)
                .map_err(|e| format!("failover.failback {f:?}: {e}"));
        }
        Err(format!(
            "failover.failback {f:?} must be \"manual\" or \"after <duration>\" (e.g. \"after 5m\")"
        ))
    }

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

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    #[serde(with = "humantime_serde")]
    pub switch_timeout: Duration,
}

impl Config {
    pub fn lb_down_detection(&self) -> Duration {
        self.lb.check_inter * self.lb.check_fall + self.lb.check_timeout
    }

    pub fn grpc_advertise(&self) -> String {
        if self.grpc.advertise.is_empty() {
            self.grpc.listen.to_string()
        } else {
            self.grpc.advertise.clone()
        }
    }
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

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("timing rule broken: lease_ttl ({ttl:?}) must exceed keepalive_interval ({keepalive:?}) + LB down-detection ({d:?} = check_inter x check_fall + check_timeout) + margin ({margin:?}) = {sum:?}; raise etcd.lease_ttl or shorten the others")]
    Timing {
        ttl: Duration,
        keepalive: Duration,
        d: Duration,
        margin: Duration,
        sum: Duration,
    },
}

/// Loads `path`, applies `LOCKSTEP_<SECTION>__<KEY>` overrides, validates.
pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
    use figment::providers::{Env, Format, Toml};
    std::fs::metadata(path).map_err(|source| ConfigError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    let config: Config = figment::Figment::new()
        .merge(Toml::file(path))
        .merge(Env::prefixed("LOCKSTEP_").split("__"))
        .extract()
        .map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    config.validate().map_err(|e| match e {
        ConfigError::Invalid { message, .. } => ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        },
        other => other,
    })?;
    Ok(config)
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: PathBuf::new(),
            message,
        };
        if self.link.is_empty()
            || !self
                .link
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        {
            return Err(invalid(format!(
                "link {:?} must be non-empty [a-z0-9-_]",
                self.link
            )));
        }
        if self.member_id.is_empty()
            || !self
                .member_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(invalid(format!(
                "member_id {:?} must be non-empty [A-Za-z0-9._-]",
                self.member_id
            )));
        }
        if self.etcd.endpoints.is_empty() {
            return Err(invalid("etcd.endpoints is empty".into()));
        }
        let e = &self.etcd;
        if e.lease_ttl.subsec_nanos() != 0 || e.lease_ttl < Duration::from_secs(2) {
            return Err(invalid(format!(
                "etcd.lease_ttl {:?} must be whole seconds, at least 2s",
                e.lease_ttl
            )));
        }
        if e.margin.is_zero() {
            return Err(invalid("etcd.margin must be > 0".into()));
        }
        let d = self.lb_down_detection();
        let sum = e.keepalive_interval + d + e.margin;
        if e.lease_ttl <= sum {
            return Err(ConfigError::Timing {
                ttl: e.lease_ttl,
                keepalive: e.keepalive_interval,
                d,
                margin: e.margin,
                sum,
            });
        }
        self.failover.failback().map_err(invalid)?;
        if self.failover.max_auto == 0 {
            return Err(invalid(
                "failover.max_auto must be at least 1 (set failover.enabled = false to turn automatic failover off)".into(),
            ));
        }
        if self.lb.kind != "haproxy" {
            return Err(invalid(format!(
                "lb.kind {:?} is not supported; use \"haproxy\"",
                self.lb.kind
            )));
        }
        Ok(())
    }
}
