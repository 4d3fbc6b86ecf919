//! JSON request bodies, bounded in size and in time: every body this listener reads comes
//! through these extractors.
//!
//! - A declared `Content-Length` over 64 KiB is refused before anything is read, a longer body
//!   as soon as it passes the limit (413 BODY_TOO_LARGE).
//! - The whole body must arrive within 30 s of the handler asking for it (408 BODY_TIMEOUT,
//!   and the connection is closed): a `Content-Length` with no body, or a trickle, cannot hold
//!   a handler.
//! - Not JSON is 400 MALFORMED_JSON; JSON of the wrong shape is 400 INVALID_REQUEST.

use std::time::Duration;

use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::http::header::CONTENT_LENGTH;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;

use super::api_error::ApiError;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest a request body may take to arrive, from the moment the handler reads it.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// A JSON body of type `T`.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

/// A JSON body of type `T`, where an empty (or all-whitespace) body reads as `{}`.
#[derive(Debug)]
pub struct JsonBodyOrEmpty<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, _: &S) -> Result<Self, ApiError> {
        read_json(request, false).await.map(Self)
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBodyOrEmpty<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, _: &S) -> Result<Self, ApiError> {
        read_json(request, true).await.map(Self)
    }
}

/// Reads a bounded JSON body. `empty_ok`: an empty body reads as `{}`.
async fn read_json<T: DeserializeOwned>(request: Request, empty_ok: bool) -> Result<T, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "BODY_TOO_LARGE",
            format!(
                "request bodies are limited to {} KiB",
                MAX_BODY_BYTES / 1024
            ),
        )
    };
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let collected = Limited::new(request.into_body(), MAX_BODY_BYTES).collect();
    let body = tokio::time::timeout(BODY_TIMEOUT, collected)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "BODY_TIMEOUT",
                format!(
                    "the request body did not arrive within {} s",
                    BODY_TIMEOUT.as_secs()
                ),
            )
            .closing()
        })?
        .map_err(|error| {
            if error.is::<LengthLimitError>() {
                too_large()
            } else {
                ApiError::bad_request("MALFORMED_REQUEST", "the request body could not be read")
            }
        })?
        .to_bytes();
    let body: &[u8] = if empty_ok && body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &body
    };
    serde_json::from_slice(body).map_err(|error| match error.classify() {
        serde_json::error::Category::Data => {
            ApiError::bad_request("INVALID_REQUEST", format!("invalid request: {error}"))
        }
        _ => ApiError::bad_request(
            "MALFORMED_JSON",
            format!("the request body is not valid JSON: {error}"),
        ),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::convert::Infallible;

    use axum::body::{Body, Bytes};
    use axum::response::IntoResponse;
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use serde_json::Value;

    use super::*;

    fn request(body: Body, content_length: Option<u64>) -> Request {
        let mut request = Request::post("/v1/login/begin");
        if let Some(length) = content_length {
            request = request.header(CONTENT_LENGTH, length);
        }
        request.body(body).unwrap()
    }

    async fn refusal<T: DeserializeOwned + std::fmt::Debug>(
        request: Request,
        empty_ok: bool,
    ) -> (u16, String) {
        let error = read_json::<T>(request, empty_ok)
            .await
            .unwrap_err()
            .into_response();
        let status = error.status().as_u16();
        let body = error.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&body).unwrap();
        (status, body["error"]["code"].as_str().unwrap().to_owned())
    }

    #[tokio::test]
    async fn bodies_are_json_of_the_right_shape_and_size() {
        let empty = read_json::<Value>(request(Body::from("  "), None), true);
        assert_eq!(empty.await.unwrap(), serde_json::json!({}));
        assert_eq!(
            refusal::<Value>(request(Body::empty(), None), false).await,
            (400, "MALFORMED_JSON".into())
        );
        assert_eq!(
            refusal::<Value>(request(Body::from("{not json"), None), true).await,
            (400, "MALFORMED_JSON".into())
        );
        assert_eq!(
            refusal::<Vec<u8>>(request(Body::from("{}"), None), false).await,
            (400, "INVALID_REQUEST".into())
        );
        let declared = request(Body::empty(), Some(MAX_BODY_BYTES as u64 + 1));
        assert_eq!(
            refusal::<Value>(declared, true).await,
            (413, "BODY_TOO_LARGE".into())
        );
        let undeclared = request(Body::from(vec![b' '; MAX_BODY_BYTES + 1]), None);
        assert_eq!(
            refusal::<Value>(undeclared, true).await,
            (413, "BODY_TOO_LARGE".into())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_never_comes_times_out() {
        let never = StreamBody::new(tokio_stream::pending::<Result<Frame<Bytes>, Infallible>>());
        let started = tokio::time::Instant::now();
        let response = read_json::<Value>(request(Body::new(never), Some(10)), false)
            .await
            .unwrap_err()
            .into_response();
        assert_eq!(started.elapsed(), BODY_TIMEOUT);
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(response.headers()["connection"], "close");
    }
}
