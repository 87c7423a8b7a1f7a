//! The store-wide revision counter that never goes backwards, even across restarts.
//!
//! `state/revision` holds an epoch (decimal text). Each start raises it by one and writes
//! it durably before anything changes; revisions of that run are `(epoch << 32) | n`.
//! When `n` passes half of its 32-bit range the next epoch is reserved on disk ahead of
//! time, so even billions of changes in one run cannot reach the next run's range.
//! A missing file starts at epoch 1; an unreadable one (or anything but a regular file)
//! is moved aside and replaced by the current Unix time in seconds, which is larger than
//! any epoch a real history reaches. An epoch of `MAX_EPOCH` or more (a hand-edited
//! file) is refused: revisions could not grow past it without wrapping, so the store
//! does not start rather than go backwards. On a disk that takes no writes the raised
//! epoch is kept in memory and written by the first probe that works, before any change
//! is published (see `disk`). This module does not keep per-resource revisions: the
//! cache does.

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use super::files::{open_regular, Folder, OpenError, CORRUPT_SUFFIX};

pub const REVISION_FILE: &str = "revision";

const LOW_BITS: u32 = 32;
const HEADROOM_MARK: u64 = 1 << 31;
/// The largest epoch a run may use: `epoch << 32` must fit in 64 bits, and one more
/// must remain for the reservation ahead.
pub const MAX_EPOCH: u64 = (1 << 32) - 2;
/// Longest revision file read.
const MAX_FILE: u64 = 64;

/// Why the revision epoch cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EpochError {
    #[error("reading the revision file failed: {0}")]
    Io(#[from] io::Error),
    /// The file holds an epoch past `MAX_EPOCH`.
    #[error("the revision file holds epoch {0}, beyond the largest usable epoch {MAX_EPOCH}: revisions would wrap and go backwards; move the file aside to start over at a fresh epoch (clients then see revisions restart)")]
    Exhausted(u64),
}

/// Hands out the epochs backing the revision counter.
pub struct Epochs {
    /// The highest epoch of this run (written to disk unless the disk refused it).
    reserved: AtomicU64,
    reserving: Mutex<()>,
}

impl Epochs {
    /// Reads the epoch of the last run and raises it by one, in memory only (write it
    /// with `persist`). Returns the allocator and the base revision of this run.
    pub fn load(state: &Folder) -> Result<(Epochs, u64), EpochError> {
        let previous = read_epoch(state)?.unwrap_or(0);
        if previous >= MAX_EPOCH {
            return Err(EpochError::Exhausted(previous));
        }
        let epoch = previous + 1;
        let epochs = Epochs {
            reserved: AtomicU64::new(epoch),
            reserving: Mutex::new(()),
        };
        Ok((epochs, epoch << LOW_BITS))
    }

    /// Durably writes the highest epoch of this run.
    pub fn persist(&self, state: &Folder) -> io::Result<()> {
        let _guard = self
            .reserving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let epoch = self.reserved.load(Ordering::Acquire);
        state.replace(REVISION_FILE, format!("{epoch}\n").as_bytes())
    }

