//! Product versions, compared the way POS vendors number releases.

/// Compares two versions part by part, as the plugins do: the one
/// implementation lives in the plugin SDK.
pub use posup_plugin_sdk::version::compare;

/// The installed version a package is measured against: the version of the
/// installed module the package is named after (`<module>-<version>.obx`,
/// `<module>_<version>.tgz`), where the product reports modules; otherwise the
/// product's own version. An Openbravo module package is compared with that
/// module, not with the store server's computed version.
pub fn installed_for<'a>(
    package_file: &str,
    product_version: &'a str,
    modules: &'a [(String, String)],
) -> &'a str {
    modules
        .iter()
        .filter(|(name, _)| {
            !name.is_empty()
                && package_file
                    .strip_prefix(name.as_str())
                    .is_some_and(|rest| rest.starts_with(['-', '_']))
        })
        // The longest name: `org.openbravo.retail.posterminal` over `org.openbravo`.
        .max_by_key(|(name, _)| name.len())
        .map_or(product_version, |(_, version)| version.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_module_package_is_measured_against_its_module() {
        let modules = [
            ("org.openbravo".to_owned(), "3.0.33000".to_owned()),
            (
                "org.openbravo.retail.posterminal".to_owned(),
                "1.8.3900".to_owned(),
            ),
            ("dIceCash".to_owned(), "2.0.059".to_owned()),
            ("iceupd".to_owned(), String::new()),
        ];
        assert_eq!(
            installed_for(
                "org.openbravo.retail.posterminal-1.8.4000.obx",
                "7000026048600",
                &modules
            ),
            "1.8.3900"
        );
        assert_eq!(
            installed_for("dIceCash_2.0.060.tgz", "2.0.059", &modules),
            "2.0.059"
        );
        // An environment update is measured against the environment's level.
        assert_eq!(installed_for("iceupd_001.tar.bz2", "2.0.059", &modules), "");
        // No module named so: the product's version.
        assert_eq!(installed_for("ukm5_pos_1.14.9.tgz", "1.8.4", &[]), "1.8.4");
        assert_eq!(
            installed_for("org.openbravox-1.0.obx", "7", &modules),
            "7",
            "a name is matched whole"
        );
    }
}
