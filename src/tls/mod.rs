//! Mutual TLS for gRPC: certificates and keys from PEM files, reloaded when
//! the files change (cert-manager rotates them) without a restart and
//! without dropping a connection: rustls asks [`Reloading`] for the current
//! certificate and CA on every new handshake; established connections keep
//! the session they have.
//!
//! # Layout
//! * [`identity`]: identities (SAN DNS, SAN URI, CN) and validity of a
//!   certificate, pure parsing.
//! * this module: [`TlsFiles`], loading them ([`Material`]), [`Reloading`]
//!   (the current material, a poll task that reloads it), and the rustls
//!   server and client settings built on it.
//! * [`server`]: the listener's accept loop: a connection cap, TLS
//!   handshakes with a deadline, streams for tonic.
//! * [`client`]: a tonic connector over the same material, and the cached
//!   channels to peers.

pub mod client;
pub mod identity;
pub(crate) mod server;

use identity::CertInfo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tracing::{info, warn};

/// The PEM files of one TLS identity and the CA it trusts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA bundle that peers' and clients' certificates must chain to.
    pub ca: PathBuf,
    /// This end's certificate (chain, leaf first).
    pub cert: PathBuf,
    /// The certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why TLS material could not be loaded; says which file and what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} {}: {message}", .path.display())]
pub struct TlsError {
    /// "CA", "certificate" or "key".
    pub what: &'static str,
    pub path: PathBuf,
    pub message: String,
}

/// The ring provider: the only one this build has (aws-lc-rs is slow to
/// build), named explicitly since the process-wide default may be unset.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// One load of the files: what handshakes use until the next reload.
pub struct Material {
    /// This end's chain and signing key.
    certified: Arc<CertifiedKey>,
    /// The trusted CAs.
    roots: Arc<RootCertStore>,
    /// Checks a client's chain against `roots` (a certificate is required).
    client_verifier: Arc<dyn ClientCertVerifier>,
    /// What this end's own certificate names and how long it is valid.
    pub own: CertInfo,
    /// The files' bytes, to notice a change.
    stamp: Vec<u8>,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    // Bounded: a PEM bundle is small; a huge file is a mistake.
    const MAX_PEM: u64 = 1 << 20;
    let err = |message: String| TlsError {
        what,
        path: path.to_path_buf(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| {
        err(format!(
            "cannot read it: {e}; check the path and its permissions"
        ))
    })?;
    if meta.len() > MAX_PEM {
        return Err(err(format!(
            "is {} bytes; a PEM file is far smaller",
            meta.len()
        )));
    }
    std::fs::read(path).map_err(|e| {
        err(format!(
            "cannot read it: {e}; check the path and its permissions"
        ))
    })
}

impl Material {
    /// Reads and checks the three files: the certificate parses, is valid
    /// now and fits the key; the CA holds at least one usable certificate.
    pub fn load(files: &TlsFiles) -> Result<Material, TlsError> {
        let ca_pem = read("CA", &files.ca)?;
        let cert_pem = read("certificate", &files.cert)?;
        let key_pem = read("key", &files.key)?;
        let at = |what: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |message: String| TlsError {
                what,
                path: path.clone(),
                message,
            }
        };
        let ca = pem_certs(&ca_pem).map_err(at("CA", &files.ca))?;
        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(ca);
        if added == 0 {
            return Err(at("CA", &files.ca)(
                "none of its certificates is a usable CA certificate".into(),
            ));
        }
        let chain = pem_certs(&cert_pem).map_err(at("certificate", &files.cert))?;
        let own = CertInfo::parse(&chain[0])
            .map_err(|e| at("certificate", &files.cert)(e.to_string()))?;
        if let Some(why) = own.invalid_at(identity::unix_now()) {
            return Err(at("certificate", &files.cert)(format!(
                "{own} is {why}; issue a new one"
            )));
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            at("key", &files.key)(match e {
                rustls::pki_types::pem::Error::NoItemsFound => {
                    "holds no PEM private key (\"-----BEGIN PRIVATE KEY-----\")".into()
                }
                e => format!("is not valid PEM: {e}"),
            })
        })?;
        let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
            at("key", &files.key)(format!(
                "does not fit certificate {}: {e}; give the key of that certificate",
                files.cert.display()
            ))
        })?;
        let roots = Arc::new(roots);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| at("CA", &files.ca)(format!("cannot verify clients with it: {e}")))?;
        let mut stamp = ca_pem;
        stamp.extend_from_slice(&cert_pem);
        stamp.extend_from_slice(&key_pem);
        Ok(Material {
            certified: Arc::new(certified),
            roots,
            client_verifier,
            own,
            stamp,
        })
    }
}

