//! The agent API, under `/api/v1/agent`.
//!
//! - `POST /enroll` ([`EnrollRequest`] → [`EnrollResponse`]): the enrollment
//!   secret proves the terminal may join; the answer carries the device's own token,
//!   sent as `Authorization: Bearer <token>` on every later call.
//! - `POST /poll` ([`PollRequest`] → [`PollResponse`]): inventory and status in;
//!   actions, variable changes, the device type's configuration and the next poll
//!   interval out.
//! - `POST /feedback` ([`Feedback`] → [`FeedbackAck`]): one step's progress or
//!   result, idempotent by its key.
//! - `POST /feedback/batch` ([`FeedbackBatch`] → [`FeedbackBatchAck`]): up to
//!   [`MAX_FEEDBACK_BATCH`] reports of one device in order, recorded in one
//!   transaction, each answered on its own (acknowledged or refused for good).
//! - `GET /packages/{sha256}` and `GET /plugins/{sha256}`: the blobs named in
//!   actions, with `Range` (one range) and `ETag` (the sha256).
//!
//! **Contract of actions.** A poll answer lists every action the device should be
//! working on now. An action that disappears from the list (its task was paused or
//! deleted) must not be started; a step already running may finish. `attempt` grows
//! when an operator restarts a task: the agent then runs the action again from the
//! start.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Capabilities, DirPaths, Inventory, Phase, TaskKind};

/// Where a store (site) is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Site {
    /// The store's name, unique in the fleet.
    pub name: String,
    #[serde(default)]
    pub address: String,
}

/// Who a terminal is. GUID, names, number and address come from the store's own
/// systems; the agent passes them on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DeviceIdentity {
    /// Unique, stable identifier of the terminal.
    pub guid: String,
    pub site: Site,
    /// The terminal's name, e.g. `Kassa 3`.
    pub name: String,
    /// Number of the terminal in its store (the built-in `Even`/`Odd` groups use it).
    pub number: u32,
    /// Device type, e.g. `ukm5`; must exist on the server.
    pub device_type: String,
    pub agent_version: String,
}

/// `POST /api/v1/agent/enroll`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct EnrollRequest {
    /// An enrollment token created by an administrator. A terminal enrolling again
    /// with its current device token (`Authorization: Bearer`) needs none.
    #[serde(default)]
    pub secret: String,
    pub device: DeviceIdentity,
}

/// The answer to an enrollment. An enrolled GUID enrolls again only with its
/// current device token, or once after an administrator reset it; that replaces
/// the device's token (the old one stops working) and keeps its history. Site and
/// device type stay as they are: only an operator moves a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct EnrollResponse {
    pub device_id: i64,
    /// The device's bearer token. The server keeps only its hash: store it safely.
    pub token: String,
    pub poll_interval_secs: u32,
}

/// How the agent itself is doing, reported on every poll.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AgentStatus {
    pub agent_version: String,
    /// sha256 of the plugin the agent runs, when it has one.
    #[serde(default)]
    pub plugin_sha256: Option<String>,
    /// The action the agent is working on, when any.
    #[serde(default)]
    pub busy_action: Option<i64>,
    /// A problem of the agent itself (cannot load the plugin, disk full).
    #[serde(default)]
    pub message: Option<String>,
    /// What this terminal's own configuration allows a plugin: the ceiling of
    /// every grant here, shown to operators beside what they allow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allows: Option<crate::Capabilities>,
}

/// The site-scoped variable that tells a store's terminals which language their
/// staff read (`en`, `ru`): the agent asks the cashier in it, plugins read it
/// through `vars`. The server sets it with the store's settings.
pub const LANGUAGE_VARIABLE: &str = "posup-language";

/// `POST /api/v1/agent/poll`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PollRequest {
    /// The plugin's `inventory`, when it answered. When both this and
    /// `inventory_error` are absent, the server keeps what the device reported
    /// last, so an agent may leave out an unchanged inventory.
    #[serde(default)]
    pub inventory: Option<Inventory>,
    /// Why there is no inventory: the plugin's error, or why it could not run. The
    /// version overview shows the device as `Unknown` with this error.
    #[serde(default)]
    pub inventory_error: Option<String>,
    pub status: AgentStatus,
    /// Id of the last variable change the agent applied; 0 when it has none.
    #[serde(default)]
    pub vars_since: i64,
    /// Revision of the device-type configuration the agent holds; the answer carries
    /// the configuration only when it changed.
    #[serde(default)]
    pub config_revision: Option<i64>,
}

/// The answer to a poll.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PollResponse {
    /// Every action the device should work on now (see the module docs).
    pub actions: Vec<Action>,
    pub variables: VariableChanges,
    /// The device type's configuration, when the agent's revision is out of date.
    pub config: Option<DeviceConfig>,
    /// When to poll next (the agent adds jitter).
    pub poll_interval_secs: u32,
}

