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
//!  KMEs, key pairs 198.18.N.1 ┴ bridge lsk<N> ── lsk<N>v<i> ══ veth ══ lan0 198.18.N.(10+i)
//! ```
//!
//! Members reach each other over the bridge directly and the root namespace
//! (etcd, KMEs, the key-pair traffic) through it; a member's own processes talk over
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
//!
//! # Layout
//! * this module: [`LabNet`] (creating the namespaces, their addresses),
//!   [`Node`] and [`MemberNet`];
//! * `fault`: the faults ([`LabNet::cut`], [`LabNet::slow_link`] ...) and
//!   [`NetFaultGuard`], which heals one when dropped;
//! * `filter`: the `tc` drop class and the filters that feed it;
//! * `wire`: the userspace wire of a slow link ([`Impairment`]);
//! * `slot`: claiming a slot, and removing a dead lab's leftovers;
//! * `cmd`: running `ip` and `tc`, and entering a namespace.

mod cmd;
mod fault;
mod filter;
mod slot;
mod wire;

pub use cmd::enter_netns;
pub use fault::NetFaultGuard;
pub use wire::Impairment;

use anyhow::{bail, Context, Result};
use cmd::ip;
use fault::{Detour, Rule};
use filter::{prepare_drop_class, FIRST_PREF};
use nix::fcntl::Flock;
use slot::{reap_stale, remove_slot, subnet_in_use, try_lock, LOCK_DIR};
use std::collections::BTreeMap;
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tracing::{info, warn};

/// Prefix of every namespace and link a lab creates.
const PREFIX: &str = "lsk";
const SLOTS: u16 = 256;
/// Member `i` gets host number `FIRST_MEMBER + i`.
const FIRST_MEMBER: u8 = 10;
const MAX_MEMBERS: usize = 200;
/// The member's end of its veth, inside its namespace.
const NS_DEV: &str = "lan0";

/// One end of a connection a fault can cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Node {
    /// The root namespace's own address (KMEs, the key-pair traffic, tests).
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
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_can_move_between_tasks() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<LabNet>();
        send_sync::<NetFaultGuard>();
    }
}
