//! Whether a device may begin the downtime of an update now.
//!
//! A part of an Update or Forced update task is handed to its agent only once it
//! is *claimed*: the server moved it to `running` after every gate passed. A claim
//! counts as the device being unavailable until the device reports success, failure
//! or not-now, so a window closing later never interrupts it. The gates, in order:
//!
//! 1. not-now: a device that answered not-now is not claimed again before its
//!    retry time;
//! 2. maintenance windows: inside a window of every scope (its site, each of its
//!    groups) that has windows, at the part's start time;
//! 3. ordering rules: every device of the types it waits for on its site has no
//!    unfinished update and reports ready;
//! 4. site limit: fewer than K claimed devices of its type on its site. The check
//!    and the claim run in one transaction that first updates the site's row, so
//!    two replicas claiming for one site queue instead of both passing.
//!
//! Download parts have no downtime and pass no gates. A part that waits keeps the
//! reason (`wait_kind`, `wait_reason`) for the API.

use chrono::{DateTime, Utc};
use posup_proto::api::VariableScope;
use posup_proto::rollout::WaitKind;

use crate::policy::{WINDOW_SELECT, WindowRow};
use crate::sql::{Sql, SqlText};
use crate::tasks::{PartOnPoll, handed_out};
use crate::{At, Error, Result, Store, ts};
use posup_proto::agent::Action;

/// Task kinds with downtime, as SQL; the same as [`has_downtime`].
const DOWNTIME_KINDS: &str = "('update', 'forced-update')";

/// Whether a task of `kind` (as stored) has downtime, so its parts start only
/// once claimed; the same kinds as [`DOWNTIME_KINDS`].
pub(crate) fn has_downtime(kind: &str) -> bool {
    matches!(kind, "update" | "forced-update")
}
/// Task states whose claimed parts hold a device.
const HOLDING_TASKS: &str = "('Scheduled', 'Running', 'Paused')";

/// The gates' tests on a device of type `$t` on site `$s` (SQL expressions),
/// shared by [`GATE_CONFIG`] and [`claim_ungated`](Store::claim_ungated) so the
/// two cannot drift apart: a site limit of its type, a maintenance window of its
/// site or of any group, an ordering rule of its type.
macro_rules! site_limit {
    ($t:literal) => {
        concat!(
            "(SELECT site_limit FROM device_types WHERE name = ",
            $t,
            ")"
        )
    };
}
macro_rules! windows_may_apply {
    ($s:literal) => {
        concat!(
            "EXISTS (SELECT 1 FROM windows WHERE (scope_kind = 'site' AND scope_ref = ",
            $s,
            ") OR scope_kind = 'group')"
        )
    };
}
macro_rules! order_rules_apply {
    ($t:literal) => {
        concat!(
            "EXISTS (SELECT 1 FROM order_rules WHERE device_type = ",
            $t,
            ")"
        )
    };
}

/// What the gates of a device of type `$1` on site `$2` need, in one query.
const GATE_CONFIG: &str = concat!(
    "SELECT ",
    site_limit!("$1"),
    " AS site_limit, ",
    "CAST(CASE WHEN ",
    windows_may_apply!("$2"),
    " THEN 1 ELSE 0 END AS BIGINT) AS windows, ",
    "CAST(CASE WHEN ",
    order_rules_apply!("$1"),
    " THEN 1 ELSE 0 END AS BIGINT) AS order_rules"
);

/// What the gates of a device need beyond its parts, read in one query when a
/// part may be claimed.
#[derive(sqlx::FromRow)]
struct GateConfig {
    site_limit: Option<i64>,
    /// Some window could apply: one of its site, or of any group.
    windows: i64,
    order_rules: i64,
}

/// A device of the type waited for: name, installed version, inventory.
type Other = (String, String, Option<String>);

/// Why a part may not start now.
#[derive(Clone)]
struct Blocked {
    kind: WaitKind,
    reason: String,
}

/// The device asking, as the poll knows it.
#[derive(Debug, Clone, Copy)]
pub struct Asking<'a> {
    pub device_id: i64,
    pub site: &'a str,
    pub device_type: &'a str,
}

