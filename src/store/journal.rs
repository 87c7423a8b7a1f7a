//! The report journal: `state/report.journal`, an append-only log of report writes that
//! makes a PUT or DELETE durable with one `fdatasync` shared by a whole group of writers.
//!
//! A record is `len: u32 LE | crc: u32 LE | kind: u8 | data`, where `len` counts
//! `kind` and `data` and `crc` is the CRC-32 (IEEE) of them. `kind` is `P` (data: the
//! rendered `ReportEntry`, which carries its key) or `D` (data: the deleted key, UTF-8).
//! Replay reads the longest valid prefix: a short, zero-length, oversized or
//! CRC-mismatching record ends it (a torn tail after a crash), and everything after is
//! ignored and cut off before new records are appended.
//!
//! An append that fails is cut back to the last good length, so the file never holds a
//! record nobody was acknowledged for; if even that fails the journal is marked broken
//! and refuses further appends until restart. On a disk that takes no writes at start
//! (full, read-only) the journal is read and replayed all the same, and opened for
//! writing (torn tail cut then) by the first append or reset once the disk takes
//! writes. The file is never followed through a symbolic link or opened if it is not a
//! regular file. This module knows nothing about the cache, the report files or when to
//! checkpoint: it moves records to and from one file.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::files::is_unwritable;

use crate::model::ReportEntry;

pub const JOURNAL_FILE: &str = "report.journal";

const HEADER: usize = 8;
/// Records are at most a request body plus a little; anything larger is garbage.
const MAX_RECORD: usize = 64 * 1024 * 1024;
const PUT: u8 = b'P';
const DELETE: u8 = b'D';

/// CRC-32 (IEEE 802.3), as `crc32fast` computes it.
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// A record ready to append: its header (length, CRC, kind) and its data, kept apart so
/// that a large entry is written from the buffer it is already rendered in.
pub struct Frame {
    head: [u8; HEADER + 1],
    data: FrameData,
}

enum FrameData {
    Shared(Arc<[u8]>),
    Owned(Vec<u8>),
}

impl Frame {
    fn new(kind: u8, data: FrameData) -> Frame {
        let bytes: &[u8] = match &data {
            FrameData::Shared(b) => b,
            FrameData::Owned(b) => b,
        };
        let mut crc = crc32fast::Hasher::new();
        crc.update(&[kind]);
        crc.update(bytes);
        let mut head = [0u8; HEADER + 1];
        head[..4].copy_from_slice(&((1 + bytes.len()) as u32).to_le_bytes());
        head[4..HEADER].copy_from_slice(&crc.finalize().to_le_bytes());
        head[HEADER] = kind;
        Frame { head, data }
    }

    /// The record's bytes, in two pieces.
    pub fn parts(&self) -> [&[u8]; 2] {
        let data: &[u8] = match &self.data {
            FrameData::Shared(b) => b,
            FrameData::Owned(b) => b,
        };
        [&self.head, data]
    }

    /// The record as one buffer.
    #[cfg(test)]
    pub fn to_bytes(&self) -> Vec<u8> {
        self.parts().concat()
    }
}

/// A record for a stored entry; `body` is its rendered JSON (the report file's content),
/// shared, not copied.
pub fn encode_put(body: &Arc<[u8]>) -> Frame {
    Frame::new(PUT, FrameData::Shared(Arc::clone(body)))
}

/// A record for a deleted key.
pub fn encode_delete(key: &str) -> Frame {
    Frame::new(DELETE, FrameData::Owned(key.as_bytes().to_vec()))
}

