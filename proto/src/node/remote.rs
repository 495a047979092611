//! Remote changes: validated, applied when causally ready, held (bounded) while their
//! dependencies are missing, and refused with a typed reason that closes the sending session.

use std::collections::{BTreeMap, HashMap, HashSet};

use automerge::{Automerge, Change, ChangeHash};

use super::{planted, By, Config, Node, NodeError};
use crate::chunk;
use crate::id::{DocId, NodeName};
use crate::schema::{self, Refusal};
use crate::store::{Store, WriteBatch};
use crate::stream::Bucket;
use crate::sync::SessionId;
use crate::vclock::{Actor, VectorClock, CLOCK_ACTORS_MAX};
use crate::wire::{CloseCode, Signed};

/// Outcome of offering one remote change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Applied {
    /// Applied, together with this many previously buffered changes.
    New(usize),
    /// Already held.
    Duplicate,
    /// Held until its dependencies arrive.
    Buffered,
    /// Into a bucket this node no longer keeps: counted as held, dropped.
    Gone,
}

/// The causally ready remote changes of one document taken so far from a received batch:
/// checked and admitted, applied to the Automerge document together by
/// [`Node::flush_run`]. Bounded by the batch being applied (one frame).
#[derive(Default)]
pub(crate) struct Run {
    items: Vec<RunItem>,
    /// Their hashes: dependencies and duplicates are looked up here as in the document.
    hashes: HashSet<ChangeHash>,
    /// The highest sequence number of each of their actors.
    seqs: HashMap<Actor, u64>,
    /// The hash of each actor's last change among them.
    last: HashMap<Actor, ChangeHash>,
    /// The reading ids they write (a later change's reading with one of them is not new).
    ids: HashSet<String>,
    /// Actors new to the document among them.
    new_actors: usize,
    /// One of them is the document's first.
    new_doc: bool,
}

struct RunItem {
    change: Change,
    by: By,
    /// The feed's events: readings new to this node; `generic` for a generic change.
    readings: Option<Vec<(String, String)>>,
    generic: bool,
    origin: NodeName,
    /// Recorded but kept out of the document (the planted fault `DropRemoteChange`).
    dropped: bool,
}

