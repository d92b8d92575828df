//! Reading without unpacking: listing entries and reading one into memory,
//! both bounded.

use std::io::{self, Read};

use posup_world::latest::archive::{Entry, EntryKind};

use crate::beneath::Roots;
use crate::caps::{CapError, CapResult};

use super::formats::{
    Format, lossy, open, open_zip, read_error, tar_kind, with_tar_stream, zip_error, zip_kind,
    zip_name,
};
use super::{
    ArchiveLimits, MAX_EXTENSION, MAX_LINK, MAX_LIST_BYTES, MAX_LIST_ENTRIES, MAX_READ_ENTRY,
};

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
pub(super) struct Listing<'a> {
    archive: &'a str,
    max_entries: u64,
    bytes: u64,
}

impl<'a> Listing<'a> {
    pub(super) fn new(archive: &'a str, limits: &ArchiveLimits) -> Self {
        Self {
            archive,
            max_entries: limits.max_entries.min(MAX_LIST_ENTRIES),
            bytes: 0,
        }
    }

    pub(super) fn count(&self, n: u64) -> CapResult<()> {
        if n > self.max_entries {
            return Err(CapError::limit(format!(
                "{}: holds more than the {} entries one listing may return; read single entries or extract it",
                self.archive, self.max_entries
            )));
        }
        Ok(())
    }

    pub(super) fn bytes(&mut self, n: usize) -> CapResult<()> {
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
pub(super) fn tar_entries(
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
pub(super) fn loose(name: &[u8]) -> Vec<&[u8]> {
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
