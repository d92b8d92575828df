//! Builds the plugin workspace (`plugins/`) for `wasm32-wasip2` and generates the
//! table of bundled components, so `cargo build` and `cargo test` stay the only
//! commands anyone runs.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Crate name → plugin name, for every component the binary carries.
const PLUGINS: &[(&str, &str)] = &[
    ("posup_plugin_kiosk", "kiosk"),
    ("posup_plugin_iiko_backoffice", "iiko-backoffice"),
    ("posup_plugin_iiko_front", "iiko-front"),
    ("posup_plugin_icecash", "icecash"),
    ("posup_plugin_openbravo", "openbravo"),
    ("posup_plugin_ukm5", "ukm5"),
    ("posup_plugin_oscar", "oscar"),
];

/// Components built for the tests and benchmarks only: their paths are exported,
/// their bytes are not bundled.
const TEST_COMPONENTS: &[(&str, &str)] = &[
    ("posup_plugin_test_hostile", "TEST_HOSTILE"),
    // Built against the first released interface, to show the host still runs it.
    ("posup_plugin_test_v0_1_0", "TEST_V0_1_0"),
];

/// rustup installs the targets rust-toolchain.toml names only together with the
/// toolchain: a machine that had Rust 1.95.0 before lacks `wasm32-wasip2`. It is
/// added here (when rustup is there), so the README's commands need nothing else.
fn ensure_wasm_target(plugins: &Path) {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if sysroot.is_some_and(|s| s.join("lib/rustlib/wasm32-wasip2").exists()) {
        return;
    }
    // In the plugins folder, rustup picks the toolchain of rust-toolchain.toml.
    match Command::new("rustup")
        .current_dir(plugins)
        .args(["target", "add", "wasm32-wasip2"])
        .status()
    {
        Ok(s) if s.success() => {}
        Ok(s) => println!("cargo:warning=`rustup target add wasm32-wasip2` failed: {s}"),
        Err(e) => println!("cargo:warning=rustup is not available to add wasm32-wasip2: {e}"),
    }
}

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.ancestors().nth(2).unwrap().to_path_buf();
    let plugins = root.join("plugins");
    let wit = root.join("wit");
    println!(
        "cargo:rerun-if-changed={}",
        plugins.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        plugins.join("Cargo.lock").display()
    );
    println!("cargo:rerun-if-changed={}", wit.display());
    for entry in std::fs::read_dir(&plugins).unwrap().flatten() {
        if entry.path().join("Cargo.toml").exists() {
            println!("cargo:rerun-if-changed={}", entry.path().display());
        }
    }

    // The plugins get a target directory of their own next to the host's: sharing
    // the host's would deadlock on its lock, and one inside OUT_DIR would rebuild
    // them from scratch for every profile.
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    let target_dir = env::var_os("POSUP_PLUGINS_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| host_target_dir(&out_dir).join("wasm-plugins"));

    ensure_wasm_target(&plugins);
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&plugins)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    // Settings meant for the host build must not leak into the guest build: a
    // clippy wrapper, host rustflags or a coverage instrumenter would break it.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_MAKEFLAGS",
        "RUSTC",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .expect("running cargo to build the plugins (plugins/) for wasm32-wasip2");
    assert!(
        status.success(),
        "building the plugins (plugins/) for wasm32-wasip2 failed; `rustup target add wasm32-wasip2` if the target is missing"
    );

    let release = target_dir.join("wasm32-wasip2").join("release");
    let mut table = String::from(
        "/// Bundled plugins: (name, component bytes).\npub static PLUGINS: &[(&str, &[u8])] = &[\n",
    );
    for (krate, name) in PLUGINS {
        let wasm = release.join(format!("{krate}.wasm"));
        assert!(
            wasm.exists(),
            "the plugin build did not produce {}",
            wasm.display()
        );
        table.push_str(&format!(
            "    ({name:?}, include_bytes!({:?})),\n",
            wasm.display().to_string()
        ));
    }
    table.push_str("];\n");
    for (krate, constant) in TEST_COMPONENTS {
        let wasm = release.join(format!("{krate}.wasm"));
        assert!(
            wasm.exists(),
            "the plugin build did not produce {}",
            wasm.display()
        );
        table.push_str(&format!(
            "/// Path of the test component `{krate}`.\npub const {constant}: &str = {:?};\n",
            wasm.display().to_string()
        ));
    }
    std::fs::write(out_dir.join("plugins.rs"), table).unwrap();
}

/// `target/` of the host build, found from `target/<profile>/build/<pkg>/out`.
fn host_target_dir(out_dir: &Path) -> PathBuf {
    out_dir
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "build"))
        .and_then(|build| build.parent())
        .and_then(|profile| profile.parent())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| out_dir.join("plugins"))
}
