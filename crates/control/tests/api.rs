//! The control plane against a real Postgres: tenant lifecycle, keys,
//! secrets, the SQL endpoint, function deploys, bad input, concurrency and
//! half failures.
//! Routers are driven without a socket; the tenant client and function
//! deploy socket tests serve
//! control on a real loopback listener.

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use madbase_platform::config::Env;
use madbase_platform::secrets::ExposeSecret as _;
use madbase_platform::server::{admin_router, api_router};
use madbase_platform::{CancellationToken, Listeners, Metrics};
use madbase_tenancy::jwt;
use madbase_tenancy::{TenantClient, TenantInfo};
use madbase_testkit::TestDb;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use madbase_testkit::service::{JWT_SECRET as SECRET, MASTER_KEY, unique_id};

fn config(db: &TestDb, master_key: &str) -> madbase_control::Config {
    let vars: HashMap<String, String> = [
        ("JWT_SECRET", SECRET.to_owned()),
        ("DATABASE_URL", db.url.clone()),
        ("DEFAULT_TENANT_DB_URL", db.server.url_for("postgres")),
        ("MADBASE_MASTER_KEY", master_key.to_owned()),
        ("MADBASE_SQL_TIMEOUT_SECONDS", "1".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    madbase_control::Config::from_env(&Env::new(vars)).expect("valid config")
}

struct Control {
    router: Router,
    admin: Router,
    db: TestDb,
}

async fn control() -> Control {
    let db = madbase_testkit::postgres().expect("postgres");
    let app = madbase_control::app(&config(&db, MASTER_KEY))
        .await
        .expect("control starts");
    Control {
        router: api_router(&app),
        admin: admin_router(&app),
        db,
    }
}

fn admin_token() -> String {
    jwt::platform_token(SECRET, "admin", Duration::from_secs(600))
}

impl Control {
    async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        self.raw(req.body(body).expect("request")).await
    }

    async fn raw(&self, req: Request<Body>) -> (StatusCode, Value) {
        let resp = self.router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        assert!(resp.headers().contains_key("x-request-id"));
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, v)
    }

    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.send(method, path, Some(&admin_token()), body).await
    }

    async fn create(&self, id: &str) -> Value {
        let (status, body) = self
            .admin("POST", "/v1/tenants", Some(json!({ "id": id })))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    async fn internal(&self, id: &str) -> (StatusCode, Value) {
        let token = jwt::platform_token(SECRET, "internal", Duration::from_secs(60));
        self.send(
            "GET",
            &format!("/internal/v1/tenants/{id}"),
            Some(&token),
            None,
        )
        .await
    }

    fn psql(&self, sql: &str) -> String {
        self.db.server.psql("postgres", sql).expect("psql")
    }
}

