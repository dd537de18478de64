//! The HTTP endpoint: `GET /metrics`, `GET /healthz` and, for `tcptrace
//! sockets`, `GET /sockets` (what tracking knows of each live socket, JSON) on
//! hyper's HTTP/1 server. Binding the listener is the caller's job.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ACCEPT, ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use super::{Format, render};
use crate::snapshot::Snapshot;
use crate::sockets::Known;

/// Connections served at once. A scraper needs one; more wait in the listen
/// backlog instead of costing a task each.
const MAX_CONNECTIONS: usize = 32;

/// How long a client may take to send its request headers. Keeps a stalled
/// client from holding a connection slot forever.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `/metrics` (the latest snapshot of `latest`) and `/healthz` until
/// `shutdown` completes. Open connections are then dropped: a scrape takes
/// milliseconds, and nothing outlives the call.
///
/// `/metrics` answers in OpenMetrics when the `Accept` header asks for it, as
/// Prometheus does, and in the Prometheus text format 0.0.4 otherwise.
pub async fn serve(
    listener: TcpListener,
    latest: watch::Receiver<Arc<Snapshot>>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // Nobody answers socket requests: /sockets is then 404.
    let (sockets, _) = mpsc::channel(1);
    serve_with_sockets(listener, latest, sockets, shutdown).await
}

/// A request for the live sockets tracking knows; answered by the loop that
/// owns the tracker, so the list is computed only when someone asks.
pub type SocketsRequest = oneshot::Sender<Arc<Vec<Known>>>;

/// [`serve`], plus `GET /sockets`: the tracker's live sockets as a JSON array,
/// asked for through `sockets`.
pub async fn serve_with_sockets(
    listener: TcpListener,
    latest: watch::Receiver<Arc<Snapshot>>,
    sockets: mpsc::Sender<SocketsRequest>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    // Dropping the set at return aborts the connections still open.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept(), if conns.len() < MAX_CONNECTIONS => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: transient, so
                        // back off rather than spin or stop serving.
                        log::warn!("metrics endpoint: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let latest = latest.clone();
                let sockets = sockets.clone();
                let service = service_fn(move |req| {
                    let snap = Arc::clone(&latest.borrow());
                    let sockets = sockets.clone();
                    async move {
                        if req.uri().path() == "/sockets" && req.method() == Method::GET {
                            let (tx, rx) = oneshot::channel();
                            let list = match sockets.send(tx).await {
                                Ok(()) => rx.await.ok(),
                                Err(_) => None,
                            };
                            return Ok::<_, Infallible>(
                                list.map_or_else(|| text(StatusCode::NOT_FOUND, "not found\n"), |l| json(&l)),
                            );
                        }
                        Ok(respond(&req, snap))
                    }
                });
                conns.spawn(async move {
                    let conn = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service);
                    if let Err(e) = conn.await {
                        log::debug!("metrics endpoint: connection: {e}");
                    }
                });
            }
        }
    }
}

fn respond(req: &Request<Incoming>, snap: Arc<Snapshot>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !matches!(path, "/metrics" | "/healthz") {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::GET {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return resp;
    }
    if path == "/healthz" {
        return text(StatusCode::OK, "ok\n");
    }
    let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::from_accept(accept);
    let mut resp = Response::new(Full::new(Bytes::from(render(snap, format))));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    resp
}

fn json(sockets: &[Known]) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(sockets).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
