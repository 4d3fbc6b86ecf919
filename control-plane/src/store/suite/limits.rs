//! The store suite's tests of limits per key: keys with limits, identities, credit balances,
//! leases, refills and write-offs, through the [`Store`] traits only.

use std::sync::Arc;

use keygate_proto::time::now_unix_ms;
use keygate_proto::{
    Change, Holder, Identity, KeyHash, KeyId, KeyLimits, Meta, RefillSpec, Revision,
};

use super::{SuiteBackend, all_events, open};
use crate::store::{
    CreditState, CreditsChange, IdentityUpdate, KeyQuery, LeaseGranted, LimitsUpdate, NewIdentity,
    NewKey, NewLease, RefillChange, Reroll, Store, StoreError, UsageRow,
};

const MINUTE_MS: u64 = 60_000;

fn limits(identity: Option<&str>) -> KeyLimits {
    KeyLimits {
        ratelimits: vec![
            "requests=100/1s".parse().unwrap(),
            "tokens=10000/1m".parse().unwrap(),
        ],
        credits: false,
        permissions: vec!["orders.read".into(), "orders.write".into()],
        identity: identity.map(str::to_owned),
    }
}

/// A key for "alice" with `limits`, and credits with `refill` when `credits` is set.
fn new_key(limits: KeyLimits, credits: Option<u64>, refill: Option<RefillSpec>) -> NewKey {
    let id = KeyId::generate();
    NewKey {
        id,
        hash: KeyHash(*blake3::hash(id.to_string().as_bytes()).as_bytes()),
        owner: "alice".into(),
        name: "ci".into(),
        start: "kg_abcd".into(),
        enabled: true,
        created_unix_ms: now_unix_ms(),
        expires_unix_ms: None,
        meta: Meta::new(),
        limits: KeyLimits {
            credits: credits.is_some(),
            ..limits
        },
        credits,
        refill,
    }
}

fn lease(id: &str, holder: &Holder, wanted: u64, share_divisor: u64) -> NewLease {
    NewLease {
        lease_id: id.into(),
        holder: holder.clone(),
        gateway_id: "gw-1".into(),
        wanted,
        share_divisor,
        expires_unix_ms: now_unix_ms() + 10_000,
    }
}

fn identity(id: &str, credits: Option<u64>, refill: Option<RefillSpec>) -> NewIdentity {
    NewIdentity {
        id: id.into(),
        ratelimits: vec!["requests=1000/1m".parse().unwrap()],
        credits,
        refill,
        created_unix_ms: now_unix_ms(),
    }
}

fn credit_state(remaining: u64, leased: u64) -> CreditState {
    CreditState {
        remaining,
        leased,
        refill: None,
        next_refill_unix_ms: None,
    }
}

/// The changes of the events after `after`.
async fn changes_after(store: &dyn Store, after: Revision) -> Vec<Change> {
    store
        .events_after(after, 1_000)
        .await
        .unwrap()
        .into_iter()
        .map(|event| event.change)
        .collect()
}

async fn head(store: &dyn Store) -> Revision {
    store.log_bounds().await.unwrap().head
}

