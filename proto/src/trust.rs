//! Signed authorship, as the core sees it: who wrote a change, proven to every receiver.
//!
//! A node authors every change under an actor derived from its **node actor** and the document
//! id ([`crate::id::doc_actor`]). An **authorship statement** binds a node actor to a node's
//! fleet identity and signing key; the shell makes and checks statements (in edgesync: signed
//! with the node's certificate key, carrying the certificate, checked against the fleet CA and
//! its revocation list), the core only carries them. A change is proven when its actor derives
//! from a verified author's node actor for its document and it is, or is an ancestor (through
//! its dependencies) of, a change of the same actor that the author signed. The core never
//! sees a key: it asks a [`Signer`] to sign and an [`Authority`] to verify.

use std::fmt;
use std::sync::Arc;

use crate::authz::{Identity, Rules};
use crate::vclock::Actor;

/// Longest authorship statement accepted, bytes (a statement carries a certificate).
pub const STATEMENT_BYTES_MAX: usize = 4 * 1024;
/// Longest change signature accepted, bytes.
pub const SIGNATURE_BYTES_MAX: usize = 128;
/// Node actors one slot space (one certificate) may ever author under: slots `0..ACTOR_SLOTS`.
/// With a document's clock holding at most [`crate::vclock::CLOCK_ACTORS_MAX`] actors, one
/// member adds at most this many actors to any document, whatever it signs.
pub const ACTOR_SLOTS: u32 = 32;

/// Where a slot-bound node actor comes from: its certificate's slot space and its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot {
    /// The slot space: a fingerprint of the certificate (or, in a keyed fleet, of the member).
    pub space: [u8; 32],
    /// The slot, below [`ACTOR_SLOTS`].
    pub index: u32,
}

/// The node actor of `slot` in `space`: every receiver derives the same 32 actors from a
/// certificate, so a slot-bound member cannot bind any other actor to it.
pub fn slot_actor(space: &[u8; 32], slot: u32) -> Actor {
    let mut h = blake3::Hasher::new_derive_key("edgesync slot actor v1");
    h.update(space);
    h.update(&slot.to_be_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    Actor(out)
}

/// The slot space of a node's name: where a node authors before it has a fleet identity (a
/// store used without a signer), so that its first certificate can adopt what it wrote. Every
/// certificate of that name binds these slots as well as its own: a name adds at most
/// [`ACTOR_SLOTS`] actors, whatever certificates it has.
pub fn name_space(name: &crate::id::NodeName) -> [u8; 32] {
    blake3::derive_key("edgesync name slot space v1", name.as_str().as_bytes())
}

/// The slot `actor` is for a member named `name` whose certificate's slot space is
/// `cert_space`: one of the certificate's slots, or one of the name's ([`name_space`]).
pub fn member_slot(
    cert_space: &[u8; 32],
    name: &crate::id::NodeName,
    actor: &Actor,
) -> Option<Slot> {
    find_slot(cert_space, actor).or_else(|| find_slot(&name_space(name), actor))
}

/// Which slot of `space` `actor` is, if it is one of its [`ACTOR_SLOTS`] slot actors.
pub fn find_slot(space: &[u8; 32], actor: &Actor) -> Option<Slot> {
    (0..ACTOR_SLOTS)
        .find(|&i| slot_actor(space, i) == *actor)
        .map(|index| Slot {
            space: *space,
            index,
        })
}

/// An author a statement proves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Author {
    /// The node actor the statement binds: the author's document actors derive from it.
    pub node_actor: Actor,
    /// The author's fleet identity.
    pub identity: Identity,
    /// The key its changes are signed with, as the [`Authority`] reads it.
    pub key: Vec<u8>,
    /// The certificate behind the statement is revoked: the statement is accepted only for a
    /// node actor this node already knew before (then it keeps its changes flowing).
    pub revoked: bool,
    /// The node actor's slot, for a slot-bound certificate ([`ACTOR_SLOTS`]); `None` for a
    /// certificate from before slots, whose actors are not bounded.
    pub slot: Option<Slot>,
}

/// Checks statements and change signatures.
pub trait Authority: fmt::Debug + Send + Sync {
    /// The author a statement proves, or why it proves nothing.
    fn verify_statement(&self, statement: &[u8]) -> Result<Author, String>;
    /// Whether `sig` is `author`'s signature of the change whose hash is `hash`.
    fn verify_change(&self, author: &Author, hash: &[u8; 32], sig: &[u8]) -> bool;
}

