//! The KME probe against real `kme-mock` processes: mutual TLS with
//! certificates made here by rcgen, plain HTTP, and the empty-store rule.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lockstep::config::ProbeConfig;
use lockstep::probe::{check_once, Client};
use lockstep_testkit::lab::kme::KmeProcess;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

const T: Duration = Duration::from_secs(5);
/// The KMEs here are Alice's: their status path names the slave SAE.
const SAE: &str = "SAE_B";

/// `target/probe-tls-tests/<name>`, emptied first; logs stay after a failure.
fn log_dir(name: &str) -> PathBuf {
    lockstep_testkit::lab::process::log_dir("probe-tls-tests", name).expect("creating the log dir")
}

/// PEM files of two unrelated CAs, a server certificate for 127.0.0.1 and
/// a client certificate from `ca`, and a client certificate from `other_ca`.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    rogue_cert: PathBuf,
    rogue_key: PathBuf,
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(p, KeyPair::generate().expect("CA key")).expect("CA cert")
}

/// Writes a leaf certificate and key signed by `ca`; returns their paths.
fn leaf(
    dir: &Path,
    name: &str,
    san: &str,
    usage: ExtendedKeyUsagePurpose,
    ca: &CertifiedIssuer<'static, KeyPair>,
) -> (PathBuf, PathBuf) {
    let mut p = CertificateParams::new(vec![san.to_string()]).expect("leaf params");
    p.distinguished_name.push(DnType::CommonName, name);
    p.extended_key_usages = vec![usage];
    let key = KeyPair::generate().expect("leaf key");
    let cert = p.signed_by(&key, ca).expect("signing the leaf");
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert_path, cert.pem()).expect("writing a certificate");
    std::fs::write(&key_path, key.serialize_pem()).expect("writing a key");
    (cert_path, key_path)
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let ca = new_ca("test KME CA");
    let other = new_ca("unrelated CA");
    std::fs::write(d.join("ca.pem"), ca.pem()).expect("writing the CA");
    std::fs::write(d.join("other-ca.pem"), other.pem()).expect("writing the other CA");
    let (server_cert, server_key) = leaf(
        d,
        "server",
        "127.0.0.1",
        ExtendedKeyUsagePurpose::ServerAuth,
        &ca,
    );
    let (client_cert, client_key) = leaf(
        d,
        "client",
        "sae-b.example",
        ExtendedKeyUsagePurpose::ClientAuth,
        &ca,
    );
    let (rogue_cert, rogue_key) = leaf(
        d,
        "rogue",
        "sae-b.example",
        ExtendedKeyUsagePurpose::ClientAuth,
        &other,
    );
    Pki {
        ca: d.join("ca.pem"),
        other_ca: d.join("other-ca.pem"),
        server_cert,
        server_key,
        client_cert,
        client_key,
        rogue_cert,
        rogue_key,
        _dir: dir,
    }
}

fn spawn_kme(name: &str, extra: &[&str]) -> KmeProcess {
    KmeProcess::spawn_with_args(
        "hot",
        "alice",
        "probe-tls-secret",
        "SAE_A",
        SAE,
        extra,
        &log_dir(name),
    )
    .expect("starting kme-mock")
}

/// A kme-mock serving HTTPS that requires client certificates from `pki.ca`.
fn spawn_mtls_kme(name: &str, pki: &Pki) -> KmeProcess {
    let path = |p: &Path| p.to_str().expect("UTF-8 temp path").to_string();
    let (cert, key, ca) = (path(&pki.server_cert), path(&pki.server_key), path(&pki.ca));
    spawn_kme(
        name,
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca,
        ],
    )
}

fn probe_config(ca: Option<&Path>, client: Option<(&Path, &Path)>) -> ProbeConfig {
    ProbeConfig {
        sae_id: SAE.into(),
        ca: ca.map(Path::to_path_buf),
        client_cert: client.map(|c| c.0.to_path_buf()),
        client_key: client.map(|c| c.1.to_path_buf()),
        ..ProbeConfig::default()
    }
}

async fn probe(cfg: &ProbeConfig, url: &str, empty_store_unhealthy: bool) -> Result<bool, String> {
    let client = Client::from_config(cfg).map_err(|e| e.to_string())?;
    check_once(&client, url, SAE, T, empty_store_unhealthy)
        .await
        .map(|info| info.empty_store())
}

