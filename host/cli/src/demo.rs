//! `posup demo`: a store fleet updated end to end on this machine.
//!
//! It starts the server (SQLite in a temporary folder, a free port), lays out N
//! simulated terminals — each a product installation with its own folders, the
//! simulated product running as a real process, and an agent with its own state
//! directory — uploads the bundled plugin and the sample package, and runs the
//! rollout the UKM 5 documentation recommends: a Download to every terminal, then
//! an Update of a few pilot terminals, then the even-numbered ones, then the odd
//! ones as a Forced update (the night run nobody is asked about). A simulated
//! cashier answers the consent questions; one of them declines once, so the
//! question comes back later. Progress is shown live; a table of every terminal
//! closes the run. `--keep` leaves everything running for the web console.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use posup_agent::config::{CashierConfig, Identity, PollConfig};
use posup_agent::device::{Allow, ServiceConfig};
use posup_agent::prompter::FilePrompter;
use posup_agent::{Agent, AgentConfig, DeviceConfig};
use posup_proto::api::{
    CreateGroup, CreateTask, DeviceRow, DeviceTaskState, DeviceTypeBody, EnablePlugin, GroupKind,
    GroupView, PackageView, TaskDeviceRow, TaskState, TaskView,
};
use posup_proto::rollout::{CreateRollout, RolloutState, RolloutView, WaveSpec};
use posup_proto::{Capabilities, DirPaths, Page, TaskKind};
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many simulated terminals.
    #[arg(long, default_value_t = 6)]
    terminals: usize,
    /// Keep the server, the agents and the products running after the rollout,
    /// until Ctrl-C, to look around in the web console.
    #[arg(long)]
    keep: bool,
    /// Folder for the demo's server data and terminals; a temporary one, removed
    /// at the end, by default.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Port of the server; a free one by default.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Poll interval of the terminals, in seconds.
    #[arg(long, default_value_t = 1)]
    poll_interval: u32,
    /// How long one wave may take before the demo gives up, in seconds.
    #[arg(long, default_value_t = 180)]
    wave_timeout: u64,
}

/// A product the demo can simulate: its installation, its package and the
/// command that runs it.
struct Product {
    device_type: &'static str,
    plugin: &'static str,
    service: &'static str,
    /// Terminal name prefix.
    label: &'static str,
    from: &'static str,
    to: &'static str,
    init: fn(&Path, &Path, &str) -> std::io::Result<()>,
    package: fn(&Path, &str) -> std::io::Result<PathBuf>,
    /// `posup` arguments that run the simulated product.
    command: fn(&Path, &Path) -> Vec<String>,
}

/// The products of the demo fleet.
fn products() -> Vec<Product> {
    vec![Product {
        device_type: "kiosk",
        plugin: "kiosk",
        service: "kiosk",
        label: "Kiosk",
        from: "7.4.2",
        to: "7.5.0",
        init: posup_sim::init_kiosk,
        package: |out, version| posup_sim::kiosk_package(out, version, false),
        command: |product, logs| {
            vec![
                "sim-product".into(),
                "kiosk".into(),
                "--product".into(),
                product.display().to_string(),
                "--logs".into(),
                logs.display().to_string(),
            ]
        },
    }]
}