/// This node's side: its identity, its statements and its signatures.
pub trait Signer: fmt::Debug + Send + Sync {
    /// This node's fleet identity.
    fn identity(&self) -> &Identity;
    /// The key this node signs with, as [`Author::key`] holds it.
    fn key(&self) -> Vec<u8>;
    /// What a node actor of this node is bound to (its key, and whatever else its statements
    /// name, such as a certificate): a node that opens with another binding takes a new actor
    /// epoch, so each node actor keeps one statement for ever.
    fn binding_id(&self) -> [u8; 32] {
        *blake3::hash(&self.key()).as_bytes()
    }
    /// The slot space of this node's certificate when it is slot-bound: the node then
    /// authors only under [`slot_actor`]s of it. `None` (the default) for a certificate from
    /// before slots.
    fn slot_space(&self) -> Option<[u8; 32]> {
        None
    }
    /// A statement binding `node_actor` to this node and its key.
    fn statement(&self, node_actor: &Actor) -> Vec<u8>;
    /// This node's signature of the change whose hash is `hash`.
    fn sign(&self, hash: &[u8; 32]) -> Vec<u8>;
}

/// What a node trusts and how it signs: part of [`crate::Config`].
#[derive(Clone, Debug)]
pub struct Trust {
    /// This node's signer; `None` for a node without a fleet identity, which writes locally
    /// (no rules apply to it) and syncs nothing.
    pub signer: Option<Arc<dyn Signer>>,
    /// The checker of other nodes' statements and signatures; `None` accepts no remote change.
    pub authority: Option<Arc<dyn Authority>>,
    /// The fleet's rules.
    pub rules: Rules,
}

impl Trust {
    /// A node without a fleet identity: local writes only.
    pub fn local() -> Trust {
        Trust {
            signer: None,
            authority: None,
            rules: Rules::default(),
        }
    }

    /// This node's identity, if it has one.
    pub fn identity(&self) -> Option<&Identity> {
        self.signer.as_ref().map(|s| s.identity())
    }

    /// The fingerprint of what this node's actors are bound to ([`Signer::binding_id`]), or
    /// zeros without a signer.
    pub fn key_id(&self) -> [u8; 32] {
        self.signer.as_ref().map_or([0; 32], |s| s.binding_id())
    }
}

/// A fleet whose members share one secret: statements and signatures are keyed blake3 MACs.
/// For the simulator and tests only (any member could sign as any other); the daemon signs
/// with certificate keys.
#[cfg(feature = "testing")]
pub mod keyed {
    use std::collections::BTreeSet;
    use std::sync::{Arc, RwLock};

    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::authz::Role;
    use crate::id::NodeName;

    #[derive(Serialize, Deserialize)]
    struct Statement {
        node_actor: Actor,
        name: NodeName,
        role: u8,
        site: Option<String>,
        mac: [u8; 32],
    }

    fn role_code(r: Role) -> u8 {
        match r {
            Role::Cloud => 0,
            Role::Gateway => 1,
            Role::Edge => 2,
        }
    }

    fn mac(fleet: &[u8; 32], node_actor: &Actor, who: &Identity) -> [u8; 32] {
        let body = postcard::to_allocvec(&(node_actor, &who.name, role_code(who.role), &who.site))
            .expect("encodes");
        *blake3::keyed_hash(fleet, &body).as_bytes()
    }

