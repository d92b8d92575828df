//! Write a posup plugin: the guest side of the interface `posup:plugin@0.1.1`
//! (`wit/plugin.wit`, shipped inside this crate).
//!
//! A plugin teaches posup how one point-of-sale product is updated. It is a
//! WebAssembly component built with `cargo build --release --target
//! wasm32-wasip2`; the posup agent runs it in a sandbox on every terminal, one
//! step at a time, each step in a fresh instance. A plugin implements
//! [`Plugin`] for a unit struct and hands it to [`export!`]:
//!
//! ```ignore
//! use posup_plugin_sdk::{Capabilities, Dir, DirRequest, PackageInfo, Plugin, PluginInfo, //!     StepContext, Stop, archive, files, fs, services};
//!
//! struct Frontol;
//!
//! impl Plugin for Frontol {
//!     fn info() -> PluginInfo {
//!         PluginInfo {
//!             name: "frontol".into(),
//!             vendor: "ACME".into(),
//!             version: "1.0.0".into(),
//!             device_types: vec!["frontol".into()],
//!             capabilities: Capabilities {
//!                 dirs: vec![DirRequest::write(Dir::Product), DirRequest::write(Dir::Staging),
//!                            DirRequest::write(Dir::Backup)],
//!                 services: vec!["frontol".into()],
//!                 ..Capabilities::default()
//!             },
//!             ..PluginInfo::default()
//!         }
//!     }
//!     fn inspect(package: &str) -> Result<PackageInfo, Stop> {
//!         let version = files::version_in_name(files::file_name(package), "frontol-", &[".tar.gz"])
//!             .ok_or_else(|| Stop::failed(format!("{package}: not frontol-<version>.tar.gz")))?;
//!         Ok(PackageInfo { version: version.into(), kind: "program".into(), ..PackageInfo::default() })
//!     }
//!     fn precheck(ctx: &StepContext) -> Result<(), Stop> { posup_plugin_sdk::tree::require_staging_space(&ctx.package) }
//!     fn stage(ctx: &StepContext) -> Result<(), Stop> { /* unpack into /staging */ Ok(()) }
//!     fn apply(ctx: &StepContext) -> Result<(), Stop> {
//!         services::stop("frontol")?;
//!         posup_plugin_sdk::tree::backup("/product", "/backup/frontol", &ctx.info.version)?;
//!         archive::extract(&ctx.package, "/product")?;
//!         services::start("frontol")?;
//!         Ok(())
//!     }
//!     fn rollback(_ctx: &StepContext) -> Result<(), Stop> {
//!         services::stop("frontol")?;
//!         posup_plugin_sdk::tree::restore("/backup/frontol", "/product", &[])?;
//!         services::start("frontol")?;
//!         Ok(())
//!     }
//!     // `verify` (the product's services keep running), `commit` and `inventory`
//!     // (the version posup installed last) have defaults.
//! }
//!
//! posup_plugin_sdk::export!(Frontol);
//! ```
//!
//! What a plugin can reach:
//! - files with `std::fs` under the directories it asked for and the operator
//!   granted: `/product` (the installation), `/staging` (packages and trees
//!   prepared before the downtime), `/backup`, `/logs`;
//! - the host's capabilities, plain functions in [`archive`], [`fs`], [`logs`],
//!   [`services`], [`prompt`], [`kv`], [`vars`], [`database`], [`log`] and
//!   [`progress`];
//! - nothing else: no network, no environment, no clock beyond WASI's.
//!
//! The helpers every product needs are here too: [`watch`] (log marks that
//! survive a step, waiting for a log line with a deadline, a product that must
//! keep running), [`config`] (settings from server variables), [`tree`]
//! (backup and restore with a keep-list, free space), [`files`] and [`version`].
//!
//! The guide, `docs/plugin-guide.md` in the posup repository, describes the step
//! lifecycle, deadlines, the device configuration and testing with
//! `posup plugin test`.

// The generated bindings name items through `posup_plugin_sdk::…`, which must
// resolve inside this crate too.
extern crate self as posup_plugin_sdk;

pub mod version;

#[cfg(feature = "guest")]
mod guest;
#[cfg(feature = "guest")]
pub use guest::*;
