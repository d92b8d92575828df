//! Where a product lives on this terminal, and what the operator lets its plugin
//! touch: the device configuration, read from TOML.
//!
//! ```toml
//! [dirs]                      # host paths of the plugin's directories
//! product = "/opt/kiosk"
//! staging = "/var/lib/posup/kiosk/staging"   # same filesystem as product
//! backup  = "/var/lib/posup/kiosk/backup"    # same filesystem as product
//! logs    = "/var/log/kiosk"
//!
//! [allow]                     # what the plugin may have, at most
//! read_only = ["logs"]        # directories never written (default: logs)
//! server_paths = []           # directories whose location the server may give
//! services = ["kiosk"]
//! scripts = false
//! prompt = true
//!
//! [services.kiosk]            # how each service is run: a systemd unit…
//! systemd = "iiko-kiosk.service"
//! # …or a process posup supervises itself
//! # command = ["/opt/kiosk/bin/kiosk", "--daemon"]
//! # log = "/var/log/kiosk/stdout.log"
//!
//! # A product's own database a plugin may read (IceCash's MySQL), listed in
//! # [allow] databases = ["icecash"]; the file holds the password, so it is
//! # root's alone.
//! # [databases.icecash]
//! # url = "mysql://icecash:icecash1024@127.0.0.1:3306/IceCash"
//! ```
//!
//! Defaults, each on purpose: a directory not listed is not offered; `logs` is
//! read-only; no service, no scripts, no prompt and no database unless listed.
//!
//! This file is the ceiling of what any plugin may touch on the terminal: the
//! server narrows it (the operator's allowance per device type), never widens it.
//! The one thing the server may add is the *location* of a directory that
//! `[dirs]` leaves out and `server_paths` names — say, when every terminal of a
//! type keeps its logs where the device type's `paths` says. Such a location
//! must be an absolute, plain path (no `..`, not `/`), and `read_only` applies
//! to it as to any other.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use posup_runtime::caps::prompt::BoxFuture;
use posup_runtime::caps::services::{ProcessSpec, Processes, ServiceManager, Systemd};
use posup_runtime::caps::{CapError, CapResult};
use posup_runtime::grants::{dir_name, parse_dir};
use posup_runtime::types::{Capabilities, DatabaseRequest};
use posup_runtime::wit::services::State;
use posup_runtime::{Allowance, DatabaseSource, DirGrant};
use serde::Deserialize;

/// One product's configuration on this terminal.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Directory name (`product`, `staging`, `backup`, `logs`) → host path.
    #[serde(default)]
    pub dirs: BTreeMap<String, PathBuf>,
    #[serde(default)]
    pub allow: Allow,
    /// Service name → how it runs.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceConfig>,
    /// Database name → where it is.
    #[serde(default)]
    pub databases: BTreeMap<String, DatabaseConfig>,
}

/// Where a product database is: a `mysql://user:password@host:port/database`
/// address. Printed nowhere: it may hold a password.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: String,
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatabaseConfig { .. }")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Allow {
    #[serde(default = "default_read_only")]
    pub read_only: Vec<String>,
    /// Directories (`product`, `staging`, `backup`, `logs`) whose host path the
    /// server's device-type `paths` may supply when `[dirs]` leaves them out.
    /// Default: none.
    #[serde(default)]
    pub server_paths: Vec<String>,
    #[serde(default)]
    pub services: Vec<String>,
    #[serde(default)]
    pub scripts: bool,
    #[serde(default)]
    pub prompt: bool,
    /// Databases (named in `[databases.*]`) plugins may read.
    #[serde(default)]
    pub databases: Vec<String>,
}

impl Default for Allow {
    fn default() -> Self {
        Self {
            read_only: default_read_only(),
            server_paths: Vec::new(),
            services: Vec::new(),
            scripts: false,
            prompt: false,
            databases: Vec::new(),
        }
    }
}

fn default_read_only() -> Vec<String> {
    vec!["logs".into()]
}

/// How one service runs: exactly one of `systemd` or `command`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub systemd: Option<String>,
    pub command: Option<Vec<String>>,
    pub cwd: Option<PathBuf>,
    /// Where a supervised process's output goes.
    pub log: Option<PathBuf>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// One thing a plugin asks for that a configuration does not give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lacking {
    /// The configuration line that would give it.
    pub line: String,
    /// Whether an update cannot work without it: a folder the plugin writes, a
    /// service it runs. Read-only folders, scripts and questions may be left
    /// out on purpose.
    pub blocks: bool,
}

