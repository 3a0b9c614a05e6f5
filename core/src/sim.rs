//! A deterministic in-memory link for protocol tests: one etcd (a
//! linearizable map with revisions), leaders and members driven by the real
//! state machines, etcd watches delivered in order, gRPC messages delivered
//! in any order, LBs that apply instantly. A seed picks every interleaving;
//! S1 is checked after every step.

use crate::leader::*;
use crate::member::*;
use crate::policy::{Request, RequestKind};
use crate::time::{Duration, Time};
use crate::types::*;
use std::collections::{BTreeMap, VecDeque};

/// Small deterministic PRNG (SplitMix64), so the core needs no rand crate.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Clone, Debug, Default)]
pub struct Etcd {
    pub rev: Rev,
    pub leader_token: Token,
    pub route: Option<(Route, Rev)>,
    pub members: BTreeMap<MemberId, (MemberRecord, Rev)>,
    pub request: Option<(Request, Rev)>,
    pub outcome: Option<RequestOutcome>,
    pub history: BTreeMap<Epoch, HistoryRecord>,
}

#[derive(Clone, Debug)]
enum Unordered {
    Peer(usize, MemberEvent),
    Reply(MemberId, Applied),
    Lb(usize, LbTarget),
    /// A route read a member asked for (answered with etcd as it is then).
    Read(usize, ReadId),
}

pub struct Sim {
    pub now: Time,
    pub etcd: Etcd,
    pub leader: Option<Leader>,
    pub members: Vec<Member>,
    pub lbs: Vec<LbTarget>,
    /// Per member: its etcd watch, in order.
    member_watch: Vec<VecDeque<(Route, Rev)>>,
    /// The leader's etcd watch, in order.
    leader_watch: VecDeque<LeaderEvent>,
    bag: Vec<Unordered>,
    rng: Rng,
    next_req: u64,
    /// Outstanding gRPC requests: id → member index.
    reqs: BTreeMap<u64, usize>,
    pub steps: u64,
    /// Handover for planned switches, for leaders elected from now on.
    pub handover: Option<HandoverConfig>,
}

pub fn member_config(id: &str, role: Role) -> MemberConfig {
    MemberConfig {
        id: id.into(),
        role,
        lease_ttl: Duration::from_secs(5),
        margin: Duration::from_secs(1),
        lb_down_bound: Duration::from_millis(1300),
        lb_retry: Duration::from_millis(200),
        failsafe: None,
    }
}

impl Sim {
    /// A link with `n` members (alternating alice, bob), registered and
    /// synced on an empty etcd, and a leader elected with token 1.
    pub fn new(n: usize, seed: u64) -> Sim {
        let mut sim = Sim {
            now: Time::ZERO,
            etcd: Etcd::default(),
            leader: None,
            members: Vec::new(),
            lbs: Vec::new(),
            member_watch: Vec::new(),
            leader_watch: VecDeque::new(),
            bag: Vec::new(),
            rng: Rng::new(seed),
            next_req: 1,
            reqs: BTreeMap::new(),
            steps: 0,
            handover: None,
        };
        for i in 0..n {
            let role = if i % 2 == 0 { Role::Alice } else { Role::Bob };
            let id = format!("{}-{}", role, i / 2);
            let mut m = Member::new(member_config(&id, role), sim.now);
            sim.etcd.rev += 1;
            let record = MemberRecord {
                role,
                grpc: id.clone(),
                applied: None,
                lb: None,
                health: crate::health::RoleHealth {
                    hot: Health::Up,
                    warm: Health::Up,
                },
                behind: None,
            };
            sim.etcd.members.insert(id, (record, sim.etcd.rev));
            let read = sim.link_read();
            m.handle(
                sim.now,
                MemberEvent::Synced {
                    read,
                    lease_sent_at: sim.now,
                    lease: 1,
                },
            );
            sim.members.push(m);
            sim.lbs.push(LbTarget::Blocked);
            sim.member_watch.push(VecDeque::new());
        }
        for i in 0..n {
            sim.drain_member_actions(i);
        }
        sim.elect();
        sim
    }

    /// A new leader with the next token, started from a fresh snapshot.
    pub fn elect(&mut self) {
        self.etcd.rev += 1;
        self.etcd.leader_token = self.etcd.rev;
        self.leader_watch.clear();
        let mut l = Leader::new(
            LeaderConfig {
                id: "leader".into(),
                token: self.etcd.leader_token,
                wall_ms_at_start: 0,
                initial_setup: Setup::Hot,
                resend_every: Duration::from_millis(300),
                handover: self.handover,
                failsafe: None,
            },
            self.now,
        );
        let members = self.listing();
        l.handle(
            self.now,
            LeaderEvent::Start {
                route: self.etcd.route.clone(),
                members,
                request: self.etcd.request.clone(),
                paused: None,
                history_epoch: self.etcd.history.keys().next_back().copied(),
            },
        );
        self.leader = Some(l);
        self.drain_leader_actions();
    }

