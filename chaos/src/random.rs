//! Random mode: each run is a fresh lab (3-node etcd) where a seed picks
//! two or three faults (kind, target, start, duration; some aimed at a
//! switch in flight) and two to four switchovers by two on-call users
//! over a ten-second window. Run `i` of `random --seed S` uses seed
//! `S + i`, so `random --seed <seed> --runs 1` replays one run.
//!
//! `random --truth` also draws the faults that attack what a member trusts
//! ([`TRUTH_KINDS`]: a forged push, the route key deleted, etcd restored
//! from a snapshot saved earlier in the run), and every such run has at
//! least one of them (its first fault).
//!
//! `random --failsafe` runs labs with failsafe on and draws faults that
//! leave etcd unreachable ([`ETCD_OUTAGE_KINDS`]: every etcd node frozen,
//! etcd's quorum lost, with `--net` etcd cut from one member or from every
//! member), at least one per run (its first fault), held up to 15 s, past
//! the lease TTL. `random --etcd-outages` draws the same runs with failsafe
//! off (the same lease TTL), to measure the key delivery failsafe saves.

use super::fault::LabFault;
use super::net::NetFault;
use super::scenario::{Ctx, RunReport, Scenario};
use anyhow::Result;
use lockstep_core::{Role, Setup};
use lockstep_testkit::lab::LabOptions;
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The fault kinds random mode draws from (equal weights).
pub const KINDS: &[&str] = &[
    "leader-kill",
    "sidecar-kill",
    "sidecar-stop",
    "haproxy-restart",
    "etcd-kill",
    "etcd-leader-kill",
    "etcd-quorum-loss",
    "kme-kill",
    "kme-stop",
];

/// Network fault kinds, drawn too in `random --net` (labs in namespaces).
pub const NET_KINDS: &[&str] = &["net-cut-etcd", "net-cut-peers", "net-one-way", "net-slow"];

/// Faults on what a member trusts (issue 9), drawn too in `random
/// --truth`: a forged Serve and Drain to a random member, the route key
/// deleted, etcd restored from a snapshot saved earlier in the run.
pub const TRUTH_KINDS: &[&str] = &["forged-push", "route-deleted", "snapshot-restore"];

/// Faults that leave etcd unreachable, drawn first in `random --failsafe`
/// and `--etcd-outages` (`etcd-freeze` is drawn among the others too).
pub const ETCD_OUTAGE_KINDS: &[&str] = &["etcd-freeze", "etcd-quorum-loss"];
/// ... and with `--net`, etcd cut from one member or from every member.
pub const NET_ETCD_OUTAGE_KINDS: &[&str] = &["net-cut-etcd", "net-cut-etcd-all"];

/// What a random run draws besides the process faults, and its lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mode {
    /// Members in network namespaces; network faults drawn too.
    pub net: bool,
    /// Faults on what a member trusts, one first ([`TRUTH_KINDS`]).
    pub truth: bool,
    pub etcd: EtcdOutages,
}

/// Whether a random run's first fault leaves etcd unreachable, and what
/// the lab does about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EtcdOutages {
    /// Drawn like any other fault.
    Drawn,
    /// One first, with failsafe off: every member fences itself.
    Fenced,
    /// One first, with failsafe on.
    Failsafe,
}

/// The chaos window: faults start and switchovers are sent within it.
const WINDOW_MS: u64 = 9_000;

/// Random mode as a scenario (its lab and body draw from the run's seed).
pub fn scenario() -> Scenario {
    scenario_of::<false, false, DRAWN>()
}

const DRAWN: u8 = 0;
const FENCED: u8 = 1;
const FAILSAFE: u8 = 2;

impl Mode {
    fn of(net: bool, truth: bool, etcd: u8) -> Mode {
        let etcd = match etcd {
            FENCED => EtcdOutages::Fenced,
            FAILSAFE => EtcdOutages::Failsafe,
            _ => EtcdOutages::Drawn,
        };
        Mode { net, truth, etcd }
    }

