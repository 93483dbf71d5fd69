//! The dev console (dev login only): a sign-in page at `/` that lists and creates the
//! account's agents, and a widget page at `/console/widget` that runs the widget's guest flow
//! for a widget key. Plain HTML, CSS and JavaScript embedded in the binary; no build step.
//!
//! Not in the OpenAPI document: these are pages that call the API, not API. Routed only when
//! dev login is on, so `/` answers 404 otherwise, like any unknown route.

use axum::Router;
use axum::extract::{OriginalUri, Path};
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::error::ApiError;
use crate::state::AppState;

const INDEX: &str = include_str!("console/index.html");
const WIDGET: &str = include_str!("console/widget.html");
const COMMON_JS: &str = include_str!("console/common.js");
const CONSOLE_JS: &str = include_str!("console/console.js");
const WIDGET_JS: &str = include_str!("console/widget.js");
const CSS: &str = include_str!("console/console.css");

/// This origin only: scripts and styles from files of this origin, requests to this origin,
/// no inline script or style, no plugins, no framing, forms never submitted by the browser
/// (the scripts handle them).
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'self'; form-action 'none'; \
     frame-ancestors 'none'";

/// The console's routes, relative to a mount point (`/` and `/hub-api`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/console/widget", get(widget))
        .route("/console/{file}", get(file))
}

async fn index(OriginalUri(uri): OriginalUri) -> Response {
    page(INDEX, uri.path())
}

async fn widget(OriginalUri(uri): OriginalUri) -> Response {
    page(WIDGET, uri.path())
}

/// A page, with its `<base>` set to the mount point it was asked under, so that its relative
/// URLs (its files, the API) stay under `/hub-api` when it was opened there.
fn page(html: &'static str, path: &str) -> Response {
    let html = if path.starts_with("/hub-api") {
        html.replace(r#"<base href="/">"#, r#"<base href="/hub-api/">"#)
    } else {
        html.to_owned()
    };
    respond("text/html; charset=utf-8", html)
}

async fn file(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "common.js" => respond("text/javascript; charset=utf-8", COMMON_JS),
        "console.js" => respond("text/javascript; charset=utf-8", CONSOLE_JS),
        "widget.js" => respond("text/javascript; charset=utf-8", WIDGET_JS),
        "console.css" => respond("text/css; charset=utf-8", CSS),
        _ => ApiError::not_found("no such route").into_response(),
    }
}

fn respond(content_type: &'static str, body: impl Into<axum::body::Body>) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                HeaderName::from_static("x-content-type-options"),
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body.into(),
    )
        .into_response()
}
