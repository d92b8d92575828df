//! The formats: told apart by their first bytes, tar streams inflated on a
//! second thread, zip entries' names, kinds and times.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use posup_world::latest::archive::EntryKind;

use crate::beneath::Roots;
use crate::caps::{CapError, CapResult};

use super::{AHEAD, BUF, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    Tar,
    TarGz,
    TarBz2,
    Zip,
}

impl Format {
    pub(super) fn name(self) -> &'static str {
        match self {
            Format::Tar => "tar",
            Format::TarGz => "gzip-compressed tar",
            Format::TarBz2 => "bzip2-compressed tar",
            Format::Zip => "zip",
        }
    }
}

/// Opens the archive at guest path `archive` for reading and tells its format.
pub(super) fn open(roots: &Roots, archive: &str) -> CapResult<(File, Format)> {
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
pub(super) fn with_tar_stream<T>(
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
pub(super) enum Chunk {
    Data(Vec<u8>),
    End,
    Failed(io::Error),
}

/// Inflates `decoder` on a second thread while `f` consumes the output. When `f`
/// stops early (a refusal, a limit) the channel closes and the thread ends at its
/// next chunk, so a bomb is never inflated further than [`AHEAD`] chunks.
pub(super) fn pipelined<D: Read + Send, T>(
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
pub(super) struct Pipe {
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
pub(super) fn read_error(archive: &str, format: Format, e: &io::Error) -> CapError {
    match e.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput | io::ErrorKind::UnexpectedEof => {
            CapError::invalid(format!("{archive}: damaged {} archive: {e}", format.name()))
        }
        _ => CapError::io(format!("{archive}: reading the archive failed: {e}")),
    }
}

pub(super) fn open_zip(file: File, archive: &str) -> CapResult<zip::ZipArchive<BufReader<File>>> {
    zip::ZipArchive::new(BufReader::with_capacity(BUF, file))
        .map_err(|e| CapError::invalid(format!("{archive}: damaged zip archive: {e}")))
}

pub(super) fn zip_error(archive: &str, name: &str, e: zip::result::ZipError) -> CapError {
    CapError::invalid(format!("{archive}: entry `{name}` cannot be read: {e}"))
}

/// The kind of a zip entry, from its name and its Unix mode when it has one.
pub(super) fn zip_kind(name: &[u8], mode: Option<u32>) -> EntryKind {
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
pub(super) fn zip_name(raw: &[u8]) -> Vec<u8> {
    raw.iter()
        .map(|&b| if b == b'\\' { b'/' } else { b })
        .collect()
}

/// A zip entry's modification time: the Unix timestamp extra field when present,
/// otherwise its MS-DOS date and time, read as UTC.
pub(super) fn zip_mtime<R: Read>(file: &zip::read::ZipFile<'_, R>) -> u64 {
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
pub(super) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub(super) fn tar_kind(t: tar::EntryType) -> EntryKind {
    use tar::EntryType as T;
    match t {
        T::Regular | T::Continuous | T::GNUSparse => EntryKind::File,
        T::Directory => EntryKind::Directory,
        T::Symlink => EntryKind::Symlink,
        T::Link => EntryKind::Hardlink,
        _ => EntryKind::Other,
    }
}

pub(super) fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
