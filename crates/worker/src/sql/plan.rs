//! From a parsed request and the schema cache to one SQL statement with
//! bound parameters. Every identifier written here comes from the schema
//! cache (after a lookup of the requested name) and is quoted; every value
//! from the request is a parameter; the only other words are fixed strings.

use std::sync::Arc;

use super::{Arg, INSERTED, Sql, ident, push_qualified, qualified};
use crate::error::{Code, Error};
use crate::query::{Agg, Cond, Embed, Field, Filter, Op, OrderTerm, Quantified, Query, SelectItem};
use crate::schema::{Card, Column, Function, QName, Relationship, Schema, Table};

/// What rows a read comes from.
#[derive(Debug, Clone)]
pub enum Source {
    Table(Arc<Table>),
    /// A function call whose result has columns (`SETOF t`, `TABLE(...)`).
    Call {
        columns: Vec<Column>,
        name: String,
        /// The table or view whose rows the function returns (embeddings start there).
        origin: Option<QName>,
    },
    /// The rows of the `pgrst_source` CTE of a write.
    Written(Arc<Table>),
}

impl Source {
    fn columns(&self) -> &[Column] {
        match self {
            Source::Table(t) | Source::Written(t) => &t.columns,
            Source::Call { columns, .. } => columns,
        }
    }

    fn label(&self) -> &str {
        match self {
            Source::Table(t) | Source::Written(t) => &t.name,
            Source::Call { name, .. } => name,
        }
    }
}

/// A resolved embedding: the child node and how it joins its parent.
#[derive(Debug)]
struct EmbedNode {
    key: String,
    inner: bool,
    /// `...rel(cols)`: the child's columns are the parent's (to-one only).
    spread: bool,
    /// `rel()`: joined for `!inner` and `rel=is.null`, not in the output.
    empty: bool,
    /// From the parent (origin) to the child (foreign).
    rel: Relationship,
    node: Node,
}

impl EmbedNode {
    fn many(&self) -> bool {
        !self.rel.to_one()
    }
}

/// One level of a read: its source, select list, conditions, order and page.
#[derive(Debug)]
struct Node {
    source: Source,
    alias: String,
    select: Vec<SelectItem>,
    embeds: Vec<EmbedNode>,
    conds: Vec<Cond>,
    order: Vec<OrderTerm>,
    limit: Option<i64>,
    offset: Option<i64>,
}

/// Planning context.
pub struct Planner<'a> {
    pub schema: &'a Schema,
    pub db_schema: &'a str,
    next_alias: usize,
    /// Aggregate functions in `select` are allowed (`db-aggregates-enabled`).
    aggregates: bool,
}

impl std::fmt::Debug for Planner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Planner")
            .field("db_schema", &self.db_schema)
            .finish_non_exhaustive()
    }
}

/// Response shape options of a read.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub count: bool,
    pub singular: bool,
    /// `nulls=stripped`: `json_strip_nulls` over the body.
    pub strip_nulls: bool,
    /// `text/csv`: a header line of the columns, then one line per row (PostgREST's format).
    pub csv: bool,
    /// Only the row count matters (`return=minimal`/HEAD).
    pub no_body: bool,
    /// A fourth column: the rows an upsert inserted (`pgrst.inserted`).
    pub inserted: bool,
    /// The exact count stops at this many rows (`count=estimated` with max rows).
    pub count_cap: Option<i64>,
    /// Also plan `EXPLAIN (FORMAT JSON)` of the count (`count=planned|estimated`).
    pub explain: bool,
}

fn column_missing(table: &str, col: &str) -> Error {
    Error::new(
        Code::UndefinedColumn,
        format!("column {table}.{col} does not exist"),
    )
}

impl<'a> Planner<'a> {
    pub fn new(schema: &'a Schema, db_schema: &'a str) -> Self {
        Planner {
            schema,
            db_schema,
            next_alias: 1,
            aggregates: false,
        }
    }

    /// Allows aggregate functions in `select` (else PGRST123).
    #[must_use]
    pub fn with_aggregates(mut self, allowed: bool) -> Self {
        self.aggregates = allowed;
        self
    }

    /// The table or view `name`, or PGRST205.
    pub fn table(&self, name: &str) -> Result<Arc<Table>, Error> {
        self.schema
            .table(self.db_schema, name)
            .cloned()
            .ok_or_else(|| {
                Error::new(
                    Code::TableNotFound,
                    format!(
                        "Could not find the table '{}.{name}' in the schema cache",
                        self.db_schema
                    ),
                )
            })
    }

    /// Builds the tree of nodes for `query` over `source`.
    fn node(&mut self, source: Source, query: &Query, alias: String) -> Result<Node, Error> {
        let select = query
            .select
            .clone()
            .unwrap_or_else(|| vec![SelectItem::Star]);
        let mut node = self.level(source, &select, alias, &[], query)?;
        // Conditions etc. on paths that name no embedding.
        let known = |path: &[String]| path.is_empty() || node_has_path(&node, path);
        let missing = |path: &[String]| not_embedded(missing_embed(&node, path).unwrap_or(path));
        for (path, _) in &query.conds {
            if !known(path) {
                return Err(missing(path));
            }
        }
        for path in query
            .orders
            .iter()
            .map(|(p, _)| p)
            .chain(query.limits.iter().map(|(p, _)| p))
            .chain(query.offsets.iter().map(|(p, _)| p))
        {
            if !known(path) {
                return Err(missing(path));
            }
        }
        node.alias = "t0".to_owned();
        Ok(node)
    }

