//! A JSON body extractor whose rejections are our JSON errors: `invalid_body`, naming the
//! offending field (through `serde_path_to_error`), or `payload_too_large`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_json_content_type);
        if !is_json {
            return Err(ApiError::InvalidBody {
                message: "expected `Content-Type: application/json`".into(),
                field: None,
            });
        }
        let bytes = Bytes::from_request(req, state).await.map_err(bytes_error)?;
        parse(&bytes).map(Json)
    }
}

/// Deserializes a JSON body, naming the field at fault. Every body of this API is a JSON
/// object (serde would otherwise accept `[]` for a struct whose fields all have defaults).
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|b| *b != b'{') {
        return Err(ApiError::InvalidBody {
            message: "invalid body: expected a JSON object".into(),
            field: None,
        });
    }
    if has_nul_escape(bytes) {
        // PostgreSQL text and jsonb cannot hold U+0000.
        return Err(ApiError::InvalidBody {
            message: "invalid body: strings must not contain U+0000".into(),
            field: None,
        });
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let field = field_of(
            &path,
            &inner.to_string(),
            !inner.is_syntax() && !inner.is_eof(),
        );
        let what = if inner.is_syntax() || inner.is_eof() {
            "malformed JSON"
        } else {
            "invalid body"
        };
        ApiError::InvalidBody {
            message: match &field {
                Some(f) => format!("{what}: `{f}`: {inner}"),
                None => format!("{what}: {inner}"),
            },
            field,
        }
    })?;
    de.end().map_err(|e| ApiError::InvalidBody {
        message: format!("malformed JSON: {e}"),
        field: None,
    })?;
    Ok(value)
}

/// Whether a JSON text contains the escape `\u0000` (a raw NUL byte is not valid JSON anyway).
fn has_nul_escape(bytes: &[u8]) -> bool {
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if bytes.get(i + 1) == Some(&b'u') && bytes.get(i + 2..i + 6) == Some(b"0000") {
                return true;
            }
            i += 2; // skip the escaped character
        } else {
            i += 1;
        }
    }
    false
}

/// Checks that the numbers in a JSON value stored as `jsonb` can be read back: PostgreSQL
/// keeps them exactly, but a value beyond ±1e300 may not round-trip into an `f64`.
pub fn check_json_numbers(field: &str, value: &serde_json::Value) -> Result<(), ApiError> {
    match value {
        serde_json::Value::Number(n) => match n.as_f64() {
            Some(f) if f.is_finite() && f.abs() <= 1e300 => Ok(()),
            _ => Err(ApiError::invalid_field(
                field,
                "holds a number out of range (±1e300)",
            )),
        },
        serde_json::Value::Array(items) => {
            items.iter().try_for_each(|v| check_json_numbers(field, v))
        }
        serde_json::Value::Object(map) => {
            map.values().try_for_each(|v| check_json_numbers(field, v))
        }
        _ => Ok(()),
    }
}

/// The field at fault: the path of the value, or for a missing field the path of its parent
/// plus the name serde reports (`missing field `name``).
pub(crate) fn field_of(path: &str, message: &str, is_data_error: bool) -> Option<String> {
    if !is_data_error {
        return None;
    }
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    match (path, missing) {
        (".", Some(name)) => Some(name.to_owned()),
        (parent, Some(name)) => Some(format!("{parent}.{name}")),
        (".", None) => None,
        (path, None) => Some(path.to_owned()),
    }
}

pub(crate) fn bytes_error(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge {
            message: "the request body is too large".into(),
        }
    } else {
        ApiError::InvalidBody {
            message: rejection.body_text(),
            field: None,
        }
    }
}

