//! The sandbox holds against a plugin that misbehaves: it loops, hoards memory,
//! panics, reaches for paths and services it was not given. Each misbehaviour fails
//! only its own call, with an error that says what happened, and the host goes on.

use std::path::Path;
use std::time::{Duration, Instant};

use posup_runtime::types::Dir;
use posup_runtime::{DirGrant, Grants, HostEnv, Limits, Plugin, Runtime, RuntimeConfig, StepError};

use crate::support::read;

fn runtime(read_deadline: Duration) -> Runtime {
    Runtime::new(RuntimeConfig {
        cache_dir: None,
        limits: Limits {
            memory: 64 << 20,
            ..Limits::default()
        },
        read_deadline,
    })
    .unwrap()
}

fn hostile(rt: &Runtime) -> Plugin {
    rt.load_file(Path::new(posup_bundled::TEST_HOSTILE))
        .unwrap()
}

/// A staging folder holding an empty "package" named after the misbehaviour.
fn env_with(staging: &Path, product: Option<&Path>, services: Vec<String>) -> HostEnv {
    let mut dirs = vec![DirGrant {
        dir: Dir::Staging,
        host: staging.to_owned(),
        write: false,
    }];
    if let Some(p) = product {
        dirs.push(DirGrant {
            dir: Dir::Product,
            host: p.to_owned(),
            write: true,
        });
    }
    HostEnv {
        grants: Grants {
            dirs,
            services,
            ..Grants::default()
        },
        ..HostEnv::default()
    }
}

fn package(dir: &Path, name: &str) -> String {
    std::fs::write(dir.join(name), b"").unwrap();
    format!("/staging/{name}")
}

#[tokio::test]
async fn an_endless_loop_is_interrupted_at_its_deadline_and_the_host_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = runtime(Duration::from_millis(500));
    let p = hostile(&rt);
    let env = env_with(tmp.path(), None, vec![]);
    let started = Instant::now();
    let err = p
        .inspect(&env, &package(tmp.path(), "loop"))
        .await
        .unwrap_err();
    assert!(matches!(err, StepError::Deadline { .. }), "{err}");
    assert!(err.to_string().contains("deadline"), "{err}");
    // Interrupted, not left to run to some outer limit.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    let info = p
        .inspect(&env, &package(tmp.path(), "fine"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.notes, "trivial");
}

#[tokio::test]
async fn memory_growth_past_the_limit_fails_the_call() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = runtime(Duration::from_secs(60));
    let p = hostile(&rt);
    let env = env_with(tmp.path(), None, vec![]);
    let err = p
        .inspect(&env, &package(tmp.path(), "grow"))
        .await
        .unwrap_err();
    assert!(matches!(err, StepError::Limit { .. }), "{err}");
    assert!(err.to_string().contains("memory limit of 64 MiB"), "{err}");
    assert!(
        p.inspect(&env, &package(tmp.path(), "fine"))
            .await
            .unwrap()
            .is_ok()
    );
}

#[tokio::test]
async fn a_panic_is_a_failed_call_that_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = runtime(Duration::from_secs(60));
    let p = hostile(&rt);
    let env = env_with(tmp.path(), None, vec![]);
    let err = p
        .inspect(&env, &package(tmp.path(), "trap"))
        .await
        .unwrap_err();
    assert!(matches!(err, StepError::Trap { .. }), "{err}");
    assert!(err.to_string().contains("panicked on purpose"), "{err}");
}

#[tokio::test]
async fn paths_outside_the_preopens_cannot_be_read() {
    let tmp = tempfile::tempdir().unwrap();
    let product = tempfile::tempdir().unwrap();
    let rt = runtime(Duration::from_secs(60));
    let p = hostile(&rt);
    let env = env_with(tmp.path(), Some(product.path()), vec![]);
    let answer = p
        .inspect(&env, &package(tmp.path(), "escape"))
        .await
        .unwrap();
    assert_eq!(
        answer.unwrap_err(),
        "no path outside the preopens could be read"
    );
}

