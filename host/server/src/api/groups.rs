//! The operator API: groups.

use axum::extract::State;
use axum::http::StatusCode;
use posup_proto::api::*;

use crate::auth::Operator;
use crate::error::{Error, Result};
use crate::extract::{Json, Path};
use crate::state::AppState;

pub(super) async fn list_groups(State(state): State<AppState>) -> Result<Json<Vec<GroupView>>> {
    Ok(Json(state.store().list_groups(&state.at()).await?))
}

pub(super) async fn get_group(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<GroupView>> {
    state
        .store()
        .group(id, &state.at())
        .await?
        .map(Json)
        .ok_or_else(|| Error::NotFound(format!("group {id} does not exist")))
}

pub(super) async fn create_group(
    State(state): State<AppState>,
    op: Operator,
    Json(body): Json<CreateGroup>,
) -> Result<(StatusCode, Json<GroupView>)> {
    let group = state
        .store()
        .create_group(&body, &state.at(), &op.actor())
        .await?;
    Ok((StatusCode::CREATED, Json(group)))
}

pub(super) async fn update_group(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<i64>,
    Json(body): Json<UpdateGroup>,
) -> Result<Json<GroupView>> {
    Ok(Json(
        state
            .store()
            .update_group(id, &body, &state.at(), &op.actor())
            .await?,
    ))
}

pub(super) async fn delete_group(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<i64>,
) -> Result<StatusCode> {
    state
        .store()
        .delete_group(id, state.now_ms(), &op.actor())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn add_members(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<i64>,
    Json(body): Json<GroupDevices>,
) -> Result<Json<GroupView>> {
    state
        .store()
        .add_group_members(id, &body.devices, state.now_ms(), &op.actor())
        .await?;
    get_group(State(state), Path(id)).await
}

pub(super) async fn remove_members(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<i64>,
    Json(body): Json<GroupDevices>,
) -> Result<Json<GroupView>> {
    state
        .store()
        .remove_group_members(id, &body.devices, state.now_ms(), &op.actor())
        .await?;
    get_group(State(state), Path(id)).await
}
