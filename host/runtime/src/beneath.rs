//! Host file operations beneath the granted roots.
//!
//! posup runs as root, and a plugin can plant symbolic links anywhere it may write.
//! A path that is checked and then used can be swapped in between, and a check that
//! resolves links by hand misses cases. So no capability turns a guest path into a
//! host path string at all: each step opens a handle of every granted root once
//! ([`Roots::open`]), refusing a root that is a symbolic link or not a directory,
//! and every file operation resolves beneath such a handle — with `openat2` and
//! `RESOLVE_BENEATH` on Linux, through `cap-std`, which also covers kernels without
//! it. The last component of a path is then handled through its folder's handle as
//! one name, so an operation that must not follow a link (exchange, removal, copy)
//! never does. An error while resolving is a refusal, never a pass.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, RwLock};

use cap_std::fs::Dir;
use posup_world::latest::types::Dir as GuestDir;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use crate::error::{CapError, CapResult};
use crate::grants::{DirGrant, Grants, guest_root, parse_dir};

/// How deep a tree may be before the host stops walking it: far more than any
/// installation, and a bound on the recursion a hostile tree can ask for.
pub const MAX_DEPTH: usize = 256;

/// The open handles of one step's granted roots.
pub struct Roots {
    slots: Vec<Slot>,
}

struct Slot {
    grant: DirGrant,
    /// Replaced only by [`Roots::reopen`], after an exchange moved another tree
    /// to the root's host path.
    dir: RwLock<Arc<Dir>>,
}

impl std::fmt::Debug for Roots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.slots.iter().map(|s| &s.grant))
            .finish()
    }
}

impl Roots {
    /// Opens every granted root. A root must be a real directory: a symbolic link
    /// (even to a directory), a file or a missing path is refused with an error that
    /// names the directory and its host path.
    ///
    /// A root configured inside another, writable one (logs under the product,
    /// say) is opened beneath that one's handle: the plugin can rename folders
    /// there, so the way to the inner root must not leave the outer one.
    pub fn open(grants: &Grants) -> io::Result<Roots> {
        // Outer roots first, so an inner one finds its container open.
        let mut order: Vec<&DirGrant> = grants.dirs.iter().collect();
        order.sort_by_key(|g| g.host.components().count());
        let mut slots: Vec<Slot> = Vec::with_capacity(order.len());
        for grant in order {
            let dir = open_in(&slots, grant).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "the granted directory {} ({}) {e}",
                        guest_root(grant.dir),
                        grant.host.display()
                    ),
                )
            })?;
            slots.push(Slot {
                grant: grant.clone(),
                dir: RwLock::new(Arc::new(dir)),
            });
        }
        Ok(Roots { slots })
    }

    fn slot(&self, dir: GuestDir) -> Option<&Slot> {
        self.slots.iter().find(|s| s.grant.dir == dir)
    }

    /// The handle of a granted root, for handing it on (to WASI's preopens).
    pub fn handle(&self, dir: GuestDir) -> Option<Arc<Dir>> {
        self.slot(dir)
            .map(|s| s.dir.read().expect("root lock").clone())
    }

    /// The handles of every granted root.
    pub fn all(&self) -> Vec<Arc<Dir>> {
        self.slots
            .iter()
            .map(|s| s.dir.read().expect("root lock").clone())
            .collect()
    }

    /// Finds where a guest path lies: its granted root and the path beneath it.
    /// Refuses paths outside the granted directories, writes to read-only ones and
    /// `..` that climbs out of a root. Nothing on the disk is looked at yet.
    pub fn locate(&self, guest: &str, write: bool) -> CapResult<Located> {
        let (dir, rel) = split_guest(guest)?;
        let slot = self.slot(dir).ok_or_else(|| {
            CapError::denied(format!(
                "{guest}: the directory {} is not granted to this plugin",
                guest_root(dir)
            ))
        })?;
        if write && !slot.grant.write {
            return Err(CapError::denied(format!(
                "{guest}: the directory {} is granted read-only",
                guest_root(dir)
            )));
        }
        Ok(Located {
            guest: guest.to_owned(),
            dir,
            root: slot.dir.read().expect("root lock").clone(),
            rel,
        })
    }

    /// The folder holding root `dir` itself on the host, and the root's name in
    /// it: only exchange needs it, to swap the root with another directory. Like
    /// the root, it is opened beneath a writable root that contains it.
    pub(crate) fn root_parent(&self, dir: GuestDir) -> CapResult<(Dir, OsString)> {
        let slot = self.slot(dir).ok_or_else(|| {
            CapError::denied(format!(
                "the directory {} is not granted to this plugin",
                guest_root(dir)
            ))
        })?;
        let host = &slot.grant.host;
        let (Some(parent), Some(name)) = (host.parent(), host.file_name()) else {
            return Err(CapError::invalid(format!(
                "{}: the granted directory is the host's root and cannot be exchanged",
                guest_root(dir)
            )));
        };
        let folder = match outer_of(&self.slots, dir, parent) {
            Some((outer, rel)) if rel.as_os_str().is_empty() => outer.try_clone(),
            Some((outer, rel)) => outer.open_dir(rel),
            None => rustix::fs::open(
                parent,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map(|fd| Dir::from_std_file(File::from(fd)))
            .map_err(io::Error::from),
        }
        .map_err(|e| {
            resolve_error(
                guest_root(dir),
                "opening the folder of the granted directory",
                &e,
            )
        })?;
        Ok((folder, name.to_owned()))
    }

    /// Opens a root again from its host path, after an exchange put another tree
    /// there. The new tree must be a real directory, as at the start of the step.
    pub(crate) fn reopen(&self, dir: GuestDir) -> CapResult<()> {
        let Some(slot) = self.slot(dir) else {
            return Ok(());
        };
        let fresh = open_in(&self.slots, &slot.grant).map_err(|e| {
            CapError::from_io(format!("the granted directory {}", guest_root(dir)), &e)
        })?;
        *slot.dir.write().expect("root lock") = Arc::new(fresh);
        Ok(())
    }
}

