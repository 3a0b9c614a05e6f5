//! The sidecar: thin drivers that connect the pure protocol to etcd, gRPC,
//! the LB, probes and HTTP.
//!
//! Tasks: the member loop (`member`), registration and keep-alive, the LB
//! read-back, the member-record writer, the election and leader loop
//! (`leader`), the probes, and the gRPC and HTTP servers. They share one
//! `Shared`; shutdown blocks the LB first, then revokes the lease. What
//! `/healthz`, `/readyz` and gRPC health say: `health`.

pub(crate) mod health;
pub(crate) mod leader;

pub(crate) mod member;
pub(crate) mod metrics;

pub use leader::RESEND_EVERY;

use crate::config::Config;
use crate::lb::LoadBalancer;
use crate::proto;
use crate::store::Store;
use anyhow::Context;
use lockstep_core::health::RoleHealth;
use lockstep_core::leader::MemberRecord;
use lockstep_core::member::{MemberEvent, MemberView};
use lockstep_core::{LbTarget, Time, Token};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{error, info, info_span, warn, Instrument};

/// Monotonic time for the core: milliseconds since the sidecar started.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    origin: Instant,
}

impl Clock {
    pub(crate) fn new() -> Clock {
        Clock {
            origin: Instant::now(),
        }
    }

    pub(crate) fn now(&self) -> Time {
        Time::from_millis(self.origin.elapsed().as_millis() as u64)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// State shared by the sidecar's tasks.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) store: Store,
    pub(crate) clock: Clock,
    /// The member state machine's latest view (check endpoint, status).
    pub(crate) view: watch::Sender<MemberView>,
    /// The member's current lease, `None` while (re)registering.
    pub(crate) lease: watch::Sender<Option<i64>>,
    /// What this member publishes in its etcd key.
    pub(crate) record: watch::Sender<MemberRecord>,
    /// Our token while we lead.
    pub(crate) leader_token: watch::Sender<Option<Token>>,
    /// Set once shutdown began, so no new leadership is taken.
    pub(crate) stopping: watch::Sender<bool>,
    /// Why the sidecar cannot go on (e.g. its member id belongs to another
    /// live sidecar): it stops as on shutdown and exits with this error.
    pub(crate) fatal: watch::Sender<Option<String>>,
    pub(crate) metrics: metrics::Metrics,
    /// Whether the member loop and the keep-alive task run (`/healthz`).
    pub(crate) liveness: health::Liveness,
    /// Bumped when an LB apply starts and when it ends; see
    /// `member::Input::Observed`.
    pub(crate) lb_apply_gen: Arc<std::sync::atomic::AtomicU64>,
    /// gRPC channels to peers (pushes, status), one per address, over
    /// mutual TLS unless `grpc.insecure`.
    pub(crate) channels: crate::tls::client::Channels,
    /// Hands the leader's transitions to the `[notify]` receivers' tasks
    /// without waiting for them.
    pub(crate) notify: crate::notify::Notifier,
}

impl Shared {
    /// This member's live state, for `Peer.GetState` and status.
    pub(crate) fn member_state(&self) -> proto::MemberState {
        let view = self.view.borrow().clone();
        let record = self.record.borrow().clone();
        let now = self.clock.now();
        let fresh_budget = self
            .config
            .etcd
            .lease_ttl
            .saturating_sub(self.config.etcd.margin);
        let lease_age_ms = view.lease_fresh_until.map_or(0, |until| {
            // until = ack send time + fresh budget
            let acked = until - fresh_budget;
            now.since(acked).as_millis() as u64
        });
        let (lb_routes, lb) = match view.lb {
            lockstep_core::member::LbKnown::Confirmed(t) => {
                (t.to_string(), crate::rpc::lb_route_to_proto(Some(t)))
            }
            lockstep_core::member::LbKnown::AssumedBlocked => {
                ("blocked (by LB checks)".into(), proto::LbRoute::Blocked)
            }
            lockstep_core::member::LbKnown::Unknown => ("unknown".into(), proto::LbRoute::Unknown),
        };
        proto::MemberState {
            id: self.config.member_id.clone(),
            role: crate::rpc::role_to_proto(self.config.role) as i32,
            grpc_address: self.config.grpc_advertise(),
            applied: view.applied.as_ref().map(crate::rpc::applied_to_proto),
            lb_routes,
            lb: lb as i32,
            health: Some(proto::Health {
                hot: record.health.hot.to_string(),
                warm: record.health.warm.to_string(),
                detail: String::new(),
            }),
            lease_age_ms,
            lease_fresh: !view.fenced && view.lease_fresh_until.is_some_and(|u| now < u),
            behind: view.behind.map_or(String::new(), |b| b.to_string()),
            insecure: self.config.grpc.insecure,
            failsafe: match view.on_grants(now) {
                Some(f) => format!(
                    "etcd unreachable: serving {} (epoch {}) on every roster member's grant for {} ms more; nothing switches until etcd is back",
                    f.serving.setup,
                    f.serving.epoch,
                    f.until.since(now).as_millis()
                ),
                _ => String::new(),
            },
        }
    }

