//! The OpenAPI 3.1 document (`/api/v1/openapi.json`, `kataven-hub openapi`,
//! `openapi/openapi.json`) and an interactive reference at `/docs` (Swagger UI, embedded).

use std::sync::{Arc, OnceLock};

use axum::extract::Path;
use axum::http::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::response::{Html, IntoResponse, Redirect, Response};
use utoipa::OpenApi;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};

use crate::error::{ApiError, ErrorBody};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Kataven Hub API",
        description = "Management API of the Kataven voice/chat AI-agent platform.\n\n\
            Every account has its own database; protected requests name the account in \
            `X-Account-ID` (optional with an `sk_live_` API key, which carries its account) and \
            authenticate with `Authorization: Bearer <OIDC ID token | sk_live_ key>`.\n\n\
            **Paths.** The canonical paths are `/api/v1/<resource>`. The same operations also \
            answer at `/api/<resource>` (legacy) and `/v1/<resource>`, and every path also \
            answers under the `/hub-api` prefix (see `servers`).\n\n\
            **Errors** are `{ \"error\": { \"code\", \"message\", \"request_id\" } }` with a \
            stable `code`; every response carries `X-Request-Id`.",
        license(name = "Apache-2.0"),
    ),
    servers(
        (url = "/", description = "This host"),
        (url = "/hub-api", description = "The same API under the `/hub-api` prefix"),
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "agents", description = "Agents and their tools, playbooks and FAQs"),
        (name = "playbooks"), (name = "faqs"), (name = "tools"),
        (name = "members", description = "Who may act in the account"),
        (name = "limits"),
        (name = "audit-log", description = "Who changed what in the account, and from where"),
        (name = "export", description = "The account's data as one archive"),
        (name = "api-keys", description = "`sk_live_` keys for machines"),
        (name = "widget", description = "Widget keys, settings, and the public widget endpoints"),
        (name = "public", description = "No account header and no ID token needed"),
        (name = "operations", description = "Health and metrics"),
        (name = "dev", description = "Dev mode only; 404 otherwise"),
    )
)]
pub struct ApiDoc;

/// Declares, on every operation of `doc`, the answers that come with the per-IP limit of the
/// public endpoints: 429, and 400 and 503 (they take input and read the catalog or a tenant).
/// Called by the router for exactly the routes it puts behind the limit.
pub fn declare_ip_limit(doc: &mut utoipa::openapi::OpenApi) {
    for_each_operation(doc, |op| {
        declare_answers(
            op,
            &[
                ("400", "BadRequest"),
                ("429", "TooManyRequests"),
                ("503", "Unavailable"),
            ],
        );
    });
}

/// Declares, on every write (POST, PUT, PATCH, DELETE) of `doc`, the optional
/// `Idempotency-Key` header, the `Idempotent-Replayed` header of its successful answers, and
/// the answers that come with a key: 409 `idempotency_key_in_use`, 422
/// `idempotency_key_reused` (400 `invalid_idempotency_key` is one of `BadRequest`'s). Called by
/// the router for exactly the routes it puts behind `idempotency::middleware`.
pub fn declare_idempotency(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
    use utoipa::openapi::{ObjectBuilder, Required, Type};
    for item in doc.paths.paths.values_mut() {
        let writes = [
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ];
        for op in writes.into_iter().flatten() {
            let key = ParameterBuilder::new()
                .name("Idempotency-Key")
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(
                    "Makes a retry safe: the first request with a key runs; a retry with the same \
                     key and the same request gets the stored answer again, with \
                     `Idempotent-Replayed: true`, for 24 hours. 1–255 visible ASCII characters \
                     (a UUID is a good key). See docs/idempotency.md.",
                ))
                .schema(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .min_length(Some(1))
                        .max_length(Some(crate::idempotency::MAX_KEY_LEN))
                        .pattern(Some("^[!-~]+$")),
                ))
                .build();
            op.parameters.get_or_insert_with(Vec::new).push(key);
            for (status, answer) in op.responses.responses.iter_mut() {
                if let (true, RefOr::T(answer)) = (status.starts_with('2'), answer) {
                    answer.headers.insert(
                        "Idempotent-Replayed".to_owned(),
                        string_header(
                            "`true` when this is the stored answer of an earlier request with the \
                             same `Idempotency-Key`",
                        ),
                    );
                }
            }
            declare_answers(
                op,
                &[
                    ("409", "IdempotencyKeyInUse"),
                    ("422", "IdempotencyKeyReused"),
                ],
            );
        }
    }
}

/// A response header holding a string.
fn string_header(description: &str) -> utoipa::openapi::Header {
    utoipa::openapi::HeaderBuilder::new()
        .schema(utoipa::openapi::ObjectBuilder::new().schema_type(utoipa::openapi::Type::String))
        .description(Some(description))
        .build()
}