pub(crate) async fn keys_keep_their_limits_credits_and_identity(backend: &dyn SuiteBackend) {
    let f = open(backend).await;
    let refill = RefillSpec {
        amount: 1_000,
        interval_ms: MINUTE_MS,
    };
    let created = f
        .store
        .create_key(
            new_key(limits(Some("acme")), Some(500), Some(refill)),
            "admin",
        )
        .await
        .unwrap();
    assert_eq!(
        created.credits,
        Some(CreditState {
            remaining: 500,
            leased: 0,
            refill: Some(refill),
            next_refill_unix_ms: Some(created.created_unix_ms + 60_000),
        })
    );
    assert!(created.limits.credits);
    assert_eq!(created.revision, Revision(2), "after the identity's event");
    let acme = Identity {
        id: "acme".into(),
        ratelimits: Vec::new(),
        credits: false,
    };
    assert_eq!(
        changes_after(&*f.store, Revision::ZERO).await,
        [
            Change::IdentityUpserted(acme.clone()),
            Change::KeyUpserted(created.replica()),
        ],
        "the named identity is created first; no CreditsChanged on create"
    );
    assert_eq!(created.replica().limits, created.limits);

    // Read back every way, with the balance.
    assert_eq!(
        f.store.get_key(created.id).await.unwrap().as_ref(),
        Some(&created)
    );
    let (by_hash, _) = f.store.key_by_hash(created.hash).await.unwrap();
    assert_eq!(by_hash.as_ref(), Some(&created));
    let listed = f
        .store
        .list_keys(KeyQuery {
            owner: None,
            after: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(listed, std::slice::from_ref(&created));
    assert_eq!(
        f.store.credits(&created.holder()).await.unwrap(),
        created.credits
    );

    // A second key of the same identity does not create it again; a plain key stays plain.
    let second = f
        .store
        .create_key(new_key(limits(Some("acme")), None, None), "admin")
        .await
        .unwrap();
    let plain = f
        .store
        .create_key(new_key(KeyLimits::default(), None, None), "admin")
        .await
        .unwrap();
    assert_eq!(
        (second.revision, plain.revision),
        (Revision(3), Revision(4))
    );
    assert_eq!(
        (second.credits.clone(), plain.credits.clone()),
        (None, None)
    );
    assert!(plain.limits.is_empty());
    let identity = f.store.get_identity("acme").await.unwrap().unwrap();
    assert_eq!(
        (identity.replica(), identity.revision),
        (acme.clone(), Revision(1))
    );

    let snapshot = f.store.snapshot().await.unwrap();
    assert_eq!(snapshot.identities, std::slice::from_ref(&acme));
    let mut expected = vec![created.replica(), second.replica(), plain.replica()];
    expected.sort_by_key(|key| key.id);
    assert_eq!(snapshot.keys, expected);
    drop(f);

    // And from the database alone, after a reopen.
    let store = backend.open(Arc::new(super::Recorder::default())).await;
    assert_eq!(store.get_key(created.id).await.unwrap(), Some(created));
    assert_eq!(store.snapshot().await.unwrap().identities, [acme]);
}

pub(crate) async fn key_limits_change_field_by_field_with_their_events(backend: &dyn SuiteBackend) {
    let f = open(backend).await;
    let key = f
        .store
        .create_key(new_key(KeyLimits::default(), None, None), "admin")
        .await
        .unwrap();
    let now = now_unix_ms();
    let update = |update: LimitsUpdate| {
        let store = Arc::clone(&f.store);
        async move { store.update_key_limits(key.id, update, now, "admin").await }
    };

    // Each replicated field: one KeyUpserted carrying it.
    let ratelimits = limits(None).ratelimits;
    let before = head(&*f.store).await;
    let changed = update(LimitsUpdate {
        ratelimits: Some(ratelimits.clone()),
        ..LimitsUpdate::default()
    })
    .await
    .unwrap();
    assert_eq!(changed.limits.ratelimits, ratelimits);
    assert_eq!(changed.revision, before.next());
    assert_eq!(
        changes_after(&*f.store, before).await,
        [Change::KeyUpserted(changed.replica())]
    );

    let before = head(&*f.store).await;
    let changed = update(LimitsUpdate {
        permissions: Some(vec!["orders.read".into()]),
        ..LimitsUpdate::default()
    })
    .await
    .unwrap();
    assert_eq!(changed.limits.permissions, ["orders.read"]);
    assert_eq!(changed.limits.ratelimits, ratelimits, "kept");
    assert_eq!(
        changes_after(&*f.store, before).await,
        [Change::KeyUpserted(changed.replica())]
    );

    // A new identity is created first.
    let before = head(&*f.store).await;
    let changed = update(LimitsUpdate {
        identity: Some(Some("acme".into())),
        ..LimitsUpdate::default()
    })
    .await
    .unwrap();
    assert_eq!(changed.limits.identity.as_deref(), Some("acme"));
    assert_eq!(
        changes_after(&*f.store, before).await,
        [
            Change::IdentityUpserted(Identity {
                id: "acme".into(),
                ratelimits: Vec::new(),
                credits: false,
            }),
            Change::KeyUpserted(changed.replica()),
        ]
    );

    // Credits set on a key without: the flag, then the balance.
    let before = head(&*f.store).await;
    let changed = update(LimitsUpdate {
        credits: CreditsChange::Set(50),
        ..LimitsUpdate::default()
    })
    .await
    .unwrap();
    assert!(changed.limits.credits);
    assert_eq!(changed.credits, Some(credit_state(50, 0)));
    assert_eq!(
        changes_after(&*f.store, before).await,
        [
            Change::KeyUpserted(changed.replica()),
            Change::CreditsChanged {
                holder: key.holder(),
                remaining: 50,
            },
        ]
    );

    // Set again while gateways hold 20: the holder has 100 counting them.
    let granted = f
        .store
        .lease_credits(lease("lease_a", &key.holder(), 20, 1))
        .await
        .unwrap();
    assert_eq!(
        granted,
        Some(LeaseGranted {
            granted: 20,
            remaining: 30
        })
    );
    let before = head(&*f.store).await;
    let changed = update(LimitsUpdate {
        credits: CreditsChange::Set(100),
        ..LimitsUpdate::default()
    })
    .await
    .unwrap();
    assert_eq!(changed.credits, Some(credit_state(80, 20)));
    assert_eq!(
        changes_after(&*f.store, before).await,
        [Change::CreditsChanged {
            holder: key.holder(),
            remaining: 80,
        }],
        "the flag did not change: no KeyUpserted"
    );

    // A refill replicates nothing.
    let refill = RefillSpec {
        amount: 100,
        interval_ms: MINUTE_MS,
    };
    let before = head(&*f.store).await;
    let changed = update(LimitsUpdate {
        refill: RefillChange::Set(refill),
        ..LimitsUpdate::default()
    })
    .await
    .unwrap();
    let state = changed.credits.clone().unwrap();
    assert_eq!(
        (state.remaining, state.refill, state.next_refill_unix_ms),
        (80, Some(refill), Some(now + 60_000))
    );
    assert_eq!(head(&*f.store).await, before);
    assert_eq!(
        f.store.list_audit(1).await.unwrap()[0].revision,
        Revision::ZERO
    );

    // Unlimited again: the balance and its leases go; the lease comes back to nothing.
    let before = head(&*f.store).await;
    let changed = update(LimitsUpdate {
        credits: CreditsChange::Clear,
        identity: Some(None),
        ..LimitsUpdate::default()
    })
    .await
    .unwrap();
    assert!(!changed.limits.credits && changed.limits.identity.is_none());
    assert_eq!(changed.credits, None);
    assert_eq!(
        changes_after(&*f.store, before).await,
        [Change::KeyUpserted(changed.replica())]
    );
    assert_eq!(f.store.credits(&key.holder()).await.unwrap(), None);
    assert!(!f.store.return_lease("lease_a", 20).await.unwrap());
    assert_eq!(f.store.get_key(key.id).await.unwrap(), Some(changed));

    // One audit row per update, all `key.update`.
    let audit = f.store.list_audit(100).await.unwrap();
    let updates = audit
        .iter()
        .filter(|row| row.action == "key.update")
        .count();
    assert_eq!(updates, 7);
    let unknown = KeyId::generate();
    let error = f
        .store
        .update_key_limits(unknown, LimitsUpdate::default(), now, "admin")
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::KeyNotFound(id) if id == unknown));
    assert_eq!(all_events(&*f.store).await, f.recorder.events());
}

