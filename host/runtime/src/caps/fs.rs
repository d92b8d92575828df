//! `fs`: tree copies, atomic directory exchange, removal and free space.
//!
//! These are the operations an update needs to be undoable: copy the installation
//! aside, build the new one beside it, and swap the two in one step. Every one
//! works through directory handles beneath the granted roots (see
//! [`crate::beneath`]): the folder of a path is opened beneath its root, and its
//! last component is handled through that folder as one name. None of them follows
//! a symbolic link: links are copied and removed as links, and exchange takes only
//! real directories.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use posup_world::latest::fs;
use posup_world::latest::types::Error as WitError;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, Timespec, Timestamps};
use wasmtime::component::{HasSelf, Linker};

use super::{CapError, CapResult, Work};
use crate::beneath::{self, Roots};
use crate::grants::guest_root;

/// Per-step state of `fs`.
pub struct FsState {
    roots: Arc<Roots>,
    work: Work,
    reserve: u64,
}

impl FsState {
    pub fn new(roots: Arc<Roots>, work: Work, reserve: u64) -> Self {
        Self {
            roots,
            work,
            reserve,
        }
    }
}

impl fs::Host for FsState {
    async fn copy_tree(&mut self, src: String, dst: String) -> Result<u64, WitError> {
        let (roots, work, reserve) = (self.roots.clone(), self.work.clone(), self.reserve);
        let what = format!("copying {src} to {dst}");
        super::blocking(&self.work, &what, move || {
            copy_tree(&roots, &work, reserve, &src, &dst)
        })
        .await
    }

    async fn exchange(&mut self, a: String, b: String) -> Result<(), WitError> {
        let roots = self.roots.clone();
        let what = format!("exchanging {a} and {b}");
        super::blocking(&self.work, &what, move || exchange(&roots, &a, &b)).await
    }

    async fn remove_tree(&mut self, path: String) -> Result<(), WitError> {
        let (roots, work) = (self.roots.clone(), self.work.clone());
        let what = format!("removing {path}");
        super::blocking(&self.work, &what, move || remove_tree(&roots, &work, &path)).await
    }

    async fn free_space(&mut self, path: String) -> Result<u64, WitError> {
        let roots = self.roots.clone();
        let what = format!("free space at {path}");
        super::blocking(&self.work, &what, move || free_space(&roots, &path)).await
    }
}

pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut FsState,
) -> wasmtime::Result<()> {
    fs::add_to_linker::<T, HasSelf<FsState>>(linker, get)
}

/// Bytes copied between two looks at the step's deadline.
const COPY_CHUNK: u64 = 64 << 20;

