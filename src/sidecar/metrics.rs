//! Prometheus metrics, served at `/metrics`.

use crate::config::Config;
use lockstep_core::leader::HistoryRecord;
use lockstep_core::member::MemberView;
use lockstep_core::{Applied, LbTarget, Phase, Setup};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SetupLabel {
    setup: String,
}

pub(crate) struct Metrics {
    registry: Registry,
    epoch: Gauge,
    /// 1 for the setup this member's LB was last confirmed to route to.
    lb_routes: Family<SetupLabel, Gauge>,
    fenced: Gauge,
    leader: Gauge,
    switches: Counter,
    switch_seconds: Histogram,
    drain_seconds: Histogram,
    /// 1 when the setup is healthy as this member probes it.
    setup_healthy: Family<SetupLabel, Gauge>,
    no_healthy_setup: Gauge,
}

impl Metrics {
    pub(crate) fn new(_config: &Config) -> Metrics {
        let mut registry = Registry::with_prefix("lockstep");
        let epoch = Gauge::default();
        let lb_routes = Family::<SetupLabel, Gauge>::default();
        let fenced = Gauge::default();
        let leader = Gauge::default();
        let switches = Counter::default();
        let buckets = [
            0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
        ];
        let switch_seconds = Histogram::new(buckets);
        let drain_seconds = Histogram::new(buckets);
        let setup_healthy = Family::<SetupLabel, Gauge>::default();
        let no_healthy_setup = Gauge::default();
        registry.register(
            "no_healthy_setup",
            "1 while the leader sees both setups unhealthy (nothing to fail over to)",
            no_healthy_setup.clone(),
        );
        registry.register(
            "applied_epoch",
            "Epoch this member last applied",
            epoch.clone(),
        );
        registry.register(
            "lb_routes",
            "1 for the setup the LB was last seen routing to (setup=\"blocked\" when blocked)",
            lb_routes.clone(),
        );
        registry.register(
            "fenced",
            "1 while this member has fenced itself (lease not fresh)",
            fenced.clone(),
        );
        registry.register(
            "is_leader",
            "1 while this member leads its link",
            leader.clone(),
        );
        registry.register(
            "switches",
            "Switches completed while this member led",
            switches.clone(),
        );
        registry.register(
            "switch_seconds",
            "From switch start to every member serving",
            switch_seconds.clone(),
        );
        registry.register(
            "drain_seconds",
            "From drain write to serve write (the outage)",
            drain_seconds.clone(),
        );
        registry.register(
            "setup_healthy",
            "1 when the setup is healthy as this member probes it",
            setup_healthy.clone(),
        );
        Metrics {
            registry,
            epoch,
            lb_routes,
            fenced,
            leader,
            switches,
            switch_seconds,
            drain_seconds,
            setup_healthy,
            no_healthy_setup,
        }
    }

    pub(crate) fn set_no_healthy_setup(&self, on: bool) {
        self.no_healthy_setup.set(on as i64);
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
    }

    pub(crate) fn set_leader(&self, on: bool) {
        self.leader.set(on as i64);
    }

    pub(crate) fn switch_completed(&self, h: &HistoryRecord) {
        self.switches.inc();
        self.switch_seconds.observe(h.total_ms as f64 / 1000.0);
        self.drain_seconds.observe(h.drain_ms as f64 / 1000.0);
    }

    pub(crate) fn probe(&self, setup: Setup, healthy: bool) {
        self.setup_healthy
            .get_or_create(&SetupLabel {
                setup: setup.as_str().into(),
            })
            .set(healthy as i64);
    }

    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
