//! Limits per key (DESIGN.md, "Limits and permissions per key"): identities, credit balances
//! and the leases gateways spend them through.
//!
//! A key's rate limits, permissions, identity and whether it spends credits are part of the
//! key (`keys.limits`, replicated in its `KeyUpserted`). What is only the control plane's:
//!
//! - **identities**: groups of keys sharing rate limits and credits; each change appends an
//!   `IdentityUpserted` or `IdentityDeleted` event;
//! - **credit balances**, one per holder (`key:<id>` or `identity:<id>`) that has credits:
//!   what is not yet leased to any gateway, and the refill rule;
//! - **leases**: credits taken off a balance for one gateway to spend.
//!
//! **Invariant (credits are never overspent):** a lease takes its credits off the balance in
//! the transaction that records it, and never more than the balance holds; credits come back
//! only through [`LimitStore::return_lease`] of a lease still recorded, which deletes the
//! lease in the same transaction. A lease never returned is written off (counted as spent)
//! once expired. So balance + outstanding leases + spent never exceeds what was granted by
//! operators and refills.
//!
//! Lease grants and returns are not events: they change no replicated state and would flood
//! the log. A refill, or an operator setting credits, appends a `CreditsChanged` event so
//! that gateways told "exhausted" ask again.

use async_trait::async_trait;
use keygate_proto::limits::{Holder, RateLimit, RefillSpec};
use keygate_proto::{Identity, KeyId, KeyLimits, Revision};
use serde_json::json;

use super::keys::next_refill;
use super::{AuditNote, KeyRecord, StoreError};

/// A holder's credit balance as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditState {
    /// Not yet leased to any gateway.
    pub remaining: u64,
    /// Leased to gateways and not yet returned or written off.
    pub leased: u64,
    pub refill: Option<RefillSpec>,
    /// When the next refill is due (Unix ms); `None` without a refill.
    pub next_refill_unix_ms: Option<i64>,
}

/// An identity as the control plane keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRecord {
    pub id: String,
    pub ratelimits: Vec<RateLimit>,
    /// `None`: the identity has no credits of its own.
    pub credits: Option<CreditState>,
    pub created_unix_ms: i64,
    /// Revision of the identity's last change.
    pub revision: Revision,
}

impl IdentityRecord {
    /// What gateways replicate of this identity.
    pub fn replica(&self) -> Identity {
        Identity {
            id: self.id.clone(),
            ratelimits: self.ratelimits.clone(),
            credits: self.credits.is_some(),
        }
    }
}

/// Credits on create or update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CreditsChange {
    #[default]
    Keep,
    /// Unlimited again: the balance, its refill and its outstanding leases are dropped (a
    /// gateway's return of a dropped lease is then ignored).
    Clear,
    /// The balance becomes `credits` minus what gateways hold (so the holder has exactly
    /// `credits` counting outstanding leases, never less than 0 left).
    Set(u64),
}

/// A refill rule on create or update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RefillChange {
    #[default]
    Keep,
    Clear,
    /// Refused (by the caller) for a holder without credits.
    Set(RefillSpec),
}

/// A change to a key's limits; `None` fields keep their value. Validated by the caller.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LimitsUpdate {
    pub ratelimits: Option<Vec<RateLimit>>,
    pub credits: CreditsChange,
    pub refill: RefillChange,
    /// Canonical (sorted, deduplicated).
    pub permissions: Option<Vec<String>>,
    /// `Some(None)` removes the identity. An identity that does not exist is created, with
    /// no limits of its own, in the same transaction.
    pub identity: Option<Option<String>>,
}

/// An identity to create. Validated by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewIdentity {
    pub id: String,
    pub ratelimits: Vec<RateLimit>,
    pub credits: Option<u64>,
    pub refill: Option<RefillSpec>,
    pub created_unix_ms: i64,
}

