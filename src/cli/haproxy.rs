//! `lockstep haproxy-config`: the HAProxy config that matches a sidecar
//! config's timing and names. It is the one source of every shipped HAProxy
//! config (`deploy/generate` writes `deploy/haproxy/haproxy.cfg` and the
//! Kubernetes overlays' from it), so the two cannot disagree on D.

use super::bounds::load_config;
use super::Failure;
use crate::lb::haproxy::HaproxyTemplate;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

/// What `haproxy-config` takes besides the sidecar's config.
pub struct HaproxyConfig {
    pub config: PathBuf,
    /// Where SAEs connect (HAProxy's frontend `bind`).
    pub bind: SocketAddr,
    /// The KMEs' IP:port; `None`: the host and port of `probe.hot` /
    /// `probe.warm` (the LB routes to what the sidecar probes).
    pub hot: Option<SocketAddr>,
    pub warm: Option<SocketAddr>,
    /// The Runtime API socket's mode, octal text (e.g. "600", "660").
    pub socket_mode: String,
    pub socket_gid: Option<u32>,
}

/// A setup's KME as HAProxy's `server` needs it: `flag`, else the IP and
/// port of its probe URL.
fn kme_addr(flag: Option<SocketAddr>, url: Option<&str>, key: &str) -> Result<SocketAddr, Failure> {
    let bad = |why: String| {
        Failure::new(
            2,
            format!("{why}; pass --{} IP:PORT", key.trim_start_matches("probe.")),
        )
    };
    if let Some(a) = flag {
        return Ok(a);
    }
    let url = url.ok_or_else(|| bad(format!("{key} is not set")))?;
    let uri: hyper::Uri = url
        .parse()
        .map_err(|_| bad(format!("{key} {url:?} is not a URL")))?;
    let host = uri.host().unwrap_or_default();
    let ip: IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| bad(format!("{key} {url:?}: host {host:?} is not an IP address")))?;
    let default_port = if uri.scheme_str() == Some("https") {
        443
    } else {
        80
    };
    Ok(SocketAddr::new(ip, uri.port_u16().unwrap_or(default_port)))
}

/// The rendered config, or why it cannot be rendered (exit code 2).
pub fn haproxy_config(args: &HaproxyConfig) -> Result<String, Failure> {
    let c = load_config(&args.config)?;
    let mode = u32::from_str_radix(&args.socket_mode, 8)
        .ok()
        .filter(|m| *m <= 0o777 && m & 0o600 == 0o600)
        .ok_or_else(|| {
            Failure::new(
                2,
                format!(
                    "--socket-mode {:?} must be octal with owner read and write, e.g. 600 or 660",
                    args.socket_mode
                ),
            )
        })?;
    // HAProxy and the sidecar share a network namespace (one pod, one
    // host): checks stay on loopback when the sidecar listens on any address.
    let mut check_addr = c.http.check_target();
    if check_addr.ip().is_unspecified() {
        check_addr.set_ip(match check_addr {
            SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        });
    }
    let template = HaproxyTemplate {
        backend: c.lb.backend.clone(),
        server_hot: c.lb.server_hot.clone(),
        server_warm: c.lb.server_warm.clone(),
        check_inter: c.lb.check_inter,
        check_fall: c.lb.check_fall,
        check_rise: c.lb.check_rise,
        check_timeout: c.lb.check_timeout,
        socket_mode: mode,
        socket_gid: args.socket_gid,
        ..HaproxyTemplate::new(
            args.bind,
            kme_addr(args.hot, c.probe.hot.as_deref(), "probe.hot")?,
            kme_addr(args.warm, c.probe.warm.as_deref(), "probe.warm")?,
            check_addr,
            c.lb.socket.clone(),
        )
    };
    Ok(template.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn kme_addresses_come_from_the_flags_or_the_probe_urls() {
        let url = |u: &str| kme_addr(None, Some(u), "probe.hot").map_err(|f| f.message);
        assert_eq!(url("https://10.0.1.10:8443"), Ok(a("10.0.1.10:8443")));
        assert_eq!(url("https://[fd00::1]"), Ok(a("[fd00::1]:443")));
        assert_eq!(url("http://127.0.0.1"), Ok(a("127.0.0.1:80")));
        assert!(url("https://kme-hot:8443").is_err_and(|m| m.contains("--hot IP:PORT")));
        assert!(kme_addr(None, None, "probe.warm").is_err_and(|f| f.message.contains("--warm")));
        assert_eq!(
            kme_addr(Some(a("10.0.0.1:1")), Some("https://x:2"), "probe.hot")
                .map_err(|f| f.message),
            Ok(a("10.0.0.1:1"))
        );
    }

    #[test]
    fn the_config_sets_the_sockets_mode_and_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        let (text, pki) = crate::config::example_with_certs();
        std::fs::write(&path, text).expect("write");
        let args = |mode: &str, gid: Option<u32>| HaproxyConfig {
            config: path.clone(),
            bind: a("0.0.0.0:8443"),
            hot: None,
            warm: Some(a("10.0.2.10:8443")),
            socket_mode: mode.into(),
            socket_gid: gid,
        };
        let _keep = &pki;
        let text = haproxy_config(&args("660", Some(10001)))
            .map_err(|f| f.message)
            .expect("renders");
        assert!(
            text.contains("stats socket /run/haproxy/admin.sock mode 660 gid 10001 level admin"),
            "{text}"
        );
        assert!(text.contains("server hot 127.0.0.1:8443 check addr 127.0.0.1 port 7401 disabled"));
        assert!(text.contains("server warm 10.0.2.10:8443 check"));
        assert!(
            haproxy_config(&args("600", None)).is_ok_and(|t| t.contains("mode 600 level admin"))
        );
        for bad in ["644x", "400", "1777"] {
            assert!(haproxy_config(&args(bad, None)).is_err(), "{bad}");
        }
    }
}
