//! The operator API, under `/api/v1`: request and response bodies and the query
//! strings of listings.
//!
//! Every call carries `Authorization: Bearer <operator token>`. Roles: `admin`
//! (everything), `operator` (fleet: device types, groups, tasks, variables, sites,
//! versions, packages), `vendor` (uploads plugins and packages), `viewer`
//! (reads). Every role may read everything but tokens, enrollment secrets and the
//! audit log, which are the administrator's.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

// Shared with `rollout`, which must not depend on this module; named here too
// so the API's types stay in one place for its users.
use crate::{Capabilities, DirPaths, Inventory, ModuleVersion, TaskKind};
pub use crate::{Language, TaskCounts};

/// An operator's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Admin,
    Operator,
    Viewer,
    Vendor,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Operator, Role::Viewer, Role::Vendor];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::Vendor => "vendor",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Sort direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Order {
    #[default]
    Asc,
    Desc,
}

// ---------------------------------------------------------------------------
// Devices

/// Columns the device list sorts on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum DeviceSort {
    #[default]
    Id,
    Guid,
    Site,
    Address,
    Name,
    Number,
    DeviceType,
    AgentVersion,
    Version,
    LoadedPackage,
    State,
    PendingSync,
    /// Sorts on the last contact: the connection column.
    LastContact,
    EnrolledAt,
}

/// Query string of `GET /api/v1/devices`. Text filters match a part of the column,
/// ignoring ASCII case; `number` matches exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DeviceQuery {
    #[serde(default)]
    pub sort: DeviceSort,
    #[serde(default)]
    pub order: Order,
    /// 1-based; default 1.
    pub page: Option<u32>,
    /// Default 50, at most 1000.
    pub per_page: Option<u32>,
    pub guid: Option<String>,
    pub site: Option<String>,
    pub address: Option<String>,
    pub name: Option<String>,
    pub number: Option<u32>,
    pub device_type: Option<String>,
    pub agent_version: Option<String>,
    pub version: Option<String>,
    pub loaded_package: Option<String>,
    pub state: Option<String>,
    /// Only devices in contact (`true`) or out of contact (`false`).
    pub online: Option<bool>,
    /// Only members of this group.
    pub group: Option<i64>,
    /// Only devices carrying this tag.
    pub tag: Option<String>,
}

/// One row of the device list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DeviceRow {
    pub id: i64,
    pub guid: String,
    pub site: String,
    pub address: String,
    pub name: String,
    pub number: u32,
    pub device_type: String,
    pub agent_version: String,
    /// Installed version, empty until the device reported it.
    pub version: String,
    pub loaded_package: Option<String>,
    pub state: String,
    pub pending_sync: u32,
    /// In contact: polled within the last few poll intervals.
    pub online: bool,
    pub last_contact: Option<DateTime<Utc>>,
    pub enrolled_at: DateTime<Utc>,
    pub tags: Vec<String>,
    /// Whether its token is accepted.
    pub access: DeviceAccess,
}

/// Whether a device's token is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum DeviceAccess {
    Active,
    /// Its token is refused and it cannot enroll again until an administrator
    /// resets it.
    Revoked,
    /// Reset by an administrator: its token is refused; the next enrollment with
    /// its GUID and a valid enrollment token takes the device over.
    AwaitingEnrollment,
}

impl DeviceAccess {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceAccess::Active => "active",
            DeviceAccess::Revoked => "revoked",
            DeviceAccess::AwaitingEnrollment => "awaiting-enrollment",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "active" => DeviceAccess::Active,
            "revoked" => DeviceAccess::Revoked,
            "awaiting-enrollment" => DeviceAccess::AwaitingEnrollment,
            _ => return None,
        })
    }
}

/// `PATCH /api/v1/devices/{id}`: an operator moves a device to another site or
/// device type (a terminal cannot move itself).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct MoveDevice {
    #[serde(default)]
    pub site: Option<crate::agent::Site>,
    #[serde(default)]
    pub device_type: Option<String>,
}

/// `GET /api/v1/devices/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DeviceDetail {
    pub device: DeviceRow,
    pub inventory: Option<Inventory>,
    pub inventory_error: Option<String>,
    /// The agent's own problem, from its last poll.
    pub agent_message: Option<String>,
    pub tasks: Vec<DeviceTaskSummary>,
}

