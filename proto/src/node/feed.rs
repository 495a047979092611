//! The node's change feed: every reading that becomes durable here (written locally or
//! received from a peer) and every change to a generic document, in commit order, each under a
//! cursor. Events are written in the same commit as the change they describe, so an event
//! exists exactly when its change does; readers see an event once its commit is durable.
//!
//! A cursor names a position in this store's feed: the store id's first eight bytes and a
//! number (`0a1b2c3d4e5f6a7b.42`). Resuming after a cursor yields every later event once. A store
//! renewed from a backup ([`Node::renew_store`]) or replaced starts another sequence, and a
//! cursor of the old one is answered as gone, never with a silent skip. Bounded by
//! [`crate::Config::feed_events_max`] ([`Node::trim_feed`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use super::{Node, NodeError};
use crate::id::{DocId, NodeName};
use crate::store::{FeedEvent, Store, WriteBatch, WriteOp};

/// Events a trim looks at from the feed's head for documents no longer held.
const TRIM_SCAN_MAX: usize = 10_000;
/// The longest [`Node::trim_feed_if_due`] waits between trims.
pub const FEED_TRIM_INTERVAL_MS: u64 = 3_600_000;
/// [`Node::trim_feed_if_due`] trims at once when the feed grew by `feed_events_max` divided
/// by this since the last trim (at least one event, at most [`TRIM_GROWTH_MAX`]).
const TRIM_GROWTH_DIVISOR: u64 = 64;
/// See [`TRIM_GROWTH_DIVISOR`].
const TRIM_GROWTH_MAX: u64 = 65_536;

/// A position in one store's feed.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Cursor {
    /// The first eight bytes of the store id the sequence belongs to.
    pub store: [u8; 8],
    /// The number of the event at this position (0: before the first).
    pub n: u64,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.store {
            write!(f, "{b:02x}")?;
        }
        write!(f, ".{}", self.n)
    }
}

impl std::str::FromStr for Cursor {
    type Err = String;
    fn from_str(s: &str) -> Result<Cursor, String> {
        let bad = || format!("{s:?} is not a feed cursor (expected HEX16.N, as `next` gives)");
        let (store, n) = s.split_once('.').ok_or_else(bad)?;
        if store.len() != 16 || !store.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut out = [0u8; 8];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&store[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        let n = n.parse().map_err(|_| bad())?;
        Ok(Cursor { store: out, n })
    }
}

/// One page of the feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedPage {
    /// The events, ascending.
    pub events: Vec<(Cursor, FeedEvent)>,
    /// Where to resume: the last event looked at (also past events the filter skipped), or
    /// the cursor asked for when there was nothing new.
    pub next: Cursor,
}

/// Why a feed read has no page.
#[derive(Debug, thiserror::Error)]
pub enum FeedReadError {
    /// The cursor is older than what the feed still holds, or of another store's sequence:
    /// events after it may be gone. Resume from `oldest`.
    #[error("the feed no longer holds what follows cursor {after}; resume from {oldest}")]
    Gone {
        /// The cursor asked for.
        after: Cursor,
        /// The oldest cursor to resume from.
        oldest: Cursor,
    },
    /// The store failed.
    #[error(transparent)]
    Node(#[from] NodeError),
}

/// Cursor bookkeeping. Bounded: one entry per commit not yet durable.
#[derive(Debug, Default)]
pub(crate) struct FeedState {
    /// The number the next event gets.
    next: u64,
    /// The last number of the last commit made.
    committed: u64,
    /// (commit, its last event number) for commits not yet durable.
    inflight: VecDeque<(u64, u64)>,
    /// Events up to this number are durable: what readers see.
    durable: u64,
    /// When [`Node::trim_feed_if_due`] last trimmed (node time, ms) and `next` then.
    trimmed: Option<(u64, u64)>,
    /// The first event this open wrote: those before it are known only by reading them.
    opened_at: u64,
    /// The first and the last event of each document among those this open wrote (`heads`
    /// holds the firsts, by cursor): what [`Node::trim_feed`] needs to drop events of
    /// documents no longer held without reading them. Bounded by the feed itself: at most one
    /// entry per document with an event among the feed's last `feed_events_max` (an entry goes
    /// when a trim finds its document no longer held, or once the bound passed its last
    /// event).
    firsts: BTreeMap<DocId, (u64, u64)>,
    /// The firsts of `firsts`, ordered by cursor.
    heads: BTreeSet<(u64, DocId)>,
}

impl FeedState {
    /// The state over a store whose highest event number is `last` (everything a store holds
    /// at open is durable).
    pub(crate) fn open(last: Option<u64>) -> FeedState {
        let last = last.unwrap_or(0);
        FeedState {
            next: last + 1,
            committed: last,
            inflight: VecDeque::new(),
            durable: last,
            trimmed: None,
            opened_at: last + 1,
            firsts: BTreeMap::new(),
            heads: BTreeSet::new(),
        }
    }

