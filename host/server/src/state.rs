//! The state every handler shares, and the batching of contact times.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use posup_proto::api::PackageView;
use posup_runtime::{Plugin, Runtime};
use posup_store::{At, DeviceTypeConfig, Store};

use crate::blobs::Blobs;
use crate::cache::Caches;
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::group::GroupCommit;

/// Settings handlers need.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Poll interval of device types that set none.
    pub poll_interval_secs: u32,
    /// A device is offline when it has not polled for this long.
    pub offline_after: Duration,
    /// Largest package upload.
    pub max_package_bytes: u64,
    /// Largest plugin upload.
    pub max_plugin_bytes: usize,
    /// How long contact times are collected before they are written in one
    /// statement; `None` writes each poll's contact at once.
    pub contact_flush: Option<Duration>,
    /// The console's session cookie is marked `Secure` (the server speaks TLS).
    pub secure_cookies: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            poll_interval_secs: 60,
            offline_after: Duration::from_secs(180),
            max_package_bytes: 4 << 30,
            max_plugin_bytes: 64 << 20,
            contact_flush: None,
            secure_cookies: false,
        }
    }
}

/// The plugins built into the binary that runs the server: (name, component).
/// The console offers them on a fresh server, ready to enable in one click.
#[derive(Clone, Copy, Default)]
pub struct Bundled(pub &'static [(&'static str, &'static [u8])]);

impl std::fmt::Debug for Bundled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(n, _)| n))
            .finish()
    }
}

impl Bundled {
    pub fn get(&self, name: &str) -> Option<&'static [u8]> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.0.iter().map(|(n, _)| *n)
    }
}

/// Shared by all handlers; cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    blobs: Blobs,
    runtime: Runtime,
    clock: Arc<dyn Clock>,
    settings: Settings,
    contacts: Mutex<HashSet<i64>>,
    /// Held while the set of devices with actions is loaded: after a task is
    /// created a whole fleet's polls find it dropped, and one load serves them
    /// all instead of each reading every part.
    loading_active: tokio::sync::Mutex<()>,
    caches: Caches,
    /// Step reports waiting to be written together.
    reports: GroupCommit<crate::reports::Reports>,
    /// Changed inventories waiting to be written together.
    inventories: GroupCommit<crate::poll::ChangedInventory>,
    /// Polls' claims of the part they start, waiting to be made together.
    claims: GroupCommit<crate::poll::ClaimFirst>,
    /// Loaded plugins by sha256. Blobs never change, so an entry never goes stale;
    /// it only saves compiling or deserializing a component per package upload.
    plugins: Mutex<HashMap<String, Arc<Plugin>>>,
    /// Uploads being compiled or read by a plugin at once. Each may hold a plugin's
    /// memory limit and the archive capability's bounded buffers; uploads beyond
    /// these wait their turn, so a burst of uploads cannot exhaust the server.
    inspections: tokio::sync::Semaphore,
    /// Failed console logins per client address.
    login_throttle: crate::console::throttle::LoginThrottle,
    /// The repository's online keys (snapshot, timestamp).
    online_keys: posup_trust::online::OnlineKeys,
    bundled: Bundled,
    /// How long this process took to answer polls, for `/metrics`.
    poll_latency: crate::metrics::Latency,
}

fn fresh_online_keys() -> posup_trust::online::OnlineKeys {
    let key = || posup_trust::SigningKey::generate().expect("the system's random source works");
    posup_trust::online::OnlineKeys {
        snapshot: key(),
        timestamp: key(),
    }
}

/// How many uploads are compiled or inspected at once.
pub const MAX_INSPECTIONS: usize = 2;

impl AppState {
    pub fn new(
        store: Store,
        blobs: Blobs,
        runtime: Runtime,
        clock: Arc<dyn Clock>,
        settings: Settings,
    ) -> AppState {
        AppState {
            inner: Arc::new(Inner {
                store,
                blobs,
                runtime,
                clock,
                settings,
                contacts: Mutex::new(HashSet::new()),
                loading_active: tokio::sync::Mutex::new(()),
                caches: Caches::default(),
                reports: GroupCommit::new("recording reports"),
                inventories: GroupCommit::new("recording inventories"),
                claims: GroupCommit::new("claiming parts"),
                plugins: Mutex::new(HashMap::new()),
                inspections: tokio::sync::Semaphore::new(MAX_INSPECTIONS),
                login_throttle: Default::default(),
                online_keys: fresh_online_keys(),
                bundled: Bundled::default(),
                poll_latency: Default::default(),
            }),
        }
    }

    /// Uses these online keys instead of the fresh ones [`AppState::new`] made
    /// (the server's own, from its data directory). Call before the state is
    /// cloned.
    pub fn with_online_keys(mut self, keys: posup_trust::online::OnlineKeys) -> AppState {
        Arc::get_mut(&mut self.inner)
            .expect("online keys are set before the state is shared")
            .online_keys = keys;
        self
    }

    /// Offers these bundled plugins in the console. Call before the state is
    /// cloned.
    pub fn with_bundled(mut self, bundled: Bundled) -> AppState {
        Arc::get_mut(&mut self.inner)
            .expect("bundled plugins are set before the state is shared")
            .bundled = bundled;
        self
    }

    pub fn poll_latency(&self) -> &crate::metrics::Latency {
        &self.inner.poll_latency
    }

    pub fn bundled(&self) -> Bundled {
        self.inner.bundled
    }

    pub fn online_keys(&self) -> &posup_trust::online::OnlineKeys {
        &self.inner.online_keys
    }

    /// Failed console logins per client address.
    pub fn login_throttle(&self) -> &crate::console::throttle::LoginThrottle {
        &self.inner.login_throttle
    }

