//! Reading an Automerge change chunk from untrusted bytes before Automerge does.
//!
//! Automerge's parser trusts parts of a chunk it does not check: an operation naming an actor
//! past the change's actor table, or an object, key or predecessor counter past `u32::MAX`,
//! makes it panic (while parsing for counters, while expanding for actors), and a compressed
//! chunk is inflated whole whatever its size. [`parse`] reads the chunk's layout (the Automerge
//! binary format's change chunk: header, actor table, column specifications, columns) far
//! enough to refuse all three, and only then hands the bytes to Automerge.

use std::borrow::Cow;

use automerge::Change;

use crate::schema::Refusal;

/// First bytes of every Automerge chunk.
pub(crate) const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
/// Magic, checksum, chunk type.
pub(crate) const HEADER: usize = 4 + 4 + 1;
/// Chunk type of a change.
const CHANGE: u8 = 1;
/// Chunk type of a deflate-compressed change.
const COMPRESSED: u8 = 2;

/// Column type of actor indices (the low three bits of a column specification).
const ACTOR: u64 = 1;
/// Column type of unsigned integers, run-length encoded.
const INTEGER: u64 = 2;
/// Column type of integers stored as run-length encoded deltas.
const DELTA: u64 = 3;
/// Bit of a column specification marking a deflated column (never in a change Automerge writes).
pub(crate) const DEFLATE: u64 = 8;
/// Column ids (a specification's bits above the fourth) whose integers are operation counters:
/// the object, the key and the predecessors.
const COUNTER_COLUMNS: [u64; 3] = [0, 1, 7];

