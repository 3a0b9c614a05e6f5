//! lockstep: moves every load balancer of a QKD link between the hot and the
//! warm setup together, so Alice and Bob never route to different setups.
//!
//! # Layout
//! * `lockstep_core` (crate `core/`): the pure protocol state machines.
//! * [`lb`]: LB adapters (HAProxy over its Runtime API).
//! * [`lab`]: starting etcd, HAProxy, KMEs and sidecars on free loopback
//!   ports, for the local lab, tests and benchmarks.
//! * [`chaos`]: fault scenarios on a lab, their recorded history and the
//!   history checker (`lockstep-chaos`).

pub mod cli;
pub mod config;
pub mod http;
pub mod lb;
pub mod probe;
pub mod proto;
pub mod rpc;
pub mod sidecar;
pub mod store;

pub use lockstep_core as protocol;
