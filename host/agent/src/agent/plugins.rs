//! Plugin management: the device configuration and the grants it allows, loading
//! and caching plugins (downloaded, checked, compiled outside the agent), and the
//! product's inventory through them.

use std::path::Path;
use std::sync::Arc;

use posup_proto::Inventory;
use posup_proto::agent::PluginRef;
use posup_runtime::caps::log::EventSink;
use posup_runtime::caps::prompt::Prompter;
use posup_runtime::types::{DatabaseRequest, PluginInfo};
use posup_runtime::{Allowance, Grants, HostEnv, Plugin, RuntimeError};

use crate::device::DeviceConfig;
use crate::download::{self, Expected};

use super::{Agent, MAX_PLUGIN_BYTES, PLUGIN_DOWNLOAD_TIME, to_proto};

impl Agent {
    /// Compiles the plugin in `file` into the cache in a child process, when one is
    /// configured and the cache lacks it. A failure is logged and the load compiles
    /// in this process instead: the helper only saves memory.
    pub(super) async fn compile_outside(&self, name: &str, file: &Path, sha256: &str) {
        let Some(exe) = self.compiler.get() else {
            return;
        };
        if self.runtime.is_cached_as(sha256) {
            return;
        }
        let status = tokio::process::Command::new(exe)
            .args(["plugin", "compile", "--state-dir"])
            .arg(&self.paths.root)
            .arg(file)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status()
            .await;
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => {
                tracing::warn!("compiling plugin {name} in a child process: {s}; compiling here")
            }
            Err(e) => tracing::warn!(
                "starting {} to compile plugin {name}: {e}; compiling here",
                exe.display()
            ),
        }
    }

    /// The effective device configuration: the file's, with the locations of the
    /// directories it lets the server place (`server_paths`) taken from the
    /// server's configuration of the device type. The file is the ceiling.
    pub(super) fn device_config(&self) -> DeviceConfig {
        let local = self.config.device_config().clone();
        let state = self.state.lock().expect("state lock");
        let Some(server) = &state.config else {
            return local;
        };
        local.with_server_paths(|name| {
            posup_proto::Dir::ALL
                .into_iter()
                .find(|d| d.as_str() == name)
                .and_then(|d| server.paths.get(d).map(str::to_owned))
        })
    }

    /// Checks, once at start, that every directory of the device configuration can
    /// be granted: a real directory (staging and backup are made when missing),
    /// never a symbolic link. Each step checks again when it opens them.
    pub fn check_dirs(&self) -> std::io::Result<()> {
        let device = self.config.device_config();
        own_dirs(device)?;
        let grants = Grants {
            dirs: device.allowance().dirs,
            ..Grants::default()
        };
        posup_runtime::beneath::Roots::open(&grants).map(drop)
    }

    /// What this terminal's configuration allows any plugin, for the server to
    /// show beside what the operator allows; where the directories are stays here.
    pub(super) fn terminal_allows(&self) -> posup_proto::Capabilities {
        let a = self.device_config().allowance();
        posup_proto::Capabilities {
            dirs: a
                .dirs
                .iter()
                .filter_map(|d| {
                    let name = posup_runtime::grants::dir_name(d.dir);
                    posup_proto::Dir::ALL
                        .into_iter()
                        .find(|x| x.as_str() == name)
                        .map(|dir| posup_proto::DirAccess {
                            dir,
                            write: d.write,
                        })
                })
                .collect(),
            services: a.services,
            scripts: a.scripts,
            prompt: a.prompt,
            databases: a.databases.into_iter().map(|d| d.name).collect(),
        }
    }

    /// What the plugin may be granted here: the terminal's allowance intersected
    /// with the operator's. Without the operator's word, nothing is allowed.
    pub(super) fn allowance(&self, device: &DeviceConfig) -> Allowance {
        let mut a = device.allowance();
        let state = self.state.lock().expect("state lock");
        let Some(server) = &state.config else {
            return Allowance::default();
        };
        let allowed = &server.allowed;
        a.dirs.retain_mut(|d| {
            let name = posup_runtime::grants::dir_name(d.dir);
            match allowed.dirs.iter().find(|x| x.dir.as_str() == name) {
                Some(x) => {
                    d.write &= x.write;
                    true
                }
                None => false,
            }
        });
        a.services.retain(|s| allowed.services.contains(s));
        a.scripts &= allowed.scripts;
        a.prompt &= allowed.prompt;
        a.databases.retain(|d| allowed.databases.contains(&d.name));
        a
    }

    pub(super) fn env(
        &self,
        loaded: &Loaded,
        events: Option<Arc<dyn EventSink>>,
    ) -> (HostEnv, DeviceConfig) {
        let device = self.device_config();
        if let Err(e) = own_dirs(&device) {
            tracing::warn!("{e}");
        }
        let grants = Grants::intersect(
            &loaded.info.capabilities,
            &loaded.databases,
            &self.allowance(&device),
        );
        let prompter: Arc<dyn Prompter> = self.prompter.clone();
        let env = HostEnv {
            grants,
            services: device.service_manager(&self.paths.run()),
            prompter: Some(prompter),
            kv_dir: Some(self.paths.kv()),
            vars: Arc::new(self.state.lock().expect("state lock").vars.clone()),
            events,
            ..HostEnv::default()
        };
        (env, device)
    }

    /// The plugin with this reference: loaded, from the local store, or downloaded
    /// and checked against its sha256 first. The download is a package's: on disk
    /// in the agent's own folder, resumable, at most the size the server names
    /// (and never more than [`MAX_PLUGIN_BYTES`]), stopped when it stalls or takes
    /// longer than [`PLUGIN_DOWNLOAD_TIME`]; no lock is held while it runs.
    pub(super) async fn plugin(
        &self,
        r: &PluginRef,
        verified: Option<&posup_trust::client::Verified>,
    ) -> Result<Loaded, String> {
        if let Some(p) = self.plugins.lock().await.get(&r.sha256) {
            return Ok(p.clone());
        }
        let what = format!("plugin {} {}", r.name, r.version);
        if !crate::staging::is_sha256(&r.sha256) {
            return Err(format!(
                "{what}: its sha256 from the server is not 64 hex digits; it is not downloaded"
            ));
        }
        // The size to download: the signed length, or (unsigned) the server's word.
        let size = match &self.trust {
            Some(_) => {
                let refreshed;
                let verified = match verified {
                    Some(v) => v,
                    None => {
                        refreshed = self.verify().await?;
                        &refreshed
                    }
                };
                verified
                    .plugin(
                        &self.config.device.device_type,
                        &r.name,
                        &r.version,
                        &r.sha256,
                    )
                    .map_err(|e| format!("{what} is not used: {e}"))?
                    .length
            }
            None => r.size,
        };
        if size == 0 || size > MAX_PLUGIN_BYTES {
            return Err(format!(
                "{what}: a size of {size} bytes; plugins are 1 byte to {} MiB, so it is not downloaded",
                MAX_PLUGIN_BYTES >> 20
            ));
        }
        let dir = self.paths.plugins();
        posup_runtime::beneath::private_dir(&dir)
            .map_err(|e| format!("{what}: the plugin folder {}: {e}", dir.display()))?;
        let file = dir.join(format!("{}.wasm", r.sha256));
        let expected = Expected {
            sha256: r.sha256.clone(),
            size,
        };
        let tries = std::sync::atomic::AtomicU32::new(0);
        let keep_going = || tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 3;
        let poll = self.config.poll.clone();
        let backoff = move |n: u32| poll.backoff(n);
        let fetched = tokio::time::timeout(
            PLUGIN_DOWNLOAD_TIME,
            download::fetch_with_retries(
                &self.client,
                &r.url,
                &file,
                &expected,
                &mut |_, _| {},
                &backoff,
                &keep_going,
            ),
        )
        .await;
        match fetched {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("downloading {what}: {e}")),
            Err(_) => {
                return Err(format!(
                    "downloading {what}: not done within {} s; it resumes at the next poll",
                    PLUGIN_DOWNLOAD_TIME.as_secs()
                ));
            }
        }
        let bytes = read_download(&dir, &file, MAX_PLUGIN_BYTES)
            .map_err(|e| format!("reading {what}: {e}"))?;
        self.compile_outside(&r.name, &file, &r.sha256).await;
        // The bytes read are the bytes loaded: hashed once, by the runtime.
        let plugin = match self.runtime.load_verified(&r.name, &bytes, &r.sha256) {
            Ok(p) => p,
            Err(e @ RuntimeError::Digest { .. }) => {
                let _ = std::fs::remove_file(&file);
                return Err(format!("{what}: changed on disk after its download: {e}"));
            }
            Err(e) => return Err(format!("{what}: {e}")),
        };
        let info = plugin.info().await.map_err(|e| format!("{what}: {e}"))?;
        let databases = plugin
            .databases()
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        let entry = Loaded {
            plugin: Arc::new(plugin),
            info,
            databases,
        };
        let mut plugins = self.plugins.lock().await;
        // Keep the device type's plugin and the one an action needs; drop others.
        plugins.retain(|sha, _| {
            self.state
                .lock()
                .expect("state lock")
                .config
                .as_ref()
                .and_then(|c| c.plugin.as_ref())
                .is_some_and(|p| &p.sha256 == sha)
        });
        plugins.insert(r.sha256.clone(), entry.clone());
        Ok(entry)
    }

    /// The product's state through the device type's plugin.
    pub(super) async fn inventory(&self) -> Option<Result<Inventory, String>> {
        let r = self
            .state
            .lock()
            .expect("state lock")
            .config
            .as_ref()
            .and_then(|c| c.plugin.clone())?;
        Some(self.inventory_with(&r).await)
    }

    pub(super) async fn inventory_with(&self, r: &PluginRef) -> Result<Inventory, String> {
        let loaded = self.plugin(r, None).await?;
        let (env, _) = self.env(&loaded, None);
        match loaded.plugin.inventory(&env).await {
            Ok(Ok(inv)) => Ok(to_proto(inv)),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// A loaded plugin and what it asks for beyond its `info`.
#[derive(Clone)]
pub(super) struct Loaded {
    pub(super) plugin: Arc<Plugin>,
    pub(super) info: PluginInfo,
    pub(super) databases: Vec<DatabaseRequest>,
}

/// Staging and backup are the agent's own folders: made when missing. The
/// product's folders must be there already.
pub(super) fn own_dirs(device: &DeviceConfig) -> std::io::Result<()> {
    for dir in ["staging", "backup"] {
        if let Some(d) = device.dir(dir) {
            std::fs::create_dir_all(d).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("creating the {dir} directory {}: {e}", d.display()),
                )
            })?;
        }
    }
    Ok(())
}

/// The bytes of the file `file` in the agent's own folder `dir`, read through the
/// folder's handle without following a link, and at most `max` of them.
pub(super) fn read_download(dir: &Path, file: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::fd::AsFd;
    let folder = posup_runtime::beneath::open_real_dir(dir)?;
    let name = file.file_name().unwrap_or_default();
    let Some(f) = posup_runtime::beneath::open_file_nofollow(folder.as_fd(), name)? else {
        return Err(std::io::ErrorKind::NotFound.into());
    };
    let mut bytes = Vec::new();
    f.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::other(format!("over {max} bytes")));
    }
    Ok(bytes)
}
