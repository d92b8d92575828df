//! The {{name}} plugin for posup: updates {{name}} from packages named
//! `{{name}}-<version>.tar.gz`, whose content replaces the program folder.
//!
//! - precheck: no sale open — the product's log (`{{name}}.log`, or the file
//!   the server variable `{{name}}-log` names) last said `STATE: READY`, not
//!   `STATE: SALE` — and room for the update in `/staging`. Without a log nothing
//!   tells whether a sale is open, and this template goes ahead: a plugin for a
//!   real product decides which way to err, and says so in its README;
//! - stage: the package unpacked into `/staging/{{name}}-<version>`, while the
//!   product keeps running;
//! - apply: the service stopped, the installation kept in `/backup`, the staged
//!   tree put in its place (the site's `config/` stays), the service started;
//! - verify (the SDK's default): the service keeps running for
//!   `{{name}}-settle-secs` seconds (10 unless the server sets the variable);
//! - rollback: the kept installation put back, byte for byte, and started.
//!
//! Replace what your product does differently: where it logs that it started
//! (`posup_plugin_sdk::watch`), what must not be interrupted (answer
//! `Stop::not_now` from precheck), what its packages hold.

use posup_plugin_sdk::{
    Capabilities, Dir, DirRequest, IoContext, PackageInfo, Plugin, PluginInfo, StepContext, Stop,
    archive, config, files, fs, kv, logs, progress, services, tree,
};

/// The service the device configuration names (`[services.{{name}}]`).
const SERVICE: &str = "{{name}}";
/// Where the installation is kept for a rollback.
const BACKUP: &str = "/backup/{{name}}";
/// What an update never replaces: the site's own settings.
const KEEP: &[&str] = &["config"];

struct Product;

impl Plugin for Product {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "{{name}}".into(),
            vendor: "{{vendor}}".into(),
            version: "0.1.0".into(),
            description: "Updates {{name}}: stops it, replaces the program, checks it runs".into(),
            device_types: vec!["{{name}}".into()],
            capabilities: Capabilities {
                dirs: vec![
                    DirRequest::write(Dir::Product),
                    DirRequest::write(Dir::Staging),
                    DirRequest::write(Dir::Backup),
                    DirRequest::read(Dir::Logs),
                ],
                services: vec![SERVICE.into()],
                ..Capabilities::default()
            },
        }
    }

    fn inspect(package: &str) -> Result<PackageInfo, Stop> {
        let version = version_of(files::file_name(package))?;
        let changelog =
            files::package_text(package, "CHANGELOG.txt", 256 * 1024)?.unwrap_or_default();
        Ok(PackageInfo {
            notes: format!("{{name}} {version}"),
            version: version.to_owned(),
            kind: "program".into(),
            changelog,
            ..PackageInfo::default()
        })
    }

    fn precheck(ctx: &StepContext) -> Result<(), Stop> {
        let log = config::log_or("{{name}}-log", "{{name}}.log")?;
        if let Ok(lines) = logs::tail(&log, 200)
            && lines.iter().rev().find_map(|l| state_of(l)) == Some("SALE")
        {
            return Err(Stop::not_now(
                format!("a sale is open: {log} says STATE: SALE"),
                60,
            ));
        }
        tree::require_staging_space(&ctx.package)
    }

    fn stage(ctx: &StepContext) -> Result<(), Stop> {
        let version = &ctx.info.version;
        let staged = staged_dir(version);
        // A rerun after a crash finds the tree it finished.
        if kv::get("staged")?.as_deref() == Some(version.as_str()) && files::exists(&staged) {
            return Ok(());
        }
        kv::delete("staged")?;
        fs::remove_tree(&staged)?;
        std::fs::create_dir(&staged).at(&staged)?;
        progress::report(10, "unpacking the package");
        archive::extract(&ctx.package, &staged)?;
        kv::set("staged", version)?;
        Ok(())
    }

    fn apply(ctx: &StepContext) -> Result<(), Stop> {
        let staged = staged_dir(&ctx.info.version);
        if !files::exists(&staged) {
            return Err(Stop::failed(format!(
                "{staged} is not prepared: the stage step did not run"
            )));
        }
        progress::report(5, "stopping {{name}}");
        services::stop(SERVICE)?;
        progress::report(20, "keeping the installation for a rollback");
        tree::backup("/product", BACKUP, &ctx.info.version)?;
        progress::report(60, "installing");
        tree::mirror(&staged, "/product", KEEP)?;
        progress::report(90, "starting {{name}}");
        services::start(SERVICE)?;
        Ok(())
    }

    fn commit(ctx: &StepContext) -> Result<(), Stop> {
        tree::discard(BACKUP)?;
        fs::remove_tree(&staged_dir(&ctx.info.version))?;
        kv::delete("staged")?;
        Ok(())
    }

    fn rollback(ctx: &StepContext) -> Result<(), Stop> {
        services::stop(SERVICE)?;
        // Nothing to put back when apply never kept the installation.
        tree::restore(BACKUP, "/product", KEEP)?;
        tree::discard(BACKUP)?;
        fs::remove_tree(&staged_dir(&ctx.info.version))?;
        kv::delete("staged")?;
        services::start(SERVICE)?;
        Ok(())
    }
}

/// `… STATE: SALE` → `SALE`.
fn state_of(line: &str) -> Option<&str> {
    line.split_once("STATE: ").map(|(_, state)| state.trim())
}

fn staged_dir(version: &str) -> String {
    format!("/staging/{{name}}-{version}")
}

/// `{{name}}-1.2.0.tar.gz` → `1.2.0`.
fn version_of(file: &str) -> Result<&str, Stop> {
    files::version_in_name(file, "{{name}}-", &[".tar.gz", ".tgz"]).ok_or_else(|| {
        Stop::failed(format!(
            "{file}: {{name}} packages are named {{name}}-<version>.tar.gz"
        ))
    })
}

posup_plugin_sdk::export!(Product);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_comes_from_the_package_name() {
        assert_eq!(version_of("{{name}}-1.2.0.tar.gz").unwrap(), "1.2.0");
        assert!(version_of("{{name}}-.tar.gz").is_err());
        assert!(version_of("other-1.2.0.tar.gz").is_err());
        assert!(version_of("{{name}}-../1.tar.gz").is_err());
    }

    #[test]
    fn the_state_comes_from_the_last_state_line() {
        assert_eq!(state_of("12:00:01 STATE: SALE"), Some("SALE"));
        assert_eq!(state_of("STATE: READY\n"), Some("READY"));
        assert_eq!(state_of("{{name}} 1.0.0 started"), None);
    }
}
