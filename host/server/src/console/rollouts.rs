//! Rollouts: staged waves over groups with thresholds, notice and conditions;
//! live progress per wave and per site; pause, resume, advance; what each store
//! was told and reported.

use askama::Template;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use posup_proto::TaskKind;
use posup_proto::api::TaskCounts;
use posup_proto::rollout::{CreateRollout, RolloutState, RolloutView, WaveSpec};
use posup_store::RolloutCommand;

use super::session::{Posted, Session};
use super::tasks::{Choice, kind_id, local_time};
use super::{Fail, Frame, Params, Tr, When, render, render_form};
use crate::state::AppState;

/// Waves a new rollout's form offers.
const WAVE_ROWS: usize = 4;

fn state_id(state: RolloutState) -> &'static str {
    match state {
        RolloutState::Scheduled => "task-scheduled",
        RolloutState::Running => "task-running",
        RolloutState::Waiting => "rollout-waiting",
        RolloutState::Paused => "task-paused",
        RolloutState::Finished => "task-finished",
    }
}

#[derive(Clone)]
pub struct Counts {
    pub total: u64,
    pub offline: u64,
    pub inprogress: u64,
    pub failed: u64,
    pub success: u64,
}

impl From<TaskCounts> for Counts {
    fn from(c: TaskCounts) -> Counts {
        Counts {
            total: c.total,
            offline: c.offline,
            inprogress: c.inprogress,
            failed: c.failed,
            success: c.success,
        }
    }
}

#[derive(Clone)]
pub struct RolloutLine {
    pub id: i64,
    pub name: String,
    pub kind: String,
    pub state: String,
    pub state_key: &'static str,
    pub pause_reason: String,
    /// `2 / 3`: the wave under way of all.
    pub wave: String,
    pub packages: String,
    pub start: When,
    pub counts: Counts,
    pub can_pause: bool,
    pub can_resume: bool,
    pub can_advance: bool,
}

fn line(r: &RolloutView, frame: &Frame) -> RolloutLine {
    let tr = frame.tr;
    RolloutLine {
        id: r.id,
        name: r.name.clone(),
        kind: tr.t(kind_id(r.kind)),
        state: tr.t(state_id(r.state)),
        state_key: r.state.as_str(),
        pause_reason: r.pause_reason.clone().unwrap_or_default(),
        wave: format!(
            "{} / {}",
            (r.wave + 1).min(r.waves.len() as u32),
            r.waves.len()
        ),
        packages: r
            .packages
            .iter()
            .map(|p| format!("{} {}", p.device_type, p.version))
            .collect::<Vec<_>>()
            .join(", "),
        start: frame.when(r.start_at),
        counts: r.counts.into(),
        can_pause: matches!(
            r.state,
            RolloutState::Scheduled | RolloutState::Running | RolloutState::Waiting
        ),
        can_resume: r.state == RolloutState::Paused,
        can_advance: r.state == RolloutState::Waiting,
    }
}

#[derive(Template)]
#[template(path = "rollouts.html")]
struct ListPage {
    frame: Frame,
    rollouts: Vec<RolloutLine>,
}

pub async fn list(State(state): State<AppState>, session: Session) -> Result<Response, Fail> {
    let frame = Frame::new(&session, "rollouts", "/rollouts".into());
    let at = state.at();
    let rollouts = state.store().list_rollouts(&at).await?;
    render(&ListPage {
        rollouts: rollouts.iter().map(|r| line(r, &frame)).collect(),
        frame,
    })
}

pub struct WaveLine {
    pub position: u32,
    pub group: String,
    pub success_percent: u8,
    pub auto_advance: bool,
    pub started: Option<When>,
    pub current: bool,
    pub counts: Counts,
}

pub struct SiteLine {
    pub site: String,
    pub counts: Counts,
    pub reported: Option<When>,
    pub report: String,
    pub announcement: String,
}

/// The part of a rollout's page that refreshes itself.
#[derive(Template)]
#[template(path = "rollout_live.html")]
struct Live {
    frame: Frame,
    rollout: RolloutLine,
    waves: Vec<WaveLine>,
    sites: Vec<SiteLine>,
}

#[derive(Template)]
#[template(path = "rollout.html")]
struct RolloutPage {
    frame: Frame,
    rollout: RolloutLine,
    conditions: String,
    notice_override: String,
    announced: When,
    live: Live,
}

