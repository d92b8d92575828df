//! A plugin that misbehaves on request. `inspect` picks the misbehaviour from the
//! package's file name, so the sandbox tests can drive each one through the normal
//! host path; every update step is a trivial `ok`, which the step benchmark times.

use posup_plugin_sdk::{
    Capabilities, Dir, DirRequest, Inventory, Outcome, PackageInfo, Plugin, PluginInfo,
    StepContext, services,
};

struct Hostile;

impl Plugin for Hostile {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "test-hostile".into(),
            vendor: "posup tests".into(),
            version: "0.1.0".into(),
            description: "Misbehaves on request; never install it.".into(),
            device_types: vec!["test".into()],
            capabilities: Capabilities {
                dirs: vec![
                    DirRequest {
                        dir: Dir::Staging,
                        write: false,
                    },
                    DirRequest {
                        dir: Dir::Product,
                        write: true,
                    },
                    DirRequest {
                        dir: Dir::Backup,
                        write: true,
                    },
                ],
                services: vec!["kiosk".into(), "sshd".into()],
                scripts: false,
                prompt: false,
            },
        }
    }

    fn inventory() -> Result<Inventory, String> {
        Ok(Inventory {
            product: "hostile".into(),
            version: "0".into(),
            modules: vec![],
            loaded_package: None,
            state: "idle".into(),
            pending_sync: 0,
            ready: true,
            reboot_required: false,
            details: vec![],
        })
    }

    fn inspect(package: String) -> Result<PackageInfo, String> {
        let name = package.rsplit('/').next().unwrap_or_default();
        match name {
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "grow" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 16 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "trap" => panic!("the plugin panicked on purpose"),
            "escape" => {
                for path in [
                    "/etc/passwd",
                    "/staging/../etc/passwd",
                    "/product/../../etc/passwd",
                ] {
                    if let Ok(text) = std::fs::read_to_string(path) {
                        return Ok(found(format!("read {path}: {} bytes", text.len())));
                    }
                }
                Err("no path outside the preopens could be read".into())
            }
            "service" => services::stop("sshd")
                .map(|()| found("stopped sshd".into()))
                .map_err(|e| e.message),
            "backup-write" => std::fs::write("/backup/planted", b"x")
                .map(|()| found("wrote /backup/planted".into()))
                .map_err(|e| format!("/backup/planted: {e}")),
            "product-write" => std::fs::write("/product/planted", b"x")
                .map(|()| found("wrote /product/planted".into()))
                .map_err(|e| format!("/product/planted: {e}")),
            _ => Ok(found("trivial".into())),
        }
    }

    fn precheck(_: StepContext) -> Outcome {
        Outcome::Ok
    }
    fn stage(_: StepContext) -> Outcome {
        Outcome::Ok
    }
    fn apply(_: StepContext) -> Outcome {
        Outcome::Ok
    }
    fn verify(_: StepContext) -> Outcome {
        Outcome::Ok
    }
    fn commit(_: StepContext) -> Outcome {
        Outcome::Ok
    }
    fn rollback(_: StepContext) -> Outcome {
        Outcome::Ok
    }
}

fn found(notes: String) -> PackageInfo {
    PackageInfo {
        version: "0".into(),
        kind: "test".into(),
        notes,
        changelog: String::new(),
        rollback: true,
    }
}

posup_plugin_sdk::export!(Hostile);
