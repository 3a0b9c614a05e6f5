//! HAProxy, the first-class LB: the adapter that drives it over its
//! Runtime API.
//!
//! Routing is set with `set server <be>/<srv> state ready|maint` and
//! `shutdown sessions server <be>/<srv>`, always break-before-make, and every
//! change is confirmed by reading `show servers state` back. The config
//! ([`HaproxyTemplate::render`]) starts both servers `disabled` and points
//! their health checks at the sidecar: the dead-man's switch.
//!
//! What this relies on was measured on Debian's HAProxy 2.6.12 (see
//! `deploy/haproxy/README.md`):
//! * a server set `ready` from maintenance is UP at once (< 1 ms), without
//!   waiting for `rise` checks; health checks are paused while in maintenance;
//! * HAProxy runs every command of a `;`-separated line even after one fails,
//!   so a break and its make never share a line;
//! * `shutdown sessions server` closes established TCP sessions at once.
//!
//! The health-check settings D rests on are compared with what HAProxy
//! reports ([`checks`]): before the sidecar starts ([`LoadBalancer::preflight`]),
//! on every read-back (check enabled, check target) and with every enable
//! (`fall` and `rise`, which HAProxy 2.6 shows only for servers out of
//! maintenance). An unsafe difference refuses the start, or blocks the
//! server again at once and makes the adapter refuse everything after.
//!
//! # Layout
//! * [`template`]: the config lockstep drives, and D (pure).
//! * `runtime`: the Runtime API client and its answers' parsing.
//! * [`checks`]: reported check settings against the config (pure).
//! * this module: [`Haproxy`], the [`LoadBalancer`] adapter.

pub mod checks;
mod runtime;
pub mod template;

pub use checks::{Difference, ExpectedChecks, Verdict};
pub use template::{down_detection_bound, HaproxyTemplate};

use super::{LbError, LoadBalancer, Observed};
use lockstep_core::{LbTarget, Setup};
use runtime::{
    parse_servers_state, parse_show_info, valid_name, OpState, ProcessIdentity, RuntimeApi,
    ServerState, DEFAULT_COMMAND_TIMEOUT,
};
use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::{debug, debug_span, error, info, warn, Instrument};

/// Drives one HAProxy backend with one server per setup. A clone tracks
/// restarts on its own (each reports a restart to its own caller).
#[derive(Debug)]
pub struct Haproxy {
    /// The Runtime API every command goes through.
    api: RuntimeApi,
    /// The backend holding both setups' servers.
    backend: String,
    /// The server that routes to the hot setup.
    server_hot: String,
    /// The server that routes to the warm setup.
    server_warm: String,
    /// The HAProxy process `observe` last saw, to notice restarts.
    identity: Mutex<Option<ProcessIdentity>>,
    /// What the sidecar's config assumes of the servers' health checks;
    /// `None`: not compared (observers such as the test kit's).
    expected: Option<ExpectedChecks>,
    /// Why this adapter refuses to enable anything, once it found HAProxy's
    /// check settings unsafe.
    refused: Mutex<Option<String>>,
}

impl Clone for Haproxy {
    fn clone(&self) -> Haproxy {
        let last = *self.identity.lock().unwrap_or_else(|p| p.into_inner());
        let refused = self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Haproxy {
            api: self.api.clone(),
            backend: self.backend.clone(),
            server_hot: self.server_hot.clone(),
            server_warm: self.server_warm.clone(),
            identity: Mutex::new(last),
            expected: self.expected.clone(),
            refused: Mutex::new(refused),
        }
    }
}

impl Haproxy {
    /// An adapter for `backend` on the Runtime API at `socket`, with a
    /// `DEFAULT_COMMAND_TIMEOUT` per exchange.
    pub fn new(
        socket: impl Into<PathBuf>,
        backend: impl Into<String>,
        server_hot: impl Into<String>,
        server_warm: impl Into<String>,
    ) -> Haproxy {
        Haproxy {
            api: RuntimeApi::new(socket.into(), DEFAULT_COMMAND_TIMEOUT),
            backend: backend.into(),
            server_hot: server_hot.into(),
            server_warm: server_warm.into(),
            identity: Mutex::new(None),
            expected: None,
            refused: Mutex::new(None),
        }
    }

