//! Router assembly: one router definition, mounted at the root and under `/hub-api`,
//! wrapped in the middleware stack.

pub mod accounts;
pub mod call_limits;
pub mod console;
pub mod health;
pub mod login;
pub mod members;
pub mod openapi;
pub mod user;

use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tracing::Instrument;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::agents::routes as agents;
use crate::audit::routes as audit_log;
use crate::error::ApiError;
use crate::export::routes as export;
use crate::extract::rate_limit_headers;
use crate::keys::api as api_keys;
use crate::keys::widget as widget_keys;
use crate::knowledge::routes as knowledge;
use crate::limits::auth_failures;
use crate::limits::client_ip::limit_public;
use crate::metrics::{LabelRoute, MatchedRoute, MethodLabel};
use crate::request_id::RequestId;
use crate::state::AppState;
use crate::widget::routes as widget;
use crate::widget::settings as widget_settings;

/// The protected resources, relative to a version prefix. One definition, mounted at the
/// canonical `/api/v1` and at the `/api` (legacy) and `/v1` (api host) aliases.
fn resources() -> OpenApiRouter<AppState> {
    let routes = OpenApiRouter::new()
        .routes(routes!(agents::list, agents::create))
        .routes(routes!(agents::get, agents::patch, agents::delete))
        .routes(routes!(
            agents::list_tools,
            agents::upsert_tool,
            agents::put_tool
        ))
        .routes(routes!(agents::attach_playbook))
        .routes(routes!(agents::detach_playbook))
        .routes(routes!(agents::attach_faq))
        .routes(routes!(agents::detach_faq))
        .routes(routes!(
            knowledge::list_playbooks,
            knowledge::create_playbook
        ))
        .routes(routes!(
            knowledge::get_playbook,
            knowledge::patch_playbook,
            knowledge::delete_playbook
        ))
        .routes(routes!(knowledge::list_faqs, knowledge::create_faq))
        .routes(routes!(
            knowledge::get_faq,
            knowledge::patch_faq,
            knowledge::delete_faq
        ))
        .routes(routes!(knowledge::list_tools, knowledge::create_tool))
        .routes(routes!(
            knowledge::get_tool,
            knowledge::patch_tool,
            knowledge::delete_tool
        ))
        .routes(routes!(members::list, members::upsert))
        .routes(routes!(members::remove))
        .routes(routes!(call_limits::get))
        .routes(routes!(audit_log::list))
        .routes(routes!(export::export))
        .routes(routes!(api_keys::list, api_keys::create))
        .routes(routes!(api_keys::patch, api_keys::delete))
        .routes(routes!(widget_keys::list, widget_keys::create))
        .routes(routes!(widget_keys::patch, widget_keys::delete))
        .routes(routes!(widget_settings::get, widget_settings::patch))
        .routes(routes!(
            widget_settings::get_agent,
            widget_settings::patch_agent
        ));
    // Inside the failure budget: a spent client is refused before its body is read.
    idempotent(routes)
        .layer(middleware::from_fn(rate_limit_headers))
        .layer(middleware::from_fn(auth_failures::budget))
}

/// `router`'s writes take an `Idempotency-Key`, and are documented so: one place decides both.
fn idempotent(router: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    let mut router = router.layer(middleware::from_fn(crate::idempotency::middleware));
    openapi::declare_idempotency(router.get_openapi_mut());
    router
}

/// Public routes (no account, no normal bearer). Those a browser or a stranger calls are
/// limited per client IP; health, metrics and the API document are not.
fn public() -> OpenApiRouter<AppState> {
    let limited = ip_limited(
        OpenApiRouter::new()
            .routes(routes!(accounts::list))
            .routes(routes!(accounts::validate))
            .routes(routes!(user::user_org)),
    )
    .layer(middleware::from_fn(auth_failures::budget));
    OpenApiRouter::new()
        .merge(limited)
        .merge(widget())
        .routes(routes!(widget::jwks))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .routes(routes!(openapi::document))
        .routes(routes!(openapi::reference))
        // The reference's own files: part of the page, not of the API (undocumented).
        .route("/docs/", axum::routing::get(openapi::reference_slash))
        .route("/docs/{file}", axum::routing::get(openapi::reference_file))
}

