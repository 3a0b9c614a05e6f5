//! The HAProxy config lockstep drives ([`HaproxyTemplate::render`]): TCP
//! mode, both servers `disabled`, health checks aimed at the sidecar (the
//! dead-man's switch); and D, the down-detection bound its check timing
//! implies. Pure.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// `timeout connect` in the rendered config. It also bounds the connect
/// phase of every health check (HAProxy allows `min(timeout connect, inter)`
/// before `timeout check` starts), so it is part of D.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// D, the down-detection bound: after the last passing check answer reaches
/// HAProxy, the longest it takes to mark that server DOWN and kill its
/// sessions when no further check passes (sidecar dead, frozen or refusing),
/// for a config rendered by [`HaproxyTemplate::render`]:
///
/// ```text
/// D = inter + (fall - 1) × fastinter + fall × (min(timeout connect, inter) + timeout check)
///   = fall × (inter + min(timeout connect, inter) + timeout check)     (fastinter = inter)
/// ```
///
/// Why, from HAProxy 2.6's check scheduler and measurements:
/// * the next check starts `inter` after the previous one *finished*
///   (not after it started); once one check has failed, later ones start
///   `fastinter` after the previous failure. No `spread-checks`, no jitter;
/// * a failing check ends at once when the port refuses or answers non-200,
///   but a frozen endpoint (the kernel accepts, nobody answers) costs up to
///   the connect allowance `min(timeout connect, inter)` plus `timeout
///   check` ("an additional read timeout", says the manual). Measured with
///   inter 500ms, timeout check 100ms: 250 to 535 ms per check, not 100;
/// * the server goes DOWN on the `fall`-th failure (fewer right after
///   `state ready`, which sets the check health to `rise`), and
///   `on-marked-down shutdown-sessions` kills its sessions within a
///   millisecond.
///
/// `fall × inter + timeout check` (the first guess) is too small for a frozen
/// sidecar: inter 500ms, fall 2, timeout check 300ms took up to 2008 ms,
/// against 1300 ms for the guess and 2600 ms for this bound.
pub fn down_detection_bound(
    check_inter: Duration,
    check_fall: u32,
    check_timeout: Duration,
) -> Duration {
    let inter = rendered(check_inter);
    inter
        .min(CONNECT_TIMEOUT)
        .checked_add(rendered(check_timeout))
        .and_then(|per_failed_check| per_failed_check.checked_add(inter))
        .and_then(|per_check| per_check.checked_mul(check_fall))
        .unwrap_or(Duration::MAX)
}

/// Durations as the config renders them: whole milliseconds, rounded up,
/// at least 1 ms (HAProxy refuses 0 for `inter`).
fn rendered(d: Duration) -> Duration {
    Duration::from_millis(millis(d))
}

fn millis(d: Duration) -> u64 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX).max(1)
}

/// Everything needed to render a HAProxy config that lockstep can drive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HaproxyTemplate {
    /// Where clients (SAEs) connect; TLS passes through to the KME.
    pub frontend_bind: SocketAddr,
    /// The backend holding both setups' servers.
    pub backend: String,
    /// This end's KME in the hot setup.
    pub hot: SocketAddr,
    /// This end's KME in the warm setup.
    pub warm: SocketAddr,
    /// Server names, as the sidecar's `lb.server_hot` / `lb.server_warm`.
    pub server_hot: String,
    pub server_warm: String,
    /// The sidecar's HTTP check endpoint (`[http] listen`).
    pub check_addr: SocketAddr,
    pub check_inter: Duration,
    pub check_fall: u32,
    pub check_rise: u32,
    pub check_timeout: Duration,
    /// The Runtime API socket the sidecar drives (`lb.socket`).
    pub stats_socket: PathBuf,
    /// The socket's mode (600: HAProxy's user only; 660 lets a sidecar in
    /// the socket's group drive HAProxy, as Kubernetes' `fsGroup` does).
    pub socket_mode: u32,
    /// The socket's group, when not HAProxy's own.
    pub socket_gid: Option<u32>,
}

impl HaproxyTemplate {
    /// A template with lockstep's default names (backend `kme`, servers
    /// `hot` and `warm`) and check timing (the sidecar's `[lb]` defaults).
    pub fn new(
        frontend_bind: SocketAddr,
        hot: SocketAddr,
        warm: SocketAddr,
        check_addr: SocketAddr,
        stats_socket: impl Into<PathBuf>,
    ) -> HaproxyTemplate {
        HaproxyTemplate {
            frontend_bind,
            backend: "kme".into(),
            hot,
            warm,
            server_hot: "hot".into(),
            server_warm: "warm".into(),
            check_addr,
            check_inter: Duration::from_millis(500),
            check_fall: 2,
            check_rise: 1,
            check_timeout: Duration::from_millis(300),
            stats_socket: stats_socket.into(),
            socket_mode: 0o600,
            socket_gid: None,
        }
    }

