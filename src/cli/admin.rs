//! The on-call verbs: each calls one member's Admin service over gRPC and
//! returns what to print.

use super::progress::{Progress, PROGRESS_CATCH_UP};
use super::render;
use super::{to_json, Exit, Failure};
use crate::proto::{self, admin_client::AdminClient};
use crate::rpc::reason::Reason;
use crate::rpc::setup_to_proto;
use crate::tls::TlsFiles;
use lockstep_core::Setup;
use std::io::Write as _;
use std::time::Duration;
use tonic::transport::Channel;

/// Bound on a call when `--timeout` is not given.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Extra time the CLI gives a bounded switch, so the server's own
/// "not complete within …" answer arrives before the CLI gives up.
const REPLY_SLACK: Duration = Duration::from_secs(2);

/// Where the verbs call and how they answer.
#[derive(Clone, Debug)]
pub struct Options {
    /// Any member's gRPC address (`http://host:port` or `host:port`).
    pub endpoint: String,
    /// Print JSON instead of text.
    pub json: bool,
    /// Bound on each call; `None`: 10 s, or for a switch with `wait` the
    /// sidecar's `admin.switch_timeout`.
    pub timeout: Option<Duration>,
    /// Mutual TLS: `--ca`, `--cert`, `--key`; all `None`: plaintext (only
    /// a sidecar with `grpc.insecure = true` accepts that).
    pub tls: TlsArgs,
}

/// The CLI's TLS files as given (each may be missing).
#[derive(Clone, Debug, Default)]
pub struct TlsArgs {
    pub ca: Option<std::path::PathBuf>,
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
}

impl TlsArgs {
    /// The three files, none (plaintext), or what is missing.
    fn files(&self) -> Result<Option<TlsFiles>, Failure> {
        match (&self.ca, &self.cert, &self.key) {
            (None, None, None) => Ok(None),
            (Some(ca), Some(cert), Some(key)) => Ok(Some(TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            })),
            _ => {
                let missing: Vec<&str> = [
                    ("--ca (LOCKSTEP_CA)", self.ca.is_none()),
                    ("--cert (LOCKSTEP_CERT)", self.cert.is_none()),
                    ("--key (LOCKSTEP_KEY)", self.key.is_none()),
                ]
                .into_iter()
                .filter(|(_, m)| *m)
                .map(|(n, _)| n)
                .collect();
                Err(Failure::new(
                    2,
                    format!(
                        "{} missing: mutual TLS needs the link's CA, your certificate and its key together",
                        missing.join(" and ")
                    ),
                ))
            }
        }
    }
}

/// A TLS file that does not load, in terms of the option that named it.
fn tls_file_failure(e: &crate::tls::TlsError) -> Failure {
    let flag = match e.what {
        "CA" => "--ca (LOCKSTEP_CA)",
        "certificate" => "--cert (LOCKSTEP_CERT)",
        _ => "--key (LOCKSTEP_KEY)",
    };
    Failure::new(2, format!("{flag} {}: {}", e.path.display(), e.message))
}

/// A switchover or failover.
#[derive(Clone, Debug)]
pub struct Switch {
    pub to: Setup,
    /// Why: recorded in the history.
    pub reason: String,
    /// Who, if given (else `$USER@host`).
    pub by: Option<String>,
    /// Show progress and return once every LB serves the target.
    pub wait: bool,
    /// This switch's handover grace, instead of the link's.
    pub grace: Option<Duration>,
    /// Do not ask for confirmation on a terminal.
    pub yes: bool,
    /// Say what would happen (or the refusal) and change nothing.
    pub dry_run: bool,
    /// Scheduled for this time (RFC 3339) instead of now (switchover).
    pub at: Option<String>,
}

/// A pause or resume.
#[derive(Clone, Debug)]
pub struct Pause {
    /// Why: shown in `status` and recorded.
    pub reason: String,
    /// Who, if given (else `$USER@host`).
    pub by: Option<String>,
}

