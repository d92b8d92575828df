//! `posup plugin new`: a vendor's project outside this repository — the plugin,
//! the SDK it builds against, a sample device configuration, package sources, a
//! fixture installation and the script that runs the local loop.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

#[derive(Debug, Args)]
pub struct NewArgs {
    /// The plugin's name, which is also its device type and service: lowercase
    /// letters, digits and `-`, starting with a letter (`frontol`).
    name: String,
    /// Where the project goes; `./<name>` by default. It must not exist yet.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The vendor named in the plugin's info.
    #[arg(long, default_value = "ACME")]
    vendor: String,
    #[arg(long, value_enum, default_value = "rust")]
    lang: Lang,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Lang {
    /// Rust, with the posup plugin SDK.
    Rust,
    /// Python, built with componentize-py (`pip install componentize-py`).
    Python,
}

/// The files every project has: (path, text, executable).
const COMMON: &[(&str, &str, bool)] = &[
    (
        "device.toml",
        include_str!("../scaffold/common/device.toml"),
        false,
    ),
    (
        "fixture/product/bin/run",
        include_str!("../scaffold/common/fixture/product/bin/run"),
        true,
    ),
    (
        "fixture/product/config/site.conf",
        include_str!("../scaffold/common/fixture/product/config/site.conf"),
        false,
    ),
    (
        "packages/1.1.0/package.toml",
        include_str!("../scaffold/common/packages/1.1.0/package.toml"),
        false,
    ),
    (
        "packages/1.1.0/content/CHANGELOG.txt",
        include_str!("../scaffold/common/packages/1.1.0/content/CHANGELOG.txt"),
        false,
    ),
    (
        "packages/1.1.0/content/bin/run",
        include_str!("../scaffold/common/packages/1.1.0/content/bin/run"),
        true,
    ),
    (
        "packages/1.2.0-broken/package.toml",
        include_str!("../scaffold/common/packages/1.2.0-broken/package.toml"),
        false,
    ),
    (
        "packages/1.2.0-broken/content/bin/run",
        include_str!("../scaffold/common/packages/1.2.0-broken/content/bin/run"),
        true,
    ),
];

/// A Rust project's own files.
const RUST: &[(&str, &str, bool)] = &[
    (
        "Cargo.toml",
        include_str!("../scaffold/rust/Cargo.toml"),
        false,
    ),
    (
        "rust-toolchain.toml",
        include_str!("../scaffold/rust/rust-toolchain.toml"),
        false,
    ),
    (
        ".gitignore",
        include_str!("../scaffold/rust/.gitignore"),
        false,
    ),
    (
        "README.md",
        include_str!("../scaffold/rust/README.md"),
        false,
    ),
    (
        "src/lib.rs",
        include_str!("../scaffold/rust/src/lib.rs"),
        false,
    ),
    ("run.sh", include_str!("../scaffold/rust/run.sh"), true),
];

/// A Python project's own files; it builds with componentize-py against the
/// interface's WIT, which it carries.
const PYTHON: &[(&str, &str, bool)] = &[
    (
        ".gitignore",
        include_str!("../scaffold/python/.gitignore"),
        false,
    ),
    (
        "README.md",
        include_str!("../scaffold/python/README.md"),
        false,
    ),
    ("app.py", include_str!("../scaffold/python/app.py"), false),
    ("run.sh", include_str!("../scaffold/python/run.sh"), true),
    (
        "wit/plugin.wit",
        include_str!("../../../plugins/sdk/wit/plugin.wit"),
        false,
    ),
];

/// The SDK, as it is packaged: placed under `vendor/posup-plugin-sdk`.
const SDK: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("../../../plugins/sdk/Cargo.toml"),
    ),
    ("README.md", include_str!("../../../plugins/sdk/README.md")),
    (
        "wit/plugin.wit",
        include_str!("../../../plugins/sdk/wit/plugin.wit"),
    ),
    (
        "src/lib.rs",
        include_str!("../../../plugins/sdk/src/lib.rs"),
    ),
    (
        "src/version.rs",
        include_str!("../../../plugins/sdk/src/version.rs"),
    ),
    (
        "src/guest.rs",
        include_str!("../../../plugins/sdk/src/guest.rs"),
    ),
    (
        "src/guest/adapter.rs",
        include_str!("../../../plugins/sdk/src/guest/adapter.rs"),
    ),
    (
        "src/guest/config.rs",
        include_str!("../../../plugins/sdk/src/guest/config.rs"),
    ),
    (
        "src/guest/files.rs",
        include_str!("../../../plugins/sdk/src/guest/files.rs"),
    ),
    (
        "src/guest/tree.rs",
        include_str!("../../../plugins/sdk/src/guest/tree.rs"),
    ),
    (
        "src/guest/types.rs",
        include_str!("../../../plugins/sdk/src/guest/types.rs"),
    ),
    (
        "src/guest/watch.rs",
        include_str!("../../../plugins/sdk/src/guest/watch.rs"),
    ),
];