/// A task the device takes part in, seen from the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DeviceTaskSummary {
    pub task_id: i64,
    pub task_name: String,
    pub kind: TaskKind,
    pub task_state: TaskState,
    pub state: DeviceTaskState,
    pub step: Option<String>,
    pub message: Option<String>,
    pub updated_at: DateTime<Utc>,
    /// Why it has not started yet, while it waits.
    #[serde(default)]
    pub wait: Option<crate::rollout::Wait>,
}

/// `PUT /api/v1/devices/{id}/tags`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DeviceTags {
    pub tags: Vec<String>,
}

// ---------------------------------------------------------------------------
// Device types

/// `PUT /api/v1/device-types/{name}`: creates or replaces a device type's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DeviceTypeBody {
    #[serde(default)]
    pub description: String,
    /// What a plugin may be granted on this device type.
    #[serde(default)]
    pub allowed: Capabilities,
    /// Where each directory is on the terminal.
    #[serde(default)]
    pub paths: DirPaths,
    /// Poll interval of these devices; the server default when absent.
    #[serde(default)]
    pub poll_interval_secs: Option<u32>,
    /// At most this many devices of this type may be down for an update per site
    /// at once (kiosks: 1, so the others keep serving); no limit when absent.
    #[serde(default)]
    pub site_limit: Option<u32>,
    /// What updating this type touches, for announcements:
    /// `register-and-software`, `register` or `software` (the default).
    #[serde(default)]
    pub impact: Option<String>,
}

/// A device type as the server holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DeviceTypeView {
    pub name: String,
    pub description: String,
    /// Grows with every change; agents compare it with theirs.
    pub revision: i64,
    pub plugin: Option<PluginSummary>,
    pub allowed: Capabilities,
    pub paths: DirPaths,
    /// What the enabled plugin is actually granted: its request intersected with
    /// `allowed`, limited to directories that have a path.
    pub granted: Option<Capabilities>,
    pub poll_interval_secs: u32,
    pub devices: u64,
    pub updated_at: DateTime<Utc>,
    pub site_limit: Option<u32>,
    pub impact: String,
}

/// `PUT /api/v1/device-types/{name}/plugin`: enables a plugin. Without `version`,
/// the newest uploaded version of that name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct EnablePlugin {
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
}

// ---------------------------------------------------------------------------
// Plugins

/// A plugin in short.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PluginSummary {
    pub name: String,
    pub version: String,
    pub sha256: String,
    /// Bytes of the component.
    #[serde(default)]
    pub size: u64,
}

/// An uploaded plugin, as its `info` described it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PluginView {
    pub sha256: String,
    pub name: String,
    pub vendor: String,
    pub version: String,
    pub description: String,
    pub device_types: Vec<String>,
    /// What the plugin requests.
    pub capabilities: Capabilities,
    /// The `posup:plugin` interface version it was built against.
    pub interface: String,
    pub size: u64,
    pub uploaded_at: DateTime<Utc>,
    /// Device types that have it enabled.
    pub enabled_for: Vec<String>,
    /// The vendor roles that signed it, for which device types (`target`).
    #[serde(default)]
    pub signatures: Vec<SignatureView>,
}

// ---------------------------------------------------------------------------
// Packages

/// `Current` for the package in force on its device type, `Install` for others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum PackageState {
    Current,
    Install,
}

/// Query string of `POST /api/v1/packages` (the body is the package file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PackageUpload {
    pub device_type: String,
    /// The package's file name, e.g. `ukm5_pos_1.8.4.tgz`.
    pub file_name: String,
}

/// An uploaded package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PackageView {
    pub id: i64,
    pub device_type: String,
    pub file_name: String,
    pub sha256: String,
    pub size: u64,
    /// From the plugin's `inspect`.
    pub version: String,
    pub kind: String,
    pub notes: String,
    pub changelog: String,
    pub rollback: bool,
    pub state: PackageState,
    /// The plugin that inspected it.
    pub plugin_sha256: String,
    pub uploaded_at: DateTime<Utc>,
    /// The release role's signature, if it signed these bytes.
    #[serde(default)]
    pub signatures: Vec<SignatureView>,
    /// Deleted while history referred to it: hidden from the list, kept for the
    /// record, usable by no new task.
    #[serde(default)]
    pub archived: bool,
}

