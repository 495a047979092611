//! The ingest journal: a reading is acknowledged once it is durable as a journal entry (one
//! store write, no Automerge work), and journaled readings are folded into Automerge changes
//! later, many per change ([`Node::fold_journal`]).
//!
//! What holds at every moment:
//! - A journaled reading is in the store's journal (`WriteOp::PutJournal`) and in
//!   [`Journal`], and in no document yet; its fold removes it from both in the same commit
//!   that records the change holding it (`WriteOp::DeleteJournal`), so a crash leaves it in
//!   exactly one of the two places, and an open reloads what the journal holds.
//! - Dedup sees the journal first, then the document: the same id with the same body is a
//!   duplicate, with another body a conflict, wherever the first one is.
//! - Nothing else changes a document with journaled readings before they are folded: reads
//!   ([`Node::with_doc`] and the stream reads), remote changes into it, retention, pruning,
//!   snapshots and a clean stop fold first. So a fold writes every journaled reading as a new
//!   key, exactly as the ingest would have, and its change is concurrent with whatever a peer
//!   wrote meanwhile, as an immediate write would have been.
//! - The journal is bounded: at most [`super::Config::journal_readings_max`] readings (an
//!   ingest that reaches it folds everything), each at most [`crate::reading::READING_BYTES_MAX`],
//!   and none older than [`super::Config::journal_fold_ms`] once [`Node::handle_timeout`] runs.

use std::collections::BTreeMap;

use super::{Event, Node, NodeError};
use crate::doc::{self, IngestOutcome};
use crate::id::DocId;
use crate::reading::Reading;
use crate::store::{DocMeta, Store, WriteBatch, WriteOp};

/// A journal entry: a reading's id and its encoded body.
pub(super) type Entry = (String, String);

/// The journaled readings not yet folded, by document then id: each as its encoded body
/// (what the fold writes and dedup compares).
#[derive(Debug, Default)]
pub(super) struct Journal {
    docs: BTreeMap<DocId, BTreeMap<String, String>>,
    len: usize,
    /// Node time (ms) the oldest reading held was journaled at; 0 for what an open found.
    since_ms: Option<u64>,
}

impl Journal {
    /// What the store's journal holds (entries that do not parse are left out: they were
    /// written by this node after validation, so only a corrupted store has them).
    pub(super) fn open(entries: Vec<(DocId, String, String)>) -> (Journal, usize) {
        let mut j = Journal::default();
        let mut bad = 0;
        for (doc, id, body) in entries {
            match Reading::decode(&id, &body) {
                Ok(_) => j.insert(doc, id, body, 0),
                Err(_) => bad += 1,
            }
        }
        (j, bad)
    }

    fn insert(&mut self, doc: DocId, id: String, body: String, now_ms: u64) {
        if self.docs.entry(doc).or_default().insert(id, body).is_none() {
            self.len += 1;
        }
        self.since_ms.get_or_insert(now_ms);
    }

    /// The journaled body of reading `id` of `doc`.
    /// Journaled documents whose ids fall within `lo..hi`.
    pub(super) fn docs_in<'a>(
        &'a self,
        lo: &str,
        hi: &str,
    ) -> impl Iterator<Item = &'a DocId> + 'a {
        self.docs
            .range::<str, _>((std::ops::Bound::Included(lo), std::ops::Bound::Excluded(hi)))
            .map(|(d, _)| d)
    }

    /// `view` (of `doc`'s folded readings; `None` for a document not held) with `doc`'s
    /// journaled readings added where the document has no reading of that id.
    pub(super) fn overlay(
        &self,
        doc: &DocId,
        view: Option<crate::doc::SensorView>,
    ) -> Option<crate::doc::SensorView> {
        let Some(entries) = self.docs.get(doc) else {
            return view;
        };
        let mut view = view.unwrap_or_else(|| crate::doc::SensorView {
            readings: BTreeMap::new(),
            invalid: Vec::new(),
        });
        for (id, body) in entries {
            if !view.readings.contains_key(id) {
                if let Ok(r) = Reading::decode(id, body) {
                    view.readings.insert(id.clone(), r);
                }
            }
        }
        Some(view)
    }

    fn body(&self, doc: &DocId, id: &str) -> Option<&String> {
        self.docs.get(doc)?.get(id)
    }

    /// Journaled readings held.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Whether `doc` has journaled readings.
    pub(super) fn holds(&self, doc: &DocId) -> bool {
        self.docs.contains_key(doc)
    }

    /// When the oldest reading held is due to be folded.
    pub(super) fn due_at(&self, fold_ms: u64) -> Option<u64> {
        self.since_ms.map(|t| t.saturating_add(fold_ms))
    }
}

