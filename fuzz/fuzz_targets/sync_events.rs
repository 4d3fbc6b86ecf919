//! What the sync client does with whatever the stream delivers: arbitrary sequences of events
//! (at any revision), snapshots (at any revision, with any keys and session state), looked-up
//! keys (the miss path) and raw wire events (prost bytes → `Event::try_from` → apply), against
//! `keygate_proxy::Replica`, checked after every step against a model made of plain
//! `HashMap`s.
//!
//! Properties (ARCHITECTURE.md, "Invariants"; `replica.rs`):
//! - never a panic;
//! - an event is applied only when it is `applied + 1`; anything else is refused as a `Gap`
//!   naming both revisions and changes nothing; events never move the applied revision
//!   backwards, and a snapshot moves it to the snapshot's revision exactly;
//! - a looked-up key is inserted only when newer than the applied revision, and the revision
//!   does not move;
//! - every key's state (enabled, expiry, id, owner, meta) equals the model's, where the model
//!   keeps, per key, the newest information it was given: an accepted event, a snapshot (which
//!   replaces everything except looked-up keys newer than it that the stream has not caught up
//!   with), or an accepted lookup;
//! - the session state (signing keys, revoked sessions and passkeys, user states) equals the
//!   model's, through the same `SessionView` the verifier reads;
//! - a domain event survives the wire form: `Event::try_from(pb::Event::from(&e)) == e`.

#![no_main]

use std::collections::HashMap;

use arbitrary::{Arbitrary, Unstructured};
use keygate_proto::{
    Change, Event, KeyHash, KeyId, Meta, PasskeyRevocation, ReplicaKey, Revision,
    SessionRevocation, SessionVerifyingKey, UserState, base62, pb,
};
use keygate_proxy::sessions::{SessionIdentity, SigningKey};
use keygate_proxy::{Replica, Snapshot};
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// Keys are drawn from a small pool so that sequences keep hitting the same ones.
const KEYS: usize = 6;
const OWNERS: [&str; 3] = ["alice", "bob", ""];
const IDS: [&str; 3] = ["a", "b", "c"];

#[derive(Arbitrary, Debug, Clone, Copy)]
enum At {
    /// `applied + 1`: the only revision an event may have.
    Next,
    Same,
    Ahead(u8),
    Behind(u8),
    Exactly(u64),
}

