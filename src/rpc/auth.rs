//! Authorization by certificate identity: which gRPC method needs which
//! role, who has which role (`grpc.roles`), and the tower layer that checks
//! every call before any service sees it (`PERMISSION_DENIED` names the role
//! the call needed) and hands the handlers the authenticated caller.
//!
//! Roles: `peer` (the Peer service: sidecars of this link), `operator`
//! (switchover, failover, pause, resume; also everything a viewer may do),
//! `viewer` (status, history, the status watch, health, reflection).

use super::reason::Reason;
use crate::tls::identity::CertInfo;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;

/// A role a certificate identity can have on this link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    Peer,
    Operator,
    Viewer,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::Peer => "peer",
            Access::Operator => "operator",
            Access::Viewer => "viewer",
        })
    }
}

/// Who has which role: identity patterns per role (`grpc.roles`), each an
/// exact identity or a prefix ending in `*`.
pub(crate) type Roles = crate::config::GrpcRoles;

/// Whether `identity` matches `pattern` (exact, or prefix before a final `*`).
pub(crate) fn matches(pattern: &str, identity: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => identity.starts_with(prefix),
        None => pattern == identity,
    }
}

impl Roles {
    fn patterns(&self, role: Access) -> &[String] {
        match role {
            Access::Peer => &self.peer,
            Access::Operator => &self.operator,
            Access::Viewer => &self.viewer,
        }
    }

    /// The first of `identities` that has `role` (operators also have
    /// viewer's), if any.
    pub(crate) fn grants<'a>(&self, identities: &'a [String], role: Access) -> Option<&'a str> {
        let mut roles = vec![role];
        if role == Access::Viewer {
            roles.push(Access::Operator);
        }
        roles.iter().find_map(|r| {
            identities
                .iter()
                .find(|id| self.patterns(*r).iter().any(|p| matches(p, id)))
                .map(String::as_str)
        })
    }

    /// Every role `identities` have, for error messages.
    pub(crate) fn roles_of(&self, identities: &[String]) -> Vec<Access> {
        [Access::Peer, Access::Operator, Access::Viewer]
            .into_iter()
            .filter(|r| {
                identities
                    .iter()
                    .any(|id| self.patterns(*r).iter().any(|p| matches(p, id)))
            })
            .collect()
    }

    /// Accepts a peer's server certificate: one of its identities must have
    /// the `peer` role (the leader dialing a member, the status fan-out).
    pub(crate) fn accept_peer(&self, cert: &CertInfo) -> Result<(), String> {
        if self.grants(&cert.identities, Access::Peer).is_some() {
            Ok(())
        } else {
            Err(format!(
                "the peer's certificate {cert} does not have the peer role of this link (grpc.roles.peer)"
            ))
        }
    }

    /// Accepts the server certificate of member `id` dialed at its
    /// address: one of its identities must be a `peer` pattern ending in
    /// `*` with `id` in place of the `*`
    /// (`spiffe://lockstep/<link>/member/<id>`), so another holder of a
    /// peer certificate who took the address cannot answer for the member
    /// (a drain ack, a grant). With no such pattern (only exact peer
    /// identities, which name no member), the peer role is all it checks.
    pub(crate) fn accept_member(&self, cert: &CertInfo, id: &str) -> Result<(), String> {
        let wildcards: Vec<&str> = self
            .peer
            .iter()
            .filter_map(|p| p.strip_suffix('*'))
            .collect();
        if wildcards.is_empty() {
            return self.accept_peer(cert);
        }
        let names_member = cert.identities.iter().any(|identity| {
            wildcards
                .iter()
                .any(|prefix| identity.strip_prefix(prefix) == Some(id))
        });
        if names_member {
            Ok(())
        } else {
            Err(format!(
                "the certificate {cert} answering for member {id} does not name it (a grpc.roles.peer pattern with {id} in place of its *)"
            ))
        }
    }
}

/// The role a gRPC method needs, by its path; `None`: any authenticated
/// caller with some role (health checks).
pub(crate) fn required(path: &str) -> Option<Access> {
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    match service {
        "lockstep.v1.Peer" => Some(Access::Peer),
        "lockstep.v1.Admin" => Some(match method {
            "Switchover" | "Failover" | "Pause" | "Resume" | "Cancel" => Access::Operator,
            _ => Access::Viewer,
        }),
        "grpc.health.v1.Health" => None,
        _ => Some(Access::Viewer),
    }
}

/// The authenticated caller of a request, as the handlers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Caller {
    /// The certificate identity that granted the call's role.
    Identity(String),
    /// Plaintext gRPC (`grpc.insecure = true`): nobody is authenticated.
    Insecure,
}

impl Caller {
    /// Of a request that passed [`Auth`] (an unchecked one reads as
    /// insecure: only tests build requests by hand).
    pub(crate) fn of<T>(request: &tonic::Request<T>) -> Caller {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or(Caller::Insecure)
    }

