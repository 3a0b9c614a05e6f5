//! The member state machine: one per sidecar, the only thing that decides
//! what its LB routes to.
//!
//! A driver feeds [`MemberEvent`]s in through [`Member::handle`] with the
//! current monotonic time, then drains [`MemberAction`]s with
//! [`Member::poll_action`] and arms one timer at [`Member::poll_timeout`]
//! (feeding [`MemberEvent::Tick`] when it fires). Every event goes through
//! this one serialized machine, whichever path it came from (etcd watch or
//! gRPC push), so steps apply in increasing `(epoch, phase)` order only.
//!
//! Safety rules kept here:
//! * only etcd's route is an authority: a gRPC push never changes what the
//!   member accepts; it waits until the route (watched, or read once when
//!   the push is ahead of the watch) confirms its epoch, token and setup,
//!   and is refused, changing nothing, when the route does not;
//! * the LB is only told to serve the step it accepted while that step is
//!   still etcd's route, while the lease is fresh, and after a read of the
//!   link since it last registered or was fenced. A route below what the
//!   link has applied (lost, or rolled back by an etcd restore) is never
//!   served and never moves the member back: it stays blocked (`Behind`)
//!   until the leader re-establishes the link at a higher epoch;
//! * a drain is acknowledged only once the LB is confirmed blocked, or once
//!   the LB's down-detection bound has passed since the check endpoint
//!   stopped answering "routable" (the dead-man's switch did it);
//! * pushes with a lower token than etcd's route, or a step lower than the
//!   one accepted, are refused at once.

use crate::failsafe::{FailsafeConfig, FailsafeView, GrantAsk, GrantRefusal, Granted};
use crate::time::{Duration, Time};
use crate::types::*;
use std::collections::{BTreeMap, VecDeque};

/// Fixed parameters of a member.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MemberConfig {
    pub id: MemberId,
    pub role: Role,
    /// etcd lease TTL.
    pub lease_ttl: Duration,
    /// Safety margin subtracted from the TTL before the member fences itself.
    pub margin: Duration,
    /// D: how long the LB needs to notice a dead check endpoint and kill
    /// sessions (fall × inter + check timeout).
    pub lb_down_bound: Duration,
    /// Pause between retries of a failed LB command.
    pub lb_retry: Duration,
    /// Keep serving on peers' grants while etcd is unreachable.
    pub failsafe: Option<FailsafeConfig>,
}

/// Identifies a pending gRPC request so its reply can be released later.
pub type RequestId = u64;

/// Identifies a route read the member asked for (`MemberAction::ReadRoute`).
pub type ReadId = u64;

/// At most this many pushes wait for etcd at once; more are refused, so a
/// flood of pushes cannot grow the member without bound.
pub const MAX_WAITING_PUSHES: usize = 64;

/// Why a peer message was refused.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The push is older than the route etcd holds (a lower token).
    StaleToken { got: Token, route: Token },
    /// The step is lower than one this member has already accepted.
    StaleStep { got: Step, current: Step },
    /// etcd's route does not say what the push says: forged, replayed from
    /// another leadership, or the route has been lost. Nothing changed.
    NotConfirmed { rev: Rev, route: Option<Step> },
    /// Serving needs a fresh lease and a route read since registration.
    NotServable { why: &'static str },
    /// The member is stopping.
    Stopping,
    /// The request was overtaken by a later step before it could apply.
    Superseded { by: Step },
    /// Too many pushes are already waiting for etcd to confirm them.
    Busy,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::StaleToken { got, route } => {
                write!(
                    f,
                    "stale token {got}: etcd's route was written under token {route}"
                )
            }
            Refusal::StaleStep { got, current } => {
                write!(f, "stale step {got}: already at {current}")
            }
            Refusal::NotConfirmed { rev, route } => {
                write!(f, "not confirmed by etcd at revision {rev} (route ")?;
                match route {
                    Some(step) => write!(f, "at {step}")?,
                    None => f.write_str("missing")?,
                }
                f.write_str("); nothing changed")
            }
            Refusal::NotServable { why } => write!(f, "cannot serve: {why}"),
            Refusal::Stopping => f.write_str("member is stopping"),
            Refusal::Superseded { by } => write!(f, "superseded by {by}"),
            Refusal::Busy => write!(
                f,
                "{MAX_WAITING_PUSHES} pushes already wait for etcd; try again"
            ),
        }
    }
}

/// The link as one read of etcd saw it: the route and the highest epoch any
/// member record or history record showed applied, at one revision.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LinkRead {
    pub route: Option<Route>,
    pub rev: Rev,
    /// A route below this epoch has been lost or rolled back (an old etcd
    /// snapshot restored, an operator's delete): members have applied more.
    pub floor: Epoch,
}