    fn level(
        &mut self,
        source: Source,
        select: &[SelectItem],
        alias: String,
        path: &[String],
        query: &Query,
    ) -> Result<Node, Error> {
        let mut embeds = Vec::new();
        for item in select {
            match item {
                SelectItem::Embed(e) => {
                    let mut child_path = path.to_vec();
                    child_path.push(e.key().to_owned());
                    embeds.push(self.embed(&source, e, &child_path, query)?);
                }
                SelectItem::Column { field, agg, .. } => {
                    if agg.is_some() && !self.aggregates {
                        return Err(Error::new(
                            Code::AggregatesDisabled,
                            "Use of aggregate functions is not allowed",
                        ));
                    }
                    let counts_rows = *agg == Some(Agg::Count) && field.name == "*";
                    if !counts_rows
                        && !source.columns().iter().any(|c| c.name == field.name)
                        && computed(&source, &field.name).is_none()
                    {
                        return Err(column_missing(source.label(), &field.name));
                    }
                }
                SelectItem::Star => {}
            }
        }
        let pick = |v: &[(Vec<String>, i64)]| {
            v.iter()
                .rev()
                .find(|(p, _)| p.as_slice() == path)
                .map(|(_, n)| *n)
        };
        let conds: Vec<Cond> = query
            .conds
            .iter()
            .filter(|(p, _)| p.as_slice() == path)
            .map(|(_, c)| c.clone())
            .collect();
        let order: Vec<OrderTerm> = query
            .orders
            .iter()
            .filter(|(p, _)| p.as_slice() == path)
            .flat_map(|(_, o)| o.clone())
            .collect();
        let node = Node {
            select: select.to_vec(),
            embeds,
            conds,
            order,
            limit: pick(&query.limits),
            offset: pick(&query.offsets),
            alias,
            source,
        };
        // Check every filtered and ordered column now, for a clean 400.
        for c in &node.conds {
            check_cond(&node, c)?;
        }
        for o in &node.order {
            match &o.relation {
                None => {
                    col(&node, &o.field.name)?;
                }
                Some(r) => {
                    let e = node
                        .embeds
                        .iter()
                        .find(|e| &e.key == r)
                        .ok_or_else(|| not_embedded(std::slice::from_ref(r)))?;
                    if !e.rel.to_one() {
                        return Err(Error::new(
                            Code::RelatedOrder,
                            format!("A related order on '{r}' is not possible"),
                        )
                        .details(format!(
                            "'{}' and '{r}' do not form a many-to-one or one-to-one relationship",
                            node.source.label()
                        )));
                    }
                    col(&e.node, &o.field.name)?;
                }
            }
        }
        Ok(node)
    }

    fn embed(
        &mut self,
        parent: &Source,
        e: &Embed,
        path: &[String],
        query: &Query,
    ) -> Result<EmbedNode, Error> {
        let origin = match parent {
            Source::Table(t) | Source::Written(t) => QName {
                schema: t.schema.clone(),
                name: t.name.clone(),
            },
            // A function returning a table's rows relates like that table.
            Source::Call { origin, name, .. } => origin
                .clone()
                .ok_or_else(|| self.no_relationship(name, e))?,
        };
        let rel = self.find_rel(&origin, e)?;
        let child = self
            .schema
            .table(&rel.foreign.schema, &rel.foreign.name)
            .cloned()
            .ok_or_else(|| self.no_relationship(&origin.name, e))?;
        if e.spread && !rel.to_one() {
            return Err(Error::new(
                Code::Spread,
                format!("A spread operation on '{}' is not possible", e.name),
            )
            .details(format!(
                "'{}' and '{}' do not form a many-to-one or one-to-one relationship",
                origin.name, e.name
            )));
        }
        let alias = format!("t{}", self.next_alias);
        self.next_alias += 1;
        let node = self.level(Source::Table(child), &e.select, alias, path, query)?;
        Ok(EmbedNode {
            key: e.key().to_owned(),
            inner: e.inner,
            spread: e.spread,
            empty: e.select.is_empty(),
            rel,
            node,
        })
    }

    /// The one relationship `e` names from `origin`, PostgREST's way: the
    /// target is a table or view (or, deprecated, a foreign key's name or
    /// column); a hint is a foreign key's name, one of its columns or a
    /// junction table; a self-relationship is one-to-many by the table's
    /// name and many-to-one by the key's column. None is PGRST200, more
    /// than one PGRST201.
    fn find_rel(&self, origin: &QName, e: &Embed) -> Result<Relationship, Error> {
        let target = e.name.as_str();
        fn single(r: &Relationship) -> Option<(&str, &str)> {
            match r.direct() {
                Some((_, [(c, f)])) => Some((c.as_str(), f.as_str())),
                _ => None,
            }
        }
        let fk_col = |r: &Relationship, h: &str| single(r).is_some_and(|(c, _)| c == h);
        let fk_ref_col = |r: &Relationship, h: &str| single(r).is_some_and(|(_, f)| f == h);
        let cons = |r: &Relationship, h: &str| r.direct().is_some_and(|(c, _)| c == h);
        let junction = |r: &Relationship, h: &str| match &r.card {
            Card::M2M(j) => j.table.name == h,
            _ => false,
        };
        let matches = |r: &Relationship| {
            if let Card::Computed { function, .. } = &r.card {
                return function.name == target;
            }
            let is_m2o = matches!(r.card, Card::M2O { .. });
            let is_o2m = matches!(r.card, Card::O2M { .. });
            let named = r.foreign.name == target;
            match (&e.hint, r.is_self) {
                (None, true) => (named && is_o2m) || (fk_col(r, target) && is_m2o),
                (Some(h), true) => named && is_o2m && fk_ref_col(r, h),
                (None, false) => {
                    named
                        || (cons(r, target) && !r.foreign_is_view)
                        || (fk_col(r, target) && !r.foreign_is_view)
                }
                (Some(h), false) => {
                    named && (cons(r, h) || fk_col(r, h) || fk_ref_col(r, h) || junction(r, h))
                }
            }
        };
        let mut found: Vec<&Relationship> = self
            .schema
            .relationships(&origin.schema, &origin.name)
            .iter()
            .filter(|r| r.schema() == self.db_schema && matches(r))
            .collect();
        match found.len() {
            0 => Err(self.no_relationship(&origin.name, e)),
            1 => Ok(found.remove(0).clone()),
            _ => Err(ambiguous(&origin.name, e, &found)),
        }
    }

    /// `SELECT total, page_total, body` over a table, view, function call or written rows.
    pub fn read(
        &mut self,
        source: Source,
        from: &Sql,
        query: &Query,
        shape: Shape,
        max_rows: Option<i64>,
        range: (i64, Option<i64>),
    ) -> Result<Sql, Error> {
        self.read_counted(source, from, query, shape, max_rows, range)
            .map(|(sql, _)| sql)
    }

