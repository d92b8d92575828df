//! Signing, writing and reading metadata files.
//!
//! A signature covers the canonical JSON (OLPC) of the `signed` object, as TUF and
//! its reference implementation define it; the file itself is pretty JSON, and
//! snapshot and timestamp pin the exact bytes served by length and sha256.

use std::collections::HashMap;
use std::num::NonZeroU64;

use olpc_cjson::CanonicalFormatter;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use tough::schema::{Hashes, Metafile, Signature, Signed};

use crate::{Result, SigningKey, TrustError};

/// The TUF specification version posup writes.
pub const SPEC_VERSION: &str = "1.0.0";

/// The largest metadata file posup reads or accepts, of any role.
pub const MAX_METADATA: usize = 4 << 20;

/// Signs `role` with each key.
pub fn sign<T: Serialize>(role: T, keys: &[&SigningKey]) -> Signed<T> {
    let data = canonical(&role);
    let signatures = keys
        .iter()
        .map(|k| Signature {
            keyid: hex::decode(k.key_id()).expect("a key id is hex").into(),
            sig: k.sign(&data).into(),
        })
        .collect();
    Signed {
        signed: role,
        signatures,
    }
}

fn canonical<T: Serialize>(value: &T) -> Vec<u8> {
    let mut data = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut data, CanonicalFormatter::new());
    value
        .serialize(&mut ser)
        .expect("metadata serializes to canonical JSON");
    data
}

/// The bytes of a metadata file.
pub fn to_bytes<T: Serialize>(signed: &Signed<T>) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(signed).expect("metadata serializes");
    bytes.push(b'\n');
    bytes
}

/// Reads a metadata file of the given role.
pub fn parse<T: DeserializeOwned>(bytes: &[u8], role: &str) -> Result<Signed<T>> {
    if bytes.len() > MAX_METADATA {
        return Err(TrustError::refused(
            role,
            format!("metadata larger than {} MiB", MAX_METADATA >> 20),
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        TrustError::refused(
            role,
            format!(
                "not valid TUF metadata of this role (at line {}, column {}): sign it with posup",
                e.line(),
                e.column()
            ),
        )
    })
}

/// The file name a role's version is published under (consistent snapshots:
/// `N.<role>.json`; the timestamp is always `timestamp.json`).
pub fn file_name(role: &str, version: u64) -> String {
    if role == "timestamp" {
        "timestamp.json".into()
    } else {
        format!("{version}.{role}.json")
    }
}

/// A point `secs` seconds after `now`, in whole seconds (the reference client
/// reads `expires` only in that form).
pub fn expires_in(now: jiff::Timestamp, secs: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(now.as_second().saturating_add(secs))
        .unwrap_or(jiff::Timestamp::MAX)
}

/// Whole seconds now.
pub fn now() -> jiff::Timestamp {
    expires_in(jiff::Timestamp::now(), 0)
}

pub(crate) fn next(v: NonZeroU64) -> NonZeroU64 {
    v.checked_add(1).expect("a version below u64::MAX")
}

/// How a snapshot or timestamp pins a file: version, length and sha256.
pub fn metafile(version: NonZeroU64, bytes: &[u8]) -> Metafile {
    Metafile {
        length: Some(bytes.len() as u64),
        hashes: Some(Hashes {
            sha256: Sha256::digest(bytes).to_vec().into(),
            _extra: HashMap::new(),
        }),
        version,
        _extra: HashMap::new(),
    }
}
