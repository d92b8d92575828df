//! posup's chain of trust: a TUF repository (specification 1.0) from the fleet
//! owner's offline keys to the terminal.
//!
//! ```text
//!  root (offline, fleet owner) ── trusts ──▶ targets (offline), snapshot + timestamp (online, server)
//!  targets ── delegates ──▶ vendor-<vendor>: plugins/<device type>/<plugin>/*   (per plugin and device type)
//!          └─ delegates ──▶ release:         packages/<device type>/*          (operators' releases)
//! ```
//!
//! `tough` (the TUF library Bottlerocket updates with) supplies the metadata types,
//! the signature checks and the client's whole update workflow: the root chain
//! (`N.root.json`), rollback, freeze, mix-and-match, lengths and hashes. posup adds
//! what TUF leaves to the application:
//! - [`keys`]: ed25519 key files, made and read;
//! - [`names`]: how a plugin or a package is named as a target, so that a
//!   delegation's path patterns say which plugins a vendor may sign for which
//!   device types;
//! - [`offline`]: the fleet owner's, vendors' and release signers' edits of a
//!   folder of metadata (init, delegate, sign, rotate);
//! - [`online`]: the server's part: checking what is published against the chain
//!   it extends, and signing snapshot and timestamp with its online keys;
//! - [`client`]: the terminal's part: refreshing from the server and finding the
//!   signed target a plugin or a package must match before it is used;
//! - [`decide`]: the pure rules on top (downgrades).
//!
//! **Invariant:** nothing is trusted because the server says so. The client
//! starts from the `root.json` installed with the agent, and a plugin or package
//! is accepted only when a role whose delegation covers its name signed its
//! length and sha256.

pub mod client;
pub mod decide;
pub mod keys;
pub mod meta;
pub mod names;
pub mod offline;
pub mod online;

pub use keys::SigningKey;
/// A public key as metadata lists it.
pub use tough::schema::key::Key;

/// What went wrong, said so that the person reading it knows which role or file
/// and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// A file could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    /// Input that is not what it must be (a key file, metadata, a name).
    #[error("{0}")]
    Invalid(String),
    /// Metadata that does not verify against the chain it extends.
    #[error("{role}: {reason}")]
    Refused { role: String, reason: String },
    /// The repository could not be refreshed (network, server, or a refusal by
    /// the TUF client, whose reason is given).
    #[error("{0}")]
    Refresh(String),
}

impl TrustError {
    pub(crate) fn refused(role: impl Into<String>, reason: impl Into<String>) -> TrustError {
        TrustError::Refused {
            role: role.into(),
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = TrustError> = std::result::Result<T, E>;
