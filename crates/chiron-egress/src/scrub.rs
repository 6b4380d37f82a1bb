//! Replacing secret values — raw, base64 (standard and URL-safe, with and without padding) and
//! URL-encoded — before anything a tool or client sees them. [`StreamScrubber`] does it across
//! chunk boundaries: it holds back just enough of each chunk's end to complete a match that
//! continues in the next.

use base64::Engine;

/// What a secret is replaced with.
pub const REDACTED: &[u8] = b"[redacted by chiron]";

/// The byte strings to replace: every encoding of every value.
#[derive(Debug, Clone, Default)]
pub struct Patterns {
    matcher: Option<aho_corasick::AhoCorasick>,
    longest: usize,
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn url_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

impl Patterns {
    /// The encodings of `values` (values shorter than 4 bytes are ignored: replacing them
    /// would mangle ordinary text and hide nothing).
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        use base64::engine::general_purpose::{
            STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
        };
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        for value in values {
            if value.len() < crate::secrets::MIN_VALUE_LEN {
                continue;
            }
            let bytes = value.as_bytes();
            let mut forms = vec![
                value.to_owned(),
                STANDARD.encode(bytes),
                STANDARD_NO_PAD.encode(bytes),
                URL_SAFE.encode(bytes),
                URL_SAFE_NO_PAD.encode(bytes),
                url_encode(value),
                url_encode(value).to_lowercase(),
                // As it appears inside a JSON string.
                serde_json::to_string(value)
                    .map(|s| s.trim_matches('"').to_owned())
                    .unwrap_or_default(),
            ];
            forms.retain(|f| f.len() >= 4);
            for form in forms {
                if !patterns.iter().any(|p| p == form.as_bytes()) {
                    patterns.push(form.into_bytes());
                }
            }
        }
        let longest = patterns.iter().map(Vec::len).max().unwrap_or(0);
        // Leftmost-longest: a value that contains another is replaced whole.
        let matcher = (!patterns.is_empty()).then(|| {
            aho_corasick::AhoCorasick::builder()
                .match_kind(aho_corasick::MatchKind::LeftmostLongest)
                .build(&patterns)
                .expect("invariant: a handful of short literal patterns always builds")
        });
        Self { matcher, longest }
    }

    /// Whether there is nothing to replace.
    pub fn is_empty(&self) -> bool {
        self.matcher.is_none()
    }

    /// Replaces every occurrence in `input`.
    pub fn scrub(&self, input: &[u8]) -> Vec<u8> {
        let Some(matcher) = &self.matcher else {
            return input.to_vec();
        };
        let mut out = Vec::with_capacity(input.len());
        matcher.replace_all_with_bytes(input, &mut out, |_, _, dst| {
            dst.extend_from_slice(REDACTED);
            true
        });
        out
    }

    /// Replaces every occurrence in a string.
    pub fn scrub_str(&self, input: &str) -> String {
        String::from_utf8_lossy(&self.scrub(input.as_bytes())).into_owned()
    }

    /// Whether `input` contains any pattern.
    pub fn found_in(&self, input: &[u8]) -> bool {
        self.matcher.as_ref().is_some_and(|m| m.is_match(input))
    }
}

/// Scrubs a stream chunk by chunk.
#[derive(Debug)]
pub struct StreamScrubber {
    patterns: Patterns,
    /// The held-back end of the input seen so far (not yet scrubbed).
    pending: Vec<u8>,
}

impl StreamScrubber {
    /// A scrubber for `patterns`.
    pub fn new(patterns: Patterns) -> Self {
        Self {
            patterns,
            pending: Vec::new(),
        }
    }

    /// The patterns it replaces.
    pub fn patterns(&self) -> &Patterns {
        &self.patterns
    }

    /// Takes the next chunk; returns what can safely be passed on.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let Some(matcher) = &self.patterns.matcher else {
            return chunk.to_vec();
        };
        self.pending.extend_from_slice(chunk);
        // A match starting in the last `longest - 1` bytes may continue in the next chunk;
        // one starting before that is wholly in `pending` already.
        let keep = self.patterns.longest.saturating_sub(1);
        if self.pending.len() <= keep {
            return Vec::new();
        }
        let boundary = self.pending.len() - keep;
        let mut out = Vec::with_capacity(boundary);
        let mut done = 0;
        for found in matcher.find_iter(&self.pending) {
            if found.start() >= boundary {
                break;
            }
            out.extend_from_slice(&self.pending[done..found.start()]);
            out.extend_from_slice(REDACTED);
            done = found.end();
        }
        if done < boundary {
            out.extend_from_slice(&self.pending[done..boundary]);
            done = boundary;
        }
        self.pending.drain(..done);
        out
    }

    /// The end of the stream: everything held back, scrubbed.
    pub fn finish(&mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.pending);
        self.patterns.scrub(&rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cr3t-t0ken/with+chars";

    fn every_split(text: &[u8]) {
        let patterns = Patterns::new([SECRET]);
        let whole = patterns.scrub(text);
        for cut in 0..=text.len() {
            for cut2 in cut..=text.len() {
                let mut stream = StreamScrubber::new(patterns.clone());
                let mut out = stream.push(&text[..cut]);
                out.extend(stream.push(&text[cut..cut2]));
                out.extend(stream.push(&text[cut2..]));
                out.extend(stream.finish());
                assert_eq!(out, whole, "split at {cut}/{cut2}");
                assert!(!patterns.found_in(&out));
            }
        }
    }

    #[test]
    fn every_encoding_is_replaced_wherever_the_chunks_split() {
        use base64::engine::general_purpose::STANDARD;
        let text = format!(
            "raw {SECRET} b64 {} url {} tail",
            STANDARD.encode(SECRET),
            url_encode(SECRET)
        );
        every_split(text.as_bytes());
        let scrubbed = Patterns::new([SECRET]).scrub_str(&text);
        assert_eq!(
            scrubbed.matches("[redacted by chiron]").count(),
            3,
            "{scrubbed}"
        );
        assert!(scrubbed.starts_with("raw ") && scrubbed.ends_with(" tail"));
    }

    #[test]
    fn text_without_secrets_passes_unchanged() {
        let patterns = Patterns::new([SECRET]);
        let mut stream = StreamScrubber::new(patterns);
        let mut out = stream.push(b"hello ");
        out.extend(stream.push(b"world"));
        out.extend(stream.finish());
        assert_eq!(out, b"hello world");
    }
}
