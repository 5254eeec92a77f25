//! Hybrid logical clocks: when a user acted, comparable across machines whose clocks
//! disagree.
//!
//! An [`Hlc`] is physical time in milliseconds, a logical counter that orders events
//! within one millisecond (or while the physical clock stands still or goes back), and
//! the id of the node that made it, which breaks the remaining ties. A clock never goes
//! backwards, and once it has seen a timestamp every later one it makes is greater, so
//! a write made after seeing another always compares as later, whatever the two
//! machines' clocks say.
//!
//! # Format
//!
//! On the wire and in the change log an HLC is a fixed-width ASCII string of 38
//! characters whose byte order is the clock order:
//!
//! ```text
//! 001732345678901-00042-9f86d081884c7d65
//! └─────┬───────┘ └─┬─┘ └──────┬───────┘
//!  physical ms      counter    node
//!  15 digits        5 digits   16 lowercase hex digits
//! ```
//!
//! - **physical**: milliseconds since the Unix epoch, zero-padded decimal
//!   (JavaScript: `String(Date.now()).padStart(15, "0")`);
//! - **counter**: 0–99999, zero-padded decimal; when it would overflow, the physical
//!   part moves one millisecond forward instead;
//! - **node**: a 64-bit id in lowercase hex, random per clock. The all-zero node
//!   `0000000000000000` is reserved for changes written by the app's own SQL, whose
//!   HLC is derived from the log's `created_at` (see `docs/ARCHITECTURE.md`).
//!
//! Comparing two strings with `<` is comparing the clocks; [`Hlc`]'s `Ord` agrees.
//! Parsing is strict (exact widths, lowercase hex) so that no two spellings of one
//! clock can sort differently.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// The length of an HLC string.
pub const HLC_LEN: usize = 38;

/// The largest counter; the next tick moves the physical part instead.
pub(crate) const MAX_COUNTER: u32 = 99_999;

/// The largest physical part that fits in 15 digits.
const MAX_PHYSICAL: u64 = 999_999_999_999_999;

/// The node of changes written by the app's own SQL (no clock of ours saw them).
pub const LOG_NODE: u64 = 0;

/// A hybrid-logical-clock timestamp; see the [module docs](self) for its format.
///
/// Ordered by physical time, then counter, then node: the same order as the strings.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hlc {
    physical: u64,
    counter: u32,
    node: u64,
}

impl Hlc {
    /// A timestamp from its parts; the physical part is capped at 15 digits and the
    /// counter at 99999 so that it always has a valid string form.
    pub fn new(physical_ms: u64, counter: u32, node: u64) -> Hlc {
        Hlc {
            physical: physical_ms.min(MAX_PHYSICAL),
            counter: counter.min(MAX_COUNTER),
            node,
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn physical_ms(&self) -> u64 {
        self.physical
    }

    /// The logical counter within the millisecond.
    pub fn counter(&self) -> u32 {
        self.counter
    }

    /// The id of the node that made it.
    pub fn node(&self) -> u64 {
        self.node
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:015}-{:05}-{:016x}",
            self.physical, self.counter, self.node
        )
    }
}

impl fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hlc({self})")
    }
}

/// Why a string is not an HLC.
fn malformed(s: &str) -> Error {
    let shown = crate::error::quote(s);
    Error::invalid(format!(
        "`{shown}` is not an HLC: expected 15 digits, `-`, 5 digits, `-`, \
         16 lowercase hex digits (e.g. 001732345678901-00000-9f86d081884c7d65)"
    ))
}

impl FromStr for Hlc {
    type Err = Error;

    fn from_str(s: &str) -> Result<Hlc> {
        let b = s.as_bytes();
        let shape = b.len() == HLC_LEN
            && b[15] == b'-'
            && b[21] == b'-'
            && b[..15].iter().all(u8::is_ascii_digit)
            && b[16..21].iter().all(u8::is_ascii_digit)
            && b[22..]
                .iter()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
        if !shape {
            return Err(malformed(s));
        }
        // The shape check makes every parse below succeed.
        let physical = s[..15].parse().map_err(|_| malformed(s))?;
        let counter = s[16..21].parse().map_err(|_| malformed(s))?;
        let node = u64::from_str_radix(&s[22..], 16).map_err(|_| malformed(s))?;
        Ok(Hlc {
            physical,
            counter,
            node,
        })
    }
}

