//! The gateway's in-memory copy of every key it may have to verify, keyed by [`KeyHash`].
//!
//! **Invariant:** readers take no lock and write nothing shared. The keys are one flat
//! open-addressing table ([`table`]: one 64-byte slot per probe, a sequence lock per slot)
//! behind an [`ArcSwap`]: events change single slots in place; a snapshot is built off to the
//! side and swapped in whole, so requests keep reading the old table until the new one is
//! complete; a table that fills up is copied into a bigger one and swapped in the same way.
//!
//! **Invariant:** every write (event, snapshot, looked-up key) happens under one writer mutex,
//! and a looked-up key is inserted only if it is newer than the applied revision. So a delete
//! that has already been applied can never be undone by a late lookup answer.
//!
//! **Invariant:** an entry never goes back to an older state. A looked-up key is newer than the
//! applied revision; until the event stream catches up with it, the writer remembers it (the
//! "ahead" set) and skips the older events for that key that are still to come — otherwise
//! replaying a key's create after a lookup had already seen its disable would briefly make it
//! valid again.
//!
//! Memory (target ≤ 200 bytes per key at 1M keys): a slot is 64 bytes and a snapshot's table
//! is built half full, so 128 bytes per key (at most 5/8 full before it grows). The table is keyed by the first 128 bits of the
//! key's blake3 hash ([`HashPrefix`]): another key with the same 128 bits would take a
//! second-preimage attack on 128 bits, out of reach. The key id is kept as its raw number,
//! enabled and expiry share one word, and the owner is a 4-byte interned id
//! ([`crate::owners`]), so a lookup copies numbers and touches no reference count.

mod table;

use std::collections::HashMap;
use std::hash::Hasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use std::collections::HashSet;

use keygate_proto::{Change, Event, Identity, KeyHash, KeyId, Meta, ReplicaKey, Revision};

use crate::limits::Limiter;
use crate::owners::OwnerId;
use crate::sessions::{SessionSnapshot, SessionState};
use crate::verdict::{Code, Grant, KeyExtras, KeyGrant, Verdict, key_id_bits};
pub use crate::verdict::{KEY_ID_TEXT_LEN, key_id_from_bits, key_id_text};
use table::{Full, Table};

/// `KeyHash` feeds the hasher one already-uniform `u64`; this hasher passes it through.
#[derive(Default, Clone, Copy)]
pub struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }

    /// Only reached by a key type other than `KeyHash`; folds bytes so it still works.
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }
}

/// The first 128 bits of a key's blake3 hash: what the replica is keyed by.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct HashPrefix([u8; 16]);

impl From<&KeyHash> for HashPrefix {
    #[inline]
    fn from(hash: &KeyHash) -> Self {
        let mut prefix = [0u8; 16];
        prefix.copy_from_slice(&hash.as_bytes()[..16]);
        Self(prefix)
    }
}

impl HashPrefix {
    /// The prefix as two little-endian words, as a table slot holds it.
    #[inline]
    pub(crate) fn words(&self) -> [u64; 2] {
        let mut first = [0u8; 8];
        let mut second = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        second.copy_from_slice(&self.0[8..]);
        [u64::from_le_bytes(first), u64::from_le_bytes(second)]
    }

    /// The prefix a table slot's words hold.
    #[inline]
    pub(crate) fn from_words(words: [u64; 2]) -> Self {
        let mut prefix = [0u8; 16];
        prefix[..8].copy_from_slice(&words[0].to_le_bytes());
        prefix[8..].copy_from_slice(&words[1].to_le_bytes());
        Self(prefix)
    }
}

impl std::hash::Hash for HashPrefix {
    /// Feeds the same already-uniform `u64` as [`KeyHash`] does.
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.words()[0]);
    }
}

/// Expiry value meaning "never" (the largest 63-bit number).
const NEVER: u64 = u64::MAX >> 1;