    /// The name recorded in the history and the logs.
    pub(crate) fn name(&self) -> String {
        match self {
            Caller::Identity(id) => id.clone(),
            Caller::Insecure => "unauthenticated (grpc.insecure)".into(),
        }
    }
}

/// Who asked, as recorded: the authenticated identity is `requested_by`;
/// the client's free-text `--by` (not authenticated) is kept apart as a
/// note (`by_note`; empty when it says nothing more than the identity).
pub(crate) fn attribute(caller: &Caller, by: &str) -> (String, String) {
    let who = caller.name();
    let by = by.trim();
    if by.is_empty() || by == who {
        (who, String::new())
    } else {
        (who, by.to_string())
    }
}

/// What [`Auth`] enforces.
#[derive(Debug)]
pub(crate) struct Policy {
    /// `None`: plaintext, nothing to check.
    pub(crate) roles: Option<Roles>,
    /// The link, for messages.
    pub(crate) link: String,
    /// Admin calls in flight at once (peers' calls are not counted).
    pub(crate) admin_slots: Arc<Semaphore>,
    /// The bound `admin_slots` was made with, for messages.
    pub(crate) max_admin_calls: usize,
}

impl Policy {
    /// The caller, or the refusal.
    fn check<B>(
        &self,
        req: &hyper::Request<B>,
    ) -> Result<(Caller, Option<OwnedSemaphorePermit>), Status> {
        let path = req.uri().path();
        let slot = if path.starts_with("/lockstep.v1.Admin/") {
            Some(self.admin_slots.clone().try_acquire_owned().map_err(|_| {
                Reason::TooBusy.status_with_code(tonic::Code::ResourceExhausted, format!(
                    "too many Admin calls in flight on this sidecar (grpc.max_admin_calls = {}); retry shortly",
                    self.max_admin_calls
                ))
            })?)
        } else {
            None
        };
        let Some(roles) = &self.roles else {
            return Ok((Caller::Insecure, slot));
        };
        let certs = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.peer_certs());
        let Some(leaf) = certs.as_ref().and_then(|c| c.first()) else {
            return Err(Reason::NotAuthorized.status_with_code(
                tonic::Code::Unauthenticated,
                "no client certificate: connect with mutual TLS (--ca, --cert, --key)",
            ));
        };
        let cert = CertInfo::parse(leaf.as_ref()).map_err(|e| {
            Reason::NotAuthorized.status_with_code(
                tonic::Code::Unauthenticated,
                format!("client certificate: {e}"),
            )
        })?;
        let method = path.trim_start_matches('/');
        let granted = match required(path) {
            Some(role) => roles.grants(&cert.identities, role),
            None => [Access::Peer, Access::Operator, Access::Viewer]
                .into_iter()
                .find_map(|r| roles.grants(&cert.identities, r)),
        };
        match granted {
            Some(id) => Ok((Caller::Identity(id.to_string()), slot)),
            None => {
                let needed = required(path)
                    .map_or("peer, operator or viewer".to_string(), |r| r.to_string());
                let has = roles.roles_of(&cert.identities);
                let has = if has.is_empty() {
                    "no role".to_string()
                } else {
                    format!(
                        "only {}",
                        has.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                Err(Reason::NotAuthorized.status(format!(
                    "{method} needs role {needed} on link {}; certificate {cert} has {has} (grpc.roles.{} on the sidecar lists who has it)",
                    self.link,
                    required(path).map_or("*".to_string(), |r| r.to_string()),
                )))
            }
        }
    }
}

/// The layer that puts [`Auth`] in front of every service.
#[derive(Clone, Debug)]
pub(crate) struct AuthLayer(pub(crate) Arc<Policy>);

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            policy: self.0.clone(),
        }
    }
}

