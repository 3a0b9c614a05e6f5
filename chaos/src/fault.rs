//! Faults a scenario injects into a [`Lab`] and heals again.
//!
//! **Extension point.** Every fault is a [`LabFault`] variant with a `kind`
//! (the name in histories and summaries), a target, an `inject` and a
//! `heal`. Network faults (namespace partitions, one-way loss, `tc netem`
//! from `testkit/src/netns/`) are added here as further variants; the
//! verdict needs nothing new, and scenarios use them through
//! [`super::scenario::Ctx::inject`] like any other fault.

use super::net::NetFault;
use anyhow::{bail, Context, Result};
use lockstep_core::{Role, Setup};
use lockstep_testkit::lab::Lab;
use lockstep_testkit::netns;
use nix::sys::signal::Signal;

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
    /// SIGKILL one KME; heal: start it again on the same ports.
    KmeKill { setup: Setup, role: Role },
    /// SIGSTOP one KME (connections hang); heal: SIGCONT.
    KmeStop { setup: Setup, role: Role },
    /// A network fault on the lab's member namespaces; heal: remove it.
    Net(NetFault),
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
            LabFault::KmeKill { .. } => "kme-kill",
            LabFault::KmeStop { .. } => "kme-stop",
            LabFault::Net(n) => n.kind(),
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
            LabFault::KmeKill { setup, role } | LabFault::KmeStop { setup, role } => {
                format!("kme-{setup}-{role}")
            }
            LabFault::Net(n) => n.target(|i| member_id(lab, i)),
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

    /// Injects the fault; a network fault returns its handle, which
    /// [`Self::heal`] needs back. Restarts block (they wait for the
    /// process to listen), so they run in `block_in_place`: call from a
    /// multi-thread runtime.
    pub async fn inject(&self, lab: &mut Lab) -> Result<Option<netns::NetFaultGuard>> {
        if let LabFault::Net(n) = self {
            return n.inject(lab).map(Some);
        }
        self.inject_process(lab).await.map(|()| None)
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
            LabFault::KmeStop { setup, role } => lab.kmes.get(*setup, role.as_str())?.freeze(),
            LabFault::Net(_) => bail!("a network fault is injected through LabFault::inject"),
        }
    }

    /// Heals the fault (`held`: what [`Self::inject`] returned); returns
    /// once the healed process runs again.
    pub async fn heal(&self, lab: &mut Lab, held: Option<netns::NetFaultGuard>) -> Result<()> {
        if let Some(h) = held {
            return h.heal();
        }
        match self {
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
            LabFault::KmeStop { setup, role } => lab.kmes.get(*setup, role.as_str())?.thaw(),
            LabFault::Net(n) => bail!("{} was not injected (no handle to heal)", n.kind()),
        }
    }
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
