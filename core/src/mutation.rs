//! Deliberate protocol breaks, compiled only with the `mutations` feature.
//!
//! The model checker (`core/tests/model_check.rs`) turns each one on and
//! must find a counterexample; that shows the properties it checks are
//! strong enough to catch the break. The sidecar never enables the feature,
//! so none of this exists in its build.

/// One way to break the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mutation {
    /// The leader writes `serve` right after its `drain` write, without
    /// waiting for any member to ack the drain (make-before-break).
    SkipDrain,
    /// A member acks a drain (records it and replies) as soon as it accepts
    /// it, before its LB is confirmed blocked.
    AckBeforeLbBlocked,
    /// The fencing token is ignored wherever it is checked: members accept
    /// pushes with a token lower than one they have seen, and (in the
    /// model's etcd) a route txn no longer compares the leader key's
    /// create_revision with the writer's token.
    IgnoreToken,
    /// A serve carries no deadline: a driver paused after the decision may
    /// send it however late (the bug the chaos suite found, `b867c61`).
    NoServeDeadline,
    /// A member takes a gRPC push as if etcd's route said it (the trust a
    /// forged `Serve` exploited before pushes were confirmed).
    TrustPushes,
    /// A leader that finds no route bootstraps the link at epoch 1 with
    /// its initial setup, over members that have applied later epochs.
    BootstrapOverApplied,
    /// A member whose fence a late keep-alive lifts serves what it had
    /// accepted without reading the link again (etcd may have been
    /// restored meanwhile).
    ServeAfterFenceUnread,
    /// A handover's drain follows the issuing end's blocks at once: the
    /// receiving end leaves the old setup before the grace has passed.
    NoGrace,
    /// A handover goes from hold straight to serve: the receiving end never
    /// blocks, and may serve the old setup while the issuing end serves
    /// the new one.
    ServeAfterHold,
    /// Failsafe: a member whose lease lapsed keeps serving on the grants it
    /// has, without one from every other incarnation of its roster.
    FailsafeWithoutEveryGrant,
    /// Failsafe: a member grants although it reaches etcd (its lease is
    /// fresh) or leads: a leader's grant keeps a cut member serving while
    /// the leader switches.
    GrantWhileSeeingEtcd,
    /// Failsafe (the drivers, as the model runs them): a leader whose lease
    /// is about to lapse leads on until it learns the lease is lost, so its
    /// member grants nothing meanwhile and its peers fence (a liveness
    /// break: the model must no longer reach "every member serves on
    /// grants").
    LeadOnLapsingLease,
}
