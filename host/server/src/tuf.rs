//! The TUF repository the server serves (`/tuf/metadata`, `/tuf/targets`), its
//! publishing API (`/api/v1/tuf`) and the renewal of the online roles.
//!
//! What may be published is decided by `posup-trust` ([`posup_trust::online`]);
//! this module loads what is published, passes it the request, and saves the
//! result in one transaction. The online keys (snapshot, timestamp) live in an
//! owner-only folder of the data directory; replicas sharing one database must
//! share that folder's keys.

use std::path::Path;

use crate::routes::{Routes, get, post};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use posup_proto::api::{OnlineKeysView, PublishMetadata, Role, SignatureView, TufRole, TufStatus};
use posup_trust::SigningKey;
use posup_trust::online::{self, OnlineKeys, Published, Upload};

use crate::auth::{Device, Operator};
use crate::error::{Error, Result};
use crate::extract::{Json, Path as UrlPath};
use crate::state::AppState;

/// Offline metadata expiring sooner than this is warned about.
const WARN_DAYS: i64 = 30;

/// Reads the online keys from `dir`, making them on first start.
pub fn load_keys(dir: &Path) -> anyhow::Result<OnlineKeys> {
    use anyhow::Context;
    posup_runtime::beneath::private_dir(dir)
        .with_context(|| format!("the online key folder {}", dir.display()))?;
    let key = |name: &str| -> anyhow::Result<SigningKey> {
        let path = dir.join(name);
        if !path.exists() {
            let key = posup_trust::keys::write_new(&path)?;
            eprintln!(
                "posup server: made the online {} key {} in {}",
                name.trim_end_matches(".key"),
                key.key_id(),
                path.display()
            );
            return Ok(key);
        }
        Ok(posup_trust::keys::read_signing(&path)?)
    };
    Ok(OnlineKeys {
        snapshot: key("snapshot.key")?,
        timestamp: key("timestamp.key")?,
    })
}

/// `/tuf/…`: what any TUF client reads. Metadata is public (it is signed and
/// holds no secret); targets are the fleet's software, for its devices only.
pub(crate) fn public_routes() -> Routes {
    Routes::new()
        .route("/tuf/metadata/{name}", get(metadata))
        .route("/tuf/targets/{*path}", get(target))
}

/// `/api/v1/tuf…`.
pub(crate) fn api_routes() -> Routes {
    Routes::new()
        .route("/tuf", get(status))
        .route("/tuf/online-keys", get(online_keys))
        .route("/tuf/metadata", post(publish))
}

async fn published(state: &AppState) -> Result<Published> {
    let mut p = Published::default();
    for (role, version, body) in state.store().tuf_latest().await? {
        p.roles
            .insert(role, (version.max(0) as u64, body.into_bytes()));
    }
    Ok(p)
}

/// The server's clock in whole seconds, as metadata writes time.
fn now(state: &AppState) -> jiff::Timestamp {
    let t = jiff::Timestamp::from_millisecond(state.now_ms())
        .unwrap_or_else(|_| jiff::Timestamp::now());
    posup_trust::meta::expires_in(t, 0)
}

fn timestamp_version(p: &Published) -> i64 {
    p.roles.get("timestamp").map_or(0, |(v, _)| *v as i64)
}

fn to_files(files: Vec<online::NewFile>) -> Vec<posup_store::TufFile> {
    files
        .into_iter()
        .map(|f| posup_store::TufFile {
            role: f.role,
            version: f.version as i64,
            name: f.name,
            body: String::from_utf8(f.bytes).expect("metadata is JSON text"),
        })
        .collect()
}

async fn metadata(
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
) -> Result<Response> {
    let well_formed = name == "timestamp.json"
        || name
            .strip_suffix(".json")
            .and_then(|s| s.split_once('.'))
            .is_some_and(|(v, role)| {
                v.parse::<u64>().is_ok() && posup_trust::names::part("role", role).is_ok()
            });
    if !well_formed {
        return Err(Error::NotFound(format!(
            "no metadata file {name}: files are N.<role>.json and timestamp.json"
        )));
    }
    let Some(body) = state.store().tuf_file(&name).await? else {
        return Err(Error::NotFound(format!(
            "no metadata file {name} is published"
        )));
    };
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // The timestamp changes; versioned files never do.
    let cache = if name == "timestamp.json" {
        "no-store"
    } else {
        "public, max-age=31536000, immutable"
    };
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    Ok(response)
}

/// A target as TUF clients fetch it with consistent snapshots:
/// `<dirs>/<sha256>.<file name>`. The bytes are the blob with that sha256; the
/// client checks them against the signed length and hash.
async fn target(
    State(state): State<AppState>,
    _device: Device,
    UrlPath(path): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Response> {
    let file = path.rsplit('/').next().unwrap_or_default();
    let sha = file.split_once('.').map(|(h, _)| h).unwrap_or_default();
    if !online::target_name_ok(&path)
        || sha.len() != 64
        || !sha.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(Error::NotFound(format!(
            "no target {path}: targets are fetched as <path>/<sha256>.<file name>"
        )));
    }
    let sha = sha.to_ascii_lowercase();
    let size = tokio::fs::metadata(state.blobs().path(&sha))
        .await
        .map_err(|_| Error::NotFound(format!("no target with sha256 {sha} on this server")))?
        .len();
    state.blobs().serve(&sha, size, &headers, None).await
}

fn keys_view(keys: &OnlineKeys) -> OnlineKeysView {
    let json = |k: &SigningKey| serde_json::to_value(k.public()).expect("a key serializes");
    OnlineKeysView {
        snapshot_keyid: keys.snapshot.key_id(),
        snapshot: json(&keys.snapshot),
        timestamp_keyid: keys.timestamp.key_id(),
        timestamp: json(&keys.timestamp),
    }
}