    /// [`Planner::read`], and with `shape.explain` the statement
    /// `EXPLAIN (FORMAT JSON) SELECT 1 FROM … WHERE …` whose plan's row
    /// estimate is PostgREST's planned count.
    pub fn read_counted(
        &mut self,
        source: Source,
        from: &Sql,
        query: &Query,
        shape: Shape,
        max_rows: Option<i64>,
        range: (i64, Option<i64>),
    ) -> Result<(Sql, Option<Sql>), Error> {
        let mut node = self.node(source, query, "t0".to_owned())?;
        // Range header and limit/offset intersect.
        let offset = node.offset.unwrap_or(0).max(range.0);
        let mut limit = match (node.limit, range.1) {
            (Some(l), Some(r)) => Some(l.min(r)),
            (l, r) => l.or(r),
        };
        if let Some(max) = max_rows {
            limit = Some(limit.map_or(max, |l| l.min(max)));
        }
        node.offset = (offset > 0).then_some(offset);
        node.limit = limit;

        let mut sql = Sql {
            text: String::with_capacity(256),
            args: from.args.clone(),
        };
        if let Some(cte) = from.text.strip_prefix("WITH ") {
            sql.push("WITH ");
            sql.push(cte);
            sql.push(" ");
        }
        let from_clause = from_clause(&node.source, &from.text);
        sql.push("SELECT ");
        if shape.count {
            sql.push("(SELECT pg_catalog.count(*) FROM ");
            if let Some(cap) = shape.count_cap {
                sql.push("(SELECT 1 FROM ");
                sql.push(&from_clause);
                sql.push(" AS \"t0\"");
                write_where(&mut sql, &node, None)?;
                sql.push(" LIMIT ");
                sql.bind(Arg::Int(cap));
                sql.push(") _c)");
            } else {
                sql.push(&from_clause);
                sql.push(" AS \"t0\"");
                write_where(&mut sql, &node, None)?;
                sql.push(")");
            }
        } else {
            sql.push("NULL::bigint");
        }
        sql.push(", pg_catalog.count(_s)");
        if shape.no_body {
            sql.push(", ''");
        } else if shape.csv {
            sql.push(
                ", coalesce((SELECT string_agg(_k, ',') FROM json_object_keys(json_agg(_s) -> 0) AS _k), '') || E'\\n' || \
                 coalesce(string_agg(substring(_s::text, 2, length(_s::text) - 2), E'\\n'), '')",
            );
        } else if shape.singular && shape.strip_nulls {
            sql.push(", coalesce(json_strip_nulls(json_agg(_s) -> 0)::text, '')");
        } else if shape.singular {
            sql.push(", coalesce((json_agg(_s) -> 0)::text, '')");
        } else if shape.strip_nulls {
            sql.push(", coalesce(json_strip_nulls(json_agg(_s)), '[]')::text");
        } else {
            sql.push(", coalesce(json_agg(_s), '[]')::text");
        }
        if shape.inserted {
            sql.push(INSERTED);
        }
        sql.push(" FROM (");
        write_select(&mut sql, &node, &from_clause, None)?;
        sql.push(") _s");
        let explain = if shape.explain {
            let mut e = Sql {
                text: String::with_capacity(128),
                args: from.args.clone(),
            };
            e.push("EXPLAIN (FORMAT JSON) SELECT 1 FROM ");
            e.push(&from_clause);
            e.push(" AS \"t0\"");
            write_where(&mut e, &node, None)?;
            Some(e)
        } else {
            None
        };
        Ok((sql, explain))
    }
}

fn node_has_path(node: &Node, path: &[String]) -> bool {
    missing_embed(node, path).is_none()
}

/// The first name of `path` that is not embedded (PostgREST names it in PGRST108).
fn missing_embed<'p>(node: &Node, path: &'p [String]) -> Option<&'p [String]> {
    let (head, rest) = path.split_first()?;
    match node.embeds.iter().find(|e| &e.key == head) {
        Some(e) => missing_embed(&e.node, rest),
        None => Some(std::slice::from_ref(head)),
    }
}

/// PGRST108 for the first resource of `path` (the first that is not
/// embedded when planned, see [`missing_embed`]).
fn not_embedded(path: &[String]) -> Error {
    let name = path.first().map_or("", String::as_str);
    Error::new(
        Code::NotEmbedded,
        format!("'{name}' is not an embedded resource in this request"),
    )
    .hint(format!(
        "Verify that '{name}' is included in the 'select' query parameter."
    ))
}

/// The closest of `names` to `name` the way PostgREST's fuzzy set picks
/// one (n-grams of size 3, else 2, shared with the name; then a normalised
/// Levenshtein score of at least 0.33); `exact` says whether an identical
/// name may be returned.
fn fuzzy<'n>(name: &str, names: &[&'n str], exact: bool) -> Option<&'n str> {
    fn grams(s: &str, n: usize) -> Vec<String> {
        let padded: Vec<char> = format!("-{}-", s.to_lowercase()).chars().collect();
        if padded.len() < n {
            return vec![padded.iter().collect()];
        }
        padded.windows(n).map(|w| w.iter().collect()).collect()
    }
    fn levenshtein(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1; b.len() + 1];
            for (j, cb) in b.iter().enumerate() {
                let cost = usize::from(ca != *cb);
                cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
            }
            prev = cur;
        }
        prev[b.len()]
    }
    let lname = name.to_lowercase();
    for n in [3, 2] {
        let mine = grams(name, n);
        let mut best: Option<(f64, &str)> = None;
        for cand in names {
            let theirs = grams(cand, n);
            if !mine.iter().any(|g| theirs.contains(g)) {
                continue;
            }
            let lc = cand.to_lowercase();
            let longest = lname.chars().count().max(lc.chars().count()).max(1);
            #[allow(clippy::cast_precision_loss)]
            let score = 1.0 - levenshtein(&lname, &lc) as f64 / longest as f64;
            if score < 0.33 || (!exact && score >= 1.0) {
                continue;
            }
            if best.is_none_or(|(b, _)| score > b) {
                best = Some((score, cand));
            }
        }
        if let Some((_, c)) = best {
            return Some(c);
        }
    }
    None
}

impl Planner<'_> {
    /// PGRST200, with PostgREST's details and, when a name is close to one
    /// that has relationships, its "Perhaps you meant" hint.
    fn no_relationship(&self, parent: &str, e: &Embed) -> Error {
        let schema = self.db_schema;
        let child = &e.name;
        let in_schema = |r: &&Relationship| r.table.schema == schema && r.foreign.schema == schema;
        let mut related: Vec<&str> = self
            .schema
            .all_relationships()
            .filter(in_schema)
            .map(|r| r.table.name.as_str())
            .collect();
        related.sort_unstable();
        related.dedup();
        let children: Vec<&str> = self
            .schema
            .relationships(schema, parent)
            .iter()
            .filter(|r| r.foreign.schema == schema)
            .map(|r| r.foreign.name.as_str())
            .collect();
        let hint = if related.contains(&parent) {
            fuzzy(child, &children, false)
                .map(|c| format!("Perhaps you meant '{c}' instead of '{child}'."))
        } else {
            fuzzy(parent, &related, true)
                .map(|p| format!("Perhaps you meant '{p}' instead of '{parent}'."))
        };
        let using = e
            .hint
            .as_ref()
            .map(|h| format!("' using the hint '{h}"))
            .unwrap_or_default();
        let err = Error::new(Code::NoRelationship,
            format!(
                "Could not find a relationship between '{parent}' and '{child}' in the schema cache"
            ),
        )
        .details(format!(
            "Searched for a foreign key relationship between '{parent}' and '{child}{using}' in the schema '{schema}', but no matches were found."
        ));
        match hint {
            Some(h) => err.hint(h),
            None => err,
        }
    }
}

