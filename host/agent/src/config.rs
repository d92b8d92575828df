//! The agent's configuration file (TOML).
//!
//! ```toml
//! server = "https://posup.example.net"     # the server's base URL
//! ca_file = "/etc/posup/ca.pem"            # optional: accept only this CA's servers
//! insecure_http = false                    # true accepts http:// (tests, demos)
//! root = "/etc/posup/root.json"            # the fleet's trusted TUF root, installed with the agent
//! enrollment_secret = "…"                  # from `POST /api/v1/enrollment-secrets`
//! state_dir = "/var/lib/posup"             # token, variables, journal, outbox, cache
//!
//! [device]                                 # who this terminal is
//! guid = "c0a8…"        # optional: a random one is made on first start and kept
//! site = "Store 12"
//! address = "Lenina 1"
//! name = "Kassa 3"
//! number = 3
//! device_type = "kiosk" # picks the [device_types.<name>] section below
//!
//! [poll]                                   # all optional
//! jitter = 0.1                   # ± this fraction of the server's interval
//! min_backoff_secs = 1           # first retry after a failed call…
//! max_backoff_secs = 300         # …doubling up to this
//! report_every_secs = 1          # a busy terminal's reports go together at most this often
//!
//! [cashier]                                # all optional
//! consent_timeout_secs = 300     # no answer in time: nobody is there, update
//! ask_again_secs = 900           # declined: ask again after this long
//!
//! [device_types.kiosk.dirs]                # a device configuration (see `device`)
//! product = "/opt/kiosk"
//! staging = "/opt/.posup/staging"          # same filesystem as product
//! backup = "/opt/.posup/backup"            # same filesystem as product
//! logs = "/var/log/kiosk"
//!
//! [device_types.kiosk.allow]
//! services = ["kiosk"]
//! prompt = true
//!
//! [device_types.kiosk.services.kiosk]
//! systemd = "iiko-kiosk.service"
//! ```
//!
//! The device configuration is the terminal's own word on where things are and the
//! ceiling of what a plugin may touch here. The server's configuration of the device
//! type fills directories the file leaves out, and what the operator allows is
//! intersected with the file's `allow`: a plugin gets only what its request, the
//! operator and the terminal all agree on. Staging and backup must be on the
//! product's filesystem so an update's directory exchange is atomic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::device::{ConfigError, DeviceConfig};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The server's base URL, e.g. `https://posup.example.net`.
    pub server: String,
    /// Accept a plain `http://` server: for tests and demos only. TLS keeps the
    /// device token and secret variables secret; signatures protect software.
    #[serde(default)]
    pub insecure_http: bool,
    /// PEM certificates of the authorities whose server certificates are
    /// accepted, instead of the public web roots (a fleet's own CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The fleet's trusted root: the `1.root.json` (or a later root) of its TUF
    /// repository, installed with the agent. Every plugin and package is checked
    /// against the metadata that chains to it before it is used.
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// Use plugins and packages without checking any signature: for tests of
    /// other things only. A terminal so configured installs whatever its server
    /// (or anyone between) hands it.
    #[serde(default)]
    pub insecure_unsigned: bool,
    /// The secret that lets this terminal enroll.
    pub enrollment_secret: String,
    /// Where the agent keeps its state; created when missing.
    pub state_dir: PathBuf,
    pub device: Identity,
    #[serde(default)]
    pub poll: PollConfig,
    #[serde(default)]
    pub cashier: CashierConfig,
    /// Device type name → where its product lives and what its plugin may touch.
    #[serde(default)]
    pub device_types: BTreeMap<String, DeviceConfig>,
}

/// Who the terminal is, as the store's own systems name it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// Stable unique identifier; generated and kept in the state directory when
    /// absent.
    #[serde(default)]
    pub guid: Option<String>,
    pub site: String,
    #[serde(default)]
    pub address: String,
    pub name: String,
    pub number: u32,
    pub device_type: String,
}

/// Timing of the poll loop.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PollConfig {
    /// Each wait is the server's interval times a random factor in
    /// `1 - jitter ..= 1 + jitter`, so a fleet restarted together spreads out.
    pub jitter: f64,
    pub min_backoff_secs: f64,
    pub max_backoff_secs: f64,
    /// Reports queued within this long of the last ones sent wait and go with
    /// them in one request: each request costs the server, and a terminal's
    /// steps often end moments apart. The first report after a quiet spell
    /// goes at once.
    pub report_every_secs: f64,
}

