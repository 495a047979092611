//! Vector clocks over Automerge actors.
//!
//! A document's vector clock says, per actor, the highest sequence number this replica holds
//! *with every causal dependency present*. Because a replica only ever applies causally ready
//! changes, the set of changes it holds for one document is exactly
//! `{(actor, 1..=clock[actor])}`, so two clocks tell precisely which changes one side lacks.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

/// Most actors one clock may name on the wire. A clock entry costs at most 26 bytes, so a
/// clock this large still fits (with its document id) in a frame of
/// [`crate::wire::FRAME_BYTES_MIN`].
pub const CLOCK_ACTORS_MAX: usize = 512;

/// An Automerge actor as edgesync uses it: exactly 16 bytes.
///
/// edgesync derives every actor it authors with (see [`crate::id::derive_actor`]); changes by
/// actors of any other length are rejected, which keeps store keys fixed-width.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Actor(pub [u8; 16]);

impl Actor {
    /// Converts from Automerge's actor id; `None` unless it is exactly 16 bytes.
    pub fn from_automerge(actor: &automerge::ActorId) -> Option<Actor> {
        let bytes: [u8; 16] = actor.to_bytes().try_into().ok()?;
        Some(Actor(bytes))
    }

    /// The same actor as Automerge's type.
    pub fn to_automerge(self) -> automerge::ActorId {
        automerge::ActorId::from(&self.0[..])
    }
}

impl fmt::Debug for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// How two vector clocks relate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Causality {
    /// Both hold the same changes.
    Equal,
    /// `self` holds a strict subset of `other`.
    Before,
    /// `self` holds a strict superset of `other`.
    After,
    /// Each holds a change the other lacks.
    Concurrent,
}

/// Per actor, the highest sequence number held with all dependencies present.
///
/// Invariant: no entry is zero (an absent actor means zero), so equal clocks compare equal.
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Vec<(Actor, u64)>", into = "Vec<(Actor, u64)>")]
pub struct VectorClock {
    entries: BTreeMap<Actor, u64>,
}

/// A wire or disk clock that breaks the encoding rules.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClockDecodeError {
    /// Entries must be sorted by actor, each actor once.
    #[error("vector clock entries are not strictly ascending by actor")]
    NotAscending,
    /// Zero is encoded by absence.
    #[error("vector clock has a zero entry for actor {0}")]
    ZeroEntry(Actor),
    /// More actors than [`CLOCK_ACTORS_MAX`].
    #[error("vector clock names {count} actors, more than the limit of {max}")]
    TooManyActors {
        /// Actors in the clock.
        count: usize,
        /// The limit.
        max: usize,
    },
}

impl TryFrom<Vec<(Actor, u64)>> for VectorClock {
    type Error = ClockDecodeError;

    fn try_from(pairs: Vec<(Actor, u64)>) -> Result<Self, Self::Error> {
        if pairs.len() > CLOCK_ACTORS_MAX {
            return Err(ClockDecodeError::TooManyActors {
                count: pairs.len(),
                max: CLOCK_ACTORS_MAX,
            });
        }
        let mut entries = BTreeMap::new();
        let mut previous: Option<Actor> = None;
        for (actor, seq) in pairs {
            if previous.is_some_and(|p| p >= actor) {
                return Err(ClockDecodeError::NotAscending);
            }
            if seq == 0 {
                return Err(ClockDecodeError::ZeroEntry(actor));
            }
            previous = Some(actor);
            entries.insert(actor, seq);
        }
        Ok(VectorClock { entries })
    }
}

impl From<VectorClock> for Vec<(Actor, u64)> {
    fn from(clock: VectorClock) -> Self {
        clock.entries.into_iter().collect()
    }
}

impl VectorClock {
    /// The empty clock: holds no change.
    pub fn new() -> Self {
        Self::default()
    }

    /// The highest sequence number held for `actor` (zero when none).
    pub fn get(&self, actor: &Actor) -> u64 {
        self.entries.get(actor).copied().unwrap_or(0)
    }

