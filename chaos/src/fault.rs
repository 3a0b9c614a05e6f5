//! Faults a scenario injects into a [`Lab`] and heals again.
//!
//! **Extension point.** Every fault is a [`LabFault`] variant with a `kind`
//! (the name in histories and summaries), a target, an `inject` and a
//! `heal`. Network faults (namespace partitions, one-way loss, `tc netem`
//! from `testkit/src/netns/`) are added here as further variants; the
//! verdict needs nothing new, and scenarios use them through
//! [`super::scenario::Ctx::inject`] like any other fault.
//!
//! Three faults attack what a member trusts rather than a process (issue
//! 9, DESIGN §3 "Trust only what etcd confirms"): a forged push
//! ([`LabFault::ForgedPush`]), the route key deleted
//! ([`LabFault::RouteDeleted`]) and etcd restored from an older snapshot
//! ([`LabFault::SnapshotRestore`]). The first two are instantaneous
//! ([`LabFault::instantaneous`]): injecting them is the whole fault, and
//! their heal only records that nothing is left to undo.

use super::history::PushAnswer;
use super::net::NetFault;
use anyhow::{anyhow, bail, Context, Result};
use futures::future::BoxFuture;
use lockstep::proto;
use lockstep::tls::TlsFiles;
use lockstep_core::{Phase, Role, Setup};
use lockstep_testkit::lab::Lab;
use lockstep_testkit::netns;
use nix::sys::signal::Signal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// One fault. Member and node indices are the lab's (`lab.sidecars[i]`
/// with `lab.lbs[i]`; `lab.etcd.nodes[i]`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LabFault {
    /// SIGKILL a member's sidecar; heal: start it again (it rejoins with
    /// its LB blocked). `leader` only names the fault in the history.
    SidecarKill { member: usize, leader: bool },
    /// SIGSTOP a member's sidecar (no answers, no keep-alives); heal:
    /// SIGCONT.
    SidecarStop { member: usize },
    /// Kill a member's HAProxy; heal: start it again (it comes up with
    /// both servers disabled; the sidecar re-applies its state).
    HaproxyRestart { member: usize },
    /// SIGKILL etcd nodes; heal: restart them on their data. `leader`
    /// marks the etcd leader; a majority of the nodes is a quorum loss.
    EtcdKill { nodes: Vec<usize>, leader: bool },
    /// SIGSTOP every etcd node: etcd unreachable for the whole link, with
    /// its connections open and hanging (what a stalled disk or a hung
    /// cluster looks like); heal: SIGCONT.
    EtcdFreeze,
    /// SIGKILL one KME; heal: start it again on the same ports.
    KmeKill { setup: Setup, role: Role },
    /// SIGSTOP one KME (connections hang); heal: SIGCONT.
    KmeStop { setup: Setup, role: Role },
    /// A network fault on the lab's member namespaces; heal: remove it.
    Net(NetFault),
    /// A `Peer.Serve` and then a `Peer.Drain` that no leader sent, over
    /// plain gRPC to one member, with the link's name (instantaneous).
    /// etcd's route never holds them, so the member must refuse both and
    /// change nothing; the answers are recorded and judged by the verdict.
    ForgedPush(ForgedPush),
    /// The link's `route` key deleted behind the leader's back (`etcdctl
    /// del <prefix>/<link>/route`, an operator's mistake; instantaneous).
    /// The leader must re-establish the route above every applied epoch.
    RouteDeleted,
    /// etcd restored from `snapshot` (saved earlier in the same run): every
    /// node stopped at inject; the heal restores the snapshot into each
    /// node's new data directory once etcd has been down for at least
    /// `down` (the documented procedure: longer than the lease TTL, so
    /// every member fences itself meanwhile) and starts them all again.
    SnapshotRestore { snapshot: PathBuf, down: Duration },
}

/// What a [`LabFault::ForgedPush`] sends: a Serve of `setup` (the setup
/// the link does not serve) at `serve_epoch` (current + 1000), then a
/// Drain at `drain_epoch` (huge), both under `token` (huge).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForgedPush {
    pub member: usize,
    pub serve_epoch: u64,
    pub drain_epoch: u64,
    pub token: i64,
    pub setup: Setup,
}

