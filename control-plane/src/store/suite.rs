//! One test suite for every store backend, so SQLite and PostgreSQL keep exactly the same
//! behaviour. Each test is a function over a [`SuiteBackend`] (a way to open one database,
//! empty at first, and to open it again), and [`store_suite!`] expands to one `#[tokio::test]`
//! per function. `sqlite.rs` invokes it with a backend in a temporary directory; a PostgreSQL
//! backend invokes the same macro with its own.
//!
//! The tests go through the traits only (and `crate::keys::Keys`, the rules over them), never
//! through a backend's own functions: what a backend alone can show (a migration from an old
//! schema, SQLite's file lock) is tested next to it.

#![allow(clippy::unwrap_used)]

mod limits;

pub(crate) use limits::*;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use keygate_proto::time::now_unix_ms;
use keygate_proto::{Change, Event, KeyHash, KeyId, Meta, Revision};

use super::{CeremonyLimits, CeremonyPut};
use super::{
    CeremonyTaken, CommitObserver, EnrollmentCreated, GatewayRecord, KeyQuery, LoggedIn, Login,
    NewCeremony, NewEnrollment, NewKey, NewPasskey, NewSession, PasskeyRecord, PasskeyRemoval,
    PasskeyRemoved, PasskeyRename, PasskeyRenamed, PublishedGateway, Registered, RegisteredVia,
    Registration, SigningKeyRecord, SigningKeyRevoked, Store, StoreError, UpdatedCredential,
    UserCreated,
};
use super::{EnrollmentRecord, EnrollmentState, VoidReason};
use super::{NewToken, TokenCreated};
use crate::keys::{CreateKey, KeyError, Keys, ListKeys};

/// A backend under test: one database, empty before its first [`SuiteBackend::open`].
#[async_trait]
pub(crate) trait SuiteBackend: Send + Sync {
    /// Opens the backend's database, announcing commits to `observer`. The first call finds it
    /// empty. A later call opens the same database again, with everything committed before;
    /// the tests drop every handle on the previous store first (SQLite refuses a second open
    /// while one is alive).
    async fn open(&self, observer: Arc<dyn CommitObserver>) -> Arc<dyn Store>;
}

/// Expands to one `#[tokio::test]` per suite test, each over a fresh backend made by the
/// expression, which is evaluated inside the test's async body (so it may `.await`):
///
/// ```text
/// #[cfg(test)]
/// mod tests {
///     struct Postgres { url: String }
///
///     #[async_trait::async_trait]
///     impl crate::store::suite::SuiteBackend for Postgres {
///         async fn open(&self, observer: Arc<dyn CommitObserver>) -> Arc<dyn Store> { … }
///     }
///
///     crate::store::suite::store_suite!(Postgres::fresh_database().await);
/// }
/// ```
macro_rules! store_suite {
    ($backend:expr) => {
        $crate::store::suite::store_suite!(@each $backend;
            compaction_drops_old_events_but_never_the_head_or_the_keys,
            revisions_are_contiguous_across_every_operation,
            every_operation_writes_one_audit_row_with_its_revision,
            a_failed_write_leaves_no_event_and_no_audit_row,
            reroll_issues_a_sibling_and_shortens_the_old_expiry,
            keys_page_in_id_order_with_an_opaque_cursor,
            snapshots_are_consistent_at_their_revision_while_writes_go_on,
            lookups_by_hash_and_reopening_keep_state,
            create_validates_its_input,
            the_log_has_an_id_that_never_changes,
            events_of_every_kind_read_back_as_they_were_announced,
            an_enrollment_link_registers_exactly_one_passkey_and_signs_in,
            an_enrollment_finished_after_its_expiry_is_refused_and_changes_nothing,
            enrollments_for_unknown_or_disabled_users_are_refused,
            enrollment_links_are_listed_newest_first_and_revoked_only_while_open,
            disabling_a_user_voids_only_their_open_links_and_enabling_revives_none,
            revocations_are_events_and_in_the_snapshot_until_pruned,
            a_login_updates_the_passkey_and_is_refused_for_a_disabled_user,
            a_passkey_keeps_its_aaguid_and_is_renamed_by_its_user_only,
            passkeys_of_every_user_page_in_id_order,
            signing_keys_are_created_once_and_rotated_with_two_events,
            a_revoked_signing_key_is_announced_replaced_and_kept_until_its_tokens_expire,
            each_signing_key_keeps_its_lifetime_and_a_new_lifetime_rotates_once,
            a_ceremony_is_taken_exactly_once,
            an_expired_ceremony_is_expired_once_then_unknown,
            ceremonies_are_capped_and_expired_ones_make_room,
            ceremonies_are_capped_per_client,
            gateways_are_published_listed_and_forgotten,
            operator_tokens_are_found_by_hash_listed_and_revoked_with_audit_rows,
            keys_keep_their_limits_credits_and_identity,
            key_limits_change_field_by_field_with_their_events,
            identities_are_created_changed_listed_and_deleted,
            leases_never_exceed_the_balance_and_come_back_once,
            concurrent_leases_never_sum_above_the_balance,
            refills_set_the_balance_to_the_amount_less_what_is_leased,
            expired_leases_are_written_off_and_never_come_back,
            a_reroll_moves_the_balance_and_keeps_the_limits,
            rate_usage_keeps_the_latest_count_and_is_read_by_the_other_replicas,
        );
    };
    (@each $backend:expr; $($test:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $test() {
                let backend = $backend;
                $crate::store::suite::$test(&backend).await;
            }
        )+
    };
}
pub(crate) use store_suite;

/// Records what a store announces, to compare with what it stored.
#[derive(Default)]
pub(crate) struct Recorder(Mutex<Vec<Event>>);

impl Recorder {
    /// Every event announced so far, in order.
    pub(crate) fn events(&self) -> Vec<Event> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl CommitObserver for Recorder {
    fn committed(&self, events: &[Event]) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(events);
    }
}

/// A store opened for one test, what it announced, and the key rules over it.
struct Opened {
    store: Arc<dyn Store>,
    recorder: Arc<Recorder>,
    keys: Keys,
}

async fn open(backend: &dyn SuiteBackend) -> Opened {
    let recorder = Arc::new(Recorder::default());
    let store = backend.open(recorder.clone()).await;
    let keys = Keys::new(Arc::clone(&store));
    Opened {
        store,
        recorder,
        keys,
    }
}

const DAY_MS: i64 = 24 * 3600 * 1000;

/// A key for `owner` named "ci", with one metadata entry.
pub(crate) fn create(owner: &str) -> CreateKey {
    CreateKey {
        owner: owner.into(),
        name: "ci".into(),
        meta: Meta::from([("plan".to_owned(), "pro".to_owned())]),
        ..CreateKey::default()
    }
}

async fn all_events(store: &dyn Store) -> Vec<Event> {
    store.events_after(Revision::ZERO, 10_000).await.unwrap()
}

/// Enables or disables the key `id` as an admin; the revision the change answers.
async fn set_enabled(keys: &Keys, id: &str, enabled: bool) -> Revision {
    keys.set_enabled(id, enabled, "admin")
        .await
        .unwrap()
        .revision
}

// Keys and the log.

pub(crate) async fn compaction_drops_old_events_but_never_the_head_or_the_keys(
    backend: &dyn SuiteBackend,
) {
    let f = open(backend).await;
    for _ in 0..3 {
        f.keys.create(create("alice"), "test").await.unwrap();
    }
    let unchanged = f.store.compact(0).await.unwrap();
    assert_eq!(unchanged.oldest_retained, Revision(1), "nothing that old");
    let bounds = f.store.compact(now_unix_ms() + 1).await.unwrap();
    assert_eq!(bounds.head, Revision(3));
    assert_eq!(bounds.oldest_retained, Revision(4));
    assert!(all_events(&*f.store).await.is_empty());
    // Compacting again, or with an older cutoff, never moves the bound back.
    assert_eq!(f.store.compact(0).await.unwrap(), bounds);

    f.keys.create(create("alice"), "test").await.unwrap();
    let events = all_events(&*f.store).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].revision, Revision(4));
    let snapshot = f.store.snapshot().await.unwrap();
    assert_eq!(snapshot.revision, Revision(4));
    assert_eq!(snapshot.keys.len(), 4);
}

pub(crate) async fn revisions_are_contiguous_across_every_operation(backend: &dyn SuiteBackend) {
    let f = open(backend).await;
    let a = f.keys.create(create("alice"), "admin").await.unwrap();
    let b = f.keys.create(create("bob"), "admin").await.unwrap();
    let c = f.keys.create(create("bob"), "admin").await.unwrap();
    assert_eq!(
        [a.revision, b.revision, c.revision],
        [Revision(1), Revision(2), Revision(3)]
    );

    let id = a.record.id.to_string();
    assert_eq!(set_enabled(&f.keys, &id, false).await, Revision(4));
    // Already disabled: the key's revision comes back and nothing is appended.
    assert_eq!(set_enabled(&f.keys, &id, false).await, Revision(4));
    assert_eq!(set_enabled(&f.keys, &id, true).await, Revision(5));
    let rerolled = f.keys.reroll(&id, 60_000, "admin").await.unwrap();
    assert_eq!(rerolled.revision, Revision(7));
    assert_eq!(rerolled.record.revision, Revision(6));
    assert_eq!(f.keys.delete(&id, "admin").await.unwrap(), Revision(8));
    let revoked = f.keys.revoke_owner("bob", "admin").await.unwrap();
    assert_eq!(revoked.revision, Revision(10));
    assert_eq!(revoked.deleted.len(), 2);
    // No keys left for bob: the head is reported unchanged.
    assert_eq!(
        f.keys.revoke_owner("bob", "admin").await.unwrap().revision,
        Revision(10)
    );

    let events = all_events(&*f.store).await;
    let revisions: Vec<u64> = events.iter().map(|e| e.revision.0).collect();
    assert_eq!(revisions, (1..=10).collect::<Vec<_>>());
    assert_eq!(
        f.recorder.events(),
        events,
        "observer saw exactly the stored events"
    );
    assert!(matches!(&events[7].change, Change::KeyDeleted { id, .. } if *id == a.record.id));
    let bounds = f.store.log_bounds().await.unwrap();
    assert_eq!(
        (bounds.oldest_retained, bounds.head),
        (Revision(1), Revision(10))
    );
}

