//! Reading a snapshot, a document's saved form (an Automerge document chunk), from untrusted
//! bytes.
//!
//! A peer that holds nothing of a document may receive it as Automerge's saved document rather
//! than change by change (PROTOCOL.md, "Snapshots"). Automerge's loader trusts a document chunk
//! more than a peer deserves: a deflated column is inflated whole whatever its size, and a
//! run-length encoded column may claim a run of any length (a few bytes that stand for billions
//! of rows, each of which the loader visits). [`open`] reads the chunk's layout first: one
//! document chunk and nothing after it, every deflated column inflated within one budget, every
//! column's rows counted within a bound, each column read to its end. Only then does Automerge
//! load it (and a panic of its loader is a refusal, not an outage); the document's changes come
//! out in a causal order, together within the same bound in bytes as a frame of changes.
//! Each change is then checked by the caller as a received change is.

use automerge::{Automerge, Change};

use crate::chunk::{Reader, DEFLATE, HEADER, MAGIC};
use crate::schema::Refusal;

/// Chunk type of a document.
const DOCUMENT: u8 = 0;

/// Column types (the low three bits of a column specification).
const GROUP: u64 = 0;
const ACTOR: u64 = 1;
const INTEGER: u64 = 2;
const DELTA: u64 = 3;
const BOOLEAN: u64 = 4;
const STRING: u64 = 5;
const VALUE_META: u64 = 6;
const VALUE: u64 = 7;

fn refused(why: impl Into<String>) -> Refusal {
    Refusal::Snapshot(why.into())
}

/// Opens a snapshot: `bytes` must be one Automerge document chunk, whose columns inflate to at
/// most `max` bytes in all and hold at most `max` rows each, and whose changes take at most
/// `max` bytes as change chunks. Returns the document's changes in a causal order (each after
/// its dependencies).
pub fn open(bytes: &[u8], max: usize) -> Result<Vec<Change>, Refusal> {
    open_loaded(bytes, max).map(|(_, changes)| changes)
}

