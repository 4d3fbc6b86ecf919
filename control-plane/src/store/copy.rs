//! Copying a whole store into another, SQLite to PostgreSQL and back (`keygate store copy`).
//!
//! [`CopyStore::export`] reads every durable table in one consistent read into a [`Dump`]:
//! rows in domain types that say nothing about either backend (the domain records where they
//! carry every column of their table, the row types below where they do not).
//! [`CopyStore::import`] writes a dump into a freshly initialised store in one transaction,
//! taking over the source's log identity (log id, head, oldest retained), so that gateways
//! resume against the copy without a snapshot: same log id, same revisions.
//!
//! What is not copied: WebAuthn ceremonies in progress (`ceremonies`: five minutes of state)
//! and the gateway registry (`replicas`, `gateways`), which the control planes serving the
//! copy rebuild as gateways connect; rate-limit use shared among replicas (`rate_usage`: the
//! current windows' counts, rebuilt as gateways report); outstanding credit leases (`credit_leases`): a balance is
//! copied as it stands, without what gateways hold, so credits leased at the time of the copy
//! count as spent in the copy (never overspent: the copy cannot take back a lease it does not
//! know, and gateways lease again from the copy); and each backend's own migration
//! bookkeeping.
//!
//! A dump is held in memory whole: about 1.5 KB per key with its event and audit row (measured
//! with short owners and names and one metadata entry), so about 1.5 GB per million keys; less
//! once old events are compacted away.

use std::fmt;

use async_trait::async_trait;
use keygate_proto::{Holder, PasskeyRevocation, Revision};

use super::{
    AuditEntry, CreditState, EnrollmentRecord, IdentityRecord, KeyRecord, LogBounds,
    OperatorTokenRecord, PasskeyRecord, SessionRecord, SigningKeyRecord, StoreError, UserRecord,
};

/// Every table the copy moves, with its columns. Each backend's tests check that its schema has
/// exactly these tables and columns besides [`TRANSIENT_TABLES`] (and its migration
/// bookkeeping), so that a table or column added later cannot be left behind silently.
pub const COPIED_TABLES: &[(&str, &[&str])] = &[
    (
        "keys",
        &[
            "key_id",
            "key_hash",
            "owner",
            "name",
            "start",
            "enabled",
            "created_ms",
            "expires_ms",
            "meta_json",
            "revision",
            "limits_json",
            "identity_id",
        ],
    ),
    (
        "identities",
        &["identity_id", "ratelimits_json", "created_ms", "revision"],
    ),
    (
        "credits",
        &[
            "holder",
            "remaining",
            "refill_amount",
            "refill_interval_ms",
            "next_refill_ms",
        ],
    ),
    (
        "events",
        &["revision", "committed_ms", "kind", "payload_json"],
    ),
    (
        "audit",
        &[
            "id",
            "at_ms",
            "actor",
            "action",
            "target",
            "revision",
            "detail_json",
        ],
    ),
    ("log_state", &["id", "head", "oldest_retained", "log_id"]),
    (
        "users",
        &[
            "user_id",
            "handle",
            "created_ms",
            "disabled",
            "sessions_revoked_before_ms",
            "state_prune_after_ms",
        ],
    ),
    (
        "passkeys",
        &[
            "passkey_id",
            "user_id",
            "credential_id",
            "name",
            "created_ms",
            "last_used_ms",
            "user_agent",
            "backup_eligible",
            "backed_up",
            "credential_json",
            "aaguid",
        ],
    ),
    (
        "enrollments",
        &[
            "token_hash",
            "enrollment_id",
            "user_id",
            "created_ms",
            "expires_ms",
            "used_ms",
            "voided_ms",
            "voided_reason",
            "created_by",
        ],
    ),
    (
        "sessions",
        &[
            "session_id",
            "user_id",
            "passkey_id",
            "issued_ms",
            "expires_ms",
            "revoked_ms",
        ],
    ),
    (
        "revoked_passkeys",
        &["passkey_id", "user_id", "revoked_ms", "prune_after_ms"],
    ),
    (
        "signing_keys",
        &[
            "key_id",
            "secret",
            "public_key",
            "created_ms",
            "verify_until_ms",
            "revoked_ms",
            "max_session_lifetime_ms",
        ],
    ),
    (
        "operator_tokens",
        &[
            "name",
            "token_hash",
            "scopes",
            "gateway_id",
            "created_ms",
            "created_by",
        ],
    ),
];

