//! ETSI GS QKD 014 health probes of this member's own role's hot and warm
//! KMEs. Members publish changes (not every probe) in their etcd record.
//!
//! `http://` URLs are probed in plain text (labs); `https://` ones over
//! rustls, verifying the KME against `probe.ca` and, with
//! `probe.client_cert`/`probe.client_key`, presenting a client certificate
//! (mutual TLS, as ETSI 014 KMEs usually require).

use crate::config::ProbeConfig;
use crate::sidecar::Shared;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lockstep_core::{Health, Setup};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn, Instrument};

/// Rise/fall debouncing of raw probe results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Debounce {
    pub(crate) state: Health,
    streak_ok: u32,
    streak_bad: u32,
    rise: u32,
    fall: u32,
}

impl Debounce {
    pub(crate) fn new(rise: u32, fall: u32) -> Debounce {
        Debounce {
            state: Health::Unknown,
            streak_ok: 0,
            streak_bad: 0,
            rise: rise.max(1),
            fall: fall.max(1),
        }
    }

    /// Feeds one result; returns the new state if it changed.
    pub(crate) fn observe(&mut self, ok: bool) -> Option<Health> {
        if ok {
            self.streak_ok += 1;
            self.streak_bad = 0;
        } else {
            self.streak_bad += 1;
            self.streak_ok = 0;
        }
        let next = if self.streak_ok >= self.rise {
            Health::Up
        } else if self.streak_bad >= self.fall {
            Health::Down
        } else {
            self.state
        };
        (next != self.state).then(|| {
            self.state = next;
            next
        })
    }
}

/// Why a KME's status answer is not a healthy ETSI 014 status: what the
/// probe reports (its text goes into the log and the member's record).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum StatusError {
    /// The body is not JSON.
    #[error("status is not JSON: {0}")]
    NotJson(String),
    /// JSON, but `master_SAE_ID` or `slave_SAE_ID` is missing or no string.
    #[error("status lacks master_SAE_ID/slave_SAE_ID")]
    NoSaeIds,
    /// Both SAE ids are there, and neither is this member's.
    #[error("status names SAEs {master:?}/{slave:?}, not {wanted:?}")]
    OtherSaes {
        master: String,
        slave: String,
        wanted: String,
    },
    /// `stored_key_count` is 0 and `probe.empty_store_unhealthy` is set.
    #[error(
        "KME reports an empty key store (stored_key_count 0; probe.empty_store_unhealthy is true)"
    )]
    EmptyStore,
}

/// Checks an ETSI 014 status answer: it must parse and carry the SAE ids
/// (the first half of [`check_status`]; only its tests call it alone).
#[cfg(test)]
fn status_ok(body: &[u8], sae_id: &str) -> Result<(), StatusError> {
    let v = parse_status(body)?;
    names_sae(&v, sae_id)
}

fn parse_status(body: &[u8]) -> Result<serde_json::Value, StatusError> {
    serde_json::from_slice(body).map_err(|e| StatusError::NotJson(e.to_string()))
}

fn names_sae(v: &serde_json::Value, sae_id: &str) -> Result<(), StatusError> {
    let master = v.get("master_SAE_ID").and_then(|x| x.as_str());
    let slave = v.get("slave_SAE_ID").and_then(|x| x.as_str());
    let (Some(master), Some(slave)) = (master, slave) else {
        return Err(StatusError::NoSaeIds);
    };
    if master != sae_id && slave != sae_id {
        return Err(StatusError::OtherSaes {
            master: master.to_string(),
            slave: slave.to_string(),
            wanted: sae_id.to_string(),
        });
    }
    Ok(())
}

/// What a good status answer said beyond "healthy".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusInfo {
    /// `stored_key_count`, if the KME sent it as a number.
    pub stored_key_count: Option<u64>,
}

impl StatusInfo {
    /// The KME says it holds no keys: requests for keys would fail now.
    pub fn empty_store(&self) -> bool {
        self.stored_key_count == Some(0)
    }
}

