//! Host capabilities, one module each (Spin's factors are the model).
//!
//! Every capability owns its configuration, its per-step state and its
//! `add_to_linker`; [`crate::state::StepState`] only holds them side by side. All of
//! them are linked into every plugin, so a plugin built against the whole world
//! instantiates anywhere; a call to something not granted answers
//! `error-kind::denied`, never a trap.

pub mod archive;
pub mod fs;
pub mod kv;
pub mod log;
pub mod logs;
pub mod prompt;
pub mod services;
pub mod vars;

use posup_world::latest::types::{Error as WitError, ErrorKind};

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

/// Runs blocking file work off the async executor and converts a panic in it into
/// an I/O error rather than taking the host down.
pub(crate) async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> CapResult<T> + Send + 'static,
) -> Result<T, WitError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(WitError::from),
        Err(e) => Err(CapError::io(format!("{what}: host task failed: {e}")).into()),
    }
}

/// Links WASI (preview 2) and every posup capability into `linker`.
pub(crate) fn link_all(
    linker: &mut wasmtime::component::Linker<crate::state::StepState>,
) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    log::add_to_linker(linker, |s| &mut s.log)?;
    archive::add_to_linker(linker, |s| &mut s.archive)?;
    fs::add_to_linker(linker, |s| &mut s.fs)?;
    logs::add_to_linker(linker, |s| &mut s.logs)?;
    services::add_to_linker(linker, |s| &mut s.services)?;
    prompt::add_to_linker(linker, |s| &mut s.prompt)?;
    kv::add_to_linker(linker, |s| &mut s.kv)?;
    vars::add_to_linker(linker, |s| &mut s.vars)?;
    Ok(())
}
