//! `posup apply`: one update of a local installation, without a server (DESIGN.md,
//! "Local apply contract").
//!
//! Exit 0 when the update is committed; otherwise a one-line reason on stderr and
//! the installation as it was before: 1 failed (rolled back or never touched), 2
//! the command itself could not run, 3 not now or declined (nothing changed), 4 the
//! rollback failed too.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use posup_agent::pipeline::{Observer, Settings, StepReport, UpdateRequest};
use posup_agent::{DeviceConfig, Pipeline};
use posup_runtime::caps::log::{EventSink, Level};
use posup_runtime::caps::prompt::{FixedAnswer, Prompter};
use posup_runtime::types::TaskKind;
use posup_runtime::{Grants, HostEnv};
use serde_json::json;

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// A bundled plugin's name or a `.wasm` component file.
    #[arg(long)]
    plugin: String,
    /// The package file.
    #[arg(long)]
    package: PathBuf,
    /// The product's installation directory (`/product` for the plugin).
    #[arg(long)]
    root: PathBuf,
    /// Journal, staging, backup and plugin state. Default: `<root>.posup` beside the
    /// installation, so staging is on the same filesystem and a rerun finds the
    /// journal of an interrupted run.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Install at once without asking anyone (a Forced update).
    #[arg(long)]
    forced: bool,
    /// The answer to the consent question; without it nobody answers, which counts
    /// as consent.
    #[arg(long, value_enum)]
    answer: Option<Answer>,
    /// Print one JSON object per step on stdout.
    #[arg(long)]
    json: bool,
    /// The product's log directory (`/logs` for the plugin).
    #[arg(long)]
    logs: Option<PathBuf>,
    /// A device configuration (TOML) with directories, services and what the plugin
    /// may use; `--root`, `--logs` and the state directory fill what it leaves out.
    #[arg(long)]
    device_config: Option<PathBuf>,
    /// A server variable the plugin reads through `vars` (IceCash's `version` and
    /// `update`, `ignore-version-check`, …); repeatable.
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_var)]
    vars: Vec<(String, String)>,
    /// Show the plugin's own log lines, at their levels, as the steps run.
    #[arg(long, short)]
    verbose: bool,
    /// Run even when the device configuration grants less than the plugin asks
    /// for (the steps then meet the refusals).
    #[arg(long)]
    partial_grants: bool,
    /// Fault injection for `posup plugin test`: take this step as failed once it
    /// answered ok, and roll back.
    #[arg(long, hide = true, value_parser = parse_step)]
    fail_after: Option<posup_runtime::Step>,
}

fn parse_step(s: &str) -> Result<posup_runtime::Step, String> {
    posup_runtime::Step::parse(s).ok_or_else(|| format!("{s:?} is not a step of an update"))
}

/// Prints the plugin's log lines (`--verbose`).
struct Verbose;

impl EventSink for Verbose {
    fn log(&self, plugin: &str, level: Level, message: &str) {
        let level = match level {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        eprintln!("           {plugin} {level:>5}: {message}");
    }

    fn progress(&self, plugin: &str, percent: u8, message: &str) {
        eprintln!("           {plugin} {percent:>3} %: {message}");
    }
}

/// `NAME=VALUE` → (`NAME`, `VALUE`); the value may be empty, the name may not.
fn parse_var(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!(
            "{s:?}: give a server variable as NAME=VALUE, e.g. --var version=2.0.060"
        )),
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Answer {
    Yes,
    No,
}

struct Printer {
    json: bool,
}

impl Observer for Printer {
    fn step(&self, r: &StepReport) {
        if self.json {
            let line = json!({
                "step": r.step.as_str(),
                "attempt": r.attempt,
                "result": r.result.as_str(),
                "message": r.message,
                "ms": r.duration.as_millis() as u64,
            });
            println!("{line}");
        } else if r.message.is_empty() {
            eprintln!("{:>9}  {}", r.step, r.result);
        } else {
            eprintln!("{:>9}  {}  {}", r.step, r.result, r.message);
        }
    }
}

pub async fn run(args: ApplyArgs) -> anyhow::Result<u8> {
    let root = args
        .root
        .canonicalize()
        .with_context(|| format!("installation directory {}", args.root.display()))?;
    if !root.is_dir() {
        bail!("installation directory {}: not a directory", root.display());
    }
    if !args.package.is_file() {
        bail!("package {}: no such file", args.package.display());
    }
    let state_dir = match &args.state_dir {
        Some(d) => d.clone(),
        None => {
            let mut name = root.file_name().unwrap_or_default().to_owned();
            name.push(".posup");
            root.with_file_name(name)
        }
    };
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("state directory {}", state_dir.display()))?;

