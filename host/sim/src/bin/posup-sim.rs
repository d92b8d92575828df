//! `posup-sim`: runs one simulated product in the foreground, e.g.
//! `posup-sim kiosk --product DIR --logs DIR`, until SIGTERM or SIGINT. The same
//! arguments as `posup sim-product`.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "posup-sim", about = "Runs a simulated point-of-sale product")]
struct Cli {
    #[command(flatten)]
    args: posup_sim::SimProductArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.args.run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("posup-sim: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
