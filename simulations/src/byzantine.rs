//! Byzantine nodes (`--byzantine K`): the K highest-numbered nodes run the real core but, while
//! faults run, also attack every peer they reach: random and mutated frames, every kind of
//! change the schema refuses, forgeries under other nodes' actors, floods of actors, documents
//! and changes with missing dependencies, and stretches of never reading. When the faults stop
//! they are cut off for good (a hostile device unplugged), and the checkers judge the honest
//! nodes alone: they converge among themselves, lose no acknowledged reading, never panic, and
//! stay within their limits.
//!
//! In every topology a node links to some lower-numbered node, so the honest nodes (the lowest
//! numbers) stay connected without the hostile ones.

use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, Change, ObjType, ReadDoc, ROOT};
use edgesync_proto::doc::{sensor_genesis, READINGS_KEY};
use edgesync_proto::schema::OBJECT_DEPTH_MAX;
use edgesync_proto::trust::Signer;
use edgesync_proto::vclock::CLOCK_ACTORS_MAX;
use edgesync_proto::wire::{AuthorStatement, ChangeBytes, Changes, DocChanges, Message, Signed};
use edgesync_proto::{Actor, DocId, Reading, Store};
use rand::RngExt;

use crate::sim::{Ev, Sim, HOSTILE_SITE};

/// Mean time between two attacks of one hostile node.
const ATTACK_INTERVAL_MS: u64 = 400;
/// Changes per hostile frame (keeps every frame under the smallest frame limit).
const CHANGES_PER_FRAME: usize = 24;

/// What a hostile node does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attack {
    Garbage,
    DeleteReadings,
    ReplaceReadings,
    OverwriteReading,
    InvalidReading,
    NonCanonicalReading,
    MixedReadings,
    Deep,
    Bomb,
    GenesisActor,
    Forge,
    ForgeStatement,
    Trespass,
    ActorFlood,
    DocFlood,
    MissingDeps,
    Deaf,
}

const ATTACKS: [Attack; 17] = [
    Attack::Garbage,
    Attack::DeleteReadings,
    Attack::ReplaceReadings,
    Attack::OverwriteReading,
    Attack::InvalidReading,
    Attack::NonCanonicalReading,
    Attack::MixedReadings,
    Attack::Deep,
    Attack::Bomb,
    Attack::GenesisActor,
    Attack::Forge,
    Attack::ForgeStatement,
    Attack::Trespass,
    Attack::ActorFlood,
    Attack::DocFlood,
    Attack::MissingDeps,
    Attack::Deaf,
];

/// Nesting of the deep attack: one past what the schema allows.
const DEEP: usize = OBJECT_DEPTH_MAX + 1;

impl Sim {
    /// True for the hostile nodes of this run.
    pub(crate) fn is_byzantine(&self, i: usize) -> bool {
        i >= self.plan.nodes - self.plan.byzantine
    }

    /// Starts every hostile node's attacks. Floods only where the links can carry what they
    /// leave the honest nodes to relay (two of each, past the session limits) well within
    /// the liveness bound; elsewhere the other attacks run.
    pub(crate) fn schedule_attacks(&mut self) {
        let k = &self.plan.knobs;
        let flooded = 4.0 * (k.core.session_doc_actors_max + k.core.session_docs_max) as f64;
        let floods = if k.link_changes_per_s * 10.0 >= flooded {
            2
        } else {
            0
        };
        for i in (self.plan.nodes - self.plan.byzantine)..self.plan.nodes {
            self.nodes[i].floods_left = floods;
            let d = self.next_delay(ATTACK_INTERVAL_MS);
            self.at(d, Ev::Attack { node: i });
        }
    }

