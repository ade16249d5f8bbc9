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
use madbase_platform::jwt;
use maud::{Markup, html};
use serde_json::{Value, json};
use sqlx::Row as _;

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
                        th scope="col" { abbr title="Request rate and error ratio of the last hour: control does not see tenant traffic (the proxy's metrics do)" { "Requests / errors" } }
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
                                td { "n/a" }
                            }
                        }
                    }
                }
            }
            p.note { "Request rate and error ratio are not available here: control does not see tenant traffic; the proxy's "
                code { "http_requests_total" } " in Grafana does." }
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
    let main = html! {
        dl.facts {
            dt { "Created" } dd { (when(&row.created_at)) }
            dt { "Database" } dd { code { (row.database_name) } }
            dt { "REST URL" } dd { code { (format!("{}/t/{id}/rest/v1", c.app.public_url)) } }
            dt { "Key version" } dd { (row.key_version) }
            dt { "Requests / errors (1 h)" } dd { "n/a (not seen by control)" }
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
    sql::run(&options, query, params, c.app.sql_limits).await
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

/// Rows (JSON objects) as an HTML table; columns in the objects' order
/// (serde_json's maps are sorted by key).
pub(crate) fn rows_table(rows: &[Value]) -> Markup {
    let columns: Vec<&String> = rows
        .first()
        .and_then(Value::as_object)
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    html! {
        div.scroll {
            table.data {
                thead { tr { @for c in &columns { th scope="col" { (c) } } } }
                tbody {
                    @for r in rows {
                        tr { @for c in &columns { (cell(r.get(c.as_str()))) } }
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
        run_as_owner(&c, &row, query, None).await.map_err(Some)
    };
    let took = started.elapsed();
    let (status, out) = match &result {
        Ok(rows) => (
            StatusCode::OK,
            html! {
                p.flash.ok role="status" {
                    (rows.len()) " row" @if rows.len() != 1 { "s" } " in " (took.as_millis()) " ms"
                }
                @if !rows.is_empty() {
                    (rows_table(rows))
                    p.note { "Columns are listed alphabetically (the SQL endpoint returns JSON objects)." }
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
        p.note { "Invocations and their console lines are not shown yet: the functions service does not report them to control." }
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

/// `GET /console/health`: what control can check itself.
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
        dl.facts {
            dt { "Control version" } dd { (env!("CARGO_PKG_VERSION")) }
            dt { "Active tenants" } dd { (tenants.map_or_else(|| "n/a".to_owned(), |n| n.to_string())) }
            dt { "Control pool" } dd { (c.app.db.size()) " open, " (c.app.db.num_idle()) " idle" }
        }
        p.note {
            "The first two are control's own readiness checks (its " code { "/ready" } "); "
            "the services named in " code { "MADBASE_CONSOLE_SERVICES" } " (name=admin URL, …) are asked for their "
            code { "/ready" } @if c.config.services.is_empty() { " (none is set)" } ". "
            "Request rates, p99 latencies and error ratios are not shown here: see the services' "
            code { "/metrics" } " in Grafana (the madbase dashboards)."
        }
    };
    page(&ctx, "Health", main)
}
