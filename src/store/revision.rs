//! The store-wide revision counter that never goes backwards, even across restarts.
//!
//! `state/revision` holds an epoch (decimal text). Each `open` raises it by one and writes
//! it durably before anything is served; revisions of that run are `(epoch << 32) | n`.
//! When `n` passes half of its 32-bit range the next epoch is reserved on disk ahead of
//! time, so even billions of changes in one run cannot reach the next run's range.
//! A missing file starts at epoch 1; an unreadable one is moved aside and replaced by
//! the current Unix time in seconds, which is larger than any epoch a real history
//! reaches. This module does not keep per-resource revisions: the cache does.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use super::files::{Folder, CORRUPT_SUFFIX};

pub const REVISION_FILE: &str = "revision";

const LOW_BITS: u32 = 32;
const HEADROOM_MARK: u64 = 1 << 31;

/// Hands out the epochs backing the revision counter.
pub struct Epochs {
    /// The highest epoch written to disk.
    reserved: AtomicU64,
    reserving: Mutex<()>,
}

impl Epochs {
    /// Reads, raises and durably rewrites the epoch. Returns the allocator and the base
    /// revision of this run.
    pub fn open(state: &Folder) -> io::Result<(Epochs, u64)> {
        let path = state.file(REVISION_FILE);
        let previous = match std::fs::read_to_string(&path) {
            Ok(text) => match text.trim().parse::<u64>() {
                Ok(e) => e,
                Err(_) => {
                    let aside = state.move_aside(REVISION_FILE, CORRUPT_SUFFIX)?;
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(u64::from(u32::MAX) / 2);
                    log::error!(
                        "revision file unreadable, moved to {}; restarting at epoch {now}",
                        aside.display()
                    );
                    now
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        let epoch = previous.saturating_add(1);
        state.replace(REVISION_FILE, format!("{epoch}\n").as_bytes())?;
        let epochs = Epochs {
            reserved: AtomicU64::new(epoch),
            reserving: Mutex::new(()),
        };
        Ok((epochs, epoch << LOW_BITS))
    }

    /// Called by writers before they publish (outside the cache lock). When `current`
    /// has used half of its epoch's range, durably reserves the next epoch and returns
    /// the revision to jump to; the caller applies it as `max(revision, jump)`.
    pub fn reserve_ahead(&self, state: &Folder, current: u64) -> io::Result<Option<u64>> {
        let epoch = current >> LOW_BITS;
        if current & ((1 << LOW_BITS) - 1) < HEADROOM_MARK
            || self.reserved.load(Ordering::Acquire) > epoch
        {
            return Ok(None);
        }
        let _guard = self
            .reserving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.reserved.load(Ordering::Acquire) > epoch {
            return Ok(None);
        }
        let next = epoch + 1;
        state.replace(REVISION_FILE, format!("{next}\n").as_bytes())?;
        self.reserved.store(next, Ordering::Release);
        Ok(Some(next << LOW_BITS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_increase_across_opens() {
        let dir = tempfile::tempdir().unwrap();
        let f = Folder::new(dir.path().to_owned());
        let (_, a) = Epochs::open(&f).unwrap();
        let (_, b) = Epochs::open(&f).unwrap();
        assert_eq!(a, 1 << 32);
        assert_eq!(b, 2 << 32);
        std::fs::write(dir.path().join(REVISION_FILE), "garbage").unwrap();
        let (_, c) = Epochs::open(&f).unwrap();
        assert!(c > b);
        assert!(dir.path().join("revision.corrupt").exists());
    }

    #[test]
    fn reserves_the_next_epoch_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let f = Folder::new(dir.path().to_owned());
        let (e, base) = Epochs::open(&f).unwrap();
        assert_eq!(e.reserve_ahead(&f, base + 5).unwrap(), None);
        let jump = e.reserve_ahead(&f, base + HEADROOM_MARK).unwrap();
        assert_eq!(jump, Some(2 << 32));
        assert_eq!(e.reserve_ahead(&f, base + HEADROOM_MARK + 1).unwrap(), None);
        let (_, next_run) = Epochs::open(&f).unwrap();
        assert_eq!(next_run, 3 << 32);
    }
}