/// One simulated terminal.
struct Terminal {
    name: String,
    product: PathBuf,
    prompt: PathBuf,
    device: DeviceConfig,
    run_dir: PathBuf,
    service: &'static str,
    /// Whether its cashier says no to the first question.
    declines_once: bool,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<u8> {
    if args.terminals == 0 {
        bail!("--terminals must be at least 1");
    }
    let (_tmp, root) = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            (None, d.canonicalize()?)
        }
        None => {
            let t = tempfile::Builder::new().prefix("posup-demo-").tempdir()?;
            let p = t.path().to_owned();
            (Some(t), p)
        }
    };
    let out = Out::new();
    out.say(&format!("posup demo in {}", root.display()));

    // The server.
    let admin = format!("pop_demo_{:016x}", rand_u64());
    let secret = format!("pes_demo_{:016x}", rand_u64());
    let mut config = posup_server::ServerConfig::new(&root.join("server"));
    config.admin_token = Some(admin.clone());
    config.enrollment_secret = Some(secret.clone());
    config.poll_interval_secs = args.poll_interval.max(1);
    config.offline_after = Duration::from_secs(u64::from(args.poll_interval.max(1)) * 10);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .with_context(|| format!("binding 127.0.0.1:{}", args.port))?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = {
        let mut rx = stop_rx.clone();
        tokio::spawn(posup_server::run(config, listener, async move {
            let _ = rx.wait_for(|s| *s).await;
        }))
    };
    let api = Api::new(&base, &admin)?;
    api.wait_healthy().await?;
    out.say(&format!("server on {base}"));

    // Plugins, device types, packages.
    let runtime = posup_runtime::Runtime::new(posup_runtime::RuntimeConfig {
        cache_dir: Some(root.join("agent-plugin-cache")),
        ..Default::default()
    })?;
    let products = products();
    let fleet = Fleet::new(&root, &base, &admin, &runtime, &products).await?;
    out.say(&format!(
        "throwaway fleet keys in {}; terminals trust {}",
        fleet.keys.display(),
        fleet.trusted_root().display()
    ));
    let packages_dir = root.join("packages");
    let mut packages: BTreeMap<&str, PackageView> = BTreeMap::new();
    for p in &products {
        let bytes = posup_bundled::get(p.plugin)
            .with_context(|| format!("the {} plugin is not bundled in this build", p.plugin))?;
        // Compiled once here, so the agents load it from the cache.
        let info = runtime.load(p.plugin, bytes)?.info().await?;
        fleet.sign_plugin(bytes, &info, p.device_type)?;
        api.post_bytes::<serde_json::Value>(
            &format!("/api/v1/plugins?file_name={}.wasm", p.plugin),
            bytes.to_vec(),
        )
        .await
        .with_context(|| format!("uploading the {} plugin", p.plugin))?;
        let body = DeviceTypeBody {
            description: format!("{} terminals of the demo", p.label),
            allowed: Capabilities::updater(&[p.service]),
            // Where a real terminal has them; each demo terminal's own configuration
            // points at its sandbox folders instead, and the agent prefers that.
            paths: DirPaths {
                product: Some(format!("/opt/{}", p.device_type)),
                staging: Some(format!("/opt/.posup/{}/staging", p.device_type)),
                backup: Some(format!("/opt/.posup/{}/backup", p.device_type)),
                logs: Some(format!("/var/log/{}", p.device_type)),
            },
            // The server's default interval, which the demo sets below the 5 s a
            // device type may ask for, so the waves follow each other quickly.
            poll_interval_secs: None,
            // Kiosks go down one at a time per site, so the others keep serving.
            site_limit: (p.device_type == "kiosk").then_some(1),
            impact: Some("software".into()),
        };
        api.put::<_, serde_json::Value>(&format!("/api/v1/device-types/{}", p.device_type), &body)
            .await?;
        api.put::<_, serde_json::Value>(
            &format!("/api/v1/device-types/{}/plugin", p.device_type),
            &EnablePlugin {
                name: p.plugin.into(),
                version: None,
            },
        )
        .await?;
        let file = (p.package)(&packages_dir, p.to)?;
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let pkg: PackageView = api
            .post_bytes(
                &format!(
                    "/api/v1/packages?device_type={}&file_name={name}",
                    p.device_type
                ),
                std::fs::read(&file)?,
            )
            .await
            .with_context(|| format!("uploading the package {name}"))?;
        fleet.sign_package(&std::fs::read(&file)?, &pkg)?;
        out.say(&format!(
            "uploaded and signed plugin {} ({}) and package {} ({}, {} bytes)",
            p.plugin, info.vendor, pkg.file_name, pkg.version, pkg.size
        ));
        packages.insert(p.device_type, pkg);
    }
    let published = fleet.publish().await?;
    out.say(&format!(
        "published the signed repository: {}",
        published
            .roles
            .iter()
            .map(|r| format!("{} v{}", r.role, r.version))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let trusted_root = fleet.trusted_root();

    // The terminals: product, simulated product process, agent.
    let exe = std::env::current_exe()
        .context("finding the posup binary to run the simulated products")?;
    let mut terminals = Vec::new();
    let mut agents = Vec::new();
    // Whatever goes wrong from here on, the products and agents already started
    // are stopped below before the demo returns.
    let started: anyhow::Result<()> = async {
        for i in 0..args.terminals {
            let p = &products[i % products.len()];
            let number = (i + 1) as u32;
            let name = format!("{} {number}", p.label);
            let dir = root
                .join("terminals")
                .join(format!("{}-{number}", p.device_type));
            let product = dir.join("opt").join(p.device_type);
            let logs = dir.join("log");
            let state = dir.join("posup");
            (p.init)(&product, &logs, p.from).with_context(|| format!("laying out {name}"))?;
            let mut args_ = (p.command)(&product, &logs);
            let mut command = vec![exe.display().to_string()];
            command.append(&mut args_);
            let device = DeviceConfig {
                dirs: [
                    ("product".to_owned(), product.clone()),
                    ("staging".to_owned(), dir.join("opt").join(".posup-staging")),
                    ("backup".to_owned(), dir.join("opt").join(".posup-backup")),
                    ("logs".to_owned(), logs.clone()),
                ]
                .into_iter()
                .collect(),
                allow: Allow {
                    services: vec![p.service.into()],
                    prompt: true,
                    ..Allow::default()
                },
                services: [(
                    p.service.to_owned(),
                    ServiceConfig {
                        command: Some(command),
                        log: Some(logs.join("stdout.log")),
                        ..ServiceConfig::default()
                    },
                )]
                .into_iter()
                .collect(),
            };
            let run_dir = state.join("run");
            let services = device
                .service_manager(&run_dir)
                .expect("the demo configures a service");
            services
                .start(p.service)
                .await
                .map_err(|e| anyhow::anyhow!("starting {name}: {}", e.message))?;
            let config = AgentConfig {
                server: base.clone(),
                // The demo's server is on loopback, without a certificate.
                insecure_http: true,
                ca_file: None,
                root: Some(trusted_root.clone()),
                insecure_unsigned: false,
                enrollment_secret: secret.clone(),
                state_dir: state.clone(),
                device: Identity {
                    guid: Some(format!("demo-{}-{number:03}", p.device_type)),
                    site: "Demo store".into(),
                    address: "1 Market Street".into(),
                    name: name.clone(),
                    number,
                    device_type: p.device_type.into(),
                },
                poll: PollConfig {
                    jitter: 0.2,
                    min_backoff_secs: 0.5,
                    max_backoff_secs: 5.0,
                },
                cashier: CashierConfig {
                    consent_timeout_secs: 20.0,
                    ask_again_secs: 3.0,
                },
                device_types: [(p.device_type.to_owned(), device.clone())]
                    .into_iter()
                    .collect(),
            };
            let agent = Agent::new(config, runtime.clone())?;
            let mut rx = stop_rx.clone();
            let a = Arc::clone(&agent);
            agents.push(tokio::spawn(async move {
                a.run(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
            }));
            terminals.push(Terminal {
                name,
                product,
                prompt: state.join("prompt"),
                device,
                run_dir,
                service: p.service,
                // An even terminal outside the pilot group, so its question comes in
                // the even wave, an Update; the odd wave is Forced and asks nobody.
                declines_once: number == if args.terminals >= 4 { 4 } else { 2 },
            });
        }
        Ok(())
    }
    .await;
    let cashiers: Vec<_> = terminals
        .iter()
        .map(|t| tokio::spawn(cashier(t.prompt.clone(), t.declines_once)))
        .collect();
    out.say(&format!(
        "{} terminals started; waiting for them to enroll and report their versions",
        terminals.len()
    ));
    // The rollout.
    let result = match started {
        Ok(()) => match api
            .wait_enrolled(terminals.len(), Duration::from_secs(60))
            .await
        {
            Ok(devices) => {
                let waves = rollout(
                    &api,
                    &out,
                    &devices,
                    &packages,
                    Duration::from_secs(args.wave_timeout),
                )
                .await;
                let table = api.devices().await.unwrap_or_default();
                print_table(&table, waves.as_deref().unwrap_or_default());
                waves
            }
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };

    let ok = match &result {
        Ok(waves) => waves.iter().all(|w| w.failed == 0 && w.success == w.total),
        Err(e) => {
            eprintln!("posup demo: {e:#}");
            false
        }
    };
    println!();
    println!("Web console: {base}/   (operator token: {admin})");
    if args.keep {
        println!("Everything keeps running; press Ctrl-C to stop.");
        crate::agent::shutdown_signal().await;
    }

    // Shut everything down: agents, products, server.
    let _ = stop_tx.send(true);
    for a in agents {
        let _ = a.await;
    }
    for c in cashiers {
        c.abort();
    }
    for t in &terminals {
        if let Some(services) = t.device.service_manager(&t.run_dir)
            && let Err(e) = services.stop(t.service).await
        {
            eprintln!(
                "stopping {} ({}): {}",
                t.name,
                t.product.display(),
                e.message
            );
        }
    }
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("posup demo: the server ended with: {e:#}"),
        Err(e) => eprintln!("posup demo: the server task ended with: {e}"),
    }
    Ok(if ok { 0 } else { 1 })
}

fn rand_u64() -> u64 {
    rand::random()
}

/// The simulated cashier of one register: answers each question after a moment,
/// yes, except that a cashier who `declines_once` says no the first time.
async fn cashier(prompt: PathBuf, declines_once: bool) {
    let mut declined = !declines_once;
    let mut answered = String::new();
    loop {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let Some(q) = FilePrompter::pending(&prompt) else {
            continue;
        };
        if q.id == answered {
            continue;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        let yes = declined;
        declined = true;
        if FilePrompter::answer(&prompt, &q.id, yes).is_ok() {
            answered = q.id;
        }
    }
}

/// How one wave ended.
#[derive(Debug, Clone, Default)]
struct Wave {
    title: String,
    total: u64,
    success: u64,
    failed: u64,
    /// Device id → its state and last message in this wave.
    devices: BTreeMap<i64, (DeviceTaskState, String)>,
}

async fn rollout(
    api: &Api,
    out: &Out,
    devices: &[DeviceRow],
    packages: &BTreeMap<&str, PackageView>,
    timeout: Duration,
) -> anyhow::Result<Vec<Wave>> {
    let groups: Vec<GroupView> = api.get("/api/v1/groups").await?;
    let builtin = |kind: GroupKind| {
        groups
            .iter()
            .find(|g| g.kind == kind)
            .map(|g| g.id)
            .with_context(|| format!("the server has no built-in {kind:?} group"))
    };
    let mut sorted: Vec<&DeviceRow> = devices.iter().collect();
    sorted.sort_by_key(|d| d.number);
    let pilots: Vec<i64> = sorted
        .iter()
        .take(2.min(sorted.len()))
        .map(|d| d.id)
        .collect();
    let pilot: GroupView = api
        .post(
            "/api/v1/groups",
            &CreateGroup {
                name: "Pilot".into(),
                description: "The first registers to get a new version".into(),
                kind: GroupKind::Static,
                filter: None,
                devices: pilots,
            },
        )
        .await?;
    let names: BTreeMap<i64, String> = devices.iter().map(|d| (d.id, d.name.clone())).collect();
    let mut waves = Vec::new();
    // First the packages go onto every terminal in the background, then one
    // rollout updates Pilot, Even and Odd, each wave only once the one before
    // succeeded on every terminal.
    for pkg in packages.values() {
        let task: TaskView = api
            .post(
                "/api/v1/tasks",
                &CreateTask {
                    name: Some(format!("Download to every terminal: {}", pkg.file_name)),
                    kind: TaskKind::Download,
                    package_id: pkg.id,
                    group_id: builtin(GroupKind::All)?,
                    start_at: None,
                    notice_override: None,
                },
            )
            .await?;
        let header = format!("[download] {} to every terminal", pkg.file_name);
        waves.push(watch_task(api, out, &header, task.id, &names, timeout).await?);
    }
    let release: RolloutView = api
        .post(
            "/api/v1/rollouts",
            &CreateRollout {
                name: Some("Demo release".into()),
                kind: TaskKind::Update,
                packages: packages.values().map(|p| p.id).collect(),
                waves: [
                    pilot.id,
                    builtin(GroupKind::Even)?,
                    builtin(GroupKind::Odd)?,
                ]
                .into_iter()
                .map(|group_id| WaveSpec {
                    group_id,
                    success_percent: 100,
                    auto_advance: true,
                })
                .collect(),
                max_failed: Some(2),
                max_failed_percent: None,
                start_at: None,
                conditions: String::new(),
                // The demo's stores are simulated: nobody to give 24 hours' notice.
                notice_override: Some("demo: simulated stores, nobody to notify".into()),
            },
        )
        .await?;
    let started = Instant::now();
    for (i, spec) in release.waves.iter().enumerate() {
        // The wave's tasks appear once the wave before it met its threshold.
        let tasks = loop {
            let r: RolloutView = api.get(&format!("/api/v1/rollouts/{}", release.id)).await?;
            let wave = &r.waves[i];
            if wave.tasks.len() == r.packages.len() {
                break wave.tasks.clone();
            }
            if matches!(r.state, RolloutState::Paused | RolloutState::Finished) {
                bail!(
                    "the rollout stopped before wave {} ({}): {}",
                    i + 1,
                    spec.group_name,
                    r.pause_reason.unwrap_or_else(|| r.state.as_str().into())
                );
            }
            if started.elapsed() > timeout {
                bail!(
                    "wave {} ({}) did not start within {timeout:?}",
                    i + 1,
                    spec.group_name
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        for task in tasks {
            let header = format!(
                "[wave {}/{}] {} ({})",
                i + 1,
                release.waves.len(),
                spec.group_name,
                release.name
            );
            waves.push(watch_task(api, out, &header, task, &names, timeout).await?);
        }
    }
    Ok(waves)
}

/// Shows one task's progress until it finishes.
async fn watch_task(
    api: &Api,
    out: &Out,
    header: &str,
    task_id: i64,
    names: &BTreeMap<i64, String>,
    timeout: Duration,
) -> anyhow::Result<Wave> {
    let started = Instant::now();
    out.begin(header);
    let mut seen: BTreeMap<i64, (DeviceTaskState, Option<String>)> = BTreeMap::new();
    loop {
        let task: TaskView = api.get(&format!("/api/v1/tasks/{task_id}")).await?;
        let rows: Page<TaskDeviceRow> = api
            .get(&format!("/api/v1/tasks/{task_id}/devices?per_page=1000"))
            .await?;
        let mut lines = Vec::new();
        for r in &rows.items {
            let name = names
                .get(&r.device_id)
                .cloned()
                .unwrap_or_else(|| r.name.clone());
            let frac = fraction(r);
            let step = r.step.clone().unwrap_or_default();
            let msg = r.message.clone().unwrap_or_default();
            lines.push(format!(
                "  {name:<10} {} {:>3}%  {:<8} {step:<9} {}",
                bar(frac, 20),
                (frac * 100.0).round() as u32,
                r.state.as_str(),
                clip(&msg, 60)
            ));
            let key = (r.state, r.step.clone());
            if seen.get(&r.device_id) != Some(&key) {
                seen.insert(r.device_id, key);
                out.event(&format!(
                    "  {name}: {} {step} {}",
                    r.state.as_str(),
                    clip(&msg, 100)
                ));
            }
        }
        let c = task.counts;
        let summary = format!(
            "  {} of {} done · {} in progress · {} offline · {} failed",
            c.success, c.total, c.inprogress, c.offline, c.failed
        );
        lines.push(summary);
        out.frame(&lines);
        if task.state == TaskState::Finished {
            out.end(&format!(
                "  finished in {:.1} s: {} succeeded, {} failed",
                started.elapsed().as_secs_f64(),
                c.success,
                c.failed
            ));
            return Ok(Wave {
                title: header.to_owned(),
                total: c.total,
                success: c.success,
                failed: c.failed,
                devices: rows
                    .items
                    .iter()
                    .map(|r| {
                        (
                            r.device_id,
                            (r.state, r.message.clone().unwrap_or_default()),
                        )
                    })
                    .collect(),
            });
        }
        if started.elapsed() > timeout {
            bail!(
                "task {task_id} did not finish within {} s ({} of {} done)",
                timeout.as_secs(),
                c.success + c.failed,
                c.total
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// How far a device is in its part of a task, 0..=1, from its last step.
fn fraction(r: &TaskDeviceRow) -> f64 {
    if r.state == DeviceTaskState::Success || r.state == DeviceTaskState::Failed {
        return 1.0;
    }
    let pct = f64::from(r.percent.unwrap_or(0)) / 100.0;
    let (from, to) = match r.step.as_deref() {
        None => return 0.0,
        Some("download") => (0.0, 0.3),
        Some("inspect") => (0.3, 0.35),
        Some("precheck") => (0.35, 0.4),
        Some("stage") => (0.4, 0.55),
        Some("consent") => (0.55, 0.6),
        Some("apply") => (0.6, 0.8),
        Some("verify") => (0.8, 0.95),
        Some(_) => (0.95, 1.0),
    };
    from + (to - from) * pct
}

fn bar(frac: f64, width: usize) -> String {
    let full = ((frac.clamp(0.0, 1.0)) * width as f64).round() as usize;
    format!("[{}{}]", "#".repeat(full), ".".repeat(width - full))
}

fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let cut: String = s.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

fn print_table(devices: &[DeviceRow], waves: &[Wave]) {
    println!();
    for (i, w) in waves.iter().enumerate() {
        println!(
            "step {}: {} — {} of {} succeeded, {} failed",
            i + 1,
            w.title,
            w.success,
            w.total,
            w.failed
        );
    }
    println!();
    println!(
        "{:<10} {:<11} {:>3}  {:<8} {:<12} {:<7} steps",
        "terminal", "site", "no", "version", "state", "online",
    );
    let mut sorted: Vec<&DeviceRow> = devices.iter().collect();
    sorted.sort_by_key(|d| d.number);
    for d in sorted {
        let results: Vec<String> = waves
            .iter()
            .enumerate()
            .filter_map(|(i, w)| {
                w.devices
                    .get(&d.id)
                    .map(|(s, _)| format!("{}:{}", i + 1, s.as_str()))
            })
            .collect();
        println!(
            "{:<10} {:<11} {:>3}  {:<8} {:<12} {:<7} {}",
            d.name,
            clip(&d.site, 11),
            d.number,
            d.version,
            clip(&d.state, 12),
            if d.online { "yes" } else { "no" },
            results.join(" ")
        );
    }
}

/// Output: redrawn frames on a terminal, one line per change otherwise.
struct Out {
    tty: bool,
    drawn: std::sync::Mutex<usize>,
}

impl Out {
    fn new() -> Self {
        Self {
            tty: std::io::stdout().is_terminal(),
            drawn: std::sync::Mutex::new(0),
        }
    }

    fn say(&self, line: &str) {
        println!("{line}");
    }

    fn begin(&self, header: &str) {
        println!();
        println!("{header}");
        *self.drawn.lock().expect("out lock") = 0;
    }

    /// Replaces the last frame (terminal only).
    fn frame(&self, lines: &[String]) {
        if !self.tty {
            return;
        }
        let mut drawn = self.drawn.lock().expect("out lock");
        let mut s = String::new();
        if *drawn > 0 {
            s.push_str(&format!("\x1b[{}A", *drawn));
        }
        for l in lines {
            s.push_str("\x1b[2K");
            s.push_str(l);
            s.push('\n');
        }
        *drawn = lines.len();
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(s.as_bytes());
        let _ = stdout.flush();
    }

    /// One change (plain output only).
    fn event(&self, line: &str) {
        if !self.tty {
            println!("{line}");
        }
    }

    fn end(&self, line: &str) {
        *self.drawn.lock().expect("out lock") = 0;
        println!("{line}");
    }
}

/// The operator API, as the demo uses it.
struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    fn new(base: &str, token: &str) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
            base: base.to_owned(),
            token: token.to_owned(),
        })
    }

    async fn send<R: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> anyhow::Result<R> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("{what}: the demo server does not answer"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("{what}: the server answered {status}: {text}");
        }
        serde_json::from_str(&text)
            .with_context(|| format!("{what}: unexpected answer {}", clip(&text, 200)))
    }

    async fn get<R: DeserializeOwned>(&self, path: &str) -> anyhow::Result<R> {
        self.send(
            self.http.get(format!("{}{path}", self.base)),
            &format!("GET {path}"),
        )
        .await
    }

    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<R> {
        self.send(
            self.http.post(format!("{}{path}", self.base)).json(body),
            &format!("POST {path}"),
        )
        .await
    }

    async fn put<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<R> {
        self.send(
            self.http.put(format!("{}{path}", self.base)).json(body),
            &format!("PUT {path}"),
        )
        .await
    }

    async fn post_bytes<R: DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<R> {
        self.send(
            self.http.post(format!("{}{path}", self.base)).body(body),
            &format!("POST {path}"),
        )
        .await
    }

    async fn devices(&self) -> anyhow::Result<Vec<DeviceRow>> {
        let page: Page<DeviceRow> = self.get("/api/v1/devices?per_page=1000").await?;
        Ok(page.items)
    }

    async fn wait_healthy(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            match self.get::<serde_json::Value>("/api/v1/health").await {
                Ok(_) => return Ok(()),
                Err(e) if started.elapsed() > Duration::from_secs(30) => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Waits until `n` devices are enrolled and have reported an installed version.
    async fn wait_enrolled(&self, n: usize, timeout: Duration) -> anyhow::Result<Vec<DeviceRow>> {
        let started = Instant::now();
        loop {
            let devices = self.devices().await?;
            let ready = devices.iter().filter(|d| !d.version.is_empty()).count();
            if devices.len() >= n && ready >= n {
                return Ok(devices);
            }
            if started.elapsed() > timeout {
                bail!(
                    "only {} of {n} terminals enrolled and {ready} reported a version within {} s",
                    devices.len(),
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The demo fleet's throwaway keys and repository: a fleet owner's root and
/// targets keys, one key per plugin vendor and the release key, all made here
/// and kept in the demo folder.
struct Fleet {
    keys: PathBuf,
    repo: posup_trust::offline::RepoDir,
    release: posup_trust::SigningKey,
    vendors: BTreeMap<String, posup_trust::SigningKey>,
    server: crate::trust::ServerArg,
}

impl Fleet {
    async fn new(
        root: &Path,
        base: &str,
        admin: &str,
        runtime: &posup_runtime::Runtime,
        products: &[Product],
    ) -> anyhow::Result<Fleet> {
        use posup_trust::keys::write_new;
        use posup_trust::names;
        use posup_trust::offline::{self, Delegation, InitSpec, RepoDir};
        let keys = root.join("keys");
        std::fs::create_dir_all(&keys)?;
        let owner_root = write_new(&keys.join("root.key"))?;
        let targets = write_new(&keys.join("targets.key"))?;
        let release = write_new(&keys.join("release.key"))?;
        let server = crate::trust::ServerArg {
            server: base.to_owned(),
            token: admin.to_owned(),
        };
        let (snapshot_key, timestamp_key) = crate::trust::online_keys(base, admin).await?;
        let repo = RepoDir::open(&root.join("repo"))?;
        let spec = InitSpec {
            root_keys: vec![owner_root.public()],
            root_threshold: 1,
            targets_keys: vec![targets.public()],
            targets_threshold: 1,
            snapshot_key,
            timestamp_key,
            root_days: offline::ROOT_DAYS,
            targets_days: offline::TARGETS_DAYS,
        };
        offline::init(&repo, &spec, &[&owner_root], &[&targets])?;
        // Each vendor may sign its own plugins for the device types they run on.
        let mut paths: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for p in products {
            let bytes = posup_bundled::get(p.plugin)
                .with_context(|| format!("the {} plugin is not bundled in this build", p.plugin))?;
            let info = runtime.load(p.plugin, bytes)?.info().await?;
            paths
                .entry(info.vendor.clone())
                .or_default()
                .push(names::plugin_pattern(p.device_type, &info.name)?);
        }
        let mut vendors = BTreeMap::new();
        for (vendor, paths) in paths {
            let role = names::vendor_role(&vendor)?;
            let key = write_new(&keys.join(format!("{role}.key")))?;
            let delegation = Delegation {
                name: role,
                keys: vec![key.public()],
                threshold: 1,
                paths,
            };
            offline::delegate(&repo, &delegation, &[&targets], offline::TARGETS_DAYS)?;
            vendors.insert(vendor, key);
        }
        let delegation = Delegation {
            name: names::RELEASE.into(),
            keys: vec![release.public()],
            threshold: 1,
            paths: vec![names::package_pattern(None)?],
        };
        offline::delegate(&repo, &delegation, &[&targets], offline::TARGETS_DAYS)?;
        Ok(Fleet {
            keys,
            repo,
            release,
            vendors,
            server,
        })
    }

    fn trusted_root(&self) -> PathBuf {
        self.repo.path().join("1.root.json")
    }

    fn sign_plugin(
        &self,
        bytes: &[u8],
        info: &posup_runtime::types::PluginInfo,
        device_type: &str,
    ) -> anyhow::Result<()> {
        let key = self
            .vendors
            .get(&info.vendor)
            .with_context(|| format!("no key of vendor {}", info.vendor))?;
        crate::trust::sign_plugin(&self.repo, &[key], bytes, info, &[device_type.to_owned()])?;
        Ok(())
    }

    fn sign_package(&self, bytes: &[u8], pkg: &PackageView) -> anyhow::Result<()> {
        let release = posup_trust::offline::Release {
            version: pkg.version.clone(),
            allow_downgrade: false,
        };
        crate::trust::sign_package(
            &self.repo,
            &[&self.release],
            bytes,
            &pkg.file_name,
            &pkg.device_type,
            &release,
        )
    }

    async fn publish(&self) -> anyhow::Result<posup_proto::api::TufStatus> {
        crate::trust::publish(&self.repo, &self.server).await
    }
}