/// `application/json` or `application/<anything>+json`, with any parameters.
fn is_json_content_type(value: &str) -> bool {
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::extract::DefaultBodyLimit;
    use axum::routing::post;
    use proptest::prelude::*;
    use serde_json::Value;
    use tower::ServiceExt;

    use super::*;
    use crate::agents::model::{AgentCreate, AgentPatch, AgentToolUpsert};
    use crate::knowledge::model::PlaybookCreate;

    const BODY_LIMIT: usize = 4096;

    /// Handlers that only extract a body, behind a small body limit, as the real routes are.
    fn app() -> Router {
        async fn take<T>(Json(_): Json<T>) -> &'static str {
            "parsed"
        }
        Router::new()
            .route("/agent", post(take::<AgentCreate>))
            .route("/agent-patch", post(take::<AgentPatch>))
            .route("/tool", post(take::<AgentToolUpsert>))
            .route("/playbook", post(take::<PlaybookCreate>))
            .route("/value", post(take::<Value>))
            .layer(DefaultBodyLimit::max(BODY_LIMIT))
    }

    /// The status and error code of one request (`parsed` when the body was taken).
    fn send(path: &str, content_type: Option<&[u8]>, body: Vec<u8>) -> (u16, String) {
        let mut request = Request::post(path);
        if let Some(content_type) = content_type {
            request = request.header(CONTENT_TYPE, content_type);
        }
        let request = request.body(Body::from(body)).unwrap();
        futures::executor::block_on(async {
            let response = app().oneshot(request).await.unwrap();
            let status = response.status().as_u16();
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            let code = match serde_json::from_slice::<Value>(&bytes) {
                Ok(body) => body["error"]["code"]
                    .as_str()
                    .unwrap_or("<none>")
                    .to_owned(),
                Err(_) => String::from_utf8_lossy(&bytes).into_owned(),
            };
            (status, code)
        })
    }

    const FIELDS: &[&str] = &[
        "name",
        "description",
        "category",
        "status",
        "system_prompt",
        "greeting_mode",
        "llm_model",
        "voice_id",
        "background_audio_volume",
        "ringing_enabled",
        "template_id",
        "tool_name",
        "config",
        "enabled",
        "display_name",
        "tags",
        "tool_names",
    ];

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            any::<String>().prop_map(Value::from),
            "[a-z_\0-]{0,12}".prop_map(Value::from),
            Just(Value::from("00000000-0000-0000-0000-000000000000")),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(
                    prop_oneof![
                        proptest::sample::select(FIELDS).prop_map(str::to_owned),
                        ".{0,8}"
                    ],
                    inner,
                    0..6
                )
                .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    /// Bodies: mostly JSON objects with the API's field names (some cut short, some with a
    /// byte changed, some with numbers no `f64` holds), and arbitrary bytes.
    fn body() -> impl Strategy<Value = Vec<u8>> {
        let object = proptest::collection::btree_map(
            proptest::sample::select(FIELDS).prop_map(str::to_owned),
            json_value(),
            0..8,
        )
        .prop_map(|map| serde_json::to_vec(&Value::Object(map.into_iter().collect())).unwrap())
        .boxed();
        prop_oneof![
            4 => object.clone(),
            2 => (object.clone(), any::<prop::sample::Index>(), any::<u8>(), 0..4u8).prop_map(
                |(mut bytes, at, byte, edit)| {
                    let i = at.index(bytes.len());
                    match edit {
                        0 => bytes.truncate(i),
                        1 => bytes[i] = byte,
                        2 => bytes.insert(i, byte),
                        _ => {
                            let tail = bytes.split_off(i);
                            bytes.extend_from_slice(br#""x":1e400,"y":-1e999,"z":"\u0000","#);
                            bytes.extend(tail);
                        }
                    }
                    bytes
                }
            ),
            1 => (object, 1..8usize).prop_map(|(bytes, n)| bytes.repeat(n * 200)),
            1 => proptest::collection::vec(any::<u8>(), 0..200),
            1 => proptest::collection::vec(any::<u8>(), 0..200).prop_map(|mut b| {
                b.insert(0, b'{');
                b
            }),
            1 => (1..200usize).prop_map(|depth| {
                let mut b = "{\"config\":".to_owned() + &"[".repeat(depth);
                b.push_str(&"]".repeat(depth));
                b.push('}');
                b.into_bytes()
            }),
        ]
    }

    fn content_type() -> impl Strategy<Value = Option<Vec<u8>>> {
        prop_oneof![
            6 => Just(Some(b"application/json".to_vec())),
            1 => Just(Some(b"Application/JSON; charset=utf-8".to_vec())),
            1 => Just(Some(b"application/merge-patch+json".to_vec())),
            1 => Just(Some(b"text/plain".to_vec())),
            1 => Just(None),
            1 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Some),
        ]
        .prop_filter("a valid header value", |ct| {
            ct.as_ref()
                .is_none_or(|ct| axum::http::HeaderValue::from_bytes(ct).is_ok())
        })
    }

    proptest! {
        #![proptest_config(crate::proptest_config::config(2048))]

        /// Whatever the body and content type, the answer is the body taken, 400
        /// `invalid_body` or 413 `payload_too_large`: never a 500, never another code.
        #[test]
        fn any_body_is_taken_or_refused_with_a_documented_code(
            path in proptest::sample::select(vec!["/agent", "/agent-patch", "/tool", "/playbook", "/value"]),
            content_type in content_type(),
            body in body(),
        ) {
            let too_large = body.len() > BODY_LIMIT;
            let (status, code) = send(path, content_type.as_deref(), body);
            match status {
                200 => prop_assert_eq!(code.as_str(), "parsed"),
                400 => prop_assert_eq!(code.as_str(), "invalid_body"),
                413 => {
                    prop_assert_eq!(code.as_str(), "payload_too_large");
                    prop_assert!(too_large);
                }
                other => prop_assert!(false, "status {} ({})", other, code),
            }
        }
    }
}
