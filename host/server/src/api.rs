//! The operator API, `/api/v1`. Every handler authenticates the operator, checks the
//! role, and hands the validated request to the store, which writes the audit log.

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use posup_proto::Page;
use posup_proto::api::*;
use posup_store::Removal;
use posup_store::lifecycle::Command;

use crate::agent::check_sha;
use crate::auth::{Operator, hash_secret, new_secret, roles};
use crate::error::{Error, Result};
use crate::extract::{Json, Path, Query};
use crate::state::AppState;
use crate::uploads;

pub fn routes(max_plugin_bytes: usize) -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/devices", get(list_devices))
        .route(
            "/devices/{id}",
            get(get_device).delete(delete_device).patch(move_device),
        )
        .route("/devices/{id}/revoke", post(revoke_device))
        .route("/devices/{id}/reset", post(reset_device))
        .route("/devices/{id}/tags", put(set_tags))
        .route("/device-types", get(list_device_types))
        .route(
            "/device-types/{name}",
            get(get_device_type)
                .put(put_device_type)
                .delete(delete_device_type),
        )
        .route(
            "/device-types/{name}/plugin",
            put(enable_plugin).delete(disable_plugin),
        )
        .route(
            "/device-types/{name}/reference",
            get(get_reference)
                .put(set_reference)
                .delete(clear_reference),
        )
        .route(
            "/plugins",
            get(list_plugins)
                .post(uploads::upload_plugin)
                .layer(DefaultBodyLimit::max(max_plugin_bytes)),
        )
        .route("/plugins/{sha256}", get(get_plugin).delete(delete_plugin))
        .route("/plugins/{sha256}/file", get(plugin_file))
        .route(
            "/packages",
            get(list_packages).post(uploads::upload_package),
        )
        .route(
            "/packages/{id}",
            get(get_package).patch(patch_package).delete(delete_package),
        )
        .route("/packages/{id}/current", post(set_current))
        .route("/packages/{id}/file", get(package_file))
        .route("/groups", get(list_groups).post(create_group))
        .route(
            "/groups/{id}",
            get(get_group).patch(update_group).delete(delete_group),
        )
        .route(
            "/groups/{id}/devices",
            post(add_members).delete(remove_members),
        )
        .route("/tasks", get(list_tasks).post(create_task))
        .route("/tasks/{id}", get(get_task).delete(delete_task))
        .route("/tasks/{id}/pause", post(pause_task))
        .route("/tasks/{id}/resume", post(resume_task))
        .route("/tasks/{id}/restart", post(restart_task))
        .route("/tasks/{id}/devices", get(task_devices))
        .route("/tasks/{id}/devices/{device_id}", get(task_device))
        .route("/tasks/{id}/failed-group", post(failed_group))
        .route(
            "/variables",
            get(list_variables)
                .put(set_variable)
                .delete(delete_variable),
        )
        .route("/variables/changes", get(variable_changes))
        .route("/sites", get(list_sites))
        .route("/sites/{name}/preferences", put(site_preferences))
        .route("/versions", get(versions))
        .route("/versions/modules", get(module_listing))
        .route("/versions/recompute", post(recompute))
        .route("/versions/{device_id}", get(version_detail))
        .route("/tokens", get(list_tokens).post(create_token))
        .route("/tokens/{id}", axum::routing::delete(delete_token))
        .route("/enrollment-secrets", get(list_secrets).post(create_secret))
        .route(
            "/enrollment-secrets/{id}",
            axum::routing::delete(delete_secret),
        )
        .route("/audit", get(audit))
        .merge(crate::notify_api::routes())
        .merge(crate::rollout_api::routes())
}

/// For load balancers: answers when the database does.
async fn health(State(state): State<AppState>) -> Result<Json<Health>> {
    state.store().admin_token_count().await?;
    Ok(Json(Health {
        status: "ok".into(),
    }))
}

// ---------------------------------------------------------------------------
// Devices

