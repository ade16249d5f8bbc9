//! rpc statements: the function call (`"schema"."fn"(…)`) with its
//! arguments as bound parameters, and the `SELECT`s that wrap a call whose
//! result is not a set of rows (the read planner wraps the others, with
//! [`super::plan::Source::Call`]).

use super::plan::{call, text_arg};
use super::{Arg, Sql, push_qualified};
use crate::schema::Function;

/// `"schema"."fn"($1::type)`: the whole body as the one argument (json,
/// jsonb, text, xml, or bytes for bytea).
pub fn call_raw(f: &Function, body: &[u8]) -> Sql {
    let mut sql = Sql::default();
    push_qualified(&mut sql, &f.schema, &f.name);
    sql.push("(");
    let ty = f.args.first().map_or("json", |a| a.ty.as_str());
    if ty == "bytea" {
        sql.bind(Arg::Bytes(body.to_vec()));
    } else {
        sql.bind(Arg::Text(String::from_utf8_lossy(body).into_owned()));
    }
    sql.push("::");
    // One of the fixed type names (a raw-body function takes only these).
    sql.push(match ty {
        "jsonb" => "jsonb",
        "text" => "text",
        "xml" => "xml",
        "bytea" => "bytea",
        _ => "json",
    });
    sql.push(")");
    sql
}

/// `"schema"."fn"("a" := (SELECT _a."a" FROM json_to_record($1::json) AS
/// _a("a" type)), …)`: the `given` arguments from a JSON object (a POST
/// body or form), bound as `$1` (`json` is called only when there are some).
pub fn call_json(f: &Function, given: &[String], json: impl FnOnce() -> String) -> Sql {
    let mut sql = Sql::default();
    if !given.is_empty() {
        sql.args.push(Arg::Text(json()));
    }
    call(&mut sql, f, given, |sql, a| {
        sql.push("(SELECT _a.");
        sql.ident(&a.name);
        sql.push(" FROM json_to_record($1::json) AS _a(");
        sql.ident(&a.name);
        sql.push(" ");
        sql.push(&a.ty);
        sql.push("))");
    });
    sql
}

/// `"schema"."fn"("a" := CAST($1 AS type), …)`: the `given` arguments from
/// the query string (the last value of a repeated name).
pub fn call_query(f: &Function, given: &[String], args: &[(String, String)]) -> Sql {
    let mut sql = Sql::default();
    call(&mut sql, f, given, |sql, a| {
        let v = args
            .iter()
            .rev()
            .find(|(k, _)| k == &a.name)
            .map_or("", |(_, v)| v.as_str());
        text_arg(sql, v, &a.ty);
    });
    sql
}

/// `SELECT <call>` of a function returning `void`.
pub fn select_void(call: Sql) -> Sql {
    let mut sql = Sql {
        text: String::with_capacity(call.text.len() + 7),
        args: call.args,
    };
    sql.push("SELECT ");
    sql.push(&call.text);
    sql
}

/// `(NULL, count, body)` of a function returning a set of scalars: a JSON
/// array of them.
pub fn select_scalars(call: Sql) -> Sql {
    let mut sql = Sql {
        text: String::with_capacity(call.text.len() + 96),
        args: call.args,
    };
    sql.push(
        "SELECT NULL::bigint, pg_catalog.count(*), coalesce(json_agg(_s.v), '[]')::text FROM ",
    );
    sql.push(&call.text);
    sql.push(" AS _s(v)");
    sql
}

/// `(NULL, 1, body)` of a function returning one scalar: its JSON.
pub fn select_scalar(call: Sql) -> Sql {
    let mut sql = Sql {
        text: String::with_capacity(call.text.len() + 64),
        args: call.args,
    };
    sql.push("SELECT NULL::bigint, 1::bigint, coalesce(to_json(");
    sql.push(&call.text);
    sql.push(")::text, 'null')");
    sql
}
