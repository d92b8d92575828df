//! Uploads that the plugin runtime validates: plugins (loaded, `info` called, the
//! interface version checked) and packages (read by the device type's plugin through
//! `inspect`, which yields version, kind, notes and changelog).

use axum::body::{Body, Bytes};
use axum::extract::State;
use posup_proto::api::{PackageUpload, PackageView, PluginUpload, PluginView};
use posup_proto::{Capabilities, Dir, DirAccess};
use posup_runtime::types;
use posup_store::{NewPackage, NewPlugin};

use crate::auth::Operator;
use crate::error::{Error, Result};
use crate::extract::{Json, Query};
use crate::state::AppState;

fn dir(d: types::Dir) -> Dir {
    match d {
        types::Dir::Product => Dir::Product,
        types::Dir::Staging => Dir::Staging,
        types::Dir::Backup => Dir::Backup,
        types::Dir::Logs => Dir::Logs,
    }
}

/// What a plugin asks for, as the server records and shows it: its `info`
/// capabilities and the names of the databases it reads.
fn capabilities(c: &types::Capabilities, databases: &[types::DatabaseRequest]) -> Capabilities {
    Capabilities {
        dirs: c
            .dirs
            .iter()
            .map(|d| DirAccess {
                dir: dir(d.dir),
                write: d.write,
            })
            .collect(),
        services: c.services.clone(),
        scripts: c.scripts,
        prompt: c.prompt,
        databases: databases.iter().map(|d| d.name.clone()).collect(),
    }
}

/// `POST /api/v1/plugins`: the body is the component (`.wasm`).
pub async fn upload_plugin(
    State(state): State<AppState>,
    operator: Operator,
    Query(q): Query<PluginUpload>,
    body: Bytes,
) -> Result<Json<PluginView>> {
    let label = q.file_name.unwrap_or_else(|| "upload".to_owned());
    let view = store_plugin(&state, &label, body, &operator.actor(), |vendor| {
        operator.act_for_vendor(vendor, "upload plugins")
    })
    .await?;
    Ok(Json(view))
}

/// Validates a component with the runtime (it must load and answer `info` with
/// sound names) and stores it. `may_store` sees the vendor the plugin declares
/// before anything is written. The API and the console's bundled plugins both
/// come through here.
pub async fn store_plugin(
    state: &AppState,
    label: &str,
    body: Bytes,
    actor: &str,
    may_store: impl FnOnce(&str) -> Result<()>,
) -> Result<PluginView> {
    if body.is_empty() {
        return Err(Error::Invalid(format!(
            "plugin {label} is empty: send the component's bytes as the request body"
        )));
    }
    let _turn = state.inspection().await;
    let runtime = state.runtime().clone();
    let bytes = body.clone();
    let name = label.to_owned();
    // Compiling a component takes a while of pure CPU: keep it off the executor.
    let plugin = tokio::task::spawn_blocking(move || runtime.load(&name, &bytes))
        .await
        .map_err(|e| Error::internal("validating a plugin", e))?
        .map_err(|e| Error::Invalid(format!("plugin {label} was refused: {e}")))?;
    let info = plugin.info().await.map_err(|e| {
        Error::Invalid(format!(
            "plugin {label} was refused: its `info` failed: {e}"
        ))
    })?;
    let databases = plugin.databases().await.map_err(|e| {
        Error::Invalid(format!(
            "plugin {label} was refused: its `databases` failed: {e}"
        ))
    })?;
    check_info(label, &info)?;
    check_databases(&info.name, &databases)?;
    may_store(&info.vendor)?;
    let sha256 = state.blobs().put(&body).await?;
    let view = state
        .store()
        .insert_plugin(
            NewPlugin {
                sha256,
                name: info.name.clone(),
                vendor: info.vendor.clone(),
                version: info.version.clone(),
                description: info.description.clone(),
                device_types: info.device_types.clone(),
                capabilities: capabilities(&info.capabilities, &databases),
                interface: plugin.interface().version().to_string(),
                size: body.len() as u64,
            },
            state.now_ms(),
            actor,
        )
        .await?;
    Ok(view)
}

/// Databases a plugin may ask for, at most.
const MAX_DATABASES: usize = 8;

/// A plugin's `databases` in bounds: a few, each a plain name, so what the
/// console shows and terminals configure stays readable.
fn check_databases(plugin: &str, databases: &[types::DatabaseRequest]) -> Result<()> {
    if databases.len() > MAX_DATABASES {
        return Err(Error::Invalid(format!(
            "plugin {plugin} was refused: it asks for {} databases, at most {MAX_DATABASES} are accepted",
            databases.len()
        )));
    }
    let plain = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'))
    };
    if let Some(bad) = databases.iter().find(|d| !plain(&d.name)) {
        return Err(Error::Invalid(format!(
            "plugin {plugin} was refused: database name `{}` must be 1 to 64 lowercase letters, digits, `-` or `_`",
            bad.name
        )));
    }
    Ok(())
}

