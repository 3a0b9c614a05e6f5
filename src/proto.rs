//! Generated gRPC types for `lockstep.v1`.
#![allow(clippy::all, missing_docs)]

tonic::include_proto!("lockstep.v1");

/// Encoded descriptors, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("lockstep_descriptor");