async fn live_of(
    state: &AppState,
    session: &Session,
    id: i64,
) -> Result<(Live, RolloutView), Fail> {
    let frame = Frame::new(session, "rollouts", format!("/rollouts/{id}"));
    let tr = frame.tr;
    let at = state.at();
    let rollout = state
        .store()
        .rollout(id, &at)
        .await?
        .ok_or_else(|| posup_store::Error::NotFound(tr.t1("rollout-no-such", "id", id)))?;
    let sites = state.store().rollout_sites(id, &at).await?;
    let waves = rollout
        .waves
        .iter()
        .map(|w| WaveLine {
            position: w.position + 1,
            group: w.group_name.clone(),
            success_percent: w.success_percent,
            auto_advance: w.auto_advance,
            started: w.started_at.map(|t| frame.when(t)),
            current: w.position == rollout.wave && rollout.state != RolloutState::Finished,
            counts: w.counts.into(),
        })
        .collect();
    let sites = sites
        .into_iter()
        .map(|(site, announcement)| SiteLine {
            site: site.site,
            counts: site.counts.into(),
            reported: site.reported_at.map(|t| frame.when(t)),
            report: site.report.unwrap_or_default(),
            announcement,
        })
        .collect();
    Ok((
        Live {
            rollout: line(&rollout, &frame),
            waves,
            sites,
            frame,
        },
        rollout,
    ))
}

pub async fn page(
    State(state): State<AppState>,
    session: Session,
    Params(id): Params<i64>,
) -> Result<Response, Fail> {
    let (live, view) = live_of(&state, &session, id).await?;
    let frame = Frame::new(&session, "rollouts", format!("/rollouts/{id}"));
    render(&RolloutPage {
        rollout: live.rollout.clone(),
        conditions: view.conditions,
        notice_override: view.notice_override.unwrap_or_default(),
        announced: frame.when(view.announced_at),
        live,
        frame,
    })
}

pub async fn live(
    State(state): State<AppState>,
    session: Session,
    Params(id): Params<i64>,
) -> Result<Response, Fail> {
    render(&live_of(&state, &session, id).await?.0)
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
        "pause" => RolloutCommand::Pause,
        "resume" => RolloutCommand::Resume,
        "advance" => RolloutCommand::Advance,
        "delete" => {
            state
                .store()
                .delete_rollout(id, state.now_ms(), &actor)
                .await?;
            return Ok(Redirect::to("/rollouts").into_response());
        }
        _ => return Err(Fail::BadForm),
    };
    state
        .store()
        .command_rollout(id, command, &state.at(), &actor)
        .await?;
    Ok(Redirect::to(&format!("/rollouts/{id}")).into_response())
}

/// One row of the waves in the form, as typed.
#[derive(Default, Clone)]
pub struct WaveRow {
    pub index: usize,
    pub group: String,
    pub success_percent: String,
    pub auto_advance: bool,
}

#[derive(Template)]
#[template(path = "rollout_new.html")]
struct NewPage {
    frame: Frame,
    problems: Vec<String>,
    name: String,
    kinds: Vec<Choice>,
    packages: Vec<Choice>,
    groups: Vec<(String, String)>,
    waves: Vec<WaveRow>,
    max_failed: String,
    max_failed_percent: String,
    start_now: bool,
    start_at: String,
    conditions: String,
    notice_override: String,
}

#[derive(Default)]
struct Typed {
    name: String,
    kind: String,
    packages: Vec<String>,
    waves: Vec<WaveRow>,
    max_failed: String,
    max_failed_percent: String,
    start: String,
    start_at: String,
    conditions: String,
    notice_override: String,
}

async fn new_page(
    state: &AppState,
    session: &Session,
    typed: Typed,
    problems: Vec<String>,
) -> Result<Response, Fail> {
    let frame = Frame::new(session, "rollouts", "/rollouts/new".into());
    let tr = frame.tr;
    let groups = state.store().list_groups(&state.at()).await?;
    let packages = state.store().list_packages(None).await?;
    let mut waves = typed.waves;
    waves.resize_with(WAVE_ROWS, WaveRow::default);
    for (i, w) in waves.iter_mut().enumerate() {
        w.index = i;
        if w.success_percent.is_empty() {
            w.success_percent = "100".into();
        }
    }
    let refused = !problems.is_empty();
    render_form(
        &NewPage {
            problems,
            name: typed.name,
            kinds: TaskKind::ALL
                .into_iter()
                .filter(|k| *k != TaskKind::Download)
                .map(|k| Choice {
                    value: k.as_str().into(),
                    text: tr.t(kind_id(k)),
                    selected: typed.kind == k.as_str(),
                })
                .collect(),
            packages: packages
                .into_iter()
                .rev()
                .map(|p| Choice {
                    selected: typed.packages.contains(&p.id.to_string()),
                    value: p.id.to_string(),
                    text: format!("{} · {} · {}", p.device_type, p.file_name, p.version),
                })
                .collect(),
            groups: groups
                .into_iter()
                .map(|g| {
                    (
                        g.id.to_string(),
                        format!("{} ({})", g.name, tr.n("devices-count", g.devices)),
                    )
                })
                .collect(),
            waves,
            max_failed: typed.max_failed,
            max_failed_percent: typed.max_failed_percent,
            start_now: typed.start != "at",
            start_at: typed.start_at,
            conditions: typed.conditions,
            notice_override: typed.notice_override,
            frame,
        },
        refused,
    )
}