/// Runs `f` on every operation of `doc`.
fn for_each_operation(doc: &mut utoipa::openapi::OpenApi, mut f: impl FnMut(&mut Operation)) {
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ];
        operations.into_iter().flatten().for_each(&mut f);
    }
}

/// Adds the shared error answers `answers` (status, response name) to `op`, keeping those it
/// declares itself.
fn declare_answers(op: &mut Operation, answers: &[(&str, &str)]) {
    for (status, name) in answers {
        op.responses
            .responses
            .entry((*status).to_owned())
            .or_insert_with(|| RefOr::Ref(Ref::from_response_name(*name)));
    }
}

impl ApiDoc {
    /// The whole document: public routes as they are, the resources under `/api/v1` with their
    /// security requirements and the error answers every protected route can give.
    pub fn build(
        public: utoipa::openapi::OpenApi,
        resources: utoipa::openapi::OpenApi,
        dev: utoipa::openapi::OpenApi,
    ) -> utoipa::openapi::OpenApi {
        let mut resources = resources;
        for_each_operation(&mut resources, protect);
        let mut doc = ApiDoc::openapi().nest("/api/v1", resources);
        doc.merge(public);
        doc.merge(dev);
        let components = doc.components.get_or_insert_with(Default::default);
        let schemes = [
            (
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("JWT")
                        .description(Some("An OIDC ID token of the configured issuer (Zitadel; the dev issuer in dev mode)."))
                        .build(),
                ),
            ),
            (
                "api_key",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("sk_live_<account>_<secret>")
                        .description(Some("An account API key. It carries its account, so `X-Account-ID` is optional (if sent, it must match)."))
                        .build(),
                ),
            ),
            (
                "account",
                SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                    "X-Account-ID",
                    "The account (tenant) slug the request acts in.",
                ))),
            ),
            (
                "admin",
                SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                    "X-Admin",
                    "`true`: explicit elevation for admin-only operations (needs an admin principal).",
                ))),
            ),
        ];
        for (name, scheme) in schemes {
            components.security_schemes.insert(name.to_owned(), scheme);
        }
        let errors = [
            (
                "BadRequest",
                "`missing_account_header`, `invalid_account`, `account_mismatch`, `invalid_body`, \
                 `invalid_query` or `invalid_idempotency_key`",
            ),
            (
                "IdempotencyKeyReused",
                "`idempotency_key_reused`: this `Idempotency-Key` was used for another request \
                 (another method, path or body); use a new key",
            ),
            (
                "Unauthenticated",
                "`unauthenticated`: no valid bearer (carries `WWW-Authenticate: Bearer`)",
            ),
            (
                "Forbidden",
                "`reserved_account`, `account_suspended`, `forbidden` (also: deleting a built-in \
                 playbook or tool), `admin_required` or `api_key_not_allowed`",
            ),
            ("NotFound", "`not_found`: no such resource in this account"),
            (
                "PayloadTooLarge",
                "`payload_too_large`: the body is over the size limit",
            ),
            (
                "Unavailable",
                "`unavailable`: a database is unavailable or busy, or `account_unavailable`: this \
                 account's database is missing; retry after `Retry-After` seconds",
            ),
        ];
        let header = string_header;
        components.responses.insert(
            "TooManyRequests".to_owned(),
            RefOr::T(
                ResponseBuilder::new()
                    .description(
                        "`rate_limited`: a limit was reached; `error.limit` names it (`minute`, `hour`, `day`, \
                         `concurrent`; `ip`, `client_key` or `user_tokens` on public endpoints; `auth` when \
                         this address has spent its budget of failed authentications).",
                    )
                    .header("Retry-After", header("Seconds until the limit resets"))
                    .header(
                        "RateLimit-Policy",
                        header("The account's limits (IETF httpapi draft), e.g. `\"minute\";q=60;w=60, \"hour\";q=1000;w=3600`"),
                    )
                    .header("RateLimit", header("The tripped limit: `\"minute\";r=0;t=<seconds to reset>`"))
                    .content(
                        "application/json",
                        ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build(),
                    )
                    .build(),
            ),
        );
        components.responses.insert(
            "IdempotencyKeyInUse".to_owned(),
            RefOr::T(
                ResponseBuilder::new()
                    .description(
                        "`idempotency_key_in_use`: a request with this `Idempotency-Key` is still \
                         running (or `conflict`: see the operation); retry after `Retry-After` seconds",
                    )
                    .header("Retry-After", header("Seconds to wait before retrying"))
                    .content(
                        "application/json",
                        ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build(),
                    )
                    .build(),
            ),
        );
        for (name, description) in errors {
            components.responses.insert(
                name.to_owned(),
                RefOr::T(
                    ResponseBuilder::new()
                        .description(description)
                        .content(
                            "application/json",
                            ContentBuilder::new()
                                .schema(Some(Ref::from_schema_name("ErrorBody")))
                                .build(),
                        )
                        .build(),
                ),
            );
        }

        doc
    }
}

