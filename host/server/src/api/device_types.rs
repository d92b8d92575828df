//! The operator API: device types.

use axum::extract::State;
use axum::http::StatusCode;
use posup_proto::api::*;

use crate::auth::Operator;
use crate::error::{Error, Result};
use crate::extract::{Json, Path};
use crate::state::AppState;

pub(super) async fn list_device_types(
    State(state): State<AppState>,
) -> Result<Json<Vec<DeviceTypeView>>> {
    Ok(Json(
        state
            .store()
            .list_device_types(state.settings().poll_interval_secs)
            .await?,
    ))
}

pub(super) async fn device_type_view(state: &AppState, name: &str) -> Result<DeviceTypeView> {
    state
        .store()
        .device_type(name, state.settings().poll_interval_secs)
        .await?
        .ok_or_else(|| Error::NotFound(format!("device type {name} does not exist")))
}

pub(super) async fn get_device_type(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<DeviceTypeView>> {
    Ok(Json(device_type_view(&state, &name).await?))
}

/// A device type's poll interval must leave its devices online between polls.
pub(crate) fn check_poll_interval(state: &AppState, name: &str, secs: Option<u32>) -> Result<()> {
    let Some(secs) = secs else { return Ok(()) };
    let offline = state.settings().offline_after.as_secs();
    if u64::from(secs) * 2 > offline {
        return Err(Error::Invalid(format!(
            "device type {name}: a poll interval of {secs} s would make its devices look offline \
             (the server marks devices offline after {offline} s without contact): use at most {} s",
            offline / 2
        )));
    }
    Ok(())
}

pub(super) async fn put_device_type(
    State(state): State<AppState>,
    op: Operator,
    Path(name): Path<String>,
    Json(body): Json<DeviceTypeBody>,
) -> Result<Json<DeviceTypeView>> {
    check_poll_interval(&state, &name, body.poll_interval_secs)?;
    state
        .store()
        .put_device_type(&name, &body, state.now_ms(), &op.actor())
        .await?;
    Ok(Json(device_type_view(&state, &name).await?))
}

pub(super) async fn delete_device_type(
    State(state): State<AppState>,
    op: Operator,
    Path(name): Path<String>,
) -> Result<StatusCode> {
    state
        .store()
        .delete_device_type(&name, state.now_ms(), &op.actor())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn enable_plugin(
    State(state): State<AppState>,
    op: Operator,
    Path(name): Path<String>,
    Json(body): Json<EnablePlugin>,
) -> Result<Json<DeviceTypeView>> {
    state
        .store()
        .enable_plugin(
            &name,
            &body.name,
            body.version.as_deref(),
            state.now_ms(),
            &op.actor(),
        )
        .await?;
    Ok(Json(device_type_view(&state, &name).await?))
}

pub(super) async fn disable_plugin(
    State(state): State<AppState>,
    op: Operator,
    Path(name): Path<String>,
) -> Result<Json<DeviceTypeView>> {
    state
        .store()
        .disable_plugin(&name, state.now_ms(), &op.actor())
        .await?;
    Ok(Json(device_type_view(&state, &name).await?))
}

pub(super) async fn get_reference(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ReferenceView>> {
    device_type_view(&state, &name).await?;
    state
        .store()
        .reference_view(&name)
        .await?
        .map(Json)
        .ok_or_else(|| {
            Error::NotFound(format!(
                "device type {name} has no reference version: set one or mark a package Current"
            ))
        })
}

pub(super) async fn set_reference(
    State(state): State<AppState>,
    op: Operator,
    Path(name): Path<String>,
    Json(body): Json<ReferenceBody>,
) -> Result<Json<ReferenceView>> {
    Ok(Json(
        state
            .store()
            .set_reference(&name, &body, state.now_ms(), &op.actor())
            .await?,
    ))
}

pub(super) async fn clear_reference(
    State(state): State<AppState>,
    op: Operator,
    Path(name): Path<String>,
) -> Result<StatusCode> {
    state
        .store()
        .clear_reference(&name, state.now_ms(), &op.actor())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
