//! Named scenarios, the context they drive a lab through, and the runner
//! that records and judges each run.
//!
//! A run: a fresh [`Lab`] under `target/lab/chaos-<name>-<seed>`, the
//! key-pair traffic and the LB sampler recording into `history.jsonl`
//! throughout, the scenario's faults and switchovers (timings and choices
//! from a `StdRng` seeded with the seed), then every fault healed, the link
//! left to settle, and the verdict computed from the history file.
//!
//! **Adding a scenario:** write an `async` body against [`Ctx`] and add a
//! [`Scenario`] to [`registry`]. Faults come from [`LabFault`]; new kinds of
//! fault (network partitions, `tc netem`) are new `LabFault` variants.

use super::fault::{ForgedAnswer, ForgedPush, Held, Injected, LabFault};
use super::history::{
    Event, FaultOp, FaultRecord, ForgedRecord, History, Recording, StartInfo, SwitchRecord,
    SwitchResult, TimingInfo, TransitRecord,
};
use super::net::NetFault;
use super::verdict::{self, Verdict};
use anyhow::{anyhow, bail, Context, Result};
use futures::future::BoxFuture;
use lockstep::proto;
use lockstep::store::{Snapshot, Store};
use lockstep_core::{Phase, Role, Route, Setup};
use lockstep_testkit::lab::{Lab, LabOptions};
use lockstep_testkit::traffic::Traffic;
use lockstep_testkit::transit::Transit;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How a scenario's lab is shaped (etcd nodes, failpoints per member).
pub type LabFn = fn(&mut StdRng) -> LabOptions;
/// A scenario's script.
pub type BodyFn = for<'a> fn(&'a mut Ctx) -> BoxFuture<'a, Result<()>>;

/// One named scenario.
#[derive(Clone, Copy)]
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub lab: LabFn,
    pub body: BodyFn,
}

/// Knobs of a run (not of the scenario).
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Time between two reads of one LB's state.
    pub sample_interval: Duration,
    /// Time between key-pair starts (`None`: back to back).
    pub pair_interval: Option<Duration>,
    /// `LOCKSTEP_MUTATION` for every sidecar: break the protocol on
    /// purpose (needs a build with the `mutations` feature).
    pub mutation: Option<String>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            sample_interval: Duration::from_millis(5),
            // Leaves CPU for the sidecars on a 2-core machine while still
            // sending hundreds of pairs a second.
            pair_interval: Some(Duration::from_millis(2)),
            mutation: None,
        }
    }
}

/// SAE pairs with a transit gap in every run, beside the gapless key
/// pairs.
const TRANSIT_PAIRS: usize = 4;

/// A judged run.
pub struct RunReport {
    pub verdict: Verdict,
    pub history: PathBuf,
}

// ---------------------------------------------------------------------------
// The context a scenario drives

/// The answer to one switchover request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SwitchAnswer {
    /// The leader took the request (`completed`: and, for a waiting
    /// request, every live member serves the target).
    Done {
        epoch: u64,
        completed: bool,
    },
    Already {
        epoch: u64,
    },
    /// Refused with a reason (unhealthy target, another request pending).
    Refused(String),
    /// No answer or an error (member unreachable, timeout).
    Error(String),
}

impl SwitchAnswer {
    fn result(&self) -> &'static str {
        match self {
            SwitchAnswer::Done {
                completed: true, ..
            } => "completed",
            SwitchAnswer::Done { .. } => "accepted",
            SwitchAnswer::Already { .. } => "already",
            SwitchAnswer::Refused(_) => "refused",
            SwitchAnswer::Error(_) => "error",
        }
    }

    pub fn completed(&self) -> bool {
        matches!(
            self,
            SwitchAnswer::Done {
                completed: true,
                ..
            }
        )
    }
}

/// A switchover in flight; [`PendingSwitch::answer`] waits for it.
pub struct PendingSwitch {
    pub id: u64,
    rx: oneshot::Receiver<SwitchAnswer>,
}

impl PendingSwitch {
    pub async fn answer(self) -> SwitchAnswer {
        self.rx
            .await
            .unwrap_or_else(|_| SwitchAnswer::Error("abandoned".into()))
    }
}

/// How long [`Ctx::heal_all`] keeps retrying heals that fail.
const HEAL_PATIENCE: Duration = Duration::from_secs(60);

/// Upper bound on one Admin call (the request's own timeout is shorter).
const SWITCH_CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// The `timeout_ms` a request carries: how long the member waits for a
/// leader to take it (and, with `wait`, for the switch to complete).
const SWITCH_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// A fault that lost the route, and the task that waits for etcd's route
/// to be back above `floor` (or to be the very route of before the fault:
/// a restored snapshot may hold it) with every member on it (returns how
/// long after the fault, and the route's epoch then).
struct RouteWatch {
    fault_id: u64,
    kind: &'static str,
    floor: u64,
    task: JoinHandle<(Duration, u64)>,
}

/// The last line of a sidecar's log that reports an error (what it said
/// when it exited), for the report.
fn last_error(log: &std::path::Path) -> String {
    match std::fs::read_to_string(log) {
        Ok(text) => text
            .lines()
            .rev()
            .find(|l| l.contains("ERROR") || l.starts_with("error:"))
            .map_or_else(
                || format!("no error in {}", log.display()),
                |l| l.trim().to_string(),
            ),
        Err(e) => format!("cannot read {}: {e}", log.display()),
    }
}

/// The highest epoch etcd shows: the route's, every member's applied one,
/// the newest history record's. A new route must go above it.
fn epoch_floor(s: &Snapshot) -> u64 {
    s.route
        .as_ref()
        .map(|(r, _)| r.epoch)
        .into_iter()
        .chain(
            s.members
                .iter()
                .filter_map(|m| m.record.applied.map(|a| a.epoch)),
        )
        .chain(s.history_epoch)
        .max()
        .unwrap_or(0)
}

/// What a scenario gets: the lab, the history, a seeded RNG and helpers
/// that record what they do.
pub struct Ctx {
    pub lab: Lab,
    pub history: History,
    pub rng: StdRng,
    pub seed: u64,
    /// Liveness bound of this lab's timing.
    pub bound: Duration,
    store: Store,
    traffic: Option<Traffic>,
    active: BTreeMap<u64, LabFault>,
    /// What active faults' heals need back (network handles, etcd's
    /// downtime), by fault id.
    held: BTreeMap<u64, Held>,
    /// Forged pushes waiting for their answers, by fault id; each task
    /// records its answers in the history.
    forged: Vec<(u64, JoinHandle<Vec<ForgedAnswer>>)>,
    /// Snapshots saved so far (`etcd-<n>.snapshot` in the lab directory).
    snapshots: u64,
    /// Faults that lost the route, each watched until the route is back
    /// above every epoch applied before ([`Self::finish_route_watch`]).
    route_watch: Vec<RouteWatch>,
    /// Sidecars that exited by themselves and wait to be started again
    /// ([`Self::supervise`]).
    exited: BTreeSet<usize>,
    /// Active faults whose heal failed and is retried (a sidecar that
    /// could not start yet).
    retry_heal: BTreeSet<u64>,
    next_fault: u64,
    next_switch: u64,
    switches: Vec<(u64, JoinHandle<()>)>,
}

impl Ctx {
    pub fn members(&self) -> usize {
        self.lab.sidecars.len()
    }

    pub fn member_id(&self, i: usize) -> String {
        self.lab.sidecars[i].spec.member_id.clone()
    }

    pub fn note(&self, text: impl Into<String>) {
        self.history.note(text);
    }

    /// Records a scenario expectation; a false one fails the run.
    pub fn check(&self, name: &str, ok: bool, detail: impl Into<String>) -> bool {
        self.history.check(name, ok, detail)
    }

    pub fn traffic(&self) -> Result<&Traffic> {
        self.traffic
            .as_ref()
            .context("the key-pair traffic already stopped")
    }

