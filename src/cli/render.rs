//! Rendering for the on-call CLI: human text from the Admin replies, with
//! the enums' human names (`proto::names`: hot, warm, drain, serve). Pure
//! functions, so they are unit-tested without a link. JSON is not made
//! here: `--json` prints the generated proto types (serde derives).

use crate::proto::{self, names};

fn setup_name(v: i32) -> &'static str {
    names::setup::name(v).unwrap_or("-")
}

fn phase_name(v: i32) -> &'static str {
    names::phase::name(v).unwrap_or("-")
}

fn role_name(v: i32) -> &'static str {
    names::role::name(v).unwrap_or("-")
}

fn applied(a: &Option<proto::Applied>) -> String {
    match a {
        Some(a) => format!(
            "{}/{}/{}",
            a.epoch,
            phase_name(a.phase),
            setup_name(a.setup)
        ),
        None => "-".into(),
    }
}

/// Rows with aligned columns (no header), each line trimmed at its end.
fn align(rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            let w = cell.chars().count();
            match widths.get_mut(i) {
                Some(max) => *max = (*max).max(w),
                None => widths.push(w),
            }
        }
    }
    let mut out = String::new();
    for row in rows {
        let line = row
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join("  ");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A plain text table with aligned columns under an upper-case header.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut all = vec![header.iter().map(|h| h.to_uppercase()).collect::<Vec<_>>()];
    all.extend(rows.iter().cloned());
    align(&all)
}

/// `text` wrapped at word boundaries to `width` columns, every line after
/// the first indented by `indent` spaces.
pub(crate) fn wrap(text: &str, width: usize, indent: usize) -> String {
    let mut out = String::new();
    let mut line = 0;
    for word in text.split_whitespace() {
        let w = word.chars().count();
        if line > indent && line + 1 + w > width {
            out.push('\n');
            out.push_str(&" ".repeat(indent));
            line = indent;
        } else if !out.is_empty() {
            out.push(' ');
            line += 1;
        }
        out.push_str(word);
        line += w;
    }
    out
}

