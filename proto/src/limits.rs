//! Limits and permissions per key (DESIGN.md, "Limits and permissions per key"), as domain
//! types shared by the control plane, the gateway and the CLI: named rate limits, whether a
//! key spends credits, permissions, identities, and the *holder* a limit or a balance belongs
//! to. Also the one parser of the operator's spellings (`requests=100/1s`, `1000/1d`), so the
//! CLI and the control plane refuse the same input with the same words.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::KeyId;

/// Longest identity id, in characters.
pub const MAX_IDENTITY_CHARS: usize = 128;
/// Longest permission or rate-limit name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Most rate limits on one key or identity.
pub const MAX_RATELIMITS: usize = 8;
/// Most permissions on one key (and required by one route).
pub const MAX_PERMISSIONS: usize = 64;
/// Shortest rate-limit window: shorter than the gateways' report interval would make a global
/// count meaningless.
pub const MIN_WINDOW: Duration = Duration::from_secs(1);
/// Longest rate-limit window and refill interval.
pub const MAX_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);
/// Largest limit, credit balance or refill amount (fits in an `i64` column with room).
pub const MAX_AMOUNT: u64 = 1 << 53;

/// At most `limit` units per window of `window_ms`, windows aligned to Unix time (a window
/// starts when `unix_ms % window_ms == 0`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RateLimit {
    pub name: String,
    pub limit: u64,
    pub window_ms: u64,
}

impl RateLimit {
    /// Start (Unix ms) of the window `now_unix_ms` falls in.
    pub fn window_start(&self, now_unix_ms: i64) -> i64 {
        let window = i64::try_from(self.window_ms.max(1)).unwrap_or(i64::MAX);
        now_unix_ms - now_unix_ms.rem_euclid(window)
    }

    /// Checks a rate limit that came from anywhere (CLI, admin API, the wire, the store).
    pub fn validate(&self) -> Result<(), LimitError> {
        check_name("rate limit name", &self.name)?;
        if self.limit == 0 {
            return Err(LimitError(format!(
                "rate limit {:?} must allow at least 1 per window",
                self.name
            )));
        }
        if self.limit > MAX_AMOUNT {
            return Err(LimitError(format!(
                "rate limit {:?} is larger than {MAX_AMOUNT}",
                self.name
            )));
        }
        check_window(
            &format!("rate limit {:?}", self.name),
            Duration::from_millis(self.window_ms),
        )
    }
}

impl fmt::Display for RateLimit {
    /// The operator's spelling: `requests=100/1s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={}/{}",
            self.name,
            self.limit,
            humantime::format_duration(Duration::from_millis(self.window_ms))
        )
    }
}

impl FromStr for RateLimit {
    type Err = LimitError;

    /// `NAME=LIMIT/DURATION`, e.g. `requests=100/1s`, `tokens=10000/1m`.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (name, rest) = spec.split_once('=').ok_or_else(|| {
            LimitError(format!(
                "rate limit {spec:?} is not NAME=LIMIT/DURATION (e.g. requests=100/1s)"
            ))
        })?;
        let (limit, window) = parse_amount_per("rate limit", spec, rest)?;
        let limit = Self {
            name: name.to_owned(),
            limit,
            window_ms: millis(window),
        };
        limit.validate()?;
        Ok(limit)
    }
}

/// Every `interval_ms` a holder's credits are set back to `amount`, counting the credits
/// gateways hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefillSpec {
    pub amount: u64,
    pub interval_ms: u64,
}

impl RefillSpec {
    pub fn validate(&self) -> Result<(), LimitError> {
        if self.amount > MAX_AMOUNT {
            return Err(LimitError(format!(
                "a refill of {} is larger than {MAX_AMOUNT}",
                self.amount
            )));
        }
        check_window(
            "the refill interval",
            Duration::from_millis(self.interval_ms),
        )
    }
}

impl fmt::Display for RefillSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.amount,
            humantime::format_duration(Duration::from_millis(self.interval_ms))
        )
    }
}

impl FromStr for RefillSpec {
    type Err = LimitError;

    /// `AMOUNT/DURATION`, e.g. `1000/1d`.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (amount, interval) = parse_amount_per("refill", spec, spec)?;
        let refill = Self {
            amount,
            interval_ms: millis(interval),
        };
        refill.validate()?;
        Ok(refill)
    }
}

/// Credits to set: a balance from 0 to [`MAX_AMOUNT`].
pub fn check_credits(credits: u64) -> Result<u64, LimitError> {
    if credits > MAX_AMOUNT {
        return Err(LimitError(format!(
            "credits must be at most {MAX_AMOUNT}, got {credits}"
        )));
    }
    Ok(credits)
}

