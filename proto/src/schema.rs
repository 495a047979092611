//! The rules every remote change must follow before it touches a document (hazard 8: a peer
//! with a valid fleet certificate is still untrusted input).
//!
//! Checked in two steps: [`check_shape`] needs only the change and runs on receipt, before a
//! change may wait in the causal buffer; [`check_in_doc`] needs the document the change is about
//! to join (which objects exist, how deep) and runs when the change is causally ready.
//!
//! The rules, for every change but the sensor genesis itself (recognised by its hash):
//!
//! 1. No change but the genesis is authored by the genesis actor.
//! 2. No operation names an operation of the genesis as its predecessor: nothing overwrites or
//!    deletes a sensor document's schema key or its readings map.
//! 3. Every operation on the readings map puts one new reading: a string value under a valid
//!    reading id, in the canonical encoding ([`Reading::encode`]), with no predecessor
//!    (readings are immutable: an acknowledged reading cannot be overwritten or deleted).
//! 4. A change that writes readings writes nothing else.
//! 5. Every object an operation names exists (in the document or earlier in the change), and no
//!    object nests deeper than [`OBJECT_DEPTH_MAX`] below the root: the depth a merge patch can
//!    build, so every honest document fits and views never recurse deeper.
//! 6. In a bucket of a stream ([`crate::stream`]), a change writes readings only, each with a
//!    timestamp within the bucket's span: no bucket grows past its span, and a bucket dropped
//!    for its age holds no reading younger than its end.
//!
//! A change that touches neither the readings map nor the genesis is a generic change and may
//! write anything else: a document id used with merge patches on one node and with ingest on
//! another becomes a sensor document on every replica once the genesis arrives, and the generic
//! changes it already had must still be accepted, or the links between those replicas would be
//! refused forever. Sensor views read only the readings map, so such changes never alter them.

use std::collections::BTreeMap;

use automerge::legacy::{Key, ObjectId, Op, OpId, OpType};
use automerge::{ActorId, Automerge, Change, ReadDoc, ScalarValue};

use crate::doc::{sensor_genesis, PATCH_DEPTH_MAX};
use crate::id::genesis_actor;
use crate::reading::{Reading, ReadingError};
use crate::stream::Bucket;

/// Deepest object a remote change may create (the root is depth 0).
pub const OBJECT_DEPTH_MAX: usize = PATCH_DEPTH_MAX;

/// Counter of the genesis operation that creates the readings map (operation 1 puts the
/// schema key).
const READINGS_MAP_COUNTER: u64 = 2;

