//! posup's end-to-end tests: real components, real processes, fixture terminals
//! that look like the real products. One test binary, one module per area.

mod agent;
mod demo;
mod icecash;
mod iiko;
mod kiosk;
mod openbravo;
mod oscar;
mod sandbox;
mod support;
mod terminal;
mod trust;
mod ukm5;
mod vendor;
