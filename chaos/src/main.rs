//! lockstep-chaos: fault scenarios against a local lab link, each judged
//! from its recorded history (see `chaos/README.md`). Exits 1 when any run
//! fails its verdict or cannot be carried out.
//!
//! The sidecars must be built with `--features failpoints,mutations`
//! (`chaos/run` does it): several scenarios hold the leader at a protocol
//! step with a failpoint.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use lockstep_chaos::random::{self, Summary};
use lockstep_chaos::{self as chaos, history, verdict, RunOptions, Scenario};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    version,
    about = "Fault scenarios against a local lockstep link, judged from their recorded history"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Break the protocol on purpose in every sidecar (skip-drain,
    /// ack-before-lb-blocked, ignore-token, ...) to see the verdict catch it.
    #[arg(long, global = true)]
    mutation: Option<String>,
    /// Milliseconds between two reads of one LB's state.
    #[arg(long, global = true, default_value_t = 5)]
    sample_ms: u64,
}

#[derive(Subcommand)]
enum Command {
    /// List the scenarios.
    List,
    /// Run the named scenarios.
    Run {
        #[arg(required = true)]
        names: Vec<String>,
        /// Seed for every random choice and timing (default: from the clock).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Run every scenario.
    All {
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Runs with random faults and switchovers; run i uses seed S + i.
    Random {
        #[arg(long)]
        runs: u64,
        #[arg(long)]
        seed: Option<u64>,
        /// Members in network namespaces, network faults drawn too (root).
        #[arg(long)]
        net: bool,
        /// Faults on what a member trusts drawn too, at least one per run:
        /// forged pushes, the route key deleted, etcd restored from a
        /// snapshot.
        #[arg(long)]
        truth: bool,
        /// Failsafe on, and a fault that leaves etcd unreachable (frozen,
        /// without quorum; with --net cut from one or every member) in
        /// every run, held up to 15 s.
        #[arg(long, conflicts_with_all = ["truth", "etcd_outages"])]
        failsafe: bool,
        /// The runs of --failsafe with failsafe off: what etcd outages
        /// cost without it.
        #[arg(long, conflicts_with = "truth")]
        etcd_outages: bool,
    },
    /// Judge recorded histories again (with a summary over several: a
    /// campaign judged by today's verdict).
    Check {
        #[arg(required = true)]
        histories: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("lockstep-chaos: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn seed_or_clock(seed: Option<u64>) -> u64 {
    seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 % 1_000_000)
            .unwrap_or(1)
    })
}

/// Returns whether every run passed.
fn run(cli: Cli) -> Result<bool> {
    let opts = RunOptions {
        sample_interval: Duration::from_millis(cli.sample_ms.max(1)),
        mutation: cli.mutation.clone(),
        ..RunOptions::default()
    };
    if !cfg!(feature = "failpoints")
        && !matches!(cli.command, Command::List | Command::Check { .. })
    {
        // The sidecars are built by the same cargo command as this binary.
        eprintln!(
            "warning: built without the `failpoints` feature: scenarios that hold the leader \
             at a protocol step will fail; use chaos/run"
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    match cli.command {
        Command::List => {
            for s in chaos::registry() {
                println!("{:<34} {}", s.name, s.about);
            }
            for r in random::scenarios() {
                println!("{:<34} {} (`random`)", r.name, r.about);
            }
            Ok(true)
        }
        Command::Check { histories } => {
            let mut summary = Summary::default();
            for path in histories {
                let events = history::read(&path)?;
                let verdict = verdict::judge(&events);
                print!("{verdict}");
                let name = verdict.scenario.clone();
                let seed = verdict.seed;
                summary.add(
                    &name,
                    seed,
                    &chaos::RunReport {
                        verdict,
                        history: path,
                    },
                );
            }
            if summary.runs > 1 {
                println!("\n== summary\n{summary}");
            }
            Ok(summary.all_passed())
        }
        Command::Run { names, seed } => {
            let mut scenarios = Vec::new();
            for name in &names {
                match chaos::find(name) {
                    Some(s) => scenarios.push(s),
                    None => bail!("no scenario {name:?}; `lockstep-chaos list` shows them"),
                }
            }
            let seed = seed_or_clock(seed);
            rt.block_on(run_all(&scenarios, |_| seed, &opts))
        }
        Command::All { seed } => {
            let seed = seed_or_clock(seed);
            rt.block_on(run_all(&chaos::registry(), |_| seed, &opts))
        }
        Command::Random {
            runs,
            seed,
            net,
            truth,
            failsafe,
            etcd_outages,
        } => {
            let mode = random::Mode {
                net,
                truth,
                etcd: match (failsafe, etcd_outages) {
                    (true, _) => random::EtcdOutages::Failsafe,
                    (false, true) => random::EtcdOutages::Fenced,
                    (false, false) => random::EtcdOutages::Drawn,
                },
            };
            let scenario = random::scenario_for(mode)?;
            let seed = seed_or_clock(seed);
            println!(
                "random mode: {runs} runs, seeds {seed}..{}",
                seed + runs.saturating_sub(1)
            );
            let scenarios: Vec<Scenario> = (0..runs).map(|_| scenario).collect();
            rt.block_on(run_all(&scenarios, |i| seed + i as u64, &opts))
        }
    }
}

/// Resolves on SIGINT or SIGTERM, naming it.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without handlers the default actions apply; never resolve.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "interrupted",
        _ = term.recv() => "terminated",
    }
}

async fn run_all(
    scenarios: &[Scenario],
    seed_of: impl Fn(usize) -> u64,
    opts: &RunOptions,
) -> Result<bool> {
    let mut bound_printed = false;
    let mut summary = Summary::default();
    for (i, s) in scenarios.iter().enumerate() {
        let seed = seed_of(i);
        // Dropping the run drops its lab, whose guards kill every process
        // it started: stop cleanly on Ctrl-C or SIGTERM.
        let outcome = tokio::select! {
            r = chaos::run(s, seed, opts) => r,
            signal = interrupted() => {
                println!("\n{signal}: stopped during {} seed={seed}", s.name);
                println!("\n== summary (incomplete)\n{summary}");
                return Ok(false);
            }
        };
        match outcome {
            Ok(report) => {
                let v = &report.verdict;
                if !bound_printed {
                    bound_printed = true;
                    println!(
                        "liveness bound: {:.1} s = 3 x (lease TTL + D + 2 x resend); D = {:.0} ms",
                        v.bound.as_secs_f64(),
                        v.down_detection.as_secs_f64() * 1000.0
                    );
                }
                print!("[{}/{}] {v}", i + 1, scenarios.len());
                summary.add(s.name, seed, &report);
            }
            Err(e) => {
                println!(
                    "[{}/{}] ERROR {} seed={seed}: {e:#}",
                    i + 1,
                    scenarios.len(),
                    s.name
                );
                summary.add_error(s.name, seed, &e);
            }
        }
    }
    println!("\n== summary\n{summary}");
    Ok(summary.all_passed())
}
