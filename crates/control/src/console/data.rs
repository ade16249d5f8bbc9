//! The table browser: tables and views of the tenant's `public` schema
//! (the schema the worker exposes), rows paginated, filtered and sorted by
//! a column, one row edited or added. Everything runs as the tenant's owner
//! through the SQL endpoint's code (`sql::run` with bound parameters);
//! identifiers are quoted, values are always parameters cast to the
//! column's type.

use std::collections::HashMap;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use http::StatusCode;
use maud::{Markup, html};
use serde_json::Value;

use super::pages::{cell, run_as_owner, sql_error};
use super::{Console, Ctx, Fields, Tab, error_page, redirect, tenant_page, tenant_page_status};
use crate::store::TenantRow;

/// The schema the table browser shows (the worker's exposed schema).
pub const SCHEMA: &str = "public";
const PAGE: usize = 50;

/// `"name"` with embedded quotes doubled.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[derive(Debug, Clone)]
struct Column {
    name: String,
    /// For display (`character varying(20)`).
    ty: String,
    /// For casts (`character varying`), as Postgres quotes it.
    cast: String,
    pk: bool,
    generated: bool,
    has_default: bool,
    not_null: bool,
}

struct Table {
    kind: String,
    columns: Vec<Column>,
}

impl Table {
    fn editable(&self) -> bool {
        matches!(self.kind.as_str(), "r" | "p") && self.columns.iter().any(|c| c.pk)
    }
    fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
    fn select_list(&self) -> String {
        self.columns
            .iter()
            .map(|c| format!("{}::text AS {}", ident(&c.name), ident(&c.name)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn qualified(table: &str) -> String {
    format!("{}.{}", ident(SCHEMA), ident(table))
}

async fn row_of(c: &Console, id: &str) -> Result<TenantRow, Response> {
    match crate::store::get(&c.app.db, id).await {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(error_page(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such tenant.",
        )),
        Err(_) => Err(error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            "The control database is unavailable.",
        )),
    }
}

const COLUMNS: &str = r#"
SELECT a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS ty,
       a.atttypid::regtype::text AS "cast", c.relkind::text AS kind,
       EXISTS (SELECT 1 FROM pg_index i
               WHERE i.indrelid = c.oid AND i.indisprimary AND a.attnum = ANY (i.indkey)) AS pk,
       a.attgenerated <> '' AS generated,
       (a.atthasdef OR a.attidentity <> '') AS has_default,
       a.attnotnull AS not_null
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r','v','m','p','f')
  AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum"#;

/// The table's columns; `Err` with the page to show.
async fn describe(
    c: &Console,
    ctx: &Ctx,
    tenant: &TenantRow,
    table: &str,
) -> Result<Table, Response> {
    let params = [Value::from(SCHEMA), Value::from(table)];
    let rows = run_as_owner(c, tenant, COLUMNS, Some(&params))
        .await
        .map_err(|e| {
            tenant_page_status(
                ctx,
                &tenant.id,
                Tab::Tables,
                "Tables",
                StatusCode::BAD_GATEWAY,
                sql_error(COLUMNS, &e),
            )
        })?;
    if rows.is_empty() {
        return Err(tenant_page_status(
            ctx,
            &tenant.id,
            Tab::Tables,
            "Tables",
            StatusCode::NOT_FOUND,
            html! { p.flash.error role="alert" { "There is no table or view " code { (table) } " in schema " (SCHEMA) "." } },
        ));
    }
    let s = |r: &Value, k: &str| r[k].as_str().unwrap_or("").to_owned();
    let b = |r: &Value, k: &str| r[k] == true;
    Ok(Table {
        kind: s(&rows[0], "kind"),
        columns: rows
            .iter()
            .map(|r| Column {
                name: s(r, "name"),
                ty: s(r, "ty"),
                cast: s(r, "cast"),
                pk: b(r, "pk"),
                generated: b(r, "generated"),
                has_default: b(r, "has_default"),
                not_null: b(r, "not_null"),
            })
            .collect(),
    })
}

/// `GET /console/tenants/{id}/tables`
pub(crate) async fn tables(
    State(c): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> Response {
    let tenant = match row_of(&c, &id).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let query = r#"SELECT c.relname::text AS name,
              CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view'
                             WHEN 'f' THEN 'foreign table' ELSE 'table' END AS kind,
              GREATEST(c.reltuples, 0)::bigint AS estimate
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE n.nspname = $1 AND c.relkind IN ('r','v','m','p','f') AND NOT c.relispartition
       ORDER BY 1"#;
    let main = match run_as_owner(&c, &tenant, query, Some(&[Value::from(SCHEMA)])).await {
        Err(e) => sql_error(query, &e),
        Ok(rows) if rows.is_empty() => html! {
            p { "No tables or views in schema " code { (SCHEMA) } " yet. Create one in the "
                a href={ "/console/tenants/" (id) "/sql" } { "SQL editor" } "." }
        },
        Ok(rows) => html! {
            div.scroll {
                table {
                    caption { "Schema " code { (SCHEMA) } }
                    thead { tr { th scope="col" { "Name" } th scope="col" { "Kind" } th scope="col" { "Rows (estimate)" } } }
                    tbody {
                        @for r in &rows {
                            @let name = r["name"].as_str().unwrap_or("");
                            tr {
                                td { a href=(rows_url(&id, name, &[])) { (name) } }
                                td { (r["kind"].as_str().unwrap_or("")) }
                                td { (r["estimate"]) }
                            }
                        }
                    }
                }
            }
        },
    };
    tenant_page(&ctx, &id, Tab::Tables, "Tables", main)
}

/// `/console/tenants/{id}/rows?table=…&…`
fn rows_url(id: &str, table: &str, extra: &[(&str, &str)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("table", table);
    for (k, v) in extra {
        q.append_pair(k, v);
    }
    format!("/console/tenants/{id}/rows?{}", q.finish())
}

const OPS: [(&str, &str); 9] = [
    ("eq", "="),
    ("neq", "≠"),
    ("lt", "<"),
    ("lte", "≤"),
    ("gt", ">"),
    ("gte", "≥"),
    ("contains", "contains"),
    ("null", "is null"),
    ("notnull", "is not null"),
];

/// A filter condition on `col` with `$n` its value, or `None` for a bad op.
fn condition(col: &Column, op: &str, n: usize) -> Option<(String, bool)> {
    let c = ident(&col.name);
    let value = format!("CAST(${n}::text AS {})", col.cast);
    let sql_op = match op {
        "eq" => "=",
        "neq" => "<>",
        "lt" => "<",
        "lte" => "<=",
        "gt" => ">",
        "gte" => ">=",
        "contains" => return Some((format!("{c}::text ILIKE '%' || ${n}::text || '%'"), true)),
        "null" => return Some((format!("{c} IS NULL"), false)),
        "notnull" => return Some((format!("{c} IS NOT NULL"), false)),
        _ => return None,
    };
    Some((format!("{c} {sql_op} {value}"), true))
}

/// `GET /console/tenants/{id}/rows?table=&page=&sort=&dir=&col=&op=&value=`
pub(crate) async fn rows(
    State(c): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let tenant = match row_of(&c, &id).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let get = |k: &str| q.get(k).map_or("", String::as_str);
    let table_name = get("table");
    let table = match describe(&c, &ctx, &tenant, table_name).await {
        Ok(t) => t,
        Err(resp) => return resp,
    };
    let page: usize = get("page").parse().unwrap_or(0).min(1_000_000);
    let sort = table.column(get("sort")).map(|c| c.name.clone());
    let desc = get("dir") == "desc";
    let (fcol, fop, fval) = (get("col"), get("op"), get("value"));
    let mut sql = format!(
        "SELECT {} FROM {}",
        table.select_list(),
        qualified(table_name)
    );
    let mut params = Vec::new();
    if let Some(col) = table.column(fcol)
        && let Some((cond, uses_value)) = condition(col, fop, 1)
    {
        sql.push_str(&format!(" WHERE {cond}"));
        if uses_value {
            params.push(Value::from(fval));
        }
    }
    if let Some(s) = &sort {
        sql.push_str(&format!(
            " ORDER BY {} {} NULLS LAST",
            ident(s),
            if desc { "DESC" } else { "ASC" }
        ));
    }
    sql.push_str(&format!(" LIMIT {} OFFSET {}", PAGE + 1, page * PAGE));
    let result = run_as_owner(&c, &tenant, &sql, Some(&params)).await;
    let keep = |extra: &[(&str, &str)]| {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for k in ["sort", "dir", "col", "op", "value"] {
            if !get(k).is_empty() && !extra.iter().any(|(e, _)| *e == k) {
                pairs.push((k, get(k)));
            }
        }
        pairs.extend_from_slice(extra);
        rows_url(&id, table_name, &pairs)
    };
    let editable = table.editable();
    let body = match &result {
        Err(e) => sql_error(&sql, e),
        Ok(rows) => {
            let more = rows.len() > PAGE;
            let rows = &rows[..rows.len().min(PAGE)];
            let prev = (page > 0).then(|| (page - 1).to_string());
            let next = more.then(|| (page + 1).to_string());
            html! {
                div.scroll {
                    table.data {
                        @if !rows.is_empty() { caption { "Rows " (page * PAGE + 1) "–" (page * PAGE + rows.len()) } }
                        thead { tr {
                            @for col in &table.columns {
                                @let current = sort.as_deref() == Some(col.name.as_str());
                                @let next_dir = if current && !desc { "desc" } else { "asc" };
                                th scope="col" aria-sort=(if current { if desc { "descending" } else { "ascending" } } else { "none" }) {
                                    a href=(keep(&[("sort", &col.name), ("dir", next_dir)])) {
                                        (col.name)
                                        @if current { (if desc { " ▼" } else { " ▲" }) }
                                    }
                                    br; span.type { (col.ty) @if col.pk { " · key" } }
                                }
                            }
                            @if editable { th scope="col" { span.visually-hidden { "Actions" } } }
                        } }
                        tbody {
                            @for r in rows {
                                tr {
                                    @for col in &table.columns { (cell(r.get(&col.name))) }
                                    @if editable {
                                        td { a href=(edit_url(&id, table_name, &table, r)) { "Edit" } }
                                    }
                                }
                            }
                        }
                    }
                }
                @if rows.is_empty() { p { "No rows." } }
                nav.pager aria-label="Pages" {
                    @if let Some(p) = &prev { a href=(keep(&[("page", p)])) rel="prev" { "← Previous" } }
                    @if let Some(n) = &next { a href=(keep(&[("page", n)])) rel="next" { "Next →" } }
                }
            }
        }
    };
    let main = html! {
        h2 { code { (table_name) } }
        form.filter method="get" action={ "/console/tenants/" (id) "/rows" } {
            input type="hidden" name="table" value=(table_name);
            @if let Some(s) = &sort {
                input type="hidden" name="sort" value=(s);
                input type="hidden" name="dir" value=(if desc { "desc" } else { "asc" });
            }
            label for="f-col" { "Column" }
            select #f-col name="col" {
                @for col in &table.columns {
                    option value=(col.name) selected[col.name == fcol] { (col.name) }
                }
            }
            label for="f-op" { "Condition" }
            select #f-op name="op" {
                @for (op, label) in OPS { option value=(op) selected[op == fop] { (label) } }
            }
            label for="f-value" { "Value" }
            input #f-value name="value" value=(fval);
            button type="submit" { "Filter" }
            a href=(rows_url(&id, table_name, &[])) { "Clear" }
        }
        (body)
        @if editable {
            (insert_form(&ctx, &id, table_name, &table))
        } @else {
            p.note { "Rows can be edited in tables with a primary key." }
        }
    };
    tenant_page(&ctx, &id, Tab::Tables, "Tables", main)
}

fn edit_url(id: &str, table: &str, t: &Table, row: &Value) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("table", table);
    for col in t.columns.iter().filter(|c| c.pk) {
        q.append_pair(
            &format!("k.{}", col.name),
            row[&col.name].as_str().unwrap_or(""),
        );
    }
    format!("/console/tenants/{id}/rows/edit?{}", q.finish())
}

fn insert_form(ctx: &Ctx, id: &str, table_name: &str, table: &Table) -> Markup {
    html! {
        section aria-labelledby="add-row" {
            h2 #add-row { "Add a row" }
            form method="post" action={ "/console/tenants/" (id) "/rows/insert" } {
                input type="hidden" name="csrf" value=(ctx.session.csrf);
                input type="hidden" name="table" value=(table_name);
                p.help { "Leave a field empty for the column's default (or NULL)." }
                div.grid {
                    @for (i, col) in table.columns.iter().enumerate().filter(|(_, c)| !c.generated) {
                        @let el = format!("new-{i}");
                        div {
                            label for=(el) { (col.name) " " span.type { (col.ty) @if col.has_default { ", has default" } @else if col.not_null { ", required" } } }
                            input id=(el) name={ "v." (col.name) };
                        }
                    }
                }
                button type="submit" { "Add row" }
            }
        }
    }
}

/// `GET /console/tenants/{id}/rows/edit?table=&k.<pk>=…`
pub(crate) async fn edit(
    State(c): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let tenant = match row_of(&c, &id).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let f = Fields(q);
    let table_name = f.get("table").to_owned();
    let table = match describe(&c, &ctx, &tenant, &table_name).await {
        Ok(t) => t,
        Err(resp) => return resp,
    };
    if !table.editable() {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Not editable",
            "Only rows of tables with a primary key can be edited.",
        );
    }
    let (cond, params) = key_condition(&table, &f, 1);
    let sql = format!(
        "SELECT {} FROM {} WHERE {cond} LIMIT 2",
        table.select_list(),
        qualified(&table_name)
    );
    let row = match run_as_owner(&c, &tenant, &sql, Some(&params)).await {
        Ok(rows) if rows.len() == 1 => rows.into_iter().next().unwrap_or(Value::Null),
        Ok(_) => {
            return error_page(
                StatusCode::NOT_FOUND,
                "Not found",
                "No row has that key (it may have been changed or deleted).",
            );
        }
        Err(e) => {
            return tenant_page_status(
                &ctx,
                &id,
                Tab::Tables,
                "Edit row",
                StatusCode::BAD_REQUEST,
                sql_error(&sql, &e),
            );
        }
    };
    let main = html! {
        h2 { "Row of " code { (table_name) } }
        form method="post" action={ "/console/tenants/" (id) "/rows/update" } {
            input type="hidden" name="csrf" value=(ctx.session.csrf);
            input type="hidden" name="table" value=(table_name);
            @for col in table.columns.iter().filter(|c| c.pk) {
                input type="hidden" name={ "k." (col.name) } value=(row[&col.name].as_str().unwrap_or(""));
            }
            @for (i, col) in table.columns.iter().enumerate() {
                @let el = format!("col-{i}");
                @let value = row[&col.name].as_str();
                div.field {
                    label for=(el) { (col.name) " " span.type { (col.ty) } }
                    @if col.generated {
                        input id=(el) value=(value.unwrap_or("")) disabled;
                    } @else {
                        input id=(el) name={ "v." (col.name) } value=(value.unwrap_or(""));
                        label.check {
                            input type="checkbox" name={ "null." (col.name) } value="1" checked[value.is_none()];
                            " NULL"
                        }
                    }
                }
            }
            button type="submit" { "Save row" }
            " " a href=(rows_url(&id, &table_name, &[])) { "Cancel" }
        }
    };
    tenant_page(&ctx, &id, Tab::Tables, "Edit row", main)
}

/// `WHERE` on the primary key from `k.<col>` fields, parameters from `$first`.
fn key_condition(table: &Table, f: &Fields, first: usize) -> (String, Vec<Value>) {
    let mut conds = Vec::new();
    let mut params = Vec::new();
    for col in table.columns.iter().filter(|c| c.pk) {
        let n = first + params.len();
        conds.push(format!(
            "{} = CAST(${n}::text AS {})",
            ident(&col.name),
            col.cast
        ));
        params.push(Value::from(f.get(&format!("k.{}", col.name))));
    }
    (conds.join(" AND "), params)
}

/// `POST /console/tenants/{id}/rows/update`
pub(crate) async fn update(
    State(c): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Extension(f): Extension<Fields>,
    Path(id): Path<String>,
) -> Response {
    let tenant = match row_of(&c, &id).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let table_name = f.get("table").to_owned();
    let table = match describe(&c, &ctx, &tenant, &table_name).await {
        Ok(t) => t,
        Err(resp) => return resp,
    };
    if !table.editable() {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Not editable",
            "Only rows of tables with a primary key can be edited.",
        );
    }
    let mut sets = Vec::new();
    let mut params = Vec::new();
    for col in table.columns.iter().filter(|c| !c.generated) {
        let field = format!("v.{}", col.name);
        if !f.has(&field) {
            continue;
        }
        if f.has(&format!("null.{}", col.name)) {
            sets.push(format!("{} = NULL", ident(&col.name)));
        } else {
            params.push(Value::from(f.get(&field)));
            sets.push(format!(
                "{} = CAST(${}::text AS {})",
                ident(&col.name),
                params.len(),
                col.cast
            ));
        }
    }
    if sets.is_empty() {
        return redirect(&rows_url(&id, &table_name, &[]));
    }
    let (cond, keys) = key_condition(&table, &f, params.len() + 1);
    params.extend(keys);
    let sql = format!(
        "UPDATE {} SET {} WHERE {cond} RETURNING 1 AS updated",
        qualified(&table_name),
        sets.join(", ")
    );
    match run_as_owner(&c, &tenant, &sql, Some(&params)).await {
        Ok(rows) if rows.len() == 1 => {
            c.sessions.flash(&ctx.session.id, true, "Row saved.");
            redirect(&rows_url(&id, &table_name, &[]))
        }
        Ok(rows) => {
            c.sessions.flash(
                &ctx.session.id,
                false,
                format!("{} rows matched the key; nothing to save.", rows.len()),
            );
            redirect(&rows_url(&id, &table_name, &[]))
        }
        Err(e) => tenant_page_status(
            &ctx,
            &id,
            Tab::Tables,
            "Edit row",
            StatusCode::BAD_REQUEST,
            html! { (sql_error(&sql, &e)) p { a href=(rows_url(&id, &table_name, &[])) { "Back to the table" } } },
        ),
    }
}

