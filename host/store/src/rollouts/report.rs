//! What the stores are told: the announcement before a rollout or task starts,
//! and the plain-text report when a site's part of a rollout ended.

use super::*;
use crate::Backend;
use crate::sql::SqlText;

/// Which of a rollout's open sites a tick checks for their end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SiteCheck {
    None,
    /// Those where a part ended since the last check (`rollout_site_ends`).
    Ended,
    All,
}

/// What a tick checks, from the `members`, `devices` and `tasks` counters the
/// last check of every open site saw (`last`) and their values now (`seen`),
/// whether one of the rollout's groups drifts (`groups::drifts`) and whether
/// parts ended since the last check. Every site when never checked, a group
/// drifts or a counter moved: a device may have joined or left a site or the
/// rollout. Otherwise only a site where a part ended can have ended: parts end
/// only forwards between two restarts, and a restart grows `tasks`.
pub(crate) fn site_check(last: Option<&str>, seen: &str, drifts: bool, ended: bool) -> SiteCheck {
    if drifts || last != Some(seen) {
        SiteCheck::All
    } else if ended {
        SiteCheck::Ended
    } else {
        SiteCheck::None
    }
}

/// The most `rollout_site_ends` rows a tick reads for a rollout; the rest wait
/// for the next tick, so a backlog costs ticks, not one tick's memory.
const ENDS_AT_ONCE: i64 = 4096;

