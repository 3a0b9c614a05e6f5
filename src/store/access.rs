//! How the sidecar reaches etcd: TLS (`https://` endpoints with
//! `etcd.ca`, and `etcd.cert`/`etcd.key` for `--client-cert-auth`) and
//! credentials (`etcd.user`, the password read from `etcd.password_file`),
//! and errors that name what to fix when etcd refuses them.

use crate::config::EtcdConfig;
use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

/// Bounded reads: a PEM bundle is small.
const MAX_PEM: u64 = 1 << 20;

fn read_pem(key: &'static str, path: &std::path::Path) -> Result<Vec<u8>, (&'static str, String)> {
    let meta = std::fs::metadata(path).map_err(|e| {
        (
            key,
            format!(
                "cannot read {}: {e}; check the path and its permissions",
                path.display()
            ),
        )
    })?;
    if meta.len() > MAX_PEM {
        return Err((
            key,
            format!(
                "{} is {} bytes; a PEM file is far smaller",
                path.display(),
                meta.len()
            ),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| {
        (
            key,
            format!(
                "cannot read {}: {e}; check the path and its permissions",
                path.display()
            ),
        )
    })?;
    if !String::from_utf8_lossy(&bytes).contains("-----BEGIN ") {
        return Err((
            key,
            format!("{} holds no PEM block (\"-----BEGIN ...\")", path.display()),
        ));
    }
    Ok(bytes)
}

/// The TLS options `[etcd]` asks for; `Err((key, why))` names the key.
pub(crate) fn tls_options(e: &EtcdConfig) -> Result<TlsOptions, (&'static str, String)> {
    let mut tls = TlsOptions::new();
    if let Some(ca) = &e.ca {
        tls = tls.ca_certificate(Certificate::from_pem(read_pem("etcd.ca", ca)?));
    }
    if let (Some(cert), Some(key)) = (&e.cert, &e.key) {
        tls = tls.identity(Identity::from_pem(
            read_pem("etcd.cert", cert)?,
            read_pem("etcd.key", key)?,
        ));
    }
    Ok(tls)
}

/// Connect options with TLS and credentials added per `[etcd]`.
pub(crate) fn connect_options(
    e: &EtcdConfig,
    base: ConnectOptions,
) -> Result<ConnectOptions, String> {
    let mut options = base;
    if e.endpoints.iter().any(|u| u.starts_with("https://")) {
        options = options.with_tls(tls_options(e).map_err(|(key, why)| format!("{key}: {why}"))?);
    }
    if let (Some(user), Some(path)) = (&e.user, &e.password_file) {
        let password = crate::config::read_password(path)
            .map_err(|why| format!("etcd.password_file: {why}"))?;
        options = options
            .with_user(user.clone(), password)
            .with_auto_token_refresh(true);
    }
    Ok(options)
}

/// What etcd's refusal means, for the start-up error; `None` when it is
/// not about access.
pub(crate) fn explain(e: &etcd_client::Error, config: &Access) -> Option<String> {
    let text = error_chain(e);
    let lower = text.to_lowercase();
    if lower.contains("authentication failed") || lower.contains("invalid user id or password") {
        return Some(format!(
            "etcd refused user {:?}: wrong user name or password ({text}); check etcd.user and the password in etcd.password_file",
            config.user.as_deref().unwrap_or("")
        ));
    }
    if lower.contains("user name is empty") || lower.contains("user name not found") {
        return Some(format!(
            "etcd requires authentication ({text}); set etcd.user and etcd.password_file (or give a client certificate whose CN is an etcd user)"
        ));
    }
    if lower.contains("permission denied") {
        return Some(format!(
            "etcd user {:?} may not use {} ({text}); grant its role readwrite on that prefix (docs/security.md, \"The etcd role\")",
            config.user.as_deref().unwrap_or("(from the client certificate)"),
            config.prefix
        ));
    }
    if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake") {
        return Some(format!(
            "TLS with etcd failed ({text}); check etcd.ca (the CA of etcd's server certificates) and etcd.cert/etcd.key (a client certificate etcd's --trusted-ca-file trusts)"
        ));
    }
    None
}

/// What [`explain`] needs to know about the config.
#[derive(Clone, Debug, Default)]
pub(crate) struct Access {
    pub(crate) user: Option<String>,
    /// `<prefix>/<link>/`.
    pub(crate) prefix: String,
}

/// An error and its sources, on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