fn when(ms: DateTime<Utc>) -> String {
    ms.format("%Y-%m-%d %H:%M UTC").to_string()
}

impl Store {
    /// What a poll hands the device: its parts read once; the first of its
    /// unstarted update parts whose gates all pass claimed, and why the others
    /// wait recorded; the actions to work on. The same as [`Store::poll_parts`],
    /// then [`Store::claim_ungated`] of its [`PollParts::ungated_claim`], then
    /// [`Store::settle_poll`], which a server calls apart to claim for many
    /// polls in one statement.
    pub async fn poll_actions(
        &self,
        device: Asking<'_>,
        at: &At,
        horizon: i64,
    ) -> Result<PollActions> {
        let parts = self.poll_parts(device.device_id, at, horizon).await?;
        let claimed = match parts.ungated_claim(device) {
            Some(claim) => self.claim_ungated(&[claim], at).await?[0],
            None => false,
        };
        self.settle_poll(device, parts, claimed, at).await
    }

    /// The device's unfinished parts that hold or start before `horizon` (Unix
    /// ms), and which it may claim, in order: the one read of a poll.
    pub async fn poll_parts(&self, device_id: i64, at: &At, horizon: i64) -> Result<PollParts> {
        let (parts, idle) = self.parts_on_poll(device_id, horizon).await?;
        let order = claimable(&parts, at.now);
        Ok(PollParts { parts, idle, order })
    }

