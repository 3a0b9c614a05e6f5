//! The history of one chaos run, as JSON lines (`<lab dir>/history.jsonl`):
//! every key pair the key-pair traffic finished, every LB routing sample, every
//! fault injected and healed, every switchover requested and its answer.
//! The verdict ([`super::verdict`]) reads only this file, so a run can be
//! judged again later (`lockstep-chaos check <file>`).
//!
//! Times are microseconds since the run's origin (one monotonic clock for
//! every event); the `start` line carries the wall-clock time of the origin.

use anyhow::{Context, Result};
use lockstep::lb::haproxy::Haproxy;
use lockstep_core::{Phase, Setup};
use lockstep_testkit::traffic::{Outcome, PairEvent, PairFeed};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One line of the history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    Start(StartInfo),
    Pair(PairRecord),
    Lb(LbSample),
    Fault(FaultRecord),
    Switch(SwitchRecord),
    SwitchResult(SwitchResult),
    /// One push of a `forged-push` fault and the member's answer.
    Forged(ForgedRecord),
    /// A scenario's own expectation (e.g. "the new leader finished the
    /// switch before the dead one came back"); a failed one fails the run.
    Check(CheckRecord),
    Note(Note),
    /// The SAE pairs with a transit gap, counted at the end of the run.
    Transit(TransitRecord),
    End(EndInfo),
}

