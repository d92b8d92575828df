//! `posup`: one binary for the update server, the terminal agent, local updates,
//! plugin and package tools, the demo and the simulated products.

mod agent;
mod apply;
mod demo;
mod plugin_test;
mod plugins;
mod scaffold;
mod sim;
mod trust;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "posup",
    version,
    about = "Update engine for point-of-sale fleets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the update server: fleet registry, packages, plugins, tasks, console.
    Server(posup_server::ServerArgs),
    /// Apply a package to a local installation through a plugin, without a server.
    Apply(apply::ApplyArgs),
    /// Work with plugins: create, test, inspect, sign and publish them.
    #[command(subcommand)]
    Plugin(plugins::PluginCommand),
    /// Work with packages: read one through its plugin, build the samples.
    #[command(subcommand)]
    Package(plugins::PackageCommand),
    /// Run a simulated point-of-sale product in the foreground (tests, demo).
    SimProduct(posup_sim::SimProductArgs),
    /// Make signing keys.
    #[command(subcommand)]
    Keys(trust::KeysCommand),
    /// Edit and publish the fleet's TUF repository: init, delegate, rotate, publish.
    #[command(subcommand)]
    Repo(trust::RepoCommand),
    /// Run the terminal agent: poll the server, download and apply updates.
    Agent(agent::AgentArgs),
    /// Run a store fleet update end to end on this machine: server, terminals, rollout.
    Demo(demo::DemoArgs),
    /// Run many lightweight simulated agents against a server (load tests).
    Sim(sim::SimArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing();
    // A simulated product is a plain foreground process of its own.
    if let Command::SimProduct(args) = &cli.command {
        return match args.run() {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("posup sim-product: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the async runtime");
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Apply(args) => apply::run(args).await,
            Command::Plugin(cmd) => plugins::plugin(cmd).await,
            Command::Package(cmd) => plugins::package(cmd).await,
            Command::Server(args) => {
                posup_server::serve(args, posup_server::Bundled(posup_bundled::PLUGINS))
                    .await
                    .map(|()| 0)
            }
            Command::Agent(args) => agent::run(args).await,
            Command::Keys(cmd) => trust::keys(cmd).await,
            Command::Repo(cmd) => trust::repo(cmd).await,
            Command::Sim(args) => sim::run(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::SimProduct(_) => unreachable!("handled before the async runtime starts"),
        }
    });
    match code {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("posup: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Logs go to stderr; `POSUP_LOG` (or `RUST_LOG`) sets the filter, warnings by default.
fn init_tracing() {
    let filter = std::env::var("POSUP_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
}
