//! The agent: enrolls the terminal, polls the server, runs the actions it is
//! given through the update pipeline, and reports back.
//!
//! ```text
//!  poll loop ──(every interval ± jitter; backoff while the server is away)──┐
//!    inventory (plugin) → POST /poll → variables, configuration, actions     │
//!    └─ a due action and no work under way → worker ───────────────────────┘
//!  worker: refresh signed metadata (TUF, from the installed root) → plugin and
//!          package must be signed targets → download (Range resume, signed length
//!          and sha256) → pipeline (the verified package and its signed release;
//!          it refuses an unsigned downgrade and skips a version installed)
//!          every step → outbox (on disk) → sender → POST /feedback
//! ```
//!
//! **Invariant:** with a trusted root configured, no plugin is loaded and no
//! package reaches staging unless the metadata refreshed for it lists its name for
//! this device type with its length and sha256, signed by the role delegated
//! that name. The server's URL, sha256 and size are hints; a refusal is reported
//! as a failure naming the role and the reason.
//!
//! One action runs at a time: a terminal updates one product at a time. The poll
//! loop goes on while it runs, so the server keeps seeing the terminal, variables
//! arrive, and a task paused on the server stops the action before its downtime.
//!
//! **Invariant:** what the agent did is on disk before it is reported: the journal
//! for each step, the outbox for each report, the state file for each action's end.
//! An agent killed anywhere starts again where it was.
//!
//! This file is the poll loop; `worker` runs one action, `plugins` loads the
//! plugins and works out their grants.

mod plugins;
mod worker;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use posup_proto::agent::{Action, AgentStatus, DeviceIdentity, EnrollRequest, PollRequest, Site};
use posup_proto::{Inventory, ModuleVersion};
use posup_runtime::Runtime;
use tokio::sync::Notify;

use crate::client::{Client, ClientError};
use crate::config::AgentConfig;
use crate::outbox::Outbox;
use crate::prompter::FilePrompter;
use crate::state::{ActionRecord, State, StateFile};

use plugins::Loaded;

/// The agent's version, reported to the server.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Download progress is reported at most this often, besides its end.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// The largest plugin component an agent downloads. A Python plugin is about
/// 20 MB; a server naming more is refused.
pub const MAX_PLUGIN_BYTES: u64 = 64 << 20;

/// How long one plugin download may take in all before the poll cycle moves on;
/// what arrived is kept and the next poll resumes it.
pub const PLUGIN_DOWNLOAD_TIME: Duration = Duration::from_secs(300);

/// Why the agent cannot run at all.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent state directory {dir}: {source}")]
    State { dir: String, source: std::io::Error },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Trust(#[from] posup_trust::TrustError),
}

/// Where the agent keeps each kind of state under its state directory.
#[derive(Debug, Clone)]
pub struct Paths {
    pub root: PathBuf,
}

impl Paths {
    pub fn outbox(&self) -> PathBuf {
        self.root.join("outbox")
    }
    pub fn plugins(&self) -> PathBuf {
        self.root.join("plugins")
    }
    pub fn kv(&self) -> PathBuf {
        self.root.join("kv")
    }
    pub fn run(&self) -> PathBuf {
        self.root.join("run")
    }
    pub fn prompt(&self) -> PathBuf {
        self.root.join("prompt")
    }
    pub fn cache(&self) -> PathBuf {
        self.root.join("cache")
    }
    /// Packages as downloaded and checked, by sha256: owner-only, so no plugin
    /// can plant anything in the download's way.
    /// The TUF metadata this terminal trusts so far (rollback protection).
    pub fn tuf(&self) -> PathBuf {
        self.root.join("tuf")
    }
    pub fn downloads(&self) -> PathBuf {
        self.root.join("downloads")
    }
}

/// A running agent. Shared between the poll loop, the worker and the sender.
pub struct Agent {
    config: AgentConfig,
    paths: Paths,
    client: Client,
    /// Checks every plugin and package against the fleet's signed metadata;
    /// `None` only with `insecure_unsigned`.
    trust: Option<posup_trust::client::TrustClient>,
    runtime: Runtime,
    state_file: StateFile,
    state: Mutex<State>,
    outbox: Outbox,
    prompter: Arc<FilePrompter>,
    /// Loaded plugins by sha256, with what their `info` said.
    plugins: tokio::sync::Mutex<HashMap<String, Loaded>>,
    /// The action the worker is on, if any.
    busy: Mutex<Option<i64>>,
    /// Woken when the worker finishes, so the loop looks for the next action at once.
    worker_done: Notify,
    /// The last inventory, reused while an update is under way.
    last_inventory: Mutex<Option<Result<Inventory, String>>>,
    /// A problem of the agent itself, reported with the next poll.
    problem: Mutex<Option<String>>,
    /// A `posup` binary that compiles plugins into the cache in a child process
    /// (`posup plugin compile`), so the compiler's memory never stays with the
    /// long-lived agent; `None`: compiled in this process.
    compiler: std::sync::OnceLock<PathBuf>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("server", &self.config.server)
            .field("state_dir", &self.paths.root)
            .finish_non_exhaustive()
    }
}

