//! Rollouts: a release (one package per device type) carried through waves of
//! groups, with a success threshold per wave, an error threshold that pauses the
//! whole rollout, the 24-hour notice with its announcement per site, and a plain
//! text report per site when its part ends.
//!
//! ```text
//!   create ──(start later)──▶ Scheduled ──(start time)──▶ Running
//!   create ──(start now)─────────────────────────────────▶ Running
//!   Running ──(wave met its threshold, auto)──▶ Running (next wave)
//!   Running ──(wave met its threshold, manual)──▶ Waiting ──advance──▶ Running
//!   Running ──(last wave met its threshold and ended)──▶ Finished
//!   Running ──(error threshold | wave ended below its threshold)──▶ Paused
//!   any but Finished ──pause──▶ Paused ──resume──▶ Running | Scheduled
//! ```
//!
//! `create` makes and commands rollouts, `tick` moves them along (the decisions
//! themselves are `posup_policy::rollout`'s), `report` writes the stores'
//! announcements and reports; this file reads them.
//!
//! Each started wave has one task per package. [`Store::tick_rollouts`] moves
//! rollouts along and adds devices that joined a started wave's group since, so a
//! running rollout picks them up. It is safe to run from several replicas: every
//! change is a conditional update in one transaction.

use std::collections::BTreeMap;

use posup_policy::rollout::{self, Decision};
use posup_policy::text::{self, Impact};
use posup_proto::TaskKind;
use posup_proto::api::TaskCounts;
use posup_proto::rollout::{
    CreateRollout, RolloutPackage, RolloutSite, RolloutState, RolloutView, SiteMessage, WaveView,
};
use serde_json::json;

use crate::notifications::Notice;
use crate::sql::{Arg, Cond, Sql};
use crate::tasks::counts_of;
use crate::{At, Error, Result, Store, ts};

mod create;
mod report;
mod tick;

pub use tick::Ticked;

/// How long before its start an Update must be announced.
pub const NOTICE: chrono::Duration = chrono::Duration::hours(24);

/// Refuses an Update starting less than [`NOTICE`] after its announcement (now)
/// unless an override reason is given.
pub(crate) fn check_notice(
    what: &str,
    kind: TaskKind,
    start_at: i64,
    now: i64,
    notice_override: Option<&str>,
) -> Result<()> {
    if let Some(reason) = notice_override
        && (reason.trim().is_empty() || reason.len() > 1000)
    {
        return Err(Error::Invalid(format!(
            "{what}: the notice override needs a reason of 1 to 1000 characters"
        )));
    }
    let earliest = now + NOTICE.num_milliseconds();
    if kind == TaskKind::Update && start_at < earliest && notice_override.is_none() {
        return Err(Error::Invalid(format!(
            "{what}: an Update must start at least 24 hours after it is announced (now, {}): start it at {} or later, \
             or have an administrator give `notice_override` with the reason",
            ts(now).format("%Y-%m-%d %H:%M UTC"),
            ts(earliest).format("%Y-%m-%d %H:%M UTC"),
        )));
    }
    Ok(())
}

/// An operator's command on a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutCommand {
    Pause,
    Resume,
    /// Start the next wave of a Waiting rollout.
    Advance,
}

impl RolloutCommand {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutCommand::Pause => "pause",
            RolloutCommand::Resume => "resume",
            RolloutCommand::Advance => "advance",
        }
    }
}

/// A package as announcements and reports show it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct ReleaseRow {
    pub id: i64,
    pub device_type: String,
    pub file_name: String,
    pub version: String,
    pub changelog: String,
}

impl ReleaseRow {
    fn release(&self) -> text::Release<'_> {
        text::Release {
            device_type: &self.device_type,
            version: &self.version,
            file_name: &self.file_name,
            changelog: &self.changelog,
        }
    }
}

/// The releases for the device types a site has: a store is told only of the
/// software its own terminals get.
fn releases_for<'a>(
    releases: &'a [ReleaseRow],
    device_types: impl Iterator<Item = &'a str> + Clone,
) -> Vec<text::Release<'a>> {
    releases
        .iter()
        .filter(|r| device_types.clone().any(|t| t == r.device_type))
        .map(ReleaseRow::release)
        .collect()
}

#[derive(sqlx::FromRow)]
struct NodeRow {
    site: String,
    address: String,
    name: String,
    device_type: String,
}

/// A site of a rollout: name, announcement, report, when reported.
type SiteRow = (String, String, Option<String>, Option<i64>);
/// Parts per site: name, total, failed, success, offline.
type SiteCounts = (String, i64, i64, i64, i64);

