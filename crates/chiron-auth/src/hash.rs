//! Token hashing. Storage keys tokens by SHA-256 of the token, or by HMAC-SHA-256 under a
//! server pepper when one is configured, so a stolen database alone cannot be used to test
//! guessed tokens offline.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Computes the storage key of a token.
#[derive(Clone)]
pub struct TokenHasher {
    pepper: Option<Vec<u8>>,
}

impl std::fmt::Debug for TokenHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenHasher")
            .field("peppered", &self.pepper.is_some())
            .finish()
    }
}

impl TokenHasher {
    /// A hasher with an optional pepper.
    pub fn new(pepper: Option<Vec<u8>>) -> Self {
        Self { pepper }
    }

    /// The 32-byte digest of `token`.
    pub fn digest(&self, token: &str) -> [u8; 32] {
        match &self.pepper {
            Some(pepper) => {
                let mut mac = Hmac::<Sha256>::new_from_slice(pepper)
                    .expect("invariant: HMAC accepts keys of any length");
                mac.update(token.as_bytes());
                mac.finalize().into_bytes().into()
            }
            None => Sha256::digest(token.as_bytes()).into(),
        }
    }

    /// The digest as lowercase hex, the form stored in `mcp_tokens.token_hash`.
    pub fn hex(digest: &[u8; 32]) -> String {
        hex::encode(digest)
    }
}
