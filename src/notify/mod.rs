//! Notifications: the leader tells webhooks (`[[notify.webhook]]`, a JSON
//! POST) and commands (`[[notify.command]]`, Patroni's callbacks: the JSON
//! on standard input) of every transition it makes: a switch begun (or an
//! automatic failover), complete or failed (the leader stepped down, or it
//! overran `admin.switch_timeout`), a request refused, the link paused or
//! resumed. Each member tells them itself when it enters and leaves
//! failsafe: etcd is unreachable then, and nothing here needs it.
//!
//! Nothing here can hold a switch up: [`Notifier::send`] only puts the
//! event on each receiver's bounded queue (dropping that queue's oldest
//! event when full, counted in `lockstep_notify_dropped_total`) and
//! returns; one task per receiver delivers, each attempt bounded by the
//! receiver's timeout, with retries and a doubling backoff.

use crate::config::{CommandConfig, NotifyConfig, WebhookConfig};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lockstep_core::Setup;
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tracing::{debug, info_span, warn, Instrument};

/// The CA bundle an `https://` webhook without `ca` is verified with.
pub(crate) const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// What happened. Text (`as_str`) only at the edge: the JSON's `event`,
/// the command's argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum EventKind {
    /// A switch's first route write (hold or drain) is in etcd: every LB
    /// is about to block and move. Manual switches, redecides and route
    /// re-establishment.
    SwitchBegun,
    /// Like `switch-begun`, decided by the failover policy (an automatic
    /// failover or failback).
    AutoFailover,
    /// Every live member serves the target.
    SwitchComplete,
    /// The leader lost its office or a write during a switch (the next
    /// leader finishes it: a `redecide` in the history), or the switch
    /// overran `admin.switch_timeout` (it may still complete). Once per
    /// switch.
    SwitchFailed,
    /// A manual request was refused or expired; nothing moved.
    RequestRefused,
    Paused,
    Resumed,
    /// This member serves on its peers' grants: etcd is unreachable.
    /// Sent by the member (`member`), not the leader.
    FailsafeEntered,
    /// This member is back on etcd's word, after `duration_ms` in
    /// failsafe. Sent by the member.
    FailsafeLeft,
}

impl EventKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventKind::SwitchBegun => "switch-begun",
            EventKind::AutoFailover => "auto-failover",
            EventKind::SwitchComplete => "switch-complete",
            EventKind::SwitchFailed => "switch-failed",
            EventKind::RequestRefused => "request-refused",
            EventKind::Paused => "paused",
            EventKind::Resumed => "resumed",
            EventKind::FailsafeEntered => "failsafe-entered",
            EventKind::FailsafeLeft => "failsafe-left",
        }
    }
}

/// One notification, as the JSON body receivers get.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Event {
    pub(crate) event: EventKind,
    pub(crate) link: String,
    /// The leader's member id, and its fencing token (empty and 0 in a
    /// member's own event: failsafe).
    pub(crate) leader: String,
    pub(crate) token: i64,
    /// The member an event is about, when a member sends it (failsafe).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) member: Option<String>,
    /// When the leader saw it, RFC 3339.
    pub(crate) at: String,
    /// The switch's epoch (the route's for pause and resume).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) epoch: Option<u64>,
    /// The history kind: switchover, failover, auto-failover, ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) from: Option<Setup>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) to: Option<Setup>,
    pub(crate) reason: String,
    pub(crate) requested_by: String,
    /// What happened, in words.
    pub(crate) message: String,
    /// For `switch-complete`: the outage (drain to serve) and the whole
    /// switch, and members fenced instead of acking.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) drain_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) total_ms: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) fenced_members: Vec<String>,
    /// For `failsafe-left`: how long the member served on grants.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) duration_ms: Option<u64>,
}

