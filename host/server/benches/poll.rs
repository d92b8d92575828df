//! Benchmark of the agent poll endpoint with 100 000 registered devices, next to a
//! bare axum handler measured in the same run.
//!
//! `cargo bench -p posup-server --bench poll` runs three server processes in turn —
//! a bare axum handler, the posup server on SQLite, the posup server on PostgreSQL
//! (skipped when unreachable, unless `CI` is set) — and drives each from a separate
//! load-generating process over loopback: keep-alive HTTP/1.1 connections, each
//! poll from a random device with a realistic body. For the posup servers, every
//! device first reports once in order (its first inventory is written), then polls
//! are measured in the steady state, alternating with the bare handler over several
//! rounds. Printed: requests per second, p50 and p99 latency, and each server
//! process's peak RSS (VmHWM). Seeding happens in this process, so the servers' RSS
//! is only what serving takes.
//!
//! Arguments: `[--devices N] [--seconds S] [--connections C]` (defaults 100 000,
//! 4 s per round, 32 connections).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use posup_proto::agent::{AgentStatus, DeviceIdentity, PollRequest, Site};
use posup_proto::api::{CreateGroup, CreateTask, DeviceTypeBody, GroupKind, VariableScope};
use posup_proto::{Inventory, ModuleVersion, TaskKind};
use posup_server::auth::hash_secret;
use posup_store::testing::TestDb;
use posup_store::{At, Backend, NewPackage, NewPlugin, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONNECTIONS: usize = 32;
const WARMUP: Duration = Duration::from_secs(2);

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--serve") => serve(&args[2]),
        Some("--load") => load(&args[2..]),
        _ => orchestrate(&args[1..]),
    }
}