/// A runtime for an agent whose compiled plugins are cached under `state_dir`.
pub fn runtime_for(state_dir: &Path) -> Result<Runtime, posup_runtime::RuntimeError> {
    Runtime::new(posup_runtime::RuntimeConfig {
        cache_dir: Some(
            Paths {
                root: state_dir.to_owned(),
            }
            .cache(),
        ),
        ..posup_runtime::RuntimeConfig::default()
    })
}

impl Agent {
    /// Opens the agent's state; several agents may share one `runtime`.
    pub fn new(config: AgentConfig, runtime: Runtime) -> Result<Arc<Self>, AgentError> {
        let paths = Paths {
            root: config.state_dir.clone(),
        };
        let state_err = |source| AgentError::State {
            dir: paths.root.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&paths.root).map_err(state_err)?;
        let state_file = StateFile::new(&paths.root);
        let mut state = state_file.load().map_err(state_err)?;
        if config.device.guid.is_none() && state.guid.is_none() {
            state.guid = Some(format!(
                "{:016x}{:016x}",
                rand::random::<u64>(),
                rand::random::<u64>()
            ));
            state_file.save(&state).map_err(state_err)?;
        }
        let outbox = Outbox::open(&paths.outbox())
            .map_err(state_err)?
            .sending_every(config.poll.report_every());
        let client = Client::new(&config.server, &config.transport())?;
        client.set_token(state.token.clone());
        let prompter = Arc::new(FilePrompter::new(paths.prompt()));
        let trust = match &config.root {
            Some(root) => {
                posup_runtime::beneath::private_dir(&paths.tuf()).map_err(state_err)?;
                Some(posup_trust::client::TrustClient::new(
                    root,
                    client.base(),
                    client.http(),
                    paths.tuf(),
                )?)
            }
            None => {
                tracing::warn!(
                    "insecure_unsigned = true: plugins and packages are used without checking any signature"
                );
                None
            }
        };
        Ok(Arc::new(Self {
            config,
            paths,
            client,
            trust,
            runtime,
            state_file,
            state: Mutex::new(state),
            outbox,
            prompter,
            plugins: tokio::sync::Mutex::new(HashMap::new()),
            busy: Mutex::new(None),
            worker_done: Notify::new(),
            last_inventory: Mutex::new(None),
            problem: Mutex::new(None),
            compiler: std::sync::OnceLock::new(),
        }))
    }

    /// Compiles plugins with `posup plugin compile` of the binary `exe` in a child
    /// process instead of in this one.
    pub fn compile_with(&self, exe: PathBuf) {
        let _ = self.compiler.set(exe);
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// The terminal's GUID.
    pub fn guid(&self) -> String {
        self.config
            .device
            .guid
            .clone()
            .or_else(|| self.state.lock().expect("state lock").guid.clone())
            .expect("a GUID is set when the agent is created")
    }

    /// The server's id of this device, once enrolled.
    pub fn device_id(&self) -> Option<i64> {
        self.state.lock().expect("state lock").device_id
    }

    /// Reports not yet acknowledged by the server.
    pub fn unsent(&self) -> usize {
        self.outbox.len()
    }

    /// The server's variables for this device.
    pub fn vars(&self) -> std::collections::BTreeMap<String, String> {
        self.state.lock().expect("state lock").vars.clone()
    }

    fn save(&self, state: &State) {
        if let Err(e) = self.state_file.save(state) {
            tracing::error!("saving {}: {e}", self.state_file.path().display());
            *self.problem.lock().expect("problem lock") = Some(format!(
                "cannot save the agent state {}: {e}",
                self.state_file.path().display()
            ));
        }
    }

    fn update_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut state = self.state.lock().expect("state lock");
        let r = f(&mut state);
        self.save(&state);
        r
    }

