//! Why a gRPC call was refused or did not finish, as a word a program can
//! branch on: the `reason` of the `google.rpc.ErrorInfo` that every refusal
//! of the Admin and Peer services (and of the authorization layer) carries
//! in its status details, domain [`DOMAIN`]. The CLI picks its exit code
//! from it (`cli::admin`), never from the message's text.

use lockstep_core::member::Refusal as PushRefusal;
use lockstep_core::policy::{Refused, RefusedKind};
use std::collections::HashMap;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of lockstep's reasons.
pub(crate) const DOMAIN: &str = "lockstep.v1";

/// One reason per way a call ends without doing what it was asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The link is paused; only `failover --ignore-health` overrides it.
    Paused,
    /// The target setup is not healthy at both ends.
    TargetUnhealthy,
    /// Another manual request waits for the leader.
    PendingRequest,
    /// No leader took the request (none is elected); it was withdrawn.
    NoLeader,
    /// A push that etcd's route does not confirm (Peer service).
    NotConfirmed,
    /// A push below what the member already accepted (Peer service).
    Stale,
    /// The member cannot serve now, or refuses a failsafe grant (Peer
    /// service).
    NotServable,
    /// The request's deadline passed before any leader carried it out;
    /// nothing moved.
    RequestExpired,
    /// The switch started but did not finish within the timeout; it goes
    /// on.
    NotComplete,
    /// The request was taken but its outcome was not seen in time.
    OutcomeUnknown,
    /// The sidecar answered but cannot reach etcd.
    EtcdUnavailable,
    /// The request itself is wrong (bad setup, missing reason, ...).
    InvalidRequest,
    /// The caller's certificate lacks the role, or there is none.
    NotAuthorized,
    /// Too many calls in flight, or the member is stopping.
    TooBusy,
    /// `cancel`: no scheduled switchover (or not the one named).
    NothingToCancel,
}

impl Reason {
    /// Every reason, for parsing and tests.
    pub const ALL: [Reason; 15] = [
        Reason::Paused,
        Reason::TargetUnhealthy,
        Reason::PendingRequest,
        Reason::NoLeader,
        Reason::NotConfirmed,
        Reason::Stale,
        Reason::NotServable,
        Reason::RequestExpired,
        Reason::NotComplete,
        Reason::OutcomeUnknown,
        Reason::EtcdUnavailable,
        Reason::InvalidRequest,
        Reason::NotAuthorized,
        Reason::TooBusy,
        Reason::NothingToCancel,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Paused => "PAUSED",
            Reason::TargetUnhealthy => "TARGET_UNHEALTHY",
            Reason::PendingRequest => "PENDING_REQUEST",
            Reason::NoLeader => "NO_LEADER",
            Reason::NotConfirmed => "NOT_CONFIRMED",
            Reason::Stale => "STALE",
            Reason::NotServable => "NOT_SERVABLE",
            Reason::RequestExpired => "REQUEST_EXPIRED",
            Reason::NotComplete => "NOT_COMPLETE",
            Reason::OutcomeUnknown => "OUTCOME_UNKNOWN",
            Reason::EtcdUnavailable => "ETCD_UNAVAILABLE",
            Reason::InvalidRequest => "INVALID_REQUEST",
            Reason::NotAuthorized => "NOT_AUTHORIZED",
            Reason::TooBusy => "TOO_BUSY",
            Reason::NothingToCancel => "NOTHING_TO_CANCEL",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The gRPC code that goes with it.
    pub fn code(self) -> Code {
        match self {
            Reason::Paused
            | Reason::TargetUnhealthy
            | Reason::PendingRequest
            | Reason::NotServable
            | Reason::NothingToCancel => Code::FailedPrecondition,
            Reason::NoLeader | Reason::EtcdUnavailable | Reason::TooBusy => Code::Unavailable,
            Reason::NotConfirmed => Code::PermissionDenied,
            Reason::Stale => Code::Aborted,
            Reason::RequestExpired | Reason::NotComplete | Reason::OutcomeUnknown => {
                Code::DeadlineExceeded
            }
            Reason::InvalidRequest => Code::InvalidArgument,
            Reason::NotAuthorized => Code::PermissionDenied,
        }
    }

    /// A status with this reason's code, `message` and the `ErrorInfo`.
    pub fn status(self, message: impl Into<String>) -> Status {
        self.status_with_code(self.code(), message)
    }

    /// As [`Reason::status_with_code`], with the code that goes with it.
    pub fn status_with_code(self, code: Code, message: impl Into<String>) -> Status {
        self.status_with(code, message, &[])
    }

    /// A status with `code`, `message` and the `ErrorInfo`, whose metadata
    /// carries `facts` (e.g. the pending request's id) for programs.
    pub fn status_with(
        self,
        code: Code,
        message: impl Into<String>,
        facts: &[(&str, String)],
    ) -> Status {
        let metadata: HashMap<String, String> = facts
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        Status::with_error_details(
            code,
            message,
            ErrorDetails::with_error_info(self.as_str(), DOMAIN, metadata),
        )
    }

    /// As [`Reason::status`], with metadata `facts`.
    pub fn status_about(self, message: impl Into<String>, facts: &[(&str, String)]) -> Status {
        self.status_with(self.code(), message, facts)
    }

    /// The reason a status carries, if it carries one of ours.
    pub fn of(status: &Status) -> Option<Reason> {
        Reason::with_facts(status).map(|(r, _)| r)
    }

    /// The reason and the metadata a status carries, if one of ours.
    pub fn with_facts(
        status: &Status,
    ) -> Option<(Reason, std::collections::BTreeMap<String, String>)> {
        let info = status.get_details_error_info()?;
        if info.domain != DOMAIN {
            return None;
        }
        let reason = Reason::parse(&info.reason)?;
        Some((reason, info.metadata.into_iter().collect()))
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<RefusedKind> for Reason {
    fn from(r: RefusedKind) -> Reason {
        match r {
            RefusedKind::Paused => Reason::Paused,
            RefusedKind::Unhealthy => Reason::TargetUnhealthy,
        }
    }
}

impl From<&Refused> for Reason {
    fn from(r: &Refused) -> Reason {
        Reason::from(r.kind())
    }
}

impl From<&PushRefusal> for Reason {
    fn from(r: &PushRefusal) -> Reason {
        match r {
            PushRefusal::StaleToken { .. }
            | PushRefusal::StaleStep { .. }
            | PushRefusal::Superseded { .. } => Reason::Stale,
            PushRefusal::NotConfirmed { .. } => Reason::NotConfirmed,
            PushRefusal::NotServable { .. } => Reason::NotServable,
            PushRefusal::Stopping | PushRefusal::Busy => Reason::TooBusy,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_survives_the_status_details() {
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
            let s = r.status("why");
            assert_eq!(s.code(), r.code());
            assert_eq!(s.message(), "why");
            // Through the wire format: the details are bytes in the status.
            let http = s.into_http::<()>();
            let back = Status::from_header_map(http.headers()).expect("status from headers");
            assert_eq!(Reason::of(&back), Some(r), "{r}");
        }
        assert_eq!(Reason::of(&Status::unavailable("transport error")), None);
        let s = Reason::PendingRequest.status_about("busy", &[("request_id", "r-1".into())]);
        let (r, facts) = Reason::with_facts(&s).expect("ours");
        assert_eq!(r, Reason::PendingRequest);
        assert_eq!(facts.get("request_id").map(String::as_str), Some("r-1"));
    }
}
