//! The sandbox holds against a plugin that misbehaves: it loops, hoards memory,
//! panics, reaches for paths and services it was not given. Each misbehaviour fails
//! only its own call, with an error that says what happened, and the host goes on.

use std::path::Path;
use std::time::{Duration, Instant};

use posup_runtime::types::Dir;
use posup_runtime::{DirGrant, Grants, HostEnv, Limits, Plugin, Runtime, RuntimeConfig, StepError};

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
    let entries: Vec<_> = std::fs::read_dir(cache.path()).unwrap().flatten().collect();
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
    assert!(!rt.is_cached(bytes));
    let out = crate::support::posup()
        .args(["plugin", "compile", "--state-dir"])
        .arg(&state)
        .arg(&wasm)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", crate::support::stderr(&out));
    assert!(rt.is_cached(bytes), "the agent's runtime finds the entry");
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
    let entries = std::fs::read_dir(state.join("cache")).unwrap().count();
    assert_eq!(entries, 1, "only the kiosk's entry");
}
