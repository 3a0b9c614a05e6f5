//! `lockstep`: the sidecar (`run`), config checking, and the on-call verbs,
//! which call any member's Admin service (the leader carries them out).
//!
//! Exit codes: 0 done; 1 refused or failed (the server's reason is
//! printed); 2 bad usage or bad config; 3 no sidecar reachable.

use clap::{Parser, Subcommand, ValueEnum};
use lockstep::cli;
use lockstep::config::Config;
use lockstep::proto::{self, admin_client::AdminClient};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// Bound on a call when `--timeout` is not given.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Extra time the CLI gives a bounded switch, so the server's own
/// "not complete within …" answer arrives before the CLI gives up.
const REPLY_SLACK: Duration = Duration::from_secs(2);

#[derive(Parser)]
#[command(
    version,
    about = "Moves every LB of a QKD link between the hot and the warm setup together"
)]
struct Cli {
    /// Any member's gRPC address (`http://host:port`; `host:port` works too).
    #[arg(
        long,
        global = true,
        env = "LOCKSTEP_ENDPOINT",
        default_value = "http://127.0.0.1:7400"
    )]
    endpoint: String,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Bound on each call, e.g. "10s" [default: 10s; for a switch with
    /// --wait: the sidecar's admin.switch_timeout].
    #[arg(long, global = true, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
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
        /// Log lines as text or JSON; filter with RUST_LOG (default: info).
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Validate a config and print the bounds it implies.
    CheckConfig {
        #[arg(long, env = "LOCKSTEP_CONFIG")]
        config: PathBuf,
    },
    /// Print the HAProxy config that matches this config's timing and names.
    HaproxyConfig(HaproxyConfigArgs),
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
    /// Stop all switches, automatic and manual, until `resume`.
    Pause(PauseArgs),
    /// Allow switches again.
    Resume(PauseArgs),
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
    /// Who: recorded in the history [default: $USER@host].
    #[arg(long)]
    by: Option<String>,
    /// Show progress and return once every LB serves the target.
    #[arg(long)]
    wait: bool,
}

#[derive(clap::Args)]
struct PauseArgs {
    /// Why: shown in `status` and recorded.
    #[arg(long)]
    reason: String,
    /// Who [default: $USER@host].
    #[arg(long)]
    by: Option<String>,
}

/// `--by`, else `$USER@host`, with "unknown" for what cannot be found.
fn requested_by(by: Option<String>, user: Option<String>, host: Option<String>) -> String {
    if let Some(by) = by {
        return by;
    }
    let user = user
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "unknown".into());
    match host.map(|h| h.trim().to_string()).filter(|h| !h.is_empty()) {
        Some(host) => format!("{user}@{host}"),
        None => user,
    }
}

fn whoami(by: Option<String>) -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok();
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok());
    requested_by(by, user, host)
}

/// An error for the user, with its exit code.
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

fn unreachable(endpoint: &str, why: &str) -> Failure {
    Failure {
        code: 3,
        message: format!(
            "no sidecar answered at {endpoint}: {why}; is a sidecar running at {endpoint}? set --endpoint or LOCKSTEP_ENDPOINT"
        ),
    }
}

/// A failed call: the server's reason verbatim (exit 1), or, when the
/// connection itself failed, the unreachable hint (exit 3).
fn rpc_failure(s: &tonic::Status, endpoint: &str) -> Failure {
    // Statuses made by the client's transport carry their cause; the
    // server's own "unavailable" answers (e.g. etcd down) do not.
    let transport = std::error::Error::source(s).is_some()
        || s.message().contains("transport error")
        || s.message().contains("connect");
    if s.code() == tonic::Code::Unavailable && transport {
        return unreachable(endpoint, s.message());
    }
    Failure {
        code: 1,
        message: s.message().to_string(),
    }
}

