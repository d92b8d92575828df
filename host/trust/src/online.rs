//! The server's part of the repository: it checks what the fleet owner, vendors
//! and release signers publish against the chain it extends, and signs snapshot
//! and timestamp with its online keys.
//!
//! **Invariant:** the server cannot add a target. Everything it signs itself
//! (snapshot, timestamp) only pins versions and hashes of metadata an offline key
//! signed; a target reaches a terminal only listed in a role that an offline key
//! signed and whose delegation covers its name.
//!
//! Everything here is pure: the caller loads what is published, passes the time
//! and whether a blob is on the server, and stores the files returned, in one
//! transaction.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU64;

use tough::TargetName;
use tough::schema::{Delegations, RoleType, Root, Signed, Snapshot, Targets, Timestamp};

use crate::meta::{self, SPEC_VERSION};
use crate::{Result, SigningKey, TrustError};

/// Lifetime of a snapshot, and how long before its end the server signs a new one.
pub const SNAPSHOT_SECS: i64 = 7 * 86_400;
pub const SNAPSHOT_RENEW_SECS: i64 = 3 * 86_400;
/// Lifetime of a timestamp, and how long before its end the server signs a new
/// one. A terminal cut off from the server for longer than a timestamp lives
/// refuses to install (TUF's freeze protection).
pub const TIMESTAMP_SECS: i64 = 86_400;
pub const TIMESTAMP_RENEW_SECS: i64 = 12 * 3_600;

/// The server's two online keys.
#[derive(Debug)]
pub struct OnlineKeys {
    pub snapshot: SigningKey,
    pub timestamp: SigningKey,
}

/// The newest published version of each role, with its exact bytes.
#[derive(Debug, Clone, Default)]
pub struct Published {
    pub roles: BTreeMap<String, (u64, Vec<u8>)>,
}

/// One metadata file a publisher sends.
#[derive(Debug, Clone)]
pub struct Upload {
    pub role: String,
    pub bytes: Vec<u8>,
}

/// A file to store and serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFile {
    pub role: String,
    pub version: u64,
    /// The name it is served under (`N.<role>.json`, `timestamp.json`).
    pub name: String,
    pub bytes: Vec<u8>,
}

impl NewFile {
    fn new(role: &str, version: u64, bytes: Vec<u8>) -> NewFile {
        NewFile {
            role: role.to_owned(),
            version,
            name: meta::file_name(role, version),
            bytes,
        }
    }
}

/// The working view of the chain while a publish is checked.
struct Chain {
    root: Option<Signed<Root>>,
    targets: Option<Signed<Targets>>,
    roles: BTreeMap<String, Signed<Targets>>,
    bytes: BTreeMap<String, (u64, Vec<u8>)>,
}

impl Chain {
    fn load(published: &Published) -> Result<Chain> {
        let mut chain = Chain {
            root: None,
            targets: None,
            roles: BTreeMap::new(),
            bytes: published.roles.clone(),
        };
        for (role, (_, bytes)) in &published.roles {
            match role.as_str() {
                "root" => chain.root = Some(meta::parse(bytes, role)?),
                "targets" => chain.targets = Some(meta::parse(bytes, role)?),
                "snapshot" | "timestamp" => {}
                _ => {
                    chain.roles.insert(role.clone(), meta::parse(bytes, role)?);
                }
            }
        }
        Ok(chain)
    }

    fn version(&self, role: &str) -> u64 {
        self.bytes.get(role).map_or(0, |(v, _)| *v)
    }
}

fn not_expired(role: &str, expires: jiff::Timestamp, now: jiff::Timestamp) -> Result<()> {
    if expires <= now {
        return Err(TrustError::refused(
            role,
            format!("it expired at {expires}: sign it again with a later expiry"),
        ));
    }
    Ok(())
}

fn newer(role: &str, version: u64, current: u64) -> Result<()> {
    if version <= current {
        return Err(TrustError::refused(
            role,
            format!(
                "version {version} is not newer than the published version {current}: sign the next version"
            ),
        ));
    }
    Ok(())
}