impl Default for PollConfig {
    fn default() -> Self {
        Self {
            jitter: 0.1,
            min_backoff_secs: 1.0,
            max_backoff_secs: 300.0,
            report_every_secs: crate::outbox::REPORT_EVERY.as_secs_f64(),
        }
    }
}

impl PollConfig {
    /// What is wrong with these settings, if anything.
    pub fn check(&self) -> Result<(), String> {
        if self.min_backoff_secs <= 0.0 || self.max_backoff_secs < self.min_backoff_secs {
            return Err("min_backoff_secs must be above 0 and at most max_backoff_secs".into());
        }
        if !(0.0..=60.0).contains(&self.report_every_secs) {
            return Err(format!(
                "report_every_secs = {}: give 0 to 60 seconds",
                self.report_every_secs
            ));
        }
        Ok(())
    }

    /// How often a busy terminal sends reports at most.
    pub fn report_every(&self) -> Duration {
        Duration::from_secs_f64(self.report_every_secs)
    }

    /// The wait before retry number `failures` (1 for the first): doubling from the
    /// minimum up to the maximum, jittered so failed agents do not retry in step.
    pub fn backoff(&self, failures: u32) -> Duration {
        let base = self.min_backoff_secs * 2f64.powi(failures.saturating_sub(1).min(30) as i32);
        jittered(base.min(self.max_backoff_secs), self.jitter)
    }

    /// The wait before the next poll when the server asked for `interval`.
    pub fn next_poll(&self, interval: Duration) -> Duration {
        jittered(interval.as_secs_f64(), self.jitter)
    }
}

/// `secs` times a random factor in `1 - jitter ..= 1 + jitter`.
pub fn jittered(secs: f64, jitter: f64) -> Duration {
    let jitter = jitter.clamp(0.0, 1.0);
    let factor = if jitter > 0.0 {
        rand::random_range(1.0 - jitter..=1.0 + jitter)
    } else {
        1.0
    };
    Duration::from_secs_f64((secs * factor).max(0.0))
}

/// How the agent deals with the person at the register.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CashierConfig {
    /// How long the consent question waits; no answer means nobody is at the
    /// register, and the update goes ahead (the UKM 5 rule).
    pub consent_timeout_secs: f64,
    /// After the cashier declined, ask again after this long.
    pub ask_again_secs: f64,
}

impl Default for CashierConfig {
    fn default() -> Self {
        Self {
            consent_timeout_secs: 300.0,
            ask_again_secs: 900.0,
        }
    }
}

impl CashierConfig {
    pub fn consent_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.consent_timeout_secs.max(0.0))
    }

    pub fn ask_again(&self) -> Duration {
        Duration::from_secs_f64(self.ask_again_secs.max(0.0))
    }
}

