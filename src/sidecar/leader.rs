//! Election and the leader driver: campaigns on the member's lease, and while
//! leading feeds the leader state machine from one etcd watch of the link and
//! from peer replies, and carries out its writes and pushes.

use super::member::Input;
use super::Shared;
use crate::notify::{Event, EventKind};
use crate::proto::peer_client::PeerClient;
use crate::proto::{DrainRequest, ServeRequest};
use crate::store::{Change, StoreError, Watched};
use lockstep_core::failsafe::{lapse_doubt_from, lease_about_to_lapse, may_lead, roster_live};
use lockstep_core::leader::{
    HistoryKind, HistoryOutcome, Leader, LeaderAction, LeaderConfig, LeaderEvent, LeaderFailsafe,
    SwitchInfo, WriteFailure,
};
use lockstep_core::member::{Leadership, MemberView};
use lockstep_core::{Applied, Phase, Push, Token};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tracing::{debug, info, info_span, warn, Instrument};

/// How often the leader pushes Drain/Serve again to members that have not
/// acked (they also learn the route from their etcd watch).
pub const RESEND_EVERY: Duration = Duration::from_millis(500);

/// Campaigns whenever this member has a lease and no one leads; leads until
/// it steps down, loses its lease or the sidecar stops. With failsafe, the
/// member is told first (it grants nothing from then on) and the process
/// campaigns only as `failsafe::may_lead` allows.
pub(crate) async fn campaign_loop(shared: Arc<Shared>, member: mpsc::Sender<Input>) {
    let mut lease_rx = shared.lease.subscribe();
    let mut roster_gone_since: Option<lockstep_core::Time> = None;
    let mut warned: Option<std::time::Instant> = None;
    loop {
        if *shared.stopping.borrow() {
            return;
        }
        let Some(lease) = *lease_rx.borrow_and_update() else {
            if lease_rx.changed().await.is_err() {
                return;
            }
            continue;
        };
        let failsafe = match shared.config.failsafe.protocol() {
            None => None,
            Some(config) => {
                match may_campaign(&shared, &member, config, &mut roster_gone_since).await {
                    Ok(f) => Some(f),
                    Err(why) => {
                        set_leading(&member, NOT_LEADING).await;
                        // A full restart under failsafe keeps the link from
                        // switching for minutes: on-call must see why.
                        if why.full_restart()
                            && warned.is_none_or(|t| t.elapsed() >= FULL_RESTART_WARN_EVERY)
                        {
                            warn!(%why, "not campaigning");
                            warned = Some(std::time::Instant::now());
                        } else {
                            debug!(%why, "not campaigning");
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                            _ = lease_rx.changed() => {}
                        }
                        continue;
                    }
                }
            }
        };
        let campaigned = shared.store.campaign(&shared.config.member_id, lease).await;
        if !matches!(campaigned, Ok(Some(_))) && failsafe.is_some() {
            set_leading(&member, NOT_LEADING).await;
        }
        match campaigned {
            Ok(Some(token)) => {
                let span = info_span!("leader", link = %shared.config.link, member = %shared.config.member_id, token);
                info!(parent: &span, "elected leader");
                shared.leader_token.send_replace(Some(token));
                shared.metrics.set_leader(true);
                let (reason, wrote) = lead(shared.clone(), token, lease, failsafe)
                    .instrument(span.clone())
                    .await;
                shared.leader_token.send_replace(None);
                set_leading(&member, Leadership::Ended { wrote }).await;
                shared.metrics.set_leader(false);
                info!(parent: &span, %reason, "stepped down");
                if let Err(e) = shared.store.resign(token).await {
                    debug!(error = %e, "resign failed; the lease bounds it");
                }
            }
            Ok(None) => wait_for_vacancy(&shared, &mut lease_rx, lease).await,
            Err(e) if e.is_lease_gone() => {
                // The member re-registers; campaign again with its new lease.
                debug!("lease gone; waiting for a new one before campaigning");
                while *lease_rx.borrow_and_update() == Some(lease) {
                    if lease_rx.changed().await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, "campaign failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Neither campaigning nor leading, without having written.
const NOT_LEADING: Leadership = Leadership::Ended { wrote: None };

/// Tells the member whether its process campaigns or leads; returns its
/// view once it knows.
async fn set_leading(member: &mpsc::Sender<Input>, leading: Leadership) -> Option<MemberView> {
    super::member::ask(member, |tx| Input::Leading(leading, tx)).await
}

/// How often the WARN about a full restart under failsafe repeats.
const FULL_RESTART_WARN_EVERY: Duration = Duration::from_secs(30);

/// Why a process does not campaign now (failsafe).
enum NotCampaigning {
    /// Its lease is about to lapse: etcd does not answer it.
    LeaseLapsing,
    Unreadable(crate::store::StoreError),
    MemberGone,
    Barred(lockstep_core::failsafe::LeadBar),
}

impl NotCampaigning {
    /// No incarnation of the route's roster is live: nobody may lead for
    /// `failsafe.max + D`.
    fn full_restart(&self) -> bool {
        matches!(
            self,
            NotCampaigning::Barred(lockstep_core::failsafe::LeadBar::NotInRoster {
                gone: Some(_),
                ..
            })
        )
    }
}

impl std::fmt::Display for NotCampaigning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotCampaigning::LeaseLapsing => {
                f.write_str("this member's lease is about to lapse (etcd unreachable?)")
            }
            NotCampaigning::Unreadable(e) => write!(f, "cannot read the link: {e}"),
            NotCampaigning::MemberGone => f.write_str("the member task is gone"),
            NotCampaigning::Barred(bar) => bar.fmt(f),
        }
    }
}

/// Failsafe: whether this process may campaign now (`failsafe::may_lead`
/// on the link as etcd holds it), with the member already told it
/// campaigns; what the leader then needs of failsafe.
async fn may_campaign(
    shared: &Shared,
    member: &mpsc::Sender<Input>,
    config: lockstep_core::failsafe::FailsafeConfig,
    roster_gone_since: &mut Option<lockstep_core::Time>,
) -> Result<LeaderFailsafe, NotCampaigning> {
    // A member whose lease is about to lapse cannot win (etcd does not
    // answer it) and may have to grant: it does not campaign, so its peers
    // keep its grants while etcd is away.
    let lb_down_bound = shared.config.lb_down_detection();
    let fresh_until = shared.view.borrow().lease_fresh_until;
    if lease_about_to_lapse(fresh_until, shared.clock.now(), &config, lb_down_bound) {
        return Err(NotCampaigning::LeaseLapsing);
    }
    // Read before telling the member: a read that hangs must not keep it
    // from granting meanwhile.
    let snap = shared
        .store
        .snapshot()
        .await
        .map_err(NotCampaigning::Unreadable)?;
    let view = set_leading(member, Leadership::Campaigning)
        .await
        .ok_or(NotCampaigning::MemberGone)?;
    let now = shared.clock.now();
    let route = snap.route.as_ref().map(|(r, _)| r);
    let live = roster_live(route, snap.members.iter().map(|l| (l.id.as_str(), l.lease)));
    *roster_gone_since = if live {
        None
    } else {
        Some(roster_gone_since.unwrap_or(now))
    };
    may_lead(
        Some(&config),
        route,
        &shared.config.member_id,
        &view.leases,
        *roster_gone_since,
        view.bound_until,
        lb_down_bound,
        now,
    )
    .map_err(NotCampaigning::Barred)?;
    Ok(LeaderFailsafe {
        config,
        leases: view.leases,
        roster_gone_since: *roster_gone_since,
        lb_down_bound,
    })
}

/// How often a candidate looks at the leader key again although its watch
/// saw no delete (a backstop for a watch stuck on a hung etcd node).
const VACANCY_RECHECK: Duration = Duration::from_secs(5);

/// Returns when the leader key is gone (deleted, or not there at a look),
/// our lease changes, or the watch breaks: then the caller campaigns. The
/// backstop look every [`VACANCY_RECHECK`] is a read and a new watch, not
/// a campaign: a campaign txn is an etcd proposal, and one per candidate
/// every 5 s was 200 proposals/s at 1,000 links (issue 15).
async fn wait_for_vacancy(
    shared: &Shared,
    lease_rx: &mut tokio::sync::watch::Receiver<Option<i64>>,
    lease: i64,
) {
    loop {
        // A delete after the look is seen on the watch.
        let Ok((mut watch, snapshot)) = shared.store.watch_then_snapshot(Watched::Leader).await
        else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            return;
        };
        if snapshot.leader.is_none() {
            return;
        }
        let deadline = tokio::time::sleep(VACANCY_RECHECK);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                changes = watch.next() => match changes {
                    Ok(Some(changes)) => {
                        if changes.iter().any(|c| matches!(c, Ok(Change::Leader(None)))) {
                            return;
                        }
                    }
                    _ => return,
                },
                r = lease_rx.changed() => {
                    if r.is_err() || *lease_rx.borrow() != Some(lease) {
                        return;
                    }
                }
                _ = &mut deadline => break,
            }
        }
        if *shared.stopping.borrow() {
            return;
        }
    }
}

