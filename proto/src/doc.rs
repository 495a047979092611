//! The document model over Automerge: sensor documents (readings keyed by id, derived
//! "latest") and generic JSON documents (views, merge patches, conflicts).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{
    legacy, Automerge, Change, ChangeHash, ObjId, ObjType, ReadDoc, ScalarValue, Value, ROOT,
};
use serde_json::{Map, Value as Json};

use crate::id::genesis_actor;
use crate::reading::Reading;

/// Key of the readings map in a sensor document.
pub const READINGS_KEY: &str = "readings";
/// Key and value marking a sensor document's schema.
pub const SCHEMA_KEY: &str = "schema";
/// The schema value written by the genesis change.
pub const SENSOR_SCHEMA: &str = "edgesync.sensor/1";
/// Deepest JSON merge patch accepted.
pub const PATCH_DEPTH_MAX: usize = 32;
/// Most JSON values in one merge patch.
pub const PATCH_VALUES_MAX: usize = 10_000;
/// Deepest object nesting a JSON view shows: every document built by merge patches fits
/// (a patch nests at most [`PATCH_DEPTH_MAX`] below the root). A peer can send deeper
/// documents; their views are refused instead of recursing (and overflowing the stack) as deep
/// as the peer chose.
pub const VIEW_DEPTH_MAX: usize = PATCH_DEPTH_MAX + 1;

/// A document cannot be shown as JSON.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum ViewError {
    /// Objects nest deeper than [`VIEW_DEPTH_MAX`].
    #[error("objects nest deeper than {max}")]
    TooDeep {
        /// The limit.
        max: usize,
    },
}

/// What kind of document this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DocKind {
    /// Holds readings keyed by id; begins with the shared genesis change.
    Sensor,
    /// Any other document.
    Generic,
}

/// The genesis change of every sensor document (hazard 1).
///
/// Two partitioned replicas that both create the same new sensor document must not create two
/// `readings` maps (one would hide the other after merge). Every node instead starts a sensor
/// document from this one change: constant actor, sequence 1, time 0, no dependencies, so its
/// bytes and hash are identical everywhere and the `readings` map has the same object id on
/// every replica.
pub fn sensor_genesis() -> &'static Change {
    static GENESIS: OnceLock<Change> = OnceLock::new();
    GENESIS.get_or_init(|| {
        let mut doc = Automerge::new().with_actor(genesis_actor().to_automerge());
        let mut tx = doc.transaction();
        tx.put(ROOT, SCHEMA_KEY, SENSOR_SCHEMA)
            .expect("put on a fresh document");
        tx.put_object(ROOT, READINGS_KEY, ObjType::Map)
            .expect("put_object on a fresh document");
        tx.commit_with(CommitOptions::default().with_time(0));
        doc.get_last_local_change().expect("genesis committed")
    })
}

/// The kind of `doc`: a sensor document holds the genesis change.
pub fn kind_of(doc: &Automerge) -> DocKind {
    // The change's metadata is enough (building the whole change is not cheap).
    if doc
        .get_change_meta_by_hash(&sensor_genesis().hash())
        .is_some()
    {
        DocKind::Sensor
    } else {
        DocKind::Generic
    }
}

/// The `readings` map of a sensor document: the object the genesis change created. `None` when
/// a change removed or replaced it (only a hostile or broken peer writes such a change).
pub(crate) fn readings_obj(doc: &Automerge) -> Option<ObjId> {
    // The genesis' readings map is the op (2, genesis actor): op 1 is the schema put.
    let all = doc.get_all(ROOT, READINGS_KEY).ok()?;
    let genesis = genesis_actor().to_automerge();
    all.into_iter().find_map(|(value, id)| match (&value, &id) {
        (Value::Object(ObjType::Map), ObjId::Id(2, actor, _)) if *actor == genesis => Some(id),
        _ => None,
    })
}

