//! Signed authorship on both sides of a session ([`crate::trust`]): proving this node's and
//! relayed changes when sending, and checking who wrote every received change, against the
//! fleet's rules, before anything of it is applied.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use automerge::Change;

use super::remote::ApplyError;
use super::{By, Event, Node, NodeError, AUTHORS_CACHED_MAX};
use crate::authz::{Access, Identity};
use crate::id::{doc_actor, DocId};
use crate::schema;
use crate::store::{Store, StoreError, StoredChange, WriteBatch, WriteOp};
use crate::sync::{Prover, SessionId};
use crate::trust::{Author, Trust, ACTOR_SLOTS, STATEMENT_BYTES_MAX};
use crate::vclock::Actor;
use crate::wire::{AuthorStatement, CloseCode, Signed, SlotAnswer, SlotQuery};

/// The verified author with node actor `na`: from the cache, or from the statement the store
/// keeps (verified again and cached). `None` when the store keeps none or it does not verify.
fn lookup<S: Store>(
    store: &S,
    trust: &Trust,
    cache: &mut BTreeMap<Actor, Arc<Author>>,
    na: &Actor,
) -> Result<Option<Arc<Author>>, StoreError> {
    if let Some(a) = cache.get(na) {
        return Ok(Some(a.clone()));
    }
    let Some(authority) = &trust.authority else {
        return Ok(None);
    };
    let Some(statement) = store.author(na)? else {
        return Ok(None);
    };
    let Ok(author) = authority.verify_statement(&statement) else {
        return Ok(None);
    };
    if author.node_actor != *na {
        return Ok(None);
    }
    let author = Arc::new(author);
    remember(cache, author.clone());
    Ok(Some(author))
}

fn remember(cache: &mut BTreeMap<Actor, Arc<Author>>, author: Arc<Author>) {
    if cache.len() >= AUTHORS_CACHED_MAX {
        cache.clear();
    }
    cache.insert(author.node_actor, author);
}

/// The node's side of [`Prover`] for one session's batches.
pub(super) struct NodeProver<'a, S: Store> {
    pub(super) store: &'a S,
    pub(super) trust: &'a Trust,
    pub(super) cache: &'a mut BTreeMap<Actor, Arc<Author>>,
    /// The documents in memory, and every document's metadata (for a snapshot's saved form).
    pub(super) loaded: &'a BTreeMap<DocId, super::Loaded>,
    pub(super) docs: &'a BTreeMap<DocId, crate::store::DocMeta>,
}

impl<S: Store> NodeProver<'_, S> {
    fn author(&mut self, na: &Actor) -> Option<Arc<Author>> {
        lookup(self.store, self.trust, self.cache, na)
            .ok()
            .flatten()
    }

    /// Whether this node signs for `author` (its key is this node's).
    fn is_mine(&self, author: &Author) -> bool {
        self.trust
            .signer
            .as_ref()
            .is_some_and(|s| s.key() == author.key)
    }
}

impl<S: Store> Prover for NodeProver<'_, S> {
    fn sealable(&mut self, change: &StoredChange) -> bool {
        let Some(na) = change.author else {
            return false;
        };
        let Some(author) = self.author(&na) else {
            return false;
        };
        change.sig.is_some() || self.is_mine(&author)
    }

    fn signature(&mut self, change: &StoredChange) -> Option<Vec<u8>> {
        if let Some(sig) = &change.sig {
            return Some(sig.clone());
        }
        let author = self.author(&change.author?)?;
        if !self.is_mine(&author) {
            return None;
        }
        Some(self.trust.signer.as_ref()?.sign(&change.hash))
    }

    fn statement(&mut self, node_actor: &Actor) -> Option<Vec<u8>> {
        self.store.author(node_actor).ok().flatten()
    }

    fn may_read(&self, peer: &Identity, doc: &DocId) -> bool {
        self.trust.rules.allows(peer, doc, Access::Read)
    }

    fn saved(&mut self, doc: &DocId) -> Option<Vec<u8>> {
        if let Some(l) = self.loaded.get(doc) {
            return Some(l.doc.save());
        }
        // Not in memory: the store's own snapshot when it covers every change (a closed
        // bucket, compacted by housekeeping, usually does), else loaded from the store for
        // this once (not kept, so a peer's full sync does not evict what this node's own work
        // keeps in memory).
        let next_order = self.docs.get(doc)?.next_order;
        let snapshot = self.store.snapshot(doc).ok()?;
        match snapshot {
            Some((covers, bytes)) if covers == next_order => Some(bytes),
            snapshot => super::load_stored_from(self.store, doc, next_order, snapshot)
                .ok()
                .map(|d| d.save()),
        }
    }
}

