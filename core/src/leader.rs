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
//! A planned switch with a handover starts with `route = (e+1, hold, Y)`:
//! the issuing end's members block (no new keys) while the receiving end
//! keeps the old setup; once every issuing member has *confirmed* its block
//! (or its lease expired) and the grace has passed, the drain follows, so
//! keys issued just before the switch can still be fetched at the
//! receiving end.
//!
//! Epochs never go backwards: a new route's epoch is above the route's,
//! every member's applied epoch and the newest history record's. A route
//! that is missing while members report applied state, or below what they
//! applied (an old etcd snapshot restored, an operator's delete), is never
//! built on: the leader re-establishes the link (a full drain, then serve,
//! at a fresh epoch) to the setup the members serve, and records
//! `route-lost`.
//!
//! The driver feeds [`LeaderEvent`]s (starting with `Start`, a snapshot of
//! the link read right after winning the election) and carries out
//! [`LeaderAction`]s. Only one route write is ever in flight. Any failed
//! write makes the leader step down: the driver re-reads everything under a
//! fresh election, which is always safe, whereas guessing whether a
//! timed-out write landed is not.

use crate::failover::{Decision, Policy};
use crate::failsafe::{may_lead, FailsafeConfig};
use crate::health::{aggregate, RoleHealth, SetupHealth};
use crate::link::{link_state, LinkState, MemberLb};
use crate::member::Behind;
use crate::policy::{check_request, Pause, Request, RequestKind, Verdict};
use crate::time::{Duration, Time};
use crate::types::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// What a member publishes in its etcd key (bound to its lease).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberRecord {
    pub role: Role,
    /// Address peers dial for its `Peer` service.
    pub grpc: String,
    pub applied: Option<Applied>,
    /// What its LB was last confirmed (read back) to route to; `None`
    /// while that is not known.
    pub lb: Option<LbTarget>,
    #[serde(default)]
    pub health: RoleHealth,
    /// etcd's route is below what this member applied (lost or rolled
    /// back): the member is blocked until the leader re-establishes it.
    #[serde(default)]
    pub behind: Option<Behind>,
}

/// What a history record is about: why a switch happened, or what else
/// the leader recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HistoryKind {
    /// A brand-new link gets its first route.
    Bootstrap,
    /// A new leader found a switch left in drain and finishes it under a new
    /// epoch of its own.
    Redecide,
    /// etcd's route was missing or below what members had applied (an old
    /// snapshot restored, an operator's delete): the link is re-established
    /// at a fresh epoch.
    RouteLost,
    Switchover,
    Failover,
    /// Decided by the failover policy: the active setup was unhealthy.
    AutoFailover,
    /// Decided by the failover policy: back to the primary setup.
    AutoFailback,
    /// A manual request reached its deadline before any leader carried it
    /// out; nothing moved.
    RequestExpired,
    /// The link was paused (by an operator, or by the failover policy's
    /// cap); nothing moved.
    Pause,
    /// The link was resumed; nothing moved.
    Resume,
    /// A scheduled request was refused at its time (paused, target
    /// unhealthy); nothing moved.
    RequestRefused,
    /// A member lost etcd and served on its peers' grants (failsafe);
    /// recorded by the member once etcd answered again.
    FailsafeEntered,
    /// The member's lease was fresh again (or its grants ran out): it left
    /// failsafe after `total_ms`.
    FailsafeLeft,
}

impl HistoryKind {
    /// Whether a record of this kind is a switch (it has its own epoch).
    pub fn is_switch(self) -> bool {
        !matches!(
            self,
            HistoryKind::RequestExpired
                | HistoryKind::RequestRefused
                | HistoryKind::Pause
                | HistoryKind::Resume
                | HistoryKind::FailsafeEntered
                | HistoryKind::FailsafeLeft
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            HistoryKind::Bootstrap => "bootstrap",
            HistoryKind::Redecide => "redecide",
            HistoryKind::RouteLost => "route-lost",
            HistoryKind::Switchover => "switchover",
            HistoryKind::Failover => "failover",
            HistoryKind::AutoFailover => "auto-failover",
            HistoryKind::AutoFailback => "auto-failback",
            HistoryKind::RequestExpired => "request-expired",
            HistoryKind::RequestRefused => "request-refused",
            HistoryKind::FailsafeEntered => "failsafe-entered",
            HistoryKind::FailsafeLeft => "failsafe-left",
            HistoryKind::Pause => "pause",
            HistoryKind::Resume => "resume",
        }
    }
}

impl std::fmt::Display for HistoryKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a switch (or request) recorded in the history ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryOutcome {
    /// The serve is written; members are applying it.
    Serving,
    /// Every live member serves the target.
    Complete,
    /// The request expired; nothing moved.
    Expired,
    /// The request was refused at its time; nothing moved.
    Refused,
    /// Recorded, nothing to carry out (a pause or a resume).
    Done,
}

impl std::fmt::Display for HistoryOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HistoryOutcome::Serving => "serving",
            HistoryOutcome::Complete => "complete",
            HistoryOutcome::Expired => "expired",
            HistoryOutcome::Refused => "refused",
            HistoryOutcome::Done => "done",
        })
    }
}

