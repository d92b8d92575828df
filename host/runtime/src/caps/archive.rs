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
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cap_std::fs::{Dir, DirBuilder, DirBuilderExt, OpenOptions, OpenOptionsExt};
use posup_world::latest::archive::{self, Entry, EntryKind, ExtractSummary};
use posup_world::latest::types::Error as WitError;
use wasmtime::component::{HasSelf, Linker};

use super::{CapError, CapResult, Work};
use crate::beneath::Roots;

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

/// The longest GNU long-name or long-link record and PAX extended header the host
/// reads into memory. Real names are far shorter; a record claiming more is refused
/// before it is read.
pub const MAX_EXTENSION: u64 = 64 << 10;
/// The most bytes `read-entry` brings into host memory, whatever the plugin asks:
/// it is for manifests and version files; larger entries are extracted.
pub const MAX_READ_ENTRY: u64 = 8 << 20;
/// The most entries `entries` lists, and the most bytes of names and link targets
/// in one listing.
pub const MAX_LIST_ENTRIES: u64 = 100_000;
pub const MAX_LIST_BYTES: u64 = 16 << 20;
/// Bytes written between two looks at free space and at the step's deadline.
const CHECK_EVERY: u64 = 16 << 20;

/// Per-step state of `archive`.
pub struct ArchiveState {
    roots: Arc<Roots>,
    work: Work,
    limits: ArchiveLimits,
    reserve: u64,
}

impl ArchiveState {
    pub fn new(roots: Arc<Roots>, work: Work, limits: ArchiveLimits, reserve: u64) -> Self {
        Self {
            roots,
            work,
            limits,
            reserve,
        }
    }
}

impl archive::Host for ArchiveState {
    async fn entries(&mut self, archive: String) -> Result<Vec<Entry>, WitError> {
        let (roots, limits) = (self.roots.clone(), self.limits.clone());
        let what = format!("listing {archive}");
        super::blocking(&self.work, &what, move || {
            list_entries(&roots, &limits, &archive)
        })
        .await
    }

    async fn read_entry(
        &mut self,
        archive: String,
        entry: String,
        max_bytes: u64,
    ) -> Result<Vec<u8>, WitError> {
        let (roots, limits) = (self.roots.clone(), self.limits.clone());
        let what = format!("reading {entry} from {archive}");
        super::blocking(&self.work, &what, move || {
            read_entry(&roots, &limits, &archive, &entry, max_bytes)
        })
        .await
    }

    async fn extract(&mut self, archive: String, dest: String) -> Result<ExtractSummary, WitError> {
        let (roots, limits) = (self.roots.clone(), self.limits.clone());
        let (work, reserve) = (self.work.clone(), self.reserve);
        let what = format!("extracting {archive} into {dest}");
        super::blocking(&self.work, &what, move || {
            extract(&roots, &limits, &work, reserve, &archive, &dest)
        })
        .await
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
fn open(roots: &Roots, archive: &str) -> CapResult<(File, Format)> {
    let mut file = roots.locate(archive, false)?.open_file()?;
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

/// Lists the entries of the archive at guest path `archive`. Blocking.
pub fn list_entries(roots: &Roots, limits: &ArchiveLimits, archive: &str) -> CapResult<Vec<Entry>> {
    let (file, format) = open(roots, archive)?;
    let mut listed = Listing::new(archive, limits);
    if format == Format::Zip {
        let mut zip = open_zip(file, archive)?;
        listed.count(zip.len() as u64)?;
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
            listed.bytes(name.len() + link.len())?;
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
        let mut out = Vec::new();
        tar_entries(stream, archive, format, |entry, name, link| {
            listed.count(out.len() as u64 + 1)?;
            listed.bytes(name.len() + link.map_or(0, <[u8]>::len))?;
            let header = entry.header();
            out.push(Entry {
                path: lossy(name),
                kind: tar_kind(header.entry_type()),
                size: entry.size(),
                mode: header.mode().unwrap_or(0) & 0o7777,
                link: link.map(lossy).unwrap_or_default(),
            });
            Ok(true)
        })?;
        Ok(out)
    })
}

/// The bounds of one listing: entries (the smaller of the archive limit and
/// [`MAX_LIST_ENTRIES`]) and bytes of names ([`MAX_LIST_BYTES`]).
struct Listing<'a> {
    archive: &'a str,
    max_entries: u64,
    bytes: u64,
}

impl<'a> Listing<'a> {
    fn new(archive: &'a str, limits: &ArchiveLimits) -> Self {
        Self {
            archive,
            max_entries: limits.max_entries.min(MAX_LIST_ENTRIES),
            bytes: 0,
        }
    }

