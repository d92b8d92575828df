//! `archive`: listing and unpacking tar, tgz, tar.bz2 and zip packages.
//!
//! Formats are told apart by their first bytes, never by the file name: gzip
//! (`1f 8b`) and bzip2 (`BZh`) hold a tar stream, `PK\x03\x04` is a zip, and a plain
//! tar carries `ustar` at offset 257.
//!
//! Extraction is all or nothing. Entries are unpacked in one pass into a fresh
//! directory `dest/.posup-extract-<unique>`; only when every entry has passed its
//! checks is the result moved into `dest`, merging into existing directories and
//! replacing existing files (OSCAR's partial updates unpack over an installed tree).
//! Any refusal or error removes the temporary directory, so `dest` holds exactly
//! what it held before. Because nothing is ever written outside that fresh
//! directory until the end, an entry cannot reach outside `dest` through a link
//! that already existed there.
//!
//! Sizes are counted from the bytes actually written, never from headers: a gzip
//! bomb is stopped while it is being inflated. Compressed tar streams are inflated
//! on a second thread, one chunk ahead of the thread writing files, the way
//! `tar -xzf` runs `gzip -d` beside itself.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self as stdfs, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use posup_world::latest::archive::{self, Entry, EntryKind, ExtractSummary};
use posup_world::latest::types::Error as WitError;
use wasmtime::component::{HasSelf, Linker};

use super::{CapError, CapResult};
use crate::grants::Grants;

/// Size limits of unpacking.
#[derive(Debug, Clone)]
pub struct ArchiveLimits {
    /// Largest single entry, in bytes.
    pub max_entry: u64,
    /// Largest total of all entries, in bytes.
    pub max_total: u64,
    /// Most entries.
    pub max_entries: u64,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        Self {
            max_entry: 4 << 30,
            max_total: 16 << 30,
            max_entries: 1_000_000,
        }
    }
}

/// Per-step state of `archive`.
pub struct ArchiveState {
    grants: Arc<Grants>,
    limits: ArchiveLimits,
}

impl ArchiveState {
    pub fn new(grants: Arc<Grants>, limits: ArchiveLimits) -> Self {
        Self { grants, limits }
    }
}

impl archive::Host for ArchiveState {
    async fn entries(&mut self, archive: String) -> Result<Vec<Entry>, WitError> {
        let (grants, limits) = (self.grants.clone(), self.limits.clone());
        let what = format!("listing {archive}");
        super::blocking(&what, move || list_entries(&grants, &limits, &archive)).await
    }

    async fn read_entry(
        &mut self,
        archive: String,
        entry: String,
        max_bytes: u64,
    ) -> Result<Vec<u8>, WitError> {
        let (grants, limits) = (self.grants.clone(), self.limits.clone());
        let what = format!("reading {entry} from {archive}");
        super::blocking(&what, move || {
            read_entry(&grants, &limits, &archive, &entry, max_bytes)
        })
        .await
    }

    async fn extract(&mut self, archive: String, dest: String) -> Result<ExtractSummary, WitError> {
        let (grants, limits) = (self.grants.clone(), self.limits.clone());
        let what = format!("extracting {archive} into {dest}");
        super::blocking(&what, move || extract(&grants, &limits, &archive, &dest)).await
    }
}

pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut ArchiveState,
) -> wasmtime::Result<()> {
    archive::add_to_linker::<T, HasSelf<ArchiveState>>(linker, get)
}

/// Size of the read buffers and of the chunks handed from the inflating thread to
/// the writing one. Large buffers keep the number of system calls per megabyte low.
const BUF: usize = 1 << 20;

/// Chunks the inflating thread may run ahead of the writer; this bounds the memory
/// a bomb can make the host hold to a few megabytes.
const AHEAD: usize = 4;

/// Longest symbolic link target read out of a zip entry.
const MAX_LINK: u64 = 4096;

const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;

/// Mode bits kept on unpacked files: setuid, setgid and sticky are dropped so that
/// an archive cannot plant a privileged program.
const MODE_MASK: u32 = 0o777;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Tar,
    TarGz,
    TarBz2,
    Zip,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Tar => "tar",
            Format::TarGz => "gzip-compressed tar",
            Format::TarBz2 => "bzip2-compressed tar",
            Format::Zip => "zip",
        }
    }
}

/// Opens the archive at guest path `archive` for reading and tells its format.
fn open(grants: &Grants, archive: &str) -> CapResult<(File, Format)> {
    let host = grants.resolve(archive, false)?;
    let mut file = File::open(&host).map_err(|e| CapError::from_io(archive, &e))?;
    let meta = file
        .metadata()
        .map_err(|e| CapError::from_io(archive, &e))?;
    if !meta.is_file() {
        return Err(CapError::invalid(format!(
            "{archive}: not a file; give the path of an archive"
        )));
    }
    let mut head = [0u8; 512];
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(CapError::from_io(archive, &e)),
        }
    }
    file.seek(SeekFrom::Start(0))
        .map_err(|e| CapError::from_io(archive, &e))?;
    let head = &head[..n];
    let format = if head.starts_with(&[0x1f, 0x8b]) {
        Format::TarGz
    } else if head.starts_with(b"BZh") {
        Format::TarBz2
    } else if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        // `PK\x05\x06` is the end record an empty zip consists of.
        Format::Zip
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        Format::Tar
    } else {
        return Err(CapError::invalid(format!(
            "{archive}: unknown archive format; expected tar, tar.gz (tgz), tar.bz2 or zip"
        )));
    };
    Ok((file, format))
}

/// Runs `f` over the uncompressed tar stream of `file`.
fn with_tar_stream<T>(
    file: File,
    format: Format,
    f: impl FnOnce(&mut dyn Read) -> CapResult<T>,
) -> CapResult<T> {
    let mut input = BufReader::with_capacity(BUF, file);
    match format {
        Format::Tar => f(&mut input),
        Format::TarGz => pipelined(flate2::read::MultiGzDecoder::new(input), f),
        Format::TarBz2 => pipelined(bzip2::read::MultiBzDecoder::new(input), f),
        Format::Zip => unreachable!("zip archives are not read as a tar stream"),
    }
}

/// What the inflating thread hands to the reader.
enum Chunk {
    Data(Vec<u8>),
    End,
    Failed(io::Error),
}

