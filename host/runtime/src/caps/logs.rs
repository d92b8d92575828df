//! `logs`: tail and scan product logs, across rotation.
//!
//! Product logs are often large and are rotated while a plugin watches them, either
//! by renaming (`kiosk.log` becomes `kiosk.log.1` and a new `kiosk.log` is
//! created) or by copying and truncating in place (logrotate's `copytruncate`).
//! A [`Mark`] therefore records the file's identity (its inode) with the offset, so
//! `scan` can tell "the file grew" from "the file was replaced" and "the file was
//! truncated":
//!
//! - same inode, size at least the offset: read on from the offset;
//! - same inode, smaller than the offset: truncated in place, read from the start;
//! - another inode: renamed away; first read the rest of `<path>.1` when that is
//!   the file the mark belongs to, then the new file from the start.
//!
//! With `copytruncate`, lines written between the last scan and the copy sit only
//! in the copy; the copy has a new inode and cannot be told apart from an older
//! rotation, so those lines are not read. logrotate documents the same window.
//!
//! Every call is bounded: `tail` reads backwards from the end and never loads a
//! file whole, `scan` reads at most [`MAX_SCAN_BYTES`] and returns at most
//! [`MAX_MATCHES`] lines; when it stops early, the mark it returns continues
//! exactly where it stopped, so nothing is skipped.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::Arc;

use posup_world::latest::logs::{self, Found, Mark, ScanResult};
use posup_world::latest::types::Error as WitError;
use wasmtime::component::{HasSelf, Linker};

use posup_world::latest::types::ErrorKind;
use std::os::fd::AsFd;

use super::{CapError, CapResult, Work, blocking};
use crate::beneath::{Located, Roots};

/// The most lines `tail` returns.
pub const MAX_TAIL_LINES: u32 = 10_000;
/// Lines returned to the plugin are cut to this many bytes.
pub const MAX_LINE_BYTES: usize = 8 * 1024;
/// How far back `tail` looks for line starts; a file without newlines in its last
/// 64 MiB yields one (cut) line rather than a read of the whole file.
pub const MAX_TAIL_SCAN: u64 = 64 * 1024 * 1024;
/// The most bytes one `scan` reads, over the rotated and the current file.
pub const MAX_SCAN_BYTES: u64 = 64 * 1024 * 1024;
/// The most matching lines one `scan` returns.
pub const MAX_MATCHES: usize = 1_000;
/// The most patterns one `scan` takes.
pub const MAX_PATTERNS: usize = 64;
/// Bytes of a line that `scan` matches patterns against; the rest of a longer line
/// is read past, and the line still counts as one.
const MAX_MATCH_BYTES: usize = 64 * 1024;
const CHUNK: usize = 64 * 1024;

/// Per-step state of `logs`.
pub struct LogsState {
    roots: Arc<Roots>,
    work: Work,
}

impl LogsState {
    pub fn new(roots: Arc<Roots>, work: Work) -> Self {
        Self { roots, work }
    }
}

impl logs::Host for LogsState {
    async fn tail(&mut self, path: String, lines: u32) -> Result<Vec<String>, WitError> {
        let log = self.roots.locate(&path, false)?;
        let lines = lines.min(MAX_TAIL_LINES) as usize;
        blocking(&self.work, "logs.tail", move || {
            let file = log.open_file()?;
            tail_file(&file, lines).map_err(|e| CapError::from_io(format!("log {path}"), &e))
        })
        .await
    }

    async fn end(&mut self, path: String) -> Result<Mark, WitError> {
        let log = self.roots.locate(&path, false)?;
        blocking(&self.work, "logs.end", move || {
            let file = open_log(&log)?;
            end_mark(file.as_ref()).map_err(|e| CapError::from_io(format!("log {path}"), &e))
        })
        .await
    }

    async fn scan(
        &mut self,
        path: String,
        since: Mark,
        patterns: Vec<String>,
    ) -> Result<ScanResult, WitError> {
        let log = self.roots.locate(&path, false)?;
        let rotated = self.roots.locate(&format!("{path}.1"), false)?;
        check_patterns(&path, &patterns)?;
        blocking(&self.work, "logs.scan", move || {
            let current = open_log(&log)?;
            scan_file(current, || open_rotated(&rotated), since, &patterns)
                .map_err(|e| CapError::from_io(format!("log {path}"), &e))
        })
        .await
    }
}

