//! Groups: All/Even/Odd, static and filter groups; create, edit, delete, members;
//! and failed devices of a task gathered into a group.

use askama::Template;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use posup_proto::api::{
    CreateGroup, DeviceQuery, FailedToGroup, GroupFilter, GroupKind, GroupView, UpdateGroup,
};

use super::session::{Posted, Session};
use super::{Fail, Frame, Params, Tr, render_form};
use crate::state::AppState;

fn kind_id(kind: GroupKind) -> &'static str {
    match kind {
        GroupKind::All => "group-all",
        GroupKind::Even => "group-even",
        GroupKind::Odd => "group-odd",
        GroupKind::Static => "group-static",
        GroupKind::Filter => "group-filter",
    }
}

/// A filter in words: `site = Store 12 · online`.
fn filter_text(tr: &Tr, f: &GroupFilter) -> String {
    let mut parts = Vec::new();
    for (id, value) in [
        ("col-site", &f.site),
        ("col-device-type", &f.device_type),
        ("col-version", &f.version),
        ("tags", &f.tag),
    ] {
        if let Some(v) = value {
            parts.push(format!("{} = {v}", tr.t(id)));
        }
    }
    match f.online {
        Some(true) => parts.push(tr.t("online")),
        Some(false) => parts.push(tr.t("offline")),
        None => {}
    }
    parts.join(" · ")
}

pub struct GroupLine {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub kind: String,
    pub filter: String,
    pub devices: u64,
    pub builtin: bool,
}

fn line(tr: &Tr, g: GroupView) -> GroupLine {
    GroupLine {
        id: g.id,
        kind: tr.t(kind_id(g.kind)),
        filter: g
            .filter
            .as_ref()
            .map(|f| filter_text(tr, f))
            .unwrap_or_default(),
        name: g.name,
        description: g.description,
        devices: g.devices,
        builtin: g.builtin,
    }
}

/// What the group form holds, as typed.
#[derive(Default)]
pub struct GroupForm {
    pub name: String,
    pub description: String,
    pub kind: String,
    pub site: String,
    pub device_type: String,
    pub version: String,
    pub online: String,
    pub tag: String,
}

impl GroupForm {
    fn of(posted: &Posted) -> GroupForm {
        let f = |n: &str| posted.field(n).to_owned();
        GroupForm {
            name: f("name"),
            description: f("description"),
            kind: f("kind"),
            site: f("site"),
            device_type: f("device_type"),
            version: f("version"),
            online: f("online"),
            tag: f("tag"),
        }
    }

    fn filter(&self) -> GroupFilter {
        let text = |v: &str| Some(v.to_owned()).filter(|v| !v.is_empty());
        GroupFilter {
            site: text(&self.site),
            device_type: text(&self.device_type),
            version: text(&self.version),
            online: match self.online.as_str() {
                "yes" => Some(true),
                "no" => Some(false),
                _ => None,
            },
            tag: text(&self.tag),
        }
    }
}

#[derive(Template)]
#[template(path = "groups.html")]
struct GroupsPage {
    frame: Frame,
    groups: Vec<GroupLine>,
    problems: Vec<String>,
    form: GroupForm,
}

async fn groups_page(
    state: &AppState,
    session: &Session,
    problems: Vec<String>,
    form: GroupForm,
) -> Result<Response, Fail> {
    let frame = Frame::new(session, "groups", "/groups".into());
    let tr = frame.tr;
    let groups = state.store().list_groups(&state.at()).await?;
    let refused = !problems.is_empty();
    render_form(
        &GroupsPage {
            groups: groups.into_iter().map(|g| line(&tr, g)).collect(),
            problems,
            form,
            frame,
        },
        refused,
    )
}

pub async fn list(State(state): State<AppState>, session: Session) -> Result<Response, Fail> {
    groups_page(&state, &session, Vec::new(), GroupForm::default()).await
}

