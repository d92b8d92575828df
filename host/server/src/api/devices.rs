//! The operator API: devices.

use axum::extract::State;
use axum::http::StatusCode;
use posup_proto::Page;
use posup_proto::api::*;

use crate::auth::Operator;
use crate::error::{Error, Result};
use crate::extract::{Json, Path, Query};
use crate::state::AppState;

pub(super) async fn list_devices(
    State(state): State<AppState>,
    Query(q): Query<DeviceQuery>,
) -> Result<Json<Page<DeviceRow>>> {
    Ok(Json(state.store().list_devices(&q, &state.at()).await?))
}

pub(super) async fn get_device(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<DeviceDetail>> {
    state
        .store()
        .device_detail(id, &state.at())
        .await?
        .map(Json)
        .ok_or_else(|| Error::NotFound(format!("device {id} does not exist")))
}

pub(super) async fn delete_device(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<i64>,
) -> Result<StatusCode> {
    state
        .store()
        .delete_device(id, state.now_ms(), &op.actor())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn move_device(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<i64>,
    Json(body): Json<MoveDevice>,
) -> Result<Json<DeviceRow>> {
    let store = state.store();
    store
        .move_device(id, &body, state.now_ms(), &op.actor())
        .await?;
    state.caches().invalidate_all();
    Ok(Json(
        store
            .device_detail(id, &state.at())
            .await?
            .map(|d| d.device)
            .ok_or_else(|| Error::NotFound(format!("device {id} does not exist")))?,
    ))
}

pub(super) async fn revoke_device(
    state: State<AppState>,
    op: Operator,
    id: Path<i64>,
) -> Result<StatusCode> {
    device_access(state, op, id, DeviceAccess::Revoked).await
}

pub(super) async fn reset_device(
    state: State<AppState>,
    op: Operator,
    id: Path<i64>,
) -> Result<StatusCode> {
    device_access(state, op, id, DeviceAccess::AwaitingEnrollment).await
}

/// Revoking and resetting both end the device's current token at once, on this
/// replica by its cache and on the others by the devices counter.
pub(super) async fn device_access(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<i64>,
    to: DeviceAccess,
) -> Result<StatusCode> {
    state
        .store()
        .set_device_access(id, to, state.now_ms(), &op.actor())
        .await?;
    state.caches().invalidate_all();
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn set_tags(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<i64>,
    Json(body): Json<DeviceTags>,
) -> Result<Json<DeviceRow>> {
    state
        .store()
        .set_tags(id, &body.tags, state.now_ms(), &op.actor())
        .await?;
    state
        .store()
        .device_row(id, &state.at())
        .await?
        .map(Json)
        .ok_or_else(|| Error::NotFound(format!("device {id} does not exist")))
}
