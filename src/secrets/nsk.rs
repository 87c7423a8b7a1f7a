//! The node secret key (NSK): the AES-256 key that opens secret values.
//!
//! `Nsk` holds the 32-byte AES-256 key that decrypts secret values; it zeroizes on
//! drop and its `Debug` never shows key material. The file format follows the Go
//! `plexd` agent (the trimmed file content *is* the 32 key bytes) and also accepts
//! standard base64 and hex spellings of 32 bytes. Errors name the length found, never
//! the content. This module reads no files itself: callers pass the bytes in, so the
//! policy of where the files live stays with the configuration code.

use crate::encoding::decode_hex;
use std::fmt;

use base64::Engine as _;
use zeroize::Zeroizing;

/// Length of the key in bytes (AES-256).
pub const NSK_LEN: usize = 32;

/// Why the NSK file content was refused. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NskError {
    #[error(
        "node secret key must be 32 bytes, or 44 characters of base64, or 64 hex characters \
         of 32 bytes; found {found} bytes"
    )]
    Length { found: usize },
    #[error("node secret key of {found} characters is not valid {encoding} of 32 bytes")]
    Encoding {
        found: usize,
        encoding: &'static str,
    },
}

/// The 32-byte node secret key. Zeroized on drop; `Debug` prints no key bytes. The
/// key lives on the heap and is filled in place, so moving an `Nsk` (into the
/// configuration, the daemon, a thread) copies a pointer, never the key.
#[derive(Clone)]
pub struct Nsk {
    key: Box<Zeroizing<[u8; NSK_LEN]>>,
}

impl Nsk {
    /// Parses the content of an NSK file: surrounding white space is trimmed, then the
    /// rest must be the 32 key bytes themselves, 44 characters of standard base64, or
    /// 64 hex digits.
    pub fn parse(file_bytes: &[u8]) -> Result<Nsk, NskError> {
        let trimmed = file_bytes.trim_ascii();
        let mut key = Box::new(Zeroizing::new([0u8; NSK_LEN]));
        match trimmed.len() {
            NSK_LEN => key.copy_from_slice(trimmed),
            44 => {
                let decoded = Zeroizing::new(
                    base64::engine::general_purpose::STANDARD
                        .decode(trimmed)
                        .map_err(|_| NskError::Encoding {
                            found: 44,
                            encoding: "base64",
                        })?,
                );
                if decoded.len() != NSK_LEN {
                    return Err(NskError::Encoding {
                        found: 44,
                        encoding: "base64",
                    });
                }
                key.copy_from_slice(&decoded);
            }
            64 => {
                if !decode_hex(trimmed, &mut key[..]) {
                    return Err(NskError::Encoding {
                        found: 64,
                        encoding: "hex",
                    });
                }
            }
            found => return Err(NskError::Length { found }),
        }
        Ok(Nsk { key })
    }

    /// A key from its 32 raw bytes (tests, the development control plane).
    pub fn from_bytes(bytes: [u8; NSK_LEN]) -> Nsk {
        Nsk {
            key: Box::new(Zeroizing::new(bytes)),
        }
    }

    /// The raw key, for the cipher. Do not copy it anywhere that is not zeroized.
    pub fn as_bytes(&self) -> &[u8; NSK_LEN] {
        &self.key
    }
}

impl fmt::Debug for Nsk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Nsk(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAW: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";

    #[test]
    fn raw_bytes_as_plexd_writes_them() {
        let nsk = Nsk::parse(RAW).unwrap();
        assert_eq!(nsk.as_bytes(), RAW);
        let nsk = Nsk::parse(b"  0123456789abcdefghijklmnopqrstuv\n").unwrap();
        assert_eq!(nsk.as_bytes(), RAW);
    }

    #[test]
    fn base64_and_hex() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(RAW);
        assert_eq!(b64.len(), 44);
        assert_eq!(
            Nsk::parse(format!("{b64}\n").as_bytes())
                .unwrap()
                .as_bytes(),
            RAW
        );
        let hex = crate::encoding::encode_hex(RAW);
        assert_eq!(Nsk::parse(hex.as_bytes()).unwrap().as_bytes(), RAW);
        assert_eq!(
            Nsk::parse(hex.to_uppercase().as_bytes())
                .unwrap()
                .as_bytes(),
            RAW
        );
    }

    #[test]
    fn wrong_sizes_name_the_length_only() {
        for (input, found) in [
            (&b""[..], 0),
            (b"short", 5),
            (&[b'k'; 33][..], 33),
            (&[b'k'; 100][..], 100),
        ] {
            let err = Nsk::parse(input).unwrap_err();
            assert_eq!(err, NskError::Length { found });
            assert!(err.to_string().contains(&format!("found {found} bytes")));
        }
        let err = Nsk::parse(&[b'!'; 44]).unwrap_err();
        assert!(matches!(err, NskError::Encoding { found: 44, .. }));
        assert!(!err.to_string().contains("!!!"));
        // Valid base64 but not 32 bytes once decoded is impossible at 44 chars
        // unless padded differently; an unpadded 44-char string decodes to 33 bytes.
        let err = Nsk::parse(&[b'A'; 44]).unwrap_err();
        assert!(matches!(err, NskError::Encoding { .. }));
        let mut bad_hex = [b'0'; 64];
        bad_hex[10] = b'g';
        assert!(matches!(
            Nsk::parse(&bad_hex).unwrap_err(),
            NskError::Encoding { found: 64, .. }
        ));
    }

    #[test]
    fn debug_hides_the_key() {
        let nsk = Nsk::parse(RAW).unwrap();
        let shown = format!("{nsk:?}");
        assert!(!shown.contains("0123"));
        assert!(shown.contains("redacted"));
    }
}
