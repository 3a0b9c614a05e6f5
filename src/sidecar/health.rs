//! What `/healthz`, `/readyz` and gRPC health (grpc.health.v1) answer.
//!
//! * **Liveness** (`/healthz`): the sidecar's long-running tasks that keep
//!   the protocol going, the member loop and the keep-alive task, are still
//!   running. Each holds a [`Beat`] from [`Liveness`]: dropping it (the task
//!   returned or panicked) marks the task stopped, and a task that is busy
//!   (not parked in one of its waits) for longer than the stall bound counts
//!   as hung. Either fails `/healthz`, so Kubernetes restarts the sidecar;
//!   its LB is blocked by then (HAProxy's checks fail within D).
//! * **Readiness** (`/readyz`, and gRPC health for `""`, `lockstep.v1.Peer`
//!   and `lockstep.v1.Admin`): live, registered with etcd and synced with
//!   the route, lease fresh (not fenced), not stopping. A member that is not
//!   ready cannot serve its LB.

use super::Shared;
use lockstep_core::member::MemberView;
use lockstep_core::Time;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tracing::{info, warn};

/// The tasks `/healthz` watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Task {
    /// The member state machine's driver (`member::run`).
    MemberLoop,
    /// Renews the lease (`member::keep_alive`).
    KeepAlive,
}

impl Task {
    const ALL: [Task; 2] = [Task::MemberLoop, Task::KeepAlive];

    fn name(self) -> &'static str {
        match self {
            Task::MemberLoop => "member loop",
            Task::KeepAlive => "keep-alive task",
        }
    }
}

/// Not started yet, running, or stopped; and when it last showed progress.
#[derive(Debug, Default)]
struct Slot {
    started: AtomicBool,
    stopped: AtomicBool,
    /// Parked in a wait that may legitimately last (e.g. for a lease).
    parked: AtomicBool,
    /// Milliseconds since the sidecar's clock origin.
    last_beat_ms: AtomicU64,
}

/// The liveness of the watched tasks, read by `/healthz`.
#[derive(Debug)]
pub(crate) struct Liveness {
    slots: [Arc<Slot>; 2],
    /// Longer than this busy without a beat: hung.
    stall_bound: Duration,
}

/// A task's handle on its liveness slot. Dropping it marks the task stopped.
#[derive(Debug)]
pub(crate) struct Beat {
    slot: Arc<Slot>,
    clock: super::Clock,
}

impl Liveness {
    pub(crate) fn new(stall_bound: Duration) -> Liveness {
        Liveness {
            slots: Default::default(),
            stall_bound,
        }
    }

    /// The bound the sidecar uses: a busy stretch of a healthy member loop
    /// or keep-alive task is at most one etcd request (`request_timeout`) or
    /// one keep-alive answer (`lease_ttl`) plus a keep-alive interval; twice
    /// that leaves room for a loaded machine.
    pub(crate) fn stall_bound_for(config: &crate::config::Config) -> Duration {
        2 * (config.etcd.lease_ttl + config.etcd.keepalive_interval + config.etcd.request_timeout)
    }

    fn slot(&self, task: Task) -> &Arc<Slot> {
        match task {
            Task::MemberLoop => &self.slots[0],
            Task::KeepAlive => &self.slots[1],
        }
    }

    /// Called by `task` when it starts; keep the result for the task's life.
    pub(crate) fn start(&self, task: Task, clock: super::Clock) -> Beat {
        let slot = self.slot(task).clone();
        slot.stopped.store(false, Ordering::SeqCst);
        slot.parked.store(false, Ordering::SeqCst);
        slot.last_beat_ms
            .store(clock.now().as_millis(), Ordering::SeqCst);
        slot.started.store(true, Ordering::SeqCst);
        Beat { slot, clock }
    }

