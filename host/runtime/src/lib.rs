//! posup's plugin sandbox.
//!
//! [`Runtime`] owns the wasmtime engine (component model, epoch interruption,
//! resource limits) and a disk cache of compiled components. [`Runtime::load`]
//! turns a component's bytes into a [`Plugin`]; each call into it — `info`,
//! `inventory`, `inspect` or one update [`Step`] — runs in a fresh store built from
//! a [`HostEnv`]: the [`Grants`] of that plugin on that device plus the host's
//! backends for services, prompts, `kv` and events.
//!
//! Capabilities live in [`caps`], one module each. Nothing is granted by default.

pub mod beneath;
mod cache;
pub mod caps;
pub mod engine;
pub mod error;
pub mod grants;
mod limits;
pub mod plugin;
pub mod state;

pub use engine::{Runtime, RuntimeConfig};
pub use error::{RuntimeError, StepError};
pub use grants::{Allowance, DatabaseGrant, DatabaseSource, DirGrant, Grants};
pub use limits::Limits;
pub use plugin::{Plugin, Step};
/// All generated types of the newest interface, for hosts that implement a backend.
pub use posup_world::latest as wit;
pub use posup_world::latest::types;
pub use state::{DiskReserve, HostEnv};
