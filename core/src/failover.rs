//! Automatic failover policy, pure: given the active setup, both setups'
//! aggregated health and the time, decide whether to move, and say why (or
//! why not). The leader feeds it and starts the switch it asks for.
//!
//! Rules (DESIGN §5): move when the active setup has been unhealthy for the
//! detection time and the other is healthy; never when both are unhealthy
//! (say so instead); wait a dwell time after every switch; at most
//! `max_auto` automatic switches per window, after which the link pauses
//! itself with a reason; fail back to the primary setup only when
//! configured; nothing automatic while paused.

use crate::health::SetupHealth;

/// The active setup is failing only on evidence: some end reports it down.
/// "Unknown" (a probe that has not answered yet, a role with no member) is
/// no reason to move a link.
fn failing(h: &SetupHealth) -> bool {
    h.alice == Health::Down || h.bob == Health::Down
}
use crate::time::{Duration, Time};
use crate::types::*;
use std::collections::VecDeque;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Failback {
    /// Stay on the setup failed over to until an operator moves the link.
    Manual,
    /// Return to the primary once it has been healthy this long.
    After(Duration),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PolicyConfig {
    /// Automatic moves at all.
    pub enabled: bool,
    /// How long the active setup must stay unhealthy before moving.
    pub detection: Duration,
    /// No automatic move within this time of any switch.
    pub dwell: Duration,
    /// At most this many automatic moves per `window`...
    pub max_auto: u32,
    pub window: Duration,
    /// The setup to fail back to (the link's initial setup).
    pub primary: Setup,
    pub failback: Failback,
}

/// What the policy wants now.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Nothing to do; `why` says what the policy is waiting for, if anything.
    Hold { why: String },
    /// Start an automatic switch to `to`; `evidence` goes into the history.
    Switch {
        to: Setup,
        failback: bool,
        evidence: String,
    },
    /// Too many automatic switches: pause the link with this reason.
    PauseSelf { reason: String },
}

/// The policy's memory across evaluations (kept by the leader).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Policy {
    pub config: PolicyConfig,
    /// Since when the active setup has been seen unhealthy (and which).
    active_unhealthy_since: Option<(Setup, Time)>,
    /// Since when the primary has been healthy while another setup serves.
    primary_healthy_since: Option<Time>,
    /// When the last switch (any kind) completed its serve write.
    last_switch: Option<Time>,
    /// Start times of recent automatic switches, for the cap.
    auto_switches: VecDeque<Time>,
}

impl Policy {
    pub fn new(config: PolicyConfig) -> Policy {
        Policy {
            config,
            active_unhealthy_since: None,
            primary_healthy_since: None,
            last_switch: None,
            auto_switches: VecDeque::new(),
        }
    }

    /// Records a switch (manual or automatic) starting at `now`.
    pub fn switched(&mut self, now: Time, automatic: bool) {
        self.last_switch = Some(now);
        self.active_unhealthy_since = None;
        self.primary_healthy_since = None;
        if automatic {
            self.auto_switches.push_back(now);
        }
    }

    /// Automatic switches within the window ending at `now`.
    pub fn recent_auto(&mut self, now: Time) -> usize {
        while let Some(t) = self.auto_switches.front() {
            if now.since(*t) >= self.config.window {
                self.auto_switches.pop_front();
            } else {
                break;
            }
        }
        self.auto_switches.len()
    }

    /// The next instant after `now` at which the decision may change by time
    /// alone (for the leader's timer). Past deadlines are skipped: they must
    /// not hide a later one.
    pub fn next_deadline(&self, now: Time) -> Option<Time> {
        let mut t: Option<Time> = None;
        let mut consider = |x: Time| {
            if x > now {
                t = Some(t.map_or(x, |t: Time| t.min(x)));
            }
        };
        if let Some((_, since)) = self.active_unhealthy_since {
            consider(since + self.config.detection);
        }
        if let (Failback::After(d), Some(since)) =
            (self.config.failback, self.primary_healthy_since)
        {
            consider(since + d);
        }
        if let Some(last) = self.last_switch {
            consider(last + self.config.dwell);
        }
        t
    }

