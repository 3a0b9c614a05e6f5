//! `lockstep`: the sidecar (`run`), config checking, and the on-call verbs,
//! which call any member's Admin service (the leader carries them out).
//! This file is the command line's definition; what each command does is in
//! `lockstep::cli`.
//!
//! Exit codes (`lockstep::cli::Exit`, listed in `--help`): 0 done; 1
//! refused (with the server's machine-readable reason); 2 bad usage or bad
//! config; 3 unreachable; 4 accepted but not complete within the timeout.

use clap::{Parser, Subcommand, ValueEnum};
use lockstep::cli::admin::{self, Pause, Switch, Verb};
use lockstep::cli::haproxy::HaproxyConfig;
use lockstep::cli::{bounds, emit, run::LogFormat, Failure, EXIT_CODES_HELP};
use lockstep::protocol::Setup;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    version,
    about = "Moves every LB of a QKD link between the hot and the warm setup together",
    after_help = EXIT_CODES_HELP
)]
struct Cli {
    /// Any member's gRPC address (`host:port`).
    #[arg(
        long,
        global = true,
        env = "LOCKSTEP_ENDPOINT",
        default_value = "127.0.0.1:7400"
    )]
    endpoint: String,
    /// PEM CA bundle the sidecars' certificates chain to (mutual TLS).
    #[arg(long, global = true, env = "LOCKSTEP_CA")]
    ca: Option<PathBuf>,
    /// Your PEM client certificate; its identity must have a role on the
    /// link (`grpc.roles`: operator to switch, viewer to look).
    #[arg(long, global = true, env = "LOCKSTEP_CERT")]
    cert: Option<PathBuf>,
    /// The PEM private key of --cert.
    #[arg(long, global = true, env = "LOCKSTEP_KEY")]
    key: Option<PathBuf>,
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

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar beside one LB.
    Run {
        #[arg(long, env = "LOCKSTEP_CONFIG")]
        config: PathBuf,
        /// Log lines as text or JSON; filter with RUST_LOG (default: info).
        #[arg(long, value_enum, default_value = "text", env = "LOCKSTEP_LOG_FORMAT")]
        log_format: LogFormat,
        /// Also log when each span (a route write, a push, an LB apply ...)
        /// closes, with its fields and how long it was open: where the time
        /// of a switch goes (`lockstep-lab bench --breakdown` reads them).
        #[arg(long, env = "LOCKSTEP_LOG_SPANS")]
        log_spans: bool,
    },
    /// Validate a config and print the bounds it implies.
    CheckConfig {
        #[arg(long, env = "LOCKSTEP_CONFIG")]
        config: PathBuf,
    },
    /// Print the HAProxy config that matches this config's timing and names.
    HaproxyConfig(HaproxyConfigArgs),
    /// Leader, route, health and every member with what its LB routes to.
    Status {
        /// Redraw on every change of the link (leader, route, a member's
        /// LB, health, pause) until Ctrl-C; with --json, one object a line.
        #[arg(long)]
        watch: bool,
    },
    /// Planned move to a healthy setup (refused while paused). On a
    /// terminal it shows the link and the plan and asks first. With --at,
    /// scheduled: the leader in office at that time carries it out, or
    /// refuses it then (unhealthy target, paused link) and says why in the
    /// history.
    #[command(after_help = EXIT_CODES_HELP)]
    Switchover {
        #[command(flatten)]
        args: SwitchArgs,
        /// Schedule it for this time instead of now: RFC 3339
        /// (2026-12-01T02:00:00Z), at most 30 days ahead. `status` shows
        /// it; `lockstep cancel` withdraws it.
        #[arg(long, conflicts_with = "wait")]
        at: Option<String>,
    },
    /// Withdraw the scheduled switchover (before its time).
    #[command(after_help = EXIT_CODES_HELP)]
    Cancel {
        /// The scheduled request's id (as `status` shows it) [default:
        /// whichever is scheduled].
        id: Option<String>,
        /// A note on who asked [default: $USER@host].
        #[arg(long)]
        by: Option<String>,
    },
    /// Move now, without a handover. On a terminal it shows the link and
    /// the plan and asks first.
    #[command(after_help = EXIT_CODES_HELP)]
    Failover {
        #[command(flatten)]
        args: SwitchArgs,
        /// Also to an unhealthy setup, and while the link is paused.
        #[arg(long = "ignore-health", alias = "force")]
        ignore_health: bool,
    },
    /// Stop all switches, automatic and manual, until `resume`.
    Pause(PauseArgs),
    /// Allow switches again.
    Resume(PauseArgs),
    /// Past transitions (switches, pauses, resumes), newest first.
    History {
        /// At most this many records.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Only records since this time: RFC 3339 (2026-11-30T08:00:00Z)
        /// or a duration back from now ("2h", "3days").
        #[arg(long, value_parser = parse_since)]
        since: Option<String>,
    },
    /// Print a shell completion script, e.g. `lockstep completions bash >
    /// /etc/bash_completion.d/lockstep`.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff), e.g. `lockstep man | man -l -`; with
    /// --dir, write one page per command there.
    Man {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// `--since`: an RFC 3339 time, or a duration back from now, as RFC 3339.
fn parse_since(s: &str) -> Result<String, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(humantime::format_rfc3339_millis(t).to_string());
    }
    let back = humantime::parse_duration(s).map_err(|_| {
        format!("{s:?} is neither an RFC 3339 time (2026-11-30T08:00:00Z) nor a duration (2h)")
    })?;
    let t = std::time::SystemTime::now()
        .checked_sub(back)
        .ok_or_else(|| format!("{s:?} goes back before 1970"))?;
    Ok(humantime::format_rfc3339_millis(t).to_string())
}

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