    /// `Ok` while every watched task runs and none is hung; else what is
    /// wrong, for `/healthz`'s body. A task that has not started yet counts
    /// from the sidecar's start.
    pub(crate) fn check(&self, now: Time) -> Result<(), String> {
        let mut problems = Vec::new();
        for task in Task::ALL {
            let slot = self.slot(task);
            if slot.stopped.load(Ordering::SeqCst) {
                problems.push(format!("{} stopped", task.name()));
                continue;
            }
            if slot.started.load(Ordering::SeqCst) && slot.parked.load(Ordering::SeqCst) {
                continue;
            }
            let last = Time::from_millis(slot.last_beat_ms.load(Ordering::SeqCst));
            let silent = now.since(last);
            if silent > self.stall_bound {
                let what = if slot.started.load(Ordering::SeqCst) {
                    "busy without progress"
                } else {
                    "not started"
                };
                problems.push(format!(
                    "{} {what} for {} ms (bound {} ms)",
                    task.name(),
                    silent.as_millis(),
                    self.stall_bound.as_millis()
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

impl Beat {
    /// The task made progress.
    pub(crate) fn beat(&self) {
        self.slot
            .last_beat_ms
            .store(self.clock.now().as_millis(), Ordering::SeqCst);
        self.slot.parked.store(false, Ordering::SeqCst);
    }

    /// The task is about to wait for input that may take arbitrarily long
    /// (not a sign of a hang); the next [`beat`](Self::beat) ends it.
    pub(crate) fn park(&self) {
        self.slot.parked.store(true, Ordering::SeqCst);
    }

    /// Awaits `wait` parked, then beats.
    pub(crate) async fn parked<F: std::future::Future>(&self, wait: F) -> F::Output {
        self.park();
        let out = wait.await;
        self.beat();
        out
    }
}

impl Drop for Beat {
    fn drop(&mut self) {
        self.slot.stopped.store(true, Ordering::SeqCst);
    }
}

/// Why this member is not ready, from its view; `None` when it is.
pub(crate) fn not_ready(view: &MemberView) -> Option<&'static str> {
    if view.stopping {
        Some("stopping")
    } else if !view.synced {
        Some("not registered with etcd and synced with the route yet")
    } else if view.fenced {
        Some("fenced: lease not fresh (etcd unreachable or keep-alives late), LB blocked")
    } else {
        None
    }
}

/// `/healthz`: `Ok(body)` or `Err(body)`.
pub(crate) fn healthz(shared: &Shared) -> Result<String, String> {
    match shared.liveness.check(shared.clock.now()) {
        Ok(()) => Ok("ok: member loop and keep-alive task running\n".into()),
        Err(e) => Err(format!("unhealthy: {e}\n")),
    }
}

/// `/readyz`: `Ok(body)` or `Err(body)`. Ready means live (`/healthz`),
/// synced with etcd and not fenced: this member may serve its LB.
pub(crate) fn readyz(shared: &Shared) -> Result<String, String> {
    if let Err(e) = shared.liveness.check(shared.clock.now()) {
        return Err(format!("not ready: unhealthy: {e}\n"));
    }
    match not_ready(&shared.view.borrow()) {
        None => Ok("ready\n".into()),
        Some(why) => Err(format!("not ready: {why}\n")),
    }
}

/// The gRPC services whose health follows readiness: the whole server
/// (`""`) and both lockstep services.
fn grpc_services() -> [&'static str; 3] {
    [
        "",
        crate::proto::peer_server::SERVICE_NAME,
        crate::proto::admin_server::SERVICE_NAME,
    ]
}

/// Keeps gRPC health equal to `/readyz`: re-evaluated on every change of
/// the member's view and at least every `recheck` (for liveness).
pub(crate) async fn drive_grpc_health(
    shared: Arc<Shared>,
    reporter: HealthReporter,
    recheck: Duration,
) {
    let mut view = shared.view.subscribe();
    let mut current: Option<ServingStatus> = None;
    loop {
        let ready = readyz(&shared);
        let status = if ready.is_ok() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if current != Some(status) {
            for service in grpc_services() {
                reporter.set_service_status(service, status).await;
            }
            match &ready {
                Ok(_) => info!("gRPC health: SERVING"),
                Err(why) => warn!(why = %why.trim_end(), "gRPC health: NOT_SERVING"),
            }
            current = Some(status);
        }
        tokio::select! {
            r = view.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(recheck) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep_core::member::{LbKnown, MemberView};
    use lockstep_core::LbTarget;

    fn liveness() -> (Liveness, super::super::Clock) {
        (
            Liveness::new(Duration::from_millis(50)),
            super::super::Clock::new(),
        )
    }

    fn later(clock: super::super::Clock, by: Duration) -> Time {
        Time::from_millis(clock.now().as_millis() + by.as_millis() as u64)
    }

    #[test]
    fn running_tasks_are_healthy_and_a_dropped_one_is_named() {
        let (l, clock) = liveness();
        let member = l.start(Task::MemberLoop, clock);
        let keep_alive = l.start(Task::KeepAlive, clock);
        assert_eq!(l.check(clock.now()), Ok(()));
        drop(keep_alive);
        assert_eq!(
            l.check(clock.now()),
            Err("keep-alive task stopped".to_string())
        );
        drop(member);
        let e = l.check(clock.now()).expect_err("both stopped");
        assert!(e.contains("member loop stopped"), "{e}");
        // A restarted task is running again.
        let _again = l.start(Task::MemberLoop, clock);
        let _ka = l.start(Task::KeepAlive, clock);
        assert_eq!(l.check(clock.now()), Ok(()));
    }

    #[test]
    fn a_busy_task_without_beats_is_hung_and_a_parked_one_is_not() {
        let (l, clock) = liveness();
        let member = l.start(Task::MemberLoop, clock);
        let keep_alive = l.start(Task::KeepAlive, clock);
        let t = later(clock, Duration::from_millis(200));
        let e = l.check(t).expect_err("no beats for 200 ms");
        assert!(e.contains("member loop busy without progress"), "{e}");
        assert!(e.contains("keep-alive task busy without progress"), "{e}");
        member.park();
        keep_alive.park();
        assert_eq!(l.check(t), Ok(()), "parked in a wait is not hung");
        // Leaving the wait starts the clock again.
        member.beat();
        keep_alive.beat();
        assert_eq!(l.check(clock.now()), Ok(()));
        assert!(l.check(later(clock, Duration::from_millis(200))).is_err());
    }

    #[test]
    fn tasks_that_never_start_fail_after_the_bound() {
        let (l, clock) = liveness();
        assert_eq!(l.check(clock.now()), Ok(()), "still starting");
        let e = l
            .check(later(clock, Duration::from_millis(200)))
            .expect_err("never started");
        assert!(e.contains("member loop not started"), "{e}");
    }

    #[tokio::test]
    async fn parked_waits_beat_when_they_end() {
        let (l, clock) = liveness();
        let beat = l.start(Task::KeepAlive, clock);
        let member = l.start(Task::MemberLoop, clock);
        member.park();
        let out = beat
            .parked(async {
                tokio::time::sleep(Duration::from_millis(80)).await;
                // Longer than the bound, but parked: healthy.
                assert_eq!(l.check(clock.now()), Ok(()));
                7
            })
            .await;
        assert_eq!(out, 7);
        // The wait's end beat: not hung right after it, though the last
        // beat before the wait is 80 ms old.
        assert_eq!(l.check(clock.now()), Ok(()));
    }

    fn view() -> MemberView {
        MemberView {
            applied: None,
            desired: LbTarget::Blocked,
            lb: LbKnown::Unknown,
            synced: true,
            fenced: false,
            stopping: false,
            lease_fresh_until: Some(Time::from_millis(1000)),
            accepted: None,
            route_token: None,
            behind: None,
            failsafe: None,
            bound_until: None,
            leases: Vec::new(),
        }
    }

    #[test]
    fn readiness_needs_sync_and_a_fresh_lease() {
        assert_eq!(not_ready(&view()), None);
        let unsynced = MemberView {
            synced: false,
            ..view()
        };
        assert!(not_ready(&unsynced).is_some_and(|w| w.contains("not registered")));
        let fenced = MemberView {
            fenced: true,
            ..view()
        };
        assert!(not_ready(&fenced).is_some_and(|w| w.contains("fenced")));
        let stopping = MemberView {
            stopping: true,
            ..view()
        };
        assert_eq!(not_ready(&stopping), Some("stopping"));
    }
}