/// PGRST201: every candidate in `details` (PostgREST's compressed form),
/// the disambiguating spellings in `hint`.
fn ambiguous(parent: &str, e: &Embed, rels: &[&Relationship]) -> Error {
    fn list<'s>(cols: impl Iterator<Item = &'s String>) -> String {
        let v: Vec<&str> = cols.map(String::as_str).collect();
        format!("({})", v.join(", "))
    }
    let details: Vec<serde_json::Value> = rels
        .iter()
        .map(|r| {
            let (cardinality, relationship) = match &r.card {
                // Never ambiguous (one function per name); PostgREST writes `{}`.
                Card::Computed { .. } => return serde_json::json!({}),
                Card::M2M(j) => (
                    "many-to-many",
                    format!(
                        "{} using {}{} and {}{}",
                        j.table.name,
                        j.cons1,
                        list(j.source.iter().map(|(_, c)| c)),
                        j.cons2,
                        list(j.target.iter().map(|(_, c)| c)),
                    ),
                ),
                Card::M2O { cons, cols }
                | Card::O2M { cons, cols }
                | Card::O2O { cons, cols, .. } => (
                    match r.card {
                        Card::M2O { .. } => "many-to-one",
                        Card::O2M { .. } => "one-to-many",
                        _ => "one-to-one",
                    },
                    format!(
                        "{cons} using {}{} and {}{}",
                        r.table.name,
                        list(cols.iter().map(|(c, _)| c)),
                        r.foreign.name,
                        list(cols.iter().map(|(_, f)| f)),
                    ),
                ),
            };
            serde_json::json!({
                "cardinality": cardinality,
                "embedding": format!("{} with {}", r.table.name, r.foreign.name),
                "relationship": relationship,
            })
        })
        .collect();
    let hint = rels
        .iter()
        .map(|r| {
            let via = match &r.card {
                Card::M2M(j) => j.table.name.as_str(),
                Card::Computed { function, .. } => function.name.as_str(),
                _ => r.direct().map_or("", |(c, _)| c),
            };
            format!("'{}!{via}'", r.foreign.name)
        })
        .collect::<Vec<_>>()
        .join(", ");
    Error::new(
        Code::AmbiguousRelationship,
        format!(
            "Could not embed because more than one relationship was found for '{parent}' and '{}'",
            e.name
        ),
    )
    .hint(format!(
        "Try changing '{}' to one of the following: {hint}. Find the desired relationship in the 'details' key.",
        e.name
    ))
    .json_details(serde_json::Value::Array(details))
}

fn from_clause(source: &Source, from: &str) -> String {
    match source {
        Source::Table(t) => qualified(&t.schema, &t.name),
        Source::Written(_) => "pgrst_source".to_owned(),
        Source::Call { .. } => from.to_owned(),
    }
}

fn col<'n>(node: &'n Node, name: &str) -> Result<&'n Column, Error> {
    if let Some(c) = node.source.columns().iter().find(|c| c.name == name) {
        return Ok(c);
    }
    computed(&node.source, name)
        .map(|(_, c)| c)
        .ok_or_else(|| column_missing(node.source.label(), name))
}

/// A node's row as its table's row type (the argument of computed fields
/// and relationships); written rows come from a CTE and are cast back.
fn write_row(sql: &mut Sql, node: &Node) {
    match &node.source {
        Source::Written(t) => {
            sql.push("CAST(ROW(");
            sql.ident(&node.alias);
            sql.push(".*) AS ");
            sql.push(&qualified(&t.schema, &t.name));
            sql.push(")");
        }
        _ => sql.ident(&node.alias),
    }
}

/// A computed field of a table's rows: `(function schema, column)`.
fn computed<'n>(source: &'n Source, name: &str) -> Option<(&'n str, &'n Column)> {
    match source {
        Source::Table(t) | Source::Written(t) => t
            .computed
            .iter()
            .find(|(_, c)| c.name == name)
            .map(|(s, c)| (s.as_str(), c)),
        Source::Call { .. } => None,
    }
}

/// `rel=is.null` / `rel=not.is.null` on an embedded resource `rel`: the
/// embedding and whether rows without (true) or with (false) it are kept.
fn null_embed<'n>(node: &'n Node, f: &Filter) -> Option<(&'n EmbedNode, bool)> {
    if !f.field.json.is_empty() {
        return None;
    }
    let e = node.embeds.iter().find(|e| e.key == f.field.name)?;
    match f.op {
        Op::Is("NULL") => Some((e, !f.negate)),
        Op::Is("NOT NULL") => Some((e, f.negate)),
        _ => None,
    }
}

fn check_cond(node: &Node, c: &Cond) -> Result<(), Error> {
    match c {
        Cond::Filter(f) if null_embed(node, f).is_some() => Ok(()),
        Cond::Filter(f) => col(node, &f.field.name).map(|_| ()),
        Cond::Tree { items, .. } => items.iter().try_for_each(|i| check_cond(node, i)),
    }
}

/// The expression of a field, and its type when it is known (no JSON path
/// or a `->` path on a JSON column).
fn write_field(sql: &mut Sql, node: &Node, field: &Field) -> Result<Option<String>, Error> {
    let c = col(node, &field.name)?;
    match computed(&node.source, &field.name) {
        Some((schema, f)) if !node.source.columns().iter().any(|c| c.name == field.name) => {
            // A computed field: `"schema"."fn"("alias")`.
            sql.push(&qualified(schema, &f.name));
            sql.push("(");
            write_row(sql, node);
            sql.push(")");
        }
        _ => {
            sql.ident(&node.alias);
            sql.push(".");
            sql.ident(&c.name);
        }
    }
    for step in &field.json {
        sql.push(if step.text { " ->> " } else { " -> " });
        match step.key.parse::<i32>() {
            Ok(i) => {
                sql.bind(Arg::Int(i64::from(i)));
                sql.push("::int");
            }
            Err(_) => {
                sql.bind(Arg::Text(step.key.clone()));
                sql.push("::text");
            }
        }
    }
    Ok(match field.json.last() {
        None => Some(c.ty.clone()),
        Some(s) if s.text => Some("text".to_owned()),
        Some(_) => Some(c.ty.clone()),
    })
}

/// A column item's value: the field, its cast, the aggregate and its cast.
fn write_column(
    sql: &mut Sql,
    node: &Node,
    field: &Field,
    cast: Option<&str>,
    agg: Option<Agg>,
    agg_cast: Option<&str>,
) -> Result<(), Error> {
    if agg_cast.is_some() {
        sql.push("(");
    }
    if let Some(a) = agg {
        sql.push(a.name());
        sql.push("(");
    }
    if agg == Some(Agg::Count) && field.name == "*" {
        sql.push("*");
    } else {
        if cast.is_some() {
            sql.push("(");
        }
        write_field(sql, node, field)?;
        if let Some(c) = cast {
            // Only names from query::CASTS reach here.
            sql.push(")::");
            sql.push(c);
        }
    }
    if agg.is_some() {
        sql.push(")");
    }
    if let Some(c) = agg_cast {
        sql.push(")::");
        sql.push(c);
    }
    Ok(())
}

