//! Network namespaces for lab members, and network faults between them, for
//! `tests/partition.rs` and the chaos suite.
//!
//! One lab claims a slot `N` (0..=255) and gets the subnet `198.18.N.0/24`
//! (RFC 2544's benchmarking range: never routed, so it does not collide with
//! a real network, and the slot keeps concurrent labs apart):
//!
//! ```text
//!  root namespace                               namespace lsk<N>-<i> (member i)
//!  etcd           198.18.N.2 ┐                  ┌ sidecar, HAProxy on
//!  KMEs, checker  198.18.N.1 ┴ bridge lsk<N> ── lsk<N>v<i> ══ veth ══ lan0 198.18.N.(10+i)
//! ```
//!
//! Members reach each other over the bridge directly and the root namespace
//! (etcd, KMEs, the checker) through it; a member's own processes talk over
//! its loopback. Every link end gets an HTB root qdisc whose unclassified
//! traffic passes untouched and whose class `1:99` (a `pfifo limit 0`)
//! drops whatever a filter puts into it: that is how faults drop packets,
//! since this kernel has neither `netem` nor the `gact` drop action.
//!
//! * A one-way drop A→B is a `u32` filter (`match ip src A` on B's root-side
//!   veth when B is a member, else `match ip dst B` on A's `lan0`), so the
//!   packet is lost in the network, not refused by a route.
//! * Partial one-way loss is a `bpf` filter whose classic BPF program draws
//!   a random number (`ld rand`).
//! * A slow link ([`Impairment`]: delay, jitter, loss) reroutes a member's
//!   traffic through two TAP devices and a userspace wire in this process
//!   that delays and drops frames (netem's job, without netem).
//!
//! Names and the slot are claimed with a lock file under `/run/lockstep-netns`
//! that the owning process holds while it lives; leftovers of a killed run
//! are removed (processes inside them killed) by the next lab that finds
//! their lock free.

use crate::lab::process::find_program;
use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Prefix of every namespace and link a lab creates.
const PREFIX: &str = "lsk";
const SLOTS: u16 = 256;
/// Member `i` gets host number `FIRST_MEMBER + i`.
const FIRST_MEMBER: u8 = 10;
const MAX_MEMBERS: usize = 200;
/// The member's end of its veth, inside its namespace.
const NS_DEV: &str = "lan0";
const LOCK_DIR: &str = "/run/lockstep-netns";
/// The HTB class whose `pfifo limit 0` drops everything put into it.
const DROP_CLASS: &str = "1:99";
const FIRST_PREF: u32 = 100;

/// One end of a connection a fault can cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Node {
    /// The root namespace's own address (KMEs, the checker, tests).
    Host,
    /// The address etcd listens on (root namespace).
    Etcd,
    /// A member's namespace (its sidecar and HAProxy).
    Member(usize),
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Node::Host => write!(f, "host"),
            Node::Etcd => write!(f, "etcd"),
            Node::Member(i) => write!(f, "member {i}"),
        }
    }
}

/// A member's namespace and address.
#[derive(Clone, Debug)]
pub struct MemberNet {
    /// `lsk<N>-<i>`, as `ip netns` lists it.
    pub netns: String,
    pub ip: Ipv4Addr,
    /// The root-side end of its veth (a bridge port).
    host_dev: String,
}

impl MemberNet {
    /// `/run/netns/<name>`, for [`enter_netns`].
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }
}

/// A slow, lossy link, as netem would make it: every frame in either
/// direction waits `delay` ± `jitter` (uniform) and is lost with
/// `loss_percent`. Unlike netem, jitter never reorders frames of one
/// direction (a frame waits at least as long as the one before it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Impairment {
    pub delay: Duration,
    pub jitter: Duration,
    pub loss_percent: f64,
    /// Seeds the loss and jitter draws (random when `None`).
    pub seed: Option<u64>,
}

/// Where a filter sits: on the member's own `lan0` (traffic leaving it) or
/// on its root-side veth (traffic entering it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Ns,
    Root,
}

#[derive(Clone, Copy, Debug)]
enum Match {
    Src(Ipv4Addr),
    Dst(Ipv4Addr),
}

#[derive(Clone, Copy, Debug)]
struct Rule {
    member: usize,
    side: Side,
    matcher: Match,
    percent: f64,
}

