//! A real etcd (Debian's etcd-server) for labs and tests: one node or a
//! cluster, on free loopback ports, data on tmpfs when there is one (fsync
//! on a shared disk would dominate every latency we measure).

use super::process::{find_program, free_port, wait_for_tcp, ChildGuard};
use anyhow::{bail, Context, Result};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// `--initial-cluster-token` of every lab cluster (a restore keeps it).
const CLUSTER_TOKEN: &str = "lockstep-lab";

/// One etcd member process.
pub struct EtcdNode {
    pub name: String,
    pub client: SocketAddr,
    pub peer: SocketAddr,
    pub data_dir: PathBuf,
    pub guard: ChildGuard,
    log: PathBuf,
    initial_cluster: String,
}

/// A running etcd cluster. Dropping it kills every node and removes the
/// data directories. An attached one ([`attach`](Self::attach)) is someone
/// else's: no nodes here, nothing to kill.
pub struct EtcdCluster {
    pub nodes: Vec<EtcdNode>,
    /// Client URLs of an etcd this value does not own.
    attached: Vec<String>,
    /// Removed on drop.
    _data: Option<tempfile::TempDir>,
}

fn data_root() -> Option<&'static Path> {
    let shm = Path::new("/dev/shm");
    shm.is_dir().then_some(shm)
}

impl EtcdCluster {
    /// Starts `n` nodes and waits until every client port accepts.
    pub fn start(n: usize, log_dir: &Path) -> Result<EtcdCluster> {
        Self::start_on(n, IpAddr::from([127, 0, 0, 1]), log_dir, false)
    }

