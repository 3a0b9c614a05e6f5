//! The end-to-end oracle: continuous key pairs through both LBs, as the
//! SAEs see them. A pair is `enc_keys` (one key) at Alice's LB, then
//! `dec_keys` for that `key_ID` at Bob's LB, then a comparison.
//!
//! Soundness: each side keeps ONE HTTP/1.1 keep-alive connection, and a side
//! reconnects only at the start of a pair. The LB kills the sessions of a
//! setup when it stops routing to it, so when Bob's connection (opened before
//! the enc) answers the dec with "key not found" or another key, Bob's and
//! Alice's connections were routed to different setups at the same moment:
//! a real **mismatch**. Transport errors, timeouts and other non-success
//! answers are **failed** pairs (that side reconnects at the next pair).
//!
//! Several LBs per end (`alice_more`, `bob_more`), as SAEs behind a VIP
//! see them: pairs rotate over every (Alice LB, Bob LB) combination, each
//! LB with its own kept-alive connection; an `enc_keys` whose connection
//! fails before any answer is retried once on the next Alice LB (no key
//! exists yet), and a fresh Bob connection is first asked for `status` and
//! replaced by one to the next Bob LB if that fails, all before the enc.
//! Nothing is retried once the key exists, so the soundness argument
//! above holds per pair.
//!
//! Outages: from the start of the first failed pair after a matched one to
//! the end of the next matched pair; one still open counts up to now.
//! Failures before the first matched pair (start-up) open no outage.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use bytes::Bytes;
use hyper::Method;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info};

use crate::http::{HttpConn, HttpReply};
use lockstep_core::Setup;
use lockstep_kme_mock::{ErrorBody, KeyContainer, KEY_NOT_FOUND};

// ---------------------------------------------------------------------------
// Configuration and report

#[derive(Clone, Debug)]
pub struct TrafficConfig {
    /// Alice's LB (the pairs' `enc_keys` go there).
    pub alice: SocketAddr,
    /// Bob's LB (`dec_keys`).
    pub bob: SocketAddr,
    pub master_sae_id: String,
    pub slave_sae_id: String,
    /// Key size in bits to ask for.
    pub key_size: u32,
    /// Time between pair starts; `None` runs pairs back to back.
    pub interval: Option<Duration>,
    /// Limit for connecting and for each request (answer read in full).
    pub request_timeout: Duration,
    /// Pause after a failed pair, so a refusing LB does not make us spin.
    pub failure_pause: Duration,
    /// How many recent pairs [`Traffic::events`] keeps.
    pub event_log_capacity: usize,
    /// Alice's other LBs (the same end behind a VIP).
    pub alice_more: Vec<SocketAddr>,
    /// Bob's other LBs.
    pub bob_more: Vec<SocketAddr>,
}

impl TrafficConfig {
    pub fn new(
        alice: SocketAddr,
        bob: SocketAddr,
        master_sae_id: impl Into<String>,
        slave_sae_id: impl Into<String>,
    ) -> TrafficConfig {
        TrafficConfig {
            alice,
            bob,
            master_sae_id: master_sae_id.into(),
            slave_sae_id: slave_sae_id.into(),
            key_size: 256,
            interval: None,
            request_timeout: Duration::from_secs(1),
            failure_pause: Duration::from_millis(5),
            event_log_capacity: 100_000,
            alice_more: Vec::new(),
            bob_more: Vec::new(),
        }
    }

    /// Every Alice LB, the first one first.
    pub fn alice_lbs(&self) -> Vec<SocketAddr> {
        std::iter::once(self.alice)
            .chain(self.alice_more.iter().copied())
            .collect()
    }

