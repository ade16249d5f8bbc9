//! Write statements: `INSERT` (with `ON CONFLICT` for upserts), `UPDATE`
//! and `DELETE` on the target aliased `"t0"` (the `WHERE` of `UPDATE` and
//! `DELETE` is [`super::plan::write_conditions`]), and the statements that
//! wrap them to count or return the written rows. The body is one bound
//! parameter read by `json_populate_record[set]`.

use super::{Arg, INSERTED, Sql, push_idents, push_qualified};
use crate::prefer::Resolution;
use crate::schema::{Column, Table};

/// What a body holds: its rows and their columns (all checked against
/// the table).
#[derive(Debug, Clone, Copy)]
pub struct Rows<'a> {
    /// The JSON text.
    pub body: &'a [u8],
    /// The columns written (the objects' keys, or `columns=`).
    pub cols: &'a [String],
    /// The body is an array (else one object).
    pub is_array: bool,
    /// How many objects it holds.
    pub len: usize,
    /// `Prefer: missing=default`: a missing key takes the column's DEFAULT.
    pub missing_default: bool,
}

/// `INSERT INTO "s"."t" AS "t0" …` of the body's rows; with a resolution
/// and a conflict target (`on_conflict`, else the primary key), an upsert.
/// With `merge-duplicates` the statement counts the rows it inserted in
/// `pgrst.inserted`, as PostgREST does.
pub fn insert(
    table: &Table,
    rows: Rows<'_>,
    resolution: Option<Resolution>,
    target: &[String],
) -> Sql {
    insert_where(table, rows, resolution, target, &[])
}

/// PUT's single-row upsert (PostgREST's `MutationSingleUpsert`): the
/// body's rows whose primary key is the URL's (`key`: each key column with
/// the value of its `eq` filter, read as the column's type) inserted, or
/// merged over the existing row (`ON CONFLICT (pk) DO UPDATE` of every
/// sent column), counted in `pgrst.inserted`. The body holds every key
/// column (checked by the caller).
pub fn put(table: &Table, rows: Rows<'_>, key: &[(&Column, &str)]) -> Sql {
    insert_where(
        table,
        rows,
        Some(Resolution::MergeDuplicates),
        &table.pk,
        key,
    )
}

fn insert_where(
    table: &Table,
    rows: Rows<'_>,
    resolution: Option<Resolution>,
    target: &[String],
    key: &[(&Column, &str)],
) -> Sql {
    let merge = resolution == Some(Resolution::MergeDuplicates);
    let mut sql = Sql::default();
    sql.push("INSERT INTO ");
    push_qualified(&mut sql, &table.schema, &table.name);
    sql.push(" AS \"t0\"");
    if rows.is_array && rows.len == 0 {
        // Nothing to insert: a statement that writes no row.
        sql.push(" SELECT * FROM ");
        push_qualified(&mut sql, &table.schema, &table.name);
        sql.push(" WHERE false");
    } else if rows.cols.is_empty() {
        sql.push(" DEFAULT VALUES");
    } else {
        sql.push(" (");
        push_idents(&mut sql, rows.cols);
        sql.push(") SELECT ");
        push_idents(&mut sql, rows.cols);
        sql.push(" FROM ");
        push_body_rows(&mut sql, table, rows, false);
        sql.push(" _");
        let mut sep = " WHERE ";
        for (col, value) in key {
            sql.push(sep);
            sql.push("_.");
            sql.ident(&col.name);
            sql.push(" = CAST(");
            sql.bind(Arg::Text((*value).to_owned()));
            sql.push(" AS ");
            sql.push(&col.ty);
            sql.push(")");
            sep = " AND ";
        }
        if merge {
            // After the key: only rows that will be written are counted.
            sql.push(sep);
            sql.push(inserted_counter(true));
        }
    }
    if let Some(res) = resolution
        && !target.is_empty()
    {
        sql.push(" ON CONFLICT (");
        push_idents(&mut sql, target);
        sql.push(") ");
        if res == Resolution::MergeDuplicates && !rows.cols.is_empty() {
            // Every sent column, the key included (a key-only body still
            // returns the row), as PostgREST.
            sql.push("DO UPDATE SET ");
            for (i, c) in rows.cols.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.ident(c);
                sql.push(" = EXCLUDED.");
                sql.ident(c);
            }
            sql.push(" WHERE ");
            sql.push(inserted_counter(false));
        } else {
            sql.push("DO NOTHING");
        }
    }
    sql
}

/// `UPDATE "s"."t" AS "t0" SET … FROM (…) _r` of the body's one object
/// (its `WHERE` follows).
pub fn update(table: &Table, rows: Rows<'_>) -> Sql {
    let mut sql = Sql::default();
    sql.push("UPDATE ");
    push_qualified(&mut sql, &table.schema, &table.name);
    sql.push(" AS \"t0\" SET ");
    for (i, c) in rows.cols.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.ident(c);
        sql.push(" = _r.");
        sql.ident(c);
    }
    sql.push(" FROM (SELECT * FROM ");
    push_body_rows(&mut sql, table, rows, true);
    sql.push(") _r");
    sql
}