/// One record per transition, under `history/<epoch>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HistoryRecord {
    pub epoch: Epoch,
    pub from: Option<Setup>,
    pub to: Setup,
    pub kind: HistoryKind,
    pub reason: String,
    /// Who asked: the authenticated identity ("lockstep:auto" for the
    /// policy).
    pub requested_by: String,
    /// The client's free-text `--by` note, kept apart from the reason.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub by_note: String,
    pub leader: MemberId,
    pub token: Token,
    /// Wall-clock start, RFC 3339; filled in by the driver.
    #[serde(default)]
    pub started_at: String,
    /// From the drain write to the serve write: the outage of this switch.
    pub drain_ms: u64,
    /// From the hold write to the drain write (handover only): how much
    /// longer the issuing end was blocked than the receiving end.
    #[serde(default)]
    pub hold_ms: u64,
    /// The handover's grace (0: no handover).
    #[serde(default)]
    pub grace_ms: u64,
    /// From the start to every live member serving; 0 until complete.
    pub total_ms: u64,
    /// Members whose lease expired instead of acking the drain.
    pub fenced_members: Vec<MemberId>,
    pub outcome: HistoryOutcome,
    #[serde(default)]
    pub request_id: Option<String>,
}

impl HistoryRecord {
    /// Its key under `history/`: a switch's epoch, zero-padded so keys
    /// sort by epoch; a record that is no switch sorts after its epoch's
    /// switch (`.` sorts after the end of a key) and is told apart by its
    /// request; a pause or resume by its start time (RFC 3339 in UTC sorts
    /// as time does), so several in one epoch keep their order.
    pub fn key(&self) -> String {
        if self.kind.is_switch() {
            format!("{:020}", self.epoch)
        } else if matches!(
            self.kind,
            HistoryKind::Pause
                | HistoryKind::Resume
                | HistoryKind::FailsafeEntered
                | HistoryKind::FailsafeLeft
        ) {
            format!(
                "{:020}.at-{}-{}-{}",
                self.epoch,
                self.started_at,
                self.kind,
                self.request_id.as_deref().unwrap_or("-")
            )
        } else {
            format!(
                "{:020}.{}-{}",
                self.epoch,
                self.kind,
                self.request_id.as_deref().unwrap_or("-")
            )
        }
    }
}

/// What became of a manual request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestStatus {
    /// A switch to the target started.
    Started,
    /// Every LB already serves the target; nothing to do.
    Already,
    /// Refused (paused, target unhealthy); `message` says why.
    Rejected,
    /// Its deadline passed before any leader carried it out.
    Expired,
}

impl RequestStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Started => "started",
            RequestStatus::Already => "already",
            RequestStatus::Rejected => "rejected",
            RequestStatus::Expired => "expired",
        }
    }
}

impl std::fmt::Display for RequestStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened to a manual request, under `outcome` (one request is
/// pending at a time, so one key suffices).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestOutcome {
    pub id: String,
    pub status: RequestStatus,
    pub epoch: Epoch,
    pub message: String,
    /// Why it was rejected (with `Rejected`), for the caller's machine-
    /// readable reason; `None` in outcomes written before it existed.
    #[serde(default)]
    pub refused: Option<crate::policy::RefusedKind>,
}

/// Handover for planned switches: which end issues keys, and how long the
/// receiving end stays on the old setup after every issuing LB confirmed
/// its block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HandoverConfig {
    pub issuer: Role,
    pub grace: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LeaderConfig {
    pub id: MemberId,
    pub token: Token,
    /// Wall-clock time (Unix ms) at the leader's creation time `now`, so
    /// requests' wall-clock deadlines can be judged on the monotonic clock.
    pub wall_ms_at_start: u64,
    /// What a brand-new link serves first.
    pub initial_setup: Setup,
    /// How often unanswered Drain/Serve pushes are sent again.
    pub resend_every: Duration,
    /// `None`: both ends issue keys (or handover is off): planned switches
    /// drain everyone at once.
    pub handover: Option<HandoverConfig>,
    /// Failsafe on: routes carry the roster, and only a roster member leads.
    pub failsafe: Option<LeaderFailsafe>,
}

/// What a leader needs of failsafe (see `failsafe::may_lead`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LeaderFailsafe {
    pub config: FailsafeConfig,
    /// The leases this process has registered on.
    pub leases: Vec<Lease>,
    /// Since when the process has seen no roster incarnation's key live.
    pub roster_gone_since: Option<Time>,
    pub lb_down_bound: Duration,
}

/// A member as the driver lists or watches it, with its key's mod_revision.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Listed {
    pub id: MemberId,
    pub record: MemberRecord,
    pub rev: Rev,
    /// The lease the member's key lives on: its incarnation.
    pub lease: Lease,
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

