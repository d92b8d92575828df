//! The terminal side of posup.
//!
//! [`pipeline`] runs one update through a plugin, step by step, journalling every
//! transition ([`journal`]) so a crash at any point ends fully old or fully new.
//! `posup apply` runs the pipeline on a local package; the agent runs it for the
//! server's tasks.

pub mod device;
pub mod journal;
pub mod pipeline;

pub use pipeline::{Observer, Pipeline, PipelineError, Settings, StepReport, UpdateRequest, UpdateResult};
pub use device::DeviceConfig;