    fn count(&self, n: u64) -> CapResult<()> {
        if n > self.max_entries {
            return Err(CapError::limit(format!(
                "{}: holds more than the {} entries one listing may return; read single entries or extract it",
                self.archive, self.max_entries
            )));
        }
        Ok(())
    }

    fn bytes(&mut self, n: usize) -> CapResult<()> {
        self.bytes += n as u64;
        if self.bytes > MAX_LIST_BYTES {
            return Err(CapError::limit(format!(
                "{}: its entry names come to more than the {} MiB one listing may return; read single entries or extract it",
                self.archive,
                MAX_LIST_BYTES >> 20
            )));
        }
        Ok(())
    }
}

/// Walks the entries of a tar stream with GNU long names and PAX paths applied,
/// reading each such record into memory only up to [`MAX_EXTENSION`] bytes (the
/// `tar` crate alone would read a record of any size). `each` gets every real
/// entry with its name and link target, and answers whether to go on. Sparse
/// files, whose extension blocks the walk would not understand, are refused.
fn tar_entries(
    stream: &mut dyn Read,
    archive: &str,
    format: Format,
    mut each: impl FnMut(&mut tar::Entry<'_, &mut dyn Read>, &[u8], Option<&[u8]>) -> CapResult<bool>,
) -> CapResult<()> {
    use tar::EntryType as T;
    let err = |e: io::Error| read_error(archive, format, &e);
    let mut tar = tar::Archive::new(stream);
    let (mut name, mut link, mut size): (Option<Vec<u8>>, Option<Vec<u8>>, Option<u64>) =
        (None, None, None);
    for entry in tar.entries().map_err(err)?.raw(true) {
        let mut entry = entry.map_err(err)?;
        let kind = entry.header().entry_type();
        let record = |entry: &mut tar::Entry<'_, &mut dyn Read>, what: &str| {
            if entry.size() > MAX_EXTENSION {
                return Err(CapError::limit(format!(
                    "{archive}: holds a {what} record of {} bytes; the host reads at most {} KiB of one, so the archive is refused",
                    entry.size(),
                    MAX_EXTENSION >> 10
                )));
            }
            let mut data = Vec::new();
            entry
                .take(MAX_EXTENSION)
                .read_to_end(&mut data)
                .map_err(err)?;
            Ok(data)
        };
        let strip = |mut v: Vec<u8>| {
            while v.last() == Some(&0) {
                v.pop();
            }
            v
        };
        match kind {
            T::GNULongName => name = Some(strip(record(&mut entry, "long-name")?)),
            T::GNULongLink => link = Some(strip(record(&mut entry, "long-link")?)),
            T::XGlobalHeader => {
                record(&mut entry, "PAX global header")?;
            }
            T::XHeader => {
                let pax = record(&mut entry, "PAX extended header")?;
                for ext in tar::PaxExtensions::new(&pax) {
                    let ext = ext.map_err(err)?;
                    match ext.key_bytes() {
                        b"path" => name = Some(ext.value_bytes().to_vec()),
                        b"linkpath" => link = Some(ext.value_bytes().to_vec()),
                        b"size" => {
                            size = std::str::from_utf8(ext.value_bytes())
                                .ok()
                                .and_then(|v| v.parse().ok());
                        }
                        _ => {}
                    }
                }
            }
            T::GNUSparse => {
                let shown = name
                    .take()
                    .unwrap_or_else(|| entry.path_bytes().into_owned());
                return Err(CapError::invalid(format!(
                    "{archive}: entry `{}` is a sparse file, which posup does not unpack; pack it as a plain file",
                    lossy(&shown)
                )));
            }
            _ => {
                let this_name = name
                    .take()
                    .unwrap_or_else(|| entry.path_bytes().into_owned());
                let this_link = link
                    .take()
                    .or_else(|| entry.link_name_bytes().map(|l| l.into_owned()));
                if let Some(s) = size.take()
                    && s != entry.size()
                {
                    return Err(CapError::limit(format!(
                        "{archive}: entry `{}` has a PAX size of {s} bytes beyond its header's; entries that large are refused",
                        lossy(&this_name)
                    )));
                }
                if !each(&mut entry, &this_name, this_link.as_deref())? {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
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
    roots: &Roots,
    limits: &ArchiveLimits,
    archive: &str,
    entry: &str,
    max_bytes: u64,
) -> CapResult<Vec<u8>> {
    let cap = max_bytes.min(limits.max_entry).min(MAX_READ_ENTRY);
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
    let (file, format) = open(roots, archive)?;
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
            let mut found = None;
            tar_entries(stream, archive, format, |e, name, link| {
                if loose(name) != wanted {
                    return Ok(true);
                }
                let kind = tar_kind(e.header().entry_type());
                if kind != EntryKind::File {
                    return Err(not_a_file(kind, link.map(lossy)));
                }
                if e.size() > cap {
                    return Err(too_big(&e.size()));
                }
                found = Some(read_capped(e)?);
                Ok(false)
            })?;
            Ok(found)
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
struct TempDir {
    parent: Dir,
    name: String,
    dir: Dir,
}

impl TempDir {
    fn create(parent: &Dir, guest: &str) -> CapResult<TempDir> {
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
enum Made {
    Dir,
    File,
    Symlink,
}

/// Unpacks entries one by one into `root`, checking each.
struct Unpacker<'a> {
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

    fn add(&mut self, name: &[u8], item: Item<'_>) -> CapResult<()> {
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
    fn room(&self, name: &[u8], out: &File) -> CapResult<()> {
        self.work.check(&format!("extracting {}", self.archive))?;
        let free = super::fs::available(out.as_fd())
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
    fn set_link_time(&self, rel: &Path, mtime: u64) -> io::Result<()> {
        let folder = match rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(parent) => self.root.open_dir(parent)?,
            None => self.root.try_clone()?,
        };
        let link = rel.file_name().unwrap_or_default();
        super::fs::set_times_nofollow(folder.as_fd(), link, None, mtime_timespec(mtime))
    }

    /// Writes one file, counting the bytes as they arrive against the limits.
    fn write_file(
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

    fn unpack_tar(&mut self, stream: &mut dyn Read) -> CapResult<()> {
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
    /// the directories' modes and times. Works through handles: `dest`'s, and of
    /// each folder below it, opened without following links, so a link planted in
    /// `dest` is replaced, never walked through.
    fn finish(self, dest: BorrowedFd<'_>, tmp: TempDir) -> CapResult<ExtractSummary> {
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
    fn check_merge(
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

    fn merge(
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
fn at(rel: &Path) -> impl FnOnce(io::Error) -> (PathBuf, io::Error) + use<> {
    let rel = rel.to_path_buf();
    move |e| (rel, e)
}

/// Whether `name` in `dir` is a directory (`Some(true)`), something else
/// (`Some(false)`) or absent, without following a link.
fn kind(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<bool>> {
    Ok(crate::beneath::kind_at(dir, name)?.map(|st| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory
    }))
}

/// Sets the mode and modification time of the directory `rel` below `dest`,
/// reached through real directories only.
fn set_dir(dest: BorrowedFd<'_>, rel: &Path, mode: u32, mtime: u64) -> io::Result<()> {
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

fn mtime_timespec(mtime: u64) -> (i64, i64) {
    (i64::try_from(mtime).unwrap_or(i64::MAX), 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    // Fixtures are laid out and checked through host paths, outside the
    // capability under test.
    use posup_world::latest::types::{Dir, ErrorKind};
    use std::collections::BTreeMap;
    use std::fs as stdfs;
    use std::os::unix::fs::MetadataExt;

    use crate::grants::{DirGrant, Grants};

    fn extract(
        roots: &Roots,
        limits: &ArchiveLimits,
        archive: &str,
        dest: &str,
    ) -> CapResult<ExtractSummary> {
        super::extract(roots, limits, &Work::default(), 0, archive, dest)
    }

    /// A tar whose first record is a GNU long name claiming `claimed` bytes,
    /// followed by only a little data: the host must refuse it before reading.
    fn long_name_bomb(claimed: u64) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        h.set_entry_type(tar::EntryType::GNULongName);
        h.set_size(claimed);
        h.set_mode(0o644);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend(std::iter::repeat_n(b'a', 1 << 20));
        out
    }

    #[test]
    fn a_huge_long_name_record_is_refused_before_it_is_read() {
        let fx = Fixture::new();
        fx.put("bomb.tgz", &gz(&long_name_bomb(1 << 30)));
        for err in [
            list_entries(&fx.grants, &limits(), "/staging/bomb.tgz").unwrap_err(),
            read_entry(&fx.grants, &limits(), "/staging/bomb.tgz", "x", 10).unwrap_err(),
            extract(&fx.grants, &limits(), "/staging/bomb.tgz", "/product").unwrap_err(),
        ] {
            assert_eq!(err.kind, ErrorKind::Limit, "{}", err.message);
            assert!(err.message.contains("64 KiB"), "{}", err.message);
        }
        assert!(snapshot(&fx.product()).is_empty());
    }

    #[test]
    fn long_names_within_the_bound_still_work() {
        let fx = Fixture::new();
        let long = format!("app/{}/{}/file", "d".repeat(150), "e".repeat(150));
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, &long, &b"ok"[..]).unwrap();
        fx.put("long.tar", &b.into_inner().unwrap());
        let listed = list_entries(&fx.grants, &limits(), "/staging/long.tar").unwrap();
        assert_eq!(listed[0].path, long);
        assert_eq!(
            read_entry(&fx.grants, &limits(), "/staging/long.tar", &long, 10).unwrap(),
            b"ok"
        );
        extract(&fx.grants, &limits(), "/staging/long.tar", "/product").unwrap();
        assert_eq!(stdfs::read(fx.product().join(&long)).unwrap(), b"ok");
    }

    #[test]
    fn read_entry_brings_at_most_a_few_mib_into_memory() {
        let fx = Fixture::new();
        let big = vec![7u8; (MAX_READ_ENTRY + 1) as usize];
        fx.put("big.tar", &build(vec![file("big", &big, 0o644, 0)]));
        let err =
            read_entry(&fx.grants, &limits(), "/staging/big.tar", "big", u64::MAX).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Limit, "{}", err.message);
        assert!(err.message.contains("by the host"), "{}", err.message);
    }

    #[test]
    fn a_listing_is_bounded_in_bytes() {
        let fx = Fixture::new();
        let mut b = tar::Builder::new(Vec::new());
        let each = 60_000;
        for i in 0..(MAX_LIST_BYTES / each + 2) {
            let mut h = tar::Header::new_gnu();
            h.set_size(0);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            let name = format!("{i}/{}", "n".repeat(each as usize));
            b.append_data(&mut h, &name, &[][..]).unwrap();
        }
        fx.put("names.tar", &b.into_inner().unwrap());
        let err = list_entries(&fx.grants, &limits(), "/staging/names.tar").unwrap_err();
        assert_eq!(err.kind, ErrorKind::Limit, "{}", err.message);
        assert!(err.message.contains("MiB"), "{}", err.message);
    }

    #[test]
    fn extraction_keeps_the_disk_reserve_free() {
        let fx = Fixture::new();
        fx.put("a.tar", &build(vec![file("data", b"1234", 0o644, 0)]));
        let err = super::extract(
            &fx.grants,
            &limits(),
            &Work::default(),
            u64::MAX / 2,
            "/staging/a.tar",
            "/product",
        )
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Limit, "{}", err.message);
        assert!(err.message.contains("reserve"), "{}", err.message);
        assert!(snapshot(&fx.product()).is_empty());
    }

    #[test]
    fn a_cancelled_extraction_stops_and_changes_nothing() {
        let fx = Fixture::new();
        fx.put("a.tar", &build(vec![file("data", b"1234", 0o644, 0)]));
        let work = Work::default();
        work.cancel();
        let err = super::extract(
            &fx.grants,
            &limits(),
            &work,
            0,
            "/staging/a.tar",
            "/product",
        )
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Timeout, "{}", err.message);
        assert!(snapshot(&fx.product()).is_empty());
    }

    /// A link in `dest` where the archive has a directory is replaced by the
    /// directory, never walked into: the folder it points at stays as it was.
    #[test]
    fn merging_replaces_a_planted_link_instead_of_walking_it() {
        let fx = Fixture::new();
        stdfs::create_dir(fx.product().join("app")).unwrap();
        std::os::unix::fs::symlink(fx.root.join("outside"), fx.product().join("app/bin")).unwrap();
        fx.put(
            "a.tar",
            &build(vec![
                dir("app", 0o755, 0),
                dir("app/bin", 0o755, 0),
                file("app/bin/run", b"new", 0o755, 0),
            ]),
        );
        extract(&fx.grants, &limits(), "/staging/a.tar", "/product").unwrap();
        assert!(snapshot(&fx.root.join("outside")).is_empty());
        let bin = stdfs::symlink_metadata(fx.product().join("app/bin")).unwrap();
        assert!(bin.is_dir());
        assert_eq!(
            stdfs::read(fx.product().join("app/bin/run")).unwrap(),
            b"new"
        );
    }

    #[test]
    fn extraction_does_not_follow_a_planted_link_to_its_destination() {
        let fx = Fixture::new();
        std::os::unix::fs::symlink(fx.root.join("outside"), fx.product().join("out")).unwrap();
        fx.put("a.tar", &build(vec![file("data", b"1234", 0o644, 0)]));
        let err = extract(&fx.grants, &limits(), "/staging/a.tar", "/product/out").unwrap_err();
        assert_eq!(err.kind, ErrorKind::Denied, "{}", err.message);
        assert!(snapshot(&fx.root.join("outside")).is_empty());
    }

    /// A granted `/staging` (archives) and `/product` (destination) in a temp dir.
    struct Fixture {
        _tmp: tempfile::TempDir,
        root: PathBuf,
        grants: Roots,
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
                grants: Roots::open(&grants).unwrap(),
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

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Nothing but the archive in staging and what landed in the product:
        /// the `outside` folder beside them stays empty.
        fn nothing_outside(fx: &Fixture) -> Result<(), TestCaseError> {
            prop_assert!(snapshot(&fx.root.join("outside")).is_empty());
            let staging: Vec<_> = stdfs::read_dir(fx.root.join("staging")).unwrap().collect();
            prop_assert_eq!(staging.len(), 1);
            Ok(())
        }

        fn run_all(fx: &Fixture, name: &str) {
            let archive = format!("/staging/{name}");
            let _ = list_entries(&fx.grants, &limits(), &archive);
            let _ = read_entry(&fx.grants, &limits(), &archive, "a", 1 << 20);
            let _ = extract(&fx.grants, &limits(), &archive, "/product");
        }

        /// An entry name or link target as a hostile packer writes it.
        fn path() -> impl Strategy<Value = String> {
            prop::collection::vec(prop_oneof!["a", "b", "..", ".", "", "/", "outside"], 1..5)
                .prop_map(|parts| parts.join("/"))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]

            /// Whatever bytes follow a format's magic, listing, reading and
            /// extracting answer (an error or a result) and write nowhere else.
            #[test]
            fn any_bytes_get_an_answer(
                magic in prop_oneof![
                    Just(Vec::new()),
                    Just(vec![0x1f, 0x8b]),
                    Just(b"BZh".to_vec()),
                    Just(b"PK\x03\x04".to_vec()),
                ],
                tail in prop::collection::vec(any::<u8>(), 0..2048),
            ) {
                let fx = Fixture::new();
                let mut bytes = magic;
                bytes.extend(tail);
                fx.put("any", &bytes);
                run_all(&fx, "any");
                nothing_outside(&fx)?;
            }

            /// Tar archives of hostile entries (`..`, absolute names, links to
            /// anywhere, files through links, devices), plain, gzip or bzip2:
            /// nothing is ever written outside the destination.
            #[test]
            fn hostile_tars_stay_inside(
                entries in prop::collection::vec((path(), 0u8..5, path()), 1..10),
                compression in 0u8..3,
            ) {
                let fx = Fixture::new();
                let mut raw = Vec::new();
                for (name, kind, target) in &entries {
                    let kind = match kind {
                        0 => tar::EntryType::Regular,
                        1 => tar::EntryType::Directory,
                        2 => tar::EntryType::Symlink,
                        3 => tar::EntryType::Link,
                        _ => tar::EntryType::Char,
                    };
                    let data: &[u8] = if kind == tar::EntryType::Regular { b"data" } else { b"" };
                    let mut h = raw_header(name.as_bytes(), kind, data.len() as u64);
                    if matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link) {
                        h.as_old_mut().linkname[..target.len().min(100)]
                            .copy_from_slice(&target.as_bytes()[..target.len().min(100)]);
                        h.set_cksum();
                    }
                    raw.push((h, data));
                }
                let tar = tar_of(&raw);
                let bytes = match compression {
                    0 => tar,
                    1 => gz(&tar),
                    _ => {
                        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
                        bz.write_all(&tar).unwrap();
                        bz.finish().unwrap()
                    }
                };
                fx.put("hostile", &bytes);
                run_all(&fx, "hostile");
                nothing_outside(&fx)?;
            }
        }
    }
}