fn pem_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err(
            "holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\"); point it at a PEM certificate file"
                .into(),
        );
    }
    Ok(certs)
}

/// The current [`Material`] of some [`TlsFiles`]; every new handshake uses
/// what is current then.
pub struct Reloading {
    files: TlsFiles,
    current: RwLock<Arc<Material>>,
    /// The last load error logged, so a broken file warns once per change.
    last_error: Mutex<Option<TlsError>>,
}

impl Reloading {
    /// Loads the files; an error names the file and what to do.
    pub fn load(files: TlsFiles) -> Result<Arc<Reloading>, TlsError> {
        let material = Material::load(&files)?;
        Ok(Arc::new(Reloading {
            files,
            current: RwLock::new(Arc::new(material)),
            last_error: Mutex::new(None),
        }))
    }

    /// The material handshakes use now.
    pub fn current(&self) -> Arc<Material> {
        match self.current.read() {
            Ok(m) => m.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reloads if a file's bytes changed. A file that does not load (e.g.
    /// the certificate replaced but not yet its key) leaves the current
    /// material in place; the next poll tries again. Returns whether new
    /// material is in use.
    pub fn reload_if_changed(&self) -> bool {
        let now = self.current();
        let mut stamp = Vec::new();
        for path in [&self.files.ca, &self.files.cert, &self.files.key] {
            match std::fs::read(path) {
                Ok(b) => stamp.extend_from_slice(&b),
                Err(_) => return false,
            }
        }
        if stamp == now.stamp {
            return false;
        }
        match Material::load(&self.files) {
            Ok(m) => {
                info!(certificate = %self.files.cert.display(), identities = %m.own, not_after = m.own.not_after, "TLS certificate reloaded; new connections use it, established ones keep theirs");
                match self.current.write() {
                    Ok(mut c) => *c = Arc::new(m),
                    Err(poisoned) => *poisoned.into_inner() = Arc::new(m),
                }
                if let Ok(mut e) = self.last_error.lock() {
                    *e = None;
                }
                true
            }
            Err(e) => {
                if let Ok(mut last) = self.last_error.lock() {
                    if last.as_ref() != Some(&e) {
                        warn!(error = %e, "TLS files changed but do not load; still using the previous certificate");
                        *last = Some(e);
                    }
                }
                false
            }
        }
    }

    /// Polls the files every `every` until the returned task is aborted.
    pub fn spawn_watch(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.reload_if_changed();
            }
        })
    }
}

impl std::fmt::Debug for Reloading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// Hands rustls the current certificate, as server and as client.
#[derive(Debug)]
struct Resolver(Arc<Reloading>);

impl rustls::server::ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified.clone())
    }
}

impl rustls::client::ResolvesClientCert for Resolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Checks client certificates against the current CA; one is required.
#[derive(Debug)]
struct ClientVerifier(Arc<Reloading>);

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional; the CA may change under us.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .current()
            .client_verifier
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Judges a server certificate's identities: `Err(why)` refuses it.
pub type AcceptIdentity = Arc<dyn Fn(&CertInfo) -> Result<(), String> + Send + Sync>;