/// A remote change was refused; the session that sent it ends.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApplyError {
    #[error(transparent)]
    Invalid(#[from] Refusal),
    #[error("actor {actor} seq {seq} names two different changes")]
    Equivocation { actor: Actor, seq: u64 },
    #[error("limit reached: {limit} ({max})")]
    Overloaded { limit: &'static str, max: usize },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Node(#[from] NodeError),
}

impl ApplyError {
    pub(crate) fn close_code(&self) -> CloseCode {
        match self {
            ApplyError::Invalid(_) => CloseCode::InvalidChange,
            ApplyError::Equivocation { .. } => CloseCode::Equivocation,
            ApplyError::Overloaded { .. } => CloseCode::Overloaded,
            ApplyError::Unauthorized(_) => CloseCode::Unauthorized,
            ApplyError::Forbidden(_) => CloseCode::Forbidden,
            ApplyError::Node(_) => CloseCode::StoreFailed,
        }
    }
}

/// A buffered change, its proven author, and who sent it.
struct Waiting {
    change: Change,
    by: By,
    peer: NodeName,
    bytes: usize,
}

/// Remote changes waiting for their dependencies: bounded in count, in bytes, and in bytes per
/// sending peer (so one peer cannot fill it for the others).
#[derive(Default)]
pub(super) struct CausalBuffer {
    docs: BTreeMap<DocId, BTreeMap<(Actor, u64), Waiting>>,
    count: usize,
    bytes: usize,
    by_peer: BTreeMap<NodeName, usize>,
}

impl CausalBuffer {
    /// Changes held.
    pub(super) fn len(&self) -> usize {
        self.count
    }

    /// Bytes held per sending peer.
    pub(super) fn by_peer(&self) -> &BTreeMap<NodeName, usize> {
        &self.by_peer
    }

    /// Bytes held in total, and from the peer that sent the most.
    pub(super) fn bytes(&self) -> (usize, usize) {
        (
            self.bytes,
            self.by_peer.values().copied().max().unwrap_or(0),
        )
    }

    /// Forgets what `peer` sent that still waits: its session ended, and a peer resends what
    /// this node has not acknowledged. A change nobody can complete does not stay forever.
    pub(super) fn drop_peer(&mut self, peer: &NodeName) {
        if !self.by_peer.contains_key(peer) {
            return;
        }
        let keys: Vec<(DocId, (Actor, u64))> = self
            .docs
            .iter()
            .flat_map(|(d, m)| {
                m.iter()
                    .filter(|(_, w)| w.peer == *peer)
                    .map(move |(k, _)| (d.clone(), *k))
            })
            .collect();
        for (doc, key) in keys {
            self.remove(&doc, &key);
        }
    }

    /// Forgets every change waiting for `doc` (dropped by retention).
    pub(super) fn drop_doc(&mut self, doc: &DocId) {
        for key in self.keys(doc) {
            self.remove(doc, &key);
        }
    }

    /// Holds `change` (sent by `peer`) unless already held; refuses it when a bound is reached.
    fn insert(
        &mut self,
        doc: &DocId,
        key: (Actor, u64),
        change: Change,
        by: By,
        peer: &NodeName,
        cfg: &Config,
    ) -> Result<(), ApplyError> {
        if self.docs.get(doc).is_some_and(|d| d.contains_key(&key)) {
            return Ok(());
        }
        let bytes = change.raw_bytes().len();
        let from_peer = self.by_peer.get(peer).copied().unwrap_or(0);
        let full = |limit, max| Err(ApplyError::Overloaded { limit, max });
        if self.count >= cfg.pending_changes_max {
            return full("pending_changes", cfg.pending_changes_max);
        }
        if self.bytes + bytes > cfg.pending_bytes_max {
            return full("pending_bytes", cfg.pending_bytes_max);
        }
        if from_peer + bytes > cfg.pending_peer_bytes_max {
            return full("pending_peer_bytes", cfg.pending_peer_bytes_max);
        }
        self.count += 1;
        self.bytes += bytes;
        *self.by_peer.entry(peer.clone()).or_default() += bytes;
        let waiting = Waiting {
            change,
            by,
            peer: peer.clone(),
            bytes,
        };
        self.docs
            .entry(doc.clone())
            .or_default()
            .insert(key, waiting);
        Ok(())
    }

    fn keys(&self, doc: &DocId) -> Vec<(Actor, u64)> {
        self.docs
            .get(doc)
            .map(|d| d.keys().copied().collect())
            .unwrap_or_default()
    }

    fn get(&self, doc: &DocId, key: &(Actor, u64)) -> Option<(&Change, &By)> {
        self.docs.get(doc)?.get(key).map(|w| (&w.change, &w.by))
    }

    fn remove(&mut self, doc: &DocId, key: &(Actor, u64)) {
        let Some(slot) = self.docs.get_mut(doc) else {
            return;
        };
        let Some(w) = slot.remove(key) else { return };
        if slot.is_empty() {
            self.docs.remove(doc);
        }
        self.count -= 1;
        self.bytes -= w.bytes;
        if let Some(b) = self.by_peer.get_mut(&w.peer) {
            *b -= w.bytes;
            if *b == 0 {
                self.by_peer.remove(&w.peer);
            }
        }
    }
}

impl<S: Store> Node<S> {
    /// Parses one remote change: within the size limit as sent and inflated, an Automerge
    /// change chunk Automerge can parse without a panic ([`chunk::parse`]) whose checksum is
    /// its hash, a 16-byte actor, a sequence number.
    pub(crate) fn parse_remote(&self, bytes: &[u8]) -> Result<Change, ApplyError> {
        let max = self.cfg.change_bytes_max as usize;
        let change = chunk::parse(bytes, max)?;
        schema::check_checksum(bytes, &change)?;
        self.check_remote(change)
    }

    /// Opens a received snapshot ([`crate::snapshot::open`], within this node's frame limit)
    /// into its changes, each checked as [`Node::parse_remote`] checks a received change, in
    /// a causal order; and `signed` renumbered from the snapshot's order (by actor, then
    /// sequence number) to that order. A signature naming no change is left naming none (the
    /// proof refuses it).
    pub(crate) fn parse_snapshot(
        &self,
        saved: &[u8],
        signed: &[Signed],
        room: &mut usize,
    ) -> Result<(Vec<Change>, Vec<Signed>, Automerge), ApplyError> {
        let (loaded, opened) =
            crate::snapshot::open_loaded(saved, self.cfg.frame_bytes_max as usize)?;
        // A batch's snapshots hold at most the change bytes one Changes frame could: the
        // work a frame costs this node is per change, whatever the saved form's size.
        let len = opened.iter().map(|c| c.raw_bytes().len()).sum::<usize>();
        *room = room.checked_sub(len).ok_or_else(|| {
            Refusal::Snapshot(format!(
                "the batch's snapshots hold more than the frame limit of {} bytes of changes",
                self.cfg.frame_bytes_max
            ))
        })?;
        let changes = opened
            .into_iter()
            .map(|c| {
                // The layout Automerge's change parser would have been shown: the same rules
                // hold for a change Automerge rebuilt from a document.
                chunk::check_parsed(&c)?;
                self.check_remote(c)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut by_id: Vec<usize> = (0..changes.len()).collect();
        by_id.sort_by(|&a, &b| {
            let key = |i: usize| (changes[i].actor_id().to_bytes(), changes[i].seq());
            key(a).cmp(&key(b))
        });
        let signed = signed
            .iter()
            .map(|s| Signed {
                change: by_id.get(s.change as usize).map_or(u32::MAX, |&i| i as u32),
                ..s.clone()
            })
            .collect();
        Ok((changes, signed, loaded))
    }

    /// The checks of a received change once Automerge parsed it.
    fn check_remote(&self, change: Change) -> Result<Change, ApplyError> {
        let max = self.cfg.change_bytes_max as usize;
        // Automerge keeps the inflated form: it must be within the limit too (it is stored and
        // relayed as it is).
        let len = change.raw_bytes().len();
        if len > max {
            return Err(Refusal::TooLarge { len, max }.into());
        }
        Actor::from_automerge(change.actor_id()).ok_or(Refusal::ActorLength)?;
        if change.seq() == 0 {
            return Err(Refusal::SeqZero.into());
        }
        if !change.extra_bytes().is_empty() {
            return Err(Refusal::ExtraBytes(change.extra_bytes().len()).into());
        }
        Ok(change)
    }

    /// Offers one parsed remote change whose author `by` proved: taken into `run` (applied
    /// when the run is flushed) if causally ready, ignored if held, buffered (bounded) if its
    /// dependencies are missing. `run` holds the ready changes of `doc` offered so far.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn apply_remote(
        &mut self,
        batch: &mut WriteBatch,
        run: &mut Run,
        doc: &DocId,
        change: Change,
        by: By,
        sid: SessionId,
        peer: &NodeName,
    ) -> Result<(Applied, Actor, u64), ApplyError> {
        let actor = Actor::from_automerge(change.actor_id()).ok_or(Refusal::ActorLength)?;
        if self.is_gone(doc) {
            return Ok((Applied::Gone, actor, change.seq()));
        }
        let bucket = Bucket::parse(doc);
        let pruned = self.is_pruned(doc);
        let held = self.held(run, doc, &actor);
        if change.seq() <= held {
            // A pruned document still has what it received since pruning; of what it dropped
            // it knows only the clock, so a change below it counts as a duplicate.
            let same = if pruned {
                let index = self
                    .store
                    .change_index(doc, &actor, change.seq()..=change.seq())
                    .map_err(NodeError::from)?;
                index.first().is_none_or(|(_, _, h)| *h == change.hash().0)
            } else {
                run.hashes.contains(&change.hash())
                    || self
                        .loaded_doc(doc)?
                        .get_change_meta_by_hash(&change.hash())
                        .is_some()
            };
            return if same {
                Ok((Applied::Duplicate, actor, change.seq()))
            } else {
                Err(ApplyError::Equivocation {
                    actor,
                    seq: change.seq(),
                })
            };
        }
        // An unsettled node authors nothing yet: a change under the actor it would take is an
        // earlier store's under this certificate, and settling takes a slot past it.
        if self.meta.settled && actor == self.doc_actor(doc) {
            return Err(Refusal::ClaimsOurActor.into());
        }
        let seq = change.seq();
        if !self.is_ready(run, doc, &change)? {
            // Checked on receipt, so nothing the schema refuses waits in the buffer; the rule
            // that needs the document is checked when the change becomes ready.
            schema::check_shape_in(&change, bucket.as_ref())?;
            self.pending
                .insert(doc, (actor, seq), change, by, peer, &self.cfg)?;
            return Ok((Applied::Buffered, actor, seq));
        }
        if pruned {
            // Only buckets are pruned, and rule 6 lets a bucket's changes write readings
            // alone, into the genesis' map: rule 5 holds without the document.
            let puts = schema::check_shape_in(&change, bucket.as_ref())?;
            self.apply_pruned(batch, doc, change, by, sid, (puts, peer))?;
        } else {
            self.keep_actor_order(batch, run, doc, &change)?;
            let puts = self.check_ready(batch, run, doc, &change, Some(bucket.as_ref()))?;
            self.take_into(run, doc, change, by, sid, (puts, peer))?;
        }
        let mut drained = 0;
        while let Some((next, next_by)) = self.take_ready_pending(run, doc)? {
            // A buffered change the schema refuses now is dropped (its sender's session may be
            // over) and the drain goes on. A limit ends this session: everything still waiting
            // is resent by its sender, since none of it was acknowledged.
            let taken = if pruned {
                schema::puts(&next)
                    .map_err(ApplyError::from)
                    .and_then(|puts| {
                        self.apply_pruned(batch, doc, next, next_by, sid, (puts, peer))
                    })
            } else {
                self.keep_actor_order(batch, run, doc, &next)
                    .and_then(|()| self.check_ready(batch, run, doc, &next, None))
                    .and_then(|puts| self.take_into(run, doc, next, next_by, sid, (puts, peer)))
            };
            match taken {
                Ok(()) => drained += 1,
                Err(ApplyError::Invalid(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok((Applied::New(drained), actor, seq))
    }

    /// The highest sequence number of `actor` this node holds in `doc`, counting `run`.
    fn held(&self, run: &Run, doc: &DocId, actor: &Actor) -> u64 {
        let held = self.clock(doc).map(|c| c.get(actor)).unwrap_or(0);
        held.max(run.seqs.get(actor).copied().unwrap_or(0))
    }

    fn is_ready(&mut self, run: &Run, doc: &DocId, change: &Change) -> Result<bool, NodeError> {
        let actor = Actor::from_automerge(change.actor_id()).expect("checked");
        if change.seq() != self.held(run, doc, &actor) + 1 {
            return Ok(false);
        }
        // A pruned document dropped the changes dependencies would name: its clock says what
        // it held, and a change one past it is stored and forwarded, not applied.
        if self.is_pruned(doc) {
            return Ok(true);
        }
        let am = self.loaded_doc(doc)?;
        Ok(change
            .deps()
            .iter()
            .all(|d| run.hashes.contains(d) || am.get_change_meta_by_hash(d).is_some()))
    }

    fn take_ready_pending(
        &mut self,
        run: &Run,
        doc: &DocId,
    ) -> Result<Option<(Change, By)>, NodeError> {
        for key in self.pending.keys(doc) {
            if key.1 <= self.held(run, doc, &key.0) {
                // Arrived by another path meanwhile; if it differs, the duplicate check of its
                // next delivery reports the equivocation.
                self.pending.remove(doc, &key);
                continue;
            }
            let (change, by) = self.pending.get(doc, &key).expect("listed");
            let (change, by) = (change.clone(), by.clone());
            if self.is_ready(run, doc, &change)? {
                self.pending.remove(doc, &key);
                return Ok(Some((change, by)));
            }
        }
        Ok(None)
    }

    /// Flushes `run` before `change` if the run holds its actor's previous change and
    /// `change` does not name it among its dependencies. Automerge orders a batch by
    /// dependencies alone and asserts (a panic) that each actor's changes come in sequence; a
    /// change need not name its actor's previous one (a peer's change did not, and the batch
    /// put it first), so such a change goes in a run of its own, after its predecessor.
    fn keep_actor_order(
        &mut self,
        batch: &mut WriteBatch,
        run: &mut Run,
        doc: &DocId,
        change: &Change,
    ) -> Result<(), ApplyError> {
        let actor = Actor::from_automerge(change.actor_id()).expect("checked");
        match run.last.get(&actor) {
            Some(prev) if !change.deps().contains(prev) => self.flush_run(batch, run, doc),
            _ => Ok(()),
        }
    }

    /// The schema checks of a ready change of a document this node holds whole: all of them
    /// with `shape` (`bucket`: the document is one), or rule 5 alone for a change whose shape
    /// was checked when it was buffered.
    /// Rule 5 looks objects up in the document: one that an earlier change of `run` creates is
    /// not there until the run is applied, so the run is flushed and the check made again.
    fn check_ready(
        &mut self,
        batch: &mut WriteBatch,
        run: &mut Run,
        doc: &DocId,
        change: &Change,
        shape: Option<Option<&Bucket>>,
    ) -> Result<schema::Puts, ApplyError> {
        for _ in 0..2 {
            let am = self.loaded_doc(doc)?;
            let checked = if let Some(bucket) = shape {
                schema::check_in(change, am, bucket)
            } else {
                schema::check_in_doc(change, am)
            };
            match checked {
                Err(Refusal::UnknownObject) if !run.items.is_empty() => {
                    self.flush_run(batch, run, doc)?;
                }
                other => return Ok(other?),
            }
        }
        unreachable!("the second check runs on an empty run")
    }

    /// Takes a causally ready change that passed the schema checks into `run`: checked against
    /// the limits first, so a refused change touches nothing. `puts` is what the checks found
    /// it writes, and `origin` the peer it came from: the feed's events.
    fn take_into(
        &mut self,
        run: &mut Run,
        doc: &DocId,
        change: Change,
        by: By,
        sid: SessionId,
        (puts, origin): (schema::Puts, &NodeName),
    ) -> Result<(), ApplyError> {
        let admitted = self.admit(run, doc, &change, sid)?;
        let dropped = planted!(self.cfg, DropRemoteChange) && change.seq() % 3 == 2;
        // The feed's events: readings new to this node (a reading another change already
        // brought is not new), or the change itself for a generic one.
        let (mut readings, generic) = feed_events(puts);
        if !dropped && readings.is_some() {
            let map = self.readings_map(doc).ok();
            let am = self.loaded_doc(doc)?;
            if let (Some(r), Some(map)) = (readings.as_mut(), map) {
                r.retain(|(id, _)| {
                    !run.ids.contains(id)
                        && matches!(automerge::ReadDoc::get(am, &map, id.as_str()), Ok(None))
                });
            }
        }
        if let Some(r) = &readings {
            run.ids.extend(r.iter().map(|(id, _)| id.clone()));
        }
        let actor = Actor::from_automerge(change.actor_id()).expect("checked");
        if let Admitted::NewActor { new_doc } = admitted {
            run.new_actors += 1;
            run.new_doc |= new_doc;
        }
        self.count_introduced(sid, doc, admitted);
        run.hashes.insert(change.hash());
        run.seqs.insert(actor, change.seq());
        run.last.insert(actor, change.hash());
        run.items.push(RunItem {
            change,
            by,
            readings,
            generic,
            origin: origin.clone(),
            dropped,
        });
        Ok(())
    }

    /// Applies `run` to the document in one Automerge call (the cost of applying a change
    /// one at a time grows with the document), then records what the document now holds, in
    /// order. If Automerge refuses the run, its changes are applied one at a time up to the
    /// one it refuses: what came before stays, as for a change refused alone.
    pub(crate) fn flush_run(
        &mut self,
        batch: &mut WriteBatch,
        run: &mut Run,
        doc: &DocId,
    ) -> Result<(), ApplyError> {
        self.flush_run_from(batch, run, doc, None)
    }

    /// [`Node::flush_run`] of a snapshot's last run, `whole` being the snapshot's loaded
    /// document and its number of changes. When the document held here and the run together
    /// are exactly that document (every change held and every change of the run is one of
    /// it, and they number as many), the document becomes the loaded copy rather than the run
    /// being applied to it: applying would build the same document, change by change.
    pub(crate) fn flush_run_from(
        &mut self,
        batch: &mut WriteBatch,
        run: &mut Run,
        doc: &DocId,
        whole: Option<(Automerge, usize)>,
    ) -> Result<(), ApplyError> {
        let items = std::mem::take(run).items;
        if items.is_empty() {
            return Ok(());
        }
        if let Some((mut loaded, changes)) = whole {
            let held = self.clock(doc).map_or(0, VectorClock::total);
            let has = |h: &ChangeHash| loaded.get_change_meta_by_hash(h).is_some();
            let exact = held + items.len() as u64 == changes as u64
                && items.iter().all(|i| !i.dropped && has(&i.change.hash()))
                && self.loaded_doc(doc)?.get_heads().iter().all(has);
            if exact {
                // Automerge's load gave the copy a random actor: this node writes the
                // document under its own actor for it, as every copy it loads does.
                loaded.set_actor(self.doc_actor(doc).to_automerge());
                *self.loaded_doc(doc)? = loaded;
                for item in items {
                    let events = (item.readings, item.generic);
                    self.record_remote(batch, doc, &item.change, item.by, events, &item.origin)?;
                }
                return Ok(());
            }
        }
        let am = self.loaded_doc(doc)?;
        let whole = am.apply_changes(
            items
                .iter()
                .filter(|i| !i.dropped)
                .map(|i| i.change.clone()),
        );
        let mut applied = 0;
        let mut refused = None;
        for item in &items {
            if !item.dropped && am.get_change_meta_by_hash(&item.change.hash()).is_none() {
                if whole.is_ok() {
                    refused = Some(Refusal::NotApplied);
                    break;
                }
                if let Err(e) = am.apply_changes([item.change.clone()]) {
                    refused = Some(Refusal::Refused(e.to_string()));
                    break;
                }
                if am.get_change_meta_by_hash(&item.change.hash()).is_none() {
                    refused = Some(Refusal::NotApplied);
                    break;
                }
            }
            applied += 1;
        }
        for item in items.into_iter().take(applied) {
            let events = (item.readings, item.generic);
            self.record_remote(batch, doc, &item.change, item.by, events, &item.origin)?;
        }
        match refused {
            Some(r) => Err(r.into()),
            None => Ok(()),
        }
    }

    /// Records a ready change of a pruned document (stored and forwarded, not applied: the
    /// document's content is gone). Every reading counts as new: none is held to compare with.
    fn apply_pruned(
        &mut self,
        batch: &mut WriteBatch,
        doc: &DocId,
        change: Change,
        by: By,
        sid: SessionId,
        (puts, origin): (schema::Puts, &NodeName),
    ) -> Result<(), ApplyError> {
        let admitted = self.admit(&Run::default(), doc, &change, sid)?;
        self.record_remote(batch, doc, &change, by, feed_events(puts), origin)?;
        self.count_introduced(sid, doc, admitted);
        Ok(())
    }

    /// Records a remote change and its feed events: the readings new to this node, or the
    /// change itself for a generic one; `origin` is the peer it came from.
    fn record_remote(
        &mut self,
        batch: &mut WriteBatch,
        doc: &DocId,
        change: &Change,
        by: By,
        (readings, generic): (Option<Vec<(String, String)>>, bool),
        origin: &NodeName,
    ) -> Result<(), ApplyError> {
        self.record_change(batch, doc, change, by)?;
        for r in readings.into_iter().flatten() {
            self.feed_push(batch, doc, Some(r), Some(origin));
        }
        if generic {
            self.feed_push(batch, doc, None, Some(origin));
        }
        Ok(())
    }

    /// Counts what an admitted change introduced against session `sid`'s limits.
    fn count_introduced(&mut self, sid: SessionId, doc: &DocId, admitted: Admitted) {
        if let Admitted::NewActor { new_doc } = admitted {
            if let Some(s) = self.sessions.get_mut(&sid) {
                let q = s.introduced();
                q.actors += 1;
                q.docs += usize::from(new_doc);
                *q.per_doc.entry(doc.clone()).or_default() += 1;
            }
        }
    }

    /// Checks the actor and document limits for a change received in session `sid`, counting
    /// what `run` adds before it.
    fn admit(
        &self,
        run: &Run,
        doc: &DocId,
        change: &Change,
        sid: SessionId,
    ) -> Result<Admitted, ApplyError> {
        let actor = Actor::from_automerge(change.actor_id()).expect("checked");
        let meta = self.docs.get(doc);
        if meta.is_some_and(|m| m.clock.get(&actor) > 0) || run.seqs.contains_key(&actor) {
            return Ok(Admitted::KnownActor);
        }
        let cfg = &self.cfg;
        let over = |limit, max| Err(ApplyError::Overloaded { limit, max });
        if meta.map_or(0, |m| m.clock.len()) + run.new_actors >= CLOCK_ACTORS_MAX {
            return over("doc_actors", CLOCK_ACTORS_MAX);
        }
        let new_doc = meta.is_none() && !run.new_doc;
        if let Some(s) = self.sessions.get(&sid) {
            let q = s.introduced_ref();
            let in_doc = q.per_doc.get(doc).copied().unwrap_or(0);
            if !schema::is_genesis(change) && in_doc >= cfg.session_doc_actors_max {
                return over("session_doc_actors", cfg.session_doc_actors_max);
            }
            if new_doc && q.docs >= cfg.session_docs_max {
                return over("session_docs", cfg.session_docs_max);
            }
            if q.actors >= cfg.session_actors_max {
                return over("session_actors", cfg.session_actors_max);
            }
        }
        Ok(Admitted::NewActor { new_doc })
    }
}

/// The feed's events a change's puts make: its readings, or (`true`) the change itself for a
/// generic one; nothing for the genesis.
fn feed_events(puts: schema::Puts) -> (Option<Vec<(String, String)>>, bool) {
    match puts {
        schema::Puts::Readings(r) => (Some(r), false),
        schema::Puts::Other => (None, true),
        schema::Puts::Genesis => (None, false),
    }
}

/// What admitting a change adds.
#[derive(Clone, Copy)]
enum Admitted {
    /// Its actor is already in the document's clock.
    KnownActor,
    /// A new actor (and, with `new_doc`, a new document).
    NewActor { new_doc: bool },
}
