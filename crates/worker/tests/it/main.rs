//! The worker against a real Postgres and an in-process control plane:
//! reads, writes, rpc, security, errors, the engine, and the
//! `@supabase/postgrest-js` compatibility script.

mod aggregates;
mod compat;
mod embedding;
mod engine;
mod functions;
mod helpers;
mod limited;
mod media;
mod options;
mod postgrest;
mod put;
mod reads;
mod rpc;
mod security;
mod sql_prop;
mod writes;

fn config() -> madbase_worker::Config {
    madbase_worker::Config::from_env(&madbase_testkit::service::env(&[])).expect("valid config")
}

#[tokio::test]
async fn test_health_endpoint_worker() {
    let app = madbase_worker::app(&config()).expect("app");
    madbase_testkit::service::assert_health(&app).await;
}
