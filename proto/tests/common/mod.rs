//! A hand-driven network of in-memory nodes for the core's tests.
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};

use std::sync::Arc;

use edgesync_proto::authz::{Identity, Role, Rules};
use edgesync_proto::trust::{keyed::Fleet, Signer};
use edgesync_proto::wire::{
    AuthorStatement, ChangeBytes, Changes, DocChanges, Hello, Message, Signed, MAGIC,
    PROTOCOL_VERSION,
};
use edgesync_proto::{Actor, Boot, Config, DocId, Event, MemStore, Node, NodeName, SessionId};

/// The test fleet: every node shares its secret ([`Fleet`]); members are slot-bound.
pub fn fleet() -> Fleet {
    Fleet::new([1; 32])
}

/// The same fleet as members from before actor slots see it: any actor binds.
pub fn unbounded_fleet() -> Fleet {
    Fleet::unbounded([1; 32])
}

/// A config tweak: the node's identity as a member from before actor slots.
pub fn unbounded(cfg: &mut Config) {
    let id = cfg.trust.identity().cloned().expect("a fleet member");
    cfg.trust = unbounded_fleet().trust(id, Rules::default());
}

/// A cloud node's identity (the default rules let it write and read everything).
pub fn cloud(n: &NodeName) -> Identity {
    Identity::new(n.clone(), Role::Cloud, None)
}

/// A peer driven by hand: a fleet member (cloud, or `identity`) that signs its own changes,
/// and can relay other members' changes with their statements.
pub struct Hand {
    pub identity: Identity,
    signer: Arc<dyn Signer>,
    /// Node actors it can prove changes of: (node actor, that author's signer).
    authors: Vec<(Actor, Arc<dyn Signer>)>,
    /// Statements sent in the current session, by node actor: their numbers.
    sent: BTreeMap<Actor, u32>,
}

impl Hand {
    /// A cloud member named `name`.
    pub fn new(name: &str) -> Hand {
        Hand::with(cloud(&NodeName::new(name).unwrap()))
    }

    /// A member named `name` from before actor slots: it may bind any actor.
    pub fn unbounded(name: &str) -> Hand {
        Hand::in_fleet(cloud(&NodeName::new(name).unwrap()), &unbounded_fleet())
    }

    /// A member with this identity.
    pub fn with(identity: Identity) -> Hand {
        Hand::in_fleet(identity, &fleet())
    }

    /// A member of `fleet` with this identity.
    pub fn in_fleet(identity: Identity, fleet: &Fleet) -> Hand {
        let signer = fleet
            .trust(identity.clone(), Rules::default())
            .signer
            .unwrap();
        let mut h = Hand {
            identity,
            signer,
            authors: Vec::new(),
            sent: BTreeMap::new(),
        };
        for k in 0..4 {
            let na = h.node_actor(k);
            h.authors.push((na, h.signer.clone()));
        }
        h
    }

    /// Its `k`-th node actor: its slot `k` when it is slot-bound (a statement for `k` from
    /// [`edgesync_proto::trust::ACTOR_SLOTS`] on does not verify), else any actor it likes.
    pub fn node_actor(&self, k: u64) -> Actor {
        if let Some(space) = self.signer.slot_space() {
            return edgesync_proto::trust::slot_actor(&space, k as u32);
        }
        let mut h = blake3::Hasher::new();
        h.update(self.identity.name.as_str().as_bytes());
        h.update(&k.to_be_bytes());
        let mut a = [0u8; 16];
        a.copy_from_slice(&h.finalize().as_bytes()[..16]);
        Actor(a)
    }

    /// The Automerge actor of its `k`-th node actor for `doc`.
    pub fn actor(&mut self, doc: &DocId, k: u64) -> automerge::ActorId {
        let na = self.node_actor(k);
        self.actor_of(doc, na)
    }