/// `host:port` (how members advertise themselves) gets `http://`.
fn endpoint_url(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

async fn connect(endpoint: &str, timeout: Duration) -> Result<AdminClient<Channel>, Failure> {
    let channel = Endpoint::from_shared(endpoint_url(endpoint))
        .map_err(|e| Failure {
            code: 2,
            message: format!("bad --endpoint {endpoint:?}: {e}; use http://host:port"),
        })?
        .connect_timeout(timeout.min(Duration::from_secs(3)))
        // A long --wait notices a sidecar that died mid-call.
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| {
            let why = std::error::Error::source(&e)
                .map(|s| format!("{e}: {s}"))
                .unwrap_or_else(|| e.to_string());
            unreachable(endpoint, &why)
        })?;
    Ok(AdminClient::new(channel))
}

/// Runs one call under `bound` (none: the server bounds it itself).
async fn bounded<T>(
    endpoint: &str,
    bound: Option<Duration>,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, Failure> {
    let result = match bound {
        Some(b) => tokio::time::timeout(b, call).await.map_err(|_| Failure {
            code: 1,
            message: format!(
                "no answer from {endpoint} within {b:?}; check `lockstep status`, or raise --timeout"
            ),
        })?,
        None => call.await,
    };
    result
        .map(tonic::Response::into_inner)
        .map_err(|s| rpc_failure(&s, endpoint))
}

/// Prints `text`; a closed pipe (`lockstep history | head`) is not an error.
fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, Failure> {
    serde_json::to_string_pretty(v)
        .map(|mut s| {
            s.push('\n');
            s
        })
        .map_err(|e| Failure {
            code: 1,
            message: format!("cannot print JSON: {e}"),
        })
}

/// What the CLI asks of the server and how long it waits itself.
fn switch_bounds(wait: bool, timeout: Option<Duration>) -> (u64, Option<Duration>) {
    match (wait, timeout) {
        (_, Some(t)) => (t.as_millis() as u64, Some(t + REPLY_SLACK)),
        // 0: the sidecar's admin.switch_timeout, which it enforces.
        (true, None) => (0, None),
        (false, None) => (
            DEFAULT_TIMEOUT.as_millis() as u64,
            Some(DEFAULT_TIMEOUT + REPLY_SLACK),
        ),
    }
}

fn format_switch(reply: &proto::SwitchReply, to: &str) -> String {
    if reply.already_active {
        format!("already on {to} (epoch {}); nothing to do\n", reply.epoch)
    } else if reply.completed {
        format!(
            "every LB serves {to} at epoch {} — done in {} ms\n",
            reply.epoch, reply.elapsed_ms
        )
    } else {
        format!(
            "accepted: switch to {to} at epoch {} (request {}); follow it with `lockstep status`\n",
            reply.epoch, reply.request_id
        )
    }
}

fn switch_json(reply: &proto::SwitchReply) -> serde_json::Value {
    serde_json::json!({
        "request_id": reply.request_id,
        "epoch": reply.epoch,
        "already_active": reply.already_active,
        "completed": reply.completed,
        "elapsed_ms": reply.elapsed_ms,
    })
}

/// True once `s` shows every live member serving `to` at an epoch after
/// `after`: the end of the switch `--wait` follows.
fn switch_done(s: &proto::StatusReply, to: i32, after: u64) -> bool {
    s.settled
        && s.route.as_ref().is_some_and(|r| {
            r.epoch > after && r.setup == to && r.phase == proto::Phase::Serve as i32
        })
}

/// Follows `Admin.WatchStatus` during a switch, printing one line per change
/// of the route or of a member's applied state.
struct Progress {
    stream: tonic::Streaming<proto::StatusReply>,
    /// The epoch before the switch.
    start: u64,
    /// The line shown last, so an unchanged state is not repeated.
    last: String,
}

/// How long `--wait` waits for the watch to catch up with a completed
/// switch before printing the summary without the final line.
const PROGRESS_CATCH_UP: Duration = Duration::from_secs(1);

impl Progress {
    /// Opens the watch and prints the current state, before the switch is
    /// sent, so no step of it is missed. `None`: no progress, the switch
    /// still goes ahead.
    async fn start(admin: &mut AdminClient<Channel>) -> Option<Progress> {
        let open = async {
            let mut stream = admin
                .watch_status(proto::StatusRequest {})
                .await
                .ok()?
                .into_inner();
            let first = stream.message().await.ok()??;
            Some((stream, first))
        };
        let (stream, first) = tokio::time::timeout(Duration::from_secs(2), open)
            .await
            .ok()??;
        let last = cli::progress_line(&first);
        emit(&format!("  {last}\n"));
        Some(Progress {
            stream,
            start: first.route.as_ref().map_or(0, |r| r.epoch),
            last,
        })
    }

    /// Prints changes until the switch to `to` is done and returns the final
    /// line if not printed yet (printed with the summary, so it cannot be
    /// cut off); `None` if the stream ends first.
    async fn follow(mut self, to: i32) -> Option<Option<String>> {
        while let Ok(Some(s)) = self.stream.message().await {
            let line = cli::progress_line(&s);
            if switch_done(&s, to, self.start) {
                return Some((line != self.last).then_some(line));
            }
            if line != self.last {
                emit(&format!("  {line}\n"));
                self.last = line;
            }
        }
        None
    }
}

async fn switch(cli: &Cli, args: &SwitchArgs, force: Option<bool>) -> Result<String, Failure> {
    let timeout = cli.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let mut admin = connect(&cli.endpoint, timeout).await?;
    let (timeout_ms, bound) = switch_bounds(args.wait, cli.timeout);
    let to = args.to.proto();
    let request = proto::SwitchRequest {
        to,
        reason: args.reason.clone(),
        requested_by: whoami(args.by.clone()),
        force: force.unwrap_or(false),
        wait: args.wait,
        timeout_ms,
    };
    let progress = if args.wait && !cli.json {
        Progress::start(&mut admin)
            .await
            .map(|p| tokio::spawn(p.follow(to)))
    } else {
        None
    };
    let result = match force {
        None => bounded(&cli.endpoint, bound, admin.switchover(request)).await,
        Some(_) => bounded(&cli.endpoint, bound, admin.failover(request)).await,
    };
    let final_line = match progress {
        Some(task) if matches!(&result, Ok(r) if r.completed && !r.already_active) => {
            let abort = task.abort_handle();
            let line = tokio::time::timeout(PROGRESS_CATCH_UP, task).await;
            abort.abort();
            line.ok().and_then(Result::ok).flatten()
        }
        Some(task) => {
            task.abort();
            None
        }
        None => None,
    };
    let reply = result?;
    if cli.json {
        return to_json(&switch_json(&reply));
    }
    // The final state line (if the watch had not shown it yet), then the
    // summary.
    let mut out = match final_line {
        Some(Some(line)) => format!("  {line}\n"),
        _ => String::new(),
    };
    out.push_str(&format_switch(&reply, args.to.name()));
    Ok(out)
}

/// The on-call verbs; returns what to print.
async fn call(cli: &Cli, command: &Command) -> Result<String, Failure> {
    let timeout = cli.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let endpoint = cli.endpoint.as_str();
    match command {
        Command::Run { .. } | Command::CheckConfig { .. } | Command::HaproxyConfig(_) => {
            Ok(String::new())
        }
        Command::Status => {
            let mut admin = connect(endpoint, timeout).await?;
            let s = bounded(
                endpoint,
                Some(timeout),
                admin.status(proto::StatusRequest {}),
            )
            .await?;
            if cli.json {
                to_json(&cli::status_json(&s))
            } else {
                Ok(cli::format_status(&s))
            }
        }
        Command::Switchover(args) => switch(cli, args, None).await,
        Command::Failover { args, force } => switch(cli, args, Some(*force)).await,
        Command::Pause(args) | Command::Resume(args) => {
            let mut admin = connect(endpoint, timeout).await?;
            let req = proto::PauseRequest {
                reason: args.reason.clone(),
                requested_by: whoami(args.by.clone()),
            };
            let reply = if matches!(command, Command::Pause(_)) {
                bounded(endpoint, Some(timeout), admin.pause(req)).await?
            } else {
                bounded(endpoint, Some(timeout), admin.resume(req)).await?
            };
            if cli.json {
                to_json(&serde_json::json!({ "paused": reply.paused }))
            } else if reply.paused {
                Ok("paused: no switch happens until `lockstep resume`\n".into())
            } else {
                Ok("resumed: switches are allowed again\n".into())
            }
        }
        Command::History { limit } => {
            let mut admin = connect(endpoint, timeout).await?;
            let h = bounded(
                endpoint,
                Some(timeout),
                admin.history(proto::HistoryRequest { limit: *limit }),
            )
            .await?;
            if cli.json {
                to_json(&cli::history_json(&h))
            } else if h.records.is_empty() {
                Ok("no transitions yet\n".into())
            } else {
                Ok(cli::format_history(&h))
            }
        }
    }
}

/// "1.3s", "500ms": shorter than humantime's "1s 300ms".
fn fmt_d(d: Duration) -> String {
    format!("{d:?}")
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// `check-config`'s text: the bounds a valid config implies.
fn format_bounds(path: &Path, c: &Config) -> String {
    let d = c.lb_down_detection();
    let budget = c.lease_fresh_budget();
    let e = &c.etcd;
    format!(
        "config {} is valid\n\
         \x20 LB down-detection D = check_fall x (check_inter + min(1s, check_inter) + check_timeout) = {}\n\
         \x20 lease fresh for TTL - margin = {} after each acknowledged keep-alive is sent\n\
         \x20 the check endpoint stops answering D before that: {} after it\n\
         \x20 rule: lease_ttl {} > keepalive {} + D {} + margin {} = {}\n\
         \x20 a dead or cut-off member holds a switch up for at most the lease TTL: {}\n",
        path.display(),
        fmt_d(d),
        fmt_d(budget),
        fmt_d(budget.saturating_sub(d)),
        fmt_d(e.lease_ttl),
        fmt_d(e.keepalive_interval),
        fmt_d(d),
        fmt_d(e.margin),
        fmt_d(c.lease_ttl_lower_bound()),
        fmt_d(e.lease_ttl),
    )
}

fn bounds_json(c: &Config) -> serde_json::Value {
    let e = &c.etcd;
    serde_json::json!({
        "lb_down_detection_ms": ms(c.lb_down_detection()),
        "lease_ttl_ms": ms(e.lease_ttl),
        "keepalive_interval_ms": ms(e.keepalive_interval),
        "margin_ms": ms(e.margin),
        "lease_fresh_budget_ms": ms(c.lease_fresh_budget()),
        "check_answer_budget_ms": ms(c.lease_fresh_budget().saturating_sub(c.lb_down_detection())),
        "rule_left_ms": ms(e.lease_ttl),
        "rule_right_ms": ms(c.lease_ttl_lower_bound()),
        "max_switch_hold_by_dead_member_ms": ms(e.lease_ttl),
    })
}

fn load_config(path: &Path) -> Result<Config, Failure> {
    lockstep::config::load(path).map_err(|e| Failure {
        code: 2,
        message: e.to_string(),
    })
}

fn check_config(path: &Path, json: bool) -> Result<String, Failure> {
    let config = load_config(path)?;
    if json {
        to_json(&bounds_json(&config))
    } else {
        Ok(format_bounds(path, &config))
    }
}

// ---------------------------------------------------------------------------
// `haproxy-config`: the one source of every shipped HAProxy config
// (deploy/generate writes deploy/haproxy/haproxy.cfg and the Kubernetes
// ConfigMaps from it). Self-contained: the variant, this block and one line
// in `main`.
// ---------------------------------------------------------------------------

#[derive(clap::Args)]
struct HaproxyConfigArgs {
    #[arg(long, env = "LOCKSTEP_CONFIG")]
    config: PathBuf,
    /// Where SAEs connect (HAProxy's frontend `bind`).
    #[arg(long, default_value = "0.0.0.0:8443")]
    bind: std::net::SocketAddr,
    /// The hot KME's IP:port [default: host and port of probe.hot].
    #[arg(long)]
    hot: Option<std::net::SocketAddr>,
    /// The warm KME's IP:port [default: host and port of probe.warm].
    #[arg(long)]
    warm: Option<std::net::SocketAddr>,
    /// Mode of the Runtime API socket, octal; 660 lets a sidecar in the
    /// socket's group drive HAProxy (Kubernetes: fsGroup).
    #[arg(long, default_value = "600")]
    socket_mode: String,
    /// Group of the Runtime API socket (HAProxy must be in it).
    #[arg(long)]
    socket_gid: Option<u32>,
}

/// A setup's KME as HAProxy's `server` needs it: `flag`, else the IP and
/// port of its probe URL (the LB routes to what the sidecar probes).
fn kme_addr(
    flag: Option<std::net::SocketAddr>,
    url: Option<&str>,
    key: &str,
) -> Result<std::net::SocketAddr, Failure> {
    let bad = |why: String| Failure {
        code: 2,
        message: format!("{why}; pass --{} IP:PORT", key.trim_start_matches("probe.")),
    };
    if let Some(a) = flag {
        return Ok(a);
    }
    let url = url.ok_or_else(|| bad(format!("{key} is not set")))?;
    let uri: hyper::Uri = url
        .parse()
        .map_err(|_| bad(format!("{key} {url:?} is not a URL")))?;
    let host = uri.host().unwrap_or_default();
    let ip: std::net::IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| bad(format!("{key} {url:?}: host {host:?} is not an IP address")))?;
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    Ok(std::net::SocketAddr::new(ip, port))
}

fn haproxy_config(args: &HaproxyConfigArgs) -> Result<String, Failure> {
    use lockstep::lb::haproxy::HaproxyTemplate;
    let c = load_config(&args.config)?;
    let usage = |message: String| Failure { code: 2, message };
    let mode = u32::from_str_radix(&args.socket_mode, 8)
        .ok()
        .filter(|m| *m <= 0o777 && m & 0o600 == 0o600)
        .ok_or_else(|| {
            usage(format!(
                "--socket-mode {:?} must be octal with owner read and write, e.g. 600 or 660",
                args.socket_mode
            ))
        })?;
    // HAProxy and the sidecar share a network namespace (one pod, one
    // host): checks stay on loopback when the sidecar listens on any address.
    let mut check_addr = c.http.listen;
    if check_addr.ip().is_unspecified() {
        check_addr.set_ip(match check_addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let t = HaproxyTemplate {
        backend: c.lb.backend.clone(),
        server_hot: c.lb.server_hot.clone(),
        server_warm: c.lb.server_warm.clone(),
        check_inter: c.lb.check_inter,
        check_fall: c.lb.check_fall,
        check_rise: c.lb.check_rise,
        check_timeout: c.lb.check_timeout,
        ..HaproxyTemplate::new(
            args.bind,
            kme_addr(args.hot, c.probe.hot.as_deref(), "probe.hot")?,
            kme_addr(args.warm, c.probe.warm.as_deref(), "probe.warm")?,
            check_addr,
            c.lb.socket.clone(),
        )
    };
    let text = t.render();
    // The template renders `mode 600` and no group; anything else is set on
    // its socket line (moves into HaproxyTemplate once it has the fields).
    let from = format!("stats socket {} mode 600 ", c.lb.socket.display());
    let gid = args
        .socket_gid
        .map(|g| format!("gid {g} "))
        .unwrap_or_default();
    let to = format!("stats socket {} mode {mode:o} {gid}", c.lb.socket.display());
    if !text.contains(&from) {
        return Err(usage(format!(
            "the rendered config has no line {from:?} to set the socket's mode on"
        )));
    }
    Ok(text.replacen(&from, &to, 1))
}

/// Resolves on SIGTERM (Kubernetes, systemd) or Ctrl-C.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("stop requested: blocking the LB and leaving the link");
}

fn run_sidecar(path: &Path, format: LogFormat) -> Result<(), Failure> {
    // Test builds only: failpoints from the FAILPOINTS environment variable
    // (e.g. "leader-after-drain-write=sleep(3000)").
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let config = load_config(path)?;
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let init = match format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).try_init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .try_init(),
    };
    init.map_err(|e| Failure {
        code: 1,
        message: format!("cannot set up logging: {e}"),
    })?;
    let rt = tokio::runtime::Runtime::new().map_err(|e| Failure {
        code: 1,
        message: format!("cannot start the async runtime: {e}"),
    })?;
    rt.block_on(lockstep::sidecar::run(config, shutdown_signal()))
        .map_err(|e| Failure {
            code: 1,
            message: format!("{e:#}"),
        })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Run { config, log_format } => run_sidecar(config, *log_format).map(|()| None),
        Command::CheckConfig { config } => check_config(config, cli.json).map(Some),
        Command::HaproxyConfig(args) => haproxy_config(args).map(Some),
        command => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure {
                code: 1,
                message: format!("cannot start the async runtime: {e}"),
            })
            .and_then(|rt| rt.block_on(call(&cli, command)))
            .map(Some),
    };
    match result {
        Ok(text) => {
            emit(text.as_deref().unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requested_by_defaults_to_user_at_host() {
        let s = |v: &str| Some(v.to_string());
        assert_eq!(requested_by(s("ops"), s("u"), s("h")), "ops");
        assert_eq!(requested_by(None, s("u"), s("h\n")), "u@h");
        assert_eq!(requested_by(None, None, s("h")), "unknown@h");
        assert_eq!(requested_by(None, s("u"), None), "u");
        assert_eq!(requested_by(None, None, s("  ")), "unknown");
    }

    #[test]
    fn server_refusals_are_printed_verbatim_with_exit_1() {
        let s = tonic::Status::failed_precondition("link is paused (maintenance); resume first");
        let f = rpc_failure(&s, "http://x:1");
        assert_eq!(f.code, 1);
        assert_eq!(f.message, "link is paused (maintenance); resume first");
        // The server's own "unavailable" (etcd down) is a refusal, not "no sidecar".
        let f = rpc_failure(&tonic::Status::unavailable("etcd: timed out"), "http://x:1");
        assert_eq!(f.code, 1);
    }

    #[test]
    fn a_broken_connection_gets_the_endpoint_hint_and_exit_3() {
        let s = tonic::Status::unavailable("transport error");
        let f = rpc_failure(&s, "http://x:1");
        assert_eq!(f.code, 3);
        assert!(f.message.contains("is a sidecar running at http://x:1?"));
        assert!(f.message.contains("LOCKSTEP_ENDPOINT"));
    }

    #[test]
    fn endpoints_without_a_scheme_get_http() {
        assert_eq!(endpoint_url("10.0.0.5:7400"), "http://10.0.0.5:7400");
        assert_eq!(endpoint_url("https://a:1"), "https://a:1");
    }

    #[test]
    fn switch_bounds_leave_waiting_to_the_server_by_default() {
        assert_eq!(switch_bounds(true, None), (0, None));
        assert_eq!(
            switch_bounds(false, None),
            (10_000, Some(Duration::from_secs(12)))
        );
        assert_eq!(
            switch_bounds(true, Some(Duration::from_secs(60))),
            (60_000, Some(Duration::from_secs(62)))
        );
    }

    #[test]
    fn switch_summaries() {
        let mut r = proto::SwitchReply {
            request_id: "r-1".into(),
            epoch: 7,
            already_active: false,
            completed: false,
            elapsed_ms: 0,
        };
        assert!(
            format_switch(&r, "warm").contains("accepted: switch to warm at epoch 7 (request r-1)")
        );
        r.completed = true;
        r.elapsed_ms = 23;
        assert_eq!(
            format_switch(&r, "warm"),
            "every LB serves warm at epoch 7 — done in 23 ms\n"
        );
        r.already_active = true;
        assert!(format_switch(&r, "warm").starts_with("already on warm"));
        assert_eq!(switch_json(&r)["epoch"], 7);
    }

    fn example() -> Config {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, lockstep::config::example()).expect("write");
        lockstep::config::load(&path).expect("example is valid")
    }

    #[test]
    fn bounds_show_the_rule_and_derived_values() {
        let c = example();
        let text = format_bounds(Path::new("c.toml"), &c);
        assert!(text.contains(
            "D = check_fall x (check_inter + min(1s, check_inter) + check_timeout) = 2.6s"
        ));
        assert!(text.contains("lease fresh for TTL - margin = 4s"));
        assert!(text.contains("rule: lease_ttl 5s > keepalive 1s + D 2.6s + margin 1s = 4.6s"));
        assert!(text.contains("at most the lease TTL: 5s"));
        let j = bounds_json(&c);
        assert_eq!(j["lb_down_detection_ms"], 2600);
        assert_eq!(j["lease_fresh_budget_ms"], 4000);
        assert_eq!(j["rule_right_ms"], 4600);
        assert_eq!(j["check_answer_budget_ms"], 1400);
    }

    #[test]
    fn a_switch_is_done_when_settled_on_the_target_at_a_later_epoch() {
        let warm = proto::Setup::Warm as i32;
        let mut s = proto::StatusReply {
            route: Some(proto::Route {
                epoch: 7,
                phase: proto::Phase::Drain as i32,
                setup: warm,
                ..Default::default()
            }),
            settled: false,
            ..Default::default()
        };
        assert!(!switch_done(&s, warm, 6), "draining");
        if let Some(r) = s.route.as_mut() {
            r.phase = proto::Phase::Serve as i32;
        }
        assert!(!switch_done(&s, warm, 6), "serving, not settled");
        s.settled = true;
        assert!(switch_done(&s, warm, 6));
        assert!(!switch_done(&s, warm, 7), "the state before the switch");
        assert!(!switch_done(&s, proto::Setup::Hot as i32, 6), "other setup");
    }

    #[test]
    fn haproxy_config_takes_kme_addresses_from_the_probe_urls_and_sets_the_socket_mode() {
        let a = |s: &str| s.parse::<std::net::SocketAddr>().expect("addr");
        let url = |u: &str| kme_addr(None, Some(u), "probe.hot").map_err(|f| f.message);
        assert_eq!(url("https://10.0.1.10:8443"), Ok(a("10.0.1.10:8443")));
        assert_eq!(url("https://[fd00::1]"), Ok(a("[fd00::1]:443")));
        assert_eq!(url("http://127.0.0.1"), Ok(a("127.0.0.1:80")));
        assert!(url("https://kme-hot:8443").is_err_and(|m| m.contains("--hot IP:PORT")));
        assert!(kme_addr(None, None, "probe.warm").is_err_and(|f| f.message.contains("--warm")));
        assert_eq!(
            kme_addr(Some(a("10.0.0.1:1")), Some("https://x:2"), "probe.hot")
                .map_err(|f| f.message),
            Ok(a("10.0.0.1:1"))
        );

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, lockstep::config::example()).expect("write");
        let args = |mode: &str, gid: Option<u32>| HaproxyConfigArgs {
            config: path.clone(),
            bind: a("0.0.0.0:8443"),
            hot: None,
            warm: Some(a("10.0.2.10:8443")),
            socket_mode: mode.into(),
            socket_gid: gid,
        };
        let text = haproxy_config(&args("660", Some(10001)))
            .map_err(|f| f.message)
            .expect("renders");
        assert!(
            text.contains("stats socket /run/haproxy/admin.sock mode 660 gid 10001 level admin")
        );
        assert!(text.contains("server hot 127.0.0.1:8443 check addr 127.0.0.1 port 7401 disabled"));
        assert!(text.contains("server warm 10.0.2.10:8443 check"));
        assert!(
            haproxy_config(&args("600", None)).is_ok_and(|t| t.contains("mode 600 level admin"))
        );
        for bad in ["644x", "400", "1777"] {
            assert!(haproxy_config(&args(bad, None)).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
