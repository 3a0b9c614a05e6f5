//! Driver of the member state machine: feeds it events from etcd (route
//! watch and reads, lease keep-alives), gRPC (Drain/Serve) and the LB, and
//! carries out what it decides. It decides nothing itself.
//!
//! Every route the member learns comes through one task (`route_task`), in
//! order: the watch's events, the reads the member asks for to confirm a
//! push, and the whole-link reads after the watch is opened again or the
//! member asks to resync. A read that task does is never older than an
//! event it has already forwarded.

use super::health::Task;
use super::{Clock, Shared};
use crate::lb::LoadBalancer;
use crate::notify::{Event, EventKind};
use crate::store::{Change, RegisterError, StoreError, Watched};
use lockstep_core::failsafe::{GrantAsk, GrantRefusal, Granted};
use lockstep_core::leader::MemberRecord;
use lockstep_core::member::{
    LbKnown, Leadership, LinkRead, Member, MemberAction, MemberConfig, MemberEvent, MemberView,
    ReadId, Refusal, RequestId,
};
use lockstep_core::{Applied, Push};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, debug_span, info, info_span, warn, Instrument};

/// Inputs to the member task from the other tasks.
pub(crate) enum Input {
    Event(MemberEvent),
    /// An LB read-back, with the apply generation current when the read
    /// started: a read that began before an apply finished says nothing
    /// about the LB after it, so it is dropped.
    Observed(MemberEvent, u64),
    /// A gRPC Drain or Serve and where to send the answer.
    Peer(Push, oneshot::Sender<Result<Applied, Refusal>>),
    /// A gRPC grant ask (failsafe) and where to send the answer.
    Grant(GrantAsk, oneshot::Sender<Result<Granted, GrantRefusal>>),
    /// This process campaigns or leads (true) or neither; answered with
    /// the view once the member knows (it grants nothing from then on).
    Leading(Leadership, oneshot::Sender<MemberView>),
    /// A new lease and the link read after registering with it.
    Registered {
        lease: i64,
        read: LinkRead,
        lease_sent_at: lockstep_core::Time,
    },
}

/// What the member asks of the route task.
enum RouteJob {
    /// Read the route once (`MemberAction::ReadRoute`).
    Read(ReadId),
    /// Read the whole link again (`MemberAction::Resync`).
    Resync,
}

/// Handles the member task publishes for others.
pub(crate) struct MemberHandles {
    pub(crate) input: mpsc::Sender<Input>,
    /// Resolves once the LB is blocked and the lease revoked after `Stop`.
    pub(crate) stopped: oneshot::Receiver<()>,
}

pub(crate) fn member_config(shared: &Shared) -> MemberConfig {
    let c = &shared.config;
    MemberConfig {
        id: c.member_id.clone(),
        role: c.role,
        lease_ttl: c.etcd.lease_ttl,
        margin: c.etcd.margin,
        lb_down_bound: c.lb_down_detection(),
        lb_retry: Duration::from_millis(200),
        failsafe: c.failsafe.protocol(),
    }
}

/// Spawns the member task and its helpers (keep-alive, LB observer,
/// record writer, registration).
pub(crate) fn spawn<L: LoadBalancer>(shared: Arc<Shared>, lb: Arc<L>) -> MemberHandles {
    let (input_tx, input_rx) = mpsc::channel(256);
    let (stopped_tx, stopped_rx) = oneshot::channel();
    let span = info_span!("member", link = %shared.config.link, member = %shared.config.member_id);
    let (jobs_tx, jobs_rx) = mpsc::channel(16);
    tokio::spawn(
        run(
            shared.clone(),
            lb.clone(),
            input_tx.clone(),
            input_rx,
            jobs_tx,
            stopped_tx,
        )
        .instrument(span.clone()),
    );
    tokio::spawn(keep_alive(shared.clone(), input_tx.clone()).instrument(span.clone()));
    tokio::spawn(route_task(shared.clone(), input_tx.clone(), jobs_rx).instrument(span.clone()));
    tokio::spawn(observe_lb(shared.clone(), lb, input_tx.clone()).instrument(span.clone()));
    tokio::spawn(write_records(shared.clone()).instrument(span));
    MemberHandles {
        input: input_tx,
        stopped: stopped_rx,
    }
}

