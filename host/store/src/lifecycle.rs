//! The task state machine and how step feedback moves a device's part of a task.
//!
//! ```text
//!   create ──(start in the future)──▶ Scheduled ──(start time)──▶ Running
//!   create ──(start now)───────────────────────────────────────▶ Running
//!   Scheduled | Running ──pause──▶ Paused ──resume──▶ Scheduled | Running
//!   Running ──(every device success or failed)──▶ Finished ──restart──▶ Running
//!   any ──delete──▶ (gone)
//! ```
//!
//! The functions here are pure; the store applies them inside transactions with
//! conditional updates, so concurrent server replicas agree.

use posup_proto::agent::FeedbackState;
use posup_proto::api::{DeviceTaskState, TaskState};

/// An operator's command on a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Pause,
    Resume,
    Restart,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Restart => "restart",
        }
    }
}

/// The state after `command`, or why the command does not apply. `due` tells
/// whether the task's start time has come.
pub fn transition(
    task_id: i64,
    state: TaskState,
    command: Command,
    due: bool,
) -> Result<TaskState, String> {
    let started = if due {
        TaskState::Running
    } else {
        TaskState::Scheduled
    };
    match (command, state) {
        (Command::Pause, TaskState::Scheduled | TaskState::Running) => Ok(TaskState::Paused),
        (Command::Resume, TaskState::Paused) => Ok(started),
        (Command::Restart, TaskState::Finished) => Ok(TaskState::Running),
        (Command::Pause, _) => Err(format!(
            "task {task_id} is {}: only a Scheduled or Running task can be paused",
            state.as_str()
        )),
        (Command::Resume, _) => Err(format!(
            "task {task_id} is {}: only a Paused task can be resumed",
            state.as_str()
        )),
        (Command::Restart, _) => Err(format!(
            "task {task_id} is {}: only a Finished task can be restarted (pause or delete it instead)",
            state.as_str()
        )),
    }
}

/// The state at creation.
pub fn initial(due: bool) -> TaskState {
    if due {
        TaskState::Running
    } else {
        TaskState::Scheduled
    }
}

/// A device's state after a report. Once a device's part succeeded or failed in an
/// attempt, later reports of that attempt are kept in its history but do not move
/// it (a `rolled-back` after `failed` stays failed).
pub fn after_feedback(current: DeviceTaskState, report: FeedbackState) -> DeviceTaskState {
    if current.is_terminal() {
        return current;
    }
    match report {
        FeedbackState::Started | FeedbackState::Progress | FeedbackState::Ok => {
            DeviceTaskState::Running
        }
        FeedbackState::NotNow => DeviceTaskState::Waiting,
        FeedbackState::Failed | FeedbackState::RolledBack => DeviceTaskState::Failed,
        FeedbackState::Committed => DeviceTaskState::Success,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_resume_restart_follow_the_diagram() {
        use TaskState::*;
        assert_eq!(transition(1, Running, Command::Pause, true), Ok(Paused));
        assert_eq!(transition(1, Scheduled, Command::Pause, false), Ok(Paused));
        assert_eq!(transition(1, Paused, Command::Resume, false), Ok(Scheduled));
        assert_eq!(transition(1, Paused, Command::Resume, true), Ok(Running));
        assert_eq!(transition(1, Finished, Command::Restart, true), Ok(Running));
        let err = transition(7, Running, Command::Restart, true).unwrap_err();
        assert!(err.contains("task 7 is Running"), "{err}");
        assert!(transition(1, Finished, Command::Pause, true).is_err());
        assert!(transition(1, Running, Command::Resume, true).is_err());
    }

    #[test]
    fn feedback_moves_devices_until_they_finish() {
        use DeviceTaskState as D;
        use FeedbackState as F;
        assert_eq!(after_feedback(D::Pending, F::Started), D::Running);
        assert_eq!(after_feedback(D::Running, F::NotNow), D::Waiting);
        assert_eq!(after_feedback(D::Waiting, F::Started), D::Running);
        assert_eq!(after_feedback(D::Running, F::Committed), D::Success);
        assert_eq!(after_feedback(D::Running, F::Failed), D::Failed);
        assert_eq!(after_feedback(D::Failed, F::RolledBack), D::Failed);
        assert_eq!(after_feedback(D::Success, F::Started), D::Success);
    }
}