/// Tables a copy leaves behind: ceremonies in progress, the gateway registry, shared rate-limit
/// use and outstanding credit leases (which count as spent in the copy).
pub const TRANSIENT_TABLES: &[&str] = &[
    "ceremonies",
    "replicas",
    "gateways",
    "rate_usage",
    "credit_leases",
];

/// Everything a store keeps for good, as rows, each table ordered by its primary key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dump {
    /// The log's identity and bounds (`log_state`).
    pub log: LogBounds,
    /// Without their balances (`credits: None`): those are in [`Dump::credits`].
    pub keys: Vec<KeyRecord>,
    /// Without their balances, as the keys.
    pub identities: Vec<IdentityRecord>,
    /// Every holder's balance as it stands, `leased` 0: outstanding leases are not copied.
    pub credits: Vec<CreditRow>,
    pub users: Vec<UserRecord>,
    pub passkeys: Vec<PasskeyRecord>,
    pub enrollments: Vec<EnrollmentRow>,
    pub sessions: Vec<SessionRecord>,
    pub revoked_passkeys: Vec<PasskeyRevocation>,
    /// With their secrets: the copy signs and verifies the same session tokens.
    pub signing_keys: Vec<SigningKeyRecord>,
    /// The events the log still retains, from `log.oldest_retained` to `log.head`.
    pub events: Vec<EventRow>,
    pub audit: Vec<AuditEntry>,
    /// Named tokens, by hash, so every operator and gateway token keeps working on the copy.
    pub operator_tokens: Vec<OperatorTokenRecord>,
}

/// An enrollment link as stored: the hash of its token and the record. `Debug` leaves the hash
/// out, as [`NewEnrollment`](super::NewEnrollment)'s does.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollmentRow {
    pub token_hash: [u8; 32],
    pub record: EnrollmentRecord,
}

impl fmt::Debug for EnrollmentRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollmentRow")
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

/// One holder's credit balance as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditRow {
    pub holder: Holder,
    pub state: CreditState,
}

/// One event as the log stores it: in the store's own encoding (`event_codec`), copied as it
/// is rather than decoded and encoded again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub revision: Revision,
    pub committed_unix_ms: i64,
    pub kind: String,
    pub payload_json: String,
}

/// How many rows of each table a dump holds, and the log identity: what `keygate store copy`
/// compares between the source and the copy, and prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpSummary {
    pub log: LogBounds,
    pub keys: usize,
    pub identities: usize,
    pub credits: usize,
    pub users: usize,
    pub passkeys: usize,
    pub enrollments: usize,
    pub sessions: usize,
    pub revoked_passkeys: usize,
    pub signing_keys: usize,
    pub events: usize,
    pub audit: usize,
    pub operator_tokens: usize,
}

impl Dump {
    /// Checks that the events are exactly those from the oldest retained revision to the head,
    /// in order: what gateways resuming by revision against the copy rely on. A dump that is
    /// not so is refused rather than written with a gap.
    pub fn check_log(&self) -> Result<(), StoreError> {
        let LogBounds {
            head,
            oldest_retained,
            ..
        } = self.log;
        let contiguous = self
            .events
            .iter()
            .zip(oldest_retained.0..)
            .all(|(event, expected)| event.revision.0 == expected);
        let expected_len = head.0.saturating_add(1).saturating_sub(oldest_retained.0);
        if contiguous && u64::try_from(self.events.len()).ok() == Some(expected_len) {
            return Ok(());
        }
        Err(StoreError::Corrupt(format!(
            "the event log holds {} events, not one for each revision from {oldest_retained} \
             (oldest retained) to {head} (head)",
            self.events.len()
        )))
    }