#[tokio::test]
async fn ungranted_services_and_directories_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let product = tempfile::tempdir().unwrap();
    let rt = runtime(Duration::from_secs(60));
    let p = hostile(&rt);

    // The plugin asks for sshd; the operator granted only the kiosk service.
    let env = env_with(tmp.path(), Some(product.path()), vec!["kiosk".into()]);
    let err = p
        .inspect(&env, &package(tmp.path(), "service"))
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.contains("sshd") && err.contains("not granted"), "{err}");

    // /backup was never granted.
    let err = p
        .inspect(&env, &package(tmp.path(), "backup-write"))
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.starts_with("/backup/planted"), "{err}");

    // inspect only reads: /product is granted, but read-only during inspect.
    let err = p
        .inspect(&env, &package(tmp.path(), "product-write"))
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.starts_with("/product/planted"), "{err}");
    assert!(!product.path().join("planted").exists());
}

#[tokio::test]
async fn info_runs_with_nothing_granted_and_the_cache_is_reused() {
    let cache = tempfile::tempdir().unwrap();
    let rt = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache.path().to_owned()),
        ..RuntimeConfig::default()
    })
    .unwrap();
    let p = hostile(&rt);
    let info = p.info().await.unwrap();
    assert_eq!(info.name, "test-hostile");
    let entries: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".cwasm"))
        .collect();
    assert_eq!(entries.len(), 1, "one compiled entry");
    let name = entries[0].file_name().into_string().unwrap();
    assert!(
        name.starts_with(p.digest()) && name.ends_with(".cwasm"),
        "{name}"
    );
    // A second load uses the entry (a damaged one would be rebuilt, so corrupt it
    // and check the plugin still loads and works).
    std::fs::write(entries[0].path(), b"garbage").unwrap();
    let again = hostile(&rt);
    assert_eq!(again.info().await.unwrap().name, "test-hostile");
    assert!(std::fs::metadata(entries[0].path()).unwrap().len() > 1000);
}

#[tokio::test]
async fn garbage_is_not_a_plugin() {
    let rt = runtime(Duration::from_secs(5));
    let err = rt.load("junk", b"\0asm not really").unwrap_err();
    assert!(err.to_string().contains("plugin junk"), "{err}");
}

/// `posup plugin compile`, which the agent runs in a child process: the agent's
/// cache gets the compiled plugin, which its runtime then loads without compiling;
/// a file that is no component is refused by name and leaves the cache alone.
#[test]
fn plugins_compile_into_the_agents_cache_in_a_child_process() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let wasm = dir.path().join("kiosk.wasm");
    let bytes = posup_bundled::get("kiosk").unwrap();
    std::fs::write(&wasm, bytes).unwrap();
    let rt = posup_agent::agent::runtime_for(&state).unwrap();
    let sha256 = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(bytes))
    };
    assert!(!rt.is_cached_as(&sha256));
    let out = crate::support::posup()
        .args(["plugin", "compile", "--state-dir"])
        .arg(&state)
        .arg(&wasm)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", crate::support::stderr(&out));
    assert!(
        rt.is_cached_as(&sha256),
        "the agent's runtime finds the entry"
    );
    rt.load("kiosk", bytes).unwrap();

    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"not a component").unwrap();
    let out = crate::support::posup()
        .args(["plugin", "compile", "--state-dir"])
        .arg(&state)
        .arg(&junk)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        crate::support::stderr(&out).contains("junk"),
        "{}",
        crate::support::stderr(&out)
    );
    let entries = std::fs::read_dir(state.join("cache"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".cwasm"))
        .count();
    assert_eq!(entries, 1, "only the kiosk's entry");
}

/// A plugin with ordinary grants: `/product` and `/staging` writable, scripts and
/// prompts allowed, as an updater has them.
struct Granted {
    tmp: tempfile::TempDir,
    product: std::path::PathBuf,
    staging: std::path::PathBuf,
}

impl Granted {
    fn new() -> Granted {
        Granted::within(None)
    }

