//! Parsing of PostgREST query strings: `select`, filters, `or`/`and`
//! trees, `order`, `limit`/`offset`, `on_conflict`, `columns`. Nothing here
//! knows the schema; names are checked when the SQL is planned.

/// A malformed query string (PGRST100).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The error's message (the body's `message`).
    pub message: String,
    /// Which part of the query string is wrong (the body's `details`).
    pub details: String,
}

fn perr(message: &str, details: impl Into<String>) -> ParseError {
    ParseError {
        message: message.to_owned(),
        details: details.into(),
    }
}

type Result<T> = std::result::Result<T, ParseError>;

/// One step of a JSON path: `->key` or `->>key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonStep {
    /// `->>` (the value as text) rather than `->` (as JSON).
    pub text: bool,
    /// The object key.
    pub key: String,
}

/// A column with an optional JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The column's name.
    pub name: String,
    /// The JSON path into the column, empty for the column itself.
    pub json: Vec<JsonStep>,
}

impl Field {
    /// The output name PostgREST gives it: the last JSON key, else the column.
    pub fn default_alias(&self) -> &str {
        self.json.last().map_or(&self.name, |s| &s.key)
    }
}

/// An item of `select=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelectItem {
    /// `*`: every column.
    Star,
    /// A column, optionally with a JSON path, cast, alias or aggregate.
    Column {
        /// The column and its JSON path.
        field: Field,
        /// `col::type`: the cast of the column's value.
        cast: Option<String>,
        /// `alias:col`: the output name.
        alias: Option<String>,
        /// `col.sum()` etc.; `count()` has the field `*`.
        agg: Option<Agg>,
        /// The cast of the aggregate's result: `col.sum()::int`.
        agg_cast: Option<String>,
    },
    /// A related resource embedded in each row.
    Embed(Embed),
}

impl SelectItem {
    /// A plain column (no cast, alias or aggregate).
    pub fn column(name: &str) -> Self {
        SelectItem::Column {
            field: Field {
                name: name.to_owned(),
                json: Vec::new(),
            },
            cast: None,
            alias: None,
            agg: None,
            agg_cast: None,
        }
    }
}

/// The aggregate functions of `select` (PostgREST's `db-aggregates-enabled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agg {
    /// `count()`
    Count,
    /// `col.sum()`
    Sum,
    /// `col.avg()`
    Avg,
    /// `col.max()`
    Max,
    /// `col.min()`
    Min,
}

impl Agg {
    /// The SQL function, and the output name when there is no alias.
    pub fn name(self) -> &'static str {
        match self {
            Agg::Count => "count",
            Agg::Sum => "sum",
            Agg::Avg => "avg",
            Agg::Max => "max",
            Agg::Min => "min",
        }
    }

    fn parse(s: &str) -> Option<Agg> {
        Some(match s {
            "count" => Agg::Count,
            "sum" => Agg::Sum,
            "avg" => Agg::Avg,
            "max" => Agg::Max,
            "min" => Agg::Min,
            _ => return None,
        })
    }
}

/// `alias:name!hint!inner(select)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Embed {
    /// `alias:`: the output key, instead of the name.
    pub alias: Option<String>,
    /// The related table, or the foreign key or column naming the relationship.
    pub name: String,
    /// `!hint`: which foreign key or column picks the relationship.
    pub hint: Option<String>,
    /// `!inner`: rows without a match are left out of the parent.
    pub inner: bool,
    /// `...name(cols)`: the columns are the parent's.
    pub spread: bool,
    /// `name()`: joined (for `!inner` and `name=is.null`), not in the output.
    pub select: Vec<SelectItem>,
}

impl Embed {
    /// The key the embed appears under: the alias, else the name.
    pub fn key(&self) -> &str {
        self.alias.as_deref().unwrap_or(&self.name)
    }
}