impl serde::Serialize for Hlc {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Hlc {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Hlc, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a clock reads physical time from, in milliseconds since the Unix epoch.
type Physical = Arc<dyn Fn() -> u64 + Send + Sync>;

/// A hybrid logical clock: hands out [`Hlc`]s that only ever increase, and merges the
/// ones it receives.
///
/// The engine keeps one ([`SyncEngine::clock`](crate::SyncEngine::clock)) for the
/// changes it stamps itself. Thread-safe; each call holds a lock for a few
/// instructions.
pub struct HlcClock {
    node: u64,
    max_drift: Duration,
    physical: Physical,
    /// The last timestamp handed out or observed: `(physical, counter)`.
    last: Mutex<(u64, u32)>,
}

impl fmt::Debug for HlcClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HlcClock")
            .field("node", &format_args!("{:016x}", self.node))
            .field("max_drift", &self.max_drift)
            .finish_non_exhaustive()
    }
}

/// What [`HlcClock::receive`] made of a client's timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Received {
    /// Within the tolerance: the timestamp stands, and the clock observed it.
    Observed(Hlc),
    /// Too far ahead: the clock's own `now` stands in for it.
    Clamped {
        /// The server's timestamp that replaces the client's.
        now: Hlc,
        /// How far ahead of the server's physical clock the client's was.
        ahead: Duration,
    },
}

/// The default limit on how far ahead of this clock a received timestamp may be.
pub const DEFAULT_MAX_DRIFT: Duration = Duration::from_secs(24 * 60 * 60);

impl HlcClock {
    /// A clock on the system time with a random node id and the default maximum drift
    /// (24 h).
    pub fn new() -> HlcClock {
        HlcClock::with_physical(random_node(), system_ms)
    }

    /// A clock with the given node id reading physical time (milliseconds since the Unix
    /// epoch) from `physical`: for simulations and tests, or a node id of one's own.
    pub fn with_physical(
        node: u64,
        physical: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> HlcClock {
        HlcClock {
            node,
            max_drift: DEFAULT_MAX_DRIFT,
            physical: Arc::new(physical),
            last: Mutex::new((0, 0)),
        }
    }

    /// How far ahead of this clock's physical time a received timestamp may be before
    /// [`observe`](Self::observe) refuses it (default 24 h). A client whose clock is
    /// wildly wrong must not drag every later timestamp of the server along with it.
    #[must_use]
    pub fn max_drift(mut self, max_drift: Duration) -> HlcClock {
        self.max_drift = max_drift;
        self
    }

    /// This clock's node id.
    pub fn node(&self) -> u64 {
        self.node
    }

    /// A timestamp for an event happening now: greater than every one this clock has
    /// made or observed, even if the physical clock went back.
    pub fn now(&self) -> Hlc {
        let pt = (self.physical)().min(MAX_PHYSICAL);
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let (l, c) = *last;
        *last = if pt > l { (pt, 0) } else { tick(l, c) };
        Hlc::new(last.0, last.1, self.node)
    }

    /// Checks that `remote` is not further ahead of this clock's physical time than the
    /// maximum drift, without changing the clock.
    pub fn check(&self, remote: Hlc) -> Result<()> {
        let pt = (self.physical)();
        let limit = pt.saturating_add(self.max_drift.as_millis() as u64);
        if remote.physical > limit {
            let ahead = Duration::from_millis(remote.physical - pt);
            return Err(Error::invalid(format!(
                "the HLC {remote} is {} ahead of the server clock; at most {} is accepted \
                 (check the client's clock)",
                human(ahead),
                human(self.max_drift)
            )));
        }
        Ok(())
    }

    /// Takes a timestamp received from a client: within the maximum drift it is
    /// [observed](Self::observe) and kept; further ahead, the device's clock is wrong,
    /// so it is neither kept nor observed and [`now`](Self::now) stands in for it.
    /// Never refuses: a queued edit from a device with a bad clock is still applied.
    pub fn receive(&self, remote: Hlc) -> Received {
        match self.observe(remote) {
            Ok(_) => Received::Observed(remote),
            Err(_) => {
                let pt = (self.physical)();
                Received::Clamped {
                    now: self.now(),
                    ahead: Duration::from_millis(remote.physical.saturating_sub(pt)),
                }
            }
        }
    }

    /// Merges a received timestamp: every later [`now`](Self::now) is greater than it.
    /// Returns the clock's new reading (greater than both the old one and `remote`).
    ///
    /// Fails, leaving the clock unchanged, when `remote` is further ahead than the
    /// maximum drift.
    pub fn observe(&self, remote: Hlc) -> Result<Hlc> {
        self.check(remote)?;
        let pt = (self.physical)().min(MAX_PHYSICAL);
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let (l, c) = *last;
        let top = pt.max(l).max(remote.physical);
        *last = if top == l && top == remote.physical {
            tick(top, c.max(remote.counter))
        } else if top == l {
            tick(l, c)
        } else if top == remote.physical {
            tick(top, remote.counter)
        } else {
            (top, 0)
        };
        Ok(Hlc::new(last.0, last.1, self.node))
    }
}

impl Default for HlcClock {
    fn default() -> Self {
        HlcClock::new()
    }
}

/// The next logical time after `(physical, counter)` at the same physical time, or one
/// millisecond later when the counter is exhausted.
fn tick(physical: u64, counter: u32) -> (u64, u32) {
    if counter >= MAX_COUNTER {
        ((physical + 1).min(MAX_PHYSICAL), 0)
    } else {
        (physical, counter + 1)
    }
}

/// The system clock in milliseconds since the Unix epoch (0 before it).
pub(crate) fn system_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A random, non-zero node id: std's `RandomState` is seeded from the OS's randomness
/// (and differs per instance), which is all a node id needs; no extra dependency.
pub(crate) fn random_node() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish().max(1)
}

