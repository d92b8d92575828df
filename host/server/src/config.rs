//! `posup server` settings: command-line flags, environment variables (`POSUP_…`), a
//! TOML file, and defaults — in that order of precedence.
//!
//! Defaults: listen on `127.0.0.1:8080`; data directory `./posup-data` holding the
//! SQLite database `posup.db`, the blob folder `blobs/` and the compiled-plugin
//! cache `plugin-cache/`; poll interval 60 s; devices offline after three poll
//! intervals without contact.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

/// Flags of `posup server`. Each may also come from the environment variable named
/// in its help, or from the configuration file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerArgs {
    /// TOML configuration file.
    #[arg(long, env = "POSUP_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "POSUP_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory of the SQLite database, blobs and caches, created on first start
    /// [default: ./posup-data].
    #[arg(long, env = "POSUP_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL: `sqlite://<file>` or `postgres://user:password@host/db`
    /// [default: SQLite in the data directory].
    #[arg(long, env = "POSUP_DATABASE", hide_env_values = true)]
    pub database: Option<String>,
    /// Blob folder; share it between replicas [default: <data dir>/blobs].
    #[arg(long, env = "POSUP_BLOB_DIR")]
    pub blob_dir: Option<PathBuf>,
    /// An administrator token to accept (stored hashed). Without it and without any
    /// admin token, one is generated on first start and written to
    /// `<data dir>/admin-token`.
    #[arg(long, env = "POSUP_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// The password of the console's first account, `admin`, created when the
    /// server has no account. Without it one is generated and written to
    /// `<data dir>/admin-password`.
    #[arg(long, env = "POSUP_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// An enrollment secret to accept. Without it and without any secret, one is
    /// generated on first start and written to `<data dir>/enrollment-secret`.
    #[arg(long, env = "POSUP_ENROLLMENT_SECRET", hide_env_values = true)]
    pub enrollment_secret: Option<String>,
    /// Poll interval of device types that set none, in seconds [default: 60].
    #[arg(long, env = "POSUP_POLL_INTERVAL")]
    pub poll_interval_secs: Option<u32>,
    /// Seconds without contact after which a device is offline [default: three
    /// poll intervals].
    #[arg(long, env = "POSUP_OFFLINE_AFTER")]
    pub offline_after_secs: Option<u32>,
    /// Largest package upload, in MiB [default: 4096].
    #[arg(long, env = "POSUP_MAX_PACKAGE_MB")]
    pub max_package_mb: Option<u64>,
    /// Database connections: the PostgreSQL pool [default: 16], or SQLite's
    /// readers [default: twice the cores, 2 to 16].
    #[arg(long, env = "POSUP_DB_CONNECTIONS")]
    pub db_connections: Option<u32>,
    /// Serve HTTPS with this certificate chain (PEM; with --tls-key). Without it,
    /// plain HTTP, for a TLS proxy in front or for tests.
    #[arg(long, env = "POSUP_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "POSUP_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Folder of the repository's online keys (`snapshot.key`, `timestamp.key`),
    /// made on first start; replicas sharing a database share it
    /// [default: <data dir>/tuf-keys].
    #[arg(long, env = "POSUP_TUF_KEYS")]
    pub tuf_keys: Option<PathBuf>,
}

/// The configuration file. Every key is optional; names match the flags.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub database: Option<String>,
    pub blob_dir: Option<PathBuf>,
    pub admin_token: Option<String>,
    pub admin_password: Option<String>,
    pub enrollment_secret: Option<String>,
    pub poll_interval_secs: Option<u32>,
    pub offline_after_secs: Option<u32>,
    pub max_package_mb: Option<u64>,
    pub db_connections: Option<u32>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tuf_keys: Option<PathBuf>,
    /// Milliseconds contact times are collected before being written together.
    pub contact_flush_ms: Option<u64>,
}

/// Everything `run` needs, resolved.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// `None`: SQLite at `<data_dir>/posup.db`.
    pub database: Option<String>,
    pub blob_dir: PathBuf,
    pub admin_token: Option<String>,
    /// The first console account's password (see [`ServerArgs::admin_password`]).
    pub admin_password: Option<String>,
    /// The plugins built into the running binary, offered by the console.
    pub bundled: crate::state::Bundled,
    pub enrollment_secret: Option<String>,
    pub poll_interval_secs: u32,
    pub offline_after: Duration,
    pub max_package_bytes: u64,
    pub db_connections: u32,
    /// `None` writes each contact at once.
    pub contact_flush: Option<Duration>,
    /// Serve HTTPS; `None` serves plain HTTP.
    pub tls: Option<TlsFiles>,
    /// The online keys' folder.
    pub tuf_keys_dir: PathBuf,
}

/// The PEM files of the server's certificate chain and private key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ServerConfig {
    /// The defaults, with data under `data_dir`.
    pub fn new(data_dir: &Path) -> ServerConfig {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: data_dir.to_owned(),
            database: None,
            blob_dir: data_dir.join("blobs"),
            admin_token: None,
            admin_password: None,
            bundled: Default::default(),
            enrollment_secret: None,
            poll_interval_secs: 60,
            offline_after: Duration::from_secs(180),
            max_package_bytes: 4096 << 20,
            db_connections: sqlite_readers(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            ),
            contact_flush: Some(Duration::from_secs(1)),
            tls: None,
            tuf_keys_dir: data_dir.join("tuf-keys"),
        }
    }

    /// The database URL to open.
    pub fn database_url(&self) -> String {
        self.database
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("posup.db").display()))
    }
}