    /// `/product` and `/staging` in `dir` (a filesystem of the test's choosing),
    /// or in the test's temporary folder.
    fn within(dir: Option<&Path>) -> Granted {
        let tmp = tempfile::tempdir().unwrap();
        let root = match dir {
            Some(d) => d.to_owned(),
            None => tmp.path().canonicalize().unwrap(),
        };
        let (product, staging) = (root.join("product"), root.join("staging"));
        std::fs::create_dir(&product).unwrap();
        std::fs::create_dir(&staging).unwrap();
        std::fs::write(product.join("marker"), b"the product").unwrap();
        std::fs::write(staging.join("probe"), b"probe").unwrap();
        Granted {
            tmp,
            product,
            staging,
        }
    }

    fn env(&self) -> HostEnv {
        HostEnv {
            grants: Grants {
                dirs: vec![
                    DirGrant {
                        dir: Dir::Product,
                        host: self.product.clone(),
                        write: true,
                    },
                    DirGrant {
                        dir: Dir::Staging,
                        host: self.staging.clone(),
                        write: true,
                    },
                ],
                scripts: true,
                prompt: true,
                ..Grants::default()
            },
            ..HostEnv::default()
        }
    }

    /// Runs `stage` of the hostile plugin on a package named after the attack.
    async fn stage(
        &self,
        env: &HostEnv,
        attack: &str,
        deadline: Duration,
    ) -> Result<String, StepError> {
        self.step(env, posup_runtime::Step::Stage, attack, deadline)
            .await
    }

    /// Runs `step` of the hostile plugin on a package named after the attack.
    async fn step(
        &self,
        env: &HostEnv,
        step: posup_runtime::Step,
        attack: &str,
        deadline: Duration,
    ) -> Result<String, StepError> {
        use posup_runtime::types::{Outcome, PackageInfo, StepContext, TaskKind};
        let package = self.staging.join(attack);
        if !package.exists() {
            std::fs::write(&package, b"").unwrap();
        }
        let rt = runtime(Duration::from_secs(60));
        let p = hostile(&rt);
        let ctx = StepContext {
            package: format!("/staging/{attack}"),
            info: PackageInfo {
                version: "0".into(),
                kind: "test".into(),
                notes: String::new(),
                changelog: String::new(),
                rollback: true,
            },
            task: TaskKind::Update,
            attempt: 1,
        };
        match p.step(env, step, &ctx, deadline).await? {
            Outcome::Failed(m) => Ok(m),
            other => panic!("the hostile stage answered {other:?}"),
        }
    }

    /// The product root is the real directory it was, with its content.
    fn assert_product_intact(&self) {
        let meta = std::fs::symlink_metadata(&self.product).unwrap();
        assert!(meta.is_dir(), "the product root was replaced by a link");
        assert_eq!(
            std::fs::read(self.product.join("marker")).unwrap(),
            b"the product"
        );
    }
}

const ESCAPED_PROBE: &str = "/tmp/posup-escaped";

/// The exchange escape, by a planted "interrupted exchange": `/staging/x` is
/// absent and `/staging/x.posup-exchange` is a link climbing to `/`.
#[tokio::test]
async fn exchange_never_finishes_an_exchange_a_plugin_planted() {
    let _ = std::fs::remove_dir_all(ESCAPED_PROBE);
    let g = Granted::new();
    std::os::unix::fs::symlink(
        "../../../../../../../../../../../..",
        g.staging.join("x.posup-exchange"),
    )
    .unwrap();
    let said = g
        .stage(&g.env(), "exchange-sidecar", Duration::from_secs(30))
        .await
        .unwrap();
    assert!(said.starts_with("held:"), "{said}");
    g.assert_product_intact();
    assert!(
        !Path::new(ESCAPED_PROBE).exists(),
        "a file was written outside the grants"
    );
}

