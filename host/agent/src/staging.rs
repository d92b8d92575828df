//! Putting a verified package into the staging folder.
//!
//! Staging is writable by the plugin, so anything there may be a link the plugin
//! planted. Downloads therefore land in the agent's own `<state>/downloads`
//! (mode 0700, named by sha256), and a package reaches staging only through
//! [`place`]: the staging folder is opened as a real directory, the name comes
//! from outside and must be one plain component, the copy is created with
//! `O_EXCL | O_NOFOLLOW` under a hidden name and renamed over nothing.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags};
use sha2::{Digest, Sha256};

/// Copies `src` into the folder `staging` as `name`, through the folder's handle,
/// and returns its path and the sha256 of the bytes placed. A file already there
/// under that name is replaced; a link there is removed, never followed; a
/// directory there is an error.
pub fn place(src: &Path, staging: &Path, name: &str) -> io::Result<(PathBuf, String)> {
    posup_runtime::beneath::file_name(name)
        .map_err(|m| io::Error::new(io::ErrorKind::InvalidInput, m))?;
    let dir = posup_runtime::beneath::open_real_dir(staging)
        .map_err(|e| io::Error::new(e.kind(), format!("staging {}: {e}", staging.display())))?;
    let mut input = File::open(src)?;
    let tmp = format!(".{name}.posup-partial");
    match rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    let mut output = File::from(rustix::fs::openat(
        &dir,
        tmp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::RUSR | Mode::WUSR | Mode::RGRP | Mode::ROTH,
    )?);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = io::Read::read(&mut input, &mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        output.write_all(&buf[..n])?;
    }
    output.sync_all()?;
    match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
            let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} holds a directory named {name}; remove it",
                    staging.display()
                ),
            ));
        }
        Ok(_) => rustix::fs::unlinkat(&dir, name, AtFlags::empty())?,
        Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    rustix::fs::renameat_with(
        &dir,
        tmp.as_str(),
        &dir,
        OsStr::new(name),
        RenameFlags::NOREPLACE,
    )?;
    let _ = rustix::fs::fsync(&dir);
    Ok((staging.join(name), hex::encode(hasher.finalize())))
}

/// Whether a sha256 from the server is 64 lowercase hex digits, so it can name a
/// file.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planted_link_is_replaced_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let staging = tmp.path().join("staging");
        std::fs::create_dir(&staging).unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let src = tmp.path().join("pkg");
        std::fs::write(&src, b"package bytes").unwrap();
        std::os::unix::fs::symlink(&victim, staging.join("pkg.tgz")).unwrap();
        std::os::unix::fs::symlink(&victim, staging.join(".pkg.tgz.posup-partial")).unwrap();
        let (path, sha) = place(&src, &staging, "pkg.tgz").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(&path).unwrap(), b"package bytes");
        assert!(
            !std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(sha, hex::encode(Sha256::digest(b"package bytes")));
    }

    #[test]
    fn names_from_outside_are_one_component() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("pkg");
        std::fs::write(&src, b"x").unwrap();
        for bad in ["/etc/cron.d/x", "../x", "a/b", "", "..", ".hidden"] {
            let err = place(&src, tmp.path(), bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad}");
        }
        assert!(is_sha256(&"a".repeat(64)));
        assert!(!is_sha256("../../etc/passwd"));
    }

    #[test]
    fn a_staging_folder_that_is_a_link_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("real")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("real"), tmp.path().join("staging")).unwrap();
        let src = tmp.path().join("pkg");
        std::fs::write(&src, b"x").unwrap();
        let err = place(&src, &tmp.path().join("staging"), "pkg").unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }
}
