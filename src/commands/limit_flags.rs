//! The limit flags of `keys create|update` and `identities create|update`, checked with
//! `keygate_proto::limits` (the parser the control plane uses, so both refuse the same input
//! with the same words) before anything is sent. Bad input fails with exit 1, as the control
//! plane's refusal of it would, and nothing is created or changed.

use keygate_proto::limits::{self, LimitError, MAX_AMOUNT, RateLimit, RefillSpec};
use keygate_proto::pb;

use crate::Failure;
use crate::args::{LimitArgs, UpdateLimitArgs};

/// The limits of a new key or identity.
#[derive(Debug, Default)]
pub struct NewLimits {
    pub ratelimits: Vec<pb::RateLimit>,
    pub credits: Option<u64>,
    pub refill: Option<pb::Refill>,
}

/// Checks `--ratelimit`, `--credits` and `--refill` of a create.
pub fn new_limits(args: &LimitArgs) -> Result<NewLimits, Failure> {
    let new = NewLimits {
        ratelimits: ratelimits(&args.ratelimits)?,
        credits: args.credits.as_deref().map(credits).transpose()?,
        refill: args.refill.as_deref().map(refill).transpose()?,
    };
    if new.refill.is_some() && new.credits.is_none() {
        return Err(refused(
            "--refill needs --credits: a refill sets the credits back to its amount",
        ));
    }
    Ok(new)
}

/// Changes to a key's or an identity's limits, as the update requests carry them.
#[derive(Debug, Default)]
pub struct LimitChanges {
    /// Replace the rate limits with `ratelimits` (empty: remove them all).
    pub set_ratelimits: bool,
    pub ratelimits: Vec<pb::RateLimit>,
    pub credits: Option<u64>,
    pub clear_credits: bool,
    pub refill: Option<pb::Refill>,
    pub clear_refill: bool,
}

impl LimitChanges {
    /// Whether no limit changes.
    pub fn is_empty(&self) -> bool {
        !self.set_ratelimits
            && self.credits.is_none()
            && !self.clear_credits
            && self.refill.is_none()
            && !self.clear_refill
    }
}

/// Checks the limit flags of an update, refusing flags that contradict each other.
pub fn limit_changes(args: &UpdateLimitArgs) -> Result<LimitChanges, Failure> {
    let set = &args.set;
    exclusive(
        ("--ratelimit", !set.ratelimits.is_empty()),
        ("--clear-ratelimits", args.clear_ratelimits),
    )?;
    exclusive(
        ("--credits", set.credits.is_some()),
        ("--clear-credits", args.clear_credits),
    )?;
    exclusive(
        ("--refill", set.refill.is_some()),
        ("--clear-refill", args.clear_refill),
    )?;
    // Clearing the credits drops their refill: a new refill with it says two things at once.
    exclusive(
        ("--refill", set.refill.is_some()),
        ("--clear-credits", args.clear_credits),
    )?;
    Ok(LimitChanges {
        set_ratelimits: !set.ratelimits.is_empty() || args.clear_ratelimits,
        ratelimits: ratelimits(&set.ratelimits)?,
        credits: set.credits.as_deref().map(credits).transpose()?,
        clear_credits: args.clear_credits,
        refill: set.refill.as_deref().map(refill).transpose()?,
        clear_refill: args.clear_refill,
    })
}

/// `--permission` values: checked, sorted, without duplicates.
pub fn permissions(given: &[String]) -> Result<Vec<String>, Failure> {
    limits::canonical_permissions(given.to_vec()).map_err(|error| flag_error("--permission", error))
}

/// An `--identity` value (or an identity id argument).
pub fn identity(id: &str) -> Result<String, Failure> {
    limits::check_identity_id(id).map_err(|error| refused(error.0))?;
    Ok(id.to_owned())
}

/// Refuses two flags given together that contradict each other.
pub fn exclusive(first: (&str, bool), second: (&str, bool)) -> Result<(), Failure> {
    match (first, second) {
        ((first, true), (second, true)) => Err(refused(format!(
            "{first} and {second} contradict each other: give one of them"
        ))),
        _ => Ok(()),
    }
}

/// Bad input to a limit flag: exit 1, like the control plane's refusal of the same input.
pub fn refused(message: impl Into<String>) -> Failure {
    Failure::Runtime(message.into())
}

fn flag_error(flag: &str, error: LimitError) -> Failure {
    refused(format!("{flag}: {error}"))
}