/// `PATCH /api/v1/packages/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PackagePatch {
    pub notes: Option<String>,
    pub changelog: Option<String>,
}

/// Query string of `GET /api/v1/packages`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PackageQuery {
    pub device_type: Option<String>,
}

// ---------------------------------------------------------------------------
// Groups

/// What decides a group's members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum GroupKind {
    /// Built in: every device.
    All,
    /// Built in: devices with an even number in their store.
    Even,
    /// Built in: devices with an odd number in their store.
    Odd,
    /// A list of devices kept by operators.
    Static,
    /// Devices matching a filter, evaluated when used.
    Filter,
}

/// The conditions of a filter group; all given ones must hold. Text conditions
/// match exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct GroupFilter {
    pub site: Option<String>,
    pub device_type: Option<String>,
    /// Installed version.
    pub version: Option<String>,
    pub online: Option<bool>,
    pub tag: Option<String>,
}

/// `POST /api/v1/groups`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CreateGroup {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// `static` or `filter`.
    pub kind: GroupKind,
    /// Required for a filter group.
    #[serde(default)]
    pub filter: Option<GroupFilter>,
    /// Initial members of a static group.
    #[serde(default)]
    pub devices: Vec<i64>,
}

/// `PATCH /api/v1/groups/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct UpdateGroup {
    pub name: Option<String>,
    pub description: Option<String>,
    /// Only for filter groups.
    pub filter: Option<GroupFilter>,
}

/// `POST`/`DELETE /api/v1/groups/{id}/devices`: adds or removes members of a
/// static group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct GroupDevices {
    pub devices: Vec<i64>,
}

/// A group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct GroupView {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub kind: GroupKind,
    pub filter: Option<GroupFilter>,
    /// Built-in groups cannot be edited or deleted.
    pub builtin: bool,
    /// Members now.
    pub devices: u64,
}

// ---------------------------------------------------------------------------
// Tasks

/// A task's state. `Scheduled` until its start time, then `Running` until every
/// device finished (`Finished`); `Paused` by an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum TaskState {
    Scheduled,
    Running,
    Paused,
    Finished,
}

impl TaskState {
    pub const ALL: [TaskState; 4] = [
        TaskState::Scheduled,
        TaskState::Running,
        TaskState::Paused,
        TaskState::Finished,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Scheduled => "Scheduled",
            TaskState::Running => "Running",
            TaskState::Paused => "Paused",
            TaskState::Finished => "Finished",
        }
    }

    pub fn parse(s: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One device's state in a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum DeviceTaskState {
    /// Nothing reported yet.
    Pending,
    /// A step is under way.
    Running,
    /// The device answered not-now and will try again.
    Waiting,
    Success,
    Failed,
}

impl DeviceTaskState {
    pub const ALL: [DeviceTaskState; 5] = [
        DeviceTaskState::Pending,
        DeviceTaskState::Running,
        DeviceTaskState::Waiting,
        DeviceTaskState::Success,
        DeviceTaskState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceTaskState::Pending => "pending",
            DeviceTaskState::Running => "running",
            DeviceTaskState::Waiting => "waiting",
            DeviceTaskState::Success => "success",
            DeviceTaskState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<DeviceTaskState> {
        DeviceTaskState::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, DeviceTaskState::Success | DeviceTaskState::Failed)
    }
}

/// `POST /api/v1/tasks`. The task covers the group's devices of the package's
/// device type at creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CreateTask {
    #[serde(default)]
    pub name: Option<String>,
    pub kind: TaskKind,
    pub package_id: i64,
    pub group_id: i64,
    /// When to start; now when absent.
    #[serde(default)]
    pub start_at: Option<DateTime<Utc>>,
    /// An Update must start at least 24 hours after it is announced (created).
    /// An administrator may start it sooner by giving the reason here; it is
    /// recorded with the task and in the audit log.
    #[serde(default)]
    pub notice_override: Option<String>,
}

/// Query string of `GET /api/v1/tasks`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TaskQuery {
    pub state: Option<TaskState>,
}

