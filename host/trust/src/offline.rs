//! The offline side: a folder of metadata that the fleet owner, a vendor or a
//! release signer edits on a machine of their choice, then publishes.
//!
//! The folder holds the files as the server serves them (`N.root.json`,
//! `N.targets.json`, `N.<role>.json`); each edit writes the next version of one
//! role and never rewrites a version already written. Each edit checks what it
//! signed against the chain before it writes, so a key that is not the role's, or
//! a threshold not met, is an error here and not a refusal on a terminal.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;
use tough::TargetName;
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::key::Key;
use tough::schema::{
    DelegatedRole, Delegations, Hashes, PathPattern, PathSet, RoleKeys, RoleType, Root, Signed,
    Target, Targets,
};

use crate::meta::{self, SPEC_VERSION};
use crate::{Result, SigningKey, TrustError, names};

/// Default lifetimes of offline metadata, in days.
pub const ROOT_DAYS: i64 = 365;
pub const TARGETS_DAYS: i64 = 365;

const DAY: i64 = 86_400;

/// A folder of metadata.
#[derive(Debug, Clone)]
pub struct RepoDir {
    path: PathBuf,
}

/// Who may sign the top-level roles of a new repository.
#[derive(Debug, Clone)]
pub struct InitSpec {
    pub root_keys: Vec<Key>,
    pub root_threshold: u64,
    pub targets_keys: Vec<Key>,
    pub targets_threshold: u64,
    /// The server's online keys.
    pub snapshot_key: Key,
    pub timestamp_key: Key,
    pub root_days: i64,
    pub targets_days: i64,
}

/// A role delegated by `targets`.
#[derive(Debug, Clone)]
pub struct Delegation {
    pub name: String,
    pub keys: Vec<Key>,
    pub threshold: u64,
    /// Path patterns of the targets it may sign (see [`names`]).
    pub paths: Vec<String>,
}

/// What the release role says of a package besides its bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Release {
    /// The product version the package installs.
    pub version: String,
    /// The release may install an older version than the one installed.
    pub allow_downgrade: bool,
}

fn key_ids(keys: &[Key]) -> Vec<Decoded<Hex>> {
    keys.iter()
        .map(|k| k.key_id().expect("an ed25519 key has an id"))
        .collect()
}

fn threshold(what: &str, n: u64, keys: usize) -> Result<NonZeroU64> {
    match NonZeroU64::new(n) {
        Some(t) if t.get() <= keys as u64 => Ok(t),
        _ => Err(TrustError::Invalid(format!(
            "{what}: a threshold of {n} with {keys} key(s): it must be 1 to the number of keys"
        ))),
    }
}

