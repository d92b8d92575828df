//! Builds the sample update packages under `packages/` into the real archives the
//! demo and the tests install.
//!
//! A package source is a folder with a `package.toml` and a `content/` tree:
//!
//! ```toml
//! file = "ukm5_pos_1.8.4.tgz"   # the archive's name; its ending picks the format:
//!                               # .tgz / .tar.gz, .tar.bz2, .tar, .zip or .obx
//! device_type = "ukm5"
//! note = "Fiscal printer driver update"
//! ```
//!
//! Archives are reproducible: entries sorted, owner root, one fixed modification
//! time, so the same source always gives the same bytes (and the same sha256).

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The modification time of every entry: 2026-01-01T00:00:00Z.
const MTIME: u64 = 1_767_225_600;

/// What `package.toml` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub file: String,
    pub device_type: String,
    pub note: String,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Reads `<source>/package.toml`.
pub fn manifest(source: &Path) -> io::Result<Manifest> {
    let path = source.join("package.toml");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    let field = |name: &str| -> io::Result<String> {
        table
            .get(name)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .ok_or_else(|| invalid(format!("{}: `{name} = \"…\"` is missing", path.display())))
    };
    let file = field("file")?;
    if file.contains('/') || file.starts_with('.') {
        return Err(invalid(format!(
            "{}: file = {file:?} must be a plain file name",
            path.display()
        )));
    }
    Ok(Manifest {
        file,
        device_type: field("device_type")?,
        note: table
            .get("note")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned(),
    })
}

/// Every package source below `root` (folders holding a `package.toml`), sorted.
pub fn sources(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if dir.join("package.toml").is_file() {
            found.push(dir);
            continue;
        }
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Builds the package at `source` into `out_dir`; returns the archive's path.
pub fn build(source: &Path, out_dir: &Path) -> io::Result<PathBuf> {
    let manifest = manifest(source)?;
    let content = source.join("content");
    if !content.is_dir() {
        return Err(invalid(format!(
            "{}: the package has no content/ folder",
            source.display()
        )));
    }
    std::fs::create_dir_all(out_dir)?;
    let out = out_dir.join(&manifest.file);
    let tmp = out_dir.join(format!(".{}.partial", manifest.file));
    let files = walk(&content)?;
    let name = manifest.file.as_str();
    // Openbravo modules (`.obx`) are zip files under their own ending.
    if name.ends_with(".zip") || name.ends_with(".obx") {
        write_zip(&content, &files, File::create(&tmp)?)?;
    } else if name.ends_with(".tgz") || name.ends_with(".tar.gz") {
        let gz = flate2::write::GzEncoder::new(File::create(&tmp)?, flate2::Compression::default());
        write_tar(&content, &files, gz)?.finish()?.sync_all()?;
    } else if name.ends_with(".tar.bz2") {
        let bz = bzip2::write::BzEncoder::new(File::create(&tmp)?, bzip2::Compression::default());
        write_tar(&content, &files, bz)?.finish()?.sync_all()?;
    } else if name.ends_with(".tar") {
        write_tar(&content, &files, File::create(&tmp)?)?.sync_all()?;
    } else {
        return Err(invalid(format!(
            "{}: cannot tell the archive format of {name}; end it in .tgz, .tar.gz, .tar.bz2, .tar, .zip or .obx",
            source.display()
        )));
    }
    std::fs::rename(&tmp, &out)?;
    Ok(out)
}

/// Relative paths of every entry below `root`, sorted, so a directory comes
/// before its contents.
fn walk(root: &Path) -> io::Result<Vec<PathBuf>> {
    fn visit(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
        for entry in std::fs::read_dir(root.join(rel))? {
            let entry = entry?;
            let child = rel.join(entry.file_name());
            let is_dir = entry.file_type()?.is_dir();
            out.push(child.clone());
            if is_dir {
                visit(root, &child, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    visit(root, Path::new(""), &mut out)?;
    out.sort();
    Ok(out)
}

fn mode_of(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o777
}

fn write_tar<W: Write>(root: &Path, files: &[PathBuf], w: W) -> io::Result<W> {
    let mut tar = tar::Builder::new(w);
    tar.mode(tar::HeaderMode::Deterministic);
    for rel in files {
        let path = root.join(rel);
        let meta = std::fs::symlink_metadata(&path)?;
        let mut header = tar::Header::new_gnu();
        header.set_mtime(MTIME);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mode(mode_of(&meta));
        if meta.file_type().is_symlink() {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            tar.append_link(&mut header, rel, std::fs::read_link(&path)?)?;
        } else if meta.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            tar.append_data(&mut header, rel, io::empty())?;
        } else {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(meta.len());
            tar.append_data(&mut header, rel, File::open(&path)?)?;
        }
    }
    tar.into_inner()
}

fn write_zip(root: &Path, files: &[PathBuf], f: File) -> io::Result<()> {
    let mut zip = zip::ZipWriter::new(f);
    let time = zip::DateTime::from_date_and_time(2026, 1, 1, 0, 0, 0).expect("a valid date");
    for rel in files {
        let path = root.join(rel);
        let meta = std::fs::symlink_metadata(&path)?;
        let name = rel.to_string_lossy().replace('\\', "/");
        let options = zip::write::SimpleFileOptions::default()
            .last_modified_time(time)
            .unix_permissions(mode_of(&meta));
        if meta.is_dir() {
            zip.add_directory(format!("{name}/"), options)
                .map_err(io::Error::other)?;
        } else {
            zip.start_file(name, options).map_err(io::Error::other)?;
            io::copy(&mut File::open(&path)?, &mut zip)?;
        }
    }
    zip.finish().map_err(io::Error::other)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(dir: &Path, file: &str) -> PathBuf {
        let src = dir.join("src");
        std::fs::create_dir_all(src.join("content/bin")).unwrap();
        std::fs::write(
            src.join("package.toml"),
            format!("file = \"{file}\"\ndevice_type = \"ukm5\"\nnote = \"n\"\n"),
        )
        .unwrap();
        std::fs::write(src.join("content/version"), "1.8.4\n").unwrap();
        std::fs::write(src.join("content/bin/up.sh"), "#!/bin/sh\n").unwrap();
        src
    }

    #[test]
    fn archives_are_reproducible_and_hold_the_content() {
        let tmp = tempfile::tempdir().unwrap();
        let src = source(tmp.path(), "ukm5_pos_1.8.4.tgz");
        let a = build(&src, &tmp.path().join("a")).unwrap();
        let b = build(&src, &tmp.path().join("b")).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let gz = flate2::read::GzDecoder::new(File::open(&a).unwrap());
        let mut names: Vec<String> = tar::Archive::new(gz)
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, vec!["bin", "bin/up.sh", "version"]);
    }

    #[test]
    fn every_format_builds() {
        for name in ["p_1.tar.bz2", "p_1.zip", "p_1.tar", "p_1.tar.gz", "p_1.obx"] {
            let tmp = tempfile::tempdir().unwrap();
            let src = source(tmp.path(), name);
            let out = build(&src, &tmp.path().join("out")).unwrap();
            assert!(std::fs::metadata(&out).unwrap().len() > 0, "{name}");
        }
    }

    #[test]
    fn an_unknown_format_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let src = source(tmp.path(), "p_1.rar");
        let err = build(&src, &tmp.path().join("out")).unwrap_err();
        assert!(err.to_string().contains("p_1.rar"), "{err}");
    }
}