/// A task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TaskView {
    pub id: i64,
    pub name: String,
    pub kind: TaskKind,
    pub state: TaskState,
    pub package_id: i64,
    pub package_file: String,
    pub package_version: String,
    pub device_type: String,
    pub group_id: Option<i64>,
    /// The group's name when the task was created.
    pub group_name: String,
    pub start_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// 1, growing with every restart.
    pub attempt: u32,
    pub counts: TaskCounts,
    /// The rollout this task is a wave of.
    #[serde(default)]
    pub rollout_id: Option<i64>,
    /// Its wave in that rollout, from 0.
    #[serde(default)]
    pub wave: Option<u32>,
    /// Why it may start less than 24 hours after its announcement.
    #[serde(default)]
    pub notice_override: Option<String>,
}

/// Query string of `GET /api/v1/tasks/{id}/devices`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TaskDeviceQuery {
    pub state: Option<DeviceTaskState>,
    pub page: Option<u32>,
    pub per_page: Option<u32>,
}

/// One device of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TaskDeviceRow {
    pub action_id: i64,
    pub device_id: i64,
    pub guid: String,
    pub name: String,
    pub site: String,
    pub number: u32,
    pub online: bool,
    pub state: DeviceTaskState,
    pub attempt: u32,
    /// The last step reported.
    pub step: Option<String>,
    pub message: Option<String>,
    pub percent: Option<u8>,
    pub updated_at: DateTime<Utc>,
    /// Why a device that has not started yet waits; `None` once it runs or ended.
    #[serde(default)]
    pub wait: Option<crate::rollout::Wait>,
}

/// One report of a step, as the agent sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct StepEvent {
    pub attempt: u32,
    pub step: String,
    pub state: crate::agent::FeedbackState,
    pub message: Option<String>,
    pub percent: Option<u8>,
    /// When it happened on the terminal.
    pub at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
}

/// `GET /api/v1/tasks/{id}/devices/{device_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TaskDeviceDetail {
    pub device: TaskDeviceRow,
    /// Every report, oldest first.
    pub history: Vec<StepEvent>,
}

/// `POST /api/v1/tasks/{id}/failed-group`: a new static group of the task's
/// failed devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct FailedToGroup {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Only these of the failed devices; all of them when absent.
    #[serde(default)]
    pub devices: Option<Vec<i64>>,
}

// ---------------------------------------------------------------------------
// Variables and sites

/// Whom a variable applies to. A device sees the most specific value: its own, then
/// a group's (the latest set), then its site's, then the fleet's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "scope", rename_all = "kebab-case")]
pub enum VariableScope {
    All,
    Group { group_id: i64 },
    Site { site: String },
    Device { device_id: i64 },
}

/// `PUT /api/v1/variables`: sets a variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SetVariable {
    pub name: String,
    pub value: String,
    /// Write-only: its value is never shown by the API or the audit log, only
    /// sent to the devices in its scope (passwords, keys).
    #[serde(default)]
    pub secret: bool,
    #[serde(flatten)]
    pub scope: VariableScope,
}

/// `DELETE /api/v1/variables`: removes a variable from one scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DeleteVariable {
    pub name: String,
    #[serde(flatten)]
    pub scope: VariableScope,
}

/// A variable's value in one scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct VariableView {
    pub name: String,
    #[serde(flatten)]
    pub scope: VariableScope,
    /// `None` for a secret variable: its value is write-only.
    pub value: Option<String>,
    pub secret: bool,
    /// The change that set it.
    pub change_id: i64,
    pub updated_at: DateTime<Utc>,
}

/// One change of a variable; `value` is `None` for a removal, and for a secret
/// variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct VariableChangeView {
    pub id: i64,
    pub name: String,
    #[serde(flatten)]
    pub scope: VariableScope,
    pub value: Option<String>,
    pub secret: bool,
    pub at: DateTime<Utc>,
}

/// Query string of `GET /api/v1/variables/changes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ChangesQuery {
    /// Changes with a greater id; all when absent.
    pub since: Option<i64>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<u32>,
}

