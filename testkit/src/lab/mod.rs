//! Everything needed to run a link on one machine: processes on free
//! loopback ports, cleaned up on drop.

pub mod baseline;
pub mod etcd;
pub mod haproxy;
pub mod kme;
pub mod link;
pub mod process;
pub mod sidecar;

pub use link::{Lab, LabOptions};