    /// The row counts and the log identity.
    pub fn summary(&self) -> DumpSummary {
        DumpSummary {
            log: self.log.clone(),
            keys: self.keys.len(),
            identities: self.identities.len(),
            credits: self.credits.len(),
            users: self.users.len(),
            passkeys: self.passkeys.len(),
            enrollments: self.enrollments.len(),
            sessions: self.sessions.len(),
            revoked_passkeys: self.revoked_passkeys.len(),
            signing_keys: self.signing_keys.len(),
            events: self.events.len(),
            audit: self.audit.len(),
            operator_tokens: self.operator_tokens.len(),
        }
    }
}

/// How many tables [`COUNT_ROWS`] counts.
pub(crate) const COUNTED_TABLES: usize = 12;

/// One query, plain SQL that both backends run, counting the rows of every copied table in
/// [`DumpSummary::from_counts`]'s order.
pub(crate) const COUNT_ROWS: &str = "SELECT
    (SELECT COUNT(*) FROM keys), (SELECT COUNT(*) FROM users), (SELECT COUNT(*) FROM passkeys),
    (SELECT COUNT(*) FROM enrollments), (SELECT COUNT(*) FROM sessions),
    (SELECT COUNT(*) FROM revoked_passkeys), (SELECT COUNT(*) FROM signing_keys),
    (SELECT COUNT(*) FROM events), (SELECT COUNT(*) FROM audit),
    (SELECT COUNT(*) FROM operator_tokens), (SELECT COUNT(*) FROM identities),
    (SELECT COUNT(*) FROM credits)";

impl DumpSummary {
    /// The summary of a store with the log `log` and the row counts [`COUNT_ROWS`] returned.
    pub(crate) fn from_counts(log: LogBounds, counts: [i64; COUNTED_TABLES]) -> Self {
        let [
            keys,
            users,
            passkeys,
            enrollments,
            sessions,
            revoked_passkeys,
            signing_keys,
            events,
            audit,
            operator_tokens,
            identities,
            credits,
        ] = counts.map(|count| usize::try_from(count).unwrap_or(0));
        Self {
            log,
            keys,
            identities,
            credits,
            users,
            passkeys,
            enrollments,
            sessions,
            revoked_passkeys,
            signing_keys,
            events,
            audit,
            operator_tokens,
        }
    }

    /// Whether a store with these contents is freshly initialised: nothing in any copied table
    /// and nothing ever committed. The only stores an import writes into.
    pub fn is_fresh(&self) -> bool {
        self.log.head == Revision::ZERO
            && [
                self.keys,
                self.users,
                self.passkeys,
                self.enrollments,
                self.sessions,
                self.revoked_passkeys,
                self.signing_keys,
                self.events,
                self.audit,
                self.operator_tokens,
                self.identities,
                self.credits,
            ]
            .iter()
            .all(|&rows| rows == 0)
    }
}

impl fmt::Display for DumpSummary {
    /// "keys: 12, users: 3, …, head revision: 40": the non-empty tables and the head, for
    /// messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (rows, what) in [
            (self.keys, "keys"),
            (self.users, "users"),
            (self.passkeys, "passkeys"),
            (self.enrollments, "enrollment links"),
            (self.sessions, "sessions"),
            (self.revoked_passkeys, "passkey revocations"),
            (self.signing_keys, "signing keys"),
            (self.events, "events"),
            (self.audit, "audit rows"),
            (self.operator_tokens, "operator tokens"),
            (self.identities, "identities"),
            (self.credits, "credit balances"),
        ] {
            if rows > 0 {
                write!(f, "{what}: {rows}, ")?;
            }
        }
        write!(f, "head revision: {}", self.log.head)
    }
}

