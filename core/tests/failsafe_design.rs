//! The failsafe rule, checked as a design before it is built (issue:
//! failsafe; `docs/design.md`, "Failsafe when etcd is unreachable").
//!
//! Unlike `model_check.rs`, this explores an abstract model, not the real
//! `Member` and `Leader` machines (failsafe is not in them yet): members,
//! a route with its roster, leases, leadership, grants and LBs, with time
//! in whole units. It answers one question before any code is written:
//! which grant rule keeps S1 when members lose etcd, keep serving on each
//! other's grants, and a leader that sees etcd moves the link.
//!
//! * `the_roster_rule_never_splits_the_link`: every interleaving within
//!   the bounds keeps S1 under the rule of `docs/design.md`.
//! * `the_plain_membership_rule_splits_the_link`: the rule as first
//!   proposed (grants from "the last known membership", any registered
//!   member may lead) yields a counterexample: a member that registers
//!   while the others are cut from etcd leads and fails over while they
//!   keep serving the old setup on each other's grants.
//! * `granting_while_seeing_etcd_and_writing_while_bound_split_the_link`:
//!   dropping both "a member that sees etcd grants nothing" and "a grant
//!   binds its granter" yields a counterexample too (either alone is
//!   covered by the other).
//! * `granting_or_serving_below_a_write_in_flight_splits_the_link`: route
//!   writes land some time after they are sent, also after their writer
//!   lost etcd (etcd takes queued requests before it revokes a lease).
//!   Without the write floor (a process never grants, nor serves on
//!   grants, below an epoch it sent a write for), a leader cut with its
//!   roster write in flight steps down, grants the old epoch, and a member
//!   its landed write listed leads and fails over.
//!
//! Abstractions: an LB blocks the instant its member's deadline passes (D
//! is folded into the deadlines); keep-alives renew every unit while a
//! member reaches etcd; a cut from etcd is permanent within the horizon (a
//! healed member re-registers as a new incarnation, outside the roster
//! until a leader adds it); a cut leader steps down at once; pushes are
//! replaced by members applying what etcd says when they reach it, and the
//! leader's own member applying its writes when they land while it leads.

use stateright::{Checker, Model, Property};
use std::time::Instant;

