//! MCP tokens end to end: the token format ([`token`]: `chi_` + 43 base62 random characters +
//! a 6-character base62 CRC32 checksum), keyed hashing ([`hash::TokenHasher`]), and
//! [`AuthService`], which issues, verifies (with a short positive cache and coalesced
//! `last_used_at` writes), revokes and disables. Every path that issues or revokes a token —
//! CLI, admin API, Slack — goes through [`AuthService`], so the rules live in one place.
//!
//! Invariant: a token's plaintext exists only in the [`token::TokenSecret`] returned by
//! [`AuthService::issue`] and in the caller's request; storage sees its hash, logs see its id.

pub mod hash;
pub mod service;
pub mod token;

pub use service::{
    AuthError, AuthService, AuthSettings, Authenticated, InvalidReason, IssueRequest, IssuedToken,
    VerifyError,
};
pub use token::TokenSecret;
