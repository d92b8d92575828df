//! The data rollouts follow: site settings, maintenance windows and ordering rules
//! across device types. The decisions made from them are in `gates`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use posup_policy::window::Window;
use posup_proto::rollout::{
    CreateOrderRule, CreateWindow, OrderRuleView, SiteSettings, WindowScope, WindowView,
};
use serde_json::json;

use crate::{Error, Result, Store, ts};

#[derive(sqlx::FromRow)]
pub(crate) struct WindowRow {
    pub id: i64,
    pub scope_kind: String,
    pub scope_ref: String,
    pub schedule: String,
    pub duration_minutes: i64,
    pub time_zone: String,
}

impl WindowRow {
    pub fn window(&self) -> Result<Window> {
        Window::new(
            &self.schedule,
            self.duration_minutes as u32,
            &self.time_zone,
        )
        .map_err(|e| Error::Corrupt(format!("window {}: {e}", self.id)))
    }

    fn scope(&self) -> Result<WindowScope> {
        match self.scope_kind.as_str() {
            "site" => Ok(WindowScope::Site {
                site: self.scope_ref.clone(),
            }),
            "group" => Ok(WindowScope::Group {
                group_id: self.scope_ref.parse().map_err(|_| {
                    Error::Corrupt(format!("window {}: group `{}`", self.id, self.scope_ref))
                })?,
            }),
            other => Err(Error::Corrupt(format!(
                "window {}: scope `{other}`",
                self.id
            ))),
        }
    }

    fn view(&self, now: DateTime<Utc>) -> Result<WindowView> {
        let window = self.window()?;
        Ok(WindowView {
            id: self.id,
            scope: self.scope()?,
            schedule: self.schedule.clone(),
            duration_minutes: self.duration_minutes as u32,
            time_zone: self.time_zone.clone(),
            open: window.is_open(now),
            next_open: window.next_open(now),
        })
    }
}

pub(crate) const WINDOW_SELECT: &str =
    "SELECT id, scope_kind, scope_ref, schedule, duration_minutes, time_zone FROM windows";

#[derive(sqlx::FromRow)]
struct SiteRow {
    site: String,
    time_zone: String,
    always_open: bool,
    reboot_time: Option<String>,
    language: String,
}

impl SiteRow {
    fn settings(self) -> (String, SiteSettings) {
        (
            self.site,
            SiteSettings {
                time_zone: self.time_zone,
                always_open: self.always_open,
                reboot_time: self.reboot_time,
                // An unknown tag reads as English, the default every site had.
                language: posup_proto::api::Language::parse(&self.language).unwrap_or_default(),
            },
        )
    }
}

fn check_site_name(site: &str) -> Result<()> {
    if site.trim().is_empty() || site.len() > 200 || site.chars().any(char::is_control) {
        return Err(Error::Invalid(format!(
            "site name `{site}` is invalid: give 1 to 200 printable characters"
        )));
    }
    Ok(())
}

fn check_reboot_time(site: &str, time: &str) -> Result<()> {
    chrono::NaiveTime::parse_from_str(time, "%H:%M").map_err(|_| {
        Error::Invalid(format!(
            "site {site}: reboot time `{time}` is not a time of day: write HH:MM, e.g. 04:00"
        ))
    })?;
    Ok(())
}

