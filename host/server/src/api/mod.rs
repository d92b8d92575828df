//! The operator API, `/api/v1`, one module per resource. A route's roles are
//! checked before its handler runs (`auth::authorize`, from the OpenAPI
//! document); a handler parses the request, hands it to the store, which
//! writes the audit log, and answers.

mod device_types;
mod devices;
mod groups;
mod packages;
mod tasks;
mod tokens;
mod variables;
mod versions;

use crate::routes::{Routes, get, post, put};
use axum::extract::{DefaultBodyLimit, State};
use posup_proto::api::*;

use crate::error::Result;
use crate::extract::Json;
use crate::state::AppState;
use crate::uploads;

pub(crate) use device_types::check_poll_interval;

pub fn routes(max_plugin_bytes: usize) -> Routes {
    Routes::new()
        .route("/health", get(health))
        .route("/devices", get(devices::list_devices))
        .route(
            "/devices/{id}",
            get(devices::get_device)
                .delete(devices::delete_device)
                .patch(devices::move_device),
        )
        .route("/devices/{id}/revoke", post(devices::revoke_device))
        .route("/devices/{id}/reset", post(devices::reset_device))
        .route("/devices/{id}/tags", put(devices::set_tags))
        .route("/device-types", get(device_types::list_device_types))
        .route(
            "/device-types/{name}",
            get(device_types::get_device_type)
                .put(device_types::put_device_type)
                .delete(device_types::delete_device_type),
        )
        .route(
            "/device-types/{name}/plugin",
            put(device_types::enable_plugin).delete(device_types::disable_plugin),
        )
        .route(
            "/device-types/{name}/reference",
            get(device_types::get_reference)
                .put(device_types::set_reference)
                .delete(device_types::clear_reference),
        )
        .route(
            "/plugins",
            get(packages::list_plugins)
                .post(uploads::upload_plugin)
                .map(|m| m.layer(DefaultBodyLimit::max(max_plugin_bytes))),
        )
        .route(
            "/plugins/{sha256}",
            get(packages::get_plugin).delete(packages::delete_plugin),
        )
        .route("/plugins/{sha256}/file", get(packages::plugin_file))
        .route(
            "/packages",
            get(packages::list_packages).post(uploads::upload_package),
        )
        .route(
            "/packages/{id}",
            get(packages::get_package)
                .patch(packages::patch_package)
                .delete(packages::delete_package),
        )
        .route("/packages/{id}/current", post(packages::set_current))
        .route("/packages/{id}/file", get(packages::package_file))
        .route(
            "/groups",
            get(groups::list_groups).post(groups::create_group),
        )
        .route(
            "/groups/{id}",
            get(groups::get_group)
                .patch(groups::update_group)
                .delete(groups::delete_group),
        )
        .route(
            "/groups/{id}/devices",
            post(groups::add_members).delete(groups::remove_members),
        )
        .route("/tasks", get(tasks::list_tasks).post(tasks::create_task))
        .route(
            "/tasks/{id}",
            get(tasks::get_task).delete(tasks::delete_task),
        )
        .route("/tasks/{id}/pause", post(tasks::pause_task))
        .route("/tasks/{id}/resume", post(tasks::resume_task))
        .route("/tasks/{id}/restart", post(tasks::restart_task))
        .route("/tasks/{id}/devices", get(tasks::task_devices))
        .route("/tasks/{id}/devices/{device_id}", get(tasks::task_device))
        .route("/tasks/{id}/failed-group", post(tasks::failed_group))
        .route(
            "/variables",
            get(variables::list_variables)
                .put(variables::set_variable)
                .delete(variables::delete_variable),
        )
        .route("/variables/changes", get(variables::variable_changes))
        .route("/sites", get(variables::list_sites))
        .route(
            "/sites/{name}/preferences",
            put(variables::site_preferences),
        )
        .route("/versions", get(versions::versions))
        .route("/versions/modules", get(versions::module_listing))
        .route("/versions/recompute", post(versions::recompute))
        .route("/versions/{device_id}", get(versions::version_detail))
        .route(
            "/tokens",
            get(tokens::list_tokens).post(tokens::create_token),
        )
        .route("/tokens/{id}", crate::routes::delete(tokens::delete_token))
        .route(
            "/enrollment-secrets",
            get(tokens::list_secrets).post(tokens::create_secret),
        )
        .route(
            "/enrollment-secrets/{id}",
            crate::routes::delete(tokens::delete_secret),
        )
        .route("/audit", get(tokens::audit))
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
