//! Who calls the console, and the listener that finds out.
//!
//! The console serves TLS 1.3 with its certificate of the site CA
//! (`lpm pki console NAME`). An operator authenticates one of two ways:
//! - a client certificate of the site CA issued for an operator (`lpm pki
//!   operator NAME`), as at the hosts: the caller is `operator:NAME`;
//! - a bearer token (`lpm console token add NAME` prints it once; the
//!   database keeps its SHA-256 only) in `Authorization: Bearer TOKEN`:
//!   the caller is `token:NAME`. A browser has no client certificate, so
//!   the web page logs in with a token; its event stream (an EventSource,
//!   which cannot set headers) may carry it as the `token` query
//!   parameter of `GET /v1/events`, or in the `lpm_token` cookie.
//!
//! A request with neither gets 401 with `{"error": ...}`, except the
//! paths of the page itself (`ui::PUBLIC`), which hold no data. The
//! caller rides in the request as a [`Who`] extension, which every route
//! that changes something passes to the audit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use super::{ApiError, AppState};

/// Connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 256;
/// Time a client has for the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to send a request's head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// The cookie a browser may carry its token in.
pub const TOKEN_COOKIE: &str = "lpm_token";
/// The path whose token may come as a query parameter (an EventSource
/// sets no header).
pub const EVENTS_PATH: &str = "/v1/events";

/// Who made a request: `operator:NAME` (client certificate) or
/// `token:NAME` (bearer token); `console` for what the console does by
/// itself (resuming a migration after a restart).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Who(pub String);

impl Who {
    /// As the audit and the migrations' `who` record it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The operator a connection's client certificate names, if it presented
/// one (the handshake checked it is of the site CA).
#[derive(Clone, Debug)]
struct Peer(Option<String>);

/// A new token: 32 random bytes in hex, after `lpm_`.
pub fn new_token() -> Result<String> {
    let mut b = [0u8; 32];
    let mut f = std::fs::File::open("/dev/urandom").context("open /dev/urandom")?;
    std::io::Read::read_exact(&mut f, &mut b).context("read /dev/urandom")?;
    Ok(format!("lpm_{}", hex(&b)))
}

/// A token's hash as the database keeps it: SHA-256 in hex. Tokens are
/// 256 random bits, so a plain hash is as good as a slow one here.
pub fn token_hash(token: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The token a request carries: the Authorization header; for the event
/// stream also the `token` query parameter; the cookie.
fn token_of(req: &Request) -> Option<String> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        return v.strip_prefix("Bearer ").map(|t| t.trim().to_string());
    }
    if req.uri().path() == EVENTS_PATH {
        if let Some(q) = req.uri().query() {
            if let Some(t) = q.split('&').find_map(|kv| kv.strip_prefix("token=")) {
                return Some(t.to_string());
            }
        }
    }
    let cookies = req.headers().get_all(header::COOKIE);
    cookies
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(TOKEN_COOKIE).and_then(|r| r.strip_prefix('=')).map(str::to_string))
}

fn unauthorized(why: &str) -> Response {
    let mut r = ApiError::new(StatusCode::UNAUTHORIZED, why).into_response();
    r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    r
}

/// The middleware: finds who calls, or answers 401.
async fn authenticate(State(state): State<Arc<AppState>>, Extension(peer): Extension<Peer>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let who = if let Some(op) = peer.0 {
        Some(format!("operator:{op}"))
    } else if let Some(token) = token_of(&req) {
        match state.store.token_name(&token_hash(&token)).await {
            Ok(Some(name)) => Some(format!("token:{name}")),
            Ok(None) => return unauthorized("unknown token"),
            Err(e) => return ApiError::from(e).into_response(),
        }
    } else {
        None
    };
    match who {
        Some(w) => {
            req.extensions_mut().insert(Who(w));
            next.run(req).await
        }
        None if super::ui::PUBLIC.contains(&path.as_str()) => next.run(req).await,
        None => unauthorized("authenticate: an operator's client certificate of the site CA, or Authorization: Bearer TOKEN"),
    }
}

/// Binds the console's address and serves until SIGINT or SIGTERM.
pub async fn listen(state: Arc<AppState>) -> Result<()> {
    let tls = &state.config.tls;
    let issued = lpm_trust::Issued { cert: tls.cert.clone(), key: tls.key.clone() };
    let id = lpm_trust::Identity::load(&tls.ca, &issued).context("load the console's identity")?;
    let config = lpm_trust::server_config_optional_client(&id).context("the console's TLS configuration")?;
    let addr: SocketAddr = state.config.listen;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listen on {addr}"))?;
    tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "console listening (TLS; client certificate or bearer token)");
    let app = super::router(state.clone()).layer(axum::middleware::from_fn_with_state(state.clone(), authenticate));
    let stop = shutdown();
    tokio::pin!(stop);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let acceptor = TlsAcceptor::from(config);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut stop => break,
            a = listener.accept() => match a {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors, most likely: pause rather than spin.
                    tracing::warn!(error = %e, "console: accept");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "console: too many connections, one refused");
            continue;
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = serve_connection(acceptor, app, tcp, peer).await {
                tracing::debug!(%peer, error = format!("{e:#}"), "console connection");
            }
        });
    }
    tracing::info!("console: stopping");
    Ok(())
}

async fn serve_connection(acceptor: TlsAcceptor, app: Router, tcp: tokio::net::TcpStream, addr: SocketAddr) -> Result<()> {
    tcp.set_nodelay(true).ok();
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| anyhow!("TLS handshake not done within {HANDSHAKE_TIMEOUT:?}"))?
        .context("TLS handshake")?;
    // Only an operator's certificate names a caller; a host's or a
    // console's is of the site CA but no operator's, and counts as none.
    let operator = lpm_trust::peer_name(stream.get_ref().1.peer_certificates(), lpm_trust::Role::Operator).ok();
    tracing::debug!(%addr, ?operator, "console connection");
    let app = app.layer(Extension(Peer(operator)));
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
        .await
        .context("serve")
}

async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashed() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 64);
        assert_eq!(token_hash(&a), token_hash(&a));
        assert_ne!(token_hash(&a), token_hash(&b));
        assert_eq!(token_hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
