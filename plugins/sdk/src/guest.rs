//! The guest side: the [`Plugin`] trait, [`export!`], the host's capabilities and
//! the helpers built on them.

mod adapter;
pub mod config;
pub mod files;
pub mod tree;
mod types;
pub mod watch;

pub use types::{
    Capabilities, DatabaseRequest, Dir, DirRequest, Inventory, ModuleVersion, PackageInfo,
    PluginInfo, StepContext, TaskKind,
};

/// The raw bindings and the adapter [`export!`] expands to. Not part of the API:
/// a plugin never names anything in here.
#[doc(hidden)]
pub mod __private {
    pub use super::adapter::*;
    pub use wit_bindgen::rt;

    #[allow(clippy::too_many_arguments)]
    pub mod bindings {
        wit_bindgen::generate!({
            path: "wit",
            world: "plugin",
            pub_export_macro: true,
            export_macro_name: "export_bindings",
            default_bindings_module: "posup_plugin_sdk::__private::bindings",
            runtime_path: "posup_plugin_sdk::__private::rt",
        });
    }
}

use __private::bindings::posup::plugin as host;

/// Why a host call was refused or failed, and its kind.
pub use host::types::{Error, ErrorKind};
/// The host's capabilities. Each refuses what the device type did not grant
/// with [`ErrorKind::Denied`].
pub use host::{archive, database, fs, kv, logs, prompt, services, vars};

/// A product's update, step by step. The host calls one function per step, each
/// in a fresh instance of the plugin, in the order
/// `inspect → precheck → stage → (consent) → apply → verify → commit`, and
/// `rollback` after any failure from `stage` on.
///
/// Every step must be idempotent: after a crash or power loss the host runs an
/// interrupted `precheck`, `stage`, `commit` or `rollback` again (with
/// [`StepContext::attempt`] > 1), and rolls back an interrupted `apply` or
/// `verify`. Read progress from the trees and from [`kv`], never assume it.
///
/// `inventory`, `inspect` and `precheck` only look: the host grants them
/// directories read-only and lets them only query services.
pub trait Plugin {
    /// Who the plugin is and what it needs. Must not touch any directory.
    fn info() -> PluginInfo;

    /// The product's installed state, reported to the server with every poll.
    ///
    /// By default: the product is the plugin's name, its version the one posup
    /// installed last ([`installed_version`]), and it is ready when every
    /// service the plugin names runs.
    fn inventory() -> Result<Inventory, Stop> {
        let info = Self::info();
        let mut running = 0;
        for name in &info.capabilities.services {
            if services::status(name)? == services::State::Running {
                running += 1;
            }
        }
        let services = info.capabilities.services.len();
        let ready = services > 0 && running == services;
        Ok(Inventory {
            product: info.name,
            version: installed_version()?.unwrap_or_default(),
            state: match (services, ready) {
                (0, _) => "unknown",
                (_, true) => "running",
                (_, false) => "stopped",
            }
            .into(),
            ready,
            ..Inventory::default()
        })
    }

    /// Reads a package (a path under `/staging`) without installing it: the
    /// version it installs, its kind, notes and changelog.
    fn inspect(package: &str) -> Result<PackageInfo, Stop>;

    /// Checks the terminal can be updated now; changes nothing. Answer
    /// [`Stop::NotNow`] while the product is busy (an open receipt, a customer at
    /// the kiosk) and [`Stop::Failed`] when the update can never go ahead here.
    fn precheck(ctx: &StepContext) -> Result<(), Stop>;

    /// Prepares the update without downtime: unpack, copy, carry settings over.
    fn stage(ctx: &StepContext) -> Result<(), Stop>;

    /// Installs the update. The product may be stopped; keep what `rollback`
    /// needs first (see [`tree::backup`]).
    fn apply(ctx: &StepContext) -> Result<(), Stop>;

    /// Checks the product runs the new version without errors.
    ///
    /// By default: every service the plugin names keeps running for the server
    /// variable `<name>-settle-secs` (10 s unless set). A product with a log
    /// that tells it started should watch for that instead ([`watch::watch_log`]).
    fn verify(ctx: &StepContext) -> Result<(), Stop> {
        let _ = ctx;
        let info = Self::info();
        let names: Vec<&str> = info
            .capabilities
            .services
            .iter()
            .map(String::as_str)
            .collect();
        watch::settle(
            &names,
            &format!("{}-settle-secs", info.name),
            std::time::Duration::from_secs(10),
        )
    }

    /// Makes the update final and drops what only a rollback needed. When it
    /// returns `Ok`, the SDK records the package's version as installed
    /// ([`installed_version`]). By default it does nothing else.
    fn commit(ctx: &StepContext) -> Result<(), Stop> {
        let _ = ctx;
        Ok(())
    }

    /// Puts the installation back exactly as it was before `apply`, and starts
    /// it. Runs after a failure in any step from `stage` on, possibly before
    /// `apply` ever ran, and again after a crash: check what is there to undo.
    fn rollback(ctx: &StepContext) -> Result<(), Stop>;
}