/// A column a spread embedding adds to its parent: its name in the
/// spread's subquery, the aggregate hoisted to the parent (PostgREST's
/// `hoistSpreadAggFunctions`) and the name it has in the parent.
struct SpreadCol {
    inner: String,
    agg: Option<(Agg, Option<String>)>,
    out: String,
}

/// The name an aggregate item has inside a spread's subquery.
fn hoisted_name(field: &Field, alias: Option<&String>, agg: Agg) -> String {
    match alias {
        Some(a) => a.clone(),
        None if field.name == "*" => agg.name().to_owned(),
        None => field.default_alias().to_owned(),
    }
}

/// The columns a spread node adds to its parent.
fn spread_cols(node: &Node) -> Vec<SpreadCol> {
    let plain = |name: String| SpreadCol {
        inner: name.clone(),
        agg: None,
        out: name,
    };
    let mut out = Vec::new();
    let mut embeds = node.embeds.iter();
    for item in &node.select {
        match item {
            SelectItem::Star => {
                out.extend(node.source.columns().iter().map(|c| plain(c.name.clone())))
            }
            SelectItem::Column {
                field,
                alias,
                agg: Some(a),
                agg_cast,
                ..
            } => out.push(SpreadCol {
                inner: hoisted_name(field, alias.as_ref(), *a),
                agg: Some((*a, agg_cast.clone())),
                out: alias.clone().unwrap_or_else(|| a.name().to_owned()),
            }),
            SelectItem::Column { field, alias, .. } => out.push(plain(
                alias
                    .clone()
                    .unwrap_or_else(|| field.default_alias().to_owned()),
            )),
            SelectItem::Embed(_) => {
                let Some(e) = embeds.next() else { continue };
                if e.spread {
                    out.extend(spread_cols(&e.node));
                } else if !e.empty {
                    out.push(plain(e.key.clone()));
                }
            }
        }
    }
    out
}

/// The alias of a spread embedding's lateral subquery.
fn spread_alias(e: &EmbedNode) -> String {
    format!("{}s", e.node.alias)
}

/// Whether a node's select list aggregates: its own aggregates, or those
/// hoisted from its spreads (unless it is itself a spread, which hands
/// them on to its parent).
fn aggregates(node: &Node, hoisting: bool) -> bool {
    if hoisting {
        return false;
    }
    node.select
        .iter()
        .any(|i| matches!(i, SelectItem::Column { agg: Some(_), .. }))
        || node
            .embeds
            .iter()
            .any(|e| e.spread && spread_cols(&e.node).iter().any(|c| c.agg.is_some()))
}

fn write_select(
    sql: &mut Sql,
    node: &Node,
    from: &str,
    join: Option<(&Node, &EmbedNode)>,
) -> Result<(), Error> {
    sql.push("SELECT ");
    let mut first = true;
    let mut sep = |sql: &mut Sql| {
        if !first {
            sql.push(", ");
        }
        first = false;
    };
    let mut embeds = node.embeds.iter();
    // A spread's aggregates are computed by its parent.
    let hoisting = join.is_some_and(|(_, e)| e.spread);
    // GROUP BY terms when the list has aggregates (PostgREST's groupF).
    let aggregated = aggregates(node, hoisting);
    let mut group: Vec<String> = Vec::new();
    for item in &node.select {
        match item {
            SelectItem::Star => {
                sep(sql);
                sql.ident(&node.alias);
                sql.push(".*");
            }
            SelectItem::Column {
                field,
                cast,
                alias,
                agg: Some(a),
                ..
            } if hoisting => {
                // Handed to the parent as a plain column.
                sep(sql);
                if *a == Agg::Count && field.name == "*" {
                    sql.push("1");
                } else {
                    write_column(sql, node, field, cast.as_deref(), None, None)?;
                }
                sql.push(" AS ");
                sql.ident(&hoisted_name(field, alias.as_ref(), *a));
            }
            SelectItem::Column {
                field,
                cast,
                alias,
                agg,
                agg_cast,
            } => {
                sep(sql);
                let start = sql.text.len();
                write_column(sql, node, field, cast.as_deref(), *agg, agg_cast.as_deref())?;
                if aggregated && agg.is_none() {
                    group.push(sql.text[start..].to_owned());
                }
                sql.push(" AS ");
                let name = match (alias, agg) {
                    (Some(a), _) => a.as_str(),
                    (None, Some(a)) => a.name(),
                    (None, None) => field.default_alias(),
                };
                sql.ident(name);
            }
            SelectItem::Embed(_) => {
                let Some(e) = embeds.next() else {
                    continue;
                };
                if e.spread {
                    let al = spread_alias(e);
                    for c in spread_cols(&e.node) {
                        sep(sql);
                        match &c.agg {
                            Some((a, cast)) if !hoisting => {
                                if cast.is_some() {
                                    sql.push("(");
                                }
                                sql.push(a.name());
                                sql.push("(");
                                sql.ident(&al);
                                sql.push(".");
                                sql.ident(&c.inner);
                                sql.push(")");
                                if let Some(t) = cast {
                                    // Only names from query::CASTS reach here.
                                    sql.push(")::");
                                    sql.push(t);
                                }
                                sql.push(" AS ");
                                sql.ident(&c.out);
                            }
                            _ => {
                                let start = sql.text.len();
                                sql.ident(&al);
                                sql.push(".");
                                sql.ident(&c.inner);
                                if aggregated {
                                    group.push(sql.text[start..].to_owned());
                                }
                                sql.push(" AS ");
                                sql.ident(&c.inner);
                            }
                        }
                    }
                    continue;
                }
                if e.empty {
                    continue;
                }
                sep(sql);
                write_embed(sql, node, e, aggregated)?;
                sql.push(" AS ");
                sql.ident(&e.key);
                if aggregated {
                    group.push(ident(&e.key));
                }
            }
        }
    }
    sql.push(" FROM ");
    write_from(sql, node, from, join);
    for e in node.embeds.iter().filter(|e| e.spread) {
        sql.push(" LEFT JOIN LATERAL (");
        write_select(sql, &e.node, &table_of(&e.node)?, Some((node, e)))?;
        sql.push(") AS ");
        sql.ident(&spread_alias(e));
        sql.push(" ON true");
    }
    write_where(sql, node, join)?;
    if !group.is_empty() {
        sql.push(" GROUP BY ");
        sql.push(&group.join(", "));
    }
    write_order_page(sql, node)
}

/// `"schema"."table"` of an embedded node.
fn table_of(node: &Node) -> Result<String, Error> {
    match &node.source {
        Source::Table(t) => Ok(qualified(&t.schema, &t.name)),
        _ => Err(Error::Internal("embedding a non-table".into())),
    }
}

