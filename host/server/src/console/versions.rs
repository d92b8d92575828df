//! The version overview, Openbravo style: each store server's status, Same as
//! Central / Different / Unknown (with why), the computed version, data pending
//! sync, differing modules; a device's modules beside the reference; a forced
//! recompute.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use posup_proto::api::{ServerStatus, VersionQuery, VersionRow, VersionStatus};

use super::session::{Posted, Session};
use super::{Fail, Frame, Params, Tr, When, render};
use crate::state::AppState;

const PER_PAGE: u32 = 100;

fn status_id(s: VersionStatus) -> &'static str {
    match s {
        VersionStatus::Same => "version-same",
        VersionStatus::Different => "version-different",
        VersionStatus::Unknown => "version-unknown",
    }
}

fn server_id(s: ServerStatus) -> &'static str {
    match s {
        ServerStatus::Online => "online",
        ServerStatus::Offline => "offline",
        ServerStatus::Transitioning => "version-transitioning",
    }
}

pub struct VersionLine {
    pub device_id: i64,
    pub name: String,
    pub site: String,
    pub device_type: String,
    pub server: String,
    pub status: String,
    pub status_key: &'static str,
    pub error: String,
    pub version: String,
    pub computed: String,
    pub reference: String,
    pub pending_sync: u32,
    pub differing: u32,
    pub ignore_check: bool,
    pub computed_at: Option<When>,
}

fn line(r: VersionRow, frame: &Frame) -> VersionLine {
    let tr = frame.tr;
    VersionLine {
        device_id: r.device_id,
        server: tr.t(server_id(r.server_status)),
        status: tr.t(status_id(r.status)),
        status_key: r.status.as_str(),
        error: r.error.unwrap_or_default(),
        reference: r.reference_version.unwrap_or_default(),
        computed_at: r.computed_at.map(|t| frame.when(t)),
        name: r.name,
        site: r.site,
        device_type: r.device_type,
        version: r.version,
        computed: r.computed_version,
        pending_sync: r.pending_sync,
        differing: r.differing_modules,
        ignore_check: r.ignore_version_check,
    }
}

#[derive(Template)]
#[template(path = "versions.html")]
struct VersionsPage {
    frame: Frame,
    lines: Vec<VersionLine>,
    status: String,
    device_type: String,
    site: String,
    total: u64,
    /// What a recompute just did, in words.
    recomputed: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    session: Session,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, Fail> {
    let get = |k: &str| params.get(k).cloned().unwrap_or_default();
    let frame = Frame::new(&session, "versions", "/versions".into());
    let tr = frame.tr;
    let text = |v: String| Some(v).filter(|v| !v.is_empty());
    let page = state
        .store()
        .versions(
            &VersionQuery {
                device_type: text(get("device_type")),
                site: text(get("site")),
                status: VersionStatus::parse(&get("status")),
                page: Some(1),
                per_page: Some(PER_PAGE),
            },
            &state.at(),
        )
        .await?;
    let lines = page.items.into_iter().map(|r| line(r, &frame)).collect();
    render(&VersionsPage {
        lines,
        status: get("status"),
        device_type: get("device_type"),
        site: get("site"),
        total: page.total,
        recomputed: params
            .get("recomputed")
            .and_then(|n| n.parse::<u64>().ok())
            .map(|n| tr.n("version-recomputed", n)),
        frame,
    })
}

pub struct ModuleLine {
    pub name: String,
    pub version: String,
    pub reference: String,
    pub differs: bool,
}

#[derive(Template)]
#[template(path = "version.html")]
struct VersionPage {
    frame: Frame,
    line: VersionLine,
    modules: Vec<ModuleLine>,
    /// Modules the reference has and the device lacks.
    missing: Vec<(String, String)>,
}

pub async fn page(
    State(state): State<AppState>,
    session: Session,
    Params(id): Params<i64>,
) -> Result<Response, Fail> {
    let frame = Frame::new(&session, "versions", format!("/versions/{id}"));
    let tr: Tr = frame.tr;
    let detail = state
        .store()
        .version_detail(id, &state.at())
        .await?
        .ok_or_else(|| posup_store::Error::NotFound(tr.t1("device-no-such", "id", id)))?;
    let r = detail.row;
    let missing = detail
        .differences
        .iter()
        .filter(|d| d.device.is_none())
        .map(|d| (d.name.clone(), d.reference.clone().unwrap_or_default()))
        .collect();
    render(&VersionPage {
        modules: detail
            .modules
            .into_iter()
            .map(|m| ModuleLine {
                differs: m.reference.as_deref() != Some(m.version.as_str()),
                reference: m.reference.unwrap_or_default(),
                name: m.name,
                version: m.version,
            })
            .collect(),
        missing,
        line: line(r, &frame),
        frame,
    })
}

/// Computes every device's status again now, as a restart of the server does.
pub async fn recompute(State(state): State<AppState>, posted: Posted) -> Result<Response, Fail> {
    posted.session.require_act()?;
    let device_type = Some(posted.field("device_type").to_owned()).filter(|t| !t.is_empty());
    let devices = state
        .store()
        .recompute_versions(device_type.as_deref(), state.now_ms())
        .await?;
    Ok(Redirect::to(&format!("/versions?recomputed={devices}")).into_response())
}
