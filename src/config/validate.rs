//! Validation: what serde cannot check (formats, ranges, names) and DESIGN
//! §3's timing rule, `lease_ttl > keepalive_interval + D + margin`.

use super::{Config, ConfigError};
use std::time::Duration;

impl Config {
    /// Checks what serde cannot: formats, ranges and the timing rule.
    /// Errors name the key; their origin reads "config" (see [`load`]).
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| {
            Err(ConfigError::Invalid {
                origin: "config".into(),
                key: key.into(),
                message,
            })
        };
        let positive = |key: &str, d: Duration| {
            if d.is_zero() {
                bad(key, "must be more than 0, e.g. \"500ms\"".into())
            } else {
                Ok(())
            }
        };
        let at_least_one = |key: &str, n: u32| {
            if n == 0 {
                bad(key, "must be at least 1".into())
            } else {
                Ok(())
            }
        };

        if self.link.is_empty()
            || !self
                .link
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        {
            return bad(
                "link",
                format!(
                    "{:?} must be non-empty and use only a-z, 0-9, '-' and '_' (it is part of every etcd key)",
                    self.link
                ),
            );
        }
        if self.member_id.is_empty()
            || !self
                .member_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return bad(
                "member_id",
                format!(
                    "{:?} must be non-empty and use only A-Z, a-z, 0-9, '.', '_' and '-'",
                    self.member_id
                ),
            );
        }

        let e = &self.etcd;
        if e.endpoints.is_empty() {
            return bad(
                "etcd.endpoints",
                "is empty; list at least one etcd client URL, e.g. [\"http://127.0.0.1:2379\"]"
                    .into(),
            );
        }
        for ep in &e.endpoints {
            if let Err(why) = check_url(ep) {
                return bad("etcd.endpoints", format!("{ep:?} {why}"));
            }
        }
        if let Err((key, why)) = super::security::check_etcd(e) {
            return bad(key, why);
        }
        if e.lease_ttl.subsec_nanos() != 0 || e.lease_ttl < Duration::from_secs(2) {
            return bad(
                "etcd.lease_ttl",
                format!(
                    "{:?} must be whole seconds ≥ 2s (etcd leases count in seconds)",
                    e.lease_ttl
                ),
            );
        }
        positive("etcd.keepalive_interval", e.keepalive_interval)?;
        if e.keepalive_interval >= e.lease_ttl / 2 {
            return bad(
                "etcd.keepalive_interval",
                format!(
                    "{:?} must be under half of etcd.lease_ttl ({:?}) so a lost keep-alive can be retried before the lease expires",
                    e.keepalive_interval,
                    e.lease_ttl
                ),
            );
        }
        positive("etcd.margin", e.margin)?;
        positive("etcd.dial_timeout", e.dial_timeout)?;
        positive("etcd.request_timeout", e.request_timeout)?;

        if self.grpc.listen == self.http.listen {
            return bad(
                "http.listen",
                format!(
                    "{} is also grpc.listen; give them different ports",
                    self.http.listen
                ),
            );
        }
        if let Some(check) = self.http.check_listen {
            if check == self.http.listen || check == self.grpc.listen {
                return bad(
                    "http.check_listen",
                    format!("{check} is also http.listen or grpc.listen; give the checks a port of their own, or leave check_listen out to answer them on http.listen"),
                );
            }
        }
        if self.grpc.advertise.is_empty() {
            if self.grpc.listen.ip().is_unspecified() {
                return bad(
                    "grpc.advertise",
                    format!(
                        "is empty while grpc.listen is {}, which peers cannot dial; set it to this member's reachable host:port",
                        self.grpc.listen
                    ),
                );
            }
        } else if self.grpc.advertise.contains("://")
            || check_url(&format!("http://{}", self.grpc.advertise)).is_err()
        {
            return bad(
                "grpc.advertise",
                format!(
                    "{:?} must be host:port without a scheme, e.g. \"10.0.0.5:7400\"",
                    self.grpc.advertise
                ),
            );
        }

        if let Err((key, why)) = super::security::check_grpc(self) {
            return bad(key, why);
        }
        positive("http.header_timeout", self.http.header_timeout)?;
        if self.http.max_connections == 0 {
            return bad("http.max_connections", "must be at least 1".into());
        }

        let st = &self.status;
        if let Some(listen) = st.listen {
            if listen == self.grpc.listen
                || listen == self.http.listen
                || Some(listen) == self.http.check_listen
            {
                return bad(
                    "status.listen",
                    format!("{listen} is also grpc.listen or http.listen; give the status page a port of its own"),
                );
            }
        }
        if st.max_connections == 0 {
            return bad("status.max_connections", "must be at least 1".into());
        }
        positive("status.header_timeout", st.header_timeout)?;
        positive("status.stream_max_age", st.stream_max_age)?;

        let n = &self.notify;
        if n.webhook.len() + n.command.len() > crate::limits::MAX_NOTIFY_RECEIVERS {
            return bad(
                "notify",
                format!(
                    "names {} webhooks and commands; at most {} are allowed",
                    n.webhook.len() + n.command.len(),
                    crate::limits::MAX_NOTIFY_RECEIVERS
                ),
            );
        }
        for w in &n.webhook {
            if let Err(why) = check_url(&w.url) {
                return bad("notify.webhook.url", format!("{:?} {why}", w.url));
            }
            positive("notify.webhook.timeout", w.timeout)?;
        }
        for c in &n.command {
            if c.argv.first().is_none_or(|p| p.trim().is_empty()) {
                return bad(
                    "notify.command.argv",
                    "is empty; give the program and its arguments, e.g. [\"/usr/local/bin/page-oncall\"]".into(),
                );
            }
            positive("notify.command.timeout", c.timeout)?;
        }
        if n.retries > 10 {
            return bad("notify.retries", format!("{} is more than 10", n.retries));
        }
        positive("notify.backoff", n.backoff)?;
        if n.queue == 0 || n.queue > 10_000 {
            return bad("notify.queue", "must be between 1 and 10000".into());
        }
        if let Err(e) = crate::notify::check_tls(n) {
            return bad("notify.webhook.ca", e);
        }

        let lb = &self.lb;
        if lb.kind != "haproxy" {
            return bad(
                "lb.kind",
                format!("{:?} is not supported; use \"haproxy\"", lb.kind),
            );
        }
        for (key, name) in [
            ("lb.backend", &lb.backend),
            ("lb.server_hot", &lb.server_hot),
            ("lb.server_warm", &lb.server_warm),
        ] {
            if name.is_empty() {
                return bad(key, "is empty; name it as in the HAProxy config".into());
            }
        }
        if lb.server_hot == lb.server_warm {
            return bad(
                "lb.server_warm",
                format!(
                    "{:?} is also lb.server_hot; each setup needs its own server",
                    lb.server_warm
                ),
            );
        }
        positive("lb.check_inter", lb.check_inter)?;
        at_least_one("lb.check_fall", lb.check_fall)?;
        at_least_one("lb.check_rise", lb.check_rise)?;
        positive("lb.check_timeout", lb.check_timeout)?;
        positive("lb.command_timeout", lb.command_timeout)?;
        positive("lb.drift_interval", lb.drift_interval)?;

        let p = &self.probe;
        for (key, url) in [("probe.hot", &p.hot), ("probe.warm", &p.warm)] {
            let Some(url) = url else { continue };
            if url.starts_with("https://") && p.ca.is_none() {
                return bad(
                    "probe.ca",
                    format!("is unset but {key} is {url:?}; set it to the PEM CA bundle that signed the KME's certificate, or use an http:// URL"),
                );
            }
            if let Err(why) = check_url(url) {
                return bad(key, format!("{url:?} {why}"));
            }
            if p.sae_id.is_empty() {
                return bad(
                    "probe.sae_id",
                    format!("is empty but {key} is set; set the SAE id the status path names"),
                );
            }
        }
        positive("probe.interval", p.interval)?;
        positive("probe.timeout", p.timeout)?;
        at_least_one("probe.rise", p.rise)?;
        at_least_one("probe.fall", p.fall)?;
        // Reads and parses the PEM files, so bad ones stop the start-up.
        if let Err(e) = crate::probe::tls_config(p) {
            return bad(&format!("probe.{}", e.key), e.message);
        }

        positive("admin.switch_timeout", self.admin.switch_timeout)?;
        if self.admin.history_keep == 0 {
            return bad(
                "admin.history_keep",
                "must be at least 1 (the history is how a new leader learns the newest epoch)"
                    .into(),
            );
        }
        if self.grpc.call_timeout <= self.admin.switch_timeout {
            return bad(
                "grpc.call_timeout",
                format!(
                    "{:?} must exceed admin.switch_timeout ({:?}): a switch with --wait is one call",
                    self.grpc.call_timeout, self.admin.switch_timeout
                ),
            );
        }

        if let Err(why) = self.failover.failback() {
            return bad("failover.failback", why);
        }
        if let Err(why) = self.handover.protocol() {
            return bad("handover.issuer", why);
        }
        if self.handover.grace > self.admin.switch_timeout {
            return bad(
                "handover.grace",
                format!(
                    "{:?} is longer than admin.switch_timeout ({:?}): no planned switch could complete in time",
                    self.handover.grace, self.admin.switch_timeout
                ),
            );
        }
        if self.failsafe.enabled {
            let f = &self.failsafe;
            let d = self.lb_down_detection();
            // Asked every quarter of its length, a grant must still cover
            // D when the next one arrives.
            if f.grant_ttl * 3 / 4 <= d + Duration::from_millis(100) {
                return bad(
                    "failsafe.grant_ttl",
                    format!(
                        "{:?} is too short: three quarters of it must exceed the LB's down-detection bound ({d:?}) plus 100ms; try {:?}",
                        f.grant_ttl,
                        (d + Duration::from_millis(100)) * 2
                    ),
                );
            }
            // A member that reaches etcd must never be low enough on lease
            // to grant: its lease stays fresh for more than a grant and D
            // after every keep-alive interval.
            let need = f.grant_ttl + d + self.etcd.keepalive_interval + self.etcd.margin;
            if self.etcd.lease_ttl <= need {
                return bad(
                    "failsafe.grant_ttl",
                    format!(
                        "{:?} does not fit: failsafe needs etcd.lease_ttl ({:?}) above grant_ttl + D ({d:?}) + keepalive_interval + margin = {need:?}; raise etcd.lease_ttl or shorten the grant",
                        f.grant_ttl, self.etcd.lease_ttl
                    ),
                );
            }
            positive("failsafe.max", f.max)?;
        }
        if self.failover.max_auto == 0 {
            return bad(
                "failover.max_auto",
                "must be at least 1 (set failover.enabled = false to turn automatic failover off)"
                    .into(),
            );
        }
        positive("failover.window", self.failover.window)?;

        let d = self.lb_down_detection();
        let sum = self.lease_ttl_lower_bound();
        if e.lease_ttl <= sum {
            return Err(ConfigError::Timing {
                origin: "config".into(),
                lease_ttl: e.lease_ttl,
                keepalive_interval: e.keepalive_interval,
                d,
                margin: e.margin,
                sum,
            });
        }
        Ok(())
    }
}

