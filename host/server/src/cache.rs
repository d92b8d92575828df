//! In-process caches of the poll path.
//!
//! At fleet scale nearly every poll changes nothing: the device's token, its device
//! type's settings, whether it has actions and the newest variable change are the
//! same as last time; and a fleet enrolling reads its few device types' settings
//! thousands of times, as a fleet updating downloads its few packages. They are
//! kept here, so a steady-state poll reads no table.
//!
//! **Invariant:** a cache never outlives a change by more than a second. Changes
//! made through this process drop the caches at once; changes made by other
//! processes grow a counter in the store (`posup_store::Generations`), which the
//! background task reads every second ([`Caches::refresh`]). A value loaded from
//! the database is kept only if no invalidation happened while it was loaded (the
//! epoch check), so a slow load cannot bring back what an invalidation dropped.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use posup_proto::api::PackageView;
use posup_store::{DeviceAuth, DeviceTypeConfig, Generations};

#[derive(Debug, Default)]
pub struct Caches {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Grows with every invalidation.
    epoch: u64,
    /// Devices by the sha256 of their token.
    devices: HashMap<[u8; 32], Arc<DeviceAuth>>,
    /// Devices that may have actions; `None` until loaded.
    active: Option<Arc<HashSet<i64>>>,
    /// Devices of `active` whose poll found nothing to do since it was loaded:
    /// their parts ended, and only a change to tasks can give them new ones.
    idle: HashSet<i64>,
    /// The newest variable change id; `None` until loaded.
    vars_max: Option<i64>,
    /// Device types' settings by name, as enrollment and polls read them. Only
    /// types that exist are kept, so the operator bounds it, not the devices.
    device_types: HashMap<String, Arc<DeviceTypeConfig>>,
    /// Packages by sha256 and device type, as downloads ask for them. Only
    /// packages that exist are kept, so the operator bounds it.
    packages: HashMap<(String, String), Arc<PackageView>>,
    /// The store's counters as last read.
    seen: Option<Generations>,
}

impl Caches {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Read before loading something from the database, passed to the `put_…`.
    pub fn epoch(&self) -> u64 {
        self.read().epoch
    }

    pub fn device(&self, token_hash: &[u8; 32]) -> Option<Arc<DeviceAuth>> {
        self.read().devices.get(token_hash).cloned()
    }

    pub fn put_device(&self, token_hash: [u8; 32], device: Arc<DeviceAuth>, epoch: u64) {
        let mut inner = self.write();
        if inner.epoch == epoch {
            inner.devices.insert(token_hash, device);
        }
    }

    /// Applies a change this process just wrote to a cached device.
    pub fn update_device(&self, token_hash: &[u8; 32], change: impl FnOnce(&mut DeviceAuth)) {
        if let Some(d) = self.write().devices.get_mut(token_hash) {
            change(Arc::make_mut(d));
        }
    }

    pub fn active(&self) -> Option<Arc<HashSet<i64>>> {
        self.read().active.clone()
    }

    pub fn put_active(&self, active: Arc<HashSet<i64>>, epoch: u64) {
        let mut inner = self.write();
        if inner.epoch == epoch {
            inner.active = Some(active);
        }
    }

    /// Whether `device` may have actions: in the loaded set, and not found idle
    /// since.
    pub fn may_have_actions(&self, active: &HashSet<i64>, device: i64) -> bool {
        active.contains(&device) && !self.read().idle.contains(&device)
    }

    /// Notes that a poll of `device` found nothing to do.
    pub fn put_idle(&self, device: i64, epoch: u64) {
        let mut inner = self.write();
        if inner.epoch == epoch {
            inner.idle.insert(device);
        }
    }

    pub fn device_type(&self, name: &str) -> Option<Arc<DeviceTypeConfig>> {
        self.read().device_types.get(name).cloned()
    }

    pub fn put_device_type(&self, name: &str, config: Arc<DeviceTypeConfig>, epoch: u64) {
        let mut inner = self.write();
        if inner.epoch == epoch {
            inner.device_types.insert(name.to_owned(), config);
        }
    }

    pub fn package(&self, sha256: &str, device_type: &str) -> Option<Arc<PackageView>> {
        self.read()
            .packages
            .get(&(sha256.to_owned(), device_type.to_owned()))
            .cloned()
    }

    pub fn put_package(&self, package: Arc<PackageView>, epoch: u64) {
        let mut inner = self.write();
        if inner.epoch == epoch {
            let key = (package.sha256.clone(), package.device_type.clone());
            inner.packages.insert(key, package);
        }
    }

    pub fn vars_max(&self) -> Option<i64> {
        self.read().vars_max
    }

    pub fn put_vars_max(&self, max: i64, epoch: u64) {
        let mut inner = self.write();
        if inner.epoch == epoch {
            inner.vars_max = Some(max);
        }
    }

    /// Drops everything: after any change made through this process.
    /// Drops what is known of devices' actions, and nothing else: new parts
    /// were added by this process.
    pub fn invalidate_actions(&self) {
        let mut inner = self.write();
        inner.epoch += 1;
        inner.active = None;
        inner.idle.clear();
    }

    pub fn invalidate_all(&self) {
        let mut inner = self.write();
        inner.epoch += 1;
        inner.devices.clear();
        inner.active = None;
        inner.idle.clear();
        inner.vars_max = None;
        inner.device_types.clear();
        inner.packages.clear();
    }