fn flag(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------
// Orchestrator

#[derive(Clone, Copy)]
struct Figures {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

struct Row {
    backend: Backend,
    first: Figures,
    bare: Figures,
    posup: Figures,
    rounds: Vec<(f64, f64)>,
    hwm_mb: f64,
    /// Milliseconds of device-list queries: (label, ms).
    listing: Vec<(&'static str, f64)>,
}

/// Measurement rounds per backend. The machine may be shared, so the bare handler
/// and the posup server are measured alternately, and both the best round of each
/// and the median ratio of adjacent rounds (which see the same background load)
/// are reported.
const ROUNDS: usize = 5;

fn best(a: Option<Figures>, b: Figures) -> Figures {
    match a {
        Some(a) if a.rps >= b.rps => a,
        _ => b,
    }
}

fn orchestrate(args: &[String]) -> anyhow::Result<()> {
    let devices = flag(args, "--devices", 100_000) as u32;
    let seconds = flag(args, "--seconds", 4);
    let connections = flag(args, "--connections", CONNECTIONS as u64) as usize;
    let rt = tokio::runtime::Runtime::new()?;
    let mut rows = Vec::new();
    let mut bare_server = spawn_server("bare")?;

    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(db) = rt.block_on(TestDb::of(backend)) else {
            eprintln!("PostgreSQL is unreachable: its figures are skipped");
            continue;
        };
        // The database is removed whatever happens to the measurement.
        let measured = (|| -> anyhow::Result<Row> {
            eprintln!("seeding {devices} devices on {backend}…");
            let started = Instant::now();
            let (vars_since, revision) = rt.block_on(seed(&db.store, devices))?;
            eprintln!("seeded in {:.1} s", started.elapsed().as_secs_f64());
            let listing = rt.block_on(time_listings(&db.store))?;
            rt.block_on(db.store.close());
            let mut server = spawn_server(&db.url())?;
            let load = |addr: &str, phase: &str| {
                run_load(
                    addr,
                    phase,
                    seconds,
                    connections,
                    devices,
                    vars_since,
                    revision,
                )
            };
            eprintln!("every device reports once…");
            let first = load(&server.addr, "first")?;
            let (mut bare, mut posup, mut rounds) = (None, None, Vec::new());
            for round in 1..=ROUNDS {
                let b = load(&bare_server.addr, "random")?;
                let p = load(&server.addr, "random")?;
                eprintln!(
                    "round {round}: bare {:.0} req/s, posup {:.0} req/s",
                    b.rps, p.rps
                );
                rounds.push((b.rps, p.rps));
                bare = Some(best(bare, b));
                posup = Some(best(posup, p));
            }
            Ok(Row {
                backend,
                first,
                bare: bare.expect("at least one round"),
                posup: posup.expect("at least one round"),
                rounds,
                hwm_mb: server.stop()?,
                listing,
            })
        })();
        rt.block_on(db.cleanup());
        rows.push(measured?);
    }
    let bare_hwm = bare_server.stop()?;

    println!();
    println!(
        "poll benchmark: {devices} devices, {connections} keep-alive connections, best of {ROUNDS} rounds of {seconds} s, {} CPUs",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "{:<10} {:>11} {:>11} {:>11} {:>11} {:>8} {:>8} {:>7} {:>9}   first report of every device (writes)",
        "backend",
        "bare req/s",
        "posup req/s",
        "best/best",
        "paired med",
        "p50 ms",
        "p99 ms",
        "errors",
        "VmHWM MB"
    );
    for r in &rows {
        let mut paired: Vec<f64> = r.rounds.iter().map(|(b, p)| p / b).collect();
        paired.sort_by(f64::total_cmp);
        println!(
            "{:<10} {:>11.0} {:>11.0} {:>10.0}% {:>10.0}% {:>8.2} {:>8.2} {:>7} {:>9.1}   {:.0} req/s, p99 {:.1} ms, {} errors",
            r.backend.to_string(),
            r.bare.rps,
            r.posup.rps,
            100.0 * r.posup.rps / r.bare.rps,
            100.0 * paired[paired.len() / 2],
            r.posup.p50_ms,
            r.posup.p99_ms,
            r.posup.errors + r.bare.errors,
            r.hwm_mb,
            r.first.rps,
            r.first.p99_ms,
            r.first.errors,
        );
        let rounds: Vec<String> = r
            .rounds
            .iter()
            .map(|(b, p)| format!("{b:.0}/{p:.0}"))
            .collect();
        println!(
            "{:<10} rounds (bare/posup req/s): {}",
            "",
            rounds.join(", ")
        );
        let listing: Vec<String> = r
            .listing
            .iter()
            .map(|(l, ms)| format!("{l} {ms:.1} ms"))
            .collect();
        println!("{:<10} device list: {}", "", listing.join(", "));
    }
    println!(
        "bare handler: p50 {:.2} ms, p99 {:.2} ms (best sqlite round), VmHWM {bare_hwm:.1} MB",
        rows.first().map(|r| r.bare.p50_ms).unwrap_or_default(),
        rows.first().map(|r| r.bare.p99_ms).unwrap_or_default()
    );
    Ok(())
}

/// A device type with a plugin, a package and a download task for 1 % of the
/// fleet (their polls carry an action), three variables, and `n` devices with
/// tokens `pdt_bench_<i>`.
async fn seed(store: &Store, n: u32) -> anyhow::Result<(i64, i64)> {
    let now = chrono::Utc::now();
    let at = At::new(now, Duration::from_secs(180));
    let ms = now.timestamp_millis();
    store
        .put_device_type(
            "bench",
            &DeviceTypeBody {
                description: "benchmark terminals".into(),
                ..Default::default()
            },
            ms,
            "bench",
        )
        .await?;
    let plugin = "ab".repeat(32);
    store
        .insert_plugin(
            NewPlugin {
                sha256: plugin.clone(),
                name: "bench".into(),
                vendor: "bench".into(),
                version: "1.0.0".into(),
                description: String::new(),
                device_types: vec!["bench".into()],
                capabilities: Default::default(),
                interface: "0.1.0".into(),
                size: 1,
            },
            ms,
            "bench",
        )
        .await?;
    store
        .enable_plugin("bench", "bench", None, ms, "bench")
        .await?;
    let package = store
        .insert_package(
            NewPackage {
                device_type: "bench".into(),
                file_name: "bench_2.0.tgz".into(),
                sha256: "cd".repeat(32),
                size: 1 << 20,
                version: "2.0".into(),
                kind: "complete".into(),
                notes: String::new(),
                changelog: String::new(),
                rollback: true,
                plugin_sha256: plugin,
            },
            ms,
            "bench",
        )
        .await?;
    let fleet: Vec<(DeviceIdentity, String)> = (0..n)
        .map(|i| {
            let site = format!("Store {:04}", i / 10);
            (
                DeviceIdentity {
                    guid: format!("bench-{i:06}"),
                    site: Site {
                        address: format!("{site}, Main street {}", i / 10),
                        name: site,
                    },
                    name: format!("Kassa {}", i % 10 + 1),
                    number: i % 10 + 1,
                    device_type: "bench".into(),
                    agent_version: "0.1.0".into(),
                },
                hash_secret(&format!("pdt_bench_{i}")),
            )
        })
        .collect();
    for chunk in fleet.chunks(10_000) {
        store.bulk_enroll(chunk, ms, "bench").await?;
    }
    let ids: Vec<i64> = (1..=i64::from(n / 100).max(1)).collect();
    let group = store
        .create_group(
            &CreateGroup {
                name: "pilots".into(),
                description: String::new(),
                kind: GroupKind::Static,
                filter: None,
                devices: ids,
            },
            &at,
            "bench",
        )
        .await?;
    store
        .create_task(
            &CreateTask {
                name: None,
                kind: TaskKind::Download,
                package_id: package.id,
                group_id: group.id,
                start_at: None,
                notice_override: None,
            },
            &at,
            "bench",
        )
        .await?;
    let mut last = 0;
    for (name, value, scope) in [
        ("version", "2.0", VariableScope::All),
        ("update", "iceupd_001", VariableScope::Group { group_id: 3 }),
        (
            "temperature",
            "21",
            VariableScope::Site {
                site: "Store 0001".into(),
            },
        ),
    ] {
        last = store
            .change_variable(name, &scope, Some(value), ms, "bench")
            .await?
            .unwrap_or(last);
    }
    let revision = store.device_config("bench").await?.config.revision;
    Ok((last, revision))
}

/// Times the operator's device list on the seeded fleet: first and deep pages of
/// several sorts, a search and a filter (each the best of three, to skip a cold
/// cache).
async fn time_listings(store: &Store) -> anyhow::Result<Vec<(&'static str, f64)>> {
    use posup_proto::api::{DeviceQuery, DeviceSort, Order};
    let at = At::new(chrono::Utc::now(), Duration::from_secs(180));
    let page = |sort, order, page| DeviceQuery {
        sort,
        order,
        page: Some(page),
        per_page: Some(100),
        ..Default::default()
    };
    let cases: Vec<(&'static str, DeviceQuery)> = vec![
        ("by id, page 1", page(DeviceSort::Id, Order::Asc, 1)),
        ("by name, page 1", page(DeviceSort::Name, Order::Asc, 1)),
        (
            "by site desc, page 1000",
            page(DeviceSort::Site, Order::Desc, 1000),
        ),
        (
            "by last contact, page 500",
            page(DeviceSort::LastContact, Order::Asc, 500),
        ),
        (
            "name contains \"kassa 3\"",
            DeviceQuery {
                name: Some("kassa 3".into()),
                ..page(DeviceSort::Guid, Order::Asc, 1)
            },
        ),
        (
            "site \"store 0042\" and number 3",
            DeviceQuery {
                site: Some("store 0042".into()),
                number: Some(3),
                ..page(DeviceSort::Id, Order::Asc, 1)
            },
        ),
    ];
    let mut out = Vec::new();
    for (label, q) in cases {
        let mut best = f64::MAX;
        for _ in 0..3 {
            let started = Instant::now();
            store.list_devices(&q, &at).await?;
            best = best.min(started.elapsed().as_secs_f64() * 1000.0);
        }
        out.push((label, best));
    }
    Ok(out)
}

struct Server {
    child: Child,
    addr: String,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Server {
    /// Closes the server's stdin (its shutdown signal) and reads its peak RSS.
    fn stop(&mut self) -> anyhow::Result<f64> {
        drop(self.child.stdin.take());
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        self.child.wait()?;
        let kb: f64 = line
            .strip_prefix("HWM ")
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("the server did not report its memory: {line:?}"))?;
        Ok(kb / 1024.0)
    }
}

/// This program, for the server and load-generator processes. `/proc/self/exe`
/// still works when a concurrent build has replaced the file meanwhile.
fn this_program() -> anyhow::Result<std::path::PathBuf> {
    let proc = std::path::PathBuf::from("/proc/self/exe");
    if proc.exists() {
        Ok(proc)
    } else {
        Ok(std::env::current_exe()?)
    }
}

fn spawn_server(target: &str) -> anyhow::Result<Server> {
    let mut child = Command::new(this_program()?)
        .args(["--serve", target])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line)?;
    let addr = line
        .strip_prefix("READY ")
        .map(|a| a.trim().to_owned())
        .ok_or_else(|| anyhow::anyhow!("the server did not start: {line:?}"))?;
    Ok(Server {
        child,
        addr,
        stdout,
    })
}

fn run_load(
    addr: &str,
    phase: &str,
    seconds: u64,
    connections: usize,
    devices: u32,
    vars_since: i64,
    revision: i64,
) -> anyhow::Result<Figures> {
    let output = Command::new(this_program()?)
        .arg("--load")
        .args([
            addr.to_owned(),
            phase.to_owned(),
            seconds.to_string(),
            connections.to_string(),
            devices.to_string(),
            vars_since.to_string(),
            revision.to_string(),
        ])
        .stderr(Stdio::inherit())
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .ok_or_else(|| anyhow::anyhow!("the load generator failed: {text}"))?;
    let v: Vec<f64> = line
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(f64::NAN))
        .collect();
    Ok(Figures {
        rps: v[0],
        p50_ms: v[1],
        p99_ms: v[2],
        errors: v[3] as u64,
    })
}

