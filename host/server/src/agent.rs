//! The agent API, `/api/v1/agent`: enroll, poll, feedback and downloads.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use posup_proto::agent::{EnrollRequest, EnrollResponse, Feedback, FeedbackAck, PollRequest, PollResponse};
use posup_store::{InventoryReport, VarTarget};
use sha2::{Digest, Sha256};

use crate::auth::{Device, hash_secret, new_secret};
use crate::error::{Error, Result};
use crate::extract::{Json, Path};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/enroll", post(enroll))
        .route("/poll", post(poll))
        .route("/feedback", post(feedback))
        .route("/packages/{sha256}", get(package))
        .route("/plugins/{sha256}", get(plugin))
}

async fn enroll(State(state): State<AppState>, Json(req): Json<EnrollRequest>) -> Result<Json<EnrollResponse>> {
    let store = state.store();
    let secret = store
        .enrollment_secret_by_hash(&hash_secret(&req.secret))
        .await?
        .ok_or_else(|| Error::Unauthorized("unknown enrollment secret: ask an administrator for a valid one".into()))?;
    let token = new_secret("pdt_");
    let id = store
        .enroll(
            &req.device,
            &hash_secret(&token),
            state.now_ms(),
            &format!("enrollment secret {secret}"),
        )
        .await?;
    let interval = store.device_config(&req.device.device_type).await?.poll_interval_secs;
    Ok(Json(EnrollResponse {
        device_id: id,
        token,
        poll_interval_secs: interval.unwrap_or(state.settings().poll_interval_secs),
    }))
}

/// A digest of what the device reported about its installation, so an unchanged
/// report (the usual case) costs no write.
fn inventory_hash(req: &PollRequest) -> String {
    let bytes = serde_json::to_vec(&(&req.inventory, &req.inventory_error)).expect("wire types serialize");
    hex::encode(Sha256::digest(bytes))
}

async fn poll(State(state): State<AppState>, Device(device): Device, Json(req): Json<PollRequest>) -> Result<Json<PollResponse>> {
    let store = state.store();
    let at = state.at();
    let hash = inventory_hash(&req);
    let reported = req.inventory.is_some() || req.inventory_error.is_some();
    if reported && device.inventory_hash.as_deref() != Some(hash.as_str()) {
        let report = InventoryReport {
            inventory: req.inventory.as_ref(),
            error: req.inventory_error.as_deref(),
            hash: &hash,
        };
        store.record_inventory(&device, &report, at.now).await?;
    }
    let status = &req.status;
    if status.agent_version != device.agent_version
        || status.plugin_sha256 != device.plugin_sha256
        || status.message != device.agent_message
    {
        store.record_agent_status(device.id, status).await?;
    }
    state.record_contact(device.id).await?;
    let interval = device
        .poll_interval_secs
        .map(|s| s as u32)
        .unwrap_or(state.settings().poll_interval_secs);
    // Actions starting before the next poll are handed out now, with their start
    // time, so a forced update at a set time starts on time.
    let actions = store
        .actions_for_device(device.id, at.now + i64::from(interval) * 1000)
        .await?;
    let target = VarTarget {
        device_id: device.id,
        site: &device.site,
    };
    let variables = store.variable_changes_for(&target, req.vars_since, &at).await?;
    let config = if req.config_revision == Some(device.revision) {
        None
    } else {
        Some(store.device_config(&device.device_type).await?.config)
    };
    Ok(Json(PollResponse {
        actions,
        variables,
        config,
        poll_interval_secs: interval,
    }))
}

async fn feedback(State(state): State<AppState>, Device(device): Device, Json(f): Json<Feedback>) -> Result<Json<FeedbackAck>> {
    Ok(Json(state.store().record_feedback(device.id, &f, &state.at()).await?))
}

pub(crate) fn check_sha(sha256: &str, what: &str) -> Result<()> {
    if sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(())
    } else {
        Err(Error::NotFound(format!(
            "{what} `{sha256}` does not exist: name it by its sha256 in lowercase hex"
        )))
    }
}

async fn package(
    State(state): State<AppState>,
    Device(device): Device,
    Path(sha256): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    check_sha(&sha256, "package")?;
    let package = state
        .store()
        .package_by_sha(&sha256, &device.device_type)
        .await?
        .ok_or_else(|| {
            Error::NotFound(format!(
                "package {sha256} is not a package of device type {}",
                device.device_type
            ))
        })?;
    state
        .blobs()
        .serve(&sha256, package.size, &headers, Some(&package.file_name))
        .await
}

async fn plugin(
    State(state): State<AppState>,
    Device(_device): Device,
    Path(sha256): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    check_sha(&sha256, "plugin")?;
    let plugin = state
        .store()
        .plugin(&sha256)
        .await?
        .ok_or_else(|| Error::NotFound(format!("plugin {sha256} does not exist")))?;
    state
        .blobs()
        .serve(&sha256, plugin.size, &headers, Some(&format!("{}-{}.wasm", plugin.name, plugin.version)))
        .await
}
