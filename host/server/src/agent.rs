//! The agent API, `/api/v1/agent`: enroll, poll, feedback and downloads.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use std::collections::HashSet;
use std::sync::Arc;

use posup_proto::agent::{
    EnrollRequest, EnrollResponse, Feedback, FeedbackAck, PollRequest, PollResponse, VariableChanges,
};
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
    // A device enrolling again gets a new token: the old one must stop working.
    state.caches().invalidate_all();
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

/// Parses a poll body. The poll is the hot path: plain `serde_json` instead of the
/// `Json` extractor, whose error paths cost a wrapper around every value parsed.
fn parse_poll(body: &[u8]) -> Result<PollRequest> {
    serde_json::from_slice(body).map_err(|e| {
        let message = format!("the JSON body is not accepted: {e}");
        if e.is_data() {
            Error::Invalid(message)
        } else {
            Error::BadRequest(message)
        }
    })
}

async fn poll(State(state): State<AppState>, device: Device, body: Bytes) -> Result<Json<PollResponse>> {
    let req = parse_poll(&body)?;
    let Device { auth: device, token_hash } = device;
    let store = state.store();
    let caches = state.caches();
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
        caches.update_device(&token_hash, |d| d.inventory_hash = Some(hash.clone()));
    }
    let status = &req.status;
    if status.agent_version != device.agent_version
        || status.plugin_sha256 != device.plugin_sha256
        || status.message != device.agent_message
    {
        store.record_agent_status(device.id, status).await?;
        caches.update_device(&token_hash, |d| {
            d.agent_version = status.agent_version.clone();
            d.plugin_sha256 = status.plugin_sha256.clone();
            d.agent_message = status.message.clone();
        });
    }
    state.record_contact(device.id).await?;
    let interval = device
        .poll_interval_secs
        .map(|s| s as u32)
        .unwrap_or(state.settings().poll_interval_secs);

    // Only devices that may have actions cost a query for them.
    let active = match caches.active() {
        Some(active) => active,
        None => {
            let epoch = caches.epoch();
            let active: Arc<HashSet<i64>> = Arc::new(store.devices_with_actions().await?.into_iter().collect());
            caches.put_active(active.clone(), epoch);
            active
        }
    };
    let actions = if active.contains(&device.id) {
        // Actions starting before the next poll are handed out now, with their
        // start time, so a forced update at a set time starts on time.
        store
            .actions_for_device(device.id, at.now + i64::from(interval) * 1000)
            .await?
    } else {
        Vec::new()
    };

    // An agent that has the newest variable change needs no query.
    let newest = match caches.vars_max() {
        Some(max) => max,
        None => {
            let epoch = caches.epoch();
            let max = store.generations().await?.variables;
            caches.put_vars_max(max, epoch);
            max
        }
    };
    let variables = if req.vars_since == newest {
        VariableChanges {
            changes: Vec::new(),
            last_id: newest,
            more: false,
        }
    } else {
        let target = VarTarget {
            device_id: device.id,
            site: &device.site,
        };
        store.variable_changes_for(&target, req.vars_since, &at).await?
    };
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

async fn feedback(State(state): State<AppState>, device: Device, Json(f): Json<Feedback>) -> Result<Json<FeedbackAck>> {
    Ok(Json(state.store().record_feedback(device.auth.id, &f, &state.at()).await?))
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
    device: Device,
    Path(sha256): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    let device = device.auth;
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
    _device: Device,
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
