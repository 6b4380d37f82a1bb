//! The token format. A token is `chi_`, then 43 characters drawn uniformly from the 62
//! alphanumerics with the OS CSPRNG (43 × log2 62 ≈ 256.03 bits), then 6 base62 digits of the
//! CRC32 of everything before them. The fixed prefix lets secret scanners find leaked tokens,
//! and the checksum lets chiron reject typos and forgeries without touching storage.

use std::fmt;

use rand::distributions::Alphanumeric;
use rand::rngs::OsRng;
use rand::Rng;

/// The fixed token prefix.
pub const PREFIX: &str = "chi_";
/// Random characters after the prefix.
pub const RANDOM_LEN: usize = 43;
/// Checksum characters at the end.
pub const CHECKSUM_LEN: usize = 6;
/// Total token length.
pub const TOKEN_LEN: usize = PREFIX.len() + RANDOM_LEN + CHECKSUM_LEN;
/// How many leading characters are kept as the display prefix.
pub const DISPLAY_PREFIX_LEN: usize = PREFIX.len() + 8;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A token's plaintext. It prints as `[redacted]`, has no `Serialize`, and is only exposed
/// on purpose through [`TokenSecret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSecret(String);

impl TokenSecret {
    /// Draws a fresh token from the OS CSPRNG.
    pub fn generate() -> Self {
        let mut text = String::with_capacity(TOKEN_LEN);
        text.push_str(PREFIX);
        text.extend(
            OsRng
                .sample_iter(&Alphanumeric)
                .take(RANDOM_LEN)
                .map(char::from),
        );
        let checksum = checksum(text.as_bytes());
        text.push_str(&checksum);
        Self(text)
    }

    /// Wraps presented text after checking the format and checksum.
    pub fn parse(text: &str) -> Result<Self, FormatError> {
        check_format(text)?;
        Ok(Self(text.to_owned()))
    }

    /// The plaintext, for the one response that hands it to its owner and for hashing.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The first characters, safe to store and show.
    pub fn display_prefix(&self) -> &str {
        &self.0[..DISPLAY_PREFIX_LEN]
    }
}

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSecret([redacted])")
    }
}

impl fmt::Display for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Why presented text is not a well-formed token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Wrong length or prefix, or a character outside base62.
    #[error("malformed token")]
    Malformed,
    /// Well-formed, but the checksum does not match.
    #[error("token checksum mismatch")]
    Checksum,
}

/// Checks length, prefix, alphabet and checksum. Needs no storage.
pub fn check_format(text: &str) -> Result<(), FormatError> {
    let bytes = text.as_bytes();
    if bytes.len() != TOKEN_LEN
        || !text.starts_with(PREFIX)
        || !bytes[PREFIX.len()..].iter().all(u8::is_ascii_alphanumeric)
    {
        return Err(FormatError::Malformed);
    }
    let (body, sum) = text.split_at(TOKEN_LEN - CHECKSUM_LEN);
    if checksum(body.as_bytes()) != sum {
        return Err(FormatError::Checksum);
    }
    Ok(())
}

/// CRC32 of `body` as exactly six base62 digits, most significant first
/// (62^6 > 2^32, so every value fits).
fn checksum(body: &[u8]) -> String {
    let mut value = crc32fast::hash(body);
    let mut digits = [b'0'; CHECKSUM_LEN];
    for digit in digits.iter_mut().rev() {
        *digit = BASE62[(value % 62) as usize];
        value /= 62;
    }
    digits.iter().map(|&b| char::from(b)).collect()
}

/// Whether `text` contains something shaped like a token (prefix plus 49 base62 characters);
/// used by outbound guards that must never post a token where it does not belong.
pub fn contains_token_shape(text: &str) -> bool {
    text.match_indices(PREFIX).any(|(idx, _)| {
        let rest = &text.as_bytes()[idx + PREFIX.len()..];
        rest.len() >= RANDOM_LEN + CHECKSUM_LEN
            && rest[..RANDOM_LEN + CHECKSUM_LEN]
                .iter()
                .all(u8::is_ascii_alphanumeric)
    })
}

#[cfg(test)]
mod tests;