/// `26h 0m`, `3m 20s`: a duration for an error message.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h {}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m {}s", s / 60, s % 60)
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    const HOUR: u64 = 3_600_000;

    /// A clock whose physical time the test sets.
    fn manual(node: u64, start: u64) -> (HlcClock, Arc<AtomicU64>) {
        let time = Arc::new(AtomicU64::new(start));
        let t = time.clone();
        (
            HlcClock::with_physical(node, move || t.load(Ordering::SeqCst)),
            time,
        )
    }

    #[test]
    fn the_string_form_is_fixed_width_and_round_trips() {
        let h = Hlc::new(1_732_345_678_901, 42, 0x9f86_d081_884c_7d65);
        assert_eq!(h.to_string(), "001732345678901-00042-9f86d081884c7d65");
        assert_eq!(h.to_string().len(), HLC_LEN);
        assert_eq!(h.to_string().parse::<Hlc>().unwrap(), h);
        let zero = Hlc::new(0, 0, 0);
        assert_eq!(zero.to_string(), "000000000000000-00000-0000000000000000");
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, "\"001732345678901-00042-9f86d081884c7d65\"");
        assert_eq!(serde_json::from_str::<Hlc>(&json).unwrap(), h);
    }

    #[test]
    fn parsing_is_strict() {
        for bad in [
            "",
            "001732345678901-00042-9F86D081884C7D65",
            "001732345678901-00042-9f86d081884c7d6",
            "1732345678901-00042-9f86d081884c7d65",
            "001732345678901_00042-9f86d081884c7d65",
            "00173234567890x-00042-9f86d081884c7d65",
            "001732345678901-00042-9f86d081884c7d65 ",
            "+01732345678901-00042-9f86d081884c7d65",
        ] {
            assert!(bad.parse::<Hlc>().is_err(), "{bad:?} parsed");
        }
        assert!(serde_json::from_str::<Hlc>("\"nope\"").is_err());
    }

    #[test]
    fn string_order_is_clock_order() {
        // A deterministic spread over every part, including ties on the first two.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let hlcs: Vec<Hlc> = (0..500)
            .map(|_| {
                Hlc::new(
                    1_700_000_000_000 + next() % 3,
                    (next() % 3) as u32 * 9999,
                    next(),
                )
            })
            .collect();
        for a in &hlcs {
            for b in &hlcs {
                assert_eq!(a.cmp(b), a.to_string().cmp(&b.to_string()), "{a} {b}");
            }
        }
    }

    #[test]
    fn now_is_monotonic_when_the_physical_clock_jumps_back() {
        let (clock, time) = manual(7, 100 * HOUR);
        let mut last = clock.now();
        for step in 0..2000u64 {
            // Forward by 1 ms most of the time, back by up to an hour now and then.
            let t = time.load(Ordering::SeqCst);
            let next = if step % 97 == 0 {
                t - (step % 5 + 1) * (HOUR / 5)
            } else {
                t + 1
            };
            time.store(next, Ordering::SeqCst);
            let h = clock.now();
            assert!(h > last, "step {step}: {h} after {last}");
            assert!(h.physical_ms() >= last.physical_ms());
            last = h;
        }
        // A standing clock advances the counter.
        let a = clock.now();
        let b = clock.now();
        assert_eq!(
            (a.physical_ms(), a.counter() + 1),
            (b.physical_ms(), b.counter())
        );
    }

    #[test]
    fn counter_overflow_moves_the_physical_part() {
        let (clock, _) = manual(1, 5);
        let h = clock.observe(Hlc::new(5, MAX_COUNTER, 2)).unwrap();
        assert_eq!((h.physical_ms(), h.counter()), (6, 0));
        assert!(clock.now() > h);
    }

    #[test]
    fn merging_clocks_an_hour_apart_keeps_both_monotonic() {
        let (ahead, t_ahead) = manual(0xa, 100 * HOUR + HOUR);
        let (behind, t_behind) = manual(0xb, 100 * HOUR - HOUR);
        let (mut last_a, mut last_b) = (ahead.now(), behind.now());
        for i in 0..500u64 {
            t_ahead.fetch_add(1, Ordering::SeqCst);
            t_behind.fetch_add(2, Ordering::SeqCst);
            let sent_a = ahead.now();
            let sent_b = behind.now();
            assert!(sent_a > last_a && sent_b > last_b, "round {i}");
            // Each receives the other's timestamp: whatever it makes next is later.
            let seen_b = behind.observe(sent_a).unwrap();
            let seen_a = ahead.observe(sent_b).unwrap();
            assert!(seen_b > sent_a && seen_b > sent_b);
            assert!(seen_a > sent_b && seen_a > sent_a);
            last_a = ahead.now();
            last_b = behind.now();
            assert!(last_a > seen_a && last_b > seen_b);
        }
        // The clock an hour behind now runs on the other's time, not its own.
        assert!(last_b.physical_ms() >= 101 * HOUR);
    }

    #[test]
    fn a_remote_clock_too_far_ahead_is_refused_and_changes_nothing() {
        let (clock, _) = manual(1, 50 * HOUR);
        let clock = clock.max_drift(Duration::from_secs(2 * 3600));
        let before = clock.now();
        let far = Hlc::new(50 * HOUR + 3 * HOUR, 0, 2);
        let err = clock.observe(far).unwrap_err();
        assert!(err.to_string().contains("3h 0m ahead"), "{err}");
        assert_eq!(err.status(), axum::http::StatusCode::UNPROCESSABLE_ENTITY);
        let after = clock.now();
        assert!(after > before && after < far);
        // Just inside the limit is merged.
        let near = Hlc::new(50 * HOUR + 2 * HOUR, 0, 2);
        assert!(clock.observe(near).unwrap() > near);
    }

    #[test]
    fn ties_are_broken_by_node() {
        let a = Hlc::new(5, 1, 1);
        let b = Hlc::new(5, 1, 2);
        assert!(a < b);
        assert!(Hlc::new(5, 2, 0) > b);
        assert!(Hlc::new(6, 0, 0) > Hlc::new(5, MAX_COUNTER, u64::MAX));
    }

    #[test]
    fn random_nodes_differ_and_are_never_the_log_node() {
        let a = random_node();
        let b = random_node();
        assert_ne!(a, b);
        assert_ne!(a, LOG_NODE);
    }
}
