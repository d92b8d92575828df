//! The operator API: tasks.

use axum::extract::State;
use axum::http::StatusCode;
use posup_proto::Page;
use posup_proto::api::*;
use posup_store::lifecycle::Command;

use crate::auth::Operator;
use crate::error::{Error, Result};
use crate::extract::{Json, Path, Query};
use crate::state::AppState;

pub(super) async fn list_tasks(
    State(state): State<AppState>,
    Query(q): Query<TaskQuery>,
) -> Result<Json<Vec<TaskView>>> {
    let at = state.at();
    // Bring states up to date first, so a listing never shows a task Scheduled
    // after its start time.
    state.store().tick(&at).await?;
    Ok(Json(state.store().list_tasks(q.state, &at).await?))
}

pub(super) async fn get_task(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<TaskView>> {
    let at = state.at();
    state.store().tick(&at).await?;
    state
        .store()
        .task(id, &at)
        .await?
        .map(Json)
        .ok_or_else(|| Error::NotFound(format!("task {id} does not exist")))
}

pub(super) async fn create_task(
    State(state): State<AppState>,
    op: Operator,
    Json(body): Json<CreateTask>,
) -> Result<(StatusCode, Json<TaskView>)> {
    op.may_override_notice(body.notice_override.as_deref())?;
    let task = state
        .store()
        .create_task(&body, &state.at(), &op.actor())
        .await?;
    Ok((StatusCode::CREATED, Json(task)))
}

pub(super) async fn command(
    state: AppState,
    op: Operator,
    id: i64,
    command: Command,
) -> Result<Json<TaskView>> {
    Ok(Json(
        state
            .store()
            .command_task(id, command, &state.at(), &op.actor())
            .await?,
    ))
}

pub(super) async fn pause_task(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<i64>,
) -> Result<Json<TaskView>> {
    command(state, op, id, Command::Pause).await
}

pub(super) async fn resume_task(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<i64>,
) -> Result<Json<TaskView>> {
    command(state, op, id, Command::Resume).await
}

pub(super) async fn restart_task(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<i64>,
) -> Result<Json<TaskView>> {
    command(state, op, id, Command::Restart).await
}

pub(super) async fn delete_task(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<i64>,
) -> Result<StatusCode> {
    state
        .store()
        .delete_task(id, state.now_ms(), &op.actor())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn task_devices(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<TaskDeviceQuery>,
) -> Result<Json<Page<TaskDeviceRow>>> {
    Ok(Json(state.store().task_devices(id, &q, &state.at()).await?))
}

pub(super) async fn task_device(
    State(state): State<AppState>,
    Path((id, device_id)): Path<(i64, i64)>,
) -> Result<Json<TaskDeviceDetail>> {
    Ok(Json(
        state
            .store()
            .task_device_detail(id, device_id, &state.at())
            .await?,
    ))
}

pub(super) async fn failed_group(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<i64>,
    Json(body): Json<FailedToGroup>,
) -> Result<(StatusCode, Json<GroupView>)> {
    let group = state
        .store()
        .failed_to_group(id, &body, &state.at(), &op.actor())
        .await?;
    Ok((StatusCode::CREATED, Json(group)))
}
