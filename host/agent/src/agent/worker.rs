//! The worker: one action from its signed metadata through the pipeline, each
//! step journaled and reported through the outbox.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use posup_proto::agent::{Action, FeedbackState};
use posup_proto::{Phase, TaskKind};
use posup_runtime::caps::log::{EventSink, Level};
use posup_runtime::caps::prompt::Prompter;

use crate::download::{self, DownloadError, Expected};
use crate::outbox::Report;
use crate::pipeline::{
    Observer, Pipeline, PipelineError, Settings, StepReport, StepResult, UpdateRequest,
    UpdateResult,
};
use crate::state::ActionRecord;

use super::{Agent, PROGRESS_EVERY};

impl Agent {
    pub(super) fn report(
        &self,
        action: &Action,
        step: Phase,
        state: FeedbackState,
        message: Option<String>,
        percent: Option<u8>,
    ) {
        self.report_retry(action, step, state, message, percent, None);
    }

    pub(super) fn report_retry(
        &self,
        action: &Action,
        step: Phase,
        state: FeedbackState,
        message: Option<String>,
        percent: Option<u8>,
        retry_after: Option<Duration>,
    ) {
        let Some(device_id) = self.device_id() else {
            return;
        };
        let report = Report {
            task_id: action.task_id,
            action_id: action.action_id,
            attempt: action.attempt,
            step,
            state,
            message,
            percent,
            retry_after,
        };
        if let Err(e) = self.outbox.push(device_id, report) {
            tracing::error!(
                "queueing a report in {}: {e}",
                self.paths.outbox().display()
            );
            *self.problem.lock().expect("problem lock") = Some(format!(
                "cannot queue reports in {}: {e}",
                self.paths.outbox().display()
            ));
        }
    }

    pub(super) fn record(&self, action: &Action, record: ActionRecord) {
        self.update_state(|s| {
            s.actions.insert(action.action_id, record);
        });
    }

    /// Reports the action failed in `step` and records it done: nothing was
    /// installed.
    fn fail(&self, action: &Action, step: Phase, message: impl Into<String>) {
        self.report(
            action,
            step,
            FeedbackState::Failed,
            Some(message.into()),
            None,
        );
        self.done(action, "failed");
    }

    pub(super) fn done(&self, action: &Action, result: &str) {
        self.record(
            action,
            ActionRecord::Done {
                attempt: action.attempt,
                result: result.to_owned(),
            },
        );
    }

