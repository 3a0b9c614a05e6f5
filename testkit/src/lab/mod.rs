//! Everything needed to run a link on one machine: processes on free
//! loopback ports, cleaned up on drop.
//!
//! # Layout
//! * [`link`]: [`Lab`], one whole link, and what tests ask of it (traffic
//!   flowing, a KME fault seen, LBs reaching a target, status, history).
//! * [`etcd`]: an etcd cluster (one node or several), or one started
//!   elsewhere that many links share (`LabOptions::attach_etcd`).
//! * [`kme`]: the four mock KMEs (hot/warm × Alice/Bob) and their faults.
//! * [`haproxy`]: one HAProxy per member, from the product's template.
//! * [`sidecar`]: `lockstep run` sidecars with their config and timing.
//! * [`baseline`]: the comparison without lockstep (two HAProxies with
//!   `backup` servers) for the failover benchmark.
//! * [`process`]: child processes, free ports, finding programs (and
//!   building the workspace's own for tests).

pub mod baseline;
pub mod etcd;
pub mod haproxy;
pub mod kme;
pub mod link;
pub mod process;
pub mod sidecar;

pub use link::{Lab, LabOptions};
