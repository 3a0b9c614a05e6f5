//! Starting HAProxy for labs and tests.
