//! The remote control API: the control socket's requests as HTTP/1.1 and
//! JSON over mutual TLS on `api_listen` (docs/api.md), and the metrics
//! page (`GET /metrics`).
//!
//! Who may call: operators, i.e. clients presenting a certificate of the
//! site CA issued for an operator (`lpm pki operator NAME`). The TLS
//! handshake refuses any other CA's certificate, and no certificate,
//! before a byte of HTTP is read; a host's certificate passes the
//! handshake (it is the same CA's) and the connection is closed right
//! after it, before any request is read: no host needs to steer another
//! (hosts talk over the mover), and a host whose key is taken must not
//! give control of every other host.
//!
//! The server is async (tokio, hyper, axum) so that idle or slow
//! connections cost no thread; the requests themselves run the same
//! synchronous code the control socket runs ([`crate::daemon::handle`]),
//! each on a blocking thread of tokio's pool. The listener has a gate of
//! its own (gate.rs): connections per peer address and in all, fewer
//! still before the TLS handshake ends, and a deadline for the handshake.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use lpm_host::partition::PartitionSpec;
use lpm_migrate::handover::PeerState;
use serde::Deserialize;
use tokio_rustls::TlsAcceptor;

use crate::api::{MigrateRequest, Progress, Request, Response};
use crate::gate::{Gate, Limits, Peer};
use crate::state::Agent;

/// The API listener's limits: operators' CLIs, each call one connection
/// (`lpm migrate` holds its own for the migration).
pub const LIMITS: Limits =
    Limits { total: 128, per_peer: 64, unauthenticated: 32, unauthenticated_per_peer: 8, handshake: Duration::from_secs(10) };
/// Time a client has to send a request's head once it sent its first
/// byte, and to send the next request on a kept-alive connection.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Progress lines a slow reader may fall behind by before later ones are
/// dropped (the migration never waits for its CLI).
const PROGRESS_QUEUE: usize = 64;
/// The content type of the migration's stream: one JSON document a line.
pub const NDJSON: &str = "application/x-ndjson";
/// The content type of the metrics page.
pub const METRICS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds `addr` and serves the API there on a thread of its own (with a
/// small tokio runtime) for as long as lpmd runs. A bind that fails fails
/// lpmd's start.
pub fn start(agent: Arc<Agent>, addr: SocketAddr, id: &lpm_trust::Identity) -> Result<()> {
    let config = lpm_trust::server_config(id).context("the API's TLS configuration")?;
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("listen on {addr} (api_listen)"))?;
    listener.set_nonblocking(true).context("api listener: non-blocking")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("lpmd-api")
        // The requests' own threads: every one is a connection the gate
        // admitted, so the gate bounds them too.
        .max_blocking_threads(LIMITS.total)
        .enable_all()
        .build()
        .context("the API's runtime")?;
    std::thread::Builder::new()
        .name("lpmd-api".into())
        .spawn(move || {
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => accept(agent, l, TlsAcceptor::from(config)).await,
                    Err(e) => tracing::error!(error = %e, "api listener"),
                }
            })
        })
        .context("the API's thread")?;
    tracing::info!(%addr, "remote control API listening (mutual TLS, operators only)");
    Ok(())
}

/// What became of the connections to the API, for the metrics page (the
/// log says it at most once a second).
#[derive(Default)]
struct Counts {
    /// Served: an operator's.
    served: AtomicU64,
    /// Closed at once by the gate's limits.
    refused_limit: AtomicU64,
    /// The TLS handshake failed or ran out of time (no certificate of the
    /// site CA).
    refused_tls: AtomicU64,
    /// A certificate of the site CA that is not an operator's.
    refused_role: AtomicU64,
}

impl Counts {
    fn count(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self) -> String {
        let mut out = String::from(
            "# HELP lpm_api_connections_total Connections to the remote API, by what became of them.\n\
             # TYPE lpm_api_connections_total counter\n",
        );
        for (result, c) in [
            ("served", &self.served),
            ("refused_limit", &self.refused_limit),
            ("refused_tls", &self.refused_tls),
            ("refused_role", &self.refused_role),
        ] {
            out.push_str(&format!("lpm_api_connections_total{{result=\"{result}\"}} {}\n", c.load(Ordering::Relaxed)));
        }
        out
    }
}

async fn accept(agent: Arc<Agent>, listener: tokio::net::TcpListener, tls: TlsAcceptor) {
    let gate = Gate::new("api", LIMITS);
    let counts = Arc::new(Counts::default());
    let app = router(agent).layer(Extension(counts.clone()));
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors, most likely: pause instead of
                // spinning until a connection ends.
                gate.refused(Peer::Unknown, &format!("accept: {e}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = gate.admit(Peer::Ip(addr.ip())) else {
            Counts::count(&counts.refused_limit);
            continue;
        };
        let (tls, app, counts) = (tls.clone(), app.clone(), counts.clone());
        tokio::spawn(async move {
            let mut permit = permit;
            let deadline = permit.limits().handshake;
            let stream = match tokio::time::timeout(deadline, tls.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    Counts::count(&counts.refused_tls);
                    return permit.handshake_failed(&anyhow!(e).context("api TLS handshake"));
                }
                Err(_) => {
                    Counts::count(&counts.refused_tls);
                    return permit.handshake_failed(&anyhow!("api TLS handshake not done within {deadline:?}"));
                }
            };
            let certs = stream.get_ref().1.peer_certificates();
            // A console acts for its operators: it is let in as one, and
            // named as the console it is.
            let caller = lpm_trust::peer_name(certs, lpm_trust::Role::Operator)
                .or_else(|e| lpm_trust::peer_name(certs, lpm_trust::Role::Console).map(|c| format!("console:{c}")).map_err(|_| e));
            let operator = match caller {
                Ok(name) => name,
                Err(e) => {
                    Counts::count(&counts.refused_role);
                    return permit.handshake_failed(&anyhow!(e).context("api: only operators may call"));
                }
            };
            Counts::count(&counts.served);
            permit.authenticated();
            tracing::debug!(%addr, operator, "api connection");
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
                .await;
            if let Err(e) = served {
                tracing::debug!(%addr, operator, error = %e, "api connection ended");
            }
            drop(permit);
        });
    }
}