/// Filter operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `field op value`, the value read as the field's type (`eq`, `neq`,
    /// `gt`…, `cs`, `cd`, `ov`, `sl`, `sr`, `nxl`, `nxr`, `adj`).
    Cmp(&'static str, String),
    /// `like` / `ilike` (true: `ILIKE`); the pattern has `*` turned into `%`.
    Like(bool, String),
    /// `match` / `imatch` (true: `~*`, case-insensitive): a POSIX regular expression.
    Match(bool, String),
    /// `op(any)` / `op(all)`: `field op ANY|ALL(array)`; the array is a
    /// Postgres array literal, read as an array of the field's type, or of
    /// text for the pattern operators.
    Quant {
        /// The operator applied to each element.
        op: Quantified,
        /// `(all)` rather than `(any)`.
        all: bool,
        /// The array literal.
        value: String,
    },
    /// `in.(a,b)`: the listed values, unquoted.
    In(Vec<String>),
    /// `is.null|not_null|true|false|unknown`, as the SQL words.
    Is(&'static str),
    /// `isdistinct.value`: `IS DISTINCT FROM`.
    IsDistinct(String),
    /// `fts`, `plfts`, `phfts`, `wfts`: the tsquery function, the optional text search configuration `(lang)` and the query.
    Fts(&'static str, Option<String>, String),
}

/// The operators that take `(any)` / `(all)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantified {
    /// A comparison with the field's type (`=`, `>`, `>=`, `<`, `<=`).
    Cmp(&'static str),
    /// `LIKE` / `ILIKE` (with `*` as `%`), `~` / `~*`: text patterns.
    Pattern(&'static str),
}

/// `field=[not.]op.value`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// The filtered column.
    pub field: Field,
    /// `not.` came before the operator.
    pub negate: bool,
    /// The operator and its value.
    pub op: Op,
}

/// A condition: a filter or an `and`/`or` tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    /// One filter.
    Filter(Filter),
    /// `or=(…)` / `and=(…)`, possibly nested.
    Tree {
        /// `or` rather than `and`.
        or: bool,
        /// `not.or` / `not.and`.
        negate: bool,
        /// The conditions combined.
        items: Vec<Cond>,
    },
}

/// `order=` term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderTerm {
    /// `order=rel(col)`: a column of a to-one embedded resource.
    pub relation: Option<String>,
    /// The column to order by.
    pub field: Field,
    /// `.desc` rather than ascending.
    pub desc: bool,
    /// `.nullsfirst` (true) or `.nullslast` (false); None: Postgres' default.
    pub nulls_first: Option<bool>,
}

/// Everything a query string says. Conditions, orders and limits carry the
/// embedding path they apply to (empty for the top level).
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// `select=`; None: every column.
    pub select: Option<Vec<SelectItem>>,
    /// Filters and `and`/`or` trees, each with its embedding path.
    pub conds: Vec<(Vec<String>, Cond)>,
    /// `order=` terms, per embedding path.
    pub orders: Vec<(Vec<String>, Vec<OrderTerm>)>,
    /// `limit=`, per embedding path.
    pub limits: Vec<(Vec<String>, i64)>,
    /// `offset=`, per embedding path.
    pub offsets: Vec<(Vec<String>, i64)>,
    /// `on_conflict=`: the columns an upsert conflicts on.
    pub on_conflict: Option<Vec<String>>,
    /// `columns=`: the body keys a write uses.
    pub columns: Option<Vec<String>>,
    /// Parameters naming function arguments (GET rpc).
    pub args: Vec<(String, String)>,
}