    /// The Automerge actor of node actor `na` (one it signs statements for) for `doc`.
    pub fn actor_of(&mut self, doc: &DocId, na: Actor) -> automerge::ActorId {
        if !self.authors.iter().any(|(a, _)| *a == na) {
            self.authors.push((na, self.signer.clone()));
        }
        edgesync_proto::id::doc_actor(na, doc).to_automerge()
    }

    /// Lets it relay (prove) the changes `node` authors, as any relay holding the node's
    /// statement and signatures can.
    pub fn vouch_for(&mut self, node: &Node<MemStore>) {
        let signer = fleet()
            .trust(cloud(node.name()), Rules::default())
            .signer
            .unwrap();
        self.authors.push((node.actor(), signer));
    }

    /// A new session: statements are sent again.
    pub fn new_session(&mut self) {
        self.sent.clear();
    }

    /// Its signer.
    pub fn signer(&self) -> Arc<dyn Signer> {
        self.signer.clone()
    }

    /// Frames of batch `batch`: the given statements (numbered from `first_number`, what this
    /// session has sent so far), then `changes` of `doc` with exactly the signatures `signed`
    /// lists: (index of the change, author number, signer).
    pub fn raw_frames(
        statements: &[Vec<u8>],
        batch: u64,
        doc: &DocId,
        changes: &[Vec<u8>],
        signed: &[(usize, u32, &dyn Signer)],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        for st in statements {
            out.extend(Message::Author(AuthorStatement(st.clone())).to_frame());
        }
        let signed = signed
            .iter()
            .map(|(i, author, signer)| {
                let hash = automerge::Change::try_from(changes[*i].as_slice())
                    .unwrap()
                    .hash()
                    .0;
                Signed {
                    change: *i as u32,
                    author: *author,
                    sig: signer.sign(&hash),
                }
            })
            .collect();
        out.extend(
            Message::Changes(Changes {
                batch,
                docs: vec![DocChanges {
                    doc: doc.clone(),
                    changes: changes.iter().cloned().map(ChangeBytes).collect(),
                    signed,
                }],
            })
            .to_frame(),
        );
        out
    }

