//! The console's pages: tenants, a tenant's overview, keys, SQL, functions,
//! settings and the platform's health. Actions call the admin API's
//! handlers in-process.

use std::collections::HashMap;
use std::time::Instant;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use http::StatusCode;
use madbase_platform::ApiError;
use madbase_platform::extract::Json as JsonBody;
use madbase_platform::secrets::ExposeSecret as _;
use madbase_tenancy::jwt;
use maud::{Markup, html};
use serde_json::{Value, json};
use sqlx::Row as _;

use super::history;
use super::{
    Console, Ctx, Fields, Tab, api_error, error_page, page, redirect, tenant_page,
    tenant_page_status,
};
use crate::sql::{self, SqlError};
use crate::{api, functions, store};

/// What the admin API's JSON arguments are made of (their fields are the
/// API's, so the console builds them from JSON as a client would).
fn body<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, ApiError> {
    serde_json::from_value(v).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

pub(crate) async fn home() -> Response {
    redirect("/console/tenants")
}

fn when(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

fn size(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `GET /console/tenants`
pub(crate) async fn tenants(State(c): State<Console>, Extension(ctx): Extension<Ctx>) -> Response {
    let rows = sqlx::query(
        "SELECT id, status, created_at, database_name FROM tenants ORDER BY id LIMIT 1000",
    )
    .fetch_all(&c.app.db)
    .await;
    let rows = match rows {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "console: listing tenants");
            return error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "The control database is unavailable.",
            );
        }
    };
    let mut list = Vec::new();
    for r in &rows {
        let id: String = r.try_get("id").unwrap_or_default();
        let status: String = r.try_get("status").unwrap_or_default();
        let created: Option<DateTime<Utc>> = r.try_get("created_at").ok();
        let db: String = r.try_get("database_name").unwrap_or_default();
        list.push((id, status, created, db));
    }
    let names: Vec<String> = list.iter().map(|t| t.3.clone()).collect();
    let sizes: HashMap<String, i64> = sqlx::query(
        "SELECT datname::text AS name, pg_database_size(oid) AS size FROM pg_database WHERE datname = ANY($1)",
    )
    .bind(&names)
    .fetch_all(&c.app.admin)
    .await
    .map(|rows| {
        rows.iter()
            .filter_map(|r| Some((r.try_get("name").ok()?, r.try_get("size").ok()?)))
            .collect()
    })
    .unwrap_or_else(|e| {
        tracing::warn!(error = %e, "console: database sizes");
        HashMap::new()
    });
    let traffic = tenant_traffic(&c);
    let main = html! {
        h1 { "Tenants" }
        @if list.is_empty() {
            p { "No tenants yet." }
        } @else {
            div.scroll {
                table {
                    caption.visually-hidden { "Tenants" }
                    thead { tr {
                        th scope="col" { "ID" }
                        th scope="col" { "Created" }
                        th scope="col" { "Status" }
                        th scope="col" { "Database size" }
                        th scope="col" { "Requests, last hour" }
                        th scope="col" { "Errors (5xx)" }
                    } }
                    tbody {
                        @for (id, status, created, db) in &list {
                            tr {
                                td {
                                    @if status == "active" {
                                        a href={ "/console/tenants/" (id) } { (id) }
                                    } @else { (id) }
                                }
                                td { (created.as_ref().map(when).unwrap_or_default()) }
                                td { (status) }
                                td { (sizes.get(db).map_or_else(|| "n/a".to_owned(), |b| size(*b))) }
                                @match &traffic {
                                    Some(t) => {
                                        @let (all, errors) = t.tenants.get(id).copied().unwrap_or((0.0, 0.0));
                                        td { (requests_per(all, t.seconds)) }
                                        td { (opt((all > 0.0).then(|| errors / all), percent)) }
                                    }
                                    None => { td { "n/a" } td { "n/a" } }
                                }
                            }
                        }
                    }
                }
            }
            (traffic_note(&c, traffic.as_ref()))
        }
        section aria-labelledby="new-tenant" {
            h2 #new-tenant { "New tenant" }
            form method="post" action="/console/tenants" {
                input type="hidden" name="csrf" value=(ctx.session.csrf);
                label for="tenant-id" { "Tenant ID" }
                input #tenant-id name="id" required pattern="[a-z][a-z0-9\\-]{2,39}" aria-describedby="tenant-id-help" autocomplete="off";
                p.help #tenant-id-help { "3 to 40 lowercase letters, digits or hyphens, starting with a letter." }
                button type="submit" { "Create tenant" }
            }
        }
    };
    page(&ctx, "Tenants", main)
}

/// Per-tenant requests over the last hour, from the proxy's
/// `madbase_proxy_requests_total{tenant,upstream,status}` as scraped into
/// the history (every proxy in `MADBASE_CONSOLE_SERVICES`, summed).
struct TenantTraffic {
    /// Seconds the samples cover (the longest of the proxies').
    seconds: f64,
    /// Requests and 5xx responses by tenant.
    tenants: HashMap<String, (f64, f64)>,
}