/// The exchange escape, by a link deep in `/staging` that resolves inside it
/// there and climbs to `/` where the product root stands.
#[tokio::test]
async fn exchange_never_puts_a_link_where_the_product_was() {
    let _ = std::fs::remove_dir_all(ESCAPED_PROBE);
    let g = Granted::new();
    let deep = g.staging.join("a/b/c/d/e/f/g/h/i/j");
    std::fs::create_dir_all(&deep).unwrap();
    std::os::unix::fs::symlink("../../../../../../../../../..", deep.join("link")).unwrap();
    let said = g
        .stage(&g.env(), "exchange-deep", Duration::from_secs(30))
        .await
        .unwrap();
    assert!(said.starts_with("held:"), "{said}");
    assert!(said.contains("real directories"), "{said}");
    g.assert_product_intact();
    assert!(
        !Path::new(ESCAPED_PROBE).exists(),
        "a file was written outside the grants"
    );
}

/// A planted `<log>.1` link to a file outside the grants is never read, even with
/// a mark naming that file.
#[tokio::test]
async fn a_rotated_log_link_out_of_the_grants_is_never_read() {
    use std::os::unix::fs::MetadataExt;
    let g = Granted::new();
    let secret = g.tmp.path().join("shadow");
    std::fs::write(&secret, "root:SECRET:1:0\n").unwrap();
    std::os::unix::fs::symlink(&secret, g.product.join("rot.1")).unwrap();
    let mut env = g.env();
    let inode = std::fs::metadata(&secret).unwrap().ino();
    env.vars = std::sync::Arc::new([("inode".to_string(), inode.to_string())].into());
    let said = g
        .stage(&env, "rotated-log", Duration::from_secs(30))
        .await
        .unwrap();
    assert!(said.starts_with("held:"), "{said}");
}

/// Host work a step started stops when the step's deadline passes, before the
/// caller gets the deadline error: a script still running is killed with every
/// process it started, and none of them writes anything afterwards.
#[tokio::test]
async fn a_timed_out_step_leaves_no_host_work_running() {
    let g = Granted::new();
    let late = g.tmp.path().join("late");
    let pidfile = g.tmp.path().join("pid");
    std::fs::write(
        g.staging.join("slow.sh"),
        format!(
            "(sleep 9; touch {}) &\necho $! > {}\nwait\n",
            late.display(),
            pidfile.display()
        ),
    )
    .unwrap();
    let started = Instant::now();
    let err = g
        .stage(&g.env(), "slow-script", Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, StepError::Deadline { .. }), "{err}");
    // Killed: gone, or a zombie not yet reaped, which runs nothing. SIGKILL was
    // sent before the error returned; a process that has it pending never runs
    // its own code again, but the kernel may show it running for a moment while
    // it exits, so its state is looked at for up to a second.
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    let state = || {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap_or_default();
        let running = status
            .lines()
            .find_map(|l| l.strip_prefix("State:"))
            .is_some_and(|s| !s.trim_start().starts_with('Z'));
        (running, status)
    };
    let mut seen = state();
    for _ in 0..100 {
        if !seen.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        seen = state();
    }
    assert!(
        !seen.0,
        "the script was still running a second after the step's deadline error: {}",
        seen.1
    );
    // Past the moment the script would have written.
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(started.elapsed())).await;
    assert!(!late.exists(), "the script wrote after the step ended");
}

