//! The wasmtime engine, its epoch ticker, resource limits and the component cache.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};

use crate::error::RuntimeError;
pub use crate::limits::Limits;
use crate::plugin::Plugin;
use crate::state::StepState;

/// How often the engine's epoch advances. Deadlines are whole ticks, so a looping
/// plugin is interrupted at most one tick after its deadline.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The runtime's settings.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Directory of compiled components (`<sha256>-<engine>.cwasm`). `None` compiles
    /// every component on load.
    pub cache_dir: Option<PathBuf>,
    pub limits: Limits,
    /// Deadline of `inventory` and `inspect`, which only read.
    pub read_deadline: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            limits: Limits::default(),
            read_deadline: Duration::from_secs(120),
        }
    }
}

/// Loads plugins and runs their steps. One per process; cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) engine: Engine,
    pub(crate) linker: Arc<Linker<StepState>>,
    pub(crate) config: Arc<RuntimeConfig>,
    engine_hash: Arc<str>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.config)
            .field("engine_hash", &self.engine_hash)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(config.limits.stack)
            .cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = Engine::new(&wasm).map_err(|e| RuntimeError::Engine(e.to_string()))?;
        spawn_ticker(&engine);

        let mut linker = Linker::new(&engine);
        crate::state::link_all(&mut linker).map_err(|e| RuntimeError::Engine(e.to_string()))?;

        let engine_hash = {
            use std::hash::{Hash, Hasher};
            let mut h = std::hash::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut h);
            format!("{:016x}", h.finish())
        };
        Ok(Self {
            engine,
            linker: Arc::new(linker),
            config: Arc::new(config),
            engine_hash: engine_hash.into(),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.config.limits
    }

    /// Loads a plugin from the bytes of its component: from the cache when this
    /// engine compiled the same bytes before, otherwise compiled (and cached).
    /// `name` is only used in messages until `info` tells the plugin's own name.
    pub fn load(&self, name: &str, bytes: &[u8]) -> Result<Plugin, RuntimeError> {
        let digest = hex::encode(Sha256::digest(bytes));
        let component = self.compile_cached(name, &digest, bytes)?;
        Plugin::new(self.clone(), name, digest, component)
    }

    /// Loads a plugin whose bytes were checked against `sha256` (a download's):
    /// hashed once here, refused when they are other bytes, and never compiled
    /// then.
    pub fn load_verified(
        &self,
        name: &str,
        bytes: &[u8],
        sha256: &str,
    ) -> Result<Plugin, RuntimeError> {
        let digest = hex::encode(Sha256::digest(bytes));
        if digest != sha256 {
            return Err(RuntimeError::Digest {
                plugin: name.to_owned(),
                expected: sha256.to_owned(),
                found: digest,
            });
        }
        let component = self.compile_cached(name, &digest, bytes)?;
        Plugin::new(self.clone(), name, digest, component)
    }

    /// Whether the bytes with this sha256 are compiled in the on-disk cache
    /// already, so loading them runs no compiler.
    pub fn is_cached_as(&self, sha256: &str) -> bool {
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return false;
        }
        let name = self.cache_name(sha256);
        self.config
            .cache_dir
            .as_ref()
            .is_some_and(|dir| crate::cache::is_stored(dir, &name))
    }

    /// Compiles `bytes` into the on-disk cache without loading them: for a helper
    /// process, so the compiler's memory never stays with a long-lived one.
    pub fn precompile(&self, name: &str, bytes: &[u8]) -> Result<(), RuntimeError> {
        let digest = hex::encode(Sha256::digest(bytes));
        let dir = self
            .config
            .cache_dir
            .as_ref()
            .ok_or_else(|| RuntimeError::Compile {
                plugin: name.to_owned(),
                message: "the runtime has no compile cache to write to".into(),
            })?;
        self.compile_into(name, bytes, dir, &self.cache_name(&digest))
    }

    fn cache_name(&self, digest: &str) -> String {
        format!("{digest}-{}.cwasm", self.engine_hash)
    }

    /// Loads a plugin from a `.wasm` file.
    pub fn load_file(&self, path: &Path) -> Result<Plugin, RuntimeError> {
        let bytes = std::fs::read(path).map_err(|e| RuntimeError::Read {
            path: path.to_owned(),
            source: e,
        })?;
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("plugin")
            .to_owned();
        self.load(&name, &bytes)
    }

    fn compile_cached(
        &self,
        name: &str,
        digest: &str,
        bytes: &[u8],
    ) -> Result<Component, RuntimeError> {
        let Some(dir) = &self.config.cache_dir else {
            let component =
                Component::new(&self.engine, bytes).map_err(|e| RuntimeError::Compile {
                    plugin: name.to_owned(),
                    message: e.to_string(),
                });
            release_freed_heap();
            return component;
        };
        let entry = self.cache_name(digest);
        let cache_error = |source| RuntimeError::Cache {
            path: dir.join(&entry),
            source,
        };
        if let Some(component) =
            crate::cache::load(&self.engine, dir, &entry).map_err(cache_error)?
        {
            return Ok(component);
        }
        self.compile_into(name, bytes, dir, &entry)?;
        crate::cache::load(&self.engine, dir, &entry)
            .map_err(cache_error)?
            .ok_or_else(|| RuntimeError::Compile {
                plugin: name.to_owned(),
                message: "the compiled component did not load back from the cache".into(),
            })
    }

    /// Compiles `bytes` and writes the result to the cache entry `entry` in `dir`.
    fn compile_into(
        &self,
        name: &str,
        bytes: &[u8],
        dir: &Path,
        entry: &str,
    ) -> Result<(), RuntimeError> {
        let compiled = self.engine.precompile_component(bytes);
        release_freed_heap();
        let compiled = compiled.map_err(|e| RuntimeError::Compile {
            plugin: name.to_owned(),
            message: e.to_string(),
        })?;
        crate::cache::store(dir, entry, &compiled).map_err(|e| RuntimeError::Cache {
            path: dir.join(entry),
            source: e,
        })
    }
}

/// Gives the heap a compile freed back to the system. Cranelift's working memory
/// (tens of megabytes for a product plugin) stays in malloc's arenas once freed;
/// on a terminal agent that compiles once and then idles for weeks it would stay
/// resident for good.
fn release_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim only returns free pages to the system; no live allocation
    // is touched.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until the engine is dropped.
fn spawn_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("posup-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning the epoch ticker thread");
}
