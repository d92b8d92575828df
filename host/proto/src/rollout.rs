//! Rollouts and the policy they follow: waves with thresholds, maintenance
//! windows, site limits, ordering across device types, notice and reports.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::TaskCounts;
use crate::TaskKind;

/// Why a device has not started its part yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum WaitKind {
    /// Outside every maintenance window of its site or groups.
    Window,
    /// The site already has as many devices of its type down as allowed.
    SiteLimit,
    /// Another device type on the site must be updated and ready first.
    Order,
    /// The device answered not-now (precheck, or the cashier declined).
    NotNow,
}

impl WaitKind {
    pub const ALL: [WaitKind; 4] = [
        WaitKind::Window,
        WaitKind::SiteLimit,
        WaitKind::Order,
        WaitKind::NotNow,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WaitKind::Window => "window",
            WaitKind::SiteLimit => "site-limit",
            WaitKind::Order => "order",
            WaitKind::NotNow => "not-now",
        }
    }

    pub fn parse(s: &str) -> Option<WaitKind> {
        WaitKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Why a device waits, in words for the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Wait {
    pub kind: WaitKind,
    pub reason: String,
    /// When it is tried again at the earliest (not-now).
    #[serde(default)]
    pub until: Option<DateTime<Utc>>,
}

/// A rollout's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum RolloutState {
    /// Announced; starts at `start_at`.
    Scheduled,
    /// A wave is under way.
    Running,
    /// A wave reached its success threshold; the next one waits for an operator.
    Waiting,
    /// Paused by an operator or by the error threshold (`pause_reason`).
    Paused,
    /// Every wave ended.
    Finished,
}

impl RolloutState {
    pub const ALL: [RolloutState; 5] = [
        RolloutState::Scheduled,
        RolloutState::Running,
        RolloutState::Waiting,
        RolloutState::Paused,
        RolloutState::Finished,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Scheduled => "Scheduled",
            RolloutState::Running => "Running",
            RolloutState::Waiting => "Waiting",
            RolloutState::Paused => "Paused",
            RolloutState::Finished => "Finished",
        }
    }

    pub fn parse(s: &str) -> Option<RolloutState> {
        RolloutState::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

fn hundred() -> u8 {
    100
}

fn yes() -> bool {
    true
}

/// One wave of a rollout: a group, and when the next wave may begin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct WaveSpec {
    pub group_id: i64,
    /// The share of this wave's devices (in percent) that must succeed before the
    /// next wave; 100 by default.
    #[serde(default = "hundred")]
    pub success_percent: u8,
    /// Start the next wave on its own once the threshold is met; otherwise the
    /// rollout waits (`Waiting`) for `POST /rollouts/{id}/advance`.
    #[serde(default = "yes")]
    pub auto_advance: bool,
}

/// `POST /api/v1/rollouts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CreateRollout {
    #[serde(default)]
    pub name: Option<String>,
    pub kind: TaskKind,
    /// One package per device type; every wave covers them all.
    pub packages: Vec<i64>,
    /// In order. Empty: the groups `Pilot`, `Even` and `Odd` (a group named `Pilot`
    /// must exist).
    #[serde(default)]
    pub waves: Vec<WaveSpec>,
    /// Pause the rollout (emergency stop) once this many devices failed.
    #[serde(default)]
    pub max_failed: Option<u32>,
    /// Pause it once this share of the devices that ended failed (percent).
    #[serde(default)]
    pub max_failed_percent: Option<u8>,
    /// Now when absent. An Update must start at least 24 hours after its
    /// announcement, which is this request.
    #[serde(default)]
    pub start_at: Option<DateTime<Utc>>,
    /// Extra conditions for the stores, one per line, added to the announcement.
    #[serde(default)]
    pub conditions: String,
    /// An administrator's reason to start an Update with less than 24 hours'
    /// notice.
    #[serde(default)]
    pub notice_override: Option<String>,
}

/// A package of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RolloutPackage {
    pub id: i64,
    pub device_type: String,
    pub file_name: String,
    pub version: String,
}

