//! The config's schema: every section and key with its default, and the
//! bounds a config implies (D, the lease's fresh budget, the timing rule's
//! right side). See `deploy/local/lockstep.example.toml` for every key with
//! comments.

use lockstep_core::{Role, Setup};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// One sidecar's configuration. See `deploy/local/lockstep.example.toml`
/// for every key with comments.
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
    /// Planned switches that strand no key in transit.
    #[serde(default)]
    pub handover: HandoverConfig,
    /// The read-only status page (off unless `status.listen` is set).
    #[serde(default)]
    pub status: StatusConfig,
    /// Webhooks and commands told of every transition the leader makes.
    #[serde(default)]
    pub notify: NotifyConfig,
    /// Serving on while etcd is unreachable.
    #[serde(default)]
    pub failsafe: FailsafeSection,
}

/// Failsafe (`docs/design.md`, "Failsafe"): when this member cannot renew
/// its lease it keeps its LB serving the route it served while every other
/// member of that route's roster grants it (they cannot reach etcd either
/// and take no part in a switch meanwhile). Nothing switches until etcd is
/// back. Off by default: with it, a member cut from etcd together with its
/// peers keeps serving instead of blocking, and a roster member that died
/// makes failsafe impossible until the leader rewrites the roster.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailsafeSection {
    pub enabled: bool,
    /// How long a grant lasts; asked again every quarter of it. Must
    /// outlast the LB's down-detection bound D, and fit with D and the
    /// keep-alive interval inside `etcd.lease_ttl - etcd.margin`.
    #[serde(with = "humantime_serde")]
    pub grant_ttl: Duration,
    /// The longest a member serves on grants after its lease stopped being
    /// fresh; also how long a full restart of every sidecar waits before a
    /// new one may lead.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
}

impl Default for FailsafeSection {
    fn default() -> Self {
        FailsafeSection {
            enabled: false,
            grant_ttl: Duration::from_secs(2),
            max: Duration::from_secs(600),
        }
    }
}

impl FailsafeSection {
    /// The protocol's failsafe parameters, when it is on.
    pub(crate) fn protocol(&self) -> Option<lockstep_core::failsafe::FailsafeConfig> {
        self.enabled
            .then_some(lockstep_core::failsafe::FailsafeConfig {
                grant_ttl: self.grant_ttl,
                max: self.max,
            })
    }
}

/// The status page: an HTML page, `/status` (JSON) and `/events`
/// (server-sent events), read-only and without authentication, so on its
/// own listener: loopback, reached through `kubectl port-forward` or an
/// authenticating proxy (`docs/security.md`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusConfig {
    /// Where the page is served; unset (the default): no page.
    pub listen: Option<SocketAddr>,
    /// Connections open at once (each live page holds one); at the cap the
    /// oldest is closed (a browser's page reconnects by itself).
    pub max_connections: usize,
    /// Bound on receiving a request's head, and how long a kept-alive
    /// connection may sit idle between requests.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A live page's event stream is closed after this long (the browser
    /// reconnects at once), so no connection lives for ever.
    #[serde(with = "humantime_serde")]
    pub stream_max_age: Duration,
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            listen: None,
            max_connections: 16,
            header_timeout: Duration::from_secs(5),
            stream_max_age: Duration::from_secs(600),
        }
    }
}

/// Notifications of transitions (switch begun, complete, failed,
/// auto-failover, pause, resume), sent by the leader from a task of their
/// own: a slow or dead receiver never delays a switch.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// `[[notify.webhook]]`: each gets every event as a JSON POST.
    pub webhook: Vec<WebhookConfig>,
    /// `[[notify.command]]`: each is run per event, the event as JSON on
    /// its standard input (Patroni's callbacks).
    pub command: Vec<CommandConfig>,
    /// Attempts after the first failed one.
    pub retries: u32,
    /// Wait before the first retry; doubled for each further one.
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
    /// Events waiting per receiver; when full the oldest is dropped (and
    /// counted in `lockstep_notify_dropped_total`).
    pub queue: usize,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            webhook: Vec::new(),
            command: Vec::new(),
            retries: 3,
            backoff: Duration::from_millis(500),
            queue: 64,
        }
    }
}

