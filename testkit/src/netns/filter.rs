//! The `tc` side of network faults: every link end gets an HTB root whose
//! class `1:99` (a `pfifo limit 0`) drops whatever a filter puts into it;
//! a filter matches an address, always (`u32`) or at random (classic BPF).

use super::cmd::tc;
use super::fault::{Match, Rule};
use anyhow::Result;

/// The HTB class whose `pfifo limit 0` drops everything put into it.
const DROP_CLASS: &str = "1:99";
/// The first filter preference a fault takes; each takes the next ones.
pub(super) const FIRST_PREF: u32 = 100;

/// HTB root whose unclassified traffic goes straight out (`default 0`:
/// HTB's direct queue, not shaped) and class 1:99 that drops everything.
pub(super) fn prepare_drop_class(netns: Option<&str>, dev: &str) -> Result<()> {
    tc(
        netns,
        &[
            "qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "0",
        ],
    )?;
    tc(
        netns,
        &[
            "class", "add", "dev", dev, "parent", "1:", "classid", DROP_CLASS, "htb", "rate",
            "10gbit", "quantum", "1514",
        ],
    )?;
    tc(
        netns,
        &[
            "qdisc", "add", "dev", dev, "parent", DROP_CLASS, "handle", "99:", "pfifo", "limit",
            "0",
        ],
    )?;
    Ok(())
}

pub(super) fn add_filter(netns: Option<&str>, dev: &str, pref: u32, rule: &Rule) -> Result<()> {
    let pref = pref.to_string();
    let mut args = vec![
        "filter", "add", "dev", dev, "parent", "1:", "pref", &pref, "protocol", "ip",
    ];
    let (field, addr) = match rule.matcher {
        Match::Src(a) => ("src", a),
        Match::Dst(a) => ("dst", a),
    };
    let cidr = format!("{addr}/32");
    let bytecode;
    if rule.percent >= 100.0 {
        args.extend_from_slice(&["u32", "match", "ip", field, &cidr, "flowid", DROP_CLASS]);
    } else {
        bytecode = random_match_bytecode(rule.matcher, rule.percent);
        args.extend_from_slice(&["bpf", "bytecode", &bytecode, "classid", DROP_CLASS]);
    }
    tc(netns, &args).map(drop)
}

/// A classic BPF program (tc's `bytecode` syntax) that matches IPv4 frames
/// from/to `addr` with probability `percent`: it returns -1 (the filter's
/// class, i.e. drop) or 0 (no match). Offsets are from the Ethernet header,
/// where egress qdiscs see the frame.
fn random_match_bytecode(matcher: Match, percent: f64) -> String {
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const JGE_K: u16 = 0x35;
    const RET_K: u16 = 0x06;
    // SKF_AD_OFF + SKF_AD_RANDOM: the kernel's random number extension.
    const RANDOM: u32 = 0xffff_f000 + 56;
    let (offset, addr) = match matcher {
        Match::Src(a) => (14 + 12, a),
        Match::Dst(a) => (14 + 16, a),
    };
    let threshold = ((percent / 100.0) * f64::from(u32::MAX)) as u32;
    let prog: [(u16, u8, u8, u32); 6] = [
        (LD_W_ABS, 0, 0, offset),
        (JEQ_K, 0, 3, u32::from(addr)),
        (LD_W_ABS, 0, 0, RANDOM),
        (JGE_K, 1, 0, threshold),
        (RET_K, 0, 0, u32::MAX),
        (RET_K, 0, 0, 0),
    ];
    std::iter::once(prog.len().to_string())
        .chain(
            prog.iter()
                .map(|(code, jt, jf, k)| format!("{code} {jt} {jf} {k}")),
        )
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn random_match_program_tests_the_address_then_draws() {
        let prog = random_match_bytecode(Match::Dst(Ipv4Addr::new(198, 18, 3, 2)), 50.0);
        assert_eq!(
            prog,
            format!(
                "6,32 0 0 30,21 0 3 {},32 0 0 4294963256,53 1 0 2147483647,6 0 0 4294967295,6 0 0 0",
                u32::from(Ipv4Addr::new(198, 18, 3, 2))
            )
        );
        assert!(
            random_match_bytecode(Match::Src(Ipv4Addr::LOCALHOST), 5.0).starts_with("6,32 0 0 26,")
        );
    }
}
