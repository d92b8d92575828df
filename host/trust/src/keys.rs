//! ed25519 signing keys as files: the private key as PKCS#8 PEM (owner-only), and
//! beside it `<file>.pub`, the public key as TUF writes it in metadata.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use tough::schema::key::{Ed25519Key, Ed25519Scheme, Key};

use crate::{Result, TrustError};

/// A key file is a few hundred bytes; anything larger is not one.
const MAX_KEY_FILE: u64 = 64 * 1024;

/// A private ed25519 key.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private half.
        write!(f, "SigningKey({})", self.key_id())
    }
}

impl SigningKey {
    /// A new random key.
    pub fn generate() -> Result<SigningKey> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| TrustError::Invalid("the system's random source failed".into()))?;
        SigningKey::from_pkcs8(doc.as_ref())
    }

    fn from_pkcs8(der: &[u8]) -> Result<SigningKey> {
        let pair = Ed25519KeyPair::from_pkcs8(der)
            .map_err(|e| TrustError::Invalid(format!("not an ed25519 private key: {e}")))?;
        Ok(SigningKey {
            pair,
            pkcs8: der.to_vec(),
        })
    }

    /// Reads a PEM `PRIVATE KEY` (PKCS#8) block.
    pub fn from_pem(text: &str) -> Result<SigningKey> {
        let block = pem::parse(text).map_err(|_| {
            TrustError::Invalid(
                "not a PEM file: a key file starts with -----BEGIN PRIVATE KEY-----".into(),
            )
        })?;
        if block.tag() != "PRIVATE KEY" {
            return Err(TrustError::Invalid(format!(
                "a {} block, not a PRIVATE KEY: give the private key file `posup keys new` wrote",
                block.tag()
            )));
        }
        SigningKey::from_pkcs8(block.contents())
    }

    pub fn to_pem(&self) -> String {
        pem::encode(&pem::Pem::new("PRIVATE KEY", self.pkcs8.clone()))
    }

    /// The public key as metadata lists it.
    pub fn public(&self) -> Key {
        public_key(self.pair.public_key().as_ref())
    }

    /// The key id: the sha256 of the public key's canonical JSON, as TUF defines it.
    pub fn key_id(&self) -> String {
        key_id(&self.public())
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }
}

/// A TUF ed25519 public key from its 32 raw bytes.
pub fn public_key(raw: &[u8]) -> Key {
    Key::Ed25519 {
        keyval: Ed25519Key {
            public: raw.to_vec().into(),
            _extra: HashMap::new(),
        },
        scheme: Ed25519Scheme::Ed25519,
        _extra: HashMap::new(),
    }
}

/// The hex key id of a public key.
pub fn key_id(key: &Key) -> String {
    key.key_id()
        .map(|id| hex::encode(id.as_ref() as &[u8]))
        .unwrap_or_default()
}

/// The public key file written beside a private key file.
pub fn public_path(private: &Path) -> PathBuf {
    let mut name = private.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// Makes a new key in `path` (which must not exist; created owner-only) and its
/// public half in `<path>.pub`.
pub fn write_new(path: &Path) -> Result<SigningKey> {
    let key = SigningKey::generate()?;
    fn io<'a>(what: &'static str, p: &'a Path) -> impl FnOnce(std::io::Error) -> TrustError + 'a {
        move |source| TrustError::Io {
            what,
            path: p.display().to_string(),
            source,
        }
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io("creating the key file", path))?;
    file.write_all(key.to_pem().as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(io("writing the key file", path))?;
    let public = public_path(path);
    let text = serde_json::to_string_pretty(&key.public()).expect("a key serializes") + "\n";
    std::fs::write(&public, text).map_err(io("writing the public key file", &public))?;
    Ok(key)
}

fn read_small(path: &Path, what: &'static str) -> Result<String> {
    use std::io::Read;
    let io = |source| TrustError::Io {
        what,
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut text = String::new();
    file.take(MAX_KEY_FILE + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() as u64 > MAX_KEY_FILE {
        return Err(TrustError::Invalid(format!(
            "{what} {}: larger than {MAX_KEY_FILE} bytes, so not a key file",
            path.display()
        )));
    }
    Ok(text)
}

/// Reads a private key file.
pub fn read_signing(path: &Path) -> Result<SigningKey> {
    let text = read_small(path, "reading the key file")?;
    SigningKey::from_pem(&text)
        .map_err(|e| TrustError::Invalid(format!("key file {}: {e}", path.display())))
}

/// Reads a public key: a `.pub` file, or the public half of a private key file.
pub fn read_public(path: &Path) -> Result<Key> {
    let text = read_small(path, "reading the key file")?;
    if text.trim_start().starts_with("-----BEGIN") {
        return read_signing(path).map(|k| k.public());
    }
    let key: Key = serde_json::from_str(&text).map_err(|_| {
        TrustError::Invalid(format!(
            "key file {}: neither a private key nor a public key file as `posup keys new` writes them",
            path.display()
        ))
    })?;
    if !matches!(key, Key::Ed25519 { .. }) {
        return Err(TrustError::Invalid(format!(
            "key file {}: posup signs with ed25519 keys only",
            path.display()
        )));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_round_trips_and_its_public_half_is_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vendor.key");
        let key = write_new(&path).unwrap();
        let again = read_signing(&path).unwrap();
        assert_eq!(key.key_id(), again.key_id());
        assert_eq!(read_public(&public_path(&path)).unwrap(), key.public());
        assert_eq!(read_public(&path).unwrap(), key.public());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "a private key is owner-only");
        // An existing key is never overwritten.
        assert!(write_new(&path).is_err());
    }

    #[test]
    fn other_files_are_not_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, "hello").unwrap();
        let e = read_public(&path).unwrap_err().to_string();
        assert!(e.contains("neither a private key"), "{e}");
        std::fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = read_signing(&path).unwrap_err().to_string();
        assert!(e.contains("not a PRIVATE KEY"), "{e}");
    }
}
