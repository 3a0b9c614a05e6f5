//! Starting mock KMEs (`kme-mock` processes) for labs and tests, on free
//! loopback ports, killed when dropped.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hyper::Method;
use serde_json::json;

use super::process::{free_port, workspace_program, ChildGuard};
use crate::http::http_once;
use lockstep_core::{Role, Setup};
use lockstep_kme_mock::{FaultMode, KmeStats, DEFAULT_MASTER_SAE_ID, DEFAULT_SLAVE_SAE_ID};

const START_TIMEOUT: Duration = Duration::from_secs(10);
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// One running `kme-mock`.
pub struct KmeProcess {
    pub setup: Setup,
    pub role: Role,
    /// ETSI API (plain HTTP).
    pub addr: SocketAddr,
    /// `/mock/` control API; stays up whatever the fault mode.
    pub admin_addr: SocketAddr,
    pub secret: String,
    pub master_sae_id: String,
    pub slave_sae_id: String,
    pub log: PathBuf,
    /// Extra kme-mock flags it was started with (kept for [`Self::restart`]).
    extra_args: Vec<String>,
    guard: ChildGuard,
}

impl KmeProcess {
    /// Starts a KME with the default SAE ids (`SAE_A`, `SAE_B`) and waits
    /// until it accepts connections.
    pub fn spawn(setup: &str, role: &str, secret: &str, log_dir: &Path) -> Result<KmeProcess> {
        KmeProcess::spawn_with(
            setup,
            role,
            secret,
            DEFAULT_MASTER_SAE_ID,
            DEFAULT_SLAVE_SAE_ID,
            log_dir,
        )
    }

    /// Starts a KME with the given SAE ids. Blocks (up to 10 s per try);
    /// retries with new ports if another process took a port meanwhile.
    pub fn spawn_with(
        setup: &str,
        role: &str,
        secret: &str,
        master_sae_id: &str,
        slave_sae_id: &str,
        log_dir: &Path,
    ) -> Result<KmeProcess> {
        KmeProcess::spawn_with_args(
            setup,
            role,
            secret,
            master_sae_id,
            slave_sae_id,
            &[],
            log_dir,
        )
    }

    /// [`KmeProcess::spawn_with`] plus `extra_args` for kme-mock (e.g.
    /// `--tls-cert`, `--fault empty`).
    pub fn spawn_with_args(
        setup: &str,
        role: &str,
        secret: &str,
        master_sae_id: &str,
        slave_sae_id: &str,
        extra_args: &[&str],
        log_dir: &Path,
    ) -> Result<KmeProcess> {
        Self::spawn_on(
            IpAddr::from([127, 0, 0, 1]),
            setup,
            role,
            secret,
            master_sae_id,
            slave_sae_id,
            extra_args,
            log_dir,
        )
    }

    /// [`KmeProcess::spawn_with_args`] with the ETSI API on `api_ip` (a lab
    /// network's host address); the control API stays on loopback.
    #[allow(clippy::too_many_arguments)]
    pub fn spawn_on(
        api_ip: IpAddr,
        setup: &str,
        role: &str,
        secret: &str,
        master_sae_id: &str,
        slave_sae_id: &str,
        extra_args: &[&str],
        log_dir: &Path,
    ) -> Result<KmeProcess> {
        let setup: Setup = setup.parse()?;
        let role: Role = role.parse()?;
        let program = workspace_program("kme-mock")?;
        let name = format!("kme-{setup}-{role}");
        let log = log_dir.join(format!("{name}.log"));
        let mut last_err = None;
        let extra_args: Vec<String> = extra_args.iter().map(|a| a.to_string()).collect();
        for _attempt in 0..3 {
            let addr = SocketAddr::new(api_ip, free_port()?);
            let admin_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            let cmd = kme_command(
                &program,
                addr,
                admin_addr,
                (setup, role),
                secret,
                (master_sae_id, slave_sae_id),
                &extra_args,
            );
            let mut guard = ChildGuard::spawn(&name, cmd, &log)?;
            match wait_ready(&mut guard, addr, admin_addr) {
                Ok(()) => {
                    return Ok(KmeProcess {
                        setup,
                        role,
                        addr,
                        admin_addr,
                        secret: secret.to_string(),
                        master_sae_id: master_sae_id.to_string(),
                        slave_sae_id: slave_sae_id.to_string(),
                        log,
                        extra_args,
                        guard,
                    })
                }
                Err(e) => {
                    guard.kill();
                    last_err = Some(e);
                }
            }
        }
        let e = last_err.unwrap_or_else(|| anyhow::anyhow!("no attempt made"));
        Err(e.context(format!("starting {name}; log in {}", log.display())))
    }

