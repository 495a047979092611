//! Sensor streams stored as time buckets.
//!
//! A client names a stream (`site-a/temp-1`); the node keeps it as one sensor document per
//! bucket of reading time, so no document grows past one bucket, and a bucket wholly in the
//! past can be dropped whole (retention, pruning). A bucket is an ordinary document on the
//! wire: sync, receipts and relays stay per document. Its id is the stream's id with one more
//! segment naming the bucket's span:
//!
//! ```text
//! site-a/temp-1/_b.0001795708800000.3600000
//!               ^^^ start (ms, 16 digits) ^^^ width (ms)
//! ```
//!
//! The span is in the id, so every node agrees on it whatever its own bucket width, and a
//! reading can be checked against the bucket it is written into. Start is zero-padded so that
//! ids sort by start within a stream.

use std::fmt;

use crate::id::{DocId, DOC_ID_BYTES_MAX, DOC_ID_SEGMENTS_MAX};
use crate::reading::Reading;

/// First characters of a bucket's last segment. Document ids with such a segment are buckets
/// and nothing else: a merge patch or a stream name may not use one.
pub const BUCKET_MARK: &str = "_b.";
/// Digits of a bucket's start: every millisecond timestamp a reading may carry.
const START_DIGITS: usize = 16;
/// Largest reading timestamp a stream accepts (exclusive): 10^16 ms, year 318,857.
pub const TS_LIMIT_MS: i64 = 10_i64.pow(START_DIGITS as u32);
/// Smallest bucket width: one second.
pub const BUCKET_MS_MIN: u64 = 1_000;
/// Largest bucket width: one day.
pub const BUCKET_MS_MAX: u64 = 86_400_000;
/// Bytes a bucket segment adds to its stream's id, at most: `/`, the mark, 16 digits, `.`,
/// 8 digits of width.
pub const BUCKET_SUFFIX_BYTES_MAX: usize = 1 + BUCKET_MARK.len() + START_DIGITS + 1 + 8;

/// Most buckets one `Node::expire` call drops: one commit stays small, and a node that comes
/// back after a long absence catches up over a few calls instead of stalling.
pub const EXPIRE_BATCH_MAX: usize = 256;

/// A stream name cannot be used.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StreamError {
    /// The name is itself a bucket's, or has a bucket segment inside.
    #[error("{0} names a bucket, not a stream; write to the stream's name")]
    IsBucket(DocId),
    /// Too long or too deep to leave room for the bucket segment.
    #[error(
        "stream name {0} leaves no room for a bucket segment (at most {max_bytes} bytes and {max_segments} segments)",
        max_bytes = DOC_ID_BYTES_MAX - BUCKET_SUFFIX_BYTES_MAX,
        max_segments = DOC_ID_SEGMENTS_MAX - 1
    )]
    TooLong(DocId),
}

/// One bucket: the stream it belongs to and its half-open span of reading time.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bucket {
    /// The stream.
    pub stream: DocId,
    /// First millisecond in the bucket.
    pub start_ms: u64,
    /// Width in milliseconds; the bucket ends (exclusive) at `start_ms + width_ms`.
    pub width_ms: u64,
}

impl Bucket {
    /// The bucket of `stream` that holds timestamp `ts_ms` at width `width_ms` (aligned to
    /// multiples of the width since the epoch).
    pub fn of(stream: &DocId, ts_ms: u64, width_ms: u64) -> Bucket {
        Bucket {
            stream: stream.clone(),
            start_ms: ts_ms - ts_ms % width_ms,
            width_ms,
        }
    }

    /// First millisecond after the bucket.
    pub fn end_ms(&self) -> u64 {
        self.start_ms + self.width_ms
    }

    /// Whether the bucket's span holds `ts_ms`.
    pub fn holds(&self, ts_ms: i64) -> bool {
        u64::try_from(ts_ms).is_ok_and(|t| (self.start_ms..self.end_ms()).contains(&t))
    }

