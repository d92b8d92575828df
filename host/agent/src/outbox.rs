//! The feedback outbox: every report is written to disk before it is sent and
//! deleted only when the server acknowledged it.
//!
//! Each report gets its idempotency key when it is queued, and keeps it through
//! every retry and agent restart, so the server records it once however often it
//! arrives: nothing is reported twice, and nothing is lost. Reports are sent in the
//! order they were made, since a device's state on the server follows them in turn.
//!
//! On disk: `<state>/outbox/<seq>-<random>.json`, one report per file, written
//! atomically. The file's name is the report's key: the sequence number orders the
//! backlog, the random part keeps keys unique after the backlog empties and the
//! sequence starts again.
//!
//! A terminal's steps often end within moments of each other (a quick precheck,
//! a verify, the commit), and each report sent alone costs the server a request
//! and a transaction. So a report goes at once only after a quiet spell: what
//! is queued within an interval ([`Outbox::sending_every`], a second unless
//! configured) of the last send's answer waits until then and goes with the
//! others in one batch ([`Outbox::send_when_due`]). A busy terminal makes at
//! most one report request that often, fewer when the server is slow to
//! answer; nothing waits on disk longer.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::Utc;
use posup_proto::Phase;
use posup_proto::agent::{
    Feedback, FeedbackAck, FeedbackBatch, FeedbackResult, FeedbackState, MAX_FEEDBACK_BATCH,
};
use tokio::sync::Notify;
use tokio::time::{Duration, Instant};

use crate::client::{Client, ClientError};

/// A report before it is queued: the outbox adds its key and time.
#[derive(Debug, Clone)]
pub struct Report {
    pub task_id: i64,
    pub action_id: i64,
    pub attempt: u32,
    pub step: Phase,
    pub state: FeedbackState,
    pub message: Option<String>,
    pub percent: Option<u8>,
    /// With `not-now`: when the terminal tries again.
    pub retry_after: Option<std::time::Duration>,
}

/// Reports waiting for the server's acknowledgement.
#[derive(Debug)]
pub struct Outbox {
    /// `None`: kept in memory only (simulated agents).
    dir: Option<PathBuf>,
    queue: Mutex<Queue>,
    /// Woken when a report is queued.
    pub queued: Notify,
    every: Duration,
}

/// How often a busy terminal sends reports at most, unless configured.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Queue {
    next_seq: u64,
    entries: BTreeMap<u64, Feedback>,
    /// Actions the server said are no longer wanted (paused, deleted, restarted).
    inactive: BTreeSet<i64>,
    /// When the last request with reports was answered (or failed).
    last_sent: Option<Instant>,
}

/// How long reports queued `now` wait before they are sent: not at all when no
/// send was answered in the last `every`, else the rest of it.
fn wait_before_sending(last_sent: Option<Instant>, now: Instant, every: Duration) -> Duration {
    last_sent.map_or(Duration::ZERO, |t| {
        (t + every).saturating_duration_since(now)
    })
}

/// What one [`Outbox::flush`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    pub sent: usize,
    /// Requests it took.
    pub calls: usize,
    /// Reports the server refused for good (their action is gone): dropped.
    pub dropped: usize,
}

