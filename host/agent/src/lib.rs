//! The terminal side of posup.
//!
//! [`pipeline`] runs one update through a plugin, step by step, journalling every
//! transition ([`journal`]) so a crash at any point ends fully old or fully new.
//! `posup apply` runs the pipeline on a local package; the [`agent`] runs it for the
//! server's tasks: it polls the server ([`client`]), downloads packages resumably
//! and checks them ([`download`]), asks the cashier through files ([`prompter`]),
//! and reports every step through a persistent [`outbox`]. Its configuration is
//! [`config`], what it keeps between runs [`state`].

pub mod agent;
pub mod client;
pub mod config;
pub mod device;
pub mod download;
pub mod journal;
pub mod outbox;
pub mod pipeline;
pub mod prompter;
pub mod staging;
pub mod state;

pub use agent::Agent;
pub use config::AgentConfig;
pub use device::DeviceConfig;
pub use pipeline::{
    Observer, Pipeline, PipelineError, Settings, StepReport, UpdateRequest, UpdateResult,
};
