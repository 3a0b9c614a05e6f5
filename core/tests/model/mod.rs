//! A stateright model of one link, driving the real `Member` and `Leader`
//! state machines (not a re-implementation of them).
//!
//! What the model holds besides the machines is the environment the sidecar
//! drivers face, written as small, adversarial stand-ins:
//!
//! * **etcd**: one linearizable store with revisions, the leader key (its
//!   create_revision is the fencing token), the route, member keys bound to
//!   leases that expire `ttl` after their last keep-alive, and the pending
//!   request. Route txns compare token and route revision exactly as
//!   `store::write_route` does. Watches are per-subscriber FIFO queues,
//!   delivered in order but delayed arbitrarily.
//! * **gRPC**: Drain/Serve pushes and their replies sit in a set and are
//!   delivered in any order; faults drop or duplicate them.
//! * **LBs**: one per member. A command the member issues lands (takes
//!   effect) and is later reported; a `serve` makes the server UP at once
//!   (HAProxy `state ready`), and its health check on the sidecar marks it
//!   down `D` after the sidecar stops answering "routable" (the dead-man's
//!   switch). S1 is checked against what the LBs route to, not against what
//!   the members believe.
//! * **time**: one global clock in whole units, advanced one unit at a time
//!   (only while something time-dependent is pending, and never past the
//!   horizon). Keep-alives of connected members are acked every unit.
//!
//! Faults (each kind and the total bounded per configuration): gRPC
//! loss and duplication, an LB command failing (landed or not), a route
//! txn whose outcome the leader cannot learn (landed or not), member crash
//! (restarts are free), a member cut off from etcd (heals are free), leader
//! crash, a leader losing its lease while it keeps running, a member's
//! sidecar paused (SIGSTOP) with a serve in flight, and state the link did
//! not create: an adversary's Drain or Serve with any epoch, token and
//! setup sent to any member at any time, the route key deleted (an
//! operator's mistake), and etcd restored from the snapshot taken right
//! after the link's bootstrap (revisions, leases, the leader key, member
//! records and the route all go back). A restore takes etcd down for at
//! least the lease TTL (the documented procedure); the model lets that
//! time pass in one step, without counting it against the horizon.
//!
//! A paused sidecar does nothing and answers nothing (no keep-alives, no
//! check answers, no gRPC) while time passes; its LB command is held and
//! goes out when it resumes, however late: the driver checks the command's
//! `enable_before` then, as the HAProxy adapter does, and a serve past it
//! fails without landing. Pausing only with a serve in flight is no loss:
//! a held block only keeps the LB as it was, which its health checks block
//! D after the check stops answering (a crash covers that), and a sidecar
//! with nothing in flight blocks sooner than a partitioned one (its check
//! stops answering at once) and acts, when it resumes, on events it
//! receives then, which the other faults already reorder.

use lockstep_core::failsafe::{
    lease_about_to_lapse, may_lead, roster_live, FailsafeConfig, GrantAsk, Granted,
};
use lockstep_core::health::RoleHealth;
use lockstep_core::leader::*;
use lockstep_core::member::*;
use lockstep_core::mutation::Mutation;
use lockstep_core::policy::{Request, RequestKind};
use lockstep_core::{
    Applied, Duration, Epoch, Health, LbTarget, MemberId, Phase, Push, Rev, Role, Route, Setup,
    Time, Token,
};
use stateright::{Model, Property};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;

/// Timing, in model units (fed to the machines as milliseconds).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// etcd lease TTL of members.
    pub ttl: u64,
    /// Self-fencing margin.
    pub margin: u64,
    /// D, the LB's down-detection bound.
    pub down: u64,
    /// Leader resend period and member LB retry period.
    pub resend: u64,
    /// Failsafe (`LinkModel::failsafe`): a grant's length, and the longest
    /// a member serves on grants.
    pub grant: u64,
    pub failsafe_max: u64,
}

/// How many faults of each kind a run may contain, and in total.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    pub total: u8,
    pub drop: u8,
    pub duplicate: u8,
    pub lb_fail: u8,
    pub unknown_write: u8,
    pub member_crash: u8,
    pub partition: u8,
    pub leader_crash: u8,
    pub leader_lease: u8,
    pub pause: u8,
    pub forge: u8,
    pub route_lost: u8,
    pub restore: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    Drop,
    Duplicate,
    LbFail,
    UnknownWrite,
    MemberCrash,
    Partition,
    LeaderCrash,
    LeaderLease,
    Pause,
    Forge,
    RouteLost,
    Restore,
}

impl Fault {
    fn cap(self, f: &Faults) -> u8 {
        match self {
            Fault::Drop => f.drop,
            Fault::Duplicate => f.duplicate,
            Fault::LbFail => f.lb_fail,
            Fault::UnknownWrite => f.unknown_write,
            Fault::MemberCrash => f.member_crash,
            Fault::Partition => f.partition,
            Fault::LeaderCrash => f.leader_crash,
            Fault::LeaderLease => f.leader_lease,
            Fault::Pause => f.pause,
            Fault::Forge => f.forge,
            Fault::RouteLost => f.route_lost,
            Fault::Restore => f.restore,
        }
    }
}

/// The model of one link: `members` members (alice, bob, alice, …),
/// `candidates` leader candidates, one manual (forced) failover from hot to
/// warm requested at the start.
#[derive(Clone, Debug)]
pub struct LinkModel {
    pub members: usize,
    pub candidates: usize,
    pub horizon: u64,
    pub timing: Timing,
    pub faults: Faults,
    pub mutation: Option<Mutation>,
    /// Start with alice's sidecar just crashed and restarted (its serve of
    /// the old setup in flight once it registers) as the request arrives:
    /// the stage a pause needs, without spending a fault on it.
    pub restarted_at_start: bool,
    /// Route reads a member asks for are answered at any later point
    /// (`ReadDone`), not in the step that asks: every order of a read's
    /// answer against watch events and pushes. Costs a large factor in
    /// states; configurations without it answer each read at once, with
    /// etcd as it is then (one of the orders this explores).
    pub delayed_reads: bool,
    /// The request is a planned switchover with a handover (alice issues
    /// keys; grace one unit), instead of a forced failover.
    pub handover: bool,
    /// Failsafe on: members serve on each other's grants while cut from
    /// etcd (grants travel as gRPC messages: lost, duplicated, delayed like
    /// any), routes carry rosters, and each candidate runs in its member's
    /// process (candidate `c` is member `c`: it leads only as a roster
    /// member with no grant outstanding, it is cut from etcd with its
    /// member, which then loses the leader key, and dies with it).
    pub failsafe: bool,
    /// The first `cut_at_start` members are cut from etcd as the request
    /// arrives (without spending faults): the stage failsafe needs.
    pub cut_at_start: usize,
}

/// The handover's grace, in model units.
pub const GRACE: u64 = 1;

/// What an LB routes to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Lb {
    /// What the runtime API last set (maint everywhere, or one server ready).
    pub admin: LbTarget,
    /// The health check on the sidecar has marked the ready server down.
    pub check_down: bool,
    /// The health check has been failing: by then it marks the server down.
    pub down_by: Option<u64>,
}

