//! The proxy service's routers, driven without a socket.

fn config() -> madbase_proxy::Config {
    madbase_proxy::Config::from_env(&madbase_testkit::service::env(&[])).expect("valid config")
}

#[tokio::test]
async fn test_health_endpoint_proxy() {
    let app = madbase_proxy::app(&config()).expect("app");
    madbase_testkit::service::assert_health(&app).await;
}