/// A change to an identity; `None` fields keep their value. Validated by the caller.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdentityUpdate {
    pub ratelimits: Option<Vec<RateLimit>>,
    pub credits: CreditsChange,
    pub refill: RefillChange,
}

/// A lease to grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLease {
    /// Made by the caller (`lease_…`).
    pub lease_id: String,
    pub holder: Holder,
    pub gateway_id: String,
    pub wanted: u64,
    /// The grant is at most `ceil(remaining / share_divisor)` (at least 1 while any remain),
    /// so that a few remaining credits are spread over the gateways asking for them.
    pub share_divisor: u64,
    /// When the control plane writes the lease off if it has not come back.
    pub expires_unix_ms: i64,
}

/// What [`LimitStore::lease_credits`] granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseGranted {
    /// May be 0 (nothing remains).
    pub granted: u64,
    /// Left on the balance after the grant.
    pub remaining: u64,
}

/// Identities, credit balances and leases.
#[async_trait]
pub trait LimitStore: Send + Sync {
    /// Changes a key's limits in one transaction: a `KeyUpserted` event when its replicated
    /// part changed, an `IdentityUpserted` first when the identity it names is new, a
    /// `CreditsChanged` when its credits were set; one audit row (`key.update`). Refused with
    /// [`StoreError::KeyNotFound`] for an unknown key.
    async fn update_key_limits(
        &self,
        id: KeyId,
        update: LimitsUpdate,
        now_unix_ms: i64,
        actor: &str,
    ) -> Result<KeyRecord, StoreError>;

    /// Creates an identity (`IdentityUpserted`, and `CreditsChanged` with credits; audit
    /// `identity.create`). [`StoreError::Conflict`] when it exists.
    async fn create_identity(
        &self,
        identity: NewIdentity,
        actor: &str,
    ) -> Result<IdentityRecord, StoreError>;

    /// Changes an identity (audit `identity.update`). [`StoreError::IdentityNotFound`] when it
    /// does not exist.
    async fn update_identity(
        &self,
        id: &str,
        update: IdentityUpdate,
        now_unix_ms: i64,
        actor: &str,
    ) -> Result<IdentityRecord, StoreError>;

    async fn get_identity(&self, id: &str) -> Result<Option<IdentityRecord>, StoreError>;

    /// A page of identities ordered by id, strictly after `after`.
    async fn list_identities(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<IdentityRecord>, StoreError>;

    /// Deletes an identity, its balance and its leases (`IdentityDeleted`, audit
    /// `identity.delete`). [`StoreError::IdentityInUse`] while a key names it.
    async fn delete_identity(&self, id: &str, actor: &str) -> Result<Revision, StoreError>;

    /// A holder's balance; `None` when it has no credits (unlimited, or unknown).
    async fn credits(&self, holder: &Holder) -> Result<Option<CreditState>, StoreError>;

    /// Leases credits of a holder to one gateway (see [`NewLease::share_divisor`]) and
    /// records the lease when anything was granted. `None` when the holder has no credits.
    async fn lease_credits(&self, lease: NewLease) -> Result<Option<LeaseGranted>, StoreError>;

    /// Gives back `unspent` credits of a recorded lease (at most its amount) and deletes the
    /// lease. False, changing nothing, when the lease is not recorded (already returned,
    /// written off, or its holder's credits were cleared).
    async fn return_lease(&self, lease_id: &str, unspent: u64) -> Result<bool, StoreError>;

    /// Refills every balance whose refill is due at `now_unix_ms`: the balance becomes the
    /// refill amount minus what is leased, the next refill moves past now; one
    /// `CreditsChanged` event and one audit row (`credits.refill`, actor `actor`) each.
    async fn refill_due(&self, now_unix_ms: i64, actor: &str) -> Result<Vec<Holder>, StoreError>;

    /// Writes off the leases that expired before `before_unix_ms` without coming back; returns
    /// how many credits they held.
    async fn write_off_leases(&self, before_unix_ms: i64) -> Result<u64, StoreError>;

    /// Records what gateways connected to `replica_id` used (`crate::limits::shared`): per
    /// (holder, limit, gateway), a row is replaced only by a later window or a larger count in
    /// the same one, so a late or repeated write never lowers a count.
    async fn publish_usage(
        &self,
        replica_id: &str,
        now_unix_ms: i64,
        rows: &[UsageRow],
    ) -> Result<(), StoreError>;

    /// The rows other replicas than `replica_id` wrote at or after `since_unix_ms`.
    async fn read_usage(
        &self,
        replica_id: &str,
        since_unix_ms: i64,
    ) -> Result<Vec<UsageRow>, StoreError>;

    /// Deletes the rows last written before `before_unix_ms`; returns how many.
    async fn forget_usage(&self, before_unix_ms: i64) -> Result<usize, StoreError>;
}

/// What one gateway used in one window of one rate limit, as a replica shares it with the
/// others (absolute: the gateway's whole count in that window).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UsageRow {
    pub holder: Holder,
    pub limit: String,
    pub gateway_id: String,
    pub window_start_unix_ms: i64,
    pub used: u64,
}

