//! The version overview's computation (the Openbravo model): a device's version
//! status against its device type's reference, the version computed from its module
//! versions, and the modules that differ.

use std::collections::BTreeMap;

use posup_proto::api::{ModuleDifference, VersionStatus};
use posup_proto::{Inventory, ModuleVersion};

/// What the devices of a type are compared with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub version: String,
    /// Empty when only the version is compared.
    pub modules: Vec<ModuleVersion>,
}

/// The outcome for one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Computed {
    pub status: VersionStatus,
    pub error: Option<String>,
    pub computed_version: String,
    pub differences: Vec<ModuleDifference>,
}

/// Compares a device's last inventory with the reference of its type.
pub fn compute(
    device_type: &str,
    inventory: Option<&Inventory>,
    inventory_error: Option<&str>,
    reference: Option<&Reference>,
) -> Computed {
    let computed_version = inventory.map(computed_version).unwrap_or_default();
    let unknown = |error: String| Computed {
        status: VersionStatus::Unknown,
        error: Some(error),
        computed_version: computed_version.clone(),
        differences: Vec::new(),
    };
    if let Some(error) = inventory_error {
        return unknown(format!(
            "the plugin could not read the installation: {error}"
        ));
    }
    let Some(inventory) = inventory else {
        return unknown("the device has not reported its installation yet".to_owned());
    };
    let Some(reference) = reference else {
        return unknown(format!(
            "device type {device_type} has no reference version: set one or mark a package Current"
        ));
    };
    let differences = module_differences(&reference.modules, &inventory.modules);
    let same = inventory.version == reference.version && differences.is_empty();
    Computed {
        status: if same {
            VersionStatus::Same
        } else {
            VersionStatus::Different
        },
        error: None,
        computed_version,
        differences,
    }
}

/// Every module whose version differs between the reference and the device,
/// including modules only one side has. Without reference modules, modules are not
/// compared.
pub fn module_differences(
    reference: &[ModuleVersion],
    device: &[ModuleVersion],
) -> Vec<ModuleDifference> {
    if reference.is_empty() {
        return Vec::new();
    }
    let mut both: BTreeMap<&str, (Option<&str>, Option<&str>)> = BTreeMap::new();
    for m in reference {
        both.entry(&m.name).or_default().0 = Some(&m.version);
    }
    for m in device {
        both.entry(&m.name).or_default().1 = Some(&m.version);
    }
    both.into_iter()
        .filter(|(_, (r, d))| r != d)
        .map(|(name, (r, d))| ModuleDifference {
            name: name.to_owned(),
            reference: r.map(str::to_owned),
            device: d.map(str::to_owned),
        })
        .collect()
}

/// One number for the whole installation, computed from its module versions, that
/// grows whenever any module's version grows (module versions only grow). Each
/// module's version `major.minor.patch` weighs major·10¹² + minor·10⁶ + patch,
/// each part capped at 999 999 (Openbravo numbers builds in the thousands:
/// `1.8.3900`, `3.0.33000`); the sum over modules is the computed version, the
/// same number the Openbravo plugin computes. A product without modules reports
/// its own version instead.
pub fn computed_version(inventory: &Inventory) -> String {
    if inventory.modules.is_empty() {
        return inventory.version.clone();
    }
    let total: u128 = inventory
        .modules
        .iter()
        .map(|m| module_weight(&m.version))
        .sum();
    total.to_string()
}

