//! The operator console at `/console`: server-rendered HTML (maud, which
//! escapes every interpolated value), a small CSS and JS file embedded in
//! the binary, plain forms with POST/redirect/GET, so the basic flows work
//! without JavaScript.
//!
//! Sign-in takes the console password (`MADBASE_CONSOLE_PASSWORD` or
//! `MADBASE_CONSOLE_PASSWORD_FILE`) or an admin token (`madbase token
//! admin`) and opens a server-side session kept in memory (see
//! `session`) behind an `HttpOnly; SameSite=Strict; Path=/console` cookie
//! (`Secure` when the request came over TLS). Every POST carries the
//! session's CSRF token (403 otherwise); a failed sign-in is answered only
//! after [`ConsoleConfig::failure_delay`], and an address with too many
//! recent failures is refused.
//!
//! The pages call control's own handlers and store in-process: the same
//! code as the admin API.

mod data;
pub(crate) mod history;
mod pages;
pub(crate) mod session;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use madbase_platform::config::{ConfigError, Env, Source};
use madbase_platform::secrets::{ExposeSecret as _, SecretString};
use madbase_tenancy::jwt;
use maud::{DOCTYPE, Markup, html};

use crate::AppState;
use session::{Flash, Session, Sessions, same};

/// The session cookie.
const COOKIE: &str = "madbase_console";
/// The sign-in form's double-submit cookie (CSRF before a session exists).
const PRE_COOKIE: &str = "madbase_console_signin";
/// Largest form body (a function's source, URL-encoded).
const MAX_FORM: usize = 4 << 20;

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// The console's configuration.
#[derive(Clone)]
pub struct ConsoleConfig {
    /// `MADBASE_CONSOLE_PASSWORD` or the contents of
    /// `MADBASE_CONSOLE_PASSWORD_FILE`; without it only an admin token signs in.
    pub password: Option<SecretString>,
    /// `MADBASE_CONSOLE_IDLE_SECONDS`: a session unused this long ends (default 12 h).
    pub idle: Duration,
    /// How long a failed sign-in waits before it is answered (500 ms).
    pub failure_delay: Duration,
    /// `MADBASE_CONSOLE_SERVICES`: `name=http://admin-host:port,…`, the
    /// admin listeners whose `/ready` the health page shows.
    pub services: Vec<(String, String)>,
    /// `MADBASE_CONSOLE_SCRAPE_SECONDS`: how often those services'
    /// `/metrics` are scraped for the health and tenants pages (15 s).
    pub scrape_every: Duration,
    /// `MADBASE_FUNCTIONS_URL` (default `http://127.0.0.1:8003`): where the
    /// functions page asks for recent invocations.
    pub functions_url: String,
}

impl std::fmt::Debug for ConsoleConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleConfig")
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("idle", &self.idle)
            .finish_non_exhaustive()
    }
}

/// Shortest accepted console password.
pub const MIN_PASSWORD_LEN: usize = 12;

impl ConsoleConfig {
    /// Reads the console's variables (the password from `MADBASE_CONSOLE_PASSWORD` or its `_FILE`, at least [`MIN_PASSWORD_LEN`] bytes).
    pub fn from_env<S: Source>(env: &Env<S>) -> Result<Self, ConfigError> {
        const VAR: &str = madbase_platform::env::MADBASE_CONSOLE_PASSWORD;
        const FILE: &str = madbase_platform::env::MADBASE_CONSOLE_PASSWORD_FILE;
        let problem = |var: &str, p: String| ConfigError {
            var: var.to_owned(),
            problem: p,
        };
        let password = match (env.raw(VAR), env.raw(FILE)) {
            (Some(_), Some(_)) => {
                return Err(problem(VAR, format!("and {FILE} are both set; set one")));
            }
            (Some(p), None) => Some((VAR, p)),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| problem(FILE, format!("cannot read {path}: {e}")))?;
                Some((FILE, text.trim_end_matches(['\r', '\n']).to_owned()))
            }
            (None, None) => None,
        };
        if let Some((var, p)) = &password
            && p.len() < MIN_PASSWORD_LEN
        {
            return Err(problem(
                var,
                format!(
                    "is {} bytes long; the console password needs at least {MIN_PASSWORD_LEN}",
                    p.len()
                ),
            ));
        }
        Ok(ConsoleConfig {
            password: password.map(|(_, p)| SecretString::from(p)),
            idle: env.seconds(
                madbase_platform::env::MADBASE_CONSOLE_IDLE_SECONDS,
                Duration::from_secs(12 * 3600),
            )?,
            failure_delay: Duration::from_millis(500),
            services: services(env)?,
            scrape_every: match env.seconds(
                madbase_platform::env::MADBASE_CONSOLE_SCRAPE_SECONDS,
                Duration::from_secs(15),
            )? {
                d if d < Duration::from_millis(100) => {
                    return Err(problem(
                        madbase_platform::env::MADBASE_CONSOLE_SCRAPE_SECONDS,
                        "must be at least 0.1".to_owned(),
                    ));
                }
                d => d,
            },
            functions_url: env.url(
                madbase_platform::env::MADBASE_FUNCTIONS_URL,
                "http://127.0.0.1:8003",
            )?,
        })
    }
}