/// The log file at a located path, beneath its root; `None` when it does not
/// exist (yet).
fn open_log(log: &Located) -> CapResult<Option<File>> {
    match log.open_file() {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The rotated log `<path>.1`: resolved beneath the same root, and never through
/// a link of its own — a rotated log is a file the product renamed, so a link
/// there is something else and is not read.
fn open_rotated(rotated: &Located) -> io::Result<Option<File>> {
    let (dir, name) = match rotated.parent() {
        Ok(x) => x,
        Err(e) if e.kind == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io::Error::other(e.message)),
    };
    match crate::beneath::open_file_nofollow(dir.as_fd(), &name) {
        Ok(file) => Ok(file),
        // A link or something else than a file: not a rotated log.
        Err(e)
            if e.raw_os_error() == Some(libc::ELOOP) || e.kind() == io::ErrorKind::InvalidInput =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut LogsState,
) -> wasmtime::Result<()> {
    logs::add_to_linker::<T, HasSelf<LogsState>>(linker, get)
}

fn check_patterns(path: &str, patterns: &[String]) -> CapResult<()> {
    if patterns.is_empty() {
        return Err(CapError::invalid(format!(
            "scan of log {path}: no patterns given; pass at least one substring to look for"
        )));
    }
    if patterns.len() > MAX_PATTERNS {
        return Err(CapError::limit(format!(
            "scan of log {path}: {} patterns, at most {MAX_PATTERNS} are allowed",
            patterns.len()
        )));
    }
    if let Some(p) = patterns
        .iter()
        .find(|p| p.is_empty() || p.len() > MAX_LINE_BYTES)
    {
        return Err(CapError::invalid(format!(
            "scan of log {path}: pattern of {} bytes; patterns are 1 to {MAX_LINE_BYTES} bytes",
            p.len()
        )));
    }
    Ok(())
}

/// The current end of the file at `path`; a missing file is the mark `{0, 0}`, so
/// a later scan reads the file from its start once it appears.
fn end_mark(file: Option<&File>) -> io::Result<Mark> {
    match file {
        Some(f) => {
            let meta = f.metadata()?;
            Ok(Mark {
                file_id: meta.ino(),
                offset: meta.len(),
            })
        }
        None => Ok(Mark {
            file_id: 0,
            offset: 0,
        }),
    }
}

/// A line as the plugin gets it: without its line ending, cut to
/// [`MAX_LINE_BYTES`], invalid UTF-8 replaced.
fn line_text(bytes: &[u8]) -> String {
    let mut bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    let cut = &bytes[..bytes.len().min(MAX_LINE_BYTES)];
    String::from_utf8_lossy(cut).into_owned()
}

/// The last `n` lines of the file, oldest first. The file is read backwards in
/// chunks to find where those lines start; then only the first
/// [`MAX_LINE_BYTES`] of each is read.
fn tail_file(file: &File, n: usize) -> io::Result<Vec<String>> {
    let size = file.metadata()?.len();
    if n == 0 || size == 0 {
        return Ok(Vec::new());
    }
    // A final newline ends the last line; it does not start an empty one.
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, size - 1)?;
    let mut line_end = if last[0] == b'\n' { size - 1 } else { size };

    // (start, end) of each line found, newest first; `end` excludes the newline.
    let mut spans: Vec<(u64, u64)> = Vec::new();
    let mut pos = line_end;
    let mut buf = vec![0u8; CHUNK];
    let floor = size.saturating_sub(MAX_TAIL_SCAN);
    'scan: while pos > floor {
        let len = (pos - floor).min(CHUNK as u64) as usize;
        let start = pos - len as u64;
        file.read_exact_at(&mut buf[..len], start)?;
        for i in (0..len).rev() {
            if buf[i] == b'\n' {
                let nl = start + i as u64;
                spans.push((nl + 1, line_end));
                line_end = nl;
                if spans.len() == n {
                    break 'scan;
                }
            }
        }
        pos = start;
    }
    // The oldest line starts at the beginning of the file, or where the scan gave
    // up looking for its start.
    if spans.len() < n {
        spans.push((pos, line_end));
    }

    let mut out = Vec::with_capacity(spans.len());
    let mut head = vec![0u8; MAX_LINE_BYTES];
    for (start, end) in spans.into_iter().rev() {
        let len = ((end - start) as usize).min(MAX_LINE_BYTES);
        file.read_exact_at(&mut head[..len], start)?;
        out.push(line_text(&head[..len]));
    }
    Ok(out)
}