/// One webhook.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL the event is POSTed to.
    pub url: String,
    /// Bound on one attempt (connect, send, answer).
    #[serde(default = "default_notify_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// PEM CA bundle for an `https://` URL; unset: the system's bundle
    /// (`/etc/ssl/certs/ca-certificates.crt`).
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

/// One command.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandConfig {
    /// The program and its first arguments; the event's name and the link
    /// are appended as the last two arguments.
    pub argv: Vec<String>,
    /// Bound on one run; past it the process is killed and the run counts
    /// as failed.
    #[serde(default = "default_notify_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_notify_timeout() -> Duration {
    Duration::from_secs(5)
}

/// Handover for planned switches (switchover, failback): the issuing end's
/// LBs block first; the receiving end stays on the old setup for `grace`
/// after every issuing LB confirmed its block, so keys in transit between
/// SAEs can still be fetched. Failovers skip it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HandoverConfig {
    /// The end whose SAEs call `enc_keys`: "alice" (the ETSI 014 master
    /// side), "bob", or "both" (no handover: with both ends issuing keys,
    /// only an LB that reads the request path could hold one direction).
    pub issuer: String,
    /// How long the receiving end keeps the old setup; cover the longest
    /// time SAEs take to pass a key_ID from one end to the other.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

impl Default for HandoverConfig {
    fn default() -> Self {
        HandoverConfig {
            issuer: "alice".into(),
            grace: Duration::from_millis(500),
        }
    }
}

impl HandoverConfig {
    /// The protocol's handover, or `None` when both ends issue keys.
    pub(crate) fn protocol(&self) -> Result<Option<lockstep_core::leader::HandoverConfig>, String> {
        let issuer = match self.issuer.trim().to_ascii_lowercase().as_str() {
            "both" => return Ok(None),
            "alice" => Role::Alice,
            "bob" => Role::Bob,
            other => {
                return Err(format!(
                    "handover.issuer {other:?} must be \"alice\", \"bob\" or \"both\""
                ))
            }
        };
        Ok(Some(lockstep_core::leader::HandoverConfig {
            issuer,
            grace: self.grace,
        }))
    }
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
    /// PEM CA bundle etcd's server certificates chain to; required with
    /// `https://` endpoints.
    pub ca: Option<PathBuf>,
    /// PEM client certificate for etcd's `--client-cert-auth`; needs `key`.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// etcd user (etcd `auth enable`); needs `password_file`.
    pub user: Option<String>,
    /// File holding the user's password (never on the command line or in
    /// the environment, where the process list shows it).
    pub password_file: Option<PathBuf>,
}

/// Peer and Admin gRPC services.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// Where the gRPC server binds.
    pub listen: SocketAddr,
    /// `host:port` peers and the CLI dial; empty means `listen`.
    pub advertise: String,
    /// Plaintext gRPC without authorization, for labs only: anyone who
    /// reaches the port can switch the link. Logged as a WARN at start and
    /// shown in `lockstep status`.
    pub insecure: bool,
    /// Mutual TLS (required unless `insecure`).
    pub tls: GrpcTlsConfig,
    /// Who may call what, by certificate identity.
    pub roles: GrpcRoles,
    /// Bound on one call (a switch with `wait` included: above
    /// `admin.switch_timeout`).
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// Connections open at once; past it new ones are closed.
    pub max_connections: usize,
    /// Admin calls in flight at once (peers' calls are not counted).
    pub max_admin_calls: usize,
    /// Bound on one TLS handshake.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

/// gRPC mutual TLS: PEM files, reloaded when they change.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcTlsConfig {
    /// CA bundle every peer's and client's certificate must chain to.
    pub ca: Option<PathBuf>,
    /// This sidecar's certificate (chain, leaf first): its server
    /// certificate and its client certificate towards peers.
    pub cert: Option<PathBuf>,
    /// The certificate's private key.
    pub key: Option<PathBuf>,
    /// How often the files are checked for a change (cert-manager rotation).
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

/// Who has which role on this link: certificate identities (SAN DNS names,
/// SAN URIs or the subject CN), each exact or a prefix ending in `*`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcRoles {
    /// Sidecars of this link (the Peer service: Drain, Serve, GetState).
    pub peer: Vec<String>,
    /// On-call: switchover, failover, pause, resume, and what viewers do.
    pub operator: Vec<String>,
    /// Status, history, the status watch.
    pub viewer: Vec<String>,
}