fn check_info(label: &str, info: &types::PluginInfo) -> Result<()> {
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')
            })
    };
    if !name_ok(&info.name) {
        return Err(Error::Invalid(format!(
            "plugin {label} was refused: its name `{}` must be 1 to 64 lowercase letters, digits, `-`, `_` or `.`",
            info.name
        )));
    }
    if info.version.trim().is_empty() || info.version.len() > 64 {
        return Err(Error::Invalid(format!(
            "plugin {} was refused: its version `{}` must be 1 to 64 characters",
            info.name, info.version
        )));
    }
    if info.device_types.is_empty() {
        return Err(Error::Invalid(format!(
            "plugin {} was refused: it names no device type it updates",
            info.name
        )));
    }
    if let Some(bad) = info.device_types.iter().find(|t| !name_ok(t)) {
        return Err(Error::Invalid(format!(
            "plugin {} was refused: device type `{bad}` must be 1 to 64 lowercase letters, digits, `-`, `_` or `.`",
            info.name
        )));
    }
    Ok(())
}

/// A file name as it may appear in `/staging`: one plain path component, by the
/// rule the agent applies before the name becomes a path there.
fn check_file_name(name: &str) -> Result<()> {
    posup_runtime::beneath::file_name(name).map_err(|_| {
        Error::Invalid(format!(
            "package file name `{name}` is invalid: give the bare file name, e.g. ukm5_pos_1.8.4.tgz"
        ))
    })
}

/// `POST /api/v1/packages?device_type=…&file_name=…`: the body is the package file.
pub async fn upload_package(
    State(state): State<AppState>,
    operator: Operator,
    Query(q): Query<PackageUpload>,
    body: Body,
) -> Result<Json<PackageView>> {
    Ok(Json(
        store_package(&state, &q, body, &operator.actor()).await?,
    ))
}

/// Reads an uploaded package with its device type's plugin and stores it; the
/// API and the console both upload through here.
pub async fn store_package(
    state: &AppState,
    q: &PackageUpload,
    body: Body,
    actor: &str,
) -> Result<PackageView> {
    check_file_name(&q.file_name)?;
    let settings = state.settings().poll_interval_secs;
    let device_type = state
        .store()
        .device_type(&q.device_type, settings)
        .await?
        .ok_or_else(|| {
            Error::Invalid(format!(
                "device type {} does not exist: create it before uploading packages for it",
                q.device_type
            ))
        })?;
    let enabled = device_type.plugin.ok_or_else(|| {
        Error::Invalid(format!(
            "device type {} has no plugin enabled: enable one, which reads the package, before uploading",
            q.device_type
        ))
    })?;
    let staged = state
        .blobs()
        .stage_body(body, &q.file_name, state.settings().max_package_bytes)
        .await?;
    if staged.size == 0 {
        return Err(Error::Invalid(format!("package {} is empty", q.file_name)));
    }
    let _turn = state.inspection().await;
    let plugin = state.plugin(&enabled.sha256, &enabled.name).await?;
    let env = posup_runtime::HostEnv {
        grants: posup_runtime::Grants {
            dirs: vec![posup_runtime::DirGrant {
                dir: types::Dir::Staging,
                host: staged.dir.path().to_owned(),
                write: false,
            }],
            ..Default::default()
        },
        ..Default::default()
    };
    let info = match plugin
        .inspect(
            &env,
            &format!(
                "{}/{}",
                posup_runtime::grants::guest_root(types::Dir::Staging),
                q.file_name
            ),
        )
        .await
    {
        Ok(Ok(info)) => info,
        Ok(Err(reason)) => {
            return Err(Error::Invalid(format!(
                "plugin {} {} refused package {}: {reason}",
                enabled.name, enabled.version, q.file_name
            )));
        }
        Err(e) => {
            return Err(Error::Invalid(format!(
                "package {} could not be read: {e}",
                q.file_name
            )));
        }
    };
    state.blobs().commit(&staged).await?;
    let view = state
        .store()
        .insert_package(
            NewPackage {
                device_type: q.device_type.clone(),
                file_name: q.file_name.clone(),
                sha256: staged.sha256.clone(),
                size: staged.size,
                version: info.version,
                kind: info.kind,
                notes: info.notes,
                changelog: info.changelog,
                rollback: info.rollback,
                plugin_sha256: enabled.sha256,
            },
            state.now_ms(),
            actor,
        )
        .await?;
    Ok(view)
}
