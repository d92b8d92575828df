//! `posup plugin …` and `posup package …`, and finding a plugin by name or file.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use posup_runtime::types::{PackageInfo, PluginInfo};
use posup_runtime::{DirGrant, Grants, HostEnv, Plugin, Runtime, RuntimeConfig};
use serde_json::json;

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// List the plugins built into this binary.
    List,
    /// Create a plugin project: the plugin, its SDK, a device configuration,
    /// package sources, a fixture installation and the script of the local loop.
    New(crate::scaffold::NewArgs),
    /// Check a plugin before publishing: the update against copies of a fixture,
    /// posup killed after each step and run again, each step failed on purpose;
    /// every update that did not commit must leave the installation as it was.
    Test(crate::plugin_test::TestArgs),
    /// Show a plugin's name, version, device types and requested capabilities.
    Info {
        /// A bundled plugin's name or a `.wasm` component file.
        plugin: String,
    },
    /// Sign a plugin component into its vendor's role (`vendor-<vendor>`), for
    /// the device types its info names or those given.
    Sign {
        #[command(flatten)]
        repo: crate::trust::RepoArg,
        /// The vendor's private key file(s).
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// Sign it for these device types only.
        #[arg(long = "device-type")]
        device_types: Vec<String>,
        /// The `.wasm` component file.
        file: PathBuf,
    },
    /// Upload a signed plugin component and publish the metadata that signs it.
    Publish {
        #[command(flatten)]
        repo: crate::trust::RepoArg,
        #[command(flatten)]
        server: crate::trust::ServerArg,
        file: PathBuf,
    },
    /// Compile a plugin into an agent's compile cache (the agent runs this in a
    /// child process).
    Compile {
        /// The agent's state directory, whose cache receives the result.
        #[arg(long)]
        state_dir: PathBuf,
        /// The `.wasm` component file.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum PackageCommand {
    /// Read a package through its plugin: version, kind, notes, changelog.
    Inspect {
        /// A bundled plugin's name or a `.wasm` component file.
        #[arg(long)]
        plugin: String,
        package: PathBuf,
    },
    /// Sign a package into the release role, with the version it installs.
    Sign {
        #[command(flatten)]
        repo: crate::trust::RepoArg,
        /// The release role's private key file(s).
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        #[arg(long)]
        device_type: String,
        /// The version it installs; without it, read by --plugin's `inspect`.
        #[arg(long, required_unless_present = "plugin")]
        version: Option<String>,
        /// The plugin that reads the package's version (a bundled name or a file).
        #[arg(long)]
        plugin: Option<String>,
        /// Terminals with a newer version installed may install this one.
        #[arg(long)]
        allow_downgrade: bool,
        package: PathBuf,
    },
    /// Upload a signed package for a device type and publish the metadata that
    /// signs it.
    Upload {
        #[command(flatten)]
        repo: crate::trust::RepoArg,
        #[command(flatten)]
        server: crate::trust::ServerArg,
        #[arg(long)]
        device_type: String,
        package: PathBuf,
    },
    /// Build package sources (folders with package.toml and content/, or a folder of
    /// them such as packages/) into archives.
    Build {
        /// Package sources, or folders holding them.
        #[arg(required = true)]
        sources: Vec<PathBuf>,
        /// Where the archives go.
        #[arg(long, default_value = "target/packages")]
        out: PathBuf,
    },
}

/// The runtime with its compiled-component cache under `dir`.
pub fn runtime(cache: Option<PathBuf>) -> anyhow::Result<Runtime> {
    Ok(Runtime::new(RuntimeConfig {
        cache_dir: cache,
        ..RuntimeConfig::default()
    })?)
}

/// The default cache of compiled components: `$XDG_CACHE_HOME/posup` or
/// `~/.cache/posup`, when a home is known.
pub fn default_cache() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .map(|c| c.join("posup").join("components"))
}

/// Loads `spec`: a `.wasm` file when it names one, otherwise a bundled plugin.
pub fn load(rt: &Runtime, spec: &str) -> anyhow::Result<Plugin> {
    let path = Path::new(spec);
    if spec.ends_with(".wasm") || path.is_file() {
        return Ok(rt.load_file(path)?);
    }
    match posup_bundled::get(spec) {
        Some(bytes) => Ok(rt.load(spec, bytes)?),
        None => bail!(
            "no plugin {spec}: give a .wasm file or one of the bundled plugins ({})",
            posup_bundled::names().collect::<Vec<_>>().join(", ")
        ),
    }
}

pub fn info_json(info: &PluginInfo) -> serde_json::Value {
    let caps = &info.capabilities;
    json!({
        "name": info.name,
        "vendor": info.vendor,
        "version": info.version,
        "description": info.description,
        "device_types": info.device_types,
        "capabilities": {
            "dirs": caps.dirs.iter().map(|d| json!({
                "dir": posup_runtime::grants::dir_name(d.dir),
                "write": d.write,
            })).collect::<Vec<_>>(),
            "services": caps.services,
            "scripts": caps.scripts,
            "prompt": caps.prompt,
        },
    })
}

pub fn package_json(info: &PackageInfo) -> serde_json::Value {
    json!({
        "version": info.version,
        "kind": info.kind,
        "notes": info.notes,
        "changelog": info.changelog,
        "rollback": info.rollback,
    })
}