/// Exporting a whole store and importing it into another.
#[async_trait]
pub trait CopyStore: Send + Sync {
    /// Every copied table, read in one transaction (SQLite: one read transaction; PostgreSQL:
    /// REPEATABLE READ), so the dump is the state at exactly one revision whatever commits
    /// meanwhile.
    async fn export(&self) -> Result<Dump, StoreError>;

    /// Writes `dump` into this store in one transaction and takes over its log identity (log
    /// id, head, oldest retained). Refused with [`StoreError::NotEmpty`], changing nothing,
    /// unless this store is freshly initialised. Announces nothing to the store's observer:
    /// the events were announced when the source committed them.
    async fn import(&self, dump: Dump) -> Result<(), StoreError>;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use keygate_proto::time::now_unix_ms;
    use keygate_proto::{KeyHash, Meta};
    use keygate_test_postgres::TestPostgres;

    use super::*;
    use crate::keys::{CreateKey, Keys};
    use crate::store::postgres::PgStore;
    use crate::store::sqlite::SqliteStore;
    use crate::store::suite::Recorder;
    use crate::store::{
        CreditsChange, EnrollmentCreated, LimitsUpdate, LoggedIn, Login, NewEnrollment,
        NewIdentity, NewLease, NewPasskey, NewSession, NewToken, PasskeyRemoval, PasskeyRemoved,
        RefillChange, Registered, RegisteredVia, Registration, SigningKeyRevoked, Store,
        TokenCreated,
    };

    const HOUR_MS: i64 = 3600 * 1000;

    async fn sqlite(dir: &tempfile::TempDir, name: &str) -> (Arc<dyn Store>, Arc<Recorder>) {
        let recorder = Arc::new(Recorder::default());
        let store = SqliteStore::open(&dir.path().join(name), recorder.clone())
            .await
            .unwrap();
        (Arc::new(store), recorder)
    }

    async fn postgres(server: &TestPostgres, name: &str) -> (Arc<dyn Store>, Arc<Recorder>) {
        let url = server.create_database(name).unwrap();
        let recorder = Arc::new(Recorder::default());
        let store = PgStore::open(&url, recorder.clone()).await.unwrap();
        (Arc::new(store), recorder)
    }

    fn signing_key(id: &str, byte: u8) -> SigningKeyRecord {
        SigningKeyRecord {
            key_id: id.into(),
            secret: [byte; 32],
            public_key: [byte.wrapping_add(100); 32],
            created_unix_ms: now_unix_ms(),
            verify_until_unix_ms: None,
            revoked_unix_ms: None,
            // The first as made before the column; the others sign `byte` hours.
            max_session_lifetime_ms: (byte > 1).then_some(i64::from(byte) * HOUR_MS),
        }
    }

    fn new_passkey(id: &str, credential: u8) -> NewPasskey {
        NewPasskey {
            passkey_id: id.into(),
            user_id: "alice".into(),
            credential_id: vec![credential; 16],
            name: format!("device {credential}"),
            user_agent: "test".into(),
            backup_eligible: true,
            backed_up: false,
            credential_json: format!("{{\"credential\":{credential}}}"),
            aaguid: [credential; 16],
        }
    }

    fn new_session(id: &str) -> NewSession {
        NewSession {
            session_id: id.into(),
            lifetime_ms: 24 * HOUR_MS,
            user_agent: "test".into(),
        }
    }

    async fn enroll(store: &dyn Store, user_id: &str, token: u8) -> [u8; 32] {
        let created = store
            .create_enrollment(
                NewEnrollment {
                    enrollment_id: format!("enr_{token}"),
                    token_hash: [token; 32],
                    user_id: user_id.into(),
                    expires_unix_ms: now_unix_ms() + HOUR_MS,
                },
                "admin",
            )
            .await
            .unwrap();
        assert!(
            matches!(created, EnrollmentCreated::Created(_)),
            "{created:?}"
        );
        [token; 32]
    }

