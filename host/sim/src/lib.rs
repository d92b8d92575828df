//! Simulated point-of-sale products for tests and the demo.
//!
//! Each product is its own module: it lays out an installed tree that looks like
//! the real product's (`init_*`), builds update packages in the vendor's format
//! (`*_package`), and runs as a real process (`run_*`) that writes the log lines
//! the real product writes, so plugins are tested against the files, logs and
//! states they meet on a terminal. A test steers a running product through a
//! control file, standing in for the customer or cashier at the terminal.
//!
//! Products: [`kiosk`] (iiko self-service kiosk), [`iiko`] (iiko BackOffice and
//! iikoFront with the kiosk vendor's plugins), [`icecash`] (IceCash register:
//! `dIceCash` and `DTPrint`), [`openbravo`] (Openbravo store server), [`ukm5`] (UKM 5 cash register),
//! [`oscar`] (MICROS Retail OSCAR POS server). The `posup sim-product` command
//! mounts [`SimProductArgs`]; `posup-sim` is the same entry point on its own.

pub mod hostile;
pub mod icecash;
pub mod iiko;
pub mod kiosk;
pub mod openbravo;
pub mod oscar;
pub mod package;
mod process;
pub mod product_log;
#[cfg(test)]
mod testing;
pub mod ukm5;

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
    /// iikoOffice (iiko BackOffice) with the kiosk vendor's plugin.
    IikoBackoffice(iiko::BackOfficeArgs),
    /// iikoFront with the kiosk vendor's plugin.
    IikoFront(iiko::FrontArgs),
    /// IceCash's register service `dIceCash`.
    #[command(name = "dicecash")]
    DIceCash(icecash::DIceCashArgs),
    /// IceCash's printer service `DTPrint`.
    #[command(name = "dtprint")]
    DtPrint(icecash::DtPrintArgs),
    /// An Openbravo store server.
    Openbravo(openbravo::OpenbravoArgs),
    /// A UKM 5 cash register.
    Ukm5(ukm5::Ukm5Args),
    /// A MICROS Retail OSCAR POS server.
    Oscar(oscar::OscarArgs),
}

impl SimProductArgs {
    /// Runs the product; returns when it was stopped by a signal.
    pub fn run(&self) -> io::Result<()> {
        match &self.product {
            SimProduct::Kiosk(args) => args.run(),
            SimProduct::IikoBackoffice(args) => args.run(),
            SimProduct::IikoFront(args) => args.run(),
            SimProduct::DIceCash(args) => args.run(),
            SimProduct::DtPrint(args) => args.run(),
            SimProduct::Openbravo(args) => args.run(),
            SimProduct::Ukm5(args) => args.run(),
            SimProduct::Oscar(args) => args.run(),
        }
    }
}
