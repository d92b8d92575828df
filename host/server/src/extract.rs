//! Extractors that answer malformed requests with the server's JSON error instead
//! of axum's plain-text rejections.

use std::borrow::Cow;

use axum::extract::FromRequest;
use axum::extract::FromRequestParts;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::error::Error;

/// A JSON body. A NUL character in one of its texts, which PostgreSQL cannot
/// store, is refused (422) before anything is written.
#[derive(Debug)]
pub struct Json<T>(pub T);

/// A JSON body from a device. A NUL character in one of its texts arrives as
/// U+FFFD: a product's text is kept as closely as the database allows, and a
/// report or an inventory is never lost over one character.
#[derive(Debug)]
pub struct DeviceJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = Error;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Error> {
        let raw = raw_json(req, state).await?;
        if nul_escapes(raw.get().as_bytes()).next().is_some() {
            return Err(Error::Invalid(
                "the JSON body holds a NUL character (\\u0000) in a text, which posup cannot store: \
                 send the text without it"
                    .into(),
            ));
        }
        parse(raw.get().as_bytes()).map(Json)
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for DeviceJson<T> {
    type Rejection = Error;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Error> {
        let raw = raw_json(req, state).await?;
        parse(&without_nul(raw.get().as_bytes())).map(DeviceJson)
    }
}

/// The body, checked as axum's `Json` checks it (its content type, its size,
/// its syntax), as text.
async fn raw_json<S: Send + Sync>(
    req: axum::extract::Request,
    state: &S,
) -> Result<Box<RawValue>, Error> {
    let axum::Json(raw) = axum::Json::<Box<RawValue>>::from_request(req, state).await?;
    Ok(raw)
}

fn parse<T: DeserializeOwned>(json: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(json)
        .map_err(|e| Error::Invalid(format!("the JSON body is not accepted: {e}")))
}

/// Where JSON text writes a NUL character: the offset of the `u` of each
/// `\u0000` escape, the only way JSON has to write one, that follows an odd
/// run of backslashes (an even run is escaped backslashes, and `u0000` after
/// it plain text).
pub(crate) fn nul_escapes(json: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        while let Some(found) = json[at..].iter().position(|b| *b == b'\\') {
            let start = at + found;
            let run = json[start..].iter().take_while(|b| **b == b'\\').count();
            at = start + run;
            if run % 2 == 1 && json[at..].starts_with(b"u0000") {
                return Some(at);
            }
        }
        None
    })
}

/// JSON text with each NUL character of its texts written as U+FFFD, the
/// same length; unchanged, and not copied, when it has none.
pub(crate) fn without_nul(json: &[u8]) -> Cow<'_, [u8]> {
    let mut found = nul_escapes(json).peekable();
    if found.peek().is_none() {
        return Cow::Borrowed(json);
    }
    let mut out = json.to_vec();
    for u in found {
        out[u..u + 5].copy_from_slice(b"ufffd");
    }
    Cow::Owned(out)
}

/// A query string.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(Error))]
pub struct Query<T>(pub T);

/// Path parameters.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(Error))]
pub struct Path<T>(pub T);

impl From<JsonRejection> for Error {
    fn from(r: JsonRejection) -> Self {
        let message = format!("the JSON body is not accepted: {}", r.body_text());
        // Well-formed JSON of the wrong shape (a missing or mistyped field) is 422,
        // like every other invalid input; anything else is 400.
        if r.status() == axum::http::StatusCode::UNPROCESSABLE_ENTITY {
            Error::Invalid(message)
        } else {
            Error::BadRequest(message)
        }
    }
}

impl From<QueryRejection> for Error {
    fn from(r: QueryRejection) -> Self {
        Error::BadRequest(format!(
            "the query string is not accepted: {}",
            r.body_text()
        ))
    }
}

impl From<PathRejection> for Error {
    fn from(r: PathRejection) -> Self {
        Error::NotFound(format!("no such object: {}", r.body_text()))
    }
}

impl<T: serde::Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

/// The address a request came from: the peer of the connection it arrived
/// on, recorded by [`crate::run_with_state`]. A router driven without
/// connections (tests through `oneshot`) has none unless the request carries
/// one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub std::net::SocketAddr);

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, crate::tls::TlsListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, crate::tls::TlsListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// The client's IP address, where the server knows it.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<PeerAddr>>()
                .map(|c| c.0.0.ip()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn only_an_escape_that_is_one_is_a_nul() {
        let nul = |json: &str| nul_escapes(json.as_bytes()).collect::<Vec<_>>();
        assert_eq!(nul(r#"{"v": "23.\u0000"}"#), [11]);
        assert_eq!(
            nul(r#"{"v": "23.\\u0000"}"#),
            [] as [usize; 0],
            "a backslash, then text"
        );
        assert_eq!(nul(r#"{"v": "\\\u0000 \u0000"}"#), [10, 17]);
        assert_eq!(nul(r#"{"v": "\u00001"}"#), [8]);
        assert_eq!(nul(r#"{"v": "\u0001 \\"}"#), [] as [usize; 0]);
        assert_eq!(nul("\\"), [] as [usize; 0], "a run to the end");
    }

    proptest! {
        /// Whatever a text holds, JSON of it reads back as the same text with
        /// each NUL as U+FFFD, and holds a NUL escape exactly when the text
        /// holds a NUL.
        #[test]
        fn a_nul_becomes_u_fffd_and_nothing_else_changes(text in "(\\PC|\\\\|\\\\u0000|\\u{0}|u0000)*") {
            let json = serde_json::to_string(&text).unwrap();
            prop_assert_eq!(nul_escapes(json.as_bytes()).next().is_some(), text.contains('\0'));
            let back: String = serde_json::from_slice(&without_nul(json.as_bytes())).unwrap();
            prop_assert_eq!(back, text.replace('\0', "\u{FFFD}"));
        }
    }
}