/// Whether this member's process may switch the link (`MemberEvent::Leading`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Leadership {
    /// It campaigns or leads.
    Campaigning,
    /// Neither; `wrote` is the highest epoch its leadership sent a route
    /// write for (`None`: it wrote nothing).
    Ended { wrote: Option<Epoch> },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MemberEvent {
    /// The driver registered a (new) lease and member key, then read the
    /// link. Keep-alive freshness starts from `lease_sent_at`, the send
    /// time of the grant request.
    Synced {
        read: LinkRead,
        lease_sent_at: Time,
        lease: Lease,
    },
    /// The link read again on the same lease (answer to `Resync`, or the
    /// route watch was opened again): what it says is the truth now, even
    /// if it is older than what the member knew (etcd was restored).
    Resynced(LinkRead),
    /// A route put, from the etcd watch, at its mod_revision.
    RouteSeen { route: Route, rev: Rev },
    /// The route key deleted, from the etcd watch.
    RouteGone { rev: Rev },
    /// Answer to `ReadRoute`: the route as one linearizable read saw it.
    RouteRead {
        read: ReadId,
        route: Option<Route>,
        rev: Rev,
    },
    /// A keep-alive sent at `sent_at` was acknowledged with a live lease.
    KeepAliveAcked { sent_at: Time },
    /// etcd says the lease is gone: the member key has been deleted.
    LeaseLost,
    /// A gRPC Drain or Serve, claiming to come from the leader.
    Peer { req: RequestId, push: Push },
    /// The LB confirmed it routes to `target` (answer to `ApplyLb`).
    LbConfirmed { target: LbTarget },
    /// The LB could not be set or confirmed (answer to `ApplyLb`).
    LbFailed { target: LbTarget },
    /// A periodic read-back of the LB.
    LbObserved { target: LbTarget, restarted: bool },
    /// The LB answered with a state that is none of ours (e.g. both setups
    /// enabled by hand): re-apply the desired state.
    LbInconsistent,
    /// Stop gracefully: block the LB, then give up the lease.
    Stop,
    /// Whether this process campaigns or leads: it grants nothing while it
    /// may switch the link, nor afterwards below an epoch it wrote.
    Leading(Leadership),
    /// A peer asks for a failsafe grant (`Peer.Grant`).
    GrantAsked { req: RequestId, ask: GrantAsk },
    /// A peer answered a grant ask sent at `sent_at` (answer to
    /// `AskGrants`).
    GrantAnswered {
        from: MemberId,
        sent_at: Time,
        result: Result<Granted, GrantRefusal>,
    },
    /// A timer armed with `poll_timeout` fired.
    Tick,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MemberAction {
    /// Set the LB to `target` and confirm it by reading it back; answer with
    /// `LbConfirmed` or `LbFailed`. Never issued while another is in flight.
    ///
    /// A serve carries `enable_before`: the driver must not send the command
    /// that makes a server routable at or after it, and answers `LbFailed`
    /// instead. It is the instant from which the check endpoint stops
    /// answering "routable" (lease fresh until − D). A driver paused between
    /// this decision and the command (SIGSTOP, a long GC-like stall) would
    /// otherwise land a serve decided under a lease that has since expired,
    /// after the leader moved the link on without this member; HAProxy's
    /// `state ready` makes a server UP at once, overriding the health checks
    /// that would have kept it down. `None` for a block, which is always safe.
    ApplyLb {
        target: LbTarget,
        enable_before: Option<Time>,
    },
    /// Record what this member has applied in its etcd key.
    WriteApplied(Applied),
    /// Answer a gRPC request.
    Reply {
        req: RequestId,
        result: Result<Applied, Refusal>,
    },
    /// Read the route once, linearizably, and answer `RouteRead`: a push is
    /// ahead of the watch and waits for etcd to confirm it.
    ReadRoute(ReadId),
    /// Read the link again on the current lease and answer `Resynced`: the
    /// member was fenced, and what it applied before may no longer be the
    /// route (etcd may have been restored meanwhile).
    Resync,
    /// The lease is gone: grant a new one, write the member key, read the
    /// link and feed `Synced`.
    Register,
    /// The LB is blocked after `Stop`: revoke the lease, then exit.
    RevokeLease,
    /// Answer a grant ask.
    GrantReply {
        req: RequestId,
        result: Result<Granted, GrantRefusal>,
    },
    /// Failsafe: this member's lease is about to lapse; ask each of
    /// `peers` for a grant for `epoch`/`setup` and feed `GrantAnswered`
    /// with the send time.
    AskGrants {
        epoch: Epoch,
        setup: Setup,
        peers: Vec<Incarnation>,
    },
}

/// etcd's route is below what this link has applied: it was lost or rolled
/// back. The member stays blocked until the leader re-establishes the link
/// at a higher epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Behind {
    /// The route etcd holds (`None`: no route key).
    pub route: Option<Step>,
    /// The epoch this member (or, for a fresh one, the link's member
    /// records) has applied.
    pub applied: Epoch,
}

impl std::fmt::Display for Behind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.route {
            Some(step) => write!(f, "etcd's route is at {step}")?,
            None => f.write_str("etcd holds no route")?,
        }
        write!(
            f,
            ", below epoch {} applied on this link: blocked until the leader re-establishes it",
            self.applied
        )
    }
}

/// What the LB is known to route to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LbKnown {
    /// Confirmed by reading the LB back.
    Confirmed(LbTarget),
    /// The LB could not confirm a block, but the check endpoint has refused
    /// every server for longer than D, so the LB's own health checks have
    /// blocked it.
    AssumedBlocked,
    /// Not known (start-up, LB unreachable).
    Unknown,
}

