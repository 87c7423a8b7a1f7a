//! What the core counts: refusals by reason (each logged at most once a minute), open,
//! accepted, refused and evicted connections, parked requests and the body memory
//! budget. `ServerStats` is shared by the event loops and read by the metrics page; it
//! decides nothing.

use std::sync::atomic::{AtomicU64, Ordering};

use super::budget::Budget;
use crate::log_gate::LogGate;

/// Why the core refused a request or a connection (`plexd_nodeapi_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// 408: head or body not complete in time.
    Timeout,
    /// 431: head over `max_head_bytes` or `max_headers`.
    HeadTooLarge,
    /// 413: body over `max_body_bytes`.
    BodyTooLarge,
    /// 400, 501, 505: not a request we can parse.
    Malformed,
    /// 429: `max_parked` blocking queries already wait.
    TooManyParked,
    /// 503 and close: every connection slot is busy.
    ConnectionLimit,
    /// 503: waited too long for the body memory budget.
    BodyMemory,
}

impl RejectReason {
    pub const ALL: [RejectReason; 7] = [
        RejectReason::Timeout,
        RejectReason::HeadTooLarge,
        RejectReason::BodyTooLarge,
        RejectReason::Malformed,
        RejectReason::TooManyParked,
        RejectReason::ConnectionLimit,
        RejectReason::BodyMemory,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RejectReason::Timeout => "timeout",
            RejectReason::HeadTooLarge => "head_too_large",
            RejectReason::BodyTooLarge => "body_too_large",
            RejectReason::Malformed => "malformed",
            RejectReason::TooManyParked => "too_many_parked",
            RejectReason::ConnectionLimit => "connection_limit",
            RejectReason::BodyMemory => "body_memory",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters for metrics; all monotonic except the gauges (`open_connections`,
/// `parked`, body memory).
#[derive(Debug)]
pub struct ServerStats {
    /// Connections accepted and not yet closed (streams included).
    pub open_connections: AtomicU64,
    pub accepted_total: AtomicU64,
    /// Newcomers refused because every connection was busy.
    pub rejected_connections: AtomicU64,
    /// Idle keep-alive connections closed to admit a newcomer at the limit.
    pub evicted_connections: AtomicU64,
    /// Blocking queries parked right now.
    pub parked: AtomicU64,
    /// Blocking queries refused with 429.
    pub parked_rejected: AtomicU64,
    rejected: [AtomicU64; RejectReason::ALL.len()],
    logged: LogGate<{ RejectReason::ALL.len() }>,
    pub(crate) budget: Budget,
}

impl ServerStats {
    pub(crate) fn new(max_body_memory: usize) -> ServerStats {
        ServerStats {
            open_connections: AtomicU64::new(0),
            accepted_total: AtomicU64::new(0),
            rejected_connections: AtomicU64::new(0),
            evicted_connections: AtomicU64::new(0),
            parked: AtomicU64::new(0),
            parked_rejected: AtomicU64::new(0),
            rejected: Default::default(),
            logged: Default::default(),
            budget: Budget::new(max_body_memory),
        }
    }

    /// Counts a refusal and logs it, at most once a minute per reason.
    pub(crate) fn reject(&self, reason: RejectReason) {
        let i = reason.index();
        let n = self.rejected[i].fetch_add(1, Ordering::Relaxed) + 1;
        match reason {
            RejectReason::TooManyParked => {
                self.parked_rejected.fetch_add(1, Ordering::Relaxed);
            }
            RejectReason::ConnectionLimit => {
                self.rejected_connections.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        if self.logged.due(i) {
            log::warn!(reason = reason.label(), total = n; "request refused (logged at most once a minute per reason)");
        }
    }

    /// Refusals of `reason` so far.
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected[reason.index()].load(Ordering::Relaxed)
    }

    /// Bytes of request bodies held in memory now, the budget, and connections waiting
    /// for room.
    pub fn body_memory(&self) -> (usize, usize, usize) {
        (
            self.budget.used(),
            self.budget.limit(),
            self.budget.waiters(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_by_reason() {
        let s = ServerStats::new(1 << 20);
        s.reject(RejectReason::Timeout);
        s.reject(RejectReason::Timeout);
        s.reject(RejectReason::TooManyParked);
        assert_eq!(s.rejected(RejectReason::Timeout), 2);
        assert_eq!(s.rejected(RejectReason::TooManyParked), 1);
        assert_eq!(s.parked_rejected.load(Ordering::Relaxed), 1);
        assert_eq!(s.rejected(RejectReason::Malformed), 0);
    }
}