// What both backends compute alike; each keeps only its SQL.

impl LimitsUpdate {
    /// `limits` with this update's replicated part applied (the credits flag follows
    /// [`LimitsUpdate::credits`]).
    pub(crate) fn applied_to(&self, limits: &KeyLimits) -> KeyLimits {
        let mut limits = limits.clone();
        if let Some(ratelimits) = &self.ratelimits {
            limits.ratelimits.clone_from(ratelimits);
        }
        if let Some(permissions) = &self.permissions {
            limits.permissions.clone_from(permissions);
        }
        if let Some(identity) = &self.identity {
            limits.identity.clone_from(identity);
        }
        match self.credits {
            CreditsChange::Keep => {}
            CreditsChange::Clear => limits.credits = false,
            CreditsChange::Set(_) => limits.credits = true,
        }
        limits
    }

    /// The audit row of a key's limits changing (`key.update`).
    pub(crate) fn audit(&self, key: &KeyRecord) -> AuditNote {
        AuditNote {
            action: "key.update",
            target: key.id.to_string(),
            detail: json!({
                "owner": key.owner,
                "ratelimits": self.ratelimits.as_ref().map(|limits| spellings(limits)),
                "permissions": self.permissions,
                "identity": self.identity,
                "credits": credits_detail(self.credits),
                "refill": refill_detail(self.refill),
            }),
        }
    }
}

impl IdentityRecord {
    /// The holder of the identity's rate limits and credits.
    pub fn holder(&self) -> Holder {
        Holder::Identity(self.id.clone())
    }
}

impl NewIdentity {
    /// The identity as stored at `revision`, its balance full.
    pub(crate) fn into_record(self, revision: Revision) -> IdentityRecord {
        let credits = self.credits.map(|remaining| CreditState {
            remaining,
            leased: 0,
            refill: self.refill,
            next_refill_unix_ms: self
                .refill
                .map(|refill| next_refill(self.created_unix_ms, refill)),
        });
        IdentityRecord {
            id: self.id,
            ratelimits: self.ratelimits,
            credits,
            created_unix_ms: self.created_unix_ms,
            revision,
        }
    }

    /// The audit row of its creation.
    pub(crate) fn audit(&self) -> AuditNote {
        AuditNote {
            action: "identity.create",
            target: self.id.clone(),
            detail: json!({
                "ratelimits": spellings(&self.ratelimits),
                "credits": self.credits,
                "refill": self.refill.map(|refill| refill.to_string()),
            }),
        }
    }
}

impl IdentityUpdate {
    /// The audit row of a change to identity `id`.
    pub(crate) fn audit(&self, id: &str) -> AuditNote {
        AuditNote {
            action: "identity.update",
            target: id.to_owned(),
            detail: json!({
                "ratelimits": self.ratelimits.as_ref().map(|limits| spellings(limits)),
                "credits": credits_detail(self.credits),
                "refill": refill_detail(self.refill),
            }),
        }
    }
}