    /// Claims each part of `claims` that is still unstarted and whose device
    /// no gate could hold; whether each was claimed, in order. Most fleets set
    /// no gate for most types, so most polls that start an update need nothing
    /// more, and the claims of many polls cost one statement. A part named
    /// twice is claimed once, for the first.
    pub async fn claim_ungated(&self, claims: &[UngatedClaim<'_>], at: &At) -> Result<Vec<bool>> {
        if claims.len() > MAX_CLAIMS_AT_ONCE {
            return Err(Error::Invalid(format!(
                "{} claims at once: claim at most {MAX_CLAIMS_AT_ONCE}",
                claims.len()
            )));
        }
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        // One statement, atomic alone, for every claim whatever its task: a
        // claim ends no part, so no counting trigger takes a task's counts row
        // (the reason a report group writes a statement per task, in order).
        let mut update = Sql::new(CLAIM_UNGATED);
        update.bind(at.now).push(" FROM (VALUES ");
        for (i, c) in claims.iter().enumerate() {
            update.push(if i == 0 { "(CAST(" } else { ", (CAST(" });
            update
                .bind(c.action_id)
                .push(" AS BIGINT), CAST(")
                .bind(c.device_type);
            update
                .push(" AS TEXT), CAST(")
                .bind(c.site)
                .push(" AS TEXT))");
        }
        update.push(CLAIM_UNGATED_WHERE);
        let mut claimed: std::collections::HashSet<i64> = with_write!(self, pool => {
            let text = pool.text(&update);
            bind_all!(sqlx::query_scalar::<_, i64>(&text), update.args)
                .fetch_all(pool)
                .await?
                .into_iter()
                .collect()
        });
        // Each claimed part counts for the first claim that named it.
        Ok(claims
            .iter()
            .map(|c| claimed.remove(&c.action_id))
            .collect())
    }

    /// The rest of a poll once [`Store::claim_ungated`] claimed its first part
    /// (`claimed`) or did not: when it did not, the gates decide, in order,
    /// which part to claim and why the others wait.
    pub async fn settle_poll(
        &self,
        device: Asking<'_>,
        mut polled: PollParts,
        claimed: bool,
        at: &At,
    ) -> Result<PollActions> {
        let vars_changed = match polled.order.first() {
            Some(&first) if claimed => {
                polled.parts[first].state = "running".into();
                false
            }
            Some(_) => {
                self.claim_gated(device, &mut polled.parts, &polled.order, at)
                    .await?
            }
            None => false,
        };
        Ok(PollActions {
            actions: handed_out(&polled.parts)?,
            vars_changed,
            idle: polled.idle,
        })
    }

    /// Claims the first part of `order` the gates let start, and records why
    /// each one tried before it waits.
    async fn claim_gated(
        &self,
        device: Asking<'_>,
        parts: &mut [PartOnPoll],
        order: &[usize],
        at: &At,
    ) -> Result<bool> {
        let gates: GateConfig = with_read!(self, pool => {
            sqlx::query_as(GATE_CONFIG)
            .bind(device.device_type)
            .bind(device.site)
            .fetch_one(pool)
            .await?
        });
        let mut vars_changed = false;
        // The ordering rules depend on the device only: asked once, when needed.
        let mut order_blocked: Option<Option<Blocked>> = None;
        for &i in order {
            let c = &parts[i];
            let start = ts(c.start_at.max(at.now));
            let window = if gates.windows != 0 {
                self.window_gate(device, start, at).await?
            } else {
                None
            };
            let blocked = match window {
                Some(b) => Some(b),
                None if gates.order_rules == 0 => None,
                None => {
                    if order_blocked.is_none() {
                        let (b, changed) = self.order_gate(device, at).await?;
                        vars_changed |= changed;
                        order_blocked = Some(b);
                    }
                    order_blocked.clone().flatten()
                }
            };
            match blocked {
                Some(b) => self.note_wait(c, &b).await?,
                None => match self
                    .claim(device, c.action_id, gates.site_limit, at)
                    .await?
                {
                    Claim::Claimed => {
                        parts[i].state = "running".into();
                        break;
                    }
                    // Another poll of this device claimed it a moment ago: the
                    // next poll hands it out, and nothing else may be claimed.
                    Claim::Taken => break,
                    Claim::SiteLimit => {}
                },
            }
        }
        Ok(vars_changed)
    }

    /// Records why a part waits, when that changed.
    async fn note_wait(&self, c: &PartOnPoll, b: &Blocked) -> Result<()> {
        if c.wait_kind.as_deref() == Some(b.kind.as_str())
            && c.wait_reason.as_deref() == Some(b.reason.as_str())
        {
            return Ok(());
        }
        with_write!(self, pool => {
            sqlx::query("UPDATE task_devices SET wait_kind = $2, wait_reason = $3 WHERE id = $1 AND state IN ('pending', 'waiting')")
                .bind(c.action_id)
                .bind(b.kind.as_str())
                .bind(&b.reason)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Closed when, for some scope of the device with windows, none is open at
    /// `start`.
    async fn window_gate(
        &self,
        device: Asking<'_>,
        start: DateTime<Utc>,
        at: &At,
    ) -> Result<Option<Blocked>> {
        let rows: Vec<WindowRow> = with_read!(self, pool => {
            sqlx::query_as(&format!(
                "{WINDOW_SELECT} WHERE (scope_kind = 'site' AND scope_ref = $1) OR scope_kind = 'group' ORDER BY id"
            ))
            .bind(device.site)
            .fetch_all(pool)
            .await?
        });
        if rows.is_empty() {
            return Ok(None);
        }
        // Scopes in a stable order: the site, then groups by id.
        let mut scopes: Vec<(String, Vec<&WindowRow>)> = Vec::new();
        for row in &rows {
            let label = if row.scope_kind == "site" {
                format!("site {}", row.scope_ref)
            } else {
                let group: i64 = row.scope_ref.parse().map_err(|_| {
                    Error::Corrupt(format!("window {}: group `{}`", row.id, row.scope_ref))
                })?;
                if !self.is_member(device.device_id, group, at).await? {
                    continue;
                }
                let name = self.group_name(group).await?.unwrap_or_default();
                format!("group {name}")
            };
            match scopes.iter_mut().find(|(l, _)| *l == label) {
                Some((_, list)) => list.push(row),
                None => scopes.push((label, vec![row])),
            }
        }
        for (label, list) in scopes {
            let mut next: Option<(DateTime<Utc>, String)> = None;
            let mut open = false;
            for row in list {
                let window = row.window()?;
                if window.is_open(start) {
                    open = true;
                    break;
                }
                if let Some(n) = window.next_open(start)
                    && next.as_ref().is_none_or(|(t, _)| n < *t)
                {
                    next = Some((n, window.to_string()));
                }
            }
            if !open {
                let reason = match next {
                    Some((t, w)) => format!(
                        "maintenance window of {label} is closed: it opens {} ({w})",
                        when(t)
                    ),
                    None => format!(
                        "maintenance window of {label} is closed and does not open within a year: check its schedule"
                    ),
                };
                return Ok(Some(Blocked {
                    kind: WaitKind::Window,
                    reason,
                }));
            }
        }
        Ok(None)
    }

    /// The ordering rules of the device's type on its site. When a rule holds and
    /// names a variable, the site-scoped variable is set to the ready version.
    async fn order_gate(&self, device: Asking<'_>, at: &At) -> Result<(Option<Blocked>, bool)> {
        let rules: Vec<(String, Option<String>)> = with_read!(self, pool => {
            sqlx::query_as("SELECT after_type, variable FROM order_rules WHERE device_type = $1 ORDER BY id")
                .bind(device.device_type)
                .fetch_all(pool)
                .await?
        });
        let mut changed = false;
        for (after, variable) in rules {
            let (others, unfinished): (Vec<Other>, Vec<String>) = with_read!(self, pool => {
                let others = sqlx::query_as::<_, Other>(
                    "SELECT name, version, inventory FROM devices WHERE site = $1 AND device_type = $2 ORDER BY number, id",
                )
                .bind(device.site)
                .bind(&after)
                .fetch_all(pool)
                .await?;
                let unfinished = sqlx::query_scalar::<_, String>(&format!(
                    "SELECT DISTINCT d.name FROM task_devices td JOIN tasks t ON t.id = td.task_id JOIN devices d ON d.id = td.device_id \
                     WHERE d.site = $1 AND d.device_type = $2 AND td.state IN ('pending', 'running', 'waiting') \
                     AND t.kind IN {DOWNTIME_KINDS} AND t.state IN {HOLDING_TASKS} ORDER BY d.name"
                ))
                .bind(device.site)
                .bind(&after)
                .fetch_all(pool)
                .await?;
                (others, unfinished)
            });
            if !unfinished.is_empty() {
                return Ok((
                    Some(Blocked {
                        kind: WaitKind::Order,
                        reason: format!(
                            "waiting for {after} on site {} to be updated first: {} not finished",
                            device.site,
                            unfinished.join(", ")
                        ),
                    }),
                    changed,
                ));
            }
            let not_ready: Vec<&str> = others
                .iter()
                .filter(|(_, _, inventory)| !reports_ready(inventory.as_deref()))
                .map(|(name, _, _)| name.as_str())
                .collect();
            if !not_ready.is_empty() {
                return Ok((
                    Some(Blocked {
                        kind: WaitKind::Order,
                        reason: format!(
                            "waiting for {after} on site {} to report ready after its update: {} not ready yet",
                            device.site,
                            not_ready.join(", ")
                        ),
                    }),
                    changed,
                ));
            }
            if let Some(variable) = variable
                && let Some(version) = others
                    .iter()
                    .map(|(_, v, _)| v.as_str())
                    .min_by(|a, b| posup_policy::version::compare(a, b))
            {
                changed |= self
                    .ensure_site_variable(&variable, device.site, version, at.now)
                    .await?;
            }
        }
        Ok((None, changed))
    }

    async fn ensure_site_variable(
        &self,
        name: &str,
        site: &str,
        value: &str,
        now: i64,
    ) -> Result<bool> {
        let current: Option<String> = with_read!(self, pool => {
            sqlx::query_scalar("SELECT value FROM variables WHERE name = $1 AND scope_kind = 'site' AND scope_ref = $2")
                .bind(name)
                .bind(site)
                .fetch_optional(pool)
                .await?
        });
        if current.as_deref() == Some(value) {
            return Ok(false);
        }
        let scope = VariableScope::Site {
            site: site.to_owned(),
        };
        self.change_variable(name, &scope, Some(value), now, "server (ordering rule)")
            .await?;
        Ok(true)
    }

    /// Claims part `id` if `limit`, the site limit of the device's type, allows.
    async fn claim(
        &self,
        device: Asking<'_>,
        id: i64,
        limit: Option<i64>,
        at: &At,
    ) -> Result<Claim> {
        let claimed = |rows: u64| {
            if rows > 0 {
                Claim::Claimed
            } else {
                Claim::Taken
            }
        };
        let Some(limit) = limit else {
            // No limit: one statement, which claims only a part still unstarted.
            let rows = with_write!(self, pool => {
                sqlx::query(CLAIM).bind(id).bind(at.now).execute(pool).await?.rows_affected()
            });
            return Ok(claimed(rows));
        };
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            // The site's row is the lock: updating it makes a concurrent claim for
            // the same site wait for this transaction.
            sqlx::query("INSERT INTO site_settings (site, updated_at) VALUES ($1, $2) ON CONFLICT (site) DO NOTHING")
                .bind(device.site)
                .bind(at.now)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE site_settings SET claims = claims + 1 WHERE site = $1")
                .bind(device.site)
                .execute(&mut *tx)
                .await?;
            let down: Vec<String> = sqlx::query_scalar(&format!(
                "SELECT DISTINCT d.name FROM task_devices td JOIN tasks t ON t.id = td.task_id JOIN devices d ON d.id = td.device_id \
                 WHERE d.site = $1 AND d.device_type = $2 AND td.state = 'running' AND td.device_id <> $3 \
                 AND t.kind IN {DOWNTIME_KINDS} AND t.state IN {HOLDING_TASKS} ORDER BY d.name"
            ))
            .bind(device.site)
            .bind(device.device_type)
            .bind(device.device_id)
            .fetch_all(&mut *tx)
            .await?;
            let claimed = if down.len() as i64 >= limit {
                let reason = format!(
                    "site limit: at most {limit} {} device(s) of site {} may be down at once; updating now: {}",
                    device.device_type,
                    device.site,
                    down.join(", ")
                );
                sqlx::query("UPDATE task_devices SET wait_kind = $2, wait_reason = $3 WHERE id = $1 AND state IN ('pending', 'waiting')")
                    .bind(id)
                    .bind(WaitKind::SiteLimit.as_str())
                    .bind(reason)
                    .execute(&mut *tx)
                    .await?;
                Claim::SiteLimit
            } else {
                claimed(sqlx::query(CLAIM).bind(id).bind(at.now).execute(&mut *tx).await?.rows_affected())
            };
            tx.commit().await?;
            Ok(claimed)
        })
    }
}

/// A poll's parts, read, before any is claimed ([`Store::poll_parts`]).
#[derive(Debug)]
pub struct PollParts {
    parts: Vec<PartOnPoll>,
    idle: bool,
    /// The parts it may claim, in the order to try them ([`claimable`]).
    order: Vec<usize>,
}

impl PollParts {
    /// The claim to try first, for `device`: its first claimable part, if any.
    pub fn ungated_claim<'a>(&self, device: Asking<'a>) -> Option<UngatedClaim<'a>> {
        let part = &self.parts[*self.order.first()?];
        Some(UngatedClaim {
            action_id: part.action_id,
            device_type: device.device_type,
            site: device.site,
        })
    }
}

