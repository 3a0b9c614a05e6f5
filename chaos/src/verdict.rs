//! The verdict: judges a run from its history file alone.
//!
//! **Safety (S1).** A run fails on
//! * any mismatched key pair (Alice's key unknown or different at Bob);
//! * any LB sample showing both setups routable at once;
//! * any two LBs *known* to route to different setups at one instant.
//!
//! What is known about an LB comes from its samples. A sample read over
//! `[start, end]` saw the state at some instant inside that window. For a
//! run of consecutive samples showing the same serving state X (no other
//! sample between them), the LB was in X at some instant of the first
//! window and at some instant of the last, so it was in X throughout
//! `[first.end, last.start]`, the *known interval* (empty for a run of one
//! sample). This assumes no excursion shorter than the sampling interval
//! (X → other → X between two samples); lockstep never makes one (a switch
//! takes longer than a sampling interval, and a dead-man's block lasts
//! until the sidecar is back). Two LBs whose known intervals for
//! different setups overlap were routing to different setups during the
//! overlap: a violation, reported with the samples bounding both
//! intervals. An unreadable sample ends a run, so nothing is inferred
//! across a gap in knowledge. The check can miss a split shorter than the
//! sampling interval (the key-pair traffic may still catch it); it never
//! reports one that did not happen.
//!
//! **Liveness.** For every heal after which no fault is active, the time
//! until every LB's latest sample shows the same one setup and a key pair
//! started after the heal has matched. Over [`liveness_bound`] (or never)
//! fails the run. Also fails: a fault never healed, a scenario check that
//! failed, a run with no matched pair or no sample of some LB (it would
//! prove nothing).
//!
//! **Dead-man's switch.** For a sidecar killed or frozen while its LB was
//! routing: how long until that LB was seen blocked (before any heal).
//! Slower than D fails the run: S1's timing argument assumes D.
//!
//! **Forged pushes** (S2). Every Drain or Serve a `forged-push` fault sent
//! must be refused: one the member answered OK (applied) is a violation.
//! Each such fault must have both its answers recorded, or the run proves
//! nothing about it and fails.
//!
//! **etcd restored from a snapshot.** etcd is down from the inject until
//! the restored nodes start, for at least the lease TTL, so every member
//! fences itself: an LB seen routing (in a sample read entirely after
//! TTL − margin + D from the stop, the last acknowledged keep-alive being
//! no later than the stop) while etcd is still down fails the run. The
//! outage while etcd is down is expected; the longest outage is also
//! reported without the outages that overlap a restore.

use super::history::{
    Event, FaultOp, FaultRecord, ForgedRecord, LbSample, LbState, PairOutcome, PairRecord,
    PushAnswer, StartInfo, TimingInfo, TransitRecord,
};
use lockstep_core::Setup;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

/// Longest allowed time from the last heal to a serving link: a dead
/// leader's lease must run out (TTL), its LB's checks must fail (D), and a
/// push may wait for the leader's resend timer; three times that sum, as
/// a generous margin for a loaded machine.
pub fn liveness_bound(t: &TimingInfo) -> Duration {
    let sum = t.lease_ttl_ms + t.down_detection_ms + 2 * t.resend_ms;
    Duration::from_millis(3 * sum)
}

/// Slack on D for the dead-man's measurement: the first blocked sample is
/// read after the LB blocked.
const DEADMAN_SLACK: Duration = Duration::from_millis(50);

/// By when, after etcd stopped answering, every member has fenced itself:
/// its last acknowledged keep-alive was sent no later than the stop; it
/// blocks its LB TTL − margin after it, and a frozen sidecar's LB fails
/// its checks by then too (DESIGN §3, self-fencing); D more as slack.
pub fn fence_bound(t: &TimingInfo) -> Duration {
    Duration::from_millis((t.lease_ttl_ms + t.down_detection_ms).saturating_sub(t.margin_ms))
}

/// The kind of the fault that restores etcd from a snapshot.
pub const SNAPSHOT_RESTORE: &str = "snapshot-restore";
/// The kind of the fault that sends forged pushes.
pub const FORGED_PUSH: &str = "forged-push";
/// The kinds of fault that leave etcd unreachable for one member or for
/// every one: what failsafe is for. The key delivery lost while one is
/// held is reported ([`Verdict::lost_to_etcd`]).
pub const ETCD_UNREACHABLE: &[&str] = &[
    "etcd-freeze",
    "etcd-quorum-loss",
    "net-cut-etcd",
    "net-cut-etcd-all",
    SNAPSHOT_RESTORE,
];
/// Answers each forged-push fault records (a Serve and a Drain).
const PUSHES_PER_FORGERY: usize = 2;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PairCounts {
    pub matched: u64,
    pub mismatched: u64,
    pub failed: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwitchCounts {
    pub requested: u64,
    /// Answers by result (`completed`, `accepted`, `already`, `refused`,
    /// `error`).
    pub results: BTreeMap<String, u64>,
}

/// A sample's window, for reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleAt {
    pub start_us: u64,
    pub end_us: u64,
}

impl fmt::Display for SampleAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {}]", ms(self.start_us), ms(self.end_us))
    }
}

/// An LB known to be in `state` from the end of `first` to the start of
/// `last`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Known {
    pub lb: String,
    pub state: LbState,
    pub first: SampleAt,
    pub last: SampleAt,
    pub samples: usize,
}

impl Known {
    fn known_from(&self) -> u64 {
        self.first.end_us
    }

    fn known_to(&self) -> u64 {
        self.last.start_us
    }
}

impl fmt::Display for Known {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} routes {} over [{}, {}] ({} samples, first read {}, last read {})",
            self.lb,
            self.state.as_str(),
            ms(self.known_from()),
            ms(self.known_to()),
            self.samples,
            self.first,
            self.last
        )
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Violation {
    MismatchedPair(PairRecord),
    /// Two LBs routing to different setups at once, over `[from, to]`.
    Split {
        a: Known,
        b: Known,
        from_us: u64,
        to_us: u64,
    },
    /// One LB routing to both setups.
    Both {
        lb: String,
        at: SampleAt,
    },
    /// A member applied a push that no leader sent and etcd never
    /// confirmed (S2).
    ForgedApplied(ForgedRecord),
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::MismatchedPair(p) => write!(
                f,
                "mismatched pair #{} over [{}, {}]: alice answered by {}, bob by {}: {}",
                p.seq,
                ms(p.start_us),
                ms(p.end_us),
                setup_name(p.alice),
                setup_name(p.bob),
                p.detail.as_deref().unwrap_or("")
            ),
            Violation::Split {
                a,
                b,
                from_us,
                to_us,
            } => write!(
                f,
                "LBs on different setups for {} over [{}, {}]: {a}; {b}",
                ms(to_us - from_us),
                ms(*from_us),
                ms(*to_us)
            ),
            Violation::Both { lb, at } => {
                write!(f, "{lb} routes to both setups (sample read {at})")
            }
            Violation::ForgedApplied(p) => write!(
                f,
                "forged {} of {} at epoch {} (token {}) applied by {} at {} (fault #{}): {:?}",
                p.phase,
                p.setup,
                p.epoch,
                p.token,
                p.member,
                ms(p.answered_us),
                p.fault_id,
                p.answer
            ),
        }
    }
}

