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
//! * the LB is only told to serve while the lease is fresh and the member has
//!   read the route since it last registered;
//! * a drain is acknowledged only once the LB is confirmed blocked, or once
//!   the LB's down-detection bound has passed since the check endpoint
//!   stopped answering "routable" (the dead-man's switch did it);
//! * messages with a lower token than one already seen, or a step lower than
//!   the one applied, are rejected.

use crate::time::{Duration, Time};
use crate::types::*;
use std::collections::VecDeque;

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
}

/// Identifies a pending gRPC request so its reply can be released later.
pub type RequestId = u64;

/// Why a peer message was refused.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The sender's token is lower than one this member has already seen.
    StaleToken { got: Token, seen: Token },
    /// The step is lower than one this member has already accepted.
    StaleStep { got: Step, current: Step },
    /// Serving needs a fresh lease and a route read since registration.
    NotServable { why: &'static str },
    /// The message names a different setup than the route of that epoch.
    Inconsistent {
        epoch: Epoch,
        route: Setup,
        got: Setup,
    },
    /// The member is stopping.
    Stopping,
    /// The request was overtaken by a later step before it could apply.
    Superseded { by: Step },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::StaleToken { got, seen } => {
                write!(f, "stale token {got}: a leader with token {seen} exists")
            }
            Refusal::StaleStep { got, current } => {
                write!(f, "stale step {got}: already at {current}")
            }
            Refusal::NotServable { why } => write!(f, "cannot serve: {why}"),
            Refusal::Inconsistent { epoch, route, got } => write!(
                f,
                "epoch {epoch} routes to {route} in etcd, message says {got}"
            ),
            Refusal::Stopping => f.write_str("member is stopping"),
            Refusal::Superseded { by } => write!(f, "superseded by {by}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MemberEvent {
    /// The driver registered a (new) lease and member key, then read the
    /// route (`None`: the link has never been routed). Keep-alive freshness
    /// starts from `lease_sent_at`, the send time of the grant request.
    Synced {
        route: Option<Route>,
        lease_sent_at: Time,
    },
    /// A route from the etcd watch.
    RouteSeen(Route),
    /// A keep-alive sent at `sent_at` was acknowledged with a live lease.
    KeepAliveAcked { sent_at: Time },
    /// etcd says the lease is gone: the member key has been deleted.
    LeaseLost,
    /// gRPC Drain from the leader.
    PeerDrain {
        req: RequestId,
        epoch: Epoch,
        token: Token,
        setup: Setup,
    },
    /// gRPC Serve from the leader.
    PeerServe {
        req: RequestId,
        epoch: Epoch,
        token: Token,
        setup: Setup,
    },
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
    /// The lease is gone: grant a new one, write the member key, read the
    /// route and feed `Synced`.
    Register,
    /// The LB is blocked after `Stop`: revoke the lease, then exit.
    RevokeLease,
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
    pub desired: LbTarget,
    pub lb: LbKnown,
    pub synced: bool,
    pub fenced: bool,
    pub stopping: bool,
    /// Until when the lease is fresh (send time of the last acknowledged
    /// keep-alive + TTL − margin); `None` before the first registration.
    pub lease_fresh_until: Option<Time>,
    pub max_token: Token,
}

impl MemberView {
    /// The LB check answer for `setup` at `now`: routable only for the setup
    /// this member is told to serve, and only while the lease stays fresh
    /// for longer than the LB needs to notice that the answer stopped.
    pub fn routable(&self, setup: Setup, now: Time, lb_down_bound: Duration) -> bool {
        if self.fenced || self.stopping || !self.synced || self.desired != LbTarget::Serve(setup) {
            return false;
        }
        match self.lease_fresh_until {
            Some(until) => now.saturating_add(lb_down_bound) < until,
            None => false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Waiter {
    req: RequestId,
    step: Step,
}

/// The member state machine. See the module docs for the driving protocol.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Member {
    config: MemberConfig,
    now: Time,
    /// Highest step accepted (from a route or a peer) and its setup: what the
    /// LB should reflect once the current apply finishes.
    accepted: Option<Applied>,
    /// Highest step whose LB state was confirmed (and reported to etcd).
    applied: Option<Applied>,
    /// Routes seen from etcd since the last registration, by epoch, so a
    /// peer message naming another setup for a known epoch is refused.
    route_setups: Vec<(Epoch, Setup)>,
    max_token: Token,
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
    lease_fresh_until: Option<Time>,
    fenced: bool,
    stopping: bool,
    revoked: bool,
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
            accepted: None,
            applied: None,
            route_setups: Vec::new(),
            max_token: 0,
            in_flight: None,
            lb: LbKnown::Unknown,
            refusing_since: Some(now),
            retry_at: None,
            synced: false,
            registering: true,
            lease_fresh_until: None,
            fenced: false,
            stopping: false,
            revoked: false,
            waiters: Vec::new(),
            actions: VecDeque::from([MemberAction::ApplyLb {
                target: LbTarget::Blocked,
                enable_before: None,
            }]),
            #[cfg(feature = "mutations")]
            mutation: None,
        }
        .with_in_flight(LbTarget::Blocked)
    }

    fn with_in_flight(mut self, t: LbTarget) -> Self {
        self.in_flight = Some(t);
        self
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
        // Without a lease the serve is already too late.
        Some(
            self.lease_fresh_until
                .map_or(self.now, |until| until - self.config.lb_down_bound),
        )
    }

    pub fn view(&self) -> MemberView {
        MemberView {
            applied: self.applied,
            desired: self.desired(),
            lb: self.lb,
            synced: self.synced,
            fenced: self.fenced,
            stopping: self.stopping,
            lease_fresh_until: self.lease_fresh_until,
            max_token: self.max_token,
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
        t
    }

    /// Feeds one event at `now` (monotonic, never decreasing).
    pub fn handle(&mut self, now: Time, event: MemberEvent) {
        self.now = self.now.max(now);
        match event {
            MemberEvent::Synced {
                route,
                lease_sent_at,
            } => self.on_synced(route, lease_sent_at),
            MemberEvent::RouteSeen(route) => {
                if self.synced {
                    self.accept_route(&route);
                }
            }
            MemberEvent::KeepAliveAcked { sent_at } => {
                if !self.registering {
                    let until = sent_at + self.config.lease_ttl - self.config.margin;
                    if self.lease_fresh_until.is_none_or(|u| until > u) {
                        self.lease_fresh_until = Some(until);
                    }
                    // The lease outlived the gap, so the member key did too:
                    // the leader kept waiting for this member, and it may
                    // serve again what it had applied.
                    if self.fenced && self.synced && self.now < until {
                        self.fenced = false;
                    }
                }
            }
            MemberEvent::LeaseLost => self.on_lease_lost(),
            MemberEvent::PeerDrain {
                req,
                epoch,
                token,
                setup,
            } => self.on_peer(req, Step::new(epoch, Phase::Drain), token, setup),
            MemberEvent::PeerServe {
                req,
                epoch,
                token,
                setup,
            } => self.on_peer(req, Step::new(epoch, Phase::Serve), token, setup),
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
            MemberEvent::Stop => {
                if !self.stopping {
                    self.stopping = true;
                    for w in std::mem::take(&mut self.waiters) {
                        self.actions.push_back(MemberAction::Reply {
                            req: w.req,
                            result: Err(Refusal::Stopping),
                        });
                    }
                }
            }
            MemberEvent::Tick => {}
        }
        self.check_lease();
        self.settle();
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

    fn on_synced(&mut self, route: Option<Route>, lease_sent_at: Time) {
        self.registering = false;
        self.synced = true;
        self.fenced = false;
        self.route_setups.clear();
        self.lease_fresh_until = Some(lease_sent_at + self.config.lease_ttl - self.config.margin);
        if let Some(route) = route {
            self.accept_route(&route);
        }
    }

    fn on_lease_lost(&mut self) {
        self.fence();
        self.synced = false;
        self.lease_fresh_until = None;
        if !self.registering && !self.stopping {
            self.registering = true;
            self.actions.push_back(MemberAction::Register);
        }
    }

    fn fence(&mut self) {
        if !self.fenced {
            self.fenced = true;
        }
    }

    fn check_lease(&mut self) {
        if let Some(until) = self.lease_fresh_until {
            if self.now >= until {
                self.fence();
            }
        }
    }

    fn remember_route_setup(&mut self, epoch: Epoch, setup: Setup) {
        if !self.route_setups.iter().any(|(e, _)| *e == epoch) {
            self.route_setups.push((epoch, setup));
            // Only recent epochs matter; keep the list small.
            if self.route_setups.len() > 8 {
                self.route_setups.remove(0);
            }
        }
    }

    fn accept_route(&mut self, route: &Route) {
        self.remember_route_setup(route.epoch, route.setup);
        if route.token > self.max_token {
            self.max_token = route.token;
        }
        let next = Applied {
            epoch: route.epoch,
            phase: route.phase,
            setup: route.setup,
        };
        if self.accepted.is_none_or(|a| next.step() > a.step()) {
            self.accepted = Some(next);
        }
    }

    fn on_peer(&mut self, req: RequestId, step: Step, token: Token, setup: Setup) {
        let result = self.check_peer(step, token, setup);
        match result {
            Err(refusal) => self.actions.push_back(MemberAction::Reply {
                req,
                result: Err(refusal),
            }),
            Ok(()) => {
                self.max_token = self.max_token.max(token);
                self.remember_route_setup(step.epoch, setup);
                let next = Applied {
                    epoch: step.epoch,
                    phase: step.phase,
                    setup,
                };
                if self.accepted.is_none_or(|a| next.step() > a.step()) {
                    self.accepted = Some(next);
                }
                self.waiters.push(Waiter { req, step });
            }
        }
    }

    fn check_peer(&self, step: Step, token: Token, setup: Setup) -> Result<(), Refusal> {
        if self.stopping {
            return Err(Refusal::Stopping);
        }
        #[cfg(feature = "mutations")]
        let token = if self.mutated(crate::mutation::Mutation::IgnoreToken) {
            self.max_token
        } else {
            token
        };
        if token < self.max_token {
            return Err(Refusal::StaleToken {
                got: token,
                seen: self.max_token,
            });
        }
        if let Some(a) = self.accepted {
            if step < a.step() {
                return Err(Refusal::StaleStep {
                    got: step,
                    current: a.step(),
                });
            }
        }
        if let Some((_, known)) = self.route_setups.iter().find(|(e, _)| *e == step.epoch) {
            if *known != setup {
                return Err(Refusal::Inconsistent {
                    epoch: step.epoch,
                    route: *known,
                    got: setup,
                });
            }
        }
        if step.phase == Phase::Serve {
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
        Ok(())
    }

    /// What the LB should route to now.
    fn desired(&self) -> LbTarget {
        if self.fenced || self.stopping || !self.synced {
            return LbTarget::Blocked;
        }
        match self.accepted {
            Some(Applied {
                phase: Phase::Serve,
                setup,
                ..
            }) => LbTarget::Serve(setup),
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

        // A drain of a later epoch also answers an earlier request; a serve
        // request is answered by the same step only.
        if let Some(applied) = self.applied {
            let mut still = Vec::new();
            for w in std::mem::take(&mut self.waiters) {
                if w.step == applied.step()
                    || (w.step < applied.step() && w.step.phase == Phase::Drain)
                {
                    self.actions.push_back(MemberAction::Reply {
                        req: w.req,
                        result: Ok(applied),
                    });
                } else if w.step < applied.step() {
                    self.actions.push_back(MemberAction::Reply {
                        req: w.req,
                        result: Err(Refusal::Superseded { by: applied.step() }),
                    });
                } else if w.step.phase == Phase::Serve
                    && desired == LbTarget::Blocked
                    && self.fenced
                {
                    self.actions.push_back(MemberAction::Reply {
                        req: w.req,
                        result: Err(Refusal::NotServable {
                            why: "lease not fresh (self-fenced)",
                        }),
                    });
                } else {
                    still.push(w);
                }
            }
            self.waiters = still;
        }

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
