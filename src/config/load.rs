//! Loading: the TOML file, then `LOCKSTEP_<SECTION>__<KEY>` environment
//! overrides, then validation; every error names the key and where its
//! value came from (the file or the environment variable).

use super::{Config, ConfigError};
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use std::path::Path;

/// Environment variables under the `LOCKSTEP_` prefix that belong to the CLI
/// (and `LOCKSTEP_MUTATION`, read by test builds of the sidecar, and
/// `LOCKSTEP_PROPTEST_CASES`, read by property tests), not to the config
/// file; without this they would be "unknown keys".
const CLI_ENV_KEYS: &[&str] = &[
    "endpoint",
    "config",
    "mutation",
    "ca",
    "cert",
    "key",
    "proptest_cases",
    "log_format",
    "log_spans",
];

/// Loads `path`, applies `LOCKSTEP_<SECTION>__<KEY>` overrides, validates.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    let env = Env::prefixed("LOCKSTEP_").ignore(CLI_ENV_KEYS).split("__");
    parse(path, &text, Some(env))
}

/// The commented example config (`deploy/local/lockstep.example.toml`),
/// for tests.
#[cfg(test)]
pub(crate) fn example() -> &'static str {
    include_str!("../../deploy/local/lockstep.example.toml")
}

/// [`example`] with its gRPC certificate paths (which exist only in a pod)
/// pointing at test certificates; keep the `TestPki` while using it.
#[cfg(test)]
pub(crate) fn example_with_certs() -> (String, crate::tls::test_pki::TestPki) {
    let pki = crate::tls::test_pki::TestPki::new();
    let (cert, key) = pki.leaf("alice-0", "spiffe://lockstep/qkd-1/member/alice-0");
    let text = example()
        .replace("/etc/lockstep/grpc/ca.crt", &pki.ca().to_string_lossy())
        .replace("/etc/lockstep/grpc/tls.crt", &cert.to_string_lossy())
        .replace("/etc/lockstep/grpc/tls.key", &key.to_string_lossy());
    (text, pki)
}

/// The env var that overrides `key` (e.g. `etcd.lease_ttl`).
fn env_var(key: &str) -> String {
    format!("LOCKSTEP_{}", key.replace('.', "__").to_uppercase())
}

pub(super) fn parse(path: &Path, text: &str, env: Option<Env>) -> Result<Config, ConfigError> {
    let file_origin = format!("config {}", path.display());
    let toml = Toml::string(text);
    // Syntax errors surface here, before any key is looked at.
    figment::Provider::data(&toml).map_err(|e| ConfigError::NotToml {
        path: path.to_path_buf(),
        message: e.to_string().trim().to_string(),
    })?;
    let mut figment = Figment::from(toml);
    if let Some(env) = env {
        figment = figment.merge(env);
    }
    let config: Config = figment
        .extract()
        .map_err(|e| from_figment(e, &file_origin))?;
    config.validate().map_err(|e| {
        // Point at the variables when a bad value came from the environment.
        let keys: &[&str] = match &e {
            ConfigError::Invalid { key, .. } => &[key.as_str()],
            ConfigError::Timing { .. } => &TIMING_KEYS,
            _ => &[],
        };
        let set: Vec<String> = keys
            .iter()
            .map(|k| env_var(k))
            .filter(|v| std::env::var_os(v).is_some())
            .collect();
        let origin = if set.is_empty() {
            file_origin.clone()
        } else {
            format!("{file_origin} (overridden by {})", set.join(", "))
        };
        e.with_origin(origin)
    })?;
    Ok(config)
}

/// The keys the timing rule reads.
const TIMING_KEYS: [&str; 6] = [
    "etcd.lease_ttl",
    "etcd.keepalive_interval",
    "etcd.margin",
    "lb.check_inter",
    "lb.check_fall",
    "lb.check_timeout",
];