/// Inflates `decoder` on a second thread while `f` consumes the output. When `f`
/// stops early (a refusal, a limit) the channel closes and the thread ends at its
/// next chunk, so a bomb is never inflated further than [`AHEAD`] chunks.
fn pipelined<D: Read + Send, T>(
    mut decoder: D,
    f: impl FnOnce(&mut dyn Read) -> CapResult<T>,
) -> CapResult<T> {
    std::thread::scope(|scope| {
        let (tx, rx) = sync_channel::<Chunk>(AHEAD);
        let (back_tx, back_rx) = sync_channel::<Vec<u8>>(AHEAD + 2);
        scope.spawn(move || {
            loop {
                let mut buf = back_rx.try_recv().unwrap_or_default();
                buf.resize(BUF, 0);
                let mut filled = 0;
                while filled < BUF {
                    match decoder.read(&mut buf[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            let _ = tx.send(Chunk::Failed(e));
                            return;
                        }
                    }
                }
                buf.truncate(filled);
                let msg = if filled == 0 {
                    Chunk::End
                } else {
                    Chunk::Data(buf)
                };
                let end = matches!(msg, Chunk::End);
                if tx.send(msg).is_err() || end {
                    return;
                }
            }
        });
        let mut pipe = Pipe {
            rx,
            back: back_tx,
            cur: Vec::new(),
            pos: 0,
            done: false,
        };
        // `pipe` (and with it the receiver) is dropped when this closure returns,
        // before the scope joins the inflating thread, so that thread never waits
        // on a reader that has gone.
        f(&mut pipe)
    })
}

/// The reading end of [`pipelined`].
struct Pipe {
    rx: Receiver<Chunk>,
    back: SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    done: bool,
}

impl Read for Pipe {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.cur.len() {
                let n = out.len().min(self.cur.len() - self.pos);
                out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Chunk::Data(next)) => {
                    let used = std::mem::replace(&mut self.cur, next);
                    // Handing the buffer back saves an allocation per chunk; when
                    // the return channel is full the buffer is simply dropped.
                    let _ = self.back.try_send(used);
                    self.pos = 0;
                }
                Ok(Chunk::End) => self.done = true,
                Ok(Chunk::Failed(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => {
                    self.done = true;
                    return Err(io::Error::other(
                        "the decompression thread stopped unexpectedly",
                    ));
                }
            }
        }
    }
}

/// Maps an error reading the archive itself: damaged data is `invalid`, anything
/// else an I/O error.
fn read_error(archive: &str, format: Format, e: &io::Error) -> CapError {
    match e.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput | io::ErrorKind::UnexpectedEof => {
            CapError::invalid(format!("{archive}: damaged {} archive: {e}", format.name()))
        }
        _ => CapError::io(format!("{archive}: reading the archive failed: {e}")),
    }
}

fn open_zip(file: File, archive: &str) -> CapResult<zip::ZipArchive<BufReader<File>>> {
    zip::ZipArchive::new(BufReader::with_capacity(BUF, file))
        .map_err(|e| CapError::invalid(format!("{archive}: damaged zip archive: {e}")))
}

fn zip_error(archive: &str, name: &str, e: zip::result::ZipError) -> CapError {
    CapError::invalid(format!("{archive}: entry `{name}` cannot be read: {e}"))
}

/// The kind of a zip entry, from its name and its Unix mode when it has one.
fn zip_kind(name: &[u8], mode: Option<u32>) -> EntryKind {
    if name.ends_with(b"/") {
        return EntryKind::Directory;
    }
    match mode.map(|m| m & S_IFMT) {
        None | Some(0) | Some(S_IFREG) => EntryKind::File,
        Some(S_IFDIR) => EntryKind::Directory,
        Some(S_IFLNK) => EntryKind::Symlink,
        Some(_) => EntryKind::Other,
    }
}

/// A zip entry's name with the backslashes some Windows tools write turned into
/// the `/` the format prescribes, so `..\x` is checked like `../x`.
fn zip_name(raw: &[u8]) -> Vec<u8> {
    raw.iter()
        .map(|&b| if b == b'\\' { b'/' } else { b })
        .collect()
}

