//! The floor of the proxy benchmark (`cargo xtask bench proxy`): a forwarder
//! on the same stack as the madbase proxy (Tokio, hyper's HTTP/1 server,
//! keep-alive upstream connections) that does nothing else: no tenant, no
//! key, no rate limit, no metrics, no request ID, no span, no log line.
//! Measured next to nginx, it shows what the stack itself costs; measured
//! next to the proxy, what the proxy's own work costs.
//!
//! `LISTEN=127.0.0.1:p UPSTREAM=<upstream> bench_floor [pooled|per-connection|unix|h2c]`
//! - `pooled` (default): hyper-util's pooled client, as the proxy uses for
//!   HTTP/2 clients;
//! - `per-connection`: each client connection gets its own upstream
//!   connection (hyper's low-level client), no pool, as the proxy does for
//!   HTTP/1 clients;
//! - `unix`: the same over a unix socket (`UPSTREAM` is its path): what a
//!   co-located upstream could save over loopback TCP;
//! - `h2c`: every client connection's requests multiplexed on one HTTP/2
//!   cleartext connection to the upstream (prior knowledge).

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
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixStream};

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
    let mode = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "pooled".to_owned());
    if !["pooled", "per-connection", "unix", "h2c"].contains(&mode.as_str()) {
        anyhow::bail!("unknown mode {mode:?}: pooled, per-connection, unix or h2c");
    }
    let per_connection = mode == "per-connection";
    let listener = TcpListener::bind(&listen).await?;
    if mode == "unix" {
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(up) = UnixStream::connect(&upstream).await {
                    serve_per_connection(TokioIo::new(stream), up).await;
                }
            });
        }
    }
    if mode == "h2c" {
        return serve_h2c(listener, &upstream).await;
    }
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build(connector);
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let io = TokioIo::new(stream);
        if per_connection {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(up) = TcpStream::connect(&upstream).await {
                    let _ = up.set_nodelay(true);
                    serve_per_connection(io, up).await;
                }
            });
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

/// One client connection with its own upstream connection, `upstream`.
async fn serve_per_connection<U>(io: TokioIo<TcpStream>, upstream: U)
where
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Ok((sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await
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

/// Every client connection's requests on one HTTP/2 cleartext connection
/// to `upstream` (requests in absolute form: HTTP/2 sends the scheme and
/// authority as pseudo-headers).
async fn serve_h2c(listener: TcpListener, upstream: &str) -> anyhow::Result<()> {
    let stream = TcpStream::connect(upstream).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .context("the HTTP/2 handshake with the upstream")?;
    tokio::spawn(conn);
    let base = format!("http://{upstream}");
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let sender = sender.clone();
        let base = base.clone();
        let svc = service_fn(move |mut req: Request<Incoming>| {
            let mut sender = sender.clone();
            let target = format!(
                "{base}{}",
                req.uri().path_and_query().map_or("/", |p| p.as_str())
            );
            async move {
                let Ok(uri) = target.parse::<Uri>() else {
                    return Ok::<_, Infallible>(bad_gateway());
                };
                *req.uri_mut() = uri;
                *req.version_mut() = hyper::Version::HTTP_2;
                req.headers_mut().remove(hyper::header::HOST);
                Ok(match sender.send_request(req).await {
                    Ok(resp) => resp.map(Either::Left),
                    Err(_) => bad_gateway(),
                })
            }
        });
        tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), svc));
    }
}