    /// The scenario's name and what it does.
    fn describe(self) -> (&'static str, &'static str) {
        use EtcdOutages::*;
        match (self.net, self.truth, self.etcd) {
            (false, false, Drawn) => ("random", "2-3 random faults and 2-4 switchovers by two users over ~10 s, from the seed"),
            (true, false, Drawn) => ("random-net", "as `random`, members in network namespaces, network faults drawn too (`random --net`)"),
            (false, true, _) => ("random-truth", "as `random`, forged pushes, route deletions and etcd snapshot restores drawn too, at least one per run (`random --truth`)"),
            (true, true, _) => ("random-net-truth", "as `random-net`, forged pushes, route deletions and etcd snapshot restores drawn too, at least one per run (`random --net --truth`)"),
            (false, false, Failsafe) => ("random-failsafe", "as `random`, failsafe on, etcd frozen or without quorum for up to 15 s at least once per run (`random --failsafe`)"),
            (true, false, Failsafe) => ("random-net-failsafe", "as `random-net`, failsafe on, etcd frozen, without quorum or cut from one or every member for up to 15 s at least once per run (`random --net --failsafe`)"),
            (false, false, Fenced) => ("random-etcd", "as `random-failsafe` with failsafe off: what etcd outages cost without it (`random --etcd-outages`)"),
            (true, false, Fenced) => ("random-net-etcd", "as `random-net-failsafe` with failsafe off (`random --net --etcd-outages`)"),
        }
    }
}

/// The random scenario of one mode (fn pointers, hence the constants).
fn scenario_of<const NET: bool, const TRUTH: bool, const ETCD: u8>() -> Scenario {
    let (name, about) = Mode::of(NET, TRUTH, ETCD).describe();
    Scenario {
        name,
        about,
        lab: lab_of::<NET, ETCD>,
        body: |c| Box::pin(random_body(c, Mode::of(NET, TRUTH, ETCD))),
    }
}

/// The random scenario for `random [--net] [--truth | --failsafe |
/// --etcd-outages]`; faults on what a member trusts are not drawn with
/// etcd outages (a restore under failsafe is not a documented procedure).
pub fn scenario_for(mode: Mode) -> Result<Scenario> {
    use EtcdOutages::*;
    Ok(match (mode.net, mode.truth, mode.etcd) {
        (_, true, Fenced | Failsafe) => {
            anyhow::bail!("--truth cannot be combined with --failsafe or --etcd-outages")
        }
        (false, false, Drawn) => scenario_of::<false, false, DRAWN>(),
        (true, false, Drawn) => scenario_of::<true, false, DRAWN>(),
        (false, true, Drawn) => scenario_of::<false, true, DRAWN>(),
        (true, true, Drawn) => scenario_of::<true, true, DRAWN>(),
        (false, false, Fenced) => scenario_of::<false, false, FENCED>(),
        (true, false, Fenced) => scenario_of::<true, false, FENCED>(),
        (false, false, Failsafe) => scenario_of::<false, false, FAILSAFE>(),
        (true, false, Failsafe) => scenario_of::<true, false, FAILSAFE>(),
    })
}

/// Every random scenario (for `list` and `run <name>`).
pub fn scenarios() -> Vec<Scenario> {
    vec![
        scenario_of::<false, false, DRAWN>(),
        scenario_of::<true, false, DRAWN>(),
        scenario_of::<false, true, DRAWN>(),
        scenario_of::<true, true, DRAWN>(),
        scenario_of::<false, false, FAILSAFE>(),
        scenario_of::<true, false, FAILSAFE>(),
        scenario_of::<false, false, FENCED>(),
        scenario_of::<true, false, FENCED>(),
    ]
}

/// The lab of a random run: [`random_lab`], in namespaces with `NET`, and
/// with failsafe's lease (failsafe on or off) when etcd outages are drawn
/// first.
fn lab_of<const NET: bool, const ETCD: u8>(rng: &mut StdRng) -> LabOptions {
    let mut o = random_lab(rng);
    o.netns = NET;
    if ETCD != DRAWN {
        o.timing = o.timing.with_failsafe();
        o.timing.failsafe = ETCD == FAILSAFE;
    }
    o
}