/// A zip entry's modification time: the Unix timestamp extra field when present,
/// otherwise its MS-DOS date and time, read as UTC.
fn zip_mtime<R: Read>(file: &zip::read::ZipFile<'_, R>) -> u64 {
    for field in file.extra_data_fields() {
        if let zip::ExtraField::ExtendedTimestamp(ts) = field
            && let Some(t) = ts.mod_time()
        {
            return u64::from(t);
        }
    }
    let Some(dt) = file.last_modified() else {
        return 0;
    };
    let days = days_from_civil(
        i64::from(dt.year()),
        i64::from(dt.month()),
        i64::from(dt.day()),
    );
    let secs = days * 86_400
        + i64::from(dt.hour()) * 3600
        + i64::from(dt.minute()) * 60
        + i64::from(dt.second());
    u64::try_from(secs).unwrap_or(0)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn tar_kind(t: tar::EntryType) -> EntryKind {
    use tar::EntryType as T;
    match t {
        T::Regular | T::Continuous | T::GNUSparse => EntryKind::File,
        T::Directory => EntryKind::Directory,
        T::Symlink => EntryKind::Symlink,
        T::Link => EntryKind::Hardlink,
        _ => EntryKind::Other,
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn limit_entries(archive: &str, limits: &ArchiveLimits, count: u64) -> CapResult<()> {
    if count > limits.max_entries {
        return Err(CapError::limit(format!(
            "{archive}: holds more than the limit of {} entries",
            limits.max_entries
        )));
    }
    Ok(())
}

/// Lists the entries of the archive at guest path `archive`. Blocking.
pub fn list_entries(
    grants: &Grants,
    limits: &ArchiveLimits,
    archive: &str,
) -> CapResult<Vec<Entry>> {
    let (file, format) = open(grants, archive)?;
    if format == Format::Zip {
        let mut zip = open_zip(file, archive)?;
        limit_entries(archive, limits, zip.len() as u64)?;
        let mut out = Vec::with_capacity(zip.len());
        for i in 0..zip.len() {
            let mut f = zip
                .by_index(i)
                .map_err(|e| zip_error(archive, &format!("#{i}"), e))?;
            let name = zip_name(f.name_raw());
            let kind = zip_kind(&name, f.unix_mode());
            let mut link = String::new();
            if kind == EntryKind::Symlink {
                let mut target = Vec::new();
                (&mut f)
                    .take(MAX_LINK)
                    .read_to_end(&mut target)
                    .map_err(|e| read_error(archive, format, &e))?;
                link = lossy(&target);
            }
            out.push(Entry {
                path: lossy(&name),
                kind,
                size: f.size(),
                mode: f.unix_mode().unwrap_or(0) & 0o7777,
                link,
            });
        }
        return Ok(out);
    }
    with_tar_stream(file, format, |stream| {
        let mut tar = tar::Archive::new(stream);
        let mut out = Vec::new();
        let err = |e: io::Error| read_error(archive, format, &e);
        for entry in tar.entries().map_err(err)? {
            let entry = entry.map_err(err)?;
            let header = entry.header();
            if header.entry_type() == tar::EntryType::XGlobalHeader {
                continue;
            }
            limit_entries(archive, limits, out.len() as u64 + 1)?;
            out.push(Entry {
                path: lossy(&entry.path_bytes()),
                kind: tar_kind(header.entry_type()),
                size: entry.size(),
                mode: header.mode().unwrap_or(0) & 0o7777,
                link: entry
                    .link_name_bytes()
                    .map(|l| lossy(&l))
                    .unwrap_or_default(),
            });
        }
        Ok(out)
    })
}

/// An entry name compared loosely: `./bin/x`, `bin//x` and `bin/x/` all name `bin/x`.
fn loose(name: &[u8]) -> Vec<&[u8]> {
    name.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect()
}

/// Reads one file entry of the archive into memory: the first entry by that name.
/// At most `max_bytes`, and never more than the host's per-entry limit. Blocking.
pub fn read_entry(
    grants: &Grants,
    limits: &ArchiveLimits,
    archive: &str,
    entry: &str,
    max_bytes: u64,
) -> CapResult<Vec<u8>> {
    let cap = max_bytes.min(limits.max_entry);
    let wanted = loose(entry.as_bytes());
    let too_big = |size: &dyn std::fmt::Display| {
        CapError::limit(format!(
            "{archive}: entry `{entry}` holds {size} bytes, more than the {cap} bytes allowed{}",
            if cap < max_bytes { " by the host" } else { "" }
        ))
    };
    let not_a_file = |kind: EntryKind, link: Option<String>| {
        let what = match kind {
            EntryKind::Directory => "a directory".to_string(),
            EntryKind::Symlink => format!("a symbolic link to `{}`", link.unwrap_or_default()),
            EntryKind::Hardlink => format!("a hard link to `{}`", link.unwrap_or_default()),
            _ => "a special file".to_string(),
        };
        CapError::invalid(format!(
            "{archive}: entry `{entry}` is {what}; read-entry reads files only"
        ))
    };
    let (file, format) = open(grants, archive)?;
    let read_capped = |r: &mut dyn Read| -> CapResult<Vec<u8>> {
        let mut data = Vec::new();
        r.take(cap.saturating_add(1))
            .read_to_end(&mut data)
            .map_err(|e| read_error(archive, format, &e))?;
        if data.len() as u64 > cap {
            return Err(too_big(&format!("more than {cap}")));
        }
        Ok(data)
    };
    if format == Format::Zip {
        let mut zip = open_zip(file, archive)?;
        for i in 0..zip.len() {
            let mut f = zip
                .by_index(i)
                .map_err(|e| zip_error(archive, &format!("#{i}"), e))?;
            let name = zip_name(f.name_raw());
            if loose(&name) != wanted {
                continue;
            }
            let kind = zip_kind(&name, f.unix_mode());
            if kind != EntryKind::File {
                return Err(not_a_file(kind, None));
            }
            if f.size() > cap {
                return Err(too_big(&f.size()));
            }
            return read_capped(&mut f);
        }
    } else {
        let found = with_tar_stream(file, format, |stream| {
            let mut tar = tar::Archive::new(stream);
            let err = |e: io::Error| read_error(archive, format, &e);
            for e in tar.entries().map_err(err)? {
                let mut e = e.map_err(err)?;
                if loose(&e.path_bytes()) != wanted {
                    continue;
                }
                let kind = tar_kind(e.header().entry_type());
                if kind != EntryKind::File {
                    return Err(not_a_file(kind, e.link_name_bytes().map(|l| lossy(&l))));
                }
                if e.size() > cap {
                    return Err(too_big(&e.size()));
                }
                return read_capped(&mut e).map(Some);
            }
            Ok(None)
        })?;
        if let Some(data) = found {
            return Ok(data);
        }
    }
    Err(CapError::not_found(format!(
        "{archive}: has no entry `{entry}`"
    )))
}

/// Unpacks the archive at guest path `archive` into the existing guest directory
/// `dest`, all or nothing (see the module documentation). Blocking.
pub fn extract(
    grants: &Grants,
    limits: &ArchiveLimits,
    archive: &str,
    dest: &str,
) -> CapResult<ExtractSummary> {
    let dest_host = grants.resolve(dest, true)?;
    let meta = stdfs::metadata(&dest_host).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => CapError::not_found(format!(
            "{dest}: does not exist; create the directory first"
        )),
        _ => CapError::from_io(dest, &e),
    })?;
    if !meta.is_dir() {
        return Err(CapError::invalid(format!("{dest}: not a directory")));
    }
    // Work in the real directory, so the temporary one is on the same filesystem
    // as the final places and the moves at the end are renames.
    let dest_host = dest_host
        .canonicalize()
        .map_err(|e| CapError::from_io(dest, &e))?;
    let (file, format) = open(grants, archive)?;
    let tmp = TempDir::create(&dest_host, dest)?;
    let mut unpacker = Unpacker {
        root: tmp.path.clone(),
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
    unpacker.finish(&dest_host, tmp)
}

/// The temporary directory an extraction unpacks into; removed when dropped, so
/// every early return and even a panic leave `dest` as it was.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn create(parent: &Path, guest: &str) -> CapResult<TempDir> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        for attempt in 0u32..100 {
            let path = parent.join(format!(
                ".posup-extract-{}-{nanos:x}-{attempt}",
                std::process::id()
            ));
            match stdfs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(TempDir { path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(CapError::from_io(
                        format!("{guest}: creating the temporary directory to unpack into"),
                        &e,
                    ));
                }
            }
        }
        Err(CapError::io(format!(
            "{guest}: no free name for a temporary directory to unpack into; remove stale .posup-extract-* directories"
        )))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = stdfs::remove_dir_all(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove the temporary extraction directory");
        }
    }
}