    /// Registers a passkey of alice's, which must succeed.
    async fn register(store: &dyn Store, registration: Registration) {
        let registered = store
            .register_passkey(registration, "user:alice")
            .await
            .unwrap();
        assert!(
            matches!(registered, Registered::Done { .. }),
            "{registered:?}"
        );
    }

    /// Fills `store`, through its ordinary operations, with every kind of row: keys (one
    /// deleted, one rerolled, one disabled), two signing keys after a rotation (the retired one
    /// revoked), users (one
    /// disabled), passkeys (one removed: a revocation), a used, a revoked and a voided
    /// enrollment link,
    /// sessions (one revoked), audit rows, an identity with credits and a refill, a key with
    /// limits and credits, and a compacted log (oldest retained > 1). Returns the hashes of
    /// every key ever made, the deleted ones too.
    async fn populate(store: &Arc<dyn Store>) -> Vec<KeyHash> {
        let keys = Keys::new(Arc::clone(store));
        let create = |owner: &str, disabled| CreateKey {
            owner: owner.into(),
            name: format!("{owner}'s key"),
            meta: Meta::from([
                ("plan".to_owned(), "pro".to_owned()),
                ("team".to_owned(), owner.to_owned()),
            ]),
            expires_unix_ms: Some(now_unix_ms() + 30 * 24 * HOUR_MS),
            disabled,
            ..CreateKey::default()
        };
        let mut hashes = Vec::new();
        let rerolled = keys.create(create("alice", false), "admin").await.unwrap();
        let deleted = keys.create(create("bob", false), "admin").await.unwrap();
        let disabled = keys.create(create("carol", true), "admin").await.unwrap();
        let renewed = keys
            .reroll(&rerolled.record.id.to_string(), 3_600_000, "admin")
            .await
            .unwrap();
        keys.delete(&deleted.record.id.to_string(), "admin")
            .await
            .unwrap();
        hashes.extend([rerolled, deleted, disabled, renewed].map(|key| key.record.hash));
        store
            .ensure_signing_key(signing_key("sk_1", 1), "system")
            .await
            .unwrap();
        store
            .rotate_signing_key(signing_key("sk_2", 2), now_unix_ms() + HOUR_MS, "admin")
            .await
            .unwrap();
        // The retired key revoked: its `revoked_ms` must travel too.
        let revoked = store
            .revoke_signing_key("sk_1", signing_key("sk_3", 3), HOUR_MS, "admin")
            .await
            .unwrap();
        assert!(matches!(revoked, SigningKeyRevoked::Revoked { .. }));
        // Everything so far leaves the log; what follows stays in it.
        let bounds = store.compact(now_unix_ms() + 1).await.unwrap();
        assert!(bounds.oldest_retained > Revision(1), "{bounds:?}");

        for (user, handle) in [("alice", 1), ("bob", 2), ("carol", 3)] {
            store
                .create_user(user, [handle; 16], "admin")
                .await
                .unwrap();
        }
        let token_hash = enroll(&**store, "alice", 7).await;
        register(
            &**store,
            Registration {
                passkey: new_passkey("pk_a", 1),
                via: RegisteredVia::Enrollment { token_hash },
                session: Some(new_session("ses_1")),
            },
        )
        .await;
        register(
            &**store,
            Registration {
                passkey: new_passkey("pk_b", 2),
                via: RegisteredVia::Session {
                    session_id: "ses_1".into(),
                },
                session: None,
            },
        )
        .await;
        let login = store
            .record_login(
                Login {
                    passkey_id: "pk_a".into(),
                    updated_credential: None,
                    session: new_session("ses_2"),
                },
                "user:alice",
            )
            .await
            .unwrap();
        assert!(matches!(login, LoggedIn::Done(_)), "{login:?}");
        store.revoke_session("ses_1", "user:alice").await.unwrap();
        let removed = store
            .remove_passkey(
                PasskeyRemoval {
                    user_id: "alice".into(),
                    passkey_id: "pk_b".into(),
                    prune_after_unix_ms: now_unix_ms() + 24 * HOUR_MS,
                    keep_last: true,
                    action: "passkey.remove",
                },
                "user:alice",
            )
            .await
            .unwrap();
        assert!(
            matches!(removed, PasskeyRemoved::Removed { .. }),
            "{removed:?}"
        );
        enroll(&**store, "carol", 8).await;
        let revoked = store.revoke_enrollment("enr_8", "admin").await.unwrap();
        assert!(revoked.is_some_and(|revoked| revoked.changed));
        // Bob's open link is voided when he is disabled.
        enroll(&**store, "bob", 9).await;
        store
            .set_user_enabled("bob", false, 24 * HOUR_MS, "admin")
            .await
            .unwrap();
        for (name, scopes, gateway_id, hash) in [
            ("ci", vec!["keys:create".to_owned()], None, 1),
            ("edge-1", Vec::new(), Some("edge-1".to_owned()), 2),
        ] {
            let token = NewToken {
                name: name.into(),
                token_hash: [hash; 32],
                scopes,
                gateway_id,
            };
            let created = store.create_token(token, "admin").await.unwrap();
            assert!(matches!(created, TokenCreated::Created(_)), "{created:?}");
        }
        store.create_identity(acme(100), "admin").await.unwrap();
        let late = keys.create(create("dave", false), "admin").await.unwrap();
        store
            .update_key_limits(
                late.record.id,
                LimitsUpdate {
                    ratelimits: Some(vec!["requests=10/1s".parse().unwrap()]),
                    credits: CreditsChange::Set(50),
                    refill: RefillChange::Set("50/1d".parse().unwrap()),
                    permissions: Some(vec!["orders.read".into()]),
                    identity: Some(Some("acme".into())),
                },
                now_unix_ms(),
                "admin",
            )
            .await
            .unwrap();
        hashes.push(late.record.hash);
        hashes
    }