/// An identity made because a key named it: no limits of its own.
pub(crate) fn implicit_identity(id: &str, created_unix_ms: i64) -> NewIdentity {
    NewIdentity {
        id: id.to_owned(),
        ratelimits: Vec::new(),
        credits: None,
        refill: None,
        created_unix_ms,
    }
}

/// The audit row of an identity's deletion.
pub(crate) fn identity_deleted_audit(id: &str) -> AuditNote {
    AuditNote {
        action: "identity.delete",
        target: id.to_owned(),
        detail: json!({}),
    }
}

/// The audit row of one holder's refill.
pub(crate) fn refill_audit(holder: &Holder, remaining: u64) -> AuditNote {
    AuditNote {
        action: "credits.refill",
        target: holder.to_string(),
        detail: json!({ "remaining": remaining }),
    }
}

fn spellings(limits: &[RateLimit]) -> Vec<String> {
    limits.iter().map(RateLimit::to_string).collect()
}

fn credits_detail(change: CreditsChange) -> serde_json::Value {
    match change {
        CreditsChange::Keep => serde_json::Value::Null,
        CreditsChange::Clear => json!("unlimited"),
        CreditsChange::Set(credits) => json!(credits),
    }
}

fn refill_detail(change: RefillChange) -> serde_json::Value {
    match change {
        RefillChange::Keep => serde_json::Value::Null,
        RefillChange::Clear => json!("none"),
        RefillChange::Set(refill) => json!(refill.to_string()),
    }
}

/// What a [`CreditsChange`] and a [`RefillChange`] do to a holder's balance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CreditsOutcome {
    /// Nothing to write: the balance as it was (`None`: the holder has no credits).
    Unchanged(Option<CreditState>),
    /// Drop the balance and its leases: unlimited.
    Cleared,
    /// Write this balance; `set`: the operator set the credits (a `CreditsChanged` event).
    Write { state: CreditState, set: bool },
}

/// What the holder's balance becomes. `current` is the balance as stored, with what is
/// leased; a refill without credits is ignored (the caller refuses it).
pub(crate) fn credits_after(
    current: Option<&CreditState>,
    credits: CreditsChange,
    refill: RefillChange,
    now_unix_ms: i64,
) -> CreditsOutcome {
    let refill_of = |current: Option<&CreditState>| {
        let kept = current.and_then(|state| state.refill.zip(state.next_refill_unix_ms));
        match refill {
            RefillChange::Keep => kept,
            RefillChange::Clear => None,
            RefillChange::Set(spec) => Some((spec, next_refill(now_unix_ms, spec))),
        }
    };
    match (credits, current) {
        (CreditsChange::Clear, _) => CreditsOutcome::Cleared,
        (CreditsChange::Keep, None) => CreditsOutcome::Unchanged(None),
        (CreditsChange::Keep, Some(state)) if refill == RefillChange::Keep => {
            CreditsOutcome::Unchanged(Some(state.clone()))
        }
        (CreditsChange::Keep, Some(state)) => {
            let refill = refill_of(Some(state));
            CreditsOutcome::Write {
                state: CreditState {
                    refill: refill.map(|(spec, _)| spec),
                    next_refill_unix_ms: refill.map(|(_, next)| next),
                    ..state.clone()
                },
                set: false,
            }
        }
        (CreditsChange::Set(credits), current) => {
            let leased = current.map_or(0, |state| state.leased);
            let refill = refill_of(current);
            CreditsOutcome::Write {
                state: CreditState {
                    remaining: credits.saturating_sub(leased),
                    leased,
                    refill: refill.map(|(spec, _)| spec),
                    next_refill_unix_ms: refill.map(|(_, next)| next),
                },
                set: true,
            }
        }
    }
}