/// Outcome of one reading in an ingest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IngestOutcome {
    /// New: written in this change.
    Inserted,
    /// Already present with the same content: nothing written.
    Duplicate,
    /// Already present with different content: refused (a reading id names one reading).
    Conflict,
}

/// The stored body of reading `id` in the readings map `obj`, if present (an empty string
/// for a value that is not a string, which no valid reading equals).
pub(crate) fn reading_body(doc: &impl ReadDoc, obj: &ObjId, id: &str) -> Option<String> {
    match doc.get(obj, id) {
        Ok(Some((Value::Scalar(s), _))) => match s.as_ref() {
            ScalarValue::Str(b) => Some(b.to_string()),
            _ => Some(String::new()),
        },
        Ok(Some(_)) => Some(String::new()),
        _ => None,
    }
}

/// Writes the readings not yet present into the document as one change, authored by the
/// document's actor with sequence number `seq` (one past what the document holds of it),
/// after `prev`, the actor's change before it (none for the first). With `known_new` the
/// caller knows no id is in the document (the journal's fold on a settled node, whose ingest
/// judged every id against the document and which let nothing write it since), and the
/// document is not searched for them.
/// Returns the outcome per reading, in input order, and the change if anything was written;
/// Automerge's reason if it refuses the change (`seq` is not the next of the document's
/// actor), and then the document is unchanged.
///
/// The change is built whole (every op a put of a new key into the readings map, no
/// predecessors) and applied in one call: a transaction's put costs a search of the growing
/// map and a splice of its columns per reading, an applied change of many puts one merge.
pub(crate) fn put_readings(
    doc: &mut Automerge,
    obj: &ObjId,
    readings: &[(&str, &str)],
    time_s: i64,
    (seq, prev): (u64, Option<ChangeHash>),
    known_new: bool,
) -> Result<(Vec<IngestOutcome>, Option<Change>), String> {
    let mut outcomes = Vec::with_capacity(readings.len());
    let mut written: BTreeMap<&str, &str> = BTreeMap::new();
    let mut ops = Vec::new();
    let map = legacy::ObjectId::Id(legacy::OpId(2, genesis_actor().to_automerge()));
    for &(id, body) in readings {
        let existing = match written.get(id) {
            Some(b) => Some(b.to_string()),
            None if known_new => None,
            None => reading_body(doc, obj, id),
        };
        let outcome = match existing {
            Some(b) if b == body => IngestOutcome::Duplicate,
            Some(_) => IngestOutcome::Conflict,
            None => {
                ops.push(legacy::Op {
                    action: legacy::OpType::Put(ScalarValue::Str(body.into())),
                    obj: map.clone(),
                    key: legacy::Key::Map(id.into()),
                    pred: legacy::SortedVec::new(),
                    insert: false,
                });
                written.insert(id, body);
                IngestOutcome::Inserted
            }
        };
        outcomes.push(outcome);
    }
    if ops.is_empty() {
        return Ok((outcomes, None));
    }
    let mut deps = doc.get_heads();
    // The document's greatest op counter is one of its heads' (a change's ops come after
    // every op of its ancestors).
    let max_op = deps
        .iter()
        .filter_map(|h| doc.get_change_meta_by_hash(h))
        .map(|m| m.max_op)
        .max()
        .unwrap_or(0);
    // As Automerge's own transactions do: the actor's previous change is a dependency even
    // when it is not a head (a peer's change built on it since). A receiver proves a
    // relayed change from a later signed change of the same actor through dependencies, so
    // each change must name its predecessor.
    if let Some(p) = prev.filter(|p| !deps.contains(p)) {
        deps.push(p);
    }
    deps.sort_unstable();
    let change = Change::from(automerge::ExpandedChange {
        operations: ops,
        actor_id: doc.get_actor().clone(),
        hash: None,
        seq,
        start_op: std::num::NonZeroU64::new(max_op + 1).expect("one past a counter"),
        time: time_s,
        message: None,
        deps,
        extra_bytes: Vec::new(),
        author: None,
    });
    doc.apply_changes([change.clone()])
        .map_err(|e| e.to_string())?;
    if doc.get_change_meta_by_hash(&change.hash()).is_none() {
        return Err(format!("change {} was not applied", change.hash()));
    }
    Ok((outcomes, Some(change)))
}

