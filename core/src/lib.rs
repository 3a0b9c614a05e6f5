//! The lockstep protocol, pure: no I/O, no clock, no randomness.
//!
//! # Layout
//! * [`types`]: the domain's words (setup, role, epoch, token, route).
//! * [`time`]: monotonic time handed in by drivers.
//! * [`member`]: the member state machine, the only thing that decides what
//!   one LB routes to.
//! * [`leader`]: the leader state machine that runs a switch (drain all,
//!   wait for acks or lease expiry, serve).
//! * [`link`]: the link judged from every LB's read-back against the
//!   route: the one definition of "complete", "already there" and "the LBs
//!   disagree with the route".
//! * [`failsafe`]: serving on peers' grants while etcd is unreachable,
//!   and who may lead then.
//! * [`failover`]: the automatic failover policy (detection, dwell, cap,
//!   failback).
//! * [`health`]: aggregating members' probe results into setup health.
//! * [`policy`]: deciding whether a manual request may run.
//! * `mutation` (feature `mutations`, tests only): deliberate protocol
//!   breaks the model checker must catch.

pub mod failover;
pub mod failsafe;
pub mod health;
pub mod leader;
pub mod link;
pub mod member;
#[cfg(feature = "mutations")]
pub mod mutation;
pub mod policy;
pub mod time;
pub mod types;

pub use time::{Duration, Time};
pub use types::*;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
