//! The stack the worker tests run against: a real Postgres, control served
//! in-process on a loopback port, one tenant with the fixture schema, and
//! the worker served in-process on a loopback port.

use http::{HeaderMap, Method, StatusCode};
use madbase_testkit::TestDb;
use madbase_testkit::service::{Served, control_env, env};
use madbase_testkit::tenant::Tenant;
use serde_json::Value;

pub use madbase_testkit::service::JWT_SECRET as SECRET;
pub const ALICE: &str = "00000000-0000-4000-8000-00000000000a";
pub const BOB: &str = "00000000-0000-4000-8000-00000000000b";

/// The fixture: tables with foreign keys both ways, a view, functions
/// (immutable, stable set-returning, volatile, void, raising), RLS.
pub const FIXTURE: &str = r#"
CREATE TABLE users (id uuid PRIMARY KEY, name text NOT NULL, email text UNIQUE, profile jsonb);
CREATE TABLE posts (
  id serial PRIMARY KEY,
  author_id uuid NOT NULL REFERENCES users(id),
  title text NOT NULL,
  public boolean NOT NULL DEFAULT false,
  score int,
  tags text[] NOT NULL DEFAULT '{}'
);
CREATE TABLE comments (id serial PRIMARY KEY, post_id int NOT NULL REFERENCES posts(id), author_id uuid REFERENCES users(id), body text NOT NULL);
CREATE TABLE messages (id serial PRIMARY KEY, sender_id uuid REFERENCES users(id), recipient_id uuid REFERENCES users(id), body text);
CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, data jsonb, tags text[], price numeric, code text UNIQUE);
CREATE TABLE secrets (id int PRIMARY KEY, v text);
REVOKE ALL ON secrets FROM anon, authenticated;
CREATE VIEW public_posts AS SELECT id, title, author_id, score FROM posts WHERE public;

ALTER TABLE posts ENABLE ROW LEVEL SECURITY;
CREATE POLICY posts_public ON posts FOR SELECT USING (public);
CREATE POLICY posts_own ON posts FOR ALL TO authenticated
  USING (author_id = auth.uid()) WITH CHECK (author_id = auth.uid());

INSERT INTO users VALUES
  ('00000000-0000-4000-8000-00000000000a', 'alice', 'alice@example.com', '{"city": "Paris", "age": 30, "langs": ["fr", "en"]}'),
  ('00000000-0000-4000-8000-00000000000b', 'bob', 'bob@example.com', '{"city": "Berlin", "age": 25}');
INSERT INTO posts (author_id, title, public, score, tags) VALUES
  ('00000000-0000-4000-8000-00000000000a', 'Hello world', true, 10, '{intro,news}'),
  ('00000000-0000-4000-8000-00000000000a', 'Alice draft', false, 5, '{draft}'),
  ('00000000-0000-4000-8000-00000000000b', 'Bob public', true, NULL, '{news}'),
  ('00000000-0000-4000-8000-00000000000b', 'Bob secret', false, 7, '{}');
INSERT INTO comments (post_id, author_id, body) VALUES
  (1, '00000000-0000-4000-8000-00000000000b', 'nice'),
  (1, '00000000-0000-4000-8000-00000000000a', 'thanks'),
  (3, '00000000-0000-4000-8000-00000000000a', 'hi bob');
INSERT INTO messages (sender_id, recipient_id, body) VALUES
  ('00000000-0000-4000-8000-00000000000a', '00000000-0000-4000-8000-00000000000b', 'ping');
INSERT INTO items (id, name, data, tags, price, code)
  SELECT g, 'item ' || g, jsonb_build_object('n', g, 'even', g % 2 = 0), ARRAY['t' || (g % 3)], g * 1.5, 'c' || g
  FROM generate_series(1, 30) g;

CREATE FUNCTION add(a int, b int) RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT a + b $$;
CREATE FUNCTION posts_by(author uuid) RETURNS SETOF posts LANGUAGE sql STABLE AS $$ SELECT * FROM posts WHERE author_id = author $$;
CREATE FUNCTION numbers(n int) RETURNS SETOF int LANGUAGE sql IMMUTABLE AS $$ SELECT generate_series(1, n) $$;
CREATE FUNCTION item_stats(min_id int DEFAULT 1) RETURNS TABLE (total bigint, max_price numeric) LANGUAGE sql STABLE AS
  $$ SELECT count(*), max(price) FROM items WHERE id >= min_id $$;
CREATE FUNCTION create_post(title text, public boolean DEFAULT true) RETURNS posts LANGUAGE sql VOLATILE AS
  $$ INSERT INTO posts (author_id, title, public) VALUES (auth.uid(), title, public) RETURNING * $$;