/// [`open`], with the document Automerge loaded: it holds exactly those changes, so a node
/// that holds nothing of the document can take it in place of applying them again.
pub fn open_loaded(bytes: &[u8], max: usize) -> Result<(Automerge, Vec<Change>), Refusal> {
    if bytes.len() > max {
        return Err(Refusal::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    scan(bytes, max)?;
    // The layout is bounded; Automerge's own checks (the checksum, the heads against the
    // changes it rebuilds) decide the rest. Its loader is not known to panic on what passes
    // the scan, but a panic there must not end the node.
    let loaded = contained(|| Automerge::load(bytes))
        .map_err(|_| refused("the document does not load (the loader failed)"))?
        .map_err(|e| refused(format!("the document does not load: {e}")))?;
    let changes: Vec<Change> = loaded.get_changes(&[]);
    let len = changes
        .iter()
        .fold(0usize, |n, c| n.saturating_add(c.raw_bytes().len()));
    if len > max {
        return Err(Refusal::TooLarge { len, max });
    }
    Ok((loaded, changes))
}

thread_local! {
    /// Set while this thread runs Automerge's loader on a snapshot.
    static LOADING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread is running Automerge's loader on a received snapshot, where [`open`]
/// turns a panic into a refusal: a panic hook that ends the process on any panic (the daemon's)
/// lets such a panic unwind instead.
pub fn loading() -> bool {
    LOADING.with(|l| l.get())
}

/// Runs `f` (Automerge's loader) with [`loading`] set; a panic in it is an `Err`.
fn contained<T>(f: impl FnOnce() -> T) -> Result<T, ()> {
    LOADING.with(|l| l.set(true));
    #[cfg(test)]
    let f = || {
        if tests::PANIC_IN_LOADER.with(|p| p.get()) {
            panic!("a loader panic, planted by a test");
        }
        f()
    };
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|_| ());
    LOADING.with(|l| l.set(false));
    out
}

/// Reads the chunk's layout (the Automerge binary format's document chunk: header, actors,
/// heads, change and operation column specifications, their columns, head indices).
fn scan(bytes: &[u8], max: usize) -> Result<(), Refusal> {
    if bytes.len() <= HEADER || bytes[..4] != MAGIC {
        return Err(refused("not an Automerge chunk"));
    }
    if bytes[8] != DOCUMENT {
        return Err(refused(format!(
            "chunk type {} is not a document",
            bytes[8]
        )));
    }
    let mut r = Reader(&bytes[HEADER..]);
    let body = r
        .uleb()
        .and_then(|n| r.bytes(n))
        .ok_or_else(|| refused("chunk shorter than its length"))?;
    if !r.0.is_empty() {
        return Err(refused(format!(
            "{} bytes after the document chunk",
            r.0.len()
        )));
    }
    let layout = || refused("the document's layout does not read");
    let mut r = Reader(body);
    let actors = r.uleb().ok_or_else(layout)?;
    for _ in 0..actors {
        r.skip_prefixed().ok_or_else(layout)?;
    }
    let heads = r.uleb().ok_or_else(layout)?;
    r.bytes(heads.checked_mul(32).ok_or_else(layout)?)
        .ok_or_else(layout)?;
    let mut specs = Vec::new();
    for _ in 0..2 {
        let count = r.uleb().ok_or_else(layout)?;
        for _ in 0..count {
            let spec = r.uleb().ok_or_else(layout)?;
            let len = r.uleb().ok_or_else(layout)?;
            // Every specification takes at least two bytes: the count is bounded by the body.
            specs.push((spec, len));
        }
    }
    let mut budget = max;
    for (spec, len) in specs {
        let data = r.bytes(len).ok_or_else(layout)?;
        let inflated;
        let data = if spec & DEFLATE != 0 {
            inflated = inflate(data, &mut budget)?;
            &inflated[..]
        } else {
            data
        };
        rows(spec & 7, data, max as u64).ok_or_else(|| {
            refused(format!(
                "column {spec:#x} does not read, or holds more than {max} rows"
            ))
        })?;
    }
    // Head indices: one number per head, then nothing.
    for _ in 0..heads {
        if r.0.is_empty() {
            break; // older writers leave them out
        }
        r.uleb().ok_or_else(layout)?;
    }
    if !r.0.is_empty() {
        return Err(refused("bytes after the document's columns"));
    }
    Ok(())
}

/// Inflates a deflated column within what is left of `budget` (and takes it from there).
fn inflate(data: &[u8], budget: &mut usize) -> Result<Vec<u8>, Refusal> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::bufread::DeflateDecoder::new(data)
        .take(budget.saturating_add(1) as u64)
        .read_to_end(&mut out)
        .map_err(|e| refused(format!("a deflated column does not inflate: {e}")))?;
    if out.len() > *budget {
        return Err(refused(
            "the document's columns inflate past the frame limit",
        ));
    }
    *budget -= out.len();
    Ok(out)
}

/// The rows a column of type `kind` holds, `None` if it does not read to its end or holds more
/// than `max`.
fn rows(kind: u64, data: &[u8], max: u64) -> Option<u64> {
    let mut r = Reader(data);
    let mut rows: u64 = 0;
    let mut add = |n: u64| -> Option<()> {
        rows = rows.checked_add(n).filter(|&n| n <= max)?;
        Some(())
    };
    match kind {
        VALUE => return Some(0),
        BOOLEAN => {
            // Alternating run lengths, the first of `false`.
            while !r.0.is_empty() {
                add(r.uleb()?)?;
            }
        }
        GROUP | ACTOR | INTEGER | DELTA | STRING | VALUE_META => {
            let value = |r: &mut Reader| -> Option<()> {
                match kind {
                    DELTA => r.sleb().map(|_| ()),
                    STRING => r.skip_prefixed(),
                    _ => r.uleb().map(|_| ()),
                }
            };
            while !r.0.is_empty() {
                match r.sleb()? {
                    0 => add(r.uleb()?)?, // a run of nulls
                    n if n > 0 => {
                        add(n as u64)?;
                        value(&mut r)?;
                    }
                    n => {
                        add(n.unsigned_abs())?;
                        for _ in 0..n.unsigned_abs() {
                            value(&mut r)?;
                        }
                    }
                }
            }
        }
        _ => unreachable!("a column type has three bits"),
    }
    Some(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::leb::{sleb_bytes as sleb, uleb_bytes as uleb};
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ObjType, ROOT};

    /// A document of `n` changes of several kinds (map keys, a list, text, counters, deletes).
    fn document(n: usize) -> AutoCommit {
        let mut d = AutoCommit::new();
        let list = d.put_object(ROOT, "list", ObjType::List).unwrap();
        let text = d.put_object(ROOT, "text", ObjType::Text).unwrap();
        d.commit();
        for i in 0..n {
            d.put(ROOT, format!("k{}", i % 7), i as i64).unwrap();
            // Values that do not compress away: the value column grows past the point where
            // Automerge deflates it.
            let noise = blake3::hash(&i.to_le_bytes()).to_hex().to_string();
            d.put(ROOT, format!("n{}", i % 5), noise).unwrap();
            d.insert(&list, 0, format!("v{i}")).unwrap();
            d.splice_text(&text, 0, 0, "ab").unwrap();
            if i % 3 == 0 {
                d.delete(&list, 0).unwrap();
                d.put(ROOT, "f", i as f64 / 3.0).unwrap();
                d.put(ROOT, "b", i % 2 == 0).unwrap();
            }
            d.commit();
        }
        d
    }

    #[test]
    fn a_saved_document_opens_into_its_changes_in_causal_order() {
        let mut d = document(300);
        let saved = d.save();
        let changes = open(&saved, 1 << 20).expect("opens");
        let want: Vec<_> = d.get_changes(&[]).iter().map(|c| c.hash()).collect();
        let mut got: Vec<_> = changes.iter().map(|c| c.hash()).collect();
        // Every dependency comes before its dependent.
        let mut seen = std::collections::HashSet::new();
        for c in &changes {
            assert!(c.deps().iter().all(|h| seen.contains(h)), "causal order");
            seen.insert(c.hash());
        }
        got.sort();
        let mut want = want;
        want.sort();
        assert_eq!(got, want);
        // Large enough that Automerge deflates some columns: the scan inflates them.
        assert!(columns(&saved).iter().any(|(spec, _)| spec & DEFLATE != 0));
    }

    #[test]
    fn limits_are_the_bytes_as_sent_inflated_and_as_changes() {
        let mut d = document(300);
        let saved = d.save();
        let as_changes: usize = d.get_changes(&[]).iter().map(|c| c.raw_bytes().len()).sum();
        assert!(matches!(
            open(&saved, saved.len() - 1),
            Err(Refusal::TooLarge { .. })
        ));
        // Within the bytes as sent but not as changes.
        assert!(as_changes > saved.len());
        assert!(open(&saved, as_changes - 1).is_err());
        assert!(open(&saved, as_changes).is_ok());
    }

    #[test]
    fn anything_but_one_document_chunk_is_refused() {
        let mut d = document(3);
        let saved = d.save();
        let mut longer = saved.clone();
        longer.extend_from_slice(d.get_changes(&[])[0].raw_bytes());
        assert!(matches!(open(&longer, 1 << 20), Err(Refusal::Snapshot(_))));
        let change = d.get_changes(&[])[1].raw_bytes().to_vec();
        assert!(matches!(open(&change, 1 << 20), Err(Refusal::Snapshot(_))));
        assert!(matches!(open(&[], 1 << 20), Err(Refusal::Snapshot(_))));
        for cut in [1, 10, saved.len() / 2, saved.len() - 1] {
            assert!(open(&saved[..cut], 1 << 20).is_err(), "cut at {cut}");
        }
        // A flipped byte: the checksum, the layout or the heads refuse it.
        for at in (HEADER..saved.len()).step_by(7) {
            let mut bad = saved.clone();
            bad[at] ^= 0x5a;
            if let Ok(cs) = open(&bad, 1 << 20) {
                // Only a change Automerge rebuilds to the same heads survives: the same history.
                let mut got: Vec<_> = cs.iter().map(|c| c.hash()).collect();
                let mut want: Vec<_> = d.get_changes(&[]).iter().map(|c| c.hash()).collect();
                got.sort();
                want.sort();
                assert_eq!(got, want, "flipped byte {at}");
            }
        }
    }

    /// A document chunk's parts: the body's prefix (actors and heads), the column
    /// specifications per group (change columns, operation columns), each column's
    /// (specification, bytes), and the suffix (head indices).
    struct Layout {
        prefix: Vec<u8>,
        groups: Vec<usize>,
        cols: Vec<(u64, Vec<u8>)>,
        suffix: Vec<u8>,
    }

    fn layout(saved: &[u8]) -> Layout {
        let mut r = Reader(&saved[HEADER..]);
        let n = r.uleb().unwrap();
        let body = r.bytes(n).unwrap();
        let mut r = Reader(body);
        let actors = r.uleb().unwrap();
        for _ in 0..actors {
            r.skip_prefixed().unwrap();
        }
        let heads = r.uleb().unwrap();
        r.bytes(heads * 32).unwrap();
        let prefix = body[..body.len() - r.0.len()].to_vec();
        let (mut groups, mut specs) = (Vec::new(), Vec::new());
        for _ in 0..2 {
            let count = r.uleb().unwrap();
            groups.push(count as usize);
            for _ in 0..count {
                specs.push((r.uleb().unwrap(), r.uleb().unwrap()));
            }
        }
        let cols = specs
            .into_iter()
            .map(|(spec, len)| (spec, r.bytes(len).unwrap().to_vec()))
            .collect();
        Layout {
            prefix,
            groups,
            cols,
            suffix: r.0.to_vec(),
        }
    }

    fn columns(saved: &[u8]) -> Vec<(u64, Vec<u8>)> {
        layout(saved).cols
    }

    /// Rebuilds `saved` with column `which` (by position) replaced by `data`, and the checksum
    /// recomputed (a hostile sender computes it).
    fn with_column(saved: &[u8], which: usize, data: Vec<u8>, spec_or: u64) -> Vec<u8> {
        let Layout {
            prefix,
            groups,
            mut cols,
            suffix,
        } = layout(saved);
        cols[which] = (cols[which].0 | spec_or, data);
        let mut out_body = prefix;
        let mut k = 0;
        for g in groups {
            out_body.extend(uleb(g as u64));
            for (spec, data) in &cols[k..k + g] {
                out_body.extend(uleb(*spec));
                out_body.extend(uleb(data.len() as u64));
            }
            k += g;
        }
        for (_, c) in &cols {
            out_body.extend(c);
        }
        out_body.extend(suffix);
        let mut hashed = vec![DOCUMENT];
        hashed.extend(uleb(out_body.len() as u64));
        hashed.extend(&out_body);
        let digest = {
            use sha2::Digest;
            sha2::Sha256::digest(&hashed)
        };
        let mut out = MAGIC.to_vec();
        out.extend(&digest[..4]);
        out.extend(hashed);
        out
    }

    #[test]
    fn the_rebuilt_document_is_the_same_when_nothing_is_replaced() {
        // A column replaced by its own content keeps the chunk identical: the tests below
        // change exactly the column they name.
        let saved = document(20).save();
        let cols = columns(&saved);
        for (i, (_, data)) in cols.iter().enumerate() {
            assert_eq!(with_column(&saved, i, data.clone(), 0), saved, "column {i}");
        }
    }

    #[test]
    fn a_column_claiming_a_huge_run_is_refused_before_automerge_sees_it() {
        let mut d = document(20);
        let saved = d.save();
        let cols = columns(&saved);
        // Every run-length encoded column in turn, replaced by a run of 2^40 rows of one value.
        let mut tried = 0;
        for (i, (spec, _)) in cols.iter().enumerate() {
            let kind = spec & 7;
            let data = match kind {
                BOOLEAN => uleb(1 << 40),
                VALUE => continue,
                DELTA => [sleb(1 << 40), sleb(1)].concat(),
                STRING => [sleb(1 << 40), uleb(1), vec![b'x']].concat(),
                _ => [sleb(1 << 40), uleb(0)].concat(),
            };
            let bad = with_column(&saved, i, data, 0);
            match open(&bad, 1 << 20) {
                Err(Refusal::Snapshot(why)) => assert!(why.contains("rows"), "{why}"),
                other => panic!("column {i} ({spec:#x}): {other:?}"),
            }
            tried += 1;
        }
        assert!(tried > 10, "{tried} columns tried");
    }

    #[test]
    fn a_deflated_column_inflates_only_within_the_budget() {
        let mut d = document(20);
        let saved = d.save();
        // 64 MiB of zeros deflate to some 64 KiB: a bomb in column 0.
        let bomb = {
            use std::io::Write;
            let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
            z.write_all(&vec![0u8; 64 << 20]).unwrap();
            z.finish().unwrap()
        };
        let bad = with_column(&saved, 0, bomb, DEFLATE);
        match open(&bad, 1 << 20) {
            Err(Refusal::Snapshot(why)) => assert!(why.contains("inflate"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    thread_local! {
        /// Makes the next loads on this thread panic inside the loader.
        pub(super) static PANIC_IN_LOADER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    // A panic of Automerge's loader is a refusal, and a process-wide hook sees `loading()` set
    // while it unwinds (the daemon's hook then lets it unwind rather than end the process).
    #[test]
    fn a_loader_panic_is_a_refusal_and_marked_as_contained() {
        let saved = document(5).save();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let hook_seen = seen.clone();
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |_| {
            hook_seen.lock().unwrap().push(loading());
        }));
        PANIC_IN_LOADER.with(|p| p.set(true));
        let refused = open(&saved, 1 << 20);
        PANIC_IN_LOADER.with(|p| p.set(false));
        std::panic::set_hook(previous);
        match refused {
            Err(Refusal::Snapshot(why)) => assert!(why.contains("loader failed"), "{why}"),
            other => panic!("{other:?}"),
        }
        // Other tests' panics may reach the hook too; this thread's was seen while loading.
        assert!(seen.lock().unwrap().contains(&true));
        assert!(!loading(), "cleared after the load");
        assert!(open(&saved, 1 << 20).is_ok());
    }

    #[test]
    fn rows_are_counted_per_encoding() {
        assert_eq!(rows(INTEGER, &[sleb(3), uleb(9)].concat(), 10), Some(3));
        assert_eq!(
            rows(INTEGER, &[sleb(-2), uleb(1), uleb(2)].concat(), 10),
            Some(2)
        );
        assert_eq!(rows(INTEGER, &[sleb(0), uleb(5)].concat(), 10), Some(5));
        assert_eq!(rows(INTEGER, &[sleb(0), uleb(11)].concat(), 10), None);
        assert_eq!(
            rows(DELTA, &[sleb(-2), sleb(-1), sleb(3)].concat(), 10),
            Some(2)
        );
        assert_eq!(
            rows(STRING, &[sleb(2), uleb(2), b"ab".to_vec()].concat(), 10),
            Some(2)
        );
        assert_eq!(
            rows(BOOLEAN, &[uleb(0), uleb(4), uleb(3)].concat(), 10),
            Some(7)
        );
        assert_eq!(rows(VALUE, b"anything", 10), Some(0));
        // A column that stops inside a run does not read.
        assert_eq!(rows(INTEGER, &sleb(-2), 10), None);
        assert_eq!(
            rows(STRING, &[sleb(1), uleb(5), b"ab".to_vec()].concat(), 10),
            None
        );
        // A run the bound allows exactly.
        assert_eq!(rows(GROUP, &[sleb(10), uleb(1)].concat(), 10), Some(10));
    }
}
