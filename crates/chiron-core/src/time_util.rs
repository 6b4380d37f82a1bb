//! Timestamps are carried as `OffsetDateTime` in memory and as Unix milliseconds in storage,
//! which keeps one schema portable across SQLite and PostgreSQL.

use time::OffsetDateTime;

/// The current time, truncated to whole milliseconds so a value survives a storage round trip
/// unchanged.
pub fn now() -> OffsetDateTime {
    from_millis(to_millis(OffsetDateTime::now_utc()))
}

/// Milliseconds since the Unix epoch.
pub fn to_millis(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// The inverse of [`to_millis`]; out-of-range values clamp to the epoch.
pub fn from_millis(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// RFC 3339 text for display and JSON.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// Serde adapter writing `OffsetDateTime` as RFC 3339.
pub mod serde_rfc3339 {
    pub use time::serde::rfc3339::*;

    /// The same for `Option<OffsetDateTime>`.
    pub mod option {
        pub use time::serde::rfc3339::option::*;
    }
}
