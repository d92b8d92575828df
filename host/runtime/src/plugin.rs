//! A loaded plugin and the calls into it.
//!
//! Every call runs in a fresh `Store` built from the caller's [`HostEnv`], with the
//! memory limits, an epoch deadline (a plugin that loops is interrupted) and a
//! wall-clock bound (a host call that hangs cannot hold the step forever). Nothing
//! survives from one call to the next but what the plugin wrote to granted
//! directories or `kv`.

use std::time::Duration;

use posup_world::latest::types::{
    DatabaseRequest, Inventory, Outcome, PackageInfo, PluginInfo, StepContext,
};
use posup_world::{Interface, since_v0_1_0, since_v0_1_1};
use wasmtime::Store;
use wasmtime::component::Component;

use crate::caps::Work;
use crate::engine::{EPOCH_TICK, Runtime};
use crate::error::{RuntimeError, StepError};
use crate::state::{HostEnv, StepState};

/// The steps of one update, in the order the host runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    Precheck,
    Stage,
    Apply,
    Verify,
    Commit,
    Rollback,
}

impl Step {
    pub const ALL: [Step; 6] = [
        Step::Precheck,
        Step::Stage,
        Step::Apply,
        Step::Verify,
        Step::Commit,
        Step::Rollback,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Precheck => "precheck",
            Step::Stage => "stage",
            Step::Apply => "apply",
            Step::Verify => "verify",
            Step::Commit => "commit",
            Step::Rollback => "rollback",
        }
    }

    pub fn parse(s: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// How long the step may take by default. Stage and apply copy whole
    /// installations; verify waits for the product to start.
    pub fn default_deadline(self) -> Duration {
        Duration::from_secs(match self {
            Step::Precheck => 120,
            Step::Stage => 1_800,
            Step::Apply => 1_800,
            Step::Verify => 900,
            Step::Commit => 600,
            Step::Rollback => 1_800,
        })
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Deadline of `info`, which must not touch anything.
pub const INFO_DEADLINE: Duration = Duration::from_secs(10);

/// Host calls get this much longer than the epoch deadline before the wall-clock
/// bound cancels the call: the epoch interrupts wasm code, the wall clock a host
/// call that never returns.
const WALL_GRACE: Duration = Duration::from_secs(5);

/// The component's exports, bound through the bindings of the interface version
/// it was built against. Every version shares the newest version's types.
enum Pre {
    V0_1_0(since_v0_1_0::PluginPre<StepState>),
    V0_1_1(since_v0_1_1::PluginPre<StepState>),
}

enum Call<'a> {
    Info,
    Databases,
    Inventory,
    Inspect(&'a str),
    Step(Step, &'a StepContext),
}

impl Call<'_> {
    fn name(&self) -> &'static str {
        match self {
            Call::Info => "info",
            Call::Databases => "databases",
            Call::Inventory => "inventory",
            Call::Inspect(_) => "inspect",
            Call::Step(step, _) => step.as_str(),
        }
    }
}

enum Answer {
    Info(PluginInfo),
    Databases(Vec<DatabaseRequest>),
    Inventory(Result<Inventory, String>),
    Inspect(Result<PackageInfo, String>),
    Outcome(Outcome),
}

/// A compiled plugin, ready to be instantiated once per call.
pub struct Plugin {
    runtime: Runtime,
    name: String,
    digest: String,
    interface: Interface,
    pre: Pre,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("digest", &self.digest)
            .field("interface", &self.interface)
            .finish_non_exhaustive()
    }
}

impl Plugin {
    pub(crate) fn new(
        runtime: Runtime,
        name: &str,
        digest: String,
        component: Component,
    ) -> Result<Self, RuntimeError> {
        let interface = detect_interface(&runtime, name, &component)?;
        let link_error = |message: String| RuntimeError::Link {
            plugin: name.to_owned(),
            version: interface.version().to_string(),
            message,
        };
        let instance_pre = runtime
            .linker
            .instantiate_pre(&component)
            .map_err(|e| link_error(format!("{e:#}")))?;
        let pre = match interface {
            Interface::V0_1_0 => Pre::V0_1_0(
                since_v0_1_0::PluginPre::new(instance_pre)
                    .map_err(|e| link_error(format!("{e:#}")))?,
            ),
            Interface::V0_1_1 => Pre::V0_1_1(
                since_v0_1_1::PluginPre::new(instance_pre)
                    .map_err(|e| link_error(format!("{e:#}")))?,
            ),
        };
        Ok(Self {
            runtime,
            name: name.to_owned(),
            digest,
            interface,
            pre,
        })
    }