    /// Works on one action to its end (done, waiting, or stopped by the server).
    pub(super) async fn work(self: &Arc<Self>, action: Action) {
        let name = &action.package.file_name;
        tracing::info!(action = action.action_id, "{} {name}", action.kind.as_str());
        // One refresh of the signed metadata serves the plugin and the package.
        let verified = match &self.trust {
            Some(_) => match self.verify().await {
                Ok(v) => Some(v),
                Err(e) => {
                    let msg = format!("nothing was downloaded: {e}");
                    self.fail(&action, Phase::Download, msg);
                    return;
                }
            },
            None => None,
        };
        let loaded = match self.plugin(&action.plugin, verified.as_ref()).await {
            Ok(p) => p,
            Err(e) => {
                self.fail(&action, Phase::Download, e);
                return;
            }
        };
        let plugin = loaded.plugin.clone();
        let device = self.device_config();
        let Some(staging) = device.dir("staging").map(Path::to_path_buf) else {
            let msg = format!(
                "no staging directory: set dirs.staging in [device_types.{}] of the agent configuration",
                self.config.device.device_type
            );
            self.fail(&action, Phase::Download, msg);
            return;
        };
        if let Err(e) = std::fs::create_dir_all(&staging) {
            let msg = format!("creating the staging directory {}: {e}", staging.display());
            self.fail(&action, Phase::Download, msg);
            return;
        }

        // Names from the server become paths only as one checked component.
        let bad_name = posup_runtime::beneath::file_name(name)
            .err()
            .map(|m| format!("package file name from the server: {m}"));
        let bad_sha = (!crate::staging::is_sha256(&action.package.sha256)).then(|| {
            "package sha256 from the server is not 64 hex digits; it is not downloaded".to_owned()
        });
        if let Some(msg) = bad_name.or(bad_sha) {
            self.fail(&action, Phase::Download, msg);
            return;
        }
        // The package must be a signed target of this device type; its signed
        // length bounds the download and its signed sha256 checks it.
        let signed = match &verified {
            Some(v) => match v.package(
                &self.config.device.device_type,
                name,
                &action.package.sha256,
            ) {
                Ok(t) => Some(t),
                Err(e) => {
                    let msg = format!("{name} is not downloaded: {e}");
                    self.fail(&action, Phase::Download, msg);
                    return;
                }
            },
            None => None,
        };
        let size = match &signed {
            Some(t) => t.length,
            None => action.package.size,
        };
        // The package: downloaded once into the agent's own folder, checked, and
        // copied into staging by the pipeline.
        let downloads = self.paths.downloads();
        if let Err(e) = posup_runtime::beneath::private_dir(&downloads) {
            let msg = format!("creating the download folder {}: {e}", downloads.display());
            self.fail(&action, Phase::Download, msg);
            return;
        }
        let dest = downloads.join(&action.package.sha256);
        // Reported with the first bytes asked for: a package already here (an
        // earlier Download task) is not downloaded again.
        let mut started = false;
        let mut last = std::time::Instant::now();
        let mut last_pct = 0u8;
        let mut progress = |got: u64, total: u64| {
            if !started {
                started = true;
                self.report(
                    &action,
                    Phase::Download,
                    FeedbackState::Started,
                    None,
                    Some(0),
                );
            }
            let pct = (got.saturating_mul(100) / total.max(1)).min(100) as u8;
            if pct != last_pct && (last.elapsed() >= PROGRESS_EVERY || pct == 100) {
                last = std::time::Instant::now();
                last_pct = pct;
                self.report(
                    &action,
                    Phase::Download,
                    FeedbackState::Progress,
                    Some(format!("{got} of {total} bytes")),
                    Some(pct),
                );
            }
        };
        let expected = Expected {
            sha256: action.package.sha256.clone(),
            size,
        };
        let poll = self.config.poll.clone();
        let backoff = move |n: u32| poll.backoff(n);
        let me = Arc::clone(self);
        let action_id = action.action_id;
        let keep_going = move || !me.outbox.is_inactive(action_id);
        let downloaded = download::fetch_with_retries(
            &self.client,
            &action.package.url,
            &dest,
            &expected,
            &mut progress,
            &backoff,
            &keep_going,
        )
        .await;
        match downloaded {
            Ok(d) => {
                if !d.present {
                    if !started {
                        // A part file that was already whole: no bytes were asked for.
                        self.report(
                            &action,
                            Phase::Download,
                            FeedbackState::Started,
                            None,
                            Some(0),
                        );
                    }
                    let mut msg = match &signed {
                        Some(t) => {
                            format!("{size} bytes, length and sha256 as signed by {}", t.role)
                        }
                        None => format!(
                            "{size} bytes, sha256 verified (unsigned: insecure_unsigned is set)"
                        ),
                    };
                    if d.resumed_from > 0 {
                        msg.push_str(&format!(", resumed from byte {}", d.resumed_from));
                    }
                    self.report(
                        &action,
                        Phase::Download,
                        FeedbackState::Ok,
                        Some(msg),
                        Some(100),
                    );
                }
            }
            Err(e) if self.outbox.is_inactive(action.action_id) => {
                tracing::info!("{name}: the task is no longer active; download stopped: {e}");
                return;
            }
            Err(e) => {
                if matches!(e, DownloadError::Corrupt { .. }) {
                    tracing::warn!("{e}");
                }
                self.fail(&action, Phase::Download, e.to_string());
                return;
            }
        }

        let step_now = Arc::new(Mutex::new(Phase::Inspect));
        let sink: Arc<dyn EventSink> = Arc::new(ProgressSink {
            agent: Arc::clone(self),
            action: action.clone(),
            step: step_now.clone(),
            last: Mutex::new(None),
        });
        let (env, _) = self.env(&loaded, Some(sink));
        let observer = FeedbackObserver {
            agent: Arc::clone(self),
            action: action.clone(),
            step: step_now,
        };
        let prompter: Arc<dyn Prompter> = self.prompter.clone();
        let pipeline = Pipeline {
            plugin: &plugin,
            env,
            settings: Settings {
                state_dir: self.paths.root.clone(),
                staging,
                prompter: Some(prompter),
                consent_timeout: self.config.cashier.consent_timeout(),
                deadline: posup_runtime::Step::default_deadline,
                fail_after: None,
            },
            observer: Some(&observer),
        };
        let task = match action.kind {
            TaskKind::Download => posup_runtime::types::TaskKind::Download,
            TaskKind::Update => posup_runtime::types::TaskKind::Update,
            TaskKind::ForcedUpdate => posup_runtime::types::TaskKind::ForcedUpdate,
        };
        let result = pipeline
            .run(&UpdateRequest {
                package: dest,
                file_name: Some(name.clone()),
                sha256: Some(action.package.sha256.clone()),
                task,
                skip_installed: true,
                signed,
            })
            .await;
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                // The journal or staging could not be written, or the package
                // changed on disk after its check: nothing was run.
                let phase = match e {
                    PipelineError::Changed { .. } => Phase::Download,
                    PipelineError::Io { .. } => Phase::Precheck,
                };
                self.fail(&action, phase, e.to_string());
                return;
            }
        };
        match &result {
            UpdateResult::Committed { version } | UpdateResult::AlreadyInstalled { version } => {
                let message = if matches!(result, UpdateResult::AlreadyInstalled { .. }) {
                    format!("version {version} is already installed")
                } else {
                    format!("version {version} installed")
                };
                self.report(
                    &action,
                    Phase::Commit,
                    FeedbackState::Committed,
                    Some(message),
                    None,
                );
                self.done(&action, "committed");
                // Installed: the downloaded copy is no longer needed.
                if let Err(e) = std::fs::remove_file(downloads.join(&action.package.sha256))
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!("removing the downloaded {name}: {e}");
                }
            }
            UpdateResult::Staged { version } => {
                self.report(
                    &action,
                    Phase::Stage,
                    FeedbackState::Committed,
                    Some(format!("{name} (version {version}) downloaded and staged")),
                    None,
                );
                self.done(&action, "staged");
            }
            UpdateResult::NotNow {
                reason,
                retry_after,
            } => {
                if self.outbox.is_inactive(action.action_id) {
                    return;
                }
                let retry = (*retry_after).max(Duration::from_secs(1));
                self.record(
                    &action,
                    ActionRecord::Waiting {
                        attempt: action.attempt,
                        retry_at: (Utc::now() + retry).timestamp_millis(),
                        reason: reason.clone(),
                    },
                );
            }
            UpdateResult::Declined => {
                let retry = self.config.cashier.ask_again();
                self.record(
                    &action,
                    ActionRecord::Waiting {
                        attempt: action.attempt,
                        retry_at: (Utc::now() + retry).timestamp_millis(),
                        reason: "declined by the cashier".into(),
                    },
                );
            }
            UpdateResult::Failed {
                step, rolled_back, ..
            } => {
                let state = if *rolled_back {
                    FeedbackState::RolledBack
                } else {
                    FeedbackState::Failed
                };
                let msg = result.summary(name);
                let step = if *rolled_back { Phase::Rollback } else { *step };
                self.report(&action, step, state, Some(msg), None);
                self.done(
                    &action,
                    if *rolled_back {
                        "rolled-back"
                    } else {
                        "failed"
                    },
                );
            }
            UpdateResult::RollbackFailed { .. } => {
                let msg = result.summary(name);
                self.report(
                    &action,
                    Phase::Rollback,
                    FeedbackState::Failed,
                    Some(msg),
                    None,
                );
                self.done(&action, "rollback-failed");
            }
        }
    }
}