    /// The route and the floor, as a member's registration reads them.
    pub fn link_read(&self) -> LinkRead {
        let members = self
            .etcd
            .members
            .values()
            .filter_map(|(r, _)| r.applied.map(|a| a.epoch));
        let history = self.etcd.history.keys().next_back().copied();
        LinkRead {
            route: self.etcd.route.as_ref().map(|(r, _)| r.clone()),
            rev: self.etcd.rev,
            floor: members.chain(history).max().unwrap_or(0),
        }
    }

    fn listing(&self) -> Vec<Listed> {
        self.etcd
            .members
            .iter()
            .map(|(id, (record, rev))| Listed {
                id: id.clone(),
                record: record.clone(),
                rev: *rev,
                lease: 1,
            })
            .collect()
    }

    pub fn request(&mut self, to: Setup) {
        self.etcd.rev += 1;
        let request = Request {
            id: format!("req-{}", self.etcd.rev),
            kind: RequestKind::Switchover,
            to,
            force: false,
            reason: "test".into(),
            requested_by: "sim".into(),
            by_note: String::new(),
            at: String::new(),
            deadline_ms: None,
            not_before_ms: None,
            grace_ms: None,
        };
        self.etcd.request = Some((request.clone(), self.etcd.rev));
        self.leader_watch.push_back(LeaderEvent::RequestPut {
            request,
            rev: self.etcd.rev,
        });
    }

    fn member_index(&self, id: &str) -> Option<usize> {
        self.members.iter().position(|m| m.config().id == id)
    }

    fn drain_leader_actions(&mut self) {
        loop {
            let Some(l) = self.leader.as_mut() else {
                return;
            };
            let Some(action) = l.poll_action() else {
                return;
            };
            self.do_leader_action(action);
        }
    }

    fn do_leader_action(&mut self, action: LeaderAction) {
        let token = self.leader.as_ref().map_or(0, |l| l.token());
        match action {
            LeaderAction::WriteRoute {
                mut route,
                expect_route_rev,
                consume,
                history,
                list_members,
            } => {
                let current = self.etcd.route.as_ref().map_or(0, |(_, r)| *r);
                let event = if token != self.etcd.leader_token {
                    LeaderEvent::WriteFailed(WriteFailure::LostLeadership)
                } else if current != expect_route_rev {
                    LeaderEvent::WriteFailed(WriteFailure::Conflict)
                } else {
                    self.etcd.rev += 1;
                    let rev = self.etcd.rev;
                    route.at = format!("t{}", self.now.as_millis());
                    self.etcd.route = Some((route.clone(), rev));
                    if let Some((req_rev, outcome)) = consume {
                        if self
                            .etcd
                            .request
                            .as_ref()
                            .is_some_and(|(_, r)| *r == req_rev)
                        {
                            self.etcd.request = None;
                            self.leader_watch
                                .push_back(LeaderEvent::RequestDeleted { rev });
                        }
                        self.etcd.outcome = Some(outcome);
                    }
                    if let Some(h) = history {
                        self.etcd.history.insert(h.epoch, h);
                    }
                    for w in &mut self.member_watch {
                        w.push_back((route.clone(), rev));
                    }
                    self.leader_watch.push_back(LeaderEvent::RouteSeen {
                        route: route.clone(),
                        rev,
                    });
                    LeaderEvent::RouteWritten {
                        rev,
                        members: if list_members {
                            self.listing()
                        } else {
                            Vec::new()
                        },
                    }
                };
                if let Some(l) = self.leader.as_mut() {
                    l.handle(self.now, event);
                }
            }
            LeaderAction::ResolveRequest { rev, outcome } => {
                if self.etcd.request.as_ref().is_some_and(|(_, r)| *r == rev) {
                    self.etcd.rev += 1;
                    self.etcd.request = None;
                    self.etcd.outcome = Some(outcome);
                    self.leader_watch
                        .push_back(LeaderEvent::RequestDeleted { rev: self.etcd.rev });
                }
            }
            LeaderAction::WriteHistory(h) => {
                if token == self.etcd.leader_token {
                    self.etcd.history.insert(h.epoch, h);
                }
            }
            LeaderAction::Send { member, push, .. } => {
                if let Some(i) = self.member_index(&member) {
                    let req = self.next_req;
                    self.next_req += 1;
                    self.reqs.insert(req, i);
                    self.bag
                        .push(Unordered::Peer(i, MemberEvent::Peer { req, push }));
                }
            }
            LeaderAction::PauseLink { .. } | LeaderAction::PolicyNote { .. } => {}
            LeaderAction::StepDown { .. } => {
                self.leader = None;
            }
        }
    }