/// Why a remote change was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// Inflated (or as sent) larger than `change_bytes_max`.
    #[error("change of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Size measured (inflation stops one byte past the limit).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not an Automerge change.
    #[error("change does not parse: {0}")]
    Unparsable(String),
    /// A snapshot (a document's saved form, [`crate::snapshot`]) that does not read or load.
    #[error("snapshot refused: {0}")]
    Snapshot(String),
    /// The checksum in the chunk's header is not the one of its content: the bytes were
    /// corrupted after the author made them (Automerge parses such a chunk anyway, and a
    /// corrupted change is a different change under the same actor and sequence number).
    #[error("change checksum does not match its content")]
    Checksum,
    /// The actor is not 16 bytes.
    #[error("change actor is not 16 bytes")]
    ActorLength,
    /// An operation names an actor past the change's actor table (Automerge's parser lets it
    /// through, and expanding such a change panics).
    #[error("change operations name an actor the change does not list")]
    ActorIndex,
    /// An operation names an object, key or predecessor whose counter is past `u32::MAX`
    /// (Automerge's parser panics on such a change).
    #[error("change operations name an operation counter past 32 bits")]
    CounterRange,
    /// Sequence number 0.
    #[error("change has sequence number 0")]
    SeqZero,
    /// Bytes after the change's operations (Automerge reads an "author" footer there, and
    /// panics on one in an actor's change past its first); no edgesync change has any.
    #[error("change carries {0} bytes after its operations")]
    ExtraBytes(usize),
    /// Claims the receiving node's current actor (only this node writes under it).
    #[error("change claims this node's current actor")]
    ClaimsOurActor,
    /// Authored by the genesis actor but not the genesis.
    #[error("change is authored by the genesis actor but is not the genesis")]
    GenesisActor,
    /// Overwrites or deletes what the genesis wrote.
    #[error("change overwrites or deletes the sensor schema or readings map")]
    OverwritesGenesis,
    /// An operation on the readings map is not a new reading.
    #[error("operation on the readings map at {key:?} is not a new reading: {why}")]
    NotAReading {
        /// The key (empty for a list position).
        key: String,
        /// What is wrong.
        why: NotAReading,
    },
    /// Writes readings and something else.
    #[error("change writes readings and other objects")]
    MixedReadings,
    /// Writes something other than readings into a bucket of a stream (rule 6).
    #[error("change writes something other than readings into a stream's bucket")]
    NotReadings,
    /// Writes a reading into a bucket whose span does not hold its timestamp (rule 6).
    #[error("reading {id} at {ts_ms} ms does not belong in the bucket {start_ms}..{end_ms}")]
    OutsideBucket {
        /// The reading's id.
        id: String,
        /// Its timestamp.
        ts_ms: i64,
        /// The bucket's first millisecond.
        start_ms: u64,
        /// The bucket's end (exclusive).
        end_ms: u64,
    },
    /// Names an object the document does not hold.
    #[error("change names an object the document does not hold")]
    UnknownObject,
    /// Creates an object deeper than [`OBJECT_DEPTH_MAX`].
    #[error("change nests objects deeper than {max}")]
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// Automerge refused to apply it.
    #[error("automerge refused the change: {0}")]
    Refused(String),
    /// Causally ready but not applied by Automerge.
    #[error("automerge did not apply a causally ready change")]
    NotApplied,
}

/// What is wrong with an operation on the readings map.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum NotAReading {
    /// Not a put of a string (a delete, an object, a counter, a list insert, ...).
    #[error("not a put of a string")]
    NotAPut,
    /// Replaces or deletes an existing value.
    #[error("replaces an existing reading")]
    Overwrites,
    /// The id or the body does not parse as a reading.
    #[error("{0}")]
    Invalid(#[from] ReadingError),
    /// Parses, but is not the canonical encoding (two encodings of one reading would conflict).
    #[error("body is not in canonical form")]
    NotCanonical,
}

/// True if `change` is the sensor genesis (byte-identical everywhere).
pub fn is_genesis(change: &Change) -> bool {
    change.hash() == sensor_genesis().hash()
}

fn readings_map_id() -> OpId {
    OpId(READINGS_MAP_COUNTER, genesis_actor().to_automerge())
}

/// The checksum an Automerge chunk carries (bytes 4..8 of its header) must be the first four
/// bytes of the change's hash; Automerge's parser does not check it. A compressed chunk carries
/// the checksum of the change it inflates to.
pub fn check_checksum(bytes: &[u8], change: &Change) -> Result<(), Refusal> {
    match bytes.get(4..8) {
        Some(sum) if sum == &change.hash().0[..4] => Ok(()),
        _ => Err(Refusal::Checksum),
    }
}

/// What a change that passed the checks writes, for the change feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Puts {
    /// The sensor genesis.
    Genesis,
    /// Readings, as (id, canonical body), in the change's order.
    Readings(Vec<(String, String)>),
    /// Anything else: a generic change.
    Other,
}

/// What `ops` (a change's, not the genesis) write.
fn puts_of(ops: &[Op]) -> Puts {
    let readings = ObjectId::Id(readings_map_id());
    let mut out = Vec::new();
    for op in ops {
        match (&op.obj, &op.key, &op.action) {
            (o, Key::Map(k), OpType::Put(ScalarValue::Str(body))) if *o == readings => {
                out.push((k.to_string(), body.to_string()));
            }
            _ => return Puts::Other,
        }
    }
    if out.is_empty() {
        Puts::Other
    } else {
        Puts::Readings(out)
    }
}