impl AgentConfig {
    /// How to reach the server.
    pub fn transport(&self) -> crate::client::Transport {
        crate::client::Transport {
            insecure_http: self.insecure_http,
            ca_file: self.ca_file.clone(),
        }
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: origin.to_owned(),
            message,
        };
        let config: AgentConfig = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if !(config.server.starts_with("http://") || config.server.starts_with("https://")) {
            return Err(invalid(format!(
                "server = {:?}: give the server's base URL, e.g. https://posup.example.net",
                config.server
            )));
        }
        if config.server.starts_with("http://") && !config.insecure_http {
            return Err(invalid(format!(
                "server = {:?}: plain HTTP would show the device token and secret variables to the network: \
                 give an https:// URL, or set `insecure_http = true` (tests and demos only)",
                config.server
            )));
        }
        match (&config.root, config.insecure_unsigned) {
            (None, false) => {
                return Err(invalid(
                    "root is not set: give the path of the fleet's trusted root.json (`posup repo init` writes 1.root.json), \
                     or set `insecure_unsigned = true` to install unsigned software (tests only)"
                        .into(),
                ));
            }
            (Some(_), true) => {
                return Err(invalid(
                    "both root and insecure_unsigned are set: a terminal with a trusted root checks every signature; remove insecure_unsigned".into(),
                ));
            }
            _ => {}
        }
        if !config.state_dir.is_absolute() {
            return Err(invalid(format!(
                "state_dir = {}: must be an absolute path",
                config.state_dir.display()
            )));
        }
        config
            .poll
            .check()
            .map_err(|e| invalid(format!("poll: {e}")))?;
        // Each device configuration is checked as `posup apply` checks one.
        for (name, device) in &config.device_types {
            device.validate(&format!("{origin} [device_types.{name}]"))?;
        }
        if !config.device_types.contains_key(&config.device.device_type) {
            return Err(invalid(format!(
                "device.device_type = {:?} has no [device_types.{}] section saying where its product is",
                config.device.device_type, config.device.device_type
            )));
        }
        Ok(config)
    }

    /// The device configuration of this terminal's device type.
    pub fn device_config(&self) -> &DeviceConfig {
        &self.device_types[&self.device.device_type]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example at the top of this module, which must stay valid.
    fn example() -> String {
        let source = include_str!("config.rs");
        let start =
            source.find("//! ```toml\n").expect("the example starts") + "//! ```toml\n".len();
        let end = start + source[start..].find("//! ```\n").expect("the example ends");
        source[start..end]
            .lines()
            .map(|l| {
                l.strip_prefix("//!")
                    .unwrap_or(l)
                    .strip_prefix(' ')
                    .unwrap_or("")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn the_documented_example_is_a_valid_configuration() {
        let c = AgentConfig::parse(&example(), "example").unwrap();
        assert_eq!(c.device.device_type, "kiosk");
        assert_eq!(c.device.number, 3);
        assert_eq!(
            c.device_config().dir("product"),
            Some(Path::new("/opt/kiosk"))
        );
        assert_eq!(c.cashier.ask_again(), Duration::from_secs(900));
        assert!(c.device_config().allowance().prompt);
    }

    #[test]
    fn mistakes_name_what_to_fix() {
        let text = example().replace("device_type = \"kiosk\"", "device_type = \"ukm5\"");
        let err = AgentConfig::parse(&text, "agent.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("[device_types.ukm5]"), "{err}");
        let text = example().replace("state_dir = \"/var/lib/posup\"", "state_dir = \"posup\"");
        let err = AgentConfig::parse(&text, "agent.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("absolute"), "{err}");
        let text = example().replace("product = \"/opt/kiosk\"", "product = \"opt/kiosk\"");
        let err = AgentConfig::parse(&text, "agent.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("dirs.product"), "{err}");
    }

    #[test]
    fn plain_http_needs_saying_so() {
        let text = example().replace("https://posup.example.net", "http://10.0.0.1:8080");
        let err = AgentConfig::parse(&text, "agent.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("http://10.0.0.1:8080") && err.contains("insecure_http = true"),
            "{err}"
        );
        let text = text.replace("insecure_http = false", "insecure_http = true");
        let c = AgentConfig::parse(&text, "agent.toml").unwrap();
        assert!(c.transport().insecure_http);
        assert_eq!(
            AgentConfig::parse(&example(), "example")
                .unwrap()
                .transport()
                .ca_file
                .as_deref(),
            Some(Path::new("/etc/posup/ca.pem"))
        );
    }

    #[test]
    fn unsigned_software_needs_saying_so() {
        let c = AgentConfig::parse(&example(), "example").unwrap();
        assert_eq!(c.root.as_deref(), Some(Path::new("/etc/posup/root.json")));
        let text = example().replace("root = \"/etc/posup/root.json\"", "");
        let err = AgentConfig::parse(&text, "agent.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("root is not set") && err.contains("insecure_unsigned = true"),
            "{err}"
        );
        let unsigned = format!("insecure_unsigned = true\n{text}");
        assert!(
            AgentConfig::parse(&unsigned, "agent.toml")
                .unwrap()
                .insecure_unsigned
        );
        let both = format!("insecure_unsigned = true\n{}", example());
        let err = AgentConfig::parse(&both, "agent.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("both root and insecure_unsigned"), "{err}");
    }

    #[test]
    fn reports_go_together_at_most_a_minute_apart() {
        let c = AgentConfig::parse(&example(), "example").unwrap();
        assert_eq!(c.poll.report_every(), Duration::from_secs(1));
        let text = example().replace("report_every_secs = 1 ", "report_every_secs = 600 ");
        let err = AgentConfig::parse(&text, "agent.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("report_every_secs = 600") && err.contains("0 to 60"),
            "{err}"
        );
    }

    #[test]
    fn backoff_doubles_up_to_its_ceiling_and_polls_are_jittered() {
        let p = PollConfig {
            jitter: 0.0,
            min_backoff_secs: 1.0,
            max_backoff_secs: 8.0,
            ..PollConfig::default()
        };
        let secs: Vec<u64> = (1..=6).map(|n| p.backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 8, 8]);
        let p = PollConfig { jitter: 0.1, ..p };
        for _ in 0..100 {
            let w = p.next_poll(Duration::from_secs(10)).as_secs_f64();
            assert!((9.0..=11.0).contains(&w), "{w}");
        }
    }
}
