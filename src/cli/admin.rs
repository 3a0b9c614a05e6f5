//! The on-call verbs: each calls one member's Admin service over gRPC and
//! returns what to print.

use super::progress::{Progress, PROGRESS_CATCH_UP};
use super::render;
use super::{to_json, Failure};
use crate::proto::{self, admin_client::AdminClient};
use crate::rpc::setup_to_proto;
use crate::tls::TlsFiles;
use lockstep_core::Setup;
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
    Status,
    Switchover(Switch),
    /// `force`: also to an unhealthy setup or while paused.
    Failover {
        switch: Switch,
        force: bool,
    },
    Pause(Pause),
    Resume(Pause),
    History {
        limit: u32,
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
        Verb::Status => {
            let mut admin = connect(options, timeout).await?;
            let s = bounded(
                endpoint,
                Some(timeout),
                admin.status(proto::StatusRequest {}),
            )
            .await?;
            if options.json {
                to_json(&render::status_json(&s))
            } else {
                Ok(render::format_status(&s))
            }
        }
        Verb::Switchover(switch) => self::switch(options, switch, None).await,
        Verb::Failover { switch, force } => self::switch(options, switch, Some(*force)).await,
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
                to_json(&serde_json::json!({ "paused": reply.paused }))
            } else if reply.paused {
                Ok("paused: no switch happens until `lockstep resume`\n".into())
            } else {
                Ok("resumed: switches are allowed again\n".into())
            }
        }
        Verb::History { limit } => {
            let mut admin = connect(options, timeout).await?;
            let h = bounded(
                endpoint,
                Some(timeout),
                admin.history(proto::HistoryRequest { limit: *limit }),
            )
            .await?;
            if options.json {
                to_json(&render::history_json(&h))
            } else if h.records.is_empty() {
                Ok("no transitions yet\n".into())
            } else {
                Ok(render::format_history(&h))
            }
        }
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

fn unreachable(endpoint: &str, why: &str) -> Failure {
    Failure::new(
        3,
        format!(
            "no sidecar answered at {endpoint}: {why}; is a sidecar running at {endpoint}? set --endpoint or LOCKSTEP_ENDPOINT"
        ),
    )
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
    Failure::new(1, s.message())
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
    .map_err(|why| {
        if why.contains("TLS handshake") {
            let hint = if why.contains("not signed by our CA") {
                "; is --ca the CA that signed the sidecars' certificates?"
            } else if why.contains("does not trust our certificate") || why.contains("refused our certificate") {
                "; is --cert issued by the link's CA?"
            } else if why.contains("expired") {
                "; renew the certificate"
            } else if why.contains("does not name the host") {
                "; dial a name the sidecar's certificate lists (--endpoint)"
            } else {
                ""
            };
            Failure::new(1, format!("cannot connect to {endpoint}: {why}{hint}"))
        } else if files.is_none() {
            unreachable(
                endpoint,
                &format!("{why} (sidecars speak mutual TLS unless grpc.insecure = true: give --ca, --cert and --key, or LOCKSTEP_CA, LOCKSTEP_CERT, LOCKSTEP_KEY)"),
            )
        } else {
            unreachable(endpoint, &why)
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
    let result = match bound {
        Some(b) => tokio::time::timeout(b, call).await.map_err(|_| {
            Failure::new(
                1,
                format!(
                    "no answer from {endpoint} within {b:?}; check `lockstep status`, or raise --timeout"
                ),
            )
        })?,
        None => call.await,
    };
    result
        .map(tonic::Response::into_inner)
        .map_err(|s| rpc_failure(&s, endpoint))
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

/// A switchover (`force: None`) or failover.
async fn switch(options: &Options, args: &Switch, force: Option<bool>) -> Result<String, Failure> {
    let timeout = options.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let mut admin = connect(options, timeout).await?;
    let (timeout_ms, bound) = switch_bounds(args.wait, options.timeout);
    let to = setup_to_proto(args.to) as i32;
    let request = proto::SwitchRequest {
        to,
        reason: args.reason.clone(),
        requested_by: whoami(args.by.clone()),
        force: force.unwrap_or(false),
        wait: args.wait,
        timeout_ms,
        grace_ms: args.grace.map_or(0, |g| g.as_millis() as u64),
    };
    let progress = if args.wait && !options.json {
        Progress::start(&mut admin)
            .await
            .map(|p| tokio::spawn(p.follow(to)))
    } else {
        None
    };
    let endpoint = &options.endpoint;
    let result = match force {
        None => bounded(endpoint, bound, admin.switchover(request)).await,
        Some(_) => bounded(endpoint, bound, admin.failover(request)).await,
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
        return to_json(&switch_json(&reply));
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
        assert_eq!(switch_json(&r)["epoch"], 7);
    }
}