fn ratelimits(specs: &[String]) -> Result<Vec<pb::RateLimit>, Failure> {
    let parsed = specs
        .iter()
        .map(|spec| spec.parse::<RateLimit>())
        .collect::<Result<Vec<_>, _>>()
        .and_then(|parsed| limits::check_ratelimits(&parsed).map(|()| parsed))
        .map_err(|error| flag_error("--ratelimit", error))?;
    Ok(parsed.iter().map(pb::RateLimit::from).collect())
}

fn credits(text: &str) -> Result<u64, Failure> {
    let credits = text.trim().parse::<u64>().map_err(|_| {
        refused(format!(
            "--credits: {text:?} is not a whole number from 0 to {MAX_AMOUNT}"
        ))
    })?;
    limits::check_credits(credits).map_err(|error| flag_error("--credits", error))
}

fn refill(spec: &str) -> Result<pb::Refill, Failure> {
    let refill = spec
        .parse::<RefillSpec>()
        .map_err(|error| flag_error("--refill", error))?;
    Ok(pb::Refill {
        amount: refill.amount,
        interval_ms: refill.interval_ms,
        next_unix_ms: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(result: Result<impl std::fmt::Debug, Failure>) -> String {
        let failure = result.expect_err("refused");
        assert_eq!(failure.exit_code(), 1, "{failure}");
        failure.to_string()
    }

    #[test]
    fn a_create_needs_credits_for_a_refill_and_valid_specs() {
        let args = LimitArgs {
            ratelimits: vec!["requests=100/1s".into(), "tokens=10000/1m".into()],
            credits: Some("1000".into()),
            refill: Some("1000/1d".into()),
        };
        let new = new_limits(&args).expect("valid");
        assert_eq!(new.ratelimits.len(), 2);
        assert_eq!(new.ratelimits[1].window_ms, 60_000);
        assert_eq!(new.credits, Some(1000));
        assert_eq!(new.refill.map(|r| r.interval_ms), Some(86_400_000));

        let no_credits = LimitArgs {
            refill: Some("10/1h".into()),
            ..LimitArgs::default()
        };
        assert!(refusal(new_limits(&no_credits)).contains("--refill needs --credits"));
        for bad in ["-5", "ten", "1.5", &(MAX_AMOUNT + 1).to_string()] {
            let args = LimitArgs {
                credits: Some(bad.into()),
                ..LimitArgs::default()
            };
            assert!(
                refusal(new_limits(&args)).starts_with("--credits: "),
                "{bad}"
            );
        }
        let twice = LimitArgs {
            ratelimits: vec!["a=1/1s".into(), "a=2/1m".into()],
            ..LimitArgs::default()
        };
        assert!(refusal(new_limits(&twice)).contains("given twice"));
    }

    #[test]
    fn an_update_refuses_contradictions_and_says_what_it_changes() {
        let both = UpdateLimitArgs {
            set: LimitArgs {
                credits: Some("5".into()),
                ..LimitArgs::default()
            },
            clear_credits: true,
            ..UpdateLimitArgs::default()
        };
        assert!(refusal(limit_changes(&both)).contains("--credits and --clear-credits"));
        let refill_without_credits = UpdateLimitArgs {
            set: LimitArgs {
                refill: Some("5/1h".into()),
                ..LimitArgs::default()
            },
            clear_credits: true,
            ..UpdateLimitArgs::default()
        };
        assert!(refusal(limit_changes(&refill_without_credits)).contains("--clear-credits"));

        let nothing = limit_changes(&UpdateLimitArgs::default()).expect("valid");
        assert!(nothing.is_empty());
        let clear = limit_changes(&UpdateLimitArgs {
            clear_ratelimits: true,
            ..UpdateLimitArgs::default()
        })
        .expect("valid");
        assert!(clear.set_ratelimits && clear.ratelimits.is_empty() && !clear.is_empty());
    }

    #[test]
    fn permissions_and_identities_are_checked() {
        assert_eq!(
            permissions(&["b.write".into(), "a.read".into(), "a.read".into()]).expect("valid"),
            ["a.read", "b.write"]
        );
        assert!(refusal(permissions(&["orders.*".into()])).starts_with("--permission: "));
        assert!(refusal(identity("acme corp")).contains("space"));
        assert_eq!(identity("acme").expect("valid"), "acme");
    }
}
