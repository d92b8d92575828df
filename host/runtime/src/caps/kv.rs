//! `kv`: small persistent state of one plugin on one terminal, e.g. which package
//! a staged tree belongs to. Kept as one JSON file per plugin, replaced atomically
//! on every write so a power loss leaves the old or the new content, never a mix.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use posup_world::latest::kv;
use posup_world::latest::types::Error as WitError;
use wasmtime::component::{HasSelf, Linker};

use super::{CapError, CapResult, Work, blocking};

const MAX_KEY: usize = 256;
const MAX_VALUE: usize = 64 * 1024;
/// The whole store of one plugin.
const MAX_TOTAL: usize = 1024 * 1024;

/// Per-step state of `kv`: the file of this plugin's store, if the host keeps one.
pub struct KvState {
    file: Option<PathBuf>,
    work: Work,
}

impl KvState {
    /// `dir` is the host's state directory for plugin stores; `None` denies `kv`
    /// (as on the server, where `inspect` runs without terminal state).
    /// A plugin name that is not one plain file name gets no store.
    pub fn new(dir: Option<&Path>, plugin: &str, work: Work) -> Self {
        let file = match crate::beneath::file_name(plugin) {
            Ok(()) => dir.map(|d| d.join(format!("{plugin}.json"))),
            Err(_) => None,
        };
        Self { file, work }
    }

    fn file(&self) -> CapResult<PathBuf> {
        self.file
            .clone()
            .ok_or_else(|| CapError::denied("kv: no persistent state is kept for plugins here"))
    }
}

fn load(file: &Path) -> CapResult<BTreeMap<String, String>> {
    match std::fs::read(file) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            CapError::io(format!(
                "kv store {}: unreadable ({e}); remove the file to start afresh",
                file.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(CapError::from_io(file.display(), &e)),
    }
}

fn save(file: &Path, map: &BTreeMap<String, String>) -> CapResult<()> {
    let bytes = serde_json::to_vec(map).expect("a map of strings serialises");
    if bytes.len() > MAX_TOTAL {
        return Err(CapError::limit(format!(
            "kv: the store would grow to {} bytes, over the limit of {MAX_TOTAL}",
            bytes.len()
        )));
    }
    let dir = file.parent().expect("kv file has a parent");
    std::fs::create_dir_all(dir).map_err(|e| CapError::from_io(dir.display(), &e))?;
    let tmp = file.with_extension("json.tmp");
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| CapError::from_io(file.display(), &e))
}

fn check_key(key: &str) -> CapResult<()> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(CapError::invalid(format!(
            "kv: key of {} bytes; keys are 1 to {MAX_KEY} bytes",
            key.len()
        )));
    }
    Ok(())
}

impl kv::Host for KvState {
    async fn get(&mut self, key: String) -> Result<Option<String>, WitError> {
        check_key(&key)?;
        let file = self.file()?;
        blocking(&self.work, "kv get", move || Ok(load(&file)?.remove(&key))).await
    }

    async fn set(&mut self, key: String, value: String) -> Result<(), WitError> {
        check_key(&key)?;
        if value.len() > MAX_VALUE {
            return Err(CapError::limit(format!(
                "kv: value of {key} has {} bytes, over the limit of {MAX_VALUE}",
                value.len()
            ))
            .into());
        }
        let file = self.file()?;
        blocking(&self.work, "kv set", move || {
            let mut map = load(&file)?;
            map.insert(key, value);
            save(&file, &map)
        })
        .await
    }

    async fn delete(&mut self, key: String) -> Result<(), WitError> {
        check_key(&key)?;
        let file = self.file()?;
        blocking(&self.work, "kv delete", move || {
            let mut map = load(&file)?;
            if map.remove(&key).is_some() {
                save(&file, &map)?;
            }
            Ok(())
        })
        .await
    }
}

pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut KvState,
) -> wasmtime::Result<()> {
    kv::add_to_linker::<T, HasSelf<KvState>>(linker, get)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv::Host as _;
    use posup_world::latest::types::ErrorKind;

    /// A plugin filling its store is stopped at the bounds, and what it stored
    /// before stays readable.
    #[tokio::test]
    async fn the_store_is_bounded_per_value_and_in_total() {
        let tmp = tempfile::tempdir().unwrap();
        let mut kv = KvState::new(Some(tmp.path()), "p", Work::default());
        let err = kv
            .set("k".into(), "x".repeat(MAX_VALUE + 1))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Limit, "{}", err.message);
        let mut stored = 0;
        let last = loop {
            match kv.set(format!("k{stored}"), "x".repeat(MAX_VALUE)).await {
                Ok(()) => stored += 1,
                Err(e) => break e,
            }
            assert!(stored <= MAX_TOTAL / MAX_VALUE, "no total bound");
        };
        assert_eq!(last.kind, ErrorKind::Limit, "{}", last.message);
        assert!(kv.get("k0".into()).await.unwrap().is_some());
        let err = kv.set(String::new(), "v".into()).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Invalid);
    }

    #[test]
    fn a_plugin_name_that_is_no_file_name_gets_no_store() {
        let tmp = tempfile::tempdir().unwrap();
        for name in ["../../etc/cron.d/x", "a/b", "", ".."] {
            let kv = KvState::new(Some(tmp.path()), name, Work::default());
            assert!(kv.file().is_err(), "{name}");
        }
    }
}