    /// Identity "acme" with rate limits, `credits` and a daily refill.
    fn acme(credits: u64) -> NewIdentity {
        NewIdentity {
            id: "acme".into(),
            ratelimits: vec!["requests=100/1m".parse().unwrap()],
            credits: Some(credits),
            refill: Some("1000/1d".parse().unwrap()),
            created_unix_ms: now_unix_ms(),
        }
    }

    /// `copy` answers every read a gateway or the control plane makes exactly as `original`.
    async fn assert_answers_alike(original: &dyn Store, copy: &dyn Store, hashes: &[KeyHash]) {
        assert_eq!(
            copy.log_bounds().await.unwrap(),
            original.log_bounds().await.unwrap()
        );
        let unknown = KeyHash([0xee; 32]);
        for hash in hashes.iter().chain([&unknown]) {
            assert_eq!(
                copy.key_by_hash(*hash).await.unwrap(),
                original.key_by_hash(*hash).await.unwrap()
            );
        }
        let oldest = original.log_bounds().await.unwrap().oldest_retained;
        for after in [Revision::ZERO, Revision(oldest.0 - 1), oldest] {
            assert_eq!(
                copy.events_after(after, 1_000).await.unwrap(),
                original.events_after(after, 1_000).await.unwrap()
            );
        }
        assert_eq!(
            copy.snapshot().await.unwrap(),
            original.snapshot().await.unwrap()
        );
        assert_eq!(
            copy.list_audit(1_000).await.unwrap(),
            original.list_audit(1_000).await.unwrap()
        );
        assert_eq!(
            copy.current_signing_key().await.unwrap(),
            original.current_signing_key().await.unwrap()
        );
        assert_eq!(
            copy.session_context("ses_2").await.unwrap(),
            original.session_context("ses_2").await.unwrap()
        );
        for user in ["alice", "bob", "carol"] {
            assert_eq!(
                copy.list_enrollments(user).await.unwrap(),
                original.list_enrollments(user).await.unwrap()
            );
        }
        assert_eq!(
            copy.list_tokens().await.unwrap(),
            original.list_tokens().await.unwrap()
        );
        let edge = copy.token_by_hash([2; 32]).await.unwrap().unwrap();
        assert_eq!(edge.gateway_id.as_deref(), Some("edge-1"));
        assert_eq!(
            copy.list_identities(None, 100).await.unwrap(),
            original.list_identities(None, 100).await.unwrap()
        );
    }

