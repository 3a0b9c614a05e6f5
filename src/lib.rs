//! lockstep: moves every load balancer of a QKD link between the hot and the
//! warm setup together, so Alice and Bob never route to different setups.
//! This crate is the product: the sidecar beside each LB and the `lockstep`
//! CLI. The protocol it drives is `lockstep_core` (crate `core/`, pure: no
//! I/O, no clock); what tests it lives in other crates (`kme-mock/`,
//! `testkit/`, `chaos/`).
//!
//! # Layout
//! * [`config`]: the sidecar's config, its validation (DESIGN §3's timing
//!   rule) and loading.
//! * `sidecar`: the running sidecar, thin drivers around the core's
//!   `Member` and `Leader`: registration, keep-alive and the member loop
//!   (`sidecar/member.rs`), election and the leader loop
//!   (`sidecar/leader.rs`), metrics (`sidecar/metrics.rs`), what
//!   `/healthz`, `/readyz` and gRPC health answer (`sidecar/health.rs`).
//!   Follow a switchover from `rpc/admin.rs` (the request) through
//!   `sidecar/leader.rs` (drain, wait, serve) to `sidecar/member.rs` (the
//!   LB change and the ack).
//! * [`store`]: the link's keys in etcd and the fenced leader writes.
//! * `rpc`: gRPC, the `Peer` service between sidecars and the `Admin`
//!   service the CLI calls, who may call what (`rpc/auth.rs`), and the
//!   machine-readable reason every refusal carries (`rpc/reason.rs`,
//!   `Reason`).
//! * [`tls`]: mutual TLS for gRPC: certificates from PEM files, reloaded
//!   when they change; the acceptor, the connector, peer channels.
//! * `limits`: bounds on input from outside (reasons, probe bodies).
//! * [`lb`]: the LB adapter trait and HAProxy (config template, Runtime API
//!   client, adapter, and the check settings HAProxy reports compared with
//!   the config's).
//! * [`probe`]: ETSI GS QKD 014 status probes of this member's KMEs.
//! * `http`: the LB's check endpoint (the dead-man's switch), `/healthz`,
//!   `/readyz`, `/metrics`.
//! * `page`: the read-only status page on its own listener
//!   (`status.listen`): the link drawn live (server-sent events from the
//!   `WatchStatus` stream), `/status` as JSON.
//! * `notify`: webhooks and commands told of the leader's transitions,
//!   from tasks of their own behind bounded queues.
//! * [`proto`]: the generated gRPC types.
//! * [`cli`]: the `lockstep` command's verbs (`src/bin/lockstep.rs` defines
//!   its arguments).
//!
//! Modules and items are crate-private unless another crate uses them: the
//! binary, the test kit, the chaos suite and the mock KME.
#![warn(unreachable_pub)]

pub mod cli;
pub mod config;
mod http;
pub mod lb;
pub(crate) mod limits;
mod notify;
mod page;
pub mod probe;
pub mod proto;
mod rpc;
pub mod sidecar;
pub mod store;
pub mod tls;

pub use lockstep_core as protocol;
