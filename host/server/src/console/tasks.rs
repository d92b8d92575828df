//! Tasks: the list by state, a new Download / Update / Forced update for a group
//! and a package at a time in the operator's zone or now, a task's page with every
//! device (refreshed live), and pause, resume, restart and delete.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use posup_proto::api::{
    CreateTask, DeviceTaskState, TaskDeviceQuery, TaskDeviceRow, TaskState, TaskView,
};
use posup_proto::rollout::{Wait, WaitKind};
use posup_proto::{Page, TaskKind};
use posup_store::lifecycle::Command;

use super::session::{Posted, Session};
use super::{Fail, Frame, Params, Tr, When, render, render_form};
use crate::state::AppState;

pub fn kind_id(kind: TaskKind) -> &'static str {
    match kind {
        TaskKind::Download => "kind-download",
        TaskKind::Update => "kind-update",
        TaskKind::ForcedUpdate => "kind-forced-update",
    }
}

pub fn state_id(state: TaskState) -> &'static str {
    match state {
        TaskState::Scheduled => "task-scheduled",
        TaskState::Running => "task-running",
        TaskState::Paused => "task-paused",
        TaskState::Finished => "task-finished",
    }
}

pub fn device_state_id(state: DeviceTaskState) -> &'static str {
    match state {
        DeviceTaskState::Pending => "device-pending",
        DeviceTaskState::Running => "device-running",
        DeviceTaskState::Waiting => "device-waiting",
        DeviceTaskState::Success => "device-success",
        DeviceTaskState::Failed => "device-failed",
    }
}

/// Why a device waits, in words: the kind in the operator's language, then the
/// server's own reason (which names the window, limit or device type).
pub fn wait_text(tr: &Tr, wait: &Wait, frame: &Frame) -> String {
    let kind = tr.t(match wait.kind {
        WaitKind::Window => "wait-window",
        WaitKind::SiteLimit => "wait-site-limit",
        WaitKind::Order => "wait-order",
        WaitKind::NotNow => "wait-not-now",
    });
    let mut text = format!("{kind}: {}", wait.reason);
    if let Some(until) = wait.until {
        text.push_str(&format!(
            " ({})",
            tr.t1("wait-until", "time", frame.when(until).shown)
        ));
    }
    text
}

/// A task as a list line or a page heading shows it.
#[derive(Clone)]
pub struct TaskLine {
    pub id: i64,
    pub name: String,
    pub kind: String,
    pub state: String,
    /// `Scheduled`, `Running`…: for the page's styles and tests.
    pub state_key: &'static str,
    pub package: String,
    pub group: String,
    pub start: When,
    pub total: u64,
    pub offline: u64,
    pub inprogress: u64,
    pub failed: u64,
    pub success: u64,
    pub can_pause: bool,
    pub can_resume: bool,
    pub can_restart: bool,
}

fn line(task: TaskView, frame: &Frame) -> TaskLine {
    let tr = frame.tr;
    TaskLine {
        id: task.id,
        name: task.name,
        kind: tr.t(kind_id(task.kind)),
        state: tr.t(state_id(task.state)),
        state_key: task.state.as_str(),
        package: format!("{} ({})", task.package_file, task.package_version),
        group: task.group_name,
        start: frame.when(task.start_at),
        total: task.counts.total,
        offline: task.counts.offline,
        inprogress: task.counts.inprogress,
        failed: task.counts.failed,
        success: task.counts.success,
        can_pause: matches!(task.state, TaskState::Scheduled | TaskState::Running),
        can_resume: task.state == TaskState::Paused,
        can_restart: task.state == TaskState::Finished,
    }
}

/// A state filter link.
pub struct Filter {
    pub text: String,
    pub href: String,
    pub current: bool,
}

#[derive(Template)]
#[template(path = "tasks.html")]
struct ListPage {
    frame: Frame,
    filters: Vec<Filter>,
    tasks: Vec<TaskLine>,
}

