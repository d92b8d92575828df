//! Stores and when they may be updated: each site's time zone, 24/7 and agreed
//! reboot time, the Openbravo ignore-version-check preference; maintenance
//! windows; the order in which device types of a site are updated; and the
//! variables replicated to terminals.

use askama::Template;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use posup_proto::api::VariableScope;
use posup_proto::rollout::{CreateOrderRule, CreateWindow, SiteSettings, WindowScope};

use super::session::{Posted, Session};
use super::{Fail, Frame, Params, Tr, When, render_form};
use crate::state::AppState;

pub struct SiteLine {
    pub name: String,
    pub address: String,
    pub devices: u64,
    pub time_zone: String,
    pub always_open: bool,
    pub reboot_time: String,
    pub ignore_version_check: bool,
    pub language: &'static str,
}

pub struct WindowLine {
    pub id: i64,
    pub scope: String,
    pub schedule: String,
    pub duration_minutes: u32,
    pub time_zone: String,
    pub open: bool,
    pub next_open: Option<When>,
}

pub struct RuleLine {
    pub id: i64,
    pub device_type: String,
    pub after_type: String,
    pub variable: String,
}

#[derive(Template)]
#[template(path = "sites.html")]
struct SitesPage {
    frame: Frame,
    sites: Vec<SiteLine>,
    windows: Vec<WindowLine>,
    rules: Vec<RuleLine>,
    groups: Vec<(i64, String)>,
    problems: Vec<String>,
}

async fn sites_page(
    state: &AppState,
    session: &Session,
    problems: Vec<String>,
) -> Result<Response, Fail> {
    let frame = Frame::new(session, "sites", "/sites".into());
    let tr = frame.tr;
    let store = state.store();
    let sites = store.list_sites().await?;
    let windows = store.windows(state.clock().now()).await?;
    let rules = store.order_rules().await?;
    let groups: Vec<(i64, String)> = store
        .list_groups(&state.at())
        .await?
        .into_iter()
        .map(|g| (g.id, g.name))
        .collect();
    let group_name = |id: i64| {
        groups
            .iter()
            .find(|(g, _)| *g == id)
            .map(|(_, n)| n.clone())
            .unwrap_or_else(|| id.to_string())
    };
    let refused = !problems.is_empty();
    render_form(
        &SitesPage {
            sites: sites
                .into_iter()
                .map(|s| SiteLine {
                    name: s.name,
                    address: s.address,
                    devices: s.devices,
                    time_zone: s.settings.time_zone,
                    always_open: s.settings.always_open,
                    reboot_time: s.settings.reboot_time.unwrap_or_default(),
                    ignore_version_check: s.ignore_version_check,
                    language: s.settings.language.as_str(),
                })
                .collect(),
            windows: windows
                .into_iter()
                .map(|w| WindowLine {
                    id: w.id,
                    scope: match &w.scope {
                        WindowScope::Site { site } => format!("{} {site}", tr.t("col-site")),
                        WindowScope::Group { group_id } => {
                            format!("{} {}", tr.t("task-group"), group_name(*group_id))
                        }
                    },
                    schedule: w.schedule,
                    duration_minutes: w.duration_minutes,
                    time_zone: w.time_zone,
                    open: w.open,
                    next_open: w.next_open.map(|t| frame.when(t)),
                })
                .collect(),
            rules: rules
                .into_iter()
                .map(|r| RuleLine {
                    id: r.id,
                    device_type: r.device_type,
                    after_type: r.after_type,
                    variable: r.variable.unwrap_or_default(),
                })
                .collect(),
            groups,
            problems,
            frame,
        },
        refused,
    )
}

pub async fn list(State(state): State<AppState>, session: Session) -> Result<Response, Fail> {
    sites_page(&state, &session, Vec::new()).await
}

/// Store errors meant for people come back on the page; others fail it.
async fn or_refused(
    state: &AppState,
    session: &Session,
    done: Result<(), posup_store::Error>,
) -> Result<Response, Fail> {
    match done {
        Ok(()) => Ok(Redirect::to("/sites").into_response()),
        Err(posup_store::Error::Invalid(m) | posup_store::Error::Conflict(m)) => {
            sites_page(state, session, vec![m]).await
        }
        Err(e) => Err(e.into()),
    }
}

