//! ETSI GS QKD 014 (v1.1.1) mock KME: one process is one KME of one setup
//! (hot or warm) and one role (Alice hands out keys at `enc_keys`, Bob
//! returns them at `dec_keys`). The binary is `kme-mock` (`src/bin/kme-mock.rs`);
//! the test kit's lab starts one per setup and role.
//!
//! # Layout
//! * [`api`]: pure logic (key derivation, parsing, validation, bodies,
//!   [`KmeFault`]).
//! * [`server`]: the hyper listeners, fault injection and counters.
//!
//! Choices where the brief left room: `enc_keys` on Bob and `dec_keys` on
//! Alice answer 400 (this mock is one-directional); a caller that names
//! itself with an `X-SAE-ID` header other than the SAE this KME serves gets
//! 401; unknown paths get 404 and wrong methods 405, all with ETSI bodies.

pub mod api;
pub mod server;

pub use api::{
    ApiError, ErrorBody, FaultMode, KeyContainer, KeyDeriver, KeyEntry, Kme, KmeConfig, KmeFault,
    StatusBody, DEFAULT_MASTER_SAE_ID, DEFAULT_SLAVE_SAE_ID, KEY_NOT_FOUND,
};
pub use server::{KmeServer, KmeStats, ROLE_HEADER, SETUP_HEADER};
