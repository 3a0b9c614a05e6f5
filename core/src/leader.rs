//! The leader state machine: runs one switch at a time, break-before-make.
//!
//! 1. Write `route = (e+1, drain, Y)` in a txn guarded by the fencing token;
//!    the same txn lists the members at the write's revision.
//! 2. Push `Drain` to each listed member; wait until each has applied
//!    `(e+1, drain)` (gRPC reply or its etcd record) or its key is gone
//!    (lease expired: that member has fenced itself).
//! 3. Write `route = (e+1, serve, Y)`; push `Serve`; the switch completes
//!    when every live member has applied it.
//!
//! The driver feeds [`LeaderEvent`]s (starting with `Start`, a snapshot of
//! the link read right after winning the election) and carries out
//! [`LeaderAction`]s. Only one route write is ever in flight. Any failed
//! write makes the leader step down: the driver re-reads everything under a
//! fresh election, which is always safe, whereas guessing whether a
//! timed-out write landed is not.

use crate::failover::{Decision, Policy};
use crate::health::{aggregate, RoleHealth, SetupHealth};
use crate::policy::{check_request, Pause, Request, RequestKind, Verdict};
use crate::time::{Duration, Time};
use crate::types::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// etcd revision.
pub type Rev = i64;

/// What a member publishes in its etcd key (bound to its lease).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberRecord {
    pub role: Role,
    /// Address peers dial for its `Peer` service.
    pub grpc: String,
    pub applied: Option<Applied>,
    /// What its LB was last confirmed to route to.
    pub lb: Option<LbTarget>,
    #[serde(default)]
    pub health: RoleHealth,
}

/// Why a switch happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SwitchKind {
    /// A brand-new link gets its first route.
    Bootstrap,
    /// A new leader found a switch left in drain and finishes it under a new
    /// epoch of its own.
    Redecide,
    Switchover,
    Failover,
    /// Decided by the failover policy: the active setup was unhealthy.
    AutoFailover,
    /// Decided by the failover policy: back to the primary setup.
    AutoFailback,
}

impl std::fmt::Display for SwitchKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SwitchKind::Bootstrap => "bootstrap",
            SwitchKind::Redecide => "redecide",
            SwitchKind::Switchover => "switchover",
            SwitchKind::Failover => "failover",
            SwitchKind::AutoFailover => "auto-failover",
            SwitchKind::AutoFailback => "auto-failback",
        })
    }
}

/// One record per transition, under `history/<epoch>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HistoryRecord {
    pub epoch: Epoch,
    pub from: Option<Setup>,
    pub to: Setup,
    pub kind: SwitchKind,
    pub reason: String,
    pub requested_by: String,
    pub leader: MemberId,
    pub token: Token,
    /// Wall-clock start, RFC 3339; filled in by the driver.
    #[serde(default)]
    pub started_at: String,
    /// From the drain write to the serve write: the outage of this switch.
    pub drain_ms: u64,
    /// From the start to every live member serving; 0 until complete.
    pub total_ms: u64,
    /// Members whose lease expired instead of acking the drain.
    pub fenced_members: Vec<MemberId>,
    /// "serving" when the serve is written, "complete" when all serve.
    pub outcome: String,
    #[serde(default)]
    pub request_id: Option<String>,
}

/// What happened to a manual request, under `outcome` (one request is
/// pending at a time, so one key suffices).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestOutcome {
    pub id: String,
    /// "started", "already", "rejected" or "complete".
    pub status: String,
    pub epoch: Epoch,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LeaderConfig {
    pub id: MemberId,
    pub token: Token,
    /// What a brand-new link serves first.
    pub initial_setup: Setup,
    /// How often unanswered Drain/Serve pushes are sent again.
    pub resend_every: Duration,
}

