//! SAE pairs as real applications run them: several pairs in parallel,
//! each `enc_keys` at Alice's LB, then the key_ID travels between the SAEs
//! for a gap (as over a real network), then `dec_keys` at Bob's LB. A
//! planned switch that blocks both ends at once strands every key in
//! transit: issued by the old setup at Alice, asked for at the new setup
//! at Bob. A handover (the issuing end blocks first, the receiving end
//! keeps the old setup for a grace) strands none.
//!
//! Like SAEs, a pair retries a request its LB refused (blocked during a
//! switch) until `give_up`; `dec_keys` goes over a connection opened after
//! the gap. Classification:
//! * **matched**: Bob returned the same key;
//! * **stranded**: Bob does not know the key, and answered from another
//!   setup than Alice's (a switch came between issue and fetch);
//! * **failed**: no answer within `give_up`, or Bob does not know a key of
//!   its own setup (a KME that lost it).
//!
//! Mismatches (two LBs on different setups at one instant) are the gapless
//! [`crate::traffic`] checker's job; run both.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use hyper::Method;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::http::HttpConn;
use crate::traffic::{classify_dec, parse_enc, Outcome};
use lockstep_core::Setup;

#[derive(Clone, Debug)]
pub struct TransitConfig {
    pub alice: SocketAddr,
    pub bob: SocketAddr,
    pub master_sae_id: String,
    pub slave_sae_id: String,
    /// SAE pairs running in parallel.
    pub pairs: usize,
    /// Time between a key's issue at Alice and its fetch at Bob.
    pub gap: Duration,
    /// How long an SAE keeps retrying a refused request before it gives up.
    pub give_up: Duration,
    /// Pause between a pair's retries, and between its pairs.
    pub pause: Duration,
    /// Limit for connecting and for each request.
    pub request_timeout: Duration,
}

impl TransitConfig {
    pub fn new(
        alice: SocketAddr,
        bob: SocketAddr,
        master_sae_id: impl Into<String>,
        slave_sae_id: impl Into<String>,
        pairs: usize,
        gap: Duration,
    ) -> TransitConfig {
        TransitConfig {
            alice,
            bob,
            master_sae_id: master_sae_id.into(),
            slave_sae_id: slave_sae_id.into(),
            pairs,
            gap,
            give_up: Duration::from_secs(8),
            pause: Duration::from_millis(10),
            request_timeout: Duration::from_secs(1),
        }
    }
}

/// One stranded key: when it was issued and fetched, by which setups.
#[derive(Clone, Debug)]
pub struct Stranded {
    pub issued: Instant,
    pub fetched: Instant,
    pub alice_setup: Option<Setup>,
    pub bob_setup: Option<Setup>,
}

#[derive(Clone, Debug, Default)]
pub struct TransitReport {
    pub matched: u64,
    pub stranded: u64,
    pub failed: u64,
    /// The stranded keys (up to the first 1,000).
    pub strands: Vec<Stranded>,
    pub last_failure: Option<String>,
}

impl std::fmt::Display for TransitReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SAE pairs with a transit gap: matched={} stranded={} failed={}",
            self.matched, self.stranded, self.failed
        )?;
        if let Some(e) = &self.last_failure {
            write!(f, " last_failure={e:?}")?;
        }
        Ok(())
    }
}