/// A member's traffic rerouted through the userspace wire.
struct Detour {
    ns_tap: String,
    root_tap: String,
    /// Stopped (and the taps removed) when the detour is dropped.
    _wire: Wire,
}

struct State {
    next_pref: u32,
    rules: BTreeMap<u32, Rule>,
    detours: Vec<Option<Detour>>,
    torn_down: bool,
}

struct Inner {
    slot: u16,
    bridge: String,
    members: Vec<MemberNet>,
    state: Mutex<State>,
    /// Held while the lab lives; the kernel frees it if the process dies.
    _lock: Flock<File>,
}

/// The namespaces of one lab's members, connected to the root namespace.
/// Dropping it removes every namespace, link and fault it made.
pub struct LabNet {
    inner: Arc<Inner>,
}

impl LabNet {
    /// Claims a free slot, removes leftovers of dead labs, and creates one
    /// namespace per member. `lab` only labels the bridge (`ip link` shows
    /// it as the alias).
    pub fn create(lab: &str, members: usize) -> Result<LabNet> {
        if members > MAX_MEMBERS {
            bail!("{members} members asked for; a lab network holds at most {MAX_MEMBERS}");
        }
        std::fs::create_dir_all(LOCK_DIR).with_context(|| format!("creating {LOCK_DIR}"))?;
        reap_stale();
        let start = (std::process::id() as u16).wrapping_mul(97) % SLOTS;
        for k in 0..SLOTS {
            let slot = (start + k) % SLOTS;
            let Some(lock) = try_lock(slot)? else {
                continue;
            };
            if subnet_in_use(slot)? {
                continue;
            }
            // The lock is ours: whatever still carries this slot's names is
            // a dead lab's.
            remove_slot(slot);
            let net = LabNet {
                inner: Arc::new(Inner {
                    slot,
                    bridge: format!("{PREFIX}{slot}"),
                    members: (0..members)
                        .map(|i| MemberNet {
                            netns: format!("{PREFIX}{slot}-{i}"),
                            ip: Ipv4Addr::new(198, 18, slot as u8, FIRST_MEMBER + i as u8),
                            host_dev: format!("{PREFIX}{slot}v{i}"),
                        })
                        .collect(),
                    state: Mutex::new(State {
                        next_pref: FIRST_PREF,
                        rules: BTreeMap::new(),
                        detours: (0..members).map(|_| None).collect(),
                        torn_down: false,
                    }),
                    _lock: lock,
                }),
            };
            // On failure, dropping `net` removes what was made.
            net.build(lab)
                .with_context(|| format!("creating the network of lab {lab} (slot {slot})"))?;
            info!(lab, slot, subnet = %net.subnet(), "lab network up");
            return Ok(net);
        }
        bail!("all {SLOTS} lab network slots are taken (see `ip netns list`)")
    }

    fn build(&self, lab: &str) -> Result<()> {
        let inner = &self.inner;
        let br = inner.bridge.as_str();
        ip(&["link", "add", br, "type", "bridge"])?;
        // Pinned: a bridge otherwise takes the lowest MAC of its ports and
        // changes it when a slow link's tap joins; unpinned, an unslowed
        // member's etcd connection then stalled (1 slow-link run in 4).
        let mac = format!(
            "02:6c:73:6b:{:02x}:{:02x}",
            inner.slot >> 8,
            inner.slot & 0xff
        );
        ip(&["link", "set", br, "address", &mac])?;
        let alias = format!("lockstep lab {lab} pid {}", std::process::id());
        ip(&["link", "set", br, "alias", &alias])?;
        ip(&["addr", "add", &format!("{}/24", self.host_ip()), "dev", br])?;
        ip(&["addr", "add", &format!("{}/24", self.etcd_ip()), "dev", br])?;
        ip(&["link", "set", br, "up"])?;
        for m in &inner.members {
            let ns = m.netns.as_str();
            ip(&["netns", "add", ns])?;
            ip(&[
                "link",
                "add",
                &m.host_dev,
                "type",
                "veth",
                "peer",
                "name",
                NS_DEV,
                "netns",
                ns,
            ])?;
            ip(&["link", "set", &m.host_dev, "master", br, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", m.ip),
                "dev",
                NS_DEV,
            ])?;
            ip(&["-n", ns, "link", "set", NS_DEV, "up"])?;
            prepare_drop_class(Some(ns), NS_DEV)?;
            prepare_drop_class(None, &m.host_dev)?;
        }
        Ok(())
    }

