//! The agent against the real server: several terminals, each a real `posup agent`
//! process with its own state directory and a simulated kiosk running as a
//! process, updated through Download, Update and Forced update tasks. Crashes,
//! broken connections, a declining cashier and a restarted server are real too:
//! processes are killed, connections cut, the server stopped and started again.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use posup_proto::agent::FeedbackState;
use posup_proto::api::{
    CreateTask, DeviceRow, DeviceTaskState, DeviceTypeBody, EnablePlugin, GroupKind, GroupView,
    PackageView, TaskDeviceDetail, TaskDeviceRow, TaskState, TaskView,
};
use posup_proto::{Capabilities, DirPaths, Page, Phase, TaskKind};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{posup_path, read, snapshot};

pub(crate) const OLD: &str = "7.4.2";
pub(crate) const NEW: &str = "7.5.0";
pub(crate) const LIMIT: Duration = Duration::from_secs(90);

/// The server, in this process, on a fixed address so it can be restarted.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    pub(crate) data: PathBuf,
    pub(crate) admin: String,
    pub(crate) secret: String,
    pub(crate) stop: tokio::sync::watch::Sender<bool>,
    pub(crate) task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Server {
    pub(crate) async fn start(data: &Path, addr: Option<SocketAddr>) -> Server {
        let admin = "pop_e2e_admin".to_owned();
        let secret = "pes_e2e_secret".to_owned();
        let mut config = posup_server::ServerConfig::new(data);
        config.admin_token = Some(admin.clone());
        config.enrollment_secret = Some(secret.clone());
        // Below the 5 s a device type may ask for: tests poll every second.
        config.poll_interval_secs = 1;
        config.offline_after = Duration::from_secs(60);
        config.contact_flush = Some(Duration::from_millis(100));
        let listener = match addr {
            Some(a) => {
                // The old listener is gone; the port is free again at once.
                let start = Instant::now();
                loop {
                    match tokio::net::TcpListener::bind(a).await {
                        Ok(l) => break l,
                        Err(e) if start.elapsed() < Duration::from_secs(10) => {
                            let _ = e;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => panic!("binding {a} again: {e}"),
                    }
                }
            }
            None => tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let addr = listener.local_addr().unwrap();
        let (stop, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(posup_server::run(config, listener, async move {
            let mut rx = rx;
            let _ = rx.wait_for(|s| *s).await;
        }));
        let server = Server {
            addr,
            data: data.to_owned(),
            admin,
            secret,
            stop,
            task,
        };
        server.api().wait_healthy().await;
        server
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn api(&self) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: self.url(),
            token: self.admin.clone(),
        }
    }

    pub(crate) async fn stop(self) -> (SocketAddr, PathBuf) {
        let _ = self.stop.send(true);
        self.task.await.unwrap().unwrap();
        (self.addr, self.data)
    }
}

/// The operator API, as the tests use it.
pub(crate) struct Api {
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
    pub(crate) token: String,
}

impl Api {
    pub(crate) async fn send<R: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> R {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "{what}: {status}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: {e}: {text}"))
    }

    pub(crate) async fn get<R: DeserializeOwned>(&self, path: &str) -> R {
        self.send(self.http.get(format!("{}{path}", self.base)), path)
            .await
    }

    pub(crate) async fn post<B: Serialize, R: DeserializeOwned>(&self, path: &str, body: &B) -> R {
        self.send(
            self.http.post(format!("{}{path}", self.base)).json(body),
            path,
        )
        .await
    }

    pub(crate) async fn put<B: Serialize>(&self, path: &str, body: &B) {
        let _: serde_json::Value = self
            .send(
                self.http.put(format!("{}{path}", self.base)).json(body),
                path,
            )
            .await;
    }

    pub(crate) async fn post_bytes<R: DeserializeOwned>(&self, path: &str, body: Vec<u8>) -> R {
        self.send(
            self.http.post(format!("{}{path}", self.base)).body(body),
            path,
        )
        .await
    }

    pub(crate) async fn wait_healthy(&self) {
        let start = Instant::now();
        while self
            .http
            .get(format!("{}/api/v1/health", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .is_err()
        {
            assert!(start.elapsed() < LIMIT, "the server did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Uploads the kiosk plugin, configures the `kiosk` device type and enables it.
    pub(crate) async fn kiosk_device_type(&self) {
        self.bundled_device_type(
            "kiosk",
            "self-service kiosks",
            DirPaths {
                product: Some("/opt/kiosk".into()),
                staging: Some("/opt/.posup/staging".into()),
                backup: Some("/opt/.posup/backup".into()),
                logs: Some("/var/log/kiosk".into()),
            },
        )
        .await;
    }

    /// Uploads the bundled plugin `name` and enables it on a device type of the
    /// same name that allows it the usual updater's grants and its one service
    /// of that name; `paths` are where the type's directories usually are.
    pub(crate) async fn bundled_device_type(&self, name: &str, description: &str, paths: DirPaths) {
        let wasm = posup_bundled::get(name).expect("a bundled plugin").to_vec();
        let _: serde_json::Value = self
            .post_bytes(&format!("/api/v1/plugins?file_name={name}.wasm"), wasm)
            .await;
        let body = DeviceTypeBody {
            description: description.into(),
            allowed: Capabilities::updater(&[name]),
            paths,
            poll_interval_secs: None,
            site_limit: None,
            impact: None,
        };
        self.put(&format!("/api/v1/device-types/{name}"), &body)
            .await;
        self.put(
            &format!("/api/v1/device-types/{name}/plugin"),
            &EnablePlugin {
                name: name.into(),
                version: None,
            },
        )
        .await;
    }

    pub(crate) async fn kiosk_package(&self, dir: &Path, version: &str) -> PackageView {
        let file = posup_sim::kiosk_package(dir, version, false).unwrap();
        let name = file.file_name().unwrap().to_str().unwrap().to_owned();
        self.post_bytes(
            &format!("/api/v1/packages?device_type=kiosk&file_name={name}"),
            std::fs::read(&file).unwrap(),
        )
        .await
    }

    pub(crate) async fn group(&self, kind: GroupKind) -> i64 {
        let groups: Vec<GroupView> = self.get("/api/v1/groups").await;
        groups.iter().find(|g| g.kind == kind).unwrap().id
    }

    pub(crate) async fn task(&self, kind: TaskKind, package: &PackageView) -> TaskView {
        let group = self.group(GroupKind::All).await;
        self.post(
            "/api/v1/tasks",
            &CreateTask {
                name: None,
                kind,
                package_id: package.id,
                group_id: group,
                start_at: None,
                notice_override: Some("test: simulated terminals, nobody to notify".into()),
            },
        )
        .await
    }

    pub(crate) async fn devices(&self) -> Vec<DeviceRow> {
        let page: Page<DeviceRow> = self.get("/api/v1/devices?per_page=1000").await;
        page.items
    }

    pub(crate) async fn task_devices(&self, id: i64) -> Vec<TaskDeviceRow> {
        let page: Page<TaskDeviceRow> = self
            .get(&format!("/api/v1/tasks/{id}/devices?per_page=1000"))
            .await;
        page.items
    }

    pub(crate) async fn detail(&self, task: i64, device: i64) -> TaskDeviceDetail {
        self.get(&format!("/api/v1/tasks/{task}/devices/{device}"))
            .await
    }

    pub(crate) async fn wait_devices(&self, n: usize) {
        let start = Instant::now();
        loop {
            let d = self.devices().await;
            if d.len() >= n && d.iter().all(|d| !d.version.is_empty()) {
                return;
            }
            assert!(
                start.elapsed() < LIMIT,
                "{n} devices did not enroll and report: {d:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) async fn wait_finished(&self, id: i64) -> TaskView {
        let start = Instant::now();
        loop {
            let t: TaskView = self.get(&format!("/api/v1/tasks/{id}")).await;
            if t.state == TaskState::Finished {
                return t;
            }
            assert!(
                start.elapsed() < LIMIT,
                "task {id} did not finish: {t:?}\n{:#?}",
                self.task_devices(id).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A kiosk terminal: its product running as a process and a `posup agent`
/// process. Dropping it kills both.
pub(crate) struct Kiosk {
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) number: u32,
    pub(crate) product: PathBuf,
    pub(crate) state: PathBuf,
    pub(crate) config: PathBuf,
    pub(crate) agent: Option<Child>,
    pub(crate) runs: u32,
}

impl Kiosk {
    pub(crate) async fn new(
        number: u32,
        server: &str,
        secret: &str,
        consent_timeout: f64,
    ) -> Kiosk {
        let mut k = Kiosk::without_agent(number, server, secret, consent_timeout).await;
        k.start_agent();
        k
    }

    /// The terminal with its kiosk running but no agent yet.
    pub(crate) async fn without_agent(
        number: u32,
        server: &str,
        secret: &str,
        consent_timeout: f64,
    ) -> Kiosk {
        Kiosk::terminal(number, server, secret, consent_timeout, None).await
    }

    /// A terminal whose agent trusts the fleet root in `root` (and checks every
    /// signature), without its agent started.
    pub(crate) async fn trusting(number: u32, server: &str, secret: &str, root: &Path) -> Kiosk {
        Kiosk::terminal(number, server, secret, 0.2, Some(root)).await
    }

    async fn terminal(
        number: u32,
        server: &str,
        secret: &str,
        consent_timeout: f64,
        root_json: Option<&Path>,
    ) -> Kiosk {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let product = root.join("opt/kiosk");
        let logs = root.join("log");
        let state = root.join("posup");
        posup_sim::init_kiosk(&product, &logs, OLD).unwrap();
        let config = root.join("agent.toml");
        let text = format!(
            r#"server = "{server}"
insecure_http = true
{trust}
enrollment_secret = "{secret}"
state_dir = "{state}"

[device]
guid = "e2e-kiosk-{number}"
site = "Test store"
name = "Kiosk {number}"
number = {number}
device_type = "kiosk"

[poll]
jitter = 0.1
min_backoff_secs = 0.2
max_backoff_secs = 1.0

[cashier]
consent_timeout_secs = {consent_timeout}
ask_again_secs = 1

[device_types.kiosk.dirs]
product = "{product}"
staging = "{root}/opt/.posup/staging"
backup = "{root}/opt/.posup/backup"
logs = "{logs}"

[device_types.kiosk.allow]
services = ["kiosk"]
prompt = true

[device_types.kiosk.services.kiosk]
command = ["{posup}", "sim-product", "kiosk", "--product", "{product}", "--logs", "{logs}"]
log = "{logs}/stdout.log"
"#,
            state = state.display(),
            product = product.display(),
            root = root.display(),
            logs = logs.display(),
            posup = posup_path(),
            trust = match root_json {
                Some(r) => format!("root = \"{}\"", r.display()),
                None => "insecure_unsigned = true".to_owned(),
            },
        );
        std::fs::write(&config, text).unwrap();
        // The kiosk runs before the agent comes, as on a terminal.
        let agent_config = posup_agent::AgentConfig::load(&config).unwrap();
        let services = agent_config
            .device_config()
            .service_manager(&state.join("run"))
            .unwrap();
        services.start("kiosk").await.unwrap();
        Kiosk {
            _dir: dir,
            number,
            product,
            state,
            config,
            agent: None,
            runs: 0,
        }
    }

    /// `posup agent --once`: one poll cycle, the due work, the reports.
    pub(crate) fn once(&self) -> std::process::Output {
        std::process::Command::new(posup_path())
            .args(["agent", "--once", "--config"])
            .arg(&self.config)
            .output()
            .unwrap()
    }

    pub(crate) fn start_agent(&mut self) {
        self.runs += 1;
        let log = |name: &str| {
            std::fs::File::create(
                self.state
                    .with_file_name(format!("{name}-{}.log", self.runs)),
            )
            .unwrap()
        };
        std::fs::create_dir_all(&self.state).unwrap();
        let child = std::process::Command::new(posup_path())
            .args(["agent", "--config"])
            .arg(&self.config)
            .env("POSUP_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log("agent-out"))
            .stderr(log("agent-err"))
            .spawn()
            .unwrap();
        self.agent = Some(child);
    }

    /// Kills the agent at once (SIGKILL), as a power cut would.
    pub(crate) fn kill_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub(crate) fn version(&self) -> String {
        read(&self.product.join("version")).trim().to_owned()
    }

    pub(crate) fn prompt(&self) -> PathBuf {
        self.state.join("prompt")
    }

    pub(crate) fn journal(&self) -> PathBuf {
        self.state.join("journal/kiosk.json")
    }

    pub(crate) fn logs(&self) -> String {
        (1..=self.runs)
            .map(|i| read(&self.state.with_file_name(format!("agent-err-{i}.log"))))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Kiosk {
    fn drop(&mut self) {
        self.kill_agent();
        let pid = read(&self.state.join("run/kiosk.pid"))
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<i32>().ok());
        if let Some(pid) = pid {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&self.product.display().to_string()) {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pid}")])
                    .status();
            }
        }
    }
}

/// The program files of a kiosk of `version`, as a fresh installation has them.
fn program_of(version: &str) -> BTreeMap<PathBuf, crate::support::Node> {
    let tmp = tempfile::tempdir().unwrap();
    posup_sim::init_kiosk(&tmp.path().join("p"), &tmp.path().join("l"), version).unwrap();
    snapshot(&tmp.path().join("p/app"))
}

fn history(d: &TaskDeviceDetail) -> Vec<(String, FeedbackState)> {
    d.history
        .iter()
        .filter(|e| e.state != FeedbackState::Progress && e.state != FeedbackState::Started)
        .map(|e| (e.step.clone(), e.state))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_task_then_an_update_task_reach_every_agent() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), None).await;
    let api = server.api();
    api.kiosk_device_type().await;
    let pkg = api.kiosk_package(&data.path().join("pkgs"), NEW).await;
    let mut kiosks = Vec::new();
    for n in 1..=3 {
        kiosks.push(Kiosk::new(n, &server.url(), &server.secret, 0.3).await);
    }
    api.wait_devices(3).await;

    let download = api.task(TaskKind::Download, &pkg).await;
    let t = api.wait_finished(download.id).await;
    assert_eq!(
        (t.counts.total, t.counts.success, t.counts.failed),
        (3, 3, 0),
        "{t:?}"
    );
    for k in &kiosks {
        assert_eq!(k.version(), OLD, "a download installs nothing");
        let staged = k
            .product
            .parent()
            .unwrap()
            .join(".posup/staging/kiosk_7.5.0.tgz");
        assert!(
            staged.is_file(),
            "kiosk {}: the package waits in staging",
            k.number
        );
    }
    for row in api.task_devices(download.id).await {
        assert_eq!(row.state, DeviceTaskState::Success, "{row:?}");
    }

    let update = api.task(TaskKind::Update, &pkg).await;
    let t = api.wait_finished(update.id).await;
    assert_eq!(
        (t.counts.total, t.counts.success, t.counts.failed),
        (3, 3, 0),
        "{t:?}"
    );
    let new_program = program_of(NEW);
    for k in &kiosks {
        assert_eq!(k.version(), NEW, "kiosk {}: {}", k.number, k.logs());
        assert_eq!(snapshot(&k.product.join("app")), new_program);
    }
    for row in api.task_devices(update.id).await {
        assert_eq!(row.state, DeviceTaskState::Success, "{row:?}");
        let detail = api.detail(update.id, row.device_id).await;
        let h = history(&detail);
        for step in ["precheck", "stage", "consent", "apply", "verify", "commit"] {
            assert!(
                h.contains(&(step.into(), FeedbackState::Ok)),
                "{step} missing in {h:?}"
            );
        }
        assert!(
            h.contains(&("commit".into(), FeedbackState::Committed)),
            "{h:?}"
        );
    }
    // The server sees the new version in every device's inventory.
    let start = Instant::now();
    while !api.devices().await.iter().all(|d| d.version == NEW) {
        assert!(start.elapsed() < LIMIT, "inventories did not report {NEW}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(kiosks);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_apply_leaves_the_kiosk_fully_old_or_fully_new() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), None).await;
    let api = server.api();
    api.kiosk_device_type().await;
    let pkg = api.kiosk_package(&data.path().join("pkgs"), NEW).await;
    let mut k = Kiosk::new(1, &server.url(), &server.secret, 0.2).await;
    api.wait_devices(1).await;

    let task = api.task(TaskKind::Update, &pkg).await;
    // Kill the agent the moment its journal says `apply` began.
    let start = Instant::now();
    let killed_in = loop {
        let text = read(&k.journal());
        if let Ok(j) = serde_json::from_str::<posup_agent::journal::Record>(&text)
            && let Some(last) = j.entries.last()
            && last.event == posup_agent::journal::Event::Started
            && matches!(last.step, Phase::Apply | Phase::Verify)
        {
            k.kill_agent();
            break last.step;
        }
        assert!(start.elapsed() < LIMIT, "apply never started: {}", k.logs());
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let journal = read(&k.journal());
    k.start_agent();
    let t = api.wait_finished(task.id).await;
    assert_eq!(t.counts.total, 1);
    assert_eq!(t.counts.success + t.counts.failed, 1, "{t:?}");

    let version = k.version();
    eprintln!("agent killed during {killed_in}; after the restart the kiosk runs {version}");
    let program = snapshot(&k.product.join("app"));
    let row = &api.task_devices(task.id).await[0];
    let message = row.message.clone().unwrap_or_default();
    if version == OLD {
        assert_eq!(program, program_of(OLD), "fully old");
        assert_eq!(row.state, DeviceTaskState::Failed, "{row:?}");
        assert_eq!(t.counts.failed, 1);
        assert!(
            message.contains("rolled back")
                && message.contains(&format!("installed version: {OLD}")),
            "{message}"
        );
        assert!(
            message.contains(&format!("interrupted during {killed_in}")),
            "{message}"
        );
    } else {
        assert_eq!(
            version, NEW,
            "killed during {killed_in}; journal: {journal}"
        );
        assert_eq!(program, program_of(NEW), "fully new");
        assert_eq!(row.state, DeviceTaskState::Success, "{row:?}");
        assert!(message.contains(NEW), "{message}");
    }
    // The kiosk runs again either way.
    let start = Instant::now();
    while api.devices().await[0].state != "IDLE" {
        assert!(
            start.elapsed() < LIMIT,
            "the kiosk did not come back: {}",
            k.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(k);
    server.stop().await;
}

/// A TCP proxy in front of the server that breaks off the first package download
/// after `cut` bytes of its answer and remembers the head of every package
/// request.
struct Proxy {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr, cut: usize) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let packages = Arc::new(AtomicUsize::new(0));
        let h = heads.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let armed = Arc::new(AtomicBool::new(false));
                let (h, packages, armed2) = (h.clone(), packages.clone(), armed.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let text = String::from_utf8_lossy(&buf[..n]).to_string();
                        if text.starts_with("GET /api/v1/agent/packages/") {
                            h.lock().unwrap().push(text);
                            if packages.fetch_add(1, Ordering::SeqCst) == 0 {
                                armed2.store(true, Ordering::SeqCst);
                            }
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = sw.shutdown().await;
                });
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4 * 1024];
                    let mut sent_armed = 0usize;
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let mut n = n;
                        if armed.load(Ordering::SeqCst) {
                            n = n.min(cut - sent_armed);
                            sent_armed += n;
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        if armed.load(Ordering::SeqCst) && sent_armed >= cut {
                            // The connection breaks off mid-answer.
                            break;
                        }
                    }
                    let _ = cw.shutdown().await;
                });
            }
        });
        Proxy { addr, heads }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_cut_mid_way_resumes_from_its_offset_and_checks_out() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), None).await;
    let api = server.api();
    api.kiosk_device_type().await;
    let pkg = api.kiosk_package(&data.path().join("pkgs"), NEW).await;
    assert!(
        pkg.size > 12_000,
        "the package is large enough to cut: {}",
        pkg.size
    );
    let proxy = Proxy::start(server.addr, 10_000).await;
    let k = Kiosk::new(1, &format!("http://{}", proxy.addr), &server.secret, 0.2).await;
    api.wait_devices(1).await;

    let task = api.task(TaskKind::Download, &pkg).await;
    let t = api.wait_finished(task.id).await;
    assert_eq!(
        (t.counts.success, t.counts.failed),
        (1, 0),
        "{t:?}\n{}",
        k.logs()
    );

    let heads = proxy.heads.lock().unwrap().clone();
    assert!(heads.len() >= 2, "the download was not retried: {heads:?}");
    assert!(
        !heads[0].to_ascii_lowercase().contains("range:"),
        "{}",
        heads[0]
    );
    let range = heads[1]
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("range: bytes=")
                .map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("the retry carries no Range: {}", heads[1]));
    let offset: u64 = range.trim().trim_end_matches('-').parse().unwrap();
    assert!(offset > 0 && offset < pkg.size, "resumed from {offset}");

    let staged = k
        .product
        .parent()
        .unwrap()
        .join(".posup/staging/kiosk_7.5.0.tgz");
    let (sha, size) = posup_agent::download::hash_file(&staged).unwrap();
    assert_eq!((sha.as_str(), size), (pkg.sha256.as_str(), pkg.size));
    let row = &api.task_devices(task.id).await[0];
    let detail = api.detail(task.id, row.device_id).await;
    assert!(
        detail.history.iter().any(|e| e
            .message
            .as_deref()
            .unwrap_or("")
            .contains(&format!("resumed from byte {offset}"))),
        "{:#?}",
        detail.history
    );
    drop(k);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declining_cashier_is_asked_again_and_a_forced_update_asks_nobody() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), None).await;
    let api = server.api();
    api.kiosk_device_type().await;
    let pkg = api.kiosk_package(&data.path().join("pkgs"), NEW).await;
    let k = Kiosk::new(1, &server.url(), &server.secret, 60.0).await;
    api.wait_devices(1).await;

    // The cashier: no the first time, yes after that.
    let questions: Arc<Mutex<Vec<String>>> = Arc::default();
    let cashier = {
        let prompt = k.prompt();
        let questions = questions.clone();
        tokio::spawn(async move {
            loop {
                if let Some(q) = posup_agent::prompter::FilePrompter::pending(&prompt) {
                    let mut seen = questions.lock().unwrap();
                    if !seen.contains(&q.id) {
                        let yes = !seen.is_empty();
                        posup_agent::prompter::FilePrompter::answer(&prompt, &q.id, yes).unwrap();
                        seen.push(q.id);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let task = api.task(TaskKind::Update, &pkg).await;
    let t = api.wait_finished(task.id).await;
    assert_eq!((t.counts.success, t.counts.failed), (1, 0), "{t:?}");
    assert_eq!(
        questions.lock().unwrap().len(),
        2,
        "asked once, declined, asked again"
    );
    assert_eq!(k.version(), NEW);
    let row = &api.task_devices(task.id).await[0];
    let h = history(&api.detail(task.id, row.device_id).await);
    let declined = h
        .iter()
        .position(|e| *e == ("consent".into(), FeedbackState::NotNow));
    let accepted = h
        .iter()
        .position(|e| *e == ("consent".into(), FeedbackState::Ok));
    assert!(declined.is_some() && declined < accepted, "{h:?}");
    assert!(
        !h.iter().take(accepted.unwrap()).any(|e| e.0 == "apply"),
        "nothing applied before consent: {h:?}"
    );

    let newer = api.kiosk_package(&data.path().join("pkgs"), "7.6.0").await;
    let forced = api.task(TaskKind::ForcedUpdate, &newer).await;
    let t = api.wait_finished(forced.id).await;
    assert_eq!((t.counts.success, t.counts.failed), (1, 0), "{t:?}");
    assert_eq!(k.version(), "7.6.0");
    assert_eq!(
        questions.lock().unwrap().len(),
        2,
        "a forced update asks nobody"
    );
    let row = &api.task_devices(forced.id).await[0];
    let h = history(&api.detail(forced.id, row.device_id).await);
    assert!(!h.iter().any(|e| e.0 == "consent"), "{h:?}");
    cashier.abort();
    drop(k);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restarted_mid_rollout_loses_no_report_and_the_task_completes() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), None).await;
    let api = server.api();
    api.kiosk_device_type().await;
    let pkg = api.kiosk_package(&data.path().join("pkgs"), NEW).await;
    let url = server.url();
    let secret = server.secret.clone();
    let mut kiosks = Vec::new();
    for n in 1..=3 {
        kiosks.push(Kiosk::new(n, &url, &secret, 0.2).await);
    }
    api.wait_devices(3).await;

    let task = api.task(TaskKind::Update, &pkg).await;
    // Stop the server once the first device is at work with the package on the
    // terminal: a download still under way needs the server, and would wait for it.
    // The server shows it, or, while the device's reports of quick steps wait to
    // go together, its outbox does.
    let past_download = |k: &Kiosk| {
        std::fs::read_dir(k.state.join("outbox"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                std::fs::read_to_string(e.path()).is_ok_and(|report| {
                    report.contains(r#""step":""#) && !report.contains(r#""step":"download""#)
                })
            })
    };
    let start = Instant::now();
    while !kiosks.iter().any(past_download)
        && !api.task_devices(task.id).await.iter().any(|r| {
            r.state == DeviceTaskState::Running
                && r.step.as_deref().is_some_and(|s| s != "download")
        })
    {
        assert!(start.elapsed() < LIMIT, "no device started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (addr, dir) = server.stop().await;
    // The agents go on without it; their reports wait in their outboxes.
    let start = Instant::now();
    while !kiosks.iter().any(|k| k.version() == NEW) {
        assert!(
            start.elapsed() < LIMIT,
            "no kiosk finished while the server was away"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let waiting: usize = kiosks
        .iter()
        .map(|k| {
            std::fs::read_dir(k.state.join("outbox"))
                .map(|d| d.count())
                .unwrap_or(0)
        })
        .sum();
    assert!(
        waiting > 0,
        "reports made while the server was away wait in the outboxes"
    );

    let server = Server::start(&dir, Some(addr)).await;
    let api = server.api();
    let t = api.wait_finished(task.id).await;
    assert_eq!(
        (t.counts.total, t.counts.success, t.counts.failed),
        (3, 3, 0),
        "{t:?}"
    );
    for row in api.task_devices(task.id).await {
        let h = history(&api.detail(task.id, row.device_id).await);
        let expected: Vec<(String, FeedbackState)> = [
            ("download", FeedbackState::Ok),
            ("inspect", FeedbackState::Ok),
            ("precheck", FeedbackState::Ok),
            ("stage", FeedbackState::Ok),
            ("consent", FeedbackState::Ok),
            ("apply", FeedbackState::Ok),
            ("verify", FeedbackState::Ok),
            ("commit", FeedbackState::Ok),
            ("commit", FeedbackState::Committed),
        ]
        .into_iter()
        .map(|(s, f)| (s.to_owned(), f))
        .collect();
        assert_eq!(h, expected, "every report once, in order, none lost");
    }
    for k in &kiosks {
        assert_eq!(k.version(), NEW);
        let left = std::fs::read_dir(k.state.join("outbox"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(left, 0, "kiosk {}: every report was acknowledged", k.number);
    }
    drop(kiosks);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_terminals_lose_no_report_and_count_none_twice_across_a_server_restart() {
    use posup_fleet::{self as fleet, FleetConfig, FleetStats};
    const N: usize = 1000;
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), None).await;
    let api = server.api();
    api.kiosk_device_type().await;
    let pkg = api.kiosk_package(&data.path().join("pkgs"), NEW).await;
    let mut config = FleetConfig::new(&server.url(), &server.secret, N);
    // Back soon after the restart, rather than after a long backoff; steps long
    // enough that most of the fleet is mid-update when the server goes.
    config.poll.max_backoff_secs = 2.0;
    config.step_time = Duration::from_millis(400);
    let stats = Arc::new(FleetStats::default());
    let (stop_fleet, stopped) = tokio::sync::oneshot::channel::<()>();
    let fleet = tokio::spawn(fleet::run(config, stats.clone(), async move {
        let _ = stopped.await;
    }));
    let start = Instant::now();
    loop {
        let page: Page<posup_proto::api::DeviceRow> =
            api.get("/api/v1/devices?version=1.0.0&per_page=1").await;
        if page.total as usize == N {
            break;
        }
        assert!(start.elapsed() < LIMIT * 2, "{}", stats.line());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let task = api.task(TaskKind::Update, &pkg).await;
    // Down while a good part of the fleet is at work, with reports on the way.
    let start = Instant::now();
    while stats.done.load(Ordering::Relaxed) < (N / 20) as u64 {
        assert!(start.elapsed() < LIMIT * 2, "{}", stats.line());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (addr, dir) = server.stop().await;
    let done_while_up = stats.done.load(Ordering::Relaxed);
    assert!(
        done_while_up < N as u64,
        "the restart came too late to test anything"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let server = Server::start(&dir, Some(addr)).await;
    let api = server.api();
    let t = api.wait_finished(task.id).await;
    assert!(
        stats.poll_errors.load(Ordering::Relaxed) > 0,
        "the fleet met the server away: {}",
        stats.line()
    );
    assert_eq!(
        (t.counts.total, t.counts.success, t.counts.failed),
        (N as u64, N as u64, 0),
        "{t:?}"
    );
    // Each device's history: every report once. Only the download's start may
    // repeat, when the restart cut a download and the device fetched it again.
    let steps = ["precheck", "stage", "apply", "verify", "commit"];
    for page in 1..=N.div_ceil(500) {
        let rows: Page<posup_proto::api::TaskDeviceRow> = api
            .get(&format!(
                "/api/v1/tasks/{}/devices?per_page=500&page={page}",
                task.id
            ))
            .await;
        for row in rows.items {
            let d = api.detail(task.id, row.device_id).await;
            let mut seen: BTreeMap<(String, &str), usize> = BTreeMap::new();
            for e in &d.history {
                *seen.entry((e.step.clone(), e.state.as_str())).or_default() += 1;
            }
            let count = |step: &str, state: FeedbackState| {
                seen.get(&(step.to_owned(), state.as_str()))
                    .copied()
                    .unwrap_or(0)
            };
            for step in steps {
                assert_eq!(
                    (
                        count(step, FeedbackState::Started),
                        count(step, FeedbackState::Ok)
                    ),
                    (1, 1),
                    "device {}: {step} reported once: {:?}",
                    row.device_id,
                    d.history
                );
            }
            assert_eq!(count("download", FeedbackState::Ok), 1, "{:?}", d.history);
            assert!(
                count("download", FeedbackState::Started) >= 1,
                "{:?}",
                d.history
            );
            assert_eq!(
                count("commit", FeedbackState::Committed),
                1,
                "{:?}",
                d.history
            );
            assert_eq!(
                d.history.len(),
                steps.len() * 2 + 2 + count("download", FeedbackState::Started),
                "device {}: nothing else recorded: {:?}",
                row.device_id,
                d.history
            );
        }
    }
    let _ = stop_fleet.send(());
    fleet.await.unwrap().unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_once_enrolls_then_does_the_due_work_and_reports_it() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), None).await;
    let api = server.api();
    api.kiosk_device_type().await;
    let pkg = api.kiosk_package(&data.path().join("pkgs"), NEW).await;
    let k = Kiosk::without_agent(1, &server.url(), &server.secret, 0.2).await;

    let out = k.once();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let devices = api.devices().await;
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].guid, "e2e-kiosk-1");

    // A variable for the fleet reaches the agent with its change id, and plugins
    // see it (the kiosk plugin reads `kiosk-verify-timeout`).
    api.put(
        "/api/v1/variables",
        &posup_proto::api::SetVariable {
            name: "kiosk-verify-timeout".into(),
            value: "45".into(),
            secret: false,
            scope: posup_proto::api::VariableScope::All,
        },
    )
    .await;
    let task = api.task(TaskKind::Download, &pkg).await;
    let out = k.once();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state: serde_json::Value =
        serde_json::from_str(&read(&k.state.join("agent.json"))).unwrap();
    assert_eq!(state["vars"]["kiosk-verify-timeout"], "45", "{state}");
    assert!(state["vars_since"].as_i64().unwrap() > 0, "{state}");
    // Everything was reported before `--once` returned.
    let t: TaskView = api.get(&format!("/api/v1/tasks/{}", task.id)).await;
    assert_eq!(
        (t.state, t.counts.success),
        (TaskState::Finished, 1),
        "{t:?}"
    );
    assert_eq!(
        std::fs::read_dir(k.state.join("outbox")).unwrap().count(),
        0
    );
    let staged = k
        .product
        .parent()
        .unwrap()
        .join(".posup/staging/kiosk_7.5.0.tgz");
    assert!(staged.is_file());
    drop(k);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_fleet_takes_a_download_and_an_update_through_the_real_server() {
    use posup_fleet::{self as fleet, FleetConfig, FleetStats};
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), None).await;
    let api = server.api();
    api.kiosk_device_type().await;
    let pkg = api.kiosk_package(&data.path().join("pkgs"), NEW).await;
    let mut config = FleetConfig::new(&server.url(), &server.secret, 25);
    config.per_site = 10;
    config.step_time = Duration::from_millis(5);
    let stats = Arc::new(FleetStats::default());
    let (stop, rx) = tokio::sync::watch::channel(false);
    let fleet = tokio::spawn(fleet::run(config, stats.clone(), async move {
        let mut rx = rx;
        let _ = rx.wait_for(|s| *s).await;
    }));
    let start = Instant::now();
    while api
        .devices()
        .await
        .iter()
        .filter(|d| d.version == "1.0.0")
        .count()
        < 25
    {
        assert!(
            start.elapsed() < LIMIT,
            "the fleet did not enroll: {}",
            stats.line()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let devices = api.devices().await;
    let sites: std::collections::BTreeSet<&str> = devices.iter().map(|d| d.site.as_str()).collect();
    assert_eq!(sites.len(), 3, "25 devices in stores of 10");

    for kind in [TaskKind::Download, TaskKind::Update] {
        let task = api.task(kind, &pkg).await;
        let t = api.wait_finished(task.id).await;
        assert_eq!(
            (t.counts.total, t.counts.success),
            (25, 25),
            "{kind:?}: {t:?}"
        );
    }
    assert_eq!(
        stats.downloads.load(Ordering::Relaxed),
        25,
        "each device downloads the package once"
    );
    let start = Instant::now();
    while !api.devices().await.iter().all(|d| d.version == NEW) {
        assert!(start.elapsed() < LIMIT, "the fleet did not report {NEW}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(true);
    fleet.await.unwrap().unwrap();
    server.stop().await;
}

/// The terminal's configuration is the ceiling of what a plugin may touch: a
/// directory it leaves out is never granted, even where the device type's
/// `paths` names one — here a writable backup folder of the server's choosing.
#[tokio::test(flavor = "multi_thread")]
async fn the_server_cannot_grant_a_directory_the_terminal_left_out() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), None).await;
    let api = server.api();
    api.kiosk_device_type().await;
    let elsewhere = data.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    api.put(
        "/api/v1/device-types/kiosk",
        &DeviceTypeBody {
            description: "self-service kiosks".into(),
            allowed: Capabilities::updater(&["kiosk"]),
            paths: DirPaths {
                product: Some("/opt/kiosk".into()),
                staging: Some("/opt/.posup/staging".into()),
                backup: Some(elsewhere.display().to_string()),
                logs: Some("/var/log/kiosk".into()),
            },
            poll_interval_secs: None,
            site_limit: None,
            impact: None,
        },
    )
    .await;
    let pkg = api.kiosk_package(&data.path().join("pkgs"), NEW).await;
    let k = Kiosk::without_agent(1, &server.url(), &server.secret, 0.2).await;
    let text = read(&k.config);
    let without_backup: String = text
        .lines()
        .filter(|l| !l.starts_with("backup = "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(text, without_backup, "the terminal named a backup folder");
    std::fs::write(&k.config, without_backup).unwrap();

    assert!(k.once().status.success());
    let task = api.task(TaskKind::Update, &pkg).await;
    for _ in 0..3 {
        let out = k.once();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        std::fs::read_dir(&elsewhere).unwrap().count(),
        0,
        "the plugin wrote where only the server said it could"
    );
    // The update was tried, and the plugin never had the server's folder.
    let t: TaskView = api.get(&format!("/api/v1/tasks/{}", task.id)).await;
    assert_eq!(t.state, TaskState::Finished, "{t:?}");
    let d = &api.task_devices(task.id).await[0];
    assert_eq!(d.state, DeviceTaskState::Failed, "{d:?}");
    let message = d.message.clone().unwrap_or_default();
    assert!(message.contains("/backup is not granted"), "{message}");
    assert_eq!(k.version(), OLD);
    drop(k);
    server.stop().await;
}

/// A proxy in front of the server that answers every plugin download with a body
/// that never ends (and forwards everything else).
async fn endless_plugins(upstream: SocketAddr) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                continue;
            };
            let (mut cr, cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let cw = Arc::new(tokio::sync::Mutex::new(cw));
            let to_client = cw.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = sr.read(&mut buf).await {
                    if n == 0 || to_client.lock().await.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if buf[..n].starts_with(b"GET /api/v1/agent/plugins/") {
                        break;
                    }
                    if sw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
                let mut w = cw.lock().await;
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/wasm\r\ntransfer-encoding: chunked\r\n\r\n";
                if w.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "\0".repeat(64 * 1024));
                while w.write_all(chunk.as_bytes()).await.is_ok() {}
            });
        }
    });
    addr
}

/// A plugin download that never ends neither freezes the agent nor fills its
/// memory: it stops at the size the server named, and the poll cycle goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_download_that_never_ends_does_not_freeze_the_agent() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), None).await;
    let api = server.api();
    api.kiosk_device_type().await;
    let pkg = api.kiosk_package(&data.path().join("pkgs"), NEW).await;
    let proxy = endless_plugins(server.addr).await;
    let k = Kiosk::without_agent(1, &format!("http://{proxy}"), &server.secret, 0.2).await;
    assert!(k.once().status.success());
    let task = api.task(TaskKind::Download, &pkg).await;
    let mut agent = std::process::Command::new(posup_path())
        .args(["agent", "--once", "--config"])
        .arg(&k.config)
        .env("POSUP_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = agent.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = agent.kill();
            let _ = agent.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut agent.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        status.is_some(),
        "the agent was still downloading after 60 s: {err}"
    );
    // The download was tried, failed, and said so.
    let d = &api.task_devices(task.id).await[0];
    let message = d.message.clone().unwrap_or_default();
    assert!(message.contains("downloading plugin kiosk"), "{d:?}\n{err}");
    // What arrived is on disk, never more than the component's size.
    let plugins = k.state.join("plugins");
    for f in std::fs::read_dir(&plugins).into_iter().flatten().flatten() {
        assert!(
            f.metadata().unwrap().len() <= 64 << 20,
            "{}",
            f.path().display()
        );
    }
    drop(k);
    server.stop().await;
}

/// A fleet's own certificate authority and a server certificate it signed for
/// 127.0.0.1, as PEM files in `dir`: (CA, certificate, key).
fn fleet_ca(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} fleet CA"));
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut server = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    server
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    let cert = server.signed_by(&key, &ca, &ca_key).unwrap();
    let paths = (
        dir.join(format!("{name}-ca.pem")),
        dir.join(format!("{name}-cert.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// The server terminates TLS itself; the agent reaches it only through the CA it
/// pins, and never over plain HTTP unless told to.
#[tokio::test]
async fn the_agent_reaches_its_server_over_tls_through_the_pinned_ca_only() {
    use posup_agent::client::{Client, ClientError, Transport};
    use posup_proto::agent::{DeviceIdentity, EnrollRequest, Site};

    let data = tempfile::tempdir().unwrap();
    let (ca, cert, key) = fleet_ca(data.path(), "ours");
    let (stranger, _, _) = fleet_ca(data.path(), "theirs");
    let mut config = posup_server::ServerConfig::new(data.path());
    config.enrollment_secret = Some("pes_tls".into());
    config.tls = Some(posup_server::config::TlsFiles { cert, key });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, mut rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(posup_server::run(config, listener, async move {
        let _ = rx.wait_for(|s| *s).await;
    }));
    let https = format!("https://{addr}");
    let request = EnrollRequest {
        secret: "pes_tls".into(),
        device: DeviceIdentity {
            guid: "tls-1".into(),
            site: Site {
                name: "Store".into(),
                address: String::new(),
            },
            name: "Kassa 1".into(),
            number: 1,
            device_type: "kiosk".into(),
            agent_version: "test".into(),
        },
    };
    let pinned = |file: &Path| Transport {
        insecure_http: false,
        ca_file: Some(file.to_owned()),
    };

    // Through the pinned CA the server answers (no device type `kiosk` yet: 422
    // is an answer from the server, past TLS).
    let start = Instant::now();
    let answer = loop {
        match Client::new(&https, &pinned(&ca))
            .unwrap()
            .enroll(&request)
            .await
        {
            Err(ClientError::Unreachable { .. }) if start.elapsed() < LIMIT => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => break other,
        }
    };
    match answer {
        Err(ClientError::Status {
            status: 422,
            message,
            ..
        }) => {
            assert!(message.contains("device type kiosk"), "{message}")
        }
        other => panic!("expected the server's 422, got {other:?}"),
    }
    // Another CA, or the public roots, do not vouch for this server.
    for transport in [pinned(&stranger), Transport::default()] {
        let e = Client::new(&https, &transport)
            .unwrap()
            .enroll(&request)
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Unreachable { .. }), "{e}");
    }
    // Plain HTTP to the TLS port gets nothing useful, and plain HTTP is refused
    // by the agent before it connects unless its configuration allows it.
    let plain = format!("http://{addr}");
    let e = Client::new(&plain, &Transport::insecure())
        .unwrap()
        .enroll(&request)
        .await
        .unwrap_err();
    assert!(!matches!(e, ClientError::Status { .. }), "{e}");
    let e = Client::new(&plain, &Transport::default())
        .unwrap()
        .enroll(&request)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("scheme"), "{e}");

    let _ = stop.send(true);
    task.await.unwrap().unwrap();
}