pub async fn plugin(cmd: PluginCommand) -> anyhow::Result<u8> {
    match cmd {
        PluginCommand::List => {
            for name in posup_bundled::names() {
                println!("{name}");
            }
        }
        PluginCommand::New(args) => return crate::scaffold::new(args),
        PluginCommand::Test(args) => return crate::plugin_test::run_test(args).await,
        PluginCommand::Info { plugin } => {
            let rt = runtime(default_cache())?;
            let p = load(&rt, &plugin)?;
            let info = p.info().await?;
            let mut v = info_json(&info);
            v["capabilities"]["databases"] = p
                .databases()
                .await?
                .iter()
                .map(|d| json!({ "name": d.name, "tables": d.tables }))
                .collect();
            v["sha256"] = json!(p.digest());
            v["interface"] = json!(p.interface().version().to_string());
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        PluginCommand::Sign {
            repo,
            keys,
            device_types,
            file,
        } => crate::trust::plugin_sign(&repo.repo, &keys, &file, &device_types).await?,
        PluginCommand::Publish { repo, server, file } => {
            let name = file_name(&file)?;
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            if !crate::trust::on_server(&server, "/api/v1/plugins", &bytes).await? {
                crate::trust::upload(&server, &format!("/api/v1/plugins?file_name={name}"), bytes)
                    .await?;
            }
            crate::trust::publish(&posup_trust::offline::RepoDir::open(&repo.repo)?, &server)
                .await?;
        }
        PluginCommand::Compile { state_dir, file } => {
            // The agent's own runtime settings, so the cache entry fits its engine.
            let rt = posup_agent::agent::runtime_for(&state_dir).with_context(|| {
                format!("setting up the plugin runtime in {}", state_dir.display())
            })?;
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let name = file
                .file_stem()
                .and_then(|n| n.to_str())
                .unwrap_or("plugin");
            rt.precompile(name, &bytes)?;
        }
    }
    Ok(0)
}

/// The file name of a path, as the server names uploads.
fn file_name(path: &Path) -> anyhow::Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .with_context(|| format!("{}: not a file path", path.display()))
}

/// Reads a package through a plugin's `inspect`, the package's folder granted
/// read-only.
pub async fn inspect(plugin: &str, package: &Path) -> anyhow::Result<PackageInfo> {
    let rt = runtime(default_cache())?;
    let p = load(&rt, plugin)?;
    let package = package
        .canonicalize()
        .with_context(|| format!("package {}", package.display()))?;
    let (dir, name) = match (
        package.parent(),
        package.file_name().and_then(|n| n.to_str()),
    ) {
        (Some(d), Some(n)) => (d.to_owned(), n.to_owned()),
        _ => bail!("package {}: not a file path", package.display()),
    };
    let env = HostEnv {
        grants: Grants {
            dirs: vec![DirGrant {
                dir: posup_runtime::types::Dir::Staging,
                host: dir,
                write: false,
            }],
            ..Grants::default()
        },
        ..HostEnv::default()
    };
    let guest = format!(
        "{}/{name}",
        posup_runtime::grants::guest_root(posup_runtime::types::Dir::Staging)
    );
    match p.inspect(&env, &guest).await? {
        Ok(info) => Ok(info),
        Err(reason) => bail!("{reason}"),
    }
}

pub async fn package(cmd: PackageCommand) -> anyhow::Result<u8> {
    match cmd {
        PackageCommand::Inspect { plugin, package } => {
            let info = inspect(&plugin, &package).await?;
            println!("{}", serde_json::to_string_pretty(&package_json(&info))?);
        }
        PackageCommand::Sign {
            repo,
            keys,
            device_type,
            version,
            plugin,
            allow_downgrade,
            package,
        } => {
            let version = match (version, plugin) {
                (Some(v), _) => v,
                (None, Some(p)) => inspect(&p, &package).await?.version,
                (None, None) => bail!("give --version or --plugin to read it"),
            };
            let bytes = std::fs::read(&package)
                .with_context(|| format!("reading {}", package.display()))?;
            let signers = keys
                .iter()
                .map(|k| Ok(posup_trust::keys::read_signing(k)?))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let dir = posup_trust::offline::RepoDir::open(&repo.repo)?;
            let release = posup_trust::offline::Release {
                version: version.clone(),
                allow_downgrade,
            };
            let name = file_name(&package)?;
            crate::trust::sign_package(
                &dir,
                &signers.iter().collect::<Vec<_>>(),
                &bytes,
                &name,
                &device_type,
                &release,
            )?;
            eprintln!(
                "signed {name} (version {version}) for device type {device_type} into release; publish with `posup package upload`"
            );
        }
        PackageCommand::Upload {
            repo,
            server,
            device_type,
            package,
        } => {
            let name = file_name(&package)?;
            let bytes = std::fs::read(&package)
                .with_context(|| format!("reading {}", package.display()))?;
            let list = format!("/api/v1/packages?device_type={device_type}");
            if !crate::trust::on_server(&server, &list, &bytes).await? {
                crate::trust::upload(
                    &server,
                    &format!("/api/v1/packages?device_type={device_type}&file_name={name}"),
                    bytes,
                )
                .await?;
            }
            crate::trust::publish(&posup_trust::offline::RepoDir::open(&repo.repo)?, &server)
                .await?;
        }
        PackageCommand::Build { sources, out } => {
            for root in sources {
                let found = posup_sim::package::sources(&root)
                    .with_context(|| format!("package sources {}", root.display()))?;
                if found.is_empty() {
                    bail!("{}: no package.toml below it", root.display());
                }
                for source in found {
                    let archive = posup_sim::package::build(&source, &out)
                        .with_context(|| format!("building package {}", source.display()))?;
                    println!("{}", archive.display());
                }
            }
        }
    }
    Ok(0)
}
