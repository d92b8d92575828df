//! Many lightweight simulated agents in one process, for load and scale tests
//! (`posup sim --devices N --server URL`).
//!
//! Each simulated device speaks the real agent protocol with the real client:
//! it enrolls, polls at the server's interval with jitter and backoff, downloads
//! each package it is given (and checks its sha256), and reports every step with
//! idempotency keys, retrying until acknowledged. Only the product is imaginary:
//! the steps take a fixed simulated time instead of running a plugin, nobody is
//! at the register, and the installed version is a number in memory. What the
//! server sees is what a fleet of that size would make it do.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use posup_proto::agent::{
    Action, AgentStatus, DeviceIdentity, EnrollRequest, FeedbackState, PollRequest, Site,
};
use posup_proto::{Inventory, Phase, TaskKind};
use sha2::{Digest, Sha256};

use posup_agent::client::{Client, ClientError, Transport};
use posup_agent::config::{PollConfig, jittered};
use posup_agent::outbox::{Outbox, Report};

/// How the simulated fleet looks and behaves.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub server: String,
    pub enrollment_secret: String,
    pub devices: usize,
    pub device_type: String,
    /// Devices are spread over stores of this many registers each, numbered 1…
    pub per_site: u32,
    /// Prefix of GUIDs and store names, so several fleets can share a server.
    pub prefix: String,
    /// The version each device starts with.
    pub version: String,
    /// Simulated duration of each update step.
    pub step_time: Duration,
    /// Enrollments under way at once when the fleet starts.
    pub enroll_concurrency: usize,
    /// Connections the devices share: at most this many requests are under way
    /// at once, and the others wait their turn, as behind a proxy holding that
    /// many connections to the server. Real terminals hold one each; one process
    /// cannot hold 100 000, and a server behind a proxy sees the proxy's few
    /// anyway.
    pub connections: usize,
    pub poll: PollConfig,
}

impl FleetConfig {
    pub fn new(server: &str, secret: &str, devices: usize) -> Self {
        Self {
            server: server.to_owned(),
            enrollment_secret: secret.to_owned(),
            devices,
            device_type: "kiosk".into(),
            per_site: 20,
            prefix: "sim".into(),
            version: "1.0.0".into(),
            step_time: Duration::from_millis(20),
            enroll_concurrency: 32,
            connections: 4096,
            poll: PollConfig::default(),
        }
    }
}

/// Counters of a running fleet.
#[derive(Debug, Default)]
pub struct FleetStats {
    pub enrolled: AtomicU64,
    pub polls: AtomicU64,
    pub poll_errors: AtomicU64,
    /// Polls that repeated the device's last inventory and were handed no
    /// action: the fleet idling, whatever else it does meanwhile.
    pub idle_polls: AtomicU64,
    pub reports: AtomicU64,
    /// Requests that carried reports.
    pub report_calls: AtomicU64,
    pub downloads: AtomicU64,
    pub bytes: AtomicU64,
    /// Actions finished (committed, staged or failed).
    pub done: AtomicU64,
    /// How long answered polls took.
    pub latency: Latency,
}

impl FleetStats {
    /// The counters on one line; the latency histogram last, as its cumulative
    /// bucket counts (`latency <count>,<count>,…`, see [`Latency::bound`]), so a
    /// reader can take the percentiles of any interval.
    pub fn line(&self) -> String {
        format!(
            "enrolled {} · polls {} (failed {}) · idle polls {} · reports {} in {} calls · downloads {} ({} bytes) · actions done {} · p99 poll {:.1} ms · latency {}",
            self.enrolled.load(Ordering::Relaxed),
            self.polls.load(Ordering::Relaxed),
            self.poll_errors.load(Ordering::Relaxed),
            self.idle_polls.load(Ordering::Relaxed),
            self.reports.load(Ordering::Relaxed),
            self.report_calls.load(Ordering::Relaxed),
            self.downloads.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
            self.done.load(Ordering::Relaxed),
            Latency::percentile(&self.latency.counts(), 0.99).as_secs_f64() * 1000.0,
            self.latency
                .counts()
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(","),
        )
    }
}

/// A histogram of durations in fixed buckets that grow by a quarter each, from
/// 50 µs to about a minute: constant memory and lock-free however many polls it
/// counts, within 25 % of the true value.
#[derive(Debug)]
pub struct Latency {
    buckets: [AtomicU64; Latency::BUCKETS],
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Latency {
    pub const BUCKETS: usize = 64;

    /// The upper bound of bucket `i`; the last one also holds everything longer.
    pub fn bound(i: usize) -> Duration {
        Duration::from_secs_f64(50e-6 * 1.25f64.powi(i as i32))
    }

    pub fn record(&self, d: Duration) {
        let i = (0..Self::BUCKETS - 1)
            .find(|&i| d <= Self::bound(i))
            .unwrap_or(Self::BUCKETS - 1);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn counts(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }

    /// The `q` quantile (0…1) of bucket counts: the bound of the bucket it falls
    /// in; zero when nothing was counted.
    pub fn percentile(counts: &[u64], q: f64) -> Duration {
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return Duration::ZERO;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::bound(i);
            }
        }
        Self::bound(counts.len().saturating_sub(1))
    }
}