/// The sensor view of a document.
#[derive(Clone, Debug, PartialEq)]
pub struct SensorView {
    /// Every reading, by id.
    pub readings: BTreeMap<String, Reading>,
    /// Ids whose stored value does not parse (only possible through a misbehaving peer).
    pub invalid: Vec<String>,
}

impl SensorView {
    /// The reading with the greatest (timestamp, id): the same on every replica holding the
    /// same readings, whatever order they arrived in.
    pub fn latest(&self) -> Option<&Reading> {
        self.readings
            .values()
            .max_by(|a, b| (a.ts_ms, &a.id).cmp(&(b.ts_ms, &b.id)))
    }

    /// `{"readings": {ID: {"ts", "fields"}}, "latest": {"id", "ts", "fields"} | null}`.
    pub fn to_json(&self) -> Json {
        let readings: Map<String, Json> = self
            .readings
            .iter()
            .map(|(id, r)| {
                (
                    id.clone(),
                    serde_json::json!({"ts": r.ts_ms, "fields": r.fields_json()}),
                )
            })
            .collect();
        let latest = self
            .latest()
            .map(|r| serde_json::json!({"id": r.id, "ts": r.ts_ms, "fields": r.fields_json()}))
            .unwrap_or(Json::Null);
        serde_json::json!({"readings": readings, "latest": latest})
    }
}

/// Reads the sensor view; `None` if the document is not a sensor document.
pub fn sensor_view(doc: &Automerge) -> Option<SensorView> {
    let obj = readings_obj(doc)?;
    let mut view = SensorView {
        readings: BTreeMap::new(),
        invalid: Vec::new(),
    };
    for key in doc.keys(&obj) {
        let parsed = match doc.get(&obj, key.as_str()) {
            Ok(Some((Value::Scalar(s), _))) => match s.as_ref() {
                ScalarValue::Str(body) => Reading::decode(&key, body).ok(),
                _ => None,
            },
            _ => None,
        };
        match parsed {
            Some(r) => {
                view.readings.insert(key, r);
            }
            None => view.invalid.push(key),
        }
    }
    Some(view)
}

/// Key under which the conflicts view lists all concurrent values of one key.
pub const CONFLICTS_KEY: &str = "$conflicts";

/// The JSON view of any document. With `conflicts`, a key that holds concurrent values
/// (concurrent writes of the same key) is shown as `{"$conflicts": [winner, other, ...]}`
/// instead of only the deterministic winner.
pub fn json_view(doc: &Automerge, conflicts: bool) -> Result<Json, ViewError> {
    let view = View { doc, conflicts };
    view.object(&ROOT, ObjType::Map, 0)
}

/// One JSON view being built; recursion is bounded by [`VIEW_DEPTH_MAX`].
struct View<'a> {
    doc: &'a Automerge,
    conflicts: bool,
}

