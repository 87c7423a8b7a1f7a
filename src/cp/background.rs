//! A named background thread that shutdown can wait for with a bound.
//!
//! The link, the syncer and the event stream each run on one. Asking the thread to stop
//! is the owner's business (its own channel or flag); this only spawns it and, at
//! shutdown, waits at most a timeout for it to end. A thread still blocked in network
//! I/O after that is left behind to end with the process rather than delay shutdown.

use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError};

pub struct Background {
    done: Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    /// Runs `body` on a thread named `name`. If the thread cannot be spawned, that is
    /// logged (`what` names the component) and `wait` returns at once.
    pub fn spawn(
        name: &str,
        what: &'static str,
        body: impl FnOnce() + Send + 'static,
    ) -> Background {
        let (done_tx, done) = bounded(1);
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                body();
                let _ = done_tx.send(());
            });
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                log::error!(component = what, error:% = e; "cannot start a background thread");
                None
            }
        };
        Background { done, thread }
    }

    /// Waits up to `timeout` for the thread to end; `true` if it did (and was joined).
    pub fn wait(mut self, timeout: Duration) -> bool {
        match self.done.recv_timeout(timeout) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
                true
            }
            Err(RecvTimeoutError::Timeout) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn waits_for_a_quick_thread_and_not_for_a_stuck_one() {
        assert!(Background::spawn("quick", "test", || {}).wait(Duration::from_secs(5)));
        let (_hold, stuck) = bounded::<()>(0);
        let started = Instant::now();
        let bg = Background::spawn("stuck", "test", move || {
            let _ = stuck.recv_timeout(Duration::from_secs(3));
        });
        assert!(!bg.wait(Duration::from_millis(50)));
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
