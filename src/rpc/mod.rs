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

        /// Request fields are input: enums out of range, any text. Each
        /// conversion gives the value the number or text stands for, or its
        /// typed refusal (`None`; `INVALID_ARGUMENT` with INVALID_REQUEST
        /// naming the field), never a panic.
        #[test]
        fn request_validation_never_panics_and_gives_values_or_typed_refusals(
            setup in prop_oneof![any::<i32>(), 0..4i32],
            phase in prop_oneof![any::<i32>(), 0..5i32],
            epoch in any::<u64>(),
            reason in prop_oneof![".{0,1500}", "[ -~]{0,40}"],
            by in prop_oneof![".{0,300}", "[ -~]{0,20}"],
            path in prop_oneof!["[ -~]{0,60}", "/(lockstep\\.v1\\.(Peer|Admin)|grpc\\.health\\.v1\\.Health)/[A-Za-z]{0,12}"],
        ) {
            let s = setup_from_proto(setup);
            prop_assert_eq!(s.is_some(), setup == proto::Setup::Hot as i32 || setup == proto::Setup::Warm as i32);
            if let Some(s) = s {
                prop_assert_eq!(setup_to_proto(s) as i32, setup);
            }
            let p = phase_from_proto(phase);
            prop_assert_eq!(
                p.is_some(),
                [proto::Phase::Hold, proto::Phase::Drain, proto::Phase::Serve].iter().any(|v| *v as i32 == phase)
            );
            if let Some(p) = p {
                prop_assert_eq!(phase_to_proto(p) as i32, phase);
            }
            let applied = applied_from_proto(&proto::Applied { epoch, phase, setup });
            prop_assert_eq!(applied.is_some(), s.is_some() && p.is_some());
            if let Some(a) = applied {
                prop_assert_eq!(applied_to_proto(&a), proto::Applied { epoch, phase, setup });
            }

            let printable = |t: &str, max: usize| t.len() <= max && !t.chars().any(char::is_control);
            let reason_ok = printable(&reason, crate::limits::MAX_REASON);
            match crate::limits::check_admin_text(&reason, &by) {
                Ok(()) => prop_assert!(reason_ok && printable(&by, crate::limits::MAX_BY)),
                Err(status) => {
                    prop_assert_eq!(status.code(), tonic::Code::InvalidArgument);
                    prop_assert_eq!(reason::Reason::of(&status), Some(reason::Reason::InvalidRequest));
                    let field = if reason_ok { "requested_by" } else { "reason" };
                    prop_assert!(status.message().starts_with(field), "{}", status.message());
                }
            }

            // A path without a method names no known service: viewer.
            let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or(("?", ""));
            let want = match service {
                "grpc.health.v1.Health" => None,
                "lockstep.v1.Peer" => Some(auth::Access::Peer),
                "lockstep.v1.Admin" if ["Switchover", "Failover", "Pause", "Resume", "Cancel"].contains(&method) => Some(auth::Access::Operator),
                _ => Some(auth::Access::Viewer),
            };
            prop_assert_eq!(auth::required(&path), want, "{}", path);

            let caller = auth::Caller::Identity(by.clone());
            let (who, note) = auth::attribute(&caller, &by);
            prop_assert_eq!(&who, &by);
            prop_assert!(note.is_empty() || note == by.trim());
        }
    }
}