impl View<'_> {
    fn object(&self, obj: &ObjId, ty: ObjType, depth: usize) -> Result<Json, ViewError> {
        if depth > VIEW_DEPTH_MAX {
            return Err(ViewError::TooDeep {
                max: VIEW_DEPTH_MAX,
            });
        }
        let doc = self.doc;
        Ok(match ty {
            ObjType::Map | ObjType::Table => {
                let mut out = Map::new();
                for key in doc.keys(obj) {
                    let all = doc.get_all(obj, key.as_str()).unwrap_or_default();
                    out.insert(key, self.values(all, depth)?);
                }
                Json::Object(out)
            }
            ObjType::List => {
                let items = (0..doc.length(obj))
                    .map(|i| self.values(doc.get_all(obj, i).unwrap_or_default(), depth))
                    .collect::<Result<_, _>>()?;
                Json::Array(items)
            }
            ObjType::Text => Json::String(doc.text(obj).unwrap_or_default()),
        })
    }

    /// The values at one key (of an object at `depth`).
    fn values(&self, mut all: Vec<(Value<'_>, ObjId)>, depth: usize) -> Result<Json, ViewError> {
        // `get_all` lists the winner last; the plain view shows the winner, as `get` would.
        let one = |(v, id): (Value<'_>, ObjId)| match v {
            Value::Object(ty) => self.object(&id, ty, depth + 1),
            Value::Scalar(s) => Ok(scalar_json(s.as_ref())),
        };
        if self.conflicts && all.len() > 1 {
            all.reverse();
            let values = all.into_iter().map(one).collect::<Result<_, _>>()?;
            let mut m = Map::new();
            m.insert(CONFLICTS_KEY.to_string(), Json::Array(values));
            Ok(Json::Object(m))
        } else {
            all.pop().map_or(Ok(Json::Null), one)
        }
    }
}

fn scalar_json(s: &ScalarValue) -> Json {
    match s {
        ScalarValue::Str(x) => Json::String(x.to_string()),
        ScalarValue::Int(i) => Json::from(*i),
        ScalarValue::Uint(u) => Json::from(*u),
        ScalarValue::F64(f) => serde_json::Number::from_f64(*f)
            .map(Json::Number)
            .unwrap_or(Json::Null),
        ScalarValue::Counter(c) => Json::from(i64::from(c)),
        ScalarValue::Timestamp(t) => Json::from(*t),
        ScalarValue::Boolean(b) => Json::Bool(*b),
        ScalarValue::Null => Json::Null,
        ScalarValue::Bytes(b) => Json::String(b.iter().map(|x| format!("{x:02x}")).collect()),
        ScalarValue::Unknown { .. } => Json::Null,
    }
}

/// Why a JSON merge patch was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PatchError {
    /// The patch is not a JSON object (it would replace the document's root map).
    #[error("a merge patch for a document must be a JSON object")]
    NotObject,
    /// Deeper than [`PATCH_DEPTH_MAX`].
    #[error("merge patch is nested deeper than {max}")]
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// More values than [`PATCH_VALUES_MAX`].
    #[error("merge patch has more than {max} values")]
    TooLarge {
        /// The limit.
        max: usize,
    },
}

/// Checks a patch's shape and bounds before any of it is applied.
pub fn validate_patch(patch: &Json) -> Result<(), PatchError> {
    fn walk(v: &Json, depth: usize, count: &mut usize) -> Result<(), PatchError> {
        *count += 1;
        if *count > PATCH_VALUES_MAX {
            return Err(PatchError::TooLarge {
                max: PATCH_VALUES_MAX,
            });
        }
        if depth > PATCH_DEPTH_MAX {
            return Err(PatchError::TooDeep {
                max: PATCH_DEPTH_MAX,
            });
        }
        match v {
            Json::Object(m) => m.values().try_for_each(|x| walk(x, depth + 1, count)),
            Json::Array(a) => a.iter().try_for_each(|x| walk(x, depth + 1, count)),
            _ => Ok(()),
        }
    }
    if !patch.is_object() {
        return Err(PatchError::NotObject);
    }
    walk(patch, 0, &mut 0)
}

/// Applies an RFC 7386 merge patch as one change. Returns the change hash, or `None` when the
/// patch changes nothing.
pub(crate) fn apply_merge_patch(
    doc: &mut Automerge,
    patch: &Json,
    time_s: i64,
) -> Option<ChangeHash> {
    let mut tx = doc.transaction();
    merge_into(&mut tx, &ROOT, patch);
    if tx.pending_ops() == 0 {
        tx.rollback();
        return None;
    }
    tx.commit_with(CommitOptions::default().with_time(time_s)).0
}