    /// Drops what the store's counters say changed since the last call.
    pub fn refresh(&self, now: Generations) {
        let mut inner = self.write();
        let Some(seen) = inner.seen.replace(now) else {
            // The first reading: what was cached before it may be older.
            drop(inner);
            self.invalidate_all();
            return;
        };
        if seen == now {
            return;
        }
        inner.epoch += 1;
        // Tokens and device type settings grow the same counter.
        if seen.devices != now.devices {
            inner.devices.clear();
            inner.device_types.clear();
        }
        if seen.tasks != now.tasks {
            inner.active = None;
            inner.idle.clear();
        }
        if seen.variables != now.variables {
            inner.vars_max = None;
        }
        if seen.packages != now.packages {
            inner.packages.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use posup_store::DeviceTypeConfig;

    fn device(id: i64) -> DeviceAuth {
        DeviceAuth {
            id,
            guid: format!("g{id}"),
            site: "A".into(),
            number: 1,
            device_type: "t".into(),
            agent_version: "1".into(),
            plugin_sha256: None,
            agent_message: None,
            inventory_hash: None,
            revision: 1,
            poll_interval_secs: None,
            last_contact: 0,
            access: "active".into(),
            allows: None,
        }
    }

    #[test]
    fn a_load_that_raced_an_invalidation_is_not_kept() {
        let c = Caches::default();
        let before = c.epoch();
        c.invalidate_all();
        c.put_device([1; 32], Arc::new(device(1)), before);
        assert!(c.device(&[1; 32]).is_none());
        c.put_device([1; 32], Arc::new(device(1)), c.epoch());
        assert_eq!(c.device(&[1; 32]).unwrap().id, 1);
    }

    fn config(revision: i64) -> Arc<DeviceTypeConfig> {
        Arc::new(DeviceTypeConfig {
            config: posup_proto::agent::DeviceConfig {
                device_type: "t".into(),
                revision,
                plugin: None,
                allowed: Default::default(),
                paths: Default::default(),
            },
            poll_interval_secs: None,
        })
    }

    /// Caches that have read the store's counters once, and those counters.
    fn refreshed() -> (Caches, Generations) {
        let c = Caches::default();
        let g = Generations {
            devices: 1,
            tasks: 1,
            variables: 5,
            packages: 1,
        };
        c.refresh(g);
        (c, g)
    }

    #[test]
    fn device_type_settings_are_kept_until_the_devices_counter_moves() {
        let (c, g) = refreshed();
        let before = c.epoch();
        c.invalidate_all();
        c.put_device_type("t", config(1), before);
        assert!(c.device_type("t").is_none(), "a load that raced a change");
        c.put_device_type("t", config(1), c.epoch());
        c.refresh(Generations {
            tasks: 2,
            variables: 6,
            ..g
        });
        assert_eq!(c.device_type("t").unwrap().config.revision, 1);
        assert!(c.device_type("u").is_none());
        c.refresh(Generations {
            devices: 2,
            tasks: 2,
            variables: 6,
            ..g
        });
        assert!(
            c.device_type("t").is_none(),
            "another server changed settings"
        );
        c.put_device_type("t", config(2), c.epoch());
        c.invalidate_all();
        assert!(
            c.device_type("t").is_none(),
            "this server changed something"
        );
    }

    #[test]
    fn refresh_drops_only_what_changed() {
        let (c, g) = refreshed();
        c.put_device([1; 32], Arc::new(device(1)), c.epoch());
        c.put_active(Arc::new(HashSet::from([1])), c.epoch());
        c.put_vars_max(5, c.epoch());
        c.refresh(g);
        assert!(c.device(&[1; 32]).is_some() && c.active().is_some() && c.vars_max() == Some(5));
        let active = c.active().unwrap();
        let before = c.epoch();
        c.put_idle(1, before);
        assert!(!c.may_have_actions(&active, 1), "found idle");
        c.refresh(Generations { tasks: 2, ..g });
        assert!(c.device(&[1; 32]).is_some());
        assert!(c.active().is_none());
        assert!(
            c.may_have_actions(&active, 1),
            "a task change may give it work"
        );
        c.put_idle(1, before);
        assert!(
            c.may_have_actions(&active, 1),
            "idle found before the change is not kept"
        );
        c.put_package(package(), c.epoch());
        c.refresh(Generations {
            tasks: 2,
            devices: 2,
            ..g
        });
        assert!(c.device(&[1; 32]).is_none());
        assert!(
            c.package("ab", "t").is_some(),
            "packages stay while none is deleted"
        );
        c.refresh(Generations {
            tasks: 2,
            devices: 2,
            packages: 2,
            ..g
        });
        assert!(c.package("ab", "t").is_none(), "a package was deleted");
    }

    fn package() -> Arc<PackageView> {
        Arc::new(PackageView {
            id: 1,
            device_type: "t".into(),
            file_name: "t_1.0.tgz".into(),
            sha256: "ab".into(),
            size: 1,
            version: "1.0".into(),
            kind: "complete".into(),
            notes: String::new(),
            changelog: String::new(),
            rollback: true,
            plugin_sha256: String::new(),
            state: posup_proto::api::PackageState::Install,
            uploaded_at: chrono::DateTime::UNIX_EPOCH,
            signatures: Vec::new(),
            archived: false,
        })
    }
}