/// Time to a serving link after a heal that left no fault active.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heal {
    pub fault_id: u64,
    pub fault: String,
    pub target: String,
    pub at_us: u64,
    /// `None`: not serving by the end of the history.
    pub recovered_after: Option<Duration>,
    /// The setup every LB served.
    pub setup: Option<Setup>,
    /// Another fault was injected before the link served again (an etcd
    /// quorum loss right after a restart): this heal is not judged; the
    /// heal after that one is.
    pub interrupted_by: Option<u64>,
}

/// How long a killed or frozen sidecar's LB kept routing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deadman {
    pub fault_id: u64,
    pub fault: String,
    pub lb: String,
    /// `None`: healed before its LB was seen blocked.
    pub blocked_after: Option<Duration>,
}

/// etcd restored from a snapshot: down from `at_us` until
/// `etcd_started_us`, and what every LB did meanwhile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restore {
    pub fault_id: u64,
    /// etcd stopped.
    pub at_us: u64,
    /// The restored nodes started (`None`: never healed).
    pub etcd_started_us: Option<u64>,
    /// By when every LB must route nowhere ([`fence_bound`]).
    pub fence_bound: Duration,
    /// Per LB: when it was first seen blocked after the stop, before etcd
    /// started again (`None`: not seen blocked).
    pub blocked_after: Vec<(String, Option<Duration>)>,
}

/// A fault that left etcd unreachable ([`ETCD_UNREACHABLE`]), held from
/// `from_us` to `to_us` (its heal, or the end of the history).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdOutage {
    pub fault_id: u64,
    pub fault: String,
    pub from_us: u64,
    pub to_us: u64,
    /// Key delivery lost: every outage of the key pairs that overlaps the
    /// fault, whole (recovery after the heal included).
    pub lost: Duration,
    /// The link was settled when it began (every LB serving one setup),
    /// no switchover was in flight or asked while it was held, and no
    /// other fault was held meanwhile: what it lost is etcd's alone.
    pub alone: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Verdict {
    pub scenario: String,
    pub seed: u64,
    pub mutation: Option<String>,
    pub dir: String,
    pub bound: Duration,
    pub down_detection: Duration,
    pub duration: Duration,
    pub pairs: PairCounts,
    /// From the first failed pair after a matched one to the end of the
    /// next matched pair (as the key-pair traffic counts it).
    pub longest_outage: Duration,
    /// Every outage, `(from_us, to_us)`.
    pub outages: Vec<(u64, u64)>,
    /// The longest outage that overlaps no etcd restore (while etcd is
    /// down every member fences itself: that outage is expected).
    pub longest_outage_outside_restores: Duration,
    pub samples: usize,
    pub unreadable: usize,
    /// Samples by LB state.
    pub states: BTreeMap<String, usize>,
    pub switches: SwitchCounts,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, u64>,
    /// Answers to forged pushes, by [`PushAnswer::label`].
    pub forged: BTreeMap<String, u64>,
    pub restores: Vec<Restore>,
    /// The SAE pairs with a transit gap (`None`: a history without them).
    pub transit: Option<TransitRecord>,
    /// Faults that left etcd unreachable, and what each cost.
    pub etcd_outages: Vec<EtcdOutage>,
    /// Key delivery lost to them: the outages that overlap any of them,
    /// each counted once.
    pub lost_to_etcd: Duration,
    pub violations: Vec<Violation>,
    pub heals: Vec<Heal>,
    pub deadman: Vec<Deadman>,
    /// The verdict's own failures other than safety violations: liveness,
    /// a fault never healed, the dead-man's bound, a run proving nothing.
    pub failures: Vec<String>,
    /// Expectations the scenario recorded and saw fail (e.g. "a switchover
    /// with the etcd leader dead completes").
    pub failed_checks: Vec<String>,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.violations.is_empty() && self.failures.is_empty() && self.failed_checks.is_empty()
    }

    /// S1 held and the link recovered after every heal (scenario checks
    /// aside).
    pub fn safe_and_live(&self) -> bool {
        self.violations.is_empty() && self.failures.is_empty()
    }

    /// Mismatched pairs and split/both LB samples, counted separately.
    pub fn violation_counts(&self) -> (usize, usize) {
        let pairs = self
            .violations
            .iter()
            .filter(|v| matches!(v, Violation::MismatchedPair(_)))
            .count();
        let lbs = self
            .violations
            .iter()
            .filter(|v| matches!(v, Violation::Split { .. } | Violation::Both { .. }))
            .count();
        (pairs, lbs)
    }

    /// Forged pushes a member applied.
    pub fn forged_applied(&self) -> usize {
        self.violations
            .iter()
            .filter(|v| matches!(v, Violation::ForgedApplied(_)))
            .count()
    }

    /// The etcd restore the longest outage overlaps, if any.
    pub fn longest_outage_restore(&self) -> Option<u64> {
        let (from, to) = self
            .outages
            .iter()
            .copied()
            .max_by_key(|(a, b)| b.saturating_sub(*a))?;
        self.restores
            .iter()
            .find(|r| overlaps_restore(r, from, to))
            .map(|r| r.fault_id)
    }

    /// How long etcd was unreachable in all (overlapping faults counted
    /// each).
    pub fn etcd_unreachable(&self) -> Duration {
        self.etcd_outages
            .iter()
            .map(|o| Duration::from_micros(o.to_us.saturating_sub(o.from_us)))
            .sum()
    }

    /// The longest time to heal measured in this run (heals interrupted
    /// by another fault left out).
    pub fn longest_heal(&self) -> Option<Duration> {
        self.heals
            .iter()
            .filter(|h| h.interrupted_by.is_none())
            .filter_map(|h| h.recovered_after)
            .max()
    }

    pub fn longest_deadman(&self) -> Option<Duration> {
        self.deadman.iter().filter_map(|d| d.blocked_after).max()
    }
}

fn ms(us: u64) -> String {
    format!("{:.1}ms", us as f64 / 1000.0)
}

