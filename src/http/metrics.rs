//! `GET /metrics` and the middleware that counts and times every request by
//! route template (never by raw path, which would explode label cardinality).

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::metrics::{HTTP_DURATION, HTTP_REQUESTS, recorder};

/// Prometheus text exposition of every metric of this process.
pub async fn metrics() -> impl IntoResponse {
    // Without the exporter's own HTTP listener nothing else drains histograms.
    recorder().run_upkeep();
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        recorder().render(),
    )
}

/// Records request count and latency by route, method and status.
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = method_label(request.method());
    let response = next.run(request).await;
    let labels = [
        ("route", route),
        ("method", method.to_owned()),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::counter!(HTTP_REQUESTS, &labels).increment(1);
    metrics::histogram!(HTTP_DURATION, &labels).record(started.elapsed().as_secs_f64());
    response
}

/// The method as a label: the standard ones by name, anything else (any
/// token a client invents, `ZZQ1`) as `OTHER`, so clients cannot create
/// series without end.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}
