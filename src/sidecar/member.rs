//! Driver of the member state machine: feeds it events from etcd (route
//! watch, lease keep-alives), gRPC (Drain/Serve) and the LB, and carries out
//! what it decides. It decides nothing itself.

use super::health::Task;
use super::{Clock, Shared};
use crate::lb::LoadBalancer;
use crate::store::{Change, StoreError, Watched};
use backon::{ExponentialBuilder, Retryable};
use lockstep_core::leader::MemberRecord;
use lockstep_core::member::{Member, MemberAction, MemberConfig, MemberEvent, Refusal, RequestId};
use lockstep_core::{Applied, LbTarget, Route};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, info_span, warn, Instrument};

/// Inputs to the member task from the other tasks.
pub(crate) enum Input {
    Event(MemberEvent),
    /// An LB read-back, with the apply generation current when the read
    /// started: a read that began before an apply finished says nothing
    /// about the LB after it, so it is dropped.
    Observed(MemberEvent, u64),
    /// A gRPC Drain or Serve: the event (with a placeholder request id) and
    /// where to send the answer.
    Peer(MemberEvent, oneshot::Sender<Result<Applied, Refusal>>),
    /// A new lease and the route read after registering with it.
    Registered {
        lease: i64,
        route: Option<Route>,
        lease_sent_at: lockstep_core::Time,
    },
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
    }
}

/// Spawns the member task and its helpers (keep-alive, LB observer,
/// record writer, registration).
pub(crate) fn spawn<L: LoadBalancer>(shared: Arc<Shared>, lb: Arc<L>) -> MemberHandles {
    let (input_tx, input_rx) = mpsc::channel(256);
    let (stopped_tx, stopped_rx) = oneshot::channel();
    let span = info_span!("member", link = %shared.config.link, member = %shared.config.member_id);
    tokio::spawn(
        run(
            shared.clone(),
            lb.clone(),
            input_tx.clone(),
            input_rx,
            stopped_tx,
        )
        .instrument(span.clone()),
    );
    tokio::spawn(keep_alive(shared.clone(), input_tx.clone()).instrument(span.clone()));
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
    let mut next_req: RequestId = 1;
    let mut stopped = Some(stopped);
    let mut route_watch: Option<tokio::task::JoinHandle<()>> = None;
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
                    let epoch = core.view().applied.map_or(0, |a| a.epoch);
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
                    shared.record.send_modify(|r| {
                        r.applied = Some(applied);
                        r.lb = match applied.phase {
                            lockstep_core::Phase::Drain => Some(LbTarget::Blocked),
                            lockstep_core::Phase::Serve => Some(LbTarget::Serve(applied.setup)),
                        };
                    });
                    shared.metrics.applied(applied);
                }
                MemberAction::Reply { req, result } => {
                    if let Some(tx) = replies.remove(&req) {
                        let _ = tx.send(result);
                    }
                }
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
        shared.metrics.member_view(&view);
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
                    Input::Peer(mut ev, reply) => {
                        let req = next_req;
                        next_req += 1;
                        match &mut ev {
                            MemberEvent::PeerDrain { req: r, .. } | MemberEvent::PeerServe { req: r, .. } => *r = req,
                            _ => {}
                        }
                        replies.insert(req, reply);
                        core.handle(clock.now(), ev);
                    }
                    Input::Registered { lease, route, lease_sent_at } => {
                        shared.lease.send_replace(Some(lease));
                        core.handle(clock.now(), MemberEvent::Synced { route, lease_sent_at });
                        if let Some(h) = route_watch.take() {
                            h.abort();
                        }
                        route_watch = Some(tokio::spawn(
                            watch_route(shared.clone(), input_tx.clone())
                                .instrument(tracing::Span::current()),
                        ));
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
    }
}

/// Registers with etcd: lease, then member key, then route read (that order
/// guarantees a leader writing a drain either lists us or we read it).
fn spawn_registration(shared: Arc<Shared>, input: mpsc::Sender<Input>) {
    tokio::spawn(
        async move {
            let attempt = || async {
                let sent_at = shared.clock.now();
                let lease = shared.store.grant(shared.config.etcd.lease_ttl).await?;
                let record = shared.record.borrow().clone();
                shared
                    .store
                    .put_member(&shared.config.member_id, &record, lease)
                    .await?;
                let (route, _) = shared.store.read_route().await?;
                Ok::<_, crate::store::StoreError>((lease, route, sent_at))
            };
            let result = attempt
                .retry(
                    ExponentialBuilder::default()
                        .with_min_delay(Duration::from_millis(100))
                        .with_max_delay(Duration::from_secs(2))
                        .without_max_times(),
                )
                .notify(|e, after| warn!(error = %e, retry_in = ?after, "registration with etcd failed"))
                .await;
            if let Ok((lease, route, lease_sent_at)) = result {
                info!(lease, route = ?route.as_ref().map(|r| (r.epoch, r.phase, r.setup)), "registered");
                let _ = input
                    .send(Input::Registered {
                        lease,
                        route,
                        lease_sent_at,
                    })
                    .await;
            }
        }
        .instrument(tracing::Span::current()),
    );
}

/// Forwards route changes. Each round opens the watch and then reads the
/// route (forwarding it; the member ignores steps it has seen), so nothing
/// written in between is missed.
async fn watch_route(shared: Arc<Shared>, input: mpsc::Sender<Input>) {
    loop {
        match shared.store.watch_then_snapshot(Watched::Route).await {
            Ok((mut watch, snapshot)) => {
                if let Some((route, _)) = snapshot.route {
                    if input
                        .send(Input::Event(MemberEvent::RouteSeen(route)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                loop {
                    match watch.next().await {
                        Ok(Some(changes)) => {
                            for change in changes {
                                if let Ok(Change::Route(route, _)) = change {
                                    if input
                                        .send(Input::Event(MemberEvent::RouteSeen(route)))
                                        .await
                                        .is_err()
                                    {
                                        return;
                                    }
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
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot watch and read the route"),
        }
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
                match shared
                    .store
                    .put_member(&shared.config.member_id, &record, lease)
                    .await
                {
                    Ok(_) => last = Some((lease, record)),
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
