//! Wall-clock time as Unix milliseconds, the unit of every timestamp in records and events,
//! and as RFC 3339, the way every keygate surface (CLI output, JSON bodies, session claims)
//! writes it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
#[inline]
pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The last instant RFC 3339 can write (9999-12-31T23:59:59.999Z), in Unix milliseconds.
pub const MAX_RFC3339_MS: i64 = 253_402_300_799_999;

/// `unix_ms` as RFC 3339 (UTC, milliseconds), clamped to what the format can write: before
/// 1970 is written as the epoch, past the year 9999 as its last instant (found by fuzzing:
/// humantime fails past 9999, and its `to_string` would panic on that).
pub fn rfc3339(unix_ms: i64) -> String {
    let clamped = u64::try_from(unix_ms.clamp(0, MAX_RFC3339_MS)).unwrap_or(0);
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(clamped)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_writes_milliseconds_and_clamps_what_it_cannot_write() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(-5), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(i64::MAX), "9999-12-31T23:59:59.999Z");
    }
}