/// A member as the driver lists or watches it, with its key's mod_revision.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Listed {
    pub id: MemberId,
    pub record: MemberRecord,
    pub rev: Rev,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum WriteFailure {
    /// The leader key's create_revision is no longer our token.
    LostLeadership,
    /// The route or the request changed under us.
    Conflict,
    /// etcd did not answer; the write may or may not have landed.
    Unknown(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LeaderEvent {
    /// The link as read right after winning the election, at one revision.
    Start {
        route: Option<(Route, Rev)>,
        members: Vec<Listed>,
        request: Option<(Request, Rev)>,
        paused: Option<Pause>,
    },
    /// The pending `WriteRoute` landed at `rev`; for a drain, `members` is
    /// the member list read in the same txn.
    RouteWritten {
        rev: Rev,
        members: Vec<Listed>,
    },
    /// The pending `WriteRoute` (or `ResolveRequest`) failed.
    WriteFailed(WriteFailure),
    /// A route write seen on the watch.
    RouteSeen {
        route: Route,
        rev: Rev,
    },
    MemberPut(Listed),
    MemberDeleted {
        id: MemberId,
        rev: Rev,
    },
    RequestPut {
        request: Request,
        rev: Rev,
    },
    RequestDeleted {
        rev: Rev,
    },
    PauseChanged(Option<Pause>),
    /// A member answered a Drain or Serve push.
    PeerReplied {
        member: MemberId,
        applied: Applied,
    },
    Tick,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LeaderAction {
    /// Txn: if leader.create_revision == token and route.mod_revision ==
    /// `expect_route_rev` (0: absent) then put `route`; also delete the
    /// request `consume` (if its mod_revision matches) and put its outcome;
    /// put `history`; and if `list_members`, read the members prefix.
    /// Answer with `RouteWritten` or `WriteFailed`.
    WriteRoute {
        route: Route,
        expect_route_rev: Rev,
        consume: Option<(Rev, RequestOutcome)>,
        history: Option<HistoryRecord>,
        list_members: bool,
    },
    /// Guarded txn: delete the request if its mod_revision matches and put
    /// the outcome. Answer only on failure (`WriteFailed`).
    ResolveRequest { rev: Rev, outcome: RequestOutcome },
    /// Guarded put of a history record (completion of a switch).
    WriteHistory(HistoryRecord),
    SendDrain {
        member: MemberId,
        addr: String,
        epoch: Epoch,
        token: Token,
        setup: Setup,
    },
    SendServe {
        member: MemberId,
        addr: String,
        epoch: Epoch,
        token: Token,
        setup: Setup,
    },
    /// Pause the link (the failover policy hit its cap); guarded by the
    /// token like every leader write.
    PauseLink { reason: String },
    /// What the failover policy would do next and why; the driver publishes
    /// it for `lockstep status` when it changes.
    PolicyNote(String),
    /// Stop leading; the driver resigns and campaigns again.
    StepDown { reason: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Plan {
    epoch: Epoch,
    setup: Setup,
    from: Option<Setup>,
    kind: SwitchKind,
    reason: String,
    requested_by: String,
    request_id: Option<String>,
    started: Time,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum SwitchPhase {
    WritingDrain,
    Draining {
        waiting: BTreeSet<MemberId>,
        fenced: Vec<MemberId>,
        drain_written: Time,
        last_push: Time,
    },
    WritingServe {
        history: HistoryRecord,
    },
    Serving {
        waiting: BTreeSet<MemberId>,
        history: HistoryRecord,
        last_push: Time,
    },
}

/// A switch in progress.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Switch {
    plan: Plan,
    phase: SwitchPhase,
}

/// The leader state machine. Created on winning the election; dropped on
/// stepping down.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Leader {
    config: LeaderConfig,
    now: Time,
    started: bool,
    route: Option<Route>,
    route_rev: Rev,
    members: BTreeMap<MemberId, Listed>,
    request: Option<(Request, Rev)>,
    /// A request already resolved (or consumed) whose delete has not been
    /// seen yet, so it is not decided twice.
    resolving: Option<Rev>,
    paused: Option<Pause>,
    switch: Option<Switch>,
    write_in_flight: bool,
    stepped_down: bool,
    /// Automatic failover, when configured.
    policy: Option<Policy>,
    policy_note: String,
    actions: VecDeque<LeaderAction>,
    /// A deliberate break for the model checker's mutation tests.
    #[cfg(feature = "mutations")]
    mutation: Option<crate::mutation::Mutation>,
}

impl Leader {
    pub fn new(config: LeaderConfig, now: Time) -> Leader {
        Leader {
            config,
            now,
            started: false,
            route: None,
            route_rev: 0,
            members: BTreeMap::new(),
            request: None,
            resolving: None,
            paused: None,
            switch: None,
            write_in_flight: false,
            stepped_down: false,
            policy: None,
            policy_note: String::new(),
            actions: VecDeque::new(),
            #[cfg(feature = "mutations")]
            mutation: None,
        }
    }

    /// Breaks the protocol on purpose (model checker mutation tests only).
    #[cfg(feature = "mutations")]
    pub fn with_mutation(mut self, mutation: Option<crate::mutation::Mutation>) -> Self {
        self.mutation = mutation;
        self
    }

    /// Enables automatic failover with `policy`.
    pub fn with_policy(mut self, policy: Policy) -> Leader {
        self.policy = Some(policy);
        self
    }

    /// The failover policy's latest word.
    pub fn policy_note(&self) -> &str {
        &self.policy_note
    }

    pub fn token(&self) -> Token {
        self.config.token
    }

    pub fn route(&self) -> Option<&Route> {
        self.route.as_ref()
    }

    /// True while a switch is between its drain write and completion.
    pub fn switching(&self) -> bool {
        self.switch.is_some()
    }

    pub fn stepped_down(&self) -> bool {
        self.stepped_down
    }

    /// Health of `setup` aggregated over the live members.
    pub fn setup_health(&self, setup: Setup) -> SetupHealth {
        aggregate(
            self.members
                .values()
                .map(|l| (l.record.role, &l.record.health)),
            setup,
        )
    }

    #[must_use]
    pub fn poll_action(&mut self) -> Option<LeaderAction> {
        self.actions.pop_front()
    }

    #[must_use]
    pub fn poll_timeout(&self) -> Option<Time> {
        let resend = match &self.switch {
            Some(Switch {
                phase:
                    SwitchPhase::Draining { last_push, .. } | SwitchPhase::Serving { last_push, .. },
                ..
            }) => Some(*last_push + self.config.resend_every),
            _ => None,
        };
        let policy = self.policy.as_ref().and_then(|p| p.next_deadline(self.now));
        match (resend, policy) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn handle(&mut self, now: Time, event: LeaderEvent) {
        if self.stepped_down {
            return;
        }
        self.now = self.now.max(now);
        match event {
            LeaderEvent::Start {
                route,
                members,
                request,
                paused,
            } => {
                self.started = true;
                if let Some((r, rev)) = route {
                    self.route = Some(r);
                    self.route_rev = rev;
                }
                self.members = members.into_iter().map(|l| (l.id.clone(), l)).collect();
                self.request = request;
                self.paused = paused;
                if let Some(r) = &self.route {
                    if r.token > self.config.token {
                        self.step_down(format!(
                            "route was written by a newer leader (token {} > ours {})",
                            r.token, self.config.token
                        ));
                        return;
                    }
                }
            }
            LeaderEvent::RouteWritten { rev, members } => self.on_route_written(rev, members),
            LeaderEvent::WriteFailed(f) => {
                self.write_in_flight = false;
                let reason = match f {
                    WriteFailure::LostLeadership => "leader key no longer carries our token".into(),
                    WriteFailure::Conflict => "route or request changed under us".into(),
                    WriteFailure::Unknown(e) => format!("etcd write outcome unknown: {e}"),
                };
                self.step_down(reason);
                return;
            }
            LeaderEvent::RouteSeen { route, rev } => {
                if rev > self.route_rev && !self.write_in_flight {
                    self.step_down(format!(
                        "route changed at revision {rev} by token {}, not by us",
                        route.token
                    ));
                    return;
                }
            }
            LeaderEvent::MemberPut(listed) => self.on_member_put(listed),
            LeaderEvent::MemberDeleted { id, rev } => self.on_member_deleted(id, rev),
            LeaderEvent::RequestPut { request, rev } => {
                if self.request.as_ref().is_none_or(|(_, r)| rev > *r) {
                    self.request = Some((request, rev));
                }
            }
            LeaderEvent::RequestDeleted { rev } => {
                if self.request.as_ref().is_some_and(|(_, r)| rev > *r) {
                    self.request = None;
                }
                self.resolving = None;
            }
            LeaderEvent::PauseChanged(p) => self.paused = p,
            LeaderEvent::PeerReplied { member, applied } => self.on_ack(&member, applied),
            LeaderEvent::Tick => self.resend(),
        }
        if self.started {
            self.progress();
            self.decide();
        }
    }

    fn step_down(&mut self, reason: String) {
        if !self.stepped_down {
            self.stepped_down = true;
            self.actions.clear();
            self.actions.push_back(LeaderAction::StepDown { reason });
        }
    }

    fn on_member_put(&mut self, listed: Listed) {
        if let Some(old) = self.members.get(&listed.id) {
            if old.rev >= listed.rev {
                return;
            }
        }
        let applied = listed.record.applied;
        let id = listed.id.clone();
        self.members.insert(id.clone(), listed);
        if let Some(a) = applied {
            self.on_ack(&id, a);
        }
    }

    fn on_member_deleted(&mut self, id: MemberId, rev: Rev) {
        // A delete older than the record we hold (typically: the lease
        // expired, the member re-registered, and a txn listing showed the
        // new key before the watch delivered the delete) says nothing about
        // the member as it is now; it must not count as fenced.
        if self.members.get(&id).is_some_and(|l| l.rev > rev) {
            return;
        }
        self.members.remove(&id);
        if let Some(sw) = &mut self.switch {
            match &mut sw.phase {
                SwitchPhase::Draining {
                    waiting, fenced, ..
                } if waiting.contains(&id) => {
                    waiting.remove(&id);
                    fenced.push(id);
                }
                SwitchPhase::Serving { waiting, .. } => {
                    waiting.remove(&id);
                }
                _ => {}
            }
        }
    }

    fn on_ack(&mut self, member: &MemberId, applied: Applied) {
        if let Some(sw) = &mut self.switch {
            let epoch = sw.plan.epoch;
            match &mut sw.phase {
                SwitchPhase::Draining { waiting, .. }
                    if applied.step() >= Step::new(epoch, Phase::Drain) =>
                {
                    waiting.remove(member);
                }
                SwitchPhase::Serving { waiting, .. }
                    if applied.step() >= Step::new(epoch, Phase::Serve) =>
                {
                    waiting.remove(member);
                }
                _ => {}
            }
        }
    }

    fn on_route_written(&mut self, rev: Rev, listed: Vec<Listed>) {
        self.write_in_flight = false;
        self.route_rev = rev;
        let Some(sw) = &mut self.switch else {
            return;
        };
        let token = self.config.token;
        match &sw.phase {
            SwitchPhase::WritingDrain => {
                self.route = Some(route_of(&sw.plan, Phase::Drain, token));
                // The listing is authoritative at `rev`; later watch events
                // with higher revisions refine it.
                for l in listed {
                    let keep = self.members.get(&l.id).is_some_and(|old| old.rev > l.rev);
                    if !keep {
                        self.members.insert(l.id.clone(), l);
                    }
                }
                let drain = Step::new(sw.plan.epoch, Phase::Drain);
                #[allow(unused_mut)]
                let mut waiting: BTreeSet<MemberId> = self
                    .members
                    .values()
                    .filter(|l| l.record.applied.is_none_or(|a| a.step() < drain))
                    .map(|l| l.id.clone())
                    .collect();
                #[cfg(feature = "mutations")]
                if self.mutation == Some(crate::mutation::Mutation::SkipDrain) {
                    waiting.clear();
                }
                for id in &waiting {
                    if let Some(l) = self.members.get(id) {
                        self.actions.push_back(LeaderAction::SendDrain {
                            member: id.clone(),
                            addr: l.record.grpc.clone(),
                            epoch: sw.plan.epoch,
                            token,
                            setup: sw.plan.setup,
                        });
                    }
                }
                sw.phase = SwitchPhase::Draining {
                    waiting,
                    fenced: Vec::new(),
                    drain_written: self.now,
                    last_push: self.now,
                };
            }
            SwitchPhase::WritingServe { history } => {
                self.route = Some(route_of(&sw.plan, Phase::Serve, token));
                let history = history.clone();
                let serve = Step::new(sw.plan.epoch, Phase::Serve);
                let waiting: BTreeSet<MemberId> = self
                    .members
                    .values()
                    .filter(|l| l.record.applied.is_none_or(|a| a.step() < serve))
                    .map(|l| l.id.clone())
                    .collect();
                for id in &waiting {
                    if let Some(l) = self.members.get(id) {
                        self.actions.push_back(LeaderAction::SendServe {
                            member: id.clone(),
                            addr: l.record.grpc.clone(),
                            epoch: sw.plan.epoch,
                            token,
                            setup: sw.plan.setup,
                        });
                    }
                }
                sw.phase = SwitchPhase::Serving {
                    waiting,
                    history,
                    last_push: self.now,
                };
            }
            _ => {}
        }
    }

    fn resend(&mut self) {
        let token = self.config.token;
        let now = self.now;
        let resend_every = self.config.resend_every;
        let Some(sw) = &mut self.switch else {
            return;
        };
        let (waiting, last_push, serve) = match &mut sw.phase {
            SwitchPhase::Draining {
                waiting, last_push, ..
            } => (waiting, last_push, false),
            SwitchPhase::Serving {
                waiting, last_push, ..
            } => (waiting, last_push, true),
            _ => return,
        };
        if now < *last_push + resend_every {
            return;
        }
        *last_push = now;
        for id in waiting.iter() {
            if let Some(l) = self.members.get(id) {
                let (member, addr, epoch, setup) = (
                    id.clone(),
                    l.record.grpc.clone(),
                    sw.plan.epoch,
                    sw.plan.setup,
                );
                self.actions.push_back(if serve {
                    LeaderAction::SendServe {
                        member,
                        addr,
                        epoch,
                        token,
                        setup,
                    }
                } else {
                    LeaderAction::SendDrain {
                        member,
                        addr,
                        epoch,
                        token,
                        setup,
                    }
                });
            }
        }
    }

    /// Moves a switch on once its wait is over.
    fn progress(&mut self) {
        let Some(sw) = &mut self.switch else {
            return;
        };
        match &sw.phase {
            SwitchPhase::Draining {
                waiting,
                fenced,
                drain_written,
                ..
            } if waiting.is_empty() && !self.write_in_flight => {
                let route = route_of(&sw.plan, Phase::Serve, self.config.token);
                // The serve txn carries the history record, so every serve
                // in etcd has its record.
                let history = HistoryRecord {
                    epoch: sw.plan.epoch,
                    from: sw.plan.from,
                    to: sw.plan.setup,
                    kind: sw.plan.kind,
                    reason: sw.plan.reason.clone(),
                    requested_by: sw.plan.requested_by.clone(),
                    leader: self.config.id.clone(),
                    token: self.config.token,
                    started_at: String::new(),
                    drain_ms: self.now.since(*drain_written).as_millis() as u64,
                    total_ms: 0,
                    fenced_members: fenced.clone(),
                    outcome: "serving".into(),
                    request_id: sw.plan.request_id.clone(),
                };
                let partial = history.clone();
                sw.phase = SwitchPhase::WritingServe { history };
                self.write_in_flight = true;
                self.actions.push_back(LeaderAction::WriteRoute {
                    route,
                    expect_route_rev: self.route_rev,
                    consume: None,
                    history: Some(partial),
                    list_members: false,
                });
            }
            SwitchPhase::Serving {
                waiting, history, ..
            } if waiting.is_empty() => {
                let mut done = history.clone();
                done.total_ms = self.now.since(sw.plan.started).as_millis() as u64;
                done.outcome = "complete".into();
                self.actions.push_back(LeaderAction::WriteHistory(done));
                self.switch = None;
            }
            _ => {}
        }
    }

    /// Starts a switch when one is due and none is being written or drained.
    fn decide(&mut self) {
        if self.write_in_flight || self.stepped_down {
            return;
        }
        let busy = matches!(
            self.switch,
            Some(Switch {
                phase: SwitchPhase::WritingDrain
                    | SwitchPhase::Draining { .. }
                    | SwitchPhase::WritingServe { .. },
                ..
            })
        );
        if busy {
            return;
        }
        let Some(route) = self.route.clone() else {
            let setup = self.config.initial_setup;
            self.start_switch(
                setup,
                SwitchKind::Bootstrap,
                "first route of a new link".into(),
                self.config.id.clone(),
                None,
            );
            return;
        };
        if route.phase == Phase::Drain {
            // Left in drain by a previous leader: finish it under our own
            // epoch (members that drained already just ack again).
            self.start_switch(
                route.setup,
                SwitchKind::Redecide,
                format!("finishing epoch {} left in drain", route.epoch),
                self.config.id.clone(),
                None,
            );
            return;
        }
        let Some((request, rev)) = self.request.clone() else {
            self.consult_policy(&route);
            return;
        };
        if self.resolving == Some(rev) {
            return;
        }
        let health = self.setup_health(request.to);
        match check_request(&request, Some(&route), self.paused.as_ref(), &health) {
            Ok(Verdict::Go) => {
                let kind = match request.kind {
                    RequestKind::Switchover => SwitchKind::Switchover,
                    RequestKind::Failover => SwitchKind::Failover,
                };
                self.start_switch(
                    request.to,
                    kind,
                    request.reason.clone(),
                    request.requested_by.clone(),
                    Some((request, rev)),
                );
            }
            Ok(Verdict::AlreadyActive) => {
                self.resolving = Some(rev);
                self.actions.push_back(LeaderAction::ResolveRequest {
                    rev,
                    outcome: RequestOutcome {
                        id: request.id,
                        status: "already".into(),
                        epoch: route.epoch,
                        message: format!("{} already serves", request.to),
                    },
                });
            }
            Err(refused) => {
                self.resolving = Some(rev);
                self.actions.push_back(LeaderAction::ResolveRequest {
                    rev,
                    outcome: RequestOutcome {
                        id: request.id,
                        status: "rejected".into(),
                        epoch: route.epoch,
                        message: refused.to_string(),
                    },
                });
            }
        }
    }

    /// Asks the failover policy; starts the switch or pauses as it says.
    fn consult_policy(&mut self, route: &Route) {
        let Some(mut policy) = self.policy.take() else {
            return;
        };
        let active = (route.phase == Phase::Serve).then_some(route.setup);
        let hot = self.setup_health(Setup::Hot);
        let warm = self.setup_health(Setup::Warm);
        let decision = policy.evaluate(self.now, active, &hot, &warm, self.paused.is_some());
        self.policy = Some(policy);
        let note = match &decision {
            Decision::Hold { why } => why.clone(),
            Decision::Switch { to, evidence, .. } => format!("switching to {to}: {evidence}"),
            Decision::PauseSelf { reason } => reason.clone(),
        };
        if note != self.policy_note {
            self.policy_note = note.clone();
            self.actions.push_back(LeaderAction::PolicyNote(note));
        }
        match decision {
            Decision::Hold { .. } => {}
            Decision::Switch {
                to,
                failback,
                evidence,
            } => {
                let kind = if failback {
                    SwitchKind::AutoFailback
                } else {
                    SwitchKind::AutoFailover
                };
                self.start_switch(to, kind, evidence, "lockstep:auto".into(), None);
            }
            Decision::PauseSelf { reason } => {
                // Paused locally at once so the decision is not repeated
                // before the watch reports the write.
                self.paused = Some(Pause {
                    reason: reason.clone(),
                    requested_by: "lockstep:auto".into(),
                    at: String::new(),
                });
                self.actions.push_back(LeaderAction::PauseLink { reason });
            }
        }
    }

    fn start_switch(
        &mut self,
        setup: Setup,
        kind: SwitchKind,
        reason: String,
        requested_by: String,
        request: Option<(Request, Rev)>,
    ) {
        let epoch = self.route.as_ref().map_or(0, |r| r.epoch) + 1;
        let from = self
            .route
            .as_ref()
            .filter(|r| r.phase == Phase::Serve)
            .map(|r| r.setup)
            .or_else(|| self.switch.as_ref().map(|s| s.plan.setup));
        let plan = Plan {
            epoch,
            setup,
            from,
            kind,
            reason,
            requested_by,
            request_id: request.as_ref().map(|(r, _)| r.id.clone()),
            started: self.now,
        };
        let consume = request.map(|(r, rev)| {
            self.resolving = Some(rev);
            (
                rev,
                RequestOutcome {
                    id: r.id,
                    status: "started".into(),
                    epoch,
                    message: format!("switching to {setup} at epoch {epoch}"),
                },
            )
        });
        // A link's first route is no flap: it starts no dwell.
        if let (Some(p), false) = (&mut self.policy, kind == SwitchKind::Bootstrap) {
            let automatic = matches!(kind, SwitchKind::AutoFailover | SwitchKind::AutoFailback);
            p.switched(self.now, automatic);
        }
        let route = route_of(&plan, Phase::Drain, self.config.token);
        self.switch = Some(Switch {
            plan,
            phase: SwitchPhase::WritingDrain,
        });
        self.write_in_flight = true;
        self.actions.push_back(LeaderAction::WriteRoute {
            route,
            expect_route_rev: self.route_rev,
            consume,
            history: None,
            list_members: true,
        });
    }
}

fn route_of(plan: &Plan, phase: Phase, token: Token) -> Route {
    Route {
        epoch: plan.epoch,
        phase,
        setup: plan.setup,
        token,
        reason: plan.reason.clone(),
        requested_by: plan.requested_by.clone(),
        at: String::new(),
    }
}