/// A site's settings and preference, from its row's form.
pub async fn settings(
    State(state): State<AppState>,
    Params(site): Params<String>,
    posted: Posted,
) -> Result<Response, Fail> {
    let session = &posted.session;
    session.require_act()?;
    let tr = Tr::new(session.account.language);
    let reboot_time = Some(posted.field("reboot_time").to_owned()).filter(|t| !t.is_empty());
    if let Some(t) = &reboot_time
        && chrono::NaiveTime::parse_from_str(t, "%H:%M").is_err()
    {
        let problem = tr.t1("site-reboot-time-invalid", "value", t);
        return sites_page(&state, session, vec![problem]).await;
    }
    let settings = SiteSettings {
        time_zone: posted.field("time_zone").to_owned(),
        always_open: posted.field("always_open") == "on",
        reboot_time,
        language: posup_proto::api::Language::parse(posted.field("language")).unwrap_or_default(),
    };
    let now = state.now_ms();
    let actor = session.actor();
    let mut done = state
        .store()
        .set_site_settings(&site, &settings, now, &actor)
        .await
        .map(|_| ());
    if done.is_ok() {
        let ignore = posted.field("ignore_version_check") == "on";
        done = state
            .store()
            .set_site_preferences(&site, ignore, now, &actor)
            .await;
    }
    or_refused(&state, session, done).await
}

pub async fn create_window(
    State(state): State<AppState>,
    posted: Posted,
) -> Result<Response, Fail> {
    let session = &posted.session;
    session.require_act()?;
    let tr = Tr::new(session.account.language);
    let scope = match (posted.field("site"), posted.field("group")) {
        (site, "") if !site.is_empty() => WindowScope::Site {
            site: site.to_owned(),
        },
        ("", group) if !group.is_empty() => WindowScope::Group {
            group_id: group.parse().map_err(|_| Fail::BadForm)?,
        },
        _ => return sites_page(&state, session, vec![tr.t("window-scope-missing")]).await,
    };
    let duration_minutes = match posted.field("duration_minutes") {
        "" => 0,
        v => match v.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                let problem = tr.t1("window-duration-invalid", "value", v);
                return sites_page(&state, session, vec![problem]).await;
            }
        },
    };
    let body = CreateWindow {
        scope,
        schedule: posted.field("schedule").to_owned(),
        duration_minutes,
        time_zone: match posted.field("time_zone") {
            "" => "UTC".to_owned(),
            zone => zone.to_owned(),
        },
    };
    let done = state
        .store()
        .create_window(&body, state.clock().now(), &session.actor())
        .await
        .map(|_| ());
    or_refused(&state, session, done).await
}

pub async fn create_rule(State(state): State<AppState>, posted: Posted) -> Result<Response, Fail> {
    let session = &posted.session;
    session.require_act()?;
    let body = CreateOrderRule {
        device_type: posted.field("device_type").to_owned(),
        after_type: posted.field("after_type").to_owned(),
        variable: Some(posted.field("variable").to_owned()).filter(|v| !v.is_empty()),
    };
    let done = state
        .store()
        .create_order_rule(&body, state.now_ms(), &session.actor())
        .await
        .map(|_| ());
    or_refused(&state, session, done).await
}

pub async fn delete(
    State(state): State<AppState>,
    Params((what, id)): Params<(String, i64)>,
    posted: Posted,
) -> Result<Response, Fail> {
    let session = &posted.session;
    session.require_act()?;
    let (now, actor) = (state.now_ms(), session.actor());
    match what.as_str() {
        "windows" => state.store().delete_window(id, now, &actor).await?,
        "order-rules" => state.store().delete_order_rule(id, now, &actor).await?,
        _ => return Err(Fail::BadForm),
    }
    Ok(Redirect::to("/sites").into_response())
}

pub struct VariableLine {
    pub name: String,
    pub scope: String,
    /// The scope as the delete form sends it back.
    pub scope_kind: &'static str,
    pub scope_value: String,
    pub value: String,
    pub secret: bool,
    pub change_id: i64,
    pub updated: When,
}