/// A configuration that cannot be used, with what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("device configuration {path}: {message}")]
    Invalid { path: String, message: String },
    #[error("device configuration {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

impl DeviceConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: DeviceConfig = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: origin.to_owned(),
            message: e.to_string(),
        })?;
        config.check(origin)?;
        Ok(config)
    }

    /// Checks a configuration that was read as part of a larger file (the agent's).
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        self.check(origin)
    }

    fn check(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: origin.to_owned(),
            message,
        };
        for name in self.dirs.keys().chain(self.allow.read_only.iter()) {
            if parse_dir(name).is_none() {
                return Err(invalid(format!(
                    "unknown directory `{name}`: use product, staging, backup or logs"
                )));
            }
        }
        for (name, path) in &self.dirs {
            if !path.is_absolute() {
                return Err(invalid(format!(
                    "dirs.{name} = {}: must be an absolute path",
                    path.display()
                )));
            }
        }
        for (name, svc) in &self.services {
            match (&svc.systemd, &svc.command) {
                (Some(_), None) => {}
                (None, Some(cmd)) if !cmd.is_empty() => {}
                _ => {
                    return Err(invalid(format!(
                        "services.{name}: give exactly one of `systemd = \"unit\"` or `command = [\"program\", …]`"
                    )));
                }
            }
        }
        for name in &self.allow.services {
            if !self.services.contains_key(name) {
                return Err(invalid(format!(
                    "allow.services names `{name}` but there is no [services.{name}] saying how it runs"
                )));
            }
        }
        for (name, db) in &self.databases {
            if !(db.url.starts_with("mysql://") || db.url.starts_with("mariadb://")) {
                return Err(invalid(format!(
                    "databases.{name}.url: give a mysql://user:password@host:port/database address"
                )));
            }
        }
        for name in &self.allow.databases {
            if !self.databases.contains_key(name) {
                return Err(invalid(format!(
                    "allow.databases names `{name}` but there is no [databases.{name}] saying where it is"
                )));
            }
        }
        Ok(())
    }

    /// The host path of a directory, if configured.
    pub fn dir(&self, name: &str) -> Option<&Path> {
        self.dirs.get(name).map(PathBuf::as_path)
    }

    /// What the operator allows, for intersecting with the plugin's request.
    /// This configuration with the locations the server supplies (`server(name)`
    /// gives the device type's path of a directory) for the directories
    /// `server_paths` names and `[dirs]` leaves out. Nothing else the server says
    /// reaches the grants.
    pub fn with_server_paths(mut self, server: impl Fn(&str) -> Option<String>) -> DeviceConfig {
        for name in self.allow.server_paths.clone() {
            if self.dirs.contains_key(&name) || parse_dir(&name).is_none() {
                continue;
            }
            let Some(path) = server(&name) else { continue };
            let p = PathBuf::from(&path);
            let plain = p.is_absolute()
                && p.components().count() > 1
                && p.components().all(|c| {
                    matches!(
                        c,
                        std::path::Component::RootDir | std::path::Component::Normal(_)
                    )
                });
            if plain {
                self.dirs.insert(name, p);
            } else {
                tracing::warn!(
                    "the server's path {path:?} for {name} is not an absolute plain path; {name} is not offered"
                );
            }
        }
        self
    }

    pub fn allowance(&self) -> Allowance {
        let dirs = self
            .dirs
            .iter()
            .filter_map(|(name, host)| {
                parse_dir(name).map(|dir| DirGrant {
                    dir,
                    host: host.clone(),
                    write: !self.allow.read_only.contains(name),
                })
            })
            .collect();
        Allowance {
            dirs,
            services: self.allow.services.clone(),
            scripts: self.allow.scripts,
            prompt: self.allow.prompt,
            databases: self
                .allow
                .databases
                .iter()
                .filter_map(|name| {
                    self.databases.get(name).map(|d| DatabaseSource {
                        name: name.clone(),
                        url: d.url.clone(),
                    })
                })
                .collect(),
        }
    }

    /// What a plugin asks for (`requested`) that this configuration does not
    /// give, each as the line of the configuration that would give it. Empty
    /// when everything it asks for is granted. `posup apply` shows these before
    /// any step runs.
    pub fn missing_for(
        &self,
        requested: &Capabilities,
        databases: &[DatabaseRequest],
    ) -> Vec<Lacking> {
        let mut missing = Vec::new();
        for req in &requested.dirs {
            let name = dir_name(req.dir);
            if !self.dirs.contains_key(name) {
                missing.push(Lacking {
                    line: format!("[dirs] {name} = \"/path/of/the/{name}/folder\""),
                    // A folder the plugin only reads (a product's logs) may be
                    // absent on purpose; plugins read it where it is.
                    blocks: req.write,
                });
            } else if req.write && self.allow.read_only.iter().any(|r| r == name) {
                missing.push(Lacking {
                    line: format!(
                        "[allow] read_only = {:?}   # without \"{name}\": the plugin writes there",
                        self.allow
                            .read_only
                            .iter()
                            .filter(|r| *r != name)
                            .collect::<Vec<_>>()
                    ),
                    blocks: true,
                });
            }
        }
        for service in &requested.services {
            if !self.allow.services.contains(service) {
                missing.push(Lacking {
                    line: format!("[allow] services = [\"{service}\", …]"),
                    blocks: true,
                });
                if !self.services.contains_key(service) {
                    missing.push(Lacking {
                        line: format!(
                            "[services.{service}] command = [\"/path/to/the/program\"]   # or systemd = \"{service}.service\""
                        ),
                        blocks: true,
                    });
                }
            }
        }
        // Scripts and questions are the operator's choice per site: a plugin
        // refuses what needs them (an environment update), the rest goes on.
        if requested.scripts && !self.allow.scripts {
            missing.push(Lacking {
                line: "[allow] scripts = true   # the plugin runs scripts from packages, as root"
                    .into(),
                blocks: false,
            });
        }
        if requested.prompt && !self.allow.prompt {
            missing.push(Lacking {
                line: "[allow] prompt = true   # the plugin asks the person at the terminal".into(),
                blocks: false,
            });
        }
        // A product database is read where one is described; plugins fall back
        // to what they know without it.
        for db in databases {
            let name = &db.name;
            if !self.allow.databases.contains(name) {
                missing.push(Lacking {
                    line: format!("[allow] databases = [\"{name}\", …]"),
                    blocks: false,
                });
            }
            if !self.databases.contains_key(name) {
                missing.push(Lacking {
                    line: format!(
                        "[databases.{name}] url = \"mysql://user:password@127.0.0.1:3306/database\"   # tables {}",
                        db.tables.join(", ")
                    ),
                    blocks: false,
                });
            }
        }
        missing
    }

    /// The service backend for the configured services. Supervised processes keep
    /// their pidfiles under `run_dir`, so a restarted agent still knows them.
    pub fn service_manager(&self, run_dir: &Path) -> Option<Arc<dyn ServiceManager>> {
        if self.services.is_empty() {
            return None;
        }
        let systemd: Vec<_> = self
            .services
            .iter()
            .filter_map(|(n, s)| s.systemd.as_ref().map(|u| (n.clone(), u.clone())))
            .collect();
        let processes: Vec<_> = self
            .services
            .iter()
            .filter_map(|(n, s)| {
                s.command
                    .as_ref()
                    .map(|c| (n.clone(), c.clone(), s.clone()))
            })
            .collect();
        let mut by_name: BTreeMap<String, Arc<dyn ServiceManager>> = BTreeMap::new();
        if !systemd.is_empty() {
            let mut m = Systemd::new();
            for (name, unit) in &systemd {
                m = m.with_unit(name.clone(), unit.clone());
            }
            let m: Arc<dyn ServiceManager> = Arc::new(m);
            for (name, _) in systemd {
                by_name.insert(name, m.clone());
            }
        }
        if !processes.is_empty() {
            let mut m = Processes::new(run_dir);
            for (name, cmd, cfg) in &processes {
                let mut spec = ProcessSpec::new(&cmd[0]).args(cmd[1..].iter().cloned());
                if let Some(cwd) = &cfg.cwd {
                    spec = spec.cwd(cwd.clone());
                }
                if let Some(log) = &cfg.log {
                    spec = spec.log(log.clone());
                }
                for (k, v) in &cfg.env {
                    spec = spec.env(k.clone(), v.clone());
                }
                m = m.with_service(name.clone(), spec);
            }
            let m: Arc<dyn ServiceManager> = Arc::new(m);
            for (name, _, _) in processes {
                by_name.insert(name, m.clone());
            }
        }
        Some(Arc::new(Routed(by_name)))
    }
}