/// What the replica holds for one key, copied out of its slot.
#[derive(Clone, Debug)]
pub struct Entry {
    id: u128,
    owner: OwnerId,
    extras: Option<Arc<KeyExtras>>,
    /// Expiry in Unix ms (clamped to 0..NEVER) shifted left by one; the low bit is "enabled".
    state: u64,
}

/// The state word of a key: expiry shifted left by one, enabled in the low bit.
fn state_of(key: &ReplicaKey) -> u64 {
    let expires = match key.expires_unix_ms {
        None => NEVER,
        // Clamped: a pre-1970 expiry is simply expired.
        Some(ms) => u64::try_from(ms).unwrap_or(0).min(NEVER - 1),
    };
    expires << 1 | u64::from(key.enabled)
}

/// Expiry in Unix ms of a state word; `None` when it never expires.
#[inline]
fn expires_of(state: u64) -> Option<i64> {
    let expires = state >> 1;
    (expires != NEVER).then_some(expires as i64)
}

/// Whether a state word is expired at `now_unix_ms` (expiry is exclusive: valid before it).
#[inline]
fn expired_at(state: u64, now_unix_ms: i64) -> bool {
    // NEVER as i64 is i64::MAX, which no clock reaches.
    now_unix_ms >= (state >> 1) as i64
}

impl Entry {
    /// The entry for `key`; its limits policy, when it has limits, is made with `limiter`'s
    /// holder states (no policy without a limiter).
    fn new(key: &ReplicaKey, limiter: Option<&Limiter>) -> Self {
        let meta = (!key.meta.is_empty()).then(|| key.meta.clone());
        let policy = limiter.and_then(|limiter| limiter.policy_for(key));
        Self {
            id: key_id_bits(key.id),
            owner: OwnerId::intern(&key.owner),
            extras: (meta.is_some() || policy.is_some())
                .then(|| Arc::new(KeyExtras { meta, policy })),
            state: state_of(key),
        }
    }

    /// Whether the key is enabled.
    #[inline]
    pub fn enabled(&self) -> bool {
        self.state & 1 == 1
    }

    /// Expiry in Unix milliseconds; `None` when it never expires.
    #[inline]
    pub fn expires_unix_ms(&self) -> Option<i64> {
        expires_of(self.state)
    }

    /// Whether the key is expired at `now_unix_ms` (expiry is exclusive: valid before it).
    #[inline]
    pub fn expired_at(&self, now_unix_ms: i64) -> bool {
        expired_at(self.state, now_unix_ms)
    }

    /// The key id as its raw number.
    #[inline]
    pub fn key_id_bits(&self) -> u128 {
        self.id
    }

    /// The owner (external id).
    #[inline]
    pub fn owner(&self) -> &str {
        self.owner.name()
    }

    /// The owner's interned id: equal for every key of one owner.
    #[inline]
    pub fn owner_id(&self) -> OwnerId {
        self.owner
    }

    /// The key's meta map, if it has one.
    #[inline]
    pub fn meta(&self) -> Option<&Meta> {
        self.extras
            .as_deref()
            .and_then(|extras| extras.meta.as_ref())
    }

    /// Whether the key has a limits policy.
    #[inline]
    pub fn has_policy(&self) -> bool {
        self.extras
            .as_deref()
            .is_some_and(|extras| extras.policy.is_some())
    }

    fn put_into(&self, table: &Table, prefix: &HashPrefix) -> Result<(), Full> {
        table.put(
            prefix,
            self.id,
            self.state,
            self.owner.bits(),
            self.extras.as_ref(),
        )
    }
}

/// An event could not be applied because it does not follow the applied revision: an event
/// was lost (or repeated), and the replica must resync from the applied revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("event {received} does not follow applied revision {applied}")]
pub struct Gap {
    /// Revision the replica had applied.
    pub applied: Revision,
    /// Revision of the event that arrived.
    pub received: Revision,
}