    /// Records that the change `(actor, seq)` is now held. Sequence numbers of one actor are
    /// applied in order, so `seq` must be exactly one past the current entry.
    pub fn advance(&mut self, actor: Actor, seq: u64) {
        let current = self.get(&actor);
        assert_eq!(
            seq,
            current + 1,
            "vector clock for {actor} must advance by one"
        );
        self.entries.insert(actor, seq);
    }

    /// Raises the entry for `actor` to at least `seq`.
    pub fn observe(&mut self, actor: Actor, seq: u64) {
        if seq > 0 {
            let entry = self.entries.entry(actor).or_insert(0);
            *entry = (*entry).max(seq);
        }
    }

    /// Pointwise maximum: afterwards `self` holds every change either clock held.
    pub fn merge(&mut self, other: &VectorClock) {
        for (actor, seq) in &other.entries {
            self.observe(*actor, *seq);
        }
    }

    /// `self` merged with `other`, as a new clock.
    pub fn merged(&self, other: &VectorClock) -> VectorClock {
        let mut out = self.clone();
        out.merge(other);
        out
    }

    /// True when every change `self` holds is held by `other` too.
    pub fn le(&self, other: &VectorClock) -> bool {
        self.entries
            .iter()
            .all(|(actor, seq)| *seq <= other.get(actor))
    }

    /// The partial order between the two clocks.
    pub fn compare(&self, other: &VectorClock) -> Causality {
        match (self.le(other), other.le(self)) {
            (true, true) => Causality::Equal,
            (true, false) => Causality::Before,
            (false, true) => Causality::After,
            (false, false) => Causality::Concurrent,
        }
    }

    /// Per actor, the sequence numbers `other` holds that `self` lacks, ascending by actor.
    pub fn missing_from(&self, other: &VectorClock) -> Vec<(Actor, RangeInclusive<u64>)> {
        other
            .entries
            .iter()
            .filter_map(|(actor, theirs)| {
                let ours = self.get(actor);
                (*theirs > ours).then(|| (*actor, ours + 1..=*theirs))
            })
            .collect()
    }

    /// How many changes `other` holds that `self` lacks.
    pub fn missing_count(&self, other: &VectorClock) -> u64 {
        self.missing_from(other)
            .iter()
            .map(|(_, r)| r.end() - r.start() + 1)
            .sum()
    }

    /// Number of actors named.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no change is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Total number of changes held.
    pub fn total(&self) -> u64 {
        self.entries.values().sum()
    }

    /// The entries, ascending by actor.
    pub fn iter(&self) -> impl Iterator<Item = (&Actor, &u64)> {
        self.entries.iter()
    }
}

impl PartialOrd for VectorClock {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match self.compare(other) {
            Causality::Equal => Some(Ordering::Equal),
            Causality::Before => Some(Ordering::Less),
            Causality::After => Some(Ordering::Greater),
            Causality::Concurrent => None,
        }
    }
}

impl fmt::Debug for VectorClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (actor, seq)) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{actor}:{seq}")?;
        }
        f.write_str("}")
    }
}

