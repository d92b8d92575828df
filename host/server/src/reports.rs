//! Group commit of step reports.
//!
//! At fleet scale reports arrive from many devices at once, and each transaction
//! costs the server far more in hand-offs to the database than in SQL. A request
//! queues its reports and waits for the writer: the request that gets it writes
//! everything queued by then in one transaction (`Store::record_reports`) and
//! answers every waiting request. When reports come one at a time, each is
//! written at once, so nothing waits for company; under load, one transaction
//! serves many devices.
//!
//! A rollout makes reports a steady stream: each device reports every step, a
//! fleet's worth of devices at once. While reports keep coming, the writer waits
//! a moment for company before it writes ([`wait_for_company`]), so a group
//! serves several devices instead of the one or two that arrived during the
//! last write. A report costs its device that moment in latency; a quiet server
//! writes each at once.
//!
//! The write runs in a task of its own, so a request dropped while it leads
//! (its client went away) cannot cancel the transaction of the others.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use posup_proto::agent::{Feedback, FeedbackAck};
use posup_store::{At, MAX_REPORTS_AT_ONCE};
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::state::AppState;

/// Each report's outcome, or why the whole group failed (logged once).
type Outcome = std::result::Result<Vec<posup_store::Result<FeedbackAck>>, Arc<String>>;

struct Pending {
    device_id: i64,
    reports: Vec<Feedback>,
    done: oneshot::Sender<Outcome>,
}

#[derive(Default)]
pub struct Reports {
    queue: Mutex<Vec<Pending>>,
    /// Held by the request that writes; holds when the last write ended.
    writer: tokio::sync::Mutex<Option<Instant>>,
}

/// How long a writer waits for more reports while reports keep coming.
const LINGER: Duration = Duration::from_millis(2);

/// Reports keep coming when the last group was written this recently.
const STREAM: Duration = Duration::from_millis(50);

/// How long the writer waits before taking its group: nothing on a quiet server
/// or with a full group queued; [`LINGER`] while a stream of reports keeps
/// coming, so one transaction serves several devices.
fn wait_for_company(queued_reports: usize, since_last_write: Option<Duration>) -> Duration {
    match since_last_write {
        Some(since) if since < STREAM && queued_reports < MAX_REPORTS_AT_ONCE => LINGER,
        _ => Duration::ZERO,
    }
}

impl std::fmt::Debug for Reports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reports")
            .field("queued", &self.lock_queue().len())
            .finish()
    }
}

impl Reports {
    /// Records `reports` of device `device_id` (at most
    /// `posup_proto::agent::MAX_FEEDBACK_BATCH`, checked by the store's limit on a
    /// group), in order; one outcome per report.
    pub async fn record(
        &self,
        state: &AppState,
        device_id: i64,
        reports: Vec<Feedback>,
        at: At,
    ) -> Result<Vec<posup_store::Result<FeedbackAck>>> {
        if reports.len() > posup_proto::agent::MAX_FEEDBACK_BATCH {
            return Err(Error::Invalid(format!(
                "a feedback batch of {} reports is too large: send at most {} at a time",
                reports.len(),
                posup_proto::agent::MAX_FEEDBACK_BATCH
            )));
        }
        let (done, mut outcome) = oneshot::channel();
        self.lock_queue().push(Pending {
            device_id,
            reports,
            done,
        });
        loop {
            let mut writer = self.writer.lock().await;
            match outcome.try_recv() {
                Ok(o) => return o.map_err(|e| Error::internal("recording reports", e)),
                Err(oneshot::error::TryRecvError::Closed) => {
                    return Err(Error::internal(
                        "recording reports",
                        "the write of this report's group ended without an answer",
                    ));
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            let wait = wait_for_company(self.queued_reports(), writer.map(|t| t.elapsed()));
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            let group = self.take_group();
            if group.is_empty() {
                // Ours is in a write whose leader went away; that write goes on.
                drop(writer);
                return match outcome.await {
                    Ok(o) => o.map_err(|e| Error::internal("recording reports", e)),
                    Err(_) => Err(Error::internal(
                        "recording reports",
                        "the write of this report's group ended without an answer",
                    )),
                };
            }
            let state = state.clone();
            let write = tokio::spawn(async move { write(&state, group, &at).await });
            let _ = write.await;
            *writer = Some(Instant::now());
            drop(writer);
        }
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, Vec<Pending>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn queued_reports(&self) -> usize {
        self.lock_queue().iter().map(|p| p.reports.len()).sum()
    }

    /// The oldest queued requests, as many as fit in one transaction (at least
    /// one).
    fn take_group(&self) -> Vec<Pending> {
        let mut queue = self.lock_queue();
        let mut reports = 0;
        let mut n = 0;
        for p in queue.iter() {
            if n > 0 && reports + p.reports.len() > MAX_REPORTS_AT_ONCE {
                break;
            }
            reports += p.reports.len();
            n += 1;
        }
        queue.drain(..n).collect()
    }
}

async fn write(state: &AppState, group: Vec<Pending>, at: &At) {
    if group.is_empty() {
        return;
    }
    let all: Vec<(i64, &Feedback)> = group
        .iter()
        .flat_map(|p| p.reports.iter().map(move |f| (p.device_id, f)))
        .collect();
    // A device whose last part ended is idle for its next poll, unless
    // something changed since the write began.
    let epoch = state.caches().epoch();
    match state.store().record_reports(&all, at).await {
        Ok(recorded) => {
            for device in recorded.idle {
                state.caches().put_idle(device, epoch);
            }
            let mut results = recorded.results.into_iter();
            for p in group {
                let mine: Vec<_> = results.by_ref().take(p.reports.len()).collect();
                let _ = p.done.send(Ok(mine));
            }
        }
        Err(e) => {
            tracing::error!("recording {} reports: {e}", all.len());
            let message = Arc::new(e.to_string());
            for p in group {
                let _ = p.done.send(Err(message.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writer_waits_for_company_only_while_reports_keep_coming() {
        assert_eq!(
            wait_for_company(1, None),
            Duration::ZERO,
            "the first report"
        );
        assert_eq!(
            wait_for_company(1, Some(Duration::from_secs(2))),
            Duration::ZERO,
            "a quiet server writes at once"
        );
        assert_eq!(wait_for_company(1, Some(Duration::from_millis(1))), LINGER);
        assert_eq!(
            wait_for_company(MAX_REPORTS_AT_ONCE, Some(Duration::from_millis(1))),
            Duration::ZERO,
            "a full group is written at once"
        );
    }
}