/// How many claims [`Store::claim_ungated`] takes at once: three values each,
/// far under both drivers' limits on bound values; a group holds the
/// database's writer for its transaction, so larger ones would buy little.
pub const MAX_CLAIMS_AT_ONCE: usize = 64;

/// A part to claim if no gate could hold its device ([`Store::claim_ungated`]).
#[derive(Debug, Clone, Copy)]
pub struct UngatedClaim<'a> {
    pub action_id: i64,
    pub device_type: &'a str,
    pub site: &'a str,
}

/// What a poll hands a device, and what its caller may cache.
#[derive(Debug)]
pub struct PollActions {
    pub actions: Vec<Action>,
    /// An ordering rule set a readiness variable: cached variable ids are stale.
    pub vars_changed: bool,
    /// The device has no unfinished part in any task: only a change to tasks
    /// (which grows the `tasks` generation) can give it work.
    pub idle: bool,
}

/// What became of a claim.
enum Claim {
    Claimed,
    /// The part was no longer unstarted.
    Taken,
    /// The site limit holds it back (recorded as its wait).
    SiteLimit,
}

/// Claims part `$1` at `$2` if it is still unstarted.
const CLAIM: &str = "UPDATE task_devices SET state = 'running', wait_kind = NULL, wait_reason = NULL, retry_at = NULL, \
    updated_at = $2 WHERE id = $1 AND state IN ('pending', 'waiting')";

