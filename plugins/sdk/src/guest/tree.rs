//! Keeping an installation for a rollback and putting it back, and making sure
//! there is room first.

use super::files::{exists, tree_size};
use super::{IoContext, Stop, fs, kv};

/// Refuses the update when `/staging` has less than four times the package's
/// size free: room for the unpacked tree and the backup copy, generously.
pub fn require_staging_space(package: &str) -> Result<(), Stop> {
    let size = std::fs::metadata(package).at(package)?.len();
    require_space("/staging", size.saturating_mul(4))
}

/// Refuses with a message naming both figures when the filesystem holding
/// `path` has less than `needed` bytes free.
pub fn require_space(path: &str, needed: u64) -> Result<(), Stop> {
    let free = fs::free_space(path)?;
    if free < needed {
        return Err(Stop::failed(format!(
            "not enough disk space for the update: {free} bytes free on {path}, {needed} needed"
        )));
    }
    Ok(())
}

fn backup_key(dst: &str) -> String {
    format!("posup-backup:{dst}")
}

/// Copies the tree `src` to `dst` (under `/backup`) for a rollback, once per
/// `tag` (the version being replaced, the package's name). A rerun after a
/// crash keeps a copy finished for the same tag; a copy interrupted half-way,
/// or made for another tag, is made again. Checks first that the copy fits.
pub fn backup(src: &str, dst: &str, tag: &str) -> Result<(), Stop> {
    let key = backup_key(dst);
    if kv::get(&key)?.as_deref() == Some(tag) && exists(dst) {
        return Ok(());
    }
    kv::delete(&key)?;
    fs::remove_tree(dst)?;
    let parent = dst.rsplit_once('/').map_or("/", |(p, _)| p);
    require_space(
        if parent.is_empty() { "/" } else { parent },
        tree_size(src)?,
    )?;
    fs::copy_tree(src, dst)?;
    kv::set(&key, tag)?;
    Ok(())
}

/// Whether a complete backup made by [`backup`] is at `dst`.
pub fn has_backup(dst: &str) -> Result<bool, Stop> {
    Ok(kv::get(&backup_key(dst))?.is_some() && exists(dst))
}

/// Puts the backup at `backup` back into `target` (which stays, as a folder):
/// everything in `target` is replaced by the backup's copy, except the paths in
/// `keep` (relative to `target`, such as `config` or `data/receipts.db`), which
/// stay as they are now. Runs again safely after a crash. Returns `false`, and
/// changes nothing, when [`backup`] never finished a copy there.
pub fn restore(backup: &str, target: &str, keep: &[&str]) -> Result<bool, Stop> {
    if !has_backup(backup)? {
        return Ok(false);
    }
    mirror(backup, target, keep)?;
    Ok(true)
}

/// Makes the folder `target` hold what `source` holds, except the paths in
/// `keep` (relative to `target`), which stay as they are: how a staged tree is
/// installed over a program folder that also holds the site's settings. Runs
/// again safely after a crash.
pub fn mirror(source: &str, target: &str, keep: &[&str]) -> Result<(), Stop> {
    let keep: Vec<&str> = keep.iter().map(|k| k.trim_matches('/')).collect();
    prune(target, "", &keep)?;
    fill(source, target, "", &keep)
}

/// Drops the backup at `dst` once the update is final.
pub fn discard(dst: &str) -> Result<(), Stop> {
    fs::remove_tree(dst)?;
    kv::delete(&backup_key(dst))?;
    Ok(())
}

/// Whether `rel` is kept, or holds something kept below it.
fn kept(rel: &str, keep: &[&str]) -> (bool, bool) {
    let is_kept = keep.contains(&rel);
    let holds_kept = keep.iter().any(|k| {
        k.strip_prefix(rel)
            .is_some_and(|rest| rest.starts_with('/'))
    });
    (is_kept, holds_kept)
}

fn join(root: &str, rel: &str) -> String {
    if rel.is_empty() {
        root.to_owned()
    } else {
        format!("{root}/{rel}")
    }
}

fn is_dir(path: &str) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// The names in the folder `root/rel`, each with its path relative to `root`.
fn children(root: &str, rel: &str) -> Result<Vec<String>, Stop> {
    let dir = join(root, rel);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).at(&dir)? {
        let name = entry.at(&dir)?.file_name().to_string_lossy().into_owned();
        out.push(if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        });
    }
    Ok(out)
}

/// Removes everything under `target/rel` but the kept paths.
fn prune(target: &str, rel: &str, keep: &[&str]) -> Result<(), Stop> {
    for child in children(target, rel)? {
        match kept(&child, keep) {
            (true, _) => {}
            (false, true) if is_dir(&join(target, &child)) => prune(target, &child, keep)?,
            _ => fs::remove_tree(&join(target, &child))?,
        }
    }
    Ok(())
}

/// Copies everything under `backup/rel` but the kept paths into `target/rel`.
fn fill(backup: &str, target: &str, rel: &str, keep: &[&str]) -> Result<(), Stop> {
    for child in children(backup, rel)? {
        let (source, dest) = (join(backup, &child), join(target, &child));
        match kept(&child, keep) {
            (true, _) => {}
            (false, true) if is_dir(&source) => {
                if !exists(&dest) {
                    std::fs::create_dir(&dest).at(&dest)?;
                }
                fill(backup, target, &child, keep)?;
            }
            _ => {
                fs::copy_tree(&source, &dest)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::kept;

    #[test]
    fn a_kept_path_and_the_folders_holding_it_are_told_apart() {
        let keep = ["config", "data/receipts.db"];
        assert_eq!(kept("config", &keep), (true, false));
        assert_eq!(kept("data", &keep), (false, true));
        assert_eq!(kept("data/receipts.db", &keep), (true, false));
        assert_eq!(kept("data/other.db", &keep), (false, false));
        assert_eq!(
            kept("conf", &keep),
            (false, false),
            "a name is matched whole"
        );
        assert_eq!(kept("configs", &keep), (false, false));
        assert_eq!(kept("bin", &[]), (false, false));
    }
}
