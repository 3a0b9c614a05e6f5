//! The local lab: a whole QKD link on this machine (etcd, four mock KMEs,
//! two HAProxy LBs, two sidecars), key traffic through both LBs, and a
//! switchover hot → warm → hot shown as the user sees it. Also the
//! benchmarks: switchover (with `--breakdown`, where its time goes),
//! transit, takeover, status, failover, and many links on one etcd.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use lockstep::proto;
use lockstep_core::Setup;
use lockstep_testkit::lab::{Lab, LabOptions};
use lockstep_testkit::outage::EndProbe;
use lockstep_testkit::switch_request;
use lockstep_testkit::traffic::{Traffic, TrafficReport};
use lockstep_testkit::transit::Transit;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    version,
    about = "Run a lockstep link locally: the lab and the benchmark"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where a benchmark's etcd keeps its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum EtcdData {
    /// On disk, fsynced: what a deployment runs.
    Disk,
    /// On tmpfs: etcd without its fsync.
    Tmpfs,
}

#[derive(Subcommand)]
enum Command {
    /// Start the lab, show a switchover hot → warm → hot, then keep running
    /// for the CLI until Ctrl-C.
    Run {
        /// Show the switchovers, then stop everything and exit.
        #[arg(long)]
        once: bool,
    },
    /// Measure switchover latency and outage over many switches.
    Bench {
        /// Number of switchovers (alternating hot/warm).
        #[arg(long, default_value_t = 200)]
        switches: usize,
        /// `handover.issuer` of the lab's sidecars: "both" (no handover,
        /// the plain switch) or "alice"/"bob" (planned switches hold first).
        #[arg(long, default_value = "both")]
        issuer: String,
        /// `handover.grace` when there is a handover.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "500ms")]
        grace: Duration,
        /// Members (sidecar + HAProxy) per end: 1 is 2 members in the link,
        /// 4 is 8, 16 is 32.
        #[arg(long, default_value_t = 1)]
        members_per_role: usize,
        /// Where etcd keeps its data: on disk (the system's temporary
        /// directory, fsynced as in production) or on tmpfs.
        #[arg(long, value_enum, default_value_t = EtcdData::Disk)]
        etcd_data: EtcdData,
        /// Sidecars log every closed span as JSON; afterwards, where the
        /// time of a switch went (etcd, gRPC, HAProxy, waiting).
        #[arg(long)]
        breakdown: bool,
    },
    /// Where the time of each switch went, from the span logs of a
    /// `bench --breakdown` run (its lab directory).
    Breakdown {
        #[arg(long, default_value = "target/lab/bench")]
        dir: std::path::PathBuf,
    },
    /// Many links on one etcd: for each count, one etcd and that many lab
    /// links (2 members each, with their HAProxies and KMEs); etcd's
    /// request rate and every process's RSS and CPU at rest, then the
    /// switch latency of one link while the others are idle.
    LinksBench {
        /// Link counts to measure, one after another.
        #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
        links: Vec<usize>,
        /// Switchovers of link 0 per count.
        #[arg(long, default_value_t = 200)]
        switches: usize,
        /// How long to measure at rest.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
        rest: Duration,
        /// Where etcd keeps its data: on disk (the system's temporary
        /// directory, fsynced as in production) or on tmpfs.
        #[arg(long, value_enum, default_value_t = EtcdData::Disk)]
        etcd_data: EtcdData,
        /// Link 0's sidecars log their spans; where the time of its
        /// switches went (as `bench --breakdown`).
        #[arg(long)]
        breakdown: bool,
    },
    /// Keys stranded in transit by planned switchovers, with and without a
    /// handover: SAE pairs with a gap between `enc_keys` and `dec_keys`,
    /// and each end's outage as its SAEs see it.
    TransitBench {
        /// Planned switchovers per variant (alternating hot/warm).
        #[arg(long, default_value_t = 100)]
        switches: usize,
        /// SAE pairs in parallel.
        #[arg(long, default_value_t = 8)]
        pairs: usize,
        /// Time a key_ID travels from Alice's SAE to Bob's.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "200ms")]
        gap: Duration,
        /// `handover.grace` of the handover variant.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "300ms")]
        grace: Duration,
    },
    /// Leader takeover: the leader stopped gracefully (SIGTERM) or killed
    /// (SIGKILL), a switchover asked of another member at once; when the
    /// next leader holds office and when the switch completes. Also the
    /// sidecars' RSS and CPU at rest.
    TakeoverBench {
        /// Runs per kind of stop.
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
    /// `lockstep status` latency: the whole CLI process (start, mutual-TLS
    /// connect, the Admin call with its fan-out to both members, the
    /// table), and the Admin call alone over one open channel.
    StatusBench {
        /// Runs of each.
        #[arg(long, default_value_t = 500)]
        runs: usize,
    },
    /// Automatic failover, side by side with plain HAProxy backup servers:
    /// "only hot-Alice dies" and "hot-Alice and hot-Bob die".
    FailoverBench {
        /// Runs per system and scenario.
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    rt.block_on(async {
        match cli.command {
            Command::Run { once } => run(once).await,
            Command::Bench {
                switches,
                issuer,
                grace,
                members_per_role,
                etcd_data,
                breakdown,
            } => {
                bench(
                    switches,
                    issuer,
                    grace,
                    members_per_role,
                    etcd_data == EtcdData::Disk,
                    breakdown,
                )
                .await
            }
            Command::Breakdown { dir } => {
                let switches = lockstep_testkit::breakdown::from_dir(&dir)?;
                if switches.is_empty() {
                    bail!(
                        "no switch with span timings in {}: run `bench --breakdown`",
                        dir.display()
                    );
                }
                println!("{}", lockstep_testkit::breakdown::report(&switches));
                Ok(())
            }
            Command::LinksBench {
                links,
                switches,
                rest,
                etcd_data,
                breakdown,
            } => {
                links_bench(
                    &links,
                    switches,
                    rest,
                    etcd_data == EtcdData::Disk,
                    breakdown,
                )
                .await
            }
            Command::TransitBench {
                switches,
                pairs,
                gap,
                grace,
            } => {
                for issuer in ["alice", "both"] {
                    transit_bench(switches, pairs, gap, issuer, grace).await?;
                }
                Ok(())
            }
            Command::TakeoverBench { runs } => takeover_bench(runs).await,
            Command::FailoverBench { runs } => failover_bench(runs).await,
            Command::StatusBench { runs } => status_bench(runs).await,
        }
    })
}

/// Median, p90, p99 and max of `d` (sorted here), as text.
fn percentiles(d: &mut [Duration]) -> String {
    d.sort();
    let at = |p: f64| {
        let i = ((d.len() as f64 * p) as usize).min(d.len().saturating_sub(1));
        d.get(i).copied().unwrap_or_default()
    };
    format!(
        "median {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        at(0.5).as_secs_f64() * 1e3,
        at(0.9).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3
    )
}

async fn status_bench(runs: usize) -> Result<()> {
    let lab = Lab::start("status-bench", LabOptions::default()).await?;
    let cli = lockstep_testkit::lab::process::find_program("lockstep")?;
    let env = lab.cli_env(0);
    let run = || {
        let t = Instant::now();
        let out = std::process::Command::new(&cli)
            .envs(env.clone())
            .arg("status")
            .output()
            .context("running lockstep status")?;
        if !out.status.success() {
            bail!(
                "lockstep status failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(t.elapsed())
    };
    for _ in 0..10 {
        run()?;
    }
    let mut process = Vec::with_capacity(runs);
    for _ in 0..runs {
        process.push(run()?);
    }
    let mut admin = lab.admin(0).await?;
    let mut calls = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        admin
            .status(proto::StatusRequest {})
            .await
            .map_err(|s| anyhow::anyhow!("status: {}", s.message()))?;
        calls.push(t.elapsed());
    }
    println!("binary: {}", cli.display());
    println!(
        "lockstep status (whole process), 2 members, mutual TLS, {runs} runs: {}",
        percentiles(&mut process)
    );
    println!(
        "Admin.Status alone (one open channel), {runs} calls: {}",
        percentiles(&mut calls)
    );
    Ok(())
}

fn diff(after: &TrafficReport, before: &TrafficReport) -> String {
    format!(
        "matched +{}, mismatched +{}, failed +{}",
        after.matched - before.matched,
        after.mismatched - before.mismatched,
        after.failed - before.failed
    )
}

async fn run(once: bool) -> Result<()> {
    println!("starting the lab: etcd, 4 mock KMEs, 2 HAProxy LBs, 2 lockstep sidecars ...");
    // The main job runs with failsafe on: freeze etcd and the link keeps
    // serving (`docs/design.md`, "Failsafe").
    let mut options = LabOptions::default();
    options.timing = options.timing.with_failsafe();
    let lab = Lab::start("demo", options).await?;
    println!(
        r#"
        hot setup                      warm setup
   KME hot-alice  {ha:<15}       KME warm-alice {wa}
   KME hot-bob    {hb:<15}       KME warm-bob   {wb}

   Alice's LB (HAProxy) {alb:<15} <- sidecar alice-0 (gRPC {ag}, check {ac})
   Bob's LB   (HAProxy) {blb:<15} <- sidecar bob-0   (gRPC {bg}, check {bc})
   etcd {etcd}
   logs and configs: {dir}
"#,
        ha = lab.kmes.addr(Setup::Hot, "alice")?,
        hb = lab.kmes.addr(Setup::Hot, "bob")?,
        wa = lab.kmes.addr(Setup::Warm, "alice")?,
        wb = lab.kmes.addr(Setup::Warm, "bob")?,
        alb = lab.alice_lb(),
        blb = lab.bob_lb(),
        ag = lab.sidecars[0].spec.grpc,
        ac = lab.sidecars[0].spec.http,
        bg = lab.sidecars[1].spec.grpc,
        bc = lab.sidecars[1].spec.http,
        etcd = lab.etcd.endpoints().join(","),
        dir = lab.dir.display(),
    );
    let traffic = Traffic::start(lab.traffic_config());
    traffic
        .wait_for_matched(50, Duration::from_secs(10))
        .await
        .context("no key pairs flowed through the LBs")?;
    let before = traffic.snapshot();
    println!("traffic: an SAE at Alice gets keys (enc_keys) and its peer at Bob fetches them (dec_keys): {} pairs matched so far, all on hot", before.matched);
    // SAE pairs as applications run them: the key_ID travels Alice -> Bob
    // for a while. The handover (Alice blocks first, Bob keeps the old
    // setup for the grace) strands none of them.
    let t = &lab.options.timing;
    let gap = t.handover_grace / 2;
    let transit = Transit::start(lab.transit_config(4, gap));
    transit
        .wait_for_matched(8, Duration::from_secs(10))
        .await
        .context("no SAE pair with a transit gap got through")?;
    println!(
        "SAE pairs: 4 more pairs pass each key_ID from Alice to Bob over {} ms, as over a real network (handover: issuer {}, grace {} ms)",
        gap.as_millis(),
        t.handover_issuer,
        t.handover_grace.as_millis()
    );

    let mut admin = lab.admin(0).await?;
    for to in [Setup::Warm, Setup::Hot] {
        let before = traffic.snapshot();
        println!("\n$ lockstep switchover --to {to} --reason \"lab demo\" --wait");
        let t = Instant::now();
        let reply = admin
            .switchover(proto::SwitchRequest {
                requested_by: "lockstep-lab".into(),
                ..switch_request(to, "lab demo")
            })
            .await
            .map_err(|s| anyhow::anyhow!("switchover refused: {}", s.message()))?
            .into_inner();
        let took = t.elapsed();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = traffic.snapshot();
        println!(
            "  every LB serves {to} at epoch {} after {:.1} ms; what the SAEs saw meanwhile: {}; longest outage so far {:.1} ms",
            reply.epoch,
            took.as_secs_f64() * 1000.0,
            diff(&after, &before),
            after.longest_outage.as_secs_f64() * 1000.0
        );
    }
    let history = admin
        .history(proto::HistoryRequest {
            limit: 5,
            ..Default::default()
        })
        .await
        .map_err(|s| anyhow::anyhow!("history: {}", s.message()))?
        .into_inner();
    println!("\n$ lockstep history");
    for h in history.records.iter().rev() {
        println!(
            "  epoch {:>3}  {:<10} {:<5} -> {:<5} drain {:>3} ms, total {:>3} ms  {} (by {})",
            h.epoch,
            h.kind,
            proto::names::setup::name(h.from).unwrap_or("-"),
            proto::names::setup::name(h.to).unwrap_or("-"),
            h.drain_ms,
            h.total_ms,
            h.reason,
            h.requested_by
        );
    }
    let report = traffic.stop().await;
    let transit = transit.stop().await;
    println!("\nkey pairs: {report}");
    println!(
        "SAE pairs in transit: matched {}, stranded {} (a key issued on one setup and asked for on the other), failed {}",
        transit.matched, transit.stranded, transit.failed
    );
    if report.mismatched > 0 {
        bail!(
            "{} mismatched key pairs: Alice and Bob routed to different setups",
            report.mismatched
        );
    }
    if once {
        println!("lab ran once; stopping everything.");
        return Ok(());
    }
    let exports: String = lab
        .cli_env(0)
        .iter()
        .map(|(k, v)| format!("  export {k}={v}\n"))
        .collect();
    println!(
        "\nThe lab keeps running, with mutual TLS (its CA and certificates are in {}). In another terminal, as the lab's operator:\n{exports}  target/debug/lockstep status\n  target/debug/lockstep switchover --to warm --reason \"trying it\" --wait\n  target/debug/lockstep history\nThe status page (read-only, live): {} (alice-0) or {} (bob-0).\nPress Ctrl-C to stop the lab.",
        lab.pki.dir.display(),
        lab.sidecars[0].status_url(),
        lab.sidecars[1].status_url()
    );
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    println!("stopping the lab.");
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The lengths in ms of the probe's outages that began at `since` or
/// later (not the start-up's).
fn outage_ms(outages: &[lockstep_testkit::outage::Outage], since: Instant) -> Vec<f64> {
    outages
        .iter()
        .filter(|o| o.start >= since)
        .map(|o| o.length.as_secs_f64() * 1000.0)
        .collect()
}

fn summary(name: &str, mut v: Vec<f64>) -> String {
    v.sort_by(|a, b| a.total_cmp(b));
    format!(
        "{name:<44} n={:<4} median {:>7.2} ms   p99 {:>7.2} ms   max {:>7.2} ms",
        v.len(),
        percentile(&v, 50.0),
        percentile(&v, 99.0),
        v.last().copied().unwrap_or(f64::NAN)
    )
}

/// One switchover to `to` with `--wait`; its latency in ms.
async fn switch_ms(
    admin: &mut proto::admin_client::AdminClient<tonic::transport::Channel>,
    to: Setup,
    reason: String,
) -> Result<f64> {
    let t = Instant::now();
    let reply = admin
        .switchover(proto::SwitchRequest {
            requested_by: "bench".into(),
            ..switch_request(to, reason.clone())
        })
        .await
        .map_err(|s| anyhow::anyhow!("{reason}: {}", s.message()))?
        .into_inner();
    if !reply.completed {
        bail!("{reason}: the switch did not complete");
    }
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

async fn bench(
    switches: usize,
    issuer: String,
    grace: Duration,
    members_per_role: usize,
    etcd_on_disk: bool,
    breakdown: bool,
) -> Result<()> {
    let members = 2 * members_per_role;
    let etcd_data = if etcd_on_disk { "on disk" } else { "on tmpfs" };
    println!(
        "starting a lab link (1 etcd, {members} members, handover issuer {issuer}) for {switches} switchovers ..."
    );
    let mut options = LabOptions {
        members_per_role,
        etcd_on_disk,
        ..LabOptions::default()
    };
    options.timing.handover_issuer = issuer;
    options.timing.handover_grace = grace;
    if breakdown {
        options.sidecar_env.extend(span_logs());
    }
    let lab = Lab::start("bench", options).await?;
    let t = lab.traffic_config();
    let traffic = Traffic::start(t.clone());
    traffic
        .wait_for_matched(50, Duration::from_secs(10))
        .await?;
    // Each end's blocked time at ~1 ms resolution, unlike the key pairs'
    // outage (which includes a pair's round trip and their 5 ms pause
    // after a failure).
    let probe = |lb, sae: &str| {
        EndProbe::start(
            lb,
            format!("/api/v1/keys/{sae}/status"),
            Duration::from_millis(1),
        )
    };
    let (alice, bob) = (
        probe(t.alice, &t.slave_sae_id),
        probe(t.bob, &t.master_sae_id),
    );
    let mut admin = lab.admin(0).await?;
    let mut latency = Vec::new();
    let mut to = Setup::Warm;
    let pids: Vec<u32> = lab.sidecars.iter().filter_map(|s| s.guard.pid()).collect();
    let usage_before: Vec<(u64, u64)> =
        pids.iter().map(|&p| proc_usage(p)).collect::<Result<_>>()?;
    let started = Instant::now();
    for i in 0..switches {
        // Let traffic settle on the new setup so outages do not merge.
        tokio::time::sleep(Duration::from_millis(40)).await;
        latency.push(switch_ms(&mut admin, to, format!("bench {i}")).await?);
        to = to.other();
    }
    let switching = started.elapsed();
    let usage_after: Vec<(u64, u64)> =
        pids.iter().map(|&p| proc_usage(p)).collect::<Result<_>>()?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let report = traffic.stop().await;
    let (alice_out, _) = alice.stop().await;
    let (bob_out, _) = bob.stop().await;
    let history = admin
        .history(proto::HistoryRequest {
            limit: switches as u32 + 10,
            ..Default::default()
        })
        .await
        .map_err(|s| anyhow::anyhow!("history: {}", s.message()))?
        .into_inner();
    let drain: Vec<f64> = history
        .records
        .iter()
        .filter(|h| h.kind == "switchover")
        .map(|h| h.drain_ms as f64)
        .collect();
    let outages: Vec<f64> = report
        .outages
        .iter()
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    println!(
        "\nlockstep switchover benchmark: {switches} switches, {members} members, loopback, etcd {etcd_data}"
    );
    println!(
        "{}",
        summary("switch latency (request -> every LB serves)", latency)
    );
    println!(
        "{}",
        summary("outage seen by key pairs (per outage)", outages)
    );
    println!(
        "{}",
        summary(
            "alice's LB blocked (status probe, per outage)",
            outage_ms(&alice_out, started)
        )
    );
    println!(
        "{}",
        summary(
            "bob's LB blocked (status probe, per outage)",
            outage_ms(&bob_out, started)
        )
    );
    println!(
        "{}",
        summary("leader's drain window (drain -> serve write)", drain)
    );
    println!("key pairs: {report}");
    // /proc counts CPU time in USER_HZ ticks, 100 per second on Linux.
    let rate = switches as f64 / switching.as_secs_f64();
    for (i, ((_, c0), (rss, c1))) in usage_before.iter().zip(&usage_after).enumerate() {
        println!(
            "sidecar {i} during {rate:.1} switches/s: RSS {:.1} MB, CPU {:.1} % of a core",
            *rss as f64 / 1024.0,
            (c1 - c0) as f64 / 100.0 / switching.as_secs_f64() * 100.0
        );
    }
    if let Some(node) = lab.etcd.nodes.first() {
        println!("{}", etcd_disk_latency(node.client).await?);
    }
    if report.mismatched > 0 {
        bail!("mismatched key pairs during the benchmark");
    }
    if breakdown {
        let switches = lockstep_testkit::breakdown::from_dir(&lab.dir)?;
        println!("\n{}", lockstep_testkit::breakdown::report(&switches));
        println!("logs: {}", lab.dir.display());
    }
    Ok(())
}

async fn transit_bench(
    switches: usize,
    pairs: usize,
    gap: Duration,
    issuer: &str,
    grace: Duration,
) -> Result<()> {
    let variant = if issuer == "both" {
        "no handover (issuer both)".to_string()
    } else {
        format!("handover (issuer {issuer}, grace {grace:?})")
    };
    println!("\nstarting a lab link for {switches} planned switchovers, {variant} ...");
    let mut options = LabOptions::default();
    options.timing.handover_issuer = issuer.into();
    options.timing.handover_grace = grace;
    let lab = Lab::start("transit-bench", options).await?;
    let t = lab.traffic_config();
    let transit = Transit::start(lab.transit_config(pairs, gap));
    transit
        .wait_for_matched(2 * pairs as u64, Duration::from_secs(20))
        .await?;
    let every = Duration::from_millis(1);
    let alice = EndProbe::start(
        t.alice,
        format!("/api/v1/keys/{}/status", t.slave_sae_id),
        every,
    );
    let bob = EndProbe::start(
        t.bob,
        format!("/api/v1/keys/{}/status", t.master_sae_id),
        every,
    );
    let mut admin = lab.admin(0).await?;
    let mut latency = Vec::new();
    let mut to = Setup::Warm;
    let started = Instant::now();
    for i in 0..switches {
        // Keys in transit at every switch, and outages that do not merge.
        tokio::time::sleep(Duration::from_millis(600)).await;
        latency.push(switch_ms(&mut admin, to, format!("transit bench {i}")).await?);
        to = to.other();
    }
    // Every key issued before the last switch reaches Bob.
    tokio::time::sleep(gap + grace + Duration::from_secs(1)).await;
    let report = transit.stop().await;
    let (alice_out, alice_calls) = alice.stop().await;
    let (bob_out, bob_calls) = bob.stop().await;
    println!("\n{variant}: {switches} switchovers, {pairs} SAE pairs, gap {gap:?}");
    println!(
        "{}",
        summary("switch latency (request -> every LB serves)", latency)
    );
    println!(
        "{}",
        summary(
            "issuing end (alice) outage, per outage",
            outage_ms(&alice_out, started)
        )
    );
    println!(
        "{}",
        summary(
            "receiving end (bob) outage, per outage",
            outage_ms(&bob_out, started)
        )
    );
    println!("status calls: alice {alice_calls}, bob {bob_calls}");
    println!(
        "key pairs in transit: matched {}, stranded {} ({:.2} per switch), failed {}{}",
        report.matched,
        report.stranded,
        report.stranded as f64 / switches as f64,
        report.failed,
        report
            .last_failure
            .as_deref()
            .map(|e| format!(" (last: {e})"))
            .unwrap_or_default()
    );
    if report.matched < (switches * pairs) as u64 / 2 {
        bail!("too few key pairs matched for the figures to mean anything");
    }
    Ok(())
}

/// RSS (kB) and CPU time (clock ticks) of process `pid`, from /proc.
fn proc_usage(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces): utime and
    // stime are the 14th and 15th fields of the whole line.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("odd stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Ok((rss, ticks(11) + ticks(12)))
}

async fn takeover_bench(runs: usize) -> Result<()> {
    println!("starting a lab link (2 members per end) for {runs} takeovers of each kind ...");
    let options = LabOptions {
        members_per_role: 2,
        ..LabOptions::default()
    };
    let mut lab = Lab::start("takeover-bench", options).await?;
    let ttl = lab.options.timing.lease_ttl;

    // At rest: RSS and CPU of every sidecar over 10 s.
    let pids: Vec<u32> = lab.sidecars.iter().filter_map(|s| s.guard.pid()).collect();
    let before: Vec<(u64, u64)> = pids.iter().map(|&p| proc_usage(p)).collect::<Result<_>>()?;
    let rest = Duration::from_secs(10);
    tokio::time::sleep(rest).await;
    let after: Vec<(u64, u64)> = pids.iter().map(|&p| proc_usage(p)).collect::<Result<_>>()?;
    // /proc counts CPU time in USER_HZ ticks, 100 per second on Linux.
    let hz = 100.0;
    for (i, ((_, c0), (rss, c1))) in before.iter().zip(&after).enumerate() {
        println!(
            "sidecar {i} at rest: RSS {:.1} MB, CPU {:.2} % of a core",
            *rss as f64 / 1024.0,
            (c1 - c0) as f64 / hz / rest.as_secs_f64() * 100.0
        );
    }

    let mut to = Setup::Warm;
    for kill in [false, true] {
        let mut elected = Vec::new();
        let mut done = Vec::new();
        for run in 0..runs {
            let old = lab.leader_index(None, Duration::from_secs(20)).await?;
            let via = (old + 1) % lab.sidecars.len();
            let mut admin = lab.admin(via).await?;
            let stopped = Instant::now();
            if kill {
                lab.sidecars[old].guard.kill();
            } else {
                let s = &mut lab.sidecars[old];
                tokio::task::block_in_place(|| s.guard.terminate(Duration::from_secs(10)));
            }
            let request = proto::SwitchRequest {
                requested_by: "bench".into(),
                timeout_ms: 30_000,
                ..switch_request(to, format!("takeover bench {run}"))
            };
            let (leader, reply) = tokio::join!(
                async {
                    let l = lab.leader_index(Some(old), ttl * 4).await;
                    (l, stopped.elapsed())
                },
                admin.switchover(request)
            );
            let switched = stopped.elapsed();
            leader.0?;
            let reply = reply
                .map_err(|s| anyhow::anyhow!("switch {run}: {}", s.message()))?
                .into_inner();
            if !reply.completed {
                bail!("switch {run} did not complete");
            }
            elected.push(leader.1.as_secs_f64() * 1000.0);
            done.push(switched.as_secs_f64() * 1000.0);
            to = to.other();
            let s = &mut lab.sidecars[old];
            tokio::task::block_in_place(|| s.restart())?;
            lab.wait_serving(to.other(), Duration::from_secs(30))
                .await?;
        }
        let kind = if kill {
            "SIGKILL"
        } else {
            "graceful stop (SIGTERM)"
        };
        println!("\nleader {kind}, {runs} runs (lease TTL {ttl:?})");
        println!("{}", summary("stop -> next leader holds office", elected));
        println!(
            "{}",
            summary("stop -> switch asked at once completes", done)
        );
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum System {
    Lockstep,
    Baseline,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Scenario {
    HotAliceDies,
    HotAliceAndBobDie,
}

struct RunResult {
    /// From the kill to the first matched pair served by warm.
    first_good: Option<Duration>,
    mismatched: u64,
    longest_outage: Duration,
}

/// The check timing both systems share: HAProxy `inter`/`fall`/`rise`/
/// `timeout check`, and lockstep's probe interval/fall/timeout set equal.
fn shared_timing() -> lockstep_testkit::lab::sidecar::Timing {
    let mut t = lockstep_testkit::lab::sidecar::Timing::default();
    t.probe_interval = t.check_inter;
    t.probe_fall = t.check_fall;
    t.failover_detection = Duration::ZERO;
    t
}

async fn failover_run(system: System, scenario: Scenario, i: usize) -> Result<RunResult> {
    use lockstep_testkit::lab::link::{ALICE_SAE, BOB_SAE};
    let timing = shared_timing();
    let name = format!("fobench-{system:?}-{scenario:?}-{i}").to_lowercase();
    let (mut lab, mut base) = (None, None);
    let (alice, bob) = match system {
        System::Lockstep => {
            let options = LabOptions {
                timing: timing.clone(),
                ..LabOptions::default()
            };
            let l = Lab::start(&name, options).await?;
            let addrs = (l.alice_lb(), l.bob_lb());
            lab = Some(l);
            addrs
        }
        System::Baseline => {
            let dir = lockstep_testkit::lab::link::lab_dir(&name)?;
            let b = lockstep_testkit::lab::baseline::BaselineLink::start(
                &dir, ALICE_SAE, BOB_SAE, &timing,
            )?;
            let addrs = (b.frontends[0], b.frontends[1]);
            base = Some(b);
            addrs
        }
    };
    let mut config = lockstep_testkit::traffic::TrafficConfig::new(alice, bob, ALICE_SAE, BOB_SAE);
    // A pair takes about a millisecond; a short timeout gives the failover
    // time a fine resolution (HAProxy waits up to 1 s before retrying a
    // refused server connection, which a 1 s timeout would quantize).
    config.request_timeout = Duration::from_millis(100);
    let traffic = Traffic::start(config);
    traffic
        .wait_for_matched(20, Duration::from_secs(10))
        .await
        .context("no traffic before the failure")?;
    let kmes = match (&mut lab, &mut base) {
        (Some(l), _) => &mut l.kmes,
        (_, Some(b)) => &mut b.kmes,
        _ => bail!("no link"),
    };
    let t0 = Instant::now();
    kmes.get_mut(Setup::Hot, "alice")?.kill();
    if scenario == Scenario::HotAliceAndBobDie {
        kmes.get_mut(Setup::Hot, "bob")?.kill();
    }
    let first_good = traffic
        .wait_for_matched_by(Setup::Warm, t0, Duration::from_secs(5))
        .await
        .ok()
        .map(|t| t - t0);
    // Watch a little longer for mismatches after the move.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = traffic.stop().await;
    Ok(RunResult {
        first_good,
        mismatched: report.mismatched,
        longest_outage: report.longest_outage,
    })
}

async fn failover_bench(runs: usize) -> Result<()> {
    let t = shared_timing();
    println!(
        "failover benchmark: {runs} runs per system and scenario; HAProxy checks inter {:?} fall {} rise {} timeout {:?}; lockstep probes every {:?}, fall {}, detection {:?}",
        t.check_inter, t.check_fall, t.check_rise, t.check_timeout, t.probe_interval, t.probe_fall, t.failover_detection
    );
    let mut rows = Vec::new();
    for scenario in [Scenario::HotAliceDies, Scenario::HotAliceAndBobDie] {
        for system in [System::Baseline, System::Lockstep] {
            let mut results = Vec::new();
            for i in 0..runs {
                let r = failover_run(system, scenario, i)
                    .await
                    .with_context(|| format!("{system:?} {scenario:?} run {i}"))?;
                eprint!(".");
                results.push(r);
            }
            eprintln!();
            rows.push((scenario, system, results));
        }
    }
    println!("\n| scenario | system | runs | recovered | failure -> first good pair: median / p99 | longest outage: median / p99 | mismatched pairs (runs with any) |");
    println!("|---|---|---|---|---|---|---|");
    let mut medians = std::collections::HashMap::new();
    for (scenario, system, results) in &rows {
        let good: Vec<f64> = results
            .iter()
            .filter_map(|r| r.first_good)
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect();
        let mut sorted = good.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let mut outage: Vec<f64> = results
            .iter()
            .map(|r| r.longest_outage.as_secs_f64() * 1000.0)
            .collect();
        outage.sort_by(|a, b| a.total_cmp(b));
        let mismatched: u64 = results.iter().map(|r| r.mismatched).sum();
        let runs_with = results.iter().filter(|r| r.mismatched > 0).count();
        let fmt = |v: &[f64], p: f64| {
            if v.is_empty() {
                "never".to_string()
            } else {
                format!("{:.0} ms", percentile(v, p))
            }
        };
        medians.insert((*scenario, *system), percentile(&sorted, 50.0));
        println!(
            "| {} | {} | {} | {} | {} / {} | {} / {} | {} ({} runs) |",
            match scenario {
                Scenario::HotAliceDies => "only hot-Alice dies",
                Scenario::HotAliceAndBobDie => "hot-Alice and hot-Bob die",
            },
            match system {
                System::Lockstep => "lockstep",
                System::Baseline => "HAProxy backup (baseline)",
            },
            results.len(),
            good.len(),
            fmt(&sorted, 50.0),
            fmt(&sorted, 99.0),
            fmt(&outage, 50.0),
            fmt(&outage, 99.0),
            mismatched,
            runs_with
        );
    }
    if let (Some(l), Some(b)) = (
        medians.get(&(Scenario::HotAliceAndBobDie, System::Lockstep)),
        medians.get(&(Scenario::HotAliceAndBobDie, System::Baseline)),
    ) {
        println!(
            "\nlockstep / baseline failover time (both hot KMEs die, medians): {:.2}x",
            l / b
        );
    }
    let lockstep_mismatched: u64 = rows
        .iter()
        .filter(|(_, s, _)| *s == System::Lockstep)
        .flat_map(|(_, _, r)| r.iter().map(|r| r.mismatched))
        .sum();
    if lockstep_mismatched > 0 {
        bail!("lockstep mismatched {lockstep_mismatched} pairs");
    }
    Ok(())
}

/// etcd's own request counters (`/metrics`), summed.
#[derive(Clone, Debug, Default)]
struct EtcdCounters {
    /// Unary RPCs completed (Range, Txn, Put, LeaseGrant ...).
    unary: f64,
    /// Messages received on streams (each keep-alive, each watch create
    /// or cancel).
    stream_msgs: f64,
    /// Raft proposals committed (writes).
    proposals: f64,
    /// `service/method` -> unary RPCs or stream messages.
    by_method: std::collections::BTreeMap<String, f64>,
}

impl EtcdCounters {
    async fn scrape(client: std::net::SocketAddr) -> Result<EtcdCounters> {
        let scrape = scrape_etcd(client).await?;
        let mut c = EtcdCounters::default();
        for s in &scrape.samples {
            let label = |k: &str| s.labels.get(k).map(String::as_str).unwrap_or("");
            let method = format!("{}/{}", label("grpc_service"), label("grpc_method"));
            match s.name.as_str() {
                "grpc_server_handled_total" if label("grpc_type") == "unary" => {
                    c.unary += s.value;
                    *c.by_method.entry(method).or_default() += s.value;
                }
                "grpc_server_msg_received_total" if label("grpc_type") != "unary" => {
                    c.stream_msgs += s.value;
                    *c.by_method.entry(method).or_default() += s.value;
                }
                "etcd_server_proposals_committed_total" => c.proposals += s.value,
                _ => {}
            }
        }
        Ok(c)
    }

    /// `self - before`, per second over `over`.
    fn rate(&self, before: &EtcdCounters, over: Duration) -> EtcdCounters {
        let s = over.as_secs_f64();
        EtcdCounters {
            unary: (self.unary - before.unary) / s,
            stream_msgs: (self.stream_msgs - before.stream_msgs) / s,
            proposals: (self.proposals - before.proposals) / s,
            by_method: self
                .by_method
                .iter()
                .map(|(k, v)| {
                    let b = before.by_method.get(k).copied().unwrap_or(0.0);
                    (k.clone(), (v - b) / s)
                })
                .filter(|(_, v)| *v > 0.0)
                .collect(),
        }
    }
}

/// The sidecar environment for JSON logs with every closed span
/// (`testkit::breakdown` reads them).
fn span_logs() -> [(String, String); 2] {
    [
        ("LOCKSTEP_LOG_FORMAT".to_string(), "json".to_string()),
        ("LOCKSTEP_LOG_SPANS".to_string(), "true".to_string()),
    ]
}

/// Time on a CPU and time runnable but waiting for one (ns), summed over
/// every thread of `pids` (`/proc/<pid>/task/<tid>/schedstat`); a thread
/// gone meanwhile counts nothing.
fn sched_sum(pids: &[u32]) -> (u64, u64) {
    let mut sum = (0, 0);
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
                continue;
            };
            let mut f = text
                .split_whitespace()
                .map(|v| v.parse::<u64>().unwrap_or(0));
            sum.0 += f.next().unwrap_or(0);
            sum.1 += f.next().unwrap_or(0);
        }
    }
    sum
}

/// etcd's `/metrics` on its client address, parsed.
async fn scrape_etcd(client: std::net::SocketAddr) -> Result<lockstep_testkit::metrics::Scrape> {
    let reply = lockstep_testkit::http::http_once(
        client,
        hyper::Method::GET,
        "/metrics",
        None,
        Duration::from_secs(5),
    )
    .await
    .context("scraping etcd's /metrics")?;
    lockstep_testkit::metrics::Scrape::parse(&String::from_utf8_lossy(&reply.body))
}

/// etcd's own histograms of its WAL fsyncs and backend commits since it
/// started: how often its disk made a write (and the reads behind it) wait.
async fn etcd_disk_latency(client: std::net::SocketAddr) -> Result<String> {
    let scrape = scrape_etcd(client).await?;
    let mut out = Vec::new();
    for (what, name) in [
        ("WAL fsyncs", "etcd_disk_wal_fsync_duration_seconds"),
        (
            "backend commits",
            "etcd_disk_backend_commit_duration_seconds",
        ),
    ] {
        let bucket = |le: &str| scrape.get(&format!("{name}_bucket"), &[("le", le)]);
        let (Some(all), Some(ms8), Some(ms64)) = (bucket("+Inf"), bucket("0.008"), bucket("0.064"))
        else {
            continue;
        };
        out.push(format!(
            "{all:.0} {what}, {:.0} over 8 ms, {:.0} over 64 ms",
            all - ms8,
            all - ms64
        ));
    }
    Ok(format!("etcd's disk: {}", out.join("; ")))
}

/// RSS (kB) and CPU time (ticks) of each of `pids`, summed.
fn usage_sum(pids: &[u32]) -> Result<(u64, u64)> {
    pids.iter().try_fold((0, 0), |(r, c), &p| {
        let (rss, ticks) = proc_usage(p)?;
        Ok((r + rss, c + ticks))
    })
}

/// MemAvailable of this machine, in MiB.
fn mem_available_mib() -> Result<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    info.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb / 1024)
        .context("no MemAvailable in /proc/meminfo")
}

/// One count of links measured.
struct LinksRow {
    links: usize,
    start_s: f64,
    rest: EtcdCounters,
    /// (what, processes, RSS MB, CPU % of a core) at rest, summed.
    usage: Vec<(&'static str, usize, f64, f64)>,
    switch: Vec<f64>,
    /// etcd requests (unary + stream messages) per switch, beyond the rest
    /// rate.
    per_switch: f64,
}

async fn links_bench(
    counts: &[usize],
    switches: usize,
    rest: Duration,
    etcd_on_disk: bool,
    breakdown: bool,
) -> Result<()> {
    use lockstep_testkit::lab::etcd::EtcdCluster;
    // A link needs about 0.1 GB (2 sidecars, 2 HAProxies, 4 KMEs); stop
    // adding links well before the machine runs short.
    const RESERVE_MIB: u64 = 3 * 1024;
    let mut rows = Vec::new();
    for &n in counts {
        let dir = lockstep_testkit::lab::link::lab_dir(&format!("links-{n}"))?;
        let etcd = EtcdCluster::start_on(
            1,
            std::net::IpAddr::from([127, 0, 0, 1]),
            &dir,
            etcd_on_disk,
        )?;
        etcd.wait_healthy(Duration::from_secs(20)).await?;
        let client = etcd.nodes[0].client;
        println!(
            "{n} links on one etcd ({}, data {}): starting ...",
            client,
            if etcd_on_disk { "on disk" } else { "on tmpfs" }
        );
        let started = Instant::now();
        let mut labs = Vec::with_capacity(n);
        for i in 0..n {
            let free = mem_available_mib()?;
            if free < RESERVE_MIB {
                bail!("{i} of {n} links started and only {free} MiB left: {n} links do not fit on this machine");
            }
            let mut options = LabOptions {
                attach_etcd: Some(etcd.endpoints()),
                ..LabOptions::default()
            };
            // The plain switch, as `bench` measures it.
            options.timing.handover_issuer = "both".into();
            if breakdown && i == 0 {
                options.sidecar_env.extend(span_logs());
            }
            let lab = Lab::start(&format!("links-{n}-{i}"), options)
                .await
                .with_context(|| format!("starting link {i} of {n}"))?;
            labs.push(lab);
            if (i + 1) % 10 == 0 {
                println!(
                    "  {} links up after {:.0} s, {} MiB available",
                    i + 1,
                    started.elapsed().as_secs_f64(),
                    mem_available_mib()?
                );
            }
        }
        let start_s = started.elapsed().as_secs_f64();
        // Elections, registrations and first probes settle.
        tokio::time::sleep(Duration::from_secs(5)).await;

        let groups: Vec<(&'static str, Vec<u32>)> = vec![
            (
                "sidecars",
                labs.iter()
                    .flat_map(|l| l.sidecars.iter().filter_map(|s| s.guard.pid()))
                    .collect(),
            ),
            (
                "HAProxies",
                labs.iter()
                    .flat_map(|l| l.lbs.iter().filter_map(|lb| lb.pid()))
                    .collect(),
            ),
            (
                "mock KMEs",
                labs.iter()
                    .flat_map(|l| l.kmes.iter().filter_map(|k| k.guard().pid()))
                    .collect(),
            ),
            ("etcd", etcd.nodes[0].guard.pid().into_iter().collect()),
        ];
        let before: Vec<(u64, u64)> = groups
            .iter()
            .map(|(_, p)| usage_sum(p))
            .collect::<Result<_>>()?;
        let c0 = EtcdCounters::scrape(client).await?;
        let t0 = Instant::now();
        tokio::time::sleep(rest).await;
        let c1 = EtcdCounters::scrape(client).await?;
        let over = t0.elapsed();
        let after: Vec<(u64, u64)> = groups
            .iter()
            .map(|(_, p)| usage_sum(p))
            .collect::<Result<_>>()?;
        let at_rest = c1.rate(&c0, over);
        let usage: Vec<(&'static str, usize, f64, f64)> = groups
            .iter()
            .zip(before.iter().zip(&after))
            .map(|((what, pids), ((_, t0), (rss, t1)))| {
                (
                    *what,
                    pids.len(),
                    *rss as f64 / 1024.0,
                    // /proc counts CPU time in USER_HZ ticks, 100 per second.
                    (t1 - t0) as f64 / 100.0 / over.as_secs_f64() * 100.0,
                )
            })
            .collect();
        println!(
            "  at rest over {:.0} s: etcd {:.1} unary RPCs/s, {:.1} stream messages/s, {:.1} proposals/s",
            over.as_secs_f64(),
            at_rest.unary,
            at_rest.stream_msgs,
            at_rest.proposals
        );
        for (k, v) in &at_rest.by_method {
            println!("    {k}: {v:.2}/s");
        }
        for (what, count, rss, cpu) in &usage {
            println!("    {count} {what}: RSS {rss:.0} MB, CPU {cpu:.1} % of a core");
        }

        let mut admin = labs[0].admin(0).await?;
        let mut latency = Vec::with_capacity(switches);
        let mut to = Setup::Warm;
        // Time the switching link's processes and etcd spent runnable but
        // not running: what sharing the cores costs them.
        let waiting: Vec<(&str, Vec<u32>)> = vec![
            (
                "link 0's sidecars",
                labs[0]
                    .sidecars
                    .iter()
                    .filter_map(|s| s.guard.pid())
                    .collect(),
            ),
            (
                "link 0's HAProxies",
                labs[0].lbs.iter().filter_map(|lb| lb.pid()).collect(),
            ),
            ("etcd", etcd.nodes[0].guard.pid().into_iter().collect()),
        ];
        let w0: Vec<(u64, u64)> = waiting.iter().map(|(_, p)| sched_sum(p)).collect();
        let s0 = EtcdCounters::scrape(client).await?;
        let t0 = Instant::now();
        for i in 0..switches {
            // As `bench`: outages do not merge, and etcd settles between.
            tokio::time::sleep(Duration::from_millis(40)).await;
            latency.push(switch_ms(&mut admin, to, format!("links bench {i}")).await?);
            to = to.other();
        }
        let s1 = EtcdCounters::scrape(client).await?;
        let took = t0.elapsed().as_secs_f64();
        for ((what, pids), (run0, wait0)) in waiting.iter().zip(&w0) {
            let (run1, wait1) = sched_sum(pids);
            println!(
                "  while switching, {what}: on a CPU {:.2} ms, runnable but waiting for one {:.2} ms, per switch",
                run1.saturating_sub(*run0) as f64 / 1e6 / switches as f64,
                wait1.saturating_sub(*wait0) as f64 / 1e6 / switches as f64
            );
        }
        let total = (s1.unary - s0.unary) + (s1.stream_msgs - s0.stream_msgs);
        let per_switch = (total - (at_rest.unary + at_rest.stream_msgs) * took) / switches as f64;
        println!(
            "  {}",
            summary(
                &format!("link 0 switch latency, {n} links"),
                latency.clone()
            )
        );
        println!("  etcd requests per switch beyond the rest rate: {per_switch:.0}");
        if breakdown {
            let cut = lockstep_testkit::breakdown::from_dir(&labs[0].dir)?;
            println!(
                "\nlink 0 of {n}: {}",
                lockstep_testkit::breakdown::report(&cut)
            );
        }
        rows.push(LinksRow {
            links: n,
            start_s,
            rest: at_rest,
            usage,
            switch: latency,
            per_switch,
        });
        // Every link's processes first, then etcd.
        drop(admin);
        drop(labs);
        drop(etcd);
    }

    println!("\n| links | sidecars | etcd unary RPCs/s at rest | etcd stream msgs/s at rest | etcd requests/s per sidecar | proposals/s | switch median / p99 / max | switches | etcd requests per switch | start-up |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let mut v = r.switch.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        let sidecars = 2 * r.links;
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} / {:.2} / {:.2} ms | {} | {:.0} | {:.0} s |",
            r.links,
            sidecars,
            r.rest.unary,
            r.rest.stream_msgs,
            (r.rest.unary + r.rest.stream_msgs) / sidecars as f64,
            r.rest.proposals,
            percentile(&v, 50.0),
            percentile(&v, 99.0),
            v.last().copied().unwrap_or(f64::NAN),
            v.len(),
            r.per_switch,
            r.start_s
        );
    }
    println!(
        "\n| links | process | count | RSS total | RSS each | CPU total (% of a core) | CPU each |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        for (what, count, rss, cpu) in &r.usage {
            let each = (*count).max(1) as f64;
            println!(
                "| {} | {what} | {count} | {rss:.0} MB | {:.1} MB | {cpu:.1} % | {:.2} % |",
                r.links,
                rss / each,
                cpu / each
            );
        }
    }
    Ok(())
}