/// What one lease grants of `remaining` (see [`NewLease::share_divisor`]).
pub(crate) fn lease_grant(remaining: u64, wanted: u64, share_divisor: u64) -> u64 {
    if remaining == 0 {
        return 0;
    }
    let share = remaining.div_ceil(share_divisor.max(1)).max(1);
    wanted.min(share).min(remaining)
}

/// The first refill after `now_unix_ms` on the schedule of one due at `due_unix_ms`: a
/// control plane that was down for several intervals refills once, not once per interval.
pub(crate) fn next_refill_after(due_unix_ms: i64, now_unix_ms: i64, refill: RefillSpec) -> i64 {
    let interval = i64::try_from(refill.interval_ms.max(1)).unwrap_or(i64::MAX);
    if due_unix_ms > now_unix_ms {
        return due_unix_ms;
    }
    let periods = (now_unix_ms - due_unix_ms) / interval + 1;
    due_unix_ms.saturating_add(periods.saturating_mul(interval))
}

/// The balance a refill leaves: the refill amount minus what gateways hold.
pub(crate) fn refilled(state: &CreditState, refill: RefillSpec, now_unix_ms: i64) -> CreditState {
    CreditState {
        remaining: refill.amount.saturating_sub(state.leased),
        leased: state.leased,
        refill: Some(refill),
        next_refill_unix_ms: Some(next_refill_after(
            state.next_refill_unix_ms.unwrap_or(now_unix_ms),
            now_unix_ms,
            refill,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(remaining: u64, leased: u64) -> CreditState {
        CreditState {
            remaining,
            leased,
            refill: None,
            next_refill_unix_ms: None,
        }
    }

    #[test]
    fn a_grant_is_a_share_of_what_remains_and_never_more() {
        assert_eq!(lease_grant(0, 10, 1), 0);
        assert_eq!(lease_grant(100, 10, 4), 10);
        assert_eq!(lease_grant(100, 1_000, 4), 25);
        assert_eq!(lease_grant(3, 1_000, 4), 1, "at least one while any remain");
        assert_eq!(lease_grant(5, 1_000, 0), 5, "a divisor of 0 counts as 1");
        assert_eq!(lease_grant(7, 0, 1), 0);
    }

    #[test]
    fn setting_credits_counts_what_gateways_hold() {
        let held = state(10, 30);
        let CreditsOutcome::Write { state, set } =
            credits_after(Some(&held), CreditsChange::Set(100), RefillChange::Keep, 0)
        else {
            panic!("not written");
        };
        assert!(set);
        assert_eq!((state.remaining, state.leased), (70, 30));
        let CreditsOutcome::Write { state, .. } =
            credits_after(Some(&held), CreditsChange::Set(20), RefillChange::Keep, 0)
        else {
            panic!("not written");
        };
        assert_eq!(state.remaining, 0, "never below zero");
        assert_eq!(
            credits_after(None, CreditsChange::Keep, RefillChange::Clear, 0),
            CreditsOutcome::Unchanged(None)
        );
        assert_eq!(
            credits_after(Some(&held), CreditsChange::Clear, RefillChange::Keep, 0),
            CreditsOutcome::Cleared
        );
    }

    #[test]
    fn a_late_refill_moves_past_now_once() {
        let refill = RefillSpec {
            amount: 50,
            interval_ms: 1_000,
        };
        assert_eq!(next_refill_after(5_000, 4_000, refill), 5_000);
        assert_eq!(next_refill_after(5_000, 5_000, refill), 6_000);
        assert_eq!(next_refill_after(5_000, 8_500, refill), 9_000);
        let after = refilled(
            &CreditState {
                next_refill_unix_ms: Some(5_000),
                ..state(3, 20)
            },
            refill,
            8_500,
        );
        assert_eq!(
            (after.remaining, after.leased, after.next_refill_unix_ms),
            (30, 20, Some(9_000))
        );
    }
}