/// One forged push as sent, and its answer.
#[derive(Clone, Debug)]
pub struct ForgedAnswer {
    pub phase: Phase,
    pub epoch: u64,
    pub token: i64,
    pub setup: Setup,
    pub sent: Instant,
    pub answered: Instant,
    pub answer: PushAnswer,
}

/// How long a forged push may wait for its answer: a frozen member
/// answers after its thaw (random mode holds a SIGSTOP up to 5 s).
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// What an injected fault leaves for its heal, or for the history.
pub enum Injected {
    /// Nothing to hand back; `detail` goes into the history.
    Done { detail: Option<String> },
    /// A network fault's handle: the heal removes it.
    Net(netns::NetFaultGuard),
    /// Every etcd node stopped at `since`; the heal restores and starts
    /// them.
    EtcdDown { since: Instant },
    /// A forged push's answers, still to come (it does not wait for them:
    /// a frozen member answers only after its thaw).
    Pushes(BoxFuture<'static, Vec<ForgedAnswer>>),
}

/// What [`LabFault::heal`] needs back from [`LabFault::inject`].
pub enum Held {
    Net(netns::NetFaultGuard),
    EtcdDown { since: Instant },
}

impl LabFault {
    /// Its name in histories and summaries.
    pub fn kind(&self, lab: &Lab) -> &'static str {
        match self {
            LabFault::SidecarKill { leader: true, .. } => "leader-kill",
            LabFault::SidecarKill { .. } => "sidecar-kill",
            LabFault::SidecarStop { .. } => "sidecar-stop",
            LabFault::HaproxyRestart { .. } => "haproxy-restart",
            LabFault::EtcdKill { nodes, .. } if 2 * nodes.len() > lab.etcd.nodes.len() => {
                "etcd-quorum-loss"
            }
            LabFault::EtcdKill { leader: true, .. } => "etcd-leader-kill",
            LabFault::EtcdKill { .. } => "etcd-kill",
            LabFault::EtcdFreeze => "etcd-freeze",
            LabFault::KmeKill { .. } => "kme-kill",
            LabFault::KmeStop { .. } => "kme-stop",
            LabFault::Net(n) => n.kind(),
            LabFault::ForgedPush(_) => "forged-push",
            LabFault::RouteDeleted => "route-deleted",
            LabFault::SnapshotRestore { .. } => "snapshot-restore",
        }
    }

    /// What it hits, by name.
    pub fn target(&self, lab: &Lab) -> String {
        match self {
            LabFault::SidecarKill { member, .. }
            | LabFault::SidecarStop { member }
            | LabFault::HaproxyRestart { member } => member_id(lab, *member),
            LabFault::EtcdKill { nodes, .. } => nodes
                .iter()
                .map(|&i| {
                    lab.etcd
                        .nodes
                        .get(i)
                        .map_or_else(|| format!("etcd#{i}"), |n| n.name.clone())
                })
                .collect::<Vec<_>>()
                .join(","),
            LabFault::EtcdFreeze => "every etcd node".into(),
            LabFault::KmeKill { setup, role } | LabFault::KmeStop { setup, role } => {
                format!("kme-{setup}-{role}")
            }
            LabFault::Net(n) => n.target(|i| member_id(lab, i)),
            LabFault::ForgedPush(p) => format!(
                "{} (serve {} at epoch {}, drain at epoch {}, token {})",
                member_id(lab, p.member),
                p.setup,
                p.serve_epoch,
                p.drain_epoch,
                p.token
            ),
            LabFault::RouteDeleted => route_key(lab),
            LabFault::SnapshotRestore { snapshot, down } => format!(
                "every etcd node, from {} (down at least {} ms)",
                snapshot.file_name().map_or_else(
                    || snapshot.display().to_string(),
                    |f| f.to_string_lossy().into()
                ),
                down.as_millis()
            ),
        }
    }

    /// True for a fault that is over once injected (a forged push, a
    /// deleted key): [`super::scenario::Ctx::inject`] records its heal at
    /// once, so the verdict's liveness check runs from there.
    pub fn instantaneous(&self) -> bool {
        matches!(self, LabFault::ForgedPush(_) | LabFault::RouteDeleted)
    }