    /// Compares HAProxy's check settings with `expected` (see [`checks`]):
    /// in `preflight`, on every read-back and with every enable.
    pub fn with_expected_checks(mut self, expected: ExpectedChecks) -> Haproxy {
        self.expected = Some(expected);
        self
    }

    /// Bounds each exchange with HAProxy (connect, send, read) by `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Haproxy {
        self.api.set_timeout(timeout);
        self
    }

    /// The adapter a sidecar's config describes.
    pub(crate) fn from_config(c: &crate::config::Config) -> Haproxy {
        Haproxy::new(
            c.lb.socket.clone(),
            c.lb.backend.clone(),
            c.lb.server_hot.clone(),
            c.lb.server_warm.clone(),
        )
        .with_timeout(c.lb.command_timeout)
        .with_expected_checks(ExpectedChecks {
            fall: c.lb.check_fall,
            rise: c.lb.check_rise,
            inter: c.lb.check_inter,
            timeout: c.lb.check_timeout,
            target: c.http.check_target(),
        })
    }

    /// Reads HAProxy's check settings (`show servers state`, `show stat`)
    /// and compares them with `expected`, changing nothing.
    pub async fn verify_checks(&self, expected: &ExpectedChecks) -> Result<Verdict, LbError> {
        self.check_names()?;
        let commands = [self.show_state(), self.show_stat()];
        let answers = self.api.exchange(&commands).await?;
        let pair = self.pair(&commands[0], &answers[0])?;
        let stat = checks::parse_stat(&commands[1], &answers[1])?;
        Ok(checks::compare(
            expected,
            &[&pair.hot, &pair.warm],
            &stat,
            &checks::is_local_address,
        ))
    }

    /// From now on this adapter enables nothing: `why`.
    fn refuse(&self, why: String) -> LbError {
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        if refused.is_none() {
            error!(backend = %self.backend, %why, "HAProxy's health-check settings break D: refusing to route through it");
            *refused = Some(why.clone());
        }
        LbError::Misconfigured(why)
    }

    fn refused(&self) -> Result<(), LbError> {
        match &*self.refused.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(why) => Err(LbError::Misconfigured(why.clone())),
            None => Ok(()),
        }
    }

    /// Refuses on an unsafe difference; says what differs harmlessly.
    fn judge(&self, verdict: &Verdict) -> Result<(), LbError> {
        if let Some(why) = verdict.refusal() {
            return Err(self.refuse(why));
        }
        for d in verdict.benign() {
            warn!(backend = %self.backend, difference = %d, "HAProxy's check settings differ from the config (harmless for D)");
        }
        Ok(())
    }

    /// The server that routes to `setup`.
    pub(crate) fn server(&self, setup: Setup) -> &str {
        match setup {
            Setup::Hot => &self.server_hot,
            Setup::Warm => &self.server_warm,
        }
    }

    /// Sends one raw Runtime API line (for operators and tests) and returns
    /// HAProxy's answer as is, without judging it.
    pub async fn command(&self, line: &str) -> Result<String, LbError> {
        self.api.command(line).await
    }

    fn check_names(&self) -> Result<(), LbError> {
        for name in [&self.backend, &self.server_hot, &self.server_warm] {
            if !valid_name(name) {
                return Err(LbError::Rejected {
                    command: "(nothing sent)".into(),
                    answer: format!(
                        "not sent: {name:?} is not a HAProxy name (letters, digits, \
                         '-', '_', '.', ':'); fix the backend/server names in the config"
                    ),
                });
            }
        }
        Ok(())
    }

    fn set_state(&self, setup: Setup, state: &str) -> String {
        format!(
            "set server {}/{} state {state}",
            self.backend,
            self.server(setup)
        )
    }

    fn shutdown_sessions(&self, setup: Setup) -> String {
        format!(
            "shutdown sessions server {}/{}",
            self.backend,
            self.server(setup)
        )
    }

    fn show_state(&self) -> String {
        format!("show servers state {}", self.backend)
    }

    /// `show stat` of the backend's servers (type 4).
    fn show_stat(&self) -> String {
        format!("show stat {} 4 -1", self.backend)
    }

    /// Finds both servers in a `show servers state` answer.
    fn pair(&self, command: &str, answer: &str) -> Result<Pair, LbError> {
        let all = parse_servers_state(command, answer)?;
        let find = |setup: Setup| {
            let name = self.server(setup);
            all.iter()
                .find(|s| s.backend == self.backend && s.name == name)
                .cloned()
                .ok_or_else(|| LbError::Rejected {
                    command: command.to_string(),
                    answer: format!(
                        "no server {name:?} in backend {:?} (servers: {}); fix the {setup} server name",
                        self.backend,
                        all.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                })
        };
        Ok(Pair {
            hot: find(Setup::Hot)?,
            warm: find(Setup::Warm)?,
        })
    }

    /// Runs state-changing commands followed by `show servers state`: any
    /// answer to a change other than an empty line is a rejection.
    async fn change_and_read(&self, changes: Vec<String>) -> Result<Pair, LbError> {
        Ok(self.change_and_read_with(changes, false).await?.0)
    }

    /// `change_and_read`, with `show stat` read on the same line (after the
    /// changes) when `stat`.
    async fn change_and_read_with(
        &self,
        changes: Vec<String>,
        stat: bool,
    ) -> Result<(Pair, Vec<checks::StatRow>), LbError> {
        let n = changes.len();
        let mut commands = changes;
        if stat {
            commands.push(self.show_stat());
        }
        commands.push(self.show_state());
        let answers = self.api.exchange(&commands).await?;
        let (show, answer) = match (commands.last(), answers.last()) {
            (Some(c), Some(a)) => (c, a),
            _ => return Err(LbError::Parse("HAProxy sent no answer".into())),
        };
        for (command, answer) in commands.iter().zip(&answers).take(n) {
            if !answer.trim().is_empty() {
                return Err(LbError::Rejected {
                    command: command.clone(),
                    answer: answer.trim().to_string(),
                });
            }
        }
        let rows = if stat {
            checks::parse_stat(&commands[n], &answers[n])?
        } else {
            Vec::new()
        };
        Ok((self.pair(show, answer)?, rows))
    }
}