    /// A hostile node attacks one of its connections, then schedules its next attack.
    pub(crate) fn attack(&mut self, i: usize) {
        if !self.faults_on {
            return;
        }
        let d = self.next_delay(ATTACK_INTERVAL_MS);
        self.at(d, Ev::Attack { node: i });
        let conns: Vec<u64> = self.nodes[i].sessions.values().copied().collect();
        if conns.is_empty() || self.nodes[i].node.is_none() {
            return;
        }
        let conn = conns[self.rng.random_range(0..conns.len())];
        let mut attack = ATTACKS[self.rng.random_range(0..ATTACKS.len())];
        if matches!(attack, Attack::ActorFlood | Attack::DocFlood) {
            if self.nodes[i].floods_left == 0 {
                attack = Attack::Garbage;
            } else {
                self.nodes[i].floods_left -= 1;
            }
        }
        let frames = match attack {
            Attack::Garbage => vec![self.garbage_frame()],
            Attack::Deaf => {
                let until = self.now + self.rng.random_range(1000..=20_000);
                self.nodes[i].deaf_until = until;
                Vec::new()
            }
            _ => {
                let victim = self.net.conns[&conn]
                    .ends
                    .iter()
                    .map(|(node, _)| *node)
                    .find(|node| *node != i)
                    .expect("two ends");
                self.hostile_changes(i, conn, attack, victim)
            }
        };
        self.log(
            Some(i),
            format_args!("attack {attack:?}: {} frames on conn {conn}", frames.len()),
        );
        for f in frames {
            self.send(conn, i, f);
        }
    }

    /// A frame from hostile node `i`, possibly mutated on its way out (a flipped byte, a cut).
    pub(crate) fn maybe_mutate(&mut self, i: usize, mut frame: Vec<u8>) -> Vec<u8> {
        if !self.faults_on || !self.is_byzantine(i) || !self.rng.random_bool(0.03) {
            return frame;
        }
        let at = self.rng.random_range(0..frame.len());
        if self.rng.random_bool(0.5) {
            frame[at] ^= 1 << self.rng.random_range(0..8u32);
        } else {
            frame.truncate(at.max(1));
        }
        frame
    }

    /// True while hostile node `i` does not read what it is sent.
    pub(crate) fn is_deaf(&self, i: usize) -> bool {
        self.faults_on && self.is_byzantine(i) && self.now < self.nodes[i].deaf_until
    }

    /// When the faults stop, the hostile nodes are cut off for good.
    pub(crate) fn cut_off_byzantine(&mut self) {
        let hostile: Vec<usize> = (0..self.plan.nodes)
            .filter(|i| self.is_byzantine(*i))
            .collect();
        self.net.cut.extend(hostile);
        let conns: Vec<u64> = self
            .net
            .conns
            .iter()
            .filter(|(_, c)| c.ends.iter().any(|(node, _)| self.is_byzantine(*node)))
            .map(|(id, _)| *id)
            .collect();
        for conn in conns {
            self.drop_conn(conn, "hostile node cut off");
        }
    }

    /// A frame of random bytes behind a plausible length prefix.
    fn garbage_frame(&mut self) -> Vec<u8> {
        let len = self.rng.random_range(1..=64usize);
        let mut f = (len as u32).to_be_bytes().to_vec();
        f.extend((0..len).map(|_| self.rng.random::<u8>()));
        f
    }

    /// Hostile node `i`'s `k`-th node actor: a fleet member may sign statements for as many
    /// as it likes. With a slot-bound certificate, seven in eight are its slot actors (other
    /// than slot 0, which its own core writes under: those statements verify) and the rest
    /// are not (those statements are refused); with one from before slots, any actor binds.
    fn hostile_actor(&self, i: usize, k: u64) -> Actor {
        if let Some(space) = self.hostile_signer(i).slot_space() {
            if k % 8 != 7 {
                let slots = u64::from(edgesync_proto::trust::ACTOR_SLOTS - 1);
                return edgesync_proto::trust::slot_actor(&space, 1 + (k % slots) as u32);
            }
        }
        let mut h = blake3::Hasher::new_derive_key("edgesync-sim hostile node actor");
        h.update(self.nodes[i].name.as_str().as_bytes());
        h.update(&k.to_be_bytes());
        let mut a = [0u8; 16];
        a.copy_from_slice(&h.finalize().as_bytes()[..16]);
        Actor(a)
    }

    /// The Automerge actor of hostile node `i`'s `k`-th node actor in `doc`.
    fn hostile_doc_actor(&self, i: usize, k: u64, doc: &DocId) -> ActorId {
        edgesync_proto::id::doc_actor(self.hostile_actor(i, k), doc).to_automerge()
    }

    /// Hostile node `i`'s signer (it holds a valid fleet identity).
    fn hostile_signer(&self, i: usize) -> std::sync::Arc<dyn Signer> {
        crate::sim::fleet(&self.plan)
            .trust(self.nodes[i].identity.clone(), crate::sim::rules())
            .signer
            .expect("a member")
    }

