//! The services' tenant cache (`madbase_tenancy::TenantClient`)
//! against a real control on loopback and a real Postgres: single-flight
//! loads, and the change feed (`GET /internal/v1/changes`) dropping entries
//! the moment control commits a change — far inside the cache's TTL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use madbase_platform::Metrics;
use madbase_platform::secrets::ExposeSecret as _;
use madbase_platform::{CancellationToken, Listeners};
use madbase_tenancy::{Failure, Invalidation, Role, Surface, Tenancy, TenantClient};
use madbase_testkit::TestDb;
use madbase_testkit::service::{JWT_SECRET, Served, control_env, telemetry};
use madbase_testkit::tenant::{Tenant, platform_token, rotate_keys};

async fn start_control(db: &TestDb) -> Served {
    telemetry();
    let config = madbase_control::Config::from_env(&control_env(db, &[])).expect("control config");
    Served::start(madbase_control::app(&config).await.expect("control")).await
}

/// The value of the sample `name{labels}` in a Prometheus text page.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// How many lookups of `id` control has served.
async fn lookups_served(control: &Served) -> f64 {
    sample(
        &control.metrics().await,
        r#"http_requests_total{method="GET",route="/internal/v1/tenants/{id}",status="200"}"#,
    )
}

/// Polls `metrics` until `series` reaches `value` (at most 5 s).
async fn wait_for(metrics: &Metrics, series: &str, value: f64) {
    let start = Instant::now();
    while sample(&metrics.encode_prometheus(), series) < value {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{series} never reached {value}:\n{}",
            metrics.encode_prometheus()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// 1 000 concurrent lookups of a tenant nobody has cached: one call to
/// control, every caller gets the tenant.
#[tokio::test(flavor = "multi_thread")]
async fn a_cold_tenant_is_loaded_once_for_a_thousand_callers() {
    let db = madbase_testkit::postgres().expect("postgres");
    let control = start_control(&db).await;
    let http = reqwest::Client::new();
    let tenant = Tenant::create(&http, &control.url(), "sf").await;
    // Tenant::create looked it up once itself.
    let before = lookups_served(&control).await;

    let metrics = Metrics::new();
    let client = TenantClient::new(&control.url(), JWT_SECRET, &metrics);
    let barrier = Arc::new(tokio::sync::Barrier::new(1000));
    let calls: Vec<_> = (0..1000)
        .map(|_| {
            let (client, barrier, id) = (client.clone(), barrier.clone(), tenant.id.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                client.get(&id).await
            })
        })
        .collect();
    for call in calls {
        let info = call.await.expect("join").expect("lookup").expect("exists");
        assert_eq!(info.id, tenant.id);
    }
    let served = lookups_served(&control).await - before;
    eprintln!("1000 concurrent cold lookups → {served} control call(s)");
    assert_eq!(
        served, 1.0,
        "control calls for 1000 concurrent cold lookups"
    );
    let text = metrics.encode_prometheus();
    assert_eq!(
        sample(&text, r#"madbase_tenant_lookups_total{outcome="miss"}"#),
        1.0
    );
    assert_eq!(
        sample(&text, r#"madbase_tenant_lookups_total{outcome="hit"}"#),
        999.0
    );
    control.stop().await;
}

/// With a one-hour TTL, a key rotation, a settings change and a delete
/// each reach the cache through the feed at once; a control restart
/// (a gap in the feed) makes every entry reload.
#[tokio::test(flavor = "multi_thread")]
async fn the_change_feed_drops_changed_tenants_at_once() {
    let db = madbase_testkit::postgres().expect("postgres");
    let control = start_control(&db).await;
    let url = control.url();
    let http = reqwest::Client::new();
    let tenant = Tenant::create(&http, &url, "feed").await;
    let metrics = Metrics::new();
    let client = TenantClient::new(&url, JWT_SECRET, &metrics)
        .with_ttl(Duration::from_secs(3600), Duration::from_secs(3600));
    client
        .get(&tenant.id)
        .await
        .expect("lookup")
        .expect("exists");
    wait_for(&metrics, "madbase_tenant_change_feed_up", 1.0).await;
    let first = client
        .get(&tenant.id)
        .await
        .expect("lookup")
        .expect("exists");

    // Rotation: a new secret and key version.
    let start = Instant::now();
    rotate_keys(&http, &url, &tenant.id).await;
    loop {
        let now = client
            .get(&tenant.id)
            .await
            .expect("lookup")
            .expect("exists");
        if now.key_version == first.key_version + 1 {
            assert_ne!(
                now.jwt_secret.expose_secret(),
                first.jwt_secret.expose_secret()
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "rotation not seen in 1 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("rotation seen by the cache after {:?}", start.elapsed());

    // Settings.
    let resp = http
        .patch(format!("{url}/v1/tenants/{}/settings", tenant.id))
        .bearer_auth(platform_token("admin"))
        .json(&serde_json::json!({"cors_origins": ["https://app.example.com"]}))
        .send()
        .await
        .expect("settings");
    assert_eq!(resp.status(), 200);
    let start = Instant::now();
    while client
        .get(&tenant.id)
        .await
        .expect("lookup")
        .expect("exists")
        .cors_origins
        .is_none()
    {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "settings not seen in 1 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // A function deploy and a secret change are announced to the
    // service's own caches (the functions service drops code and env), as
    // `functions`: the tenant itself stays cached (no lookup reaches control).
    let mut announced = client.subscribe();
    client
        .get(&tenant.id)
        .await
        .expect("lookup")
        .expect("exists");
    let served = lookups_served(&control).await;
    for (what, request) in [
        (
            "deploy",
            http.put(format!("{url}/v1/tenants/{}/functions/hello", tenant.id))
                .body("Deno.serve(() => new Response('hi'))"),
        ),
        (
            "secret",
            http.put(format!("{url}/v1/tenants/{}/secrets", tenant.id))
                .json(&serde_json::json!({"GREETING": "hello"})),
        ),
    ] {
        let resp = request
            .bearer_auth(platform_token("admin"))
            .send()
            .await
            .expect(what);
        assert!(resp.status().is_success(), "{what}: {}", resp.status());
        let got = tokio::time::timeout(Duration::from_secs(1), announced.recv())
            .await
            .unwrap_or_else(|_| panic!("{what} not announced within 1 s"))
            .expect("announcement");
        assert_eq!(got, Invalidation::Functions(tenant.id.clone()), "{what}");
        // One statement may notify more than once (a row per table).
        while announced.try_recv().is_ok() {}
        client
            .get(&tenant.id)
            .await
            .expect("lookup")
            .expect("exists");
        assert_eq!(lookups_served(&control).await, served, "{what}");
    }

    // A gap: control stops; meanwhile the tenant changes behind its back
    // (nothing relays that); control comes back on the same address. The
    // feed reconnects and says hello again, and the entry reloads.
    client
        .get(&tenant.id)
        .await
        .expect("reload")
        .expect("exists");
    let addr = control.api;
    control.stop().await;
    let version = client
        .get(&tenant.id)
        .await
        .expect("stale")
        .expect("exists")
        .key_version;
    db.server
        .psql(
            &db.name,
            &format!(
                "UPDATE tenants SET key_version = key_version + 10 WHERE id = '{}'",
                tenant.id
            ),
        )
        .expect("update behind control's back");
    let config = madbase_control::Config::from_env(&control_env(&db, &[])).expect("config");
    let app = madbase_control::app(&config).await.expect("control");
    let listeners = Listeners::bind(addr, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("the same port again");
    let stop = CancellationToken::new();
    let served = tokio::spawn(listeners.serve(app, stop.clone(), Duration::from_secs(1)));
    let start = Instant::now();
    while client
        .get(&tenant.id)
        .await
        .expect("lookup")
        .expect("exists")
        .key_version
        != version + 10
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no resync after control returned"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("resync after control's restart: {:?}", start.elapsed());
    assert!(
        sample(
            &metrics.encode_prometheus(),
            r#"madbase_tenant_invalidations_total{reason="resync"}"#
        ) >= 1.0,
        "a resync: {}",
        metrics.encode_prometheus()
    );

    // Delete: the tenant is gone from the cache at once.
    let start = Instant::now();
    let resp = http
        .delete(format!("{url}/v1/tenants/{}", tenant.id))
        .bearer_auth(platform_token("admin"))
        .send()
        .await
        .expect("delete");
    assert!(resp.status().is_success(), "delete: {}", resp.status());
    let answered = Instant::now();
    while client.get(&tenant.id).await.expect("lookup").is_some() {
        assert!(
            answered.elapsed() < Duration::from_secs(1),
            "delete not seen in 1 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "delete seen by the cache {:?} after control answered ({:?} in all)",
        answered.elapsed(),
        start.elapsed()
    );
    stop.cancel();
    served.await.expect("join").expect("serve");
}

/// The verified-key cache of the tenancy contract (`Tenancy`) drops a
/// tenant's keys when the feed announces a change to it: after a rotation
/// (one-hour TTLs, so nothing else would) the tenant's verified key is out
/// of the cache within 1 s, another tenant's stays, and the old key is
/// refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_drops_the_tenants_verified_keys() {
    let db = madbase_testkit::postgres().expect("postgres");
    let control = start_control(&db).await;
    let url = control.url();
    let http = reqwest::Client::new();
    let rotated = Tenant::create(&http, &url, "vk").await;
    let kept = Tenant::create(&http, &url, "vk").await;
    let metrics = Metrics::new();
    let client = TenantClient::new(&url, JWT_SECRET, &metrics)
        .with_ttl(Duration::from_secs(3600), Duration::from_secs(3600));
    let tenancy = Tenancy::new(client);
    let apikey = |key: &str| {
        let mut h = http::HeaderMap::new();
        h.insert("apikey", key.parse().expect("header value"));
        h
    };
    for t in [&rotated, &kept] {
        let caller = tenancy
            .authenticate(&t.id, &apikey(&t.anon_key), Surface::Gateway)
            .await
            .expect("a valid key");
        assert_eq!(caller.role(), Role::Anon);
    }
    assert_eq!(tenancy.verified().len(), 2);
    wait_for(&metrics, "madbase_tenant_change_feed_up", 1.0).await;

    let start = Instant::now();
    rotate_keys(&http, &url, &rotated.id).await;
    while tenancy.verified().len() != 1 {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "the rotated tenant's key still cached after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    eprintln!(
        "rotated tenant's verified key dropped after {:?}",
        start.elapsed()
    );
    let refused = tenancy
        .authenticate(&rotated.id, &apikey(&rotated.anon_key), Surface::Gateway)
        .await
        .expect_err("the old key");
    assert_eq!(refused.failure(), Failure::InvalidKey);
    // The other tenant's key is still verified from the cache.
    tenancy
        .authenticate(&kept.id, &apikey(&kept.anon_key), Surface::Gateway)
        .await
        .expect("the other tenant's key");
    assert_eq!(tenancy.verified().len(), 1);
    control.stop().await;
}