/// The LB's check endpoint, `/healthz`, `/readyz` and `/metrics`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Where the HTTP server binds; the LB's `check` points here unless
    /// `check_listen` is set.
    pub listen: SocketAddr,
    /// A listener of its own for the LB's checks (`/check/<server>` only),
    /// which `listen` then no longer answers: in a pod, a loopback address
    /// no other pod can reach, while `/metrics` and the probes stay on
    /// `listen`.
    pub check_listen: Option<SocketAddr>,
    /// Bound on receiving a request's head; also how long a kept-alive
    /// connection may sit idle (the timer runs whenever a head is awaited).
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Connections open at once for anything but `/check/`; past it only
    /// `/check/` is answered (then the connection closes), so the LB's
    /// checks always get through.
    pub max_connections: usize,
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
    pub(crate) fn failback(&self) -> Result<lockstep_core::failover::Failback, String> {
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
    pub(crate) fn policy(
        &self,
        primary: Setup,
    ) -> Result<lockstep_core::failover::PolicyConfig, String> {
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
    /// The leader keeps this many newest history records and deletes older
    /// ones.
    pub history_keep: u32,
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
            ca: None,
            cert: None,
            key: None,
            user: None,
            password_file: None,
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            advertise: String::new(),
            insecure: false,
            tls: GrpcTlsConfig::default(),
            roles: GrpcRoles::default(),
            call_timeout: Duration::from_secs(60),
            max_connections: 256,
            max_admin_calls: 32,
            handshake_timeout: Duration::from_secs(5),
        }
    }
}

impl Default for GrpcTlsConfig {
    fn default() -> Self {
        GrpcTlsConfig {
            ca: None,
            cert: None,
            key: None,
            reload_interval: Duration::from_secs(5),
        }
    }
}

impl HttpConfig {
    /// Where the LB's checks must go: `check_listen`, else `listen`.
    pub fn check_target(&self) -> SocketAddr {
        self.check_listen.unwrap_or(self.listen)
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7401)),
            check_listen: None,
            header_timeout: Duration::from_secs(2),
            max_connections: 128,
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
            history_keep: 1000,
        }
    }
}

impl Config {
    /// D: within this bound after the sidecar stops answering its checks,
    /// the LB marks the sidecar's server down (and kills its sessions):
    /// `check_fall × (check_inter + min(connect timeout, check_inter) +
    /// check_timeout)`, measured on HAProxy 2.6 (see `lb::haproxy`).
    pub(crate) fn lb_down_detection(&self) -> Duration {
        crate::lb::haproxy::down_detection_bound(
            self.lb.check_inter,
            self.lb.check_fall,
            self.lb.check_timeout,
        )
    }

    /// How long after sending its last acknowledged keep-alive a member still
    /// counts its lease as fresh: `lease_ttl − margin`. Past it, it fences.
    pub(crate) fn lease_fresh_budget(&self) -> Duration {
        self.etcd.lease_ttl.saturating_sub(self.etcd.margin)
    }

    /// The right side of the timing rule: `lease_ttl` must exceed
    /// `keepalive_interval + D + margin`.
    pub(crate) fn lease_ttl_lower_bound(&self) -> Duration {
        self.etcd.keepalive_interval + self.lb_down_detection() + self.etcd.margin
    }

    /// The gRPC TLS files, when all three are set.
    pub(crate) fn grpc_tls_files(&self) -> Option<crate::tls::TlsFiles> {
        let t = &self.grpc.tls;
        Some(crate::tls::TlsFiles {
            ca: t.ca.clone()?,
            cert: t.cert.clone()?,
            key: t.key.clone()?,
        })
    }

    /// The gRPC `host:port` peers dial: `grpc.advertise`, else `grpc.listen`.
    pub(crate) fn grpc_advertise(&self) -> String {
        if self.grpc.advertise.is_empty() {
            self.grpc.listen.to_string()
        } else {
            self.grpc.advertise.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{cfg, ms};
    use super::*;

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
    fn advertise_overrides_listen() {
        let c = cfg("[grpc]\nlisten = \"0.0.0.0:7400\"\nadvertise = \"10.0.0.5:7400\"\n")
            .expect("valid");
        assert_eq!(c.grpc_advertise(), "10.0.0.5:7400");
    }
}