/// The kv key the SDK records a committed version under. Keys starting with
/// `posup-` belong to the SDK.
const INSTALLED_KEY: &str = "posup-installed";

/// The version the last committed update installed on this terminal, `None`
/// before posup committed one. For products that do not name their version
/// anywhere posup can read.
pub fn installed_version() -> Result<Option<String>, Stop> {
    Ok(kv::get(INSTALLED_KEY)?)
}

/// Exports a type implementing [`Plugin`] as the component's entry points.
/// Call it once, at the crate's top level.
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        const _: () = {
            use $crate::__private::bindings as __posup_bindings;
            struct __PosupExports;
            impl __posup_bindings::Guest for __PosupExports {
                fn info() -> __posup_bindings::posup::plugin::types::PluginInfo {
                    $crate::__private::info::<$plugin>()
                }
                fn databases() -> Vec<__posup_bindings::posup::plugin::types::DatabaseRequest> {
                    $crate::__private::databases::<$plugin>()
                }
                fn inventory()
                -> ::core::result::Result<__posup_bindings::posup::plugin::types::Inventory, String> {
                    $crate::__private::inventory::<$plugin>()
                }
                fn inspect(
                    package: String,
                ) -> ::core::result::Result<__posup_bindings::posup::plugin::types::PackageInfo, String>
                {
                    $crate::__private::inspect::<$plugin>(package)
                }
                fn precheck(
                    ctx: __posup_bindings::posup::plugin::types::StepContext,
                ) -> __posup_bindings::posup::plugin::types::Outcome {
                    $crate::__private::precheck::<$plugin>(ctx)
                }
                fn stage(
                    ctx: __posup_bindings::posup::plugin::types::StepContext,
                ) -> __posup_bindings::posup::plugin::types::Outcome {
                    $crate::__private::stage::<$plugin>(ctx)
                }
                fn apply(
                    ctx: __posup_bindings::posup::plugin::types::StepContext,
                ) -> __posup_bindings::posup::plugin::types::Outcome {
                    $crate::__private::apply::<$plugin>(ctx)
                }
                fn verify(
                    ctx: __posup_bindings::posup::plugin::types::StepContext,
                ) -> __posup_bindings::posup::plugin::types::Outcome {
                    $crate::__private::verify::<$plugin>(ctx)
                }
                fn commit(
                    ctx: __posup_bindings::posup::plugin::types::StepContext,
                ) -> __posup_bindings::posup::plugin::types::Outcome {
                    $crate::__private::commit::<$plugin>(ctx)
                }
                fn rollback(
                    ctx: __posup_bindings::posup::plugin::types::StepContext,
                ) -> __posup_bindings::posup::plugin::types::Outcome {
                    $crate::__private::rollback::<$plugin>(ctx)
                }
            }
            __posup_bindings::export_bindings!(__PosupExports with_types_in $crate::__private::bindings);
        };
    };
}

/// Plugin log lines, kept by the host with the step they belong to and shown
/// by `posup apply --verbose`.
pub mod log {
    use super::host::log::{Level, log};

    pub fn debug(message: &str) {
        log(Level::Debug, message);
    }
    pub fn info(message: &str) {
        log(Level::Info, message);
    }
    pub fn warn(message: &str) {
        log(Level::Warn, message);
    }
    pub fn error(message: &str) {
        log(Level::Error, message);
    }
}

/// Progress of the running step, shown to operators.
pub mod progress {
    /// `percent` of the current step (0–100, more is taken as 100) and what is
    /// happening now.
    pub fn report(percent: u8, message: &str) {
        super::host::progress::report(percent.min(100), message);
    }
}

/// Why a step stops early: the error of every step, carried out by `?`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// Nothing was changed; the host asks again after `retry_after_secs`.
    NotNow {
        reason: String,
        retry_after_secs: u32,
    },
    /// The step failed; the reason is shown to operators and the host rolls
    /// back.
    Failed(String),
}

impl Stop {
    pub fn not_now(reason: impl Into<String>, retry_after_secs: u32) -> Self {
        Stop::NotNow {
            reason: reason.into(),
            retry_after_secs,
        }
    }

    pub fn failed(reason: impl Into<String>) -> Self {
        Stop::Failed(reason.into())
    }

    /// What the stop says, whichever kind it is.
    pub fn message(&self) -> &str {
        match self {
            Stop::Failed(s) => s,
            Stop::NotNow { reason, .. } => reason,
        }
    }
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Failed(e.message)
    }
}

impl From<String> for Stop {
    fn from(s: String) -> Self {
        Stop::Failed(s)
    }
}

impl From<&str> for Stop {
    fn from(s: &str) -> Self {
        Stop::Failed(s.to_owned())
    }
}

/// Adds the path to an I/O error, so a failure names the file it is about.
pub trait IoContext<T> {
    fn at(self, path: &str) -> Result<T, Stop>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &str) -> Result<T, Stop> {
        self.map_err(|e| Stop::Failed(format!("{path}: {e}")))
    }
}
