//! The memory budget for request bodies: how many bytes of bodies all connections
//! together may hold at once.
//!
//! A connection reserves what its body needs before reading it (a `Content-Length`
//! body all at once, a chunked body in steps) and gives the reservation back when its
//! request has been answered, so bodies queued behind a slow disk count too. When the
//! budget is spent, the connection is simply not read (the kernel's socket buffers
//! push back on the client) until another request gives bytes back. This type only
//! counts; which connection waits and who is woken is the event loops' business.

use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug)]
pub(crate) struct Budget {
    used: AtomicUsize,
    limit: usize,
    /// Connections waiting for room, over all loops.
    waiting: AtomicUsize,
}

impl Budget {
    pub fn new(limit: usize) -> Budget {
        Budget {
            used: AtomicUsize::new(0),
            limit,
            waiting: AtomicUsize::new(0),
        }
    }

    /// Takes `n` bytes if they fit.
    pub fn try_reserve(&self, n: usize) -> bool {
        if n == 0 {
            return true;
        }
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let Some(after) = used.checked_add(n).filter(|&a| a <= self.limit) else {
                return false;
            };
            match self
                .used
                .compare_exchange_weak(used, after, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => used = now,
            }
        }
    }

    /// Gives `n` bytes back; true when someone is waiting for room.
    pub fn release(&self, n: usize) -> bool {
        if n == 0 {
            return false;
        }
        self.used.fetch_sub(n, Ordering::AcqRel);
        self.waiting.load(Ordering::Acquire) > 0
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn add_waiter(&self) {
        self.waiting.fetch_add(1, Ordering::AcqRel);
    }

    pub fn remove_waiter(&self) {
        self.waiting.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn waiters(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserves_up_to_the_limit_and_reports_waiters() {
        let b = Budget::new(100);
        assert!(b.try_reserve(60));
        assert!(!b.try_reserve(41));
        assert!(b.try_reserve(40));
        assert_eq!(b.used(), 100);
        assert!(!b.try_reserve(1));
        assert!(!b.release(10), "nobody waits yet");
        b.add_waiter();
        assert!(b.release(10));
        b.remove_waiter();
        assert_eq!(b.used(), 80);
        assert!(b.try_reserve(0));
        assert!(!b.try_reserve(usize::MAX));
    }
}