/// A snapshot for the check endpoint, status and metrics.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MemberView {
    pub applied: Option<Applied>,
    /// The highest step accepted from etcd (what the LB should reflect).
    pub accepted: Option<Applied>,
    pub desired: LbTarget,
    pub lb: LbKnown,
    pub synced: bool,
    pub fenced: bool,
    pub stopping: bool,
    /// Until when the lease is fresh (send time of the last acknowledged
    /// keep-alive + TTL − margin); `None` before the first registration.
    pub lease_fresh_until: Option<Time>,
    /// The token of the route etcd holds, as this member last read it.
    pub route_token: Option<Token>,
    /// etcd's route is below what the link has applied.
    pub behind: Option<Behind>,
    /// Serving on peers' grants (failsafe), and until when.
    pub failsafe: Option<FailsafeView>,
    /// A grant this member gave binds it until then (no campaign).
    pub bound_until: Option<Time>,
    /// The leases this process has registered on, newest last.
    pub leases: Vec<Lease>,
}

impl MemberView {
    /// The LB check answer for `setup` at `now`: routable only for the setup
    /// this member is told to serve, and only while its lease (or, in
    /// failsafe, every grant it needs) stays fresh for longer than the LB
    /// needs to notice that the answer stopped.
    pub fn routable(&self, setup: Setup, now: Time, lb_down_bound: Duration) -> bool {
        if self.stopping || self.desired != LbTarget::Serve(setup) {
            return false;
        }
        let fresh = |until: Time| now.saturating_add(lb_down_bound) < until;
        let by_lease = !self.fenced && self.synced && self.lease_fresh_until.is_some_and(fresh);
        let by_grants = self
            .failsafe
            .is_some_and(|f| f.serving.setup == setup && fresh(f.until));
        by_lease || by_grants
    }

    /// In failsafe at `now`: told to serve on grants while the lease is not
    /// fresh (what status, the metric and the history report).
    pub fn on_grants(&self, now: Time) -> Option<FailsafeView> {
        let stale = self.lease_fresh_until.is_none_or(|u| now >= u);
        let serving = matches!(self.desired, LbTarget::Serve(_));
        self.failsafe.filter(|_| stale && serving)
    }
}

/// A push waiting for its answer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Waiter {
    req: RequestId,
    push: Push,
    /// The route read that must have answered before the push may be
    /// refused as unconfirmed (0: the watch had already confirmed it).
    read: ReadId,
}

/// What etcd's route says of a push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Confirmation {
    /// The route is the pushed one, at the pushed phase or past it.
    Confirmed,
    /// The route has moved past the push's epoch.
    Superseded(Step),
    /// The route holds the push's epoch with another token or setup: the
    /// push is forged or replayed.
    Contradicted,
    /// The route has not reached the push (or is gone): it may be ahead of
    /// the watch, or forged; only a read tells.
    Unknown,
}

fn confirmation(route: Option<&Route>, push: &Push) -> Confirmation {
    match route {
        Some(r) if r.confirms(push) => Confirmation::Confirmed,
        Some(r) if r.epoch > push.epoch => Confirmation::Superseded(r.step()),
        Some(r) if r.epoch == push.epoch && (r.token != push.token || r.setup != push.setup) => {
            Confirmation::Contradicted
        }
        _ => Confirmation::Unknown,
    }
}

/// The member's route reads: one in flight at a time, and at most one more
/// wanted, however many pushes wait.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct Reads {
    /// The id of the last read asked for.
    issued: ReadId,
    /// The id of the last read answered.
    answered: ReadId,
    /// A push arrived while a read was in flight: read once more after it.
    again: bool,
}

/// The member state machine. See the module docs for the driving protocol.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Member {
    config: MemberConfig,
    now: Time,
    /// etcd's route as last read or watched (`None`: no route key), valid
    /// while `synced`, and the revision it was seen at.
    route: Option<Route>,
    route_rev: Rev,
    /// The highest epoch the link is known to have applied: a route below
    /// it has been lost or rolled back and is never served.
    floor: Epoch,
    /// Highest step accepted from etcd and its setup: what the LB should
    /// reflect once the current apply finishes. Never goes back.
    accepted: Option<Applied>,
    /// Highest step whose LB state was confirmed (and reported to etcd).
    applied: Option<Applied>,
    /// During a handover's hold, at the receiving end: the old setup this
    /// member keeps serving (it was serving it when the hold came).
    held: Option<Setup>,
    /// The LB command in flight, if any.
    in_flight: Option<LbTarget>,
    lb: LbKnown,
    /// When the check endpoint last started refusing every server; the
    /// dead-man's switch has blocked the LB D after this.
    refusing_since: Option<Time>,
    /// Earliest time to retry a failed LB command.
    retry_at: Option<Time>,
    synced: bool,
    registering: bool,
    /// A fence was lifted by a late keep-alive; the link is being read
    /// again before anything is served.
    resyncing: bool,
    lease_fresh_until: Option<Time>,
    /// The last lease freshness ever known; not cleared when the lease is
    /// lost (failsafe lasts at most `max` after it).
    last_fresh_until: Option<Time>,
    /// The lease of the current (or last, until the next registration)
    /// incarnation, and every lease this process held, newest last.
    incarnation: Option<Lease>,
    leases: Vec<Lease>,
    /// Failsafe grants held for `accepted`: granter id → valid until.
    grants: BTreeMap<MemberId, Time>,
    /// Grants given bind this member until then.
    bound_until: Option<Time>,
    /// The process campaigns or leads.
    leading: bool,
    /// The highest epoch this process's leadership sent a route write for:
    /// such a write may still land after the leadership ended, so no grant
    /// goes below it (rule 4 of `failsafe`).
    wrote: Option<Epoch>,
    /// When to ask for grants again.
    next_ask: Option<Time>,
    fenced: bool,
    stopping: bool,
    revoked: bool,
    reads: Reads,
    waiters: Vec<Waiter>,
    actions: VecDeque<MemberAction>,
    /// A deliberate break for the model checker's mutation tests.
    #[cfg(feature = "mutations")]
    mutation: Option<crate::mutation::Mutation>,
}