/// `from AS alias`, and a many-to-many embedding's junction table.
fn write_from(sql: &mut Sql, node: &Node, from: &str, join: Option<(&Node, &EmbedNode)>) {
    if let Some((parent, e)) = join
        && let Card::Computed { function, .. } = &e.rel.card
    {
        // A computed relationship: the function of the parent's row.
        sql.push(&qualified(&function.schema, &function.name));
        sql.push("(");
        write_row(sql, parent);
        sql.push(") AS ");
        sql.ident(&node.alias);
        return;
    }
    sql.push(from);
    sql.push(" AS ");
    sql.ident(&node.alias);
    if let Some((_, e)) = join
        && let Card::M2M(j) = &e.rel.card
    {
        sql.push(", ");
        sql.push(&qualified(&j.table.schema, &j.table.name));
        sql.push(" AS ");
        sql.ident(&junction_alias(node));
    }
}

fn junction_alias(child: &Node) -> String {
    format!("{}j", child.alias)
}

/// The embedded rows as JSON; as `jsonb` when the parent groups by them
/// (`json` has no equality), as PostgREST does.
fn write_embed(sql: &mut Sql, parent: &Node, e: &EmbedNode, jsonb: bool) -> Result<(), Error> {
    let child = &e.node;
    let from = table_of(child)?;
    if e.many() {
        sql.push("(SELECT coalesce(json_agg(_e), '[]')");
    } else {
        sql.push("(SELECT row_to_json(_e)");
    }
    if jsonb {
        sql.push("::jsonb");
    }
    sql.push(" FROM (");
    write_select(sql, child, &from, Some((parent, e)))?;
    sql.push(") _e)");
    Ok(())
}

/// The join of an embedded node to its parent (the relationship's origin).
fn write_join(sql: &mut Sql, child: &Node, parent: &Node, e: &EmbedNode) {
    let mut first = true;
    let mut eq = |sql: &mut Sql, a: &str, ac: &str, b: &str, bc: &str| {
        if !first {
            sql.push(" AND ");
        }
        first = false;
        sql.ident(a);
        sql.push(".");
        sql.ident(ac);
        sql.push(" = ");
        sql.ident(b);
        sql.push(".");
        sql.ident(bc);
    };
    match &e.rel.card {
        Card::M2M(j) => {
            let ja = junction_alias(child);
            for (fc, jc) in &j.target {
                eq(sql, &ja, jc, &child.alias, fc);
            }
            for (oc, jc) in &j.source {
                eq(sql, &ja, jc, &parent.alias, oc);
            }
        }
        Card::O2M { cols, .. } | Card::M2O { cols, .. } | Card::O2O { cols, .. } => {
            for (oc, fc) in cols {
                eq(sql, &child.alias, fc, &parent.alias, oc);
            }
        }
        // The function's argument is the join.
        Card::Computed { .. } => {}
    }
}

/// `[NOT] EXISTS (SELECT 1 FROM child WHERE join AND its conditions)`.
fn write_exists(sql: &mut Sql, parent: &Node, e: &EmbedNode, negate: bool) -> Result<(), Error> {
    sql.push(if negate {
        "NOT EXISTS (SELECT 1 FROM "
    } else {
        "EXISTS (SELECT 1 FROM "
    });
    write_from(sql, &e.node, &table_of(&e.node)?, Some((parent, e)));
    write_where(sql, &e.node, Some((parent, e)))?;
    sql.push(")");
    Ok(())
}

/// `WHERE join AND conds AND EXISTS(inner embeds)`, or nothing.
fn write_where(sql: &mut Sql, node: &Node, join: Option<(&Node, &EmbedNode)>) -> Result<(), Error> {
    let mut parts = 0;
    let mut sep = |sql: &mut Sql| {
        sql.push(if parts == 0 { " WHERE " } else { " AND " });
        parts += 1;
    };
    if let Some((parent, e)) = join
        && !matches!(e.rel.card, Card::Computed { .. })
    {
        sep(sql);
        write_join(sql, node, parent, e);
    }
    for c in &node.conds {
        sep(sql);
        write_cond(sql, node, c)?;
    }
    for e in node.embeds.iter().filter(|e| e.inner) {
        sep(sql);
        write_exists(sql, node, e, false)?;
    }
    Ok(())
}

fn write_order_page(sql: &mut Sql, node: &Node) -> Result<(), Error> {
    write_order(sql, node, false)?;
    write_page(sql, node);
    Ok(())
}

/// ` LIMIT n OFFSET m` of a node, each when set.
fn write_page(sql: &mut Sql, node: &Node) {
    if let Some(l) = node.limit {
        sql.push(" LIMIT ");
        sql.bind(Arg::Int(l));
    }
    if let Some(o) = node.offset {
        sql.push(" OFFSET ");
        sql.bind(Arg::Int(o));
    }
}

/// `ctid` names the row's system column (a limited write's `order=ctid`,
/// as PostgREST lets Postgres resolve it) unless the source has a column
/// of that name.
fn is_ctid(node: &Node, o: &OrderTerm) -> bool {
    o.relation.is_none()
        && o.field.json.is_empty()
        && o.field.name == "ctid"
        && col(node, "ctid").is_err()
}

/// ` ORDER BY …` of a node's terms, or nothing; `ctid` allowed when
/// `ctid` (see [`is_ctid`]).
fn write_order(sql: &mut Sql, node: &Node, ctid: bool) -> Result<(), Error> {
    if !node.order.is_empty() {
        sql.push(" ORDER BY ");
        for (i, o) in node.order.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            match &o.relation {
                None if ctid && is_ctid(node, o) => {
                    sql.ident(&node.alias);
                    sql.push(".");
                    sql.ident("ctid");
                }
                None => {
                    write_field(sql, node, &o.field)?;
                }
                Some(r) => {
                    // A to-one embedding's column (checked when planned).
                    let e = node
                        .embeds
                        .iter()
                        .find(|e| &e.key == r)
                        .ok_or_else(|| not_embedded(std::slice::from_ref(r)))?;
                    sql.push("(SELECT ");
                    write_field(sql, &e.node, &o.field)?;
                    sql.push(" FROM ");
                    write_from(sql, &e.node, &table_of(&e.node)?, Some((node, e)));
                    write_where(sql, &e.node, Some((node, e)))?;
                    sql.push(")");
                }
            }
            sql.push(if o.desc { " DESC" } else { " ASC" });
            match o.nulls_first {
                Some(true) => sql.push(" NULLS FIRST"),
                Some(false) => sql.push(" NULLS LAST"),
                None => {}
            }
        }
    }
    Ok(())
}

fn write_cond(sql: &mut Sql, node: &Node, c: &Cond) -> Result<(), Error> {
    match c {
        Cond::Filter(f) => write_filter(sql, node, f),
        Cond::Tree { or, negate, items } => {
            if *negate {
                sql.push("NOT ");
            }
            sql.push("(");
            if items.is_empty() {
                sql.push(if *or { "false" } else { "true" });
            }
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    sql.push(if *or { " OR " } else { " AND " });
                }
                write_cond(sql, node, item)?;
            }
            sql.push(")");
            Ok(())
        }
    }
}