/// `MADBASE_CONSOLE_SERVICES=proxy=http://127.0.0.1:9000,worker=…`.
fn services<S: Source>(env: &Env<S>) -> Result<Vec<(String, String)>, ConfigError> {
    const VAR: &str = madbase_platform::env::MADBASE_CONSOLE_SERVICES;
    let Some(raw) = env.raw(VAR) else {
        return Ok(Vec::new());
    };
    raw.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            let (name, url) = item.split_once('=').ok_or_else(|| ConfigError {
                var: VAR.to_owned(),
                problem: format!("{item:?} is not name=http://host:port"),
            })?;
            let url = url.trim().trim_end_matches('/');
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || name.trim().is_empty()
            {
                return Err(ConfigError {
                    var: VAR.to_owned(),
                    problem: format!("{item:?} is not name=http://host:port"),
                });
            }
            Ok((name.trim().to_owned(), url.to_owned()))
        })
        .collect()
}

/// State of the console handlers.
#[derive(Clone)]
pub(crate) struct Console {
    app: AppState,
    sessions: Arc<Sessions>,
    config: Arc<ConsoleConfig>,
    http: reqwest::Client,
    history: Arc<history::History>,
}

/// The console's routes (all under `/console`).
pub(crate) fn router(app: AppState, config: &ConsoleConfig) -> Router {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap_or_default();
    let history = Arc::new(history::History::new(config.scrape_every));
    history::start(history.clone(), config.services.clone(), http.clone());
    let console = Console {
        app,
        sessions: Arc::new(Sessions::new(config.idle)),
        config: Arc::new(config.clone()),
        http,
        history,
    };
    let t = "/console/tenants/{id}";
    let signed_in = Router::new()
        .route("/console", get(pages::home))
        .route("/console/", get(pages::home))
        .route("/console/logout", post(sign_out))
        .route("/console/health", get(pages::health))
        .route(
            "/console/tenants",
            get(pages::tenants).post(pages::create_tenant),
        )
        .route(t, get(pages::tenant))
        .route(&format!("{t}/rotate"), post(pages::rotate))
        .route(&format!("{t}/delete"), post(pages::delete_tenant))
        .route(&format!("{t}/sql"), get(pages::sql).post(pages::run_sql))
        .route(&format!("{t}/tables"), get(data::tables))
        .route(&format!("{t}/rows"), get(data::rows))
        .route(&format!("{t}/rows/edit"), get(data::edit))
        .route(&format!("{t}/rows/update"), post(data::update))
        .route(&format!("{t}/rows/insert"), post(data::insert))
        .route(
            &format!("{t}/functions"),
            get(pages::functions).post(pages::deploy),
        )
        .route(
            &format!("{t}/functions/delete"),
            post(pages::delete_function),
        )
        .route(
            &format!("{t}/settings"),
            get(pages::settings).post(pages::save_settings),
        )
        .route_layer(middleware::from_fn_with_state(console.clone(), guard));
    Router::new()
        .route("/console/signin", get(sign_in_page).post(sign_in))
        .route("/console/assets/console.css", get(css))
        .route("/console/assets/console.js", get(js))
        .merge(signed_in)
        .layer(middleware::from_fn(headers))
        .layer(DefaultBodyLimit::max(MAX_FORM))
        .with_state(console)
}

/// Security headers on every console response.
async fn headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

async fn css() -> Response {
    asset(CSS, "text/css; charset=utf-8")
}

async fn js() -> Response {
    asset(JS, "text/javascript; charset=utf-8")
}