    /// A uniformly random duration in `[lo, hi)` (milliseconds), from the
    /// run's seed.
    pub fn pick_ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(if hi > lo {
            self.rng.random_range(lo..hi)
        } else {
            lo
        })
    }

    pub async fn snapshot(&self) -> Result<Snapshot> {
        Ok(self.store.snapshot().await?)
    }

    /// Polls etcd until `pred` holds (etcd errors count as "not yet").
    pub async fn wait_snapshot(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Snapshot) -> bool,
    ) -> Result<Snapshot> {
        let deadline = Instant::now() + timeout;
        let mut last_err = None;
        loop {
            match self.store.snapshot().await {
                Ok(s) if pred(&s) => return Ok(s),
                Ok(_) => {}
                Err(e) => last_err = Some(e.to_string()),
            }
            if Instant::now() > deadline {
                bail!(
                    "not {what} within {timeout:?}{}",
                    last_err
                        .map(|e| format!(" (last etcd error: {e})"))
                        .unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    }

    /// The current route.
    pub async fn route(&self) -> Result<Route> {
        let snap = self
            .wait_snapshot("a route in etcd", Duration::from_secs(10), |s| {
                s.route.is_some()
            })
            .await?;
        snap.route.map(|(r, _)| r).context("route vanished")
    }

    /// The index of the member that leads.
    pub async fn leader(&self, timeout: Duration) -> Result<usize> {
        let snap = self
            .wait_snapshot("a leader", timeout, |s| s.leader.is_some())
            .await?;
        let (id, _) = snap.leader.context("leader vanished")?;
        self.lab
            .sidecar_index(|m| m == id)
            .with_context(|| format!("leader {id:?} is not a member of this lab"))
    }

    /// Some member other than `i`.
    pub fn other_than(&self, i: usize) -> usize {
        (i + 1) % self.members()
    }

    /// A member no active fault silences, picked by the RNG.
    pub fn live_member(&mut self) -> usize {
        let silenced: Vec<usize> = self
            .active
            .values()
            .filter_map(|f| match f {
                LabFault::SidecarKill { member, .. } | LabFault::SidecarStop { member } => {
                    Some(*member)
                }
                _ => None,
            })
            .collect();
        let live: Vec<usize> = (0..self.members())
            .filter(|i| !silenced.contains(i))
            .collect();
        if live.is_empty() {
            0
        } else {
            live[self.rng.random_range(0..live.len())]
        }
    }

    /// Sends a switchover to `to` through member `via`'s Admin API, as
    /// on-call user `by` would with the CLI; records the request and, when
    /// it comes, the answer.
    pub fn switch(&mut self, to: Setup, by: &str, via: usize, wait: bool) -> PendingSwitch {
        self.next_switch += 1;
        let id = self.next_switch;
        let endpoint = self.lab.sidecars[via].endpoint();
        let tls = self.lab.tls(&self.lab.operator).cloned();
        self.history.record(&Event::Switch(SwitchRecord {
            id,
            by: by.into(),
            via: self.member_id(via),
            to,
            at_us: self.history.now_us(),
        }));
        let request = proto::SwitchRequest {
            to: match to {
                Setup::Hot => proto::Setup::Hot as i32,
                Setup::Warm => proto::Setup::Warm as i32,
            },
            reason: format!("chaos (seed {})", self.seed),
            requested_by: by.into(),
            force: false,
            wait,
            timeout_ms: SWITCH_REQUEST_TIMEOUT.as_millis() as u64,
            grace_ms: 0,
            dry_run: false,
            at: String::new(),
        };
        let (tx, rx) = oneshot::channel();
        let history = self.history.clone();
        let task = tokio::spawn(async move {
            let answer = send_switch(endpoint, tls, request).await;
            let (epoch, detail) = match &answer {
                SwitchAnswer::Done { epoch, .. } | SwitchAnswer::Already { epoch } => {
                    (Some(*epoch), None)
                }
                SwitchAnswer::Refused(m) | SwitchAnswer::Error(m) => (None, Some(m.clone())),
            };
            history.record(&Event::SwitchResult(SwitchResult {
                id,
                at_us: history.now_us(),
                result: answer.result().into(),
                epoch,
                detail,
            }));
            let _ = tx.send(answer);
        });
        self.switches.push((id, task));
        PendingSwitch { id, rx }
    }

    /// Injects `fault` and records it; returns its id for [`Self::heal`].
    /// An instantaneous fault ([`LabFault::instantaneous`]) is recorded as
    /// healed at once (nothing is left to heal); a forged push's answers
    /// are recorded when they come ([`Self::forged_answers`]).
    pub async fn inject(&mut self, fault: LabFault) -> Result<u64> {
        self.next_fault += 1;
        let id = self.next_fault;
        let (kind, target) = (fault.kind(&self.lab), fault.target(&self.lab));
        let floor = if fault.loses_route() {
            match self.store.snapshot().await {
                Ok(s) => Some((
                    epoch_floor(&s),
                    s.route.map(|(r, _)| (r.epoch, r.phase, r.setup)),
                )),
                Err(e) => {
                    self.note(format!(
                        "#{id} {kind}: etcd unreadable before it ({e}); its route is not watched"
                    ));
                    None
                }
            }
        } else {
            None
        };
        let injected = fault
            .inject(&mut self.lab)
            .await
            .with_context(|| format!("injecting {kind} on {target}"))?;
        if let Some((floor, before)) = floor {
            let (store, since) = (self.store.clone(), Instant::now());
            self.route_watch.push(RouteWatch {
                fault_id: id,
                kind,
                floor,
                task: tokio::spawn(async move {
                    loop {
                        if let Ok(s) = store.snapshot().await {
                            let settled = s.settled();
                            // A snapshot that holds the route of the time
                            // of the restore lost nothing; any other route
                            // must go above every epoch applied before.
                            let back = |r: &Route| {
                                r.epoch > floor || Some((r.epoch, r.phase, r.setup)) == before
                            };
                            if let Some((r, _)) = s.route.filter(|(r, _)| settled && back(r)) {
                                return (since.elapsed(), r.epoch);
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }),
            });
        }
        let mut detail = None;
        match injected {
            Injected::Done { detail: d } => detail = d,
            Injected::Net(h) => {
                self.held.insert(id, Held::Net(h));
            }
            Injected::EtcdDown { since } => {
                self.held.insert(id, Held::EtcdDown { since });
            }
            Injected::Pushes(answers) => {
                let (history, member) = (self.history.clone(), self.fault_member_id(&fault));
                self.forged.push((
                    id,
                    tokio::spawn(async move {
                        let answers = answers.await;
                        for a in &answers {
                            history.record(&Event::Forged(ForgedRecord {
                                fault_id: id,
                                member: member.clone(),
                                phase: a.phase,
                                epoch: a.epoch,
                                token: a.token,
                                setup: a.setup,
                                sent_us: history.us(a.sent),
                                answered_us: history.us(a.answered),
                                answer: a.answer.clone(),
                            }));
                        }
                        answers
                    }),
                ));
            }
        }
        self.history.record(&Event::Fault(FaultRecord {
            id,
            op: FaultOp::Inject,
            fault: kind.into(),
            target: target.clone(),
            lb: fault.silenced_lb(&self.lab),
            at_us: self.history.now_us(),
            etcd_started_us: None,
            detail,
        }));
        if fault.instantaneous() {
            self.history.record(&Event::Fault(FaultRecord {
                id,
                op: FaultOp::Heal,
                fault: kind.into(),
                target,
                lb: None,
                at_us: self.history.now_us(),
                etcd_started_us: None,
                detail: Some("instantaneous: nothing to heal".into()),
            }));
        } else {
            self.active.insert(id, fault);
        }
        Ok(id)
    }

    fn fault_member_id(&self, fault: &LabFault) -> String {
        match fault {
            LabFault::ForgedPush(ForgedPush { member, .. }) => self
                .lab
                .sidecars
                .get(*member)
                .map_or_else(|| format!("member#{member}"), |s| s.spec.member_id.clone()),
            _ => String::new(),
        }
    }

    /// Waits for the answers to forged-push fault `id` (each was recorded
    /// in the history when it came).
    pub async fn forged_answers(&mut self, id: u64) -> Result<Vec<ForgedAnswer>> {
        let i = self
            .forged
            .iter()
            .position(|(f, _)| *f == id)
            .with_context(|| format!("fault #{id} sent no forged push, or was waited for"))?;
        let (_, task) = self.forged.remove(i);
        task.await
            .with_context(|| format!("the forged push of fault #{id}"))
    }

    /// Waits (up to `timeout`) for every forged push's answers; one still
    /// unanswered is recorded as such.
    pub async fn finish_forged(&mut self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        for (id, task) in std::mem::take(&mut self.forged) {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                abort.abort();
                self.note(format!(
                    "forged push of fault #{id}: abandoned at the end of the run"
                ));
            }
        }
    }

    /// A forged push for member `member`, from what the link looks like
    /// now: a Serve of the setup the LBs do not serve (the route's other
    /// one while they are not all on one setup) at the highest epoch etcd
    /// shows + 1000, a Drain at a huge epoch (sometimes `u64::MAX`), both
    /// under a huge token. etcd unreadable: epochs above 0.
    pub async fn forgery(&mut self, member: usize) -> ForgedPush {
        let (current, route_setup) = match self.store.snapshot().await {
            Ok(s) => (epoch_floor(&s), s.route.map(|(r, _)| r.setup)),
            Err(_) => (0, None),
        };
        let setup = match self.lbs_serving().await.or(route_setup) {
            Some(s) => s.other(),
            None if self.rng.random_bool(0.5) => Setup::Hot,
            None => Setup::Warm,
        };
        let drain_epoch = if self.rng.random_bool(0.25) {
            u64::MAX
        } else {
            current + 1_000_000 + self.rng.random_range(0..1_000_000_000)
        };
        ForgedPush {
            member,
            serve_epoch: current + 1000,
            drain_epoch,
            token: (1 << 40) + self.rng.random_range(0..1 << 20),
            setup,
        }
    }

    /// Checks that every route a fault lost (deleted, rolled back) is back
    /// above every epoch applied before it, with the link settled on it
    /// (DESIGN §3, "Epochs never go backwards"), waiting up to `grace`
    /// more for each.
    pub async fn finish_route_watch(&mut self, grace: Duration) {
        for w in std::mem::take(&mut self.route_watch) {
            let abort = w.task.abort_handle();
            let seen = tokio::time::timeout(grace, w.task).await;
            if seen.is_err() {
                abort.abort();
            }
            let detail = match &seen {
                Ok(Ok((after, epoch))) => format!(
                    "route back at epoch {epoch}, {:.0} ms after the fault",
                    after.as_secs_f64() * 1000.0
                ),
                Ok(Err(e)) => format!("watch failed: {e}"),
                Err(_) => "not by the end of the run".into(),
            };
            self.check(
                &format!(
                    "the route lost by #{} {} is back (above epoch {} or as it was), the link settled on it",
                    w.fault_id, w.kind, w.floor
                ),
                matches!(seen, Ok(Ok(_))),
                detail,
            );
        }
    }

    /// Saves a snapshot of etcd into the lab directory (for a later
    /// [`LabFault::SnapshotRestore`]) and notes the route it holds.
    pub async fn save_snapshot(&mut self) -> Result<PathBuf> {
        self.snapshots += 1;
        let path = self
            .lab
            .dir
            .join(format!("etcd-{}.snapshot", self.snapshots));
        let node = tokio::task::block_in_place(|| self.lab.etcd.snapshot_save(&path))
            .context("saving an etcd snapshot")?;
        let route = match self.store.snapshot().await {
            Ok(s) => format!("{:?}", s.route.map(|(r, _)| (r.epoch, r.phase, r.setup))),
            Err(e) => format!("unknown ({e})"),
        };
        self.note(format!(
            "etcd snapshot {} saved from {node}; route about then: {route}",
            path.display()
        ));
        Ok(path)
    }

    /// Heals fault `id`; returns once the healed process runs again. A
    /// retryable heal that fails (a sidecar cannot start while etcd has
    /// no quorum) leaves the fault active and is tried again after the
    /// next heal and by [`Self::heal_all`], as its supervisor would.
    pub async fn heal(&mut self, id: u64) -> Result<()> {
        self.try_heal(id).await?;
        let pending: Vec<u64> = self.retry_heal.iter().copied().collect();
        for id in pending {
            self.try_heal(id).await?;
        }
        self.supervise().await;
        Ok(())
    }

    async fn try_heal(&mut self, id: u64) -> Result<bool> {
        let fault = self
            .active
            .get(&id)
            .cloned()
            .with_context(|| format!("no active fault #{id}"))?;
        let (kind, target) = (fault.kind(&self.lab), fault.target(&self.lab));
        let held = self.held.remove(&id);
        let etcd_started = match fault.heal(&mut self.lab, held).await {
            Ok(started) => started,
            Err(e) if fault.heal_retryable() => {
                self.note(format!(
                    "heal of #{id} {kind} on {target} failed, will retry: {e:#}"
                ));
                self.retry_heal.insert(id);
                return Ok(false);
            }
            Err(e) => return Err(e.context(format!("healing {kind} on {target}"))),
        };
        self.active.remove(&id);
        self.retry_heal.remove(&id);
        self.history.record(&Event::Fault(FaultRecord {
            id,
            op: FaultOp::Heal,
            fault: kind.into(),
            target,
            lb: fault.silenced_lb(&self.lab),
            at_us: self.history.now_us(),
            etcd_started_us: etcd_started.map(|t| self.history.us(t)),
            detail: None,
        }));
        Ok(true)
    }

    /// Faults injected and not healed yet.
    pub fn active(&self) -> impl Iterator<Item = (&u64, &LabFault)> {
        self.active.iter()
    }

    /// Plays the sidecars' supervisor (systemd, Kubernetes): a sidecar that
    /// exited while no fault of ours had killed it fails a check (it exits
    /// by itself only on a fatal error, which the run must report) and is
    /// started again, now or at a later call if it cannot start yet.
    pub async fn supervise(&mut self) {
        let killed: BTreeSet<usize> = self
            .active
            .values()
            .filter_map(|f| match f {
                LabFault::SidecarKill { member, .. } => Some(*member),
                _ => None,
            })
            .collect();
        for i in 0..self.members() {
            if killed.contains(&i) || self.exited.contains(&i) {
                continue;
            }
            let s = &mut self.lab.sidecars[i];
            if s.guard.is_running() {
                continue;
            }
            let (id, why) = (s.spec.member_id.clone(), last_error(&s.log));
            self.check(
                &format!("sidecar {id} runs until a fault kills it"),
                false,
                format!("it exited by itself: {why}; started again, as its supervisor would"),
            );
            self.exited.insert(i);
        }
        for i in self.exited.clone() {
            let s = &mut self.lab.sidecars[i];
            let id = s.spec.member_id.clone();
            match tokio::task::block_in_place(|| s.restart()) {
                Ok(()) => {
                    self.exited.remove(&i);
                    self.note(format!("supervisor: sidecar {id} started again"));
                }
                Err(e) => self.note(format!("supervisor: sidecar {id} did not start yet: {e:#}")),
            }
        }
    }

    /// Heals everything still active, retryable heals last (they may need
    /// the others healed first); errors become failed checks.
    pub async fn heal_all(&mut self) {
        let mut ids: Vec<u64> = self.active.keys().copied().collect();
        ids.sort_by_key(|id| self.active.get(id).is_some_and(LabFault::heal_retryable));
        for id in ids {
            if let Err(e) = self.try_heal(id).await {
                self.check("heal", false, format!("{e:#}"));
            }
        }
        // As a supervisor would: keep starting what did not start.
        self.supervise().await;
        let deadline = Instant::now() + HEAL_PATIENCE;
        while !self.retry_heal.is_empty() || !self.exited.is_empty() {
            if Instant::now() > deadline {
                self.check(
                    "heal",
                    false,
                    format!(
                        "faults {:?} could not be healed, sidecars {:?} not started again, within {HEAL_PATIENCE:?}",
                        self.retry_heal, self.exited
                    ),
                );
                return;
            }
            self.supervise().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let pending: Vec<u64> = self.retry_heal.iter().copied().collect();
            for id in pending {
                if let Err(e) = self.try_heal(id).await {
                    self.check("heal", false, format!("{e:#}"));
                    self.retry_heal.remove(&id);
                }
            }
        }
    }

    /// What every LB routes to now, if they all serve the same one setup.
    pub async fn lbs_serving(&self) -> Option<Setup> {
        let mut seen = None;
        for lb in &self.lab.lbs {
            let r = lb.adapter().routing().await.ok()?;
            let s = match (r.hot, r.warm) {
                (true, false) => Setup::Hot,
                (false, true) => Setup::Warm,
                _ => return None,
            };
            if seen.is_some_and(|x| x != s) {
                return None;
            }
            seen = Some(s);
        }
        seen
    }

    /// Waits until every LB serves `setup`.
    pub async fn wait_lbs(&self, setup: Setup, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            if self.lbs_serving().await == Some(setup) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!("LBs not all serving {setup} within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until every LB serves one setup and key pairs match on it.
    pub async fn settle(&self, timeout: Duration) -> Result<Setup> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(setup) = self.lbs_serving().await {
                let left = deadline.saturating_duration_since(Instant::now());
                let matched = self
                    .traffic()?
                    .wait_for_more_matched(3, left.min(Duration::from_secs(3)))
                    .await
                    .is_ok();
                if matched && self.lbs_serving().await == Some(setup) {
                    return Ok(setup);
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the link did not settle on one setup with matching pairs within {timeout:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// [`Self::settle`], supervising the sidecars meanwhile (one that
    /// exits by itself is reported and started again).
    pub async fn settle_supervised(&mut self, timeout: Duration) -> Result<Setup> {
        let deadline = Instant::now() + timeout;
        loop {
            self.supervise().await;
            let left = deadline.saturating_duration_since(Instant::now());
            match self.settle(left.min(Duration::from_secs(1))).await {
                Ok(setup) => return Ok(setup),
                Err(_) if Instant::now() < deadline => {}
                Err(e) => {
                    return Err(e.context(format!(
                    "the link did not settle on one setup with matching pairs within {timeout:?}"
                )))
                }
            }
        }
    }

    /// Waits (up to `timeout`) for every switchover still in flight;
    /// abandons the rest.
    pub async fn finish_switches(&mut self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        for (id, task) in std::mem::take(&mut self.switches) {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                abort.abort();
                self.history.record(&Event::SwitchResult(SwitchResult {
                    id,
                    at_us: self.history.now_us(),
                    result: "error".into(),
                    epoch: None,
                    detail: Some("abandoned at the end of the run".into()),
                }));
            }
        }
    }

    /// Starts a switchover to `to` via `via` and returns once the leader
    /// has written its drain (or gone further): the switch is in flight.
    pub async fn start_switch(
        &mut self,
        to: Setup,
        by: &str,
        via: usize,
    ) -> Result<(PendingSwitch, Route)> {
        let before = self.route().await?.epoch;
        let pending = self.switch(to, by, via, true);
        let snap = self
            .wait_snapshot("the switch's drain in etcd", Duration::from_secs(10), |s| {
                s.route
                    .as_ref()
                    .is_some_and(|(r, _)| r.epoch > before && r.setup == to)
            })
            .await?;
        let route = snap.route.map(|(r, _)| r).context("route vanished")?;
        if route.phase != Phase::Drain {
            self.note(format!(
                "switch to {to} already at {} {} when first seen",
                route.epoch, route.phase
            ));
        }
        Ok((pending, route))
    }
}

async fn send_switch(
    endpoint: String,
    tls: Option<lockstep::tls::TlsFiles>,
    request: proto::SwitchRequest,
) -> SwitchAnswer {
    let call = async {
        let channel =
            lockstep::tls::client::connect(&endpoint, tls.as_ref(), Duration::from_secs(1))
                .await
                .map_err(|e| anyhow!("connecting to {endpoint}: {e}"))?;
        Ok::<_, anyhow::Error>(
            proto::admin_client::AdminClient::new(channel)
                .switchover(request)
                .await,
        )
    };
    match tokio::time::timeout(SWITCH_CALL_TIMEOUT, call).await {
        Err(_) => SwitchAnswer::Error(format!("no answer within {SWITCH_CALL_TIMEOUT:?}")),
        Ok(Err(e)) => SwitchAnswer::Error(format!("{e:#}")),
        Ok(Ok(Ok(reply))) => {
            let r = reply.into_inner();
            if r.already_active {
                SwitchAnswer::Already { epoch: r.epoch }
            } else {
                SwitchAnswer::Done {
                    epoch: r.epoch,
                    completed: r.completed,
                }
            }
        }
        Ok(Ok(Err(status))) => match status.code() {
            tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument => {
                SwitchAnswer::Refused(status.message().to_string())
            }
            code => SwitchAnswer::Error(format!("{code:?}: {}", status.message())),
        },
    }
}

// ---------------------------------------------------------------------------
// Running one scenario

fn timing_info(lab: &Lab) -> TimingInfo {
    let t = &lab.options.timing;
    TimingInfo {
        lease_ttl_ms: t.lease_ttl.as_millis() as u64,
        keepalive_ms: t.keepalive_interval.as_millis() as u64,
        margin_ms: t.margin.as_millis() as u64,
        down_detection_ms: t.down_detection().as_millis() as u64,
        resend_ms: lockstep::sidecar::RESEND_EVERY.as_millis() as u64,
    }
}

/// Runs `scenario` with `seed` on a fresh lab and judges its history. An
/// error means the run could not be carried out (the lab did not start);
/// a failed verdict is an `Ok` with `verdict.passed() == false`.
pub async fn run(scenario: &Scenario, seed: u64, opts: &RunOptions) -> Result<RunReport> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut options = (scenario.lab)(&mut rng);
    if let Some(m) = &opts.mutation {
        options
            .sidecar_env
            .push(("LOCKSTEP_MUTATION".into(), m.clone()));
    }
    let name = format!("chaos-{}-{seed}", scenario.name);
    let lab = Lab::start(&name, options)
        .await
        .with_context(|| format!("starting the lab for {name}"))?;
    let path = lab.dir.join("history.jsonl");
    let history = History::create(&path)?;
    let timing = timing_info(&lab);
    let bound = verdict::liveness_bound(&timing);
    history.record(&Event::Start(StartInfo {
        scenario: scenario.name.into(),
        seed,
        started_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        lbs: lab
            .sidecars
            .iter()
            .map(|s| s.spec.member_id.clone())
            .collect(),
        etcd_nodes: lab.etcd.nodes.len(),
        timing,
        liveness_bound_ms: bound.as_millis() as u64,
        sample_interval_ms: opts.sample_interval.as_millis() as u64,
        mutation: opts.mutation.clone(),
        dir: lab.dir.display().to_string(),
    }));
    let mut config = lab.traffic_config();
    config.interval = opts.pair_interval;
    let traffic = Traffic::start(config);
    let lbs = lab
        .sidecars
        .iter()
        .zip(&lab.lbs)
        .map(|(s, lb)| (s.spec.member_id.clone(), lb.adapter()))
        .collect();
    let recording = Recording::start(&history, lbs, traffic.feed(), opts.sample_interval);
    let store = lab.store().await.context("connecting to the lab's etcd")?;
    let mut ctx = Ctx {
        lab,
        history: history.clone(),
        rng,
        seed,
        bound,
        store,
        traffic: Some(traffic),
        active: BTreeMap::new(),
        held: BTreeMap::new(),
        forged: Vec::new(),
        snapshots: 0,
        route_watch: Vec::new(),
        exited: BTreeSet::new(),
        retry_heal: BTreeSet::new(),
        next_fault: 0,
        next_switch: 0,
        switches: Vec::new(),
    };

    // SAE pairs with a transit gap within the handover's grace: what
    // applications see of each switch (stranded keys).
    let transit_gap = ctx.lab.options.timing.handover_grace / 2;
    let transit = Transit::start(ctx.lab.transit_config(TRANSIT_PAIRS, transit_gap));
    // Enough pairs on the start setup that the run means something.
    let traffic = ctx
        .traffic()?
        .wait_for_matched(50, Duration::from_secs(15))
        .await;
    if ctx.check(
        "traffic before the scenario",
        traffic.is_ok(),
        traffic.err().map(|e| format!("{e:#}")).unwrap_or_default(),
    ) {
        if let Err(e) = (scenario.body)(&mut ctx).await {
            ctx.check("scenario ran to its end", false, format!("{e:#}"));
        }
    }
    ctx.heal_all().await;
    let settled = ctx.settle_supervised(bound).await;
    ctx.check(
        "settled on one setup at the end",
        settled.is_ok(),
        settled.err().map(|e| format!("{e:#}")).unwrap_or_default(),
    );
    ctx.finish_switches(Duration::from_secs(5)).await;
    ctx.finish_forged(Duration::from_secs(25)).await;
    ctx.finish_route_watch(Duration::from_secs(5)).await;
    // Keep watching a little: a late split would show here.
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Some(traffic) = ctx.traffic.take() {
        traffic.stop().await;
    }
    let transit = transit.stop().await;
    history.record(&Event::Transit(TransitRecord {
        at_us: history.now_us(),
        pairs: TRANSIT_PAIRS,
        gap_ms: transit_gap.as_millis() as u64,
        matched: transit.matched,
        stranded: transit.stranded,
        failed: transit.failed,
    }));
    recording.stop().await;
    history.record(&Event::End(super::history::EndInfo {
        at_us: history.now_us(),
    }));
    history.finish()?;
    let events = super::history::read(&path)?;
    let verdict = verdict::judge(&events);
    let text = verdict.to_string();
    std::fs::write(ctx.lab.dir.join("verdict.txt"), &text)
        .with_context(|| format!("writing the verdict next to {}", path.display()))?;
    Ok(RunReport {
        verdict,
        history: path,
    })
}

// ---------------------------------------------------------------------------
// Lab shapes

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn plain(_: &mut StdRng) -> LabOptions {
    LabOptions::default()
}

/// Every member's LB apply takes 150 ms longer: a switch (drain apply,
/// then serve apply) stays in flight for at least 300 ms, so a fault
/// "during a switch" lands inside it.
const SLOW_APPLY: &str = "member-before-lb-apply=sleep(150)";

fn slow_apply(_: &mut StdRng) -> LabOptions {
    LabOptions {
        sidecar_env: env(&[("FAILPOINTS", SLOW_APPLY)]),
        ..LabOptions::default()
    }
}

fn etcd3(_: &mut StdRng) -> LabOptions {
    LabOptions {
        etcd_nodes: 3,
        ..LabOptions::default()
    }
}

/// The leader holds at a failpoint on its second write of one kind (the
/// first is the bootstrap's); a killed leader's successor writes it once
/// and is not held.
fn hold(point: &str) -> LabOptions {
    LabOptions {
        sidecar_env: env(&[("FAILPOINTS", &format!("{point}=1*off->1*sleep(30000)"))]),
        ..LabOptions::default()
    }
}

/// Two members per role: the next leader re-checks the pending request's
/// target health, and with one member per role the dead leader's end would
/// report nothing (the request is then refused, by design).
fn hold_before_drain(_: &mut StdRng) -> LabOptions {
    LabOptions {
        members_per_role: 2,
        ..hold("leader-before-drain-write")
    }
}

fn hold_after_drain(_: &mut StdRng) -> LabOptions {
    hold("leader-after-drain-write")
}

fn hold_before_serve(_: &mut StdRng) -> LabOptions {
    hold("leader-before-serve-write")
}

fn hold_after_serve(_: &mut StdRng) -> LabOptions {
    hold("leader-after-serve-write")
}

/// `bob-0` applies every LB change `ms` late.
fn slow_bob(ms: u64) -> LabOptions {
    let mut o = LabOptions::default();
    o.member_env.insert(
        "bob-0".into(),
        env(&[("FAILPOINTS", &format!("member-before-lb-apply=sleep({ms})"))]),
    );
    o
}

/// Each member in its own network namespace (network faults need it).
fn netns(_: &mut StdRng) -> LabOptions {
    LabOptions {
        netns: true,
        ..LabOptions::default()
    }
}

/// Namespaces, and LB applies 150 ms late so a fault lands inside a switch.
fn netns_slow_apply(rng: &mut StdRng) -> LabOptions {
    LabOptions {
        netns: true,
        ..slow_apply(rng)
    }
}

fn slow_bob_800(_: &mut StdRng) -> LabOptions {
    slow_bob(800)
}

fn slow_bob_300(_: &mut StdRng) -> LabOptions {
    slow_bob(300)
}

// ---------------------------------------------------------------------------
// The scenarios

/// Every scenario, in `list` order.
pub fn registry() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "leader-kill-before-drain-write",
            about: "two members per role; the leader takes a switchover and is SIGKILLed before writing its drain (failpoint holds it); the next leader takes the still-pending request after the lease expires",
            lab: hold_before_drain,
            body: |c| Box::pin(leader_kill(c, LeaderStep::BeforeDrainWrite)),
        },
        Scenario {
            name: "leader-kill-after-drain-write",
            about: "the leader is SIGKILLed right after its drain write (failpoint holds it there); the next leader finds the route in drain and finishes it under a new epoch",
            lab: hold_after_drain,
            body: |c| Box::pin(leader_kill(c, LeaderStep::AfterDrainWrite)),
        },
        Scenario {
            name: "leader-kill-during-acks",
            about: "bob-0 applies LB changes 800 ms late; the leader is SIGKILLed while it waits for bob-0's drain ack; the next leader finishes the switch",
            lab: slow_bob_800,
            body: |c| Box::pin(leader_kill(c, LeaderStep::DuringAcks)),
        },
        Scenario {
            name: "leader-kill-before-serve-write",
            about: "every member acked the drain; the leader is SIGKILLed before its serve write (failpoint holds it); the next leader re-drains and serves",
            lab: hold_before_serve,
            body: |c| Box::pin(leader_kill(c, LeaderStep::BeforeServeWrite)),
        },
        Scenario {
            name: "leader-kill-after-serve-write",
            about: "the leader is SIGKILLed right after its serve write (failpoint holds it); members take the serve from their etcd watch",
            lab: hold_after_serve,
            body: |c| Box::pin(leader_kill(c, LeaderStep::AfterServeWrite)),
        },
        Scenario {
            name: "member-kill-at-rest",
            about: "a non-leader sidecar is SIGKILLed at rest; its LB blocks itself within D; a switchover meanwhile completes once its lease expired; restarted, it rejoins; a switch back completes",
            lab: plain,
            body: |c| Box::pin(member_kill_at_rest(c)),
        },
        Scenario {
            name: "member-kill-during-switch",
            about: "a non-leader sidecar is SIGKILLed while a switch is in flight (LB applies slowed to 150 ms); the switch completes after its lease expires; it rejoins on the new setup",
            lab: slow_apply,
            body: |c| Box::pin(member_fault_during_switch(c, MemberFault::Kill)),
        },
        Scenario {
            name: "member-stop-short-at-rest",
            about: "a non-leader sidecar is frozen (SIGSTOP) for 1-2 s (< TTL) at rest; its LB blocks itself within D; thawed, it serves again; a switchover completes",
            lab: plain,
            body: |c| Box::pin(member_stop_at_rest(c, false)),
        },
        Scenario {
            name: "member-stop-short-during-switch",
            about: "a non-leader sidecar is frozen for 0.8-1.8 s (< TTL) while a switch is in flight; the switch waits for it and completes after the thaw",
            lab: slow_apply,
            body: |c| Box::pin(member_fault_during_switch(c, MemberFault::StopShort)),
        },
        Scenario {
            name: "member-stop-long-at-rest",
            about: "a non-leader sidecar is frozen for 4.5 s (> TTL) at rest; a switchover meanwhile completes once its lease expired; thawed, it re-registers and serves the new setup",
            lab: plain,
            body: |c| Box::pin(member_stop_at_rest(c, true)),
        },
        Scenario {
            name: "member-stop-long-during-switch",
            about: "a non-leader sidecar is frozen for 4.5 s (> TTL) while a switch is in flight; the switch completes after its lease expired, before the thaw",
            lab: slow_apply,
            body: |c| Box::pin(member_fault_during_switch(c, MemberFault::StopLong)),
        },
        Scenario {
            name: "haproxy-restart-at-rest",
            about: "one HAProxy (picked by the seed) is killed at rest and restarted 0-500 ms later; it comes up blocked and its sidecar re-applies; a switchover completes",
            lab: plain,
            body: |c| Box::pin(haproxy_restart(c, false)),
        },
        Scenario {
            name: "haproxy-restart-during-switch",
            about: "one HAProxy is killed while a switch is in flight (LB applies slowed) and restarted 0-300 ms later; the switch completes",
            lab: slow_apply,
            body: |c| Box::pin(haproxy_restart(c, true)),
        },
        Scenario {
            name: "etcd-leader-kill",
            about: "3-node etcd: the etcd leader is SIGKILLed; a switchover during its absence completes (quorum holds); it is restarted; a switch back completes",
            lab: etcd3,
            body: |c| Box::pin(etcd_leader_kill(c)),
        },
        Scenario {
            name: "etcd-quorum-loss",
            about: "3-node etcd: 2 of 3 nodes (the leader and one more) are SIGKILLed; every LB fences itself; a switchover meanwhile does not complete; both come back after 4 s; the link serves again and a switchover completes",
            lab: etcd3,
            body: |c| Box::pin(etcd_quorum_loss(c)),
        },
        Scenario {
            name: "concurrent-opposite-switchovers",
            about: "two on-call users send opposite switchovers through different members at the same moment (0-20 ms apart), eight rounds",
            lab: plain,
            body: |c| Box::pin(concurrent_switchovers(c)),
        },
        Scenario {
            name: "kme-kill-during-switch",
            about: "a hot KME (Alice's or Bob's, by the seed) is SIGKILLed while the link switches hot -> warm; restarted 2 s later; a switch back to hot completes",
            lab: slow_apply,
            body: |c| Box::pin(kme_kill_during_switch(c, false)),
        },
        Scenario {
            name: "kme-kill-target-during-switch",
            about: "the link is on warm and switches back to hot; a hot KME is SIGKILLed mid-switch (the target dies); automatic failover moves the link to warm; the KME comes back 4 s later",
            lab: slow_apply,
            body: |c| Box::pin(kme_kill_during_switch(c, true)),
        },
        Scenario {
            name: "switchovers-slow-member",
            about: "no fault: four switchovers while bob-0 applies LB changes 300 ms late (the mutation test's scenario: with LOCKSTEP_MUTATION=skip-drain its LB keeps the old setup while Alice's serves the new one)",
            lab: slow_bob_300,
            body: |c| Box::pin(switchovers(c, 4)),
        },
        Scenario {
            name: "forged-push",
            about: "a forged Serve (the other setup, epoch + 1000, huge token) and Drain (huge epoch) over plain gRPC to a member (by the seed), at rest, then to the leader or not during a switch (LB applies slowed): every push refused as not confirmed by etcd, the LBs keep their setup, the next switch takes the next epoch",
            lab: slow_apply,
            body: |c| Box::pin(forged_push(c)),
        },
        Scenario {
            name: "route-deleted",
            about: "the link on warm, its route key deleted (etcdctl del): the leader re-establishes warm above every applied epoch (history: route-lost); a switchover to hot really switches; the route deleted again inside a switch (LB applies slowed); a member restarted: never two setups",
            lab: slow_apply,
            body: |c| Box::pin(route_deleted(c)),
        },
        Scenario {
            name: "snapshot-restore",
            about: "3-node etcd: a snapshot after one switch, three more switches, then etcd stopped, the snapshot restored into every node and etcd started TTL + 1 s later: every LB fenced while etcd is down; the link comes back on the setup it served, above every epoch applied before (route-lost); a switchover completes",
            lab: etcd3,
            body: |c| Box::pin(snapshot_restore(c)),
        },
        Scenario {
            name: "net-member-cut-from-etcd-at-rest",
            about: "members in network namespaces; a member (not the leader) is cut from etcd (both directions) and must fence itself: its LB stops routing within TTL - margin + D; healed after 4 s, the link serves one setup again",
            lab: netns,
            body: |c| Box::pin(net_cut_from_etcd(c, false)),
        },
        Scenario {
            name: "net-member-cut-from-etcd-during-switch",
            about: "members in network namespaces, LB applies 150 ms late; a member is cut from etcd while the link switches; the switch completes or is refused, never mismatched; healed after 4 s",
            lab: netns_slow_apply,
            body: |c| Box::pin(net_cut_from_etcd(c, true)),
        },
        Scenario {
            name: "net-peers-cut-during-switchovers",
            about: "members in network namespaces cut from each other (not from etcd) for three switchovers: pushes fail, the switches go through etcd alone or wait; healed, one more switchover completes",
            lab: netns,
            body: |c| Box::pin(net_during_switchovers(c, NetKind::CutPeers)),
        },
        Scenario {
            name: "net-one-way-loss-during-switchovers",
            about: "members in network namespaces; every packet from the leader to another member is dropped (the other way passes) for three switchovers; healed, one more switchover completes",
            lab: netns,
            body: |c| Box::pin(net_during_switchovers(c, NetKind::OneWay)),
        },
        Scenario {
            name: "net-slow-link-during-switchovers",
            about: "members in network namespaces; one member's link (etcd, peers, KMEs, key pairs) gets 125 ± 75 ms delay and 5% loss for three switchovers; healed, one more switchover completes",
            lab: netns,
            body: |c| Box::pin(net_during_switchovers(c, NetKind::Slow)),
        },
    ]
}

/// The scenario called `name`.
pub fn find(name: &str) -> Option<Scenario> {
    // The random modes too, so a failed random run replays with `run`.
    registry()
        .into_iter()
        .chain(super::random::scenarios())
        .find(|s| s.name == name)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LeaderStep {
    BeforeDrainWrite,
    AfterDrainWrite,
    DuringAcks,
    BeforeServeWrite,
    AfterServeWrite,
}

/// Does every listed member record `applied >= (epoch, drain)`? (A hold at
/// `epoch`, the handover's first step, is not a drain.)
fn all_drained(s: &Snapshot, epoch: u64) -> bool {
    !s.members.is_empty()
        && s.members.iter().all(|m| {
            m.record
                .applied
                .is_some_and(|a| (a.epoch, a.phase) >= (epoch, Phase::Drain))
        })
}

fn route_of(s: &Snapshot) -> Option<&Route> {
    s.route.as_ref().map(|(r, _)| r)
}

async fn leader_kill(ctx: &mut Ctx, step: LeaderStep) -> Result<()> {
    let leader = ctx.leader(Duration::from_secs(10)).await?;
    let via = ctx.other_than(leader);
    let before = ctx.route().await?;
    let (e, to) = (before.epoch, before.setup.other());
    ctx.note(format!(
        "leader {} will be killed at {step:?} of the switch to {to} (epoch {})",
        ctx.member_id(leader),
        e + 1
    ));
    let pending = ctx.switch(to, "oncall-a", via, false);
    let hold = Duration::from_secs(5);
    match step {
        LeaderStep::BeforeDrainWrite => {
            // With a handover the hold at e + 1 (which takes the request)
            // comes before the drain; without one the request waits.
            let before_drain = |s: &Snapshot| match route_of(s) {
                Some(r) if r.epoch == e => s.request.is_some(),
                Some(r) => r.epoch == e + 1 && r.phase == Phase::Hold,
                None => false,
            };
            ctx.wait_snapshot("the request stored or held", hold, before_drain)
                .await?;
            tokio::time::sleep(ctx.pick_ms(200, 400)).await;
            let snap = ctx.snapshot().await?;
            let held = before_drain(&snap);
            ctx.check(
                "leader held before its drain write",
                held,
                format!("route {:?}", route_of(&snap)),
            );
        }
        LeaderStep::AfterDrainWrite => {
            ctx.wait_snapshot("the drain written", hold, |s| {
                route_of(s).is_some_and(|r| r.epoch == e + 1 && r.phase == Phase::Drain)
            })
            .await?;
            tokio::time::sleep(ctx.pick_ms(50, 250)).await;
            let snap = ctx.snapshot().await?;
            let held = route_of(&snap).is_some_and(|r| r.epoch == e + 1 && r.phase == Phase::Drain);
            ctx.check(
                "leader held after its drain write",
                held,
                format!("route {:?}", route_of(&snap)),
            );
        }
        LeaderStep::DuringAcks => {
            ctx.wait_snapshot("the drain written", hold, |s| {
                route_of(s).is_some_and(|r| r.epoch == e + 1 && r.phase == Phase::Drain)
            })
            .await?;
            tokio::time::sleep(ctx.pick_ms(50, 300)).await;
            let snap = ctx.snapshot().await?;
            let waiting = route_of(&snap).is_some_and(|r| r.phase == Phase::Drain)
                && !all_drained(&snap, e + 1);
            ctx.check(
                "leader still waiting for a drain ack",
                waiting,
                format!("route {:?}", route_of(&snap)),
            );
        }
        LeaderStep::BeforeServeWrite => {
            ctx.wait_snapshot("every member drained", hold, |s| {
                route_of(s).is_some_and(|r| r.epoch == e + 1) && all_drained(s, e + 1)
            })
            .await?;
            tokio::time::sleep(ctx.pick_ms(200, 400)).await;
            let snap = ctx.snapshot().await?;
            let held = route_of(&snap).is_some_and(|r| r.epoch == e + 1 && r.phase == Phase::Drain);
            ctx.check(
                "leader held before its serve write",
                held,
                format!("route {:?}", route_of(&snap)),
            );
        }
        LeaderStep::AfterServeWrite => {
            ctx.wait_snapshot("the serve written", hold, |s| {
                route_of(s).is_some_and(|r| r.epoch == e + 1 && r.phase == Phase::Serve)
            })
            .await?;
            tokio::time::sleep(ctx.pick_ms(0, 100)).await;
        }
    }
    let id = ctx
        .inject(LabFault::SidecarKill {
            member: leader,
            leader: true,
        })
        .await?;
    let killed = Instant::now();
    // L1: the dead leader holds the switch up no longer than its lease.
    let done = ctx
        .wait_snapshot("the switch completed by the next leader", ctx.bound, |s| {
            route_of(s).is_some_and(|r| r.setup == to) && s.settled()
        })
        .await;
    let after = killed.elapsed();
    let ttl = ctx.lab.options.timing.lease_ttl;
    ctx.check(
        "the next leader completed the switch within TTL + 3 s of the kill",
        done.is_ok() && after <= ttl + Duration::from_secs(3),
        format!(
            "{after:?} after the kill; {}",
            done.as_ref()
                .map(|s| format!("route {:?}", route_of(s)))
                .unwrap_or_else(|e| format!("{e:#}"))
        ),
    );
    let answer = pending.answer().await;
    ctx.note(format!("the switchover's answer: {answer:?}"));
    tokio::time::sleep(ctx.pick_ms(0, 500)).await;
    ctx.heal(id).await?;
    ctx.wait_lbs(to, ctx.bound).await?;
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MemberFault {
    Kill,
    StopShort,
    StopLong,
}

async fn member_kill_at_rest(ctx: &mut Ctx) -> Result<()> {
    let leader = ctx.leader(Duration::from_secs(10)).await?;
    let victim = ctx.other_than(leader);
    let id = ctx
        .inject(LabFault::SidecarKill {
            member: victim,
            leader: false,
        })
        .await?;
    let killed = Instant::now();
    tokio::time::sleep(ctx.pick_ms(0, 500)).await;
    let to = ctx.route().await?.setup.other();
    let answer = ctx.switch(to, "oncall-a", leader, true).answer().await;
    let after = killed.elapsed();
    let ttl = ctx.lab.options.timing.lease_ttl;
    ctx.check(
        "switch with a dead member completes once its lease expired",
        answer.completed() && after <= ttl + Duration::from_secs(3),
        format!("{answer:?} {after:?} after the kill"),
    );
    tokio::time::sleep(ctx.pick_ms(0, 500)).await;
    ctx.heal(id).await?;
    ctx.wait_lbs(to, ctx.bound).await?;
    let back = ctx
        .switch(to.other(), "oncall-a", victim, true)
        .answer()
        .await;
    ctx.check(
        "switch back completes",
        back.completed(),
        format!("{back:?}"),
    );
    Ok(())
}

async fn member_stop_at_rest(ctx: &mut Ctx, long: bool) -> Result<()> {
    let leader = ctx.leader(Duration::from_secs(10)).await?;
    let victim = ctx.other_than(leader);
    let ttl = ctx.lab.options.timing.lease_ttl;
    let frozen_for = if long {
        ttl + Duration::from_millis(1500)
    } else {
        ctx.pick_ms(1000, 2000)
    };
    let id = ctx.inject(LabFault::SidecarStop { member: victim }).await?;
    let frozen = Instant::now();
    let to = ctx.route().await?.setup.other();
    if long {
        tokio::time::sleep(ctx.pick_ms(200, 600)).await;
        let answer = ctx.switch(to, "oncall-a", leader, true).answer().await;
        ctx.check(
            "switch with a frozen member completes once its lease expired, before the thaw",
            answer.completed() && frozen.elapsed() < frozen_for,
            format!("{answer:?} {:?} after the freeze", frozen.elapsed()),
        );
    }
    tokio::time::sleep(frozen_for.saturating_sub(frozen.elapsed())).await;
    ctx.heal(id).await?;
    if long {
        ctx.wait_lbs(to, ctx.bound).await?;
    } else {
        ctx.settle(ctx.bound).await?;
        let answer = ctx.switch(to, "oncall-a", victim, true).answer().await;
        ctx.check(
            "switch after the thaw completes",
            answer.completed(),
            format!("{answer:?}"),
        );
    }
    Ok(())
}

async fn member_fault_during_switch(ctx: &mut Ctx, kind: MemberFault) -> Result<()> {
    let leader = ctx.leader(Duration::from_secs(10)).await?;
    let victim = ctx.other_than(leader);
    let to = ctx.route().await?.setup.other();
    let (pending, _) = ctx.start_switch(to, "oncall-a", leader).await?;
    tokio::time::sleep(ctx.pick_ms(0, 250)).await;
    let ttl = ctx.lab.options.timing.lease_ttl;
    let (fault, hold) = match kind {
        MemberFault::Kill => (
            LabFault::SidecarKill {
                member: victim,
                leader: false,
            },
            ttl + Duration::from_millis(1500),
        ),
        MemberFault::StopShort => (
            LabFault::SidecarStop { member: victim },
            ctx.pick_ms(800, 1800),
        ),
        MemberFault::StopLong => (
            LabFault::SidecarStop { member: victim },
            ttl + Duration::from_millis(1500),
        ),
    };
    let id = ctx.inject(fault).await?;
    let hit = Instant::now();
    if kind != MemberFault::StopShort {
        let done = ctx
            .wait_snapshot("the switch completed without the victim", hold, |s| {
                route_of(s).is_some_and(|r| r.setup == to) && s.settled()
            })
            .await;
        ctx.check(
            "switch completes once the victim's lease expired, before it is back",
            done.is_ok(),
            format!(
                "{:?} after the fault; {}",
                hit.elapsed(),
                done.err().map(|e| format!("{e:#}")).unwrap_or_default()
            ),
        );
    }
    tokio::time::sleep(hold.saturating_sub(hit.elapsed())).await;
    ctx.heal(id).await?;
    let answer = pending.answer().await;
    ctx.check(
        "the switch in flight completes",
        answer.completed(),
        format!("{answer:?}"),
    );
    ctx.wait_lbs(to, ctx.bound).await?;
    Ok(())
}

async fn haproxy_restart(ctx: &mut Ctx, during_switch: bool) -> Result<()> {
    let victim = ctx.rng.random_range(0..ctx.members());
    let to = ctx.route().await?.setup.other();
    let leader = ctx.leader(Duration::from_secs(10)).await?;
    let pending = if during_switch {
        let (p, _) = ctx.start_switch(to, "oncall-a", leader).await?;
        tokio::time::sleep(ctx.pick_ms(0, 250)).await;
        Some(p)
    } else {
        None
    };
    let id = ctx
        .inject(LabFault::HaproxyRestart { member: victim })
        .await?;
    tokio::time::sleep(ctx.pick_ms(0, if during_switch { 300 } else { 500 })).await;
    ctx.heal(id).await?;
    let answer = match pending {
        Some(p) => p.answer().await,
        None => {
            ctx.settle(ctx.bound).await?;
            ctx.switch(to, "oncall-a", leader, true).answer().await
        }
    };
    ctx.check(
        "the switch completes",
        answer.completed(),
        format!("{answer:?}"),
    );
    ctx.wait_lbs(to, ctx.bound).await?;
    Ok(())
}

async fn etcd_leader_kill(ctx: &mut Ctx) -> Result<()> {
    let node = ctx.lab.etcd.leader(Duration::from_secs(10)).await?;
    let id = ctx
        .inject(LabFault::EtcdKill {
            nodes: vec![node],
            leader: true,
        })
        .await?;
    tokio::time::sleep(ctx.pick_ms(500, 1500)).await;
    let to = ctx.route().await?.setup.other();
    let via = ctx.live_member();
    let answer = ctx.switch(to, "oncall-a", via, true).answer().await;
    ctx.check(
        "switch with the etcd leader dead completes",
        answer.completed(),
        format!("{answer:?}"),
    );
    tokio::time::sleep(ctx.pick_ms(0, 1000)).await;
    ctx.heal(id).await?;
    let setup = ctx.settle(ctx.bound).await?;
    let via = ctx.live_member();
    let back = ctx
        .switch(setup.other(), "oncall-b", via, true)
        .answer()
        .await;
    ctx.check(
        "switch back completes",
        back.completed(),
        format!("{back:?}"),
    );
    Ok(())
}

async fn etcd_quorum_loss(ctx: &mut Ctx) -> Result<()> {
    let leader = ctx.lab.etcd.leader(Duration::from_secs(10)).await?;
    let n = ctx.lab.etcd.nodes.len();
    if n < 3 {
        bail!("a quorum loss that can be restored needs 3 etcd nodes, the lab has {n}");
    }
    let other = (leader + 1 + ctx.rng.random_range(0..n - 1)) % n;
    let to = ctx.route().await?.setup.other();
    let id = ctx
        .inject(LabFault::EtcdKill {
            nodes: vec![leader, other],
            leader: true,
        })
        .await?;
    let lost = Instant::now();
    // Every member fences itself: TTL - margin after its last ack, plus D.
    let t = ctx.lab.options.timing.clone();
    let bound = t.lease_ttl - t.margin + t.down_detection() + Duration::from_secs(1);
    let blocked = async {
        loop {
            let mut all = true;
            for lb in &ctx.lab.lbs {
                if lb.adapter().routing().await.ok()
                    != Some(lockstep::lb::haproxy::Routing {
                        hot: false,
                        warm: false,
                    })
                {
                    all = false;
                }
            }
            if all {
                return lost.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let fenced = tokio::time::timeout(bound, blocked).await;
    ctx.check(
        "every LB blocked while etcd has no quorum",
        fenced.is_ok(),
        format!("{fenced:?} (bound {bound:?})"),
    );
    let via = ctx.live_member();
    let pending = ctx.switch(to, "oncall-a", via, false);
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(lost.elapsed())).await;
    ctx.heal(id).await?;
    let answer = pending.answer().await;
    ctx.note(format!("switchover sent without quorum: {answer:?}"));
    let setup = ctx.settle(ctx.bound).await?;
    let via = ctx.live_member();
    let answer = ctx
        .switch(setup.other(), "oncall-b", via, true)
        .answer()
        .await;
    ctx.check(
        "switch after quorum is back completes",
        answer.completed(),
        format!("{answer:?}"),
    );
    Ok(())
}

async fn concurrent_switchovers(ctx: &mut Ctx) -> Result<()> {
    for round in 0..8 {
        let x = if ctx.rng.random_bool(0.5) {
            Setup::Hot
        } else {
            Setup::Warm
        };
        let jitter = ctx.pick_ms(0, 20);
        let a_first = ctx.rng.random_bool(0.5);
        let via_a = ctx.rng.random_range(0..ctx.members());
        let via_b = ctx.other_than(via_a);
        let (first, second) = if a_first {
            (("oncall-a", x, via_a), ("oncall-b", x.other(), via_b))
        } else {
            (("oncall-b", x.other(), via_b), ("oncall-a", x, via_a))
        };
        let p1 = ctx.switch(first.1, first.0, first.2, true);
        tokio::time::sleep(jitter).await;
        let p2 = ctx.switch(second.1, second.0, second.2, true);
        let (r1, r2) = (p1.answer().await, p2.answer().await);
        ctx.note(format!(
            "round {round}: {} -> {}: {r1:?}; {} -> {}: {r2:?}",
            first.0, first.1, second.0, second.1
        ));
        let setup = ctx.settle(ctx.bound).await?;
        let answered = [&r1, &r2]
            .iter()
            .all(|r| !matches!(r, SwitchAnswer::Error(_)));
        ctx.check(
            "both users got an answer",
            answered,
            format!("round {round}: {r1:?}; {r2:?}"),
        );
        ctx.note(format!("round {round}: settled on {setup}"));
        tokio::time::sleep(ctx.pick_ms(100, 300)).await;
    }
    Ok(())
}

async fn kme_kill_during_switch(ctx: &mut Ctx, target_dies: bool) -> Result<()> {
    let role = if ctx.rng.random_bool(0.5) {
        Role::Alice
    } else {
        Role::Bob
    };
    let leader = ctx.leader(Duration::from_secs(10)).await?;
    if target_dies {
        let a = ctx
            .switch(Setup::Warm, "oncall-a", leader, true)
            .answer()
            .await;
        ctx.check("switch to warm completes", a.completed(), format!("{a:?}"));
        // The policy's dwell after a switch, so the failover is not held.
        tokio::time::sleep(ctx.lab.options.timing.failover_dwell).await;
    }
    let to = if target_dies { Setup::Hot } else { Setup::Warm };
    let (pending, _) = ctx.start_switch(to, "oncall-a", leader).await?;
    tokio::time::sleep(ctx.pick_ms(0, 200)).await;
    let id = ctx
        .inject(LabFault::KmeKill {
            setup: Setup::Hot,
            role,
        })
        .await?;
    let answer = pending.answer().await;
    ctx.note(format!("switch to {to} during the KME kill: {answer:?}"));
    if target_dies {
        // Hot is down at one end: the leader fails over to warm.
        let moved = ctx.wait_lbs(Setup::Warm, ctx.bound).await;
        ctx.check(
            "automatic failover to warm while hot is down",
            moved.is_ok(),
            moved
                .map(|d| format!("{d:?}"))
                .unwrap_or_else(|e| format!("{e:#}")),
        );
        tokio::time::sleep(Duration::from_secs(4)).await;
        ctx.heal(id).await?;
    } else {
        tokio::time::sleep(Duration::from_secs(2)).await;
        ctx.heal(id).await?;
        ctx.wait_lbs(Setup::Warm, ctx.bound).await?;
        ctx.lab
            .wait_health(Setup::Hot, true, Duration::from_secs(10))
            .await?;
        let back = ctx
            .switch(Setup::Hot, "oncall-b", leader, true)
            .answer()
            .await;
        ctx.check(
            "switch back to the healed hot setup completes",
            back.completed(),
            format!("{back:?}"),
        );
    }
    Ok(())
}

async fn switchovers(ctx: &mut Ctx, n: usize) -> Result<()> {
    for i in 0..n {
        let to = ctx.route().await?.setup.other();
        let via = ctx.rng.random_range(0..ctx.members());
        let answer = ctx.switch(to, "oncall-a", via, true).answer().await;
        ctx.check(
            "switchover completes",
            answer.completed(),
            format!("switch {i} to {to}: {answer:?}"),
        );
        tokio::time::sleep(ctx.pick_ms(200, 400)).await;
    }
    Ok(())
}

/// A member cut from etcd must block its own LB within TTL − margin + D of
/// its last acknowledged keep-alive (at most one keep-alive interval before
/// the cut).
async fn net_cut_from_etcd(ctx: &mut Ctx, during_switch: bool) -> Result<()> {
    let leader = ctx.leader(Duration::from_secs(10)).await?;
    let victim = ctx.other_than(leader);
    let pending = if during_switch {
        let to = ctx.route().await?.setup.other();
        let p = ctx.switch(to, "oncall-a", leader, false);
        tokio::time::sleep(ctx.pick_ms(0, 300)).await;
        Some(p)
    } else {
        None
    };
    let id = ctx
        .inject(LabFault::Net(NetFault::CutFromEtcd { member: victim }))
        .await?;
    let cut = Instant::now();
    let t = &ctx.lab.options.timing;
    let bound = t.lease_ttl + t.keepalive_interval - t.margin + t.down_detection();
    let lb = ctx.lab.lbs[victim].adapter();
    let blocked = loop {
        if let Ok(r) = lb.routing().await {
            if !r.hot && !r.warm {
                break Some(cut.elapsed());
            }
        }
        if cut.elapsed() > bound + Duration::from_secs(2) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    ctx.check(
        "the member cut from etcd blocked its LB within TTL + keep-alive - margin + D",
        blocked.is_some_and(|b| b <= bound),
        format!("blocked after {blocked:?}; bound {bound:?}"),
    );
    // During a switch the drain may have blocked it before any fencing;
    // still cut once the bound has passed, it must have fenced itself (a
    // serve pushed over gRPC meanwhile may not outlive the lease).
    tokio::time::sleep((cut + bound).saturating_duration_since(Instant::now())).await;
    let at_bound = lb.routing().await;
    ctx.check(
        "still cut at the bound, its LB routes nowhere",
        at_bound.as_ref().is_ok_and(|r| !r.hot && !r.warm),
        format!("{at_bound:?} {bound:?} after the cut"),
    );
    if let Some(p) = pending {
        let answer = p.answer().await;
        ctx.note(format!("the switchover's answer: {answer:?}"));
    }
    tokio::time::sleep(ctx.pick_ms(0, 1000)).await;
    ctx.heal(id).await?;
    ctx.settle(ctx.bound).await?;
    Ok(())
}

#[derive(Clone, Copy, Debug)]
enum NetKind {
    CutPeers,
    OneWay,
    Slow,
}

async fn net_during_switchovers(ctx: &mut Ctx, kind: NetKind) -> Result<()> {
    let leader = ctx.leader(Duration::from_secs(10)).await?;
    let other = ctx.other_than(leader);
    let fault = match kind {
        NetKind::CutPeers => NetFault::CutPeers,
        NetKind::OneWay => NetFault::OneWay {
            from: leader,
            to: other,
        },
        NetKind::Slow => NetFault::Slow {
            member: ctx.rng.random_range(0..ctx.members()),
            delay_ms: 125,
            jitter_ms: 75,
            loss_pct: 5,
            seed: ctx.seed,
        },
    };
    let id = ctx.inject(LabFault::Net(fault)).await?;
    for i in 0..3 {
        let to = ctx.route().await?.setup.other();
        let answer = ctx.switch(to, "oncall-a", leader, true).answer().await;
        // Under a partition a switch may be refused or time out; S1 is the
        // verdict's business, completion after the heal is checked below.
        ctx.note(format!("switch {i} to {to} under the fault: {answer:?}"));
        ctx.finish_switches(ctx.bound).await;
        tokio::time::sleep(ctx.pick_ms(200, 400)).await;
    }
    ctx.heal(id).await?;
    ctx.settle(ctx.bound).await?;
    let to = ctx.route().await?.setup.other();
    let answer = ctx.switch(to, "oncall-a", other, true).answer().await;
    ctx.check(
        "a switchover completes after the heal",
        answer.completed(),
        format!("{answer:?}"),
    );
    Ok(())
}

/// Sends a forgery to `member`, waits for both answers and checks they are
/// refusals of a push etcd does not confirm.
async fn forge(ctx: &mut Ctx, member: usize, when: &str) -> Result<()> {
    let forgery = ctx.forgery(member).await;
    let id = ctx.inject(LabFault::ForgedPush(forgery)).await?;
    let answers = ctx.forged_answers(id).await?;
    let shown: Vec<String> = answers
        .iter()
        .map(|a| format!("{} at epoch {}: {:?}", a.phase, a.epoch, a.answer))
        .collect();
    ctx.check(
        &format!("every forged push {when} refused as not confirmed by etcd"),
        answers.len() == 2 && answers.iter().all(|a| a.answer.refused_as_unconfirmed()),
        shown.join("; "),
    );
    Ok(())
}

/// The attack of issue 9: a forged Serve of the other setup at epoch
/// current + 1000 and a forged Drain at a huge epoch, at rest and inside a
/// switch. Nothing may change, and the next switch is taken at the next
/// epoch (the epoch a member accepts was not raised).
async fn forged_push(ctx: &mut Ctx) -> Result<()> {
    let before = ctx.route().await?;
    let victim = ctx.rng.random_range(0..ctx.members());
    forge(ctx, victim, "at rest").await?;
    // Let a forged Serve land, if it were going to.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let serving = ctx.lbs_serving().await;
    ctx.check(
        "after the forged pushes every LB still serves the route's setup",
        serving == Some(before.setup),
        format!("LBs: {serving:?}; route {} {}", before.epoch, before.setup),
    );
    let leader = ctx.leader(Duration::from_secs(10)).await?;
    let to = before.setup.other();
    let answer = ctx.switch(to, "oncall-a", leader, true).answer().await;
    ctx.check(
        "the next switch completes at the next epoch",
        matches!(answer, SwitchAnswer::Done { epoch, completed: true } if epoch == before.epoch + 1),
        format!("{answer:?}; route was at {}", before.epoch),
    );
    ctx.wait_lbs(to, ctx.bound).await?;
    // Inside a switch: the member may be waiting for etcd to confirm the
    // leader's real push when the forged one arrives.
    let back = to.other();
    let (pending, route) = ctx.start_switch(back, "oncall-b", leader).await?;
    tokio::time::sleep(ctx.pick_ms(0, 200)).await;
    let victim = if ctx.rng.random_bool(0.5) {
        leader
    } else {
        ctx.other_than(leader)
    };
    forge(ctx, victim, &format!("inside the switch to {back}")).await?;
    let answer = pending.answer().await;
    ctx.check(
        "the switch the forgery hit completes",
        answer.completed(),
        format!("{answer:?} (drain at epoch {})", route.epoch),
    );
    ctx.wait_lbs(back, ctx.bound).await?;
    Ok(())
}

/// The newest history record of `kind` above `epoch`, from a member's
/// Admin API (etcd's history, as `lockstep history` shows it).
async fn history_record(ctx: &Ctx, kind: &str, above: u64) -> Option<(u64, String)> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(h) = ctx.lab.history(20).await {
            if let Some(r) = h.records.iter().find(|r| r.kind == kind && r.epoch > above) {
                return Some((r.epoch, r.reason.clone()));
            }
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until etcd's route serves `setup` above `above` and every member
/// has applied it; checks it under `name`. Returns the route's epoch.
async fn wait_reestablished(ctx: &Ctx, name: &str, setup: Setup, above: u64) -> Option<u64> {
    let done = ctx
        .wait_snapshot("the route re-established", ctx.bound, |s| {
            route_of(s)
                .is_some_and(|r| r.setup == setup && r.epoch > above && r.phase == Phase::Serve)
                && s.settled()
        })
        .await;
    let epoch = done
        .as_ref()
        .ok()
        .and_then(|s| route_of(s).map(|r| r.epoch));
    ctx.check(
        name,
        epoch.is_some(),
        match &done {
            Ok(s) => format!("route {:?}", route_of(s)),
            Err(e) => format!("{e:#}"),
        },
    );
    epoch
}

/// The lost route of issue 9: the link on warm, the route key deleted. The
/// leader must not bootstrap "hot at epoch 1": it re-establishes warm
/// above every applied epoch; a switchover to hot then really switches.
async fn route_deleted(ctx: &mut Ctx) -> Result<()> {
    let leader = ctx.leader(Duration::from_secs(10)).await?;
    let on_warm = ctx
        .switch(Setup::Warm, "oncall-a", leader, true)
        .answer()
        .await;
    let applied = match on_warm {
        SwitchAnswer::Done {
            epoch,
            completed: true,
        } => epoch,
        other => bail!("the switch to warm before the deletion did not complete: {other:?}"),
    };
    ctx.inject(LabFault::RouteDeleted).await?;
    let epoch = wait_reestablished(
        ctx,
        "the deleted route is re-established on warm above the applied epoch",
        Setup::Warm,
        applied,
    )
    .await
    .unwrap_or(applied);
    let lost = history_record(ctx, "route-lost", applied).await;
    ctx.check(
        "the history records route-lost",
        lost.is_some(),
        format!("{lost:?}"),
    );
    let via = ctx.other_than(leader);
    let to_hot = ctx.switch(Setup::Hot, "oncall-b", via, true).answer().await;
    ctx.check(
        "a switchover to hot then really switches, above the re-established epoch",
        matches!(to_hot, SwitchAnswer::Done { epoch: e, completed: true } if e > epoch),
        format!("{to_hot:?}; re-established at {epoch}"),
    );
    ctx.wait_lbs(Setup::Hot, ctx.bound).await?;
    let highest = ctx.route().await?.epoch;

    // Deleted again inside a switch: the leader's txn finds no route.
    let leader = ctx.leader(Duration::from_secs(10)).await?;
    let (pending, _) = ctx.start_switch(Setup::Warm, "oncall-a", leader).await?;
    tokio::time::sleep(ctx.pick_ms(0, 200)).await;
    ctx.inject(LabFault::RouteDeleted).await?;
    let answer = pending.answer().await;
    ctx.note(format!("the switch the deletion hit: {answer:?}"));
    let setup = ctx.settle(ctx.bound).await?;
    let after = ctx.route().await?;
    ctx.check(
        "after the second deletion the route is above every epoch before it",
        after.epoch > highest && after.setup == setup,
        format!(
            "route {} {} {}; LBs on {setup}; before: {highest}",
            after.epoch, after.phase, after.setup
        ),
    );

    // A rolling update of one member: it never serves a setup the other
    // end does not (the verdict's LB samples and pairs say).
    let victim = ctx.other_than(ctx.leader(Duration::from_secs(10)).await?);
    let id = ctx
        .inject(LabFault::SidecarKill {
            member: victim,
            leader: false,
        })
        .await?;
    tokio::time::sleep(ctx.pick_ms(0, 500)).await;
    ctx.heal(id).await?;
    ctx.wait_lbs(setup, ctx.bound).await?;
    Ok(())
}

/// An old snapshot restored under running sidecars, etcd kept down for
/// TTL + 1 s (the documented procedure), on a 3-node etcd: the snapshot's
/// route is older and on the other setup than the one the members serve.
async fn snapshot_restore(ctx: &mut Ctx) -> Result<()> {
    let leader = ctx.leader(Duration::from_secs(10)).await?;
    switchovers(ctx, 1).await?;
    let snapshot = ctx.save_snapshot().await?;
    let at_snapshot = ctx.route().await?;
    switchovers(ctx, 3).await?;
    let last = ctx.route().await?;
    let serving = ctx.settle(ctx.bound).await?;
    ctx.note(format!(
        "the snapshot holds route {} {}; the link serves {serving} at {}",
        at_snapshot.epoch, at_snapshot.setup, last.epoch
    ));
    let t = ctx.lab.options.timing.clone();
    let down = t.lease_ttl + Duration::from_secs(1);
    let id = ctx
        .inject(LabFault::SnapshotRestore {
            snapshot: snapshot.clone(),
            down,
        })
        .await?;
    let stopped = Instant::now();
    // Every member fences itself: TTL - margin after its last ack, by
    // its own command or its LB's checks (D more as slack).
    let bound = t.lease_ttl + t.down_detection() - t.margin;
    let mut blocked = None;
    while stopped.elapsed() < bound {
        let mut all = true;
        for lb in &ctx.lab.lbs {
            let r = lb.adapter().routing().await;
            if !r.as_ref().is_ok_and(|r| !r.hot && !r.warm) {
                all = false;
            }
        }
        if all {
            blocked = Some(stopped.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ctx.check(
        "every LB routes nowhere while etcd is down for the restore",
        blocked.is_some(),
        format!("all blocked after {blocked:?} (bound {bound:?})"),
    );
    ctx.heal(id).await?;
    let epoch = wait_reestablished(
        ctx,
        "after the restore the link serves the setup it served, above every epoch applied before",
        serving,
        last.epoch,
    )
    .await
    .unwrap_or(last.epoch);
    let lost = history_record(ctx, "route-lost", last.epoch).await;
    ctx.check(
        "the history records route-lost",
        lost.is_some(),
        format!("{lost:?}"),
    );
    let via = ctx.other_than(leader);
    let answer = ctx
        .switch(serving.other(), "oncall-b", via, true)
        .answer()
        .await;
    ctx.check(
        "a switchover after the restore completes above the re-established epoch",
        matches!(answer, SwitchAnswer::Done { epoch: e, completed: true } if e > epoch),
        format!("{answer:?}; re-established at {epoch}"),
    );
    Ok(())
}