/// The security requirements and error answers of a resource operation. A handler that takes
/// the `Admin` or `KeyManager` extractor declares its own requirement next to it, in its
/// `#[utoipa::path]`: `security(("bearer" = [], "account" = [], "admin" = []))` (an admin user
/// with `X-Admin: true`; no API key). Every other operation accepts a user in the account or
/// the account's API key.
fn protect(op: &mut Operation) {
    let has_body = op.request_body.is_some();
    if op.security.is_none() {
        let user = ["bearer", "account"]
            .iter()
            .fold(SecurityRequirement::default(), |r, s| {
                r.add::<&str, [&str; 0], &str>(s, [])
            });
        let api_key = SecurityRequirement::new::<&str, [&str; 0], &str>("api_key", []);
        op.security = Some(vec![user, api_key]);
    }
    declare_answers(
        op,
        &[
            ("400", "BadRequest"),
            ("401", "Unauthenticated"),
            ("403", "Forbidden"),
            ("404", "NotFound"),
            ("429", "TooManyRequests"),
            ("503", "Unavailable"),
        ],
    );
    if has_body {
        declare_answers(op, &[("413", "PayloadTooLarge")]);
    }
}

/// The document as pretty JSON (what `kataven-hub openapi` prints and the repository commits).
pub fn json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        let mut s = super::openapi_document()
            .to_pretty_json()
            .expect("the OpenAPI document serializes");
        s.push('\n');
        s
    })
}

/// This OpenAPI document.
#[utoipa::path(get, operation_id = "get_openapi", path = "/api/v1/openapi.json", tag = "public", security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document", body = std::collections::HashMap<String, serde_json::Value>)))]
pub async fn document() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], json())
}

/// The Swagger UI page at `/docs`. Every URL in it is relative to `/docs`, so that it works at
/// `/docs` and at `/hub-api/docs` alike: its files are `docs/<file>`, the document is
/// `api/v1/openapi.json`. No inline script or style, nothing from another origin.
const REFERENCE_PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Kataven Hub API reference</title>
  <link rel="icon" type="image/png" href="docs/favicon-32x32.png">
  <link rel="stylesheet" href="docs/swagger-ui.css">
  <link rel="stylesheet" href="docs/index.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="docs/swagger-ui-bundle.js"></script>
  <script src="docs/swagger-ui-standalone-preset.js"></script>
  <script src="docs/swagger-initializer.js"></script>
</body>
</html>
"#;

/// What the reference pages may load: this origin only. Swagger UI sets some styles inline and
/// draws its icons as `data:` images.
const REFERENCE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; font-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// Swagger UI's settings: the document by a relative URL, no online validator (it would call
/// swagger.io from the reader's browser).
fn swagger_config() -> Arc<utoipa_swagger_ui::Config<'static>> {
    static CONFIG: OnceLock<Arc<utoipa_swagger_ui::Config<'static>>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            Arc::new(
                utoipa_swagger_ui::Config::new(["api/v1/openapi.json"])
                    .validator_url("none")
                    .display_operation_id(true)
                    .filter(true),
            )
        })
        .clone()
}

/// An interactive API reference (Swagger UI, served from this binary: no CDN, works offline).
#[utoipa::path(get, operation_id = "api_reference", path = "/docs", tag = "public", security(()),
    responses((status = 200, description = "HTML page", body = String, content_type = "text/html")))]
pub async fn reference() -> Response {
    (
        [(CONTENT_SECURITY_POLICY, REFERENCE_CSP)],
        Html(REFERENCE_PAGE),
    )
        .into_response()
}

/// The reference's files (`/docs/<file>`: Swagger UI's scripts, styles and icons, embedded in
/// the binary). Not in the OpenAPI document: they are the page's parts, not API.
pub async fn reference_file(Path(file): Path<String>) -> Response {
    match utoipa_swagger_ui::serve(&file, swagger_config()) {
        Ok(Some(found)) if file != "index.html" => (
            [
                (CONTENT_TYPE, found.content_type),
                (CONTENT_SECURITY_POLICY, REFERENCE_CSP.to_owned()),
            ],
            found.bytes.into_owned(),
        )
            .into_response(),
        Ok(_) => ApiError::not_found("no such route").into_response(),
        Err(e) => ApiError::Internal(anyhow::anyhow!("swagger ui: {e}")).into_response(),
    }
}

/// `/docs/` → `/docs` (relative, so that it stays under `/hub-api`).
pub async fn reference_slash() -> Redirect {
    Redirect::permanent("../docs")
}
