//! Rendering for the on-call CLI: human tables and JSON, from the Admin
//! replies. Pure functions, so they are unit-tested without a link.

use crate::proto;
use serde::Serialize;

fn setup_name(v: i32) -> &'static str {
    match proto::Setup::try_from(v) {
        Ok(proto::Setup::Hot) => "hot",
        Ok(proto::Setup::Warm) => "warm",
        _ => "-",
    }
}

fn phase_name(v: i32) -> &'static str {
    match proto::Phase::try_from(v) {
        Ok(proto::Phase::Hold) => "hold",
        Ok(proto::Phase::Drain) => "drain",
        Ok(proto::Phase::Serve) => "serve",
        _ => "-",
    }
}

fn role_name(v: i32) -> &'static str {
    match proto::Role::try_from(v) {
        Ok(proto::Role::Alice) => "alice",
        Ok(proto::Role::Bob) => "bob",
        _ => "-",
    }
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

/// A plain text table with aligned columns.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(header.iter().map(|h| h.to_uppercase()).collect());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.clone()));
        out.push('\n');
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
    if let Some(p) = &s.pending {
        out.push_str(&format!(
            "pending   switch to {} by {}: {}\n",
            setup_name(p.to),
            p.requested_by,
            p.reason
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
    for m in s.members.iter().filter(|m| !m.behind.is_empty()) {
        out.push_str(&format!("BEHIND    {}: {}\n", m.id, m.behind));
    }
    out
}

pub(crate) fn format_history(h: &proto::HistoryReply) -> String {
    let rows: Vec<Vec<String>> = h
        .records
        .iter()
        .map(|r| {
            vec![
                r.epoch.to_string(),
                format!("{}->{}", setup_name(r.from), setup_name(r.to)),
                r.kind.clone(),
                r.reason.clone(),
                r.requested_by.clone(),
                format!("{}/{}", r.leader, r.token),
                r.started_at.clone(),
                if r.grace_ms > 0 {
                    format!("{} (grace {})", r.hold_ms, r.grace_ms)
                } else {
                    "-".into()
                },
                r.drain_ms.to_string(),
                if r.total_ms > 0 {
                    r.total_ms.to_string()
                } else {
                    "-".into()
                },
                if r.fenced_members.is_empty() {
                    "-".into()
                } else {
                    r.fenced_members.join(",")
                },
                r.outcome.clone(),
            ]
        })
        .collect();
    table(
        &[
            "epoch",
            "switch",
            "kind",
            "reason",
            "by",
            "leader/token",
            "started",
            "hold ms",
            "drain ms",
            "total ms",
            "fenced",
            "outcome",
        ],
        &rows,
    )
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

// ---- JSON: the replies with enums as lowercase names ----

#[derive(Serialize)]
pub(crate) struct AppliedJson {
    pub(crate) epoch: u64,
    pub(crate) phase: &'static str,
    pub(crate) setup: &'static str,
}

fn applied_json(a: &Option<proto::Applied>) -> Option<AppliedJson> {
    a.as_ref().map(|a| AppliedJson {
        epoch: a.epoch,
        phase: phase_name(a.phase),
        setup: setup_name(a.setup),
    })
}

#[derive(Serialize)]
pub(crate) struct MemberJson {
    pub(crate) id: String,
    pub(crate) role: &'static str,
    pub(crate) grpc_address: String,
    pub(crate) applied: Option<AppliedJson>,
    pub(crate) lb_routes: String,
    pub(crate) health_hot: String,
    pub(crate) health_warm: String,
    pub(crate) lease_age_ms: u64,
    pub(crate) lease_fresh: bool,
    pub(crate) behind: String,
}

#[derive(Serialize)]
pub(crate) struct RouteJson {
    pub(crate) epoch: u64,
    pub(crate) phase: &'static str,
    pub(crate) setup: &'static str,
    pub(crate) token: i64,
    pub(crate) reason: String,
    pub(crate) requested_by: String,
    pub(crate) at: String,
}

#[derive(Serialize)]
pub(crate) struct HealthJson {
    pub(crate) setup: &'static str,
    pub(crate) alice: String,
    pub(crate) bob: String,
    pub(crate) healthy: bool,
}

#[derive(Serialize)]
pub(crate) struct StatusJson {
    pub(crate) link: String,
    pub(crate) leader: String,
    pub(crate) token: i64,
    pub(crate) route: Option<RouteJson>,
    pub(crate) settled: bool,
    pub(crate) state: String,
    pub(crate) paused: bool,
    pub(crate) paused_reason: String,
    pub(crate) policy: String,
    pub(crate) insecure: bool,
    pub(crate) pending_to: Option<&'static str>,
    pub(crate) health: Vec<HealthJson>,
    pub(crate) members: Vec<MemberJson>,
}

pub(crate) fn status_json(s: &proto::StatusReply) -> StatusJson {
    StatusJson {
        link: s.link.clone(),
        leader: s.leader.clone(),
        token: s.token,
        route: s.route.as_ref().map(|r| RouteJson {
            epoch: r.epoch,
            phase: phase_name(r.phase),
            setup: setup_name(r.setup),
            token: r.token,
            reason: r.reason.clone(),
            requested_by: r.requested_by.clone(),
            at: r.at.clone(),
        }),
        settled: s.settled,
        state: s.state.clone(),
        paused: s.paused,
        paused_reason: s.paused_reason.clone(),
        policy: s.policy.clone(),
        insecure: s.insecure,
        pending_to: s.pending.as_ref().map(|p| setup_name(p.to)),
        health: s
            .health
            .iter()
            .map(|h| HealthJson {
                setup: setup_name(h.setup),
                alice: h.alice.clone(),
                bob: h.bob.clone(),
                healthy: h.healthy,
            })
            .collect(),
        members: s
            .members
            .iter()
            .map(|m| MemberJson {
                id: m.id.clone(),
                role: role_name(m.role),
                grpc_address: m.grpc_address.clone(),
                applied: applied_json(&m.applied),
                lb_routes: m.lb_routes.clone(),
                health_hot: m.health.as_ref().map_or(String::new(), |h| h.hot.clone()),
                health_warm: m.health.as_ref().map_or(String::new(), |h| h.warm.clone()),
                lease_age_ms: m.lease_age_ms,
                lease_fresh: m.lease_fresh,
                behind: m.behind.clone(),
            })
            .collect(),
    }
}

#[derive(Serialize)]
pub(crate) struct HistoryJson {
    pub(crate) epoch: u64,
    pub(crate) from: &'static str,
    pub(crate) to: &'static str,
    pub(crate) kind: String,
    pub(crate) reason: String,
    pub(crate) requested_by: String,
    pub(crate) leader: String,
    pub(crate) token: i64,
    pub(crate) started_at: String,
    pub(crate) drain_ms: u64,
    pub(crate) total_ms: u64,
    pub(crate) fenced_members: Vec<String>,
    pub(crate) outcome: String,
    pub(crate) hold_ms: u64,
    pub(crate) grace_ms: u64,
}

pub(crate) fn history_json(h: &proto::HistoryReply) -> Vec<HistoryJson> {
    h.records
        .iter()
        .map(|r| HistoryJson {
            epoch: r.epoch,
            from: setup_name(r.from),
            to: setup_name(r.to),
            kind: r.kind.clone(),
            reason: r.reason.clone(),
            requested_by: r.requested_by.clone(),
            leader: r.leader.clone(),
            token: r.token,
            started_at: r.started_at.clone(),
            drain_ms: r.drain_ms,
            total_ms: r.total_ms,
            fenced_members: r.fenced_members.clone(),
            outcome: r.outcome.clone(),
            hold_ms: r.hold_ms,
            grace_ms: r.grace_ms,
        })
        .collect()
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
                health: None,
                lease_age_ms: 120,
                lease_fresh: true,
                behind: String::new(),
                insecure: false,
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

    #[test]
    fn json_uses_names_not_numbers() {
        let j = serde_json::to_value(status_json(&status())).expect("json");
        assert_eq!(j["route"]["setup"], "warm");
        assert_eq!(j["members"][0]["role"], "bob");
        assert_eq!(j["members"][0]["applied"]["phase"], "serve");
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
    fn table_aligns_columns() {
        let t = table(&["a", "bb"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
    }
}