pub async fn create(State(state): State<AppState>, posted: Posted) -> Result<Response, Fail> {
    let session = &posted.session;
    session.require_act()?;
    let tr = Tr::new(session.account.language);
    let form = GroupForm::of(&posted);
    let kind = match form.kind.as_str() {
        "filter" => GroupKind::Filter,
        _ => GroupKind::Static,
    };
    let mut problems = Vec::new();
    if form.name.is_empty() {
        problems.push(tr.t("group-name-missing"));
    }
    let filter = form.filter();
    if kind == GroupKind::Filter && filter == GroupFilter::default() {
        problems.push(tr.t("group-filter-missing"));
    }
    if !problems.is_empty() {
        return groups_page(&state, session, problems, form).await;
    }
    let body = CreateGroup {
        name: form.name.clone(),
        description: form.description.clone(),
        kind,
        filter: (kind == GroupKind::Filter).then_some(filter),
        devices: Vec::new(),
    };
    match state
        .store()
        .create_group(&body, &state.at(), &session.actor())
        .await
    {
        Ok(group) => Ok(Redirect::to(&format!("/groups/{}", group.id)).into_response()),
        Err(posup_store::Error::Invalid(m) | posup_store::Error::Conflict(m)) => {
            groups_page(&state, session, vec![m], form).await
        }
        Err(e) => Err(e.into()),
    }
}

pub struct Member {
    pub id: i64,
    pub guid: String,
    pub site: String,
    pub name: String,
    pub number: u32,
    pub version: String,
}

#[derive(Template)]
#[template(path = "group.html")]
struct GroupPage {
    frame: Frame,
    group: GroupLine,
    is_static: bool,
    is_filter: bool,
    form: GroupForm,
    members: Vec<Member>,
    more: u64,
    problems: Vec<String>,
}

const MEMBERS_SHOWN: u32 = 500;

async fn group_page(
    state: &AppState,
    session: &Session,
    id: i64,
    problems: Vec<String>,
) -> Result<Response, Fail> {
    let frame = Frame::new(session, "groups", format!("/groups/{id}"));
    let tr = frame.tr;
    let at = state.at();
    let group = state
        .store()
        .group(id, &at)
        .await?
        .ok_or_else(|| posup_store::Error::NotFound(tr.t1("group-no-such", "id", id)))?;
    let members = state
        .store()
        .list_devices(
            &DeviceQuery {
                group: Some(id),
                per_page: Some(MEMBERS_SHOWN),
                ..Default::default()
            },
            &at,
        )
        .await?;
    let filter = group.filter.clone().unwrap_or_default();
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let form = GroupForm {
        name: group.name.clone(),
        description: group.description.clone(),
        kind: String::new(),
        site: text(&filter.site),
        device_type: text(&filter.device_type),
        version: text(&filter.version),
        online: match filter.online {
            Some(true) => "yes".into(),
            Some(false) => "no".into(),
            None => String::new(),
        },
        tag: text(&filter.tag),
    };
    let refused = !problems.is_empty();
    render_form(
        &GroupPage {
            is_static: group.kind == GroupKind::Static,
            is_filter: group.kind == GroupKind::Filter,
            more: members.total.saturating_sub(members.items.len() as u64),
            members: members
                .items
                .into_iter()
                .map(|d| Member {
                    id: d.id,
                    guid: d.guid,
                    site: d.site,
                    name: d.name,
                    number: d.number,
                    version: d.version,
                })
                .collect(),
            group: line(&tr, group),
            form,
            problems,
            frame,
        },
        refused,
    )
}

pub async fn page(
    State(state): State<AppState>,
    session: Session,
    Params(id): Params<i64>,
) -> Result<Response, Fail> {
    group_page(&state, &session, id, Vec::new()).await
}