impl Lb {
    /// What clients reach through this LB.
    pub fn serving(&self) -> Option<Setup> {
        match self.admin {
            LbTarget::Serve(s) if !self.check_down => Some(s),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LbCmd {
    pub target: LbTarget,
    /// The command must go out before this time (`ApplyLb::enable_before`).
    pub enable_before: Option<u64>,
}

impl LbCmd {
    /// Whether the command can still make its server routable at `now`.
    fn may_land(&self, now: u64) -> bool {
        self.enable_before.is_none_or(|d| now < d)
    }

    /// A serve that may still land at `now`, as S1 must count it.
    fn pending_serve(&self, now: u64) -> Option<Setup> {
        match self.target {
            LbTarget::Serve(x) if self.may_land(now) => Some(x),
            _ => None,
        }
    }
}

/// One event of a member's route watch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Watched {
    Put(Route, Rev),
    Gone(Rev),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MemberSlot {
    /// `None` while the sidecar is down.
    pub m: Option<Member>,
    /// The lease this incarnation registered with.
    pub lease: Option<u64>,
    /// Keep-alives (and other etcd calls) get through.
    pub connected: bool,
    /// The sidecar is paused (SIGSTOP): it neither acts nor answers.
    pub paused: bool,
    /// A registration (lease, key, route read) is pending.
    pub registering: bool,
    /// Route events of this member's etcd watch, not yet delivered.
    pub watch: VecDeque<Watched>,
    /// Route reads asked for: their id and what etcd held when asked.
    pub reads: VecDeque<(ReadId, Option<Route>, Rev)>,
    /// The member asked to read the link again (`Resync`).
    pub resync: bool,
    /// The LB command in flight.
    pub lb_cmd: Option<LbCmd>,
    /// The member has been told its process leads (failsafe).
    pub leading: bool,
    /// What the driver wants in the member key, and whether it is unwritten.
    pub record: MemberRecord,
    pub record_dirty: bool,
    pub lb: Lb,
}

// Boxing the event would only add noise to a test model.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LeaderWatch {
    Event(LeaderEvent),
    /// The leader key changed (deleted or re-created).
    LeaderKey,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LeaderSlot {
    /// `None` while this candidate does not lead.
    pub l: Option<Leader>,
    pub token: Token,
    pub watch: VecDeque<LeaderWatch>,
    /// The highest epoch this leadership sent a route write for (told to
    /// its member when it ends, failsafe).
    pub wrote: Option<Epoch>,
}

/// A route txn sent to etcd and not yet executed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Txn {
    pub cand: usize,
    pub token: Token,
    pub action: LeaderAction,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Msg {
    Push {
        from: usize,
        to: usize,
        push: Push,
    },
    Reply {
        to: usize,
        token: Token,
        from: usize,
        epoch: Epoch,
        phase: Phase,
        setup: Setup,
    },
    /// Failsafe: `from` asks `to` for a grant, at `sent_at`.
    GrantAsk {
        from: usize,
        to: usize,
        epoch: Epoch,
        setup: Setup,
        sent_at: u64,
    },
    /// Failsafe: `from` (on `lease`) grants `to` for its ask of `sent_at`.
    Granted {
        to: usize,
        from: usize,
        lease: i64,
        epoch: Epoch,
        setup: Setup,
        sent_at: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Etcd {
    pub rev: Rev,
    /// Holder of the leader key and its create_revision (the token).
    pub leader: Option<(usize, Token)>,
    pub route: Option<(Route, Rev)>,
    /// Member keys: record, mod_revision, lease.
    pub members: BTreeMap<MemberId, (MemberRecord, Rev, u64)>,
    /// Live member leases: id → expiry time.
    pub leases: BTreeMap<u64, u64>,
    pub next_lease: u64,
    pub request: Option<(Request, Rev)>,
    /// Highest epoch whose history record says "complete".
    pub completed: Option<Epoch>,
    /// Epoch of the newest history record.
    pub history_epoch: Option<Epoch>,
    /// How many times the route was put or deleted: the revision members
    /// see for it (watch events, reads). It orders route changes exactly as
    /// etcd's revisions do, without telling apart states that differ only
    /// in how many unrelated writes (member records) came between them;
    /// the leader, whose txns compare revisions, sees the real ones.
    pub route_changed: Rev,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    pub now: u64,
    pub etcd: Etcd,
    pub members: Vec<MemberSlot>,
    pub leaders: Vec<LeaderSlot>,
    pub txns: Vec<Txn>,
    pub net: BTreeSet<Msg>,
    /// Faults used, by kind.
    pub used: BTreeMap<Fault, u8>,
    /// The first S2 violation seen (a fenced write landed, a stale push
    /// accepted, a member accepting a route etcd never held).
    pub s2: Option<String>,
    /// etcd as it was right after the bootstrap, for the restore fault.
    pub snapshot: Option<Etcd>,
    /// Every route a txn ever wrote (epoch, phase, setup), also those a
    /// restore undid.
    pub written: BTreeSet<(Epoch, Phase, Setup)>,
    /// When each issuing-end LB last stopped routing to a setup (tracked
    /// only with a handover): a key it handed out may be in transit until
    /// then, so the receiving end may drain only a grace after the last.
    pub issued_until: BTreeMap<usize, u64>,
    /// The first violation of the handover's order: the receiving end
    /// drained before every issuing LB confirmed its block plus the grace.
    pub order: Option<String>,
    /// Time that passed while etcd was down for a restore; not counted
    /// against the horizon.
    pub skipped: u64,
    /// Failsafe: since when no incarnation of the route's roster has had a
    /// live key (anyone may lead `max + D` later).
    pub roster_gone_since: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// The LB command in flight takes effect and is confirmed. (A serve
    /// may take effect any time before: S1 counts its target as possibly
    /// served from the moment it is sent.)
    LbDone(usize),
    MemberWatch(usize),
    /// The oldest route read a member asked for is answered.
    ReadDone(usize),
    /// A member reads the link again, as it asked.
    Resync(usize),
    Register(usize),
    RecordWrite(usize),
    LeaderWatch(usize),
    Txn(usize, Token),
    Deliver(Msg),
    Campaign(usize),
    LeaderKeyExpires,
    CheckUp(usize),
    Advance,
    // Recoveries: free, but never required.
    RestartMember(usize),
    Heal(usize),
    Resume(usize),
    // Faults.
    Drop(Msg),
    Duplicate(Msg),
    /// The LB command fails; a serve may have taken effect all the same.
    LbFail {
        member: usize,
        landed: bool,
    },
    TxnUnknown {
        cand: usize,
        token: Token,
        landed: bool,
    },
    /// A member's sidecar dies; a serve it had sent may have taken effect.
    CrashMember {
        member: usize,
        landed: bool,
    },
    Partition(usize),
    /// A member's sidecar is paused with a serve in flight, or during a
    /// handover's hold.
    Pause(usize),
    CrashLeader(usize),
    LeaderLeaseLost(usize),
    /// An adversary sends `push` to a member.
    Forge {
        to: usize,
        push: Push,
    },
    /// Someone deletes the route key.
    DeleteRoute,
    /// etcd goes down for longer than the lease TTL and comes back from
    /// the snapshot taken after the bootstrap.
    Restore,
}

impl Action {
    /// Progress the environment owes the system when faults stop.
    fn is_progress(&self) -> bool {
        matches!(
            self,
            Action::LbDone(_)
                | Action::MemberWatch(_)
                | Action::ReadDone(_)
                | Action::Resync(_)
                | Action::Register(_)
                | Action::RecordWrite(_)
                | Action::LeaderWatch(_)
                | Action::Txn(..)
                | Action::Deliver(_)
                | Action::Campaign(_)
                | Action::LeaderKeyExpires
                | Action::CheckUp(_)
                | Action::Advance
        )
    }
}

pub const TARGET: Setup = Setup::Warm;

/// The property that shows failsafe at work.
pub const FAILSAFE_SERVES: &str =
    "failsafe: a member cut from etcd serves on grants past its lease";
/// ... for every member at once, the one that led included.
pub const FAILSAFE_ALL_SERVE: &str =
    "failsafe: every member, the leader included, serves on grants past its lease";
const REQUEST_ID: &str = "req-1";

fn ms(units: u64) -> Duration {
    Duration::from_millis(units)
}

/// Request ids name the pushing leader, so a reply finds its way back and a
/// resend of the same push is the same message.
fn req_id(cand: usize, token: Token, phase: Phase) -> RequestId {
    ((token as u64) << 8) | ((cand as u64) << 1) | (phase == Phase::Serve) as u64
}

fn req_sender(req: RequestId) -> (usize, Token) {
    (((req >> 1) & 0x7f) as usize, (req >> 8) as Token)
}

/// Grant asks are named by the asking member and the send time.
fn grant_req(from: usize, sent_at: u64) -> RequestId {
    (sent_at << 8) | from as u64
}

fn grant_req_sender(req: RequestId) -> (usize, u64) {
    ((req & 0xff) as usize, req >> 8)
}

/// The candidate index forged pushes claim; replies to it go nowhere.
const FORGER: usize = 0x7f;
/// The token forged pushes carry: far above any real one.
const FORGED_TOKEN: Token = 1000;

impl LinkModel {
    pub fn member_id(&self, i: usize) -> MemberId {
        format!("{}-{}", self.role(i), i / 2)
    }

    fn role(&self, i: usize) -> Role {
        if i.is_multiple_of(2) {
            Role::Alice
        } else {
            Role::Bob
        }
    }

    fn member_index(&self, id: &str) -> Option<usize> {
        (0..self.members).find(|&i| self.member_id(i) == id)
    }

    fn member_config(&self, i: usize) -> MemberConfig {
        MemberConfig {
            id: self.member_id(i),
            role: self.role(i),
            lease_ttl: ms(self.timing.ttl),
            margin: ms(self.timing.margin),
            lb_down_bound: ms(self.timing.down),
            lb_retry: ms(self.timing.resend),
            failsafe: self.failsafe_config(),
        }
    }

    fn failsafe_config(&self) -> Option<FailsafeConfig> {
        self.failsafe.then_some(FailsafeConfig {
            grant_ttl: ms(self.timing.grant),
            max: ms(self.timing.failsafe_max),
        })
    }

    /// Whether candidate `c` (member `c`'s process, failsafe) may campaign
    /// now: alive, in touch with etcd, registered, and allowed by
    /// `may_lead` on etcd's route.
    fn may_campaign(&self, s: &State, c: usize) -> bool {
        let slot = &s.members[c];
        let Some(m) = slot.m.as_ref().filter(|_| slot.connected && !slot.paused) else {
            return false;
        };
        if self.key_ours(s, c).is_none() {
            return false;
        }
        let v = m.view();
        may_lead(
            self.failsafe_config().as_ref(),
            s.etcd.route.as_ref().map(|(r, _)| r),
            &self.member_id(c),
            &v.leases,
            s.roster_gone_since.map(Time),
            v.bound_until,
            ms(self.timing.down),
            Time(s.now),
        )
        .is_ok()
    }

    /// Failsafe: a leader whose member's lease is about to lapse steps down
    /// (`sidecar::leader::lead`), so that its member may grant; it resigns
    /// if the key is still its own.
    fn step_down_on_lapsing_leases(&self, s: &mut State) {
        let Some(fs) = self.failsafe_config() else {
            return;
        };
        if self.mutation == Some(Mutation::LeadOnLapsingLease) {
            return;
        }
        for c in 0..self.members {
            let lapsing = s.members[c].m.as_ref().is_some_and(|m| {
                lease_about_to_lapse(
                    m.view().lease_fresh_until,
                    Time(s.now),
                    &fs,
                    ms(self.timing.down),
                )
            });
            if lapsing && s.leaders[c].l.is_some() {
                s.leaders[c].l = None;
                s.leaders[c].watch.clear();
                if s.etcd.leader == Some((c, s.leaders[c].token)) {
                    Self::set_leader_key(s, None);
                }
            }
        }
    }

    /// Tracks since when no roster incarnation has had a live key.
    fn track_roster(s: &mut State) {
        let live = roster_live(
            s.etcd.route.as_ref().map(|(r, _)| r),
            s.etcd
                .members
                .iter()
                .map(|(id, (_, _, lease))| (id.as_str(), *lease as i64)),
        );
        s.roster_gone_since = match (live, s.roster_gone_since) {
            (false, Some(t)) => Some(t),
            (false, None) => Some(s.now),
            (true, _) => None,
        };
    }

    fn new_member(&self, i: usize, now: u64) -> Member {
        Member::new(self.member_config(i), Time(now)).with_mutation(self.mutation)
    }

    fn fresh_record(&self, i: usize) -> MemberRecord {
        MemberRecord {
            role: self.role(i),
            grpc: self.member_id(i),
            applied: None,
            lb: None,
            health: RoleHealth {
                hot: Health::Up,
                warm: Health::Up,
            },
            behind: None,
        }
    }

    fn fault_left(&self, s: &State, f: Fault) -> bool {
        let total: u8 = s.used.values().sum();
        total < self.faults.total && s.used.get(&f).copied().unwrap_or(0) < f.cap(&self.faults)
    }

    fn use_fault(s: &mut State, f: Fault) {
        *s.used.entry(f).or_insert(0) += 1;
    }

    // ---- etcd ----

    fn notify_leaders(s: &mut State, ev: LeaderWatch) {
        for slot in &mut s.leaders {
            if slot.l.is_some() {
                slot.watch.push_back(ev.clone());
            }
        }
    }

    fn listing(s: &State) -> Vec<Listed> {
        s.etcd
            .members
            .iter()
            .map(|(id, (record, rev, lease))| Listed {
                id: id.clone(),
                record: record.clone(),
                rev: *rev,
                lease: *lease as i64,
            })
            .collect()
    }

    fn put_member(&self, s: &mut State, i: usize, lease: u64) {
        s.etcd.rev += 1;
        let id = self.member_id(i);
        let record = s.members[i].record.clone();
        s.etcd
            .members
            .insert(id.clone(), (record.clone(), s.etcd.rev, lease));
        let rev = s.etcd.rev;
        Self::notify_leaders(
            s,
            LeaderWatch::Event(LeaderEvent::MemberPut(Listed {
                id,
                record,
                rev,
                lease: lease as i64,
            })),
        );
    }

    fn set_leader_key(s: &mut State, holder: Option<(usize, Token)>) {
        s.etcd.leader = holder;
        Self::notify_leaders(s, LeaderWatch::LeaderKey);
    }

    /// Expires leases whose time has come: their member keys go.
    fn expire_leases(&self, s: &mut State) {
        let now = s.now;
        let gone: Vec<u64> = s
            .etcd
            .leases
            .iter()
            .filter(|(_, &exp)| exp <= now)
            .map(|(&l, _)| l)
            .collect();
        for lease in gone {
            s.etcd.leases.remove(&lease);
            let keys: Vec<MemberId> = s
                .etcd
                .members
                .iter()
                .filter(|(_, (_, _, l))| *l == lease)
                .map(|(id, _)| id.clone())
                .collect();
            for id in keys {
                s.etcd.members.remove(&id);
                s.etcd.rev += 1;
                let rev = s.etcd.rev;
                Self::notify_leaders(
                    s,
                    LeaderWatch::Event(LeaderEvent::MemberDeleted { id, rev }),
                );
            }
        }
    }

    /// Executes a route txn as `store::write_route` builds it. Returns the
    /// answer etcd gives.
    fn execute_txn(&self, s: &mut State, txn: &Txn) -> LeaderEvent {
        let LeaderAction::WriteRoute {
            route,
            expect_route_rev,
            consume,
            history,
            list_members,
        } = &txn.action
        else {
            unreachable!("only route writes are queued");
        };
        let holder = s.etcd.leader.map(|(_, t)| t);
        let fenced_ok = holder == Some(txn.token) || self.mutation == Some(Mutation::IgnoreToken);
        let route_rev = s.etcd.route.as_ref().map_or(0, |(_, r)| *r);
        let request_ok = consume
            .as_ref()
            .is_none_or(|(rev, _)| s.etcd.request.as_ref().map(|(_, r)| *r) == Some(*rev));
        if !(fenced_ok && route_rev == *expect_route_rev && request_ok) {
            return LeaderEvent::WriteFailed(if holder == Some(txn.token) {
                WriteFailure::Conflict
            } else {
                WriteFailure::LostLeadership
            });
        }
        // S2: a write that lands must come from the current leadership and
        // move the route forward.
        if s.s2.is_none() {
            if holder != Some(txn.token) {
                s.s2 = Some(format!(
                    "route write {}/{} {} by token {} landed while the leader key holds {:?}",
                    route.epoch, route.phase, route.setup, txn.token, holder
                ));
            } else if let Some((old, _)) = &s.etcd.route {
                if route.step() <= old.step() {
                    s.s2 = Some(format!(
                        "route went from {} to {}",
                        old.step(),
                        route.step()
                    ));
                }
            }
        }
        s.etcd.rev += 1;
        let rev = s.etcd.rev;
        s.etcd.route = Some((route.clone(), rev));
        s.etcd.route_changed += 1;
        let seen_rev = s.etcd.route_changed;
        s.written.insert((route.epoch, route.phase, route.setup));
        // The handover's order, judged on the LBs themselves: a drain
        // that follows a hold of its epoch comes only once every issuing
        // LB has stopped handing out keys, and a grace after the last one
        // did (whether its member acked the block, died with its LB
        // blocked by the deadline, or joined late).
        if route.phase == Phase::Drain
            && s.written.contains(&(route.epoch, Phase::Hold, route.setup))
            && s.order.is_none()
        {
            for i in (0..self.members).filter(|&i| self.role(i) == Role::Alice) {
                let serving = s.members[i].lb.serving();
                let until = s.issued_until.get(&i).copied();
                let settled = serving.is_none() && until.is_none_or(|t| s.now >= t + GRACE);
                if !settled {
                    s.order = Some(format!(
                        "drain of epoch {} at t={} while {} serves {:?}, last stopped at {:?} (grace {GRACE})",
                        route.epoch,
                        s.now,
                        self.member_id(i),
                        serving,
                        until
                    ));
                }
            }
        }
        if consume.is_some() {
            s.etcd.request = None;
            Self::notify_leaders(s, LeaderWatch::Event(LeaderEvent::RequestDeleted { rev }));
        }
        if let Some(h) = history {
            Self::record_history(s, h);
        }
        let members = if *list_members {
            Self::listing(s)
        } else {
            Vec::new()
        };
        // The writer's own watch event is always a no-op for it (it either
        // still waits for the txn or has recorded this revision), so only
        // the others get it.
        for (c, slot) in s.leaders.iter_mut().enumerate() {
            if slot.l.is_some() && !(c == txn.cand && slot.token == txn.token) {
                slot.watch
                    .push_back(LeaderWatch::Event(LeaderEvent::RouteSeen {
                        route: route.clone(),
                        rev,
                    }));
            }
        }
        for slot in &mut s.members {
            if slot.m.is_some() && slot.lease.is_some() {
                slot.watch.push_back(Watched::Put(route.clone(), seen_rev));
            }
        }
        LeaderEvent::RouteWritten { rev, members }
    }

    fn record_history(s: &mut State, h: &HistoryRecord) {
        if h.outcome == HistoryOutcome::Complete {
            s.etcd.completed = s.etcd.completed.max(Some(h.epoch));
        }
        s.etcd.history_epoch = s.etcd.history_epoch.max(Some(h.epoch));
    }

    /// The link as a member's registration (or resync) reads it.
    fn link_read(s: &State) -> LinkRead {
        let records = s
            .etcd
            .members
            .values()
            .filter_map(|(r, _, _)| r.applied.map(|a| a.epoch));
        LinkRead {
            route: s.etcd.route.as_ref().map(|(r, _)| r.clone()),
            rev: s.etcd.route_changed,
            floor: records.chain(s.etcd.history_epoch).max().unwrap_or(0),
        }
    }

    // ---- machines ----

    fn feed_member(&self, s: &mut State, i: usize, ev: MemberEvent) {
        let now = s.now;
        // S2: a push under a token below etcd's route, or below the applied
        // step, must be refused on the spot.
        let stale = match &ev {
            MemberEvent::Peer { req, push } => {
                let view = s.members[i].m.as_ref().map(|m| m.view());
                view.and_then(|v| {
                    let step = push.step();
                    let below = v.applied.is_some_and(|a| step < a.step());
                    let token_below = v.route_token.is_some_and(|t| push.token < t);
                    (token_below || below).then(|| {
                        (
                            *req,
                            format!(
                                "{} accepted {step} from token {} after reading a route of token {:?} and applying {:?}",
                                self.member_id(i),
                                push.token,
                                v.route_token,
                                v.applied.map(|a| a.step())
                            ),
                        )
                    })
                })
            }
            _ => None,
        };
        let Some(m) = s.members[i].m.as_mut() else {
            return;
        };
        m.handle(Time(now), ev);
        let actions: Vec<MemberAction> = std::iter::from_fn(|| m.poll_action()).collect();
        let mut refused = false;
        let mut instant_reads = false;
        for action in actions {
            match action {
                MemberAction::ApplyLb {
                    target,
                    enable_before,
                } => {
                    assert!(
                        s.members[i].lb_cmd.is_none(),
                        "member issued an LB command while one is in flight"
                    );
                    s.members[i].lb_cmd = Some(LbCmd {
                        target,
                        // Model units are fed to the machines as ms.
                        enable_before: enable_before.map(Time::as_millis),
                    });
                }
                MemberAction::ReadRoute(read) => {
                    let route = s.etcd.route.as_ref().map(|(r, _)| r.clone());
                    let rev = s.etcd.route_changed;
                    s.members[i].reads.push_back((read, route, rev));
                    if !self.delayed_reads && s.members[i].connected {
                        instant_reads = true;
                    }
                }
                MemberAction::Resync => s.members[i].resync = true,
                MemberAction::WriteApplied(a) => {
                    let lb = s.members[i]
                        .lb
                        .serving()
                        .map_or(LbTarget::Blocked, LbTarget::Serve);
                    let r = &mut s.members[i].record;
                    r.applied = Some(a);
                    r.lb = Some(match a.phase {
                        Phase::Hold => lb,
                        phase => LbTarget::at(phase, a.setup),
                    });
                    // Written at once while the key is ours (the leader's
                    // watch queue delays it as much as any delay would);
                    // otherwise when the member is back (`RecordWrite`).
                    match self.key_ours(s, i) {
                        Some(lease) => self.put_member(s, i, lease),
                        None => s.members[i].record_dirty = true,
                    }
                }
                MemberAction::Reply { req, result } => {
                    if let Some((stale_req, _)) = &stale {
                        if *stale_req == req && result.is_err() {
                            refused = true;
                        }
                    }
                    if let Ok(a) = result {
                        let (to, token) = req_sender(req);
                        if to == FORGER {
                            continue;
                        }
                        s.net.insert(Msg::Reply {
                            to,
                            token,
                            from: i,
                            epoch: a.epoch,
                            phase: a.phase,
                            setup: a.setup,
                        });
                    }
                }
                MemberAction::Register => {
                    s.members[i].registering = true;
                    s.members[i].lease = None;
                    s.members[i].watch.clear();
                }
                MemberAction::RevokeLease => {}
                MemberAction::AskGrants {
                    epoch,
                    setup,
                    peers,
                } => {
                    for peer in peers {
                        let Some(to) = self.member_index(&peer.id) else {
                            continue;
                        };
                        // An ask to a sidecar that is down fails to connect.
                        // A newer ask for the same route supersedes older
                        // ones still in flight (its grant lasts longer).
                        if s.members[to].m.is_some() {
                            s.net.retain(|m| {
                                !matches!(m, Msg::GrantAsk { from: f, to: t, epoch: e, setup: x, .. }
                                    if *f == i && *t == to && *e == epoch && *x == setup)
                            });
                            s.net.insert(Msg::GrantAsk {
                                from: i,
                                to,
                                epoch,
                                setup,
                                sent_at: now,
                            });
                        }
                    }
                }
                MemberAction::GrantReply { req, result } => {
                    if let Ok(g) = result {
                        let (to, sent_at) = grant_req_sender(req);
                        // Of grants in flight for the same route, the holder
                        // keeps the longest.
                        let mut newest = sent_at;
                        s.net.retain(|m| match m {
                            Msg::Granted {
                                to: t,
                                from: f,
                                lease,
                                epoch,
                                setup,
                                sent_at: at,
                            } if *t == to
                                && *f == i
                                && *lease == g.lease
                                && *epoch == g.epoch
                                && *setup == g.setup =>
                            {
                                newest = newest.max(*at);
                                false
                            }
                            _ => true,
                        });
                        let sent_at = newest;
                        s.net.insert(Msg::Granted {
                            to,
                            from: i,
                            lease: g.lease,
                            epoch: g.epoch,
                            setup: g.setup,
                            sent_at,
                        });
                    }
                }
            }
        }
        if let Some((_, what)) = stale {
            if !refused && s.s2.is_none() {
                s.s2 = Some(what);
            }
        }
        if instant_reads {
            while let Some((read, route, rev)) = s.members[i].reads.pop_front() {
                self.feed_member(s, i, MemberEvent::RouteRead { read, route, rev });
            }
        }
        // S2: a member accepts only routes some leader's txn wrote.
        if let Some(a) = s.members[i].m.as_ref().and_then(|m| m.view().accepted) {
            let held = s.written.contains(&(a.epoch, a.phase, a.setup));
            if !held && s.s2.is_none() {
                s.s2 = Some(format!(
                    "{} accepted {} {} that no route write held",
                    self.member_id(i),
                    a.step(),
                    a.setup
                ));
            }
        }
    }

    fn feed_leader(&self, s: &mut State, c: usize, ev: LeaderEvent) {
        let now = s.now;
        let token = s.leaders[c].token;
        let Some(l) = s.leaders[c].l.as_mut() else {
            return;
        };
        l.handle(Time(now), ev);
        let mut actions = Vec::new();
        while let Some(a) = l.poll_action() {
            actions.push(a);
        }
        for action in actions {
            match action {
                a @ LeaderAction::WriteRoute { .. } => {
                    if let LeaderAction::WriteRoute { route, .. } = &a {
                        s.leaders[c].wrote = s.leaders[c].wrote.max(Some(route.epoch));
                    }
                    s.txns.push(Txn {
                        cand: c,
                        token,
                        action: a,
                    })
                }
                LeaderAction::ResolveRequest { rev, .. } => {
                    let ours = s.etcd.leader.map(|(_, t)| t) == Some(token);
                    if ours && s.etcd.request.as_ref().map(|(_, r)| *r) == Some(rev) {
                        s.etcd.rev += 1;
                        s.etcd.request = None;
                        let rev = s.etcd.rev;
                        Self::notify_leaders(
                            s,
                            LeaderWatch::Event(LeaderEvent::RequestDeleted { rev }),
                        );
                    }
                }
                LeaderAction::WriteHistory(h) => {
                    let ours = s.etcd.leader.map(|(_, t)| t) == Some(token);
                    if ours {
                        Self::record_history(s, &h);
                    }
                }
                LeaderAction::Send { member, push, .. } => self.push(s, c, &member, push),
                LeaderAction::PauseLink { .. } | LeaderAction::PolicyNote { .. } => {}
                LeaderAction::StepDown { .. } => {
                    s.leaders[c].l = None;
                    s.leaders[c].watch.clear();
                    // The driver resigns: deletes the leader key if still ours.
                    if s.etcd.leader == Some((c, token)) {
                        Self::set_leader_key(s, None);
                    }
                }
            }
        }
    }

    fn push(&self, s: &mut State, from: usize, member: &str, push: Push) {
        // A push to a sidecar that is down fails to connect: lost.
        if let Some(to) = self.member_index(member) {
            if s.members[to].m.is_some() {
                s.net.insert(Msg::Push { from, to, push });
            }
        }
    }

    /// The LBs' health checks on their sidecars: a ready server whose
    /// sidecar stops answering "routable" for it is marked down D later
    /// (unless the answer comes back first).
    fn refresh_lbs(&self, s: &mut State) {
        let now = s.now;
        let d = self.timing.down;
        for slot in &mut s.members {
            let LbTarget::Serve(setup) = slot.lb.admin else {
                slot.lb.down_by = None;
                continue;
            };
            if slot.lb.check_down {
                continue;
            }
            let routable = !slot.paused
                && slot
                    .m
                    .as_ref()
                    .is_some_and(|m| m.view().routable(setup, Time(now), ms(d)));
            if routable {
                slot.lb.down_by = None;
            } else if slot.lb.down_by.is_none() {
                slot.lb.down_by = Some(now + d);
            }
        }
    }

    /// Whether a leader's resend timer is armed.
    fn resend_armed(s: &State) -> bool {
        s.leaders
            .iter()
            .any(|slot| slot.l.as_ref().is_some_and(|l| l.poll_timeout().is_some()))
    }

    /// Whether letting time pass can change anything other than a leader
    /// resending.
    fn time_matters(&self, s: &State) -> bool {
        // A member key on a lease nobody renews runs out (a dead sidecar's,
        // or a restarted one's old key it waits to expire).
        let orphaned = s
            .etcd
            .members
            .values()
            .any(|(_, _, l)| s.etcd.leases.contains_key(l) && !self.lease_kept(s, *l));
        if orphaned {
            return true;
        }
        // Failsafe: a member bound by a grant it gave may campaign once it
        // expires.
        if self.failsafe && s.etcd.leader.is_none() {
            let bound = s.members.iter().any(|slot| {
                slot.m
                    .as_ref()
                    .and_then(|m| m.view().bound_until)
                    .is_some_and(|u| u > Time(s.now))
            });
            if bound {
                return true;
            }
        }
        s.members.iter().any(|slot| {
            if slot.lb.down_by.is_some() {
                return true;
            }
            let lease_alive = slot.lease.is_some_and(|l| s.etcd.leases.contains_key(&l));
            match &slot.m {
                None => false,
                Some(m) => {
                    if (!slot.connected || slot.paused) && lease_alive {
                        return true;
                    }
                    // A connected member's lease deadline moves with every
                    // keep-alive (and with it, in failsafe, the instant it
                    // would start asking for grants); only its other
                    // deadlines count.
                    let doubt = ms(self.timing.grant + self.timing.down);
                    let fresh =
                        m.view()
                            .lease_fresh_until
                            .map(|f| if self.failsafe { f - doubt } else { f });
                    match m.poll_timeout() {
                        Some(t) => !slot.connected || fresh.is_none_or(|f| t < f),
                        None => false,
                    }
                }
            }
        })
    }

    /// The lease of member `i`'s key, if the member can write it now.
    fn key_ours(&self, s: &State, i: usize) -> Option<u64> {
        let slot = &s.members[i];
        let l = slot.lease?;
        let ours = slot.m.is_some()
            && slot.connected
            && !slot.paused
            && s.etcd.leases.contains_key(&l)
            && s.etcd
                .members
                .get(&self.member_id(i))
                .is_some_and(|(_, _, kl)| *kl == l);
        ours.then_some(l)
    }

    /// Whether some live, connected member keeps lease `l` alive.
    fn lease_kept(&self, s: &State, l: u64) -> bool {
        s.members
            .iter()
            .any(|slot| slot.m.is_some() && slot.connected && !slot.paused && slot.lease == Some(l))
    }

    /// The requested switch is done: the route serves the target, the
    /// request is consumed, and every member with a live key serves it.
    ///
    /// Once the route has been deleted, a switch in flight is lost with it
    /// (the request was consumed by its drain txn, and no record says where
    /// it was going): then the link settling on whatever setup the leader
    /// re-established counts.
    pub fn complete(&self, s: &State) -> bool {
        let Some((route, _)) = &s.etcd.route else {
            return false;
        };
        let target_lost = s.used.contains_key(&Fault::RouteLost);
        if route.phase != Phase::Serve
            || (route.setup != TARGET && !target_lost)
            || s.etcd.request.is_some()
        {
            return false;
        }
        let target = route.setup;
        (0..self.members).all(|i| {
            let id = self.member_id(i);
            if !s.etcd.members.contains_key(&id) {
                return true;
            }
            let slot = &s.members[i];
            slot.m.is_some() && slot.lb.serving() == Some(target)
        })
    }

    /// S1: no two LBs route to different setups. An LB with a serve in
    /// flight may already route to its target (the command can land at any
    /// moment until it is confirmed, while its deadline has not passed), or
    /// still to what it did.
    pub fn s1(s: &State) -> bool {
        let options: Vec<Vec<Setup>> = s
            .members
            .iter()
            .map(|slot| {
                let pending = slot.lb_cmd.as_ref().and_then(|c| c.pending_serve(s.now));
                slot.lb.serving().into_iter().chain(pending).collect()
            })
            .collect();
        for (i, a) in options.iter().enumerate() {
            for b in &options[i + 1..] {
                if a.iter().any(|x| b.iter().any(|y| x != y)) {
                    return false;
                }
            }
        }
        true
    }

    // ---- actions ----

    fn enabled(&self, s: &State, out: &mut Vec<Action>) {
        for (i, slot) in s.members.iter().enumerate() {
            let alive = slot.m.is_some();
            // A block that fails is taken as not landed (landing would only
            // make the LB safer); a serve may have landed either way.
            let landings: &[bool] = match slot.lb_cmd.as_ref() {
                Some(c) if c.pending_serve(s.now).is_some() => &[false, true],
                _ => &[false],
            };
            if slot.lb_cmd.is_some() && !slot.paused {
                out.push(Action::LbDone(i));
                if self.fault_left(s, Fault::LbFail) {
                    for &landed in landings {
                        out.push(Action::LbFail { member: i, landed });
                    }
                }
            }
            // A sidecar is frozen with a serve in flight, or, with a
            // handover, during the hold (the issuing end blocking, the
            // receiving end in its grace).
            let in_hold = self.handover
                && s.etcd
                    .route
                    .as_ref()
                    .is_some_and(|(r, _)| r.phase == Phase::Hold);
            if slot.paused {
                out.push(Action::Resume(i));
            } else if alive
                && (in_hold
                    || slot
                        .lb_cmd
                        .as_ref()
                        .is_some_and(|c| c.pending_serve(s.now).is_some()))
                && self.fault_left(s, Fault::Pause)
            {
                out.push(Action::Pause(i));
            }
            if alive && slot.connected && !slot.paused {
                if !slot.watch.is_empty() {
                    out.push(Action::MemberWatch(i));
                }
                if !slot.reads.is_empty() {
                    out.push(Action::ReadDone(i));
                }
                if slot.resync {
                    out.push(Action::Resync(i));
                }
                // A member id registered under another (older) lease is
                // never merged into: the sidecar waits for it to expire.
                if slot.registering && !s.etcd.members.contains_key(&self.member_id(i)) {
                    out.push(Action::Register(i));
                }
                if slot.record_dirty && self.key_ours(s, i).is_some() {
                    out.push(Action::RecordWrite(i));
                }
            }
            if slot.lb.check_down && !slot.paused {
                if let (Some(m), LbTarget::Serve(setup)) = (&slot.m, slot.lb.admin) {
                    if m.view().routable(setup, Time(s.now), ms(self.timing.down)) {
                        out.push(Action::CheckUp(i));
                    }
                }
            }
            if !alive {
                out.push(Action::RestartMember(i));
            } else {
                if self.fault_left(s, Fault::MemberCrash) {
                    for &landed in landings {
                        out.push(Action::CrashMember { member: i, landed });
                    }
                }
                if slot.paused {
                    // Resumed first (free); one fault at a time per sidecar.
                } else if slot.connected {
                    if slot.lease.is_some() && self.fault_left(s, Fault::Partition) {
                        out.push(Action::Partition(i));
                    }
                } else {
                    out.push(Action::Heal(i));
                }
            }
        }
        for (c, slot) in s.leaders.iter().enumerate() {
            if slot.l.is_some() {
                if !slot.watch.is_empty() {
                    out.push(Action::LeaderWatch(c));
                }
                if self.fault_left(s, Fault::LeaderCrash) && !self.failsafe {
                    out.push(Action::CrashLeader(c));
                }
                if s.etcd.leader == Some((c, slot.token)) && self.fault_left(s, Fault::LeaderLease)
                {
                    out.push(Action::LeaderLeaseLost(c));
                }
            }
        }
        if self.fault_left(s, Fault::Forge) {
            let epoch = s.etcd.route.as_ref().map_or(0, |(r, _)| r.epoch) + 1;
            for (to, slot) in s.members.iter().enumerate() {
                if slot.m.is_none() || slot.paused {
                    continue;
                }
                for phase in [Phase::Drain, Phase::Serve] {
                    for setup in Setup::ALL {
                        out.push(Action::Forge {
                            to,
                            push: Push {
                                phase,
                                epoch,
                                token: FORGED_TOKEN,
                                setup,
                            },
                        });
                    }
                }
            }
        }
        if s.etcd.route.is_some() && self.fault_left(s, Fault::RouteLost) {
            out.push(Action::DeleteRoute);
        }
        if s.snapshot.is_some() && self.fault_left(s, Fault::Restore) {
            out.push(Action::Restore);
        }
        // Candidates are interchangeable (same leader id, fresh machine), so
        // only the first one not leading campaigns: symmetry reduction.
        if s.etcd.leader.is_none() {
            if self.failsafe {
                for c in 0..self.candidates {
                    if s.leaders[c].l.is_none() && self.may_campaign(s, c) {
                        out.push(Action::Campaign(c));
                    }
                }
            } else if let Some(c) = s.leaders.iter().position(|slot| slot.l.is_none()) {
                out.push(Action::Campaign(c));
            }
        }
        if let Some((c, t)) = s.etcd.leader {
            let running = s.leaders[c].l.is_some() && s.leaders[c].token == t;
            if !running {
                out.push(Action::LeaderKeyExpires);
            }
        }
        for t in &s.txns {
            out.push(Action::Txn(t.cand, t.token));
            if self.fault_left(s, Fault::UnknownWrite) {
                for landed in [true, false] {
                    out.push(Action::TxnUnknown {
                        cand: t.cand,
                        token: t.token,
                        landed,
                    });
                }
            }
        }
        for msg in &s.net {
            // A paused sidecar reads no requests; they wait in its socket.
            if matches!(msg, Msg::Push { to, .. } | Msg::GrantAsk { to, .. } if s.members[*to].paused)
            {
                continue;
            }
            out.push(Action::Deliver(msg.clone()));
            if self.fault_left(s, Fault::Drop) {
                out.push(Action::Drop(msg.clone()));
            }
            if self.fault_left(s, Fault::Duplicate) {
                out.push(Action::Duplicate(msg.clone()));
            }
        }
        // An LB command completes (or fails, `LbFail`) within the time unit
        // it is issued in: time does not pass over one in flight, unless
        // its sidecar is paused.
        let overdue = s
            .members
            .iter()
            .any(|slot| slot.lb_cmd.is_some() && !slot.paused);
        // A resend only repeats pushes, so time passes for it alone only
        // once nothing else can happen (the pushes were lost); duplicates
        // in flight are the `Duplicate` fault's business.
        let busy = out.iter().any(|a| a.is_progress());
        if s.now - s.skipped < self.horizon
            && !overdue
            && (self.time_matters(s) || (!busy && Self::resend_armed(s)))
        {
            out.push(Action::Advance);
        }
    }

    fn step(&self, s: &mut State, action: Action) {
        match action {
            Action::LbDone(i) => {
                let cmd = s.members[i].lb_cmd.take().expect("command in flight");
                if cmd.may_land(s.now) {
                    Self::land(&mut s.members[i].lb, cmd.target);
                    self.feed_member(s, i, MemberEvent::LbConfirmed { target: cmd.target });
                } else {
                    // The driver refuses a serve past its deadline
                    // (`LbError::Expired`); nothing is sent.
                    self.feed_member(s, i, MemberEvent::LbFailed { target: cmd.target });
                }
            }
            Action::Pause(i) => {
                Self::use_fault(s, Fault::Pause);
                s.members[i].paused = true;
            }
            Action::Resume(i) => {
                s.members[i].paused = false;
                // Its keep-alive goes out again: renewed, or the lease is
                // gone. The LB command held meanwhile may go out before the
                // member hears either (`LbDone` stays enabled).
                self.renew_or_lose_lease(s, i);
            }
            Action::LbFail { member: i, landed } => {
                Self::use_fault(s, Fault::LbFail);
                // Landed or not, a command the driver has given up on has no
                // further effect.
                let cmd = s.members[i].lb_cmd.take().expect("command in flight");
                if landed {
                    Self::land(&mut s.members[i].lb, cmd.target);
                }
                self.feed_member(s, i, MemberEvent::LbFailed { target: cmd.target });
            }
            Action::MemberWatch(i) => {
                let ev = match s.members[i].watch.pop_front().expect("watch event") {
                    Watched::Put(route, rev) => MemberEvent::RouteSeen { route, rev },
                    Watched::Gone(rev) => MemberEvent::RouteGone { rev },
                };
                self.feed_member(s, i, ev);
            }
            Action::ReadDone(i) => {
                let (read, route, rev) = s.members[i].reads.pop_front().expect("read");
                self.feed_member(s, i, MemberEvent::RouteRead { read, route, rev });
            }
            Action::Resync(i) => {
                // The driver opens the watch from now and reads the link; it
                // writes its record again (etcd may hold an older one).
                s.members[i].resync = false;
                s.members[i].watch.clear();
                if let Some(lease) = self.key_ours(s, i) {
                    self.put_member(s, i, lease);
                }
                let read = Self::link_read(s);
                self.feed_member(s, i, MemberEvent::Resynced(read));
            }
            Action::Forge { to, push } => {
                Self::use_fault(s, Fault::Forge);
                let req = req_id(FORGER, push.token, push.phase);
                self.feed_member(s, to, MemberEvent::Peer { req, push });
            }
            Action::DeleteRoute => {
                Self::use_fault(s, Fault::RouteLost);
                s.etcd.rev += 1;
                let rev = s.etcd.rev;
                s.etcd.route = None;
                s.etcd.route_changed += 1;
                let seen_rev = s.etcd.route_changed;
                Self::notify_leaders(s, LeaderWatch::Event(LeaderEvent::RouteGone { rev }));
                for slot in &mut s.members {
                    if slot.m.is_some() && slot.lease.is_some() {
                        slot.watch.push_back(Watched::Gone(seen_rev));
                    }
                }
            }
            Action::Restore => self.restore(s),
            Action::Register(i) => {
                // Lease, then member key, then route read: one linearizable
                // step here (a leader's drain lands before it, and the
                // member reads it, or after it, and lists the member).
                let lease = s.etcd.next_lease;
                s.etcd.next_lease += 1;
                s.etcd.leases.insert(lease, s.now + self.timing.ttl);
                s.members[i].lease = Some(lease);
                s.members[i].registering = false;
                s.members[i].record_dirty = false;
                s.members[i].watch.clear();
                s.members[i].resync = false;
                self.put_member(s, i, lease);
                let read = Self::link_read(s);
                let now = s.now;
                self.feed_member(
                    s,
                    i,
                    MemberEvent::Synced {
                        read,
                        lease_sent_at: Time(now),
                        lease: lease as i64,
                    },
                );
            }
            Action::RecordWrite(i) => {
                let lease = s.members[i].lease.expect("registered");
                s.members[i].record_dirty = false;
                self.put_member(s, i, lease);
            }
            Action::LeaderWatch(c) => {
                let ev = s.leaders[c].watch.pop_front().expect("watch event");
                match ev {
                    LeaderWatch::Event(e) => self.feed_leader(s, c, e),
                    LeaderWatch::LeaderKey => {
                        if s.etcd.leader != Some((c, s.leaders[c].token)) {
                            // The driver stops leading ("leader key changed").
                            s.leaders[c].l = None;
                            s.leaders[c].watch.clear();
                        }
                    }
                }
            }
            Action::Txn(c, token) => {
                let txn = self.take_txn(s, c, token);
                let ev = self.execute_txn(s, &txn);
                if s.leaders[c].token == token {
                    self.feed_leader(s, c, ev);
                }
            }
            Action::TxnUnknown {
                cand,
                token,
                landed,
            } => {
                Self::use_fault(s, Fault::UnknownWrite);
                let txn = self.take_txn(s, cand, token);
                if landed {
                    let _ = self.execute_txn(s, &txn);
                }
                if s.leaders[cand].token == token {
                    self.feed_leader(
                        s,
                        cand,
                        LeaderEvent::WriteFailed(WriteFailure::Unknown("timeout".into())),
                    );
                }
            }
            Action::Deliver(msg) => {
                s.net.remove(&msg);
                self.deliver(s, msg);
            }
            Action::Duplicate(msg) => {
                Self::use_fault(s, Fault::Duplicate);
                self.deliver(s, msg);
            }
            Action::Drop(msg) => {
                Self::use_fault(s, Fault::Drop);
                s.net.remove(&msg);
            }
            Action::Campaign(c) => {
                s.etcd.rev += 1;
                let token = s.etcd.rev;
                Self::set_leader_key(s, Some((c, token)));
                let leader = Leader::new(
                    LeaderConfig {
                        id: if self.failsafe {
                            self.member_id(c)
                        } else {
                            "leader".into()
                        },
                        token,
                        wall_ms_at_start: 0,
                        initial_setup: Setup::Hot,
                        resend_every: ms(self.timing.resend),
                        handover: self.handover.then_some(HandoverConfig {
                            issuer: Role::Alice,
                            grace: ms(GRACE),
                        }),
                        failsafe: self.failsafe_config().map(|config| LeaderFailsafe {
                            config,
                            leases: s.members[c]
                                .m
                                .as_ref()
                                .map_or(Vec::new(), |m| m.view().leases),
                            roster_gone_since: s.roster_gone_since.map(Time),
                            lb_down_bound: ms(self.timing.down),
                        }),
                    },
                    Time(s.now),
                )
                .with_mutation(self.mutation);
                s.leaders[c] = LeaderSlot {
                    l: Some(leader),
                    token,
                    watch: VecDeque::new(),
                    wrote: None,
                };
                let start = LeaderEvent::Start {
                    route: s.etcd.route.clone(),
                    members: Self::listing(s),
                    request: s.etcd.request.clone(),
                    paused: None,
                    history_epoch: s.etcd.history_epoch,
                };
                self.feed_leader(s, c, start);
            }
            Action::LeaderKeyExpires => Self::set_leader_key(s, None),
            Action::CheckUp(i) => {
                s.members[i].lb.check_down = false;
                s.members[i].lb.down_by = None;
            }
            Action::Advance => {
                s.now += 1;
                let now = s.now;
                for slot in &mut s.members {
                    if slot.lb.down_by.is_some_and(|t| t <= now) {
                        slot.lb.check_down = true;
                        slot.lb.down_by = None;
                    }
                }
                self.expire_leases(s);
                for i in 0..self.members {
                    let slot = &s.members[i];
                    if slot.m.is_none() || !slot.connected || slot.paused {
                        continue;
                    }
                    let Some(lease) = slot.lease else { continue };
                    if let Some(exp) = s.etcd.leases.get_mut(&lease) {
                        *exp = now + self.timing.ttl;
                        self.feed_member(s, i, MemberEvent::KeepAliveAcked { sent_at: Time(now) });
                    }
                }
                for i in 0..self.members {
                    if !s.members[i].paused {
                        self.feed_member(s, i, MemberEvent::Tick);
                    }
                }
                for c in 0..self.candidates {
                    self.feed_leader(s, c, LeaderEvent::Tick);
                }
            }
            Action::RestartMember(i) => {
                let now = s.now;
                let m = self.new_member(i, now);
                let slot = &mut s.members[i];
                slot.m = Some(m);
                slot.lease = None;
                slot.connected = true;
                slot.registering = true;
                slot.watch.clear();
                slot.reads.clear();
                slot.resync = false;
                slot.record = self.fresh_record(i);
                slot.record_dirty = false;
                slot.leading = false;
                // Collect the start-up action (block the LB).
                self.feed_member(s, i, MemberEvent::Tick);
            }
            Action::Heal(i) => {
                s.members[i].connected = true;
                self.renew_or_lose_lease(s, i);
            }
            Action::CrashMember { member: i, landed } => {
                Self::use_fault(s, Fault::MemberCrash);
                let slot = &mut s.members[i];
                slot.m = None;
                slot.paused = false;
                // A command in flight dies with the sidecar's connection to
                // the LB (it may have landed); what landed stays.
                if let Some(cmd) = slot.lb_cmd.take() {
                    if landed {
                        Self::land(&mut slot.lb, cmd.target);
                    }
                }
                slot.watch.clear();
                slot.reads.clear();
                slot.resync = false;
                slot.registering = false;
                slot.leading = false;
                s.net.retain(
                    |m| !matches!(m, Msg::Push { to, .. } | Msg::GrantAsk { to, .. } if *to == i),
                );
                if self.failsafe {
                    // The leader dies with its process; its key stays until
                    // its lease expires (`LeaderKeyExpires`).
                    s.leaders[i].l = None;
                    s.leaders[i].watch.clear();
                    s.net
                        .retain(|m| !matches!(m, Msg::Reply { to, .. } if *to == i));
                }
            }
            Action::Partition(i) => {
                Self::use_fault(s, Fault::Partition);
                s.members[i].connected = false;
                // Failsafe: the process's leader is cut too; its key (on the
                // same lease) is taken as gone at once, the case that lets
                // another leader in while it still runs.
                if self.failsafe && s.etcd.leader.is_some_and(|(c, _)| c == i) {
                    Self::set_leader_key(s, None);
                }
            }
            Action::CrashLeader(c) => {
                Self::use_fault(s, Fault::LeaderCrash);
                // Its txn in flight may still land; its key stays until its
                // lease expires (`LeaderKeyExpires`).
                s.leaders[c].l = None;
                s.leaders[c].watch.clear();
                s.net
                    .retain(|m| !matches!(m, Msg::Reply { to, .. } if *to == c));
            }
            Action::LeaderLeaseLost(c) => {
                Self::use_fault(s, Fault::LeaderLease);
                // The key goes at once; the leader runs on (acting on replies
                // and txn answers) until its watch tells it. Events it had
                // not read yet are skipped: a leader that can no longer write
                // gains nothing from them, and they would only multiply
                // interleavings.
                Self::set_leader_key(s, None);
                s.leaders[c].watch = VecDeque::from([LeaderWatch::LeaderKey]);
            }
        }
        if self.failsafe {
            self.step_down_on_lapsing_leases(s);
            for c in 0..self.members {
                let leading = s.leaders[c].l.is_some();
                if s.members[c].m.is_some() && s.members[c].leading != leading {
                    s.members[c].leading = leading;
                    let event = if leading {
                        Leadership::Campaigning
                    } else {
                        Leadership::Ended {
                            wrote: s.leaders[c].wrote,
                        }
                    };
                    self.feed_member(s, c, MemberEvent::Leading(event));
                }
            }
            Self::track_roster(s);
        }
        self.refresh_lbs(s);
        self.prune_no_ops(s);
    }

    /// Drops deliveries that would change nothing (a route the member has
    /// already taken from a push, a reply whose ack came through etcd, a
    /// watch event a leader has already read in its snapshot): taking them
    /// at once is equivalent and keeps such copies out of the state space.
    fn prune_no_ops(&self, s: &mut State) {
        let now = Time(s.now);
        for slot in &mut s.members {
            let Some(m) = &slot.m else { continue };
            while let Some(w) = slot.watch.front() {
                let mut probe = m.clone();
                let ev = match w {
                    Watched::Put(route, rev) => MemberEvent::RouteSeen {
                        route: route.clone(),
                        rev: *rev,
                    },
                    Watched::Gone(rev) => MemberEvent::RouteGone { rev: *rev },
                };
                probe.handle(now, ev);
                if probe != *m {
                    break;
                }
                slot.watch.pop_front();
            }
        }
        for slot in &mut s.leaders {
            let Some(l) = &slot.l else { continue };
            while let Some(LeaderWatch::Event(e)) = slot.watch.front() {
                let mut probe = l.clone();
                probe.handle(now, e.clone());
                if probe != *l {
                    break;
                }
                slot.watch.pop_front();
            }
        }
        // A grant ask the peer refuses, or a grant its holder has no use
        // for, changes nothing (the model drops refusals).
        let members = &s.members;
        s.net.retain(|msg| {
            let Some((to, ev)) = self.grant_event(msg) else {
                return true;
            };
            let Some(m) = members[to].m.as_ref() else {
                return false;
            };
            if members[to].paused {
                return true;
            }
            let mut probe = m.clone();
            probe.handle(now, ev);
            let acted = std::iter::from_fn(|| probe.poll_action())
                .any(|a| !matches!(a, MemberAction::GrantReply { result: Err(_), .. }));
            acted || probe != *m
        });
        let leaders = &s.leaders;
        s.net.retain(|msg| {
            let Msg::Reply {
                to,
                token,
                from,
                epoch,
                phase,
                setup,
            } = msg
            else {
                return true;
            };
            let slot = &leaders[*to];
            let Some(l) = slot.l.as_ref().filter(|_| slot.token == *token) else {
                return false;
            };
            let mut probe = l.clone();
            probe.handle(
                now,
                LeaderEvent::PeerReplied {
                    member: self.member_id(*from),
                    applied: Applied {
                        epoch: *epoch,
                        phase: *phase,
                        setup: *setup,
                    },
                },
            );
            probe != *l
        });
    }

    /// A member back in touch with etcd sends a keep-alive: its lease is
    /// renewed, or it learns that the lease is gone.
    fn renew_or_lose_lease(&self, s: &mut State, i: usize) {
        if !s.members[i].connected || s.members[i].paused {
            return;
        }
        let lease = s.members[i].lease;
        let alive = lease.and_then(|l| s.etcd.leases.get(&l).copied());
        match (lease, alive) {
            (Some(l), Some(_)) => {
                s.etcd.leases.insert(l, s.now + self.timing.ttl);
                let now = s.now;
                self.feed_member(s, i, MemberEvent::KeepAliveAcked { sent_at: Time(now) });
            }
            (Some(_), None) => self.feed_member(s, i, MemberEvent::LeaseLost),
            (None, _) => {}
        }
    }

    /// etcd is down for longer than the lease TTL, then comes back from the
    /// snapshot taken after the bootstrap.
    fn restore(&self, s: &mut State) {
        Self::use_fault(s, Fault::Restore);
        let down = self.timing.ttl + self.timing.down;
        s.now += down;
        // What follows needs time only for leases to run out: two more
        // units, whenever the restore came (it costs a large factor in
        // states otherwise); a fair continuation checks L1 beyond them.
        s.skipped = s.now.saturating_sub(self.horizon.saturating_sub(2));
        let now = s.now;
        // Leaders lose their watch and stop; txns in flight never land.
        s.txns.clear();
        for slot in &mut s.leaders {
            slot.l = None;
            slot.watch.clear();
        }
        // Pushes from before the restore reach members only as stale hints
        // of a route etcd no longer holds: the forged-pushes configurations
        // cover such pushes at any time, so they are dropped here.
        s.net.clear();
        // No keep-alive was answered: every member has fenced itself, and
        // the LBs' checks have marked what they served down.
        for i in 0..self.members {
            if !s.members[i].paused {
                self.feed_member(s, i, MemberEvent::Tick);
            }
        }
        let d = ms(self.timing.down);
        for slot in &mut s.members {
            if let LbTarget::Serve(setup) = slot.lb.admin {
                let routable = !slot.paused
                    && slot
                        .m
                        .as_ref()
                        .is_some_and(|m| m.view().routable(setup, Time(now), d));
                if !routable {
                    slot.lb.check_down = true;
                    slot.lb.down_by = None;
                }
            }
        }
        // etcd comes back as it was: its leases run for another TTL (lease
        // ids are random in etcd: none granted since is reused).
        let Some(mut snap) = s.snapshot.take() else {
            return;
        };
        for exp in snap.leases.values_mut() {
            *exp = now + self.timing.ttl;
        }
        snap.next_lease = s.etcd.next_lease;
        s.etcd = snap;
        // Every watch broke: each member's driver opens it again and reads
        // the link; reads in flight are answered by the restored etcd.
        let (route, rev) = (
            s.etcd.route.as_ref().map(|(r, _)| r.clone()),
            s.etcd.route_changed,
        );
        for slot in &mut s.members {
            slot.watch.clear();
            for read in &mut slot.reads {
                read.1 = route.clone();
                read.2 = rev;
            }
            if slot.m.is_some() && slot.lease.is_some() && !slot.registering {
                slot.resync = true;
            }
        }
        // Keep-alives flow again: a lease the snapshot holds is renewed
        // (the fence lifts, and the member reads the link again before it
        // serves); one it does not is lost (the member registers anew).
        for i in 0..self.members {
            self.renew_or_lose_lease(s, i);
        }
    }

    /// An LB command takes effect. `state ready` (with health forced up)
    /// makes the server UP at once, whatever its checks said before.
    fn land(lb: &mut Lb, target: LbTarget) {
        lb.admin = target;
        if matches!(target, LbTarget::Serve(_)) {
            lb.check_down = false;
            lb.down_by = None;
        }
    }

    fn take_txn(&self, s: &mut State, c: usize, token: Token) -> Txn {
        let k = s
            .txns
            .iter()
            .position(|t| t.cand == c && t.token == token)
            .expect("txn in flight");
        s.txns.remove(k)
    }

    fn deliver(&self, s: &mut State, msg: Msg) {
        match msg {
            Msg::Push { from, to, push } => {
                let req = req_id(from, push.token, push.phase);
                self.feed_member(s, to, MemberEvent::Peer { req, push });
            }
            Msg::Reply {
                to,
                token,
                from,
                epoch,
                phase,
                setup,
            } => {
                if s.leaders.get(to).is_some_and(|l| l.token == token) {
                    let member = self.member_id(from);
                    self.feed_leader(
                        s,
                        to,
                        LeaderEvent::PeerReplied {
                            member,
                            applied: Applied {
                                epoch,
                                phase,
                                setup,
                            },
                        },
                    );
                }
            }
            grant @ (Msg::GrantAsk { .. } | Msg::Granted { .. }) => {
                if let Some((to, ev)) = self.grant_event(&grant) {
                    self.feed_member(s, to, ev);
                }
            }
        }
    }

    /// A grant message as the event its receiver gets, and who that is.
    fn grant_event(&self, msg: &Msg) -> Option<(usize, MemberEvent)> {
        match msg {
            Msg::GrantAsk {
                from,
                to,
                epoch,
                setup,
                sent_at,
            } => Some((
                *to,
                MemberEvent::GrantAsked {
                    req: grant_req(*from, *sent_at),
                    ask: GrantAsk {
                        from: self.member_id(*from),
                        epoch: *epoch,
                        setup: *setup,
                    },
                },
            )),
            Msg::Granted {
                to,
                from,
                lease,
                epoch,
                setup,
                sent_at,
            } => Some((
                *to,
                MemberEvent::GrantAnswered {
                    from: self.member_id(*from),
                    sent_at: Time(*sent_at),
                    result: Ok(Granted {
                        lease: *lease,
                        epoch: *epoch,
                        setup: *setup,
                    }),
                },
            )),
            Msg::Push { .. } | Msg::Reply { .. } => None,
        }
    }

    // ---- the initial state ----

    /// A link bootstrapped to hot by candidate 0 through the protocol
    /// itself, then a forced failover to warm requested.
    fn genesis(&self) -> State {
        let mut s = State {
            now: 0,
            etcd: Etcd {
                rev: 0,
                leader: None,
                route: None,
                members: BTreeMap::new(),
                leases: BTreeMap::new(),
                next_lease: 1,
                request: None,
                completed: None,
                history_epoch: None,
                route_changed: 0,
            },
            members: (0..self.members)
                .map(|i| MemberSlot {
                    m: None,
                    lease: None,
                    connected: true,
                    paused: false,
                    registering: false,
                    watch: VecDeque::new(),
                    reads: VecDeque::new(),
                    resync: false,
                    lb_cmd: None,
                    leading: false,
                    record: self.fresh_record(i),
                    record_dirty: false,
                    lb: Lb {
                        admin: LbTarget::Blocked,
                        check_down: false,
                        down_by: None,
                    },
                })
                .collect(),
            leaders: (0..self.candidates)
                .map(|_| LeaderSlot {
                    l: None,
                    token: 0,
                    watch: VecDeque::new(),
                    wrote: None,
                })
                .collect(),
            txns: Vec::new(),
            net: BTreeSet::new(),
            used: BTreeMap::new(),
            s2: None,
            snapshot: None,
            written: BTreeSet::new(),
            issued_until: BTreeMap::new(),
            order: None,
            skipped: 0,
            roster_gone_since: None,
        };
        for i in 0..self.members {
            self.step(&mut s, Action::RestartMember(i));
        }
        self.step(&mut s, Action::Campaign(0));
        let bootstrapped = |s: &State| {
            s.etcd
                .route
                .as_ref()
                .is_some_and(|(r, _)| r.phase == Phase::Serve && r.setup == Setup::Hot)
                && s.members
                    .iter()
                    .all(|m| m.lb.serving() == Some(Setup::Hot) && !m.record_dirty)
                && s.leaders[0].l.as_ref().is_some_and(|l| !l.switching())
                && s.leaders[0].watch.is_empty()
                && s.net.is_empty()
                && s.txns.is_empty()
                // Failsafe: the leader has listed every member.
                && s.etcd.route.as_ref().is_some_and(|(r, _)| {
                    !self.failsafe || r.roster.len() == self.members
                })
        };
        self.run_fair(&mut s, bootstrapped, 1000)
            .expect("the link bootstraps to hot");
        assert_eq!(s.now, 0, "bootstrap needs no time");
        s.etcd.rev += 1;
        let rev = s.etcd.rev;
        let request = Request {
            id: REQUEST_ID.into(),
            kind: if self.handover {
                RequestKind::Switchover
            } else {
                RequestKind::Failover
            },
            to: TARGET,
            force: !self.handover,
            reason: "model".into(),
            requested_by: "model".into(),
            by_note: String::new(),
            at: String::new(),
            deadline_ms: None,
            not_before_ms: None,
            grace_ms: None,
        };
        s.etcd.request = Some((request.clone(), rev));
        Self::notify_leaders(
            &mut s,
            LeaderWatch::Event(LeaderEvent::RequestPut { request, rev }),
        );
        if self.faults.restore > 0 {
            s.snapshot = Some(s.etcd.clone());
        }
        if self.restarted_at_start {
            // A restart after a graceful stop: the stop blocked alice's LB,
            // then revoked her lease, so her key is gone and she registers
            // at once.
            self.step(
                &mut s,
                Action::CrashMember {
                    member: 0,
                    landed: false,
                },
            );
            Self::land(&mut s.members[0].lb, LbTarget::Blocked);
            if let Some(lease) = s.members[0].lease.take() {
                s.etcd.leases.insert(lease, s.now);
                self.expire_leases(&mut s);
            }
            self.step(&mut s, Action::RestartMember(0));
            s.used.clear();
        }
        for i in 0..self.cut_at_start {
            self.step(&mut s, Action::Partition(i));
            s.used.clear();
        }
        s
    }

    /// Runs without faults, recoveries or a horizon, always taking the first
    /// progress action, until `done` holds. Returns the steps taken.
    pub fn run_fair(
        &self,
        s: &mut State,
        done: impl Fn(&State) -> bool,
        max_steps: usize,
    ) -> Result<usize, String> {
        let unbounded = LinkModel {
            horizon: u64::MAX,
            ..self.clone()
        };
        let mut acts = Vec::new();
        for n in 0..max_steps {
            if done(s) {
                return Ok(n);
            }
            acts.clear();
            unbounded.enabled(s, &mut acts);
            let Some(a) = acts.iter().find(|a| a.is_progress()) else {
                return Err(format!("stuck after {n} fault-free steps"));
            };
            unbounded.step(s, a.clone());
        }
        Err(format!("not done after {max_steps} fault-free steps"))
    }

    /// L1, bounded: where the explored run stops making progress on its
    /// own, the switch is complete, or (when the horizon cut time short) a
    /// fault-free continuation completes it.
    pub fn l1(&self, s: &State) -> bool {
        // Failsafe: with every member cut from etcd nothing can switch
        // (by design) until one is back; heals are free, not owed.
        if self.failsafe && s.members.iter().all(|m| m.m.is_none() || !m.connected) {
            return true;
        }
        let mut acts = Vec::new();
        self.enabled(s, &mut acts);
        if acts.iter().any(|a| a.is_progress()) || self.complete(s) {
            return true;
        }
        if s.now - s.skipped < self.horizon {
            return false;
        }
        let mut t = s.clone();
        self.run_fair(&mut t, |t| self.complete(t), 2000).is_ok()
    }

    /// Some member's lease has gone stale and its LB still serves, on
    /// grants.
    pub fn serving_on_grants(&self, s: &State) -> bool {
        s.members.iter().any(|slot| Self::on_grants(s, slot))
    }

    /// Every member's LB serves on grants past its lease.
    pub fn all_serving_on_grants(&self, s: &State) -> bool {
        s.members.iter().all(|slot| Self::on_grants(s, slot))
    }

    fn on_grants(s: &State, slot: &MemberSlot) -> bool {
        slot.lb.serving().is_some()
            && slot
                .m
                .as_ref()
                .is_some_and(|m| m.view().on_grants(Time(s.now)).is_some())
    }

    /// One line per state of a path, for counterexamples.
    pub fn summary(&self, s: &State) -> String {
        let mut out = format!("t={} ", s.now);
        match &s.etcd.route {
            Some((r, rev)) => {
                let _ = write!(out, "route={}/{}:{}@{} ", r.epoch, r.phase, r.setup, rev);
            }
            None => out.push_str("route=- "),
        }
        let _ = write!(out, "leader={:?} lbs=[", s.etcd.leader.map(|(_, t)| t));
        for (i, slot) in s.members.iter().enumerate() {
            let lb = match slot.lb.serving() {
                Some(x) => x.to_string(),
                None => "-".into(),
            };
            let up = match (&slot.m, slot.paused) {
                (None, _) => "†",
                (Some(_), true) => "⏸",
                (Some(_), false) => "",
            };
            // A serve in flight may already route (S1 counts it).
            let pending = match slot.lb_cmd.as_ref() {
                Some(c) => match (c.target, c.enable_before) {
                    (LbTarget::Serve(x), Some(d)) => format!("(→{x} before t={d})"),
                    (LbTarget::Serve(x), None) => format!("(→{x})"),
                    (LbTarget::Blocked, _) => "(→-)".into(),
                },
                None => String::new(),
            };
            let _ = write!(out, "{}{}:{}{} ", self.member_id(i), up, lb, pending);
        }
        out.push(']');
        out
    }

    pub fn trace(&self, path: &stateright::Path<State, Action>) -> String {
        let mut out = String::new();
        for (k, (state, action)) in path.clone().into_vec().into_iter().enumerate() {
            let _ = writeln!(out, "{k:>3} {}", self.summary(&state));
            if let Some(a) = action {
                let _ = writeln!(out, "      -> {a:?}");
            }
        }
        out
    }
}

impl Model for LinkModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![self.genesis()]
    }

    fn actions(&self, s: &State, out: &mut Vec<Action>) {
        self.enabled(s, out);
    }

    fn next_state(&self, s: &State, action: Action) -> Option<State> {
        let mut next = s.clone();
        self.step(&mut next, action);
        if self.handover {
            // An issuing LB that stopped routing in this step: the time
            // after the step is the latest it may have handed out a key.
            for i in (0..self.members).filter(|&i| self.role(i) == Role::Alice) {
                if s.members[i].lb.serving().is_some() && next.members[i].lb.serving().is_none() {
                    next.issued_until.insert(i, next.now);
                }
            }
        }
        Some(next)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("S1 no two LBs serve different setups", |_, s: &State| {
                LinkModel::s1(s)
            }),
            Property::always(
                "S2 no write or push under a stale token or step",
                |_, s: &State| s.s2.is_none(),
            ),
            Property::always(
                "H the receiving end drains only after the issuing end's confirmed blocks plus the grace",
                |_, s: &State| s.order.is_none(),
            ),
            Property::always(
                "L1 once faults stop, the switch completes",
                |m: &LinkModel, s: &State| m.l1(s),
            ),
            Property::sometimes("the switch completes", |m: &LinkModel, s: &State| {
                m.complete(s)
            }),
            Property::sometimes(
                FAILSAFE_SERVES,
                |m: &LinkModel, s: &State| !m.failsafe || m.serving_on_grants(s),
            ),
            Property::sometimes(
                FAILSAFE_ALL_SERVE,
                |m: &LinkModel, s: &State| !m.failsafe || m.all_serving_on_grants(s),
            ),
        ]
    }
}