/// Checks each call's role; refused calls never reach a service.
#[derive(Clone, Debug)]
pub(crate) struct Auth<S> {
    inner: S,
    policy: Arc<Policy>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower_service::Service<hyper::Request<B>> for Auth<S>
where
    S: tower_service::Service<hyper::Request<B>, Response = hyper::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = hyper::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: hyper::Request<B>) -> Self::Future {
        match self.policy.check(&req) {
            Err(status) => {
                tracing::info!(path = %req.uri().path(), code = ?status.code(), message = %status.message(), "gRPC call refused");
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
            Ok((caller, slot)) => {
                req.extensions_mut().insert(caller);
                // The clone that was made ready is the one to call.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(async move {
                    let response = inner.call(req).await;
                    drop(slot);
                    response
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles() -> Roles {
        Roles {
            peer: vec!["spiffe://lockstep/qkd-1/member/*".into()],
            operator: vec!["oncall.example.org".into()],
            viewer: vec!["CN-viewer".into()],
        }
    }

    #[test]
    fn methods_need_their_roles() {
        assert_eq!(required("/lockstep.v1.Peer/Drain"), Some(Access::Peer));
        assert_eq!(required("/lockstep.v1.Peer/GetState"), Some(Access::Peer));
        assert_eq!(required("/lockstep.v1.Peer/Grant"), Some(Access::Peer));
        for m in ["Switchover", "Failover", "Pause", "Resume", "Cancel"] {
            assert_eq!(
                required(&format!("/lockstep.v1.Admin/{m}")),
                Some(Access::Operator)
            );
        }
        for m in ["Status", "History", "WatchStatus"] {
            assert_eq!(
                required(&format!("/lockstep.v1.Admin/{m}")),
                Some(Access::Viewer)
            );
        }
        assert_eq!(required("/grpc.health.v1.Health/Check"), None);
        assert_eq!(required("/anything/else"), Some(Access::Viewer));
        assert_eq!(required("garbage"), Some(Access::Viewer));
    }

    #[test]
    fn patterns_and_grants() {
        let r = roles();
        let peer = vec![
            "alice-0".to_string(),
            "spiffe://lockstep/qkd-1/member/alice-0".into(),
        ];
        assert_eq!(
            r.grants(&peer, Access::Peer),
            Some("spiffe://lockstep/qkd-1/member/alice-0")
        );
        assert_eq!(r.grants(&peer, Access::Operator), None);
        assert_eq!(r.grants(&peer, Access::Viewer), None);
        let other_link = vec!["spiffe://lockstep/qkd-2/member/alice-0".to_string()];
        assert_eq!(r.grants(&other_link, Access::Peer), None);
        let op = vec!["oncall.example.org".to_string()];
        assert_eq!(r.grants(&op, Access::Viewer), Some("oncall.example.org"));
        assert_eq!(r.grants(&op, Access::Peer), None);
        let viewer = vec!["CN-viewer".to_string()];
        assert_eq!(r.grants(&viewer, Access::Operator), None);
        assert_eq!(r.roles_of(&viewer), vec![Access::Viewer]);
        // A prefix pattern matches only its prefix.
        assert!(!matches("oncall.example.org", "oncall.example.org.evil"));
        assert!(matches("a*", "a"));
    }

    /// Dialing member bob-0, only a certificate naming bob-0 where the peer
    /// pattern has its `*` answers: another peer's is refused.
    #[test]
    fn a_member_dialed_must_present_its_own_identity() {
        let r = roles();
        let cert = |ids: &[&str]| CertInfo {
            identities: ids.iter().map(|s| s.to_string()).collect(),
            not_before: 0,
            not_after: i64::MAX,
        };
        let bob = cert(&["spiffe://lockstep/qkd-1/member/bob-0"]);
        let alice = cert(&["bob-0", "spiffe://lockstep/qkd-1/member/alice-0"]);
        assert_eq!(r.accept_member(&bob, "bob-0"), Ok(()));
        let e = r.accept_member(&alice, "bob-0").expect_err("alice for bob");
        assert!(e.contains("member bob-0"), "{e}");
        assert!(r.accept_member(&bob, "bob-01").is_err());
        assert!(r.accept_peer(&alice).is_ok(), "alice is still a peer");
        // Exact peer identities name no member: the role is all it checks.
        let exact = Roles {
            peer: vec!["spiffe://lockstep/qkd-1/member/alice-0".into()],
            ..roles()
        };
        assert_eq!(exact.accept_member(&alice, "bob-0"), Ok(()));
        assert!(exact.accept_member(&bob, "bob-0").is_err());
    }

    /// `grpc.max_admin_calls`: past the bound an Admin call is refused
    /// `RESOURCE_EXHAUSTED` (reason TOO_BUSY) before any service sees it;
    /// the leader's pushes are never counted; a slot frees when its call
    /// ends.
    #[test]
    fn admin_calls_in_flight_are_bounded_and_peers_are_not_counted() {
        let policy = Policy {
            roles: None,
            link: "qkd-1".into(),
            admin_slots: Arc::new(Semaphore::new(2)),
            max_admin_calls: 2,
        };
        let call = |path: &str| {
            hyper::Request::builder()
                .uri(format!("http://sidecar{path}"))
                .body(())
                .expect("request")
        };
        let status = "/lockstep.v1.Admin/Status";
        let (_, first) = policy.check(&call(status)).expect("first call");
        let (_, second) = policy
            .check(&call("/lockstep.v1.Admin/Switchover"))
            .expect("second call");
        assert!(
            first.is_some() && second.is_some(),
            "Admin calls hold a slot"
        );
        let refused = policy.check(&call(status)).expect_err("a third in flight");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("grpc.max_admin_calls = 2"),
            "{}",
            refused.message()
        );
        assert_eq!(Reason::of(&refused), Some(Reason::TooBusy));
        let (_, peer) = policy
            .check(&call("/lockstep.v1.Peer/Serve"))
            .expect("a push is not counted");
        assert!(peer.is_none());
        drop(first);
        assert!(policy.check(&call(status)).is_ok(), "a slot freed");
    }
}
