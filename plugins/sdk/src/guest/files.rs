//! Reading files of the installation and entries of packages, by guest path.

use super::{ErrorKind, IoContext, Stop, archive};

/// Whether anything (file, folder or link) exists at a path.
pub fn exists(path: &str) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// The file name of a path.
pub fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// A small text file, trimmed; an error names the file.
pub fn read_trimmed(path: &str) -> Result<String, Stop> {
    Ok(std::fs::read_to_string(path).at(path)?.trim().to_owned())
}

/// `<prefix><version><suffix>` → `version`, for package file names such as
/// `dIceCash_2.0.060.tgz`. A version starts with a letter or digit and holds
/// only letters, digits, `.`, `-` and `_`, so it is safe in a path.
pub fn version_in_name<'a>(name: &'a str, prefix: &str, suffixes: &[&str]) -> Option<&'a str> {
    let rest = name.strip_prefix(prefix)?;
    suffixes
        .iter()
        .find_map(|s| rest.strip_suffix(s))
        .filter(|v| {
            v.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
        })
}

/// A text entry of a package archive, at most `max` bytes; `None` when the
/// package has no such entry. Entries are matched with and without a leading
/// `./`, as `tar` writes both.
pub fn package_text(package: &str, entry: &str, max: u64) -> Result<Option<String>, Stop> {
    let entry = entry.trim_start_matches("./");
    for name in [entry.to_owned(), format!("./{entry}")] {
        match archive::read_entry(package, &name, max) {
            Ok(bytes) => {
                return String::from_utf8(bytes)
                    .map(Some)
                    .map_err(|_| Stop::failed(format!("{package}: {entry} is not UTF-8 text")));
            }
            Err(e) if e.kind == ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

/// The text of the first `<tag>…</tag>` of a small XML document, trimmed and
/// without a CDATA wrapper.
pub fn xml_value<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&format!("</{tag}>"))?;
    let value = xml[start..start + len].trim();
    Some(
        value
            .strip_prefix("<![CDATA[")
            .and_then(|v| v.strip_suffix("]]>"))
            .unwrap_or(value),
    )
}

/// Whether two files hold the same bytes (`false` when `b` does not exist).
pub fn same_file(a: &str, b: &str) -> Result<bool, Stop> {
    let Ok(mb) = std::fs::metadata(b) else {
        return Ok(false);
    };
    let ma = std::fs::metadata(a).at(a)?;
    if ma.len() != mb.len() {
        return Ok(false);
    }
    Ok(std::fs::read(a).at(a)? == std::fs::read(b).at(b)?)
}

/// Bytes of the files under `root`; links are counted as themselves, never
/// followed.
pub fn tree_size(root: &str) -> Result<u64, Stop> {
    let mut total = 0;
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).at(&dir)? {
            let entry = entry.at(&dir)?;
            let path = format!("{dir}/{}", entry.file_name().to_string_lossy());
            let meta = std::fs::symlink_metadata(&path).at(&path)?;
            if meta.is_dir() {
                stack.push(path);
            } else {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_in_names() {
        assert_eq!(
            version_in_name("dIceCash_2.0.060.tgz", "dIceCash_", &[".tgz", ".tar.gz"]),
            Some("2.0.060")
        );
        assert_eq!(
            version_in_name("dIceCash_.tgz", "dIceCash_", &[".tgz"]),
            None
        );
        assert_eq!(
            version_in_name("dIceCash_../x.tgz", "dIceCash_", &[".tgz"]),
            None
        );
        assert_eq!(
            version_in_name("dIceCash_.x.tgz", "dIceCash_", &[".tgz"]),
            None
        );
        assert_eq!(version_in_name("other_1.tgz", "dIceCash_", &[".tgz"]), None);
    }

    #[test]
    fn xml_values() {
        let xml = "<a><VERSION><![CDATA[1.8.3900]]></VERSION><Version> 3.2.0 </Version></a>";
        assert_eq!(xml_value(xml, "VERSION"), Some("1.8.3900"));
        assert_eq!(xml_value(xml, "Version"), Some("3.2.0"));
        assert_eq!(xml_value(xml, "Missing"), None);
    }
}