impl Event {
    /// An event of `kind` with the fields every event has; the rest empty.
    pub(crate) fn new(kind: EventKind, link: &str, leader: &str, token: i64) -> Event {
        Event {
            event: kind,
            link: link.into(),
            leader: leader.into(),
            token,
            member: None,
            at: crate::sidecar::leader::now_rfc3339(),
            epoch: None,
            kind: None,
            from: None,
            to: None,
            reason: String::new(),
            requested_by: String::new(),
            message: String::new(),
            drain_ms: None,
            total_ms: None,
            fenced_members: Vec::new(),
            duration_ms: None,
        }
    }

    /// A member's own event (failsafe): no leader, no token.
    pub(crate) fn of_member(kind: EventKind, link: &str, member: &str) -> Event {
        let mut e = Event::new(kind, link, "", 0);
        e.member = Some(member.into());
        e
    }
}

/// Counters in `/metrics` (`docs/metrics.md`).
#[derive(Clone, Debug, Default)]
pub(crate) struct Counters {
    /// Deliveries a receiver accepted.
    pub(crate) delivered: Counter,
    /// Events a receiver did not accept after every retry.
    pub(crate) failed: Counter,
    /// Events dropped from a full queue (the oldest first).
    pub(crate) dropped: Counter,
}

/// One receiver's bounded queue: drop-oldest, so the newest transitions
/// (the ones that matter at 3 a.m.) get through.
#[derive(Debug)]
struct Queue {
    items: Mutex<VecDeque<Event>>,
    cap: usize,
    wake: tokio::sync::Notify,
}

