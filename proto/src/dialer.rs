//! The reconnection policy, as a state machine without I/O: when to dial a configured peer,
//! how long to back off after a failure (capped exponential backoff with full jitter), when the
//! circuit breaker opens, and which of two simultaneous links between the same pair survives.
//!
//! The mesh (`edgesync::mesh`) and the simulator drive this very code, so the simulator runs the
//! real reconnection policy. Time comes in as `now_ms`, randomness as a uniform `u64` drawn by
//! the shell (OS randomness in the mesh, the seeded generator in the simulator).

use crate::id::NodeName;

/// Default first retry bound, ms.
pub const RETRY_BASE_MS_DEFAULT: u64 = 500;
/// Default largest retry delay, ms: a healed link is redialled within it.
pub const RETRY_CAP_MS_DEFAULT: u64 = 10_000;
/// Default consecutive failures that open the circuit breaker.
pub const BREAKER_FAILURES_DEFAULT: u32 = 5;

/// Reconnection policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Bound of the first retry delay, ms (doubles per consecutive failure).
    pub base_ms: u64,
    /// Largest delay, ms; with the breaker open, one probe per `cap_ms`.
    pub cap_ms: u64,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_failures: u32,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            base_ms: RETRY_BASE_MS_DEFAULT,
            cap_ms: RETRY_CAP_MS_DEFAULT,
            breaker_failures: BREAKER_FAILURES_DEFAULT,
        }
    }
}

impl RetryPolicy {
    /// The delay before the attempt after `failures` consecutive failures: uniform in
    /// `[0, min(cap, base * 2^failures))` (full jitter) from the uniform draw `random`; with
    /// the breaker open, exactly `cap_ms` (one probe per cap interval).
    pub fn delay_ms(&self, failures: u32, random: u64) -> u64 {
        if failures >= self.breaker_failures {
            return self.cap_ms;
        }
        // 2^20 x base already exceeds any sensible cap; the shift stays in range.
        let ceiling = self
            .base_ms
            .saturating_mul(1u64 << failures.min(20))
            .min(self.cap_ms);
        if ceiling == 0 {
            0
        } else {
            random % ceiling
        }
    }

    /// True when `failures` consecutive failures have opened the breaker.
    pub fn breaker_open(&self, failures: u32) -> bool {
        failures >= self.breaker_failures
    }
}

/// Where a dialer stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DialerStatus {
    /// A dial is due now: the shell should call [`Dialer::poll_dial`].
    Ready,
    /// A dial is under way.
    Dialing,
    /// A link to the peer is up (dialled by either side); nothing to do until it ends.
    Connected,
    /// Backing off until `retry_at_ms`.
    WaitingToRetry {
        /// When to dial next.
        retry_at_ms: u64,
    },
}

/// One configured peer's dialer.
///
/// Call order: [`Dialer::poll_dial`] when [`Dialer::poll_timeout`] is due (it says whether to
/// start a dial now); then [`Dialer::handle_connected`] or [`Dialer::handle_failed`] with the
/// dial's outcome; [`Dialer::handle_link_up`] when the peer dialled in instead, and
/// [`Dialer::handle_link_down`] when a link (either direction) ends.
#[derive(Clone, Debug)]
pub struct Dialer {
    policy: RetryPolicy,
    status: DialerStatus,
    failures: u32,
}

impl Dialer {
    /// A dialer that will dial at once.
    pub fn new(policy: RetryPolicy) -> Dialer {
        Dialer {
            policy,
            status: DialerStatus::Ready,
            failures: 0,
        }
    }

    /// The policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Current status.
    pub fn status(&self) -> DialerStatus {
        self.status
    }

    /// Consecutive failed dials.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// True while the circuit breaker is open (probing once per cap interval).
    pub fn breaker_open(&self) -> bool {
        self.policy.breaker_open(self.failures)
    }

    /// When the dialer next wants [`Dialer::poll_dial`]; `None` while dialling or connected.
    pub fn poll_timeout(&self) -> Option<u64> {
        match self.status {
            DialerStatus::Ready => Some(0),
            DialerStatus::WaitingToRetry { retry_at_ms } => Some(retry_at_ms),
            DialerStatus::Dialing | DialerStatus::Connected => None,
        }
    }

    /// True when a dial should start now; the dialer is then [`DialerStatus::Dialing`].
    pub fn poll_dial(&mut self, now_ms: u64) -> bool {
        let due = match self.status {
            DialerStatus::Ready => true,
            DialerStatus::WaitingToRetry { retry_at_ms } => retry_at_ms <= now_ms,
            DialerStatus::Dialing | DialerStatus::Connected => false,
        };
        if due {
            self.status = DialerStatus::Dialing;
        }
        due
    }

    /// The dial succeeded: the failure count resets and the dialer waits for the link to end.
    pub fn handle_connected(&mut self) {
        self.failures = 0;
        self.status = DialerStatus::Connected;
    }

    /// The dial failed: back off (full jitter from `random`), or probe once per cap with the
    /// breaker open. Returns the delay chosen, ms.
    pub fn handle_failed(&mut self, now_ms: u64, random: u64) -> u64 {
        self.failures = self.failures.saturating_add(1);
        self.wait(now_ms, random)
    }

