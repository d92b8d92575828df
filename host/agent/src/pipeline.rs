//! One update of one product on one terminal, step by step, journalled.
//!
//! `inspect → precheck → stage → (consent) → apply → verify → commit`, or
//! `rollback` after a failure from `stage` on. A Download task stops after `stage`;
//! a Forced update skips the question. The same pipeline runs under the agent and
//! under `posup apply`.
//!
//! Crash safety: each step is journalled as started before it is called and as
//! ended after it answered. A pipeline started again for the same update finds the
//! interrupted step in the journal and
//! - re-runs it when it is `precheck`, `stage`, `commit` or `rollback` (all must be
//!   idempotent, and none of them leaves the product half-changed by itself);
//! - rolls back when it is `apply` or `verify`: the product may be half-applied or
//!   unverified, and the known-good state is the one before the update.
//!
//! The installation therefore ends fully old or fully new, never in between.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use posup_runtime::caps::prompt::Prompter;
use posup_runtime::grants::guest_root;
use posup_runtime::types::{Dir, Outcome, PackageInfo, StepContext, TaskKind};
use posup_runtime::{HostEnv, Plugin, Step, StepError};

use posup_proto::Phase;
use posup_trust::client::SignedTarget;

use crate::journal::{Event, Finish, Journal, UpdateKey};

/// What to update with what.
#[derive(Debug, Clone)]
pub struct UpdateRequest {
    /// The package file on the host. It is copied into the staging directory when it
    /// is not there already.
    pub package: PathBuf,
    /// The name the package has under `/staging` (the file name the server
    /// announced); the package path's own name when `None`.
    pub file_name: Option<String>,
    /// The sha256 the package was verified against when it was delivered (the
    /// agent's download). The copy placed in staging is hashed as it is written
    /// and must match it, so the bytes the plugin sees are the bytes verified.
    /// `None`: a local file (`posup apply`), taken as it is.
    pub sha256: Option<String>,
    pub task: TaskKind,
    /// An update of the version already installed finishes at once, with no step
    /// run and no downtime (the agent's tasks: a pilot device in the next wave,
    /// say). `posup apply` runs the steps anyway.
    pub skip_installed: bool,
    /// The package as the fleet's signed metadata names it: a version older than
    /// the one installed is refused unless the release role signed it as a
    /// downgrade, so a server cannot roll a terminal back on its own.
    pub signed: Option<SignedTarget>,
}

/// How a pipeline run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateResult {
    /// The update is installed and final.
    Committed { version: String },
    /// Download task: the package is staged, nothing is installed yet.
    Staged { version: String },
    /// Not now: nothing was changed; try again after `retry_after`.
    NotNow {
        reason: String,
        retry_after: Duration,
    },
    /// The version is installed already: nothing was run or changed.
    AlreadyInstalled { version: String },
    /// The cashier declined; ask again later.
    Declined,
    /// The update failed in `step`; the installation is as it was before (rolled
    /// back, or never touched).
    Failed {
        step: Phase,
        reason: String,
        rolled_back: bool,
        installed: Installed,
    },
    /// The update failed and so did its rollback: the terminal needs a person.
    RollbackFailed {
        step: Phase,
        reason: String,
        rollback: String,
        installed: Installed,
    },
}

/// The version the plugin's inventory reported once an update failed, or why it
/// could not be read.
pub type Installed = Result<String, String>;

/// The summary's tail naming what runs after a failure.
fn installed_tail(installed: &Installed) -> String {
    match installed {
        Ok(v) => format!("; installed version: {v}"),
        Err(e) => format!("; the installed version cannot be read: {e}"),
    }
}

impl UpdateResult {
    /// `posup apply`'s exit code: 0 committed or staged, 3 not now or declined
    /// (nothing changed), 1 failed and restored, 4 the rollback failed too.
    pub fn exit_code(&self) -> i32 {
        match self {
            UpdateResult::Committed { .. }
            | UpdateResult::Staged { .. }
            | UpdateResult::AlreadyInstalled { .. } => 0,
            UpdateResult::NotNow { .. } | UpdateResult::Declined => 3,
            UpdateResult::Failed { .. } => 1,
            UpdateResult::RollbackFailed { .. } => 4,
        }
    }