    /// True for a fault that loses the link's route (deleted, or rolled
    /// back by a restore): the leader must re-establish it above every
    /// epoch applied before.
    pub fn loses_route(&self) -> bool {
        matches!(
            self,
            LabFault::RouteDeleted | LabFault::SnapshotRestore { .. }
        )
    }

    /// True for a fault that takes etcd's quorum away while it is active
    /// (no write goes through, every member fences itself).
    pub fn takes_etcd_quorum(&self, etcd_nodes: usize) -> bool {
        match self {
            LabFault::EtcdKill { nodes, .. } => 2 * nodes.len() > etcd_nodes,
            LabFault::SnapshotRestore { .. } | LabFault::EtcdFreeze => true,
            _ => false,
        }
    }

    /// The LB whose sidecar this fault silences (for the dead-man's
    /// measurement).
    pub fn silenced_lb(&self, lab: &Lab) -> Option<String> {
        match self {
            LabFault::SidecarKill { member, .. } | LabFault::SidecarStop { member } => {
                Some(member_id(lab, *member))
            }
            _ => None,
        }
    }

    /// A heal that may fail for a while and should be tried again: a
    /// sidecar exits at start-up while etcd has no quorum, and its
    /// supervisor (systemd, Kubernetes) starts it again later.
    pub fn heal_retryable(&self) -> bool {
        matches!(self, LabFault::SidecarKill { .. })
    }

    /// True if `other` hits the same process (one fault per process at a
    /// time: a stopped sidecar is not also killed).
    pub fn overlaps(&self, other: &LabFault) -> bool {
        use LabFault::*;
        match (self, other) {
            // A restore stops and restarts every etcd node, a freeze stops
            // them all: no other etcd fault meanwhile.
            (
                SnapshotRestore { .. } | EtcdFreeze,
                EtcdKill { .. } | SnapshotRestore { .. } | EtcdFreeze,
            )
            | (EtcdKill { .. }, SnapshotRestore { .. } | EtcdFreeze) => true,
            (
                SidecarKill { member: a, .. } | SidecarStop { member: a },
                SidecarKill { member: b, .. } | SidecarStop { member: b },
            ) => a == b,
            (HaproxyRestart { member: a }, HaproxyRestart { member: b }) => a == b,
            (Net(a), Net(b)) => a.overlaps(b),
            // One etcd fault at a time keeps quorum arithmetic meaningful.
            (EtcdKill { .. }, EtcdKill { .. }) => true,
            (
                KmeKill {
                    setup: s1,
                    role: r1,
                }
                | KmeStop {
                    setup: s1,
                    role: r1,
                },
                KmeKill {
                    setup: s2,
                    role: r2,
                }
                | KmeStop {
                    setup: s2,
                    role: r2,
                },
            ) => s1 == s2 && r1 == r2,
            _ => false,
        }
    }

    /// Injects the fault; what it returns goes to [`Self::heal`] (a
    /// network fault's handle, etcd's downtime) or to the history (a
    /// forged push's answers). Restarts and `etcdctl` block, so they run
    /// in `block_in_place`: call from a multi-thread runtime.
    pub async fn inject(&self, lab: &mut Lab) -> Result<Injected> {
        match self {
            LabFault::Net(n) => n.inject(lab).map(Injected::Net),
            LabFault::ForgedPush(p) => {
                // Sent with a peer certificate of this link: what a
                // compromised or replaying peer could send. Truth must
                // hold even then (mutual TLS keeps everyone else out).
                let files = lab.tls(&lab.tester).cloned();
                let s = sidecar(lab, p.member)?;
                Ok(Injected::Pushes(Box::pin(p.clone().send(
                    s.endpoint(),
                    lab.link.clone(),
                    files,
                ))))
            }
            LabFault::RouteDeleted => {
                let key = route_key(lab);
                let out = tokio::task::block_in_place(|| lab.etcd.etcdctl(&["del", &key]))
                    .with_context(|| format!("deleting {key}"))?;
                Ok(Injected::Done {
                    detail: Some(format!("etcdctl del {key}: {} deleted", out.trim())),
                })
            }
            LabFault::SnapshotRestore { .. } => Ok(Injected::EtcdDown {
                since: lab.etcd.stop_all(),
            }),
            _ => self
                .inject_process(lab)
                .await
                .map(|()| Injected::Done { detail: None }),
        }
    }