    /// The peer dialled in: no dial is needed while that link is up.
    pub fn handle_link_up(&mut self) {
        self.status = DialerStatus::Connected;
    }

    /// A link ended (closed, lost or refused): dial again after a backoff drawn at the current
    /// failure count. Returns the delay chosen, ms.
    pub fn handle_link_down(&mut self, now_ms: u64, random: u64) -> u64 {
        if self.status == DialerStatus::Dialing {
            // A dial of ours is already under way; its outcome decides what follows.
            return 0;
        }
        self.wait(now_ms, random)
    }

    fn wait(&mut self, now_ms: u64, random: u64) -> u64 {
        let delay = self.policy.delay_ms(self.failures, random);
        self.status = DialerStatus::WaitingToRetry {
            retry_at_ms: now_ms.saturating_add(delay),
        };
        delay
    }
}

/// Both nodes may dial each other at once. Given a link already up between `me` and `peer`
/// and a new one, decides whether the new one replaces it. A new link in the same direction as
/// the existing one always wins (the peer reconnected and the old one is stale); of two links
/// in opposite directions both nodes keep the one dialled by the node whose name sorts first,
/// so both make the same choice without talking.
pub fn keep_new_link(
    me: &NodeName,
    peer: &NodeName,
    existing_dialled_by_me: bool,
    new_dialled_by_me: bool,
) -> bool {
    let preferred_dialled_by_me = me < peer;
    existing_dialled_by_me == new_dialled_by_me || new_dialled_by_me == preferred_dialled_by_me
}

#[cfg(test)]
mod tests {
    use super::*;

    // Backoff is full jitter under a doubling, capped ceiling; the open breaker probes at the cap.
    #[test]
    fn backoff_is_capped_full_jitter_and_the_breaker_probes_at_the_cap() {
        let r = RetryPolicy::default();
        assert_eq!(r.delay_ms(0, 499), 499);
        assert_eq!(r.delay_ms(0, 500), 0, "the draw wraps into [0, ceiling)");
        assert_eq!(r.delay_ms(3, u64::MAX), u64::MAX % 4000);
        assert!(r.delay_ms(4, u64::MAX) < 8000);
        assert_eq!(r.delay_ms(4, 0), 0);
        assert_eq!(
            r.delay_ms(5, 3),
            r.cap_ms,
            "breaker open: one probe per cap"
        );
        let big = RetryPolicy {
            breaker_failures: 100,
            ..RetryPolicy::default()
        };
        for f in [14, 40, 99] {
            assert!(big.delay_ms(f, u64::MAX) < big.cap_ms);
            assert_eq!(big.delay_ms(f, big.cap_ms - 1), big.cap_ms - 1, "capped");
        }
        let zero = RetryPolicy {
            base_ms: 0,
            ..RetryPolicy::default()
        };
        assert_eq!(zero.delay_ms(2, 7), 0);
    }

    // The dialer dials at once, backs off after failures, resets on success, waits while a
    // link is up, and redials after the link ends.
    #[test]
    fn dialer_lifecycle() {
        let mut d = Dialer::new(RetryPolicy::default());
        assert_eq!(d.poll_timeout(), Some(0));
        assert!(d.poll_dial(0));
        assert!(!d.poll_dial(0), "one dial at a time");
        assert_eq!(d.poll_timeout(), None);
        let delay = d.handle_failed(100, 321);
        assert_eq!(delay, 321);
        assert_eq!(d.poll_timeout(), Some(421));
        assert!(!d.poll_dial(420));
        assert!(d.poll_dial(421));
        for i in 0..3 {
            d.handle_failed(1000 * i, 0);
            assert!(d.poll_dial(1000 * i));
        }
        d.handle_failed(9000, 0);
        assert!(d.breaker_open());
        assert_eq!(
            d.status(),
            DialerStatus::WaitingToRetry {
                retry_at_ms: 19_000
            }
        );
        assert!(d.poll_dial(19_000));
        d.handle_connected();
        assert_eq!(d.failures(), 0);
        assert!(!d.breaker_open());
        assert!(!d.poll_dial(u64::MAX), "connected: no dial");
        assert_eq!(d.handle_link_down(20_000, 7), 7);
        assert!(d.poll_dial(20_007));
        assert_eq!(d.handle_link_down(20_010, 7), 0, "a dial is under way");
        assert_eq!(d.status(), DialerStatus::Dialing);
        d.handle_connected();
        d.handle_link_up();
        assert_eq!(d.poll_timeout(), None);
    }

    // Both ends of two crossed links keep the same one; a same-direction reconnect replaces.
    #[test]
    fn tie_break_is_symmetric() {
        let (a, b) = (
            NodeName::new("gw-a").unwrap(),
            NodeName::new("gw-b").unwrap(),
        );
        // a sorts first: both keep the link a dialled.
        assert!(keep_new_link(&a, &b, false, true), "a: new link is mine");
        assert!(!keep_new_link(&a, &b, true, false), "a: keep mine");
        assert!(keep_new_link(&b, &a, true, false), "b: new link is a's");
        assert!(!keep_new_link(&b, &a, false, true), "b: keep a's");
        for mine in [true, false] {
            assert!(keep_new_link(&a, &b, mine, mine));
            assert!(keep_new_link(&b, &a, mine, mine));
        }
    }
}
