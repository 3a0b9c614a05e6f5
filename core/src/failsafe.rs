//! Failsafe: the link keeps serving while etcd is unreachable, and only
//! while nothing can switch it.
//!
//! The rules (why they are safe: `docs/design.md`, "Failsafe"):
//! 1. Every route carries its **roster**, the member incarnations (id and
//!    lease) the leader listed at the write, itself included.
//! 2. Only a process that held an incarnation in the current route's roster
//!    may lead ([`may_lead`]); a new incarnation joins by a roster rewrite
//!    (same setup, next epoch) that the leader makes when the live
//!    incarnations differ from the roster. When no roster incarnation has
//!    had a live key for `max + D`, every one of them has stopped serving
//!    on grants, and anyone may lead (a full restart).
//! 3. A member whose lease is no longer fresh may keep serving the route
//!    `(e, serve, X)` it accepted in this incarnation only while it holds a
//!    fresh grant for `(e, X)` from every other incarnation of route `e`'s
//!    roster, for at most `max` after its lease stopped being fresh
//!    (`Member`).
//! 4. A member grants only for the `(e, X)` it serves, confirmed by etcd in
//!    its current incarnation, listed in route `e`'s roster, only while its
//!    own lease is about to lapse, never while it leads or campaigns, and
//!    never for an `e` below an epoch its process sent a route write for
//!    (that write may land after the leadership ended). A leader whose
//!    lease is about to lapse steps down ([`lease_about_to_lapse`]), so its
//!    peers can have its grant before their own leases lapse.
//! 5. A grant binds its granter until it expires: it does not campaign.
//!
//! Together: a leader is a roster member that has no grant outstanding and
//! gives none, so a member serving on grants from a roster that includes
//! the leader stopped before the leader could write; an older roster's
//! member stopped before the writer of the next epoch could write, and that
//! writer never grants for an epoch it has seen superseded.

use crate::time::{Duration, Time};
use crate::types::*;

/// Failsafe parameters, the same on every member of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FailsafeConfig {
    /// How long a grant lasts: for its holder from when the ask was sent,
    /// for its granter (bound) from when it answered.
    pub grant_ttl: Duration,
    /// The longest a member serves on grants after its lease stopped being
    /// fresh; also how long a full restart waits before anyone may lead.
    pub max: Duration,
}

/// A peer asks this member for a grant: "I serve `epoch`/`setup` and cannot
/// reach etcd; do you, and will you stay out of any switch?".
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GrantAsk {
    pub from: MemberId,
    pub epoch: Epoch,
    pub setup: Setup,
}

/// A grant given: by the incarnation on `lease`, for `epoch`/`setup`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Granted {
    pub lease: Lease,
    pub epoch: Epoch,
    pub setup: Setup,
}

/// Why a grant was refused.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum GrantRefusal {
    /// This member runs without failsafe.
    Disabled,
    /// This member's lease is fresh: it reaches etcd, and etcd decides.
    SeesEtcd,
    /// This member leads (or campaigns): it may switch the link.
    Leading,
    /// This member does not serve the asked epoch and setup, confirmed by
    /// etcd in this incarnation and listed in that route's roster.
    NotServing { serving: Option<Applied> },
    /// This member's process wrote (or sent a write for) the route at
    /// `epoch`, above the asked one: that write may still land.
    Wrote { epoch: Epoch },
    /// The member is stopping.
    Stopping,
}

impl std::fmt::Display for GrantRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GrantRefusal::Disabled => f.write_str("failsafe is not enabled on this member"),
            GrantRefusal::SeesEtcd => f.write_str("this member reaches etcd; etcd decides"),
            GrantRefusal::Leading => f.write_str("this member leads or campaigns"),
            GrantRefusal::NotServing { serving: Some(a) } => write!(
                f,
                "this member serves {} at {}, not the asked route from its roster",
                a.setup,
                a.step()
            ),
            GrantRefusal::NotServing { serving: None } => {
                f.write_str("this member serves no route of its roster")
            }
            GrantRefusal::Wrote { epoch } => write!(
                f,
                "this member's process wrote the route at epoch {epoch}, above the asked one; that write may still land"
            ),
            GrantRefusal::Stopping => f.write_str("member is stopping"),
        }
    }
}

/// Why a process may not lead now.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LeadBar {
    /// A grant this member gave is still running.
    Bound { until: Time },
    /// The route's roster lists none of this process's incarnations, and a
    /// roster incarnation had a live key less than `max + D` ago: the
    /// leader has yet to list this member (`gone: None`), or no roster
    /// incarnation is live (a full restart) and one cut from etcd might
    /// still serve on grants for `wait` more.
    NotInRoster {
        epoch: Epoch,
        gone: Option<RosterGone>,
    },
}