/// Progress and messages in a loop reach the host a bounded number of times.
#[tokio::test]
async fn a_flood_of_progress_and_messages_is_throttled() {
    use posup_runtime::caps::log::{EventSink, Level};
    use posup_runtime::caps::prompt::{FixedAnswer, MAX_MESSAGE, MAX_NOTIFY};
    use std::sync::atomic::{AtomicUsize, Ordering};
    #[derive(Default)]
    struct Count(AtomicUsize);
    impl EventSink for Count {
        fn log(&self, _: &str, _: Level, _: &str) {}
        fn progress(&self, _: &str, _: u8, _: &str) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let g = Granted::new();
    let count = std::sync::Arc::new(Count::default());
    let shown = FixedAnswer::default();
    let mut env = g.env();
    env.events = Some(count.clone());
    env.prompter = Some(std::sync::Arc::new(shown.clone()));
    let started = Instant::now();
    let said = g
        .stage(&env, "flood", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(said, "held: flooded");
    let secs = started.elapsed().as_secs_f64();
    let progress = count.0.load(Ordering::SeqCst) as f64;
    assert!(
        progress <= secs / 0.5 + 2.0,
        "{progress} reports in {secs:.1} s"
    );
    let shown = shown.shown.lock().unwrap();
    assert_eq!(shown.len(), MAX_NOTIFY);
    assert!(shown.iter().all(|m| m.len() <= MAX_MESSAGE));
}

#[tokio::test]
async fn a_huge_tar_long_name_is_refused_at_its_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = runtime(Duration::from_secs(60));
    let p = hostile(&rt);
    let env = env_with(tmp.path(), None, vec![]);
    std::fs::write(
        tmp.path().join("list-bomb.tar"),
        posup_sim::hostile::long_name_bomb(),
    )
    .unwrap();
    let err = p
        .inspect(&env, "/staging/list-bomb.tar")
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.contains("64 KiB") && err.contains("long-name"), "{err}");
}

/// Compiled code in the cache is native code: an entry this host did not write —
/// here another plugin's, placed under this plugin's name — is never loaded.
#[tokio::test]
async fn the_compile_cache_loads_only_what_this_host_wrote() {
    let cache = tempfile::tempdir().unwrap();
    let rt = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache.path().to_owned()),
        ..RuntimeConfig::default()
    })
    .unwrap();
    let hostile_bytes = std::fs::read(posup_bundled::TEST_HOSTILE).unwrap();
    let hostile_digest = hostile(&runtime(Duration::from_secs(5)))
        .digest()
        .to_owned();
    let kiosk = rt
        .load("kiosk", posup_bundled::get("kiosk").unwrap())
        .unwrap();
    let kiosk_entry = std::fs::read_dir(cache.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(kiosk.digest())
        })
        .expect("the kiosk's compiled entry");
    let name = kiosk_entry
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let planted = cache
        .path()
        .join(name.replacen(kiosk.digest(), &hostile_digest, 1));
    std::fs::copy(&kiosk_entry, &planted).unwrap();
    let p = rt.load("test-hostile", &hostile_bytes).unwrap();
    assert_eq!(p.info().await.unwrap().name, "test-hostile");
}