fn psql_url(url: &str, sql: &str) -> Result<String, String> {
    let out = std::process::Command::new("psql")
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .output()
        .expect("psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test]
async fn test_health_endpoint_control() {
    let db = madbase_testkit::postgres().expect("postgres");
    let app = madbase_control::app(&config(&db, MASTER_KEY))
        .await
        .expect("control starts");
    madbase_testkit::service::assert_health(&app).await;
}

#[tokio::test]
async fn create_provisions_database_roles_and_keys() {
    let c = control().await;
    let id = unique_id("acme");
    let created = c.create(&id).await;
    for field in [
        "id",
        "created_at",
        "anon_key",
        "service_role_key",
        "db_url",
        "rest_url",
    ] {
        assert!(created[field].is_string(), "{field}: {created}");
    }
    assert!(
        created["rest_url"]
            .as_str()
            .expect("str")
            .ends_with(&format!("/t/{id}/rest/v1"))
    );
    let db_name = format!("tenant_{}", id.replace('-', "_"));
    assert_eq!(
        c.psql(&format!(
            "SELECT count(*) FROM pg_database WHERE datname = '{db_name}'"
        )),
        "1"
    );
    let roles = c.psql(&format!(
        "SELECT rolname || ':' || rolcanlogin || ':' || rolinherit || ':' || rolbypassrls FROM pg_roles \
         WHERE rolname IN ('{db_name}_owner', '{db_name}_authenticator', 'anon', 'authenticated', 'service_role') ORDER BY rolname"
    ));
    assert_eq!(
        roles.lines().collect::<Vec<_>>(),
        [
            "anon:false:false:false",
            "authenticated:false:false:false",
            "service_role:false:false:true",
            &format!("{db_name}_authenticator:true:false:false"),
            &format!("{db_name}_owner:true:true:false"),
        ]
    );
    // The authenticator can become each API role.
    let members = c.psql(&format!(
        "SELECT string_agg(r.rolname, ',' ORDER BY r.rolname) FROM pg_auth_members m \
         JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = '{db_name}_authenticator'"
    ));
    assert_eq!(members, "anon,authenticated,service_role");

    // The anon key verifies with the stored secret and says anon.
    let (status, info) = c.internal(&id).await;
    assert_eq!(status, 200);
    let info: TenantInfo = serde_json::from_value(info).expect("tenant info");
    let claims = jwt::verify_tenant_token(
        info.jwt_secret.expose_secret(),
        &id,
        created["anon_key"].as_str().expect("key"),
    )
    .expect("valid key");
    assert_eq!(claims["role"], "anon");
    assert_eq!(claims["iss"], "madbase");
    assert_eq!(claims["ref"], id.as_str());
    let service = jwt::verify_tenant_token(
        info.jwt_secret.expose_secret(),
        &id,
        created["service_role_key"].as_str().expect("key"),
    )
    .expect("valid");
    assert_eq!(service["role"], "service_role");
    // A key of this tenant is not a key of another one.
    assert!(
        jwt::verify_tenant_token(
            info.jwt_secret.expose_secret(),
            "other-tenant",
            created["anon_key"].as_str().expect("key")
        )
        .is_err()
    );

    // The owner's db_url connects and can create a table.
    let db_url = created["db_url"].as_str().expect("db_url");
    psql_url(db_url, "CREATE TABLE notes (id serial PRIMARY KEY, body text); INSERT INTO notes (body) VALUES ('hi')").expect("owner creates a table");
    // The API roles may use it (default privileges), and auth.* helpers exist.
    let check = psql_url(
        db_url,
        "SELECT has_table_privilege('anon', 'notes', 'SELECT') AND has_table_privilege('service_role', 'notes', 'INSERT') \
         AND has_sequence_privilege('authenticated', 'notes_id_seq', 'USAGE'); \
         BEGIN; SELECT set_config('request.jwt.claims', '{\"sub\":\"6f1c1b7e-1111-4a4a-9a9a-000000000001\",\"role\":\"authenticated\"}', true); \
         SELECT auth.uid()::text || ' ' || auth.role() || ' ' || (auth.jwt() ->> 'role'); COMMIT;",
    )
    .expect("privileges");
    assert!(check.starts_with('t'), "{check}");
    assert!(
        check.contains("6f1c1b7e-1111-4a4a-9a9a-000000000001 authenticated authenticated"),
        "{check}"
    );
    // The authenticator connects to its own database only; anon cannot connect at all.
    // url_for keeps the server's query (`?host=/socket/dir` when Postgres is
    // on a unix socket, as in the Nix check): the database goes before it.
    let auth_url = c.db.server.url_for(&info.database).replacen(
        "postgres@",
        &format!(
            "{}:{}@",
            info.authenticator_user,
            info.authenticator_password.expose_secret()
        ),
        1,
    );
    assert_eq!(
        psql_url(&auth_url, "SELECT current_user").expect("authenticator connects"),
        info.authenticator_user
    );
    let anon_url =
        c.db.server
            .url_for(&db_name)
            .replacen("postgres@", "anon@", 1);
    assert!(
        psql_url(&anon_url, "SELECT 1").is_err(),
        "anon must not log in"
    );
    let other = c.create(&unique_id("other")).await;
    let other_owner = other["db_url"].as_str().expect("url");
    let (head, _) = other_owner.rsplit_once('/').expect("db in url");
    assert!(
        psql_url(&format!("{head}/{db_name}"), "SELECT 1").is_err(),
        "another tenant's owner cannot connect"
    );
    // The metrics know about the tenants.
    let resp = c
        .admin
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).expect("req"))
        .await
        .expect("ok");
    let text = String::from_utf8_lossy(&resp.into_body().collect().await.expect("body").to_bytes())
        .into_owned();
    assert!(text.contains("madbase_tenants 2"), "{text}");
    assert!(
        text.contains(r#"madbase_tenant_operations_total{op="create",outcome="success"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"madbase_db_pool_connections{pool="control",state="max"} 10"#),
        "{text}"
    );
}

#[tokio::test]
async fn admin_api_requires_an_admin_token() {
    let c = control().await;
    let expired = jwt::sign(
        SECRET.as_bytes(),
        &jwt::PlatformClaims {
            role: "admin".into(),
            iss: "madbase".into(),
            iat: 1,
            exp: jwt::now() - 10,
        },
    );
    let wrong_secret = jwt::platform_token(
        "a-different-secret-of-enough-length!!",
        "admin",
        Duration::from_secs(60),
    );
    let internal = jwt::platform_token(SECRET, "internal", Duration::from_secs(60));
    for token in [
        None,
        Some("garbage"),
        Some(expired.as_str()),
        Some(wrong_secret.as_str()),
        Some(internal.as_str()),
    ] {
        let (status, body) = c.send("GET", "/v1/tenants", token, None).await;
        assert_eq!(status, 401, "{token:?}");
        assert_eq!(body["code"], "unauthorized");
        assert!(body["request_id"].is_string());
    }
    // The internal API refuses the admin token.
    let (status, _) = c
        .send(
            "GET",
            "/internal/v1/tenants/acme",
            Some(&admin_token()),
            None,
        )
        .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let c = control().await;
    let token = admin_token();
    let post = |body: Body, ctype: Option<&str>| {
        let mut req =
            Request::post("/v1/tenants").header("authorization", format!("Bearer {token}"));
        if let Some(ct) = ctype {
            req = req.header("content-type", ct);
        }
        req.body(body).expect("request")
    };
    let cases: Vec<(Request<Body>, u16, &str)> = vec![
        (
            post(Body::from("{not json"), Some("application/json")),
            400,
            "invalid_json",
        ),
        (
            post(Body::from(r#"{"id":"acme"}"#), Some("text/plain")),
            415,
            "unsupported_media_type",
        ),
        (
            post(Body::from(r#"{"id":"acme"}"#), None),
            415,
            "unsupported_media_type",
        ),
        (
            post(
                Body::from(r#"{"id":"acme","extra":1}"#),
                Some("application/json"),
            ),
            400,
            "invalid_json",
        ),
        (
            post(Body::from(r#"{"id":42}"#), Some("application/json")),
            400,
            "invalid_json",
        ),
        (
            post(
                Body::from(format!(r#"{{"id":"{}"}}"#, "a".repeat(2 << 20))),
                Some("application/json"),
            ),
            413,
            "payload_too_large",
        ),
        (
            post(Body::from(r#"{"id":"Bad_Id"}"#), Some("application/json")),
            400,
            "invalid_tenant_id",
        ),
        (
            post(Body::from(r#"{"id":"ab"}"#), Some("application/json")),
            400,
            "invalid_tenant_id",
        ),
        (
            post(Body::from(r#"{"id":"admin"}"#), Some("application/json")),
            400,
            "invalid_tenant_id",
        ),
        (
            post(
                Body::from(r#"{"id":"template1"}"#),
                Some("application/json"),
            ),
            400,
            "invalid_tenant_id",
        ),
    ];
    for (req, status, code) in cases {
        let (got, body) = c.raw(req).await;
        assert_eq!(got.as_u16(), status, "{body}");
        assert_eq!(body["code"], code, "{body}");
        assert!(
            body["request_id"].is_string() && body["message"].is_string(),
            "{body}"
        );
    }
    let (status, body) = c.admin("GET", "/v1/tenants?limit=0", None).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = c.admin("GET", "/v1/tenants?limit=abc", None).await;
    assert_eq!(status, 400);
    let (status, _) = c.admin("GET", "/v1/tenants/nope-nope", None).await;
    assert_eq!(status, 404);
    let (status, body) = c
        .admin(
            "POST",
            "/v1/tenants/nope-nope/sql",
            Some(json!({"query": "select 1"})),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    // Duplicate id.
    let id = unique_id("dup");
    c.create(&id).await;
    let (status, body) = c
        .admin("POST", "/v1/tenants", Some(json!({ "id": id })))
        .await;
    assert_eq!(status, 409);
    assert_eq!(body["code"], "tenant_exists");
}

#[tokio::test]
async fn list_get_delete_and_rotate() {
    let c = control().await;
    let ids: Vec<String> = (0..3).map(|_| unique_id("lst")).collect();
    for id in &ids {
        c.create(id).await;
    }
    // Stable pagination by id.
    let (status, page1) = c.admin("GET", "/v1/tenants?limit=2", None).await;
    assert_eq!(status, 200);
    let after = page1["next_after"].as_str().expect("more pages").to_owned();
    let (_, page2) = c
        .admin("GET", &format!("/v1/tenants?limit=2&after={after}"), None)
        .await;
    let mut seen: Vec<String> = page1["tenants"]
        .as_array()
        .expect("array")
        .iter()
        .chain(page2["tenants"].as_array().expect("array"))
        .map(|t| t["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(seen.len(), 3);
    seen.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(seen, expected);
    assert!(page2["next_after"].is_null());

    // Get shows no secrets.
    let (status, got) = c
        .admin("GET", &format!("/v1/tenants/{}", ids[0]), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(got["id"], ids[0].as_str());
    let text = got.to_string();
    assert!(
        !text.contains("key\"")
            && !text.contains("secret")
            && !text.contains("password")
            && !text.contains("db_url"),
        "{text}"
    );

    // Rotate: new keys; old keys rejected by the verification helper.
    let (_, before) = c.internal(&ids[1]).await;
    let old_secret = before["jwt_secret"].as_str().expect("secret").to_owned();
    let old_key = jwt::api_key(&old_secret, &ids[1], "anon");
    let (status, rotated) = c
        .admin("POST", &format!("/v1/tenants/{}/keys/rotate", ids[1]), None)
        .await;
    assert_eq!(status, 200, "{rotated}");
    assert_eq!(rotated["key_version"], 2);
    let (_, after_rotate) = c.internal(&ids[1]).await;
    let new_secret = after_rotate["jwt_secret"].as_str().expect("secret");
    assert_ne!(new_secret, old_secret);
    assert_eq!(after_rotate["key_version"], 2);
    assert!(
        jwt::verify_tenant_token(new_secret, &ids[1], &old_key).is_err(),
        "old key rejected"
    );
    assert!(
        jwt::verify_tenant_token(
            new_secret,
            &ids[1],
            rotated["anon_key"].as_str().expect("key")
        )
        .is_ok()
    );
    let (status, _) = c
        .admin("POST", "/v1/tenants/no-such-one/keys/rotate", None)
        .await;
    assert_eq!(status, 404);

    // Delete: 204, then 404; database and roles gone; connections terminated.
    let db_name = format!("tenant_{}", ids[2].replace('-', "_"));
    let (status, _) = c
        .admin("DELETE", &format!("/v1/tenants/{}", ids[2]), None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = c
        .admin("GET", &format!("/v1/tenants/{}", ids[2]), None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = c
        .admin("DELETE", &format!("/v1/tenants/{}", ids[2]), None)
        .await;
    assert_eq!(status, 404);
    assert_eq!(
        c.psql(&format!(
            "SELECT count(*) FROM pg_database WHERE datname = '{db_name}'"
        )),
        "0"
    );
    assert_eq!(
        c.psql(&format!(
            "SELECT count(*) FROM pg_roles WHERE rolname LIKE '{db_name}\\_%'"
        )),
        "0"
    );
    let (status, _) = c.internal(&ids[2]).await;
    assert_eq!(status, 404);
    // The id can be used again.
    c.create(&ids[2]).await;
}

#[tokio::test]
async fn concurrent_creates_of_one_id() {
    let c = control().await;
    let id = unique_id("race");
    let (a, b) = tokio::join!(
        c.admin("POST", "/v1/tenants", Some(json!({ "id": id }))),
        c.admin("POST", "/v1/tenants", Some(json!({ "id": id }))),
    );
    let mut statuses = [a.0.as_u16(), b.0.as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 409], "{a:?} {b:?}");
}

#[tokio::test]
async fn a_failed_create_undoes_only_its_own_work_and_can_be_retried() {
    let c = control().await;
    let id = unique_id("half");
    let base = format!("tenant_{}", id.replace('-', "_"));
    // The authenticator role already exists: the create fails after the
    // owner role and the database were made.
    c.psql(&format!("CREATE ROLE {base}_authenticator"));
    let (status, body) = c
        .admin("POST", "/v1/tenants", Some(json!({ "id": id })))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "provisioning_failed");
    assert_eq!(
        c.psql(&format!(
            "SELECT count(*) FROM pg_database WHERE datname = '{base}'"
        )),
        "0"
    );
    // What the create made is gone; the role it did not make is untouched.
    assert_eq!(
        c.psql(&format!(
            "SELECT string_agg(rolname, ',') FROM pg_roles WHERE rolname LIKE '{base}\\_%'"
        )),
        format!("{base}_authenticator")
    );
    let (status, _) = c.admin("GET", &format!("/v1/tenants/{id}"), None).await;
    assert_eq!(status, 404);
    // Once the conflict is resolved, the same request succeeds.
    c.psql(&format!("DROP ROLE {base}_authenticator"));
    c.create(&id).await;
}

#[tokio::test]
async fn a_restarted_control_finishes_interrupted_creates_and_deletes() {
    let c = control().await;
    let cut_create = unique_id("cut-create");
    let cut_delete = unique_id("cut-delete");
    let running = unique_id("cut-running");
    for id in [&cut_create, &cut_delete, &running] {
        c.create(id).await;
    }
    // What a control stopped in the middle leaves: rows still `creating` or
    // `deleting` an hour later, and one create that is still running.
    let control_db = |sql: &str| psql_url(&c.db.url, sql).expect("control database");
    control_db(&format!(
        "UPDATE tenants SET status = 'creating', updated_at = now() - interval '1 hour' WHERE id = '{cut_create}'"
    ));
    control_db(&format!(
        "UPDATE tenants SET status = 'deleting', updated_at = now() - interval '1 hour' WHERE id = '{cut_delete}'"
    ));
    control_db(&format!(
        "UPDATE tenants SET status = 'creating', updated_at = now() WHERE id = '{running}'"
    ));
    let (status, body) = c
        .admin("POST", "/v1/tenants", Some(json!({ "id": cut_create })))
        .await;
    assert_eq!(status, 409, "{body}");

    // A control starting on the same database finishes both stale ones.
    let _restarted = madbase_control::app(&config(&c.db, MASTER_KEY))
        .await
        .expect("control starts");
    let ids = format!("'{cut_create}', '{cut_delete}', '{running}'");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = control_db(&format!(
            "SELECT string_agg(id, ',') FROM tenants WHERE id IN ({ids})"
        ));
        if left == running {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "rows left: {left}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (id, expected) in [(&cut_create, "0"), (&cut_delete, "0"), (&running, "1")] {
        let base = format!("tenant_{}", id.replace('-', "_"));
        assert_eq!(
            c.psql(&format!(
                "SELECT count(*) FROM pg_database WHERE datname = '{base}'"
            )),
            expected,
            "{id}"
        );
        let roles = if expected == "0" { "0" } else { "2" };
        assert_eq!(
            c.psql(&format!(
                "SELECT count(*) FROM pg_roles WHERE rolname LIKE '{base}\\_%'"
            )),
            roles,
            "{id}"
        );
    }
    // The rolled-back id is free again; the finished delete is gone.
    c.create(&cut_create).await;
    let (status, _) = c
        .admin("GET", &format!("/v1/tenants/{cut_delete}"), None)
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn sql_endpoint_runs_as_the_owner() {
    let c = control().await;
    let id = unique_id("sql");
    c.create(&id).await;
    let path = format!("/v1/tenants/{id}/sql");
    // A script: one transaction, the last statement's rows.
    let (status, rows) = c
        .admin("POST", &path, Some(json!({"query": "CREATE TABLE items (id int PRIMARY KEY, name text, tags jsonb, price numeric, ok bool);\nINSERT INTO items VALUES (1, 'a', '[1]', 2.5, true), (2, null, null, null, false);\nSELECT * FROM items ORDER BY id"})))
        .await;
    assert_eq!(status, 200, "{rows}");
    assert_eq!(
        rows,
        json!([
            {"id": 1, "name": "a", "tags": [1], "price": 2.5, "ok": true},
            {"id": 2, "name": null, "tags": null, "price": null, "ok": false}
        ])
    );
    // All or nothing: a failing statement undoes the whole script.
    let (status, err) = c
        .admin("POST", &path, Some(json!({"query": "INSERT INTO items VALUES (3, 'c'); INSERT INTO items VALUES (1, 'dup')"})))
        .await;
    assert_eq!(status, 400);
    assert_eq!(err["code"], "23505", "{err}");
    let (_, count) = c
        .admin(
            "POST",
            &path,
            Some(json!({"query": "SELECT count(*) AS n FROM items"})),
        )
        .await;
    assert_eq!(count, json!([{"n": 2}]));
    // Parameters: one statement, bound values.
    let (status, rows) = c
        .admin("POST", &path, Some(json!({"query": "INSERT INTO items (id, name, ok) VALUES ($1, $2, $3) RETURNING id, name, ok", "params": [7, "it's", true]})))
        .await;
    assert_eq!(status, 200, "{rows}");
    assert_eq!(rows, json!([{"id": 7, "name": "it's", "ok": true}]));
    // The session is the owner, not a superuser, and cannot become one.
    let (_, who) = c.admin("POST", &path, Some(json!({"query": "RESET ROLE; SELECT current_user AS u, (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS s"}))).await;
    assert_eq!(
        who[0]["u"],
        format!("tenant_{}_owner", id.replace('-', "_"))
    );
    assert_eq!(who[0]["s"], false);
    // Statement timeout (1 s in this config).
    let (status, err) = c
        .admin("POST", &path, Some(json!({"query": "SELECT pg_sleep(5)"})))
        .await;
    assert_eq!(status, 400);
    assert_eq!(err["code"], "57014", "{err}");
    // Result size limit.
    let (status, err) = c
        .admin(
            "POST",
            &path,
            Some(json!({"query": "SELECT generate_series(1, 20000) AS n"})),
        )
        .await;
    assert_eq!(status, 413, "{err}");
    // Syntax errors are 400 with the SQLSTATE.
    let (status, err) = c
        .admin("POST", &path, Some(json!({"query": "SELEC 1"})))
        .await;
    assert_eq!(
        (status.as_u16(), err["code"].as_str()),
        (400, Some("42601"))
    );
    let (status, _) = c.admin("POST", &path, Some(json!({"query": "  "}))).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_wrong_master_key_fails_at_start() {
    let db = madbase_testkit::postgres().expect("postgres");
    madbase_control::app(&config(&db, MASTER_KEY))
        .await
        .expect("first start");
    let other_key = "/w8QExQVFhcYGRobHB0eHyAhIiMkJSYnKCkqKywtLi8=";
    let err = madbase_control::app(&config(&db, other_key))
        .await
        .expect_err("wrong key must fail");
    assert!(format!("{err:#}").contains("MADBASE_MASTER_KEY"), "{err:#}");
    // The right key still works.
    madbase_control::app(&config(&db, MASTER_KEY))
        .await
        .expect("right key");
}

#[tokio::test(flavor = "multi_thread")]
async fn tenant_client_caches_and_serves_stale_when_control_is_down() {
    let db = madbase_testkit::postgres().expect("postgres");
    let cfg = config(&db, MASTER_KEY);
    let app = madbase_control::app(&cfg).await.expect("control");
    let listeners = Listeners::bind(
        "127.0.0.1:0".parse().expect("addr"),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .await
    .expect("bind");
    let url = format!("http://{}", listeners.api_addr());
    let stop = CancellationToken::new();
    let server = tokio::spawn(listeners.serve(app, stop.clone(), Duration::from_secs(1)));

    let http = reqwest::Client::new();
    let id = unique_id("cache");
    let resp = http
        .post(format!("{url}/v1/tenants"))
        .bearer_auth(admin_token())
        .json(&json!({ "id": id }))
        .send()
        .await
        .expect("create");
    assert_eq!(resp.status(), 201);

    let metrics = Metrics::new();
    let client = TenantClient::new(&url, SECRET, &metrics)
        .with_ttl(Duration::from_millis(200), Duration::from_secs(60));
    let info = client.get(&id).await.expect("lookup").expect("exists");
    assert_eq!(info.id, id);
    assert!(
        client
            .get("no-such-tenant")
            .await
            .expect("lookup")
            .is_none()
    );
    // Control goes away: the known tenant is served stale, the unknown one from the negative cache.
    stop.cancel();
    server.await.expect("join").expect("serve");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stale = client.get(&id).await.expect("stale").expect("exists");
    assert_eq!(
        stale.jwt_secret.expose_secret(),
        info.jwt_secret.expose_secret()
    );
    assert!(
        client
            .get("no-such-tenant")
            .await
            .expect("negative cache")
            .is_none()
    );
    assert!(client.get("never-seen").await.is_err());
    let text = metrics.encode_prometheus();
    // not_found: the first answer from control, then the negative cache.
    for (outcome, n) in [("miss", 1), ("not_found", 2), ("stale", 1), ("error", 1)] {
        assert!(
            text.contains(&format!(
                r#"madbase_tenant_lookups_total{{outcome="{outcome}"}} {n}"#
            )),
            "{outcome}: {text}"
        );
    }
}

impl Control {
    /// Runs `sql` in the control database.
    fn control_psql(&self, sql: &str) -> String {
        self.db.server.psql(&self.db.name, sql).expect("psql")
    }

    /// `PUT` a function source as `application/javascript`.
    async fn deploy(&self, id: &str, name: &str, query: &str, source: &str) -> (StatusCode, Value) {
        let req = Request::builder()
            .method("PUT")
            .uri(format!("/v1/tenants/{id}/functions/{name}{query}"))
            .header("authorization", format!("Bearer {}", admin_token()))
            .header("content-type", "application/javascript")
            .body(Body::from(source.to_owned()))
            .expect("request");
        self.raw(req).await
    }
}

const HELLO: &str = r#"Deno.serve(async (req) => new Response("ok"));"#;

#[tokio::test]
async fn functions_deploy_list_get_delete() {
    let c = control().await;
    let id = unique_id("fn");
    c.create(&id).await;

    // First deploy: 201, version 1, verify_jwt on by default.
    let (status, body) = c.deploy(&id, "hello", "", HELLO).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["name"], "hello");
    assert_eq!(body["version"], 1);
    assert_eq!(body["size"], HELLO.len());
    assert_eq!(body["verify_jwt"], true);
    let sha = body["sha256"].as_str().expect("sha256").to_owned();
    assert_eq!(sha.len(), 64);
    assert!(body["updated_at"].is_string());
    assert!(body.get("source").is_none());

    // The same source again: 200, no new version.
    let (status, body) = c.deploy(&id, "hello", "", HELLO).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 1);
    assert_eq!(body["sha256"], sha.as_str());

    // New source: version 2.
    let v2 = "export default { fetch(req) { return new Response('two'); } };\n";
    let (status, body) = c.deploy(&id, "hello", "?verify_jwt=false", v2).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 2);
    assert_eq!(body["verify_jwt"], false);
    assert_ne!(body["sha256"], sha.as_str());

    let (status, body) = c.deploy(&id, "other_fn-2", "", HELLO).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // List by name, without sources.
    let (status, body) = c
        .admin("GET", &format!("/v1/tenants/{id}/functions"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let list = body.as_array().expect("array");
    assert_eq!(list.len(), 2, "{body}");
    assert_eq!(list[0]["name"], "hello");
    assert_eq!(list[0]["version"], 2);
    assert_eq!(list[0]["verify_jwt"], false);
    assert_eq!(list[1]["name"], "other_fn-2");
    assert!(list[0].get("source").is_none());

    // Get returns the current source.
    let (status, body) = c
        .admin("GET", &format!("/v1/tenants/{id}/functions/hello"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["source"], v2);
    assert_eq!(body["version"], 2);

    // Versions are kept, the oldest beyond 10 dropped.
    for i in 0..11 {
        let src = format!("Deno.serve(() => new Response('{i}'));");
        let (status, body) = c.deploy(&id, "hello", "", &src).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let kept = c.control_psql(&format!(
        "SELECT count(*), min(version), max(version) FROM function_versions \
         WHERE tenant_id = '{id}' AND name = 'hello'"
    ));
    assert_eq!(kept.trim(), "10|4|13", "{kept}");

    // Delete: 204, then 404 for get and delete.
    let path = format!("/v1/tenants/{id}/functions/hello");
    let (status, body) = c.admin("DELETE", &path, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, body) = c.admin("GET", &path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["code"], "function_not_found");
    let (status, body) = c.admin("DELETE", &path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["code"], "function_not_found");
    let versions = c.control_psql(&format!(
        "SELECT count(*) FROM function_versions WHERE tenant_id = '{id}' AND name = 'hello'"
    ));
    assert_eq!(versions.trim(), "0");

    // Deleting the tenant removes its functions.
    let (status, body) = c.admin("DELETE", &format!("/v1/tenants/{id}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let left = c.control_psql(&format!(
        "SELECT (SELECT count(*) FROM functions WHERE tenant_id = '{id}') \
              + (SELECT count(*) FROM function_versions WHERE tenant_id = '{id}')"
    ));
    assert_eq!(left.trim(), "0");
}

#[tokio::test]
async fn functions_bad_input_gets_clear_errors() {
    let c = control().await;
    let id = unique_id("fnbad");
    c.create(&id).await;

    // A syntax error: 400 with the engine's message and the line.
    let broken = "const a = 1;\nconst b = 2;\nconst c = (;\n";
    let (status, body) = c.deploy(&id, "broken", "", broken).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["code"], "function_syntax_error");
    let details = body["details"].as_str().expect("details");
    assert!(details.starts_with("line 3"), "{details}");
    let (status, _) = c
        .admin("GET", &format!("/v1/tenants/{id}/functions/broken"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Bad names.
    for bad in ["Hello", "1abc", "a.b", &"a".repeat(64)] {
        let (status, body) = c.deploy(&id, bad, "", HELLO).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["code"], "invalid_function_name", "{body}");
    }

    // Too large: 413 in the JSON error shape.
    let big = format!("// {}\n{HELLO}", "x".repeat(1 << 20));
    let (status, body) = c.deploy(&id, "big", "", &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["code"], "function_too_large");

    // Empty source, bad query.
    let (status, body) = c.deploy(&id, "empty", "", "  \n").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["code"], "invalid_function_source");
    let (status, body) = c.deploy(&id, "q", "?verify_jwt=maybe", HELLO).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // Unknown tenant: 404 on every route.
    let (status, body) = c.deploy("nosuchtenant", "hello", "", HELLO).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["code"], "tenant_not_found");
    for (method, path) in [
        ("GET", "/v1/tenants/nosuchtenant/functions"),
        ("GET", "/v1/tenants/nosuchtenant/functions/hello"),
        ("DELETE", "/v1/tenants/nosuchtenant/functions/hello"),
    ] {
        let (status, body) = c.admin(method, path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
        assert_eq!(body["code"], "tenant_not_found");
    }

    // No admin token: 401.
    for (method, path) in [
        ("PUT", format!("/v1/tenants/{id}/functions/hello")),
        ("GET", format!("/v1/tenants/{id}/functions")),
        ("GET", format!("/v1/tenants/{id}/functions/hello")),
        ("DELETE", format!("/v1/tenants/{id}/functions/hello")),
    ] {
        let (status, body) = c.send(method, &path, None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn functions_deploy_over_a_real_socket() {
    let db = madbase_testkit::postgres().expect("postgres");
    let app = madbase_control::app(&config(&db, MASTER_KEY))
        .await
        .expect("control");
    let listeners = Listeners::bind(
        "127.0.0.1:0".parse().expect("addr"),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .await
    .expect("bind");
    let url = format!("http://{}", listeners.api_addr());
    let stop = CancellationToken::new();
    let server = tokio::spawn(listeners.serve(app, stop.clone(), Duration::from_secs(1)));

    let http = reqwest::Client::new();
    let id = unique_id("fnhttp");
    let resp = http
        .post(format!("{url}/v1/tenants"))
        .bearer_auth(admin_token())
        .json(&json!({ "id": id }))
        .send()
        .await
        .expect("create");
    assert_eq!(resp.status(), 201);

    let fn_url = format!("{url}/v1/tenants/{id}/functions/hello");
    let resp = http
        .put(format!("{fn_url}?verify_jwt=false"))
        .bearer_auth(admin_token())
        .header("content-type", "text/plain")
        .body(HELLO)
        .send()
        .await
        .expect("deploy");
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["version"], 1);
    assert_eq!(body["verify_jwt"], false);

    let resp = http
        .put(&fn_url)
        .bearer_auth(admin_token())
        .header("content-type", "application/javascript")
        .body("Deno.serve(async (req) => {\n  return new Response(;\n});\n")
        .send()
        .await
        .expect("deploy broken");
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["code"], "function_syntax_error");
    assert!(
        body["details"]
            .as_str()
            .is_some_and(|d| d.starts_with("line 2")),
        "{body}"
    );

    let resp = http
        .get(&fn_url)
        .bearer_auth(admin_token())
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["source"], HELLO);
    assert_eq!(body["version"], 1);

    let resp = http.get(&fn_url).send().await.expect("get without token");
    assert_eq!(resp.status(), 401);

    let resp = http
        .delete(&fn_url)
        .bearer_auth(admin_token())
        .send()
        .await
        .expect("delete");
    assert_eq!(resp.status(), 204);

    stop.cancel();
    server.await.expect("join").expect("serve");
}

#[tokio::test]
async fn function_secrets_are_sealed_listed_by_name_and_deleted() {
    let c = control().await;
    let id = unique_id("sec");
    c.create(&id).await;
    let path = format!("/v1/tenants/{id}/secrets");

    // An object body: names and update times come back, never values.
    let (status, body) = c
        .admin(
            "PUT",
            &path,
            Some(json!({"STRIPE_KEY": "sk_test_plaintext-1", "OTHER": "two"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let names: Vec<&str> = body
        .as_array()
        .expect("array")
        .iter()
        .map(|s| s["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["OTHER", "STRIPE_KEY"]);
    assert!(!body.to_string().contains("plaintext"), "{body}");
    assert!(body[0]["updated_at"].is_string());

    // An array body (Supabase's shape) replaces a value and adds one.
    let (status, body) = c
        .admin(
            "PUT",
            &path,
            Some(
                json!([{"name": "STRIPE_KEY", "value": "sk_test_plaintext-2"},
                        {"name": "_THIRD", "value": ""}]),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body.as_array().expect("array").len(), 3, "{body}");

    // GET lists names only.
    let (status, body) = c.admin("GET", &path, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body.as_array().expect("array").len(), 3);
    assert!(body[0].get("value").is_none(), "{body}");

    // Sealed at rest: the stored bytes do not contain the value.
    let stored = c.control_psql(&format!(
        "SELECT encode(value_enc, 'escape') FROM function_secrets \
         WHERE tenant_id = '{id}' AND name = 'STRIPE_KEY'"
    ));
    assert!(!stored.is_empty());
    assert!(!stored.contains("sk_test"), "{stored}");

    // Bad names and values.
    for bad in [
        json!({"lower": "x"}),
        json!({"SUPABASE_URL": "x"}),
        json!({"1A": "x"}),
        json!([{"name": "A-B", "value": "x"}]),
    ] {
        let (status, body) = c.admin("PUT", &path, Some(bad.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["code"], "invalid_secret_name", "{body}");
    }
    for bad in [json!({}), json!({"A": 1}), json!("A")] {
        let (status, body) = c.admin("PUT", &path, Some(bad.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let big = "x".repeat(64 * 1024 + 1);
    let (status, body) = c.admin("PUT", &path, Some(json!({ "BIG": big }))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["code"], "secret_too_large");

    // The internal function endpoint: source, metadata and opened secrets.
    let (status, body) = c.deploy(&id, "hello", "?verify_jwt=false", HELLO).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let internal = jwt::platform_token(SECRET, "internal", Duration::from_secs(60));
    let fn_path = format!("/internal/v1/tenants/{id}/functions/hello");
    let (status, body) = c.send("GET", &fn_path, Some(&internal), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["name"], "hello");
    assert_eq!(body["version"], 1);
    assert_eq!(body["verify_jwt"], false);
    assert_eq!(body["source"], HELLO);
    assert_eq!(body["sha256"].as_str().map(str::len), Some(64));
    assert_eq!(
        body["env"],
        json!({"OTHER": "two", "STRIPE_KEY": "sk_test_plaintext-2", "_THIRD": ""})
    );
    // Only with the internal token.
    let (status, _) = c.send("GET", &fn_path, Some(&admin_token()), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = c.send("GET", &fn_path, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Absent functions and tenants: 404.
    for (p, code) in [
        (
            format!("/internal/v1/tenants/{id}/functions/nope"),
            "function_not_found",
        ),
        (
            format!("/internal/v1/tenants/{id}/functions/Bad.Name"),
            "function_not_found",
        ),
        (
            "/internal/v1/tenants/nosuchtenant/functions/hello".to_owned(),
            "tenant_not_found",
        ),
    ] {
        let (status, body) = c.send("GET", &p, Some(&internal), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{p}: {body}");
        assert_eq!(body["code"], code, "{body}");
    }

    // Delete one: 204, then 404; delete several by a body of names.
    let (status, body) = c.admin("DELETE", &format!("{path}/OTHER"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, body) = c.admin("DELETE", &format!("{path}/OTHER"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["code"], "secret_not_found");
    let (status, body) = c
        .admin("DELETE", &path, Some(json!(["STRIPE_KEY", "NOT_THERE"])))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!([{"name": "_THIRD", "updated_at": body[0]["updated_at"]}])
    );
    let (_, body) = c.send("GET", &fn_path, Some(&internal), None).await;
    assert_eq!(body["env"], json!({"_THIRD": ""}));

    // Unknown tenant and no token.
    let (status, body) = c
        .admin(
            "PUT",
            "/v1/tenants/nosuchtenant/secrets",
            Some(json!({"A": "b"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["code"], "tenant_not_found");
    let (status, _) = c.send("GET", &path, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Deleting the tenant removes its secrets.
    let (status, body) = c.admin("DELETE", &format!("/v1/tenants/{id}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let left = c.control_psql(&format!(
        "SELECT count(*) FROM function_secrets WHERE tenant_id = '{id}'"
    ));
    assert_eq!(left.trim(), "0");
}
