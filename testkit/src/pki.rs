//! The lab's certificates: a CA per lab and certificates it issues, as PEM
//! files, for gRPC mutual TLS (sidecars, on-call users, test clients) and
//! for etcd over TLS.
//!
//! Identities follow one scheme (`grpc.roles` in the sidecars' configs):
//! sidecars `spiffe://lockstep/<link>/member/<id>`, operators
//! `spiffe://lockstep/operator/<name>`, viewers
//! `spiffe://lockstep/viewer/<name>`.

use anyhow::{Context, Result};
use lockstep::tls::TlsFiles;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// A sidecar's identity on `link`.
pub fn member_uri(link: &str, member: &str) -> String {
    format!("spiffe://lockstep/{link}/member/{member}")
}

/// The on-call identity the lab's Admin clients and CLI use.
pub const OPERATOR: &str = "spiffe://lockstep/operator/oncall";
/// A read-only identity.
pub const VIEWER: &str = "spiffe://lockstep/viewer/dashboard";

/// `[grpc.roles]` for a sidecar of `link`.
pub fn roles_toml(link: &str) -> String {
    format!(
        "[grpc.roles]\npeer = [{:?}]\noperator = [\"spiffe://lockstep/operator/*\"]\nviewer = [\"spiffe://lockstep/viewer/*\"]\n",
        member_uri(link, "*")
    )
}

/// A CA and the directory its certificates are written to.
pub struct Pki {
    pub dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    /// A new CA named `name`; writes `<dir>/ca.pem`.
    pub fn create(dir: &Path, name: &str) -> Result<Pki> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(p, KeyPair::generate()?)?;
        let pki = Pki {
            dir: dir.to_path_buf(),
            ca,
        };
        std::fs::write(pki.ca(), pki.ca.pem()).context("writing the CA")?;
        Ok(pki)
    }

    /// The CA certificate's file.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Issues `<name>.pem`/`<name>.key`: CN `name`, SAN URI `uri` (if not
    /// empty), DNS `localhost` and `ips`, for server and client use, valid
    /// from yesterday for 30 days.
    pub fn issue(&self, name: &str, uri: &str, ips: &[IpAddr]) -> Result<TlsFiles> {
        self.issue_valid(name, uri, ips, (-1, 30))
    }

    /// [`issue`](Self::issue) valid from `days.0` to `days.1` days from now
    /// (an expired certificate: `(-30, -1)`).
    pub fn issue_valid(
        &self,
        name: &str,
        uri: &str,
        ips: &[IpAddr],
        days: (i64, i64),
    ) -> Result<TlsFiles> {
        let (cert, key) = self.issue_pem(name, uri, ips, days)?;
        let files = TlsFiles {
            ca: self.ca(),
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
        };
        // Key first, then certificate: a reader never pairs a new
        // certificate with a missing key.
        std::fs::write(&files.key, key).context("writing a key")?;
        std::fs::write(&files.cert, cert).context("writing a certificate")?;
        Ok(files)
    }

    /// A certificate and key as PEM text, not written anywhere.
    pub fn issue_pem(
        &self,
        name: &str,
        uri: &str,
        ips: &[IpAddr],
        days: (i64, i64),
    ) -> Result<(String, String)> {
        let mut p = CertificateParams::new(vec!["localhost".to_string()])?;
        if !uri.is_empty() {
            p.subject_alt_names
                .push(SanType::URI(uri.try_into().context("SAN URI")?));
        }
        for ip in ips {
            p.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now + time::Duration::days(days.0);
        p.not_after = now + time::Duration::days(days.1);
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.ca)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}