/// The full health rule for one status answer: it must parse and name
/// `sae_id` as master or slave SAE, and, when
/// `empty_store_unhealthy`, `stored_key_count` must not be 0. A missing or
/// odd `stored_key_count` is tolerated: the SAE ids are what ETSI 014
/// clients depend on, and the count only matters once it reads 0.
pub(crate) fn check_status(
    body: &[u8],
    sae_id: &str,
    empty_store_unhealthy: bool,
) -> Result<StatusInfo, StatusError> {
    let v = parse_status(body)?;
    names_sae(&v, sae_id)?;
    let info = StatusInfo {
        stored_key_count: v.get("stored_key_count").and_then(|x| x.as_u64()),
    };
    if empty_store_unhealthy && info.empty_store() {
        return Err(StatusError::EmptyStore);
    }
    Ok(info)
}

/// Where a probe TLS setting is wrong: the `[probe]` key and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("probe.{key}: {message}")]
pub struct TlsSettingError {
    /// The key under `[probe]`, e.g. `client_key`.
    pub key: &'static str,
    pub message: String,
}

fn setting(key: &'static str) -> impl Fn(String) -> TlsSettingError {
    move |message| TlsSettingError { key, message }
}

/// Every certificate in a PEM file (at least one).
pub fn load_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, &e))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\"); point it at a PEM certificate file",
            path.display()
        ));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_pem_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!(
            "{} holds no PEM private key (\"-----BEGIN PRIVATE KEY-----\"); point it at the key of the certificate",
            path.display()
        ),
        e => pem_error(path, &e),
    })
}

fn pem_error(path: &Path, e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => {
            format!(
                "cannot read {}: {io}; check the path and its permissions",
                path.display()
            )
        }
        e => format!("{} is not valid PEM: {e}", path.display()),
    }
}

/// The rustls client settings `[probe]` asks for: roots from `ca` (none
/// without it, so `https://` cannot be verified and fails), and the client
/// certificate when `client_cert` and `client_key` are set.
pub(crate) fn tls_config(cfg: &ProbeConfig) -> Result<rustls::ClientConfig, TlsSettingError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &cfg.ca {
        let (added, _ignored) =
            roots.add_parsable_certificates(load_pem_certs(ca).map_err(setting("ca"))?);
        if added == 0 {
            return Err(TlsSettingError {
                key: "ca",
                message: format!(
                    "{}: none of its certificates is a usable CA certificate",
                    ca.display()
                ),
            });
        }
    }
    // An explicit provider: the process-wide default may be unset or differ.
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsSettingError {
        key: "ca",
        message: format!("TLS set-up failed: {e}"),
    })?
    .with_root_certificates(roots);
    match (&cfg.client_cert, &cfg.client_key) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(_), None) => Err(TlsSettingError {
            key: "client_key",
            message: "is unset but probe.client_cert is set; give the client certificate's private key too".into(),
        }),
        (None, Some(_)) => Err(TlsSettingError {
            key: "client_cert",
            message: "is unset but probe.client_key is set; give the client certificate too".into(),
        }),
        (Some(cert), Some(key)) => {
            let chain = load_pem_certs(cert).map_err(setting("client_cert"))?;
            let key_der = load_pem_key(key).map_err(setting("client_key"))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| TlsSettingError {
                    key: "client_key",
                    message: format!(
                        "{} does not fit {}: {e}; give the key of that certificate",
                        key.display(),
                        cert.display()
                    ),
                })
        }
    }
}

/// The probe's HTTP client, built once: plain HTTP for `http://` URLs,
/// rustls (per `tls_config`) for `https://` ones. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Client {
    inner: hyper_util::client::legacy::Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl Client {
    pub fn from_config(cfg: &ProbeConfig) -> Result<Client, TlsSettingError> {
        let tls = tls_config(cfg)?;
        let mut http = HttpConnector::new();
        // The TLS layer takes over https:// URLs; plain TCP must let them by.
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let inner =
            hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector);
        Ok(Client { inner })
    }
}

/// The status URL of a KME at `base` for `sae_id`.
pub(crate) fn status_url(base: &str, sae_id: &str) -> String {
    format!(
        "{}/api/v1/keys/{}/status",
        base.trim_end_matches('/'),
        sae_id
    )
}