fn random_lab(rng: &mut StdRng) -> LabOptions {
    let mut o = LabOptions {
        etcd_nodes: 3,
        // Half the runs with two LBs per end, as deployed: the key pairs
        // reach both, as SAEs behind a VIP do.
        members_per_role: if rng.random_bool(0.5) { 2 } else { 1 },
        ..LabOptions::default()
    };
    // Half the runs slow every LB apply, so switches stay in flight long
    // enough for faults to land inside them.
    if rng.random_bool(0.5) {
        let ms = rng.random_range(50..200);
        o.sidecar_env.push((
            "FAILPOINTS".into(),
            format!("member-before-lb-apply=sleep({ms})"),
        ));
    }
    o
}

#[derive(Clone, Debug)]
enum Step {
    Switch {
        by: &'static str,
    },
    /// Save an etcd snapshot for a later `snapshot-restore`.
    Snapshot,
    Inject {
        fault: usize,
    },
    Heal {
        fault: usize,
    },
}

#[derive(Clone, Debug)]
struct Planned {
    kind: &'static str,
    hold: Duration,
}

/// Resolves a fault kind to a concrete fault now (the leader, a random
/// member, ...). `snapshot`: the latest etcd snapshot of the run.
async fn resolve(
    ctx: &mut Ctx,
    kind: &str,
    snapshot: Option<&PathBuf>,
) -> Result<Option<LabFault>> {
    let n = ctx.members();
    let member = ctx.rng.random_range(0..n);
    let setup = if ctx.rng.random_bool(0.5) {
        Setup::Hot
    } else {
        Setup::Warm
    };
    let role = if ctx.rng.random_bool(0.5) {
        Role::Alice
    } else {
        Role::Bob
    };
    let nodes = ctx.lab.etcd.nodes.len();
    let node = ctx.rng.random_range(0..nodes);
    let fault = match kind {
        "leader-kill" => match ctx.leader(Duration::from_millis(500)).await {
            Ok(leader) => LabFault::SidecarKill {
                member: leader,
                leader: true,
            },
            Err(_) => return Ok(None),
        },
        "sidecar-kill" => LabFault::SidecarKill {
            member,
            leader: false,
        },
        "sidecar-stop" => LabFault::SidecarStop { member },
        "haproxy-restart" => LabFault::HaproxyRestart { member },
        "etcd-kill" => LabFault::EtcdKill {
            nodes: vec![node],
            leader: false,
        },
        // A quorum loss that leaves a quorum needs three nodes or more.
        "etcd-quorum-loss" if nodes < 3 => return Ok(None),
        "etcd-freeze" => LabFault::EtcdFreeze,
        "etcd-leader-kill" | "etcd-quorum-loss" => {
            let Ok(leader) = ctx.lab.etcd.leader(Duration::from_secs(1)).await else {
                return Ok(None);
            };
            let mut victims = vec![leader];
            if kind == "etcd-quorum-loss" {
                victims.push((leader + 1 + ctx.rng.random_range(0..nodes - 1)) % nodes);
            }
            LabFault::EtcdKill {
                nodes: victims,
                leader: true,
            }
        }
        "kme-kill" => LabFault::KmeKill { setup, role },
        "kme-stop" => LabFault::KmeStop { setup, role },
        "net-cut-etcd" => LabFault::Net(NetFault::CutFromEtcd { member }),
        "net-cut-etcd-all" => LabFault::Net(NetFault::CutAllFromEtcd),
        "net-cut-peers" => LabFault::Net(NetFault::CutPeers),
        "net-one-way" => LabFault::Net(NetFault::OneWay {
            from: member,
            to: (member + 1 + ctx.rng.random_range(0..n - 1)) % n,
        }),
        "net-slow" => LabFault::Net(NetFault::Slow {
            member,
            delay_ms: ctx.rng.random_range(20..200),
            jitter_ms: ctx.rng.random_range(0..80),
            loss_pct: ctx.rng.random_range(0..10),
            seed: ctx.rng.random(),
        }),
        "forged-push" => LabFault::ForgedPush(ctx.forgery(member).await),
        "route-deleted" => LabFault::RouteDeleted,
        "snapshot-restore" => match snapshot {
            Some(path) => LabFault::SnapshotRestore {
                snapshot: path.clone(),
                down: restore_down(ctx),
            },
            None => return Ok(None),
        },
        _ => return Ok(None),
    };
    Ok(Some(fault))
}

