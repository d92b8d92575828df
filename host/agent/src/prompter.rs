//! Questions to the cashier through files in the agent's state directory.
//!
//! The agent does not draw on the register's screen; the register's own software
//! (or a small helper beside it) does, and talks to the agent through two files in
//! `<state>/prompt/`:
//!
//! - `question.json`, written by the agent when it asks:
//!   `{"id": "…", "question": "…", "timeout_secs": 300, "asked_at": "<RFC 3339>"}`.
//!   It is removed when the question is answered or its time is up.
//! - `answer`, written by the register: `yes` or `no`, optionally followed by the
//!   question's id (`yes 4f2a…`); an answer naming another id is ignored. Write it
//!   atomically (to a temporary name, then rename) or at least in one `write`.
//!
//! Messages that need no answer are appended to `messages.log`, one line each.
//! No answer within the timeout counts as nobody being at the register.
//!
//! From a shell: `cat /var/lib/posup/prompt/question.json`, then
//! `echo yes > /var/lib/posup/prompt/answer`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use posup_runtime::caps::prompt::{BoxFuture, Prompter};
use serde::{Deserialize, Serialize};

/// How often the answer file is looked for.
const POLL: Duration = Duration::from_millis(100);

/// The question file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Question {
    pub id: String,
    pub question: String,
    pub timeout_secs: u64,
    pub asked_at: chrono::DateTime<chrono::Utc>,
}

/// `messages.log` is rotated to `messages.log.1` beyond this size.
pub const MAX_MESSAGES_LOG: u64 = 64 << 10;

/// A [`Prompter`] that asks through `<dir>/question.json` and `<dir>/answer`.
#[derive(Debug, Clone)]
pub struct FilePrompter {
    dir: PathBuf,
    /// One question at a time, as there is one cashier.
    lock: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl FilePrompter {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            lock: std::sync::Arc::default(),
        }
    }

    pub fn question_path(dir: &Path) -> PathBuf {
        dir.join("question.json")
    }

    pub fn answer_path(dir: &Path) -> PathBuf {
        dir.join("answer")
    }

    /// The question waiting in `dir`, if any: for the register's side.
    pub fn pending(dir: &Path) -> Option<Question> {
        let bytes = std::fs::read(Self::question_path(dir)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Answers the question `id` waiting in `dir`: for the register's side.
    pub fn answer(dir: &Path, id: &str, yes: bool) -> std::io::Result<()> {
        let tmp = dir.join(".answer.tmp");
        std::fs::write(&tmp, format!("{} {id}\n", if yes { "yes" } else { "no" }))?;
        std::fs::rename(&tmp, Self::answer_path(dir))
    }

    async fn ask_now(&self, question: &str, timeout: Duration) -> Option<bool> {
        let _one = self.lock.lock().await;
        let id = format!("{:016x}", rand::random::<u64>());
        let q = Question {
            id: id.clone(),
            question: question.to_owned(),
            timeout_secs: timeout.as_secs(),
            asked_at: chrono::Utc::now(),
        };
        if let Err(e) = self.write_question(&q) {
            // Nobody can see the question: as if nobody were at the register.
            tracing::warn!("cannot put the question in {}: {e}", self.dir.display());
            return None;
        }
        let deadline = Instant::now() + timeout;
        let answer = loop {
            if let Some(a) = self.read_answer(&id) {
                break Some(a);
            }
            if Instant::now() >= deadline {
                break None;
            }
            tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
        };
        let _ = std::fs::remove_file(Self::question_path(&self.dir));
        let _ = std::fs::remove_file(Self::answer_path(&self.dir));
        answer
    }

    fn write_question(&self, q: &Question) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        // An answer left from an earlier question must not answer this one.
        match std::fs::remove_file(Self::answer_path(&self.dir)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let tmp = self.dir.join(".question.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(q).expect("a question serialises"),
        )?;
        std::fs::rename(&tmp, Self::question_path(&self.dir))
    }

    fn read_answer(&self, id: &str) -> Option<bool> {
        let text = std::fs::read_to_string(Self::answer_path(&self.dir)).ok()?;
        let mut words = text.split_whitespace();
        let answer = match words.next()?.to_ascii_lowercase().as_str() {
            "yes" | "y" => true,
            "no" | "n" => false,
            _ => return None,
        };
        match words.next() {
            Some(other) if other != id => None,
            _ => Some(answer),
        }
    }
}

impl Prompter for FilePrompter {
    fn ask<'a>(&'a self, question: &'a str, timeout: Duration) -> BoxFuture<'a, Option<bool>> {
        Box::pin(self.ask_now(question, timeout))
    }

    fn notify(&self, message: &str) {
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&self.dir)?;
            let log = self.dir.join("messages.log");
            // Rotated at a bound: the register shows recent messages, and a plugin
            // cannot fill the disk through them.
            if std::fs::symlink_metadata(&log).is_ok_and(|m| m.len() > MAX_MESSAGES_LOG) {
                std::fs::rename(&log, self.dir.join("messages.log.1"))?;
            }
            // The cashier's interface may write in this folder: never follow a link.
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&log)?;
            writeln!(
                f,
                "{} {}",
                chrono::Utc::now().to_rfc3339(),
                message.replace('\n', " ")
            )
        };
        if let Err(e) = write() {
            tracing::warn!("cannot show a message in {}: {e}", self.dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_register_answers_through_the_answer_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("prompt");
        let p = FilePrompter::new(&dir);
        let cashier = {
            let dir = dir.clone();
            tokio::spawn(async move {
                loop {
                    if let Some(q) = FilePrompter::pending(&dir) {
                        FilePrompter::answer(&dir, &q.id, false).unwrap();
                        return q;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        let answer = p.ask("Update now?", Duration::from_secs(30)).await;
        assert_eq!(answer, Some(false));
        assert_eq!(cashier.await.unwrap().question, "Update now?");
        assert!(
            FilePrompter::pending(&dir).is_none(),
            "the question is taken down"
        );
    }

    #[tokio::test]
    async fn no_answer_in_time_is_nobody_at_the_register_and_stale_answers_do_not_count() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("prompt");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(FilePrompter::answer_path(&dir), "yes\n").unwrap();
        let p = FilePrompter::new(&dir);
        assert_eq!(p.ask("Update now?", Duration::from_millis(300)).await, None);
        p.notify("The program was updated");
        let log = std::fs::read_to_string(dir.join("messages.log")).unwrap();
        assert!(log.contains("The program was updated"));
    }

    #[test]
    fn the_message_log_is_rotated_at_its_bound_and_never_follows_a_link() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("prompt");
        let p = FilePrompter::new(&dir);
        for i in 0..2_000 {
            p.notify(&format!("message {i} {}", "x".repeat(100)));
        }
        let size = |n: &str| std::fs::metadata(dir.join(n)).map(|m| m.len()).unwrap_or(0);
        assert!(size("messages.log") <= MAX_MESSAGES_LOG + 200);
        assert!(size("messages.log.1") <= MAX_MESSAGES_LOG + 200);
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::fs::remove_file(dir.join("messages.log")).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("messages.log")).unwrap();
        p.notify("through the link");
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    }
}
