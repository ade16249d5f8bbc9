//! The `Prefer` request header (RFC 7240) as PostgREST 12 reads it: items
//! split on commas over every `Prefer` header, the first item of each kind
//! wins, anything else is an invalid preference (400 PGRST122 with
//! `handling=strict`, ignored otherwise). Every preference PostgREST
//! documents has a type here, and each item's text is written once (in the
//! `ITEMS` tables), for reading and for `Preference-Applied` alike.

use http::{HeaderMap, HeaderValue};

use crate::error::{Code, Error};

/// `return=…`: what a write answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Return {
    /// No body (`return=minimal`).
    Minimal,
    /// No body but the `Location` header (`return=headers-only`).
    HeadersOnly,
    /// The written rows as the body (`return=representation`).
    Representation,
}

/// `count=…`: how the total of a read is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// Counted exactly (`count=exact`).
    Exact,
    /// The planner's estimate (`count=planned`).
    Planned,
    /// Exact up to the max-rows limit, the planner's estimate beyond (`count=estimated`).
    Estimated,
}

/// `resolution=…`: what an insert does with a conflicting row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Update the conflicting row (`resolution=merge-duplicates`).
    MergeDuplicates,
    /// Keep the conflicting row, skip the new one (`resolution=ignore-duplicates`).
    IgnoreDuplicates,
}

/// `missing=…`: what a key missing from a written object becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// The column's DEFAULT.
    Default,
    /// NULL (PostgREST's default).
    Null,
}

/// `handling=…`: whether invalid preferences fail the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    /// An invalid preference fails the request with 400 PGRST122 (`handling=strict`).
    Strict,
    /// Invalid preferences are ignored (`handling=lenient`, the default).
    Lenient,
}

/// `tx=…`: how the request's transaction ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tx {
    /// Commit (`tx=commit`, the default).
    Commit,
    /// Roll back after answering (`tx=rollback`).
    Rollback,
}

/// `params=…`: how a POST rpc passes its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Params {
    /// The body is the one json/jsonb argument.
    SingleObject,
}

/// A preference whose values are a fixed set of words.
trait Word: Copy + PartialEq + 'static {
    /// Every value with its item as written (`return=minimal`).
    const ITEMS: &'static [(Self, &'static str)];

    fn parse(item: &str) -> Option<Self> {
        Self::ITEMS
            .iter()
            .find(|(_, s)| *s == item)
            .map(|(v, _)| *v)
    }

    /// The item as written, for `Preference-Applied`.
    fn item(self) -> &'static str {
        Self::ITEMS
            .iter()
            .find(|(v, _)| *v == self)
            .map_or("", |(_, s)| s)
    }
}

impl Word for Return {
    const ITEMS: &'static [(Self, &'static str)] = &[
        (Return::Representation, "return=representation"),
        (Return::Minimal, "return=minimal"),
        (Return::HeadersOnly, "return=headers-only"),
    ];
}

impl Word for Count {
    const ITEMS: &'static [(Self, &'static str)] = &[
        (Count::Exact, "count=exact"),
        (Count::Planned, "count=planned"),
        (Count::Estimated, "count=estimated"),
    ];
}

impl Word for Resolution {
    const ITEMS: &'static [(Self, &'static str)] = &[
        (Resolution::MergeDuplicates, "resolution=merge-duplicates"),
        (Resolution::IgnoreDuplicates, "resolution=ignore-duplicates"),
    ];
}

impl Word for Missing {
    const ITEMS: &'static [(Self, &'static str)] = &[
        (Missing::Default, "missing=default"),
        (Missing::Null, "missing=null"),
    ];
}

impl Word for Handling {
    const ITEMS: &'static [(Self, &'static str)] = &[
        (Handling::Strict, "handling=strict"),
        (Handling::Lenient, "handling=lenient"),
    ];
}

impl Word for Tx {
    const ITEMS: &'static [(Self, &'static str)] =
        &[(Tx::Commit, "tx=commit"), (Tx::Rollback, "tx=rollback")];
}

impl Word for Params {
    const ITEMS: &'static [(Self, &'static str)] =
        &[(Params::SingleObject, "params=single-object")];
}