async fn list_devices(
    State(state): State<AppState>,
    Query(q): Query<DeviceQuery>,
) -> Result<Json<Page<DeviceRow>>> {
    Ok(Json(state.store().list_devices(&q, &state.at()).await?))
}

async fn get_device(
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

async fn delete_device(
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

async fn move_device(
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

async fn revoke_device(state: State<AppState>, op: Operator, id: Path<i64>) -> Result<StatusCode> {
    device_access(state, op, id, DeviceAccess::Revoked).await
}

async fn reset_device(state: State<AppState>, op: Operator, id: Path<i64>) -> Result<StatusCode> {
    device_access(state, op, id, DeviceAccess::AwaitingEnrollment).await
}

/// Revoking and resetting both end the device's current token at once, on this
/// replica by its cache and on the others by the devices counter.
async fn device_access(
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

async fn set_tags(
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

// ---------------------------------------------------------------------------
// Device types

async fn list_device_types(State(state): State<AppState>) -> Result<Json<Vec<DeviceTypeView>>> {
    Ok(Json(
        state
            .store()
            .list_device_types(state.settings().poll_interval_secs)
            .await?,
    ))
}

async fn device_type_view(state: &AppState, name: &str) -> Result<DeviceTypeView> {
    state
        .store()
        .device_type(name, state.settings().poll_interval_secs)
        .await?
        .ok_or_else(|| Error::NotFound(format!("device type {name} does not exist")))
}

async fn get_device_type(
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

async fn put_device_type(
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

async fn delete_device_type(
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

async fn enable_plugin(
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

async fn disable_plugin(
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

async fn get_reference(
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

async fn set_reference(
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

async fn clear_reference(
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

// ---------------------------------------------------------------------------
// Plugins and packages

async fn list_plugins(State(state): State<AppState>) -> Result<Json<Vec<PluginView>>> {
    let signed = crate::tuf::signatures(&state).await?;
    let mut plugins = state.store().list_plugins().await?;
    for p in &mut plugins {
        p.signatures = signed(&p.sha256);
    }
    Ok(Json(plugins))
}

async fn plugin_view(state: &AppState, sha256: &str) -> Result<PluginView> {
    check_sha(sha256, "plugin")?;
    state
        .store()
        .plugin(sha256)
        .await?
        .ok_or_else(|| Error::NotFound(format!("plugin {sha256} does not exist")))
}

async fn get_plugin(
    State(state): State<AppState>,
    Path(sha256): Path<String>,
) -> Result<Json<PluginView>> {
    let mut p = plugin_view(&state, &sha256).await?;
    p.signatures = crate::tuf::signatures(&state).await?(&p.sha256);
    Ok(Json(p))
}

async fn plugin_file(
    State(state): State<AppState>,
    Path(sha256): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    let p = plugin_view(&state, &sha256).await?;
    state
        .blobs()
        .serve(
            &sha256,
            p.size,
            &headers,
            Some(&format!("{}-{}.wasm", p.name, p.version)),
        )
        .await
}

async fn delete_plugin(
    State(state): State<AppState>,
    op: Operator,
    Path(sha256): Path<String>,
) -> Result<StatusCode> {
    check_sha(&sha256, "plugin")?;
    let plugin = plugin_view(&state, &sha256).await?;
    op.act_for_vendor(&plugin.vendor, "delete plugins")?;
    state
        .store()
        .delete_plugin(&sha256, state.now_ms(), &op.actor())
        .await?;
    // A package with the same bytes would share the blob; plugins and packages are
    // different files in practice, but check rather than assume.
    let shared = state
        .store()
        .list_packages(None)
        .await?
        .iter()
        .any(|p| p.sha256 == sha256);
    if !shared {
        state.blobs().remove(&sha256).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn list_packages(
    State(state): State<AppState>,
    Query(q): Query<PackageQuery>,
) -> Result<Json<Vec<PackageView>>> {
    let signed = crate::tuf::signatures(&state).await?;
    let mut packages = state
        .store()
        .list_packages(q.device_type.as_deref())
        .await?;
    for p in &mut packages {
        p.signatures = package_signatures(&signed, p);
    }
    Ok(Json(packages))
}

/// The signatures of a package's bytes as a package of its own device type.
fn package_signatures(
    signed: &impl Fn(&str) -> Vec<posup_proto::api::SignatureView>,
    p: &PackageView,
) -> Vec<posup_proto::api::SignatureView> {
    let prefix = format!("packages/{}/", p.device_type);
    signed(&p.sha256)
        .into_iter()
        .filter(|s| s.target.starts_with(&prefix))
        .collect()
}

async fn package_view(state: &AppState, id: i64) -> Result<PackageView> {
    state
        .store()
        .package(id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("package {id} does not exist")))
}

async fn get_package(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<PackageView>> {
    let mut p = package_view(&state, id).await?;
    p.signatures = package_signatures(&crate::tuf::signatures(&state).await?, &p);
    Ok(Json(p))
}

async fn package_file(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    headers: HeaderMap,
) -> Result<Response> {
    let p = package_view(&state, id).await?;
    state
        .blobs()
        .serve(&p.sha256, p.size, &headers, Some(&p.file_name))
        .await
}

async fn patch_package(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<i64>,
    Json(body): Json<PackagePatch>,
) -> Result<Json<PackageView>> {
    if body.notes.as_ref().is_some_and(|n| n.len() > 4000) {
        return Err(Error::Invalid(format!(
            "package {id}: notes are over 4000 bytes"
        )));
    }
    if body.changelog.as_ref().is_some_and(|c| c.len() > 1 << 20) {
        return Err(Error::Invalid(format!(
            "package {id}: the changelog is over 1 MiB"
        )));
    }
    Ok(Json(
        state
            .store()
            .patch_package(id, &body, state.now_ms(), &op.actor())
            .await?,
    ))
}

async fn set_current(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<i64>,
) -> Result<Json<PackageView>> {
    Ok(Json(
        state
            .store()
            .set_current_package(id, state.now_ms(), &op.actor())
            .await?,
    ))
}

async fn delete_package(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<i64>,
) -> Result<Response> {
    match state
        .store()
        .delete_package(id, state.now_ms(), &op.actor())
        .await?
    {
        Removal::Deleted {
            package,
            blob_unused,
        } => {
            if blob_unused {
                state.blobs().remove(&package.sha256).await;
            }
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Removal::Archived(package) => Ok(Json(package).into_response()),
    }
}

// ---------------------------------------------------------------------------
// Groups

async fn list_groups(State(state): State<AppState>) -> Result<Json<Vec<GroupView>>> {
    Ok(Json(state.store().list_groups(&state.at()).await?))
}

async fn get_group(State(state): State<AppState>, Path(id): Path<i64>) -> Result<Json<GroupView>> {
    state
        .store()
        .group(id, &state.at())
        .await?
        .map(Json)
        .ok_or_else(|| Error::NotFound(format!("group {id} does not exist")))
}

async fn create_group(
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

async fn update_group(
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

async fn delete_group(
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

async fn add_members(
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

async fn remove_members(
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

// ---------------------------------------------------------------------------
// Tasks

async fn list_tasks(
    State(state): State<AppState>,
    Query(q): Query<TaskQuery>,
) -> Result<Json<Vec<TaskView>>> {
    let at = state.at();
    // Bring states up to date first, so a listing never shows a task Scheduled
    // after its start time.
    state.store().tick(&at).await?;
    Ok(Json(state.store().list_tasks(q.state, &at).await?))
}

async fn get_task(State(state): State<AppState>, Path(id): Path<i64>) -> Result<Json<TaskView>> {
    let at = state.at();
    state.store().tick(&at).await?;
    state
        .store()
        .task(id, &at)
        .await?
        .map(Json)
        .ok_or_else(|| Error::NotFound(format!("task {id} does not exist")))
}

async fn create_task(
    State(state): State<AppState>,
    op: Operator,
    Json(body): Json<CreateTask>,
) -> Result<(StatusCode, Json<TaskView>)> {
    if body.notice_override.is_some() {
        op.require(
            roles::ADMIN,
            "start an update with less than 24 hours' notice",
        )?;
    }
    let task = state
        .store()
        .create_task(&body, &state.at(), &op.actor())
        .await?;
    Ok((StatusCode::CREATED, Json(task)))
}

async fn command(
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

async fn pause_task(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<i64>,
) -> Result<Json<TaskView>> {
    command(state, op, id, Command::Pause).await
}

async fn resume_task(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<i64>,
) -> Result<Json<TaskView>> {
    command(state, op, id, Command::Resume).await
}

async fn restart_task(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<i64>,
) -> Result<Json<TaskView>> {
    command(state, op, id, Command::Restart).await
}

async fn delete_task(
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

async fn task_devices(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<TaskDeviceQuery>,
) -> Result<Json<Page<TaskDeviceRow>>> {
    Ok(Json(state.store().task_devices(id, &q, &state.at()).await?))
}

async fn task_device(
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

async fn failed_group(
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

// ---------------------------------------------------------------------------
// Variables and sites

async fn list_variables(
    State(state): State<AppState>,
    Query(q): Query<VariableFilter>,
) -> Result<Json<Vec<VariableView>>> {
    Ok(Json(state.store().list_variables(q.name.as_deref()).await?))
}

async fn set_variable(
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

async fn delete_variable(
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

async fn variable_changes(
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

async fn list_sites(State(state): State<AppState>) -> Result<Json<Vec<SiteView>>> {
    Ok(Json(state.store().list_sites().await?))
}

async fn site_preferences(
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

// ---------------------------------------------------------------------------
// Version overview

async fn versions(
    State(state): State<AppState>,
    Query(q): Query<VersionQuery>,
) -> Result<Json<Page<VersionRow>>> {
    Ok(Json(state.store().versions(&q, &state.at()).await?))
}

async fn version_detail(
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

async fn module_listing(
    State(state): State<AppState>,
    Query(q): Query<ModuleQuery>,
) -> Result<Json<Page<ModuleDeviceRow>>> {
    Ok(Json(state.store().module_listing(&q).await?))
}

async fn recompute(
    State(state): State<AppState>,
    Json(body): Json<RecomputeRequest>,
) -> Result<Json<RecomputeResult>> {
    let devices = state
        .store()
        .recompute_versions(body.device_type.as_deref(), state.now_ms())
        .await?;
    Ok(Json(RecomputeResult { devices }))
}

// ---------------------------------------------------------------------------
// Tokens, enrollment secrets, audit

async fn list_tokens(State(state): State<AppState>) -> Result<Json<Vec<TokenView>>> {
    Ok(Json(state.store().list_tokens().await?))
}

async fn create_token(
    State(state): State<AppState>,
    op: Operator,
    Json(body): Json<CreateToken>,
) -> Result<(StatusCode, Json<CreatedToken>)> {
    let secret = new_secret("pop_");
    let created = state
        .store()
        .create_token(
            &body,
            &secret,
            &hash_secret(&secret),
            state.now_ms(),
            &op.actor(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

async fn delete_token(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<i64>,
) -> Result<StatusCode> {
    state
        .store()
        .delete_token(id, state.now_ms(), &op.actor())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_secrets(State(state): State<AppState>) -> Result<Json<Vec<EnrollmentSecretView>>> {
    Ok(Json(state.store().list_enrollment_secrets().await?))
}

async fn create_secret(
    State(state): State<AppState>,
    op: Operator,
    Json(body): Json<CreateEnrollmentSecret>,
) -> Result<(StatusCode, Json<CreatedEnrollmentSecret>)> {
    let secret = new_secret("pes_");
    let created = state
        .store()
        .create_enrollment_secret(
            &body,
            &secret,
            &hash_secret(&secret),
            state.now_ms(),
            &op.actor(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

async fn delete_secret(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<i64>,
) -> Result<StatusCode> {
    state
        .store()
        .delete_enrollment_secret(id, state.now_ms(), &op.actor())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn audit(
    State(state): State<AppState>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>> {
    Ok(Json(state.store().audit_log(&q).await?))
}