/// A replica being built from snapshot chunks, installed whole by
/// [`Replica::install_snapshot`]: the keys, the session state and the identities.
pub struct Snapshot {
    revision: Revision,
    keys: Table,
    sessions: SessionSnapshot,
    /// Keys with limits: their policies are made when the snapshot is installed, with the
    /// replica's limiter.
    limited: Vec<ReplicaKey>,
    identities: Vec<Identity>,
}

/// Largest capacity a snapshot pre-allocates on the word of the control plane.
const MAX_PREALLOCATED_KEYS: usize = 4_000_000;

/// Puts `entry` into `table`, first copying the table into a bigger one when it is full; the
/// bigger table is returned for the caller to use (and publish) from then on.
fn put_growing(table: &Table, prefix: &HashPrefix, entry: &Entry) -> Option<Table> {
    match entry.put_into(table, prefix) {
        Ok(()) => None,
        Err(full) => {
            let bigger = table.rebuilt(full);
            // A copy has room for one more key and a fresh slab of stamps.
            let _ = entry.put_into(&bigger, prefix);
            Some(bigger)
        }
    }
}

impl Snapshot {
    /// Starts a snapshot consistent at `revision`, sized for `expected_keys`.
    pub fn new(revision: Revision, expected_keys: usize) -> Self {
        Self {
            revision,
            keys: Table::with_capacity(expected_keys.min(MAX_PREALLOCATED_KEYS)),
            sessions: SessionSnapshot::default(),
            limited: Vec::new(),
            identities: Vec::new(),
        }
    }

    /// Adds one identity.
    pub fn insert_identity(&mut self, identity: Identity) {
        self.identities.push(identity);
    }

    /// The session state (signing keys, revocation sets) at the snapshot's revision.
    pub fn sessions_mut(&mut self) -> &mut SessionSnapshot {
        &mut self.sessions
    }

    /// Adds one key.
    pub fn insert(&mut self, key: &ReplicaKey) {
        let prefix = HashPrefix::from(&key.hash);
        if let Some(bigger) = put_growing(&self.keys, &prefix, &Entry::new(key, None)) {
            self.keys = bigger;
        }
        if !key.limits.is_empty() {
            self.limited.push(key.clone());
        }
    }

    /// Revision the snapshot is consistent at.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// Keys so far.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key has been added.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The replicated key set, the session state, and the revision they reflect.
pub struct Replica {
    keys: ArcSwap<Table>,
    sessions: SessionState,
    /// Holder states of keys with limits and of identities, changed by the same events and
    /// snapshots.
    limiter: Arc<Limiter>,
    applied: AtomicU64,
    /// Bumped (under the writer lock) whenever a snapshot of another log replaces the replica:
    /// a lookup answer of an earlier epoch is of a history the replica no longer holds.
    log_epoch: AtomicU64,
    writer: Mutex<Ahead>,
}

/// Looked-up entries newer than the applied revision, with the revision of their last change.
/// Only writers touch it, under the writer mutex; it is empty whenever the stream has caught up.
type Ahead = HashMap<HashPrefix, (Revision, Entry)>;

impl Default for Replica {
    fn default() -> Self {
        Self::new()
    }
}

impl AsRef<SessionState> for Replica {
    fn as_ref(&self) -> &SessionState {
        &self.sessions
    }
}

impl Replica {
    /// An empty replica at revision 0.
    pub fn new() -> Self {
        Self {
            keys: ArcSwap::from_pointee(Table::with_capacity(0)),
            sessions: SessionState::new(),
            limiter: Arc::new(Limiter::new()),
            applied: AtomicU64::new(0),
            log_epoch: AtomicU64::new(0),
            writer: Mutex::new(Ahead::new()),
        }
    }

    /// Which log the replica's revisions belong to, as a counter: it changes with every
    /// snapshot of another log ([`Replica::install_snapshot_of_another_log`]).
    pub fn log_epoch(&self) -> u64 {
        self.log_epoch.load(Ordering::Acquire)
    }