async fn run<L: LoadBalancer>(
    shared: Arc<Shared>,
    lb: Arc<L>,
    input_tx: mpsc::Sender<Input>,
    mut input: mpsc::Receiver<Input>,
    jobs: mpsc::Sender<RouteJob>,
    stopped: oneshot::Sender<()>,
) {
    let clock = shared.clock;
    let beat = shared.liveness.start(Task::MemberLoop, clock);
    let core = Member::new(member_config(&shared), clock.now());
    #[cfg(feature = "mutations")]
    let core = core.with_mutation(super::mutation());
    let mut core = core;
    let (lb_tx, mut lb_rx) = mpsc::channel::<MemberEvent>(8);
    let mut replies: HashMap<RequestId, oneshot::Sender<Result<Applied, Refusal>>> = HashMap::new();
    let mut grants: HashMap<RequestId, oneshot::Sender<Result<Granted, GrantRefusal>>> =
        HashMap::new();
    let mut failsafe = FailsafeLog::default();
    let mut next_req: RequestId = 1;
    let mut stopped = Some(stopped);
    let apply_gen = shared.lb_apply_gen.clone();
    spawn_registration(shared.clone(), input_tx.clone());

    loop {
        // Carry out everything the core decided, then publish its view.
        while let Some(action) = core.poll_action() {
            match action {
                MemberAction::ApplyLb {
                    target,
                    enable_before,
                } => {
                    apply_gen.fetch_add(1, Ordering::SeqCst);
                    let lb = lb.clone();
                    let tx = lb_tx.clone();
                    // The step being applied (what etcd confirmed), so the
                    // span matches the switch it belongs to.
                    let view = core.view();
                    let epoch = view.accepted.or(view.applied).map_or(0, |a| a.epoch);
                    let enable_before = enable_before.map(|t| clock.instant(t).into_std());
                    tokio::spawn(
                        async move {
                            let started = std::time::Instant::now();
                            fail::fail_point!("member-before-lb-apply");
                            let event = match lb.apply(target, enable_before).await {
                                Ok(_) => {
                                    debug!(%target, elapsed_us = started.elapsed().as_micros() as u64, "LB confirmed");
                                    MemberEvent::LbConfirmed { target }
                                }
                                Err(e) => {
                                    warn!(%target, error = %e, "LB apply failed; will retry");
                                    MemberEvent::LbFailed { target }
                                }
                            };
                            let _ = tx.send(event).await;
                        }
                        .instrument(info_span!("lb_apply", %target, epoch)),
                    );
                }
                MemberAction::WriteApplied(applied) => {
                    info!(epoch = applied.epoch, phase = %applied.phase, setup = %applied.setup, "applied");
                    shared.record.send_modify(|r| r.applied = Some(applied));
                    shared.metrics.applied(applied);
                }
                MemberAction::ReadRoute(read) => {
                    // The route task is always there; a full queue means
                    // etcd is not answering, and the pushes waiting on the
                    // read time out at the leader.
                    let _ = jobs.try_send(RouteJob::Read(read));
                }
                MemberAction::Resync => {
                    info!("fence lifted: reading the link again before serving");
                    let _ = jobs.send(RouteJob::Resync).await;
                }
                MemberAction::Reply { req, result } => {
                    if let Some(tx) = replies.remove(&req) {
                        let _ = tx.send(result);
                    }
                }
                MemberAction::GrantReply { req, result } => {
                    match &result {
                        Ok(g) => debug!(epoch = g.epoch, setup = %g.setup, "failsafe grant given"),
                        Err(why) => debug!(%why, "failsafe grant refused"),
                    }
                    if let Some(tx) = grants.remove(&req) {
                        let _ = tx.send(result);
                    }
                }
                MemberAction::AskGrants {
                    epoch,
                    setup,
                    peers,
                } => ask_grants(&shared, &input_tx, epoch, setup, peers),
                MemberAction::Register => {
                    warn!("lease lost: LB blocked, registering again");
                    shared.lease.send_replace(None);
                    spawn_registration(shared.clone(), input_tx.clone());
                }
                MemberAction::RevokeLease => {
                    let lease = *shared.lease.borrow();
                    if let Some(lease) = lease {
                        if let Err(e) = shared.store.revoke(lease).await {
                            warn!(error = %e, "could not revoke lease on stop; it expires by itself");
                        }
                    }
                    info!("stopped: LB blocked and lease revoked");
                    if let Some(tx) = stopped.take() {
                        let _ = tx.send(());
                    }
                }
            }
        }
        let view = core.view();
        failsafe.note(&shared, &view, clock);
        shared.metrics.member_view(&view);
        publish(&shared, &view);
        shared.view.send_replace(view);

        let timeout = core.poll_timeout();
        let sleep = async {
            match timeout {
                Some(t) => tokio::time::sleep_until(clock.instant(t)).await,
                None => std::future::pending().await,
            }
        };
        beat.park();
        tokio::select! {
            msg = input.recv() => {
                let Some(msg) = msg else { return };
                match msg {
                    Input::Event(ev) => core.handle(clock.now(), ev),
                    Input::Observed(ev, gen) => {
                        if gen == apply_gen.load(Ordering::SeqCst) {
                            core.handle(clock.now(), ev);
                        }
                    }
                    Input::Peer(push, reply) => {
                        let req = next_req;
                        next_req += 1;
                        replies.insert(req, reply);
                        core.handle(clock.now(), MemberEvent::Peer { req, push });
                    }
                    Input::Grant(ask, reply) => {
                        let req = next_req;
                        next_req += 1;
                        grants.insert(req, reply);
                        core.handle(clock.now(), MemberEvent::GrantAsked { req, ask });
                    }
                    Input::Leading(leading, reply) => {
                        core.handle(clock.now(), MemberEvent::Leading(leading));
                        let _ = reply.send(core.view());
                    }
                    Input::Registered { lease, read, lease_sent_at } => {
                        shared.lease.send_replace(Some(lease));
                        core.handle(clock.now(), MemberEvent::Synced { read, lease_sent_at, lease });
                    }
                }
            }
            Some(ev) = lb_rx.recv() => {
                apply_gen.fetch_add(1, Ordering::SeqCst);
                core.handle(clock.now(), ev);
            }
            _ = sleep => core.handle(clock.now(), MemberEvent::Tick),
        }
        beat.beat();
        // Drop replies whose callers gave up, so the map stays small.
        replies.retain(|_, tx| !tx.is_closed());
        grants.retain(|_, tx| !tx.is_closed());
    }
}