    /// The name the plugin was loaded under (its file or bundle name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// sha256 of the component's bytes, hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    pub fn interface(&self) -> Interface {
        self.interface
    }

    /// Who the plugin is and what it asks for. Runs with nothing granted.
    pub async fn info(&self) -> Result<PluginInfo, StepError> {
        match self
            .call(&HostEnv::deny_all(), Call::Info, INFO_DEADLINE)
            .await?
        {
            Answer::Info(info) => Ok(info),
            _ => unreachable!("info answers info"),
        }
    }

    /// The product databases the plugin reads, and their tables (since 0.1.1;
    /// none for older plugins). Runs with nothing granted.
    pub async fn databases(&self) -> Result<Vec<DatabaseRequest>, StepError> {
        if let Pre::V0_1_0(_) = self.pre {
            return Ok(Vec::new());
        }
        match self
            .call(&HostEnv::deny_all(), Call::Databases, INFO_DEADLINE)
            .await?
        {
            Answer::Databases(d) => Ok(d),
            _ => unreachable!("databases answers databases"),
        }
    }

    /// The product's installed state. Directories are granted read-only.
    pub async fn inventory(&self, env: &HostEnv) -> Result<Result<Inventory, String>, StepError> {
        let env = HostEnv {
            grants: env.grants.read_only(),
            ..env.clone()
        };
        match self
            .call(&env, Call::Inventory, self.runtime.config.read_deadline)
            .await?
        {
            Answer::Inventory(inv) => Ok(inv),
            _ => unreachable!("inventory answers inventory"),
        }
    }

    /// Reads a package (guest path under `/staging`). Directories are granted
    /// read-only.
    pub async fn inspect(
        &self,
        env: &HostEnv,
        package: &str,
    ) -> Result<Result<PackageInfo, String>, StepError> {
        let env = HostEnv {
            grants: env.grants.read_only(),
            ..env.clone()
        };
        match self
            .call(
                &env,
                Call::Inspect(package),
                self.runtime.config.read_deadline,
            )
            .await?
        {
            Answer::Inspect(info) => Ok(info),
            _ => unreachable!("inspect answers inspect"),
        }
    }

    /// Runs one update step within `deadline`. `precheck` only looks: it runs with
    /// the grants of `inspect` (directories read-only, services only queried, no
    /// scripts), so a failed precheck has changed nothing, whatever the plugin.
    pub async fn step(
        &self,
        env: &HostEnv,
        step: Step,
        ctx: &StepContext,
        deadline: Duration,
    ) -> Result<Outcome, StepError> {
        let looking;
        let env = if step == Step::Precheck {
            looking = HostEnv {
                grants: env.grants.read_only(),
                ..env.clone()
            };
            &looking
        } else {
            env
        };
        match self.call(env, Call::Step(step, ctx), deadline).await? {
            Answer::Outcome(outcome) => Ok(outcome),
            _ => unreachable!("steps answer outcomes"),
        }
    }

    async fn call(
        &self,
        env: &HostEnv,
        call: Call<'_>,
        deadline: Duration,
    ) -> Result<Answer, StepError> {
        let call_name = call.name();
        let work = Work::default();
        let state =
            StepState::new(&self.name, env, self.runtime.limits(), work.clone()).map_err(|e| {
                StepError::Setup {
                    plugin: self.name.clone(),
                    call: call_name,
                    message: e.to_string(),
                }
            })?;
        let mut store = Store::new(&self.runtime.engine, state);
        store.limiter(|s| &mut s.limiter);
        let ticks = (deadline.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();

        // The same calls through each version's bindings; only `databases`
        // differs, and a 0.1.0 plugin never gets here with it.
        macro_rules! answer {
            ($pre:expr, |$p:ident, $s:ident| $databases:expr) => {{
                let plugin = $pre.instantiate_async(&mut store).await?;
                wasmtime::Result::Ok(match call {
                    Call::Info => Answer::Info(plugin.call_info(&mut store).await?),
                    Call::Databases => {
                        let ($p, $s) = (&plugin, &mut store);
                        Answer::Databases($databases)
                    }
                    Call::Inventory => Answer::Inventory(plugin.call_inventory(&mut store).await?),
                    Call::Inspect(p) => Answer::Inspect(plugin.call_inspect(&mut store, p).await?),
                    Call::Step(step, ctx) => Answer::Outcome(match step {
                        Step::Precheck => plugin.call_precheck(&mut store, ctx).await?,
                        Step::Stage => plugin.call_stage(&mut store, ctx).await?,
                        Step::Apply => plugin.call_apply(&mut store, ctx).await?,
                        Step::Verify => plugin.call_verify(&mut store, ctx).await?,
                        Step::Commit => plugin.call_commit(&mut store, ctx).await?,
                        Step::Rollback => plugin.call_rollback(&mut store, ctx).await?,
                    }),
                })
            }};
        }
        let run = async {
            match &self.pre {
                Pre::V0_1_0(pre) => answer!(pre, |_p, _s| Vec::new()),
                Pre::V0_1_1(pre) => answer!(pre, |p, s| p.call_databases(s).await?),
            }
        };
        let result = tokio::time::timeout(deadline + WALL_GRACE, run).await;
        let error = match result {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) => e,
            Err(_elapsed) => {
                // The call is abandoned, but host work it started (a copy, an
                // extraction, a script) runs on its own threads: stop it and wait
                // until it has, so nothing writes after the caller moves on to a
                // rollback.
                work.cancel();
                work.stopped().await;
                return Err(StepError::Deadline {
                    plugin: self.name.clone(),
                    call: call_name,
                    secs: deadline.as_secs(),
                });
            }
        };
        Err(self.classify(&store, call_name, deadline, error))
    }

    fn classify(
        &self,
        store: &Store<StepState>,
        call: &'static str,
        deadline: Duration,
        error: wasmtime::Error,
    ) -> StepError {
        let plugin = self.name.clone();
        if let Some(msg) = &store.data().limiter.exceeded {
            return StepError::Limit {
                plugin,
                call,
                message: msg.clone(),
            };
        }
        match error.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => StepError::Deadline {
                plugin,
                call,
                secs: deadline.as_secs(),
            },
            Some(wasmtime::Trap::StackOverflow) => StepError::Limit {
                plugin,
                call,
                message: format!(
                    "stack limit of {} KiB exceeded",
                    self.runtime.limits().stack >> 10
                ),
            },
            _ => {
                let stderr = store.data().stderr_text();
                let mut message = format!("{error:#}");
                if !stderr.is_empty() {
                    message = format!("{message}; it wrote: {stderr}");
                }
                StepError::Trap {
                    plugin,
                    call,
                    message,
                }
            }
        }
    }
}