fn module_weight(version: &str) -> u128 {
    const WEIGHTS: [u128; 3] = [1_000_000_000_000, 1_000_000, 1];
    const CAP: u128 = 999_999;
    version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|part| !part.is_empty())
        .take(3)
        .zip(WEIGHTS)
        .map(|(part, weight)| part.parse::<u128>().unwrap_or(CAP).min(CAP) * weight)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modules(list: &[(&str, &str)]) -> Vec<ModuleVersion> {
        list.iter()
            .map(|(n, v)| ModuleVersion {
                name: n.to_string(),
                version: v.to_string(),
            })
            .collect()
    }

    fn inventory(version: &str, mods: &[(&str, &str)]) -> Inventory {
        Inventory {
            product: "Openbravo".into(),
            version: version.into(),
            modules: modules(mods),
            ..Default::default()
        }
    }

    #[test]
    fn same_when_version_and_every_module_match() {
        let reference = Reference {
            version: "23.4".into(),
            modules: modules(&[("core", "3.0.234"), ("retail", "1.2")]),
        };
        let inv = inventory("23.4", &[("retail", "1.2"), ("core", "3.0.234")]);
        let c = compute("openbravo", Some(&inv), None, Some(&reference));
        assert_eq!(c.status, VersionStatus::Same);
        assert!(c.differences.is_empty());
        assert_eq!(c.error, None);
    }

    #[test]
    fn different_lists_each_differing_module_with_both_versions() {
        let reference = Reference {
            version: "23.4".into(),
            modules: modules(&[("core", "3.0.234"), ("retail", "1.2"), ("gone", "1")]),
        };
        let inv = inventory(
            "23.4",
            &[("core", "3.0.235"), ("retail", "1.2"), ("extra", "0.1")],
        );
        let c = compute("openbravo", Some(&inv), None, Some(&reference));
        assert_eq!(c.status, VersionStatus::Different);
        let names: Vec<_> = c
            .differences
            .iter()
            .map(|d| (d.name.as_str(), d.reference.as_deref(), d.device.as_deref()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("core", Some("3.0.234"), Some("3.0.235")),
                ("extra", None, Some("0.1")),
                ("gone", Some("1"), None),
            ]
        );
    }

    #[test]
    fn unknown_carries_the_reason() {
        let reference = Reference {
            version: "1".into(),
            modules: vec![],
        };
        let c = compute(
            "ukm5",
            None,
            Some("cannot read /product/version"),
            Some(&reference),
        );
        assert_eq!(c.status, VersionStatus::Unknown);
        assert!(c.error.unwrap().contains("cannot read /product/version"));
        let c = compute("ukm5", Some(&inventory("1", &[])), None, None);
        assert_eq!(c.status, VersionStatus::Unknown);
        assert!(
            c.error
                .unwrap()
                .contains("device type ukm5 has no reference")
        );
    }

    #[test]
    fn computed_version_grows_with_any_module() {
        let old = computed_version(&inventory("x", &[("a", "1.9.0"), ("b", "2.0")]));
        let newer = computed_version(&inventory("x", &[("a", "2.0.0"), ("b", "2.0")]));
        let newest = computed_version(&inventory("x", &[("a", "2.0.0"), ("b", "2.0.1")]));
        let (old, newer, newest): (u128, u128, u128) = (
            old.parse().unwrap(),
            newer.parse().unwrap(),
            newest.parse().unwrap(),
        );
        assert!(old < newer && newer < newest, "{old} {newer} {newest}");
        assert_eq!(computed_version(&inventory("1.8.4", &[])), "1.8.4");
    }

    /// Openbravo numbers its modules' builds in the thousands (`1.8.3900`,
    /// core `3.0.33000`): a build grows the computed version, and it is the
    /// number the store server's plugin computes.
    #[test]
    fn openbravo_builds_grow_the_computed_version() {
        let baseline = [
            ("org.openbravo", "3.0.33000"),
            ("org.openbravo.mobile.core", "1.8.3900"),
            ("org.openbravo.retail.discounts", "1.8.3900"),
            ("org.openbravo.retail.posterminal", "1.8.3900"),
            ("org.openbravo.retail.storeserver", "1.2.3900"),
        ];
        let before = computed_version(&inventory("x", &baseline));
        let mut updated = baseline;
        updated[3].1 = "1.8.4000";
        let after = computed_version(&inventory("x", &updated));
        assert_eq!(before, "7000026048600");
        assert_eq!(after, "7000026048700");
    }
}
