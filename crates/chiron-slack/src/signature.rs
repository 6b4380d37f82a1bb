//! Slack request signatures: `X-Slack-Signature: v0=<hex HMAC-SHA256 of "v0:<ts>:<body>">`
//! under the signing secret, compared in constant time; timestamps more than five minutes
//! from now are refused, and so is a (timestamp, signature) pair seen before.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a request's timestamp may be from now.
pub const MAX_SKEW_SECS: i64 = 5 * 60;

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// Headers missing or malformed.
    #[error("missing or malformed Slack signature headers")]
    Malformed,
    /// Older (or newer) than the allowed skew.
    #[error("stale Slack request timestamp")]
    Stale,
    /// The HMAC does not match.
    #[error("bad Slack signature")]
    Mismatch,
    /// The same signed request was seen before.
    #[error("replayed Slack request")]
    Replayed,
}

/// Signatures seen recently, and their order of arrival (for forgetting).
type Seen = (HashSet<String>, VecDeque<(i64, String)>);

/// Verifies signed requests and remembers recent ones.
pub struct Verifier {
    secret: zeroize::Zeroizing<Vec<u8>>,
    seen: Mutex<Seen>,
}

impl Verifier {
    /// A verifier for `signing_secret`.
    pub fn new(signing_secret: &str) -> Self {
        Self {
            secret: zeroize::Zeroizing::new(signing_secret.trim().as_bytes().to_vec()),
            seen: Mutex::default(),
        }
    }

    /// The HMAC over Slack's base string `v0:<timestamp>:<body>`.
    fn mac(&self, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.secret).expect("invariant: HMAC takes any key");
        mac.update(format!("v0:{timestamp}:").as_bytes());
        mac.update(body);
        mac
    }

    /// The signature Slack would send for `body` at `timestamp` (for tests and fakes).
    pub fn sign(&self, timestamp: i64, body: &[u8]) -> String {
        format!(
            "v0={}",
            hex::encode(self.mac(timestamp, body).finalize().into_bytes())
        )
    }

    /// Checks one request; `now` is Unix seconds.
    pub fn verify(
        &self,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<(), SignatureError> {
        let timestamp: i64 = timestamp
            .and_then(|t| t.trim().parse().ok())
            .ok_or(SignatureError::Malformed)?;
        let signature = signature.ok_or(SignatureError::Malformed)?;
        if (now - timestamp).abs() > MAX_SKEW_SECS {
            return Err(SignatureError::Stale);
        }
        let given = signature
            .strip_prefix("v0=")
            .and_then(|h| hex::decode(h).ok())
            .ok_or(SignatureError::Malformed)?;
        self.mac(timestamp, body)
            .verify_slice(&given)
            .map_err(|_| SignatureError::Mismatch)?;
        // Replays: remember signatures until their timestamps are too old to pass anyway.
        let key = format!("{timestamp}:{signature}");
        let mut seen = self.seen.lock().expect("invariant: replay cache lock");
        let (index, order) = &mut *seen;
        while order.front().is_some_and(|(t, _)| now - t > MAX_SKEW_SECS) {
            if let Some((_, old)) = order.pop_front() {
                index.remove(&old);
            }
        }
        if !index.insert(key.clone()) {
            return Err(SignatureError::Replayed);
        }
        order.push_back((timestamp, key));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_checked_for_value_age_and_replay() {
        let verifier = Verifier::new("8f742231b10e8888abcd99yyyzzz85a5");
        let body = b"token=x&command=/chiron";
        let now = 1_800_000_000;
        let good = verifier.sign(now, body);
        let ts = now.to_string();
        assert_eq!(verifier.verify(Some(&ts), Some(&good), body, now), Ok(()));
        assert_eq!(
            verifier.verify(Some(&ts), Some(&good), body, now),
            Err(SignatureError::Replayed)
        );
        let forged = Verifier::new("another").sign(now, body);
        assert_eq!(
            verifier.verify(Some(&ts), Some(&forged), body, now),
            Err(SignatureError::Mismatch)
        );
        let old = now - MAX_SKEW_SECS - 1;
        let stale = verifier.sign(old, body);
        assert_eq!(
            verifier.verify(Some(&old.to_string()), Some(&stale), body, now),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verifier.verify(None, Some(&good), body, now),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verifier.verify(Some(&ts), Some("v1=zz"), body, now),
            Err(SignatureError::Malformed)
        );
        // A changed body fails.
        let fresh = verifier.sign(now + 1, body);
        assert_eq!(
            verifier.verify(Some(&(now + 1).to_string()), Some(&fresh), b"tampered", now),
            Err(SignatureError::Mismatch)
        );
    }
}
