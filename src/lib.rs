//! edgesync: state sync for edge fleets.
//!
//! This crate is the shell around [`edgesync_proto`], the sans-IO core: the RocksDB store
//! ([`store`]), the durable node runtime for embedding ([`node`]), the fleet PKI and the QUIC
//! transport with mutual TLS ([`net`]), peers with reconnection ([`mesh`]), and the daemon with
//! its HTTP API, metrics and demo ([`daemon`]). The `edgesync` binary is the CLI.
#![warn(missing_docs)]

pub mod daemon;
pub mod mesh;
pub mod net;
pub mod node;
pub mod store;

pub use edgesync_proto as proto;