/// What a change writes, without checking it (a change stored unchecked: into a pruned
/// document, whose rules were checked on receipt).
pub fn puts(change: &Change) -> Result<Puts, Refusal> {
    Ok(match expand(change)? {
        Some(ops) => puts_of(&ops),
        None => Puts::Genesis,
    })
}

/// The checks that need only the change: rules 1-4.
pub fn check_shape(change: &Change) -> Result<Puts, Refusal> {
    check_shape_in(change, None)
}

/// [`check_shape`] for a change into `bucket` (rule 6 too); `None` for any other document.
pub fn check_shape_in(change: &Change, bucket: Option<&Bucket>) -> Result<Puts, Refusal> {
    match expand(change)? {
        Some(ops) => {
            shape_of(change, &ops, bucket)?;
            Ok(puts_of(&ops))
        }
        None => Ok(Puts::Genesis),
    }
}

/// Both steps at once, expanding the change once: for a change that is causally ready on
/// arrival, the common case.
pub fn check(change: &Change, doc: &Automerge) -> Result<Puts, Refusal> {
    check_in(change, doc, None)
}

/// [`check`] for a change into `bucket` (rule 6 too); `None` for any other document.
pub fn check_in(
    change: &Change,
    doc: &Automerge,
    bucket: Option<&Bucket>,
) -> Result<Puts, Refusal> {
    match expand(change)? {
        Some(ops) => {
            shape_of(change, &ops, bucket)?;
            depth_in_doc(change, &ops, doc)?;
            Ok(puts_of(&ops))
        }
        None => Ok(Puts::Genesis),
    }
}

/// The change's operations, once its actor indices are known to be in range (expanding panics
/// otherwise); `None` for the genesis, which every rule allows.
fn expand(change: &Change) -> Result<Option<Vec<Op>>, Refusal> {
    if is_genesis(change) {
        return Ok(None);
    }
    crate::chunk::check_parsed(change)?;
    Ok(Some(change.decode().operations))
}

/// Rules 1-4 (and 6 in a bucket) over the expanded operations.
fn shape_of(change: &Change, ops: &[Op], bucket: Option<&Bucket>) -> Result<(), Refusal> {
    let genesis = genesis_actor().to_automerge();
    if *change.actor_id() == genesis {
        return Err(Refusal::GenesisActor);
    }
    let readings = ObjectId::Id(readings_map_id());
    let (mut wrote_readings, mut wrote_other) = (false, false);
    for op in ops {
        if op.pred.iter().any(|p| *p.actor() == genesis) {
            return Err(Refusal::OverwritesGenesis);
        }
        if op.obj == readings {
            wrote_readings = true;
            let reading = check_reading_op(&op.key, &op.action, op.pred.is_empty(), op.insert)?;
            if let Some(b) = bucket.filter(|b| !b.holds(reading.ts_ms)) {
                return Err(Refusal::OutsideBucket {
                    id: reading.id,
                    ts_ms: reading.ts_ms,
                    start_ms: b.start_ms,
                    end_ms: b.end_ms(),
                });
            }
        } else {
            wrote_other = true;
        }
    }
    if wrote_readings && wrote_other {
        return Err(Refusal::MixedReadings);
    }
    if wrote_other && bucket.is_some() {
        return Err(Refusal::NotReadings);
    }
    Ok(())
}

fn check_reading_op(
    key: &Key,
    action: &OpType,
    no_pred: bool,
    insert: bool,
) -> Result<Reading, Refusal> {
    let (key, body) = match (key, action) {
        (Key::Map(k), OpType::Put(ScalarValue::Str(body))) if !insert => (k.as_str(), body),
        (Key::Map(k), _) => {
            return Err(not_a_reading(k.as_str(), NotAReading::NotAPut));
        }
        (Key::Seq(_), _) => return Err(not_a_reading("", NotAReading::NotAPut)),
    };
    if !no_pred {
        return Err(not_a_reading(key, NotAReading::Overwrites));
    }
    let reading = Reading::decode(key, body).map_err(|e| not_a_reading(key, e.into()))?;
    if reading.encode() != body.as_str() {
        return Err(not_a_reading(key, NotAReading::NotCanonical));
    }
    Ok(reading)
}