// ---------------------------------------------------------------------------
// Server process

fn vm_hwm_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn serve(target: &str) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        // The shutdown signal: the parent closes our stdin.
        let shutdown = async {
            let _ = tokio::task::spawn_blocking(|| {
                let mut sink = String::new();
                let _ = std::io::stdin().read_line(&mut sink);
            })
            .await;
        };
        let blobs = tempfile::tempdir()?;
        if target == "bare" {
            let app =
                axum::Router::new().route("/api/v1/agent/poll", axum::routing::post(bare_poll));
            println!("READY {addr}");
            std::io::stdout().flush()?;
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await?;
        } else {
            let store = Store::connect(target, &posup_store::StoreOptions::default()).await?;
            let state = posup_server::AppState::new(
                store,
                posup_server::Blobs::open(blobs.path())?,
                posup_runtime::Runtime::new(Default::default())?,
                Arc::new(posup_server::SystemClock),
                posup_server::Settings {
                    contact_flush: Some(Duration::from_secs(1)),
                    ..Default::default()
                },
            );
            println!("READY {addr}");
            std::io::stdout().flush()?;
            posup_server::run_with_state(state, listener, shutdown).await?;
        }
        println!("HWM {}", vm_hwm_kb());
        anyhow::Ok(())
    })
}

