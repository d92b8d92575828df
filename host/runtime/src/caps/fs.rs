//! `fs`: tree copies, atomic directory exchange, removal and free space.
//!
//! These are the operations an update needs to be undoable: copy the installation
//! aside, build the new one beside it, and swap the two in one step. None of them
//! follows a symbolic link out of its tree: links are copied and removed as links.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{self as stdfs, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use posup_world::latest::fs;
use posup_world::latest::types::Error as WitError;
use wasmtime::component::{HasSelf, Linker};

use super::{CapError, CapResult};
use crate::grants::{Grants, guest_root, parse_dir};

/// Per-step state of `fs`.
pub struct FsState {
    grants: Arc<Grants>,
}

impl FsState {
    pub fn new(grants: Arc<Grants>) -> Self {
        Self { grants }
    }
}

impl fs::Host for FsState {
    async fn copy_tree(&mut self, src: String, dst: String) -> Result<u64, WitError> {
        let grants = self.grants.clone();
        let what = format!("copying {src} to {dst}");
        super::blocking(&what, move || copy_tree(&grants, &src, &dst)).await
    }

    async fn exchange(&mut self, a: String, b: String) -> Result<(), WitError> {
        let grants = self.grants.clone();
        let what = format!("exchanging {a} and {b}");
        super::blocking(&what, move || exchange(&grants, &a, &b)).await
    }

    async fn remove_tree(&mut self, path: String) -> Result<(), WitError> {
        let grants = self.grants.clone();
        let what = format!("removing {path}");
        super::blocking(&what, move || remove_tree(&grants, &path)).await
    }

    async fn free_space(&mut self, path: String) -> Result<u64, WitError> {
        let grants = self.grants.clone();
        let what = format!("free space at {path}");
        super::blocking(&what, move || free_space(&grants, &path)).await
    }
}

pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut FsState,
) -> wasmtime::Result<()> {
    fs::add_to_linker::<T, HasSelf<FsState>>(linker, get)
}

/// Suffix of the name through which [`exchange_by_renames`] moves its first path.
const EXCHANGE_SUFFIX: &str = ".posup-exchange";