pub(crate) async fn identities_are_created_changed_listed_and_deleted(backend: &dyn SuiteBackend) {
    let f = open(backend).await;
    let created = f
        .store
        .create_identity(identity("acme", Some(300), None), "admin")
        .await
        .unwrap();
    let holder = Holder::Identity("acme".into());
    assert_eq!(created.credits, Some(credit_state(300, 0)));
    assert_eq!(
        changes_after(&*f.store, Revision::ZERO).await,
        [
            Change::IdentityUpserted(created.replica()),
            Change::CreditsChanged {
                holder: holder.clone(),
                remaining: 300,
            },
        ]
    );
    assert!(created.replica().credits);
    assert_eq!(
        f.store.get_identity("acme").await.unwrap(),
        Some(created.clone())
    );
    let error = f
        .store
        .create_identity(identity("acme", None, None), "admin")
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Conflict(_)), "{error}");

    // Rate limits changed: one IdentityUpserted.
    let before = head(&*f.store).await;
    let now = now_unix_ms();
    let ratelimits = vec!["requests=5/1s".parse().unwrap()];
    let changed = f
        .store
        .update_identity(
            "acme",
            IdentityUpdate {
                ratelimits: Some(ratelimits.clone()),
                ..IdentityUpdate::default()
            },
            now,
            "admin",
        )
        .await
        .unwrap();
    assert_eq!(changed.ratelimits, ratelimits);
    assert_eq!(changed.credits, created.credits, "kept");
    assert_eq!(
        changes_after(&*f.store, before).await,
        [Change::IdentityUpserted(changed.replica())]
    );
    // Credits cleared: the replicated flag goes.
    let cleared = f
        .store
        .update_identity(
            "acme",
            IdentityUpdate {
                credits: CreditsChange::Clear,
                ..IdentityUpdate::default()
            },
            now,
            "admin",
        )
        .await
        .unwrap();
    assert_eq!(cleared.credits, None);
    assert!(!cleared.replica().credits);
    assert_eq!(f.store.credits(&holder).await.unwrap(), None);
    let error = f
        .store
        .update_identity("nobody", IdentityUpdate::default(), now, "admin")
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::IdentityNotFound(id) if id == "nobody"));

    // Pages in id order.
    for id in ["carol", "bob"] {
        f.store
            .create_identity(identity(id, None, None), "admin")
            .await
            .unwrap();
    }
    let ids = |page: Vec<crate::store::IdentityRecord>| {
        page.into_iter()
            .map(|identity| identity.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(f.store.list_identities(None, 2).await.unwrap()),
        ["acme", "bob"]
    );
    assert_eq!(
        ids(f.store.list_identities(Some("bob"), 10).await.unwrap()),
        ["carol"]
    );
    assert_eq!(f.store.snapshot().await.unwrap().identities.len(), 3);

    // In use while a key names it.
    let key = f
        .store
        .create_key(new_key(KeyLimits::default(), None, None), "admin")
        .await
        .unwrap();
    f.store
        .update_key_limits(
            key.id,
            LimitsUpdate {
                identity: Some(Some("acme".into())),
                ..LimitsUpdate::default()
            },
            now,
            "admin",
        )
        .await
        .unwrap();
    let before = head(&*f.store).await;
    let error = f.store.delete_identity("acme", "admin").await.unwrap_err();
    assert!(
        matches!(&error, StoreError::IdentityInUse { id, keys: 1 } if id == "acme"),
        "{error}"
    );
    assert_eq!(head(&*f.store).await, before, "nothing changed");
    f.store.delete_key(key.id, "admin").await.unwrap();
    let revision = f.store.delete_identity("acme", "admin").await.unwrap();
    assert_eq!(
        changes_after(&*f.store, Revision(revision.0 - 1)).await,
        [Change::IdentityDeleted { id: "acme".into() }]
    );
    assert_eq!(f.store.get_identity("acme").await.unwrap(), None);
    let error = f.store.delete_identity("acme", "admin").await.unwrap_err();
    assert!(matches!(error, StoreError::IdentityNotFound(_)), "{error}");
    let remaining: Vec<String> = f
        .store
        .snapshot()
        .await
        .unwrap()
        .identities
        .into_iter()
        .map(|identity| identity.id)
        .collect();
    assert_eq!(remaining, ["bob", "carol"]);
    let actions: Vec<String> = f
        .store
        .list_audit(100)
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.action)
        .filter(|action| action.starts_with("identity."))
        .collect();
    assert_eq!(
        actions,
        [
            "identity.delete",
            "identity.create",
            "identity.create",
            "identity.update",
            "identity.update",
            "identity.create",
        ],
        "one row per change that happened, newest first"
    );
    assert_eq!(all_events(&*f.store).await, f.recorder.events());
}