    /// A fresh node actor number for hostile node `i`.
    fn fresh_k(&mut self) -> u64 {
        self.rng.random_range(0..1u64 << 40)
    }

    /// Changes frames carrying the attack's changes on connection `conn`.
    fn hostile_changes(
        &mut self,
        i: usize,
        conn: u64,
        attack: Attack,
        victim: usize,
    ) -> Vec<Vec<u8>> {
        match attack {
            Attack::Forge | Attack::ForgeStatement => {
                let Some(doc) = self.pick_doc(i, false).map(|(d, _)| d) else {
                    return Vec::new();
                };
                return self.forge(i, conn, victim, &doc, attack == Attack::ForgeStatement);
            }
            Attack::Trespass => return self.trespass(i, conn),
            _ => {}
        }
        // Everything else is written under the hostile node's own node actors, into its own
        // documents (the only ones the rules let it write), so that each attack reaches the
        // check it is aimed at.
        let sensor_only = matches!(
            attack,
            Attack::DeleteReadings
                | Attack::ReplaceReadings
                | Attack::OverwriteReading
                | Attack::InvalidReading
                | Attack::NonCanonicalReading
                | Attack::MixedReadings
        );
        let Some((doc, am)) = self.own_doc(i, sensor_only) else {
            return Vec::new();
        };
        let k = self.fresh_k();
        let mut am = am.with_actor(self.hostile_doc_actor(i, k, &doc));
        let changes: Vec<(DocId, Vec<u8>)> = match attack {
            Attack::ActorFlood => {
                let n = self.plan.knobs.core.session_doc_actors_max + 4;
                (0..n)
                    .map(|j| {
                        let a = self.hostile_doc_actor(i, k + 1 + j as u64, &doc);
                        let mut fork = am.fork().with_actor(a);
                        let c = edit(&mut fork, |tx| put_root(tx, "flood", j as i64));
                        (doc.clone(), c)
                    })
                    .collect()
            }
            Attack::DocFlood => {
                let n = self.plan.knobs.core.session_docs_max + 4;
                let tag: u32 = self.rng.random();
                (0..n)
                    .map(|j| {
                        let d = DocId::new(format!("{HOSTILE_SITE}/flood/{tag:08x}/{j}"))
                            .expect("valid");
                        let mut fresh =
                            Automerge::new().with_actor(self.hostile_doc_actor(i, k, &d));
                        let c = edit(&mut fresh, |tx| put_root(tx, "flood", j as i64));
                        (d, c)
                    })
                    .collect()
            }
            Attack::MissingDeps => (0..self.rng.random_range(1..=64usize))
                .map(|j| {
                    let a = self.hostile_doc_actor(i, k + 1 + j as u64, &doc);
                    let mut fork = am.fork().with_actor(a);
                    edit(&mut fork, |tx| put_root(tx, "first", j as i64));
                    (doc.clone(), edit(&mut fork, |tx| put_root(tx, "orphan", 1)))
                })
                .collect(),
            _ => vec![(
                doc.clone(),
                schema_breaker(&mut am, attack, self.rng.random()),
            )],
        };
        let signer = self.hostile_signer(i);
        let authors: Vec<(Actor, Vec<u8>)> =
            (k..=k + 1 + self.plan.knobs.core.session_doc_actors_max as u64 + 64)
                .map(|j| {
                    let na = self.hostile_actor(i, j);
                    (na, signer.statement(&na))
                })
                .collect();
        self.signed_frames(i, conn, changes, &authors, &*signer, false)
    }

    /// A document of hostile node `i`'s own site (a sensor document when `sensor`), made by an
    /// ingest on its own core if it has none yet.
    fn own_doc(&mut self, i: usize, sensor: bool) -> Option<(DocId, Automerge)> {
        let now = self.node_now(i);
        let stream = DocId::new(format!(
            "{HOSTILE_SITE}/s-{}",
            self.rng.random_range(0..4u32)
        ))
        .expect("valid");
        let generic = DocId::new(format!(
            "{HOSTILE_SITE}/g-{}",
            self.rng.random_range(0..4u32)
        ))
        .expect("valid");
        let as_sensor = sensor || self.rng.random_bool(0.5);
        let n = self.nodes[i].node.as_mut()?;
        let doc = if as_sensor {
            let r =
                Reading::from_json(format!("h-{now}"), now as i64, &serde_json::json!({"v": 1}))
                    .expect("valid");
            n.ingest(&stream, &[r], now)
                .ok()
                .and_then(|mut out| out.docs.pop())
        } else {
            n.patch(&generic, &serde_json::json!({"h": now}), now)
                .ok()
                .map(|_| generic)
        };
        let am = doc
            .as_ref()
            .and_then(|d| n.with_doc(d, |a| a.fork()).ok().flatten());
        // The write goes through the node's bookkeeping like any other call, refused or not
        // (a failed write poisons the node, and the supervisor restarts it).
        self.after_call(i);
        Some((doc?, am?))
    }