impl FromIterator<(Actor, u64)> for VectorClock {
    fn from_iter<T: IntoIterator<Item = (Actor, u64)>>(iter: T) -> Self {
        let mut clock = VectorClock::new();
        for (actor, seq) in iter {
            clock.observe(actor, seq);
        }
        clock
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn actor(n: u8) -> Actor {
        Actor([n; 16])
    }

    fn clock_strategy() -> impl Strategy<Value = VectorClock> {
        proptest::collection::btree_map(0u8..6, 0u64..8, 0..6)
            .prop_map(|m| m.into_iter().map(|(a, s)| (actor(a), s)).collect())
    }

    proptest! {
        // Merge is commutative: the order in which two replicas learn of each other is irrelevant.
        #[test]
        fn merge_commutative(a in clock_strategy(), b in clock_strategy()) {
            prop_assert_eq!(a.merged(&b), b.merged(&a));
        }

        // Merge is associative: grouping of merges across three replicas is irrelevant.
        #[test]
        fn merge_associative(a in clock_strategy(), b in clock_strategy(), c in clock_strategy()) {
            prop_assert_eq!(a.merged(&b).merged(&c), a.merged(&b.merged(&c)));
        }

        // Merge is idempotent: a duplicated message changes nothing.
        #[test]
        fn merge_idempotent(a in clock_strategy(), b in clock_strategy()) {
            prop_assert_eq!(a.merged(&a), a.clone());
            prop_assert_eq!(a.merged(&b).merged(&b), a.merged(&b));
        }

        // The order agrees with merge: a <= b exactly when merging a into b changes nothing.
        #[test]
        fn order_agrees_with_merge(a in clock_strategy(), b in clock_strategy()) {
            prop_assert_eq!(a.le(&b), a.merged(&b) == b);
            let m = a.merged(&b);
            prop_assert!(a.le(&m) && b.le(&m));
            let expected = match (a.le(&b), b.le(&a)) {
                (true, true) => Causality::Equal,
                (true, false) => Causality::Before,
                (false, true) => Causality::After,
                (false, false) => Causality::Concurrent,
            };
            prop_assert_eq!(a.compare(&b), expected);
        }

        // The ranges `a` lacks against `b`, added to `a`, give exactly the merge.
        #[test]
        fn missing_ranges_complete_the_merge(a in clock_strategy(), b in clock_strategy()) {
            let mut filled = a.clone();
            for (actor, range) in a.missing_from(&b) {
                for seq in range {
                    filled.advance(actor, seq);
                }
            }
            prop_assert_eq!(&filled, &a.merged(&b));
            prop_assert_eq!(a.missing_count(&b), a.merged(&b).total() - a.total());
        }

        // Encoding round-trips, and the decoder accepts only the canonical form.
        #[test]
        fn postcard_round_trip(a in clock_strategy()) {
            let bytes = postcard::to_allocvec(&a).unwrap();
            let back: VectorClock = postcard::from_bytes(&bytes).unwrap();
            prop_assert_eq!(back, a);
        }
    }

    // Non-canonical clocks from a peer are rejected rather than silently normalised.
    #[test]
    fn decoder_rejects_non_canonical() {
        let unsorted = vec![(actor(2), 1u64), (actor(1), 1)];
        let bytes = postcard::to_allocvec(&unsorted).unwrap();
        assert!(postcard::from_bytes::<VectorClock>(&bytes).is_err());
        let zero = vec![(actor(1), 0u64)];
        let bytes = postcard::to_allocvec(&zero).unwrap();
        assert!(postcard::from_bytes::<VectorClock>(&bytes).is_err());
        let many: Vec<(Actor, u64)> = (0..=CLOCK_ACTORS_MAX as u32)
            .map(|i| {
                let mut a = [0u8; 16];
                a[..4].copy_from_slice(&i.to_be_bytes());
                (Actor(a), 1)
            })
            .collect();
        let bytes = postcard::to_allocvec(&many).unwrap();
        assert!(postcard::from_bytes::<VectorClock>(&bytes).is_err());
    }

    // Concurrent clocks have no order; a strict subset is Before.
    #[test]
    fn compare_examples() {
        let a: VectorClock = [(actor(1), 2), (actor(2), 1)].into_iter().collect();
        let b: VectorClock = [(actor(1), 1), (actor(2), 2)].into_iter().collect();
        assert_eq!(a.compare(&b), Causality::Concurrent);
        assert_eq!(a.partial_cmp(&b), None);
        let c = a.merged(&b);
        assert_eq!(a.compare(&c), Causality::Before);
        assert_eq!(c.compare(&a), Causality::After);
        assert_eq!(
            a.missing_from(&c),
            vec![(actor(2), 2..=2)],
            "a lacks only actor 2's second change"
        );
    }
}