/// Which setups an LB may route new sessions to, as HAProxy reports it
/// (see `ServerState::may_route`: anything up and out of maintenance
/// counts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Routing {
    pub hot: bool,
    pub warm: bool,
}

impl Haproxy {
    /// Reads what the LB may route to, without judging it: unlike
    /// [`LoadBalancer::observe`], a state lockstep never sets (both setups)
    /// is reported rather than an error. For observers such as the chaos
    /// suite's sampler.
    pub async fn routing(&self) -> Result<Routing, LbError> {
        self.check_names()?;
        let command = self.show_state();
        let answer = self.command(&command).await?;
        let pair = self.pair(&command, &answer)?;
        Ok(Routing {
            hot: pair.hot.may_route(),
            warm: pair.warm.may_route(),
        })
    }
}

/// Both servers of the backend, as read back.
struct Pair {
    hot: ServerState,
    warm: ServerState,
}

impl Pair {
    fn get(&self, setup: Setup) -> &ServerState {
        match setup {
            Setup::Hot => &self.hot,
            Setup::Warm => &self.warm,
        }
    }

    /// What the LB routes new sessions to, or `None` for a state lockstep
    /// never sets (both may route, or one is half up).
    fn target(&self) -> Option<LbTarget> {
        match (self.hot.may_route(), self.warm.may_route()) {
            (false, false) => Some(LbTarget::Blocked),
            (true, false) if self.hot.serving() => Some(LbTarget::Serve(Setup::Hot)),
            (false, true) if self.warm.serving() => Some(LbTarget::Serve(Setup::Warm)),
            _ => None,
        }
    }
}

impl fmt::Display for Pair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; {}", self.hot, self.warm)
    }
}

fn not_confirmed(wanted: LbTarget, pair: &Pair, why: &str) -> LbError {
    LbError::NotConfirmed {
        wanted,
        seen: format!("{why}: {pair}"),
    }
}

