//! The end-to-end oracle: continuous key pairs through both LBs.
