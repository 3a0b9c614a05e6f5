//! The `Admin` service. Any member answers; a switch request is checked
//! here against the link's state, stored in etcd (so it survives a leader
//! change) and carried out by the leader, which checks it again.

use super::auth::{attribute, Caller};
use super::reason::Reason;
use super::{applied_to_proto, phase_to_proto, role_to_proto, setup_from_proto, setup_to_proto};
use crate::proto::{self, admin_server::Admin, peer_client::PeerClient};
use crate::sidecar::Shared;
use crate::store::{Change, Snapshot, Store, Watch, Watched};
use futures::Stream;
use lockstep_core::health::aggregate;
use lockstep_core::leader::{HistoryRecord, RequestOutcome, RequestStatus};
use lockstep_core::link::LinkState;
use lockstep_core::policy::{check_request, Pause, Request, RequestKind, Verdict};
use lockstep_core::Setup;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::{Response, Status};
use tracing::{debug, debug_span, info, info_span, Instrument};

pub(crate) struct AdminService {
    pub(crate) shared: Arc<Shared>,
}

fn store_status(e: crate::store::StoreError) -> Status {
    Reason::EtcdUnavailable.status(format!(
        "this sidecar's etcd request failed: {e}; check etcd's health, or call another member (--endpoint)"
    ))
}

fn health_of(s: &Snapshot, setup: Setup) -> lockstep_core::health::SetupHealth {
    aggregate(
        s.members.iter().map(|m| (m.record.role, &m.record.health)),
        setup,
    )
}

/// Builds the status from a snapshot, asking each member for its live state
/// (briefly; the etcd record stands in for a member that does not answer).
pub(crate) async fn build_status(shared: &Shared, s: &Snapshot) -> proto::StatusReply {
    let mut members = Vec::new();
    let asks = s.members.iter().map(|m| {
        let addr = m.record.grpc.clone();
        async move {
            // The member's cached channel: no new connection (or TLS
            // handshake) per status.
            let channel = shared.channels.get(&addr, &m.id).ok()?;
            let fut = async {
                PeerClient::new(channel)
                    .get_state(proto::GetStateRequest {})
                    .await
                    .ok()
                    .map(|r| r.into_inner())
            };
            tokio::time::timeout(Duration::from_millis(500), fut)
                .await
                .ok()
                .flatten()
        }
    });
    let live = futures::future::join_all(asks).await;
    for (m, live) in s.members.iter().zip(live) {
        members.push(live.unwrap_or_else(|| proto::MemberState {
            id: m.id.clone(),
            role: role_to_proto(m.record.role) as i32,
            grpc_address: m.record.grpc.clone(),
            applied: m.record.applied.as_ref().map(applied_to_proto),
            lb_routes: m.record.lb.map_or("unknown".to_string(), |t| t.to_string()),
            lb: super::lb_route_to_proto(m.record.lb) as i32,
            health: Some(proto::Health {
                hot: m.record.health.hot.to_string(),
                warm: m.record.health.warm.to_string(),
                detail: "member did not answer; from its etcd record".into(),
            }),
            lease_age_ms: 0,
            lease_fresh: false,
            behind: m.record.behind.map_or(String::new(), |b| b.to_string()),
            insecure: false,
            failsafe: String::new(),
        }));
    }
    let insecure = shared.config.grpc.insecure || members.iter().any(|m| m.insecure);
    proto::StatusReply {
        link: shared.config.link.clone(),
        leader: s
            .leader
            .as_ref()
            .map_or(String::new(), |(id, _)| id.clone()),
        token: s.leader.as_ref().map_or(0, |(_, t)| *t),
        route: s.route.as_ref().map(|(r, _)| proto::Route {
            epoch: r.epoch,
            phase: phase_to_proto(r.phase) as i32,
            setup: setup_to_proto(r.setup) as i32,
            token: r.token,
            reason: r.reason.clone(),
            requested_by: r.requested_by.clone(),
            at: r.at.clone(),
            handover_issuer: r.handover.map_or(0, |h| role_to_proto(h.issuer) as i32),
            handover_from: r.handover.map_or(0, |h| setup_to_proto(h.from) as i32),
            grace_ms: r.handover.map_or(0, |h| h.grace_ms),
        }),
        members,
        paused: s.paused.is_some(),
        paused_reason: s.paused.as_ref().map_or(String::new(), |p| {
            let by = if p.by_note.is_empty() {
                p.requested_by.clone()
            } else {
                format!("{}, --by {}", p.requested_by, p.by_note)
            };
            format!("{} (by {by}, {})", p.reason, p.at)
        }),
        pending: s.request.as_ref().map(|(r, _)| proto::PendingRequest {
            id: r.id.clone(),
            to: setup_to_proto(r.to) as i32,
            force: r.force,
            reason: r.reason.clone(),
            requested_by: r.requested_by.clone(),
            at: r.at.clone(),
            kind: r.kind.to_string(),
            by_note: r.by_note.clone(),
            grace_ms: r.grace_ms.unwrap_or(0),
            not_before: r.not_before_ms.map_or(String::new(), rfc3339_of_ms),
        }),
        health: Setup::ALL
            .iter()
            .map(|setup| {
                let h = health_of(s, *setup);
                proto::SetupHealth {
                    setup: setup_to_proto(*setup) as i32,
                    alice: h.alice.to_string(),
                    bob: h.bob.to_string(),
                    healthy: h.healthy(),
                }
            })
            .collect(),
        settled: s.settled(),
        policy: s.policy.clone().unwrap_or_default(),
        state: s.link().to_string(),
        insecure,
    }
}