impl RepoDir {
    /// The folder at `path`, created when missing.
    pub fn open(path: &Path) -> Result<RepoDir> {
        std::fs::create_dir_all(path).map_err(|source| TrustError::Io {
            what: "creating the metadata folder",
            path: path.display().to_string(),
            source,
        })?;
        Ok(RepoDir {
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every metadata file here, as (role, version, file name), oldest first.
    pub fn files(&self) -> Result<Vec<(String, u64, String)>> {
        let read = std::fs::read_dir(&self.path).map_err(|source| TrustError::Io {
            what: "reading the metadata folder",
            path: self.path.display().to_string(),
            source,
        })?;
        let mut out = Vec::new();
        for entry in read.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".json") else {
                continue;
            };
            let Some((version, role)) = stem.split_once('.') else {
                continue;
            };
            if let Ok(v) = version.parse::<u64>() {
                out.push((role.to_owned(), v, name));
            }
        }
        out.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        Ok(out)
    }

    fn latest_bytes(&self, role: &str) -> Result<Option<(u64, Vec<u8>)>> {
        let Some((_, v, name)) = self
            .files()?
            .into_iter()
            .filter(|(r, _, _)| r == role)
            .max_by_key(|(_, v, _)| *v)
        else {
            return Ok(None);
        };
        let path = self.path.join(&name);
        let bytes = std::fs::read(&path).map_err(|source| TrustError::Io {
            what: "reading",
            path: path.display().to_string(),
            source,
        })?;
        Ok(Some((v, bytes)))
    }

    fn latest<T: serde::de::DeserializeOwned>(&self, role: &str) -> Result<Option<Signed<T>>> {
        self.latest_bytes(role)?
            .map(|(_, b)| meta::parse(&b, role))
            .transpose()
    }

    /// The newest root.
    pub fn root(&self) -> Result<Signed<Root>> {
        self.latest("root")?.ok_or_else(|| {
            TrustError::Invalid(format!(
                "{} holds no N.root.json: run `posup repo init` first, or copy the repository's metadata here",
                self.path.display()
            ))
        })
    }

    /// The newest top-level targets.
    pub fn targets(&self) -> Result<Signed<Targets>> {
        self.latest("targets")?.ok_or_else(|| {
            TrustError::Invalid(format!(
                "{} holds no N.targets.json: run `posup repo init` first",
                self.path.display()
            ))
        })
    }

    /// The newest metadata of a delegated role, if it has any yet.
    pub fn role(&self, name: &str) -> Result<Option<Signed<Targets>>> {
        self.latest(name)
    }

    /// The bytes of the newest file of each role.
    pub fn latest_files(&self) -> Result<Vec<(String, u64, Vec<u8>)>> {
        let mut roles: Vec<String> = self.files()?.into_iter().map(|(r, _, _)| r).collect();
        roles.sort();
        roles.dedup();
        let mut out = Vec::new();
        for role in roles {
            if let Some((v, b)) = self.latest_bytes(&role)? {
                out.push((role, v, b));
            }
        }
        Ok(out)
    }

    /// The bytes of one version of a role.
    pub fn read(&self, role: &str, version: u64) -> Result<Vec<u8>> {
        let path = self.path.join(meta::file_name(role, version));
        std::fs::read(&path).map_err(|source| TrustError::Io {
            what: "reading",
            path: path.display().to_string(),
            source,
        })
    }

    /// The roles one version of targets delegates to.
    pub fn delegated_names(&self, targets_version: u64) -> Result<Vec<String>> {
        let t: Signed<Targets> = meta::parse(&self.read("targets", targets_version)?, "targets")?;
        Ok(t.signed
            .delegations
            .iter()
            .flat_map(|d| d.roles.iter().map(|r| r.name.clone()))
            .collect())
    }

    fn write<T: Serialize>(&self, role: &str, signed: &Signed<T>, version: u64) -> Result<PathBuf> {
        let path = self.path.join(meta::file_name(role, version));
        use std::io::Write;
        let io = |source| TrustError::Io {
            what: "writing",
            path: path.display().to_string(),
            source,
        };
        // A version once written is never rewritten: clients may already trust it.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io)?;
        file.write_all(&meta::to_bytes(signed))
            .and_then(|_| file.sync_all())
            .map_err(io)?;
        Ok(path)
    }
}

fn role_keys(keys: &[Key], threshold: NonZeroU64) -> RoleKeys {
    RoleKeys {
        keyids: key_ids(keys),
        threshold,
        _extra: HashMap::new(),
    }
}

/// Writes `1.root.json` and `1.targets.json` of a new repository.
pub fn init(
    dir: &RepoDir,
    spec: &InitSpec,
    root_signers: &[&SigningKey],
    targets_signers: &[&SigningKey],
) -> Result<()> {
    if dir.files()?.iter().any(|(r, _, _)| r == "root") {
        return Err(TrustError::Invalid(format!(
            "{} already holds a repository: rotate its root with `posup repo rotate` instead",
            dir.path().display()
        )));
    }
    let now = meta::now();
    let mut keys = HashMap::new();
    let all = spec
        .root_keys
        .iter()
        .chain(&spec.targets_keys)
        .chain([&spec.snapshot_key, &spec.timestamp_key]);
    for k in all {
        keys.insert(k.key_id().expect("an ed25519 key has an id"), k.clone());
    }
    let mut roles = HashMap::new();
    let root_t = threshold("root", spec.root_threshold, spec.root_keys.len())?;
    let targets_t = threshold("targets", spec.targets_threshold, spec.targets_keys.len())?;
    let one = NonZeroU64::MIN;
    roles.insert(RoleType::Root, role_keys(&spec.root_keys, root_t));
    roles.insert(RoleType::Targets, role_keys(&spec.targets_keys, targets_t));
    roles.insert(
        RoleType::Snapshot,
        role_keys(std::slice::from_ref(&spec.snapshot_key), one),
    );
    roles.insert(
        RoleType::Timestamp,
        role_keys(std::slice::from_ref(&spec.timestamp_key), one),
    );
    let root = Root {
        spec_version: SPEC_VERSION.into(),
        consistent_snapshot: true,
        version: one,
        expires: meta::expires_in(now, spec.root_days * DAY),
        keys,
        roles,
        _extra: HashMap::new(),
    };
    let signed = meta::sign(root, root_signers);
    signed
        .signed
        .verify_role(&signed)
        .map_err(|e| TrustError::refused("root", format!("{e}: sign with enough root keys")))?;
    let mut targets = Targets::new(
        SPEC_VERSION.into(),
        one,
        meta::expires_in(now, spec.targets_days * DAY),
    );
    targets.delegations = Some(Delegations::new());
    let targets = meta::sign(targets, targets_signers);
    signed.signed.verify_role(&targets).map_err(|e| {
        TrustError::refused(
            "targets",
            format!("{e}: sign with the targets keys named in root"),
        )
    })?;
    dir.write("root", &signed, 1)?;
    dir.write("targets", &targets, 1)?;
    Ok(())
}

/// Adds or replaces a delegation of `targets` and writes its next version.
pub fn delegate(
    dir: &RepoDir,
    delegation: &Delegation,
    targets_signers: &[&SigningKey],
    targets_days: i64,
) -> Result<u64> {
    names::part("role", &delegation.name)?;
    if ["root", "targets", "snapshot", "timestamp"].contains(&delegation.name.as_str()) {
        return Err(TrustError::Invalid(format!(
            "{} is a top-level role, not a delegation",
            delegation.name
        )));
    }
    let root = dir.root()?;
    let current = dir.targets()?;
    let mut targets = current.signed.clone();
    targets.version = meta::next(targets.version);
    targets.expires = meta::expires_in(meta::now(), targets_days * DAY);
    let paths = delegation
        .paths
        .iter()
        .map(|p| {
            PathPattern::new(p.clone())
                .map_err(|e| TrustError::Invalid(format!("path pattern {p:?}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let role = DelegatedRole {
        name: delegation.name.clone(),
        keyids: key_ids(&delegation.keys),
        threshold: threshold(
            &delegation.name,
            delegation.threshold,
            delegation.keys.len(),
        )?,
        paths: PathSet::Paths(paths),
        terminating: true,
        targets: None,
    };
    let delegations = targets.delegations.get_or_insert_with(Delegations::new);
    match delegations.roles.iter_mut().find(|r| r.name == role.name) {
        Some(r) => *r = role,
        None => delegations.roles.push(role),
    }
    for k in &delegation.keys {
        delegations
            .keys
            .insert(k.key_id().expect("an ed25519 key has an id"), k.clone());
    }
    // Keys no role uses any more are dropped, so a replaced key is revoked.
    let used: Vec<Decoded<Hex>> = delegations
        .roles
        .iter()
        .flat_map(|r| r.keyids.clone())
        .collect();
    delegations.keys.retain(|id, _| used.contains(id));
    let version = targets.version.get();
    let signed = meta::sign(targets, targets_signers);
    root.signed.verify_role(&signed).map_err(|e| {
        TrustError::refused(
            "targets",
            format!("{e}: sign with the targets keys named in root"),
        )
    })?;
    dir.write("targets", &signed, version)?;
    Ok(version)
}

/// A target for `bytes`, with posup's own fields.
pub fn target(bytes: &[u8], custom: HashMap<String, Value>) -> Target {
    use sha2::Digest;
    Target {
        length: bytes.len() as u64,
        hashes: Hashes {
            sha256: sha2::Sha256::digest(bytes).to_vec().into(),
            _extra: HashMap::new(),
        },
        custom,
        _extra: HashMap::new(),
    }
}

/// The target of a plugin component.
pub fn plugin_target(bytes: &[u8], name: &str, version: &str, vendor: &str) -> Target {
    let custom = HashMap::from([
        ("plugin".to_owned(), Value::from(name)),
        ("version".to_owned(), Value::from(version)),
        ("vendor".to_owned(), Value::from(vendor)),
    ]);
    target(bytes, custom)
}

/// The target of a package.
pub fn package_target(bytes: &[u8], release: &Release) -> Target {
    let mut custom = HashMap::from([("version".to_owned(), Value::from(release.version.clone()))]);
    if release.allow_downgrade {
        custom.insert("allow_downgrade".into(), Value::from(true));
    }
    target(bytes, custom)
}

/// Adds targets to a delegated role and writes its next version (its first when
/// it has none yet). A name already signed with other bytes is refused: a new
/// build gets a new version.
pub fn sign_targets(
    dir: &RepoDir,
    role: &str,
    add: Vec<(String, Target)>,
    signers: &[&SigningKey],
    days: i64,
) -> Result<u64> {
    let top = dir.targets()?;
    let delegations = top.signed.delegations.clone().unwrap_or_default();
    let Some(delegated) = delegations.roles.iter().find(|r| r.name == role) else {
        return Err(TrustError::Invalid(format!(
            "the repository's targets delegate no role {role}: ask the fleet owner to delegate it (`posup repo delegate`)"
        )));
    };
    let only = Delegations {
        keys: delegations.keys.clone(),
        roles: vec![delegated.clone()],
    };
    let mut targets = match dir.role(role)? {
        Some(current) => {
            let mut t = current.signed;
            t.version = meta::next(t.version);
            t
        }
        None => Targets::new(SPEC_VERSION.into(), NonZeroU64::MIN, meta::now()),
    };
    targets.expires = meta::expires_in(meta::now(), days * DAY);
    for (name, target) in add {
        let tn = TargetName::new(name.clone())
            .map_err(|e| TrustError::Invalid(format!("target {name}: {e}")))?;
        if !only.target_is_delegated(&tn) {
            return Err(TrustError::refused(
                role,
                format!(
                    "it is not delegated {name}: the fleet owner delegates it with `posup repo delegate`"
                ),
            ));
        }
        if let Some(old) = targets.targets.get(&tn)
            && old.hashes.sha256 != target.hashes.sha256
        {
            return Err(TrustError::refused(
                role,
                format!(
                    "{name} is already signed with other bytes: give the new build a new version"
                ),
            ));
        }
        targets.targets.insert(tn, target);
    }
    let version = targets.version.get();
    let signed = meta::sign(targets, signers);
    only.verify_role(&signed, role).map_err(|e| {
        TrustError::refused(role, format!("{e}: sign with the keys delegated to {role}"))
    })?;
    dir.write(role, &signed, version)?;
    Ok(version)
}

/// New keys for a root rotation; `None` keeps a role's keys.
#[derive(Debug, Clone, Default)]
pub struct Rotation {
    pub root_keys: Option<(Vec<Key>, u64)>,
    pub targets_keys: Option<(Vec<Key>, u64)>,
    pub snapshot_key: Option<Key>,
    pub timestamp_key: Option<Key>,
    pub root_days: i64,
}

/// Writes the next root, signed by the current root's keys and the new ones, so
/// that a terminal installed with any earlier root follows the chain.
pub fn rotate(dir: &RepoDir, rotation: &Rotation, signers: &[&SigningKey]) -> Result<u64> {
    let old = dir.root()?;
    let mut root = old.signed.clone();
    root.version = meta::next(root.version);
    root.expires = meta::expires_in(meta::now(), rotation.root_days * DAY);
    let mut set = |role: RoleType, keys: &[Key], t: u64| -> Result<()> {
        let t = threshold(&role.to_string(), t, keys.len())?;
        root.roles.insert(role, role_keys(keys, t));
        for k in keys {
            root.keys
                .insert(k.key_id().expect("an ed25519 key has an id"), k.clone());
        }
        Ok(())
    };
    if let Some((keys, t)) = &rotation.root_keys {
        set(RoleType::Root, keys, *t)?;
    }
    if let Some((keys, t)) = &rotation.targets_keys {
        set(RoleType::Targets, keys, *t)?;
    }
    if let Some(k) = &rotation.snapshot_key {
        set(RoleType::Snapshot, std::slice::from_ref(k), 1)?;
    }
    if let Some(k) = &rotation.timestamp_key {
        set(RoleType::Timestamp, std::slice::from_ref(k), 1)?;
    }
    let used: Vec<Decoded<Hex>> = root.roles.values().flat_map(|r| r.keyids.clone()).collect();
    root.keys.retain(|id, _| used.contains(id));
    let version = root.version.get();
    let signed = meta::sign(root, signers);
    old.signed.verify_role(&signed).map_err(|e| {
        TrustError::refused(
            "root",
            format!("{e}: a new root is signed by the current root's keys too"),
        )
    })?;
    signed.signed.verify_role(&signed).map_err(|e| {
        TrustError::refused(
            "root",
            format!("{e}: a new root is signed by its own root keys too"),
        )
    })?;
    dir.write("root", &signed, version)?;
    Ok(version)
}
