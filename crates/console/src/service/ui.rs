//! The console's web page, its live event stream and its API description.
//!
//! - `GET /` and `GET /ui/{app.js,style.css}`: the page, plain HTML, CSS
//!   and JavaScript embedded in the binary (no build step, nothing fetched
//!   at run time). They hold no data, so they are served without
//!   authentication ([`PUBLIC`]); everything the page shows comes from the
//!   API with the operator's token.
//! - `GET /v1/events`: the console's [`Event`]s as server-sent events, one
//!   JSON document per `data:` line. An EventSource cannot set headers,
//!   so the page sends its token as the `token` query parameter, which
//!   the console accepts on this path only (auth.rs).
//! - `GET /openapi.json`: docs/openapi.json, the API's description, which
//!   crates/console/tests/openapi.rs checks against every `ROUTES` table.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};

use super::{AppState, Event};

/// The routes this module serves, as (method, path).
pub const ROUTES: &[(&str, &str)] =
    &[("GET", "/"), ("GET", "/ui/app.js"), ("GET", "/ui/style.css"), ("GET", "/v1/events"), ("GET", "/openapi.json")];

/// Paths served without authentication: the page and its assets (no
/// data in them) and the API's description.
pub const PUBLIC: &[&str] = &["/", "/ui/app.js", "/ui/style.css", "/openapi.json"];

/// The API's description (docs/openapi.json).
pub const OPENAPI: &str = include_str!("../../../../docs/openapi.json");

const INDEX_HTML: &str = include_str!("../../ui/index.html");
const APP_JS: &str = include_str!("../../ui/app.js");
const STYLE_CSS: &str = include_str!("../../ui/style.css");

/// How often an idle event stream gets a comment line: proxies and
/// browsers keep the connection, and a browser that went away is noticed
/// on the next write.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The page's routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/ui/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/ui/style.css", get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }))
        .route("/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }))
        .route("/v1/events", get(events))
}

/// An embedded file. The page's scripts come only from this console (no
/// inline script, no other origin), which the policy makes the browser
/// enforce; `no-cache` makes a browser check for a newer console's page.
fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}

/// `GET /v1/events`: every event from now on, as it happens.
///
/// Nothing is queued per browser beyond the console's one bounded
/// channel ([`super::EVENT_QUEUE`] events): the stream is read only as
/// fast as the connection takes it, and a browser that falls further
/// behind is told how many events it missed (`{"type": "lagged"}`) and
/// reads the state again through the API.
async fn events(State(state): State<Arc<AppState>>) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let stream = BroadcastStream::new(state.events.subscribe()).map(|r| {
        Ok(match r {
            Ok(ev) => sse_event(&ev),
            Err(BroadcastStreamRecvError::Lagged(missed)) => {
                SseEvent::default().data(serde_json::json!({"type": "lagged", "missed": missed}).to_string())
            }
        })
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

/// One event as an SSE message: its JSON on one `data:` line.
fn sse_event(ev: &Event) -> SseEvent {
    // An Event is plain data: its serialization cannot fail.
    SseEvent::default()
        .data(serde_json::to_string(ev).unwrap_or_else(|e| serde_json::json!({"type": "error", "error": e.to_string()}).to_string()))
}