/// Copies the tree at guest path `src` to guest path `dst`, which must not exist,
/// keeping modes, times, symbolic links and hard links. The copy is built under a
/// hidden sibling name and renamed into place at the end, so a failure leaves no
/// partial `dst`. Returns the bytes of file data copied. Blocking.
pub fn copy_tree(grants: &Grants, src: &str, dst: &str) -> CapResult<u64> {
    let src_host = resolve_link_itself(grants, src, false)?;
    let dst_host = clean(&grants.resolve(dst, true)?);
    stdfs::symlink_metadata(&src_host).map_err(|e| CapError::from_io(src, &e))?;
    match stdfs::symlink_metadata(&dst_host) {
        Ok(_) => {
            return Err(CapError::invalid(format!(
                "{dst}: already exists; copy-tree creates its destination, so remove it first"
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(CapError::from_io(dst, &e)),
    }
    let (Some(parent), Some(name)) = (dst_host.parent(), dst_host.file_name()) else {
        return Err(CapError::invalid(format!(
            "{dst}: cannot be a copy destination"
        )));
    };
    if !parent.is_dir() {
        return Err(CapError::not_found(format!(
            "{dst}: the folder it would be created in does not exist; create it first"
        )));
    }
    if let (Ok(s), Some(d)) = (src_host.canonicalize(), real_path(&dst_host))
        && d.starts_with(&s)
    {
        return Err(CapError::invalid(format!(
            "{dst}: lies inside {src}, which cannot be copied into itself"
        )));
    }
    let tmp = parent.join(format!(
        ".{}.posup-copy-{}-{:x}",
        name.to_string_lossy(),
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos()
    ));
    let mut copier = Copier {
        src,
        bytes: 0,
        linked: HashMap::new(),
    };
    let copied = copier.copy(&src_host, &tmp, Path::new("")).and_then(|()| {
        stdfs::rename(&tmp, &dst_host).map_err(|e| {
            CapError::from_io(format!("{dst}: moving the finished copy into place"), &e)
        })
    });
    if let Err(e) = copied {
        if let Err(rm) = remove_all(&tmp) {
            tracing::warn!(path = %tmp.display(), error = %rm, "could not remove an unfinished copy");
        }
        return Err(e);
    }
    Ok(copier.bytes)
}

/// One tree copy in progress.
struct Copier<'a> {
    /// The guest path being copied, for messages.
    src: &'a str,
    bytes: u64,
    /// Files with several names, by device and inode, and where their first copy
    /// went: later names become hard links to it, as with `cp -a`.
    linked: HashMap<(u64, u64), PathBuf>,
}

impl Copier<'_> {
    fn shown(&self, rel: &Path) -> String {
        if rel.as_os_str().is_empty() {
            self.src.to_string()
        } else {
            format!("{}/{}", self.src.trim_end_matches('/'), rel.display())
        }
    }

    fn io(&self, rel: &Path, what: &str, e: &io::Error) -> CapError {
        CapError::from_io(format!("{}: {what}", self.shown(rel)), e)
    }

    fn copy(&mut self, from: &Path, to: &Path, rel: &Path) -> CapResult<()> {
        let meta = stdfs::symlink_metadata(from).map_err(|e| self.io(rel, "reading", &e))?;
        let ft = meta.file_type();
        let atime = (meta.atime(), meta.atime_nsec());
        let mtime = (meta.mtime(), meta.mtime_nsec());
        let mode = meta.mode() & 0o7777;
        if ft.is_dir() {
            // Owner-only while filling it; its own mode comes last, so a read-only
            // directory still receives its contents.
            DirBuilder::new()
                .mode(0o700)
                .create(to)
                .map_err(|e| self.io(rel, "creating its copy", &e))?;
            let entries = stdfs::read_dir(from).map_err(|e| self.io(rel, "listing", &e))?;
            for entry in entries {
                let name = entry.map_err(|e| self.io(rel, "listing", &e))?.file_name();
                self.copy(&from.join(&name), &to.join(&name), &rel.join(&name))?;
            }
            stdfs::set_permissions(to, stdfs::Permissions::from_mode(mode))
                .map_err(|e| self.io(rel, "setting the copy's mode", &e))?;
        } else if ft.is_file() {
            let key = (meta.dev(), meta.ino());
            if meta.nlink() > 1
                && let Some(first) = self.linked.get(&key)
            {
                return stdfs::hard_link(first, to)
                    .map_err(|e| self.io(rel, "linking its copy", &e));
            }
            let mut input = File::open(from).map_err(|e| self.io(rel, "opening", &e))?;
            let mut output = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(to)
                .map_err(|e| self.io(rel, "creating its copy", &e))?;
            // `io::copy` between two files uses copy_file_range, which lets the
            // filesystem share or copy the blocks without a round trip through here.
            self.bytes +=
                io::copy(&mut input, &mut output).map_err(|e| self.io(rel, "copying", &e))?;
            output
                .set_permissions(stdfs::Permissions::from_mode(mode))
                .map_err(|e| self.io(rel, "setting the copy's mode", &e))?;
            if meta.nlink() > 1 {
                self.linked.insert(key, to.to_path_buf());
            }
        } else if ft.is_symlink() {
            let target =
                stdfs::read_link(from).map_err(|e| self.io(rel, "reading the link", &e))?;
            std::os::unix::fs::symlink(&target, to)
                .map_err(|e| self.io(rel, "creating the link", &e))?;
        } else {
            let what = if ft.is_fifo() {
                "a named pipe (fifo)"
            } else if ft.is_socket() {
                "a socket"
            } else if ft.is_block_device() {
                "a block device"
            } else if ft.is_char_device() {
                "a character device"
            } else {
                "a special file"
            };
            return Err(CapError::invalid(format!(
                "{}: is {what}; copy-tree copies files, directories and symbolic links only, remove it or copy around it",
                self.shown(rel)
            )));
        }
        set_times_nofollow(to, Some(atime), mtime)
            .map_err(|e| self.io(rel, "setting the copy's times", &e))
    }
}

/// Exchanges the trees at guest paths `a` and `b`. Both must exist in writable
/// granted directories on one filesystem; a granted directory itself (`/product`)
/// may be exchanged with one inside another (`/staging/new`).
///
/// Uses `renameat2(RENAME_EXCHANGE)`, which is atomic. Where the kernel or the
/// filesystem does not offer it, falls back to [`exchange_by_renames`], and a
/// later call with the same `a` and `b` finishes an exchange that was interrupted
/// in the middle of that fallback. Blocking.
pub fn exchange(grants: &Grants, a: &str, b: &str) -> CapResult<()> {
    let a_host = resolve_for_exchange(grants, a)?;
    let b_host = resolve_for_exchange(grants, b)?;
    let failed = |e: &io::Error| exchange_error(a, b, e);
    if exists(&sidecar(&a_host)) {
        return exchange_by_renames(&a_host, &b_host).map_err(|e| failed(&e));
    }
    for (guest, host) in [(a, &a_host), (b, &b_host)] {
        if !exists(host) {
            return Err(CapError::not_found(format!(
                "{guest}: does not exist; exchange needs two existing directories"
            )));
        }
    }
    let (ra, rb) = (real_path(&a_host), real_path(&b_host));
    if let (Some(ra), Some(rb)) = (ra, rb) {
        if ra == rb {
            return Err(CapError::invalid(format!(
                "{a} and {b} are the same directory"
            )));
        }
        if ra.starts_with(&rb) || rb.starts_with(&ra) {
            return Err(CapError::invalid(format!(
                "{a} and {b}: one lies inside the other, so they cannot be exchanged"
            )));
        }
    }
    match rename_exchange(&a_host, &b_host) {
        Ok(()) => {
            sync_parents(&a_host, &b_host);
            Ok(())
        }
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
            ) =>
        {
            tracing::info!(a, b, error = %e, "atomic exchange not available here, exchanging by three renames");
            exchange_by_renames(&a_host, &b_host).map_err(|e| failed(&e))
        }
        Err(e) => Err(failed(&e)),
    }
}

fn exchange_error(a: &str, b: &str, e: &io::Error) -> CapError {
    if e.raw_os_error() == Some(libc::EXDEV) {
        return CapError::invalid(format!(
            "exchanging {a} and {b}: they are on different filesystems; stage the new tree on the same filesystem"
        ));
    }
    CapError::from_io(format!("exchanging {a} and {b}"), e)
}

/// The sibling name `<a>.posup-exchange`.
fn sidecar(a: &Path) -> PathBuf {
    let mut name = a.as_os_str().to_owned();
    name.push(EXCHANGE_SUFFIX);
    PathBuf::from(name)
}

/// Exchanges `a` and `b` by three renames through the sibling `<a>.posup-exchange`,
/// for filesystems without `RENAME_EXCHANGE`:
///
/// 1. `a` → `<a>.posup-exchange`
/// 2. `b` → `a`
/// 3. `<a>.posup-exchange` → `b`
///
/// This is not atomic, but each step is durable before the next and the state
/// after each one is recognisable, so calling this again after a crash finishes
/// the exchange: `a` missing means step 1 was done, `b` missing means step 2 was.
/// When `a` is a granted directory itself, the sibling lies beside it on the
/// host, outside every grant, where no plugin can reach it.
pub(crate) fn exchange_by_renames(a: &Path, b: &Path) -> io::Result<()> {
    let side = sidecar(a);
    let step = |from: &Path, to: &Path| -> io::Result<()> {
        stdfs::rename(from, to)?;
        sync_parents(from, to);
        Ok(())
    };
    match (exists(&side), exists(a), exists(b)) {
        (false, true, true) => {
            step(a, &side)?;
            step(b, a)?;
            step(&side, b)
        }
        (true, false, true) => {
            step(b, a)?;
            step(&side, b)
        }
        (true, true, false) => step(&side, b),
        (true, true, true) => Err(io::Error::other(format!(
            "a leftover {} from an interrupted exchange lies beside it while both paths exist; \
             check which tree is which and remove the leftover by hand",
            side.file_name().unwrap_or_default().to_string_lossy()
        ))),
        (false, _, _) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            "one of the two paths does not exist",
        )),
        (true, false, false) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            "an interrupted exchange left neither path in place; the first tree is in the .posup-exchange sibling",
        )),
    }
}

