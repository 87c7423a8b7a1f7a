//! Durable file operations for the state folders: atomic replace, durable removal,
//! group-committed folder fsyncs, stray temp-file cleanup and quarantine.
//!
//! A write goes to a unique hidden temp file in the target folder (`.{name}.tmp-{pid}-{n}`;
//! encoded key names never start with `.`), is fdatasynced, renamed over the target, and then
//! the folder is fsynced. Folder fsyncs are shared: writers to the same folder that arrive
//! while a fsync runs wait for the next one and share it. Files are created 0600, folders
//! 0700. This module knows nothing about keys, JSON or the cache: it moves bytes to disk.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use crate::file_kind::describe;

/// Suffix given to files that could not be parsed.
pub const CORRUPT_SUFFIX: &str = ".corrupt";
/// Suffix given to a file that lost against another file carrying the same key.
pub const STALE_SUFFIX: &str = ".stale";

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Threads writing temp files in parallel in `replace_many` (bounds open descriptors).
const MAX_WRITE_THREADS: usize = 16;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Creates `path` (and missing parents) with mode 0700; an existing folder is tightened
/// to 0700 as well (a folder that cannot be changed, on a read-only file system, is
/// used as it is, with a warning). Something else at `path` — a file, a FIFO, a
/// dangling symbolic link — is moved aside as `*.corrupt` (with a warning) and the
/// folder created in its place. A symbolic link to a folder is used as the folder.
pub fn ensure_dir(path: &Path) -> io::Result<()> {
    let meta = match fs::metadata(path) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    match meta {
        Some(m) if m.is_dir() => {
            if m.permissions().mode() & 0o777 != 0o700 {
                if let Err(e) = fs::set_permissions(path, fs::Permissions::from_mode(0o700)) {
                    log::warn!(folder:% = path.display(), error:% = e; "cannot tighten the folder to 0700; using it as it is");
                }
            }
            return Ok(());
        }
        Some(m) => set_aside_unusable(path, describe(m.file_type()))?,
        None if fs::symlink_metadata(path).is_ok() => {
            set_aside_unusable(path, "a dangling symbolic link")?
        }
        None => {}
    }
    DirBuilder::new().recursive(true).mode(0o700).create(path)
}

fn set_aside_unusable(path: &Path, kind: &str) -> io::Result<()> {
    let to = set_aside(path, CORRUPT_SUFFIX)?;
    log::warn!(
        "{} is {kind}, not a folder; moved it to {} and created the folder",
        path.display(),
        to.display()
    );
    if let Some(parent) = path.parent() {
        File::open(parent).and_then(|d| d.sync_all())?;
    }
    Ok(())
}

/// Renames `path` to `path` + `suffix` (or `.1`, `.2`, … after that if taken), without
/// any fsync; returns the new path.
pub fn set_aside(path: &Path, suffix: &str) -> io::Result<PathBuf> {
    let mut base = path.as_os_str().to_owned();
    base.push(suffix);
    let mut target = PathBuf::from(&base);
    let mut i = 1;
    while fs::symlink_metadata(&target).is_ok() {
        let mut t = base.clone();
        t.push(format!(".{i}"));
        target = PathBuf::from(t);
        i += 1;
    }
    fs::rename(path, &target)?;
    Ok(target)
}

/// Why `open_regular` gave no file.
#[derive(Debug)]
pub enum OpenError {
    Missing,
    /// Something other than a regular file is there (its kind, for the log).
    NotRegular(&'static str),
    Io(io::Error),
}

/// Opens `path` for reading only if it is a regular file, with the descriptor's
/// metadata. Anything else (a FIFO, a folder, a socket, a device, a symbolic link) is
/// reported, never opened: the name is checked first and then opened with
/// `O_NOFOLLOW | O_NONBLOCK` and checked again on the descriptor, so a FIFO swapped in
/// meanwhile cannot block the caller.
pub fn open_regular(path: &Path) -> Result<(File, fs::Metadata), OpenError> {
    let meta = fs::symlink_metadata(path).map_err(missing_or_io)?;
    if !meta.file_type().is_file() {
        return Err(OpenError::NotRegular(describe(meta.file_type())));
    }
    open_listed_regular(path)
}

/// `open_regular` for a name that a folder listing has just shown as a regular file:
/// the listing's file type is the first check, the descriptor's the second (one
/// `lstat` less per file, which counts when 10,000 files are loaded at start).
pub fn open_listed_regular(path: &Path) -> Result<(File, fs::Metadata), OpenError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => OpenError::NotRegular("a symbolic link"),
            _ => missing_or_io(e),
        })?;
    let meta = file.metadata().map_err(OpenError::Io)?;
    if !meta.file_type().is_file() {
        return Err(OpenError::NotRegular(describe(meta.file_type())));
    }
    Ok((file, meta))
}

