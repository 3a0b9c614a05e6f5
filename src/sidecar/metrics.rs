//! Prometheus metrics, served at `/metrics` in the OpenMetrics text format.
//! Every series carries the constant labels `link` and `member`. The list,
//! with meanings: `docs/metrics.md`.

use super::Clock;
use crate::config::Config;
use lockstep_core::leader::HistoryRecord;
use lockstep_core::member::MemberView;
use lockstep_core::{Applied, LbTarget, Phase, Setup};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `/metrics`' content type.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Histogram buckets, in seconds: 5 ms … 30 s (`admin.switch_timeout`'s
/// default, which the LockstepSwitchSlow alert reads off the 30 s bucket).
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SetupLabel {
    setup: String,
}

impl SetupLabel {
    fn of(setup: Setup) -> SetupLabel {
        SetupLabel {
            setup: setup.as_str().into(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabel {
    step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    /// Cargo features compiled in (`failpoints`, `mutations`: test builds
    /// only), or `none`.
    features: String,
    /// `release` or `debug`.
    profile: String,
}

impl BuildLabels {
    fn this_build() -> BuildLabels {
        let mut features = Vec::new();
        if cfg!(feature = "failpoints") {
            features.push("failpoints");
        }
        if cfg!(feature = "mutations") {
            features.push("mutations");
        }
        BuildLabels {
            version: env!("CARGO_PKG_VERSION").into(),
            features: if features.is_empty() {
                "none".into()
            } else {
                features.join(",")
            },
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
            .into(),
        }
    }
}

fn step_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// A switch this member leads, from its drain write on.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    hold_at: Option<Instant>,
    drain_at: Option<Instant>,
    serve_at: Option<Instant>,
    /// Already counted in `switch_failures` (it outlived its timeout).
    failed: bool,
}

impl InFlight {
    /// Not complete `timeout` after its first drain (or serve) write: the
    /// hold is the planned grace and does not count. The leader's
    /// `switch-failed` notification uses the same start.
    fn overdue(&self, now: Instant, timeout: Duration) -> bool {
        self.drain_at
            .or(self.serve_at)
            .is_some_and(|t| now.saturating_duration_since(t) > timeout)
    }
}

/// No acknowledged keep-alive yet.
const NO_ACK: u64 = u64::MAX;

pub(crate) struct Metrics {
    registry: Registry,
    clock: Clock,
    /// `lease_ttl − margin`: ack send time = `lease_fresh_until` − this.
    lease_fresh_budget: Duration,
    /// A switch not complete this long after its drain write has failed.
    switch_timeout: Duration,
    epoch: Gauge,
    /// 1 for the setup this member's LB was last confirmed to route to.
    lb_routes: Family<SetupLabel, Gauge>,
    fenced: Gauge,
    /// 1 while etcd's route is below what this member or the link applied.
    route_behind: Gauge,
    leader: Gauge,
    switches: Counter,
    switch_seconds: Histogram,
    drain_seconds: Histogram,
    /// 1 when the setup is healthy as this member probes it.
    setup_healthy: Family<SetupLabel, Gauge>,
    no_healthy_setup: Gauge,
    paused: Gauge,
    failsafe: Gauge,
    lease_age: Gauge<f64, AtomicU64>,
    /// Send time (clock millis) of the newest acknowledged keep-alive.
    last_ack_ms: AtomicU64,
    probe_errors: Family<SetupLabel, Counter>,
    /// Mirrors the store's count of failed requests at each scrape.
    etcd_errors: Counter,
    kme_stored_keys: Family<SetupLabel, Gauge>,
    switch_steps: Family<StepLabel, Histogram, fn() -> Histogram>,
    switch_failures: Counter,
    /// Seconds the receiving end stayed on the old setup for handovers
    /// (the grace of every completed planned switch with a hold).
    grace_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    in_flight: Mutex<BTreeMap<u64, InFlight>>,
    /// Notifications delivered, given up and dropped (`notify`).
    notify: crate::notify::Counters,
}

impl Metrics {
    pub(crate) fn new(config: &Config, clock: Clock) -> Metrics {
        let labels = [
            ("link".into(), config.link.clone().into()),
            ("member".into(), config.member_id.clone().into()),
        ];
        let mut registry = Registry::with_prefix_and_labels("lockstep", labels.into_iter());
        let m = Metrics {
            registry: Registry::default(),
            clock,
            lease_fresh_budget: config.lease_fresh_budget(),
            switch_timeout: config.admin.switch_timeout,
            epoch: Gauge::default(),
            lb_routes: Family::default(),
            fenced: Gauge::default(),
            route_behind: Gauge::default(),
            leader: Gauge::default(),
            switches: Counter::default(),
            switch_seconds: Histogram::new(BUCKETS),
            drain_seconds: Histogram::new(BUCKETS),
            setup_healthy: Family::default(),
            no_healthy_setup: Gauge::default(),
            paused: Gauge::default(),
            failsafe: Gauge::default(),
            lease_age: Gauge::default(),
            last_ack_ms: AtomicU64::new(NO_ACK),
            probe_errors: Family::default(),
            etcd_errors: Counter::default(),
            kme_stored_keys: Family::default(),
            switch_steps: Family::new_with_constructor(step_histogram),
            switch_failures: Counter::default(),
            grace_seconds: Counter::default(),
            in_flight: Mutex::new(BTreeMap::new()),
            notify: crate::notify::Counters::default(),
        };
        let r = &mut registry;
        r.register(
            "applied_epoch",
            "Epoch this member last applied",
            m.epoch.clone(),
        );
        r.register(
            "lb_routes",
            "1 for the setup the LB was last seen routing to (setup=\"blocked\" when blocked)",
            m.lb_routes.clone(),
        );
        r.register(
            "fenced",
            "1 while this member has fenced itself (lease not fresh)",
            m.fenced.clone(),
        );
        r.register(
            "route_behind",
            "1 while etcd's route is below what this link applied (lost or rolled back): the member stays blocked until the leader re-establishes it",
            m.route_behind.clone(),
        );
        r.register(
            "is_leader",
            "1 while this member leads its link",
            m.leader.clone(),
        );
        r.register(
            "switches",
            "Switches completed while this member led",
            m.switches.clone(),
        );
        r.register(
            "switch_seconds",
            "From switch start to every member serving",
            m.switch_seconds.clone(),
        );
        r.register(
            "drain_seconds",
            "From drain write to serve write (the outage)",
            m.drain_seconds.clone(),
        );
        r.register(
            "switch_step_seconds",
            "Steps of a switch this member led: hold (hold write to drain write: the issuing end's extra block, grace included), drain (drain write to every member blocked), serve (serve write to every member serving)",
            m.switch_steps.clone(),
        );
        r.register(
            "handover_grace_seconds",
            "Seconds the receiving end stayed on the old setup during handovers of switches this member led",
            m.grace_seconds.clone(),
        );
        r.register(
            "switch_failures",
            "Switches this member led that did not complete within admin.switch_timeout, or that it gave up (stepped down) midway",
            m.switch_failures.clone(),
        );
        r.register(
            "setup_healthy",
            "1 when the setup is healthy as this member probes it",
            m.setup_healthy.clone(),
        );
        r.register(
            "no_healthy_setup",
            "1 while the leader sees both setups unhealthy (nothing to fail over to)",
            m.no_healthy_setup.clone(),
        );
        r.register(
            "paused",
            "1 while the link is paused, as its leader sees it (0 on other members)",
            m.paused.clone(),
        );
        r.register(
            "failsafe",
            "1 while this member serves on its peers' grants because etcd is unreachable (failsafe); nothing switches meanwhile",
            m.failsafe.clone(),
        );
        r.register(
            "lease_age_seconds",
            "Time since the send time of this member's last acknowledged keep-alive (since start before the first); it fences at lease_ttl - margin",
            m.lease_age.clone(),
        );
        r.register(
            "probe_errors",
            "Failed KME status probes (no answer, TLS, non-200, bad body)",
            m.probe_errors.clone(),
        );
        r.register(
            "etcd_request_errors",
            "etcd requests that failed (unary requests after their retries, keep-alives, broken watches)",
            m.etcd_errors.clone(),
        );
        r.register(
            "kme_stored_keys",
            "stored_key_count of the KME's ETSI 014 status at this member's end (absent while its probe fails or the KME omits it)",
            m.kme_stored_keys.clone(),
        );
        r.register(
            "notify_delivered",
            "Notifications (webhook POSTs, command runs) a receiver accepted",
            m.notify.delivered.clone(),
        );
        r.register(
            "notify_failed",
            "Notifications a receiver did not accept after every retry (notify.retries)",
            m.notify.failed.clone(),
        );
        r.register(
            "notify_dropped",
            "Notifications dropped, oldest first, from a receiver's full queue (notify.queue)",
            m.notify.dropped.clone(),
        );
        r.register(
            "build",
            "The sidecar's version and build",
            Info::new(BuildLabels::this_build()),
        );
        // Series that exist from the start, so rates and absences mean
        // something before the first event.
        for step in ["drain", "serve"] {
            let _ = m.step(step);
        }
        for (setup, url) in [
            (Setup::Hot, &config.probe.hot),
            (Setup::Warm, &config.probe.warm),
        ] {
            if url.is_some() {
                let _ = m.probe_errors.get_or_create(&SetupLabel::of(setup));
            }
        }
        Metrics { registry, ..m }
    }

    /// The notification counters, for the notifier's tasks.
    pub(crate) fn notify_counters(&self) -> crate::notify::Counters {
        self.notify.clone()
    }

    pub(crate) fn set_no_healthy_setup(&self, on: bool) {
        self.no_healthy_setup.set(on as i64);
    }

    /// The link's pause as the leader sees it.
    pub(crate) fn set_failsafe(&self, on: bool) {
        self.failsafe.set(on as i64);
    }

    pub(crate) fn set_paused(&self, on: bool) {
        self.paused.set(on as i64);
    }

    pub(crate) fn applied(&self, a: Applied) {
        self.epoch.set(a.epoch as i64);
        if a.phase == Phase::Serve {
            self.lb_observed(LbTarget::Serve(a.setup));
        }
    }

    pub(crate) fn lb_observed(&self, t: LbTarget) {
        for s in ["hot", "warm", "blocked"] {
            let on = match t {
                LbTarget::Blocked => s == "blocked",
                LbTarget::Serve(x) => s == x.as_str(),
            };
            self.lb_routes
                .get_or_create(&SetupLabel { setup: s.into() })
                .set(on as i64);
        }
    }

    pub(crate) fn member_view(&self, v: &MemberView) {
        self.fenced.set(v.fenced as i64);
        self.route_behind.set(v.behind.is_some() as i64);
        if let Some(until) = v.lease_fresh_until {
            let acked = until
                .as_millis()
                .saturating_sub(self.lease_fresh_budget.as_millis() as u64);
            // Newest ack wins; NO_ACK is larger than any time, so replace it.
            let _ = self
                .last_ack_ms
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |old| {
                    (old == NO_ACK || acked > old).then_some(acked)
                });
        }
    }

    /// Leadership starts or ends. Ending it zeroes what only the leader
    /// reports and counts the switches it leaves unfinished as failed.
    pub(crate) fn set_leader(&self, on: bool) {
        self.leader.set(on as i64);
        if !on {
            self.paused.set(0);
            self.no_healthy_setup.set(0);
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            let abandoned = in_flight.values().filter(|s| !s.failed).count();
            self.switch_failures.inc_by(abandoned as u64);
            in_flight.clear();
        }
    }

    /// The leader starts writing the route of `epoch` in `phase`.
    pub(crate) fn route_write_started(&self, epoch: u64, phase: Phase) {
        self.route_write_started_at(epoch, phase, Instant::now());
    }

    fn route_write_started_at(&self, epoch: u64, phase: Phase, now: Instant) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let s = in_flight.entry(epoch).or_insert(InFlight {
            hold_at: None,
            drain_at: None,
            serve_at: None,
            failed: false,
        });
        match phase {
            Phase::Hold => s.hold_at = s.hold_at.or(Some(now)),
            Phase::Drain => s.drain_at = s.drain_at.or(Some(now)),
            Phase::Serve => s.serve_at = s.serve_at.or(Some(now)),
        }
    }

    pub(crate) fn switch_completed(&self, h: &HistoryRecord) {
        self.switch_completed_at(h, Instant::now());
    }

    fn switch_completed_at(&self, h: &HistoryRecord, now: Instant) {
        self.switches.inc();
        self.switch_seconds.observe(h.total_ms as f64 / 1000.0);
        self.drain_seconds.observe(h.drain_ms as f64 / 1000.0);
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if h.hold_ms > 0 {
            self.grace_seconds.inc_by(h.grace_ms as f64 / 1000.0);
        }
        if let Some(s) = in_flight.remove(&h.epoch) {
            // Overran its timeout between two scrapes: a failure all the
            // same.
            if !s.failed && s.overdue(now, self.switch_timeout) {
                self.switch_failures.inc();
            }
            if let (Some(hold), Some(drain)) = (s.hold_at, s.drain_at) {
                self.step("hold")
                    .observe(drain.saturating_duration_since(hold).as_secs_f64());
            }
            if let (Some(drain), Some(serve)) = (s.drain_at, s.serve_at) {
                self.step("drain")
                    .observe(serve.saturating_duration_since(drain).as_secs_f64());
            }
            if let Some(serve) = s.serve_at {
                self.step("serve")
                    .observe(now.saturating_duration_since(serve).as_secs_f64());
            }
        }
        // Older epochs this leader started can no longer complete.
        let stale: Vec<u64> = in_flight.range(..h.epoch).map(|(e, _)| *e).collect();
        for e in stale {
            if in_flight.remove(&e).is_some_and(|s| !s.failed) {
                self.switch_failures.inc();
            }
        }
    }

    fn step(&self, step: &str) -> impl std::ops::Deref<Target = Histogram> + '_ {
        self.switch_steps
            .get_or_create(&StepLabel { step: step.into() })
    }

