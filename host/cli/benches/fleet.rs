//! Benchmarks of the agent: its memory when idle, and how long a rollout takes
//! across a simulated fleet.
//!
//! `cargo bench -p posup --bench fleet [-- --devices 1000,10000] [--idle-secs 10] [--rollout]`
//!
//! 1. **Idle agent RSS.** A real `posup agent` process with the kiosk plugin, a
//!    simulated kiosk running as a process, the server in this process, polling
//!    every second. After `--idle-secs` of idling, the agent's resident set
//!    (VmRSS) and peak (VmHWM) are printed next to the target (25 MB) and, as a
//!    peer measured in the same run, the simulated kiosk process's RSS.
//! 2. **Rollouts at fleet scale.** For each backend (SQLite, PostgreSQL with
//!    one and with two replicas) and each fleet size, fresh `posup server`
//!    processes and a `posup sim` process of that many simulated agents (5 s
//!    polls up to 10 000 devices, 30 s above). Two replicas share the database
//!    and the blob folder, behind the bench's own round-robin TCP front. Once
//!    every device enrolled and reported, the fleet idles for two poll
//!    intervals (the peer: what an idle poll costs the server), then an Update
//!    task for all of them runs. Printed per run: enrollment time, task time,
//!    server CPU per device update (and, on PostgreSQL, the database's CPU per
//!    update besides), the same less the polls during the update that repeated
//!    their device's inventory and were handed nothing, each priced at the
//!    idling fleet's cost (`less idle ms`: what the updates cost beyond the
//!    fleet's idling), the server CPU per poll of the idling fleet (background
//!    work included), polls per second and the p99 poll latency during the task,
//!    the servers' peak RSS, how long reading the task took on average (the
//!    bench reads it twice a second, as an operator's console would), and the
//!    server CPU per poll of the fleet idling again for two poll intervals once
//!    updated (`idle after µs`), next to the first idle's, and the requests
//!    the fleet made during the update per device updated (`req/update`: polls,
//!    report batches and downloads).
//! 3. **`--rollout`**: the same runs with a rollout (one wave, the whole fleet)
//!    in place of the task, and one more terminal enrolled at a store of its
//!    own that never polls, as a register switched off for the night. The
//!    update is done when every simulated device succeeded; the rollout still
//!    waits for the straggler while the fleet idles again, and its stores'
//!    reports (every store's but the straggler's) are written in the last
//!    seconds of the update and the first of that idle.
//!
//! The simulated devices share 4 096 connections, at most that many requests
//! under way at once, the others waiting their turn (terminals behind a proxy,
//! as the server of a large fleet sees them); a process has too few file
//! descriptors to hold one per device at 100 000.
//! `--send-reports-every 0,1` compares the simulated agents sending each
//! step's reports at once (0) with their default, a busy device's reports
//! together at most once a second (`[poll] report_every_secs`).
//! `--backends sqlite,postgres` and `--replicas 1,2` (PostgreSQL) choose the
//! runs; `--servers before=PATH,after=PATH` runs each of them once per named
//! `posup` binary as the server (the simulated fleet stays this build's), so a
//! change is measured against its starting point in one run; PostgreSQL is the one at 127.0.0.1:5432 (`test` machines' trust auth),
//! in a database `posup_bench` made afresh for each run, with autovacuum on as
//! in a deployment (a machine that keeps it off for its tests has it turned on
//! for the runs and off again after, unless the bench is killed) and vacuumed
//! and analyzed once the fleet enrolled, as a fleet enrolled over days would be
//! by its first rollout.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use posup_proto::agent::{DeviceIdentity, EnrollRequest, Site};
use posup_proto::api::{
    CreateTask, DeviceRow, DeviceTypeBody, EnablePlugin, GroupKind, GroupView, PackageView,
    TaskState, TaskView,
};
use posup_proto::rollout::{CreateRollout, RolloutView, WaveSpec};
use posup_proto::{Capabilities, DirPaths, Page, TaskKind};
use serde::Serialize;
use serde::de::DeserializeOwned;

