//! The agent: enrolls the terminal, polls the server, runs the actions it is
//! given through the update pipeline, and reports back.
//!
//! ```text
//!  poll loop ──(every interval ± jitter; backoff while the server is away)──┐
//!    inventory (plugin) → POST /poll → variables, configuration, actions     │
//!    └─ a due action and no work under way → worker ───────────────────────┘
//!  worker: refresh signed metadata (TUF, from the installed root) → plugin and
//!          package must be signed targets → download (Range resume, signed length
//!          and sha256) → no unsigned downgrade → pipeline
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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use posup_proto::agent::{
    Action, AgentStatus, DeviceIdentity, EnrollRequest, FeedbackState, PluginRef, PollRequest, Site,
};
use posup_proto::{Inventory, ModuleVersion, Phase, TaskKind};
use posup_runtime::caps::log::{EventSink, Level};
use posup_runtime::caps::prompt::Prompter;
use posup_runtime::types::{DatabaseRequest, PluginInfo};
use posup_runtime::{Allowance, Grants, HostEnv, Plugin, Runtime};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::client::{Client, ClientError};
use crate::config::AgentConfig;
use crate::device::DeviceConfig;
use crate::download::{self, DownloadError, Expected};
use crate::journal::Journal;
use crate::outbox::{Outbox, Report};
use crate::pipeline::{
    Observer, Pipeline, Settings, StepReport, StepResult, UpdateRequest, UpdateResult,
};
use crate::prompter::FilePrompter;
use crate::state::{ActionRecord, State, StateFile};

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
        let outbox = Outbox::open(&paths.outbox()).map_err(state_err)?;
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

    /// Compiles the plugin in `file` into the cache in a child process, when one is
    /// configured and the cache lacks it. A failure is logged and the load compiles
    /// in this process instead: the helper only saves memory.
    async fn compile_outside(&self, name: &str, file: &Path, bytes: &[u8]) {
        let Some(exe) = self.compiler.get() else {
            return;
        };
        if self.runtime.is_cached(bytes) {
            return;
        }
        let status = tokio::process::Command::new(exe)
            .args(["plugin", "compile", "--state-dir"])
            .arg(&self.paths.root)
            .arg(file)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status()
            .await;
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => {
                tracing::warn!("compiling plugin {name} in a child process: {s}; compiling here")
            }
            Err(e) => tracing::warn!(
                "starting {} to compile plugin {name}: {e}; compiling here",
                exe.display()
            ),
        }
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

    /// Sends reports as they are queued, retrying with backoff while the server is
    /// away.
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
            match self.outbox.flush(&self.client).await {
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

    /// The effective device configuration: the file's, with the locations of the
    /// directories it lets the server place (`server_paths`) taken from the
    /// server's configuration of the device type. The file is the ceiling.
    fn device_config(&self) -> DeviceConfig {
        let local = self.config.device_config().clone();
        let state = self.state.lock().expect("state lock");
        let Some(server) = &state.config else {
            return local;
        };
        local.with_server_paths(|name| {
            posup_proto::Dir::ALL
                .into_iter()
                .find(|d| d.as_str() == name)
                .and_then(|d| server.paths.get(d).map(str::to_owned))
        })
    }

    /// Checks, once at start, that every directory of the device configuration can
    /// be granted: a real directory (staging and backup are made when missing),
    /// never a symbolic link. Each step checks again when it opens them.
    pub fn check_dirs(&self) -> std::io::Result<()> {
        let device = self.config.device_config();
        own_dirs(device)?;
        let grants = Grants {
            dirs: device.allowance().dirs,
            ..Grants::default()
        };
        posup_runtime::beneath::Roots::open(&grants).map(drop)
    }

    /// What this terminal's configuration allows any plugin, for the server to
    /// show beside what the operator allows; where the directories are stays here.
    fn terminal_allows(&self) -> posup_proto::Capabilities {
        let a = self.device_config().allowance();
        posup_proto::Capabilities {
            dirs: a
                .dirs
                .iter()
                .filter_map(|d| {
                    let name = posup_runtime::grants::dir_name(d.dir);
                    posup_proto::Dir::ALL
                        .into_iter()
                        .find(|x| x.as_str() == name)
                        .map(|dir| posup_proto::DirAccess {
                            dir,
                            write: d.write,
                        })
                })
                .collect(),
            services: a.services,
            scripts: a.scripts,
            prompt: a.prompt,
            databases: a.databases.into_iter().map(|d| d.name).collect(),
        }
    }

    /// What the plugin may be granted here: the terminal's allowance intersected
    /// with the operator's. Without the operator's word, nothing is allowed.
    fn allowance(&self, device: &DeviceConfig) -> Allowance {
        let mut a = device.allowance();
        let state = self.state.lock().expect("state lock");
        let Some(server) = &state.config else {
            return Allowance::default();
        };
        let allowed = &server.allowed;
        a.dirs.retain_mut(|d| {
            let name = posup_runtime::grants::dir_name(d.dir);
            match allowed.dirs.iter().find(|x| x.dir.as_str() == name) {
                Some(x) => {
                    d.write &= x.write;
                    true
                }
                None => false,
            }
        });
        a.services.retain(|s| allowed.services.contains(s));
        a.scripts &= allowed.scripts;
        a.prompt &= allowed.prompt;
        a.databases.retain(|d| allowed.databases.contains(&d.name));
        a
    }

    fn env(&self, loaded: &Loaded, events: Option<Arc<dyn EventSink>>) -> (HostEnv, DeviceConfig) {
        let device = self.device_config();
        if let Err(e) = own_dirs(&device) {
            tracing::warn!("{e}");
        }
        let grants = Grants::intersect(
            &loaded.info.capabilities,
            &loaded.databases,
            &self.allowance(&device),
        );
        let prompter: Arc<dyn Prompter> = self.prompter.clone();
        let env = HostEnv {
            grants,
            services: device.service_manager(&self.paths.run()),
            prompter: Some(prompter),
            kv_dir: Some(self.paths.kv()),
            vars: Arc::new(self.state.lock().expect("state lock").vars.clone()),
            events,
            ..HostEnv::default()
        };
        (env, device)
    }

    /// The plugin with this reference: loaded, from the local store, or downloaded
    /// and checked against its sha256 first. The download is a package's: on disk
    /// in the agent's own folder, resumable, at most the size the server names
    /// (and never more than [`MAX_PLUGIN_BYTES`]), stopped when it stalls or takes
    /// longer than [`PLUGIN_DOWNLOAD_TIME`]; no lock is held while it runs.
    async fn plugin(
        &self,
        r: &PluginRef,
        verified: Option<&posup_trust::client::Verified>,
    ) -> Result<Loaded, String> {
        if let Some(p) = self.plugins.lock().await.get(&r.sha256) {
            return Ok(p.clone());
        }
        let what = format!("plugin {} {}", r.name, r.version);
        if !crate::staging::is_sha256(&r.sha256) {
            return Err(format!(
                "{what}: its sha256 from the server is not 64 hex digits; it is not downloaded"
            ));
        }
        // The size to download: the signed length, or (unsigned) the server's word.
        let size = match &self.trust {
            Some(_) => {
                let refreshed;
                let verified = match verified {
                    Some(v) => v,
                    None => {
                        refreshed = self.verify().await?;
                        &refreshed
                    }
                };
                verified
                    .plugin(
                        &self.config.device.device_type,
                        &r.name,
                        &r.version,
                        &r.sha256,
                    )
                    .map_err(|e| format!("{what} is not used: {e}"))?
                    .length
            }
            None => r.size,
        };
        if size == 0 || size > MAX_PLUGIN_BYTES {
            return Err(format!(
                "{what}: a size of {size} bytes; plugins are 1 byte to {} MiB, so it is not downloaded",
                MAX_PLUGIN_BYTES >> 20
            ));
        }
        let dir = self.paths.plugins();
        posup_runtime::beneath::private_dir(&dir)
            .map_err(|e| format!("{what}: the plugin folder {}: {e}", dir.display()))?;
        let file = dir.join(format!("{}.wasm", r.sha256));
        let expected = Expected {
            sha256: r.sha256.clone(),
            size,
        };
        let tries = std::sync::atomic::AtomicU32::new(0);
        let keep_going = || tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 3;
        let poll = self.config.poll.clone();
        let backoff = move |n: u32| poll.backoff(n);
        let fetched = tokio::time::timeout(
            PLUGIN_DOWNLOAD_TIME,
            download::fetch_with_retries(
                &self.client,
                &r.url,
                &file,
                &expected,
                &mut |_, _| {},
                &backoff,
                &keep_going,
            ),
        )
        .await;
        match fetched {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("downloading {what}: {e}")),
            Err(_) => {
                return Err(format!(
                    "downloading {what}: not done within {} s; it resumes at the next poll",
                    PLUGIN_DOWNLOAD_TIME.as_secs()
                ));
            }
        }
        let bytes = read_download(&dir, &file, MAX_PLUGIN_BYTES)
            .map_err(|e| format!("reading {what}: {e}"))?;
        if hex::encode(Sha256::digest(&bytes)) != r.sha256 {
            let _ = std::fs::remove_file(&file);
            return Err(format!(
                "{what}: changed on disk after its check; it is not loaded"
            ));
        }
        self.compile_outside(&r.name, &file, &bytes).await;
        let plugin = self
            .runtime
            .load(&r.name, &bytes)
            .map_err(|e| format!("{what}: {e}"))?;
        let info = plugin.info().await.map_err(|e| format!("{what}: {e}"))?;
        let databases = plugin
            .databases()
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        let entry = Loaded {
            plugin: Arc::new(plugin),
            info,
            databases,
        };
        let mut plugins = self.plugins.lock().await;
        // Keep the device type's plugin and the one an action needs; drop others.
        plugins.retain(|sha, _| {
            self.state
                .lock()
                .expect("state lock")
                .config
                .as_ref()
                .and_then(|c| c.plugin.as_ref())
                .is_some_and(|p| &p.sha256 == sha)
        });
        plugins.insert(r.sha256.clone(), entry.clone());
        Ok(entry)
    }

    /// The product's state through the device type's plugin.
    async fn inventory(&self) -> Option<Result<Inventory, String>> {
        let r = self
            .state
            .lock()
            .expect("state lock")
            .config
            .as_ref()
            .and_then(|c| c.plugin.clone())?;
        Some(self.inventory_with(&r).await)
    }

    /// The fleet's signed metadata, refreshed now.
    async fn verify(&self) -> Result<posup_trust::client::Verified, String> {
        let trust = self
            .trust
            .as_ref()
            .expect("verify only with a trusted root");
        trust.refresh().await.map_err(|e| e.to_string())
    }

    async fn inventory_with(&self, r: &PluginRef) -> Result<Inventory, String> {
        let loaded = self.plugin(r, None).await?;
        let (env, _) = self.env(&loaded, None);
        match loaded.plugin.inventory(&env).await {
            Ok(Ok(inv)) => Ok(to_proto(inv)),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(e.to_string()),
        }
    }

    fn report(
        &self,
        action: &Action,
        step: Phase,
        state: FeedbackState,
        message: Option<String>,
        percent: Option<u8>,
    ) {
        self.report_retry(action, step, state, message, percent, None);
    }

    fn report_retry(
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

    fn record(&self, action: &Action, record: ActionRecord) {
        self.update_state(|s| {
            s.actions.insert(action.action_id, record);
        });
    }

    fn done(&self, action: &Action, result: &str) {
        self.record(
            action,
            ActionRecord::Done {
                attempt: action.attempt,
                result: result.to_owned(),
            },
        );
    }

    /// Works on one action to its end (done, waiting, or stopped by the server).
    async fn work(self: &Arc<Self>, action: Action) {
        let name = &action.package.file_name;
        tracing::info!(action = action.action_id, "{} {name}", action.kind.as_str());
        // One refresh of the signed metadata serves the plugin and the package.
        let verified = match &self.trust {
            Some(_) => match self.verify().await {
                Ok(v) => Some(v),
                Err(e) => {
                    let msg = format!("nothing was downloaded: {e}");
                    self.report(
                        &action,
                        Phase::Download,
                        FeedbackState::Failed,
                        Some(msg),
                        None,
                    );
                    self.done(&action, "failed");
                    return;
                }
            },
            None => None,
        };
        let loaded = match self.plugin(&action.plugin, verified.as_ref()).await {
            Ok(p) => p,
            Err(e) => {
                self.report(
                    &action,
                    Phase::Download,
                    FeedbackState::Failed,
                    Some(e),
                    None,
                );
                self.done(&action, "failed");
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
            self.report(
                &action,
                Phase::Download,
                FeedbackState::Failed,
                Some(msg),
                None,
            );
            self.done(&action, "failed");
            return;
        };
        if let Err(e) = std::fs::create_dir_all(&staging) {
            let msg = format!("creating the staging directory {}: {e}", staging.display());
            self.report(
                &action,
                Phase::Download,
                FeedbackState::Failed,
                Some(msg),
                None,
            );
            self.done(&action, "failed");
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
            self.report(
                &action,
                Phase::Download,
                FeedbackState::Failed,
                Some(msg),
                None,
            );
            self.done(&action, "failed");
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
                    self.report(
                        &action,
                        Phase::Download,
                        FeedbackState::Failed,
                        Some(msg),
                        None,
                    );
                    self.done(&action, "failed");
                    return;
                }
            },
            None => None,
        };
        let (size, version) = match &signed {
            Some(t) if !t.release.version.is_empty() => (t.length, t.release.version.clone()),
            Some(t) => (t.length, action.package.version.clone()),
            None => (action.package.size, action.package.version.clone()),
        };
        // The package: downloaded once into the agent's own folder, checked, and
        // copied into staging by the pipeline.
        let downloads = self.paths.downloads();
        if let Err(e) = posup_runtime::beneath::private_dir(&downloads) {
            let msg = format!("creating the download folder {}: {e}", downloads.display());
            self.report(
                &action,
                Phase::Download,
                FeedbackState::Failed,
                Some(msg),
                None,
            );
            self.done(&action, "failed");
            return;
        }
        let dest = downloads.join(&action.package.sha256);
        let journal_open = Journal::load(&Journal::path(&self.paths.root, plugin.name()))
            .ok()
            .flatten()
            .is_some_and(|j| j.record.finished.is_none());
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
                self.report(
                    &action,
                    Phase::Download,
                    FeedbackState::Failed,
                    Some(e.to_string()),
                    None,
                );
                if matches!(e, DownloadError::Corrupt { .. }) {
                    tracing::warn!("{e}");
                }
                self.done(&action, "failed");
                return;
            }
        }

        // Already there: an Update of the version installed finishes at once,
        // without downtime (a pilot device in the even wave, say).
        // An update about to begin (not one a power cut interrupted) looks at
        // what is installed first.
        let installed = if action.kind != TaskKind::Download && !journal_open {
            self.inventory_with(&action.plugin)
                .await
                .map(|inv| {
                    // A module package (Openbravo's) is measured against its
                    // module, not the product's computed version.
                    let modules: Vec<(String, String)> = inv
                        .modules
                        .into_iter()
                        .map(|m| (m.name, m.version))
                        .collect();
                    posup_policy::version::installed_for(
                        &action.package.file_name,
                        &inv.version,
                        &modules,
                    )
                    .to_owned()
                })
                .unwrap_or_default()
        } else {
            String::new()
        };
        // An older release than the one installed needs the release role's
        // signed word: a server cannot roll a terminal back on its own.
        if let Some(t) = &signed
            && let Err(msg) = posup_trust::decide::downgrade(&installed, t)
        {
            self.report(
                &action,
                Phase::Download,
                FeedbackState::Failed,
                Some(msg),
                None,
            );
            self.done(&action, "failed");
            return;
        }
        if !installed.is_empty() && installed == version {
            self.report(
                &action,
                Phase::Commit,
                FeedbackState::Committed,
                Some(format!("version {installed} is already installed")),
                None,
            );
            self.done(&action, "committed");
            return;
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
                task,
            })
            .await;
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                // The journal or staging could not be written: nothing was run.
                self.report(
                    &action,
                    Phase::Precheck,
                    FeedbackState::Failed,
                    Some(e.to_string()),
                    None,
                );
                self.done(&action, "failed");
                return;
            }
        };
        let installed = || async {
            match self.inventory_with(&action.plugin).await {
                Ok(inv) => format!("; installed version: {}", inv.version),
                Err(e) => format!("; the installed version cannot be read: {e}"),
            }
        };
        match &result {
            UpdateResult::Committed { version } => {
                self.report(
                    &action,
                    Phase::Commit,
                    FeedbackState::Committed,
                    Some(format!("version {version} installed")),
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
                let msg = format!("{}{}", result.summary(name), installed().await);
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
                let msg = format!("{}{}", result.summary(name), installed().await);
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
/// A loaded plugin and what it asks for beyond its `info`.
#[derive(Clone)]
struct Loaded {
    plugin: Arc<Plugin>,
    info: PluginInfo,
    databases: Vec<DatabaseRequest>,
}

struct FeedbackObserver {
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
struct ProgressSink {
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

/// Staging and backup are the agent's own folders: made when missing. The
/// product's folders must be there already.
fn own_dirs(device: &DeviceConfig) -> std::io::Result<()> {
    for dir in ["staging", "backup"] {
        if let Some(d) = device.dir(dir) {
            std::fs::create_dir_all(d).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("creating the {dir} directory {}: {e}", d.display()),
                )
            })?;
        }
    }
    Ok(())
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
/// The bytes of the file `file` in the agent's own folder `dir`, read through the
/// folder's handle without following a link, and at most `max` of them.
fn read_download(dir: &Path, file: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::fd::AsFd;
    let folder = posup_runtime::beneath::open_real_dir(dir)?;
    let name = file.file_name().unwrap_or_default();
    let Some(f) = posup_runtime::beneath::open_file_nofollow(folder.as_fd(), name)? else {
        return Err(std::io::ErrorKind::NotFound.into());
    };
    let mut bytes = Vec::new();
    f.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::other(format!("over {max} bytes")));
    }
    Ok(bytes)
}