    /// The LB check answer for one HAProxy server name.
    pub(crate) fn check(&self, server: &str) -> (bool, String) {
        let setup = if server == self.config.lb.server_hot {
            lockstep_core::Setup::Hot
        } else if server == self.config.lb.server_warm {
            lockstep_core::Setup::Warm
        } else {
            return (false, format!("unknown server {server:?}"));
        };
        let view = self.view.borrow();
        let now = self.clock.now();
        let ok = view.routable(setup, now, self.config.lb_down_detection());
        let why = if ok {
            format!("routable: serving {setup}")
        } else if view.fenced {
            "not routable: lease not fresh (self-fenced)".into()
        } else if !view.synced {
            "not routable: not registered with etcd".into()
        } else if view.desired != LbTarget::Serve(setup) {
            format!("not routable: this member routes to {}", view.desired)
        } else {
            "not routable: lease about to expire".into()
        };
        (ok, why)
    }
}

/// Runs the sidecar until `shutdown` resolves, then blocks the LB and
/// revokes the lease before returning.
pub(crate) async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let lb = crate::lb::haproxy::Haproxy::from_config(&config);
    run_with(config, Arc::new(lb), shutdown).await
}

/// [`run`] with any LB adapter.
pub(crate) async fn run_with<L: LoadBalancer>(
    config: Config,
    lb: Arc<L>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    preflight(&config, lb.as_ref()).await?;
    let store = Store::connect_with(&config.etcd, &config.link)
        .await
        .context("cannot start without etcd")?;
    let tls = crate::rpc::serve::Tls::from_config(&config)?;
    let clock = Clock::new();
    let member_cfg_view = lockstep_core::member::Member::new(
        lockstep_core::member::MemberConfig {
            id: config.member_id.clone(),
            role: config.role,
            lease_ttl: config.etcd.lease_ttl,
            margin: config.etcd.margin,
            lb_down_bound: config.lb_down_detection(),
            lb_retry: Duration::from_millis(200),
            failsafe: None,
        },
        clock.now(),
    )
    .view();
    let record = MemberRecord {
        role: config.role,
        grpc: config.grpc_advertise(),
        applied: None,
        lb: None,
        health: RoleHealth::default(),
        behind: None,
    };
    let grpc_listen = config.grpc.listen;
    let http_listen = config.http.listen;
    let check_listen = config.http.check_listen;
    let status_listen = config.status.listen;
    let metrics = metrics::Metrics::new(&config, clock);
    let notify = crate::notify::Notifier::start(
        &config.notify,
        metrics.notify_counters(),
        &config.link,
        &config.member_id,
    );
    let shared = Arc::new(Shared {
        metrics,
        notify,
        liveness: health::Liveness::new(health::Liveness::stall_bound_for(&config)),
        config,
        store,
        clock,
        view: watch::Sender::new(member_cfg_view),
        lease: watch::Sender::new(None),
        record: watch::Sender::new(record),
        leader_token: watch::Sender::new(None),
        stopping: watch::Sender::new(false),
        fatal: watch::Sender::new(None),
        lb_apply_gen: Arc::default(),
        channels: tls.channels(),
    });
    info!(
        link = %shared.config.link,
        member = %shared.config.member_id,
        role = %shared.config.role,
        lb = lb.guarantees(),
        "starting sidecar"
    );

    // Bind first so a port clash fails start-up with a clear message.
    let grpc_listener = tokio::net::TcpListener::bind(grpc_listen)
        .await
        .with_context(|| format!("cannot listen for gRPC on {grpc_listen}"))?;
    let http_listener = tokio::net::TcpListener::bind(http_listen)
        .await
        .with_context(|| format!("cannot listen for HTTP on {http_listen}"))?;
    let check_listener = match check_listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen for the LB's checks on {addr} (http.check_listen)")
        })?),
        None => None,
    };
    let status_listener = match status_listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen for the status page on {addr} (status.listen)")
        })?),
        None => None,
    };

    let handles = member::spawn(shared.clone(), lb.clone());
    let input = handles.input.clone();
    match check_listener {
        Some(checks) => {
            tokio::spawn(crate::http::serve(
                shared.clone(),
                http_listener,
                crate::http::Routes::NoChecks,
            ));
            tokio::spawn(crate::http::serve(
                shared.clone(),
                checks,
                crate::http::Routes::ChecksOnly,
            ));
        }
        None => {
            tokio::spawn(crate::http::serve(
                shared.clone(),
                http_listener,
                crate::http::Routes::All,
            ));
        }
    }
    if let Some(listener) = status_listener {
        crate::page::start(shared.clone(), listener);
    }
    tokio::spawn(crate::probe::run(shared.clone()));
    let campaign = tokio::spawn(leader::campaign_loop(shared.clone(), input.clone()));

    let (grpc_stop_tx, grpc_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let grpc = tokio::spawn(crate::rpc::serve::serve(
        shared.clone(),
        input.clone(),
        tls,
        grpc_listener,
        async {
            let _ = grpc_stop_rx.await;
        },
    ));

    let mut fatal = shared.fatal.subscribe();
    let failure = tokio::select! {
        _ = shutdown => None,
        _ = fatal.wait_for(Option::is_some) => shared.fatal.borrow().clone(),
        why = lb_refusal(lb.as_ref()) => Some(format!(
            "refusing to run: {why}. The LB was blocked; fix the configs and start the sidecar again"
        )),
    };
    match &failure {
        None => info!("stopping: blocking the LB, then revoking the lease"),
        Some(why) => error!(
            link = %shared.config.link,
            member = %shared.config.member_id,
            %why,
            "cannot go on: blocking the LB, then revoking the lease"
        ),
    }
    shared.stopping.send_replace(true);
    campaign.abort();
    if let Some(token) = *shared.leader_token.borrow() {
        let _ = shared.store.resign(token).await;
    }
    let _ = input.send(member::Input::Event(MemberEvent::Stop)).await;
    let bound = shared.config.lb_down_detection() + Duration::from_secs(2);
    if tokio::time::timeout(bound, handles.stopped).await.is_err() {
        warn!("LB not confirmed blocked within {bound:?}; its health checks block it once we are gone");
    }
    let _ = grpc_stop_tx.send(());
    match tokio::time::timeout(Duration::from_secs(1), grpc).await {
        Ok(Ok(Err(e))) => warn!(error = %e, "gRPC server ended with an error"),
        Ok(Err(e)) => warn!(error = %e, "gRPC server task failed"),
        _ => {}
    }
    match failure {
        None => Ok(()),
        Some(why) => Err(anyhow::anyhow!(why)),
    }
}