/// Resolves a path to exchange with write access. A granted directory itself may
/// be missing for a moment, after an exchange by renames was interrupted between
/// its first two steps; it is still its grant's host path.
fn resolve_for_exchange(grants: &Grants, guest: &str) -> CapResult<PathBuf> {
    match grants.resolve(guest, true) {
        Ok(p) => Ok(clean(&p)),
        Err(e) => {
            let name = guest
                .trim_end_matches('/')
                .strip_prefix('/')
                .unwrap_or_default();
            match parse_dir(name).and_then(|d| grants.dir(d)) {
                Some(grant) if grant.write && !exists(&grant.host) => Ok(clean(&grant.host)),
                _ => Err(e),
            }
        }
    }
}

/// `p` without a trailing `/` (a granted directory resolves to `<root>/`), so that
/// names can be appended to its last component.
fn clean(p: &Path) -> PathBuf {
    p.components().collect()
}

/// Resolves a guest path whose last component may be a symbolic link leading out
/// of its granted directory: the link itself can be copied or removed without
/// following it, so only its folder has to resolve inside the grant.
fn resolve_link_itself(grants: &Grants, guest: &str, write: bool) -> CapResult<PathBuf> {
    let err = match grants.resolve(guest, write) {
        Ok(p) => return Ok(clean(&p)),
        Err(e) => e,
    };
    let Some((folder, name)) = guest.trim_end_matches('/').rsplit_once('/') else {
        return Err(err);
    };
    if name.is_empty() || name == "." || name == ".." || folder.is_empty() {
        return Err(err);
    }
    let host = clean(&grants.resolve(folder, write)?).join(name);
    match stdfs::symlink_metadata(&host) {
        Ok(m) if m.file_type().is_symlink() => Ok(host),
        _ => Err(err),
    }
}

