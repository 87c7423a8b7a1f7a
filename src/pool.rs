//! A small, bounded pool of threads for calls that wait on a remote peer (the control
//! plane's secret endpoint, the Kubernetes API's reviews), so that no HTTP worker ever
//! does.
//!
//! Work is queued on a bounded channel; a full queue refuses new work at once
//! (`PoolFull`) instead of letting it pile up. The pool knows nothing about HTTP: a
//! caller that put a request off (`http::Reply::Later`) hands in a job that ends by
//! answering it. Jobs must bound their own waiting (request timeouts); the pool only
//! bounds how many run and how many wait.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

pub type Job = Box<dyn FnOnce() + Send>;

/// The queue was full; the job was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the upstream pool's queue is full")]
pub struct PoolFull;

/// Counters of a pool, for metrics.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Jobs waiting for a thread.
    pub queued: AtomicUsize,
    /// Jobs running now.
    pub running: AtomicUsize,
    pub completed_total: AtomicU64,
    /// Jobs refused because the queue was full.
    pub refused_total: AtomicU64,
}

pub struct Pool {
    tx: Mutex<Option<Sender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stats: Arc<PoolStats>,
    workers: usize,
    queue: usize,
}

impl Pool {
    /// Starts `workers` threads named `{name}-N` behind a queue of `queue` jobs.
    pub fn start(name: &str, workers: usize, queue: usize) -> std::io::Result<Pool> {
        let workers = workers.max(1);
        let (tx, rx) = bounded::<Job>(queue.max(1));
        let stats = Arc::new(PoolStats::default());
        let pool = Pool {
            tx: Mutex::new(Some(tx)),
            threads: Mutex::new(Vec::with_capacity(workers)),
            stats: Arc::clone(&stats),
            workers,
            queue: queue.max(1),
        };
        for i in 0..workers {
            let rx: Receiver<Job> = rx.clone();
            let stats = Arc::clone(&stats);
            let t = thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        stats.queued.fetch_sub(1, Ordering::AcqRel);
                        stats.running.fetch_add(1, Ordering::AcqRel);
                        job();
                        stats.running.fetch_sub(1, Ordering::AcqRel);
                        stats.completed_total.fetch_add(1, Ordering::Relaxed);
                    }
                })?;
            pool.threads
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(t);
        }
        Ok(pool)
    }

    /// Queues `job`, or refuses it at once when the queue is full (or the pool stops).
    pub fn try_submit(&self, job: Job) -> Result<(), PoolFull> {
        let tx = self.tx.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(tx) = tx.as_ref() else {
            return Err(PoolFull);
        };
        self.stats.queued.fetch_add(1, Ordering::AcqRel);
        match tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.queued.fetch_sub(1, Ordering::AcqRel);
                self.stats.refused_total.fetch_add(1, Ordering::Relaxed);
                Err(PoolFull)
            }
        }
    }

    pub fn stats(&self) -> Arc<PoolStats> {
        Arc::clone(&self.stats)
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    pub fn queue_capacity(&self) -> usize {
        self.queue
    }

    /// Takes no more work, lets queued jobs run, and waits up to `timeout` for the
    /// threads; one still blocked after that is left to end with the process.
    pub fn shutdown(&self, timeout: Duration) {
        *self.tx.lock().unwrap_or_else(PoisonError::into_inner) = None;
        let deadline = Instant::now() + timeout;
        let threads =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for t in threads {
            while !t.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(2));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shutdown(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn runs_jobs_and_refuses_beyond_the_queue() {
        let pool = Pool::start("test-pool", 1, 1).unwrap();
        let (started_tx, started_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        pool.try_submit(Box::new(move || {
            started_tx.send(()).unwrap();
            let _ = release_rx.recv();
        }))
        .unwrap();
        started_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        // One thread busy, one slot in the queue: the next fits, the one after not.
        let (done_tx, done_rx) = mpsc::channel();
        pool.try_submit(Box::new(move || done_tx.send(7).unwrap()))
            .unwrap();
        assert_eq!(pool.try_submit(Box::new(|| {})), Err(PoolFull));
        assert_eq!(pool.stats().refused_total.load(Ordering::Relaxed), 1);
        release_tx.send(()).unwrap();
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(5)).unwrap(), 7);
        pool.shutdown(Duration::from_secs(5));
    }
}
