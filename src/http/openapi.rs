//! `GET /openapi.json`: the checked-in OpenAPI 3.1 description, compiled in so
//! the served document and the file in the repository can never differ.

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;

/// The document itself, `openapi.json` at the repository's top level.
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// The handler.
pub async fn openapi() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], OPENAPI)
}