    fn write_lock(&self) -> MutexGuard<'_, Ahead> {
        // Every update of the guarded set is a single map operation: a panic elsewhere cannot
        // leave it inconsistent.
        self.writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The last revision applied.
    #[inline]
    pub fn applied_revision(&self) -> Revision {
        Revision(self.applied.load(Ordering::Acquire))
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.keys.load().len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The session state: signing keys and revocation sets, changed by the same events and
    /// snapshots as the keys, in revision order.
    #[inline]
    pub fn sessions(&self) -> &SessionState {
        &self.sessions
    }

    /// The limits state: holder states of keys with limits and of identities, kept by the
    /// same events and snapshots as the keys.
    #[inline]
    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.limiter
    }

    /// Runs `read` on a copy of the entry for `hash`.
    #[inline]
    pub fn with_entry<R>(&self, hash: &KeyHash, read: impl FnOnce(&Entry) -> R) -> Option<R> {
        let keys = self.keys.load();
        let prefix = HashPrefix::from(hash);
        let record = keys.get(&prefix)?;
        Some(read(&Entry {
            id: record.id,
            owner: OwnerId::from_bits(record.owner),
            extras: keys.extras(&record).cloned(),
            state: record.state,
        }))
    }

    /// The verdict on a key the replica holds (exists → enabled → not expired); `None` when it
    /// does not. The hot path: one table probe, numbers copied, a reference count touched
    /// only for a valid key with meta.
    #[inline]
    pub fn verdict(&self, hash: &KeyHash, now_unix_ms: i64) -> Option<Verdict> {
        let keys = self.keys.load();
        let prefix = HashPrefix::from(hash);
        let record = keys.get(&prefix)?;
        if record.state & 1 == 0 {
            return Some(Verdict::Denied(Code::Disabled));
        }
        if expired_at(record.state, now_unix_ms) {
            return Some(Verdict::Denied(Code::Expired));
        }
        Some(Verdict::Valid(Grant::Key(KeyGrant {
            key_id_bits: record.id,
            owner: OwnerId::from_bits(record.owner),
            expires_unix_ms: expires_of(record.state),
            extras: keys.extras(&record).cloned(),
        })))
    }

    /// Writes `entry` into the current table, swapping in a bigger one when it is full.
    /// Writer only.
    fn put(&self, keys: &Table, prefix: &HashPrefix, entry: &Entry) {
        if let Some(bigger) = put_growing(keys, prefix, entry) {
            self.keys.store(Arc::new(bigger));
        }
    }

    /// Applies one event, which must be the one after the applied revision.
    pub fn apply(&self, event: &Event) -> Result<(), Gap> {
        let mut ahead = self.write_lock();
        let applied = self.applied_revision();
        if Some(event.revision) != applied.checked_next() {
            return Err(Gap {
                applied,
                received: event.revision,
            });
        }
        let keys = self.keys.load();
        let slot = match &event.change {
            Change::KeyUpserted(key) => Some(HashPrefix::from(&key.hash)),
            Change::KeyDeleted { hash, .. } => Some(HashPrefix::from(hash)),
            // Session state, applied here so it takes effect before the revision moves.
            Change::PasskeyRevoked(_)
            | Change::SessionRevoked(_)
            | Change::UserState(_)
            | Change::SigningKey(_) => {
                self.sessions.apply(&event.change);
                None
            }
            // Limits state: held by the limiter, applied here in revision order too.
            Change::IdentityUpserted(identity) => {
                self.limiter.upsert_identity(identity);
                None
            }
            Change::IdentityDeleted { id } => {
                self.limiter.delete_identity(id);
                None
            }
            Change::CreditsChanged { holder, .. } => {
                self.limiter.credits_changed(holder);
                None
            }
        };
        // A lookup already installed a newer state of this key: this older event must not
        // overwrite it.
        let superseded = slot.is_some_and(|slot| {
            ahead
                .get(&slot)
                .is_some_and(|(revision, _)| *revision > event.revision)
        });
        if let Some(slot) = slot
            && !superseded
        {
            match &event.change {
                Change::KeyUpserted(key) => {
                    self.put(&keys, &slot, &Entry::new(key, Some(&self.limiter)));
                }
                Change::KeyDeleted { id, .. } => {
                    keys.remove(&slot);
                    self.limiter.forget_key(*id);
                }
                _ => keys.remove(&slot),
            }
        }
        if !ahead.is_empty() {
            ahead.retain(|_, (revision, _)| *revision > event.revision);
        }
        self.applied.store(event.revision.0, Ordering::Release);
        Ok(())
    }