/// Parses a raw query string. `is_arg` says which plain keys may be
/// function arguments (GET rpc): as in PostgREST, such a key is an argument
/// when its value is not a filter (`a=1` is an argument, `a=eq.1` a filter).
pub fn parse(raw: &str, is_arg: &dyn Fn(&str) -> bool) -> Result<Query> {
    let mut q = Query::default();
    for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
        let key = key.trim();
        let value = value.as_ref();
        match key {
            "select" => q.select = Some(parse_select(value)?),
            "on_conflict" => q.on_conflict = Some(parse_names(value)?),
            "columns" => q.columns = Some(parse_names(value)?),
            _ => {
                let (path, last) = match key.rsplit_once('.') {
                    // `not.or` / `not.and` are top-level keys, not a path.
                    Some(("not", _)) => (Vec::new(), key),
                    Some((p, l)) if !p.ends_with(".not") => {
                        (p.split('.').map(str::to_owned).collect::<Vec<_>>(), l)
                    }
                    Some((p, l)) => {
                        let p = p.trim_end_matches(".not");
                        (
                            p.split('.').map(str::to_owned).collect(),
                            if l == "or" { "not.or" } else { "not.and" },
                        )
                    }
                    None => (Vec::new(), key),
                };
                match last {
                    "order" => q.orders.push((path, parse_order(value)?)),
                    // A negative limit is PostgREST's 416 (checked with the range).
                    "limit" => q.limits.push((path, parse_int("limit", value)?)),
                    "offset" => q.offsets.push((path, parse_count("offset", value)?)),
                    "or" | "and" | "not.or" | "not.and" => {
                        let negate = last.starts_with("not.");
                        let or = last.ends_with("or");
                        let inner = value
                            .strip_prefix('(')
                            .and_then(|v| v.strip_suffix(')'))
                            .ok_or_else(|| {
                                perr(
                                    "\"failed to parse logic tree\"",
                                    format!("{value:?}: expected (...)"),
                                )
                            })?;
                        let items = split_top(inner)?
                            .into_iter()
                            .map(parse_tree_item)
                            .collect::<Result<Vec<_>>>()?;
                        q.conds.push((path, Cond::Tree { or, negate, items }));
                    }
                    _ => {
                        let filter = parse_field(last).and_then(|f| parse_filter(f, value, false));
                        match filter {
                            Ok(f) => q.conds.push((path, Cond::Filter(f))),
                            Err(_) if path.is_empty() && is_arg(key) => {
                                q.args.push((key.to_owned(), value.to_owned()));
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
            }
        }
    }
    Ok(q)
}

fn parse_int(what: &str, value: &str) -> Result<i64> {
    value.trim().parse::<i64>().map_err(|_| {
        perr(
            &format!("\"failed to parse {what} parameter\""),
            format!("{value:?} is not an integer"),
        )
    })
}

fn parse_count(what: &str, value: &str) -> Result<i64> {
    value
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| {
            perr(
                &format!("\"failed to parse {what} parameter\""),
                format!("{value:?} is not a non-negative integer"),
            )
        })
}

fn parse_names(value: &str) -> Result<Vec<String>> {
    let names: Vec<String> = value
        .split(',')
        .map(|s| s.trim().trim_matches('"').to_owned())
        .collect();
    if names.iter().any(String::is_empty) {
        return Err(perr(
            "\"failed to parse columns parameter\"",
            format!("{value:?}"),
        ));
    }
    Ok(names)
}

/// How deep parentheses may nest in `select`, logic trees and filter
/// values: the parsers and the SQL writer recurse once per level, and a
/// request nesting thousands of levels overflowed the worker's stack
/// (aborting the process).
pub const MAX_NESTING: i32 = 64;

/// Splits on commas outside parentheses and double quotes.
fn split_top(s: &str) -> Result<Vec<&str>> {
    let mut out = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0usize);
    // `{a,b}` (a Postgres array literal, e.g. `like(any).{a*,b*}`) is one value.
    let mut braces = 0i32;
    let mut escaped = false;
    for (i, ch) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match ch {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '(' if !quoted => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(perr(
                        "\"parentheses nested too deep\"",
                        format!("more than {MAX_NESTING} levels"),
                    ));
                }
            }
            ')' if !quoted => {
                depth -= 1;
                if depth < 0 {
                    return Err(perr("\"unbalanced parentheses\"", s.to_owned()));
                }
            }
            '{' if !quoted => braces += 1,
            '}' if !quoted && braces > 0 => braces -= 1,
            ',' if !quoted && depth == 0 && braces == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 || quoted {
        return Err(perr("\"unbalanced parentheses or quotes\"", s.to_owned()));
    }
    out.push(&s[start..]);
    Ok(out)
}

fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$' || c == ' ' || c == '-'
}

fn check_name(name: &str) -> Result<String> {
    let n = name.trim();
    let n = n
        .strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .unwrap_or(n);
    if n.is_empty() || !n.chars().all(is_name_char) {
        return Err(perr("\"failed to parse name\"", format!("{name:?}")));
    }
    Ok(n.to_owned())
}

