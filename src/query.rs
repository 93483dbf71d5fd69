//! A query-string extractor whose rejections are our JSON errors (`invalid_query`, naming the
//! parameter) instead of axum's plain-text ones.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::json::field_of;

pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        if form_urlencoded_parse(query).any(|(k, v)| k.contains('\0') || v.contains('\0')) {
            return Err(ApiError::InvalidQuery {
                message: "query parameters must not contain U+0000".into(),
                field: None,
            });
        }
        let de = serde_urlencoded::Deserializer::new(form_urlencoded_parse(query));
        serde_path_to_error::deserialize(de)
            .map(Query)
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner().to_string();
                let field = field_of(&path, &inner, true);
                ApiError::InvalidQuery {
                    message: match &field {
                        Some(f) => format!("invalid query parameter `{f}`: {inner}"),
                        None => format!("invalid query: {inner}"),
                    },
                    field,
                }
            })
    }
}

fn form_urlencoded_parse(query: &str) -> url::form_urlencoded::Parse<'_> {
    url::form_urlencoded::parse(query.as_bytes())
}