/// Lines of `path` written since `since` that contain one of `patterns`.
fn scan_file(
    current: Option<File>,
    rotated: impl FnOnce() -> io::Result<Option<File>>,
    since: Mark,
    patterns: &[String],
) -> io::Result<ScanResult> {
    let mut scan = Scan {
        patterns,
        budget: MAX_SCAN_BYTES,
        found: Vec::new(),
        finished_file: false,
    };
    let current_id = match &current {
        Some(f) => f.metadata()?.ino(),
        None => 0,
    };

    if let Some(file) = &current
        && current_id == since.file_id
    {
        let size = file.metadata()?.len();
        // Smaller than the mark: truncated in place (copytruncate); everything in
        // it now was written after the truncation.
        let from = if size < since.offset { 0 } else { since.offset };
        let next = scan.region(file, from, false)?;
        return Ok(scan.result(current_id, next));
    }

    // The file the mark belongs to was renamed away (or the mark predates the
    // file): finish the rotated file first, when it is the one the mark names.
    // The host opened `<path>.1` beneath the grant; the mark only says whether
    // that file is the one it belongs to.
    if since.file_id != 0
        && let Some(old) = rotated()?
        && old.metadata()?.ino() == since.file_id
    {
        let next = scan.region(&old, since.offset, true)?;
        if !scan.finished_file {
            // Stopped inside the rotated file: the next scan goes on there.
            return Ok(scan.result(since.file_id, next));
        }
    }
    match &current {
        Some(file) => {
            let next = scan.region(file, 0, false)?;
            Ok(scan.result(current_id, next))
        }
        None => Ok(scan.result(0, 0)),
    }
}

/// One scan's limits and findings, carried from the rotated file to the new one.
struct Scan<'a> {
    patterns: &'a [String],
    /// Bytes this scan may still read.
    budget: u64,
    found: Vec<Found>,
    /// Whether the last region was read to its end (rather than stopped by a limit).
    finished_file: bool,
}

