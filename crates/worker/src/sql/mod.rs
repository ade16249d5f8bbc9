//! Every SQL text the worker sends is built in this module, from typed
//! values: the read planner ([`plan`]), the write statements ([`write`]),
//! rpc calls ([`rpc`]), the catalog query ([`catalog`]) and the fixed
//! statements of a connection and a transaction. The rest
//! of the worker passes parsed requests, schema entries and preferences in,
//! and gets a [`Sql`] (text and bound parameters) out, whose text it can
//! read but not write.
//!
//! Every identifier written here comes from the schema cache and is quoted;
//! every value from the request is a bound parameter.

pub mod catalog;
pub mod plan;
pub mod rpc;
pub mod write;

/// The statements every connection prepares when it opens (see
/// [`crate::conns`]).
pub const BEGIN: &str = "BEGIN";
pub const BEGIN_READ_ONLY: &str = "BEGIN READ ONLY";
pub const COMMIT: &str = "COMMIT";
pub const ROLLBACK: &str = "ROLLBACK";

/// What the request's transaction sets before its statement: the role, the
/// JWT claims, method, path and headers, and the statement timeout.
pub const SET_CONFIG: &str = "SELECT set_config('role', $1, true), \
     set_config('request.jwt.claims', $2, true), set_config('request.method', $3, true), \
     set_config('request.path', $4, true), set_config('request.headers', $5, true), \
     set_config('statement_timeout', $6, true)";

/// The schema-reload channel (PostgREST's `NOTIFY pgrst, 'reload schema'`).
pub const LISTEN: &str = "LISTEN pgrst";

/// `Prefer: tx=rollback`: deferred constraints are checked before the
/// `ROLLBACK`.
pub const SET_CONSTRAINTS_IMMEDIATE: &str = "SET CONSTRAINTS ALL IMMEDIATE";

/// `Prefer: timezone=`: the zone (`$1`, text) for the transaction.
pub const SET_TIMEZONE: &str = "SELECT set_config('timezone', $1, true)";

/// The column of the rows an upsert inserted (its `pgrst.inserted` counter).
const INSERTED: &str = ", nullif(current_setting('pgrst.inserted', true), '')::int8";

/// A bound value.
#[derive(Debug, Clone)]
pub enum Arg {
    Text(String),
    TextArray(Vec<String>),
    Int(i64),
    Bytes(Vec<u8>),
}

impl Arg {
    /// The Postgres type the parameter is bound as.
    pub fn pg_type(&self) -> tokio_postgres::types::Type {
        use tokio_postgres::types::Type;
        match self {
            Arg::Text(_) => Type::TEXT,
            Arg::TextArray(_) => Type::TEXT_ARRAY,
            Arg::Int(_) => Type::INT8,
            Arg::Bytes(_) => Type::BYTEA,
        }
    }

    /// The parameter for tokio-postgres.
    pub fn as_sql(&self) -> &(dyn tokio_postgres::types::ToSql + Sync) {
        match self {
            Arg::Text(s) => s,
            Arg::TextArray(v) => v,
            Arg::Int(i) => i,
            Arg::Bytes(b) => b,
        }
    }
}

/// SQL text with its parameters.
#[derive(Debug, Default)]
pub struct Sql {
    text: String,
    args: Vec<Arg>,
}

impl Sql {
    /// The statement's text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Its parameters, `$1` first.
    pub fn args(&self) -> &[Arg] {
        &self.args
    }

    /// Pushes fixed words or quoted identifiers.
    fn push(&mut self, s: &str) {
        self.text.push_str(s);
    }

    /// Binds a parameter and writes its placeholder.
    fn bind(&mut self, arg: Arg) {
        self.args.push(arg);
        self.text.push('$');
        write_number(&mut self.text, self.args.len());
    }

    /// Writes a quoted identifier.
    fn ident(&mut self, name: &str) {
        write_ident(&mut self.text, name);
    }
}

/// `EXPLAIN (FORMAT JSON|TEXT[, ANALYZE, VERBOSE, SETTINGS, BUFFERS, WAL])`
/// of a statement (`Accept: application/vnd.pgrst.plan…`), its parameters
/// unchanged, as PostgREST's `explainF`.
pub(crate) fn explain(stmt: Sql, json: bool, options: crate::response::PlanOptions) -> Sql {
    let mut text = String::with_capacity(stmt.text.len() + 64);
    text.push_str(if json {
        "EXPLAIN (FORMAT JSON"
    } else {
        "EXPLAIN (FORMAT TEXT"
    });
    for name in options.names() {
        text.push_str(", ");
        text.push_str(&name.to_ascii_uppercase());
    }
    text.push_str(") ");
    text.push_str(&stmt.text);
    Sql {
        text,
        args: stmt.args,
    }
}

/// Appends `n` in decimal.
fn write_number(out: &mut String, n: usize) {
    use std::fmt::Write as _;
    // Writing to a String cannot fail.
    let _ = write!(out, "{n}");
}

/// Appends `"name"` with embedded quotes doubled.
fn write_ident(out: &mut String, name: &str) {
    out.reserve(name.len() + 2);
    out.push('"');
    let mut parts = name.split('"');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    for part in parts {
        out.push_str("\"\"");
        out.push_str(part);
    }
    out.push('"');
}

/// `"name"` with embedded quotes doubled.
fn ident(name: &str) -> String {
    let mut out = String::new();
    write_ident(&mut out, name);
    out
}

fn qualified(schema: &str, name: &str) -> String {
    let mut out = String::with_capacity(schema.len() + name.len() + 5);
    write_ident(&mut out, schema);
    out.push('.');
    write_ident(&mut out, name);
    out
}

/// `"schema"."table"`.
fn push_qualified(sql: &mut Sql, schema: &str, name: &str) {
    sql.ident(schema);
    sql.push(".");
    sql.ident(name);
}

/// `"a", "b", …`
fn push_idents(sql: &mut Sql, names: &[String]) {
    for (i, n) in names.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.ident(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_with_quotes_doubled() {
        assert_eq!(ident("items"), r#""items""#);
        assert_eq!(ident(r#"we"ird""#), r#""we""ird""""#);
        assert_eq!(ident(""), r#""""#);
        assert_eq!(qualified("public", r#"a"b"#), r#""public"."a""b""#);
        let mut sql = Sql::default();
        push_qualified(&mut sql, "s", "t");
        sql.bind(Arg::Int(1));
        sql.bind(Arg::Int(2));
        assert_eq!(sql.text(), r#""s"."t"$1$2"#);
        let mut sql = Sql::default();
        push_idents(&mut sql, &["a".to_owned(), "b\"".to_owned()]);
        assert_eq!(sql.text(), r##""a", "b""""##);
    }
}