/// What an earlier entry of the same archive left at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Made {
    Dir,
    File,
    Symlink,
}

/// Unpacks entries one by one into `root`, checking each.
struct Unpacker<'a> {
    root: PathBuf,
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
enum Item<'b> {
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
    fn refuse(&self, name: &[u8], what: impl std::fmt::Display) -> CapError {
        CapError::invalid(format!(
            "{}: entry `{}` {what}; nothing was extracted into {}",
            self.archive,
            lossy(name),
            self.dest
        ))
    }

    fn io_error(&self, name: &[u8], what: &str, e: &io::Error) -> CapError {
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
    fn entry_path(&self, name: &[u8], path: &[u8], what: &str) -> CapResult<Option<PathBuf>> {
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
    fn check_link_target(&self, name: &[u8], rel: &Path, target: &[u8]) -> CapResult<()> {
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
    fn prepare(&mut self, name: &[u8], rel: &Path, is_dir: bool) -> CapResult<bool> {
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
                    stdfs::create_dir(self.root.join(parent))
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
                stdfs::remove_file(self.root.join(rel)).map_err(|e| {
                    self.io_error(name, "replacing an earlier entry of the same name", &e)
                })?;
                self.known.remove(rel);
                Ok(false)
            }
        }
    }

    fn add(&mut self, name: &[u8], item: Item<'_>) -> CapResult<()> {
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
        let host = self.root.join(&rel);
        match item {
            Item::Dir { mode, mtime } => {
                if !self.prepare(name, &rel, true)? {
                    stdfs::DirBuilder::new()
                        .mode(0o700)
                        .create(&host)
                        .map_err(|e| self.io_error(name, "creating the directory", &e))?;
                    self.known.insert(rel.clone(), Made::Dir);
                }
                self.dirs.push((rel, mode & MODE_MASK, mtime));
                self.summary.directories += 1;
            }
            Item::File { mode, mtime, data } => {
                self.prepare(name, &rel, false)?;
                self.write_file(name, &host, mode, mtime, data)?;
                self.known.insert(rel, Made::File);
                self.summary.files += 1;
            }
            Item::Symlink { target, mtime } => {
                self.check_link_target(name, &rel, target)?;
                self.prepare(name, &rel, false)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(target), &host)
                    .map_err(|e| self.io_error(name, "creating the symbolic link", &e))?;
                super::fs::set_times_nofollow(&host, None, mtime_timespec(mtime))
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
                stdfs::hard_link(self.root.join(&target_rel), &host)
                    .map_err(|e| self.io_error(name, "creating the hard link", &e))?;
                self.known.insert(rel, Made::File);
                self.summary.links += 1;
            }
        }
        Ok(())
    }

    /// Writes one file, counting the bytes as they arrive against the limits.
    fn write_file(
        &mut self,
        name: &[u8],
        host: &Path,
        mode: u32,
        mtime: u64,
        data: &mut dyn Read,
    ) -> CapResult<()> {
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(host)
            .map_err(|e| self.io_error(name, "creating the file", &e))?;
        let mut written: u64 = 0;
        loop {
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
        out.set_permissions(stdfs::Permissions::from_mode(mode & MODE_MASK))
            .map_err(|e| self.io_error(name, "setting the file's mode", &e))?;
        out.set_modified(UNIX_EPOCH + Duration::from_secs(mtime))
            .map_err(|e| self.io_error(name, "setting the file's time", &e))?;
        Ok(())
    }

    fn unpack_tar(&mut self, stream: &mut dyn Read) -> CapResult<()> {
        let (archive, format) = (self.archive, self.format);
        let err = |e: io::Error| read_error(archive, format, &e);
        let mut tar = tar::Archive::new(stream);
        for entry in tar.entries().map_err(err)? {
            let mut entry = entry.map_err(err)?;
            let header = entry.header();
            let kind = header.entry_type();
            let mode = header.mode().unwrap_or(0o644);
            let mtime = header.mtime().unwrap_or(0);
            let name = entry.path_bytes().into_owned();
            let link = entry.link_name_bytes().map(|l| l.into_owned());
            match tar_kind(kind) {
                EntryKind::File => self.add(
                    &name,
                    Item::File {
                        mode,
                        mtime,
                        data: &mut entry,
                    },
                )?,
                EntryKind::Directory => self.add(&name, Item::Dir { mode, mtime })?,
                EntryKind::Symlink => {
                    let target = link.unwrap_or_default();
                    self.add(
                        &name,
                        Item::Symlink {
                            target: &target,
                            mtime,
                        },
                    )?;
                }
                EntryKind::Hardlink => {
                    let target = link.unwrap_or_default();
                    self.add(&name, Item::Hardlink { target: &target })?;
                }
                EntryKind::Other if kind == tar::EntryType::XGlobalHeader => {}
                EntryKind::Other => {
                    let what = match kind {
                        tar::EntryType::Char => "a character device",
                        tar::EntryType::Block => "a block device",
                        tar::EntryType::Fifo => "a named pipe (fifo)",
                        _ => "a special file",
                    };
                    return Err(self.refuse(
                        &name,
                        format!("is {what}; only files, directories and links are unpacked"),
                    ));
                }
            }
        }
        Ok(())
    }

    fn unpack_zip(&mut self, file: File) -> CapResult<()> {
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
    /// the directories' modes and times.
    fn finish(self, dest: &Path, tmp: TempDir) -> CapResult<ExtractSummary> {
        let mut rel = PathBuf::new();
        self.check_merge(&tmp.path, dest, &mut rel)?;
        self.merge(&tmp.path, dest, &mut rel).map_err(|(at, e)| {
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
            let host = dest.join(&rel);
            stdfs::set_permissions(&host, stdfs::Permissions::from_mode(mode))
                .and_then(|()| super::fs::set_times_nofollow(&host, None, mtime_timespec(mtime)))
                .map_err(|e| {
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
    fn check_merge(&self, from: &Path, to: &Path, rel: &mut PathBuf) -> CapResult<()> {
        let read = stdfs::read_dir(from).map_err(|e| CapError::from_io(from.display(), &e))?;
        for child in read {
            let child = child.map_err(|e| CapError::from_io(from.display(), &e))?;
            let name = child.file_name();
            rel.push(&name);
            let there = match stdfs::symlink_metadata(to.join(&name)) {
                Ok(m) => Some(m),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => {
                    return Err(CapError::from_io(
                        format!("{}/{}", self.dest, rel.display()),
                        &e,
                    ));
                }
            };
            let is_dir = child
                .file_type()
                .map_err(|e| CapError::from_io(from.display(), &e))?
                .is_dir();
            match there {
                Some(m) if m.is_dir() && is_dir => {
                    self.check_merge(&from.join(&name), &to.join(&name), rel)?
                }
                Some(m) if m.is_dir() => {
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

    fn merge(&self, from: &Path, to: &Path, rel: &mut PathBuf) -> Result<(), (PathBuf, io::Error)> {
        let read = stdfs::read_dir(from).map_err(|e| (rel.clone(), e))?;
        for child in read {
            let child = child.map_err(|e| (rel.clone(), e))?;
            let name = child.file_name();
            rel.push(&name);
            let (src, dst) = (from.join(&name), to.join(&name));
            let is_dir = child.file_type().map_err(|e| (rel.clone(), e))?.is_dir();
            match stdfs::symlink_metadata(&dst) {
                Ok(m) if m.is_dir() && is_dir => self.merge(&src, &dst, rel)?,
                Ok(m) if is_dir && !m.is_dir() => {
                    // A file or link where the archive has a directory: the
                    // directory replaces it, as `tar` does.
                    stdfs::remove_file(&dst).map_err(|e| (rel.clone(), e))?;
                    stdfs::rename(&src, &dst).map_err(|e| (rel.clone(), e))?;
                }
                Ok(_) | Err(_) => stdfs::rename(&src, &dst).map_err(|e| (rel.clone(), e))?,
            }
            rel.pop();
        }
        Ok(())
    }
}

fn mtime_timespec(mtime: u64) -> (i64, i64) {
    (i64::try_from(mtime).unwrap_or(i64::MAX), 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use posup_world::latest::types::{Dir, ErrorKind};
    use std::collections::BTreeMap;
    use std::os::unix::fs::MetadataExt;

    use crate::grants::DirGrant;

    /// A granted `/staging` (archives) and `/product` (destination) in a temp dir.
    struct Fixture {
        _tmp: tempfile::TempDir,
        root: PathBuf,
        grants: Grants,
    }

    impl Fixture {
        fn new() -> Fixture {
            let tmp = tempfile::tempdir().unwrap();
            let root = tmp.path().canonicalize().unwrap();
            for d in ["staging", "product", "outside"] {
                stdfs::create_dir(root.join(d)).unwrap();
            }
            let grants = Grants {
                dirs: vec![
                    DirGrant {
                        dir: Dir::Staging,
                        host: root.join("staging"),
                        write: true,
                    },
                    DirGrant {
                        dir: Dir::Product,
                        host: root.join("product"),
                        write: true,
                    },
                ],
                ..Grants::default()
            };
            Fixture {
                _tmp: tmp,
                root,
                grants,
            }
        }

        fn put(&self, name: &str, bytes: &[u8]) {
            stdfs::write(self.root.join("staging").join(name), bytes).unwrap();
        }

        fn product(&self) -> PathBuf {
            self.root.join("product")
        }
    }

    fn limits() -> ArchiveLimits {
        ArchiveLimits::default()
    }

    /// Everything under `root` (not `root` itself): kind, mode, mtime, contents or
    /// link target. Two equal snapshots mean nothing was added, removed or changed.
    fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
        fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
            for e in stdfs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                let m = stdfs::symlink_metadata(&p).unwrap();
                let rel = p.strip_prefix(root).unwrap().to_path_buf();
                let what = if m.file_type().is_symlink() {
                    format!("link {}", stdfs::read_link(&p).unwrap().display())
                } else if m.is_dir() {
                    walk(root, &p, out);
                    "dir".to_string()
                } else {
                    format!("file {:?}", stdfs::read(&p).unwrap())
                };
                out.insert(
                    rel,
                    format!("{what} mode {:o} mtime {}", m.mode(), m.mtime()),
                );
            }
        }
        let mut out = BTreeMap::new();
        walk(root, root, &mut out);
        out
    }

    /// A tar header with a raw name, bypassing the `tar` crate's own path checks.
    fn raw_header(name: &[u8], kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        h
    }

    fn tar_of(entries: &[(tar::Header, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (h, data) in entries {
            b.append(h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn file(name: &str, data: &[u8], mode: u32, mtime: u64) -> (tar::Header, Vec<u8>) {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(mtime);
        h.set_cksum();
        (h, data.to_vec())
    }

    fn link(name: &str, target: &str, kind: tar::EntryType) -> (tar::Header, Vec<u8>) {
        let mut h = raw_header(name.as_bytes(), kind, 0);
        h.set_link_name_literal(target).unwrap();
        h.set_cksum();
        (h, Vec::new())
    }

    fn dir(name: &str, mode: u32, mtime: u64) -> (tar::Header, Vec<u8>) {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        h.set_mode(mode);
        h.set_mtime(mtime);
        h.set_cksum();
        (h, Vec::new())
    }

    fn build(entries: Vec<(tar::Header, Vec<u8>)>) -> Vec<u8> {
        let refs: Vec<(tar::Header, &[u8])> = entries
            .iter()
            .map(|(h, d)| (h.clone(), d.as_slice()))
            .collect();
        tar_of(&refs)
    }

    /// Extracts a hostile archive over a product tree that already holds files and
    /// checks that it is refused naming `entry`, and that neither the product nor
    /// the directory beside it changed.
    fn assert_refused(fx: &Fixture, bytes: &[u8], entry: &str, kind: ErrorKind) -> String {
        stdfs::create_dir_all(fx.product().join("bin")).unwrap();
        stdfs::write(fx.product().join("bin/oscar.def"), b"keep").unwrap();
        let before = snapshot(&fx.product());
        let outside = snapshot(&fx.root.join("outside"));
        fx.put("hostile.tgz", &gz(bytes));
        let err = extract(&fx.grants, &limits(), "/staging/hostile.tgz", "/product").unwrap_err();
        assert_eq!(err.kind, kind, "{}", err.message);
        assert!(
            err.message.contains(&format!("`{entry}`")),
            "{}",
            err.message
        );
        assert!(
            err.message.contains("/staging/hostile.tgz"),
            "{}",
            err.message
        );
        assert_eq!(snapshot(&fx.product()), before, "the product tree changed");
        assert_eq!(
            snapshot(&fx.root.join("outside")),
            outside,
            "something was written outside"
        );
        err.message
    }

    #[test]
    fn refuses_parent_components() {
        let fx = Fixture::new();
        let ok = file("bin/ok", b"fine", 0o644, 1);
        let bad = raw_header(b"bin/../../outside/evil", tar::EntryType::Regular, 4);
        let msg = assert_refused(
            &fx,
            &tar_of(&[(ok.0, &ok.1), (bad, b"evil")]),
            "bin/../../outside/evil",
            ErrorKind::Invalid,
        );
        assert!(msg.contains(".."), "{msg}");
    }

    #[test]
    fn refuses_absolute_paths() {
        let fx = Fixture::new();
        let evil = fx.root.join("outside/evil");
        let bad = raw_header(evil.as_os_str().as_bytes(), tar::EntryType::Regular, 4);
        let msg = assert_refused(
            &fx,
            &tar_of(&[(bad, b"evil")]),
            &evil.display().to_string(),
            ErrorKind::Invalid,
        );
        assert!(msg.contains("absolute"), "{msg}");
    }

    #[test]
    fn refuses_empty_names() {
        let fx = Fixture::new();
        let bad = raw_header(b"", tar::EntryType::Regular, 4);
        let msg = assert_refused(&fx, &tar_of(&[(bad, b"evil")]), "", ErrorKind::Invalid);
        assert!(msg.contains("empty"), "{msg}");
    }

    #[test]
    fn refuses_symlinks_leaving_dest() {
        let fx = Fixture::new();
        let msg = assert_refused(
            &fx,
            &build(vec![link(
                "bin/up",
                "../../outside",
                tar::EntryType::Symlink,
            )]),
            "bin/up",
            ErrorKind::Invalid,
        );
        assert!(msg.contains("outside the destination"), "{msg}");
        let msg = assert_refused(
            &fx,
            &build(vec![link("etc", "/etc", tar::EntryType::Symlink)]),
            "etc",
            ErrorKind::Invalid,
        );
        assert!(msg.contains("absolute"), "{msg}");
        // `sub/up` points at dest itself (allowed), but climbing again after it
        // would leave dest physically even though the text stays inside.
        let msg = assert_refused(
            &fx,
            &build(vec![
                link("sub/up", "..", tar::EntryType::Symlink),
                link("sub/esc", "up/../..", tar::EntryType::Symlink),
            ]),
            "sub/esc",
            ErrorKind::Invalid,
        );
        assert!(msg.contains("after a name"), "{msg}");
    }

    #[test]
    fn refuses_writing_through_an_earlier_symlink() {
        let fx = Fixture::new();
        // `lib` points inside dest, which is allowed; writing through it is not.
        let (h, d) = file("lib/evil", b"x", 0o644, 1);
        let msg = assert_refused(
            &fx,
            &build(vec![
                dir("real", 0o755, 1),
                link("lib", "real", tar::EntryType::Symlink),
                (h, d),
            ]),
            "lib/evil",
            ErrorKind::Invalid,
        );
        assert!(msg.contains("through the symbolic link `lib`"), "{msg}");
    }

    #[test]
    fn refuses_hardlinks_to_anything_not_extracted() {
        let fx = Fixture::new();
        let target = fx.root.join("outside/secret");
        stdfs::write(&target, b"secret").unwrap();
        let msg = assert_refused(
            &fx,
            &build(vec![link(
                "stolen",
                &target.display().to_string(),
                tar::EntryType::Link,
            )]),
            "stolen",
            ErrorKind::Invalid,
        );
        assert!(msg.contains("absolute"), "{msg}");
        let msg = assert_refused(
            &fx,
            &build(vec![link(
                "stolen",
                "../outside/secret",
                tar::EntryType::Link,
            )]),
            "stolen",
            ErrorKind::Invalid,
        );
        assert!(msg.contains(".."), "{msg}");
        // Already in dest, but not from this archive.
        let msg = assert_refused(
            &fx,
            &build(vec![link("copy", "bin/oscar.def", tar::EntryType::Link)]),
            "copy",
            ErrorKind::Invalid,
        );
        assert!(msg.contains("not a file extracted earlier"), "{msg}");
    }

    #[test]
    fn refuses_device_nodes_and_fifos() {
        let fx = Fixture::new();
        let (ok, d) = file("ok", b"ok", 0o644, 1);
        let mut dev = raw_header(b"dev/sda", tar::EntryType::Block, 0);
        dev.set_device_major(8).unwrap();
        dev.set_cksum();
        let msg = assert_refused(
            &fx,
            &tar_of(&[(ok.clone(), &d), (dev, b"")]),
            "dev/sda",
            ErrorKind::Invalid,
        );
        assert!(msg.contains("block device"), "{msg}");
        let fifo = raw_header(b"pipe", tar::EntryType::Fifo, 0);
        let msg = assert_refused(
            &fx,
            &tar_of(&[(ok, &d), (fifo, b"")]),
            "pipe",
            ErrorKind::Invalid,
        );
        assert!(msg.contains("fifo"), "{msg}");
    }

    #[test]
    fn stops_a_gzip_bomb_while_inflating() {
        let fx = Fixture::new();
        stdfs::write(fx.product().join("keep"), b"keep").unwrap();
        let before = snapshot(&fx.product());
        let zeros = vec![0u8; 8 << 20];
        let bomb = gz(&build(vec![file("zeros", &zeros, 0o644, 1)]));
        assert!(
            bomb.len() < 64 << 10,
            "the bomb should be small: {}",
            bomb.len()
        );
        fx.put("bomb.tgz", &bomb);
        let small = ArchiveLimits {
            max_entry: 1 << 20,
            max_total: 64 << 20,
            max_entries: 100,
        };
        let err = extract(&fx.grants, &small, "/staging/bomb.tgz", "/product").unwrap_err();
        assert_eq!(err.kind, ErrorKind::Limit, "{}", err.message);
        assert!(
            err.message.contains("`zeros`") && err.message.contains("per entry"),
            "{}",
            err.message
        );
        assert_eq!(snapshot(&fx.product()), before);

        // Many entries each under the per-entry limit, together over the total.
        let parts: Vec<_> = (0..8)
            .map(|i| file(&format!("part{i}"), &zeros[..1 << 20], 0o644, 1))
            .collect();
        fx.put("bomb2.tgz", &gz(&build(parts)));
        let small = ArchiveLimits {
            max_entry: 1 << 20,
            max_total: 3 << 20,
            max_entries: 100,
        };
        let err = extract(&fx.grants, &small, "/staging/bomb2.tgz", "/product").unwrap_err();
        assert_eq!(err.kind, ErrorKind::Limit, "{}", err.message);
        assert!(
            err.message.contains("`part3`") && err.message.contains("in total"),
            "{}",
            err.message
        );
        assert_eq!(snapshot(&fx.product()), before);

        let few = ArchiveLimits {
            max_entries: 2,
            ..ArchiveLimits::default()
        };
        let err = extract(&fx.grants, &few, "/staging/bomb2.tgz", "/product").unwrap_err();
        assert_eq!(err.kind, ErrorKind::Limit, "{}", err.message);
        assert_eq!(snapshot(&fx.product()), before);
        // Nothing is left behind in dest: no temporary directory either.
        assert_eq!(stdfs::read_dir(fx.product()).unwrap().count(), 1);
    }

    /// The same small tree in every format.
    fn good_tree() -> Vec<(tar::Header, Vec<u8>)> {
        vec![
            dir("app/", 0o750, 1_500_000_000),
            dir("app/bin/", 0o755, 1_500_000_100),
            file("app/bin/run", b"#!/bin/sh\necho hi\n", 0o755, 1_500_000_200),
            file("app/bin/oscar.def", b"A=1\n", 0o640, 1_500_000_300),
            link("app/bin/start", "run", tar::EntryType::Symlink),
            link("app/bin/run2", "app/bin/run", tar::EntryType::Link),
            file("app/suid", b"x", 0o4755, 1_500_000_400),
        ]
    }

    fn check_good_tree(root: &Path) {
        let app = root.join("app");
        let m = |p: &str| stdfs::symlink_metadata(app.join(p)).unwrap();
        assert_eq!(
            stdfs::read(app.join("bin/run")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(m("bin/run").mode() & 0o7777, 0o755);
        assert_eq!(m("bin/run").mtime(), 1_500_000_200);
        assert_eq!(m("bin/oscar.def").mode() & 0o7777, 0o640);
        assert_eq!(m("bin/oscar.def").mtime(), 1_500_000_300);
        assert_eq!(
            stdfs::read_link(app.join("bin/start")).unwrap(),
            Path::new("run")
        );
        assert_eq!(m("bin/run2").ino(), m("bin/run").ino());
        assert_eq!(m("suid").mode() & 0o7777, 0o755, "setuid must be dropped");
        assert_eq!(m("").mode() & 0o7777, 0o750);
        assert_eq!(m("").mtime(), 1_500_000_000);
        assert_eq!(m("bin").mtime(), 1_500_000_100);
        let leftovers: Vec<_> = stdfs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with(".posup-extract"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn extracts_tar_tgz_and_tbz2_keeping_modes_and_times() {
        let fx = Fixture::new();
        let tar = build(good_tree());
        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
        bz.write_all(&tar).unwrap();
        let bz = bz.finish().unwrap();
        for (name, bytes) in [
            ("a.tar", tar.clone()),
            ("a.tgz", gz(&tar)),
            ("a.tar.bz2", bz),
        ] {
            fx.put(name, &bytes);
            let dest = format!("/product/{name}.d");
            stdfs::create_dir(fx.product().join(format!("{name}.d"))).unwrap();
            let s = extract(&fx.grants, &limits(), &format!("/staging/{name}"), &dest).unwrap();
            assert_eq!((s.files, s.directories, s.links), (3, 2, 2), "{name}");
            assert_eq!(s.bytes, 18 + 4 + 1, "{name}");
            check_good_tree(&fx.product().join(format!("{name}.d")));
        }
    }

    /// One entry of a test zip.
    enum Z<'a> {
        File(&'a str, &'a [u8], u32),
        Dir(&'a str, u32),
        Link(&'a str, &'a str),
    }

    fn zip_of(entries: &[Z<'_>]) -> Vec<u8> {
        use zip::write::SimpleFileOptions;
        let mut w = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        let time = zip::DateTime::from_date_and_time(2020, 9, 13, 12, 26, 40).unwrap();
        let opts = |mode| {
            SimpleFileOptions::default()
                .unix_permissions(mode)
                .last_modified_time(time)
        };
        for entry in entries {
            match *entry {
                Z::File(name, data, mode) => {
                    w.start_file(name, opts(mode)).unwrap();
                    w.write_all(data).unwrap();
                }
                Z::Dir(name, mode) => w.add_directory(name, opts(mode)).unwrap(),
                Z::Link(name, target) => w.add_symlink(name, target, opts(0o777)).unwrap(),
            }
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn extracts_zip_with_modes_times_and_symlinks() {
        let fx = Fixture::new();
        fx.put(
            "a.zip",
            &zip_of(&[
                Z::Dir("app/", 0o750),
                Z::File("app/run", b"run", 0o755),
                Z::Link("app/start", "run"),
            ]),
        );
        let s = extract(&fx.grants, &limits(), "/staging/a.zip", "/product").unwrap();
        assert_eq!((s.files, s.directories, s.links, s.bytes), (1, 1, 1, 3));
        let app = fx.product().join("app");
        let m = stdfs::metadata(app.join("run")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o755);
        // 2020-09-13 12:26:40 UTC.
        assert_eq!(m.mtime(), 1_600_000_000);
        assert_eq!(stdfs::metadata(&app).unwrap().mode() & 0o7777, 0o750);
        assert_eq!(
            stdfs::read_link(app.join("start")).unwrap(),
            Path::new("run")
        );

        let listed = list_entries(&fx.grants, &limits(), "/staging/a.zip").unwrap();
        let kinds: Vec<_> = listed
            .iter()
            .map(|e| (e.path.as_str(), e.kind, e.link.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("app/", EntryKind::Directory, ""),
                ("app/run", EntryKind::File, ""),
                ("app/start", EntryKind::Symlink, "run")
            ]
        );
        assert_eq!(
            read_entry(&fx.grants, &limits(), "/staging/a.zip", "app/run", 10).unwrap(),
            b"run"
        );
    }

    #[test]
    fn refuses_hostile_zips() {
        let fx = Fixture::new();
        stdfs::write(fx.product().join("keep"), b"keep").unwrap();
        let before = snapshot(&fx.product());
        let cases: [(&str, Vec<u8>, &str); 3] = [
            (
                "link.zip",
                zip_of(&[Z::File("ok", b"x", 0o644), Z::Link("up", "../outside")]),
                "up",
            ),
            (
                "dotdot.zip",
                zip_of(&[Z::File("a/../../evil", b"x", 0o644)]),
                "a/../../evil",
            ),
            (
                "backslash.zip",
                zip_of(&[Z::File("..\\evil", b"x", 0o644)]),
                "../evil",
            ),
        ];
        for (name, bytes, entry) in cases {
            fx.put(name, &bytes);
            let err = extract(
                &fx.grants,
                &limits(),
                &format!("/staging/{name}"),
                "/product",
            )
            .unwrap_err();
            assert_eq!(err.kind, ErrorKind::Invalid, "{}", err.message);
            assert!(
                err.message.contains(&format!("`{entry}`")),
                "{name}: {}",
                err.message
            );
            assert_eq!(snapshot(&fx.product()), before, "{name}");
        }
        assert!(
            stdfs::read_dir(fx.root.join("outside"))
                .unwrap()
                .next()
                .is_none()
        );
    }

    #[test]
    fn merges_over_an_existing_tree() {
        let fx = Fixture::new();
        let p = fx.product();
        stdfs::create_dir_all(p.join("bin")).unwrap();
        stdfs::write(p.join("bin/oscar.def"), b"old config").unwrap();
        stdfs::write(p.join("bin/oscar"), b"old program").unwrap();
        stdfs::write(p.join("work.srv"), b"data").unwrap();
        stdfs::write(fx.root.join("outside/target"), b"outside").unwrap();
        // A link in the product that a naive unpacker would write through.
        std::os::unix::fs::symlink(fx.root.join("outside/target"), p.join("bin/linked")).unwrap();
        fx.put(
            "upd.tgz",
            &gz(&build(vec![
                dir("./", 0o700, 5),
                file("./bin/oscar", b"new program", 0o755, 1_600_000_000),
                file("./bin/linked", b"replaces the link", 0o644, 1_600_000_000),
                file("./bin/new.fgl", b"form", 0o644, 1_600_000_000),
                file("./lib/libx.so", b"lib", 0o644, 1_600_000_000),
            ])),
        );
        let s = extract(&fx.grants, &limits(), "/staging/upd.tgz", "/product").unwrap();
        assert_eq!(s.files, 4);
        assert_eq!(stdfs::read(p.join("bin/oscar")).unwrap(), b"new program");
        assert_eq!(stdfs::read(p.join("bin/oscar.def")).unwrap(), b"old config");
        assert_eq!(stdfs::read(p.join("work.srv")).unwrap(), b"data");
        assert_eq!(stdfs::read(p.join("bin/new.fgl")).unwrap(), b"form");
        assert_eq!(stdfs::read(p.join("lib/libx.so")).unwrap(), b"lib");
        assert!(
            !stdfs::symlink_metadata(p.join("bin/linked"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(
            stdfs::read(fx.root.join("outside/target")).unwrap(),
            b"outside"
        );
        // `./` does not change the mode of dest itself.
        assert_ne!(stdfs::metadata(&p).unwrap().mode() & 0o777, 0o700);
        let names: Vec<_> = stdfs::read_dir(&p)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");

        // A file where the product holds a directory is refused before anything moves.
        let before = snapshot(&p);
        fx.put(
            "clash.tgz",
            &gz(&build(vec![
                file("aaa", b"first", 0o644, 1),
                file("bin", b"not a dir", 0o644, 1),
            ])),
        );
        let err = extract(&fx.grants, &limits(), "/staging/clash.tgz", "/product").unwrap_err();
        assert!(
            err.message.contains("`bin`") && err.message.contains("already holds a directory"),
            "{}",
            err.message
        );
        assert_eq!(snapshot(&p), before);
    }

    #[test]
    fn lists_and_reads_entries() {
        let fx = Fixture::new();
        fx.put("a.tgz", &gz(&build(good_tree())));
        let listed = list_entries(&fx.grants, &limits(), "/staging/a.tgz").unwrap();
        assert_eq!(listed.len(), 7);
        let start = listed.iter().find(|e| e.path == "app/bin/start").unwrap();
        assert_eq!(
            (start.kind, start.link.as_str()),
            (EntryKind::Symlink, "run")
        );
        let run = listed.iter().find(|e| e.path == "app/bin/run").unwrap();
        assert_eq!((run.kind, run.size, run.mode), (EntryKind::File, 18, 0o755));

        let def = read_entry(
            &fx.grants,
            &limits(),
            "/staging/a.tgz",
            "./app/bin/oscar.def",
            100,
        )
        .unwrap();
        assert_eq!(def, b"A=1\n");
        let err =
            read_entry(&fx.grants, &limits(), "/staging/a.tgz", "app/bin/run", 5).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Limit);
        assert!(err.message.contains("app/bin/run"), "{}", err.message);
        let err = read_entry(&fx.grants, &limits(), "/staging/a.tgz", "Rules", 100).unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
        assert!(err.message.contains("`Rules`"), "{}", err.message);
        let err = read_entry(&fx.grants, &limits(), "/staging/a.tgz", "app/bin", 100).unwrap_err();
        assert!(err.message.contains("directory"), "{}", err.message);
    }

    #[test]
    fn refuses_unknown_formats_and_ungranted_paths() {
        let fx = Fixture::new();
        fx.put("notes.txt", b"just some text, not an archive");
        let err = list_entries(&fx.grants, &limits(), "/staging/notes.txt").unwrap_err();
        assert_eq!(err.kind, ErrorKind::Invalid);
        assert!(
            err.message.contains("/staging/notes.txt")
                && err.message.contains("unknown archive format"),
            "{}",
            err.message
        );
        fx.put("a.tgz", &gz(&build(good_tree())));
        let err = extract(&fx.grants, &limits(), "/staging/a.tgz", "/backup").unwrap_err();
        assert_eq!(err.kind, ErrorKind::Denied);
        let err = extract(&fx.grants, &limits(), "/staging/a.tgz", "/product/missing").unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
        // A truncated gzip stream is damaged data, and nothing lands in dest.
        let whole = gz(&build(good_tree()));
        fx.put("cut.tgz", &whole[..whole.len() / 2]);
        let err = extract(&fx.grants, &limits(), "/staging/cut.tgz", "/product").unwrap_err();
        assert_eq!(err.kind, ErrorKind::Invalid, "{}", err.message);
        assert!(stdfs::read_dir(fx.product()).unwrap().next().is_none());
    }
}