/// No incarnation of the route's roster has a live key: for how much
/// longer nobody may lead (failsafe's cost of a full restart).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RosterGone {
    pub wait: Duration,
}

impl std::fmt::Display for LeadBar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeadBar::Bound { .. } => {
                f.write_str("a failsafe grant this member gave has not expired")
            }
            LeadBar::NotInRoster { epoch, gone: None } => write!(
                f,
                "not in the roster of the route at epoch {epoch}: waiting for the leader to list this member"
            ),
            LeadBar::NotInRoster {
                epoch,
                gone: Some(g),
            } => write!(
                f,
                "no member incarnation in the roster of the route at epoch {epoch} is live (every sidecar restarted?): one cut off from etcd could still serve on its peers' grants, so nobody may lead for {} s more (failsafe.max + D after the roster was last seen live); the link cannot switch or finish a switch until then",
                g.wait.as_millis().div_ceil(1000)
            ),
        }
    }
}

/// Whether the process `id`, which has held `leases`, may campaign or lead
/// a link whose route is `route` (rule 2 and 5). `roster_gone_since`: since
/// when this process has seen no key of a roster incarnation live (`None`:
/// one is live, or it has not looked yet). Without failsafe, or before the
/// first roster, anyone may.
#[allow(clippy::too_many_arguments)]
pub fn may_lead(
    failsafe: Option<&FailsafeConfig>,
    route: Option<&Route>,
    id: &str,
    leases: &[Lease],
    roster_gone_since: Option<Time>,
    bound_until: Option<Time>,
    lb_down_bound: Duration,
    now: Time,
) -> Result<(), LeadBar> {
    let Some(fs) = failsafe else { return Ok(()) };
    if let Some(until) = bound_until.filter(|u| now < *u) {
        return Err(LeadBar::Bound { until });
    }
    let Some(route) = route.filter(|r| !r.roster.is_empty()) else {
        return Ok(());
    };
    if leases.iter().any(|l| route.rostered(id, *l)) {
        return Ok(());
    }
    match roster_gone_since {
        Some(since) if now >= since + fs.max + lb_down_bound => Ok(()),
        gone => Err(LeadBar::NotInRoster {
            epoch: route.epoch,
            gone: gone.map(|since| RosterGone {
                wait: (since + fs.max + lb_down_bound).since(now),
            }),
        }),
    }
}

/// The failsafe state of a member, for its view and the history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FailsafeView {
    /// Serving on grants until (the check answers "routable" until D
    /// before it).
    pub until: Time,
    /// The route served on grants.
    pub serving: Applied,
}

/// Whether a lease fresh until `lease_fresh_until` is about to lapse at
/// `now`: it will not stay fresh for a grant's length and D (or there is
/// none). A member whose lease stays fresh reaches etcd: it neither grants
/// nor needs grants, and it may campaign.
pub fn lease_about_to_lapse(
    lease_fresh_until: Option<Time>,
    now: Time,
    fs: &FailsafeConfig,
    lb_down_bound: Duration,
) -> bool {
    lapse_doubt_from(lease_fresh_until, fs, lb_down_bound).is_none_or(|t| now >= t)
}

/// From when a lease fresh until `lease_fresh_until` is about to lapse
/// (`None`: there is no fresh lease, so it is already). A leader steps down
/// then: it may have to grant, and its peers' leases lapse about as soon.
pub fn lapse_doubt_from(
    lease_fresh_until: Option<Time>,
    fs: &FailsafeConfig,
    lb_down_bound: Duration,
) -> Option<Time> {
    lease_fresh_until.map(|u| u - (fs.grant_ttl + lb_down_bound))
}

/// Whether some incarnation of `route`'s roster has a live key among
/// `members` (id, lease); true without a route or a roster (rule 2's
/// full-restart clock runs only while this is false).
pub fn roster_live<'a>(
    route: Option<&Route>,
    mut members: impl Iterator<Item = (&'a str, Lease)>,
) -> bool {
    match route {
        Some(r) if !r.roster.is_empty() => members.any(|(id, lease)| r.rostered(id, lease)),
        _ => true,
    }
}

/// Holds at most this many leases of a process's past incarnations (they
/// only matter for the current route's roster).
pub const LEASES_KEPT: usize = 8;

/// A process's past and current leases, newest last, bounded.
pub fn remember_lease(leases: &mut Vec<Lease>, lease: Lease) {
    if leases.last() != Some(&lease) {
        leases.retain(|l| *l != lease);
        leases.push(lease);
        if leases.len() > LEASES_KEPT {
            leases.remove(0);
        }
    }
}