/// Sends the input `make` builds around a reply channel to the member task
/// and waits for the answer; `None` once the task is gone (stopping).
pub(crate) async fn ask<T>(
    input: &mpsc::Sender<Input>,
    make: impl FnOnce(oneshot::Sender<T>) -> Input,
) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    input.send(make(tx)).await.ok()?;
    rx.await.ok()
}

/// Asks each peer for a failsafe grant, at once and in parallel; each
/// answer goes back into the member with the time its ask was sent (a
/// grant counts from then).
fn ask_grants(
    shared: &Arc<Shared>,
    input: &mpsc::Sender<Input>,
    epoch: u64,
    setup: lockstep_core::Setup,
    peers: Vec<lockstep_core::Incarnation>,
) {
    let Some(fs) = shared.config.failsafe.protocol() else {
        return;
    };
    for peer in peers {
        let Some(mut client) = super::leader::peer(shared, &peer.grpc, &peer.id) else {
            continue;
        };
        let input = input.clone();
        let clock = shared.clock;
        let request = crate::proto::GrantRequest {
            link: shared.config.link.clone(),
            member: shared.config.member_id.clone(),
            epoch,
            setup: crate::rpc::setup_to_proto(setup) as i32,
        };
        let span = info_span!("grant_ask", peer = %peer.id, epoch, %setup);
        tokio::spawn(
            async move {
                let sent_at = clock.now();
                // An answer later than a quarter grant is no use: the next
                // ask is already out.
                let answer = tokio::time::timeout(fs.grant_ttl / 4, client.grant(request)).await;
                let result = match answer {
                    Ok(Ok(reply)) => {
                        let r = reply.into_inner();
                        match crate::rpc::setup_from_proto(r.setup) {
                            Some(setup) if r.member == peer.id => Ok(Granted {
                                lease: r.lease,
                                epoch: r.epoch,
                                setup,
                            }),
                            _ => {
                                debug!("grant reply names another member or no setup; ignored");
                                return;
                            }
                        }
                    }
                    Ok(Err(status)) => {
                        debug!(refused = %status.message(), "grant refused");
                        return;
                    }
                    Err(_) => {
                        debug!("grant ask timed out");
                        return;
                    }
                };
                let _ = input
                    .send(Input::Event(MemberEvent::GrantAnswered {
                        from: peer.id,
                        sent_at,
                        result,
                    }))
                    .await;
            }
            .instrument(span),
        );
    }
}