const TTL: u8 = 3;
const GRANT: u8 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Rule {
    /// `docs/design.md`: grants from the serving route's roster; only
    /// roster members lead; a member that sees etcd grants nothing; a
    /// grant binds its granter (no campaign, no write) until it expires.
    Roster,
    /// The first proposal: grants from every member the asker last saw
    /// registered; any registered member may lead.
    Membership,
    /// The roster rule without "sees etcd, grants nothing" and without
    /// "a grant binds its granter".
    RosterUnbound,
    /// The roster rule without its write floor: a process whose write is
    /// in flight when it loses etcd grants, and serves on grants, for the
    /// epoch below that write.
    RosterUnfloored,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Setup {
    Hot,
    Warm,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Phase {
    Drain,
    Serve,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Route {
    epoch: u8,
    phase: Phase,
    setup: Setup,
    /// Bit i: member i is on the roster.
    roster: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct MemberState {
    registered: bool,
    /// Reaches etcd (false once cut).
    reach: bool,
    /// etcd's lease expiry; the member's own deadline is the same instant.
    lease_until: u8,
    /// The highest epoch this incarnation applied (confirmed by etcd).
    applied: u8,
    /// What its LB routes to: `(epoch, setup)`.
    serving: Option<(u8, Setup)>,
    /// The roster of the route it applied last.
    roster: u8,
    /// Members (bits) registered when it last reached etcd.
    known: u8,
    /// Grants held, from member j: `(epoch, expiry)`.
    held: Vec<Option<(u8, u8)>>,
    /// Until when a grant it gave binds it.
    bound_until: u8,
    /// The highest epoch its process sent a route write for.
    wrote: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    now: u8,
    route: Route,
    leader: Option<usize>,
    members: Vec<MemberState>,
    /// Members listed by the drain in progress (bits).
    listed: u8,
    /// Whether a failover to warm is wanted (the request).
    wanted: bool,
    cuts: u8,
    /// A route write sent and not yet landed, and its writer: etcd may
    /// apply it after the writer lost etcd (a frozen etcd takes queued
    /// requests before it revokes the writer's lease), never after another
    /// leader was elected.
    pending: Option<(usize, Route)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Action {
    Tick,
    Cut(usize),
    Register(usize),
    Apply(usize),
    Campaign(usize),
    WriteDrain,
    WriteServe,
    /// The leader adds every registered member to the roster (same setup).
    AddToRoster,
    /// etcd applies the pending write.
    Land,
    Grant {
        from: usize,
        to: usize,
    },
}

#[derive(Clone)]
struct Design {
    rule: Rule,
    /// Members 0 and 1 start registered, on the roster, serving hot; member
    /// 2 starts unregistered (a scale-out or a rescheduled pod).
    members: usize,
    horizon: u8,
    max_cuts: u8,
}

fn bit(i: usize) -> u8 {
    1 << i
}

impl Design {
    fn live(&self, s: &State, i: usize) -> bool {
        s.members[i].registered && s.now < s.members[i].lease_until
    }

    /// The members whose grants `i` needs to serve `(e, _)` past its lease.
    fn needed(&self, s: &State, i: usize, e: u8) -> u8 {
        let m = &s.members[i];
        let set = match self.rule {
            Rule::Membership => m.known,
            // The roster of the route it serves (the last it applied; a
            // member serves only what it applied).
            Rule::Roster | Rule::RosterUnbound | Rule::RosterUnfloored => {
                debug_assert_eq!(m.applied, e);
                m.roster
            }
        };
        set & !bit(i)
    }

    fn grants_cover(&self, s: &State, i: usize, e: u8) -> bool {
        let need = self.needed(s, i, e);
        (0..self.members)
            .filter(|&j| need & bit(j) != 0)
            .all(|j| s.members[i].held[j].is_some_and(|(ge, exp)| ge == e && s.now < exp))
    }

    /// Whether `i`'s LB may route: lease fresh, or failsafe grants cover it.
    fn routable(&self, s: &State, i: usize) -> bool {
        let m = &s.members[i];
        match m.serving {
            None => false,
            Some((e, _)) => {
                s.now < m.lease_until || (self.above_floor(s, i, e) && self.grants_cover(s, i, e))
            }
        }
    }

    /// LBs block the instant their member's deadline passes.
    fn settle(&self, s: &mut State) {
        for i in 0..self.members {
            if !self.routable(s, i) {
                s.members[i].serving = None;
            }
        }
        if let Some(l) = s.leader {
            if !s.members[l].reach || s.now >= s.members[l].lease_until {
                s.leader = None;
            }
        }
    }

    /// Whether `i` may grant or serve on grants for epoch `e`: not below
    /// an epoch its process wrote (that write may still land).
    fn above_floor(&self, s: &State, i: usize, e: u8) -> bool {
        self.rule == Rule::RosterUnfloored || s.members[i].wrote <= e
    }

    fn bound(&self, s: &State, i: usize) -> bool {
        self.rule != Rule::RosterUnbound && s.now < s.members[i].bound_until
    }
}

impl Model for Design {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let member = |i: usize| MemberState {
            registered: i < 2,
            reach: true,
            lease_until: if i < 2 { TTL } else { 0 },
            applied: if i < 2 { 1 } else { 0 },
            serving: (i < 2).then_some((1, Setup::Hot)),
            roster: 0b11,
            known: 0b11,
            held: vec![None; self.members],
            bound_until: 0,
            wrote: 0,
        };
        vec![State {
            now: 0,
            route: Route {
                epoch: 1,
                phase: Phase::Serve,
                setup: Setup::Hot,
                roster: 0b11,
            },
            leader: Some(0),
            members: (0..self.members).map(member).collect(),
            listed: 0,
            wanted: true,
            cuts: 0,
            pending: None,
        }]
    }

    fn actions(&self, s: &State, out: &mut Vec<Action>) {
        if s.now < self.horizon {
            out.push(Action::Tick);
        }
        for i in 0..self.members {
            let m = &s.members[i];
            if m.reach && s.cuts < self.max_cuts && m.registered {
                out.push(Action::Cut(i));
            }
            if !m.registered && m.reach {
                out.push(Action::Register(i));
            }
            if self.live(s, i) && m.reach && m.applied < s.route.epoch {
                out.push(Action::Apply(i));
            }
            let may_lead = match self.rule {
                Rule::Membership => true,
                Rule::Roster | Rule::RosterUnbound | Rule::RosterUnfloored => {
                    s.route.roster & bit(i) != 0
                }
            };
            if s.leader.is_none() && self.live(s, i) && m.reach && may_lead && !self.bound(s, i) {
                out.push(Action::Campaign(i));
            }
            for to in 0..self.members {
                let Some((e, x)) = m.serving else { continue };
                let sees_etcd = m.reach && s.now < m.lease_until;
                let may_grant = match self.rule {
                    Rule::RosterUnbound => true,
                    _ => !sees_etcd,
                };
                if to != i
                    && may_grant
                    && self.above_floor(s, i, e)
                    && m.applied == e
                    && s.members[to].serving == Some((e, x))
                    && s.members[to].held[i] != Some((e, s.now + GRANT))
                {
                    out.push(Action::Grant { from: i, to });
                }
            }
        }
        if s.pending.is_some() {
            out.push(Action::Land);
        }
        if let Some(l) = s.leader.filter(|_| s.pending.is_none()) {
            if !self.bound(s, l) {
                if s.route.phase == Phase::Serve && s.wanted && s.route.setup == Setup::Hot {
                    out.push(Action::WriteDrain);
                }
                if s.route.phase == Phase::Drain {
                    // Every listed member applied the drain or its key expired.
                    let done = (0..self.members)
                        .filter(|&j| s.listed & bit(j) != 0)
                        .all(|j| s.members[j].applied >= s.route.epoch || !self.live(s, j));
                    if done {
                        out.push(Action::WriteServe);
                    }
                }
                let registered: u8 = (0..self.members)
                    .filter(|&j| self.live(s, j))
                    .fold(0, |acc, j| acc | bit(j));
                if s.route.phase == Phase::Serve
                    && registered & !s.route.roster != 0
                    && self.rule != Rule::Membership
                {
                    out.push(Action::AddToRoster);
                }
            }
        }
    }

    fn next_state(&self, s: &State, action: Action) -> Option<State> {
        let mut n = s.clone();
        match action {
            Action::Tick => {
                n.now += 1;
                let live: u8 = (0..self.members)
                    .filter(|&j| n.members[j].registered && n.now <= n.members[j].lease_until)
                    .fold(0, |acc, j| acc | bit(j));
                for m in n.members.iter_mut() {
                    if m.reach && m.registered {
                        m.lease_until = n.now + TTL;
                        m.known = live;
                    }
                }
            }
            Action::Cut(i) => {
                n.members[i].reach = false;
                n.cuts += 1;
            }
            Action::Register(i) => {
                let m = &mut n.members[i];
                m.registered = true;
                m.lease_until = n.now + TTL;
                // Reads the route: applies it (serves it if it is a serve).
                m.applied = n.route.epoch;
                m.roster = n.route.roster;
                m.serving =
                    (n.route.phase == Phase::Serve).then_some((n.route.epoch, n.route.setup));
            }
            Action::Apply(i) => {
                let r = n.route;
                let m = &mut n.members[i];
                m.applied = r.epoch;
                m.roster = r.roster;
                m.serving = (r.phase == Phase::Serve).then_some((r.epoch, r.setup));
            }
            Action::Campaign(i) => {
                // A write of an earlier leadership fails from now on.
                n.leader = Some(i);
                n.pending = None;
            }
            Action::Land => {
                let (writer, r) = n.pending.take()?;
                n.route = r;
                // The drain's txn lists the members registered when it lands.
                if r.phase == Phase::Drain {
                    n.listed = (0..self.members)
                        .filter(|&j| self.live(&n, j))
                        .fold(0, |acc, j| acc | bit(j));
                }
                if r.phase == Phase::Serve && r.setup == Setup::Warm {
                    n.wanted = false;
                }
                // The writer's own member applies it at once only if it
                // still leads (it learns it from etcd's answer).
                if n.leader == Some(writer) {
                    let m = &mut n.members[writer];
                    m.applied = r.epoch;
                    m.roster = r.roster;
                    m.serving = (r.phase == Phase::Serve).then_some((r.epoch, r.setup));
                }
            }
            Action::WriteDrain => {
                let l = n.leader.expect("a leader");
                let r = Route {
                    epoch: n.route.epoch + 1,
                    phase: Phase::Drain,
                    setup: Setup::Warm,
                    roster: n.route.roster,
                };
                n.members[l].wrote = r.epoch;
                n.pending = Some((l, r));
            }
            Action::WriteServe => {
                let l = n.leader.expect("a leader");
                let roster = (0..self.members)
                    .filter(|&j| self.live(&n, j))
                    .fold(bit(l), |acc, j| acc | bit(j));
                let r = Route {
                    epoch: n.route.epoch,
                    phase: Phase::Serve,
                    setup: n.route.setup,
                    roster,
                };
                n.members[l].wrote = r.epoch;
                n.pending = Some((l, r));
            }
            Action::AddToRoster => {
                let l = n.leader.expect("a leader");
                let roster = (0..self.members)
                    .filter(|&j| self.live(&n, j))
                    .fold(n.route.roster | bit(l), |acc, j| acc | bit(j));
                let r = Route {
                    epoch: n.route.epoch + 1,
                    roster,
                    ..n.route
                };
                n.members[l].wrote = r.epoch;
                n.pending = Some((l, r));
            }
            Action::Grant { from, to } => {
                let e = n.members[from].serving.map(|(e, _)| e)?;
                let exp = n.now + GRANT;
                n.members[to].held[from] = Some((e, exp));
                n.members[from].bound_until = n.members[from].bound_until.max(exp);
            }
        }
        self.settle(&mut n);
        Some(n)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("S1 no two LBs serve different setups", |_, s: &State| {
                let mut seen = s.members.iter().filter_map(|m| m.serving.map(|(_, x)| x));
                match seen.next() {
                    None => true,
                    Some(x) => seen.all(|y| y == x),
                }
            }),
            Property::sometimes("failsafe keeps a cut member serving", |_, s: &State| {
                s.members
                    .iter()
                    .any(|m| !m.reach && m.serving.is_some() && s.now >= m.lease_until)
            }),
            Property::sometimes("the link fails over", |_, s: &State| {
                s.route.setup == Setup::Warm && s.route.phase == Phase::Serve
            }),
        ]
    }
}

fn design(rule: Rule) -> Design {
    Design {
        rule,
        members: 3,
        horizon: 8,
        max_cuts: 2,
    }
}

fn explore(rule: Rule) -> (Option<String>, usize) {
    let started = Instant::now();
    let checker = design(rule).checker().spawn_bfs().join();
    let s1 = checker
        .discovery("S1 no two LBs serve different setups")
        .map(|p| format!("{:#?}", p.into_actions()));
    println!(
        "{rule:?}: {} unique states, depth {}, {:.1} s; S1 counterexample: {}",
        checker.unique_state_count(),
        checker.max_depth(),
        started.elapsed().as_secs_f64(),
        s1.as_deref().unwrap_or("none")
    );
    for name in ["failsafe keeps a cut member serving", "the link fails over"] {
        assert!(
            checker.discovery(name).is_some(),
            "{rule:?}: never reached \"{name}\": the model is vacuous"
        );
    }
    (s1, checker.unique_state_count())
}

#[test]
fn the_roster_rule_never_splits_the_link() {
    let (s1, unique) = explore(Rule::Roster);
    assert!(
        s1.is_none(),
        "counterexample to S1: {}",
        s1.unwrap_or_default()
    );
    assert!(unique > 1_000, "the model explored almost nothing");
}

#[test]
fn the_plain_membership_rule_splits_the_link() {
    let (s1, _) = explore(Rule::Membership);
    assert!(s1.is_some(), "the first proposal should split the link");
}

#[test]
fn granting_or_serving_below_a_write_in_flight_splits_the_link() {
    let (s1, _) = explore(Rule::RosterUnfloored);
    assert!(
        s1.is_some(),
        "without the write floor a writer cut with its write in flight keeps the old epoch served"
    );
}

#[test]
fn granting_while_seeing_etcd_and_writing_while_bound_split_the_link() {
    let (s1, _) = explore(Rule::RosterUnbound);
    assert!(
        s1.is_some(),
        "without both guards a granter that sees etcd can move the link"
    );
}
