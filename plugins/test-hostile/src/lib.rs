//! A plugin that misbehaves on request. `inspect` and `stage` pick the
//! misbehaviour from the package's file name, so the sandbox tests can drive each
//! one through the normal host path; every other update step, and `stage` of any
//! other package, is a trivial `ok`, which the step benchmark times.
//!
//! The attacks in `stage` are those of a plugin with ordinary grants (`/product`
//! and `/staging` writable). The links they exploit are planted by the test on the
//! host beforehand, as such a plugin can itself through `archive.extract` (a link
//! that stays inside its destination) and `fs.copy-tree` (which copies links as
//! they are). What got through is returned as `failed("ESCAPED: …")`.

use posup_plugin_sdk::{
    Capabilities, Dir, DirRequest, Inventory, PackageInfo, Plugin, PluginInfo, StepContext, Stop,
    archive, fs, logs, progress, prompt, services, vars,
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
                        write: true,
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
                scripts: true,
                prompt: true,
                databases: Vec::new(),
            },
        }
    }

    fn inventory() -> Result<Inventory, Stop> {
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

    fn inspect(package: &str) -> Result<PackageInfo, Stop> {
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
                .map_err(Stop::from),
            "backup-write" => std::fs::write("/backup/planted", b"x")
                .map(|()| found("wrote /backup/planted".into()))
                .map_err(|e| Stop::failed(format!("/backup/planted: {e}"))),
            "product-write" => std::fs::write("/product/planted", b"x")
                .map(|()| found("wrote /product/planted".into()))
                .map_err(|e| Stop::failed(format!("/product/planted: {e}"))),
            // Lists the package: the host must bound what a hostile archive makes
            // it hold in memory.
            n if n.starts_with("list-") => archive::entries(package)
                .map(|e| found(format!("{} entries", e.len())))
                .map_err(Stop::from),
            _ => Ok(found("trivial".into())),
        }
    }

    /// On a package named `precheck-writes`: changes what it can, then fails,
    /// as if nothing had happened.
    fn precheck(ctx: &StepContext) -> Result<(), Stop> {
        if !ctx.package.ends_with("/precheck-writes") {
            return Ok(());
        }
        let mut escaped = Vec::new();
        let mut held = Vec::new();
        let mut note = |r: Result<String, String>| match r {
            Ok(what) => escaped.push(what),
            Err(why) => held.push(why),
        };
        note(
            std::fs::write("/product/planted", b"x")
                .map(|()| "wrote /product/planted".into())
                .map_err(|e| format!("/product/planted: {e}")),
        );
        note(
            fs::copy_tree("/staging/probe", "/product/copied")
                .map(|_| "copied into /product".into())
                .map_err(|e| e.message),
        );
        note(
            services::stop("kiosk")
                .map(|()| "stopped kiosk".into())
                .map_err(|e| e.message),
        );
        if escaped.is_empty() {
            Err(Stop::Failed(format!("held: {}", held.join("; "))))
        } else {
            Err(Stop::Failed(format!("ESCAPED: {}", escaped.join("; "))))
        }
    }
    fn stage(ctx: &StepContext) -> Result<(), Stop> {
        let name = ctx.package.rsplit('/').next().unwrap_or_default();
        let mut escaped = Vec::new();
        let mut held = Vec::new();
        let mut note = |r: Result<String, String>| match r {
            Ok(what) => escaped.push(what),
            Err(why) => held.push(why),
        };
        match name {
            // A planted `/staging/x.posup-exchange` link climbing to `/`, and an
            // exchange "to finish" with `/staging/x` absent.
            "exchange-sidecar" => {
                note(
                    fs::exchange("/staging/x", "/product")
                        .map(|()| "exchange".into())
                        .map_err(|e| e.message),
                );
                probe(&mut note);
            }
            // A link ten levels deep in /staging whose target climbs ten levels:
            // inside /staging there, at `/` once it stands where /product was.
            "exchange-deep" => {
                note(
                    fs::exchange("/product", "/staging/a/b/c/d/e/f/g/h/i/j/link")
                        .map(|()| "exchange".into())
                        .map_err(|e| e.message),
                );
                probe(&mut note);
            }
            // A planted `/product/rot.1` link to a file outside the grants, and a
            // mark naming that file's inode (the test passes it as a variable).
            "rotated-log" => {
                let inode = vars::get("inode").and_then(|v| v.parse().ok()).unwrap_or(0);
                let mark = logs::Mark {
                    file_id: inode,
                    offset: 0,
                };
                note(
                    match logs::scan("/product/rot", mark, &["SECRET".to_string()]) {
                        Ok(r) if !r.found.is_empty() => Ok(format!("read {}", r.found[0].line)),
                        Ok(_) => Err("scan found nothing".into()),
                        Err(e) => Err(e.message),
                    },
                );
            }
            // A script that outlives the step's deadline unless the host stops it.
            "slow-script" => {
                note(
                    services::run_script("/staging/slow.sh", &[], 120)
                        .map(|r| format!("script ended with {}", r.exit_code))
                        .map_err(|e| e.message),
                );
            }
            // A small package that unpacks to more than the disk holds.
            "disk-bomb.tgz" => {
                note(
                    archive::extract(&ctx.package, "/product")
                        .map(|s| format!("extracted {} bytes", s.bytes))
                        .map_err(|e| e.message),
                );
            }
            // Thousands of progress reports and long messages in a loop.
            "flood" => {
                for i in 0..5_000u32 {
                    progress::report(100, &format!("flood {i}"));
                    prompt::notify(&"x".repeat(64 * 1024));
                }
                held.push("flooded".into());
            }
            _ => return Ok(()),
        }
        if escaped.is_empty() {
            Err(Stop::Failed(format!("held: {}", held.join("; "))))
        } else {
            Err(Stop::Failed(format!("ESCAPED: {}", escaped.join("; "))))
        }
    }
    fn apply(_ctx: &StepContext) -> Result<(), Stop> {
        Ok(())
    }
    fn verify(_ctx: &StepContext) -> Result<(), Stop> {
        Ok(())
    }
    fn commit(_ctx: &StepContext) -> Result<(), Stop> {
        Ok(())
    }
    fn rollback(_ctx: &StepContext) -> Result<(), Stop> {
        Ok(())
    }
}

/// After an exchange: does `/product` now lead outside the grants?
fn probe(note: &mut impl FnMut(Result<String, String>)) {
    note(match logs::tail("/product/etc/hostname", 1) {
        Ok(lines) => Ok(format!("read /etc/hostname: {lines:?}")),
        Err(e) => Err(e.message),
    });
    note(
        fs::copy_tree("/staging/probe", "/product/tmp/posup-escaped")
            .map(|_| "wrote /tmp/posup-escaped".into())
            .map_err(|e| e.message),
    );
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