/// `None` when no scraped service is a proxy (named `proxy…` or
/// exposing per-tenant request counts).
fn tenant_traffic(c: &Console) -> Option<TenantTraffic> {
    let mut found = None::<TenantTraffic>;
    for (name, _) in &c.config.services {
        let samples = c.history.samples(name);
        let has_tenants = samples
            .iter()
            .any(|s| s.scrape.as_ref().is_some_and(|s| !s.tenants.is_empty()));
        if !(name.to_ascii_lowercase().starts_with("proxy") || has_tenants) {
            continue;
        }
        let (seconds, tenants) = history::tenant_totals(&samples);
        let t = found.get_or_insert(TenantTraffic {
            seconds: 0.0,
            tenants: HashMap::new(),
        });
        t.seconds = t.seconds.max(seconds);
        for (id, (all, errors)) in tenants {
            let e = t.tenants.entry(id).or_default();
            e.0 += all;
            e.1 += errors;
        }
    }
    found
}

/// "120 (2.0/min)": requests and their rate over `seconds`.
fn requests_per(all: f64, seconds: f64) -> String {
    if seconds <= 0.0 {
        return "– (collecting)".to_owned();
    }
    format!("{all:.0} ({:.1}/min)", all / seconds * 60.0)
}

fn traffic_note(c: &Console, traffic: Option<&TenantTraffic>) -> Markup {
    html! {
        p.note {
            @if let Some(t) = traffic {
                "Requests through the proxy and the share answered with a 5xx status, from the proxy's "
                code { "madbase_proxy_requests_total" } ", scraped every "
                (format!("{:.0}", c.history.every().as_secs_f64())) " s; the history is kept in control's memory since "
                (when(&c.history.started())) " (" (format!("{:.0}", t.seconds / 60.0)) " min so far, at most an hour)."
            } @else {
                "Request rate and error ratio come from the proxy's metrics: add the proxy's admin URL to "
                code { "MADBASE_CONSOLE_SERVICES" } " (" code { "proxy=" } " and the proxy's admin listener, port 9000 by default)."
            }
        }
    }
}

/// `POST /console/tenants`
pub(crate) async fn create_tenant(
    State(c): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Extension(f): Extension<Fields>,
) -> Response {
    let id = f.get("id").trim().to_owned();
    let result = match body(json!({ "id": id })) {
        Ok(b) => api::create(State(c.app.clone()), JsonBody(b)).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(_) => {
            c.sessions
                .flash(&ctx.session.id, true, format!("Tenant {id} created."));
            redirect(&format!("/console/tenants/{id}?reveal=keys"))
        }
        Err(e) => {
            c.sessions.flash(
                &ctx.session.id,
                false,
                format!("Creating tenant {id:?} failed: {}", e.message),
            );
            redirect("/console/tenants")
        }
    }
}

async fn tenant_row(c: &Console, id: &str) -> Result<store::TenantRow, Response> {
    match store::get(&c.app.db, id).await {
        Ok(Some(row)) => Ok(row),
        Ok(None) => Err(error_page(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such tenant.",
        )),
        Err(e) => {
            tracing::error!(error = %e, "console: tenant lookup");
            Err(error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "The control database is unavailable.",
            ))
        }
    }
}

/// `GET /console/tenants/{id}[?reveal=keys]`
pub(crate) async fn tenant(
    State(c): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let row = match tenant_row(&c, &id).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let reveal = q.get("reveal").is_some_and(|v| v == "keys");
    let keys = if reveal {
        match c.app.sealer.open_string(&row.jwt_secret_enc) {
            Ok(secret) => Some((
                jwt::api_key(&secret, &id, "anon"),
                jwt::api_key(&secret, &id, "service_role"),
            )),
            Err(e) => {
                tracing::error!(tenant = %id, error = %e, "console: cannot open the tenant secret");
                None
            }
        }
    } else {
        None
    };
    let base = format!("/console/tenants/{id}");
    let traffic = tenant_traffic(&c);
    let main = html! {
        dl.facts {
            dt { "Created" } dd { (when(&row.created_at)) }
            dt { "Database" } dd { code { (row.database_name) } }
            dt { "REST URL" } dd { code { (format!("{}/t/{id}/rest/v1", c.app.public_url)) } }
            dt { "Key version" } dd { (row.key_version) }
            dt { "Requests, last hour" }
            dd {
                @match &traffic {
                    Some(t) => {
                        @let (all, errors) = t.tenants.get(&id).copied().unwrap_or((0.0, 0.0));
                        (requests_per(all, t.seconds)) ", "
                        (opt((all > 0.0).then(|| errors / all), percent)) " errors (5xx)"
                    }
                    None => { "n/a (no proxy in MADBASE_CONSOLE_SERVICES)" }
                }
            }
        }
        section aria-labelledby="keys" {
            h2 #keys { "API keys" }
            @if let Some((anon, service)) = &keys {
                p.help { "Keys are signed with the tenant's current secret; every key shown here is valid until the next rotation." }
                (key_row("anon", "anon-key", anon))
                (key_row("service_role", "service-key", service))
                p { a href=(base) { "Hide keys" } }
            } @else {
                p { a.button href={ (base) "?reveal=keys" } { "Reveal keys" } }
            }
            form method="post" action={ (base) "/rotate" } {
                input type="hidden" name="csrf" value=(ctx.session.csrf);
                p.help { "Rotating issues a new secret: the current anon and service_role keys stop working." }
                button type="submit" { "Rotate keys" }
            }
        }
        section.danger aria-labelledby="delete" {
            h2 #delete { "Delete tenant" }
            form method="post" action={ (base) "/delete" } {
                input type="hidden" name="csrf" value=(ctx.session.csrf);
                label for="confirm" { "Type " code { (id) } " to delete the tenant and its database" }
                input #confirm name="confirm" required autocomplete="off";
                button.danger type="submit" { "Delete tenant" }
            }
        }
    };
    tenant_page(&ctx, &id, Tab::Overview, &id, main)
}