/// Writes every byte of `parts` with as few `writev` calls as the file takes.
fn write_all_vectored(file: &mut File, parts: &[&[u8]]) -> io::Result<()> {
    let mut idx = 0;
    let mut off = 0;
    while idx < parts.len() {
        if off == parts[idx].len() {
            idx += 1;
            off = 0;
            continue;
        }
        let mut slices: Vec<io::IoSlice<'_>> = Vec::with_capacity(parts.len() - idx);
        slices.push(io::IoSlice::new(&parts[idx][off..]));
        slices.extend(parts[idx + 1..].iter().map(|p| io::IoSlice::new(p)));
        let mut n = match file.write_vectored(&slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        while n > 0 && idx < parts.len() {
            let left = parts[idx].len() - off;
            if n >= left {
                n -= left;
                idx += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
    }
    Ok(())
}

/// A replayed record.
#[derive(Debug)]
pub enum Record {
    Put(ReportEntry),
    Delete(String),
}

/// The records of the valid prefix of `bytes`, and that prefix's length.
pub fn decode(bytes: &[u8]) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some(rest) = bytes.get(at..) {
        let Some(header) = rest.get(..HEADER) else {
            break;
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len == 0 || len > MAX_RECORD {
            break;
        }
        let Some(body) = rest.get(HEADER..HEADER + len) else {
            break;
        };
        if crc32(body) != crc {
            break;
        }
        let record = match (body[0], &body[1..]) {
            (PUT, data) => match serde_json::from_slice::<ReportEntry>(data) {
                Ok(e) => Record::Put(e),
                Err(_) => break,
            },
            (DELETE, data) => match std::str::from_utf8(data) {
                Ok(k) => Record::Delete(k.to_owned()),
                Err(_) => break,
            },
            _ => break,
        };
        records.push(record);
        at += HEADER + len;
    }
    (records, at)
}

/// The journal file and its last good length.
pub struct Journal {
    path: PathBuf,
    /// `None` until the file could be opened for writing (a disk that took no writes).
    file: Option<File>,
    len: u64,
    broken: bool,
}

const OPEN_FLAGS: libc::c_int = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;

/// Opens (creating, 0600) the journal for reading and appending; whether it was created.
fn open_for_append(path: &Path) -> io::Result<(File, bool)> {
    let created = std::fs::symlink_metadata(path).is_err();
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(OPEN_FLAGS)
        .open(path)?;
    regular(&file)?;
    Ok((file, created))
}

fn regular(file: &File) -> io::Result<()> {
    if file.metadata()?.file_type().is_file() {
        Ok(())
    } else {
        Err(io::Error::other("the report journal is not a regular file"))
    }
}

impl Journal {
    /// Opens (creating, 0600) the journal at `path`, replays its valid prefix and cuts
    /// off anything after it. Returns the journal, its records and how many bytes of torn
    /// tail were dropped. `created` tells the caller to fsync the folder. On a disk that
    /// takes no writes the file is only read (a missing one is empty) and opened for
    /// writing later, by the first append.
    pub fn open(path: &Path) -> io::Result<(Journal, Vec<Record>, u64, bool)> {
        let (mut file, created) = match open_for_append(path) {
            Ok((f, created)) => (Some(f), created),
            Err(e) if is_unwritable(&e) => (None, false),
            Err(e) => return Err(e),
        };
        let mut bytes = Vec::new();
        match &mut file {
            Some(f) => {
                f.read_to_end(&mut bytes)?;
            }
            None => match OpenOptions::new()
                .read(true)
                .custom_flags(OPEN_FLAGS)
                .open(path)
            {
                Ok(mut f) => {
                    regular(&f)?;
                    f.read_to_end(&mut bytes)?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            },
        }
        let (records, valid) = decode(&bytes);
        let dropped = (bytes.len() - valid) as u64;
        if let (Some(f), true) = (&file, dropped > 0) {
            f.set_len(valid as u64)?;
            f.sync_data()?;
        }
        let journal = Journal {
            path: path.to_path_buf(),
            file,
            len: valid as u64,
            broken: false,
        };
        Ok((journal, records, dropped, created))
    }

    /// Bytes of records in the file.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// The file, opened for writing now if it was not yet (see `open`): anything past
    /// the records already read (a torn tail) is cut off first, and a new file's folder
    /// entry is made durable.
    fn file(&mut self) -> io::Result<&mut File> {
        if self.file.is_none() {
            let (f, created) = open_for_append(&self.path)?;
            let size = f.metadata()?.len();
            if size < self.len {
                self.broken = true;
                return Err(io::Error::other(
                    "the report journal shrank while it was not open; refusing report writes until restart",
                ));
            }
            if size > self.len {
                f.set_len(self.len)?;
                f.sync_data()?;
            }
            if created {
                if let Some(parent) = self.path.parent() {
                    File::open(parent)?.sync_all()?;
                }
            }
            self.file = Some(f);
        }
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("the report journal is not open"))
    }

    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Appends `frames` (written with vectored writes, no copy into one buffer) and
    /// makes them durable. On error the file is cut back to its previous length; if that
    /// fails too, the journal is marked broken.
    pub fn append(&mut self, frames: &[&Frame]) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::other(
                "the report journal is unusable until restart",
            ));
        }
        let parts: Vec<&[u8]> = frames.iter().flat_map(|f| f.parts()).collect();
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let len = self.len;
        let file = self.file()?;
        let result = write_all_vectored(file, &parts).and_then(|()| file.sync_data());
        match result {
            Ok(()) => {
                self.len += total as u64;
                Ok(())
            }
            Err(e) => {
                let cut = file.set_len(len).and_then(|()| file.sync_data());
                if let Err(e2) = cut {
                    self.broken = true;
                    log::error!(error:% = e2; "cannot cut the report journal back after a failed write; refusing report writes until restart");
                }
                Err(e)
            }
        }
    }

    /// Appends one frame.
    #[cfg(test)]
    pub fn append_one(&mut self, frame: &Frame) -> io::Result<()> {
        self.append(&[frame])
    }

    /// Empties the journal durably (every record is reflected in the report files).
    pub fn reset(&mut self) -> io::Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        let file = self.file()?;
        let result = file.set_len(0).and_then(|()| file.sync_data());
        match result {
            Ok(()) => {
                self.len = 0;
                Ok(())
            }
            Err(e) => {
                // The length on disk is unknown now; appending after it could hide records.
                self.broken = true;
                log::error!(error:% = e; "cannot empty the report journal; refusing report writes until restart");
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    fn put_rec(body: Vec<u8>) -> Vec<u8> {
        encode_put(&Arc::from(body)).to_bytes()
    }

    fn del_rec(key: &str) -> Vec<u8> {
        encode_delete(key).to_bytes()
    }

    fn put_body(key: &str, v: i64) -> Vec<u8> {
        format!(
            r#"{{"key":"{key}","content_type":"application/json","payload":{{"v":{v}}},"version":{v},"updated_at":"2026-03-01T12:00:00Z"}}"#
        )
        .into_bytes()
    }

    #[test]
    fn round_trip_and_torn_tails() {
        let mut bytes = put_rec(put_body("a", 1));
        bytes.extend(del_rec("a"));
        let good = bytes.len();
        let last = put_rec(put_body("b", 7));
        bytes.extend(&last);
        let (recs, len) = decode(&bytes);
        assert_eq!(len, bytes.len());
        assert_eq!(recs.len(), 3);
        assert!(matches!(&recs[1], Record::Delete(k) if k == "a"));
        assert!(matches!(&recs[2], Record::Put(e) if e.key == "b" && e.version == 7));
        // Every cut inside the last record drops exactly that record.
        for cut in good..bytes.len() {
            let (recs, len) = decode(&bytes[..cut]);
            assert_eq!((recs.len(), len), (2, good), "cut at {cut}");
        }
        // A flipped bit stops replay at that record, even with valid records after it.
        let mut flipped = bytes.clone();
        flipped[good - 2] ^= 0x01;
        flipped.extend(del_rec("z"));
        let (recs, len) = decode(&flipped);
        assert_eq!(recs.len(), 1);
        assert_eq!(len, put_rec(put_body("a", 1)).len());
        // Zeros (a preallocated tail) are not records.
        let mut zeros = bytes.clone();
        zeros.extend([0u8; 64]);
        assert_eq!(decode(&zeros).1, bytes.len());
    }

    /// `tests/fixtures/report.journal`: five records in the x86-64 build's bytes, then
    /// half of a sixth (a write cut short by SIGKILL). The format has no native-endian
    /// or pointer-sized field, so every target must encode these records to exactly
    /// these bytes and replay them, 32-bit ARM included (CI runs this test there).
    #[test]
    fn fixture_from_a_64_bit_build_is_byte_identical_and_replays() {
        let fixture: &[u8] = include_bytes!("../../tests/fixtures/report.journal");
        let entry = |key: &str, payload: &str, version: i64, at: &str| {
            format!(
                r#"{{"key":"{key}","content_type":"application/json","payload":{payload},"version":{version},"updated_at":"{at}"}}"#
            )
            .into_bytes()
        };
        let mut expected = put_rec(entry(
            "app-health",
            r#"{"status":"healthy","uptime_s":4294967296}"#,
            1,
            "2026-11-28T15:01:12.5Z",
        ));
        expected.extend(put_rec(entry(
            "app-health",
            r#"{"status":"degraded","max_u64":18446744073709551615,"neg":-9007199254740993}"#,
            2,
            "2026-11-28T15:01:13.000000001Z",
        )));
        expected.extend(put_rec(entry(
            "zürich sensor #1",
            r#"[1.5e300,"\u00fc",null]"#,
            4_294_967_297,
            "2038-01-19T03:14:08Z",
        )));
        expected.extend(put_rec(entry("gone", "{}", 1, "2026-11-28T15:01:14Z")));
        expected.extend(del_rec("gone"));
        assert_eq!(&fixture[..expected.len()], &expected[..], "encoder bytes");
        assert_eq!(fixture.len() - expected.len(), 70, "the torn tail");

        let (records, valid) = decode(fixture);
        assert_eq!(valid, expected.len(), "replay stops before the torn record");
        assert_eq!(records.len(), 5);
        let Record::Put(second) = &records[1] else {
            panic!("record 2 is a put: {records:?}");
        };
        assert_eq!(second.version, 2);
        assert_eq!(
            second.payload.get(),
            r#"{"status":"degraded","max_u64":18446744073709551615,"neg":-9007199254740993}"#,
            "payload kept byte for byte"
        );
        let Record::Put(third) = &records[2] else {
            panic!("record 3 is a put: {records:?}");
        };
        assert_eq!(
            (third.key.as_str(), third.version),
            ("zürich sensor #1", 4_294_967_297)
        );
        assert!(matches!(&records[4], Record::Delete(k) if k == "gone"));
    }

    #[test]
    fn append_reset_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        let (mut j, recs, dropped, created) = Journal::open(&path).unwrap();
        assert!(recs.is_empty() && dropped == 0 && created);
        j.append_one(&encode_put(&Arc::from(put_body("a", 1))))
            .unwrap();
        j.append_one(&encode_delete("a")).unwrap();
        let len = j.len();
        drop(j);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&put_rec(put_body("b", 1))[..10]).unwrap();
        drop(f);
        let (mut j, recs, dropped, created) = Journal::open(&path).unwrap();
        assert_eq!((recs.len(), dropped, created), (2, 10, false));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
        j.append_one(&encode_delete("c")).unwrap();
        j.reset().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
