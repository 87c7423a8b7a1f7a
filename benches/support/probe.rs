//! Probes that run beside an attack or a burst: fresh requests on new connections, one
//! after another, each timed from connect to the last response byte (what a health
//! check or a sidecar arriving during the attack sees), and a `VmRSS` sampler that keeps
//! the peak.
//!
//! It deliberately does not generate load (that is `loadgen.rs`): one probe at a time,
//! with a pause between them, so the probes themselves cost the server next to nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::loadgen::{percentile_sorted, request_once, Target};
use super::procstat;

/// One request on a new connection: its status (or why it failed) and how long it took.
pub fn fresh_request(
    target: &Target,
    request: &[u8],
    timeout: Duration,
) -> (Result<u16, String>, Duration) {
    let t = Instant::now();
    let status = target
        .connect()
        .map_err(|e| format!("connect: {e}"))
        .and_then(|mut s| {
            request_once(&mut s, request, timeout)
                .map(|(status, _)| status)
                .map_err(|e| e.to_string())
        });
    (status, t.elapsed())
}

/// What the fresh-request probe saw.
#[derive(Debug, Clone, Default)]
pub struct FreshStats {
    /// Time of every probe, failed ones included, µs, sorted.
    pub latencies_us: Vec<u32>,
    /// Probes that failed or were not answered 2xx.
    pub errors: u64,
    pub first_error: Option<String>,
}

impl FreshStats {
    pub fn count(&self) -> usize {
        self.latencies_us.len()
    }

    /// Percentile `p` in ms (0 without probes).
    pub fn percentile_ms(&self, p: f64) -> f64 {
        percentile_sorted(&self.latencies_us, p) / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        self.latencies_us
            .last()
            .map_or(0.0, |&u| f64::from(u) / 1000.0)
    }
}

/// Fresh requests on new connections, back to back with `pause` between them, until
/// `finish`.
/// Dropping it unfinished stops the probe too.
pub struct FreshProber {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<FreshStats>>,
}

impl FreshProber {
    pub fn start(
        target: Target,
        request: Vec<u8>,
        pause: Duration,
        timeout: Duration,
    ) -> std::io::Result<FreshProber> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let handle = thread::Builder::new()
            .name("fresh-probe".into())
            .spawn(move || {
                let mut stats = FreshStats::default();
                while !stop2.load(Ordering::Acquire) {
                    let (status, took) = fresh_request(&target, &request, timeout);
                    stats
                        .latencies_us
                        .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
                    let failure = match status {
                        Ok(s) if (200..300).contains(&s) => None,
                        Ok(s) => Some(format!("status {s}")),
                        Err(e) => Some(e),
                    };
                    if let Some(e) = failure {
                        stats.errors += 1;
                        stats.first_error.get_or_insert(e);
                    }
                    thread::sleep(pause);
                }
                stats.latencies_us.sort_unstable();
                stats
            })?;
        Ok(FreshProber {
            stop,
            handle: Some(handle),
        })
    }

    pub fn finish(mut self) -> FreshStats {
        self.stop.store(true, Ordering::Release);
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(stats)) => stats,
            _ => FreshStats {
                errors: 1,
                first_error: Some("probe thread panicked".into()),
                ..FreshStats::default()
            },
        }
    }
}

impl Drop for FreshProber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Samples a process's `VmRSS` every `every` until `finish` (or drop), keeping the peak.
pub struct RssPeak {
    stop: Arc<AtomicBool>,
    peak_kb: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl RssPeak {
    pub fn start(pid: u32, every: Duration) -> std::io::Result<RssPeak> {
        let stop = Arc::new(AtomicBool::new(false));
        let peak_kb = Arc::new(AtomicU64::new(procstat::vm_rss_kb(pid).unwrap_or(0)));
        let (stop2, peak2) = (Arc::clone(&stop), Arc::clone(&peak_kb));
        let handle = thread::Builder::new()
            .name("rss-sampler".into())
            .spawn(move || {
                while !stop2.load(Ordering::Acquire) {
                    if let Ok(kb) = procstat::vm_rss_kb(pid) {
                        peak2.fetch_max(kb, Ordering::Relaxed);
                    }
                    thread::sleep(every);
                }
            })?;
        Ok(RssPeak {
            stop,
            peak_kb,
            handle: Some(handle),
        })
    }

    /// Stops sampling; the peak in kB.
    pub fn finish(mut self) -> u64 {
        self.halt();
        self.peak_kb.load(Ordering::Relaxed)
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for RssPeak {
    fn drop(&mut self) {
        self.halt();
    }
}
