//! What tests lockstep, kept out of the product crate: a whole link on one
//! machine, network faults between its members, and key pairs through its
//! LBs as the SAEs see them. The integration tests (`tests/`) and the chaos
//! suite (`chaos/`) are built on it; `lockstep-lab` runs it by hand.
//!
//! # Layout
//! * [`lab`]: etcd, HAProxy, mock KMEs and `lockstep run` sidecars started
//!   on free loopback ports and killed when dropped; [`lab::Lab`] is one
//!   whole link.
//! * [`netns`]: lab members in network namespaces, and the network faults
//!   between them (root only).
//! * [`pki`]: the lab's CA and certificates (mutual TLS everywhere).
//! * [`breakdown`]: where the time of one switch goes, from the sidecars'
//!   span logs (`lockstep-lab bench --breakdown`).
//! * [`browser`]: headless Chromium over WebDriver (the status page's
//!   test).
//! * [`http`]: an HTTP/1.1 client on one connection, for the key pairs and
//!   the mock KMEs' control API.
//! * [`metrics`]: a sidecar's `/metrics`, parsed.
//! * [`traffic`]: the end-to-end oracle, continuous key pairs through
//!   Alice's and Bob's LBs, counting matched, mismatched and failed pairs.
//! * [`transit`]: SAE pairs as applications run them, several in parallel
//!   with a transit gap between `enc_keys` and `dec_keys`, counting keys a
//!   switch stranded.
//! * [`outage`]: one end's outage as its SAEs see it (ETSI 014 `status`
//!   through its LB, about every millisecond).
//! * [`webhook`]: webhook receivers for the notification tests.

pub mod breakdown;
pub mod browser;
pub mod http;
pub mod lab;
pub mod metrics;
pub mod netns;
pub mod outage;
pub mod pki;
pub mod traffic;
pub mod transit;
pub mod webhook;

/// The runtime the integration tests and the chaos suite's tests run a lab
/// on: two worker threads, as on the two-core machines CI uses.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// `setup` as the gRPC API spells it.
pub fn setup_proto(setup: lockstep_core::Setup) -> i32 {
    match setup {
        lockstep_core::Setup::Hot => lockstep::proto::Setup::Hot as i32,
        lockstep_core::Setup::Warm => lockstep::proto::Setup::Warm as i32,
    }
}

/// A switchover (or failover) request to `to`, as tests send it: waits
/// for completion up to 20 s, by "test". Change a field with struct update
/// syntax (`SwitchRequest { wait: false, ..switch_request(..) }`).
pub fn switch_request(
    to: lockstep_core::Setup,
    reason: impl Into<String>,
) -> lockstep::proto::SwitchRequest {
    lockstep::proto::SwitchRequest {
        to: setup_proto(to),
        reason: reason.into(),
        requested_by: "test".into(),
        force: false,
        wait: true,
        timeout_ms: 20_000,
        grace_ms: 0,
        dry_run: false,
        at: String::new(),
    }
}
