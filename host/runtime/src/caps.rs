//! Host capabilities, one module each (Spin's factors are the model).
//!
//! Every capability owns its configuration, its per-step state and its
//! `add_to_linker`; [`crate::state::StepState`] only holds them side by side and
//! `state::link_all` links them. All of them are linked into every plugin, so a plugin built against the whole world
//! instantiates anywhere; a call to something not granted answers
//! `error-kind::denied`, never a trap.

pub mod archive;
pub mod database;
pub mod fs;
pub mod kv;
pub mod log;
pub mod logs;
pub mod prompt;
pub mod services;
pub mod vars;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use posup_world::latest::types::Error as WitError;

pub use crate::error::{CapError, CapResult};

/// `message` cut to at most `max` bytes, at a character boundary.
pub(crate) fn cut(message: &str, max: usize) -> &str {
    if message.len() <= max {
        return message;
    }
    let mut end = max;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

/// The host work one step has started (copies, extractions, scripts), so that it
/// can be stopped when the step's deadline passes and waited for before anything
/// else (a rollback) touches the same trees. Cloned into each capability.
#[derive(Clone, Default)]
pub struct Work {
    inner: Arc<WorkInner>,
}

#[derive(Default)]
struct WorkInner {
    cancelled: AtomicBool,
    running: AtomicUsize,
    idle: tokio::sync::Notify,
}

impl std::fmt::Debug for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Work")
            .field("cancelled", &self.is_cancelled())
            .field("running", &self.inner.running.load(Ordering::SeqCst))
            .finish()
    }
}

impl Work {
    /// Asks all work of the step to stop; long operations look at it between
    /// files and chunks.
    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::SeqCst)
    }

    /// A refusal to go on once the step was cancelled.
    pub fn check(&self, what: &str) -> CapResult<()> {
        if self.is_cancelled() {
            return Err(CapError::timeout(format!(
                "{what}: stopped, the step's deadline passed"
            )));
        }
        Ok(())
    }

    /// Counts one piece of work as running until the guard is dropped.
    fn start(&self) -> Running {
        self.inner.running.fetch_add(1, Ordering::SeqCst);
        Running(self.clone())
    }

    /// Waits until no work of the step is running any more.
    pub async fn stopped(&self) {
        loop {
            let idle = self.inner.idle.notified();
            if self.inner.running.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// One running piece of a step's work.
pub(crate) struct Running(Work);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.inner.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.inner.idle.notify_waiters();
        }
    }
}

/// Runs blocking file work off the async executor, counted in the step's `work` so
/// the step's end waits for it, and converts a panic in it into an I/O error
/// rather than taking the host down.
pub(crate) async fn blocking<T: Send + 'static>(
    work: &Work,
    what: &str,
    f: impl FnOnce() -> CapResult<T> + Send + 'static,
) -> Result<T, WitError> {
    work.check(what)?;
    let running = work.start();
    let task = tokio::task::spawn_blocking(move || {
        let _running = running;
        f()
    });
    match task.await {
        Ok(r) => r.map_err(WitError::from),
        Err(e) => Err(CapError::io(format!("{what}: host task failed: {e}")).into()),
    }
}

/// Runs async host work (a script) counted in the step's `work`.
pub(crate) async fn counted<T>(work: &Work, fut: impl std::future::Future<Output = T>) -> T {
    let _running = work.start();
    fut.await
}