/// One probe: `GET {base}/api/v1/keys/{sae_id}/status` within `timeout`,
/// judged by `check_status`. The error says what went wrong.
pub async fn check_once(
    client: &Client,
    base: &str,
    sae_id: &str,
    timeout: Duration,
    empty_store_unhealthy: bool,
) -> Result<StatusInfo, String> {
    let url = status_url(base, sae_id);
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("bad probe URL {url:?}: {e}"))?;
    tokio::time::timeout(timeout, async {
        let resp = client
            .inner
            .get(uri)
            .await
            .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
        let status = resp.status();
        // Bounded: a status answer is a few hundred bytes.
        let body = http_body_util::Limited::new(resp.into_body(), crate::limits::MAX_PROBE_BODY)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    format!(
                        "the answer of {url} exceeds {} bytes; not an ETSI 014 status",
                        crate::limits::MAX_PROBE_BODY
                    )
                } else {
                    format!("reading the answer of {url}: {e}")
                }
            })?
            .to_bytes();
        if status != hyper::StatusCode::OK {
            return Err(format!("GET {url}: HTTP {status}"));
        }
        check_status(&body, sae_id, empty_store_unhealthy).map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|_| Err(format!("GET {url}: no answer within {timeout:?}")))
}

/// hyper's client errors say "client error (Connect)"; the cause (refused,
/// certificate unknown, ...) is in their sources.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

pub(crate) async fn run(shared: Arc<Shared>) {
    let probe = &shared.config.probe;
    if probe.hot.is_none() && probe.warm.is_none() {
        return;
    }
    // Validation built the same client, so this fails only if a PEM file
    // changed since.
    let client = match Client::from_config(probe) {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "cannot set up KME probes; KME health stays unknown until the sidecar restarts with fixed TLS files");
            return;
        }
    };
    for setup in Setup::ALL {
        let url = match setup {
            Setup::Hot => probe.hot.clone(),
            Setup::Warm => probe.warm.clone(),
        };
        let Some(url) = url else { continue };
        let span = tracing::info_span!("probe", link = %shared.config.link, member = %shared.config.member_id, %setup);
        tokio::spawn(probe_one(shared.clone(), client.clone(), setup, url).instrument(span));
    }
}

