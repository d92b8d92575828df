//! Downloads of packages and plugins: resumable, checked before use.
//!
//! A blob is written to `<file>.part` beside its final name. A broken connection
//! leaves the part file as far as it got; the next attempt asks for the rest with
//! `Range: bytes=<offset>-` and `If-Range: "<sha256>"`, so an unchanged blob is
//! continued and a changed one is sent whole. Only when the complete file has the
//! expected size and sha256 is it renamed to its final name: a file under the final
//! name has always been checked. A file that fails the check is deleted.
//!
//! Before any byte is fetched the filesystem must have room for the rest of the
//! blob plus a margin, so a download never fills the terminal's disk.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use posup_runtime::beneath;
use rustix::fs::{AtFlags, Mode, OFlags};
use sha2::{Digest, Sha256};

use crate::client::{Client, ClientError};

/// Room left free on the filesystem beyond the blob itself.
pub const SPACE_MARGIN: u64 = 16 << 20;

/// What the blob must be.
#[derive(Debug, Clone)]
pub struct Expected {
    pub sha256: String,
    pub size: u64,
}

/// Why a download did not produce a checked file.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The transfer broke off; what arrived is kept and the next attempt resumes.
    #[error(
        "download of {name} broke off at byte {offset} of {size}: {reason}; it resumes from there"
    )]
    Interrupted {
        name: String,
        offset: u64,
        size: u64,
        reason: String,
    },
    /// The file arrived whole but is not the blob named: it was deleted.
    #[error(
        "{name}: the downloaded file has sha256 {actual} and {actual_size} bytes, the server announced {expected} and {expected_size} bytes; it was deleted and is not used"
    )]
    Corrupt {
        name: String,
        expected: String,
        actual: String,
        expected_size: u64,
        actual_size: u64,
    },
    #[error(
        "{name}: not enough disk space on {dir}: {free} bytes free, {needed} needed; free some space"
    )]
    NoSpace {
        name: String,
        dir: String,
        free: u64,
        needed: u64,
    },
    #[error("{name}: the server refused the download: {source}")]
    Server { name: String, source: ClientError },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl DownloadError {
    /// Whether another attempt later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            DownloadError::Interrupted { .. } | DownloadError::NoSpace { .. } => true,
            DownloadError::Server { source, .. } => source.is_transient(),
            DownloadError::Corrupt { .. } | DownloadError::Io { .. } => false,
        }
    }
}

/// How a finished download went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    pub path: PathBuf,
    /// Bytes fetched over the network in this call (0 when the file was there).
    pub fetched: u64,
    /// Where this call started: above 0 when it resumed a broken download.
    pub resumed_from: u64,
    /// The whole file was there already, under its final name, and checked.
    pub present: bool,
}