/// `DELETE FROM "s"."t" AS "t0"` (its `WHERE` follows).
pub fn delete(table: &Table) -> Sql {
    let mut sql = Sql::default();
    sql.push("DELETE FROM ");
    push_qualified(&mut sql, &table.schema, &table.name);
    sql.push(" AS \"t0\"");
    sql
}

/// A write answering without its rows: `(NULL, count, '', inserted)` of an
/// upsert with `merge-duplicates`, whose inserted count decides its status.
pub fn count_merged(stmt: Sql) -> Sql {
    let mut sql = Sql {
        text: String::with_capacity(stmt.text.len() + 128),
        args: stmt.args,
    };
    sql.push("WITH pgrst_source AS (");
    sql.push(&stmt.text);
    sql.push(" RETURNING 1) SELECT NULL::bigint, pg_catalog.count(*), ''");
    sql.push(INSERTED);
    sql.push(" FROM pgrst_source");
    sql
}

/// `WITH pgrst_source AS (<write> RETURNING "t0".*)`: the written rows, for
/// the read planner to select from ([`super::plan::Source::Written`]).
pub fn returning_all(stmt: Sql) -> Sql {
    let mut sql = Sql {
        text: String::with_capacity(stmt.text.len() + 48),
        args: stmt.args,
    };
    sql.push("WITH pgrst_source AS (");
    sql.push(&stmt.text);
    sql.push(" RETURNING \"t0\".*)");
    sql
}

/// `'name'` as an SQL string literal (names from the catalog).
fn sql_literal(out: &mut String, s: &str) {
    out.push('\'');
    out.push_str(&s.replace('\'', "''"));
    out.push('\'');
}

/// The body's rows as a record set of the table's type (one record with
/// `single_row`, for an update). With `Prefer: missing=default`, each
/// object is first merged over an object of the listed columns' defaults
/// (evaluated per row, like PostgREST's `jsonb_build_object(defaults) ||
/// row`), so a missing key takes its column's DEFAULT and an explicit
/// `null` stays NULL.
fn push_body_rows(sql: &mut Sql, table: &Table, rows: Rows<'_>, single_row: bool) {
    let defaults: Vec<(&str, &str)> = if rows.missing_default {
        rows.cols
            .iter()
            .filter_map(|c| {
                let col = table.column(c)?;
                Some((col.name.as_str(), col.default.as_deref()?))
            })
            .collect()
    } else {
        Vec::new()
    };
    let text = Arg::Text(String::from_utf8_lossy(rows.body).into_owned());
    let func = if single_row {
        "populate_record"
    } else {
        "populate_recordset"
    };
    if defaults.is_empty() {
        sql.push("json_");
        sql.push(func);
        sql.push("(NULL::");
        push_qualified(sql, &table.schema, &table.name);
        sql.push(", ");
        if rows.is_array || single_row {
            sql.bind(text);
            sql.push("::json)");
        } else {
            sql.push("json_build_array(");
            sql.bind(text);
            sql.push("::json))");
        }
        return;
    }
    let mut obj = String::from("jsonb_build_object(");
    for (i, (name, expr)) in defaults.iter().enumerate() {
        if i > 0 {
            obj.push_str(", ");
        }
        sql_literal(&mut obj, name);
        obj.push_str(", ");
        obj.push('(');
        obj.push_str(expr);
        obj.push(')');
    }
    obj.push(')');
    sql.push("jsonb_");
    sql.push(func);
    sql.push("(NULL::");
    push_qualified(sql, &table.schema, &table.name);
    if single_row {
        sql.push(", ");
        sql.push(&obj);
        sql.push(" || ");
        sql.bind(text);
        sql.push("::jsonb)");
        return;
    }
    sql.push(", (SELECT jsonb_agg(");
    sql.push(&obj);
    sql.push(" || _e) FROM jsonb_array_elements(");
    if rows.is_array {
        sql.bind(text);
        sql.push("::jsonb");
    } else {
        sql.push("jsonb_build_array(");
        sql.bind(text);
        sql.push("::jsonb)");
    }
    sql.push(") _e))");
}

/// Counts a row in `pgrst.inserted` (+1 for every row offered to INSERT,
/// -1 for every row ON CONFLICT updates), as PostgREST does.
fn inserted_counter(add: bool) -> &'static str {
    if add {
        "set_config('pgrst.inserted', (coalesce(nullif(current_setting('pgrst.inserted', true), '')::int, 0) + 1)::text, true) <> '0'"
    } else {
        "set_config('pgrst.inserted', (coalesce(nullif(current_setting('pgrst.inserted', true), '')::int, 0) - 1)::text, true) <> '-1'"
    }
}