/// Copies the tree at guest path `src` to guest path `dst`, which must not exist,
/// keeping modes, times, symbolic links and hard links. The copy is built under a
/// hidden sibling name and renamed into place at the end (never over anything), so
/// a failure leaves no partial `dst`. Before each file, at least `reserve` bytes
/// beyond it must stay free on the destination's filesystem. Returns the bytes of
/// file data copied. Blocking.
pub fn copy_tree(roots: &Roots, work: &Work, reserve: u64, src: &str, dst: &str) -> CapResult<u64> {
    let src_loc = roots.locate(src, false)?;
    let dst_loc = roots.locate(dst, true)?;
    if dst_loc.is_root() {
        return Err(CapError::invalid(format!(
            "{dst}: already exists; copy-tree creates its destination, so remove it first"
        )));
    }
    let (dst_dir, dst_name) = dst_loc.parent().map_err(|e| match e.kind {
        posup_world::latest::types::ErrorKind::NotFound => CapError::not_found(format!(
            "{dst}: the folder it would be created in does not exist; create it first"
        )),
        _ => e,
    })?;
    if beneath::kind_at(dst_dir.as_fd(), &dst_name)
        .map_err(|e| dst_loc.error("looking at it", &e))?
        .is_some()
    {
        return Err(CapError::invalid(format!(
            "{dst}: already exists; copy-tree creates its destination, so remove it first"
        )));
    }
    // The source: the root itself, or one name in its folder, never followed.
    let (src_dir, src_name) = if src_loc.is_root() {
        let root = src_loc.open_dir()?;
        (root, OsString::from("."))
    } else {
        src_loc.parent()?
    };
    let src_stat = beneath::kind_at(src_dir.as_fd(), &src_name)
        .map_err(|e| src_loc.error("reading", &e))?
        .ok_or_else(|| CapError::not_found(format!("{src}: does not exist")))?;
    if FileType::from_raw_mode(src_stat.st_mode) == FileType::Directory {
        let src_fd = beneath::open_dir_nofollow(src_dir.as_fd(), &src_name)
            .map_err(|e| src_loc.error("opening", &e))?;
        if beneath::is_within(dst_dir.as_fd(), src_fd.as_fd())
            .map_err(|e| dst_loc.error("looking at its folder", &e))?
        {
            return Err(CapError::invalid(format!(
                "{dst}: lies inside {src}, which cannot be copied into itself"
            )));
        }
    }
    let tmp = OsString::from(format!(
        ".{}.posup-copy-{}-{:x}",
        dst_name.to_string_lossy(),
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos()
    ));
    let mut copier = Copier {
        src,
        work,
        reserve,
        bytes: 0,
        linked: HashMap::new(),
    };
    let copied = copier
        .copy(
            src_dir.as_fd(),
            &src_name,
            dst_dir.as_fd(),
            &tmp,
            &mut String::new(),
            0,
        )
        .and_then(|()| {
            rustix::fs::renameat_with(&dst_dir, &tmp, &dst_dir, &dst_name, RenameFlags::NOREPLACE)
                .map_err(|e| {
                    CapError::from_io(
                        format!("{dst}: moving the finished copy into place"),
                        &e.into(),
                    )
                })
        });
    if let Err(e) = copied {
        if let Err(rm) = remove_at(dst_dir.as_fd(), &tmp, &Work::default(), 0) {
            tracing::warn!(path = %tmp.to_string_lossy(), error = %rm, "could not remove an unfinished copy");
        }
        return Err(e);
    }
    beneath::sync_dir(dst_dir.as_fd());
    Ok(copier.bytes)
}

/// One tree copy in progress.
struct Copier<'a> {
    /// The guest path being copied, for messages.
    src: &'a str,
    work: &'a Work,
    reserve: u64,
    bytes: u64,
    /// Files with several names, by device and inode, and where their first copy
    /// went: later names become hard links to it, as with `cp -a`.
    linked: HashMap<(u64, u64), (Arc<OwnedFd>, OsString)>,
}