/// `Ok` for an `http://` or `https://` URL with a host; else why not.
fn check_url(url: &str) -> Result<(), &'static str> {
    let uri: hyper::Uri = url.parse().map_err(|_| "is not a URL")?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("must start with http:// or https://"),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("has no host");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{cfg, invalid, ms, parse_text};
    use super::*;
    use lockstep_core::Setup;

    #[test]
    fn the_status_page_is_off_by_default_and_needs_a_port_of_its_own() {
        assert!(cfg("").expect("valid").status.listen.is_none());
        let c = cfg("[status]\nlisten = \"127.0.0.1:7402\"\n").expect("valid");
        assert_eq!(
            c.status.listen,
            Some("127.0.0.1:7402".parse().expect("addr"))
        );
        let (key, msg) = invalid("[status]\nlisten = \"127.0.0.1:7401\"\n");
        assert_eq!(key, "status.listen");
        assert!(msg.contains("a port of its own"), "{msg}");
        let (key, _) = invalid("[status]\nmax_connections = 0\n");
        assert_eq!(key, "status.max_connections");
    }

    #[test]
    fn notify_receivers_are_checked() {
        let c = cfg("[[notify.webhook]]\nurl = \"http://127.0.0.1:9/h\"\n\n[[notify.command]]\nargv = [\"/bin/true\"]\n")
            .expect("valid");
        assert_eq!(c.notify.webhook[0].timeout, Duration::from_secs(5));
        assert_eq!(c.notify.command[0].argv, ["/bin/true"]);
        let (key, msg) = invalid("[[notify.webhook]]\nurl = \"ftp://x\"\n");
        assert_eq!(key, "notify.webhook.url");
        assert!(msg.contains("http:// or https://"), "{msg}");
        let (key, _) = invalid("[[notify.command]]\nargv = []\n");
        assert_eq!(key, "notify.command.argv");
        let (key, msg) = invalid(
            "[[notify.webhook]]\nurl = \"https://hooks.example\"\nca = \"/nonexistent/ca.crt\"\n",
        );
        assert_eq!(key, "notify.webhook.ca");
        assert!(msg.contains("/nonexistent/ca.crt"), "{msg}");
        let (key, _) = invalid("[notify]\nqueue = 0\n");
        assert_eq!(key, "notify.queue");
    }

    #[test]
    fn names_are_checked() {
        for bad in ["\"Qkd\"", "\"qkd/1\"", "\"\""] {
            let text = format!("link = {bad}\nmember_id = \"a\"\nrole = \"alice\"\n");
            match parse_text(&text) {
                Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "link"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        let text = "link = \"x\"\nmember_id = \"alice 0\"\nrole = \"alice\"\n";
        match parse_text(text) {
            Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "member_id"),
            other => panic!("{other:?}"),
        }
        assert!(parse_text(
            "link = \"qkd_1-a\"\nmember_id = \"Alice.0_x-1\"\nrole = \"bob\"\n[grpc]\ninsecure = true\n"
        )
        .is_ok());
    }

    #[test]
    fn etcd_endpoints() {
        assert_eq!(invalid("[etcd]\nendpoints = []\n").0, "etcd.endpoints");
        assert!(invalid("[etcd]\nendpoints = [\"127.0.0.1:2379\"]\n")
            .1
            .contains("http://"));
        assert_eq!(
            invalid("[etcd]\nendpoints = [\"https://etcd:2379\"]\n").0,
            "etcd.ca"
        );
        assert!(invalid("[etcd]\nendpoints = [\"http://\"]\n")
            .1
            .contains("URL"));
    }

    #[test]
    fn lease_ttl_is_whole_seconds_of_at_least_two() {
        for ttl in ["1500ms", "1s", "5500ms"] {
            let (key, text) = invalid(&format!("[etcd]\nlease_ttl = \"{ttl}\"\n"));
            assert_eq!(key, "etcd.lease_ttl");
            assert!(text.contains("whole seconds ≥ 2s"), "{text}");
        }
    }

    #[test]
    fn keepalive_and_margin() {
        let (key, text) = invalid("[etcd]\nkeepalive_interval = \"2500ms\"\n");
        assert_eq!(key, "etcd.keepalive_interval");
        assert!(text.contains("half"), "{text}");
        assert_eq!(
            invalid("[etcd]\nkeepalive_interval = \"0s\"\n").0,
            "etcd.keepalive_interval"
        );
        assert_eq!(invalid("[etcd]\nmargin = \"0s\"\n").0, "etcd.margin");
        assert_eq!(
            invalid("[etcd]\ndial_timeout = \"0s\"\n").0,
            "etcd.dial_timeout"
        );
    }

    #[test]
    fn timing_rule_boundary() {
        // keep-alive 1s + D 2.6s + margin 1.4s = 5s: equal is not enough.
        let at = "[etcd]\nlease_ttl = \"5s\"\nkeepalive_interval = \"1s\"\nmargin = \"1400ms\"\n";
        match cfg(at) {
            Err(ConfigError::Timing {
                lease_ttl, d, sum, ..
            }) => {
                assert_eq!(lease_ttl, Duration::from_secs(5));
                assert_eq!(d, ms(2600));
                assert_eq!(sum, Duration::from_secs(5));
            }
            other => panic!("{other:?}"),
        }
        let below =
            "[etcd]\nlease_ttl = \"5s\"\nkeepalive_interval = \"1s\"\nmargin = \"1399ms\"\n";
        assert!(cfg(below).is_ok());
    }

    #[test]
    fn the_check_listener_needs_a_port_of_its_own() {
        let c = cfg("[http]\ncheck_listen = \"127.0.0.1:7403\"\n").expect("valid");
        assert_eq!(c.http.check_target().to_string(), "127.0.0.1:7403");
        assert_eq!(
            cfg("").expect("valid").http.check_target(),
            c.http.listen,
            "without check_listen the checks go to http.listen"
        );
        for clash in ["127.0.0.1:7401", "127.0.0.1:7400"] {
            let e =
                cfg(&format!("[http]\ncheck_listen = \"{clash}\"\n")).expect_err("a shared port");
            assert!(e.to_string().contains("http.check_listen"), "{e}");
        }
    }

    #[test]
    fn timing_error_names_all_four_numbers_and_what_to_change() {
        let e = cfg("[etcd]\nlease_ttl = \"3s\"\n").expect_err("3s < 4.6s");
        let text = e.to_string();
        for part in [
            "config t.toml",
            "etcd.lease_ttl (3s)",
            "etcd.keepalive_interval (1s)",
            "D (2.6s",
            "etcd.margin (1s)",
            "= 4.6s",
            "raise etcd.lease_ttl",
        ] {
            assert!(text.contains(part), "{part:?} missing in {text}");
        }
        // D grows with the LB's check settings.
        let e = cfg("[lb]\ncheck_inter = \"1s\"\ncheck_fall = 3\n").expect_err("D = 6.9s");
        assert!(matches!(e, ConfigError::Timing { .. }), "{e:?}");
    }

    #[test]
    fn grpc_and_http_addresses() {
        assert_eq!(
            invalid("[grpc]\nlisten = \"0.0.0.0:7400\"\n").0,
            "grpc.advertise"
        );
        assert_eq!(
            invalid("[grpc]\nadvertise = \"http://10.0.0.5:7400\"\n").0,
            "grpc.advertise"
        );
        assert_eq!(
            invalid("[http]\nlisten = \"127.0.0.1:7400\"\n").0,
            "http.listen"
        );
    }

    #[test]
    fn lb_settings() {
        assert_eq!(invalid("[lb]\nkind = \"nginx\"\n").0, "lb.kind");
        assert_eq!(invalid("[lb]\nserver_warm = \"hot\"\n").0, "lb.server_warm");
        assert_eq!(invalid("[lb]\nbackend = \"\"\n").0, "lb.backend");
        assert_eq!(invalid("[lb]\ncheck_fall = 0\n").0, "lb.check_fall");
        assert_eq!(invalid("[lb]\ncheck_inter = \"0s\"\n").0, "lb.check_inter");
        assert_eq!(
            invalid("[lb]\ndrift_interval = \"0s\"\n").0,
            "lb.drift_interval"
        );
    }

    #[test]
    fn probe_settings() {
        assert_eq!(
            invalid("[probe]\nhot = \"kme:8443\"\nsae_id = \"S\"\n").0,
            "probe.hot"
        );
        assert_eq!(
            invalid("[probe]\nwarm = \"https://kme:8443\"\nsae_id = \"S\"\n").0,
            "probe.ca"
        );
        let (key, message) = invalid(
            "[probe]\nhot = \"https://kme:8443\"\nsae_id = \"S\"\nca = \"/nonexistent/ca.pem\"\n",
        );
        assert_eq!(key, "probe.ca");
        assert!(message.contains("/nonexistent/ca.pem"), "{message}");
        assert_eq!(
            invalid("[probe]\nclient_key = \"/k.pem\"\n").0,
            "probe.client_cert"
        );
        assert_eq!(
            invalid("[probe]\nhot = \"http://kme:8443\"\n").0,
            "probe.sae_id"
        );
        assert_eq!(invalid("[probe]\nfall = 0\n").0, "probe.fall");
        assert_eq!(invalid("[probe]\ninterval = \"0s\"\n").0, "probe.interval");
    }

    #[test]
    fn admin_and_failover() {
        assert_eq!(
            invalid("[admin]\nswitch_timeout = \"0s\"\n").0,
            "admin.switch_timeout"
        );
        assert_eq!(
            invalid("[failover]\nfailback = \"soon\"\n").0,
            "failover.failback"
        );
        assert_eq!(
            invalid("[failover]\nfailback = \"after 5x\"\n").0,
            "failover.failback"
        );
        assert_eq!(invalid("[failover]\nmax_auto = 0\n").0, "failover.max_auto");
        let c = cfg("[failover]\nfailback = \"after 5m\"\n").expect("valid");
        assert!(c.failover.policy(Setup::Hot).is_ok());
    }
}