/// Parses a change from untrusted bytes: an Automerge change chunk (compressed or not), at most
/// `max` bytes as sent and inflated (a compressed chunk is never inflated past `max + 1`), whose
/// operation columns name only listed actors and counters Automerge can hold.
pub fn parse(bytes: &[u8], max: usize) -> Result<Change, Refusal> {
    if bytes.len() > max {
        return Err(Refusal::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    let body = body(bytes, max)?;
    check_columns(&body)?;
    Change::try_from(bytes).map_err(|e| Refusal::Unparsable(e.to_string()))
}

/// Every actor index and operation counter in a parsed change's columns is in range (for a
/// change that did not come through [`parse`]).
pub fn check_parsed(change: &Change) -> Result<(), Refusal> {
    body(change.raw_bytes(), usize::MAX).and_then(|b| check_columns(&b))
}

/// The chunk's content after its length: borrowed, or inflated (bounded) for a compressed chunk.
fn body(bytes: &[u8], max: usize) -> Result<Cow<'_, [u8]>, Refusal> {
    let unparsable = |why: &str| Refusal::Unparsable(why.to_string());
    if bytes.len() <= HEADER || bytes[..4] != MAGIC {
        return Err(unparsable("not an Automerge chunk"));
    }
    let kind = bytes[8];
    let mut r = Reader(&bytes[HEADER..]);
    let data = r
        .uleb()
        .and_then(|n| r.bytes(n))
        .ok_or_else(|| unparsable("chunk shorter than its length"))?;
    match kind {
        CHANGE => Ok(Cow::Borrowed(data)),
        COMPRESSED => {
            use std::io::Read;
            let mut out = Vec::new();
            flate2::bufread::DeflateDecoder::new(data)
                .take(max.saturating_add(1) as u64)
                .read_to_end(&mut out)
                .map_err(|e| Refusal::Unparsable(format!("compressed change: {e}")))?;
            if out.len().saturating_add(HEADER) > max {
                return Err(Refusal::TooLarge {
                    len: HEADER + out.len(),
                    max,
                });
            }
            Ok(Cow::Owned(out))
        }
        k => Err(Refusal::Unparsable(format!(
            "chunk type {k} is not a change"
        ))),
    }
}

/// What the columns of a change's content hold, as far as Automerge's parser trusts them.
struct Columns {
    /// Entries of the actor table (the author and the others).
    actors: u64,
    /// The largest actor index in any actor column.
    max_actor: Option<u64>,
    /// Whether every operation counter fits in 32 bits.
    counters_fit: bool,
}

fn check_columns(body: &[u8]) -> Result<(), Refusal> {
    let c = scan(body).ok_or_else(|| Refusal::Unparsable("change columns do not read".into()))?;
    if c.max_actor.is_some_and(|m| m >= c.actors) {
        return Err(Refusal::ActorIndex);
    }
    if !c.counters_fit {
        return Err(Refusal::CounterRange);
    }
    Ok(())
}

/// Reads a change's content, `None` if its layout does not read.
fn scan(body: &[u8]) -> Option<Columns> {
    let mut r = Reader(body);
    let deps = r.uleb()?;
    r.bytes(deps.checked_mul(32)?)?;
    r.skip_prefixed()?; // actor
    r.uleb()?; // seq
    r.uleb()?; // start op
    r.sleb()?; // time
    r.skip_prefixed()?; // message
    let others = r.uleb()?;
    for _ in 0..others {
        r.skip_prefixed()?;
    }
    let count = r.uleb()?;
    let mut specs = Vec::new();
    for _ in 0..count.min(1024) {
        specs.push((r.uleb()?, r.uleb()?));
    }
    if specs.len() as u64 != count {
        return None;
    }
    let mut out = Columns {
        actors: others.checked_add(1)?,
        max_actor: None,
        counters_fit: true,
    };
    for (spec, len) in specs {
        let data = r.bytes(len)?;
        let (id, kind) = (spec >> 4, spec & 7);
        let counter = COUNTER_COLUMNS.contains(&id);
        if kind != ACTOR && !(counter && (kind == INTEGER || kind == DELTA)) {
            continue;
        }
        if spec & DEFLATE != 0 {
            return None;
        }
        match kind {
            ACTOR => out.max_actor = out.max_actor.max(rle_max(data)),
            INTEGER => out.counters_fit &= rle_max(data).is_none_or(|m| m <= u64::from(u32::MAX)),
            _ => out.counters_fit &= delta_max(data) <= i128::from(u32::MAX),
        }
    }
    Some(out)
}

/// The largest value of a run-length encoded column of unsigned integers.
///
/// Automerge decodes a column lazily, as far as the operations need it, and does not mind a
/// column that ends inside a run: the values read here are the ones that decode, up to where
/// the data ends or stops decoding, a superset of what Automerge reads.
fn rle_max(data: &[u8]) -> Option<u64> {
    let mut r = Reader(data);
    let mut max = None;
    let mut next = || -> Option<()> {
        match r.sleb()? {
            0 => {
                r.uleb()?; // a run of nulls
            }
            n if n > 0 => max = max.max(Some(r.uleb()?)),
            n => {
                for _ in 0..n.unsigned_abs() {
                    max = max.max(Some(r.uleb()?));
                }
            }
        }
        Some(())
    };
    while next().is_some() {}
    max
}

/// The largest running value of a delta column (run-length encoded signed deltas from 0, summed
/// the way Automerge sums them: saturating at the bounds of an `i64`), read as [`rle_max`]
/// reads.
fn delta_max(data: &[u8]) -> i128 {
    let clamp = |v: i128| v.clamp(i128::from(i64::MIN), i128::from(i64::MAX));
    let mut r = Reader(data);
    let (mut value, mut max) = (0i128, 0i128);
    let mut next = || -> Option<()> {
        match r.sleb()? {
            0 => {
                r.uleb()?;
            }
            n if n > 0 => {
                // A run moves one way: its largest value is at one of its ends.
                value = clamp(value + i128::from(n) * i128::from(r.sleb()?));
                max = max.max(value);
            }
            n => {
                for _ in 0..n.unsigned_abs() {
                    value = clamp(value + i128::from(r.sleb()?));
                    max = max.max(value);
                }
            }
        }
        Some(())
    };
    while next().is_some() {}
    max
}

/// A cursor over LEB128 numbers and length-prefixed fields.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn bytes(&mut self, n: u64) -> Option<&'a [u8]> {
        let n = usize::try_from(n).ok()?;
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    /// A LEB128 number's bits, how many bits it had, and its last byte.
    fn leb(&mut self) -> Option<(u64, u32, u8)> {
        let mut v: u64 = 0;
        for i in 0..10u32 {
            let b = *self.bytes(1)?.first()?;
            v |= u64::from(b & 0x7f).checked_shl(7 * i)?;
            if b & 0x80 == 0 {
                return Some((v, 7 * (i + 1), b));
            }
        }
        None
    }

    pub(crate) fn uleb(&mut self) -> Option<u64> {
        self.leb().map(|(v, _, _)| v)
    }

    pub(crate) fn sleb(&mut self) -> Option<i64> {
        let (v, bits, last) = self.leb()?;
        let v = v as i64;
        // Sign-extend from the last byte's sign bit.
        Some(if bits < 64 && last & 0x40 != 0 {
            v | (-1i64 << bits)
        } else {
            v
        })
    }

    pub(crate) fn skip_prefixed(&mut self) -> Option<()> {
        let n = self.uleb()?;
        self.bytes(n).map(|_| ())
    }
}