async fn probe_one(shared: Arc<Shared>, client: Client, setup: Setup, base: String) {
    let cfg = &shared.config.probe;
    let mut debounce = Debounce::new(cfg.rise, cfg.fall);
    // Last seen empty-store state, so the warning comes once per change.
    let mut empty_store = false;
    let mut ticker = tokio::time::interval(cfg.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let result = check_once(
            &client,
            &base,
            &cfg.sae_id,
            cfg.timeout,
            cfg.empty_store_unhealthy,
        )
        .await;
        shared.metrics.probe_result(setup, &result);
        if let Ok(info) = &result {
            if info.empty_store() != empty_store {
                empty_store = info.empty_store();
                if empty_store {
                    warn!(%setup, url = %base, "KME reports an empty key store (stored_key_count 0); still counted healthy (set probe.empty_store_unhealthy to change that)");
                } else {
                    info!(%setup, url = %base, "KME key store is no longer empty");
                }
            }
        }
        if let Some(state) = debounce.observe(result.is_ok()) {
            match &result {
                Ok(_) => info!(%setup, %state, "KME health changed"),
                Err(e) => warn!(%setup, %state, error = %e, "KME health changed"),
            }
            shared.metrics.probe(setup, state == Health::Up);
            shared.record.send_modify(|r| match setup {
                Setup::Hot => r.health.hot = state,
                Setup::Warm => r.health.warm = state,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debounce_needs_rise_and_fall_streaks() {
        let mut d = Debounce::new(2, 2);
        assert_eq!(d.observe(true), None);
        assert_eq!(d.observe(true), Some(Health::Up));
        assert_eq!(d.observe(false), None);
        assert_eq!(d.observe(true), None);
        assert_eq!(d.observe(false), None);
        assert_eq!(d.observe(false), Some(Health::Down));
    }

    #[test]
    fn status_must_name_the_sae() {
        let ok = br#"{"master_SAE_ID":"A","slave_SAE_ID":"B","key_size":256}"#;
        assert!(status_ok(ok, "B").is_ok());
        assert!(status_ok(ok, "C").is_err());
        assert!(status_ok(b"not json", "B").is_err());
        assert!(status_ok(br#"{"key_size":1}"#, "B").is_err());
    }

    #[test]
    fn empty_store_is_reported_and_optionally_unhealthy() {
        let empty = br#"{"master_SAE_ID":"A","slave_SAE_ID":"B","stored_key_count":0}"#;
        let full = br#"{"master_SAE_ID":"A","slave_SAE_ID":"B","stored_key_count":7}"#;
        let none = br#"{"master_SAE_ID":"A","slave_SAE_ID":"B"}"#;
        let info = check_status(empty, "B", false).expect("empty store is healthy by default");
        assert!(info.empty_store());
        let e = check_status(empty, "B", true).expect_err("configured unhealthy");
        assert_eq!(e, StatusError::EmptyStore);
        assert!(e.to_string().contains("empty key store"), "{e}");
        assert_eq!(
            check_status(full, "B", true),
            Ok(StatusInfo {
                stored_key_count: Some(7)
            })
        );
        let info = check_status(none, "A", true).expect("a missing count is tolerated");
        assert!(!info.empty_store());
        // The SAE rule still comes first.
        assert!(check_status(empty, "C", false).is_err());
        assert!(check_status(b"{", "B", false).is_err());
    }

    /// What `check_status` must answer for `body`, judged independently
    /// of it: `Err` with the variant a reader of the body would name.
    fn expected_status(
        body: &[u8],
        sae: &str,
        empty_unhealthy: bool,
    ) -> Result<StatusInfo, &'static str> {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
            return Err("NotJson");
        };
        let id = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
        let (Some(master), Some(slave)) = (id("master_SAE_ID"), id("slave_SAE_ID")) else {
            return Err("NoSaeIds");
        };
        if master != sae && slave != sae {
            return Err("OtherSaes");
        }
        let count = v.get("stored_key_count").and_then(|x| x.as_u64());
        if empty_unhealthy && count == Some(0) {
            return Err("EmptyStore");
        }
        Ok(StatusInfo {
            stored_key_count: count,
        })
    }

    /// `check_status`'s answer against [`expected_status`]: the same
    /// verdict, the same variant, a message that says something.
    fn assert_status_verdict(
        body: &[u8],
        sae: &str,
        empty: bool,
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        let got = check_status(body, sae, empty);
        match (&got, expected_status(body, sae, empty)) {
            (Ok(info), Ok(want)) => proptest::prop_assert_eq!(*info, want),
            (Err(e), Err(variant)) => {
                let named = match e {
                    StatusError::NotJson(why) => {
                        proptest::prop_assert!(!why.is_empty());
                        "NotJson"
                    }
                    StatusError::NoSaeIds => "NoSaeIds",
                    StatusError::OtherSaes {
                        master,
                        slave,
                        wanted,
                    } => {
                        proptest::prop_assert!(master != sae && slave != sae && wanted == sae);
                        "OtherSaes"
                    }
                    StatusError::EmptyStore => "EmptyStore",
                };
                proptest::prop_assert_eq!(named, variant, "{:?}", e);
                proptest::prop_assert!(e.to_string().len() > 20, "{}", e);
            }
            (got, want) => proptest::prop_assert!(false, "{:?}, expected {:?}", got, want),
        }
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(crate::limits::proptest_config())]
        /// Arbitrary bytes: the verdict and the variant a reader of the
        /// body would give (almost always `NotJson`), never a panic.
        #[test]
        fn status_bodies_never_panic_and_get_the_typed_verdict(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512), empty in proptest::prelude::any::<bool>()) {
            assert_status_verdict(&body, "SAE_B", empty)?;
        }

        /// JSON-shaped bodies, valid or with junk after the last field:
        /// healthy exactly when they parse and name the SAE (and hold
        /// keys, if asked), with the count they carry.
        #[test]
        fn json_like_status_bodies_never_panic_and_get_the_typed_verdict(
            master in proptest::prop_oneof![proptest::strategy::Just("SAE_B".to_string()), "[ -~]{0,12}"],
            slave in proptest::prop_oneof![proptest::strategy::Just("SAE_B".to_string()), "[ -~]{0,12}"],
            count in proptest::prop_oneof![proptest::strategy::Just(0i64), proptest::prelude::any::<i64>()],
            junk in proptest::prop_oneof![proptest::strategy::Just(String::new()), "[ -~]{0,20}"],
            empty in proptest::prelude::any::<bool>(),
        ) {
            let body = format!(r#"{{"master_SAE_ID":{master:?},"slave_SAE_ID":{slave:?},"stored_key_count":{count}{junk}}}"#);
            assert_status_verdict(body.as_bytes(), "SAE_B", empty)?;
            if junk.is_empty() && (master == "SAE_B" || slave == "SAE_B") && !(empty && count == 0) {
                let info = check_status(body.as_bytes(), "SAE_B", empty);
                proptest::prop_assert_eq!(info, Ok(StatusInfo { stored_key_count: u64::try_from(count).ok() }));
            }
        }
    }

    #[test]
    fn status_url_joins_base_and_sae() {
        assert_eq!(
            status_url("https://kme:8443/", "SAE_B"),
            "https://kme:8443/api/v1/keys/SAE_B/status"
        );
    }

    /// A KME that answers its status with a body that never ends (16 KiB
    /// chunks until the client goes away): the probe stops at 64 KiB and
    /// reports it, instead of reading on until its timeout.
    #[tokio::test]
    async fn a_status_body_over_64_kib_is_an_error_and_is_not_read_to_its_end() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let kme = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.expect("read the request");
                assert!(n > 0, "the probe closed before asking");
                head.extend_from_slice(&buf[..n]);
            }
            let mut written = 0usize;
            let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
            if s.write_all(answer).await.is_err() {
                return written;
            }
            let mut chunk = format!("{:x}\r\n", 16 * 1024).into_bytes();
            chunk.extend(std::iter::repeat_n(b' ', 16 * 1024));
            chunk.extend_from_slice(b"\r\n");
            while written < 1 << 30 {
                if s.write_all(&chunk).await.is_err() {
                    break;
                }
                written += 16 * 1024;
            }
            written
        });
        let client = Client::from_config(&ProbeConfig::default()).expect("client");
        let timeout = Duration::from_secs(10);
        let started = tokio::time::Instant::now();
        let e = check_once(&client, &format!("http://{addr}"), "SAE_B", timeout, false)
            .await
            .expect_err("an endless body is no status");
        assert!(e.contains("exceeds 65536 bytes"), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the probe read on for {:?}",
            started.elapsed()
        );
        drop(client);
        // The client went away: the KME's writes fail soon after (what it
        // wrote beyond 64 KiB sat in socket buffers, never read).
        let written = tokio::time::timeout(Duration::from_secs(5), kme)
            .await
            .expect("the probe closed the connection")
            .expect("kme task");
        assert!(written < 64 << 20, "the KME wrote {written} bytes");
    }

    fn probe_cfg(dir: &Path) -> ProbeConfig {
        ProbeConfig {
            ca: Some(dir.join("ca.pem")),
            ..ProbeConfig::default()
        }
    }

    #[test]
    fn tls_settings_name_the_key_and_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let e = tls_config(&probe_cfg(dir.path())).expect_err("missing CA file");
        assert_eq!(e.key, "ca");
        assert!(e.message.contains("ca.pem"), "{e}");
        std::fs::write(dir.path().join("ca.pem"), "not pem").expect("write");
        let e = tls_config(&probe_cfg(dir.path())).expect_err("no certificate");
        assert!(e.message.contains("no PEM certificate"), "{e}");
        let half = ProbeConfig {
            client_cert: Some(dir.path().join("c.pem")),
            ..ProbeConfig::default()
        };
        assert_eq!(
            tls_config(&half).map(|_| ()).map_err(|e| e.key),
            Err("client_key")
        );
        assert!(tls_config(&ProbeConfig::default()).is_ok());
    }
}
