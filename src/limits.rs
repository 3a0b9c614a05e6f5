//! Bounds on what comes from outside: free text in Admin requests, probe
//! bodies, and the number of property-test cases.

/// Longest `reason` an Admin call may carry, in bytes.
pub(crate) const MAX_REASON: usize = 1024;
/// Longest `--by` note, in bytes.
pub(crate) const MAX_BY: usize = 256;
/// A member id from outside (a grant ask): a Kubernetes pod name's bound.
pub(crate) const MAX_MEMBER_ID: usize = 253;
/// Largest ETSI 014 status body the probe reads.
pub(crate) const MAX_PROBE_BODY: usize = 64 * 1024;
/// Largest gRPC message a sidecar decodes.
pub(crate) const MAX_GRPC_MESSAGE: usize = 64 * 1024;
/// Webhooks and commands together in `[notify]`.
pub(crate) const MAX_NOTIFY_RECEIVERS: usize = 16;
/// Largest webhook answer body read (and then dropped).
pub(crate) const MAX_WEBHOOK_ANSWER: usize = 16 * 1024;
/// History records the status page shows.
pub(crate) const PAGE_HISTORY: usize = 20;

/// Why free text was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TextError {
    #[error("{field} is {len} bytes; at most {max} are allowed")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field} contains a control character ({found:?} at byte {at}); use plain text (no escape sequences, tabs or newlines)")]
    Control {
        field: &'static str,
        found: char,
        at: usize,
    },
}

/// `text` is at most `max` bytes and holds no control character (terminal
/// escape sequences start with one), so it is stored and printed safely.
pub(crate) fn check_text(field: &'static str, text: &str, max: usize) -> Result<(), TextError> {
    if text.len() > max {
        return Err(TextError::TooLong {
            field,
            len: text.len(),
            max,
        });
    }
    if let Some((at, found)) = text.char_indices().find(|(_, c)| c.is_control()) {
        return Err(TextError::Control { field, found, at });
    }
    Ok(())
}

/// An Admin call's `reason`: required, bounded, printable.
pub(crate) fn check_reason(reason: &str) -> Result<(), TextError> {
    check_text("reason", reason, MAX_REASON)
}

/// An Admin call's `requested_by` (the CLI's `--by`): bounded, printable.
pub(crate) fn check_by(by: &str) -> Result<(), TextError> {
    check_text("requested_by (--by)", by, MAX_BY)
}

/// Both, as the gRPC status a handler returns: INVALID_ARGUMENT, and the
/// call changes nothing.
pub(crate) fn check_admin_text(reason: &str, by: &str) -> Result<(), tonic::Status> {
    check_reason(reason)
        .and_then(|()| check_by(by))
        .map_err(|e| crate::rpc::reason::Reason::InvalidRequest.status(e.to_string()))
}

/// Property tests run `LOCKSTEP_PROPTEST_CASES` cases (default 256, what CI
/// runs; `scripts/fuzz-parsers` runs many more).
#[cfg(test)]
pub(crate) fn proptest_config() -> proptest::test_runner::Config {
    let cases = std::env::var("LOCKSTEP_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reasons() {
        assert!(check_reason("patching hot KME — ticket #42").is_ok());
        assert!(matches!(
            check_reason(&"x".repeat(10 * 1024)),
            Err(TextError::TooLong { len: 10240, .. })
        ));
        assert!(check_reason(&"x".repeat(MAX_REASON)).is_ok());
        let e = check_reason("ok \u{1b}[2J wiped").expect_err("escape sequence");
        assert!(e.to_string().contains("control character"), "{e}");
        assert!(check_reason("two\nlines").is_err());
        assert!(check_reason("bidi \u{85}").is_err());
        assert!(check_by(&"b".repeat(MAX_BY + 1)).is_err());
    }

    proptest! {
        #![proptest_config(proptest_config())]
        #[test]
        fn check_text_never_panics_and_accepts_only_bounded_printable(s in ".{0,1100}") {
            match check_reason(&s) {
                Ok(()) => prop_assert!(s.len() <= MAX_REASON && !s.chars().any(char::is_control)),
                Err(TextError::TooLong { field, len, max }) => {
                    prop_assert_eq!((field, len, max), ("reason", s.len(), MAX_REASON));
                    prop_assert!(len > max);
                }
                Err(TextError::Control { field, found, at }) => {
                    prop_assert!(s.len() <= MAX_REASON, "length is checked first");
                    prop_assert_eq!(field, "reason");
                    prop_assert!(found.is_control());
                    prop_assert_eq!(s[at..].chars().next(), Some(found));
                    prop_assert!(!s[..at].chars().any(char::is_control), "the first one");
                }
            }
        }
    }
}