/// Claims parts, each only while unstarted and when no gate could hold its
/// device: the tests of [`GATE_CONFIG`] all come out empty for the device's
/// type and site. Followed by the time, ` FROM (VALUES `, the parts as `(id,
/// type, site)` rows of `v`, and [`CLAIM_UNGATED_WHERE`].
const CLAIM_UNGATED: &str = "UPDATE task_devices SET state = 'running', wait_kind = NULL, wait_reason = NULL, \
    retry_at = NULL, updated_at = ";
const CLAIM_UNGATED_WHERE: &str = concat!(
    ") AS v WHERE task_devices.id = v.column1 AND task_devices.state IN ('pending', 'waiting') AND ",
    site_limit!("v.column2"),
    " IS NULL AND NOT ",
    windows_may_apply!("v.column3"),
    " AND NOT ",
    order_rules_apply!("v.column2"),
    " RETURNING task_devices.id"
);

/// The parts a poll may claim, in the order to try them: none while the device
/// holds a claim (one update at a time), else its unstarted update parts of
/// unpaused tasks, except those that answered not-now and wait for their retry.
fn claimable(parts: &[PartOnPoll], now: i64) -> Vec<usize> {
    if parts.iter().any(|p| p.downtime() && p.state == "running") {
        return Vec::new();
    }
    parts
        .iter()
        .enumerate()
        .filter(|(_, p)| p.downtime() && p.task_state != "Paused")
        .filter(|(_, p)| !(p.state == "waiting" && p.retry_at.is_some_and(|r| r > now)))
        .map(|(i, _)| i)
        .collect()
}