/// Sends each service name to the backend that runs it.
struct Routed(BTreeMap<String, Arc<dyn ServiceManager>>);

impl Routed {
    fn get(&self, name: &str) -> CapResult<&Arc<dyn ServiceManager>> {
        self.0.get(name).ok_or_else(|| {
            CapError::not_found(format!(
                "service {name}: the device configuration does not say how it runs; add [services.{name}]"
            ))
        })
    }
}

impl ServiceManager for Routed {
    fn status<'a>(&'a self, name: &'a str) -> BoxFuture<'a, CapResult<State>> {
        Box::pin(async move { self.get(name)?.status(name).await })
    }

    fn start<'a>(&'a self, name: &'a str) -> BoxFuture<'a, CapResult<()>> {
        Box::pin(async move { self.get(name)?.start(name).await })
    }

    fn stop<'a>(&'a self, name: &'a str) -> BoxFuture<'a, CapResult<()>> {
        Box::pin(async move { self.get(name)?.stop(name).await })
    }

    fn restart<'a>(&'a self, name: &'a str) -> BoxFuture<'a, CapResult<()>> {
        Box::pin(async move { self.get(name)?.restart(name).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_plugin_lacks_is_named_as_the_line_that_gives_it() {
        use posup_runtime::types::{Dir, DirRequest};
        let config = DeviceConfig::parse(
            r#"
            [dirs]
            product = "/opt/frontol"
            logs = "/var/log/frontol"
            [allow]
            services = ["frontol-db"]
            [services.frontol-db]
            systemd = "frontol-db.service"
            "#,
            "device.toml",
        )
        .unwrap();
        let asks = Capabilities {
            dirs: vec![
                DirRequest {
                    dir: Dir::Product,
                    write: true,
                },
                DirRequest {
                    dir: Dir::Staging,
                    write: true,
                },
                DirRequest {
                    dir: Dir::Logs,
                    write: true,
                },
            ],
            services: vec!["frontol".into(), "frontol-db".into()],
            scripts: true,
            prompt: false,
        };
        let missing = config.missing_for(&asks, &[]);
        let lines: Vec<&str> = missing.iter().map(|m| m.line.as_str()).collect();
        let blocking: Vec<bool> = missing.iter().map(|m| m.blocks).collect();
        assert_eq!(blocking, [true, true, true, true, false]);
        assert_eq!(
            lines,
            [
                "[dirs] staging = \"/path/of/the/staging/folder\"",
                "[allow] read_only = []   # without \"logs\": the plugin writes there",
                "[allow] services = [\"frontol\", …]",
                "[services.frontol] command = [\"/path/to/the/program\"]   # or systemd = \"frontol.service\"",
                "[allow] scripts = true   # the plugin runs scripts from packages, as root",
            ]
        );
        let enough = Capabilities {
            dirs: vec![DirRequest {
                dir: Dir::Product,
                write: true,
            }],
            services: vec!["frontol-db".into()],
            scripts: false,
            prompt: false,
        };
        assert!(config.missing_for(&enough, &[]).is_empty());
        let reads_logs = Capabilities {
            dirs: vec![DirRequest {
                dir: Dir::Backup,
                write: false,
            }],
            services: vec![],
            scripts: false,
            prompt: true,
        };
        assert!(
            config
                .missing_for(&reads_logs, &[])
                .iter()
                .all(|m| !m.blocks),
            "a folder only read, and questions, may be left out"
        );
    }

    #[test]
    fn a_database_is_offered_only_where_described_and_allowed() {
        let text = r#"
            [allow]
            databases = ["icecash"]
            [databases.icecash]
            url = "mysql://icecash:icecash1024@127.0.0.1:3306/IceCash"
            [databases.accounting]
            url = "mysql://root@127.0.0.1/ledger"
        "#;
        let config = DeviceConfig::parse(text, "icecash.toml").unwrap();
        let a = config.allowance();
        assert_eq!(
            a.databases.len(),
            1,
            "described but not allowed: not offered"
        );
        assert_eq!(a.databases[0].name, "icecash");
        assert!(!format!("{config:?}{a:?}").contains("icecash1024"));

        let asks = [
            DatabaseRequest {
                name: "icecash".into(),
                tables: vec!["tb_sets".into()],
            },
            DatabaseRequest {
                name: "frontol".into(),
                tables: vec!["settings".into(), "receipts".into()],
            },
        ];
        let nothing = Capabilities {
            dirs: vec![],
            services: vec![],
            scripts: false,
            prompt: false,
        };
        let missing = config.missing_for(&nothing, &asks);
        let lines: Vec<&str> = missing.iter().map(|m| m.line.as_str()).collect();
        assert_eq!(
            lines,
            [
                "[allow] databases = [\"frontol\", …]",
                "[databases.frontol] url = \"mysql://user:password@127.0.0.1:3306/database\"   # tables settings, receipts",
            ]
        );
        assert!(missing.iter().all(|m| !m.blocks), "plugins do without");

        let unknown = DeviceConfig::parse("[allow]\ndatabases = [\"x\"]", "t.toml").unwrap_err();
        assert!(unknown.to_string().contains("[databases.x]"), "{unknown}");
        let bad_url =
            DeviceConfig::parse("[databases.x]\nurl = \"postgres://h/db\"", "t.toml").unwrap_err();
        assert!(bad_url.to_string().contains("mysql://"), "{bad_url}");
    }

    const KIOSK: &str = r#"
        [dirs]
        product = "/opt/kiosk"
        staging = "/var/lib/posup/kiosk/staging"
        backup = "/var/lib/posup/kiosk/backup"
        logs = "/var/log/kiosk"

        [allow]
        services = ["kiosk"]
        prompt = true

        [services.kiosk]
        systemd = "iiko-kiosk.service"
    "#;

    /// The server named `/` as the product directory of a type whose terminals
    /// leave `product` out: it is never offered, and neither is anything the
    /// file does not let the server place.
    #[test]
    fn the_server_never_widens_the_terminal() {
        let server = |name: &str| match name {
            "product" => Some("/".to_owned()),
            "backup" => Some("/srv/backup".to_owned()),
            "logs" => Some("/var/log/../../etc".to_owned()),
            _ => Some("/elsewhere".to_owned()),
        };
        let bare = DeviceConfig::parse("[allow]\nservices = []", "t.toml").unwrap();
        assert!(bare.clone().with_server_paths(server).dirs.is_empty());
        let some = DeviceConfig::parse(
            "[dirs]\nstaging = \"/var/lib/posup/staging\"\n[allow]\nserver_paths = [\"product\", \"backup\", \"logs\", \"staging\"]",
            "t.toml",
        )
        .unwrap()
        .with_server_paths(server);
        assert_eq!(some.dirs.get("backup"), Some(&PathBuf::from("/srv/backup")));
        assert_eq!(
            some.dirs.get("staging"),
            Some(&PathBuf::from("/var/lib/posup/staging")),
            "the file's own location wins"
        );
        assert!(
            !some.dirs.contains_key("product"),
            "`/` is never a granted root"
        );
        assert!(!some.dirs.contains_key("logs"), "`..` is refused");
        let logs_ro = some.allowance();
        assert!(
            logs_ro
                .dirs
                .iter()
                .all(|d| d.dir != posup_runtime::types::Dir::Logs)
        );
    }

    #[test]
    fn logs_are_read_only_unless_said_otherwise() {
        let c = DeviceConfig::parse(KIOSK, "kiosk.toml").unwrap();
        let a = c.allowance();
        let logs = a
            .dirs
            .iter()
            .find(|d| posup_runtime::grants::dir_name(d.dir) == "logs")
            .unwrap();
        assert!(!logs.write);
        let product = a
            .dirs
            .iter()
            .find(|d| posup_runtime::grants::dir_name(d.dir) == "product")
            .unwrap();
        assert!(product.write);
        assert_eq!(a.services, vec!["kiosk".to_string()]);
        assert!(!a.scripts);
        assert!(a.prompt);
    }

    #[test]
    fn mistakes_are_named() {
        let err = DeviceConfig::parse("[dirs]\nproduct = \"rel/path\"\n", "x.toml").unwrap_err();
        assert!(err.to_string().contains("dirs.product"), "{err}");
        let err = DeviceConfig::parse("[dirs]\nhome = \"/home\"\n", "x.toml").unwrap_err();
        assert!(err.to_string().contains("`home`"), "{err}");
        let err = DeviceConfig::parse("[allow]\nservices = [\"kiosk\"]\n", "x.toml").unwrap_err();
        assert!(err.to_string().contains("[services.kiosk]"), "{err}");
        let err = DeviceConfig::parse("[services.kiosk]\n", "x.toml").unwrap_err();
        assert!(err.to_string().contains("exactly one"), "{err}");
    }
}
