//! The roles a tenant's key or user JWT may carry.

use std::fmt;

/// The Postgres role a request runs as: one of the three every tenant
/// database has. A token naming any other role is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// No user: the `anon` key, or no key at all where that is allowed.
    Anon,
    /// A signed-in user's JWT.
    Authenticated,
    /// The `service_role` key: bypasses row-level security.
    ServiceRole,
}

impl Role {
    /// Every role, in the order above.
    pub const ALL: [Role; 3] = [Role::Anon, Role::Authenticated, Role::ServiceRole];

    /// The role's name, as tokens and Postgres spell it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Anon => "anon",
            Role::Authenticated => "authenticated",
            Role::ServiceRole => "service_role",
        }
    }

    /// The role named `name`, if it is one of the three.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("postgres"), None);
        assert_eq!(Role::parse("Anon"), None);
    }
}
