//! `log` and `progress`: what a plugin says while a step runs.
//!
//! Lines are kept with the step (bounded, so a chatty or hostile plugin cannot fill
//! the host's memory) and forwarded to the host's [`EventSink`], which the agent
//! turns into live progress for the server.

use std::sync::Arc;

use posup_world::latest::{log, progress};
use wasmtime::component::{HasSelf, Linker};

pub use posup_world::latest::log::Level;

/// Lines kept per step; later ones are counted, not stored.
const MAX_LINES: usize = 2_000;
/// Longer lines are cut.
const MAX_LINE: usize = 4_096;

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
}

impl LogState {
    pub fn new(plugin: &str, sink: Option<Arc<dyn EventSink>>) -> Self {
        Self {
            plugin: plugin.to_owned(),
            sink,
            lines: Vec::new(),
            dropped: 0,
        }
    }
}

fn cut(message: &str) -> &str {
    if message.len() <= MAX_LINE {
        return message;
    }
    let mut end = MAX_LINE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

impl log::Host for LogState {
    async fn log(&mut self, level: Level, message: String) {
        let message = cut(&message);
        tracing::debug!(plugin = %self.plugin, ?level, "{message}");
        if let Some(sink) = &self.sink {
            sink.log(&self.plugin, level, message);
        }
        if self.lines.len() < MAX_LINES {
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