/// Checks uploads in order against the published chain and returns the files to
/// store: the uploads, then a new snapshot and timestamp. `blob` says whether
/// the server holds the bytes of a target (sha256 hex, length).
pub fn accept(
    published: &Published,
    uploads: &[Upload],
    keys: &OnlineKeys,
    now: jiff::Timestamp,
    blob: &dyn Fn(&str, u64) -> bool,
) -> Result<Vec<NewFile>> {
    let mut chain = Chain::load(published)?;
    let mut out = Vec::new();
    for up in uploads {
        let role = up.role.as_str();
        let version = match role {
            "root" => accept_root(&mut chain, &up.bytes, keys, now)?,
            "targets" => accept_targets(&mut chain, &up.bytes, now)?,
            "snapshot" | "timestamp" => {
                return Err(TrustError::refused(
                    role,
                    "the server signs snapshot and timestamp itself with its online keys; publish root, targets or a delegated role",
                ));
            }
            _ => accept_delegated(&mut chain, role, &up.bytes, now, blob)?,
        };
        chain
            .bytes
            .insert(role.to_owned(), (version, up.bytes.clone()));
        out.push(NewFile::new(role, version, up.bytes.clone()));
    }
    check_whole(&chain)?;
    out.extend(sign_online(&chain, keys, now, true)?);
    Ok(out)
}

fn accept_root(
    chain: &mut Chain,
    bytes: &[u8],
    keys: &OnlineKeys,
    now: jiff::Timestamp,
) -> Result<u64> {
    let new: Signed<Root> = meta::parse(bytes, "root")?;
    let version = new.signed.version.get();
    match &chain.root {
        None if version != 1 => {
            return Err(TrustError::refused(
                "root",
                format!(
                    "the server has no root yet, so it takes 1.root.json first, not version {version}"
                ),
            ));
        }
        None => {}
        Some(old) => {
            let current = old.signed.version.get();
            if version != current + 1 {
                return Err(TrustError::refused(
                    "root",
                    format!(
                        "version {version} does not follow the published version {current}: publish each root of the chain in turn"
                    ),
                ));
            }
            old.signed.verify_role(&new).map_err(|e| {
                TrustError::refused(
                    "root",
                    format!("not signed by the published root's keys: {e}"),
                )
            })?;
        }
    }
    new.signed.verify_role(&new).map_err(|e| {
        TrustError::refused("root", format!("not signed by its own root keys: {e}"))
    })?;
    not_expired("root", new.signed.expires, now)?;
    for (role, key) in [
        (RoleType::Snapshot, &keys.snapshot),
        (RoleType::Timestamp, &keys.timestamp),
    ] {
        let id: tough::schema::decoded::Decoded<tough::schema::decoded::Hex> =
            hex::decode(key.key_id()).expect("hex").into();
        let trusted = new
            .signed
            .roles
            .get(&role)
            .is_some_and(|r| r.keyids.contains(&id));
        if !trusted {
            return Err(TrustError::refused(
                "root",
                format!(
                    "it does not trust this server's online {role} key {}: name the keys `GET /api/v1/tuf/online-keys` gives",
                    key.key_id()
                ),
            ));
        }
    }
    chain.root = Some(new);
    Ok(version)
}

fn accept_targets(chain: &mut Chain, bytes: &[u8], now: jiff::Timestamp) -> Result<u64> {
    let Some(root) = &chain.root else {
        return Err(TrustError::refused(
            "targets",
            "the server has no root yet: publish 1.root.json first",
        ));
    };
    let new: Signed<Targets> = meta::parse(bytes, "targets")?;
    let version = new.signed.version.get();
    newer("targets", version, chain.version("targets"))?;
    root.signed.verify_role(&new).map_err(|e| {
        TrustError::refused(
            "targets",
            format!("not signed by the targets keys root names: {e}"),
        )
    })?;
    not_expired("targets", new.signed.expires, now)?;
    if let Some(d) = &new.signed.delegations {
        for r in &d.roles {
            crate::names::part("delegated role", &r.name)?;
            if ["root", "targets", "snapshot", "timestamp"].contains(&r.name.as_str()) {
                return Err(TrustError::refused(
                    "targets",
                    format!("it delegates to {}, the name of a top-level role", r.name),
                ));
            }
        }
    }
    chain.targets = Some(new);
    Ok(version)
}

