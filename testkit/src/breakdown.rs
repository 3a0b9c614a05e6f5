//! Where the time of one switch goes, read from the sidecars' logs written
//! with `lockstep run --log-format json --log-spans` (one line per closed
//! span, with its fields and how long it was open).
//!
//! A switch asked with `--wait` is one `admin_switchover` span on the
//! member asked; its epoch ties it to the leader's `write_route` and `push`
//! spans and the members' `peer_apply`, `lb_apply` and `write_record`
//! spans. Its time is cut along the critical path into consecutive
//! segments that add up to the whole (see [`SEGMENTS`]); the two fan-outs
//! are split further through the member that finished last. Every
//! sidecar runs on the same machine, so their wall clocks agree. A span's
//! start is derived from its close line (time stamp less the time it was
//! open, which tracing rounds to three significant digits): up to 0.5 % of
//! its length off.
//!
//! Assumes what `lockstep-lab bench` does: one switch at a time, no
//! handover (no hold phase).

use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// One closed span (or one plain event: `start == end`).
#[derive(Clone, Debug)]
pub struct Rec {
    /// The member whose log it came from.
    pub member: String,
    pub name: String,
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// Seconds since the Unix epoch.
    pub start: f64,
    pub end: f64,
}

impl Rec {
    fn u64(&self, key: &str) -> Option<u64> {
        self.fields.get(key).and_then(|v| v.as_u64())
    }

    fn str(&self, key: &str) -> &str {
        self.fields.get(key).and_then(|v| v.as_str()).unwrap_or("")
    }

    fn ms(&self) -> f64 {
        (self.end - self.start) * 1e3
    }
}

/// `"15.2ms"`, `"152µs"`, `"1.52s"`, `"500ns"` (tracing's span timings).
fn parse_timing(s: &str) -> Option<f64> {
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().ok()?;
    Some(match unit {
        "ns" => v * 1e-9,
        "µs" | "us" => v * 1e-6,
        "ms" => v * 1e-3,
        "s" => v,
        _ => return None,
    })
}

fn parse_time(s: &str) -> Option<f64> {
    let t = humantime::parse_rfc3339(s).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs_f64())
}

/// The closed spans, and the events named in `events`, of one log.
pub fn read_log(member: &str, path: &Path, events: &[&str]) -> Result<Vec<Rec>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(at) = v
            .get("timestamp")
            .and_then(|t| t.as_str())
            .and_then(parse_time)
        else {
            continue;
        };
        let Some(fields) = v.get("fields").and_then(|f| f.as_object()) else {
            continue;
        };
        let message = fields.get("message").and_then(|m| m.as_str()).unwrap_or("");
        if message == "close" {
            let Some(span) = v.get("span").and_then(|s| s.as_object()) else {
                continue;
            };
            let open = ["time.busy", "time.idle"]
                .iter()
                .map(|k| {
                    fields
                        .get(*k)
                        .and_then(|t| t.as_str())
                        .and_then(parse_timing)
                })
                .sum::<Option<f64>>();
            let Some(open) = open else { continue };
            out.push(Rec {
                member: member.to_string(),
                name: span
                    .get("name")
                    .and_then(|n| n.as_str())
                    .unwrap_or("")
                    .to_string(),
                fields: span.clone(),
                start: at - open,
                end: at,
            });
        } else if events.contains(&message) {
            out.push(Rec {
                member: member.to_string(),
                name: message.to_string(),
                fields: fields.clone(),
                start: at,
                end: at,
            });
        }
    }
    Ok(out)
}