fn merge_into<T: Transactable>(tx: &mut T, obj: &ObjId, patch: &Json) {
    let Json::Object(fields) = patch else { return };
    for (key, value) in fields {
        let current = tx.get(obj, key.as_str()).ok().flatten();
        match value {
            Json::Null => {
                if current.is_some() {
                    tx.delete(obj, key.as_str()).expect("delete existing key");
                }
            }
            Json::Object(_) => {
                let target = match current {
                    Some((Value::Object(ObjType::Map), id)) => id,
                    _ => tx
                        .put_object(obj, key.as_str(), ObjType::Map)
                        .expect("put map"),
                };
                merge_into(tx, &target, value);
            }
            Json::Array(items) => {
                let list = tx
                    .put_object(obj, key.as_str(), ObjType::List)
                    .expect("put list");
                for (i, item) in items.iter().enumerate() {
                    insert_json(tx, &list, i, item);
                }
            }
            scalar => {
                let new = json_scalar(scalar);
                let same = matches!(&current, Some((Value::Scalar(s), _)) if s.as_ref() == &new);
                if !same {
                    tx.put(obj, key.as_str(), new).expect("put scalar");
                }
            }
        }
    }
}

fn insert_json<T: Transactable>(tx: &mut T, list: &ObjId, index: usize, value: &Json) {
    match value {
        Json::Object(m) => {
            let obj = tx
                .insert_object(list, index, ObjType::Map)
                .expect("insert map");
            for (k, v) in m {
                put_json(tx, &obj, k, v);
            }
        }
        Json::Array(items) => {
            let inner = tx
                .insert_object(list, index, ObjType::List)
                .expect("insert list");
            for (i, item) in items.iter().enumerate() {
                insert_json(tx, &inner, i, item);
            }
        }
        scalar => tx
            .insert(list, index, json_scalar(scalar))
            .expect("insert scalar"),
    }
}

fn put_json<T: Transactable>(tx: &mut T, obj: &ObjId, key: &str, value: &Json) {
    match value {
        Json::Object(m) => {
            let inner = tx.put_object(obj, key, ObjType::Map).expect("put map");
            for (k, v) in m {
                put_json(tx, &inner, k, v);
            }
        }
        Json::Array(items) => {
            let list = tx.put_object(obj, key, ObjType::List).expect("put list");
            for (i, item) in items.iter().enumerate() {
                insert_json(tx, &list, i, item);
            }
        }
        scalar => tx.put(obj, key, json_scalar(scalar)).expect("put scalar"),
    }
}