impl AdminService {
    async fn switch(
        &self,
        req: proto::SwitchRequest,
        kind: RequestKind,
        caller: Caller,
    ) -> Result<Response<proto::SwitchReply>, Status> {
        let started = Instant::now();
        crate::limits::check_admin_text(&req.reason, &req.requested_by)?;
        // Nothing switches without etcd: say so plainly rather than wait
        // for an etcd request to time out.
        let on_grants = self.shared.view.borrow().on_grants(self.shared.clock.now());
        if let Some(f) = on_grants {
            return Err(Reason::EtcdUnavailable.status(format!(
                "refused: this member is in failsafe (etcd unreachable; serving {} at epoch {} on every roster member's grant); try again once etcd answers",
                f.serving.setup, f.serving.epoch
            )));
        }
        let (requested_by, by_note) = attribute(&caller, &req.requested_by);
        let to = setup_from_proto(req.to).ok_or_else(|| {
            Reason::InvalidRequest.status("unknown target setup: use \"hot\" or \"warm\"")
        })?;
        if req.reason.trim().is_empty() {
            return Err(Reason::InvalidRequest
                .status("a reason is required: it is recorded in the history"));
        }
        let timeout = if req.timeout_ms > 0 {
            Duration::from_millis(req.timeout_ms)
        } else {
            self.shared.config.admin.switch_timeout
        };
        if Duration::from_millis(req.grace_ms) > timeout {
            return Err(Reason::InvalidRequest.status(format!(
                "a grace of {:?} is longer than the switch may take ({timeout:?}); give a shorter --grace or a longer --timeout",
                Duration::from_millis(req.grace_ms)
            )));
        }
        let not_before_ms = scheduled_at(&req.at, kind)?;
        // An immediate request's call waits up to `timeout` (a scheduled
        // one returns at once; its timeout runs from its time). The sidecar
        // cuts every call at `grpc.call_timeout`: a wait past it would be
        // cut before it could withdraw an untaken request. A dry run
        // answers as the real call would.
        let call_timeout = self.shared.config.grpc.call_timeout;
        if not_before_ms.is_none() && timeout >= call_timeout {
            return Err(Reason::InvalidRequest.status(format!(
                "a timeout of {timeout:?} is not shorter than this sidecar's grpc.call_timeout ({call_timeout:?}), which would cut the call first; give a --timeout below {call_timeout:?}"
            )));
        }
        let store = &self.shared.store;
        // A request this call waits for is watched for from "now", before
        // it is stored, so its outcome cannot be missed: that watch is
        // opened alongside the read, one etcd round trip instead of two.
        let waits = !req.dry_run && not_before_ms.is_none();
        let (snap, watch) = async {
            if waits {
                let (snap, watch) = tokio::join!(store.snapshot(), store.watch(Watched::Link));
                Ok::<_, crate::store::StoreError>((snap?, Some(watch?)))
            } else {
                Ok((store.snapshot().await?, None))
            }
        }
        .instrument(debug_span!("admin_read"))
        .await
        .map_err(store_status)?;
        let request = Request {
            id: uuid::Uuid::new_v4().to_string(),
            kind,
            to,
            force: req.force,
            reason: req.reason.clone(),
            requested_by,
            by_note,
            at: crate::sidecar::leader::now_rfc3339(),
            // No leader carries it out after the caller has given up on it
            // (a scheduled one: later than `timeout` after its time).
            deadline_ms: Some(
                not_before_ms.unwrap_or_else(crate::sidecar::leader::wall_ms)
                    + timeout.as_millis() as u64,
            ),
            not_before_ms,
            grace_ms: (req.grace_ms > 0).then_some(req.grace_ms),
        };
        let epoch_now = snap.route.as_ref().map_or(0, |(r, _)| r.epoch);
        let link = snap.link();
        let from = link.settled().map_or(0, |s| setup_to_proto(s) as i32);
        let handover = self.shared.config.handover.protocol().ok().flatten();
        let plan = plan_text(handover, &snap, &request);
        let disagreement = disagreement(&link);
        if let Some(at) = not_before_ms {
            return self.schedule(request, &snap, at, req.dry_run, plan).await;
        }
        match check_request(&request, &link, snap.paused.as_ref(), &health_of(&snap, to)) {
            Err(refused) => return Err(Reason::from(&refused).status(refused.to_string())),
            Ok(Verdict::AlreadyActive) => {
                return Ok(Response::new(proto::SwitchReply {
                    request_id: String::new(),
                    epoch: epoch_now,
                    already_active: true,
                    completed: true,
                    elapsed_ms: started.elapsed().as_millis() as u64,
                    dry_run: req.dry_run,
                    plan: format!("every LB already serves {to}; nothing to do"),
                    from,
                    scheduled_at: String::new(),
                    disagreement: disagreement.clone(),
                }))
            }
            Ok(Verdict::Go) => {}
        }
        if req.dry_run {
            // What a real request would meet next: one pending already, or
            // no leader to carry it out. Nothing is stored.
            if let Some((pending, _)) = &snap.request {
                return Err(pending_refusal(pending));
            }
            if snap.leader.is_none() {
                return Err(Reason::NoLeader.status(
                    "no leader is elected, so no leader would carry the switch out; is etcd reachable from the sidecars? (`lockstep status`)",
                ));
            }
            return Ok(Response::new(proto::SwitchReply {
                request_id: String::new(),
                epoch: epoch_now,
                already_active: false,
                completed: false,
                elapsed_ms: started.elapsed().as_millis() as u64,
                dry_run: true,
                plan,
                from,
                scheduled_at: String::new(),
                disagreement,
            }));
        }
        // The watch opened with the read is kept until the link has
        // settled: a watch opened while the switch's writes commit can
        // start behind etcd's revision, and etcd catches such a watch up
        // only every 100 ms (the 50-100 ms tail of the switch latency,
        // docs/benchmarks.md).
        let mut watch = match watch {
            Some(watch) => watch,
            None => store.watch(Watched::Link).await.map_err(store_status)?,
        };
        let put = store
            .put_request(&request)
            .instrument(debug_span!("admin_store_request"))
            .await
            .map_err(store_status)?;
        let rev = match put {
            Ok(rev) => rev,
            Err(pending) => return Err(pending_refusal(&pending)),
        };
        info!(id = %request.id, %kind, %to, by = %request.requested_by, by_note = %request.by_note, reason = %request.reason, "request stored");
        let outcome = wait_outcome(store, &mut watch, &request.id, started + timeout)
            .instrument(debug_span!("admin_wait_outcome"))
            .await;
        let outcome = match outcome {
            Ok(o) => o,
            Err(etcd_error) => {
                // Leave nothing half-done: withdraw the request if no leader
                // took it.
                let withdrawn = store.withdraw_request(rev).await.unwrap_or(false);
                let etcd = etcd_note(etcd_error);
                return Err(if withdrawn {
                    Reason::NoLeader.status(format!("no leader took the request within {timeout:?}{etcd}, so it was withdrawn; is a leader elected? (`lockstep status`)"))
                } else {
                    Reason::OutcomeUnknown.status(format!("the request was taken but its outcome was not seen within {timeout:?}{etcd}; check `lockstep status` and `lockstep history`"))
                });
            }
        };
        match outcome.status {
            RequestStatus::Rejected => {
                // Refused by the leader's own check: the link changed since
                // this member's.
                let reason = outcome
                    .refused
                    .map_or(Reason::TargetUnhealthy, Reason::from);
                return Err(reason.status(outcome.message));
            }
            RequestStatus::Expired => return Err(Reason::RequestExpired.status(outcome.message)),
            RequestStatus::Already => {
                return Ok(Response::new(proto::SwitchReply {
                    request_id: request.id,
                    epoch: outcome.epoch,
                    already_active: true,
                    completed: true,
                    elapsed_ms: started.elapsed().as_millis() as u64,
                    dry_run: false,
                    plan: format!("every LB already serves {to}; nothing to do"),
                    from,
                    scheduled_at: String::new(),
                    disagreement: disagreement.clone(),
                }))
            }
            RequestStatus::Started => {}
        }
        tracing::Span::current().record("epoch", outcome.epoch);
        let mut completed = false;
        if req.wait {
            let deadline = started + timeout;
            let settled = wait_settled(store, &mut watch, outcome.epoch, to, deadline)
                .instrument(debug_span!("admin_wait_settled", epoch = outcome.epoch))
                .await;
            if let Err(etcd_error) = settled {
                return Err(Reason::NotComplete.status_about(
                    format!(
                        "switch to {to} at epoch {} not complete within {timeout:?}{}; it goes on (`lockstep status`)",
                        outcome.epoch,
                        etcd_note(etcd_error)
                    ),
                    &[
                        ("request_id", request.id.clone()),
                        ("epoch", outcome.epoch.to_string()),
                        ("to", to.to_string()),
                    ],
                ));
            }
            completed = true;
        }
        Ok(Response::new(proto::SwitchReply {
            request_id: request.id,
            epoch: outcome.epoch,
            already_active: false,
            completed,
            elapsed_ms: started.elapsed().as_millis() as u64,
            dry_run: false,
            plan,
            from,
            scheduled_at: String::new(),
            disagreement,
        }))
    }

