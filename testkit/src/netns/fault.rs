//! Network faults between a lab's members: one-way drops and loss (`tc`
//! filters into the drop class), cuts, and slow links (a member's traffic
//! detoured through the userspace wire). Each is held by a
//! [`NetFaultGuard`]; dropping it heals the fault.

use super::cmd::{ip, tc};
use super::filter::{add_filter, prepare_drop_class};
use super::wire::{open_tap, Impairment, Wire};
use super::{Inner, LabNet, MemberNet, Node, State, NS_DEV, PREFIX};
use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;
use std::sync::Arc;
use tracing::{info, warn};

/// Where a filter sits: on the member's own `lan0` (traffic leaving it) or
/// on its root-side veth (traffic entering it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    Ns,
    Root,
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Match {
    Src(Ipv4Addr),
    Dst(Ipv4Addr),
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Rule {
    pub(super) member: usize,
    pub(super) side: Side,
    pub(super) matcher: Match,
    pub(super) percent: f64,
}

/// A member's traffic rerouted through the userspace wire.
pub(super) struct Detour {
    pub(super) ns_tap: String,
    pub(super) root_tap: String,
    /// Stopped (and the taps removed) when the detour is dropped.
    _wire: Wire,
}

impl LabNet {
    /// Drops every packet from `from` to `to`; the other direction passes.
    pub fn drop_one_way(&self, from: Node, to: Node) -> Result<NetFaultGuard> {
        self.one_way_loss(from, to, 100.0)
    }

    /// Drops `percent` of the packets from `from` to `to` (at random); the
    /// other direction passes.
    pub fn one_way_loss(&self, from: Node, to: Node, percent: f64) -> Result<NetFaultGuard> {
        let what = format!("{percent}% loss {from} -> {to}");
        let rule = self.rule(from, to, percent)?;
        self.install(what, &[rule])
    }

    /// Cuts `a` and `b` apart in both directions.
    pub fn cut(&self, a: Node, b: Node) -> Result<NetFaultGuard> {
        let rules = [self.rule(a, b, 100.0)?, self.rule(b, a, 100.0)?];
        self.install(format!("cut {a} <-> {b}"), &rules)
    }

    /// Cuts member `i` from etcd (both directions); its LB keeps its KMEs
    /// and the key-pair traffic, its sidecar keeps its peers.
    pub fn cut_from_etcd(&self, i: usize) -> Result<NetFaultGuard> {
        let mut fault = self.cut(Node::Member(i), Node::Etcd)?;
        fault.what = format!("member {i} cut from etcd");
        Ok(fault)
    }

    /// Cuts every member from etcd (both directions): etcd is unreachable
    /// for the whole link while the members keep each other, their KMEs
    /// and the key-pair traffic.
    pub fn cut_all_from_etcd(&self) -> Result<NetFaultGuard> {
        let mut rules = Vec::new();
        for i in 0..self.inner.members.len() {
            rules.push(self.rule(Node::Member(i), Node::Etcd, 100.0)?);
            rules.push(self.rule(Node::Etcd, Node::Member(i), 100.0)?);
        }
        self.install("every member cut from etcd".into(), &rules)
    }

    /// Cuts every pair of the given members apart (both directions), so
    /// their sidecars cannot reach each other; etcd, the KMEs and the
    /// key-pair traffic stay reachable.
    pub fn cut_members(&self, members: &[usize]) -> Result<NetFaultGuard> {
        let mut rules = Vec::new();
        for (k, &a) in members.iter().enumerate() {
            for &b in &members[k + 1..] {
                rules.push(self.rule(Node::Member(a), Node::Member(b), 100.0)?);
                rules.push(self.rule(Node::Member(b), Node::Member(a), 100.0)?);
            }
        }
        self.install(format!("members {members:?} cut from each other"), &rules)
    }

    /// Cuts every member from every other one (not from etcd).
    pub fn cut_all_peers(&self) -> Result<NetFaultGuard> {
        let all: Vec<usize> = (0..self.inner.members.len()).collect();
        let mut fault = self.cut_members(&all)?;
        fault.what = "members cut from each other".into();
        Ok(fault)
    }

    /// Makes member `i`'s link slow and lossy in both directions (all its
    /// traffic: etcd, peers, KMEs, key pairs). Faults already on the member,
    /// and ones added later, apply on the rerouted path too.
    pub fn slow_link(&self, i: usize, imp: Impairment) -> Result<NetFaultGuard> {
        if !(0.0..=100.0).contains(&imp.loss_percent) {
            bail!("loss {}% is not a percentage", imp.loss_percent);
        }
        let inner = &self.inner;
        let m = self.member(i)?.clone();
        let mut state = inner.lock();
        if state.torn_down {
            bail!("the lab network is gone");
        }
        if state.detours[i].is_some() {
            bail!("member {i} already has a slow link; heal it first");
        }
        let detour = self
            .make_detour(i, &m, imp, &state)
            .with_context(|| format!("slowing member {i}'s link"))?;
        state.detours[i] = Some(detour);
        drop(state);
        let what = format!(
            "member {i} link slow: delay {:?} ± {:?}, loss {}%",
            imp.delay, imp.jitter, imp.loss_percent
        );
        info!(%what, "fault on");
        Ok(NetFaultGuard {
            net: inner.clone(),
            what,
            prefs: Vec::new(),
            detour: Some(i),
            healed: false,
        })
    }

    fn make_detour(
        &self,
        i: usize,
        m: &MemberNet,
        imp: Impairment,
        state: &State,
    ) -> Result<Detour> {
        let slot = self.inner.slot;
        let ns = m.netns.as_str();
        let ns_tap = format!("{PREFIX}{slot}t{i}");
        let root_tap = format!("{PREFIX}{slot}p{i}");
        // Both taps are made here (root namespace) and vanish when their
        // file is closed; the member's one then moves into its namespace.
        let ns_file = open_tap(&ns_tap)?;
        let root_file = open_tap(&root_tap)?;
        let mac = ip(&["-n", ns, "-br", "link", "show", NS_DEV])?
            .split_whitespace()
            .nth(2)
            .map(str::to_string)
            .with_context(|| format!("reading {NS_DEV}'s MAC in {ns}"))?;
        ip(&["link", "set", &ns_tap, "netns", ns])?;
        // Same MAC as lan0, so neighbours' ARP entries stay right.
        ip(&["-n", ns, "link", "set", &ns_tap, "address", &mac, "up"])?;
        ip(&["link", "set", &root_tap, "master", &self.inner.bridge, "up"])?;
        prepare_drop_class(Some(ns), &ns_tap)?;
        prepare_drop_class(None, &root_tap)?;
        for (pref, rule) in state.rules.iter().filter(|(_, r)| r.member == i) {
            let (netns, dev) = match rule.side {
                Side::Ns => (Some(ns), ns_tap.as_str()),
                Side::Root => (None, root_tap.as_str()),
            };
            add_filter(netns, dev, *pref, rule)?;
        }
        let wire = Wire::start(&format!("{PREFIX}{slot}/{i}"), ns_file, root_file, imp)?;
        // Reroute: the bridge no longer reaches lan0 (so frames for the
        // member's MAC go out the root tap), and the member sends through
        // its tap.
        let reroute = ip(&["link", "set", &m.host_dev, "down"]).and_then(|_| {
            ip(&[
                "-n",
                ns,
                "route",
                "replace",
                &self.subnet(),
                "dev",
                &ns_tap,
                "src",
                &m.ip.to_string(),
            ])
        });
        if let Err(e) = reroute {
            let _ = ip(&["link", "set", &m.host_dev, "up"]);
            return Err(e);
        }
        Ok(Detour {
            ns_tap,
            root_tap,
            _wire: wire,
        })
    }

    fn rule(&self, from: Node, to: Node, percent: f64) -> Result<Rule> {
        if !(percent > 0.0 && percent <= 100.0) {
            bail!("loss {percent}% must be above 0 and at most 100");
        }
        if from == to {
            bail!("{from} cannot be cut from itself");
        }
        let (from_ip, to_ip) = (self.ip(from)?, self.ip(to)?);
        Ok(match (from, to) {
            // Lost on the way into the receiving member.
            (_, Node::Member(j)) => Rule {
                member: j,
                side: Side::Root,
                matcher: Match::Src(from_ip),
                percent,
            },
            // Into the root namespace nothing passes a qdisc after the
            // sender's link, so the sender's lan0 drops it.
            (Node::Member(i), _) => Rule {
                member: i,
                side: Side::Ns,
                matcher: Match::Dst(to_ip),
                percent,
            },
            _ => bail!("{from} -> {to} stays inside the root namespace; cut a member instead"),
        })
    }

    fn install(&self, what: String, rules: &[Rule]) -> Result<NetFaultGuard> {
        let inner = &self.inner;
        let mut state = inner.lock();
        if state.torn_down {
            bail!("the lab network is gone");
        }
        let mut fault = NetFaultGuard {
            net: inner.clone(),
            what,
            prefs: Vec::new(),
            detour: None,
            healed: false,
        };
        for rule in rules {
            let pref = state.next_pref;
            state.next_pref += 1;
            // Recorded before it is added, so a half-added rule is removed
            // with the fault.
            state.rules.insert(pref, *rule);
            fault.prefs.push(pref);
            for (netns, dev) in inner.devices(&state, rule) {
                if let Err(e) = add_filter(netns.as_deref(), &dev, pref, rule) {
                    drop(state);
                    return Err(e.context(format!("adding fault {}", fault.what)));
                }
            }
        }
        drop(state);
        info!(what = %fault.what, "fault on");
        Ok(fault)
    }
}

impl Inner {
    /// The devices (namespace, name) a rule currently sits on.
    fn devices(&self, state: &State, rule: &Rule) -> Vec<(Option<String>, String)> {
        let Some(m) = self.members.get(rule.member) else {
            return Vec::new();
        };
        let detour = state.detours.get(rule.member).and_then(Option::as_ref);
        match rule.side {
            Side::Ns => std::iter::once(NS_DEV.to_string())
                .chain(detour.map(|d| d.ns_tap.clone()))
                .map(|dev| (Some(m.netns.clone()), dev))
                .collect(),
            Side::Root => std::iter::once(m.host_dev.clone())
                .chain(detour.map(|d| d.root_tap.clone()))
                .map(|dev| (None, dev))
                .collect(),
        }
    }

    fn remove_rules(&self, prefs: &[u32]) -> Result<()> {
        let mut state = self.lock();
        if state.torn_down {
            return Ok(());
        }
        let mut first_err = None;
        for pref in prefs {
            let Some(rule) = state.rules.remove(pref) else {
                continue;
            };
            for (netns, dev) in self.devices(&state, &rule) {
                let p = pref.to_string();
                let args = ["filter", "del", "dev", &dev, "parent", "1:", "pref", &p];
                if let Err(e) = tc(netns.as_deref(), &args) {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn remove_detour(&self, i: usize) -> Result<()> {
        let mut state = self.lock();
        if state.torn_down {
            return Ok(());
        }
        let Some(detour) = state.detours.get_mut(i).and_then(Option::take) else {
            return Ok(());
        };
        let m = &self.members[i];
        // Back onto the veth first, then stop the wire: frames still in it
        // are lost, as on a link that is being repaired.
        let up = ip(&["link", "set", &m.host_dev, "up"]);
        let route = ip(&[
            "-n",
            &m.netns,
            "route",
            "replace",
            &format!("198.18.{}.0/24", self.slot),
            "dev",
            NS_DEV,
            "proto",
            "kernel",
            "scope",
            "link",
            "src",
            &m.ip.to_string(),
        ]);
        drop(detour);
        up.and(route)
            .map(drop)
            .with_context(|| format!("restoring member {i}'s link"))
    }
}

/// An active fault. [`heal`](Self::heal) removes it; dropping it does too
/// (errors are then only logged).
pub struct NetFaultGuard {
    net: Arc<Inner>,
    what: String,
    prefs: Vec<u32>,
    detour: Option<usize>,
    healed: bool,
}

impl NetFaultGuard {
    /// What the fault does, for logs.
    pub fn describe(&self) -> &str {
        &self.what
    }

    /// Removes the fault.
    pub fn heal(mut self) -> Result<()> {
        self.heal_inner()
    }

    fn heal_inner(&mut self) -> Result<()> {
        if self.healed {
            return Ok(());
        }
        self.healed = true;
        let rules = self.net.remove_rules(&self.prefs);
        let detour = match self.detour {
            Some(i) => self.net.remove_detour(i),
            None => Ok(()),
        };
        info!(what = %self.what, "fault healed");
        rules
            .and(detour)
            .with_context(|| format!("healing {}", self.what))
    }
}

impl Drop for NetFaultGuard {
    fn drop(&mut self) {
        if let Err(e) = self.heal_inner() {
            warn!(error = format!("{e:#}"), "fault not fully healed");
        }
    }
}

impl std::fmt::Debug for NetFaultGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetFaultGuard")
            .field("what", &self.what)
            .finish()
    }
}
