//! API keys: how they are made, what of them is stored, and how a presented key is checked.
//!
//! A key is `vxr_` followed by 43 url-safe base64 characters (32 bytes from the operating
//! system's RNG, no padding), 47 characters in all. voxroute shows it once, at creation, and
//! stores only two things derived from it:
//!
//! - the [prefix](prefix_of) (its first [`PREFIX_LEN`] characters), to find the row cheaply
//!   and to let operators tell keys apart in `voxroute keys list`;
//! - the [hash](hash_key) (SHA-256, lowercase hex), to check a presented key.
//!
//! [`check_format`] rejects garbage before the database is touched, and [`hashes_match`]
//! compares hashes in constant time. Nothing here does I/O; [`crate::store`] uses it.
//!
//! Contract for callers: never log, print or put into an error a key or its hash (the prefix
//! is safe to show; it identifies, it does not authenticate).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::TryRngCore as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What every key starts with, so that leaked keys are easy to recognise (secret scanners).
pub const KEY_PREFIX: &str = "vxr_";

/// Random bytes in a key: 256 bits.
pub const SECRET_BYTES: usize = 32;

/// Length of the base64 part of a key: 32 bytes, url-safe, unpadded.
pub const SECRET_CHARS: usize = 43;

/// Total length of a key.
pub const KEY_LEN: usize = KEY_PREFIX.len() + SECRET_CHARS;

/// How many leading characters of a key are stored as its prefix (`vxr_` + 8).
pub const PREFIX_LEN: usize = 12;

/// A freshly generated key. The plaintext lives only here, for the caller to hand out once.
pub struct GeneratedKey {
    /// The key itself, shown to the operator once and never stored.
    pub plaintext: String,
    /// Its first [`PREFIX_LEN`] characters, stored.
    pub prefix: String,
    /// Its SHA-256, lowercase hex, stored.
    pub hash: String,
}

// The plaintext must not leak through `{:?}` in a log line or a panic message.
impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The operating system's RNG failed, so no key could be made.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed: {0}")]
pub struct EntropyError(#[from] rand::rand_core::OsError);

/// Why a presented string is not a well-formed key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// It does not start with `vxr_`.
    #[error("an API key starts with `vxr_`")]
    Prefix,
    /// It is not 47 characters long.
    #[error("an API key is {KEY_LEN} characters long")]
    Length,
    /// It holds a character outside url-safe base64 (`A-Z a-z 0-9 - _`).
    #[error("an API key holds only url-safe base64 characters after `vxr_`")]
    Alphabet,
}

/// Makes a new key from 32 bytes of the operating system's RNG.
///
/// # Errors
///
/// [`EntropyError`] if the operating system cannot provide random bytes.
pub fn generate() -> Result<GeneratedKey, EntropyError> {
    let mut secret = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.try_fill_bytes(&mut secret)?;
    let mut plaintext = String::with_capacity(KEY_LEN);
    plaintext.push_str(KEY_PREFIX);
    URL_SAFE_NO_PAD.encode_string(secret, &mut plaintext);
    debug_assert_eq!(plaintext.len(), KEY_LEN);
    Ok(GeneratedKey {
        prefix: prefix_of(&plaintext).to_owned(),
        hash: hash_key(&plaintext),
        plaintext,
    })
}

/// Checks that `presented` looks like a key voxroute made: prefix, length and alphabet.
///
/// # Errors
///
/// The first [`FormatError`] found.
pub fn check_format(presented: &str) -> Result<(), FormatError> {
    let Some(secret) = presented.strip_prefix(KEY_PREFIX) else {
        return Err(FormatError::Prefix);
    };
    if presented.len() != KEY_LEN {
        return Err(FormatError::Length);
    }
    if !secret
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(FormatError::Alphabet);
    }
    Ok(())
}

/// The stored prefix of a key: its first [`PREFIX_LEN`] bytes, or all of it if shorter.
///
/// Only meaningful for strings that passed [`check_format`] (ASCII); for others it stops at
/// the last character boundary before [`PREFIX_LEN`], so it never panics.
pub fn prefix_of(key: &str) -> &str {
    let mut end = key.len().min(PREFIX_LEN);
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    &key[..end]
}

/// SHA-256 of the whole key, lowercase hex (64 characters): what the database stores.
pub fn hash_key(key: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(key.as_bytes());
    let mut hex = String::with_capacity(digest.len() * 2);
    for byte in digest {
        hex.push(char::from(HEX[usize::from(byte >> 4)]));
        hex.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    hex
}

/// Whether two hashes are equal, in time that does not depend on where they differ.
pub fn hashes_match(stored: &str, computed: &str) -> bool {
    stored.as_bytes().ct_eq(computed.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_well_formed_and_distinct() {
        let a = generate().expect("OS RNG works in tests");
        let b = generate().expect("OS RNG works in tests");
        assert_ne!(a.plaintext, b.plaintext);
        for key in [&a, &b] {
            assert_eq!(key.plaintext.len(), KEY_LEN);
            assert!(key.plaintext.starts_with("vxr_"));
            assert_eq!(check_format(&key.plaintext), Ok(()));
            assert_eq!(key.prefix, key.plaintext[..PREFIX_LEN]);
            assert_eq!(key.hash, hash_key(&key.plaintext));
            assert_eq!(key.hash.len(), 64);
        }
    }

    #[test]
    fn debug_never_shows_the_key_or_hash() {
        let key = generate().expect("OS RNG works in tests");
        let shown = format!("{key:?}");
        assert!(!shown.contains(&key.plaintext));
        assert!(!shown.contains(&key.hash));
        assert!(shown.contains(&key.prefix));
    }

    #[test]
    fn hash_is_sha256_hex() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn format_check_rejects_garbage() {
        let good = format!("vxr_{}", "A".repeat(SECRET_CHARS));
        assert_eq!(check_format(&good), Ok(()));
        assert_eq!(check_format(""), Err(FormatError::Prefix));
        assert_eq!(check_format("Bearer vxr_x"), Err(FormatError::Prefix));
        assert_eq!(check_format("VXR_abc"), Err(FormatError::Prefix));
        assert_eq!(check_format("vxr_short"), Err(FormatError::Length));
        assert_eq!(check_format(&format!("{good}A")), Err(FormatError::Length));
        let plus = format!("vxr_{}+", "A".repeat(SECRET_CHARS - 1));
        assert_eq!(check_format(&plus), Err(FormatError::Alphabet));
        // A multi-byte character that keeps the byte length right is still refused.
        let accent = format!("vxr_{}é", "A".repeat(SECRET_CHARS - 2));
        assert_eq!(check_format(&accent), Err(FormatError::Alphabet));
    }

    #[test]
    fn prefix_never_panics() {
        assert_eq!(prefix_of("vxr_"), "vxr_");
        assert_eq!(prefix_of("vxr_ééééééé"), "vxr_éééé");
    }

    #[test]
    fn hash_comparison() {
        let h = hash_key("vxr_one");
        assert!(hashes_match(&h, &hash_key("vxr_one")));
        assert!(!hashes_match(&h, &hash_key("vxr_two")));
        assert!(!hashes_match(&h, &h[..63]));
    }
}