    /// A document of node `i` it holds from its peers, with its state.
    fn pick_doc(&mut self, i: usize, sensor_only: bool) -> Option<(DocId, Automerge)> {
        let n = self.nodes[i].node.as_mut()?;
        let docs: Vec<DocId> = n
            .docs()
            .map(|(d, _)| d.clone())
            .filter(|d| !d.as_str().starts_with(HOSTILE_SITE))
            .collect();
        let candidates: Vec<(DocId, Automerge)> = docs
            .into_iter()
            .filter_map(|d| {
                let am = n.with_doc(&d, |a| a.fork()).ok().flatten()?;
                let sensor = edgesync_proto::doc::kind_of(&am) == edgesync_proto::DocKind::Sensor;
                (!sensor_only || sensor).then_some((d, am))
            })
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let k = self.rng.random_range(0..candidates.len());
        candidates.into_iter().nth(k)
    }

    /// A change under another node's actor (one the victim peer already holds changes of):
    /// presented with the hostile node's own statement and signature, or (`with_statement`)
    /// with the real author's statement, which the hostile node keeps as any relay does, and
    /// a signature it made itself. Both must be refused as unauthorized.
    fn forge(
        &mut self,
        i: usize,
        conn: u64,
        victim: usize,
        doc: &DocId,
        with_statement: bool,
    ) -> Vec<Vec<u8>> {
        let peer = self.peer_names[victim].clone();
        let k = self.fresh_k();
        let own_na = self.hostile_actor(i, k);
        let signer = self.hostile_signer(i);
        let Some(n) = self.nodes[i].node.as_mut() else {
            return Vec::new();
        };
        let Some(changes) = n.with_doc(doc, |a| a.get_changes(&[])).ok().flatten() else {
            return Vec::new();
        };
        let held = n.receipts(&peer).and_then(|r| r.clocks.get(doc)).cloned();
        let genesis = sensor_genesis().actor_id().clone();
        let victims: Vec<&Change> = changes
            .iter()
            .filter(|c| *c.actor_id() != genesis)
            .collect();
        if victims.is_empty() {
            return Vec::new();
        }
        let real = victims[self.rng.random_range(0..victims.len())];
        let Some(base) = n
            .with_doc(doc, |a| a.fork_at(real.deps()).ok())
            .ok()
            .flatten()
            .flatten()
        else {
            return Vec::new();
        };
        // At a sequence number the victim holds (an equivocation), or one past the actor's last
        // (a new change in another's name).
        let seq_held = held.is_some_and(|h| {
            edgesync_proto::Actor::from_automerge(real.actor_id())
                .is_some_and(|a| h.get(&a) >= real.seq())
        });
        let mut fork = base.with_actor(real.actor_id().clone());
        let c = edit(&mut fork, |tx| put_root(tx, "forged", real.seq() as i64));
        let statement = if with_statement {
            let Some(author) =
                edgesync_proto::Actor::from_automerge(real.actor_id()).and_then(|a| {
                    let order = n.store().change_index(doc, &a, 1..=1).ok()?.first()?.1;
                    n.store().change_at(doc, order).ok()??.author
                })
            else {
                return Vec::new();
            };
            match n.store().author(&author) {
                Ok(Some(st)) => (author, st),
                _ => return Vec::new(),
            }
        } else {
            (own_na, signer.statement(&own_na))
        };
        self.log(
            Some(i),
            format_args!(
                "forging {} (seq held by the victim: {seq_held})",
                real.actor_id()
            ),
        );
        // The signature is the hostile node's own, whatever statement it names.
        self.signed_frames(
            i,
            conn,
            vec![(doc.clone(), c)],
            &[statement],
            &*signer,
            true,
        )
    }