/// LEB128 encoders for tests that build chunks by hand.
#[cfg(test)]
pub(crate) mod leb {
    pub(crate) fn uleb_bytes(mut v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return out;
            }
            out.push(b | 0x80);
        }
    }

    pub(crate) fn sleb_bytes(mut v: i64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if (v == 0 && b & 0x40 == 0) || (v == -1 && b & 0x40 != 0) {
                out.push(b);
                return out;
            }
            out.push(b | 0x80);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::leb::{sleb_bytes, uleb_bytes};
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ObjType, ROOT};
    use proptest::prelude::*;

    /// A change chunk (checksum zero) with the given columns: (specification, column bytes).
    fn chunk(others: usize, columns: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![0]; // no dependencies
        body.push(16);
        body.extend([7; 16]); // the author
        body.extend([1, 1, 0, 0]); // seq, start op, time, empty message
        body.extend(uleb_bytes(others as u64));
        for i in 0..others {
            body.push(16);
            body.extend([i as u8; 16]);
        }
        body.extend(uleb_bytes(columns.len() as u64));
        for (spec, data) in columns {
            body.extend(uleb_bytes(*spec));
            body.extend(uleb_bytes(data.len() as u64));
        }
        for (_, data) in columns {
            body.extend(data);
        }
        let mut out = MAGIC.to_vec();
        out.extend([0; 4]);
        out.push(CHANGE);
        out.extend(uleb_bytes(body.len() as u64));
        out.extend(body);
        out
    }

    /// A run-length encoded column of one literal run of unsigned values.
    fn uints(values: &[u64]) -> Vec<u8> {
        if values.is_empty() {
            return Vec::new();
        }
        let mut out = sleb_bytes(-(values.len() as i64));
        values.iter().for_each(|v| out.extend(uleb_bytes(*v)));
        out
    }

    /// A run-length encoded column of one literal run of signed values.
    fn ints(values: &[i64]) -> Vec<u8> {
        if values.is_empty() {
            return Vec::new();
        }
        let mut out = sleb_bytes(-(values.len() as i64));
        values.iter().for_each(|v| out.extend(sleb_bytes(*v)));
        out
    }

    /// One `set` into object `obj_ctr@0` keyed `k`, with predecessors `preds` (counter deltas)
    /// of actor 0.
    fn op_chunk(obj_ctr: u64, preds: &[i64]) -> Vec<u8> {
        chunk(
            0,
            &[
                (0x01, uints(&[0])),
                (0x02, uints(&[obj_ctr])),
                (0x15, {
                    let mut c = sleb_bytes(1);
                    c.extend([1, b'k']);
                    c
                }),
                (0x42, uints(&[1])),
                (0x70, uints(&[preds.len() as u64])),
                (0x71, uints(&vec![0; preds.len()])),
                (0x73, ints(preds)),
            ],
        )
    }

    // The fuzz finding: an object counter past 32 bits panicked Automerge's parser.
    #[test]
    fn counters_past_32_bits_are_refused_before_automerge_parses() {
        let over = u64::from(u32::MAX) + 1;
        assert_eq!(
            parse(&op_chunk(over, &[]), 1 << 20).err(),
            Some(Refusal::CounterRange)
        );
        assert_ne!(
            parse(&op_chunk(u64::from(u32::MAX), &[]), 1 << 20).err(),
            Some(Refusal::CounterRange)
        );
        // Deltas each in range whose sum is not.
        let half = i64::from(u32::MAX / 2 + 1);
        assert_eq!(
            parse(&op_chunk(1, &[half, half]), 1 << 20).err(),
            Some(Refusal::CounterRange)
        );
        assert_ne!(
            parse(&op_chunk(1, &[half, half - 1]), 1 << 20).err(),
            Some(Refusal::CounterRange)
        );
        // A run of one repeated delta.
        let mut run = sleb_bytes(3);
        run.extend(sleb_bytes(i64::from(u32::MAX / 3 + 1)));
        let plain = op_chunk(1, &[1, 1, 1]);
        assert_ne!(parse(&plain, 1 << 20).err(), Some(Refusal::CounterRange));
        let columns = [
            (0x01, uints(&[0])),
            (0x02, uints(&[1])),
            (0x42, uints(&[1])),
            (0x70, uints(&[3])),
            (0x71, uints(&[0, 0, 0])),
            (0x73, run),
        ];
        assert_eq!(
            parse(&chunk(0, &columns), 1 << 20).err(),
            Some(Refusal::CounterRange)
        );
    }

    // Automerge reads a column only as far as the operations need it: a run announcing more
    // values than the column holds still parses, so its values count up to where it ends.
    #[test]
    fn truncated_runs_count_as_far_as_they_read() {
        let over = u64::from(u32::MAX) + 1;
        let mut ctr = sleb_bytes(-5);
        ctr.extend(uleb_bytes(over));
        let columns = [
            (0x01, uints(&[0])),
            (0x02, ctr),
            (0x15, {
                let mut c = sleb_bytes(1);
                c.extend([1, b'k']);
                c
            }),
            (0x42, uints(&[1])),
        ];
        assert_eq!(
            parse(&chunk(0, &columns), 1 << 20).err(),
            Some(Refusal::CounterRange)
        );
        let mut actor = sleb_bytes(-5);
        actor.extend(uleb_bytes(3));
        let columns = [(0x01, actor), (0x02, uints(&[1])), (0x42, uints(&[1]))];
        assert_eq!(
            parse(&chunk(0, &columns), 1 << 20).err(),
            Some(Refusal::ActorIndex)
        );
    }

    #[test]
    fn actor_indices_past_the_table_are_refused() {
        let columns = |actor| {
            [
                (0x01, uints(&[actor])),
                (0x02, uints(&[1])),
                (0x42, uints(&[1])),
            ]
        };
        assert_eq!(
            parse(&chunk(1, &columns(2)), 1 << 20).err(),
            Some(Refusal::ActorIndex)
        );
        assert_ne!(
            parse(&chunk(1, &columns(1)), 1 << 20).err(),
            Some(Refusal::ActorIndex)
        );
    }

    #[test]
    fn honest_changes_parse_compressed_or_not() {
        let mut d = AutoCommit::new();
        let m = d.put_object(ROOT, "m", ObjType::Map).unwrap();
        let l = d.put_object(&m, "l", ObjType::List).unwrap();
        for i in 0..50 {
            d.insert(&l, i, i as i64).unwrap();
        }
        d.put(&m, "z", "0".repeat(10_000)).unwrap();
        d.commit();
        d.put(&m, "z", "1").unwrap();
        d.delete(&l, 3).unwrap();
        d.commit();
        for mut c in d.get_changes(&[]) {
            let raw = c.raw_bytes().to_vec();
            assert_eq!(parse(&raw, 1 << 20).map(|p| p.hash()), Ok(c.hash()));
            let packed = c.bytes().to_vec();
            assert_eq!(parse(&packed, 1 << 20).map(|p| p.hash()), Ok(c.hash()));
        }
    }

    // A compressed chunk is never inflated past the limit.
    #[test]
    fn compressed_chunks_are_measured_inflated() {
        let mut d = AutoCommit::new();
        d.put(ROOT, "z", "0".repeat(100_000)).unwrap();
        d.commit();
        let mut c = d.get_changes(&[]).into_iter().next().unwrap();
        let packed = c.bytes().to_vec();
        assert!(packed.len() < 10_000 && packed[8] == COMPRESSED);
        assert!(matches!(
            parse(&packed, 50_000),
            Err(Refusal::TooLarge { len, max: 50_000 }) if len <= HEADER + 50_001
        ));
        assert!(parse(&packed, 200_000).is_ok());
    }

    proptest! {
        // Any bytes, under a change's or a compressed change's header or none, are parsed or
        // refused without a panic.
        #[test]
        fn any_bytes_parse_or_are_refused(mut bytes in proptest::collection::vec(any::<u8>(), 0..96), kind in 0u8..4) {
            if kind > 0 && bytes.len() > HEADER {
                bytes[..4].copy_from_slice(&MAGIC);
                bytes[8] = kind;
            }
            let _ = parse(&bytes, 1000);
        }
    }

    proptest::proptest! {
        // The column reader decodes LEB128 as the format encodes it (signed run lengths
        // included), so honest changes are never misread.
        #[test]
        fn leb128_round_trips(u in proptest::prelude::any::<u64>(), i in proptest::prelude::any::<i64>()) {
            let ub = uleb_bytes(u);
            proptest::prop_assert_eq!(Reader(&ub).uleb(), Some(u));
            let sb = sleb_bytes(i);
            proptest::prop_assert_eq!(Reader(&sb).sleb(), Some(i));
        }
    }
}
