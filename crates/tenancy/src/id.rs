//! Tenant ids.

use std::fmt;

/// A tenant id of valid shape (`^[a-z][a-z0-9-]{2,39}$`): the only kind
/// that goes into control's URLs, metric labels and tenant headers.
/// Whether control knows it is another matter ([`crate::Tenancy::tenant`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    /// `id` when it has the shape of a tenant id.
    pub fn parse(id: &str) -> Option<TenantId> {
        is_valid_id(id).then(|| TenantId(id.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for TenantId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for TenantId {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

/// True when `id` has the shape of a tenant id: `^[a-z][a-z0-9-]{2,39}$`.
pub fn is_valid_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    (3..=40).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["abc", "demo", "a-1", &format!("a{}", "b".repeat(39))] {
            assert_eq!(
                TenantId::parse(ok).map(|t| t.to_string()),
                Some(ok.to_owned())
            );
        }
        for bad in [
            "",
            "ab",
            "1abc",
            "Abc",
            "a_b",
            "a.b",
            "a/b",
            &"a".repeat(41),
        ] {
            assert_eq!(TenantId::parse(bad), None, "{bad:?}");
        }
    }
}
