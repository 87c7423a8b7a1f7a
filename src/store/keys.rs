//! Keys: which report keys a client may use, and how any key becomes a file name.
//!
//! `ReportKey` can only hold a key a client may write (1–200 bytes of UTF-8, not `.` or
//! `..`, no `/`, `\`, NUL or control characters), so code that takes one never
//! re-validates. `file_name_for` maps *any* string (including hostile keys
//! pushed by a control plane) to a single path component that cannot leave its folder;
//! plain keys map to themselves so caches written by the Go agent load unchanged;
//! `report_file_name` gives every valid report key a file (hashed when encoding is too
//! long).
//! Nothing here touches the file system.

use std::fmt;

use crate::encoding::{encode_hex, percent_encode, FILE_NAME_KEEPS};

/// Longest report key accepted, in bytes.
pub const MAX_REPORT_KEY_LEN: usize = 200;

/// Why a report key was refused. The message is safe to show to a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("invalid key: must be 1 to 200 bytes")]
    Length,
    #[error("invalid key: \".\" and \"..\" are not allowed")]
    Dots,
    #[error("invalid key: must not contain '/', '\\', NUL or control characters")]
    Character,
}

/// A validated report key: 1–200 bytes of UTF-8, not `.` or `..`, without `/`, `\`,
/// NUL or control characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReportKey(String);

impl ReportKey {
    pub fn parse(key: &str) -> Result<ReportKey, KeyError> {
        if key.is_empty() || key.len() > MAX_REPORT_KEY_LEN {
            return Err(KeyError::Length);
        }
        if key == "." || key == ".." {
            return Err(KeyError::Dots);
        }
        if key.chars().any(|c| c == '/' || c == '\\' || c.is_control()) {
            return Err(KeyError::Character);
        }
        Ok(ReportKey(key.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for ReportKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ReportKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// The file name (with `.json`) that holds `key`. Bytes outside `[A-Za-z0-9._-]` and a
/// leading `.` are percent-encoded, so the result is one path component that is never
/// `.`, `..`, hidden, or contains `/` or NUL. `None` for the empty key and for keys whose
/// encoded name would exceed `MAX_FILE_NAME` bytes: such a key cannot be stored.
pub fn file_name_for(key: &str) -> Option<String> {
    if key.is_empty() {
        return None;
    }
    let (dot, rest) = match key.strip_prefix('.') {
        Some(rest) => ("%2E", rest),
        None => ("", key),
    };
    let name = format!("{dot}{}.json", percent_encode(rest, FILE_NAME_KEEPS));
    (name.len() <= MAX_FILE_NAME).then_some(name)
}

/// The file a report key is stored in: its `file_name_for` name; else, for a valid key
/// whose encoded name would pass `MAX_FILE_NAME` (up to 200 bytes of UTF-8 can encode
/// to 600), the file it is in already (`current`: a Go agent's plain name), or `~` and
/// the hex SHA-256 of the key. `~` never appears in an encoded name, so the two kinds
/// cannot collide; the key itself is read from inside the file, never from its name.
/// So every key `ReportKey` accepts can be stored.
pub fn report_file_name(key: &ReportKey, current: Option<String>) -> String {
    file_name_for(key.as_str()).or(current).unwrap_or_else(|| {
        let digest = ring::digest::digest(&ring::digest::SHA256, key.as_str().as_bytes());
        format!("~{}.json", encode_hex(digest.as_ref()))
    })
}

/// Longest file name most Linux file systems accept.
pub const MAX_FILE_NAME: usize = 255;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_key_rules() {
        assert!(ReportKey::parse("app-health").is_ok());
        assert!(ReportKey::parse("Zürich ☃").is_ok());
        assert!(ReportKey::parse(&"k".repeat(200)).is_ok());
        assert_eq!(ReportKey::parse(""), Err(KeyError::Length));
        assert_eq!(ReportKey::parse(&"k".repeat(201)), Err(KeyError::Length));
        assert_eq!(ReportKey::parse("."), Err(KeyError::Dots));
        assert_eq!(ReportKey::parse(".."), Err(KeyError::Dots));
        for bad in ["a/b", "a\\b", "a\0b", "a\nb", "\u{7f}", "a\u{85}b"] {
            assert_eq!(ReportKey::parse(bad), Err(KeyError::Character), "{bad:?}");
        }
        assert!(ReportKey::parse("...").is_ok());
    }

    #[test]
    fn file_names_stay_in_their_folder() {
        assert_eq!(
            file_name_for("database-config").unwrap(),
            "database-config.json"
        );
        assert_eq!(
            file_name_for("tls/server.key").unwrap(),
            "tls%2Fserver.key.json"
        );
        assert_eq!(file_name_for("..").unwrap(), "%2E..json");
        assert_eq!(file_name_for(".hidden").unwrap(), "%2Ehidden.json");
        assert_eq!(file_name_for("a\0b").unwrap(), "a%00b.json");
        assert_eq!(file_name_for("ü").unwrap(), "%C3%BC.json");
        for k in ["..", ".", "/", "../../etc/passwd", "a/../../b", "\0"] {
            let n = file_name_for(k).unwrap();
            assert!(
                !n.contains('/') && !n.contains('\0') && !n.starts_with('.'),
                "{k:?} -> {n}"
            );
        }
        assert_eq!(file_name_for(""), None);
        assert_eq!(file_name_for(&"/".repeat(100)), None);
        assert!(file_name_for(&"k".repeat(250)).is_some());
    }

    #[test]
    fn every_report_key_has_a_file_name() {
        let plain = ReportKey::parse("app-health").unwrap();
        assert_eq!(report_file_name(&plain, None), "app-health.json");
        // 200 bytes that would encode to 600: hashed, one component, distinct per key.
        let wide = ReportKey::parse(&"ü".repeat(100)).unwrap();
        let other = ReportKey::parse(&"ö".repeat(100)).unwrap();
        let name = report_file_name(&wide, None);
        assert!(name.starts_with('~') && name.ends_with(".json") && name.len() == 70);
        assert!(!name.contains('/'));
        assert_ne!(name, report_file_name(&other, None));
        assert_eq!(name, report_file_name(&wide, None));
    }
}