    fn drain_member_actions(&mut self, i: usize) {
        while let Some(action) = self.members[i].poll_action() {
            match action {
                MemberAction::ApplyLb { target, .. } => self.bag.push(Unordered::Lb(i, target)),
                MemberAction::WriteApplied(a) => {
                    let id = self.members[i].config().id.clone();
                    if let Some((record, rev)) = self.etcd.members.get_mut(&id) {
                        self.etcd.rev += 1;
                        record.applied = Some(a);
                        record.lb = Some(LbTarget::at(a.phase, a.setup));
                        *rev = self.etcd.rev;
                        let listed = Listed {
                            id,
                            record: record.clone(),
                            rev: *rev,
                            lease: 1,
                        };
                        self.leader_watch.push_back(LeaderEvent::MemberPut(listed));
                    }
                }
                MemberAction::Reply { req, result } => {
                    if self.reqs.remove(&req).is_some() {
                        if let Ok(applied) = result {
                            let id = self.members[i].config().id.clone();
                            self.bag.push(Unordered::Reply(id, applied));
                        }
                    }
                }
                MemberAction::ReadRoute(read) => self.bag.push(Unordered::Read(i, read)),
                MemberAction::Resync => {
                    let read = self.link_read();
                    self.members[i].handle(self.now, MemberEvent::Resynced(read));
                }
                // No failsafe in these runs: leases stay fresh.
                MemberAction::Register
                | MemberAction::RevokeLease
                | MemberAction::GrantReply { .. }
                | MemberAction::AskGrants { .. } => {}
            }
        }
    }

    /// S1: no two LBs serve different setups.
    pub fn check_s1(&self) -> Result<(), String> {
        let serving: Vec<Setup> = self.lbs.iter().filter_map(|t| t.serving()).collect();
        if serving.windows(2).any(|w| w[0] != w[1]) {
            return Err(format!(
                "S1 violated at step {}: LBs {:?}",
                self.steps, self.lbs
            ));
        }
        Ok(())
    }

    /// Delivers one pending item, chosen by the seed. False when idle.
    pub fn step(&mut self) -> bool {
        self.steps += 1;
        self.now = self.now + Duration::from_millis(1);
        // Leases stay fresh in these runs.
        for m in &mut self.members {
            m.handle(self.now, MemberEvent::KeepAliveAcked { sent_at: self.now });
        }
        let mut choices: Vec<usize> = Vec::new();
        for (i, w) in self.member_watch.iter().enumerate() {
            if !w.is_empty() {
                choices.push(i);
            }
        }
        let n = self.members.len();
        if !self.leader_watch.is_empty() {
            choices.push(n);
        }
        for k in 0..self.bag.len() {
            choices.push(n + 1 + k);
        }
        if choices.is_empty() {
            // Nothing to deliver: the leader's timer (a handover's grace, a
            // resend) is the only thing left to happen.
            let Some(due) = self.leader.as_ref().and_then(|l| l.poll_timeout()) else {
                return false;
            };
            self.now = self.now.max(due);
            if let Some(l) = self.leader.as_mut() {
                l.handle(self.now, LeaderEvent::Tick);
            }
            self.drain_leader_actions();
            return true;
        }
        let pick = choices[self.rng.below(choices.len())];
        if pick < n {
            if let Some((route, rev)) = self.member_watch[pick].pop_front() {
                self.members[pick].handle(self.now, MemberEvent::RouteSeen { route, rev });
                self.drain_member_actions(pick);
            }
        } else if pick == n {
            if let Some(ev) = self.leader_watch.pop_front() {
                if let Some(l) = self.leader.as_mut() {
                    l.handle(self.now, ev);
                }
            }
        } else {
            let item = self.bag.swap_remove(pick - n - 1);
            match item {
                Unordered::Peer(i, ev) => {
                    self.members[i].handle(self.now, ev);
                    self.drain_member_actions(i);
                }
                Unordered::Reply(member, applied) => {
                    if let Some(l) = self.leader.as_mut() {
                        l.handle(self.now, LeaderEvent::PeerReplied { member, applied });
                    }
                }
                Unordered::Read(i, read) => {
                    let (route, rev) = (
                        self.etcd.route.as_ref().map(|(r, _)| r.clone()),
                        self.etcd.rev,
                    );
                    self.members[i].handle(self.now, MemberEvent::RouteRead { read, route, rev });
                    self.drain_member_actions(i);
                }
                Unordered::Lb(i, target) => {
                    self.lbs[i] = target;
                    self.members[i].handle(self.now, MemberEvent::LbConfirmed { target });
                    self.drain_member_actions(i);
                }
            }
        }
        self.drain_leader_actions();
        true
    }

    /// Steps until nothing is pending, checking S1 after every step.
    pub fn run(&mut self, max_steps: u64) -> Result<(), String> {
        let start = self.steps;
        while self.step() {
            self.check_s1()?;
            if self.steps - start > max_steps {
                return Err(format!("no quiescence after {max_steps} steps"));
            }
        }
        Ok(())
    }

    /// Every LB serves `setup`.
    pub fn all_serve(&self, setup: Setup) -> bool {
        self.lbs.iter().all(|t| *t == LbTarget::Serve(setup))
    }
}
