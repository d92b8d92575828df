//! `vars`: the server's variables for this device (IceCash's `version` and
//! `update`, per-site preferences such as `ignore-version-check`). Read-only; every
//! plugin may read them, as they are what the operator wants it to know.

use std::collections::BTreeMap;
use std::sync::Arc;

use posup_world::latest::vars;
use wasmtime::component::{HasSelf, Linker};

/// Per-step state of `vars`: a snapshot taken when the step starts, so a step sees
/// one consistent set even while the agent receives changes.
pub struct VarsState {
    vars: Arc<BTreeMap<String, String>>,
}

impl VarsState {
    pub fn new(vars: Arc<BTreeMap<String, String>>) -> Self {
        Self { vars }
    }
}

impl vars::Host for VarsState {
    async fn get(&mut self, name: String) -> Option<String> {
        self.vars.get(&name).cloned()
    }

    async fn all(&mut self) -> Vec<(String, String)> {
        self.vars
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut VarsState,
) -> wasmtime::Result<()> {
    vars::add_to_linker::<T, HasSelf<VarsState>>(linker, get)
}