/// A store (site) and its preferences.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SiteView {
    pub name: String,
    pub address: String,
    pub devices: u64,
    /// The `ignore-version-check` preference (Openbravo hot fixes): version checks
    /// on this site's devices do not fail while it is on.
    pub ignore_version_check: bool,
    /// Time zone, 24/7 and the agreed reboot time.
    #[serde(default)]
    pub settings: crate::rollout::SiteSettings,
}

/// `PUT /api/v1/sites/{name}/preferences`. Stored as the site-scoped variable
/// `ignore-version-check` (`Y`/`N`), so plugins read it through `vars`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SitePreferences {
    pub ignore_version_check: bool,
}

// ---------------------------------------------------------------------------
// Version overview

/// A device's version against its device type's reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum VersionStatus {
    Same,
    Different,
    /// Out of contact, no inventory, the plugin failed, or no reference: `error`
    /// says which.
    Unknown,
}

impl VersionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            VersionStatus::Same => "Same",
            VersionStatus::Different => "Different",
            VersionStatus::Unknown => "Unknown",
        }
    }

    pub fn parse(s: &str) -> Option<VersionStatus> {
        [
            VersionStatus::Same,
            VersionStatus::Different,
            VersionStatus::Unknown,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// The connection of a device in the version overview.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum ServerStatus {
    Online,
    Offline,
    /// In contact and in the middle of a task.
    Transitioning,
}

/// Query string of `GET /api/v1/versions`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct VersionQuery {
    pub device_type: Option<String>,
    pub site: Option<String>,
    pub status: Option<VersionStatus>,
    pub page: Option<u32>,
    pub per_page: Option<u32>,
}

/// One device in the version overview.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct VersionRow {
    pub device_id: i64,
    pub guid: String,
    pub name: String,
    pub site: String,
    pub device_type: String,
    pub server_status: ServerStatus,
    pub status: VersionStatus,
    /// Why the status is `Unknown`.
    pub error: Option<String>,
    pub version: String,
    /// Computed from the module versions (higher is newer); the installed version
    /// when the product has no modules.
    pub computed_version: String,
    pub reference_version: Option<String>,
    pub pending_sync: u32,
    pub differing_modules: u32,
    pub ignore_version_check: bool,
    pub computed_at: Option<DateTime<Utc>>,
}

/// A module whose version differs from the reference; `None` where it is missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ModuleDifference {
    pub name: String,
    pub reference: Option<String>,
    pub device: Option<String>,
}

/// One installed module next to the reference's version of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ModuleRow {
    pub name: String,
    pub version: String,
    pub reference: Option<String>,
}

/// `GET /api/v1/versions/{device_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct VersionDetail {
    pub row: VersionRow,
    pub differences: Vec<ModuleDifference>,
    pub modules: Vec<ModuleRow>,
}

/// Query string of `GET /api/v1/versions/modules`: one module across devices.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ModuleQuery {
    pub module: String,
    pub device_type: Option<String>,
    pub page: Option<u32>,
    pub per_page: Option<u32>,
}

/// One device's version of a module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ModuleDeviceRow {
    pub device_id: i64,
    pub guid: String,
    pub name: String,
    pub site: String,
    pub version: String,
    pub reference: Option<String>,
}

/// `PUT /api/v1/device-types/{name}/reference`: what the devices of a type are
/// compared with. Either explicit `version` and `modules`, or `from_device` to copy a
/// device's last inventory (the Openbravo "central" server).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ReferenceBody {
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub modules: Vec<ModuleVersion>,
    #[serde(default)]
    pub from_device: Option<i64>,
}

/// A device type's reference. Without an explicit one, the version of the
/// `Current` package is the reference (and modules are not compared).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ReferenceView {
    pub device_type: String,
    pub version: String,
    pub modules: Vec<ModuleVersion>,
    /// `explicit`, `device <guid>` or `package <file name>`.
    pub source: String,
    pub updated_at: DateTime<Utc>,
}

/// `POST /api/v1/versions/recompute`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RecomputeRequest {
    /// Only this device type; all when absent.
    #[serde(default)]
    pub device_type: Option<String>,
}

/// The answer to a recompute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RecomputeResult {
    pub devices: u64,
}

// ---------------------------------------------------------------------------
// Tokens, enrollment secrets, audit