    /// Runs until `shutdown` completes: polls, works, reports.
    pub async fn run(self: &Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        if let Err(e) = self.check_dirs() {
            tracing::error!("{e}; updates of this device type fail until it is fixed");
        }
        let sender = tokio::spawn(Arc::clone(self).send_loop());
        tokio::pin!(shutdown);
        let mut failures = 0u32;
        let mut worker: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            let wait = match self.cycle(&mut worker).await {
                Ok(wait) => {
                    failures = 0;
                    wait
                }
                Err(e) => {
                    failures += 1;
                    let wait = self.config.poll.backoff(failures);
                    tracing::warn!("{e}; trying again in {:.1} s", wait.as_secs_f64());
                    wait
                }
            };
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(wait) => {}
                _ = self.worker_done.notified() => {}
            }
        }
        // Work under way stops here; the journal lets the next start finish or roll
        // it back, and the outbox keeps what was not sent.
        if let Some(w) = worker {
            w.abort();
        }
        sender.abort();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.outbox.flush(&self.client)).await;
    }

    /// One poll cycle, then the due action to its end, then the reports sent: the
    /// agent's `--once`. Fails when the server could not be reached or a report
    /// could not be delivered (it stays in the outbox for the next run).
    pub async fn once(self: &Arc<Self>) -> Result<(), ClientError> {
        let mut worker = None;
        self.cycle(&mut worker).await?;
        if let Some(w) = worker {
            let _ = w.await;
        }
        self.outbox.flush(&self.client).await?;
        Ok(())
    }

    /// Sends reports as they are queued (a burst together, see `outbox`),
    /// retrying with backoff while the server is away.
    async fn send_loop(self: Arc<Self>) {
        let mut failures = 0u32;
        loop {
            let notified = self.outbox.queued.notified();
            if self.outbox.is_empty() {
                notified.await;
                continue;
            }
            if !self.client.has_token() {
                tokio::time::sleep(self.config.poll.backoff(1)).await;
                continue;
            }
            match self.outbox.send_when_due(&self.client).await {
                Ok(_) => failures = 0,
                Err(e) => {
                    failures += 1;
                    if matches!(e, ClientError::Unauthorized { .. }) {
                        self.forget_token();
                    }
                    let wait = self.config.poll.backoff(failures);
                    tracing::info!("reports wait: {e}; next try in {:.1} s", wait.as_secs_f64());
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    fn forget_token(&self) {
        self.client.set_token(None);
        self.update_state(|s| s.token = None);
    }

    async fn enroll(&self) -> Result<(), ClientError> {
        let d = &self.config.device;
        let req = EnrollRequest {
            secret: self.config.enrollment_secret.clone(),
            device: DeviceIdentity {
                guid: self.guid(),
                site: Site {
                    name: d.site.clone(),
                    address: d.address.clone(),
                },
                name: d.name.clone(),
                number: d.number,
                device_type: d.device_type.clone(),
                agent_version: AGENT_VERSION.into(),
            },
        };
        let resp = self.client.enroll(&req).await?;
        self.client.set_token(Some(resp.token.clone()));
        self.update_state(|s| {
            s.device_id = Some(resp.device_id);
            s.token = Some(resp.token);
        });
        tracing::info!(
            device_id = resp.device_id,
            "enrolled with {}",
            self.client.base()
        );
        Ok(())
    }

    /// One cycle: enroll when needed, poll, take in what the server sent, start
    /// the next due action. Returns how long to wait before the next cycle.
    async fn cycle(
        self: &Arc<Self>,
        worker: &mut Option<tokio::task::JoinHandle<()>>,
    ) -> Result<Duration, ClientError> {
        if !self.client.has_token() {
            self.enroll().await?;
        }
        if worker.as_ref().is_some_and(|w| w.is_finished()) {
            *worker = None;
        }
        let busy = *self.busy.lock().expect("busy lock");
        let inventory = if busy.is_some() {
            self.last_inventory.lock().expect("inventory lock").clone()
        } else {
            let inv = self.inventory().await;
            *self.last_inventory.lock().expect("inventory lock") = inv.clone();
            inv
        };
        let (vars_since, config_revision, plugin_sha256) = {
            let s = self.state.lock().expect("state lock");
            (
                s.vars_since,
                s.config.as_ref().map(|c| c.revision),
                s.config
                    .as_ref()
                    .and_then(|c| c.plugin.as_ref())
                    .map(|p| p.sha256.clone()),
            )
        };
        let req = PollRequest {
            inventory: inventory.clone().and_then(Result::ok),
            inventory_error: match inventory {
                Some(Err(e)) => Some(e),
                None => Some("no plugin is enabled for this device type yet".into()),
                Some(Ok(_)) => None,
            },
            status: AgentStatus {
                agent_version: AGENT_VERSION.into(),
                plugin_sha256,
                busy_action: busy,
                message: self.problem.lock().expect("problem lock").clone(),
                allows: Some(self.terminal_allows()),
            },
            vars_since,
            config_revision,
        };
        let resp = match self.client.poll(&req).await {
            Err(ClientError::Unauthorized { url }) => {
                self.forget_token();
                return Err(ClientError::Unauthorized { url });
            }
            r => r?,
        };
        let first_config = {
            let mut s = self.state.lock().expect("state lock");
            let mut changed = s.apply_vars(&resp.variables.changes, resp.variables.last_id);
            let first = s.config.is_none() && resp.config.is_some();
            if let Some(c) = &resp.config
                && s.config.as_ref() != Some(c)
            {
                s.config = Some(c.clone());
                changed = true;
            }
            if changed {
                self.save(&s);
            }
            first
        };
        if !self.outbox.is_empty() {
            self.outbox.queued.notify_one();
        }
        let interval = Duration::from_secs(resp.poll_interval_secs.max(1).into());
        let mut wait = self.config.poll.next_poll(interval);
        if resp.variables.more || first_config {
            // More variable changes wait, or the plugin to take inventory with has
            // just become known: poll again at once.
            wait = Duration::from_millis(50);
        }
        if let Some(next) = self.take_actions(&resp.actions, worker) {
            wait = wait.min(next);
        }
        Ok(wait)
    }

    /// Reconciles the local records with the server's list and starts the first due
    /// action when the worker is free. Returns the time until the next action falls
    /// due, when one waits.
    fn take_actions(
        self: &Arc<Self>,
        actions: &[Action],
        worker: &mut Option<tokio::task::JoinHandle<()>>,
    ) -> Option<Duration> {
        let now = Utc::now();
        let busy = *self.busy.lock().expect("busy lock");
        // Actions no longer listed are not started; the one under way stops before
        // its downtime.
        if let Some(b) = busy
            && !actions.iter().any(|a| a.action_id == b)
        {
            self.outbox.deactivate(b);
        }
        let mut due = None;
        let mut next_due: Option<Duration> = None;
        {
            let mut s = self.state.lock().expect("state lock");
            let before = s.actions.clone();
            // Forget actions the server no longer lists once their reports are out.
            let listed: Vec<i64> = actions.iter().map(|a| a.action_id).collect();
            if self.outbox.is_empty() {
                s.actions.retain(|id, _| listed.contains(id));
            }
            for a in actions {
                let record = s.actions.get(&a.action_id).cloned();
                if record.as_ref().is_some_and(|r| a.attempt > r.attempt()) {
                    // The operator restarted the task: run it again from the start.
                    s.actions.remove(&a.action_id);
                    self.outbox.reactivate(a.action_id);
                }
                let ready_at = match s.actions.get(&a.action_id) {
                    Some(ActionRecord::Done { .. }) => continue,
                    Some(ActionRecord::Waiting { retry_at, .. }) => {
                        chrono::DateTime::from_timestamp_millis(*retry_at)
                            .unwrap_or(now)
                            .max(a.not_before)
                    }
                    None => a.not_before,
                };
                if ready_at <= now {
                    if due.is_none() {
                        due = Some(a.clone());
                    }
                } else {
                    let until = (ready_at - now).to_std().unwrap_or_default();
                    next_due = Some(next_due.map_or(until, |n| n.min(until)));
                }
            }
            if s.actions != before {
                self.save(&s);
            }
        }
        if busy.is_none()
            && let Some(action) = due
        {
            self.outbox.reactivate(action.action_id);
            *self.busy.lock().expect("busy lock") = Some(action.action_id);
            let me = Arc::clone(self);
            *worker = Some(tokio::spawn(async move {
                me.work(action).await;
                *me.busy.lock().expect("busy lock") = None;
                me.worker_done.notify_one();
            }));
        }
        next_due
    }

    /// The fleet's signed metadata, refreshed now.
    async fn verify(&self) -> Result<posup_trust::client::Verified, String> {
        let trust = self
            .trust
            .as_ref()
            .expect("verify only with a trusted root");
        trust.refresh().await.map_err(|e| e.to_string())
    }
}

/// The plugin's inventory as the wire carries it.
pub fn to_proto(inv: posup_runtime::types::Inventory) -> Inventory {
    Inventory {
        product: inv.product,
        version: inv.version,
        modules: inv
            .modules
            .into_iter()
            .map(|m| ModuleVersion {
                name: m.name,
                version: m.version,
            })
            .collect(),
        loaded_package: inv.loaded_package,
        state: inv.state,
        pending_sync: inv.pending_sync,
        ready: inv.ready,
        reboot_required: inv.reboot_required,
        details: inv.details,
    }
}