/// One on-call verb.
#[derive(Clone, Debug)]
pub enum Verb {
    /// `watch`: redraw on every change until interrupted.
    Status {
        watch: bool,
    },
    Switchover(Switch),
    /// `ignore_health`: also to an unhealthy setup or while paused.
    Failover {
        switch: Switch,
        ignore_health: bool,
    },
    Pause(Pause),
    Resume(Pause),
    /// `since`: RFC 3339.
    History {
        limit: u32,
        since: Option<String>,
    },
    /// Withdraw the scheduled switchover (`id`: that one only).
    Cancel {
        id: Option<String>,
        by: Option<String>,
    },
}

/// Runs `verb` against `options.endpoint`; returns what to print.
pub fn call(options: &Options, verb: &Verb) -> Result<String, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(1, format!("cannot start the async runtime: {e}")))?
        .block_on(call_async(options, verb))
}

async fn call_async(options: &Options, verb: &Verb) -> Result<String, Failure> {
    let timeout = options.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let endpoint = options.endpoint.as_str();
    match verb {
        Verb::Status { watch: false } => {
            let mut admin = connect(options, timeout).await?;
            let s = bounded(
                endpoint,
                Some(timeout),
                admin.status(proto::StatusRequest {}),
            )
            .await?;
            if options.json {
                to_json(&s)
            } else {
                Ok(render::format_status(&s))
            }
        }
        Verb::Status { watch: true } => watch(options, timeout).await,
        Verb::Switchover(switch) => self::switch(options, switch, None).await,
        Verb::Failover {
            switch,
            ignore_health,
        } => self::switch(options, switch, Some(*ignore_health)).await,
        Verb::Pause(args) | Verb::Resume(args) => {
            let mut admin = connect(options, timeout).await?;
            let req = proto::PauseRequest {
                reason: args.reason.clone(),
                requested_by: whoami(args.by.clone()),
            };
            let reply = if matches!(verb, Verb::Pause(_)) {
                bounded(endpoint, Some(timeout), admin.pause(req)).await?
            } else {
                bounded(endpoint, Some(timeout), admin.resume(req)).await?
            };
            if options.json {
                to_json(&reply)
            } else if !reply.changed && !reply.paused {
                Ok("the link was not paused; nothing changed\n".into())
            } else if reply.paused {
                Ok(
                    "paused: no switch happens until `lockstep resume` (recorded in the history)\n"
                        .into(),
                )
            } else {
                Ok("resumed: switches are allowed again\n".into())
            }
        }
        Verb::Cancel { id, by } => {
            let mut admin = connect(options, timeout).await?;
            let reply = bounded(
                endpoint,
                Some(timeout),
                admin.cancel(proto::CancelRequest {
                    id: id.clone().unwrap_or_default(),
                    requested_by: whoami(by.clone()),
                }),
            )
            .await?;
            if options.json {
                to_json(&reply)
            } else {
                Ok(format!(
                    "cancelled: the switchover scheduled for {} (request {}) will not happen\n",
                    reply.not_before, reply.id
                ))
            }
        }
        Verb::History { limit, since } => {
            let mut admin = connect(options, timeout).await?;
            let h = bounded(
                endpoint,
                Some(timeout),
                admin.history(proto::HistoryRequest {
                    limit: *limit,
                    since: since.clone().unwrap_or_default(),
                }),
            )
            .await?;
            if options.json {
                to_json(&h)
            } else if h.records.is_empty() {
                Ok(match since {
                    Some(s) => format!("no transitions since {s}\n"),
                    None => "no transitions yet\n".into(),
                })
            } else {
                Ok(render::format_history(&h))
            }
        }
    }
}

