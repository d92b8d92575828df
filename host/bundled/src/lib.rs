//! The plugins built into the `posup` binary, compiled from `plugins/` by this
//! crate's build script.

include!(concat!(env!("OUT_DIR"), "/plugins.rs"));

/// The component of the bundled plugin `name`, if there is one.
pub fn get(name: &str) -> Option<&'static [u8]> {
    PLUGINS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, bytes)| *bytes)
}

/// Names of all bundled plugins.
pub fn names() -> impl Iterator<Item = &'static str> {
    PLUGINS.iter().map(|(name, _)| *name)
}