    /// A turn to compile or inspect an upload; held until dropped.
    pub async fn inspection(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.inner
            .inspections
            .acquire()
            .await
            .expect("the inspection semaphore is never closed")
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn blobs(&self) -> &Blobs {
        &self.inner.blobs
    }

    pub fn runtime(&self) -> &Runtime {
        &self.inner.runtime
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    pub(crate) fn reports(&self) -> &GroupCommit<crate::reports::Reports> {
        &self.inner.reports
    }

    pub(crate) fn inventories(&self) -> &GroupCommit<crate::poll::ChangedInventory> {
        &self.inner.inventories
    }

    pub(crate) fn claims(&self) -> &GroupCommit<crate::poll::ClaimFirst> {
        &self.inner.claims
    }

    pub fn caches(&self) -> &Caches {
        &self.inner.caches
    }

    /// Reads the store's change counters and drops cached values that other server
    /// processes changed.
    pub async fn refresh_caches(&self) -> Result<()> {
        let generations = self.store().generations().await?;
        self.inner.caches.refresh(generations);
        Ok(())
    }

    /// The devices that may have actions, from the cache, or loaded once for
    /// every poll that asks while it loads.
    pub(crate) async fn devices_with_actions(&self) -> Result<Arc<HashSet<i64>>> {
        let caches = &self.inner.caches;
        if let Some(active) = caches.active() {
            return Ok(active);
        }
        let _loading = self.inner.loading_active.lock().await;
        if let Some(active) = caches.active() {
            return Ok(active);
        }
        let epoch = caches.epoch();
        let active: Arc<HashSet<i64>> = Arc::new(
            self.store()
                .devices_with_actions()
                .await?
                .into_iter()
                .collect(),
        );
        caches.put_active(active.clone(), epoch);
        Ok(active)
    }

    /// A device type's settings, from the cache when this process read them
    /// since they last changed.
    pub async fn device_config(&self, device_type: &str) -> Result<Arc<DeviceTypeConfig>> {
        let caches = &self.inner.caches;
        if let Some(config) = caches.device_type(device_type) {
            return Ok(config);
        }
        let epoch = caches.epoch();
        let config = Arc::new(self.store().device_config(device_type).await?);
        caches.put_device_type(device_type, config.clone(), epoch);
        Ok(config)
    }

    /// The package of `device_type` with this sha256, from the cache when this
    /// process read it since packages were last deleted.
    pub async fn package(
        &self,
        sha256: &str,
        device_type: &str,
    ) -> Result<Option<Arc<PackageView>>> {
        let caches = &self.inner.caches;
        if let Some(package) = caches.package(sha256, device_type) {
            return Ok(Some(package));
        }
        let epoch = caches.epoch();
        let Some(package) = self.store().package_by_sha(sha256, device_type).await? else {
            return Ok(None);
        };
        let package = Arc::new(package);
        caches.put_package(package.clone(), epoch);
        Ok(Some(package))
    }

    pub fn clock(&self) -> &dyn Clock {
        self.inner.clock.as_ref()
    }

    /// Now, and the contact time from which devices count as online.
    pub fn at(&self) -> At {
        At::new(self.inner.clock.now(), self.inner.settings.offline_after)
    }

    /// Moves tasks and rollouts along; new parts for devices drop this process's
    /// cache of who has actions at once (other processes follow the counters).
    pub async fn tick_rollouts(&self, at: &At) -> Result<()> {
        if self.store().tick_rollouts(at).await?.changed {
            self.inner.caches.invalidate_actions();
        }
        Ok(())
    }

    pub fn now_ms(&self) -> i64 {
        self.inner.clock.now().timestamp_millis()
    }

    /// Notes a device's contact: written at once, or collected for the next
    /// [`AppState::flush_contacts`].
    pub async fn record_contact(&self, device_id: i64) -> Result<()> {
        if self.inner.settings.contact_flush.is_none() {
            return Ok(self
                .store()
                .touch_devices(&[device_id], self.now_ms())
                .await?);
        }
        self.inner
            .contacts
            .lock()
            .expect("contacts lock")
            .insert(device_id);
        Ok(())
    }

    /// Writes the collected contact times.
    pub async fn flush_contacts(&self) -> Result<()> {
        let ids: Vec<i64> = {
            let mut pending = self.inner.contacts.lock().expect("contacts lock");
            if pending.is_empty() {
                return Ok(());
            }
            pending.drain().collect()
        };
        if let Err(e) = self.store().touch_devices(&ids, self.now_ms()).await {
            // Keep them for the next round rather than losing the contacts.
            self.inner
                .contacts
                .lock()
                .expect("contacts lock")
                .extend(ids);
            return Err(e.into());
        }
        Ok(())
    }

    /// The plugin stored under `sha256`, loaded.
    pub async fn plugin(&self, sha256: &str, name: &str) -> Result<Arc<Plugin>> {
        if let Some(p) = self.inner.plugins.lock().expect("plugins lock").get(sha256) {
            return Ok(p.clone());
        }
        let bytes = self.blobs().read(sha256).await?;
        let runtime = self.runtime().clone();
        let label = name.to_owned();
        let plugin = tokio::task::spawn_blocking(move || runtime.load(&label, &bytes))
            .await
            .map_err(|e| Error::internal("loading a plugin", e))?
            .map_err(|e| Error::internal(&format!("loading stored plugin {name} ({sha256})"), e))?;
        let plugin = Arc::new(plugin);
        self.inner
            .plugins
            .lock()
            .expect("plugins lock")
            .insert(sha256.to_owned(), plugin.clone());
        Ok(plugin)
    }
}
