//! The terminal's part: refresh the repository from the server, starting from the
//! `root.json` installed with the agent, and find the signed target that a
//! plugin or a package must match before it is used.
//!
//! The refresh is tough's TUF client workflow (specification 1.0, §5): the root
//! chain is followed through `N.root.json`, and timestamp, snapshot, targets and
//! every delegated role are checked for signatures, thresholds, versions against
//! what this terminal saw before (its datastore), lengths, hashes and expiry. What
//! the server's poll says (URL, sha256, size) is a hint: a download is accepted
//! only when it matches a target the refreshed metadata lists.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use tough::schema::{Delegations, Root, Signed};
use tough::{
    ExpirationEnforcement, RepositoryLoader, TargetName, Transport, TransportError,
    TransportErrorKind, TransportStream,
};
use url::Url;

use crate::{Result, TrustError, meta, names};

/// How long one metadata request may take.
const FETCH_TIME: Duration = Duration::from_secs(30);

/// Metadata over HTTP(S) with the agent's own client (its TLS settings, its CA),
/// each file bounded in size and time. tough bounds each file again by the
/// length the metadata above it signed.
#[derive(Debug, Clone)]
struct Http {
    client: reqwest::Client,
}

#[async_trait::async_trait]
impl Transport for Http {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        let other = |e: String| {
            TransportError::new_with_cause(
                TransportErrorKind::Other,
                url.as_str(),
                std::io::Error::other(e),
            )
        };
        let response = tokio::time::timeout(FETCH_TIME, self.client.get(url.clone()).send())
            .await
            .map_err(|_| other(format!("no answer within {} s", FETCH_TIME.as_secs())))?
            .map_err(|e| other(e.to_string()))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(TransportError::new(
                TransportErrorKind::FileNotFound,
                url.as_str(),
            ));
        }
        if !status.is_success() {
            return Err(other(format!("the server answered {status}")));
        }
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        let read = async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| other(e.to_string()))?;
                if body.len() + chunk.len() > meta::MAX_METADATA {
                    return Err(other(format!(
                        "more than {} MiB of metadata",
                        meta::MAX_METADATA >> 20
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(())
        };
        tokio::time::timeout(FETCH_TIME, read)
            .await
            .map_err(|_| other(format!("not read within {} s", FETCH_TIME.as_secs())))??;
        let once = futures::stream::once(async move { Ok(bytes::Bytes::from(body)) });
        Ok(Box::pin(once))
    }
}

/// A terminal's view of its server's repository.
#[derive(Debug, Clone)]
pub struct TrustClient {
    root: Vec<u8>,
    metadata: Url,
    targets: Url,
    datastore: PathBuf,
    http: Http,
}

/// A signed target that a download matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedTarget {
    pub name: String,
    /// The delegated role that signed it.
    pub role: String,
    pub length: u64,
    pub sha256: String,
    /// What the release role says of a package (empty for a plugin).
    pub release: crate::offline::Release,
}

/// Where a server serves its repository, below its base URL.
pub const METADATA_PATH: &str = "tuf/metadata/";
pub const TARGETS_PATH: &str = "tuf/targets/";

impl TrustClient {
    /// A client trusting the root in `root_file`, refreshing from `server`
    /// through `http`, keeping what it saw in `datastore` (an owner-only folder
    /// that must exist).
    pub fn new(
        root_file: &Path,
        server: &str,
        http: reqwest::Client,
        datastore: PathBuf,
    ) -> Result<TrustClient> {
        let root = std::fs::read(root_file).map_err(|source| TrustError::Io {
            what: "reading the trusted root (`root` in the agent configuration)",
            path: root_file.display().to_string(),
            source,
        })?;
        let _: Signed<Root> = meta::parse(&root, "root").map_err(|e| {
            TrustError::Invalid(format!(
                "the trusted root {}: {e}; install the fleet's 1.root.json there",
                root_file.display()
            ))
        })?;
        let mut base = Url::parse(server)
            .map_err(|e| TrustError::Invalid(format!("server URL {server}: {e}")))?;
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let join = |p: &str| {
            base.join(p)
                .map_err(|e| TrustError::Invalid(format!("server URL {server}: {e}")))
        };
        Ok(TrustClient {
            root,
            metadata: join(METADATA_PATH)?,
            targets: join(TARGETS_PATH)?,
            datastore,
            http: Http { client: http },
        })
    }