/// SAE pairs running until stopped.
pub struct Transit {
    stop: watch::Sender<bool>,
    report: Arc<Mutex<TransitReport>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Transit {
    pub fn start(config: TransitConfig) -> Transit {
        let (stop, stop_rx) = watch::channel(false);
        let report = Arc::new(Mutex::new(TransitReport::default()));
        let tasks = (0..config.pairs)
            .map(|_| {
                let (config, stop, report) = (config.clone(), stop_rx.clone(), report.clone());
                tokio::spawn(async move { run_pairs(config, stop, report).await })
            })
            .collect();
        Transit {
            stop,
            report,
            tasks,
        }
    }

    pub fn snapshot(&self) -> TransitReport {
        self.report
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until at least `n` pairs have matched.
    pub async fn wait_for_matched(&self, n: u64, timeout: Duration) -> Result<TransitReport> {
        let start = Instant::now();
        loop {
            let r = self.snapshot();
            if r.matched >= n {
                return Ok(r);
            }
            if start.elapsed() > timeout {
                anyhow::bail!("fewer than {n} SAE pairs matched within {timeout:?}: {r}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops every pair (each finishes the pair it is in) and reports.
    pub async fn stop(self) -> TransitReport {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let r = self
            .report
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        r
    }
}

enum PairEnd {
    Matched,
    Stranded(Stranded),
    Failed(String),
}

async fn run_pairs(
    config: TransitConfig,
    stop: watch::Receiver<bool>,
    report: Arc<Mutex<TransitReport>>,
) {
    let enc_path = format!("/api/v1/keys/{}/enc_keys", config.slave_sae_id);
    let dec_path = format!("/api/v1/keys/{}/dec_keys", config.master_sae_id);
    let enc_body = Bytes::from(json!({"number": 1, "size": 256}).to_string());
    while !*stop.borrow() {
        let end = one_pair(&config, &enc_path, &dec_path, &enc_body, &stop).await;
        let Some(end) = end else { return };
        record(&report, end);
        tokio::time::sleep(config.pause).await;
    }
}

fn record(report: &Mutex<TransitReport>, end: PairEnd) {
    let mut r = report.lock().unwrap_or_else(PoisonError::into_inner);
    match end {
        PairEnd::Matched => r.matched += 1,
        PairEnd::Stranded(s) => {
            r.stranded += 1;
            if r.strands.len() < 1000 {
                r.strands.push(s);
            }
        }
        PairEnd::Failed(e) => {
            r.failed += 1;
            r.last_failure = Some(e);
        }
    }
}

/// One request on a fresh connection, retried while the LB refuses it
/// (as an SAE retries through a switch), until `deadline`.
async fn request_until(
    config: &TransitConfig,
    addr: SocketAddr,
    path: &str,
    body: &Bytes,
    deadline: Instant,
) -> Result<crate::http::HttpReply, String> {
    let mut last = String::new();
    while Instant::now() < deadline {
        let attempt = async {
            let mut conn = HttpConn::connect(addr, config.request_timeout).await?;
            conn.request(
                Method::POST,
                path,
                Some(body.clone()),
                config.request_timeout,
            )
            .await
        };
        match attempt.await {
            // A KME's 503 (or an LB's) is a refusal worth retrying too.
            Ok(reply) if reply.status != 503 => return Ok(reply),
            Ok(reply) => last = format!("HTTP {}", reply.status),
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(config.pause).await;
    }
    Err(format!("gave up after {:?}: {last}", config.give_up))
}

/// `None` once stopped before a key was issued.
async fn one_pair(
    config: &TransitConfig,
    enc_path: &str,
    dec_path: &str,
    enc_body: &Bytes,
    stop: &watch::Receiver<bool>,
) -> Option<PairEnd> {
    if *stop.borrow() {
        return None;
    }
    let deadline = Instant::now() + config.give_up;
    let enc = match request_until(config, config.alice, enc_path, enc_body, deadline).await {
        Ok(reply) => reply,
        Err(e) => return Some(PairEnd::Failed(format!("alice enc_keys: {e}"))),
    };
    let issued = Instant::now();
    let alice_setup = enc.setup();
    let (key_id, key) = match parse_enc(&enc) {
        Ok(k) => k,
        Err(e) => return Some(PairEnd::Failed(format!("alice enc_keys: {e:#}"))),
    };
    // The key_ID travels from Alice's SAE to Bob's.
    tokio::time::sleep(config.gap).await;
    let dec_body = Bytes::from(json!({"key_IDs": [{"key_ID": key_id}]}).to_string());
    let deadline = Instant::now() + config.give_up;
    let dec = match request_until(config, config.bob, dec_path, &dec_body, deadline).await {
        Ok(reply) => reply,
        Err(e) => return Some(PairEnd::Failed(format!("bob dec_keys: {e}"))),
    };
    let bob_setup = dec.setup();
    Some(match classify_dec(&dec, &key_id, &key) {
        Ok(Outcome::Matched) => PairEnd::Matched,
        Ok(_) if alice_setup != bob_setup => PairEnd::Stranded(Stranded {
            issued,
            fetched: Instant::now(),
            alice_setup,
            bob_setup,
        }),
        Ok(_) => PairEnd::Failed(format!(
            "bob's {} does not know key_ID {key_id} it issued at alice",
            bob_setup.map_or("unknown setup", Setup::as_str)
        )),
        Err(e) => PairEnd::Failed(format!("bob dec_keys: {e:#}")),
    })
}