/// Whether a stored inventory says the product is started and ready.
fn reports_ready(inventory: Option<&str>) -> bool {
    inventory
        .and_then(|i| serde_json::from_str::<posup_proto::Inventory>(i).ok())
        .is_some_and(|i| i.ready)
}

#[cfg(test)]
mod tests {
    use super::*;
    use posup_proto::TaskKind;

    #[test]
    fn a_poll_claims_one_update_at_a_time_and_hands_out_downloads_freely() {
        use TaskKind::{Download, Update};
        let part = PartOnPoll::example;
        let parts = [
            part(1, Download, "pending", "Running"),
            part(2, Update, "pending", "Paused"),
            part(3, Update, "waiting", "Running"),
            part(4, Update, "pending", "Scheduled"),
        ];
        assert_eq!(
            claimable(&parts, 0),
            [2, 3],
            "downloads and paused tasks claim nothing"
        );
        let ids = |parts: &[PartOnPoll]| -> Vec<i64> {
            handed_out(parts)
                .unwrap()
                .iter()
                .map(|a| a.action_id)
                .collect()
        };
        assert_eq!(ids(&parts), [1], "updates only once claimed");

        let mut later = parts;
        later[2].retry_at = Some(5_000);
        assert_eq!(
            claimable(&later, 4_999),
            [3],
            "not-now holds until its retry time"
        );
        assert_eq!(claimable(&later, 5_000), [2, 3]);

        later[3].state = "running".into();
        assert!(
            claimable(&later, 0).is_empty(),
            "a claim held: nothing more"
        );
        assert_eq!(ids(&later), [1, 4]);
        later[3].task_state = "Paused".into();
        assert!(
            claimable(&later, 0).is_empty(),
            "a paused task's claim still holds"
        );
        assert_eq!(ids(&later), [1], "but is not handed out");
    }

    #[test]
    fn readiness_comes_from_the_inventory() {
        assert!(reports_ready(Some(
            r#"{"product":"iiko","version":"1","ready":true}"#
        )));
        assert!(!reports_ready(Some(r#"{"product":"iiko","version":"1"}"#)));
        assert!(!reports_ready(None));
    }
}