    /// Decides at `now`. `active` is the setup the route serves (None while
    /// no route serves yet); `paused` whether an operator (or the policy)
    /// paused the link.
    pub fn evaluate(
        &mut self,
        now: Time,
        active: Option<Setup>,
        hot: &SetupHealth,
        warm: &SetupHealth,
        paused: bool,
    ) -> Decision {
        let health = |s: Setup| if s == Setup::Hot { hot } else { warm };
        let Some(active) = active else {
            return Decision::Hold {
                why: "no setup serves yet".into(),
            };
        };
        let other = active.other();
        let (a, o) = (health(active), health(other));

        // Track how long things have been as they are, whatever we decide.
        if !failing(a) {
            self.active_unhealthy_since = None;
        } else if self.active_unhealthy_since.is_none_or(|(s, _)| s != active) {
            self.active_unhealthy_since = Some((active, now));
        }
        let primary = self.config.primary;
        if active != primary && health(primary).healthy() {
            if self.primary_healthy_since.is_none() {
                self.primary_healthy_since = Some(now);
            }
        } else {
            self.primary_healthy_since = None;
        }

        if !self.config.enabled {
            return Decision::Hold {
                why: "automatic failover is disabled".into(),
            };
        }
        if paused {
            return Decision::Hold {
                why: "paused: nothing automatic".into(),
            };
        }
        let dwell_left = self
            .last_switch
            .map(|t| t + self.config.dwell)
            .filter(|until| now < *until);

        if failing(a) {
            if !o.healthy() {
                return Decision::Hold {
                    why: format!(
                        "BOTH SETUPS UNHEALTHY: {active} (alice {}, bob {}) and {other} (alice {}, bob {}); not switching",
                        a.alice, a.bob, o.alice, o.bob
                    ),
                };
            }
            let since = self.active_unhealthy_since.map_or(now, |(_, t)| t);
            let unhealthy_for = now.since(since);
            if unhealthy_for < self.config.detection {
                return Decision::Hold {
                    why: format!(
                        "{active} unhealthy for {} ms; failing over to {other} after {} ms",
                        unhealthy_for.as_millis(),
                        self.config.detection.as_millis()
                    ),
                };
            }
            if let Some(until) = dwell_left {
                return Decision::Hold {
                    why: format!(
                        "{active} unhealthy, but within the dwell time after the last switch ({} ms left)",
                        until.since(now).as_millis()
                    ),
                };
            }
            if self.recent_auto(now) >= self.config.max_auto as usize {
                return Decision::PauseSelf {
                    reason: format!(
                        "automatic failover paused itself: {} automatic switches within {} s (cap {}); {active} is unhealthy again. Investigate, then `lockstep resume`",
                        self.recent_auto(now),
                        self.config.window.as_secs(),
                        self.config.max_auto
                    ),
                };
            }
            return Decision::Switch {
                to: other,
                failback: false,
                evidence: format!(
                    "{active} unhealthy for {} ms (alice {}, bob {}); {other} healthy",
                    unhealthy_for.as_millis(),
                    a.alice,
                    a.bob
                ),
            };
        }

        // Active is healthy: only a configured failback moves the link.
        if active != primary {
            match self.config.failback {
                Failback::Manual => {
                    return Decision::Hold {
                        why: format!("serving {active}; failback to {primary} is manual"),
                    }
                }
                Failback::After(d) => {
                    if let Some(since) = self.primary_healthy_since {
                        let healthy_for = now.since(since);
                        if healthy_for >= d && dwell_left.is_none() {
                            if self.recent_auto(now) >= self.config.max_auto as usize {
                                return Decision::PauseSelf {
                                    reason: format!(
                                        "automatic failback paused itself: {} automatic switches within {} s (cap {})",
                                        self.recent_auto(now),
                                        self.config.window.as_secs(),
                                        self.config.max_auto
                                    ),
                                };
                            }
                            return Decision::Switch {
                                to: primary,
                                failback: true,
                                evidence: format!(
                                    "failback: {primary} healthy for {} ms",
                                    healthy_for.as_millis()
                                ),
                            };
                        }
                        return Decision::Hold {
                            why: format!(
                                "{primary} healthy for {} ms; failing back after {} ms",
                                healthy_for.as_millis(),
                                d.as_millis()
                            ),
                        };
                    }
                    return Decision::Hold {
                        why: format!("serving {active}; {primary} not healthy, no failback"),
                    };
                }
            }
        }
        Decision::Hold {
            why: format!("serving {active}, healthy"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(setup: Setup, up: bool) -> SetupHealth {
        let x = if up { Health::Up } else { Health::Down };
        SetupHealth {
            setup,
            alice: x,
            bob: Health::Up,
        }
    }

    fn policy(failback: Failback) -> Policy {
        Policy::new(PolicyConfig {
            enabled: true,
            detection: Duration::from_millis(1000),
            dwell: Duration::from_millis(5000),
            max_auto: 2,
            window: Duration::from_secs(60),
            primary: Setup::Hot,
            failback,
        })
    }

    fn t(ms: u64) -> Time {
        Time(ms)
    }

    #[test]
    fn fails_over_after_detection_time_only() {
        let mut p = policy(Failback::Manual);
        let (hot_down, warm_up) = (h(Setup::Hot, false), h(Setup::Warm, true));
        assert!(matches!(
            p.evaluate(t(0), Some(Setup::Hot), &hot_down, &warm_up, false),
            Decision::Hold { .. }
        ));
        assert_eq!(p.next_deadline(t(0)), Some(t(1000)));
        assert!(matches!(
            p.evaluate(t(999), Some(Setup::Hot), &hot_down, &warm_up, false),
            Decision::Hold { .. }
        ));
        match p.evaluate(t(1000), Some(Setup::Hot), &hot_down, &warm_up, false) {
            Decision::Switch {
                to,
                failback,
                evidence,
            } => {
                assert_eq!(to, Setup::Warm);
                assert!(!failback);
                assert!(evidence.contains("hot unhealthy for 1000 ms"), "{evidence}");
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn a_passed_deadline_does_not_hide_the_end_of_the_dwell() {
        let mut p = policy(Failback::Manual);
        p.config.detection = Duration::ZERO;
        p.switched(t(0), false);
        let (hot_down, warm_up) = (h(Setup::Hot, false), h(Setup::Warm, true));
        match p.evaluate(t(100), Some(Setup::Hot), &hot_down, &warm_up, false) {
            Decision::Hold { why } => assert!(why.contains("dwell"), "{why}"),
            d => panic!("{d:?}"),
        }
        assert_eq!(p.next_deadline(t(100)), Some(t(5000)));
    }

    #[test]
    fn unknown_health_of_the_active_setup_moves_nothing() {
        // Regression: at start-up one end's probe had not answered for hot
        // yet while both ends saw warm up; the link moved to warm.
        let mut p = policy(Failback::Manual);
        p.config.detection = Duration::ZERO;
        let hot = SetupHealth {
            setup: Setup::Hot,
            alice: Health::Up,
            bob: Health::Unknown,
        };
        let warm = h(Setup::Warm, true);
        match p.evaluate(t(0), Some(Setup::Hot), &hot, &warm, false) {
            Decision::Hold { .. } => {}
            d => panic!("moved on unknown health: {d:?}"),
        }
    }

    #[test]
    fn a_recovery_within_detection_resets_the_clock() {
        let mut p = policy(Failback::Manual);
        let (down, up, warm) = (
            h(Setup::Hot, false),
            h(Setup::Hot, true),
            h(Setup::Warm, true),
        );
        p.evaluate(t(0), Some(Setup::Hot), &down, &warm, false);
        p.evaluate(t(500), Some(Setup::Hot), &up, &warm, false);
        p.evaluate(t(600), Some(Setup::Hot), &down, &warm, false);
        assert!(matches!(
            p.evaluate(t(1200), Some(Setup::Hot), &down, &warm, false),
            Decision::Hold { .. }
        ));
    }

    #[test]
    fn never_when_both_are_unhealthy_nor_while_paused() {
        let mut p = policy(Failback::Manual);
        let (hot, warm) = (h(Setup::Hot, false), h(Setup::Warm, false));
        p.evaluate(t(0), Some(Setup::Hot), &hot, &warm, false);
        match p.evaluate(t(10_000), Some(Setup::Hot), &hot, &warm, false) {
            Decision::Hold { why } => assert!(why.contains("BOTH SETUPS UNHEALTHY"), "{why}"),
            d => panic!("{d:?}"),
        }
        let warm = h(Setup::Warm, true);
        match p.evaluate(t(10_000), Some(Setup::Hot), &hot, &warm, true) {
            Decision::Hold { why } => assert!(why.contains("paused"), "{why}"),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn dwell_then_cap_then_pause_itself() {
        let mut p = policy(Failback::Manual);
        let (hot_down, warm_up, hot_up, warm_down) = (
            h(Setup::Hot, false),
            h(Setup::Warm, true),
            h(Setup::Hot, true),
            h(Setup::Warm, false),
        );
        p.evaluate(t(0), Some(Setup::Hot), &hot_down, &warm_up, false);
        assert!(matches!(
            p.evaluate(t(1000), Some(Setup::Hot), &hot_down, &warm_up, false),
            Decision::Switch {
                to: Setup::Warm,
                ..
            }
        ));
        p.switched(t(1000), true);
        // Warm fails right away: dwell holds it.
        p.evaluate(t(1100), Some(Setup::Warm), &hot_up, &warm_down, false);
        match p.evaluate(t(2500), Some(Setup::Warm), &hot_up, &warm_down, false) {
            Decision::Hold { why } => assert!(why.contains("dwell"), "{why}"),
            d => panic!("{d:?}"),
        }
        assert!(matches!(
            p.evaluate(t(6000), Some(Setup::Warm), &hot_up, &warm_down, false),
            Decision::Switch { to: Setup::Hot, .. }
        ));
        p.switched(t(6000), true);
        // Third failure within the window: the cap pauses the link.
        p.evaluate(t(6100), Some(Setup::Hot), &hot_down, &warm_up, false);
        match p.evaluate(t(12_000), Some(Setup::Hot), &hot_down, &warm_up, false) {
            Decision::PauseSelf { reason } => assert!(reason.contains("cap 2"), "{reason}"),
            d => panic!("{d:?}"),
        }
        // Outside the window the cap frees up again.
        assert!(matches!(
            p.evaluate(t(70_000), Some(Setup::Hot), &hot_down, &warm_up, false),
            Decision::Switch { .. }
        ));
    }

    #[test]
    fn failback_only_when_configured_and_once_primary_stays_healthy() {
        let (hot_up, warm_up) = (h(Setup::Hot, true), h(Setup::Warm, true));
        let mut manual = policy(Failback::Manual);
        manual.evaluate(t(0), Some(Setup::Warm), &hot_up, &warm_up, false);
        assert!(matches!(
            manual.evaluate(t(100_000), Some(Setup::Warm), &hot_up, &warm_up, false),
            Decision::Hold { .. }
        ));
        let mut after = policy(Failback::After(Duration::from_secs(5)));
        after.switched(t(0), true);
        after.evaluate(t(1000), Some(Setup::Warm), &hot_up, &warm_up, false);
        assert!(matches!(
            after.evaluate(t(5999), Some(Setup::Warm), &hot_up, &warm_up, false),
            Decision::Hold { .. }
        ));
        assert!(matches!(
            after.evaluate(t(6000), Some(Setup::Warm), &hot_up, &warm_up, false),
            Decision::Switch {
                to: Setup::Hot,
                failback: true,
                ..
            }
        ));
        after.switched(t(6000), true);
        // Back on the primary: nothing more to do.
        assert!(matches!(
            after.evaluate(t(60_000), Some(Setup::Hot), &hot_up, &warm_up, false),
            Decision::Hold { .. }
        ));
    }
}
