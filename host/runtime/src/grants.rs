//! What a plugin may touch, and the mapping of its guest paths to host paths.
//!
//! A plugin asks for capabilities in its `info`; the operator allows some per device
//! type; the plugin gets the intersection. Everything not granted is denied: no
//! directory, no service, no scripts, no prompt.

use std::path::PathBuf;

use posup_world::latest::types::{Capabilities, DatabaseRequest, Dir};

/// The guest path of each directory a plugin can be given.
pub fn guest_root(dir: Dir) -> &'static str {
    match dir {
        Dir::Product => "/product",
        Dir::Staging => "/staging",
        Dir::Backup => "/backup",
        Dir::Logs => "/logs",
    }
}

/// The name of a directory as operators write it in configuration.
pub fn dir_name(dir: Dir) -> &'static str {
    &guest_root(dir)[1..]
}

/// Parses `product`, `staging`, `backup` or `logs`.
pub fn parse_dir(name: &str) -> Option<Dir> {
    [Dir::Product, Dir::Staging, Dir::Backup, Dir::Logs]
        .into_iter()
        .find(|d| dir_name(*d) == name)
}

/// One granted directory: its guest name, its host path, and whether the plugin may
/// write to it.
#[derive(Debug, Clone)]
pub struct DirGrant {
    pub dir: Dir,
    pub host: PathBuf,
    pub write: bool,
}

/// A product database a plugin may read: where it is (the device
/// configuration's url, which may hold a password) and the tables the plugin
/// asked for.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseGrant {
    pub name: String,
    pub url: String,
    pub tables: Vec<String>,
}

impl std::fmt::Debug for DatabaseGrant {
    // The url stays out of logs: it may carry the database's password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseGrant")
            .field("name", &self.name)
            .field("tables", &self.tables)
            .finish_non_exhaustive()
    }
}

/// A product database the terminal's configuration describes, by name.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseSource {
    pub name: String,
    pub url: String,
}

impl std::fmt::Debug for DatabaseSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSource")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Everything one plugin is granted on one device. The default grants nothing.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    pub dirs: Vec<DirGrant>,
    /// Service names the plugin may query, start, stop and restart.
    pub services: Vec<String>,
    /// Whether the plugin may run scripts from `/staging`.
    pub scripts: bool,
    /// Whether the plugin may ask the person at the terminal.
    pub prompt: bool,
    /// Product databases the plugin may read (`database`).
    pub databases: Vec<DatabaseGrant>,
    /// Set for the calls that only look (`inventory`, `inspect`, `precheck`):
    /// directories are read-only, services are only queried and scripts do not
    /// run, so whatever the plugin does there leaves the terminal as it was.
    pub look_only: bool,
}

/// What the operator allows for a device type, and where its directories are.
#[derive(Debug, Clone, Default)]
pub struct Allowance {
    /// Host path of each directory the device type offers, and whether writing is
    /// allowed there.
    pub dirs: Vec<DirGrant>,
    pub services: Vec<String>,
    pub scripts: bool,
    pub prompt: bool,
    pub databases: Vec<DatabaseSource>,
}

impl Grants {
    /// The intersection of what a plugin requests (its `info` capabilities and,
    /// since 0.1.1, its `databases`) and what the operator allows: a directory is
    /// granted when both name it, writable only when both say so; a database when
    /// both name it, with only the tables the plugin asked for.
    pub fn intersect(
        requested: &Capabilities,
        databases: &[DatabaseRequest],
        allowed: &Allowance,
    ) -> Grants {
        let dirs = requested
            .dirs
            .iter()
            .filter_map(|req| {
                allowed
                    .dirs
                    .iter()
                    .find(|a| a.dir == req.dir)
                    .map(|a| DirGrant {
                        dir: req.dir,
                        host: a.host.clone(),
                        write: a.write && req.write,
                    })
            })
            .collect();
        let services = requested
            .services
            .iter()
            .filter(|s| allowed.services.contains(s))
            .cloned()
            .collect();
        Grants {
            dirs,
            services,
            scripts: requested.scripts && allowed.scripts,
            prompt: requested.prompt && allowed.prompt,
            databases: databases
                .iter()
                .filter_map(|req| {
                    allowed
                        .databases
                        .iter()
                        .find(|a| a.name == req.name)
                        .map(|a| DatabaseGrant {
                            name: a.name.clone(),
                            url: a.url.clone(),
                            tables: req.tables.clone(),
                        })
                })
                .collect(),
            look_only: false,
        }
    }

    /// The same grants for a call that only looks (`inventory`, `inspect`,
    /// `precheck`): every directory read-only, services only queried, no script
    /// run. A plugin can still tell which of them it was granted.
    pub fn read_only(&self) -> Grants {
        let mut g = self.clone();
        for d in &mut g.dirs {
            d.write = false;
        }
        g.look_only = true;
        g
    }

    pub fn dir(&self, dir: Dir) -> Option<&DirGrant> {
        self.dirs.iter().find(|d| d.dir == dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intersection_needs_both_sides() {
        use posup_world::latest::types::DirRequest;
        let requested = Capabilities {
            dirs: vec![
                DirRequest {
                    dir: Dir::Product,
                    write: true,
                },
                DirRequest {
                    dir: Dir::Backup,
                    write: true,
                },
            ],
            services: vec!["kiosk".into(), "sshd".into()],
            scripts: true,
            prompt: true,
        };
        let allowed = Allowance {
            dirs: vec![DirGrant {
                dir: Dir::Product,
                host: "/srv/kiosk".into(),
                write: false,
            }],
            services: vec!["kiosk".into()],
            scripts: false,
            prompt: true,
            databases: vec![DatabaseSource {
                name: "icecash".into(),
                url: "mysql://icecash:secret@127.0.0.1/IceCash".into(),
            }],
        };
        let asked = [
            DatabaseRequest {
                name: "icecash".into(),
                tables: vec!["tb_sets".into()],
            },
            DatabaseRequest {
                name: "accounting".into(),
                tables: vec!["ledger".into()],
            },
        ];
        let g = Grants::intersect(&requested, &asked, &allowed);
        assert_eq!(g.dirs.len(), 1);
        assert!(!g.dirs[0].write);
        assert_eq!(g.services, vec!["kiosk".to_string()]);
        assert!(!g.scripts);
        assert!(g.prompt);
        assert_eq!(g.databases.len(), 1);
        assert_eq!(g.databases[0].tables, vec!["tb_sets".to_string()]);
        assert!(!format!("{g:?}").contains("secret"), "{g:?}");
    }
}
