//! The wire types of the posup server's HTTP APIs.
//!
//! Two APIs share these types: the agent API under `/api/v1/agent` ([`agent`]), which
//! every terminal speaks, and the operator API under `/api/v1` ([`api`]), which the
//! web console, the CLI and scripts speak. Both are JSON. The types here are the
//! contract between the server and agents of other versions, so a field is only ever
//! added (as an `Option` or with a serde default), never renamed or removed.
//!
//! Timestamps are RFC 3339 in UTC. Identifiers of server objects are integers;
//! blobs (plugins, packages) are named by the hex sha256 of their content.
//!
//! The optional `schema` feature derives JSON Schemas for the server's OpenAPI
//! document.

use serde::{Deserialize, Serialize};

pub mod agent;
pub mod api;
pub mod notify;
pub mod rollout;

/// Path prefix of the operator API.
pub const API_PREFIX: &str = "/api/v1";
/// Path prefix of the agent API.
pub const AGENT_PREFIX: &str = "/api/v1/agent";

/// What a task does on each device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum TaskKind {
    /// Put the package on the terminal in the background, without interrupting sale.
    Download,
    /// Apply the downloaded package after the cashier agreed (or nobody answered).
    Update,
    /// Apply the package at the set time without asking anyone.
    ForcedUpdate,
}

impl TaskKind {
    pub const ALL: [TaskKind; 3] = [TaskKind::Download, TaskKind::Update, TaskKind::ForcedUpdate];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Download => "download",
            TaskKind::Update => "update",
            TaskKind::ForcedUpdate => "forced-update",
        }
    }

    pub fn parse(s: &str) -> Option<TaskKind> {
        TaskKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A phase of one update on a terminal, as the agent reports it and keeps it in
/// its journal: the download, reading the package, each plugin step, and the
/// cashier's consent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Download,
    Inspect,
    Precheck,
    Stage,
    Consent,
    Apply,
    Verify,
    Commit,
    Rollback,
}

impl Phase {
    pub const ALL: [Phase; 9] = [
        Phase::Download,
        Phase::Inspect,
        Phase::Precheck,
        Phase::Stage,
        Phase::Consent,
        Phase::Apply,
        Phase::Verify,
        Phase::Commit,
        Phase::Rollback,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Download => "download",
            Phase::Inspect => "inspect",
            Phase::Precheck => "precheck",
            Phase::Stage => "stage",
            Phase::Consent => "consent",
            Phase::Apply => "apply",
            Phase::Verify => "verify",
            Phase::Commit => "commit",
            Phase::Rollback => "rollback",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A directory a plugin can be given; the agent maps each to a host path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Dir {
    /// `/product`: the product's installation.
    Product,
    /// `/staging`: downloaded packages and trees prepared before the downtime.
    Staging,
    /// `/backup`: the copy a rollback restores from.
    Backup,
    /// `/logs`: the product's log files.
    Logs,
}

impl Dir {
    pub const ALL: [Dir; 4] = [Dir::Product, Dir::Staging, Dir::Backup, Dir::Logs];

    pub fn as_str(self) -> &'static str {
        match self {
            Dir::Product => "product",
            Dir::Staging => "staging",
            Dir::Backup => "backup",
            Dir::Logs => "logs",
        }
    }

    pub fn parse(s: &str) -> Option<Dir> {
        Dir::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

/// One directory and whether writing there is allowed (operator side) or needed
/// (plugin side).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DirAccess {
    pub dir: Dir,
    #[serde(default)]
    pub write: bool,
}

/// A set of capabilities: what a plugin requests in its `info`, what the operator
/// allows for a device type, or the intersection of both that a plugin is granted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Capabilities {
    #[serde(default)]
    pub dirs: Vec<DirAccess>,
    /// Host service names (systemd units, Windows services) the plugin may query,
    /// start, stop and restart.
    #[serde(default)]
    pub services: Vec<String>,
    /// Whether the plugin may run scripts shipped inside packages.
    #[serde(default)]
    pub scripts: bool,
    /// Whether the plugin may ask the person at the terminal.
    #[serde(default)]
    pub prompt: bool,
    /// Product databases (by the name terminals configure, e.g. `icecash`) the
    /// plugin may read; the plugin names the tables it reads.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<String>,
}

impl Capabilities {
    /// What an operator usually allows a product's updater: the product, staging
    /// and backup folders writable, the logs readable, the product's `services`
    /// and the cashier question; no scripts.
    pub fn updater(services: &[&str]) -> Capabilities {
        let dir = |dir, write| DirAccess { dir, write };
        Capabilities {
            dirs: vec![
                dir(Dir::Product, true),
                dir(Dir::Staging, true),
                dir(Dir::Backup, true),
                dir(Dir::Logs, false),
            ],
            services: services.iter().map(|s| (*s).to_owned()).collect(),
            scripts: false,
            prompt: true,
            databases: Vec::new(),
        }
    }