pub(crate) async fn every_operation_writes_one_audit_row_with_its_revision(
    backend: &dyn SuiteBackend,
) {
    let f = open(backend).await;
    let key = f.keys.create(create("alice"), "admin:ops").await.unwrap();
    let id = key.record.id.to_string();
    f.keys.set_enabled(&id, false, "admin").await.unwrap();
    f.keys.set_enabled(&id, false, "admin").await.unwrap();
    f.keys.reroll(&id, 0, "admin").await.unwrap();
    f.keys.delete(&id, "admin").await.unwrap();
    f.keys.revoke_owner("alice", "admin").await.unwrap();

    let audit = f.keys.audit(0).await.unwrap();
    let summary: Vec<(&str, u64)> = audit
        .iter()
        .map(|e| (e.action.as_str(), e.revision.0))
        .collect();
    assert_eq!(
        summary,
        [
            // The reroll's sibling key is alice's last one: revoked at 6.
            ("owner.revoke", 6),
            ("key.delete", 5),
            // Two events: the new key (3), the old key's expiry (4).
            ("key.reroll", 4),
            ("key.disable", 0),
            ("key.disable", 2),
            ("key.create", 1),
        ]
    );
    assert_eq!(audit[5].actor, "admin:ops");
    assert_eq!(audit[5].target, id);
    for entry in &audit {
        let detail: serde_json::Value = serde_json::from_str(&entry.detail_json).unwrap();
        assert!(detail.is_object());
        assert!(
            !entry.detail_json.contains(&key.plaintext),
            "secret in the audit log"
        );
    }
    assert_eq!(f.keys.audit(2).await.unwrap().len(), 2);
}

pub(crate) async fn a_failed_write_leaves_no_event_and_no_audit_row(backend: &dyn SuiteBackend) {
    let f = open(backend).await;
    let first = f.keys.create(create("alice"), "admin").await.unwrap();
    // Same hash again: the unique constraint fails inside the transaction.
    let duplicate = NewKey {
        id: KeyId::generate(),
        hash: first.record.hash,
        owner: "mallory".into(),
        name: String::new(),
        start: first.record.start.clone(),
        enabled: true,
        created_unix_ms: 0,
        expires_unix_ms: None,
        meta: Meta::new(),
        limits: keygate_proto::KeyLimits::default(),
        credits: None,
        refill: None,
    };
    let error = f.store.create_key(duplicate, "admin").await.unwrap_err();
    assert!(matches!(error, StoreError::Conflict(_)), "{error}");
    assert_eq!(all_events(&*f.store).await.len(), 1);
    assert_eq!(f.store.list_audit(100).await.unwrap().len(), 1);
    assert_eq!(f.store.log_bounds().await.unwrap().head, Revision(1));
    assert_eq!(
        f.recorder.events().len(),
        1,
        "nothing announced for the rollback"
    );
    // The next write still takes the next revision.
    assert_eq!(
        f.keys
            .create(create("bob"), "admin")
            .await
            .unwrap()
            .revision,
        Revision(2)
    );
}

pub(crate) async fn reroll_issues_a_sibling_and_shortens_the_old_expiry(
    backend: &dyn SuiteBackend,
) {
    let f = open(backend).await;
    let mut request = create("alice");
    request.prefix = "acme".into();
    let old = f.keys.create(request, "admin").await.unwrap();
    let before = now_unix_ms();
    let new = f
        .keys
        .reroll(&old.record.id.to_string(), 60_000, "admin")
        .await
        .unwrap();
    let after = now_unix_ms();

    assert_ne!(new.record.id, old.record.id);
    assert_ne!(new.plaintext, old.plaintext);
    assert!(new.plaintext.starts_with("acme_"));
    assert_eq!(new.record.prefix(), "acme");
    assert_eq!(new.record.owner, "alice");
    assert_eq!(new.record.name, "ci");
    assert_eq!(new.record.meta, old.record.meta);
    assert_eq!(new.record.expires_unix_ms, None);
    let old_now = f.keys.get(&old.record.id.to_string()).await.unwrap();
    let expires = old_now.expires_unix_ms.unwrap();
    assert!(
        (before + 60_000..=after + 60_000).contains(&expires),
        "{expires}"
    );

    // A second reroll with a longer grace keeps the earlier expiry.
    f.keys
        .reroll(&old.record.id.to_string(), 3_600_000, "admin")
        .await
        .unwrap();
    let again = f.keys.get(&old.record.id.to_string()).await.unwrap();
    assert_eq!(again.expires_unix_ms, Some(expires));

    // Grace 0: expired at once.
    let zero = f
        .keys
        .reroll(&new.record.id.to_string(), 0, "admin")
        .await
        .unwrap();
    let stopped = f.keys.get(&new.record.id.to_string()).await.unwrap();
    assert!(stopped.expires_unix_ms.unwrap() <= now_unix_ms());
    // The events carry the new key first, then the old key's new expiry.
    let events = f
        .store
        .events_after(Revision(zero.revision.0 - 2), 10)
        .await
        .unwrap();
    match (&events[0].change, &events[1].change) {
        (Change::KeyUpserted(first), Change::KeyUpserted(second)) => {
            assert_eq!(first.id, zero.record.id);
            assert_eq!(second.id, new.record.id);
            assert_eq!(second.expires_unix_ms, stopped.expires_unix_ms);
        }
        other => panic!("unexpected events {other:?}"),
    }
}

pub(crate) async fn keys_page_in_id_order_with_an_opaque_cursor(backend: &dyn SuiteBackend) {
    let f = open(backend).await;
    let mut alice = Vec::new();
    for i in 0..25 {
        let owner = if i % 5 == 0 { "bob" } else { "alice" };
        let key = f.keys.create(create(owner), "admin").await.unwrap();
        if owner == "alice" {
            alice.push(key.record.id);
        }
    }
    alice.sort();
    let mut seen = Vec::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let page = f
            .keys
            .list(ListKeys {
                owner: "alice".into(),
                limit: 7,
                cursor,
            })
            .await
            .unwrap();
        pages += 1;
        assert!(page.keys.len() <= 7);
        seen.extend(page.keys.iter().map(|k| k.id));
        match page.next_cursor {
            Some(next) => cursor = next,
            None => break,
        }
    }
    assert_eq!(seen, alice, "every key once, in id order");
    assert_eq!(pages, 3, "20 keys in pages of 7; no empty last page");
    let everyone = f.keys.list(ListKeys::default()).await.unwrap();
    assert_eq!(everyone.keys.len(), 25);
    assert_eq!(everyone.next_cursor, None);
    let garbage = f
        .keys
        .list(ListKeys {
            cursor: "not a cursor".into(),
            ..ListKeys::default()
        })
        .await;
    assert!(matches!(garbage, Err(KeyError::InvalidArgument(_))));
    // The store's own query honours the owner filter and the lower bound.
    let after_first = f
        .store
        .list_keys(KeyQuery {
            owner: Some("alice".into()),
            after: Some(alice[0]),
            limit: 100,
        })
        .await
        .unwrap();
    assert_eq!(after_first.len(), alice.len() - 1);
}

pub(crate) async fn snapshots_are_consistent_at_their_revision_while_writes_go_on(
    backend: &dyn SuiteBackend,
) {
    let f = open(backend).await;
    let writer = {
        let keys = f.keys.clone();
        tokio::spawn(async move {
            for _ in 0..150 {
                keys.create(create("alice"), "admin").await.unwrap();
            }
        })
    };
    let mut distinct = BTreeSet::new();
    while !writer.is_finished() {
        // Only creates happen, so the state at revision R holds exactly R keys.
        let snapshot = f.store.snapshot().await.unwrap();
        assert_eq!(snapshot.keys.len() as u64, snapshot.revision.0);
        distinct.insert(snapshot.revision);
    }
    writer.await.unwrap();
    let last = f.store.snapshot().await.unwrap();
    assert_eq!((last.revision, last.keys.len()), (Revision(150), 150));
    assert!(!distinct.is_empty());
}

pub(crate) async fn lookups_by_hash_and_reopening_keep_state(backend: &dyn SuiteBackend) {
    let f = open(backend).await;
    let issued = f.keys.create(create("alice"), "admin").await.unwrap();
    let hash = keygate_proto::ApiKey::parse(&issued.plaintext)
        .unwrap()
        .hash();
    let (found, head) = f.store.key_by_hash(hash).await.unwrap();
    assert_eq!(found.unwrap().id, issued.record.id);
    assert_eq!(head, Revision(1));
    let (missing, _) = f.store.key_by_hash(KeyHash([7; 32])).await.unwrap();
    assert!(missing.is_none());
    drop(f);

    // Reopening runs no migration twice and keeps keys and head.
    let store = backend.open(Arc::new(Recorder::default())).await;
    assert_eq!(store.log_bounds().await.unwrap().head, Revision(1));
    assert!(store.get_key(issued.record.id).await.unwrap().is_some());
}

pub(crate) async fn create_validates_its_input(backend: &dyn SuiteBackend) {
    let f = open(backend).await;
    let cases = [
        CreateKey {
            owner: String::new(),
            ..create("x")
        },
        CreateKey {
            prefix: "bad_prefix".into(),
            ..create("alice")
        },
        CreateKey {
            name: "n".repeat(257),
            ..create("alice")
        },
        CreateKey {
            expires_unix_ms: Some(now_unix_ms() - 1),
            ..create("alice")
        },
    ];
    for case in cases {
        let result = f.keys.create(case.clone(), "admin").await;
        assert!(
            matches!(result, Err(KeyError::InvalidArgument(_))),
            "{case:?}"
        );
    }
    let disabled = f
        .keys
        .create(
            CreateKey {
                disabled: true,
                ..create("alice")
            },
            "admin",
        )
        .await
        .unwrap();
    assert!(!disabled.record.enabled);
    assert!(disabled.plaintext.starts_with("kg_"));
    assert!(
        all_events(&*f.store).await.len() == 1,
        "refused creates append nothing"
    );
}

pub(crate) async fn the_log_has_an_id_that_never_changes(backend: &dyn SuiteBackend) {
    let f = open(backend).await;
    let first = f.store.log_bounds().await.unwrap();
    assert!(
        !first.log_id.is_unknown(),
        "made when the store was created"
    );
    f.keys.create(create("alice"), "admin").await.unwrap();
    let compacted = f.store.compact(now_unix_ms() + 1).await.unwrap();
    assert_eq!(
        compacted.log_id, first.log_id,
        "writes and compaction keep it"
    );
    drop(f);

    let store = backend.open(Arc::new(Recorder::default())).await;
    assert_eq!(store.log_bounds().await.unwrap().log_id, first.log_id);
}

