//! The health-check settings HAProxy reports over its Runtime API, compared
//! with what the sidecar's `[lb]` and `[http]` config assume (D, DESIGN §3).
//! Pure.
//!
//! What Debian's HAProxy 2.6.12 exposes (measured; see
//! `deploy/haproxy/README.md`):
//! * `show servers state`, always: whether a server has a check configured
//!   and enabled (`srv_check_state` bits 0x02, 0x04), and where the check
//!   goes (`srv_check_addr`, `srv_check_port`; `-` and 0 mean the server's
//!   own address and port);
//! * `show stat`: `check_rise` and `check_fall`, but only for servers out
//!   of maintenance (empty while `disabled` or `state maint`, which is how
//!   lockstep keeps a blocked LB);
//! * nowhere: `inter`, `fastinter`, `downinter`, `timeout check`, `timeout
//!   connect`, `on-marked-down`. Those rest on HAProxy's config being
//!   generated from the sidecar's (`lockstep haproxy-config`).
//!
//! A difference that makes D larger than the config assumes (or unbounded:
//! no check, or checks that do not reach this sidecar) is *unsafe*: the
//! sidecar refuses to start, or to keep a server enabled. Others (a smaller
//! `fall`, another `rise`) are only reported.

use super::down_detection_bound;
use super::runtime::ServerState;
use crate::lb::LbError;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// `srv_check_state` bits (HAProxy 2.6 `CHK_ST_*`).
const CHECK_CONFIGURED: u32 = 0x02;
const CHECK_ENABLED: u32 = 0x04;

/// What the sidecar's config assumes of every server's health check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedChecks {
    /// `lb.check_fall`.
    pub fall: u32,
    /// `lb.check_rise`.
    pub rise: u32,
    /// `lb.check_inter` and `lb.check_timeout`: not reported by HAProxy,
    /// used to state D in messages.
    pub inter: Duration,
    pub timeout: Duration,
    /// The sidecar's check listener (`http.check_listen`, else
    /// `http.listen`): where checks must go.
    pub target: SocketAddr,
}

impl ExpectedChecks {
    fn d(&self, fall: u32) -> Duration {
        down_detection_bound(self.inter, fall, self.timeout)
    }
}

/// One row of `show stat` (CSV), the fields lockstep reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StatRow {
    pub(crate) proxy: String,
    pub(crate) server: String,
    /// `check_rise`/`check_fall`: `None` while HAProxy does not show them
    /// (the server is in maintenance).
    pub(crate) rise: Option<u32>,
    pub(crate) fall: Option<u32>,
}

/// Parses the CSV of `show stat`; columns are found by the header's names.
pub(crate) fn parse_stat(command: &str, text: &str) -> Result<Vec<StatRow>, LbError> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next().and_then(|h| h.strip_prefix("# ")) else {
        return Err(LbError::Rejected {
            command: command.to_string(),
            answer: text.trim().to_string(),
        });
    };
    let columns: Vec<&str> = header.split(',').collect();
    let col = |name: &str| {
        columns
            .iter()
            .position(|c| *c == name)
            .ok_or_else(|| LbError::Parse(format!("`{command}` has no {name} column")))
    };
    let (px, sv, rise, fall) = (
        col("pxname")?,
        col("svname")?,
        col("check_rise")?,
        col("check_fall")?,
    );
    let mut out = Vec::new();
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        let get = |i: usize| fields.get(i).copied().unwrap_or("");
        let number = |i: usize, name: &str| -> Result<Option<u32>, LbError> {
            match get(i) {
                "" => Ok(None),
                v => v.parse().map(Some).map_err(|_| {
                    LbError::Parse(format!("{name} {v:?} is not a number in {line:?}"))
                }),
            }
        };
        if matches!(get(sv), "FRONTEND" | "BACKEND") {
            continue;
        }
        out.push(StatRow {
            proxy: get(px).to_string(),
            server: get(sv).to_string(),
            rise: number(rise, "check_rise")?,
            fall: number(fall, "check_fall")?,
        });
    }
    Ok(out)
}