/// Removes the file or tree at guest path `path` without following symbolic
/// links; a missing path is fine. A granted directory itself is never removed.
/// Blocking.
pub fn remove_tree(grants: &Grants, path: &str) -> CapResult<()> {
    let host = resolve_link_itself(grants, path, true)?;
    let meta = match stdfs::symlink_metadata(&host) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(CapError::from_io(path, &e)),
    };
    let real = real_path(&host);
    for grant in &grants.dirs {
        let root = guest_root(grant.dir);
        let canonical = grant.host.canonicalize().ok();
        let holds_root = host == grant.host
            || grant.host.starts_with(&host)
            || matches!((&canonical, &real), (Some(c), Some(r)) if c.starts_with(r));
        if holds_root {
            let what = if host == grant.host { "is" } else { "contains" };
            return Err(CapError::denied(format!(
                "{path}: {what} the granted directory {root} itself, which cannot be removed; remove what is inside it instead"
            )));
        }
    }
    if meta.is_dir() {
        remove_all(&host)
    } else {
        stdfs::remove_file(&host)
    }
    .map_err(|e| CapError::from_io(format!("{path}: removing"), &e))
}

/// Removes a tree without following links, first giving the owner write access to
/// any read-only directory that refuses it.
fn remove_all(path: &Path) -> io::Result<()> {
    match stdfs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            make_dirs_writable(path)?;
            stdfs::remove_dir_all(path)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn make_dirs_writable(dir: &Path) -> io::Result<()> {
    let meta = stdfs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Ok(());
    }
    if meta.mode() & 0o700 != 0o700 {
        stdfs::set_permissions(
            dir,
            stdfs::Permissions::from_mode(meta.mode() & 0o7777 | 0o700),
        )?;
    }
    for entry in stdfs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            make_dirs_writable(&entry.path())?;
        }
    }
    Ok(())
}

/// Bytes available to this host user on the filesystem holding guest path `path`
/// (or, when it does not exist yet, its nearest existing parent). Blocking.
pub fn free_space(grants: &Grants, path: &str) -> CapResult<u64> {
    let host = grants.resolve(path, false)?;
    let mut existing = host.as_path();
    while !exists(existing) {
        existing = existing
            .parent()
            .ok_or_else(|| CapError::not_found(format!("{path}: no part of it exists")))?;
    }
    available_bytes(existing).map_err(|e| CapError::from_io(path, &e))
}

fn exists(p: &Path) -> bool {
    stdfs::symlink_metadata(p).is_ok()
}

/// The path with its folder's links resolved and its last component kept as is
/// (which may be a link that must not be followed). `None` when the folder does
/// not exist.
fn real_path(p: &Path) -> Option<PathBuf> {
    let name = p.file_name()?;
    Some(p.parent()?.canonicalize().ok()?.join(name))
}