    /// Commit `seq` was made.
    pub(crate) fn committed(&mut self, seq: u64) {
        let last = self.next - 1;
        if last > self.committed {
            self.inflight.push_back((seq, last));
            self.committed = last;
        }
    }

    /// Commits up to `seq` are durable.
    pub(crate) fn durable(&mut self, seq: u64) {
        while let Some(&(c, last)) = self.inflight.front() {
            if c > seq {
                break;
            }
            self.durable = last;
            self.inflight.pop_front();
        }
    }
}

impl<S: Store> Node<S> {
    fn cursor(&self, n: u64) -> Cursor {
        let mut store = [0u8; 8];
        store.copy_from_slice(&self.meta.store_id[..8]);
        Cursor { store, n }
    }

    /// Adds an event for `doc` to `batch` (a reading as (id, canonical body), or `None` for a
    /// change to a generic document).
    pub(super) fn feed_push(
        &mut self,
        batch: &mut WriteBatch,
        doc: &DocId,
        reading: Option<(String, String)>,
        origin: Option<&NodeName>,
    ) {
        if self.cfg.feed_events_max == 0 {
            return;
        }
        let cursor = self.feed.next;
        self.feed.next += 1;
        match self.feed.firsts.get_mut(doc) {
            Some((_, last)) => *last = cursor,
            None => {
                self.feed.firsts.insert(doc.clone(), (cursor, cursor));
                self.feed.heads.insert((cursor, doc.clone()));
            }
        }
        batch.push(WriteOp::PutFeed {
            cursor,
            event: FeedEvent {
                doc: doc.clone(),
                reading,
                origin: origin.cloned(),
            },
        });
    }

    /// The newest cursor readers see (the position after every durable event).
    pub fn feed_head(&self) -> Cursor {
        self.cursor(self.feed.durable)
    }

    /// Up to `limit` durable events after `after` (from the oldest held without one) whose
    /// document `wanted` accepts, looking at no more than `scan_max` events.
    pub fn feed(
        &self,
        after: Option<Cursor>,
        limit: usize,
        scan_max: usize,
        wanted: &dyn Fn(&DocId) -> bool,
    ) -> Result<FeedPage, FeedReadError> {
        let bounds = self.store.feed_bounds().map_err(NodeError::from)?;
        // Resuming from here yields the oldest event held.
        let oldest = self.cursor(bounds.map_or(self.feed.durable, |(first, _)| first - 1));
        let from = match after {
            None => oldest,
            Some(a) if a.store != oldest.store || a.n < oldest.n || a.n > self.feed.durable => {
                return Err(FeedReadError::Gone { after: a, oldest });
            }
            Some(a) => a,
        };
        let mut next = from;
        let mut events = Vec::new();
        let mut at = from.n;
        let mut scanned = 0;
        'pages: while events.len() < limit && scanned < scan_max && at < self.feed.durable {
            let want = (scan_max - scanned).min(1024);
            let page = self.store.feed(at, want).map_err(NodeError::from)?;
            if page.is_empty() {
                break;
            }
            for (n, e) in page {
                if n > self.feed.durable {
                    break 'pages;
                }
                at = n;
                scanned += 1;
                next = self.cursor(n);
                if wanted(&e.doc) {
                    events.push((self.cursor(n), e));
                    if events.len() == limit {
                        break 'pages;
                    }
                }
            }
        }
        Ok(FeedPage { events, next })
    }