#[derive(clap::Args)]
struct SwitchArgs {
    /// Target setup.
    #[arg(long, value_enum)]
    to: SetupArg,
    /// Why: recorded in the history.
    #[arg(long)]
    reason: String,
    /// A note on who asked, recorded beside your certificate's identity
    /// [default: $USER@host].
    #[arg(long)]
    by: Option<String>,
    /// Show progress and return once every LB serves the target.
    #[arg(long)]
    wait: bool,
    /// Handover grace for this switch (a planned switch keeps the receiving
    /// end on the old setup this long after the issuing end blocked), e.g.
    /// "1s" [default: the link's handover.grace].
    #[arg(long, value_parser = humantime::parse_duration)]
    grace: Option<Duration>,
    /// Do not ask for confirmation (without a terminal nothing is asked).
    #[arg(short = 'y', long)]
    yes: bool,
    /// Say what would happen, or why it would be refused, and change
    /// nothing (the exit code is the one the switch would get).
    #[arg(long, conflicts_with = "wait")]
    dry_run: bool,
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

impl SwitchArgs {
    fn switch(self) -> Switch {
        let to = match self.to {
            SetupArg::Hot => Setup::Hot,
            SetupArg::Warm => Setup::Warm,
        };
        Switch {
            to,
            reason: self.reason,
            by: self.by,
            wait: self.wait,
            grace: self.grace,
            yes: self.yes,
            dry_run: self.dry_run,
            at: None,
        }
    }
}

impl PauseArgs {
    fn pause(self) -> Pause {
        let (reason, by) = (self.reason, self.by);
        Pause { reason, by }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let options = admin::Options {
        endpoint: cli.endpoint,
        json: cli.json,
        timeout: cli.timeout,
        tls: admin::TlsArgs {
            ca: cli.ca,
            cert: cli.cert,
            key: cli.key,
        },
    };
    let verb = |verb: Verb| admin::call(&options, &verb);
    let result: Result<String, Failure> = match cli.command {
        Command::Run {
            config,
            log_format,
            log_spans,
        } => {
            lockstep::cli::run::run_sidecar(&config, log_format, log_spans).map(|()| String::new())
        }
        Command::CheckConfig { config } => bounds::check_config(&config, options.json),
        Command::HaproxyConfig(a) => lockstep::cli::haproxy::haproxy_config(&HaproxyConfig {
            config: a.config,
            bind: a.bind,
            hot: a.hot,
            warm: a.warm,
            socket_mode: a.socket_mode,
            socket_gid: a.socket_gid,
        }),
        Command::Status { watch } => verb(Verb::Status { watch }),
        Command::Switchover { args, at } => verb(Verb::Switchover(Switch {
            at,
            ..args.switch()
        })),
        Command::Cancel { id, by } => verb(Verb::Cancel { id, by }),
        Command::Failover {
            args,
            ignore_health,
        } => verb(Verb::Failover {
            switch: args.switch(),
            ignore_health,
        }),
        Command::Pause(args) => verb(Verb::Pause(args.pause())),
        Command::Resume(args) => verb(Verb::Resume(args.pause())),
        Command::History { limit, since } => verb(Verb::History { limit, since }),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "lockstep", &mut out);
            Ok(String::from_utf8_lossy(&out).into_owned())
        }
        Command::Man { dir } => man(dir),
    };
    match result {
        Ok(text) => {
            emit(&text);
            ExitCode::SUCCESS
        }
        Err(f) => {
            if json {
                emit(&f.json());
            }
            eprintln!("{}", f.line());
            ExitCode::from(f.code)
        }
    }
}

/// `lockstep man`: the page on stdout, or every command's page in `dir`.
fn man(dir: Option<PathBuf>) -> Result<String, Failure> {
    use clap::CommandFactory;
    let cmd = Cli::command();
    match dir {
        Some(dir) => clap_mangen::generate_to(cmd, &dir)
            .map(|()| format!("man pages written to {}\n", dir.display()))
            .map_err(|e| {
                Failure::new(
                    2,
                    format!(
                        "cannot write man pages to {}: {e}; does the directory exist?",
                        dir.display()
                    ),
                )
            }),
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .map_err(|e| Failure::new(1, format!("cannot render the man page: {e}")))?;
            Ok(String::from_utf8_lossy(&out).into_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