pub(crate) async fn events_of_every_kind_read_back_as_they_were_announced(
    backend: &dyn SuiteBackend,
) {
    let f = open(backend).await;
    let key = f.keys.create(create("alice"), "admin").await.unwrap();
    f.keys
        .delete(&key.record.id.to_string(), "admin")
        .await
        .unwrap();
    f.store
        .ensure_signing_key(signing_key("sk_1", 1), "system")
        .await
        .unwrap();
    f.store
        .create_user("alice", [1; 16], "admin")
        .await
        .unwrap();
    let token_hash = enroll(&*f.store, "alice", 1).await;
    register(
        &*f.store,
        "alice",
        "pk_a",
        1,
        RegisteredVia::Enrollment { token_hash },
        Some("ses_1"),
    )
    .await;
    let removed = f
        .store
        .remove_passkey(
            PasskeyRemoval {
                user_id: "alice".into(),
                passkey_id: "pk_a".into(),
                prune_after_unix_ms: now_unix_ms() + DAY_MS,
                keep_last: false,
                action: "passkey.revoke",
            },
            "admin",
        )
        .await
        .unwrap();
    assert!(matches!(removed, PasskeyRemoved::Removed { .. }));
    f.store.revoke_session("ses_1", "admin").await.unwrap();
    f.store
        .set_user_enabled("alice", false, DAY_MS, "admin")
        .await
        .unwrap();

    let announced = f.recorder.events();
    let kinds: BTreeSet<&str> = announced
        .iter()
        .map(|event| match &event.change {
            Change::KeyUpserted(_) => "key upserted",
            Change::KeyDeleted { .. } => "key deleted",
            Change::PasskeyRevoked(_) => "passkey revoked",
            Change::SessionRevoked(_) => "session revoked",
            Change::UserState(_) => "user state",
            Change::SigningKey(_) => "signing key",
            Change::IdentityUpserted(_) => "identity upserted",
            Change::IdentityDeleted { .. } => "identity deleted",
            Change::CreditsChanged { .. } => "credits changed",
        })
        .collect();
    assert_eq!(kinds.len(), 6, "every kind of change: {kinds:?}");
    assert_eq!(all_events(&*f.store).await, announced);
    drop(f);

    // And from the database alone, after a reopen.
    let store = backend.open(Arc::new(Recorder::default())).await;
    assert_eq!(all_events(&*store).await, announced);
}

// Users, passkeys, sessions, signing keys.

fn signing_key(id: &str, byte: u8) -> SigningKeyRecord {
    SigningKeyRecord {
        key_id: id.into(),
        secret: [byte; 32],
        public_key: [byte; 32],
        created_unix_ms: 0,
        verify_until_unix_ms: None,
        revoked_unix_ms: None,
        max_session_lifetime_ms: None,
    }
}

/// A signing key that signs sessions lasting `lifetime_ms`.
fn signing_key_for(id: &str, byte: u8, lifetime_ms: i64) -> SigningKeyRecord {
    SigningKeyRecord {
        max_session_lifetime_ms: Some(lifetime_ms),
        ..signing_key(id, byte)
    }
}

fn new_passkey(user_id: &str, id: &str, credential: u8) -> NewPasskey {
    NewPasskey {
        passkey_id: id.into(),
        user_id: user_id.into(),
        credential_id: vec![credential; 16],
        name: format!("device {credential}"),
        user_agent: "test".into(),
        backup_eligible: true,
        backed_up: false,
        credential_json: "{}".into(),
        aaguid: [credential; 16],
    }
}

fn new_session(id: &str) -> NewSession {
    NewSession {
        session_id: id.into(),
        lifetime_ms: DAY_MS,
        user_agent: "test".into(),
    }
}

async fn enroll(store: &dyn Store, user_id: &str, token: u8) -> [u8; 32] {
    let token_hash = [token; 32];
    let created = store
        .create_enrollment(
            NewEnrollment {
                enrollment_id: format!("enr_{token}"),
                token_hash,
                user_id: user_id.into(),
                expires_unix_ms: now_unix_ms() + DAY_MS,
            },
            "admin",
        )
        .await
        .unwrap();
    assert!(matches!(created, EnrollmentCreated::Created(_)));
    token_hash
}

async fn register(
    store: &dyn Store,
    user_id: &str,
    passkey_id: &str,
    credential: u8,
    via: RegisteredVia,
    session: Option<&str>,
) -> Registered {
    store
        .register_passkey(
            Registration {
                passkey: new_passkey(user_id, passkey_id, credential),
                via,
                session: session.map(new_session),
            },
            "user",
        )
        .await
        .unwrap()
}

/// A link whose ceremony began before its expiry but finishes after it is refused as expired
/// (not as used), and the store is unchanged: no passkey, no session, the link unused.
pub(crate) async fn an_enrollment_finished_after_its_expiry_is_refused_and_changes_nothing(
    backend: &dyn SuiteBackend,
) {
    let f = open(backend).await;
    let store = &*f.store;
    store.create_user("alice", [1; 16], "admin").await.unwrap();
    let token_hash = [7; 32];
    let created = store
        .create_enrollment(
            NewEnrollment {
                enrollment_id: "enr_7".into(),
                token_hash,
                user_id: "alice".into(),
                // Begun a moment ago; expired by the time the browser answers.
                expires_unix_ms: now_unix_ms() - 1,
            },
            "admin",
        )
        .await
        .unwrap();
    assert!(matches!(created, EnrollmentCreated::Created(_)));
    let events_before = f.recorder.events().len();
    let via = RegisteredVia::Enrollment { token_hash };
    assert_eq!(
        register(store, "alice", "pk_a", 1, via, Some("ses_a")).await,
        Registered::EnrollmentExpired
    );
    assert!(store.list_passkeys("alice").await.unwrap().is_empty());
    assert!(store.session_context("ses_a").await.unwrap().is_none());
    let link = store.enrollment_by_token_hash(token_hash).await.unwrap();
    assert_eq!(link.unwrap().used_unix_ms, None, "the link stays unused");
    assert_eq!(f.recorder.events().len(), events_before, "no event");
    // A link for someone else is not "expired" for this user: it is not theirs.
    store.create_user("bob", [2; 16], "admin").await.unwrap();
    let via = RegisteredVia::Enrollment { token_hash };
    assert_eq!(
        register(store, "bob", "pk_b", 2, via, Some("ses_b")).await,
        Registered::EnrollmentUsed
    );
}

pub(crate) async fn an_enrollment_link_registers_exactly_one_passkey_and_signs_in(
    backend: &dyn SuiteBackend,
) {
    let f = open(backend).await;
    let store = &*f.store;
    store.create_user("alice", [1; 16], "admin").await.unwrap();
    assert_eq!(
        store.create_user("alice", [2; 16], "admin").await.unwrap(),
        UserCreated::AlreadyExists
    );
    let token_hash = enroll(store, "alice", 9).await;
    let via = RegisteredVia::Enrollment { token_hash };
    let Registered::Done { passkey, session } =
        register(store, "alice", "pk_a", 1, via.clone(), Some("ses_a")).await
    else {
        panic!("not registered")
    };
    let session = session.unwrap();
    assert_eq!(passkey.user_id, "alice");
    assert_eq!(session.passkey_id, "pk_a");
    assert_eq!(session.expires_unix_ms - session.issued_unix_ms, DAY_MS);
    let used = store.enrollment_by_token_hash(token_hash).await.unwrap();
    assert!(used.unwrap().used_unix_ms.is_some());

    // The link is spent; a second registration with it changes nothing.
    assert_eq!(
        register(store, "alice", "pk_b", 2, via, Some("ses_b")).await,
        Registered::EnrollmentUsed
    );
    assert_eq!(store.list_passkeys("alice").await.unwrap().len(), 1);
    assert!(store.session_context("ses_b").await.unwrap().is_none());

    // The same credential cannot be registered twice, and the failed attempt leaves the
    // new link unused.
    let again = enroll(store, "alice", 10).await;
    assert_eq!(
        register(
            store,
            "alice",
            "pk_c",
            1,
            RegisteredVia::Enrollment { token_hash: again },
            Some("ses_c")
        )
        .await,
        Registered::CredentialExists
    );
    let unused = store.enrollment_by_token_hash(again).await.unwrap();
    assert_eq!(unused.unwrap().used_unix_ms, None);
    assert!(store.session_context("ses_c").await.unwrap().is_none());

    // None of this concerns gateways, except the signing key (none yet here).
    assert!(f.recorder.events().is_empty());
    let audit = store.list_audit(100).await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "enrollment.create",
            "passkey.register",
            "enrollment.create",
            "user.create"
        ]
    );
}

pub(crate) async fn enrollments_for_unknown_or_disabled_users_are_refused(
    backend: &dyn SuiteBackend,
) {
    let f = open(backend).await;
    let store = &*f.store;
    let enrollment = |user: &str| NewEnrollment {
        enrollment_id: "enr_x".into(),
        token_hash: [3; 32],
        user_id: user.into(),
        expires_unix_ms: now_unix_ms() + DAY_MS,
    };
    assert_eq!(
        store
            .create_enrollment(enrollment("nobody"), "admin")
            .await
            .unwrap(),
        EnrollmentCreated::UnknownUser
    );
    store.create_user("bob", [4; 16], "admin").await.unwrap();
    store
        .set_user_enabled("bob", false, DAY_MS, "admin")
        .await
        .unwrap();
    assert_eq!(
        store
            .create_enrollment(enrollment("bob"), "admin")
            .await
            .unwrap(),
        EnrollmentCreated::UserDisabled
    );
}

/// Creates the link `enr_{token}` for `user_id`, expiring at `expires_unix_ms`.
async fn enroll_until(store: &dyn Store, user_id: &str, token: u8, expires_unix_ms: i64) {
    let created = store
        .create_enrollment(
            NewEnrollment {
                enrollment_id: format!("enr_{token}"),
                token_hash: [token; 32],
                user_id: user_id.into(),
                expires_unix_ms,
            },
            "ops",
        )
        .await
        .unwrap();
    assert!(
        matches!(created, EnrollmentCreated::Created(_)),
        "{created:?}"
    );
}

/// The user's links as (id, state now), as listed.
async fn link_states(store: &dyn Store, user_id: &str) -> Vec<(String, EnrollmentState)> {
    let now = now_unix_ms();
    store
        .list_enrollments(user_id)
        .await
        .unwrap()
        .iter()
        .map(|link| (link.enrollment_id.clone(), link.state(now)))
        .collect()
}

