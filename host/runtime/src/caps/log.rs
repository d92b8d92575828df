//! `log` and `progress`: what a plugin says while a step runs.
//!
//! Lines are kept with the step (bounded, so a chatty or hostile plugin cannot fill
//! the host's memory) and forwarded to the host's [`EventSink`], which the agent
//! turns into live progress for the server. Progress is forwarded at most once per
//! [`PROGRESS_EVERY`], 100 % included: every report becomes a file on the terminal
//! and a row on the server, so a plugin calling it in a loop must not multiply them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use posup_world::latest::{log, progress};
use wasmtime::component::{HasSelf, Linker};

pub use posup_world::latest::log::Level;

/// Lines kept per step; later ones are counted, not stored.
const MAX_LINES: usize = 2_000;
/// Longer lines are cut.
const MAX_LINE: usize = 4_096;
/// The least time between two progress reports forwarded to the host.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// Where the host sees log lines and progress while a step runs.
pub trait EventSink: Send + Sync {
    fn log(&self, plugin: &str, level: Level, message: &str);
    fn progress(&self, plugin: &str, percent: u8, message: &str);
}

/// One line a plugin logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub level: Level,
    pub message: String,
}

/// Per-step state of `log` and `progress`.
pub struct LogState {
    plugin: String,
    sink: Option<Arc<dyn EventSink>>,
    pub(crate) lines: Vec<LogLine>,
    pub(crate) dropped: usize,
    /// When progress was last forwarded.
    last_progress: Option<Instant>,
}

impl LogState {
    pub fn new(plugin: &str, sink: Option<Arc<dyn EventSink>>) -> Self {
        Self {
            plugin: plugin.to_owned(),
            sink,
            lines: Vec::new(),
            dropped: 0,
            last_progress: None,
        }
    }
}

fn cut(message: &str) -> &str {
    super::cut(message, MAX_LINE)
}

impl log::Host for LogState {
    async fn log(&mut self, level: Level, message: String) {
        let message = cut(&message);
        if self.lines.len() < MAX_LINES {
            tracing::debug!(plugin = %self.plugin, ?level, "{message}");
            if let Some(sink) = &self.sink {
                sink.log(&self.plugin, level, message);
            }
            self.lines.push(LogLine {
                level,
                message: message.to_owned(),
            });
        } else {
            self.dropped += 1;
        }
    }
}

impl progress::Host for LogState {
    async fn report(&mut self, percent: u8, message: String) {
        let now = Instant::now();
        if self
            .last_progress
            .is_some_and(|t| now.duration_since(t) < PROGRESS_EVERY)
        {
            return;
        }
        self.last_progress = Some(now);
        if let Some(sink) = &self.sink {
            sink.progress(&self.plugin, percent.min(100), cut(&message));
        }
    }
}

pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut LogState,
) -> wasmtime::Result<()> {
    log::add_to_linker::<T, HasSelf<LogState>>(linker, get)?;
    progress::add_to_linker::<T, HasSelf<LogState>>(linker, get)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Count {
        progress: Mutex<usize>,
        logs: Mutex<usize>,
    }

    impl EventSink for Count {
        fn log(&self, _: &str, _: Level, _: &str) {
            *self.logs.lock().unwrap() += 1;
        }
        fn progress(&self, _: &str, _: u8, _: &str) {
            *self.progress.lock().unwrap() += 1;
        }
    }

    /// 5 000 reports of 100 % in a burst reach the host once, and a flood of log
    /// lines is forwarded only up to the kept bound.
    #[tokio::test]
    async fn a_flood_of_progress_and_lines_is_bounded() {
        use log::Host as _;
        use progress::Host as _;
        let sink = Arc::new(Count::default());
        let mut state = LogState::new("p", Some(sink.clone()));
        for _ in 0..5_000 {
            state.report(100, "done".into()).await;
        }
        assert_eq!(*sink.progress.lock().unwrap(), 1);
        for _ in 0..(MAX_LINES + 500) {
            state.log(Level::Info, "x".repeat(10 * MAX_LINE)).await;
        }
        assert_eq!(*sink.logs.lock().unwrap(), MAX_LINES);
        assert_eq!(state.lines.len(), MAX_LINES);
        assert_eq!(state.dropped, 500);
        assert!(state.lines.iter().all(|l| l.message.len() <= MAX_LINE));
    }
}