    /// Sets the fault mode (`ok`, `down`, `unavailable`, `slow`, `empty`); returns once
    /// the KME applied it (for `down`: its API listener is closed).
    pub async fn set_fault(&self, mode: &str, delay_ms: u64) -> Result<()> {
        let mode: FaultMode = mode.parse().map_err(anyhow::Error::msg)?;
        let body = Bytes::from(json!({"mode": mode, "delay_ms": delay_ms}).to_string());
        let what = format!("setting fault {mode} on {}", self.name());
        self.control(Method::POST, "/mock/fault", Some(body), &what)
            .await
            .map(drop)
    }

    /// One call of the `/mock/` control API that must answer 200; `what`
    /// names it in errors.
    async fn control(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        what: &str,
    ) -> Result<crate::http::HttpReply> {
        let reply = http_once(self.admin_addr, method, path, body, ADMIN_TIMEOUT)
            .await
            .with_context(|| what.to_string())?;
        if reply.status != 200 {
            bail!("{what}: HTTP {}: {}", reply.status, reply.body_excerpt());
        }
        Ok(reply)
    }

    /// The KME's counters (`GET /mock/stats`).
    pub async fn stats(&self) -> Result<KmeStats> {
        let what = format!("reading stats of {}", self.name());
        let reply = self
            .control(Method::GET, "/mock/stats", None, &what)
            .await?;
        serde_json::from_slice(&reply.body)
            .with_context(|| format!("parsing stats of {}", self.name()))
    }

    /// `kme-hot-alice` etc.
    pub fn name(&self) -> &str {
        &self.guard.name
    }

    pub fn guard(&self) -> &ChildGuard {
        &self.guard
    }

    pub fn guard_mut(&mut self) -> &mut ChildGuard {
        &mut self.guard
    }

    /// SIGKILL (the process is gone for good).
    pub fn kill(&mut self) {
        self.guard.kill();
    }

    /// Starts it again (after a kill) on the same ports with the same
    /// secret and flags. Keys derive from the setup's secret, so the KME
    /// still knows every key its setup handed out. Blocks until it is ready.
    pub fn restart(&mut self) -> Result<()> {
        self.guard.kill();
        let program = workspace_program("kme-mock")?;
        let cmd = kme_command(
            &program,
            self.addr,
            self.admin_addr,
            (self.setup, self.role),
            &self.secret,
            (&self.master_sae_id, &self.slave_sae_id),
            &self.extra_args,
        );
        let name = self.guard.name.clone();
        self.guard = ChildGuard::spawn(&name, cmd, &self.log)?;
        wait_ready(&mut self.guard, self.addr, self.admin_addr)
            .with_context(|| format!("restarting {name}; log in {}", self.log.display()))
    }

    /// SIGSTOP: connections stay open but nothing answers.
    pub fn freeze(&self) -> Result<()> {
        self.guard.signal(nix::sys::signal::Signal::SIGSTOP)
    }

    /// SIGCONT after [`Self::freeze`].
    pub fn thaw(&self) -> Result<()> {
        self.guard.signal(nix::sys::signal::Signal::SIGCONT)
    }
}

/// The kme-mock command line for one KME.
fn kme_command(
    program: &Path,
    addr: SocketAddr,
    admin_addr: SocketAddr,
    (setup, role): (Setup, Role),
    secret: &str,
    (master_sae_id, slave_sae_id): (&str, &str),
    extra_args: &[String],
) -> Command {
    let mut cmd = Command::new(program);
    cmd.arg("--listen")
        .arg(addr.to_string())
        .arg("--admin-listen")
        .arg(admin_addr.to_string())
        .args(["--setup", setup.as_str(), "--role", role.as_str()])
        .args([
            "--master-sae-id",
            master_sae_id,
            "--slave-sae-id",
            slave_sae_id,
        ])
        .args(extra_args)
        // The environment keeps the secret out of `ps`.
        .env("KME_MOCK_SECRET", secret);
    cmd
}

