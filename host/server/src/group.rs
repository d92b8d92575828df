//! Group commit of the writes many devices make at once.
//!
//! At fleet scale step reports and inventories arrive from many devices at
//! once, and each transaction costs the server far more in hand-offs to the
//! database than in SQL. A request queues its write and waits for the writer:
//! the request that gets it writes everything queued by then in one
//! transaction ([`Batch::write`]) and answers every waiting request. When
//! writes come one at a time, each is written at once, so nothing waits for
//! company; under load, one transaction serves many devices.
//!
//! A rollout makes them a steady stream: each device reports every step, a
//! fleet's worth of devices at once. While writes keep coming, the writer waits
//! a moment for company before it writes ([`wait_for_company`]), so a group
//! serves several devices instead of the one or two that arrived during the
//! last write. A write costs its device that moment in latency; a quiet server
//! writes each at once.
//!
//! The write runs in a task of its own, so a request dropped while it leads
//! (its client went away) cannot cancel the transaction of the others. When a
//! group's transaction fails, each of its requests is written again alone, so
//! what one device sent (a text the database refuses) fails only its own.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use posup_store::At;
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::state::AppState;

/// One kind of write that devices' requests queue to be written together.
pub trait Batch: Sized + Send + Sync + 'static {
    /// What the request that queued an item gets back.
    type Answer: Send + 'static;
    /// The most one transaction writes, in [`Batch::weight`].
    const MAX: usize;
    /// What writing this item counts against [`Batch::MAX`].
    fn weight(&self) -> usize;
    /// Writes a group in one transaction: one answer per item, in order, or
    /// why the whole group failed.
    fn write(
        state: &AppState,
        group: &[Self],
        at: &At,
    ) -> impl Future<Output = std::result::Result<Vec<Self::Answer>, Arc<String>>> + Send;
}

type Outcome<A> = std::result::Result<A, Arc<String>>;

struct Pending<B: Batch> {
    item: B,
    done: oneshot::Sender<Outcome<B::Answer>>,
}

/// The queue of one kind of write, and its writer.
pub struct GroupCommit<B: Batch> {
    queue: Mutex<Vec<Pending<B>>>,
    /// Held by the request that writes; holds when the last write ended.
    writer: tokio::sync::Mutex<Option<Instant>>,
    /// Names the writes in errors.
    what: &'static str,
}

/// How long a writer waits for more writes while they keep coming.
const LINGER: Duration = Duration::from_millis(2);

/// Writes keep coming when the last group was written this recently.
const STREAM: Duration = Duration::from_millis(50);

/// How long the writer waits before taking its group: nothing on a quiet server
/// or with a full group queued; [`LINGER`] while a stream of writes keeps
/// coming, so one transaction serves several devices.
fn wait_for_company(queued: usize, max: usize, since_last_write: Option<Duration>) -> Duration {
    match since_last_write {
        Some(since) if since < STREAM && queued < max => LINGER,
        _ => Duration::ZERO,
    }
}

impl<B: Batch> std::fmt::Debug for GroupCommit<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("what", &self.what)
            .field("queued", &self.lock_queue().len())
            .finish()
    }
}

impl<B: Batch> GroupCommit<B> {
    /// `what` names the writes in errors: "recording reports".
    pub fn new(what: &'static str) -> Self {
        GroupCommit {
            queue: Mutex::new(Vec::new()),
            writer: tokio::sync::Mutex::new(None),
            what,
        }
    }

    /// Writes `item` with whatever else is queued; its answer.
    pub async fn write(&self, state: &AppState, item: B, at: At) -> Result<B::Answer> {
        let (done, mut outcome) = oneshot::channel();
        self.lock_queue().push(Pending { item, done });
        let failed = |e: Arc<String>| Error::internal(self.what, e);
        let lost = || {
            Error::internal(
                self.what,
                "the write of this request's group ended without an answer",
            )
        };
        loop {
            let mut writer = self.writer.lock().await;
            match outcome.try_recv() {
                Ok(o) => return o.map_err(failed),
                Err(oneshot::error::TryRecvError::Closed) => return Err(lost()),
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            let wait = wait_for_company(self.queued(), B::MAX, writer.map(|t| t.elapsed()));
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            let group = self.take_group();
            if group.is_empty() {
                // Ours is in a write whose leader went away; that write goes on.
                drop(writer);
                return match outcome.await {
                    Ok(o) => o.map_err(failed),
                    Err(_) => Err(lost()),
                };
            }
            let state = state.clone();
            let what = self.what;
            let write = tokio::spawn(async move { write_group(&state, group, &at, what).await });
            let _ = write.await;
            *writer = Some(Instant::now());
            drop(writer);
        }
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, Vec<Pending<B>>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn queued(&self) -> usize {
        self.lock_queue().iter().map(|p| p.item.weight()).sum()
    }

    /// The oldest queued requests, as many as fit in one transaction (at least
    /// one).
    fn take_group(&self) -> Vec<Pending<B>> {
        let mut queue = self.lock_queue();
        let mut weight = 0;
        let mut n = 0;
        for p in queue.iter() {
            if n > 0 && weight + p.item.weight() > B::MAX {
                break;
            }
            weight += p.item.weight();
            n += 1;
        }
        queue.drain(..n).collect()
    }
}

/// Writes a group and answers its requests; when the group's transaction
/// fails, each request alone.
async fn write_group<B: Batch>(state: &AppState, group: Vec<Pending<B>>, at: &At, what: &str) {
    let (items, done): (Vec<B>, Vec<_>) = group.into_iter().map(|p| (p.item, p.done)).unzip();
    let outcomes = match write_some(state, &items, at).await {
        Ok(answers) => answers.into_iter().map(Ok).collect(),
        Err(message) => {
            tracing::error!("{what} for {} requests: {message}", items.len());
            if items.len() == 1 {
                vec![Err(message)]
            } else {
                let mut outcomes = Vec::with_capacity(items.len());
                for item in &items {
                    let alone = write_some(state, std::slice::from_ref(item), at).await;
                    if let Err(message) = &alone {
                        tracing::error!("{what} for one request: {message}");
                    }
                    outcomes.push(alone.map(|mut answers| answers.remove(0)));
                }
                outcomes
            }
        }
    };
    for (done, outcome) in done.into_iter().zip(outcomes) {
        let _ = done.send(outcome);
    }
}

/// [`Batch::write`], with an answer for every item.
async fn write_some<B: Batch>(
    state: &AppState,
    items: &[B],
    at: &At,
) -> std::result::Result<Vec<B::Answer>, Arc<String>> {
    let answers = B::write(state, items, at).await?;
    if answers.len() != items.len() {
        return Err(Arc::new(format!(
            "{} answers for {} writes",
            answers.len(),
            items.len()
        )));
    }
    Ok(answers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writer_waits_for_company_only_while_writes_keep_coming() {
        assert_eq!(
            wait_for_company(1, 64, None),
            Duration::ZERO,
            "the first write"
        );
        assert_eq!(
            wait_for_company(1, 64, Some(Duration::from_secs(2))),
            Duration::ZERO,
            "a quiet server writes at once"
        );
        assert_eq!(
            wait_for_company(1, 64, Some(Duration::from_millis(1))),
            LINGER
        );
        assert_eq!(
            wait_for_company(64, 64, Some(Duration::from_millis(1))),
            Duration::ZERO,
            "a full group is written at once"
        );
    }
}
