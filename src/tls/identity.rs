//! What a certificate says about who holds it: its identities (SAN DNS
//! names, SAN URIs and the subject's CN, the strings `grpc.roles` lists)
//! and its validity. Pure: parsing bytes, no I/O.

use std::fmt;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Bound on the identities read from one certificate, and on each one's
/// length: a certificate is input from outside.
const MAX_IDENTITIES: usize = 32;
const MAX_IDENTITY_LEN: usize = 256;

/// What one certificate names and how long it is valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// SAN DNS names, SAN URIs and the CN, in that order, deduplicated.
    pub identities: Vec<String>,
    /// Validity start, Unix seconds.
    pub not_before: i64,
    /// Validity end, Unix seconds.
    pub not_after: i64,
}

/// Why a certificate could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a readable X.509 certificate: {0}")]
pub struct BadCertificate(pub String);

impl CertInfo {
    /// Parses a DER certificate. Never panics, whatever the bytes.
    pub fn parse(der: &[u8]) -> Result<CertInfo, BadCertificate> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| BadCertificate(e.to_string()))?;
        let mut identities: Vec<String> = Vec::new();
        let mut add = |s: &str| {
            if !s.is_empty()
                && s.len() <= MAX_IDENTITY_LEN
                && identities.len() < MAX_IDENTITIES
                && !s.chars().any(char::is_control)
                && !identities.iter().any(|i| i == s)
            {
                identities.push(s.to_string());
            }
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::DNSName(n) = name {
                    add(n);
                }
            }
            for name in &san.value.general_names {
                if let GeneralName::URI(u) = name {
                    add(u);
                }
            }
        }
        for cn in cert.subject().iter_common_name() {
            if let Ok(cn) = cn.as_str() {
                add(cn);
            }
        }
        Ok(CertInfo {
            identities,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    /// `Some(why)` if the certificate is not valid at `now` (Unix seconds).
    pub fn invalid_at(&self, now: i64) -> Option<String> {
        if now > self.not_after {
            Some(format!("expired at {}", rfc3339(self.not_after)))
        } else if now < self.not_before {
            Some(format!("not valid before {}", rfc3339(self.not_before)))
        } else {
            None
        }
    }
}

impl fmt::Display for CertInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.identities.is_empty() {
            return f.write_str("a certificate naming no identity");
        }
        write!(f, "[{}]", self.identities.join(", "))
    }
}

fn rfc3339(unix: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Seconds since the Unix epoch, now.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::limits::proptest_config())]
        /// Arbitrary bytes: `BadCertificate` saying why, or (were they
        /// ever a certificate) identities within the bounds.
        #[test]
        fn arbitrary_bytes_never_panic_and_are_a_bad_certificate_or_bounded(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = check_parsed(&bytes)?;
        }

        /// A real certificate cut short or with one byte changed: never a
        /// panic; cut short it is always `BadCertificate`.
        #[test]
        fn damaged_certificates_never_panic_and_are_bad_or_bounded(cut in any::<prop::sample::Index>(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let der = real_der();
            let short = &der[..cut.index(der.len())];
            prop_assert!(matches!(check_parsed(short)?, Err(BadCertificate(_))));
            let mut changed = der.clone();
            changed[at.index(der.len())] = byte;
            let _ = check_parsed(&changed)?;
        }
    }

    /// `CertInfo::parse`, with what every answer must satisfy checked.
    fn check_parsed(der: &[u8]) -> Result<Result<CertInfo, BadCertificate>, TestCaseError> {
        let parsed = CertInfo::parse(der);
        match &parsed {
            Ok(info) => {
                prop_assert!(info.identities.len() <= MAX_IDENTITIES);
                for id in &info.identities {
                    prop_assert!(
                        !id.is_empty()
                            && id.len() <= MAX_IDENTITY_LEN
                            && !id.chars().any(char::is_control),
                        "{:?}",
                        id
                    );
                }
            }
            Err(BadCertificate(why)) => prop_assert!(!why.is_empty()),
        }
        Ok(parsed)
    }

    /// The DER of a leaf certificate from the test CA.
    fn real_der() -> Vec<u8> {
        use rustls::pki_types::pem::PemObject;
        static DER: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        DER.get_or_init(|| {
            let pki = crate::tls::test_pki::TestPki::new();
            let (cert, _) = pki.leaf("alice-0", "spiffe://lockstep/qkd-1/member/alice-0");
            rustls::pki_types::CertificateDer::from_pem_file(&cert)
                .expect("test certificate")
                .to_vec()
        })
        .clone()
    }

    #[test]
    fn a_real_certificate_names_its_identities() {
        let info = CertInfo::parse(&real_der()).expect("a real certificate");
        assert!(
            info.identities
                .contains(&"spiffe://lockstep/qkd-1/member/alice-0".to_string()),
            "{info:?}"
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(CertInfo::parse(b"not a certificate").is_err());
        assert!(CertInfo::parse(&[]).is_err());
    }
}
