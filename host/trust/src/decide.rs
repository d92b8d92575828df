//! The rules a terminal applies on top of the signatures.

use std::cmp::Ordering;

use posup_policy::version;

use crate::client::SignedTarget;

/// Whether a signed package may be installed over `installed`: a release that
/// is older than what is installed needs the release role's explicit
/// `allow_downgrade`, so a compromised server cannot roll a terminal back to
/// older, signed software. A package without a signed version, or a terminal
/// that reports no version, is no downgrade.
pub fn downgrade(installed: &str, package: &SignedTarget) -> Result<(), String> {
    let offered = package.release.version.as_str();
    if installed.is_empty() || offered.is_empty() {
        return Ok(());
    }
    if version::compare(offered, installed) == Ordering::Less && !package.release.allow_downgrade {
        return Err(format!(
            "{}: version {offered} is older than the installed {installed}, and role {} did not sign it as a downgrade; nothing was installed (sign the release with --allow-downgrade to roll back on purpose)",
            package.name, package.role
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offline::Release;

    fn package(version: &str, allow_downgrade: bool) -> SignedTarget {
        SignedTarget {
            name: "packages/kiosk/kiosk_7.5.0.tgz".into(),
            role: "release".into(),
            length: 1,
            sha256: String::new(),
            release: Release {
                version: version.into(),
                allow_downgrade,
            },
        }
    }

    #[test]
    fn an_older_release_needs_the_signed_word_of_the_release_role() {
        assert!(downgrade("7.5.0", &package("7.6.0", false)).is_ok());
        assert!(downgrade("7.5.0", &package("7.5.0", false)).is_ok());
        let e = downgrade("7.10.0", &package("7.9.0", false)).unwrap_err();
        assert!(
            e.contains("older than the installed 7.10.0") && e.contains("role release"),
            "{e}"
        );
        assert!(downgrade("7.10.0", &package("7.9.0", true)).is_ok());
        assert!(downgrade("", &package("7.9.0", false)).is_ok());
    }
}
