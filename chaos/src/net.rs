//! Network faults for chaos runs, on the lab's member namespaces
//! (`lab::netns`, labs started with `LabOptions::netns`).
//!
//! Each is a plain value (named in histories, drawn by the random mode);
//! injecting it yields the namespace's fault handle, which the scenario
//! context holds until the heal.

use anyhow::{Context, Result};
use lockstep_testkit::lab::Lab;
use lockstep_testkit::netns::{self, Impairment, Node};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetFault {
    /// A member's namespace loses etcd in both directions; it keeps its
    /// KMEs and its peers. Its sidecar must fence itself (LB blocked within
    /// TTL − margin + D of its last keep-alive).
    CutFromEtcd { member: usize },
    /// Every member's namespace loses etcd (the members keep each other):
    /// etcd is unreachable for the whole link. Without failsafe every
    /// member fences itself; with it they keep serving on grants.
    CutAllFromEtcd,
    /// Every member loses every other member (the leader's gRPC pushes);
    /// etcd stays reachable, so a switch can only go through etcd.
    CutPeers,
    /// Packets from member `from` to member `to` are dropped; the other
    /// direction passes.
    OneWay { from: usize, to: usize },
    /// A member's whole link waits `delay ± jitter` and loses `loss_pct`
    /// percent of its frames (what `tc netem` would do; this kernel has no
    /// netem, see `lab::netns`).
    Slow {
        member: usize,
        delay_ms: u64,
        jitter_ms: u64,
        loss_pct: u8,
        seed: u64,
    },
}

impl NetFault {
    pub fn kind(&self) -> &'static str {
        match self {
            NetFault::CutFromEtcd { .. } => "net-cut-etcd",
            NetFault::CutAllFromEtcd => "net-cut-etcd-all",
            NetFault::CutPeers => "net-cut-peers",
            NetFault::OneWay { .. } => "net-one-way",
            NetFault::Slow { .. } => "net-slow",
        }
    }

    /// What it hits, by member id.
    pub fn target(&self, id: impl Fn(usize) -> String) -> String {
        match self {
            NetFault::CutFromEtcd { member } => format!("{} <-> etcd", id(*member)),
            NetFault::CutAllFromEtcd => "every member <-> etcd".into(),
            NetFault::CutPeers => "every member <-> every member".into(),
            NetFault::OneWay { from, to } => format!("{} -> {}", id(*from), id(*to)),
            NetFault::Slow {
                member,
                delay_ms,
                jitter_ms,
                loss_pct,
                ..
            } => format!(
                "{} ({delay_ms}±{jitter_ms} ms, {loss_pct}% loss)",
                id(*member)
            ),
        }
    }

    /// Two network faults on the same thing at once would make their heals
    /// interfere (and say nothing new); both etcd cuts remove the same
    /// member-etcd rules.
    pub fn overlaps(&self, other: &NetFault) -> bool {
        use NetFault::{CutAllFromEtcd, CutFromEtcd};
        matches!(
            (self, other),
            (
                CutFromEtcd { .. } | CutAllFromEtcd,
                CutFromEtcd { .. } | CutAllFromEtcd
            )
        ) || std::mem::discriminant(self) == std::mem::discriminant(other)
    }

    pub fn inject(&self, lab: &Lab) -> Result<netns::NetFaultGuard> {
        let net = lab
            .net
            .as_ref()
            .context("a network fault needs a lab with network namespaces (LabOptions::netns)")?;
        match *self {
            NetFault::CutFromEtcd { member } => net.cut_from_etcd(member),
            NetFault::CutAllFromEtcd => net.cut_all_from_etcd(),
            NetFault::CutPeers => net.cut_all_peers(),
            NetFault::OneWay { from, to } => net.drop_one_way(Node::Member(from), Node::Member(to)),
            NetFault::Slow {
                member,
                delay_ms,
                jitter_ms,
                loss_pct,
                seed,
            } => net.slow_link(
                member,
                Impairment {
                    delay: Duration::from_millis(delay_ms),
                    jitter: Duration::from_millis(jitter_ms),
                    loss_percent: f64::from(loss_pct),
                    seed: Some(seed),
                },
            ),
        }
    }
}
