//! Content-addressed blobs on the filesystem: plugins and packages, each stored
//! once under its sha256 (`<root>/sha256/ab/abcdef…`), and served with `Range` and
//! `ETag`.
//!
//! **Invariant:** a blob file, once in place, never changes: it is written to a
//! temporary file in the same filesystem and renamed into place, so concurrent
//! readers (and other server processes sharing the folder) never see a partial file.

use std::path::{Path, PathBuf};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::error::{Error, Result};

/// Bytes read from disk per chunk of a download.
const CHUNK: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct Blobs {
    root: PathBuf,
}

/// An upload written to a temporary directory, hashed, not yet in the store.
#[derive(Debug)]
pub struct Staged {
    /// Holds the temporary directory; dropped, it is removed.
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
}

impl Blobs {
    /// Opens (creating) the blob folder.
    pub fn open(root: &Path) -> std::io::Result<Blobs> {
        std::fs::create_dir_all(root.join("sha256"))?;
        std::fs::create_dir_all(root.join("tmp"))?;
        Ok(Blobs {
            root: root.to_owned(),
        })
    }

    pub fn path(&self, sha256: &str) -> PathBuf {
        self.root.join("sha256").join(&sha256[..2]).join(sha256)
    }

    /// Writes a request body to a fresh temporary directory as `file_name`, hashing
    /// it on the way; refuses bodies over `max` bytes.
    pub async fn stage_body(&self, body: Body, file_name: &str, max: u64) -> Result<Staged> {
        let dir = tempfile::Builder::new()
            .prefix("upload-")
            .tempdir_in(self.root.join("tmp"))
            .map_err(|e| Error::internal("creating an upload directory", e))?;
        let path = dir.path().join(file_name);
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| Error::internal("creating an upload file", e))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                Error::BadRequest(format!("reading the upload of {file_name} failed: {e}"))
            })?;
            size += chunk.len() as u64;
            if size > max {
                return Err(Error::TooLarge(format!(
                    "{file_name} is larger than the limit of {max} bytes: raise max_package_mb in the server configuration"
                )));
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| Error::internal("writing an upload", e))?;
        }
        file.sync_all()
            .await
            .map_err(|e| Error::internal("writing an upload", e))?;
        Ok(Staged {
            dir,
            path,
            sha256: hex::encode(hasher.finalize()),
            size,
        })
    }

    /// Moves a staged upload into the store under its hash. A blob with the same
    /// hash already there is kept (it has the same content).
    pub async fn commit(&self, staged: &Staged) -> Result<()> {
        let target = self.path(&staged.sha256);
        if tokio::fs::try_exists(&target).await.unwrap_or(false) {
            return Ok(());
        }
        let parent = target.parent().expect("blob paths have a parent");
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| Error::internal("creating a blob directory", e))?;
        tokio::fs::rename(&staged.path, &target)
            .await
            .map_err(|e| Error::internal("moving an upload into the blob store", e))
    }

    /// Stores bytes already in memory; returns their sha256.
    pub async fn put(&self, bytes: &[u8]) -> Result<String> {
        let sha256 = hex::encode(Sha256::digest(bytes));
        let target = self.path(&sha256);
        if tokio::fs::try_exists(&target).await.unwrap_or(false) {
            return Ok(sha256);
        }
        let dir = tempfile::Builder::new()
            .prefix("put-")
            .tempdir_in(self.root.join("tmp"))
            .map_err(|e| Error::internal("creating an upload directory", e))?;
        let tmp = dir.path().join("blob");
        tokio::fs::write(&tmp, bytes)
            .await
            .map_err(|e| Error::internal("writing a blob", e))?;
        let parent = target.parent().expect("blob paths have a parent");
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| Error::internal("creating a blob directory", e))?;
        tokio::fs::rename(&tmp, &target)
            .await
            .map_err(|e| Error::internal("moving a blob into place", e))?;
        Ok(sha256)
    }

    pub async fn read(&self, sha256: &str) -> Result<Vec<u8>> {
        tokio::fs::read(self.path(sha256))
            .await
            .map_err(|e| Error::internal(&format!("reading blob {sha256}"), e))
    }

    /// Removes a blob no record refers to any more.
    pub async fn remove(&self, sha256: &str) {
        if let Err(e) = tokio::fs::remove_file(self.path(sha256)).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("removing unused blob {sha256}: {e}");
        }
    }

    /// Answers a download of blob `sha256` (`size` bytes): the whole file, one
    /// range of it (206), 416 for a range outside it, or 304 when the client's copy
    /// is current. The ETag is the sha256.
    pub async fn serve(
        &self,
        sha256: &str,
        size: u64,
        request: &HeaderMap,
        file_name: Option<&str>,
    ) -> Result<Response> {
        let etag = format!("\"{sha256}\"");
        let matches_etag = |value: &HeaderValue| {
            value
                .to_str()
                .map(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
                .unwrap_or(false)
        };
        let mut builder = Response::builder()
            .header(header::ETAG, &etag)
            .header(header::ACCEPT_RANGES, "bytes")
            .header(
                header::CACHE_CONTROL,
                "private, max-age=31536000, immutable",
            );
        if request.get(header::IF_NONE_MATCH).is_some_and(matches_etag) {
            return builder
                .status(StatusCode::NOT_MODIFIED)
                .body(Body::empty())
                .map_err(|e| Error::internal("building a response", e));
        }
        // A Range applies only when If-Range (if any) names the current ETag.
        let range_applies = request
            .get(header::IF_RANGE)
            .is_none_or(|v| v.to_str().map(|v| v.trim() == etag).unwrap_or(false));
        let range = match request.get(header::RANGE) {
            Some(value) if range_applies => parse_range(value.to_str().unwrap_or(""), size)?,
            _ => None,
        };
        let (status, start, len) = match range {
            Some((start, end)) => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
            None => (StatusCode::OK, 0, size),
        };
        builder = builder
            .status(status)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, len);
        if status == StatusCode::PARTIAL_CONTENT {
            builder = builder.header(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{size}", start, start + len - 1),
            );
        }
        if let Some(name) = file_name {
            builder = builder.header(
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            );
        }
        let mut file = tokio::fs::File::open(self.path(sha256))
            .await
            .map_err(|e| Error::internal(&format!("opening blob {sha256}"), e))?;
        if start > 0 {
            file.seek(std::io::SeekFrom::Start(start))
                .await
                .map_err(|e| Error::internal(&format!("seeking in blob {sha256}"), e))?;
        }
        let stream = futures::stream::unfold((file, len), |(mut file, left)| async move {
            if left == 0 {
                return None;
            }
            let mut buf = vec![0u8; CHUNK.min(left as usize)];
            match file.read(&mut buf).await {
                Ok(0) => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "blob shorter than recorded",
                    )),
                    (file, 0),
                )),
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Bytes::from(buf)), (file, left - n as u64)))
                }
                Err(e) => Some((Err(e), (file, 0))),
            }
        });
        builder
            .body(Body::from_stream(stream))
            .map_err(|e| Error::internal("building a response", e))
    }
}