pub async fn list(
    State(state): State<AppState>,
    session: Session,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, Fail> {
    let chosen = params.get("state").and_then(|s| TaskState::parse(s));
    let here = match chosen {
        Some(s) => format!("/tasks?state={}", s.as_str()),
        None => "/tasks".to_owned(),
    };
    let frame = Frame::new(&session, "tasks", here);
    let at = state.at();
    state.store().tick(&at).await?;
    let tasks = state.store().list_tasks(chosen, &at).await?;
    let mut filters = vec![Filter {
        text: frame.tr.t("tasks-all"),
        href: "/tasks".into(),
        current: chosen.is_none(),
    }];
    filters.extend(TaskState::ALL.into_iter().map(|s| Filter {
        text: frame.tr.t(state_id(s)),
        href: format!("/tasks?state={}", s.as_str()),
        current: chosen == Some(s),
    }));
    render(&ListPage {
        filters,
        tasks: tasks.into_iter().map(|t| line(t, &frame)).collect(),
        frame,
    })
}

/// A choice in a select.
pub struct Choice {
    pub value: String,
    pub text: String,
    pub selected: bool,
}

#[derive(Template)]
#[template(path = "task_new.html")]
struct NewPage {
    frame: Frame,
    problems: Vec<String>,
    name: String,
    kinds: Vec<Choice>,
    groups: Vec<Choice>,
    packages: Vec<Choice>,
    start_now: bool,
    start_at: String,
    notice_override: String,
}

/// What the form holds, as text, so a refused form comes back as it was typed.
#[derive(Default)]
struct Typed {
    name: String,
    kind: String,
    group: String,
    package: String,
    start: String,
    start_at: String,
    notice_override: String,
}

async fn new_page(
    state: &AppState,
    session: &Session,
    typed: Typed,
    problems: Vec<String>,
) -> Result<Response, Fail> {
    let frame = Frame::new(session, "tasks", "/tasks/new".into());
    let tr = frame.tr;
    let groups = state.store().list_groups(&state.at()).await?;
    let packages = state.store().list_packages(None).await?;
    let kinds = TaskKind::ALL
        .into_iter()
        .map(|k| Choice {
            value: k.as_str().into(),
            text: tr.t(kind_id(k)),
            selected: typed.kind == k.as_str(),
        })
        .collect();
    let groups = groups
        .into_iter()
        .map(|g| Choice {
            selected: typed.group == g.id.to_string(),
            value: g.id.to_string(),
            text: format!("{} ({})", g.name, tr.n("devices-count", g.devices)),
        })
        .collect();
    let packages = packages
        .into_iter()
        .rev()
        .map(|p| Choice {
            selected: typed.package == p.id.to_string(),
            value: p.id.to_string(),
            text: format!("{} · {} · {}", p.device_type, p.file_name, p.version),
        })
        .collect();
    let refused = !problems.is_empty();
    let page = NewPage {
        problems,
        name: typed.name,
        kinds,
        groups,
        packages,
        start_now: typed.start != "at",
        start_at: typed.start_at,
        notice_override: typed.notice_override,
        frame,
    };
    render_form(&page, refused)
}

pub async fn new(State(state): State<AppState>, session: Session) -> Result<Response, Fail> {
    session.require_act()?;
    new_page(&state, &session, Typed::default(), Vec::new()).await
}

/// A time the operator typed in a `datetime-local` field, in their zone.
pub fn local_time(text: &str, zone: &str) -> Option<DateTime<Utc>> {
    let naive = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M")
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S"))
        .ok()?;
    let tz: chrono_tz::Tz = zone.parse().ok()?;
    // A time that does not exist (the hour skipped in spring) is refused; one
    // that exists twice (autumn) is taken at its first occurrence.
    tz.from_local_datetime(&naive)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
}

pub async fn create(State(state): State<AppState>, posted: Posted) -> Result<Response, Fail> {
    let session = &posted.session;
    session.require_act()?;
    let tr = Tr::new(session.account.language);
    let typed = Typed {
        name: posted.field("name").to_owned(),
        kind: posted.field("kind").to_owned(),
        group: posted.field("group").to_owned(),
        package: posted.field("package").to_owned(),
        start: posted.field("start").to_owned(),
        start_at: posted.field("start_at").to_owned(),
        notice_override: posted.field("notice_override").to_owned(),
    };
    let mut problems = Vec::new();
    let kind = TaskKind::parse(&typed.kind);
    if kind.is_none() {
        problems.push(tr.t("task-new-kind-missing"));
    }
    let group = typed.group.parse::<i64>().ok();
    if group.is_none() {
        problems.push(tr.t("task-new-group-missing"));
    }
    let package = typed.package.parse::<i64>().ok();
    if package.is_none() {
        problems.push(tr.t("task-new-package-missing"));
    }
    let start_at = if typed.start == "at" {
        let at = local_time(&typed.start_at, &session.account.time_zone);
        if at.is_none() {
            problems.push(tr.t1("task-new-time-invalid", "zone", &session.account.time_zone));
        }
        at
    } else {
        None
    };
    let notice_override = Some(typed.notice_override.clone()).filter(|s| !s.is_empty());
    if notice_override.is_some() && !session.is_admin() {
        return Err(Fail::Forbidden);
    }
    let (Some(kind), Some(group_id), Some(package_id), true) =
        (kind, group, package, problems.is_empty())
    else {
        return new_page(&state, session, typed, problems).await;
    };
    let body = CreateTask {
        name: Some(typed.name.clone()).filter(|n| !n.is_empty()),
        kind,
        package_id,
        group_id,
        start_at,
        notice_override,
    };
    match state
        .store()
        .create_task(&body, &state.at(), &session.actor())
        .await
    {
        Ok(task) => Ok(Redirect::to(&format!("/tasks/{}", task.id)).into_response()),
        // The store says what is wrong with the task (no notice, no devices…): the
        // form comes back with its words.
        Err(posup_store::Error::Invalid(m) | posup_store::Error::Conflict(m)) => {
            new_page(&state, session, typed, vec![m]).await
        }
        Err(e) => Err(e.into()),
    }
}

/// A device of a task, as the task page lists it.
pub struct DeviceLine {
    pub device_id: i64,
    pub name: String,
    pub site: String,
    pub number: u32,
    pub online: bool,
    pub state: String,
    pub state_key: &'static str,
    pub step: String,
    pub message: String,
    pub percent: String,
    pub wait: String,
    pub updated: When,
}

fn device_line(d: TaskDeviceRow, frame: &Frame) -> DeviceLine {
    let tr = frame.tr;
    DeviceLine {
        device_id: d.device_id,
        name: d.name,
        site: d.site,
        number: d.number,
        online: d.online,
        state: tr.t(device_state_id(d.state)),
        state_key: d.state.as_str(),
        step: d.step.unwrap_or_default(),
        message: d.message.unwrap_or_default(),
        percent: d.percent.map(|p| format!("{p} %")).unwrap_or_default(),
        wait: d
            .wait
            .map(|w| wait_text(&tr, &w, frame))
            .unwrap_or_default(),
        updated: frame.when(d.updated_at),
    }
}

#[derive(Template)]
#[template(path = "task.html")]
struct TaskPage {
    frame: Frame,
    task: TaskLine,
    live: Live,
    /// Static groups the failed devices may join.
    static_groups: Vec<(i64, String)>,
}

/// The part of a task's page that refreshes itself.
#[derive(Template)]
#[template(path = "task_live.html")]
struct Live {
    frame: Frame,
    task: TaskLine,
    devices: Vec<DeviceLine>,
    /// More devices than the page lists.
    more: u64,
}

const DEVICES_SHOWN: u32 = 500;

async fn live_of(state: &AppState, session: &Session, id: i64) -> Result<Live, Fail> {
    let frame = Frame::new(session, "tasks", format!("/tasks/{id}"));
    let at = state.at();
    state.store().tick(&at).await?;
    let task = state
        .store()
        .task(id, &at)
        .await?
        .ok_or_else(|| posup_store::Error::NotFound(frame.tr.t1("task-no-such", "id", id)))?;
    let page: Page<TaskDeviceRow> = state
        .store()
        .task_devices(
            id,
            &TaskDeviceQuery {
                state: None,
                page: Some(1),
                per_page: Some(DEVICES_SHOWN),
            },
            &at,
        )
        .await?;
    let devices: Vec<DeviceLine> = page
        .items
        .into_iter()
        .map(|d| device_line(d, &frame))
        .collect();
    Ok(Live {
        more: page.total.saturating_sub(devices.len() as u64),
        task: line(task, &frame),
        devices,
        frame,
    })
}

pub async fn page(
    State(state): State<AppState>,
    session: Session,
    Params(id): Params<i64>,
) -> Result<Response, Fail> {
    let live = live_of(&state, &session, id).await?;
    let frame = Frame::new(&session, "tasks", format!("/tasks/{id}"));
    let task = live.task.clone();
    let static_groups = state
        .store()
        .list_groups(&state.at())
        .await?
        .into_iter()
        .filter(|g| g.kind == posup_proto::api::GroupKind::Static)
        .map(|g| (g.id, g.name))
        .collect();
    render(&TaskPage {
        frame,
        task,
        live,
        static_groups,
    })
}

pub async fn live(
    State(state): State<AppState>,
    session: Session,
    Params(id): Params<i64>,
) -> Result<Response, Fail> {
    render(&live_of(&state, &session, id).await?)
}

pub async fn command(
    State(state): State<AppState>,
    Params((id, command)): Params<(i64, String)>,
    posted: Posted,
) -> Result<Response, Fail> {
    let session = &posted.session;
    session.require_act()?;
    let actor = session.actor();
    let command = match command.as_str() {
        "pause" => Command::Pause,
        "resume" => Command::Resume,
        "restart" => Command::Restart,
        "delete" => {
            state
                .store()
                .delete_task(id, state.now_ms(), &actor)
                .await?;
            return Ok(Redirect::to("/tasks").into_response());
        }
        _ => return Err(Fail::BadForm),
    };
    state
        .store()
        .command_task(id, command, &state.at(), &actor)
        .await?;
    Ok(Redirect::to(&format!("/tasks/{id}")).into_response())
}

/// One report of a device's update, as its history lists it.
pub struct StepLine {
    pub attempt: u32,
    pub step: String,
    pub state: String,
    pub state_key: &'static str,
    pub message: String,
    pub percent: String,
    pub at: When,
    pub received: When,
}

fn report_id(state: posup_proto::agent::FeedbackState) -> &'static str {
    use posup_proto::agent::FeedbackState as F;
    match state {
        F::Started => "report-started",
        F::Progress => "report-progress",
        F::Ok => "report-ok",
        F::NotNow => "report-not-now",
        F::Failed => "report-failed",
        F::RolledBack => "report-rolled-back",
        F::Committed => "report-committed",
    }
}