    /// Called by writers before they publish (outside the cache lock). When `current`
    /// has used half of its epoch's range, durably reserves the next epoch and returns
    /// the revision to jump to; the caller applies it as `max(revision, jump)`.
    pub fn reserve_ahead(&self, state: &Folder, current: u64) -> io::Result<Option<u64>> {
        let epoch = current >> LOW_BITS;
        if current & ((1 << LOW_BITS) - 1) < HEADROOM_MARK
            || self.reserved.load(Ordering::Acquire) > epoch
            || epoch > MAX_EPOCH
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

/// The epoch in the revision file: `None` if there is none; a file that does not hold
/// a number (or is not a regular file) is moved aside and the current Unix time used.
fn read_epoch(state: &Folder) -> io::Result<Option<u64>> {
    let path = state.file(REVISION_FILE);
    let why = match open_regular(&path) {
        Err(OpenError::Missing) => return Ok(None),
        Err(OpenError::Io(e)) => return Err(e),
        Err(OpenError::NotRegular(kind)) => format!("it is {kind}"),
        Ok((f, _)) => {
            let mut text = String::new();
            match f.take(MAX_FILE).read_to_string(&mut text) {
                Ok(_) => match text.trim().parse::<u64>() {
                    Ok(e) => return Ok(Some(e)),
                    Err(_) => "it holds no number".to_owned(),
                },
                Err(e) if e.kind() == io::ErrorKind::InvalidData => "it is not text".to_owned(),
                Err(e) => return Err(e),
            }
        }
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(u64::from(u32::MAX) / 2);
    match state.move_aside(REVISION_FILE, CORRUPT_SUFFIX) {
        Ok(aside) => log::error!(
            "revision file unusable ({why}), moved to {}; restarting at epoch {now}",
            aside.display()
        ),
        Err(e) => log::error!(
            "revision file unusable ({why}) and cannot be moved aside ({e}); restarting at epoch {now}"
        ),
    }
    Ok(Some(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a start does: load, then write.
    fn open(f: &Folder) -> (Epochs, u64) {
        let (e, base) = Epochs::load(f).unwrap();
        e.persist(f).unwrap();
        (e, base)
    }

    #[test]
    fn epochs_increase_across_opens() {
        let dir = tempfile::tempdir().unwrap();
        let f = Folder::new(dir.path().to_owned());
        let (_, a) = open(&f);
        let (_, b) = open(&f);
        assert_eq!(a, 1 << 32);
        assert_eq!(b, 2 << 32);
        std::fs::write(dir.path().join(REVISION_FILE), "garbage").unwrap();
        let (_, c) = open(&f);
        assert!(c > b);
        assert!(dir.path().join("revision.corrupt").exists());
    }

    #[test]
    fn an_epoch_that_would_wrap_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let f = Folder::new(dir.path().to_owned());
        for huge in [MAX_EPOCH, u64::from(u32::MAX), 1 << 40, u64::MAX] {
            std::fs::write(dir.path().join(REVISION_FILE), format!("{huge}\n")).unwrap();
            let err = Epochs::load(&f).err().unwrap();
            assert!(
                matches!(err, EpochError::Exhausted(e) if e == huge),
                "{err}"
            );
            assert!(err.to_string().contains(&huge.to_string()));
            assert_eq!(
                std::fs::read_to_string(dir.path().join(REVISION_FILE)).unwrap(),
                format!("{huge}\n")
            );
        }
        std::fs::write(
            dir.path().join(REVISION_FILE),
            format!("{}\n", MAX_EPOCH - 1),
        )
        .unwrap();
        let (e, base) = open(&f);
        assert_eq!(base, MAX_EPOCH << 32);
        assert!(base.checked_add(u64::from(u32::MAX)).is_some());
        // The reservation ahead takes the very last epoch, and nothing lies beyond it.
        let last = (MAX_EPOCH + 1) << 32;
        assert_eq!(
            e.reserve_ahead(&f, base + HEADROOM_MARK).unwrap(),
            Some(last)
        );
        assert_eq!(e.reserve_ahead(&f, last + HEADROOM_MARK).unwrap(), None);
        assert!(matches!(Epochs::load(&f), Err(EpochError::Exhausted(_))));
    }

    #[test]
    fn a_fifo_named_revision_is_moved_aside_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let f = Folder::new(dir.path().to_owned());
        nix::unistd::mkfifo(
            &dir.path().join(REVISION_FILE),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let (_, base) = open(&f);
        assert!(base >> 32 > 1_000_000_000, "restarts at the Unix time");
        assert!(dir.path().join("revision.corrupt").exists());
        assert!(std::fs::metadata(dir.path().join(REVISION_FILE))
            .unwrap()
            .is_file());
    }

    #[test]
    fn reserves_the_next_epoch_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let f = Folder::new(dir.path().to_owned());
        let (e, base) = open(&f);
        assert_eq!(e.reserve_ahead(&f, base + 5).unwrap(), None);
        let jump = e.reserve_ahead(&f, base + HEADROOM_MARK).unwrap();
        assert_eq!(jump, Some(2 << 32));
        assert_eq!(e.reserve_ahead(&f, base + HEADROOM_MARK + 1).unwrap(), None);
        let (_, next_run) = open(&f);
        assert_eq!(next_run, 3 << 32);
    }
}
