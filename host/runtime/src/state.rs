//! The data of one step's `Store`, and the host environment it is built from.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::beneath::Roots;
use crate::caps::Work;
use crate::caps::archive::{ArchiveLimits, ArchiveState};
use crate::caps::database::DatabaseState;
use crate::caps::fs::FsState;
use crate::caps::kv::KvState;
use crate::caps::log::{EventSink, LogState};
use crate::caps::logs::LogsState;
use crate::caps::prompt::{PromptState, Prompter};
use crate::caps::services::{ServiceManager, ServicesState};
use crate::caps::vars::VarsState;
use crate::grants::{Grants, guest_root};
use crate::limits::{Limiter, Limits};

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
    /// Free space `copy-tree` and `extract` leave on a filesystem.
    pub disk_reserve: DiskReserve,
}

/// Bytes of free space that `copy-tree` and `extract` always leave on the
/// filesystem they write to, so an update never fills the disk the product's own
/// database lives on. 256 MiB unless the device configuration says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskReserve(pub u64);

impl Default for DiskReserve {
    fn default() -> Self {
        DiskReserve(256 << 20)
    }
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
    pub(crate) limiter: Limiter,
    pub(crate) stderr: MemoryOutputPipe,
    pub log: LogState,
    pub archive: ArchiveState,
    pub fs: FsState,
    pub logs: LogsState,
    pub services: ServicesState,
    pub prompt: PromptState,
    pub kv: KvState,
    pub vars: VarsState,
    pub database: DatabaseState,
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
    pub fn new(
        plugin: &str,
        env: &HostEnv,
        limits: &Limits,
        work: Work,
    ) -> Result<Self, std::io::Error> {
        let roots = Arc::new(Roots::open(&env.grants)?);
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
            // WASI opens its preopen by path; the path of the handle just checked
            // makes it the very directory the capabilities use, even if the
            // configured path changed in between.
            let handle = roots
                .handle(grant.dir)
                .expect("every granted directory has a root handle");
            let by_handle = PathBuf::from(format!("/proc/self/fd/{}", handle.as_raw_fd()));
            let path = if by_handle.is_dir() {
                by_handle
            } else {
                grant.host.clone()
            };
            wasi.preopened_dir(&path, guest_root(grant.dir), perms)
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
            limiter: Limiter::new(limits),
            stderr,
            log: LogState::new(plugin, env.events.clone()),
            archive: ArchiveState::new(
                roots.clone(),
                work.clone(),
                env.archive_limits.clone(),
                env.disk_reserve.0,
            ),
            fs: FsState::new(roots.clone(), work.clone(), env.disk_reserve.0),
            logs: LogsState::new(roots.clone(), work.clone()),
            services: ServicesState::new(grants, roots, work.clone(), env.services.clone()),
            prompt: PromptState::new(prompter),
            kv: KvState::new(env.kv_dir.as_deref(), plugin, work.clone()),
            vars: VarsState::new(env.vars.clone()),
            database: DatabaseState::new(env.grants.databases.clone(), work.clone()),
        })
    }

    /// What the plugin wrote to stderr (a panic message, usually), trimmed.
    pub(crate) fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.contents())
            .trim()
            .to_owned()
    }
}

/// Links WASI (preview 2) and every posup capability into `linker`.
pub(crate) fn link_all(
    linker: &mut wasmtime::component::Linker<StepState>,
) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    crate::caps::log::add_to_linker(linker, |s| &mut s.log)?;
    crate::caps::archive::add_to_linker(linker, |s| &mut s.archive)?;
    crate::caps::fs::add_to_linker(linker, |s| &mut s.fs)?;
    crate::caps::logs::add_to_linker(linker, |s| &mut s.logs)?;
    crate::caps::services::add_to_linker(linker, |s| &mut s.services)?;
    crate::caps::prompt::add_to_linker(linker, |s| &mut s.prompt)?;
    crate::caps::kv::add_to_linker(linker, |s| &mut s.kv)?;
    crate::caps::vars::add_to_linker(linker, |s| &mut s.vars)?;
    crate::caps::database::add_to_linker(linker, |s| &mut s.database)?;
    Ok(())
}