/// `POST /api/v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CreateToken {
    pub name: String,
    pub role: Role,
    /// The vendor a `vendor` token acts for (required for that role, refused for
    /// the others): it manages only plugins that name this vendor.
    #[serde(default)]
    pub vendor: Option<String>,
}

/// A new operator token; the secret is shown only here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CreatedToken {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub token: String,
}

/// An operator token, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TokenView {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub vendor: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// `POST /api/v1/enrollment-secrets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CreateEnrollmentSecret {
    pub name: String,
    /// Only terminals of this site may enroll with it (a store's token).
    #[serde(default)]
    pub site: Option<String>,
    /// How many enrollments it serves; unlimited when absent.
    #[serde(default)]
    pub max_uses: Option<u32>,
    /// When it stops working; never when absent.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

/// A new enrollment secret; the secret is shown only here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CreatedEnrollmentSecret {
    pub id: i64,
    pub name: String,
    pub secret: String,
}

/// An enrollment secret, without the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct EnrollmentSecretView {
    pub id: i64,
    pub name: String,
    pub site: Option<String>,
    pub max_uses: Option<u32>,
    /// Enrollments it served.
    pub uses: u32,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// Query string of `GET /api/v1/audit`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AuditQuery {
    /// Entries with an id below this one (the next page of a newest-first listing).
    pub before: Option<i64>,
    /// Only entries about this kind of object (`task`, `group`, …).
    pub object: Option<String>,
    /// Default 100, at most 1000.
    pub limit: Option<u32>,
}

/// One change, who made it and to what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// `token <name>`, `device <guid>`, `server`.
    pub actor: String,
    /// What was done, e.g. `task.pause`.
    pub action: String,
    /// The kind of object (`task`).
    pub object: String,
    /// Its id or name.
    pub object_id: String,
    pub detail: serde_json::Value,
}

// ---------------------------------------------------------------------------
// Trust (TUF)

/// One metadata file of `POST /api/v1/tuf/metadata`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct MetadataFile {
    /// `root`, `targets`, `release` or `vendor-<vendor>`.
    pub role: String,
    /// The signed metadata as `posup` wrote it (`{"signed": …, "signatures": …}`).
    pub metadata: serde_json::Value,
}

/// `POST /api/v1/tuf/metadata`: signed metadata to publish, checked in order
/// (each root of a rotation in turn, then targets, then delegated roles) and
/// published together or not at all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PublishMetadata {
    pub files: Vec<MetadataFile>,
}

/// A published role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TufRole {
    pub role: String,
    pub version: u64,
    /// When terminals stop trusting this version (RFC 3339, UTC).
    pub expires: String,
}

/// The server's online keys, to name in `posup repo init`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct OnlineKeysView {
    pub snapshot_keyid: String,
    /// The public key as TUF metadata writes it.
    pub snapshot: serde_json::Value,
    pub timestamp_keyid: String,
    pub timestamp: serde_json::Value,
}

/// `GET /api/v1/tuf`: what the repository holds and what needs attention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TufStatus {
    /// The newest version of each role, soonest to expire first.
    pub roles: Vec<TufRole>,
    pub online_keys: OnlineKeysView,
    /// Offline metadata that expires within 30 days (terminals refuse updates
    /// after), or a repository not set up yet.
    pub warnings: Vec<String>,
}

/// Who signed a plugin or package: a delegated role listing its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SignatureView {
    /// The target name (`plugins/<device type>/<plugin>/…`, `packages/<device type>/…`).
    pub target: String,
    pub role: String,
    /// The role's keys that signed it.
    pub keyids: Vec<String>,
    /// Until when the role's metadata is valid.
    pub expires: String,
}

/// `GET /api/v1/health`: the server and its database answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Health {
    /// `ok`.
    pub status: String,
}

/// Query string of the variable list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct VariableFilter {
    /// Only this variable.
    pub name: Option<String>,
}

/// The answer to a variable change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ChangeId {
    /// `None` when removing a variable that was not set.
    pub change_id: Option<i64>,
}

/// Query string of a plugin upload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PluginUpload {
    /// The file's name, used in messages until the plugin's `info` names it.
    pub file_name: Option<String>,
}