impl LoadBalancer for Haproxy {
    /// Never reports `restarted`: what it confirms was set on whichever
    /// process answered. Restarts are `observe`'s to report.
    async fn apply(
        &self,
        target: LbTarget,
        enable_before: Option<Instant>,
    ) -> Result<Observed, LbError> {
        self.check_names()?;
        let started = Instant::now();
        let span = debug_span!("haproxy_apply", %target, backend = %self.backend);
        async {
            match target {
                LbTarget::Blocked => {
                    let mut changes = Vec::new();
                    for s in Setup::ALL {
                        changes.push(self.set_state(s, "maint"));
                        changes.push(self.shutdown_sessions(s));
                    }
                    let pair = self.change_and_read(changes).await?;
                    if !(pair.hot.in_maint() && pair.warm.in_maint()) {
                        return Err(not_confirmed(target, &pair, "not both in maintenance"));
                    }
                }
                LbTarget::Serve(y) => {
                    let x = y.other();
                    // Break, confirmed, before make: on its own line, since
                    // HAProxy would run the make even if the break failed.
                    let pair = self
                        .change_and_read(vec![self.set_state(x, "maint"), self.shutdown_sessions(x)])
                        .await?;
                    if !pair.get(x).in_maint() {
                        return Err(not_confirmed(
                            target,
                            &pair,
                            &format!("{x} did not go into maintenance; {y} left as it was"),
                        ));
                    }
                    debug!(elapsed_us = started.elapsed().as_micros() as u64, "break confirmed");
                    // From maintenance, `ready` is UP at once (health set to
                    // `rise`). A server already ready but DOWN by its checks
                    // stays DOWN until `rise` checks pass: lockstep does not
                    // force `health up` over the sidecar's own answers.
                    // Checked as late as possible: `ready` is UP at once and
                    // overrides the health checks that blocked a silent
                    // sidecar, so a late make would outlive the lease.
                    self.refused()?;
                    if enable_before.is_some_and(|d| Instant::now() >= d) {
                        return Err(LbError::Expired { wanted: target });
                    }
                    let pair = match &self.expected {
                        None => self.change_and_read(vec![self.set_state(y, "ready")]).await?,
                        Some(expected) => self.enable_and_verify(y, expected).await?,
                    };
                    if !(pair.get(y).serving() && pair.get(x).in_maint()) {
                        let why = if pair.get(y).op_state == OpState::Stopped && !pair.get(y).in_maint() {
                            format!(
                                "{y} is enabled but DOWN by its health check: the check endpoint \
                                 does not answer 200 for it; HAProxy brings it up after `rise` passing checks"
                            )
                        } else {
                            format!("{y} is not serving or {x} left maintenance")
                        };
                        return Err(not_confirmed(target, &pair, &why));
                    }
                }
            }
            debug!(elapsed_us = started.elapsed().as_micros() as u64, "haproxy apply confirmed");
            Ok(Observed {
                target,
                restarted: false,
            })
        }
        .instrument(span)
        .await
    }

    async fn observe(&self) -> Result<Observed, LbError> {
        self.check_names()?;
        let commands = ["show info".to_string(), self.show_state()];
        let answers = self.api.exchange(&commands).await?;
        let identity = parse_show_info(&commands[0], &answers[0])?;
        let pair = self.pair(&commands[1], &answers[1])?;
        if let Some(expected) = &self.expected {
            // What `show servers state` says of the checks, on every read
            // (also of a restarted HAProxy): enabled, aimed at us.
            let verdict = checks::compare(
                expected,
                &[&pair.hot, &pair.warm],
                &[],
                &checks::is_local_address,
            );
            if let Some(why) = verdict.refusal() {
                return Err(self.refuse(why));
            }
        }
        let target = pair.target().ok_or_else(|| {
            not_confirmed(
                LbTarget::Blocked,
                &pair,
                "a state lockstep never sets (both setups, or one half up)",
            )
        })?;
        // Only a successful read consumes a restart, so none is lost.
        let mut last = self.identity.lock().unwrap_or_else(|p| p.into_inner());
        let restarted = last.is_some_and(|prev| prev != identity);
        if restarted {
            debug!(?identity, previous = ?*last, "haproxy restarted");
        }
        *last = Some(identity);
        Ok(Observed { target, restarted })
    }