    /// Writes under the hostile node's own actor into documents its rules do not let it write:
    /// one it may read (`site-0/..`, `app/..`) and one it may not even hold (`site-1/..`).
    fn trespass(&mut self, i: usize, conn: u64) -> Vec<Vec<u8>> {
        let k = self.fresh_k();
        let signer = self.hostile_signer(i);
        let na = self.hostile_actor(i, k);
        let target = match self.pick_doc(i, false) {
            Some((d, am)) if self.rng.random_bool(0.5) => Some((d, am)),
            _ => None,
        };
        let (doc, am) = match target {
            Some(t) => t,
            None => {
                let d = DocId::new(format!("site-1/sensor-{}", self.rng.random_range(0..8u32)))
                    .expect("valid");
                (d, Automerge::new())
            }
        };
        let mut am = am.with_actor(self.hostile_doc_actor(i, k, &doc));
        let c = edit(&mut am, |tx| put_root(tx, "trespass", k as i64));
        self.signed_frames(
            i,
            conn,
            vec![(doc, c)],
            &[(na, signer.statement(&na))],
            &*signer,
            false,
        )
    }

    /// Frames presenting `changes` as hostile node `i` would on `conn`: an Author message for
    /// each of `authors` (numbered after the Author frames the connection already carried
    /// from it), then Changes frames with a signature (by `signer`) for every change whose
    /// actor one of them derives, or, to `forge`, for every change as by the first author.
    fn signed_frames(
        &mut self,
        i: usize,
        conn: u64,
        changes: Vec<(DocId, Vec<u8>)>,
        authors: &[(Actor, Vec<u8>)],
        signer: &dyn Signer,
        forge: bool,
    ) -> Vec<Vec<u8>> {
        let changes: Vec<(DocId, Vec<u8>)> =
            changes.into_iter().filter(|(_, c)| !c.is_empty()).collect();
        let parsed: Vec<Option<Change>> = changes
            .iter()
            .map(|(_, c)| Change::try_from(c.as_slice()).ok())
            .collect();
        let derives = |na: &Actor, d: &DocId, ch: &Change| {
            edgesync_proto::Actor::from_automerge(ch.actor_id())
                == Some(edgesync_proto::id::doc_actor(*na, d))
        };
        let mut frames = Vec::new();
        let mut numbers: Vec<(Actor, u32)> = Vec::new();
        let base = self.net.authors_sent(conn, i);
        for (j, (na, statement)) in authors.iter().enumerate() {
            let used = (forge && j == 0)
                || changes
                    .iter()
                    .zip(&parsed)
                    .any(|((d, _), ch)| ch.as_ref().is_some_and(|ch| derives(na, d, ch)));
            if !used {
                continue;
            }
            numbers.push((*na, base + numbers.len() as u32));
            frames.push(Message::Author(AuthorStatement(statement.clone())).to_frame());
        }
        // Each change with its parse (`None`: bytes that are no change, sent unsigned).
        type Parsed = ((DocId, Vec<u8>), Option<Change>);
        let pairs: Vec<Parsed> = changes.into_iter().zip(parsed).collect();
        for (k, chunk) in pairs.chunks(CHANGES_PER_FRAME).enumerate() {
            let mut docs: Vec<DocChanges> = Vec::new();
            for ((doc, bytes), ch) in chunk {
                if docs.last().is_none_or(|dc| dc.doc != *doc) {
                    docs.push(DocChanges {
                        doc: doc.clone(),
                        changes: Vec::new(),
                        signed: Vec::new(),
                    });
                }
                let dc = docs.last_mut().expect("pushed");
                let index = dc.changes.len() as u32;
                dc.changes.push(ChangeBytes(bytes.clone()));
                let Some(ch) = ch else { continue };
                let author = if forge {
                    numbers.first()
                } else {
                    numbers.iter().find(|(na, _)| derives(na, doc, ch))
                };
                if let Some((_, number)) = author {
                    dc.signed.push(Signed {
                        change: index,
                        author: *number,
                        sig: signer.sign(&ch.hash().0),
                    });
                }
            }
            // Batch numbers far from the hostile node's own, so its core ignores the Acks.
            let batch = (1 << 40) + k as u64;
            frames.push(Message::Changes(Changes { batch, docs }).to_frame());
        }
        frames
    }
}

