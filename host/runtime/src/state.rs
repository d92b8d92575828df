//! The data of one step's `Store`, and the host environment it is built from.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::caps::archive::{ArchiveLimits, ArchiveState};
use crate::caps::fs::FsState;
use crate::caps::kv::KvState;
use crate::caps::log::{EventSink, LogState};
use crate::caps::logs::LogsState;
use crate::caps::prompt::{PromptState, Prompter};
use crate::caps::services::{ServiceManager, ServicesState};
use crate::caps::vars::VarsState;
use crate::engine::Limits;
use crate::grants::{Grants, guest_root};

/// What the host gives one plugin on one device. Cloning is cheap; every step
/// builds its own [`StepState`] from it.
#[derive(Clone, Default)]
pub struct HostEnv {
    pub grants: Grants,
    /// Backend for `services`; calls are refused when `None` or not granted.
    pub services: Option<Arc<dyn ServiceManager>>,
    /// Backend for `prompt`, used only when the grants allow prompting.
    pub prompter: Option<Arc<dyn Prompter>>,
    /// Directory of the plugins' `kv` stores; `kv` is refused when `None`.
    pub kv_dir: Option<PathBuf>,
    pub vars: Arc<BTreeMap<String, String>>,
    pub events: Option<Arc<dyn EventSink>>,
    pub archive_limits: ArchiveLimits,
}

impl std::fmt::Debug for HostEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostEnv")
            .field("grants", &self.grants)
            .field("kv_dir", &self.kv_dir)
            .field("vars", &self.vars)
            .finish_non_exhaustive()
    }
}

impl HostEnv {
    /// Nothing granted at all: what `info` runs with.
    pub fn deny_all() -> Self {
        Self::default()
    }
}

/// Bytes of a plugin's stderr kept per step, to explain a panic.
const STDERR_CAPACITY: usize = 16 * 1024;

/// The data of one step's `Store`: WASI, the limiter, and each capability's state.
pub struct StepState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: crate::engine::Limiter,
    pub(crate) stderr: MemoryOutputPipe,
    pub log: LogState,
    pub archive: ArchiveState,
    pub fs: FsState,
    pub logs: LogsState,
    pub services: ServicesState,
    pub prompt: PromptState,
    pub kv: KvState,
    pub vars: VarsState,
}

impl WasiView for StepState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl StepState {
    /// Builds the state of one step. WASI gets the granted directories as preopens
    /// and nothing else: no environment variables, no arguments, no inherited
    /// stdio (stderr goes to a small in-memory buffer), no sockets and no name
    /// lookups — the defaults of `WasiCtxBuilder`, which this relies on and the
    /// sandbox tests check.
    pub fn new(plugin: &str, env: &HostEnv, limits: &Limits) -> Result<Self, std::io::Error> {
        let mut wasi = WasiCtxBuilder::new();
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        wasi.stderr(stderr.clone());
        wasi.allow_ip_name_lookup(false)
            .allow_tcp(false)
            .allow_udp(false);
        for grant in &env.grants.dirs {
            let perms = if grant.write {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            wasi.preopened_dir(&grant.host, guest_root(grant.dir), perms)
                .map_err(|e| {
                    std::io::Error::other(format!(
                        "granting {} ({}) to plugin {plugin}: {e}",
                        guest_root(grant.dir),
                        grant.host.display()
                    ))
                })?;
        }
        let grants = Arc::new(env.grants.clone());
        let prompter = if env.grants.prompt {
            env.prompter.clone()
        } else {
            None
        };
        Ok(Self {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: crate::engine::Limiter::new(limits),
            stderr,
            log: LogState::new(plugin, env.events.clone()),
            archive: ArchiveState::new(grants.clone(), env.archive_limits.clone()),
            fs: FsState::new(grants.clone()),
            logs: LogsState::new(grants.clone()),
            services: ServicesState::new(grants, env.services.clone()),
            prompt: PromptState::new(prompter),
            kv: KvState::new(env.kv_dir.as_deref(), plugin),
            vars: VarsState::new(env.vars.clone()),
        })
    }

    /// What the plugin wrote to stderr (a panic message, usually), trimmed.
    pub(crate) fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.contents())
            .trim()
            .to_owned()
    }
}