/// The public widget endpoints, called cross-origin from customers' pages (see [`widget_cors`]).
fn widget() -> OpenApiRouter<AppState> {
    ip_limited(
        OpenApiRouter::new()
            .routes(routes!(widget::config))
            .routes(routes!(widget::guest))
            .routes(routes!(widget::user_token))
            .routes(routes!(widget::exchange))
            .routes(routes!(widget::refresh)),
    )
    .layer(middleware::from_fn(auth_failures::budget))
}

/// Whether CORS is open for a path: the widget endpoints and the session JWKS (also under
/// `/hub-api`). Everything else keeps the browser's same-origin default.
fn cors_open(path: &str) -> bool {
    let path = path.strip_prefix("/hub-api").unwrap_or(path);
    path.starts_with("/api/v1/widget/") || path == "/.well-known/jwks.json"
}

/// Permissive CORS for the widget paths: any origin is echoed (with `Vary: Origin`) and
/// preflights are answered; the handlers' allowlist check is the security boundary. Applied
/// around the whole router, so that preflights never reach the method-not-allowed fallback.
fn widget_cors() -> tower_http::cors::CorsLayer {
    use axum::http::{Method, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(|_, parts| {
            cors_open(parts.uri.path())
        }))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
        .max_age(Duration::from_secs(600))
}

/// Dev login and the dev issuer: routed only when dev login is on (documented always).
fn dev() -> OpenApiRouter<AppState> {
    let checks_credentials = OpenApiRouter::new()
        .routes(routes!(login::login))
        .routes(routes!(login::userinfo))
        .layer(middleware::from_fn(auth_failures::budget));
    ip_limited(
        OpenApiRouter::new()
            .merge(checks_credentials)
            .routes(routes!(login::discovery))
            .routes(routes!(login::keys)),
    )
}

/// `router` behind the per-client-IP limit of the public endpoints, and documented so (the
/// answers that come with the limit): one place decides both.
fn ip_limited(router: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    let mut router = router.layer(middleware::from_fn(limit_public));
    openapi::declare_ip_limit(router.get_openapi_mut());
    router
}

/// Every route relative to a mount point (`/` and `/hub-api`), and the OpenAPI document that
/// describes them (canonical paths only; the aliases are described in the document's text).
fn assemble(dev_login: bool) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (resources, resources_doc) = resources().split_for_parts();
    let (public, public_doc) = public().split_for_parts();
    let (dev_routes, dev_doc) = dev().split_for_parts();
    let mut router = public
        .nest("/api/v1", resources.clone())
        .nest("/api", resources.clone())
        .nest("/v1", resources);
    if dev_login {
        router = router.merge(dev_routes).merge(console::routes());
    }
    let doc = openapi::ApiDoc::build(public_doc, resources_doc, dev_doc);
    (router, doc)
}

/// Every route, relative to a mount point (`/` and `/hub-api`). The dev issuer,
/// `POST /api/login` and the console pages exist only when dev login is on.
pub fn routes(dev_login: bool) -> Router<AppState> {
    assemble(dev_login).0
}

/// The OpenAPI document of every route.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    assemble(true).1
}

/// The whole application: routes at `/` and under `/hub-api`, the middleware stack, the state.
pub fn app(state: AppState) -> Router {
    router(routes(state.identity.dev.is_some()), state)
}

/// Mounts `routes` (the application's, possibly with extra routes merged in by an embedder or
/// the test harness) and wraps them in the middleware stack.
///
/// The request envelope (request id, span and log line, metrics, panic catcher, time limit,
/// CORS, body limit) wraps the router once rather than each route: a layer on a router is
/// applied to every route and cloned, with everything under it, for every request; around the
/// router the clone is a handful of reference counts (see `docs/performance.md`). Only
/// [`LabelRoute`] wraps each route, to tell the envelope which route matched.
pub fn router(routes: Router<AppState>, state: AppState) -> Router {
    let timeout = state.config.request_timeout();
    let routed = Router::new()
        .merge(routes.clone())
        .nest("/hub-api", routes)
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(tower::layer::layer_fn(LabelRoute))
        .with_state(state.clone());
    // Outermost first: the request id, then the span, …, the body limit last. The failure
    // budget (layered on the routers that check credentials) reads the extensions added here,
    // and sits inside CORS (so that its 429 carries the widget's CORS headers).
    let envelope = tower::ServiceBuilder::new()
        .layer(middleware::from_fn(crate::request_id::middleware))
        .layer(middleware::from_fn(trace))
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::metrics::middleware,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .layer(middleware::from_fn_with_state(timeout, request_timeout))
        .layer(widget_cors())
        .layer(axum::Extension(state.auth_failures.clone()))
        .layer(axum::Extension(state.ip_limiter.clone()))
        .layer(DefaultBodyLimit::max(state.config.body_limit_bytes))
        .service(routed);
    Router::new().fallback_service(envelope)
}

