//! A whole link on one machine: etcd, four mock KMEs (hot/warm × Alice/Bob),
//! one HAProxy per member and a `lockstep run` sidecar beside each. Used by
//! the local lab, the integration tests and the benchmark.

use super::etcd::EtcdCluster;
use super::haproxy::{HaproxyInputs, HaproxyProcess};
use super::kme::LinkKmes;
use super::sidecar::{SidecarProcess, SidecarSpec, SidecarTls, Timing};
use crate::netns::LabNet;
use crate::pki::{member_uri, roles_toml, Pki};
use crate::traffic::{Traffic, TrafficConfig};
use anyhow::{bail, Context, Result};
use lockstep::lb::LoadBalancer;
use lockstep::proto::peer_client::PeerClient;
use lockstep::proto::{self, admin_client::AdminClient};
use lockstep::store::Store;
use lockstep::tls::TlsFiles;
use lockstep_core::{LbTarget, Setup};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

#[derive(Clone, Debug)]
pub struct LabOptions {
    /// Members (each an HAProxy + sidecar) per role.
    pub members_per_role: usize,
    pub etcd_nodes: usize,
    /// etcd's data on disk rather than tmpfs (benchmarks of the real cost).
    pub etcd_on_disk: bool,
    pub timing: Timing,
    /// Probe the KMEs (health shows "unknown" without).
    pub probes: bool,
    /// Extra environment for every sidecar (e.g. FAILPOINTS).
    pub sidecar_env: Vec<(String, String)>,
    /// Extra environment for one member's sidecar, by member id (e.g.
    /// `bob-0`), set after `sidecar_env`: a failpoint on one member only.
    pub member_env: BTreeMap<String, Vec<(String, String)>>,
    /// Runs each member (sidecar and HAProxy) in its own network namespace
    /// (see [`LabNet`]), so network faults can be injected; etcd, the KMEs
    /// and the key-pair traffic stay in the root namespace.
    pub netns: bool,
    /// Plaintext gRPC (`grpc.insecure = true`); off: mutual TLS with the
    /// lab's own CA, as in production.
    pub insecure_grpc: bool,
    /// How often sidecars re-read their certificate files.
    pub tls_reload: Duration,
    /// Appended to every sidecar's config (e.g. `[[notify.webhook]]`).
    pub sidecar_toml: String,
    /// Use the etcd at these client URLs instead of starting one (many
    /// links on one etcd); `etcd_nodes` and `etcd_on_disk` do not apply.
    pub attach_etcd: Option<Vec<String>>,
    /// The LB's checks on a listener of their own (`http.check_listen`),
    /// as the Kubernetes deployment runs them.
    pub check_listener: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            members_per_role: 1,
            etcd_nodes: 1,
            etcd_on_disk: false,
            timing: Timing::default(),
            probes: true,
            sidecar_env: Vec::new(),
            member_env: BTreeMap::new(),
            netns: false,
            insecure_grpc: false,
            tls_reload: Duration::from_millis(500),
            sidecar_toml: String::new(),
            attach_etcd: None,
            check_listener: false,
        }
    }
}

pub const ALICE_SAE: &str = "SAE_ALICE";
pub const BOB_SAE: &str = "SAE_BOB";

pub struct Lab {
    pub link: String,
    pub options: LabOptions,
    /// Logs and configs of every process.
    pub dir: PathBuf,
    pub etcd: EtcdCluster,
    pub kmes: LinkKmes,
    /// One per member, in the same order as `sidecars`.
    pub lbs: Vec<HaproxyProcess>,
    pub sidecars: Vec<SidecarProcess>,
    /// The lab's CA and certificates (`<dir>/tls`).
    pub pki: Pki,
    /// An operator's certificate (switchover, failover, pause, resume).
    pub operator: TlsFiles,
    /// A viewer's certificate (status, history).
    pub viewer: TlsFiles,
    /// A peer certificate of this link that no sidecar uses (test pushes).
    pub tester: TlsFiles,
    /// The members' namespaces with `LabOptions::netns`; last, so it is
    /// removed after every process in it was killed.
    pub net: Option<LabNet>,
}

/// `target/lab/<name>`, emptied first: logs stay after a failed test.
pub fn lab_dir(name: &str) -> Result<PathBuf> {
    super::process::log_dir("lab", name)
}

