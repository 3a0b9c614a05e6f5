//! The setup users have today, for side-by-side benchmarks: two HAProxy
//! LBs, each with `server hot ... check` and `server warm ... check backup`
//! health-checking its own KMEs, and nothing coordinating the two ends.

use super::kme::LinkKmes;
use super::process::{find_program, free_port, wait_for_tcp, ChildGuard};
use super::sidecar::Timing;
use anyhow::{Context, Result};
use lockstep_core::Setup;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Renders one end's config. Checks go to the KME's ETSI status, with the
/// same `inter`/`fall`/`rise`/`timeout check` lockstep's lab uses.
pub fn render(
    bind: SocketAddr,
    hot: SocketAddr,
    warm: SocketAddr,
    peer_sae: &str,
    t: &Timing,
) -> String {
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    format!(
        r#"# Baseline: HAProxy failover with a backup server, no coordination.
global
    log stderr format short local0 notice
defaults
    mode tcp
    log global
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout check {ctimeout}
frontend kme
    bind {bind}
    default_backend kme
backend kme
    option httpchk
    http-check send meth GET uri /api/v1/keys/{peer_sae}/status
    http-check expect status 200
    default-server inter {inter} fastinter {inter} downinter {inter} fall {fall} rise {rise} on-marked-down shutdown-sessions
    server hot {hot} check
    server warm {warm} check backup
"#,
        ctimeout = ms(t.check_timeout),
        inter = ms(t.check_inter),
        fall = t.check_fall,
        rise = t.check_rise,
    )
}

pub struct BaselineLink {
    pub kmes: LinkKmes,
    /// Alice's LB then Bob's.
    pub frontends: Vec<SocketAddr>,
    /// Dropped (killed) with the link.
    _lbs: Vec<ChildGuard>,
}

impl BaselineLink {
    pub fn start(
        dir: &Path,
        alice_sae: &str,
        bob_sae: &str,
        timing: &Timing,
    ) -> Result<BaselineLink> {
        let kmes = LinkKmes::spawn(dir, alice_sae, bob_sae)?;
        let mut frontends = Vec::new();
        let mut lbs = Vec::new();
        for role in ["alice", "bob"] {
            let bind = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            let peer = if role == "alice" { bob_sae } else { alice_sae };
            let cfg = render(
                bind,
                kmes.addr(Setup::Hot, role)?,
                kmes.addr(Setup::Warm, role)?,
                peer,
                timing,
            );
            let path = dir.join(format!("baseline-{role}.cfg"));
            std::fs::write(&path, cfg).with_context(|| format!("writing {}", path.display()))?;
            let mut cmd = Command::new(find_program("haproxy")?);
            cmd.arg("-db").arg("-f").arg(&path);
            let log = dir.join(format!("baseline-{role}.log"));
            lbs.push(ChildGuard::spawn(&format!("baseline-{role}"), cmd, &log)?);
            wait_for_tcp(bind, Duration::from_secs(10)).with_context(|| {
                format!("baseline HAProxy did not start; see {}", log.display())
            })?;
            frontends.push(bind);
        }
        Ok(BaselineLink {
            kmes,
            frontends,
            _lbs: lbs,
        })
    }
}
