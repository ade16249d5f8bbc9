//! The operator console over a real loopback socket against a real
//! Postgres: sign-in (password, admin token, delay, lockout, cookie
//! attributes), sessions, CSRF on every POST, every page and action, and
//! tenant-controlled values shown escaped.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use madbase_platform::config::Env;
use madbase_platform::{CancellationToken, Listeners};
use madbase_tenancy::jwt;
use madbase_testkit::TestDb;
use madbase_testkit::service::{JWT_SECRET, MASTER_KEY, unique_id};
use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};

const PASSWORD: &str = "correct horse battery staple";

struct Console {
    url: String,
    http: reqwest::Client,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    _db: TestDb,
}

/// A signed-in browser: its session cookie and CSRF token.
#[derive(Clone, Debug)]
struct Session {
    cookie: String,
    csrf: String,
}

/// Control with the console; `{admin}` in an `extra` value is its admin URL.
async fn console(extra: &[(&str, &str)]) -> Console {
    let db = madbase_testkit::postgres().expect("postgres");
    let listeners = Listeners::bind(
        "127.0.0.1:0".parse().expect("addr"),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .await
    .expect("bind");
    let admin_url = format!("http://{}", listeners.admin_addr());
    let mut vars: HashMap<String, String> = [
        ("JWT_SECRET", JWT_SECRET.to_owned()),
        ("DATABASE_URL", db.url.clone()),
        ("DEFAULT_TENANT_DB_URL", db.server.url_for("postgres")),
        ("MADBASE_MASTER_KEY", MASTER_KEY.to_owned()),
        ("MADBASE_CONSOLE_PASSWORD", PASSWORD.to_owned()),
        // Nothing listens there unless a test says otherwise.
        ("MADBASE_FUNCTIONS_URL", "http://127.0.0.1:9".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (k, v) in extra {
        vars.insert((*k).to_owned(), v.replace("{admin}", &admin_url));
    }
    let config = madbase_control::Config::from_env(&Env::new(vars)).expect("config");
    let app = madbase_control::app(&config).await.expect("control");
    let url = format!("http://{}", listeners.api_addr());
    let stop = CancellationToken::new();
    let server = tokio::spawn(listeners.serve(app, stop.clone(), Duration::from_secs(1)));
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .expect("client");
    Console {
        url,
        http,
        stop,
        server,
        _db: db,
    }
}

/// The value of cookie `name` set by `resp`, with its attributes.
fn set_cookie(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

fn cookie_value(set_cookie: &str) -> String {
    set_cookie
        .split(';')
        .next()
        .and_then(|kv| kv.split_once('='))
        .map(|(_, v)| v.to_owned())
        .unwrap_or_default()
}

/// The first hidden CSRF field of a page.
fn csrf_of(html: &str) -> String {
    let marker = r#"name="csrf" value=""#;
    let start = html.find(marker).expect("a csrf field") + marker.len();
    html[start..start + html[start..].find('"').expect("end")].to_owned()
}

impl Console {
    async fn stop(self) {
        self.stop.cancel();
        self.server.await.expect("join").expect("serve");
    }

    /// Posts the sign-in form (with the form's own double-submit token).
    async fn try_sign_in(&self, secret: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let form = self
            .http
            .get(format!("{}/console/signin", self.url))
            .send()
            .await
            .expect("signin page");
        assert_eq!(form.status(), StatusCode::OK);
        let pre = set_cookie(&form, "madbase_console_signin").expect("pre cookie");
        let html = form.text().await.expect("html");
        let mut req = self
            .http
            .post(format!("{}/console/signin", self.url))
            .header(
                COOKIE,
                format!("madbase_console_signin={}", cookie_value(&pre)),
            )
            .form(&[("csrf", csrf_of(&html).as_str()), ("secret", secret)]);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.expect("signin")
    }

    async fn sign_in(&self) -> Session {
        let resp = self.try_sign_in(PASSWORD, &[]).await;
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        assert_eq!(resp.headers()[LOCATION], "/console/tenants");
        let cookie = format!(
            "madbase_console={}",
            cookie_value(&set_cookie(&resp, "madbase_console").expect("session cookie"))
        );
        let html = self
            .http
            .get(format!("{}/console/tenants", self.url))
            .header(COOKIE, &cookie)
            .send()
            .await
            .expect("tenants")
            .text()
            .await
            .expect("html");
        Session {
            csrf: csrf_of(&html),
            cookie,
        }
    }

    async fn get(&self, s: Option<&Session>, path: &str) -> (StatusCode, String) {
        let mut req = self.http.get(format!("{}{path}", self.url));
        if let Some(s) = s {
            req = req.header(COOKIE, &s.cookie);
        }
        let resp = req.send().await.expect("get");
        let status = resp.status();
        let location = resp
            .headers()
            .get(LOCATION)
            .map(|l| l.to_str().expect("ascii").to_owned());
        let body = resp.text().await.expect("body");
        (status, location.unwrap_or(body))
    }

    /// Posts a form (with the session's CSRF token unless `csrf` says
    /// otherwise); returns the status and the Location or the body.
    async fn post(
        &self,
        s: Option<&Session>,
        path: &str,
        csrf: Option<&str>,
        fields: &[(&str, &str)],
    ) -> (StatusCode, String) {
        let mut form: Vec<(&str, &str)> = fields.to_vec();
        let token = csrf.map(str::to_owned).or(s.map(|s| s.csrf.clone()));
        if let Some(t) = &token {
            form.push(("csrf", t));
        }
        let mut req = self.http.post(format!("{}{path}", self.url)).form(&form);
        if let Some(s) = s {
            req = req.header(COOKIE, &s.cookie);
        }
        let resp = req.send().await.expect("post");
        let status = resp.status();
        let location = resp
            .headers()
            .get(LOCATION)
            .map(|l| l.to_str().expect("ascii").to_owned());
        let body = resp.text().await.expect("body");
        (status, location.unwrap_or(body))
    }

    /// Follows a 303 and returns the page.
    async fn post_follow(
        &self,
        s: &Session,
        path: &str,
        fields: &[(&str, &str)],
    ) -> (String, String) {
        let (status, location) = self.post(Some(s), path, None, fields).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{path}: {location}");
        let (status, html) = self.get(Some(s), &location).await;
        assert_eq!(status, StatusCode::OK, "{location}");
        (location, html)
    }
}

/// Every page with a GET, for tenant `id`.
fn pages(id: &str) -> Vec<String> {
    let t = format!("/console/tenants/{id}");
    vec![
        "/console".to_owned(),
        "/console/tenants".to_owned(),
        "/console/health".to_owned(),
        t.clone(),
        format!("{t}?reveal=keys"),
        format!("{t}/sql"),
        format!("{t}/tables"),
        format!("{t}/rows?table=todos"),
        format!("{t}/rows/edit?table=todos&k.id=1"),
        format!("{t}/functions"),
        format!("{t}/settings"),
    ]
}

/// Every POST action, for tenant `id`.
fn actions(id: &str) -> Vec<String> {
    let t = format!("/console/tenants/{id}");
    vec![
        "/console/logout".to_owned(),
        "/console/tenants".to_owned(),
        format!("{t}/rotate"),
        format!("{t}/delete"),
        format!("{t}/sql"),
        format!("{t}/rows/update"),
        format!("{t}/rows/insert"),
        format!("{t}/functions"),
        format!("{t}/functions/delete"),
        format!("{t}/settings"),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn every_page_and_action_requires_sign_in() {
    let c = console(&[]).await;
    let s = c.sign_in().await;
    let id = unique_id("cauth");
    let (_, loc) = c
        .post(Some(&s), "/console/tenants", None, &[("id", &id)])
        .await;
    assert_eq!(loc, format!("/console/tenants/{id}?reveal=keys"));
    for path in pages(&id) {
        let (status, location) = c.get(None, &path).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "GET {path}");
        assert_eq!(location, "/console/signin", "GET {path}");
        // A made-up session is no session.
        let fake = Session {
            cookie: "madbase_console=00112233".to_owned(),
            csrf: "x".to_owned(),
        };
        let (status, location) = c.get(Some(&fake), &path).await;
        assert_eq!(
            (status, location.as_str()),
            (StatusCode::SEE_OTHER, "/console/signin"),
            "GET {path} with a made-up session"
        );
    }
    for path in actions(&id) {
        let (status, location) = c.post(None, &path, Some("x"), &[("id", "x")]).await;
        assert_eq!(
            (status, location.as_str()),
            (StatusCode::SEE_OTHER, "/console/signin"),
            "POST {path}"
        );
    }
    // The tenant is untouched, and signed in the pages render.
    for path in pages(&id) {
        let (status, _) = c.get(Some(&s), &path).await;
        assert!(
            status == StatusCode::OK
                || status == StatusCode::SEE_OTHER
                || status == StatusCode::NOT_FOUND,
            "GET {path}: {status}"
        );
    }
    // Assets are public, embedded and not from elsewhere.
    let (status, css) = c.get(None, "/console/assets/console.css").await;
    assert_eq!(status, StatusCode::OK);
    assert!(css.contains("prefers-color-scheme: dark"));
    let (status, _) = c.get(None, "/console/assets/console.js").await;
    assert_eq!(status, StatusCode::OK);
    let (_, html) = c.get(Some(&s), "/console/tenants").await;
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_in_cookies_delay_lockout_token_and_logout() {
    let c = console(&[]).await;
    // The session cookie's attributes; Secure only behind TLS.
    let resp = c.try_sign_in(PASSWORD, &[]).await;
    let cookie = set_cookie(&resp, "madbase_console").expect("cookie");
    for attr in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/console",
        "Max-Age=86400",
    ] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "{cookie}");
    let resp = c
        .try_sign_in(PASSWORD, &[("x-forwarded-proto", "https")])
        .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let cookie = set_cookie(&resp, "madbase_console").expect("cookie");
    assert!(cookie.contains("; Secure"), "{cookie}");
    let resp = c.get(None, "/console/tenants").await;
    assert_eq!(resp.0, StatusCode::SEE_OTHER);

    // A wrong password is answered late, with the form again.
    let started = Instant::now();
    let resp = c.try_sign_in("not the password", &[]).await;
    let took = started.elapsed();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(set_cookie(&resp, "madbase_console").is_none());
    assert!(took >= Duration::from_millis(450), "took {took:?}");
    let html = resp.text().await.expect("html");
    assert!(html.contains("not the console password"), "{html}");

    // An admin token signs in; another role's token or a wrong secret's does not.
    let admin = jwt::platform_token(JWT_SECRET, "admin", Duration::from_secs(60));
    assert_eq!(
        c.try_sign_in(&admin, &[]).await.status(),
        StatusCode::SEE_OTHER
    );
    let internal = jwt::platform_token(JWT_SECRET, "internal", Duration::from_secs(60));
    assert_eq!(
        c.try_sign_in(&internal, &[]).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let forged = jwt::platform_token(
        "another-secret-that-is-at-least-32-bytes",
        "admin",
        Duration::from_secs(60),
    );
    assert_eq!(
        c.try_sign_in(&forged, &[]).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // Sign-in without the form's token is forbidden.
    let resp = c
        .http
        .post(format!("{}/console/signin", c.url))
        .form(&[("secret", PASSWORD), ("csrf", "guess")])
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    // Logout ends the session.
    let s = c.sign_in().await;
    assert_eq!(c.get(Some(&s), "/console/tenants").await.0, StatusCode::OK);
    let (status, location) = c.post(Some(&s), "/console/logout", None, &[]).await;
    assert_eq!(
        (status, location.as_str()),
        (StatusCode::SEE_OTHER, "/console/signin")
    );
    assert_eq!(
        c.get(Some(&s), "/console/tenants").await,
        (StatusCode::SEE_OTHER, "/console/signin".to_owned())
    );

    // Ten failures in a row lock the address out, even for the right password.
    for _ in 0..10 {
        assert_eq!(
            c.try_sign_in("wrong", &[]).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        c.try_sign_in(PASSWORD, &[]).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_sessions_expire() {
    let c = console(&[("MADBASE_CONSOLE_IDLE_SECONDS", "0.5")]).await;
    let s = c.sign_in().await;
    assert_eq!(c.get(Some(&s), "/console/health").await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        c.get(Some(&s), "/console/health").await,
        (StatusCode::SEE_OTHER, "/console/signin".to_owned())
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn health_asks_the_configured_services() {
    let c = console(&[(
        "MADBASE_CONSOLE_SERVICES",
        "control={admin}, gone=http://127.0.0.1:9",
    )])
    .await;
    let s = c.sign_in().await;
    let (status, html) = c.get(Some(&s), "/console/health").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("<td>control /ready</td>"), "{html}");
    assert!(html.contains("200 OK in"), "{html}");
    assert!(html.contains("<td>gone /ready</td>"), "{html}");
    assert_eq!(html.matches("badge ok").count(), 3, "{html}");
    assert_eq!(html.matches("badge error").count(), 1, "{html}");
    c.stop().await;
    let bad = madbase_control::console::ConsoleConfig::from_env(&Env::new(HashMap::from([(
        "MADBASE_CONSOLE_SERVICES".to_owned(),
        "worker:9002".to_owned(),
    )])));
    assert!(bad.is_err());
    let short = madbase_control::console::ConsoleConfig::from_env(&Env::new(HashMap::from([(
        "MADBASE_CONSOLE_PASSWORD".to_owned(),
        "short".to_owned(),
    )])));
    assert!(
        short
            .expect_err("too short")
            .problem
            .contains("at least 12")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn csrf_is_checked_on_every_post() {
    let c = console(&[]).await;
    let s = c.sign_in().await;
    let other = c.sign_in().await;
    assert_ne!(s.csrf, other.csrf);
    let id = unique_id("ccsrf");
    c.post_follow(&s, "/console/tenants", &[("id", &id)]).await;
    for path in actions(&id) {
        for token in [None, Some("wrong"), Some(other.csrf.as_str())] {
            let mut form = vec![("id", "x"), ("confirm", id.as_str())];
            if let Some(t) = token {
                form.push(("csrf", t));
            }
            let resp = c
                .http
                .post(format!("{}{path}", c.url))
                .header(COOKIE, &s.cookie)
                .form(&form)
                .send()
                .await
                .expect("post");
            assert_eq!(
                resp.status(),
                StatusCode::FORBIDDEN,
                "POST {path} {token:?}"
            );
        }
    }
    // Nothing happened: the tenant is there, its keys unrotated, the session live.
    let (status, html) = c.get(Some(&s), &format!("/console/tenants/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("<dt>Key version</dt><dd>1</dd>"), "{html}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_page_and_action_works() {
    let c = console(&[]).await;
    let s = c.sign_in().await;
    let id = unique_id("cflow");
    let t = format!("/console/tenants/{id}");

    // Create: the detail page with the keys revealed.
    let (location, html) = c.post_follow(&s, "/console/tenants", &[("id", &id)]).await;
    assert_eq!(location, format!("{t}?reveal=keys"));
    assert!(html.contains(&format!("Tenant {id} created.")), "{html}");
    assert!(
        html.contains(r#"id="anon-key" readonly value="ey"#),
        "{html}"
    );
    let (_, list) = c.get(Some(&s), "/console/tenants").await;
    assert!(
        list.contains(&format!(r#"<a href="{t}">{id}</a>"#)),
        "{list}"
    );
    // A duplicate or invalid id is refused with a message.
    let (_, html) = c.post_follow(&s, "/console/tenants", &[("id", &id)]).await;
    assert!(html.contains("already exists"), "{html}");
    let (_, html) = c
        .post_follow(&s, "/console/tenants", &[("id", "Bad Id")])
        .await;
    assert!(html.contains("id must match"), "{html}");
    // Keys are hidden until revealed.
    let (_, html) = c.get(Some(&s), &t).await;
    assert!(!html.contains("anon-key"), "{html}");
    assert!(html.contains("Reveal keys"));

    // SQL: a script, its result as a table; an error with its position.
    let (status, html) = c
        .post(
            Some(&s),
            &format!("{t}/sql"),
            None,
            &[(
                "query",
                "create table todos (id int primary key, task text not null, done boolean default false);\n\
                 insert into todos (id, task) values (1, 'milk'), (2, 'eggs');\n\
                 select task, id from todos order by id",
            )],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("2 rows in"), "{html}");
    assert!(
        html.contains("<td>milk</td><td>1</td>"),
        "the statement's column order: {html}"
    );
    assert!(
        html.contains(r#"<th scope="col">task</th><th scope="col">id</th>"#),
        "{html}"
    );
    // The SQL endpoint: rows as before, or with the columns in order.
    let admin = jwt::platform_token(JWT_SECRET, "admin", Duration::from_secs(60));
    let api = |body: serde_json::Value| {
        c.http
            .post(format!("{}/v1/tenants/{id}/sql", c.url))
            .bearer_auth(&admin)
            .json(&body)
            .send()
    };
    let rows: serde_json::Value =
        api(serde_json::json!({"query": "select task, id from todos order by id"}))
            .await
            .expect("sql")
            .json()
            .await
            .expect("json");
    assert_eq!(
        rows,
        serde_json::json!([{"id": 1, "task": "milk"}, {"id": 2, "task": "eggs"}])
    );
    let with: serde_json::Value = api(serde_json::json!({
        "query": "select task, id from todos where id = $1", "params": [2], "columns": true
    }))
    .await
    .expect("sql")
    .json()
    .await
    .expect("json");
    assert_eq!(
        with,
        serde_json::json!({"columns": ["task", "id"], "rows": [{"id": 2, "task": "eggs"}]})
    );
    let (status, html) = c
        .post(
            Some(&s),
            &format!("{t}/sql"),
            None,
            &[("query", "select 1;\nselect nope from todos")],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        html.contains("column &quot;nope&quot; does not exist")
            || html.contains("column \"nope\" does not exist"),
        "{html}"
    );
    assert!(html.contains("At line 2, column 8"), "{html}");
    assert!(html.contains("SQLSTATE 42703"), "{html}");

    // Table browser: the list, rows, sort, filter, edit, add.
    let (_, html) = c.get(Some(&s), &format!("{t}/tables")).await;
    assert!(
        html.contains(&format!(r#"href="{t}/rows?table=todos""#)),
        "{html}"
    );
    let (status, html) = c
        .get(Some(&s), &format!("{t}/rows?table=todos&sort=id&dir=desc"))
        .await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let (eggs, milk) = (
        html.find("eggs").expect("eggs"),
        html.find("milk").expect("milk"),
    );
    assert!(eggs < milk, "sorted descending");
    let (_, html) = c
        .get(
            Some(&s),
            &format!("{t}/rows?table=todos&col=id&op=gt&value=1"),
        )
        .await;
    assert!(
        html.contains("eggs") && !html.contains("<td>milk</td>"),
        "{html}"
    );
    let (_, html) = c
        .get(
            Some(&s),
            &format!("{t}/rows?table=todos&col=task&op=contains&value=IL"),
        )
        .await;
    assert!(
        html.contains("<td>milk</td>") && !html.contains("<td>eggs</td>"),
        "{html}"
    );
    let (status, html) = c
        .get(
            Some(&s),
            &format!("{t}/rows?table=todos&col=id&op=eq&value=abc"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("invalid input syntax for type integer"),
        "{html}"
    );
    let (status, html) = c.get(Some(&s), &format!("{t}/rows?table=nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{html}");

    let (status, html) = c
        .get(Some(&s), &format!("{t}/rows/edit?table=todos&k.id=1"))
        .await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains(r#"name="v.task" value="milk""#), "{html}");
    let (_, html) = c
        .post_follow(
            &s,
            &format!("{t}/rows/update"),
            &[
                ("table", "todos"),
                ("k.id", "1"),
                ("v.id", "1"),
                ("v.task", "oat milk"),
                ("v.done", ""),
                ("null.done", "1"),
            ],
        )
        .await;
    assert!(html.contains("Row saved."), "{html}");
    assert!(html.contains("<td>oat milk</td>"), "{html}");
    let (_, html) = c
        .post_follow(
            &s,
            &format!("{t}/rows/insert"),
            &[
                ("table", "todos"),
                ("v.id", "3"),
                ("v.task", "bread"),
                ("v.done", ""),
            ],
        )
        .await;
    assert!(
        html.contains("Row added.") && html.contains("<td>bread</td>"),
        "{html}"
    );
    // A bad value is the database's error, shown.
    let (status, html) = c
        .post(
            Some(&s),
            &format!("{t}/rows/insert"),
            None,
            &[("table", "todos"), ("v.id", "3"), ("v.task", "dup")],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(html.contains("duplicate key"), "{html}");
    let (_, rows) = c
        .post(
            Some(&s),
            &format!("{t}/sql"),
            None,
            &[("query", "select id, task, done from todos order by id")],
        )
        .await;
    assert!(
        rows.contains("<td>oat milk</td><td class=\"null\">NULL</td>")
            || rows.contains("<td class=\"null\">NULL</td><td>1</td><td>oat milk</td>"),
        "{rows}"
    );

    // Functions: deploy, a syntax error kept with its source, list, delete.
    let src = "Deno.serve(() => new Response('hi'));";
    let (_, html) = c
        .post_follow(
            &s,
            &format!("{t}/functions"),
            &[("name", "hello"), ("source", src), ("verify_jwt", "true")],
        )
        .await;
    assert!(
        html.contains("Function hello deployed (version 1)."),
        "{html}"
    );
    assert!(html.contains("<code>hello</code>"), "{html}");
    let (_, html) = c
        .post_follow(
            &s,
            &format!("{t}/functions"),
            &[
                ("name", "hello"),
                ("source", "Deno.serve(() => new Response('v2'));"),
            ],
        )
        .await;
    assert!(
        html.contains("Function hello deployed (version 2)."),
        "{html}"
    );
    assert!(html.contains("<td>2, 1</td>"), "both versions kept: {html}");
    assert!(
        html.contains(r#"<td>no</td>"#),
        "verify_jwt off without the box: {html}"
    );
    let (status, html) = c
        .post(
            Some(&s),
            &format!("{t}/functions"),
            None,
            &[("name", "broken"), ("source", "Deno.serve(() => {")],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        html.contains("Deno.serve(() =&gt; {"),
        "the source is kept: {html}"
    );
    let (_, html) = c
        .post_follow(&s, &format!("{t}/functions/delete"), &[("name", "hello")])
        .await;
    assert!(
        html.contains("Function hello deleted.") && html.contains("No functions deployed."),
        "{html}"
    );

    // Settings: CORS origins, then back to the default.
    let (_, html) = c
        .post_follow(
            &s,
            &format!("{t}/settings"),
            &[
                ("cors", "list"),
                (
                    "origins",
                    "https://app.example.com\n\nhttp://localhost:3000",
                ),
            ],
        )
        .await;
    assert!(html.contains("Settings saved."), "{html}");
    assert!(
        html.contains("https://app.example.com\nhttp://localhost:3000"),
        "{html}"
    );
    let (_, html) = c
        .post_follow(
            &s,
            &format!("{t}/settings"),
            &[("cors", "list"), ("origins", "not an origin")],
        )
        .await;
    assert!(html.contains("Settings not saved"), "{html}");
    let (_, html) = c
        .post_follow(
            &s,
            &format!("{t}/settings"),
            &[("cors", "default"), ("origins", "")],
        )
        .await;
    assert!(html.contains(r#"value="default" checked"#), "{html}");

    // Rotate: version 2, keys shown.
    let (_, html) = c.post_follow(&s, &format!("{t}/rotate"), &[]).await;
    assert!(html.contains("Keys rotated (version 2)"), "{html}");
    assert!(html.contains("<dt>Key version</dt><dd>2</dd>"), "{html}");

    // Health.
    let (status, html) = c.get(Some(&s), "/console/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(html.matches("badge ok").count(), 2, "{html}");

    // Delete: refused unless the id is typed, then gone.
    let (_, html) = c
        .post_follow(&s, &format!("{t}/delete"), &[("confirm", "nope")])
        .await;
    assert!(html.contains("Not deleted"), "{html}");
    let (location, html) = c
        .post_follow(&s, &format!("{t}/delete"), &[("confirm", &id)])
        .await;
    assert_eq!(location, "/console/tenants");
    assert!(html.contains(&format!("Tenant {id} deleted.")), "{html}");
    assert_eq!(c.get(Some(&s), &t).await.0, StatusCode::NOT_FOUND);
    c.stop().await;
}

/// Values a tenant controls, as stored, and how the page must show them.
const XSS: [&str; 3] = [
    "<script>alert(1)</script>",
    "\"><img src=x onerror=alert(1)>",
    "'><svg onload=alert(1)>",
];

fn assert_escaped(html: &str, what: &str) {
    for x in XSS {
        assert!(!html.contains(x), "{what}: raw {x:?} in the page:\n{html}");
    }
    assert!(
        !html.contains("<img src=x") && !html.contains("<svg"),
        "{what}"
    );
    assert!(!html.contains("<script>alert"), "{what}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tenant_values_are_escaped() {
    let c = console(&[]).await;
    let s = c.sign_in().await;
    let id = unique_id("cxss");
    let t = format!("/console/tenants/{id}");
    c.post_follow(&s, "/console/tenants", &[("id", &id)]).await;
    let lit = |v: &str| format!("'{}'", v.replace('\'', "''"));
    let ident = |v: &str| format!("\"{}\"", v.replace('"', "\"\""));
    let sql = format!(
        "create table {tbl} (id int primary key, {col} text);\n\
         insert into {tbl} values (1, {a}), (2, {b}), (3, {c});\n\
         create view {view} as select * from {tbl};\n\
         select * from {tbl}",
        tbl = ident(XSS[0]),
        col = ident(XSS[1]),
        view = ident(XSS[2]),
        a = lit(XSS[0]),
        b = lit(XSS[1]),
        c = lit(XSS[2]),
    );
    let (status, html) = c
        .post(Some(&s), &format!("{t}/sql"), None, &[("query", &sql)])
        .await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert_escaped(&html, "SQL result and editor");
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{html}"
    );
    // An error message quoting the values.
    let (_, html) = c
        .post(
            Some(&s),
            &format!("{t}/sql"),
            None,
            &[(
                "query",
                &format!("select {} from {}", ident(XSS[2]), ident(XSS[0])),
            )],
        )
        .await;
    assert!(html.contains("does not exist"), "{html}");
    assert_escaped(&html, "SQL error");

    let (_, html) = c.get(Some(&s), &format!("{t}/tables")).await;
    assert_escaped(&html, "table list");
    assert!(html.contains("&lt;svg onload=alert(1)&gt;"), "{html}");
    let q = |table: &str| {
        let mut ser = reqwest::Url::parse("http://x/").expect("url");
        ser.query_pairs_mut().append_pair("table", table);
        ser.query().unwrap_or_default().to_owned()
    };
    for (table, what) in [(XSS[0], "table rows"), (XSS[2], "view rows")] {
        let (status, html) = c.get(Some(&s), &format!("{t}/rows?{}", q(table))).await;
        assert_eq!(status, StatusCode::OK, "{html}");
        assert_escaped(&html, what);
        assert!(
            html.contains("&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"),
            "{html}"
        );
    }
    let (status, html) = c
        .get(Some(&s), &format!("{t}/rows/edit?{}&k.id=2", q(XSS[0])))
        .await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert_escaped(&html, "row editor");
    // Filtering by the hostile column with a hostile value round-trips.
    let mut url = reqwest::Url::parse("http://x/").expect("url");
    url.query_pairs_mut()
        .append_pair("table", XSS[0])
        .append_pair("col", XSS[1])
        .append_pair("op", "eq")
        .append_pair("value", XSS[2]);
    let (_, html) = c
        .get(
            Some(&s),
            &format!("{t}/rows?{}", url.query().unwrap_or_default()),
        )
        .await;
    assert_escaped(&html, "filtered rows");
    assert!(html.contains("Rows 1–1"), "{html}");
    // Saving the hostile row keeps the value intact.
    let field = format!("v.{}", XSS[1]);
    let (_, html) = c
        .post_follow(
            &s,
            &format!("{t}/rows/update"),
            &[
                ("table", XSS[0]),
                ("k.id", "2"),
                ("v.id", "2"),
                (&field, XSS[0]),
            ],
        )
        .await;
    assert!(html.contains("Row saved."), "{html}");
    assert_escaped(&html, "after saving");
    c.stop().await;
}

/// A pre-bound listener pair served once its app exists.
async fn bind() -> Listeners {
    Listeners::bind(
        "127.0.0.1:0".parse().expect("addr"),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .await
    .expect("bind")
}

/// Polls `path` until `ready(html)` (scrapes arrive every half second).
async fn until(c: &Console, s: &Session, path: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, html) = c.get(Some(s), path).await;
        assert_eq!(status, StatusCode::OK, "{html}");
        if ready(&html) {
            return html;
        }
        assert!(Instant::now() < deadline, "{path} never got there: {html}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Health and tenants figures from a real proxy's and control's own
/// `/metrics` (scraped every 0.5 s here), and a function's recent
/// invocations from a real functions service.
#[tokio::test(flavor = "multi_thread")]
async fn health_tenants_and_functions_show_the_services_figures() {
    let (proxy_l, functions_l) = (bind().await, bind().await);
    let proxy_url = format!("http://{}", proxy_l.api_addr());
    let functions_url = format!("http://{}", functions_l.api_addr());
    let services = format!(
        "control={{admin}},proxy=http://{},gone=http://127.0.0.1:9",
        proxy_l.admin_addr()
    );
    let c = console(&[
        ("MADBASE_CONSOLE_SERVICES", &services),
        ("MADBASE_CONSOLE_SCRAPE_SECONDS", "0.5"),
        ("MADBASE_FUNCTIONS_URL", &functions_url),
    ])
    .await;
    let stop = CancellationToken::new();
    let env = |extra: &[(&str, &str)]| {
        let mut vars = vec![("MADBASE_CONTROL_URL", c.url.as_str())];
        vars.extend_from_slice(extra);
        madbase_testkit::service::env(&vars)
    };
    // The proxy's worker is not running: data requests answer 502.
    let proxy = madbase_proxy::app(
        &madbase_proxy::Config::from_env(&env(&[
            ("MADBASE_WORKER_URL", "http://127.0.0.1:9"),
            ("MADBASE_FUNCTIONS_URL", &functions_url),
        ]))
        .expect("proxy config"),
    )
    .expect("proxy");
    let functions = madbase_functions::app(
        &madbase_functions::Config::from_env(&env(&[(
            "MADBASE_FUNCTIONS_WORKER_CMD",
            "/bin/false",
        )]))
        .expect("functions config"),
    )
    .expect("functions");
    let servers = [
        tokio::spawn(proxy_l.serve(proxy, stop.clone(), Duration::from_secs(1))),
        tokio::spawn(functions_l.serve(functions, stop.clone(), Duration::from_secs(1))),
    ];

    let s = c.sign_in().await;
    let id = unique_id("cfig");
    let t = format!("/console/tenants/{id}");
    c.post_follow(&s, "/console/tenants", &[("id", &id)]).await;
    let (_, keys) = c.get(Some(&s), &format!("{t}?reveal=keys")).await;
    let marker = r#"id="anon-key" readonly value=""#;
    let start = keys.find(marker).expect("anon key") + marker.len();
    let anon = &keys[start..start + keys[start..].find('"').expect("end")];

    // Health: every service's row; charts once two scrapes exist.
    let html = until(&c, &s, "/console/health", |h| h.contains("<svg")).await;
    for name in ["control", "proxy", "gone"] {
        assert!(
            html.contains(&format!(r#"<th scope="row">{name}</th>"#)),
            "{html}"
        );
    }
    assert!(
        html.contains("failed"),
        "the unreachable service's scrapes: {html}"
    );
    assert!(html.contains("keeps the last hour"), "{html}");

    // Tenant traffic: three 502s (no worker) and a 401 (no key).
    for _ in 0..3 {
        let resp = c
            .http
            .get(format!("{proxy_url}/t/{id}/rest/v1/todos"))
            .header("apikey", anon)
            .send()
            .await
            .expect("proxy");
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    }
    let resp = c
        .http
        .get(format!("{proxy_url}/t/{id}/rest/v1/todos"))
        .send()
        .await
        .expect("proxy");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let row = |html: &str| {
        html.find(&format!(r#"<a href="{t}">{id}</a>"#))
            .map(|i| html[i..].split("</tr>").next().unwrap_or("").to_owned())
    };
    let list = until(&c, &s, "/console/tenants", |h| {
        row(h).is_some_and(|r| r.contains("<td>4 ("))
    })
    .await;
    let r = row(&list).expect("row");
    assert!(r.contains("/min)</td><td>75.00 %</td>"), "{r}");
    assert!(list.contains("madbase_proxy_requests_total"), "{list}");
    let (_, overview) = c.get(Some(&s), &t).await;
    assert!(overview.contains("75.00 % errors (5xx)"), "{overview}");
    let html = until(&c, &s, "/console/health", |h| {
        h.split(r#"<th scope="row">proxy</th>"#)
            .nth(1)
            .is_some_and(|p| {
                p.contains("5xx error ratio over the last hour: latest")
                    && !p.starts_with("<td><span class=\"figure\">–")
            })
    })
    .await;
    let proxy_row = html
        .split(r#"<th scope="row">proxy</th>"#)
        .nth(1)
        .and_then(|p| p.split("</tr>").next())
        .expect("proxy row")
        .to_owned();
    assert!(proxy_row.contains("ms</span>"), "a p99: {proxy_row}");
    assert!(
        proxy_row.contains("<polyline") || proxy_row.contains("<circle"),
        "{proxy_row}"
    );
    assert!(
        !proxy_row.contains("<td><span class=\"figure\">0.00 %"),
        "{proxy_row}"
    );

    // Functions: a refused invocation (no JWT) is recorded, its message escaped.
    c.post_follow(
        &s,
        &format!("{t}/functions"),
        &[
            ("name", "hello"),
            ("source", "Deno.serve(() => new Response('hi'));"),
            ("verify_jwt", "true"),
        ],
    )
    .await;
    let (_, html) = c.get(Some(&s), &format!("{t}/functions")).await;
    assert!(html.contains("no invocations yet"), "{html}");
    let resp = c
        .http
        .post(format!("{proxy_url}/t/{id}/functions/v1/hello"))
        .header("apikey", anon)
        .send()
        .await
        .expect("invoke");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let (_, html) = c.get(Some(&s), &format!("{t}/functions")).await;
    assert!(html.contains("1 recent"), "{html}");
    assert!(html.contains("unauthorized"), "{html}");
    assert!(html.contains("Bearer &lt;the tenant"), "escaped: {html}");
    assert!(!html.contains("Bearer <the"), "{html}");
    // The record needs the internal token.
    let direct = c
        .http
        .get(format!(
            "{functions_url}/internal/v1/tenants/{id}/functions/hello/invocations"
        ))
        .bearer_auth(jwt::platform_token(
            JWT_SECRET,
            "admin",
            Duration::from_secs(60),
        ))
        .send()
        .await
        .expect("direct");
    assert_eq!(direct.status(), StatusCode::UNAUTHORIZED);

    stop.cancel();
    for server in servers {
        server.await.expect("join").expect("serve");
    }
    c.stop().await;
}
