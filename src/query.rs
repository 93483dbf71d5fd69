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

#[cfg(test)]
mod tests {
    use axum::http::{Request, Uri};
    use axum::response::IntoResponse;
    use proptest::prelude::*;

    use super::*;
    use crate::model::ListQuery;
    use crate::widget::routes::ConfigQuery;

    fn extract<T: DeserializeOwned>(uri: &Uri) -> Result<T, ApiError> {
        let (mut parts, ()) = Request::get(uri.clone()).body(()).unwrap().into_parts();
        futures::executor::block_on(Query::<T>::from_request_parts(&mut parts, &())).map(|q| q.0)
    }

    /// A refusal is 400 `invalid_query`, and answers as such.
    fn assert_invalid_query(error: ApiError) -> Result<(), TestCaseError> {
        prop_assert!(
            matches!(error, ApiError::InvalidQuery { .. }),
            "{:?}",
            error
        );
        prop_assert_eq!(error.code(), "invalid_query");
        prop_assert_eq!(error.into_response().status().as_u16(), 400);
        Ok(())
    }

    /// Query strings: the real parameters with odd values, percent-encoded arbitrary bytes
    /// (U+0000 and invalid UTF-8 included), and arbitrary characters a URI may hold.
    fn query() -> impl Strategy<Value = String> {
        let name = prop_oneof![
            proptest::sample::select(vec![
                "limit",
                "offset",
                "category",
                "search",
                "client_key",
                "agent_id",
            ])
            .prop_map(str::to_owned),
            "[a-z%0-9]{0,6}",
        ];
        let value = prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            Just("99999999999999999999999".to_owned()),
            Just("1.5".to_owned()),
            Just("-0".to_owned()),
            Just("%00".to_owned()),
            Just("00000000-0000-0000-0000-000000000000".to_owned()),
            proptest::collection::vec(any::<u8>(), 0..20)
                .prop_map(|bytes| url::form_urlencoded::byte_serialize(&bytes).collect()),
            "[!$&'()*+,;=:@/?a-zA-Z0-9._~%-]{0,20}",
        ];
        prop_oneof![
            4 => proptest::collection::vec((name, value), 0..6).prop_map(|pairs| {
                pairs
                    .into_iter()
                    .map(|(n, v)| format!("{n}={v}"))
                    .collect::<Vec<_>>()
                    .join("&")
            }),
            1 => "[!$&'()*+,;=:@/?a-zA-Z0-9._~%-]{0,60}",
        ]
    }

    proptest! {
        #![proptest_config(crate::proptest_config::config(4096))]

        /// Any query string gives the parameters or 400 `invalid_query` (with the list
        /// parameters' range checks too): never a 500, never another code.
        #[test]
        fn any_query_is_read_or_refused_with_a_documented_code(query in query()) {
            let Ok(uri) = format!("/api/v1/agents?{query}").parse::<Uri>() else {
                // Not a URI: the HTTP layer refuses it before any extractor runs.
                return Ok(());
            };
            match extract::<ListQuery>(&uri) {
                Ok(list) => {
                    if let Err(error) = list.validate() {
                        assert_invalid_query(error)?;
                    }
                }
                Err(error) => assert_invalid_query(error)?,
            }
            if let Err(error) = extract::<ConfigQuery>(&uri) {
                assert_invalid_query(error)?;
            }
        }
    }
}