    fn keyed_space(fleet: &[u8; 32], name: &NodeName) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(fleet);
        h.update(b"slot space ");
        h.update(name.as_str().as_bytes());
        *h.finalize().as_bytes()
    }

    fn node_key(fleet: &[u8; 32], name: &NodeName) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(fleet);
        h.update(b"signing key ");
        h.update(name.as_str().as_bytes());
        *h.finalize().as_bytes()
    }

    /// A member's signer.
    #[derive(Debug)]
    pub struct KeyedSigner {
        fleet: [u8; 32],
        identity: Identity,
        slots: bool,
    }

    impl Signer for KeyedSigner {
        fn identity(&self) -> &Identity {
            &self.identity
        }
        fn key(&self) -> Vec<u8> {
            node_key(&self.fleet, &self.identity.name).to_vec()
        }
        fn slot_space(&self) -> Option<[u8; 32]> {
            self.slots
                .then(|| keyed_space(&self.fleet, &self.identity.name))
        }
        fn statement(&self, node_actor: &Actor) -> Vec<u8> {
            let s = Statement {
                node_actor: *node_actor,
                name: self.identity.name.clone(),
                role: role_code(self.identity.role),
                site: self.identity.site.clone(),
                mac: mac(&self.fleet, node_actor, &self.identity),
            };
            postcard::to_allocvec(&s).expect("encodes")
        }
        fn sign(&self, hash: &[u8; 32]) -> Vec<u8> {
            blake3::keyed_hash(&node_key(&self.fleet, &self.identity.name), hash)
                .as_bytes()
                .to_vec()
        }
    }

    /// The fleet's checker; `revoke` puts a node on its revocation list.
    #[derive(Debug, Default)]
    pub struct KeyedAuthority {
        fleet: [u8; 32],
        revoked: RwLock<BTreeSet<NodeName>>,
        /// Members are slot-bound (like certificates with the actor-slots mark)...
        slots: bool,
        /// ...but for these, whose certificates predate the mark.
        legacy: BTreeSet<NodeName>,
    }

    impl KeyedAuthority {
        /// Revokes `name`'s statements (for node actors not already known to a receiver).
        pub fn revoke(&self, name: &NodeName) {
            self.revoked
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(name.clone());
        }
    }

    impl Authority for KeyedAuthority {
        fn verify_statement(&self, statement: &[u8]) -> Result<Author, String> {
            let (s, rest): (Statement, _) =
                postcard::take_from_bytes(statement).map_err(|e| e.to_string())?;
            if !rest.is_empty() {
                return Err("bytes after the statement".into());
            }
            let role = match s.role {
                0 => Role::Cloud,
                1 => Role::Gateway,
                2 => Role::Edge,
                r => return Err(format!("unknown role {r}")),
            };
            let identity = Identity {
                name: s.name,
                role,
                site: s.site,
            };
            if mac(&self.fleet, &s.node_actor, &identity) != s.mac {
                return Err("statement not signed by a fleet member".into());
            }
            let revoked = self
                .revoked
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&identity.name);
            let slot = if self.slots && !self.legacy.contains(&identity.name) {
                let space = keyed_space(&self.fleet, &identity.name);
                Some(
                    member_slot(&space, &identity.name, &s.node_actor).ok_or_else(|| {
                        format!(
                            "actor {} is not one of {}'s {ACTOR_SLOTS} slot actors",
                            s.node_actor, identity.name
                        )
                    })?,
                )
            } else {
                None
            };
            Ok(Author {
                node_actor: s.node_actor,
                key: node_key(&self.fleet, &identity.name).to_vec(),
                identity,
                revoked,
                slot,
            })
        }

        fn verify_change(&self, author: &Author, hash: &[u8; 32], sig: &[u8]) -> bool {
            let Ok(key) = <[u8; 32]>::try_from(author.key.as_slice()) else {
                return false;
            };
            blake3::keyed_hash(&key, hash).as_bytes().as_slice() == sig
        }
    }

    /// One fleet: its shared secret and its authority.
    #[derive(Clone, Debug)]
    pub struct Fleet {
        fleet: [u8; 32],
        authority: Arc<KeyedAuthority>,
        slots: bool,
    }

    impl Fleet {
        /// The same fleet where `names` hold certificates from before actor slots: they bind
        /// any actor (a fleet that has not renewed every certificate yet).
        pub fn with_legacy_members(self, names: impl IntoIterator<Item = NodeName>) -> Fleet {
            Fleet {
                authority: Arc::new(KeyedAuthority {
                    fleet: self.fleet,
                    revoked: RwLock::default(),
                    slots: self.slots,
                    legacy: names.into_iter().collect(),
                }),
                ..self
            }
        }
    }

    impl Fleet {
        /// A fleet with this secret whose members are slot-bound ([`ACTOR_SLOTS`] node actors
        /// each).
        pub fn new(secret: [u8; 32]) -> Fleet {
            Fleet::build(secret, true)
        }

        /// A fleet with this secret whose members bind any actor (certificates from before
        /// actor slots).
        pub fn unbounded(secret: [u8; 32]) -> Fleet {
            Fleet::build(secret, false)
        }

        fn build(secret: [u8; 32], slots: bool) -> Fleet {
            Fleet {
                fleet: secret,
                authority: Arc::new(KeyedAuthority {
                    fleet: secret,
                    revoked: RwLock::default(),
                    slots,
                    legacy: BTreeSet::new(),
                }),
                slots,
            }
        }

        /// The trust of member `identity` under `rules`.
        pub fn trust(&self, identity: Identity, rules: Rules) -> Trust {
            Trust {
                signer: Some(Arc::new(KeyedSigner {
                    fleet: self.fleet,
                    slots: self.slots && !self.authority.legacy.contains(&identity.name),
                    identity,
                })),
                authority: Some(self.authority.clone()),
                rules,
            }
        }

        /// The fleet's authority (to revoke members).
        pub fn authority(&self) -> &Arc<KeyedAuthority> {
            &self.authority
        }
    }
}