fn delegation_of(chain: &Chain, role: &str) -> Result<Delegations> {
    let d = chain
        .targets
        .as_ref()
        .and_then(|t| t.signed.delegations.as_ref())
        .and_then(|d| {
            d.roles
                .iter()
                .find(|r| r.name == role)
                .map(|r| Delegations {
                    keys: d.keys.clone(),
                    roles: vec![r.clone()],
                })
        });
    d.ok_or_else(|| {
        TrustError::refused(
            role,
            "targets delegates no such role: the fleet owner delegates it first (`posup repo delegate`)",
        )
    })
}

fn accept_delegated(
    chain: &mut Chain,
    role: &str,
    bytes: &[u8],
    now: jiff::Timestamp,
    blob: &dyn Fn(&str, u64) -> bool,
) -> Result<u64> {
    let only = delegation_of(chain, role)?;
    let new: Signed<Targets> = meta::parse(bytes, role)?;
    let version = new.signed.version.get();
    newer(role, version, chain.version(role))?;
    only.verify_role(&new, role).map_err(|e| {
        TrustError::refused(
            role,
            format!("not signed by the keys delegated to {role}: {e}"),
        )
    })?;
    not_expired(role, new.signed.expires, now)?;
    if new
        .signed
        .delegations
        .as_ref()
        .is_some_and(|d| !d.roles.is_empty())
    {
        return Err(TrustError::refused(
            role,
            "it delegates further; posup delegates one level only",
        ));
    }
    for (name, target) in &new.signed.targets {
        if !only.target_is_delegated(name) {
            return Err(TrustError::refused(
                role,
                format!(
                    "it signs {}, which its delegation does not cover",
                    name.raw()
                ),
            ));
        }
        let sha = hex::encode(target.hashes.sha256.as_ref() as &[u8]);
        if !blob(&sha, target.length) {
            return Err(TrustError::refused(
                role,
                format!(
                    "{}: the server holds no file of {} bytes with sha256 {sha}: upload the plugin or package first",
                    name.raw(),
                    target.length
                ),
            ));
        }
    }
    chain.roles.insert(role.to_owned(), new);
    Ok(version)
}

/// The published chain must hold together after a publish: targets verifies
/// under the root, and every delegated role has metadata that verifies under
/// its delegation (a client stops at the first role it cannot load).
fn check_whole(chain: &Chain) -> Result<()> {
    let (Some(root), Some(targets)) = (&chain.root, &chain.targets) else {
        return Ok(());
    };
    root.signed.verify_role(targets).map_err(|e| {
        TrustError::refused(
            "targets",
            format!("the published targets does not verify under the new root ({e}): publish targets signed by its keys with it"),
        )
    })?;
    for r in targets.signed.delegations.iter().flat_map(|d| &d.roles) {
        let only = delegation_of(chain, &r.name)?;
        let Some(m) = chain.roles.get(&r.name) else {
            return Err(TrustError::refused(
                &r.name,
                "targets delegates it, but it has no metadata yet: publish its first version (signed by its own key) together with targets",
            ));
        };
        only.verify_role(m, &r.name).map_err(|e| {
            TrustError::refused(
                &r.name,
                format!("its published metadata does not verify under the new delegation ({e}): sign it again with the delegated keys and publish it together with targets"),
            )
        })?;
    }
    Ok(())
}