async fn status_of(state: &AppState) -> Result<TufStatus> {
    let p = published(state).await?;
    let roles: Vec<TufRole> = online::expiries(&p)
        .into_iter()
        .map(|(role, version, expires)| TufRole {
            role,
            version,
            expires,
        })
        .collect();
    let mut warnings = Vec::new();
    if !p.roles.contains_key("root") {
        warnings.push(
            "no repository is published: terminals with a trusted root install nothing until the fleet owner publishes one (`posup repo init`, `posup repo publish`)".to_owned(),
        );
    }
    let soon = posup_trust::meta::expires_in(now(state), WARN_DAYS * 86_400);
    // The server renews its own roles 12 h (timestamp) and 3 days (snapshot)
    // ahead; so close to the end, renewal is failing.
    let online_soon = posup_trust::meta::expires_in(now(state), 6 * 3600);
    for r in &roles {
        if matches!(r.role.as_str(), "snapshot" | "timestamp") {
            if r.expires
                .parse::<jiff::Timestamp>()
                .is_ok_and(|t| t <= online_soon)
            {
                warnings.push(format!(
                    "{} version {} expires at {} and the server has not renewed it: check the server's log and its online keys (--tuf-keys); terminals refuse every update after",
                    r.role, r.version, r.expires
                ));
            }
            continue;
        }
        if r.expires
            .parse::<jiff::Timestamp>()
            .is_ok_and(|t| t <= soon)
        {
            warnings.push(format!(
                "{} version {} expires at {}: sign and publish a new version before then, or terminals refuse every update",
                r.role, r.version, r.expires
            ));
        }
    }
    Ok(TufStatus {
        roles,
        online_keys: keys_view(state.online_keys()),
        warnings,
    })
}

async fn status(State(state): State<AppState>) -> Result<Json<TufStatus>> {
    Ok(Json(status_of(&state).await?))
}

async fn online_keys(State(state): State<AppState>) -> Result<Json<OnlineKeysView>> {
    Ok(Json(keys_view(state.online_keys())))
}

/// Who may publish a role: the fleet owner (admin) any; operators the releases;
/// a vendor token its own vendor's role.
fn may_publish(op: &Operator, role: &str) -> Result<()> {
    let doing = format!("publish {role}");
    match role {
        "root" | "targets" => op.require(&[Role::Admin], &doing),
        "release" => op.require(&[Role::Admin, Role::Operator], &doing),
        _ if role.starts_with("vendor-") => {
            op.require(&[Role::Admin, Role::Vendor], &doing)?;
            let own =
                op.0.vendor
                    .as_deref()
                    .and_then(|v| posup_trust::names::vendor_role(v).ok());
            if op.0.role == Role::Vendor && own.as_deref() != Some(role) {
                return Err(Error::Forbidden(format!(
                    "token {} acts for vendor {} (role {}) and may not {doing}",
                    op.0.name,
                    op.0.vendor.as_deref().unwrap_or("(none)"),
                    own.as_deref().unwrap_or("(none)")
                )));
            }
            Ok(())
        }
        _ => op.require(&[Role::Admin], &doing),
    }
}

async fn publish(
    State(state): State<AppState>,
    op: Operator,
    Json(req): Json<PublishMetadata>,
) -> Result<Json<TufStatus>> {
    if req.files.is_empty() {
        return Err(Error::Invalid("no metadata to publish: send files".into()));
    }
    let mut uploads = Vec::new();
    for f in &req.files {
        may_publish(&op, &f.role)?;
        let mut bytes = serde_json::to_vec_pretty(&f.metadata).expect("JSON serializes");
        bytes.push(b'\n');
        uploads.push(Upload {
            role: f.role.clone(),
            bytes,
        });
    }
    let blobs = state.blobs().clone();
    let blob =
        move |sha: &str, len: u64| std::fs::metadata(blobs.path(sha)).is_ok_and(|m| m.len() == len);
    // Another replica may publish or renew at the same moment: read again and
    // check again, a few times.
    let mut tries = 0;
    loop {
        let p = published(&state).await?;
        let files = online::accept(&p, &uploads, state.online_keys(), now(&state), &blob)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        match state
            .store()
            .tuf_save(
                &to_files(files),
                timestamp_version(&p),
                Some(&op.actor()),
                state.now_ms(),
            )
            .await
        {
            Ok(()) => break,
            Err(posup_store::Error::Conflict(_)) if tries < 3 => tries += 1,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Json(status_of(&state).await?))
}

/// Signs a new timestamp (and snapshot) when the current ones near their end.
pub async fn renew(state: &AppState) -> Result<()> {
    let p = published(state).await?;
    let files = online::refresh(&p, state.online_keys(), now(state))
        .map_err(|e| Error::internal("renewing the repository's timestamp", e))?;
    if files.is_empty() {
        return Ok(());
    }
    match state
        .store()
        .tuf_save(
            &to_files(files),
            timestamp_version(&p),
            None,
            state.now_ms(),
        )
        .await
    {
        // Another replica renewed it first.
        Err(posup_store::Error::Conflict(_)) => Ok(()),
        other => Ok(other?),
    }
}

/// Who signed the bytes with this sha256, for the plugin and package views.
pub async fn signatures(state: &AppState) -> Result<impl Fn(&str) -> Vec<SignatureView>> {
    let p = published(state).await?;
    Ok(move |sha: &str| {
        online::signatures(&p, sha)
            .into_iter()
            .map(|s| SignatureView {
                target: s.target,
                role: s.role,
                keyids: s.keyids,
                expires: s.expires,
            })
            .collect()
    })
}
