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
//! Each started wave has one task per package. [`Store::tick_rollouts`] moves
//! rollouts along and adds devices that joined a started wave's group since, so a
//! running rollout picks them up. It is safe to run from several replicas: every
//! change is a conditional update in one transaction.

use std::collections::BTreeMap;

use posup_policy::text::{self, Impact};
use posup_proto::TaskKind;
use posup_proto::api::TaskCounts;
use posup_proto::rollout::{
    CreateRollout, RolloutPackage, RolloutSite, RolloutState, RolloutView, SiteMessage, WaveView,
};
use serde_json::json;

use crate::notifications::Notice;
use crate::sql::{Arg, Cond, Sql};
use crate::{At, Error, Result, Store, ts};

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
    resumed_at: i64,
}

const ROLLOUT_SELECT: &str = "SELECT id, name, kind, state, wave, pause_reason, max_failed, max_failed_percent, conditions, \
    start_at, announced_at, notice_override, created_at, finished_at, resumed_at FROM rollouts";

#[derive(sqlx::FromRow)]
struct WaveRow {
    position: i64,
    group_id: Option<i64>,
    group_name: String,
    success_percent: i64,
    auto_advance: bool,
    started_at: Option<i64>,
}

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

/// Parts of a set of tasks counted like a task's devices.
fn counts_of(total: i64, failed: i64, success: i64, offline: i64) -> TaskCounts {
    TaskCounts {
        total: total as u64,
        offline: offline as u64,
        inprogress: (total - failed - success - offline).max(0) as u64,
        failed: failed as u64,
        success: success as u64,
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
    /// The packages of `ids`, refusing unknown ones and two for one device type.
    pub(crate) async fn releases(&self, ids: &[i64]) -> Result<Vec<ReleaseRow>> {
        let mut out: Vec<ReleaseRow> = Vec::with_capacity(ids.len());
        for id in ids {
            let row: Option<ReleaseRow> = with_read!(self, pool => {
                sqlx::query_as("SELECT id, device_type, file_name, version, changelog FROM packages WHERE id = $1")
                    .bind(*id)
                    .fetch_optional(pool)
                    .await?
            });
            let row = row.ok_or_else(|| Error::Invalid(format!("package {id} does not exist")))?;
            if let Some(other) = out.iter().find(|r| r.device_type == row.device_type) {
                return Err(Error::Invalid(format!(
                    "packages {} and {} are both for device type {}: give one package per device type",
                    other.id, row.id, row.device_type
                )));
            }
            out.push(row);
        }
        Ok(out)
    }

    /// The announcement of an update to each site with devices in `cond`: the
    /// affected nodes per site and what staff must not do.
    pub(crate) async fn announcements(
        &self,
        title: &str,
        kind: TaskKind,
        start_at: i64,
        releases: &[ReleaseRow],
        cond: &Cond,
        conditions: &str,
    ) -> Result<Vec<SiteMessage>> {
        let mut sql =
            Sql::new("SELECT d.site, d.address, d.name, d.device_type FROM devices d WHERE 1 = 1");
        sql.and(cond).push(" ORDER BY d.site, d.number, d.id");
        let (nodes, impacts): (Vec<NodeRow>, Vec<(String, String)>) = with_read!(self, pool => {
            let nodes = bind_all!(sqlx::query_as::<_, NodeRow>(&sql.text), sql.args).fetch_all(pool).await?;
            let impacts = sqlx::query_as::<_, (String, String)>("SELECT name, impact FROM device_types")
                .fetch_all(pool)
                .await?;
            (nodes, impacts)
        });
        let impacts: BTreeMap<String, Impact> = impacts
            .into_iter()
            .map(|(name, impact)| {
                let impact = impact
                    .parse::<Impact>()
                    .map_err(|e| Error::Corrupt(format!("device type {name}: {e}")))?;
                Ok((name, impact))
            })
            .collect::<Result<_>>()?;
        let settings = self.all_site_settings().await?;
        let mut by_site: BTreeMap<&str, Vec<&NodeRow>> = BTreeMap::new();
        for n in &nodes {
            by_site.entry(n.site.as_str()).or_default().push(n);
        }
        let mut out = Vec::with_capacity(by_site.len());
        for (site, nodes) in by_site {
            let s = settings.get(site).cloned().unwrap_or_default();
            let announcement = text::Announcement {
                title,
                kind: text::kind_label(kind.as_str(), lang(s.language)),
                start: ts(start_at),
                site: site_info(site, &nodes[0].address, &s)?,
                releases: releases_for(releases, nodes.iter().map(|n| n.device_type.as_str())),
                nodes: nodes
                    .iter()
                    .map(|n| text::Node {
                        name: &n.name,
                        device_type: &n.device_type,
                        impact: impacts
                            .get(&n.device_type)
                            .copied()
                            .unwrap_or(Impact::Software),
                    })
                    .collect(),
                conditions,
            };
            out.push(SiteMessage {
                site: site.to_owned(),
                text: text::announcement(&announcement),
            });
        }
        Ok(out)
    }

    /// Creates a rollout and announces it to every site it covers.
    pub async fn create_rollout(
        &self,
        body: &CreateRollout,
        at: &At,
        actor: &str,
    ) -> Result<RolloutView> {
        if let Some(name) = &body.name {
            crate::tokens::check_name("rollout", name)?;
        }
        if body.packages.is_empty() {
            return Err(Error::Invalid(
                "a rollout needs at least one package: give `packages`".into(),
            ));
        }
        for id in &body.packages {
            if let Some(package) = self.package(*id).await? {
                crate::tasks::refuse_archived(&package)?;
            }
        }
        let releases = self.releases(&body.packages).await?;
        for r in &releases {
            let enabled: Option<String> = with_read!(self, pool => {
                sqlx::query_scalar::<_, Option<String>>("SELECT plugin_sha256 FROM device_types WHERE name = $1")
                    .bind(&r.device_type)
                    .fetch_one(pool)
                    .await?
            });
            if enabled.is_none() {
                return Err(Error::Invalid(format!(
                    "device type {} has no plugin enabled: enable one before rolling out {}",
                    r.device_type, r.file_name
                )));
            }
        }
        let waves = if body.waves.is_empty() {
            let pilot: Option<i64> = with_read!(self, pool => {
                sqlx::query_scalar("SELECT id FROM groups WHERE name = 'Pilot'").fetch_optional(pool).await?
            });
            let pilot = pilot.ok_or_else(|| {
                Error::Invalid(
                    "no waves given and there is no group named Pilot: create a Pilot group of a few devices, or give `waves`"
                        .into(),
                )
            })?;
            [pilot, 2, 3]
                .into_iter()
                .map(|group_id| posup_proto::rollout::WaveSpec {
                    group_id,
                    success_percent: 100,
                    auto_advance: true,
                })
                .collect()
        } else {
            body.waves.clone()
        };
        let mut wave_names = Vec::with_capacity(waves.len());
        let mut conds = Vec::with_capacity(waves.len());
        for (i, w) in waves.iter().enumerate() {
            if !(1..=100).contains(&w.success_percent) {
                return Err(Error::Invalid(format!(
                    "wave {i}: success threshold {} % is out of range: give 1 to 100",
                    w.success_percent
                )));
            }
            let name = self.group_name(w.group_id).await?.ok_or_else(|| {
                Error::Invalid(format!("wave {i}: group {} does not exist", w.group_id))
            })?;
            wave_names.push(name);
            conds.push(self.group_cond(w.group_id, at).await?);
        }
        if body.max_failed_percent.is_some_and(|p| p == 0 || p > 100) {
            return Err(Error::Invalid(
                "error threshold `max_failed_percent` is out of range: give 1 to 100".into(),
            ));
        }
        if body.max_failed == Some(0) {
            return Err(Error::Invalid(
                "error threshold `max_failed` of 0 would stop the rollout at once: give 1 or more"
                    .into(),
            ));
        }
        let start_at = body
            .start_at
            .map(|t| t.timestamp_millis())
            .unwrap_or(at.now);
        let name = body.name.clone().unwrap_or_else(|| {
            let files: Vec<&str> = releases.iter().map(|r| r.file_name.as_str()).collect();
            format!("{} {}", kind_label(body.kind), files.join(", "))
        });
        check_notice(
            &format!("rollout {name}"),
            body.kind,
            start_at,
            at.now,
            body.notice_override.as_deref(),
        )?;
        let types: Vec<String> = releases.iter().map(|r| r.device_type.clone()).collect();
        let cond = targets(&types, &conds);
        let messages = self
            .announcements(
                &name,
                body.kind,
                start_at,
                &releases,
                &cond,
                &body.conditions,
            )
            .await?;
        if messages.is_empty() {
            return Err(Error::Invalid(format!(
                "rollout {name}: its waves cover no devices of {}: choose other groups or packages",
                types.join(", ")
            )));
        }
        let state = if start_at <= at.now {
            RolloutState::Running
        } else {
            RolloutState::Scheduled
        };
        let id = with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO rollouts (name, kind, state, wave, max_failed, max_failed_percent, conditions, start_at, announced_at, notice_override, created_at) \
                 VALUES ($1, $2, 'Scheduled', 0, $3, $4, $5, $6, $7, $8, $7) RETURNING id",
            )
            .bind(&name)
            .bind(body.kind.as_str())
            .bind(body.max_failed.map(i64::from))
            .bind(body.max_failed_percent.map(i64::from))
            .bind(&body.conditions)
            .bind(start_at)
            .bind(at.now)
            .bind(body.notice_override.clone())
            .fetch_one(&mut *tx)
            .await?;
            for r in &releases {
                sqlx::query("INSERT INTO rollout_packages (rollout_id, package_id) VALUES ($1, $2)")
                    .bind(id)
                    .bind(r.id)
                    .execute(&mut *tx)
                    .await?;
            }
            for (i, (w, group_name)) in waves.iter().zip(&wave_names).enumerate() {
                sqlx::query(
                    "INSERT INTO rollout_waves (rollout_id, position, group_id, group_name, success_percent, auto_advance) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(id)
                .bind(i as i64)
                .bind(w.group_id)
                .bind(group_name)
                .bind(i64::from(w.success_percent))
                .bind(w.auto_advance)
                .execute(&mut *tx)
                .await?;
            }
            for m in &messages {
                sqlx::query("INSERT INTO rollout_sites (rollout_id, site, announcement) VALUES ($1, $2, $3)")
                    .bind(id)
                    .bind(&m.site)
                    .bind(&m.text)
                    .execute(&mut *tx)
                    .await?;
                // A download interrupts nobody: stores hear only of updates.
                if body.kind != TaskKind::Download {
                    notify!(&mut *tx, at.now, &Notice {
                        event: "announcement",
                        site: Some(&m.site),
                        rollout_id: Some(id),
                        task_id: None,
                        // The message's own first line, in the store's language.
                        subject: m.text.lines().next().unwrap_or_default(),
                        body: &m.text,
                    });
                }
            }
            audit!(&mut *tx, at.now, actor, "rollout.create", "rollout", id,
                json!({"name": name, "kind": body.kind, "packages": body.packages, "waves": waves,
                       "start_at": start_at, "notice_override": body.notice_override, "sites": messages.len()}));
            tx.commit().await?;
            id
        });
        if state == RolloutState::Running {
            self.tick_rollouts(at).await?;
        }
        self.rollout(id, at)
            .await?
            .ok_or_else(|| Error::NotFound(format!("rollout {id} vanished while being created")))
    }

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
            let waves = sqlx::query_as::<_, WaveRow>(
                "SELECT position, group_id, group_name, success_percent, auto_advance, started_at FROM rollout_waves \
                 WHERE rollout_id = $1 ORDER BY position",
            )
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
                 count(*) FILTER (WHERE td.state NOT IN ('success', 'failed') AND (d.last_contact < $2 OR d.last_contact = 0)) \
                 FROM task_devices td JOIN tasks t ON t.id = td.task_id JOIN devices d ON d.id = td.device_id \
                 WHERE t.rollout_id = $1 GROUP BY d.site",
            )
            .bind(id)
            .bind(at.online_since)
            .fetch_all(pool)
            .await?;
            (sites, counts)
        });
        Ok(sites
            .into_iter()
            .map(|(site, announcement, report, reported_at)| {
                let c = counts
                    .iter()
                    .find(|c| c.0 == site)
                    .map(|c| counts_of(c.1, c.2, c.3, c.4))
                    .unwrap_or_default();
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

    /// Applies an operator's command to a rollout.
    pub async fn command_rollout(
        &self,
        id: i64,
        command: RolloutCommand,
        at: &At,
        actor: &str,
    ) -> Result<RolloutView> {
        let row = self
            .rollout_row(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("rollout {id} does not exist")))?;
        let state = parse_state(&row.state)?;
        use RolloutCommand::*;
        let next = match (command, state) {
            (Pause, RolloutState::Scheduled | RolloutState::Running | RolloutState::Waiting) => {
                RolloutState::Paused
            }
            (Resume, RolloutState::Paused) if row.start_at > at.now => RolloutState::Scheduled,
            (Resume, RolloutState::Paused) => RolloutState::Running,
            (Advance, RolloutState::Waiting) => RolloutState::Running,
            (c, s) => {
                let wants = match c {
                    Pause => "a Scheduled, Running or Waiting",
                    Resume => "a Paused",
                    Advance => "a Waiting",
                };
                return Err(Error::Conflict(format!(
                    "rollout {id} is {}: only {wants} rollout can be told to {}",
                    s.as_str(),
                    c.as_str()
                )));
            }
        };
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let done = sqlx::query("UPDATE rollouts SET state = $2, pause_reason = $3 WHERE id = $1 AND state = $4")
                .bind(id)
                .bind(next.as_str())
                .bind((next == RolloutState::Paused).then(|| format!("paused by {actor}")))
                .bind(state.as_str())
                .execute(&mut *tx)
                .await?;
            if done.rows_affected() == 0 {
                return Err(Error::Conflict(format!("rollout {id} changed meanwhile: look at it again")));
            }
            match command {
                Pause => {
                    sqlx::query("UPDATE tasks SET state = 'Paused' WHERE rollout_id = $1 AND state IN ('Scheduled', 'Running')")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
                Resume => {
                    sqlx::query("UPDATE rollouts SET resumed_at = $2 WHERE id = $1")
                        .bind(id)
                        .bind(at.now)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("UPDATE tasks SET state = 'Running' WHERE rollout_id = $1 AND state = 'Paused'")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
                Advance => {
                    sqlx::query("UPDATE rollouts SET wave = wave + 1 WHERE id = $1")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            audit!(&mut *tx, at.now, actor, format!("rollout.{}", command.as_str()), "rollout", id,
                json!({"from": state, "to": next}));
            bump!(&mut *tx, "tasks");
            tx.commit().await?;
        });
        self.tick_rollouts(at).await?;
        self.rollout(id, at)
            .await?
            .ok_or_else(|| Error::NotFound(format!("rollout {id} does not exist")))
    }

    /// Deletes a rollout with its tasks.
    pub async fn delete_rollout(&self, id: i64, now: i64, actor: &str) -> Result<()> {
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let name: Option<String> = sqlx::query_scalar("SELECT name FROM rollouts WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(name) = name else {
                return Err(Error::NotFound(format!("rollout {id} does not exist")));
            };
            sqlx::query("DELETE FROM tasks WHERE rollout_id = $1").bind(id).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM rollouts WHERE id = $1").bind(id).execute(&mut *tx).await?;
            audit!(&mut *tx, now, actor, "rollout.delete", "rollout", id, json!({"name": name}));
            bump!(&mut *tx, "tasks");
            tx.commit().await?;
        });
        Ok(())
    }

    /// Moves every unfinished rollout along: starts due ones, starts waves, adds
    /// devices that joined a started wave's group, applies the thresholds, and
    /// reports sites whose part ended. Returns whether devices got new parts or
    /// tasks changed state, so callers drop what they cached of actions.
    pub async fn tick_rollouts(&self, at: &At) -> Result<bool> {
        self.tick(at).await?;
        let rows: Vec<RolloutRow> = with_read!(self, pool => {
            sqlx::query_as(&format!(
                "{ROLLOUT_SELECT} WHERE state IN ('Scheduled', 'Running', 'Waiting', 'Paused') ORDER BY id"
            ))
            .fetch_all(pool)
            .await?
        });
        let mut changed = false;
        for r in rows {
            changed |= self.tick_rollout(r, at).await?;
        }
        Ok(changed)
    }

    async fn tick_rollout(&self, r: RolloutRow, at: &At) -> Result<bool> {
        let mut state = parse_state(&r.state)?;
        if state == RolloutState::Scheduled && r.start_at <= at.now {
            let moved = with_write!(self, pool => {
                let mut tx = pool.begin().await?;
                let moved = sqlx::query("UPDATE rollouts SET state = 'Running' WHERE id = $1 AND state = 'Scheduled'")
                    .bind(r.id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if moved > 0 {
                    audit!(&mut *tx, at.now, "server", "rollout.start", "rollout", r.id, json!({"from": "Scheduled", "to": "Running"}));
                }
                tx.commit().await?;
                moved
            });
            if moved > 0 {
                state = RolloutState::Running;
            }
        }
        if state == RolloutState::Scheduled {
            return Ok(false);
        }
        let waves: Vec<WaveRow> = with_read!(self, pool => {
            sqlx::query_as(
                "SELECT position, group_id, group_name, success_percent, auto_advance, started_at FROM rollout_waves \
                 WHERE rollout_id = $1 ORDER BY position",
            )
            .bind(r.id)
            .fetch_all(pool)
            .await?
        });
        let current = r.wave;
        let mut changed = false;
        // Waves up to the current one have their tasks, and pick up devices that
        // joined their group since (not while paused: nothing should start).
        if matches!(state, RolloutState::Running | RolloutState::Waiting) {
            for w in waves.iter().filter(|w| w.position <= current) {
                changed |= self.fill_wave(&r, w, at).await?;
            }
        }
        if state == RolloutState::Running {
            changed |= self.judge(&r, &waves, at).await?;
        }
        self.report_sites(&r, &waves, at).await?;
        Ok(changed)
    }

    /// Creates the wave's tasks when missing and adds the group's devices not yet
    /// in this rollout's task of the same package. Returns whether it added any.
    async fn fill_wave(&self, r: &RolloutRow, w: &WaveRow, at: &At) -> Result<bool> {
        let Some(group_id) = w.group_id else {
            return Ok(false);
        };
        let mut changed = false;
        let members = self.group_cond(group_id, at).await?;
        let packages: Vec<(i64, String, Option<String>)> = with_read!(self, pool => {
            sqlx::query_as(
                "SELECT p.id, p.device_type, dt.plugin_sha256 FROM rollout_packages rp JOIN packages p ON p.id = rp.package_id \
                 JOIN device_types dt ON dt.name = p.device_type WHERE rp.rollout_id = $1 ORDER BY p.id",
            )
            .bind(r.id)
            .fetch_all(pool)
            .await?
        });
        for (package_id, device_type, plugin) in packages {
            let Some(plugin) = plugin else {
                continue;
            };
            // `$1` is the task id, `$2` the rollout, `$3` the package, `$4` now.
            let mut insert = Sql::new(
                "INSERT INTO task_devices (task_id, device_id, state, attempt, updated_at) SELECT ",
            );
            insert.bind(0i64);
            insert.push(", d.id, 'pending', 1, ");
            insert.bind(at.now);
            insert.push(" FROM devices d WHERE d.device_type = ");
            insert.bind(device_type.as_str());
            insert.push(" AND NOT EXISTS (SELECT 1 FROM task_devices x JOIN tasks xt ON xt.id = x.task_id WHERE xt.rollout_id = ");
            insert.bind(r.id);
            insert.push(" AND xt.package_id = ");
            insert.bind(package_id);
            insert.push(" AND x.device_id = d.id)");
            insert.and(&members);
            // Two replicas adding the same joiner at once: one of them adds it.
            insert.push(" ON CONFLICT (task_id, device_id) DO NOTHING");
            with_write!(self, pool => {
                let mut tx = pool.begin().await?;
                let existing: Option<(i64, String)> = sqlx::query_as(
                    "SELECT id, state FROM tasks WHERE rollout_id = $1 AND wave = $2 AND package_id = $3",
                )
                .bind(r.id)
                .bind(w.position)
                .bind(package_id)
                .fetch_optional(&mut *tx)
                .await?;
                let (task_id, task_state) = match existing {
                    Some(t) => t,
                    None => {
                        let name = format!("{} · wave {} ({})", r.name, w.position + 1, w.group_name);
                        // Another replica starting the same wave at this moment: its
                        // insert wins, and this one takes the task it made.
                        let id: Option<i64> = sqlx::query_scalar(
                            "INSERT INTO tasks (name, kind, state, package_id, plugin_sha256, device_type, group_id, group_name, start_at, created_at, attempt, rollout_id, wave, notice_override) \
                             VALUES ($1, $2, 'Running', $3, $4, $5, $6, $7, $8, $8, 1, $9, $10, $11) \
                             ON CONFLICT (rollout_id, wave, package_id) DO NOTHING RETURNING id",
                        )
                        .bind(&name)
                        .bind(&r.kind)
                        .bind(package_id)
                        .bind(&plugin)
                        .bind(&device_type)
                        .bind(group_id)
                        .bind(&w.group_name)
                        .bind(at.now)
                        .bind(r.id)
                        .bind(w.position)
                        .bind(r.notice_override.clone())
                        .fetch_optional(&mut *tx)
                        .await?;
                        match id {
                            Some(id) => {
                                sqlx::query("UPDATE rollout_waves SET started_at = $3 WHERE rollout_id = $1 AND position = $2 AND started_at IS NULL")
                                    .bind(r.id)
                                    .bind(w.position)
                                    .bind(at.now)
                                    .execute(&mut *tx)
                                    .await?;
                                audit!(&mut *tx, at.now, "server", "task.create", "task", id,
                                    json!({"name": name, "rollout_id": r.id, "wave": w.position}));
                                (id, "Running".to_owned())
                            }
                            None => sqlx::query_as(
                                "SELECT id, state FROM tasks WHERE rollout_id = $1 AND wave = $2 AND package_id = $3",
                            )
                            .bind(r.id)
                            .bind(w.position)
                            .bind(package_id)
                            .fetch_one(&mut *tx)
                            .await?,
                        }
                    }
                };
                let mut args = insert.args.clone();
                args[0] = Arg::I64(task_id);
                let added = bind_all!(sqlx::query(&insert.text), args).execute(&mut *tx).await?.rows_affected();
                if added > 0 && task_state == "Finished" {
                    sqlx::query("UPDATE tasks SET state = 'Running', finished_at = NULL WHERE id = $1")
                        .bind(task_id)
                        .execute(&mut *tx)
                        .await?;
                }
                if added > 0 {
                    bump!(&mut *tx, "tasks");
                    changed = true;
                }
                tx.commit().await?;
            });
        }
        Ok(changed)
    }

    /// Applies the error threshold to the whole rollout and the success threshold
    /// to its current wave. Returns whether the rollout moved.
    async fn judge(&self, r: &RolloutRow, waves: &[WaveRow], at: &At) -> Result<bool> {
        let (failed, ended, unfinished): (i64, i64, i64) = with_read!(self, pool => {
            sqlx::query_as(
                "SELECT count(*) FILTER (WHERE td.state = 'failed' AND td.updated_at > $2), \
                 count(*) FILTER (WHERE td.state IN ('failed', 'success') AND td.updated_at > $2), \
                 count(*) FILTER (WHERE td.state IN ('pending', 'running', 'waiting')) \
                 FROM task_devices td JOIN tasks t ON t.id = td.task_id WHERE t.rollout_id = $1",
            )
            .bind(r.id)
            .bind(r.resumed_at)
            .fetch_one(pool)
            .await?
        });
        let mut stop = None;
        if let Some(max) = r.max_failed
            && failed >= max
        {
            stop = Some(format!(
                "emergency stop: {failed} device(s) failed, the error threshold is {max}"
            ));
        } else if let Some(pct) = r.max_failed_percent
            && ended > 0
            && failed * 100 >= pct * ended
        {
            stop = Some(format!(
                "emergency stop: {failed} of {ended} devices that ended failed ({} %), the error threshold is {pct} %",
                failed * 100 / ended
            ));
        }
        let Some(wave) = waves.iter().find(|w| w.position == r.wave) else {
            return Ok(false);
        };
        let (total, success, active): (i64, i64, i64) = with_read!(self, pool => {
            sqlx::query_as(
                "SELECT count(*), count(*) FILTER (WHERE td.state = 'success'), \
                 count(*) FILTER (WHERE td.state IN ('pending', 'running', 'waiting')) \
                 FROM task_devices td JOIN tasks t ON t.id = td.task_id WHERE t.rollout_id = $1 AND t.wave = $2",
            )
            .bind(r.id)
            .bind(wave.position)
            .fetch_one(pool)
            .await?
        });
        let met = success * 100 >= wave.success_percent * total;
        let last = wave.position + 1 >= waves.len() as i64;
        let (next, reason, wave_no) = match stop {
            Some(reason) => (RolloutState::Paused, Some(reason), r.wave),
            None if met && last && unfinished == 0 => (RolloutState::Finished, None, r.wave),
            None if met && !last && wave.auto_advance => (RolloutState::Running, None, r.wave + 1),
            None if met && !last => (RolloutState::Waiting, None, r.wave),
            None if !met && active == 0 => (
                RolloutState::Paused,
                Some(format!(
                    "wave {} ({}) ended with {success} of {total} devices updated, below its {} % success threshold: \
                     look at the failed devices, then resume or delete the rollout",
                    wave.position + 1,
                    wave.group_name,
                    wave.success_percent
                )),
                r.wave,
            ),
            None => return Ok(false),
        };
        if next == RolloutState::Running && wave_no == r.wave {
            return Ok(false);
        }
        let moved = with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let moved = sqlx::query(
                "UPDATE rollouts SET state = $2, wave = $3, pause_reason = $4, finished_at = $5 WHERE id = $1 AND state = 'Running' AND wave = $6",
            )
            .bind(r.id)
            .bind(next.as_str())
            .bind(wave_no)
            .bind(reason.clone())
            .bind((next == RolloutState::Finished).then_some(at.now))
            .bind(r.wave)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if moved > 0 {
                if next == RolloutState::Paused {
                    sqlx::query("UPDATE tasks SET state = 'Paused' WHERE rollout_id = $1 AND state IN ('Scheduled', 'Running')")
                        .bind(r.id)
                        .execute(&mut *tx)
                        .await?;
                    let text = reason.clone().unwrap_or_default();
                    notify!(&mut *tx, at.now, &Notice {
                        event: "emergency-stop",
                        site: None,
                        rollout_id: Some(r.id),
                        task_id: None,
                        subject: &format!("Rollout paused: {}", r.name),
                        body: &text,
                    });
                }
                audit!(&mut *tx, at.now, "server", "rollout.advance", "rollout", r.id,
                    json!({"to": next, "wave": wave_no, "reason": reason}));
                bump!(&mut *tx, "tasks");
            }
            tx.commit().await?;
            moved > 0
        });
        if moved && next == RolloutState::Running {
            // The next wave's tasks at once, not a tick later.
            if let Some(w) = waves.iter().find(|w| w.position == wave_no) {
                let r = self
                    .rollout_row(r.id)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("rollout {} does not exist", r.id)))?;
                self.fill_wave(&r, w, at).await?;
            }
        }
        Ok(moved)
    }

    /// Sends the report of every site whose part of rollout `id` ended: each of
    /// its devices the rollout's waves cover has succeeded or failed.
    async fn report_sites(&self, r: &RolloutRow, waves: &[WaveRow], at: &At) -> Result<()> {
        let (id, title) = (r.id, &r.name);
        let announce = parse_kind(&r.kind)? != TaskKind::Download;
        let open: Vec<String> = with_read!(self, pool => {
            sqlx::query_scalar("SELECT site FROM rollout_sites WHERE rollout_id = $1 AND reported_at IS NULL ORDER BY site")
                .bind(id)
                .fetch_all(pool)
                .await?
        });
        if open.is_empty() {
            return Ok(());
        }
        let packages: Vec<i64> = with_read!(self, pool => {
            sqlx::query_scalar("SELECT package_id FROM rollout_packages WHERE rollout_id = $1 ORDER BY package_id")
                .bind(id)
                .fetch_all(pool)
                .await?
        });
        let releases = self.releases(&packages).await?;
        let types: Vec<String> = releases.iter().map(|r| r.device_type.clone()).collect();
        let mut conds = Vec::new();
        for w in waves {
            if let Some(g) = w.group_id {
                conds.push(self.group_cond(g, at).await?);
            }
        }
        // Sites with a covered device that has not ended its part (or not begun it,
        // its wave still to come).
        let mut pending = Sql::new("SELECT DISTINCT d.site FROM devices d WHERE ");
        pending.append(&targets(&types, &conds));
        pending.push(" AND NOT EXISTS (SELECT 1 FROM task_devices td JOIN tasks t ON t.id = td.task_id WHERE t.rollout_id = ");
        pending.bind(id);
        pending.push(" AND td.device_id = d.id AND td.state IN ('success', 'failed'))");
        let busy: Vec<String> = with_read!(self, pool => {
            bind_all!(sqlx::query_scalar::<_, String>(&pending.text), pending.args).fetch_all(pool).await?
        });
        for site in open.iter().filter(|s| !busy.contains(s)) {
            let outcomes: Vec<(String, String, String, Option<String>, String)> = with_read!(self, pool => {
                sqlx::query_as(
                    "SELECT d.name, d.device_type, td.state, td.message, d.address FROM task_devices td \
                     JOIN tasks t ON t.id = td.task_id JOIN devices d ON d.id = td.device_id \
                     WHERE t.rollout_id = $1 AND d.site = $2 ORDER BY d.number, d.id, t.id",
                )
                .bind(id)
                .bind(site)
                .fetch_all(pool)
                .await?
            });
            if outcomes.is_empty() {
                continue;
            }
            let settings = self.site_settings(site).await?;
            let report = text::Report {
                title,
                finished: ts(at.now),
                site: site_info(site, &outcomes[0].4, &settings)?,
                releases: releases_for(&releases, outcomes.iter().map(|o| o.1.as_str())),
                devices: outcomes
                    .iter()
                    .map(
                        |(name, device_type, state, message, _)| text::DeviceOutcome {
                            name,
                            device_type,
                            ok: state == "success",
                            detail: message.as_deref().unwrap_or_default(),
                        },
                    )
                    .collect(),
            };
            let body = text::report(&report);
            with_write!(self, pool => {
                let mut tx = pool.begin().await?;
                let marked = sqlx::query(
                    "UPDATE rollout_sites SET report = $3, reported_at = $4 WHERE rollout_id = $1 AND site = $2 AND reported_at IS NULL",
                )
                .bind(id)
                .bind(site)
                .bind(&body)
                .bind(at.now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                // Another replica may have sent it a moment ago.
                if marked > 0 && announce {
                    notify!(&mut *tx, at.now, &Notice {
                        event: "report",
                        site: Some(site),
                        rollout_id: Some(id),
                        task_id: None,
                        subject: body.lines().next().unwrap_or_default(),
                        body: &body,
                    });
                }
                tx.commit().await?;
            });
        }
        Ok(())
    }

    /// Announces a plain task to the sites it covers, inside its creation.
    pub(crate) async fn task_announcements(
        &self,
        title: &str,
        kind: TaskKind,
        start_at: i64,
        package_id: i64,
        device_type: &str,
        members: &Cond,
    ) -> Result<Vec<SiteMessage>> {
        let releases = self.releases(&[package_id]).await?;
        let cond = targets(&[device_type.to_owned()], std::slice::from_ref(members));
        self.announcements(title, kind, start_at, &releases, &cond, "")
            .await
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