impl Copier<'_> {
    fn shown(&self, rel: &str) -> String {
        if rel.is_empty() {
            self.src.to_string()
        } else {
            format!("{}/{rel}", self.src.trim_end_matches('/'))
        }
    }

    fn io(&self, rel: &str, what: &str, e: impl Into<io::Error>) -> CapError {
        CapError::from_io(format!("{}: {what}", self.shown(rel)), &e.into())
    }

    /// Copies `name` in `from` to `to_name` in `to`. `rel` is its path below the
    /// copied tree, for messages.
    fn copy(
        &mut self,
        from: BorrowedFd<'_>,
        name: &OsStr,
        to: BorrowedFd<'_>,
        to_name: &OsStr,
        rel: &mut String,
        depth: usize,
    ) -> CapResult<()> {
        self.work.check(&format!("copying {}", self.src))?;
        if depth > beneath::MAX_DEPTH {
            return Err(CapError::limit(format!(
                "{}: more than {} folders deep; copy-tree stops there",
                self.shown(rel),
                beneath::MAX_DEPTH
            )));
        }
        let st = rustix::fs::statat(from, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.io(rel, "reading", e))?;
        let ft = FileType::from_raw_mode(st.st_mode);
        let mode = Mode::from_raw_mode(st.st_mode & 0o7777);
        let times = Timestamps {
            last_access: Timespec {
                tv_sec: st.st_atime as i64,
                tv_nsec: st.st_atime_nsec as _,
            },
            last_modification: Timespec {
                tv_sec: st.st_mtime as i64,
                tv_nsec: st.st_mtime_nsec as _,
            },
        };
        match ft {
            FileType::Directory => {
                // Owner-only while filling it; its own mode comes last, so a
                // read-only directory still receives its contents.
                rustix::fs::mkdirat(to, to_name, Mode::RWXU)
                    .map_err(|e| self.io(rel, "creating its copy", e))?;
                let src_fd = beneath::open_dir_nofollow(from, name)
                    .map_err(|e| self.io(rel, "opening", e))?;
                let dst_fd = Arc::new(
                    beneath::open_dir_nofollow(to, to_name)
                        .map_err(|e| self.io(rel, "opening its copy", e))?,
                );
                let mut names =
                    beneath::names(src_fd.as_fd()).map_err(|e| self.io(rel, "listing", e))?;
                names.sort();
                for child in names {
                    let len = rel.len();
                    if !rel.is_empty() {
                        rel.push('/');
                    }
                    rel.push_str(&child.to_string_lossy());
                    let r = self.copy_child(&src_fd, &child, &dst_fd, rel, depth + 1);
                    rel.truncate(len);
                    r?;
                }
                rustix::fs::fchmod(&*dst_fd, mode)
                    .map_err(|e| self.io(rel, "setting the copy's mode", e))?;
            }
            FileType::RegularFile => {
                let key = (st.st_dev, st.st_ino);
                if st.st_nlink > 1
                    && let Some((first_dir, first_name)) = self.linked.get(&key)
                {
                    return rustix::fs::linkat(
                        &**first_dir,
                        first_name,
                        to,
                        to_name,
                        AtFlags::empty(),
                    )
                    .map_err(|e| self.io(rel, "linking its copy", e));
                }
                self.room(to, st.st_size as u64, rel)?;
                let input = beneath::open_file_nofollow(from, name)
                    .and_then(|f| f.ok_or_else(|| io::ErrorKind::NotFound.into()))
                    .map_err(|e| self.io(rel, "opening", e))?;
                let mut output = File::from(
                    rustix::fs::openat(
                        to,
                        to_name,
                        OFlags::WRONLY
                            | OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        Mode::RUSR | Mode::WUSR,
                    )
                    .map_err(|e| self.io(rel, "creating its copy", e))?,
                );
                // `io::copy` between two files uses copy_file_range, which lets the
                // filesystem share or copy the blocks without a round trip through
                // here; in chunks, so a passed deadline stops a large file too.
                loop {
                    let n = io::copy(&mut (&input).take(COPY_CHUNK), &mut output)
                        .map_err(|e| self.io(rel, "copying", e))?;
                    self.bytes += n;
                    if n < COPY_CHUNK {
                        break;
                    }
                    self.work.check(&format!("copying {}", self.shown(rel)))?;
                }
                rustix::fs::fchmod(&output, mode)
                    .map_err(|e| self.io(rel, "setting the copy's mode", e))?;
                return set_times(to, to_name, &times)
                    .map_err(|e| self.io(rel, "setting the copy's times", e));
            }
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(from, name, Vec::new())
                    .map_err(|e| self.io(rel, "reading the link", e))?;
                rustix::fs::symlinkat(target.as_c_str(), to, to_name)
                    .map_err(|e| self.io(rel, "creating the link", e))?;
            }
            other => {
                return Err(CapError::invalid(format!(
                    "{}: is {}; copy-tree copies files, directories and symbolic links only, remove it or copy around it",
                    self.shown(rel),
                    beneath::describe(other)
                )));
            }
        }
        set_times(to, to_name, &times).map_err(|e| self.io(rel, "setting the copy's times", e))
    }

    fn copy_child(
        &mut self,
        from: &OwnedFd,
        name: &OsStr,
        to: &Arc<OwnedFd>,
        rel: &mut String,
        depth: usize,
    ) -> CapResult<()> {
        let st = rustix::fs::statat(from, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.io(rel, "reading", e))?;
        self.copy(from.as_fd(), name, to.as_fd(), name, rel, depth)?;
        if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile && st.st_nlink > 1 {
            self.linked
                .entry((st.st_dev, st.st_ino))
                .or_insert_with(|| (to.clone(), name.to_owned()));
        }
        Ok(())
    }

    /// Refuses to copy a file of `size` bytes when it would leave less than the
    /// reserve free where it goes.
    fn room(&self, to: BorrowedFd<'_>, size: u64, rel: &str) -> CapResult<()> {
        let free = available(to).map_err(|e| self.io(rel, "measuring free space", e))?;
        if free < size.saturating_add(self.reserve) {
            return Err(CapError::limit(format!(
                "{}: copying its {size} bytes would leave less than the reserve of {} MiB free ({} MiB free); free some space first",
                self.shown(rel),
                self.reserve >> 20,
                free >> 20
            )));
        }
        Ok(())
    }
}

