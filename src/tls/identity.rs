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
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = CertInfo::parse(&bytes);
        }
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(CertInfo::parse(b"not a certificate").is_err());
        assert!(CertInfo::parse(&[]).is_err());
    }
}
