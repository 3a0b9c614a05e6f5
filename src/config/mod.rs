//! Sidecar configuration: one TOML file plus `LOCKSTEP_<SECTION>__<KEY>`
//! environment overrides (e.g. `LOCKSTEP_ETCD__LEASE_TTL=5s`,
//! `LOCKSTEP_MEMBER_ID=alice-0`), validated before anything starts.
//!
//! Validation includes DESIGN §3's timing rule, which self-fencing relies on:
//! `lease_ttl > keepalive_interval + D + margin`, with D the LB's
//! down-detection bound (`Config::lb_down_detection`).
//!
//! # Layout
//! * `schema`: [`Config`] and its sections, their defaults and the bounds
//!   a config implies.
//! * `validate`: `Config::validate`, the checks serde cannot make.
//! * `load`: [`load`], the file plus environment overrides, validated.
//! * this module: [`ConfigError`], why a config was refused.

mod load;
mod schema;
mod security;
mod validate;

#[cfg(test)]
pub(crate) use load::example_with_certs;
pub use load::load;
pub use schema::{
    AdminConfig, Config, EtcdConfig, FailoverConfig, GrpcConfig, GrpcRoles, GrpcTlsConfig,
    HttpConfig, LbConfig, NotifyConfig, ProbeConfig, StatusConfig,
};
pub(crate) use schema::{CommandConfig, WebhookConfig};
pub(crate) use security::read_password;

use std::path::PathBuf;
use std::time::Duration;

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

#[cfg(test)]
mod tests {
    //! What the tests of every part share: configs parsed from text.
    use super::*;
    use std::path::Path;

    const BASE: &str = "link = \"qkd-1\"\nmember_id = \"alice-0\"\nrole = \"alice\"\n";

    /// `text` parsed as the file `t.toml`, without environment overrides.
    pub(super) fn parse_text(text: &str) -> Result<Config, ConfigError> {
        load::parse(Path::new("t.toml"), text, None)
    }

    /// The required keys plus `extra`, without environment overrides, with
    /// plaintext gRPC (`grpc.insecure`), so tests of other sections need no
    /// certificates.
    pub(super) fn cfg(extra: &str) -> Result<Config, ConfigError> {
        parse_text(&format!("{BASE}{}", with_insecure(extra)))
    }

    /// `extra` with `grpc.insecure = true` added to its `[grpc]` table.
    pub(super) fn with_insecure(extra: &str) -> String {
        if extra.contains("[grpc]\n") {
            extra.replacen("[grpc]\n", "[grpc]\ninsecure = true\n", 1)
        } else {
            format!("{extra}\n[grpc]\ninsecure = true\n")
        }
    }

    /// The key an `Invalid` error names, and its message.
    pub(super) fn invalid(extra: &str) -> (String, String) {
        match cfg(extra) {
            Err(e) => match &e {
                ConfigError::Invalid { key, .. } => (key.clone(), e.to_string()),
                _ => panic!("expected Invalid for {extra:?}, got {e:?}"),
            },
            Ok(_) => panic!("expected Invalid for {extra:?}, got a valid config"),
        }
    }

    pub(super) fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }
}