fn not_a_reading(key: &str, why: NotAReading) -> Refusal {
    Refusal::NotAReading {
        key: key.to_string(),
        why,
    }
}

/// The checks that need the document the change is about to join: rule 5. `doc` holds every
/// dependency of `change`.
pub fn check_in_doc(change: &Change, doc: &Automerge) -> Result<Puts, Refusal> {
    match expand(change)? {
        Some(ops) => {
            depth_in_doc(change, &ops, doc)?;
            Ok(puts_of(&ops))
        }
        None => Ok(Puts::Genesis),
    }
}

/// Rule 5 over the expanded operations.
fn depth_in_doc(change: &Change, ops: &[Op], doc: &Automerge) -> Result<(), Refusal> {
    let actor = change.actor_id().clone();
    let start = change.start_op().get();
    // Depth of every object named so far: found in the document, or created by this change.
    let mut depth: BTreeMap<(u64, ActorId), usize> = BTreeMap::new();
    for (i, op) in ops.iter().enumerate() {
        let parent = match &op.obj {
            ObjectId::Root => 0,
            ObjectId::Id(id) => match depth.get(&(id.0, id.1.clone())) {
                Some(d) => *d,
                None => {
                    let d = depth_in(doc, id).ok_or(Refusal::UnknownObject)?;
                    depth.insert((id.0, id.1.clone()), d);
                    d
                }
            },
        };
        if let OpType::Make(_) = op.action {
            if parent + 1 > OBJECT_DEPTH_MAX {
                return Err(Refusal::TooDeep {
                    max: OBJECT_DEPTH_MAX,
                });
            }
            depth.insert((start + i as u64, actor.clone()), parent + 1);
        }
    }
    Ok(())
}

/// Depth of an existing object of `doc` (its number of ancestors), `None` if it does not exist.
/// The readings map, what nearly every change writes, exists (at depth 1, under the root)
/// exactly when the genesis that creates it is in the document (only the genesis is authored
/// by its actor, rule 1): looked up by the genesis rather than walked.
fn depth_in(doc: &Automerge, id: &OpId) -> Option<usize> {
    if *id == readings_map_id() {
        return (crate::doc::kind_of(doc) == crate::doc::DocKind::Sensor).then_some(1);
    }
    walked_depth_in(doc, id)
}

