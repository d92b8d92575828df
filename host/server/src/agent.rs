//! The agent API, `/api/v1/agent`: enroll, poll, feedback and downloads.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use std::collections::HashSet;
use std::sync::Arc;

use posup_proto::Inventory;
use posup_proto::agent::{
    AgentStatus, EnrollRequest, EnrollResponse, Feedback, FeedbackAck, FeedbackBatch,
    FeedbackBatchAck, FeedbackResult, PollResponse, VariableChanges,
};
use posup_store::{Enrollment, InventoryReport, VarTarget};
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::auth::{Device, hash_secret, new_secret, optional_bearer};
use crate::error::{Error, Result};
use crate::extract::{Json, Path};
use crate::state::AppState;

pub fn routes(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/enroll", post(enroll))
        .route(
            "/poll",
            post(poll).layer(axum::middleware::from_fn_with_state(
                state.clone(),
                crate::metrics::time_polls,
            )),
        )
        .route("/feedback", post(feedback))
        .route("/feedback/batch", post(feedback_batch))
        .route("/packages/{sha256}", get(package))
        .route("/plugins/{sha256}", get(plugin))
}

async fn enroll(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(req): Json<EnrollRequest>,
) -> Result<Json<EnrollResponse>> {
    let store = state.store();
    let token = new_secret("pdt_");
    let current = optional_bearer(&headers).map(hash_secret);
    let secret = (!req.secret.is_empty()).then(|| hash_secret(&req.secret));
    let (id, replaced) = store
        .enroll(
            Enrollment {
                identity: &req.device,
                secret_hash: secret.as_deref(),
                current_token_hash: current.as_deref(),
                new_token_hash: &hash_secret(&token),
            },
            state.now_ms(),
        )
        .await?;
    if replaced {
        // A device enrolling again gets a new token: the old one must stop working.
        state.caches().invalidate_all();
    }
    let interval = store
        .device_config(&req.device.device_type)
        .await?
        .poll_interval_secs;
    Ok(Json(EnrollResponse {
        device_id: id,
        token,
        poll_interval_secs: interval.unwrap_or(state.settings().poll_interval_secs),
    }))
}

/// A poll as the server reads it: the wire type `PollRequest`, with the inventory
/// left as raw JSON. Nearly every poll repeats the last inventory, so it is only
/// hashed; it is parsed when it changed.
#[derive(Debug, Deserialize)]
struct PollBody<'a> {
    #[serde(borrow, default)]
    inventory: Option<&'a RawValue>,
    #[serde(default)]
    inventory_error: Option<String>,
    status: AgentStatus,
    #[serde(default)]
    vars_since: i64,
    #[serde(default)]
    config_revision: Option<i64>,
}

fn bad_json(e: serde_json::Error) -> Error {
    let message = format!("the JSON body is not accepted: {e}");
    if e.is_data() {
        Error::Invalid(message)
    } else {
        Error::BadRequest(message)
    }
}

/// A digest of what the device reported about its installation, so an unchanged
/// report costs no write.
fn inventory_hash(inventory: Option<&RawValue>, error: Option<&str>) -> String {
    let mut h = Sha256::new();
    h.update(inventory.map(RawValue::get).unwrap_or("null"));
    h.update([0]);
    h.update(error.unwrap_or_default());
    hex::encode(h.finalize())
}

