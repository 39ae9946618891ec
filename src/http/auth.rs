//! The `Authorization: Bearer <api key>` extractor: every job endpoint takes a
//! [`Client`], so an unauthenticated request never reaches a handler.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;

/// The authenticated client; jobs are visible only to their owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client(pub Uuid);

impl FromRequestParts<AppState> for Client {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let secret = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or(ApiError::Unauthorized)?;
        match state.keys.authenticate(secret).await? {
            Some(client) => Ok(Client(client)),
            None => Err(ApiError::Unauthorized),
        }
    }
}