/// The request's preferences. Without a `Prefer` header this is the
/// default, which allocates nothing.
#[derive(Debug, Default, Clone)]
pub struct Prefer {
    /// `return=…`, when given.
    pub ret: Option<Return>,
    /// `count=…`, when given.
    pub count: Option<Count>,
    /// `resolution=…`, when given.
    pub resolution: Option<Resolution>,
    /// `missing=…`, when given.
    pub missing: Option<Missing>,
    /// `handling=…`, when given.
    pub handling: Option<Handling>,
    /// `tx=…`, when given.
    pub tx: Option<Tx>,
    /// `params=…`, when given.
    pub params: Option<Params>,
    /// `max-affected=n`: the first such item that is a number (it applies
    /// only with `handling=strict`, see [`Prefer::max_affected`]).
    max_affected: Option<i64>,
    /// `timezone=…`: the first one's value (kept when Postgres knows it,
    /// see [`Prefer::resolve_timezone`]).
    pub timezone: Option<String>,
    /// Every `timezone=` item (all invalid when the first is unknown).
    timezone_items: Vec<String>,
    /// The items not understood, as written.
    invalid: Vec<String>,
    /// Some preference was understood.
    known: bool,
}

/// Which preferences a response reports in `Preference-Applied` (besides
/// `count`, `tx`, `handling` and `timezone`, always reported).
#[derive(Debug, Clone, Copy, Default)]
pub struct Reported {
    /// `params=single-object` (rpc).
    pub params: bool,
    /// `resolution=…` (inserts into a table with a primary key or `on_conflict`).
    pub resolution: bool,
    /// `missing=…` (inserts and updates).
    pub missing: bool,
    /// `return=…` (table writes).
    pub ret: bool,
    /// `max-affected=n` (updates, deletes and rpc).
    pub max_affected: bool,
}

/// Sets a preference unless one of its kind came first.
fn first<T>(slot: &mut Option<T>, v: T) {
    if slot.is_none() {
        *slot = Some(v);
    }
}

/// Reads one word preference into its slot; false when `item` is none of its words.
fn word<T: Word>(slot: &mut Option<T>, item: &str) -> bool {
    match T::parse(item) {
        Some(v) => {
            first(slot, v);
            true
        }
        None => false,
    }
}