/// The peer: reads the body and answers a poll answer of the usual size, touching
/// nothing.
async fn bare_poll(_body: axum::body::Bytes) -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        r#"{"actions":[],"variables":{"changes":[],"last_id":3,"more":false},"config":null,"poll_interval_secs":60}"#,
    )
}

// ---------------------------------------------------------------------------
// Load generator process

fn poll_body(vars_since: i64, revision: i64) -> String {
    let inventory = Inventory {
        product: "UKM 5".into(),
        version: "1.8.4".into(),
        modules: (0..10)
            .map(|i| ModuleVersion {
                name: format!("module-{i}"),
                version: format!("3.{i}.17"),
            })
            .collect(),
        loaded_package: None,
        state: "sale".into(),
        pending_sync: 0,
        ready: true,
        reboot_required: false,
        details: vec![
            ("printer".into(), "ATOL 30F".into()),
            ("environment".into(), "12".into()),
        ],
    };
    serde_json::to_string(&PollRequest {
        inventory: Some(inventory),
        inventory_error: None,
        status: AgentStatus {
            agent_version: "0.1.0".into(),
            ..Default::default()
        },
        vars_since,
        config_revision: Some(revision),
    })
    .expect("serializing a poll")
}

fn load(args: &[String]) -> anyhow::Result<()> {
    let addr: std::net::SocketAddr = args[0].parse()?;
    let phase = args[1].clone();
    let seconds: u64 = args[2].parse()?;
    let connections: usize = args[3].parse()?;
    let devices: u64 = args[4].parse()?;
    let body = Arc::new(poll_body(args[5].parse()?, args[6].parse()?));
    // One thread: the generator should take as little CPU from the server as it can.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let run = |deadline: Option<Instant>| {
            let mut tasks = Vec::new();
            for c in 0..connections {
                let body = body.clone();
                let next = next.clone();
                let first = phase == "first";
                tasks.push(tokio::spawn(async move {
                    let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (c as u64 + 1);
                    let pick = move || {
                        if first {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            (i < devices).then_some(i)
                        } else {
                            seed ^= seed << 13;
                            seed ^= seed >> 7;
                            seed ^= seed << 17;
                            Some(seed % devices)
                        }
                    };
                    connection(addr, &body, pick, deadline).await
                }));
            }
            tasks
        };
        if phase != "first" {
            for t in run(Some(Instant::now() + WARMUP)) {
                t.await??;
            }
        }
        let started = Instant::now();
        let deadline = (phase != "first").then(|| started + Duration::from_secs(seconds));
        let mut latencies = Vec::new();
        let mut errors = 0u64;
        for t in run(deadline) {
            let (l, e) = t.await??;
            latencies.extend(l);
            errors += e;
        }
        let elapsed = started.elapsed().as_secs_f64();
        latencies.sort_unstable();
        let pct = |p: f64| {
            latencies
                .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0) as f64
                / 1000.0
        };
        println!(
            "RESULT {:.1} {:.3} {:.3} {errors}",
            latencies.len() as f64 / elapsed,
            pct(0.50),
            pct(0.99)
        );
        anyhow::Ok(())
    })
}