    /// The bucket's document id.
    pub fn doc(&self) -> DocId {
        let id = format!(
            "{}/{BUCKET_MARK}{:0width$}.{}",
            self.stream,
            self.start_ms,
            self.width_ms,
            width = START_DIGITS
        );
        DocId::new(id).expect("stream names leave room for the bucket segment")
    }

    /// The bucket a document id names; `None` for any other document.
    pub fn parse(doc: &DocId) -> Option<Bucket> {
        let (stream, last) = doc.as_str().rsplit_once('/')?;
        let rest = last.strip_prefix(BUCKET_MARK)?;
        let (start, width) = rest.split_once('.')?;
        let digits = |s: &str, max: usize| {
            !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit())
        };
        // The width without leading zeros: a bucket has exactly one id (`Bucket::doc`), so a
        // write addressed to a bucket goes to the document that was named.
        if start.len() != START_DIGITS
            || !digits(start, START_DIGITS)
            || !digits(width, 8)
            || width.starts_with('0')
        {
            return None;
        }
        let start_ms: u64 = start.parse().ok()?;
        let width_ms: u64 = width.parse().ok()?;
        if !(BUCKET_MS_MIN..=BUCKET_MS_MAX).contains(&width_ms)
            || !start_ms.is_multiple_of(width_ms)
        {
            return None;
        }
        let stream = DocId::new(stream).ok()?;
        if is_bucket_like(&stream) {
            return None;
        }
        Some(Bucket {
            stream,
            start_ms,
            width_ms,
        })
    }
}

impl fmt::Display for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.doc())
    }
}

/// True when any segment of `doc` starts with the bucket mark.
pub fn is_bucket_like(doc: &DocId) -> bool {
    doc.as_str().split('/').any(|s| s.starts_with(BUCKET_MARK))
}

/// Checks that `stream` may name a stream: no bucket segment, and room for one.
pub fn check_stream(stream: &DocId) -> Result<(), StreamError> {
    if is_bucket_like(stream) {
        return Err(StreamError::IsBucket(stream.clone()));
    }
    let segments = stream.as_str().split('/').count();
    if stream.as_str().len() + BUCKET_SUFFIX_BYTES_MAX > DOC_ID_BYTES_MAX
        || segments >= DOC_ID_SEGMENTS_MAX
    {
        return Err(StreamError::TooLong(stream.clone()));
    }
    Ok(())
}

/// The first key of a stream's buckets in document-id order (every bucket id of the stream
/// sorts at or after it, and before [`bucket_range_end`]).
pub fn bucket_range_start(stream: &DocId) -> String {
    format!("{stream}/{BUCKET_MARK}")
}

/// The key after a stream's buckets in document-id order.
pub fn bucket_range_end(stream: &DocId) -> String {
    // '/' + "_b" + one past '.': every bucket segment starts with "_b.".
    format!("{stream}/_b/")
}

/// A position in a stream's (timestamp, id) order: paging resumes after it. Shown to clients as
/// an opaque string.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    /// Timestamp of the last reading returned.
    pub ts_ms: i64,
    /// Its id.
    pub id: String,
}

/// A cursor that does not parse.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
#[error("not a cursor this node issued")]
pub struct BadCursor;

impl Cursor {
    /// The cursor after `r`.
    pub fn after(r: &Reading) -> Cursor {
        Cursor {
            ts_ms: r.ts_ms,
            id: r.id.clone(),
        }
    }

    /// The opaque form: `<ts>.<id as hex>`.
    pub fn encode(&self) -> String {
        let hex: String = self.id.bytes().map(|b| format!("{b:02x}")).collect();
        format!("{}.{hex}", self.ts_ms)
    }