/// `POST /console/tenants/{id}/rows/insert`
pub(crate) async fn insert(
    State(c): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Extension(f): Extension<Fields>,
    Path(id): Path<String>,
) -> Response {
    let tenant = match row_of(&c, &id).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let table_name = f.get("table").to_owned();
    let table = match describe(&c, &ctx, &tenant, &table_name).await {
        Ok(t) => t,
        Err(resp) => return resp,
    };
    let mut cols = Vec::new();
    let mut values = Vec::new();
    let mut params = Vec::new();
    for col in table.columns.iter().filter(|c| !c.generated) {
        let v = f.get(&format!("v.{}", col.name));
        if v.is_empty() {
            continue;
        }
        params.push(Value::from(v));
        cols.push(ident(&col.name));
        values.push(format!("CAST(${}::text AS {})", params.len(), col.cast));
    }
    let sql = if cols.is_empty() {
        format!(
            "INSERT INTO {} DEFAULT VALUES RETURNING 1 AS inserted",
            qualified(&table_name)
        )
    } else {
        format!(
            "INSERT INTO {} ({}) VALUES ({}) RETURNING 1 AS inserted",
            qualified(&table_name),
            cols.join(", "),
            values.join(", ")
        )
    };
    match run_as_owner(&c, &tenant, &sql, Some(&params)).await {
        Ok(_) => {
            c.sessions.flash(&ctx.session.id, true, "Row added.");
            redirect(&rows_url(&id, &table_name, &[]))
        }
        Err(e) => tenant_page_status(
            &ctx,
            &id,
            Tab::Tables,
            "Add row",
            StatusCode::BAD_REQUEST,
            html! { (sql_error(&sql, &e)) p { a href=(rows_url(&id, &table_name, &[])) { "Back to the table" } } },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(qualified("t"), r#""public"."t""#);
    }
}
