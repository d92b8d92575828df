//! Logging in and out, and an operator's own preferences (language, time zone).

use askama::Template;
use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use posup_proto::api::Language;
use posup_store::Failure;

use super::session::{self, Posted};
use super::{Fail, Tr, When, render};
use crate::auth::hash_secret;
use crate::state::AppState;

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    tr: Tr,
    /// What went wrong with the last attempt, in words.
    error: Option<String>,
    name: String,
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

pub async fn form(headers: HeaderMap) -> Result<Response, Fail> {
    render(&LoginPage {
        tr: Tr::new(visitor_language(&headers)),
        error: None,
        name: String::new(),
    })
}

#[derive(Debug, serde::Deserialize)]
pub struct Credentials {
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
}

pub async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<Credentials>,
) -> Result<Response, Fail> {
    let tr = Tr::new(visitor_language(&headers));
    let now = state.now_ms();
    let refuse = |error: String, name: String| {
        let page = LoginPage {
            tr,
            error: Some(error),
            name,
        };
        render(&page).map(|r| (axum::http::StatusCode::UNAUTHORIZED, r).into_response())
    };
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
    let password = form.password;
    // argon2 takes tens of milliseconds of CPU: off the request threads.
    let matches =
        tokio::task::spawn_blocking(move || session::password_matches(&password, &stored))
            .await
            .map_err(|e| Fail::Internal(e.into()))?;
    let account = match account {
        Some(a) if matches => a,
        Some(a) => {
            if let Failure::Locked(_) = state.store().login_failed(a.id, now).await? {
                return refuse(tr.t("login-now-locked"), form.name);
            }
            return refuse(tr.t("login-wrong"), form.name);
        }
        None => return refuse(tr.t("login-wrong"), form.name),
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
    let back = posted.field("back");
    let back = if back.starts_with('/') && !back.starts_with("//") {
        back
    } else {
        "/devices"
    };
    Ok(Redirect::to(back).into_response())
}