/// A registration for `user_id` through the link `enr_{token}` is refused with `refused`, and
/// nothing changed: no new passkey, no session, the link as it was (unused).
async fn assert_refused_and_nothing_changed(
    store: &dyn Store,
    user_id: &str,
    token: u8,
    refused: Registered,
) {
    let via = RegisteredVia::Enrollment {
        token_hash: [token; 32],
    };
    let passkeys = store.list_passkeys(user_id).await.unwrap();
    let link = store.enrollment_by_token_hash([token; 32]).await.unwrap();
    assert_eq!(
        register(store, user_id, "pk_refused", 99, via, Some("ses_refused")).await,
        refused
    );
    assert_eq!(store.list_passkeys(user_id).await.unwrap(), passkeys);
    assert!(
        store
            .session_context("ses_refused")
            .await
            .unwrap()
            .is_none()
    );
    let after = store.enrollment_by_token_hash([token; 32]).await.unwrap();
    assert_eq!(after, link, "the link is as it was");
    assert_eq!(after.unwrap().used_unix_ms, None);
}

pub(crate) async fn enrollment_links_are_listed_newest_first_and_revoked_only_while_open(
    backend: &dyn SuiteBackend,
) {
    let f = open(backend).await;
    let store = &*f.store;
    store.create_user("alice", [1; 16], "admin").await.unwrap();
    store.create_user("bob", [2; 16], "admin").await.unwrap();
    let later = now_unix_ms() + DAY_MS;
    enroll_until(store, "alice", 1, later).await;
    enroll_until(store, "alice", 2, later).await;
    enroll_until(store, "bob", 3, later).await;
    enroll_until(store, "alice", 4, now_unix_ms() - 1).await;
    let used = register(
        store,
        "alice",
        "pk_a",
        1,
        RegisteredVia::Enrollment {
            token_hash: [1; 32],
        },
        Some("ses_a"),
    )
    .await;
    assert!(matches!(used, Registered::Done { .. }), "{used:?}");
    let listed = store.list_enrollments("alice").await.unwrap();
    assert!(
        listed
            .windows(2)
            .all(|pair| pair[0].created_unix_ms >= pair[1].created_unix_ms),
        "newest first: {listed:?}"
    );
    assert!(listed.iter().all(|link| link.created_by == "ops"));
    assert_eq!(
        link_states(store, "alice").await,
        [
            ("enr_4".to_owned(), EnrollmentState::Expired),
            ("enr_2".to_owned(), EnrollmentState::Open),
            ("enr_1".to_owned(), EnrollmentState::Used),
        ]
    );
    assert!(store.list_enrollments("nobody").await.unwrap().is_empty());
    let events_before = f.recorder.events().len();

    let revoked = store
        .revoke_enrollment("enr_2", "oncall")
        .await
        .unwrap()
        .unwrap();
    assert!(revoked.changed);
    let voided = revoked.link.voided.unwrap();
    assert_eq!(voided.reason, VoidReason::Revoked);
    assert_eq!(revoked.link.state(now_unix_ms()), EnrollmentState::Revoked);
    assert_eq!(
        store.enrollment_by_token_hash([2; 32]).await.unwrap(),
        Some(revoked.link.clone()),
        "stored as answered"
    );
    // Revoked, used or expired already: nothing changes, and the answer says what it is.
    for (id, state) in [
        ("enr_2", EnrollmentState::Revoked),
        ("enr_1", EnrollmentState::Used),
        ("enr_4", EnrollmentState::Expired),
    ] {
        let before = store.list_enrollments("alice").await.unwrap();
        let again = store
            .revoke_enrollment(id, "oncall")
            .await
            .unwrap()
            .unwrap();
        assert!(!again.changed, "{id}");
        assert_eq!(again.link.state(now_unix_ms()), state, "{id}");
        assert_eq!(store.list_enrollments("alice").await.unwrap(), before);
    }
    assert_eq!(
        store.revoke_enrollment("enr_nope", "oncall").await.unwrap(),
        None
    );
    assert_eq!(
        link_states(store, "bob").await,
        [("enr_3".to_owned(), EnrollmentState::Open)],
        "another user's link is untouched"
    );

    // A ceremony begun before the revocation cannot finish with the link (and someone
    // else's link is as good as spent).
    assert_refused_and_nothing_changed(store, "alice", 2, Registered::EnrollmentRevoked).await;
    assert_refused_and_nothing_changed(store, "bob", 2, Registered::EnrollmentUsed).await;

    // Gateways know nothing of links: no event. Every revocation is audited, by its actor,
    // against the user, naming the link and never its token.
    assert_eq!(f.recorder.events().len(), events_before);
    let audit = store.list_audit(100).await.unwrap();
    let revocations: Vec<_> = audit
        .iter()
        .filter(|entry| entry.action == "enrollment.revoke")
        .collect();
    assert_eq!(revocations.len(), 4, "{revocations:?}");
    let first = revocations.last().unwrap();
    assert_eq!(
        (first.actor.as_str(), first.target.as_str(), first.revision),
        ("oncall", "alice", Revision::ZERO)
    );
    let detail: serde_json::Value = serde_json::from_str(&first.detail_json).unwrap();
    assert_eq!(detail["enrollmentId"], "enr_2");
    assert_eq!(detail["changed"], true);
    assert_eq!(detail.as_object().unwrap().len(), 2, "{detail}");

    // A link whose email could not be sent is closed the same way for its holder, and stored
    // and audited with its own reason.
    let voided = store
        .void_enrollment("enr_3", VoidReason::EmailFailed, "ops")
        .await
        .unwrap()
        .unwrap();
    assert!(voided.changed);
    let listed = store.list_enrollments("bob").await.unwrap();
    assert_eq!(
        listed,
        std::slice::from_ref(&voided.link),
        "stored as answered"
    );
    assert_eq!(
        listed[0].voided.map(|voided| voided.reason),
        Some(VoidReason::EmailFailed)
    );
    assert_eq!(listed[0].state(now_unix_ms()), EnrollmentState::Revoked);
    let newest = &store.list_audit(1).await.unwrap()[0];
    assert_eq!(
        (
            newest.action.as_str(),
            newest.actor.as_str(),
            newest.target.as_str()
        ),
        ("enrollment.void", "ops", "bob")
    );
    let detail: serde_json::Value = serde_json::from_str(&newest.detail_json).unwrap();
    assert_eq!(
        detail,
        serde_json::json!({ "enrollmentId": "enr_3", "reason": "email_failed", "changed": true })
    );
    assert_eq!(f.recorder.events().len(), events_before, "no event");
}

pub(crate) async fn disabling_a_user_voids_only_their_open_links_and_enabling_revives_none(
    backend: &dyn SuiteBackend,
) {
    let f = open(backend).await;
    let store = &*f.store;
    store.create_user("alice", [1; 16], "admin").await.unwrap();
    store.create_user("bob", [2; 16], "admin").await.unwrap();
    let later = now_unix_ms() + DAY_MS;
    enroll_until(store, "alice", 1, later).await;
    enroll_until(store, "alice", 2, later).await;
    enroll_until(store, "alice", 3, now_unix_ms() - 1).await;
    enroll_until(store, "alice", 4, later).await;
    enroll_until(store, "alice", 5, later).await;
    enroll_until(store, "bob", 6, later).await;
    let via = RegisteredVia::Enrollment {
        token_hash: [1; 32],
    };
    let used = register(store, "alice", "pk_a", 1, via, None).await;
    assert!(matches!(used, Registered::Done { .. }), "{used:?}");
    store
        .revoke_enrollment("enr_4", "ops")
        .await
        .unwrap()
        .unwrap();
    let before: Vec<EnrollmentRecord> = store.list_enrollments("alice").await.unwrap();

    let disabled = store
        .set_user_enabled("alice", false, DAY_MS, "oncall")
        .await
        .unwrap()
        .unwrap();
    assert!(disabled.changed);
    let mut voided = disabled.voided_enrollments.clone();
    voided.sort();
    assert_eq!(voided, ["enr_2", "enr_5"]);
    let after = store.list_enrollments("alice").await.unwrap();
    for (old, new) in before.iter().zip(&after) {
        if voided.contains(&new.enrollment_id) {
            assert_eq!(new.voided.unwrap().reason, VoidReason::UserDisabled);
            assert_eq!(
                EnrollmentRecord {
                    voided: None,
                    ..new.clone()
                },
                *old,
                "only voided"
            );
        } else {
            assert_eq!(new, old, "a used, expired or revoked link stays as it was");
        }
    }
    let mut states = link_states(store, "alice").await;
    states.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        states,
        [
            ("enr_1".to_owned(), EnrollmentState::Used),
            ("enr_2".to_owned(), EnrollmentState::Voided),
            ("enr_3".to_owned(), EnrollmentState::Expired),
            ("enr_4".to_owned(), EnrollmentState::Revoked),
            ("enr_5".to_owned(), EnrollmentState::Voided),
        ]
    );
    assert_eq!(
        link_states(store, "bob").await,
        [("enr_6".to_owned(), EnrollmentState::Open)]
    );
    let audit = store.list_audit(1).await.unwrap();
    assert_eq!(audit[0].action, "user.disable");
    let detail: serde_json::Value = serde_json::from_str(&audit[0].detail_json).unwrap();
    let mut audited: Vec<&str> = detail["voidedEnrollments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap())
        .collect();
    audited.sort_unstable();
    assert_eq!(audited, ["enr_2", "enr_5"]);

    // While disabled, the user is refused first.
    assert_refused_and_nothing_changed(store, "alice", 2, Registered::UserDisabled).await;

    // Disabling again changes nothing; enabling revives no link.
    let again = store
        .set_user_enabled("alice", false, DAY_MS, "oncall")
        .await
        .unwrap()
        .unwrap();
    assert!(!again.changed && again.voided_enrollments.is_empty());
    let enabled = store
        .set_user_enabled("alice", true, DAY_MS, "oncall")
        .await
        .unwrap()
        .unwrap();
    assert!(enabled.changed && enabled.voided_enrollments.is_empty());
    assert_eq!(store.list_enrollments("alice").await.unwrap(), after);
    for token in [2, 5] {
        assert_refused_and_nothing_changed(store, "alice", token, Registered::EnrollmentVoided)
            .await;
    }
    assert_eq!(store.list_enrollments("alice").await.unwrap(), after);
    // A new link works again.
    enroll_until(store, "alice", 7, later).await;
    let via = RegisteredVia::Enrollment {
        token_hash: [7; 32],
    };
    let fresh = register(store, "alice", "pk_b", 2, via, None).await;
    assert!(matches!(fresh, Registered::Done { .. }), "{fresh:?}");
}

