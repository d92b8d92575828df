//! Benchmarks of the agent: its memory when idle, and how long a rollout takes
//! across a simulated fleet.
//!
//! `cargo bench -p posup --bench fleet [-- --devices 1000,10000] [--idle-secs 10]`
//!
//! 1. **Idle agent RSS.** A real `posup agent` process with the kiosk plugin, a
//!    simulated kiosk running as a process, the server in this process, polling
//!    every second. After `--idle-secs` of idling, the agent's resident set
//!    (VmRSS) and peak (VmHWM) are printed next to the target (25 MB) and, as a
//!    peer measured in the same run, the simulated kiosk process's RSS.
//! 2. **Rollout time.** For each fleet size, a fresh server (SQLite) in this
//!    process with a 5 s poll interval and a `posup sim` process of that many
//!    simulated agents. Once every device enrolled and reported, an Update task
//!    for all of them starts; printed: the time from task start to all devices
//!    done, the polls per second the fleet made meanwhile, and the CPU time
//!    of the server and of the simulated fleet, so growth with N and whether the
//!    server's CPU is the limit can be read off.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use posup_proto::api::{
    CreateTask, DeviceRow, DeviceTypeBody, EnablePlugin, GroupKind, GroupView, PackageView,
    TaskState, TaskView,
};
use posup_proto::{Capabilities, DirPaths, Page, TaskKind};
use serde::Serialize;
use serde::de::DeserializeOwned;

const POSUP: &str = env!("CARGO_BIN_EXE_posup");
const ADMIN: &str = "pop_bench_admin";
const SECRET: &str = "pes_bench_secret";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let sizes: Vec<usize> = value("--devices")
        .unwrap_or_else(|| "1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let idle: u64 = value("--idle-secs")
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        idle_rss(Duration::from_secs(idle)).await?;
        println!();
        println!("rollout of one Update task, 5 s poll interval, server on SQLite in this process");
        println!(
            "{:>7} {:>10} {:>9} {:>11} {:>12} {:>12} {:>10}",
            "devices", "enroll s", "task s", "s/1000 dev", "polls/s", "server cpu s", "sim cpu s"
        );
        for n in sizes {
            rollout(n).await?;
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
    // The kiosk device type, its plugin and a package.
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

async fn rollout(n: usize) -> anyhow::Result<()> {
    let server = server(5).await?;
    let api = Api::new(&server.url);
    let tmp = tempfile::tempdir()?;
    let pkg = package(&api, tmp.path()).await?;
    let mut sim = Command::new(POSUP)
        .args([
            "sim",
            "--devices",
            &n.to_string(),
            "--server",
            &server.url,
            "--secret",
            SECRET,
        ])
        .args(["--duration", "3600", "--report-every", "0.5"])
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
    let start = Instant::now();
    loop {
        let page: Page<DeviceRow> = api.get("/api/v1/devices?version=1.0.0&per_page=1").await?;
        if page.total as usize >= n {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(600),
            "only {} of {n} simulated devices enrolled and reported",
            page.total
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let enrolled = start.elapsed();
    let groups: Vec<GroupView> = api.get("/api/v1/groups").await?;
    let all = groups
        .iter()
        .find(|g| g.kind == GroupKind::All)
        .map(|g| g.id)
        .unwrap_or(1);
    let cpu0 = (cpu_secs(std::process::id()), cpu_secs(sim.id()));
    let polls0 = polls(&last);
    let task: TaskView = api
        .post(
            "/api/v1/tasks",
            &CreateTask {
                name: None,
                kind: TaskKind::Update,
                package_id: pkg.id,
                group_id: all,
                start_at: None,
                notice_override: Some("benchmark: simulated terminals, nobody to notify".into()),
            },
        )
        .await?;
    let started = Instant::now();
    let counts = loop {
        let t: TaskView = api.get(&format!("/api/v1/tasks/{}", task.id)).await?;
        if t.state == TaskState::Finished {
            break t.counts;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "the task did not finish: {:?}",
            t.counts
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let took = started.elapsed();
    let cpu1 = (cpu_secs(std::process::id()), cpu_secs(sim.id()));
    let polls1 = polls(&last);
    anyhow::ensure!(
        counts.success as usize == n,
        "not every device succeeded: {counts:?}"
    );
    println!(
        "{n:>7} {:>10.1} {:>9.1} {:>11.2} {:>12.0} {:>12.1} {:>10.1}",
        enrolled.as_secs_f64(),
        took.as_secs_f64(),
        took.as_secs_f64() / (n as f64 / 1000.0),
        polls1.saturating_sub(polls0) as f64 / took.as_secs_f64(),
        cpu1.0 - cpu0.0,
        cpu1.1 - cpu0.1,
    );
    kill(&mut sim);
    server.stop().await
}

/// The simulated fleet's poll counter from its latest summary line.
fn polls(last: &std::sync::Mutex<String>) -> u64 {
    let line = last.lock().expect("summary lock").clone();
    line.split_once("polls ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
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
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after ") ".
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
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

    async fn post_bytes<R: DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<R> {
        self.send(self.http.post(format!("{}{path}", self.base)).body(body))
            .await
    }
}
