//! posup's end-to-end tests: real components, real processes, fixture terminals
//! that look like the real products. One test binary, one module per area.

mod kiosk;
mod sandbox;
mod support;