/// Sets the times of `name` in `dir` itself, even when it is a link.
fn set_times(dir: BorrowedFd<'_>, name: &OsStr, times: &Timestamps) -> io::Result<()> {
    Ok(rustix::fs::utimensat(
        dir,
        name,
        times,
        AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

/// One side of an exchange: the folder holding it, its name there, and the granted
/// root it is, if it is one.
struct Side {
    folder: cap_std::fs::Dir,
    name: OsString,
    root: Option<posup_world::latest::types::Dir>,
    fd: OwnedFd,
}

fn side(roots: &Roots, guest: &str) -> CapResult<Side> {
    let loc = roots.locate(guest, true)?;
    let (folder, name, root) = if loc.is_root() {
        let (f, n) = roots.root_parent(loc.dir)?;
        (f, n, Some(loc.dir))
    } else {
        let (f, n) = loc.parent()?;
        (f, n, None)
    };
    let st = beneath::kind_at(folder.as_fd(), &name)
        .map_err(|e| loc.error("looking at it", &e))?
        .ok_or_else(|| {
            CapError::not_found(format!(
                "{guest}: does not exist; exchange needs two existing directories"
            ))
        })?;
    let ft = FileType::from_raw_mode(st.st_mode);
    if ft != FileType::Directory {
        return Err(CapError::invalid(format!(
            "{guest}: is {}; exchange swaps two real directories only",
            beneath::describe(ft)
        )));
    }
    let fd =
        beneath::open_dir_nofollow(folder.as_fd(), &name).map_err(|e| loc.error("opening", &e))?;
    Ok(Side {
        folder,
        name,
        root,
        fd,
    })
}

/// Exchanges the directories at guest paths `a` and `b`, atomically, with
/// `renameat2(RENAME_EXCHANGE)` on their folders' handles. Both must be real
/// directories (never a link, never a file) in writable granted directories on one
/// filesystem; a granted directory itself (`/product`) may be exchanged with one
/// inside another grant (`/staging/new`), and is opened again afterwards, so the
/// rest of the step sees the tree now in its place. A filesystem without atomic
/// exchange is refused: posup never swaps trees by several renames that a crash or
/// a plugin could leave half done. Blocking.
pub fn exchange(roots: &Roots, a: &str, b: &str) -> CapResult<()> {
    let sa = side(roots, a)?;
    let sb = side(roots, b)?;
    let id = |fd: &OwnedFd| rustix::fs::fstat(fd).map(|st| (st.st_dev, st.st_ino));
    let (ia, ib) = (
        id(&sa.fd).map_err(|e| CapError::from_io(a, &e.into()))?,
        id(&sb.fd).map_err(|e| CapError::from_io(b, &e.into()))?,
    );
    if ia == ib {
        return Err(CapError::invalid(format!(
            "{a} and {b} are the same directory"
        )));
    }
    let nested = beneath::is_within(sa.fd.as_fd(), sb.fd.as_fd())
        .and_then(|x| Ok(x || beneath::is_within(sb.fd.as_fd(), sa.fd.as_fd())?))
        .map_err(|e| CapError::from_io(format!("exchanging {a} and {b}"), &e))?;
    if nested {
        return Err(CapError::invalid(format!(
            "{a} and {b}: one lies inside the other, so they cannot be exchanged"
        )));
    }
    rustix::fs::renameat_with(
        &sa.folder,
        &sa.name,
        &sb.folder,
        &sb.name,
        RenameFlags::EXCHANGE,
    )
    .map_err(|e| exchange_error(a, b, e))?;
    beneath::sync_dir(sa.folder.as_fd());
    beneath::sync_dir(sb.folder.as_fd());
    for root in [sa.root, sb.root].into_iter().flatten() {
        roots.reopen(root)?;
    }
    Ok(())
}

fn exchange_error(a: &str, b: &str, e: rustix::io::Errno) -> CapError {
    match e {
        rustix::io::Errno::XDEV => CapError::invalid(format!(
            "exchanging {a} and {b}: they are on different filesystems; stage the new tree on the same filesystem"
        )),
        rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS | rustix::io::Errno::OPNOTSUPP => {
            CapError::invalid(format!(
                "exchanging {a} and {b}: this filesystem cannot exchange two directories atomically \
                 (RENAME_EXCHANGE: Linux 3.15 or later on ext4, xfs, btrfs or tmpfs); \
                 put /product and /staging on such a filesystem"
            ))
        }
        e => CapError::from_io(format!("exchanging {a} and {b}"), &e.into()),
    }
}

/// Removes the file or tree at guest path `path` without following symbolic
/// links; a missing path is fine. A granted directory itself, or a folder holding
/// one, is never removed. Blocking.
pub fn remove_tree(roots: &Roots, work: &Work, path: &str) -> CapResult<()> {
    let loc = roots.locate(path, true)?;
    if loc.is_root() {
        return Err(CapError::denied(format!(
            "{path}: is the granted directory {} itself, which cannot be removed; remove what is inside it instead",
            guest_root(loc.dir)
        )));
    }
    let (dir, name) = match loc.parent() {
        Ok(x) => x,
        Err(e) if e.kind == posup_world::latest::types::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let Some(st) =
        beneath::kind_at(dir.as_fd(), &name).map_err(|e| loc.error("looking at it", &e))?
    else {
        return Ok(());
    };
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        let fd =
            beneath::open_dir_nofollow(dir.as_fd(), &name).map_err(|e| loc.error("opening", &e))?;
        for other in roots.all() {
            let holds = beneath::is_within(other.as_fd(), fd.as_fd())
                .map_err(|e| loc.error("looking at it", &e))?;
            if holds {
                return Err(CapError::denied(format!(
                    "{path}: contains a granted directory, which cannot be removed; remove what is inside it instead"
                )));
            }
        }
    }
    remove_at(dir.as_fd(), &name, work, 0).map_err(|e| match e {
        Removal::Io(e) => CapError::from_io(format!("{path}: removing"), &e),
        Removal::Cap(e) => e,
    })
}

/// Why a removal stopped.
enum Removal {
    Io(io::Error),
    Cap(CapError),
}

impl From<rustix::io::Errno> for Removal {
    fn from(e: rustix::io::Errno) -> Self {
        Removal::Io(e.into())
    }
}

impl From<io::Error> for Removal {
    fn from(e: io::Error) -> Self {
        Removal::Io(e)
    }
}

impl std::fmt::Display for Removal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Removal::Io(e) => e.fmt(f),
            Removal::Cap(e) => e.fmt(f),
        }
    }
}