/// `status --watch`: the status again on every change of the link (the
/// `WatchStatus` stream), until interrupted or the stream ends. On a
/// terminal the screen is redrawn; otherwise each status follows the last
/// (with `--json`, one JSON object per line).
async fn watch(options: &Options, timeout: Duration) -> Result<String, Failure> {
    use std::io::IsTerminal as _;
    let endpoint = options.endpoint.as_str();
    let mut admin = connect(options, timeout).await?;
    let mut stream = bounded(
        endpoint,
        Some(timeout),
        admin.watch_status(proto::StatusRequest {}),
    )
    .await?;
    let redraw = std::io::stdout().is_terminal() && !options.json;
    loop {
        let next = stream
            .message()
            .await
            .map_err(|s| rpc_failure(&s, endpoint, false))?;
        let Some(s) = next else {
            return Err(unreachable(endpoint, "the status stream ended"));
        };
        let text = if options.json {
            let line = serde_json::to_string(&s)
                .map_err(|e| Failure::new(1, format!("cannot print JSON: {e}")))?;
            format!("{line}\n")
        } else if redraw {
            format!(
                "\x1b[H\x1b[2J{}\nwatching {endpoint}; updated {}; Ctrl-C to stop\n",
                render::format_status(&s),
                humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            )
        } else {
            format!("{}\n", render::format_status(&s))
        };
        super::emit(&text);
    }
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

/// A status's message and its causes, in words.
fn describe(s: &tonic::Status) -> String {
    let mut out = s.message().to_string();
    let mut next = std::error::Error::source(s);
    while let Some(e) = next {
        out.push_str(": ");
        out.push_str(&e.to_string());
        next = e.source();
    }
    out
}

fn unreachable(endpoint: &str, why: &str) -> Failure {
    Failure::exit(
        Exit::Unreachable,
        format!(
            "no sidecar answered at {endpoint}: {why}; is a sidecar running at {endpoint}? set --endpoint or LOCKSTEP_ENDPOINT"
        ),
    )
}

/// The certificates do not fit the link (a config problem, exit 2), with
/// what to check.
fn tls_failure(endpoint: &str, why: &str, problem: crate::tls::client::TlsProblem) -> Failure {
    use crate::tls::client::TlsProblem;
    let hint = match problem {
        TlsProblem::UntrustedServer => "; is --ca the CA that signed the sidecars' certificates?",
        TlsProblem::ClientRefused => "; is --cert issued by the link's CA?",
        TlsProblem::Expired => "; renew the certificate (or check the clocks)",
        TlsProblem::WrongName => "; dial a name the sidecar's certificate lists (--endpoint)",
        TlsProblem::Other => "",
    };
    Failure::exit(
        Exit::Usage,
        format!("cannot connect to {endpoint}: {why}{hint}"),
    )
}

/// A failed call. The server's refusals carry their reason in the status
/// details (`google.rpc.ErrorInfo`): its exit code and its message. A
/// status without one was made by the client's transport (the connection
/// failed or broke): unreachable, exit 3; or, for a switch whose answer
/// did not come, possibly accepted: exit 4.
fn rpc_failure(s: &tonic::Status, endpoint: &str, switching: bool) -> Failure {
    if let Some((reason, facts)) = Reason::with_facts(s) {
        let mut f = Failure::refused(reason, s.message());
        f.facts = facts;
        return f;
    }
    if let Some(problem) = crate::tls::client::tls_problem_in(s) {
        return tls_failure(endpoint, &describe(s), problem);
    }
    match s.code() {
        // The sidecar cut the call (its `grpc.call_timeout`) or it was
        // dropped mid-call: the request may be stored and carried out.
        tonic::Code::Cancelled if switching => Failure::exit(
            Exit::NotComplete,
            format!(
                "the call to {endpoint} was cut before its answer ({}): the switch may go on; check `lockstep status`",
                s.message()
            ),
        ),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
            unreachable(endpoint, s.message())
        }
        tonic::Code::DeadlineExceeded if switching => Failure::exit(
            Exit::NotComplete,
            format!(
                "no answer from {endpoint} in time: the switch may go on; check `lockstep status`"
            ),
        ),
        tonic::Code::DeadlineExceeded => unreachable(endpoint, s.message()),
        _ => Failure::exit(Exit::Refused, s.message()),
    }
}