fn dur(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

fn setup_name(s: Option<Setup>) -> &'static str {
    s.map_or("nothing", Setup::as_str)
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (mp, ms_) = self.violation_counts();
        writeln!(
            f,
            "{} {} seed={}{} ({:.1}s, {})",
            if self.passed() { "PASS" } else { "FAIL" },
            self.scenario,
            self.seed,
            self.mutation
                .as_ref()
                .map(|m| format!(" mutation={m}"))
                .unwrap_or_default(),
            self.duration.as_secs_f64(),
            self.dir
        )?;
        writeln!(
            f,
            "  pairs: matched {}, mismatched {}, failed {}; longest outage {}{}",
            self.pairs.matched,
            self.pairs.mismatched,
            self.pairs.failed,
            dur(self.longest_outage),
            match self.longest_outage_restore() {
                Some(id) => format!(
                    " (overlaps etcd restore #{id}: expected, every member fences itself while etcd is down; longest outside restores {})",
                    dur(self.longest_outage_outside_restores)
                ),
                None => String::new(),
            }
        )?;
        let states: Vec<String> = self
            .states
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        writeln!(
            f,
            "  LB samples: {} ({}); violations: {mp} mismatched pairs, {ms_} LB samples",
            self.samples,
            states.join(", ")
        )?;
        let results: Vec<String> = self
            .switches
            .results
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        writeln!(
            f,
            "  switchovers: {} requested ({})",
            self.switches.requested,
            results.join(", ")
        )?;
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        writeln!(
            f,
            "  faults: {}",
            if faults.is_empty() {
                "none".into()
            } else {
                faults.join(", ")
            }
        )?;
        if !self.forged.is_empty() {
            let answers: Vec<String> = self
                .forged
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            writeln!(
                f,
                "  forged pushes: {} ({}); applied: {}",
                self.forged.values().sum::<u64>(),
                answers.join(", "),
                self.forged_applied()
            )?;
        }
        for r in &self.restores {
            let lbs: Vec<String> = r
                .blocked_after
                .iter()
                .map(|(lb, b)| match b {
                    Some(d) => format!("{lb} blocked after {}", dur(*d)),
                    None => format!("{lb} not seen blocked"),
                })
                .collect();
            match r.etcd_started_us {
                Some(up) => writeln!(
                    f,
                    "  etcd restore #{} at {}: etcd down for {} (expected outage: every member fences itself); {} (bound {})",
                    r.fault_id,
                    ms(r.at_us),
                    dur(Duration::from_micros(up.saturating_sub(r.at_us))),
                    lbs.join(", "),
                    dur(r.fence_bound)
                )?,
                None => writeln!(
                    f,
                    "  etcd restore #{} at {}: etcd never started again",
                    r.fault_id,
                    ms(r.at_us)
                )?,
            }
        }
        if let Some(t) = &self.transit {
            writeln!(
                f,
                "  SAE pairs in transit ({} pairs, {} ms gap): matched {}, stranded {}, failed {}",
                t.pairs, t.gap_ms, t.matched, t.stranded, t.failed
            )?;
        }
        for o in &self.etcd_outages {
            writeln!(
                f,
                "  etcd unreachable: #{} {} at {} for {}; key delivery lost meanwhile and until it recovered: {}{}",
                o.fault_id,
                o.fault,
                ms(o.from_us),
                dur(Duration::from_micros(o.to_us.saturating_sub(o.from_us))),
                dur(o.lost),
                if o.alone {
                    " (alone: the link settled, no other fault, no switchover)"
                } else {
                    ""
                }
            )?;
        }
        for h in &self.heals {
            if let Some(by) = h.interrupted_by {
                writeln!(
                    f,
                    "  heal of #{} {} {} at {}: fault #{by} came before the link served again; judged from the heal after it",
                    h.fault_id,
                    h.fault,
                    h.target,
                    ms(h.at_us)
                )?;
                continue;
            }
            match h.recovered_after {
                Some(d) => writeln!(
                    f,
                    "  heal of #{} {} {} at {}: all LBs on {} and a pair matched after {} (bound {})",
                    h.fault_id,
                    h.fault,
                    h.target,
                    ms(h.at_us),
                    setup_name(h.setup),
                    dur(d),
                    dur(self.bound)
                )?,
                None => writeln!(
                    f,
                    "  heal of #{} {} {} at {}: never serving again",
                    h.fault_id,
                    h.fault,
                    h.target,
                    ms(h.at_us)
                )?,
            }
        }
        for d in &self.deadman {
            match d.blocked_after {
                Some(b) => writeln!(
                    f,
                    "  dead-man's switch: #{} {} -> LB {} blocked {} after the fault (D = {})",
                    d.fault_id,
                    d.fault,
                    d.lb,
                    dur(b),
                    dur(self.down_detection)
                )?,
                None => writeln!(
                    f,
                    "  dead-man's switch: #{} {} -> LB {} healed before it blocked",
                    d.fault_id, d.fault, d.lb
                )?,
            }
        }
        // A few of each kind: LB evidence must not drown in pairs.
        const SHOWN: usize = 5;
        let (pairs, lbs): (Vec<&Violation>, Vec<&Violation>) = self
            .violations
            .iter()
            .partition(|v| matches!(v, Violation::MismatchedPair(_)));
        for group in [lbs, pairs] {
            for v in group.iter().take(SHOWN) {
                writeln!(f, "  VIOLATION {v}")?;
            }
            if group.len() > SHOWN {
                writeln!(f, "  ... {} more like this", group.len() - SHOWN)?;
            }
        }
        for x in &self.failures {
            writeln!(f, "  FAILURE {x}")?;
        }
        for x in &self.failed_checks {
            writeln!(f, "  FAILED CHECK {x}")?;
        }
        Ok(())
    }
}

/// Judges one history.
pub fn judge(events: &[Event]) -> Verdict {
    let mut v = Verdict::default();
    let start: Option<&StartInfo> = events.iter().find_map(|e| match e {
        Event::Start(s) => Some(s),
        _ => None,
    });
    let mut lb_names: Vec<String> = Vec::new();
    match start {
        Some(s) => {
            v.scenario = s.scenario.clone();
            v.seed = s.seed;
            v.mutation = s.mutation.clone();
            v.dir = s.dir.clone();
            v.bound = Duration::from_millis(s.liveness_bound_ms);
            v.down_detection = Duration::from_millis(s.timing.down_detection_ms);
            lb_names = s.lbs.clone();
        }
        None => v
            .failures
            .push("no start event: not a complete history".into()),
    }
    v.duration = Duration::from_micros(events.iter().map(Event::at_us).max().unwrap_or(0));

    let mut pairs: Vec<&PairRecord> = Vec::new();
    let mut samples: BTreeMap<&str, Vec<&LbSample>> = BTreeMap::new();
    let mut faults: Vec<&FaultRecord> = Vec::new();
    let mut forged: Vec<&ForgedRecord> = Vec::new();
    // Switchovers asked, and when each was answered (if it was).
    let mut asked: Vec<(u64, u64)> = Vec::new();
    let mut answered: BTreeMap<u64, u64> = BTreeMap::new();
    for e in events {
        match e {
            Event::Switch(s) => asked.push((s.id, s.at_us)),
            Event::SwitchResult(r) => {
                answered.insert(r.id, r.at_us);
            }
            _ => {}
        }
        match e {
            Event::Pair(p) => pairs.push(p),
            Event::Forged(p) => forged.push(p),
            Event::Lb(s) => samples.entry(s.lb.as_str()).or_default().push(s),
            Event::Fault(f) => faults.push(f),
            Event::Switch(_) => v.switches.requested += 1,
            Event::Transit(t) => v.transit = Some(t.clone()),
            Event::SwitchResult(r) => *v.switches.results.entry(r.result.clone()).or_default() += 1,
            Event::Check(c) if !c.ok => v.failed_checks.push(format!(
                "check {:?} failed at {}: {}",
                c.name,
                ms(c.at_us),
                c.detail.as_deref().unwrap_or("")
            )),
            _ => {}
        }
    }
    for name in &lb_names {
        samples.entry(name.as_str()).or_default();
    }
    pairs.sort_by_key(|p| p.seq);
    for s in samples.values_mut() {
        s.sort_by_key(|s| (s.start_us, s.end_us));
    }

    check_pairs(&pairs, &mut v);
    check_lbs(&samples, &mut v);
    check_faults(&faults, &pairs, &samples, &mut v);
    check_forged(&faults, &forged, &mut v);
    if let Some(s) = start {
        check_restores(&faults, &samples, fence_bound(&s.timing), &mut v);
    }
    let end_us = v.duration.as_micros() as u64;
    let switching: Vec<(u64, u64)> = asked
        .iter()
        .map(|(id, at)| (*at, answered.get(id).copied().unwrap_or(end_us)))
        .collect();
    check_etcd_outages(&faults, &samples, &switching, v.duration, &mut v);
    v.longest_outage_outside_restores = v
        .outages
        .iter()
        .filter(|(a, b)| !v.restores.iter().any(|r| overlaps_restore(r, *a, *b)))
        .map(|(a, b)| Duration::from_micros(b.saturating_sub(*a)))
        .max()
        .unwrap_or_default();
    v
}