/// Removes `name` in `dir` and, when it is a directory, everything in it, through
/// handles and without following links; a read-only directory is made writable
/// for its owner first.
fn remove_at(dir: BorrowedFd<'_>, name: &OsStr, work: &Work, depth: usize) -> Result<(), Removal> {
    if depth > beneath::MAX_DEPTH {
        return Err(Removal::Cap(CapError::limit(format!(
            "more than {} folders deep; remove-tree stops there",
            beneath::MAX_DEPTH
        ))));
    }
    work.check("removing").map_err(Removal::Cap)?;
    let Some(st) = beneath::kind_at(dir, name)? else {
        return Ok(());
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?);
    }
    let fd = beneath::open_dir_nofollow(dir, name)?;
    if st.st_mode & 0o700 != 0o700 {
        rustix::fs::fchmod(&fd, Mode::from_raw_mode((st.st_mode & 0o7777) | 0o700))?;
    }
    for child in beneath::names(fd.as_fd())? {
        remove_at(fd.as_fd(), &child, work, depth + 1)?;
    }
    Ok(rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?)
}

/// Bytes available to this host user on the filesystem holding guest path `path`
/// (or, when it does not exist yet, its nearest existing parent). Blocking.
pub fn free_space(roots: &Roots, path: &str) -> CapResult<u64> {
    let loc = roots.locate(path, false)?;
    let dir = loc.nearest_dir()?;
    available(dir.as_fd()).map_err(|e| CapError::from_io(path, &e))
}