/// Turns the pipeline's steps into reports.
pub(super) struct FeedbackObserver {
    agent: Arc<Agent>,
    action: Action,
    /// The step under way, for the plugin's progress reports.
    step: Arc<Mutex<Phase>>,
}

impl Observer for FeedbackObserver {
    fn step(&self, r: &StepReport) {
        let ask_again = self.agent.config.cashier.ask_again();
        let (state, message, retry_after) = match r.result {
            StepResult::Ok => (FeedbackState::Ok, r.message.clone(), None),
            StepResult::Declined => (
                FeedbackState::NotNow,
                format!("{}; asking again in {} s", r.message, ask_again.as_secs()),
                Some(ask_again),
            ),
            StepResult::NotNow => (FeedbackState::NotNow, r.message.clone(), r.retry_after),
            StepResult::Failed => (FeedbackState::Failed, r.message.clone(), None),
        };
        let message = (!message.is_empty()).then_some(message);
        self.agent
            .report_retry(&self.action, r.step, state, message, None, retry_after);
    }

    fn started(&self, step: Phase, _attempt: u32) {
        *self.step.lock().expect("step lock") = step;
        self.agent.report(
            &self.action,
            step,
            FeedbackState::Started,
            Some(format!("{step} started")),
            None,
        );
    }

    fn proceed(&self) -> bool {
        !self.agent.outbox.is_inactive(self.action.action_id)
    }
}

/// Forwards the plugin's progress of the running step, at most every
/// [`PROGRESS_EVERY`] unless it reached 100 %.
pub(super) struct ProgressSink {
    agent: Arc<Agent>,
    action: Action,
    step: Arc<Mutex<Phase>>,
    last: Mutex<Option<std::time::Instant>>,
}

impl EventSink for ProgressSink {
    fn log(&self, _plugin: &str, _level: Level, _message: &str) {}

    fn progress(&self, _plugin: &str, percent: u8, message: &str) {
        {
            let mut last = self.last.lock().expect("progress lock");
            if last.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        let step = *self.step.lock().expect("step lock");
        self.agent.report(
            &self.action,
            step,
            FeedbackState::Progress,
            (!message.is_empty()).then(|| message.to_owned()),
            Some(percent.min(100)),
        );
    }
}
