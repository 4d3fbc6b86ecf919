//! The rate-limit response headers of draft-ietf-httpapi-ratelimit-headers-10, as structured
//! fields (RFC 9651), for the tightest of a key's limits:
//!
//! - `RateLimit-Policy: "<name>";q=<limit>;w=<window seconds>`
//! - `RateLimit: "<name>";r=<remaining>;t=<seconds until the window ends>`
//!
//! plus `Retry-After: <seconds>` on RATE_LIMITED. Limit names are `[A-Za-z0-9._:-]`, so they
//! need no escaping inside a structured-field string.

use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};

use super::{Admission, RateLimitStatus};

/// `RateLimit-Policy`.
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`.
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// `RateLimit-Policy`'s value for one limit (made once per limit definition).
pub(crate) fn policy_value(name: &str, limit: u64, window_ms: u64) -> HeaderValue {
    let seconds = window_ms.div_ceil(1000).max(1);
    HeaderValue::from_str(&format!("\"{name}\";q={limit};w={seconds}"))
        .unwrap_or_else(|_| HeaderValue::from_static("\"limit\""))
}

/// `RateLimit`'s value for one status.
pub fn ratelimit_value(status: &RateLimitStatus) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "\"{}\";r={};t={}",
        status.def.name, status.remaining, status.reset_secs
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("\"limit\""))
}

/// Adds the headers an admission carries: the tightest limit's `RateLimit-Policy` and
/// `RateLimit` (keys with rate limits only), and `Retry-After` on RATE_LIMITED.
pub fn apply(headers: &mut HeaderMap, admission: &Admission) {
    let (status, retry_after) = match admission {
        Admission::Allowed(status) => (status.as_ref(), None),
        Admission::Denied {
            status,
            retry_after_secs,
            ..
        } => (status.as_ref(), *retry_after_secs),
    };
    if let Some(status) = status {
        headers.insert(RATELIMIT_POLICY.clone(), status.def.policy_header.clone());
        headers.insert(RATELIMIT.clone(), ratelimit_value(status));
    }
    if let Some(seconds) = retry_after {
        headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::Code;

    #[test]
    fn headers_are_the_drafts_structured_fields() {
        assert_eq!(
            policy_value("requests", 100, 60_000),
            "\"requests\";q=100;w=60"
        );
        assert_eq!(policy_value("burst", 5, 1_500), "\"burst\";q=5;w=2");
        let status = RateLimitStatus {
            def: super::super::holder::LimitName::of(&keygate_proto::RateLimit {
                name: "requests".into(),
                limit: 100,
                window_ms: 60_000,
            }),
            limit: 100,
            remaining: 42,
            reset_secs: 17,
        };
        let mut headers = HeaderMap::new();
        apply(&mut headers, &Admission::Allowed(Some(status.clone())));
        assert_eq!(headers[&RATELIMIT_POLICY], "\"requests\";q=100;w=60");
        assert_eq!(headers[&RATELIMIT], "\"requests\";r=42;t=17");
        assert!(headers.get(RETRY_AFTER).is_none());

        let mut refused = HeaderMap::new();
        apply(
            &mut refused,
            &Admission::Denied {
                code: Code::RateLimited,
                retry_after_secs: Some(17),
                status: Some(RateLimitStatus {
                    remaining: 0,
                    ..status
                }),
            },
        );
        assert_eq!(refused[RETRY_AFTER], "17");
        assert_eq!(refused[&RATELIMIT], "\"requests\";r=0;t=17");

        let mut plain = HeaderMap::new();
        apply(&mut plain, &Admission::Allowed(None));
        assert!(plain.is_empty());
    }
}