    async fn inject_process(&self, lab: &mut Lab) -> Result<()> {
        match self {
            LabFault::SidecarKill { member, .. } => sidecar(lab, *member)?
                .guard
                .signal(Signal::SIGKILL)
                .context("killing a sidecar"),
            LabFault::SidecarStop { member } => sidecar(lab, *member)?
                .guard
                .signal(Signal::SIGSTOP)
                .context("freezing a sidecar"),
            LabFault::HaproxyRestart { member } => {
                haproxy(lab, *member)?.kill();
                Ok(())
            }
            LabFault::EtcdKill { nodes, .. } => {
                for &i in nodes {
                    let node = lab
                        .etcd
                        .nodes
                        .get_mut(i)
                        .with_context(|| format!("no etcd node {i}"))?;
                    node.guard.kill();
                }
                Ok(())
            }
            LabFault::KmeKill { setup, role } => {
                lab.kmes.get_mut(*setup, role.as_str())?.kill();
                Ok(())
            }
            LabFault::EtcdFreeze => lab.etcd.signal_all(Signal::SIGSTOP),
            LabFault::KmeStop { setup, role } => lab.kmes.get(*setup, role.as_str())?.freeze(),
            LabFault::Net(_)
            | LabFault::ForgedPush(_)
            | LabFault::RouteDeleted
            | LabFault::SnapshotRestore { .. } => {
                bail!("{self:?} is injected through LabFault::inject")
            }
        }
    }

    /// Heals the fault (`held`: what [`Self::inject`] returned); returns
    /// once the healed process runs again, with, for a restore, when the
    /// restored etcd nodes were started (the end of etcd's downtime).
    pub async fn heal(&self, lab: &mut Lab, held: Option<Held>) -> Result<Option<Instant>> {
        match (self, held) {
            (LabFault::SnapshotRestore { snapshot, down }, Some(Held::EtcdDown { since })) => {
                let started = tokio::task::block_in_place(|| {
                    lab.etcd.restore_stopped(snapshot, since, *down)
                })
                .with_context(|| format!("restoring etcd from {}", snapshot.display()))?;
                lab.etcd
                    .wait_healthy(Duration::from_secs(30))
                    .await
                    .context("the restored etcd cluster")?;
                return Ok(Some(started));
            }
            (_, Some(Held::Net(h))) => return h.heal().map(|()| None),
            (_, Some(Held::EtcdDown { .. })) => {
                bail!("{} holds etcd down but is no restore", self.kind(lab))
            }
            (_, None) => {}
        }
        let healed = match self {
            LabFault::SidecarKill { member, .. } => {
                let s = sidecar(lab, *member)?;
                tokio::task::block_in_place(|| s.restart()).context("restarting a sidecar")
            }
            LabFault::SidecarStop { member } => sidecar(lab, *member)?
                .guard
                .signal(Signal::SIGCONT)
                .context("thawing a sidecar"),
            LabFault::HaproxyRestart { member } => {
                let h = haproxy(lab, *member)?;
                tokio::task::block_in_place(|| h.restart()).context("restarting HAProxy")
            }
            LabFault::EtcdKill { nodes, .. } => {
                for &i in nodes {
                    tokio::task::block_in_place(|| lab.etcd.restart(i))
                        .with_context(|| format!("restarting etcd node {i}"))?;
                }
                Ok(())
            }
            LabFault::KmeKill { setup, role } => {
                let k = lab.kmes.get_mut(*setup, role.as_str())?;
                tokio::task::block_in_place(|| k.restart())
            }
            LabFault::EtcdFreeze => lab.etcd.signal_all(Signal::SIGCONT),
            LabFault::KmeStop { setup, role } => lab.kmes.get(*setup, role.as_str())?.thaw(),
            LabFault::Net(n) => bail!("{} was not injected (no handle to heal)", n.kind()),
            LabFault::SnapshotRestore { .. } => {
                bail!("snapshot-restore was not injected (etcd was never stopped)")
            }
            // Over once injected: nothing to undo.
            LabFault::ForgedPush(_) | LabFault::RouteDeleted => Ok(()),
        };
        healed.map(|()| None)
    }
}

