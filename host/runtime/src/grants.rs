//! What a plugin may touch, and the mapping of its guest paths to host paths.
//!
//! A plugin asks for capabilities in its `info`; the operator allows some per device
//! type; the plugin gets the intersection. Everything not granted is denied: no
//! directory, no service, no scripts, no prompt.

use std::path::{Component, Path, PathBuf};

use crate::caps::{CapError, CapResult};
use posup_world::latest::types::{Capabilities, Dir};

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
}

impl Grants {
    /// The intersection of what a plugin requests and what the operator allows: a
    /// directory is granted when both name it, writable only when both say so.
    pub fn intersect(requested: &Capabilities, allowed: &Allowance) -> Grants {
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
        }
    }

    /// The same grants with every directory read-only: for `inventory` and
    /// `inspect`, which must not change anything.
    pub fn read_only(&self) -> Grants {
        let mut g = self.clone();
        for d in &mut g.dirs {
            d.write = false;
        }
        g.scripts = false;
        g
    }

    pub fn dir(&self, dir: Dir) -> Option<&DirGrant> {
        self.dirs.iter().find(|d| d.dir == dir)
    }

    /// Maps a guest path (e.g. `/product/bin/oscar.ini`) to its host path, refusing
    /// paths outside the granted directories, writes to read-only ones, and paths
    /// that reach outside their directory through `..` or a symbolic link.
    pub fn resolve(&self, guest: &str, write: bool) -> CapResult<PathBuf> {
        let rel = normalize(guest)?;
        let mut parts = rel.components();
        let first = parts
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .ok_or_else(|| CapError::invalid(format!("{guest}: not inside a granted directory")))?;
        let dir = parse_dir(first).ok_or_else(|| {
            CapError::denied(format!(
                "{guest}: only /product, /staging, /backup and /logs can be granted"
            ))
        })?;
        let grant = self.dir(dir).ok_or_else(|| {
            CapError::denied(format!(
                "{guest}: the directory {} is not granted to this plugin",
                guest_root(dir)
            ))
        })?;
        if write && !grant.write {
            return Err(CapError::denied(format!(
                "{guest}: the directory {} is granted read-only",
                guest_root(dir)
            )));
        }
        let host = grant.host.join(parts.as_path());
        ensure_inside(&grant.host, &host, guest)?;
        Ok(host)
    }
}

/// Lexically normalises an absolute guest path to a relative one, refusing `..`
/// that would climb above the root.
fn normalize(guest: &str) -> CapResult<PathBuf> {
    let path = Path::new(guest);
    if !path.is_absolute() {
        return Err(CapError::invalid(format!(
            "{guest}: guest paths are absolute, e.g. /product/bin"
        )));
    }
    let mut out: Vec<&std::ffi::OsStr> = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(s) => out.push(s),
            Component::ParentDir => {
                // Climbing out of a granted directory's root is never allowed, even
                // back into another granted one: `/product/../staging` is refused.
                if out.len() <= 1 {
                    return Err(CapError::invalid(format!(
                        "{guest}: `..` leaves the granted directory"
                    )));
                }
                out.pop();
            }
            Component::Prefix(_) => {
                return Err(CapError::invalid(format!("{guest}: not a guest path")));
            }
        }
    }
    Ok(out.iter().collect())
}

/// Checks that `host`, with every symbolic link in its existing part resolved, is
/// still inside `root`.
fn ensure_inside(root: &Path, host: &Path, guest: &str) -> CapResult<()> {
    let root = root.canonicalize().map_err(|e| {
        CapError::io(format!(
            "{guest}: the granted directory {} is not usable: {e}",
            root.display()
        ))
    })?;
    // The deepest ancestor that exists decides where the path really leads; what
    // follows it does not exist yet and so cannot be a link.
    let mut existing = host.to_path_buf();
    let mut rest = Vec::new();
    while std::fs::symlink_metadata(&existing).is_err() {
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_owned());
                existing = parent.to_path_buf();
            }
            _ => break,
        }
    }
    // A final component that is itself a link is fine to remove or replace, but
    // following it must not leave the root.
    let real = existing.canonicalize().unwrap_or(existing);
    if !real.starts_with(&root) {
        return Err(CapError::invalid(format!(
            "{guest}: resolves through a symbolic link outside its granted directory"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(root: &Path) -> Grants {
        Grants {
            dirs: vec![
                DirGrant {
                    dir: Dir::Product,
                    host: root.join("product"),
                    write: true,
                },
                DirGrant {
                    dir: Dir::Logs,
                    host: root.join("logs"),
                    write: false,
                },
            ],
            ..Grants::default()
        }
    }

    #[test]
    fn resolves_only_granted_paths() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("product/bin")).unwrap();
        std::fs::create_dir_all(tmp.path().join("logs")).unwrap();
        let g = grants(tmp.path());
        assert_eq!(
            g.resolve("/product/bin/oscar.ini", true).unwrap(),
            tmp.path().join("product/bin/oscar.ini")
        );
        assert_eq!(
            g.resolve("/logs/kiosk.log", false).unwrap(),
            tmp.path().join("logs/kiosk.log")
        );
        let err = g.resolve("/logs/kiosk.log", true).unwrap_err();
        assert!(err.message.contains("read-only"), "{}", err.message);
        let err = g.resolve("/backup/x", false).unwrap_err();
        assert!(err.message.contains("not granted"), "{}", err.message);
        let err = g.resolve("/product/../logs/x", false).unwrap_err();
        assert!(err.message.contains(".."), "{}", err.message);
        let err = g.resolve("/etc/passwd", false).unwrap_err();
        assert!(err.message.contains("/etc/passwd"), "{}", err.message);
        assert!(g.resolve("product/x", false).is_err());
    }

    #[test]
    fn refuses_symlinks_out_of_the_grant() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("product")).unwrap();
        std::os::unix::fs::symlink("/etc", tmp.path().join("product/etc")).unwrap();
        let g = grants(tmp.path());
        let err = g.resolve("/product/etc/passwd", false).unwrap_err();
        assert!(err.message.contains("symbolic link"), "{}", err.message);
    }

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
        };
        let g = Grants::intersect(&requested, &allowed);
        assert_eq!(g.dirs.len(), 1);
        assert!(!g.dirs[0].write);
        assert_eq!(g.services, vec!["kiosk".to_string()]);
        assert!(!g.scripts);
        assert!(g.prompt);
    }
}
