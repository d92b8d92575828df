//! The operator console: server-rendered pages at `/`.
//!
//! Pages are askama templates (`templates/`, checked when the crate compiles) in
//! the operator's language (`locales/`, Fluent), over the same store calls as the
//! API. The live parts (a task's progress) are fragments htmx fetches again every
//! few seconds; htmx is vendored under `assets/` with its licence, so nothing is
//! fetched at build or run time.
//!
//! **Boundary:** a person reads everything here. Form fields arrive as text and each
//! page checks them and says what is wrong in words; store errors are shown by
//! their message, which names the object and what to do; nothing else of an error
//! (SQL, a parser's text) reaches the page.
//!
//! **Invariant:** every page needs a session ([`session::Session`]); every form
//! post is checked against the session's CSRF token before its fields are read
//! ([`session::Posted`]); a viewer's session can read but every action refuses it
//! with 403, whether or not the page showed the button.

use askama::Template;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use posup_proto::api::Language;

use crate::state::AppState;

mod accounts;
mod admin;
mod devices;
mod groups;
mod i18n;
mod login;
mod notifications;
mod packages;
mod plugins;
mod rollouts;
pub mod session;
mod sites;
mod tasks;
pub mod throttle;
mod versions;

pub use i18n::Tr;
use session::Session;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/devices") }))
        .route("/login", get(login::form).post(login::submit))
        .route("/logout", post(login::logout))
        .route("/preferences", post(login::preferences))
        .route("/devices", get(devices::list))
        .route("/devices/{id}", get(devices::page))
        .route("/tasks", get(tasks::list).post(tasks::create))
        .route("/tasks/new", get(tasks::new))
        .route("/tasks/{id}", get(tasks::page))
        .route("/tasks/{id}/live", get(tasks::live))
        .route("/tasks/{id}/devices/{device_id}", get(tasks::device))
        .route("/tasks/{id}/{command}", post(tasks::command))
        .route("/groups", get(groups::list).post(groups::create))
        .route("/groups/{id}", get(groups::page))
        .route("/groups/{id}/{command}", post(groups::command))
        .route("/tasks/{id}/failed-group", post(groups::from_failed))
        .route("/rollouts", get(rollouts::list).post(rollouts::create))
        .route("/rollouts/new", get(rollouts::new))
        .route("/rollouts/{id}", get(rollouts::page))
        .route("/rollouts/{id}/live", get(rollouts::live))
        .route("/rollouts/{id}/{command}", post(rollouts::command))
        .route("/sites", get(sites::list))
        .route("/sites/windows", post(sites::create_window))
        .route("/sites/order-rules", post(sites::create_rule))
        .route("/sites/{what}/{id}/delete", post(sites::delete))
        .route("/sites/{name}/settings", post(sites::settings))
        .route(
            "/variables",
            get(sites::variables).post(sites::set_variable),
        )
        .route("/notifications", get(notifications::list))
        .route(
            "/notifications/channels",
            post(notifications::create_channel),
        )
        .route(
            "/notifications/channels/{id}/{command}",
            post(notifications::channel_command),
        )
        .route("/notifications/{id}", get(notifications::page))
        .route("/versions", get(versions::list))
        .route("/versions/recompute", post(versions::recompute))
        .route("/versions/{id}", get(versions::page))
        .route("/packages", get(packages::list))
        .route("/packages/upload", post(packages::upload))
        .route("/packages/{id}/{command}", post(packages::command))
        .route("/plugins", get(plugins::list))
        .route("/plugins/upload", post(plugins::upload))
        .route(
            "/plugins/bundled/{name}/enable",
            post(plugins::enable_bundled),
        )
        .route("/plugins/types/{name}/allow", post(plugins::allow))
        .route("/plugins/types/{name}/settings", post(plugins::settings))
        .route("/accounts", get(accounts::list).post(accounts::create))
        .route("/accounts/{id}/delete", post(accounts::delete))
        .route("/password", post(accounts::password))
        .route("/access", get(admin::access))
        .route("/access/{what}", post(admin::create))
        .route("/access/{what}/{id}/delete", post(admin::delete))
        .route("/audit", get(admin::audit))
        .route("/assets/{name}", get(asset))
        .layer(axum::middleware::map_response(guard_headers))
}

/// What every console answer tells the browser: scripts only from this server
/// (the pages carry none inline), never inside another site's frame, forms
/// posted only here, and pages (which may show a secret once) never stored.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
     frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

async fn guard_headers(mut response: Response) -> Response {
    use axum::http::HeaderValue;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// What every page shows around its content: who is logged in, in which
/// language, and the token its forms carry.
#[derive(Debug)]
pub struct Frame {
    pub tr: Tr,
    pub name: String,
    pub role: &'static str,
    pub can_act: bool,
    pub is_admin: bool,
    pub csrf: String,
    pub time_zone: String,
    /// The section the page belongs to, for the navigation.
    pub section: &'static str,
    /// The page's own address, so the language form comes back to it.
    pub here: String,
}

impl Frame {
    pub fn new(session: &Session, section: &'static str, here: String) -> Frame {
        let account = &session.account;
        Frame {
            tr: Tr::new(account.language),
            name: account.name.clone(),
            role: account.role.as_str(),
            can_act: session.can_act(),
            is_admin: session.is_admin(),
            csrf: account.csrf.clone(),
            time_zone: account.time_zone.clone(),
            section,
            here,
        }
    }

    pub fn lang(&self) -> &'static str {
        self.tr.language.as_str()
    }

    pub fn other_language(&self) -> &'static str {
        match self.tr.language {
            Language::En => Language::Ru.as_str(),
            Language::Ru => Language::En.as_str(),
        }
    }

    /// `t` in the operator's zone, and the UTC instant for the hover title.
    pub fn when(&self, t: DateTime<Utc>) -> When {
        When::new(t, &self.time_zone)
    }
}