/// The first of figment's errors (fixing one at a time is clear enough), named by key and by where it came from.
fn from_figment(errors: figment::Error, file_origin: &str) -> ConfigError {
    use figment::error::Kind;
    let Some(e) = errors.into_iter().next() else {
        return ConfigError::Invalid {
            origin: file_origin.into(),
            key: String::new(),
            message: "cannot be read".into(),
        };
    };
    let from_env = e
        .metadata
        .as_ref()
        .is_some_and(|m| m.name.contains("environment"));
    let path: Vec<String> = e.path.iter().map(|p| p.to_lowercase()).collect();
    let key = path.join(".");
    let origin = if from_env {
        format!("environment variable {}", env_var(&key))
    } else {
        file_origin.to_string()
    };
    match e.kind {
        Kind::UnknownField(field, expected) => ConfigError::UnknownKey {
            origin,
            // Figment's path ends with the unknown field already.
            key: if path.last() == Some(&field.to_lowercase()) {
                key
            } else {
                join_key(&key, &field)
            },
            expected: expected.join(", "),
        },
        Kind::MissingField(field) => ConfigError::MissingKey {
            origin,
            key: join_key(&key, &field),
        },
        Kind::UnknownVariant(found, expected) => ConfigError::Invalid {
            origin,
            key,
            message: format!("{found:?} is not one of: {}", expected.join(", ")),
        },
        other => {
            let mut message = other.to_string();
            if message.contains("expected a duration") {
                message.push_str("; write durations like \"500ms\" or \"5s\"");
            }
            ConfigError::Invalid {
                origin,
                key,
                message,
            }
        }
    }
}