    /// What a plugin gets: a directory when both sides name it (writable only when
    /// both say so), a service or a database when both list it, scripts and prompt
    /// when both allow.
    pub fn intersect(&self, other: &Capabilities) -> Capabilities {
        let dirs = self
            .dirs
            .iter()
            .filter_map(|a| {
                other
                    .dirs
                    .iter()
                    .find(|b| b.dir == a.dir)
                    .map(|b| DirAccess {
                        dir: a.dir,
                        write: a.write && b.write,
                    })
            })
            .collect();
        Capabilities {
            dirs,
            services: self
                .services
                .iter()
                .filter(|s| other.services.contains(s))
                .cloned()
                .collect(),
            scripts: self.scripts && other.scripts,
            prompt: self.prompt && other.prompt,
            databases: self
                .databases
                .iter()
                .filter(|d| other.databases.contains(d))
                .cloned()
                .collect(),
        }
    }
}

/// Where the agent finds each directory on the terminal. A directory without a path
/// cannot be granted on that device type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DirPaths {
    pub product: Option<String>,
    pub staging: Option<String>,
    pub backup: Option<String>,
    pub logs: Option<String>,
}

impl DirPaths {
    pub fn get(&self, dir: Dir) -> Option<&str> {
        match dir {
            Dir::Product => self.product.as_deref(),
            Dir::Staging => self.staging.as_deref(),
            Dir::Backup => self.backup.as_deref(),
            Dir::Logs => self.logs.as_deref(),
        }
    }
}

/// One installed module and its version.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ModuleVersion {
    pub name: String,
    pub version: String,
}

/// The product state a plugin's `inventory` reports, as the agent forwards it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Inventory {
    /// Product name as the vendor writes it, e.g. `UKM 5`.
    pub product: String,
    /// Installed version, empty when nothing is installed.
    pub version: String,
    /// Installed modules with their versions; empty when the product has none.
    #[serde(default)]
    pub modules: Vec<ModuleVersion>,
    /// File name of a package downloaded but not yet installed.
    #[serde(default)]
    pub loaded_package: Option<String>,
    /// Product state in the product's own words (`IDLE`, `maintenance`, `sale`).
    #[serde(default)]
    pub state: String,
    /// Batches of data not yet sent to central.
    #[serde(default)]
    pub pending_sync: u32,
    /// The product is started and ready after its last update.
    #[serde(default)]
    pub ready: bool,
    /// The last update needs a full reboot of the terminal before it is in force.
    #[serde(default)]
    pub reboot_required: bool,
    /// Other facts as name/value pairs (printer model, environment version).
    #[serde(default)]
    pub details: Vec<(String, String)>,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ErrorBody {
    /// What failed, on which object, and what to do about it.
    pub error: String,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Items matching the query, on all pages.
    pub total: u64,
    /// 1-based page number.
    pub page: u32,
    pub per_page: u32,
}

/// A language posup speaks to people in: the console's, and a store's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Language {
    #[default]
    En,
    Ru,
}

impl Language {
    pub const ALL: [Language; 2] = [Language::En, Language::Ru];

    /// The BCP 47 tag.
    pub fn as_str(self) -> &'static str {
        match self {
            Language::En => "en",
            Language::Ru => "ru",
        }
    }

    pub fn parse(s: &str) -> Option<Language> {
        Language::ALL.into_iter().find(|l| l.as_str() == s)
    }
}

/// Per-task device counts: `total` = `offline` + `inprogress` + `failed` +
/// `success`, where `offline` and `inprogress` split the unfinished devices by
/// whether they are in contact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TaskCounts {
    pub total: u64,
    pub offline: u64,
    pub inprogress: u64,
    pub failed: u64,
    pub success: u64,
}