/// Runs the fleet until `shutdown` completes.
pub async fn run(
    config: FleetConfig,
    stats: Arc<FleetStats>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ClientError> {
    // The fleet simulates terminals against a test or benchmark server, which
    // may be plain HTTP on loopback.
    let transport = Transport {
        insecure_http: config.server.starts_with("http://"),
        ca_file: None,
    };
    let base = Arc::new(Client::pooled(
        &config.server,
        &transport,
        config.connections.max(1),
    )?);
    let config = Arc::new(config);
    let gate = Arc::new(tokio::sync::Semaphore::new(
        config.enroll_concurrency.max(1),
    ));
    // Without a bound, a slow server makes the pool open a connection for every
    // request waiting, until both processes run out of file descriptors.
    let wire = Arc::new(tokio::sync::Semaphore::new(config.connections.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..config.devices {
        let device = SimDevice::new(&config, i, base.sharing(), Arc::clone(&wire));
        let config = Arc::clone(&config);
        let stats = Arc::clone(&stats);
        let gate = Arc::clone(&gate);
        tasks.spawn(async move { device.run(&config, &stats, &gate).await });
    }
    shutdown.await;
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

struct SimDevice {
    identity: DeviceIdentity,
    client: Client,
    /// The fleet's shared connections: a permit for each request under way.
    wire: Arc<tokio::sync::Semaphore>,
    outbox: Outbox,
    device_id: i64,
    version: String,
    /// The version the last answered poll reported.
    polled_version: Option<String>,
    config_revision: Option<i64>,
    vars_since: i64,
    /// (action id, attempt) finished here.
    done: Vec<(i64, u32)>,
    /// Packages fetched and checked, by sha256.
    have: Vec<String>,
}

impl SimDevice {
    fn new(
        config: &FleetConfig,
        index: usize,
        client: Client,
        wire: Arc<tokio::sync::Semaphore>,
    ) -> Self {
        let per_site = config.per_site.max(1) as usize;
        let site = index / per_site + 1;
        let number = (index % per_site + 1) as u32;
        Self {
            identity: DeviceIdentity {
                guid: format!("{}-{index:06}", config.prefix),
                site: Site {
                    name: format!("{} store {site:04}", config.prefix),
                    address: String::new(),
                },
                name: format!("Register {number}"),
                number,
                device_type: config.device_type.clone(),
                agent_version: posup_agent::agent::AGENT_VERSION.into(),
            },
            client,
            wire,
            outbox: Outbox::memory().sending_every(config.poll.report_every()),
            device_id: 0,
            version: config.version.clone(),
            polled_version: None,
            config_revision: None,
            vars_since: 0,
            done: Vec::new(),
            have: Vec::new(),
        }
    }

    async fn run(
        mut self,
        config: &FleetConfig,
        stats: &FleetStats,
        gate: &tokio::sync::Semaphore,
    ) {
        let mut failures = 0u32;
        {
            let _permit = gate.acquire().await;
            loop {
                let req = EnrollRequest {
                    secret: config.enrollment_secret.clone(),
                    device: self.identity.clone(),
                };
                let enrolled = {
                    let _wire = self.wire.acquire().await;
                    self.client.enroll(&req).await
                };
                match enrolled {
                    Ok(resp) => {
                        self.client.set_token(Some(resp.token));
                        self.device_id = resp.device_id;
                        stats.enrolled.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::debug!("{}: {e}", self.identity.guid);
                        tokio::time::sleep(config.poll.backoff(failures)).await;
                    }
                }
            }
        }
        // Enrolled devices start their poll loops spread over a second, as a real
        // fleet's would be.
        tokio::time::sleep(jittered(0.5, 1.0)).await;
        failures = 0;
        loop {
            let wait = match self.cycle(config, stats).await {
                Ok(wait) => {
                    failures = 0;
                    wait
                }
                Err(e) => {
                    failures += 1;
                    stats.poll_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("{}: {e}", self.identity.guid);
                    config.poll.backoff(failures)
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    async fn cycle(
        &mut self,
        config: &FleetConfig,
        stats: &FleetStats,
    ) -> Result<Duration, ClientError> {
        self.flush(stats).await?;
        let req = PollRequest {
            inventory: Some(Inventory {
                product: "simulated product".into(),
                version: self.version.clone(),
                state: "IDLE".into(),
                ready: true,
                ..Inventory::default()
            }),
            inventory_error: None,
            status: AgentStatus {
                agent_version: posup_agent::agent::AGENT_VERSION.into(),
                ..AgentStatus::default()
            },
            vars_since: self.vars_since,
            config_revision: self.config_revision,
        };
        // Latency as the terminal sees it: its turn for a connection included.
        let asked = std::time::Instant::now();
        let resp = {
            let _wire = self.wire.acquire().await;
            self.client.poll(&req).await?
        };
        stats.latency.record(asked.elapsed());
        let repeated = self.polled_version.as_ref() == Some(&self.version);
        if repeated && resp.actions.is_empty() {
            stats.idle_polls.fetch_add(1, Ordering::Relaxed);
        }
        self.polled_version = Some(self.version.clone());
        if let Some(c) = &resp.config {
            self.config_revision = Some(c.revision);
        }
        self.vars_since = resp.variables.last_id;
        stats.polls.fetch_add(1, Ordering::Relaxed);
        let now = Utc::now();
        let due = resp
            .actions
            .iter()
            .find(|a| a.not_before <= now && !self.done.contains(&(a.action_id, a.attempt)))
            .cloned();
        if let Some(action) = due {
            self.work(&action, config, stats).await;
            // Look for the next action at once, as the real agent does; its last
            // reports go when due (a real agent's sender sends them beside that
            // poll, this device just before it).
            return Ok(self.outbox.due_in().max(Duration::from_millis(10)));
        }
        Ok(config
            .poll
            .next_poll(Duration::from_secs(resp.poll_interval_secs.max(1).into())))
    }

    async fn flush(&self, stats: &FleetStats) -> Result<(), ClientError> {
        if self.outbox.is_empty() {
            return Ok(());
        }
        let sent = {
            let _wire = self.wire.acquire().await;
            self.outbox.flush(&self.client).await?
        };
        stats.reports.fetch_add(sent.sent as u64, Ordering::Relaxed);
        stats
            .report_calls
            .fetch_add(sent.calls as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Sends what is queued at a step boundary when it is due, as a real agent's
    /// sender does (`Outbox::send_when_due`); what waits or fails goes with a
    /// later send.
    async fn send(&self, stats: &FleetStats) {
        if !self.outbox.due_in().is_zero() {
            return;
        }
        if let Err(e) = self.flush(stats).await {
            tracing::debug!("{}: reports wait: {e}", self.identity.guid);
        }
    }

    fn report(&self, action: &Action, step: Phase, state: FeedbackState, message: Option<String>) {
        let report = Report {
            task_id: action.task_id,
            action_id: action.action_id,
            attempt: action.attempt,
            step,
            state,
            message,
            percent: None,
            retry_after: None,
        };
        self.outbox
            .push(self.device_id, report)
            .expect("a memory outbox cannot fail");
    }

    async fn work(&mut self, action: &Action, config: &FleetConfig, stats: &FleetStats) {
        let pkg = &action.package;
        if !self.have.contains(&pkg.sha256) {
            self.report(action, Phase::Download, FeedbackState::Started, None);
            self.send(stats).await;
            match self.download(&pkg.url, &pkg.sha256, stats).await {
                Ok(()) => {
                    self.have.push(pkg.sha256.clone());
                    self.report(
                        action,
                        Phase::Download,
                        FeedbackState::Ok,
                        Some("sha256 verified".into()),
                    );
                }
                Err(e) => {
                    // A broken transfer is tried again on the next poll; a wrong
                    // checksum fails the action, as on a real terminal.
                    if e.contains("sha256") {
                        self.report(action, Phase::Download, FeedbackState::Failed, Some(e));
                        self.finish(action, stats);
                    }
                    return;
                }
            }
        }
        let steps: &[Phase] = match action.kind {
            TaskKind::Download => &[Phase::Stage],
            TaskKind::Update | TaskKind::ForcedUpdate => &[
                Phase::Precheck,
                Phase::Stage,
                Phase::Apply,
                Phase::Verify,
                Phase::Commit,
            ],
        };
        for &step in steps {
            self.report(action, step, FeedbackState::Started, None);
            self.send(stats).await;
            tokio::time::sleep(config.step_time).await;
            self.report(action, step, FeedbackState::Ok, None);
        }
        let message = if action.kind == TaskKind::Download {
            format!("{} staged", pkg.file_name)
        } else {
            self.version = pkg.version.clone();
            format!("version {} installed", pkg.version)
        };
        let last = steps.last().copied().unwrap_or(Phase::Commit);
        self.report(action, last, FeedbackState::Committed, Some(message));
        self.finish(action, stats);
    }

    fn finish(&mut self, action: &Action, stats: &FleetStats) {
        self.done.push((action.action_id, action.attempt));
        stats.done.fetch_add(1, Ordering::Relaxed);
    }

    async fn download(&self, url: &str, sha256: &str, stats: &FleetStats) -> Result<(), String> {
        let _wire = self.wire.acquire().await;
        let resp = self
            .client
            .get_blob(url, 0, None)
            .await
            .map_err(|e| e.to_string())?;
        let mut hash = Sha256::new();
        let mut stream = resp.bytes_stream();
        let mut bytes = 0u64;
        // As a real agent, a transfer whose bytes stop coming is broken off and
        // tried again on a later poll, not waited for.
        let stall = self.client.stall_timeout();
        loop {
            let chunk = match tokio::time::timeout(stall, stream.next()).await {
                Ok(Some(chunk)) => chunk.map_err(|e| e.to_string())?,
                Ok(None) => break,
                Err(_) => return Err(format!("nothing arrived for {} s", stall.as_secs_f64())),
            };
            bytes += chunk.len() as u64;
            hash.update(&chunk);
        }
        stats.downloads.fetch_add(1, Ordering::Relaxed);
        stats.bytes.fetch_add(bytes, Ordering::Relaxed);
        let got = hex::encode(hash.finalize());
        if got != sha256 {
            return Err(format!(
                "the package has sha256 {got}, the server announced {sha256}"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use posup_proto::AGENT_PREFIX;
    use posup_proto::agent::{EnrollResponse, PollResponse};

    /// The fleet stands for terminals behind a proxy with `connections`
    /// connections: more requests under way would open more connections than
    /// that, as many as requests wait on a slow server.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_requests_are_under_way_than_the_shared_connections() {
        #[derive(Default)]
        struct Counts {
            under_way: AtomicU64,
            most: AtomicU64,
            polls: AtomicU64,
            enrolled: AtomicU64,
        }
        async fn slowly(counts: &Counts) {
            let now = counts.under_way.fetch_add(1, Ordering::SeqCst) + 1;
            counts.most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            counts.under_way.fetch_sub(1, Ordering::SeqCst);
        }
        let counts = Arc::new(Counts::default());
        let (c1, c2) = (Arc::clone(&counts), Arc::clone(&counts));
        let app = axum::Router::new()
            .route(
                &format!("{AGENT_PREFIX}/enroll"),
                axum::routing::post(move || async move {
                    slowly(&c1).await;
                    let n = c1.enrolled.fetch_add(1, Ordering::SeqCst) as i64 + 1;
                    axum::Json(EnrollResponse {
                        device_id: n,
                        token: format!("token-{n}"),
                        poll_interval_secs: 1,
                    })
                }),
            )
            .route(
                &format!("{AGENT_PREFIX}/poll"),
                axum::routing::post(move || async move {
                    slowly(&c2).await;
                    c2.polls.fetch_add(1, Ordering::SeqCst);
                    axum::Json(PollResponse {
                        actions: Vec::new(),
                        variables: Default::default(),
                        config: None,
                        poll_interval_secs: 1,
                    })
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let mut config = FleetConfig::new(&format!("http://{addr}"), "secret", 24);
        config.connections = 3;
        let stats = Arc::new(FleetStats::default());
        run(
            config,
            Arc::clone(&stats),
            tokio::time::sleep(Duration::from_millis(3500)),
        )
        .await
        .unwrap();
        server.abort();
        assert_eq!(counts.enrolled.load(Ordering::SeqCst), 24);
        let polls = stats.polls.load(Ordering::SeqCst);
        assert!(polls > 24, "every device polled, some more than once");
        // A device's first poll tells the server its inventory; every later
        // one repeats it and is handed nothing.
        assert_eq!(stats.idle_polls.load(Ordering::SeqCst), polls - 24);
        assert_eq!(
            counts.most.load(Ordering::SeqCst),
            3,
            "requests under way at once"
        );
    }

    #[test]
    fn latency_percentiles_come_from_the_buckets() {
        let l = Latency::default();
        assert_eq!(Latency::percentile(&l.counts(), 0.99), Duration::ZERO);
        for _ in 0..98 {
            l.record(Duration::from_micros(100));
        }
        l.record(Duration::from_millis(20));
        l.record(Duration::from_secs(3600));
        let counts = l.counts();
        let p50 = Latency::percentile(&counts, 0.5);
        assert!(
            p50 >= Duration::from_micros(100) && p50 < Duration::from_micros(125),
            "{p50:?}"
        );
        let p99 = Latency::percentile(&counts, 0.99);
        assert!(
            p99 >= Duration::from_millis(20) && p99 < Duration::from_millis(25),
            "{p99:?}"
        );
        // Longer than the last bound: counted in the last bucket.
        assert_eq!(
            Latency::percentile(&counts, 1.0),
            Latency::bound(Latency::BUCKETS - 1)
        );
    }
}
