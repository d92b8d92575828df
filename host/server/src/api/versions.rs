//! The operator API: version overview.

use axum::extract::State;
use posup_proto::Page;
use posup_proto::api::*;

use crate::error::{Error, Result};
use crate::extract::{Json, Path, Query};
use crate::state::AppState;

pub(super) async fn versions(
    State(state): State<AppState>,
    Query(q): Query<VersionQuery>,
) -> Result<Json<Page<VersionRow>>> {
    Ok(Json(state.store().versions(&q, &state.at()).await?))
}

pub(super) async fn version_detail(
    State(state): State<AppState>,
    Path(device_id): Path<i64>,
) -> Result<Json<VersionDetail>> {
    state
        .store()
        .version_detail(device_id, &state.at())
        .await?
        .map(Json)
        .ok_or_else(|| Error::NotFound(format!("device {device_id} does not exist")))
}

pub(super) async fn module_listing(
    State(state): State<AppState>,
    Query(q): Query<ModuleQuery>,
) -> Result<Json<Page<ModuleDeviceRow>>> {
    Ok(Json(state.store().module_listing(&q).await?))
}

pub(super) async fn recompute(
    State(state): State<AppState>,
    Json(body): Json<RecomputeRequest>,
) -> Result<Json<RecomputeResult>> {
    let devices = state
        .store()
        .recompute_versions(body.device_type.as_deref(), state.now_ms())
        .await?;
    Ok(Json(RecomputeResult { devices }))
}