/// fstatvfs(2): blocks available to unprivileged users times the fragment size.
pub(crate) fn available(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let st = rustix::fs::fstatvfs(fd)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Sets access and modification times (seconds, nanoseconds) of `name` in `dir`
/// itself, even when it is a symbolic link; `None` leaves the access time as it is.
pub(crate) fn set_times_nofollow(
    dir: BorrowedFd<'_>,
    name: &std::ffi::OsStr,
    atime: Option<(i64, i64)>,
    mtime: (i64, i64),
) -> io::Result<()> {
    let ts = |(sec, nsec): (i64, i64)| Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    let times = Timestamps {
        last_access: atime.map_or(
            Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_OMIT,
            },
            ts,
        ),
        last_modification: ts(mtime),
    };
    Ok(rustix::fs::utimensat(
        dir,
        name,
        &times,
        AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grants::{DirGrant, Grants};
    use posup_world::latest::types::{Dir, ErrorKind};
    use std::fs as stdfs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::{Path, PathBuf};

    struct Fixture {
        _tmp: tempfile::TempDir,
        root: PathBuf,
        grants: Roots,
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
                grants: Roots::open(&grants).unwrap(),
            }
        }

        fn p(&self, rel: &str) -> PathBuf {
            self.root.join(rel)
        }
    }

    /// `copy-tree` with no reserve and nothing cancelled.
    fn copy(fx: &Fixture, src: &str, dst: &str) -> CapResult<u64> {
        copy_tree(&fx.grants, &Work::default(), 0, src, dst)
    }

    fn set_mtime(p: &Path, secs: i64) {
        let folder = stdfs::File::open(p.parent().unwrap()).unwrap();
        let name = p.file_name().unwrap();
        set_times_nofollow(folder.as_fd(), name, Some((secs, 0)), (secs, 500)).unwrap();
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

        let bytes = copy(&fx, "/product/app", "/staging/copy").unwrap();
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

        let err = copy(&fx, "/product/app", "/staging/copy").unwrap_err();
        assert!(err.message.contains("already exists"), "{}", err.message);
        let err = copy(&fx, "/product/app", "/backup/copy").unwrap_err();
        assert_eq!(err.kind, ErrorKind::Denied);
        let err = copy(&fx, "/product/app", "/product/app/inside").unwrap_err();
        assert!(err.message.contains("into itself"), "{}", err.message);
        // Cleanup of the read-only copy works too (tempfile would fail on it).
        remove_tree(&fx.grants, &Work::default(), "/staging/copy").unwrap();
        assert!(!dst.exists());
    }

    #[test]
    fn copy_tree_refuses_special_files_and_leaves_nothing() {
        let fx = Fixture::new();
        let src = fx.p("product/app");
        stdfs::create_dir_all(src.join("a")).unwrap();
        stdfs::write(src.join("a/file"), b"x").unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(src.join("z.sock")).unwrap();
        let err = copy(&fx, "/product/app", "/staging/copy").unwrap_err();
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

    /// A plugin plants `<a>.posup-exchange` as a link climbing to `/` and asks
    /// for an exchange with `a` missing: no "interrupted exchange" is guessed at,
    /// and the product root stays the real directory it was.
    #[test]
    fn exchange_never_takes_a_planted_sidecar() {
        let fx = Fixture::new();
        stdfs::write(fx.p("product/version"), b"old").unwrap();
        std::os::unix::fs::symlink(
            "../../../../../../../../..",
            fx.p("staging/x.posup-exchange"),
        )
        .unwrap();
        let err = exchange(&fx.grants, "/staging/x", "/product").unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound, "{}", err.message);
        let m = stdfs::symlink_metadata(fx.p("product")).unwrap();
        assert!(m.is_dir(), "the product root was replaced");
        assert_eq!(stdfs::read(fx.p("product/version")).unwrap(), b"old");
        assert!(
            fx.grants
                .locate("/product/version", false)
                .unwrap()
                .open_file()
                .is_ok()
        );
    }

    /// A link deep in `/staging` whose relative target stays inside `/staging`
    /// there, but climbs to `/` from where the product root is: exchange takes
    /// real directories only.
    #[test]
    fn exchange_refuses_links_and_files() {
        let fx = Fixture::new();
        stdfs::write(fx.p("product/version"), b"old").unwrap();
        let deep = fx.p("staging/a/b/c/d/e/f/g/h/i/j");
        stdfs::create_dir_all(&deep).unwrap();
        std::os::unix::fs::symlink("../../../../../../../../..", deep.join("link")).unwrap();
        let err =
            exchange(&fx.grants, "/product", "/staging/a/b/c/d/e/f/g/h/i/j/link").unwrap_err();
        assert_eq!(err.kind, ErrorKind::Invalid, "{}", err.message);
        assert!(err.message.contains("symbolic link"), "{}", err.message);
        stdfs::write(fx.p("staging/file"), b"f").unwrap();
        let err = exchange(&fx.grants, "/staging/file", "/product").unwrap_err();
        assert!(err.message.contains("a file"), "{}", err.message);
        assert!(stdfs::symlink_metadata(fx.p("product")).unwrap().is_dir());
        assert_eq!(stdfs::read(fx.p("product/version")).unwrap(), b"old");
    }

    /// After the product root is exchanged, the step's handle of `/product` is
    /// the tree now in its place.
    #[test]
    fn exchange_of_a_root_opens_it_again() {
        let fx = Fixture::new();
        stdfs::write(fx.p("product/version"), b"old").unwrap();
        stdfs::create_dir(fx.p("staging/new")).unwrap();
        stdfs::write(fx.p("staging/new/version"), b"new").unwrap();
        exchange(&fx.grants, "/staging/new", "/product").unwrap();
        let mut text = String::new();
        fx.grants
            .locate("/product/version", false)
            .unwrap()
            .open_file()
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "new");
    }

    /// A root that is a link is refused when the step starts.
    #[test]
    fn a_root_that_is_a_link_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        stdfs::create_dir(tmp.path().join("real")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("real"), tmp.path().join("product")).unwrap();
        let grants = Grants {
            dirs: vec![DirGrant {
                dir: Dir::Product,
                host: tmp.path().join("product"),
                write: true,
            }],
            ..Grants::default()
        };
        let err = Roots::open(&grants).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }

    #[test]
    fn copy_tree_keeps_a_reserve_free() {
        let fx = Fixture::new();
        stdfs::create_dir(fx.p("product/app")).unwrap();
        stdfs::write(fx.p("product/app/data"), vec![1u8; 4096]).unwrap();
        let err = copy_tree(
            &fx.grants,
            &Work::default(),
            u64::MAX / 2,
            "/product/app",
            "/staging/copy",
        )
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Limit, "{}", err.message);
        assert!(err.message.contains("reserve"), "{}", err.message);
        assert_eq!(stdfs::read_dir(fx.p("staging")).unwrap().count(), 0);
    }

    #[test]
    fn a_cancelled_copy_stops_and_leaves_nothing() {
        let fx = Fixture::new();
        stdfs::create_dir(fx.p("product/app")).unwrap();
        stdfs::write(fx.p("product/app/data"), b"x").unwrap();
        let work = Work::default();
        work.cancel();
        let err = copy_tree(&fx.grants, &work, 0, "/product/app", "/staging/copy").unwrap_err();
        assert_eq!(err.kind, ErrorKind::Timeout, "{}", err.message);
        assert_eq!(stdfs::read_dir(fx.p("staging")).unwrap().count(), 0);
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
            let err = remove_tree(&fx.grants, &Work::default(), root).unwrap_err();
            assert_eq!(err.kind, ErrorKind::Denied, "{root}");
            assert!(
                err.message.contains("granted directory /product"),
                "{}",
                err.message
            );
        }
        assert!(fx.p("product/app").is_dir());

        remove_tree(&fx.grants, &Work::default(), "/product/out").unwrap();
        assert!(stdfs::symlink_metadata(fx.p("product/out")).is_err());
        remove_tree(&fx.grants, &Work::default(), "/product/app").unwrap();
        assert!(stdfs::symlink_metadata(fx.p("product/app")).is_err());
        assert_eq!(stdfs::read(fx.p("outside/precious")).unwrap(), b"keep");
        remove_tree(&fx.grants, &Work::default(), "/product/app").unwrap();
        let err = remove_tree(&fx.grants, &Work::default(), "/backup/x").unwrap_err();
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