/// The writable root among `open` (other than `except`) that contains `host`
/// most closely, with `host` relative to it (empty when it is that root).
fn outer_of<'h>(open: &[Slot], except: GuestDir, host: &'h Path) -> Option<(Arc<Dir>, &'h Path)> {
    open.iter()
        .filter(|s| s.grant.write && s.grant.dir != except)
        .filter_map(|s| Some((s, host.strip_prefix(&s.grant.host).ok()?)))
        .max_by_key(|(s, _)| s.grant.host.components().count())
        .map(|(s, rel)| (s.dir.read().expect("root lock").clone(), rel))
}

/// Opens the root of `grant`: beneath the handle of a writable root among `open`
/// that contains its host path, else by that path.
fn open_in(open: &[Slot], grant: &DirGrant) -> io::Result<Dir> {
    let Some((outer, rel)) = outer_of(open, grant.dir, &grant.host) else {
        return open_real_dir(&grant.host);
    };
    let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
        return open_real_dir(&grant.host);
    };
    let folder = if parent.as_os_str().is_empty() {
        outer.try_clone()?
    } else {
        outer.open_dir(parent)?
    };
    let fd = open_dir_nofollow(folder.as_fd(), name).map_err(not_real_dir)?;
    Ok(Dir::from_std_file(File::from(fd)))
}

/// A link or a non-directory where a real directory must be, said so.
fn not_real_dir(e: io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(libc::ELOOP | libc::ENOTDIR) => io::Error::new(
            io::ErrorKind::InvalidInput,
            "is a symbolic link or not a directory; name the real directory",
        ),
        _ => e,
    }
}

/// Opens a directory by its host path (from the terminal's own configuration)
/// without following a link in its last component, and checks it is a directory:
/// a granted root, or the agent's staging folder.
pub fn open_real_dir(host: &Path) -> io::Result<Dir> {
    let fd = rustix::fs::open(
        host,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| not_real_dir(e.into()))?;
    Ok(Dir::from_std_file(File::from(fd)))
}