fn asset(body: &'static str, ty: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, ty),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// A form's fields, in order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Fields(Vec<(String, String)>);

impl Fields {
    fn parse(body: &[u8]) -> Self {
        Fields(
            form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The first value of `name`, or "".
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }
}

/// What a signed-in request knows: its session and the flash to show.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub session: Session,
    pub flash: Option<Flash>,
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether the browser reached us over TLS (directly or through a proxy
/// that says so).
fn over_tls(req_headers: &HeaderMap, uri: &http::Uri) -> bool {
    uri.scheme_str() == Some("https")
        || req_headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').next().is_some_and(|p| p.trim() == "https"))
}

fn set_cookie(name: &str, value: &str, max_age: Option<Duration>, tls: bool) -> HeaderValue {
    let mut c = format!("{name}={value}; HttpOnly; SameSite=Strict; Path=/console");
    match max_age {
        Some(age) => c.push_str(&format!("; Max-Age={}", age.as_secs())),
        None => c.push_str("; Max-Age=0"),
    }
    if tls {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).expect("cookie is ASCII")
}

/// 303 to `to`.
pub(crate) fn redirect(to: &str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, to.to_owned())],
        Body::empty(),
    )
        .into_response()
}

/// Requires a live session; a POST must carry its CSRF token.
async fn guard(State(console): State<Console>, req: Request, next: Next) -> Response {
    let live = cookie(req.headers(), COOKIE).and_then(|id| console.sessions.touch(id));
    let Some((session, flash)) = live else {
        return redirect("/console/signin");
    };
    let (mut parts, body) = req.into_parts();
    let mut fields = Fields::default();
    let body = if parts.method == Method::POST {
        let Ok(bytes) = axum::body::to_bytes(body, MAX_FORM).await else {
            return error_page(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Too large",
                "The form is larger than the console accepts.",
            );
        };
        fields = Fields::parse(&bytes);
        if !same(fields.get("csrf").as_bytes(), session.csrf.as_bytes()) {
            tracing::warn!("console POST without a valid CSRF token");
            return error_page(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "The form's security token is missing or stale. Go back, reload the page and try again.",
            );
        }
        Body::from(bytes)
    } else {
        body
    };
    parts.extensions.insert(Ctx { session, flash });
    parts.extensions.insert(fields);
    next.run(Request::from_parts(parts, body)).await
}

fn client_ip(req_ext: &http::Extensions) -> IpAddr {
    req_ext
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip())
}

async fn sign_in_page(State(console): State<Console>, req: Request) -> Response {
    if cookie(req.headers(), COOKIE).is_some_and(|id| console.sessions.touch(id).is_some()) {
        return redirect("/console/tenants");
    }
    sign_in_form(&console, &req, StatusCode::OK, None)
}

fn sign_in_form(
    console: &Console,
    req: &Request,
    status: StatusCode,
    problem: Option<&str>,
) -> Response {
    let token = session::random_hex(16);
    let tls = over_tls(req.headers(), req.uri());
    let what = if console.config.password.is_some() {
        "Console password or admin token"
    } else {
        "Admin token"
    };
    let body = html! {
        main.signin {
            h1 { "madbase console" }
            @if let Some(p) = problem {
                p.flash.error role="alert" { (p) }
            }
            form method="post" action="/console/signin" {
                input type="hidden" name="csrf" value=(token);
                input type="text" name="username" value="operator" autocomplete="username" hidden;
                label for="secret" { (what) }
                input #secret type="password" name="secret" required autocomplete="current-password" autofocus;
                button type="submit" { "Sign in" }
            }
            p.note {
                @if console.config.password.is_some() {
                    "The password is MADBASE_CONSOLE_PASSWORD. "
                } @else {
                    "No console password is set (MADBASE_CONSOLE_PASSWORD); "
                }
                "An admin token comes from " code { "madbase token admin" } "."
            }
        }
    };
    let mut resp = html_response(status, document("Sign in", None, body));
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(PRE_COOKIE, &token, Some(Duration::from_secs(3600)), tls),
    );
    resp
}

async fn sign_in(State(console): State<Console>, req: Request) -> Response {
    let ip = client_ip(req.extensions());
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 << 10).await else {
        return error_page(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Too large",
            "The form is too large.",
        );
    };
    let fields = Fields::parse(&bytes);
    let req = Request::from_parts(parts, Body::empty());
    let pre = cookie(req.headers(), PRE_COOKIE).unwrap_or("");
    if pre.is_empty() || !same(pre.as_bytes(), fields.get("csrf").as_bytes()) {
        return error_page(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "The sign-in form's security token is missing or stale. Reload the sign-in page.",
        );
    }
    if console.sessions.locked_out(ip) {
        tokio::time::sleep(console.config.failure_delay).await;
        return sign_in_form(
            &console,
            &req,
            StatusCode::TOO_MANY_REQUESTS,
            Some("Too many failed sign-ins from this address; wait 15 minutes."),
        );
    }
    let secret = fields.get("secret").trim();
    let by_password = console
        .config
        .password
        .as_ref()
        .is_some_and(|p| same(p.expose_secret().as_bytes(), secret.as_bytes()));
    let by_token = !by_password
        && jwt::verify_platform(console.app.jwt_secret.expose_secret(), secret, "admin").is_ok();
    if !(by_password || by_token) {
        console.sessions.failed(ip);
        tracing::warn!(%ip, "console sign-in failed");
        tokio::time::sleep(console.config.failure_delay).await;
        return sign_in_form(
            &console,
            &req,
            StatusCode::UNAUTHORIZED,
            Some("That is not the console password or a valid admin token."),
        );
    }
    console.sessions.succeeded(ip);
    let session = console.sessions.create();
    tracing::info!(%ip, how = if by_password { "password" } else { "admin token" }, "console sign-in");
    let tls = over_tls(req.headers(), req.uri());
    let mut resp = redirect("/console/tenants");
    let h = resp.headers_mut();
    h.append(
        header::SET_COOKIE,
        set_cookie(COOKIE, &session.id, Some(session::MAX_AGE), tls),
    );
    h.append(header::SET_COOKIE, set_cookie(PRE_COOKIE, "", None, tls));
    resp
}