/// What a client requires of the server's certificate beyond chaining to
/// the CA.
#[derive(Clone)]
pub enum ServerCheck {
    /// It names the host dialed (SAN DNS or IP), as HTTPS does: the CLI.
    Name,
    /// One of its identities passes `accept` (a sidecar dialing a peer:
    /// peers advertise pod IPs, which certificates rarely name, so the
    /// peer's role is what counts).
    Identity(AcceptIdentity),
}

impl std::fmt::Debug for ServerCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerCheck::Name => f.write_str("Name"),
            ServerCheck::Identity(_) => f.write_str("Identity"),
        }
    }
}

/// Checks a server's certificate against the current CA, then `check`.
#[derive(Debug)]
struct ServerVerifier {
    material: Arc<Reloading>,
    check: ServerCheck,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        let material = self.material.current();
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &material.roots,
            intermediates,
            now,
            provider().signature_verification_algorithms.all,
        )?;
        match &self.check {
            ServerCheck::Name => rustls::client::verify_server_name(&cert, server_name)?,
            ServerCheck::Identity(accept) => {
                let info = CertInfo::parse(end_entity.as_ref())
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
                // Someone answering at a peer's address who is not that
                // peer: worth a WARN (once per handshake tried).
                accept(&info).map_err(|why| {
                    tracing::warn!(server = ?server_name, %why, "refused a server's certificate");
                    rustls::Error::General(why)
                })?;
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The server side: a client certificate chaining to the CA is required;
/// our certificate is whatever is current at each handshake.
pub(crate) fn server_config(material: &Arc<Reloading>) -> Result<rustls::ServerConfig, String> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up failed: {e}"))?
        .with_client_cert_verifier(Arc::new(ClientVerifier(material.clone())))
        .with_cert_resolver(Arc::new(Resolver(material.clone())));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The client side: presents our current certificate and checks the
/// server's per `check`.
pub fn client_config(
    material: &Arc<Reloading>,
    check: ServerCheck,
) -> Result<rustls::ClientConfig, String> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up failed: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerVerifier {
            material: material.clone(),
            check,
        }))
        .with_client_cert_resolver(Arc::new(Resolver(material.clone())));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A rustls error from a handshake, in words an operator can act on.
pub fn explain(e: &rustls::Error) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match e {
        E::InvalidCertificate(C::UnknownIssuer) => {
            "its certificate is not signed by our CA (untrusted)".into()
        }
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "its certificate has expired".into()
        }
        E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "its certificate is not valid yet (check the clocks)".into()
        }
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            "its certificate does not name the host dialed".into()
        }
        E::NoCertificatesPresented => "it presented no certificate".into(),
        E::AlertReceived(A::CertificateRequired) => {
            "it requires a client certificate and we sent none".into()
        }
        E::AlertReceived(A::UnknownCA) => {
            "it does not trust our certificate (not signed by its CA)".into()
        }
        E::AlertReceived(A::CertificateExpired) => "it says our certificate has expired".into(),
        E::AlertReceived(A::BadCertificate | A::CertificateUnknown) => {
            "it refused our certificate".into()
        }
        E::General(m) => m.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod test_pki;

#[cfg(test)]
mod tests {
    use super::test_pki::TestPki;
    use super::*;

    fn files(pki: &TestPki, leaf: (PathBuf, PathBuf)) -> TlsFiles {
        TlsFiles {
            ca: pki.ca(),
            cert: leaf.0,
            key: leaf.1,
        }
    }

    #[test]
    fn bad_files_are_named() {
        let pki = TestPki::new();
        let leaf = pki.leaf("a", "spiffe://t/a");
        let mut f = files(&pki, leaf.clone());
        f.cert = pki.dir.path().join("missing.pem");
        let e = Material::load(&f).err().expect("missing");
        assert_eq!(e.what, "certificate");
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let expired = pki.leaf_valid("old", "spiffe://t/old", (-30, -1));
        let e = Material::load(&files(&pki, expired))
            .err()
            .expect("expired");
        assert!(e.message.contains("expired"), "{e}");
        let other = pki.leaf("b", "spiffe://t/b");
        let e = Material::load(&TlsFiles {
            ca: pki.ca(),
            cert: leaf.0,
            key: other.1,
        })
        .err()
        .expect("mismatch");
        assert_eq!(e.what, "key");
        assert!(e.message.contains("does not fit"), "{e}");
    }

