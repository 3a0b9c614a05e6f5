//! Starting mock KMEs for labs and tests.