    /// [`Node::trim_feed`] when it is due: at the first call, once [`FEED_TRIM_INTERVAL_MS`] passed
    /// since the last trim, or once the feed grew by `feed_events_max / 64` events (at most
    /// 65,536, at least 1) since. Each trim that drops events is a range deletion in the store,
    /// and reads of the feed's head pass over those not yet compacted away: a trim at every
    /// housekeeping turn made every later one slower (the ingest thread spent 8 % of its time
    /// in them by the 30th day of the benchmark's row 7). So the feed holds at most that growth
    /// (and what one turn adds) past its bound, and events of documents dropped meanwhile stay
    /// at most an hour longer. Returns how many cursors were dropped.
    pub fn trim_feed_if_due(&mut self, now_ms: u64) -> Result<u64, NodeError> {
        let growth = (self.cfg.feed_events_max / TRIM_GROWTH_DIVISOR).clamp(1, TRIM_GROWTH_MAX);
        let due = self.feed.trimmed.is_none_or(|(at_ms, next)| {
            now_ms >= at_ms.saturating_add(FEED_TRIM_INTERVAL_MS)
                || self.feed.next.saturating_sub(next) >= growth
        });
        if !due {
            return Ok(0);
        }
        let dropped = self.trim_feed()?;
        self.feed.trimmed = Some((now_ms, self.feed.next));
        Ok(dropped)
    }

    /// Bounds the feed: drops its oldest events past [`crate::Config::feed_events_max`], and
    /// from its head events of documents this node no longer holds (dropped by retention,
    /// pruned), up to the first event of a document it holds. The newest event is always
    /// kept, so the sequence goes on after a restart. Returns how many cursors were dropped.
    ///
    /// Events this open wrote are passed by the first event of each document (`FeedState`),
    /// without being read: the cost is per document dropped, not per event. Events written
    /// before the open are read from the head, at most 10,000 a call, and so are events from
    /// the bound on when it passed a held document's first event but not its last (only
    /// reading finds that document's next one).
    pub fn trim_feed(&mut self) -> Result<u64, NodeError> {
        let Some((first, last)) = self.store.feed_bounds()? else {
            return Ok(0);
        };
        let max = self.cfg.feed_events_max.max(1);
        let mut below = first;
        if last - first + 1 > max {
            below = last + 1 - max;
        }
        // Written before this open: read from the head.
        let reached =
            below >= self.feed.opened_at || self.pass_unheld(&mut below, self.feed.opened_at)?;
        if reached {
            // Written by this open: every event below a document's first belongs to documents
            // whose first came earlier, so the head goes up to the first of a held one.
            below = below.max(self.feed.opened_at);
            let mut straddling = Vec::new();
            let mut held_first = last;
            while let Some((at, doc)) = self.feed.heads.first().cloned() {
                let its_last = self.feed.firsts.get(&doc).map_or(0, |&(_, l)| l);
                let keep = self.holds_events_of(&doc);
                if keep && at >= below {
                    held_first = at;
                    break;
                }
                self.feed.heads.pop_first();
                if keep && its_last >= below {
                    // The bound passed its first event but not its last.
                    straddling.push((doc, its_last));
                } else {
                    // No longer held, or none of its events is left.
                    self.feed.firsts.remove(&doc);
                }
            }
            if straddling.is_empty() {
                below = below.max(held_first);
            } else {
                // Where the next events of those are is known only by reading from the bound.
                self.pass_unheld(&mut below, held_first)?;
                for (doc, its_last) in straddling {
                    self.feed.heads.insert((below, doc.clone()));
                    self.feed.firsts.insert(doc, (below, its_last));
                }
            }
        }
        below = below.min(last);
        if below <= first {
            return Ok(0);
        }
        self.commit(WriteBatch {
            ops: vec![WriteOp::TrimFeed { below }],
        })?;
        Ok(below - first)
    }

    /// Whether the feed keeps `doc`'s events: the document is held, and not pruned.
    fn holds_events_of(&self, doc: &DocId) -> bool {
        self.docs.get(doc).is_some_and(|m| !m.pruned)
    }

    /// Moves `below` past the events of documents whose events the feed no longer keeps,
    /// reading them from `below` up to `until` (exclusive), at most [`TRIM_SCAN_MAX`]. Whether
    /// it got to `until` (or to the feed's end) rather than to an event kept or the limit.
    fn pass_unheld(&self, below: &mut u64, until: u64) -> Result<bool, NodeError> {
        let (mut passed, mut reached) = (0, true);
        self.store.feed_scan(*below - 1, &mut |n, e| {
            if n >= until {
                return false;
            }
            if passed == TRIM_SCAN_MAX || self.holds_events_of(&e.doc) {
                reached = false;
                return false;
            }
            passed += 1;
            *below = n + 1;
            true
        })?;
        Ok(reached)
    }
}