enum Done {
    Written(Result<(i64, Vec<lockstep_core::leader::Listed>), WriteFailure>),
    Replied(String, Applied),
}

/// Leads until the state machine steps down, the lease changes or (with
/// failsafe) is about to lapse. Returns why, and the highest epoch it sent
/// a route write for (the write may still land: the member grants nothing
/// below it).
async fn lead(
    shared: Arc<Shared>,
    token: Token,
    lease: i64,
    failsafe: Option<LeaderFailsafe>,
) -> (String, Option<lockstep_core::Epoch>) {
    let clock = shared.clock;
    // Failsafe: a leader whose lease is about to lapse steps down, so it
    // may grant before its peers' leases lapse (they lapse about as soon).
    let doubt = failsafe.as_ref().map(|f| (f.config, f.lb_down_bound));
    let mut view_rx = shared.view.subscribe();
    let mut wrote: Option<lockstep_core::Epoch> = None;
    // Events that the snapshot already holds come again on the watch with
    // revisions the state machine has seen, and are ignored.
    let (mut watch, snapshot) = match shared.store.watch_then_snapshot(Watched::Link).await {
        Ok(w) => w,
        Err(e) => return (format!("cannot watch and read the link: {e}"), wrote),
    };
    let core = Leader::new(
        LeaderConfig {
            id: shared.config.member_id.clone(),
            token,
            wall_ms_at_start: wall_ms(),
            initial_setup: shared.config.initial_setup,
            resend_every: RESEND_EVERY,
            // Validated at start-up.
            handover: shared.config.handover.protocol().unwrap_or(None),
            failsafe,
        },
        clock.now(),
    );
    #[cfg(feature = "mutations")]
    let core = core.with_mutation(super::mutation());
    let mut core = core;
    // Validated at start-up, so this only fails on a bug.
    match shared.config.failover.policy(shared.config.initial_setup) {
        Ok(p) => core = core.with_policy(lockstep_core::failover::Policy::new(p)),
        Err(e) => warn!(error = %e, "automatic failover off: bad policy"),
    }
    shared.metrics.set_paused(snapshot.paused.is_some());
    core.handle(
        clock.now(),
        LeaderEvent::Start {
            route: snapshot.route.clone(),
            members: snapshot.members.clone(),
            request: snapshot.request.clone(),
            paused: snapshot.paused.clone(),
            history_epoch: snapshot.history_epoch,
        },
    );
    let (done_tx, mut done_rx) = mpsc::channel::<Done>(64);
    let mut lease_rx = shared.lease.subscribe();
    // Wall-clock start of each switch, for its history record.
    let mut started_at: HashMap<u64, String> = HashMap::new();
    let mut notes = Notes {
        shared: &shared,
        token,
        writing: None,
        announced: None,
        paused: snapshot.paused.clone(),
        switch_timeout: shared.config.admin.switch_timeout,
        timed: None,
        overdue_at: None,
        failed: None,
    };

    // `return` in this block ends the leadership with a reason; a switch
    // still in progress then is notified as failed.
    let reason: String = async { loop {
        while let Some(action) = core.poll_action() {
            match action {
                LeaderAction::WriteRoute {
                    mut route,
                    expect_route_rev,
                    consume,
                    mut history,
                    list_members,
                } => {
                    route.at = now_rfc3339();
                    wrote = wrote.max(Some(route.epoch));
                    shared.metrics.route_write_started(route.epoch, route.phase);
                    let start = started_at
                        .entry(route.epoch)
                        .or_insert_with(|| route.at.clone())
                        .clone();
                    if let Some(h) = history.as_mut() {
                        h.started_at = start;
                    }
                    notes.writing = Some(route.clone());
                    notes.write_started(&route, clock.now());
                    let span = info_span!("write_route", epoch = route.epoch, phase = %route.phase, setup = %route.setup, token);
                    let store = shared.store.clone();
                    let tx = done_tx.clone();
                    tokio::spawn(
                        async move {
                            route_write_failpoint(false, route.phase);
                            let res = store
                                .write_route(
                                    token,
                                    &route,
                                    expect_route_rev,
                                    consume.as_ref().map(|(rev, o)| (*rev, o)),
                                    history.as_ref(),
                                    list_members,
                                )
                                .await;
                            match &res {
                                Ok((rev, _)) => info!(rev, "route written"),
                                Err(e) => warn!(failure = ?e, "route write failed"),
                            }
                            route_write_failpoint(true, route.phase);
                            let _ = tx.send(Done::Written(res)).await;
                        }
                        .instrument(span),
                    );
                }
                LeaderAction::ResolveRequest { rev, outcome } => {
                    notes.resolved(&outcome);
                    let store = shared.store.clone();
                    tokio::spawn(async move {
                        match store.resolve_request(token, rev, &outcome).await {
                            Ok(true) => info!(id = %outcome.id, status = %outcome.status, message = %outcome.message, "request resolved"),
                            Ok(false) => debug!("request changed before it was resolved"),
                            Err(e) => warn!(error = %e, "cannot resolve request"),
                        }
                    }.in_current_span());
                }
                LeaderAction::WriteHistory(mut record) => {
                    let store = shared.store.clone();
                    let keep = shared.config.admin.history_keep;
                    if record.outcome == HistoryOutcome::Complete {
                        notes.completed(&record);
                        shared.metrics.switch_completed(&record);
                        info!(epoch = record.epoch, to = %record.to, drain_ms = record.drain_ms, total_ms = record.total_ms, fenced = ?record.fenced_members, "switch complete");
                        record.started_at = started_at.remove(&record.epoch).unwrap_or_default();
                        started_at.retain(|e, _| *e > record.epoch);
                    } else {
                        warn!(epoch = record.epoch, kind = %record.kind, reason = %record.reason, "recorded in the history");
                        record.started_at = now_rfc3339();
                    }
                    tokio::spawn(
                        async move {
                            if let Err(e) = store.put_history(token, &record).await {
                                warn!(error = %e, "cannot write history");
                            }
                            crate::store::trim_history_logged(&store, token, keep).await;
                        }
                        .in_current_span(),
                    );
                }
                LeaderAction::Send { member, addr, push } => {
                    let client = peer(&shared, &addr, &member);
                    send(
                        client,
                        done_tx.clone(),
                        member,
                        shared.config.link.clone(),
                        push,
                    );
                }
                LeaderAction::PauseLink {
                    reason,
                    epoch,
                    setup,
                } => {
                    warn!(%reason, "pausing the link");
                    let pause = lockstep_core::policy::Pause {
                        reason,
                        requested_by: "lockstep:auto".into(),
                        by_note: String::new(),
                        at: now_rfc3339(),
                    };
                    let record =
                        pause_record(&pause, true, epoch, setup, &shared.config.member_id, token);
                    let store = shared.store.clone();
                    tokio::spawn(
                        async move {
                            if let Err(e) = store.pause_as_leader(token, &pause, &record).await {
                                warn!(error = %e, "cannot write the pause");
                            }
                        }
                        .in_current_span(),
                    );
                }
                LeaderAction::PolicyNote {
                    note,
                    no_healthy_setup,
                } => {
                    if no_healthy_setup {
                        warn!(%note, "no healthy setup to fail over to");
                    } else {
                        info!(%note, "failover policy");
                    }
                    shared.metrics.set_no_healthy_setup(no_healthy_setup);
                    let store = shared.store.clone();
                    tokio::spawn(
                        async move {
                            if let Err(e) = store.put_policy_note(token, lease, &note).await {
                                debug!(error = %e, "cannot publish the policy note");
                            }
                        }
                        .in_current_span(),
                    );
                }
                LeaderAction::StepDown { reason } => return reason,
            }
        }

        let timeout = core.poll_timeout();
        let sleep = async {
            match timeout {
                Some(t) => tokio::time::sleep_until(clock.instant(t)).await,
                None => std::future::pending().await,
            }
        };
        let doubt_from = doubt.map(|(config, d)| {
            let fresh = view_rx.borrow_and_update().lease_fresh_until;
            lapse_doubt_from(fresh, &config, d).unwrap_or(clock.now())
        });
        let lapsing = async {
            match doubt_from {
                Some(t) => tokio::time::sleep_until(clock.instant(t)).await,
                None => std::future::pending().await,
            }
        };
        let overdue_at = notes.overdue_at.map(|(_, t)| t);
        let overdue = async {
            match overdue_at {
                Some(t) => tokio::time::sleep_until(clock.instant(t)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changes = watch.next() => match changes {
                Ok(Some(changes)) => {
                    for change in changes {
                        let change = match change {
                            Ok(c) => c,
                            Err(e) => { warn!(error = %e, "ignoring unreadable key"); continue; }
                        };
                        let event = match change {
                            Change::Route(route, rev) => LeaderEvent::RouteSeen { route, rev },
                            Change::RouteGone(rev) => LeaderEvent::RouteGone { rev },
                            Change::Member(listed) => LeaderEvent::MemberPut(listed),
                            Change::MemberGone(id, rev) => {
                                info!(member = %id, "member key gone (lease expired or revoked)");
                                LeaderEvent::MemberDeleted { id, rev }
                            }
                            Change::Request(request, rev) => {
                                debug!(id = %request.id, rev, "request seen");
                                LeaderEvent::RequestPut { request, rev }
                            }
                            Change::RequestGone(rev) => LeaderEvent::RequestDeleted { rev },
                            Change::Paused(p) => {
                                shared.metrics.set_paused(p.is_some());
                                notes.pause_seen(p.as_ref(), core.route().map(|r| r.epoch));
                                LeaderEvent::PauseChanged(p)
                            }
                            Change::Leader(l) => {
                                if l.as_ref().is_none_or(|(_, t)| *t != token) {
                                    return "leader key changed".into();
                                }
                                continue;
                            }
                            Change::Outcome(_) | Change::Other => continue,
                        };
                        core.handle(clock.now(), event);
                    }
                }
                Ok(None) => return "watch closed".into(),
                Err(e @ StoreError::WatchCanceled(_)) => return e.to_string(),
                Err(e) => return format!("watch broke: {e}"),
            },
            Some(done) = done_rx.recv() => {
                let event = match done {
                    Done::Written(Ok((rev, members))) => {
                        notes.written(core.current_switch());
                        LeaderEvent::RouteWritten { rev, members }
                    }
                    Done::Written(Err(f)) => LeaderEvent::WriteFailed(f),
                    Done::Replied(member, applied) => LeaderEvent::PeerReplied { member, applied },
                };
                core.handle(clock.now(), event);
            }
            r = lease_rx.changed() => {
                if r.is_err() || *lease_rx.borrow() != Some(lease) {
                    return "lease lost".into();
                }
            }
            _ = lapsing => return "this member's lease is about to lapse (etcd unreachable?): stepping down so that it may grant (failsafe)".into(),
            r = view_rx.changed(), if doubt.is_some() => {
                if r.is_err() {
                    return "the member task is gone".into();
                }
            }
            _ = sleep => core.handle(clock.now(), LeaderEvent::Tick),
            _ = overdue => notes.overdue(core.current_switch()),
        }
    } }.await;
    if let Some(sw) = core.current_switch() {
        notes.failed(&sw, &reason);
    }
    (reason, wrote)
}

/// What the leader tells `[notify]` receivers, from what it does: kept
/// beside the loop so the loop only reports.
struct Notes<'a> {
    shared: &'a Shared,
    token: Token,
    /// The route write in flight (one at a time).
    writing: Option<lockstep_core::Route>,
    /// The newest epoch whose start was notified.
    announced: Option<u64>,
    /// The pause as last seen, so only changes are notified.
    paused: Option<lockstep_core::policy::Pause>,
    /// `admin.switch_timeout`: a switch not complete this long after its
    /// first drain (or serve) write has failed, as `lockstep_switch_failures_total`
    /// counts it.
    switch_timeout: Duration,
    /// The newest epoch whose timeout is (or was) running.
    timed: Option<u64>,
    /// The running timeout: the switch's epoch, and when it overruns.
    overdue_at: Option<(u64, lockstep_core::Time)>,
    /// The newest epoch notified as failed: `switch-failed` once per
    /// switch.
    failed: Option<u64>,
}

impl Notes<'_> {
    fn event(&self, kind: EventKind) -> Event {
        Event::new(
            kind,
            &self.shared.config.link,
            &self.shared.config.member_id,
            self.token,
        )
    }

    /// The write in flight succeeded: a switch's first write (hold, or
    /// drain without a hold) means it has begun.
    fn written(&mut self, switch: Option<SwitchInfo>) {
        let Some(route) = self.writing.take() else {
            return;
        };
        if route.phase == Phase::Serve || self.announced >= Some(route.epoch) {
            return;
        }
        self.announced = Some(route.epoch);
        let Some(sw) = switch.filter(|s| s.epoch == route.epoch) else {
            return;
        };
        let automatic = matches!(
            sw.kind,
            HistoryKind::AutoFailover | HistoryKind::AutoFailback
        );
        let mut e = self.event(if automatic {
            EventKind::AutoFailover
        } else {
            EventKind::SwitchBegun
        });
        e.message = format!(
            "{} to {} begun at epoch {} ({})",
            sw.kind, sw.to, sw.epoch, route.phase
        );
        self.fill(&mut e, &sw);
        self.shared.notify.send(e);
    }

    /// A route write goes out: a switch's first drain or serve write
    /// starts its `admin.switch_timeout` (the hold is the planned grace,
    /// as in `metrics`).
    fn write_started(&mut self, route: &lockstep_core::Route, now: lockstep_core::Time) {
        if route.phase == Phase::Hold || self.timed >= Some(route.epoch) {
            return;
        }
        self.timed = Some(route.epoch);
        self.overdue_at = Some((route.epoch, now + self.switch_timeout));
    }

    /// The running switch overran `admin.switch_timeout`: `switch-failed`,
    /// once (it may still complete: a `switch-complete` follows then).
    fn overdue(&mut self, current: Option<SwitchInfo>) {
        let Some((epoch, _)) = self.overdue_at.take() else {
            return;
        };
        let Some(sw) = current.filter(|s| s.epoch == epoch) else {
            return;
        };
        if self.failed >= Some(epoch) {
            return;
        }
        self.failed = Some(epoch);
        warn!(
            epoch,
            timeout = ?self.switch_timeout,
            "switch not complete within admin.switch_timeout"
        );
        let mut e = self.event(EventKind::SwitchFailed);
        self.fill(&mut e, &sw);
        e.message = format!(
            "the {} to {} at epoch {} is not complete after admin.switch_timeout ({:?}); the leader goes on with it (switch-complete follows if it completes)",
            sw.kind, sw.to, sw.epoch, self.switch_timeout
        );
        self.shared.notify.send(e);
    }

    fn fill(&self, e: &mut Event, sw: &SwitchInfo) {
        e.epoch = Some(sw.epoch);
        e.kind = Some(sw.kind.to_string());
        e.from = sw.from;
        e.to = Some(sw.to);
        e.reason = sw.reason.clone();
        e.requested_by = sw.requested_by.clone();
    }

    fn completed(&mut self, record: &lockstep_core::leader::HistoryRecord) {
        if self.overdue_at.is_some_and(|(e, _)| e <= record.epoch) {
            self.overdue_at = None;
        }
        let mut e = self.event(EventKind::SwitchComplete);
        e.epoch = Some(record.epoch);
        e.kind = Some(record.kind.to_string());
        e.from = record.from;
        e.to = Some(record.to);
        e.reason = record.reason.clone();
        e.requested_by = record.requested_by.clone();
        e.message = format!(
            "every live LB serves {} at epoch {} ({} ms, {} ms without service)",
            record.to, record.epoch, record.total_ms, record.drain_ms
        );
        e.drain_ms = Some(record.drain_ms);
        e.total_ms = Some(record.total_ms);
        e.fenced_members = record.fenced_members.clone();
        self.shared.notify.send(e);
    }

    fn failed(&mut self, sw: &SwitchInfo, reason: &str) {
        if self.failed >= Some(sw.epoch) {
            return;
        }
        self.failed = Some(sw.epoch);
        let mut e = self.event(EventKind::SwitchFailed);
        self.fill(&mut e, sw);
        e.message = format!(
            "the leader stepped down during the {} to {} at epoch {} ({reason}); the next leader finishes it",
            sw.kind, sw.to, sw.epoch
        );
        self.shared.notify.send(e);
    }

    fn resolved(&self, outcome: &lockstep_core::leader::RequestOutcome) {
        use lockstep_core::leader::RequestStatus;
        if !matches!(
            outcome.status,
            RequestStatus::Rejected | RequestStatus::Expired
        ) {
            return;
        }
        let mut e = self.event(EventKind::RequestRefused);
        e.epoch = Some(outcome.epoch);
        e.message = format!(
            "request {} {}: {}",
            outcome.id, outcome.status, outcome.message
        );
        self.shared.notify.send(e);
    }

    fn pause_seen(&mut self, pause: Option<&lockstep_core::policy::Pause>, epoch: Option<u64>) {
        if self.paused.as_ref() == pause {
            return;
        }
        self.paused = pause.cloned();
        let mut e = match pause {
            Some(p) => {
                let mut e = self.event(EventKind::Paused);
                e.reason = p.reason.clone();
                e.requested_by = p.requested_by.clone();
                e.message = format!("paused: nothing moves until resumed ({})", p.reason);
                e
            }
            None => {
                let mut e = self.event(EventKind::Resumed);
                e.message = "resumed: switches and automatic failover go on".into();
                e
            }
        };
        e.epoch = epoch;
        self.shared.notify.send(e);
    }
}

