//! The agent API, `/api/v1/agent`: enroll, poll, feedback and downloads.

use crate::routes::{Routes, get, post};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;

use posup_proto::agent::{
    EnrollRequest, EnrollResponse, Feedback, FeedbackAck, FeedbackBatch, FeedbackBatchAck,
    FeedbackResult, PollResponse,
};
use posup_store::Enrollment;

use crate::auth::{Device, hash_secret, new_secret, optional_bearer};
use crate::error::{Error, Result};
use crate::extract::{DeviceJson, Json, Path, without_nul};
use crate::poll::{PollBody, bad_json};
use crate::reports::Reports;
use crate::state::AppState;

pub fn routes(state: &AppState) -> Routes {
    Routes::new()
        .route("/enroll", post(enroll))
        .route(
            "/poll",
            post(poll).map(|m| {
                m.layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    crate::metrics::time_polls,
                ))
            }),
        )
        .route("/feedback", post(feedback))
        .route("/feedback/batch", post(feedback_batch))
        .route("/packages/{sha256}", get(package))
        .route("/plugins/{sha256}", get(plugin))
}

async fn enroll(
    State(state): State<AppState>,
    headers: HeaderMap,
    DeviceJson(req): DeviceJson<EnrollRequest>,
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
    let interval = state
        .device_config(&req.device.device_type)
        .await?
        .poll_interval_secs;
    Ok(Json(EnrollResponse {
        device_id: id,
        token,
        poll_interval_secs: interval.unwrap_or(state.settings().poll_interval_secs),
    }))
}

/// Parse, answer, reply: what a poll records and what it is owed is
/// [`crate::poll`]'s.
async fn poll(
    State(state): State<AppState>,
    device: Device,
    body: Bytes,
) -> Result<Json<PollResponse>> {
    // Plain `serde_json` rather than the `DeviceJson` extractor: the poll is the
    // hot path, and its inventory stays raw text unless it changed.
    let body = without_nul(&body);
    let req: PollBody = serde_json::from_slice(&body).map_err(bad_json)?;
    Ok(Json(crate::poll::answer(&state, device, req).await?))
}

async fn feedback(
    State(state): State<AppState>,
    device: Device,
    DeviceJson(f): DeviceJson<Feedback>,
) -> Result<Json<FeedbackAck>> {
    let result = state
        .reports()
        .write(&state, Reports::new(device.auth.id, vec![f])?, state.at())
        .await?
        .pop()
        .expect("one result per report");
    Ok(Json(result?))
}

async fn feedback_batch(
    State(state): State<AppState>,
    device: Device,
    DeviceJson(batch): DeviceJson<FeedbackBatch>,
) -> Result<Json<FeedbackBatchAck>> {
    let keys: Vec<String> = batch.reports.iter().map(|f| f.key.clone()).collect();
    let results = state
        .reports()
        .write(
            &state,
            Reports::new(device.auth.id, batch.reports)?,
            state.at(),
        )
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
        .package(&sha256, &device.device_type)
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