    /// One line for operators.
    pub fn summary(&self, package: &str) -> String {
        match self {
            UpdateResult::Committed { version } => {
                format!("{package}: version {version} installed")
            }
            UpdateResult::Staged { version } => {
                format!("{package}: version {version} downloaded and staged")
            }
            UpdateResult::AlreadyInstalled { version } => {
                format!("{package}: version {version} is already installed; nothing was changed")
            }
            UpdateResult::NotNow {
                reason,
                retry_after,
            } => format!(
                "{package}: not now: {reason}; nothing was changed, try again in {} s",
                retry_after.as_secs()
            ),
            UpdateResult::Declined => {
                format!(
                    "{package}: the cashier declined the update; nothing was changed, ask again later"
                )
            }
            UpdateResult::Failed {
                step,
                reason,
                rolled_back,
                installed,
            } => {
                let restored = if *rolled_back {
                    "the installation was rolled back to its previous state"
                } else {
                    "the installation was not changed"
                };
                format!(
                    "{package}: {step} failed: {reason}; {restored}{}",
                    installed_tail(installed)
                )
            }
            UpdateResult::RollbackFailed {
                step,
                reason,
                rollback,
                installed,
            } => format!(
                "{package}: {step} failed: {reason}; the rollback failed too: {rollback}; the terminal needs attention{}",
                installed_tail(installed)
            ),
        }
    }
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepResult {
    Ok,
    NotNow,
    Failed,
    /// The cashier said no (consent only).
    Declined,
}

impl StepResult {
    /// As `posup apply --json` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            StepResult::Ok => "ok",
            StepResult::NotNow => "not-now",
            StepResult::Failed => "failed",
            StepResult::Declined => "declined",
        }
    }
}

impl std::fmt::Display for StepResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finished step, as `--json` prints it and the agent reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepReport {
    pub step: Phase,
    pub attempt: u32,
    pub result: StepResult,
    pub message: String,
    pub duration: Duration,
    /// With `not-now`: the plugin's retry-after.
    pub retry_after: Option<Duration>,
}

/// Sees each step as it starts and ends, and may stop an update before its
/// downtime.
pub trait Observer: Send + Sync {
    fn step(&self, report: &StepReport);

    /// A step was journalled as started and is about to run.
    fn started(&self, _step: Phase, _attempt: u32) {}

    /// Asked before `precheck`, `stage` and the consent question: `false` stops the
    /// update there, with nothing changed (the agent's task was paused or deleted).
    /// Never asked once `apply` has begun: an update under way is finished or rolled
    /// back, not left half-done.
    fn proceed(&self) -> bool {
        true
    }
}

/// Settings of a pipeline run.
#[derive(Clone)]
pub struct Settings {
    /// Where the journal lives (`<state>/journal/<plugin>.json`).
    pub state_dir: PathBuf,
    /// The host path of `/staging`.
    pub staging: PathBuf,
    /// Who answers the consent question of Update tasks; `None`: nobody is at the
    /// terminal, which counts as consent (the UKM 5 rule).
    pub prompter: Option<Arc<dyn Prompter>>,
    /// How long the cashier has to answer.
    pub consent_timeout: Duration,
    pub deadline: fn(Step) -> Duration,
    /// Fault injection for `posup plugin test`: after this step answers `ok`,
    /// the host takes it as failed and rolls back, so a vendor sees the rollback
    /// from every point of the update. `None` on terminals.
    pub fail_after: Option<Step>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("state_dir", &self.state_dir)
            .field("staging", &self.staging)
            .field("consent_timeout", &self.consent_timeout)
            .field("fail_after", &self.fail_after)
            .finish_non_exhaustive()
    }
}

