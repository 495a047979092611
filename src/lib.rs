//! edgesync: state sync for edge fleets.
//!
//! This crate is the shell around [`edgesync_proto`], the sans-IO core: it will hold the
//! RocksDB store, the QUIC transport with mutual TLS, the node runtime, the HTTP API and the
//! CLI. Today it re-exports the core.
#![warn(missing_docs)]

pub use edgesync_proto as proto;
