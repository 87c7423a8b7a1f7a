//! The circuit breaker in front of secret fetches: while the control plane is known to
//! be unreachable, secret requests are answered 503 at once instead of queueing up
//! behind calls that will time out.
//!
//! States:
//! * **closed** — requests go to the control plane;
//! * **open** — the last fetch could not reach it (transport error, timeout, 5xx, 429):
//!   for `cooldown` every request is answered 503 with `Retry-After`;
//! * **probing** — the cooldown passed: exactly one request goes through as a probe,
//!   the others still get 503. The probe reaching the control plane closes the breaker;
//!   failing opens it again. A probe that never reports (it was dropped before it ran)
//!   stops counting after `probe_limit`, and the next request probes instead.
//!
//! It only decides; it neither fetches nor answers. Its lock is held for a few
//! instructions, never across I/O.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Open { until: Instant },
    Probing { since: Instant },
}

/// What to do with a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Go ahead (breaker closed).
    Go,
    /// Go ahead as the one probe.
    Probe,
    /// Answer 503 now; the caller may retry after this long.
    Refuse { retry_after: Duration },
}

/// The breaker's state for health and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    Probing,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::Probing => "probing",
        }
    }
}

pub struct Breaker {
    state: Mutex<State>,
    cooldown: Duration,
    probe_limit: Duration,
}

impl Breaker {
    /// `cooldown`: how long it stays open after a failure; `probe_limit`: how long a
    /// probe may take before another request may probe.
    pub fn new(cooldown: Duration, probe_limit: Duration) -> Breaker {
        Breaker {
            state: Mutex::new(State::Closed),
            cooldown,
            probe_limit,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn admit(&self, now: Instant) -> Admit {
        let mut s = self.lock();
        match *s {
            State::Closed => Admit::Go,
            State::Open { until } if now < until => Admit::Refuse {
                retry_after: until - now,
            },
            State::Probing { since } if now < since + self.probe_limit => Admit::Refuse {
                retry_after: Duration::from_secs(1),
            },
            State::Open { .. } | State::Probing { .. } => {
                *s = State::Probing { since: now };
                Admit::Probe
            }
        }
    }

    /// A fetch ended: `reached` says whether the control plane answered usably (any
    /// answer but a 5xx/429 counts, a 404 too).
    pub fn record(&self, reached: bool, now: Instant) {
        let mut s = self.lock();
        *s = if reached {
            State::Closed
        } else {
            State::Open {
                until: now + self.cooldown,
            }
        };
    }

    pub fn state(&self, now: Instant) -> CircuitState {
        match *self.lock() {
            State::Closed => CircuitState::Closed,
            State::Open { until } if now < until => CircuitState::Open,
            State::Open { .. } => CircuitState::Probing,
            State::Probing { .. } => CircuitState::Probing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_on_failure_probes_once_and_closes_on_success() {
        let b = Breaker::new(Duration::from_secs(3), Duration::from_secs(6));
        let t0 = Instant::now();
        assert_eq!(b.admit(t0), Admit::Go);
        b.record(false, t0);
        assert_eq!(b.state(t0), CircuitState::Open);
        match b.admit(t0 + Duration::from_secs(1)) {
            Admit::Refuse { retry_after } => assert_eq!(retry_after, Duration::from_secs(2)),
            other => panic!("{other:?}"),
        }
        let t1 = t0 + Duration::from_secs(3);
        assert_eq!(b.admit(t1), Admit::Probe);
        assert!(
            matches!(b.admit(t1), Admit::Refuse { .. }),
            "one probe at a time"
        );
        b.record(true, t1);
        assert_eq!(b.admit(t1), Admit::Go);
        assert_eq!(b.state(t1), CircuitState::Closed);
    }

    #[test]
    fn a_failed_probe_opens_again_and_a_lost_probe_expires() {
        let b = Breaker::new(Duration::from_secs(3), Duration::from_secs(6));
        let t0 = Instant::now();
        b.record(false, t0);
        let t1 = t0 + Duration::from_secs(3);
        assert_eq!(b.admit(t1), Admit::Probe);
        b.record(false, t1);
        assert!(matches!(b.admit(t1), Admit::Refuse { .. }));
        let t2 = t1 + Duration::from_secs(3);
        assert_eq!(b.admit(t2), Admit::Probe);
        // That probe never reports: after the probe limit another one may go.
        assert!(matches!(
            b.admit(t2 + Duration::from_secs(5)),
            Admit::Refuse { .. }
        ));
        assert_eq!(b.admit(t2 + Duration::from_secs(6)), Admit::Probe);
    }
}
