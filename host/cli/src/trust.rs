//! `posup keys …`, `posup repo …` and the signing halves of `posup plugin …` and
//! `posup package …`: the fleet owner's, vendors' and release signers' tools.
//!
//! They work on a folder of metadata (`--repo`), on the machine that holds the
//! keys; `posup repo publish` (and `plugin publish`, `package upload`) send what
//! the server does not have yet. Offline keys never leave that machine.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use posup_proto::api::{MetadataFile, OnlineKeysView, PublishMetadata, TufStatus};
use posup_runtime::types::PluginInfo;
use posup_trust::offline::{self, Delegation, InitSpec, Release, RepoDir, Rotation};
use posup_trust::{SigningKey, keys, names};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a new ed25519 key: the private key in FILE (owner-only), the public
    /// key in FILE.pub.
    New { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum RepoCommand {
    /// Start a repository: 1.root.json (signed by the root keys) and an empty
    /// 1.targets.json. The server's online keys come from --server or from files.
    Init(InitArgs),
    /// Delegate to a vendor (its plugins, by name and device type) or to the
    /// release role (packages), and sign the next targets.
    Delegate(DelegateArgs),
    /// Sign the next root, with new keys for some roles; signed by the current
    /// root keys and the new ones, so terminals follow the chain.
    Rotate(RotateArgs),
    /// Send the server every metadata file it does not have yet.
    Publish {
        #[command(flatten)]
        repo: RepoArg,
        #[command(flatten)]
        server: ServerArg,
    },
}

#[derive(Debug, Clone, Args)]
pub struct RepoArg {
    /// The folder of metadata.
    #[arg(long)]
    pub repo: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct ServerArg {
    /// The server's base URL.
    #[arg(long, env = "POSUP_SERVER")]
    pub server: String,
    /// An operator token allowed to publish the roles sent (admin for root and
    /// targets; operator for release; the vendor's token for its role).
    #[arg(long, env = "POSUP_TOKEN", hide_env_values = true)]
    pub token: String,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    repo: RepoArg,
    /// A root private key file; repeat for several.
    #[arg(long = "root-key", required = true)]
    root_keys: Vec<PathBuf>,
    #[arg(long, default_value_t = 1)]
    root_threshold: u64,
    /// A targets private key file; repeat for several.
    #[arg(long = "targets-key", required = true)]
    targets_keys: Vec<PathBuf>,
    #[arg(long, default_value_t = 1)]
    targets_threshold: u64,
    /// Take the online keys from this server (`GET /api/v1/tuf/online-keys`).
    #[arg(long, env = "POSUP_SERVER")]
    server: Option<String>,
    #[arg(long, env = "POSUP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The snapshot public key file, instead of --server.
    #[arg(long)]
    snapshot_key: Option<PathBuf>,
    /// The timestamp public key file, instead of --server.
    #[arg(long)]
    timestamp_key: Option<PathBuf>,
    #[arg(long, default_value_t = offline::ROOT_DAYS)]
    root_days: i64,
    #[arg(long, default_value_t = offline::TARGETS_DAYS)]
    targets_days: i64,
}

#[derive(Debug, Args)]
pub struct DelegateArgs {
    #[command(flatten)]
    repo: RepoArg,
    /// The targets private key file(s) to sign with.
    #[arg(long = "targets-key", required = true)]
    targets_keys: Vec<PathBuf>,
    /// Delegate to this vendor's role (`vendor-<vendor>`).
    #[arg(long, conflicts_with = "release", required_unless_present = "release")]
    vendor: Option<String>,
    /// With --vendor: a plugin it may sign, as NAME@DEVICE_TYPE; repeat.
    #[arg(long = "plugin", requires = "vendor")]
    plugins: Vec<String>,
    /// Delegate to the release role (packages).
    #[arg(long)]
    release: bool,
    /// With --release: the device types it signs packages for [default: all].
    #[arg(long = "device-type", requires = "release")]
    device_types: Vec<String>,
    /// The role's public key file(s).
    #[arg(long = "key", required = true)]
    keys: Vec<PathBuf>,
    #[arg(long, default_value_t = 1)]
    threshold: u64,
    #[arg(long, default_value_t = offline::TARGETS_DAYS)]
    targets_days: i64,
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    #[command(flatten)]
    repo: RepoArg,
    /// Private keys to sign with: the current root's and the new root's.
    #[arg(long = "sign-key", required = true)]
    sign_keys: Vec<PathBuf>,
    /// New root public key file(s).
    #[arg(long = "root-key")]
    root_keys: Vec<PathBuf>,
    #[arg(long, default_value_t = 1)]
    root_threshold: u64,
    /// New targets public key file(s).
    #[arg(long = "targets-key")]
    targets_keys: Vec<PathBuf>,
    #[arg(long, default_value_t = 1)]
    targets_threshold: u64,
    #[arg(long)]
    snapshot_key: Option<PathBuf>,
    #[arg(long)]
    timestamp_key: Option<PathBuf>,
    #[arg(long, default_value_t = offline::ROOT_DAYS)]
    root_days: i64,
}

fn signing(files: &[PathBuf]) -> anyhow::Result<Vec<SigningKey>> {
    files.iter().map(|f| Ok(keys::read_signing(f)?)).collect()
}

fn public(files: &[PathBuf]) -> anyhow::Result<Vec<posup_trust::Key>> {
    files.iter().map(|f| Ok(keys::read_public(f)?)).collect()
}

fn refs(keys: &[SigningKey]) -> Vec<&SigningKey> {
    keys.iter().collect()
}

pub async fn keys(cmd: KeysCommand) -> anyhow::Result<u8> {
    match cmd {
        KeysCommand::New { file } => {
            let key = keys::write_new(&file)?;
            println!("{}", key.key_id());
            eprintln!(
                "private key in {} (keep it offline for root, targets, vendor and release roles); public key in {}",
                file.display(),
                keys::public_path(&file).display()
            );
        }
    }
    Ok(0)
}

pub async fn repo(cmd: RepoCommand) -> anyhow::Result<u8> {
    match cmd {
        RepoCommand::Init(a) => {
            let dir = RepoDir::open(&a.repo.repo)?;
            let (snapshot_key, timestamp_key) = match (&a.server, &a.snapshot_key, &a.timestamp_key)
            {
                (Some(server), None, None) => {
                    let token = a.token.as_deref().context("--server needs --token")?;
                    online_keys(server, token).await?
                }
                (None, Some(s), Some(t)) => (keys::read_public(s)?, keys::read_public(t)?),
                _ => bail!(
                    "name the server's online keys: --server (and --token), or both --snapshot-key and --timestamp-key"
                ),
            };
            let root_signers = signing(&a.root_keys)?;
            let targets_signers = signing(&a.targets_keys)?;
            let spec = InitSpec {
                root_keys: root_signers.iter().map(|k| k.public()).collect(),
                root_threshold: a.root_threshold,
                targets_keys: targets_signers.iter().map(|k| k.public()).collect(),
                targets_threshold: a.targets_threshold,
                snapshot_key,
                timestamp_key,
                root_days: a.root_days,
                targets_days: a.targets_days,
            };
            offline::init(&dir, &spec, &refs(&root_signers), &refs(&targets_signers))?;
            println!("{}", dir.path().join("1.root.json").display());
            eprintln!(
                "install 1.root.json with every agent (`root` in agent.toml); delegate next with `posup repo delegate`"
            );
        }
        RepoCommand::Delegate(a) => {
            let dir = RepoDir::open(&a.repo.repo)?;
            let (name, paths) = match &a.vendor {
                Some(vendor) => {
                    if a.plugins.is_empty() {
                        bail!("--vendor needs at least one --plugin NAME@DEVICE_TYPE it may sign");
                    }
                    let paths = a
                        .plugins
                        .iter()
                        .map(|p| {
                            let (name, device_type) = p.split_once('@').with_context(|| {
                                format!("--plugin {p}: write NAME@DEVICE_TYPE, e.g. kiosk@kiosk")
                            })?;
                            Ok(names::plugin_pattern(device_type, name)?)
                        })
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    (names::vendor_role(vendor)?, paths)
                }
                None if a.device_types.is_empty() => (
                    names::RELEASE.to_owned(),
                    vec![names::package_pattern(None)?],
                ),
                None => (
                    names::RELEASE.to_owned(),
                    a.device_types
                        .iter()
                        .map(|t| Ok(names::package_pattern(Some(t))?))
                        .collect::<anyhow::Result<Vec<_>>>()?,
                ),
            };
            let delegation = Delegation {
                name: name.clone(),
                keys: public(&a.keys)?,
                threshold: a.threshold,
                paths,
            };
            let signers = signing(&a.targets_keys)?;
            let v = offline::delegate(&dir, &delegation, &refs(&signers), a.targets_days)?;
            println!("{}", dir.path().join(format!("{v}.targets.json")).display());
            eprintln!(
                "{name} is delegated; it has no metadata until its first signature (`posup plugin sign` / `posup package sign`), which is published together with this targets"
            );
        }
        RepoCommand::Rotate(a) => {
            let dir = RepoDir::open(&a.repo.repo)?;
            let rotation = Rotation {
                root_keys: (!a.root_keys.is_empty())
                    .then(|| public(&a.root_keys).map(|k| (k, a.root_threshold)))
                    .transpose()?,
                targets_keys: (!a.targets_keys.is_empty())
                    .then(|| public(&a.targets_keys).map(|k| (k, a.targets_threshold)))
                    .transpose()?,
                snapshot_key: a
                    .snapshot_key
                    .as_deref()
                    .map(keys::read_public)
                    .transpose()?,
                timestamp_key: a
                    .timestamp_key
                    .as_deref()
                    .map(keys::read_public)
                    .transpose()?,
                root_days: a.root_days,
            };
            let signers = signing(&a.sign_keys)?;
            let v = offline::rotate(&dir, &rotation, &refs(&signers))?;
            println!("{}", dir.path().join(format!("{v}.root.json")).display());
        }
        RepoCommand::Publish { repo, server } => {
            publish(&RepoDir::open(&repo.repo)?, &server).await?;
        }
    }
    Ok(0)
}

/// The server's online keys, as `GET /api/v1/tuf/online-keys` gives them.
pub async fn online_keys(
    server: &str,
    token: &str,
) -> anyhow::Result<(posup_trust::Key, posup_trust::Key)> {
    let url = format!("{}/api/v1/tuf/online-keys", server.trim_end_matches('/'));
    let view: OnlineKeysView = get_json(&url, token).await?;
    let key = |v: serde_json::Value| -> anyhow::Result<posup_trust::Key> {
        serde_json::from_value(v).context("the server's online key is not a TUF key")
    };
    Ok((key(view.snapshot)?, key(view.timestamp)?))
}

async fn get_json<T: serde::de::DeserializeOwned>(url: &str, token: &str) -> anyhow::Result<T> {
    let resp = reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    answer(resp, url).await
}

async fn answer<T: serde::de::DeserializeOwned>(
    resp: reqwest::Response,
    url: &str,
) -> anyhow::Result<T> {
    let status = resp.status();
    let text = resp
        .text()
        .await
        .with_context(|| format!("reading the answer of {url}"))?;
    if !status.is_success() {
        let message = serde_json::from_str::<posup_proto::ErrorBody>(&text)
            .map(|e| e.error)
            .unwrap_or(text);
        bail!("{url}: {status}: {message}");
    }
    serde_json::from_str(&text).with_context(|| format!("reading the answer of {url}"))
}

/// The files the server lacks, in the order it checks them: every root newer
/// than its own in turn, then targets, then the delegated roles.
///
/// Terminals can use a targets only when every role it delegates to has
/// metadata, so the newest targets whose roles all have some (here or on the
/// server) is sent; a newer one waits, with a warning, for the first signature of
/// the role it adds.
pub fn unpublished(dir: &RepoDir, status: &TufStatus) -> anyhow::Result<Vec<MetadataFile>> {
    let on_server = |role: &str| {
        status
            .roles
            .iter()
            .find(|r| r.role == role)
            .map_or(0, |r| r.version)
    };
    let metadata = |role: &str, bytes: &[u8]| -> anyhow::Result<MetadataFile> {
        Ok(MetadataFile {
            role: role.to_owned(),
            metadata: serde_json::from_slice(bytes)
                .with_context(|| format!("{} of {}", role, dir.path().display()))?,
        })
    };
    let files = dir.files()?;
    let mut out = Vec::new();
    let mut roots: Vec<u64> = files
        .iter()
        .filter(|(r, v, _)| r == "root" && *v > on_server("root"))
        .map(|(_, v, _)| *v)
        .collect();
    roots.sort();
    for v in roots {
        out.push(metadata("root", &dir.read("root", v)?)?);
    }
    let has_metadata = |role: &str| on_server(role) > 0 || files.iter().any(|(r, _, _)| r == role);
    let mut newer: Vec<u64> = files
        .iter()
        .filter(|(r, v, _)| r == "targets" && *v > on_server("targets"))
        .map(|(_, v, _)| *v)
        .collect();
    newer.sort_by(|a, b| b.cmp(a));
    let mut chosen = None;
    for v in &newer {
        let missing: Vec<String> = dir
            .delegated_names(*v)?
            .into_iter()
            .filter(|r| !has_metadata(r))
            .collect();
        if missing.is_empty() {
            chosen = Some(*v);
            break;
        }
        eprintln!(
            "targets version {v} waits: it delegates to {}, which has signed nothing yet",
            missing.join(", ")
        );
    }
    if let Some(v) = chosen {
        out.push(metadata("targets", &dir.read("targets", v)?)?);
    }
    for (role, v, bytes) in dir.latest_files()? {
        if role != "root" && role != "targets" && v > on_server(&role) {
            out.push(metadata(&role, &bytes)?);
        }
    }
    Ok(out)
}

/// Sends the server what it does not have; prints what it now publishes.
pub async fn publish(dir: &RepoDir, server: &ServerArg) -> anyhow::Result<TufStatus> {
    let base = server.server.trim_end_matches('/');
    let status: TufStatus = get_json(&format!("{base}/api/v1/tuf"), &server.token).await?;
    let files = unpublished(dir, &status)?;
    if files.is_empty() {
        eprintln!(
            "the server has every file of {} already",
            dir.path().display()
        );
        return Ok(status);
    }
    let names: Vec<String> = files.iter().map(|f| f.role.clone()).collect();
    let url = format!("{base}/api/v1/tuf/metadata");
    let resp = reqwest::Client::new()
        .post(&url)
        .bearer_auth(&server.token)
        .json(&PublishMetadata { files })
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status: TufStatus = answer(resp, &url).await?;
    eprintln!("published {}", names.join(", "));
    for w in &status.warnings {
        eprintln!("warning: {w}");
    }
    Ok(status)
}

/// Whether the listing at `path` (plugins or packages) already has these bytes:
/// publishing a new signature of an uploaded file uploads nothing again.
pub async fn on_server(server: &ServerArg, path: &str, bytes: &[u8]) -> anyhow::Result<bool> {
    use sha2::Digest;
    #[derive(serde::Deserialize)]
    struct Item {
        sha256: String,
    }
    let url = format!("{}{path}", server.server.trim_end_matches('/'));
    let items: Vec<Item> = get_json(&url, &server.token).await?;
    let sha = hex::encode(sha2::Sha256::digest(bytes));
    Ok(items.iter().any(|i| i.sha256 == sha))
}

/// Uploads a file to an operator API route (`path` with its query), with a
/// progress bar on a terminal.
pub async fn upload(server: &ServerArg, path: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
    use futures::StreamExt;
    /// Progress moves as each piece is handed to the connection.
    const PIECE: usize = 256 * 1024;
    let url = format!("{}{path}", server.server.trim_end_matches('/'));
    let len = bytes.len();
    let bar = indicatif::ProgressBar::new(len as u64).with_style(
        indicatif::ProgressStyle::with_template("uploading {bar:40} {bytes}/{total_bytes} {eta}")
            .expect("a valid progress template"),
    );
    let bytes = bytes::Bytes::from(bytes);
    let pieces: Vec<bytes::Bytes> = (0..len)
        .step_by(PIECE)
        .map(|start| bytes.slice(start..(start + PIECE).min(len)))
        .collect();
    let shown = bar.clone();
    let body = futures::stream::iter(pieces).map(move |piece| {
        shown.inc(piece.len() as u64);
        Ok::<_, std::io::Error>(piece)
    });
    let resp = reqwest::Client::new()
        .post(&url)
        .bearer_auth(&server.token)
        .header(reqwest::header::CONTENT_LENGTH, len)
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .with_context(|| format!("POST {url}"));
    bar.finish_and_clear();
    let _: serde_json::Value = answer(resp?, &url).await?;
    Ok(())
}

/// Signs a plugin component into its vendor's role, for each device type.
pub fn sign_plugin(
    dir: &RepoDir,
    signers: &[&SigningKey],
    bytes: &[u8],
    info: &PluginInfo,
    device_types: &[String],
) -> anyhow::Result<String> {
    let role = names::vendor_role(&info.vendor)?;
    let types = if device_types.is_empty() {
        &info.device_types
    } else {
        device_types
    };
    if types.is_empty() {
        bail!(
            "plugin {} names no device type: give --device-type",
            info.name
        );
    }
    let mut add = Vec::new();
    for t in types {
        if !info.device_types.contains(t) {
            bail!(
                "plugin {} is not for device type {t}: its info names {}",
                info.name,
                info.device_types.join(", ")
            );
        }
        let name = names::plugin_target(t, &info.name, &info.version)?;
        add.push((
            name,
            offline::plugin_target(bytes, &info.name, &info.version, &info.vendor),
        ));
    }
    offline::sign_targets(dir, &role, add, signers, offline::TARGETS_DAYS)?;
    Ok(role)
}

/// Signs a package into the release role.
pub fn sign_package(
    dir: &RepoDir,
    signers: &[&SigningKey],
    bytes: &[u8],
    file_name: &str,
    device_type: &str,
    release: &Release,
) -> anyhow::Result<()> {
    let name = names::package_target(device_type, file_name)?;
    offline::sign_targets(
        dir,
        names::RELEASE,
        vec![(name, offline::package_target(bytes, release))],
        signers,
        offline::TARGETS_DAYS,
    )?;
    Ok(())
}

/// `posup plugin sign`.
pub async fn plugin_sign(
    repo: &Path,
    key_files: &[PathBuf],
    file: &Path,
    device_types: &[String],
) -> anyhow::Result<()> {
    let dir = RepoDir::open(repo)?;
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let rt = crate::plugins::runtime(crate::plugins::default_cache())?;
    let plugin = rt.load(&file.display().to_string(), &bytes)?;
    let info = plugin.info().await?;
    let signers = signing(key_files)?;
    let role = sign_plugin(&dir, &refs(&signers), &bytes, &info, device_types)?;
    eprintln!(
        "signed plugin {} {} into {role}; publish with `posup plugin publish` or `posup repo publish`",
        info.name, info.version
    );
    Ok(())
}