    pub fn slot(&self) -> u16 {
        self.inner.slot
    }

    /// `198.18.N.0/24`.
    pub fn subnet(&self) -> String {
        format!("198.18.{}.0/24", self.inner.slot)
    }

    /// The root namespace's address on the lab network (KMEs bind it).
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.inner.slot as u8, 1)
    }

    /// The root-namespace address etcd binds, separate from
    /// [`host_ip`](Self::host_ip) so a member can lose etcd and keep its
    /// KMEs.
    pub fn etcd_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.inner.slot as u8, 2)
    }

    pub fn members(&self) -> &[MemberNet] {
        &self.inner.members
    }

    pub fn member(&self, i: usize) -> Result<&MemberNet> {
        self.inner.members.get(i).with_context(|| {
            format!(
                "no member {i} (the lab network has {})",
                self.inner.members.len()
            )
        })
    }

    /// The address of `node`.
    pub fn ip(&self, node: Node) -> Result<Ipv4Addr> {
        Ok(match node {
            Node::Host => self.host_ip(),
            Node::Etcd => self.etcd_ip(),
            Node::Member(i) => self.member(i)?.ip,
        })
    }

    /// A command that runs `program` inside member `i`'s namespace.
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        let mut cmd = Command::new(program);
        enter_netns(&mut cmd, &self.member(i)?.netns_path())?;
        Ok(cmd)
    }

    /// Drops every packet from `from` to `to`; the other direction passes.
    pub fn drop_one_way(&self, from: Node, to: Node) -> Result<Fault> {
        self.one_way_loss(from, to, 100.0)
    }

    /// Drops `percent` of the packets from `from` to `to` (at random); the
    /// other direction passes.
    pub fn one_way_loss(&self, from: Node, to: Node, percent: f64) -> Result<Fault> {
        let what = format!("{percent}% loss {from} -> {to}");
        let rule = self.rule(from, to, percent)?;
        self.install(what, &[rule])
    }

    /// Cuts `a` and `b` apart in both directions.
    pub fn cut(&self, a: Node, b: Node) -> Result<Fault> {
        let rules = [self.rule(a, b, 100.0)?, self.rule(b, a, 100.0)?];
        self.install(format!("cut {a} <-> {b}"), &rules)
    }

    /// Cuts member `i` from etcd (both directions); its LB keeps its KMEs
    /// and the checker, its sidecar keeps its peers.
    pub fn cut_from_etcd(&self, i: usize) -> Result<Fault> {
        let mut fault = self.cut(Node::Member(i), Node::Etcd)?;
        fault.what = format!("member {i} cut from etcd");
        Ok(fault)
    }

    /// Cuts every pair of the given members apart (both directions), so
    /// their sidecars cannot reach each other; etcd, the KMEs and the
    /// checker stay reachable.
    pub fn cut_members(&self, members: &[usize]) -> Result<Fault> {
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
    pub fn cut_all_peers(&self) -> Result<Fault> {
        let all: Vec<usize> = (0..self.inner.members.len()).collect();
        let mut fault = self.cut_members(&all)?;
        fault.what = "members cut from each other".into();
        Ok(fault)
    }

    /// Makes member `i`'s link slow and lossy in both directions (all its
    /// traffic: etcd, peers, KMEs, checker). Faults already on the member,
    /// and ones added later, apply on the rerouted path too.
    pub fn slow_link(&self, i: usize, imp: Impairment) -> Result<Fault> {
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
        Ok(Fault {
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

    fn install(&self, what: String, rules: &[Rule]) -> Result<Fault> {
        let inner = &self.inner;
        let mut state = inner.lock();
        if state.torn_down {
            bail!("the lab network is gone");
        }
        let mut fault = Fault {
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
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

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

    /// Removes everything this lab made; faults still held become no-ops.
    fn tear_down(&self) {
        let mut state = self.lock();
        if state.torn_down {
            return;
        }
        state.torn_down = true;
        let detours: Vec<Detour> = state.detours.iter_mut().filter_map(Option::take).collect();
        drop(state);
        drop(detours);
        for m in &self.members {
            let _ = ip(&["netns", "del", &m.netns]);
            // Gone with the namespace unless a process still holds it.
            if Path::new("/sys/class/net").join(&m.host_dev).exists() {
                let _ = ip(&["link", "del", &m.host_dev]);
            }
        }
        if let Err(e) = ip(&["link", "del", &self.bridge]) {
            warn!(error = %e, "removing the lab bridge");
        }
        info!(slot = self.slot, "lab network removed");
    }
}

impl Drop for LabNet {
    fn drop(&mut self) {
        self.inner.tear_down();
    }
}

/// An active fault. [`heal`](Self::heal) removes it; dropping it does too
/// (errors are then only logged).
pub struct Fault {
    net: Arc<Inner>,
    what: String,
    prefs: Vec<u32>,
    detour: Option<usize>,
    healed: bool,
}

impl Fault {
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

impl Drop for Fault {
    fn drop(&mut self) {
        if let Err(e) = self.heal_inner() {
            warn!(error = format!("{e:#}"), "fault not fully healed");
        }
    }
}

impl std::fmt::Debug for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fault").field("what", &self.what).finish()
    }
}

/// Makes `cmd` run inside the network namespace at `netns` (a file under
/// `/run/netns`). The child joins it right before `exec`, so its pid, its
/// process group and a [`ChildGuard`](crate::lab::process::ChildGuard) around it
/// work as for any child.
pub fn enter_netns(cmd: &mut Command, netns: &Path) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let ns = File::open(netns)
        .with_context(|| format!("opening network namespace {}", netns.display()))?;
    // SAFETY: the closure runs in the forked child before exec and only
    // makes the setns(2) system call, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
        });
    }
    Ok(())
}

fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(find_program(program)?)
        .args(args)
        .output()
        .with_context(|| format!("running {program} {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String> {
    run("ip", args)
}

fn tc(netns: Option<&str>, args: &[&str]) -> Result<String> {
    match netns {
        Some(ns) => {
            let mut all = vec!["-n", ns];
            all.extend_from_slice(args);
            run("tc", &all)
        }
        None => run("tc", args),
    }
}

/// HTB root whose unclassified traffic goes straight out (`default 0`:
/// HTB's direct queue, not shaped) and class 1:99 that drops everything.
fn prepare_drop_class(netns: Option<&str>, dev: &str) -> Result<()> {
    tc(
        netns,
        &[
            "qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "0",
        ],
    )?;
    tc(
        netns,
        &[
            "class", "add", "dev", dev, "parent", "1:", "classid", DROP_CLASS, "htb", "rate",
            "10gbit", "quantum", "1514",
        ],
    )?;
    tc(
        netns,
        &[
            "qdisc", "add", "dev", dev, "parent", DROP_CLASS, "handle", "99:", "pfifo", "limit",
            "0",
        ],
    )?;
    Ok(())
}

fn add_filter(netns: Option<&str>, dev: &str, pref: u32, rule: &Rule) -> Result<()> {
    let pref = pref.to_string();
    let mut args = vec![
        "filter", "add", "dev", dev, "parent", "1:", "pref", &pref, "protocol", "ip",
    ];
    let (field, addr) = match rule.matcher {
        Match::Src(a) => ("src", a),
        Match::Dst(a) => ("dst", a),
    };
    let cidr = format!("{addr}/32");
    let bytecode;
    if rule.percent >= 100.0 {
        args.extend_from_slice(&["u32", "match", "ip", field, &cidr, "flowid", DROP_CLASS]);
    } else {
        bytecode = random_match_bytecode(rule.matcher, rule.percent);
        args.extend_from_slice(&["bpf", "bytecode", &bytecode, "classid", DROP_CLASS]);
    }
    tc(netns, &args).map(drop)
}

/// A classic BPF program (tc's `bytecode` syntax) that matches IPv4 frames
/// from/to `addr` with probability `percent`: it returns -1 (the filter's
/// class, i.e. drop) or 0 (no match). Offsets are from the Ethernet header,
/// where egress qdiscs see the frame.
fn random_match_bytecode(matcher: Match, percent: f64) -> String {
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const JGE_K: u16 = 0x35;
    const RET_K: u16 = 0x06;
    // SKF_AD_OFF + SKF_AD_RANDOM: the kernel's random number extension.
    const RANDOM: u32 = 0xffff_f000 + 56;
    let (offset, addr) = match matcher {
        Match::Src(a) => (14 + 12, a),
        Match::Dst(a) => (14 + 16, a),
    };
    let threshold = ((percent / 100.0) * f64::from(u32::MAX)) as u32;
    let prog: [(u16, u8, u8, u32); 6] = [
        (LD_W_ABS, 0, 0, offset),
        (JEQ_K, 0, 3, u32::from(addr)),
        (LD_W_ABS, 0, 0, RANDOM),
        (JGE_K, 1, 0, threshold),
        (RET_K, 0, 0, u32::MAX),
        (RET_K, 0, 0, 0),
    ];
    std::iter::once(prog.len().to_string())
        .chain(
            prog.iter()
                .map(|(code, jt, jf, k)| format!("{code} {jt} {jf} {k}")),
        )
        .collect::<Vec<_>>()
        .join(",")
}

/// Opens a new (non-persistent) TAP device in this thread's namespace.
fn open_tap(name: &str) -> Result<File> {
    use nix::libc;
    use std::os::fd::AsRawFd;
    if name.len() >= libc::IFNAMSIZ {
        bail!("interface name {name:?} is too long");
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("opening /dev/net/tun")?;
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads one ifreq through the pointer, which is valid
    // for the duration of the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &req) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("creating TAP device {name}"));
    }
    Ok(file)
}

/// Frames copied between a member's tap and the bridge's, delayed and
/// dropped on the way.
struct Wire {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// How often blocked wire threads look at the stop flag.
const WIRE_TICK_MS: u16 = 50;
const WIRE_TICK: Duration = Duration::from_millis(WIRE_TICK_MS as u64);

impl Wire {
    fn start(name: &str, ns_tap: File, root_tap: File, imp: Impairment) -> Result<Wire> {
        let (ns_tap, root_tap) = (Arc::new(ns_tap), Arc::new(root_tap));
        let seed = imp.seed.unwrap_or_else(rand::random);
        // Dropped on an error below, which stops what was started.
        let mut wire = Wire {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        for (dir, from, to, seed) in [
            ("out", &ns_tap, &root_tap, seed),
            ("in", &root_tap, &ns_tap, seed ^ 0x9e37_79b9_7f4a_7c15),
        ] {
            let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
            let (from, stop) = (from.clone(), wire.stop.clone());
            let reader = std::thread::Builder::new()
                .name(format!("wire-{name}-{dir}-rx"))
                .spawn(move || wire_reader(&from, &tx, imp, seed, &stop))
                .context("starting a wire thread")?;
            wire.threads.push(reader);
            let (to, stop) = (to.clone(), wire.stop.clone());
            let writer = std::thread::Builder::new()
                .name(format!("wire-{name}-{dir}-tx"))
                .spawn(move || wire_writer(&to, &rx, &stop))
                .context("starting a wire thread")?;
            wire.threads.push(writer);
        }
        Ok(wire)
    }
}

impl Drop for Wire {
    /// Stops and joins the threads; the taps vanish with their last file.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn wire_reader(
    from: &File,
    tx: &mpsc::Sender<(Instant, Vec<u8>)>,
    imp: Impairment,
    seed: u64,
    stop: &AtomicBool,
) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use rand::{Rng, SeedableRng};
    use std::os::fd::AsFd;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut buf = vec![0u8; 65536];
    let mut last_due = Instant::now();
    let tick = PollTimeout::from(WIRE_TICK_MS);
    while !stop.load(Ordering::SeqCst) {
        let mut fds = [PollFd::new(from.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, tick) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
        let n = match (&*from).read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        if imp.loss_percent > 0.0 && rng.random::<f64>() * 100.0 < imp.loss_percent {
            continue;
        }
        let spread = imp.jitter.as_secs_f64();
        let wait = (imp.delay.as_secs_f64() + rng.random_range(-spread..=spread)).max(0.0);
        let due = (Instant::now() + Duration::from_secs_f64(wait)).max(last_due);
        last_due = due;
        if tx.send((due, buf[..n].to_vec())).is_err() {
            return;
        }
    }
}

fn wire_writer(to: &File, rx: &mpsc::Receiver<(Instant, Vec<u8>)>, stop: &AtomicBool) {
    loop {
        let (due, frame) = match rx.recv_timeout(WIRE_TICK) {
            Ok(f) => f,
            Err(mpsc::RecvTimeoutError::Timeout) if !stop.load(Ordering::SeqCst) => continue,
            Err(_) => return,
        };
        loop {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let now = Instant::now();
            if now >= due {
                break;
            }
            std::thread::sleep((due - now).min(WIRE_TICK));
        }
        // A frame the kernel refuses is a lost frame.
        let _ = (&*to).write(&frame);
    }
}

fn lock_path(slot: u16) -> PathBuf {
    Path::new(LOCK_DIR).join(format!("slot-{slot}.lock"))
}

/// Takes slot `slot`'s lock if no live process holds it.
fn try_lock(slot: u16) -> Result<Option<Flock<File>>> {
    let path = lock_path(slot);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}

/// True when something other than a lab of ours has an address in the
/// slot's subnet.
fn subnet_in_use(slot: u16) -> Result<bool> {
    let out = ip(&[
        "-4",
        "-o",
        "addr",
        "show",
        "to",
        &format!("198.18.{slot}.0/24"),
    ])?;
    // Lines read "5: lsk12    inet 198.18.12.1/24 ...".
    Ok(out.lines().any(|line| {
        let dev = line.split_whitespace().nth(1).unwrap_or("");
        slot_of(dev.split('@').next().unwrap_or(dev)) != Some(slot)
    }))
}

/// The slot a name of ours belongs to (`lsk12`, `lsk12v0`, `lsk12-0`...).
fn slot_of(name: &str) -> Option<u16> {
    let rest = name.strip_prefix(PREFIX)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let tail = &rest[digits.len()..];
    let ours = tail.is_empty()
        || tail.starts_with('-')
        || tail.starts_with('v')
        || tail.starts_with('t')
        || tail.starts_with('p');
    if ours && !digits.is_empty() {
        digits.parse().ok()
    } else {
        None
    }
}

fn our_netns() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| slot_of(n).is_some())
                .collect()
        })
        .unwrap_or_default()
}

