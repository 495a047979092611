//! A hand-driven network of in-memory nodes for the core's tests.
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};

use edgesync_proto::wire::{Hello, Message, MAGIC, PROTOCOL_VERSION};
use edgesync_proto::{Boot, Config, DocId, Event, MemStore, Node, NodeName, SessionId};

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

pub fn open(i: usize, store: MemStore, seed: u64, tweak: impl Fn(&mut Config)) -> Node<MemStore> {
    let mut cfg = Config::new(name(i));
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
    pub links: BTreeMap<(usize, usize), Link>,
    pub closed: Vec<(usize, Event)>,
}

impl Net {
    pub fn new(n: usize, tweak: impl Fn(&mut Config) + Copy) -> Net {
        let nodes = (0..n)
            .map(|i| open(i, MemStore::new(), i as u64 + 1, tweak))
            .collect();
        Net {
            nodes,
            links: BTreeMap::new(),
            closed: Vec::new(),
        }
    }

    pub fn connect(&mut self, a: usize, b: usize) {
        assert!(a < b);
        if self.links.contains_key(&(a, b)) {
            return;
        }
        let sa = self.nodes[a].connect(name(b), 0);
        let sb = self.nodes[b].connect(name(a), 0);
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