impl ForgedPush {
    /// Sends the forged Serve, then the forged Drain, to `endpoint` (as the
    /// holder of `files`); every answer (or its absence) is returned, none
    /// is judged here.
    pub async fn send(
        self,
        endpoint: String,
        link: String,
        files: Option<TlsFiles>,
    ) -> Vec<ForgedAnswer> {
        let mut answers = Vec::new();
        for (phase, epoch) in [
            (Phase::Serve, self.serve_epoch),
            (Phase::Drain, self.drain_epoch),
        ] {
            let sent = Instant::now();
            let call = push(
                &endpoint,
                files.as_ref(),
                &link,
                phase,
                epoch,
                self.token,
                self.setup,
            );
            let answer = match tokio::time::timeout(PUSH_TIMEOUT, call).await {
                Err(_) => PushAnswer::Unanswered {
                    error: format!("no answer within {PUSH_TIMEOUT:?}"),
                },
                Ok(Err(e)) => PushAnswer::Unanswered {
                    error: format!("{e:#}"),
                },
                Ok(Ok(Ok(reply))) => PushAnswer::Applied {
                    applied: format!("{:?}", reply.applied),
                },
                Ok(Ok(Err(status))) => PushAnswer::Refused {
                    code: format!("{:?}", status.code()),
                    message: status.message().to_string(),
                },
            };
            answers.push(ForgedAnswer {
                phase,
                epoch,
                token: self.token,
                setup: self.setup,
                sent,
                answered: Instant::now(),
                answer,
            });
        }
        answers
    }
}

/// One Hold, Drain or Serve as a peer sends it: `Err` when no gRPC answer
/// came (connection), `Ok(Err)` for a status.
async fn push(
    endpoint: &str,
    files: Option<&TlsFiles>,
    link: &str,
    phase: Phase,
    epoch: u64,
    token: i64,
    setup: Setup,
) -> Result<std::result::Result<proto::ApplyReply, tonic::Status>> {
    let channel = lockstep::tls::client::connect(endpoint, files, Duration::from_secs(2))
        .await
        .map_err(|e| anyhow!("connecting to {endpoint}: {e}"))?;
    let mut client = proto::peer_client::PeerClient::new(channel);
    let setup = match setup {
        Setup::Hot => proto::Setup::Hot,
        Setup::Warm => proto::Setup::Warm,
    } as i32;
    let link = link.to_string();
    let reply = match phase {
        Phase::Hold => {
            client
                .hold(proto::DrainRequest {
                    link,
                    epoch,
                    token,
                    setup,
                })
                .await
        }
        Phase::Serve => {
            client
                .serve(proto::ServeRequest {
                    link,
                    epoch,
                    token,
                    setup,
                })
                .await
        }
        Phase::Drain => {
            client
                .drain(proto::DrainRequest {
                    link,
                    epoch,
                    token,
                    setup,
                })
                .await
        }
    };
    Ok(reply.map(tonic::Response::into_inner))
}

/// The etcd key of the link's route (`<prefix>/<link>/route`).
pub fn route_key(lab: &Lab) -> String {
    let prefix = lab
        .sidecars
        .first()
        .map_or("/lockstep", |s| s.spec.prefix.as_str());
    format!("{}/{}/route", prefix.trim_end_matches('/'), lab.link)
}

fn member_id(lab: &Lab, i: usize) -> String {
    lab.sidecars
        .get(i)
        .map_or_else(|| format!("member#{i}"), |s| s.spec.member_id.clone())
}

fn sidecar(lab: &mut Lab, i: usize) -> Result<&mut lockstep_testkit::lab::sidecar::SidecarProcess> {
    let n = lab.sidecars.len();
    match lab.sidecars.get_mut(i) {
        Some(s) => Ok(s),
        None => bail!("no member {i} (the lab has {n})"),
    }
}

fn haproxy(lab: &mut Lab, i: usize) -> Result<&mut lockstep_testkit::lab::haproxy::HaproxyProcess> {
    let n = lab.lbs.len();
    match lab.lbs.get_mut(i) {
        Some(h) => Ok(h),
        None => bail!("no LB {i} (the lab has {n})"),
    }
}
