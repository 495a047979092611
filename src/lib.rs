//! edgesync: state sync for edge fleets.
//!
//! This crate is the shell around [`edgesync_proto`], the sans-IO core: the RocksDB store
//! ([`store`]) and the durable node runtime for embedding ([`node`]). The QUIC transport, the
//! HTTP API and the CLI come next.
#![warn(missing_docs)]

pub mod net;
pub mod node;
pub mod store;

pub use edgesync_proto as proto;