    /// Parses [`Cursor::encode`]'s form.
    pub fn decode(s: &str) -> Result<Cursor, BadCursor> {
        let (ts, hex) = s.split_once('.').ok_or(BadCursor)?;
        if ts.is_empty() || ts.len() > 20 || !ts.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BadCursor);
        }
        let ts_ms: i64 = ts.parse().map_err(|_| BadCursor)?;
        if hex.len() % 2 != 0 || hex.len() > 2 * crate::reading::READING_ID_BYTES_MAX {
            return Err(BadCursor);
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| BadCursor))
            .collect::<Result<Vec<u8>, _>>()?;
        let id = String::from_utf8(bytes).map_err(|_| BadCursor)?;
        Ok(Cursor { ts_ms, id })
    }
}

/// Which readings of a stream a read wants: timestamps in `from..to` (half-open, either end
/// open), after `after` in (timestamp, id) order, at most `limit`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    /// Smallest timestamp (inclusive).
    pub from_ms: Option<i64>,
    /// Largest timestamp (exclusive).
    pub to_ms: Option<i64>,
    /// Resume after this reading.
    pub after: Option<Cursor>,
    /// Most readings in the page.
    pub limit: usize,
}

/// Default page size of a range read.
pub const PAGE_DEFAULT: usize = 1_000;
/// Largest page a range read returns.
pub const PAGE_MAX: usize = 10_000;

impl Default for Range {
    fn default() -> Self {
        Range {
            from_ms: None,
            to_ms: None,
            after: None,
            limit: PAGE_DEFAULT,
        }
    }
}

impl Range {
    /// Whether `r` falls in the range (ignoring the limit).
    pub fn admits(&self, r: &Reading) -> bool {
        self.from_ms.is_none_or(|f| r.ts_ms >= f)
            && self.to_ms.is_none_or(|t| r.ts_ms < t)
            && self
                .after
                .as_ref()
                .is_none_or(|c| (r.ts_ms, r.id.as_str()) > (c.ts_ms, c.id.as_str()))
    }

    /// Whether the range can hold anything in `[start, end)`.
    pub fn overlaps(&self, start_ms: u64, end_ms: u64) -> bool {
        let lo = self
            .from_ms
            .max(self.after.as_ref().map(|c| c.ts_ms))
            .unwrap_or(i64::MIN);
        let hi = self.to_ms.unwrap_or(i64::MAX);
        (start_ms as i128) < hi as i128 && (end_ms as i128) > lo as i128
    }
}

/// One page of a stream, readings in (timestamp, id) order.
#[derive(Clone, Debug, PartialEq)]
pub struct Page {
    /// The readings.
    pub readings: Vec<Reading>,
    /// The stream's latest reading (greatest timestamp, then id), whatever the range.
    pub latest: Option<Reading>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Cursor>,
}

impl Page {
    /// `{"readings": {ID: {"ts", "fields"}}, "latest": ..., "next": CURSOR | null}`, readings
    /// in (timestamp, id) order.
    pub fn to_json(&self) -> serde_json::Value {
        let mut readings = serde_json::Map::new();
        for r in &self.readings {
            readings.insert(
                r.id.clone(),
                serde_json::json!({"ts": r.ts_ms, "fields": r.fields_json()}),
            );
        }
        serde_json::json!({
            "readings": readings,
            "latest": self.latest.as_ref().map(latest_json),
            "next": self.next.as_ref().map(Cursor::encode),
        })
    }
}