impl Member {
    /// A member starts blocked, unsynced and without a lease; the driver
    /// registers it and feeds `Synced`.
    pub fn new(config: MemberConfig, now: Time) -> Member {
        Member {
            config,
            now,
            route: None,
            route_rev: 0,
            floor: 0,
            accepted: None,
            applied: None,
            held: None,
            in_flight: Some(LbTarget::Blocked),
            lb: LbKnown::Unknown,
            refusing_since: Some(now),
            retry_at: None,
            synced: false,
            registering: true,
            resyncing: false,
            lease_fresh_until: None,
            last_fresh_until: None,
            incarnation: None,
            leases: Vec::new(),
            grants: BTreeMap::new(),
            bound_until: None,
            leading: false,
            wrote: None,
            next_ask: None,
            fenced: false,
            stopping: false,
            revoked: false,
            reads: Reads::default(),
            waiters: Vec::new(),
            actions: VecDeque::from([MemberAction::ApplyLb {
                target: LbTarget::Blocked,
                enable_before: None,
            }]),
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

    /// Whether `m` is the deliberate break in force.
    #[cfg(feature = "mutations")]
    fn mutated(&self, m: crate::mutation::Mutation) -> bool {
        self.mutation == Some(m)
    }

    pub fn config(&self) -> &MemberConfig {
        &self.config
    }

    /// The deadline of an LB command (see `MemberAction::ApplyLb`): a serve
    /// may make its server routable only while the check endpoint would
    /// call it routable.
    fn enable_before(&self, target: LbTarget) -> Option<Time> {
        if target == LbTarget::Blocked {
            return None;
        }
        #[cfg(feature = "mutations")]
        if self.mutated(crate::mutation::Mutation::NoServeDeadline) {
            return None;
        }
        // Without a lease (or, in failsafe, grants) the serve is already
        // too late.
        let until = self.lease_fresh_until.max(self.failsafe().map(|f| f.until));
        Some(until.map_or(self.now, |until| until - self.config.lb_down_bound))
    }

    pub fn view(&self) -> MemberView {
        MemberView {
            applied: self.applied,
            accepted: self.accepted,
            desired: self.desired(),
            lb: self.lb,
            synced: self.synced,
            fenced: self.fenced,
            stopping: self.stopping,
            lease_fresh_until: self.lease_fresh_until,
            route_token: self.route.as_ref().map(|r| r.token),
            behind: self.behind(),
            failsafe: self.failsafe(),
            bound_until: self.bound_until.filter(|u| *u > self.now),
            leases: self.leases.clone(),
        }
    }

    /// The next action for the driver, in order.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<MemberAction> {
        self.actions.pop_front()
    }

    /// When the driver must feed `Tick` next, if ever.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Time> {
        let mut t: Option<Time> = None;
        let mut consider = |x: Option<Time>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        if !self.fenced {
            consider(self.lease_fresh_until);
        }
        // While a serve is in flight its report restarts the countdown, so
        // there is nothing to wake up for before it.
        if !matches!(
            self.lb,
            LbKnown::Confirmed(LbTarget::Blocked) | LbKnown::AssumedBlocked
        ) && !self.serve_in_flight()
        {
            consider(self.refusing_since.map(|s| s + self.config.lb_down_bound));
        }
        if self.in_flight.is_none() {
            consider(self.retry_at);
        }
        if let Some(fs) = self.config.failsafe {
            // Serving on grants ends D before they do; asking starts when
            // the lease is about to lapse, and repeats.
            // Only while it is ahead: a deadline already passed would wake
            // the driver again at once, for ever.
            consider(
                self.failsafe()
                    .map(|f| f.until - self.config.lb_down_bound)
                    .filter(|t| *t > self.now),
            );
            if self.wants_grants() {
                consider(self.next_ask);
            } else if self.serving_rostered().is_some() {
                consider(crate::failsafe::lapse_doubt_from(
                    self.lease_fresh_until,
                    &fs,
                    self.config.lb_down_bound,
                ));
            }
        }
        t
    }