pub(crate) async fn revocations_are_events_and_in_the_snapshot_until_pruned(
    backend: &dyn SuiteBackend,
) {
    let f = open(backend).await;
    let store = &*f.store;
    store.create_user("alice", [1; 16], "admin").await.unwrap();
    store.create_user("bob", [2; 16], "admin").await.unwrap();
    let token = enroll(store, "alice", 1).await;
    register(
        store,
        "alice",
        "pk_a1",
        1,
        RegisteredVia::Enrollment { token_hash: token },
        Some("ses_1"),
    )
    .await;
    register(
        store,
        "alice",
        "pk_a2",
        2,
        RegisteredVia::Session {
            session_id: "ses_1".into(),
        },
        None,
    )
    .await;

    // Self-service removal of someone else's passkey: not found, nothing changed.
    let removal = |user: &str, passkey: &str, keep_last| PasskeyRemoval {
        user_id: user.into(),
        passkey_id: passkey.into(),
        prune_after_unix_ms: now_unix_ms() + DAY_MS,
        keep_last,
        action: "passkey.remove",
    };
    assert_eq!(
        store
            .remove_passkey(removal("bob", "pk_a1", true), "user:bob")
            .await
            .unwrap(),
        PasskeyRemoved::NotFound
    );
    let PasskeyRemoved::Removed { revision } = store
        .remove_passkey(removal("alice", "pk_a1", true), "user:alice")
        .await
        .unwrap()
    else {
        panic!("not removed")
    };
    assert_eq!(revision, Revision(1));
    // The last one stays, unless an operator revokes it.
    assert_eq!(
        store
            .remove_passkey(removal("alice", "pk_a2", true), "user:alice")
            .await
            .unwrap(),
        PasskeyRemoved::LastPasskey
    );
    let ctx = store.session_context("ses_1").await.unwrap().unwrap();
    assert!(!ctx.passkey_exists, "the session's passkey is gone");

    // Sign-out, sign-out everywhere, disable: one event each, in order.
    assert_eq!(
        store.revoke_session("ses_1", "user:alice").await.unwrap(),
        Some(Revision(2))
    );
    assert_eq!(
        store.revoke_session("ses_1", "user:alice").await.unwrap(),
        None
    );
    let revoked = store
        .revoke_user_sessions("alice", DAY_MS, "admin")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revoked.revision, Revision(3));
    assert!(revoked.user.sessions_revoked_before_unix_ms > 0);
    let disabled = store
        .set_user_enabled("bob", false, DAY_MS, "admin")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((disabled.revision, disabled.changed), (Revision(4), true));
    let again = store
        .set_user_enabled("bob", false, DAY_MS, "admin")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((again.revision, again.changed), (Revision(4), false));
    assert!(
        store
            .set_user_enabled("nobody", false, DAY_MS, "admin")
            .await
            .unwrap()
            .is_none()
    );

    let events = f.recorder.events();
    let kinds: Vec<_> = events
        .iter()
        .map(|e| match &e.change {
            Change::PasskeyRevoked(r) => format!("passkey {}", r.passkey_id),
            Change::SessionRevoked(r) => format!("session {}", r.session_id),
            Change::UserState(u) => format!("user {} disabled={}", u.user_id, u.disabled),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "passkey pk_a1",
            "session ses_1",
            "user alice disabled=false",
            "user bob disabled=true"
        ]
    );
    assert_eq!(
        all_events(store).await,
        events,
        "the events read back as written"
    );

    // The snapshot carries all of it at its revision.
    let snapshot = store.snapshot().await.unwrap();
    assert_eq!(snapshot.revision, Revision(4));
    let state = &snapshot.sessions;
    assert_eq!(state.revoked_passkeys.len(), 1);
    assert_eq!(state.revoked_sessions.len(), 1);
    assert_eq!(state.users.len(), 2);
    assert_eq!(state, &store.session_state().await.unwrap());

    // Past every prune time the revocations are gone. Users are never deleted: alice's state
    // stays in the session state until its own prune time, bob's while he is disabled.
    let later = now_unix_ms() + 2 * DAY_MS;
    let pruned = store.prune(later).await.unwrap();
    assert_eq!((pruned.revoked_passkeys, pruned.sessions), (1, 1));
    let remaining = store.session_state().await.unwrap();
    assert!(remaining.revoked_passkeys.is_empty() && remaining.revoked_sessions.is_empty());
    let users: Vec<_> = remaining
        .users
        .iter()
        .map(|u| {
            (
                u.user_id.as_str(),
                u.disabled,
                u.prune_after_unix_ms < later,
            )
        })
        .collect();
    assert_eq!(users, [("alice", false, true), ("bob", true, true)]);
}

/// A registration keeps the AAGUID it was made with; a rename changes only the name, of the
/// user's own passkey (someone else's is not found, and unchanged), with one audit row and no
/// event.
pub(crate) async fn a_passkey_keeps_its_aaguid_and_is_renamed_by_its_user_only(
    backend: &dyn SuiteBackend,
) {
    let f = open(backend).await;
    let store = &*f.store;
    store.create_user("alice", [1; 16], "admin").await.unwrap();
    store.create_user("bob", [2; 16], "admin").await.unwrap();
    let token = enroll(store, "alice", 1).await;
    register(
        store,
        "alice",
        "pk_a",
        7,
        RegisteredVia::Enrollment { token_hash: token },
        None,
    )
    .await;
    let before = store.list_passkeys("alice").await.unwrap().remove(0);
    assert_eq!(before.aaguid, Some([7; 16]));
    assert_eq!(
        store.passkey_by_credential_id(&[7; 16]).await.unwrap(),
        Some(before.clone())
    );

    let rename = |user: &str, passkey: &str, name: &str| PasskeyRename {
        user_id: user.into(),
        passkey_id: passkey.into(),
        name: name.into(),
        action: "passkey.rename",
    };
    let audit_rows = store.list_audit(100).await.unwrap().len();
    for (user, passkey) in [("bob", "pk_a"), ("alice", "pk_nope")] {
        let refused = store
            .rename_passkey(rename(user, passkey, "stolen"), "user:bob")
            .await
            .unwrap();
        assert_eq!(
            refused,
            PasskeyRenamed::NotFound,
            "{user} renaming {passkey}"
        );
    }
    assert_eq!(
        store.list_passkeys("alice").await.unwrap(),
        std::slice::from_ref(&before)
    );
    assert_eq!(store.list_audit(100).await.unwrap().len(), audit_rows);

    let PasskeyRenamed::Renamed(renamed) = store
        .rename_passkey(rename("alice", "pk_a", "work laptop"), "user:alice")
        .await
        .unwrap()
    else {
        panic!("not renamed")
    };
    let expected = PasskeyRecord {
        name: "work laptop".into(),
        ..before
    };
    assert_eq!(*renamed, expected);
    assert_eq!(store.list_passkeys("alice").await.unwrap(), [expected]);
    let audit = store.list_audit(100).await.unwrap();
    assert_eq!(audit.len(), audit_rows + 1);
    let row = audit
        .iter()
        .find(|row| row.action == "passkey.rename")
        .unwrap();
    assert_eq!(
        (row.actor.as_str(), row.target.as_str()),
        ("user:alice", "alice")
    );
    assert_eq!(row.revision, Revision::ZERO);
    let detail: serde_json::Value = serde_json::from_str(&row.detail_json).unwrap();
    assert_eq!(detail["passkeyId"], "pk_a");
    assert_eq!(detail["oldName"], "device 7");
    assert_eq!(detail["name"], "work laptop");
    assert!(f.recorder.events().is_empty(), "a rename announces nothing");
}

/// Every user's passkeys, a page at a time after the last id seen, each exactly once.
pub(crate) async fn passkeys_of_every_user_page_in_id_order(backend: &dyn SuiteBackend) {
    let f = open(backend).await;
    let store = &*f.store;
    assert!(store.passkeys_page(None, 10).await.unwrap().is_empty());
    let mut expected = Vec::new();
    for (n, user) in [(1u8, "carol"), (2, "alice"), (3, "bob")] {
        store.create_user(user, [n; 16], "admin").await.unwrap();
        let token = enroll(store, user, n).await;
        for (i, id) in [format!("pk_{n}b"), format!("pk_{n}a")]
            .into_iter()
            .enumerate()
        {
            let via = if i == 0 {
                RegisteredVia::Enrollment { token_hash: token }
            } else {
                RegisteredVia::Session {
                    session_id: format!("ses_{n}"),
                }
            };
            let session = (i == 0).then(|| format!("ses_{n}"));
            let credential = n * 10 + u8::try_from(i).unwrap();
            let registered = register(store, user, &id, credential, via, session.as_deref()).await;
            assert!(matches!(registered, Registered::Done { .. }), "{id}");
            expected.push(id);
        }
    }
    expected.sort();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.passkeys_page(after.as_deref(), 4).await.unwrap();
        assert!(page.len() <= 4);
        let Some(last) = page.last() else { break };
        after = Some(last.passkey_id.clone());
        seen.extend(page.into_iter().map(|passkey| passkey.passkey_id));
    }
    assert_eq!(seen, expected);
    let users: BTreeSet<String> = store
        .passkeys_page(None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|passkey| passkey.user_id)
        .collect();
    assert_eq!(users.len(), 3);
}