fn key_row(label: &str, el: &str, key: &str) -> Markup {
    html! {
        div.key {
            label for=(el) { (label) }
            div.copyrow {
                input #(el) readonly value=(key) spellcheck="false";
                button type="button" data-copy=(el) hidden { "Copy" }
            }
        }
    }
}

/// `POST /console/tenants/{id}/rotate`
pub(crate) async fn rotate(
    State(c): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> Response {
    match api::rotate(State(c.app.clone()), Path(id.clone())).await {
        Ok(v) => {
            c.sessions.flash(
                &ctx.session.id,
                true,
                format!(
                    "Keys rotated (version {}); the previous keys no longer work.",
                    v.0["key_version"]
                ),
            );
            redirect(&format!("/console/tenants/{id}?reveal=keys"))
        }
        Err(e) => {
            c.sessions.flash(
                &ctx.session.id,
                false,
                format!("Rotating failed: {}", e.message),
            );
            redirect(&format!("/console/tenants/{id}"))
        }
    }
}

/// `POST /console/tenants/{id}/delete` (`confirm` must be the id)
pub(crate) async fn delete_tenant(
    State(c): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Extension(f): Extension<Fields>,
    Path(id): Path<String>,
) -> Response {
    if f.get("confirm").trim() != id {
        c.sessions.flash(
            &ctx.session.id,
            false,
            "Not deleted: type the tenant's ID exactly to confirm.",
        );
        return redirect(&format!("/console/tenants/{id}"));
    }
    match api::delete(State(c.app.clone()), Path(id.clone())).await {
        Ok(_) => {
            c.sessions
                .flash(&ctx.session.id, true, format!("Tenant {id} deleted."));
            redirect("/console/tenants")
        }
        Err(e) => {
            c.sessions.flash(
                &ctx.session.id,
                false,
                format!("Deleting failed: {}", e.message),
            );
            redirect(&format!("/console/tenants/{id}"))
        }
    }
}

fn sql_form(ctx: &Ctx, id: &str, query: &str) -> Markup {
    html! {
        form method="post" action={ "/console/tenants/" (id) "/sql" } {
            input type="hidden" name="csrf" value=(ctx.session.csrf);
            label for="query" { "SQL (runs as the tenant's owner role, as " code { "POST /v1/tenants/{id}/sql" } ")" }
            textarea #query name="query" rows="10" spellcheck="false" required { (query) }
            button type="submit" { "Run" }
        }
    }
}

/// `GET /console/tenants/{id}/sql`
pub(crate) async fn sql(
    State(c): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> Response {
    if let Err(resp) = tenant_row(&c, &id).await {
        return resp;
    }
    tenant_page(
        &ctx,
        &id,
        Tab::Sql,
        "SQL editor",
        sql_form(&ctx, &id, "select now();"),
    )
}

/// Where a Postgres error points: 1-based line and column of the
/// 1-based character `position` in `query`.
pub(crate) fn line_col(query: &str, position: usize) -> (usize, usize) {
    let (mut line, mut col) = (1, 1);
    for c in query.chars().take(position.saturating_sub(1)) {
        if c == '\n' {
            line += 1;
            col = 1;
        } else {
            col += 1;
        }
    }
    (line, col)
}

/// Runs `query` (a script, no parameters) as the tenant's owner: the SQL
/// endpoint's code (`sql::run`).
pub(crate) async fn run_as_owner(
    c: &Console,
    row: &store::TenantRow,
    query: &str,
    params: Option<&[Value]>,
) -> Result<Vec<Value>, SqlError> {
    run_as_owner_with_columns(c, row, query, params)
        .await
        .map(|r| r.rows)
}

/// [`run_as_owner`] with the result's columns in order.
pub(crate) async fn run_as_owner_with_columns(
    c: &Console,
    row: &store::TenantRow,
    query: &str,
    params: Option<&[Value]>,
) -> Result<sql::Rows, SqlError> {
    let password = c
        .app
        .sealer
        .open_string(&row.owner_password_enc)
        .map_err(|e| SqlError::Connect(sqlx::Error::Protocol(e.to_string())))?;
    let options = c
        .app
        .cluster
        .clone()
        .username(&row.owner_role)
        .password(&password)
        .database(&row.database_name);
    sql::run_with_columns(&options, query, params, c.app.sql_limits).await
}

/// A SQL failure as HTML, with the error's position in `query`.
pub(crate) fn sql_error(query: &str, e: &SqlError) -> Markup {
    let db = match e {
        SqlError::Query(q) => q.as_database_error(),
        _ => None,
    };
    let pg = db.and_then(|d| d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>());
    let position = pg.and_then(|p| match p.position() {
        Some(sqlx::postgres::PgErrorPosition::Original(n)) => Some(n),
        _ => None,
    });
    html! {
        div.flash.error role="alert" {
            @if let Some(db) = db {
                strong { (db.message()) }
                @if let Some(code) = db.code() { " " span.code { "(SQLSTATE " (code) ")" } }
                @if let Some(p) = pg {
                    @if let Some(d) = p.detail() { p { "Detail: " (d) } }
                    @if let Some(h) = p.hint() { p { "Hint: " (h) } }
                }
                @if let Some(pos) = position {
                    @let (line, col) = line_col(query, pos);
                    p { "At line " (line) ", column " (col) ":" }
                    pre.caret {
                        (query.lines().nth(line - 1).unwrap_or(""))
                        "\n" (" ".repeat(col - 1)) "^"
                    }
                }
            } @else {
                strong { (e.to_string()) }
            }
        }
    }
}

/// Rows (JSON objects) as an HTML table, the columns in the statement's
/// order.
pub(crate) fn rows_table(columns: &[String], rows: &[Value]) -> Markup {
    html! {
        div.scroll {
            table.data {
                thead { tr { @for c in columns { th scope="col" { (c) } } } }
                tbody {
                    @for r in rows {
                        tr { @for c in columns { (cell(r.get(c.as_str()))) } }
                    }
                }
            }
        }
    }
}

/// One value as a table cell (`NULL` set apart from the text "NULL").
pub(crate) fn cell(v: Option<&Value>) -> Markup {
    html! {
        @match v {
            None | Some(Value::Null) => td.null { "NULL" },
            Some(Value::String(s)) => td { (s) },
            Some(other) => td { (other.to_string()) },
        }
    }
}

/// `POST /console/tenants/{id}/sql`: runs the query and shows its result.
pub(crate) async fn run_sql(
    State(c): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Extension(f): Extension<Fields>,
    Path(id): Path<String>,
) -> Response {
    let row = match tenant_row(&c, &id).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let query = f.get("query");
    let started = Instant::now();
    let result = if query.trim().is_empty() {
        Err(None)
    } else {
        run_as_owner_with_columns(&c, &row, query, None)
            .await
            .map_err(Some)
    };
    let took = started.elapsed();
    let (status, out) = match &result {
        Ok(sql::Rows { columns, rows }) => (
            StatusCode::OK,
            html! {
                p.flash.ok role="status" {
                    (rows.len()) " row" @if rows.len() != 1 { "s" } " in " (took.as_millis()) " ms"
                }
                @if !rows.is_empty() {
                    (rows_table(columns, rows))
                }
            },
        ),
        Err(None) => (
            StatusCode::BAD_REQUEST,
            api_error(&ApiError::bad_request("query is empty")),
        ),
        Err(Some(e)) => (StatusCode::BAD_REQUEST, sql_error(query, e)),
    };
    let main = html! {
        (sql_form(&ctx, &id, query))
        section aria-label="Result" { (out) }
    };
    tenant_page_status(&ctx, &id, Tab::Sql, "SQL editor", status, main)
}

/// `GET /console/tenants/{id}/functions`
pub(crate) async fn functions(
    State(c): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> Response {
    functions_page(&c, &ctx, &id, StatusCode::OK, None, "", "").await
}

async fn functions_page(
    c: &Console,
    ctx: &Ctx,
    id: &str,
    status: StatusCode,
    problem: Option<ApiError>,
    name: &str,
    source: &str,
) -> Response {
    let list = match functions::list(State(c.app.clone()), Path(id.to_owned())).await {
        Ok(l) => to_json(&l.0),
        Err(e) if e.status == StatusCode::NOT_FOUND => {
            return error_page(
                StatusCode::NOT_FOUND,
                "Not found",
                "There is no such tenant.",
            );
        }
        Err(e) => return tenant_page(ctx, id, Tab::Functions, "Functions", api_error(&e)),
    };
    let list = list.as_array().cloned().unwrap_or_default();
    // The versions control keeps (the last ten of each function).
    let versions: HashMap<String, Vec<i32>> = sqlx::query(
        "SELECT name, array_agg(version ORDER BY version DESC) AS versions
         FROM function_versions WHERE tenant_id = $1 GROUP BY name",
    )
    .bind(id)
    .fetch_all(&c.app.db)
    .await
    .map(|rows| {
        rows.iter()
            .filter_map(|r| Some((r.try_get("name").ok()?, r.try_get("versions").ok()?)))
            .collect()
    })
    .unwrap_or_else(|e| {
        tracing::warn!(error = %e, "console: function versions");
        HashMap::new()
    });
    let names: Vec<String> = list
        .iter()
        .filter_map(|f| f["name"].as_str().map(str::to_owned))
        .collect();
    let recent = recent_invocations(c, id, &names).await;
    let base = format!("/console/tenants/{id}/functions");
    let source = if source.is_empty() {
        "Deno.serve(async (req) => {\n  return new Response(\"hello\");\n});\n"
    } else {
        source
    };
    let main = html! {
        @if list.is_empty() {
            p { "No functions deployed." }
        } @else {
            div.scroll {
                table {
                    thead { tr {
                        th scope="col" { "Name" } th scope="col" { "Version" } th scope="col" { "Kept versions" } th scope="col" { "Size" }
                        th scope="col" { "Verify JWT" } th scope="col" { "Updated" } th scope="col" { span.visually-hidden { "Actions" } }
                    } }
                    tbody {
                        @for f in &list {
                            @let fname = f["name"].as_str().unwrap_or("");
                            tr {
                                td { code { (fname) } }
                                td { (f["version"]) }
                                td {
                                    (versions.get(fname).map_or_else(String::new, |v| {
                                        v.iter().map(i32::to_string).collect::<Vec<_>>().join(", ")
                                    }))
                                }
                                td { (f["size"]) " B" }
                                td { (if f["verify_jwt"] == true { "yes" } else { "no" }) }
                                td { (f["updated_at"].as_str().unwrap_or("")) }
                                td {
                                    form.inline method="post" action={ (base) "/delete" } {
                                        input type="hidden" name="csrf" value=(ctx.session.csrf);
                                        input type="hidden" name="name" value=(fname);
                                        button.danger type="submit" aria-label={ "Delete function " (fname) } { "Delete" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if !names.is_empty() {
            section aria-labelledby="invocations" {
                h2 #invocations { "Recent invocations" }
                @for (fname, calls) in &recent {
                    (invocations_of(fname, calls))
                }
                p.note {
                    "The last " (RECENT_SHOWN) " invocations of each function and their " code { "console.*" } " lines "
                    "(at most 20 lines of 500 characters each), as kept in the memory of the functions service at "
                    code { (c.config.functions_url) } " (" code { "MADBASE_FUNCTIONS_URL" } "): they start when that process starts. "
                    "Every line is also in the functions service's log (target " code { "function" } ")."
                }
            }
        }
        section aria-labelledby="deploy" {
            h2 #deploy { "Deploy" }
            @if let Some(e) = &problem { (api_error(e)) }
            form method="post" action=(base) {
                input type="hidden" name="csrf" value=(ctx.session.csrf);
                label for="fn-name" { "Name" }
                input #fn-name name="name" required pattern="[a-z][a-z0-9_\\-]{0,62}" value=(name) autocomplete="off";
                div.upload hidden {
                    label for="fn-file" { "Load the source from a file" }
                    input #fn-file type="file" accept=".js,.mjs,.ts,text/javascript" data-load="fn-source";
                }
                label for="fn-source" { "Source (a module calling Deno.serve)" }
                textarea #fn-source name="source" rows="12" spellcheck="false" required { (source) }
                label.check { input type="checkbox" name="verify_jwt" value="true" checked; " Require a valid JWT (verify_jwt)" }
                button type="submit" { "Deploy" }
            }
        }
    };
    tenant_page_status(ctx, id, Tab::Functions, "Functions", status, main)
}

/// Invocations the functions service keeps per function (its `history.rs`).
const RECENT_SHOWN: usize = 50;

/// Each function's recent invocations (newest first) from the functions
/// service, or why they are not available.
async fn recent_invocations(
    c: &Console,
    tenant: &str,
    names: &[String],
) -> Vec<(String, Result<Vec<Value>, String>)> {
    let token = jwt::platform_token(
        c.app.jwt_secret.expose_secret(),
        "internal",
        std::time::Duration::from_secs(60),
    );
    let base = &c.config.functions_url;
    let asks = names.iter().take(100).map(|name| {
        let (http, token) = (&c.http, &token);
        async move {
            let url = format!("{base}/internal/v1/tenants/{tenant}/functions/{name}/invocations");
            let answer = async {
                let resp = http
                    .get(&url)
                    .bearer_auth(token)
                    .send()
                    .await
                    .map_err(|e| format!("the functions service did not answer: {e}"))?;
                let status = resp.status();
                if !status.is_success() {
                    return Err(format!("the functions service answered {status}"));
                }
                let body: Value = resp
                    .json()
                    .await
                    .map_err(|e| format!("unreadable answer from the functions service: {e}"))?;
                Ok(body["invocations"].as_array().cloned().unwrap_or_default())
            };
            (name.clone(), answer.await)
        }
    });
    futures_util::future::join_all(asks).await
}

fn invocations_of(name: &str, calls: &Result<Vec<Value>, String>) -> Markup {
    let at = |v: &Value| {
        v["at_ms"]
            .as_i64()
            .and_then(DateTime::<Utc>::from_timestamp_millis)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_default()
    };
    html! {
        details.invocations open[calls.as_ref().is_ok_and(|c| !c.is_empty())] {
            summary {
                code { (name) } ": "
                @match calls {
                    Ok(c) if c.is_empty() => "no invocations yet",
                    Ok(c) => { (c.len()) " recent" }
                    Err(_) => "not available",
                }
            }
            @match calls {
                Err(e) => p.note { (e) },
                Ok(calls) => {
                    ol.invocations {
                        @for v in calls {
                            @let status = v["status"].as_u64().unwrap_or(0);
                            li {
                                span class=(if status >= 500 || status == 0 { "badge error" } else if status >= 400 { "badge" } else { "badge ok" }) { (status) }
                                " " (v["outcome"].as_str().unwrap_or("")) " · "
                                (at(v)) " · "
                                (format!("{:.1}", v["duration_ms"].as_f64().unwrap_or(0.0))) " ms"
                                @if let Some(version) = v["version"].as_i64() { " · version " (version) }
                                @if v["cold"] == true { " · cold start" }
                                @if let Some(rid) = v["request_id"].as_str().filter(|r| !r.is_empty()) {
                                    " · request " code { (rid) }
                                }
                                @if let Some(e) = v["error"].as_str() {
                                    p.error { (e) }
                                }
                                @let lines = v["console"].as_array().cloned().unwrap_or_default();
                                @if !lines.is_empty() {
                                    pre.console {
                                        @for l in &lines {
                                            (l["level"].as_str().unwrap_or("")) ": " (l["message"].as_str().unwrap_or("")) "\n"
                                        }
                                        @if let Some(n) = v["console_omitted"].as_u64().filter(|n| *n > 0) {
                                            "… " (n) " more line" @if n != 1 { "s" } " not kept\n"
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `POST /console/tenants/{id}/functions`: deploys `name` from `source`.
pub(crate) async fn deploy(
    State(c): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Extension(f): Extension<Fields>,
    Path(id): Path<String>,
) -> Response {
    let name = f.get("name").trim().to_owned();
    let source = f.get("source").to_owned();
    let verify = f.get("verify_jwt") == "true";
    let result = match body::<functions::DeployQuery>(json!({ "verify_jwt": verify })) {
        Ok(q) => {
            functions::deploy(
                State(c.app.clone()),
                Path((id.clone(), name.clone())),
                Ok(Query(q)),
                Body::from(source.clone()),
            )
            .await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok((_, view)) => {
            let v = to_json(&view.0);
            c.sessions.flash(
                &ctx.session.id,
                true,
                format!("Function {name} deployed (version {}).", v["version"]),
            );
            redirect(&format!("/console/tenants/{id}/functions"))
        }
        Err(e) => {
            functions_page(
                &c,
                &ctx,
                &id,
                StatusCode::BAD_REQUEST,
                Some(e),
                &name,
                &source,
            )
            .await
        }
    }
}

/// `POST /console/tenants/{id}/functions/delete` (`name`)
pub(crate) async fn delete_function(
    State(c): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Extension(f): Extension<Fields>,
    Path(id): Path<String>,
) -> Response {
    let name = f.get("name").to_owned();
    match functions::delete(State(c.app.clone()), Path((id.clone(), name.clone()))).await {
        Ok(_) => c
            .sessions
            .flash(&ctx.session.id, true, format!("Function {name} deleted.")),
        Err(e) => c.sessions.flash(
            &ctx.session.id,
            false,
            format!("Deleting function {name:?} failed: {}", e.message),
        ),
    }
    redirect(&format!("/console/tenants/{id}/functions"))
}

/// `GET /console/tenants/{id}/settings`
pub(crate) async fn settings(
    State(c): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> Response {
    let current = match api::settings(State(c.app.clone()), Path(id.clone())).await {
        Ok(s) => to_json(&s.0),
        Err(e) if e.status == StatusCode::NOT_FOUND => {
            return error_page(
                StatusCode::NOT_FOUND,
                "Not found",
                "There is no such tenant.",
            );
        }
        Err(e) => return tenant_page(&ctx, &id, Tab::Settings, "Settings", api_error(&e)),
    };
    let origins = current["cors_origins"].as_array();
    let text = origins
        .map(|list| {
            list.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    let main = html! {
        form method="post" action={ "/console/tenants/" (id) "/settings" } {
            input type="hidden" name="csrf" value=(ctx.session.csrf);
            fieldset {
                legend { "CORS origins of the data API" }
                label.check {
                    input type="radio" name="cors" value="default" checked[origins.is_none()];
                    " The platform's default (MADBASE_CORS_ORIGINS)"
                }
                label.check {
                    input type="radio" name="cors" value="list" checked[origins.is_some()];
                    " These origins:"
                }
                label for="origins" { "Origins, one a line (" code { "https://app.example.com" } ", or " code { "*" } " for any)" }
                textarea #origins name="origins" rows="5" spellcheck="false" { (text) }
            }
            p.note { "Services pick up a change when their cached copy of the tenant expires. Rate limits are platform-wide (the proxy's MADBASE_RATE_LIMIT settings), not per tenant." }
            button type="submit" { "Save settings" }
        }
    };
    tenant_page(&ctx, &id, Tab::Settings, "Settings", main)
}

/// `POST /console/tenants/{id}/settings`
pub(crate) async fn save_settings(
    State(c): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Extension(f): Extension<Fields>,
    Path(id): Path<String>,
) -> Response {
    let origins: Value = if f.get("cors") == "default" {
        Value::Null
    } else {
        f.get("origins")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| Value::from(l.to_owned()))
            .collect()
    };
    let result = match body(json!({ "cors_origins": origins })) {
        Ok(b) => api::patch_settings(State(c.app.clone()), Path(id.clone()), JsonBody(b)).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(_) => c.sessions.flash(&ctx.session.id, true, "Settings saved."),
        Err(e) => {
            let mut text = format!("Settings not saved: {}", e.message);
            if let Some(d) = e.details {
                text.push_str(&format!(" ({d})"));
            }
            c.sessions.flash(&ctx.session.id, false, text);
        }
    }
    redirect(&format!("/console/tenants/{id}/settings"))
}

/// `GET /console/health`: control's own checks, each service's `/ready`,
/// and the request rate, p99 latency and error ratio of each service over
/// the last hour (from [`history`]).
pub(crate) async fn health(State(c): State<Console>, Extension(ctx): Extension<Ctx>) -> Response {
    async fn probe(pool: &sqlx::PgPool) -> (bool, String) {
        let started = Instant::now();
        match sqlx::query("SELECT 1").execute(pool).await {
            Ok(_) => (true, format!("ok in {} ms", started.elapsed().as_millis())),
            Err(e) => (false, e.to_string()),
        }
    }
    async fn ready(http: &reqwest::Client, url: &str) -> (bool, String) {
        let started = Instant::now();
        match http.get(format!("{url}/ready")).send().await {
            Ok(resp) => {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                let body: String = body.chars().take(300).collect();
                (
                    status.is_success(),
                    format!("{status} in {} ms: {body}", started.elapsed().as_millis()),
                )
            }
            Err(e) => (false, format!("{url}/ready: {e}")),
        }
    }
    let control_db = probe(&c.app.db).await;
    let cluster = probe(&c.app.admin).await;
    let tenants = store::count(&c.app.db).await.ok();
    let mut checks = vec![
        ("control database (DATABASE_URL)".to_owned(), control_db),
        ("tenant cluster (DEFAULT_TENANT_DB_URL)".to_owned(), cluster),
    ];
    let others = futures_util::future::join_all(c.config.services.iter().map(|(name, url)| {
        let http = &c.http;
        async move { (format!("{name} /ready"), ready(http, url).await) }
    }))
    .await;
    checks.extend(others);
    let traffic: Vec<(&str, history::Figures)> = c
        .config
        .services
        .iter()
        .map(|(name, _)| (name.as_str(), history::figures(&c.history.samples(name))))
        .collect();
    let every = c.history.every().as_secs_f64();
    let main = html! {
        h1 { "Platform health" }
        div.scroll {
            table {
                thead { tr { th scope="col" { "Check" } th scope="col" { "State" } th scope="col" { "Detail" } } }
                tbody {
                    @for (name, (ok, detail)) in &checks {
                        tr {
                            td { (name) }
                            td { span class=(if *ok { "badge ok" } else { "badge error" }) { (if *ok { "ready" } else { "failing" }) } }
                            td { (detail) }
                        }
                    }
                }
            }
        }
        section aria-labelledby="traffic" {
            h2 #traffic { "Traffic, last hour" }
            @if traffic.is_empty() {
                p { "No services to show: set " code { "MADBASE_CONSOLE_SERVICES" } " (name=admin URL, …) for control." }
            } @else {
                div.scroll {
                    table.traffic {
                        thead { tr {
                            th scope="col" { "Service" }
                            th scope="col" { "Requests/s" }
                            th scope="col" { "p99 latency" }
                            th scope="col" { "Errors (5xx)" }
                            th scope="col" { "Samples" }
                        } }
                        tbody {
                            @for (name, f) in &traffic {
                                tr {
                                    th scope="row" { (name) }
                                    td {
                                        span.figure { (opt(f.window.rate(), rate)) }
                                        (chart(&format!("{name}: requests per second"), f, |d| d.rate(), rate))
                                    }
                                    td {
                                        span.figure { (opt(f.window.quantile(0.99), latency)) }
                                        (chart(&format!("{name}: p99 latency"), f, |d| d.quantile(0.99), latency))
                                    }
                                    td {
                                        span.figure { (opt(f.window.error_ratio(), percent)) }
                                        (chart(&format!("{name}: 5xx error ratio"), f, |d| d.error_ratio(), percent))
                                    }
                                    td {
                                        (f.samples) @if f.failed > 0 { ", " (f.failed) " failed" }
                                        @if let Some(t) = f.latest { br; span.note { "last " (t.format("%H:%M:%S UTC")) } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            p.note {
                "Control scrapes each service's " code { "/metrics" } " every " (format!("{every:.0}")) " s and keeps the last hour "
                "in memory: the history starts when control starts (" (when(&c.history.started())) ") and is lost when it stops. "
                "Figures are over the whole window: the rate of " code { "http_requests_total" } ", the p99 of "
                code { "http_request_duration_seconds" } " (interpolated in its bucket, as " code { "histogram_quantile" } ") and "
                "the share of 5xx responses; each chart has one point per scrape interval. Longer history: the madbase Grafana dashboards."
            }
        }
        dl.facts {
            dt { "Control version" } dd { (env!("CARGO_PKG_VERSION")) }
            dt { "Active tenants" } dd { (tenants.map_or_else(|| "n/a".to_owned(), |n| n.to_string())) }
            dt { "Control pool" } dd { (c.app.db.size()) " open, " (c.app.db.num_idle()) " idle" }
        }
        p.note {
            "The first two checks are control's own readiness checks (its " code { "/ready" } "); "
            "the services named in " code { "MADBASE_CONSOLE_SERVICES" } " (name=admin URL, …) are asked for their "
            code { "/ready" } @if c.config.services.is_empty() { " (none is set)" } "."
        }
    };
    page(&ctx, "Health", main)
}

fn opt(v: Option<f64>, f: fn(f64) -> String) -> String {
    v.map_or_else(|| "–".to_owned(), f)
}

fn rate(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}/s")
    } else if v >= 1.0 {
        format!("{v:.1}/s")
    } else {
        format!("{v:.3}/s")
    }
}

fn latency(seconds: f64) -> String {
    if seconds >= 1.0 {
        format!("{seconds:.2} s")
    } else {
        format!("{:.1} ms", seconds * 1000.0)
    }
}

fn percent(ratio: f64) -> String {
    format!("{:.2} %", ratio * 100.0)
}

/// A small inline SVG line chart of one figure per interval over the
/// window (no script, no external file); its text alternative is the
/// latest and the largest value.
fn chart(
    label: &str,
    f: &history::Figures,
    value: impl Fn(&history::Delta) -> Option<f64>,
    format: fn(f64) -> String,
) -> Markup {
    const W: f64 = 240.0;
    const H: f64 = 40.0;
    let Some((last, _)) = f.points.last() else {
        return html! { span.note.chart-empty { "no data yet" } };
    };
    let start = *last - chrono::Duration::seconds(history::WINDOW.as_secs() as i64);
    let values: Vec<(f64, f64)> = f
        .points
        .iter()
        .filter_map(|(at, d)| {
            let x = (*at - start).num_milliseconds() as f64 / 1000.0;
            Some((x, value(d)?))
        })
        .collect();
    let max = values.iter().map(|(_, v)| *v).fold(0.0_f64, f64::max);
    let scale = if max > 0.0 { max } else { 1.0 };
    let span = history::WINDOW.as_secs_f64();
    let coords: Vec<(f64, f64)> = values
        .iter()
        .map(|(x, v)| (x / span * W, H - 2.0 - v / scale * (H - 4.0)))
        .collect();
    let points = coords
        .iter()
        .map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect::<Vec<_>>()
        .join(" ");
    let alt = format!(
        "{label} over the last hour: latest {}, highest {}",
        opt(values.last().map(|(_, v)| *v), format),
        format(max)
    );
    html! {
        svg.chart viewBox={ "0 0 " (W) " " (H) } width=(W) height=(H) role="img" aria-label=(alt) preserveAspectRatio="none" {
            title { (alt) }
            line.axis x1="0" y1=(H - 1.0) x2=(W) y2=(H - 1.0) {}
            @if let [(x, y)] = coords.as_slice() {
                circle cx=(format!("{x:.1}")) cy=(format!("{y:.1}")) r="2" {}
            } @else {
                polyline points=(points) fill="none" {}
            }
        }
    }
}
