//! The runtime's errors: loading a plugin, running one of its calls, and
//! the error a plugin sees from a host call ([`CapError`]).

use std::path::PathBuf;

use posup_world::latest::types::{Error as WitError, ErrorKind};

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
    #[error(
        "plugin {plugin}: its bytes hash to sha256 {found}, not the {expected} they were checked against; it is not loaded"
    )]
    Digest {
        plugin: String,
        expected: String,
        found: String,
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

/// An error a plugin sees as the WIT `error` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CapError {
    pub kind: ErrorKind,
    pub message: String,
}

pub type CapResult<T> = Result<T, CapError>;

impl CapError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
    pub fn denied(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Denied, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, message)
    }
    pub fn limit(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Limit, message)
    }
    pub fn io(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Io, message)
    }
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Timeout, message)
    }

    /// An I/O error on `what` (a path or an object name), kept as `not-found` when
    /// it is one.
    pub fn from_io(what: impl std::fmt::Display, e: &std::io::Error) -> Self {
        let kind = match e.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::PermissionDenied => ErrorKind::Denied,
            _ => ErrorKind::Io,
        };
        Self::new(kind, format!("{what}: {e}"))
    }
}

impl From<CapError> for WitError {
    fn from(e: CapError) -> Self {
        WitError {
            kind: e.kind,
            message: e.message,
        }
    }
}