    fn guarantees(&self) -> &'static str {
        "HAProxy: break-before-make within this LB (old server in maintenance with sessions shut, confirmed, before the new one is enabled), every change read back, and a dead-man's switch (health checks on the sidecar) bounded by D"
    }

    async fn preflight(&self) -> Result<(), LbError> {
        let Some(expected) = &self.expected else {
            return Ok(());
        };
        let verdict = self.verify_checks(expected).await?;
        self.judge(&verdict)?;
        if verdict.unshown.is_empty() {
            info!(backend = %self.backend, "HAProxy's check settings match the config");
        } else {
            info!(
                backend = %self.backend,
                unshown = %verdict.unshown.join(", "),
                "HAProxy's check settings match the config as far as it shows them; HAProxy shows fall and rise only for servers out of maintenance, so those are compared when a server is enabled"
            );
        }
        Ok(())
    }

    fn refusal(&self) -> Option<String> {
        self.refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Haproxy {
    /// Enables `y` and, on the same Runtime API line, reads the check
    /// settings HAProxy shows only now that `y` is out of maintenance.
    /// On an unsafe difference `y` goes back into maintenance at once
    /// (with its sessions shut) and the adapter refuses from then on.
    async fn enable_and_verify(
        &self,
        y: Setup,
        expected: &ExpectedChecks,
    ) -> Result<Pair, LbError> {
        let (pair, stat) = self
            .change_and_read_with(vec![self.set_state(y, "ready")], true)
            .await?;
        let verdict = checks::compare(
            expected,
            &[&pair.hot, &pair.warm],
            &stat,
            &checks::is_local_address,
        );
        if verdict.refusal().is_some() {
            let block = vec![self.set_state(y, "maint"), self.shutdown_sessions(y)];
            match self.change_and_read(block).await {
                Ok(p) if p.get(y).in_maint() => {}
                Ok(p) => {
                    error!(state = %p, "could not put {y} back into maintenance; its health checks must block it")
                }
                Err(e) => {
                    error!(error = %e, "could not put {y} back into maintenance; its health checks must block it")
                }
            }
        }
        self.judge(&verdict)?;
        Ok(pair)
    }
}

#[cfg(test)]
mod tests {
    use super::runtime::tests::{state, FRESH, WARM_DOWN, WARM_DRAIN, WARM_UP};
    use super::*;

    fn adapter() -> Haproxy {
        Haproxy::new("/nonexistent", "kme", "hot", "warm")
    }

    fn pair_of(lines: &str) -> Pair {
        adapter()
            .pair("show servers state kme", &state(lines))
            .expect("pair")
    }

    #[test]
    fn config_disabled_servers_are_in_maintenance_until_ready() {
        let p = pair_of(FRESH);
        assert!(p.hot.in_maint() && p.warm.in_maint());
        assert_eq!(p.target(), Some(LbTarget::Blocked));
        // 0x04 alone ("disabled in the config") is not maintenance.
        let p = pair_of(WARM_UP);
        assert!(!p.warm.in_maint() && p.warm.serving());
        assert_eq!(p.target(), Some(LbTarget::Serve(Setup::Warm)));
    }

    #[test]
    fn a_server_down_by_its_checks_routes_nowhere() {
        let p = pair_of(WARM_DOWN);
        assert!(!p.warm.in_maint() && !p.warm.may_route());
        assert_eq!(p.target(), Some(LbTarget::Blocked));
        assert!(p.warm.to_string().contains("DOWN"), "{}", p.warm);
    }

    #[test]
    fn states_lockstep_never_sets_are_not_a_target() {
        // Draining: up, but takes no new sessions.
        assert_eq!(pair_of(WARM_DRAIN).target(), None);
        // Both up.
        let both = WARM_UP.replace("hot 127.0.0.1 0 5", "hot 127.0.0.1 2 4");
        assert_eq!(pair_of(&both).target(), None);
        // Starting (slowstart) may route but is not serving.
        let starting = WARM_UP.replace("warm 127.0.0.1 2 4", "warm 127.0.0.1 1 4");
        assert_eq!(pair_of(&starting).target(), None);
    }

    #[test]
    fn a_missing_server_is_named() {
        let err = Haproxy::new("/x", "kme", "hot", "tepid")
            .pair("show servers state kme", &state(FRESH))
            .err()
            .expect("missing server");
        assert!(err.to_string().contains("\"tepid\""), "{err}");
    }

    #[test]
    fn names_that_would_split_a_command_are_refused() {
        assert!(valid_name("kme") && valid_name("hot-1.a:b_c"));
        for bad in ["", "a b", "a;b", "a\nb", "a/b", "a#b"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        let h = Haproxy::new("/x", "kme", "hot; shutdown frontend x", "warm");
        assert!(matches!(h.check_names(), Err(LbError::Rejected { .. })));
    }
}
