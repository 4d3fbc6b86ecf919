//! The `Date` field of responses the gateway writes itself (RFC 9110 §6.6.1), formatted once per
//! second per thread rather than once per response, as hyper's server does.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

/// `Sun, 06 Nov 1994 08:49:37 GMT`: IMF-fixdate is always this long.
const LEN: usize = 29;

struct Cached {
    second: u64,
    text: [u8; LEN],
}

thread_local! {
    static CACHED: RefCell<Cached> = const { RefCell::new(Cached { second: u64::MAX, text: [0; LEN] }) };
}

/// Calls `write` with the current date as IMF-fixdate.
pub(crate) fn with_now<R>(write: impl FnOnce(&[u8]) -> R) -> R {
    let now = SystemTime::now();
    let second = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.second != second {
            let text = httpdate::fmt_http_date(now);
            if text.len() == LEN {
                cached.text.copy_from_slice(text.as_bytes());
                cached.second = second;
            }
        }
        write(&cached.text)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_date_is_imf_fixdate_of_now() {
        let before = SystemTime::now();
        let text = with_now(|date| String::from_utf8(date.to_vec()).unwrap());
        let parsed = httpdate::parse_http_date(&text).unwrap();
        let after = SystemTime::now();
        // Whole seconds: the parsed date is `before` rounded down, at most `after`.
        assert!(parsed <= after, "{text}");
        assert!(
            before.duration_since(parsed).unwrap_or_default().as_secs() < 1,
            "{text}"
        );
        assert!(text.ends_with(" GMT"), "{text}");
    }
}
