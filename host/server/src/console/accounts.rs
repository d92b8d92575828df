//! Console accounts: an administrator creates and deletes them; everyone changes
//! their own password.

use askama::Template;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use posup_proto::api::{Language, Role};
use posup_store::NewAccount;

use super::session::{Posted, Session, hash_password, password_matches_in_background};
use super::{Fail, Frame, Params, Tr, When, render_form};
use crate::state::AppState;

/// Shortest password an account may have.
pub const MIN_PASSWORD: usize = 10;

pub fn role_id(role: Role) -> &'static str {
    role.as_str()
}

pub struct AccountLine {
    pub id: i64,
    pub name: String,
    pub role: String,
    pub language: &'static str,
    pub time_zone: String,
    pub locked_until: Option<When>,
    pub created: When,
    pub is_me: bool,
}

#[derive(Template)]
#[template(path = "accounts.html")]
struct AccountsPage {
    frame: Frame,
    accounts: Vec<AccountLine>,
    problems: Vec<String>,
    /// Roles to choose from: value and words.
    roles: Vec<(&'static str, String)>,
    name: String,
    role: String,
    time_zone: String,
    language: String,
    /// A password change of one's own went through.
    changed: bool,
}

async fn page(
    state: &AppState,
    session: &Session,
    problems: Vec<String>,
    typed: (String, String, String, String),
    changed: bool,
) -> Result<Response, Fail> {
    let frame = Frame::new(session, "accounts", "/accounts".into());
    let tr = frame.tr;
    let now = state.now_ms();
    let accounts = if session.is_admin() {
        state.store().list_accounts().await?
    } else {
        Vec::new()
    };
    let at = |ms: i64| frame.when(chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default());
    let accounts = accounts
        .into_iter()
        .map(|a| AccountLine {
            is_me: a.id == session.account.account_id,
            id: a.id,
            role: tr.t(role_id(a.role)),
            language: a.language.as_str(),
            locked_until: (a.locked_until > now).then(|| at(a.locked_until)),
            created: at(a.created_at),
            name: a.name,
            time_zone: a.time_zone,
        })
        .collect();
    let roles = [Role::Viewer, Role::Operator, Role::Admin]
        .into_iter()
        .map(|r| (r.as_str(), tr.t(role_id(r))))
        .collect();
    let (name, role, time_zone, language) = typed;
    let refused = !problems.is_empty();
    render_form(
        &AccountsPage {
            accounts,
            problems,
            roles,
            name,
            role,
            time_zone: if time_zone.is_empty() {
                session.account.time_zone.clone()
            } else {
                time_zone
            },
            language,
            changed,
            frame,
        },
        refused,
    )
}

pub async fn list(State(state): State<AppState>, session: Session) -> Result<Response, Fail> {
    page(&state, &session, Vec::new(), Default::default(), false).await
}

fn password_problem(tr: &Tr, password: &str, again: &str) -> Option<String> {
    if password.chars().count() < MIN_PASSWORD {
        Some(tr.t1("account-password-short", "min", MIN_PASSWORD))
    } else if password != again {
        Some(tr.t("account-password-mismatch"))
    } else {
        None
    }
}

pub async fn create(State(state): State<AppState>, posted: Posted) -> Result<Response, Fail> {
    let session = &posted.session;
    session.require_admin()?;
    let tr = Tr::new(session.account.language);
    let name = posted.field("name").to_owned();
    let role = posted.field("role").to_owned();
    let time_zone = posted.field("time_zone").to_owned();
    let language = posted.field("language").to_owned();
    let password = posted.field("password");
    let mut problems = Vec::new();
    if name.is_empty() {
        problems.push(tr.t("account-name-missing"));
    }
    let parsed_role = Role::parse(&role).filter(|r| *r != Role::Vendor);
    if parsed_role.is_none() {
        problems.push(tr.t("account-role-missing"));
    }
    if let Some(p) = password_problem(&tr, password, posted.field("again")) {
        problems.push(p);
    }
    let typed = (
        name.clone(),
        role.clone(),
        time_zone.clone(),
        language.clone(),
    );
    let Some(role) = parsed_role.filter(|_| problems.is_empty()) else {
        return refused(&state, session, problems, typed).await;
    };
    let hash = hash_in_background(password.to_owned()).await?;
    let created = state
        .store()
        .create_account(
            &NewAccount {
                name: &name,
                role,
                password: &hash,
                language: Language::parse(&language).unwrap_or(session.account.language),
                time_zone: if time_zone.is_empty() {
                    &session.account.time_zone
                } else {
                    &time_zone
                },
            },
            state.now_ms(),
            &session.actor(),
        )
        .await;
    match created {
        Ok(_) => Ok(Redirect::to("/accounts").into_response()),
        Err(posup_store::Error::Invalid(m) | posup_store::Error::Conflict(m)) => {
            refused(&state, session, vec![m], typed).await
        }
        Err(e) => Err(e.into()),
    }
}

async fn refused(
    state: &AppState,
    session: &Session,
    problems: Vec<String>,
    typed: (String, String, String, String),
) -> Result<Response, Fail> {
    page(state, session, problems, typed, false).await
}

async fn hash_in_background(password: String) -> Result<String, Fail> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| Fail::Internal(e.into()))?
        .map_err(Fail::Internal)
}

pub async fn delete(
    State(state): State<AppState>,
    Params(id): Params<i64>,
    posted: Posted,
) -> Result<Response, Fail> {
    let session = &posted.session;
    session.require_admin()?;
    state
        .store()
        .delete_account(id, state.now_ms(), &session.actor())
        .await?;
    Ok(Redirect::to("/accounts").into_response())
}

/// One's own password: the current one, then the new one twice.
pub async fn password(State(state): State<AppState>, posted: Posted) -> Result<Response, Fail> {
    let session = &posted.session;
    let tr = Tr::new(session.account.language);
    let Some(login) = state
        .store()
        .account_for_login(&session.account.name)
        .await?
    else {
        return Err(Fail::LogIn);
    };
    let current = posted.field("current").to_owned();
    let stored = login.password.clone();
    let right = password_matches_in_background(current, stored).await?;
    let problem = if right {
        password_problem(&tr, posted.field("password"), posted.field("again"))
    } else {
        Some(tr.t("account-password-wrong"))
    };
    if let Some(problem) = problem {
        return refused(&state, session, vec![problem], Default::default()).await;
    }
    let hash = hash_in_background(posted.field("password").to_owned()).await?;
    state
        .store()
        .set_account_password(
            session.account.account_id,
            &hash,
            session.hash(),
            state.now_ms(),
            &session.actor(),
        )
        .await?;
    page(&state, session, Vec::new(), Default::default(), true).await
}