impl Lab {
    /// Starts everything and waits until every LB serves hot.
    pub async fn start(name: &str, options: LabOptions) -> Result<Lab> {
        let dir = lab_dir(name)?;
        let link = format!("lab-{name}");
        let net = if options.netns {
            Some(LabNet::create(name, options.members_per_role * 2)?)
        } else {
            None
        };
        let (etcd, kmes) = match (&net, &options.attach_etcd) {
            (Some(_), Some(_)) => {
                bail!("a lab in network namespaces starts its own etcd (attach_etcd is for loopback labs)")
            }
            (None, Some(endpoints)) => (
                EtcdCluster::attach(endpoints.clone()),
                LinkKmes::spawn(&dir, ALICE_SAE, BOB_SAE)?,
            ),
            (Some(n), None) => (
                EtcdCluster::start_on(
                    options.etcd_nodes,
                    n.etcd_ip().into(),
                    &dir,
                    options.etcd_on_disk,
                )?,
                LinkKmes::spawn_on(n.host_ip().into(), &dir, ALICE_SAE, BOB_SAE)?,
            ),
            (None, None) => (
                EtcdCluster::start_on(
                    options.etcd_nodes,
                    std::net::IpAddr::from([127, 0, 0, 1]),
                    &dir,
                    options.etcd_on_disk,
                )?,
                LinkKmes::spawn(&dir, ALICE_SAE, BOB_SAE)?,
            ),
        };
        etcd.wait_healthy(Duration::from_secs(20)).await?;
        let pki = Pki::create(&dir.join("tls"), &format!("{link} lab CA"))?;
        let localhost = IpAddr::from([127, 0, 0, 1]);
        let operator = pki.issue("operator", crate::pki::OPERATOR, &[])?;
        let viewer = pki.issue("viewer", crate::pki::VIEWER, &[])?;
        let tester = pki.issue("tester", &member_uri(&link, "tester"), &[])?;
        let mut lbs = Vec::new();
        let mut sidecars = Vec::new();
        for i in 0..options.members_per_role * 2 {
            let role = if i % 2 == 0 { "alice" } else { "bob" };
            let id = format!("{role}-{}", i / 2);
            let mut spec = SidecarSpec::new(&link, &id, role, etcd.endpoints())?;
            spec.timing = options.timing.clone();
            spec.env = options.sidecar_env.clone();
            spec.extra_toml = options.sidecar_toml.clone();
            if let Some(extra) = options.member_env.get(&id) {
                spec.env.extend(extra.iter().cloned());
            }
            let (hot, warm) = (kmes.addr(Setup::Hot, role)?, kmes.addr(Setup::Warm, role)?);
            if options.check_listener {
                spec.check = Some(SocketAddr::from((
                    spec.http.ip(),
                    super::process::free_port()?,
                )));
            }
            let mut inputs = HaproxyInputs::new(&id, hot, warm, spec.check.unwrap_or(spec.http))
                .with_timing(&options.timing);
            if let Some(n) = &net {
                // Sidecar and HAProxy share the member's namespace: the
                // health checks (the dead-man's switch) stay on its
                // loopback, as in one pod, and no fault can cut them.
                let m = n.member(i)?;
                spec.grpc.set_ip(m.ip.into());
                spec.http.set_ip(m.ip.into());
                spec.status.set_ip(m.ip.into());
                if let Some(c) = &mut spec.check {
                    c.set_ip(m.ip.into());
                }
                spec.netns = Some(m.netns_path());
                inputs.check_addr = spec.check.unwrap_or(spec.http);
                inputs.frontend_ip = m.ip.into();
                inputs.netns = Some(m.netns_path());
            }
            if !options.insecure_grpc {
                let files =
                    pki.issue(&id, &member_uri(&link, &id), &[localhost, spec.grpc.ip()])?;
                spec.tls = Some(SidecarTls {
                    files,
                    roles_toml: roles_toml(&link),
                    reload_interval: options.tls_reload,
                });
            }
            let lb = HaproxyProcess::spawn(inputs, &dir)?;
            spec.haproxy_socket = lb.stats_socket.clone();
            if options.probes {
                spec.probe_hot = Some(format!("http://{hot}"));
                spec.probe_warm = Some(format!("http://{warm}"));
                // Each end asks its KME about the peer SAE.
                spec.sae_id = if role == "alice" { BOB_SAE } else { ALICE_SAE }.into();
            }
            sidecars.push(SidecarProcess::spawn(spec, &dir)?);
            lbs.push(lb);
        }
        let lab = Lab {
            link,
            options,
            dir,
            etcd,
            kmes,
            lbs,
            sidecars,
            pki,
            operator,
            viewer,
            tester,
            net,
        };
        lab.wait_serving(Setup::Hot, Duration::from_secs(30))
            .await
            .with_context(|| format!("lab did not settle on hot; logs in {}", lab.dir.display()))?;
        Ok(lab)
    }