/// `CAST($n AS type)`: the value parsed by Postgres as the column's type,
/// like PostgREST's untyped literals.
fn cast_param(sql: &mut Sql, value: &str, ty: Option<&str>) {
    match ty {
        Some(ty) => {
            sql.push("CAST(");
            sql.bind(Arg::Text(value.to_owned()));
            sql.push(" AS ");
            sql.push(ty);
            sql.push(")");
        }
        None => sql.bind(Arg::Text(value.to_owned())),
    }
}

fn write_filter(sql: &mut Sql, node: &Node, f: &Filter) -> Result<(), Error> {
    if let Some((e, without)) = null_embed(node, f) {
        return write_exists(sql, node, e, without);
    }
    if f.negate {
        sql.push("NOT ");
    }
    sql.push("(");
    let c = col(node, &f.field.name)?;
    let text_like =
        f.field.json.last().is_some_and(|s| s.text) || (f.field.json.is_empty() && c.is_text());
    match &f.op {
        Op::Cmp(op, v) => {
            let ty = write_field(sql, node, &f.field)?;
            sql.push(" ");
            sql.push(op);
            sql.push(" ");
            match ovarray(op, v, ty.as_deref()) {
                Some(arr) => cast_param(sql, &arr, ty.as_deref()),
                None => cast_param(sql, v, ty.as_deref()),
            }
        }
        Op::Quant { op, all, value } => {
            let pattern = matches!(op, Quantified::Pattern(_));
            let cast_text = pattern && !text_like;
            if cast_text {
                sql.push("(");
            }
            let ty = write_field(sql, node, &f.field)?;
            if cast_text {
                sql.push(")::text");
            }
            sql.push(" ");
            sql.push(match op {
                Quantified::Cmp(o) | Quantified::Pattern(o) => o,
            });
            sql.push(if *all { " ALL(" } else { " ANY(" });
            // The array literal read as an array of the field's type (text
            // for patterns), like PostgREST's untyped literal.
            let elem = if pattern { Some("text") } else { ty.as_deref() };
            sql.push("CAST(");
            sql.bind(Arg::Text(value.clone()));
            sql.push(" AS ");
            match elem {
                Some(t) if !t.ends_with("[]") => {
                    sql.push(t);
                    sql.push("[]");
                }
                Some(t) => sql.push(t),
                None => sql.push("text[]"),
            }
            sql.push("))");
        }
        Op::IsDistinct(v) => {
            let ty = write_field(sql, node, &f.field)?;
            sql.push(" IS DISTINCT FROM ");
            cast_param(sql, v, ty.as_deref());
        }
        Op::Like(ci, v) | Op::Match(ci, v) => {
            if !text_like {
                sql.push("(");
            }
            write_field(sql, node, &f.field)?;
            if !text_like {
                sql.push(")::text");
            }
            sql.push(match (&f.op, ci) {
                (Op::Like(..), false) => " LIKE ",
                (Op::Like(..), true) => " ILIKE ",
                (_, false) => " ~ ",
                (_, true) => " ~* ",
            });
            sql.bind(Arg::Text(v.clone()));
        }
        Op::In(values) => {
            let ty = write_field(sql, node, &f.field)?;
            sql.push(" = ANY(");
            match ty {
                Some(ty) => {
                    sql.push("CAST(");
                    sql.bind(Arg::TextArray(values.clone()));
                    sql.push(" AS ");
                    sql.push(&ty);
                    sql.push("[]))");
                }
                None => {
                    sql.bind(Arg::TextArray(values.clone()));
                    sql.push(")");
                }
            }
        }
        Op::Is(kw) => {
            write_field(sql, node, &f.field)?;
            sql.push(" IS ");
            sql.push(kw);
        }
        Op::Fts(func, lang, v) => {
            // `field @@ to_tsquery([config,] value)`, as PostgREST writes
            // it: a text field is matched with Postgres' `text @@ tsquery`.
            let castable = f.field.json.is_empty() && (c.ty == "tsvector" || c.is_text());
            if !castable && !text_like {
                sql.push("(");
            }
            write_field(sql, node, &f.field)?;
            if !castable && !text_like {
                sql.push(")::text");
            }
            sql.push(" @@ ");
            sql.push(func);
            sql.push("(");
            if let Some(l) = lang {
                sql.bind(Arg::Text(l.clone()));
                sql.push("::regconfig, ");
            }
            sql.bind(Arg::Text(v.clone()));
            sql.push(")");
        }
    }
    sql.push(")");
    Ok(())
}

/// `ov.(a,b)` on an array column is read as `{a,b}` (ranges keep `(a,b)`).
fn ovarray(op: &str, v: &str, ty: Option<&str>) -> Option<String> {
    if op != "&&" || !ty.is_some_and(|t| t.ends_with("[]")) {
        return None;
    }
    let inner = v.strip_prefix('(')?.strip_suffix(')')?;
    Some(format!("{{{inner}}}"))
}

/// `WHERE` conditions of a write (PATCH/DELETE) on the target aliased `t0`.
pub fn write_conditions(
    planner: &mut Planner<'_>,
    table: &Arc<Table>,
    query: &Query,
    sql: &mut Sql,
) -> Result<(), Error> {
    let node = write_target(planner, table, query)?;
    write_where(sql, &node, None)
}

/// The written table aliased `t0` with the request's filters (none may
/// name an embedded resource: a write has none).
fn write_target(
    planner: &mut Planner<'_>,
    table: &Arc<Table>,
    query: &Query,
) -> Result<Node, Error> {
    if let Some((path, _)) = query.conds.iter().find(|(p, _)| !p.is_empty()) {
        return Err(not_embedded(path));
    }
    let q = Query {
        select: Some(vec![SelectItem::Star]),
        conds: query.conds.clone(),
        ..Query::default()
    };
    planner.level(
        Source::Table(table.clone()),
        &[SelectItem::Star],
        "t0".to_owned(),
        &[],
        &q,
    )
}

