//! The floor of the proxy benchmark (`cargo xtask bench proxy`): a forwarder
//! on the same stack as the madbase proxy (Tokio, hyper's HTTP/1 server,
//! keep-alive upstream connections) that does nothing else: no tenant, no
//! key, no rate limit, no metrics, no request ID, no span, no log line.
//! Measured next to nginx, it shows what the stack itself costs; measured
//! next to the proxy, what the proxy's own work costs.
//!
//! `LISTEN=127.0.0.1:p UPSTREAM=127.0.0.1:q bench_floor [pooled|per-connection]`
//! - `pooled` (default): hyper-util's pooled client, as the proxy uses for
//!   HTTP/2 clients;
//! - `per-connection`: each client connection gets its own upstream
//!   connection (hyper's low-level client), no pool, as the proxy does for
//!   HTTP/1 clients.

use std::convert::Infallible;
use std::sync::Arc;

use anyhow::Context as _;
use http::Uri;
use http_body_util::{Either, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

type Answer = Response<Either<Incoming, Empty<Bytes>>>;

fn bad_gateway() -> Answer {
    let mut resp = Response::new(Either::Right(Empty::new()));
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    resp
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listen = std::env::var("LISTEN").context("LISTEN")?;
    let upstream = std::env::var("UPSTREAM").context("UPSTREAM")?;
    let per_connection = match std::env::args().nth(1).as_deref() {
        None | Some("pooled") => false,
        Some("per-connection") => true,
        Some(other) => anyhow::bail!("unknown mode {other:?}: pooled or per-connection"),
    };
    let listener = TcpListener::bind(&listen).await?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build(connector);
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let io = TokioIo::new(stream);
        if per_connection {
            tokio::spawn(serve_per_connection(io, upstream.clone()));
        } else {
            let client = client.clone();
            let upstream = upstream.clone();
            let svc = service_fn(move |mut req: Request<Incoming>| {
                let client = client.clone();
                let target = format!(
                    "http://{upstream}{}",
                    req.uri().path_and_query().map_or("/", |p| p.as_str())
                );
                async move {
                    let Ok(uri) = target.parse::<Uri>() else {
                        return Ok::<_, Infallible>(bad_gateway());
                    };
                    *req.uri_mut() = uri;
                    Ok(match client.request(req).await {
                        Ok(resp) => resp.map(Either::Left),
                        Err(_) => bad_gateway(),
                    })
                }
            });
            tokio::spawn(http1::Builder::new().serve_connection(io, svc));
        }
    }
}

/// One client connection with its own upstream connection.
async fn serve_per_connection(io: TokioIo<TcpStream>, upstream: String) {
    let Ok(stream) = TcpStream::connect(&upstream).await else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let Ok((sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        return;
    };
    tokio::spawn(conn);
    // HTTP/1 without pipelining: one request at a time per client connection.
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let svc = service_fn(move |req: Request<Incoming>| {
        let sender = sender.clone();
        async move {
            let mut sender = sender.lock().await;
            Ok::<_, Infallible>(match sender.send_request(req).await {
                Ok(resp) => resp.map(Either::Left),
                Err(_) => bad_gateway(),
            })
        }
    });
    let _ = http1::Builder::new().serve_connection(io, svc).await;
}