async fn connect(options: &Options, timeout: Duration) -> Result<AdminClient<Channel>, Failure> {
    let endpoint = options.endpoint.as_str();
    let files = options.tls.files()?;
    if let Some(files) = &files {
        // Read the files first: a missing, unreadable or expired
        // certificate is named here, before any connection.
        crate::tls::Material::load(files).map_err(|e| tls_file_failure(&e))?;
    } else if endpoint.starts_with("https://") {
        return Err(Failure::new(
            2,
            format!("{endpoint} is https://: give --ca, --cert and --key (or LOCKSTEP_CA, LOCKSTEP_CERT, LOCKSTEP_KEY)"),
        ));
    }
    let channel = crate::tls::client::connect(
        endpoint,
        files.as_ref(),
        timeout.min(Duration::from_secs(3)),
    )
    .await
    .map_err(|failure| {
        let why = failure.message;
        match failure.tls {
            Some(problem) => tls_failure(endpoint, &why, problem),
            None if files.is_none() => unreachable(
                endpoint,
                &format!("{why} (sidecars speak mutual TLS unless grpc.insecure = true: give --ca, --cert and --key, or LOCKSTEP_CA, LOCKSTEP_CERT, LOCKSTEP_KEY)"),
            ),
            None => unreachable(endpoint, &why),
        }
    })?;
    Ok(AdminClient::new(channel))
}

