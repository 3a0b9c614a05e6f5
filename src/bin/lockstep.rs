//! `lockstep`: the sidecar (`run`), config checking, and the on-call verbs,
//! which call any member's Admin service (the leader carries them out).
//!
//! Exit codes: 0 done; 1 refused or failed (the server's reason is
//! printed); 2 bad usage or bad config; 3 no sidecar reachable.

use clap::{Parser, Subcommand, ValueEnum};
use lockstep::cli;
use lockstep::proto::{self, admin_client::AdminClient};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(
    version,
    about = "Moves every LB of a QKD link between the hot and the warm setup together"
)]
struct Cli {
    /// Any member's gRPC address.
    #[arg(
        long,
        global = true,
        env = "LOCKSTEP_ENDPOINT",
        default_value = "http://127.0.0.1:7400"
    )]
    endpoint: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Bound on each call, e.g. "10s".
    #[arg(long, global = true, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum SetupArg {
    Hot,
    Warm,
}

impl SetupArg {
    fn proto(self) -> i32 {
        match self {
            SetupArg::Hot => proto::Setup::Hot as i32,
            SetupArg::Warm => proto::Setup::Warm as i32,
        }
    }
    fn name(self) -> &'static str {
        match self {
            SetupArg::Hot => "hot",
            SetupArg::Warm => "warm",
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar beside one LB.
    Run {
        #[arg(long, env = "LOCKSTEP_CONFIG")]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Validate a config and print the bounds it implies.
    CheckConfig {
        #[arg(long, env = "LOCKSTEP_CONFIG")]
        config: PathBuf,
    },
    /// Leader, route, health and every member with what its LB routes to.
    Status,
    /// Planned move to a healthy setup (refused while paused).
    Switchover(SwitchArgs),
    /// Move now; with --force also to an unhealthy setup or while paused.
    Failover {
        #[command(flatten)]
        args: SwitchArgs,
        #[arg(long)]
        force: bool,
    },
    /// Stop all switches until `resume`.
    Pause {
        #[arg(long)]
        reason: String,
        #[arg(long)]
        by: Option<String>,
    },
    Resume {
        #[arg(long)]
        reason: String,
        #[arg(long)]
        by: Option<String>,
    },
    /// Past transitions, newest first.
    History {
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

#[derive(clap::Args)]
struct SwitchArgs {
    /// Target setup.
    #[arg(long, value_enum)]
    to: SetupArg,
    /// Why: recorded in the history.
    #[arg(long)]
    reason: String,
    /// Who: recorded in the history (default: $USER@host).
    #[arg(long)]
    by: Option<String>,
    /// Show progress and return once every LB serves the target.
    #[arg(long)]
    wait: bool,
}

fn whoami(by: Option<String>) -> String {
    by.unwrap_or_else(|| {
        let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        if host.is_empty() {
            user
        } else {
            format!("{user}@{host}")
        }
    })
}

/// An error for the user, with its exit code.
struct Failure {
    code: u8,
    message: String,
}

fn status_failure(s: tonic::Status, endpoint: &str) -> Failure {
    match s.code() {
        tonic::Code::Unavailable if s.message().contains("connect") => Failure {
            code: 3,
            message: format!(
                "no sidecar answered at {endpoint}: {}; is a sidecar running there? set --endpoint or LOCKSTEP_ENDPOINT",
                s.message()
            ),
        },
        _ => Failure {
            code: 1,
            message: s.message().to_string(),
        },
    }
}

async fn connect(endpoint: &str, timeout: Duration) -> Result<AdminClient<Channel>, Failure> {
    let unreachable = |e: String| {
        Failure {
        code: 3,
        message: format!(
            "no sidecar answered at {endpoint}: {e}; is a sidecar running there? set --endpoint or LOCKSTEP_ENDPOINT"
        ),
    }
    };
    let channel = Channel::from_shared(endpoint.to_string())
        .map_err(|e| Failure {
            code: 2,
            message: format!("bad endpoint {endpoint:?}: {e}"),
        })?
        .connect_timeout(timeout.min(Duration::from_secs(3)))
        .connect()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    Ok(AdminClient::new(channel))
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Failure {
        code: 1,
        message: format!("cannot print JSON: {e}"),
    })?;
    println!("{text}");
    Ok(())
}

async fn switch(cli: &Cli, args: &SwitchArgs, force: Option<bool>) -> Result<(), Failure> {
    let mut admin = connect(&cli.endpoint, cli.timeout).await?;
    let wait_bound = if args.wait {
        cli.timeout.max(Duration::from_secs(30))
    } else {
        cli.timeout
    };
    let request = proto::SwitchRequest {
        to: args.to.proto(),
        reason: args.reason.clone(),
        requested_by: whoami(args.by.clone()),
        force: force.unwrap_or(false),
        wait: args.wait,
        timeout_ms: wait_bound.as_millis() as u64,
    };
    // Progress from the status stream while the switch runs.
    let progress = if args.wait && !cli.json {
        let mut watcher = admin.clone();
        Some(tokio::spawn(async move {
            let Ok(stream) = watcher.watch_status(proto::StatusRequest {}).await else {
                return;
            };
            let mut stream = stream.into_inner();
            let mut last = String::new();
            while let Ok(Some(s)) = stream.message().await {
                let line = cli::progress_line(&s);
                if line != last {
                    println!("  {line}");
                    last = line;
                }
            }
        }))
    } else {
        None
    };
    let call = async {
        match force {
            None => admin.switchover(request).await,
            Some(_) => admin.failover(request).await,
        }
    };
    let result = tokio::time::timeout(wait_bound + Duration::from_secs(2), call).await;
    if let Some(p) = progress {
        // Let the last state change print before the summary.
        tokio::time::sleep(Duration::from_millis(50)).await;
        p.abort();
    }
    let reply = match result {
        Err(_) => {
            return Err(Failure {
                code: 1,
                message: format!("no answer within {wait_bound:?}; check `lockstep status`"),
            })
        }
        Ok(r) => r
            .map_err(|s| status_failure(s, &cli.endpoint))?
            .into_inner(),
    };
    if cli.json {
        return print_json(&serde_json::json!({
            "request_id": reply.request_id,
            "epoch": reply.epoch,
            "already_active": reply.already_active,
            "completed": reply.completed,
            "elapsed_ms": reply.elapsed_ms,
        }));
    }
    let to = args.to.name();
    if reply.already_active {
        println!("{to} already serves (epoch {}); nothing to do", reply.epoch);
    } else if reply.completed {
        println!(
            "every LB serves {to} at epoch {} ({} ms)",
            reply.epoch, reply.elapsed_ms
        );
    } else {
        println!(
            "switch to {to} started at epoch {} (request {}); follow it with `lockstep status`",
            reply.epoch, reply.request_id
        );
    }
    Ok(())
}

async fn call(cli: &Cli) -> Result<(), Failure> {
    match &cli.command {
        Command::Run { .. } | Command::CheckConfig { .. } => Ok(()),
        Command::Status => {
            let mut admin = connect(&cli.endpoint, cli.timeout).await?;
            let s = admin
                .status(proto::StatusRequest {})
                .await
                .map_err(|s| status_failure(s, &cli.endpoint))?
                .into_inner();
            if cli.json {
                print_json(&cli::status_json(&s))
            } else {
                print!("{}", cli::format_status(&s));
                Ok(())
            }
        }
        Command::Switchover(args) => switch(cli, args, None).await,
        Command::Failover { args, force } => switch(cli, args, Some(*force)).await,
        Command::Pause { reason, by } | Command::Resume { reason, by } => {
            let mut admin = connect(&cli.endpoint, cli.timeout).await?;
            let req = proto::PauseRequest {
                reason: reason.clone(),
                requested_by: whoami(by.clone()),
            };
            let pausing = matches!(cli.command, Command::Pause { .. });
            let reply = if pausing {
                admin.pause(req).await
            } else {
                admin.resume(req).await
            }
            .map_err(|s| status_failure(s, &cli.endpoint))?
            .into_inner();
            if cli.json {
                print_json(&serde_json::json!({ "paused": reply.paused }))
            } else {
                println!(
                    "{}",
                    if reply.paused {
                        "paused: no switch happens until `lockstep resume`"
                    } else {
                        "resumed"
                    }
                );
                Ok(())
            }
        }
        Command::History { limit } => {
            let mut admin = connect(&cli.endpoint, cli.timeout).await?;
            let h = admin
                .history(proto::HistoryRequest { limit: *limit })
                .await
                .map_err(|s| status_failure(s, &cli.endpoint))?
                .into_inner();
            if cli.json {
                print_json(&cli::history_json(&h))
            } else {
                print!("{}", cli::format_history(&h));
                Ok(())
            }
        }
    }
}

fn check_config(path: &Path, json: bool) -> ExitCode {
    let config = match lockstep::config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let d = config.lb_down_detection();
    let e = &config.etcd;
    let budget = e.lease_ttl.saturating_sub(e.margin);
    if json {
        let v = serde_json::json!({
            "lb_down_detection_ms": d.as_millis() as u64,
            "lease_ttl_ms": e.lease_ttl.as_millis() as u64,
            "keepalive_interval_ms": e.keepalive_interval.as_millis() as u64,
            "margin_ms": e.margin.as_millis() as u64,
            "lease_fresh_budget_ms": budget.as_millis() as u64,
            "rule_left_ms": e.lease_ttl.as_millis() as u64,
            "rule_right_ms": (e.keepalive_interval + d + e.margin).as_millis() as u64,
            "max_switch_hold_by_dead_member_ms": e.lease_ttl.as_millis() as u64,
        });
        println!("{v:#}");
    } else {
        println!("config {} is valid", path.display());
        println!("  LB down-detection D = check_inter x check_fall + check_timeout = {d:?}");
        println!("  lease fresh for TTL - margin = {budget:?} after each acknowledged keep-alive");
        println!(
            "  the check endpoint stops answering D before that: at {:?} after the last ack",
            budget.saturating_sub(d)
        );
        println!(
            "  rule: lease_ttl {:?} > keepalive {:?} + D {:?} + margin {:?} = {:?}",
            e.lease_ttl,
            e.keepalive_interval,
            d,
            e.margin,
            e.keepalive_interval + d + e.margin
        );
        println!(
            "  a dead or cut-off member holds a switch up for at most the lease TTL: {:?}",
            e.lease_ttl
        );
    }
    ExitCode::SUCCESS
}

fn run_sidecar(path: &Path, format: LogFormat) -> ExitCode {
    let config = match lockstep::config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    match format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(lockstep::sidecar::run(config, async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Run { config, log_format } => return run_sidecar(config, *log_format),
        Command::CheckConfig { config } => return check_config(config, cli.json),
        _ => {}
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(call(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