/// Flushes the directories holding `a` and `b`, so renames in them survive a power
/// loss in the order they were made. Best effort: some filesystems cannot sync a
/// directory, and the rename itself has already happened.
fn sync_parents(a: &Path, b: &Path) {
    for p in [a.parent(), b.parent()].into_iter().flatten() {
        if let Ok(d) = File::open(p) {
            let _ = d.sync_all();
        }
    }
}

fn c_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the path contains a NUL byte"))
}

/// Sets access and modification times (seconds, nanoseconds) of `path` itself,
/// even when it is a symbolic link; `None` leaves the access time as it is.
#[allow(unsafe_code)]
// `time_t` and `c_long` are 64 bits on the hosts posup runs on, narrower elsewhere.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn set_times_nofollow(
    path: &Path,
    atime: Option<(i64, i64)>,
    mtime: (i64, i64),
) -> io::Result<()> {
    let c = c_path(path)?;
    let ts = |(sec, nsec): (i64, i64)| libc::timespec {
        tv_sec: sec as libc::time_t,
        tv_nsec: nsec as libc::c_long,
    };
    let omit = libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::UTIME_OMIT,
    };
    let times = [atime.map_or(omit, ts), ts(mtime)];
    // SAFETY: `c` is a NUL-terminated path and `times` two initialised timespec
    // values, both alive for the duration of the call, as utimensat(2) requires.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `renameat2(a, b, RENAME_EXCHANGE)`, through the system call itself so that it