/// Refuses to start on LB settings that break D (`LoadBalancer::preflight`);
/// an LB not reachable yet is checked later, before anything is enabled.
async fn preflight<L: LoadBalancer>(config: &Config, lb: &L) -> anyhow::Result<()> {
    let span = info_span!("preflight", link = %config.link, member = %config.member_id);
    match lb.preflight().instrument(span.clone()).await {
        Ok(()) => Ok(()),
        Err(e @ crate::lb::LbError::Misconfigured(_)) => {
            Err(anyhow::anyhow!("refusing to start: {e}"))
        }
        Err(e) => {
            warn!(parent: &span, error = %e, "cannot read the LB's check settings now; they are compared before the LB is enabled");
            Ok(())
        }
    }
}

/// Resolves once the LB adapter refuses to route (see
/// `LoadBalancer::refusal`), with why.
async fn lb_refusal<L: LoadBalancer>(lb: &L) -> String {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        if let Some(why) = lb.refusal() {
            return why;
        }
    }
}

/// The deliberate protocol break named by `LOCKSTEP_MUTATION` (builds with
/// the `mutations` feature only, for the chaos suite's broken-build test).
#[cfg(feature = "mutations")]
fn mutation() -> Option<lockstep_core::mutation::Mutation> {
    use lockstep_core::mutation::Mutation;
    let name = std::env::var("LOCKSTEP_MUTATION").ok()?;
    let m = match name.as_str() {
        "skip-drain" => Mutation::SkipDrain,
        "ack-before-lb-blocked" => Mutation::AckBeforeLbBlocked,
        "ignore-token" => Mutation::IgnoreToken,
        "no-serve-deadline" => Mutation::NoServeDeadline,
        "trust-pushes" => Mutation::TrustPushes,
        "bootstrap-over-applied" => Mutation::BootstrapOverApplied,
        "serve-after-fence-unread" => Mutation::ServeAfterFenceUnread,
        other => {
            warn!(mutation = other, "unknown LOCKSTEP_MUTATION ignored");
            return None;
        }
    };
    warn!(?m, "protocol deliberately broken (LOCKSTEP_MUTATION)");
    Some(m)
}
