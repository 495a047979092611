//! Streams on the node: ingest split into time buckets, range and latest reads over a
//! stream's buckets, and retention (dropping buckets past this node's horizon).

use std::collections::BTreeMap;

use super::{DocKind, Event, Ingested, Node, NodeError, Origin};
use crate::doc::{self, IngestOutcome, SensorView};
use crate::id::DocId;
use crate::reading::Reading;
use crate::store::{DocMeta, Store, WriteBatch, WriteOp};
use crate::stream::{self, Bucket, Page, Range, EXPIRE_BATCH_MAX, TS_LIMIT_MS};
use crate::vclock::CLOCK_ACTORS_MAX;

/// A closed bucket is snapshotted once it holds at least this many changes after its last
/// snapshot ([`Node::compact_closed`]); fewer load as fast from the changes themselves.
pub const COMPACT_CHANGES_MIN: u64 = 64;

/// One document a stream read looks at: a bucket, or a sensor document named like the stream
/// itself (written before streams were bucketed), which may hold readings of any time.
enum Part {
    Bucket(Bucket),
    Whole,
}

impl<S: Store> Node<S> {
    /// Ingests readings into a stream, or straight into one of its buckets.
    ///
    /// `target` names a stream (`site-a/temp-1`): each reading goes into the bucket of its
    /// timestamp at this node's bucket width ([`super::Config::bucket_ms`]); buckets are created
    /// from the shared sensor genesis when new. Or `target` names a bucket
    /// ([`Bucket::doc`]): every reading must lie within its span. Readings whose id is already
    /// present in their bucket are not written again (same content: `Duplicate`; other
    /// content: `Conflict`). Everything new is written in one atomic commit, or nothing is.
    /// A reading older than this node's retention is refused ([`NodeError::Expired`]).
    pub fn ingest(
        &mut self,
        target: &DocId,
        readings: &[Reading],
        now_ms: u64,
    ) -> Result<Ingested, NodeError> {
        self.check_writable()?;
        self.now_ms = self.now_ms.max(now_ms);
        for r in readings {
            r.validate()?;
            if r.ts_ms >= TS_LIMIT_MS {
                return Err(NodeError::TooFarAhead {
                    id: r.id.clone(),
                    ts_ms: r.ts_ms,
                    max: TS_LIMIT_MS,
                });
            }
        }
        let buckets: Vec<Bucket> = match Bucket::parse(target) {
            Some(b) => {
                if let Some(r) = readings.iter().find(|r| !b.holds(r.ts_ms)) {
                    return Err(NodeError::OutsideBucket {
                        doc: target.clone(),
                        id: r.id.clone(),
                        ts_ms: r.ts_ms,
                    });
                }
                vec![b; readings.len()]
            }
            None => {
                stream::check_stream(target)?;
                // A name that is a generic document here and not yet a stream. Once a bucket
                // of it exists the name is a stream (a peer's generic document of that name,
                // hostile or not, does not stop the stream's ingest: found by fuzzing).
                if self.docs.contains_key(target)
                    && !self.has_buckets(target)
                    && self.kind(target)? == Some(DocKind::Generic)
                {
                    return Err(NodeError::KindMismatch {
                        doc: target.clone(),
                        actual: DocKind::Generic,
                    });
                }
                readings
                    .iter()
                    .map(|r| Bucket::of(target, r.ts_ms as u64, self.cfg.bucket_ms))
                    .collect()
            }
        };
        if let Some(horizon_ms) = self.horizon_ms() {
            if let Some((r, _)) = readings
                .iter()
                .zip(&buckets)
                .find(|(_, b)| b.end_ms() <= horizon_ms)
            {
                return Err(NodeError::Expired {
                    id: r.id.clone(),
                    ts_ms: r.ts_ms,
                    horizon_ms,
                });
            }
        }
        // Readings per bucket, in input order within each.
        let mut groups: BTreeMap<DocId, Vec<usize>> = BTreeMap::new();
        // One id per bucket, not per reading (making one formats and validates it).
        let mut ids: BTreeMap<(u64, u64), DocId> = BTreeMap::new();
        let docs: Vec<DocId> = buckets
            .iter()
            .map(|b| {
                ids.entry((b.start_ms, b.width_ms))
                    .or_insert_with(|| b.doc())
                    .clone()
            })
            .collect();
        for (i, d) in docs.iter().enumerate() {
            groups.entry(d.clone()).or_default().push(i);
        }
        // Everything that can refuse a bucket is checked before anything is written, so a
        // refusal leaves memory and store as they were.
        for d in groups.keys() {
            self.check_sensor_target(d)?;
        }
        // Readings the node may take, but not now: every slot spent, or (an unsettled node,
        // which folds nothing) its journal full.
        self.check_slots_left()?;
        if !self.is_settled()
            && self.journal_len().saturating_add(readings.len()) > self.cfg.unsettled_readings_max
        {
            return Err(NodeError::Unsettled {
                what: "its journal of readings is full until then",
            });
        }
        let mut batch = WriteBatch::default();
        let mut outcomes = vec![IngestOutcome::Duplicate; readings.len()];
        let mut added: Vec<(DocId, Vec<super::journal::Entry>)> = Vec::new();
        for (d, idx) in &groups {
            let part: Vec<&Reading> = idx.iter().map(|&i| &readings[i]).collect();
            let (out, new) = self.journal_into(&mut batch, d, &part)?;
            for (&i, o) in idx.iter().zip(out) {
                outcomes[i] = o;
            }
            if !new.is_empty() {
                added.push((d.clone(), new));
            }
        }
        let seq = self.commit(batch)?;
        for (d, new) in added {
            self.journaled(&d, new);
            // Readers see the readings now (a read folds first); peers once they are folded.
            self.events.push_back(Event::DocChanged {
                doc: d,
                origin: Origin::Local,
            });
        }
        if self.journal_len() >= self.cfg.journal_readings_max {
            self.fold_journal()?;
        }
        Ok(Ingested {
            outcomes,
            docs,
            durable_at: self.durable_at(seq),
        })
    }

