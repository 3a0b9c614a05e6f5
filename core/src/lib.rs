//! The lockstep protocol, pure: no I/O, no clock, no randomness.
//!
//! # Layout
//! * [`types`]: the domain's words (setup, role, epoch, token, route).

pub mod types;

pub use types::*;