#[derive(sqlx::FromRow)]
struct RolloutRow {
    id: i64,
    name: String,
    kind: String,
    state: String,
    wave: i64,
    pause_reason: Option<String>,
    max_failed: Option<i64>,
    max_failed_percent: Option<i64>,
    conditions: String,
    start_at: i64,
    announced_at: i64,
    notice_override: Option<String>,
    created_at: i64,
    finished_at: Option<i64>,
}

const ROLLOUT_SELECT: &str = "SELECT id, name, kind, state, wave, pause_reason, max_failed, max_failed_percent, conditions, \
    start_at, announced_at, notice_override, created_at, finished_at FROM rollouts";

#[derive(sqlx::FromRow)]
struct WaveRow {
    position: i64,
    group_id: Option<i64>,
    group_name: String,
    success_percent: i64,
    auto_advance: bool,
    started_at: Option<i64>,
    searched_at: Option<i64>,
    searched_members: Option<i64>,
    searched_max_device: Option<i64>,
}

/// The wave columns [`WaveRow`] reads.
const WAVE_COLUMNS: &str = "position, group_id, group_name, success_percent, auto_advance, started_at, \
    searched_at, searched_members, searched_max_device";

fn parse_state(s: &str) -> Result<RolloutState> {
    RolloutState::parse(s).ok_or_else(|| Error::Corrupt(format!("rollout state `{s}`")))
}

fn parse_kind(s: &str) -> Result<TaskKind> {
    TaskKind::parse(s).ok_or_else(|| Error::Corrupt(format!("task kind `{s}`")))
}

/// The kind as announcements name it.
fn kind_label(kind: TaskKind) -> &'static str {
    match kind {
        TaskKind::Download => "Download",
        TaskKind::Update => "Update",
        TaskKind::ForcedUpdate => "Forced update",
    }
}

/// `SELECT … FROM devices d WHERE d.device_type IN (types) AND (cond1 OR cond2 …)`
/// conditions: the devices a set of groups covers for a set of device types.
fn targets(types: &[String], groups: &[Cond]) -> Cond {
    let mut c = Cond::new("d.device_type IN (");
    for (i, t) in types.iter().enumerate() {
        if i > 0 {
            c.push(", ");
        }
        c.bind(t.as_str());
    }
    c.push(") AND (");
    for (i, g) in groups.iter().enumerate() {
        if i > 0 {
            c.push(" OR ");
        }
        c.push("(").append(g).push(")");
    }
    if groups.is_empty() {
        c.push("1 = 0");
    }
    c.push(")");
    c
}

impl Store {
    async fn rollout_row(&self, id: i64) -> Result<Option<RolloutRow>> {
        Ok(with_read!(self, pool => {
            sqlx::query_as(&format!("{ROLLOUT_SELECT} WHERE id = $1")).bind(id).fetch_optional(pool).await?
        }))
    }