/// The consecutive segments of one switch, in order; they add up to the
/// `admin_switchover` span.
pub const SEGMENTS: &[(&str, &str)] = &[
    (
        "admin_read",
        "admin: read the link, open the watch (etcd range + watch, together)",
    ),
    ("admin_store", "admin: store the request (etcd txn)"),
    (
        "request_to_leader",
        "request reaches the leader (etcd watch)",
    ),
    ("leader_start", "leader: request seen -> drain write starts"),
    ("drain_txn", "drain route write (etcd txn)"),
    (
        "drain_fanout",
        "drain fan-out: written -> serve write starts",
    ),
    ("serve_txn", "serve route write (etcd txn)"),
    ("serve_fanout", "serve fan-out: written -> last LB serves"),
    (
        "completion",
        "completion: last LB serves -> admin sees it settled",
    ),
];

/// The fan-outs and the completion, cut through the member that finished
/// last (what it waited for); shown under the segments.
pub const PARTS: &[(&str, &str)] = &[
    (
        "drain_to_member",
        "  drain: leader sends + gRPC request leg (or etcd watch)",
    ),
    (
        "drain_confirm",
        "  drain: member waits for etcd to confirm the push",
    ),
    (
        "drain_haproxy",
        "  drain: HAProxy Runtime API (block, read back)",
    ),
    ("drain_reply", "  drain: member replies + gRPC reply leg"),
    ("drain_leader", "  drain: leader, last ack -> serve write"),
    (
        "serve_to_member",
        "  serve: leader sends + gRPC request leg (or etcd watch)",
    ),
    (
        "serve_confirm",
        "  serve: member waits for etcd to confirm the push",
    ),
    (
        "serve_haproxy",
        "  serve: HAProxy Runtime API (break, make, read back)",
    ),
    ("record_txn", "  completion: member record write (etcd txn)"),
    (
        "record_seen",
        "  completion: record written -> admin sees it (etcd watch)",
    ),
];

/// Kinds of time, summed over a switch's critical path.
pub const KINDS: &[(&str, &str)] = &[
    ("etcd", "etcd (ranges, txns, watch deliveries)"),
    ("grpc", "gRPC legs leader <-> member"),
    ("haproxy", "HAProxy Runtime API"),
    ("waiting", "waiting and processing in the sidecars"),
];

/// Which kind each segment or part counts as, for the kinds' totals.
fn kind_of(part: &str) -> &'static str {
    match part {
        "admin_read" | "admin_store" | "request_to_leader" | "drain_txn" | "serve_txn"
        | "drain_confirm" | "serve_confirm" | "record_txn" | "record_seen" => "etcd",
        "drain_to_member" | "serve_to_member" | "drain_reply" => "grpc",
        "drain_haproxy" | "serve_haproxy" => "haproxy",
        _ => "waiting",
    }
}

/// One switch, cut up (milliseconds).
#[derive(Clone, Debug, Default)]
pub struct Switch {
    pub epoch: u64,
    pub total_ms: f64,
    /// Segment or part name -> ms.
    pub parts: BTreeMap<&'static str, f64>,
    /// Kind -> ms (adds up to `total_ms`).
    pub kinds: BTreeMap<&'static str, f64>,
    /// The member that finished each fan-out last.
    pub drain_last: String,
    pub serve_last: String,
    /// Whether the push reached that member before its etcd watch did.
    pub drain_by_push: bool,
    pub serve_by_push: bool,
}

/// The spans of one member in one switch's phase.
struct MemberPhase<'a> {
    push: Option<&'a Rec>,
    peer: Option<&'a Rec>,
    lb: Option<&'a Rec>,
}

fn member_phase<'a>(recs: &[&'a Rec], member: &str, epoch: u64, phase: &str) -> MemberPhase<'a> {
    let at = |r: &&Rec| r.u64("epoch") == Some(epoch);
    let push = recs
        .iter()
        .copied()
        .filter(at)
        .filter(|r| r.name == "push" && r.str("phase") == phase && r.str("member") == member)
        .max_by(|a, b| a.end.total_cmp(&b.end));
    let peer = recs
        .iter()
        .copied()
        .filter(at)
        .filter(|r| r.name == "peer_apply" && r.member == member && r.str("phase") == phase)
        .max_by(|a, b| a.end.total_cmp(&b.end));
    let blocked = phase != "serve";
    let lb = recs
        .iter()
        .copied()
        .filter(at)
        .filter(|r| r.name == "lb_apply" && r.member == member)
        .filter(|r| (r.str("target") == "blocked") == blocked)
        .max_by(|a, b| a.end.total_cmp(&b.end));
    MemberPhase { push, peer, lb }
}

