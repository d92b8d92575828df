//! The on-disk cache of compiled components.
//!
//! An entry is named `<sha256 of the component>-<engine compatibility hash>.cwasm`:
//! the same bytes compiled by the same engine configuration. Entries are written to
//! a temporary file and renamed, so a reader never sees half an entry.

use std::io::Write;
use std::path::Path;

use wasmtime::Engine;
use wasmtime::component::Component;

pub(crate) fn store(dir: &Path, file: &Path, compiled: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile_in(dir)?;
    tmp.1.write_all(compiled)?;
    tmp.1.sync_all()?;
    std::fs::rename(&tmp.0, file)
}

fn tempfile_in(dir: &Path) -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
    let path = dir.join(format!(
        ".tmp-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let file = std::fs::File::create(&path)?;
    Ok((path, file))
}

/// Loads a compiled component from the cache.
///
/// The entry is read into memory rather than mapped: a mapped file that something
/// else truncates takes the whole process down with SIGBUS, and entries are a few
/// megabytes at most.
pub(crate) fn deserialize(engine: &Engine, file: &Path) -> wasmtime::Result<Component> {
    let bytes = std::fs::read(file)?;
    // SAFETY: wasmtime requires the bytes to come from `precompile_component` of a
    // compatible engine and to be unmodified. The cache directory belongs to the
    // host process (the agent's state directory); entries are only written by
    // `store` above from `precompile_component` output, and the name carries the
    // engine's compatibility hash, which wasmtime checks again on load.
    #[allow(unsafe_code)]
    unsafe {
        Component::deserialize(engine, &bytes)
    }
}