    /// Every Bob LB, the first one first.
    pub fn bob_lbs(&self) -> Vec<SocketAddr> {
        std::iter::once(self.bob)
            .chain(self.bob_more.iter().copied())
            .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Matched,
    Mismatched,
    Failed,
}

/// One finished pair.
#[derive(Clone, Debug)]
pub struct PairEvent {
    pub seq: u64,
    pub started: Instant,
    pub finished: Instant,
    pub outcome: Outcome,
    /// Setup that answered Alice's request (`X-Kme-Setup`), if any answered.
    pub alice_setup: Option<Setup>,
    pub bob_setup: Option<Setup>,
    /// Why a pair failed or mismatched.
    pub detail: Option<String>,
}

/// First and last matched pair served by one setup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetupWindow {
    pub count: u64,
    pub first: Instant,
    pub last: Instant,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServedBy {
    /// Answers at Alice's LB per setup.
    pub alice: BTreeMap<Setup, u64>,
    /// Answers at Bob's LB per setup.
    pub bob: BTreeMap<Setup, u64>,
}

#[derive(Clone, Debug)]
pub struct TrafficReport {
    pub matched: u64,
    pub mismatched: u64,
    pub failed: u64,
    pub longest_outage: Duration,
    /// Closed outages in order, then the open one (if `outage_open`).
    pub outages: Vec<Duration>,
    pub outage_open: bool,
    pub first_pair_at: Option<SystemTime>,
    pub last_pair_at: Option<SystemTime>,
    pub served_by: ServedBy,
    /// Matched pairs per setup (Alice's answer's setup).
    pub matched_by: BTreeMap<Setup, SetupWindow>,
    /// Matched pairs per LB (Alice's and Bob's LBs alike).
    pub matched_at: BTreeMap<SocketAddr, u64>,
    pub last_failure: Option<String>,
    pub last_mismatch: Option<String>,
}

impl TrafficReport {
    pub fn pairs(&self) -> u64 {
        self.matched + self.mismatched + self.failed
    }
}

impl fmt::Display for TrafficReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pairs: matched={} mismatched={} failed={} longest_outage={:.1}ms outages={}{}",
            self.matched,
            self.mismatched,
            self.failed,
            self.longest_outage.as_secs_f64() * 1000.0,
            self.outages.len(),
            if self.outage_open { " (one open)" } else { "" },
        )?;
        for (side, m) in [
            ("alice", &self.served_by.alice),
            ("bob", &self.served_by.bob),
        ] {
            let counts: Vec<String> = m.iter().map(|(s, n)| format!("{s}:{n}")).collect();
            write!(
                f,
                " served_by({side})={}",
                if counts.is_empty() {
                    "-".into()
                } else {
                    counts.join(",")
                }
            )?;
        }
        if let Some(m) = &self.last_mismatch {
            write!(f, " last_mismatch={m:?}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Shared state

struct State {
    matched: u64,
    mismatched: u64,
    failed: u64,
    ever_matched: bool,
    open_outage: Option<Instant>,
    outages: Vec<Duration>,
    first_pair_at: Option<SystemTime>,
    last_pair_at: Option<SystemTime>,
    served_by: ServedBy,
    matched_by: BTreeMap<Setup, SetupWindow>,
    matched_at: BTreeMap<SocketAddr, u64>,
    last_failure: Option<String>,
    last_mismatch: Option<String>,
    events: VecDeque<PairEvent>,
    capacity: usize,
    seq: u64,
}

impl State {
    fn new(capacity: usize) -> State {
        State {
            matched: 0,
            mismatched: 0,
            failed: 0,
            ever_matched: false,
            open_outage: None,
            outages: Vec::new(),
            first_pair_at: None,
            last_pair_at: None,
            served_by: ServedBy::default(),
            matched_by: BTreeMap::new(),
            matched_at: BTreeMap::new(),
            last_failure: None,
            last_mismatch: None,
            events: VecDeque::new(),
            capacity,
            seq: 0,
        }
    }

    fn record(&mut self, started: Instant, finished: Instant, r: PairResult) {
        let now = SystemTime::now();
        self.first_pair_at.get_or_insert(now);
        self.last_pair_at = Some(now);
        if let Some(s) = r.alice_setup {
            *self.served_by.alice.entry(s).or_default() += 1;
        }
        if let Some(s) = r.bob_setup {
            *self.served_by.bob.entry(s).or_default() += 1;
        }
        match r.outcome {
            Outcome::Matched => {
                self.matched += 1;
                self.ever_matched = true;
                for lb in r.lbs.iter().flatten() {
                    *self.matched_at.entry(*lb).or_default() += 1;
                }
                if let Some(start) = self.open_outage.take() {
                    self.outages.push(finished.saturating_duration_since(start));
                }
                if let Some(s) = r.alice_setup {
                    self.matched_by
                        .entry(s)
                        .and_modify(|w| {
                            w.count += 1;
                            w.last = finished;
                        })
                        .or_insert(SetupWindow {
                            count: 1,
                            first: finished,
                            last: finished,
                        });
                }
            }
            Outcome::Failed => {
                self.failed += 1;
                if self.ever_matched && self.open_outage.is_none() {
                    self.open_outage = Some(started);
                }
                self.last_failure = r.detail.clone();
            }
            Outcome::Mismatched => {
                self.mismatched += 1;
                self.last_mismatch = r.detail.clone();
            }
        }
        self.seq += 1;
        if self.capacity > 0 {
            if self.events.len() == self.capacity {
                self.events.pop_front();
            }
            self.events.push_back(PairEvent {
                seq: self.seq,
                started,
                finished,
                outcome: r.outcome,
                alice_setup: r.alice_setup,
                bob_setup: r.bob_setup,
                detail: r.detail,
            });
        }
    }

    fn report(&self, now: Instant) -> TrafficReport {
        let mut outages = self.outages.clone();
        if let Some(start) = self.open_outage {
            outages.push(now.saturating_duration_since(start));
        }
        TrafficReport {
            matched: self.matched,
            mismatched: self.mismatched,
            failed: self.failed,
            longest_outage: outages.iter().copied().max().unwrap_or_default(),
            outages,
            outage_open: self.open_outage.is_some(),
            first_pair_at: self.first_pair_at,
            last_pair_at: self.last_pair_at,
            served_by: self.served_by.clone(),
            matched_by: self.matched_by.clone(),
            matched_at: self.matched_at.clone(),
            last_failure: self.last_failure.clone(),
            last_mismatch: self.last_mismatch.clone(),
        }
    }
}

#[derive(Debug)]
struct PairResult {
    outcome: Outcome,
    /// The Alice and Bob LBs the pair went through.
    lbs: [Option<SocketAddr>; 2],
    alice_setup: Option<Setup>,
    bob_setup: Option<Setup>,
    detail: Option<String>,
}

// ---------------------------------------------------------------------------
// The pair runner

/// One end's LBs, each with its kept-alive connection.
struct End {
    lbs: Vec<SocketAddr>,
    conns: Vec<Option<HttpConn>>,
}

impl End {
    fn new(lbs: Vec<SocketAddr>) -> End {
        let conns = lbs.iter().map(|_| None).collect();
        End { lbs, conns }
    }

    /// LB `i`'s live connection, a new one if it had none; also whether it
    /// is new.
    async fn conn(&mut self, i: usize, timeout: Duration) -> Result<(&mut HttpConn, bool)> {
        let fresh = self.conns[i].as_ref().is_none_or(|c| c.is_closed());
        if fresh {
            self.conns[i] = None;
            self.conns[i] = Some(HttpConn::connect(self.lbs[i], timeout).await?);
        }
        match self.conns[i].as_mut() {
            Some(c) => Ok((c, fresh)),
            None => bail!("internal: connection missing after connecting"),
        }
    }
}

struct Runner {
    config: TrafficConfig,
    enc_path: String,
    dec_path: String,
    status_path: String,
    enc_body: Bytes,
    alice: End,
    bob: End,
    /// Pairs started, for the rotation over LB combinations.
    started: usize,
}

impl Runner {
    fn new(config: TrafficConfig) -> Runner {
        let enc_path = format!("/api/v1/keys/{}/enc_keys", config.slave_sae_id);
        let dec_path = format!("/api/v1/keys/{}/dec_keys", config.master_sae_id);
        let status_path = format!("/api/v1/keys/{}/status", config.master_sae_id);
        let enc_body = Bytes::from(json!({"number": 1, "size": config.key_size}).to_string());
        Runner {
            alice: End::new(config.alice_lbs()),
            bob: End::new(config.bob_lbs()),
            config,
            enc_path,
            dec_path,
            status_path,
            enc_body,
            started: 0,
        }
    }

    /// Bob's connection for this pair, opened (and, when fresh, asked for
    /// `status`) before the enc, so Bob's routing is fixed before the key
    /// exists; a fresh one that fails is replaced by the next LB's once.
    async fn bob_ready(&mut self, first: usize) -> Result<usize> {
        let t = self.config.request_timeout;
        let n = self.bob.lbs.len();
        let mut last = None;
        for i in [first, (first + 1) % n].into_iter().take(n.min(2)) {
            let attempt = async {
                let (conn, fresh) = self.bob.conn(i, t).await?;
                if fresh && n > 1 {
                    let reply = conn
                        .request(Method::GET, &self.status_path, None, t)
                        .await?;
                    if reply.status != 200 {
                        bail!("status: HTTP {}", reply.status);
                    }
                }
                Ok(())
            };
            match attempt.await {
                Ok(()) => return Ok(i),
                Err(e) => {
                    self.bob.conns[i] = None;
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no Bob LB")))
    }

    /// `enc_keys` at Alice LB `first`, retried once on the next LB if the
    /// connection fails before any answer.
    async fn enc(&mut self, first: usize) -> Result<(usize, HttpReply)> {
        let t = self.config.request_timeout;
        let n = self.alice.lbs.len();
        let mut last = None;
        for i in [first, (first + 1) % n].into_iter().take(n.min(2)) {
            let attempt = async {
                let (conn, _) = self.alice.conn(i, t).await?;
                conn.request(Method::POST, &self.enc_path, Some(self.enc_body.clone()), t)
                    .await
            };
            match attempt.await {
                Ok(reply) => return Ok((i, reply)),
                Err(e) => {
                    self.alice.conns[i] = None;
                    last = Some(e.context(format!("alice LB {}", self.alice.lbs[i])));
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no Alice LB")))
    }

    async fn run_pair(&mut self) -> PairResult {
        let mut r = PairResult {
            outcome: Outcome::Failed,
            lbs: [None, None],
            alice_setup: None,
            bob_setup: None,
            detail: None,
        };
        let t = self.config.request_timeout;
        // Every (Alice LB, Bob LB) combination in turn.
        let (na, nb) = (self.alice.lbs.len(), self.bob.lbs.len());
        let a = self.started % na;
        let b = (self.started / na) % nb;
        self.started = self.started.wrapping_add(1);
        // Both connections exist before the enc: Bob's routing is fixed
        // before the key exists.
        let b = match self.bob_ready(b).await {
            Ok(b) => b,
            Err(e) => {
                r.detail = Some(format!("bob: {e:#}"));
                return r;
            }
        };

        // enc_keys at Alice's LB.
        let (key_id, key) = match self.enc(a).await {
            Ok((i, reply)) => {
                r.alice_setup = reply.setup();
                r.lbs = [Some(self.alice.lbs[i]), Some(self.bob.lbs[b])];
                match parse_enc(&reply) {
                    Ok(k) => k,
                    Err(e) => {
                        // That LB's connection is opened anew next time.
                        self.alice.conns[i] = None;
                        r.detail = Some(format!("alice enc_keys: {e:#}"));
                        return r;
                    }
                }
            }
            Err(e) => {
                r.detail = Some(format!("alice enc_keys: {e:#}"));
                return r;
            }
        };
        let Some(bob) = self.bob.conns[b].as_mut() else {
            r.detail = Some("internal: Bob's connection missing after connecting".into());
            return r;
        };

        // dec_keys at Bob's LB, on the connection opened before the enc.
        let dec_body = Bytes::from(json!({"key_IDs": [{"key_ID": key_id}]}).to_string());
        let reply = match bob
            .request(Method::POST, &self.dec_path, Some(dec_body), t)
            .await
        {
            Ok(reply) => reply,
            Err(e) => {
                self.bob.conns[b] = None;
                r.detail = Some(format!("bob dec_keys: {e:#}"));
                return r;
            }
        };
        r.bob_setup = reply.setup();
        match classify_dec(&reply, &key_id, &key) {
            Ok(Outcome::Matched) => r.outcome = Outcome::Matched,
            Ok(outcome) => {
                r.outcome = outcome;
                r.detail = Some(format!(
                    "key_ID {key_id} from alice ({}) at bob ({}): HTTP {} {}",
                    setup_name(r.alice_setup),
                    setup_name(r.bob_setup),
                    reply.status,
                    reply.body_excerpt()
                ));
            }
            Err(e) => {
                self.bob.conns[b] = None;
                r.detail = Some(format!("bob dec_keys: {e:#}"));
            }
        }
        r
    }
}

fn setup_name(s: Option<Setup>) -> &'static str {
    s.map(Setup::as_str).unwrap_or("unknown setup")
}

fn decode_key(b64: &str) -> Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .context("key is not valid base64")
}

/// The one key of a successful `enc_keys` answer.
pub(crate) fn parse_enc(reply: &HttpReply) -> Result<(String, Vec<u8>)> {
    if reply.status != 200 {
        bail!("HTTP {}: {}", reply.status, reply.body_excerpt());
    }
    let c: KeyContainer = serde_json::from_slice(&reply.body)
        .with_context(|| format!("not a key container: {}", reply.body_excerpt()))?;
    let [k] = c.keys.as_slice() else {
        bail!("expected 1 key, got {}", c.keys.len());
    };
    Ok((k.key_id.clone(), decode_key(&k.key)?))
}

/// Matched, mismatched (Bob does not know the key or has another one), or
/// an error meaning the pair failed.
pub(crate) fn classify_dec(reply: &HttpReply, key_id: &str, key: &[u8]) -> Result<Outcome> {
    match reply.status {
        200 => {
            let c: KeyContainer = serde_json::from_slice(&reply.body)
                .with_context(|| format!("not a key container: {}", reply.body_excerpt()))?;
            let [k] = c.keys.as_slice() else {
                bail!("expected 1 key, got {}", c.keys.len());
            };
            if k.key_id != key_id {
                bail!("answered key_ID {} for {key_id}", k.key_id);
            }
            Ok(if decode_key(&k.key)? == key {
                Outcome::Matched
            } else {
                Outcome::Mismatched
            })
        }
        400 => {
            let e: Option<ErrorBody> = serde_json::from_slice(&reply.body).ok();
            let unknown_key = e.is_some_and(|e| e.message.eq_ignore_ascii_case(KEY_NOT_FOUND));
            if unknown_key {
                Ok(Outcome::Mismatched)
            } else {
                bail!("HTTP 400: {}", reply.body_excerpt())
            }
        }
        s => bail!("HTTP {s}: {}", reply.body_excerpt()),
    }
}

// ---------------------------------------------------------------------------
// Task and handle

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn run(
    config: TrafficConfig,
    state: Arc<Mutex<State>>,
    mut stop: watch::Receiver<bool>,
    progress: watch::Sender<u64>,
) {
    let interval = config.interval;
    let failure_pause = config.failure_pause;
    let mut runner = Runner::new(config);
    loop {
        let started = Instant::now();
        // A pair cut short by stop is not counted.
        let result = tokio::select! {
            r = runner.run_pair() => r,
            _ = stop.wait_for(|s| *s) => break,
        };
        let failed = result.outcome == Outcome::Failed;
        if result.outcome != Outcome::Matched {
            debug!(outcome = ?result.outcome, detail = ?result.detail, "pair");
        }
        lock(&state).record(started, Instant::now(), result);
        progress.send_modify(|n| *n += 1);
        let mut until = None;
        if failed {
            until = Some(Instant::now() + failure_pause);
        }
        if let Some(i) = interval {
            until = until.max(Some(started + i));
        }
        if let Some(until) = until {
            tokio::select! {
                _ = tokio::time::sleep_until(until.into()) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
    }
}

/// Key pairs running on a tokio task; dropping it stops the task.
pub struct Traffic {
    state: Arc<Mutex<State>>,
    stop_tx: watch::Sender<bool>,
    progress: watch::Receiver<u64>,
    task: Option<JoinHandle<()>>,
}

impl Traffic {
    /// Starts running pairs on a tokio task (call inside a runtime).
    pub fn start(config: TrafficConfig) -> Traffic {
        let state = Arc::new(Mutex::new(State::new(config.event_log_capacity)));
        let (stop_tx, stop_rx) = watch::channel(false);
        let (progress_tx, progress_rx) = watch::channel(0u64);
        info!(alice = %config.alice, bob = %config.bob, "key-pair traffic starting");
        let task = tokio::spawn(run(config, state.clone(), stop_rx, progress_tx));
        Traffic {
            state,
            stop_tx,
            progress: progress_rx,
            task: Some(task),
        }
    }

    /// The report so far (an open outage counts up to now).
    pub fn snapshot(&self) -> TrafficReport {
        lock(&self.state).report(Instant::now())
    }

    /// Stops after abandoning the pair in flight; returns the final report.
    pub async fn stop(mut self) -> TrafficReport {
        self.stop_tx.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.snapshot()
    }

    /// Stops, prints the final report, and asserts that no pair mismatched:
    /// S1 as the SAEs see it. Returns the report for further checks. For
    /// tests (it panics on a mismatch).
    pub async fn stop_and_assert_no_mismatch(self) -> TrafficReport {
        let report = self.stop().await;
        println!("{report}");
        assert_eq!(report.mismatched, 0, "mismatched key pairs: {report}");
        report
    }

    /// Waits until `pred` holds for the report (checked after every pair).
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&TrafficReport) -> bool,
    ) -> Result<TrafficReport> {
        let mut progress = self.progress.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            progress.borrow_and_update();
            let report = self.snapshot();
            if pred(&report) {
                return Ok(report);
            }
            match tokio::time::timeout_at(deadline, progress.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => bail!("the key-pair traffic stopped before {what}: {report}"),
                Err(_) => bail!(
                    "not {what} within {timeout:?}: {report}; last failure: {}",
                    report.last_failure.as_deref().unwrap_or("none")
                ),
            }
        }
    }

    /// Waits until `n` pairs in total have matched.
    pub async fn wait_for_matched(&self, n: u64, timeout: Duration) -> Result<TrafficReport> {
        self.wait_until(&format!("{n} matched pairs"), timeout, |r| r.matched >= n)
            .await
    }

    /// Waits until `n` more pairs than now have matched.
    pub async fn wait_for_more_matched(&self, n: u64, timeout: Duration) -> Result<TrafficReport> {
        let target = self.snapshot().matched + n;
        self.wait_until(&format!("{n} more matched pairs"), timeout, |r| {
            r.matched >= target
        })
        .await
    }

    /// Waits until `n` more pairs than now have failed.
    pub async fn wait_for_more_failed(&self, n: u64, timeout: Duration) -> Result<TrafficReport> {
        let target = self.snapshot().failed + n;
        self.wait_until(&format!("{n} more failed pairs"), timeout, |r| {
            r.failed >= target
        })
        .await
    }

    /// The most recent pairs (up to `event_log_capacity`), oldest first.
    pub fn events(&self) -> Vec<PairEvent> {
        lock(&self.state).events.iter().cloned().collect()
    }

    /// A reader of finished pairs that outlives the handle's borrow, for
    /// recorders that stream every pair elsewhere while the pairs run.
    pub fn feed(&self) -> PairFeed {
        PairFeed {
            state: self.state.clone(),
        }
    }

    /// When the first pair that started at or after `after` and was served
    /// by `setup` matched (its end), from the event log.
    pub fn first_matched_by_after(&self, setup: Setup, after: Instant) -> Option<Instant> {
        lock(&self.state)
            .events
            .iter()
            .find(|e| {
                e.started >= after && e.outcome == Outcome::Matched && e.alice_setup == Some(setup)
            })
            .map(|e| e.finished)
    }

    /// Waits for [`Self::first_matched_by_after`] to exist.
    pub async fn wait_for_matched_by(
        &self,
        setup: Setup,
        after: Instant,
        timeout: Duration,
    ) -> Result<Instant> {
        let mut found = None;
        self.wait_until(&format!("a pair matched on {setup}"), timeout, |_| {
            found = self.first_matched_by_after(setup, after);
            found.is_some()
        })
        .await?;
        found.context("matched pair vanished from the event log")
    }
}

/// Reads the pairs a running (or stopped) [`Traffic`] finished; see
/// [`Traffic::feed`].
#[derive(Clone)]
pub struct PairFeed {
    state: Arc<Mutex<State>>,
}

impl PairFeed {
    /// Pairs with `seq > after`, oldest first (only those still in the
    /// event log: poll more often than the log fills up).
    pub fn after(&self, after: u64) -> Vec<PairEvent> {
        let state = lock(&self.state);
        // Sequence numbers are consecutive, so the first wanted one is at a
        // known offset from the front.
        let first = state.events.front().map_or(0, |e| e.seq);
        let skip = after.saturating_add(1).saturating_sub(first) as usize;
        state.events.iter().skip(skip).cloned().collect()
    }

    /// The sequence number of the last pair finished so far (0: none).
    pub fn last_seq(&self) -> u64 {
        lock(&self.state).seq
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop_tx.send_replace(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderMap;

    fn pair(outcome: Outcome, setup: Option<Setup>) -> PairResult {
        PairResult {
            outcome,
            lbs: [None, None],
            alice_setup: setup,
            bob_setup: setup,
            detail: None,
        }
    }

    #[test]
    fn outages_run_from_first_failure_after_success_to_next_match() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut s = State::new(10);
        // Failures before the first match open no outage.
        s.record(ms(0), ms(1), pair(Outcome::Failed, None));
        s.record(ms(2), ms(3), pair(Outcome::Matched, Some(Setup::Hot)));
        s.record(ms(10), ms(11), pair(Outcome::Failed, None));
        s.record(ms(20), ms(21), pair(Outcome::Failed, None));
        s.record(ms(30), ms(31), pair(Outcome::Mismatched, Some(Setup::Warm)));
        s.record(ms(40), ms(42), pair(Outcome::Matched, Some(Setup::Warm)));
        s.record(ms(50), ms(51), pair(Outcome::Failed, None));
        let r = s.report(ms(100));
        assert_eq!((r.matched, r.mismatched, r.failed), (2, 1, 4));
        assert_eq!(
            r.outages,
            vec![Duration::from_millis(32), Duration::from_millis(50)]
        );
        assert!(r.outage_open);
        assert_eq!(r.longest_outage, Duration::from_millis(50));
        assert_eq!(r.matched_by[&Setup::Hot].count, 1);
        assert_eq!(r.matched_by[&Setup::Warm].first, ms(42));
        assert_eq!(r.served_by.alice[&Setup::Warm], 2);
        let line = r.to_string();
        assert!(
            line.starts_with(
                "pairs: matched=2 mismatched=1 failed=4 longest_outage=50.0ms outages=2"
            ),
            "{line}"
        );
    }

    #[test]
    fn feed_returns_only_newer_pairs() {
        let t0 = Instant::now();
        let state = Arc::new(Mutex::new(State::new(3)));
        let feed = PairFeed {
            state: state.clone(),
        };
        assert!(feed.after(0).is_empty());
        for _ in 0..5 {
            lock(&state).record(t0, t0, pair(Outcome::Matched, Some(Setup::Hot)));
        }
        // The log keeps seq 3..=5.
        let seqs = |v: Vec<PairEvent>| v.iter().map(|e| e.seq).collect::<Vec<_>>();
        assert_eq!(seqs(feed.after(0)), vec![3, 4, 5]);
        assert_eq!(seqs(feed.after(3)), vec![4, 5]);
        assert!(feed.after(5).is_empty());
        assert_eq!(feed.last_seq(), 5);
    }

    #[test]
    fn event_log_is_bounded() {
        let t0 = Instant::now();
        let mut s = State::new(3);
        for i in 0..5 {
            s.record(t0, t0, pair(Outcome::Matched, Some(Setup::Hot)));
            assert!(s.events.len() <= 3, "{i}");
        }
        assert_eq!(s.events.front().map(|e| e.seq), Some(3));
    }

    fn reply(status: u16, body: serde_json::Value) -> HttpReply {
        HttpReply {
            status,
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_string()),
        }
    }

    #[test]
    fn dec_classification() {
        let key = vec![1u8, 2, 3, 4];
        let b64 = base64::engine::general_purpose::STANDARD.encode(&key);
        let same = reply(200, json!({"keys": [{"key_ID": "k", "key": b64}]}));
        assert_eq!(classify_dec(&same, "k", &key).ok(), Some(Outcome::Matched));
        let other = reply(200, json!({"keys": [{"key_ID": "k", "key": "AAAA"}]}));
        assert_eq!(
            classify_dec(&other, "k", &key).ok(),
            Some(Outcome::Mismatched)
        );
        let unknown = reply(
            400,
            json!({"message": "key not found", "details": [{"key_ID": "k"}]}),
        );
        assert_eq!(
            classify_dec(&unknown, "k", &key).ok(),
            Some(Outcome::Mismatched)
        );
        // Anything else is a failure, never a mismatch.
        for r in [
            reply(400, json!({"message": "unknown SAE ID", "details": []})),
            reply(503, json!({"message": "KME unavailable", "details": []})),
            reply(200, json!({"keys": []})),
            reply(200, json!({"keys": [{"key_ID": "other", "key": b64}]})),
            reply(400, json!("garbage")),
        ] {
            assert!(classify_dec(&r, "k", &key).is_err(), "{r:?}");
        }
    }
}