/// What stands at `name` in `folder`, opened without following it, when it is a
/// regular file. Anything else there (a link, a fifo) is removed: it is no
/// download of ours.
fn present(folder: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<File>> {
    match beneath::open_file_nofollow(folder, name) {
        Ok(file) => Ok(file),
        Err(e) => match rustix::fs::unlinkat(folder, name, AtFlags::empty()) {
            Ok(()) => Ok(None),
            Err(_) => Err(e),
        },
    }
}

/// The part file `name` in `folder`, opened (created, owner-only) for reading and
/// writing without following a link; a link there is removed first.
fn open_part(folder: BorrowedFd<'_>, name: &OsStr) -> io::Result<File> {
    let open = || {
        rustix::fs::openat(
            folder,
            name,
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        )
    };
    let fd = match open() {
        Err(rustix::io::Errno::LOOP) => {
            rustix::fs::unlinkat(folder, name, AtFlags::empty())?;
            open()?
        }
        other => other?,
    };
    let file = File::from(fd);
    beneath::regular(&file)?;
    Ok(file)
}

/// Downloads `path` (relative to the server's base) to `dest`, resuming a part
/// file left by an earlier attempt. `progress` is called with (bytes present,
/// total) as data arrives. Everything in `dest`'s folder (owner-only, made when
/// missing) goes through the folder's handle, and no link there is followed.
pub async fn fetch(
    client: &Client,
    path: &str,
    dest: &Path,
    expected: &Expected,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<Downloaded, DownloadError> {
    let io = |what: String| move |source| DownloadError::Io { what, source };
    let (dir, file_name) = match (dest.parent(), dest.file_name()) {
        (Some(dir), Some(file_name)) => (dir, file_name),
        _ => {
            return Err(DownloadError::Io {
                what: format!("placing {}", dest.display()),
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a file in a folder"),
            });
        }
    };
    let name = file_name.to_string_lossy().into_owned();
    let folder =
        beneath::open_private_dir(dir).map_err(io(format!("opening {}", dir.display())))?;
    let folder = folder.as_fd();

    // A file under the final name was checked when it got there; check it again
    // anyway, as it may have been damaged since, and fetch it anew if so.
    if let Some(mut present) =
        present(folder, file_name).map_err(io(format!("reading {}", dest.display())))?
    {
        let (sha, size) =
            hash_reader(&mut present).map_err(io(format!("reading {}", dest.display())))?;
        if sha == expected.sha256 && size == expected.size {
            return Ok(Downloaded {
                path: dest.to_owned(),
                fetched: 0,
                resumed_from: 0,
                present: true,
            });
        }
        rustix::fs::unlinkat(folder, file_name, AtFlags::empty())
            .map_err(|e| io(format!("removing {}", dest.display()))(e.into()))?;
    }

    let mut part_name = file_name.to_owned();
    part_name.push(".part");
    let part = dir.join(&part_name);
    let mut file =
        open_part(folder, &part_name).map_err(io(format!("opening {}", part.display())))?;
    let mut offset = file
        .metadata()
        .map_err(io(format!("reading {}", part.display())))?
        .len();
    if offset > expected.size {
        offset = 0;
    }
    let needed = expected.size - offset + SPACE_MARGIN;
    let free = rustix::fs::fstatvfs(folder)
        .map(|st| st.f_bavail.saturating_mul(st.f_frsize))
        .map_err(|e| io(format!("free space of {}", dir.display()))(e.into()))?;
    if free < needed {
        return Err(DownloadError::NoSpace {
            name,
            dir: dir.display().to_string(),
            free,
            needed,
        });
    }

    let resumed_from = offset;
    let mut fetched = 0u64;
    if offset < expected.size {
        let resp = client
            .get_blob(path, offset, Some(&expected.sha256))
            .await
            .map_err(|source| match source {
                ClientError::Unreachable { message, .. } => DownloadError::Interrupted {
                    name: name.clone(),
                    offset,
                    size: expected.size,
                    reason: message,
                },
                source => DownloadError::Server {
                    name: name.clone(),
                    source,
                },
            })?;
        match resp.status().as_u16() {
            206 => {}
            416 => {
                // The server has less than we hold: start over.
                file.set_len(0)
                    .map_err(io(format!("truncating {}", part.display())))?;
                return Err(DownloadError::Interrupted {
                    name,
                    offset: 0,
                    size: expected.size,
                    reason: "the server could not continue from this offset".into(),
                });
            }
            _ => {
                // A whole blob: what we held is dropped.
                file.set_len(0)
                    .map_err(io(format!("truncating {}", part.display())))?;
                offset = 0;
            }
        }
        file.seek(SeekFrom::Start(offset))
            .map_err(io(format!("writing {}", part.display())))?;
        progress(offset, expected.size);
        let mut stream = resp.bytes_stream();
        let stall = client.stall_timeout();
        loop {
            let next = match tokio::time::timeout(stall, stream.next()).await {
                Ok(next) => next,
                Err(_) => {
                    file.sync_data().ok();
                    return Err(DownloadError::Interrupted {
                        name,
                        offset,
                        size: expected.size,
                        reason: format!("nothing arrived for {} s", stall.as_secs_f64()),
                    });
                }
            };
            match next {
                None => break,
                Some(Ok(chunk)) => {
                    if offset + chunk.len() as u64 > expected.size {
                        // More than the named size is not this file (endless
                        // data): nothing of it is kept or tried again.
                        drop(file);
                        let _ = rustix::fs::unlinkat(folder, &part_name, AtFlags::empty());
                        return Err(DownloadError::Corrupt {
                            name,
                            expected: expected.sha256.clone(),
                            actual: "unknown (it went on past the size)".into(),
                            expected_size: expected.size,
                            actual_size: offset + chunk.len() as u64,
                        });
                    }
                    file.write_all(&chunk)
                        .map_err(io(format!("writing {}", part.display())))?;
                    offset += chunk.len() as u64;
                    fetched += chunk.len() as u64;
                    progress(offset, expected.size);
                }
                Some(Err(e)) => {
                    file.sync_data().ok();
                    return Err(DownloadError::Interrupted {
                        name,
                        offset,
                        size: expected.size,
                        reason: e.to_string(),
                    });
                }
            }
        }
        file.sync_all()
            .map_err(io(format!("writing {}", part.display())))?;
        if offset < expected.size {
            return Err(DownloadError::Interrupted {
                name,
                offset,
                size: expected.size,
                reason: "the connection closed early".into(),
            });
        }
    }

    file.seek(SeekFrom::Start(0))
        .map_err(io(format!("reading {}", part.display())))?;
    let (sha, size) = hash_reader(&mut file).map_err(io(format!("reading {}", part.display())))?;
    if sha != expected.sha256 || size != expected.size {
        let _ = rustix::fs::unlinkat(folder, &part_name, AtFlags::empty());
        return Err(DownloadError::Corrupt {
            name,
            expected: expected.sha256.clone(),
            actual: sha,
            expected_size: expected.size,
            actual_size: size,
        });
    }
    rustix::fs::renameat(folder, &part_name, folder, file_name)
        .map_err(|e| io(format!("placing {}", dest.display()))(e.into()))?;
    beneath::sync_dir(folder);
    Ok(Downloaded {
        path: dest.to_owned(),
        fetched,
        resumed_from,
        present: false,
    })
}

/// Downloads with retries: a broken transfer is resumed after a growing pause,
/// for as long as `keep_going` says the download is still wanted.
pub async fn fetch_with_retries(
    client: &Client,
    path: &str,
    dest: &Path,
    expected: &Expected,
    progress: &mut (dyn FnMut(u64, u64) + Send),
    backoff: &(dyn Fn(u32) -> Duration + Send + Sync),
    keep_going: &(dyn Fn() -> bool + Send + Sync),
) -> Result<Downloaded, DownloadError> {
    let mut failures = 0u32;
    let mut resumed_from = None;
    loop {
        match fetch(client, path, dest, expected, progress).await {
            Ok(mut done) => {
                if let Some(first) = resumed_from {
                    done.resumed_from = first;
                }
                return Ok(done);
            }
            Err(e) if e.is_transient() && keep_going() => {
                failures += 1;
                if let DownloadError::Interrupted { offset, .. } = &e {
                    resumed_from.get_or_insert(*offset);
                }
                let wait = backoff(failures);
                tracing::info!("{e}; retrying in {:.1} s", wait.as_secs_f64());
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// sha256 (hex) and size of a file.
pub fn hash_file(path: &Path) -> io::Result<(String, u64)> {
    hash_reader(&mut File::open(path)?)
}

fn hash_reader(reader: &mut impl io::Read) -> io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let size = io::copy(reader, &mut h)?;
    Ok((hex::encode(h.finalize()), size))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::client::Transport;

    /// A blob server speaking plain HTTP/1.1, so a test decides exactly how each
    /// answer ends. It records the Range header of each request and, while
    /// `cut_after` is set, announces the whole answer, sends only that many bytes
    /// of it and closes the connection.
    #[derive(Clone)]
    struct Blob {
        bytes: Arc<Vec<u8>>,
        ranges: Arc<Mutex<Vec<Option<String>>>>,
        cut_after: Arc<Mutex<Option<usize>>>,
    }

    async fn answer(b: Blob, mut sock: tokio::net::TcpStream) -> std::io::Result<()> {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = sock.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            head.extend_from_slice(&buf[..n]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        let range = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("range: ")
                    .or_else(|| l.strip_prefix("Range: "))
            })
            .map(|r| r.trim().to_owned());
        b.ranges.lock().unwrap().push(range.clone());
        let start = range
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|r| r.parse::<usize>().ok())
            .unwrap_or(0);
        let total = b.bytes.len();
        let body = &b.bytes[start..];
        let status = if start > 0 {
            "206 Partial Content"
        } else {
            "200 OK"
        };
        let header = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\ncontent-range: bytes {start}-{}/{total}\r\nconnection: close\r\n\r\n",
            body.len(),
            total - 1
        );
        sock.write_all(header.as_bytes()).await?;
        let cut = b.cut_after.lock().unwrap().take();
        sock.write_all(&body[..cut.unwrap_or(body.len())]).await?;
        sock.flush().await?;
        sock.shutdown().await
    }

    async fn server(blob: Blob) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let b = blob.clone();
                tokio::spawn(async move {
                    let _ = answer(b, sock).await;
                });
            }
        });
        addr
    }

    fn blob(len: usize) -> Blob {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        Blob {
            bytes: Arc::new(bytes),
            ranges: Arc::default(),
            cut_after: Arc::default(),
        }
    }

    fn expected(bytes: &[u8]) -> Expected {
        Expected {
            sha256: hex::encode(Sha256::digest(bytes)),
            size: bytes.len() as u64,
        }
    }

    /// Links planted where the download or its part file go are never followed:
    /// the files they point at keep their bytes, and the download lands as a
    /// file of its own.
    #[tokio::test]
    async fn a_download_never_writes_or_trusts_through_a_link() {
        let b = blob(50_000);
        let addr = server(b.clone()).await;
        let client = Client::new(&format!("http://{addr}"), &Transport::insecure()).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let downloads = tmp.path().join("downloads");
        std::fs::create_dir(&downloads).unwrap();
        let want = expected(&b.bytes);

        // A link to a file that already holds the right bytes is no download.
        let good = tmp.path().join("good");
        std::fs::write(&good, &*b.bytes).unwrap();
        let dest = downloads.join("a.tgz");
        std::os::unix::fs::symlink(&good, &dest).unwrap();
        std::os::unix::fs::symlink(&victim, downloads.join("a.tgz.part")).unwrap();
        let done = fetch(&client, "/blob", &dest, &want, &mut |_, _| {})
            .await
            .unwrap();
        assert_eq!(done.fetched, 50_000, "fetched, not taken from the link");
        assert!(
            !std::fs::symlink_metadata(&dest)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read(&dest).unwrap(), *b.bytes);
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(&good).unwrap(), *b.bytes);
    }

    #[tokio::test]
    async fn a_broken_download_resumes_from_its_offset_and_is_checked() {
        let b = blob(300_000);
        *b.cut_after.lock().unwrap() = Some(100_000);
        let addr = server(b.clone()).await;
        let client = Client::new(&format!("http://{addr}"), &Transport::insecure()).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("kiosk_7.5.0.tgz");
        let want = expected(&b.bytes);

        let err = fetch(&client, "/blob", &dest, &want, &mut |_, _| {})
            .await
            .unwrap_err();
        let DownloadError::Interrupted { offset, .. } = err else {
            panic!("expected an interruption, got {err}");
        };
        assert_eq!(offset, 100_000);
        assert!(
            !dest.exists(),
            "an unchecked file is never under the final name"
        );

        let mut seen = Vec::new();
        let done = fetch(&client, "/blob", &dest, &want, &mut |got, total| {
            seen.push((got, total))
        })
        .await
        .unwrap();
        assert_eq!(done.resumed_from, 100_000);
        assert_eq!(done.fetched, 200_000);
        assert_eq!(std::fs::read(&dest).unwrap(), *b.bytes);
        assert_eq!(seen.last(), Some(&(300_000, 300_000)));
        let ranges = b.ranges.lock().unwrap().clone();
        assert_eq!(ranges, vec![None, Some("bytes=100000-".to_owned())]);

        // Present and intact: nothing is fetched again.
        let again = fetch(&client, "/blob", &dest, &want, &mut |_, _| {})
            .await
            .unwrap();
        assert_eq!(again.fetched, 0);
        assert_eq!(b.ranges.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_file_that_fails_its_check_is_deleted_and_never_placed() {
        let b = blob(50_000);
        let addr = server(b.clone()).await;
        let client = Client::new(&format!("http://{addr}"), &Transport::insecure()).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("kiosk_7.5.0.tgz");
        let mut want = expected(&b.bytes);
        want.sha256 = "0".repeat(64);
        let err = fetch(&client, "/blob", &dest, &want, &mut |_, _| {})
            .await
            .unwrap_err();
        assert!(matches!(err, DownloadError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("deleted"), "{err}");
        assert!(!err.is_transient());
        assert!(!dest.exists());
        assert!(!tmp.path().join("kiosk_7.5.0.tgz.part").exists());
    }

    #[tokio::test]
    async fn more_bytes_than_named_fail_the_download_instead_of_retrying_it() {
        let b = blob(50_000);
        let addr = server(b.clone()).await;
        let client = Client::new(&format!("http://{addr}"), &Transport::insecure()).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("kiosk_7.5.0.tgz");
        // What was signed: the first 40 000 bytes; the server sends 50 000.
        let want = expected(&b.bytes[..40_000]);
        let err = fetch(&client, "/blob", &dest, &want, &mut |_, _| {})
            .await
            .unwrap_err();
        assert!(matches!(err, DownloadError::Corrupt { .. }), "{err}");
        assert!(
            !err.is_transient(),
            "endless data is no reason to try again"
        );
        assert!(!dest.exists());
        assert!(!tmp.path().join("kiosk_7.5.0.tgz.part").exists());
    }

    #[tokio::test]
    async fn no_download_starts_without_room_for_it() {
        let b = blob(10);
        let addr = server(b.clone()).await;
        let client = Client::new(&format!("http://{addr}"), &Transport::insecure()).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("huge.tgz");
        let want = Expected {
            sha256: "0".repeat(64),
            size: u64::MAX / 2,
        };
        let err = fetch(&client, "/blob", &dest, &want, &mut |_, _| {})
            .await
            .unwrap_err();
        assert!(matches!(err, DownloadError::NoSpace { .. }), "{err}");
        assert!(b.ranges.lock().unwrap().is_empty(), "nothing was requested");
    }
}