impl Outbox {
    /// Opens the outbox in `dir`, with the reports a previous run left unsent.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut entries = BTreeMap::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.ends_with(".tmp") {
                // A write that never completed: its report was never queued.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(seq) = name.split('-').next().and_then(|s| s.parse::<u64>().ok()) else {
                continue;
            };
            let bytes = std::fs::read(&path)?;
            match serde_json::from_slice::<Feedback>(&bytes) {
                Ok(f) => {
                    entries.insert(seq, f);
                }
                Err(e) => {
                    tracing::warn!("dropping unreadable outbox entry {}: {e}", path.display());
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let next_seq = entries.keys().next_back().map_or(1, |s| s + 1);
        Ok(Self {
            dir: Some(dir.to_owned()),
            queue: Mutex::new(Queue {
                next_seq,
                entries,
                ..Queue::default()
            }),
            queued: Notify::new(),
            every: REPORT_EVERY,
        })
    }

    /// An outbox that keeps reports in memory only.
    pub fn memory() -> Self {
        Self {
            dir: None,
            queue: Mutex::new(Queue {
                next_seq: 1,
                ..Queue::default()
            }),
            queued: Notify::new(),
            every: REPORT_EVERY,
        }
    }

    /// The same outbox sending reports at most every `every` while busy.
    pub fn sending_every(mut self, every: Duration) -> Self {
        self.every = every;
        self
    }

    /// How long what is queued now waits before it is sent (see the module).
    pub fn due_in(&self) -> Duration {
        let q = self.queue.lock().expect("outbox lock");
        wait_before_sending(q.last_sent, Instant::now(), self.every)
    }

    /// Waits until queued reports are due, then sends them ([`Outbox::flush`]):
    /// a burst of reports goes in one request.
    pub async fn send_when_due(&self, client: &Client) -> Result<Flushed, ClientError> {
        tokio::time::sleep(self.due_in()).await;
        self.flush(client).await
    }

    /// Queues a report of device `device_id`; it is on disk when this returns.
    pub fn push(&self, device_id: i64, report: Report) -> std::io::Result<()> {
        let mut q = self.queue.lock().expect("outbox lock");
        let seq = q.next_seq;
        let key = format!("{seq:012}-{:016x}", rand::random::<u64>());
        let feedback = Feedback {
            key: key.clone(),
            task_id: report.task_id,
            action_id: report.action_id,
            device_id,
            attempt: report.attempt,
            step: report.step,
            state: report.state,
            message: report.message,
            percent: report.percent,
            at: Utc::now(),
            retry_after_secs: report.retry_after.map(|d| d.as_secs()),
        };
        if let Some(dir) = &self.dir {
            let file = dir.join(format!("{key}.json"));
            let tmp = dir.join(format!("{key}.tmp"));
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(&feedback).expect("feedback serialises"))?;
            f.sync_all()?;
            std::fs::rename(&tmp, &file)?;
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        q.next_seq += 1;
        q.entries.insert(seq, feedback);
        drop(q);
        self.queued.notify_one();
        Ok(())
    }

    /// Reports not yet acknowledged.
    pub fn len(&self) -> usize {
        self.queue.lock().expect("outbox lock").entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the server said `action_id` is no longer wanted.
    pub fn is_inactive(&self, action_id: i64) -> bool {
        self.queue
            .lock()
            .expect("outbox lock")
            .inactive
            .contains(&action_id)
    }

    /// Marks `action_id` as no longer wanted: it left the server's list.
    pub fn deactivate(&self, action_id: i64) {
        self.queue
            .lock()
            .expect("outbox lock")
            .inactive
            .insert(action_id);
    }

    /// Forgets that `action_id` was inactive: it came back (resumed, restarted).
    pub fn reactivate(&self, action_id: i64) {
        self.queue
            .lock()
            .expect("outbox lock")
            .inactive
            .remove(&action_id);
    }

    /// The oldest reports, at most `n`, in order.
    fn front(&self, n: usize) -> Vec<(u64, Feedback)> {
        let q = self.queue.lock().expect("outbox lock");
        q.entries
            .iter()
            .take(n)
            .map(|(s, f)| (*s, f.clone()))
            .collect()
    }

    fn remove(&self, seq: u64, ack: Option<&FeedbackAck>, action_id: i64) {
        let mut q = self.queue.lock().expect("outbox lock");
        if let Some(f) = q.entries.remove(&seq)
            && let Some(dir) = &self.dir
        {
            let file = dir.join(format!("{}.json", f.key));
            if let Err(e) = std::fs::remove_file(&file)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!("removing sent report {}: {e}", file.display());
            }
        }
        if let Some(ack) = ack
            && !ack.active
        {
            q.inactive.insert(action_id);
        }
    }

    /// Sends queued reports in order until the queue is empty or a call fails,
    /// as many at once as the server takes in one batch. A report the server
    /// refuses for good (its action no longer exists) is dropped with a warning,
    /// since sending it again cannot succeed; any other failure stops the flush
    /// and keeps the report for the next one.
    pub async fn flush(&self, client: &Client) -> Result<Flushed, ClientError> {
        let mut done = Flushed::default();
        loop {
            let reports = self.front(MAX_FEEDBACK_BATCH);
            if reports.is_empty() {
                return Ok(done);
            }
            let batch = FeedbackBatch {
                reports: reports.iter().map(|(_, f)| f.clone()).collect(),
            };
            let sent = client.feedback_batch(&batch).await;
            // From the answer, not the request: a server slow to answer gets
            // fewer, larger batches.
            self.queue.lock().expect("outbox lock").last_sent = Some(Instant::now());
            let ack = match sent {
                Ok(ack) => ack,
                Err(ClientError::Status { status, .. }) if refused_for_good(status) => {
                    // The batch as a whole is refused: a server older than
                    // batches, or one report it can never take. The oldest goes
                    // alone, as before batches, so one bad report cannot hold
                    // up the rest for ever.
                    let (seq, f) = &reports[0];
                    done.calls += 1;
                    match client.feedback(f).await {
                        Ok(ack) => {
                            self.remove(*seq, Some(&ack), f.action_id);
                            done.sent += 1;
                        }
                        Err(ClientError::Status {
                            status, message, ..
                        }) if refused_for_good(status) => {
                            tracing::warn!(
                                key = %f.key,
                                "the server refused report {} of action {} ({status}: {message}); dropping it",
                                f.step,
                                f.action_id
                            );
                            self.remove(*seq, None, f.action_id);
                            done.dropped += 1;
                        }
                        Err(e) => return Err(e),
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            done.calls += 1;
            for ((seq, f), result) in reports.iter().zip(ack.results) {
                match result {
                    FeedbackResult::Ack(ack) => {
                        self.remove(*seq, Some(&ack), f.action_id);
                        done.sent += 1;
                    }
                    FeedbackResult::Refused { error, .. } => {
                        tracing::warn!(
                            key = %f.key,
                            "the server refused report {} of action {} ({error}); dropping it",
                            f.step,
                            f.action_id
                        );
                        self.remove(*seq, None, f.action_id);
                        done.dropped += 1;
                    }
                }
            }
        }
    }
}

/// Whether an answer with `status` means that sending the same request again
/// cannot succeed.
fn refused_for_good(status: u16) -> bool {
    (400..500).contains(&status) && status != 408 && status != 429
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(step: Phase) -> Report {
        Report {
            task_id: 1,
            action_id: 2,
            attempt: 1,
            step,
            state: FeedbackState::Ok,
            message: None,
            retry_after: None,
            percent: None,
        }
    }

    #[test]
    fn reports_survive_a_restart_in_order_with_their_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("outbox");
        let keys: Vec<String> = {
            let o = Outbox::open(&dir).unwrap();
            o.push(7, report(Phase::Download)).unwrap();
            o.push(7, report(Phase::Precheck)).unwrap();
            o.push(7, report(Phase::Stage)).unwrap();
            let q = o.queue.lock().unwrap();
            q.entries.values().map(|f| f.key.clone()).collect()
        };
        // A half-written entry from a crash is not a report.
        std::fs::write(dir.join("000000000099-x.tmp"), b"{").unwrap();
        let o = Outbox::open(&dir).unwrap();
        assert_eq!(o.len(), 3);
        let q = o.queue.lock().unwrap();
        let again: Vec<String> = q.entries.values().map(|f| f.key.clone()).collect();
        let steps: Vec<Phase> = q.entries.values().map(|f| f.step).collect();
        assert_eq!(again, keys);
        assert_eq!(steps, [Phase::Download, Phase::Precheck, Phase::Stage]);
        assert_eq!(q.next_seq, 4);
        assert!(!dir.join("000000000099-x.tmp").exists());
    }

    #[test]
    fn keys_stay_unique_when_the_sequence_starts_again() {
        let o = Outbox::memory();
        o.push(1, report(Phase::Stage)).unwrap();
        let first = o.front(1).remove(0);
        o.remove(first.0, None, 2);
        let o2 = Outbox::memory();
        o2.push(1, report(Phase::Stage)).unwrap();
        assert_ne!(o2.front(1)[0].1.key, first.1.key);
    }

    /// A server on loopback answering each request's text with `answer`'s
    /// status line and JSON body.
    async fn serve(
        answer: impl Fn(&str) -> (&'static str, String) + Send + Sync + 'static,
    ) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let answer = std::sync::Arc::new(answer);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 4096];
                    // Head and the whole (small) body.
                    loop {
                        let n = s.read(&mut buf).await.unwrap_or(0);
                        req.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&req);
                        let complete = text.split_once("\r\n\r\n").is_some_and(|(head, body)| {
                            let len = head
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length: ")
                                        .map(str::to_owned)
                                })
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            body.len() >= len
                        });
                        if n == 0 || complete {
                            break;
                        }
                    }
                    let (status, body) = answer(&String::from_utf8_lossy(&req));
                    let reply = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(reply.as_bytes()).await;
                });
            }
        });
        url
    }

    /// A server that has no batch route (404), takes report `good` alone and
    /// refuses every other (422).
    async fn server_without_batches() -> String {
        serve(|text| {
            // Reports of stage are taken; any other is refused.
            if text.starts_with("POST /api/v1/agent/feedback/batch") {
                ("404 Not Found", r#"{"error":"no route"}"#.to_owned())
            } else if text.contains(r#""step":"stage""#) {
                let key = text
                    .split(r#""key":""#)
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .unwrap_or("");
                (
                    "200 OK",
                    format!(r#"{{"key":"{key}","duplicate":false,"active":true}}"#),
                )
            } else {
                (
                    "422 Unprocessable Entity",
                    r#"{"error":"invalid"}"#.to_owned(),
                )
            }
        })
        .await
    }

    /// A server that takes every batch, counting them in `batches`.
    async fn server_counting_batches(
        batches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) -> String {
        serve(move |text| {
            batches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            let batch: FeedbackBatch = serde_json::from_str(body).expect("a batch of reports");
            let results = batch
                .reports
                .into_iter()
                .map(|f| {
                    FeedbackResult::Ack(FeedbackAck {
                        key: f.key,
                        duplicate: false,
                        active: true,
                    })
                })
                .collect();
            let ack = posup_proto::agent::FeedbackBatchAck { results };
            ("200 OK", serde_json::to_string(&ack).unwrap())
        })
        .await
    }

    fn client(url: &str) -> Client {
        Client::new(
            url,
            &crate::client::Transport {
                insecure_http: true,
                ca_file: None,
            },
        )
        .unwrap()
    }

    #[test]
    fn reports_wait_only_within_the_interval_after_a_send() {
        let every = Duration::from_secs(1);
        let now = Instant::now();
        assert_eq!(wait_before_sending(None, now, every), Duration::ZERO);
        assert_eq!(
            wait_before_sending(Some(now - Duration::from_millis(300)), now, every),
            Duration::from_millis(700)
        );
        assert_eq!(
            wait_before_sending(Some(now - every), now, every),
            Duration::ZERO
        );
        assert_eq!(
            wait_before_sending(Some(now - Duration::from_secs(5)), now, every),
            Duration::ZERO
        );
    }

    #[tokio::test]
    async fn the_first_report_goes_at_once_and_a_burst_after_it_in_one_request() {
        let batches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let client = client(&server_counting_batches(batches.clone()).await);
        let every = Duration::from_millis(1500);
        let o = Outbox::memory().sending_every(every);
        o.push(1, report(Phase::Precheck)).unwrap();
        let started = Instant::now();
        let done = o.send_when_due(&client).await.unwrap();
        assert_eq!((done.sent, done.calls), (1, 1));
        assert!(
            started.elapsed() < every,
            "a report after a quiet spell waited"
        );
        // A step's end and the next two steps' reports, moments apart.
        for step in [Phase::Stage, Phase::Apply, Phase::Verify] {
            o.push(1, report(step)).unwrap();
        }
        assert!(o.due_in() > Duration::ZERO);
        let done = o.send_when_due(&client).await.unwrap();
        assert_eq!((done.sent, done.calls), (3, 1), "{done:?}");
        assert!(
            started.elapsed() >= every,
            "the burst did not wait for the interval"
        );
        assert_eq!(batches.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert!(o.is_empty());
    }

    #[tokio::test]
    async fn a_refused_batch_falls_back_to_single_reports_and_drops_only_the_bad_one() {
        let client = client(&server_without_batches().await);
        let o = Outbox::memory();
        o.push(1, report(Phase::Stage)).unwrap();
        o.push(1, report(Phase::Apply)).unwrap();
        o.push(1, report(Phase::Stage)).unwrap();
        let done = o.flush(&client).await.unwrap();
        assert_eq!((done.sent, done.dropped), (2, 1), "{done:?}");
        assert!(o.is_empty());
    }
}
