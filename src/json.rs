//! A JSON body extractor whose rejections are our JSON errors (`invalid_body`, naming the
//! problem and the field) instead of axum's plain-text ones.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
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
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(body_error(rejection)),
        }
    }
}

fn body_error(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(e) => ApiError::InvalidBody {
            // serde's message names the field: "missing field `name` at line 1 column 2".
            message: format!("invalid body: {}", source_message(&e)),
        },
        JsonRejection::JsonSyntaxError(e) => ApiError::InvalidBody {
            message: format!("malformed JSON: {}", source_message(&e)),
        },
        JsonRejection::MissingJsonContentType(_) => ApiError::InvalidBody {
            message: "expected `Content-Type: application/json`".into(),
        },
        JsonRejection::BytesRejection(e)
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE =>
        {
            ApiError::PayloadTooLarge {
                message: "the request body is too large".into(),
            }
        }
        other => ApiError::InvalidBody {
            message: other.body_text(),
        },
    }
}

/// The innermost error message (serde's, without axum's prefix).
fn source_message(e: &(dyn std::error::Error + 'static)) -> String {
    let mut current = e;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}
