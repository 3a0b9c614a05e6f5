//! Validation of the security settings: gRPC mutual TLS and roles
//! (`[grpc]`, `[grpc.tls]`, `[grpc.roles]`) and etcd's TLS and
//! credentials. Reads the files named, so a bad one stops the start-up
//! with the key and the file named.

use super::{Config, EtcdConfig};

/// `Err((key, why))` names the key to fix.
type Checked = Result<(), (&'static str, String)>;

pub(super) fn check_grpc(c: &Config) -> Checked {
    let g = &c.grpc;
    let t = &g.tls;
    if g.insecure {
        if t.ca.is_some() || t.cert.is_some() || t.key.is_some() {
            return Err((
                "grpc.insecure",
                "is true but grpc.tls is set too; remove one (insecure = plaintext, no authorization)".into(),
            ));
        }
    } else {
        for (key, v) in [
            ("grpc.tls.ca", &t.ca),
            ("grpc.tls.cert", &t.cert),
            ("grpc.tls.key", &t.key),
        ] {
            if v.is_none() {
                return Err((
                    key,
                    "is unset: gRPC needs mutual TLS (grpc.tls.ca, cert and key, PEM files); for a lab without TLS set grpc.insecure = true".into(),
                ));
            }
        }
        if g.roles.peer.is_empty() {
            return Err((
                "grpc.roles.peer",
                "is empty: list the certificate identities of this link's sidecars (e.g. \"spiffe://lockstep/qkd-1/member/*\"), or no leader can push to a member".into(),
            ));
        }
        if t.reload_interval.is_zero() {
            return Err((
                "grpc.tls.reload_interval",
                "must be more than 0, e.g. \"5s\"".into(),
            ));
        }
        if let Some(files) = c.grpc_tls_files() {
            let material = crate::tls::Material::load(&files).map_err(|e| {
                let key = match e.what {
                    "CA" => "grpc.tls.ca",
                    "certificate" => "grpc.tls.cert",
                    _ => "grpc.tls.key",
                };
                (key, e.to_string())
            })?;
            if c.grpc
                .roles
                .grants(&material.own.identities, crate::rpc::auth::Access::Peer)
                .is_none()
            {
                return Err((
                    "grpc.roles.peer",
                    format!(
                        "does not match this sidecar's own certificate {} ({}): peers would refuse it; add one of its identities",
                        material.own,
                        files.cert.display()
                    ),
                ));
            }
        }
    }
    for (key, list) in [
        ("grpc.roles.peer", &g.roles.peer),
        ("grpc.roles.operator", &g.roles.operator),
        ("grpc.roles.viewer", &g.roles.viewer),
    ] {
        for p in list {
            let stem = p.strip_suffix('*').unwrap_or(p);
            if p.is_empty() || stem.contains('*') || p.chars().any(char::is_control) {
                return Err((
                    key,
                    format!("{p:?}: an identity is exact or a prefix ending in one '*' (e.g. \"spiffe://lockstep/qkd-1/*\")"),
                ));
            }
            if p == "*" {
                return Err((key, "\"*\" would grant the role to every certificate the CA ever signed; list identities".into()));
            }
        }
    }
    if g.call_timeout.is_zero() {
        return Err((
            "grpc.call_timeout",
            "must be more than 0, e.g. \"60s\"".into(),
        ));
    }
    if g.handshake_timeout.is_zero() {
        return Err((
            "grpc.handshake_timeout",
            "must be more than 0, e.g. \"5s\"".into(),
        ));
    }
    if g.max_connections < 4 {
        return Err((
            "grpc.max_connections",
            "must be at least 4 (peers, the CLI, status)".into(),
        ));
    }
    if g.max_admin_calls == 0 {
        return Err(("grpc.max_admin_calls", "must be at least 1".into()));
    }
    Ok(())
}

/// Longest password file read.
const MAX_PASSWORD: u64 = 4096;

pub(super) fn check_etcd(e: &EtcdConfig) -> Checked {
    let https = e
        .endpoints
        .iter()
        .filter(|u| u.starts_with("https://"))
        .count();
    if https != 0 && https != e.endpoints.len() {
        return Err((
            "etcd.endpoints",
            "mixes http:// and https://; use one scheme for every endpoint".into(),
        ));
    }
    let tls = https != 0;
    if tls && e.ca.is_none() {
        return Err((
            "etcd.ca",
            "is unset but etcd.endpoints are https://; set it to the PEM CA bundle of etcd's server certificates".into(),
        ));
    }
    if !tls && (e.ca.is_some() || e.cert.is_some() || e.key.is_some()) {
        return Err((
            "etcd.endpoints",
            "are http:// but etcd.ca/cert/key are set; use https:// endpoints (or drop the TLS keys)".into(),
        ));
    }
    match (&e.cert, &e.key) {
        (Some(_), None) => {
            return Err((
                "etcd.key",
                "is unset but etcd.cert is set; give the certificate's key".into(),
            ))
        }
        (None, Some(_)) => {
            return Err((
                "etcd.cert",
                "is unset but etcd.key is set; give the certificate too".into(),
            ))
        }
        _ => {}
    }
    if tls {
        crate::store::access::tls_options(e)?;
    }
    match (&e.user, &e.password_file) {
        (Some(u), _) if u.is_empty() || u.chars().any(char::is_control) => {
            return Err(("etcd.user", format!("{u:?} is not a user name")))
        }
        (Some(_), None) => {
            return Err((
                "etcd.password_file",
                "is unset but etcd.user is set; name a file holding the password (never the password itself)".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(("etcd.user", "is unset but etcd.password_file is set; name the etcd user".into()))
        }
        (Some(_), Some(path)) => {
            read_password(path).map_err(|why| ("etcd.password_file", why))?;
        }
        (None, None) => {}
    }
    Ok(())
}

/// The password in `path`: its first line, without the line ending.
pub(crate) fn read_password(path: &std::path::Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| {
        format!(
            "cannot read {}: {e}; check the path and its permissions",
            path.display()
        )
    })?;
    if meta.len() > MAX_PASSWORD {
        return Err(format!(
            "{} is {} bytes; a password file holds one line",
            path.display(),
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read {}: {e}; check the path and its permissions",
            path.display()
        )
    })?;
    let password = text.lines().next().unwrap_or("").to_string();
    if password.is_empty() {
        return Err(format!(
            "{} is empty; write the etcd user's password in it",
            path.display()
        ));
    }
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{cfg, parse_text};
    use super::super::ConfigError;
    use crate::tls::test_pki::TestPki;

    const BASE: &str = "link = \"qkd-1\"\nmember_id = \"alice-0\"\nrole = \"alice\"\n";

    fn secure(pki: &TestPki, uri: &str, roles: &str) -> Result<crate::config::Config, ConfigError> {
        let (cert, key) = pki.leaf("alice-0", uri);
        parse_text(&format!(
            "{BASE}[grpc.tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n[grpc.roles]\n{roles}",
            pki.ca(),
            cert,
            key
        ))
    }

    fn key_of(r: Result<crate::config::Config, ConfigError>) -> (String, String) {
        match r {
            Err(e @ ConfigError::Invalid { .. }) => match &e {
                ConfigError::Invalid { key, .. } => (key.clone(), e.to_string()),
                _ => unreachable!(),
            },
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn tls_is_required_unless_insecure() {
        let (key, text) = key_of(parse_text(BASE));
        assert_eq!(key, "grpc.tls.ca");
        assert!(text.contains("grpc.insecure = true"), "{text}");
        assert!(cfg("").expect("insecure is allowed").grpc.insecure);
    }

    #[test]
    fn a_secure_config_loads_and_checks_its_own_certificate() {
        let pki = TestPki::new();
        let peer = "peer = [\"spiffe://lockstep/qkd-1/member/*\"]\n";
        secure(&pki, "spiffe://lockstep/qkd-1/member/alice-0", peer).expect("valid");
        let (key, text) = key_of(secure(&pki, "spiffe://lockstep/qkd-2/member/alice-0", peer));
        assert_eq!(key, "grpc.roles.peer");
        assert!(
            text.contains("does not match this sidecar's own certificate"),
            "{text}"
        );
        let (key, _) = key_of(secure(&pki, "spiffe://lockstep/qkd-1/member/a", ""));
        assert_eq!(key, "grpc.roles.peer");
        let (key, _) = key_of(secure(&pki, "spiffe://x", "peer = [\"*\"]\n"));
        assert_eq!(key, "grpc.roles.peer");
        let (key, _) = key_of(secure(&pki, "spiffe://x", "peer = [\"a*b*\"]\n"));
        assert_eq!(key, "grpc.roles.peer");
    }

    #[test]
    fn insecure_and_tls_together_is_refused() {
        let pki = TestPki::new();
        let text = format!(
            "{BASE}[grpc]\ninsecure = true\n[grpc.tls]\nca = {:?}\n",
            pki.ca()
        );
        assert_eq!(key_of(parse_text(&text)).0, "grpc.insecure");
    }

    #[test]
    fn etcd_tls_and_credentials() {
        let pki = TestPki::new();
        let (k, _) = key_of(cfg(
            "[etcd]\nendpoints = [\"https://a:2379\", \"http://b:2379\"]\n",
        ));
        assert_eq!(k, "etcd.endpoints");
        let (k, _) = key_of(cfg(&format!("[etcd]\nca = {:?}\n", pki.ca())));
        assert_eq!(k, "etcd.endpoints");
        let ok = format!(
            "[etcd]\nendpoints = [\"https://a:2379\"]\nca = {:?}\n",
            pki.ca()
        );
        cfg(&ok).expect("https with a CA");
        let (k, _) = key_of(cfg("[etcd]\nuser = \"lockstep\"\n"));
        assert_eq!(k, "etcd.password_file");
        let (k, text) = key_of(cfg(
            "[etcd]\nuser = \"lockstep\"\npassword_file = \"/nonexistent/pw\"\n",
        ));
        assert_eq!(k, "etcd.password_file");
        assert!(text.contains("/nonexistent/pw"), "{text}");
        let pw = pki.dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").expect("write");
        let c = cfg(&format!(
            "[etcd]\nuser = \"lockstep\"\npassword_file = {pw:?}\n"
        ))
        .expect("valid");
        assert_eq!(
            super::read_password(c.etcd.password_file.as_deref().expect("set")).as_deref(),
            Ok("s3cret")
        );
    }
}