pub(crate) async fn a_login_updates_the_passkey_and_is_refused_for_a_disabled_user(
    backend: &dyn SuiteBackend,
) {
    let f = open(backend).await;
    let store = &*f.store;
    store.create_user("alice", [1; 16], "admin").await.unwrap();
    let token = enroll(store, "alice", 1).await;
    register(
        store,
        "alice",
        "pk_a",
        1,
        RegisteredVia::Enrollment { token_hash: token },
        None,
    )
    .await;
    let login = |session: &str| Login {
        passkey_id: "pk_a".into(),
        updated_credential: Some(UpdatedCredential {
            credential_json: "{\"updated\":true}".into(),
            backup_eligible: true,
            backed_up: true,
        }),
        session: new_session(session),
    };
    let LoggedIn::Done(session) = store.record_login(login("ses_1"), "user").await.unwrap() else {
        panic!("not logged in")
    };
    assert_eq!(session.user_id, "alice");
    let passkey = store.list_passkeys("alice").await.unwrap().remove(0);
    assert_eq!(passkey.last_used_unix_ms, Some(session.issued_unix_ms));
    assert!(passkey.backed_up);
    assert_eq!(passkey.credential_json, "{\"updated\":true}");

    store
        .set_user_enabled("alice", false, DAY_MS, "admin")
        .await
        .unwrap();
    assert_eq!(
        store.record_login(login("ses_2"), "user").await.unwrap(),
        LoggedIn::UserDisabled
    );
    let user = store.get_user("alice").await.unwrap().unwrap();
    assert!(user.sessions_revoked_before_unix_ms > session.issued_unix_ms);
    // Enabling again keeps the old sessions revoked.
    let enabled = store
        .set_user_enabled("alice", true, DAY_MS, "admin")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        enabled.user.sessions_revoked_before_unix_ms,
        user.sessions_revoked_before_unix_ms
    );
    assert_eq!(
        store
            .user_by_handle([1; 16])
            .await
            .unwrap()
            .unwrap()
            .user_id,
        "alice"
    );
}