fn sign_online(
    chain: &Chain,
    keys: &OnlineKeys,
    now: jiff::Timestamp,
    new_snapshot: bool,
) -> Result<Vec<NewFile>> {
    let Some(root) = &chain.root else {
        return Ok(Vec::new());
    };
    if chain.targets.is_none() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let (snap_version, snap_bytes) = match chain.bytes.get("snapshot") {
        Some((v, b)) if !new_snapshot => (*v, b.clone()),
        current => {
            let version = current.map_or(1, |(v, _)| v + 1);
            let v = NonZeroU64::new(version).expect("not zero");
            let mut snapshot =
                Snapshot::new(SPEC_VERSION.into(), v, meta::expires_in(now, SNAPSHOT_SECS));
            for (role, (rv, bytes)) in &chain.bytes {
                if matches!(role.as_str(), "root" | "snapshot" | "timestamp") {
                    continue;
                }
                let rv = NonZeroU64::new(*rv).expect("published versions start at 1");
                snapshot
                    .meta
                    .insert(format!("{role}.json"), meta::metafile(rv, bytes));
            }
            let signed = meta::sign(snapshot, &[&keys.snapshot]);
            root.signed.verify_role(&signed).map_err(|e| {
                TrustError::refused(
                    "snapshot",
                    format!("the server's online key does not verify under root: {e}"),
                )
            })?;
            let bytes = meta::to_bytes(&signed);
            out.push(NewFile::new("snapshot", version, bytes.clone()));
            (version, bytes)
        }
    };
    let version = chain.version("timestamp") + 1;
    let mut timestamp = Timestamp::new(
        SPEC_VERSION.into(),
        NonZeroU64::new(version).expect("not zero"),
        meta::expires_in(now, TIMESTAMP_SECS),
    );
    let sv = NonZeroU64::new(snap_version).expect("not zero");
    timestamp
        .meta
        .insert("snapshot.json".into(), meta::metafile(sv, &snap_bytes));
    let signed = meta::sign(timestamp, &[&keys.timestamp]);
    root.signed.verify_role(&signed).map_err(|e| {
        TrustError::refused(
            "timestamp",
            format!("the server's online key does not verify under root: {e}"),
        )
    })?;
    out.push(NewFile::new("timestamp", version, meta::to_bytes(&signed)));
    Ok(out)
}

/// The snapshot and timestamp to sign now to keep the repository fresh: a new
/// timestamp when the current one ends within [`TIMESTAMP_RENEW_SECS`], and a
/// new snapshot with it when that ends within [`SNAPSHOT_RENEW_SECS`]. Nothing
/// when the repository has no root and targets yet, or all is fresh.
pub fn refresh(
    published: &Published,
    keys: &OnlineKeys,
    now: jiff::Timestamp,
) -> Result<Vec<NewFile>> {
    let chain = Chain::load(published)?;
    let ends = |role: &str| -> Result<Option<jiff::Timestamp>> {
        #[derive(serde::Deserialize)]
        struct Expires {
            expires: jiff::Timestamp,
        }
        let Some((_, bytes)) = published.roles.get(role) else {
            return Ok(None);
        };
        let s: Signed<Expires> = meta::parse(bytes, role)?;
        Ok(Some(s.signed.expires))
    };
    let soon = |t: Option<jiff::Timestamp>, within: i64| {
        t.is_none_or(|t| t <= meta::expires_in(now, within))
    };
    let snapshot = soon(ends("snapshot")?, SNAPSHOT_RENEW_SECS);
    let timestamp = soon(ends("timestamp")?, TIMESTAMP_RENEW_SECS);
    if !(snapshot || timestamp) {
        return Ok(Vec::new());
    }
    sign_online(&chain, keys, now, snapshot)
}

/// One signed target as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub target: String,
    pub role: String,
    /// The role's key ids that signed it.
    pub keyids: Vec<String>,
    /// Until when the role's metadata is valid.
    pub expires: String,
    pub custom: HashMap<String, serde_json::Value>,
}

