//! The update journal: every step transition is written to disk before the step
//! acts, so an agent killed at any point knows on restart what was under way.
//!
//! One journal file per plugin (`<state>/journal/<plugin>.json`): a terminal runs
//! one update of a product at a time. The file is replaced atomically (write, sync,
//! rename, sync the folder), so after a power loss it holds the last transition
//! written, never a torn one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use posup_proto::{Phase, TaskKind};
use serde::{Deserialize, Serialize};

/// Which update a journal belongs to: the same plugin build, the same package bytes
/// and the same kind of task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateKey {
    pub plugin_sha256: String,
    pub package_sha256: String,
    pub package: String,
    pub task: TaskKind,
}

/// What happened to a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Event {
    /// Written before the step is called.
    Started,
    Ok,
    NotNow,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub step: Phase,
    pub event: Event,
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Milliseconds since the Unix epoch.
    pub at: u64,
}

/// How an update ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Finish {
    Committed,
    Staged,
    NotNow,
    Declined,
    RolledBack,
    /// Failed before anything was changed; nothing to roll back.
    Failed,
    RollbackFailed,
    /// A newer update replaced this one before it reached `apply`.
    Abandoned,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub key: UpdateKey,
    pub version: String,
    pub entries: Vec<Entry>,
    pub finished: Option<Finish>,
}

/// The journal of one plugin's current update.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    pub record: Record,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Journal {
    /// The path of `plugin`'s journal under the state directory.
    pub fn path(state_dir: &Path, plugin: &str) -> PathBuf {
        state_dir.join("journal").join(format!("{plugin}.json"))
    }

    /// Reads the journal at `path`, if there is one.
    pub fn load(path: &Path) -> std::io::Result<Option<Journal>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let record = serde_json::from_slice(&bytes).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "update journal {} is unreadable ({e}); inspect the product by hand, then remove the file",
                    path.display()
                ),
            )
        })?;
        Ok(Some(Journal {
            path: path.to_owned(),
            record,
        }))
    }

    /// Starts a new journal at `path`, replacing a finished one.
    pub fn create(path: &Path, key: UpdateKey, version: &str) -> std::io::Result<Journal> {
        let journal = Journal {
            path: path.to_owned(),
            record: Record {
                key,
                version: version.to_owned(),
                entries: Vec::new(),
                finished: None,
            },
        };
        journal.save()?;
        Ok(journal)
    }

    /// Appends a transition and writes the journal before returning.
    pub fn push(
        &mut self,
        step: Phase,
        event: Event,
        attempt: u32,
        message: &str,
    ) -> std::io::Result<()> {
        self.record.entries.push(Entry {
            step,
            event,
            attempt,
            message: message.to_owned(),
            at: now_ms(),
        });
        self.save()
    }

    pub fn finish(&mut self, finish: Finish) -> std::io::Result<()> {
        self.record.finished = Some(finish);
        self.save()
    }

    /// How many times `step` was started.
    pub fn attempts(&self, step: Phase) -> u32 {
        self.record
            .entries
            .iter()
            .filter(|e| e.step == step && e.event == Event::Started)
            .count() as u32
    }

    /// The last event recorded for `step`.
    pub fn last(&self, step: Phase) -> Option<&Entry> {
        self.record.entries.iter().rev().find(|e| e.step == step)
    }

    /// The step that was started and never ended: the one a crash interrupted.
    pub fn interrupted(&self) -> Option<&Entry> {
        self.record
            .entries
            .last()
            .filter(|e| e.event == Event::Started)
    }

    fn save(&self) -> std::io::Result<()> {
        let dir = self.path.parent().expect("journal path has a folder");
        std::fs::create_dir_all(dir)?;
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(&self.record).expect("journal serialises"))?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        std::fs::File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> UpdateKey {
        UpdateKey {
            plugin_sha256: "p".into(),
            package_sha256: "k".into(),
            package: "kiosk_7.5.0.tgz".into(),
            task: TaskKind::Update,
        }
    }

    #[test]
    fn every_transition_is_on_disk_before_push_returns() {
        let tmp = tempfile::tempdir().unwrap();
        let path = Journal::path(tmp.path(), "kiosk");
        let mut j = Journal::create(&path, key(), "7.5.0").unwrap();
        j.push(Phase::Apply, Event::Started, 1, "").unwrap();
        let read = Journal::load(&path).unwrap().unwrap();
        assert_eq!(read.interrupted().map(|e| e.step), Some(Phase::Apply));
        assert_eq!(read.attempts(Phase::Apply), 1);
        j.push(Phase::Apply, Event::Ok, 1, "").unwrap();
        j.finish(Finish::Committed).unwrap();
        let read = Journal::load(&path).unwrap().unwrap();
        assert!(read.interrupted().is_none());
        assert_eq!(read.record.finished, Some(Finish::Committed));
        assert!(!path.with_extension("json.tmp").exists());
    }

    #[test]
    fn a_damaged_journal_is_an_error_that_names_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = Journal::path(tmp.path(), "kiosk");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"{not json").unwrap();
        let err = Journal::load(&path).unwrap_err();
        assert!(err.to_string().contains("kiosk.json"), "{err}");
    }
}
