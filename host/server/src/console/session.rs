//! Console logins: argon2id passwords, session cookies and the CSRF token every
//! form carries.
//!
//! A session is a random cookie (`HttpOnly`, `SameSite=Strict`, `Secure` under
//! TLS); the database keeps only its sha256. Each session has its own CSRF token,
//! written into every form and compared before a form is read, so a page of
//! another site cannot act with an operator's cookie even where `SameSite` is not
//! honoured.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use posup_proto::api::Role;
use posup_store::SessionAccount;
use rand::RngCore;

use super::Fail;
use crate::auth::{hash_secret, new_secret};
use crate::state::AppState;

/// The session cookie's name.
pub const COOKIE: &str = "posup_session";
/// How long a login lasts: a night shift and some.
pub const SESSION_MS: i64 = 12 * 60 * 60 * 1000;

/// Hashes a password with argon2id (the crate's defaults: 19 MiB, 2 passes).
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))
}

/// Whether `password` matches the stored hash. A damaged hash matches nothing.
pub fn password_matches(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored)
        .map(|hash| {
            Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash no password matches, checked when a login names no account, so such a
/// login costs as long as one with a wrong password and tells nobody which names
/// exist.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password(&new_secret("decoy_")).expect("hashing a random decoy"))
}

/// A new session cookie and its CSRF token.
pub fn new_session() -> (String, String) {
    (new_secret("pss_"), new_secret(""))
}

/// The `Set-Cookie` value that carries a session.
pub fn cookie(token: &str, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        SESSION_MS / 1000
    ))
    .expect("a session token is a valid header value")
}

/// The `Set-Cookie` value that ends a session in the browser.
pub fn expired_cookie() -> HeaderValue {
    HeaderValue::from_static("posup_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// The value of the cookie `name` a request carries; `None` when absent or empty.
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value)
        .filter(|v| !v.is_empty())
}

/// The session cookie of a request.
pub fn token(headers: &HeaderMap) -> Option<&str> {
    cookie_value(headers, COOKIE)
}

/// [`password_matches`] off the request threads: argon2 takes tens of
/// milliseconds of CPU.
pub async fn password_matches_in_background(
    password: String,
    stored: String,
) -> Result<bool, Fail> {
    tokio::task::spawn_blocking(move || password_matches(&password, &stored))
        .await
        .map_err(|e| Fail::Internal(e.into()))
}

/// The operator of a console request: a live session.
#[derive(Debug, Clone)]
pub struct Session {
    pub account: SessionAccount,
    /// The sha256 of the cookie: what logging out deletes.
    hash: String,
}

impl Session {
    /// Viewers see; operators and administrators act.
    pub fn can_act(&self) -> bool {
        matches!(self.account.role, Role::Admin | Role::Operator)
    }

    pub fn is_admin(&self) -> bool {
        self.account.role == Role::Admin
    }

    /// Refuses with 403 unless the account may act.
    pub fn require_act(&self) -> Result<(), Fail> {
        if self.can_act() {
            Ok(())
        } else {
            Err(Fail::Forbidden)
        }
    }

    pub fn require_admin(&self) -> Result<(), Fail> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(Fail::Forbidden)
        }
    }

    /// The sha256 of this session's cookie.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// Ends this session in the database.
    pub async fn end(&self, state: &AppState) -> Result<(), Fail> {
        Ok(state.store().end_session(&self.hash).await?)
    }

    /// How the audit log names this operator.
    pub fn actor(&self) -> String {
        format!("account {}", self.account.name)
    }
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Fail;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Fail> {
        let Some(token) = token(&parts.headers) else {
            return Err(Fail::LogIn);
        };
        let hash = hash_secret(token);
        let account = state.store().session(&hash, state.now_ms()).await?;
        account
            .map(|account| Session { account, hash })
            .ok_or(Fail::LogIn)
    }
}

/// A form posted by a session: the session, checked CSRF token, and the fields.
/// The fields arrive as text; each page checks them and says in words what is
/// wrong, so no parser's message reaches a person.
#[derive(Debug)]
pub struct Posted {
    pub session: Session,
    pub fields: Vec<(String, String)>,
}

/// A form's fields, as text. No browser sends a NUL character and PostgreSQL
/// stores none, so a form with one is refused like one that does not parse.
pub(crate) fn form_fields(body: &[u8]) -> Result<Vec<(String, String)>, Fail> {
    let fields: Vec<(String, String)> =
        serde_urlencoded::from_bytes(body).map_err(|_| Fail::BadForm)?;
    if fields
        .iter()
        .any(|(name, value)| name.contains('\0') || value.contains('\0'))
    {
        return Err(Fail::BadForm);
    }
    Ok(fields)
}

/// Largest form body: a form has a handful of short fields.
const MAX_FORM: usize = 64 * 1024;

impl FromRequest<AppState> for Posted {
    type Rejection = Fail;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Fail> {
        let (mut parts, body) = request.into_parts();
        let session = Session::from_request_parts(&mut parts, state).await?;
        let bytes = axum::body::to_bytes(body, MAX_FORM)
            .await
            .map_err(|_| Fail::BadForm)?;
        let fields = form_fields(&bytes)?;
        let sent = fields
            .iter()
            .find(|(name, _)| name == "csrf")
            .map(|(_, v)| v.as_str())
            .unwrap_or_default();
        if !same(sent.as_bytes(), session.account.csrf.as_bytes()) {
            return Err(Fail::Csrf);
        }
        Ok(Posted { session, fields })
    }
}

impl Posted {
    /// The field `name`, trimmed; empty when absent.
    pub fn field(&self, name: &str) -> &str {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.trim())
            .unwrap_or_default()
    }

    /// Every value of a field that repeats (checkboxes).
    pub fn all(&self, name: &str) -> impl Iterator<Item = &str> {
        self.fields
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Compares secrets in time independent of where they differ.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_argon2id_and_checked() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(password_matches("correct horse", &hash));
        assert!(!password_matches("correct hors", &hash));
        assert!(!password_matches("correct horse", "not a hash"));
        assert!(!password_matches("", decoy_hash()));
    }

    #[test]
    fn a_form_with_a_nul_character_is_refused() {
        let fields = form_fields(b"name=Pilot+1&csrf=x").unwrap();
        assert_eq!(fields[0], ("name".to_owned(), "Pilot 1".to_owned()));
        assert!(matches!(
            form_fields(b"name=Pilot%00&csrf=x"),
            Err(Fail::BadForm)
        ));
        assert!(matches!(
            form_fields(b"na%00me=Pilot&csrf=x"),
            Err(Fail::BadForm)
        ));
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("theme=dark; posup_session=pss_abc; other=1"),
        );
        assert_eq!(token(&headers), Some("pss_abc"));
        headers.insert(header::COOKIE, HeaderValue::from_static("posup_session="));
        assert_eq!(token(&headers), None);
        let set = cookie("pss_abc", true);
        let set = set.to_str().unwrap();
        for part in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
            assert!(set.contains(part), "{set}");
        }
        assert!(!cookie("x", false).to_str().unwrap().contains("Secure"));
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
        assert!(!same(b"", b"a"));
    }
}