/// The devices a form ticked (`device` fields), or named by GUID, one per line
/// (`guids`).
async fn chosen_devices(
    state: &AppState,
    posted: &Posted,
) -> Result<(Vec<i64>, Vec<String>), Fail> {
    let mut ids: Vec<i64> = posted
        .all("device")
        .filter_map(|v| v.parse().ok())
        .collect();
    let mut unknown = Vec::new();
    for guid in posted
        .field("guids")
        .lines()
        .map(str::trim)
        .filter(|g| !g.is_empty())
    {
        let found = state
            .store()
            .list_devices(
                &DeviceQuery {
                    guid: Some(guid.to_owned()),
                    per_page: Some(2),
                    ..Default::default()
                },
                &state.at(),
            )
            .await?;
        match found.items.iter().find(|d| d.guid == guid) {
            Some(d) => ids.push(d.id),
            None => unknown.push(guid.to_owned()),
        }
    }
    Ok((ids, unknown))
}

pub async fn command(
    State(state): State<AppState>,
    Params((id, command)): Params<(i64, String)>,
    posted: Posted,
) -> Result<Response, Fail> {
    let session = &posted.session;
    session.require_act()?;
    let tr = Tr::new(session.account.language);
    let actor = session.actor();
    let now = state.now_ms();
    match command.as_str() {
        "edit" => {
            let form = GroupForm::of(&posted);
            let current = state.store().group(id, &state.at()).await?;
            let is_filter = current.is_some_and(|g| g.kind == GroupKind::Filter);
            let body = UpdateGroup {
                name: Some(form.name.clone()).filter(|n| !n.is_empty()),
                description: Some(form.description.clone()),
                filter: is_filter.then(|| form.filter()),
            };
            if let Err(e) = state
                .store()
                .update_group(id, &body, &state.at(), &actor)
                .await
            {
                return match e {
                    posup_store::Error::Invalid(m) | posup_store::Error::Conflict(m) => {
                        group_page(&state, session, id, vec![m]).await
                    }
                    e => Err(e.into()),
                };
            }
        }
        "add" | "remove" => {
            let (devices, unknown) = chosen_devices(&state, &posted).await?;
            if !unknown.is_empty() {
                let problem = tr.t1("group-unknown-guids", "guids", unknown.join(", "));
                return group_page(&state, session, id, vec![problem]).await;
            }
            if command == "add" {
                state
                    .store()
                    .add_group_members(id, &devices, now, &actor)
                    .await?;
            } else {
                state
                    .store()
                    .remove_group_members(id, &devices, now, &actor)
                    .await?;
            }
        }
        "delete" => {
            state.store().delete_group(id, now, &actor).await?;
            return Ok(Redirect::to("/groups").into_response());
        }
        _ => return Err(Fail::BadForm),
    }
    Ok(Redirect::to(&format!("/groups/{id}")).into_response())
}

/// The failed devices ticked on a task's page, into a new group or an existing
/// static one.
pub async fn from_failed(
    State(state): State<AppState>,
    Params(task): Params<i64>,
    posted: Posted,
) -> Result<Response, Fail> {
    let session = &posted.session;
    session.require_act()?;
    let tr = Tr::new(session.account.language);
    let ticked: Vec<i64> = posted
        .all("device")
        .filter_map(|v| v.parse().ok())
        .collect();
    let refuse = |message: String| Fail::Store(posup_store::Error::Invalid(message));
    if ticked.is_empty() {
        return Err(refuse(tr.t("group-none-ticked")));
    }
    let actor = session.actor();
    let group = match (posted.field("name"), posted.field("group")) {
        ("", "") => return Err(refuse(tr.t("group-new-or-existing"))),
        (name, "") => {
            state
                .store()
                .failed_to_group(
                    task,
                    &FailedToGroup {
                        name: name.to_owned(),
                        description: tr.t1("group-from-task", "task", task),
                        devices: Some(ticked),
                    },
                    &state.at(),
                    &actor,
                )
                .await?
                .id
        }
        (_, existing) => {
            let id: i64 = existing.parse().map_err(|_| Fail::BadForm)?;
            state
                .store()
                .add_group_members(id, &ticked, state.now_ms(), &actor)
                .await?;
            id
        }
    };
    Ok(Redirect::to(&format!("/groups/{group}")).into_response())
}