    /// Replaces the whole key set and the session state with `snapshot` and moves to its
    /// revision. Requests served meanwhile read the previous set.
    pub fn install_snapshot(&self, snapshot: Snapshot) {
        self.install(snapshot, false);
    }

    /// Replaces everything with a snapshot of another log (another store): looked-up keys
    /// are dropped too, since their revisions are of the old history, and lookups begun
    /// before are refused when they answer ([`Replica::log_epoch`]).
    pub fn install_snapshot_of_another_log(&self, snapshot: Snapshot) {
        self.install(snapshot, true);
    }

    fn install(&self, snapshot: Snapshot, another_log: bool) {
        let previous = {
            let mut ahead = self.write_lock();
            if another_log {
                ahead.clear();
                self.log_epoch.fetch_add(1, Ordering::AcqRel);
            }
            // Looked-up keys newer than the snapshot stay: the snapshot cannot know them yet.
            ahead.retain(|_, (revision, _)| *revision > snapshot.revision);
            let mut keys = snapshot.keys;
            // Keys with limits get their policies now, with this replica's holder states.
            let mut limited: HashSet<KeyId> = HashSet::with_capacity(snapshot.limited.len());
            for key in &snapshot.limited {
                let entry = Entry::new(key, Some(&self.limiter));
                if let Some(bigger) = put_growing(&keys, &HashPrefix::from(&key.hash), &entry) {
                    keys = bigger;
                }
                limited.insert(key.id);
            }
            for (slot, (_, entry)) in ahead.iter() {
                if let Some(bigger) = put_growing(&keys, slot, entry) {
                    keys = bigger;
                }
                if entry.has_policy() {
                    limited.insert(key_id_from_bits(entry.id));
                }
            }
            self.limiter
                .install_snapshot(&snapshot.identities, &limited);
            let previous = self.keys.swap(Arc::new(keys));
            self.sessions.install(snapshot.sessions);
            self.applied.store(snapshot.revision.0, Ordering::Release);
            previous
        };
        // Dropping a large table takes a while; do it outside the writer lock.
        drop(previous);
    }

