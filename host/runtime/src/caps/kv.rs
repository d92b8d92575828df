//! `kv`: small persistent state of one plugin on one terminal, e.g. which package
//! a staged tree belongs to. Kept as one JSON file per plugin, replaced atomically
//! on every write so a power loss leaves the old or the new content, never a mix.
//! The file is handled through its folder's handle and never through a link.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use cap_std::fs::Dir;

use posup_world::latest::kv;
use posup_world::latest::types::Error as WitError;
use wasmtime::component::{HasSelf, Linker};

use super::{CapError, CapResult, Work, blocking};

const MAX_KEY: usize = 256;
const MAX_VALUE: usize = 64 * 1024;
/// The whole store of one plugin.
const MAX_TOTAL: usize = 1024 * 1024;

/// Per-step state of `kv`: where this plugin's store is, if the host keeps one.
pub struct KvState {
    store: Option<Store>,
    work: Work,
}

/// A plugin's store: the file `name` in the host's folder `dir`. The folder is
/// opened once per step, as a real owner-only directory, and the file is read
/// and replaced through that handle as one name, never following a link.
#[derive(Clone)]
struct Store {
    dir: PathBuf,
    name: String,
    folder: Arc<OnceLock<Arc<Dir>>>,
}

impl KvState {
    /// `dir` is the host's state directory for plugin stores; `None` denies `kv`
    /// (as on the server, where `inspect` runs without terminal state).
    /// A plugin name that is not one plain file name gets no store.
    pub fn new(dir: Option<&Path>, plugin: &str, work: Work) -> Self {
        let store = match crate::beneath::file_name(plugin) {
            Ok(()) => dir.map(|d| Store {
                dir: d.to_owned(),
                name: format!("{plugin}.json"),
                folder: Arc::default(),
            }),
            Err(_) => None,
        };
        Self { store, work }
    }

    fn store(&self) -> CapResult<Store> {
        self.store
            .clone()
            .ok_or_else(|| CapError::denied("kv: no persistent state is kept for plugins here"))
    }
}

impl Store {
    fn shown(&self) -> String {
        format!("kv store {}", self.dir.join(&self.name).display())
    }

    /// The handle of the store's folder, opened (and made, owner-only) on first
    /// use in this step.
    fn folder(&self) -> CapResult<Arc<Dir>> {
        if let Some(dir) = self.folder.get() {
            return Ok(dir.clone());
        }
        let dir = crate::beneath::open_private_dir(&self.dir)
            .map_err(|e| CapError::from_io(self.shown(), &e))?;
        Ok(self.folder.get_or_init(|| Arc::new(dir)).clone())
    }

    fn load(&self) -> CapResult<BTreeMap<String, String>> {
        let folder = self.folder()?;
        let file = match crate::beneath::open_file_nofollow(folder.as_fd(), self.name.as_ref()) {
            Ok(Some(file)) => file,
            Ok(None) => return Ok(BTreeMap::new()),
            Err(e) => return Err(CapError::from_io(self.shown(), &e)),
        };
        let mut bytes = Vec::new();
        file.take(MAX_TOTAL as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| CapError::from_io(self.shown(), &e))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            CapError::io(format!(
                "{}: unreadable ({e}); remove the file to start afresh",
                self.shown()
            ))
        })
    }

    fn save(&self, map: &BTreeMap<String, String>) -> CapResult<()> {
        let bytes = serde_json::to_vec(map).expect("a map of strings serialises");
        if bytes.len() > MAX_TOTAL {
            return Err(CapError::limit(format!(
                "kv: the store would grow to {} bytes, over the limit of {MAX_TOTAL}",
                bytes.len()
            )));
        }
        let folder = self.folder()?;
        crate::beneath::replace_file(folder.as_fd(), &self.name, &bytes)
            .map_err(|e| CapError::from_io(self.shown(), &e))
    }
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
        let store = self.store()?;
        blocking(&self.work, "kv get", move || Ok(store.load()?.remove(&key))).await
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
        let store = self.store()?;
        blocking(&self.work, "kv set", move || {
            let mut map = store.load()?;
            map.insert(key, value);
            store.save(&map)
        })
        .await
    }

    async fn delete(&mut self, key: String) -> Result<(), WitError> {
        check_key(&key)?;
        let store = self.store()?;
        blocking(&self.work, "kv delete", move || {
            let mut map = store.load()?;
            if map.remove(&key).is_some() {
                store.save(&map)?;
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

    /// A link planted where a store goes is never followed: the file it points
    /// at keeps its bytes. (The temporary file of a write has a fresh name per
    /// write and is created exclusively, see `beneath::replace_file`.)
    #[tokio::test]
    async fn the_store_never_follows_a_link() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Dir::open_ambient_dir(tmp.path(), cap_std::ambient_authority()).unwrap();
        root.write("victim", b"{}").unwrap();
        root.create_dir("kv").unwrap();
        root.symlink("../victim", "kv/q.json").unwrap();
        let dir = tmp.path().join("kv");
        let mut p = KvState::new(Some(&dir), "p", Work::default());
        p.set("k".into(), "v".into()).await.unwrap();
        assert_eq!(p.get("k".into()).await.unwrap().as_deref(), Some("v"));
        let mut q = KvState::new(Some(&dir), "q", Work::default());
        assert!(q.get("k".into()).await.is_err());
        assert_eq!(root.read("victim").unwrap(), b"{}");
    }

    #[test]
    fn a_plugin_name_that_is_no_file_name_gets_no_store() {
        let tmp = tempfile::tempdir().unwrap();
        for name in ["../../etc/cron.d/x", "a/b", "", ".."] {
            let kv = KvState::new(Some(tmp.path()), name, Work::default());
            assert!(kv.store().is_err(), "{name}");
        }
    }
}