    /// Stores a scheduled switchover and returns at once: health and pause
    /// are judged at its time, by the leader then in office.
    async fn schedule(
        &self,
        request: Request,
        snap: &crate::store::Snapshot,
        at: u64,
        dry_run: bool,
        plan: String,
    ) -> Result<Response<proto::SwitchReply>, Status> {
        if let Some((pending, _)) = &snap.request {
            return Err(pending_refusal(pending));
        }
        let when = rfc3339_of_ms(at);
        let epoch = snap.route.as_ref().map_or(0, |(r, _)| r.epoch);
        let from = snap
            .link()
            .settled()
            .map_or(0, |s| setup_to_proto(s) as i32);
        let reply = |id: String, dry_run: bool| proto::SwitchReply {
            request_id: id,
            epoch,
            already_active: false,
            completed: false,
            elapsed_ms: 0,
            dry_run,
            plan: format!(
                "at {when}, if {} is healthy and the link is not paused then: {plan}",
                request.to
            ),
            from,
            scheduled_at: when.clone(),
            disagreement: disagreement(&snap.link()),
        };
        if dry_run {
            return Ok(Response::new(reply(String::new(), true)));
        }
        match self
            .shared
            .store
            .put_request(&request)
            .await
            .map_err(store_status)?
        {
            Ok(_) => {}
            Err(pending) => return Err(pending_refusal(&pending)),
        }
        info!(id = %request.id, to = %request.to, at = %when, by = %request.requested_by, reason = %request.reason, "switchover scheduled");
        Ok(Response::new(reply(request.id.clone(), false)))
    }