/// `col`, `col->a->>b`, `col->0`.
pub fn parse_field(s: &str) -> Result<Field> {
    let s = s.trim();
    let (name, mut rest) = match s.find("->") {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    };
    let name = check_name(name)?;
    let mut json = Vec::new();
    while !rest.is_empty() {
        let (text, tail) = if let Some(t) = rest.strip_prefix("->>") {
            (true, t)
        } else if let Some(t) = rest.strip_prefix("->") {
            (false, t)
        } else {
            return Err(perr("\"failed to parse JSON path\"", s.to_owned()));
        };
        let end = tail.find("->").unwrap_or(tail.len());
        let key = tail[..end].trim_matches('\'').to_owned();
        if key.is_empty() {
            return Err(perr("\"failed to parse JSON path\"", s.to_owned()));
        }
        json.push(JsonStep { text, key });
        rest = &tail[end..];
    }
    Ok(Field { name, json })
}

/// `select=` value.
pub fn parse_select(s: &str) -> Result<Vec<SelectItem>> {
    if s.trim().is_empty() {
        return Ok(vec![SelectItem::Star]);
    }
    split_top(s)?
        .into_iter()
        .map(|item| parse_select_item(item.trim()))
        .collect()
}

fn split_alias(item: &str) -> (Option<&str>, &str) {
    // `alias:rest`, where the colon is not part of a `::` cast.
    let bytes = item.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'(' || b == b'-' {
            break;
        }
        if b == b':' {
            if bytes.get(i + 1) == Some(&b':') {
                break;
            }
            return (Some(&item[..i]), &item[i + 1..]);
        }
    }
    (None, item)
}

fn parse_select_item(item: &str) -> Result<SelectItem> {
    if item == "*" {
        return Ok(SelectItem::Star);
    }
    if item.is_empty() {
        return Err(perr("\"failed to parse select parameter\"", "empty item"));
    }
    let (spread, item) = match item.strip_prefix("...") {
        Some(rest) => (true, rest),
        None => (false, item),
    };
    let (alias, rest) = split_alias(item);
    let alias = alias.map(check_name).transpose()?;
    if !spread && let Some((field, agg, agg_cast)) = parse_aggregate(rest)? {
        let (field, cast) = split_cast(field)?;
        let field = if field == "*" {
            Field {
                name: "*".to_owned(),
                json: Vec::new(),
            }
        } else {
            parse_field(field)?
        };
        return Ok(SelectItem::Column {
            field,
            cast,
            alias,
            agg: Some(agg),
            agg_cast,
        });
    }
    if let Some(open) = rest.find('(') {
        let inner = rest[open + 1..].strip_suffix(')').ok_or_else(|| {
            perr(
                "\"failed to parse select parameter\"",
                format!("{item:?}: expected ) at the end"),
            )
        })?;
        let mut parts = rest[..open].split('!');
        let name = check_name(parts.next().unwrap_or_default())?;
        let (mut hint, mut inner_join) = (None, false);
        for p in parts {
            match p {
                "inner" => inner_join = true,
                "left" => inner_join = false,
                h => hint = Some(check_name(h)?),
            }
        }
        let select = if inner.trim().is_empty() {
            Vec::new()
        } else {
            parse_select(inner)?
        };
        return Ok(SelectItem::Embed(Embed {
            alias,
            name,
            hint,
            inner: inner_join,
            spread,
            select,
        }));
    }
    if spread {
        return Err(perr(
            "\"failed to parse select parameter\"",
            format!("{item:?}: a spread needs a resource, ...name(columns)"),
        ));
    }
    let (field, cast) = split_cast(rest)?;
    Ok(SelectItem::Column {
        field: parse_field(field)?,
        cast,
        alias,
        agg: None,
        agg_cast: None,
    })
}

/// `field::type` → (field, checked type).
fn split_cast(s: &str) -> Result<(&str, Option<String>)> {
    match s.split_once("::") {
        Some((f, c)) => Ok((f, Some(check_cast(c)?))),
        None => Ok((s, None)),
    }
}

fn check_cast(c: &str) -> Result<String> {
    let c = c.trim().to_ascii_lowercase();
    if !CASTS.contains(&c.as_str()) {
        return Err(perr(
            "\"unsupported cast\"",
            format!("{c:?} is not one of {}", CASTS.join(", ")),
        ));
    }
    Ok(c)
}

