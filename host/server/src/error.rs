//! The server's one error type and how it becomes an HTTP answer.
//!
//! Every error is answered as JSON `{"error": "<message>"}`. Messages of client
//! errors name the object and what to do; server errors are logged in full and
//! answered with a generic message, so no SQL or file path reaches a client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use posup_proto::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Missing or unknown token.
    #[error("{0}")]
    Unauthorized(String),
    /// A token whose role may not do this.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed (bad JSON, bad query string).
    #[error("{0}")]
    BadRequest(String),
    /// The request is well-formed but refers to something that does not exist or
    /// breaks a rule.
    #[error("{0}")]
    Invalid(String),
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    /// A `Range` outside the blob.
    #[error("range not satisfiable: the file has {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    /// Something failed inside the server; the detail is logged, not answered.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn status_code(&self) -> StatusCode {
        match self {
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// An internal failure: logged with its detail, answered without it.
    pub fn internal(context: &str, detail: impl std::fmt::Display) -> Error {
        tracing::error!("{context}: {detail}");
        Error::Internal(format!("{context}; the server log has the details"))
    }
}

impl From<posup_store::Error> for Error {
    fn from(e: posup_store::Error) -> Self {
        match e {
            posup_store::Error::NotFound(m) => Error::NotFound(m),
            posup_store::Error::Conflict(m) => Error::Conflict(m),
            posup_store::Error::Invalid(m) => Error::Invalid(m),
            posup_store::Error::Unauthorized(m) => Error::Unauthorized(m),
            posup_store::Error::Forbidden(m) => Error::Forbidden(m),
            other => Error::internal("the database failed", other),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let mut response = (
            status,
            axum::Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response();
        match &self {
            Error::Unauthorized(_) => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Error::RangeNotSatisfiable { size } => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    response.headers_mut().insert(header::CONTENT_RANGE, v);
                }
            }
            _ => {}
        }
        response
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
