//! How plugins and packages are named as TUF targets, and how roles are named.
//!
//! A target's name carries the device type it is for, so that what a delegation
//! allows is written in its path patterns, which the offline `targets` key signs:
//! `plugins/<device type>/<plugin>/<plugin>-<version>.wasm` may be signed only by
//! the vendor role delegated `plugins/<device type>/<plugin>/*`, and
//! `packages/<device type>/<file name>` only by the release role. A compromised
//! vendor key can therefore not sign a plugin of another name, nor one for a
//! device type it is not trusted for.
//!
//! Every part is one plain name (letters, digits, `.`, `_`, `+`, `-`, not starting
//! with a dot), so a target name never holds a glob character, a separator or a
//! `..` of its own.

use crate::{Result, TrustError};

/// The role that signs packages (and with them, the releases operators roll out).
pub const RELEASE: &str = "release";

/// The role of a vendor's plugins: `vendor-` and the vendor's name as plugins
/// give it, lower-cased, with every run of other characters than letters,
/// digits, `.`, `_` and `+` written as one `-` (`Syrve Group` → `vendor-syrve-group`).
pub fn vendor_role(vendor: &str) -> Result<String> {
    let mut slug = String::new();
    for c in vendor.trim().chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+') {
            slug.push(c);
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug = slug.trim_matches(|c| c == '-' || c == '.');
    part("vendor", slug).map_err(|_| {
        TrustError::Invalid(format!(
            "vendor {vendor:?} has no letters or digits to name its role with"
        ))
    })?;
    Ok(format!("vendor-{slug}"))
}

/// The target name of a plugin of `version` for `device_type`.
pub fn plugin_target(device_type: &str, plugin: &str, version: &str) -> Result<String> {
    part("device type", device_type)?;
    part("plugin name", plugin)?;
    part("plugin version", version)?;
    Ok(format!(
        "plugins/{device_type}/{plugin}/{plugin}-{version}.wasm"
    ))
}

/// The path pattern that lets a vendor role sign `plugin` for `device_type`.
pub fn plugin_pattern(device_type: &str, plugin: &str) -> Result<String> {
    part("device type", device_type)?;
    part("plugin name", plugin)?;
    Ok(format!("plugins/{device_type}/{plugin}/*"))
}

/// The target name of a package for `device_type`.
pub fn package_target(device_type: &str, file_name: &str) -> Result<String> {
    part("device type", device_type)?;
    part("package file name", file_name)?;
    Ok(format!("packages/{device_type}/{file_name}"))
}

/// The path pattern that lets the release role sign packages of `device_type`,
/// or of every device type when `None`.
pub fn package_pattern(device_type: Option<&str>) -> Result<String> {
    match device_type {
        Some(t) => {
            part("device type", t)?;
            Ok(format!("packages/{t}/*"))
        }
        None => Ok("packages/*/*".into()),
    }
}

/// Checks one part of a name.
pub fn part(what: &str, s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(TrustError::Invalid(format!(
            "{what} {s:?} cannot be signed: use 1 to 128 letters, digits, '.', '_', '+' or '-', not starting with '.'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_device_type_and_refuse_anything_but_plain_parts() {
        assert_eq!(
            plugin_target("iiko-front", "iiko", "8.1.0").unwrap(),
            "plugins/iiko-front/iiko/iiko-8.1.0.wasm"
        );
        assert_eq!(
            package_target("ukm5", "ukm5_pos_1.8.4.tgz").unwrap(),
            "packages/ukm5/ukm5_pos_1.8.4.tgz"
        );
        assert_eq!(vendor_role("iiko").unwrap(), "vendor-iiko");
        assert_eq!(vendor_role("Syrve Group").unwrap(), "vendor-syrve-group");
        assert_eq!(vendor_role("posup tests").unwrap(), "vendor-posup-tests");
        assert!(vendor_role("  //  ").is_err());
        for bad in ["", "..", ".hidden", "a/b", "a*", "a?", "[a]", "a b", "ü"] {
            assert!(plugin_target("kiosk", bad, "1").is_err(), "{bad:?}");
            assert!(package_target(bad, "x.tgz").is_err(), "{bad:?}");
        }
    }
}