/// Whether a fault of kind `later` would be skipped because the run's
/// first fault, of kind `first`, is held (or keep it out): a restore or a
/// freeze takes every etcd node, a quorum loss needs etcd's leader, a
/// route deletion needs etcd's quorum, two etcd cuts share their rules.
fn conflicts(first: &str, later: &str) -> bool {
    const ETCD_NODES: &[&str] = &[
        "etcd-kill",
        "etcd-leader-kill",
        "etcd-quorum-loss",
        "etcd-freeze",
        "snapshot-restore",
    ];
    match first {
        "snapshot-restore" | "etcd-freeze" | "etcd-quorum-loss" => ETCD_NODES.contains(&later),
        "route-deleted" => matches!(later, "etcd-quorum-loss" | "snapshot-restore"),
        "net-cut-etcd" | "net-cut-etcd-all" => NET_ETCD_OUTAGE_KINDS.contains(&later),
        _ => false,
    }
}

/// How long a fault of `kind` is held: [`hold_for`], and for a restore
/// etcd's downtime on top. With etcd outages drawn first, those that
/// leave etcd unreachable are held 1-15 s: often past the lease TTL, when
/// only failsafe keeps the link serving.
fn plan_hold(ctx: &mut Ctx, kind: &str, mode: Mode) -> Duration {
    let outage = ETCD_OUTAGE_KINDS.contains(&kind) || NET_ETCD_OUTAGE_KINDS.contains(&kind);
    if mode.etcd != EtcdOutages::Drawn && outage {
        return Duration::from_millis(ctx.rng.random_range(1_000..15_000));
    }
    let hold = hold_for(&mut ctx.rng, kind);
    if kind == "snapshot-restore" {
        hold + restore_down(ctx)
    } else {
        hold
    }
}

/// Slack around the window of a run's fault on what a member trusts when
/// later faults are checked against it.
const PLAN_SLACK: Duration = Duration::from_secs(1);

/// How long a restore keeps etcd down at least: the documented
/// procedure's "longer than the lease TTL", plus one second.
fn restore_down(ctx: &Ctx) -> Duration {
    ctx.lab.options.timing.lease_ttl + Duration::from_secs(1)
}

fn hold_for(rng: &mut StdRng, kind: &str) -> Duration {
    let (lo, hi) = match kind {
        "leader-kill" | "sidecar-kill" | "sidecar-stop" => (200, 5_000),
        "haproxy-restart" => (0, 1_000),
        "etcd-kill" | "etcd-leader-kill" => (500, 4_000),
        "etcd-quorum-loss" => (1_000, 4_000),
        "kme-kill" => (1_000, 4_000),
        // Past the lease TTL sometimes: the member must fence itself.
        "net-cut-etcd" | "net-slow" => (500, 5_000),
        // Over once injected.
        "forged-push" | "route-deleted" => (0, 1),
        // On top of `restore_down`.
        "snapshot-restore" => (0, 1_000),
        _ => (500, 3_000),
    };
    Duration::from_millis(rng.random_range(lo..hi))
}