/// `{"id", "ts", "fields"}`.
pub fn latest_json(r: &Reading) -> serde_json::Value {
    serde_json::json!({"id": r.id, "ts": r.ts_ms, "fields": r.fields_json()})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(s: &str) -> DocId {
        DocId::new(s).unwrap()
    }

    #[test]
    fn bucket_ids_round_trip_and_sort_by_start() {
        let s = doc("site-a/temp-1");
        let b = Bucket::of(&s, 1_795_712_345_678, 3_600_000);
        assert_eq!(b.start_ms, 1_795_708_800_000);
        assert_eq!(
            b.doc().as_str(),
            "site-a/temp-1/_b.0001795708800000.3600000"
        );
        assert_eq!(Bucket::parse(&b.doc()), Some(b.clone()));
        assert!(b.holds(1_795_712_345_678));
        assert!(!b.holds(1_795_712_400_000));
        assert!(!b.holds(-1));
        let early = Bucket::of(&s, 5, 3_600_000);
        assert!(early.doc() < b.doc());
        for id in [early.doc(), b.doc()] {
            assert!(id.as_str() >= bucket_range_start(&s).as_str());
            assert!(id.as_str() < bucket_range_end(&s).as_str());
        }
        // Another stream's buckets fall outside the range.
        let other = Bucket::of(&doc("site-a/temp-10"), 5, 3_600_000).doc();
        assert!(other.as_str() >= bucket_range_end(&s).as_str());
    }

    #[test]
    fn only_well_formed_bucket_ids_parse() {
        for bad in [
            "site-a/temp-1",
            "site-a/temp-1/_b.1795708800000.3600000", // 13 digits
            "site-a/temp-1/_b.0001795708800001.3600000", // not aligned
            "site-a/temp-1/_b.0001795708800000.999",  // narrower than a second
            "site-a/temp-1/_b.0001795708800000.172800000", // wider than a day
            "site-a/temp-1/_b.0001795708800000.",
            "site-a/temp-1/_b.0001795708800000.36x0000",
            "site-a/temp-1/_b.0001795708800000.03600000", // another id of the same span
            "_b.0000000000000000.1000",                   // no stream
            "a/_b.x/_b.0000000000000000.1000",            // bucket segment inside the stream
        ] {
            assert_eq!(Bucket::parse(&doc(bad)), None, "{bad}");
        }
    }

    #[test]
    fn stream_names_leave_room_for_buckets() {
        assert!(check_stream(&doc("site-a/temp-1")).is_ok());
        assert!(matches!(
            check_stream(&doc("site-a/_b.x")),
            Err(StreamError::IsBucket(_))
        ));
        let long = doc(&"a".repeat(DOC_ID_BYTES_MAX - BUCKET_SUFFIX_BYTES_MAX + 1));
        assert!(matches!(check_stream(&long), Err(StreamError::TooLong(_))));
        let fits = doc(&"a".repeat(DOC_ID_BYTES_MAX - BUCKET_SUFFIX_BYTES_MAX));
        check_stream(&fits).unwrap();
        let b = Bucket::of(&fits, (TS_LIMIT_MS - 1) as u64, BUCKET_MS_MIN);
        assert_eq!(Bucket::parse(&b.doc()), Some(b));
        let deep = doc(&vec!["a"; DOC_ID_SEGMENTS_MAX].join("/"));
        assert!(matches!(check_stream(&deep), Err(StreamError::TooLong(_))));
    }

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let c = Cursor {
            ts_ms: 42,
            id: "r-1.ä".into(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Ok(c));
        for bad in [
            "",
            "42",
            "x.00",
            "42.0",
            "42.zz",
            "42.ff",
            "-1.00",
            "99999999999999999999.00",
        ] {
            assert_eq!(Cursor::decode(bad), Err(BadCursor), "{bad}");
        }
    }

    #[test]
    fn ranges_admit_half_open_spans_after_the_cursor() {
        let r =
            |id: &str, ts| Reading::from_json(id.to_string(), ts, &serde_json::json!({})).unwrap();
        let range = Range {
            from_ms: Some(10),
            to_ms: Some(20),
            after: Some(Cursor {
                ts_ms: 12,
                id: "b".into(),
            }),
            limit: 5,
        };
        assert!(!range.admits(&r("z", 9)));
        assert!(!range.admits(&r("a", 12)));
        assert!(!range.admits(&r("b", 12)));
        assert!(range.admits(&r("c", 12)));
        assert!(range.admits(&r("a", 19)));
        assert!(!range.admits(&r("a", 20)));
        assert!(range.overlaps(0, 13));
        assert!(!range.overlaps(0, 12));
        assert!(!range.overlaps(20, 30));
        assert!(Range::default().overlaps(0, 1));
    }
}