/// Splits an absolute guest path into its granted directory and the normalised
/// path beneath it (empty for the root itself). `..` may not climb out of the root,
/// even back into another granted one: `/product/../staging` is refused.
pub fn split_guest(guest: &str) -> CapResult<(GuestDir, PathBuf)> {
    let path = Path::new(guest);
    if !path.is_absolute() {
        return Err(CapError::invalid(format!(
            "{guest}: guest paths are absolute, e.g. /product/bin"
        )));
    }
    let mut parts: Vec<&OsStr> = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(s) => parts.push(s),
            Component::ParentDir => {
                if parts.len() <= 1 {
                    return Err(CapError::invalid(format!(
                        "{guest}: `..` leaves the granted directory"
                    )));
                }
                parts.pop();
            }
            Component::Prefix(_) => {
                return Err(CapError::invalid(format!("{guest}: not a guest path")));
            }
        }
    }
    let first = parts
        .first()
        .and_then(|c| c.to_str())
        .ok_or_else(|| CapError::invalid(format!("{guest}: not inside a granted directory")))?;
    let dir = parse_dir(first).ok_or_else(|| {
        CapError::denied(format!(
            "{guest}: only /product, /staging, /backup and /logs can be granted"
        ))
    })?;
    Ok((dir, parts[1..].iter().collect()))
}

/// A guest path resolved to its root's handle and the path beneath it.
pub struct Located {
    pub guest: String,
    pub dir: GuestDir,
    pub root: Arc<Dir>,
    /// Beneath the root, normalised, without `.` or `..`; empty for the root.
    pub rel: PathBuf,
}

impl Located {
    pub fn is_root(&self) -> bool {
        self.rel.as_os_str().is_empty()
    }

    /// The error for an I/O failure on this path, refusing escapes by name.
    pub fn error(&self, what: &str, e: &io::Error) -> CapError {
        resolve_error(&self.guest, what, e)
    }

    /// The folder holding the path's last component, opened beneath the root, and
    /// that component. The root itself has no folder inside the grant: refused.
    pub fn parent(&self) -> CapResult<(Dir, OsString)> {
        let (Some(parent), Some(name)) = (self.rel.parent(), self.rel.file_name()) else {
            return Err(CapError::denied(format!(
                "{}: is the granted directory {} itself",
                self.guest,
                guest_root(self.dir)
            )));
        };
        Ok((self.open_dir_at(parent)?, name.to_owned()))
    }

    /// The directory at this path, opened beneath the root; links inside the
    /// grant are followed, links leading out of it are refused.
    pub fn open_dir(&self) -> CapResult<Dir> {
        self.open_dir_at(&self.rel)
    }

    fn open_dir_at(&self, rel: &Path) -> CapResult<Dir> {
        if rel.as_os_str().is_empty() {
            return self.root.try_clone().map_err(|e| self.error("opening", &e));
        }
        self.root
            .open_dir(rel)
            .map_err(|e| self.error("opening its folder", &e))
    }