impl Queue {
    fn new(cap: usize) -> Queue {
        Queue {
            items: Mutex::new(VecDeque::new()),
            cap: cap.max(1),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// Adds `event`; returns how many old events were dropped for it.
    fn push(&self, event: Event) -> u64 {
        let mut dropped = 0;
        if let Ok(mut items) = self.items.lock() {
            while items.len() >= self.cap {
                items.pop_front();
                dropped += 1;
            }
            items.push_back(event);
        }
        self.wake.notify_one();
        dropped
    }

    fn pop(&self) -> Option<Event> {
        self.items.lock().ok()?.pop_front()
    }

    async fn next(&self) -> Event {
        loop {
            if let Some(e) = self.pop() {
                return e;
            }
            self.wake.notified().await;
        }
    }
}

/// Hands events to the receivers' delivery tasks; cheap, never blocks.
#[derive(Debug, Default)]
pub(crate) struct Notifier {
    queues: Vec<Arc<Queue>>,
    counters: Counters,
}

/// Where one receiver's events go.
enum Receiver {
    Webhook {
        url: hyper::Uri,
        timeout: Duration,
        client: Box<WebhookClient>,
    },
    Command(CommandConfig),
}

type WebhookClient =
    hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

impl Receiver {
    fn name(&self) -> String {
        match self {
            Receiver::Webhook { url, .. } => format!("webhook {url}"),
            Receiver::Command(c) => format!("command {:?}", c.argv.first().map_or("", |s| s)),
        }
    }
}

/// Checks that every `https://` webhook has a usable CA bundle (the
/// config's validation).
pub(crate) fn check_tls(config: &NotifyConfig) -> Result<(), String> {
    for w in &config.webhook {
        webhook_client(w)?;
    }
    Ok(())
}

fn webhook_client(w: &WebhookConfig) -> Result<WebhookClient, String> {
    let mut roots = rustls::RootCertStore::empty();
    if w.url.starts_with("https://") {
        let path =
            w.ca.clone()
                .unwrap_or_else(|| std::path::PathBuf::from(SYSTEM_CA_BUNDLE));
        let certs = crate::probe::load_pem_certs(&path).map_err(|e| {
            format!(
                "{e} (the CA bundle for webhook {}; set notify.webhook.ca)",
                w.url
            )
        })?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(format!(
                "{}: none of its certificates is a usable CA certificate; set notify.webhook.ca for {}",
                path.display(),
                w.url
            ));
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS set-up failed: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(w.timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector))
}

impl Notifier {
    /// Starts one delivery task per configured receiver (none configured:
    /// `send` does nothing). `link` and `member` name the tasks' spans.
    pub(crate) fn start(
        config: &NotifyConfig,
        counters: Counters,
        link: &str,
        member: &str,
    ) -> Notifier {
        let mut receivers = Vec::new();
        for w in &config.webhook {
            let url = match w.url.parse::<hyper::Uri>() {
                Ok(u) => u,
                Err(e) => {
                    warn!(url = %w.url, error = %e, "webhook ignored: bad URL (the config check should have refused it)");
                    continue;
                }
            };
            match webhook_client(w) {
                Ok(client) => receivers.push(Receiver::Webhook {
                    url,
                    timeout: w.timeout,
                    client: Box::new(client),
                }),
                Err(e) => warn!(url = %w.url, error = %e, "webhook ignored"),
            }
        }
        receivers.extend(config.command.iter().cloned().map(Receiver::Command));
        let mut queues = Vec::new();
        for receiver in receivers {
            let queue = Arc::new(Queue::new(config.queue));
            queues.push(queue.clone());
            let span = info_span!("notify", %link, %member, receiver = %receiver.name());
            let counters = counters.clone();
            let (retries, backoff) = (config.retries, config.backoff);
            tokio::spawn(
                async move {
                    loop {
                        let event = queue.next().await;
                        deliver_with_retries(&receiver, &event, retries, backoff, &counters).await;
                    }
                }
                .instrument(span),
            );
        }
        Notifier { queues, counters }
    }

    /// Queues `event` for every receiver and returns at once.
    pub(crate) fn send(&self, event: Event) {
        for q in &self.queues {
            let dropped = q.push(event.clone());
            if dropped > 0 {
                self.counters.dropped.inc_by(dropped);
                warn!(
                    dropped,
                    "a notification queue was full: dropped its oldest events (notify.queue)"
                );
            }
        }
    }
}

async fn deliver_with_retries(
    receiver: &Receiver,
    event: &Event,
    retries: u32,
    backoff: Duration,
    counters: &Counters,
) {
    let body = match serde_json::to_vec(event) {
        Ok(b) => Bytes::from(b),
        Err(e) => {
            warn!(error = %e, "cannot encode the notification");
            counters.failed.inc();
            return;
        }
    };
    let mut wait = backoff;
    for attempt in 0..=retries {
        match deliver(receiver, event, body.clone()).await {
            Ok(()) => {
                debug!(
                    event = event.event.as_str(),
                    attempt, "notification delivered"
                );
                counters.delivered.inc();
                return;
            }
            Err(why) if attempt < retries => {
                debug!(event = event.event.as_str(), attempt, %why, "notification failed; retrying");
                tokio::time::sleep(wait).await;
                wait = wait.saturating_mul(2);
            }
            Err(why) => {
                warn!(event = event.event.as_str(), attempts = attempt + 1, %why, "notification not delivered; check the receiver (notify.webhook / notify.command)");
                counters.failed.inc();
            }
        }
    }
}

async fn deliver(receiver: &Receiver, event: &Event, body: Bytes) -> Result<(), String> {
    match receiver {
        Receiver::Webhook {
            url,
            timeout,
            client,
        } => post(client, url, *timeout, body).await,
        Receiver::Command(c) => run_command(c, event, body).await,
    }
}

async fn post(
    client: &WebhookClient,
    url: &hyper::Uri,
    timeout: Duration,
    body: Bytes,
) -> Result<(), String> {
    let req = hyper::Request::post(url.clone())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("lockstep/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(body))
        .map_err(|e| format!("cannot build the POST to {url}: {e}"))?;
    let attempt = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("POST {url}: {}", crate::probe::error_chain(&e)))?;
        let status = resp.status();
        // Read (bounded) and drop the answer, so the connection is reused.
        let _ = http_body_util::Limited::new(resp.into_body(), crate::limits::MAX_WEBHOOK_ANSWER)
            .collect()
            .await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("POST {url}: HTTP {status}"))
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("POST {url}: no answer within {timeout:?}")))
}