async fn poll(
    State(state): State<AppState>,
    device: Device,
    body: Bytes,
) -> Result<Json<PollResponse>> {
    // Plain `serde_json` rather than the `Json` extractor: the poll is the hot path.
    let req: PollBody = serde_json::from_slice(&body).map_err(bad_json)?;
    let Device {
        auth: device,
        token_hash,
    } = device;
    let store = state.store();
    let caches = state.caches();
    let at = state.at();
    let reported = req.inventory.is_some() || req.inventory_error.is_some();
    if reported {
        let hash = inventory_hash(req.inventory, req.inventory_error.as_deref());
        if device.inventory_hash.as_deref() != Some(hash.as_str()) {
            let inventory: Option<Inventory> = req
                .inventory
                .map(|raw| serde_json::from_str(raw.get()))
                .transpose()
                .map_err(bad_json)?;
            let report = InventoryReport {
                inventory: inventory.as_ref(),
                error: req.inventory_error.as_deref(),
                hash: &hash,
            };
            store.record_inventory(&device, &report, at.now).await?;
            caches.update_device(&token_hash, |d| d.inventory_hash = Some(hash.clone()));
        }
    }
    let status = &req.status;
    // An agent that says nothing of its allowance keeps the one recorded.
    let allows = match &status.allows {
        Some(a) => Some(serde_json::to_string(a).map_err(|e| Error::internal("allowance", e))?),
        None => device.allows.clone(),
    };
    if status.agent_version != device.agent_version
        || status.plugin_sha256 != device.plugin_sha256
        || status.message != device.agent_message
        || allows != device.allows
    {
        store.record_agent_status(device.id, status).await?;
        caches.update_device(&token_hash, |d| {
            d.agent_version = status.agent_version.clone();
            d.plugin_sha256 = status.plugin_sha256.clone();
            d.agent_message = status.message.clone();
            d.allows = allows.clone();
        });
    }
    // Contact times are kept to a sixth of the offline threshold: a device polling
    // faster than that (retries, `more` variable changes) costs no extra write, and
    // online/offline stays exact to well within the threshold.
    let resolution = state.settings().offline_after.as_millis() as i64 / 6;
    if at.now - device.last_contact >= resolution {
        state.record_contact(device.id).await?;
        caches.update_device(&token_hash, |d| d.last_contact = at.now);
    }
    let interval = device
        .poll_interval_secs
        .map(|s| s as u32)
        .unwrap_or(state.settings().poll_interval_secs);

    // Only devices that may have actions cost a query for them.
    let active = match caches.active() {
        Some(active) => active,
        None => {
            let epoch = caches.epoch();
            let active: Arc<HashSet<i64>> =
                Arc::new(store.devices_with_actions().await?.into_iter().collect());
            caches.put_active(active.clone(), epoch);
            active
        }
    };
    let actions = if caches.may_have_actions(&active, device.id) {
        // Actions starting before the next poll are handed out now, with their
        // start time, so a forced update at a set time starts on time. An update
        // is handed out only once its gates let it start (see `posup_store::gates`).
        let horizon = at.now + i64::from(interval) * 1000;
        let asking = posup_store::Asking {
            device_id: device.id,
            site: &device.site,
            device_type: &device.device_type,
        };
        let epoch = caches.epoch();
        let polled = store.poll_actions(asking, &at, horizon).await?;
        if polled.idle {
            caches.put_idle(device.id, epoch);
        }
        if polled.vars_changed {
            // An ordering rule set a readiness variable: the cached newest change
            // id is stale.
            caches.invalidate_all();
        }
        polled.actions
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
        store
            .variable_changes_for(&target, req.vars_since, &at)
            .await?
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

async fn feedback(
    State(state): State<AppState>,
    device: Device,
    Json(f): Json<Feedback>,
) -> Result<Json<FeedbackAck>> {
    let result = state
        .reports()
        .record(state.store(), device.auth.id, vec![f], state.at())
        .await?
        .pop()
        .expect("one result per report");
    Ok(Json(result?))
}

async fn feedback_batch(
    State(state): State<AppState>,
    device: Device,
    Json(batch): Json<FeedbackBatch>,
) -> Result<Json<FeedbackBatchAck>> {
    let keys: Vec<String> = batch.reports.iter().map(|f| f.key.clone()).collect();
    let results = state
        .reports()
        .record(state.store(), device.auth.id, batch.reports, state.at())
        .await?;
    let answers = keys
        .into_iter()
        .zip(results)
        .map(|(key, result)| match result {
            Ok(ack) => FeedbackResult::Ack(ack),
            // Only refusals are answered per report; a database failure failed
            // the whole batch above.
            Err(e) => FeedbackResult::Refused {
                key,
                error: Error::from(e).to_string(),
            },
        })
        .collect();
    Ok(Json(FeedbackBatchAck { results: answers }))
}

pub(crate) fn check_sha(sha256: &str, what: &str) -> Result<()> {
    if sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
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
        .serve(
            &sha256,
            plugin.size,
            &headers,
            Some(&format!("{}-{}.wasm", plugin.name, plugin.version)),
        )
        .await
}

#[cfg(test)]
mod tests {
    use posup_proto::agent::PollRequest;
    use posup_proto::{Inventory, ModuleVersion};

    use super::*;

    #[test]
    fn the_server_reads_every_poll_request() {
        let full = PollRequest {
            inventory: Some(Inventory {
                product: "UKM 5".into(),
                version: "1.8.4".into(),
                modules: vec![ModuleVersion {
                    name: "pos".into(),
                    version: "1".into(),
                }],
                ..Default::default()
            }),
            inventory_error: None,
            status: AgentStatus {
                agent_version: "0.1.0".into(),
                ..Default::default()
            },
            vars_since: 7,
            config_revision: Some(3),
        };
        let text = serde_json::to_string(&full).unwrap();
        let body: PollBody = serde_json::from_str(&text).unwrap();
        let inventory: Inventory = serde_json::from_str(body.inventory.unwrap().get()).unwrap();
        assert_eq!(Some(inventory), full.inventory);
        assert_eq!((body.vars_since, body.config_revision), (7, Some(3)));
        let bare: PollBody =
            serde_json::from_str(r#"{"status": {"agent_version": "1"}, "inventory": null}"#)
                .unwrap();
        assert!(bare.inventory.is_none());
        assert_ne!(
            inventory_hash(None, Some("x")),
            inventory_hash(None, None),
            "an error is a change"
        );
    }
}
