//! The server: start the event loops on the listeners, count what happens, wake parked
//! requests, and shut down in order.
//!
//! Threading: `ServerConfig::workers` event loops, fixed for the server's life (plus
//! one thread per `Reply::Stream`). Each loop has its own epoll set holding every
//! listener (shared with `EPOLLEXCLUSIVE`, so a new connection wakes one loop), its
//! doorbell and the connections it accepted, which it serves until they close: there is
//! no hand-off between threads per request and no per-request epoll re-arm (see
//! `event_loop.rs`). Other threads reach a loop only through its mailbox
//! (`shared.rs`): the [`Waker`] (a store change), a `Resume` (work done elsewhere), a
//! request to evict an idle connection, budget that came free, shutdown.
//!
//! Shutdown: stop accepting, close idle connections, answer parked requests
//! (`Wake::Shutdown`), let requests in progress finish until the timeout, then stop the
//! loops (what is still parked gets `Wake::TimedOut`) and join them.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::event_loop::EventLoop;
use super::listen::Listener;
use super::shared::{lock, Mailbox, Shared};
use super::stats::ServerStats;
use super::{Handler, ServerConfig};

/// Makes every parked request be checked again with `Wake::Changed`. Cheap; bursts
/// coalesce into one pass per loop.
#[derive(Clone)]
pub struct Waker {
    shared: Arc<Shared>,
}

impl Waker {
    pub fn wake(&self) {
        self.shared.changed();
    }
}

impl std::fmt::Debug for Waker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Waker")
    }
}

pub struct Server;

impl Server {
    /// Starts the event loops on `listeners`; returns once every loop runs.
    pub fn start(
        config: ServerConfig,
        listeners: Vec<Listener>,
        handler: Arc<dyn Handler>,
    ) -> io::Result<ServerHandle> {
        if listeners.len() > super::event_loop::MAX_LISTENERS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many listeners",
            ));
        }
        if config.max_body_memory < config.limits.max_body_bytes {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the body memory budget must hold at least one largest body",
            ));
        }
        for l in &listeners {
            l.set_nonblocking()?;
        }
        let workers = config.workers.max(1);
        let mut mailboxes = Vec::with_capacity(workers);
        for _ in 0..workers {
            mailboxes.push(Arc::new(Mailbox::new()?));
        }
        let shared = Arc::new(Shared {
            stats: Arc::new(ServerStats::new(config.max_body_memory)),
            handler,
            mailboxes,
            listener_fds: listeners.iter().map(Listener::raw_fd).collect(),
            listener_unix: listeners.iter().map(Listener::is_unix).collect(),
            listeners: Mutex::new(listeners),
            change_gen: AtomicU64::new(0),
            shutting: AtomicBool::new(false),
            exit: AtomicBool::new(false),
            started: Instant::now(),
            streams: Mutex::new(HashMap::new()),
            stream_seq: AtomicU64::new(0),
            config,
        });
        let mut loops = Vec::with_capacity(workers);
        for id in 0..workers {
            loops.push(EventLoop::new(id, Arc::clone(&shared))?);
        }
        let ready = Arc::new(Barrier::new(workers + 1));
        let mut threads = Vec::with_capacity(workers);
        for (id, l) in loops.into_iter().enumerate() {
            let go = Arc::clone(&ready);
            let spawned = thread::Builder::new()
                .name(format!("http-worker-{id}"))
                .spawn(move || {
                    go.wait();
                    l.run();
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    // The barrier never completes: tell the threads that run to leave.
                    shared.exit.store(true, Ordering::SeqCst);
                    for _ in threads.len()..workers {
                        let r = Arc::clone(&ready);
                        thread::spawn(move || r.wait());
                    }
                    ready.wait();
                    shared.ring_all();
                    return Err(e);
                }
            }
        }
        ready.wait();
        Ok(ServerHandle { shared, threads })
    }
}

/// The running server. Dropping it shuts it down with a short timeout.
pub struct ServerHandle {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl ServerHandle {
    pub fn waker(&self) -> Waker {
        Waker {
            shared: Arc::clone(&self.shared),
        }
    }

    pub fn stats(&self) -> Arc<ServerStats> {
        Arc::clone(&self.shared.stats)
    }

    /// Serves a Unix stream connected elsewhere (e.g. one end of `UnixStream::pair()`)
    /// like an accepted connection, with its peer's credentials.
    pub fn adopt(&self, stream: std::os::unix::net::UnixStream) -> io::Result<()> {
        stream.set_nonblocking(true)?;
        let n = self.shared.mailboxes.len();
        let i = self.shared.stream_seq.fetch_add(1, Ordering::Relaxed) as usize % n;
        let m = &self.shared.mailboxes[i];
        lock(&m.adopted).push(stream.into());
        m.doorbell.ring();
        Ok(())
    }

    /// Requests the loops handed to the handler so far.
    pub fn requests_total(&self) -> u64 {
        self.shared
            .mailboxes
            .iter()
            .map(|m| m.requests.load(Ordering::Relaxed))
            .sum()
    }

    /// Stops accepting, closes idle connections, lets requests in progress finish,
    /// answers parked requests, then stops the loops. Returns after about `timeout` at
    /// most.
    pub fn shutdown(mut self, timeout: Duration) {
        self.stop(timeout);
    }

    fn stop(&mut self, timeout: Duration) {
        if self.threads.is_empty() {
            return;
        }
        let deadline = Instant::now() + timeout;
        let sh = &self.shared;
        sh.shutting.store(true, Ordering::SeqCst);
        sh.ring_all();
        for fd in lock(&sh.streams).values() {
            // SAFETY: fd is our own dup of the stream's socket.
            unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
        }
        while sh.stats.open_connections.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        sh.exit.store(true, Ordering::SeqCst);
        sh.ring_all();
        let join_by = deadline.max(Instant::now() + Duration::from_millis(200));
        for t in std::mem::take(&mut self.threads) {
            while !t.is_finished() && Instant::now() < join_by {
                thread::sleep(Duration::from_millis(2));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
        lock(&sh.listeners).clear();
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_thread_safe() {
        fn check<T: Send + Sync>() {}
        check::<Waker>();
        check::<ServerStats>();
        check::<ServerHandle>();
    }
}