pub(crate) async fn leases_never_exceed_the_balance_and_come_back_once(backend: &dyn SuiteBackend) {
    let f = open(backend).await;
    let key = f
        .store
        .create_key(new_key(KeyLimits::default(), Some(10), None), "admin")
        .await
        .unwrap();
    let holder = key.holder();
    let before = head(&*f.store).await;
    let mut granted = Vec::new();
    // (wanted, share divisor) → granted: the share is ceil(remaining / divisor), at least 1.
    for (index, (wanted, divisor, expected, remaining)) in [
        (4, 1, 4, 6),
        (100, 2, 3, 3),
        (100, 10, 1, 2),
        (100, 1, 2, 0),
        (100, 1, 0, 0),
    ]
    .into_iter()
    .enumerate()
    {
        let got = f
            .store
            .lease_credits(lease(&format!("lease_{index}"), &holder, wanted, divisor))
            .await
            .unwrap();
        assert_eq!(
            got,
            Some(LeaseGranted {
                granted: expected,
                remaining
            }),
            "lease {index}"
        );
        granted.push(expected);
    }
    assert_eq!(
        f.store.credits(&holder).await.unwrap(),
        Some(credit_state(0, 10)),
        "nothing recorded for the empty grant"
    );
    // A return gives back at most what the lease held, once.
    assert!(f.store.return_lease("lease_0", 1_000).await.unwrap());
    assert_eq!(
        f.store.credits(&holder).await.unwrap(),
        Some(credit_state(4, 6))
    );
    assert!(!f.store.return_lease("lease_0", 4).await.unwrap());
    assert!(
        !f.store.return_lease("lease_4", 1).await.unwrap(),
        "never recorded"
    );
    assert!(!f.store.return_lease("lease_unknown", 1).await.unwrap());
    assert!(f.store.return_lease("lease_1", 1).await.unwrap());
    assert_eq!(
        f.store.credits(&holder).await.unwrap(),
        Some(credit_state(5, 3))
    );
    // A holder without credits leases nothing.
    let plain = Holder::Identity("nobody".into());
    assert_eq!(
        f.store
            .lease_credits(lease("lease_x", &plain, 5, 1))
            .await
            .unwrap(),
        None
    );
    assert_eq!(f.store.credits(&plain).await.unwrap(), None);
    assert_eq!(
        head(&*f.store).await,
        before,
        "leases and returns are not events"
    );

    // Deleting the key drops its balance and leases.
    f.store.delete_key(key.id, "admin").await.unwrap();
    assert_eq!(f.store.credits(&holder).await.unwrap(), None);
    assert!(!f.store.return_lease("lease_2", 1).await.unwrap());
}