pub(crate) fn format_status(s: &proto::StatusReply) -> String {
    let mut out = String::new();
    out.push_str(&format!("link      {}\n", s.link));
    out.push_str(&format!(
        "leader    {}\n",
        if s.leader.is_empty() {
            "NONE (no leader elected: is etcd reachable from the sidecars?)".to_string()
        } else {
            format!("{} (token {})", s.leader, s.token)
        }
    ));
    match &s.route {
        Some(r) => out.push_str(&format!(
            "route     epoch {} {} {}{}  ({} by {}, {})\n",
            r.epoch,
            phase_name(r.phase),
            setup_name(r.setup),
            if s.settled { ", settled" } else { "" },
            r.reason,
            r.requested_by,
            r.at
        )),
        None => {
            out.push_str("route     none yet (the leader routes a new link to its initial setup)\n")
        }
    }
    if !s.settled && !s.state.is_empty() {
        out.push_str(&format!("state     {}\n", s.state));
    }
    if let Some(h) = handover_line(s) {
        out.push_str(&format!("handover  {h}\n"));
    }
    if s.paused {
        out.push_str(&format!("paused    YES: {}\n", s.paused_reason));
    }
    if s.insecure {
        out.push_str("security  INSECURE: gRPC is plaintext without authorization on some member (grpc.insecure = true)\n");
    }
    if !s.policy.is_empty() {
        out.push_str(&format!("policy    {}\n", s.policy));
    }
    if let Some(p) = s.pending.as_ref().filter(|p| !p.not_before.is_empty()) {
        out.push_str(&format!(
            "scheduled {} to {} at {} by {}: {} (request {}; `lockstep cancel` withdraws it)\n",
            if p.kind.is_empty() {
                "switch"
            } else {
                p.kind.as_str()
            },
            setup_name(p.to),
            p.not_before,
            who(&p.requested_by, &p.by_note),
            p.reason,
            p.id,
        ));
    } else if let Some(p) = &s.pending {
        out.push_str(&format!(
            "pending   {} to {} by {}: {} (request {}, {})\n",
            if p.kind.is_empty() {
                "switch"
            } else {
                p.kind.as_str()
            },
            setup_name(p.to),
            who(&p.requested_by, &p.by_note),
            p.reason,
            p.id,
            p.at
        ));
    }
    out.push('\n');
    let health: Vec<Vec<String>> = s
        .health
        .iter()
        .map(|h| {
            vec![
                setup_name(h.setup).to_string(),
                h.alice.clone(),
                h.bob.clone(),
                if h.healthy { "healthy" } else { "NOT HEALTHY" }.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(&["setup", "alice", "bob", "verdict"], &health));
    out.push('\n');
    let members: Vec<Vec<String>> = s
        .members
        .iter()
        .map(|m| {
            vec![
                m.id.clone(),
                role_name(m.role).to_string(),
                applied(&m.applied),
                m.lb_routes.clone(),
                if m.lease_age_ms > 0 {
                    format!("{} ms", m.lease_age_ms)
                } else {
                    "-".into()
                },
                if m.lease_fresh { "yes" } else { "NO" }.to_string(),
                m.grpc_address.clone(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "member",
            "role",
            "applied",
            "lb routes",
            "lease age",
            "fresh",
            "address",
        ],
        &members,
    ));
    for m in s.members.iter().filter(|m| !m.failsafe.is_empty()) {
        out.push_str(&format!("FAILSAFE  {}: {}\n", m.id, m.failsafe));
    }
    for m in s.members.iter().filter(|m| !m.behind.is_empty()) {
        out.push_str(&format!("BEHIND    {}: {}\n", m.id, m.behind));
    }
    out
}

/// Who asked: the authenticated identity, and the `--by` note if any.
fn who(requested_by: &str, by_note: &str) -> String {
    if by_note.is_empty() {
        requested_by.to_string()
    } else {
        format!("{requested_by} (--by {by_note})")
    }
}

pub(crate) fn format_history(h: &proto::HistoryReply) -> String {
    let ms = |v: u64| if v > 0 { v.to_string() } else { "-".into() };
    let rows: Vec<Vec<String>> = h
        .records
        .iter()
        .map(|r| {
            let what = match r.kind.as_str() {
                "pause" => "paused".to_string(),
                "resume" => "resumed".to_string(),
                "request-expired" => format!("-> {} (not done)", setup_name(r.to)),
                _ => format!("{} -> {}", setup_name(r.from), setup_name(r.to)),
            };
            vec![
                r.started_at.clone(),
                r.epoch.to_string(),
                r.kind.clone(),
                what,
                who(&r.requested_by, &r.by_note),
                r.reason.clone(),
                if r.grace_ms > 0 {
                    format!("{} (grace {})", r.hold_ms, r.grace_ms)
                } else {
                    "-".into()
                },
                ms(r.drain_ms),
                ms(r.total_ms),
                if r.fenced_members.is_empty() {
                    "-".into()
                } else {
                    r.fenced_members.join(",")
                },
                r.outcome.clone(),
                if r.token > 0 {
                    format!("{}/{}", r.leader, r.token)
                } else {
                    r.leader.clone()
                },
            ]
        })
        .collect();
    table(
        &[
            "started",
            "epoch",
            "kind",
            "what",
            "by",
            "reason",
            "hold ms",
            "drain ms",
            "total ms",
            "fenced",
            "outcome",
            "leader/token",
        ],
        &rows,
    )
}

/// The link in a few lines, for the confirmation before a switch: the
/// leader and route, every LB and what it routes to, each setup's health.
pub(crate) fn format_topology(s: &proto::StatusReply) -> String {
    let mut out = format!(
        "link {}: leader {}; {}\n",
        s.link,
        if s.leader.is_empty() {
            "NONE"
        } else {
            s.leader.as_str()
        },
        match &s.route {
            Some(r) => format!(
                "epoch {} {} {}{}",
                r.epoch,
                phase_name(r.phase),
                setup_name(r.setup),
                if s.settled { ", settled" } else { "" }
            ),
            None => "no route yet".into(),
        }
    );
    let rows: Vec<Vec<String>> = s
        .members
        .iter()
        .map(|m| {
            vec![
                format!("  {}", m.id),
                role_name(m.role).to_string(),
                format!("LB routes {}", m.lb_routes),
                if m.lease_fresh {
                    "lease fresh"
                } else {
                    "LEASE NOT FRESH"
                }
                .to_string(),
            ]
        })
        .collect();
    out.push_str(&align(&rows));
    // Not settled: what the link does, in words (switching, or which LB
    // disagrees with the route and what it reads back).
    if !s.settled && !s.state.is_empty() {
        out.push_str(&format!("  state: {}\n", s.state));
    }
    for h in &s.health {
        out.push_str(&format!(
            "  {}: alice {}, bob {} ({})\n",
            setup_name(h.setup),
            h.alice,
            h.bob,
            if h.healthy { "healthy" } else { "NOT HEALTHY" }
        ));
    }
    if s.paused {
        out.push_str(&format!("  PAUSED: {}\n", s.paused_reason));
    }
    out
}

/// At a hold: what the handover does now, in words.
fn handover_line(s: &proto::StatusReply) -> Option<String> {
    let r = s
        .route
        .as_ref()
        .filter(|r| r.phase == proto::Phase::Hold as i32)?;
    Some(format!(
        "{} blocked (no new keys); {} stays on {} for {} ms after every {} LB confirmed its block",
        role_name(r.handover_issuer),
        match proto::Role::try_from(r.handover_issuer) {
            Ok(proto::Role::Alice) => "bob",
            _ => "alice",
        },
        setup_name(r.handover_from),
        r.grace_ms,
        role_name(r.handover_issuer),
    ))
}

/// One progress line for `--wait`: the route and every member's state.
pub(crate) fn progress_line(s: &proto::StatusReply) -> String {
    if let Some(h) = handover_line(s) {
        return format!(
            "epoch {} hold: {h}",
            s.route.as_ref().map_or(0, |r| r.epoch)
        );
    }
    let route = match &s.route {
        Some(r) => format!(
            "epoch {} {} {}",
            r.epoch,
            phase_name(r.phase),
            setup_name(r.setup)
        ),
        None => "no route".into(),
    };
    let members = s
        .members
        .iter()
        .map(|m| {
            let state = match &m.applied {
                Some(a) if a.phase == proto::Phase::Drain as i32 => "blocked".to_string(),
                Some(a) => setup_name(a.setup).to_string(),
                None => "blocked".into(),
            };
            format!("{} {}", m.id, state)
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!("{route}: {members}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> proto::StatusReply {
        proto::StatusReply {
            link: "qkd-1".into(),
            leader: "alice-0".into(),
            token: 42,
            route: Some(proto::Route {
                epoch: 7,
                phase: proto::Phase::Serve as i32,
                setup: proto::Setup::Warm as i32,
                token: 42,
                reason: "patch".into(),
                requested_by: "ops".into(),
                at: "2026-11-25T07:00:00Z".into(),
                handover_issuer: 0,
                handover_from: 0,
                grace_ms: 0,
            }),
            members: vec![proto::MemberState {
                id: "bob-0".into(),
                role: proto::Role::Bob as i32,
                grpc_address: "10.0.0.2:7400".into(),
                applied: Some(proto::Applied {
                    epoch: 7,
                    phase: proto::Phase::Serve as i32,
                    setup: proto::Setup::Warm as i32,
                }),
                lb_routes: "warm".into(),
                lb: proto::LbRoute::Warm as i32,
                health: None,
                lease_age_ms: 120,
                lease_fresh: true,
                behind: String::new(),
                insecure: false,
                failsafe: String::new(),
            }],
            paused: true,
            paused_reason: "maintenance".into(),
            pending: None,
            health: vec![proto::SetupHealth {
                setup: proto::Setup::Hot as i32,
                alice: "down".into(),
                bob: "up".into(),
                healthy: false,
            }],
            settled: true,
            policy: "serving warm, healthy".into(),
            state: "every LB serves warm (epoch 7)".into(),
            insecure: false,
        }
    }

    #[test]
    fn status_shows_route_members_health_and_pause() {
        let text = format_status(&status());
        assert!(text.contains("alice-0 (token 42)"), "{text}");
        assert!(text.contains("epoch 7 serve warm, settled"), "{text}");
        assert!(text.contains("paused    YES: maintenance"), "{text}");
        assert!(text.contains("NOT HEALTHY"), "{text}");
        let member = text
            .lines()
            .find(|l| l.starts_with("bob-0"))
            .expect("member row");
        assert!(
            member.contains("7/serve/warm") && member.contains("120 ms"),
            "{member}"
        );
    }

    #[test]
    fn status_says_when_lbs_disagree_with_the_route() {
        let mut s = status();
        s.settled = false;
        s.state = "etcd holds no route, but LBs have applied one: bob-0 applied 7/serve warm, LB warm; the leader re-establishes the link".into();
        s.members[0].behind = "etcd holds no route, below epoch 7 applied on this link: blocked until the leader re-establishes it".into();
        let text = format_status(&s);
        assert!(text.contains("state     etcd holds no route"), "{text}");
        assert!(
            text.contains("BEHIND    bob-0: etcd holds no route"),
            "{text}"
        );
        assert!(!text.contains("settled"), "{text}");
    }

    #[test]
    fn a_hold_is_said_in_words() {
        let mut s = status();
        s.settled = false;
        if let Some(r) = s.route.as_mut() {
            r.phase = proto::Phase::Hold as i32;
            r.setup = proto::Setup::Warm as i32;
            r.handover_issuer = proto::Role::Alice as i32;
            r.handover_from = proto::Setup::Hot as i32;
            r.grace_ms = 500;
        }
        let text = format_status(&s);
        assert!(
            text.contains("handover  alice blocked (no new keys); bob stays on hot for 500 ms"),
            "{text}"
        );
        assert!(
            progress_line(&s).starts_with("epoch 7 hold: alice blocked"),
            "{}",
            progress_line(&s)
        );
    }

    /// Every field set, so a dropped one shows.
    fn full_status() -> proto::StatusReply {
        let mut s = status();
        s.members[0].health = Some(proto::Health {
            hot: "down".into(),
            warm: "up".into(),
            detail: "hot: connection refused".into(),
        });
        s.members[0].behind = "behind".into();
        s.members[0].insecure = true;
        s.pending = Some(proto::PendingRequest {
            id: "req-1".into(),
            to: proto::Setup::Hot as i32,
            force: true,
            reason: "back".into(),
            requested_by: "oncall".into(),
            at: "2026-11-25T07:01:00Z".into(),
            kind: "failover".into(),
            by_note: "jane".into(),
            grace_ms: 250,
            not_before: String::new(),
        });
        if let Some(r) = s.route.as_mut() {
            r.handover_issuer = proto::Role::Alice as i32;
            r.handover_from = proto::Setup::Hot as i32;
            r.grace_ms = 300;
        }
        s.insecure = true;
        s
    }

    #[test]
    fn json_is_the_proto_with_names_and_reads_back_every_field() {
        let s = full_status();
        let j = serde_json::to_value(&s).expect("json");
        assert_eq!(j["route"]["setup"], "warm");
        assert_eq!(j["route"]["phase"], "serve");
        assert_eq!(j["route"]["handover_issuer"], "alice");
        assert_eq!(j["members"][0]["role"], "bob");
        assert_eq!(j["members"][0]["applied"]["phase"], "serve");
        assert_eq!(
            j["members"][0]["health"]["detail"],
            "hot: connection refused"
        );
        assert_eq!(j["pending"]["by_note"], "jane");
        assert_eq!(j["pending"]["to"], "hot");
        let back: proto::StatusReply = serde_json::from_value(j).expect("reads back");
        assert_eq!(back, s);

        let h = proto::HistoryReply {
            records: vec![proto::HistoryRecord {
                epoch: 9,
                from: 0,
                to: proto::Setup::Warm as i32,
                kind: "pause".into(),
                reason: "r".into(),
                requested_by: "op".into(),
                leader: "alice-0".into(),
                token: 4,
                started_at: "2026-11-25T07:00:00.000Z".into(),
                drain_ms: 1,
                total_ms: 2,
                fenced_members: vec!["bob-0".into()],
                outcome: "done".into(),
                hold_ms: 3,
                grace_ms: 4,
                by_note: "jane".into(),
                request_id: "abc".into(),
            }],
        };
        let j = serde_json::to_value(&h).expect("json");
        assert_eq!(j["records"][0]["from"], serde_json::Value::Null);
        assert_eq!(j["records"][0]["to"], "warm");
        let back: proto::HistoryReply = serde_json::from_value(j).expect("reads back");
        assert_eq!(back, h);
        // An unknown enum number stays a number, and reads back.
        let odd = proto::Applied {
            epoch: 1,
            phase: 9,
            setup: 1,
        };
        let j = serde_json::to_value(odd).expect("json");
        assert_eq!(j["phase"], 9);
        assert_eq!(
            serde_json::from_value::<proto::Applied>(j).expect("back"),
            odd
        );
        // Proto names are accepted on input too; garbage is refused.
        let a: proto::Applied =
            serde_json::from_str(r#"{"phase":"PHASE_DRAIN","setup":"warm"}"#).expect("proto names");
        assert_eq!(a.phase, proto::Phase::Drain as i32);
        assert!(serde_json::from_str::<proto::Applied>(r#"{"setup":"lukewarm"}"#).is_err());
    }

    #[test]
    fn history_uses_human_names_and_shows_pauses_and_notes() {
        let mut r = proto::HistoryRecord {
            epoch: 3,
            from: proto::Setup::Hot as i32,
            to: proto::Setup::Warm as i32,
            kind: "switchover".into(),
            reason: "patch".into(),
            requested_by: "oncall".into(),
            by_note: "jane".into(),
            outcome: "complete".into(),
            ..Default::default()
        };
        let text = format_history(&proto::HistoryReply {
            records: vec![r.clone()],
        });
        assert!(text.contains("hot -> warm"), "{text}");
        assert!(text.contains("oncall (--by jane)"), "{text}");
        assert!(!text.contains("SETUP_"), "{text}");
        r.kind = "pause".into();
        r.from = 0;
        let text = format_history(&proto::HistoryReply { records: vec![r] });
        assert!(text.contains("paused"), "{text}");
    }

    #[test]
    fn topology_names_every_lb_and_the_health() {
        let t = format_topology(&status());
        assert!(
            t.contains("link qkd-1: leader alice-0; epoch 7 serve warm, settled"),
            "{t}"
        );
        assert!(
            t.contains("  bob-0  bob  LB routes warm  lease fresh"),
            "{t}"
        );
        assert!(t.contains("hot: alice down, bob up (NOT HEALTHY)"), "{t}");
        assert!(t.contains("PAUSED: maintenance"), "{t}");
        assert!(!t.contains("state:"), "settled: nothing to add\n{t}");
    }

    #[test]
    fn topology_says_which_lb_disagrees_with_the_route() {
        let mut s = status();
        s.settled = false;
        s.state = "LBs disagree with etcd's route (1/serve): bob-0 applied 7/serve warm, LB warm; the leader re-establishes the link".into();
        let t = format_topology(&s);
        assert!(
            t.contains("  state: LBs disagree with etcd's route (1/serve): bob-0 applied 7/serve warm, LB warm;"),
            "{t}"
        );
    }

    #[test]
    fn progress_names_blocked_members() {
        let mut s = status();
        s.members[0].applied = Some(proto::Applied {
            epoch: 8,
            phase: proto::Phase::Drain as i32,
            setup: proto::Setup::Hot as i32,
        });
        assert!(progress_line(&s).contains("bob-0 blocked"));
    }

    #[test]
    fn wrap_breaks_at_words_and_indents() {
        assert_eq!(wrap("aa bb cc dd", 5, 2), "aa bb\n  cc\n  dd");
        assert_eq!(wrap("short", 80, 6), "short");
        assert_eq!(wrap("averyverylongword x", 5, 1), "averyverylongword\n x");
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(&["a", "bb"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
    }
}