/// A failed precheck is reported as "the installation was not changed": precheck
/// only looks, so a plugin that tries to change things there cannot.
#[tokio::test]
async fn precheck_changes_nothing_whatever_the_plugin_does() {
    let g = Granted::new();
    let before = crate::support::snapshot(&g.product);
    let said = g
        .step(
            &g.env(),
            posup_runtime::Step::Precheck,
            "precheck-writes",
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert!(said.starts_with("held:"), "{said}");
    assert_eq!(crate::support::snapshot(&g.product), before);
}

/// A small filesystem of its own, mounted for one test (tmpfs; the test runs as
/// root, as posup does on a terminal), unmounted when dropped.
struct SmallDisk {
    _tmp: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl SmallDisk {
    fn new(megabytes: u32) -> SmallDisk {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test mounts a tmpfs and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { _tmp: tmp, path }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(&self.path)
            .status();
    }
}

/// A package that unpacks to more than the disk holds is refused while the
/// filesystem still keeps its reserve: the product's own data (its database, on
/// a terminal) never meets a full disk because of an update.
#[tokio::test]
async fn an_archive_bomb_stops_at_the_disk_reserve() {
    let disk = SmallDisk::new(320);
    let g = Granted::within(Some(&disk.path));
    std::fs::write(
        g.staging.join("disk-bomb.tgz"),
        posup_sim::hostile::zero_bomb(300 << 20),
    )
    .unwrap();
    let said = g
        .stage(&g.env(), "disk-bomb.tgz", Duration::from_secs(60))
        .await
        .unwrap();
    assert!(said.starts_with("held:"), "{said}");
    assert!(said.contains("reserve"), "{said}");
    g.assert_product_intact();
    assert_eq!(
        std::fs::read_dir(&g.product).unwrap().count(),
        1,
        "nothing was extracted"
    );
}

/// A plugin built against the first released interface, `posup:plugin@0.1.0`,
/// runs on this host as it is: its exports through that version's bindings,
/// its imports (`kv`, `vars`, WASI files) answered by the newest version's
/// capabilities. The bundled plugins are built against the newest one.
#[tokio::test]
async fn a_plugin_of_the_first_interface_still_runs_every_step() {
    use posup_runtime::Step;
    use posup_runtime::types::{Outcome, StepContext, TaskKind};

    let rt = runtime(Duration::from_secs(10));
    let old = rt.load_file(Path::new(posup_bundled::TEST_V0_1_0)).unwrap();
    assert_eq!(old.interface().version().to_string(), "0.1.0");
    let newest = rt
        .load("icecash", posup_bundled::get("icecash").unwrap())
        .unwrap();
    assert_eq!(newest.interface().version().to_string(), "0.1.1");
    assert_eq!(newest.databases().await.unwrap()[0].name, "icecash");

    assert_eq!(old.info().await.unwrap().name, "test-v0-1-0");
    assert!(old.databases().await.unwrap().is_empty());
    let product = tempfile::tempdir().unwrap();
    let staging = tempfile::tempdir().unwrap();
    let kv = tempfile::tempdir().unwrap();
    std::fs::write(product.path().join("version"), "1.0").unwrap();
    let mut env = env_with(staging.path(), Some(product.path()), vec![]);
    env.kv_dir = Some(kv.path().to_owned());
    env.vars = std::sync::Arc::new([("note".to_owned(), "from the server".to_owned())].into());

    let inv = old.inventory(&env).await.unwrap().unwrap();
    assert_eq!(
        (inv.version.as_str(), inv.state.as_str()),
        ("1.0", "from the server")
    );
    let package = package(staging.path(), "test-1.1.tar");
    let info = old.inspect(&env, &package).await.unwrap().unwrap();
    assert_eq!(info.version, "1.1");
    let ctx = StepContext {
        package,
        info,
        task: TaskKind::Update,
        attempt: 1,
    };
    for step in [Step::Precheck, Step::Stage, Step::Apply] {
        let out = old.step(&env, step, &ctx, Duration::from_secs(10)).await;
        assert!(matches!(out, Ok(Outcome::Ok)), "{step}: {out:?}");
    }
    assert_eq!(read(&product.path().join("version")), "1.1");
    let out = old
        .step(&env, Step::Rollback, &ctx, Duration::from_secs(10))
        .await;
    assert!(matches!(out, Ok(Outcome::Ok)), "{out:?}");
    assert_eq!(read(&product.path().join("version")), "1.0");
}

/// The agent checks a plugin's bytes against the sha256 the server (and the
/// signed metadata) named; the runtime loads only bytes that hash to it.
#[tokio::test]
async fn a_plugin_is_loaded_only_as_the_bytes_it_was_checked_against() {
    let cache = tempfile::tempdir().unwrap();
    let rt = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache.path().to_owned()),
        ..RuntimeConfig::default()
    })
    .unwrap();
    let kiosk = posup_bundled::get("kiosk").unwrap();
    let digest = rt.load("kiosk", kiosk).unwrap().digest().to_owned();
    // Other bytes under the kiosk's digest: the cached kiosk is not handed out
    // for them, and nothing is compiled.
    let hostile = std::fs::read(posup_bundled::TEST_HOSTILE).unwrap();
    let Err(err) = rt.load_verified("kiosk", &hostile, &digest) else {
        panic!("bytes that are not the ones checked were loaded");
    };
    let err = err.to_string();
    assert!(
        err.contains("kiosk") && err.contains(&digest) && err.contains("not loaded"),
        "{err}"
    );
    assert!(rt.is_cached_as(&digest));
    let p = rt.load_verified("kiosk", kiosk, &digest).unwrap();
    assert_eq!(p.digest(), digest);
    assert_eq!(p.info().await.unwrap().name, "kiosk");
}
