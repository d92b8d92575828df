//! `posup agent`: the terminal's agent, long-lived or for one poll cycle.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use posup_agent::{Agent, AgentConfig};

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The agent's configuration file (TOML): server, enrollment secret, state
    /// directory, identity, and per device type where the product lives.
    #[arg(
        long,
        short,
        env = "POSUP_AGENT_CONFIG",
        default_value = "/etc/posup/agent.toml"
    )]
    config: PathBuf,
    /// Poll once, run what is due to its end, send the reports, and exit.
    #[arg(long)]
    once: bool,
}

pub async fn run(args: AgentArgs) -> anyhow::Result<u8> {
    let config = AgentConfig::load(&args.config)?;
    let runtime = posup_agent::agent::runtime_for(&config.state_dir).with_context(|| {
        format!(
            "setting up the plugin runtime in {}",
            config.state_dir.display()
        )
    })?;
    let agent = Agent::new(config, runtime)?;
    // Compiling a plugin in a child process keeps the compiler's tens of megabytes
    // out of an agent that then idles for weeks.
    match std::env::current_exe() {
        Ok(exe) => agent.compile_with(exe),
        Err(e) => {
            tracing::warn!("this binary's path is unknown ({e}): plugins compile in the agent")
        }
    }
    if args.once {
        agent.once().await.context("one poll cycle")?;
        return Ok(0);
    }
    agent.run(shutdown_signal()).await;
    Ok(0)
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the agent runs until it is killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