    /// Identities and balances are copied; credits leased at the time count as spent in the
    /// copy: its balance is what the source had left, and the source's lease means nothing
    /// there.
    #[tokio::test]
    async fn balances_are_copied_without_the_credits_gateways_hold() {
        let dir = tempfile::tempdir().unwrap();
        let server = TestPostgres::start().unwrap();
        let (original, _) = sqlite(&dir, "original.db").await;
        let identity = original.create_identity(acme(100), "admin").await.unwrap();
        let holder = identity.holder();
        let lease = NewLease {
            lease_id: "lease_1".into(),
            holder: holder.clone(),
            gateway_id: "gw-1".into(),
            wanted: 30,
            share_divisor: 1,
            expires_unix_ms: now_unix_ms() + 10_000,
        };
        original.lease_credits(lease).await.unwrap();
        let dump = original.export().await.unwrap();
        assert_eq!(dump.identities.len(), 1);
        assert_eq!(dump.credits.len(), 1);
        assert_eq!(
            (
                dump.credits[0].state.remaining,
                dump.credits[0].state.leased
            ),
            (70, 0)
        );

        let (copy, _) = postgres(&server, "copy").await;
        copy.import(dump.clone()).await.unwrap();
        assert_eq!(copy.export().await.unwrap(), dump);
        let copied = copy.credits(&holder).await.unwrap().unwrap();
        assert_eq!((copied.remaining, copied.leased), (70, 0));
        assert_eq!(copied.refill, identity.credits.as_ref().unwrap().refill);
        assert_eq!(
            copy.snapshot().await.unwrap().identities,
            original.snapshot().await.unwrap().identities
        );
        assert!(!copy.return_lease("lease_1", 30).await.unwrap());
        assert_eq!(copy.credits(&holder).await.unwrap(), Some(copied));
        // The source still knows its lease.
        assert!(original.return_lease("lease_1", 30).await.unwrap());
    }

    /// SQLite → PostgreSQL → SQLite: every row and the log identity arrive as they left, the
    /// copies answer exactly as the original, and they carry on from there (the next revision,
    /// the next audit id) without announcing the copied history again.
    #[tokio::test]
    async fn a_store_copied_to_postgres_and_back_is_the_same_store() {
        let dir = tempfile::tempdir().unwrap();
        let server = TestPostgres::start().unwrap();
        let (original, _) = sqlite(&dir, "original.db").await;
        let hashes = populate(&original).await;
        let dump = original.export().await.unwrap();
        let summary = dump.summary();
        assert_eq!(
            (
                summary.keys,
                summary.users,
                summary.passkeys,
                summary.enrollments
            ),
            (4, 3, 1, 3)
        );
        assert_eq!(
            (
                summary.sessions,
                summary.revoked_passkeys,
                summary.signing_keys,
                summary.operator_tokens
            ),
            (2, 1, 2, 2)
        );
        assert_eq!((summary.identities, summary.credits), (1, 2));
        assert!(
            summary.events > 0 && summary.audit > summary.events,
            "{summary:?}"
        );
        assert!(dump.log.oldest_retained > Revision(1));

        let (in_postgres, postgres_seen) = postgres(&server, "copy").await;
        let fresh_log_id = in_postgres.log_bounds().await.unwrap().log_id;
        assert_ne!(fresh_log_id, dump.log.log_id);
        in_postgres.import(dump.clone()).await.unwrap();
        assert_eq!(in_postgres.export().await.unwrap(), dump);
        assert_answers_alike(&*original, &*in_postgres, &hashes).await;

        let (back, _) = sqlite(&dir, "back.db").await;
        back.import(in_postgres.export().await.unwrap())
            .await
            .unwrap();
        assert_eq!(back.export().await.unwrap(), dump);
        assert_answers_alike(&*original, &*back, &hashes).await;

        // Both copies go on where the original stopped, and announce only what is new.
        let last_audit_id = dump.audit.last().unwrap().id;
        for (copy, name) in [(&in_postgres, "postgres"), (&back, "sqlite")] {
            let keys = Keys::new(Arc::clone(copy));
            let next = keys
                .create(
                    CreateKey {
                        owner: "erin".into(),
                        ..CreateKey::default()
                    },
                    "admin",
                )
                .await
                .unwrap();
            assert_eq!(next.revision, dump.log.head.next(), "{name}");
            let audit = copy.list_audit(1).await.unwrap();
            assert_eq!(audit[0].id, last_audit_id + 1, "{name}");
        }
        let announced: Vec<Revision> = postgres_seen
            .events()
            .iter()
            .map(|event| event.revision)
            .collect();
        assert_eq!(announced, [dump.log.head.next()]);
    }

