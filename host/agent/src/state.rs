//! What the agent keeps between runs: its identity with the server, the
//! variables, the device type's configuration, and what it did with each action.
//!
//! One JSON file, `<state>/agent.json`, readable only by its owner (it holds the
//! device token), replaced atomically on every change.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use posup_proto::agent::{DeviceConfig, VariableChange};
use serde::{Deserialize, Serialize};

/// What happened to one action on this terminal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum ActionRecord {
    /// Finished here (committed, staged, failed or rolled back) in this attempt; the
    /// server hears of it through the outbox. It is not run again unless the task
    /// is restarted (a higher attempt).
    Done { attempt: u32, result: String },
    /// Not now (busy product, the cashier declined): try again at `retry_at`
    /// (Unix milliseconds).
    Waiting {
        attempt: u32,
        retry_at: i64,
        reason: String,
    },
}

impl ActionRecord {
    pub fn attempt(&self) -> u32 {
        match self {
            ActionRecord::Done { attempt, .. } | ActionRecord::Waiting { attempt, .. } => *attempt,
        }
    }
}

/// The persistent state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// This terminal's GUID when the configuration gives none.
    #[serde(default)]
    pub guid: Option<String>,
    #[serde(default)]
    pub device_id: Option<i64>,
    #[serde(default)]
    pub token: Option<String>,
    /// The server's variables for this device, as of change `vars_since`.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    #[serde(default)]
    pub vars_since: i64,
    /// The device type's configuration as the server last sent it.
    #[serde(default)]
    pub config: Option<DeviceConfig>,
    /// Action id → what happened to it here.
    #[serde(default)]
    pub actions: BTreeMap<i64, ActionRecord>,
}

impl State {
    /// Applies variable changes up to change `last_id`.
    pub fn apply_vars(&mut self, changes: &[VariableChange], last_id: i64) -> bool {
        let mut changed = false;
        for c in changes {
            changed |= match &c.value {
                Some(v) => self.vars.insert(c.name.clone(), v.clone()).as_ref() != Some(v),
                None => self.vars.remove(&c.name).is_some(),
            };
        }
        if last_id != self.vars_since {
            self.vars_since = last_id;
            changed = true;
        }
        changed
    }
}

/// The state file.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join("agent.json"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn load(&self) -> std::io::Result<State> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "agent state {} is unreadable ({e}); remove it to enroll the terminal afresh",
                        self.path.display()
                    ),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(e),
        }
    }

    pub fn save(&self, state: &State) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = self.path.parent().expect("the state file is in a folder");
        std::fs::create_dir_all(dir)?;
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(state).expect("the agent state serialises"))?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_follow_their_changes_and_survive_a_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let file = StateFile::new(tmp.path());
        let mut s = file.load().unwrap();
        assert!(s.apply_vars(
            &[
                VariableChange {
                    name: "version".into(),
                    value: Some("7.5.0".into())
                },
                VariableChange {
                    name: "update".into(),
                    value: Some("Y".into())
                },
            ],
            4,
        ));
        assert!(s.apply_vars(
            &[VariableChange {
                name: "update".into(),
                value: None
            }],
            5
        ));
        assert!(!s.apply_vars(&[], 5));
        file.save(&s).unwrap();
        let again = file.load().unwrap();
        assert_eq!(again.vars_since, 5);
        assert_eq!(again.vars.get("version").map(String::as_str), Some("7.5.0"));
        assert!(!again.vars.contains_key("update"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(file.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the token is not readable by others");
    }
}
