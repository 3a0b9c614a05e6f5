//! Child processes for labs and tests: started on free loopback ports and
//! killed (with their whole process group) when their guard drops, also when
//! a test panics.

use anyhow::{bail, Context, Result};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 for a child process to bind.
///
/// Ports come from below the kernel's ephemeral range: outgoing connections
/// (HAProxy's health checks, etcd clients) take their source ports from that
/// range, and could otherwise grab a port between the moment it is handed
/// out and the moment the child binds it. A port is never handed out twice
/// by one process.
pub fn free_port() -> Result<u16> {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let (low, _) = ephemeral_range();
    let floor: u16 = 10_000;
    let mut given = GIVEN
        .lock()
        .map_err(|_| anyhow::anyhow!("port allocator poisoned"))?;
    let given = given.get_or_insert_with(HashSet::new);
    if low > floor + 100 {
        // Start at a point that differs between processes run one after
        // another, so a port a previous test left in TIME_WAIT is unlikely.
        let span = (low - floor) as u32;
        let seed = std::process::id().wrapping_mul(2_654_435_761)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
        for i in 0..span {
            let port = floor + ((seed.wrapping_add(i.wrapping_mul(7919))) % span) as u16;
            if given.contains(&port) {
                continue;
            }
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                given.insert(port);
                return Ok(port);
            }
        }
    }
    // No room below the ephemeral range: fall back to the OS's choice.
    let l = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0 to find a free port")?;
    let port = l.local_addr()?.port();
    given.insert(port);
    Ok(port)
}

/// The kernel's ephemeral port range (Linux), or its default.
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// How long one probe connect may take: long enough for a round trip over
/// a slowed link (the chaos suite's `net-slow` makes a round trip to a
/// member up to ~560 ms), so a start-up probe never times out on latency.
pub const CONNECT_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Waits until something accepts TCP connections at `addr` (at least one
/// attempt, however short `timeout`).
pub fn wait_for_tcp(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, CONNECT_PROBE_TIMEOUT).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing accepted connections at {addr} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Finds a program: next to the current executable (cargo puts our own
/// binaries there), in `target/{debug,release}`, or on PATH.
pub fn find_program(name: &str) -> Result<PathBuf> {
    if let Ok(exe) = std::env::current_exe() {
        let mut dir = exe.parent().map(Path::to_path_buf);
        // Test binaries live in target/<profile>/deps.
        for _ in 0..2 {
            if let Some(d) = &dir {
                let candidate = d.join(name);
                if candidate.is_file() {
                    return Ok(candidate);
                }
                dir = d.parent().map(Path::to_path_buf);
            }
        }
    }
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/sbin", "/bin"] {
        let candidate = Path::new(dir).join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!("program {name:?} not found; run the README's setup command (scripts/install-deps) or `cargo build --bins`")
}

/// One of the workspace's own programs (`lockstep`, `kme-mock`), found like
/// any program (see [`find_program`]).
///
/// Cargo builds only the tested package's own binaries for its tests, and
/// the sidecar and the mock KME live in other packages. So a test binary
/// run by cargo (it sits in `target/<profile>/deps` and has `$CARGO`) first
/// has cargo build both, in its own profile and with this crate's
/// `failpoints` and `mutations` features passed on to the sidecar, as cargo
/// did when the tests were the product's own: the sidecar a test starts is
/// always the code under test, built the way the test needs it. Once per
/// process; a no-op when nothing changed.
pub fn workspace_program(name: &str) -> Result<PathBuf> {
    use std::sync::OnceLock;
    static BUILT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_workspace_programs().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)?;
    find_program(name)
}

/// `cargo build` of the sidecar and the mock KME, for a test binary run by
/// cargo; nothing otherwise (a lab started by `lockstep-lab` or the chaos
/// suite uses the binaries built beside it).
fn build_workspace_programs() -> Result<()> {
    let Some(cargo) = std::env::var_os("CARGO") else {
        return Ok(());
    };
    let exe = std::env::current_exe().context("finding the test binary")?;
    let Some(deps) = exe.parent().filter(|d| d.ends_with("deps")) else {
        return Ok(());
    };
    let (Some(profile_dir), Some(target_dir)) =
        (deps.parent(), deps.parent().and_then(Path::parent))
    else {
        return Ok(());
    };
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cmd = Command::new(cargo);
    // Without what cargo sets for the test process itself: build scripts
    // that watch such variables (ring's watches `CARGO_PKG_NAME`) would
    // otherwise run again, and everything above them be rebuilt, on every
    // switch between this build and the outer one.
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_MANIFEST_")
            || matches!(
                &*k,
                "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "OUT_DIR"
            )
        {
            cmd.env_remove(&key);
        }
    }
    cmd.arg("build")
        .arg("--quiet")
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        .args(["-p", "lockstep", "-p", "lockstep-kme-mock"])
        .args(["--bin", "lockstep", "--bin", "kme-mock"]);
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
    }
    let features: Vec<&str> = [
        (cfg!(feature = "failpoints"), "lockstep/failpoints"),
        (cfg!(feature = "mutations"), "lockstep/mutations"),
    ]
    .into_iter()
    .filter_map(|(on, f)| on.then_some(f))
    .collect();
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    let out = cmd
        .output()
        .context("running cargo to build lockstep and kme-mock")?;
    if !out.status.success() {
        bail!(
            "cargo could not build lockstep and kme-mock for the tests ({:?}):\n{}",
            cmd,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// How a program run to its end went.
#[derive(Clone, Debug)]
pub struct Finished {
    /// Its exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Stdout, then stderr: everything it printed.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `cmd` to its end, capturing what it prints.
pub fn run_to_end(cmd: &mut Command) -> Result<Finished> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    Ok(Finished {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// `target/<kind>/<name>` (`$CARGO_TARGET_DIR`, else the `target` folder
/// this program runs from, else the temporary folder), emptied first: the
/// logs of a failed test stay until the next run.
pub fn log_dir(kind: &str, name: &str) -> Result<PathBuf> {
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::current_exe().ok().and_then(|p| {
                p.ancestors()
                    .find(|a| a.ends_with("target"))
                    .map(Path::to_path_buf)
            })
        })
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(kind).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// A running child in its own process group. Dropping the guard kills the
/// group with SIGKILL and reaps the child.
pub struct ChildGuard {
    /// Name for logs and error messages.
    pub name: String,
    /// The child; `None` once it has been killed and reaped.
    child: Option<Child>,
}

impl ChildGuard {
    /// Spawns `cmd` in a new process group, with stdout and stderr appended
    /// to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<ChildGuard> {
        use std::os::unix::process::CommandExt;
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening log file {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(ChildGuard {
            name: name.to_string(),
            child: Some(child),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sends `signal` to the child's process group.
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> Result<()> {
        let pid = self.pid().context("process already stopped")?;
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), signal)
            .with_context(|| format!("sending {signal} to {}", self.name))
    }

    /// Kills the process group with SIGKILL and reaps the child.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGCONT);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Asks the child to stop with SIGTERM and waits up to `timeout` before
    /// killing it.
    pub fn terminate(&mut self, timeout: Duration) {
        if let Some(child) = self.child.as_mut() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    self.child = None;
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.kill();
    }

    /// How the child exited; `None` while it runs (or once killed).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// True while the child has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}