impl Scan<'_> {
    fn result(self, file_id: u64, offset: u64) -> ScanResult {
        ScanResult {
            found: self.found,
            next: Mark { file_id, offset },
        }
    }

    /// Reads `file` from `from` and returns the offset after the last line
    /// consumed. Only lines ending in a newline are consumed, except in a rotated
    /// file (`take_partial`), which will never be completed.
    fn region(&mut self, file: &File, from: u64, take_partial: bool) -> io::Result<u64> {
        self.finished_file = false;
        let mut reader = file;
        reader.seek(SeekFrom::Start(from))?;
        let mut buf = vec![0u8; CHUNK];
        // The current line's first bytes (what patterns are matched against) and
        // where it started.
        let mut line: Vec<u8> = Vec::new();
        let mut line_start = from;
        let mut pos = from;
        let mut eof = false;
        while self.budget > 0 {
            let want = (self.budget.min(CHUNK as u64)) as usize;
            let got = reader.read(&mut buf[..want])?;
            if got == 0 {
                eof = true;
                break;
            }
            self.budget -= got as u64;
            let mut rest = &buf[..got];
            while !rest.is_empty() {
                match rest.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        self.push_bytes(&mut line, &rest[..i]);
                        pos += i as u64 + 1;
                        rest = &rest[i + 1..];
                        self.line(&line);
                        line.clear();
                        line_start = pos;
                        if self.found.len() >= MAX_MATCHES {
                            return Ok(line_start);
                        }
                    }
                    None => {
                        self.push_bytes(&mut line, rest);
                        pos += rest.len() as u64;
                        rest = &[];
                    }
                }
            }
        }
        if eof {
            if take_partial && pos > line_start {
                self.line(&line);
                line_start = pos;
            }
            self.finished_file = true;
        } else if line_start == from && pos > from {
            // The byte budget ran out inside a single line longer than the budget:
            // step over what was read, or every later scan would stop at the same
            // place.
            line_start = pos;
        }
        Ok(line_start)
    }

    fn push_bytes(&self, line: &mut Vec<u8>, bytes: &[u8]) {
        let room = MAX_MATCH_BYTES.saturating_sub(line.len());
        line.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn line(&mut self, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        if let Some(i) = self.patterns.iter().position(|p| text.contains(p.as_str())) {
            self.found.push(Found {
                pattern: i as u32,
                line: line_text(bytes),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::path::{Path, PathBuf};

    fn rotated_path(p: &Path) -> PathBuf {
        let mut name = p.as_os_str().to_owned();
        name.push(".1");
        name.into()
    }

    fn tail_file(p: &Path, n: usize) -> io::Result<Vec<String>> {
        super::tail_file(&File::open(p)?, n)
    }

    fn end_mark(p: &Path) -> io::Result<Mark> {
        super::end_mark(File::open(p).ok().as_ref())
    }

    fn scan_file(p: &Path, since: Mark, patterns: &[String]) -> io::Result<ScanResult> {
        super::scan_file(
            File::open(p).ok(),
            || Ok(File::open(rotated_path(p)).ok()),
            since,
            patterns,
        )
    }

    /// A plugin plants `<log>.1` as a link to a file outside its grants and hands
    /// `scan` a mark naming that file's inode: the host never opens the link.
    #[test]
    fn a_planted_rotated_link_is_never_read() {
        use crate::grants::{DirGrant, Grants};
        use posup_world::latest::types::Dir;
        let tmp = tempfile::tempdir().unwrap();
        let product = tmp.path().join("product");
        std::fs::create_dir(&product).unwrap();
        let secret = tmp.path().join("shadow");
        std::fs::write(&secret, "root:SECRET\n").unwrap();
        std::os::unix::fs::symlink(&secret, product.join("rot.1")).unwrap();
        std::os::unix::fs::symlink("../shadow", product.join("up.1")).unwrap();
        let roots = Roots::open(&Grants {
            dirs: vec![DirGrant {
                dir: Dir::Product,
                host: product.clone(),
                write: true,
            }],
            ..Grants::default()
        })
        .unwrap();
        let ino = std::fs::metadata(&secret).unwrap().ino();
        for name in ["/product/rot", "/product/up"] {
            let log = roots.locate(name, false).unwrap();
            let rotated = roots.locate(&format!("{name}.1"), false).unwrap();
            assert!(open_rotated(&rotated).unwrap().is_none());
            let r = super::scan_file(
                open_log(&log).unwrap(),
                || open_rotated(&rotated),
                Mark {
                    file_id: ino,
                    offset: 0,
                },
                &pats(&["SECRET"]),
            )
            .unwrap();
            assert!(
                r.found.is_empty(),
                "read through a planted link: {:?}",
                lines(&r)
            );
            let err = roots
                .locate(&format!("{name}.1"), false)
                .unwrap()
                .open_file()
                .unwrap_err();
            assert_eq!(err.kind, ErrorKind::Denied, "{}", err.message);
        }
    }

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn lines(r: &ScanResult) -> Vec<&str> {
        r.found.iter().map(|f| f.line.as_str()).collect()
    }

    fn key(m: &Mark) -> (u64, u64) {
        (m.file_id, m.offset)
    }

    fn pats(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn scan_reads_only_new_lines_and_names_the_pattern() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("kiosk.log");
        append(&log, "old ERROR before the mark\n");
        let mark = end_mark(&log).unwrap();
        append(
            &log,
            "INFO start\nERROR [KioskApp] Failed\nState changed: STARTING -> IDLE\n",
        );
        let r = scan_file(&log, mark, &pats(&["-> IDLE", "ERROR"])).unwrap();
        assert_eq!(
            lines(&r),
            ["ERROR [KioskApp] Failed", "State changed: STARTING -> IDLE"]
        );
        assert_eq!(r.found[0].pattern, 1);
        assert_eq!(r.found[1].pattern, 0);
        assert_eq!(key(&r.next), key(&end_mark(&log).unwrap()));
        // Nothing new: nothing found, the mark stays.
        let again = scan_file(&log, r.next, &pats(&["ERROR"])).unwrap();
        assert!(again.found.is_empty());
        assert_eq!(key(&again.next), key(&r.next));
    }

    #[test]
    fn partial_last_line_waits_for_its_newline() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("kiosk.log");
        append(&log, "");
        let mark = end_mark(&log).unwrap();
        append(&log, "ERROR one\nERROR tw");
        let r = scan_file(&log, mark, &pats(&["ERROR"])).unwrap();
        assert_eq!(lines(&r), ["ERROR one"]);
        assert_eq!(r.next.offset, "ERROR one\n".len() as u64);
        append(&log, "o\r\n");
        let r = scan_file(&log, r.next, &pats(&["ERROR"])).unwrap();
        assert_eq!(lines(&r), ["ERROR two"]);
    }

    #[test]
    fn rotation_by_rename_reads_the_rest_of_the_old_file_first() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("kiosk.log");
        append(&log, "ERROR seen before\n");
        let mark = end_mark(&log).unwrap();
        append(&log, "ERROR late in the old file\nERROR unfinished");
        std::fs::rename(&log, rotated_path(&log)).unwrap();
        append(&log, "ERROR first in the new file\n");
        let r = scan_file(&log, mark, &pats(&["ERROR"])).unwrap();
        assert_eq!(
            lines(&r),
            [
                "ERROR late in the old file",
                "ERROR unfinished",
                "ERROR first in the new file"
            ]
        );
        assert_eq!(key(&r.next), key(&end_mark(&log).unwrap()));
    }

    #[test]
    fn rotation_before_the_file_reappears() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("kiosk.log");
        append(&log, "x\n");
        let mark = end_mark(&log).unwrap();
        append(&log, "ERROR in the old file\n");
        std::fs::rename(&log, rotated_path(&log)).unwrap();
        let r = scan_file(&log, mark, &pats(&["ERROR"])).unwrap();
        assert_eq!(lines(&r), ["ERROR in the old file"]);
        assert_eq!(key(&r.next), (0, 0));
        append(&log, "ERROR new\n");
        let r = scan_file(&log, r.next, &pats(&["ERROR"])).unwrap();
        assert_eq!(lines(&r), ["ERROR new"]);
    }

    #[test]
    fn missing_file_marks_zero_and_is_read_from_its_start() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("kiosk.log");
        let mark = end_mark(&log).unwrap();
        assert_eq!(key(&mark), (0, 0));
        append(&log, "ERROR at once\n");
        let r = scan_file(&log, mark, &pats(&["ERROR"])).unwrap();
        assert_eq!(lines(&r), ["ERROR at once"]);
    }

    #[test]
    fn copytruncate_reads_from_the_start() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("kiosk.log");
        append(
            &log,
            "a fairly long line written before the mark was taken\n",
        );
        let mark = end_mark(&log).unwrap();
        std::fs::copy(&log, rotated_path(&log)).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&log)
            .unwrap()
            .set_len(0)
            .unwrap();
        append(&log, "ERROR after truncation\n");
        let r = scan_file(&log, mark, &pats(&["ERROR"])).unwrap();
        assert_eq!(lines(&r), ["ERROR after truncation"]);
        assert_eq!(key(&r.next), key(&end_mark(&log).unwrap()));
    }

    #[test]
    fn a_rotated_file_of_another_inode_is_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("kiosk.log");
        append(&log, "x\n");
        let mark = end_mark(&log).unwrap();
        // Rotated twice: `.1` is no longer the file of the mark.
        std::fs::rename(&log, tmp.path().join("kiosk.log.2")).unwrap();
        append(&rotated_path(&log), "ERROR in some other file\n");
        append(&log, "ERROR new\n");
        let r = scan_file(&log, mark, &pats(&["ERROR"])).unwrap();
        assert_eq!(lines(&r), ["ERROR new"]);
    }

    #[test]
    fn matches_are_bounded_and_the_mark_continues_after_the_last() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("kiosk.log");
        let mut text = String::new();
        for i in 0..MAX_MATCHES + 5 {
            text.push_str(&format!("ERROR {i}\n"));
        }
        append(&log, &text);
        let r = scan_file(
            &log,
            Mark {
                file_id: 0,
                offset: 0,
            },
            &pats(&["ERROR"]),
        )
        .unwrap();
        assert_eq!(r.found.len(), MAX_MATCHES);
        let r = scan_file(&log, r.next, &pats(&["ERROR"])).unwrap();
        let expected: Vec<String> = (MAX_MATCHES..MAX_MATCHES + 5)
            .map(|i| format!("ERROR {i}"))
            .collect();
        assert_eq!(lines(&r), expected);
        assert_eq!(key(&r.next), key(&end_mark(&log).unwrap()));
    }

    #[test]
    fn tail_returns_the_last_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("kiosk.log");
        append(&log, "one\n\nthree\r\nfour");
        assert_eq!(tail_file(&log, 2).unwrap(), ["three", "four"]);
        assert_eq!(tail_file(&log, 10).unwrap(), ["one", "", "three", "four"]);
        assert!(tail_file(&log, 0).unwrap().is_empty());
        append(&log, "\n");
        assert_eq!(tail_file(&log, 1).unwrap(), ["four"]);
        let empty = tmp.path().join("empty.log");
        append(&empty, "");
        assert!(tail_file(&empty, 5).unwrap().is_empty());
        let err = tail_file(&tmp.path().join("missing.log"), 5).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn tail_of_a_big_file_with_long_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("big.log");
        // About 20 MiB: many chunks to walk back over, lines crossing chunk edges.
        let mut f = std::io::BufWriter::new(File::create(&log).unwrap());
        for i in 0..300_000 {
            writeln!(
                f,
                "2026-11-22 18:00:00.123 INFO  [Order] line {i:07} {}",
                "x".repeat(i % 97)
            )
            .unwrap();
        }
        writeln!(f, "{}", "L".repeat(3 * MAX_LINE_BYTES)).unwrap();
        writeln!(f, "the end").unwrap();
        drop(f);
        let tail = tail_file(&log, 3).unwrap();
        assert_eq!(tail.len(), 3);
        assert!(tail[0].contains("line 0299999"), "{}", tail[0]);
        assert_eq!(tail[1], "L".repeat(MAX_LINE_BYTES));
        assert_eq!(tail[2], "the end");
        let many = tail_file(&log, MAX_TAIL_LINES as usize).unwrap();
        assert_eq!(many.len(), MAX_TAIL_LINES as usize);
        assert!(many[0].contains(&format!(
            "line {:07}",
            300_000 - (MAX_TAIL_LINES as usize - 2)
        )));
    }

    #[test]
    fn patterns_are_checked() {
        assert_eq!(
            check_patterns("/logs/x", &[]).unwrap_err().kind,
            posup_world::latest::types::ErrorKind::Invalid
        );
        assert_eq!(
            check_patterns("/logs/x", &pats(&[""])).unwrap_err().kind,
            posup_world::latest::types::ErrorKind::Invalid
        );
        let many = vec!["a".to_string(); MAX_PATTERNS + 1];
        assert_eq!(
            check_patterns("/logs/x", &many).unwrap_err().kind,
            posup_world::latest::types::ErrorKind::Limit
        );
        assert!(check_patterns("/logs/x", &pats(&["ERROR"])).is_ok());
    }

    #[tokio::test]
    async fn host_calls_go_through_the_grants() {
        use crate::grants::{DirGrant, Grants};
        use logs::Host as _;
        use posup_world::latest::types::{Dir, ErrorKind};
        let tmp = tempfile::tempdir().unwrap();
        append(&tmp.path().join("kiosk.log"), "a\nb\n");
        let grants = Grants {
            dirs: vec![DirGrant {
                dir: Dir::Logs,
                host: tmp.path().to_path_buf(),
                write: false,
            }],
            ..Grants::default()
        };
        let mut state = LogsState::new(Arc::new(Roots::open(&grants).unwrap()), Work::default());
        assert_eq!(
            state.tail("/logs/kiosk.log".into(), 1).await.unwrap(),
            ["b"]
        );
        let err = state.tail("/product/x.log".into(), 1).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Denied);
        let err = state.tail("/logs/none.log".into(), 1).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
        assert!(err.message.contains("/logs/none.log"), "{}", err.message);
        let mark = state.end("/logs/kiosk.log".into()).await.unwrap();
        assert_eq!(mark.offset, 4);
    }
}