    /// The regular file at this path, opened for reading beneath the root. Links
    /// inside the grant are followed; a pipe, device or socket is refused without
    /// waiting on it (a plugin could plant a fifo to hang the host).
    pub fn open_file(&self) -> CapResult<File> {
        use cap_std::fs::{OpenOptions, OpenOptionsExt};
        let file = self
            .root
            .open_with(
                &self.rel,
                OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY),
            )
            .map_err(|e| self.error("opening", &e))?
            .into_std();
        regular(&file).map_err(|e| self.error("opening", &e))?;
        Ok(file)
    }

    /// The nearest existing directory at or above this path, beneath the root:
    /// where free space is measured for a path that does not exist yet.
    pub fn nearest_dir(&self) -> CapResult<Dir> {
        let mut rel = self.rel.as_path();
        loop {
            match self.open_dir_at(rel) {
                Ok(d) => return Ok(d),
                Err(e) if e.kind == posup_world::latest::types::ErrorKind::NotFound => {
                    rel = rel.parent().unwrap_or(Path::new(""));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Creates a folder of the host's own owner-only (0700), or checks that an
/// existing one is a real directory of this user and closes it to others: the
/// compile cache, the agent's downloads and plugins.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    let uid = rustix::process::geteuid().as_raw();
    if !meta.is_dir() || meta.uid() != uid {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a directory of this user (uid {uid}); remove it",
                dir.display()
            ),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// [`private_dir`], opened as a real directory: the handle the host's own files
/// in it are read and written through.
pub fn open_private_dir(dir: &Path) -> io::Result<Dir> {
    private_dir(dir)?;
    open_real_dir(dir)
}

/// Replaces the file `name` in `dir` with `bytes`, owner-only (0600): written to
/// a hidden temporary name created afresh (never through a link), flushed, then
/// renamed over `name`, so a reader or a power loss sees the old or the new
/// content, never a mix.
pub fn replace_file(dir: BorrowedFd<'_>, name: &str, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    // A name of its own per call: callers in one process (two uploads compiling
    // one plugin) must never remove or rename each other's temporary file. One
    // left by a crash of an earlier process with this pid is replaced.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tmp = format!(".{name}.tmp-{}-{n}", std::process::id());
    match rustix::fs::unlinkat(dir, tmp.as_str(), AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    let mut file = File::from(rustix::fs::openat(
        dir,
        tmp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::RUSR | Mode::WUSR,
    )?);
    file.write_all(bytes)?;
    file.sync_all()?;
    rustix::fs::renameat(dir, tmp.as_str(), dir, name)?;
    sync_dir(dir);
    Ok(())
}

/// Opens the file at the host path `path` for appending (created 0644 when
/// missing, its missing folders 0755), without following a link anywhere on the
/// way: each component is opened beneath the one before it with `O_NOFOLLOW`. For
/// files in folders a plugin may write to (a service's output in its product's
/// log folder), where a link planted on the path would lead the host elsewhere.
pub fn open_append_nofollow(path: &Path) -> io::Result<File> {
    let linked = |c: &OsStr| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "`{}` on its path is a symbolic link or not a directory; give the real path",
                c.to_string_lossy()
            ),
        )
    };
    let mut names: Vec<&OsStr> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => names.push(n),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "`..` in the path is refused; give the real path",
                ));
            }
        }
    }
    let Some((file, folders)) = names.split_last() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "names no file"));
    };
    let start = if path.is_absolute() { "/" } else { "." };
    let mut dir = rustix::fs::open(
        start,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let folder_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    for name in folders {
        let next = match rustix::fs::openat(&dir, *name, folder_flags, Mode::empty()) {
            Err(rustix::io::Errno::NOENT) => {
                match rustix::fs::mkdirat(&dir, *name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                rustix::fs::openat(&dir, *name, folder_flags, Mode::empty())
            }
            other => other,
        };
        dir = match next {
            Ok(fd) => fd,
            Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => return Err(linked(name)),
            Err(e) => return Err(e.into()),
        };
    }
    let fd = rustix::fs::openat(
        &dir,
        *file,
        OFlags::WRONLY
            | OFlags::APPEND
            | OFlags::CREATE
            | OFlags::NOFOLLOW
            | OFlags::NONBLOCK
            | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .map_err(|e| match e {
        rustix::io::Errno::LOOP => linked(file),
        e => e.into(),
    })?;
    let file = File::from(fd);
    regular(&file)?;
    Ok(file)
}

/// Checks that a name from outside (the server, a plugin) can become one path
/// component: not empty, not `.` or `..`, no `/`, no NUL, at most 255 bytes, and
/// not hidden (posup's own temporary names start with a dot).
pub fn file_name(name: &str) -> Result<(), String> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.starts_with('.')
        || name.len() > 255
        || name.contains(['/', '\\', '\0'])
        || name.chars().any(char::is_control);
    if bad {
        return Err(format!(
            "`{}` is not a plain file name: names are 1 to 255 bytes, without `/`, control characters or a leading dot",
            name.escape_debug()
        ));
    }
    Ok(())
}

/// Turns an I/O error met while resolving `guest` into a refusal. An escape
/// (through a symbolic link or `..`) is `denied`, naming the path.
pub fn resolve_error(guest: &str, what: &str, e: &io::Error) -> CapError {
    let escaped = e.kind() == io::ErrorKind::PermissionDenied
        && e.to_string().contains("outside of the filesystem")
        || e.raw_os_error() == Some(libc::EXDEV)
        || e.raw_os_error() == Some(libc::ELOOP);
    if escaped {
        return CapError::denied(format!(
            "{guest}: resolves through a symbolic link outside its granted directory"
        ));
    }
    CapError::from_io(format!("{guest}: {what}"), e)
}

/// Checks that an open file is a regular file, and clears the non-blocking flag
/// it was opened with so reads behave normally.
pub fn regular(file: &File) -> io::Result<()> {
    let st = rustix::fs::fstat(file)?;
    let ft = FileType::from_raw_mode(st.st_mode);
    if ft != FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("is {}, not a regular file", describe(ft)),
        ));
    }
    let flags = rustix::fs::fcntl_getfl(file)?;
    rustix::fs::fcntl_setfl(file, flags - OFlags::NONBLOCK)?;
    Ok(())
}