/// `count()`, `field.sum()`, `field::cast.avg()::cast`: (field with its
/// cast, function, cast of the result).
fn parse_aggregate(s: &str) -> Result<Option<(&str, Agg, Option<String>)>> {
    let Some(open) = s.find("()") else {
        return Ok(None);
    };
    let tail = &s[open + 2..];
    let agg_cast = match tail.strip_prefix("::") {
        Some(c) => Some(check_cast(c)?),
        None if tail.is_empty() => None,
        None => return Ok(None),
    };
    let head = &s[..open];
    if head == "count" {
        return Ok(Some(("*", Agg::Count, agg_cast)));
    }
    let Some((field, func)) = head.rsplit_once('.') else {
        return Ok(None);
    };
    match Agg::parse(func) {
        Some(agg) if !field.is_empty() => Ok(Some((field, agg, agg_cast))),
        _ => Ok(None),
    }
}

/// Types `::cast` may name (never spliced from input: only these strings).
pub const CASTS: [&str; 22] = [
    "text",
    "varchar",
    "int",
    "int2",
    "int4",
    "int8",
    "integer",
    "bigint",
    "smallint",
    "numeric",
    "float4",
    "float8",
    "real",
    "boolean",
    "bool",
    "json",
    "jsonb",
    "date",
    "timestamp",
    "timestamptz",
    "uuid",
    "time",
];

/// `order=` value.
pub fn parse_order(s: &str) -> Result<Vec<OrderTerm>> {
    split_top(s)?
        .into_iter()
        .map(|term| {
            let term = term.trim();
            // `rel(col).desc`: a column of an embedded resource.
            let (relation, field, mods) = match term.find('(') {
                Some(open) => {
                    let close = term
                        .rfind(')')
                        .filter(|c| *c > open)
                        .ok_or_else(|| perr("\"failed to parse order\"", format!("{term:?}")))?;
                    let mods = &term[close + 1..];
                    if !(mods.is_empty() || mods.starts_with('.')) {
                        return Err(perr("\"failed to parse order\"", format!("{term:?}")));
                    }
                    (
                        Some(check_name(&term[..open])?),
                        &term[open + 1..close],
                        mods.strip_prefix('.').unwrap_or(mods),
                    )
                }
                None => match term.split_once('.') {
                    Some((f, m)) => (None, f, m),
                    None => (None, term, ""),
                },
            };
            let mut t = OrderTerm {
                relation,
                field: parse_field(field)?,
                desc: false,
                nulls_first: None,
            };
            for p in mods.split('.').filter(|p| !p.is_empty()) {
                match p {
                    "asc" => t.desc = false,
                    "desc" => t.desc = true,
                    "nullsfirst" => t.nulls_first = Some(true),
                    "nullslast" => t.nulls_first = Some(false),
                    other => {
                        return Err(perr(
                            "\"failed to parse order\"",
                            format!("unknown modifier {other:?}"),
                        ));
                    }
                }
            }
            Ok(t)
        })
        .collect()
}

/// `col.op.value` / `col.not.op.value` / `and(...)` / `not.or(...)` inside a tree.
fn parse_tree_item(item: &str) -> Result<Cond> {
    let item = item.trim();
    let (negate, body) = match item.strip_prefix("not.") {
        Some(b) if b.starts_with("and(") || b.starts_with("or(") => (true, b),
        _ => (false, item),
    };
    for (prefix, or) in [("and(", false), ("or(", true)] {
        if let Some(inner) = body.strip_prefix(prefix) {
            let inner = inner
                .strip_suffix(')')
                .ok_or_else(|| perr("\"failed to parse logic tree\"", format!("{item:?}")))?;
            let items = split_top(inner)?
                .into_iter()
                .map(parse_tree_item)
                .collect::<Result<Vec<_>>>()?;
            return Ok(Cond::Tree { or, negate, items });
        }
    }
    let (field, rest) = item
        .split_once('.')
        .ok_or_else(|| perr("\"failed to parse logic tree\"", format!("{item:?}")))?;
    Ok(Cond::Filter(parse_filter(parse_field(field)?, rest, true)?))
}

fn unquote(v: &str) -> String {
    match v.strip_prefix('"').and_then(|x| x.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => v.to_owned(),
    }
}

