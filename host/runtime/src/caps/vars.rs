//! `vars`: the server's variables for this device (IceCash's `version` and
//! `update`, per-site preferences such as `ignore-version-check`). Read-only; every
//! plugin may read them, as they are what the operator wants it to know.
//!
//! The host adds one fact of its own, [`BOOT_ID`]: the kernel's id of the
//! current boot, so a plugin can tell that the terminal was rebooted since an
//! update that required it (UKM 5's full reboot). A value the server sets under
//! that name takes its place, which is how tests simulate a reboot.

use std::collections::BTreeMap;
use std::sync::Arc;

use posup_world::latest::vars;
use wasmtime::component::{HasSelf, Linker};

/// The variable that holds this boot's id.
pub const BOOT_ID: &str = "posup-boot-id";
/// Where Linux keeps the id of the current boot (a random UUID per boot).
const BOOT_ID_FILE: &str = "/proc/sys/kernel/random/boot_id";

/// Per-step state of `vars`: a snapshot taken when the step starts, so a step sees
/// one consistent set even while the agent receives changes.
pub struct VarsState {
    vars: Arc<BTreeMap<String, String>>,
}

impl VarsState {
    pub fn new(vars: Arc<BTreeMap<String, String>>) -> Self {
        if vars.contains_key(BOOT_ID) {
            return Self { vars };
        }
        let Some(boot) = boot_id() else {
            return Self { vars };
        };
        let mut with_boot = (*vars).clone();
        with_boot.insert(BOOT_ID.to_owned(), boot);
        Self {
            vars: Arc::new(with_boot),
        }
    }
}

/// This boot's id; `None` where the kernel does not say (not Linux).
fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string(BOOT_ID_FILE).ok()?;
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_owned())
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

#[cfg(test)]
mod tests {
    use super::*;
    use vars::Host;

    #[tokio::test]
    async fn the_boot_id_is_the_kernels_unless_the_server_sets_it() {
        let mut plain = VarsState::new(Arc::new(BTreeMap::from([(
            "version".to_owned(),
            "2.0.060".to_owned(),
        )])));
        let boot = plain.get(BOOT_ID.into()).await.expect("a boot id on Linux");
        assert_eq!(boot, boot_id().unwrap());
        assert_eq!(
            plain.get("version".into()).await.as_deref(),
            Some("2.0.060")
        );
        assert_eq!(plain.all().await.len(), 2);

        let mut set = VarsState::new(Arc::new(BTreeMap::from([(
            BOOT_ID.to_owned(),
            "after-reboot".to_owned(),
        )])));
        assert_eq!(
            set.get(BOOT_ID.into()).await.as_deref(),
            Some("after-reboot")
        );
    }
}