const POSUP: &str = env!("CARGO_BIN_EXE_posup");
const ADMIN: &str = "pop_bench_admin";
/// Why an Update starts without the 24 hours' notice.
const NOTICE_OVERRIDE: &str = "benchmark: simulated terminals, nobody to notify";
const SECRET: &str = "pes_bench_secret";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let list = |name: &str, default: &str| -> Vec<String> {
        value(name)
            .unwrap_or_else(|| default.into())
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let sizes: Vec<usize> = list("--devices", "1000,10000,100000")
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    let backends = list("--backends", "sqlite,postgres");
    let replicas: Vec<usize> = list("--replicas", "1,2")
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    // Each entry: (name, binary), the name printed with its runs.
    let server_bins: Vec<(String, String)> = match value("--servers") {
        None => vec![(String::new(), POSUP.to_owned())],
        Some(v) => v
            .split(',')
            .map(|entry| match entry.split_once('=') {
                Some((name, path)) => (name.trim().to_owned(), path.trim().to_owned()),
                None => (entry.trim().to_owned(), entry.trim().to_owned()),
            })
            .collect(),
    };
    // The simulated agents' `report_every_secs`; more than one compares them.
    let reports_every: Vec<String> = list("--send-reports-every", "1");
    let rollout = args.iter().any(|a| a == "--rollout");
    let idle: u64 = value("--idle-secs")
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let _autovacuum = if backends.iter().any(|b| b == "postgres") {
        Some(Autovacuum::on()?)
    } else {
        None
    };
    rt.block_on(async move {
        if idle > 0 {
            idle_rss(Duration::from_secs(idle)).await?;
            println!();
        }
        println!(
            "{} for the whole fleet; servers and the simulated fleet are processes of their own",
            if rollout {
                "one Update rollout"
            } else {
                "one Update task"
            }
        );
        println!(
            "{:<20} {:>7} {:>5} {:>9} {:>8} {:>13} {:>12} {:>12} {:>12} {:>8} {:>9} {:>9} {:>11} {:>13} {:>10}",
            "backend",
            "devices",
            "poll",
            "enroll s",
            "task s",
            "cpu/update ms",
            "less idle ms",
            "+db/update ms",
            "cpu/idle µs",
            "polls/s",
            "p99 ms",
            "peak MB",
            "task read ms",
            "idle after µs",
            "req/update"
        );
        for backend in &backends {
            let counts: &[usize] = if backend == "postgres" {
                &replicas
            } else {
                &[1]
            };
            for &replicas in counts {
                for &n in &sizes {
                    for every in &reports_every {
                        for (name, bin) in &server_bins {
                            let run = Run {
                                postgres: backend == "postgres",
                                replicas,
                                devices: n,
                                poll_secs: if n > 10_000 { 30 } else { 5 },
                                server: (name.clone(), bin.clone()),
                                rollout,
                                reports_every: (reports_every.len() > 1).then(|| every.clone()),
                            };
                            if let Err(e) = run.go().await {
                                println!("{:<20} {n:>7} failed: {e:#}", run.label());
                            }
                        }
                    }
                }
            }
        }
        anyhow::Ok(())
    })
}

