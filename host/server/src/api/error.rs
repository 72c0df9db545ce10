//! API errors: one type, one JSON shape (`{"code", "message"}`), one `recover`.

use serde::Serialize;
use std::convert::Infallible;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Rejection, Reply};

/// The body of every error response.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A stable, machine-readable code (`unauthorized`, `not_found`, `invalid_plugin`, …).
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
}

/// An error a handler returns. It becomes a rejection, and [`recover`] turns it into a JSON
/// response with its status.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// See [`ErrorBody::code`].
    pub code: &'static str,
    /// See [`ErrorBody::message`].
    pub message: String,
    /// Seconds for a `Retry-After` header (429).
    pub retry_after: Option<u64>,
}

impl warp::reject::Reject for ApiError {}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    /// 401.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid API key is required: `Authorization: Bearer <key>`",
        )
    }
    /// 403: the caller is authenticated but this needs the admin key. Only for admin
    /// routes, whose existence is public; a tenant's objects are never 403.
    pub fn admin_only() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "admin_only",
            "this needs the admin key",
        )
    }
    /// 403 `quota_exceeded`: the tenant reached one of its quotas (the message names it).
    pub fn quota_exceeded(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "quota_exceeded", message)
    }
    /// 404.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", what)
    }
    /// 409.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    /// 413.
    pub fn too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than the limit of {limit} bytes"),
        )
    }
    /// 422.
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }
    /// 429 with `Retry-After`.
    pub fn rate_limited(what: &str, retry_after: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after.max(1)),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many {what}; retry in {} s", retry_after.max(1)),
            )
        }
    }
    /// 500, with the cause logged and a generic message returned.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {e}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error (see the server log)",
        )
    }
    /// 503.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// The JSON response.
    pub fn response(&self) -> Response {
        let body = ErrorBody {
            code: self.code.to_owned(),
            message: self.message.clone(),
        };
        let mut r = warp::reply::with_status(warp::reply::json(&body), self.status).into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = warp::http::HeaderValue::from_str(&s.to_string())
        {
            r.headers_mut().insert(warp::http::header::RETRY_AFTER, v);
        }
        r
    }
}

impl From<weir_store::StoreError> for ApiError {
    fn from(e: weir_store::StoreError) -> Self {
        match e {
            weir_store::StoreError::Conflict(m) => ApiError::conflict(m),
            e => ApiError::internal(e),
        }
    }
}

/// The one `recover`: every rejection, ours or warp's, becomes `{code, message}`.
pub async fn recover(r: Rejection) -> Result<Response, Infallible> {
    use warp::reject;
    let e = if let Some(e) = r.find::<ApiError>() {
        e.clone()
    } else if r.is_not_found() {
        ApiError::not_found("no such route")
    } else if let Some(e) = r.find::<reject::PayloadTooLarge>() {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            e.to_string(),
        )
    } else if let Some(e) = r.find::<reject::LengthRequired>() {
        ApiError::new(
            StatusCode::LENGTH_REQUIRED,
            "length_required",
            e.to_string(),
        )
    } else if let Some(e) = r.find::<reject::InvalidQuery>() {
        ApiError::bad_request(format!("invalid query string: {e}"))
    } else if let Some(e) = r.find::<reject::InvalidHeader>() {
        ApiError::bad_request(e.to_string())
    } else if let Some(e) = r.find::<reject::MissingHeader>() {
        ApiError::bad_request(e.to_string())
    } else if let Some(e) = r.find::<reject::UnsupportedMediaType>() {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            e.to_string(),
        )
    } else if let Some(e) = r.find::<reject::MethodNotAllowed>() {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            e.to_string(),
        )
    } else {
        ApiError::internal(format!("unhandled rejection: {r:?}"))
    };
    Ok(e.response())
}
