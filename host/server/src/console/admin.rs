//! An administrator's pages: API tokens for scripts, enrollment secrets for
//! terminals, and the audit log of every change.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use posup_proto::api::{AuditQuery, CreateEnrollmentSecret, CreateToken, Role};

use super::session::{Posted, Session};
use super::{Fail, Frame, Params, Tr, When, render, render_form};
use crate::auth::{hash_secret, new_secret};
use crate::state::AppState;

pub struct TokenLine {
    pub id: i64,
    pub name: String,
    pub role: String,
    pub vendor: String,
    pub created: When,
}

pub struct SecretLine {
    pub id: i64,
    pub name: String,
    pub site: String,
    pub uses: String,
    pub expires: Option<When>,
    pub created: When,
}

#[derive(Template)]
#[template(path = "access.html")]
struct AccessPage {
    frame: Frame,
    tokens: Vec<TokenLine>,
    secrets: Vec<SecretLine>,
    problems: Vec<String>,
    /// A secret just made: shown once, never again.
    created: Option<(String, String)>,
}

async fn access_page(
    state: &AppState,
    session: &Session,
    problems: Vec<String>,
    created: Option<(String, String)>,
) -> Result<Response, Fail> {
    session.require_admin()?;
    let frame = Frame::new(session, "access", "/access".into());
    let tr = frame.tr;
    let tokens = state.store().list_tokens().await?;
    let secrets = state.store().list_enrollment_secrets().await?;
    let refused = !problems.is_empty();
    render_form(
        &AccessPage {
            tokens: tokens
                .into_iter()
                .map(|t| TokenLine {
                    id: t.id,
                    role: tr.t(t.role.as_str()),
                    vendor: t.vendor.unwrap_or_default(),
                    created: frame.when(t.created_at),
                    name: t.name,
                })
                .collect(),
            secrets: secrets
                .into_iter()
                .map(|s| SecretLine {
                    id: s.id,
                    site: s.site.unwrap_or_else(|| tr.t("access-any-site")),
                    uses: match s.max_uses {
                        Some(max) => format!("{} / {max}", s.uses),
                        None => s.uses.to_string(),
                    },
                    expires: s.expires_at.map(|t| frame.when(t)),
                    created: frame.when(s.created_at),
                    name: s.name,
                })
                .collect(),
            problems,
            created,
            frame,
        },
        refused,
    )
}

pub async fn access(State(state): State<AppState>, session: Session) -> Result<Response, Fail> {
    access_page(&state, &session, Vec::new(), None).await
}

/// Creates an API token or an enrollment secret; the page shows it once.
pub async fn create(
    State(state): State<AppState>,
    Params(what): Params<String>,
    posted: Posted,
) -> Result<Response, Fail> {
    let session = &posted.session;
    session.require_admin()?;
    let tr = Tr::new(session.account.language);
    let name = posted.field("name").to_owned();
    if name.is_empty() {
        return access_page(&state, session, vec![tr.t("access-name-missing")], None).await;
    }
    let now = state.now_ms();
    let actor = session.actor();
    let made = match what.as_str() {
        "tokens" => {
            let Some(role) = Role::parse(posted.field("role")) else {
                return access_page(&state, session, vec![tr.t("account-role-missing")], None)
                    .await;
            };
            let vendor = Some(posted.field("vendor").to_owned()).filter(|v| !v.is_empty());
            let secret = new_secret("pop_");
            state
                .store()
                .create_token(
                    &CreateToken { name, role, vendor },
                    &secret,
                    &hash_secret(&secret),
                    now,
                    &actor,
                )
                .await
                .map(|t| (t.name, secret))
        }
        "enrollment-secrets" => {
            let max_uses = match posted.field("max_uses") {
                "" => None,
                v => match v.parse::<u32>() {
                    Ok(n) if n > 0 => Some(n),
                    _ => {
                        let problem = tr.t("access-uses-not-number");
                        return access_page(&state, session, vec![problem], None).await;
                    }
                },
            };
            let site = Some(posted.field("site").to_owned()).filter(|s| !s.is_empty());
            let secret = new_secret("pes_");
            state
                .store()
                .create_enrollment_secret(
                    &CreateEnrollmentSecret {
                        name,
                        site,
                        max_uses,
                        expires_at: None,
                    },
                    &secret,
                    &hash_secret(&secret),
                    now,
                    &actor,
                )
                .await
                .map(|s| (s.name, secret))
        }
        _ => return Err(Fail::BadForm),
    };
    match made {
        Ok(created) => access_page(&state, session, Vec::new(), Some(created)).await,
        Err(posup_store::Error::Invalid(m) | posup_store::Error::Conflict(m)) => {
            access_page(&state, session, vec![m], None).await
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn delete(
    State(state): State<AppState>,
    Params((what, id)): Params<(String, i64)>,
    posted: Posted,
) -> Result<Response, Fail> {
    let session = &posted.session;
    session.require_admin()?;
    let now = state.now_ms();
    let actor = session.actor();
    match what.as_str() {
        "tokens" => state.store().delete_token(id, now, &actor).await?,
        "enrollment-secrets" => {
            state
                .store()
                .delete_enrollment_secret(id, now, &actor)
                .await?
        }
        _ => return Err(Fail::BadForm),
    }
    Ok(Redirect::to("/access").into_response())
}

pub struct AuditLine {
    pub at: When,
    pub actor: String,
    pub action: String,
    pub object: String,
    pub detail: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    frame: Frame,
    entries: Vec<AuditLine>,
    object: String,
    older: Option<String>,
}

const AUDIT_PAGE: u32 = 100;

pub async fn audit(
    State(state): State<AppState>,
    session: Session,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, Fail> {
    session.require_admin()?;
    let object = params.get("object").cloned().unwrap_or_default();
    let before = params.get("before").and_then(|b| b.parse::<i64>().ok());
    let frame = Frame::new(&session, "audit", "/audit".into());
    let entries = state
        .store()
        .audit_log(&AuditQuery {
            before,
            object: Some(object.clone()).filter(|o| !o.is_empty()),
            limit: Some(AUDIT_PAGE),
        })
        .await?;
    let older = (entries.len() == AUDIT_PAGE as usize)
        .then(|| entries.last().map(|e| e.id))
        .flatten()
        .map(|id| {
            let query = serde_urlencoded::to_string([
                ("object", object.as_str()),
                ("before", &id.to_string()),
            ])
            .unwrap_or_default();
            format!("/audit?{query}")
        });
    render(&AuditPage {
        entries: entries
            .into_iter()
            .map(|e| AuditLine {
                at: frame.when(e.at),
                actor: e.actor,
                action: e.action,
                object: format!("{} {}", e.object, e.object_id),
                detail: if e.detail.as_object().is_some_and(|o| o.is_empty()) {
                    String::new()
                } else {
                    e.detail.to_string()
                },
            })
            .collect(),
        object,
        older,
        frame,
    })
}