/// What one fold did, for the shell's metrics and logs ([`Event::Folded`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Folded {
    /// Documents written.
    pub docs: usize,
    /// Readings folded.
    pub readings: usize,
    /// How long the oldest of them waited (ms of node time; 0 for readings an open found).
    pub waited_ms: u64,
}

impl<S: Store> Node<S> {
    /// Journals `readings` of the sensor document `doc` into `batch` (the caller checked the
    /// document with `check_sensor_target`). Returns each reading's outcome, in order, and
    /// the entries (id, body) to add to the journal once the batch is committed.
    pub(super) fn journal_into(
        &mut self,
        batch: &mut WriteBatch,
        doc: &DocId,
        readings: &[&Reading],
    ) -> Result<(Vec<IngestOutcome>, Vec<Entry>), NodeError> {
        let map = if self.docs.contains_key(doc) {
            Some(self.readings_map(doc)?)
        } else {
            None
        };
        let mut outcomes = Vec::with_capacity(readings.len());
        let mut fresh: BTreeMap<&str, String> = BTreeMap::new();
        let mut added = Vec::new();
        for r in readings {
            let body = r.encode();
            let existing = match fresh.get(r.id.as_str()) {
                Some(b) => Some(b.clone()),
                None => match self.journal.body(doc, &r.id) {
                    Some(b) => Some(b.clone()),
                    None => match &map {
                        Some(m) => {
                            let am = self.loaded_doc(doc)?;
                            doc::reading_body(am, m, &r.id)
                        }
                        None => None,
                    },
                },
            };
            let outcome = match existing {
                Some(b) if b == body => IngestOutcome::Duplicate,
                Some(_) => IngestOutcome::Conflict,
                None => {
                    batch.push(WriteOp::PutJournal {
                        doc: doc.clone(),
                        id: r.id.clone(),
                        body: body.clone(),
                    });
                    self.feed_push(batch, doc, Some((r.id.clone(), body.clone())), None);
                    added.push((r.id.clone(), body.clone()));
                    fresh.insert(&r.id, body);
                    IngestOutcome::Inserted
                }
            };
            outcomes.push(outcome);
        }
        Ok((outcomes, added))
    }

    /// Adds committed journal entries to the in-memory journal.
    pub(super) fn journaled(&mut self, doc: &DocId, entries: Vec<Entry>) {
        self.journaled_unsettled |= !self.meta.settled;
        for (id, body) in entries {
            self.journal.insert(doc.clone(), id, body, self.now_ms);
        }
    }

    /// Journaled readings not yet folded.
    pub fn journal_len(&self) -> usize {
        self.journal.len()
    }

    /// When the oldest journaled reading is due to be folded (node time, ms), if any.
    /// `None` while the node may not fold ([`NodeError::Unsettled`],
    /// [`NodeError::ActorSlotsExhausted`]).
    pub fn journal_due_at(&self) -> Option<u64> {
        if !self.may_fold() {
            return None;
        }
        self.journal.due_at(self.cfg.journal_fold_ms)
    }

    /// Whether the journal may be folded now: not by a poisoned node, nor by one that may not
    /// author (unsettled, or every slot spent).
    fn may_fold(&self) -> bool {
        !self.poisoned && self.is_settled() && !self.slots_exhausted()
    }

    /// Folds every journaled reading into its document: one commit, one Automerge change per
    /// document (more where a document's readings exceed the change size limit). Does nothing
    /// when the journal is empty.
    pub fn fold_journal(&mut self) -> Result<Folded, NodeError> {
        let docs: Vec<DocId> = self.journal.docs.keys().cloned().collect();
        self.fold(&docs)
    }

