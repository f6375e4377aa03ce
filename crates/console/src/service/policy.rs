//! The policies carried out (evacuate, balance, consolidate): their routes
//! and the executor of plans. Filled by the `pol` branch.

use std::sync::Arc;

use axum::Router;

use super::AppState;

/// The policies' routes, (method, path).
pub const ROUTES: &[(&str, &str)] = &[];

/// The policies' routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
}
