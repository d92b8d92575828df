//! `prompt`: questions to the person at the terminal.
//!
//! The runtime does not know how a terminal shows a question; the host supplies a
//! [`Prompter`]. `posup apply --answer` uses [`FixedAnswer`]; the agent uses one that
//! hands the question to the terminal's cashier interface.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use posup_world::latest::prompt;
use posup_world::latest::types::Error as WitError;
use wasmtime::component::{HasSelf, Linker};

use super::CapError;

/// The longest a plugin may make a step wait for an answer.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3_600);
/// Questions and messages are cut to this many bytes: a cashier reads a sentence.
pub const MAX_MESSAGE: usize = 1_024;
/// Messages one step may show; later ones are dropped.
pub const MAX_NOTIFY: usize = 16;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Shows questions and messages to the person at the terminal.
pub trait Prompter: Send + Sync {
    /// `Some(true)` yes, `Some(false)` no, `None` nobody answered within `timeout`.
    fn ask<'a>(&'a self, question: &'a str, timeout: Duration) -> BoxFuture<'a, Option<bool>>;
    /// A message that needs no answer.
    fn notify(&self, message: &str);
}

/// Answers every question the same way at once: `posup apply --answer yes|no`, or
/// nobody at all (`None`), which counts as a question nobody answered in time.
#[derive(Debug, Clone, Default)]
pub struct FixedAnswer {
    pub answer: Option<bool>,
    /// Messages shown, for the caller to print or test.
    pub shown: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Prompter for FixedAnswer {
    fn ask<'a>(&'a self, question: &'a str, _timeout: Duration) -> BoxFuture<'a, Option<bool>> {
        tracing::info!(answer = ?self.answer, "question to the terminal: {question}");
        let answer = self.answer;
        Box::pin(async move { answer })
    }

    fn notify(&self, message: &str) {
        tracing::info!("message to the terminal: {message}");
        self.shown.lock().unwrap().push(message.to_owned());
    }
}

/// Per-step state of `prompt`: the prompter when the grant allows questions.
pub struct PromptState {
    prompter: Option<Arc<dyn Prompter>>,
    notified: usize,
}

impl PromptState {
    /// `None` when prompting is not granted.
    pub fn new(prompter: Option<Arc<dyn Prompter>>) -> Self {
        Self {
            prompter,
            notified: 0,
        }
    }

    fn get(&self) -> Result<&Arc<dyn Prompter>, CapError> {
        self.prompter.as_ref().ok_or_else(|| {
            CapError::denied(
                "prompt: asking the person at the terminal is not granted to this plugin",
            )
        })
    }
}

impl prompt::Host for PromptState {
    async fn ask(&mut self, question: String, timeout_secs: u32) -> Result<Option<bool>, WitError> {
        let prompter = self.get()?.clone();
        let timeout = Duration::from_secs(timeout_secs.into()).min(MAX_TIMEOUT);
        // The prompter gets the timeout to show a countdown; the runtime enforces it
        // too, so a prompter that never answers cannot hang the step.
        let question = super::cut(&question, MAX_MESSAGE);
        match tokio::time::timeout(timeout, prompter.ask(question, timeout)).await {
            Ok(answer) => Ok(answer),
            Err(_) => Ok(None),
        }
    }

    async fn notify(&mut self, message: String) {
        if self.notified >= MAX_NOTIFY {
            return;
        }
        if let Ok(prompter) = self.get().cloned() {
            self.notified += 1;
            prompter.notify(super::cut(&message, MAX_MESSAGE));
        }
    }
}

pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut PromptState,
) -> wasmtime::Result<()> {
    prompt::add_to_linker::<T, HasSelf<PromptState>>(linker, get)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prompt::Host as _;

    #[tokio::test]
    async fn messages_are_bounded_in_size_and_number() {
        let shown = FixedAnswer::default();
        let mut state = PromptState::new(Some(Arc::new(shown.clone())));
        for _ in 0..1_000 {
            state.notify("ы".repeat(100_000)).await;
        }
        let shown = shown.shown.lock().unwrap();
        assert_eq!(shown.len(), MAX_NOTIFY);
        assert!(
            shown
                .iter()
                .all(|m| m.len() <= MAX_MESSAGE && !m.is_empty())
        );
    }
}
