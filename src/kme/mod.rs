//! ETSI GS QKD 014 mock KME (see `src/bin/kme-mock.rs`).