    /// Pauses (`Some(reason)`) or resumes the link, with its history record.
    async fn set_paused(
        &self,
        r: proto::PauseRequest,
        caller: Caller,
        pause: bool,
    ) -> Result<Response<proto::PauseReply>, Status> {
        crate::limits::check_admin_text(&r.reason, &r.requested_by)?;
        if pause && r.reason.trim().is_empty() {
            return Err(Reason::InvalidRequest.status("a reason is required to pause"));
        }
        let (requested_by, by_note) = attribute(&caller, &r.requested_by);
        let store = &self.shared.store;
        let snap = store.snapshot().await.map_err(store_status)?;
        if !pause && snap.paused.is_none() {
            // Nothing to resume: no record, nothing written.
            return Ok(Response::new(proto::PauseReply {
                paused: false,
                changed: false,
            }));
        }
        let record_of = Pause {
            reason: r.reason.clone(),
            requested_by,
            by_note,
            at: crate::sidecar::leader::now_rfc3339(),
        };
        let (epoch, setup) = snap
            .route
            .as_ref()
            .map_or((0, self.shared.config.initial_setup), |(route, _)| {
                (route.epoch, route.setup)
            });
        let record = crate::sidecar::leader::pause_record(
            &record_of,
            pause,
            epoch,
            setup,
            &self.shared.config.member_id,
            0,
        );
        store
            .set_paused(pause.then_some(&record_of), &record)
            .await
            .map_err(store_status)?;
        info!(link = %self.shared.config.link, reason = %record_of.reason, by = %record_of.requested_by, by_note = %record_of.by_note, paused = pause, "pause changed");
        Ok(Response::new(proto::PauseReply {
            paused: pause,
            changed: true,
        }))
    }
}

/// Another request is pending: what it is and what to do.
fn pending_refusal(pending: &Request) -> Status {
    Reason::PendingRequest.status_about(
        format!(
            "another request is pending ({} to {} by {}: {}); wait for it (`lockstep status`)",
            pending.kind, pending.to, pending.requested_by, pending.reason
        ),
        &[
            ("request_id", pending.id.clone()),
            ("kind", pending.kind.to_string()),
            ("to", pending.to.to_string()),
            ("requested_by", pending.requested_by.clone()),
        ],
    )
}

/// The LBs' disagreement with etcd's route, in words (which member applied
/// and reads back what); empty when they agree.
fn disagreement(link: &LinkState) -> String {
    match link {
        LinkState::Disagrees { .. } => link.to_string(),
        _ => String::new(),
    }
}