fn missing_or_io(e: io::Error) -> OpenError {
    if e.kind() == io::ErrorKind::NotFound {
        OpenError::Missing
    } else {
        OpenError::Io(e)
    }
}

/// Whether `e` says the disk cannot take writes now (full, over quota, read-only, or
/// not ours to write): the store then runs read-only until a write works again.
pub fn is_unwritable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSPC | libc::EDQUOT | libc::EROFS | libc::EACCES | libc::EPERM)
    )
}

/// Whether `e` says the disk is full (or the quota used up), rather than read-only.
pub fn is_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// Whether `name` is a temp file left behind by an interrupted write (ours, or the Go
/// agent's `*.tmp*` files). Quarantined and stale files are never temp files, and
/// neither is any `*.json` file (a plain key may well contain `.tmp`).
pub fn is_temp_name(name: &str) -> bool {
    !name.ends_with(".json")
        && !name.ends_with(CORRUPT_SUFFIX)
        && !name.ends_with(STALE_SUFFIX)
        && name.contains(".tmp")
}

/// State of the shared folder fsync.
#[derive(Default)]
struct SyncState {
    /// Generation number of the last fsync started.
    started: u64,
    /// Generation number of the last fsync finished.
    finished: u64,
    /// Generation number of the last fsync that succeeded.
    succeeded: u64,
    running: bool,
    last_error: Option<(io::ErrorKind, String)>,
}

/// One state folder: its path and the group-committed fsync of its entries.
pub struct Folder {
    path: PathBuf,
    state: Mutex<SyncState>,
    done: Condvar,
}

impl Folder {
    pub fn new(path: PathBuf) -> Folder {
        Folder {
            path,
            state: Mutex::new(SyncState::default()),
            done: Condvar::new(),
        }
    }

