//! posup-server.