impl At {
    fn resolve(self, applied: u64) -> u64 {
        match self {
            At::Next => applied.wrapping_add(1),
            At::Same => applied,
            At::Ahead(n) => applied.saturating_add(2 + u64::from(n)),
            At::Behind(n) => applied.saturating_sub(1 + u64::from(n)),
            At::Exactly(revision) => revision,
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
struct KeyInput {
    slot: u8,
    id: u128,
    owner: u8,
    enabled: bool,
    expires_unix_ms: Option<i64>,
    meta: Vec<(String, String)>,
}

#[derive(Arbitrary, Debug, Clone)]
enum ChangeInput {
    Upsert(KeyInput),
    Delete {
        slot: u8,
        id: u128,
    },
    SigningKey {
        id: u8,
        public_key: [u8; 32],
        created: i64,
        until: Option<i64>,
    },
    SessionRevoked {
        id: u8,
        user: u8,
        prune_after: i64,
    },
    PasskeyRevoked {
        id: u8,
        user: u8,
        revoked: i64,
        prune_after: i64,
    },
    User {
        id: u8,
        disabled: bool,
        revoked_before: i64,
        prune_after: i64,
    },
}

#[derive(Arbitrary, Debug)]
enum Op {
    Event {
        at: At,
        committed_unix_ms: i64,
        change: ChangeInput,
    },
    Snapshot {
        at: At,
        expected_keys: u16,
        items: Vec<ChangeInput>,
    },
    LookedUp {
        at: At,
        key: KeyInput,
    },
    Wire(Vec<u8>),
}

/// Inputs starting with this are a script, one operation per line (see [`script`]): readable
/// seeds, which the fuzzer mutates as text.
const SCRIPT: &[u8] = b"script\n";

fuzz_target!(|data: &[u8]| {
    let ops = match data.strip_prefix(SCRIPT) {
        Some(text) => script(&String::from_utf8_lossy(text)),
        None => match Vec::<Op>::arbitrary_take_rest(Unstructured::new(data)) {
            Ok(ops) => ops,
            Err(_) => return,
        },
    };
    run(ops);
});

/// Operations from lines such as:
///
/// ```text
/// event next upsert 1 0 1 1900000000000   (slot, owner, enabled, [expiry])
/// event +3 delete 1                       (revisions: next, same, +N ahead, -N behind, =N)
/// event next signing 0 [until]            (signing key, session revocations, user state)
/// event next revoke-session 1
/// event next revoke-passkey 2
/// event next user 0 1 0                   (id, disabled, sessions revoked before)
/// snapshot =10 upsert 1 0 1 | signing 0   (items separated by |)
/// lookup +2 3 1 0                         (a looked-up key: slot, owner, enabled)
/// ```
///
/// Lines that do not parse are skipped.
fn script(text: &str) -> Vec<Op> {
    text.lines().filter_map(script_line).collect()
}

fn script_line(line: &str) -> Option<Op> {
    let mut words = line.split_whitespace();
    let verb = words.next()?;
    let at = match words.next()? {
        "next" => At::Next,
        "same" => At::Same,
        other => {
            let (sign, number) = other.split_at_checked(1)?;
            let number: u64 = number.parse().ok()?;
            match sign {
                "+" => At::Ahead(u8::try_from(number.saturating_sub(2)).ok()?),
                "-" => At::Behind(u8::try_from(number.saturating_sub(1)).ok()?),
                "=" => At::Exactly(number),
                _ => return None,
            }
        }
    };
    let rest: Vec<&str> = words.collect();
    match verb {
        "event" => Some(Op::Event {
            at,
            committed_unix_ms: 0,
            change: script_change(&rest)?,
        }),
        "snapshot" => Some(Op::Snapshot {
            at,
            expected_keys: 0,
            items: rest
                .split(|word| *word == "|")
                .filter_map(script_change)
                .collect(),
        }),
        "lookup" => {
            let mut words = vec!["upsert"];
            words.extend(&rest);
            match script_change(&words)? {
                ChangeInput::Upsert(key) => Some(Op::LookedUp { at, key }),
                _ => None,
            }
        }
        _ => None,
    }
}

fn script_change(words: &[&str]) -> Option<ChangeInput> {
    let number = |index: usize| -> Option<i64> { words.get(index)?.parse().ok() };
    let small = |index: usize| -> u8 { number(index).unwrap_or(0) as u8 };
    Some(match *words.first()? {
        "upsert" => ChangeInput::Upsert(KeyInput {
            slot: small(1),
            id: u128::from(small(1)),
            owner: small(2),
            enabled: number(3).unwrap_or(1) != 0,
            expires_unix_ms: number(4),
            meta: Vec::new(),
        }),
        "delete" => ChangeInput::Delete {
            slot: small(1),
            id: u128::from(small(1)),
        },
        "signing" => ChangeInput::SigningKey {
            id: small(1),
            public_key: [small(1); 32],
            created: 0,
            until: number(2),
        },
        "revoke-session" => ChangeInput::SessionRevoked {
            id: small(1),
            user: 0,
            prune_after: i64::MAX,
        },
        "revoke-passkey" => ChangeInput::PasskeyRevoked {
            id: small(1),
            user: 0,
            revoked: 0,
            prune_after: i64::MAX,
        },
        "user" => ChangeInput::User {
            id: small(1),
            disabled: number(2).unwrap_or(0) != 0,
            revoked_before: number(3).unwrap_or(0),
            prune_after: i64::MAX,
        },
        _ => return None,
    })
}

fn run(ops: Vec<Op>) {
    let replica = Replica::new();
    let mut model = Model::default();
    for op in ops.into_iter().take(64) {
        let applied = replica.applied_revision().0;
        assert_eq!(applied, model.applied);
        match op {
            Op::Event {
                at,
                committed_unix_ms,
                change,
            } => {
                let event = Event {
                    revision: Revision(at.resolve(applied)),
                    committed_unix_ms,
                    change: change.to_domain(),
                };
                let wire = pb::Event::from(&event);
                assert_eq!(Event::try_from(wire), Ok(event.clone()), "wire round trip");
                apply(&replica, &mut model, &event);
            }
            Op::Wire(bytes) => {
                let Ok(wire) = pb::Event::decode(bytes.as_slice()) else {
                    continue;
                };
                let Ok(event) = Event::try_from(wire) else {
                    continue;
                };
                assert_eq!(Event::try_from(pb::Event::from(&event)), Ok(event.clone()));
                apply(&replica, &mut model, &event);
            }
            Op::Snapshot {
                at,
                expected_keys,
                items,
            } => {
                let revision = at.resolve(applied);
                let mut snapshot = Snapshot::new(Revision(revision), usize::from(expected_keys));
                let mut next = Model {
                    applied: revision,
                    ..Model::default()
                };
                for item in items.iter().take(32) {
                    match item.to_domain() {
                        Change::KeyUpserted(key) => {
                            snapshot.insert(&key);
                            next.keys
                                .insert(prefix(&key.hash), Info::of(revision, &key, false));
                        }
                        Change::KeyDeleted { .. } => {}
                        change @ (Change::SigningKey(_)
                        | Change::SessionRevoked(_)
                        | Change::PasskeyRevoked(_)
                        | Change::UserState(_)) => {
                            let sessions = snapshot.sessions_mut();
                            match &change {
                                Change::SigningKey(key) => sessions.insert_signing_key(key),
                                Change::SessionRevoked(r) => sessions.insert_revoked_session(r),
                                Change::PasskeyRevoked(r) => sessions.insert_revoked_passkey(r),
                                Change::UserState(user) => sessions.insert_user(user),
                                _ => unreachable!(),
                            }
                            next.apply_session(&change);
                        }
                    }
                }
                // Looked-up keys newer than the snapshot, not yet caught up with, stay.
                for (slot, info) in &model.keys {
                    if info.looked_up && info.revision > revision {
                        next.keys.insert(*slot, info.clone());
                    }
                }
                replica.install_snapshot(snapshot);
                model = next;
                assert_eq!(replica.applied_revision(), Revision(revision));
            }
            Op::LookedUp { at, key } => {
                let revision = at.resolve(applied);
                let key = key.to_domain();
                let inserted =
                    replica.insert_looked_up(&key, Revision(revision), replica.log_epoch());
                // An answer no newer than one already installed for the key (and not yet caught
                // up with) is refused: the entry never goes back (FUZZING.md, finding 2, fixed).
                let newer_installed = model.keys.get(&prefix(&key.hash)).is_some_and(|info| {
                    info.looked_up && info.revision > applied && info.revision >= revision
                });
                assert_eq!(
                    inserted,
                    revision > applied && !newer_installed,
                    "lookup at {revision}, applied {applied}"
                );
                if inserted {
                    model
                        .keys
                        .insert(prefix(&key.hash), Info::of(revision, &key, true));
                }
                assert_eq!(
                    replica.applied_revision().0,
                    applied,
                    "a lookup moved the revision"
                );
            }
        }
        model.check(&replica);
    }
}

fn apply(replica: &Replica, model: &mut Model, event: &Event) {
    let applied = model.applied;
    // At revision u64::MAX every event is a gap (FUZZING.md, finding 3, fixed).
    let result = replica.apply(event);
    if Some(event.revision.0) != applied.checked_add(1) {
        assert_eq!(
            result,
            Err(keygate_proxy::replica::Gap {
                applied: Revision(applied),
                received: event.revision,
            }),
            "event {} on applied {applied}",
            event.revision.0
        );
        assert_eq!(
            replica.applied_revision().0,
            applied,
            "a refused event moved the revision"
        );
        return;
    }
    assert_eq!(
        result,
        Ok(()),
        "event {} on applied {applied}",
        event.revision.0
    );
    let revision = event.revision.0;
    model.applied = revision;
    match &event.change {
        Change::KeyUpserted(key) => model.key_event(prefix(&key.hash), revision, Some(key)),
        Change::KeyDeleted { hash, .. } => model.key_event(prefix(hash), revision, None),
        change => model.apply_session(change),
    }
    // The stream has caught up with looked-up keys at or below this revision.
    for info in model.keys.values_mut() {
        if info.revision <= revision {
            info.looked_up = false;
        }
    }
    assert_eq!(replica.applied_revision().0, revision);
}

fn prefix(hash: &KeyHash) -> [u8; 16] {
    let mut prefix = [0; 16];
    prefix.copy_from_slice(&hash.as_bytes()[..16]);
    prefix
}

fn slot_hash(slot: u8) -> KeyHash {
    KeyHash(*blake3::hash(&[slot % KEYS as u8]).as_bytes())
}

fn key_id(bits: u128) -> KeyId {
    let mut digits = [0u8; 22];
    base62::encode_fixed(bits, &mut digits);
    let text = format!(
        "key_{}",
        std::str::from_utf8(&digits).expect("base62 is ASCII")
    );
    text.parse()
        .expect("22 base62 digits of a u128 form a key id")
}

fn pick(pool: &[&str], index: u8) -> String {
    pool[usize::from(index) % pool.len()].to_owned()
}

impl KeyInput {
    fn to_domain(&self) -> ReplicaKey {
        ReplicaKey {
            hash: slot_hash(self.slot),
            id: key_id(self.id),
            owner: pick(&OWNERS, self.owner),
            enabled: self.enabled,
            expires_unix_ms: self.expires_unix_ms,
            meta: self.meta.iter().take(4).cloned().collect(),
        }
    }
}

impl ChangeInput {
    fn to_domain(&self) -> Change {
        match self {
            ChangeInput::Upsert(key) => Change::KeyUpserted(key.to_domain()),
            ChangeInput::Delete { slot, id } => Change::KeyDeleted {
                id: key_id(*id),
                hash: slot_hash(*slot),
            },
            ChangeInput::SigningKey {
                id,
                public_key,
                created,
                until,
            } => Change::SigningKey(SessionVerifyingKey {
                key_id: pick(&IDS, *id),
                public_key: *public_key,
                created_unix_ms: *created,
                verify_until_unix_ms: *until,
                revoked: false,
                max_session_lifetime_ms: None,
            }),
            ChangeInput::SessionRevoked {
                id,
                user,
                prune_after,
            } => Change::SessionRevoked(SessionRevocation {
                session_id: pick(&IDS, *id),
                user_id: pick(&IDS, *user),
                prune_after_unix_ms: *prune_after,
            }),
            ChangeInput::PasskeyRevoked {
                id,
                user,
                revoked,
                prune_after,
            } => Change::PasskeyRevoked(PasskeyRevocation {
                user_id: pick(&IDS, *user),
                passkey_id: pick(&IDS, *id),
                revoked_unix_ms: *revoked,
                prune_after_unix_ms: *prune_after,
            }),
            ChangeInput::User {
                id,
                disabled,
                revoked_before,
                prune_after,
            } => Change::UserState(UserState {
                user_id: pick(&IDS, *id),
                disabled: *disabled,
                sessions_revoked_before_unix_ms: *revoked_before,
                prune_after_unix_ms: *prune_after,
            }),
        }
    }
}

/// What the replica should show for one key.
#[derive(Debug, Clone, PartialEq)]
struct KeyState {
    id: u128,
    owner: String,
    enabled: bool,
    expires_unix_ms: Option<i64>,
    meta: Option<Meta>,
}

/// The newest information about one key: the revision it is from, the state (`None`: deleted,
/// or absent from a snapshot), and whether it came from a lookup the stream has not caught up
/// with yet.
#[derive(Debug, Clone)]
struct Info {
    revision: u64,
    state: Option<KeyState>,
    looked_up: bool,
}

impl Info {
    fn of(revision: u64, key: &ReplicaKey, looked_up: bool) -> Self {
        Self {
            revision,
            state: Some(KeyState {
                id: key_id_bits(key.id),
                owner: key.owner.clone(),
                enabled: key.enabled,
                // The replica keeps expiries in 0..i64::MAX (i64::MAX meaning never): a
                // pre-1970 expiry is simply expired.
                expires_unix_ms: key.expires_unix_ms.map(|ms| ms.clamp(0, i64::MAX - 1)),
                meta: (!key.meta.is_empty()).then(|| key.meta.clone()),
            }),
            looked_up,
        }
    }
}

fn key_id_bits(id: KeyId) -> u128 {
    let text = id.to_string();
    base62::decode_fixed(&text.as_bytes()[4..]).expect("a key id is base62")
}

#[derive(Default)]
struct Model {
    applied: u64,
    keys: HashMap<[u8; 16], Info>,
    signing_keys: HashMap<String, SigningKey>,
    revoked_sessions: HashMap<String, i64>,
    revoked_passkeys: HashMap<String, i64>,
    users: HashMap<String, UserState>,
}

impl Model {
    fn key_event(&mut self, slot: [u8; 16], revision: u64, key: Option<&ReplicaKey>) {
        // A looked-up state newer than this event stays.
        if self
            .keys
            .get(&slot)
            .is_some_and(|info| info.revision > revision)
        {
            return;
        }
        let info = match key {
            Some(key) => Info::of(revision, key, false),
            None => Info {
                revision,
                state: None,
                looked_up: false,
            },
        };
        self.keys.insert(slot, info);
    }

    fn apply_session(&mut self, change: &Change) {
        match change {
            Change::SigningKey(key) => {
                self.signing_keys
                    .insert(key.key_id.clone(), SigningKey::from(key));
            }
            Change::SessionRevoked(revoked) => {
                let kept = self
                    .revoked_sessions
                    .entry(revoked.session_id.clone())
                    .or_insert(revoked.prune_after_unix_ms);
                *kept = (*kept).max(revoked.prune_after_unix_ms);
            }
            Change::PasskeyRevoked(revoked) => {
                let kept = self
                    .revoked_passkeys
                    .entry(revoked.passkey_id.clone())
                    .or_insert(revoked.prune_after_unix_ms);
                *kept = (*kept).max(revoked.prune_after_unix_ms);
            }
            Change::UserState(user) => {
                self.users.insert(user.user_id.clone(), user.clone());
            }
            Change::KeyUpserted(_) | Change::KeyDeleted { .. } => {}
        }
    }

    fn check(&self, replica: &Replica) {
        assert_eq!(replica.applied_revision().0, self.applied);
        let mut slots: Vec<[u8; 16]> = (0..KEYS as u8).map(|s| prefix(&slot_hash(s))).collect();
        slots.extend(self.keys.keys().copied());
        let mut present = 0;
        for slot in slots {
            let mut hash = [0u8; 32];
            hash[..16].copy_from_slice(&slot);
            let actual = replica.with_entry(&KeyHash(hash), |entry| KeyState {
                id: entry.key_id_bits(),
                owner: entry.owner().to_string(),
                enabled: entry.enabled(),
                expires_unix_ms: entry.expires_unix_ms(),
                meta: entry.meta().map(|meta| (**meta).clone()),
            });
            let expected = self.keys.get(&slot).and_then(|info| info.state.clone());
            assert_eq!(actual, expected, "key {:02x?}", &slot[..4]);
        }
        for info in self.keys.values() {
            present += usize::from(info.state.is_some());
        }
        assert_eq!(replica.len(), present, "keys held");

        let view = replica.sessions().view();
        let sizes = replica.sessions().sizes();
        assert_eq!(sizes.signing_keys, self.signing_keys.len());
        assert_eq!(sizes.revoked_sessions, self.revoked_sessions.len());
        assert_eq!(sizes.revoked_passkeys, self.revoked_passkeys.len());
        assert_eq!(sizes.users, self.users.len());
        for id in IDS {
            assert_eq!(
                view.signing_key(id),
                self.signing_keys.get(id).copied(),
                "signing key {id}"
            );
            let nobody = "-";
            let identity = |session_id, user_id, passkey_id, issued_unix_ms| SessionIdentity {
                session_id,
                user_id,
                passkey_id,
                issued_unix_ms,
            };
            assert_eq!(
                view.is_revoked(identity(id, nobody, nobody, 0)),
                self.revoked_sessions.contains_key(id),
                "session {id}"
            );
            assert_eq!(
                view.is_revoked(identity(nobody, nobody, id, 0)),
                self.revoked_passkeys.contains_key(id),
                "passkey {id}"
            );
            for issued in [i64::MIN, -1, 0, 1, 1_800_000_000_000, i64::MAX] {
                let refused = self.users.get(id).is_some_and(|user| {
                    user.disabled || issued < user.sessions_revoked_before_unix_ms
                });
                assert_eq!(
                    view.is_revoked(identity(nobody, id, nobody, issued)),
                    refused,
                    "user {id} at {issued}"
                );
            }
        }
    }
}