/// What follows `UPDATE … SET … FROM (body) _r` or `DELETE FROM …` of a
/// limited write (`limit`/`offset` with `order` on PATCH/DELETE, PostgREST
/// 12's "limited update/delete"): the first rows of the filtered ones in
/// that order, `range` = (offset, limit), picked by a subquery and matched
/// by the order's columns (PostgREST's `mutRangeF`; `order=ctid` matches
/// the row's system column, for a table without a unique key). Unlike
/// PostgREST, which matches on those columns only, the filters apply to
/// the outer statement too, so a row outside them is never written.
pub fn limited_write_conditions(
    planner: &mut Planner<'_>,
    table: &Arc<Table>,
    query: &Query,
    sql: &mut Sql,
    update: bool,
    range: (i64, Option<i64>),
) -> Result<(), Error> {
    let mut node = write_target(planner, table, query)?;
    // Set here, not planned: `ctid` is no column of the cache.
    node.order = query
        .orders
        .iter()
        .filter(|(p, _)| p.is_empty())
        .flat_map(|(_, o)| o.iter().cloned())
        .collect();
    node.offset = (range.0 > 0).then_some(range.0);
    node.limit = range.1;
    // The columns the rows are matched by: the order's, each once.
    let mut ids: Vec<&str> = Vec::new();
    for o in node.order.iter().filter(|o| o.relation.is_none()) {
        let name = o.field.name.as_str();
        if table.column(name).is_none() && !is_ctid(&node, o) {
            return Err(column_missing(&table.name, name));
        }
        if !ids.contains(&name) {
            ids.push(name);
        }
    }
    if ids.is_empty() {
        // Only embedded resources' orders: none for the rows written.
        return Err(Error::limit_without_order());
    }
    sql.push(if update {
        ", (SELECT "
    } else {
        " USING (SELECT "
    });
    let column = |sql: &mut Sql, id: &str| {
        sql.ident(&node.alias);
        sql.push(".");
        sql.ident(id);
    };
    for (i, id) in ids.iter().enumerate() {
        sql.push(if i > 0 { ", " } else { "" });
        column(sql, id);
    }
    sql.push(" FROM ");
    push_qualified(sql, &table.schema, &table.name);
    sql.push(" AS ");
    sql.ident(&node.alias);
    write_where(sql, &node, None)?;
    write_order(sql, &node, true)?;
    write_page(sql, &node);
    sql.push(") AS \"pgrst_affected_rows\" WHERE ");
    for (i, id) in ids.iter().enumerate() {
        sql.push(if i > 0 { " AND " } else { "" });
        column(sql, id);
        sql.push(" = \"pgrst_affected_rows\".");
        sql.ident(id);
    }
    for c in &node.conds {
        sql.push(" AND ");
        write_cond(sql, &node, c)?;
    }
    Ok(())
}

/// The function to call for `name` with these argument names, or PGRST202.
pub fn pick_function(
    schema: &Schema,
    db_schema: &str,
    name: &str,
    given: &[String],
    post: bool,
    raw_body: bool,
) -> Result<Arc<Function>, Error> {
    let candidates = schema.functions(db_schema, name);
    // A raw (text, xml, bytes) body is never the arguments of a function
    // without parameters (PostgREST).
    let matches = |f: &&Arc<Function>| {
        !(raw_body && f.args.is_empty())
            && given.iter().all(|g| f.args.iter().any(|a| &a.name == g))
            && f.args
                .iter()
                .all(|a| a.has_default || given.iter().any(|g| g == &a.name))
    };
    let mut found = candidates.iter().filter(matches);
    let Some(first) = found.next() else {
        return Err(no_function(schema, db_schema, name, given, post));
    };
    if found.next().is_none() {
        return Ok(first.clone());
    }
    // More than one overload accepts these names: PostgREST's 300 PGRST203.
    let all: Vec<&Arc<Function>> = candidates.iter().filter(matches).collect();
    Err(ambiguous_functions(&all))
}

/// PGRST203: more than one function fits the request.
pub fn ambiguous_functions(fns: &[&Arc<Function>]) -> Error {
    let all = fns
        .iter()
        .map(|f| {
            let params = f
                .args
                .iter()
                .map(|a| format!("{} => {}", a.name, a.ty))
                .collect::<Vec<_>>()
                .join(", ");
            format!("{}.{}({params})", f.schema, f.name)
        })
        .collect::<Vec<_>>()
        .join(", ");
    Error::new(Code::AmbiguousFunction,
        format!("Could not choose the best candidate function between: {all}"),
    )
    .hint("Try renaming the parameters or the function itself in the database so function overloading can be resolved")
}

/// PGRST202 with PostgREST's message, details and "Perhaps you meant" hint
/// (argument names sorted, as PostgREST keeps them in a set).
fn no_function(
    schema: &Schema,
    db_schema: &str,
    name: &str,
    given: &[String],
    post: bool,
) -> Error {
    let mut keys: Vec<&str> = given.iter().map(String::as_str).collect();
    keys.sort_unstable();
    keys.dedup();
    let list = keys.join(", ");
    let func = format!("{db_schema}.{name}");
    let (in_message, in_details) = if keys.is_empty() {
        (
            " without parameters".to_owned(),
            " without parameters".to_owned(),
        )
    } else {
        let plural = if keys.len() > 1 { "s" } else { "" };
        (
            format!("({list})"),
            format!(" with parameter{plural} {list}"),
        )
    };
    let or_json = if post {
        " or with a single unnamed json/jsonb parameter"
    } else {
        ""
    };
    let candidates = schema.functions(db_schema, name);
    let hint = if candidates.is_empty() {
        let names = schema.function_names(db_schema);
        fuzzy(name, &names, true)
            .map(|n| format!("Perhaps you meant to call the function {db_schema}.{n}"))
    } else {
        let lists: Vec<String> = candidates
            .iter()
            .map(|f| {
                let mut ns: Vec<&str> = f.args.iter().map(|a| a.name.as_str()).collect();
                ns.sort_unstable();
                format!("({})", ns.join(", "))
            })
            .collect();
        let refs: Vec<&str> = lists.iter().map(String::as_str).collect();
        fuzzy(&format!("({list})"), &refs, true)
            .map(|l| format!("Perhaps you meant to call the function {func}{l}"))
    };
    let err = Error::new(Code::FunctionNotFound,
        format!("Could not find the function {func}{in_message} in the schema cache"),
    )
    .details(format!(
        "Searched for the function {func}{in_details}{or_json}, but no matches were found in the schema cache."
    ));
    match hint {
        Some(h) => err.hint(h),
        None => err,
    }
}

/// `"schema"."fn"("a" := <expr>, ...)` where each value comes from `value_sql`.
pub(super) fn call(
    sql: &mut Sql,
    f: &Function,
    given: &[String],
    mut value_sql: impl FnMut(&mut Sql, &crate::schema::Arg),
) {
    push_qualified(sql, &f.schema, &f.name);
    sql.push("(");
    let mut first = true;
    for a in f.args.iter().filter(|a| given.contains(&a.name)) {
        if !first {
            sql.push(", ");
        }
        first = false;
        sql.ident(&a.name);
        sql.push(" := ");
        value_sql(sql, a);
    }
    sql.push(")");
}

/// Writes `CAST($n AS type)` for a query-string argument.
pub(super) fn text_arg(sql: &mut Sql, value: &str, ty: &str) {
    cast_param(sql, value, Some(ty));
}