/// Tells operators when this member starts and stops serving on grants:
/// a WARN log, the metric, the notifications `failsafe-entered` /
/// `failsafe-left` (from this member, at once: they need no etcd), and
/// once etcd answers again, history records of the same names with the
/// duration.
#[derive(Default)]
struct FailsafeLog {
    /// Since when (monotonic) and wall-clock start, while in failsafe.
    since: Option<(lockstep_core::Time, String)>,
}

impl FailsafeLog {
    fn note(&mut self, shared: &Arc<Shared>, view: &MemberView, clock: Clock) {
        let now = clock.now();
        match (&self.since, view.on_grants(now)) {
            (None, Some(f)) => {
                warn!(
                    epoch = f.serving.epoch,
                    setup = %f.serving.setup,
                    "FAILSAFE: etcd unreachable; serving on every roster member's grant, nothing switches until etcd is back"
                );
                shared.metrics.set_failsafe(true);
                let mut e = failsafe_event(shared, EventKind::FailsafeEntered);
                e.epoch = Some(f.serving.epoch);
                e.to = Some(f.serving.setup);
                e.message = format!(
                    "{} is in failsafe: etcd unreachable; serving {} at epoch {} on every roster member's grant; nothing switches until etcd is back",
                    shared.config.member_id, f.serving.setup, f.serving.epoch
                );
                shared.notify.send(e);
                self.since = Some((now, super::leader::now_rfc3339()));
            }
            (Some((t, at)), None) => {
                let ms = now.since(*t).as_millis() as u64;
                warn!(duration_ms = ms, "failsafe left");
                shared.metrics.set_failsafe(false);
                let serving = view.applied.or(view.accepted);
                let mut e = failsafe_event(shared, EventKind::FailsafeLeft);
                e.epoch = serving.map(|a| a.epoch);
                e.to = serving.map(|a| a.setup);
                e.duration_ms = Some(ms);
                e.message = format!(
                    "{} left failsafe after {ms} ms: etcd answers again",
                    shared.config.member_id
                );
                shared.notify.send(e);
                record_failsafe(shared.clone(), at.clone(), ms, serving);
                self.since = None;
            }
            _ => {}
        }
    }
}

/// A failsafe notification from this member.
fn failsafe_event(shared: &Shared, kind: EventKind) -> Event {
    let mut e = Event::of_member(kind, &shared.config.link, &shared.config.member_id);
    e.requested_by = "lockstep:failsafe".into();
    e
}