impl Store {
    /// A site's settings; the defaults when none were set.
    pub async fn site_settings(&self, site: &str) -> Result<SiteSettings> {
        let row: Option<SiteRow> = with_read!(self, pool => {
            sqlx::query_as("SELECT site, time_zone, always_open, reboot_time, language FROM site_settings WHERE site = $1")
                .bind(site)
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map(|r| r.settings().1).unwrap_or_default())
    }

    /// Every site that has settings.
    pub(crate) async fn all_site_settings(&self) -> Result<BTreeMap<String, SiteSettings>> {
        let rows: Vec<SiteRow> = with_read!(self, pool => {
            sqlx::query_as("SELECT site, time_zone, always_open, reboot_time, language FROM site_settings ORDER BY site")
                .fetch_all(pool)
                .await?
        });
        Ok(rows.into_iter().map(SiteRow::settings).collect())
    }

    pub async fn set_site_settings(
        &self,
        site: &str,
        settings: &SiteSettings,
        now: i64,
        actor: &str,
    ) -> Result<()> {
        check_site_name(site)?;
        settings.time_zone.parse::<chrono_tz::Tz>().map_err(|_| {
            Error::Invalid(format!(
                "site {site}: time zone `{}` is unknown: use an IANA name such as Europe/Moscow",
                settings.time_zone
            ))
        })?;
        if let Some(t) = &settings.reboot_time {
            check_reboot_time(site, t)?;
        }
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO site_settings (site, time_zone, always_open, reboot_time, updated_at, language) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (site) DO UPDATE SET time_zone = excluded.time_zone, always_open = excluded.always_open, \
                 reboot_time = excluded.reboot_time, updated_at = excluded.updated_at, language = excluded.language",
            )
            .bind(site)
            .bind(&settings.time_zone)
            .bind(settings.always_open)
            .bind(settings.reboot_time.clone())
            .bind(now)
            .bind(settings.language.as_str())
            .execute(&mut *tx)
            .await?;
            audit!(&mut *tx, now, actor, "site.settings", "site", site, json!(settings));
            tx.commit().await?;
        });
        // The terminals learn their store's language as a variable, as they learn
        // everything else of their site.
        self.change_variable(
            crate::variables::LANGUAGE,
            &posup_proto::api::VariableScope::Site {
                site: site.to_owned(),
            },
            Some(settings.language.as_str()),
            now,
            actor,
        )
        .await?;
        Ok(())
    }

    pub async fn create_window(
        &self,
        body: &CreateWindow,
        now: DateTime<Utc>,
        actor: &str,
    ) -> Result<WindowView> {
        let (kind, scope_ref) = match &body.scope {
            WindowScope::Site { site } => {
                check_site_name(site)?;
                ("site", site.clone())
            }
            WindowScope::Group { group_id } => {
                if self.group_name(*group_id).await?.is_none() {
                    return Err(Error::Invalid(format!("group {group_id} does not exist")));
                }
                ("group", group_id.to_string())
            }
        };
        // Checked before it is stored: a window that cannot be read would stop
        // every update of its scope.
        Window::new(&body.schedule, body.duration_minutes, &body.time_zone)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let at = now.timestamp_millis();
        let id: i64 = with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO windows (scope_kind, scope_ref, schedule, duration_minutes, time_zone, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            )
            .bind(kind)
            .bind(&scope_ref)
            .bind(body.schedule.trim())
            .bind(i64::from(body.duration_minutes))
            .bind(&body.time_zone)
            .bind(at)
            .fetch_one(&mut *tx)
            .await?;
            audit!(&mut *tx, at, actor, "window.create", "window", id, json!(body));
            tx.commit().await?;
            id
        });
        self.windows(now)
            .await?
            .into_iter()
            .find(|w| w.id == id)
            .ok_or_else(|| Error::NotFound(format!("window {id} vanished while being created")))
    }

    /// Every window, with whether it is open at `now`.
    pub async fn windows(&self, now: DateTime<Utc>) -> Result<Vec<WindowView>> {
        let rows: Vec<WindowRow> = with_read!(self, pool => {
            sqlx::query_as(&format!("{WINDOW_SELECT} ORDER BY id")).fetch_all(pool).await?
        });
        rows.iter().map(|r| r.view(now)).collect()
    }

    pub async fn delete_window(&self, id: i64, now: i64, actor: &str) -> Result<()> {
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let done = sqlx::query("DELETE FROM windows WHERE id = $1").bind(id).execute(&mut *tx).await?;
            if done.rows_affected() == 0 {
                return Err(Error::NotFound(format!("window {id} does not exist")));
            }
            audit!(&mut *tx, now, actor, "window.delete", "window", id, json!({}));
            tx.commit().await?;
        });
        Ok(())
    }

    pub async fn create_order_rule(
        &self,
        body: &CreateOrderRule,
        now: i64,
        actor: &str,
    ) -> Result<OrderRuleView> {
        if body.device_type == body.after_type {
            return Err(Error::Invalid(format!(
                "order rule: device type {} cannot wait for itself",
                body.device_type
            )));
        }
        self.require_device_type(&body.device_type).await?;
        self.require_device_type(&body.after_type).await?;
        if let Some(v) = &body.variable {
            crate::variables::check_variable_name(v)?;
        }
        // A cycle would make both types wait for each other for ever.
        let existing = self.order_rules().await?;
        let mut frontier = vec![body.after_type.clone()];
        while let Some(t) = frontier.pop() {
            if t == body.device_type {
                return Err(Error::Invalid(format!(
                    "order rule: {} already waits, directly or not, for {}: the new rule would make them wait for each other",
                    body.after_type, body.device_type
                )));
            }
            frontier.extend(
                existing
                    .iter()
                    .filter(|r| r.device_type == t)
                    .map(|r| r.after_type.clone()),
            );
        }
        let id: i64 = with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let id: Option<i64> = sqlx::query_scalar(
                "INSERT INTO order_rules (device_type, after_type, variable, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (device_type, after_type) DO NOTHING RETURNING id",
            )
            .bind(&body.device_type)
            .bind(&body.after_type)
            .bind(body.variable.clone())
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(id) = id else {
                return Err(Error::Conflict(format!(
                    "{} already waits for {}: delete that rule first to change it",
                    body.device_type, body.after_type
                )));
            };
            audit!(&mut *tx, now, actor, "order_rule.create", "order_rule", id, json!(body));
            bump!(&mut *tx, "tasks");
            tx.commit().await?;
            id
        });
        Ok(OrderRuleView {
            id,
            device_type: body.device_type.clone(),
            after_type: body.after_type.clone(),
            variable: body.variable.clone(),
            created_at: ts(now),
        })
    }

    pub async fn order_rules(&self) -> Result<Vec<OrderRuleView>> {
        let rows: Vec<(i64, String, String, Option<String>, i64)> = with_read!(self, pool => {
            sqlx::query_as("SELECT id, device_type, after_type, variable, created_at FROM order_rules ORDER BY id")
                .fetch_all(pool)
                .await?
        });
        Ok(rows
            .into_iter()
            .map(
                |(id, device_type, after_type, variable, created_at)| OrderRuleView {
                    id,
                    device_type,
                    after_type,
                    variable,
                    created_at: ts(created_at),
                },
            )
            .collect())
    }

    pub async fn delete_order_rule(&self, id: i64, now: i64, actor: &str) -> Result<()> {
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let done = sqlx::query("DELETE FROM order_rules WHERE id = $1").bind(id).execute(&mut *tx).await?;
            if done.rows_affected() == 0 {
                return Err(Error::NotFound(format!("order rule {id} does not exist")));
            }
            audit!(&mut *tx, now, actor, "order_rule.delete", "order_rule", id, json!({}));
            bump!(&mut *tx, "tasks");
            tx.commit().await?;
        });
        Ok(())
    }
}
