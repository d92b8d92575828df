//! Unpacking all or nothing: every entry into a fresh directory beneath
//! `dest`, checked, then moved into place.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cap_std::fs::{Dir, DirBuilder, DirBuilderExt, OpenOptions, OpenOptionsExt};
use posup_world::latest::archive::{EntryKind, ExtractSummary};

use crate::beneath::Roots;
use crate::caps::{CapError, CapResult, Work};

use super::formats::{
    Format, lossy, open, open_zip, read_error, tar_kind, with_tar_stream, zip_error, zip_kind,
    zip_mtime, zip_name,
};
use super::read::tar_entries;
use super::{ArchiveLimits, BUF, CHECK_EVERY, MAX_LINK, MODE_MASK};

/// Unpacks the archive at guest path `archive` into the existing guest directory
/// `dest`, all or nothing (see the module documentation). Blocking.
pub fn extract(
    roots: &Roots,
    limits: &ArchiveLimits,
    work: &Work,
    reserve: u64,
    archive: &str,
    dest: &str,
) -> CapResult<ExtractSummary> {
    let dest_dir = roots
        .locate(dest, true)?
        .open_dir()
        .map_err(|e| match e.kind {
            posup_world::latest::types::ErrorKind::NotFound => CapError::not_found(format!(
                "{dest}: does not exist; create the directory first"
            )),
            _ => e,
        })?;
    // Everything happens beneath the handle of `dest`, opened beneath its root, and
    // beneath the handle of the temporary directory made in it: no path from the
    // host's root is walked, whatever links a plugin plants on the way there.
    let (file, format) = open(roots, archive)?;
    let tmp = TempDir::create(&dest_dir, dest)?;
    let mut unpacker = Unpacker {
        root: tmp.dir.try_clone().map_err(|e| {
            CapError::from_io(
                format!("{dest}: the temporary directory to unpack into"),
                &e,
            )
        })?,
        work,
        reserve,
        archive,
        dest,
        limits,
        format,
        buf: vec![0; BUF],
        entries: 0,
        summary: ExtractSummary {
            files: 0,
            directories: 0,
            links: 0,
            bytes: 0,
        },
        known: HashMap::new(),
        dirs: Vec::new(),
    };
    if format == Format::Zip {
        unpacker.unpack_zip(file)?;
    } else {
        with_tar_stream(file, format, |stream| unpacker.unpack_tar(stream))?;
    }
    unpacker.finish(dest_dir.as_fd(), tmp)
}

/// The temporary directory an extraction unpacks into, made in `dest` and held by
/// a handle; removed through `dest`'s handle when dropped, so every early return
/// and even a panic leave `dest` as it was.
pub(super) struct TempDir {
    parent: Dir,
    name: String,
    dir: Dir,
}

impl TempDir {
    pub(super) fn create(parent: &Dir, guest: &str) -> CapResult<TempDir> {
        let failed = |e: io::Error| {
            CapError::from_io(
                format!("{guest}: creating the temporary directory to unpack into"),
                &e,
            )
        };
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        for attempt in 0u32..100 {
            let name = format!(".posup-extract-{}-{nanos:x}-{attempt}", std::process::id());
            match parent.create_dir_with(&name, DirBuilder::new().mode(0o700)) {
                Ok(()) => {
                    let dir = crate::beneath::open_dir_nofollow(parent.as_fd(), name.as_ref())
                        .map(|fd| Dir::from_std_file(File::from(fd)))
                        .map_err(failed)?;
                    let parent = parent.try_clone().map_err(failed)?;
                    return Ok(TempDir { parent, name, dir });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(failed(e)),
            }
        }
        Err(CapError::io(format!(
            "{guest}: no free name for a temporary directory to unpack into; remove stale .posup-extract-* directories"
        )))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = self.parent.remove_dir_all(&self.name)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(name = %self.name, error = %e, "could not remove the temporary extraction directory");
        }
    }
}

/// What an earlier entry of the same archive left at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Made {
    Dir,
    File,
    Symlink,
}