    /// Feeds one event at `now` (monotonic, never decreasing).
    pub fn handle(&mut self, now: Time, event: MemberEvent) {
        self.now = self.now.max(now);
        match event {
            MemberEvent::Synced {
                read,
                lease_sent_at,
                lease,
            } => self.on_synced(read, lease_sent_at, lease),
            MemberEvent::Resynced(read) => {
                if self.synced {
                    self.resyncing = false;
                    self.learn_link(read);
                }
            }
            MemberEvent::RouteSeen { route, rev } => {
                if self.synced && rev > self.route_rev {
                    self.learn(Some(route), rev);
                }
            }
            MemberEvent::RouteGone { rev } => {
                if self.synced && rev > self.route_rev {
                    self.learn(None, rev);
                }
            }
            MemberEvent::RouteRead { read, route, rev } => {
                if read > self.reads.answered && read <= self.reads.issued {
                    self.reads.answered = read;
                    // A read older than what the watch has told since says
                    // nothing new; the pushes are judged on the newer news.
                    if self.synced && rev >= self.route_rev {
                        self.learn(route, rev);
                    }
                    if std::mem::take(&mut self.reads.again) {
                        self.issue_read();
                    }
                    self.forget_answered_reads();
                }
            }
            MemberEvent::KeepAliveAcked { sent_at } => {
                if !self.registering {
                    let until = sent_at + self.config.lease_ttl - self.config.margin;
                    if self.lease_fresh_until.is_none_or(|u| until > u) {
                        self.lease_fresh_until = Some(until);
                        self.last_fresh_until = Some(until);
                    }
                    // The lease outlived the gap, so the member key did too:
                    // the leader kept waiting for this member. It may serve
                    // again, but only what etcd's route says now: while it
                    // could not renew, etcd may have been restored from an
                    // old snapshot (which brings old leases back to life).
                    if self.fenced && self.synced && self.now < until {
                        self.fenced = false;
                        #[cfg(feature = "mutations")]
                        let unread = self.mutated(crate::mutation::Mutation::ServeAfterFenceUnread);
                        #[cfg(not(feature = "mutations"))]
                        let unread = false;
                        if !self.resyncing && !unread {
                            self.resyncing = true;
                            self.actions.push_back(MemberAction::Resync);
                        }
                    }
                }
            }
            MemberEvent::LeaseLost => self.on_lease_lost(),
            MemberEvent::Peer { req, push } => self.on_push(req, push),
            MemberEvent::LbConfirmed { target } => {
                self.in_flight = None;
                self.retry_at = None;
                self.lb = LbKnown::Confirmed(target);
                self.restart_refusal_after_serve(target);
            }
            MemberEvent::LbFailed { target } => {
                self.in_flight = None;
                self.restart_refusal_after_serve(target);
                self.retry_at = Some(self.now + self.config.lb_retry);
                // A half-applied serve may have left anything behind; a failed
                // block leaves what was known (the dead-man's switch covers it).
                if target != LbTarget::Blocked {
                    self.lb = LbKnown::Unknown;
                }
            }
            MemberEvent::LbObserved { target, restarted } => {
                // The LB's own answer is the truth; an apply in flight will
                // report for itself.
                if self.in_flight.is_none() {
                    let known = LbKnown::Confirmed(target);
                    if restarted || self.lb != known {
                        self.retry_at = None;
                    }
                    self.lb = known;
                }
            }
            MemberEvent::LbInconsistent => {
                if self.in_flight.is_none() {
                    self.lb = LbKnown::Unknown;
                    self.retry_at = None;
                }
            }
            MemberEvent::Stop => self.stopping = true,
            MemberEvent::Leading(Leadership::Campaigning) => self.leading = true,
            MemberEvent::Leading(Leadership::Ended { wrote }) => {
                self.leading = false;
                self.wrote = self.wrote.max(wrote);
            }
            MemberEvent::GrantAsked { req, ask } => {
                let result = self.grant(&ask);
                self.actions
                    .push_back(MemberAction::GrantReply { req, result });
            }
            MemberEvent::GrantAnswered {
                from,
                sent_at,
                result,
            } => self.on_grant(from, sent_at, result),
            MemberEvent::Tick => {}
        }
        self.after_event();
    }

    fn after_event(&mut self) {
        self.check_lease();
        self.ask_grants();
        self.settle();
    }

    /// The route this member serves, accepted from etcd in this
    /// incarnation, if its roster lists this incarnation: what failsafe
    /// can keep serving.
    fn serving_rostered(&self) -> Option<(&Route, Applied)> {
        let a = self.accepted.filter(|a| a.phase == Phase::Serve)?;
        // Below an epoch this process sent a write for, that write may
        // still land: nothing to keep serving on grants (rule 4).
        if self.wrote.is_some_and(|w| a.epoch < w) {
            return None;
        }
        let route = self.route.as_ref().filter(|r| r.applied() == a)?;
        let lease = self.incarnation?;
        route.rostered(&self.config.id, lease).then_some((route, a))
    }

    fn lease_doubtful(&self, fs: &FailsafeConfig) -> bool {
        crate::failsafe::lease_about_to_lapse(
            self.lease_fresh_until,
            self.now,
            fs,
            self.config.lb_down_bound,
        )
    }

    /// Whether this member needs grants to keep serving past its lease.
    fn wants_grants(&self) -> bool {
        let Some(fs) = self.config.failsafe else {
            return false;
        };
        !self.stopping && self.lease_doubtful(&fs) && self.serving_rostered().is_some()
    }

    /// Until when this member may serve on grants (failsafe): every other
    /// incarnation of its route's roster granted it, and its lease has not
    /// been stale for longer than `max`.
    fn failsafe(&self) -> Option<FailsafeView> {
        let fs = self.config.failsafe?;
        if self.stopping {
            return None;
        }
        let (route, serving) = self.serving_rostered()?;
        let mut until = self.last_fresh_until? + fs.max;
        for peer in route.roster.iter().filter(|i| i.id != self.config.id) {
            #[cfg(feature = "mutations")]
            if self.mutated(crate::mutation::Mutation::FailsafeWithoutEveryGrant) {
                continue;
            }
            until = until.min(*self.grants.get(&peer.id)?);
        }
        Some(FailsafeView { until, serving })
    }