    /// [`start`](Self::start) with the client ports on `client_ip` (a lab
    /// network's etcd address); peers stay on loopback. `on_disk`: data in
    /// the system's temporary directory (fsync costs what it costs on this
    /// disk) instead of tmpfs.
    pub fn start_on(
        n: usize,
        client_ip: IpAddr,
        log_dir: &Path,
        on_disk: bool,
    ) -> Result<EtcdCluster> {
        let data = match data_root().filter(|_| !on_disk) {
            Some(root) => tempfile::Builder::new()
                .prefix("lockstep-etcd-")
                .tempdir_in(root),
            None => tempfile::Builder::new().prefix("lockstep-etcd-").tempdir(),
        }
        .context("creating etcd data directory")?;
        let mut specs = Vec::new();
        for i in 0..n {
            specs.push((format!("etcd{i}"), free_port()?, free_port()?));
        }
        let initial_cluster = specs
            .iter()
            .map(|(name, _, peer)| format!("{name}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::new();
        for (name, client, peer) in specs {
            let node = EtcdNode {
                data_dir: data.path().join(&name),
                log: log_dir.join(format!("{name}.log")),
                client: SocketAddr::new(client_ip, client),
                peer: SocketAddr::from(([127, 0, 0, 1], peer)),
                guard: spawn(
                    &name,
                    SocketAddr::new(client_ip, client),
                    peer,
                    &data.path().join(&name),
                    &initial_cluster,
                    &log_dir.join(format!("{name}.log")),
                )?,
                name,
                initial_cluster: initial_cluster.clone(),
            };
            nodes.push(node);
        }
        for node in &nodes {
            wait_for_tcp(node.client, Duration::from_secs(20)).with_context(|| {
                format!(
                    "etcd {} did not start; see {}",
                    node.name,
                    node.log.display()
                )
            })?;
        }
        Ok(EtcdCluster {
            nodes,
            attached: Vec::new(),
            _data: Some(data),
        })
    }

    /// An etcd started elsewhere (e.g. one etcd shared by many lab links),
    /// reached at `endpoints`: reads, `etcdctl` and health work; what acts
    /// on nodes (restart, restore, leader) sees none.
    pub fn attach(endpoints: Vec<String>) -> EtcdCluster {
        EtcdCluster {
            nodes: Vec::new(),
            attached: endpoints,
            _data: None,
        }
    }

    /// Waits until the cluster answers a linearizable read (it has a leader):
    /// open ports alone do not mean a fresh multi-node cluster has elected
    /// one, and a sidecar refuses to start without etcd.
    pub async fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_millis(500))
            .with_timeout(Duration::from_millis(500));
        loop {
            let attempt = async {
                let mut c =
                    etcd_client::Client::connect(self.endpoints(), Some(opts.clone())).await?;
                c.get("/lockstep-lab-health", None).await
            };
            let err = match attempt.await {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            if tokio::time::Instant::now() > deadline {
                return Err(err)
                    .with_context(|| format!("etcd cluster not serving reads within {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Client URLs of every node, for `etcd.endpoints`.
    pub fn endpoints(&self) -> Vec<String> {
        if !self.attached.is_empty() {
            return self.attached.clone();
        }
        self.nodes
            .iter()
            .map(|n| format!("http://{}", n.client))
            .collect()
    }

    /// The index of the etcd node that leads, asking every running node.
    pub async fn leader(&self, timeout: Duration) -> Result<usize> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut ids = Vec::new();
            let mut leader = 0;
            for (i, node) in self.nodes.iter().enumerate() {
                let endpoint = format!("http://{}", node.client);
                let opts = etcd_client::ConnectOptions::new()
                    .with_connect_timeout(Duration::from_millis(500))
                    .with_timeout(Duration::from_millis(500));
                let Ok(mut client) = etcd_client::Client::connect([endpoint], Some(opts)).await
                else {
                    continue;
                };
                if let Ok(status) = client.status().await {
                    if let Some(h) = status.header() {
                        ids.push((i, h.member_id()));
                    }
                    if status.leader() != 0 {
                        leader = status.leader();
                    }
                }
            }
            if let Some((i, _)) = ids.iter().find(|(_, id)| *id == leader) {
                return Ok(*i);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("no etcd leader found within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `etcdctl` against this cluster (API v3), for what the product never
    /// does itself: snapshots, raw puts and deletes of the link's keys.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(find_program("etcdctl")?);
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints().join(",")))
            .args(args);
        let out = super::process::run_to_end(&mut cmd)?;
        if !out.success() {
            bail!("etcdctl {args:?} failed: {}", out.stderr);
        }
        Ok(out.stdout)
    }

    /// Saves a snapshot of the cluster's data to `path`, from the first
    /// node that answers (a snapshot is taken from one endpoint; a killed
    /// node is skipped); returns that node's name.
    pub fn snapshot_save(&self, path: &Path) -> Result<String> {
        let mut errors = Vec::new();
        for node in &self.nodes {
            let mut cmd = Command::new(find_program("etcdctl")?);
            cmd.env("ETCDCTL_API", "3")
                .arg(format!("--endpoints={}", node.client))
                .args(["--dial-timeout=1s", "--command-timeout=5s"])
                .args(["snapshot", "save"])
                .arg(path);
            let out = super::process::run_to_end(&mut cmd)?;
            if out.success() {
                return Ok(node.name.clone());
            }
            errors.push(format!("{}: {}", node.name, out.stderr.trim()));
        }
        bail!(
            "etcdctl snapshot save failed on every node: {}",
            errors.join("; ")
        )
    }

    /// Stops every node (SIGKILL), waits until etcd has been down for
    /// `down` (the restore procedure keeps etcd down for longer than the
    /// members' lease TTL), restores `snapshot` into a new data directory
    /// of each node and starts them all again on the same ports: etcd as
    /// it was when the snapshot was taken.
    pub fn restore(&mut self, snapshot: &Path, down: Duration) -> Result<()> {
        let stopped = self.stop_all();
        self.restore_stopped(snapshot, stopped, down).map(|_| ())
    }

    /// Sends `signal` to every node (SIGSTOP freezes the cluster with its
    /// connections open; SIGCONT thaws it). Every node is tried; the first
    /// failure is returned.
    pub fn signal_all(&self, signal: nix::sys::signal::Signal) -> Result<()> {
        let mut first = Ok(());
        for node in &self.nodes {
            let sent = node
                .guard
                .signal(signal)
                .with_context(|| format!("etcd node {}", node.name));
            if first.is_ok() {
                first = sent;
            }
        }
        first
    }

    /// Kills every node; returns when (the start of the downtime).
    pub fn stop_all(&mut self) -> std::time::Instant {
        let stopped = std::time::Instant::now();
        for node in &mut self.nodes {
            node.guard.kill();
        }
        stopped
    }

    /// The second half of [`restore`](Self::restore), after
    /// [`stop_all`](Self::stop_all) at `stopped`: each node's data
    /// directory replaced by `snapshot` restored under its own name and
    /// peer URL (same cluster token and member list), then, once etcd has
    /// been down for `down`, every node started again. Returns once every
    /// client port accepts (see [`wait_healthy`](Self::wait_healthy) for a
    /// leader), with when the first node was started: etcd was down from
    /// `stopped` until then.
    pub fn restore_stopped(
        &mut self,
        snapshot: &Path,
        stopped: std::time::Instant,
        down: Duration,
    ) -> Result<std::time::Instant> {
        let etcdctl = find_program("etcdctl")?;
        for node in &mut self.nodes {
            // Whatever a heal restarted meanwhile goes down again.
            node.guard.kill();
            let restored = node.data_dir.with_extension("restored");
            if restored.exists() {
                std::fs::remove_dir_all(&restored)
                    .with_context(|| format!("removing {}", restored.display()))?;
            }
            let mut cmd = Command::new(&etcdctl);
            cmd.env("ETCDCTL_API", "3")
                .args(["snapshot", "restore"])
                .arg(snapshot)
                .arg("--data-dir")
                .arg(&restored)
                .args(["--name", &node.name])
                .args(["--initial-cluster", &node.initial_cluster])
                .args(["--initial-cluster-token", CLUSTER_TOKEN])
                .arg(format!(
                    "--initial-advertise-peer-urls=http://{}",
                    node.peer
                ));
            let out = super::process::run_to_end(&mut cmd)?;
            if !out.success() {
                bail!(
                    "etcdctl snapshot restore of {} for {} failed: {}",
                    snapshot.display(),
                    node.name,
                    out.stderr
                );
            }
            if node.data_dir.exists() {
                std::fs::remove_dir_all(&node.data_dir)
                    .with_context(|| format!("removing {}", node.data_dir.display()))?;
            }
            std::fs::rename(&restored, &node.data_dir)
                .with_context(|| format!("moving the restored data of {} in place", node.name))?;
        }
        if let Some(rest) = down.checked_sub(stopped.elapsed()) {
            std::thread::sleep(rest);
        }
        // All at once: one node alone has no quorum and would not answer.
        let started = std::time::Instant::now();
        for node in &mut self.nodes {
            node.guard = spawn_existing(node)?;
        }
        for node in &self.nodes {
            wait_for_tcp(node.client, Duration::from_secs(20)).with_context(|| {
                format!(
                    "restored etcd {} did not start; see {}",
                    node.name,
                    node.log.display()
                )
            })?;
        }
        Ok(started)
    }

    /// Restarts a killed node with its old data.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        let node = &mut self.nodes[i];
        node.guard.kill();
        node.guard = spawn_existing(node)?;
        wait_for_tcp(node.client, Duration::from_secs(20))
    }
}

/// Starts `node` again on its ports and data directory.
fn spawn_existing(node: &EtcdNode) -> Result<ChildGuard> {
    spawn(
        &node.name,
        node.client,
        node.peer.port(),
        &node.data_dir,
        &node.initial_cluster,
        &node.log,
    )
}

fn spawn(
    name: &str,
    client: SocketAddr,
    peer: u16,
    data_dir: &Path,
    initial_cluster: &str,
    log: &Path,
) -> Result<ChildGuard> {
    let mut cmd = Command::new(find_program("etcd")?);
    cmd.args([
        "--name",
        name,
        "--data-dir",
        &data_dir.to_string_lossy(),
        "--listen-client-urls",
        &format!("http://{client}"),
        "--advertise-client-urls",
        &format!("http://{client}"),
        "--listen-peer-urls",
        &format!("http://127.0.0.1:{peer}"),
        "--initial-advertise-peer-urls",
        &format!("http://127.0.0.1:{peer}"),
        "--initial-cluster",
        initial_cluster,
        "--initial-cluster-state",
        "new",
        "--initial-cluster-token",
        CLUSTER_TOKEN,
        "--logger",
        "zap",
        "--log-level",
        "warn",
    ]);
    ChildGuard::spawn(name, cmd, log)
}
