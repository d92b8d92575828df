//! Between the raw bindings and [`Plugin`]: records converted both ways, a
//! step's `Result` turned into the outcome the host expects.

use super::__private::bindings::posup::plugin::types as raw;
use super::{
    Capabilities, Dir, DirRequest, INSTALLED_KEY, Inventory, ModuleVersion, PackageInfo, Plugin,
    PluginInfo, StepContext, Stop, TaskKind, kv, log,
};

pub fn info<P: Plugin>() -> raw::PluginInfo {
    let PluginInfo {
        name,
        vendor,
        version,
        description,
        device_types,
        capabilities:
            Capabilities {
                dirs,
                services,
                scripts,
                prompt,
                databases: _,
            },
    } = P::info();
    raw::PluginInfo {
        name,
        vendor,
        version,
        description,
        device_types,
        capabilities: raw::Capabilities {
            dirs: dirs.into_iter().map(dir_request).collect(),
            services,
            scripts,
            prompt,
        },
    }
}

pub fn databases<P: Plugin>() -> Vec<raw::DatabaseRequest> {
    P::info()
        .capabilities
        .databases
        .into_iter()
        .map(|d| raw::DatabaseRequest {
            name: d.name,
            tables: d.tables,
        })
        .collect()
}

fn dir_request(d: DirRequest) -> raw::DirRequest {
    raw::DirRequest {
        dir: match d.dir {
            Dir::Product => raw::Dir::Product,
            Dir::Staging => raw::Dir::Staging,
            Dir::Backup => raw::Dir::Backup,
            Dir::Logs => raw::Dir::Logs,
        },
        write: d.write,
    }
}

pub fn inventory<P: Plugin>() -> Result<raw::Inventory, String> {
    let Inventory {
        product,
        version,
        modules,
        loaded_package,
        state,
        pending_sync,
        ready,
        reboot_required,
        details,
    } = P::inventory().map_err(|s| s.to_string())?;
    Ok(raw::Inventory {
        product,
        version,
        modules: modules
            .into_iter()
            .map(|ModuleVersion { name, version }| raw::ModuleVersion { name, version })
            .collect(),
        loaded_package,
        state,
        pending_sync,
        ready,
        reboot_required,
        details,
    })
}

pub fn inspect<P: Plugin>(package: String) -> Result<raw::PackageInfo, String> {
    let PackageInfo {
        version,
        kind,
        notes,
        changelog,
        rollback,
    } = P::inspect(&package).map_err(|s| s.to_string())?;
    Ok(raw::PackageInfo {
        version,
        kind,
        notes,
        changelog,
        rollback,
    })
}

fn context(ctx: raw::StepContext) -> StepContext {
    let raw::PackageInfo {
        version,
        kind,
        notes,
        changelog,
        rollback,
    } = ctx.info;
    StepContext {
        package: ctx.package,
        info: PackageInfo {
            version,
            kind,
            notes,
            changelog,
            rollback,
        },
        task: match ctx.task {
            raw::TaskKind::Download => TaskKind::Download,
            raw::TaskKind::Update => TaskKind::Update,
            raw::TaskKind::ForcedUpdate => TaskKind::ForcedUpdate,
        },
        attempt: ctx.attempt,
    }
}

/// Runs a step and turns its result into the host's outcome; a failure is also
/// logged, so it stands in the step's log lines.
fn run(ctx: raw::StepContext, step: impl FnOnce(&StepContext) -> Result<(), Stop>) -> raw::Outcome {
    match step(&context(ctx)) {
        Ok(()) => raw::Outcome::Ok,
        Err(Stop::NotNow {
            reason,
            retry_after_secs,
        }) => raw::Outcome::NotNow(raw::NotNow {
            reason,
            retry_after_secs,
        }),
        Err(Stop::Failed(reason)) => {
            log::error(&reason);
            raw::Outcome::Failed(reason)
        }
    }
}

pub fn precheck<P: Plugin>(ctx: raw::StepContext) -> raw::Outcome {
    run(ctx, P::precheck)
}

pub fn stage<P: Plugin>(ctx: raw::StepContext) -> raw::Outcome {
    run(ctx, P::stage)
}

pub fn apply<P: Plugin>(ctx: raw::StepContext) -> raw::Outcome {
    run(ctx, P::apply)
}

pub fn verify<P: Plugin>(ctx: raw::StepContext) -> raw::Outcome {
    run(ctx, P::verify)
}

pub fn commit<P: Plugin>(ctx: raw::StepContext) -> raw::Outcome {
    run(ctx, |ctx| {
        P::commit(ctx)?;
        kv::set(INSTALLED_KEY, &ctx.info.version)?;
        Ok(())
    })
}

pub fn rollback<P: Plugin>(ctx: raw::StepContext) -> raw::Outcome {
    run(ctx, P::rollback)
}