    pub fn alice_lb(&self) -> std::net::SocketAddr {
        self.lbs[0].frontend
    }

    pub fn bob_lb(&self) -> std::net::SocketAddr {
        self.lbs[1].frontend
    }

    /// `pairs` SAE pairs with a transit `gap` ([`crate::transit`]) through
    /// the first LB of each end, with the lab's SAE ids.
    pub fn transit_config(&self, pairs: usize, gap: Duration) -> crate::transit::TransitConfig {
        crate::transit::TransitConfig::new(
            self.alice_lb(),
            self.bob_lb(),
            ALICE_SAE,
            BOB_SAE,
            pairs,
            gap,
        )
    }

    pub fn traffic_config(&self) -> TrafficConfig {
        // Every LB of an end, as SAEs behind a VIP reach them.
        let mut config = TrafficConfig::new(self.alice_lb(), self.bob_lb(), ALICE_SAE, BOB_SAE);
        let end = |first: usize| -> Vec<std::net::SocketAddr> {
            self.lbs
                .iter()
                .skip(first + 2)
                .step_by(2)
                .map(|lb| lb.frontend)
                .collect()
        };
        config.alice_more = end(0);
        config.bob_more = end(1);
        config
    }

    pub fn sidecar_index(&self, pred: impl Fn(&str) -> bool) -> Option<usize> {
        self.sidecars.iter().position(|s| pred(&s.spec.member_id))
    }