pub(crate) async fn concurrent_leases_never_sum_above_the_balance(backend: &dyn SuiteBackend) {
    const BALANCE: u64 = 500;
    const TASKS: usize = 12;
    const LEASES: usize = 20;
    let f = open(backend).await;
    let identity = f
        .store
        .create_identity(identity("acme", Some(BALANCE), None), "admin")
        .await
        .unwrap();
    let holder = identity.holder();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let store = Arc::clone(&f.store);
        let holder = holder.clone();
        tasks.spawn(async move {
            let mut granted = 0;
            for round in 0..LEASES {
                let lease_id = format!("lease_{task}_{round}");
                let got = store
                    .lease_credits(lease(&lease_id, &holder, 7, 3))
                    .await
                    .unwrap()
                    .unwrap();
                granted += got.granted;
                // Every third lease comes back half spent, racing the other tasks' grants.
                if round % 3 == 0 && got.granted > 0 {
                    let unspent = got.granted / 2;
                    assert!(store.return_lease(&lease_id, unspent).await.unwrap());
                    granted -= unspent;
                }
            }
            granted
        });
    }
    let mut spent = 0;
    while let Some(granted) = tasks.join_next().await {
        spent += granted.unwrap();
    }
    let state = f.store.credits(&holder).await.unwrap().unwrap();
    assert!(spent <= BALANCE, "granted {spent} of {BALANCE}");
    assert_eq!(
        state.remaining + spent,
        BALANCE,
        "what was granted and not given back is exactly what left the balance: {state:?}"
    );
    // The leases still recorded hold what was granted, less what came back, less the full
    // leases that were returned.
    assert!(state.leased <= spent, "{state:?}");
    // So many asks for 7 of 500 drain it: the last grants were shares of what was left.
    assert!(spent > BALANCE / 2, "{spent}");
}