/// The faults that left etcd unreachable, and the key delivery lost while
/// each was held (`end`: the end of the history, for one never healed).
/// `switching`: each switchover from its request to its answer.
fn check_etcd_outages(
    faults: &[&FaultRecord],
    samples: &BTreeMap<&str, Vec<&LbSample>>,
    switching: &[(u64, u64)],
    end: Duration,
    v: &mut Verdict,
) {
    let end_us = end.as_micros() as u64;
    let healed_at = |id: u64| {
        faults
            .iter()
            .find(|h| h.op == FaultOp::Heal && h.id == id)
            .map_or(end_us, |h| h.at_us)
    };
    // Every LB's last sample before `at` serves, all the same setup.
    let settled_at = |at: u64| {
        let last: Vec<Option<LbState>> = samples
            .values()
            .map(|list| list.iter().rev().find(|s| s.end_us <= at).map(|s| s.state))
            .collect();
        matches!(last.first(), Some(Some(LbState::Hot | LbState::Warm)))
            && last.iter().all(|s| *s == last[0])
    };
    let overlapping = |from: u64, to: u64| {
        v.outages
            .iter()
            .filter(move |(a, b)| *a < to && from < *b)
            .map(|(a, b)| Duration::from_micros(b.saturating_sub(*a)))
    };
    let mut outages = Vec::new();
    for f in faults
        .iter()
        .filter(|f| f.op == FaultOp::Inject && ETCD_UNREACHABLE.contains(&f.fault.as_str()))
    {
        let to_us = healed_at(f.id);
        let others = faults.iter().any(|o| {
            o.op == FaultOp::Inject && o.id != f.id && o.at_us < to_us && f.at_us < healed_at(o.id)
        });
        // A switchover in flight or asked meanwhile (one that waits for a
        // member cut from etcd to fence blocks the link by design).
        let switched = switching
            .iter()
            .any(|(asked, answered)| *asked < to_us && f.at_us < *answered);
        outages.push(EtcdOutage {
            fault_id: f.id,
            fault: f.fault.clone(),
            from_us: f.at_us,
            to_us,
            lost: overlapping(f.at_us, to_us).sum(),
            alone: settled_at(f.at_us) && !others && !switched,
        });
    }
    v.lost_to_etcd = v
        .outages
        .iter()
        .filter(|(a, b)| outages.iter().any(|o| *a < o.to_us && o.from_us < *b))
        .map(|(a, b)| Duration::from_micros(b.saturating_sub(*a)))
        .sum();
    v.etcd_outages = outages;
}

/// Does the outage `[from, to]` overlap etcd's downtime of `r` (until the
/// end of the history when etcd never came back)?
fn overlaps_restore(r: &Restore, from: u64, to: u64) -> bool {
    from < r.etcd_started_us.unwrap_or(u64::MAX) && r.at_us < to
}

/// Every forged push refused, and both answers of every forged-push
/// fault recorded.
fn check_forged(faults: &[&FaultRecord], forged: &[&ForgedRecord], v: &mut Verdict) {
    for p in forged {
        *v.forged.entry(p.answer.label()).or_default() += 1;
        if matches!(p.answer, PushAnswer::Applied { .. }) {
            v.violations.push(Violation::ForgedApplied((*p).clone()));
        }
    }
    for f in faults
        .iter()
        .filter(|f| f.op == FaultOp::Inject && f.fault == FORGED_PUSH)
    {
        let answers = forged.iter().filter(|p| p.fault_id == f.id).count();
        if answers != PUSHES_PER_FORGERY {
            v.failures.push(format!(
                "forged push #{} on {}: {answers} of {PUSHES_PER_FORGERY} answers recorded, so whether it was refused is unknown",
                f.id, f.target
            ));
        }
    }
}

/// While etcd is down for a restore, every LB must route nowhere from
/// `bound` after the stop until the restored nodes start.
fn check_restores(
    faults: &[&FaultRecord],
    samples: &BTreeMap<&str, Vec<&LbSample>>,
    bound: Duration,
    v: &mut Verdict,
) {
    for f in faults
        .iter()
        .filter(|f| f.op == FaultOp::Inject && f.fault == SNAPSHOT_RESTORE)
    {
        let heal = faults
            .iter()
            .find(|h| h.op == FaultOp::Heal && h.id == f.id);
        let up = heal.and_then(|h| h.etcd_started_us);
        if heal.is_some() && up.is_none() {
            v.failures.push(format!(
                "etcd restore #{}: its heal does not say when etcd started again; fencing unknown",
                f.id
            ));
        }
        let down_until = up.unwrap_or(u64::MAX);
        let fenced_from = f.at_us + bound.as_micros() as u64;
        let mut blocked_after = Vec::new();
        for (lb, list) in samples {
            let during: Vec<&&LbSample> = list
                .iter()
                .filter(|s| s.start_us >= f.at_us && s.end_us <= down_until)
                .collect();
            blocked_after.push((
                lb.to_string(),
                during
                    .iter()
                    .find(|s| s.state == LbState::Blocked)
                    .map(|s| Duration::from_micros(s.end_us - f.at_us)),
            ));
            if let Some(s) = during.iter().find(|s| {
                s.start_us >= fenced_from
                    && matches!(s.state, LbState::Hot | LbState::Warm | LbState::Both)
            }) {
                v.failures.push(format!(
                    "fencing: LB {lb} routed {} (sample read {}) with etcd down since {} for a restore; every member must route nowhere {} after etcd stopped",
                    s.state.as_str(),
                    SampleAt { start_us: s.start_us, end_us: s.end_us },
                    ms(f.at_us),
                    dur(bound)
                ));
            }
        }
        v.restores.push(Restore {
            fault_id: f.id,
            at_us: f.at_us,
            etcd_started_us: up,
            fence_bound: bound,
            blocked_after,
        });
    }
}

