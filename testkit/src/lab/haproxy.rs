//! A real HAProxy (Debian's haproxy) for labs and tests, on a free loopback
//! port, run in the foreground (`-db`) so its guard owns it and kills it on
//! drop, also when a test panics.

use super::process::{find_program, free_port, ChildGuard, CONNECT_PROBE_TIMEOUT};
use super::sidecar::Timing;
use anyhow::{bail, Context, Result};
use lockstep::lb::haproxy::{Haproxy, HaproxyTemplate};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How long HAProxy may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// What a lab HAProxy needs; [`HaproxyProcess::spawn`] picks the frontend
/// port and puts the stats socket in its directory.
#[derive(Clone, Debug)]
pub struct HaproxyInputs {
    /// Names the config, socket and log files (`haproxy-<name>.*`).
    pub name: String,
    pub hot: SocketAddr,
    pub warm: SocketAddr,
    /// The sidecar's (or a test's) HTTP check endpoint.
    pub check_addr: SocketAddr,
    pub check_inter: Duration,
    pub check_fall: u32,
    pub check_rise: u32,
    pub check_timeout: Duration,
    /// Address the frontend binds (loopback unless in a lab network).
    pub frontend_ip: IpAddr,
    /// Network namespace to run in (`/run/netns/<name>`), if any.
    pub netns: Option<PathBuf>,
}

impl HaproxyInputs {
    /// Inputs with the lab's check timing ([`Timing::default`]).
    pub fn new(name: &str, hot: SocketAddr, warm: SocketAddr, check_addr: SocketAddr) -> Self {
        let lab = Timing::default();
        HaproxyInputs {
            name: name.into(),
            hot,
            warm,
            check_addr,
            check_inter: lab.check_inter,
            check_fall: lab.check_fall,
            check_rise: lab.check_rise,
            check_timeout: lab.check_timeout,
            frontend_ip: IpAddr::from([127, 0, 0, 1]),
            netns: None,
        }
    }

    /// Takes the check timing from `timing`.
    pub fn with_timing(mut self, timing: &Timing) -> Self {
        self.check_inter = timing.check_inter;
        self.check_fall = timing.check_fall;
        self.check_rise = timing.check_rise;
        self.check_timeout = timing.check_timeout;
        self
    }
}

/// A running HAProxy with lockstep's config (backend `kme`, servers `hot`
/// and `warm`, both starting disabled).
pub struct HaproxyProcess {
    pub frontend: SocketAddr,
    pub stats_socket: PathBuf,
    pub config_path: PathBuf,
    name: String,
    guard: ChildGuard,
    template: HaproxyTemplate,
    log: PathBuf,
    netns: Option<PathBuf>,
}

impl HaproxyProcess {
    /// Renders the config into `dir` and starts HAProxy; returns once both
    /// the frontend and the stats socket accept connections.
    pub fn spawn(inputs: HaproxyInputs, dir: &Path) -> Result<HaproxyProcess> {
        let name = &inputs.name;
        let frontend = SocketAddr::new(inputs.frontend_ip, free_port()?);
        let mut template = HaproxyTemplate::new(
            frontend,
            inputs.hot,
            inputs.warm,
            inputs.check_addr,
            dir.join(format!("haproxy-{name}.sock")),
        );
        template.check_inter = inputs.check_inter;
        template.check_fall = inputs.check_fall;
        template.check_rise = inputs.check_rise;
        template.check_timeout = inputs.check_timeout;

        let config_path = dir.join(format!("haproxy-{name}.cfg"));
        std::fs::write(&config_path, template.render())
            .with_context(|| format!("writing {}", config_path.display()))?;
        let log = dir.join(format!("haproxy-{name}.log"));
        let netns = inputs.netns.clone();
        let guard = launch(name, &config_path, &template, &log, netns.as_deref())?;
        Ok(HaproxyProcess {
            frontend,
            stats_socket: template.stats_socket.clone(),
            config_path,
            name: name.clone(),
            guard,
            template,
            log,
            netns,
        })
    }

    /// The lab's HAProxy for member `name`, checking the sidecar at
    /// `check_addr` with `timing`.
    pub fn spawn_for(
        name: &str,
        hot: SocketAddr,
        warm: SocketAddr,
        check_addr: SocketAddr,
        timing: &Timing,
        dir: &Path,
    ) -> Result<HaproxyProcess> {
        Self::spawn(
            HaproxyInputs::new(name, hot, warm, check_addr).with_timing(timing),
            dir,
        )
    }

    /// Kills HAProxy and starts it again with the same config and ports: it
    /// comes up with both servers disabled (routing nowhere).
    pub fn restart(&mut self) -> Result<()> {
        self.guard.kill();
        self.guard = launch(
            &self.name,
            &self.config_path,
            &self.template,
            &self.log,
            self.netns.as_deref(),
        )?;
        Ok(())
    }

    /// Kills HAProxy (its socket goes dead); [`restart`](Self::restart)
    /// brings it back.
    pub fn kill(&mut self) {
        self.guard.kill();
    }

    /// Sends `signal` to HAProxy (e.g. SIGSTOP to freeze it).
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> Result<()> {
        self.guard.signal(signal)
    }

    pub fn pid(&self) -> Option<u32> {
        self.guard.pid()
    }

    pub fn template(&self) -> &HaproxyTemplate {
        &self.template
    }

    /// HAProxy's stdout/stderr (its log goes there too).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// An adapter for this HAProxy, as the sidecar would build it.
    pub fn adapter(&self) -> Haproxy {
        Haproxy::new(
            self.stats_socket.clone(),
            self.template.backend.clone(),
            self.template.server_hot.clone(),
            self.template.server_warm.clone(),
        )
    }
}

fn launch(
    name: &str,
    config: &Path,
    t: &HaproxyTemplate,
    log: &Path,
    netns: Option<&Path>,
) -> Result<ChildGuard> {
    // A killed HAProxy leaves its socket file behind; waiting for the file
    // must not be fooled by the old one.
    match std::fs::remove_file(&t.stats_socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("removing stale {}", t.stats_socket.display()))
        }
    }
    let mut cmd = Command::new(find_program("haproxy")?);
    cmd.arg("-db").arg("-f").arg(config);
    if let Some(ns) = netns {
        crate::netns::enter_netns(&mut cmd, ns)?;
    }
    let mut guard = ChildGuard::spawn(&format!("haproxy-{name}"), cmd, log)?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let frontend = TcpStream::connect_timeout(&t.frontend_bind, CONNECT_PROBE_TIMEOUT);
        let socket = UnixStream::connect(&t.stats_socket);
        if frontend.is_ok() && socket.is_ok() {
            break;
        }
        if !guard.is_running() {
            bail!("HAProxy {name} exited at start; see {}", log.display());
        }
        if Instant::now() > deadline {
            bail!(
                "HAProxy {name} did not accept connections at {} and {} within {START_TIMEOUT:?}; see {}",
                t.frontend_bind,
                t.stats_socket.display(),
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(guard)
}
