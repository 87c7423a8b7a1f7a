//! Secret values: AES-256-GCM with the node secret key, as the control plane sends them.
//!
//! `decrypt_secret` opens `{ciphertext, nonce}` (standard base64, 12-byte nonce, tag
//! appended to the ciphertext) into a zeroizing UTF-8 string. Every failure — bad
//! base64, wrong nonce length, wrong key, tampering, non-UTF-8 plaintext — is the one
//! generic `DecryptError`, so nothing about the cause reaches a client or a log.
//! `encrypt_secret` is the other direction, for the development control plane. This
//! module never logs and never stores a value.

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::rand::SecureRandom;
use zeroize::Zeroizing;

use super::nsk::Nsk;

/// Length of an AES-GCM nonce in bytes.
pub const NONCE_LEN: usize = 12;

/// A secret could not be decrypted. Deliberately carries no detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("decryption failed")]
pub struct DecryptError;

/// A secret could not be encrypted (no random nonce available, or an absurd size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("encryption failed")]
pub struct EncryptError;

/// Opens a secret value with the NSK. The plaintext is zeroized when dropped.
pub fn decrypt_secret(
    nsk: &Nsk,
    ciphertext_b64: &str,
    nonce_b64: &str,
) -> Result<Zeroizing<String>, DecryptError> {
    let nonce = STANDARD.decode(nonce_b64).map_err(|_| DecryptError)?;
    if nonce.len() != NONCE_LEN {
        return Err(DecryptError);
    }
    let mut buf = Zeroizing::new(STANDARD.decode(ciphertext_b64).map_err(|_| DecryptError)?);
    let cipher = Aes256Gcm::new_from_slice(nsk.as_bytes()).map_err(|_| DecryptError)?;
    cipher
        .decrypt_in_place(Nonce::from_slice(&nonce), b"", &mut *buf)
        .map_err(|_| DecryptError)?;
    match String::from_utf8(std::mem::take(&mut *buf)) {
        Ok(text) => Ok(Zeroizing::new(text)),
        Err(e) => {
            // Wipe the bytes that failed the UTF-8 check before they are freed.
            drop(Zeroizing::new(e.into_bytes()));
            Err(DecryptError)
        }
    }
}

/// Seals `plaintext` with the NSK and a fresh random nonce; returns
/// `(ciphertext_b64, nonce_b64)` in standard base64.
pub fn encrypt_secret(nsk: &Nsk, plaintext: &str) -> Result<(String, String), EncryptError> {
    let mut nonce = [0u8; NONCE_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| EncryptError)?;
    let cipher = Aes256Gcm::new_from_slice(nsk.as_bytes()).map_err(|_| EncryptError)?;
    let mut buf = Zeroizing::new(plaintext.as_bytes().to_vec());
    cipher
        .encrypt_in_place(Nonce::from_slice(&nonce), b"", &mut *buf)
        .map_err(|_| EncryptError)?;
    Ok((STANDARD.encode(&*buf), STANDARD.encode(nonce)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Nsk {
        Nsk::from_bytes([b; 32])
    }

    #[test]
    fn known_vector() {
        // AES-256-GCM, all-zero key and nonce, empty plaintext: the tag of the
        // NIST/McGrew-Viega test case 13.
        let nsk = key(0);
        let nonce = STANDARD.encode([0u8; 12]);
        let tag = [
            0x53, 0x0f, 0x8a, 0xfb, 0xc7, 0x45, 0x36, 0xb9, 0xa9, 0x63, 0xb4, 0xf1, 0xc4, 0xcb,
            0x73, 0x8b,
        ];
        let out = decrypt_secret(&nsk, &STANDARD.encode(tag), &nonce).unwrap();
        assert_eq!(out.as_str(), "");
        // Test case 14: one zero block.
        let ct = [
            0xce, 0xa7, 0x40, 0x3d, 0x4d, 0x60, 0x6b, 0x6e, 0x07, 0x4e, 0xc5, 0xd3, 0xba, 0xf3,
            0x9d, 0x18, 0xd0, 0xd1, 0xc8, 0xa7, 0x99, 0x99, 0x6b, 0xf0, 0x26, 0x5b, 0x98, 0xb5,
            0xd4, 0x8a, 0xb9, 0x19,
        ];
        let out = decrypt_secret(&nsk, &STANDARD.encode(ct), &nonce).unwrap();
        assert_eq!(out.as_bytes(), &[0u8; 16]);
    }

    #[test]
    fn round_trip_with_fresh_nonces() {
        let nsk = key(7);
        let (ct1, n1) = encrypt_secret(&nsk, "s3cr3t ✓").unwrap();
        let (ct2, n2) = encrypt_secret(&nsk, "s3cr3t ✓").unwrap();
        assert_ne!(n1, n2);
        assert_ne!(ct1, ct2);
        assert_eq!(
            decrypt_secret(&nsk, &ct1, &n1).unwrap().as_str(),
            "s3cr3t ✓"
        );
        assert_eq!(
            decrypt_secret(&nsk, &ct2, &n2).unwrap().as_str(),
            "s3cr3t ✓"
        );
    }

    #[test]
    fn every_failure_is_generic() {
        let nsk = key(7);
        let (ct, nonce) = encrypt_secret(&nsk, "value").unwrap();
        let mut raw = STANDARD.decode(&ct).unwrap();
        raw[0] ^= 1;
        let tampered = STANDARD.encode(&raw);
        let mut n = STANDARD.decode(&nonce).unwrap();
        n[3] ^= 0x80;
        let tampered_nonce = STANDARD.encode(&n);
        let short_nonce = STANDARD.encode([0u8; 8]);
        let cases: [(&Nsk, &str, &str); 6] = [
            (&nsk, &tampered, &nonce),
            (&nsk, &ct, &tampered_nonce),
            (&key(8), &ct, &nonce),
            (&nsk, "not base64!", &nonce),
            (&nsk, &ct, "%%%"),
            (&nsk, &ct, &short_nonce),
        ];
        for (k, c, n) in cases {
            let err = decrypt_secret(k, c, n).unwrap_err();
            assert_eq!(err.to_string(), "decryption failed");
        }
        // Authentic but not UTF-8.
        let cipher = Aes256Gcm::new_from_slice(nsk.as_bytes()).unwrap();
        let mut buf = vec![0xff, 0xfe];
        cipher
            .encrypt_in_place(Nonce::from_slice(&[1u8; 12]), b"", &mut buf)
            .unwrap();
        assert_eq!(
            decrypt_secret(&nsk, &STANDARD.encode(&buf), &STANDARD.encode([1u8; 12])),
            Err(DecryptError)
        );
    }
}
