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
use edgesync_proto::vclock::CLOCK_ACTORS_MAX;
use edgesync_proto::wire::{ChangeBytes, Changes, DocChanges, Message};
use edgesync_proto::{DocId, Reading};
use rand::RngExt;

use crate::sim::{Ev, Sim};

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
    ActorFlood,
    DocFlood,
    MissingDeps,
    Deaf,
}

const ATTACKS: [Attack; 15] = [
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
                self.hostile_changes(i, attack, victim)
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

    /// A fresh actor nobody else uses.
    fn fresh_actor(&mut self) -> ActorId {
        let bytes: [u8; 16] = self.rng.random();
        ActorId::from(&bytes[..])
    }

    /// Changes frames carrying the attack's changes, built on a document the node holds.
    fn hostile_changes(&mut self, i: usize, attack: Attack, victim: usize) -> Vec<Vec<u8>> {
        let Some((doc, am)) = self.pick_doc(i, attack) else {
            return Vec::new();
        };
        let mut am = am.with_actor(self.fresh_actor());
        let changes: Vec<(DocId, Vec<u8>)> = match attack {
            Attack::ActorFlood => {
                let n = self.plan.knobs.core.session_doc_actors_max + 4;
                (0..n)
                    .map(|k| {
                        let mut fork = am.fork().with_actor(self.fresh_actor());
                        let c = edit(&mut fork, |tx| put_root(tx, "flood", k as i64));
                        (doc.clone(), c)
                    })
                    .collect()
            }
            Attack::DocFlood => {
                let n = self.plan.knobs.core.session_docs_max + 4;
                let tag: u32 = self.rng.random();
                (0..n)
                    .map(|k| {
                        let mut fresh = Automerge::new().with_actor(self.fresh_actor());
                        let c = edit(&mut fresh, |tx| put_root(tx, "flood", k as i64));
                        let d = DocId::new(format!("flood/{tag:08x}/{k}")).expect("valid");
                        (d, c)
                    })
                    .collect()
            }
            Attack::MissingDeps => (0..self.rng.random_range(1..=64usize))
                .map(|k| {
                    let mut fork = am.fork().with_actor(self.fresh_actor());
                    edit(&mut fork, |tx| put_root(tx, "first", k as i64));
                    (doc.clone(), edit(&mut fork, |tx| put_root(tx, "orphan", 1)))
                })
                .collect(),
            Attack::Forge => self.forge(i, victim, &doc).into_iter().collect(),
            _ => vec![(
                doc.clone(),
                schema_breaker(&mut am, attack, self.rng.random()),
            )],
        };
        changes_frames(changes)
    }

    /// A document of node `i` to attack: a sensor document for the attacks on readings, any
    /// document otherwise.
    fn pick_doc(&mut self, i: usize, attack: Attack) -> Option<(DocId, Automerge)> {
        let n = self.nodes[i].node.as_mut()?;
        let docs: Vec<DocId> = n.docs().map(|(d, _)| d.clone()).collect();
        let sensor_only = matches!(
            attack,
            Attack::DeleteReadings
                | Attack::ReplaceReadings
                | Attack::OverwriteReading
                | Attack::InvalidReading
                | Attack::NonCanonicalReading
                | Attack::MixedReadings
        );
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

    /// A change under another node's actor at a sequence number the victim peer already
    /// holds (it acknowledged it): an equivocation the victim must refuse. Forging a sequence
    /// number the victim has not seen yet cannot be told from the real change without signed
    /// authorship; that attack belongs to the authorship work, not to this simulation.
    fn forge(&mut self, i: usize, victim: usize, doc: &DocId) -> Option<(DocId, Vec<u8>)> {
        let peer = self.peer_names[victim].clone();
        let n = self.nodes[i].node.as_mut()?;
        let own = n.doc_actor(doc).to_automerge();
        let changes = n.with_doc(doc, |a| a.get_changes(&[])).ok().flatten()?;
        let held = n.receipts(&peer).and_then(|r| r.clocks.get(doc)).cloned()?;
        let acked = |c: &Change| {
            edgesync_proto::Actor::from_automerge(c.actor_id())
                .is_some_and(|a| held.get(&a) >= c.seq())
        };
        let genesis = sensor_genesis().actor_id().clone();
        let victims: Vec<&Change> = changes
            .iter()
            .filter(|c| *c.actor_id() != own && *c.actor_id() != genesis && acked(c))
            .collect();
        if victims.is_empty() {
            return None;
        }
        let real = victims[self.rng.random_range(0..victims.len())];
        let base = n
            .with_doc(doc, |a| a.fork_at(real.deps()).ok())
            .ok()
            .flatten()??;
        let mut fork = base.with_actor(real.actor_id().clone());
        let c = edit(&mut fork, |tx| put_root(tx, "forged", real.seq() as i64));
        Some((doc.clone(), c))
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

/// Changes frames of at most [`CHANGES_PER_FRAME`] changes each, grouped by document.
fn changes_frames(changes: Vec<(DocId, Vec<u8>)>) -> Vec<Vec<u8>> {
    let changes: Vec<(DocId, Vec<u8>)> =
        changes.into_iter().filter(|(_, c)| !c.is_empty()).collect();
    changes
        .chunks(CHANGES_PER_FRAME)
        .enumerate()
        .map(|(k, chunk)| {
            let mut docs: Vec<DocChanges> = Vec::new();
            for (doc, bytes) in chunk {
                match docs.last_mut() {
                    Some(dc) if dc.doc == *doc => dc.changes.push(ChangeBytes(bytes.clone())),
                    _ => docs.push(DocChanges {
                        doc: doc.clone(),
                        changes: vec![ChangeBytes(bytes.clone())],
                    }),
                }
            }
            // Batch numbers far from the hostile node's own, so its core ignores the Acks.
            let batch = (1 << 40) + k as u64;
            Message::Changes(Changes { batch, docs }).to_frame()
        })
        .collect()
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
    None
}
