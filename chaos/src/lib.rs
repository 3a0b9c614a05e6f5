//! The chaos suite: scenarios that inject process-level faults into a lab
//! link while key pairs flow and every LB's routing is sampled, a history
//! of all of it, and a verdict that fails a run on any mismatched pair or
//! any instant where two LBs route to different setups (invariant S1), or
//! when the link does not serve again within a bound after the faults heal.
//! Labs come from the test kit (`lockstep_testkit`).
//!
//! # Layout
//! * [`history`]: the JSONL history and the recorders that write it.
//! * [`verdict`]: the verdict, judging a run from its history (why it is
//!   sound: see there).
//! * [`fault`]: the faults a scenario injects into a lab ([`LabFault`]).
//! * [`net`]: network faults on the lab's member namespaces.
//! * [`scenario`]: the scenario context, runner and registry.
//! * [`random`]: seeded random runs and the summary over many runs.
//!
//! The binary is `lockstep-chaos`; `chaos/run` builds and runs it.

pub mod fault;
pub mod history;
pub mod net;
pub mod random;
pub mod scenario;
pub mod verdict;

pub use fault::LabFault;
pub use scenario::{find, registry, run, Ctx, RunOptions, RunReport, Scenario};
pub use verdict::Verdict;