/// Waits until the child answers `/mock/stats` with its own pid (so the
/// port is really ours).
fn wait_ready(guard: &mut ChildGuard, addr: SocketAddr, admin_addr: SocketAddr) -> Result<()> {
    let pid = guard.pid().context("child already reaped")?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if !guard.is_running() {
            bail!(
                "{} exited during start-up (port taken or bad flags?)",
                guard.name
            );
        }
        if let Ok(stats) = get_stats_blocking(admin_addr) {
            if stats.pid != pid {
                bail!(
                    "{admin_addr} is served by another process (pid {})",
                    stats.pid
                );
            }
            // The child binds its API listener before the admin one (and
            // exits if it cannot), so the API is up. Probing it would also
            // show up in its connection counters.
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} not ready at {addr} / {admin_addr} within {START_TIMEOUT:?}",
                guard.name
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A minimal blocking GET, so `spawn` needs no runtime.
fn get_stats_blocking(admin_addr: SocketAddr) -> Result<KmeStats> {
    let mut s = TcpStream::connect_timeout(&admin_addr, Duration::from_millis(200))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    s.write_all(
        format!("GET /mock/stats HTTP/1.1\r\nHost: {admin_addr}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP answer")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("unexpected answer: {head}");
    }
    Ok(serde_json::from_str(body)?)
}

/// The four KMEs of a link: hot and warm, Alice and Bob; one secret per setup.
pub struct LinkKmes {
    pub hot_alice: KmeProcess,
    pub hot_bob: KmeProcess,
    pub warm_alice: KmeProcess,
    pub warm_bob: KmeProcess,
}

impl LinkKmes {
    /// Starts all four with the given SAE ids; logs go to `log_dir`.
    pub fn spawn(log_dir: &Path, master_sae_id: &str, slave_sae_id: &str) -> Result<LinkKmes> {
        Self::spawn_on(
            IpAddr::from([127, 0, 0, 1]),
            log_dir,
            master_sae_id,
            slave_sae_id,
        )
    }

    /// [`LinkKmes::spawn`] with the ETSI APIs on `api_ip`.
    pub fn spawn_on(
        api_ip: IpAddr,
        log_dir: &Path,
        master_sae_id: &str,
        slave_sae_id: &str,
    ) -> Result<LinkKmes> {
        let secret = |setup: Setup| format!("{setup}-{}", hex::encode(rand::random::<[u8; 16]>()));
        let (hot, warm) = (secret(Setup::Hot), secret(Setup::Warm));
        let start = |setup: &str, role: &str, secret: &str| {
            KmeProcess::spawn_on(
                api_ip,
                setup,
                role,
                secret,
                master_sae_id,
                slave_sae_id,
                &[],
                log_dir,
            )
        };
        Ok(LinkKmes {
            hot_alice: start("hot", "alice", &hot)?,
            hot_bob: start("hot", "bob", &hot)?,
            warm_alice: start("warm", "alice", &warm)?,
            warm_bob: start("warm", "bob", &warm)?,
        })
    }

    pub fn get(&self, setup: Setup, role: &str) -> Result<&KmeProcess> {
        Ok(match (setup, role.parse::<Role>()?) {
            (Setup::Hot, Role::Alice) => &self.hot_alice,
            (Setup::Hot, Role::Bob) => &self.hot_bob,
            (Setup::Warm, Role::Alice) => &self.warm_alice,
            (Setup::Warm, Role::Bob) => &self.warm_bob,
        })
    }

    pub fn get_mut(&mut self, setup: Setup, role: &str) -> Result<&mut KmeProcess> {
        Ok(match (setup, role.parse::<Role>()?) {
            (Setup::Hot, Role::Alice) => &mut self.hot_alice,
            (Setup::Hot, Role::Bob) => &mut self.hot_bob,
            (Setup::Warm, Role::Alice) => &mut self.warm_alice,
            (Setup::Warm, Role::Bob) => &mut self.warm_bob,
        })
    }

    /// The ETSI API address of one KME.
    pub fn addr(&self, setup: Setup, role: &str) -> Result<SocketAddr> {
        Ok(self.get(setup, role)?.addr)
    }

    pub async fn set_fault(
        &self,
        setup: Setup,
        role: &str,
        mode: &str,
        delay_ms: u64,
    ) -> Result<()> {
        self.get(setup, role)?.set_fault(mode, delay_ms).await
    }

    pub fn iter(&self) -> impl Iterator<Item = &KmeProcess> {
        [
            &self.hot_alice,
            &self.hot_bob,
            &self.warm_alice,
            &self.warm_bob,
        ]
        .into_iter()
    }
}

/// [`LinkKmes::spawn`] with the default SAE ids (`SAE_A`, `SAE_B`).
pub fn spawn_link(log_dir: &Path) -> Result<LinkKmes> {
    LinkKmes::spawn(log_dir, DEFAULT_MASTER_SAE_ID, DEFAULT_SLAVE_SAE_ID)
}