    /// Refreshes the metadata: the whole chain, checked now.
    pub async fn refresh(&self) -> Result<Verified> {
        let repo = RepositoryLoader::new(&self.root, self.metadata.clone(), self.targets.clone())
            .transport(self.http.clone())
            .datastore(self.datastore.clone())
            .expiration_enforcement(ExpirationEnforcement::Safe)
            .load()
            .await
            .map_err(|e| TrustError::Refresh(describe(&e)))?;
        Ok(Verified { repo })
    }
}

/// tough's error with its causes, in one line.
fn describe(e: &tough::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    format!("the signed metadata was refused: {s}")
}

/// Metadata as refreshed and checked.
#[derive(Debug)]
pub struct Verified {
    repo: tough::Repository,
}

impl Verified {
    /// The signed target of a plugin for this device type, which the download
    /// with `sha256` must be.
    pub fn plugin(
        &self,
        device_type: &str,
        name: &str,
        version: &str,
        sha256: &str,
    ) -> Result<SignedTarget> {
        let target = names::plugin_target(device_type, name, version)?;
        self.find(
            &target,
            sha256,
            &format!("plugin {name} {version} for device type {device_type}"),
        )
    }

    /// The signed target of a package for this device type.
    pub fn package(
        &self,
        device_type: &str,
        file_name: &str,
        sha256: &str,
    ) -> Result<SignedTarget> {
        let target = names::package_target(device_type, file_name)?;
        self.find(
            &target,
            sha256,
            &format!("package {file_name} for device type {device_type}"),
        )
    }

    /// The delegated role whose paths cover `name`: the one a lookup trusts,
    /// since every posup delegation is terminating.
    fn role_for(&self, name: &TargetName) -> Option<String> {
        let d = self.repo.targets().signed.delegations.as_ref()?;
        d.roles
            .iter()
            .find(|r| {
                Delegations {
                    keys: d.keys.clone(),
                    roles: vec![(*r).clone()],
                }
                .target_is_delegated(name)
            })
            .map(|r| r.name.clone())
    }

    fn find(&self, target: &str, sha256: &str, what: &str) -> Result<SignedTarget> {
        let name =
            TargetName::new(target).map_err(|e| TrustError::Invalid(format!("{what}: {e}")))?;
        let role = self.role_for(&name);
        let Some(role) = role else {
            return Err(TrustError::refused(
                "targets",
                format!(
                    "no role is trusted to sign {what}: the fleet owner delegates it (`posup repo delegate`)"
                ),
            ));
        };
        let found = self.repo.targets().signed.find_target(&name, false);
        let Ok(t) = found else {
            return Err(TrustError::refused(
                &role,
                format!(
                    "{what} is not signed ({target} is not among its targets): sign and publish it"
                ),
            ));
        };
        let signed_sha = hex::encode(t.hashes.sha256.as_ref() as &[u8]);
        if signed_sha != sha256 {
            return Err(TrustError::refused(
                &role,
                format!(
                    "{what}: the server offers sha256 {sha256}, but {role} signed {signed_sha}; nothing was installed"
                ),
            ));
        }
        let release = crate::offline::Release {
            version: t
                .custom
                .get("version")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned(),
            allow_downgrade: t
                .custom
                .get("allow_downgrade")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
        };
        Ok(SignedTarget {
            name: target.to_owned(),
            role,
            length: t.length,
            sha256: signed_sha,
            release,
        })
    }
}