    /// Asks for grants while they are wanted, every quarter of their length.
    fn ask_grants(&mut self) {
        let (Some(fs), true) = (self.config.failsafe, self.wants_grants()) else {
            self.next_ask = None;
            return;
        };
        if self.next_ask.is_some_and(|t| self.now < t) {
            return;
        }
        let Some((route, serving)) = self.serving_rostered() else {
            return;
        };
        let peers: Vec<Incarnation> = route
            .roster
            .iter()
            .filter(|i| i.id != self.config.id)
            .cloned()
            .collect();
        self.next_ask = Some(self.now + fs.grant_ttl / 4);
        if !peers.is_empty() {
            self.actions.push_back(MemberAction::AskGrants {
                epoch: serving.epoch,
                setup: serving.setup,
                peers,
            });
        }
    }

    /// A peer's answer: a grant for what this member serves, from the
    /// incarnation its route's roster lists, counts from the ask's send time.
    fn on_grant(&mut self, from: MemberId, sent_at: Time, result: Result<Granted, GrantRefusal>) {
        let (Some(fs), Ok(g)) = (self.config.failsafe, result) else {
            return;
        };
        let Some((route, serving)) = self.serving_rostered() else {
            return;
        };
        if g.epoch != serving.epoch || g.setup != serving.setup || !route.rostered(&from, g.lease) {
            return;
        }
        let until = sent_at + fs.grant_ttl;
        let held = self.grants.entry(from).or_insert(until);
        *held = (*held).max(until);
    }

    /// Rule 4 of `failsafe`: a grant only for the route this member serves
    /// from its roster, only while its own lease is about to lapse and it
    /// does not lead, never below an epoch its process wrote; it binds this
    /// member (no campaign) until it expires.
    fn grant(&mut self, ask: &GrantAsk) -> Result<Granted, GrantRefusal> {
        let Some(fs) = self.config.failsafe else {
            return Err(GrantRefusal::Disabled);
        };
        if self.stopping {
            return Err(GrantRefusal::Stopping);
        }
        #[cfg(feature = "mutations")]
        let seen_etcd_ignored = self.mutated(crate::mutation::Mutation::GrantWhileSeeingEtcd);
        #[cfg(not(feature = "mutations"))]
        let seen_etcd_ignored = false;
        if self.leading && !seen_etcd_ignored {
            return Err(GrantRefusal::Leading);
        }
        if !self.lease_doubtful(&fs) && !seen_etcd_ignored {
            return Err(GrantRefusal::SeesEtcd);
        }
        if let Some(wrote) = self.wrote.filter(|w| ask.epoch < *w) {
            return Err(GrantRefusal::Wrote { epoch: wrote });
        }
        let lease = match (self.serving_rostered(), self.incarnation) {
            (Some((_, a)), Some(lease)) if a.epoch == ask.epoch && a.setup == ask.setup => lease,
            _ => {
                return Err(GrantRefusal::NotServing {
                    serving: self.accepted,
                })
            }
        };
        let until = self.now + fs.grant_ttl;
        self.bound_until = Some(self.bound_until.map_or(until, |b| b.max(until)));
        Ok(Granted {
            lease,
            epoch: ask.epoch,
            setup: ask.setup,
        })
    }

    fn serve_in_flight(&self) -> bool {
        matches!(self.in_flight, Some(LbTarget::Serve(_)))
    }

    /// A serve that ended (confirmed, or failed after it may have landed)
    /// while the check endpoint was already refusing may have made its
    /// server UP just now (`state ready` is UP at once): the LB's own checks
    /// need a full D from here to take it down again.
    fn restart_refusal_after_serve(&mut self, target: LbTarget) {
        if matches!(target, LbTarget::Serve(_)) && self.refusing_since.is_some() {
            self.refusing_since = Some(self.now);
        }
    }

    fn on_synced(&mut self, read: LinkRead, lease_sent_at: Time, lease: Lease) {
        self.registering = false;
        self.synced = true;
        self.fenced = false;
        self.resyncing = false;
        let until = lease_sent_at + self.config.lease_ttl - self.config.margin;
        self.lease_fresh_until = Some(until);
        self.last_fresh_until = Some(until);
        self.incarnation = Some(lease);
        crate::failsafe::remember_lease(&mut self.leases, lease);
        self.learn_link(read);
    }

    /// A whole read of the link is the truth now, whatever was known. It
    /// was made after every push waiting now arrived (or the driver lost a
    /// read): those pushes are judged on it, and reads start over.
    fn learn_link(&mut self, read: LinkRead) {
        self.floor = self.floor.max(read.floor);
        self.learn(read.route, read.rev);
        self.reads = Reads::default();
        for w in &mut self.waiters {
            w.read = 0;
        }
    }

