//! The runtime's errors: loading a plugin, and running one of its calls.

use std::path::PathBuf;

/// Loading a plugin failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("the WebAssembly engine could not be set up: {0}")]
    Engine(String),
    #[error("reading plugin {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("plugin {plugin} is not a valid WebAssembly component: {message}")]
    Compile { plugin: String, message: String },
    #[error("writing the compiled-plugin cache entry {path}: {source}")]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "plugin {plugin} is built against posup:plugin@{found}; this host runs {supported}: rebuild the plugin against a supported version"
    )]
    UnsupportedInterface {
        plugin: String,
        found: String,
        supported: String,
    },
    #[error("plugin {plugin} does not fit posup:plugin@{version}: {message}")]
    Link {
        plugin: String,
        version: String,
        message: String,
    },
}

/// One call into a plugin failed before the plugin could answer. A plugin's own
/// refusal (`not-now`, `failed`, an `Err` from `inspect`) is not a `StepError`.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("plugin {plugin}: {call} could not start: {message}")]
    Setup {
        plugin: String,
        call: &'static str,
        message: String,
    },
    #[error("plugin {plugin}: {call} ran past its deadline of {secs} s and was interrupted")]
    Deadline {
        plugin: String,
        call: &'static str,
        secs: u64,
    },
    #[error("plugin {plugin}: {call} was stopped: {message}")]
    Limit {
        plugin: String,
        call: &'static str,
        message: String,
    },
    #[error("plugin {plugin}: {call} crashed: {message}")]
    Trap {
        plugin: String,
        call: &'static str,
        message: String,
    },
}