/// Failpoints around the leader's route writes, for crash tests
/// (`leader-{before,after}-{drain,serve}-write`); compiled to nothing unless
/// built with the `failpoints` feature.
fn route_write_failpoint(after: bool, phase: lockstep_core::Phase) {
    let name = match (after, phase) {
        (false, lockstep_core::Phase::Hold) => "leader-before-hold-write",
        (true, lockstep_core::Phase::Hold) => "leader-after-hold-write",
        (false, lockstep_core::Phase::Drain) => "leader-before-drain-write",
        (false, lockstep_core::Phase::Serve) => "leader-before-serve-write",
        (true, lockstep_core::Phase::Drain) => "leader-after-drain-write",
        (true, lockstep_core::Phase::Serve) => "leader-after-serve-write",
    };
    fail::fail_point!(name);
    let _ = name;
}

/// Sends one Drain or Serve; a reply is the member's ack. A failure is only
/// logged: the member also learns the route from etcd, and the leader
/// pushes again on its resend timer.
fn send(
    client: Option<PeerClient<Channel>>,
    done: mpsc::Sender<Done>,
    member: String,
    link: String,
    push: Push,
) {
    let span =
        info_span!("push", phase = %push.phase, %member, epoch = push.epoch, token = push.token);
    tokio::spawn(
        async move {
            let Some(mut client) = client else { return };
            let (epoch, token) = (push.epoch, push.token);
            let setup = crate::rpc::setup_to_proto(push.setup) as i32;
            let reply = match push.phase {
                Phase::Hold => {
                    client
                        .hold(DrainRequest {
                            link,
                            epoch,
                            token,
                            setup,
                        })
                        .await
                }
                Phase::Drain => {
                    client
                        .drain(DrainRequest {
                            link,
                            epoch,
                            token,
                            setup,
                        })
                        .await
                }
                Phase::Serve => {
                    client
                        .serve(ServeRequest {
                            link,
                            epoch,
                            token,
                            setup,
                        })
                        .await
                }
            };
            match reply {
                Ok(reply) => {
                    let applied = reply
                        .into_inner()
                        .applied
                        .and_then(|a| crate::rpc::applied_from_proto(&a));
                    if let Some(applied) = applied {
                        let _ = done.send(Done::Replied(member, applied)).await;
                    }
                }
                Err(status) => {
                    debug!(error = %status.message(), "push failed; the etcd path remains")
                }
            }
        }
        .instrument(span),
    );
}