    /// `files`, unless the lab runs plaintext gRPC.
    pub fn tls<'a>(&self, files: &'a TlsFiles) -> Option<&'a TlsFiles> {
        (!self.options.insecure_grpc).then_some(files)
    }

    /// Member `i`'s Admin service, as the lab's operator.
    pub async fn admin(&self, i: usize) -> Result<AdminClient<Channel>> {
        self.sidecars[i].admin_as(self.tls(&self.operator)).await
    }

    /// Member `i`'s Peer service, as a peer of this link.
    pub async fn peer(&self, i: usize) -> Result<PeerClient<Channel>> {
        self.peer_as(i, self.tls(&self.tester)).await
    }

    /// Member `i`'s Peer service as the holder of `files`.
    pub async fn peer_as(&self, i: usize, files: Option<&TlsFiles>) -> Result<PeerClient<Channel>> {
        let endpoint = self.sidecars[i].endpoint();
        let channel = lockstep::tls::client::connect(&endpoint, files, Duration::from_secs(2))
            .await
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("connecting to {endpoint}"))?;
        Ok(PeerClient::new(channel))
    }

    /// The environment that lets `lockstep` (the CLI) reach member `i` as
    /// the lab's operator: `LOCKSTEP_ENDPOINT`, `LOCKSTEP_CA`,
    /// `LOCKSTEP_CERT`, `LOCKSTEP_KEY`.
    pub fn cli_env(&self, i: usize) -> Vec<(String, String)> {
        let mut env = vec![("LOCKSTEP_ENDPOINT".to_string(), self.sidecars[i].endpoint())];
        if let Some(f) = self.tls(&self.operator) {
            for (k, v) in [
                ("LOCKSTEP_CA", &f.ca),
                ("LOCKSTEP_CERT", &f.cert),
                ("LOCKSTEP_KEY", &f.key),
            ] {
                env.push((k.to_string(), v.to_string_lossy().into_owned()));
            }
        }
        env
    }

    /// Runs the CLI (`lockstep <args>`) against member `i` as the lab's
    /// operator, without a terminal, to its end.
    pub fn cli(&self, i: usize, args: &[&str]) -> Result<super::process::Finished> {
        super::process::run_to_end(
            std::process::Command::new(super::process::workspace_program("lockstep")?)
                .envs(self.cli_env(i))
                .args(args),
        )
    }

    /// The index of the member whose sidecar holds the leader key, the
    /// first seen within `timeout` other than `not` (a leader just stopped).
    pub async fn leader_index(&self, not: Option<usize>, timeout: Duration) -> Result<usize> {
        let store = self.store().await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(snap) = store.snapshot().await {
                if let Some((id, _)) = snap.leader {
                    match self.sidecar_index(|m| m == id) {
                        Some(i) if Some(i) != not => return Ok(i),
                        Some(_) => {}
                        None => bail!("the leader {id} is no member of this lab"),
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("no leader within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn store(&self) -> Result<Store> {
        Ok(Store::connect(
            &self.etcd.endpoints(),
            "/lockstep",
            &self.link,
            Duration::from_secs(2),
            Duration::from_secs(2),
        )
        .await?)
    }

    /// Waits until every live member serves `setup` (from etcd's records).
    pub async fn wait_serving(&self, setup: Setup, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        let store = loop {
            match self.store().await {
                Ok(s) => break s,
                Err(e) if start.elapsed() > timeout => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        loop {
            if let Ok(snap) = store.snapshot().await {
                let on_setup = snap.route.as_ref().is_some_and(|(r, _)| r.setup == setup);
                if on_setup && snap.settled() && snap.members.len() == self.sidecars.len() {
                    return Ok(start.elapsed());
                }
            }
            if start.elapsed() > timeout {
                bail!(
                    "link not serving {setup} on all {} members within {timeout:?}",
                    self.sidecars.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the leader's aggregated health of `setup` is `healthy`.
    pub async fn wait_health(&self, setup: Setup, healthy: bool, timeout: Duration) -> Result<()> {
        let store = self.store().await?;
        let start = Instant::now();
        loop {
            let snap = store.snapshot().await?;
            let h = lockstep_core::health::aggregate(
                snap.members
                    .iter()
                    .map(|m| (m.record.role, &m.record.health)),
                setup,
            );
            if h.healthy() == healthy {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!("{setup} health did not become {healthy} within {timeout:?}: {h:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Puts `role`'s KME of `setup` into fault `mode` (`"down"`, `"ok"`
    /// ...), then waits up to 10 s until the members' aggregated health of
    /// `setup` is `healthy`: a fault the link has seen.
    pub async fn set_kme_fault_and_wait(
        &self,
        setup: Setup,
        role: &str,
        mode: &str,
        healthy: bool,
    ) -> Result<()> {
        self.kmes.set_fault(setup, role, mode, 0).await?;
        self.wait_health(setup, healthy, Duration::from_secs(10))
            .await
    }

    /// Starts key pairs through Alice's and Bob's LBs and returns once
    /// `matched` pairs have matched (within 10 s): traffic flows before a
    /// test acts.
    pub async fn start_traffic(&self, matched: u64) -> Result<Traffic> {
        let traffic = Traffic::start(self.traffic_config());
        traffic
            .wait_for_matched(matched, Duration::from_secs(10))
            .await?;
        Ok(traffic)
    }

    /// Waits until LB `i` routes to `target` (read from HAProxy); returns
    /// how long it took.
    pub async fn wait_lb(&self, i: usize, target: LbTarget, timeout: Duration) -> Result<Duration> {
        let lb = self.lbs[i].adapter();
        let start = Instant::now();
        loop {
            if lb.observe().await.map(|o| o.target).ok() == Some(target) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!("LB {i} did not reach {target} within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until every LB routes to `target` (read from HAProxy); returns
    /// how long it took.
    pub async fn wait_all_lbs(&self, target: LbTarget, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let mut all = true;
            for lb in &self.lbs {
                if lb.adapter().observe().await.map(|o| o.target).ok() != Some(target) {
                    all = false;
                }
            }
            if all {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!("LBs not all at {target} within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The link's status, from member 0's Admin service.
    pub async fn status(&self) -> Result<proto::StatusReply> {
        Ok(self
            .admin(0)
            .await?
            .status(proto::StatusRequest {})
            .await?
            .into_inner())
    }

    /// The newest `limit` transitions, from member 0's Admin service.
    pub async fn history(&self, limit: u32) -> Result<proto::HistoryReply> {
        Ok(self
            .admin(0)
            .await?
            .history(proto::HistoryRequest {
                limit,
                ..Default::default()
            })
            .await?
            .into_inner())
    }
}