    /// Inserts a key the control plane answered a lookup with, if `key_revision` (its last
    /// change) is newer than everything applied and the lookup began in this `log_epoch`.
    /// Returns whether it was inserted; when it was not, the replica already reflects that
    /// change or a later one (e.g. its delete), or now holds another log.
    pub fn insert_looked_up(
        &self,
        key: &ReplicaKey,
        key_revision: Revision,
        log_epoch: u64,
    ) -> bool {
        let mut ahead = self.write_lock();
        if log_epoch != self.log_epoch() || key_revision <= self.applied_revision() {
            return false;
        }
        let slot = HashPrefix::from(&key.hash);
        // A later answer for the same key may be the older one (found by fuzzing): an entry
        // never goes back to an older state.
        if ahead
            .get(&slot)
            .is_some_and(|(installed, _)| *installed >= key_revision)
        {
            return false;
        }
        let entry = Entry::new(key, Some(&self.limiter));
        self.put(&self.keys.load(), &slot, &entry);
        ahead.insert(slot, (key_revision, entry));
        true
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use keygate_proto::{ApiKey, KeyId, KeyPrefix};

    use super::*;

    /// A fresh plaintext key and its replica record.
    pub(crate) fn sample_key(owner: &str) -> (String, ReplicaKey) {
        let plaintext = ApiKey::generate(&KeyPrefix::default());
        let hash = ApiKey::parse(&plaintext)
            .expect("generated keys parse")
            .hash();
        let key = ReplicaKey {
            hash,
            id: KeyId::generate(),
            owner: owner.to_owned(),
            enabled: true,
            expires_unix_ms: None,
            meta: Meta::new(),
            limits: Default::default(),
        };
        (plaintext, key)
    }

    pub(crate) fn upsert(revision: u64, key: &ReplicaKey) -> Event {
        Event {
            revision: Revision(revision),
            committed_unix_ms: 0,
            change: Change::KeyUpserted(key.clone()),
        }
    }

    pub(crate) fn delete(revision: u64, key: &ReplicaKey) -> Event {
        Event {
            revision: Revision(revision),
            committed_unix_ms: 0,
            change: Change::KeyDeleted {
                id: key.id,
                hash: key.hash,
            },
        }
    }

    fn owner_of(replica: &Replica, key: &ReplicaKey) -> Option<String> {
        replica.with_entry(&key.hash, |entry| entry.owner().to_string())
    }

    #[test]
    fn entries_round_trip_their_fields() {
        let (_, mut key) = sample_key("alice");
        key.expires_unix_ms = Some(1_900_000_000_123);
        key.enabled = false;
        key.meta.insert("plan".into(), "pro".into());
        let entry = Entry::new(&key, None);
        assert!(!entry.enabled());
        assert_eq!(entry.expires_unix_ms(), Some(1_900_000_000_123));
        assert!(!entry.expired_at(1_900_000_000_122));
        assert!(entry.expired_at(1_900_000_000_123));
        assert_eq!(key_id_from_bits(entry.key_id_bits()), key.id);
        assert_eq!(
            entry.meta().map(|meta| meta["plan"].clone()),
            Some("pro".into())
        );
        let never = Entry::new(
            &ReplicaKey {
                expires_unix_ms: None,
                enabled: true,
                ..key
            },
            None,
        );
        assert!(never.enabled());
        assert_eq!(never.expires_unix_ms(), None);
        assert!(!never.expired_at(i64::MAX - 1));
    }

    /// Many upserts, deletes and re-inserts through events: the table grows past its first
    /// size and reuses its tombstones, and every key keeps its owner and meta.
    #[test]
    fn the_table_grows_and_reuses_tombstones_under_events() {
        let replica = Replica::new();
        let keys: Vec<ReplicaKey> = (0..500)
            .map(|index| {
                let (_, mut key) = sample_key(&format!("replica-test-owner-{}", index % 7));
                if index % 3 == 0 {
                    key.meta.insert("n".into(), index.to_string());
                }
                key
            })
            .collect();
        let mut revision = 0;
        for _ in 0..3 {
            for key in &keys {
                revision += 1;
                replica.apply(&upsert(revision, key)).expect("in order");
            }
            for key in keys.iter().step_by(2) {
                revision += 1;
                replica.apply(&delete(revision, key)).expect("in order");
            }
        }
        assert_eq!(replica.len(), 250);
        for (index, key) in keys.iter().enumerate() {
            let found = replica.with_entry(&key.hash, |entry| {
                (
                    entry.owner().to_owned(),
                    entry.meta().map(|meta| meta["n"].clone()),
                )
            });
            let expected = (index % 2 == 1).then(|| {
                (
                    format!("replica-test-owner-{}", index % 7),
                    (index % 3 == 0).then(|| index.to_string()),
                )
            });
            assert_eq!(found, expected, "key {index}");
        }
    }

    #[test]
    fn events_apply_in_order() {
        let replica = Replica::new();
        let (_, alice) = sample_key("alice");
        let (_, bob) = sample_key("bob");
        replica.apply(&upsert(1, &alice)).expect("1 follows 0");
        replica.apply(&upsert(2, &bob)).expect("2 follows 1");
        assert_eq!(replica.len(), 2);
        let disabled = ReplicaKey {
            enabled: false,
            ..alice.clone()
        };
        replica.apply(&upsert(3, &disabled)).expect("3 follows 2");
        assert_eq!(replica.with_entry(&alice.hash, Entry::enabled), Some(false));
        replica.apply(&delete(4, &bob)).expect("4 follows 3");
        assert_eq!(owner_of(&replica, &bob), None);
        assert_eq!(replica.applied_revision(), Revision(4));
    }

    #[test]
    fn a_gap_or_a_repeat_is_refused_and_changes_nothing() {
        let replica = Replica::new();
        let (_, alice) = sample_key("alice");
        replica.apply(&upsert(1, &alice)).expect("applies");
        let (_, bob) = sample_key("bob");
        assert_eq!(
            replica.apply(&upsert(3, &bob)),
            Err(Gap {
                applied: Revision(1),
                received: Revision(3)
            })
        );
        assert_eq!(
            replica.apply(&delete(1, &alice)),
            Err(Gap {
                applied: Revision(1),
                received: Revision(1)
            })
        );
        assert_eq!(replica.applied_revision(), Revision(1));
        assert_eq!(owner_of(&replica, &bob), None);
        assert_eq!(owner_of(&replica, &alice).as_deref(), Some("alice"));
    }

    #[test]
    fn a_snapshot_replaces_everything_only_when_installed() {
        let replica = Replica::new();
        let (_, old) = sample_key("old");
        replica.apply(&upsert(1, &old)).expect("applies");

        let mut snapshot = Snapshot::new(Revision(10), 3);
        let fresh: Vec<ReplicaKey> = (0..3).map(|_| sample_key("shared").1).collect();
        for key in &fresh {
            snapshot.insert(key);
        }
        // Still serving the old set while the snapshot is being built.
        assert_eq!(owner_of(&replica, &old).as_deref(), Some("old"));
        assert_eq!(replica.applied_revision(), Revision(1));

        replica.install_snapshot(snapshot);
        assert_eq!(replica.applied_revision(), Revision(10));
        assert_eq!(replica.len(), 3);
        assert_eq!(owner_of(&replica, &old), None);
        // Keys of one owner share one interned name.
        let owners: Vec<OwnerId> = fresh
            .iter()
            .filter_map(|key| replica.with_entry(&key.hash, Entry::owner_id))
            .collect();
        assert_eq!(owners.len(), 3);
        assert_eq!(owners[0], owners[2]);
        replica
            .apply(&upsert(11, &old))
            .expect("events continue after the snapshot");
    }

    #[test]
    fn a_late_lookup_answer_cannot_undo_a_delete() {
        let replica = Replica::new();
        let (_, key) = sample_key("alice");
        // The lookup was answered when the key's last change was revision 1 ...
        let answer = (key.clone(), Revision(1));
        // ... but by the time it lands, the create and the delete have both been applied.
        replica.apply(&upsert(1, &key)).expect("applies");
        replica.apply(&delete(2, &key)).expect("applies");
        assert!(!replica.insert_looked_up(&answer.0, answer.1, 0));
        assert_eq!(owner_of(&replica, &key), None);

        // A key newer than anything applied is inserted.
        let (_, newer) = sample_key("bob");
        assert!(replica.insert_looked_up(&newer, Revision(5), 0));
        assert_eq!(owner_of(&replica, &newer).as_deref(), Some("bob"));
        assert_eq!(
            replica.applied_revision(),
            Revision(2),
            "a lookup does not move the revision"
        );
    }

    #[test]
    fn a_looked_up_key_never_goes_back_to_an_older_state() {
        let replica = Replica::new();
        let (_, mut key) = sample_key("alice");
        // Created at 1, disabled at 2; the gateway has applied nothing yet when its lookup is
        // answered with the disabled state.
        let created = key.clone();
        key.enabled = false;
        assert!(replica.insert_looked_up(&key, Revision(2), 0));
        let enabled = |replica: &Replica| replica.with_entry(&key.hash, Entry::enabled);
        assert_eq!(enabled(&replica), Some(false));
        // Replaying the create must not re-enable it.
        replica.apply(&upsert(1, &created)).expect("applies");
        assert_eq!(
            enabled(&replica),
            Some(false),
            "older event overwrote a newer lookup"
        );
        replica.apply(&upsert(2, &key)).expect("applies");
        assert_eq!(enabled(&replica), Some(false));
        // Caught up: later events apply normally.
        replica.apply(&upsert(3, &created)).expect("applies");
        assert_eq!(enabled(&replica), Some(true));
    }

    #[test]
    fn a_snapshot_older_than_a_looked_up_key_keeps_it() {
        let replica = Replica::new();
        let (_, key) = sample_key("alice");
        assert!(replica.insert_looked_up(&key, Revision(9), 0));
        replica.install_snapshot(Snapshot::new(Revision(5), 0));
        assert_eq!(replica.with_entry(&key.hash, Entry::enabled), Some(true));
        // A snapshot that already contains it makes the lookup record moot.
        replica.install_snapshot(Snapshot::new(Revision(9), 0));
        assert_eq!(replica.with_entry(&key.hash, Entry::enabled), None);
    }

    /// Found by tests/ha.rs: after a switch to another store, keys looked up in the old one
    /// (kept as "ahead", or answered late) used to survive in the new one's replica.
    #[test]
    fn a_snapshot_of_another_log_leaves_nothing_looked_up_in_the_old_one() {
        let replica = Replica::new();
        let (_, kept) = sample_key("alice");
        let (_, late) = sample_key("bob");
        let old_epoch = replica.log_epoch();
        assert!(replica.insert_looked_up(&kept, Revision(60), old_epoch));
        replica.install_snapshot_of_another_log(Snapshot::new(Revision(1), 0));
        assert_ne!(replica.log_epoch(), old_epoch);
        assert_eq!(replica.with_entry(&kept.hash, Entry::enabled), None);
        // An answer to a lookup begun before the switch is refused, whatever its revision.
        assert!(!replica.insert_looked_up(&late, Revision(60), old_epoch));
        assert_eq!(replica.with_entry(&late.hash, Entry::enabled), None);
        // One begun after it is not.
        assert!(replica.insert_looked_up(&late, Revision(2), replica.log_epoch()));
        assert_eq!(replica.with_entry(&late.hash, Entry::enabled), Some(true));
    }

    /// Found by fuzzing (FUZZING.md, finding 2): a lookup answer older than one installed
    /// before it used to replace it.
    #[test]
    fn an_older_lookup_answer_never_replaces_a_newer_one() {
        let replica = Replica::new();
        let (_, key) = sample_key("alice");
        let disabled = ReplicaKey {
            enabled: false,
            ..key.clone()
        };
        assert!(replica.insert_looked_up(&disabled, Revision(5), 0));
        assert!(!replica.insert_looked_up(&key, Revision(2), 0));
        assert!(!replica.insert_looked_up(&key, Revision(5), 0));
        assert_eq!(replica.with_entry(&key.hash, Entry::enabled), Some(false));
        assert!(replica.insert_looked_up(&key, Revision(6), 0));
        assert_eq!(replica.with_entry(&key.hash, Entry::enabled), Some(true));
    }

    /// Found by fuzzing (FUZZING.md, finding 3): at revision u64::MAX the next event used to
    /// overflow; it is a gap.
    #[test]
    fn nothing_follows_the_last_revision() {
        let replica = Replica::new();
        replica.install_snapshot(Snapshot::new(Revision(u64::MAX), 0));
        let (_, key) = sample_key("alice");
        for revision in [0, 1, u64::MAX] {
            assert!(replica.apply(&upsert(revision, &key)).is_err());
        }
        assert_eq!(replica.applied_revision(), Revision(u64::MAX));
    }
}