/// Who signed the bytes with this sha256, in which role, until when.
pub fn signatures(published: &Published, sha256: &str) -> Vec<Signature> {
    let Ok(chain) = Chain::load(published) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (role, m) in &chain.roles {
        for (name, t) in &m.signed.targets {
            if hex::encode(t.hashes.sha256.as_ref() as &[u8]) == sha256 {
                out.push(Signature {
                    target: name.raw().to_owned(),
                    role: role.clone(),
                    keyids: m
                        .signatures
                        .iter()
                        .map(|s| hex::encode(s.keyid.as_ref() as &[u8]))
                        .collect(),
                    expires: m.signed.expires.to_string(),
                    custom: t.custom.clone(),
                });
            }
        }
    }
    out
}

/// When each published role's metadata ends, soonest first.
pub fn expiries(published: &Published) -> Vec<(String, u64, String)> {
    #[derive(serde::Deserialize)]
    struct Expires {
        expires: jiff::Timestamp,
    }
    let mut out: Vec<(jiff::Timestamp, String, u64)> = published
        .roles
        .iter()
        .filter_map(|(role, (v, bytes))| {
            let s: Signed<Expires> = meta::parse(bytes, role).ok()?;
            Some((s.signed.expires, role.clone(), *v))
        })
        .collect();
    out.sort();
    out.into_iter()
        .map(|(t, role, v)| (role, v, t.to_string()))
        .collect()
}