/// The toolchain this posup is built with, so the plugin builds with the same.
const TOOLCHAIN: &str = "1.95.0";

/// A plugin name: it becomes a crate name, a service name and part of paths.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.len() <= 40
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if !ok {
        bail!(
            "{name:?}: a plugin name is lowercase letters, digits and `-`, starting with a letter, at most 40 characters (e.g. frontol)"
        );
    }
    Ok(())
}

fn fill(text: &str, name: &str, vendor: &str) -> String {
    text.replace("{{name}}", name)
        .replace("{{crate}}", &format!("{}_plugin", name.replace('-', "_")))
        .replace("{{vendor}}", vendor)
        .replace("{{toolchain}}", TOOLCHAIN)
}

fn write(root: &Path, rel: &str, text: &str, executable: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("{}", parent.display()))?;
    }
    std::fs::write(&path, text).with_context(|| format!("{}", path.display()))?;
    if executable {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

pub fn new(args: NewArgs) -> anyhow::Result<u8> {
    check_name(&args.name)?;
    if args.vendor.contains(['"', '\\', '\n']) {
        bail!(
            "--vendor {:?}: no quotes, backslashes or line breaks",
            args.vendor
        );
    }
    let root = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    if root.exists() {
        bail!(
            "{} exists already: give a new folder with --dir, or remove it",
            root.display()
        );
    }
    let own = match args.lang {
        Lang::Rust => RUST,
        Lang::Python => PYTHON,
    };
    for (rel, text, executable) in COMMON.iter().chain(own) {
        write(
            &root,
            rel,
            &fill(text, &args.name, &args.vendor),
            *executable,
        )?;
    }
    if let Lang::Rust = args.lang {
        for (rel, text) in SDK {
            write(&root.join("vendor/posup-plugin-sdk"), rel, text, false)?;
        }
    }
    println!("created the plugin project {}", root.display());
    println!(
        "  cd {} && ./run.sh     # build, package, posup plugin test",
        root.display()
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scaffold_carries_every_file_of_the_sdk() {
        fn files(dir: &Path, rel: &str, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir.join(rel)).unwrap().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let rel = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                if e.file_type().unwrap().is_dir() {
                    if rel != "target" {
                        files(dir, &rel, out);
                    }
                } else {
                    out.push(rel);
                }
            }
        }
        let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins/sdk");
        let mut on_disk = Vec::new();
        files(&sdk, "", &mut on_disk);
        on_disk.sort();
        let mut carried: Vec<String> = SDK.iter().map(|(p, _)| (*p).to_owned()).collect();
        carried.sort();
        assert_eq!(carried, on_disk, "add the SDK's new files to scaffold::SDK");
    }

    #[test]
    fn the_project_builds_with_posups_own_toolchain() {
        let ours = include_str!("../../../rust-toolchain.toml");
        assert!(
            ours.contains(&format!("channel = \"{TOOLCHAIN}\"")),
            "{ours}"
        );
    }

    #[test]
    fn plugin_names_are_plain() {
        assert!(check_name("frontol").is_ok());
        assert!(check_name("frontol-6").is_ok());
        for bad in [
            "", "Frontol", "6frontol", "front/ol", "front ol", "frontol-", "../x",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_placeholder_is_filled() {
        for (rel, text, _) in COMMON.iter().chain(RUST).chain(PYTHON) {
            let filled = fill(text, "frontol", "ACME");
            assert!(!filled.contains("{{"), "{rel} keeps a placeholder");
        }
    }
}