struct Server {
    url: String,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn server(poll_secs: u32) -> anyhow::Result<Server> {
    let dir = tempfile::tempdir()?;
    let mut config = posup_server::ServerConfig::new(dir.path());
    config.admin_token = Some(ADMIN.into());
    config.enrollment_secret = Some(SECRET.into());
    config.poll_interval_secs = poll_secs;
    config.offline_after = Duration::from_secs(u64::from(poll_secs) * 6);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(posup_server::run(config, listener, async move {
        let mut rx = rx;
        let _ = rx.wait_for(|s| *s).await;
    }));
    let api = Api::new(&url);
    let start = Instant::now();
    while api
        .get::<serde_json::Value>("/api/v1/health")
        .await
        .is_err()
    {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(30),
            "the server did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    setup(&api).await?;
    Ok(Server {
        url,
        stop,
        task,
        _dir: dir,
    })
}

impl Server {
    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.task.await??;
        Ok(())
    }
}

/// The kiosk device type with its plugin enabled.
async fn setup(api: &Api) -> anyhow::Result<()> {
    let wasm = posup_bundled::get("kiosk")
        .expect("the kiosk plugin is bundled")
        .to_vec();
    let _: serde_json::Value = api
        .post_bytes("/api/v1/plugins?file_name=kiosk.wasm", wasm)
        .await?;
    let body = DeviceTypeBody {
        description: "bench".into(),
        allowed: Capabilities::updater(&["kiosk"]),
        paths: DirPaths {
            product: Some("/opt/kiosk".into()),
            staging: Some("/opt/.posup/staging".into()),
            backup: Some("/opt/.posup/backup".into()),
            logs: Some("/var/log/kiosk".into()),
        },
        poll_interval_secs: None,
        site_limit: None,
        impact: None,
    };
    let _: serde_json::Value = api.put("/api/v1/device-types/kiosk", &body).await?;
    let _: serde_json::Value = api
        .put(
            "/api/v1/device-types/kiosk/plugin",
            &EnablePlugin {
                name: "kiosk".into(),
                version: None,
            },
        )
        .await?;
    Ok(())
}

async fn package(api: &Api, dir: &Path) -> anyhow::Result<PackageView> {
    let file = posup_sim::kiosk_package(dir, "7.5.0", false)?;
    api.post_bytes(
        "/api/v1/packages?device_type=kiosk&file_name=kiosk_7.5.0.tgz",
        std::fs::read(file)?,
    )
    .await
}

async fn idle_rss(idle: Duration) -> anyhow::Result<()> {
    let server = server(1).await?;
    let api = Api::new(&server.url);
    let tmp = tempfile::tempdir()?;
    let root = tmp.path();
    let (product, logs, state) = (root.join("opt/kiosk"), root.join("log"), root.join("posup"));
    posup_sim::init_kiosk(&product, &logs, "7.4.2")?;
    let config = root.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"server = "{url}"
insecure_http = true
insecure_unsigned = true
enrollment_secret = "{SECRET}"
state_dir = "{state}"
[device]
site = "Bench store"
name = "Kiosk 1"
number = 1
device_type = "kiosk"
[device_types.kiosk.dirs]
product = "{product}"
staging = "{root}/opt/.posup/staging"
backup = "{root}/opt/.posup/backup"
logs = "{logs}"
[device_types.kiosk.allow]
services = ["kiosk"]
prompt = true
[device_types.kiosk.services.kiosk]
command = ["{POSUP}", "sim-product", "kiosk", "--product", "{product}", "--logs", "{logs}"]
"#,
            url = server.url,
            state = state.display(),
            product = product.display(),
            root = root.display(),
            logs = logs.display(),
        ),
    )?;
    let mut kiosk = Command::new(POSUP)
        .args(["sim-product", "kiosk", "--product"])
        .arg(&product)
        .arg("--logs")
        .arg(&logs)
        .stdout(Stdio::null())
        .spawn()?;
    let mut agent = Command::new(POSUP)
        .args(["agent", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let start = Instant::now();
    loop {
        let page: Page<DeviceRow> = api.get("/api/v1/devices").await?;
        if page.items.first().is_some_and(|d| !d.version.is_empty()) {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(60),
            "the agent did not report"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(idle).await;
    let first = memory(agent.id());
    // A terminal's agent runs with the compiled plugin in its cache from the
    // second start on: measured again after a restart.
    kill(&mut agent);
    let mut agent = Command::new(POSUP)
        .args(["agent", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    tokio::time::sleep(idle).await;
    let warm = memory(agent.id());
    let kiosk_mem = memory(kiosk.id());
    println!(
        "idle agent, {} s of 1 s polls with the kiosk plugin loaded (target RSS < 25 MB):",
        idle.as_secs()
    );
    for (what, m) in [
        ("first start (compiles the plugin)", first),
        ("restart (plugin from the cache)", warm),
        ("peer: simulated kiosk process", kiosk_mem),
    ] {
        println!(
            "  {what:<36} RSS {:>5.1} MB (anonymous {:>5.1} MB, file {:>5.1} MB), peak {:>5.1} MB",
            m.rss as f64 / 1024.0,
            m.anon as f64 / 1024.0,
            m.file as f64 / 1024.0,
            m.hwm as f64 / 1024.0
        );
    }
    kill(&mut agent);
    kill(&mut kiosk);
    server.stop().await
}

/// One measured rollout.
struct Run {
    postgres: bool,
    replicas: usize,
    devices: usize,
    poll_secs: u32,
    /// The server binary's name in the output, and its path.
    server: (String, String),
    /// A rollout with a straggler in place of the task (see the module).
    rollout: bool,
    /// The simulated agents' `--send-reports-every`, when runs compare it.
    reports_every: Option<String>,
}

const BENCH_DB: &str = "posup_bench";

/// The connections the simulated fleet shares (`posup sim`'s default).
const SIM_CONNECTIONS: usize = 4096;

impl Run {
    fn label(&self) -> String {
        let backend = if self.postgres {
            format!("postgres ×{}", self.replicas)
        } else {
            "sqlite".into()
        };
        let label = match self.server.0.as_str() {
            "" => backend,
            name => format!("{backend} {name}"),
        };
        match &self.reports_every {
            Some(secs) => format!("{label} r{secs}s"),
            None => label,
        }
    }

    async fn go(&self) -> anyhow::Result<()> {
        let n = self.devices;
        // The simulated devices share at most SIM_CONNECTIONS connections; the
        // server and a round-robin front hold as many again.
        let needed = (2 * n.min(SIM_CONNECTIONS)) as u64 + 1024;
        let limit = open_files_limit();
        anyhow::ensure!(
            limit >= needed,
            "{n} devices need {needed} open files per process, and the limit is {limit}: \
             run the benchmark under `ulimit -n {needed}` (as root, raise the hard limit too)"
        );
        let tmp = tempfile::tempdir()?;
        let database = if self.postgres {
            fresh_postgres()?;
            Some(format!("postgres://postgres@127.0.0.1:5432/{BENCH_DB}"))
        } else {
            None
        };
        let mut servers = Vec::new();
        for i in 0..self.replicas {
            servers.push(ServerProcess::start(
                &self.server.1,
                tmp.path(),
                i,
                database.as_deref(),
                self.poll_secs,
            )?);
            servers[i].ready().await?;
        }
        let api = Api::new(&servers[0].url);
        setup(&api).await?;
        let pkg = package(&api, tmp.path()).await?;
        let front = if self.replicas > 1 {
            let urls: Vec<String> = servers.iter().map(|s| s.addr.clone()).collect();
            round_robin(urls).await?
        } else {
            servers[0].url.clone()
        };
        let mut sim = Command::new(POSUP)
            .args([
                "sim",
                "--devices",
                &n.to_string(),
                "--server",
                &front,
                "--secret",
                SECRET,
            ])
            .args(["--duration", "7200", "--report-every", "0.5"])
            .args([
                "--send-reports-every",
                self.reports_every.as_deref().unwrap_or("1"),
            ])
            .stdout(Stdio::piped())
            .spawn()?;
        // The fleet prints its counters twice a second; the latest line is kept.
        let last = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        {
            let out = sim.stdout.take().expect("piped stdout");
            let last = last.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    *last.lock().expect("summary lock") = line;
                }
            });
        }
        let result = self.measure(&api, &servers, &pkg, &last).await;
        kill(&mut sim);
        for s in &mut servers {
            s.stop();
        }
        result
    }

    async fn measure(
        &self,
        api: &Api,
        servers: &[ServerProcess],
        pkg: &PackageView,
        last: &std::sync::Mutex<String>,
    ) -> anyhow::Result<()> {
        let n = self.devices;
        let start = Instant::now();
        loop {
            let page: Page<DeviceRow> = api.get("/api/v1/devices?version=1.0.0&per_page=1").await?;
            if page.total as usize >= n {
                break;
            }
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(1800),
                "only {} of {n} simulated devices enrolled and reported",
                page.total
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let enrolled = start.elapsed();
        if self.postgres {
            // A fleet enrolls over days, and autovacuum has long caught up with
            // it by its first rollout; this one enrolled in seconds.
            psql_in(BENCH_DB, "VACUUM ANALYZE")?;
        }
        let cpu = || servers.iter().map(|s| cpu_secs(s.child.id())).sum::<f64>();

        // The peer: the fleet idling.
        let (idle_cpu0, idle_polls0) = (cpu(), Summary::read(last).polls);
        tokio::time::sleep(Duration::from_secs(2 * u64::from(self.poll_secs))).await;
        let (idle_cpu1, idle_polls1) = (cpu(), Summary::read(last).polls);
        let idle_per_poll =
            (idle_cpu1 - idle_cpu0) / idle_polls1.saturating_sub(idle_polls0).max(1) as f64;

        let groups: Vec<GroupView> = api.get("/api/v1/groups").await?;
        let all = groups
            .iter()
            .find(|g| g.kind == GroupKind::All)
            .map(|g| g.id)
            .unwrap_or(1);
        if self.rollout {
            api.enroll_straggler().await?;
        }
        let cpu0 = cpu();
        let db0 = postgres_cpu();
        let before = Summary::read(last);
        let (path, started) = if self.rollout {
            let r: RolloutView = api
                .post(
                    "/api/v1/rollouts",
                    &CreateRollout {
                        name: Some("bench".into()),
                        kind: TaskKind::Update,
                        packages: vec![pkg.id],
                        waves: vec![WaveSpec {
                            group_id: all,
                            success_percent: 100,
                            auto_advance: true,
                        }],
                        max_failed: None,
                        max_failed_percent: None,
                        start_at: None,
                        conditions: String::new(),
                        notice_override: Some(NOTICE_OVERRIDE.into()),
                    },
                )
                .await?;
            (format!("/api/v1/rollouts/{}", r.id), Instant::now())
        } else {
            let task: TaskView = api
                .post(
                    "/api/v1/tasks",
                    &CreateTask {
                        name: None,
                        kind: TaskKind::Update,
                        package_id: pkg.id,
                        group_id: all,
                        start_at: None,
                        notice_override: Some(NOTICE_OVERRIDE.into()),
                    },
                )
                .await?;
            (format!("/api/v1/tasks/{}", task.id), Instant::now())
        };
        // What an operator watching the task waits for each time the console
        // reads it, while the fleet updates. A rollout is done when every
        // simulated device succeeded: its straggler never will.
        let (mut reads, mut reading) = (0u32, Duration::ZERO);
        let counts = loop {
            let asked = Instant::now();
            let (done, counts) = if self.rollout {
                let r: RolloutView = api.get(&path).await?;
                (r.counts.success as usize >= n, r.counts)
            } else {
                let t: TaskView = api.get(&path).await?;
                (t.state == TaskState::Finished, t.counts)
            };
            reads += 1;
            reading += asked.elapsed();
            if done {
                break counts;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(3600),
                "the update did not finish: {counts:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let took = started.elapsed();
        let cpu1 = cpu();
        let db1 = postgres_cpu();
        let after = Summary::read(last);
        anyhow::ensure!(
            counts.success as usize == n,
            "not every device succeeded: {counts:?}"
        );
        // The fleet's polls with nothing to do, priced as the idling fleet's
        // were: what the update costs less what the fleet costs idling
        // meanwhile (at 30 s polls and 100 000 devices, 3 300 polls a second).
        let idle_during = after.idle_polls.saturating_sub(before.idle_polls) as f64;
        let latency: Vec<u64> = after
            .latency
            .iter()
            .zip(before.latency.iter().chain(std::iter::repeat(&0)))
            .map(|(a, b)| a.saturating_sub(*b))
            .collect();
        let peak = servers
            .iter()
            .map(|s| memory(s.child.id()).hwm)
            .max()
            .unwrap_or(0);
        // The fleet idling again, updated (a rollout waiting for its
        // straggler).
        let (cpu2, polls2) = (cpu(), Summary::read(last).polls);
        tokio::time::sleep(Duration::from_secs(2 * u64::from(self.poll_secs))).await;
        let (cpu3, polls3) = (cpu(), Summary::read(last).polls);
        let idle_after = (cpu3 - cpu2) / polls3.saturating_sub(polls2).max(1) as f64;
        println!(
            "{:<20} {n:>7} {:>4}s {:>9.1} {:>8.1} {:>13.3} {:>12.3} {:>12} {:>12.1} {:>8.0} {:>9.1} {:>9.0} {:>11.1} {:>13.1} {:>10.1}",
            self.label(),
            self.poll_secs,
            enrolled.as_secs_f64(),
            took.as_secs_f64(),
            (cpu1 - cpu0) * 1000.0 / n as f64,
            (cpu1 - cpu0 - idle_during * idle_per_poll) * 1000.0 / n as f64,
            if self.postgres {
                format!("{:.3}", (db1 - db0) * 1000.0 / n as f64)
            } else {
                "-".into()
            },
            idle_per_poll * 1e6,
            after.polls.saturating_sub(before.polls) as f64 / took.as_secs_f64(),
            posup_fleet::Latency::percentile(&latency, 0.99).as_secs_f64() * 1000.0,
            peak as f64 / 1024.0,
            reading.as_secs_f64() * 1000.0 / f64::from(reads),
            idle_after * 1e6,
            after.requests.saturating_sub(before.requests) as f64 / n as f64,
        );
        Ok(())
    }
}

/// A `posup server` process of a run.
struct ServerProcess {
    child: Child,
    /// `host:port`.
    addr: String,
    url: String,
    log: std::path::PathBuf,
}

impl ServerProcess {
    fn start(
        bin: &str,
        dir: &Path,
        index: usize,
        database: Option<&str>,
        poll_secs: u32,
    ) -> anyhow::Result<ServerProcess> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let data = dir.join(format!("server-{index}"));
        let log = dir.join(format!("server-{index}.log"));
        let mut cmd = Command::new(bin);
        cmd.args(["server", "--listen", &addr, "--admin-token", ADMIN])
            .args(["--enrollment-secret", SECRET])
            .args(["--poll-interval-secs", &poll_secs.to_string()])
            .args(["--offline-after-secs", &(poll_secs * 6).to_string()])
            .arg("--data-dir")
            .arg(&data)
            // Replicas share what a fleet's replicas share: blobs and online keys.
            .arg("--blob-dir")
            .arg(dir.join("blobs"))
            .arg("--tuf-keys")
            .arg(dir.join("tuf-keys"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        if let Some(url) = database {
            cmd.args(["--database", url]);
        }
        Ok(ServerProcess {
            child: cmd.spawn()?,
            url: format!("http://{addr}"),
            addr,
            log,
        })
    }

    async fn ready(&mut self) -> anyhow::Result<()> {
        let api = Api::new(&self.url);
        let start = Instant::now();
        while api
            .get::<serde_json::Value>("/api/v1/health")
            .await
            .is_err()
        {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!(
                    "the server exited ({status}): {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(60),
                "the server did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    fn stop(&mut self) {
        kill(&mut self.child);
    }
}

/// CPU seconds of the machine's PostgreSQL processes: on PostgreSQL, part of
/// what a device update costs is spent there.
fn postgres_cpu() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        // With the time of reaped children: the postmaster's holds that of
        // every connection closed during the run, which would be lost with it.
        .map(|pid| stat_secs(pid, &[USER, SYSTEM, CHILDREN_USER, CHILDREN_SYSTEM]))
        .sum()
}

/// This process's limit of open files, which its children inherit.
fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Drops and makes the bench's PostgreSQL database.
fn fresh_postgres() -> anyhow::Result<()> {
    psql(&format!("DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)"))?;
    psql(&format!("CREATE DATABASE {BENCH_DB}"))?;
    Ok(())
}

/// Runs `sql` in PostgreSQL's `postgres` database; returns what it printed.
fn psql(sql: &str) -> anyhow::Result<String> {
    psql_in("postgres", sql)
}

/// Runs `sql` in PostgreSQL's database `db`; returns what it printed.
fn psql_in(db: &str, sql: &str) -> anyhow::Result<String> {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", db, "-Atqc", sql])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "PostgreSQL at 127.0.0.1:5432: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// PostgreSQL as a deployment runs it, with autovacuum, for as long as this
/// lives: test machines turn it off (their databases live for seconds), and
/// without it a rollout of 100 000 parts is planned from the statistics of an
/// empty fleet. What the machine had is put back on drop.
struct Autovacuum {
    turned_on: bool,
}

impl Autovacuum {
    fn on() -> anyhow::Result<Self> {
        let turned_on = psql("SHOW autovacuum")? != "on";
        if turned_on {
            psql("ALTER SYSTEM SET autovacuum = on")?;
            psql("SELECT pg_reload_conf()")?;
            println!(
                "PostgreSQL's autovacuum is off on this machine: on for these runs, off again after"
            );
        }
        Ok(Self { turned_on })
    }
}

impl Drop for Autovacuum {
    fn drop(&mut self) {
        if self.turned_on {
            let _ = psql("ALTER SYSTEM RESET autovacuum");
            let _ = psql("SELECT pg_reload_conf()");
        }
    }
}

/// A TCP front that hands each new connection to the next of `upstreams`, as a
/// load balancer before replicas would. Returns its URL.
async fn round_robin(upstreams: Vec<String>) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let mut next = 0usize;
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                // Out of descriptors for a moment: the client retries.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let upstream = upstreams[next % upstreams.len()].clone();
            next += 1;
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    Ok(url)
}

/// The simulated fleet's counters from its latest summary line.
struct Summary {
    polls: u64,
    /// Polls repeating the device's inventory that were handed nothing.
    idle_polls: u64,
    /// Requests of any kind: polls, report batches, downloads.
    requests: u64,
    latency: Vec<u64>,
}

impl Summary {
    fn read(last: &std::sync::Mutex<String>) -> Summary {
        let line = last.lock().expect("summary lock").clone();
        let count = |after: &str| -> u64 {
            line.split_once(after)
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        let polls = count("polls ");
        let idle_polls = count("idle polls ");
        let requests = polls + count(" in ") + count("downloads ");
        let latency = line
            .rsplit_once("latency ")
            .map(|(_, rest)| {
                rest.split(',')
                    .filter_map(|c| c.trim().parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        Summary {
            polls,
            idle_polls,
            requests,
            latency,
        }
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Memory of a process, in KiB.
#[derive(Debug, Clone, Copy)]
struct Memory {
    rss: u64,
    anon: u64,
    file: u64,
    hwm: u64,
}

fn memory(pid: u32) -> Memory {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Memory {
        rss: field("VmRSS:"),
        anon: field("RssAnon:"),
        file: field("RssFile:"),
        hwm: field("VmHWM:"),
    }
}

/// User plus system CPU time of a process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    stat_secs(pid, &[USER, SYSTEM])
}

/// utime, stime, cutime and cstime: fields 14 to 17 of stat, counted from the
/// first field after the command name.
const USER: usize = 11;
const SYSTEM: usize = 12;
const CHILDREN_USER: usize = 13;
const CHILDREN_SYSTEM: usize = 14;

/// The sum of some of a process's CPU times, in seconds.
fn stat_secs(pid: u32, fields: &[usize]) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after ") ".
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    fields.iter().map(|i| ticks(*i)).sum::<f64>() / 100.0
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn new(base: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base.to_owned(),
        }
    }

    async fn send<R: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> anyhow::Result<R> {
        let resp = req.bearer_auth(ADMIN).send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        anyhow::ensure!(status.is_success(), "{status}: {text}");
        Ok(serde_json::from_str(&text)?)
    }

    async fn get<R: DeserializeOwned>(&self, path: &str) -> anyhow::Result<R> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<R> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    async fn put<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<R> {
        self.send(self.http.put(format!("{}{path}", self.base)).json(body))
            .await
    }

    /// Enrolls a kiosk at a store of its own that never polls, as a device
    /// would: with the enrollment secret and no operator's token.
    async fn enroll_straggler(&self) -> anyhow::Result<()> {
        let req = EnrollRequest {
            secret: SECRET.into(),
            device: DeviceIdentity {
                guid: "bench-straggler".into(),
                site: Site {
                    name: "Straggler store".into(),
                    address: "Night street 1".into(),
                },
                name: "Kiosk 1".into(),
                number: 1,
                device_type: "kiosk".into(),
                agent_version: "0.1.0".into(),
            },
        };
        let resp = self
            .http
            .post(format!("{}/api/v1/agent/enroll", self.base))
            .json(&req)
            .send()
            .await?;
        let status = resp.status();
        anyhow::ensure!(
            status.is_success(),
            "enrolling the straggler: {status}: {}",
            resp.text().await?
        );
        Ok(())
    }

    async fn post_bytes<R: DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<R> {
        self.send(self.http.post(format!("{}{path}", self.base)).body(body))
            .await
    }
}