/// also works with C libraries older than its wrapper (glibc 2.28); an old kernel
/// answers ENOSYS.
#[allow(unsafe_code)]
fn rename_exchange(a: &Path, b: &Path) -> io::Result<()> {
    let (ca, cb) = (c_path(a)?, c_path(b)?);
    // SAFETY: both arguments are NUL-terminated paths alive for the duration of
    // the call; the other arguments are plain integers, as renameat2(2) expects.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// statvfs(2): blocks available to unprivileged users times the fragment size.
#[allow(unsafe_code)]
// The field types are 64 bits on the hosts posup runs on, narrower elsewhere.
#[allow(clippy::unnecessary_cast)]
fn available_bytes(path: &Path) -> io::Result<u64> {
    let c = c_path(path)?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `st` points to writable memory the
    // size of a statvfs structure, which the call fills in when it returns 0.
    let r = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised the whole structure.
    let st = unsafe { st.assume_init() };
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grants::DirGrant;
    use posup_world::latest::types::{Dir, ErrorKind};

    struct Fixture {
        _tmp: tempfile::TempDir,
        root: PathBuf,
        grants: Grants,
    }

    impl Fixture {
        fn new() -> Fixture {
            let tmp = tempfile::tempdir().unwrap();
            let root = tmp.path().canonicalize().unwrap();
            for d in ["product", "staging", "backup", "outside"] {
                stdfs::create_dir(root.join(d)).unwrap();
            }
            let grant = |dir, name: &str, write| DirGrant {
                dir,
                host: root.join(name),
                write,
            };
            let grants = Grants {
                dirs: vec![
                    grant(Dir::Product, "product", true),
                    grant(Dir::Staging, "staging", true),
                    grant(Dir::Backup, "backup", false),
                ],
                ..Grants::default()
            };
            Fixture {
                _tmp: tmp,
                root,
                grants,
            }
        }

        fn p(&self, rel: &str) -> PathBuf {
            self.root.join(rel)
        }
    }

    fn set_mtime(p: &Path, secs: i64) {
        set_times_nofollow(p, Some((secs, 0)), (secs, 500)).unwrap();
    }

    fn listing(root: &Path) -> Vec<(PathBuf, u32, i64)> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in stdfs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let m = stdfs::symlink_metadata(&p).unwrap();
                if m.is_dir() {
                    stack.push(p.clone());
                }
                out.push((
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    m.mode(),
                    m.mtime(),
                ));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn copy_tree_keeps_modes_times_and_links() {
        let fx = Fixture::new();
        let src = fx.p("product/app");
        stdfs::create_dir_all(src.join("bin")).unwrap();
        stdfs::write(src.join("bin/run"), b"#!/bin/sh\n").unwrap();
        stdfs::set_permissions(src.join("bin/run"), stdfs::Permissions::from_mode(0o750)).unwrap();
        stdfs::write(src.join("data"), vec![7u8; 100_000]).unwrap();
        stdfs::hard_link(src.join("data"), src.join("data2")).unwrap();
        std::os::unix::fs::symlink("bin/run", src.join("start")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.join("abs")).unwrap();
        stdfs::create_dir(src.join("ro")).unwrap();
        stdfs::write(src.join("ro/f"), b"f").unwrap();
        set_mtime(&src.join("ro/f"), 1_000_000_000);
        stdfs::set_permissions(src.join("ro"), stdfs::Permissions::from_mode(0o555)).unwrap();
        set_mtime(&src.join("bin/run"), 1_100_000_000);
        set_mtime(&src.join("start"), 1_200_000_000);
        set_mtime(&src.join("ro"), 1_300_000_000);
        set_mtime(&src.join("bin"), 1_400_000_000);
        set_mtime(&src, 1_500_000_000);

        let bytes = copy_tree(&fx.grants, "/product/app", "/staging/copy").unwrap();
        assert_eq!(bytes, 10 + 100_000 + 1);
        let dst = fx.p("staging/copy");
        assert_eq!(listing(&src), listing(&dst));
        let m = |p: &Path| stdfs::symlink_metadata(p).unwrap();
        assert_eq!(m(&dst.join("bin/run")).mode() & 0o7777, 0o750);
        assert_eq!(m(&dst.join("ro")).mode() & 0o7777, 0o555);
        assert_eq!(m(&dst.join("start")).mtime(), 1_200_000_000);
        assert_eq!(m(&dst.join("start")).mtime_nsec(), 500);
        assert_eq!(m(&dst).mtime(), 1_500_000_000);
        assert_eq!(
            stdfs::read_link(dst.join("abs")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert!(m(&dst.join("abs")).file_type().is_symlink());
        assert_eq!(m(&dst.join("data")).ino(), m(&dst.join("data2")).ino());
        assert_eq!(stdfs::read(dst.join("bin/run")).unwrap(), b"#!/bin/sh\n");

        let err = copy_tree(&fx.grants, "/product/app", "/staging/copy").unwrap_err();
        assert!(err.message.contains("already exists"), "{}", err.message);
        let err = copy_tree(&fx.grants, "/product/app", "/backup/copy").unwrap_err();
        assert_eq!(err.kind, ErrorKind::Denied);
        let err = copy_tree(&fx.grants, "/product/app", "/product/app/inside").unwrap_err();
        assert!(err.message.contains("into itself"), "{}", err.message);
        // Cleanup of the read-only copy works too (tempfile would fail on it).
        remove_tree(&fx.grants, "/staging/copy").unwrap();
        assert!(!dst.exists());
    }

    #[test]
    fn copy_tree_refuses_special_files_and_leaves_nothing() {
        let fx = Fixture::new();
        let src = fx.p("product/app");
        stdfs::create_dir_all(src.join("a")).unwrap();
        stdfs::write(src.join("a/file"), b"x").unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(src.join("z.sock")).unwrap();
        let err = copy_tree(&fx.grants, "/product/app", "/staging/copy").unwrap_err();
        assert_eq!(err.kind, ErrorKind::Invalid);
        assert!(
            err.message.contains("/product/app/z.sock") && err.message.contains("socket"),
            "{}",
            err.message
        );
        assert_eq!(
            stdfs::read_dir(fx.p("staging")).unwrap().count(),
            0,
            "a partial copy was left"
        );
    }

    #[test]
    fn exchange_swaps_two_trees() {
        let fx = Fixture::new();
        stdfs::write(fx.p("product/version"), b"old").unwrap();
        stdfs::create_dir(fx.p("staging/new")).unwrap();
        stdfs::write(fx.p("staging/new/version"), b"new").unwrap();
        // The granted directory itself against one in another grant.
        exchange(&fx.grants, "/product", "/staging/new").unwrap();
        assert_eq!(stdfs::read(fx.p("product/version")).unwrap(), b"new");
        assert_eq!(stdfs::read(fx.p("staging/new/version")).unwrap(), b"old");

        let err = exchange(&fx.grants, "/product", "/staging/missing").unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
        assert!(err.message.contains("/staging/missing"), "{}", err.message);
        let err = exchange(&fx.grants, "/product", "/backup").unwrap_err();
        assert_eq!(err.kind, ErrorKind::Denied);
        stdfs::create_dir(fx.p("product/sub")).unwrap();
        let err = exchange(&fx.grants, "/product", "/product/sub").unwrap_err();
        assert!(err.message.contains("inside"), "{}", err.message);
        assert!(fx.p("product/sub").is_dir());
    }

    #[test]
    fn exchange_by_renames_swaps_and_finishes_after_a_crash() {
        let fx = Fixture::new();
        let (a, b) = (fx.p("product"), fx.p("staging/new"));
        let reset = || {
            for p in [&a, &b, &sidecar(&a)] {
                let _ = remove_all(p);
            }
            stdfs::create_dir(&a).unwrap();
            stdfs::write(a.join("v"), b"a").unwrap();
            stdfs::create_dir(&b).unwrap();
            stdfs::write(b.join("v"), b"b").unwrap();
        };
        let swapped = || {
            assert_eq!(stdfs::read(a.join("v")).unwrap(), b"b");
            assert_eq!(stdfs::read(b.join("v")).unwrap(), b"a");
            assert!(!exists(&sidecar(&a)));
        };

        reset();
        exchange_by_renames(&a, &b).unwrap();
        swapped();

        // Interrupted after the first rename: the granted directory itself is
        // missing, and the next call through the capability finishes the job.
        reset();
        stdfs::rename(&a, sidecar(&a)).unwrap();
        exchange(&fx.grants, "/product", "/staging/new").unwrap();
        swapped();

        // Interrupted after the second rename.
        reset();
        stdfs::rename(&a, sidecar(&a)).unwrap();
        stdfs::rename(&b, &a).unwrap();
        exchange(&fx.grants, "/product", "/staging/new").unwrap();
        swapped();

        // A leftover beside two complete trees is not guessed at.
        reset();
        stdfs::create_dir(sidecar(&a)).unwrap();
        let err = exchange(&fx.grants, "/product", "/staging/new").unwrap_err();
        assert!(
            err.message.contains("product.posup-exchange"),
            "{}",
            err.message
        );
        assert_eq!(stdfs::read(a.join("v")).unwrap(), b"a");
    }

    #[test]
    fn remove_tree_refuses_roots_and_does_not_follow_links() {
        let fx = Fixture::new();
        stdfs::write(fx.p("outside/precious"), b"keep").unwrap();
        stdfs::create_dir_all(fx.p("product/app/ro")).unwrap();
        stdfs::write(fx.p("product/app/ro/f"), b"x").unwrap();
        stdfs::set_permissions(fx.p("product/app/ro"), stdfs::Permissions::from_mode(0o555))
            .unwrap();
        std::os::unix::fs::symlink(fx.p("outside"), fx.p("product/app/out")).unwrap();
        std::os::unix::fs::symlink(fx.p("outside"), fx.p("product/out")).unwrap();

        for root in ["/product", "/product/", "/product/."] {
            let err = remove_tree(&fx.grants, root).unwrap_err();
            assert_eq!(err.kind, ErrorKind::Denied, "{root}");
            assert!(
                err.message.contains("granted directory /product"),
                "{}",
                err.message
            );
        }
        assert!(fx.p("product/app").is_dir());

        remove_tree(&fx.grants, "/product/out").unwrap();
        assert!(!exists(&fx.p("product/out")));
        remove_tree(&fx.grants, "/product/app").unwrap();
        assert!(!exists(&fx.p("product/app")));
        assert_eq!(stdfs::read(fx.p("outside/precious")).unwrap(), b"keep");
        remove_tree(&fx.grants, "/product/app").unwrap();
        let err = remove_tree(&fx.grants, "/backup/x").unwrap_err();
        assert_eq!(err.kind, ErrorKind::Denied);
    }

    #[test]
    fn free_space_reports_the_filesystem() {
        let fx = Fixture::new();
        let free = free_space(&fx.grants, "/staging").unwrap();
        assert!(free > 0);
        // A path that does not exist yet is measured at its nearest parent.
        let later = free_space(&fx.grants, "/staging/not/yet").unwrap();
        assert!(later.abs_diff(free) < 1 << 30, "{free} vs {later}");
        let err = free_space(&fx.grants, "/logs").unwrap_err();
        assert_eq!(err.kind, ErrorKind::Denied);
    }
}
