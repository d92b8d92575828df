//! The chain of trust end to end: a fleet owner, a vendor and a release signer
//! make keys and sign with the `posup` CLI, the real server publishes, and a real
//! agent pinned to the fleet's `1.root.json` installs only what they signed. A
//! server or a network in between that tampers with plugin bytes, package bytes,
//! metadata or file names makes the agent install nothing and say why.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use posup_proto::TaskKind;
use posup_proto::api::{DeviceTaskState, PackageView, TaskState, TaskView, TufStatus};
use posup_trust::meta;

use crate::agent::{Api, Kiosk, NEW, OLD, Server};
use crate::support::{posup, stderr};

/// The fleet's keys and metadata folder, made with the CLI as their holders would.
struct Fleet {
    dir: tempfile::TempDir,
}

impl Fleet {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn repo(&self) -> PathBuf {
        self.path("repo")
    }

    fn root_json(&self) -> PathBuf {
        self.repo().join("1.root.json")
    }

    /// Runs `posup` with `args`; it must succeed.
    fn cli(&self, args: &[&str]) -> String {
        let out = posup().args(args).output().unwrap();
        assert!(out.status.success(), "posup {args:?}: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Keys for the owner (root, targets), the vendor of the bundled plugins and
    /// the release role; `1.root.json` naming the server's online keys; the
    /// vendor delegated the kiosk plugin for kiosks, the release role all
    /// packages.
    fn new(server: &Server) -> Fleet {
        let f = Fleet {
            dir: tempfile::tempdir().unwrap(),
        };
        for k in ["root", "targets", "vendor", "release"] {
            f.cli(&[
                "keys",
                "new",
                &f.path(&format!("{k}.key")).display().to_string(),
            ]);
        }
        let repo = f.repo().display().to_string();
        let key = |k: &str| f.path(k).display().to_string();
        f.cli(&[
            "repo",
            "init",
            "--repo",
            &repo,
            "--root-key",
            &key("root.key"),
            "--targets-key",
            &key("targets.key"),
            "--server",
            &server.url(),
            "--token",
            &server.admin,
        ]);
        f.cli(&[
            "repo",
            "delegate",
            "--repo",
            &repo,
            "--targets-key",
            &key("targets.key"),
            "--vendor",
            "posup",
            "--plugin",
            "kiosk@kiosk",
            "--key",
            &key("vendor.key.pub"),
        ]);
        f.cli(&[
            "repo",
            "delegate",
            "--repo",
            &repo,
            "--targets-key",
            &key("targets.key"),
            "--release",
            "--key",
            &key("release.key.pub"),
        ]);
        f
    }

    /// The vendor signs and publishes the bundled kiosk plugin.
    fn publish_plugin(&self, server: &Server) {
        let wasm = self.path("kiosk.wasm");
        std::fs::write(&wasm, posup_bundled::get("kiosk").unwrap()).unwrap();
        let repo = self.repo().display().to_string();
        let wasm = wasm.display().to_string();
        self.cli(&[
            "plugin",
            "sign",
            "--repo",
            &repo,
            "--key",
            &self.path("vendor.key").display().to_string(),
            &wasm,
        ]);
        self.cli(&[
            "plugin",
            "publish",
            "--repo",
            &repo,
            "--server",
            &server.url(),
            "--token",
            &server.admin,
            &wasm,
        ]);
    }

    /// The owner makes a new root key and rotates to it, signing with the old
    /// key and the new one, and publishes `2.root.json`.
    fn rotate_root(&self, server: &Server) {
        let repo = self.repo().display().to_string();
        self.cli(&["keys", "new", &self.path("root2.key").display().to_string()]);
        self.cli(&[
            "repo",
            "rotate",
            "--repo",
            &repo,
            "--sign-key",
            &self.path("root.key").display().to_string(),
            "--sign-key",
            &self.path("root2.key").display().to_string(),
            "--root-key",
            &self.path("root2.key.pub").display().to_string(),
        ]);
        self.cli(&[
            "repo",
            "publish",
            "--repo",
            &repo,
            "--server",
            &server.url(),
            "--token",
            &server.admin,
        ]);
    }

    /// The release signer signs a package (its version read by the kiosk
    /// plugin) and uploads it.
    fn publish_package(&self, server: &Server, file: &Path, extra: &[&str]) {
        let repo = self.repo().display().to_string();
        let file = file.display().to_string();
        let mut sign = vec![
            "package",
            "sign",
            "--repo",
            &repo,
            "--device-type",
            "kiosk",
            "--plugin",
            "kiosk",
        ];
        let key = self.path("release.key").display().to_string();
        sign.extend(["--key", &key]);
        sign.extend(extra);
        sign.push(&file);
        self.cli(&sign);
        self.cli(&[
            "package",
            "upload",
            "--repo",
            &repo,
            "--server",
            &server.url(),
            "--token",
            &server.admin,
            "--device-type",
            "kiosk",
            &file,
        ]);
    }
}

/// A server whose fleet signed and published the kiosk plugin (enabled for
/// kiosks) and the 7.5.0 package, built in `<dir>/pkgs`.
async fn signed_kiosks(dir: &Path) -> (Server, Fleet, PathBuf) {
    let server = Server::start(dir, None).await;
    let fleet = Fleet::new(&server);
    fleet.publish_plugin(&server);
    server.api().kiosk_device_type().await;
    let new = posup_sim::kiosk_package(&dir.join("pkgs"), NEW, false).unwrap();
    fleet.publish_package(&server, &new, &[]);
    (server, fleet, new)
}

async fn package_named(api: &Api, name: &str) -> PackageView {
    let list: Vec<PackageView> = api.get("/api/v1/packages?device_type=kiosk").await;
    list.into_iter().find(|p| p.file_name == name).unwrap()
}

/// An Update of `pkg`, run by one `posup agent --once` (two if the first only
/// enrolled): the device's state and last message.
async fn update(api: &Api, k: &Kiosk, pkg: &PackageView) -> (DeviceTaskState, String) {
    let task = api.task(TaskKind::Update, pkg).await;
    for _ in 0..3 {
        let out = k.once();
        assert!(out.status.success(), "{}", stderr(&out));
        let t: TaskView = api.get(&format!("/api/v1/tasks/{}", task.id)).await;
        if t.state == TaskState::Finished {
            break;
        }
    }
    let guid = format!("e2e-kiosk-{}", k.number);
    let rows = api.task_devices(task.id).await;
    let d = rows.iter().find(|d| d.guid == guid).unwrap();
    (d.state, d.message.clone().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_signed_with_the_cli_updates_terminals_pinned_to_its_root() {
    let data = tempfile::tempdir().unwrap();
    let (server, fleet, _) = signed_kiosks(data.path()).await;
    let api = server.api();
    let pkgs = data.path().join("pkgs");
    let status: TufStatus = api.get("/api/v1/tuf").await;
    let roles: Vec<&str> = status.roles.iter().map(|r| r.role.as_str()).collect();
    for r in [
        "root",
        "targets",
        "snapshot",
        "timestamp",
        "vendor-posup",
        "release",
    ] {
        assert!(roles.contains(&r), "{roles:?}");
    }
    // The plugin and package views say who signed them.
    let pkg = package_named(&api, "kiosk_7.5.0.tgz").await;
    assert_eq!(pkg.signatures.len(), 1, "{pkg:?}");
    assert_eq!(pkg.signatures[0].role, "release");
    assert_eq!(pkg.signatures[0].target, "packages/kiosk/kiosk_7.5.0.tgz");

    let k = Kiosk::trusting(1, &server.url(), &server.secret, &fleet.root_json()).await;
    let out = k.once();
    assert!(out.status.success(), "{}", stderr(&out));
    let (state, message) = update(&api, &k, &pkg).await;
    assert_eq!(state, DeviceTaskState::Success, "{message}");
    assert_eq!(k.version(), NEW);
    // The same release again (a device in two waves, say): done at once, with
    // no step run.
    let (state, message) = update(&api, &k, &pkg).await;
    assert_eq!(state, DeviceTaskState::Success, "{message}");
    assert_eq!(message, format!("version {NEW} is already installed"));

    // An older release, signed without the release role's word, is no downgrade
    // a server can order.
    let old = posup_sim::kiosk_package(&pkgs, OLD, false).unwrap();
    fleet.publish_package(&server, &old, &[]);
    let old_pkg = package_named(&api, "kiosk_7.4.2.tgz").await;
    let (state, message) = update(&api, &k, &old_pkg).await;
    assert_eq!(state, DeviceTaskState::Failed, "{message}");
    assert!(
        message.contains("older than the installed 7.5.0") && message.contains("role release"),
        "{message}"
    );
    assert_eq!(k.version(), NEW);
    // Signed as a downgrade, it installs.
    fleet.publish_package(&server, &old, &["--allow-downgrade"]);
    let (state, message) = update(&api, &k, &old_pkg).await;
    assert_eq!(state, DeviceTaskState::Success, "{message}");
    assert_eq!(k.version(), OLD);

    // The owner rotates the root key; the terminal, installed with 1.root.json,
    // follows the chain and goes on installing.
    fleet.rotate_root(&server);
    let status: TufStatus = api.get("/api/v1/tuf").await;
    assert!(
        status
            .roles
            .iter()
            .any(|r| r.role == "root" && r.version == 2),
        "{status:?}"
    );
    let (state, message) = update(&api, &k, &pkg).await;
    assert_eq!(state, DeviceTaskState::Success, "{message}");
    assert_eq!(k.version(), NEW);
    let trusted = std::fs::read_dir(k.state.join("tuf")).unwrap().count();
    assert!(trusted > 0, "the agent keeps what it trusts");
    drop(k);
    server.stop().await;
}

/// A man in the middle: forwards to the server, but answers chosen paths with
/// chosen bytes and rewrites chosen text in answers.
#[derive(Default)]
struct Rules {
    answers: HashMap<String, Vec<u8>>,
    rewrites: Vec<(String, String, String)>,
}

struct Tamper {
    addr: SocketAddr,
    rules: Arc<Mutex<Rules>>,
}

impl Tamper {
    async fn start(upstream: SocketAddr) -> Tamper {
        use axum::body::Body;
        use axum::extract::{Request, State};
        use axum::response::{IntoResponse, Response};
        let rules: Arc<Mutex<Rules>> = Arc::default();
        let http = reqwest::Client::new();
        #[derive(Clone)]
        struct St {
            rules: Arc<Mutex<Rules>>,
            http: reqwest::Client,
            upstream: SocketAddr,
        }
        async fn forward(State(st): State<St>, req: Request) -> Response {
            let path = req.uri().path().to_owned();
            let answer = st.rules.lock().unwrap().answers.get(&path).cloned();
            if let Some(body) = answer {
                return (axum::http::StatusCode::OK, body).into_response();
            }
            let pq = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default();
            let mut out = st
                .http
                .request(req.method().clone(), format!("http://{}{pq}", st.upstream));
            for (k, v) in req.headers() {
                if k != axum::http::header::HOST {
                    out = out.header(k, v);
                }
            }
            let body = axum::body::to_bytes(req.into_body(), 64 << 20)
                .await
                .unwrap();
            let resp = out.body(body).send().await.unwrap();
            let status = resp.status();
            let mut headers = resp.headers().clone();
            for h in ["content-length", "transfer-encoding", "connection"] {
                headers.remove(h);
            }
            let mut bytes = resp.bytes().await.unwrap().to_vec();
            for (p, from, to) in &st.rules.lock().unwrap().rewrites {
                if *p == path {
                    bytes = String::from_utf8_lossy(&bytes)
                        .replace(from, to)
                        .into_bytes();
                }
            }
            (status, headers, Body::from(bytes)).into_response()
        }
        let app = axum::Router::new().fallback(forward).with_state(St {
            rules: rules.clone(),
            http,
            upstream,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Tamper { addr, rules }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn answer(&self, path: &str, body: Vec<u8>) {
        self.rules
            .lock()
            .unwrap()
            .answers
            .insert(path.to_owned(), body);
    }

    fn rewrite(&self, path: &str, from: &str, to: &str) {
        self.rules
            .lock()
            .unwrap()
            .rewrites
            .push((path.to_owned(), from.to_owned(), to.to_owned()));
    }

    fn clear(&self) {
        *self.rules.lock().unwrap() = Rules::default();
    }
}

async fn metadata(server: &Server, name: &str) -> Vec<u8> {
    reqwest::get(format!("{}/tuf/metadata/{name}", server.url()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec()
}

fn current_version(status: &TufStatus, role: &str) -> u64 {
    status
        .roles
        .iter()
        .find(|r| r.role == role)
        .unwrap()
        .version
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_or_network_that_tampers_makes_the_agent_install_nothing() {
    let data = tempfile::tempdir().unwrap();
    let (server, fleet, new) = signed_kiosks(data.path()).await;
    let api = server.api();
    let pkgs = data.path().join("pkgs");
    let pkg = package_named(&api, "kiosk_7.5.0.tgz").await;
    let tamper = Tamper::start(server.addr).await;
    let k = Kiosk::trusting(1, &tamper.url(), &server.secret, &fleet.root_json()).await;
    let out = k.once();
    assert!(out.status.success(), "{}", stderr(&out));
    let refused = |state: DeviceTaskState, message: &str, want: &[&str]| {
        assert_eq!(state, DeviceTaskState::Failed, "{message}");
        for w in want {
            assert!(message.contains(w), "{w:?} not in: {message}");
        }
    };

    // A compromised server offers a package no offline key signed.
    let unsigned = posup_sim::kiosk_package(&pkgs, "7.6.0", false).unwrap();
    let unsigned_pkg: PackageView = api
        .post_bytes(
            "/api/v1/packages?device_type=kiosk&file_name=kiosk_7.6.0.tgz",
            std::fs::read(&unsigned).unwrap(),
        )
        .await;
    assert!(unsigned_pkg.signatures.is_empty());
    let (state, message) = update(&api, &k, &unsigned_pkg).await;
    refused(
        state,
        &message,
        &["release", "kiosk_7.6.0.tgz", "is not signed"],
    );

    // The package's bytes changed on the way.
    let download = format!("/api/v1/agent/packages/{}", pkg.sha256);
    let mut bytes = std::fs::read(&new).unwrap();
    bytes[100] ^= 0xff;
    tamper.answer(&download, bytes.clone());
    let (state, message) = update(&api, &k, &pkg).await;
    refused(state, &message, &["sha256"]);

    // Endless data: more bytes than the signed length.
    let mut longer = std::fs::read(&new).unwrap();
    longer.extend(std::iter::repeat_n(0u8, 1 << 20));
    tamper.answer(&download, longer);
    let (state, message) = update(&api, &k, &pkg).await;
    refused(state, &message, &["bytes"]);
    tamper.clear();

    // The file name the poll names is not the one signed.
    tamper.rewrite("/api/v1/agent/poll", "kiosk_7.5.0.tgz", "kiosk_7.5.1.tgz");
    let (state, message) = update(&api, &k, &pkg).await;
    refused(state, &message, &["kiosk_7.5.1.tgz", "is not signed"]);
    tamper.clear();

    // Metadata rollback: once the terminal saw a newer timestamp, an older one
    // is refused.
    let old_timestamp = metadata(&server, "timestamp.json").await;
    let extra = posup_sim::kiosk_package(&pkgs, "7.5.5", false).unwrap();
    fleet.publish_package(&server, &extra, &[]);
    let out = k.once();
    assert!(out.status.success(), "{}", stderr(&out));
    let seen = package_named(&api, "kiosk_7.5.5.tgz").await;
    let (state, message) = update(&api, &k, &seen).await;
    assert_eq!(state, DeviceTaskState::Success, "{message}");
    // Back to the old version for the next cases; signed as a downgrade.
    let old = posup_sim::kiosk_package(&pkgs, OLD, false).unwrap();
    fleet.publish_package(&server, &old, &["--allow-downgrade"]);
    let (state, message) = update(&api, &k, &package_named(&api, "kiosk_7.4.2.tgz").await).await;
    assert_eq!(state, DeviceTaskState::Success, "{message}");
    tamper.answer("/tuf/metadata/timestamp.json", old_timestamp);
    let (state, message) = update(&api, &k, &pkg).await;
    refused(state, &message, &["timestamp"]);
    tamper.clear();

    // Mix and match: the current snapshot with another version's targets.
    let status: TufStatus = api.get("/api/v1/tuf").await;
    let targets_version = current_version(&status, "targets");
    let older_targets = metadata(&server, &format!("{}.targets.json", targets_version - 1)).await;
    tamper.answer(
        &format!("/tuf/metadata/{targets_version}.targets.json"),
        older_targets,
    );
    let (state, message) = update(&api, &k, &pkg).await;
    refused(state, &message, &["targets"]);
    tamper.clear();

    assert_eq!(k.version(), OLD, "nothing was installed");
    // With nothing tampered, the same package installs.
    let (state, message) = update(&api, &k, &pkg).await;
    assert_eq!(state, DeviceTaskState::Success, "{message}");
    assert_eq!(k.version(), NEW);
    // Last, as they leave this terminal trusting the forged timestamp: the
    // online keys, stolen, sign a timestamp that has expired (freeze), and then
    // try to publish a plugin of their own.
    let keys = data.path().join("tuf-keys");
    let snapshot_key = posup_trust::keys::read_signing(&keys.join("snapshot.key")).unwrap();
    let timestamp_key = posup_trust::keys::read_signing(&keys.join("timestamp.key")).unwrap();
    let status: TufStatus = api.get("/api/v1/tuf").await;
    let ts_version = current_version(&status, "timestamp");
    let snap_version = current_version(&status, "snapshot");
    let snap_bytes = metadata(&server, &format!("{snap_version}.snapshot.json")).await;
    let timestamp = |expires: jiff::Timestamp, snapshot: (u64, &[u8])| -> Vec<u8> {
        let mut t = tough::schema::Timestamp::new(
            meta::SPEC_VERSION.into(),
            std::num::NonZeroU64::new(ts_version + 10).unwrap(),
            expires,
        );
        t.meta.insert(
            "snapshot.json".into(),
            meta::metafile(std::num::NonZeroU64::new(snapshot.0).unwrap(), snapshot.1),
        );
        meta::to_bytes(&meta::sign(t, &[&timestamp_key]))
    };
    let past = meta::expires_in(meta::now(), -60);
    tamper.answer(
        "/tuf/metadata/timestamp.json",
        timestamp(past, (snap_version, &snap_bytes)),
    );
    let (state, message) = update(&api, &k, &seen).await;
    refused(state, &message, &["expired"]);

    // A new vendor role version listing the attacker's plugin, signed with the
    // online snapshot key; snapshot and timestamp pinning it, signed right.
    let vendor_version = current_version(&status, "vendor-posup");
    let vendor_bytes = metadata(&server, &format!("{vendor_version}.vendor-posup.json")).await;
    let mut vendor: tough::schema::Signed<tough::schema::Targets> =
        serde_json::from_slice(&vendor_bytes).unwrap();
    let evil = b"not the vendor's plugin".to_vec();
    vendor.signed.version = std::num::NonZeroU64::new(vendor_version + 1).unwrap();
    vendor.signed.targets.insert(
        tough::TargetName::new("plugins/kiosk/kiosk/kiosk-9.9.9.wasm").unwrap(),
        posup_trust::offline::plugin_target(&evil, "kiosk", "9.9.9", "posup"),
    );
    let forged = meta::to_bytes(&meta::sign(vendor.signed, &[&snapshot_key]));
    let mut snapshot: tough::schema::Signed<tough::schema::Snapshot> =
        serde_json::from_slice(&snap_bytes).unwrap();
    snapshot.signed.version = std::num::NonZeroU64::new(snap_version + 10).unwrap();
    snapshot.signed.meta.insert(
        "vendor-posup.json".into(),
        meta::metafile(
            std::num::NonZeroU64::new(vendor_version + 1).unwrap(),
            &forged,
        ),
    );
    let snapshot = meta::to_bytes(&meta::sign(snapshot.signed, &[&snapshot_key]));
    tamper.answer(
        &format!("/tuf/metadata/{}.vendor-posup.json", vendor_version + 1),
        forged,
    );
    tamper.answer(
        &format!("/tuf/metadata/{}.snapshot.json", snap_version + 10),
        snapshot.clone(),
    );
    let future = meta::expires_in(meta::now(), 3600);
    tamper.answer(
        "/tuf/metadata/timestamp.json",
        timestamp(future, (snap_version + 10, &snapshot)),
    );
    let (state, message) = update(&api, &k, &seen).await;
    // tough names a delegated role by its type (targets), not by its name.
    refused(state, &message, &["Signature threshold", "targets"]);
    tamper.clear();

    assert_eq!(k.version(), NEW, "nothing was installed");
    drop(k);

    // A terminal whose first plugin download is tampered with never loads it.
    let plugin_sha = hex_of(posup_bundled::get("kiosk").unwrap());
    tamper.answer(
        &format!("/api/v1/agent/plugins/{plugin_sha}"),
        b"\0asm garbage".to_vec(),
    );
    let k2 = Kiosk::trusting(2, &tamper.url(), &server.secret, &fleet.root_json()).await;
    let out = k2.once();
    assert!(out.status.success(), "{}", stderr(&out));
    let (state, message) = update(&api, &k2, &pkg).await;
    refused_k(&k2, state, &message, &["plugin kiosk"]);
    drop(k2);
    server.stop().await;
}

fn refused_k(k: &Kiosk, state: DeviceTaskState, message: &str, want: &[&str]) {
    assert_eq!(state, DeviceTaskState::Failed, "{message}");
    for w in want {
        assert!(message.contains(w), "{w:?} not in: {message}");
    }
    assert_eq!(k.version(), OLD, "{message}");
}

fn hex_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The folder python-tuf is importable from: installed once from PyPI into the
/// build's own temporary folder, so `cargo test` needs nothing installed first.
fn python_tuf() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-tuf-7.0.1");
    let importable = || {
        std::process::Command::new("python3")
            .env("PYTHONPATH", &dir)
            .args(["-c", "import tuf.ngclient"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !importable() {
        let out = std::process::Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
            ])
            .arg(&dir)
            .arg("tuf==7.0.1")
            .output()
            .expect("running python3 -m pip");
        assert!(
            out.status.success() && importable(),
            "installing python-tuf 7.0.1 into {} failed: {}",
            dir.display(),
            stderr(&out)
        );
    }
    dir
}

/// A device token, as a terminal gets one by enrolling.
async fn device_token(server: &Server) -> String {
    use posup_proto::agent::{DeviceIdentity, EnrollRequest, EnrollResponse, Site};
    let req = EnrollRequest {
        secret: server.secret.clone(),
        device: DeviceIdentity {
            guid: "python-tuf".into(),
            site: Site {
                name: "Test store".into(),
                address: String::new(),
            },
            name: "reference client".into(),
            number: 99,
            device_type: "kiosk".into(),
            agent_version: "python-tuf".into(),
        },
    };
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/agent/enroll", server.url()))
        .json(&req)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    resp.json::<EnrollResponse>().await.unwrap().token
}

/// The reference implementation's client (python-tuf), which nobody here wrote,
/// bootstraps from posup's root.json, refreshes from the running server, and
/// downloads and verifies a plugin and a package. python-tuf comes from PyPI on
/// first run, so the test runs everywhere the suite does, CI included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_tuf_client_accepts_the_repository() {
    let python_path = python_tuf();
    let data = tempfile::tempdir().unwrap();
    let (server, fleet, new) = signed_kiosks(data.path()).await;
    let api = server.api();
    // A root rotation too, so the client walks the N.root.json chain.
    fleet.rotate_root(&server);

    let plugins: Vec<posup_proto::api::PluginView> = api.get("/api/v1/plugins").await;
    let plugin = plugins.iter().find(|p| p.name == "kiosk").unwrap();
    let plugin_target = format!("plugins/kiosk/kiosk/kiosk-{}.wasm", plugin.version);
    let token = device_token(&server).await;
    let client = data.path().join("python-tuf");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/e2e/tuf_client.py");
    let out = tokio::process::Command::new("python3")
        .env("PYTHONPATH", &python_path)
        .arg(script)
        .args(["--root", &fleet.root_json().display().to_string()])
        .args(["--server", &server.url(), "--token", &token])
        .args(["--dir", &client.display().to_string()])
        .args([&plugin_target, "packages/kiosk/kiosk_7.5.0.tgz"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "python-tuf refused posup's repository: {}",
        stderr(&out)
    );
    let paths: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(paths.len(), 2, "{paths:?}");
    assert_eq!(
        std::fs::read(&paths[0]).unwrap(),
        posup_bundled::get("kiosk").unwrap()
    );
    assert_eq!(
        std::fs::read(&paths[1]).unwrap(),
        std::fs::read(&new).unwrap()
    );
    // It trusts the rotated root now.
    let trusted = std::fs::read_to_string(client.join("metadata/root.json")).unwrap();
    assert!(trusted.contains("\"version\": 2"), "{trusted}");

    // And it refuses what was not signed: a target no role lists.
    let out = tokio::process::Command::new("python3")
        .env("PYTHONPATH", &python_path)
        .arg(script)
        .args(["--root", &fleet.root_json().display().to_string()])
        .args(["--server", &server.url(), "--token", &token])
        .args(["--dir", &client.display().to_string()])
        .arg("packages/kiosk/kiosk_9.9.9.tgz")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no such target"), "{}", stderr(&out));
    server.stop().await;
}
