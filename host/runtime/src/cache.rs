//! The on-disk cache of compiled components.
//!
//! A compiled component is native code that wasmtime loads without checking it,
//! so the cache is trusted only as far as nobody else can write it:
//!
//! - the directory is created owner-only (0700) and, before every use, must be a
//!   real directory owned by this user that no one else can write;
//! - entries are files of this user, mode 0600, opened without following links;
//! - an entry is used only when its sha256 is the one recorded in the cache's
//!   `index` when this host wrote it; anything else (an entry from elsewhere, a
//!   damaged one, one from before the index) is compiled again.
//!
//! An entry is named `<sha256 of the component>-<engine compatibility hash>.cwasm`:
//! the same bytes compiled by the same engine configuration. Entries and the index
//! are read and written through the folder's handle, replaced whole
//! ([`crate::beneath::replace_file`]), so a reader never sees half of one.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use cap_std::fs::Dir;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::beneath::{open_private_dir, replace_file};

/// The index of what this host wrote: `<entry name> <sha256>` lines.
const INDEX: &str = "index";
/// The index never grows beyond this; an index that did would be refused.
const MAX_INDEX: u64 = 1 << 20;
/// The largest compiled component read back.
const MAX_ENTRY: u64 = 512 << 20;

fn read_index(dir: &Dir) -> io::Result<BTreeMap<String, String>> {
    let Some(file) = open_own(dir, INDEX)? else {
        return Ok(BTreeMap::new());
    };
    let mut text = String::new();
    file.take(MAX_INDEX).read_to_string(&mut text)?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(name, sha)| (name.to_owned(), sha.to_owned()))
        .collect())
}

/// Opens a file of this user that no one else can write, without following a
/// link; `None` when absent.
fn open_own(dir: &Dir, name: &str) -> io::Result<Option<File>> {
    let Some(file) = crate::beneath::open_file_nofollow(dir.as_fd(), name.as_ref())? else {
        return Ok(None);
    };
    let meta = file.metadata()?;
    let uid = rustix::process::geteuid().as_raw();
    if meta.uid() != uid || meta.mode() & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{name} is not a private file of this user; it is not trusted"),
        ));
    }
    Ok(Some(file))
}

/// Stores a compiled component as entry `name` and records its sha256.
pub(crate) fn store(dir: &Path, name: &str, compiled: &[u8]) -> io::Result<()> {
    let dir = open_private_dir(dir)?;
    replace_file(dir.as_fd(), name, compiled)?;
    let mut index = read_index(&dir)?;
    index.insert(name.to_owned(), hex::encode(Sha256::digest(compiled)));
    let text: String = index
        .iter()
        .map(|(n, sha)| format!("{n} {sha}\n"))
        .collect();
    replace_file(dir.as_fd(), INDEX, text.as_bytes())
}

/// Whether entry `name` is one this host wrote (its sha256 is not checked here).
pub(crate) fn is_stored(dir: &Path, name: &str) -> bool {
    open_private_dir(dir).is_ok_and(|dir| {
        read_index(&dir).is_ok_and(|i| i.contains_key(name))
            && matches!(open_own(&dir, name), Ok(Some(_)))
    })
}

/// Loads entry `name`: `Ok(None)` when there is none this host wrote (absent, not
/// in the index, changed since, or not private), so it is compiled again.
///
/// The entry is read into memory rather than mapped: a mapped file that something
/// else truncates takes the whole process down with SIGBUS.
pub(crate) fn load(engine: &Engine, dir: &Path, name: &str) -> io::Result<Option<Component>> {
    let dir = open_private_dir(dir)?;
    let Some(recorded) = read_index(&dir)?.remove(name) else {
        return Ok(None);
    };
    let file = match open_own(&dir, name) {
        Ok(Some(f)) => f,
        Ok(None) => return Ok(None),
        Err(e) => {
            tracing::warn!("compile cache entry {name}: {e}; compiling again");
            return Ok(None);
        }
    };
    let mut bytes = Vec::new();
    file.take(MAX_ENTRY).read_to_end(&mut bytes)?;
    if hex::encode(Sha256::digest(&bytes)) != recorded {
        tracing::warn!("compile cache entry {name} is not what this host wrote; compiling again");
        return Ok(None);
    }
    // SAFETY: wasmtime requires the bytes to come from `precompile_component` of a
    // compatible engine and to be unmodified. They are exactly what `store` wrote
    // from `precompile_component` output (their sha256 is the one recorded then,
    // in a directory only this user can write), and the name carries the engine's
    // compatibility hash, which wasmtime checks again on load.
    #[allow(unsafe_code)]
    let component = unsafe { Component::deserialize(engine, &bytes) };
    match component {
        Ok(c) => Ok(Some(c)),
        Err(e) => {
            tracing::warn!("dropping unusable cached component {name}: {e}");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn engine() -> Engine {
        Engine::default()
    }

    /// The smallest component.
    const EMPTY: &[u8] = b"\0asm\x0d\0\x01\0";

    #[test]
    fn only_what_this_host_wrote_is_loaded() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache");
        let engine = engine();
        let compiled = engine.precompile_component(EMPTY).unwrap();
        store(&dir, "a.cwasm", &compiled).unwrap();
        assert!(load(&engine, &dir, "a.cwasm").unwrap().is_some());
        let mode = std::fs::metadata(dir.join("a.cwasm")).unwrap().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);

        // Bytes placed by someone else under an indexed name are not loaded.
        let mut other = compiled.clone();
        let last = other.len() - 1;
        other[last] ^= 1;
        std::fs::write(dir.join("a.cwasm"), &other).unwrap();
        assert!(load(&engine, &dir, "a.cwasm").unwrap().is_none());
        // Nor is an entry the index does not know.
        std::fs::write(dir.join("b.cwasm"), &compiled).unwrap();
        assert!(load(&engine, &dir, "b.cwasm").unwrap().is_none());
        assert!(!is_stored(&dir, "b.cwasm"));
        // Nor a link to an entry.
        std::fs::remove_file(dir.join("a.cwasm")).unwrap();
        store(&dir, "c.cwasm", &compiled).unwrap();
        std::os::unix::fs::symlink(dir.join("c.cwasm"), dir.join("a.cwasm")).unwrap();
        assert!(load(&engine, &dir, "a.cwasm").unwrap().is_none());
    }

    #[test]
    fn a_cache_open_to_others_is_closed_again() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        store(&dir, "a.cwasm", b"x").unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    }
}
