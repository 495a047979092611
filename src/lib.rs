//! edgesync: state sync for edge fleets.
//!
//! This crate is the shell around [`edgesync_proto`], the sans-IO core: the RocksDB store
//! ([`store`]), the durable node runtime for embedding ([`node`]), the fleet PKI and the QUIC
//! transport with mutual TLS ([`net`]), peers with reconnection ([`mesh`]), and the daemon with
//! its HTTP API, metrics and demo ([`daemon`]). The `edgesync` binary is the CLI.
#![warn(missing_docs)]

pub mod backup;
pub mod daemon;
pub mod mesh;
pub mod net;
pub mod node;
pub mod os;
pub mod relay;
pub mod sinks;
pub mod store;

pub use edgesync_proto as proto;

/// An error and its sources as one line, `outer: inner: ...`: for HTTP bodies and messages
/// that must carry the whole cause.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        // `#[error(transparent)]` wrappers repeat their source's text.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
