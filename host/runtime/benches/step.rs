//! The cost of one plugin step: a fresh instance of a trivial plugin and one call
//! (what the host pays per step), next to Mender's update-module model, which
//! spawns a shell script once per state, doing the same nothing.
//!
//! Run: `cargo bench -p posup-runtime --bench step`. Prints medians and the ratio.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use posup_runtime::types::{PackageInfo, StepContext, TaskKind};
use posup_runtime::{HostEnv, Runtime, RuntimeConfig, Step};

const RUNS: usize = 2_000;
const SPAWNS: usize = 300;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn percentile(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[((v.len() as f64 - 1.0) * p) as usize]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let plugin = runtime
        .load_file(Path::new(posup_bundled::TEST_HOSTILE))
        .unwrap();
    let env = HostEnv::default();
    let ctx = StepContext {
        package: "/staging/p.tgz".into(),
        info: PackageInfo {
            version: "1".into(),
            kind: "test".into(),
            notes: String::new(),
            changelog: String::new(),
            rollback: true,
        },
        task: TaskKind::Update,
        attempt: 1,
    };

    let wasm: Vec<Duration> = rt.block_on(async {
        // Warm up: first instantiations fault in the compiled code.
        for _ in 0..50 {
            plugin
                .step(&env, Step::Precheck, &ctx, Duration::from_secs(10))
                .await
                .unwrap();
        }
        let mut times = Vec::with_capacity(RUNS);
        for _ in 0..RUNS {
            let t = Instant::now();
            let outcome = plugin
                .step(&env, Step::Precheck, &ctx, Duration::from_secs(10))
                .await
                .unwrap();
            times.push(t.elapsed());
            assert!(matches!(outcome, posup_runtime::types::Outcome::Ok));
        }
        times
    });

    // Mender's update modules: one process per state, `<module> <State> <files>`.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("update-module");
    std::fs::write(
        &script,
        "#!/bin/sh\ncase \"$1\" in\n  ArtifactInstall) exit 0 ;;\n  *) exit 0 ;;\nesac\n",
    )
    .unwrap();
    let mut spawn = Vec::with_capacity(SPAWNS);
    for _ in 0..SPAWNS {
        let t = Instant::now();
        let status = Command::new("/bin/sh")
            .arg(&script)
            .arg("ArtifactInstall")
            .arg(dir.path())
            .status()
            .unwrap();
        spawn.push(t.elapsed());
        assert!(status.success());
    }

    let w = median(wasm.clone());
    let s = median(spawn.clone());
    println!("plugin step: fresh instance + one call of a trivial plugin ({RUNS} runs)");
    println!(
        "  median {:>9.1} µs   p99 {:>9.1} µs",
        w.as_secs_f64() * 1e6,
        percentile(&wasm, 0.99).as_secs_f64() * 1e6
    );
    println!("peer: spawn a shell-script update module per state ({SPAWNS} runs)");
    println!(
        "  median {:>9.1} µs   p99 {:>9.1} µs",
        s.as_secs_f64() * 1e6,
        percentile(&spawn, 0.99).as_secs_f64() * 1e6
    );
    println!(
        "ratio: the plugin step is {:.1}x cheaper",
        s.as_secs_f64() / w.as_secs_f64()
    );
}