/// The consent question in the store's language; English when it has none.
pub fn consent_question(version: &str, language: Option<&str>) -> String {
    match language {
        Some("ru") => format!(
            "Готово обновление до версии {version}. На время установки терминал выйдет из работы. Обновить сейчас?"
        ),
        _ => format!(
            "An update to version {version} is ready. The terminal leaves service while it installs. Update now?"
        ),
    }
}

/// A failure of the pipeline itself, not of the update: the journal or the staging
/// folder could not be written, or the package is not the one verified.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(
        "{package} is not the package verified on delivery (sha256 {found}, verified {expected}); it was removed from staging and nothing was run"
    )]
    Changed {
        package: String,
        expected: String,
        found: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PipelineError {
    let what = what.into();
    move |source| PipelineError::Io { what, source }
}

/// Runs one update through a plugin.
pub struct Pipeline<'a> {
    pub plugin: &'a Plugin,
    pub env: HostEnv,
    pub settings: Settings,
    pub observer: Option<&'a dyn Observer>,
}

impl std::fmt::Debug for Pipeline<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("plugin", &self.plugin.name())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

enum Next {
    Go,
    Stop(UpdateResult),
}

impl Pipeline<'_> {
    pub async fn run(&self, req: &UpdateRequest) -> Result<UpdateResult, PipelineError> {
        let file_name = match &req.file_name {
            Some(n) => n.clone(),
            None => req
                .package
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| PipelineError::Io {
                    what: format!("package {}", req.package.display()),
                    source: std::io::Error::other("the package path has no file name"),
                })?
                .to_owned(),
        };
        let (staged, package_sha256) = self.stage_package(&req.package, &file_name)?;
        if let Some(expected) = &req.sha256
            && *expected != package_sha256
        {
            remove_file(&staged);
            return Err(PipelineError::Changed {
                package: file_name,
                expected: expected.clone(),
                found: package_sha256,
            });
        }
        let guest = format!("{}/{file_name}", guest_root(Dir::Staging));

        let started = Instant::now();
        let info = match self.plugin.inspect(&self.env, &guest).await {
            Ok(Ok(info)) => {
                self.report(
                    Phase::Inspect,
                    1,
                    StepResult::Ok,
                    &format!("{} {}", info.kind, info.version),
                    started,
                );
                info
            }
            Ok(Err(reason)) => {
                self.report(Phase::Inspect, 1, StepResult::Failed, &reason, started);
                return Ok(UpdateResult::Failed {
                    step: Phase::Inspect,
                    reason,
                    rolled_back: false,
                    installed: self.installed().await,
                });
            }
            Err(e) => {
                self.report(
                    Phase::Inspect,
                    1,
                    StepResult::Failed,
                    &e.to_string(),
                    started,
                );
                return Ok(UpdateResult::Failed {
                    step: Phase::Inspect,
                    reason: e.to_string(),
                    rolled_back: false,
                    installed: self.installed().await,
                });
            }
        };

        let key = UpdateKey {
            plugin_sha256: self.plugin.digest().to_owned(),
            package_sha256,
            package: file_name.clone(),
            task: wire_task(req.task),
        };
        let path = Journal::path(&self.settings.state_dir, self.plugin.name());
        let resumed =
            match Journal::load(&path).map_err(io(format!("reading {}", path.display())))? {
                Some(j) if j.record.finished.is_none() && j.record.key == key => Some(j),
                Some(j) if j.record.finished.is_none() => {
                    // Another update of this product is unfinished. It is settled first:
                    // rolled back when it may have touched the installation.
                    let guest = guest_of(&j.record.key.package);
                    self.settle_other(j, &guest).await?;
                    None
                }
                _ => None,
            };
        let mut journal = match resumed {
            Some(j) => j,
            None => {
                // An update about to begin (not one a crash interrupted) is
                // measured against what is installed first.
                if let Some(stop) = self.measure(req, &file_name, &info).await {
                    remove_file(&staged);
                    return Ok(stop);
                }
                Journal::create(&path, key, &info.version)
                    .map_err(io(format!("writing {}", path.display())))?
            }
        };

        let ctx = |attempt: u32| StepContext {
            package: guest.clone(),
            info: info.clone(),
            task: req.task,
            attempt,
        };

        // Resume after a crash.
        if let Some(entry) = journal.interrupted().cloned() {
            tracing::warn!(step = %entry.step, "resuming an update interrupted during {}", entry.step);
            match entry.step {
                Phase::Apply | Phase::Verify => {
                    let reason = format!(
                        "interrupted during {} (attempt {})",
                        entry.step, entry.attempt
                    );
                    return self.roll_back(&mut journal, &ctx, entry.step, reason).await;
                }
                Phase::Rollback => {
                    let reason = journal
                        .record
                        .entries
                        .iter()
                        .rev()
                        .find(|e| e.event == Event::Failed)
                        .map(|e| e.message.clone())
                        .unwrap_or_else(|| "interrupted".into());
                    let failed_step = journal
                        .record
                        .entries
                        .iter()
                        .rev()
                        .find(|e| e.event == Event::Failed)
                        .map(|e| e.step)
                        .unwrap_or(Phase::Apply);
                    return self
                        .roll_back(&mut journal, &ctx, failed_step, reason)
                        .await;
                }
                _ => {}
            }
        }

        let plan: &[Step] = match req.task {
            TaskKind::Download => &[Step::Stage],
            TaskKind::Update | TaskKind::ForcedUpdate => &[
                Step::Precheck,
                Step::Stage,
                Step::Apply,
                Step::Verify,
                Step::Commit,
            ],
        };
        for &step in plan {
            if journal
                .last(phase(step))
                .is_some_and(|e| e.event == Event::Ok)
            {
                continue;
            }
            if matches!(step, Step::Precheck | Step::Stage | Step::Apply)
                && journal.last(Phase::Apply).is_none()
                && !self.observer.is_none_or(|o| o.proceed())
            {
                journal
                    .finish(Finish::Abandoned)
                    .map_err(io("writing the journal"))?;
                return Ok(UpdateResult::NotNow {
                    reason: "the task is no longer active on the server".into(),
                    retry_after: Duration::ZERO,
                });
            }
            if step == Step::Apply && req.task == TaskKind::Update {
                match self.consent(&mut journal, &info).await? {
                    Next::Go => {}
                    Next::Stop(result) => return Ok(result),
                }
            }
            match self.run_step(&mut journal, step, &ctx).await? {
                Next::Go => {}
                Next::Stop(result) => return Ok(result),
            }
        }
        let result = if req.task == TaskKind::Download {
            journal
                .finish(Finish::Staged)
                .map_err(io("writing the journal"))?;
            UpdateResult::Staged {
                version: info.version,
            }
        } else {
            journal
                .finish(Finish::Committed)
                .map_err(io("writing the journal"))?;
            remove_file(&staged);
            UpdateResult::Committed {
                version: info.version,
            }
        };
        Ok(result)
    }

    /// Runs one step; on failure decides between stopping, not-now and rollback.
    async fn run_step(
        &self,
        journal: &mut Journal,
        step: Step,
        ctx: &(dyn Fn(u32) -> StepContext + Sync),
    ) -> Result<Next, PipelineError> {
        let attempt = journal.attempts(phase(step)) + 1;
        journal
            .push(phase(step), Event::Started, attempt, "")
            .map_err(io("writing the journal"))?;
        if let Some(o) = self.observer {
            o.started(phase(step), attempt);
        }
        let started = Instant::now();
        let outcome = self
            .plugin
            .step(
                &self.env,
                step,
                &ctx(attempt),
                (self.settings.deadline)(step),
            )
            .await;
        let outcome = match outcome {
            Ok(Outcome::Ok) if self.settings.fail_after == Some(step) => Ok(Outcome::Failed(
                format!("failed on purpose after {step} (posup plugin test)"),
            )),
            other => other,
        };
        let (event, message) = outcome_event(&outcome);
        journal
            .push(phase(step), event, attempt, &message)
            .map_err(io("writing the journal"))?;
        let retry_after = match &outcome {
            Ok(Outcome::NotNow(nn)) => Some(Duration::from_secs(nn.retry_after_secs.into())),
            _ => None,
        };
        self.report_step(
            phase(step),
            attempt,
            event_result(event),
            &message,
            started,
            retry_after,
        );
        match (event, &outcome) {
            (Event::Ok, _) => Ok(Next::Go),
            (Event::NotNow, Ok(Outcome::NotNow(nn)))
                if matches!(step, Step::Precheck | Step::Stage) =>
            {
                journal
                    .finish(Finish::NotNow)
                    .map_err(io("writing the journal"))?;
                Ok(Next::Stop(UpdateResult::NotNow {
                    reason: nn.reason.clone(),
                    retry_after: Duration::from_secs(nn.retry_after_secs.into()),
                }))
            }
            _ if step == Step::Precheck => {
                journal
                    .finish(Finish::Failed)
                    .map_err(io("writing the journal"))?;
                Ok(Next::Stop(UpdateResult::Failed {
                    step: phase(step),
                    reason: message,
                    rolled_back: false,
                    installed: self.installed().await,
                }))
            }
            _ if step == Step::Commit => {
                // The update was verified; a failed commit leaves only clean-up
                // undone. Rolling back a verified update would be the greater harm.
                journal
                    .finish(Finish::Committed)
                    .map_err(io("writing the journal"))?;
                tracing::warn!("commit failed after a verified update: {message}");
                Ok(Next::Go)
            }
            _ => {
                let reason = if event == Event::NotNow {
                    format!("answered not-now during {step}: {message}")
                } else {
                    message
                };
                Ok(Next::Stop(
                    self.roll_back(journal, ctx, phase(step), reason).await?,
                ))
            }
        }
    }

    async fn roll_back(
        &self,
        journal: &mut Journal,
        ctx: &(dyn Fn(u32) -> StepContext + Sync),
        failed_step: Phase,
        reason: String,
    ) -> Result<UpdateResult, PipelineError> {
        let step = Step::Rollback;
        let attempt = journal.attempts(phase(step)) + 1;
        journal
            .push(phase(step), Event::Started, attempt, &reason)
            .map_err(io("writing the journal"))?;
        if let Some(o) = self.observer {
            o.started(phase(step), attempt);
        }
        let started = Instant::now();
        let outcome = self
            .plugin
            .step(
                &self.env,
                step,
                &ctx(attempt),
                (self.settings.deadline)(step),
            )
            .await;
        let (event, message) = outcome_event(&outcome);
        journal
            .push(phase(step), event, attempt, &message)
            .map_err(io("writing the journal"))?;
        self.report(phase(step), attempt, event_result(event), &message, started);
        if event == Event::Ok {
            journal
                .finish(Finish::RolledBack)
                .map_err(io("writing the journal"))?;
            Ok(UpdateResult::Failed {
                step: failed_step,
                reason,
                rolled_back: true,
                installed: self.installed().await,
            })
        } else {
            journal
                .finish(Finish::RollbackFailed)
                .map_err(io("writing the journal"))?;
            Ok(UpdateResult::RollbackFailed {
                step: failed_step,
                reason,
                rollback: message,
                installed: self.installed().await,
            })
        }
    }

    /// Whether an update about to begin stops before its first step: the version
    /// is installed already, or it is older than the installed one without the
    /// release role's word. Download tasks install nothing and are not measured.
    async fn measure(
        &self,
        req: &UpdateRequest,
        file_name: &str,
        info: &PackageInfo,
    ) -> Option<UpdateResult> {
        if req.task == TaskKind::Download || (!req.skip_installed && req.signed.is_none()) {
            return None;
        }
        // An inventory that cannot be read measures nothing: precheck, which
        // reads the product itself, decides then.
        let inventory = match self.plugin.inventory(&self.env).await {
            Ok(Ok(inv)) => inv,
            Ok(Err(e)) => {
                tracing::warn!("{file_name}: the installed version cannot be read: {e}");
                return None;
            }
            Err(e) => {
                tracing::warn!("{file_name}: the installed version cannot be read: {e}");
                return None;
            }
        };
        // A module package (Openbravo's) is measured against its module, not the
        // product's computed version.
        let modules: Vec<(String, String)> = inventory
            .modules
            .into_iter()
            .map(|m| (m.name, m.version))
            .collect();
        let installed =
            posup_policy::version::installed_for(file_name, &inventory.version, &modules);
        if let Some(t) = &req.signed
            && let Err(reason) = posup_trust::decide::downgrade(installed, t)
        {
            return Some(UpdateResult::Failed {
                step: Phase::Inspect,
                reason,
                rolled_back: false,
                installed: Ok(installed.to_owned()),
            });
        }
        (req.skip_installed && !installed.is_empty() && installed == info.version).then(|| {
            UpdateResult::AlreadyInstalled {
                version: info.version.clone(),
            }
        })
    }

    /// The version installed now, for the summary of a failed update.
    async fn installed(&self) -> Installed {
        match self.plugin.inventory(&self.env).await {
            Ok(Ok(inv)) => Ok(inv.version),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Asks the person at the terminal before the downtime of an Update task.
    async fn consent(
        &self,
        journal: &mut Journal,
        info: &PackageInfo,
    ) -> Result<Next, PipelineError> {
        if journal
            .last(Phase::Consent)
            .is_some_and(|e| e.event == Event::Ok)
        {
            return Ok(Next::Go);
        }
        let started = Instant::now();
        let answer = match &self.settings.prompter {
            Some(p) => {
                let language = self
                    .env
                    .vars
                    .get(posup_proto::agent::LANGUAGE_VARIABLE)
                    .map(String::as_str);
                let question = consent_question(&info.version, language);
                let timeout = self.settings.consent_timeout;
                tokio::time::timeout(timeout, p.ask(&question, timeout))
                    .await
                    .unwrap_or(None)
            }
            None => None,
        };
        match answer {
            Some(false) => {
                journal
                    .push(Phase::Consent, Event::NotNow, 1, "declined by the cashier")
                    .map_err(io("writing the journal"))?;
                journal
                    .finish(Finish::Declined)
                    .map_err(io("writing the journal"))?;
                self.report(
                    Phase::Consent,
                    1,
                    StepResult::Declined,
                    "declined by the cashier",
                    started,
                );
                Ok(Next::Stop(UpdateResult::Declined))
            }
            answer => {
                let message = if answer.is_some() {
                    "accepted by the cashier"
                } else {
                    "nobody answered: updating"
                };
                journal
                    .push(Phase::Consent, Event::Ok, 1, message)
                    .map_err(io("writing the journal"))?;
                self.report(Phase::Consent, 1, StepResult::Ok, message, started);
                Ok(Next::Go)
            }
        }
    }

    /// Settles an unfinished update of another package before a new one starts.
    async fn settle_other(&self, mut journal: Journal, guest: &str) -> Result<(), PipelineError> {
        let touched = journal
            .record
            .entries
            .iter()
            .any(|e| matches!(e.step, Phase::Apply | Phase::Verify | Phase::Rollback));
        if !touched {
            return journal
                .finish(Finish::Abandoned)
                .map_err(io("writing the journal"));
        }
        // Its package must still be staged: the rollback needs its context.
        let staging_file = self.settings.staging.join(&journal.record.key.package);
        let info = match self.plugin.inspect(&self.env, guest).await {
            Ok(Ok(info)) if staging_file.exists() => info,
            _ => PackageInfo {
                version: journal.record.version.clone(),
                kind: String::new(),
                notes: String::new(),
                changelog: String::new(),
                rollback: true,
            },
        };
        let task = match journal.record.key.task {
            posup_proto::TaskKind::ForcedUpdate => TaskKind::ForcedUpdate,
            _ => TaskKind::Update,
        };
        let guest = guest.to_owned();
        let ctx = move |attempt| StepContext {
            package: guest.clone(),
            info: info.clone(),
            task,
            attempt,
        };
        self.roll_back(
            &mut journal,
            &ctx,
            Phase::Apply,
            "superseded by a newer update".into(),
        )
        .await
        .map(|_| ())
    }

    /// Puts the package into the staging directory, where the plugin sees it, and
    /// returns its path there and the sha256 of what was placed.
    fn stage_package(
        &self,
        package: &Path,
        file_name: &str,
    ) -> Result<(PathBuf, String), PipelineError> {
        std::fs::create_dir_all(&self.settings.staging)
            .map_err(io(format!("creating {}", self.settings.staging.display())))?;
        crate::staging::place(package, &self.settings.staging, file_name).map_err(io(format!(
            "placing package {} into {} as {file_name}",
            package.display(),
            self.settings.staging.display()
        )))
    }

    fn report(
        &self,
        step: Phase,
        attempt: u32,
        result: StepResult,
        message: &str,
        started: Instant,
    ) {
        self.report_step(step, attempt, result, message, started, None);
    }

    fn report_step(
        &self,
        step: Phase,
        attempt: u32,
        result: StepResult,
        message: &str,
        started: Instant,
        retry_after: Option<Duration>,
    ) {
        if let Some(o) = self.observer {
            o.step(&StepReport {
                step,
                attempt,
                result,
                message: message.to_owned(),
                duration: started.elapsed(),
                retry_after,
            });
        }
    }
}

/// Where the plugin sees a package placed in staging.
fn guest_of(package: &str) -> String {
    format!("{}/{package}", guest_root(Dir::Staging))
}

/// The task kind as the journal and the wire name it.
fn wire_task(task: TaskKind) -> posup_proto::TaskKind {
    match task {
        TaskKind::Download => posup_proto::TaskKind::Download,
        TaskKind::Update => posup_proto::TaskKind::Update,
        TaskKind::ForcedUpdate => posup_proto::TaskKind::ForcedUpdate,
    }
}

/// The phase of a plugin step.
pub fn phase(step: Step) -> Phase {
    match step {
        Step::Precheck => Phase::Precheck,
        Step::Stage => Phase::Stage,
        Step::Apply => Phase::Apply,
        Step::Verify => Phase::Verify,
        Step::Commit => Phase::Commit,
        Step::Rollback => Phase::Rollback,
    }
}

fn outcome_event(outcome: &Result<Outcome, StepError>) -> (Event, String) {
    match outcome {
        Ok(Outcome::Ok) => (Event::Ok, String::new()),
        Ok(Outcome::NotNow(nn)) => (Event::NotNow, nn.reason.clone()),
        Ok(Outcome::Failed(reason)) => (Event::Failed, reason.clone()),
        Err(e) => (Event::Failed, e.to_string()),
    }
}

fn event_result(event: Event) -> StepResult {
    match event {
        Event::Ok => StepResult::Ok,
        Event::NotNow => StepResult::NotNow,
        Event::Failed | Event::Started => StepResult::Failed,
    }
}

fn remove_file(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("removing {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::consent_question;

    #[test]
    fn the_cashier_is_asked_in_the_stores_language() {
        assert!(
            consent_question("1.8.4", Some("ru")).starts_with("Готово обновление до версии 1.8.4.")
        );
        assert!(consent_question("1.8.4", None).ends_with("Update now?"));
        assert!(consent_question("1.8.4", Some("de")).starts_with("An update to version 1.8.4"));
    }
}