CREATE FUNCTION touch() RETURNS void LANGUAGE sql VOLATILE AS $$ UPDATE items SET price = price WHERE id = 1 $$;
CREATE FUNCTION fail(msg text) RETURNS void LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION '%', msg USING HINT = 'raised on purpose'; END $$;
CREATE FUNCTION whoami() RETURNS json LANGUAGE sql STABLE AS $$
  SELECT json_build_object('role', current_user, 'uid', auth.uid(), 'claims', auth.jwt(),
    'method', current_setting('request.method', true), 'path', current_setting('request.path', true),
    'header', current_setting('request.headers', true)::json ->> 'x-probe',
    'read_only', current_setting('transaction_read_only'), 'timeout', current_setting('statement_timeout')) $$;
CREATE FUNCTION slow() RETURNS int LANGUAGE sql AS $$ SELECT 1 FROM pg_sleep(3) $$;
"#;

/// A running control + worker with one tenant.
#[allow(dead_code)]
pub struct Stack {
    pub db: TestDb,
    pub control_url: String,
    pub worker_url: String,
    pub worker_admin_url: String,
    pub tenant: String,
    pub anon_key: String,
    pub service_key: String,
    pub tenant_secret: String,
    pub http: reqwest::Client,
    owner: Tenant,
    worker: Served,
}

impl Stack {
    /// The stack with default worker settings.
    pub async fn start() -> Stack {
        Self::start_with(&[]).await
    }

    /// The stack with extra worker environment variables.
    pub async fn start_with(worker_env: &[(&str, &str)]) -> Stack {
        let db = madbase_testkit::postgres().expect("postgres");
        let control_cfg =
            madbase_control::Config::from_env(&control_env(&db, &[])).expect("control config");
        let control =
            Served::start(madbase_control::app(&control_cfg).await.expect("control")).await;
        let control_url = control.url();

        let mut vars = vec![("MADBASE_CONTROL_URL", control_url.as_str())];
        vars.extend_from_slice(worker_env);
        let worker_cfg = madbase_worker::Config::from_env(&env(&vars)).expect("worker config");
        let worker = Served::start(madbase_worker::app(&worker_cfg).expect("worker")).await;

        let http = reqwest::Client::new();
        let owner = Tenant::create(&http, &control_url, "w").await;
        owner.sql(&http, &control_url, FIXTURE).await;
        Stack {
            db,
            worker_url: worker.url(),
            worker_admin_url: worker.admin_url(),
            control_url,
            tenant: owner.id.clone(),
            anon_key: owner.anon_key.clone(),
            service_key: owner.service_key.clone(),
            tenant_secret: owner.jwt_secret.clone(),
            http,
            owner,
            worker,
        }
    }

    /// Creates another tenant with a one-table schema; returns its id and anon key.
    pub async fn another_tenant(&self) -> (String, String) {
        let other = Tenant::create(&self.http, &self.control_url, "x").await;
        other
            .sql(
                &self.http,
                &self.control_url,
                "CREATE TABLE things (id int PRIMARY KEY); INSERT INTO things VALUES (7)",
            )
            .await;
        (other.id, other.anon_key)
    }

    /// The tenant's database name (as control names it).
    pub fn tenant_database(&self) -> String {
        format!("tenant_{}", self.tenant.replace('-', "_"))
    }

    /// The worker's metrics text.
    pub async fn metrics(&self) -> String {
        self.worker.metrics().await
    }

    /// Runs SQL as the tenant owner through control.
    pub async fn sql(&self, query: &str) -> Value {
        self.owner.sql(&self.http, &self.control_url, query).await
    }

    /// A user JWT for `sub` (role `authenticated`) signed with the tenant secret.
    pub fn user_token(&self, sub: &str) -> String {
        self.owner.user_token(sub)
    }

    /// A request as anon (the anon API key).
    pub fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}/rest/v1{path}", self.worker_url))
            .header("X-Madbase-Tenant", &self.tenant)
            .header("apikey", &self.anon_key)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.req(Method::GET, path)
    }

    /// A request with the service_role key.
    pub fn service(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.req(method, path)
            .header("authorization", format!("Bearer {}", self.service_key))
    }
}

/// Status, headers and JSON body (Null when empty, String when not JSON).
pub async fn send(rb: reqwest::RequestBuilder) -> (StatusCode, HeaderMap, Value) {
    let resp = rb.send().await.expect("request");
    let status = resp.status();
    let headers = resp.headers().clone();
    assert!(headers.contains_key("x-request-id"));
    let bytes = resp.bytes().await.expect("body");
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        panic!("server error {status}: {v}");
    }
    (status, headers, v)
}

/// Status and body.
pub async fn call(rb: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let (s, _, v) = send(rb).await;
    (s, v)
}

/// The `content-range` header.
pub fn range(h: &HeaderMap) -> &str {
    h.get("content-range")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Asserts an error status and code.
#[track_caller]
pub fn assert_err(got: &(StatusCode, Value), status: u16, code: &str) {
    assert_eq!(got.0.as_u16(), status, "{}", got.1);
    assert_eq!(got.1["code"], code, "{}", got.1);
    assert!(
        got.1.get("message").is_some()
            && got.1.get("details").is_some()
            && got.1.get("hint").is_some(),
        "{}",
        got.1
    );
}
