//! The HTTP server loop of `serve`: hyper over each accepted connection with bounded reads, so
//! a client that trickles its header or stalls half-way through a body (slow-loris) is
//! disconnected instead of holding a connection and a task forever, and graceful shutdown.

use std::future::Future;
use std::time::Duration;

use anyhow::{bail, Context};
use axum::body::Body;
use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tracing::debug;

/// How long a client may take to send a request's line and headers.
const HEADER_READ_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// How long a client may pause between two pieces of a body (64 KiB at most arrive whole in
/// far less on any working link).
const BODY_READ_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// The read bounds, from `LEDGER_HEADER_READ_TIMEOUT_S` and `LEDGER_BODY_READ_TIMEOUT_S`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read: Duration,
    pub body_read: Duration,
}

impl Limits {
    pub fn from_env() -> anyhow::Result<Limits> {
        Ok(Limits {
            header_read: seconds("LEDGER_HEADER_READ_TIMEOUT_S", HEADER_READ_TIMEOUT_DEFAULT)?,
            body_read: seconds("LEDGER_BODY_READ_TIMEOUT_S", BODY_READ_TIMEOUT_DEFAULT)?,
        })
    }
}

fn seconds(name: &str, default: Duration) -> anyhow::Result<Duration> {
    let Ok(text) = std::env::var(name) else {
        return Ok(default);
    };
    let value: u64 = text
        .trim()
        .parse()
        .with_context(|| format!("{name}={text:?} is not a whole number of seconds"))?;
    if value == 0 {
        bail!("{name} must be at least 1 second: 0 would turn the bound off");
    }
    Ok(Duration::from_secs(value))
}

/// Serves `app` until `stop` resolves, then stops accepting and waits for the requests in
/// flight (idle keep-alive connections are closed at once).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    stop: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let app = app.layer(RequestBodyTimeoutLayer::new(limits.body_read));
    let graceful = GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of descriptors or a reset before accept: keep serving the others.
                    debug!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(
            app.clone()
                .map_request(|request: Request<Incoming>| request.map(Body::new)),
        );
        // HTTP/1 only, as before: HTTP/2 has no header read timeout to bound it with.
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                debug!(%remote, error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