/// One device's part of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Action {
    pub task_id: i64,
    /// Identifies this device's part of the task; feedback names it.
    pub action_id: i64,
    /// 1, growing each time an operator restarts the task.
    pub attempt: u32,
    pub kind: TaskKind,
    pub package: PackageRef,
    /// The plugin that runs the steps.
    pub plugin: PluginRef,
    /// Do not start before this time (the task's start time).
    pub not_before: DateTime<Utc>,
}

/// A package to download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PackageRef {
    pub id: i64,
    pub file_name: String,
    pub sha256: String,
    pub size: u64,
    pub version: String,
    /// Path of the download, relative to the server's base URL.
    pub url: String,
}

/// A plugin to download (or to find in the agent's cache by its sha256).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PluginRef {
    pub name: String,
    pub version: String,
    pub sha256: String,
    /// Bytes of the component: the agent downloads no more than this.
    #[serde(default)]
    pub size: u64,
    /// Path of the download, relative to the server's base URL.
    pub url: String,
}

/// Variable changes the device has not seen yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct VariableChanges {
    /// For each variable changed since `vars_since` that concerns this device, its
    /// value for this device now; `None` when it no longer has one.
    pub changes: Vec<VariableChange>,
    /// The agent sends this as `vars_since` next time.
    pub last_id: i64,
    /// More changes are waiting: poll again soon.
    pub more: bool,
}

/// The value a variable has for this device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct VariableChange {
    pub name: String,
    pub value: Option<String>,
}

/// What the operator configured for the device's type: the plugin to run, what it
/// may be granted, and where its directories are on the terminal. The agent grants a
/// plugin the intersection of `allowed` and what the plugin's `info` requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DeviceConfig {
    pub device_type: String,
    pub revision: i64,
    /// The enabled plugin; `None` when the device type has none enabled.
    pub plugin: Option<PluginRef>,
    pub allowed: Capabilities,
    pub paths: DirPaths,
}

/// The state a step reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum FeedbackState {
    /// The step began.
    Started,
    /// Progress of a running step (`percent`).
    Progress,
    /// The step finished its work.
    Ok,
    /// Not now (the cashier declined, the product is busy); nothing changed. The
    /// agent tries again later.
    NotNow,
    /// The step failed; the message says why. The device's part of the task failed.
    Failed,
    /// The installation was put back as before after a failure.
    RolledBack,
    /// The device's part of the task is done: the update is committed, or for a
    /// download task the package is downloaded and staged.
    Committed,
}

impl FeedbackState {
    pub const ALL: [FeedbackState; 7] = [
        FeedbackState::Started,
        FeedbackState::Progress,
        FeedbackState::Ok,
        FeedbackState::NotNow,
        FeedbackState::Failed,
        FeedbackState::RolledBack,
        FeedbackState::Committed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FeedbackState::Started => "started",
            FeedbackState::Progress => "progress",
            FeedbackState::Ok => "ok",
            FeedbackState::NotNow => "not-now",
            FeedbackState::Failed => "failed",
            FeedbackState::RolledBack => "rolled-back",
            FeedbackState::Committed => "committed",
        }
    }

    pub fn parse(s: &str) -> Option<FeedbackState> {
        FeedbackState::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// `POST /api/v1/agent/feedback`: one step's progress or result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Feedback {
    /// Unique per report, chosen by the agent; a report sent again with the same key
    /// is acknowledged and not recorded twice.
    pub key: String,
    pub task_id: i64,
    pub action_id: i64,
    /// The device sending it; must be the token's device.
    pub device_id: i64,
    pub attempt: u32,
    pub step: Phase,
    pub state: FeedbackState,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub percent: Option<u8>,
    /// When it happened on the terminal.
    pub at: DateTime<Utc>,
    /// With `not-now`: how long the terminal waits before it tries again (the
    /// plugin's retry-after, or the cashier's ask-again interval). The server does
    /// not start the part again before then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

/// The answer to feedback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct FeedbackAck {
    pub key: String,
    /// The key had been received before; nothing was recorded this time.
    pub duplicate: bool,
    /// Whether the action is still wanted. `false` when its task was paused, deleted
    /// or restarted (a newer attempt): do not start further steps.
    pub active: bool,
}

/// The most reports one [`FeedbackBatch`] may carry.
pub const MAX_FEEDBACK_BATCH: usize = 64;

/// `POST /api/v1/agent/feedback/batch`: reports of one device, oldest first. A
/// terminal sends what its outbox holds at once, so a step's end and the next
/// step's start cost one request and one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct FeedbackBatch {
    pub reports: Vec<Feedback>,
}

/// The answer to a [`FeedbackBatch`]: one result per report, in the same order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct FeedbackBatchAck {
    pub results: Vec<FeedbackResult>,
}

/// What became of one report of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum FeedbackResult {
    /// Recorded, or recorded before (`duplicate`).
    Ack(FeedbackAck),
    /// Refused for good (its action no longer exists, or the report is invalid):
    /// sending it again cannot succeed.
    Refused { key: String, error: String },
}
