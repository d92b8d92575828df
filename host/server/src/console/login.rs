//! Logging in and out, and an operator's own preferences (language, time zone).

use askama::Template;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use posup_proto::api::Language;
use posup_store::Failure;

use super::session::{self, Posted};
use super::{Fail, Tr, When, render};
use crate::auth::hash_secret;
use crate::extract::ClientIp;
use crate::state::AppState;

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    tr: Tr,
    /// What went wrong with the last attempt, in words.
    error: Option<String>,
    name: String,
    /// The form's token, also set as the `posup_login` cookie: a login posted from
    /// another site's page has the cookie but cannot know the token, so nobody can
    /// sign a browser into an account of theirs.
    token: String,
}

/// The login form's cookie.
const LOGIN_COOKIE: &str = "posup_login";

/// The login page with a fresh token in the form and in its cookie.
fn login_page(
    state: &AppState,
    tr: Tr,
    error: Option<String>,
    name: String,
    status: axum::http::StatusCode,
) -> Result<Response, Fail> {
    let token = crate::auth::new_secret("");
    let mut response = render(&LoginPage {
        tr,
        error,
        name,
        token: token.clone(),
    })?;
    *response.status_mut() = status;
    let secure = if state.settings().secure_cookies {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{LOGIN_COOKIE}={token}; Path=/login; HttpOnly; SameSite=Strict; Max-Age=3600{secure}"
    );
    response.headers_mut().insert(
        header::SET_COOKIE,
        cookie
            .parse()
            .map_err(|e| Fail::Internal(anyhow::anyhow!("login cookie: {e}")))?,
    );
    Ok(response)
}

/// The language of a visitor who has not logged in: the browser's first choice
/// among the console's languages.
fn visitor_language(headers: &HeaderMap) -> Language {
    let accept = headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    accept
        .split(',')
        .filter_map(|part| part.split(';').next())
        .filter_map(|tag| Language::parse(tag.trim().split('-').next().unwrap_or_default()))
        .next()
        .unwrap_or_default()
}

pub async fn form(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, Fail> {
    let tr = Tr::new(visitor_language(&headers));
    login_page(&state, tr, None, String::new(), axum::http::StatusCode::OK)
}

/// The fields of a login form; absent ones are empty.
struct Credentials {
    name: String,
    password: String,
    token: String,
}

impl Credentials {
    fn parse(body: &[u8]) -> Result<Credentials, Fail> {
        let fields = super::session::form_fields(body)?;
        let field = |n: &str| {
            fields
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        Ok(Credentials {
            name: field("name"),
            password: field("password"),
            token: field("token"),
        })
    }
}

pub async fn submit(
    State(state): State<AppState>,
    ClientIp(client): ClientIp,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Fail> {
    let form = Credentials::parse(&body)?;
    let tr = Tr::new(visitor_language(&headers));
    let now = state.now_ms();
    // An address that keeps failing is refused before any password is hashed.
    if let Some(ip) = client
        && let Err(until) = state.login_throttle().check(ip, now)
    {
        let until = When::new(
            chrono::DateTime::from_timestamp_millis(until).unwrap_or_default(),
            "UTC",
        );
        return login_page(
            &state,
            tr,
            Some(tr.t1("login-throttled", "until", until.shown + " UTC")),
            form.name,
            axum::http::StatusCode::TOO_MANY_REQUESTS,
        );
    }
    let failed = || {
        if let Some(ip) = client {
            state.login_throttle().failed(ip, now);
        }
    };
    let refuse = |error: String, name: String| {
        login_page(
            &state,
            tr,
            Some(error),
            name,
            axum::http::StatusCode::UNAUTHORIZED,
        )
    };
    let cookie = session::cookie_value(&headers, LOGIN_COOKIE).unwrap_or_default();
    if cookie.is_empty() || !session::same(cookie.as_bytes(), form.token.as_bytes()) {
        return login_page(
            &state,
            tr,
            Some(tr.t("login-stale")),
            form.name,
            axum::http::StatusCode::FORBIDDEN,
        );
    }
    let account = state.store().account_for_login(form.name.trim()).await?;
    if let Some(a) = &account
        && a.locked_until > now
    {
        let until = When::new(
            chrono::DateTime::from_timestamp_millis(a.locked_until).unwrap_or_default(),
            "UTC",
        );
        return refuse(
            tr.t1("login-locked", "until", until.shown + " UTC"),
            form.name,
        );
    }
    let stored = account
        .as_ref()
        .map(|a| a.password.clone())
        .unwrap_or_else(|| session::decoy_hash().to_owned());
    let matches = session::password_matches_in_background(form.password, stored).await?;
    let account = match account {
        Some(a) if matches => a,
        Some(a) => {
            failed();
            if let Failure::Locked(_) = state.store().login_failed(a.id, now).await? {
                return refuse(tr.t("login-now-locked"), form.name);
            }
            return refuse(tr.t("login-wrong"), form.name);
        }
        None => {
            failed();
            return refuse(tr.t("login-wrong"), form.name);
        }
    };
    let (token, csrf) = session::new_session();
    state
        .store()
        .open_session(
            account.id,
            &hash_secret(&token),
            &csrf,
            now,
            now + session::SESSION_MS,
        )
        .await?;
    let mut response = Redirect::to("/devices").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session::cookie(&token, state.settings().secure_cookies),
    );
    Ok(response)
}

pub async fn logout(State(state): State<AppState>, posted: Posted) -> Result<Response, Fail> {
    posted.session.end(&state).await?;
    let mut response = Redirect::to("/login").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::expired_cookie());
    Ok(response)
}

/// Language and time zone of the operator's own account.
pub async fn preferences(State(state): State<AppState>, posted: Posted) -> Result<Response, Fail> {
    let account = &posted.session.account;
    let language = Language::parse(posted.field("language")).unwrap_or(account.language);
    let zone = match posted.field("time_zone") {
        "" => account.time_zone.as_str(),
        zone => zone,
    };
    state
        .store()
        .set_account_preferences(
            account.account_id,
            language,
            zone,
            state.now_ms(),
            &posted.session.actor(),
        )
        .await?;
    // Back to the page the form was on; only a path of this console.
    Ok(Redirect::to(console_path(posted.field("back")).unwrap_or("/devices")).into_response())
}

/// `back` when it is a path of this console, never another site: browsers read
/// `//host` and `/\host` as another host, so only a plain path passes.
fn console_path(back: &str) -> Option<&str> {
    let plain = back.starts_with('/')
        && !back.starts_with("//")
        && back.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, '/' | '?' | '=' | '&' | '%' | '.' | '-' | '_' | '+')
        });
    plain.then_some(back)
}

#[cfg(test)]
mod tests {
    use super::console_path;

    #[test]
    fn only_a_path_of_this_console_is_followed_back() {
        assert_eq!(
            console_path("/devices?sort=number&order=desc"),
            Some("/devices?sort=number&order=desc")
        );
        assert_eq!(console_path("/tasks/4"), Some("/tasks/4"));
        for away in [
            "//evil.example",
            "/\\evil.example",
            "https://evil.example",
            "evil",
            "",
            "/a b",
            "/\tevil",
        ] {
            assert_eq!(console_path(away), None, "{away:?}");
        }
    }
}