/// Cuts up every switch found in `recs` (the records of every sidecar).
pub fn switches(recs: &[Rec]) -> Vec<Switch> {
    let members: Vec<String> = {
        let mut m: Vec<String> = recs.iter().map(|r| r.member.clone()).collect();
        m.sort();
        m.dedup();
        m
    };
    // Each switch looks only at its epoch's spans and at the few spans
    // without one (tens of members log hundreds of thousands of lines).
    let mut by_epoch: std::collections::HashMap<u64, Vec<&Rec>> = Default::default();
    let mut loose: Vec<&Rec> = Vec::new();
    for r in recs {
        match r.u64("epoch") {
            Some(e) => by_epoch.entry(e).or_default().push(r),
            None if matches!(
                r.name.as_str(),
                "admin_read" | "admin_store_request" | "request seen"
            ) =>
            {
                loose.push(r)
            }
            None => {}
        }
    }
    let mut out = Vec::new();
    for admin in recs.iter().filter(|r| r.name == "admin_switchover") {
        let Some(epoch) = admin.u64("epoch") else {
            continue;
        };
        let at = by_epoch.get(&epoch).map_or(&[][..], Vec::as_slice);
        if let Some(s) = one_switch(at, &loose, &members, admin, epoch) {
            out.push(s);
        }
    }
    out.sort_by_key(|s| s.epoch);
    out
}