impl<S: Store> Node<S> {
    /// Whether the fleet's rules let `peer` hold `doc`.
    pub(super) fn peer_may_read(&self, peer: &Identity, doc: &DocId) -> bool {
        self.cfg.trust.rules.allows(peer, doc, Access::Read)
    }

    /// Whether this node may hold `doc` (a node without a fleet identity holds anything).
    pub(super) fn may_hold(&self, doc: &DocId) -> bool {
        self.cfg
            .trust
            .identity()
            .is_none_or(|me| self.cfg.trust.rules.allows(me, doc, Access::Read))
    }

    /// An `Author` message: verified, numbered in the session, or the session ends.
    pub(super) fn on_author(&mut self, sid: SessionId, st: AuthorStatement) {
        let peer = self.sessions[&sid].peer().clone();
        let refuse = |why: String| (CloseCode::Unauthorized, why);
        let verdict: Result<(Arc<Author>, Vec<u8>), (CloseCode, String)> = (|| {
            let Some(authority) = self.cfg.trust.authority.clone() else {
                return Err(refuse(
                    "this node has no fleet identity and accepts no changes".into(),
                ));
            };
            if st.0.len() > STATEMENT_BYTES_MAX {
                return Err(refuse(format!(
                    "authorship statement of {} bytes (at most {STATEMENT_BYTES_MAX})",
                    st.0.len()
                )));
            }
            let max = self.cfg.session_authors_max;
            if self.sessions[&sid].authors_in().len() >= max {
                self.events.push_back(Event::LimitExceeded {
                    peer: peer.clone(),
                    limit: "session_authors",
                });
                return Err((
                    CloseCode::Overloaded,
                    format!("limit reached: session_authors ({max})"),
                ));
            }
            let author = authority
                .verify_statement(&st.0)
                .map_err(|e| refuse(format!("an authorship statement does not verify: {e}")))?;
            let na = author.node_actor;
            let known = self.authors.contains_key(&na)
                || self
                    .store
                    .author(&na)
                    .map_err(|e| (CloseCode::StoreFailed, e.to_string()))?
                    .is_some();
            if author.revoked && !known {
                return Err(refuse(format!(
                    "the certificate of {} is revoked, and its actor {na} was not known here before",
                    author.identity
                )));
            }
            Ok((Arc::new(author), st.0))
        })();
        match verdict {
            Ok((author, statement)) => {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.add_author_in(author, statement);
                }
            }
            Err((code, reason)) => self.close_session(sid, code, &reason),
        }
    }

    /// A peer asks which slots of `q.space` this node knows spent: the answer is the highest
    /// slot statement kept of that space if it is the asking peer's own (a peer learns
    /// nothing of other members' certificates this way). One question per session.
    pub(super) fn on_slot_query(&mut self, sid: SessionId, q: SlotQuery) {
        let peer = self.sessions[&sid].peer_id().clone();
        let kept = match self.store.slot(&q.space) {
            Ok(k) => k,
            Err(e) => return self.close_session(sid, CloseCode::StoreFailed, &e.to_string()),
        };
        // Whose it is comes from the verified authors (cached; the statement was verified when
        // it was kept).
        let statement = kept.and_then(|(slot, st)| {
            let na = crate::trust::slot_actor(&q.space, slot);
            let author = lookup(&self.store, &self.cfg.trust, &mut self.authors, &na)
                .ok()
                .flatten()?;
            let theirs = author.identity.name == peer.name
                && author.slot.is_some_and(|s| s.space == q.space);
            theirs.then_some(AuthorStatement(st))
        });
        let gate = self.commit_seq;
        let s = self.sessions.get_mut(&sid).expect("session exists");
        if !s.answer_slot(gate, SlotAnswer { statement }) {
            self.close_session(sid, CloseCode::Unexpected, "a second slot query");
        }
    }

    /// The answer to this node's `SlotQuery`: an unsettled node takes the slot after the
    /// highest one named (its own current slot when none is named or that is higher), and
    /// authors from then on. A statement that is not of this node's certificate ends the
    /// session. A settled node checks the answer for another store under its certificate.
    pub(super) fn on_slot_answer(&mut self, sid: SessionId, a: SlotAnswer) {
        let peer = self.sessions[&sid].peer().clone();
        if !self
            .sessions
            .get_mut(&sid)
            .expect("session exists")
            .take_slot_question()
        {
            return self.close_session(sid, CloseCode::Unexpected, "a slot answer not asked for");
        }
        let named = match a.statement {
            None => None,
            Some(st) => match self.verify_own_slot(&st.0) {
                Ok(named) => Some(named),
                Err(why) => return self.close_session(sid, CloseCode::Unauthorized, &why),
            },
        };
        if self.meta.settled {
            if let Some((slot, key)) = named {
                let mine = self.cfg.trust.signer.as_ref().map(|s| s.key());
                if slot >= self.meta.actor_slot && mine.is_some_and(|k| k != key) {
                    self.events.push_back(Event::SlotConflict { peer, slot });
                }
            }
            return;
        }
        // Past the slot named, and past any slot of this certificate whose changes this node
        // took meanwhile (their statements are kept with them).
        let kept = match self.store.slot(&self.meta.slot_space) {
            Ok(k) => k.map(|(k, _)| k),
            Err(e) => return self.close_session(sid, CloseCode::StoreFailed, &e.to_string()),
        };
        let slot = [named.map(|(n, _)| n), kept]
            .into_iter()
            .flatten()
            .fold(self.meta.actor_slot, |s, n| s.max(n.saturating_add(1)))
            .min(ACTOR_SLOTS);
        if self.settle(slot).is_err() {
            return;
        }
        self.events.push_back(Event::Settled { peer, slot });
        // What waited in the journal goes into the documents now, within the settled bound.
        if let Err(e) = self.fold_journal() {
            self.events.push_back(Event::FoldFailed {
                reason: e.to_string(),
            });
        }
    }

    /// The slot (and authoring key) a statement binds, if it is a slot of this node's own
    /// certificate.
    fn verify_own_slot(&self, st: &[u8]) -> Result<(u32, Vec<u8>), String> {
        if st.len() > STATEMENT_BYTES_MAX {
            return Err(format!(
                "a slot answer's statement of {} bytes (at most {STATEMENT_BYTES_MAX})",
                st.len()
            ));
        }
        let Some(authority) = &self.cfg.trust.authority else {
            return Err("this node has no fleet identity".into());
        };
        let author = authority
            .verify_statement(st)
            .map_err(|e| format!("a slot answer's statement does not verify: {e}"))?;
        match author.slot {
            Some(s) if s.space == self.meta.slot_space && author.identity.name == self.cfg.name => {
                Ok((s.index, author.key))
            }
            _ => Err(format!(
                "a slot answer names a statement of {}, not one of this node's certificate",
                author.identity
            )),
        }
    }

    /// Takes `slot` as settled: records it, binds this node's statement to its actor, and
    /// lets the journal fold. Documents in memory are dropped (they are loaded again with the
    /// new actor).
    fn settle(&mut self, slot: u32) -> Result<(), NodeError> {
        let meta = crate::store::NodeMeta {
            actor_slot: slot,
            settled: true,
            ..self.meta.clone()
        };
        let actor = super::node_actor(&self.cfg.name, &meta);
        let mut ops = vec![WriteOp::PutNodeMeta(meta.clone())];
        super::own_statement(&self.store, &self.cfg.trust, &meta, actor, &mut ops)?;
        self.commit(WriteBatch { ops })?;
        self.meta = meta;
        self.actor = actor;
        self.loaded.clear();
        Ok(())
    }

    /// Keeps (in `batch`, and in the cache) the statements behind `bys` this node did not
    /// keep yet: a statement is stored only once a change it proves is, so statements a peer
    /// merely sends grow nothing.
    pub(super) fn keep_authors(&mut self, sid: SessionId, batch: &mut WriteBatch, bys: &[By]) {
        for b in bys {
            let By::Remote { author, .. } = b else {
                continue;
            };
            if self.authors.contains_key(author) {
                continue;
            }
            let Some((a, statement)) = self.sessions[&sid]
                .authors_in()
                .iter()
                .find(|(a, _)| a.node_actor == *author)
                .cloned()
            else {
                continue;
            };
            if !matches!(self.store.author(author), Ok(Some(_))) {
                // The highest slot of a certificate is what a peer asking for it learns (a
                // store read that fails leaves the kept slot as it is).
                if let Some(slot) = a.slot {
                    let _ = super::raise_slot(&self.store, &mut batch.ops, slot, &statement);
                }
                batch.push(WriteOp::PutAuthor {
                    node_actor: *author,
                    statement,
                });
            }
            remember(&mut self.authors, a);
        }
    }

    /// Who wrote each of `changes` (one section of a Changes message for `doc`), from the
    /// section's signatures: every change but the genesis must be, or be an ancestor within
    /// the section of, a change of the same actor its author signed; the actor must be the
    /// author's for `doc`; the author's rules must let it write `doc`; and this node must be
    /// allowed to hold `doc`.
    pub(super) fn prove(
        &mut self,
        sid: SessionId,
        doc: &DocId,
        changes: &[Change],
        signed: &[Signed],
    ) -> Result<Vec<By>, ApplyError> {
        let peer = self.sessions[&sid].peer().clone();
        if !self.may_hold(doc) {
            return Err(ApplyError::Forbidden(format!(
                "{peer} sent {doc}, which this node may not hold under the fleet's rules"
            )));
        }
        let Some(authority) = self.cfg.trust.authority.clone() else {
            return Err(ApplyError::Unauthorized(
                "this node has no fleet identity and accepts no changes".into(),
            ));
        };
        // A change sent twice in one section is proven once: its copies share its author.
        let mut index: HashMap<automerge::ChangeHash, usize> = HashMap::new();
        for (i, c) in changes.iter().enumerate() {
            index.entry(c.hash()).or_insert(i);
        }
        let mut by: Vec<Option<By>> = vec![None; changes.len()];
        // (actor, change) pairs walked: bounded by the section's changes times its actors.
        let mut seen: std::collections::HashSet<(Actor, usize)> = std::collections::HashSet::new();
        for s in signed {
            let i = s.change as usize;
            let Some(c) = changes.get(i) else {
                return Err(ApplyError::Unauthorized(format!(
                    "a signature names change {i} of {} in {doc}",
                    changes.len()
                )));
            };
            let actor =
                Actor::from_automerge(c.actor_id()).expect("parsed changes have 16-byte actors");
            let Some(author) = self.sessions[&sid]
                .authors_in()
                .get(s.author as usize)
                .map(|(a, _)| a.clone())
            else {
                return Err(ApplyError::Unauthorized(format!(
                    "change {actor}:{} of {doc} names author {}, which {peer} has not sent",
                    c.seq(),
                    s.author
                )));
            };
            if schema::is_genesis(c) || doc_actor(author.node_actor, doc) != actor {
                return Err(ApplyError::Unauthorized(format!(
                    "change {actor}:{} of {doc}, relayed by {peer}, claims {} as its author, whose actor for {doc} it is not",
                    c.seq(),
                    author.identity
                )));
            }
            if !authority.verify_change(&author, &c.hash().0, &s.sig) {
                return Err(ApplyError::Unauthorized(format!(
                    "the signature of change {actor}:{} of {doc}, relayed by {peer}, is not {}'s",
                    c.seq(),
                    author.identity
                )));
            }
            if !self
                .cfg
                .trust
                .rules
                .allows(&author.identity, doc, Access::Write)
            {
                return Err(ApplyError::Forbidden(format!(
                    "{} may not write {doc} under the fleet's rules (change {actor}:{} relayed by {peer})",
                    author.identity,
                    c.seq()
                )));
            }
            by[i] = Some(By::Remote {
                author: author.node_actor,
                sig: Some(s.sig.clone()),
            });
            // Every change of this actor this one descends from (within the section) is the
            // author's too: a change's hash covers its dependencies' hashes. A change another
            // signature of this actor reached was walked below already.
            let mut stack = vec![i];
            while let Some(k) = stack.pop() {
                if !seen.insert((actor, k)) {
                    continue;
                }
                let ck = &changes[k];
                if by[k].is_none() && Actor::from_automerge(ck.actor_id()) == Some(actor) {
                    by[k] = Some(By::Remote {
                        author: author.node_actor,
                        sig: None,
                    });
                }
                stack.extend(ck.deps().iter().filter_map(|d| index.get(d).copied()));
            }
        }
        let proven: HashMap<automerge::ChangeHash, Actor> = changes
            .iter()
            .zip(&by)
            .filter_map(|(c, b)| match b {
                Some(By::Remote { author, .. }) => Some((c.hash(), *author)),
                _ => None,
            })
            .collect();
        for (c, b) in changes.iter().zip(by.iter_mut()) {
            if b.is_none() {
                if let Some(author) = proven.get(&c.hash()) {
                    *b = Some(By::Remote {
                        author: *author,
                        sig: None,
                    });
                }
            }
        }
        changes
            .iter()
            .zip(by)
            .map(|(c, b)| match b {
                Some(b) => Ok(b),
                None if schema::is_genesis(c) => Ok(By::Genesis),
                None => Err(ApplyError::Unauthorized(format!(
                    "no signature proves who wrote change {}:{} of {doc}, relayed by {peer}",
                    Actor::from_automerge(c.actor_id())
                        .map_or_else(|| "?".to_string(), |a| a.to_string()),
                    c.seq()
                ))),
            })
            .collect()
    }
}