/// What a file type is, for messages.
pub fn describe(ft: FileType) -> &'static str {
    match ft {
        FileType::RegularFile => "a file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a named pipe (fifo)",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "a special file",
    }
}

/// The type of `name` in `dir` itself, without following it; `None` when absent.
pub fn kind_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<rustix::fs::Stat>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Opens the file `name` in `dir` for reading without following a link and
/// without waiting on a fifo; `None` when absent. A link is an `ELOOP` error, and
/// anything but a regular file an `InvalidInput` error that says what it is.
pub fn open_file_nofollow(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<File>> {
    let fd = match rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let file = File::from(fd);
    regular(&file)?;
    Ok(Some(file))
}

/// Opens the directory `name` in `dir` without following a link.
pub fn open_dir_nofollow(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// The names in a directory, without `.` and `..`.
pub fn names(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    let mut it = rustix::fs::Dir::read_from(dir)?;
    while let Some(entry) = it.read() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            out.push(OsStr::from_bytes(name).to_owned());
        }
    }
    Ok(out)
}

/// Whether the directory `inner` lies inside (or is) the directory `outer`, found
/// by walking `..` up from `inner` to the filesystem's root.
pub fn is_within(inner: BorrowedFd<'_>, outer: BorrowedFd<'_>) -> io::Result<bool> {
    let target = rustix::fs::fstat(outer)?;
    let id = |st: &rustix::fs::Stat| (st.st_dev, st.st_ino);
    let mut cur: OwnedFd = rustix::io::fcntl_dupfd_cloexec(inner, 0)?;
    for _ in 0..4096 {
        let st = rustix::fs::fstat(&cur)?;
        if id(&st) == id(&target) {
            return Ok(true);
        }
        let up = open_dir_nofollow(cur.as_fd(), OsStr::new(".."))?;
        let up_st = rustix::fs::fstat(&up)?;
        if id(&up_st) == id(&st) {
            return Ok(false);
        }
        cur = up;
    }
    Ok(false)
}

/// Flushes a directory so renames in it survive a power loss. Best effort: some
/// filesystems cannot sync a directory, and the rename itself has happened.
pub fn sync_dir(dir: BorrowedFd<'_>) {
    let _ = rustix::fs::fsync(dir);
}

#[cfg(test)]
mod tests {
    use super::*;
    use posup_world::latest::types::ErrorKind;

    /// Two callers of one process replacing one file at once (two servers'
    /// uploads compiling the same plugin): both succeed and the file is whole.
    #[test]
    fn concurrent_replacements_of_one_file_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let handle = std::sync::Arc::new(File::open(dir.path()).unwrap());
        let writers: Vec<_> = (0..8u8)
            .map(|n| {
                let handle = handle.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        replace_file(handle.as_fd(), "entry", &[n; 4096])?;
                    }
                    Ok::<_, io::Error>(())
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap().expect("every replacement succeeds");
        }
        let bytes = std::fs::read(dir.path().join("entry")).unwrap();
        assert_eq!(bytes.len(), 4096);
        assert!(
            bytes.iter().all(|b| *b == bytes[0]),
            "one writer's bytes, whole"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file stays behind");
    }