/// What a key carries beyond its identity, all optional; empty on a plain key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyLimits {
    /// The key's own rate limits, counted for this key alone.
    pub ratelimits: Vec<RateLimit>,
    /// The key spends credits of its own.
    pub credits: bool,
    /// Sorted, without duplicates.
    pub permissions: Vec<String>,
    /// The identity whose rate limits and credits the key also counts against.
    pub identity: Option<String>,
}

impl KeyLimits {
    /// Whether the key carries nothing (a plain key).
    pub fn is_empty(&self) -> bool {
        self.ratelimits.is_empty()
            && !self.credits
            && self.permissions.is_empty()
            && self.identity.is_none()
    }

    /// Checks everything and puts permissions in their canonical order.
    pub fn validated(mut self) -> Result<Self, LimitError> {
        check_ratelimits(&self.ratelimits)?;
        self.permissions = canonical_permissions(self.permissions)?;
        if let Some(identity) = &self.identity {
            check_identity_id(identity)?;
        }
        Ok(self)
    }
}

/// A group of keys that share its rate limits and credits (like Unkey's identities).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub id: String,
    pub ratelimits: Vec<RateLimit>,
    /// The identity has credits: every key of it spends them.
    pub credits: bool,
}

/// What a rate limit or a credit balance belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Holder {
    Key(KeyId),
    Identity(String),
}

impl fmt::Display for Holder {
    /// `key:<key id>` or `identity:<identity id>`, as the sync protocol writes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Key(id) => write!(f, "key:{id}"),
            Self::Identity(id) => write!(f, "identity:{id}"),
        }
    }
}

impl FromStr for Holder {
    type Err = LimitError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(id) = text.strip_prefix("key:") {
            let id = id
                .parse::<KeyId>()
                .map_err(|error| LimitError(format!("holder {text:?}: {error}")))?;
            return Ok(Self::Key(id));
        }
        if let Some(id) = text.strip_prefix("identity:") {
            check_identity_id(id)?;
            return Ok(Self::Identity(id.to_owned()));
        }
        Err(LimitError(format!(
            "holder {text:?} is neither key:<id> nor identity:<id>"
        )))
    }
}

/// Bad limit, credit, permission or identity input, with a message fit for an operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LimitError(pub String);

/// A set of rate limits: each valid, names unique, at most [`MAX_RATELIMITS`].
pub fn check_ratelimits(limits: &[RateLimit]) -> Result<(), LimitError> {
    if limits.len() > MAX_RATELIMITS {
        return Err(LimitError(format!(
            "at most {MAX_RATELIMITS} rate limits, got {}",
            limits.len()
        )));
    }
    for (index, limit) in limits.iter().enumerate() {
        limit.validate()?;
        if limits[..index].iter().any(|other| other.name == limit.name) {
            return Err(LimitError(format!(
                "rate limit {:?} is given twice",
                limit.name
            )));
        }
    }
    Ok(())
}

/// Permissions checked, sorted and without duplicates.
pub fn canonical_permissions(mut permissions: Vec<String>) -> Result<Vec<String>, LimitError> {
    for permission in &permissions {
        check_permission(permission)?;
    }
    permissions.sort_unstable();
    permissions.dedup();
    if permissions.len() > MAX_PERMISSIONS {
        return Err(LimitError(format!(
            "at most {MAX_PERMISSIONS} permissions, got {}",
            permissions.len()
        )));
    }
    Ok(permissions)
}

/// A permission: 1–64 of `[A-Za-z0-9._:-]`, e.g. `orders.read`. Matched exactly: there are no
/// wildcards, so what a key may do is exactly what it lists.
pub fn check_permission(permission: &str) -> Result<(), LimitError> {
    check_name("permission", permission)
}

/// An identity id: 1–128 printable characters without spaces (like an owner).
pub fn check_identity_id(id: &str) -> Result<(), LimitError> {
    if id.is_empty() {
        return Err(LimitError("identity must not be empty".into()));
    }
    if id.chars().count() > MAX_IDENTITY_CHARS {
        return Err(LimitError(format!(
            "identity is longer than {MAX_IDENTITY_CHARS} characters"
        )));
    }
    if id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(LimitError(format!(
            "identity {id:?} contains a space or a control character"
        )));
    }
    Ok(())
}