async fn fallback() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
}

async fn request_timeout(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::unavailable("the request took too long").into_response(),
    }
}

/// One span per request (request id, method, route; account and principal are recorded by the
/// extractors) and one log line when it finishes. Only bounded values are logged: the request
/// id (validated), the method and the matched route as their metric labels (a method outside
/// the standard ones is `other`, an unmatched path `unmatched`), never the raw path, the query
/// string or headers, so neither credentials nor a client's arbitrary strings reach the logs.
async fn trace(mut req: Request, next: Next) -> Response {
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %MethodLabel::of(req.method()),
        // Recorded by `LabelRoute` once the router has matched the path.
        route = tracing::field::Empty,
        account = tracing::field::Empty,
        principal_kind = tracing::field::Empty,
        principal_id = tracing::field::Empty,
    );
    let matched = MatchedRoute::default();
    req.extensions_mut().insert(matched.clone());
    let start = std::time::Instant::now();
    async move {
        let response = next.run(req).await;
        if !matched.is_matched() {
            tracing::Span::current().record("route", "unmatched");
        }
        let status = response.status().as_u16();
        let latency_ms = start.elapsed().as_secs_f64() * 1000.0;
        if status >= 500 {
            tracing::warn!(status, latency_ms, "request finished");
        } else {
            tracing::info!(status, latency_ms, "request finished");
        }
        response
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Method;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    /// The request log line of a request, in both log formats.
    async fn log_of(method: &str, uri: &str, json: bool) -> String {
        let captured = crate::telemetry::CapturedLog::default();
        let builder = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(captured.clone());
        let subscriber: Box<dyn tracing::Subscriber + Send + Sync> = if json {
            Box::new(
                builder
                    .fmt_fields(crate::telemetry::json::JsonFields)
                    .event_format(crate::telemetry::json::JsonLine)
                    .finish(),
            )
        } else {
            Box::new(builder.finish())
        };
        let _guard = tracing::subscriber::set_default(subscriber);
        let routed = Router::new()
            .route("/api/v1/agents/{id}", get(|| async { "ok" }))
            .fallback(fallback)
            .layer(tower::layer::layer_fn(LabelRoute));
        let app = tower::ServiceBuilder::new()
            .layer(middleware::from_fn(trace))
            .service(routed);
        let request = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        app.oneshot(request).await.unwrap();
        captured.text()
    }

    #[tokio::test]
    async fn the_request_log_holds_no_client_string() {
        let method = format!("XMETHOD{}", "a".repeat(8000));
        for json in [false, true] {
            for uri in [
                "/api/v1/agents/secret-id?token=secret-query",
                "/secret-path?token=secret-query",
            ] {
                let log = log_of(&method, uri, json).await;
                assert!(log.contains("request finished"), "{log}");
                assert!(!log.contains("XMETHOD"), "the method was logged: {log}");
                assert!(!log.contains("secret"), "the path was logged: {log}");
                assert!(log.len() < 1024, "{} bytes: {log}", log.len());
                let other = if json {
                    r#""method":"other""#
                } else {
                    "method=other"
                };
                assert!(log.contains(other), "{log}");
            }
            let log = log_of("GET", "/api/v1/agents/secret-id", json).await;
            assert!(log.contains("/api/v1/agents/{id}"), "{log}");
            let log = log_of("GET", "/secret-path", json).await;
            assert!(log.contains("unmatched"), "{log}");
        }
    }
}
