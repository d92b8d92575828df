//! A plugin of the first released interface, `posup:plugin@0.1.0`, built from
//! `wit/since_v0.1.0` with wit-bindgen alone (no SDK), as plugins shipped before
//! 0.1.1 were. The runtime's tests load it to show that a newer host still runs
//! every step of it and answers its imports.
//!
//! It keeps a product's version in `/product/version`: `inventory` reads it
//! (and the server's `note` variable, an import), `apply` writes the package's
//! version there, `rollback` puts back what `stage` remembered in `kv`.

// The raw bindings wit-bindgen generates here are unsafe glue with long
// argument lists (the SDK keeps them out of plugins' own crates).
#![allow(unsafe_code, clippy::too_many_arguments)]

wit_bindgen::generate!({
    path: "../../wit/since_v0.1.0",
    world: "plugin",
});

use posup::plugin::types::{Capabilities, Dir, DirRequest};
use posup::plugin::{kv, vars};

const VERSION_FILE: &str = "/product/version";

struct V010;

fn installed() -> String {
    std::fs::read_to_string(VERSION_FILE)
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

fn outcome(r: Result<(), String>) -> Outcome {
    match r {
        Ok(()) => Outcome::Ok,
        Err(e) => Outcome::Failed(e),
    }
}

impl Guest for V010 {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "test-v0-1-0".into(),
            vendor: "posup".into(),
            version: "1.0.0".into(),
            description: "Built against posup:plugin@0.1.0".into(),
            device_types: vec!["test".into()],
            capabilities: Capabilities {
                dirs: vec![DirRequest {
                    dir: Dir::Product,
                    write: true,
                }],
                services: vec![],
                scripts: false,
                prompt: false,
            },
        }
    }

    fn inventory() -> Result<Inventory, String> {
        Ok(Inventory {
            product: "test".into(),
            version: installed(),
            modules: vec![],
            loaded_package: None,
            state: vars::get("note").unwrap_or_default(),
            pending_sync: 0,
            ready: true,
            reboot_required: false,
            details: vec![],
        })
    }

    fn inspect(package: String) -> Result<PackageInfo, String> {
        let name = package.rsplit('/').next().unwrap_or_default();
        let version = name
            .strip_prefix("test-")
            .and_then(|n| n.strip_suffix(".tar"))
            .ok_or_else(|| format!("{name}: not test-<version>.tar"))?;
        Ok(PackageInfo {
            version: version.into(),
            kind: "program".into(),
            notes: String::new(),
            changelog: String::new(),
            rollback: true,
        })
    }

    fn precheck(_ctx: StepContext) -> Outcome {
        Outcome::Ok
    }

    fn stage(_ctx: StepContext) -> Outcome {
        outcome(kv::set("previous", &installed()).map_err(|e| e.message))
    }

    fn apply(ctx: StepContext) -> Outcome {
        outcome(std::fs::write(VERSION_FILE, &ctx.info.version).map_err(|e| e.to_string()))
    }

    fn verify(_ctx: StepContext) -> Outcome {
        Outcome::Ok
    }

    fn commit(_ctx: StepContext) -> Outcome {
        outcome(kv::delete("previous").map_err(|e| e.message))
    }

    fn rollback(_ctx: StepContext) -> Outcome {
        outcome((|| {
            let previous = kv::get("previous")
                .map_err(|e| e.message)?
                .unwrap_or_default();
            std::fs::write(VERSION_FILE, previous).map_err(|e| e.to_string())
        })())
    }
}

export!(V010);
