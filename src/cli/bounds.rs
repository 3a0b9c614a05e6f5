//! `lockstep check-config`: validates a config and prints the bounds it
//! implies (DESIGN §3's timing rule and D).

use super::{to_json, Failure};
use crate::config::Config;
use std::path::Path;
use std::time::Duration;

/// Loads and validates the config at `path`; a bad one is exit code 2.
pub(crate) fn load_config(path: &Path) -> Result<Config, Failure> {
    crate::config::load(path).map_err(|e| Failure::new(2, e.to_string()))
}

/// What `check-config` prints: the bounds as text, or as JSON.
pub fn check_config(path: &Path, json: bool) -> Result<String, Failure> {
    let config = load_config(path)?;
    if json {
        to_json(&bounds_json(&config))
    } else {
        Ok(format_bounds(path, &config))
    }
}

/// "1.3s", "500ms": shorter than humantime's "1s 300ms".
fn fmt_d(d: Duration) -> String {
    format!("{d:?}")
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// `check-config`'s text: the bounds a valid config implies.
fn format_bounds(path: &Path, c: &Config) -> String {
    let d = c.lb_down_detection();
    let budget = c.lease_fresh_budget();
    let e = &c.etcd;
    format!(
        "config {} is valid\n\
         \x20 LB down-detection D = check_fall x (check_inter + min(1s, check_inter) + check_timeout) = {}\n\
         \x20 lease fresh for TTL - margin = {} after each acknowledged keep-alive is sent\n\
         \x20 the check endpoint stops answering D before that: {} after it\n\
         \x20 rule: lease_ttl {} > keepalive {} + D {} + margin {} = {}\n\
         \x20 a dead or cut-off member holds a switch up for at most the lease TTL: {}\n",
        path.display(),
        fmt_d(d),
        fmt_d(budget),
        fmt_d(budget.saturating_sub(d)),
        fmt_d(e.lease_ttl),
        fmt_d(e.keepalive_interval),
        fmt_d(d),
        fmt_d(e.margin),
        fmt_d(c.lease_ttl_lower_bound()),
        fmt_d(e.lease_ttl),
    )
}

fn bounds_json(c: &Config) -> serde_json::Value {
    let e = &c.etcd;
    serde_json::json!({
        "lb_down_detection_ms": ms(c.lb_down_detection()),
        "lease_ttl_ms": ms(e.lease_ttl),
        "keepalive_interval_ms": ms(e.keepalive_interval),
        "margin_ms": ms(e.margin),
        "lease_fresh_budget_ms": ms(c.lease_fresh_budget()),
        "check_answer_budget_ms": ms(c.lease_fresh_budget().saturating_sub(c.lb_down_detection())),
        "rule_left_ms": ms(e.lease_ttl),
        "rule_right_ms": ms(c.lease_ttl_lower_bound()),
        "max_switch_hold_by_dead_member_ms": ms(e.lease_ttl),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Config {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        let (text, pki) = crate::config::example_with_certs();
        std::fs::write(&path, text).expect("write");
        let c = crate::config::load(&path).expect("example is valid");
        drop(pki);
        c
    }

    #[test]
    fn bounds_show_the_rule_and_derived_values() {
        let c = example();
        let text = format_bounds(Path::new("c.toml"), &c);
        assert!(text.contains(
            "D = check_fall x (check_inter + min(1s, check_inter) + check_timeout) = 2.6s"
        ));
        assert!(text.contains("lease fresh for TTL - margin = 4s"));
        assert!(text.contains("rule: lease_ttl 5s > keepalive 1s + D 2.6s + margin 1s = 4.6s"));
        assert!(text.contains("at most the lease TTL: 5s"));
        let j = bounds_json(&c);
        assert_eq!(j["lb_down_detection_ms"], 2600);
        assert_eq!(j["lease_fresh_budget_ms"], 4000);
        assert_eq!(j["rule_right_ms"], 4600);
        assert_eq!(j["check_answer_budget_ms"], 1400);
    }
}