/// A wave as it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct WaveView {
    pub position: u32,
    pub group_id: Option<i64>,
    pub group_name: String,
    pub success_percent: u8,
    pub auto_advance: bool,
    pub started_at: Option<DateTime<Utc>>,
    /// Its tasks, one per package.
    pub tasks: Vec<i64>,
    pub counts: TaskCounts,
}

/// A rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RolloutView {
    pub id: i64,
    pub name: String,
    pub kind: TaskKind,
    pub state: RolloutState,
    /// The wave under way, from 0.
    pub wave: u32,
    /// Why it is paused: the operator, or the error threshold that stopped it.
    pub pause_reason: Option<String>,
    pub max_failed: Option<u32>,
    pub max_failed_percent: Option<u8>,
    pub conditions: String,
    pub start_at: DateTime<Utc>,
    pub announced_at: DateTime<Utc>,
    pub notice_override: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub packages: Vec<RolloutPackage>,
    pub waves: Vec<WaveView>,
    /// Over every wave started so far.
    pub counts: TaskCounts,
}

/// The announcement of a rollout for one site, as the stores receive it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SiteMessage {
    pub site: String,
    /// Plain text, never Markdown.
    pub text: String,
}

/// One site's part of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RolloutSite {
    pub site: String,
    pub counts: TaskCounts,
    /// When its part ended and the report went out.
    pub reported_at: Option<DateTime<Utc>>,
    /// The report, once it went out.
    pub report: Option<String>,
}

/// `PUT /api/v1/sites/{name}/settings`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SiteSettings {
    /// IANA time zone of the site, for announcements and reports.
    #[serde(default = "utc")]
    pub time_zone: String,
    /// Open around the clock: announcements give the agreed reboot time.
    #[serde(default)]
    pub always_open: bool,
    /// `HH:MM`, agreed with a 24/7 site.
    #[serde(default)]
    pub reboot_time: Option<String>,
    /// The language its staff read announcements and reports in.
    #[serde(default)]
    pub language: crate::Language,
}

fn utc() -> String {
    "UTC".into()
}

impl Default for SiteSettings {
    fn default() -> Self {
        SiteSettings {
            time_zone: utc(),
            always_open: false,
            reboot_time: None,
            language: Default::default(),
        }
    }
}

/// Where a maintenance window applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "scope", rename_all = "kebab-case")]
pub enum WindowScope {
    Site { site: String },
    Group { group_id: i64 },
}

/// `POST /api/v1/windows`. Updates start only inside the windows: for every scope
/// of a device (its site, each of its groups) that has windows, inside one of
/// them. A window closing never interrupts an update under way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CreateWindow {
    #[serde(flatten)]
    pub scope: WindowScope,
    /// Cron-like `minute hour day-of-month month day-of-week`, e.g. `0 22 * * *`,
    /// or `always` for a 24/7 site.
    pub schedule: String,
    /// How long each opening lasts (1 to 10080; ignored for `always`).
    #[serde(default)]
    pub duration_minutes: u32,
    /// IANA time zone of the schedule.
    #[serde(default = "utc")]
    pub time_zone: String,
}

/// A maintenance window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct WindowView {
    pub id: i64,
    #[serde(flatten)]
    pub scope: WindowScope,
    pub schedule: String,
    pub duration_minutes: u32,
    pub time_zone: String,
    /// Open at the moment of the request.
    pub open: bool,
    pub next_open: Option<DateTime<Utc>>,
}

/// `POST /api/v1/order-rules`: devices of `device_type` on a site wait until every
/// device of `after_type` on that site is updated (no unfinished update) and
/// reports ready in its inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CreateOrderRule {
    pub device_type: String,
    pub after_type: String,
    /// When the rule holds for a site, this site-scoped variable is set to the
    /// ready version, for the waiting plugin's own check.
    #[serde(default)]
    pub variable: Option<String>,
}

/// An ordering rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct OrderRuleView {
    pub id: i64,
    pub device_type: String,
    pub after_type: String,
    pub variable: Option<String>,
    pub created_at: DateTime<Utc>,
}