fn one_switch(
    recs: &[&Rec],
    loose: &[&Rec],
    members: &[String],
    admin: &Rec,
    epoch: u64,
) -> Option<Switch> {
    // A span's start is its close time less its rounded length (three
    // significant digits): up to 0.5 % off.
    let slack = 1e-4 + 0.006 * (admin.end - admin.start);
    let within = |r: &&Rec| r.start >= admin.start - slack && r.end <= admin.end + slack;
    let child = |name: &str| {
        loose
            .iter()
            .copied()
            .filter(within)
            .find(|r| r.name == name && r.member == admin.member)
    };
    let read = child("admin_read")?;
    let store = child("admin_store_request")?;
    let seen = loose
        .iter()
        .copied()
        .filter(within)
        .find(|r| r.name == "request seen")?;
    let write = |phase: &str| {
        recs.iter().copied().find(|r| {
            r.name == "write_route" && r.u64("epoch") == Some(epoch) && r.str("phase") == phase
        })
    };
    let (drain, serve) = (write("drain")?, write("serve")?);

    // The member whose ack reached the leader last (drain), and the one
    // whose LB served last (serve).
    let drains: Vec<(&String, MemberPhase)> = members
        .iter()
        .map(|m| (m, member_phase(recs, m, epoch, "drain")))
        .collect();
    let (drain_last, d) = drains
        .iter()
        .filter(|(_, p)| p.lb.is_some())
        .max_by(|a, b| {
            let end = |p: &MemberPhase| p.push.or(p.lb).map_or(0.0, |r| r.end);
            end(&a.1).total_cmp(&end(&b.1))
        })?;
    let serves: Vec<(&String, MemberPhase)> = members
        .iter()
        .map(|m| (m, member_phase(recs, m, epoch, "serve")))
        .collect();
    let (serve_last, s) = serves
        .iter()
        .filter(|(_, p)| p.lb.is_some())
        .max_by(|a, b| {
            let end = |p: &MemberPhase| p.lb.map_or(0.0, |r| r.end);
            end(&a.1).total_cmp(&end(&b.1))
        })?;
    let lb_served = s.lb?.end;

    let ms = |a: f64, b: f64| (b - a) * 1e3;
    let mut parts: BTreeMap<&'static str, f64> = BTreeMap::new();
    // The leader's watch may see the request before the admin has the
    // txn's reply: the request is stored when either happened.
    let stored = store.end.min(seen.start);
    parts.insert("admin_read", ms(admin.start, read.end));
    parts.insert("admin_store", ms(read.end, stored));
    parts.insert("request_to_leader", ms(stored, seen.start));
    parts.insert("leader_start", ms(seen.start, drain.start));
    parts.insert("drain_txn", drain.ms());
    parts.insert("drain_fanout", ms(drain.end, serve.start));
    parts.insert("serve_txn", serve.ms());
    parts.insert("serve_fanout", ms(serve.end, lb_served));
    parts.insert("completion", ms(lb_served, admin.end));

    // How the last member's fan-out went: reached (by push or watch),
    // confirmed, LB applied, acked.
    let lb = d.lb?;
    let reached = d.peer.map_or(lb.start, |p| p.start.min(lb.start));
    let drain_by_push = d.peer.is_some_and(|p| p.start <= lb.start);
    parts.insert("drain_to_member", ms(drain.end, reached));
    parts.insert("drain_confirm", ms(reached, lb.start));
    parts.insert("drain_haproxy", lb.ms());
    let acked = d.push.map_or(lb.end, |p| p.end).min(serve.start);
    parts.insert("drain_reply", ms(lb.end, acked).max(0.0));
    parts.insert("drain_leader", ms(acked.max(lb.end), serve.start));
    let lb = s.lb?;
    let reached = s.peer.map_or(lb.start, |p| p.start.min(lb.start));
    let serve_by_push = s.peer.is_some_and(|p| p.start <= lb.start);
    parts.insert("serve_to_member", ms(serve.end, reached));
    parts.insert("serve_confirm", ms(reached, lb.start));
    parts.insert("serve_haproxy", lb.ms());

    // The last member record written with this epoch's serve: what the
    // admin waits to see.
    let record = recs
        .iter()
        .copied()
        .filter(|r| {
            r.name == "write_record"
                && r.u64("epoch") == Some(epoch)
                && r.str("phase") == "serve"
                && !r.str("lb").is_empty()
                && r.str("lb") != "blocked"
        })
        .max_by(|a, b| a.end.total_cmp(&b.end));
    let completion = parts["completion"];
    let (record_txn, record_seen) = match record {
        Some(r) if r.end <= admin.end => {
            let txn = ms(r.start.max(lb_served), r.end).max(0.0);
            (txn, completion - txn)
        }
        _ => (0.0, completion),
    };
    parts.insert("record_txn", record_txn);
    parts.insert("record_seen", record_seen);

    // The kinds: the segments, with the fan-outs and the completion
    // replaced by their parts.
    let mut kinds: BTreeMap<&'static str, f64> = BTreeMap::new();
    for (name, v) in &parts {
        let is_part = PARTS.iter().any(|(p, _)| p == name);
        let replaced = matches!(*name, "drain_fanout" | "serve_fanout" | "completion");
        if is_part || !replaced {
            *kinds.entry(kind_of(name)).or_default() += v;
        }
    }

    Some(Switch {
        epoch,
        total_ms: admin.ms(),
        parts,
        kinds,
        drain_last: (*drain_last).clone(),
        serve_last: (*serve_last).clone(),
        drain_by_push,
        serve_by_push,
    })
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Median, p99, max and mean of `v`.
fn stats(v: impl Iterator<Item = f64>) -> (f64, f64, f64, f64) {
    let mut v: Vec<f64> = v.collect();
    v.sort_by(|a, b| a.total_cmp(b));
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    (
        pct(&v, 50.0),
        pct(&v, 99.0),
        v.last().copied().unwrap_or(f64::NAN),
        mean,
    )
}

/// The report: a Markdown table of every segment and part, one of the
/// kinds, and the slowest switches cut up.
pub fn report(switches: &[Switch]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let n = switches.len();
    let (_, _, _, total_mean) = stats(switches.iter().map(|s| s.total_ms));
    // The slowest 5 % (at least one): what the tail spends its time on.
    let mut slow: Vec<&Switch> = switches.iter().collect();
    slow.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
    let tail = &slow[..n.div_ceil(20).min(n)];
    let _ = writeln!(
        out,
        "where the time of a switch goes: {n} switches (admin span: request received -> reply); \
         the last column is the mean over the slowest {} switches\n",
        tail.len()
    );
    let header = |out: &mut String, what: &str| {
        let _ = writeln!(
            out,
            "| {what} | median | p99 | max | mean | share of mean total | mean, slowest 5 % |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    };
    let row = |out: &mut String, label: &str, f: &dyn Fn(&Switch) -> f64| {
        let (m, p, x, mean) = stats(switches.iter().map(f));
        let slow_mean = tail.iter().map(|s| f(s)).sum::<f64>() / tail.len().max(1) as f64;
        let _ = writeln!(
            out,
            "| {label} | {m:.2} ms | {p:.2} ms | {x:.2} ms | {mean:.2} ms | {:.0} % | {slow_mean:.2} ms |",
            mean / total_mean * 100.0
        );
    };
    header(&mut out, "part");
    row(&mut out, "**whole switch**", &|s| s.total_ms);
    for (key, label) in SEGMENTS {
        row(&mut out, label, &|s| s.parts[key]);
        let subs: &[&str] = match *key {
            "drain_fanout" => &[
                "drain_to_member",
                "drain_confirm",
                "drain_haproxy",
                "drain_reply",
                "drain_leader",
            ],
            "serve_fanout" => &["serve_to_member", "serve_confirm", "serve_haproxy"],
            "completion" => &["record_txn", "record_seen"],
            _ => &[],
        };
        for sub in subs {
            if let Some((_, l)) = PARTS.iter().find(|(p, _)| p == sub) {
                row(&mut out, l, &|s| s.parts[sub]);
            }
        }
    }
    let _ = writeln!(out, "\nby kind (each switch's critical path, summed):\n");
    header(&mut out, "kind");
    for (key, label) in KINDS {
        row(&mut out, label, &|s| {
            s.kinds.get(key).copied().unwrap_or(0.0)
        });
    }
    let _ = writeln!(
        out,
        "\nthe last member learned of the step from the push before its etcd watch in {} of {n} drains and {} of {n} serves",
        switches.iter().filter(|s| s.drain_by_push).count(),
        switches.iter().filter(|s| s.serve_by_push).count()
    );
    // The slowest switches one by one, and what grew against the medians.
    let medians: BTreeMap<&str, f64> = SEGMENTS
        .iter()
        .chain(PARTS)
        .map(|(k, _)| (*k, stats(switches.iter().map(|s| s.parts[k])).0))
        .collect();
    let _ = writeln!(
        out,
        "\nthe slowest switches, with the parts that exceed their median most:\n"
    );
    for s in slow.iter().take(8) {
        let mut excess: Vec<(&str, f64)> = PARTS
            .iter()
            .map(|(k, _)| *k)
            .chain([
                "admin_read",
                "admin_store",
                "request_to_leader",
                "leader_start",
            ])
            .chain(["drain_txn", "serve_txn"])
            .map(|k| (k, s.parts[k] - medians[k]))
            .collect();
        excess.sort_by(|a, b| b.1.total_cmp(&a.1));
        let top: Vec<String> = excess
            .iter()
            .take(3)
            .map(|(k, e)| format!("{k} {:.1} ms (+{e:.1})", s.parts[k]))
            .collect();
        let _ = writeln!(
            out,
            "* epoch {}: {:.1} ms; last drain ack {}, last LB to serve {}; {}",
            s.epoch,
            s.total_ms,
            s.drain_last,
            s.serve_last,
            top.join(", ")
        );
    }
    out
}

/// Reads every `<member>.log` in `dir` that belongs to a sidecar (a
/// `<member>.toml` beside it) and cuts up the switches in them.
pub fn from_dir(dir: &Path) -> Result<Vec<Switch>> {
    let mut recs = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let Some(member) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let log = path.with_extension("log");
        if log.is_file() {
            recs.extend(read_log(member, &log, &["request seen"])?);
        }
    }
    Ok(switches(&recs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(member: &str, name: &str, fields: serde_json::Value, start: f64, end: f64) -> Rec {
        Rec {
            member: member.into(),
            name: name.into(),
            fields: fields.as_object().cloned().unwrap_or_default(),
            start: start / 1e3,
            end: end / 1e3,
        }
    }

    #[test]
    fn segments_add_up_to_the_switch() {
        use serde_json::json;
        let e = json!({"epoch": 7});
        let recs = vec![
            rec("a", "admin_switchover", json!({"epoch": 7}), 0.0, 20.0),
            rec("a", "admin_read", json!({}), 0.1, 1.0),
            rec("a", "admin_store_request", json!({}), 1.0, 2.0),
            rec("a", "request seen", json!({}), 2.5, 2.5),
            rec(
                "a",
                "write_route",
                json!({"epoch": 7, "phase": "drain"}),
                3.0,
                4.0,
            ),
            rec(
                "a",
                "push",
                json!({"epoch": 7, "phase": "drain", "member": "b"}),
                4.1,
                8.0,
            ),
            rec(
                "b",
                "peer_apply",
                json!({"epoch": 7, "phase": "drain"}),
                4.5,
                7.5,
            ),
            rec(
                "b",
                "lb_apply",
                json!({"epoch": 7, "target": "blocked"}),
                5.0,
                7.0,
            ),
            rec(
                "a",
                "lb_apply",
                json!({"epoch": 7, "target": "blocked"}),
                4.2,
                4.4,
            ),
            rec(
                "a",
                "write_route",
                json!({"epoch": 7, "phase": "serve"}),
                8.5,
                9.5,
            ),
            rec(
                "b",
                "lb_apply",
                json!({"epoch": 7, "target": "warm"}),
                10.0,
                12.0,
            ),
            rec(
                "a",
                "lb_apply",
                json!({"epoch": 7, "target": "warm"}),
                9.8,
                11.0,
            ),
            rec(
                "b",
                "write_record",
                json!({"epoch": 7, "phase": "serve", "lb": "warm"}),
                12.5,
                14.0,
            ),
        ];
        let cut = switches(&recs);
        assert_eq!(cut.len(), 1, "{e}");
        let s = &cut[0];
        let sum: f64 = SEGMENTS.iter().map(|(k, _)| s.parts[k]).sum();
        assert!((sum - s.total_ms).abs() < 1e-9, "{sum} vs {}", s.total_ms);
        let kinds: f64 = s.kinds.values().sum();
        assert!(
            (kinds - s.total_ms).abs() < 1e-9,
            "{kinds} vs {}",
            s.total_ms
        );
        assert_eq!(s.drain_last, "b");
        assert!((s.parts["drain_haproxy"] - 2.0).abs() < 1e-9);
        assert!((s.parts["drain_confirm"] - 0.5).abs() < 1e-9);
        assert!((s.parts["drain_leader"] - 0.5).abs() < 1e-9);
        assert!((s.parts["record_txn"] - 1.5).abs() < 1e-9);
        assert!(s.drain_by_push);
    }

    #[test]
    fn timings_parse() {
        let near = |s: &str, want: f64| {
            let got = parse_timing(s).expect(s);
            assert!((got - want).abs() < want * 1e-9, "{s}: {got} vs {want}");
        };
        near("500ns", 500e-9);
        near("15.2ms", 15.2e-3);
        near("152µs", 152e-6);
        near("1.52s", 1.52);
        assert_eq!(parse_timing("ms"), None);
    }
}