/// Unix time in milliseconds (requests' deadlines are wall-clock).
pub(crate) fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The client for member `id` at `addr`, over the sidecar's shared
/// (mutual-TLS) channel to it, which only that member may answer.
pub(crate) fn peer(shared: &Shared, addr: &str, id: &str) -> Option<PeerClient<Channel>> {
    match shared.channels.get(addr, id) {
        Ok(channel) => Some(PeerClient::new(channel)),
        Err(e) => {
            warn!(%addr, member = %id, error = %e, "bad peer address");
            None
        }
    }
}

/// The history record of a pause (`paused`) or resume of the link at
/// `epoch`, serving `setup`, recorded by `member` (token 0: not a leader).
pub(crate) fn pause_record(
    pause: &lockstep_core::policy::Pause,
    paused: bool,
    epoch: u64,
    setup: lockstep_core::Setup,
    member: &str,
    token: i64,
) -> lockstep_core::leader::HistoryRecord {
    use lockstep_core::leader::{HistoryKind, HistoryOutcome, HistoryRecord};
    HistoryRecord {
        epoch,
        from: None,
        to: setup,
        kind: if paused {
            HistoryKind::Pause
        } else {
            HistoryKind::Resume
        },
        reason: pause.reason.clone(),
        requested_by: pause.requested_by.clone(),
        by_note: pause.by_note.clone(),
        leader: member.to_string(),
        token,
        started_at: pause.at.clone(),
        drain_ms: 0,
        hold_ms: 0,
        grace_ms: 0,
        total_ms: 0,
        fenced_members: Vec::new(),
        outcome: HistoryOutcome::Done,
        request_id: Some(uuid::Uuid::new_v4().simple().to_string()[..8].to_string()),
    }
}

pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