/// Whether a target name is well formed (for paths served under `/tuf/targets`).
pub fn target_name_ok(name: &str) -> bool {
    TargetName::new(name).is_ok_and(|t| t.raw() == t.resolved())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names;
    use crate::offline::{self, Delegation, InitSpec, Release, RepoDir};

    struct Fleet {
        _tmp: tempfile::TempDir,
        dir: RepoDir,
        root: SigningKey,
        targets: SigningKey,
        vendor: SigningKey,
        release: SigningKey,
        online: OnlineKeys,
    }

    fn fleet() -> Fleet {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RepoDir::open(&tmp.path().join("repo")).unwrap();
        let f = Fleet {
            dir,
            root: SigningKey::generate().unwrap(),
            targets: SigningKey::generate().unwrap(),
            vendor: SigningKey::generate().unwrap(),
            release: SigningKey::generate().unwrap(),
            online: OnlineKeys {
                snapshot: SigningKey::generate().unwrap(),
                timestamp: SigningKey::generate().unwrap(),
            },
            _tmp: tmp,
        };
        let spec = InitSpec {
            root_keys: vec![f.root.public()],
            root_threshold: 1,
            targets_keys: vec![f.targets.public()],
            targets_threshold: 1,
            snapshot_key: f.online.snapshot.public(),
            timestamp_key: f.online.timestamp.public(),
            root_days: 365,
            targets_days: 365,
        };
        offline::init(&f.dir, &spec, &[&f.root], &[&f.targets]).unwrap();
        offline::delegate(
            &f.dir,
            &Delegation {
                name: names::vendor_role("acme").unwrap(),
                keys: vec![f.vendor.public()],
                threshold: 1,
                paths: vec![names::plugin_pattern("kiosk", "kiosk").unwrap()],
            },
            &[&f.targets],
            365,
        )
        .unwrap();
        offline::delegate(
            &f.dir,
            &Delegation {
                name: names::RELEASE.into(),
                keys: vec![f.release.public()],
                threshold: 1,
                paths: vec![names::package_pattern(None).unwrap()],
            },
            &[&f.targets],
            365,
        )
        .unwrap();
        f
    }

    fn sign_plugin(
        f: &Fleet,
        device_type: &str,
        bytes: &[u8],
        key: &SigningKey,
    ) -> crate::Result<u64> {
        let name = names::plugin_target(device_type, "kiosk", "1.0.0").unwrap();
        let t = offline::plugin_target(bytes, "kiosk", "1.0.0", "acme");
        offline::sign_targets(&f.dir, "vendor-acme", vec![(name, t)], &[key], 365)
    }

    fn uploads(f: &Fleet) -> Vec<Upload> {
        f.dir
            .latest_files()
            .unwrap()
            .into_iter()
            .map(|(role, _, bytes)| Upload { role, bytes })
            .collect::<Vec<_>>()
    }

    fn ordered(mut u: Vec<Upload>) -> Vec<Upload> {
        let rank = |r: &str| match r {
            "root" => 0,
            "targets" => 1,
            _ => 2,
        };
        u.sort_by_key(|u| rank(&u.role));
        u
    }

    /// Everything in the folder, published to an empty server.
    fn first_publish(f: &Fleet) -> Vec<NewFile> {
        accept(
            &Published::default(),
            &ordered(uploads(f)),
            &f.online,
            meta::now(),
            &|_, _| true,
        )
        .unwrap()
    }

    fn publish(published: &mut Published, files: &[NewFile]) {
        for f in files {
            published
                .roles
                .insert(f.role.clone(), (f.version, f.bytes.clone()));
        }
    }

    #[test]
    fn a_whole_repository_publishes_and_the_server_signs_snapshot_and_timestamp() {
        let f = fleet();
        sign_plugin(&f, "kiosk", b"component", &f.vendor).unwrap();
        let package = names::package_target("kiosk", "kiosk_7.5.0.tgz").unwrap();
        let release = Release {
            version: "7.5.0".into(),
            allow_downgrade: false,
        };
        offline::sign_targets(
            &f.dir,
            "release",
            vec![(package, offline::package_target(b"package", &release))],
            &[&f.release],
            365,
        )
        .unwrap();
        let files = first_publish(&f);
        let roles: Vec<&str> = files.iter().map(|f| f.role.as_str()).collect();
        assert_eq!(
            roles,
            [
                "root",
                "targets",
                "release",
                "vendor-acme",
                "snapshot",
                "timestamp"
            ]
        );
        assert_eq!(files[1].name, "3.targets.json");
        assert_eq!(files[5].name, "timestamp.json");
        let mut published = Published::default();
        publish(&mut published, &files);
        let s = signatures(&published, &hex::encode(sha2::Sha256::digest(b"component")));
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].role, "vendor-acme");
        assert_eq!(s[0].target, "plugins/kiosk/kiosk/kiosk-1.0.0.wasm");
        // Fresh: nothing to re-sign. A day later the timestamp is renewed, and
        // after four days the snapshot too.
        assert!(
            refresh(&published, &f.online, meta::now())
                .unwrap()
                .is_empty()
        );
        let later = refresh(
            &published,
            &f.online,
            meta::expires_in(meta::now(), 13 * 3600),
        )
        .unwrap();
        assert_eq!(
            later.iter().map(|f| f.role.as_str()).collect::<Vec<_>>(),
            ["timestamp"]
        );
        let much_later = refresh(
            &published,
            &f.online,
            meta::expires_in(meta::now(), 4 * 86_400),
        )
        .unwrap();
        assert_eq!(
            much_later
                .iter()
                .map(|f| f.role.as_str())
                .collect::<Vec<_>>(),
            ["snapshot", "timestamp"]
        );
        use sha2::Digest;
    }

    #[test]
    fn a_vendor_signs_only_what_it_was_delegated_and_only_with_its_key() {
        let f = fleet();
        // Another device type than its delegation names: refused offline already.
        let e = sign_plugin(&f, "ukm5", b"x", &f.vendor)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("vendor-acme") && e.contains("not delegated"),
            "{e}"
        );
        // Another key than the delegated one.
        let e = sign_plugin(&f, "kiosk", b"x", &f.release)
            .unwrap_err()
            .to_string();
        assert!(e.contains("vendor-acme") && e.contains("signature"), "{e}");
    }

    #[test]
    fn the_server_refuses_what_does_not_extend_its_chain() {
        let f = fleet();
        sign_plugin(&f, "kiosk", b"component", &f.vendor).unwrap();
        offline::sign_targets(&f.dir, "release", vec![], &[&f.release], 365).unwrap();
        let all = ordered(uploads(&f));
        let now = meta::now();

        // A target whose bytes the server does not hold.
        let e = accept(&Published::default(), &all, &f.online, now, &|_, _| false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("vendor-acme") && e.contains("upload the plugin or package first"),
            "{e}"
        );

        // Targets delegating to a role that has no metadata.
        let without: Vec<Upload> = all
            .iter()
            .filter(|u| u.role != "release")
            .cloned()
            .collect();
        let e = accept(&Published::default(), &without, &f.online, now, &|_, _| {
            true
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("release:") && e.contains("no metadata yet"),
            "{e}"
        );

        // The server never takes a snapshot or timestamp from outside.
        let snap = Upload {
            role: "snapshot".into(),
            bytes: b"{}".to_vec(),
        };
        let e = accept(&Published::default(), &[snap], &f.online, now, &|_, _| true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("signs snapshot and timestamp itself"), "{e}");

        let files = accept(&Published::default(), &all, &f.online, now, &|_, _| true).unwrap();
        let mut published = Published::default();
        publish(&mut published, &files);

        // The same versions again: a rollback, refused.
        let again: Vec<Upload> = all
            .iter()
            .filter(|u| u.role == "vendor-acme")
            .cloned()
            .collect();
        let e = accept(&published, &again, &f.online, now, &|_, _| true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not newer than the published version"), "{e}");

        // Metadata signed by the server's online key posing as the vendor.
        let mut forged: Signed<Targets> = meta::parse(&again[0].bytes, "vendor-acme").unwrap();
        forged.signed.version = NonZeroU64::new(9).unwrap();
        let forged = meta::sign(forged.signed, &[&f.online.snapshot]);
        let up = Upload {
            role: "vendor-acme".into(),
            bytes: meta::to_bytes(&forged),
        };
        let e = accept(&published, &[up], &f.online, now, &|_, _| true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not signed by the keys delegated to vendor-acme"),
            "{e}"
        );

        // A server whose online keys the root does not name cannot take it.
        let other = OnlineKeys {
            snapshot: SigningKey::generate().unwrap(),
            timestamp: SigningKey::generate().unwrap(),
        };
        let e = accept(&Published::default(), &all, &other, now, &|_, _| true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("does not trust this server's online snapshot key"),
            "{e}"
        );
    }

    #[test]
    fn a_rotated_root_is_signed_by_the_old_and_new_keys_and_taken_in_turn() {
        let f = fleet();
        offline::sign_targets(&f.dir, "vendor-acme", vec![], &[&f.vendor], 365).unwrap();
        offline::sign_targets(&f.dir, "release", vec![], &[&f.release], 365).unwrap();
        let files = first_publish(&f);
        let mut published = Published::default();
        publish(&mut published, &files);
        let new_root = SigningKey::generate().unwrap();
        let rotation = offline::Rotation {
            root_keys: Some((vec![new_root.public()], 1)),
            root_days: 365,
            ..Default::default()
        };
        // Only the new key: the chain would break.
        let e = offline::rotate(&f.dir, &rotation, &[&new_root])
            .unwrap_err()
            .to_string();
        assert!(e.contains("current root's keys"), "{e}");
        assert_eq!(
            offline::rotate(&f.dir, &rotation, &[&f.root, &new_root]).unwrap(),
            2
        );
        let up = Upload {
            role: "root".into(),
            bytes: f.dir.read("root", 2).unwrap(),
        };
        let files = accept(&published, &[up], &f.online, meta::now(), &|_, _| true).unwrap();
        assert_eq!(files[0].name, "2.root.json");
        publish(&mut published, &files);
        // The old root key alone no longer signs a root.
        let rotation = offline::Rotation {
            root_days: 365,
            ..Default::default()
        };
        let e = offline::rotate(&f.dir, &rotation, &[&f.root])
            .unwrap_err()
            .to_string();
        assert!(e.contains("root"), "{e}");
    }
}
