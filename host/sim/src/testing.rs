//! The simulators' shared test harness: a product run on a thread, and a wait
//! for its log.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Waits until `file` satisfies `f` and returns its text; the bound only keeps
/// a broken build from hanging.
pub(crate) fn wait_for(file: &Path, mut f: impl FnMut(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if f(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} never got there:\n{text}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A product running on a thread until its flag is set; the flag is set when
/// it is dropped, so a failed test leaves no product behind.
pub(crate) struct Running {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<io::Result<()>>>,
}

impl Running {
    /// Runs `run` on a thread with the stop flag.
    pub(crate) fn spawn(run: impl FnOnce(&AtomicBool) -> io::Result<()> + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || run(&flag));
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the product and returns how its run ended.
    pub(crate) fn stop(mut self) -> io::Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .expect("stopped once")
            .join()
            .expect("the product's thread panicked")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
