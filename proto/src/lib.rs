//! edgesync's sans-IO core: vector clocks, document ids, the Automerge replica of a document
//! set, the wire protocol and the sync session state machine.
//!
//! Nothing here performs I/O, reads a clock or draws randomness: time comes in as `now_ms`
//! arguments, randomness as [`Boot`], storage through the [`Store`] trait, and bytes to and from
//! peers through [`Node::handle_input`] and [`Node::poll_transmit`]. The `edgesync` crate drives
//! it with tokio, QUIC and RocksDB; the `edgesync-sim` crate drives the very same code under
//! simulated faults.
//!
//! # Call protocol
//!
//! A shell owns one [`Node`] per process and calls, in any interleaving:
//!
//! - Local writes: [`Node::ingest`] and [`Node::patch`]. They commit to the store at once and
//!   return `durable_at`: answer the client only once [`Node::durable_seq`] has reached it.
//! - Durability: after the store has made commits durable (an fsync returned), call
//!   [`Node::handle_durable`] with [`Node::commit_seq`] as it was before that sync began.
//! - Peers: [`Node::connect`] when a transport to an authenticated peer is up (either side may
//!   have dialled); [`Node::handle_input`] with received bytes; [`Node::poll_transmit`] until
//!   `None` after every call, sending each frame; [`Node::disconnect`] when the transport drops.
//! - Time: [`Node::handle_timeout`] when [`Node::poll_timeout`] says.
//! - Events: [`Node::poll_event`] until `None` after every call.
//!
//! Frames leave only once every commit they describe is durable, so nothing is advertised or
//! acknowledged before it is persisted.
//!
//! # Example: two replicas synchronised by hand
//!
//! Each node needs a fleet identity to sync ([`Config::trust`]: who it is, how it signs, whom
//! it believes; see [`trust`]). The shell makes it from certificates; this example uses the
//! shared-secret fleet of the `testing` feature.
//!
//! ```
//! # #[cfg(feature = "testing")] fn main() {
//! use edgesync_proto::trust::keyed::Fleet;
//! use edgesync_proto::{Boot, Config, DocId, Identity, MemStore, Node, NodeName, Reading, Role, Rules, SessionId};
//! use serde_json::json;
//!
//! let fleet = Fleet::new([7; 32]);
//! let gw_id = Identity::new(NodeName::new("gw-1").unwrap(), Role::Gateway, Some("site-a"));
//! let cloud_id = Identity::new(NodeName::new("cloud").unwrap(), Role::Cloud, None);
//! let boot = |n: u8| Boot { nonce: [n; 16], new_store_id: [n; 16] };
//! let open = |id: &Identity, n: u8| {
//!     let mut cfg = Config::new(id.name.clone());
//!     cfg.trust = fleet.trust(id.clone(), Rules::default());
//!     Node::open(MemStore::new(), cfg, boot(n)).unwrap()
//! };
//! let (mut gw, mut cloud) = (open(&gw_id, 1), open(&cloud_id, 2));
//! let doc = DocId::new("site-a/sensor-1").unwrap();
//!
//! // Ingest while offline; acknowledge once durable.
//! let r = Reading::from_json("r-1", 1_700_000_000_000, &json!({"temp": 22.4})).unwrap();
//! let ingested = gw.ingest(&doc, &[r], 1_700_000_000_000).unwrap();
//! let synced = gw.store_mut().sync();
//! assert_eq!(synced, gw.commit_seq());
//! gw.handle_durable(gw.commit_seq());
//! assert!(gw.durable_seq() >= ingested.durable_at);
//! // The reading is journaled; the node folds it into an Automerge change when due (its
//! // timer: `poll_timeout`, `handle_timeout`) or before a read. Peers get it once folded.
//! let due = gw.poll_timeout().unwrap();
//! gw.handle_timeout(due);
//! assert_eq!(gw.journal_len(), 0);
//!
//! // Connect (the transport authenticated each side) and pump frames until both are idle.
//! let a = gw.connect(cloud_id.clone(), 0);
//! let b = cloud.connect(gw_id.clone(), 0);
//! fn flush(from: &mut Node<MemStore>, out: SessionId, to: &mut Node<MemStore>, inp: SessionId) -> bool {
//!     from.store_mut().sync();
//!     from.handle_durable(from.commit_seq());
//!     let mut moved = false;
//!     while let Some(frame) = from.poll_transmit(out) {
//!         to.handle_input(inp, &frame, 0);
//!         moved = true;
//!     }
//!     moved
//! }
//! while flush(&mut gw, a, &mut cloud, b) | flush(&mut cloud, b, &mut gw, a) {}
//! // The stream is kept as one document per hour of reading time: compare that bucket.
//! let bucket = &ingested.docs[0];
//! assert!(bucket.as_str().starts_with("site-a/sensor-1/_b."));
//! assert!(gw.heads(bucket).unwrap().is_some());
//! assert_eq!(gw.heads(bucket).unwrap(), cloud.heads(bucket).unwrap());
//! let view = cloud.sensor_view(&doc).unwrap().unwrap();
//! assert_eq!(view.latest().unwrap().id, "r-1");
//! assert_eq!(gw.peer_unacked(&NodeName::new("cloud").unwrap()), 0, "the cloud acknowledged all");
//! # }
//! # #[cfg(not(feature = "testing"))] fn main() {}
//! ```
#![warn(missing_docs)]

pub mod authz;
pub mod chunk;
#[cfg(any(test, feature = "testing"))]
pub mod conformance;
pub mod dialer;
pub mod doc;
#[cfg(feature = "testing")]
pub mod fuzzing;
pub mod id;
mod node;
pub mod reading;
pub mod schema;
pub mod snapshot;
pub mod store;
pub mod stream;
mod sync;
pub mod trust;
pub mod vclock;
pub mod wire;

pub use authz::{Identity, Role, Rules};
pub use dialer::{keep_new_link, Dialer, DialerStatus, RetryPolicy};
pub use doc::{DocKind, IngestOutcome, PatchError, SensorView, ViewError};
pub use id::{DocId, NameError, NodeName};
#[cfg(feature = "testing")]
pub use node::Canary;
pub use node::{
    Boot, Config, Cursor, Event, FeedPage, FeedReadError, Ingested, Node, NodeError, OpenError,
    Origin, Patched, PruneStatus, VerifyError, FEED_TRIM_INTERVAL_MS,
};
pub use reading::{FieldValue, Reading, ReadingError};
pub use store::{FeedEvent, MemStore, Store, StoreError};
pub use sync::{SessionId, SessionInfo, SessionStats};
pub use trust::Trust;
pub use vclock::{Actor, Causality, VectorClock};
pub use wire::CloseCode;