type Shared = State<Arc<Agent>>;

fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/v1/ping", get(|State(a): Shared| answer(a, Request::Ping)))
        .route(
            "/v1/partitions",
            get(|State(a): Shared| answer(a, Request::List))
                .post(|State(a): Shared, Json(spec): Json<PartitionSpec>| answer(a, Request::Create(spec))),
        )
        .route(
            "/v1/partitions/{name}",
            get(|State(a): Shared, Path(n): Path<String>| answer(a, Request::Show(n)))
                .delete(|State(a): Shared, Path(n): Path<String>| answer(a, Request::Delete(n))),
        )
        .route("/v1/partitions/{name}/stop", post(|State(a): Shared, Path(n): Path<String>| answer(a, Request::Stop(n))))
        .route("/v1/partitions/{name}/start", post(|State(a): Shared, Path(n): Path<String>| answer(a, Request::Start(n))))
        .route(
            "/v1/partitions/{name}/logs",
            get(|State(a): Shared, Path(name): Path<String>, Query(q): Query<LogsQuery>| {
                answer(a, Request::Logs { name, max_bytes: q.max_bytes.unwrap_or(1 << 20) })
            }),
        )
        .route(
            "/v1/partitions/{name}/log",
            get(|State(a): Shared, Path(name): Path<String>, Query(q): Query<LogFromQuery>| {
                answer(a, Request::LogsFrom { name, offset: q.offset, tail_lines: q.tail_lines, max_bytes: q.max_bytes.unwrap_or(1 << 20) })
            }),
        )
        .route(
            "/v1/migrations",
            get(|State(a): Shared, Query(q): Query<AllQuery>| answer(a, Request::Migrations { all: q.all.unwrap_or(false) })).post(migrate),
        )
        .route("/v1/migrations/{id}", get(|State(a): Shared, Path(id): Path<String>| answer(a, Request::Migration(id))))
        .route("/v1/migrations/{id}/stop", post(|State(a): Shared, Path(id): Path<String>| answer(a, Request::MigrationStop(id))))
        .route(
            "/v1/migrations/{id}/resolve",
            post(|State(a): Shared, Path(id): Path<String>, Json(peer): Json<PeerState>| answer(a, Request::Resolve { id, peer })),
        )
        .route("/v1/reports", get(|State(a): Shared| answer(a, Request::Reports)))
        .route("/v1/host", get(|State(a): Shared| answer(a, Request::Host)))
        .route("/metrics", get(metrics))
        .with_state(agent)
}

#[derive(Deserialize)]
struct LogsQuery {
    max_bytes: Option<u64>,
}

/// A piece of a log from an offset (`lpm partition logs --follow`).
#[derive(Deserialize)]
struct LogFromQuery {
    offset: Option<u64>,
    tail_lines: Option<u64>,
    max_bytes: Option<u64>,
}

#[derive(Deserialize)]
struct AllQuery {
    all: Option<bool>,
}

/// The status an answer goes with: 200, or 409 for `Error` (the request
/// was well formed; lpmd refused it or failed at it, and says why).
fn status_of(r: &Response) -> StatusCode {
    match r {
        Response::Error(_) => StatusCode::CONFLICT,
        _ => StatusCode::OK,
    }
}

/// Runs `req` as the control socket would, on a blocking thread.
async fn answer(agent: Arc<Agent>, req: Request) -> HttpResponse {
    let res = tokio::task::spawn_blocking(move || crate::daemon::handle(&agent, req, &mut |_| {}))
        .await
        .unwrap_or_else(|e| Response::Error(format!("the request's thread failed: {e}")));
    (status_of(&res), Json(res)).into_response()
}

fn line(r: &Response) -> Bytes {
    let mut b = serde_json::to_vec(r).unwrap_or_else(|e| format!("{{\"Error\":\"answer unserializable: {e}\"}}").into_bytes());
    b.push(b'\n');
    Bytes::from(b)
}

/// `POST /v1/migrations`: the migration runs on a blocking thread; its
/// progress and its end come as lines of JSON (`Response::Progress`,
/// then `Report`, `Validation` or `Error`) as they happen.
async fn migrate(State(agent): Shared, Json(m): Json<MigrateRequest>) -> HttpResponse {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::result::Result<Bytes, Infallible>>(PROGRESS_QUEUE);
    tokio::task::spawn_blocking(move || {
        let progress = tx.clone();
        let mut sink = move |p: Progress| {
            // Dropped when the reader is slow or gone: the migration
            // never waits for its CLI.
            let _ = progress.try_send(Ok(line(&Response::Progress(p))));
        };
        let res = crate::daemon::handle(&agent, Request::Migrate(m), &mut sink);
        let _ = tx.blocking_send(Ok(line(&res)));
    });
    ([(header::CONTENT_TYPE, NDJSON)], Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx))).into_response()
}

/// `GET /metrics`: the host's (metrics.rs), then the API's own.
async fn metrics(State(agent): Shared, Extension(counts): Extension<Arc<Counts>>) -> HttpResponse {
    match tokio::task::spawn_blocking(move || crate::metrics::render(&agent)).await {
        Ok(page) => ([(header::CONTENT_TYPE, METRICS_TYPE)], page + &counts.render()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("metrics: {e}")).into_response(),
    }
}