    /// Checks that readings can be written into the sensor document `doc` (new, or a sensor
    /// document with its readings map and room for this node's actor).
    fn check_sensor_target(&mut self, doc: &DocId) -> Result<(), NodeError> {
        self.check_may_write(doc)?;
        let Some(meta) = self.docs.get(doc) else {
            return Ok(());
        };
        if meta.pruned {
            return Err(NodeError::Pruned { doc: doc.clone() });
        }
        let mine = self.doc_actor(doc);
        if meta.clock.get(&mine) == 0 && meta.clock.len() >= CLOCK_ACTORS_MAX {
            return Err(NodeError::TooManyActors {
                doc: doc.clone(),
                max: CLOCK_ACTORS_MAX,
            });
        }
        // The readings map (kept once found) is the genesis' own (`doc::readings_obj`): a
        // document that has it is a sensor document. Without it, a generic document is the
        // caller's mistake; a sensor document without it is a broken one.
        match self.readings_map(doc) {
            Ok(_) => Ok(()),
            Err(NodeError::NoReadingsMap { .. })
                if doc::kind_of(self.loaded_doc(doc)?) != DocKind::Sensor =>
            {
                Err(NodeError::KindMismatch {
                    doc: doc.clone(),
                    actual: DocKind::Generic,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// The documents of `stream` this node holds, oldest bucket first; a sensor document
    /// named like the stream comes first. Empty for an unknown stream.
    fn stream_parts(&mut self, stream: &DocId) -> Result<Vec<(DocId, Part)>, NodeError> {
        self.fold_for_read()?;
        let mut parts = Vec::new();
        if self.docs.contains_key(stream) && self.kind(stream)? == Some(DocKind::Sensor) {
            parts.push((stream.clone(), Part::Whole));
        }
        let mut buckets: Vec<(DocId, Bucket)> = self
            .bucket_docs(stream)
            .map(|(d, b)| (d.clone(), b))
            .collect();
        // Widths may differ between writers: order by span, then id.
        buckets.sort_by(|(da, a), (db, b)| {
            (a.start_ms, a.end_ms(), da).cmp(&(b.start_ms, b.end_ms(), db))
        });
        parts.extend(buckets.into_iter().map(|(d, b)| (d, Part::Bucket(b))));
        Ok(parts)
    }

    /// Whether this node holds a bucket of `stream`.
    pub fn has_buckets(&self, stream: &DocId) -> bool {
        self.bucket_docs(stream).next().is_some()
    }

    /// The buckets of `stream` this node holds, in document-id order (a range of the document
    /// map: every bucket id of a stream sorts within it).
    fn bucket_docs<'a>(&'a self, stream: &'a DocId) -> impl Iterator<Item = (&'a DocId, Bucket)> {
        let lo = stream::bucket_range_start(stream);
        let hi = stream::bucket_range_end(stream);
        // Buckets held, then buckets only journaled so far (an unsettled node folds none).
        let held = self
            .docs
            .range::<str, _>((
                std::ops::Bound::Included(lo.as_str()),
                std::ops::Bound::Excluded(hi.as_str()),
            ))
            .map(|(d, _)| d);
        let journaled = self
            .journal
            .docs_in(&lo, &hi)
            .filter(|d| !self.docs.contains_key(*d));
        held.chain(journaled)
            .filter_map(|d| Bucket::parse(d).map(|b| (d, b)))
            .filter(move |(_, b)| b.stream == *stream)
    }

    /// Whether `stream` names a stream this node holds readings of (or a sensor document).
    pub fn is_stream(&mut self, stream: &DocId) -> Result<bool, NodeError> {
        if stream::is_bucket_like(stream) {
            return Ok(false);
        }
        Ok(!self.stream_parts(stream)?.is_empty())
    }

    /// A page of `stream`'s readings in (timestamp, id) order; `None` for an unknown stream.
    /// Loads only the buckets whose span meets the range, oldest first, and stops once the
    /// page is full. `latest` is the stream's latest reading ([`Node::latest`]).
    pub fn read_stream(
        &mut self,
        stream: &DocId,
        range: &Range,
    ) -> Result<Option<Page>, NodeError> {
        let parts = self.stream_parts(stream)?;
        if parts.is_empty() {
            return Ok(None);
        }
        let limit = range.limit.clamp(1, stream::PAGE_MAX);
        let mut found: BTreeMap<(i64, String), Reading> = BTreeMap::new();
        for (d, part) in &parts {
            if let Part::Bucket(b) = part {
                if !range.overlaps(b.start_ms, b.end_ms()) {
                    continue;
                }
                // Buckets come in start order: once a page and one more sort before this
                // bucket's start, nothing here or later can enter the page.
                let full = found.len() > limit;
                if full
                    && found
                        .last_key_value()
                        .is_some_and(|((ts, _), _)| *ts < b.start_ms as i64)
                {
                    break;
                }
            }
            let Some(view) = self.part_view(d)? else {
                continue;
            };
            for r in view.readings.into_values() {
                if range.admits(&r) {
                    found.insert((r.ts_ms, r.id.clone()), r);
                }
            }
            // Keep at most one more than a page: whatever sorts later cannot enter it.
            while found.len() > limit + 1 {
                found.pop_last();
            }
        }
        let more = found.len() > limit;
        let mut readings: Vec<Reading> = found.into_values().take(limit).collect();
        readings.shrink_to_fit();
        let next = if more {
            readings.last().map(stream::Cursor::after)
        } else {
            None
        };
        let latest = self.latest_of(&parts)?;
        Ok(Some(Page {
            readings,
            latest,
            next,
        }))
    }

    /// The sensor view of one part of a stream; `None` if it is not a sensor document. With
    /// the readings journaled for it and not folded yet (only an unsettled node has any when
    /// it reads), so reads see every acknowledged reading.
    pub(super) fn part_view(&mut self, doc: &DocId) -> Result<Option<SensorView>, NodeError> {
        let view = self.with_doc(doc, doc::sensor_view)?.flatten();
        Ok(self.journal.overlay(doc, view))
    }

    /// The latest reading of `stream` (greatest timestamp, then id); `Ok(None)` for an unknown
    /// stream. Reads the newest bucket that holds a reading, not the stream.
    pub fn latest(&mut self, stream: &DocId) -> Result<Option<Option<Reading>>, NodeError> {
        let parts = self.stream_parts(stream)?;
        if parts.is_empty() {
            return Ok(None);
        }
        self.latest_of(&parts).map(Some)
    }

    fn latest_of(&mut self, parts: &[(DocId, Part)]) -> Result<Option<Reading>, NodeError> {
        let mut best: Option<Reading> = None;
        // Newest bucket first; a bucket that ends before the best so far cannot beat it.
        for (d, part) in parts.iter().rev() {
            if let Part::Bucket(b) = part {
                if best.as_ref().is_some_and(|r| b.end_ms() as i64 <= r.ts_ms) {
                    continue;
                }
            }
            let Some(view) = self.part_view(d)? else {
                continue;
            };
            if let Some(r) = view.latest() {
                if best
                    .as_ref()
                    .is_none_or(|b| (r.ts_ms, &r.id) > (b.ts_ms, &b.id))
                {
                    best = Some(r.clone());
                }
            }
        }
        Ok(best)
    }

    /// Whether `doc`'s content was pruned ([`Node::prune`]).
    pub fn is_pruned(&self, doc: &DocId) -> bool {
        self.docs.get(doc).is_some_and(|m| m.pruned)
    }

    /// The first reading time this node keeps: buckets that end at or before it are dropped.
    /// `None` without retention.
    pub fn horizon_ms(&self) -> Option<u64> {
        self.cfg.keep_ms.map(|k| self.now_ms.saturating_sub(k))
    }

    /// Whether `doc` is a bucket past this node's retention that it does not hold (dropped, or
    /// never held): its changes are counted as held and dropped, never applied. A bucket past
    /// the horizon that is still held (waiting for its upstream acknowledgements) takes
    /// changes as usual, so they are forwarded.
    pub fn is_gone(&self, doc: &DocId) -> bool {
        self.past_horizon(doc) && !self.docs.contains_key(doc)
    }

    /// Whether `doc` is a bucket past this node's retention (held or not).
    ///
    /// (Retention itself finds the buckets past the horizon in [`Node::expire`]'s index, not
    /// by asking this of every document.)
    pub fn past_horizon(&self, doc: &DocId) -> bool {
        match (self.horizon_ms(), Bucket::parse(doc)) {
            (Some(h), Some(b)) => b.end_ms() <= h,
            _ => false,
        }
    }

    /// Whether every upstream peer ([`super::Config::prune_after_ack`]) acknowledged all of
    /// `doc` as held here (true when none is listed).
    fn upstream_acked(&self, doc: &DocId, meta: &DocMeta) -> bool {
        self.upstream_lacking(doc, meta).next().is_none()
    }

    /// The upstream peers that have not acknowledged all of `doc` (whose metadata is `meta`).
    fn upstream_lacking<'a>(
        &'a self,
        doc: &'a DocId,
        meta: &'a DocMeta,
    ) -> impl Iterator<Item = &'a crate::id::NodeName> {
        self.cfg.prune_after_ack.iter().filter(move |p| {
            let acked = self.peers.get(*p).and_then(|r| r.clocks.get(doc));
            !acked.is_some_and(|a| meta.clock.le(a))
        })
    }

    /// Retention: drops up to [`EXPIRE_BATCH_MAX`] buckets past the horizon at `now_ms` (those
    /// whose span ended first go first), from memory and the store (with every receipt and
    /// reported clock of them), in one commit.
    /// With upstream peers listed ([`super::Config::prune_after_ack`]) a bucket is dropped
    /// only once they all acknowledged it: what never left this node is not lost to its age.
    /// Returns how many were dropped; call again while it returns the maximum. Reports
    /// [`Event::DocDropped`] for each.
    pub fn expire(&mut self, now_ms: u64) -> Result<usize, NodeError> {
        self.check_writable()?;
        self.now_ms = self.now_ms.max(now_ms);
        // Journaled readings are in their documents before anything decides on them (an
        // unsettled node folds none: a document with journaled readings waits until it has).
        self.fold_journal()?;
        let Some(horizon) = self.horizon_ms() else {
            return Ok(0);
        };
        // Oldest first, among the buckets whose span ended by the horizon; an entry of a
        // document no longer held goes, one still waiting (journaled readings, an upstream
        // acknowledgement) stays for a later turn.
        let mut gone = Vec::new();
        let mut stale = Vec::new();
        for entry in self.expiry.iter().take_while(|(end, _)| *end <= horizon) {
            let d = &entry.1;
            match self.docs.get(d) {
                None => stale.push(entry.clone()),
                Some(m) if !self.journal.holds(d) && self.upstream_acked(d, m) => {
                    gone.push(entry.clone());
                    if gone.len() == EXPIRE_BATCH_MAX {
                        break;
                    }
                }
                Some(_) => {}
            }
        }
        for e in &stale {
            self.expiry.remove(e);
        }
        for e in &gone {
            self.expiry.remove(e);
        }
        let gone: Vec<DocId> = gone.into_iter().map(|(_, d)| d).collect();
        if gone.is_empty() {
            return Ok(0);
        }
        let peers: Vec<_> = self.peers.keys().cloned().collect();
        let mut batch = WriteBatch::default();
        for d in &gone {
            self.docs.remove(d);
            self.loaded.remove(d);
            self.dirty.remove(d);
            self.pending.drop_doc(d);
            for r in self.peers.values_mut() {
                r.clocks.remove(d);
                r.reported.remove(d);
            }
            for s in self.sessions.values_mut() {
                s.forget_doc(d);
            }
            batch.push(WriteOp::DropDoc {
                doc: d.clone(),
                peers: peers.clone(),
            });
        }
        self.commit(batch)?;
        for d in gone.iter().cloned() {
            self.events.push_back(Event::DocDropped { doc: d });
        }
        Ok(gone.len())
    }

    /// Unloads from memory every bucket whose span ended at least
    /// [`super::Config::prune_grace_ms`] before `now_ms` (closed: readings rarely arrive any
    /// more; a read or a late change loads it again). Memory then follows the buckets being
    /// written, not everything read or written since the start. Returns how many.
    pub fn evict_closed(&mut self, now_ms: u64) -> usize {
        self.now_ms = self.now_ms.max(now_ms);
        let grace = self.cfg.prune_grace_ms;
        let now = self.now_ms;
        let before = self.loaded.len();
        let dirty = &self.dirty;
        self.loaded
            .retain(|d, _| dirty.contains(d) || !closed(d, grace, now));
        before - self.loaded.len()
    }

    /// Snapshots closed buckets (their span ended at least
    /// [`super::Config::prune_grace_ms`] ago) that gained at least [`COMPACT_CHANGES_MIN`]
    /// changes since their last snapshot, at most `max` per call, in one commit, and unloads
    /// them. Buckets are never snapshotted on the write path: this runs in housekeeping, a
    /// bounded number at a time. Returns how many.
    pub fn compact_closed(&mut self, now_ms: u64, max: usize) -> Result<usize, NodeError> {
        self.check_writable()?;
        self.now_ms = self.now_ms.max(now_ms);
        // Journaled readings are in their documents before anything decides on them.
        self.fold_journal()?;
        let (grace, now) = (self.cfg.prune_grace_ms, self.now_ms);
        let due: Vec<DocId> = self
            .docs
            .iter()
            .filter(|(d, m)| {
                !m.pruned
                    && m.next_order - m.snapshot_order >= COMPACT_CHANGES_MIN
                    && closed(d, grace, now)
            })
            .map(|(d, _)| d.clone())
            .take(max)
            .collect();
        if due.is_empty() {
            return Ok(0);
        }
        let mut batch = WriteBatch::default();
        for d in &due {
            let bytes = self.loaded_doc(d)?.save();
            let meta = self.docs.get_mut(d).expect("listed");
            meta.snapshot_order = meta.next_order;
            let meta = meta.clone();
            batch.push(WriteOp::PutSnapshot {
                doc: d.clone(),
                covers_order: meta.next_order,
                bytes,
            });
            batch.push(WriteOp::PutDocMeta {
                doc: d.clone(),
                meta,
            });
        }
        self.commit(batch)?;
        for d in &due {
            self.loaded.remove(d);
        }
        Ok(due.len())
    }

    /// Documents loaded in memory now.
    pub fn loaded_count(&self) -> usize {
        self.loaded.len()
    }

    /// Store-and-forward pruning: drops the content of every closed bucket (its span ended
    /// [`super::Config::prune_grace_ms`] ago or more) that every peer in
    /// [`super::Config::prune_after_ack`] has durably acknowledged whole, keeping its metadata
    /// (clock and receipts) so the bucket stays known as held. Changes received into a pruned
    /// bucket since are stored and forwarded, then dropped again once acknowledged. At most
    /// [`EXPIRE_BATCH_MAX`] buckets per call, in one commit; returns how many.
    pub fn prune(&mut self, now_ms: u64) -> Result<usize, NodeError> {
        self.check_writable()?;
        self.now_ms = self.now_ms.max(now_ms);
        // Journaled readings are in their documents before anything decides on them (an
        // unsettled node folds none: a document with journaled readings waits until it has).
        self.fold_journal()?;
        let due: Vec<DocId> = self
            .docs
            .iter()
            .filter(|(d, m)| {
                !self.journal.holds(d)
                    && (!m.pruned || m.next_order > m.snapshot_order)
                    && self.prune_waiting_for(d, m).is_some_and(|w| w.is_empty())
            })
            .map(|(d, _)| d.clone())
            .take(EXPIRE_BATCH_MAX)
            .collect();
        if due.is_empty() {
            return Ok(0);
        }
        let mut batch = WriteBatch::default();
        for d in &due {
            let meta = self.docs.get_mut(d).expect("listed");
            meta.pruned = true;
            meta.snapshot_order = meta.next_order;
            let meta = meta.clone();
            self.loaded.remove(d);
            self.dirty.remove(d);
            batch.push(WriteOp::DropContent { doc: d.clone() });
            batch.push(WriteOp::PutDocMeta {
                doc: d.clone(),
                meta,
            });
        }
        self.commit(batch)?;
        Ok(due.len())
    }

    /// For a closed bucket this node would prune: the listed peers that have not yet
    /// acknowledged all of it (empty: prunable now). `None` when pruning does not apply (not
    /// configured, not a bucket, not closed yet).
    fn prune_waiting_for(&self, doc: &DocId, meta: &DocMeta) -> Option<Vec<crate::id::NodeName>> {
        if self.cfg.prune_after_ack.is_empty() {
            return None;
        }
        if !closed(doc, self.cfg.prune_grace_ms, self.now_ms) {
            return None;
        }
        Some(self.upstream_lacking(doc, meta).cloned().collect())
    }

    /// What pruning waits for: closed buckets whose content is still held because a listed
    /// peer has not acknowledged all of it, counted per peer; and how many are pruned.
    pub fn prune_status(&self) -> PruneStatus {
        let mut st = PruneStatus::default();
        for (d, m) in &self.docs {
            if m.pruned {
                st.pruned += 1;
                if m.next_order == m.snapshot_order {
                    continue;
                }
            }
            if let Some(w) = self.prune_waiting_for(d, m) {
                if !w.is_empty() {
                    st.waiting += 1;
                }
                for p in w {
                    *st.waiting_for.entry(p).or_default() += 1;
                }
            }
        }
        st
    }
}

/// Whether `doc` is a bucket closed at `now_ms`: its span ended at least `grace_ms` before.
fn closed(doc: &DocId, grace_ms: u64, now_ms: u64) -> bool {
    Bucket::parse(doc).is_some_and(|b| b.end_ms() + grace_ms <= now_ms)
}

/// What store-and-forward pruning waits for ([`Node::prune_status`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PruneStatus {
    /// Closed buckets held only because some listed peer has not acknowledged all of them.
    pub waiting: usize,
    /// Of those, how many each listed peer has yet to acknowledge.
    pub waiting_for: BTreeMap<crate::id::NodeName, usize>,
    /// Buckets pruned here (their clocks are kept).
    pub pruned: usize,
}

/// The entry of `doc` in the retention index (the end of its span, and the document), if it is
/// a bucket.
pub(super) fn expiry_entry(doc: &DocId) -> Option<(u64, DocId)> {
    Bucket::parse(doc).map(|b| (b.end_ms(), doc.clone()))
}
