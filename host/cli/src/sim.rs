//! `posup sim`: many lightweight simulated agents in one process, for load and
//! scale tests of a server.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use posup_fleet::{self as fleet, FleetConfig, FleetStats};

#[derive(Debug, Args)]
pub struct SimArgs {
    /// How many simulated devices.
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// The server's base URL.
    #[arg(long)]
    server: String,
    /// An enrollment secret of that server.
    #[arg(long, env = "POSUP_ENROLLMENT_SECRET")]
    secret: String,
    /// The device type the devices enroll as.
    #[arg(long, default_value = "kiosk")]
    device_type: String,
    /// Registers per simulated store.
    #[arg(long, default_value_t = 20)]
    per_site: u32,
    /// Prefix of GUIDs and store names, so several fleets can share a server.
    #[arg(long, default_value = "sim")]
    prefix: String,
    /// The version the devices start with.
    #[arg(long, default_value = "1.0.0")]
    version: String,
    /// Simulated duration of each update step, in milliseconds.
    #[arg(long, default_value_t = 20)]
    step_ms: u64,
    /// A busy device's reports go together at most this often, in seconds (a
    /// real agent's `[poll] report_every_secs`; 0 sends each step's at once).
    #[arg(long, default_value_t = 1.0)]
    send_reports_every: f64,
    /// Stop after this many seconds; run until Ctrl-C when absent.
    #[arg(long)]
    duration: Option<f64>,
    /// Connections the devices share: at most this many requests under way at
    /// once, as behind a proxy (a real fleet holds one per terminal; a process
    /// has too few file descriptors for that at scale).
    #[arg(long, default_value_t = 4096)]
    connections: usize,
    /// Print the counters every this many seconds.
    #[arg(long, default_value_t = 5.0)]
    report_every: f64,
}

pub async fn run(args: SimArgs) -> anyhow::Result<u8> {
    // The fleet's connections are file descriptors, as they are the server's.
    // The server's warning of a low limit is not the fleet's: it opens at most
    // `--connections`, and a refused one counts as a failed request.
    let _ = posup_server::raise_open_files_limit();
    let mut config = FleetConfig::new(&args.server, &args.secret, args.devices);
    config.device_type = args.device_type;
    config.per_site = args.per_site;
    config.prefix = args.prefix;
    config.version = args.version;
    config.step_time = Duration::from_millis(args.step_ms);
    config.connections = args.connections;
    config.poll.report_every_secs = args.send_reports_every;
    config
        .poll
        .check()
        .map_err(|e| anyhow::anyhow!("--send-reports-every: {e}"))?;
    let stats = Arc::new(FleetStats::default());
    let printer = {
        let stats = Arc::clone(&stats);
        let every = Duration::from_secs_f64(args.report_every.max(0.1));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                println!("{}", stats.line());
            }
        })
    };
    let duration = args.duration;
    let stop = async move {
        match duration {
            Some(secs) => tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs_f64(secs)) => {}
                _ = crate::agent::shutdown_signal() => {}
            },
            None => crate::agent::shutdown_signal().await,
        }
    };
    fleet::run(config, Arc::clone(&stats), stop).await?;
    printer.abort();
    println!("{}", stats.line());
    Ok(0)
}