/// The open sites of rollout `id` (all, or those in `only`) none of whose
/// devices in `covered` has a part still to end (or to begin, its wave still
/// to come), in order. Each site's devices are read in id order only up to its
/// first pending one: all of them once it is done, but no finished site's
/// twice. SQLite is told to reach them through the site's index: without
/// statistics it may take the device type's instead and read every device of
/// the type for each site. PostgreSQL would make the ended-part test an anti
/// join planned on statistics taken before any part ended (one row expected)
/// and compare every device read with every ended part; `OFFSET 0` keeps it
/// one index lookup a device.
fn finished_sites(backend: Backend, id: i64, covered: &Cond, only: Option<&[&str]>) -> Sql {
    let (index, lookup) = match backend {
        Backend::Sqlite => ("INDEXED BY devices_site ", ""),
        Backend::Postgres => ("", " OFFSET 0"),
    };
    let mut sql = Sql::new("SELECT rs.site FROM rollout_sites rs WHERE rs.rollout_id = ");
    sql.bind(id);
    if let Some(sites) = only {
        sql.push(" AND rs.site IN (").bind_list(sites).push(")");
    }
    sql.push(" AND rs.reported_at IS NULL AND NOT EXISTS (SELECT 1 FROM devices d ");
    sql.push(index).push("WHERE d.site = rs.site AND ");
    sql.append(covered);
    sql.push(" AND NOT EXISTS (SELECT 1 FROM task_devices td JOIN tasks t ON t.id = td.task_id WHERE t.rollout_id = ");
    sql.bind(id);
    sql.push(" AND td.device_id = d.id AND td.state IN ('success', 'failed')")
        .push(lookup)
        .push(")) ORDER BY rs.site");
    sql
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

    /// Sends the report of every site whose part of rollout `id` ended: each of
    /// its devices the rollout's waves cover has succeeded or failed.
    pub(super) async fn report_sites(
        &self,
        r: &RolloutRow,
        waves: &[WaveRow],
        at: &At,
        ticked: &mut Ticked,
    ) -> Result<()> {
        let id = r.id;
        // What a site's end depends on, and where parts ended, read before the
        // check: a change committed during it is seen by the next tick.
        let (open, last, members, devices, tasks): (i64, Option<String>, i64, i64, i64) = with_read!(self, pool => {
            sqlx::query_as(
                "SELECT (SELECT count(*) FROM rollout_sites s WHERE s.rollout_id = r.id AND s.reported_at IS NULL), \
                 r.sites_seen, \
                 (SELECT value FROM generations WHERE name = 'members'), \
                 (SELECT value FROM generations WHERE name = 'devices'), \
                 (SELECT value FROM generations WHERE name = 'tasks') \
                 FROM rollouts r WHERE r.id = $1",
            )
            .bind(id)
            .fetch_one(pool)
            .await?
        });
        let ends = self.site_ends(id).await?;
        let seen = format!("{members} {devices} {tasks}");
        let check = if open == 0 {
            SiteCheck::None
        } else {
            let mut drifts = false;
            let mut conds = Vec::new();
            for w in waves {
                if let Some(g) = w.group_id {
                    let membership = self.group_membership(g, at).await?;
                    drifts |= membership.drifts;
                    conds.push(membership.cond);
                }
            }
            let check = site_check(last.as_deref(), &seen, drifts, !ends.is_empty());
            let mut sites: Vec<&str> = ends.iter().map(|e| e.1.as_str()).collect();
            sites.sort_unstable();
            sites.dedup();
            let only = (check == SiteCheck::Ended).then_some(sites.as_slice());
            if check != SiteCheck::None {
                ticked.sites_checked += 1;
                ticked.sites_read += only.map_or(open as usize, <[&str]>::len);
                self.report_finished_sites(r, &conds, only, at).await?;
            }
            check
        };
        let saw = check == SiteCheck::All && last.as_deref() != Some(seen.as_str());
        if ends.is_empty() && !saw {
            return Ok(());
        }
        self.checked_sites(id, saw.then_some(seen.as_str()), &ends)
            .await
    }

    /// Where parts of rollout `id` ended since the last check, oldest first:
    /// at most [`ENDS_AT_ONCE`] rows, as `(id, site)`.
    async fn site_ends(&self, id: i64) -> Result<Vec<(i64, String)>> {
        Ok(with_read!(self, pool => {
            sqlx::query_as("SELECT id, site FROM rollout_site_ends WHERE rollout_id = $1 ORDER BY id LIMIT $2")
                .bind(id)
                .bind(ENDS_AT_ONCE)
                .fetch_all(pool)
                .await?
        }))
    }

    /// Records a check of rollout `id`: the counters it saw when it read every
    /// open site (`seen`), and the `rollout_site_ends` rows it read (`ends`),
    /// deleted. Rows written since stay for the next tick.
    async fn checked_sites(
        &self,
        id: i64,
        seen: Option<&str>,
        ends: &[(i64, String)],
    ) -> Result<()> {
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            if let Some(seen) = seen {
                sqlx::query("UPDATE rollouts SET sites_seen = $2 WHERE id = $1")
                    .bind(id)
                    .bind(seen)
                    .execute(&mut *tx)
                    .await?;
            }
            for chunk in ends.chunks(500) {
                let ids: Vec<i64> = chunk.iter().map(|e| e.0).collect();
                let mut sql = Sql::new("DELETE FROM rollout_site_ends WHERE id IN (");
                sql.bind_list(&ids).push(")");
                let text = pool.text(&sql);
                bind_all!(sqlx::query(&text), sql.args).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Checks rollout `r`'s open sites (those in `only`, or all) for their end
    /// and sends the report of each one that ended; `conds` are its started
    /// waves' groups.
    async fn report_finished_sites(
        &self,
        r: &RolloutRow,
        conds: &[Cond],
        only: Option<&[&str]>,
        at: &At,
    ) -> Result<()> {
        let (id, title) = (r.id, &r.name);
        let announce = parse_kind(&r.kind)? != TaskKind::Download;
        let packages: Vec<i64> = with_read!(self, pool => {
            sqlx::query_scalar("SELECT package_id FROM rollout_packages WHERE rollout_id = $1 ORDER BY package_id")
                .bind(id)
                .fetch_all(pool)
                .await?
        });
        let releases = self.releases(&packages).await?;
        let types: Vec<String> = releases.iter().map(|r| r.device_type.clone()).collect();
        let sql = finished_sites(self.backend(), id, &targets(&types, conds), only);
        let finished: Vec<String> = with_read!(self, pool => {
            let text = pool.text(&sql);
            bind_all!(sqlx::query_scalar::<_, String>(&text), sql.args).fetch_all(pool).await?
        });
        for site in &finished {
            let outcomes: Vec<(String, String, String, Option<String>, String)> = with_read!(self, pool => {
                // From the site's devices to their parts: the rollout's parts
                // of every site would be read for each site that ended.
                sqlx::query_as(
                    "SELECT d.name, d.device_type, td.state, td.message, d.address FROM devices d \
                     JOIN task_devices td ON td.device_id = d.id \
                     WHERE d.site = $2 AND td.task_id IN (SELECT id FROM tasks WHERE rollout_id = $1) \
                     ORDER BY d.number, d.id, td.task_id",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tick_checks_the_sites_what_their_end_depends_on_moved_for() {
        let check = |last, drifts, ended| site_check(last, "1 1 1", drifts, ended);
        assert_eq!(check(None, false, false), SiteCheck::All, "never checked");
        assert_eq!(check(Some("1 1 1"), false, false), SiteCheck::None);
        assert_eq!(check(Some("1 1 1"), false, true), SiteCheck::Ended);
        assert_eq!(check(Some("1 2 1"), false, true), SiteCheck::All);
        assert_eq!(check(Some("1 2 1"), false, false), SiteCheck::All);
        assert_eq!(
            check(Some("1 1 1"), true, false),
            SiteCheck::All,
            "a group that moves with time is checked each tick"
        );
    }

    async fn sqlite_store(dir: &tempfile::TempDir) -> Store {
        Store::open_sqlite_file(
            &dir.path().join("posup.db"),
            &crate::StoreOptions { max_connections: 1 },
        )
        .await
        .unwrap()
    }

    /// A backlog of ended parts is read a bounded slice a tick, oldest first,
    /// and what a check read is gone while what came after stays.
    #[tokio::test]
    async fn ended_parts_are_read_a_bounded_slice_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite_store(&dir).await;
        let crate::Db::Sqlite { write, .. } = &store.db else {
            unreachable!("a SQLite store")
        };
        let backlog = ENDS_AT_ONCE + 10;
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1) \
             INSERT INTO rollout_site_ends (rollout_id, site) SELECT 7, 'site ' || i FROM n",
        )
        .bind(backlog)
        .execute(write)
        .await
        .unwrap();
        let first = store.site_ends(7).await.unwrap();
        assert_eq!(first.len() as i64, ENDS_AT_ONCE);
        assert_eq!(first[0].1, "site 1");
        store.checked_sites(7, None, &first).await.unwrap();
        let rest = store.site_ends(7).await.unwrap();
        let names: Vec<&str> = rest.iter().map(|e| e.1.as_str()).collect();
        assert_eq!(names.len(), 10);
        assert_eq!(names[0], format!("site {}", ENDS_AT_ONCE + 1));
        store.checked_sites(7, None, &rest).await.unwrap();
        assert!(store.site_ends(7).await.unwrap().is_empty());
    }

    /// Without the index named, SQLite (no statistics) walks the device type's
    /// index for every open site: near a rollout's end a check could read the
    /// fleet once for each open site.
    #[tokio::test]
    async fn a_site_check_reaches_each_open_sites_devices_through_the_site() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite_store(&dir).await;
        let crate::Db::Sqlite { read, .. } = &store.db else {
            unreachable!("a SQLite store")
        };
        let mut all = Cond::default();
        all.push("1 = 1");
        let covered = targets(&["ukm5".into()], &[all]);
        for only in [None, Some(&["A", "B"][..])] {
            let sql = finished_sites(Backend::Sqlite, 1, &covered, only);
            let explain = format!("EXPLAIN QUERY PLAN {}", sql.text);
            let plan: Vec<(i64, i64, i64, String)> = bind_all!(sqlx::query_as(&explain), sql.args)
                .fetch_all(read)
                .await
                .unwrap();
            let plan: Vec<&str> = plan.iter().map(|p| p.3.as_str()).collect();
            assert!(
                plan.iter()
                    .any(|p| p.contains("SEARCH d USING INDEX devices_site (site=?)")),
                "{plan:#?}"
            );
            // Only the sites named are read, each by its key.
            let sites = if only.is_some() {
                "(rollout_id=? AND site=?)"
            } else {
                "(rollout_id=?)"
            };
            assert!(
                plan.iter().any(|p| p.contains(sites)),
                "{only:?}: {plan:#?}"
            );
        }
    }
}