fn check_name(what: &str, name: &str) -> Result<(), LimitError> {
    if name.is_empty() {
        return Err(LimitError(format!("{what} must not be empty")));
    }
    if name.len() > MAX_NAME_CHARS {
        return Err(LimitError(format!(
            "{what} {name:?} is longer than {MAX_NAME_CHARS} characters"
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(LimitError(format!(
            "{what} {name:?} contains {bad:?}; use letters, digits, '.', '_', ':' and '-'"
        )));
    }
    Ok(())
}

fn check_window(what: &str, window: Duration) -> Result<(), LimitError> {
    if window < MIN_WINDOW || window > MAX_WINDOW {
        return Err(LimitError(format!(
            "{what}: the duration must be from {} to {}, got {}",
            humantime::format_duration(MIN_WINDOW),
            humantime::format_duration(MAX_WINDOW),
            humantime::format_duration(window)
        )));
    }
    Ok(())
}

/// `AMOUNT/DURATION` of `spec` (the whole input, for messages).
fn parse_amount_per(what: &str, spec: &str, text: &str) -> Result<(u64, Duration), LimitError> {
    let (amount, duration) = text.split_once('/').ok_or_else(|| {
        LimitError(format!(
            "{what} {spec:?}: expected AMOUNT/DURATION, e.g. 100/1s"
        ))
    })?;
    let amount: u64 = amount.trim().parse().map_err(|_| {
        LimitError(format!(
            "{what} {spec:?}: {amount:?} is not a whole number from 0 to {MAX_AMOUNT}"
        ))
    })?;
    let duration = humantime::parse_duration(duration.trim()).map_err(|error| {
        LimitError(format!(
            "{what} {spec:?}: {duration:?} is not a duration ({error}); e.g. 1s, 1m, 1h, 1d"
        ))
    })?;
    Ok((amount, duration))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_spellings_parse_and_print_back() {
        let limit: RateLimit = "requests=100/1s".parse().expect("valid");
        assert_eq!(
            limit,
            RateLimit {
                name: "requests".into(),
                limit: 100,
                window_ms: 1_000
            }
        );
        assert_eq!(limit.to_string(), "requests=100/1s");
        let tokens: RateLimit = "tokens=10000/1m".parse().expect("valid");
        assert_eq!(tokens.window_ms, 60_000);
        let refill: RefillSpec = "1000/1d".parse().expect("valid");
        assert_eq!((refill.amount, refill.interval_ms), (1000, 86_400_000));
        assert_eq!(refill.to_string(), "1000/1day");
    }

    #[test]
    fn bad_specs_are_refused_with_what_is_wrong() {
        for (spec, words) in [
            ("requests100/1s", "NAME=LIMIT/DURATION"),
            ("requests=0/1s", "at least 1"),
            ("requests=-5/1s", "whole number"),
            ("requests=ten/1s", "whole number"),
            ("requests=100", "AMOUNT/DURATION"),
            ("requests=100/soon", "not a duration"),
            ("requests=100/10ms", "from 1s"),
            ("=100/1s", "must not be empty"),
            ("re quests=100/1s", "contains ' '"),
        ] {
            let error = spec.parse::<RateLimit>().expect_err(spec);
            assert!(error.0.contains(words), "{spec}: {error}");
        }
        assert!("-1/1d".parse::<RefillSpec>().is_err());
        assert!("5/0s".parse::<RefillSpec>().is_err());
        assert!(check_credits(MAX_AMOUNT + 1).is_err());
    }

    #[test]
    fn limits_are_checked_and_permissions_made_canonical() {
        let limits = KeyLimits {
            permissions: vec![
                "orders.write".into(),
                "orders.read".into(),
                "orders.read".into(),
            ],
            ..KeyLimits::default()
        }
        .validated()
        .expect("valid");
        assert_eq!(limits.permissions, ["orders.read", "orders.write"]);
        assert!(KeyLimits::default().is_empty());
        let twice = vec![
            "a=1/1s".parse::<RateLimit>().expect("valid"),
            "a=2/1m".parse::<RateLimit>().expect("valid"),
        ];
        assert!(check_ratelimits(&twice).is_err());
        assert!(check_permission("orders read").is_err());
        assert!(check_permission("orders.*").is_err());
        assert!(check_identity_id("acme corp").is_err());
    }

    #[test]
    fn holders_round_trip_and_windows_align_to_unix_time() {
        let key = KeyId::generate();
        for holder in [Holder::Key(key), Holder::Identity("acme".into())] {
            assert_eq!(holder.to_string().parse::<Holder>(), Ok(holder));
        }
        assert!("user:x".parse::<Holder>().is_err());
        let limit = RateLimit {
            name: "r".into(),
            limit: 1,
            window_ms: 1_000,
        };
        assert_eq!(limit.window_start(12_345), 12_000);
        assert_eq!(limit.window_start(-1), -1_000);
    }
}
