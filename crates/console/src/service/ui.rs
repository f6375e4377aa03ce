//! The web page and its live event stream, and the OpenAPI description.
//! Filled by the `web` branch.

use std::sync::Arc;

use axum::Router;

use super::AppState;

/// The page's routes, (method, path).
pub const ROUTES: &[(&str, &str)] = &[];

/// Paths served without authentication: the page and its assets, which
/// hold no data (the page logs in with a token).
pub const PUBLIC: &[&str] = &[];

/// The page's routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
}
