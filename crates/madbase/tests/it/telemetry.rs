//! JSON logs with request IDs, and OTLP trace export to an in-process
//! receiver (gRPC with the opentelemetry-proto tonic server, and
//! HTTP/protobuf).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use serde_json::Value;

use crate::helpers::{base_env, http, start};

#[tokio::test(flavor = "multi_thread")]
async fn request_logs_are_json_lines_with_the_request_id() {
    let svc = start("worker", &base_env("worker"));
    let resp = http()
        .get(svc.api_url("/health"))
        .header("x-request-id", "log-test-7f3a")
        .send()
        .await
        .expect("health");
    assert_eq!(resp.headers()["x-request-id"], "log-test-7f3a");
    let line = svc.wait_for_line(|v| v["request_id"] == "log-test-7f3a");
    for field in [
        "timestamp",
        "level",
        "target",
        "message",
        "service",
        "trace_id",
        "span_id",
    ] {
        assert!(
            line.get(field).is_some_and(|v| v.is_string()),
            "{field} in {line}"
        );
    }
    assert_eq!(line["service"], "worker");
    assert_eq!(line["message"], "request completed");
    assert_eq!(line["status"], 200);
    assert_eq!(line["trace_id"].as_str().map(str::len), Some(32));

    // A burst of concurrent requests: the runtime's workers keep their
    // lines and write them in batches; every request's line arrives while
    // the process runs, whole.
    let ids: Vec<String> = (0..200).map(|i| format!("burst-{i}")).collect();
    let client = http();
    let mut sent = tokio::task::JoinSet::new();
    for id in &ids {
        let req = client
            .get(svc.api_url("/health"))
            .header("x-request-id", id.as_str());
        sent.spawn(async move { req.send().await.map(|r| r.status().as_u16()) });
    }
    for status in sent.join_all().await {
        assert_eq!(status.expect("burst request"), 200);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let seen: std::collections::HashSet<String> = svc
            .lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v["request_id"].as_str().map(str::to_owned))
            .collect();
        let missing = ids.iter().filter(|id| !seen.contains(*id)).count();
        if missing == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{missing} of {} burst requests have no log line",
            ids.len()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Every line the process wrote is one JSON object.
    for l in svc.lines() {
        let v: Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v.is_object());
    }
}

/// Spans received by the in-process collector.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Span>>>);

impl Received {
    fn add(&self, req: &ExportTraceServiceRequest) {
        let mut spans = self.0.lock().expect("spans");
        for rs in &req.resource_spans {
            for ss in &rs.scope_spans {
                spans.extend(ss.spans.iter().cloned());
            }
        }
    }

    async fn wait_for(&self, pred: impl Fn(&Span) -> bool) -> Span {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = self.0.lock().expect("spans").iter().find(|s| pred(s)) {
                return s.clone();
            }
            assert!(Instant::now() < deadline, "no matching span exported");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.add(request.get_ref());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

async fn grpc_receiver() -> (String, Received) {
    let received = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let service = TraceServiceServer::new(received.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    (format!("http://{addr}"), received)
}

async fn http_receiver() -> (String, Received) {
    let received = Received::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                match ExportTraceServiceRequest::decode(body) {
                    Ok(req) => {
                        sink.add(&req);
                        (
                            http::StatusCode::OK,
                            ExportTraceServiceResponse::default().encode_to_vec(),
                        )
                    }
                    Err(_) => (http::StatusCode::BAD_REQUEST, Vec::new()),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), received)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn exports_server_spans(protocol: &str, endpoint: String, received: Received) {
    let mut env = base_env("worker");
    env.push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint));
    env.push(("OTEL_EXPORTER_OTLP_PROTOCOL".into(), protocol.into()));
    env.push(("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()));
    let svc = start("worker", &env);

    // Without traceparent: a new root server span.
    http()
        .get(svc.api_url("/health"))
        .header("x-request-id", "otlp-root")
        .send()
        .await
        .expect("health");
    let root = received.wait_for(|s| s.name == "GET /health").await;
    assert_eq!(root.kind, 2, "SPAN_KIND_SERVER");
    assert!(root.parent_span_id.is_empty());
    assert!(
        root.attributes.iter().any(|kv| kv.key == "request_id"),
        "request_id attribute on the span"
    );

    // With traceparent: the exported span continues that trace.
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let parent = "b7ad6b7169203331";
    http()
        .get(svc.api_url("/nope"))
        .header("traceparent", format!("00-{trace_id}-{parent}-01"))
        .send()
        .await
        .expect("request");
    let child = received.wait_for(|s| hex(&s.trace_id) == trace_id).await;
    assert_eq!(hex(&child.parent_span_id), parent);
    assert_eq!(child.name, "GET unmatched");
    let line =
        svc.wait_for_line(|v| v["trace_id"] == trace_id && v["message"] == "request completed");
    assert_eq!(line["span_id"].as_str(), Some(hex(&child.span_id).as_str()));
}

#[tokio::test(flavor = "multi_thread")]
async fn otlp_grpc_export_continues_the_incoming_trace() {
    let (endpoint, received) = grpc_receiver().await;
    exports_server_spans("grpc", endpoint, received).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn otlp_http_protobuf_export_continues_the_incoming_trace() {
    let (endpoint, received) = http_receiver().await;
    exports_server_spans("http/protobuf", endpoint, received).await;
}
