//! Starting a real HAProxy (Debian's haproxy) for labs and tests, in the
//! foreground so its guard owns it.

use super::process::{find_program, free_port, wait_for_tcp, ChildGuard};
use super::sidecar::Timing;
use crate::lb::haproxy::{Haproxy, HaproxyTemplate};
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub struct HaproxyProcess {
    pub name: String,
    pub frontend: SocketAddr,
    pub stats_socket: PathBuf,
    pub config_path: PathBuf,
    pub template: HaproxyTemplate,
    pub guard: ChildGuard,
    log: PathBuf,
}

impl HaproxyProcess {
    /// An HAProxy for member `name` routing to `hot` or `warm`, whose checks
    /// ask the sidecar at `check_addr`.
    pub fn spawn_for(
        name: &str,
        hot: SocketAddr,
        warm: SocketAddr,
        check_addr: SocketAddr,
        timing: &Timing,
        dir: &Path,
    ) -> Result<HaproxyProcess> {
        let template = HaproxyTemplate {
            frontend_bind: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            backend: "kme".into(),
            hot,
            warm,
            server_hot: "hot".into(),
            server_warm: "warm".into(),
            check_addr,
            check_inter: timing.check_inter,
            check_fall: timing.check_fall,
            check_rise: timing.check_rise,
            check_timeout: timing.check_timeout,
            stats_socket: dir.join(format!("haproxy-{name}.sock")),
        };
        Self::spawn(name, template, dir)
    }

    pub fn spawn(name: &str, template: HaproxyTemplate, dir: &Path) -> Result<HaproxyProcess> {
        let config_path = dir.join(format!("haproxy-{name}.cfg"));
        std::fs::write(&config_path, template.render())
            .with_context(|| format!("writing {}", config_path.display()))?;
        let log = dir.join(format!("haproxy-{name}.log"));
        let guard = launch(name, &config_path, &template, &log)?;
        Ok(HaproxyProcess {
            name: name.into(),
            frontend: template.frontend_bind,
            stats_socket: template.stats_socket.clone(),
            config_path,
            template,
            guard,
            log,
        })
    }

    /// Kills and starts HAProxy again with the same config and ports: it
    /// comes up with both servers disabled.
    pub fn restart(&mut self) -> Result<()> {
        self.guard.kill();
        self.guard = launch(&self.name, &self.config_path, &self.template, &self.log)?;
        Ok(())
    }

    pub fn adapter(&self) -> Haproxy {
        Haproxy::new(
            self.stats_socket.clone(),
            &self.template.backend,
            &self.template.server_hot,
            &self.template.server_warm,
            Duration::from_secs(1),
        )
    }
}

fn launch(name: &str, config: &Path, t: &HaproxyTemplate, log: &Path) -> Result<ChildGuard> {
    let _ = std::fs::remove_file(&t.stats_socket);
    let mut cmd = Command::new(find_program("haproxy")?);
    cmd.arg("-db").arg("-f").arg(config);
    let guard = ChildGuard::spawn(&format!("haproxy-{name}"), cmd, log)?;
    wait_for_tcp(t.frontend_bind, Duration::from_secs(10))
        .with_context(|| format!("HAProxy {name} did not start; see {}", log.display()))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !t.stats_socket.exists() {
        if std::time::Instant::now() > deadline {
            anyhow::bail!("HAProxy {name} has no stats socket; see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(guard)
}