    let mut config = match &args.device_config {
        Some(path) => DeviceConfig::load(path)?,
        None => DeviceConfig::default(),
    };
    config.dirs.insert("product".into(), root.clone());
    config
        .dirs
        .entry("staging".into())
        .or_insert_with(|| state_dir.join("staging"));
    config
        .dirs
        .entry("backup".into())
        .or_insert_with(|| state_dir.join("backup"));
    if let Some(logs) = &args.logs {
        config.dirs.insert(
            "logs".into(),
            logs.canonicalize()
                .with_context(|| format!("log directory {}", logs.display()))?,
        );
    }
    for (name, dir) in &config.dirs {
        if name != "logs" {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("{name} directory {}", dir.display()))?;
        }
    }
    // A local run is the operator's own: the plugin may ask the person at the
    // terminal (answered by --answer) unless the configuration says otherwise.
    if args.device_config.is_none() {
        config.allow.prompt = true;
    }

    // The machine's compile cache, so a plugin is compiled once, not per state
    // directory.
    let rt = crate::plugins::runtime(
        crate::plugins::default_cache().or_else(|| Some(state_dir.join("cache"))),
    )?;
    let plugin = crate::plugins::load(&rt, &args.plugin)?;
    let info = plugin.info().await?;
    let databases = plugin.databases().await?;
    let missing = config.missing_for(&info.capabilities, &databases);
    let file = match &args.device_config {
        Some(path) => path.display().to_string(),
        None => "a device configuration file, given with --device-config FILE".to_owned(),
    };
    let lines = |blocking: bool| -> String {
        missing
            .iter()
            .filter(|m| m.blocks == blocking)
            .map(|m| format!("\n  {}", m.line))
            .collect()
    };
    if missing.iter().any(|m| m.blocks) && !args.partial_grants {
        bail!(
            "plugin {} asks for what this run does not grant; nothing was changed. Add to {file}:{}{}\n\
             (the guide's \"Device configuration\" section has every key; --partial-grants runs anyway)",
            info.name,
            lines(true),
            lines(false)
        );
    }
    if !missing.is_empty() {
        eprintln!(
            "posup: not granted to plugin {}, so its steps meet refusals where they need it (add to {file}):{}{}",
            info.name,
            lines(true),
            lines(false)
        );
    }
    let answers = FixedAnswer {
        answer: args.answer.map(|a| matches!(a, Answer::Yes)),
        ..FixedAnswer::default()
    };
    let shown = answers.shown.clone();
    let prompter: Arc<dyn Prompter> = Arc::new(answers);
    let env = HostEnv {
        grants: Grants::intersect(&info.capabilities, &databases, &config.allowance()),
        services: config.service_manager(&state_dir.join("run")),
        prompter: Some(prompter.clone()),
        kv_dir: Some(state_dir.join("kv")),
        vars: Arc::new(args.vars.iter().cloned().collect()),
        events: args
            .verbose
            .then(|| Arc::new(Verbose) as Arc<dyn EventSink>),
        ..HostEnv::default()
    };
    let staging = config
        .dir("staging")
        .map(Path::to_path_buf)
        .expect("staging is set above");
    let printer = Printer { json: args.json };
    let pipeline = Pipeline {
        plugin: &plugin,
        env,
        settings: Settings {
            state_dir: state_dir.clone(),
            staging,
            prompter: Some(prompter),
            consent_timeout: Duration::from_secs(300),
            deadline: posup_runtime::Step::default_deadline,
            fail_after: args.fail_after,
        },
        observer: Some(&printer),
    };
    let request = UpdateRequest {
        package: args.package.clone(),
        file_name: None,
        sha256: None,
        task: if args.forced {
            TaskKind::ForcedUpdate
        } else {
            TaskKind::Update
        },
        skip_installed: false,
        signed: None,
    };
    let result = pipeline.run(&request).await?;
    let name = args
        .package
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // What the plugin showed the person at the terminal ("the program was updated").
    for message in shown.lock().expect("message list").iter() {
        eprintln!("message to the terminal: {message}");
    }
    let code = result.exit_code();
    if code == 0 {
        if !args.json {
            eprintln!("{}", result.summary(&name));
        }
    } else {
        eprintln!("posup: {}", result.summary(&name));
    }
    Ok(code as u8)
}