/// A moment as the operator reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct When {
    /// In the operator's zone, to the minute.
    pub shown: String,
    /// The instant in UTC (RFC 3339).
    pub utc: String,
}

impl When {
    pub fn new(t: DateTime<Utc>, zone: &str) -> When {
        // Zones are checked when an account is saved; UTC is shown if one is not.
        let tz: chrono_tz::Tz = zone.parse().unwrap_or(chrono_tz::UTC);
        When {
            shown: t.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string(),
            utc: t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }
    }
}

fn render(template: &impl Template) -> Result<Response, Fail> {
    let html = template
        .render()
        .map_err(|e| Fail::Internal(anyhow::anyhow!("rendering a console page: {e}")))?;
    Ok(Html(html).into_response())
}

/// The parameters of a console address (`/tasks/{id}`): one that does not parse
/// is a page that does not exist, said in words, not axum's parser message.
#[derive(Debug)]
pub struct Params<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for Params<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Fail;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Fail> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Params(p.0))
            .map_err(|_| Fail::NoPage)
    }
}

/// A page with a form: answered 422 when it comes back refused, its problems
/// shown on it, so a script or a test sees the refusal without reading HTML.
fn render_form(template: &impl Template, refused: bool) -> Result<Response, Fail> {
    let mut response = render(template)?;
    if refused {
        *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    Ok(response)
}

/// Why a console request did not get its page.
#[derive(Debug)]
pub enum Fail {
    /// No live session: the login page.
    LogIn,
    /// The account's role does not allow this.
    Forbidden,
    /// A form without this session's token: another site's page, or one left
    /// open from an earlier login.
    Csrf,
    /// A body that is not a form.
    BadForm,
    /// An address whose numbers or names parse to nothing that exists.
    NoPage,
    Store(posup_store::Error),
    Internal(anyhow::Error),
}

impl From<posup_store::Error> for Fail {
    fn from(e: posup_store::Error) -> Self {
        Fail::Store(e)
    }
}

/// The API's error on a console page: its words where they are meant for people.
impl From<crate::error::Error> for Fail {
    fn from(e: crate::error::Error) -> Self {
        use crate::error::Error as E;
        match e {
            E::NotFound(m) => Fail::Store(posup_store::Error::NotFound(m)),
            E::Invalid(m) | E::BadRequest(m) | E::TooLarge(m) => {
                Fail::Store(posup_store::Error::Invalid(m))
            }
            E::Conflict(m) => Fail::Store(posup_store::Error::Conflict(m)),
            E::Forbidden(_) | E::Unauthorized(_) => Fail::Forbidden,
            other => Fail::Internal(anyhow::anyhow!("{other}")),
        }
    }
}

#[derive(Template)]
#[template(path = "failed.html")]
struct Failed {
    status: u16,
    /// The same words in both languages: an error found before the session is
    /// known has no language to choose.
    lines: Vec<(Tr, String)>,
    /// The store's own message, where it is meant for people.
    detail: Option<String>,
}

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        let (status, id, detail) = match self {
            Fail::LogIn => return Redirect::to("/login").into_response(),
            Fail::Forbidden => (StatusCode::FORBIDDEN, "fail-forbidden", None),
            Fail::Csrf => (StatusCode::FORBIDDEN, "fail-csrf", None),
            Fail::BadForm => (StatusCode::BAD_REQUEST, "fail-form", None),
            Fail::NoPage => (StatusCode::NOT_FOUND, "fail-no-page", None),
            Fail::Store(e) => {
                let message = e.to_string();
                let status = crate::error::Error::from(e).status_code();
                if status.is_client_error() {
                    // These messages are written for people: they name the object
                    // and what to do.
                    (status, "fail-refused", Some(message))
                } else {
                    tracing::error!("console: {message}");
                    (status, "fail-internal", None)
                }
            }
            Fail::Internal(e) => {
                tracing::error!("console: {e:#}");
                (StatusCode::INTERNAL_SERVER_ERROR, "fail-internal", None)
            }
        };
        let lines = Language::ALL
            .into_iter()
            .map(|l| {
                let tr = Tr::new(l);
                (tr, tr.t(id))
            })
            .collect();
        let page = Failed {
            status: status.as_u16(),
            lines,
            detail,
        };
        match page.render() {
            Ok(html) => (status, Html(html)).into_response(),
            Err(_) => status.into_response(),
        }
    }
}

/// Vendored assets, served with their digest-pinned names and a year's cache.
async fn asset(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    let (body, kind): (&'static [u8], &str) = match name.as_str() {
        "htmx-2.0.11.min.js" => (
            include_bytes!("../assets/htmx-2.0.11.min.js"),
            "text/javascript",
        ),
        "console-1.css" => (include_bytes!("../assets/console-1.css"), "text/css"),
        "console-1.js" => (include_bytes!("../assets/console-1.js"), "text/javascript"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        body,
    )
        .into_response()
}