// `Start` is large and comes once per leadership; boxing it would only add
// noise to every driver and test that builds one.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LeaderEvent {
    /// The link as read right after winning the election, at one revision.
    Start {
        route: Option<(Route, Rev)>,
        members: Vec<Listed>,
        request: Option<(Request, Rev)>,
        paused: Option<Pause>,
        /// The epoch of the newest history record.
        history_epoch: Option<Epoch>,
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
    /// The route key deleted, seen on the watch.
    RouteGone {
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

// `WriteRoute` carries a whole route and history record; one is queued at a
// time, so boxing it would only add noise to every driver and test.
#[allow(clippy::large_enum_variant)]
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
    /// Push a Drain or Serve to a member (a hint; it acts once etcd's route
    /// confirms it). Answered, if at all, with `PeerReplied`.
    Send {
        member: MemberId,
        addr: String,
        push: Push,
    },
    /// Pause the link (the failover policy hit its cap); guarded by the
    /// token like every leader write.
    /// The route's epoch and setup go in the pause's history record.
    PauseLink {
        reason: String,
        epoch: Epoch,
        setup: Setup,
    },
    /// What the failover policy would do next and why; the driver publishes
    /// it for `lockstep status` when it changes.
    PolicyNote {
        note: String,
        /// Neither setup is healthy: the link has nowhere to go.
        no_healthy_setup: bool,
    },
    /// Stop leading; the driver resigns and campaigns again.
    StepDown { reason: String },
}

/// A switch in progress as the driver sees it ([`Leader::current_switch`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SwitchInfo {
    pub epoch: Epoch,
    pub kind: HistoryKind,
    /// The setup served before, when there was one.
    pub from: Option<Setup>,
    pub to: Setup,
    pub reason: String,
    pub requested_by: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Plan {
    epoch: Epoch,
    setup: Setup,
    from: Option<Setup>,
    kind: HistoryKind,
    reason: String,
    requested_by: String,
    /// The request's `--by` note, for the history record.
    by_note: String,
    request_id: Option<String>,
    started: Time,
    handover: Option<Handover>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum SwitchPhase {
    WritingHold,
    /// Waiting for the issuing end's confirmed blocks.
    Holding {
        waiting: BTreeSet<MemberId>,
        fenced: Vec<MemberId>,
        hold_written: Time,
        last_push: Time,
    },
    /// Every issuing LB confirmed its block; the receiving end keeps the
    /// old setup until `until`.
    Grace {
        until: Time,
        fenced: Vec<MemberId>,
        hold_written: Time,
    },
    WritingDrain {
        fenced: Vec<MemberId>,
        hold_written: Option<Time>,
    },
    Draining {
        waiting: BTreeSet<MemberId>,
        fenced: Vec<MemberId>,
        hold_written: Option<Time>,
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
    /// `now` at creation, when the wall clock read `wall_ms_at_start`.
    started_at: Time,
    started: bool,
    route: Option<Route>,
    route_rev: Rev,
    members: BTreeMap<MemberId, Listed>,
    /// The epoch of the newest history record read at the start.
    history_epoch: Option<Epoch>,
    request: Option<(Request, Rev)>,
    /// A request already resolved (or consumed) whose delete has not been
    /// seen yet, so it is not decided twice.
    resolving: Option<Rev>,
    paused: Option<Pause>,
    switch: Option<Switch>,
    write_in_flight: bool,
    /// The route of the write in flight: etcd's route once it lands.
    written: Option<Route>,
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
            started_at: now,
            started: false,
            route: None,
            route_rev: 0,
            members: BTreeMap::new(),
            history_epoch: None,
            request: None,
            resolving: None,
            paused: None,
            switch: None,
            write_in_flight: false,
            written: None,
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

    /// The switch this leader is carrying out, if any: what it is and why,
    /// for the driver's notifications (`switch begun`, `failed`).
    pub fn current_switch(&self) -> Option<SwitchInfo> {
        self.switch.as_ref().map(|s| SwitchInfo {
            epoch: s.plan.epoch,
            kind: s.plan.kind,
            from: s.plan.from,
            to: s.plan.setup,
            reason: s.plan.reason.clone(),
            requested_by: s.plan.requested_by.clone(),
        })
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
                    SwitchPhase::Holding { last_push, .. }
                    | SwitchPhase::Draining { last_push, .. }
                    | SwitchPhase::Serving { last_push, .. },
                ..
            }) => Some(*last_push + self.config.resend_every),
            _ => None,
        };
        let grace = match &self.switch {
            Some(Switch {
                phase: SwitchPhase::Grace { until, .. },
                ..
            }) => Some(*until),
            _ => None,
        };
        let policy = self.policy.as_ref().and_then(|p| p.next_deadline(self.now));
        let expiry = self
            .request
            .as_ref()
            .and_then(|(r, _)| self.deadline_of(r))
            .filter(|t| *t > self.now);
        let due = self
            .request
            .as_ref()
            .and_then(|(r, _)| self.due_at(r))
            .filter(|t| *t > self.now);
        [resend, grace, policy, expiry, due]
            .into_iter()
            .flatten()
            .min()
    }

    /// A wall-clock instant (Unix ms) on the monotonic clock.
    fn at_wall_ms(&self, wall_ms: u64) -> Time {
        let wall_start = self.config.wall_ms_at_start;
        self.started_at + Duration::from_millis(wall_ms.saturating_sub(wall_start))
    }

    /// When `request` expires, on the monotonic clock.
    fn deadline_of(&self, request: &Request) -> Option<Time> {
        request.deadline_ms.map(|ms| self.at_wall_ms(ms))
    }

    /// When a scheduled `request` is due, on the monotonic clock.
    fn due_at(&self, request: &Request) -> Option<Time> {
        request.not_before_ms.map(|ms| self.at_wall_ms(ms))
    }

    /// What the link does, judged from every member's LB read-back.
    pub fn link(&self) -> LinkState {
        link_state(
            self.route.as_ref(),
            self.members.values().map(|l| MemberLb {
                id: l.id.clone(),
                role: l.record.role,
                applied: l.record.applied,
                lb: l.record.lb,
            }),
        )
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
                history_epoch,
            } => {
                self.started = true;
                if let Some((r, rev)) = route {
                    self.route = Some(r);
                    self.route_rev = rev;
                }
                self.members = members.into_iter().map(|l| (l.id.clone(), l)).collect();
                self.request = request;
                self.paused = paused;
                self.history_epoch = history_epoch;
                if let Some(r) = &self.route {
                    if r.token > self.config.token {
                        self.step_down(format!(
                            "route was written by a newer leader (token {} > ours {})",
                            r.token, self.config.token
                        ));
                        return;
                    }
                }
                // The campaign judged the route as the member last knew it;
                // the route read under the leadership is what counts.
                if let Some(fs) = &self.config.failsafe {
                    let may = may_lead(
                        Some(&fs.config),
                        self.route.as_ref(),
                        &self.config.id,
                        &fs.leases,
                        fs.roster_gone_since,
                        None,
                        fs.lb_down_bound,
                        self.now,
                    );
                    if let Err(bar) = may {
                        self.step_down(format!("may not lead: {bar}"));
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
            LeaderEvent::RouteGone { rev } => {
                if rev > self.route_rev {
                    self.step_down(format!("route deleted at revision {rev}, not by us"));
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
                }
                | SwitchPhase::Holding {
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

    /// An ack counts only for the epoch and setup this switch asked for.
    fn on_ack(&mut self, member: &MemberId, applied: Applied) {
        let Some(sw) = &mut self.switch else {
            return;
        };
        if applied.epoch != sw.plan.epoch || applied.setup != sw.plan.setup {
            return;
        }
        // A step counts for the wait of its own phase or an earlier one: a
        // hold ack says nothing about a drain (the receiving end still
        // serves the old setup at its hold).
        let wanted = match &sw.phase {
            SwitchPhase::Holding { .. } => Phase::Hold,
            SwitchPhase::Draining { .. } => Phase::Drain,
            SwitchPhase::Serving { .. } => Phase::Serve,
            _ => return,
        };
        if applied.phase < wanted {
            return;
        }
        match &mut sw.phase {
            SwitchPhase::Holding { waiting, .. }
            | SwitchPhase::Draining { waiting, .. }
            | SwitchPhase::Serving { waiting, .. } => {
                waiting.remove(member);
            }
            _ => {}
        }
    }

    /// Members whose record has not reached `step` of the current switch
    /// (at a hold: only the issuing end's).
    fn not_at(&self, step: Step, setup: Setup, issuer: Option<Role>) -> BTreeSet<MemberId> {
        self.members
            .values()
            .filter(|l| issuer.is_none_or(|r| l.record.role == r))
            .filter(|l| {
                l.record
                    .applied
                    .is_none_or(|a| a.epoch != step.epoch || a.setup != setup || a.step() < step)
            })
            .map(|l| l.id.clone())
            .collect()
    }

    fn push_to(&mut self, waiting: &BTreeSet<MemberId>, push: Push) {
        for id in waiting {
            if let Some(l) = self.members.get(id) {
                self.actions.push_back(LeaderAction::Send {
                    member: id.clone(),
                    addr: l.record.grpc.clone(),
                    push,
                });
            }
        }
    }

    fn on_route_written(&mut self, rev: Rev, listed: Vec<Listed>) {
        self.write_in_flight = false;
        self.route_rev = rev;
        if let Some(route) = self.written.take() {
            self.route = Some(route);
        }
        let Some(sw) = &self.switch else {
            return;
        };
        let token = self.config.token;
        let plan = sw.plan.clone();
        match &sw.phase {
            SwitchPhase::WritingHold | SwitchPhase::WritingDrain { .. } => {
                let (phase, issuer) = match &sw.phase {
                    SwitchPhase::WritingHold => (Phase::Hold, plan.handover.map(|h| h.issuer)),
                    _ => (Phase::Drain, None),
                };
                // The listing is authoritative at `rev`; later watch events
                // with higher revisions refine it.
                for l in listed {
                    let keep = self.members.get(&l.id).is_some_and(|old| old.rev > l.rev);
                    if !keep {
                        self.members.insert(l.id.clone(), l);
                    }
                }
                let push = plan.push(phase, token);
                #[allow(unused_mut)]
                let mut waiting = self.not_at(push.step(), plan.setup, issuer);
                #[cfg(feature = "mutations")]
                if self.mutation == Some(crate::mutation::Mutation::SkipDrain) {
                    waiting.clear();
                }
                self.push_to(&waiting, push);
                let now = self.now;
                if let Some(sw) = &mut self.switch {
                    sw.phase = match std::mem::replace(&mut sw.phase, SwitchPhase::WritingHold) {
                        SwitchPhase::WritingDrain {
                            fenced,
                            hold_written,
                        } => SwitchPhase::Draining {
                            waiting,
                            fenced,
                            hold_written,
                            drain_written: now,
                            last_push: now,
                        },
                        _ => SwitchPhase::Holding {
                            waiting,
                            fenced: Vec::new(),
                            hold_written: now,
                            last_push: now,
                        },
                    };
                }
            }
            SwitchPhase::WritingServe { history } => {
                let history = history.clone();
                let push = plan.push(Phase::Serve, token);
                let waiting = self.not_at(push.step(), plan.setup, None);
                self.push_to(&waiting, push);
                if let Some(sw) = &mut self.switch {
                    sw.phase = SwitchPhase::Serving {
                        waiting,
                        history,
                        last_push: self.now,
                    };
                }
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
        let (waiting, last_push, phase) = match &mut sw.phase {
            SwitchPhase::Holding {
                waiting, last_push, ..
            } => (waiting, last_push, Phase::Hold),
            SwitchPhase::Draining {
                waiting, last_push, ..
            } => (waiting, last_push, Phase::Drain),
            SwitchPhase::Serving {
                waiting, last_push, ..
            } => (waiting, last_push, Phase::Serve),
            _ => return,
        };
        if now < *last_push + resend_every {
            return;
        }
        *last_push = now;
        let (waiting, push) = (waiting.clone(), sw.plan.push(phase, token));
        self.push_to(&waiting, push);
    }

    /// Moves a switch on once its wait is over.
    fn progress(&mut self) {
        let now = self.now;
        let roster = self.roster();
        let Some(sw) = &mut self.switch else {
            return;
        };
        match &sw.phase {
            SwitchPhase::Holding {
                waiting,
                fenced,
                hold_written,
                ..
            } if waiting.is_empty() => {
                // Every issuing LB confirmed its block (or its member's lease
                // expired): the grace starts now.
                let grace = Duration::from_millis(sw.plan.handover.map_or(0, |h| h.grace_ms));
                #[cfg(feature = "mutations")]
                let grace = if self.mutation == Some(crate::mutation::Mutation::NoGrace) {
                    Duration::ZERO
                } else {
                    grace
                };
                sw.phase = SwitchPhase::Grace {
                    until: now + grace,
                    fenced: fenced.clone(),
                    hold_written: *hold_written,
                };
                self.progress();
            }
            SwitchPhase::Grace {
                until,
                fenced,
                hold_written,
            } if now >= *until && !self.write_in_flight => {
                #[cfg(feature = "mutations")]
                if self.mutation == Some(crate::mutation::Mutation::ServeAfterHold) {
                    // Straight to serve: the receiving end never blocks.
                    let fenced = fenced.clone();
                    let hold = Some(*hold_written);
                    return self.write_serve(fenced, hold, now);
                }
                let route = route_of(&sw.plan, Phase::Drain, self.config.token, roster);
                sw.phase = SwitchPhase::WritingDrain {
                    fenced: fenced.clone(),
                    hold_written: Some(*hold_written),
                };
                self.write_route(route, None, None, true);
            }
            SwitchPhase::Draining {
                waiting,
                fenced,
                hold_written,
                drain_written,
                ..
            } if waiting.is_empty() && !self.write_in_flight => {
                let (fenced, hold, drained) = (fenced.clone(), *hold_written, *drain_written);
                self.write_serve(fenced, hold, drained);
            }
            SwitchPhase::Serving {
                waiting, history, ..
            } if waiting.is_empty() => {
                let mut done = history.clone();
                done.total_ms = now.since(sw.plan.started).as_millis() as u64;
                done.outcome = HistoryOutcome::Complete;
                self.actions.push_back(LeaderAction::WriteHistory(done));
                self.switch = None;
            }
            _ => {}
        }
    }

    /// Writes the serve, with the switch's history record in the same txn
    /// (so every serve in etcd has its record).
    fn write_serve(&mut self, fenced: Vec<MemberId>, hold: Option<Time>, drained: Time) {
        let roster = self.roster();
        let Some(sw) = &mut self.switch else {
            return;
        };
        let route = route_of(&sw.plan, Phase::Serve, self.config.token, roster);
        let history = HistoryRecord {
            epoch: sw.plan.epoch,
            from: sw.plan.from,
            to: sw.plan.setup,
            kind: sw.plan.kind,
            reason: sw.plan.reason.clone(),
            requested_by: sw.plan.requested_by.clone(),
            by_note: sw.plan.by_note.clone(),
            leader: self.config.id.clone(),
            token: self.config.token,
            started_at: String::new(),
            drain_ms: self.now.since(drained).as_millis() as u64,
            hold_ms: hold.map_or(0, |h| drained.since(h).as_millis() as u64),
            grace_ms: sw.plan.handover.map_or(0, |h| h.grace_ms),
            total_ms: 0,
            fenced_members: fenced,
            outcome: HistoryOutcome::Serving,
            request_id: sw.plan.request_id.clone(),
        };
        let partial = history.clone();
        sw.phase = SwitchPhase::WritingServe { history };
        self.write_route(route, None, Some(partial), false);
    }

    /// Sends the one route write in flight (see `LeaderAction::WriteRoute`);
    /// `route` becomes etcd's route once it lands.
    fn write_route(
        &mut self,
        route: Route,
        consume: Option<(Rev, RequestOutcome)>,
        history: Option<HistoryRecord>,
        list_members: bool,
    ) {
        self.write_in_flight = true;
        self.written = Some(route.clone());
        self.actions.push_back(LeaderAction::WriteRoute {
            route,
            expect_route_rev: self.route_rev,
            consume,
            history,
            list_members,
        });
    }

    /// The highest epoch anything of this link has reached: a new route
    /// goes above it.
    fn epoch_floor(&self) -> Epoch {
        #[cfg(feature = "mutations")]
        if self.mutation == Some(crate::mutation::Mutation::BootstrapOverApplied) {
            return self.route.as_ref().map_or(0, |r| r.epoch);
        }
        let members = self
            .members
            .values()
            .filter_map(|l| l.record.applied.map(|a| a.epoch));
        let route = self.route.as_ref().map(|r| r.epoch);
        let switch = self.switch.as_ref().map(|s| s.plan.epoch);
        members
            .chain(route)
            .chain(switch)
            .chain(self.history_epoch)
            .max()
            .unwrap_or(0)
    }

    /// Whether etcd's route (or the lack of one) is below what the link
    /// has applied, and why.
    fn route_lost(&self) -> Option<String> {
        #[cfg(feature = "mutations")]
        if self.mutation == Some(crate::mutation::Mutation::BootstrapOverApplied) {
            return None;
        }
        let above: Vec<String> = self
            .members
            .values()
            .filter_map(|l| {
                let a = l.record.applied?;
                let ahead = match &self.route {
                    None => true,
                    Some(r) => a.epoch > r.epoch || (a.epoch == r.epoch && a.setup != r.setup),
                };
                ahead.then(|| format!("{} at {} {}", l.id, a.step(), a.setup))
            })
            .collect();
        let history_above = self
            .history_epoch
            .filter(|h| self.route.as_ref().is_none_or(|r| *h > r.epoch));
        if above.is_empty() && history_above.is_none() {
            return None;
        }
        let mut why = match &self.route {
            None => "etcd holds no route".to_string(),
            Some(r) => format!("etcd's route ({} {}) is below the link", r.step(), r.setup),
        };
        if !above.is_empty() {
            why.push_str(&format!("; members applied: {}", above.join(", ")));
        }
        if let Some(h) = history_above {
            why.push_str(&format!("; history reaches epoch {h}"));
        }
        Some(why)
    }

    /// The setup the members last served, if they agree on one.
    fn members_setup(&self) -> Option<Setup> {
        let mut serving = self.members.values().filter_map(|l| {
            l.record
                .applied
                .filter(|a| a.phase == Phase::Serve)
                .map(|a| a.setup)
        });
        let first = serving.next()?;
        serving.all(|s| s == first).then_some(first)
    }

    /// A switch is under way whose epoch some member has already passed
    /// (it applied a later epoch that the leader had not seen when it
    /// chose this one, e.g. it re-registered after an etcd restore): that
    /// member refuses the switch, so it must start again above it.
    fn switch_overtaken(&self) -> bool {
        let Some(sw) = &self.switch else {
            return false;
        };
        self.members.values().any(|l| {
            l.record.applied.is_some_and(|a| {
                a.epoch > sw.plan.epoch || (a.epoch == sw.plan.epoch && a.setup != sw.plan.setup)
            })
        })
    }

    /// Starts a switch when one is due and none is being written or drained.
    fn decide(&mut self) {
        if self.write_in_flight || self.stepped_down {
            return;
        }
        if let Some(why) = self
            .route_lost()
            .filter(|_| self.switch_overtaken() || self.switch.is_none())
        {
            let setup = self.members_setup().unwrap_or(self.config.initial_setup);
            self.start_switch(
                setup,
                HistoryKind::RouteLost,
                format!("re-establishing the link on {setup}: {why}"),
                self.config.id.clone(),
                None,
                None,
            );
            return;
        }
        if self.switch_overtaken() {
            let setup = self.members_setup().unwrap_or(self.config.initial_setup);
            self.start_switch(
                setup,
                HistoryKind::RouteLost,
                "a member applied an epoch above this switch's: starting again above it".into(),
                self.config.id.clone(),
                None,
                None,
            );
            return;
        }
        let busy = matches!(
            self.switch,
            Some(Switch {
                phase: SwitchPhase::WritingHold
                    | SwitchPhase::Holding { .. }
                    | SwitchPhase::Grace { .. }
                    | SwitchPhase::WritingDrain { .. }
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
                HistoryKind::Bootstrap,
                "first route of a new link".into(),
                self.config.id.clone(),
                None,
                None,
            );
            return;
        };
        if route.phase != Phase::Serve {
            // Left in hold or drain by a previous leader: finish it under
            // our own epoch (members that blocked already just ack again; a
            // hold keeps its handover and grace).
            let handover = route.handover.filter(|_| route.phase == Phase::Hold);
            self.start_switch(
                route.setup,
                HistoryKind::Redecide,
                format!("finishing epoch {} left in {}", route.epoch, route.phase),
                self.config.id.clone(),
                None,
                handover,
            );
            return;
        }
        if self.switch.is_none() && self.reroster(&route) {
            return;
        }
        let Some((request, rev)) = self.request.clone() else {
            self.consult_policy(&route);
            return;
        };
        if self.resolving == Some(rev) {
            return;
        }
        if self.deadline_of(&request).is_some_and(|d| self.now >= d) {
            self.expire(request, rev, route.epoch);
            return;
        }
        if self.due_at(&request).is_some_and(|t| self.now < t) {
            // Scheduled for later: the link runs as usual until then.
            self.consult_policy(&route);
            return;
        }
        let health = self.setup_health(request.to);
        let link = self.link();
        let (status, message, refused) =
            match check_request(&request, &link, self.paused.as_ref(), &health) {
                Ok(Verdict::Go) => {
                    let kind = match request.kind {
                        RequestKind::Switchover => HistoryKind::Switchover,
                        RequestKind::Failover => HistoryKind::Failover,
                    };
                    let grace = request.grace_ms.map(Duration::from_millis);
                    let handover = self.handover_for(kind, request.to, grace);
                    self.start_switch(
                        request.to,
                        kind,
                        request.reason.clone(),
                        request.requested_by.clone(),
                        Some((request, rev)),
                        handover,
                    );
                    return;
                }
                Ok(Verdict::AlreadyActive) => (RequestStatus::Already, link.to_string(), None),
                Err(refused) => {
                    if request.not_before_ms.is_some() {
                        // Nobody waits for a scheduled request's answer:
                        // the history says why nothing moved.
                        self.record_refusal(&request, &refused.to_string(), route.epoch);
                    }
                    (
                        RequestStatus::Rejected,
                        refused.to_string(),
                        Some(refused.kind()),
                    )
                }
            };
        self.resolving = Some(rev);
        self.actions.push_back(LeaderAction::ResolveRequest {
            rev,
            outcome: RequestOutcome {
                id: request.id,
                status,
                epoch: route.epoch,
                message,
                refused,
            },
        });
    }

    /// The roster a route written now carries (failsafe): every listed
    /// member incarnation, this leader's included.
    fn roster(&self) -> Vec<Incarnation> {
        if self.config.failsafe.is_none() {
            return Vec::new();
        }
        self.members
            .values()
            .map(|l| Incarnation {
                id: l.id.clone(),
                lease: l.lease,
                grpc: l.record.grpc.clone(),
            })
            .collect()
    }

    /// Failsafe: once the link is settled, a roster that differs from the
    /// live incarnations is written again at the next epoch, same setup (no
    /// LB changes), so a new incarnation may lead and grant, and a gone one
    /// is no longer needed for grants. Returns whether it wrote.
    fn reroster(&mut self, route: &Route) -> bool {
        if self.config.failsafe.is_none() || self.members.is_empty() {
            return false;
        }
        let roster = self.roster();
        let mut written = route.roster.clone();
        written.sort();
        if written == roster || self.link().settled().is_none() {
            return false;
        }
        let route = Route {
            epoch: self.epoch_floor() + 1,
            phase: Phase::Serve,
            setup: route.setup,
            token: self.config.token,
            reason: "the link's members changed: roster written again".into(),
            requested_by: self.config.id.clone(),
            at: String::new(),
            handover: None,
            roster,
        };
        self.write_route(route, None, None, false);
        true
    }

    /// The history record of a scheduled request refused at its time.
    fn record_refusal(&mut self, request: &Request, why: &str, epoch: Epoch) {
        let record = self.unmoved(
            request,
            epoch,
            HistoryKind::RequestRefused,
            format!("{}; refused at its time: {why}", request.reason),
            HistoryOutcome::Refused,
        );
        self.actions.push_back(LeaderAction::WriteHistory(record));
    }

    /// A history record of `request` that moved nothing.
    fn unmoved(
        &self,
        request: &Request,
        epoch: Epoch,
        kind: HistoryKind,
        reason: String,
        outcome: HistoryOutcome,
    ) -> HistoryRecord {
        HistoryRecord {
            epoch,
            from: self.route.as_ref().map(|r| r.setup),
            to: request.to,
            kind,
            reason,
            requested_by: request.requested_by.clone(),
            by_note: request.by_note.clone(),
            leader: self.config.id.clone(),
            token: self.config.token,
            started_at: String::new(),
            drain_ms: 0,
            hold_ms: 0,
            grace_ms: 0,
            total_ms: 0,
            fenced_members: Vec::new(),
            outcome,
            request_id: Some(request.id.clone()),
        }
    }

    /// Resolves a request whose deadline passed: nothing moves, and the
    /// history says why.
    fn expire(&mut self, request: Request, rev: Rev, epoch: Epoch) {
        let message = format!(
            "{} to {} expired before any leader carried it out; nothing moved",
            request.kind, request.to
        );
        self.resolving = Some(rev);
        self.actions.push_back(LeaderAction::ResolveRequest {
            rev,
            outcome: RequestOutcome {
                id: request.id.clone(),
                status: RequestStatus::Expired,
                epoch,
                message: message.clone(),
                refused: None,
            },
        });
        let record = self.unmoved(
            &request,
            epoch,
            HistoryKind::RequestExpired,
            format!("{}; {}", request.reason, message),
            HistoryOutcome::Expired,
        );
        self.actions.push_back(LeaderAction::WriteHistory(record));
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
        let (note, no_healthy_setup) = match &decision {
            Decision::Hold { why } => (why.clone(), !hot.healthy() && !warm.healthy()),
            Decision::Switch { to, evidence, .. } => {
                (format!("switching to {to}: {evidence}"), false)
            }
            Decision::PauseSelf { reason } => (reason.clone(), false),
        };
        if note != self.policy_note {
            self.policy_note = note.clone();
            self.actions.push_back(LeaderAction::PolicyNote {
                note,
                no_healthy_setup,
            });
        }
        match decision {
            Decision::Hold { .. } => {}
            Decision::Switch {
                to,
                failback,
                evidence,
            } => {
                let kind = if failback {
                    HistoryKind::AutoFailback
                } else {
                    HistoryKind::AutoFailover
                };
                let handover = self.handover_for(kind, to, None);
                self.start_switch(to, kind, evidence, "lockstep:auto".into(), None, handover);
            }
            Decision::PauseSelf { reason } => {
                // Paused locally at once so the decision is not repeated
                // before the watch reports the write.
                self.paused = Some(Pause {
                    reason: reason.clone(),
                    requested_by: "lockstep:auto".into(),
                    by_note: String::new(),
                    at: String::new(),
                });
                self.actions.push_back(LeaderAction::PauseLink {
                    reason,
                    epoch: route.epoch,
                    setup: route.setup,
                });
            }
        }
    }

    /// The handover a switch of `kind` to `to` gets: planned switches
    /// (switchover, failback) when the link has an issuing end, unless the
    /// receiving end reports the old setup down (nothing to fetch from it).
    /// Failovers skip it: the old setup is presumed dead.
    fn handover_for(
        &self,
        kind: HistoryKind,
        to: Setup,
        grace: Option<Duration>,
    ) -> Option<Handover> {
        let config = self.config.handover?;
        if !matches!(kind, HistoryKind::Switchover | HistoryKind::AutoFailback) {
            return None;
        }
        let from = self
            .route
            .as_ref()
            .filter(|r| r.phase == Phase::Serve && r.setup != to)?
            .setup;
        let receiving = match config.issuer {
            Role::Alice => Role::Bob,
            Role::Bob => Role::Alice,
        };
        if self.setup_health(from).of_role(receiving) == Health::Down {
            return None;
        }
        Some(Handover {
            issuer: config.issuer,
            from,
            grace_ms: grace.unwrap_or(config.grace).as_millis() as u64,
        })
    }

    fn start_switch(
        &mut self,
        setup: Setup,
        kind: HistoryKind,
        reason: String,
        requested_by: String,
        request: Option<(Request, Rev)>,
        handover: Option<Handover>,
    ) {
        let epoch = self.epoch_floor() + 1;
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
            by_note: request
                .as_ref()
                .map_or(String::new(), |(r, _)| r.by_note.clone()),
            request_id: request.as_ref().map(|(r, _)| r.id.clone()),
            started: self.now,
            handover,
        };
        let consume = request.map(|(r, rev)| {
            self.resolving = Some(rev);
            (
                rev,
                RequestOutcome {
                    id: r.id,
                    status: RequestStatus::Started,
                    epoch,
                    message: format!("switching to {setup} at epoch {epoch}"),
                    refused: None,
                },
            )
        });
        // A link's first route is no flap: it starts no dwell.
        if let (Some(p), false) = (&mut self.policy, kind == HistoryKind::Bootstrap) {
            let automatic = matches!(kind, HistoryKind::AutoFailover | HistoryKind::AutoFailback);
            p.switched(self.now, automatic);
        }
        let (phase, first) = match handover {
            Some(_) => (SwitchPhase::WritingHold, Phase::Hold),
            None => (
                SwitchPhase::WritingDrain {
                    fenced: Vec::new(),
                    hold_written: None,
                },
                Phase::Drain,
            ),
        };
        let route = route_of(&plan, first, self.config.token, self.roster());
        self.switch = Some(Switch { plan, phase });
        self.write_route(route, consume, None, true);
    }
}

impl Plan {
    fn push(&self, phase: Phase, token: Token) -> Push {
        Push {
            phase,
            epoch: self.epoch,
            token,
            setup: self.setup,
        }
    }
}

fn route_of(plan: &Plan, phase: Phase, token: Token, roster: Vec<Incarnation>) -> Route {
    Route {
        epoch: plan.epoch,
        phase,
        setup: plan.setup,
        token,
        reason: plan.reason.clone(),
        requested_by: plan.requested_by.clone(),
        at: String::new(),
        handover: plan.handover.filter(|_| phase == Phase::Hold),
        roster,
    }
}