/// `[not.]op.value` for `field`.
pub fn parse_filter(field: Field, s: &str, in_tree: bool) -> Result<Filter> {
    let (negate, s) = match s.strip_prefix("not.") {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (op, value) = s.split_once('.').ok_or_else(|| {
        perr(
            "\"failed to parse filter\"",
            format!("{s:?}: expected operator.value"),
        )
    })?;
    let val = || {
        if in_tree {
            unquote(value)
        } else {
            value.to_owned()
        }
    };
    let (op_name, paren) = match op.split_once('(') {
        Some((o, rest)) => {
            let inner = rest.strip_suffix(')').ok_or_else(|| {
                perr(
                    "\"failed to parse filter\"",
                    format!("{op:?}: expected operator(modifier)"),
                )
            })?;
            (o, Some(inner))
        }
        None => (op, None),
    };
    let quantified = |q: Quantified| -> Result<Op> {
        match paren {
            None => Ok(match q {
                Quantified::Cmp(o) => Op::Cmp(o, val()),
                Quantified::Pattern(o @ ("LIKE" | "ILIKE")) => {
                    Op::Like(o == "ILIKE", val().replace('*', "%"))
                }
                Quantified::Pattern(o) => Op::Match(o == "~*", val()),
            }),
            Some(m @ ("any" | "all")) => {
                let v = val();
                let value = match q {
                    Quantified::Pattern("LIKE" | "ILIKE") => v.replace('*', "%"),
                    _ => v,
                };
                Ok(Op::Quant {
                    op: q,
                    all: m == "all",
                    value,
                })
            }
            Some(other) => Err(perr(
                "\"failed to parse filter\"",
                format!("{op_name}({other}): expected (any) or (all)"),
            )),
        }
    };
    let plain = |o: &'static str| -> Result<Op> {
        match paren {
            None => Ok(Op::Cmp(o, val())),
            Some(_) => Err(perr(
                "\"failed to parse filter\"",
                format!("unknown operator {op:?}"),
            )),
        }
    };
    let fts = |kind: &'static str| -> Result<Op> {
        let lang = paren.map(check_name).transpose()?;
        Ok(Op::Fts(kind, lang, val()))
    };
    let op = match op_name {
        "eq" => quantified(Quantified::Cmp("="))?,
        "gt" => quantified(Quantified::Cmp(">"))?,
        "gte" => quantified(Quantified::Cmp(">="))?,
        "lt" => quantified(Quantified::Cmp("<"))?,
        "lte" => quantified(Quantified::Cmp("<="))?,
        "like" => quantified(Quantified::Pattern("LIKE"))?,
        "ilike" => quantified(Quantified::Pattern("ILIKE"))?,
        "match" => quantified(Quantified::Pattern("~"))?,
        "imatch" => quantified(Quantified::Pattern("~*"))?,
        "neq" => plain("<>")?,
        "cs" => plain("@>")?,
        "cd" => plain("<@")?,
        "ov" => plain("&&")?,
        "sl" => plain("<<")?,
        "sr" => plain(">>")?,
        "nxr" => plain("&<")?,
        "nxl" => plain("&>")?,
        "adj" => plain("-|-")?,
        "fts" => fts("to_tsquery")?,
        "plfts" => fts("plainto_tsquery")?,
        "phfts" => fts("phraseto_tsquery")?,
        "wfts" => fts("websearch_to_tsquery")?,
        _ if paren.is_some() => {
            return Err(perr(
                "\"failed to parse filter\"",
                format!("unknown operator {op:?}"),
            ));
        }
        "isdistinct" => Op::IsDistinct(val()),
        "is" => Op::Is(match value.to_ascii_lowercase().as_str() {
            "null" => "NULL",
            "not_null" => "NOT NULL",
            "true" => "TRUE",
            "false" => "FALSE",
            "unknown" => "UNKNOWN",
            other => {
                return Err(perr(
                    "\"failed to parse filter\"",
                    format!("is.{other}: expected null, not_null, true, false or unknown"),
                ));
            }
        }),
        "in" => {
            let inner = value
                .strip_prefix('(')
                .and_then(|v| v.strip_suffix(')'))
                .ok_or_else(|| {
                    perr(
                        "\"failed to parse filter\"",
                        format!("in.{value}: expected in.(a,b)"),
                    )
                })?;
            let items = if inner.is_empty() {
                Vec::new()
            } else {
                split_top(inner)?
                    .into_iter()
                    .map(|v| unquote(v.trim()))
                    .collect()
            };
            Op::In(items)
        }
        other => {
            return Err(perr(
                "\"failed to parse filter\"",
                format!("unknown operator {other:?}"),
            ));
        }
    };
    filter(field, negate, op)
}

