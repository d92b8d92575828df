//! The guest side of `posup:plugin@0.1.0`.
//!
//! A plugin author implements [`Plugin`] for a unit struct and calls [`export!`]:
//!
//! ```ignore
//! struct Kiosk;
//! impl posup_plugin_sdk::Plugin for Kiosk { /* info, inventory, inspect, steps */ }
//! posup_plugin_sdk::export!(Kiosk);
//! ```
//!
//! Host capabilities are plain functions in the modules [`archive`], [`fs`],
//! [`logs`], [`services`], [`prompt`], [`kv`], [`vars`], [`log`] and [`progress`].
//! Files are reached with `std::fs` under the granted directories `/product`,
//! `/staging`, `/backup` and `/logs`.

// The generated export macro names items through `posup_plugin_sdk::…`, which must
// resolve inside this crate too.
extern crate self as posup_plugin_sdk;

#[doc(hidden)]
pub use wit_bindgen::rt as __wit_bindgen_rt;

/// Raw bindings generated from `wit/since_v0.1.0`. Plugins should not need them.
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit/since_v0.1.0",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "export_bindings",
        default_bindings_module: "posup_plugin_sdk::bindings",
        runtime_path: "posup_plugin_sdk::__wit_bindgen_rt",
    });
}

pub use bindings::Guest as Plugin;
pub use bindings::posup::plugin::types::{
    Capabilities, Dir, DirRequest, Error, ErrorKind, Inventory, ModuleVersion, NotNow, Outcome,
    PackageInfo, PluginInfo, StepContext, TaskKind,
};
pub use bindings::posup::plugin::{archive, fs, kv, logs, progress, prompt, services, vars};

/// Exports a type implementing [`Plugin`] as the component's entry points.
#[macro_export]
macro_rules! export {
    ($plugin:ident) => {
        $crate::bindings::export_bindings!($plugin with_types_in $crate::bindings);
    };
}

/// Plugin log lines, stored by the host with the step.
pub mod log {
    use crate::bindings::posup::plugin::log::{Level, log};

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

/// Why a step stops early: the value `?` carries out of a step body run by [`step`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// Nothing was changed; the host asks again after `retry_after_secs`.
    NotNow {
        reason: String,
        retry_after_secs: u32,
    },
    /// The step failed; the host rolls back.
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

/// Runs a step body and turns its result into the [`Outcome`] the host expects.
pub fn step(body: impl FnOnce() -> Result<(), Stop>) -> Outcome {
    match body() {
        Ok(()) => Outcome::Ok,
        Err(Stop::NotNow {
            reason,
            retry_after_secs,
        }) => Outcome::NotNow(NotNow {
            reason,
            retry_after_secs,
        }),
        Err(Stop::Failed(reason)) => {
            log::error(&reason);
            Outcome::Failed(reason)
        }
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

/// Refuses the update when `/staging` has less than four times the package's size
/// free: room for the unpacked tree and the backup copy, generously.
pub fn require_staging_space(package: &str) -> Result<(), Stop> {
    let size = std::fs::metadata(package).at(package)?.len();
    let needed = size.saturating_mul(4);
    let free = fs::free_space("/staging")?;
    if free < needed {
        return Err(Stop::failed(format!(
            "not enough disk space for the update: {free} bytes free on /staging, {needed} needed"
        )));
    }
    Ok(())
}

/// Compares two dotted versions numerically part by part (`1.14.9` > `1.8.4`, `877`
/// > `1.9`); parts that are not numbers compare as text.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let mut pa = a.split(['.', '-', '_']);
    let mut pb = b.split(['.', '-', '_']);
    loop {
        match (pa.next(), pb.next()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, Some(_)) => return std::cmp::Ordering::Less,
            (Some(_), None) => return std::cmp::Ordering::Greater,
            (Some(x), Some(y)) => {
                let ord = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(x), Ok(y)) => x.cmp(&y),
                    _ => x.cmp(y),
                };
                if ord != std::cmp::Ordering::Equal {
                    return ord;
                }
            }
        }
    }
}
