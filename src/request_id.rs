//! Request ids: every response carries `X-Request-Id`.
//!
//! A well-formed incoming id (1–128 visible ASCII characters from a safe set) is echoed;
//! otherwise a UUID v7 is generated. The id is also kept in a task-local so that error bodies
//! and log lines can name it without threading it through every function.

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being served by this task, if any.
pub fn current() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// The request id stored in request extensions by [`middleware`].
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

fn is_acceptable(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'+' | b'=')
        })
}

pub async fn middleware(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_acceptable(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let header = HeaderValue::from_str(&id).expect("request id is visible ASCII");
    let mut response = REQUEST_ID.scope(id, next.run(req)).await;
    response.headers_mut().insert(X_REQUEST_ID.clone(), header);
    response
}

#[cfg(test)]
mod tests {
    use super::is_acceptable;

    #[test]
    fn request_id_syntax() {
        assert!(is_acceptable("abc-123"));
        assert!(is_acceptable(&"a".repeat(128)));
        assert!(!is_acceptable(&"a".repeat(129)));
        assert!(!is_acceptable(""));
        assert!(!is_acceptable("has space"));
        assert!(!is_acceptable("semi;colon"));
        assert!(!is_acceptable("\u{e9}"));
    }
}
