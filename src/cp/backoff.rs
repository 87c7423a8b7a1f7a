//! Exponential backoff with jitter for retries against the control plane.
//!
//! Delays start at a base (1 s), double after each failure up to a ceiling (60 s), and
//! are spread by ±25 % so that many nodes do not retry in lock step. The jitter comes
//! from a small xorshift generator seeded once from the system RNG (falling back to
//! the clock); it is not meant to be unpredictable, only spread out. This type does not
//! sleep: callers decide how to wait (usually `recv_timeout` on a shutdown channel).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::rand::SecureRandom;

/// Default first delay.
pub const DEFAULT_BASE: Duration = Duration::from_secs(1);
/// Default ceiling.
pub const DEFAULT_MAX: Duration = Duration::from_secs(60);

/// Exponential backoff state: `next_delay()` after each failure, `reset()` after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    current: Duration,
    rng: u64,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new()
    }
}

impl Backoff {
    /// 1 s doubling to 60 s.
    pub fn new() -> Backoff {
        Backoff::with_bounds(DEFAULT_BASE, DEFAULT_MAX)
    }

    /// `base` doubling to 60 × `base` (short delays for tests).
    pub fn with_base(base: Duration) -> Backoff {
        Backoff::with_bounds(base, base.saturating_mul(60))
    }

    /// `base` doubling to `max`. A zero base is raised to 1 ms; `max` is at least `base`.
    pub fn with_bounds(base: Duration, max: Duration) -> Backoff {
        let base = base.max(Duration::from_millis(1));
        let max = max.max(base);
        Backoff {
            base,
            max,
            current: base,
            rng: seed(),
        }
    }

    /// The delay to wait before the next attempt; doubles the one after it.
    pub fn next_delay(&mut self) -> Duration {
        let nominal = self.current;
        self.current = self.current.saturating_mul(2).min(self.max);
        // Factor in [0.75, 1.25).
        let unit = (self.next_random() >> 11) as f64 / (1u64 << 53) as f64;
        nominal.mul_f64(0.75 + unit * 0.5)
    }

    /// A delay around the ceiling (±25 %), leaving the doubling state alone: for
    /// failures that no amount of quick retrying fixes (401, 403, 404).
    pub fn ceiling_delay(&mut self) -> Duration {
        let unit = (self.next_random() >> 11) as f64 / (1u64 << 53) as f64;
        self.max.mul_f64(0.75 + unit * 0.5)
    }

    /// Back to the base delay (after a success).
    pub fn reset(&mut self) {
        self.current = self.base;
    }

    /// The nominal (un-jittered) delay the next call to `next_delay` is centred on.
    pub fn current(&self) -> Duration {
        self.current
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    let seed = match ring::rand::SystemRandom::new().fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64),
    };
    // xorshift must not start at zero.
    seed | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_ceiling_with_jitter() {
        let mut b = Backoff::new();
        let mut nominal = 1.0f64;
        for _ in 0..12 {
            let d = b.next_delay().as_secs_f64();
            assert!(
                d >= nominal * 0.75 - 1e-9 && d < nominal * 1.25,
                "{d} vs {nominal}"
            );
            nominal = (nominal * 2.0).min(60.0);
        }
        assert_eq!(b.current(), DEFAULT_MAX);
        b.reset();
        assert_eq!(b.current(), DEFAULT_BASE);
        let d = b.next_delay();
        assert!(d >= Duration::from_millis(750) && d < Duration::from_millis(1250));
    }

    #[test]
    fn jitter_spreads() {
        let mut b = Backoff::with_base(Duration::from_secs(10));
        let delays: Vec<Duration> = (0..20)
            .map(|_| {
                b.reset();
                b.next_delay()
            })
            .collect();
        let distinct = delays
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        assert!(distinct > 10);
    }

    #[test]
    fn short_bases_for_tests() {
        let mut b = Backoff::with_base(Duration::from_millis(10));
        assert!(b.next_delay() < Duration::from_millis(13));
        for _ in 0..20 {
            assert!(b.next_delay() < Duration::from_millis(750));
        }
        let mut z = Backoff::with_bounds(Duration::ZERO, Duration::ZERO);
        assert!(z.next_delay() >= Duration::from_micros(750));
    }
}