/// Unpacks entries one by one into `root`, checking each.
pub(super) struct Unpacker<'a> {
    /// The temporary directory's handle.
    root: Dir,
    work: &'a Work,
    /// Free space every write leaves on the filesystem.
    reserve: u64,
    archive: &'a str,
    dest: &'a str,
    limits: &'a ArchiveLimits,
    format: Format,
    buf: Vec<u8>,
    entries: u64,
    summary: ExtractSummary,
    /// Every path created so far, relative to `root`: the only places a hard link
    /// may point to, and the symbolic links nothing may be written through.
    known: HashMap<PathBuf, Made>,
    /// Directory entries with their mode and mtime, applied once everything is in
    /// place (a read-only directory must still receive its files first).
    dirs: Vec<(PathBuf, u32, u64)>,
}

/// One entry, in the terms the checks need.
pub(super) enum Item<'b> {
    File {
        mode: u32,
        mtime: u64,
        data: &'b mut dyn Read,
    },
    Dir {
        mode: u32,
        mtime: u64,
    },
    Symlink {
        target: &'b [u8],
        mtime: u64,
    },
    Hardlink {
        target: &'b [u8],
    },
}

impl Unpacker<'_> {
    pub(super) fn refuse(&self, name: &[u8], what: impl std::fmt::Display) -> CapError {
        CapError::invalid(format!(
            "{}: entry `{}` {what}; nothing was extracted into {}",
            self.archive,
            lossy(name),
            self.dest
        ))
    }

    pub(super) fn io_error(&self, name: &[u8], what: &str, e: &io::Error) -> CapError {
        CapError::io(format!(
            "{}: entry `{}`: {what}: {e}; nothing was extracted into {}",
            self.archive,
            lossy(name),
            self.dest
        ))
    }

    /// A relative, clean path for `path` (the name of entry `name`, or its hard
    /// link target), refusing empty, absolute and `..` paths. `Ok(None)` is the
    /// archive's own root (`./`).
    pub(super) fn entry_path(
        &self,
        name: &[u8],
        path: &[u8],
        what: &str,
    ) -> CapResult<Option<PathBuf>> {
        if path.is_empty() {
            return Err(self.refuse(name, format!("has an empty {what}")));
        }
        let mut rel = PathBuf::new();
        for c in Path::new(OsStr::from_bytes(path)).components() {
            match c {
                Component::Normal(s) => rel.push(s),
                Component::CurDir => {}
                Component::RootDir | Component::Prefix(_) => {
                    return Err(self.refuse(
                        name,
                        format!("has an absolute {what}; archives must hold relative paths"),
                    ));
                }
                Component::ParentDir => {
                    return Err(self.refuse(
                        name,
                        format!("has `..` in its {what}, which could climb out of the destination"),
                    ));
                }
            }
        }
        Ok((!rel.as_os_str().is_empty()).then_some(rel))
    }

    /// Checks a symbolic link's target: relative, and staying inside the
    /// destination when resolved from the link's folder. `..` is accepted only
    /// before the first name, because after a name that is itself a link it would
    /// climb from wherever that link leads.
    pub(super) fn check_link_target(
        &self,
        name: &[u8],
        rel: &Path,
        target: &[u8],
    ) -> CapResult<()> {
        if target.is_empty() {
            return Err(self.refuse(name, "is a symbolic link with an empty target"));
        }
        let shown = lossy(target);
        let mut depth = rel.components().count() - 1;
        let mut named = false;
        for c in Path::new(OsStr::from_bytes(target)).components() {
            match c {
                Component::RootDir | Component::Prefix(_) => {
                    return Err(self.refuse(
                        name,
                        format!("is a symbolic link to the absolute path `{shown}`"),
                    ));
                }
                Component::CurDir => {}
                Component::ParentDir if named => {
                    return Err(self.refuse(
                        name,
                        format!("is a symbolic link to `{shown}`, which climbs with `..` after a name; such targets are refused"),
                    ));
                }
                Component::ParentDir => {
                    if depth == 0 {
                        return Err(self.refuse(
                            name,
                            format!("is a symbolic link to `{shown}`, which points outside the destination"),
                        ));
                    }
                    depth -= 1;
                }
                Component::Normal(_) => named = true,
            }
        }
        Ok(())
    }

    /// Makes room for a new entry at `rel`: creates missing parent directories,
    /// refuses to go through a link or a file made earlier, and removes an earlier
    /// non-directory at the same path (the later entry wins, as with tar). Returns
    /// true when a directory already stands at `rel`.
    pub(super) fn prepare(&mut self, name: &[u8], rel: &Path, is_dir: bool) -> CapResult<bool> {
        let parents: Vec<&Path> = rel
            .ancestors()
            .skip(1)
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
        for parent in parents.into_iter().rev() {
            match self.known.get(parent) {
                Some(Made::Dir) => {}
                Some(Made::Symlink) => {
                    return Err(self.refuse(
                        name,
                        format!(
                            "would be written through the symbolic link `{}` made by an earlier entry",
                            parent.display()
                        ),
                    ));
                }
                Some(Made::File) => {
                    return Err(self.refuse(
                        name,
                        format!("lies under `{}`, which is a file", parent.display()),
                    ));
                }
                None => {
                    self.root
                        .create_dir(parent)
                        .map_err(|e| self.io_error(name, "creating its folder", &e))?;
                    self.known.insert(parent.to_path_buf(), Made::Dir);
                }
            }
        }
        match self.known.get(rel) {
            None => Ok(false),
            Some(Made::Dir) if is_dir => Ok(true),
            Some(Made::Dir) => Err(self.refuse(
                name,
                "replaces a directory of the same name made by an earlier entry",
            )),
            Some(_) => {
                self.root.remove_file(rel).map_err(|e| {
                    self.io_error(name, "replacing an earlier entry of the same name", &e)
                })?;
                self.known.remove(rel);
                Ok(false)
            }
        }
    }

    pub(super) fn add(&mut self, name: &[u8], item: Item<'_>) -> CapResult<()> {
        self.work.check(&format!("extracting {}", self.archive))?;
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(CapError::limit(format!(
                "{}: holds more than the limit of {} entries; nothing was extracted into {}",
                self.archive, self.limits.max_entries, self.dest
            )));
        }
        let Some(rel) = self.entry_path(name, name, "path")? else {
            // `./`, the archive's own root, names `dest`, which already exists and
            // whose mode is not the archive's to change.
            return match item {
                Item::Dir { .. } => Ok(()),
                _ => Err(self.refuse(name, "names no file")),
            };
        };
        match item {
            Item::Dir { mode, mtime } => {
                if !self.prepare(name, &rel, true)? {
                    self.root
                        .create_dir_with(&rel, DirBuilder::new().mode(0o700))
                        .map_err(|e| self.io_error(name, "creating the directory", &e))?;
                    self.known.insert(rel.clone(), Made::Dir);
                }
                self.dirs.push((rel, mode & MODE_MASK, mtime));
                self.summary.directories += 1;
            }
            Item::File { mode, mtime, data } => {
                self.prepare(name, &rel, false)?;
                self.write_file(name, &rel, mode, mtime, data)?;
                self.known.insert(rel, Made::File);
                self.summary.files += 1;
            }
            Item::Symlink { target, mtime } => {
                self.check_link_target(name, &rel, target)?;
                self.prepare(name, &rel, false)?;
                self.root
                    .symlink(OsStr::from_bytes(target), &rel)
                    .map_err(|e| self.io_error(name, "creating the symbolic link", &e))?;
                self.set_link_time(&rel, mtime)
                    .map_err(|e| self.io_error(name, "setting the link's time", &e))?;
                self.known.insert(rel, Made::Symlink);
                self.summary.links += 1;
            }
            Item::Hardlink { target } => {
                let shown = lossy(target);
                let target_rel = self
                    .entry_path(name, target, "hard link target")?
                    .ok_or_else(|| self.refuse(name, "is a hard link to the archive root"))?;
                if target_rel == rel || self.known.get(&target_rel) != Some(&Made::File) {
                    return Err(self.refuse(
                        name,
                        format!("is a hard link to `{shown}`, which is not a file extracted earlier from this archive"),
                    ));
                }
                self.prepare(name, &rel, false)?;
                self.root
                    .hard_link(&target_rel, &self.root, &rel)
                    .map_err(|e| self.io_error(name, "creating the hard link", &e))?;
                self.known.insert(rel, Made::File);
                self.summary.links += 1;
            }
        }
        Ok(())
    }

    /// Refuses to go on when the step was cancelled, or when the filesystem being
    /// written has less than the reserve free.
    pub(super) fn room(&self, name: &[u8], out: &File) -> CapResult<()> {
        self.work.check(&format!("extracting {}", self.archive))?;
        let free = crate::caps::fs::available(out.as_fd())
            .map_err(|e| self.io_error(name, "measuring free space", &e))?;
        if free < self.reserve.saturating_add(CHECK_EVERY) {
            return Err(CapError::limit(format!(
                "{}: unpacking entry `{}` would leave less than the reserve of {} MiB free ({} MiB free); nothing was extracted into {}; free some space first",
                self.archive,
                lossy(name),
                self.reserve >> 20,
                free >> 20,
                self.dest
            )));
        }
        Ok(())
    }

    /// Sets the time of the link at `rel` itself, through its folder's handle.
    pub(super) fn set_link_time(&self, rel: &Path, mtime: u64) -> io::Result<()> {
        let folder = match rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(parent) => self.root.open_dir(parent)?,
            None => self.root.try_clone()?,
        };
        let link = rel.file_name().unwrap_or_default();
        crate::caps::fs::set_times_nofollow(folder.as_fd(), link, None, mtime_timespec(mtime))
    }

    /// Writes one file, counting the bytes as they arrive against the limits.
    pub(super) fn write_file(
        &mut self,
        name: &[u8],
        rel: &Path,
        mode: u32,
        mtime: u64,
        data: &mut dyn Read,
    ) -> CapResult<()> {
        let mut out = self
            .root
            .open_with(
                rel,
                OpenOptions::new().write(true).create_new(true).mode(0o600),
            )
            .map_err(|e| self.io_error(name, "creating the file", &e))?
            .into_std();
        let mut written: u64 = 0;
        let mut next_check = 0;
        loop {
            if written >= next_check {
                self.room(name, &out)?;
                next_check = written + CHECK_EVERY;
            }
            let n = match data.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_error(self.archive, self.format, &e)),
            };
            written += n as u64;
            if written > self.limits.max_entry {
                return Err(CapError::limit(format!(
                    "{}: entry `{}` unpacks to more than the limit of {} bytes per entry; nothing was extracted into {}",
                    self.archive,
                    lossy(name),
                    self.limits.max_entry,
                    self.dest
                )));
            }
            if self.summary.bytes + n as u64 > self.limits.max_total {
                return Err(CapError::limit(format!(
                    "{}: unpacks to more than the limit of {} bytes in total (reached at entry `{}`); nothing was extracted into {}",
                    self.archive,
                    self.limits.max_total,
                    lossy(name),
                    self.dest
                )));
            }
            self.summary.bytes += n as u64;
            out.write_all(&self.buf[..n])
                .map_err(|e| self.io_error(name, "writing the file", &e))?;
        }
        out.set_permissions(std::fs::Permissions::from_mode(mode & MODE_MASK))
            .map_err(|e| self.io_error(name, "setting the file's mode", &e))?;
        out.set_modified(UNIX_EPOCH + Duration::from_secs(mtime))
            .map_err(|e| self.io_error(name, "setting the file's time", &e))?;
        Ok(())
    }

    pub(super) fn unpack_tar(&mut self, stream: &mut dyn Read) -> CapResult<()> {
        let (archive, format) = (self.archive, self.format);
        tar_entries(stream, archive, format, |entry, name, link| {
            let header = entry.header();
            let kind = header.entry_type();
            let mode = header.mode().unwrap_or(0o644);
            let mtime = header.mtime().unwrap_or(0);
            let target = link.unwrap_or_default();
            match tar_kind(kind) {
                EntryKind::File => self.add(
                    name,
                    Item::File {
                        mode,
                        mtime,
                        data: entry,
                    },
                )?,
                EntryKind::Directory => self.add(name, Item::Dir { mode, mtime })?,
                EntryKind::Symlink => self.add(name, Item::Symlink { target, mtime })?,
                EntryKind::Hardlink => self.add(name, Item::Hardlink { target })?,
                EntryKind::Other => {
                    let what = match kind {
                        tar::EntryType::Char => "a character device",
                        tar::EntryType::Block => "a block device",
                        tar::EntryType::Fifo => "a named pipe (fifo)",
                        _ => "a special file",
                    };
                    return Err(self.refuse(
                        name,
                        format!("is {what}; only files, directories and links are unpacked"),
                    ));
                }
            }
            Ok(true)
        })
    }

    pub(super) fn unpack_zip(&mut self, file: File) -> CapResult<()> {
        let archive = self.archive;
        let mut zip = open_zip(file, archive)?;
        if zip.len() as u64 > self.limits.max_entries {
            return Err(CapError::limit(format!(
                "{archive}: holds {} entries, more than the limit of {}; nothing was extracted into {}",
                zip.len(),
                self.limits.max_entries,
                self.dest
            )));
        }
        for i in 0..zip.len() {
            let mut f = zip
                .by_index(i)
                .map_err(|e| zip_error(archive, &format!("#{i}"), e))?;
            let name = zip_name(f.name_raw());
            let mtime = zip_mtime(&f);
            let mode = f.unix_mode();
            match zip_kind(&name, mode) {
                EntryKind::Directory => self.add(
                    &name,
                    Item::Dir {
                        mode: mode.unwrap_or(0o755),
                        mtime,
                    },
                )?,
                EntryKind::File => {
                    let mode = mode.unwrap_or(0o644);
                    self.add(
                        &name,
                        Item::File {
                            mode,
                            mtime,
                            data: &mut f,
                        },
                    )?;
                }
                EntryKind::Symlink => {
                    let mut target = Vec::new();
                    (&mut f)
                        .take(MAX_LINK + 1)
                        .read_to_end(&mut target)
                        .map_err(|e| read_error(archive, self.format, &e))?;
                    if target.len() as u64 > MAX_LINK {
                        return Err(
                            self.refuse(&name, "is a symbolic link with an overlong target")
                        );
                    }
                    self.add(
                        &name,
                        Item::Symlink {
                            target: &target,
                            mtime,
                        },
                    )?;
                }
                _ => {
                    return Err(self.refuse(&name, "is a special file (device, fifo or socket); only files, directories and links are unpacked"));
                }
            }
        }
        Ok(())
    }

    /// Moves the unpacked tree into `dest` once every entry has passed, then sets
    /// the directories' modes and times. Works through handles: `dest`'s, and of
    /// each folder below it, opened without following links, so a link planted in
    /// `dest` is replaced, never walked through.
    pub(super) fn finish(self, dest: BorrowedFd<'_>, tmp: TempDir) -> CapResult<ExtractSummary> {
        let from = self.root.as_fd();
        let mut rel = PathBuf::new();
        self.check_merge(from, dest, &mut rel)?;
        self.merge(from, dest, &mut rel).map_err(|(at, e)| {
            CapError::io(format!(
                "{}: moving the unpacked files into {} failed at `{}`: {e}; {} may hold part of the archive, extract again",
                self.archive,
                self.dest,
                at.display(),
                self.dest
            ))
        })?;
        drop(tmp);
        let mut dirs = self.dirs;
        // Deepest first, so setting a parent's time is the last change inside it.
        dirs.sort_by_key(|(rel, _, _)| std::cmp::Reverse(rel.components().count()));
        for (rel, mode, mtime) in dirs {
            set_dir(dest, &rel, mode, mtime).map_err(|e| {
                CapError::io(format!(
                    "{}: setting the mode and time of `{}` in {}: {e}",
                    self.archive,
                    rel.display(),
                    self.dest
                ))
            })?;
        }
        Ok(self.summary)
    }

    /// Checks, before anything moves, that the unpacked tree fits over `dest`: a
    /// file may replace a file or a link, a directory merges into a directory, but
    /// nothing replaces an existing directory that is not a directory in the archive.
    pub(super) fn check_merge(
        &self,
        from: BorrowedFd<'_>,
        to: BorrowedFd<'_>,
        rel: &mut PathBuf,
    ) -> CapResult<()> {
        let shown = |rel: &Path, e: io::Error| {
            CapError::from_io(format!("{}/{}", self.dest, rel.display()), &e)
        };
        for name in crate::beneath::names(from).map_err(|e| shown(rel, e))? {
            rel.push(&name);
            let is_dir = kind(from, &name).map_err(|e| shown(rel, e))? == Some(true);
            match kind(to, &name).map_err(|e| shown(rel, e))? {
                Some(true) if is_dir => {
                    let (f, t) = (
                        crate::beneath::open_dir_nofollow(from, &name)
                            .map_err(|e| shown(rel, e))?,
                        crate::beneath::open_dir_nofollow(to, &name).map_err(|e| shown(rel, e))?,
                    );
                    self.check_merge(f.as_fd(), t.as_fd(), rel)?;
                }
                Some(true) => {
                    return Err(self.refuse(
                        rel.as_os_str().as_bytes(),
                        format!(
                            "is not a directory, but {} already holds a directory there",
                            self.dest
                        ),
                    ));
                }
                _ => {}
            }
            rel.pop();
        }
        Ok(())
    }

    pub(super) fn merge(
        &self,
        from: BorrowedFd<'_>,
        to: BorrowedFd<'_>,
        rel: &mut PathBuf,
    ) -> Result<(), (PathBuf, io::Error)> {
        for name in crate::beneath::names(from).map_err(at(rel))? {
            rel.push(&name);
            let is_dir = kind(from, &name).map_err(at(rel))? == Some(true);
            match kind(to, &name).map_err(at(rel))? {
                Some(true) if is_dir => {
                    let f = crate::beneath::open_dir_nofollow(from, &name).map_err(at(rel))?;
                    let t = crate::beneath::open_dir_nofollow(to, &name).map_err(at(rel))?;
                    self.merge(f.as_fd(), t.as_fd(), rel)?;
                }
                Some(false) if is_dir => {
                    // A file or link where the archive has a directory: the
                    // directory replaces it, as `tar` does.
                    rustix::fs::unlinkat(to, &name, rustix::fs::AtFlags::empty())
                        .map_err(|e| at(rel)(e.into()))?;
                    rustix::fs::renameat(from, &name, to, &name).map_err(|e| at(rel)(e.into()))?;
                }
                // A rename replaces a file or a link at the destination itself;
                // it never follows one.
                _ => rustix::fs::renameat(from, &name, to, &name).map_err(|e| at(rel)(e.into()))?,
            }
            rel.pop();
        }
        Ok(())
    }
}