    #[test]
    fn reload_picks_up_new_files_and_keeps_old_on_a_broken_one() {
        let pki = TestPki::new();
        let (cert, key) = pki.leaf("a", "spiffe://t/a");
        let r = Reloading::load(TlsFiles {
            ca: pki.ca(),
            cert: cert.clone(),
            key: key.clone(),
        })
        .expect("load");
        assert!(!r.reload_if_changed(), "nothing changed");
        let (c2, k2) = pki.leaf("b", "spiffe://t/b");
        // The certificate lands first: it does not fit the old key yet.
        std::fs::copy(&c2, &cert).expect("copy");
        assert!(!r.reload_if_changed());
        assert!(r
            .current()
            .own
            .identities
            .contains(&"spiffe://t/a".to_string()));
        std::fs::copy(&k2, &key).expect("copy");
        assert!(r.reload_if_changed());
        assert!(r
            .current()
            .own
            .identities
            .contains(&"spiffe://t/b".to_string()));
    }

    async fn handshake(
        server: Arc<rustls::ServerConfig>,
        client: rustls::ClientConfig,
    ) -> Result<Vec<String>, String> {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let name = ServerName::try_from("localhost").expect("name");
        let (s, c) = tokio::join!(acceptor.accept(a), connector.connect(name, b));
        let s = s.map_err(|e| format!("server: {e}"))?;
        c.map_err(|e| format!("client: {e}"))?;
        let peer = s.get_ref().1.peer_certificates().ok_or("no client cert")?;
        Ok(CertInfo::parse(peer[0].as_ref())
            .map_err(|e| e.to_string())?
            .identities)
    }

    #[tokio::test]
    async fn mutual_tls_requires_a_client_certificate_from_the_ca() {
        let pki = TestPki::new();
        let server =
            Reloading::load(files(&pki, pki.leaf("srv", "spiffe://t/member/srv"))).expect("srv");
        let server_cfg = Arc::new(server_config(&server).expect("server config"));
        let client = Reloading::load(files(&pki, pki.leaf("op", "spiffe://t/op"))).expect("client");
        let ids = handshake(
            server_cfg.clone(),
            client_config(&client, ServerCheck::Name).expect("cfg"),
        )
        .await
        .expect("handshake");
        assert!(ids.contains(&"spiffe://t/op".to_string()), "{ids:?}");

        // No client certificate: refused at the handshake.
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(
            pem_certs(&std::fs::read(pki.ca()).expect("ca")).expect("pem"),
        );
        let anonymous = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        assert!(handshake(server_cfg.clone(), anonymous).await.is_err());

        // A certificate from another CA: refused.
        let other = TestPki::new();
        let stranger = Reloading::load(TlsFiles {
            ca: pki.ca(),
            ..files(&other, other.leaf("x", "spiffe://t/op"))
        })
        .expect("stranger");
        assert!(handshake(
            server_cfg.clone(),
            client_config(&stranger, ServerCheck::Name).expect("cfg")
        )
        .await
        .is_err());

        // A peer check on the server's identity.
        let picky = ServerCheck::Identity(Arc::new(|c: &CertInfo| {
            if c.identities
                .iter()
                .any(|i| i.starts_with("spiffe://t/member/"))
            {
                Ok(())
            } else {
                Err("not a member".into())
            }
        }));
        assert!(handshake(
            server_cfg.clone(),
            client_config(&client, picky).expect("cfg")
        )
        .await
        .is_ok());
        let refuse = ServerCheck::Identity(Arc::new(|_: &CertInfo| Err("no".to_string())));
        assert!(
            handshake(server_cfg, client_config(&client, refuse).expect("cfg"))
                .await
                .is_err()
        );
    }
}