async fn sign_out(
    State(console): State<Console>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    req: Request,
) -> Response {
    console.sessions.remove(&ctx.session.id);
    let tls = over_tls(req.headers(), req.uri());
    let mut resp = redirect("/console/signin");
    resp.headers_mut()
        .append(header::SET_COOKIE, set_cookie(COOKIE, "", None, tls));
    resp
}

/// Where a tenant page sits in the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tab {
    Overview,
    Sql,
    Tables,
    Functions,
    Settings,
}

/// The whole HTML document.
fn document(title: &str, ctx: Option<&Ctx>, main: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) " · madbase console" }
                link rel="icon" href="data:,";
                link rel="stylesheet" href="/console/assets/console.css";
                script src="/console/assets/console.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                @if let Some(ctx) = ctx {
                    header.top {
                        a.brand href="/console/tenants" { "madbase" }
                        nav aria-label="Console" {
                            a href="/console/tenants" { "Tenants" }
                            a href="/console/health" { "Health" }
                        }
                        form.logout method="post" action="/console/logout" {
                            input type="hidden" name="csrf" value=(ctx.session.csrf);
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                div #main tabindex="-1" {
                    @if let Some(Flash { ok, text }) = ctx.and_then(|c| c.flash.as_ref()) {
                        p class=(if *ok { "flash ok" } else { "flash error" }) role="status" { (text) }
                    }
                    (main)
                }
            }
        }
    }
}

/// A signed-in page.
pub(crate) fn page(ctx: &Ctx, title: &str, main: Markup) -> Response {
    html_response(StatusCode::OK, document(title, Some(ctx), main))
}

/// A tenant's page with its tabs.
pub(crate) fn tenant_page(ctx: &Ctx, id: &str, tab: Tab, title: &str, main: Markup) -> Response {
    tenant_page_status(ctx, id, tab, title, StatusCode::OK, main)
}

pub(crate) fn tenant_page_status(
    ctx: &Ctx,
    id: &str,
    tab: Tab,
    title: &str,
    status: StatusCode,
    main: Markup,
) -> Response {
    let base = format!("/console/tenants/{id}");
    let tabs = [
        (Tab::Overview, "Overview", base.clone()),
        (Tab::Sql, "SQL", format!("{base}/sql")),
        (Tab::Tables, "Tables", format!("{base}/tables")),
        (Tab::Functions, "Functions", format!("{base}/functions")),
        (Tab::Settings, "Settings", format!("{base}/settings")),
    ];
    let body = html! {
        p.crumbs { a href="/console/tenants" { "Tenants" } " / " (id) }
        h1 { (title) }
        nav.tabs aria-label="Tenant" {
            @for (t, label, href) in &tabs {
                @if *t == tab {
                    a href=(href) aria-current="page" { (label) }
                } @else {
                    a href=(href) { (label) }
                }
            }
        }
        (main)
    };
    html_response(
        status,
        document(&format!("{title} · {id}"), Some(ctx), body),
    )
}

fn html_response(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

/// A page that only says what went wrong.
pub(crate) fn error_page(status: StatusCode, title: &str, text: &str) -> Response {
    let body = html! {
        main.signin {
            h1 { (title) }
            p { (text) }
            p { a href="/console/tenants" { "Back to the console" } }
        }
    };
    html_response(status, document(title, None, body))
}

/// An admin API error as the console shows it.
pub(crate) fn api_error(e: &madbase_platform::ApiError) -> Markup {
    html! {
        div.flash.error role="alert" {
            strong { (e.message) }
            " " span.code { "(" (e.code) ")" }
            @if let Some(d) = &e.details { pre { (d) } }
            @if let Some(h) = &e.hint { p { "Hint: " (h) } }
        }
    }
}