/// An I/O error at `rel`, for [`Unpacker::merge`].
pub(super) fn at(rel: &Path) -> impl FnOnce(io::Error) -> (PathBuf, io::Error) + use<> {
    let rel = rel.to_path_buf();
    move |e| (rel, e)
}

/// Whether `name` in `dir` is a directory (`Some(true)`), something else
/// (`Some(false)`) or absent, without following a link.
pub(super) fn kind(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<bool>> {
    Ok(crate::beneath::kind_at(dir, name)?.map(|st| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory
    }))
}

/// Sets the mode and modification time of the directory `rel` below `dest`,
/// reached through real directories only.
pub(super) fn set_dir(dest: BorrowedFd<'_>, rel: &Path, mode: u32, mtime: u64) -> io::Result<()> {
    let mut cur: Option<std::os::fd::OwnedFd> = None;
    for part in rel.components() {
        let parent = cur.as_ref().map_or(dest, |c| c.as_fd());
        cur = Some(crate::beneath::open_dir_nofollow(parent, part.as_os_str())?);
    }
    let dir = cur.as_ref().map_or(dest, |c| c.as_fd());
    rustix::fs::fchmod(dir, rustix::fs::Mode::from_raw_mode(mode))?;
    let (sec, nsec) = mtime_timespec(mtime);
    let times = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: sec,
            tv_nsec: nsec as _,
        },
    };
    Ok(rustix::fs::futimens(dir, &times)?)
}

pub(super) fn mtime_timespec(mtime: u64) -> (i64, i64) {
    (i64::try_from(mtime).unwrap_or(i64::MAX), 0)
}