/// The PostgreSQL pool's connections by default: statements wait on the
/// network, so more are under way than the server has cores.
const POSTGRES_CONNECTIONS: u32 = 16;

/// SQLite's readers by default for `cores` cores: twice the cores, 2 to 16.
/// SQLite reads on this process's own cores; a reader more is one more thread
/// each statement is handed to and back, and one more page cache that every
/// commit empties (WAL), with nothing to run it on.
fn sqlite_readers(cores: usize) -> u32 {
    cores.saturating_mul(2).clamp(2, 16) as u32
}

impl ServerArgs {
    /// Resolves flags and environment (already merged by clap) over the
    /// configuration file over the defaults.
    pub fn resolve(&self) -> anyhow::Result<ServerConfig> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!("reading the configuration file {}", path.display())
                })?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("parsing the configuration file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let data_dir = self
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("posup-data"));
        let mut c = ServerConfig::new(&data_dir);
        if let Some(v) = self.listen.or(file.listen) {
            c.listen = v;
        }
        c.database = self.database.clone().or(file.database);
        if let Some(v) = self.blob_dir.clone().or(file.blob_dir) {
            c.blob_dir = v;
        }
        if let Some(v) = self.tuf_keys.clone().or(file.tuf_keys) {
            c.tuf_keys_dir = v;
        }
        c.admin_token = self.admin_token.clone().or(file.admin_token);
        c.admin_password = self.admin_password.clone().or(file.admin_password);
        c.enrollment_secret = self.enrollment_secret.clone().or(file.enrollment_secret);
        if let Some(v) = self.poll_interval_secs.or(file.poll_interval_secs) {
            anyhow::ensure!(
                (5..=86_400).contains(&v),
                "poll interval {v} s is out of range: use 5 to 86400"
            );
            c.poll_interval_secs = v;
        }
        c.offline_after = Duration::from_secs(u64::from(
            self.offline_after_secs
                .or(file.offline_after_secs)
                .unwrap_or(c.poll_interval_secs * 3),
        ));
        anyhow::ensure!(
            c.offline_after.as_secs() >= u64::from(c.poll_interval_secs) * 2,
            "offline_after_secs ({}) must be at least two poll intervals ({} s)",
            c.offline_after.as_secs(),
            c.poll_interval_secs * 2
        );
        if let Some(v) = self.max_package_mb.or(file.max_package_mb) {
            c.max_package_bytes = v << 20;
        }
        c.db_connections = match self.db_connections.or(file.db_connections) {
            Some(v) => v.max(1),
            None if c
                .database
                .as_deref()
                .is_some_and(posup_store::is_postgres_url) =>
            {
                POSTGRES_CONNECTIONS
            }
            None => c.db_connections,
        };
        c.tls = match (
            self.tls_cert.clone().or(file.tls_cert),
            self.tls_key.clone().or(file.tls_key),
        ) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => {
                anyhow::bail!("--tls-cert needs --tls-key: give the certificate's private key")
            }
            (None, Some(_)) => {
                anyhow::bail!("--tls-key needs --tls-cert: give the certificate chain")
            }
        };
        if let Some(ms) = file.contact_flush_ms {
            c.contact_flush = (ms > 0).then(|| Duration::from_millis(ms));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("server.toml");
        std::fs::write(
            &file,
            "listen = \"0.0.0.0:9000\"\npoll_interval_secs = 30\ndatabase = \"postgres://u:p@db/posup\"\n",
        )
        .unwrap();
        let args = ServerArgs {
            config: Some(file.clone()),
            listen: Some("127.0.0.1:7000".parse().unwrap()),
            data_dir: Some(dir.path().join("data")),
            ..Default::default()
        };
        let c = args.resolve().unwrap();
        assert_eq!(c.listen, "127.0.0.1:7000".parse::<SocketAddr>().unwrap());
        assert_eq!(c.poll_interval_secs, 30);
        assert_eq!(c.offline_after, Duration::from_secs(90));
        assert_eq!(c.database_url(), "postgres://u:p@db/posup");
        assert_eq!(c.blob_dir, dir.path().join("data").join("blobs"));
        assert_eq!(c.db_connections, 16, "PostgreSQL's pool");

        std::fs::write(&file, "listn = \"x\"\n").unwrap();
        let err = ServerArgs {
            config: Some(file),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("unknown field `listn`"),
            "{err:#}"
        );
    }

    #[test]
    fn sqlite_gets_twice_the_cores_in_readers_and_a_setting_wins() {
        assert_eq!(
            [1, 2, 3, 8, 64].map(sqlite_readers),
            [2, 4, 6, 16, 16],
            "readers for 1, 2, 3, 8 and 64 cores"
        );
        let dir = tempfile::tempdir().unwrap();
        let sqlite = |db_connections| ServerArgs {
            data_dir: Some(dir.path().to_owned()),
            db_connections,
            ..Default::default()
        };
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(
            sqlite(None).resolve().unwrap().db_connections,
            sqlite_readers(cores)
        );
        assert_eq!(sqlite(Some(7)).resolve().unwrap().db_connections, 7);
        let postgres = ServerArgs {
            database: Some("postgresql://db/posup".into()),
            db_connections: Some(3),
            ..Default::default()
        };
        assert_eq!(postgres.resolve().unwrap().db_connections, 3);
    }
}
