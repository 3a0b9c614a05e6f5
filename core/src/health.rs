//! Setup health as the leader sees it, from what members publish.
//!
//! Each member probes its own role's hot and warm KMEs. A setup is healthy
//! when every role has at least one live member and every live member of
//! that role reports the setup up: one member seeing its KME down is enough
//! to call that end down, because its LB would route there too.

use crate::types::*;
use serde::{Deserialize, Serialize};

/// What one member's probes report about its own role's two KMEs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RoleHealth {
    pub hot: Health,
    pub warm: Health,
}

impl RoleHealth {
    pub fn of(&self, setup: Setup) -> Health {
        match setup {
            Setup::Hot => self.hot,
            Setup::Warm => self.warm,
        }
    }
}

/// One setup's health per role, and the verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SetupHealth {
    pub setup: Setup,
    pub alice: Health,
    pub bob: Health,
}

impl SetupHealth {
    pub fn healthy(&self) -> bool {
        self.alice == Health::Up && self.bob == Health::Up
    }

    pub fn of_role(&self, role: Role) -> Health {
        match role {
            Role::Alice => self.alice,
            Role::Bob => self.bob,
        }
    }
}

/// Combines the reports of all live members: per role, any `Down` makes the
/// role down, all `Up` makes it up, otherwise (no member, or any unknown)
/// unknown.
pub fn aggregate<'a>(
    reports: impl IntoIterator<Item = (Role, &'a RoleHealth)> + Clone,
    setup: Setup,
) -> SetupHealth {
    let role_health = |role: Role| {
        let mut any = false;
        let mut all_up = true;
        for (r, h) in reports.clone() {
            if r != role {
                continue;
            }
            any = true;
            match h.of(setup) {
                Health::Down => return Health::Down,
                Health::Unknown => all_up = false,
                Health::Up => {}
            }
        }
        if any && all_up {
            Health::Up
        } else {
            Health::Unknown
        }
    };
    SetupHealth {
        setup,
        alice: role_health(Role::Alice),
        bob: role_health(Role::Bob),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rh(hot: Health, warm: Health) -> RoleHealth {
        RoleHealth { hot, warm }
    }

    #[test]
    fn healthy_only_when_every_role_reports_up() {
        let a = rh(Health::Up, Health::Up);
        let b = rh(Health::Up, Health::Down);
        let reports = vec![(Role::Alice, &a), (Role::Bob, &b)];
        assert!(aggregate(reports.clone(), Setup::Hot).healthy());
        let warm = aggregate(reports, Setup::Warm);
        assert!(!warm.healthy());
        assert_eq!(warm.bob, Health::Down);
        assert_eq!(warm.alice, Health::Up);
    }

    #[test]
    fn a_role_without_members_is_unknown() {
        let a = rh(Health::Up, Health::Up);
        let h = aggregate(vec![(Role::Alice, &a)], Setup::Hot);
        assert_eq!(h.bob, Health::Unknown);
        assert!(!h.healthy());
    }

    #[test]
    fn one_member_down_makes_its_role_down() {
        let a1 = rh(Health::Up, Health::Up);
        let a2 = rh(Health::Down, Health::Up);
        let b = rh(Health::Up, Health::Up);
        let h = aggregate(
            vec![(Role::Alice, &a1), (Role::Alice, &a2), (Role::Bob, &b)],
            Setup::Hot,
        );
        assert_eq!(h.alice, Health::Down);
    }
}
