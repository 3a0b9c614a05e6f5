//! The words of the domain, as plain data.

use serde::{Deserialize, Serialize};
use std::fmt;

/// One complete Alice+Bob KME pair. A link has exactly two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Setup {
    Hot,
    Warm,
}

impl Setup {
    pub const ALL: [Setup; 2] = [Setup::Hot, Setup::Warm];

    pub fn other(self) -> Setup {
        match self {
            Setup::Hot => Setup::Warm,
            Setup::Warm => Setup::Hot,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Setup::Hot => "hot",
            Setup::Warm => "warm",
        }
    }
}

impl fmt::Display for Setup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown setup {0:?}: a link has exactly two setups, \"hot\" and \"warm\"")]
pub struct UnknownSetup(pub String);

impl std::str::FromStr for Setup {
    type Err = UnknownSetup;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "hot" => Ok(Setup::Hot),
            "warm" => Ok(Setup::Warm),
            _ => Err(UnknownSetup(s.to_string())),
        }
    }
}

/// Which end of the QKD link a member's LB fronts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Alice,
    Bob,
}

impl Role {
    pub const ALL: [Role; 2] = [Role::Alice, Role::Bob];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Alice => "alice",
            Role::Bob => "bob",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: expected \"alice\" or \"bob\"")]
pub struct UnknownRole(pub String);

impl std::str::FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "alice" => Ok(Role::Alice),
            "bob" => Ok(Role::Bob),
            _ => Err(UnknownRole(s.to_string())),
        }
    }
}

/// Within an epoch: hold (planned switches with a handover only), then
/// drain, then serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The issuing end blocks (no new keys); the receiving end keeps the
    /// old setup so keys already in transit can still be fetched.
    Hold,
    /// Every LB blocks.
    Drain,
    /// Every LB serves the route's setup.
    Serve,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Hold => "hold",
            Phase::Drain => "drain",
            Phase::Serve => "serve",
        })
    }
}

/// A planned switch's handover, carried by its `hold` route: the end whose
/// SAEs issue keys (`enc_keys`) blocks first; the receiving end stays on
/// `from` until every issuing LB confirmed its block and `grace_ms` passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Handover {
    pub issuer: Role,
    /// The setup the receiving end keeps serving during the hold.
    pub from: Setup,
    pub grace_ms: u64,
}

/// Generation number of the route; every switch takes a new one.
pub type Epoch = u64;

/// Fencing token: the create_revision of the leader key in etcd. A later
/// leadership always has a larger token.
pub type Token = i64;

/// A member's id, unique within a link (the pod name in Kubernetes).
pub type MemberId = String;

/// etcd revision.
pub type Rev = i64;

/// A point in the route's total order: (epoch, phase).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Step {
    pub epoch: Epoch,
    pub phase: Phase,
}

impl Step {
    pub fn new(epoch: Epoch, phase: Phase) -> Self {
        Step { epoch, phase }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.epoch, self.phase)
    }
}

/// The link's route as the leader wrote it to etcd.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Route {
    pub epoch: Epoch,
    pub phase: Phase,
    pub setup: Setup,
    pub token: Token,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub requested_by: String,
    /// Wall-clock time of the write, RFC 3339; informational only.
    #[serde(default)]
    pub at: String,
    /// Set on a `hold` route: who blocks first and what the others keep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover: Option<Handover>,
    /// The member incarnations the leader listed at the write (failsafe):
    /// a member serving this route without etcd needs a grant from every
    /// other one, and only a process that held one of them may lead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roster: Vec<Incarnation>,
}

/// An etcd lease id.
pub type Lease = i64;

/// One registration of a member: its id and the lease its key lives on.
/// A member that registers again (its lease expired) is a new incarnation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Incarnation {
    pub id: MemberId,
    pub lease: Lease,
    /// Where its Peer service listens: grants are asked for while etcd,
    /// which lists the addresses, cannot be read.
    #[serde(default)]
    pub grpc: String,
}

impl Route {
    /// Whether `id` on `lease` is in this route's roster.
    pub fn rostered(&self, id: &str, lease: Lease) -> bool {
        self.roster.iter().any(|i| i.id == id && i.lease == lease)
    }

    pub fn step(&self) -> Step {
        Step::new(self.epoch, self.phase)
    }

    /// The step and setup this route names, as a member applies them.
    pub fn applied(&self) -> Applied {
        Applied {
            epoch: self.epoch,
            phase: self.phase,
            setup: self.setup,
        }
    }

    /// Whether this route is the one `push` claims (its epoch, token and
    /// setup) at the pushed phase or past it.
    pub fn confirms(&self, push: &Push) -> bool {
        self.epoch == push.epoch
            && self.token == push.token
            && self.setup == push.setup
            && self.phase >= push.phase
    }
}

/// A Drain or Serve the leader pushes to a member over gRPC: a hint that
/// the route has reached this step, never an authority of its own (a
/// member acts on it only once etcd's route confirms it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Push {
    pub phase: Phase,
    pub epoch: Epoch,
    pub token: Token,
    pub setup: Setup,
}

impl Push {
    pub fn step(&self) -> Step {
        Step::new(self.epoch, self.phase)
    }
}

/// What a member has applied: a step and the setup it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Applied {
    pub epoch: Epoch,
    pub phase: Phase,
    pub setup: Setup,
}

impl Applied {
    pub fn step(&self) -> Step {
        Step::new(self.epoch, self.phase)
    }
}

/// What an LB is told to do. Blocked routes nowhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "state", content = "setup")]
pub enum LbTarget {
    Blocked,
    Serve(Setup),
}

impl LbTarget {
    /// What an LB reflects once it applied `step` of a route naming
    /// `setup`: blocked through hold (issuing end) and drain, `setup` at
    /// serve.
    pub fn at(phase: Phase, setup: Setup) -> LbTarget {
        match phase {
            Phase::Hold | Phase::Drain => LbTarget::Blocked,
            Phase::Serve => LbTarget::Serve(setup),
        }
    }

    pub fn serving(self) -> Option<Setup> {
        match self {
            LbTarget::Blocked => None,
            LbTarget::Serve(s) => Some(s),
        }
    }
}

impl fmt::Display for LbTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LbTarget::Blocked => f.write_str("blocked"),
            LbTarget::Serve(s) => write!(f, "{s}"),
        }
    }
}

/// Health of one KME as its member's probe sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Up,
    Down,
    #[default]
    Unknown,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Up => "up",
            Health::Down => "down",
            Health::Unknown => "unknown",
        })
    }
}