/// One setting HAProxy reports differently from what the config assumes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    /// `backend/server`.
    pub server: String,
    /// The HAProxy setting, e.g. `fall`.
    pub setting: &'static str,
    /// What HAProxy reports.
    pub haproxy: String,
    /// What the sidecar's config assumes, with the key, e.g.
    /// `2 (lb.check_fall)`.
    pub config: String,
    /// Whether it makes D larger than assumed (or unbounded).
    pub unsafe_: bool,
    /// What it does, and what to do.
    pub consequence: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "server {}: HAProxy reports {} {}, the config assumes {}: {}",
            self.server, self.setting, self.haproxy, self.config, self.consequence
        )
    }
}

/// The comparison of one read of HAProxy with the config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub differences: Vec<Difference>,
    /// Settings HAProxy did not show this time (e.g. `fall` of a server in
    /// maintenance), to say what is left unverified.
    pub unshown: Vec<String>,
}

impl Verdict {
    /// The unsafe differences, joined for an error; `None` if there are none.
    pub fn refusal(&self) -> Option<String> {
        let bad: Vec<String> = self
            .differences
            .iter()
            .filter(|d| d.unsafe_)
            .map(|d| d.to_string())
            .collect();
        (!bad.is_empty()).then(|| bad.join("; "))
    }

    pub fn benign(&self) -> impl Iterator<Item = &Difference> {
        self.differences.iter().filter(|d| !d.unsafe_)
    }
}

const FIX: &str = "make HAProxy's config and lockstep's agree (generate HAProxy's with `lockstep haproxy-config --config <lockstep.toml>`, deploy/generate)";

/// Compares the servers' reported check settings with `expected`.
/// `stat` may be empty (not read): then only `show servers state`'s fields
/// are compared. `is_local` tells whether an address belongs to this host
/// (used when the sidecar listens on an unspecified address).
pub(crate) fn compare(
    expected: &ExpectedChecks,
    servers: &[&ServerState],
    stat: &[StatRow],
    is_local: &dyn Fn(IpAddr) -> bool,
) -> Verdict {
    let mut v = Verdict::default();
    for s in servers {
        let name = format!("{}/{}", s.backend, s.name);
        let diff =
            |setting, haproxy: String, config: String, unsafe_, consequence: String| Difference {
                server: name.clone(),
                setting,
                haproxy,
                config,
                unsafe_,
                consequence,
            };
        match s.check_state {
            Some(state)
                if state & (CHECK_CONFIGURED | CHECK_ENABLED)
                    == CHECK_CONFIGURED | CHECK_ENABLED => {}
            Some(state) => {
                let what = if state & CHECK_CONFIGURED == 0 {
                    "no `check`"
                } else {
                    "its check disabled (`disable health`)"
                };
                v.differences.push(diff(
                    "check",
                    format!("{what} (srv_check_state {state:#x})"),
                    "a check on this sidecar's /check endpoint".into(),
                    true,
                    format!(
                        "nothing marks the server down when this sidecar dies or freezes, so D is unbounded; {FIX}"
                    ),
                ));
                continue;
            }
            None => v.unshown.push(format!("{name}: srv_check_state")),
        }
        match (s.check_target(), expected.target) {
            (Some((addr, port)), target) => {
                let port_ok = port == target.port();
                let addr_ok = match addr.parse::<IpAddr>() {
                    Ok(ip) if target.ip().is_unspecified() => is_local(ip),
                    Ok(ip) => ip == target.ip(),
                    Err(_) => false,
                };
                if !(port_ok && addr_ok) {
                    let listen = if target.ip().is_unspecified() {
                        format!(
                            "an address of this host, port {} (the check listener {target})",
                            target.port()
                        )
                    } else {
                        format!("{target} (the check listener)")
                    };
                    v.differences.push(diff(
                        "check target",
                        format!("{addr}:{port}"),
                        listen,
                        true,
                        format!(
                            "the checks do not reach this sidecar, so its answers (the dead-man's switch) do not govern this server and D is unbounded; point `check addr`/`port` at the sidecar's check listener (http.check_listen, else http.listen): {FIX}"
                        ),
                    ));
                }
            }
            (None, _) => v.unshown.push(format!("{name}: check address")),
        }
        let row = stat
            .iter()
            .find(|r| r.proxy == s.backend && r.server == s.name);
        match row.and_then(|r| r.fall) {
            Some(fall) if fall > expected.fall => v.differences.push(diff(
                "fall",
                fall.to_string(),
                format!("{} (lb.check_fall)", expected.fall),
                true,
                format!(
                    "D is {} ms, not the {} ms the lease timing assumes (at lb.check_inter {} ms, lb.check_timeout {} ms): a frozen sidecar's LB could route after its lease expired; {FIX}",
                    expected.d(fall).as_millis(),
                    expected.d(expected.fall).as_millis(),
                    expected.inter.as_millis(),
                    expected.timeout.as_millis(),
                ),
            )),
            Some(fall) if fall < expected.fall => v.differences.push(diff(
                "fall",
                fall.to_string(),
                format!("{} (lb.check_fall)", expected.fall),
                false,
                format!(
                    "D is {} ms, shorter than the {} ms assumed: safe, but the configs differ; {FIX}",
                    expected.d(fall).as_millis(),
                    expected.d(expected.fall).as_millis()
                ),
            )),
            Some(_) => {}
            None => v.unshown.push(format!("{name}: fall")),
        }
        match row.and_then(|r| r.rise) {
            Some(rise) if rise != expected.rise => v.differences.push(diff(
                "rise",
                rise.to_string(),
                format!("{} (lb.check_rise)", expected.rise),
                false,
                format!("does not change D; {FIX}"),
            )),
            Some(_) => {}
            None => v.unshown.push(format!("{name}: rise")),
        }
    }
    v
}

