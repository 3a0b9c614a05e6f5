//! The `Peer` service: Drain and Serve pushes from the leader go into the
//! member's one serialized state machine, and are answered only when it
//! releases the reply (after the LB confirmed).

use super::reason::Reason;
use super::{applied_to_proto, setup_from_proto};
use crate::proto::{self, peer_server::Peer};
use crate::sidecar::member::{ask, Input};
use crate::sidecar::Shared;
use lockstep_core::member::Refusal;
use lockstep_core::{Phase, Push};
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tracing::{info_span, Instrument};

pub(crate) struct PeerService {
    pub(crate) shared: Arc<Shared>,
    pub(crate) input: tokio::sync::mpsc::Sender<Input>,
}

impl PeerService {
    async fn push(&self, push: Push) -> Result<Response<proto::ApplyReply>, Status> {
        match ask(&self.input, |tx| Input::Peer(push, tx)).await {
            Some(Ok(applied)) => Ok(Response::new(proto::ApplyReply {
                member: self.shared.config.member_id.clone(),
                applied: Some(applied_to_proto(&applied)),
            })),
            Some(Err(refusal)) => Err(refusal_status(&refusal)),
            None => Err(member_gone()),
        }
    }

    /// A Drain or Serve, validated, through the member's state machine.
    async fn apply(
        &self,
        phase: Phase,
        link: &str,
        epoch: u64,
        token: i64,
        setup: i32,
    ) -> Result<Response<proto::ApplyReply>, Status> {
        self.check_link(link)?;
        let setup = setup_from_proto(setup)
            .ok_or_else(|| Status::invalid_argument("setup must be hot or warm"))?;
        let span = info_span!("peer_apply", %link, %phase, epoch, token, %setup, member = %self.shared.config.member_id);
        let push = Push {
            phase,
            epoch,
            token,
            setup,
        };
        self.push(push).instrument(span).await
    }

    fn check_link(&self, link: &str) -> Result<(), Status> {
        if link != self.shared.config.link {
            return Err(Status::invalid_argument(format!(
                "this member belongs to link {:?}, not {link:?}",
                self.shared.config.link
            )));
        }
        Ok(())
    }
}

/// The member task is gone: the sidecar is stopping.
fn member_gone() -> Status {
    Reason::TooBusy.status("member is shutting down")
}

/// A refusal as a gRPC status. A push etcd does not confirm has its own:
/// `PERMISSION_DENIED` ("not confirmed by etcd at revision R"), since it
/// claims an authority it does not have; it changed nothing.
fn refusal_status(r: &Refusal) -> Status {
    // The reason's code: ABORTED for stale, PERMISSION_DENIED for not
    // confirmed, FAILED_PRECONDITION for not servable, UNAVAILABLE else.
    super::reason::Reason::from(r).status(r.to_string())
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn drain(
        &self,
        request: Request<proto::DrainRequest>,
    ) -> Result<Response<proto::ApplyReply>, Status> {
        let r = request.into_inner();
        self.apply(Phase::Drain, &r.link, r.epoch, r.token, r.setup)
            .await
    }

    async fn serve(
        &self,
        request: Request<proto::ServeRequest>,
    ) -> Result<Response<proto::ApplyReply>, Status> {
        let r = request.into_inner();
        self.apply(Phase::Serve, &r.link, r.epoch, r.token, r.setup)
            .await
    }

    async fn hold(
        &self,
        request: Request<proto::DrainRequest>,
    ) -> Result<Response<proto::ApplyReply>, Status> {
        let r = request.into_inner();
        self.apply(Phase::Hold, &r.link, r.epoch, r.token, r.setup)
            .await
    }

    async fn grant(
        &self,
        request: Request<proto::GrantRequest>,
    ) -> Result<Response<proto::GrantReply>, Status> {
        let r = request.into_inner();
        self.check_link(&r.link)?;
        let setup = setup_from_proto(r.setup)
            .ok_or_else(|| Status::invalid_argument("setup must be hot or warm"))?;
        if r.member.is_empty() || r.member.len() > crate::limits::MAX_MEMBER_ID {
            return Err(Status::invalid_argument("member must be a member id"));
        }
        let grant = lockstep_core::failsafe::GrantAsk {
            from: r.member,
            epoch: r.epoch,
            setup,
        };
        match ask(&self.input, |tx| Input::Grant(grant, tx)).await {
            Some(Ok(g)) => Ok(Response::new(proto::GrantReply {
                member: self.shared.config.member_id.clone(),
                lease: g.lease,
                epoch: g.epoch,
                setup: super::setup_to_proto(g.setup) as i32,
            })),
            // Not a fault: the asker goes on without this grant.
            Some(Err(refusal)) => Err(Reason::NotServable.status(refusal.to_string())),
            None => Err(member_gone()),
        }
    }

    async fn get_state(
        &self,
        _request: Request<proto::GetStateRequest>,
    ) -> Result<Response<proto::MemberState>, Status> {
        Ok(Response::new(self.shared.member_state()))
    }
}
