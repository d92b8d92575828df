//! The operator API: variables and sites.

use axum::extract::State;
use posup_proto::api::*;

use crate::auth::Operator;
use crate::error::{Error, Result};
use crate::extract::{Json, Path, Query};
use crate::state::AppState;

pub(super) async fn list_variables(
    State(state): State<AppState>,
    Query(q): Query<VariableFilter>,
) -> Result<Json<Vec<VariableView>>> {
    Ok(Json(state.store().list_variables(q.name.as_deref()).await?))
}

pub(super) async fn set_variable(
    State(state): State<AppState>,
    op: Operator,
    Json(body): Json<SetVariable>,
) -> Result<Json<ChangeId>> {
    let id = state
        .store()
        .write_variable(
            &body.name,
            &body.scope,
            Some(&body.value),
            body.secret,
            state.now_ms(),
            &op.actor(),
        )
        .await?;
    Ok(Json(ChangeId { change_id: id }))
}

pub(super) async fn delete_variable(
    State(state): State<AppState>,
    op: Operator,
    Json(body): Json<DeleteVariable>,
) -> Result<Json<ChangeId>> {
    let id = state
        .store()
        .change_variable(&body.name, &body.scope, None, state.now_ms(), &op.actor())
        .await?;
    Ok(Json(ChangeId { change_id: id }))
}

pub(super) async fn variable_changes(
    State(state): State<AppState>,
    Query(q): Query<ChangesQuery>,
) -> Result<Json<Vec<VariableChangeView>>> {
    Ok(Json(
        state
            .store()
            .variable_changes(q.since.unwrap_or(0), q.limit.unwrap_or(100))
            .await?,
    ))
}

pub(super) async fn list_sites(State(state): State<AppState>) -> Result<Json<Vec<SiteView>>> {
    Ok(Json(state.store().list_sites().await?))
}

pub(super) async fn site_preferences(
    State(state): State<AppState>,
    op: Operator,
    Path(name): Path<String>,
    Json(body): Json<SitePreferences>,
) -> Result<Json<SiteView>> {
    state
        .store()
        .set_site_preferences(
            &name,
            body.ignore_version_check,
            state.now_ms(),
            &op.actor(),
        )
        .await?;
    state
        .store()
        .list_sites()
        .await?
        .into_iter()
        .find(|s| s.name == name)
        .map(Json)
        .ok_or_else(|| Error::NotFound(format!("site {name} vanished")))
}