    /// How many folder fsyncs have been started (to observe group commit).
    #[cfg(test)]
    pub fn syncs_started(&self) -> u64 {
        lock(&self.state).started
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Makes every rename and unlink done in this folder before the call durable.
    ///
    /// Needs one fsync that *started* after the call; a fsync already running does not
    /// count, so the caller waits for the next one, which it shares with everybody who
    /// arrived meanwhile. A later fsync that succeeds also covers an earlier one that
    /// failed.
    pub fn sync(&self) -> io::Result<()> {
        let mut st = lock(&self.state);
        let target = st.started + 1;
        loop {
            if st.succeeded >= target {
                return Ok(());
            }
            if st.finished >= target {
                let (kind, msg) = st
                    .last_error
                    .clone()
                    .unwrap_or((io::ErrorKind::Other, "folder fsync failed".to_owned()));
                return Err(io::Error::new(kind, msg));
            }
            if st.running {
                st = self.done.wait(st).unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            st.running = true;
            st.started += 1;
            let generation = st.started;
            drop(st);
            let result = File::open(&self.path).and_then(|dir| dir.sync_all());
            st = lock(&self.state);
            st.running = false;
            st.finished = generation;
            match result {
                Ok(()) => st.succeeded = generation,
                Err(e) => st.last_error = Some((e.kind(), e.to_string())),
            }
            self.done.notify_all();
        }
    }

    /// Writes `bytes` to a fresh temp file, fsyncs it and renames it over `name`,
    /// without the folder fsync. On error the temp file is removed and `name` is as it was.
    pub fn replace_no_dir_sync(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.write_temp(name, bytes)?;
        fs::rename(&tmp, self.path.join(name)).inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
    }

    /// Writes and fsyncs one temp file for `name`; returns its path. On error nothing
    /// is left behind.
    ///
    /// `fdatasync` is enough here: for a new file it flushes the data and the size and
    /// block allocation needed to read it back; the remaining inode metadata (times) is
    /// made durable by the folder fsync that follows the rename. It is 2–3× faster than
    /// a full `fsync` under concurrent writers on ext4.
    fn write_temp(&self, name: &str, bytes: &[u8]) -> io::Result<PathBuf> {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .path
            .join(format!(".{name}.tmp-{}-{n}", std::process::id()));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_data()
        })();
        match result {
            Ok(()) => Ok(tmp),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// First half of replacing many files at once: writes and fsyncs a temp file for each
    /// (in parallel, so their fsyncs share journal commits). No target is touched; if any
    /// temp file fails, all are removed. `Prepared::commit` renames them into place.
    pub fn prepare<'a>(&'a self, files: &[(&str, &[u8])]) -> io::Result<Prepared<'a>> {
        let mut prepared = Prepared {
            folder: self,
            temps: Vec::with_capacity(files.len()),
        };
        if files.is_empty() {
            return Ok(prepared);
        }
        let threads = files.len().clamp(1, MAX_WRITE_THREADS);
        let chunk = files.len().div_ceil(threads);
        let results: Vec<io::Result<Vec<(PathBuf, PathBuf)>>> = std::thread::scope(|s| {
            let handles: Vec<_> = files
                .chunks(chunk)
                .map(|part| {
                    s.spawn(move || {
                        let mut temps = Vec::with_capacity(part.len());
                        for (name, bytes) in part {
                            match self.write_temp(name, bytes) {
                                Ok(t) => temps.push((t, self.path.join(name))),
                                Err(e) => {
                                    for (t, _) in &temps {
                                        let _ = fs::remove_file(t);
                                    }
                                    return Err(e);
                                }
                            }
                        }
                        Ok(temps)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(io::Error::other("temp file writer panicked")))
                })
                .collect()
        });
        let mut first_error = None;
        for r in results {
            match r {
                Ok(t) => prepared.temps.extend(t),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e), // `prepared` drops and removes the temp files written.
            None => Ok(prepared),
        }
    }

    /// Atomically and durably replaces `name` with `bytes`. A crash at any instant leaves
    /// the old or the new content; an error before the rename leaves the old file.
    pub fn replace(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.replace_no_dir_sync(name, bytes)?;
        self.sync()
    }

    /// Removes `name` without the folder fsync. A missing file is not an error.
    pub fn remove_no_dir_sync(&self, name: &str) -> io::Result<()> {
        match fs::remove_file(self.path.join(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Durably removes `name`. A missing file is not an error.
    #[cfg(test)]
    pub fn remove(&self, name: &str) -> io::Result<()> {
        self.remove_no_dir_sync(name)?;
        self.sync()
    }

    /// Removes stray temp files; returns how many were removed.
    pub fn remove_temp_files(&self) -> io::Result<usize> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.path)? {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if is_temp_name(&name) && entry.file_type()?.is_file() {
                match fs::remove_file(entry.path()) {
                    Ok(()) => {
                        log::warn!("removed stray temp file {}", entry.path().display());
                        removed += 1;
                    }
                    Err(e) => log::warn!(
                        "could not remove stray temp file {}: {e}",
                        entry.path().display()
                    ),
                }
            }
        }
        if removed > 0 {
            if let Err(e) = self.sync() {
                log::warn!(folder:% = self.path.display(), error:% = e; "cannot fsync the folder after removing temp files");
            }
        }
        Ok(removed)
    }

    /// Moves `name` aside as `name` + `suffix` (a free name is picked if that exists).
    pub fn move_aside(&self, name: &str, suffix: &str) -> io::Result<PathBuf> {
        let target = set_aside(&self.path.join(name), suffix)?;
        self.sync()?;
        Ok(target)
    }
}

/// Durable temp files waiting to be renamed over their targets; dropping it without
/// `commit` removes them and leaves every target as it was.
pub struct Prepared<'a> {
    folder: &'a Folder,
    /// (temp file, target)
    temps: Vec<(PathBuf, PathBuf)>,
}

impl Prepared<'_> {
    /// Renames every temp file over its target, removes `remove` (missing files are
    /// fine), then fsyncs the folder once.
    pub fn commit(mut self, remove: &[&str]) -> io::Result<()> {
        let temps = std::mem::take(&mut self.temps);
        if temps.is_empty() && remove.is_empty() {
            return Ok(());
        }
        for (i, (tmp, target)) in temps.iter().enumerate() {
            if let Err(e) = fs::rename(tmp, target) {
                for (t, _) in &temps[i..] {
                    let _ = fs::remove_file(t);
                }
                return Err(e);
            }
        }
        for name in remove {
            self.folder.remove_no_dir_sync(name)?;
        }
        self.folder.sync()
    }
}