impl Prefer {
    /// Every `Prefer` header of a request (values that are not visible
    /// ASCII are skipped).
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut p = Prefer::default();
        for v in headers.get_all("prefer") {
            let Ok(v) = v.to_str() else { continue };
            for item in v.split(',') {
                p.read(item.trim());
            }
        }
        p
    }

    fn read(&mut self, item: &str) {
        let known = word(&mut self.ret, item)
            || word(&mut self.count, item)
            || word(&mut self.resolution, item)
            || word(&mut self.missing, item)
            || word(&mut self.handling, item)
            || word(&mut self.tx, item)
            || word(&mut self.params, item)
            || if let Some(tz) = item.strip_prefix("timezone=") {
                if self.timezone.is_none() {
                    self.timezone = Some(tz.to_owned());
                }
                self.timezone_items.push(item.to_owned());
                true
            } else if let Some(n) = item.strip_prefix("max-affected=") {
                // Like PostgREST: any `max-affected=` item is not invalid;
                // the first that is a number is used.
                if self.max_affected.is_none() {
                    self.max_affected = n.parse().ok();
                }
                true
            } else {
                false
            };
        if known {
            self.known = true;
        } else {
            self.invalid.push(item.to_owned());
        }
    }

    /// True when some `count=` was given.
    pub fn counts(&self) -> bool {
        self.count.is_some()
    }

    /// How the count is computed: (exact count in the statement, its cap,
    /// EXPLAIN too), per PostgREST: planned asks the planner; estimated
    /// counts exactly up to max rows + 1 and asks the planner as well.
    pub fn count_plan(&self, max_rows: Option<i64>) -> (bool, Option<i64>, bool) {
        match self.count {
            None => (false, None, false),
            Some(Count::Planned) => (false, None, true),
            Some(Count::Estimated) => (true, max_rows.map(|m| m.saturating_add(1)), true),
            Some(Count::Exact) => (true, None, false),
        }
    }

    /// The total a response reports, from the exact count (`total`) and
    /// the planner's estimate (`planned`).
    pub fn settle_count(
        &self,
        total: Option<i64>,
        planned: Option<i64>,
        max_rows: Option<i64>,
    ) -> Option<i64> {
        match self.count {
            Some(Count::Planned) => planned,
            Some(Count::Estimated) => match total {
                Some(exact) if max_rows.is_none_or(|m| exact > m) => {
                    Some(planned.map_or(exact, |p| p.max(exact)))
                }
                other => other,
            },
            _ => total,
        }
    }

    /// True for `return=representation`.
    pub fn representation(&self) -> bool {
        self.ret == Some(Return::Representation)
    }

    /// True for `tx=rollback`.
    pub fn rollback(&self) -> bool {
        self.tx == Some(Tx::Rollback)
    }

    /// True for `params=single-object`.
    pub fn single_object(&self) -> bool {
        self.params == Some(Params::SingleObject)
    }

    /// True for `missing=default`.
    pub fn missing_default(&self) -> bool {
        self.missing == Some(Missing::Default)
    }

    /// `max-affected=n`, which applies only with `handling=strict`.
    pub fn max_affected(&self) -> Option<i64> {
        self.max_affected
            .filter(|_| self.handling == Some(Handling::Strict))
    }

    /// Keeps `timezone=` when `known` (Postgres' `pg_timezone_names` has
    /// it); otherwise every `timezone=` item is an invalid preference.
    pub fn resolve_timezone(&mut self, known: impl Fn(&str) -> bool) {
        if let Some(tz) = &self.timezone
            && !known(tz)
        {
            self.timezone = None;
            self.invalid.append(&mut self.timezone_items);
        }
    }

    /// PGRST122 when there are invalid preferences and `handling=strict`.
    pub fn check(&self) -> Result<(), Error> {
        if self.handling == Some(Handling::Strict) && !self.invalid.is_empty() {
            return Err(Error::new(
                Code::InvalidPreferences,
                "Invalid preferences given with handling=strict",
            )
            .details(format!("Invalid preferences: {}", self.invalid.join(", "))));
        }
        Ok(())
    }

    /// `Preference-Applied`, in PostgREST's order.
    pub fn applied(&self, r: Reported) -> Option<HeaderValue> {
        if !self.known {
            // No preference was understood (the common case): nothing to report.
            return None;
        }
        let tz = self.timezone.as_ref().map(|t| format!("timezone={t}"));
        let max = if r.max_affected {
            self.max_affected().map(|n| format!("max-affected={n}"))
        } else {
            None
        };
        let items: [Option<&str>; 9] = [
            self.resolution.filter(|_| r.resolution).map(Word::item),
            self.missing.filter(|_| r.missing).map(Word::item),
            self.ret.filter(|_| r.ret).map(Word::item),
            self.params.filter(|_| r.params).map(Word::item),
            self.count.map(Word::item),
            self.tx.map(Word::item),
            self.handling.map(Word::item),
            tz.as_deref(),
            max.as_deref(),
        ];
        let mut out = String::new();
        for item in items.iter().flatten() {
            if !out.is_empty() {
                out.push_str(", ");
            }
            out.push_str(item);
        }
        if out.is_empty() {
            return None;
        }
        HeaderValue::from_str(&out).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefs(values: &[&str]) -> Prefer {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("prefer", HeaderValue::from_str(v).expect("ascii"));
        }
        Prefer::from_headers(&h)
    }

    const ALL: Reported = Reported {
        params: true,
        resolution: true,
        missing: true,
        ret: true,
        max_affected: true,
    };

    #[test]
    fn prefer_reads_like_postgrest() {
        let p = prefs(&[
            "count=exact, tx=rollback,return=minimal",
            "count=planned, x=1, handling=strict",
            "max-affected=7",
        ]);
        assert_eq!(p.count, Some(Count::Exact));
        assert_eq!(p.invalid, ["x=1"]);
        assert_eq!(p.max_affected(), Some(7));
        assert!(p.check().is_err());
        assert_eq!(
            p.applied(ALL).expect("some"),
            "return=minimal, count=exact, tx=rollback, handling=strict, max-affected=7"
        );
        // max-affected without handling=strict is neither used nor reported.
        let p = prefs(&["max-affected=7"]);
        assert_eq!((p.max_affected(), p.applied(ALL)), (None, None));
        assert!(prefs(&["nope"]).check().is_ok());
    }

    #[test]
    fn every_documented_preference_is_read_and_reported_in_order() {
        let p = prefs(&[
            "timezone=UTC, max-affected=x, max-affected=3, handling=strict",
            "tx=commit, count=estimated, params=single-object, return=headers-only",
            "missing=default, resolution=ignore-duplicates",
        ]);
        assert_eq!(p.ret, Some(Return::HeadersOnly));
        assert_eq!(p.count, Some(Count::Estimated));
        assert_eq!(p.resolution, Some(Resolution::IgnoreDuplicates));
        assert_eq!(p.missing, Some(Missing::Default));
        assert_eq!(p.handling, Some(Handling::Strict));
        assert_eq!(p.tx, Some(Tx::Commit));
        assert_eq!(p.params, Some(Params::SingleObject));
        assert_eq!(p.timezone.as_deref(), Some("UTC"));
        assert_eq!(p.max_affected(), Some(3));
        assert!(p.check().is_ok());
        assert_eq!(
            p.applied(ALL).expect("some"),
            "resolution=ignore-duplicates, missing=default, return=headers-only, \
             params=single-object, count=estimated, tx=commit, handling=strict, \
             timezone=UTC, max-affected=3"
        );
        // Only what the response reports.
        assert_eq!(
            p.applied(Reported::default()).expect("some"),
            "count=estimated, tx=commit, handling=strict, timezone=UTC"
        );
    }

    #[test]
    fn first_of_a_kind_wins_and_unknown_timezones_are_invalid() {
        let mut p = prefs(&[
            "return=minimal, return=representation, missing=null, missing=default",
            "handling=lenient, handling=strict, tx=rollback, tx=commit",
            "resolution=merge-duplicates, resolution=ignore-duplicates",
            "timezone=Mars/Olympus, timezone=UTC",
        ]);
        assert_eq!(p.ret, Some(Return::Minimal));
        assert_eq!(p.missing, Some(Missing::Null));
        assert_eq!(p.handling, Some(Handling::Lenient));
        assert!(p.rollback());
        assert_eq!(p.resolution, Some(Resolution::MergeDuplicates));
        assert!(p.invalid.is_empty());
        p.resolve_timezone(|tz| tz == "UTC");
        assert_eq!(p.timezone, None);
        assert_eq!(p.invalid, ["timezone=Mars/Olympus", "timezone=UTC"]);
        // Lenient: invalid preferences are ignored.
        assert!(p.check().is_ok());
    }

    #[test]
    fn no_header_allocates_nothing_and_reports_nothing() {
        let p = prefs(&[]);
        assert_eq!(p.invalid.capacity(), 0);
        assert_eq!(p.timezone_items.capacity(), 0);
        assert!(!p.known);
        assert_eq!(p.applied(ALL), None);
    }

    #[test]
    fn estimated_counts() {
        let p = prefs(&["count=estimated"]);
        assert_eq!(p.count_plan(Some(25)), (true, Some(26), true));
        assert_eq!(p.count_plan(None), (true, None, true));
        // Under max rows: the exact count.
        assert_eq!(p.settle_count(Some(10), Some(500), Some(25)), Some(10));
        // Over it: the larger of the two.
        assert_eq!(p.settle_count(Some(26), Some(500), Some(25)), Some(500));
        assert_eq!(p.settle_count(Some(26), Some(3), Some(25)), Some(26));
        let p = prefs(&["count=planned"]);
        assert_eq!(p.count_plan(Some(25)), (false, None, true));
        assert_eq!(p.settle_count(Some(0), Some(42), None), Some(42));
    }
}
