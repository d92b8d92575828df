//! The records a plugin builds and reads, with defaults, so a plugin names only
//! the fields it has something to say about.

/// The directories a plugin can be given. Each is mapped by the agent to a host
/// path from the device type's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

/// One directory a plugin asks for, and whether it needs to write there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirRequest {
    pub dir: Dir,
    pub write: bool,
}

impl DirRequest {
    /// `dir`, read-only.
    pub fn read(dir: Dir) -> Self {
        DirRequest { dir, write: false }
    }

    /// `dir`, read and write.
    pub fn write(dir: Dir) -> Self {
        DirRequest { dir, write: true }
    }
}

/// Everything a plugin may ask the host for. The agent grants the intersection
/// of this and what the operator and the terminal allow for the device type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub dirs: Vec<DirRequest>,
    /// Names of the services the plugin starts, stops or queries.
    pub services: Vec<String>,
    /// Whether the plugin runs scripts shipped inside packages (as root on a
    /// real terminal): see [`services::run_script`](crate::services::run_script).
    pub scripts: bool,
    /// Whether the plugin asks the cashier questions.
    pub prompt: bool,
    /// The product databases the plugin reads, and their tables: see
    /// [`database`](crate::database). Since interface 0.1.1.
    pub databases: Vec<DatabaseRequest>,
}

/// A product database a plugin reads (by the name the device configuration
/// and the operator use, e.g. `icecash`), and the only tables it reads there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatabaseRequest {
    pub name: String,
    pub tables: Vec<String>,
}

impl DatabaseRequest {
    pub fn new(name: &str, tables: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            tables: tables.iter().map(|t| (*t).to_owned()).collect(),
        }
    }
}

/// What a plugin is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginInfo {
    /// Short unique name, e.g. `kiosk`, `ukm5`, `oscar`.
    pub name: String,
    pub vendor: String,
    /// The plugin's own version (semver).
    pub version: String,
    pub description: String,
    /// Device types the plugin updates, e.g. `ukm5`, `iiko-front`.
    pub device_types: Vec<String>,
    pub capabilities: Capabilities,
}

/// One installed module (Openbravo modules, iiko plugins) and its version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleVersion {
    pub name: String,
    pub version: String,
}

/// The state of the product on this terminal, reported to the server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Product name as the vendor writes it, e.g. `UKM 5`.
    pub product: String,
    /// Installed version, empty when nothing is installed or nothing tells.
    pub version: String,
    /// Installed modules with their versions; empty when the product has none.
    pub modules: Vec<ModuleVersion>,
    /// File name of a package downloaded but not yet installed.
    pub loaded_package: Option<String>,
    /// Product state in the product's own words (`IDLE`, `maintenance`, `sale`).
    pub state: String,
    /// Batches of data not yet sent to central (Openbravo, IceCash).
    pub pending_sync: u32,
    /// The product is started and ready after its last update.
    pub ready: bool,
    /// The last update needs a full reboot of the terminal before it is in force.
    pub reboot_required: bool,
    /// Other facts, as name/value pairs (printer model, environment version).
    pub details: Vec<(String, String)>,
}

/// What `inspect` read from a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageInfo {
    /// The version the package installs.
    pub version: String,
    /// The kind of update in the product's words: `complete`, `partial`,
    /// `program`, `environment`, `plugin`.
    pub kind: String,
    /// A one-line note for operators.
    pub notes: String,
    /// The list of changes, plain text, empty when the package has none.
    pub changelog: String,
    /// Whether a failed update of this kind can be rolled back: `true` unless
    /// the product itself applies it in place (OSCAR small updates).
    pub rollback: bool,
}

impl Default for PackageInfo {
    fn default() -> Self {
        PackageInfo {
            version: String::new(),
            kind: String::new(),
            notes: String::new(),
            changelog: String::new(),
            rollback: true,
        }
    }
}

/// The kind of task a step belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// Put the package on the terminal without interrupting sale.
    Download,
    /// Apply it after the cashier agreed (or nobody answered).
    Update,
    /// Apply it at the set time without asking anyone: the operator's word that
    /// the store is closed.
    ForcedUpdate,
}

/// What every update step is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepContext {
    /// Path of the package archive, always under `/staging`.
    pub package: String,
    /// The package as `inspect` described it.
    pub info: PackageInfo,
    pub task: TaskKind,
    /// 1 the first time a step runs; more when the host runs it again after a
    /// crash or power loss.
    pub attempt: u32,
}