    /// D for this template; see [`down_detection_bound`].
    pub fn down_detection_bound(&self) -> Duration {
        down_detection_bound(self.check_inter, self.check_fall, self.check_timeout)
    }

    /// A TCP-mode config (the KME API is mutual TLS, passed through). Both
    /// servers start `disabled`, so a (re)started HAProxy routes nowhere
    /// until its sidecar enables one. Each server's health check asks the
    /// sidecar about that server by name; when the sidecar stops answering
    /// 200, the server goes DOWN and `on-marked-down shutdown-sessions`
    /// kills its sessions.
    pub fn render(&self) -> String {
        let ms = |d: Duration| format!("{}ms", millis(d));
        let inter = ms(self.check_inter);
        let check_ip = haproxy_ip(self.check_addr.ip());
        let check_port = self.check_addr.port();
        let be = &self.backend;
        let socket = self.stats_socket.display();
        let gid = self
            .socket_gid
            .map(|g| format!("gid {g} "))
            .unwrap_or_default();
        let mode = self.socket_mode;
        format!(
            r#"# Rendered by lockstep (HaproxyTemplate::render). Both servers start
# disabled: this HAProxy routes nowhere until its lockstep sidecar enables one.
# D (down-detection bound) = {d_ms} ms.
global
    stats socket {socket} mode {mode:o} {gid}level admin expose-fd listeners
    stats timeout 10s
    log stderr format short local0 notice
    # Keep out: spread-checks (D assumes checks exactly inter apart) and
    # server-state-file (a restarted HAProxy must come up blocked).

defaults
    mode tcp
    log global
    timeout connect {connect}
    timeout client 30s
    timeout server 30s
    timeout check {timeout_check}

frontend {be}_in
    bind {bind}
    default_backend {be}

backend {be}
    option httpchk
    http-check send meth GET uri-lf /check/%[srv_name]
    http-check expect status 200
    default-server inter {inter} fastinter {inter} downinter {inter} fall {fall} rise {rise} on-marked-down shutdown-sessions
    server {hot_name} {hot} check addr {check_ip} port {check_port} disabled
    server {warm_name} {warm} check addr {check_ip} port {check_port} disabled
"#,
            d_ms = self.down_detection_bound().as_millis(),
            connect = ms(CONNECT_TIMEOUT),
            timeout_check = ms(self.check_timeout),
            bind = self.frontend_bind,
            fall = self.check_fall,
            rise = self.check_rise,
            hot_name = self.server_hot,
            hot = self.hot,
            warm_name = self.server_warm,
            warm = self.warm,
        )
    }
}

/// An IP as HAProxy's `addr` keyword takes it: IPv6 in brackets.
fn haproxy_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_detection_bound_formula() {
        let ms = Duration::from_millis;
        // fall × (inter + min(connect 1s, inter) + timeout check)
        assert_eq!(down_detection_bound(ms(500), 2, ms(300)), ms(2600));
        assert_eq!(down_detection_bound(ms(200), 2, ms(200)), ms(1200));
        // The connect allowance is capped by `timeout connect`.
        assert_eq!(
            down_detection_bound(ms(2000), 3, ms(500)),
            ms(3 * (2000 + 1000 + 500))
        );
        // Sub-millisecond values render (and count) as 1 ms.
        assert_eq!(
            down_detection_bound(Duration::from_micros(10), 1, Duration::ZERO),
            ms(3)
        );
    }

    #[test]
    fn renders_the_dead_mans_switch() {
        let t = HaproxyTemplate::new(
            "127.0.0.1:8443".parse().expect("addr"),
            "10.0.1.10:8443".parse().expect("addr"),
            "[fd00::2]:8443".parse().expect("addr"),
            "[::1]:7401".parse().expect("addr"),
            "/run/haproxy/admin.sock",
        );
        let cfg = t.render();
        for want in [
            "mode tcp",
            "stats socket /run/haproxy/admin.sock mode 600 level admin expose-fd listeners",
            "timeout check 300ms",
            "option httpchk",
            "http-check send meth GET uri-lf /check/%[srv_name]",
            "http-check expect status 200",
            "inter 500ms fastinter 500ms downinter 500ms fall 2 rise 1 on-marked-down shutdown-sessions",
            "server hot 10.0.1.10:8443 check addr [::1] port 7401 disabled",
            "server warm [fd00::2]:8443 check addr [::1] port 7401 disabled",
            "D (down-detection bound) = 2600 ms",
        ] {
            assert!(cfg.contains(want), "missing {want:?} in\n{cfg}");
        }
    }
}