    fn roots(root: &Path) -> Roots {
        for d in ["product", "logs"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        Roots::open(&Grants {
            dirs: vec![
                DirGrant {
                    dir: GuestDir::Product,
                    host: root.join("product"),
                    write: true,
                },
                DirGrant {
                    dir: GuestDir::Logs,
                    host: root.join("logs"),
                    write: false,
                },
            ],
            ..Grants::default()
        })
        .unwrap()
    }

    #[test]
    fn locates_only_granted_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let r = roots(tmp.path());
        let loc = r.locate("/product/bin/./oscar.ini", true).unwrap();
        assert_eq!(loc.rel, Path::new("bin/oscar.ini"));
        assert!(r.locate("/product", true).unwrap().is_root());
        assert!(r.locate("/logs/kiosk.log", false).is_ok());
        let err = |g: &str, w: bool| r.locate(g, w).err().unwrap().message;
        assert!(err("/logs/kiosk.log", true).contains("read-only"));
        assert!(err("/backup/x", false).contains("not granted"));
        assert!(err("/product/../logs/x", false).contains(".."));
        assert!(err("/etc/passwd", false).contains("/etc/passwd"));
        assert!(err("product/x", false).contains("absolute"));
    }

    #[test]
    fn links_out_of_a_grant_are_refused_and_links_inside_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let r = roots(tmp.path());
        let p = tmp.path().join("product");
        std::os::unix::fs::symlink("/etc", p.join("etc")).unwrap();
        std::os::unix::fs::symlink("../../../../../../etc/hostname", p.join("up")).unwrap();
        std::fs::create_dir(p.join("real")).unwrap();
        std::fs::write(p.join("real/f"), b"inside").unwrap();
        std::os::unix::fs::symlink("real", p.join("current")).unwrap();
        for guest in ["/product/etc/passwd", "/product/up"] {
            let e = r.locate(guest, false).unwrap().open_file().unwrap_err();
            assert_eq!(e.kind, ErrorKind::Denied, "{guest}: {}", e.message);
            assert!(e.message.contains("symbolic link"), "{}", e.message);
        }
        let f = r.locate("/product/current/f", false).unwrap().open_file();
        assert!(f.is_ok());
    }

    /// Logs configured inside the writable product: a plugin that replaces a
    /// folder on the way with a link to elsewhere gets a refusal, not that place.
    #[test]
    fn a_root_inside_a_writable_one_is_opened_beneath_it() {
        let tmp = tempfile::tempdir().unwrap();
        let product = tmp.path().join("product");
        std::fs::create_dir_all(product.join("var/log")).unwrap();
        std::fs::create_dir_all(tmp.path().join("elsewhere/log")).unwrap();
        std::fs::write(tmp.path().join("elsewhere/log/secret"), b"s").unwrap();
        let grants = Grants {
            dirs: vec![
                DirGrant {
                    dir: GuestDir::Logs,
                    host: product.join("var/log"),
                    write: false,
                },
                DirGrant {
                    dir: GuestDir::Product,
                    host: product.clone(),
                    write: true,
                },
            ],
            ..Grants::default()
        };
        assert!(Roots::open(&grants).is_ok());
        std::fs::rename(product.join("var"), product.join("var.old")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("elsewhere"), product.join("var")).unwrap();
        let err = Roots::open(&grants).unwrap_err();
        assert!(err.to_string().contains("/logs"), "{err}");
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_on_it() {
        let tmp = tempfile::tempdir().unwrap();
        let r = roots(tmp.path());
        rustix::fs::mkfifoat(rustix::fs::CWD, tmp.path().join("product/pipe"), Mode::RUSR).unwrap();
        let e = r
            .locate("/product/pipe", false)
            .unwrap()
            .open_file()
            .unwrap_err();
        assert!(e.message.contains("named pipe"), "{}", e.message);
    }
}