/// Finds which released interface a component was built against, from the versions
/// of the `posup:plugin` interfaces it imports. A component importing none of them
/// is taken to be of the newest version; its exports are type-checked anyway.
fn detect_interface(
    runtime: &Runtime,
    name: &str,
    component: &Component,
) -> Result<Interface, RuntimeError> {
    let ty = component.component_type();
    let mut versions = std::collections::BTreeSet::new();
    for (import, _) in ty.imports(&runtime.engine) {
        if let Some(rest) = import.strip_prefix("posup:plugin/")
            && let Some((_, version)) = rest.split_once('@')
        {
            versions.insert(version.to_owned());
        }
    }
    let supported = || {
        Interface::ALL
            .iter()
            .map(|i| i.version().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut chosen = None;
    for v in &versions {
        match Interface::ALL
            .iter()
            .find(|i| i.version().to_string() == *v)
        {
            Some(i) if chosen.is_none() || chosen == Some(*i) => chosen = Some(*i),
            Some(_) => {
                return Err(RuntimeError::UnsupportedInterface {
                    plugin: name.to_owned(),
                    found: versions.iter().cloned().collect::<Vec<_>>().join(" and "),
                    supported: supported(),
                });
            }
            None => {
                return Err(RuntimeError::UnsupportedInterface {
                    plugin: name.to_owned(),
                    found: v.clone(),
                    supported: supported(),
                });
            }
        }
    }
    Ok(chosen.unwrap_or(Interface::newest()))
}