/// Commits one transaction made by `f` and returns the change's bytes.
fn edit(am: &mut Automerge, f: impl FnOnce(&mut automerge::transaction::Transaction)) -> Vec<u8> {
    let mut tx = am.transaction();
    f(&mut tx);
    tx.commit();
    am.get_last_local_change()
        .map(|c| c.raw_bytes().to_vec())
        .unwrap_or_default()
}

fn put_root(tx: &mut automerge::transaction::Transaction, key: &str, v: i64) {
    tx.put(ROOT, key, v).expect("put on the root");
}

/// One change that breaks a rule of `proto::schema` in the way `attack` names.
fn schema_breaker(am: &mut Automerge, attack: Attack, salt: u32) -> Vec<u8> {
    let readings = am.get(ROOT, READINGS_KEY).ok().flatten().map(|(_, id)| id);
    let body = |id: &str, ts: i64| {
        Reading::from_json(id, ts, &serde_json::json!({ "v": salt }))
            .expect("a valid reading")
            .encode()
    };
    let id = format!("hostile-{salt}");
    match attack {
        Attack::DeleteReadings => edit(am, |tx| tx.delete(ROOT, READINGS_KEY).expect("delete")),
        Attack::ReplaceReadings => edit(am, |tx| put_root(tx, READINGS_KEY, 0)),
        Attack::OverwriteReading | Attack::InvalidReading | Attack::NonCanonicalReading => {
            let Some(map) = readings else {
                return Vec::new();
            };
            let existing = am.keys(&map).next();
            edit(am, |tx| {
                let (key, value) = match (attack, existing) {
                    (Attack::OverwriteReading, Some(k)) => (k.clone(), body(&k, 1)),
                    (Attack::InvalidReading, _) => (id.clone(), "{not json".to_string()),
                    _ => (id.clone(), format!(" {}", body(&id, 1))),
                };
                tx.put(&map, key.as_str(), value).expect("put");
            })
        }
        Attack::MixedReadings => {
            let Some(map) = readings else {
                return Vec::new();
            };
            edit(am, |tx| {
                tx.put(&map, id.as_str(), body(&id, 1)).expect("put");
                put_root(tx, "also", 1);
            })
        }
        Attack::Deep => edit(am, |tx| {
            let mut obj = ROOT;
            for _ in 0..DEEP {
                obj = tx.put_object(&obj, "deep", ObjType::Map).expect("nest");
            }
        }),
        Attack::Bomb => {
            let mut c = {
                let mut tx = am.transaction();
                tx.put(ROOT, "zeros", "0".repeat(200_000)).expect("put");
                tx.commit();
                am.get_last_local_change().expect("committed")
            };
            c.bytes().to_vec()
        }
        Attack::GenesisActor => {
            am.set_actor(sensor_genesis().actor_id().clone());
            edit(am, |tx| put_root(tx, "genesis-says", 1))
        }
        _ => Vec::new(),
    }
}

/// What the checkers require of an honest node at every durable point: within its limits.
pub(crate) fn limits_violation(sim: &Sim, i: usize) -> Option<String> {
    let n = sim.nodes[i].node.as_ref()?;
    let cfg = n.config();
    let (bytes, from_one) = n.pending_bytes();
    if n.pending_changes() > cfg.pending_changes_max
        || bytes > cfg.pending_bytes_max
        || from_one > cfg.pending_peer_bytes_max
    {
        return Some(format!("causal buffer past its bounds: {bytes} bytes"));
    }
    for (doc, clock) in n.docs() {
        if clock.len() > CLOCK_ACTORS_MAX {
            return Some(format!("{doc} has {} actors", clock.len()));
        }
    }
    // An unsettled node journals up to its own bound and folds nothing until a peer answers.
    if !n.is_settled() {
        if n.journal_len() > cfg.unsettled_readings_max {
            return Some(format!("{} readings journaled unsettled", n.journal_len()));
        }
        return None;
    }
    if n.journal_len() > cfg.journal_readings_max {
        return Some(format!("{} readings journaled", n.journal_len()));
    }
    // A reading is folded at most `journal_fold_ms` after the journal stopped being empty (the
    // node's timer brings it then; a second of slack for the timer's turn). Timed by the
    // simulator, not by the node's own idea of when it is due.
    let now = sim.node_now(i);
    if let Some(since) = sim.nodes[i].journal_since {
        if since + cfg.journal_fold_ms + 1_000 < now {
            return Some(format!(
                "readings journaled since {since} not folded at {now}"
            ));
        }
    }
    None
}