/// One keep-alive connection: polls as device `pick()` until the deadline (or
/// until `pick` runs out). Returns latencies in microseconds and the error count.
async fn connection(
    addr: std::net::SocketAddr,
    body: &str,
    mut pick: impl FnMut() -> Option<u64>,
    deadline: Option<Instant>,
) -> anyhow::Result<(Vec<u32>, u64)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut latencies = Vec::with_capacity(100_000);
    let mut errors = 0;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut request = Vec::with_capacity(body.len() + 256);
    while deadline.is_none_or(|d| Instant::now() < d) {
        let Some(device) = pick() else { break };
        request.clear();
        write!(
            request,
            "POST /api/v1/agent/poll HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer pdt_bench_{device}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let sent = Instant::now();
        stream.write_all(&request).await?;
        let ok = read_response(&mut stream, &mut buf).await?;
        latencies.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        if !ok {
            errors += 1;
        }
    }
    Ok((latencies, errors))
}

/// Reads one response; true when its status is 200.
async fn read_response(
    stream: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
) -> anyhow::Result<bool> {
    buf.clear();
    let mut chunk = [0u8; 8192];
    let header_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "the server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..header_end])?;
    let ok = head.starts_with("HTTP/1.1 200");
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .ok_or_else(|| anyhow::anyhow!("a response without Content-Length: {head}"))?;
    while buf.len() < header_end + length {
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "the server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(ok)
}