fn json_scalar(v: &Json) -> ScalarValue {
    match v {
        Json::Bool(b) => ScalarValue::Boolean(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => ScalarValue::Int(i),
            (None, Some(u)) => ScalarValue::Uint(u),
            _ => ScalarValue::F64(n.as_f64().unwrap_or(0.0)),
        },
        Json::String(s) => ScalarValue::Str(s.as_str().into()),
        _ => ScalarValue::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vclock::Actor;
    use serde_json::json;

    fn doc_with_actor(n: u8) -> Automerge {
        Automerge::new().with_actor(Actor([n; 16]).to_automerge())
    }

    fn sensor_doc(n: u8) -> Automerge {
        let mut d = doc_with_actor(n);
        d.apply_changes([sensor_genesis().clone()]).unwrap();
        d
    }

    fn reading(id: &str, ts: i64, v: i64) -> Reading {
        Reading::from_json(id, ts, &json!({ "v": v })).unwrap()
    }

    // The genesis change is byte-identical on every call (and so on every node).
    #[test]
    fn genesis_is_deterministic() {
        let g = sensor_genesis();
        assert_eq!(g.seq(), 1);
        assert!(g.deps().is_empty());
        let again = Change::try_from(g.raw_bytes()).unwrap();
        assert_eq!(again.hash(), g.hash());
    }

    // Hazard 1: two partitioned replicas that both create the same sensor document keep each
    // other's readings after merging, because both start from the shared genesis.
    #[test]
    fn concurrent_creation_keeps_both_sides() {
        let mut a = sensor_doc(1);
        let mut b = sensor_doc(2);
        put(&mut a, &[reading("ra", 1, 1)], 0);
        put(&mut b, &[reading("rb", 2, 2)], 0);
        a.merge(&mut b.clone()).unwrap();
        b.merge(&mut a.clone()).unwrap();
        for d in [&a, &b] {
            let view = sensor_view(d).unwrap();
            assert_eq!(view.readings.keys().collect::<Vec<_>>(), vec!["ra", "rb"]);
            assert_eq!(view.latest().unwrap().id, "rb");
        }
    }

    // The counterfactual: creating the readings map lazily on both sides loses one side.
    // This is why the genesis exists; if Automerge ever changed, this test would say so.
    #[test]
    fn lazy_creation_would_lose_data() {
        let mut a = doc_with_actor(1);
        let mut b = doc_with_actor(2);
        for (d, id) in [(&mut a, "ra"), (&mut b, "rb")] {
            let mut tx = d.transaction();
            let m = tx.put_object(ROOT, READINGS_KEY, ObjType::Map).unwrap();
            tx.put(&m, id, "x").unwrap();
            tx.commit();
        }
        a.merge(&mut b).unwrap();
        let (_, m) = a.get(ROOT, READINGS_KEY).unwrap().unwrap();
        assert_eq!(a.keys(&m).count(), 1, "one side's map hides the other");
    }

    // Same id twice is a duplicate; same id with other content is a conflict; neither writes.
    #[test]
    fn ingest_dedup_by_id() {
        let mut d = sensor_doc(1);
        let (o, h) = put(&mut d, &[reading("r1", 5, 1), reading("r1", 5, 1)], 0);
        assert_eq!(o, vec![IngestOutcome::Inserted, IngestOutcome::Duplicate]);
        assert!(h.is_some());
        let (o, h) = put(&mut d, &[reading("r1", 5, 1), reading("r1", 5, 2)], 0);
        assert_eq!(o, vec![IngestOutcome::Duplicate, IngestOutcome::Conflict]);
        assert!(h.is_none(), "nothing new, no change");
    }

    // "latest" is the greatest (ts, id), independent of arrival order.
    #[test]
    fn latest_is_order_independent() {
        let rs = [reading("b", 10, 1), reading("a", 10, 2), reading("c", 9, 3)];
        let mut d1 = sensor_doc(1);
        let mut d2 = sensor_doc(2);
        for r in &rs {
            put(&mut d1, std::slice::from_ref(r), 0);
        }
        for r in rs.iter().rev() {
            put(&mut d2, std::slice::from_ref(r), 0);
        }
        assert_eq!(sensor_view(&d1).unwrap().latest().unwrap().id, "b");
        assert_eq!(sensor_view(&d2).unwrap().latest().unwrap().id, "b");
    }

    // RFC 7386: objects merge, null deletes, arrays and scalars replace.
    #[test]
    fn merge_patch_semantics() {
        let mut d = doc_with_actor(1);
        apply_merge_patch(
            &mut d,
            &json!({"a": 1, "b": {"c": 2, "d": 3}, "l": [1, {"x": true}]}),
            0,
        );
        apply_merge_patch(
            &mut d,
            &json!({"a": null, "b": {"c": 5}, "l": ["z"], "s": "t"}),
            0,
        );
        assert_eq!(
            json_view(&d, false).unwrap(),
            json!({"b": {"c": 5, "d": 3}, "l": ["z"], "s": "t"})
        );
        assert!(
            apply_merge_patch(&mut d, &json!({"s": "t"}), 0).is_none(),
            "no-op patch makes no change"
        );
    }

    // Concurrent edits of one key are visible in the conflicts view, and the plain view shows
    // the same winner on both replicas.
    #[test]
    fn conflicts_are_visible() {
        let mut a = doc_with_actor(1);
        apply_merge_patch(&mut a, &json!({"k": 0}), 0);
        let mut b = a.fork().with_actor(Actor([2; 16]).to_automerge());
        apply_merge_patch(&mut a, &json!({"k": "from-a"}), 0);
        apply_merge_patch(&mut b, &json!({"k": "from-b"}), 0);
        a.merge(&mut b.clone()).unwrap();
        b.merge(&mut a.clone()).unwrap();
        assert_eq!(json_view(&a, false).unwrap(), json_view(&b, false).unwrap());
        let c = json_view(&a, true).unwrap();
        let mut vals: Vec<String> = c["k"][CONFLICTS_KEY]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(vals[0], json_view(&a, false).unwrap()["k"], "winner first");
        vals.sort();
        assert_eq!(vals, vec!["from-a", "from-b"]);
    }

    // Patches that are not objects, too deep or too large are refused before any write.
    #[test]
    fn patch_bounds() {
        assert_eq!(validate_patch(&json!([1])), Err(PatchError::NotObject));
        let mut deep = json!(1);
        for _ in 0..=PATCH_DEPTH_MAX {
            deep = json!({ "a": deep });
        }
        assert_eq!(
            validate_patch(&deep),
            Err(PatchError::TooDeep {
                max: PATCH_DEPTH_MAX
            })
        );
        let wide: Map<String, Json> = (0..=PATCH_VALUES_MAX)
            .map(|i| (i.to_string(), json!(1)))
            .collect();
        assert_eq!(
            validate_patch(&Json::Object(wide)),
            Err(PatchError::TooLarge {
                max: PATCH_VALUES_MAX
            })
        );
        assert_eq!(validate_patch(&json!({"a": [1, {"b": 2}]})), Ok(()));
    }

    /// A document whose maps nest `depth` deep below the root.
    fn nested(depth: usize) -> Automerge {
        let mut d = Automerge::new();
        let mut tx = d.transaction();
        let mut obj = ROOT;
        for _ in 0..depth {
            obj = tx.put_object(&obj, "n", ObjType::Map).unwrap();
        }
        tx.commit();
        d
    }

    // Views stop at the depth bound with a typed error instead of recursing as deep as the
    // document goes; every document a merge patch can build is within the bound.
    #[test]
    fn views_are_depth_bounded() {
        assert!(json_view(&nested(VIEW_DEPTH_MAX), true).is_ok());
        let deep = Err(ViewError::TooDeep {
            max: VIEW_DEPTH_MAX,
        });
        assert_eq!(json_view(&nested(VIEW_DEPTH_MAX + 1), false), deep);
        let mut patch = serde_json::json!(1);
        for _ in 0..PATCH_DEPTH_MAX {
            patch = serde_json::json!({ "n": patch });
        }
        validate_patch(&patch).unwrap();
        let mut d = Automerge::new();
        apply_merge_patch(&mut d, &patch, 0).unwrap();
        assert!(json_view(&d, true).is_ok());
    }

    // The fold's change, built whole, is byte for byte the change an Automerge transaction
    // makes of the same puts: the same sequence number, start op and dependencies, the
    // actor's previous change among them even when a peer's change built on it since (a
    // receiver proves a relayed change through its actor's later signed one; seed 371 of the
    // byzantine swarm lost that when the fold named the heads alone).
    #[test]
    fn put_readings_makes_the_change_a_transaction_makes() {
        let mut ours = Automerge::new().with_actor(automerge::ActorId::from([1u8; 16]));
        ours.apply_changes([sensor_genesis().clone()]).unwrap();
        let mut peer = ours.fork().with_actor(automerge::ActorId::from([2u8; 16]));
        let mut theirs = ours.fork().with_actor(automerge::ActorId::from([1u8; 16]));
        let r1 = reading("r1", 1, 1);
        let r2 = reading("r2", 2, 2);
        for (i, r) in [&r1, &r2].into_iter().enumerate() {
            let (_, built) = put(&mut ours, std::slice::from_ref(r), 7);
            let map = readings_obj(&theirs).unwrap();
            let mut tx = theirs.transaction();
            tx.put(&map, r.id.as_str(), r.encode()).unwrap();
            tx.commit_with(CommitOptions::default().with_time(7));
            let made = theirs.get_last_local_change().unwrap();
            assert_eq!(built, Some(made.hash()), "change {i}");
            if i == 0 {
                // A peer builds on the first: it is no longer a head where the second is made.
                peer.apply_changes([made.clone()]).unwrap();
                let pmap = readings_obj(&peer).unwrap();
                let mut tx = peer.transaction();
                tx.put(&pmap, "p1", reading("p1", 3, 3).encode()).unwrap();
                tx.commit();
                let p = peer.get_last_local_change().unwrap();
                ours.apply_changes([p.clone()]).unwrap();
                theirs.apply_changes([p]).unwrap();
                assert!(!ours.get_heads().contains(&made.hash()));
            }
        }
    }

    // Told the ids are new, the fold writes the change it writes after searching for them.
    #[test]
    fn put_readings_of_known_new_ids_makes_the_same_change() {
        let mut doc = Automerge::new().with_actor(automerge::ActorId::from([1u8; 16]));
        doc.apply_changes([sensor_genesis().clone()]).unwrap();
        let (_, first) = put(&mut doc, &[reading("r1", 1, 1)], 7);
        let map = readings_obj(&doc).unwrap();
        let prev = first.map(|h| (1, Some(h))).unwrap();
        let bodies = [
            ("r2", reading("r2", 2, 2).encode()),
            ("r3", reading("r3", 3, 3).encode()),
        ];
        let pairs: Vec<(&str, &str)> = bodies.iter().map(|(i, b)| (*i, b.as_str())).collect();
        let (mut searched, mut trusted) = (doc.fork(), doc.fork());
        searched.set_actor(automerge::ActorId::from([1u8; 16]));
        trusted.set_actor(automerge::ActorId::from([1u8; 16]));
        let next = (prev.0 + 1, prev.1);
        let a = put_readings(&mut searched, &map, &pairs, 7, next, false).unwrap();
        let b = put_readings(&mut trusted, &map, &pairs, 7, next, true).unwrap();
        assert_eq!(a.0, vec![IngestOutcome::Inserted; 2]);
        assert_eq!(a.0, b.0);
        assert_eq!(a.1.unwrap().hash(), b.1.unwrap().hash());
    }

    /// `put_readings` into a sensor document's (intact) readings map.
    fn put(
        doc: &mut Automerge,
        readings: &[Reading],
        time_s: i64,
    ) -> (Vec<IngestOutcome>, Option<ChangeHash>) {
        let map = readings_obj(doc).unwrap();
        // Automerge finds "local" changes only for an actor it had when the actor was set.
        let actor = doc.get_actor().clone();
        doc.set_actor(actor);
        let last = doc.get_last_local_change();
        let (seq, prev) = last.map_or((1, None), |c| (c.seq() + 1, Some(c.hash())));
        let bodies: Vec<(String, String)> = readings
            .iter()
            .map(|r| (r.id.clone(), r.encode()))
            .collect();
        let pairs: Vec<(&str, &str)> = bodies
            .iter()
            .map(|(i, b)| (i.as_str(), b.as_str()))
            .collect();
        let (out, change) = put_readings(doc, &map, &pairs, time_s, (seq, prev), false).unwrap();
        (out, change.map(|c| c.hash()))
    }
}
