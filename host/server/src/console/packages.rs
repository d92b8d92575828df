//! Packages: the list by device type with state Current/Install, an upload with a
//! progress bar, set current, and delete.

use std::collections::HashMap;

use askama::Template;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use posup_proto::api::{PackageState, PackageUpload};

use super::session::{Posted, Session};
use super::{Fail, Frame, Params, When, render};
use crate::state::AppState;

pub struct PackageLine {
    pub id: i64,
    pub device_type: String,
    pub file_name: String,
    pub version: String,
    pub kind: String,
    pub size: String,
    pub current: bool,
    pub notes: String,
    pub changelog: String,
    pub rollback: bool,
    pub signed: bool,
    pub uploaded: When,
}

#[derive(Template)]
#[template(path = "packages.html")]
struct PackagesPage {
    frame: Frame,
    packages: Vec<PackageLine>,
    /// Device types with a plugin enabled: the ones a package can be uploaded for.
    device_types: Vec<String>,
    chosen: String,
}

/// A size as people read it.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

pub async fn list(
    State(state): State<AppState>,
    session: Session,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, Fail> {
    let chosen = params.get("device_type").cloned().unwrap_or_default();
    let here = if chosen.is_empty() {
        "/packages".to_owned()
    } else {
        format!(
            "/packages?{}",
            serde_urlencoded::to_string([("device_type", &chosen)]).unwrap_or_default()
        )
    };
    let frame = Frame::new(&session, "packages", here);
    let filter = Some(chosen.as_str()).filter(|c| !c.is_empty());
    let packages = state.store().list_packages(filter).await?;
    let device_types = state
        .store()
        .list_device_types(state.settings().poll_interval_secs)
        .await?
        .into_iter()
        .filter(|t| t.plugin.is_some())
        .map(|t| t.name)
        .collect();
    let packages = packages
        .into_iter()
        .rev()
        .map(|p| PackageLine {
            id: p.id,
            current: p.state == PackageState::Current,
            signed: !p.signatures.is_empty(),
            size: size(p.size),
            uploaded: frame.when(p.uploaded_at),
            device_type: p.device_type,
            file_name: p.file_name,
            version: p.version,
            kind: p.kind,
            notes: p.notes,
            changelog: p.changelog,
            rollback: p.rollback,
        })
        .collect();
    render(&PackagesPage {
        packages,
        device_types,
        chosen,
        frame,
    })
}

/// `POST /packages/upload?device_type=…&file_name=…` from the page's script: the
/// body is the file, the CSRF token comes in `X-CSRF-Token` (a file upload is no
/// form post). Answers 201 or the refusal's words as plain text, which the page
/// shows as they are.
pub async fn upload(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Query(q): Query<PackageUpload>,
    body: Body,
) -> Result<Response, Fail> {
    check_csrf_header(&session, &headers)?;
    session.require_act()?;
    match crate::uploads::store_package(&state, &q, body, &session.actor()).await {
        Ok(package) => Ok((StatusCode::CREATED, package.id.to_string()).into_response()),
        Err(e) => Ok(refusal(&session, e)),
    }
}

/// An upload is no form post: its CSRF token comes in `X-CSRF-Token`.
pub fn check_csrf_header(session: &Session, headers: &HeaderMap) -> Result<(), Fail> {
    let sent = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if super::session::same(sent.as_bytes(), session.account.csrf.as_bytes()) {
        Ok(())
    } else {
        Err(Fail::Csrf)
    }
}

/// An upload's refusal as the page's script shows it: the words of a refusal
/// meant for people, or that the server failed.
pub fn refusal(session: &Session, e: crate::error::Error) -> Response {
    let status = e.status_code();
    let text = if status.is_server_error() {
        super::Tr::new(session.account.language).t("fail-internal")
    } else {
        e.to_string()
    };
    (status, text).into_response()
}

pub async fn command(
    State(state): State<AppState>,
    Params((id, command)): Params<(i64, String)>,
    posted: Posted,
) -> Result<Response, Fail> {
    let session = &posted.session;
    session.require_act()?;
    let now = state.now_ms();
    match command.as_str() {
        "edit" => {
            let patch = posup_proto::api::PackagePatch {
                notes: Some(posted.field("notes").to_owned()),
                changelog: Some(posted.field("changelog").to_owned()),
            };
            state
                .store()
                .patch_package(id, &patch, now, &session.actor())
                .await?;
        }
        "current" => {
            state
                .store()
                .set_current_package(id, now, &session.actor())
                .await?;
        }
        "delete" => {
            let removal = state
                .store()
                .delete_package(id, now, &session.actor())
                .await?;
            if let posup_store::Removal::Deleted {
                package,
                blob_unused: true,
            } = removal
            {
                state.blobs().remove(&package.sha256).await;
            }
        }
        _ => return Err(Fail::BadForm),
    }
    Ok(Redirect::to("/packages").into_response())
}

#[cfg(test)]
mod tests {
    use super::size;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(200_000), "195.3 KiB");
        assert_eq!(size(5 << 30), "5.0 GiB");
    }
}