fn check_pairs(pairs: &[&PairRecord], v: &mut Verdict) {
    let mut ever_matched = false;
    let mut open: Option<u64> = None;
    for p in pairs {
        match p.outcome {
            PairOutcome::Matched => {
                v.pairs.matched += 1;
                ever_matched = true;
                if let Some(from) = open.take() {
                    let d = Duration::from_micros(p.end_us.saturating_sub(from));
                    v.longest_outage = v.longest_outage.max(d);
                    v.outages.push((from, p.end_us));
                }
            }
            PairOutcome::Failed => {
                v.pairs.failed += 1;
                if ever_matched && open.is_none() {
                    open = Some(p.start_us);
                }
            }
            PairOutcome::Mismatched => {
                v.pairs.mismatched += 1;
                v.violations.push(Violation::MismatchedPair((*p).clone()));
            }
        }
    }
    if let (Some(from), Some(last)) = (open, pairs.last()) {
        let d = Duration::from_micros(last.end_us.saturating_sub(from));
        v.longest_outage = v.longest_outage.max(d);
        v.outages.push((from, last.end_us));
    }
    if v.pairs.matched == 0 {
        v.failures
            .push("no key pair matched: the run proves nothing".into());
    }
}

/// Runs of consecutive samples of one LB in one state, with a non-empty
/// known interval.
fn known_runs(lb: &str, samples: &[&LbSample]) -> Vec<Known> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < samples.len() {
        let state = samples[i].state;
        let mut j = i;
        while j + 1 < samples.len() && samples[j + 1].state == state {
            j += 1;
        }
        let (first, last) = (samples[i], samples[j]);
        if first.end_us <= last.start_us {
            runs.push(Known {
                lb: lb.to_string(),
                state,
                first: SampleAt {
                    start_us: first.start_us,
                    end_us: first.end_us,
                },
                last: SampleAt {
                    start_us: last.start_us,
                    end_us: last.end_us,
                },
                samples: j - i + 1,
            });
        }
        i = j + 1;
    }
    runs
}

fn check_lbs(samples: &BTreeMap<&str, Vec<&LbSample>>, v: &mut Verdict) {
    let mut serving: Vec<Known> = Vec::new();
    for (lb, list) in samples {
        if list.is_empty() {
            v.failures
                .push(format!("no sample of LB {lb}: its routing is unknown"));
        }
        for s in list {
            v.samples += 1;
            *v.states.entry(s.state.as_str().to_string()).or_default() += 1;
            match s.state {
                LbState::Unreadable => v.unreadable += 1,
                LbState::Both => v.violations.push(Violation::Both {
                    lb: lb.to_string(),
                    at: SampleAt {
                        start_us: s.start_us,
                        end_us: s.end_us,
                    },
                }),
                _ => {}
            }
        }
        serving.extend(
            known_runs(lb, list)
                .into_iter()
                .filter(|k| k.state.serving().is_some()),
        );
    }
    for (i, a) in serving.iter().enumerate() {
        for b in &serving[i + 1..] {
            if a.lb == b.lb || a.state == b.state {
                continue;
            }
            let from = a.known_from().max(b.known_from());
            let to = a.known_to().min(b.known_to());
            if from < to {
                v.violations.push(Violation::Split {
                    a: a.clone(),
                    b: b.clone(),
                    from_us: from,
                    to_us: to,
                });
            }
        }
    }
}

fn check_faults(
    faults: &[&FaultRecord],
    pairs: &[&PairRecord],
    samples: &BTreeMap<&str, Vec<&LbSample>>,
    v: &mut Verdict,
) {
    let mut ordered: Vec<&FaultRecord> = faults.to_vec();
    // Stable: records of one instant keep the history's order (an
    // instantaneous fault's inject, then its heal).
    ordered.sort_by_key(|f| f.at_us);
    let mut active: BTreeSet<u64> = BTreeSet::new();
    let mut injected: BTreeMap<u64, &FaultRecord> = BTreeMap::new();
    let mut healed_at: BTreeMap<u64, u64> = BTreeMap::new();
    for f in &ordered {
        match f.op {
            FaultOp::Inject => {
                *v.faults.entry(f.fault.clone()).or_default() += 1;
                active.insert(f.id);
                injected.insert(f.id, f);
            }
            FaultOp::Heal => {
                active.remove(&f.id);
                healed_at.insert(f.id, f.at_us);
                if active.is_empty() {
                    v.heals.push(heal_report(f, pairs, samples));
                }
            }
        }
    }
    for id in &active {
        if let Some(f) = injected.get(id) {
            v.failures.push(format!(
                "fault #{id} {} on {} was never healed",
                f.fault, f.target
            ));
        }
    }
    // A heal whose recovery another fault's inject came before is judged
    // by the heal that follows that fault instead (a fault never healed
    // leaves it judged: nothing comes after).
    for h in &mut v.heals {
        let recovered = h
            .recovered_after
            .map_or(u64::MAX, |d| h.at_us.saturating_add(d.as_micros() as u64));
        h.interrupted_by = ordered
            .iter()
            .find(|f| {
                f.op == FaultOp::Inject
                    && f.at_us > h.at_us
                    && f.at_us < recovered
                    && healed_at.contains_key(&f.id)
            })
            .map(|f| f.id);
    }
    for h in v.heals.iter().filter(|h| h.interrupted_by.is_none()) {
        match h.recovered_after {
            None => v.failures.push(format!(
                "liveness: after the heal of #{} {} {} at {}, the link never served one setup with a matching pair again",
                h.fault_id, h.fault, h.target, ms(h.at_us)
            )),
            Some(d) if d > v.bound => v.failures.push(format!(
                "liveness: after the heal of #{} {} {}, the link took {} to serve again (bound {})",
                h.fault_id,
                h.fault,
                h.target,
                dur(d),
                dur(v.bound)
            )),
            Some(_) => {}
        }
    }
    for f in injected.values() {
        let Some(lb) = &f.lb else { continue };
        if !matches!(
            f.fault.as_str(),
            "sidecar-kill" | "sidecar-stop" | "leader-kill"
        ) {
            continue;
        }
        let list = samples.get(lb.as_str()).map_or(&[][..], Vec::as_slice);
        let routing_before = list
            .iter()
            .rev()
            .find(|s| s.end_us <= f.at_us && s.state != LbState::Unreadable)
            .is_some_and(|s| s.state.serving().is_some());
        if !routing_before {
            continue;
        }
        let heal = healed_at.get(&f.id).copied().unwrap_or(u64::MAX);
        let blocked = list
            .iter()
            .find(|s| s.start_us >= f.at_us && s.state == LbState::Blocked && s.end_us <= heal)
            .map(|s| Duration::from_micros(s.end_us - f.at_us));
        if let Some(b) = blocked {
            if b > v.down_detection + DEADMAN_SLACK {
                v.failures.push(format!(
                    "dead-man's switch: LB {lb} still routed {} after #{} {} (D = {})",
                    dur(b),
                    f.id,
                    f.fault,
                    dur(v.down_detection)
                ));
            }
        }
        v.deadman.push(Deadman {
            fault_id: f.id,
            fault: f.fault.clone(),
            lb: lb.clone(),
            blocked_after: blocked,
        });
    }
}

