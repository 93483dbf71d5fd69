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

fn bytes_error(rejection: BytesRejection) -> ApiError {
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