/// Runs one call under `bound` (none: the server bounds it itself).
async fn bounded<T>(
    endpoint: &str,
    bound: Option<Duration>,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, Failure> {
    bounded_as(endpoint, bound, false, call).await
}

/// [`bounded`]; `switching`: an unanswered call may have started a switch
/// (exit 4, not 3).
async fn bounded_as<T>(
    endpoint: &str,
    bound: Option<Duration>,
    switching: bool,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, Failure> {
    let result = match bound {
        Some(b) => tokio::time::timeout(b, call).await.map_err(|_| {
            let message = format!(
                "no answer from {endpoint} within {b:?}; check `lockstep status`, or raise --timeout"
            );
            if switching {
                Failure::exit(Exit::NotComplete, message)
            } else {
                Failure::exit(Exit::Unreachable, message)
            }
        })?,
        None => call.await,
    };
    result
        .map(tonic::Response::into_inner)
        .map_err(|s| rpc_failure(&s, endpoint, switching))
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

fn format_switch(reply: &proto::SwitchReply, to: Setup) -> String {
    let answer = format_switch_outcome(reply, to);
    // A dry run's plan already says it first.
    if reply.disagreement.is_empty() || reply.dry_run {
        answer
    } else {
        format!("before the switch: {}\n{answer}", reply.disagreement)
    }
}

fn format_switch_outcome(reply: &proto::SwitchReply, to: Setup) -> String {
    if !reply.scheduled_at.is_empty() && !reply.dry_run {
        format!(
            "scheduled: switchover to {to} at {} (request {}); `lockstep status` shows it, `lockstep cancel` withdraws it\n",
            reply.scheduled_at, reply.request_id
        )
    } else if reply.dry_run && !reply.already_active {
        format!("dry run, nothing changed: {}\n", reply.plan)
    } else if reply.already_active {
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

/// What a terminal answer means: only "y" or "yes" (any case) goes ahead.
fn confirmed(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// Shows the topology and the plan on stderr and asks `[y/N]` on the
/// terminal; `Ok(())` only for a yes.
async fn confirm(
    options: &Options,
    admin: &mut AdminClient<Channel>,
    plan: &proto::SwitchReply,
    to: Setup,
) -> Result<(), Failure> {
    let timeout = options.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let status = bounded(
        &options.endpoint,
        Some(timeout),
        admin.status(proto::StatusRequest {}),
    )
    .await?;
    let mut err = std::io::stderr().lock();
    let question = format!(
        "{}\nplan: {}\n\nSwitch every LB of link {} to {to}? [y/N] ",
        render::format_topology(&status),
        render::wrap(&plan.plan, 78, 6),
        status.link,
    );
    let _ = err
        .write_all(question.as_bytes())
        .and_then(|()| err.flush());
    drop(err);
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| Failure::exit(Exit::Usage, format!("cannot read the answer: {e}")))?;
    if confirmed(&answer) {
        Ok(())
    } else {
        let mut f = Failure::exit(
            Exit::Refused,
            "not confirmed: nothing changed (answer y to switch; -y/--yes skips the question)",
        );
        f.reason = Some("DECLINED".into());
        Err(f)
    }
}

/// A switchover (`ignore_health: None`) or failover.
async fn switch(
    options: &Options,
    args: &Switch,
    ignore_health: Option<bool>,
) -> Result<String, Failure> {
    use std::io::IsTerminal as _;
    let timeout = options.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let mut admin = connect(options, timeout).await?;
    let (timeout_ms, bound) = switch_bounds(args.wait, options.timeout);
    let to = setup_to_proto(args.to) as i32;
    let mut request = proto::SwitchRequest {
        to,
        reason: args.reason.clone(),
        requested_by: whoami(args.by.clone()),
        force: ignore_health.unwrap_or(false),
        wait: args.wait,
        timeout_ms,
        grace_ms: args.grace.map_or(0, |g| g.as_millis() as u64),
        dry_run: false,
        at: args.at.clone().unwrap_or_default(),
    };
    let endpoint = &options.endpoint;
    let ask = !args.yes && !args.dry_run && std::io::stdin().is_terminal();
    if args.dry_run || ask {
        // The server evaluates the request against the link as it is and
        // answers without storing anything: the plan, or the refusal.
        let mut dry = request.clone();
        dry.dry_run = true;
        let plan = match ignore_health {
            None => bounded(endpoint, Some(timeout), admin.switchover(dry)).await,
            Some(_) => bounded(endpoint, Some(timeout), admin.failover(dry)).await,
        };
        let plan = match plan {
            Err(mut f) if args.dry_run => {
                f.message = format!(
                    "dry run, nothing changed: it would be refused: {}",
                    f.message
                );
                return Err(f);
            }
            other => other?,
        };
        if args.dry_run {
            return if options.json {
                to_json(&plan)
            } else {
                Ok(format_switch(&plan, args.to))
            };
        }
        if plan.already_active {
            return if options.json {
                to_json(&plan)
            } else {
                Ok(format_switch(&plan, args.to))
            };
        }
        confirm(options, &mut admin, &plan, args.to).await?;
    }
    request.dry_run = false;
    let progress = if args.wait && !options.json {
        Progress::start(&mut admin)
            .await
            .map(|p| tokio::spawn(p.follow(to)))
    } else {
        None
    };
    let result = match ignore_health {
        None => bounded_as(endpoint, bound, true, admin.switchover(request)).await,
        Some(_) => bounded_as(endpoint, bound, true, admin.failover(request)).await,
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
    if options.json {
        return to_json(&reply);
    }
    // The final state line (if the watch had not shown it yet), then the
    // summary.
    let mut out = match final_line {
        Some(Some(line)) => format!("  {line}\n"),
        _ => String::new(),
    };
    out.push_str(&format_switch(&reply, args.to));
    Ok(out)
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
    fn refusals_exit_by_their_reason_not_their_text() {
        let cases = [
            (Reason::Paused, 1),
            (Reason::TargetUnhealthy, 1),
            (Reason::PendingRequest, 1),
            (Reason::NoLeader, 1),
            (Reason::InvalidRequest, 2),
            (Reason::EtcdUnavailable, 3),
            (Reason::NotComplete, 4),
            (Reason::OutcomeUnknown, 4),
        ];
        for (reason, code) in cases {
            // The message says nothing of the reason: only the details do.
            let f = rpc_failure(&reason.status("something"), "http://x:1", true);
            assert_eq!(f.code, code, "{reason}");
            assert_eq!(f.message, "something");
            assert_eq!(f.reason.as_deref(), Some(reason.as_str()));
            assert!(f.line().starts_with(&format!("error [{reason}]: ")));
        }
        // A refusal-looking text without details decides nothing.
        let f = rpc_failure(
            &tonic::Status::failed_precondition("link is paused"),
            "http://x:1",
            false,
        );
        assert_eq!((f.code, f.reason), (1, None));
    }

    #[test]
    fn a_status_without_details_from_the_transport_is_unreachable() {
        let s = tonic::Status::unavailable("connection reset");
        let f = rpc_failure(&s, "http://x:1", false);
        assert_eq!(f.code, 3);
        assert!(f.message.contains("is a sidecar running at http://x:1?"));
        assert!(f.message.contains("LOCKSTEP_ENDPOINT"));
        let late = tonic::Status::deadline_exceeded("timeout");
        assert_eq!(rpc_failure(&late, "x", true).code, 4, "a switch may go on");
        assert_eq!(rpc_failure(&late, "x", false).code, 3);
        // The sidecar's grpc.call_timeout cut the call: the request may be
        // stored and carried out.
        let cut = tonic::Status::cancelled("Timeout expired");
        let f = rpc_failure(&cut, "x", true);
        assert_eq!(f.code, 4, "a switch may go on");
        assert!(f.message.contains("Timeout expired"), "{}", f.message);
        assert_eq!(rpc_failure(&cut, "x", false).code, 3);
    }

    #[test]
    fn only_yes_confirms() {
        for yes in ["y", "Y\n", "yes", " YES \n"] {
            assert!(confirmed(yes), "{yes:?}");
        }
        for no in ["", "\n", "n", "no", "yep", "y es", "ok"] {
            assert!(!confirmed(no), "{no:?}");
        }
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
            ..Default::default()
        };
        assert!(format_switch(&r, Setup::Warm)
            .contains("accepted: switch to warm at epoch 7 (request r-1)"));
        r.completed = true;
        r.elapsed_ms = 23;
        assert_eq!(
            format_switch(&r, Setup::Warm),
            "every LB serves warm at epoch 7 — done in 23 ms\n"
        );
        r.already_active = true;
        assert!(format_switch(&r, Setup::Warm).starts_with("already on warm"));
        let dry = proto::SwitchReply {
            dry_run: true,
            plan: "switchover from hot to warm: ...".into(),
            ..Default::default()
        };
        assert_eq!(
            format_switch(&dry, Setup::Warm),
            "dry run, nothing changed: switchover from hot to warm: ...\n"
        );
    }

    #[test]
    fn a_switch_answer_says_when_the_lbs_disagreed_with_the_route() {
        let words = "etcd holds no route, but LBs have applied one: bob-0 applied 7/serve warm, LB warm; the leader re-establishes the link";
        let r = proto::SwitchReply {
            request_id: "r-1".into(),
            epoch: 9,
            completed: true,
            elapsed_ms: 40,
            disagreement: words.into(),
            ..Default::default()
        };
        assert_eq!(
            format_switch(&r, Setup::Hot),
            format!("before the switch: {words}\nevery LB serves hot at epoch 9 — done in 40 ms\n")
        );
        // A dry run's plan says it already: not twice.
        let dry = proto::SwitchReply {
            dry_run: true,
            plan: format!("{words}; then switchover to hot: ..."),
            disagreement: words.into(),
            ..Default::default()
        };
        assert_eq!(format_switch(&dry, Setup::Hot).matches(words).count(), 1);
    }
}