pub(crate) async fn refills_set_the_balance_to_the_amount_less_what_is_leased(
    backend: &dyn SuiteBackend,
) {
    let f = open(backend).await;
    let refill = RefillSpec {
        amount: 50,
        interval_ms: 1_000,
    };
    let acme = f
        .store
        .create_identity(identity("acme", Some(100), Some(refill)), "admin")
        .await
        .unwrap();
    let start = acme.created_unix_ms;
    let key = f
        .store
        .create_key(
            NewKey {
                created_unix_ms: start,
                ..new_key(KeyLimits::default(), Some(7), Some(refill))
            },
            "admin",
        )
        .await
        .unwrap();
    let plain = f
        .store
        .create_identity(identity("plain", Some(5), None), "admin")
        .await
        .unwrap();
    let granted = f
        .store
        .lease_credits(lease("lease_a", &acme.holder(), 30, 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(granted.granted, 30);

    assert!(
        f.store
            .refill_due(start + 999, "refill")
            .await
            .unwrap()
            .is_empty()
    );
    let before = head(&*f.store).await;
    let mut refilled = f.store.refill_due(start + 1_000, "refill").await.unwrap();
    refilled.sort();
    let mut expected = vec![acme.holder(), key.holder()];
    expected.sort();
    assert_eq!(refilled, expected);
    let acme_after = f.store.credits(&acme.holder()).await.unwrap().unwrap();
    assert_eq!(
        (
            acme_after.remaining,
            acme_after.leased,
            acme_after.next_refill_unix_ms
        ),
        (20, 30, Some(start + 2_000)),
        "50 counting the 30 leased"
    );
    let key_after = f.store.credits(&key.holder()).await.unwrap().unwrap();
    assert_eq!((key_after.remaining, key_after.leased), (50, 0));
    let mut changes = changes_after(&*f.store, before).await;
    changes.sort_by_key(|change| match change {
        Change::CreditsChanged { holder, .. } => holder.clone(),
        _ => Holder::Identity(String::new()),
    });
    let mut expected_changes = vec![
        Change::CreditsChanged {
            holder: acme.holder(),
            remaining: 20,
        },
        Change::CreditsChanged {
            holder: key.holder(),
            remaining: 50,
        },
    ];
    expected_changes.sort_by_key(|change| match change {
        Change::CreditsChanged { holder, .. } => holder.clone(),
        _ => Holder::Identity(String::new()),
    });
    assert_eq!(changes, expected_changes);
    let audit = f.store.list_audit(2).await.unwrap();
    assert!(
        audit
            .iter()
            .all(|row| row.action == "credits.refill" && row.actor == "refill")
    );

    // Not due again until the next interval; a late run refills once, past now.
    assert!(
        f.store
            .refill_due(start + 1_500, "refill")
            .await
            .unwrap()
            .is_empty()
    );
    let late = f.store.refill_due(start + 5_500, "refill").await.unwrap();
    assert_eq!(late.len(), 2);
    let acme_late = f.store.credits(&acme.holder()).await.unwrap().unwrap();
    assert_eq!(acme_late.next_refill_unix_ms, Some(start + 6_000));
    assert_eq!(
        f.store.credits(&plain.holder()).await.unwrap(),
        Some(credit_state(5, 0)),
        "no refill rule: never refilled"
    );
    assert_eq!(all_events(&*f.store).await, f.recorder.events());
}

pub(crate) async fn expired_leases_are_written_off_and_never_come_back(backend: &dyn SuiteBackend) {
    let f = open(backend).await;
    let key = f
        .store
        .create_key(new_key(KeyLimits::default(), Some(40), None), "admin")
        .await
        .unwrap();
    let expires = now_unix_ms() + 10_000;
    for (id, wanted) in [("lease_a", 10), ("lease_b", 5)] {
        f.store
            .lease_credits(NewLease {
                expires_unix_ms: expires,
                ..lease(id, &key.holder(), wanted, 1)
            })
            .await
            .unwrap();
    }
    f.store
        .lease_credits(NewLease {
            expires_unix_ms: expires + 60_000,
            ..lease("lease_c", &key.holder(), 1, 1)
        })
        .await
        .unwrap();
    assert_eq!(
        f.store.write_off_leases(expires).await.unwrap(),
        0,
        "strictly before"
    );
    assert_eq!(f.store.write_off_leases(expires + 1).await.unwrap(), 15);
    assert!(!f.store.return_lease("lease_a", 10).await.unwrap());
    assert_eq!(
        f.store.credits(&key.holder()).await.unwrap(),
        Some(credit_state(24, 1)),
        "written off credits count as spent"
    );
    assert!(f.store.return_lease("lease_c", 1).await.unwrap());
}

pub(crate) async fn a_reroll_moves_the_balance_and_keeps_the_limits(backend: &dyn SuiteBackend) {
    let f = open(backend).await;
    let refill = RefillSpec {
        amount: 100,
        interval_ms: MINUTE_MS,
    };
    let old = f
        .store
        .create_key(
            new_key(limits(Some("acme")), Some(100), Some(refill)),
            "admin",
        )
        .await
        .unwrap();
    f.store
        .lease_credits(lease("lease_old", &old.holder(), 10, 1))
        .await
        .unwrap();
    let now = now_unix_ms();
    let new_id = KeyId::generate();
    let rerolled = f
        .store
        .reroll_key(
            Reroll {
                old_id: old.id,
                new_id,
                new_hash: KeyHash([0xaa; 32]),
                new_start: "kg_wxyz".into(),
                now_unix_ms: now,
                old_expires_unix_ms: now + 60_000,
                grace_ms: 60_000,
            },
            "admin",
        )
        .await
        .unwrap();
    let new_key = rerolled.new_key;
    assert_eq!(new_key.limits, old.limits, "a reroll does not lift limits");
    let moved = old.credits.clone().map(|state| CreditState {
        remaining: 90,
        leased: 10,
        ..state
    });
    assert_eq!(
        f.store.get_key(new_id).await.unwrap().unwrap().credits,
        moved
    );
    let old_now = f.store.get_key(old.id).await.unwrap().unwrap();
    assert!(old_now.limits.credits, "the old key still spends credits");
    assert_eq!(old_now.credits, Some(credit_state(0, 0)));
    assert_eq!(rerolled.old_key, old_now);
    assert_eq!(
        f.store
            .lease_credits(lease("lease_late", &old.holder(), 5, 1))
            .await
            .unwrap(),
        Some(LeaseGranted {
            granted: 0,
            remaining: 0
        }),
        "the old key gets nothing more"
    );
    // What gateways return of the old key's lease lands on the balance that counts.
    assert!(f.store.return_lease("lease_old", 10).await.unwrap());
    assert_eq!(
        f.store.credits(&new_key.holder()).await.unwrap(),
        Some(CreditState {
            remaining: 100,
            leased: 0,
            ..moved.unwrap()
        })
    );
    f.store.delete_key(old.id, "admin").await.unwrap();
    assert_eq!(f.store.credits(&old.holder()).await.unwrap(), None);
    assert!(f.store.credits(&new_key.holder()).await.unwrap().is_some());
    f.store.delete_key(new_id, "admin").await.unwrap();
    assert_eq!(f.store.credits(&new_key.holder()).await.unwrap(), None);
}

pub(crate) async fn rate_usage_keeps_the_latest_count_and_is_read_by_the_other_replicas(
    backend: &dyn SuiteBackend,
) {
    let f = open(backend).await;
    let row = |gateway: &str, start: i64, used: u64| UsageRow {
        holder: Holder::Identity("acme".into()),
        limit: "requests".into(),
        gateway_id: gateway.into(),
        window_start_unix_ms: start,
        used,
    };
    let store = &f.store;
    store
        .publish_usage(
            "cp-1",
            1_000,
            &[row("gw-1", 60_000, 5), row("gw-2", 60_000, 7)],
        )
        .await
        .unwrap();
    // A smaller count of the same window (a late write) and an earlier window change nothing.
    store
        .publish_usage("cp-1", 1_100, &[row("gw-1", 60_000, 3), row("gw-2", 0, 90)])
        .await
        .unwrap();
    assert_eq!(
        store.read_usage("cp-2", 0).await.unwrap(),
        [row("gw-1", 60_000, 5), row("gw-2", 60_000, 7)]
    );
    assert!(
        store.read_usage("cp-1", 0).await.unwrap().is_empty(),
        "a replica does not read its own rows"
    );
    // A larger count and a later window replace; `since` skips rows written before it.
    store
        .publish_usage(
            "cp-1",
            2_000,
            &[row("gw-1", 60_000, 9), row("gw-2", 61_000, 1)],
        )
        .await
        .unwrap();
    assert_eq!(
        store.read_usage("cp-2", 2_000).await.unwrap(),
        [row("gw-1", 60_000, 9), row("gw-2", 61_000, 1)]
    );
    assert!(store.read_usage("cp-2", 2_001).await.unwrap().is_empty());
    // The gateway moved to cp-2: its next count is cp-2's row, which cp-1 now reads.
    store
        .publish_usage("cp-2", 3_000, &[row("gw-1", 60_000, 12)])
        .await
        .unwrap();
    assert_eq!(
        store.read_usage("cp-1", 0).await.unwrap(),
        [row("gw-1", 60_000, 12)]
    );
    assert_eq!(store.forget_usage(2_001).await.unwrap(), 1, "gw-2's row");
    assert_eq!(store.read_usage("cp-3", 0).await.unwrap().len(), 1);
}