/// Runs the command with the event's name and link appended, the JSON on
/// standard input and the main fields in `LOCKSTEP_*` variables; killed
/// past its timeout.
async fn run_command(c: &CommandConfig, event: &Event, body: Bytes) -> Result<(), String> {
    let Some((program, args)) = c.argv.split_first() else {
        return Err("notify.command.argv is empty".into());
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .arg(event.event.as_str())
        .arg(&event.link)
        .env("LOCKSTEP_EVENT", event.event.as_str())
        .env("LOCKSTEP_LINK", &event.link)
        .env("LOCKSTEP_LEADER", &event.leader)
        .env("LOCKSTEP_MEMBER", event.member.as_deref().unwrap_or(""))
        .env(
            "LOCKSTEP_EPOCH",
            event.epoch.map_or(String::new(), |e| e.to_string()),
        )
        .env("LOCKSTEP_KIND", event.kind.clone().unwrap_or_default())
        .env("LOCKSTEP_FROM", event.from.map_or("", Setup::as_str))
        .env("LOCKSTEP_TO", event.to.map_or("", Setup::as_str))
        .env("LOCKSTEP_REASON", &event.reason)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let timeout = c.timeout;
    let run = async {
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {program:?}: {e}; check notify.command.argv"))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A command that does not read its input is fine.
            let _ = stdin.write_all(&body).await;
            drop(stdin);
        }
        let status = child
            .wait()
            .await
            .map_err(|e| format!("waiting for {program:?}: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("{program:?} exited with {status}"))
        }
    };
    tokio::time::timeout(timeout, run)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "{program:?} did not finish within {timeout:?}; killed"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u64) -> Event {
        let mut e = Event::new(EventKind::SwitchBegun, "qkd-1", "alice-0", 7);
        e.epoch = Some(n);
        e
    }

    #[test]
    fn a_full_queue_drops_its_oldest_events() {
        let q = Queue::new(2);
        assert_eq!(q.push(event(1)), 0);
        assert_eq!(q.push(event(2)), 0);
        assert_eq!(q.push(event(3)), 1);
        assert_eq!(q.pop().and_then(|e| e.epoch), Some(2));
        assert_eq!(q.pop().and_then(|e| e.epoch), Some(3));
        assert!(q.pop().is_none());
    }

    #[test]
    fn events_serialize_with_human_names() {
        let mut e = event(4);
        e.from = Some(Setup::Hot);
        e.to = Some(Setup::Warm);
        e.kind = Some("switchover".into());
        let v: serde_json::Value =
            serde_json::from_slice(&serde_json::to_vec(&e).expect("json")).expect("parse");
        assert_eq!(v["event"], "switch-begun");
        assert_eq!(v["from"], "hot");
        assert_eq!(v["to"], "warm");
        assert_eq!(v["epoch"], 4);
        assert!(v.get("drain_ms").is_none());
    }

    fn config(command: Vec<CommandConfig>, webhook: Vec<WebhookConfig>) -> NotifyConfig {
        NotifyConfig {
            webhook,
            command,
            retries: 2,
            backoff: Duration::from_millis(20),
            queue: 8,
        }
    }

    #[tokio::test]
    async fn a_command_gets_the_event_on_stdin_and_as_arguments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let script = format!("cat > {0}.json; echo \"$@\" > {0}.args", out.display());
        let counters = Counters::default();
        let n = Notifier::start(
            &config(
                vec![CommandConfig {
                    argv: vec!["sh".into(), "-c".into(), script, "sh".into()],
                    timeout: Duration::from_secs(5),
                }],
                vec![],
            ),
            counters.clone(),
            "qkd-1",
            "alice-0",
        );
        n.send(event(9));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while counters.delivered.get() == 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(counters.delivered.get(), 1);
        let json = std::fs::read_to_string(dir.path().join("out.json")).expect("json");
        let v: serde_json::Value = serde_json::from_str(&json).expect("parse");
        assert_eq!(v["epoch"], 9);
        let args = std::fs::read_to_string(dir.path().join("out.args")).expect("args");
        assert_eq!(args.trim(), "switch-begun qkd-1");
    }

    /// A webhook on loopback that answers HTTP 500 to its first `fail`
    /// POSTs and 200 after; the instants of the POSTs it got.
    async fn webhook_failing_first(
        fail: usize,
    ) -> (std::net::SocketAddr, Arc<Mutex<Vec<std::time::Instant>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hits: Arc<Mutex<Vec<std::time::Instant>>> = Arc::default();
        let h = hits.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let h = h.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        let n = {
                            let mut hits = h.lock().expect("lock");
                            hits.push(std::time::Instant::now());
                            hits.len()
                        };
                        async move {
                            let mut r = hyper::Response::new(Full::new(Bytes::from("answer")));
                            if n <= fail {
                                *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                            }
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (addr, hits)
    }

    fn webhook_config(addr: std::net::SocketAddr) -> WebhookConfig {
        WebhookConfig {
            url: format!("http://{addr}/hook"),
            timeout: Duration::from_secs(2),
            ca: None,
        }
    }

    #[tokio::test]
    async fn a_webhook_that_fails_twice_gets_the_event_on_the_third_attempt_after_doubling_waits() {
        let (addr, hits) = webhook_failing_first(2).await;
        let counters = Counters::default();
        let backoff = Duration::from_millis(150);
        let n = Notifier::start(
            &NotifyConfig {
                backoff,
                ..config(vec![], vec![webhook_config(addr)])
            },
            counters.clone(),
            "qkd-1",
            "alice-0",
        );
        n.send(event(5));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while counters.delivered.get() == 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(counters.delivered.get(), 1, "delivered on a retry");
        assert_eq!(
            counters.failed.get(),
            0,
            "a retry that succeeds is no failure"
        );
        let hits = hits.lock().expect("lock").clone();
        assert_eq!(
            hits.len(),
            3,
            "two failed attempts, then the one that succeeded"
        );
        // The backoff, then twice it.
        let first = hits[1].duration_since(hits[0]);
        let second = hits[2].duration_since(hits[1]);
        assert!(first >= backoff, "first retry after {first:?}");
        assert!(second >= backoff * 2, "second retry after {second:?}");
        // Nothing more is sent once it was accepted.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(counters.delivered.get(), 1);
    }

    #[tokio::test]
    async fn a_failing_webhook_is_retried_then_counted_failed_and_never_blocks_send() {
        // Answers 500 to every POST.
        let (addr, hits) = webhook_failing_first(usize::MAX).await;
        let counters = Counters::default();
        let n = Notifier::start(
            &config(vec![], vec![webhook_config(addr)]),
            counters.clone(),
            "qkd-1",
            "alice-0",
        );
        let started = std::time::Instant::now();
        for i in 0..20 {
            n.send(event(i));
        }
        assert!(started.elapsed() < Duration::from_millis(50));
        // 20 events into a queue of 8 while the first is being delivered.
        assert!(counters.dropped.get() >= 11, "{}", counters.dropped.get());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while counters.failed.get() == 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(counters.failed.get() >= 1);
        // One attempt and two retries for the first event.
        assert!(hits.lock().expect("lock").len() >= 3);
    }

    #[test]
    fn a_failsafe_event_names_its_member_and_no_leader() {
        let mut e = Event::of_member(EventKind::FailsafeLeft, "qkd-1", "bob-0");
        e.duration_ms = Some(12_345);
        let v = serde_json::to_value(&e).expect("json");
        assert_eq!(v["event"], "failsafe-left");
        assert_eq!(v["member"], "bob-0");
        assert_eq!(v["leader"], "");
        assert_eq!(v["duration_ms"], 12_345);
        let v = serde_json::to_value(event(1)).expect("json");
        assert!(v.get("member").is_none() && v.get("duration_ms").is_none());
    }
}