/// True if `ip` is an address of this host: it can be bound.
pub(crate) fn is_local_address(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::super::runtime::parse_servers_state;
    use super::super::runtime::tests::{state, HEADER, WARM_UP};
    use super::*;

    // Captured from Debian's HAProxy 2.6.12 (`show stat kme 4 -1`, columns
    // cut after check_fall): hot enabled and DOWN by its checks with
    // `fall 3 rise 2`, warm in maintenance.
    const STAT: &str = "# pxname,svname,status,check_status,check_rise,check_fall,check_health\nkme,hot,DOWN,L4CON,2,3,0\nkme,warm,MAINT,,,,\n";

    fn expected() -> ExpectedChecks {
        ExpectedChecks {
            fall: 2,
            rise: 1,
            inter: Duration::from_millis(500),
            timeout: Duration::from_millis(300),
            // The captured lines check 127.0.0.1:45241.
            target: "127.0.0.1:45241".parse().expect("addr"),
        }
    }

    fn servers(lines: &str) -> Vec<ServerState> {
        parse_servers_state("show servers state kme", &state(lines)).expect("parse")
    }

    fn verdict(expected: &ExpectedChecks, lines: &str, stat: &str) -> Verdict {
        let servers = servers(lines);
        let refs: Vec<&ServerState> = servers.iter().collect();
        let stat = if stat.is_empty() {
            vec![]
        } else {
            parse_stat("show stat", stat).expect("stat")
        };
        compare(expected, &refs, &stat, &|ip| ip.is_loopback())
    }

    #[test]
    fn parses_show_stat_and_its_empty_fields_in_maintenance() {
        let rows = parse_stat("show stat", STAT).expect("parse");
        assert_eq!(
            rows,
            vec![
                StatRow {
                    proxy: "kme".into(),
                    server: "hot".into(),
                    rise: Some(2),
                    fall: Some(3)
                },
                StatRow {
                    proxy: "kme".into(),
                    server: "warm".into(),
                    rise: None,
                    fall: None
                },
            ]
        );
        assert!(matches!(
            parse_stat("show stat nobe 4 -1", "Unknown command."),
            Err(LbError::Rejected { .. })
        ));
        assert!(matches!(
            parse_stat("show stat", "# pxname,svname\nkme,hot\n"),
            Err(LbError::Parse(_))
        ));
    }

    #[test]
    fn matching_settings_pass_and_maintenance_leaves_fall_unshown() {
        let stat = "# pxname,svname,check_rise,check_fall\nkme,hot,,\nkme,warm,1,2\n";
        let v = verdict(&expected(), WARM_UP, stat);
        assert_eq!(v.refusal(), None, "{v:?}");
        assert_eq!(v.benign().count(), 0, "{v:?}");
        assert_eq!(v.unshown, vec!["kme/hot: fall", "kme/hot: rise"]);
    }

    #[test]
    fn a_larger_fall_is_refused_with_both_values_and_d() {
        let v = verdict(
            &expected(),
            WARM_UP,
            "# pxname,svname,check_rise,check_fall\nkme,warm,1,5\n",
        );
        let refusal = v.refusal().expect("refused");
        for want in [
            "server kme/warm",
            "HAProxy reports fall 5",
            "the config assumes 2 (lb.check_fall)",
            "D is 6500 ms, not the 2600 ms",
            "lockstep haproxy-config",
        ] {
            assert!(refusal.contains(want), "missing {want:?} in {refusal}");
        }
        // A smaller fall, another rise: reported, not refused.
        let v = verdict(
            &expected(),
            WARM_UP,
            "# pxname,svname,check_rise,check_fall\nkme,warm,3,1\n",
        );
        assert_eq!(v.refusal(), None);
        let benign: Vec<&str> = v.benign().map(|d| d.setting).collect();
        assert_eq!(benign, vec!["fall", "rise"]);
    }

    #[test]
    fn checks_that_miss_the_sidecar_or_are_off_are_refused() {
        // The captured servers check port 45241; the sidecar listens on 7401.
        let elsewhere = ExpectedChecks {
            target: "127.0.0.1:7401".parse().expect("addr"),
            ..expected()
        };
        let refusal = verdict(&elsewhere, WARM_UP, "").refusal().expect("refused");
        assert!(
            refusal.contains("check target 127.0.0.1:45241"),
            "{refusal}"
        );
        assert!(
            refusal.contains("127.0.0.1:7401 (the check listener)"),
            "{refusal}"
        );
        // Listening on 0.0.0.0: any local address will do, others not.
        let any = ExpectedChecks {
            target: "0.0.0.0:45241".parse().expect("addr"),
            ..expected()
        };
        assert_eq!(verdict(&any, WARM_UP, "").refusal(), None);
        let remote = WARM_UP.replace("127.0.0.1 127.0.0.1 45241", "10.9.9.9 - 45241");
        let refusal = verdict(&any, &remote, "").refusal().expect("refused");
        assert!(refusal.contains("10.9.9.9:45241"), "{refusal}");
        // No check address or port: the server's own (the KME) is checked.
        let own = WARM_UP.replace("0 45241 127.0.0.1 127.0.0.1 45241", "0 0 - - 0");
        let refusal = verdict(&expected(), &own, "").refusal().expect("refused");
        assert!(
            refusal.contains("check target 127.0.0.1:46631"),
            "{refusal}"
        );
        // No `check` (state 0x08: paused only), or checks disabled (0x0a).
        let none = WARM_UP.replace("0 1 6 0 0 0 -", "0 1 8 0 0 0 -");
        let refusal = verdict(&expected(), &none, "").refusal().expect("refused");
        assert!(
            refusal.contains("server kme/warm: HAProxy reports check no `check`"),
            "{refusal}"
        );
        let off = WARM_UP.replace("0 1 6 0 0 0 -", "0 1 2 0 0 0 -");
        let refusal = verdict(&expected(), &off, "").refusal().expect("refused");
        assert!(refusal.contains("disable health"), "{refusal}");
    }

    #[test]
    fn the_header_names_the_check_columns() {
        assert!(HEADER.contains("srv_check_state") && HEADER.contains("srv_check_port"));
    }
}