fn our_links() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| slot_of(n).is_some())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes leftovers of labs whose process died (their lock is free).
fn reap_stale() {
    let mut slots: Vec<u16> = our_netns()
        .iter()
        .chain(our_links().iter())
        .filter_map(|n| slot_of(n))
        .collect();
    slots.sort_unstable();
    slots.dedup();
    for slot in slots {
        // Held only for the cleanup; a live lab's lock is never free.
        if let Ok(Some(_lock)) = try_lock(slot) {
            warn!(slot, "removing a dead lab's network");
            remove_slot(slot);
        }
    }
}

/// Removes every namespace and link of `slot`, killing the processes left
/// inside its namespaces (a dead lab's sidecars and HAProxies). Call only
/// while holding the slot's lock.
fn remove_slot(slot: u16) {
    for ns in our_netns().into_iter().filter(|n| slot_of(n) == Some(slot)) {
        if let Ok(pids) = ip(&["netns", "pids", &ns]) {
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = ip(&["netns", "del", &ns]);
    }
    let bridge = format!("{PREFIX}{slot}");
    // Ports first; the bridge last.
    let mut links: Vec<String> = our_links()
        .into_iter()
        .filter(|n| slot_of(n) == Some(slot))
        .collect();
    links.sort_by_key(|n| *n == bridge);
    for link in links {
        let _ = ip(&["link", "del", &link]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_can_move_between_tasks() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<LabNet>();
        send_sync::<Fault>();
    }

    #[test]
    fn names_map_to_their_slot() {
        assert_eq!(slot_of("lsk12"), Some(12));
        assert_eq!(slot_of("lsk12v0"), Some(12));
        assert_eq!(slot_of("lsk12-3"), Some(12));
        assert_eq!(slot_of("lsk7t1"), Some(7));
        assert_eq!(slot_of("lsk7p1"), Some(7));
        assert_eq!(slot_of("lsk"), None);
        assert_eq!(slot_of("lskx"), None);
        assert_eq!(slot_of("lsk12q"), None);
        assert_eq!(slot_of("eth0"), None);
    }

    #[test]
    fn random_match_program_tests_the_address_then_draws() {
        let prog = random_match_bytecode(Match::Dst(Ipv4Addr::new(198, 18, 3, 2)), 50.0);
        assert_eq!(
            prog,
            format!(
                "6,32 0 0 30,21 0 3 {},32 0 0 4294963256,53 1 0 2147483647,6 0 0 4294967295,6 0 0 0",
                u32::from(Ipv4Addr::new(198, 18, 3, 2))
            )
        );
        assert!(
            random_match_bytecode(Match::Src(Ipv4Addr::LOCALHOST), 5.0).starts_with("6,32 0 0 26,")
        );
    }
}