impl Event {
    /// When it happened (for a pair or sample: when it ended).
    pub fn at_us(&self) -> u64 {
        match self {
            Event::Start(_) => 0,
            Event::Pair(p) => p.end_us,
            Event::Lb(s) => s.end_us,
            Event::Fault(f) => f.at_us,
            Event::Switch(s) => s.at_us,
            Event::SwitchResult(r) => r.at_us,
            Event::Forged(p) => p.answered_us,
            Event::Check(c) => c.at_us,
            Event::Note(n) => n.at_us,
            Event::Transit(t) => t.at_us,
            Event::End(e) => e.at_us,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StartInfo {
    pub scenario: String,
    pub seed: u64,
    /// Wall-clock time of the origin (RFC 3339).
    pub started_at: String,
    /// LB names (member ids), in the lab's order.
    pub lbs: Vec<String>,
    pub etcd_nodes: usize,
    pub timing: TimingInfo,
    /// Longest allowed time from a heal to a serving link (see
    /// [`super::verdict::liveness_bound`]).
    pub liveness_bound_ms: u64,
    pub sample_interval_ms: u64,
    /// `LOCKSTEP_MUTATION`, when the run deliberately breaks the protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutation: Option<String>,
    pub dir: String,
}

/// The lab timing the bounds derive from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimingInfo {
    pub lease_ttl_ms: u64,
    pub keepalive_ms: u64,
    pub margin_ms: u64,
    /// D: HAProxy's down-detection bound for a silent sidecar.
    pub down_detection_ms: u64,
    /// The leader's Drain/Serve resend interval.
    pub resend_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PairOutcome {
    Matched,
    Mismatched,
    Failed,
}

impl From<Outcome> for PairOutcome {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Matched => PairOutcome::Matched,
            Outcome::Mismatched => PairOutcome::Mismatched,
            Outcome::Failed => PairOutcome::Failed,
        }
    }
}

/// One key pair: `enc_keys` at Alice's LB, then `dec_keys` at Bob's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairRecord {
    pub seq: u64,
    pub start_us: u64,
    pub end_us: u64,
    pub outcome: PairOutcome,
    /// The setup that answered at Alice's / Bob's LB, if one answered.
    pub alice: Option<Setup>,
    pub bob: Option<Setup>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What one LB may route to, per `show servers state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LbState {
    Blocked,
    Hot,
    Warm,
    /// Both servers may take sessions: a violation by itself.
    Both,
    /// No answer (HAProxy down, restarting, or too slow): unknown.
    Unreadable,
}

impl LbState {
    /// The one setup this state routes to.
    pub fn serving(self) -> Option<Setup> {
        match self {
            LbState::Hot => Some(Setup::Hot),
            LbState::Warm => Some(Setup::Warm),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LbState::Blocked => "blocked",
            LbState::Hot => "hot",
            LbState::Warm => "warm",
            LbState::Both => "both",
            LbState::Unreadable => "unreadable",
        }
    }
}

/// One read of an LB's state: HAProxy answered somewhere between `start_us`
/// (request sent) and `end_us` (answer read).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LbSample {
    pub lb: String,
    pub start_us: u64,
    pub end_us: u64,
    pub state: LbState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultOp {
    Inject,
    Heal,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultRecord {
    /// Pairs an inject with its heal.
    pub id: u64,
    pub op: FaultOp,
    /// The fault's kind (`sidecar-kill`, `etcd-quorum-loss`, ...).
    pub fault: String,
    /// What it hit (a member id, `etcd1`, `kme-hot-alice`, ...).
    pub target: String,
    /// The LB whose sidecar the fault hit, for the dead-man's measurement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lb: Option<String>,
    /// When the fault took effect (inject) or the heal completed.
    pub at_us: u64,
    /// The heal of a `snapshot-restore`: when the restored etcd nodes were
    /// started again (etcd was down from the inject until then; the heal
    /// completes once the cluster answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_started_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A switchover sent to a member's Admin API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SwitchRecord {
    pub id: u64,
    /// The on-call user (`requested_by`).
    pub by: String,
    /// The member whose Admin API got the request.
    pub via: String,
    pub to: Setup,
    pub at_us: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SwitchResult {
    pub id: u64,
    pub at_us: u64,
    /// `accepted`, `completed`, `already`, `refused` or `error`.
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A Drain or Serve that no leader sent, pushed over plain gRPC by a
/// `forged-push` fault, and what the member answered. etcd's route never
/// confirms it, so the member must refuse it; one it applied fails the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForgedRecord {
    /// The `forged-push` fault that sent it.
    pub fault_id: u64,
    /// The member it was sent to.
    pub member: String,
    pub phase: Phase,
    pub epoch: u64,
    pub token: i64,
    pub setup: Setup,
    pub sent_us: u64,
    pub answered_us: u64,
    pub answer: PushAnswer,
}

/// A member's answer to a forged push.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum PushAnswer {
    /// The member applied it (answered OK, with what it now applies): a
    /// push etcd never confirmed took effect.
    Applied { applied: String },
    /// Refused with a gRPC status; the expected one is
    /// `PermissionDenied`, "not confirmed by etcd at revision R".
    Refused { code: String, message: String },
    /// No gRPC answer (the member is dead, frozen or cut off, or the call
    /// timed out).
    Unanswered { error: String },
}

impl PushAnswer {
    /// How the answer is counted: `applied`, `refused <gRPC code>`,
    /// `unanswered`.
    pub fn label(&self) -> String {
        match self {
            PushAnswer::Applied { .. } => "applied".into(),
            PushAnswer::Refused { code, .. } => format!("refused {code}"),
            PushAnswer::Unanswered { .. } => "unanswered".into(),
        }
    }

    /// Refused as etcd's authority requires: `PermissionDenied`, "not
    /// confirmed by etcd at revision R".
    pub fn refused_as_unconfirmed(&self) -> bool {
        matches!(self, PushAnswer::Refused { code, message }
            if code == PERMISSION_DENIED && message.contains("not confirmed by etcd at revision"))
    }
}

/// The gRPC code of an unconfirmed push's refusal, as recorded (the
/// `Debug` name of `tonic::Code`).
pub const PERMISSION_DENIED: &str = "PermissionDenied";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckRecord {
    pub at_us: u64,
    pub name: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Note {
    pub at_us: u64,
    pub text: String,
}

/// SAE pairs run as applications do (`lockstep_testkit::transit`): each
/// key_ID travels from Alice to Bob for `gap_ms` before Bob asks for it.
/// A key Bob does not know because a switch came between issue and fetch
/// is stranded (the handover keeps that from planned switches; a failover,
/// whose old setup is presumed dead, may strand keys).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitRecord {
    pub at_us: u64,
    pub pairs: usize,
    pub gap_ms: u64,
    pub matched: u64,
    pub stranded: u64,
    pub failed: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndInfo {
    pub at_us: u64,
}

// ---------------------------------------------------------------------------
// Writing

/// Appends events to the history file; cheap to clone, shared by the
/// scenario and the recording tasks.
#[derive(Clone)]
pub struct History {
    inner: Arc<Inner>,
}

struct Inner {
    origin: Instant,
    path: PathBuf,
    out: Mutex<Out>,
}

struct Out {
    file: BufWriter<File>,
    lines: u64,
    /// The first write error: the run fails at `finish` rather than
    /// silently judging a history with holes.
    error: Option<String>,
}

impl History {
    /// Creates (truncates) `path`; the origin of every timestamp is now.
    pub fn create(path: &Path) -> Result<History> {
        let file =
            File::create(path).with_context(|| format!("creating history {}", path.display()))?;
        Ok(History {
            inner: Arc::new(Inner {
                origin: Instant::now(),
                path: path.to_path_buf(),
                out: Mutex::new(Out {
                    file: BufWriter::new(file),
                    lines: 0,
                    error: None,
                }),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn origin(&self) -> Instant {
        self.inner.origin
    }

    /// `t` in microseconds since the origin (0 for earlier instants).
    pub fn us(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.inner.origin).as_micros() as u64
    }

    pub fn now_us(&self) -> u64 {
        self.us(Instant::now())
    }

    /// Appends one event. A failure is kept and reported by
    /// [`Self::finish`].
    pub fn record(&self, event: &Event) {
        let mut out = self
            .inner
            .out
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if out.error.is_some() {
            return;
        }
        let res = serde_json::to_writer(&mut out.file, event)
            .map_err(std::io::Error::from)
            .and_then(|()| out.file.write_all(b"\n"));
        match res {
            Ok(()) => out.lines += 1,
            Err(e) => out.error = Some(format!("writing {}: {e}", self.inner.path.display())),
        }
    }

    pub fn note(&self, text: impl Into<String>) {
        self.record(&Event::Note(Note {
            at_us: self.now_us(),
            text: text.into(),
        }));
    }

    /// Records a scenario expectation; returns `ok`.
    pub fn check(&self, name: &str, ok: bool, detail: impl Into<String>) -> bool {
        let detail = detail.into();
        self.record(&Event::Check(CheckRecord {
            at_us: self.now_us(),
            name: name.into(),
            ok,
            detail: (!detail.is_empty()).then_some(detail),
        }));
        ok
    }

    /// Flushes; fails if any event could not be written.
    pub fn finish(&self) -> Result<u64> {
        let mut out = self
            .inner
            .out
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = &out.error {
            anyhow::bail!("history incomplete: {e}");
        }
        out.file
            .flush()
            .with_context(|| format!("flushing {}", self.inner.path.display()))?;
        Ok(out.lines)
    }
}

/// Reads a history file back.
pub fn read(path: &Path) -> Result<Vec<Event>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut events = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let event = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not a history event", path.display(), i + 1))?;
        events.push(event);
    }
    Ok(events)
}

// ---------------------------------------------------------------------------
// Recording while a scenario runs

/// The background tasks that feed a [`History`]: one sampler per LB and
/// one task streaming the key-pair traffic's pairs. Stop with [`Recording::stop`].
pub struct Recording {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    pairs: PairStreamer,
}

/// Copies the key-pair traffic's finished pairs into the history, in order.
#[derive(Clone)]
struct PairStreamer {
    feed: PairFeed,
    history: History,
    last: Arc<Mutex<u64>>,
}

impl PairStreamer {
    fn drain(&self) {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        for e in self.feed.after(*last) {
            *last = e.seq;
            self.history
                .record(&Event::Pair(pair_record(&self.history, &e)));
        }
    }
}

fn pair_record(h: &History, e: &PairEvent) -> PairRecord {
    PairRecord {
        seq: e.seq,
        start_us: h.us(e.started),
        end_us: h.us(e.finished),
        outcome: e.outcome.into(),
        alice: e.alice_setup,
        bob: e.bob_setup,
        detail: e.detail.clone(),
    }
}

/// Classifies one `show servers state` read.
pub fn lb_state(read: &Result<lockstep::lb::haproxy::Routing, lockstep::lb::LbError>) -> LbState {
    match read {
        Ok(r) => match (r.hot, r.warm) {
            (false, false) => LbState::Blocked,
            (true, false) => LbState::Hot,
            (false, true) => LbState::Warm,
            (true, true) => LbState::Both,
        },
        Err(_) => LbState::Unreadable,
    }
}

/// How long one sample may take before it counts as unreadable.
const SAMPLE_TIMEOUT: Duration = Duration::from_millis(250);

impl Recording {
    /// Starts sampling every LB (`(name, adapter)`) every `interval` and
    /// streaming pairs from `feed`.
    pub fn start(
        history: &History,
        lbs: Vec<(String, Haproxy)>,
        feed: PairFeed,
        interval: Duration,
    ) -> Recording {
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for (name, adapter) in lbs {
            let adapter = adapter.with_timeout(SAMPLE_TIMEOUT);
            tasks.push(tokio::spawn(sample_loop(
                history.clone(),
                name,
                adapter,
                interval,
                stop_rx.clone(),
            )));
        }
        let pairs = PairStreamer {
            feed,
            history: history.clone(),
            last: Arc::new(Mutex::new(0)),
        };
        let streamer = pairs.clone();
        let mut rx = stop_rx;
        tasks.push(tokio::spawn(async move {
            // Often enough that the key-pair traffic's event log never wraps.
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tokio::select! {
                    _ = tick.tick() => streamer.drain(),
                    _ = rx.wait_for(|s| *s) => break,
                }
            }
        }));
        Recording { stop, tasks, pairs }
    }

    /// Stops sampling and copies the pairs finished so far (call after
    /// stopping the key-pair traffic to get them all).
    pub async fn stop(self) {
        self.stop.send_replace(true);
        for t in self.tasks {
            let _ = t.await;
        }
        self.pairs.drain();
    }
}

async fn sample_loop(
    history: History,
    name: String,
    adapter: Haproxy,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let started = Instant::now();
        let read = adapter.routing().await;
        let ended = Instant::now();
        let state = lb_state(&read);
        history.record(&Event::Lb(LbSample {
            lb: name.clone(),
            start_us: history.us(started),
            end_us: history.us(ended),
            state,
            detail: read.err().map(|e| e.to_string()),
        }));
        let next = started + interval;
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_as_json_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("history.jsonl");
        let h = History::create(&path).expect("create");
        let events = vec![
            Event::Lb(LbSample {
                lb: "alice-0".into(),
                start_us: 1,
                end_us: 2,
                state: LbState::Hot,
                detail: None,
            }),
            Event::Pair(PairRecord {
                seq: 1,
                start_us: 3,
                end_us: 4,
                outcome: PairOutcome::Mismatched,
                alice: Some(Setup::Warm),
                bob: Some(Setup::Hot),
                detail: Some("key not found".into()),
            }),
            Event::Fault(FaultRecord {
                id: 1,
                op: FaultOp::Inject,
                fault: "sidecar-kill".into(),
                target: "bob-0".into(),
                lb: Some("bob-0".into()),
                at_us: 5,
                etcd_started_us: None,
                detail: None,
            }),
        ];
        for e in &events {
            h.record(e);
        }
        assert_eq!(h.finish().expect("finish"), 3);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with(r#"{"kind":"lb","lb":"alice-0""#), "{text}");
        assert_eq!(read(&path).expect("parse"), events);
    }
}