    async fn rollout_view(&self, r: RolloutRow, at: &At) -> Result<RolloutView> {
        let (packages, waves, tasks): (Vec<RolloutPackage>, Vec<WaveRow>, Vec<(i64, i64)>) = with_read!(self, pool => {
            let packages = sqlx::query_as::<_, (i64, String, String, String)>(
                "SELECT p.id, p.device_type, p.file_name, p.version FROM rollout_packages rp JOIN packages p ON p.id = rp.package_id \
                 WHERE rp.rollout_id = $1 ORDER BY p.device_type",
            )
            .bind(r.id)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|(id, device_type, file_name, version)| RolloutPackage { id, device_type, file_name, version })
            .collect();
            let waves = sqlx::query_as::<_, WaveRow>(&format!(
                "SELECT {WAVE_COLUMNS} FROM rollout_waves WHERE rollout_id = $1 ORDER BY position"
            ))
            .bind(r.id)
            .fetch_all(pool)
            .await?;
            let tasks = sqlx::query_as::<_, (i64, i64)>("SELECT id, wave FROM tasks WHERE rollout_id = $1 ORDER BY id")
                .bind(r.id)
                .fetch_all(pool)
                .await?;
            (packages, waves, tasks)
        });
        let mut views = Vec::with_capacity(waves.len());
        let mut all = TaskCounts::default();
        for w in waves {
            let ids: Vec<i64> = tasks
                .iter()
                .filter(|(_, wave)| *wave == w.position)
                .map(|(id, _)| *id)
                .collect();
            let mut counts = TaskCounts::default();
            for id in &ids {
                let c = self.counts(*id, at).await?;
                counts.total += c.total;
                counts.offline += c.offline;
                counts.inprogress += c.inprogress;
                counts.failed += c.failed;
                counts.success += c.success;
            }
            all.total += counts.total;
            all.offline += counts.offline;
            all.inprogress += counts.inprogress;
            all.failed += counts.failed;
            all.success += counts.success;
            views.push(WaveView {
                position: w.position as u32,
                group_id: w.group_id,
                group_name: w.group_name,
                success_percent: w.success_percent as u8,
                auto_advance: w.auto_advance,
                started_at: w.started_at.map(ts),
                tasks: ids,
                counts,
            });
        }
        Ok(RolloutView {
            id: r.id,
            name: r.name,
            kind: parse_kind(&r.kind)?,
            state: parse_state(&r.state)?,
            wave: r.wave as u32,
            pause_reason: r.pause_reason,
            max_failed: r.max_failed.map(|n| n as u32),
            max_failed_percent: r.max_failed_percent.map(|n| n as u8),
            conditions: r.conditions,
            start_at: ts(r.start_at),
            announced_at: ts(r.announced_at),
            notice_override: r.notice_override,
            created_at: ts(r.created_at),
            finished_at: r.finished_at.map(ts),
            packages,
            waves: views,
            counts: all,
        })
    }

    pub async fn rollout(&self, id: i64, at: &At) -> Result<Option<RolloutView>> {
        match self.rollout_row(id).await? {
            Some(r) => Ok(Some(self.rollout_view(r, at).await?)),
            None => Ok(None),
        }
    }

    /// Rollouts newest first.
    pub async fn list_rollouts(&self, at: &At) -> Result<Vec<RolloutView>> {
        let rows: Vec<RolloutRow> = with_read!(self, pool => {
            sqlx::query_as(&format!("{ROLLOUT_SELECT} ORDER BY id DESC")).fetch_all(pool).await?
        });
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push(self.rollout_view(r, at).await?);
        }
        Ok(out)
    }

    /// Each site of a rollout: its counts, announcement and report.
    pub async fn rollout_sites(&self, id: i64, at: &At) -> Result<Vec<(RolloutSite, String)>> {
        if self.rollout_row(id).await?.is_none() {
            return Err(Error::NotFound(format!("rollout {id} does not exist")));
        }
        let (sites, counts): (Vec<SiteRow>, Vec<SiteCounts>) = with_read!(self, pool => {
            let sites = sqlx::query_as::<_, SiteRow>(
                "SELECT site, announcement, report, reported_at FROM rollout_sites WHERE rollout_id = $1 ORDER BY site",
            )
            .bind(id)
            .fetch_all(pool)
            .await?;
            let counts = sqlx::query_as::<_, SiteCounts>(
                "SELECT d.site, count(*), \
                 count(*) FILTER (WHERE td.state = 'failed'), \
                 count(*) FILTER (WHERE td.state = 'success'), \
                 count(*) FILTER (WHERE td.state NOT IN ('success', 'failed') AND (c.last_contact < $2 OR c.last_contact = 0)) \
                 FROM task_devices td JOIN tasks t ON t.id = td.task_id JOIN devices d ON d.id = td.device_id \
                 JOIN device_contacts c ON c.device_id = d.id \
                 WHERE t.rollout_id = $1 GROUP BY d.site",
            )
            .bind(id)
            .bind(at.online_since)
            .fetch_all(pool)
            .await?;
            (sites, counts)
        });
        let counts: std::collections::HashMap<String, TaskCounts> = counts
            .into_iter()
            .map(|c| (c.0, counts_of(c.1, c.2, c.3, c.4)))
            .collect();
        Ok(sites
            .into_iter()
            .map(|(site, announcement, report, reported_at)| {
                let c = counts.get(&site).copied().unwrap_or_default();
                (
                    RolloutSite {
                        site,
                        counts: c,
                        reported_at: reported_at.map(ts),
                        report,
                    },
                    announcement,
                )
            })
            .collect())
    }
}

fn site_info<'a>(
    name: &'a str,
    address: &'a str,
    s: &'a posup_proto::rollout::SiteSettings,
) -> Result<text::SiteInfo<'a>> {
    Ok(text::SiteInfo {
        name,
        address,
        time_zone: s
            .time_zone
            .parse()
            .map_err(|_| Error::Corrupt(format!("site {name}: time zone `{}`", s.time_zone)))?,
        always_open: s.always_open,
        reboot_time: s.reboot_time.as_deref(),
        language: lang(s.language),
    })
}

fn lang(language: posup_proto::api::Language) -> text::Lang {
    match language {
        posup_proto::api::Language::En => text::Lang::En,
        posup_proto::api::Language::Ru => text::Lang::Ru,
    }
}