    /// An import into a store that has anything in it is refused, and changes nothing.
    #[tokio::test]
    async fn an_import_into_a_store_in_use_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let server = TestPostgres::start().unwrap();
        let (source, _) = sqlite(&dir, "source.db").await;
        populate(&source).await;
        let dump = source.export().await.unwrap();

        let (sqlite_target, _) = sqlite(&dir, "target.db").await;
        let (postgres_target, _) = postgres(&server, "target").await;
        for target in [sqlite_target, postgres_target] {
            target.create_user("zoe", [9; 16], "admin").await.unwrap();
            let before = target.export().await.unwrap();
            let error = target.import(dump.clone()).await.unwrap_err();
            assert!(matches!(error, StoreError::NotEmpty { .. }), "{error}");
            let message = error.to_string();
            assert!(
                message.contains("(users: 1, audit rows: 1, head revision: 0)"),
                "{message}"
            );
            assert!(message.contains("freshly initialised"), "{message}");
            assert_eq!(target.export().await.unwrap(), before);
        }
    }

    #[test]
    fn a_dump_with_a_gap_in_its_events_is_refused() {
        let event = |revision| EventRow {
            revision: Revision(revision),
            committed_unix_ms: 0,
            kind: "key_deleted".into(),
            payload_json: "{}".into(),
        };
        let dump = |oldest, head, events: &[u64]| Dump {
            log: LogBounds {
                log_id: keygate_proto::LogId("log_x".into()),
                oldest_retained: Revision(oldest),
                head: Revision(head),
            },
            keys: Vec::new(),
            identities: Vec::new(),
            credits: Vec::new(),
            users: Vec::new(),
            passkeys: Vec::new(),
            enrollments: Vec::new(),
            sessions: Vec::new(),
            revoked_passkeys: Vec::new(),
            signing_keys: Vec::new(),
            events: events.iter().copied().map(event).collect(),
            audit: Vec::new(),
            operator_tokens: Vec::new(),
        };
        assert!(dump(1, 0, &[]).check_log().is_ok(), "fresh");
        assert!(dump(1, 3, &[1, 2, 3]).check_log().is_ok());
        assert!(dump(4, 3, &[]).check_log().is_ok(), "all compacted");
        assert!(dump(2, 4, &[2, 3, 4]).check_log().is_ok());
        for (oldest, head, events) in [
            (1, 3, &[1, 3][..]),
            (1, 3, &[1, 2][..]),
            (2, 3, &[1, 2, 3][..]),
            (1, 0, &[1][..]),
        ] {
            let error = dump(oldest, head, events).check_log().unwrap_err();
            assert!(matches!(error, StoreError::Corrupt(_)), "{error}");
        }
    }
}