    /// Folds the journaled readings of those of `docs` that have any.
    pub(super) fn fold_docs<'a>(
        &mut self,
        docs: impl IntoIterator<Item = &'a DocId>,
    ) -> Result<Folded, NodeError> {
        let docs: Vec<DocId> = docs
            .into_iter()
            .filter(|d| self.journal.holds(d))
            .cloned()
            .collect();
        self.fold(&docs)
    }

    /// Folds the journal before a read: what was acknowledged is what reads see.
    pub(super) fn fold_for_read(&mut self) -> Result<(), NodeError> {
        if self.journal.len() > 0 {
            self.fold_journal()?;
        }
        Ok(())
    }

    fn fold(&mut self, docs: &[DocId]) -> Result<Folded, NodeError> {
        // An unsettled node (or one without a slot left) authors nothing: its readings stay
        // journaled, acknowledged and durable, until it may.
        if docs.is_empty() || !self.may_fold() {
            return Ok(Folded::default());
        }
        let now_ms = self.now_ms;
        let mut batch = WriteBatch::default();
        let mut done = Folded {
            waited_ms: self.journal.since_ms.map_or(0, |t| {
                if t == 0 {
                    0
                } else {
                    now_ms.saturating_sub(t)
                }
            }),
            ..Folded::default()
        };
        let mut folded: Vec<(DocId, BTreeMap<String, String>)> = Vec::new();
        let mut failed = None;
        for d in docs {
            // Taken out while folded; put back if the fold of this document fails.
            let Some(entries) = self.journal.docs.remove(d) else {
                continue;
            };
            let saved: Option<DocMeta> = self.docs.get(d).cloned();
            let mut part = WriteBatch::default();
            match self.put_into(&mut part, d, &entries, now_ms) {
                Ok(out) => {
                    // Every journaled id was new when journaled and, on a settled node,
                    // nothing wrote the document since without folding first, so each is
                    // inserted now. An unsettled node applies peers' changes before it may
                    // fold: an id a peer wrote meanwhile is then not written again (the same
                    // body is a duplicate; another body stays the peer's, as a conflict).
                    debug_assert!(
                        self.journaled_unsettled
                            || out.iter().all(|o| *o == IngestOutcome::Inserted)
                    );
                    batch.ops.extend(part.ops);
                    batch.push(WriteOp::DeleteJournal {
                        doc: d.clone(),
                        ids: entries.keys().cloned().collect(),
                    });
                    done.docs += 1;
                    done.readings += entries.len();
                    folded.push((d.clone(), entries));
                }
                Err(e) => {
                    // Undo this document (its readings stay journaled) and fold the others.
                    self.journal.docs.insert(d.clone(), entries);
                    self.loaded.remove(d);
                    self.dirty.remove(d);
                    match saved {
                        Some(m) => self.docs.insert(d.clone(), m),
                        None => self.docs.remove(d),
                    };
                    failed = Some(e);
                }
            }
        }
        if !folded.is_empty() {
            if let Err(e) = self.commit(batch) {
                // Not written: the readings stay journaled (the node is poisoned now).
                for (d, entries) in folded {
                    self.journal.docs.insert(d, entries);
                }
                return Err(e);
            }
            for (_, entries) in &folded {
                self.journal.len -= entries.len();
            }
            // Peers learn of the new changes; local readers were told at the ingest.
            for d in std::mem::take(&mut self.dirty) {
                for s in self.sessions.values_mut() {
                    s.mark_dirty(&d);
                }
            }
            self.pump_all();
        }
        if self.journal.len == 0 {
            self.journaled_unsettled = false;
        }
        self.journal.since_ms = if self.journal.len == 0 {
            None
        } else if failed.is_some() {
            // A document a fold could not write waits another interval, not a hot loop.
            Some(now_ms)
        } else {
            // A fold of some documents (before a peer's changes) leaves the others as old as
            // they were: they stay due when they were.
            self.journal.since_ms
        };
        if done.readings > 0 {
            self.events.push_back(Event::Folded(done.clone()));
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }

    /// Folds the journal if its oldest reading is due ([`super::Config::journal_fold_ms`]).
    pub(super) fn fold_if_due(&mut self, now_ms: u64) {
        if self.journal_due_at().is_some_and(|t| t <= now_ms) {
            if let Err(e) = self.fold_journal() {
                self.events.push_back(Event::FoldFailed {
                    reason: e.to_string(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_counts_distinct_readings_and_remembers_the_oldest() {
        let mut j = Journal::default();
        let d = DocId::new("s/a").unwrap();
        let r = |id: &str| Reading::from_json(id, 1, &serde_json::json!({"v": 1})).unwrap();
        let put = |j: &mut Journal, id: &str, t| j.insert(d.clone(), id.into(), r(id).encode(), t);
        assert_eq!(j.due_at(100), None);
        put(&mut j, "x", 50);
        put(&mut j, "x", 70);
        put(&mut j, "y", 80);
        assert_eq!(j.len(), 2);
        assert_eq!(j.due_at(100), Some(150));
        assert_eq!(j.body(&d, "y"), Some(&r("y").encode()));
        assert_eq!(j.body(&d, "z"), None);
    }
}
