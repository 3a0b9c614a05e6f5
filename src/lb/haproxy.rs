//! HAProxy over its Runtime API.