    /// The frames of Changes batch `batch` with `docs`: first the statements of authors this
    /// session has not sent, then the batch, each actor's last change in each section signed
    /// (an actor none of its authors derives goes unsigned).
    pub fn frames(&mut self, batch: u64, docs: &[(DocId, Vec<Vec<u8>>)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut sections = Vec::new();
        for (doc, changes) in docs {
            // Every change it can prove is signed (the protocol asks for each actor's last one
            // at least; more is allowed, and lets tests send sections in any order).
            // (actor, (index, hash)) of every change that parses.
            type Entry = (Vec<u8>, (usize, [u8; 32]));
            let mut all: Vec<Entry> = Vec::new();
            for (i, c) in changes.iter().enumerate() {
                if let Ok(ch) = automerge::Change::try_from(c.as_slice()) {
                    all.push((ch.actor_id().to_bytes().to_vec(), (i, ch.hash().0)));
                }
            }
            let mut signed = Vec::new();
            for (actor, (i, hash)) in all {
                let Some((na, signer)) = self
                    .authors
                    .iter()
                    .find(|(na, _)| edgesync_proto::id::doc_actor(*na, doc).0[..] == actor[..])
                    .cloned()
                else {
                    continue;
                };
                let number = match self.sent.get(&na) {
                    Some(n) => *n,
                    None => {
                        let n = self.sent.len() as u32;
                        self.sent.insert(na, n);
                        out.extend(
                            Message::Author(AuthorStatement(signer.statement(&na))).to_frame(),
                        );
                        n
                    }
                };
                signed.push(Signed {
                    change: i as u32,
                    author: number,
                    sig: signer.sign(&hash),
                });
            }
            sections.push(DocChanges {
                doc: doc.clone(),
                changes: changes.iter().cloned().map(ChangeBytes).collect(),
                signed,
            });
        }
        out.extend(
            Message::Changes(Changes {
                batch,
                docs: sections,
            })
            .to_frame(),
        );
        out
    }
}

pub fn name(i: usize) -> NodeName {
    NodeName::new(format!("n{i}")).unwrap()
}

pub fn boot(seed: u64) -> Boot {
    let mut nonce = [0u8; 16];
    nonce[..8].copy_from_slice(&seed.to_be_bytes());
    Boot {
        nonce,
        new_store_id: nonce,
    }
}

/// Node `i`'s defaults, as a cloud member of the test fleet, with the ingest journal folded
/// at every ingest ([`sync_at_once`]).
pub fn config(i: usize) -> Config {
    let mut cfg = Config::new(name(i));
    cfg.trust = fleet().trust(cloud(&name(i)), Rules::default());
    sync_at_once(&mut cfg);
    cfg
}

/// Tests of sync and storage see an ingest's readings in a change at once: the journal folds
/// at every ingest (one reading reaches `journal_readings_max`). The journal's own tests
/// (`journal.rs`) run with the default and fold by time.
pub fn sync_at_once(cfg: &mut Config) {
    cfg.journal_readings_max = 1;
}

pub fn open(i: usize, store: MemStore, seed: u64, tweak: impl Fn(&mut Config)) -> Node<MemStore> {
    let mut cfg = config(i);
    tweak(&mut cfg);
    Node::open(store, cfg, boot(seed)).unwrap()
}

/// The Hello a peer named `node` that accepts frames of `frame_bytes_max` bytes sends.
pub fn hello(node: &str, frame_bytes_max: u32) -> Message {
    Message::Hello(Hello {
        magic: MAGIC,
        version_min: PROTOCOL_VERSION,
        version_max: PROTOCOL_VERSION,
        node: NodeName::new(node).unwrap(),
        store_id: [9; 16],
        capabilities: 0,
        frame_bytes_max,
    })
}

/// Opens a session on `node` for the peer `hand` drives (frames up to 4 MiB), past Hello and
/// an empty Summary.
pub fn hand_session(node: &mut Node<MemStore>, hand: &mut Hand) -> SessionId {
    hand.new_session();
    let peer = hand.identity.name.as_str().to_string();
    let sid = node.connect(hand.identity.clone(), 0);
    node.handle_input(sid, &hello(&peer, 4 << 20).to_frame(), 0);
    let summary = Message::Summary(edgesync_proto::wire::Summary {
        entries: vec![],
        last: true,
    });
    node.handle_input(sid, &summary.to_frame(), 0);
    sid
}

pub fn doc(s: &str) -> DocId {
    DocId::new(s).unwrap()
}

/// The document of stream `s`'s first hour (readings with timestamps below 3,600,000 ms at the
/// default bucket width): the sensor document an ingest into `s` at such a time writes.
pub fn bucket(s: &str) -> DocId {
    edgesync_proto::stream::Bucket::of(&doc(s), 0, 3_600_000).doc()
}

/// [`bucket`], as text.
pub fn bucket_name(s: &str) -> String {
    bucket(s).as_str().to_string()
}

/// Makes everything committed durable and tells the node.
pub fn persist(n: &mut Node<MemStore>) {
    let seq = n.commit_seq();
    n.store_mut().sync();
    n.handle_durable(seq);
}

pub struct Link {
    /// Session id at each end: [at a, at b].
    pub sids: [SessionId; 2],
    /// Frames in flight: [a -> b, b -> a].
    pub queues: [VecDeque<Vec<u8>>; 2],
}

pub struct Net {
    pub nodes: Vec<Node<MemStore>>,
    /// Each node's identity (what its peers are told it is).
    pub ids: Vec<Identity>,
    pub links: BTreeMap<(usize, usize), Link>,
    pub closed: Vec<(usize, Event)>,
}

impl Net {
    /// Nodes with these identities (and the default rules).
    pub fn with_identities(ids: Vec<Identity>) -> Net {
        let nodes = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let mut cfg = Config::new(id.name.clone());
                cfg.trust = fleet().trust(id.clone(), Rules::default());
                sync_at_once(&mut cfg);
                Node::open(MemStore::new(), cfg, boot(i as u64 + 1)).unwrap()
            })
            .collect();
        Net {
            nodes,
            ids,
            links: BTreeMap::new(),
            closed: Vec::new(),
        }
    }

    pub fn new(n: usize, tweak: impl Fn(&mut Config) + Copy) -> Net {
        let nodes = (0..n)
            .map(|i| open(i, MemStore::new(), i as u64 + 1, tweak))
            .collect();
        Net {
            nodes,
            ids: (0..n).map(|i| cloud(&name(i))).collect(),
            links: BTreeMap::new(),
            closed: Vec::new(),
        }
    }

    pub fn connect(&mut self, a: usize, b: usize) {
        assert!(a < b);
        if self.links.contains_key(&(a, b)) {
            return;
        }
        let sa = self.nodes[a].connect(self.ids[b].clone(), 0);
        let sb = self.nodes[b].connect(self.ids[a].clone(), 0);
        self.links.insert(
            (a, b),
            Link {
                sids: [sa, sb],
                queues: [VecDeque::new(), VecDeque::new()],
            },
        );
    }

    pub fn disconnect(&mut self, a: usize, b: usize) {
        if let Some(link) = self.links.remove(&(a, b)) {
            self.nodes[a].disconnect(link.sids[0]);
            self.nodes[b].disconnect(link.sids[1]);
        }
    }

    /// Persists every node and moves released frames into the link queues; drops links whose
    /// session closed.
    pub fn pull(&mut self) {
        for i in 0..self.nodes.len() {
            persist(&mut self.nodes[i]);
        }
        let keys: Vec<(usize, usize)> = self.links.keys().copied().collect();
        for (a, b) in keys {
            let link = self.links.get_mut(&(a, b)).unwrap();
            for (end, node) in [(0, a), (1, b)] {
                while let Some(f) = self.nodes[node].poll_transmit(link.sids[end]) {
                    link.queues[end].push_back(f);
                }
            }
        }
        self.drain_events();
    }

    pub fn drain_events(&mut self) {
        let mut dead = Vec::new();
        for i in 0..self.nodes.len() {
            while let Some(e) = self.nodes[i].poll_event() {
                if let Event::SessionClosed { session, .. } = &e {
                    for (k, l) in &self.links {
                        if (k.0 == i && l.sids[0] == *session)
                            || (k.1 == i && l.sids[1] == *session)
                        {
                            dead.push(*k);
                        }
                    }
                    self.closed.push((i, e));
                }
            }
        }
        for (a, b) in dead {
            self.disconnect(a, b);
        }
    }

    /// Delivers the frame at `index` of the queue `dir` of link (a, b).
    pub fn deliver(&mut self, a: usize, b: usize, dir: usize, index: usize, copies: usize) -> bool {
        let Some(link) = self.links.get_mut(&(a, b)) else {
            return false;
        };
        if link.queues[dir].is_empty() {
            return false;
        }
        let index = index % link.queues[dir].len();
        let frame = link.queues[dir].remove(index).unwrap();
        let (to, sid) = if dir == 0 {
            (b, link.sids[1])
        } else {
            (a, link.sids[0])
        };
        for _ in 0..copies {
            self.nodes[to].handle_input(sid, &frame, 0);
        }
        true
    }

    /// Delivers everything in order until no frame moves. Returns the number of rounds.
    pub fn settle(&mut self) -> usize {
        let mut rounds = 0;
        loop {
            self.pull();
            let keys: Vec<(usize, usize)> = self.links.keys().copied().collect();
            let mut moved = false;
            for (a, b) in keys {
                for dir in 0..2 {
                    while self.deliver(a, b, dir, 0, 1) {
                        moved = true;
                    }
                }
            }
            self.drain_events();
            if !moved {
                return rounds;
            }
            rounds += 1;
            assert!(rounds < 10_000, "no quiescence");
        }
    }
}