/// [`depth_in`] by walking from the object to the root.
fn walked_depth_in(doc: &Automerge, id: &OpId) -> Option<usize> {
    let (obj, _) = doc.import(&format!("{}@{}", id.0, id.1)).ok()?;
    Some(doc.parents(&obj).ok()?.count())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::{READINGS_KEY, SCHEMA_KEY};
    use crate::vclock::Actor;
    use automerge::transaction::Transactable;
    use automerge::{ObjType, ROOT};
    use serde_json::json;

    fn sensor(actor: u8) -> Automerge {
        let mut d = Automerge::new().with_actor(Actor([actor; 16]).to_automerge());
        d.apply_changes([sensor_genesis().clone()]).unwrap();
        d
    }

    fn readings(d: &Automerge) -> automerge::ObjId {
        crate::doc::readings_obj(d).unwrap()
    }

    /// Runs `f` in one transaction and returns the change it made.
    fn change(
        d: &mut Automerge,
        f: impl FnOnce(&mut automerge::transaction::Transaction),
    ) -> Change {
        let mut tx = d.transaction();
        f(&mut tx);
        tx.commit();
        d.get_last_local_change().unwrap()
    }

    fn body(id: &str) -> String {
        Reading::from_json(id, 5, &json!({"v": 1}))
            .unwrap()
            .encode()
    }

    // An honest ingest change, an honest merge patch, and the genesis pass both steps.
    #[test]
    fn honest_changes_pass() {
        let mut d = sensor(1);
        let map = readings(&d);
        let c = change(&mut d, |tx| tx.put(&map, "r1", body("r1")).unwrap());
        let put = Puts::Readings(vec![("r1".into(), body("r1"))]);
        assert_eq!(check_shape(&c), Ok(put.clone()));
        assert_eq!(check_in_doc(&c, &sensor(2)), Ok(put.clone()));
        assert_eq!(puts(&c), Ok(put));
        assert_eq!(check_shape(sensor_genesis()), Ok(Puts::Genesis));
        let mut g = Automerge::new();
        let c = change(&mut g, |tx| {
            let m = tx.put_object(ROOT, "cfg", ObjType::Map).unwrap();
            tx.put(&m, "k", 1).unwrap();
        });
        assert_eq!(check_shape(&c), Ok(Puts::Other));
        assert_eq!(check_in_doc(&c, &Automerge::new()), Ok(Puts::Other));
    }

    // Attack 1 of the hardening issue: deleting or replacing the readings map (or the schema).
    #[test]
    fn nothing_overwrites_the_genesis() {
        let mut d = sensor(1);
        let del = change(&mut d.clone(), |tx| tx.delete(ROOT, READINGS_KEY).unwrap());
        assert_eq!(check_shape(&del), Err(Refusal::OverwritesGenesis));
        let replace = change(&mut d.clone(), |tx| {
            tx.put_object(ROOT, READINGS_KEY, ObjType::Map).unwrap();
        });
        assert_eq!(check_shape(&replace), Err(Refusal::OverwritesGenesis));
        let schema = change(&mut d, |tx| tx.put(ROOT, SCHEMA_KEY, "x").unwrap());
        assert_eq!(check_shape(&schema), Err(Refusal::OverwritesGenesis));
    }

    // Readings are immutable, canonical puts of valid ids, alone in their change.
    #[test]
    fn readings_map_takes_only_new_readings() {
        let mut d = sensor(1);
        let map = readings(&d);
        change(&mut d, |tx| tx.put(&map, "r1", body("r1")).unwrap());
        let why = |c: &Change| match check_shape(c) {
            Err(Refusal::NotAReading { why, .. }) => Some(why),
            _ => None,
        };
        let other = Reading::from_json("r1", 6, &json!({"v": 2}))
            .unwrap()
            .encode();
        let over = change(&mut d.clone(), |tx| tx.put(&map, "r1", other).unwrap());
        assert_eq!(why(&over), Some(NotAReading::Overwrites));
        let del = change(&mut d.clone(), |tx| tx.delete(&map, "r1").unwrap());
        assert_eq!(why(&del), Some(NotAReading::NotAPut));
        let obj = change(&mut d.clone(), |tx| {
            tx.put_object(&map, "r2", ObjType::Map).unwrap();
        });
        assert_eq!(why(&obj), Some(NotAReading::NotAPut));
        let num = change(&mut d.clone(), |tx| tx.put(&map, "r2", 7).unwrap());
        assert_eq!(why(&num), Some(NotAReading::NotAPut));
        let junk = change(&mut d.clone(), |tx| tx.put(&map, "r2", "not json").unwrap());
        assert!(matches!(why(&junk), Some(NotAReading::Invalid(_))));
        let spaced = r#"{ "ts": 5, "fields": {"v": 1} }"#;
        let odd = change(&mut d.clone(), |tx| tx.put(&map, "r2", spaced).unwrap());
        assert!(Reading::decode("r2", spaced).is_ok());
        assert_eq!(why(&odd), Some(NotAReading::NotCanonical));
        let mixed = change(&mut d, |tx| {
            tx.put(&map, "r2", body("r2")).unwrap();
            tx.put(ROOT, "other", 1).unwrap();
        });
        assert_eq!(check_shape(&mixed), Err(Refusal::MixedReadings));
    }

    // A flipped bit inside a change still parses, as another change under the same actor and
    // sequence number (an equivocation made by corruption); its checksum tells it apart.
    #[test]
    fn corrupted_changes_fail_the_checksum() {
        let mut d = sensor(1);
        let map = readings(&d);
        let c = change(&mut d, |tx| tx.put(&map, "r1", body("r1")).unwrap());
        let bytes = c.raw_bytes().to_vec();
        assert_eq!(check_checksum(&bytes, &c), Ok(()));
        let mut flipped_somewhere = false;
        for at in 8..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x01;
            if let Ok(parsed) = Change::try_from(&bad[..]) {
                flipped_somewhere = true;
                assert_eq!(
                    check_checksum(&bad, &parsed),
                    Err(Refusal::Checksum),
                    "byte {at}"
                );
            }
        }
        assert!(
            flipped_somewhere,
            "some corruption parses: the check is needed"
        );
        let mut compressed = Automerge::new();
        let big = change(&mut compressed, |tx| {
            tx.put(ROOT, "z", "0".repeat(10_000)).unwrap()
        });
        let mut big = big;
        let packed = big.bytes().to_vec();
        assert_eq!(packed[8], 2, "a compressed chunk");
        let parsed = Change::try_from(&packed[..]).unwrap();
        assert_eq!(check_checksum(&packed, &parsed), Ok(()));
    }

    // Only the genesis is by the genesis actor.
    #[test]
    fn genesis_actor_writes_only_the_genesis() {
        let mut d = Automerge::new().with_actor(genesis_actor().to_automerge());
        let c = change(&mut d, |tx| tx.put(ROOT, "x", 1).unwrap());
        assert_eq!(check_shape(&c), Err(Refusal::GenesisActor));
    }

    // Attack 3: objects nested past the limit are refused, whether the chain is built in one
    // change or on top of objects the document holds; the depth a patch builds passes.
    #[test]
    fn nesting_is_bounded() {
        let nest = |d: &mut Automerge, from: automerge::ObjId, n: usize| {
            change(d, |tx| {
                let mut obj = from;
                for _ in 0..n {
                    obj = tx.put_object(&obj, "n", ObjType::Map).unwrap();
                }
            })
        };
        let mut d = Automerge::new();
        let ok = nest(&mut d.clone(), ROOT, OBJECT_DEPTH_MAX);
        assert_eq!(check_in_doc(&ok, &Automerge::new()), Ok(Puts::Other));
        let deep = nest(&mut d.clone(), ROOT, OBJECT_DEPTH_MAX + 1);
        let refused = Err(Refusal::TooDeep {
            max: OBJECT_DEPTH_MAX,
        });
        assert_eq!(check_in_doc(&deep, &Automerge::new()), refused);
        // Built in two changes: the second is refused against the document holding the first.
        nest(&mut d, ROOT, OBJECT_DEPTH_MAX);
        let (_, mut tip) = (0, ROOT);
        while let Ok(Some((_, id))) = d.get(&tip, "n") {
            tip = id;
        }
        let holder = d.clone();
        let one_more = nest(&mut d, tip, 1);
        assert_eq!(check_in_doc(&one_more, &holder), refused);
    }

    // A change naming an object the document lacks is refused before Automerge sees it.
    #[test]
    fn unknown_objects_are_refused() {
        let mut d = Automerge::new();
        change(&mut d, |tx| {
            tx.put_object(ROOT, "m", ObjType::Map).unwrap();
        });
        let (_, m) = d.get(ROOT, "m").unwrap().unwrap();
        let c = change(&mut d, |tx| tx.put(&m, "k", 1).unwrap());
        assert_eq!(
            check_in_doc(&c, &Automerge::new()),
            Err(Refusal::UnknownObject)
        );
    }

    // The readings map's depth is taken from the genesis alone (not a search): that agrees
    // with the document, and a reading for a document without the genesis is still refused.
    #[test]
    fn the_readings_maps_depth_agrees_with_the_document() {
        let held = sensor(1);
        assert_eq!(walked_depth_in(&held, &readings_map_id()), Some(1));
        assert_eq!(walked_depth_in(&Automerge::new(), &readings_map_id()), None);
        assert_eq!(depth_in(&held, &readings_map_id()), Some(1));
        assert_eq!(depth_in(&Automerge::new(), &readings_map_id()), None);
        let mut d = held.clone();
        let map = readings(&d);
        let c = change(&mut d, |tx| {
            tx.put(&map, "r-1", r#"{"fields":{},"ts":1}"#).unwrap();
        });
        assert!(matches!(check_in_doc(&c, &held), Ok(Puts::Readings(_))));
        assert_eq!(
            check_in_doc(&c, &Automerge::new()),
            Err(Refusal::UnknownObject)
        );
    }
}
