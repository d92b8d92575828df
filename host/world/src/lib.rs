//! Host-side bindings of the posup plugin interface, one module per released WIT
//! version (`wit/since_v*`).
//!
//! This is the only crate that runs `bindgen!`; the runtime and the capabilities
//! import the generated traits and types from here. A new interface version adds a
//! module and a variant of [`Interface`]; released modules are never edited.

/// `posup:plugin@0.1.1`, from `wit/since_v0.1.1`: the newest version. The host's
/// capabilities implement its imports, and one linker built from it serves every
/// version: 0.1.1 only added to 0.1.0, so wasmtime's semver-aware linker answers a
/// 0.1.0 plugin's `posup:plugin/fs@0.1.0` with `fs@0.1.1`.
pub mod since_v0_1_1 {
    wasmtime::component::bindgen!({
        path: "../../wit/since_v0.1.1",
        world: "plugin",
        // Host calls such as extracting an archive or waiting for a service are slow
        // I/O: they run as async functions so the executor is never blocked. All
        // errors are values of the WIT `error` type; a host call never traps on
        // purpose (resource limits trap through wasmtime itself).
        imports: { default: async },
        exports: { default: async },
    });

    pub use posup::plugin::*;
}

/// `posup:plugin@0.1.0`, from `wit/since_v0.1.0`. Every interface is the same in
/// 0.1.1, so its types are the newest version's own (`with`) and nothing needs
/// converting; this module only binds the exports a 0.1.0 plugin has (no
/// `databases`).
pub mod since_v0_1_0 {
    wasmtime::component::bindgen!({
        path: "../../wit/since_v0.1.0",
        world: "plugin",
        imports: { default: async },
        exports: { default: async },
        with: {
            "posup:plugin/types": super::since_v0_1_1::posup::plugin::types,
            "posup:plugin/log": super::since_v0_1_1::posup::plugin::log,
            "posup:plugin/progress": super::since_v0_1_1::posup::plugin::progress,
            "posup:plugin/archive": super::since_v0_1_1::posup::plugin::archive,
            "posup:plugin/fs": super::since_v0_1_1::posup::plugin::fs,
            "posup:plugin/logs": super::since_v0_1_1::posup::plugin::logs,
            "posup:plugin/services": super::since_v0_1_1::posup::plugin::services,
            "posup:plugin/prompt": super::since_v0_1_1::posup::plugin::prompt,
            "posup:plugin/kv": super::since_v0_1_1::posup::plugin::kv,
            "posup:plugin/vars": super::since_v0_1_1::posup::plugin::vars,
        },
    });
}

/// The newest interface version. The host's own code speaks its types; calls into
/// plugins of older versions are converted at the boundary.
pub use since_v0_1_1::posup::plugin as latest;

/// A plugin interface version (`major.minor.patch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The interface versions this host implements; the runtime routes every call
/// through the variant a component was built against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interface {
    V0_1_0,
    V0_1_1,
}

impl Interface {
    /// Every supported version, oldest first.
    pub const ALL: [Interface; 2] = [Interface::V0_1_0, Interface::V0_1_1];

    pub fn version(self) -> Version {
        match self {
            Interface::V0_1_0 => Version::new(0, 1, 0),
            Interface::V0_1_1 => Version::new(0, 1, 1),
        }
    }

    /// The newest version this host runs: plugins built against it get every
    /// capability the host offers.
    pub fn newest() -> Interface {
        *Self::ALL.last().expect("at least one interface")
    }
}

#[cfg(test)]
mod tests {
    /// Vendors build against the SDK, not this repository, so the SDK carries
    /// the interface it implements; that copy must be the newest released folder
    /// to the byte, and the SDK's major.minor must name the same version.
    #[test]
    fn the_sdk_carries_the_newest_released_interface() {
        let released = include_str!("../../../wit/since_v0.1.1/plugin.wit");
        let carried = include_str!("../../../plugins/sdk/wit/plugin.wit");
        assert!(
            carried == released,
            "plugins/sdk/wit/plugin.wit differs from wit/since_v0.1.1/plugin.wit: copy the released folder's file into the SDK"
        );
        let latest = super::Interface::newest().version();
        assert!(released.contains(&format!("package posup:plugin@{latest};")));
        let manifest = include_str!("../../../plugins/sdk/Cargo.toml");
        let sdk_version = manifest
            .lines()
            .find_map(|l| l.strip_prefix("version = \""))
            .and_then(|v| v.strip_suffix('"'))
            .expect("the SDK's manifest states its own version");
        assert!(
            sdk_version.starts_with(&format!("{}.{}.", latest.major, latest.minor)),
            "the SDK's version {sdk_version} must start with the interface's {}.{}",
            latest.major,
            latest.minor
        );
    }
}
