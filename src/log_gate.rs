//! A gate that lets a repeated log line through at most once a minute per slot, so
//! that an overload (thousands of refusals a second) writes one line per reason, not
//! one per request. Lock-free: any thread may ask.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often one slot lets a line through at most.
pub const LOG_EVERY: Duration = Duration::from_secs(60);

/// `N` independent slots (one per reason), each open once per [`LOG_EVERY`].
#[derive(Debug)]
pub struct LogGate<const N: usize> {
    /// When each slot last let a line through (ms since `started`, +1; 0 = never).
    last: [AtomicU64; N],
    started: Instant,
}

impl<const N: usize> Default for LogGate<N> {
    fn default() -> LogGate<N> {
        LogGate {
            last: std::array::from_fn(|_| AtomicU64::new(0)),
            started: Instant::now(),
        }
    }
}

impl<const N: usize> LogGate<N> {
    /// True for the first caller of `slot` and then at most once per [`LOG_EVERY`];
    /// of several callers racing, exactly one gets true.
    pub fn due(&self, slot: usize) -> bool {
        let Some(last_logged) = self.last.get(slot) else {
            return false;
        };
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let last = last_logged.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= LOG_EVERY.as_millis() as u64;
        due && last_logged
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_slot_opens_once_per_minute() {
        let gate = LogGate::<2>::default();
        assert!(gate.due(0));
        assert!(!gate.due(0));
        assert!(gate.due(1));
        assert!(!gate.due(1));
        assert!(!gate.due(2), "a slot out of range never opens");
    }

    #[test]
    fn of_racing_callers_one_gets_through() {
        let gate = LogGate::<1>::default();
        let opened: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8).map(|_| s.spawn(|| gate.due(0) as usize)).collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        assert_eq!(opened, 1);
    }
}