pub async fn new(State(state): State<AppState>, session: Session) -> Result<Response, Fail> {
    session.require_act()?;
    let typed = Typed {
        waves: (0..3)
            .map(|_| WaveRow {
                auto_advance: true,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    new_page(&state, &session, typed, Vec::new()).await
}

/// A whole number from `low` to `high`, or the words for what is wrong.
fn number(tr: &Tr, field: &str, text: &str, low: u32, high: u32) -> Result<Option<u32>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    match text.parse::<u32>() {
        Ok(n) if (low..=high).contains(&n) => Ok(Some(n)),
        _ => Err(format!(
            "{} {}",
            tr.t(field),
            tr.t1("rollout-number-range", "range", format!("{low}–{high}"))
        )),
    }
}

pub async fn create(State(state): State<AppState>, posted: Posted) -> Result<Response, Fail> {
    let session = &posted.session;
    session.require_act()?;
    let tr = Tr::new(session.account.language);
    let waves: Vec<WaveRow> = (0..WAVE_ROWS)
        .map(|i| WaveRow {
            index: i,
            group: posted.field(&format!("wave{i}_group")).to_owned(),
            success_percent: posted.field(&format!("wave{i}_success")).to_owned(),
            auto_advance: posted.field(&format!("wave{i}_auto")) == "on",
        })
        .collect();
    let typed = Typed {
        name: posted.field("name").to_owned(),
        kind: posted.field("kind").to_owned(),
        packages: posted.all("package").map(str::to_owned).collect(),
        max_failed: posted.field("max_failed").to_owned(),
        max_failed_percent: posted.field("max_failed_percent").to_owned(),
        start: posted.field("start").to_owned(),
        start_at: posted.field("start_at").to_owned(),
        conditions: posted.field("conditions").to_owned(),
        notice_override: posted.field("notice_override").to_owned(),
        waves: waves.clone(),
    };
    let mut problems = Vec::new();
    let kind = TaskKind::parse(&typed.kind).filter(|k| *k != TaskKind::Download);
    if kind.is_none() {
        problems.push(tr.t("rollout-kind-missing"));
    }
    let packages: Vec<i64> = typed
        .packages
        .iter()
        .filter_map(|p| p.parse().ok())
        .collect();
    if packages.is_empty() {
        problems.push(tr.t("rollout-packages-missing"));
    }
    let mut specs = Vec::new();
    for w in waves.iter().filter(|w| !w.group.is_empty()) {
        let Ok(group_id) = w.group.parse::<i64>() else {
            return Err(Fail::BadForm);
        };
        match number(&tr, "rollout-success", &w.success_percent, 1, 100) {
            Ok(success) => specs.push(WaveSpec {
                group_id,
                success_percent: success.unwrap_or(100) as u8,
                auto_advance: w.auto_advance,
            }),
            Err(p) => problems.push(p),
        }
    }
    if specs.is_empty() {
        problems.push(tr.t("rollout-waves-missing"));
    }
    let max_failed = number(&tr, "rollout-max-failed", &typed.max_failed, 1, u32::MAX)
        .unwrap_or_else(|p| {
            problems.push(p);
            None
        });
    let max_failed_percent = number(
        &tr,
        "rollout-max-failed-percent",
        &typed.max_failed_percent,
        1,
        100,
    )
    .unwrap_or_else(|p| {
        problems.push(p);
        None
    });
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
    let Some(kind) = kind.filter(|_| problems.is_empty()) else {
        return new_page(&state, session, typed, problems).await;
    };
    let body = CreateRollout {
        name: Some(typed.name.clone()).filter(|n| !n.is_empty()),
        kind,
        packages,
        waves: specs,
        max_failed,
        max_failed_percent: max_failed_percent.map(|p| p as u8),
        start_at,
        conditions: typed.conditions.clone(),
        notice_override,
    };
    match state
        .store()
        .create_rollout(&body, &state.at(), &session.actor())
        .await
    {
        Ok(view) => Ok(Redirect::to(&format!("/rollouts/{}", view.id)).into_response()),
        Err(posup_store::Error::Invalid(m) | posup_store::Error::Conflict(m)) => {
            new_page(&state, session, typed, vec![m]).await
        }
        Err(e) => Err(e.into()),
    }
}