impl Drop for Prepared<'_> {
    fn drop(&mut self) {
        for (t, _) in &self.temps {
            let _ = fs::remove_file(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn temp_names() {
        assert!(is_temp_name(".a.json.tmp-1-2"));
        assert!(is_temp_name("a.json.tmp"));
        assert!(!is_temp_name("x.tmp-y.json"));
        assert!(!is_temp_name("a.tmp.json.corrupt"));
        assert!(!is_temp_name("metadata.json"));
    }

    #[test]
    fn a_listed_name_swapped_for_something_else_is_refused_without_blocking() {
        // What `open_listed_regular` meets when a listing said "regular file" and the
        // name was replaced before the open: it checks the descriptor, never blocks.
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        fs::write(p("file.json"), b"{\"n\":1}").unwrap();
        nix::unistd::mkfifo(
            &p("fifo.json"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        fs::create_dir(p("dir.json")).unwrap();
        std::os::unix::fs::symlink(p("file.json"), p("link.json")).unwrap();
        let (_, meta) = open_listed_regular(&p("file.json")).unwrap();
        assert_eq!(meta.len(), 7);
        for (name, kind) in [
            ("fifo.json", "a FIFO"),
            ("dir.json", "a folder"),
            ("link.json", "a symbolic link"),
        ] {
            match open_listed_regular(&p(name)) {
                Err(OpenError::NotRegular(k)) => assert_eq!(k, kind, "{name}"),
                other => panic!("{name}: {other:?}"),
            }
        }
        assert!(matches!(
            open_listed_regular(&p("gone.json")),
            Err(OpenError::Missing)
        ));
    }

    #[test]
    fn replace_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let f = Folder::new(dir.path().to_owned());
        f.replace("a.json", b"1").unwrap();
        f.replace("a.json", b"22").unwrap();
        assert_eq!(fs::read(dir.path().join("a.json")).unwrap(), b"22");
        let mode = fs::metadata(dir.path().join("a.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        f.remove("a.json").unwrap();
        f.remove("a.json").unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn prepared_files_land_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let f = Folder::new(dir.path().to_owned());
        f.replace("a.json", b"old").unwrap();
        f.replace("gone.json", b"x").unwrap();
        let p = f.prepare(&[("a.json", b"new"), ("b.json", b"b")]).unwrap();
        assert_eq!(fs::read(dir.path().join("a.json")).unwrap(), b"old");
        drop(p);
        let names = |d: &Path| {
            let mut v: Vec<String> = fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(dir.path()), ["a.json", "gone.json"]);
        let files: Vec<(String, Vec<u8>)> = (0..100)
            .map(|i| (format!("{i}.json"), vec![b'x'; i]))
            .collect();
        let refs: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(n, b)| (n.as_str(), b.as_slice()))
            .collect();
        f.prepare(&refs).unwrap().commit(&["gone.json"]).unwrap();
        assert_eq!(fs::read(dir.path().join("99.json")).unwrap().len(), 99);
        assert!(!dir.path().join("gone.json").exists());
        assert_eq!(names(dir.path()).len(), 101);
    }

    #[test]
    fn group_commit_shares_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let f = Arc::new(Folder::new(dir.path().to_owned()));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let f = f.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        f.replace(&format!("{t}-{i}.json"), b"x").unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let st = lock(&f.state);
        assert!(st.started <= 400, "{}", st.started);
        assert_eq!(st.started, st.succeeded);
        drop(st);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 400);
    }
}