#[derive(Template)]
#[template(path = "variables.html")]
struct VariablesPage {
    frame: Frame,
    variables: Vec<VariableLine>,
    problems: Vec<String>,
}

async fn variables_page(
    state: &AppState,
    session: &Session,
    problems: Vec<String>,
) -> Result<Response, Fail> {
    let frame = Frame::new(session, "variables", "/variables".into());
    let tr = frame.tr;
    let variables = state.store().list_variables(None).await?;
    let groups: Vec<(i64, String)> = state
        .store()
        .list_groups(&state.at())
        .await?
        .into_iter()
        .map(|g| (g.id, g.name))
        .collect();
    let refused = !problems.is_empty();
    render_form(
        &VariablesPage {
            variables: variables
                .into_iter()
                .map(|v| {
                    let (scope, scope_kind, scope_value) = match &v.scope {
                        VariableScope::All => (tr.t("variable-all"), "all", String::new()),
                        VariableScope::Site { site } => {
                            (format!("{} {site}", tr.t("col-site")), "site", site.clone())
                        }
                        VariableScope::Group { group_id } => {
                            let name = groups
                                .iter()
                                .find(|(g, _)| g == group_id)
                                .map(|(_, n)| n.clone())
                                .unwrap_or_default();
                            (
                                format!("{} {name}", tr.t("task-group")),
                                "group",
                                group_id.to_string(),
                            )
                        }
                        VariableScope::Device { device_id } => (
                            format!("{} {device_id}", tr.t("variable-device")),
                            "device",
                            device_id.to_string(),
                        ),
                    };
                    VariableLine {
                        value: match (&v.value, v.secret) {
                            (_, true) | (None, _) => "••••••".into(),
                            (Some(value), false) => value.clone(),
                        },
                        name: v.name,
                        scope,
                        scope_kind,
                        scope_value,
                        secret: v.secret,
                        change_id: v.change_id,
                        updated: frame.when(v.updated_at),
                    }
                })
                .collect(),
            problems,
            frame,
        },
        refused,
    )
}

pub async fn variables(State(state): State<AppState>, session: Session) -> Result<Response, Fail> {
    variables_page(&state, &session, Vec::new()).await
}

/// The scope a variable form names: `scope` is `all`, `site`, `group` or `device`,
/// and `target` the site's name or the group's or device's number.
fn scope_of(tr: &Tr, posted: &Posted) -> Result<VariableScope, String> {
    let target = posted.field("target");
    let number = |problem: &str| target.parse::<i64>().map_err(|_| tr.t(problem));
    match posted.field("scope") {
        "site" if !target.is_empty() => Ok(VariableScope::Site {
            site: target.to_owned(),
        }),
        "group" => Ok(VariableScope::Group {
            group_id: number("variable-group-not-number")?,
        }),
        "device" => Ok(VariableScope::Device {
            device_id: number("variable-device-not-number")?,
        }),
        "site" => Err(tr.t("variable-site-missing")),
        _ => Ok(VariableScope::All),
    }
}

pub async fn set_variable(State(state): State<AppState>, posted: Posted) -> Result<Response, Fail> {
    let session = &posted.session;
    session.require_act()?;
    let tr = Tr::new(session.account.language);
    let scope = match scope_of(&tr, &posted) {
        Ok(scope) => scope,
        Err(problem) => return variables_page(&state, session, vec![problem]).await,
    };
    let delete = posted.field("delete") == "yes";
    let value = (!delete).then(|| posted.field("value"));
    let written = state
        .store()
        .write_variable(
            posted.field("name"),
            &scope,
            value,
            posted.field("secret") == "on",
            state.now_ms(),
            &session.actor(),
        )
        .await;
    match written {
        Ok(_) => Ok(Redirect::to("/variables").into_response()),
        Err(posup_store::Error::Invalid(m) | posup_store::Error::Conflict(m)) => {
            variables_page(&state, session, vec![m]).await
        }
        Err(e) => Err(e.into()),
    }
}
