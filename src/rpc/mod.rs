//! gRPC: the `Peer` service between sidecars, the `Admin` service for the
//! on-call CLI, and conversions between the protocol's types and protos.
//!
//! # Layout
//! * `serve`: the server (TLS or plaintext, bounds, the services).
//! * `auth`: who may call what (roles by certificate identity), checked
//!   in front of every service.
//! * `peer`, `admin`: the services.
//! * `reason`: the machine-readable reason (`google.rpc.ErrorInfo`) every
//!   refusal carries.

pub(crate) mod admin;
pub(crate) mod auth;
pub(crate) mod peer;
pub(crate) mod reason;
pub(crate) mod serve;

use crate::proto;
use lockstep_core::{Applied, Phase, Role, Setup};

pub(crate) fn setup_to_proto(s: Setup) -> proto::Setup {
    match s {
        Setup::Hot => proto::Setup::Hot,
        Setup::Warm => proto::Setup::Warm,
    }
}

/// What an LB routes to, `None` when unknown.
pub(crate) fn lb_route_to_proto(t: Option<lockstep_core::LbTarget>) -> proto::LbRoute {
    match t {
        None => proto::LbRoute::Unknown,
        Some(lockstep_core::LbTarget::Blocked) => proto::LbRoute::Blocked,
        Some(lockstep_core::LbTarget::Serve(Setup::Hot)) => proto::LbRoute::Hot,
        Some(lockstep_core::LbTarget::Serve(Setup::Warm)) => proto::LbRoute::Warm,
    }
}

/// `None` for unspecified or unknown values: callers turn that into a clear
/// InvalidArgument.
pub(crate) fn setup_from_proto(v: i32) -> Option<Setup> {
    match proto::Setup::try_from(v).ok()? {
        proto::Setup::Hot => Some(Setup::Hot),
        proto::Setup::Warm => Some(Setup::Warm),
        proto::Setup::Unspecified => None,
    }
}

pub(crate) fn phase_to_proto(p: Phase) -> proto::Phase {
    match p {
        Phase::Hold => proto::Phase::Hold,
        Phase::Drain => proto::Phase::Drain,
        Phase::Serve => proto::Phase::Serve,
    }
}

pub(crate) fn phase_from_proto(v: i32) -> Option<Phase> {
    match proto::Phase::try_from(v).ok()? {
        proto::Phase::Hold => Some(Phase::Hold),
        proto::Phase::Drain => Some(Phase::Drain),
        proto::Phase::Serve => Some(Phase::Serve),
        proto::Phase::Unspecified => None,
    }
}

pub(crate) fn role_to_proto(r: Role) -> proto::Role {
    match r {
        Role::Alice => proto::Role::Alice,
        Role::Bob => proto::Role::Bob,
    }
}

pub(crate) fn applied_to_proto(a: &Applied) -> proto::Applied {
    proto::Applied {
        epoch: a.epoch,
        phase: phase_to_proto(a.phase) as i32,
        setup: setup_to_proto(a.setup) as i32,
    }
}

pub(crate) fn applied_from_proto(a: &proto::Applied) -> Option<Applied> {
    Some(Applied {
        epoch: a.epoch,
        phase: phase_from_proto(a.phase)?,
        setup: setup_from_proto(a.setup)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::limits::proptest_config())]

        /// Request fields are input: enums out of range, any text.
        #[test]
        fn request_validation_never_panics(
            setup in any::<i32>(),
            phase in any::<i32>(),
            epoch in any::<u64>(),
            reason in ".{0,1500}",
            by in ".{0,300}",
            path in "[ -~]{0,60}",
        ) {
            let _ = setup_from_proto(setup);
            let _ = phase_from_proto(phase);
            let _ = applied_from_proto(&proto::Applied { epoch, phase, setup });
            let _ = crate::limits::check_admin_text(&reason, &by);
            let _ = auth::required(&path);
            let caller = auth::Caller::Identity(by.clone());
            let (who, note) = auth::attribute(&caller, &by);
            prop_assert_eq!(&who, &by);
            prop_assert!(note.is_empty() || note == by.trim());
        }
    }
}