    /// etcd's route is `route` at `rev`. A route at or above the floor and
    /// past the accepted step is accepted; one below what was accepted
    /// leaves the member blocked (`behind`), never moves it back.
    fn learn(&mut self, route: Option<Route>, rev: Rev) {
        self.route_rev = rev;
        if let Some(r) = &route {
            if r.epoch >= self.floor && self.accepted.is_none_or(|a| r.step() > a.step()) {
                // At the receiving end, a hold keeps the old setup, if this
                // member was serving it.
                let serving = self.desired().serving();
                self.held = match (r.phase, r.handover) {
                    (Phase::Hold, Some(h)) if h.issuer != self.config.role => {
                        serving.filter(|s| *s == h.from)
                    }
                    _ => None,
                };
                self.accepted = Some(r.applied());
                self.grants.clear();
            }
        }
        self.route = route;
    }

    fn on_lease_lost(&mut self) {
        self.fenced = true;
        self.synced = false;
        self.lease_fresh_until = None;
        if !self.registering && !self.stopping {
            self.registering = true;
            self.actions.push_back(MemberAction::Register);
        }
    }

    fn check_lease(&mut self) {
        if self
            .lease_fresh_until
            .is_some_and(|until| self.now >= until)
        {
            self.fenced = true;
        }
    }

    fn issue_read(&mut self) {
        self.reads.issued += 1;
        self.actions
            .push_back(MemberAction::ReadRoute(self.reads.issued));
    }

    /// With no read in flight, every waiting push has had its read: the
    /// ids start again from zero (so equal states compare equal).
    fn forget_answered_reads(&mut self) {
        if !self.read_in_flight() {
            self.reads = Reads::default();
            for w in &mut self.waiters {
                w.read = 0;
            }
        }
    }

    fn read_in_flight(&self) -> bool {
        self.reads.answered < self.reads.issued
    }

    /// A push is a hint: it never changes what the member accepts. It waits
    /// for etcd to confirm it (from the watch, or one read if it is ahead
    /// of the watch) and is answered once the LB reflects it.
    fn on_push(&mut self, req: RequestId, push: Push) {
        if let Err(refusal) = self.precheck(&push) {
            self.actions.push_back(MemberAction::Reply {
                req,
                result: Err(refusal),
            });
            return;
        }
        #[cfg(feature = "mutations")]
        if self.mutated(crate::mutation::Mutation::TrustPushes) {
            // The old trust: the push is taken as if etcd had said it.
            let route = Route {
                epoch: push.epoch,
                phase: push.phase,
                setup: push.setup,
                token: push.token,
                reason: String::new(),
                requested_by: String::new(),
                at: String::new(),
                handover: None,
                roster: Vec::new(),
            };
            if self.synced {
                self.learn(Some(route), self.route_rev);
            }
        }
        let known = confirmation(self.route.as_ref(), &push) != Confirmation::Unknown;
        let read = if known || !self.synced {
            0
        } else if self.read_in_flight() {
            self.reads.again = true;
            self.reads.issued + 1
        } else {
            self.issue_read();
            self.reads.issued
        };
        self.waiters.push(Waiter { req, push, read });
    }

    fn precheck(&self, push: &Push) -> Result<(), Refusal> {
        if self.stopping {
            return Err(Refusal::Stopping);
        }
        #[cfg(feature = "mutations")]
        let ignore_token = self.mutated(crate::mutation::Mutation::IgnoreToken);
        #[cfg(not(feature = "mutations"))]
        let ignore_token = false;
        if let Some(route) = &self.route {
            if push.token < route.token && !ignore_token {
                return Err(Refusal::StaleToken {
                    got: push.token,
                    route: route.token,
                });
            }
        }
        if let Some(a) = self.accepted {
            if push.step() < a.step() {
                return Err(Refusal::StaleStep {
                    got: push.step(),
                    current: a.step(),
                });
            }
        }
        if push.phase == Phase::Serve {
            if !self.synced {
                return Err(Refusal::NotServable {
                    why: "not registered with etcd (no route read since the lease was granted)",
                });
            }
            if self.fenced {
                return Err(Refusal::NotServable {
                    why: "lease not fresh (self-fenced)",
                });
            }
        }
        if self.waiters.len() >= MAX_WAITING_PUSHES {
            return Err(Refusal::Busy);
        }
        Ok(())
    }

    /// The answer a waiting push has now, if it has one.
    fn answer(&self, w: &Waiter, desired: LbTarget) -> Option<Result<Applied, Refusal>> {
        let p = w.push;
        if self.stopping {
            return Some(Err(Refusal::Stopping));
        }
        if let Some(a) = self.applied {
            if a.epoch == p.epoch && a.setup == p.setup && a.phase >= p.phase {
                return Some(Ok(a));
            }
            if a.epoch > p.epoch {
                return Some(Err(Refusal::Superseded { by: a.step() }));
            }
        }
        match confirmation(self.route.as_ref(), &p) {
            Confirmation::Confirmed => (p.phase == Phase::Serve
                && desired == LbTarget::Blocked
                && self.fenced)
                .then_some(Err(Refusal::NotServable {
                    why: "lease not fresh (self-fenced)",
                })),
            Confirmation::Superseded(by) => Some(Err(Refusal::Superseded { by })),
            Confirmation::Unknown if w.read > self.reads.answered || !self.synced => None,
            Confirmation::Unknown | Confirmation::Contradicted => {
                Some(Err(Refusal::NotConfirmed {
                    rev: self.route_rev,
                    route: self.route.as_ref().map(Route::step),
                }))
            }
        }
    }

