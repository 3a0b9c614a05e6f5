//! Certificates for unit tests (rcgen): a CA and leaves naming given
//! identities, written as PEM files into a temporary directory.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};

pub(crate) struct TestPki {
    pub(crate) dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl TestPki {
    pub(crate) fn new() -> TestPki {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, "test CA");
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().expect("key")).expect("CA");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write CA");
        TestPki { dir, ca }
    }

    pub(crate) fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A leaf named `name` (CN) with SAN URI `uri`, DNS localhost and IP
    /// 127.0.0.1, valid from `days_from..days_to` days around now.
    pub(crate) fn leaf_valid(&self, name: &str, uri: &str, days: (i64, i64)) -> (PathBuf, PathBuf) {
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        p.subject_alt_names
            .push(SanType::URI(uri.try_into().expect("uri")));
        p.subject_alt_names
            .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now + time::Duration::days(days.0);
        p.not_after = now + time::Duration::days(days.1);
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &self.ca).expect("sign");
        let d: &Path = self.dir.path();
        let (c, k) = (d.join(format!("{name}.pem")), d.join(format!("{name}.key")));
        std::fs::write(&c, cert.pem()).expect("write cert");
        std::fs::write(&k, key.serialize_pem()).expect("write key");
        (c, k)
    }

    pub(crate) fn leaf(&self, name: &str, uri: &str) -> (PathBuf, PathBuf) {
        self.leaf_valid(name, uri, (-1, 30))
    }
}
