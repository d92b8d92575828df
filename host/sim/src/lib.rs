//! Simulated point-of-sale products for tests and the demo.
//!
//! Each product is its own module: it lays out an installed tree that looks like
//! the real product's (`init_*`), builds update packages in the vendor's format
//! (`*_package`), and runs as a real process (`run_*`) that writes the log lines
//! the real product writes, so plugins are tested against the files, logs and
//! states they meet on a terminal. A test steers a running product through a
//! control file, standing in for the customer or cashier at the terminal.
//!
//! Products: [`kiosk`] (iiko self-service kiosk). The `posup sim-product` command
//! mounts [`SimProductArgs`]; `posup-sim` is the same entry point on its own.

pub mod kiosk;
pub mod product_log;

use std::io;

pub use kiosk::{init_kiosk, kiosk_package, run_kiosk};

/// `sim-product <product> ...`: runs one simulated product in the foreground
/// until SIGTERM or SIGINT.
#[derive(Debug, Clone, clap::Args)]
pub struct SimProductArgs {
    #[command(subcommand)]
    pub product: SimProduct,
}

/// The simulated products.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum SimProduct {
    /// The iiko self-service kiosk.
    Kiosk(kiosk::KioskArgs),
}

impl SimProductArgs {
    /// Runs the product; returns when it was stopped by a signal.
    pub fn run(&self) -> io::Result<()> {
        match &self.product {
            SimProduct::Kiosk(args) => args.run(),
        }
    }
}