fn filter(field: Field, negate: bool, op: Op) -> Result<Filter> {
    Ok(Filter { field, negate, op })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_args(_: &str) -> bool {
        false
    }

    #[test]
    fn select_items() {
        let s = parse_select("id,n:name,data->a->>b,price::text,posts!inner(id,c:comments(*)),*")
            .expect("parses");
        assert_eq!(s.len(), 6);
        assert!(matches!(&s[1], SelectItem::Column { alias: Some(a), .. } if a == "n"));
        match &s[2] {
            SelectItem::Column { field, .. } => {
                assert_eq!(field.json.len(), 2);
                assert_eq!(field.default_alias(), "b");
            }
            other => panic!("{other:?}"),
        }
        match &s[4] {
            SelectItem::Embed(e) => {
                assert!(e.inner);
                assert_eq!(e.select.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_select("a::evil; drop").is_err());
        assert!(parse_select("a(b").is_err());
        let deep = |n: usize| format!("{}x{}", "a(".repeat(n), ")".repeat(n));
        assert!(parse_select(&deep(MAX_NESTING as usize)).is_ok());
        assert!(parse_select(&deep(MAX_NESTING as usize + 1)).is_err());
        assert!(parse_select(&deep(100_000)).is_err());
        assert!(parse_select("a\"b").is_err());
    }

    #[test]
    fn aggregates_spreads_and_related_orders() {
        let s = parse_select("count(),total:amount::int.sum()::text,...rel(a),e(),max")
            .expect("parses");
        assert!(matches!(
            &s[0],
            SelectItem::Column { field, agg: Some(Agg::Count), .. } if field.name == "*"
        ));
        assert!(matches!(
            &s[1],
            SelectItem::Column { field, cast: Some(c), alias: Some(a), agg: Some(Agg::Sum), agg_cast: Some(ac) }
                if field.name == "amount" && c == "int" && a == "total" && ac == "text"
        ));
        assert!(matches!(&s[2], SelectItem::Embed(e) if e.spread && e.name == "rel"));
        assert!(matches!(&s[3], SelectItem::Embed(e) if e.select.is_empty()));
        // Not an aggregate: a column named like one.
        assert!(
            matches!(&s[4], SelectItem::Column { field, agg: None, .. } if field.name == "max")
        );
        assert!(parse_select("a.sum()::evil").is_err());
        assert!(parse_select("...a").is_err());
        let o = parse_order("rel(col->>k).desc.nullslast,b").expect("parses");
        assert_eq!(o[0].relation.as_deref(), Some("rel"));
        assert_eq!((o[0].desc, o[0].nulls_first), (true, Some(false)));
        assert_eq!(o[0].field.json.len(), 1);
        assert_eq!(o[1].relation, None);
        assert!(parse_order("rel(col)x").is_err());
    }

    #[test]
    fn filters_and_trees() {
        let q = parse(
            "id=gt.1&name=not.like.a*&or=(a.eq.1,and(b.in.(1,\"x,y\"),c.is.null))&posts.order=id.desc.nullslast&limit=5&posts.limit=2&not.or=(a.eq.2)",
            &no_args,
        )
        .expect("parses");
        assert_eq!(q.conds.len(), 4);
        assert!(
            matches!(&q.conds[1].1, Cond::Filter(Filter { negate: true, op: Op::Like(false, v), .. }) if v == "a%")
        );
        match &q.conds[2].1 {
            Cond::Tree {
                or: true, items, ..
            } => match &items[1] {
                Cond::Tree {
                    or: false, items, ..
                } => {
                    assert!(
                        matches!(&items[0], Cond::Filter(Filter { op: Op::In(v), .. }) if v == &["1", "x,y"])
                    );
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
        assert!(matches!(&q.conds[3].1, Cond::Tree { negate: true, .. }));
        assert_eq!(q.orders[0].0, vec!["posts".to_owned()]);
        assert_eq!(q.limits, vec![(vec![], 5), (vec!["posts".to_owned()], 2)]);
        for bad in [
            "id=eq",
            "id=zz.1",
            "or=a.eq.1",
            "or=(a.eq.1",
            "limit=x",
            "offset=-1",
            "order=a.sideways",
            "id=is.maybe",
        ] {
            assert!(parse(bad, &no_args).is_err(), "{bad}");
        }
    }
}