/// What a switch for `request` does, in words, from the link as `snap`
/// shows it (the leader decides the same way: `Leader::handover_for`).
/// `handover`: the link's configured handover, if any. When the LBs
/// disagree with the route, the plan says so first.
fn plan_text(
    handover: Option<lockstep_core::leader::HandoverConfig>,
    snap: &Snapshot,
    request: &Request,
) -> String {
    let to = request.to;
    let lbs = snap
        .members
        .iter()
        .map(|m| m.id.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let link = snap.link();
    let from = link.settled();
    let mut out = match (&link, from) {
        (LinkState::Disagrees { .. }, _) => format!("{link}; then {} to {to}: ", request.kind),
        (_, Some(from)) => format!("{} from {from} to {to}: ", request.kind),
        (_, None) => format!("{} to {to}: ", request.kind),
    };
    let handover = handover
        .filter(|_| request.kind == RequestKind::Switchover && from.is_some_and(|f| f != to));
    if let (Some(h), Some(from)) = (handover, from) {
        let receiving = match h.issuer {
            lockstep_core::Role::Alice => lockstep_core::Role::Bob,
            lockstep_core::Role::Bob => lockstep_core::Role::Alice,
        };
        let grace = request.grace_ms.map_or(h.grace, Duration::from_millis);
        out.push_str(&format!(
            "{}'s LBs block first (no new keys); {receiving}'s stay on {from} for {grace:?} after every block is confirmed (unless {receiving}'s {from} is down); then ",
            h.issuer
        ));
    }
    out.push_str(&format!(
        "every LB ({lbs}) blocks at a new epoch above {}, and once every block is confirmed (or a member's lease expired) every LB serves {to}",
        // Above the route and every epoch a member applied (a lost or
        // rolled-back route is below them).
        snap.route
            .as_ref()
            .map_or(0, |(r, _)| r.epoch)
            .max(snap.link_read().floor)
    ));
    if request.force {
        out.push_str("; health and pause are ignored (--ignore-health)");
    }
    out
}

/// Pause before the link's watch is opened again after it broke.
const REWATCH_PAUSE: Duration = Duration::from_millis(100);

/// The link's watch broke (an etcd node lost, a connection reset): opens
/// it again, and reads the link after it, until `deadline`. The client
/// moves on to another endpoint, so a wait survives an etcd leader change.
/// `etcd_error` keeps the last error, for the answer if time runs out.
async fn rewatch(
    store: &Store,
    deadline: Instant,
    etcd_error: &mut Option<String>,
) -> Option<(Watch, Snapshot)> {
    loop {
        tokio::time::sleep(REWATCH_PAUSE).await;
        match tokio::time::timeout_at(deadline.into(), store.watch_then_snapshot(Watched::Link))
            .await
        {
            Err(_) => return None,
            Ok(Ok(found)) => return Some(found),
            Ok(Err(e)) => *etcd_error = Some(e.to_string()),
        }
    }
}

/// The next batch of changes on `watch`, or the error that broke it.
async fn next_changes(watch: &mut Watch) -> Result<Vec<Change>, String> {
    match watch.next().await {
        Ok(Some(changes)) => Ok(changes.into_iter().filter_map(Result::ok).collect()),
        Ok(None) => Err("the etcd watch ended".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Waits for the leader's outcome of request `id` on `watch` until
/// `deadline`. `Err` carries the last etcd error seen, if any.
async fn wait_outcome(
    store: &Store,
    watch: &mut Watch,
    id: &str,
    deadline: Instant,
) -> Result<RequestOutcome, Option<String>> {
    let mut etcd_error = None;
    let fut = async {
        loop {
            match next_changes(watch).await {
                Ok(changes) => {
                    for change in changes {
                        if let Change::Outcome(o) = change {
                            if o.id == id {
                                return Some(o);
                            }
                        }
                    }
                    continue;
                }
                Err(e) => etcd_error = Some(e),
            }
            let (w, snap) = rewatch(store, deadline, &mut etcd_error).await?;
            *watch = w;
            if let Some(o) = snap.outcome.filter(|o| o.id == id) {
                return Some(o);
            }
        }
    };
    let outcome = tokio::time::timeout_at(deadline.into(), fut)
        .await
        .ok()
        .flatten();
    outcome.ok_or(etcd_error)
}

/// Waits until every member's LB reads back `to` at `epoch` or later (or a
/// later switch has moved the link on): the link state, the one
/// definition of "complete". `watch` is a watch of the whole link opened
/// before the switch began; it is opened again if it breaks. One read,
/// then the watch's changes newer than it: the link at each revision
/// without a round trip per change (the read is again taken only when a
/// change cannot be decoded). `Err` carries the last etcd error seen, if
/// any.
async fn wait_settled(
    store: &Store,
    watch: &mut Watch,
    epoch: u64,
    to: Setup,
    deadline: Instant,
) -> Result<(), Option<String>> {
    let check = |s: &Snapshot| {
        let moved_on = s.route.as_ref().is_some_and(|(r, _)| r.epoch > epoch);
        let settled =
            matches!(s.link(), LinkState::Settled { epoch: e, setup } if e >= epoch && setup == to);
        !s.members.is_empty() && (settled || (moved_on && s.settled()))
    };
    let mut etcd_error = None;
    let fut = async {
        loop {
            // One read (the watch is older than it, so nothing after it is
            // missed) ...
            let read = store
                .snapshot()
                .instrument(debug_span!("settle_read", epoch))
                .await;
            let mut link = match read {
                Ok(snap) => snap,
                Err(e) => {
                    etcd_error = Some(e.to_string());
                    let (w, snap) = rewatch(store, deadline, &mut etcd_error).await?;
                    *watch = w;
                    snap
                }
            };
            // ... then the watch's newer changes, until one cannot be
            // decoded: read again.
            let mut moved = true;
            loop {
                if moved && check(&link) {
                    return Some(());
                }
                let batch = match watch.next().await {
                    Ok(Some(batch)) => batch,
                    broken => {
                        etcd_error = Some(match broken {
                            Err(e) => e.to_string(),
                            Ok(_) => "the etcd watch ended".into(),
                        });
                        let (w, snap) = rewatch(store, deadline, &mut etcd_error).await?;
                        *watch = w;
                        (link, moved) = (snap, true);
                        continue;
                    }
                };
                moved = false;
                let mut undecodable = false;
                for change in batch {
                    match change {
                        Ok(change) => moved |= link.apply_link_change(&change),
                        Err(e) => {
                            debug!(error = %e, "settle: a change could not be decoded; reading the link");
                            undecodable = true;
                        }
                    }
                }
                if undecodable {
                    break;
                }
                debug!(moved, "settle: watch batch");
            }
        }
    };
    let settled = tokio::time::timeout_at(deadline.into(), fut)
        .await
        .ok()
        .flatten();
    settled.ok_or(etcd_error)
}

/// " (etcd: <error>)" when a wait saw etcd fail, for its answer.
fn etcd_note(etcd_error: Option<String>) -> String {
    etcd_error.map_or_else(String::new, |e| format!(" (etcd: {e})"))
}

fn history_to_proto(h: &HistoryRecord) -> proto::HistoryRecord {
    proto::HistoryRecord {
        epoch: h.epoch,
        from: h.from.map_or(0, |s| setup_to_proto(s) as i32),
        to: setup_to_proto(h.to) as i32,
        kind: h.kind.to_string(),
        reason: h.reason.clone(),
        requested_by: h.requested_by.clone(),
        leader: h.leader.clone(),
        token: h.token,
        started_at: h.started_at.clone(),
        drain_ms: h.drain_ms,
        total_ms: h.total_ms,
        fenced_members: h.fenced_members.clone(),
        outcome: h.outcome.to_string(),
        hold_ms: h.hold_ms,
        grace_ms: h.grace_ms,
        by_note: h.by_note.clone(),
        request_id: h.request_id.clone().unwrap_or_default(),
    }
}

/// The most history records one call returns (and reads, with `since`).
const MAX_HISTORY: u32 = 10_000;

type StatusStream = Pin<Box<dyn Stream<Item = Result<proto::StatusReply, Status>> + Send>>;

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        _r: tonic::Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusReply>, Status> {
        let snap = self.shared.store.snapshot().await.map_err(store_status)?;
        Ok(Response::new(build_status(&self.shared, &snap).await))
    }

    async fn switchover(
        &self,
        r: tonic::Request<proto::SwitchRequest>,
    ) -> Result<Response<proto::SwitchReply>, Status> {
        let caller = Caller::of(&r);
        let r = r.into_inner();
        // `epoch` is recorded once the leader has taken the request.
        let span = info_span!("admin_switchover", link = %self.shared.config.link, member = %self.shared.config.member_id, to = r.to, caller = %caller.name(), epoch = tracing::field::Empty);
        self.switch(r, RequestKind::Switchover, caller)
            .instrument(span)
            .await
    }

    async fn failover(
        &self,
        r: tonic::Request<proto::SwitchRequest>,
    ) -> Result<Response<proto::SwitchReply>, Status> {
        let caller = Caller::of(&r);
        let r = r.into_inner();
        let span = info_span!("admin_failover", link = %self.shared.config.link, member = %self.shared.config.member_id, to = r.to, force = r.force, caller = %caller.name(), epoch = tracing::field::Empty);
        self.switch(r, RequestKind::Failover, caller)
            .instrument(span)
            .await
    }

    async fn pause(
        &self,
        r: tonic::Request<proto::PauseRequest>,
    ) -> Result<Response<proto::PauseReply>, Status> {
        let caller = Caller::of(&r);
        self.set_paused(r.into_inner(), caller, true).await
    }

    async fn resume(
        &self,
        r: tonic::Request<proto::PauseRequest>,
    ) -> Result<Response<proto::PauseReply>, Status> {
        let caller = Caller::of(&r);
        self.set_paused(r.into_inner(), caller, false).await
    }

    async fn history(
        &self,
        r: tonic::Request<proto::HistoryRequest>,
    ) -> Result<Response<proto::HistoryReply>, Status> {
        let r = r.into_inner();
        let limit = match r.limit {
            0 => 20,
            n => n.min(MAX_HISTORY) as usize,
        };
        let since = match r.since.trim() {
            "" => None,
            s => Some(humantime::parse_rfc3339_weak(s).map_err(|e| {
                Reason::InvalidRequest.status(format!(
                    "since {s:?} is not an RFC 3339 time ({e}); e.g. 2026-11-30T08:00:00Z"
                ))
            })?),
        };
        // With `since`, read every kept record and filter; the newest
        // `limit` of those that started at or after it.
        let read = if since.is_some() {
            MAX_HISTORY as usize
        } else {
            limit
        };
        let records = self
            .shared
            .store
            .history(read)
            .await
            .map_err(store_status)?;
        let records = records
            .iter()
            .filter(|h| match since {
                None => true,
                Some(t) => humantime::parse_rfc3339_weak(&h.started_at).is_ok_and(|at| at >= t),
            })
            .take(limit)
            .map(history_to_proto)
            .collect();
        Ok(Response::new(proto::HistoryReply { records }))
    }

    async fn cancel(
        &self,
        r: tonic::Request<proto::CancelRequest>,
    ) -> Result<Response<proto::CancelReply>, Status> {
        let caller = Caller::of(&r);
        let r = r.into_inner();
        crate::limits::check_admin_text(&r.id, &r.requested_by)?;
        let store = &self.shared.store;
        let snap = store.snapshot().await.map_err(store_status)?;
        let Some((pending, rev)) = snap.request else {
            return Err(Reason::NothingToCancel.status("no switchover is scheduled"));
        };
        let Some(not_before) = pending.not_before_ms else {
            return Err(Reason::NothingToCancel.status(format!(
                "the pending request {} is not scheduled: it is being carried out now (`lockstep status`)",
                pending.id
            )));
        };
        if !r.id.is_empty() && r.id != pending.id {
            return Err(Reason::NothingToCancel.status(format!(
                "no scheduled request {}; the one scheduled is {} ({} to {} at {})",
                r.id,
                pending.id,
                pending.kind,
                pending.to,
                rfc3339_of_ms(not_before)
            )));
        }
        if !store.withdraw_request(rev).await.map_err(store_status)? {
            return Err(Reason::NothingToCancel.status(format!(
                "request {} was taken or changed meanwhile; see `lockstep status` and `lockstep history`",
                pending.id
            )));
        }
        let (by, note) = attribute(&caller, &r.requested_by);
        info!(id = %pending.id, by = %by, by_note = %note, "scheduled switchover cancelled");
        Ok(Response::new(proto::CancelReply {
            id: pending.id,
            not_before: rfc3339_of_ms(not_before),
        }))
    }

    type WatchStatusStream = StatusStream;

    async fn watch_status(
        &self,
        _r: tonic::Request<proto::StatusRequest>,
    ) -> Result<Response<Self::WatchStatusStream>, Status> {
        let rx = status_stream(self.shared.clone(), None).await?;
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// A fresh status whenever anything in the link changes, the current one
/// first: what `WatchStatus` streams and what feeds the status page. With
/// `refresh`, also after that long without a change (the members' live
/// state, e.g. lease ages, moves without etcd writes). Ends with an error
/// when the etcd watch ends (the caller watches again), or when the
/// receiver is dropped.
pub(crate) async fn status_stream(
    shared: Arc<Shared>,
    refresh: Option<Duration>,
) -> Result<tokio::sync::mpsc::Receiver<Result<proto::StatusReply, Status>>, Status> {
    let (mut watch, snap) = shared
        .store
        .watch_then_snapshot(Watched::Link)
        .await
        .map_err(store_status)?;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let first = build_status(&shared, &snap).await;
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        loop {
            let next = async {
                match refresh {
                    Some(every) => tokio::time::timeout(every, watch.next())
                        .await
                        .unwrap_or(Ok(Some(Vec::new()))),
                    None => watch.next().await,
                }
            };
            match next.await {
                Ok(Some(_)) => {
                    // Coalesce bursts (a switch writes several keys).
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let Ok(snap) = shared.store.snapshot().await else {
                        continue;
                    };
                    if tx
                        .send(Ok(build_status(&shared, &snap).await))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                _ => {
                    let _ = tx
                        .send(Err(Reason::EtcdUnavailable.status(
                            "the etcd watch ended; run `lockstep status --watch` again",
                        )))
                        .await;
                    return;
                }
            }
        }
    });
    Ok(rx)
}

/// Unix ms as RFC 3339 (UTC, milliseconds).
fn rfc3339_of_ms(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// How far ahead a switchover may be scheduled.
const MAX_SCHEDULE_AHEAD: Duration = Duration::from_secs(30 * 24 * 3600);

/// `at` of a switch request as Unix ms: `None` for now; an error for a
/// time that is not RFC 3339, past, too far ahead, or on a failover.
fn scheduled_at(at: &str, kind: RequestKind) -> Result<Option<u64>, Status> {
    let at = at.trim();
    if at.is_empty() {
        return Ok(None);
    }
    // An RFC 3339 time is about 30 bytes: nothing longer is echoed back.
    if at.len() > 64 {
        return Err(Reason::InvalidRequest
            .status("at is not an RFC 3339 time (too long); e.g. 2026-12-01T02:00:00Z"));
    }
    if kind != RequestKind::Switchover {
        return Err(Reason::InvalidRequest
            .status("only a switchover can be scheduled (--at); a failover acts now"));
    }
    let t = humantime::parse_rfc3339_weak(at).map_err(|e| {
        Reason::InvalidRequest.status(format!(
            "at {at:?} is not an RFC 3339 time ({e}); e.g. 2026-12-01T02:00:00Z"
        ))
    })?;
    let now = std::time::SystemTime::now();
    let ahead = t.duration_since(now).map_err(|_| {
        Reason::InvalidRequest.status(format!("at {at} is in the past; give a future time"))
    })?;
    if ahead > MAX_SCHEDULE_AHEAD {
        return Err(Reason::InvalidRequest.status(format!(
            "at {at} is more than 30 days ahead; schedule it closer to the time"
        )));
    }
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Ok(Some(ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep_core::leader::{Listed, MemberRecord};
    use lockstep_core::{Applied, LbTarget, Phase, Role, Route};

    fn listed(id: &str, role: Role, applied: Option<(u64, Setup)>, lb: LbTarget) -> Listed {
        Listed {
            id: id.into(),
            record: MemberRecord {
                role,
                grpc: "127.0.0.1:7400".into(),
                applied: applied.map(|(epoch, setup)| Applied {
                    epoch,
                    phase: Phase::Serve,
                    setup,
                }),
                lb: Some(lb),
                health: Default::default(),
                behind: None,
            },
            rev: 1,
            lease: 1,
        }
    }

    fn route(epoch: u64, setup: Setup) -> (Route, i64) {
        let route = Route {
            epoch,
            phase: Phase::Serve,
            setup,
            token: 1,
            reason: String::new(),
            requested_by: String::new(),
            at: String::new(),
            handover: None,
            roster: Vec::new(),
        };
        (route, 1)
    }

    fn switchover(to: Setup) -> Request {
        Request {
            id: "r".into(),
            kind: RequestKind::Switchover,
            to,
            force: false,
            reason: "test".into(),
            requested_by: "me".into(),
            by_note: String::new(),
            at: String::new(),
            deadline_ms: None,
            not_before_ms: None,
            grace_ms: None,
        }
    }

    #[test]
    fn a_plan_says_which_member_disagrees_with_the_route() {
        let warm = LbTarget::Serve(Setup::Warm);
        // The route was rolled back to hot at epoch 1; both LBs read back
        // warm at epoch 7.
        let snap = Snapshot {
            route: Some(route(1, Setup::Hot)),
            members: vec![
                listed("alice-0", Role::Alice, Some((7, Setup::Warm)), warm),
                listed("bob-0", Role::Bob, Some((7, Setup::Warm)), warm),
            ],
            ..Snapshot::default()
        };
        let plan = plan_text(None, &snap, &switchover(Setup::Hot));
        assert!(
            plan.starts_with("LBs disagree with etcd's route (1/serve):"),
            "{plan}"
        );
        for member in ["alice-0", "bob-0"] {
            assert!(
                plan.contains(&format!("{member} applied 7/serve warm, LB warm;")),
                "{plan}"
            );
        }
        assert!(
            plan.contains(
                "; then switchover to hot: every LB (alice-0, bob-0) blocks at a new epoch above 7,"
            ),
            "{plan}"
        );
        assert_eq!(
            disagreement(&snap.link()),
            plan.split("; then").next().unwrap_or_default()
        );

        // The route lost: one member applied warm, the other nothing yet.
        let lost = Snapshot {
            members: vec![
                listed("alice-0", Role::Alice, Some((7, Setup::Warm)), warm),
                listed("bob-0", Role::Bob, None, LbTarget::Blocked),
            ],
            ..Snapshot::default()
        };
        let plan = plan_text(None, &lost, &switchover(Setup::Hot));
        assert!(
            plan.starts_with(
                "etcd holds no route, but LBs have applied one: alice-0 applied 7/serve warm, LB warm;"
            ),
            "{plan}"
        );
        assert!(!plan.contains("bob-0 applied"), "{plan}");
    }

    #[test]
    fn a_plan_with_agreeing_lbs_says_nothing_of_a_disagreement() {
        let hot = LbTarget::Serve(Setup::Hot);
        let snap = Snapshot {
            route: Some(route(3, Setup::Hot)),
            members: vec![
                listed("alice-0", Role::Alice, Some((3, Setup::Hot)), hot),
                listed("bob-0", Role::Bob, Some((3, Setup::Hot)), hot),
            ],
            ..Snapshot::default()
        };
        let plan = plan_text(None, &snap, &switchover(Setup::Warm));
        assert!(
            plan.starts_with("switchover from hot to warm: every LB (alice-0, bob-0) blocks"),
            "{plan}"
        );
        assert!(disagreement(&snap.link()).is_empty());
    }

    /// The settle wait's view: one read, then the watch's newer changes.
    /// Changes the read already holds (a watch opened before the read sees
    /// them too) are skipped; newer ones, several in one txn included,
    /// move the link exactly as a read at their revision would.
    #[test]
    fn a_read_plus_newer_changes_is_the_link_at_the_last_change() {
        let hot = LbTarget::Serve(Setup::Hot);
        let warm = LbTarget::Serve(Setup::Warm);
        let at = |mut l: Listed, rev: i64| {
            l.rev = rev;
            l
        };
        let mut snap = Snapshot {
            rev: 10,
            route: Some((route(3, Setup::Hot).0, 5)),
            members: vec![
                at(
                    listed("alice-0", Role::Alice, Some((3, Setup::Hot)), hot),
                    6,
                ),
                at(listed("bob-0", Role::Bob, Some((3, Setup::Hot)), hot), 7),
            ],
            ..Snapshot::default()
        };
        let settled_on = |s: &Snapshot| s.link().settled();
        assert_eq!(settled_on(&snap), Some(Setup::Hot));

        // Seen by the watch and already in the read: skipped.
        let stale = at(
            listed("alice-0", Role::Alice, Some((2, Setup::Warm)), warm),
            4,
        );
        assert!(!snap.apply_link_change(&Change::Member(stale)));
        assert!(!snap.apply_link_change(&Change::RouteGone(9)));
        assert_eq!(settled_on(&snap), Some(Setup::Hot));

        // Newer: the route to warm, then each member's read-back.
        assert!(snap.apply_link_change(&Change::Route(route(4, Setup::Warm).0, 11)));
        assert_eq!(settled_on(&snap), None);
        let alice = at(
            listed("alice-0", Role::Alice, Some((4, Setup::Warm)), warm),
            12,
        );
        assert!(snap.apply_link_change(&Change::Member(alice)));
        assert_eq!(settled_on(&snap), None);
        // Two changes of one txn share a revision: both count.
        let bob = at(listed("bob-0", Role::Bob, Some((4, Setup::Warm)), warm), 13);
        let carol = at(listed("carol-0", Role::Bob, None, LbTarget::Blocked), 13);
        assert!(snap.apply_link_change(&Change::Member(bob)));
        assert!(snap.apply_link_change(&Change::Member(carol)));
        assert_eq!(settled_on(&snap), None, "carol-0 does not serve yet");
        assert!(snap.apply_link_change(&Change::MemberGone("carol-0".into(), 14)));
        assert_eq!(settled_on(&snap), Some(Setup::Warm));
        assert!(matches!(
            snap.link(),
            LinkState::Settled {
                epoch: 4,
                setup: Setup::Warm
            }
        ));
        // Keys the link state does not judge are left as read.
        assert!(!snap.apply_link_change(&Change::Paused(None)));
        assert_eq!(snap.rev, 10);
    }
}
