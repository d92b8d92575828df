//! The operator API: plugins and packages.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use posup_proto::api::*;
use posup_store::Removal;

use crate::agent::check_sha;
use crate::auth::Operator;
use crate::error::{Error, Result};
use crate::extract::{Json, Path, Query};
use crate::state::AppState;

pub(super) async fn list_plugins(State(state): State<AppState>) -> Result<Json<Vec<PluginView>>> {
    let signed = crate::tuf::signatures(&state).await?;
    let mut plugins = state.store().list_plugins().await?;
    for p in &mut plugins {
        p.signatures = signed(&p.sha256);
    }
    Ok(Json(plugins))
}

pub(super) async fn plugin_view(state: &AppState, sha256: &str) -> Result<PluginView> {
    check_sha(sha256, "plugin")?;
    state
        .store()
        .plugin(sha256)
        .await?
        .ok_or_else(|| Error::NotFound(format!("plugin {sha256} does not exist")))
}

pub(super) async fn get_plugin(
    State(state): State<AppState>,
    Path(sha256): Path<String>,
) -> Result<Json<PluginView>> {
    let mut p = plugin_view(&state, &sha256).await?;
    p.signatures = crate::tuf::signatures(&state).await?(&p.sha256);
    Ok(Json(p))
}

pub(super) async fn plugin_file(
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

pub(super) async fn delete_plugin(
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

pub(super) async fn list_packages(
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
pub(super) fn package_signatures(
    signed: &impl Fn(&str) -> Vec<posup_proto::api::SignatureView>,
    p: &PackageView,
) -> Vec<posup_proto::api::SignatureView> {
    let prefix = format!("packages/{}/", p.device_type);
    signed(&p.sha256)
        .into_iter()
        .filter(|s| s.target.starts_with(&prefix))
        .collect()
}

pub(super) async fn package_view(state: &AppState, id: i64) -> Result<PackageView> {
    state
        .store()
        .package(id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("package {id} does not exist")))
}

pub(super) async fn get_package(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<PackageView>> {
    let mut p = package_view(&state, id).await?;
    p.signatures = package_signatures(&crate::tuf::signatures(&state).await?, &p);
    Ok(Json(p))
}

pub(super) async fn package_file(
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

pub(super) async fn patch_package(
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

pub(super) async fn set_current(
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

pub(super) async fn delete_package(
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