/// When, after `heal`, every LB's latest sample serves the same setup and
/// a pair started after the heal has matched.
fn heal_report(
    heal: &FaultRecord,
    pairs: &[&PairRecord],
    samples: &BTreeMap<&str, Vec<&LbSample>>,
) -> Heal {
    let h = heal.at_us;
    let mut after: Vec<&LbSample> = samples
        .values()
        .flat_map(|l| l.iter().copied())
        .filter(|s| s.start_us >= h)
        .collect();
    after.sort_by_key(|s| s.end_us);
    let mut latest: BTreeMap<&str, LbState> = BTreeMap::new();
    let mut lbs_at = None;
    for s in after {
        latest.insert(s.lb.as_str(), s.state);
        if latest.len() < samples.len() {
            continue;
        }
        let mut setups = latest.values().map(|st| st.serving());
        let first = setups.next().flatten();
        if first.is_some() && setups.all(|x| x == first) {
            lbs_at = Some((s.end_us, first));
            break;
        }
    }
    let pair_at = pairs
        .iter()
        .find(|p| p.start_us >= h && p.outcome == PairOutcome::Matched)
        .map(|p| p.end_us);
    let (recovered_after, setup) = match (lbs_at, pair_at) {
        (Some((l, setup)), Some(p)) => (Some(Duration::from_micros(l.max(p) - h)), setup),
        _ => (None, None),
    };
    Heal {
        fault_id: heal.id,
        fault: heal.fault.clone(),
        target: heal.target.clone(),
        at_us: h,
        recovered_after,
        setup,
        interrupted_by: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{CheckRecord, StartInfo, TimingInfo};

    fn start() -> Event {
        Event::Start(StartInfo {
            scenario: "t".into(),
            seed: 1,
            started_at: String::new(),
            lbs: vec!["a".into(), "b".into()],
            etcd_nodes: 1,
            timing: TimingInfo {
                lease_ttl_ms: 3000,
                keepalive_ms: 500,
                margin_ms: 500,
                down_detection_ms: 1200,
                resend_ms: 500,
            },
            liveness_bound_ms: 15_600,
            sample_interval_ms: 5,
            mutation: None,
            dir: String::new(),
        })
    }

    fn s(lb: &str, start_us: u64, state: LbState) -> Event {
        Event::Lb(LbSample {
            lb: lb.into(),
            start_us,
            end_us: start_us + 1000,
            state,
            detail: None,
        })
    }

    fn pair(seq: u64, start_us: u64, outcome: PairOutcome) -> Event {
        Event::Pair(PairRecord {
            seq,
            start_us,
            end_us: start_us + 500,
            outcome,
            alice: Some(Setup::Hot),
            bob: Some(Setup::Hot),
            detail: None,
        })
    }

    fn fault(id: u64, op: FaultOp, at_us: u64, kind: &str, lb: Option<&str>) -> Event {
        Event::Fault(FaultRecord {
            id,
            op,
            fault: kind.into(),
            target: lb.unwrap_or("x").into(),
            lb: lb.map(Into::into),
            at_us,
            etcd_started_us: None,
            detail: None,
        })
    }

    /// etcd frozen from 100 ms to 200 ms with both LBs on hot; pairs fail
    /// from 150 ms until one matches at 250 ms. `other`: a KME stopped
    /// meanwhile too.
    fn etcd_freeze(other: bool) -> Vec<Event> {
        let mut e = vec![start()];
        for t in (0..300_000).step_by(10_000) {
            e.push(s("a", t, LbState::Hot));
            e.push(s("b", t, LbState::Hot));
        }
        e.push(pair(1, 50_000, PairOutcome::Matched));
        e.push(fault(1, FaultOp::Inject, 100_000, "etcd-freeze", None));
        e.push(pair(2, 150_000, PairOutcome::Failed));
        e.push(fault(1, FaultOp::Heal, 200_000, "etcd-freeze", None));
        e.push(pair(3, 250_000, PairOutcome::Matched));
        if other {
            e.push(fault(2, FaultOp::Inject, 190_000, "kme-stop", None));
            e.push(fault(2, FaultOp::Heal, 290_000, "kme-stop", None));
        }
        e.sort_by_key(Event::at_us);
        e
    }

    #[test]
    fn key_delivery_lost_while_etcd_is_unreachable_is_counted() {
        let v = judge(&etcd_freeze(false));
        assert_eq!(v.etcd_outages.len(), 1);
        let o = &v.etcd_outages[0];
        assert_eq!((o.from_us, o.to_us), (100_000, 200_000));
        // From the failed pair's start to the end of the next matched one.
        assert_eq!(o.lost, Duration::from_micros(250_500 - 150_000));
        assert_eq!(v.lost_to_etcd, o.lost);
        assert_eq!(v.etcd_unreachable(), Duration::from_millis(100));
        assert!(o.alone, "settled, no other fault: {o:?}");
        let v = judge(&etcd_freeze(true));
        assert!(!v.etcd_outages[0].alone, "a KME stopped meanwhile");
        let mut e = etcd_freeze(false);
        e.push(Event::Switch(crate::history::SwitchRecord {
            id: 1,
            by: "oncall".into(),
            via: "a".into(),
            to: Setup::Warm,
            at_us: 120_000,
        }));
        e.sort_by_key(Event::at_us);
        let v = judge(&e);
        assert!(!v.etcd_outages[0].alone, "a switchover asked meanwhile");
    }

    /// Both LBs on hot, then a clean break-before-make switch to warm.
    fn clean() -> Vec<Event> {
        use LbState::*;
        let mut e = vec![start(), pair(1, 0, PairOutcome::Matched)];
        for (t, a, b) in [
            (0, Hot, Hot),
            (10_000, Hot, Hot),
            (20_000, Blocked, Hot),
            (30_000, Blocked, Blocked),
            (40_000, Warm, Blocked),
            (50_000, Warm, Warm),
            (60_000, Warm, Warm),
        ] {
            e.push(s("a", t, a));
            e.push(s("b", t + 2000, b));
        }
        e.push(pair(2, 61_000, PairOutcome::Matched));
        e
    }

    #[test]
    fn a_clean_switch_passes() {
        let v = judge(&clean());
        assert!(v.passed(), "{v}");
        assert_eq!(v.samples, 14);
        assert_eq!(v.pairs.matched, 2);
    }

    #[test]
    fn overlapping_known_intervals_on_different_setups_fail() {
        use LbState::*;
        let mut e = vec![start(), pair(1, 0, PairOutcome::Matched)];
        // a: warm known over [11ms, 30ms]; b: hot known over [3ms, 22ms].
        for (t, st) in [(0, Hot), (10_000, Warm), (20_000, Warm), (30_000, Warm)] {
            e.push(s("a", t, st));
        }
        for (t, st) in [(2_000, Hot), (12_000, Hot), (22_000, Hot), (32_000, Warm)] {
            e.push(s("b", t, st));
        }
        let v = judge(&e);
        assert!(!v.passed());
        assert_eq!(v.violation_counts(), (0, 1), "{v}");
        match &v.violations[0] {
            Violation::Split { from_us, to_us, .. } => {
                assert_eq!((*from_us, *to_us), (11_000, 22_000))
            }
            other => panic!("{other}"),
        }
        assert!(v.to_string().contains("LBs on different setups"), "{v}");
    }

    #[test]
    fn a_single_sample_or_touching_windows_prove_nothing() {
        use LbState::*;
        let mut e = vec![start(), pair(1, 0, PairOutcome::Matched)];
        // a's warm is a single sample: no known interval.
        for (t, st) in [(0, Hot), (10_000, Warm), (20_000, Blocked)] {
            e.push(s("a", t, st));
        }
        for (t, st) in [(2_000, Hot), (12_000, Hot), (22_000, Hot)] {
            e.push(s("b", t, st));
        }
        assert!(judge(&e).passed());
    }

    #[test]
    fn an_unreadable_sample_breaks_a_run() {
        use LbState::*;
        let mut e = vec![start(), pair(1, 0, PairOutcome::Matched)];
        // a: warm, unreadable, warm: two single-sample runs, nothing known.
        for (t, st) in [(0, Warm), (10_000, Unreadable), (20_000, Warm)] {
            e.push(s("a", t, st));
        }
        for (t, st) in [(2_000, Hot), (12_000, Hot), (22_000, Hot)] {
            e.push(s("b", t, st));
        }
        let v = judge(&e);
        assert!(v.passed(), "{v}");
        assert_eq!(v.unreadable, 1);
    }

    #[test]
    fn both_setups_and_mismatched_pairs_fail() {
        let mut e = clean();
        e.push(s("a", 70_000, LbState::Both));
        e.push(pair(3, 71_000, PairOutcome::Mismatched));
        let v = judge(&e);
        assert_eq!(v.violation_counts(), (1, 1), "{v}");
        assert_eq!(v.pairs.mismatched, 1);
    }

    #[test]
    fn liveness_is_measured_from_the_last_heal() {
        use LbState::*;
        let mut e = vec![start(), pair(1, 0, PairOutcome::Matched)];
        e.push(s("a", 1_000, Hot));
        e.push(s("b", 1_000, Hot));
        e.push(fault(1, FaultOp::Inject, 5_000, "sidecar-kill", Some("b")));
        e.push(s("b", 10_000, Hot));
        e.push(s("b", 20_000, Blocked));
        e.push(fault(2, FaultOp::Inject, 25_000, "kme-kill", None));
        // Heal of #1 leaves #2 active: not measured.
        e.push(fault(1, FaultOp::Heal, 30_000, "sidecar-kill", Some("b")));
        e.push(fault(2, FaultOp::Heal, 40_000, "kme-kill", None));
        e.push(s("a", 41_000, Hot));
        e.push(s("b", 45_000, Blocked));
        e.push(s("b", 50_000, Hot));
        e.push(pair(2, 49_000, PairOutcome::Matched));
        let v = judge(&e);
        assert!(v.passed(), "{v}");
        assert_eq!(v.heals.len(), 1);
        // b serving again at 51 ms (end of its sample), 11 ms after the heal.
        assert_eq!(v.heals[0].recovered_after, Some(Duration::from_millis(11)));
        assert_eq!(v.heals[0].setup, Some(Setup::Hot));
        // b was routing when it was killed and was seen blocked at 21 ms.
        assert_eq!(v.deadman.len(), 1);
        assert_eq!(v.deadman[0].blocked_after, Some(Duration::from_millis(16)));
        assert_eq!(v.faults["sidecar-kill"], 1);
    }

    /// A fault injected after a heal but before the link served again (a
    /// sidecar restarted, then etcd lost its quorum): that heal is not
    /// judged on its own; the heal after the second fault is.
    #[test]
    fn a_heal_interrupted_by_another_fault_is_judged_from_the_next_heal() {
        use LbState::*;
        let mut e = vec![start(), pair(1, 0, PairOutcome::Matched)];
        e.push(s("a", 1_000, Hot));
        e.push(s("b", 1_000, Hot));
        e.push(fault(1, FaultOp::Inject, 5_000, "sidecar-kill", Some("b")));
        e.push(s("b", 10_000, Blocked));
        e.push(fault(1, FaultOp::Heal, 20_000, "sidecar-kill", Some("b")));
        // etcd loses its quorum before b serves again, for 30 s.
        e.push(fault(2, FaultOp::Inject, 25_000, "etcd-quorum-loss", None));
        e.push(fault(
            2,
            FaultOp::Heal,
            30_025_000,
            "etcd-quorum-loss",
            None,
        ));
        e.push(s("b", 30_030_000, Hot));
        e.push(s("a", 30_030_000, Hot));
        e.push(pair(2, 30_031_000, PairOutcome::Matched));
        e.sort_by_key(Event::at_us);
        let v = judge(&e);
        assert!(v.passed(), "{v}");
        assert_eq!(v.heals.len(), 2);
        assert_eq!(v.heals[0].interrupted_by, Some(2));
        assert_eq!(v.heals[1].interrupted_by, None);
        assert_eq!(v.longest_heal(), Some(Duration::from_micros(6_500)));
        // The same without the second fault's recovery: still a failure.
        e.retain(|x| !matches!(x, Event::Pair(p) if p.seq == 2));
        e.retain(|x| !matches!(x, Event::Lb(l) if l.start_us == 30_030_000));
        assert!(!judge(&e).passed());
    }

    #[test]
    fn no_recovery_an_unhealed_fault_or_a_failed_check_fail() {
        let mut e = clean();
        e.push(fault(1, FaultOp::Inject, 70_000, "kme-kill", None));
        e.push(fault(1, FaultOp::Heal, 80_000, "kme-kill", None));
        e.push(s("a", 81_000, LbState::Blocked));
        e.push(s("b", 81_000, LbState::Blocked));
        e.push(fault(2, FaultOp::Inject, 90_000, "etcd-kill", None));
        e.push(Event::Check(CheckRecord {
            at_us: 95_000,
            name: "settled".into(),
            ok: false,
            detail: None,
        }));
        let v = judge(&e);
        assert!(!v.passed());
        assert!(v.violations.is_empty());
        assert_eq!((v.failures.len(), v.failed_checks.len()), (2, 1), "{v}");
    }

    #[test]
    fn a_slow_dead_mans_switch_fails() {
        use LbState::*;
        let mut e = vec![start(), pair(1, 0, PairOutcome::Matched)];
        e.push(s("a", 0, Hot));
        e.push(s("b", 0, Hot));
        e.push(fault(1, FaultOp::Inject, 2_000, "sidecar-stop", Some("b")));
        e.push(s("b", 1_500_000, Blocked));
        e.push(fault(
            1,
            FaultOp::Heal,
            4_000_000,
            "sidecar-stop",
            Some("b"),
        ));
        e.push(s("a", 4_100_000, Hot));
        e.push(s("b", 4_100_000, Hot));
        e.push(pair(2, 4_100_000, PairOutcome::Matched));
        let v = judge(&e);
        assert_eq!(v.failures.len(), 1, "{v}");
        assert!(v.failures[0].contains("dead-man"), "{v}");
    }

    #[test]
    fn an_empty_history_proves_nothing() {
        let v = judge(&[start()]);
        assert!(!v.passed());
        // No pair, no sample of a, none of b.
        assert_eq!(v.failures.len(), 3, "{v}");
    }

    fn forged(fault_id: u64, at_us: u64, answer: PushAnswer) -> Event {
        Event::Forged(ForgedRecord {
            fault_id,
            member: "b".into(),
            phase: lockstep_core::Phase::Serve,
            epoch: 1001,
            token: 1 << 40,
            setup: Setup::Warm,
            sent_us: at_us,
            answered_us: at_us + 100,
            answer,
        })
    }

    fn refused() -> PushAnswer {
        PushAnswer::Refused {
            code: crate::history::PERMISSION_DENIED.into(),
            message: "not confirmed by etcd at revision 7 (route at 1/serve); nothing changed"
                .into(),
        }
    }

    /// `clean()`, then forged-push fault #1 at 62 ms (inject and heal at
    /// one instant) and the link still serving warm after it.
    fn forged_at_62ms() -> Vec<Event> {
        let mut e = clean();
        e.push(fault(1, FaultOp::Inject, 62_000, FORGED_PUSH, None));
        e.push(fault(1, FaultOp::Heal, 62_000, FORGED_PUSH, None));
        e.push(s("a", 63_000, LbState::Warm));
        e.push(s("b", 63_000, LbState::Warm));
        e.push(pair(3, 63_000, PairOutcome::Matched));
        e
    }

    #[test]
    fn a_forged_push_applied_is_a_violation() {
        let mut e = forged_at_62ms();
        e.push(forged(1, 62_000, refused()));
        let v = judge(&e);
        assert!(
            !v.passed(),
            "one answer of two recorded must fail the run: {v}"
        );
        assert_eq!(v.failures.len(), 1, "{v}");
        assert!(v.failures[0].contains("1 of 2 answers"), "{v}");

        e.push(forged(1, 62_500, refused()));
        let v = judge(&e);
        assert!(v.passed(), "{v}");
        assert_eq!(v.forged["refused PermissionDenied"], 2);
        assert!(refused().refused_as_unconfirmed());

        let mut e = forged_at_62ms();
        e.push(forged(1, 62_000, refused()));
        e.push(forged(
            1,
            62_500,
            PushAnswer::Applied {
                applied: "epoch 1001 serve warm".into(),
            },
        ));
        let v = judge(&e);
        assert!(!v.passed());
        assert_eq!(v.forged_applied(), 1, "{v}");
        assert_eq!(v.violation_counts(), (0, 0), "not a pair, not an LB sample");
        assert!(v.to_string().contains("VIOLATION forged serve"), "{v}");
    }

    /// etcd stopped at 100 ms and started again at 4.2 s (fence bound 3.7
    /// s): an LB routing in a sample read after 3.8 s fails the run; the
    /// outage while etcd is down is counted apart.
    #[test]
    fn an_lb_routing_while_etcd_is_down_for_a_restore_fails() {
        use LbState::*;
        let restore = |b_late: LbState| {
            let mut e = vec![start(), pair(1, 0, PairOutcome::Matched)];
            e.push(s("a", 0, Hot));
            e.push(s("b", 0, Hot));
            e.push(fault(1, FaultOp::Inject, 100_000, SNAPSHOT_RESTORE, None));
            e.push(pair(2, 200_000, PairOutcome::Failed));
            e.push(s("a", 2_000_000, Blocked));
            e.push(s("b", 2_100_000, Blocked));
            e.push(s("a", 3_900_000, Blocked));
            e.push(s("b", 3_900_000, b_late));
            e.push(Event::Fault(FaultRecord {
                id: 1,
                op: FaultOp::Heal,
                fault: SNAPSHOT_RESTORE.into(),
                target: "etcd".into(),
                lb: None,
                at_us: 5_000_000,
                etcd_started_us: Some(4_200_000),
                detail: None,
            }));
            e.push(s("a", 5_100_000, Hot));
            e.push(s("b", 5_100_000, Hot));
            e.push(pair(3, 5_100_000, PairOutcome::Matched));
            // A shorter outage outside the restore.
            e.push(pair(4, 6_000_000, PairOutcome::Failed));
            e.push(pair(5, 6_010_000, PairOutcome::Matched));
            e
        };
        let v = judge(&restore(Blocked));
        assert!(v.passed(), "{v}");
        assert_eq!(v.restores.len(), 1);
        assert_eq!(
            v.restores[0].blocked_after,
            vec![
                ("a".to_string(), Some(Duration::from_micros(1_901_000))),
                ("b".to_string(), Some(Duration::from_micros(2_001_000))),
            ]
        );
        assert_eq!(v.longest_outage, Duration::from_micros(4_900_500));
        assert_eq!(v.longest_outage_restore(), Some(1));
        assert_eq!(
            v.longest_outage_outside_restores,
            Duration::from_micros(10_500)
        );
        assert!(v.to_string().contains("expected"), "{v}");

        let v = judge(&restore(Warm));
        assert!(!v.passed());
        assert_eq!(v.failures.len(), 1, "{v}");
        assert!(
            v.failures[0].starts_with("fencing: LB b routed warm"),
            "{v}"
        );
    }

    #[test]
    fn a_restore_heal_without_etcd_start_time_cannot_be_judged() {
        let mut e = clean();
        e.push(fault(1, FaultOp::Inject, 62_000, SNAPSHOT_RESTORE, None));
        e.push(fault(1, FaultOp::Heal, 70_000, SNAPSHOT_RESTORE, None));
        e.push(s("a", 71_000, LbState::Warm));
        e.push(s("b", 71_000, LbState::Warm));
        e.push(pair(3, 71_000, PairOutcome::Matched));
        let v = judge(&e);
        assert_eq!(v.failures.len(), 1, "{v}");
        assert!(v.failures[0].contains("fencing unknown"), "{v}");
    }
}
