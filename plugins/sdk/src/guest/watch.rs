//! Watching a product come up: log positions that survive from one step to the
//! next, waiting for log lines with a deadline, services that must keep running.

use std::time::{Duration, Instant};

use super::config::wait_limit;
use super::{ErrorKind, Stop, kv, logs, services};

/// Remembers the current end of `log` under the kv key `key`, so a later step
/// reads only what the product logs after this moment. A log not written yet is
/// read from its start later.
pub fn remember_log_end(key: &str, log: &str) -> Result<(), Stop> {
    match logs::end(log) {
        Ok(mark) => kv::set(key, &format!("{}:{}", mark.file_id, mark.offset))?,
        Err(e) if e.kind == ErrorKind::NotFound => kv::delete(key)?,
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// The log position remembered under `key`; the start of the log when none is.
pub fn remembered_mark(key: &str) -> Result<logs::Mark, Stop> {
    let mark = kv::get(key)?.and_then(|m| {
        let (id, off) = m.split_once(':')?;
        Some(logs::Mark {
            file_id: id.parse().ok()?,
            offset: off.parse().ok()?,
        })
    });
    Ok(mark.unwrap_or(logs::Mark {
        file_id: 0,
        offset: 0,
    }))
}

/// Whether `log` can be read: a product whose log is not where the device's
/// variables say is checked by its services staying up instead.
pub fn log_present(log: &str) -> bool {
    logs::tail(log, 1).is_ok()
}

/// A service's state in words.
pub fn state_name(state: services::State) -> &'static str {
    match state {
        services::State::Running => "running",
        services::State::Stopped => "stopped",
        services::State::Failed => "failed",
    }
}

/// Every one of `names` must keep running for `limit` (the server variable
/// `var` in seconds, or `default`): where no log tells, the one sign a product
/// gives that it started well. A program that fails later is not caught.
pub fn settle(names: &[&str], var: &str, default: Duration) -> Result<(), Stop> {
    let limit = wait_limit(var, default);
    let started = Instant::now();
    loop {
        for name in names {
            let state = services::status(name)?;
            if state != services::State::Running {
                return Err(Stop::failed(format!(
                    "{name} stopped ({}) {} s after it was started with the update",
                    state_name(state),
                    started.elapsed().as_secs()
                )));
            }
        }
        if started.elapsed() >= limit {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What [`watch_log`]'s judge says about the lines seen so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watch {
    /// Keep reading.
    Wait,
    /// The product is up as expected.
    Done,
    /// The product failed; the reason is shown to operators.
    Fail(String),
}

/// Reads `log` from `mark` until `judge` decides, the service stops running, or
/// `limit` passes. `judge` gets each new line containing one of `patterns`
/// (with the pattern's index) and answers for the log as seen so far.
/// `waiting_for` names what a timeout missed.
pub fn watch_log(
    log: &str,
    mut mark: logs::Mark,
    patterns: &[&str],
    service: &str,
    limit: Duration,
    waiting_for: &str,
    mut judge: impl FnMut(u32, &str) -> Watch,
) -> Result<(), Stop> {
    let patterns: Vec<String> = patterns.iter().map(|p| (*p).to_owned()).collect();
    let started = Instant::now();
    loop {
        // The state is taken before the log is read: when the program has ended,
        // everything it wrote is then in the log, and its last lines are judged.
        let running = services::status(service)? == services::State::Running;
        let scan = logs::scan(log, mark, &patterns)?;
        mark = scan.next;
        for found in scan.found {
            match judge(found.pattern, found.line.trim()) {
                Watch::Wait => {}
                Watch::Done => return Ok(()),
                Watch::Fail(reason) => return Err(Stop::failed(reason)),
            }
        }
        if !running {
            // A program that crashed on start said why in its last line.
            let last = logs::tail(log, 1).ok().and_then(|l| l.last().cloned());
            return Err(Stop::failed(match last {
                Some(line) => format!(
                    "{service} is not running after the update; the last line of {log}: {}",
                    line.trim()
                ),
                None => format!("{service} is not running after the update; see {log}"),
            }));
        }
        if started.elapsed() > limit {
            return Err(Stop::failed(format!(
                "{service}: {waiting_for} did not appear in {log} within {} s",
                limit.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