/// Writes the history records of one failsafe period once etcd answers
/// (retrying while it does not, for at most a minute).
fn record_failsafe(
    shared: Arc<Shared>,
    entered_at: String,
    duration_ms: u64,
    serving: Option<Applied>,
) {
    use lockstep_core::leader::{HistoryKind, HistoryOutcome, HistoryRecord};
    let Some(serving) = serving else { return };
    let record = |kind: HistoryKind, at: String, total_ms: u64| HistoryRecord {
        epoch: serving.epoch,
        from: None,
        to: serving.setup,
        kind,
        reason: match kind {
            HistoryKind::FailsafeEntered => {
                "etcd unreachable: serving on every roster member's grant".into()
            }
            _ => format!("failsafe left after {total_ms} ms"),
        },
        requested_by: "lockstep:failsafe".into(),
        by_note: String::new(),
        leader: shared.config.member_id.clone(),
        token: 0,
        started_at: at,
        drain_ms: 0,
        hold_ms: 0,
        grace_ms: 0,
        total_ms,
        fenced_members: Vec::new(),
        outcome: HistoryOutcome::Done,
        request_id: Some(shared.config.member_id.clone()),
    };
    let records = [
        record(HistoryKind::FailsafeEntered, entered_at, 0),
        record(
            HistoryKind::FailsafeLeft,
            super::leader::now_rfc3339(),
            duration_ms,
        ),
    ];
    tokio::spawn(
        async move {
            for attempt in 0..60u32 {
                match shared.store.put_records(&records).await {
                    Ok(()) => return,
                    Err(e) => {
                        debug!(error = %e, attempt, "failsafe history not written yet");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            warn!("failsafe history records could not be written to etcd");
        }
        .instrument(tracing::Span::current()),
    );
}

/// What the member publishes in its key besides what it applied: what its
/// LB reads back and whether etcd's route is behind the link. Logged when
/// the member falls behind.
fn publish(shared: &Shared, view: &lockstep_core::member::MemberView) {
    let lb = match view.lb {
        LbKnown::Confirmed(t) => Some(t),
        LbKnown::AssumedBlocked | LbKnown::Unknown => None,
    };
    shared.record.send_if_modified(|r| {
        if r.behind != view.behind {
            match &view.behind {
                Some(b) => warn!(behind = %b, "route below what this link applied"),
                None => info!("route caught up with what this link applied"),
            }
        }
        let changed = r.lb != lb || r.behind != view.behind;
        r.lb = lb;
        r.behind = view.behind;
        changed
    });
}

/// Registers with etcd: waits until no other lease holds the member id,
/// then lease, member key and a read of the link (that order guarantees a
/// leader writing a drain either lists us or we read it). A member id held
/// by another lease is never merged into: after a crash the old lease
/// expires within one TTL; one still held after twice the TTL of etcd
/// answering without a break belongs to another live sidecar with the same
/// id, and the sidecar stops with an error naming it.
fn spawn_registration(shared: Arc<Shared>, input: mpsc::Sender<Input>) {
    tokio::spawn(
        async move {
            let bound = shared.config.etcd.lease_ttl * 2;
            let mut taken_since: Option<(std::time::Instant, i64)> = None;
            let mut backoff = Duration::from_millis(100);
            loop {
                match register_once(&shared).await {
                    Ok((lease, read, lease_sent_at)) => {
                        info!(lease, route = ?read.route.as_ref().map(|r| (r.epoch, r.phase, r.setup)), floor = read.floor, "registered");
                        let _ = input
                            .send(Input::Registered {
                                lease,
                                read,
                                lease_sent_at,
                            })
                            .await;
                        return;
                    }
                    Err(RegisterError::Taken { id, lease, grpc }) => {
                        let since = match taken_since {
                            Some((t, l)) if l == lease => t,
                            _ => {
                                warn!(member = %id, holder = %grpc, "member id held by another lease: staying blocked until it expires");
                                let now = std::time::Instant::now();
                                taken_since = Some((now, lease));
                                now
                            }
                        };
                        if since.elapsed() > bound {
                            let msg = format!(
                                "member id {id:?} is still registered by the live sidecar at {grpc} after {bound:?}: two sidecars share one member_id; give each its own (e.g. the pod name)"
                            );
                            shared.fatal.send_replace(Some(msg));
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(RegisterError::Store(e)) => {
                        // Nothing was seen renewed meanwhile: the count of a
                        // holder's life starts again once etcd answers (an
                        // etcd restored from a snapshot brings back a dead
                        // incarnation's key with a fresh lease, which then
                        // expires within one TTL).
                        taken_since = None;
                        warn!(error = %e, retry_in = ?backoff, "registration with etcd failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
        }
        .instrument(tracing::Span::current()),
    );
}

/// One registration attempt. The lease is granted only once the member id
/// is free, so it is not left to expire while the sidecar waits.
async fn register_once(
    shared: &Shared,
) -> Result<(i64, LinkRead, lockstep_core::Time), RegisterError> {
    let id = &shared.config.member_id;
    if let Some(holder) = shared.store.member(id).await? {
        return Err(RegisterError::Taken {
            id: id.clone(),
            lease: holder.0,
            grpc: holder.1,
        });
    }
    let sent_at = shared.clock.now();
    let lease = shared.store.grant(shared.config.etcd.lease_ttl).await?;
    let record = shared.record.borrow().clone();
    if let Err(e) = shared.store.register_member(id, &record, lease).await {
        let _ = shared.store.revoke(lease).await;
        return Err(e);
    }
    let read = shared.store.snapshot().await?.link_read();
    Ok((lease, read, sent_at))
}

/// Forwards what the member learns of the route, in order: each round opens
/// the watch from now, then reads the whole link (`Resynced`: the truth now,
/// even when older than what the member knew, as after an etcd restore),
/// then forwards the watch's changes and answers the member's reads.
async fn route_task(
    shared: Arc<Shared>,
    input: mpsc::Sender<Input>,
    mut jobs: mpsc::Receiver<RouteJob>,
) {
    let send = |ev: MemberEvent| input.send(Input::Event(ev));
    loop {
        match shared.store.watch_then_snapshot(Watched::Route).await {
            Ok((mut watch, snapshot)) => {
                if send(MemberEvent::Resynced(snapshot.link_read()))
                    .await
                    .is_err()
                {
                    return;
                }
                loop {
                    tokio::select! {
                        batch = watch.next() => match batch {
                            Ok(Some(changes)) => {
                                for change in changes {
                                    let ev = match change {
                                        Ok(Change::Route(route, rev)) => MemberEvent::RouteSeen { route, rev },
                                        Ok(Change::RouteGone(rev)) => MemberEvent::RouteGone { rev },
                                        Ok(_) => continue,
                                        Err(e) => {
                                            warn!(error = %e, "unreadable route on the watch");
                                            continue;
                                        }
                                    };
                                    if send(ev).await.is_err() {
                                        return;
                                    }
                                }
                            }
                            Ok(None) => break,
                            Err(StoreError::WatchCanceled(reason)) => {
                                warn!(%reason, "route watch canceled");
                                break;
                            }
                            Err(e) => {
                                warn!(error = %e, "route watch broke");
                                break;
                            }
                        },
                        job = jobs.recv() => {
                            let Some(job) = job else { return };
                            let ev = match job {
                                RouteJob::Read(read) => match shared.store.read_route().instrument(debug_span!("confirm_read", read)).await {
                                    Ok((route, rev)) => MemberEvent::RouteRead { read, route, rev },
                                    Err(e) => {
                                        warn!(error = %e, "cannot read the route to confirm a push");
                                        break;
                                    }
                                },
                                RouteJob::Resync => match shared.store.snapshot().await {
                                    Ok(s) => MemberEvent::Resynced(s.link_read()),
                                    Err(e) => {
                                        warn!(error = %e, "cannot read the link to resync");
                                        break;
                                    }
                                },
                            };
                            if send(ev).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot watch and read the route"),
        }
        // A read that failed is answered by the next round's whole read:
        // the member re-judges every waiting push on it.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Keeps the current lease alive; reports acks (with the send time) and
/// the lease's loss.
async fn keep_alive(shared: Arc<Shared>, input: mpsc::Sender<Input>) {
    let mut lease_rx = shared.lease.subscribe();
    let interval = shared.config.etcd.keepalive_interval;
    let beat = shared.liveness.start(Task::KeepAlive, shared.clock);
    loop {
        // Each round (open the stream, keep alive until it fails) is
        // progress, also while etcd stays unreachable.
        beat.beat();
        let lease = loop {
            if let Some(l) = *lease_rx.borrow_and_update() {
                break l;
            }
            if beat.parked(lease_rx.changed()).await.is_err() {
                return;
            }
        };
        let mut keep_alive = match shared.store.keep_alive(lease).await {
            Ok(k) => k,
            Err(e) if e.is_lease_gone() => {
                warn!(lease, "lease expired in etcd");
                let _ = input.send(Input::Event(MemberEvent::LeaseLost)).await;
                while *shared.lease.borrow() == Some(lease) {
                    if beat.parked(lease_rx.changed()).await.is_err() {
                        return;
                    }
                }
                continue;
            }
            Err(e) => {
                warn!(error = %e, lease, "cannot open keep-alive stream");
                tokio::time::sleep(interval).await;
                continue;
            }
        };
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            beat.beat();
            fail::fail_point!("keep-alive-stop", |_| ());
            if *shared.lease.borrow() != Some(lease) {
                break;
            }
            let sent_at = shared.clock.now();
            if let Err(e) = keep_alive.send().await {
                warn!(error = %e, "keep-alive send failed");
                break;
            }
            match tokio::time::timeout(shared.config.etcd.lease_ttl, keep_alive.answer()).await {
                Ok(Ok(Some(ttl))) if ttl > 0 => {
                    let _ = input
                        .send(Input::Event(MemberEvent::KeepAliveAcked { sent_at }))
                        .await;
                }
                Ok(Ok(Some(_))) => {
                    warn!(lease, "lease expired in etcd");
                    let _ = input.send(Input::Event(MemberEvent::LeaseLost)).await;
                    // Wait for the registration to publish a new lease.
                    while *shared.lease.borrow() == Some(lease) {
                        if beat.parked(lease_rx.changed()).await.is_err() {
                            return;
                        }
                    }
                    break;
                }
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                    warn!(lease, "keep-alive unanswered; reconnecting");
                    break;
                }
            }
        }
    }
}

/// Reads the LB back on an interval so drift and restarts are repaired.
async fn observe_lb<L: LoadBalancer>(shared: Arc<Shared>, lb: Arc<L>, input: mpsc::Sender<Input>) {
    let mut ticker = tokio::time::interval(shared.config.lb.drift_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let gen = shared.lb_apply_gen.load(Ordering::SeqCst);
        match lb.observe().await {
            Ok(observed) => {
                shared.metrics.lb_observed(observed.target);
                if observed.restarted {
                    warn!("LB restarted: re-applying");
                }
                let ev = MemberEvent::LbObserved {
                    target: observed.target,
                    restarted: observed.restarted,
                };
                if input.send(Input::Observed(ev, gen)).await.is_err() {
                    return;
                }
            }
            Err(e @ crate::lb::LbError::NotConfirmed { .. }) => {
                warn!(error = %e, "LB routes in a way lockstep never set: re-applying");
                if input
                    .send(Input::Observed(MemberEvent::LbInconsistent, gen))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => debug!(error = %e, "LB read-back failed"),
        }
    }
}

/// Writes the member record whenever it changes, on the current lease.
async fn write_records(shared: Arc<Shared>) {
    let mut record_rx = shared.record.subscribe();
    let mut lease_rx = shared.lease.subscribe();
    let mut last: Option<(i64, MemberRecord)> = None;
    loop {
        let lease = *lease_rx.borrow_and_update();
        let record = record_rx.borrow_and_update().clone();
        if let Some(lease) = lease {
            if last.as_ref() != Some(&(lease, record.clone())) {
                let (epoch, phase) = record
                    .applied
                    .map_or((0, String::new()), |a| (a.epoch, a.phase.to_string()));
                let lb = record.lb.map_or(String::new(), |t| t.to_string());
                let span = debug_span!("write_record", epoch, %phase, %lb);
                match shared
                    .store
                    .put_member(&shared.config.member_id, &record, lease)
                    .instrument(span)
                    .await
                {
                    Ok(true) => last = Some((lease, record)),
                    // The key is no longer on our lease: the keep-alive
                    // reports the lease's loss and we register again.
                    Ok(false) => {
                        warn!(lease, "member key not on our lease; not written");
                        last = Some((lease, record));
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot write member record; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
            }
        }
        tokio::select! {
            r = record_rx.changed() => if r.is_err() { return },
            r = lease_rx.changed() => if r.is_err() { return },
        }
    }
}

impl Clock {
    pub(crate) fn instant(&self, t: lockstep_core::Time) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.origin + Duration::from_millis(t.as_millis()))
    }
}