    /// Whether the accepted step is a hold and this member is at its
    /// issuing end.
    fn issuing_at_hold(&self) -> bool {
        self.accepted.is_some_and(|a| a.phase == Phase::Hold)
            && self
                .route
                .as_ref()
                .and_then(|r| r.handover)
                .is_some_and(|h| h.issuer == self.config.role)
    }

    /// etcd's route is below what the link has applied.
    fn behind(&self) -> Option<Behind> {
        if !self.synced {
            return None;
        }
        let applied = self.accepted.map_or(0, |a| a.epoch).max(self.floor);
        match &self.route {
            Some(r) if Some(r.applied()) == self.accepted => None,
            None if applied == 0 => None,
            route => Some(Behind {
                route: route.as_ref().map(Route::step),
                applied,
            }),
        }
    }

    /// What the LB should route to now: the accepted step, while it is
    /// still etcd's route (at a hold's receiving end: the old setup, if it
    /// was serving it).
    fn desired(&self) -> LbTarget {
        // Failsafe: on every grant it needs, the member keeps serving what
        // it served, whatever its lease (and however long a registration
        // or a resync takes once etcd is back).
        if let Some(f) = self.failsafe() {
            if self.now + self.config.lb_down_bound < f.until {
                return LbTarget::Serve(f.serving.setup);
            }
        }
        if self.fenced || self.stopping || !self.synced || self.resyncing {
            return LbTarget::Blocked;
        }
        match self.accepted {
            Some(a) if self.route.as_ref().map(Route::applied) == Some(a) => match a.phase {
                Phase::Serve => LbTarget::Serve(a.setup),
                Phase::Hold => self.held.map_or(LbTarget::Blocked, LbTarget::Serve),
                Phase::Drain => LbTarget::Blocked,
            },
            _ => LbTarget::Blocked,
        }
    }

    /// Moves toward the desired state: issues LB commands, confirms steps,
    /// releases replies. Called after every event.
    fn settle(&mut self) {
        let desired = self.desired();

        // The check endpoint refuses every server from the moment the member
        // stops wanting to serve; D later the LB's own health checks have
        // blocked it, whatever its API says or fails to say.
        if desired == LbTarget::Blocked {
            if self.refusing_since.is_none() {
                self.refusing_since = Some(self.now);
            }
            let bound_passed = self
                .refusing_since
                .is_some_and(|s| self.now >= s + self.config.lb_down_bound);
            // Not while a serve is in flight: it may still make its server
            // UP, after which the checks need D again.
            if bound_passed
                && !self.serve_in_flight()
                && self.lb != LbKnown::Confirmed(LbTarget::Blocked)
            {
                self.lb = LbKnown::AssumedBlocked;
            }
        } else {
            self.refusing_since = None;
        }

        let lb_matches = match self.lb {
            LbKnown::Confirmed(t) => t == desired,
            LbKnown::AssumedBlocked | LbKnown::Unknown => false,
        };
        let retry_due = self.retry_at.is_none_or(|t| self.now >= t);
        if !lb_matches && self.in_flight.is_none() && retry_due {
            self.in_flight = Some(desired);
            // From now on the serve may land at any moment, so whatever was
            // confirmed before (typically "blocked") no longer holds: a
            // drain accepted meanwhile must wait for this command's report
            // and a confirmed block.
            if desired != LbTarget::Blocked {
                self.lb = LbKnown::Unknown;
            }
            let enable_before = self.enable_before(desired);
            self.actions.push_back(MemberAction::ApplyLb {
                target: desired,
                enable_before,
            });
        }

        // A step is applied once the LB is known to reflect it.
        if let Some(acc) = self.accepted {
            let reflects = match (acc.phase, self.lb) {
                (Phase::Drain, LbKnown::Confirmed(LbTarget::Blocked))
                | (Phase::Drain, LbKnown::AssumedBlocked) => true,
                (Phase::Serve, LbKnown::Confirmed(LbTarget::Serve(s))) => {
                    s == acc.setup && desired == LbTarget::Serve(s)
                }
                // A handover's grace starts at a block the LB *confirmed*
                // (a frozen HAProxy may still hand out keys when it thaws):
                // the issuing end never acks a hold on the dead-man's
                // switch alone; the leader waits for its lease instead.
                (Phase::Hold, LbKnown::Confirmed(t)) => t == desired,
                (Phase::Hold, LbKnown::AssumedBlocked) => {
                    self.held.is_none() && !self.issuing_at_hold()
                }
                _ => false,
            };
            #[cfg(feature = "mutations")]
            let reflects = reflects
                || (acc.phase == Phase::Drain
                    && self.mutated(crate::mutation::Mutation::AckBeforeLbBlocked));
            if reflects && self.applied != Some(acc) {
                self.applied = Some(acc);
                self.actions.push_back(MemberAction::WriteApplied(acc));
            }
        }

        let mut still = Vec::new();
        for w in std::mem::take(&mut self.waiters) {
            match self.answer(&w, desired) {
                Some(result) => self
                    .actions
                    .push_back(MemberAction::Reply { req: w.req, result }),
                None => still.push(w),
            }
        }
        self.waiters = still;

        if self.stopping
            && !self.revoked
            && matches!(
                self.lb,
                LbKnown::Confirmed(LbTarget::Blocked) | LbKnown::AssumedBlocked
            )
        {
            self.revoked = true;
            self.actions.push_back(MemberAction::RevokeLease);
        }
    }
}