#[tokio::test]
async fn mutual_tls_needs_the_right_client_cert_and_ca() {
    let pki = pki();
    let kme = spawn_mtls_kme("mtls", &pki);
    let url = format!("https://{}", kme.addr);
    let client = Some((pki.client_cert.as_path(), pki.client_key.as_path()));

    let good = probe_config(Some(&pki.ca), client);
    assert_eq!(probe(&good, &url, true).await, Ok(false), "mTLS probe");

    let e = probe(&probe_config(Some(&pki.ca), None), &url, false)
        .await
        .expect_err("no client certificate must fail");
    // TLS 1.3 reports the refusal on the first read, so only the URL is sure.
    assert!(e.contains(&url), "{e}");

    let e = probe(&probe_config(Some(&pki.other_ca), client), &url, false)
        .await
        .expect_err("a CA that did not sign the KME must fail");
    assert!(e.contains("certificate"), "{e}");

    let rogue = Some((pki.rogue_cert.as_path(), pki.rogue_key.as_path()));
    probe(&probe_config(Some(&pki.ca), rogue), &url, false)
        .await
        .expect_err("a client certificate from another CA must fail");

    // Plain HTTP to a TLS port gets no ETSI answer.
    let plain_url = format!("http://{}", kme.addr);
    probe(&probe_config(None, None), &plain_url, false)
        .await
        .expect_err("plain HTTP to the TLS listener must fail");

    // The right settings still work after the refusals.
    assert_eq!(probe(&good, &url, false).await, Ok(false));
    let stats = kme.stats().await.expect("stats");
    assert!(stats.requests >= 2, "{stats:?}");
}

#[tokio::test]
async fn plain_http_probe() {
    let kme = spawn_kme("plain", &[]);
    let url = format!("http://{}", kme.addr);
    assert_eq!(
        probe(&probe_config(None, None), &url, true).await,
        Ok(false)
    );
    // Another SAE's status path is refused by the KME: a failed probe.
    let client = Client::from_config(&probe_config(None, None)).expect("client");
    let e = check_once(&client, &url, "SAE_X", T, false)
        .await
        .expect_err("unknown SAE");
    assert!(e.contains("HTTP 400"), "{e}");
    kme.set_fault("unavailable", 0).await.expect("fault");
    let e = probe(&probe_config(None, None), &url, false)
        .await
        .expect_err("503");
    assert!(e.contains("503"), "{e}");
}

#[tokio::test]
async fn empty_store_is_healthy_unless_configured_otherwise() {
    let pki = pki();
    let kme = spawn_mtls_kme("empty", &pki);
    let url = format!("https://{}", kme.addr);
    let cfg = probe_config(
        Some(&pki.ca),
        Some((pki.client_cert.as_path(), pki.client_key.as_path())),
    );
    kme.set_fault("empty", 0).await.expect("fault empty");
    assert_eq!(
        probe(&cfg, &url, false).await,
        Ok(true),
        "empty but healthy"
    );
    let e = probe(&cfg, &url, true)
        .await
        .expect_err("configured unhealthy");
    assert!(e.contains("empty key store"), "{e}");
    kme.set_fault("ok", 0).await.expect("fault ok");
    assert_eq!(probe(&cfg, &url, true).await, Ok(false));

    // Also from the start, on plain HTTP.
    let plain = spawn_kme("empty-plain", &["--fault", "empty"]);
    let url = format!("http://{}", plain.addr);
    assert_eq!(
        probe(&probe_config(None, None), &url, false).await,
        Ok(true)
    );
}

#[test]
fn https_config_is_validated_and_builds_a_client() {
    let pki = pki();
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, probe: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "link = \"l\"\nmember_id = \"m\"\nrole = \"alice\"\n[grpc]\ninsecure = true\n[probe]\nhot = \"https://127.0.0.1:1\"\nsae_id = \"{SAE}\"\n{probe}"
            ),
        )
        .expect("writing the config");
        path
    };
    let good = write(
        "good.toml",
        &format!(
            "ca = {:?}\nclient_cert = {:?}\nclient_key = {:?}\nempty_store_unhealthy = true\n",
            pki.ca, pki.client_cert, pki.client_key
        ),
    );
    let cfg = lockstep::config::load(&good).expect("a valid TLS probe config");
    assert!(cfg.probe.empty_store_unhealthy);
    Client::from_config(&cfg.probe).expect("client from a validated config");

    let e = lockstep::config::load(&write("no-ca.toml", ""))
        .expect_err("https without a CA")
        .to_string();
    assert!(e.contains("probe.ca"), "{e}");

    // The client certificate's key must be its own.
    let mismatched = write(
        "mismatch.toml",
        &format!(
            "ca = {:?}\nclient_cert = {:?}\nclient_key = {:?}\n",
            pki.ca, pki.client_cert, pki.rogue_key
        ),
    );
    let e = lockstep::config::load(&mismatched)
        .expect_err("mismatched key")
        .to_string();
    assert!(e.contains("probe.client_key"), "{e}");
}