fn join_key(parent: &str, field: &str) -> String {
    if parent.is_empty() {
        field.to_string()
    } else {
        format!("{parent}.{field}")
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{cfg, invalid};
    use super::*;
    use lockstep_core::Role;
    use std::time::Duration;

    #[test]
    fn the_example_is_valid_and_sets_every_section() {
        let (text, _pki) = example_with_certs();
        let c = parse(Path::new("example.toml"), &text, None).expect("example is valid");
        assert!(!c.grpc.insecure);
        assert_eq!(c.admin.history_keep, 1000);
        assert_eq!(c.role, Role::Alice);
        assert_eq!(c.probe.hot.as_deref(), Some("http://127.0.0.1:8443"));
        assert_eq!(c.admin.switch_timeout, Duration::from_secs(30));
    }

    #[test]
    fn unreadable_file_names_the_path() {
        let e = load(Path::new("/nonexistent/lockstep.toml")).expect_err("missing");
        assert!(matches!(e, ConfigError::Unreadable { .. }), "{e:?}");
        assert!(e.to_string().contains("/nonexistent/lockstep.toml"), "{e}");
    }

    #[test]
    fn not_toml() {
        let e = parse(Path::new("t.toml"), "not toml [[[", None).expect_err("bad");
        assert!(matches!(e, ConfigError::NotToml { .. }), "{e:?}");
        assert!(
            e.to_string().starts_with("config t.toml is not TOML"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_are_named_with_their_section() {
        for (extra, want) in [
            ("bogus = 1\n", "bogus"),
            ("[etcd]\nlease_tll = \"5s\"\n", "etcd.lease_tll"),
            ("[nope]\nx = 1\n", "nope"),
        ] {
            match cfg(extra) {
                Err(ConfigError::UnknownKey { key, origin, .. }) => {
                    assert_eq!(key, want);
                    assert_eq!(origin, "config t.toml");
                }
                other => panic!("{extra:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn missing_required_keys() {
        for (text, want) in [
            ("member_id = \"a\"\nrole = \"bob\"\n", "link"),
            ("link = \"x\"\nrole = \"bob\"\n", "member_id"),
            ("link = \"x\"\nmember_id = \"a\"\n", "role"),
        ] {
            match parse(Path::new("t.toml"), text, None) {
                Err(ConfigError::MissingKey { key, .. }) => assert_eq!(key, want),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn bad_values_name_the_key() {
        let text = "link = \"x\"\nmember_id = \"a\"\nrole = \"carol\"\n";
        let e = parse(Path::new("t.toml"), text, None).expect_err("bad role");
        assert!(
            e.to_string()
                .contains("\"carol\" is not one of: alice, bob"),
            "{e}"
        );
        for (extra, key) in [
            ("initial_setup = \"lukewarm\"\n", "initial_setup"),
            ("[etcd]\nlease_ttl = \"5x\"\n", "etcd.lease_ttl"),
            ("[etcd]\nlease_ttl = 5\n", "etcd.lease_ttl"),
            ("[grpc]\nlisten = \"localhost\"\n", "grpc.listen"),
            ("[lb]\ncheck_fall = -1\n", "lb.check_fall"),
        ] {
            assert_eq!(invalid(extra).0, key, "{extra:?}");
        }
        assert!(invalid("[etcd]\nmargin = \"1x\"\n").1.contains("\"500ms\""));
    }

    use proptest::strategy::Strategy as _;
    use proptest::{prop_assert, prop_assert_eq};

    /// What every answer of `parse` for `t.toml` must satisfy: a config
    /// that holds `link`, or a typed error that names where it came from
    /// and says what is wrong.
    fn check_parse(
        text: &str,
    ) -> Result<Result<Config, ConfigError>, proptest::test_runner::TestCaseError> {
        let result = parse(Path::new("t.toml"), text, None);
        match &result {
            Ok(c) => prop_assert!(!c.link.is_empty() && text.contains(&c.link)),
            Err(ConfigError::NotToml { path, message }) => {
                prop_assert_eq!(path, Path::new("t.toml"));
                prop_assert!(!message.is_empty());
            }
            Err(ConfigError::MissingKey { origin, key }) => {
                prop_assert_eq!(origin, "config t.toml");
                prop_assert!(
                    ["link", "member_id", "role"].contains(&key.as_str()),
                    "{}",
                    key
                );
                prop_assert!(!text.contains(key.as_str()), "{} is there", key);
            }
            Err(ConfigError::UnknownKey {
                origin,
                key,
                expected,
            }) => {
                prop_assert_eq!(origin, "config t.toml");
                prop_assert!(!key.is_empty() && !expected.is_empty());
            }
            Err(ConfigError::Invalid {
                origin,
                key,
                message,
            }) => {
                prop_assert_eq!(origin, "config t.toml");
                prop_assert!(!message.is_empty(), "{}", key);
            }
            Err(ConfigError::Timing {
                origin,
                lease_ttl,
                sum,
                ..
            }) => {
                prop_assert_eq!(origin, "config t.toml");
                prop_assert!(lease_ttl <= sum, "{:?} > {:?}", lease_ttl, sum);
            }
            Err(e @ ConfigError::Unreadable { .. }) => prop_assert!(false, "{}", e),
        }
        Ok(result)
    }

    proptest::proptest! {
        #![proptest_config(crate::limits::proptest_config())]

        /// Config text is input: any bytes give a config or a typed error.
        #[test]
        fn arbitrary_config_text_never_panics_and_gets_a_typed_error(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1024)) {
            let _ = check_parse(&String::from_utf8_lossy(&bytes))?;
        }

        /// The example config (valid) with one key of a real section set to
        /// an arbitrary value: a config, or a typed error; an unknown key is
        /// `UnknownKey` naming it.
        #[test]
        fn arbitrary_values_of_real_keys_never_panic_and_get_a_config_or_a_typed_error(
            section in proptest::prop_oneof![
                proptest::strategy::Just("etcd"), proptest::strategy::Just("grpc"),
                proptest::strategy::Just("http"), proptest::strategy::Just("lb"),
                proptest::strategy::Just("probe"), proptest::strategy::Just("failover"),
                proptest::strategy::Just("admin"), proptest::strategy::Just("grpc.roles"),
            ],
            key in proptest::prop_oneof![
                "[a-z_]{1,20}",
                proptest::strategy::Just("lease_ttl".to_string()), proptest::strategy::Just("call_timeout".to_string()),
                proptest::strategy::Just("check_fall".to_string()), proptest::strategy::Just("operator".to_string()),
                proptest::strategy::Just("switch_timeout".to_string()), proptest::strategy::Just("max_admin_calls".to_string()),
            ],
            value in proptest::prop_oneof![
                "\"[ -~]{0,30}\"",
                proptest::prelude::any::<i64>().prop_map(|n| n.to_string()),
                (0u64..100_000).prop_map(|n| format!("\"{n}ms\"")),
                proptest::strategy::Just("true".to_string()),
                proptest::strategy::Just("[\"*\", \"a*b\"]".to_string()),
                proptest::strategy::Just("\"18446744073709551615s\"".to_string()),
            ],
        ) {
            let (base, _pki) = example_with_certs();
            let header = format!("\n[{section}]\n");
            prop_assert!(base.contains(&header));
            let text = base.replacen(&header, &format!("{header}{key} = {value}\n"), 1);
            if let Err(ConfigError::UnknownKey { key: named, .. }) = check_parse(&text)? {
                prop_assert_eq!(named, format!("{section}.{key}"));
            }
        }
    }
}