#[derive(Template)]
#[template(path = "task_device.html")]
struct TaskDevicePage {
    frame: Frame,
    task: TaskLine,
    device: DeviceLine,
    history: Vec<StepLine>,
}

/// A device's part of a task, step by step with the plugin's messages.
pub async fn device(
    State(state): State<AppState>,
    session: Session,
    Params((id, device_id)): Params<(i64, i64)>,
) -> Result<Response, Fail> {
    let frame = Frame::new(
        &session,
        "tasks",
        format!("/tasks/{id}/devices/{device_id}"),
    );
    let tr = frame.tr;
    let at = state.at();
    let task = state
        .store()
        .task(id, &at)
        .await?
        .ok_or_else(|| posup_store::Error::NotFound(tr.t1("task-no-such", "id", id)))?;
    let detail = state.store().task_device_detail(id, device_id, &at).await?;
    let d = detail.device;
    render(&TaskDevicePage {
        task: line(task, &frame),
        device: device_line(d, &frame),
        history: detail
            .history
            .into_iter()
            .map(|h| StepLine {
                attempt: h.attempt,
                step: h.step,
                state: tr.t(report_id(h.state)),
                state_key: h.state.as_str(),
                message: h.message.unwrap_or_default(),
                percent: h.percent.map(|p| format!("{p} %")).unwrap_or_default(),
                at: frame.when(h.at),
                received: frame.when(h.received_at),
            })
            .collect(),
        frame,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typed_time_is_read_in_the_operators_zone() {
        let t = local_time("2026-12-07T02:30", "Europe/Moscow").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-12-06T23:30:00+00:00");
        assert_eq!(
            local_time("2026-12-07T02:30", "UTC").unwrap().to_rfc3339(),
            "2026-12-07T02:30:00+00:00"
        );
        // Berlin skips 02:00–03:00 on the last Sunday of March.
        assert!(local_time("2026-03-29T02:30", "Europe/Berlin").is_none());
        assert!(local_time("tomorrow", "UTC").is_none());
        assert!(local_time("2026-12-07T02:30", "Mars/Base").is_none());
    }
}