    /// Switches in flight for longer than `admin.switch_timeout` count as
    /// failed, once each (they may still complete).
    fn count_overdue(&self, now: Instant) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        for s in in_flight.values_mut() {
            if !s.failed && s.overdue(now, self.switch_timeout) {
                s.failed = true;
                self.switch_failures.inc();
            }
        }
    }

    /// One KME probe's result: errors are counted; the stored key count is
    /// exported while the probe succeeds and the KME reports it.
    pub(crate) fn probe_result(
        &self,
        setup: Setup,
        result: &Result<crate::probe::StatusInfo, String>,
    ) {
        let label = SetupLabel::of(setup);
        match result {
            Ok(info) => match info.stored_key_count {
                Some(n) => {
                    self.kme_stored_keys
                        .get_or_create(&label)
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
                None => {
                    self.kme_stored_keys.remove(&label);
                }
            },
            Err(_) => {
                self.probe_errors.get_or_create(&label).inc();
                self.kme_stored_keys.remove(&label);
            }
        }
    }

    /// The debounced health of `setup` changed.
    pub(crate) fn probe(&self, setup: Setup, healthy: bool) {
        self.setup_healthy
            .get_or_create(&SetupLabel::of(setup))
            .set(healthy as i64);
    }

    /// The metrics as of now, in the OpenMetrics text format;
    /// `etcd_request_errors` is the store's count of failed requests.
    pub(crate) fn encode(&self, etcd_request_errors: u64) -> String {
        self.encode_at(etcd_request_errors, Instant::now())
    }

    fn encode_at(&self, etcd_request_errors: u64, now: Instant) -> String {
        let now_ms = self.clock.now().as_millis();
        let acked = match self.last_ack_ms.load(Ordering::SeqCst) {
            NO_ACK => 0,
            t => t,
        };
        self.lease_age
            .set(now_ms.saturating_sub(acked) as f64 / 1000.0);
        self.etcd_errors
            .inner()
            .fetch_max(etcd_request_errors, Ordering::SeqCst);
        self.count_overdue(now);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep_core::leader::{HistoryKind, HistoryOutcome};
    use lockstep_core::member::LbKnown;
    use lockstep_core::Time;

    fn config() -> Config {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("lockstep.toml");
        std::fs::write(
            &path,
            "link = \"lab\"\nmember_id = \"m-0\"\nrole = \"alice\"\n[grpc]\ninsecure = true\n",
        )
        .expect("write config");
        crate::config::load(&path).expect("valid config")
    }

    fn metrics() -> Metrics {
        Metrics::new(&config(), Clock::new())
    }

    /// The value of the one sample `series` (name and labels as written),
    /// e.g. `lockstep_paused{link="l",member="m"}`.
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }

    fn history(epoch: u64) -> HistoryRecord {
        HistoryRecord {
            epoch,
            from: Some(Setup::Hot),
            to: Setup::Warm,
            kind: HistoryKind::Switchover,
            reason: "test".into(),
            requested_by: "test".into(),
            by_note: String::new(),
            leader: "m".into(),
            token: 1,
            started_at: String::new(),
            drain_ms: 20,
            hold_ms: 0,
            grace_ms: 0,
            total_ms: 50,
            fenced_members: vec![],
            outcome: HistoryOutcome::Complete,
            request_id: None,
        }
    }

    #[test]
    fn every_series_has_link_and_member_and_the_text_is_openmetrics() {
        let m = metrics();
        m.probe(Setup::Hot, true);
        m.probe_result(Setup::Hot, &Err("down".into()));
        m.lb_observed(LbTarget::Blocked);
        let text = m.encode(3);
        assert!(text.ends_with("# EOF\n"), "{text}");
        let mut samples = 0;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            samples += 1;
            assert!(line.starts_with("lockstep_"), "{line}");
            assert!(
                line.contains(r#"link="lab","#) && line.contains(r#"member="m-0""#),
                "no link/member labels: {line}"
            );
        }
        assert!(samples > 20, "{text}");
        assert!(CONTENT_TYPE.starts_with("application/openmetrics-text"));
        let build = text
            .lines()
            .find(|l| l.starts_with("lockstep_build_info{"))
            .expect("build info");
        assert!(
            build.contains(&format!(r#"version="{}""#, env!("CARGO_PKG_VERSION"))),
            "{build}"
        );
        assert!(text.contains("# TYPE lockstep_build info"), "{text}");
        assert_eq!(
            value(
                &text,
                r#"lockstep_etcd_request_errors_total{link="lab",member="m-0"}"#
            ),
            Some(3.0)
        );
    }

    /// docs/metrics.md, which the alert rules and dashboard are checked
    /// against (scripts/check-deploy), lists every metric the registry
    /// exports: a metric added without its page fails here.
    #[test]
    fn every_exported_metric_is_documented() {
        let doc = include_str!("../../docs/metrics.md");
        let m = metrics();
        // Labelled families appear once they have a series.
        m.probe(Setup::Hot, true);
        m.probe_result(Setup::Hot, &Err("down".into()));
        m.lb_observed(LbTarget::Blocked);
        let text = m.encode(0);
        // OpenMetrics names a counter and an info metric without their
        // sample suffix in `# TYPE`.
        let names: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
                [n, "counter"] => Some(format!("{n}_total")),
                [n, "info"] => Some(format!("{n}_info")),
                [n, _] => Some(n.to_string()),
                _ => None,
            })
            .collect();
        assert!(names.len() >= 22, "{names:?}");
        let missing: Vec<&String> = names
            .iter()
            .filter(|n| !doc.contains(&format!("| `{n}` |")))
            .collect();
        assert!(missing.is_empty(), "not in docs/metrics.md: {missing:?}");
    }

    #[test]
    fn probe_errors_count_and_stored_keys_follow_the_status() {
        let m = metrics();
        let hot = r#"{link="lab",member="m-0",setup="hot"}"#;
        m.probe_result(
            Setup::Hot,
            &Ok(crate::probe::StatusInfo {
                stored_key_count: Some(4242),
            }),
        );
        let text = m.encode(0);
        assert_eq!(
            value(&text, &format!("lockstep_kme_stored_keys{hot}")),
            Some(4242.0)
        );
        assert_eq!(
            value(&text, &format!("lockstep_probe_errors_total{hot}")),
            None
        );
        m.probe_result(Setup::Hot, &Err("no answer".into()));
        m.probe_result(Setup::Hot, &Err("no answer".into()));
        let text = m.encode(0);
        assert_eq!(
            value(&text, &format!("lockstep_probe_errors_total{hot}")),
            Some(2.0)
        );
        assert_eq!(
            value(&text, &format!("lockstep_kme_stored_keys{hot}")),
            None,
            "unknown while the probe fails"
        );
    }

    #[test]
    fn lease_age_counts_from_the_newest_acknowledged_keep_alive() {
        let m = metrics();
        let series = r#"lockstep_lease_age_seconds{link="lab",member="m-0"}"#;
        // Fresh until 4 s after an ack sent at clock time 0: age = now - 0.
        let mut v = MemberView {
            applied: None,
            desired: LbTarget::Blocked,
            lb: LbKnown::Unknown,
            synced: true,
            fenced: false,
            stopping: false,
            lease_fresh_until: Some(Time::from_millis(4000)),
            accepted: None,
            route_token: None,
            behind: None,
            failsafe: None,
            bound_until: None,
            leases: Vec::new(),
        };
        m.member_view(&v);
        std::thread::sleep(Duration::from_millis(30));
        let age = value(&m.encode(0), series).expect("lease age");
        assert!((0.03..1.0).contains(&age), "{age}");
        // A newer ack (sent 'in the future' of the clock) resets it to 0.
        v.lease_fresh_until = Some(Time::from_millis(3_604_000));
        m.member_view(&v);
        assert_eq!(value(&m.encode(0), series), Some(0.0));
        // An older view does not move it back.
        v.lease_fresh_until = Some(Time::from_millis(4000));
        m.member_view(&v);
        assert_eq!(value(&m.encode(0), series), Some(0.0));
    }

    #[test]
    fn switch_steps_and_failures() {
        let m = metrics();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        m.route_write_started_at(2, Phase::Drain, t0);
        m.route_write_started_at(2, Phase::Serve, t0 + ms(40));
        m.switch_completed_at(&history(2), t0 + ms(100));
        let text = m.encode_at(0, t0 + ms(100));
        let labels = |step: &str| format!(r#"{{link="lab",member="m-0",step="{step}"}}"#);
        assert_eq!(
            value(
                &text,
                &format!("lockstep_switch_step_seconds_count{}", labels("drain"))
            ),
            Some(1.0)
        );
        let drain = value(
            &text,
            &format!("lockstep_switch_step_seconds_sum{}", labels("drain")),
        )
        .expect("drain");
        let serve = value(
            &text,
            &format!("lockstep_switch_step_seconds_sum{}", labels("serve")),
        )
        .expect("serve");
        assert!(
            (drain - 0.04).abs() < 1e-6 && (serve - 0.06).abs() < 1e-6,
            "{drain} {serve}"
        );
        let failures = r#"lockstep_switch_failures_total{link="lab",member="m-0"}"#;
        assert_eq!(value(&text, failures), Some(0.0));

        // A switch past admin.switch_timeout (30 s) fails once, even if it
        // completes later.
        m.route_write_started_at(3, Phase::Drain, t0);
        assert_eq!(value(&m.encode_at(0, t0 + ms(29_000)), failures), Some(0.0));
        assert_eq!(value(&m.encode_at(0, t0 + ms(31_000)), failures), Some(1.0));
        assert_eq!(value(&m.encode_at(0, t0 + ms(32_000)), failures), Some(1.0));
        m.route_write_started_at(3, Phase::Serve, t0 + ms(33_000));
        m.switch_completed_at(&history(3), t0 + ms(33_010));
        assert_eq!(value(&m.encode_at(0, t0 + ms(34_000)), failures), Some(1.0));

        // One that overran and completed between two scrapes counts too,
        // once.
        m.route_write_started_at(5, Phase::Drain, t0);
        m.route_write_started_at(5, Phase::Serve, t0 + ms(30_500));
        m.switch_completed_at(&history(5), t0 + ms(31_000));
        assert_eq!(value(&m.encode_at(0, t0 + ms(32_000)), failures), Some(2.0));

        // Stepping down mid-switch gives it up: a failure; the leader-only
        // gauges go to 0.
        m.set_leader(true);
        m.set_paused(true);
        m.route_write_started_at(6, Phase::Drain, t0);
        m.set_leader(false);
        let text = m.encode_at(0, t0 + ms(1));
        assert_eq!(value(&text, failures), Some(3.0));
        assert_eq!(
            value(&text, r#"lockstep_paused{link="lab",member="m-0"}"#),
            Some(0.0)
        );
        assert_eq!(
            value(&text, r#"lockstep_is_leader{link="lab",member="m-0"}"#),
            Some(0.0)
        );
    }
}