async fn random_body(ctx: &mut Ctx, mode: Mode) -> Result<()> {
    let mut kinds: Vec<&'static str> = if mode.net {
        KINDS.iter().chain(NET_KINDS).copied().collect()
    } else {
        KINDS.to_vec()
    };
    if mode.truth {
        kinds.extend(TRUTH_KINDS);
    }
    // The kinds a run's first fault is drawn from, if it must be one.
    let mut first_kinds: Vec<&'static str> = Vec::new();
    if mode.truth {
        first_kinds.extend(TRUTH_KINDS);
    }
    if mode.etcd != EtcdOutages::Drawn {
        kinds.push("etcd-freeze");
        first_kinds.extend(ETCD_OUTAGE_KINDS);
        if mode.net {
            kinds.push("net-cut-etcd-all");
            first_kinds.extend(NET_ETCD_OUTAGE_KINDS);
        }
    }
    let n_switches = ctx.rng.random_range(2..=4);
    let n_faults = ctx.rng.random_range(2..=3);
    let mut steps: Vec<(Duration, Step)> = Vec::new();
    let mut switch_times = Vec::new();
    for _ in 0..n_switches {
        let t = Duration::from_millis(ctx.rng.random_range(300..WINDOW_MS));
        let by = if ctx.rng.random_bool(0.5) {
            "oncall-a"
        } else {
            "oncall-b"
        };
        switch_times.push(t);
        steps.push((t, Step::Switch { by }));
    }
    let mut planned = Vec::new();
    // The first fault's kind, start and hold, when it must be of a kind.
    let mut first_window: Option<(&'static str, Duration, Duration)> = None;
    for i in 0..n_faults {
        // With --truth, the first fault is always one on what a member
        // trusts; with --failsafe or --etcd-outages, one that leaves etcd
        // unreachable.
        let mut kind = if !first_kinds.is_empty() && i == 0 {
            first_kinds[ctx.rng.random_range(0..first_kinds.len())]
        } else {
            kinds[ctx.rng.random_range(0..kinds.len())]
        };
        // Some faults aim at a switch in flight.
        let start = if ctx.rng.random_bool(0.4) {
            let s = switch_times[ctx.rng.random_range(0..switch_times.len())];
            s + Duration::from_millis(ctx.rng.random_range(0..300))
        } else {
            Duration::from_millis(ctx.rng.random_range(0..WINDOW_MS - 500))
        };
        let mut hold = plan_hold(ctx, kind, mode);
        // The run's first fault must not be skipped: a later fault that would keep it from being injected (or that it
        // would keep out) while both are held, give or take a second
        // (steps run late on a loaded machine), is drawn again from the
        // other kinds.
        if let Some((first, first_start, first_hold)) = first_window {
            let overlap = start <= first_start + first_hold + PLAN_SLACK
                && first_start <= start + hold + PLAN_SLACK;
            if overlap && conflicts(first, kind) {
                let others: Vec<&'static str> = kinds
                    .iter()
                    .copied()
                    .filter(|k| !conflicts(first, k))
                    .collect();
                kind = others[ctx.rng.random_range(0..others.len())];
                hold = plan_hold(ctx, kind, mode);
            }
        }
        if kind == "snapshot-restore" {
            // The snapshot it restores: taken at a random time before it
            // (one more is taken as the run starts, in case etcd cannot
            // take this one).
            let at = Duration::from_millis(ctx.rng.random_range(0..=start.as_millis() as u64));
            steps.push((at, Step::Snapshot));
        }
        if !first_kinds.is_empty() && i == 0 {
            first_window = Some((kind, start, hold));
        }
        planned.push(Planned { kind, hold });
        steps.push((start, Step::Inject { fault: i }));
        steps.push((start + hold, Step::Heal { fault: i }));
    }
    steps.sort_by_key(|(t, _)| *t);
    ctx.note(format!(
        "plan: {}",
        steps
            .iter()
            .map(|(t, s)| match s {
                Step::Switch { by } => format!("{}ms switch by {by}", t.as_millis()),
                Step::Snapshot => format!("{}ms etcd snapshot", t.as_millis()),
                Step::Inject { fault } =>
                    format!("{}ms inject {}", t.as_millis(), planned[*fault].kind),
                Step::Heal { fault } => format!(
                    "{}ms heal {} (held {}ms)",
                    t.as_millis(),
                    planned[*fault].kind,
                    planned[*fault].hold.as_millis()
                ),
            })
            .collect::<Vec<_>>()
            .join("; ")
    ));

    let mut snapshot = None;
    if planned.iter().any(|p| p.kind == "snapshot-restore") {
        snapshot = Some(ctx.save_snapshot().await?);
    }
    let origin = Instant::now();
    let mut ids: BTreeMap<usize, u64> = BTreeMap::new();
    let mut pending = Vec::new();
    for (t, step) in steps {
        tokio::time::sleep(t.saturating_sub(origin.elapsed())).await;
        ctx.supervise().await;
        match step {
            Step::Switch { by } => {
                let to = match ctx.snapshot().await {
                    Ok(s) => s.route.map(|(r, _)| r.setup.other()),
                    Err(_) => None,
                }
                .unwrap_or(if ctx.rng.random_bool(0.5) {
                    Setup::Hot
                } else {
                    Setup::Warm
                });
                let via = ctx.live_member();
                pending.push(ctx.switch(to, by, via, true));
            }
            Step::Snapshot => match ctx.save_snapshot().await {
                Ok(path) => snapshot = Some(path),
                // etcd without quorum: the restore uses an older one.
                Err(e) => ctx.note(format!("no etcd snapshot now: {e:#}")),
            },
            Step::Inject { fault } => {
                let kind = planned[fault].kind;
                let Some(f) = resolve(ctx, kind, snapshot.as_ref()).await? else {
                    ctx.note(format!("skipped {kind}: no target found"));
                    continue;
                };
                if let Some((other, _)) = ctx.active().find(|(_, a)| a.overlaps(&f)) {
                    ctx.note(format!(
                        "skipped {kind} on {}: fault #{other} holds that process",
                        f.target(&ctx.lab)
                    ));
                    continue;
                }
                // etcd takes no write without a quorum.
                let nodes = ctx.lab.etcd.nodes.len();
                if matches!(f, LabFault::RouteDeleted) {
                    if let Some((other, _)) = ctx.active().find(|(_, a)| a.takes_etcd_quorum(nodes))
                    {
                        ctx.note(format!("skipped {kind}: fault #{other} took etcd's quorum"));
                        continue;
                    }
                }
                let instantaneous = f.instantaneous();
                let id = ctx.inject(f).await?;
                if !instantaneous {
                    ids.insert(fault, id);
                }
            }
            Step::Heal { fault } => {
                if let Some(id) = ids.remove(&fault) {
                    ctx.heal(id).await?;
                }
            }
        }
    }
    for p in pending {
        p.answer().await;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Summary over many runs

/// Totals over runs (random mode or `all`).
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub runs: u64,
    pub passed: u64,
    /// `(scenario, seed, why)` of every failed run.
    pub failed: Vec<(String, u64, String)>,
    pub switches: u64,
    pub switch_results: BTreeMap<String, u64>,
    pub faults: BTreeMap<String, u64>,
    pub matched: u64,
    pub mismatched: u64,
    pub failed_pairs: u64,
    pub split_samples: u64,
    pub samples: u64,
    /// `(how long, scenario, seed)`.
    pub longest_outage: Option<(Duration, String, u64)>,
    /// The longest outage that overlaps no etcd restore.
    pub longest_outage_outside_restores: Option<(Duration, String, u64)>,
    /// Answers to forged pushes, by kind of answer.
    pub forged: BTreeMap<String, u64>,
    pub forged_applied: u64,
    /// etcd restores, and the longest time from etcd's stop until every
    /// LB was seen blocked.
    pub restores: u64,
    pub longest_fence: Option<(Duration, String, u64)>,
    /// Runs in which a fault on what a member trusts ([`TRUTH_KINDS`])
    /// was injected.
    pub runs_with_truth: u64,
    /// Runs in which etcd was unreachable ([`crate::verdict::ETCD_UNREACHABLE`]),
    /// for how long in all, and the key delivery lost meanwhile.
    pub runs_with_etcd_outage: u64,
    pub etcd_unreachable: Duration,
    pub lost_to_etcd: Duration,
    /// The same over the outages that began with the link settled and
    /// met no other fault ([`crate::verdict::EtcdOutage::alone`]).
    pub etcd_alone: u64,
    pub etcd_alone_unreachable: Duration,
    pub etcd_alone_lost: Duration,
    /// SAE pairs with a transit gap, over every run that had them.
    pub transit_matched: u64,
    pub transit_stranded: u64,
    pub transit_failed: u64,
    pub longest_heal: Option<(Duration, String, u64)>,
    pub longest_deadman: Option<(Duration, String, u64)>,
    pub heals: u64,
    pub deadman_measured: u64,
}

fn keep_max(
    slot: &mut Option<(Duration, String, u64)>,
    d: Option<Duration>,
    name: &str,
    seed: u64,
) {
    if let Some(d) = d {
        if slot.as_ref().is_none_or(|(m, _, _)| d > *m) {
            *slot = Some((d, name.to_string(), seed));
        }
    }
}

impl Summary {
    pub fn add(&mut self, name: &str, seed: u64, report: &RunReport) {
        let v = &report.verdict;
        self.runs += 1;
        if v.passed() {
            self.passed += 1;
        } else {
            let why = v
                .violations
                .first()
                .map(ToString::to_string)
                .or_else(|| v.failures.first().cloned())
                .or_else(|| v.failed_checks.first().cloned())
                .unwrap_or_default();
            self.failed.push((name.to_string(), seed, why));
        }
        self.switches += v.switches.requested;
        for (k, n) in &v.switches.results {
            *self.switch_results.entry(k.clone()).or_default() += n;
        }
        for (k, n) in &v.faults {
            *self.faults.entry(k.clone()).or_default() += n;
        }
        self.matched += v.pairs.matched;
        self.mismatched += v.pairs.mismatched;
        self.failed_pairs += v.pairs.failed;
        self.split_samples += v.violation_counts().1 as u64;
        self.samples += v.samples as u64;
        keep_max(&mut self.longest_outage, Some(v.longest_outage), name, seed);
        keep_max(
            &mut self.longest_outage_outside_restores,
            Some(v.longest_outage_outside_restores),
            name,
            seed,
        );
        for (k, n) in &v.forged {
            *self.forged.entry(k.clone()).or_default() += n;
        }
        self.forged_applied += v.forged_applied() as u64;
        self.restores += v.restores.len() as u64;
        if TRUTH_KINDS.iter().any(|k| v.faults.contains_key(*k)) {
            self.runs_with_truth += 1;
        }
        if !v.etcd_outages.is_empty() {
            self.runs_with_etcd_outage += 1;
        }
        self.etcd_unreachable += v.etcd_unreachable();
        for o in v.etcd_outages.iter().filter(|o| o.alone) {
            self.etcd_alone += 1;
            self.etcd_alone_unreachable += Duration::from_micros(o.to_us.saturating_sub(o.from_us));
            self.etcd_alone_lost += o.lost;
        }
        if let Some(t) = &v.transit {
            self.transit_matched += t.matched;
            self.transit_stranded += t.stranded;
            self.transit_failed += t.failed;
        }
        self.lost_to_etcd += v.lost_to_etcd;
        for r in &v.restores {
            let all = r
                .blocked_after
                .iter()
                .map(|(_, b)| *b)
                .collect::<Option<Vec<_>>>()
                .and_then(|b| b.into_iter().max());
            keep_max(&mut self.longest_fence, all, name, seed);
        }
        keep_max(&mut self.longest_heal, v.longest_heal(), name, seed);
        keep_max(&mut self.longest_deadman, v.longest_deadman(), name, seed);
        self.heals += v.heals.len() as u64;
        self.deadman_measured += v
            .deadman
            .iter()
            .filter(|d| d.blocked_after.is_some())
            .count() as u64;
    }

    /// A run that could not be carried out (the lab did not start).
    pub fn add_error(&mut self, name: &str, seed: u64, error: &anyhow::Error) {
        self.runs += 1;
        self.failed
            .push((name.to_string(), seed, format!("run error: {error:#}")));
    }

    pub fn all_passed(&self) -> bool {
        self.failed.is_empty()
    }
}

fn at(x: &Option<(Duration, String, u64)>) -> String {
    match x {
        Some((d, name, seed)) => {
            format!("{:.1} ms ({name} --seed {seed})", d.as_secs_f64() * 1000.0)
        }
        None => "-".into(),
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |m: &BTreeMap<String, u64>| {
            m.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(
            f,
            "runs: {} ({} passed, {} failed)",
            self.runs,
            self.passed,
            self.failed.len()
        )?;
        writeln!(
            f,
            "switchovers requested: {} ({})",
            self.switches,
            join(&self.switch_results)
        )?;
        writeln!(
            f,
            "faults injected: {} ({})",
            self.faults.values().sum::<u64>(),
            join(&self.faults)
        )?;
        writeln!(
            f,
            "pairs: matched {}, mismatched {}, failed {}",
            self.matched, self.mismatched, self.failed_pairs
        )?;
        writeln!(
            f,
            "LB samples: {}, on different setups or both: {}",
            self.samples, self.split_samples
        )?;
        writeln!(f, "longest outage: {}", at(&self.longest_outage))?;
        if self.transit_matched + self.transit_stranded + self.transit_failed > 0 {
            writeln!(
                f,
                "SAE pairs in transit: matched {}, stranded {} ({:.2} per switchover requested), failed {}",
                self.transit_matched,
                self.transit_stranded,
                self.transit_stranded as f64 / self.switches.max(1) as f64,
                self.transit_failed
            )?;
        }
        if self.runs_with_truth > 0 {
            writeln!(
                f,
                "runs with a forged push, a route deletion or an etcd restore: {} of {}",
                self.runs_with_truth, self.runs
            )?;
        }
        if self.runs_with_etcd_outage > 0 {
            writeln!(
                f,
                "runs with etcd unreachable: {} of {}; etcd unreachable {:.1} s in all; key delivery lost meanwhile and until it recovered: {:.1} s ({:.0} %)",
                self.runs_with_etcd_outage,
                self.runs,
                self.etcd_unreachable.as_secs_f64(),
                self.lost_to_etcd.as_secs_f64(),
                100.0 * self.lost_to_etcd.as_secs_f64()
                    / self.etcd_unreachable.as_secs_f64().max(1e-9)
            )?;
            writeln!(
                f,
                "  of which begun with the link settled, met by no other fault and no switchover: {}, etcd unreachable {:.1} s, key delivery lost {:.1} s ({:.0} %)",
                self.etcd_alone,
                self.etcd_alone_unreachable.as_secs_f64(),
                self.etcd_alone_lost.as_secs_f64(),
                100.0 * self.etcd_alone_lost.as_secs_f64()
                    / self.etcd_alone_unreachable.as_secs_f64().max(1e-9)
            )?;
        }
        if self.restores > 0 {
            writeln!(
                f,
                "etcd restores: {} (etcd down at least the lease TTL: every member fences itself, that outage is expected); every LB blocked after at most {}; longest outage outside restores: {}",
                self.restores,
                at(&self.longest_fence),
                at(&self.longest_outage_outside_restores)
            )?;
        }
        if !self.forged.is_empty() {
            writeln!(
                f,
                "forged pushes: {} ({}); applied: {}",
                self.forged.values().sum::<u64>(),
                join(&self.forged),
                self.forged_applied
            )?;
        }
        writeln!(
            f,
            "longest time to heal: {} over {} heals",
            at(&self.longest_heal),
            self.heals
        )?;
        writeln!(
            f,
            "longest dead-man's block: {} over {} measured",
            at(&self.longest_deadman),
            self.deadman_measured
        )?;
        for (name, seed, why) in &self.failed {
            let replay = if name == "random" {
                format!("random --seed {seed} --runs 1")
            } else {
                format!("run {name} --seed {seed}")
            };
            writeln!(f, "FAILED {name} seed {seed} (replay: {replay}): {why}")?;
        }
        Ok(())
    }
}