pub(crate) async fn signing_keys_are_created_once_and_rotated_with_two_events(
    backend: &dyn SuiteBackend,
) {
    let f = open(backend).await;
    let store = &*f.store;
    let first = store
        .ensure_signing_key(signing_key("sk_1", 1), "system")
        .await
        .unwrap();
    let same = store
        .ensure_signing_key(signing_key("sk_2", 2), "system")
        .await
        .unwrap();
    assert_eq!(
        (first.key_id.as_str(), same.key_id.as_str()),
        ("sk_1", "sk_1")
    );
    assert!(format!("{first:?}").contains("<redacted>"));

    let until = now_unix_ms() + DAY_MS;
    let rotated = store
        .rotate_signing_key(signing_key("sk_3", 3), until, "admin")
        .await
        .unwrap();
    assert_eq!(rotated.current.key_id, "sk_3");
    assert_eq!(rotated.retired.unwrap().verify_until_unix_ms, Some(until));
    assert_eq!(rotated.revision, Revision(3));
    assert_eq!(
        store.current_signing_key().await.unwrap().unwrap().key_id,
        "sk_3"
    );
    let keys: Vec<_> = f
        .recorder
        .events()
        .iter()
        .map(|e| match &e.change {
            Change::SigningKey(k) => (k.key_id.clone(), k.verify_until_unix_ms),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        keys,
        [
            ("sk_1".to_owned(), None),
            ("sk_3".to_owned(), None),
            ("sk_1".to_owned(), Some(until))
        ]
    );
    assert_eq!(store.session_state().await.unwrap().signing_keys.len(), 2);
    // Once past its verify-until time the retired key is pruned.
    let pruned = store.prune(until + 1).await.unwrap();
    assert_eq!(pruned.signing_keys, 1);
    assert!(store.signing_key("sk_1").await.unwrap().is_none());
    let audit = store.list_audit(10).await.unwrap();
    assert!(
        audit
            .iter()
            .all(|entry| !entry.detail_json.contains("secret"))
    );
}

pub(crate) async fn a_revoked_signing_key_is_announced_replaced_and_kept_until_its_tokens_expire(
    backend: &dyn SuiteBackend,
) {
    let f = open(backend).await;
    let store = &*f.store;
    store
        .ensure_signing_key(signing_key("sk_1", 1), "system")
        .await
        .unwrap();
    let retire_until = now_unix_ms() + DAY_MS;
    store
        .rotate_signing_key(signing_key("sk_2", 2), retire_until, "admin")
        .await
        .unwrap();
    let announced = |from: usize| -> Vec<(String, bool, Option<i64>)> {
        f.recorder.events()[from..]
            .iter()
            .map(|event| match &event.change {
                Change::SigningKey(key) => {
                    (key.key_id.clone(), key.revoked, key.verify_until_unix_ms)
                }
                other => panic!("{other:?}"),
            })
            .collect()
    };

    // An unknown key: nothing changes.
    let unknown = store
        .revoke_signing_key("sk_nope", signing_key("sk_x", 9), DAY_MS, "admin")
        .await
        .unwrap();
    assert_eq!(unknown, SigningKeyRevoked::NotFound);
    assert_eq!(f.recorder.events().len(), 3);

    // A retired key: revoked and kept until its verify-until (it signed nothing since its
    // retirement); the current key stays, and no other is made.
    let revoked = store
        .revoke_signing_key("sk_1", signing_key("sk_x", 9), DAY_MS, "ops")
        .await
        .unwrap();
    let SigningKeyRevoked::Revoked {
        key,
        current,
        replaced,
        revision,
    } = revoked
    else {
        panic!("{revoked:?}");
    };
    assert_eq!(
        (key.key_id.as_str(), current.key_id.as_str(), replaced),
        ("sk_1", "sk_2", false)
    );
    assert_eq!(key.verify_until_unix_ms, Some(retire_until));
    assert!(key.revoked_unix_ms.is_some());
    assert_eq!(revision, Revision(4));
    assert_eq!(
        announced(3),
        [("sk_1".to_owned(), true, Some(retire_until))]
    );
    assert!(store.signing_key("sk_x").await.unwrap().is_none());

    // Again: nothing changes, and the head (which covers the revocation) comes back.
    let again = store
        .revoke_signing_key("sk_1", signing_key("sk_x", 9), DAY_MS, "ops")
        .await
        .unwrap();
    assert!(
        matches!(
            &again,
            SigningKeyRevoked::AlreadyRevoked { key, current: Some(current), head }
                if key.key_id == "sk_1" && current.key_id == "sk_2" && *head == Revision(4)
        ),
        "{again:?}"
    );
    assert_eq!(f.recorder.events().len(), 4);

    // The current key: `next` becomes current first (its event first), then the revocation;
    // the revoked key is kept for a session lifetime, as long as a token it just signed lives.
    let revoked = store
        .revoke_signing_key("sk_2", signing_key("sk_3", 3), DAY_MS, "ops")
        .await
        .unwrap();
    let SigningKeyRevoked::Revoked {
        key,
        current,
        replaced,
        revision,
    } = revoked
    else {
        panic!("{revoked:?}");
    };
    assert_eq!(
        (key.key_id.as_str(), current.key_id.as_str(), replaced),
        ("sk_2", "sk_3", true)
    );
    let revoked_at = key.revoked_unix_ms.unwrap();
    let kept_until = revoked_at + DAY_MS;
    assert_eq!(key.verify_until_unix_ms, Some(kept_until));
    assert_eq!(
        current.created_unix_ms, revoked_at,
        "made in the same transaction"
    );
    assert_eq!(revision, Revision(6));
    assert_eq!(
        announced(4),
        [
            ("sk_3".to_owned(), false, None),
            ("sk_2".to_owned(), true, Some(kept_until))
        ]
    );
    assert_eq!(
        store.current_signing_key().await.unwrap().unwrap().key_id,
        "sk_3"
    );
    assert_eq!(all_events(store).await, f.recorder.events());

    // Listed newest first; the snapshot carries the revoked keys, marked revoked, at its
    // revision.
    let listed: Vec<(String, bool, bool)> = store
        .list_signing_keys()
        .await
        .unwrap()
        .iter()
        .map(|key| {
            (
                key.key_id.clone(),
                key.is_current(),
                key.revoked_unix_ms.is_some(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("sk_3".to_owned(), true, false),
            ("sk_2".to_owned(), false, true),
            ("sk_1".to_owned(), false, true),
        ]
    );
    let snapshot = store.snapshot().await.unwrap();
    assert_eq!(snapshot.revision, Revision(6));
    let mut in_snapshot: Vec<(String, bool)> = snapshot
        .sessions
        .signing_keys
        .iter()
        .map(|key| (key.key_id.clone(), key.revoked))
        .collect();
    in_snapshot.sort();
    assert_eq!(
        in_snapshot,
        [
            ("sk_1".to_owned(), true),
            ("sk_2".to_owned(), true),
            ("sk_3".to_owned(), false)
        ]
    );

    let audit = store.list_audit(10).await.unwrap();
    let revocations: Vec<(&str, &str, u64)> = audit
        .iter()
        .filter(|entry| entry.action == "signing_key.revoke")
        .map(|entry| {
            (
                entry.actor.as_str(),
                entry.target.as_str(),
                entry.revision.0,
            )
        })
        .collect();
    assert_eq!(revocations, [("ops", "sk_2", 6), ("ops", "sk_1", 4)]);
    assert!(
        audit
            .iter()
            .all(|entry| !entry.detail_json.contains("secret"))
    );

    // Kept until their last token has expired, then pruned like retired keys; the revocation
    // survives a reopen.
    let pruned = store.prune(retire_until.min(kept_until) - 1).await.unwrap();
    assert_eq!(pruned.signing_keys, 0);
    drop(f);
    let store = backend.open(Arc::new(Recorder::default())).await;
    let sk_2 = store.signing_key("sk_2").await.unwrap().unwrap();
    assert_eq!(sk_2.revoked_unix_ms, Some(revoked_at));
    assert_eq!(sk_2.verify_until_unix_ms, Some(kept_until));
    let pruned = store.prune(retire_until.max(kept_until)).await.unwrap();
    assert_eq!(pruned.signing_keys, 2);
    let left = store.session_state().await.unwrap().signing_keys;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].key_id, "sk_3");
}

pub(crate) async fn each_signing_key_keeps_its_lifetime_and_a_new_lifetime_rotates_once(
    backend: &dyn SuiteBackend,
) {
    const HOUR_MS: i64 = 3_600_000;
    let f = open(backend).await;
    let store = &*f.store;
    // No key yet (no user): nothing to rotate, and no event.
    let nothing = store
        .rotate_signing_key_for_lifetime(signing_key_for("sk_0", 9, HOUR_MS), DAY_MS, "system")
        .await
        .unwrap();
    assert_eq!(nothing, None);
    assert!(store.current_signing_key().await.unwrap().is_none());
    assert!(f.recorder.events().is_empty());

    let first = store
        .ensure_signing_key(signing_key_for("sk_1", 1, HOUR_MS), "system")
        .await
        .unwrap();
    assert_eq!(first.max_session_lifetime_ms, Some(HOUR_MS));
    // The same lifetime: no rotation, no event, no audit row.
    let audit_rows = store.list_audit(100).await.unwrap().len();
    let same = store
        .rotate_signing_key_for_lifetime(signing_key_for("sk_x", 9, HOUR_MS), DAY_MS, "system")
        .await
        .unwrap();
    assert_eq!(same, None);
    assert_eq!(f.recorder.events().len(), 1);
    assert_eq!(store.list_audit(100).await.unwrap().len(), audit_rows);
    assert!(store.signing_key("sk_x").await.unwrap().is_none());

    // Another lifetime: one rotation; the retired key keeps the lifetime it signed with.
    let retire_until = now_unix_ms() + HOUR_MS;
    let rotated = store
        .rotate_signing_key_for_lifetime(
            signing_key_for("sk_2", 2, 2 * HOUR_MS),
            retire_until,
            "system",
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rotated.current.key_id, "sk_2");
    assert_eq!(rotated.current.max_session_lifetime_ms, Some(2 * HOUR_MS));
    let retired = rotated.retired.clone().unwrap();
    assert_eq!(
        (retired.key_id.as_str(), retired.verify_until_unix_ms),
        ("sk_1", Some(retire_until))
    );
    assert_eq!(retired.max_session_lifetime_ms, Some(HOUR_MS));
    // Then it is the current lifetime: no second rotation.
    let again = store
        .rotate_signing_key_for_lifetime(
            signing_key_for("sk_y", 9, 2 * HOUR_MS),
            retire_until,
            "system",
        )
        .await
        .unwrap();
    assert_eq!(again, None);
    let rotations: Vec<String> = store
        .list_audit(100)
        .await
        .unwrap()
        .into_iter()
        .filter(|entry| entry.action == "signing_key.rotate")
        .map(|entry| format!("{} {}", entry.actor, entry.target))
        .collect();
    assert_eq!(rotations, ["system sk_2"]);

    // Each key's own lifetime is in its events (the new key first), in the log and in the
    // snapshot.
    let lifetimes = |events: Vec<Event>| -> Vec<(String, Option<i64>, Option<i64>)> {
        events
            .into_iter()
            .map(|event| match event.change {
                Change::SigningKey(key) => (
                    key.key_id,
                    key.verify_until_unix_ms,
                    key.max_session_lifetime_ms,
                ),
                other => panic!("{other:?}"),
            })
            .collect()
    };
    let expected = [
        ("sk_1".to_owned(), None, Some(HOUR_MS)),
        ("sk_2".to_owned(), None, Some(2 * HOUR_MS)),
        ("sk_1".to_owned(), Some(retire_until), Some(HOUR_MS)),
    ];
    assert_eq!(lifetimes(f.recorder.events()), expected);
    assert_eq!(lifetimes(all_events(store).await), expected);
    let mut in_snapshot: Vec<(String, Option<i64>)> = store
        .snapshot()
        .await
        .unwrap()
        .sessions
        .signing_keys
        .iter()
        .map(|key| (key.key_id.clone(), key.max_session_lifetime_ms))
        .collect();
    in_snapshot.sort();
    assert_eq!(
        in_snapshot,
        [
            ("sk_1".to_owned(), Some(HOUR_MS)),
            ("sk_2".to_owned(), Some(2 * HOUR_MS))
        ]
    );

    // A key from before the column (no lifetime) is rotated for any lifetime.
    store
        .rotate_signing_key(signing_key("sk_3", 3), retire_until, "admin")
        .await
        .unwrap();
    let rotated = store
        .rotate_signing_key_for_lifetime(
            signing_key_for("sk_4", 4, 2 * HOUR_MS),
            retire_until,
            "system",
        )
        .await
        .unwrap()
        .unwrap();
    let retired = rotated.retired.unwrap();
    assert_eq!(
        (retired.key_id.as_str(), retired.max_session_lifetime_ms),
        ("sk_3", None)
    );

    // The current key revoked is kept for its own lifetime, whatever the caller's.
    let revoked = store
        .revoke_signing_key(
            "sk_4",
            signing_key_for("sk_5", 5, 3 * HOUR_MS),
            DAY_MS,
            "ops",
        )
        .await
        .unwrap();
    let SigningKeyRevoked::Revoked { key, current, .. } = revoked else {
        panic!("{revoked:?}");
    };
    let revoked_at = key.revoked_unix_ms.unwrap();
    assert_eq!(key.verify_until_unix_ms, Some(revoked_at + 2 * HOUR_MS));
    assert_eq!(current.max_session_lifetime_ms, Some(3 * HOUR_MS));

    // Every lifetime survives a reopen.
    drop(f);
    let store = backend.open(Arc::new(Recorder::default())).await;
    let stored: Vec<(String, Option<i64>)> = store
        .list_signing_keys()
        .await
        .unwrap()
        .into_iter()
        .map(|key| (key.key_id, key.max_session_lifetime_ms))
        .collect();
    assert_eq!(
        stored,
        [
            ("sk_5".to_owned(), Some(3 * HOUR_MS)),
            ("sk_4".to_owned(), Some(2 * HOUR_MS)),
            ("sk_3".to_owned(), None),
            ("sk_2".to_owned(), Some(2 * HOUR_MS)),
            ("sk_1".to_owned(), Some(HOUR_MS)),
        ]
    );
}

// Ceremonies.

fn ceremony(id: &str, expires_unix_ms: i64) -> NewCeremony {
    ceremony_of("192.0.2.1", id, expires_unix_ms)
}

fn ceremony_of(client: &str, id: &str, expires_unix_ms: i64) -> NewCeremony {
    NewCeremony {
        ceremony_id: id.into(),
        state_json: format!("{{\"ceremony\":\"{id}\"}}"),
        expires_unix_ms,
        client: client.into(),
    }
}

/// At most `capacity` ceremonies, with no cap per client.
fn at_most(capacity: usize) -> CeremonyLimits {
    CeremonyLimits {
        capacity,
        per_client: 0,
    }
}

fn found(id: &str) -> CeremonyTaken {
    CeremonyTaken::Found(ceremony(id, 0).state_json)
}

/// Ceremonies and the gateway registry are not replicated state: no event, no audit row.
async fn assert_nothing_replicated_or_audited(f: &Opened) {
    assert_eq!(f.store.log_bounds().await.unwrap().head, Revision::ZERO);
    assert!(f.recorder.events().is_empty());
    assert!(f.store.list_audit(10).await.unwrap().is_empty());
}

pub(crate) async fn a_ceremony_is_taken_exactly_once(backend: &dyn SuiteBackend) {
    let f = open(backend).await;
    let now = now_unix_ms();
    let put = |id: &str| {
        f.store
            .put_ceremony(ceremony(id, now + 60_000), at_most(10), now)
    };
    assert_eq!(put("cer_1").await.unwrap(), CeremonyPut::Kept);
    assert_eq!(
        f.store.take_ceremony("cer_1", now).await.unwrap(),
        found("cer_1")
    );
    assert_eq!(
        f.store.take_ceremony("cer_1", now).await.unwrap(),
        CeremonyTaken::Unknown,
        "a replayed finish"
    );
    assert_eq!(
        f.store.take_ceremony("cer_forged", now).await.unwrap(),
        CeremonyTaken::Unknown
    );

    // Two finishes at once: one finds it.
    assert_eq!(put("cer_2").await.unwrap(), CeremonyPut::Kept);
    let (one, two) = tokio::join!(
        f.store.take_ceremony("cer_2", now),
        f.store.take_ceremony("cer_2", now)
    );
    let mut outcomes = [one.unwrap(), two.unwrap()];
    outcomes.sort_by_key(|taken| matches!(taken, CeremonyTaken::Unknown));
    assert_eq!(outcomes, [found("cer_2"), CeremonyTaken::Unknown]);

    // The same id twice is a conflict, not a second ceremony.
    assert_eq!(put("cer_3").await.unwrap(), CeremonyPut::Kept);
    assert!(matches!(put("cer_3").await, Err(StoreError::Conflict(_))));
    assert_nothing_replicated_or_audited(&f).await;
}

pub(crate) async fn an_expired_ceremony_is_expired_once_then_unknown(backend: &dyn SuiteBackend) {
    let f = open(backend).await;
    let now = now_unix_ms();
    assert_eq!(
        f.store
            .put_ceremony(ceremony("cer_1", now + 10), at_most(10), now)
            .await
            .unwrap(),
        CeremonyPut::Kept
    );
    assert_eq!(
        f.store.take_ceremony("cer_1", now + 10).await.unwrap(),
        CeremonyTaken::Expired,
        "expired at its expiry instant"
    );
    assert_eq!(
        f.store.take_ceremony("cer_1", now).await.unwrap(),
        CeremonyTaken::Unknown,
        "taken once, even expired"
    );
    assert_nothing_replicated_or_audited(&f).await;
}

pub(crate) async fn ceremonies_are_capped_and_expired_ones_make_room(backend: &dyn SuiteBackend) {
    let f = open(backend).await;
    let now = now_unix_ms();
    let put = |id: &str, expires: i64, at: i64| {
        f.store.put_ceremony(ceremony(id, expires), at_most(2), at)
    };
    let kept = CeremonyPut::Kept;
    assert_eq!(put("cer_a", now + 1_000, now).await.unwrap(), kept);
    assert_eq!(put("cer_b", now + 60_000, now).await.unwrap(), kept);
    assert_eq!(
        put("cer_c", now + 60_000, now).await.unwrap(),
        CeremonyPut::Full
    );
    assert_eq!(
        f.store.take_ceremony("cer_c", now).await.unwrap(),
        CeremonyTaken::Unknown,
        "a refused ceremony is not kept"
    );

    // Once cer_a has expired it makes room, and is gone.
    assert_eq!(put("cer_c", now + 60_000, now + 1_000).await.unwrap(), kept);
    assert_eq!(
        f.store.take_ceremony("cer_a", now + 1_000).await.unwrap(),
        CeremonyTaken::Unknown
    );
    assert_eq!(
        put("cer_d", now + 60_000, now + 1_000).await.unwrap(),
        CeremonyPut::Full
    );

    // Pruning deletes expired ceremonies too: past their expiry, b and c are gone, so two new
    // ones fit even when judged at a time when b and c would still be live.
    f.store.prune(now + 60_000).await.unwrap();
    assert_eq!(put("cer_e", now + 60_000, now).await.unwrap(), kept);
    assert_eq!(put("cer_f", now + 60_000, now).await.unwrap(), kept);
    assert_eq!(
        f.store.take_ceremony("cer_b", now).await.unwrap(),
        CeremonyTaken::Unknown
    );
    assert_nothing_replicated_or_audited(&f).await;
}

/// One client (an address, or an IPv6 /64) may keep only so many unexpired ceremonies open;
/// the others are not affected, expired and finished ones free its slots, and the refusal
/// says when the first of its open ones expires.
pub(crate) async fn ceremonies_are_capped_per_client(backend: &dyn SuiteBackend) {
    let f = open(backend).await;
    let now = now_unix_ms();
    let limits = CeremonyLimits {
        capacity: 100,
        per_client: 2,
    };
    let (flooder, other) = ("2001:db8:1:2::", "192.0.2.7");
    let put = |client: &str, id: &str, expires: i64, at: i64| {
        f.store
            .put_ceremony(ceremony_of(client, id, expires), limits, at)
    };
    let kept = CeremonyPut::Kept;
    assert_eq!(
        put(flooder, "cer_a1", now + 1_000, now).await.unwrap(),
        kept
    );
    assert_eq!(
        put(flooder, "cer_a2", now + 60_000, now).await.unwrap(),
        kept
    );
    assert_eq!(
        put(flooder, "cer_a3", now + 60_000, now).await.unwrap(),
        CeremonyPut::ClientFull {
            next_expiry_unix_ms: now + 1_000
        }
    );
    assert_eq!(
        f.store.take_ceremony("cer_a3", now).await.unwrap(),
        CeremonyTaken::Unknown,
        "a refused ceremony is not kept"
    );
    // Another client is not counted with the flooder.
    assert_eq!(put(other, "cer_b1", now + 60_000, now).await.unwrap(), kept);
    assert_eq!(put(other, "cer_b2", now + 60_000, now).await.unwrap(), kept);

    // An expired ceremony no longer counts, even before anything deletes it.
    assert_eq!(
        put(flooder, "cer_a4", now + 60_000, now + 1_000)
            .await
            .unwrap(),
        kept
    );
    assert!(matches!(
        put(flooder, "cer_a5", now + 60_000, now + 1_000)
            .await
            .unwrap(),
        CeremonyPut::ClientFull { .. }
    ));
    // A finished (taken) ceremony frees its slot.
    assert_eq!(
        f.store.take_ceremony("cer_a2", now + 1_000).await.unwrap(),
        found("cer_a2")
    );
    assert_eq!(
        put(flooder, "cer_a5", now + 60_000, now + 1_000)
            .await
            .unwrap(),
        kept
    );

    // No per-client cap: only the table's capacity counts.
    let uncapped = f
        .store
        .put_ceremony(
            ceremony_of(flooder, "cer_a6", now + 60_000),
            at_most(100),
            now,
        )
        .await;
    assert_eq!(uncapped.unwrap(), kept);
    assert_nothing_replicated_or_audited(&f).await;
}

// The gateway registry.

fn gateway(gateway_id: &str, replica_id: &str, connected_unix_ms: i64) -> GatewayRecord {
    GatewayRecord {
        gateway_id: gateway_id.into(),
        replica_id: replica_id.into(),
        region: "eu-west".into(),
        address: "10.0.0.7:443".into(),
        version: "1.2.3".into(),
        applied: Revision(41),
        last_seen_unix_ms: connected_unix_ms + 5,
        connected_unix_ms,
        disconnected_unix_ms: None,
        staleness_ms: Some(120),
        propagation_bound_ms: 30_000,
        stale_policy: "fail_closed".into(),
        credential: format!("token:{gateway_id}"),
    }
}

fn published(record: GatewayRecord, replica_seen_unix_ms: i64) -> PublishedGateway {
    PublishedGateway {
        record,
        replica_seen_unix_ms,
    }
}

pub(crate) async fn gateways_are_published_listed_and_forgotten(backend: &dyn SuiteBackend) {
    let f = open(backend).await;
    let store = &*f.store;
    assert!(store.list_gateways().await.unwrap().is_empty());
    let a = gateway("gw_a", "rep_1", 100);
    let b = gateway("gw_b", "rep_1", 100);
    store
        .publish_gateways("rep_1", 1_000, &[b.clone(), a.clone()])
        .await
        .unwrap();
    assert_eq!(
        store.list_gateways().await.unwrap(),
        [published(a.clone(), 1_000), published(b.clone(), 1_000)],
        "ordered by id, with the replica's heartbeat"
    );

    // Another replica still reporting an older stream of gw_a does not replace it, but its
    // heartbeat counts; a newer stream of gw_b does replace it.
    let older = GatewayRecord {
        disconnected_unix_ms: Some(90),
        ..gateway("gw_a", "rep_2", 50)
    };
    store
        .publish_gateways("rep_2", 2_000, &[older])
        .await
        .unwrap();
    let moved = gateway("gw_b", "rep_2", 200);
    store
        .publish_gateways("rep_2", 3_000, std::slice::from_ref(&moved))
        .await
        .unwrap();
    assert_eq!(
        store.list_gateways().await.unwrap(),
        [published(a.clone(), 1_000), published(moved.clone(), 3_000)]
    );

    // The same stream reported again (a tie) is an update: here, its end.
    let ended = GatewayRecord {
        disconnected_unix_ms: Some(3_500),
        staleness_ms: None,
        applied: Revision(42),
        ..a
    };
    store
        .publish_gateways("rep_1", 4_000, std::slice::from_ref(&ended))
        .await
        .unwrap();
    // A heartbeat alone (no gateways) moves the replica's time only.
    store.publish_gateways("rep_2", 5_000, &[]).await.unwrap();
    assert_eq!(
        store.list_gateways().await.unwrap(),
        [published(ended.clone(), 4_000), published(moved, 5_000)]
    );

    // Rows last written before the cutoff are forgotten: gw_a at 4 000, gw_b at 3 000.
    assert_eq!(store.forget_gateways(3_000).await.unwrap(), 0);
    assert_eq!(store.forget_gateways(3_001).await.unwrap(), 1);
    assert_eq!(
        store.list_gateways().await.unwrap(),
        [published(ended, 4_000)]
    );
    assert_nothing_replicated_or_audited(&f).await;
}

// Operator tokens.

fn new_token(name: &str, hash: u8, scopes: &[&str], gateway_id: Option<&str>) -> NewToken {
    NewToken {
        name: name.into(),
        token_hash: [hash; 32],
        scopes: scopes.iter().map(|scope| (*scope).to_owned()).collect(),
        gateway_id: gateway_id.map(str::to_owned),
    }
}

pub(crate) async fn operator_tokens_are_found_by_hash_listed_and_revoked_with_audit_rows(
    backend: &dyn SuiteBackend,
) {
    let f = open(backend).await;
    let store = &*f.store;
    assert!(store.list_tokens().await.unwrap().is_empty());
    let before = now_unix_ms();
    let TokenCreated::Created(ci) = store
        .create_token(
            new_token("ci", 1, &["keys:create", "audit:read"], None),
            "admin",
        )
        .await
        .unwrap()
    else {
        panic!("ci not created");
    };
    assert_eq!(ci.scopes, ["keys:create", "audit:read"]);
    assert_eq!(
        (ci.gateway_id.as_deref(), ci.created_by.as_str()),
        (None, "admin")
    );
    assert!(ci.created_unix_ms >= before - 1_000, "{ci:?}");
    let TokenCreated::Created(edge) = store
        .create_token(new_token("edge-1", 2, &[], Some("edge-1")), "ci")
        .await
        .unwrap()
    else {
        panic!("edge-1 not created");
    };
    assert!(edge.scopes.is_empty());

    // A taken name is refused and writes nothing, whatever the new token's hash.
    assert_eq!(
        store
            .create_token(new_token("ci", 3, &["admin"], None), "admin")
            .await
            .unwrap(),
        TokenCreated::AlreadyExists
    );
    assert_eq!(store.token_by_hash([3; 32]).await.unwrap(), None);

    assert_eq!(
        store.token_by_hash([1; 32]).await.unwrap(),
        Some(ci.clone())
    );
    assert_eq!(
        store.token_by_hash([2; 32]).await.unwrap(),
        Some(edge.clone())
    );
    assert_eq!(store.token_by_hash([9; 32]).await.unwrap(), None);
    assert_eq!(
        store.list_tokens().await.unwrap(),
        [ci.clone(), edge.clone()],
        "ordered by name"
    );

    assert_eq!(store.revoke_token("nobody", "admin").await.unwrap(), None);
    assert_eq!(
        store.revoke_token("ci", "admin").await.unwrap(),
        Some(ci.clone())
    );
    assert_eq!(
        store.token_by_hash([1; 32]).await.unwrap(),
        None,
        "revoked at once"
    );
    assert_eq!(store.revoke_token("ci", "admin").await.unwrap(), None);
    assert_eq!(store.list_tokens().await.unwrap(), [edge]);
    // The name is free again, for a new secret.
    assert!(matches!(
        store
            .create_token(new_token("ci", 4, &["keys:read"], None), "admin")
            .await
            .unwrap(),
        TokenCreated::Created(_)
    ));
    assert_eq!(store.token_by_hash([1; 32]).await.unwrap(), None);

    // Nothing replicated; one audit row per change, naming the token, never its hash.
    assert_eq!(store.log_bounds().await.unwrap().head, Revision::ZERO);
    assert!(f.recorder.events().is_empty());
    let audit = store.list_audit(10).await.unwrap();
    let rows: Vec<(&str, &str, &str)> = audit
        .iter()
        .map(|e| (e.actor.as_str(), e.action.as_str(), e.target.as_str()))
        .collect();
    assert_eq!(
        rows,
        [
            ("admin", "token.create", "ci"),
            ("admin", "token.revoke", "ci"),
            ("ci", "token.create", "edge-1"),
            ("admin", "token.create", "ci"),
        ]
    );
    assert!(audit.iter().all(|e| e.revision == Revision::ZERO));
    let detail: serde_json::Value = serde_json::from_str(&audit[2].detail_json).unwrap();
    assert_eq!(detail["gatewayId"], "edge-1");
    let hex_of_hash = hex::encode([1u8; 32]);
    assert!(audit.iter().all(|e| !e.detail_json.contains(&hex_of_hash)));

    // Tokens survive reopening.
    drop(f);
    let f = open(backend).await;
    assert_eq!(
        f.store
            .token_by_hash([2; 32])
            .await
            .unwrap()
            .map(|t| t.name),
        Some("edge-1".to_owned())
    );
}