/// Parses one `bytes=` range against a blob of `size` bytes into inclusive
/// `(start, end)`. Malformed headers and several ranges are ignored (`None`: the
/// whole file is sent, as RFC 9110 allows); a range outside the file is an error.
pub fn parse_range(value: &str, size: u64) -> Result<Option<(u64, u64)>> {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let unsatisfiable = Err(Error::RangeNotSatisfiable { size });
    match (first.trim(), last.trim()) {
        ("", "") => Ok(None),
        ("", suffix) => match suffix.parse::<u64>() {
            Ok(0) => unsatisfiable,
            Ok(_) if size == 0 => unsatisfiable,
            Ok(n) => Ok(Some((size.saturating_sub(n), size - 1))),
            Err(_) => Ok(None),
        },
        (start, end) => {
            let Ok(start) = start.parse::<u64>() else {
                return Ok(None);
            };
            let end = if end.is_empty() {
                u64::MAX
            } else {
                match end.parse::<u64>() {
                    Ok(e) if e >= start => e,
                    _ => return Ok(None),
                }
            };
            if start >= size {
                return unsatisfiable;
            }
            Ok(Some((start, end.min(size - 1))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100).unwrap(), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100).unwrap(), Some((90, 99)));
        assert_eq!(parse_range("bytes=90-500", 100).unwrap(), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100).unwrap(), Some((90, 99)));
        assert_eq!(parse_range("bytes=-500", 100).unwrap(), Some((0, 99)));
        assert_eq!(parse_range("bytes=0-1,5-6", 100).unwrap(), None);
        assert_eq!(parse_range("items=0-1", 100).unwrap(), None);
        assert_eq!(parse_range("bytes=9-1", 100).unwrap(), None);
        assert!(parse_range("bytes=100-", 100).is_err());
        assert!(parse_range("bytes=-0", 100).is_err());
    }
}
