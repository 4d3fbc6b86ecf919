//! The replicated session state (DESIGN.md, "Passkeys and sessions"): the public keys session
//! tokens are verified with, and the revocation sets every session is checked against — revoked
//! session ids, revoked passkey ids, and per-user state (disabled, sessions revoked before a
//! time).
//!
//! It changes only through the replica ([`crate::replica::Replica::apply`] and
//! [`crate::replica::Replica::install_snapshot`]), under the replica's writer lock and before
//! the applied revision moves, so a gateway that has acked revision *n* enforces every
//! revocation up to *n*.
//!
//! **Invariant:** readers take no lock a writer holds for longer than one map operation. The
//! tables are sharded [`DashMap`]s behind one [`ArcSwap`]: an event changes one entry; a
//! snapshot is built aside and swapped in whole, so requests never see a half-filled
//! revocation set; pruning reads under shard read locks (which never block readers) and then
//! removes entries one map operation at a time.
//!
//! **Invariant:** an entry is pruned only once its `prune_after` instant has passed (and a
//! user only while enabled). The control plane sets `prune_after` no earlier than the expiry of
//! the last token the entry can match, and the gateway compares both with the same clock, so a
//! pruned entry could only have matched tokens that are EXPIRED anyway.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use keygate_proto::{Change, PasskeyRevocation, SessionRevocation, SessionVerifyingKey, UserState};
use tokio_util::sync::CancellationToken;

/// How often revocation entries past their `prune_after` are dropped.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// A session signing key as verification needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SigningKey {
    /// Ed25519 public key.
    pub public_key: [u8; 32],
    /// Once retired: tokens signed with it verify until this instant (inclusive), then are
    /// REVOKED. `None`: the key is current.
    pub verify_until_unix_ms: Option<i64>,
    /// Revoked: every token signed with it is REVOKED, whatever its times.
    pub revoked: bool,
    /// The longest session (expiry − issue) a token signed with it may claim; `None` when the
    /// control plane did not say (one older than the field): no lifetime check then.
    pub max_session_lifetime_ms: Option<i64>,
}

impl SigningKey {
    /// Whether tokens signed with this key are refused (REVOKED) at `now_unix_ms`: it was
    /// revoked, or retired and past its verify-until instant.
    #[inline]
    pub fn refuses_at(&self, now_unix_ms: i64) -> bool {
        self.revoked
            || self
                .verify_until_unix_ms
                .is_some_and(|until| now_unix_ms > until)
    }
}

impl From<&SessionVerifyingKey> for SigningKey {
    fn from(key: &SessionVerifyingKey) -> Self {
        Self {
            public_key: key.public_key,
            verify_until_unix_ms: key.verify_until_unix_ms,
            revoked: key.revoked,
            max_session_lifetime_ms: key.max_session_lifetime_ms,
        }
    }
}

/// A user's state as far as sessions care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct User {
    disabled: bool,
    revoked_before_unix_ms: i64,
    prune_after_unix_ms: i64,
}

impl User {
    fn refuses(&self, issued_unix_ms: i64) -> bool {
        self.disabled || issued_unix_ms < self.revoked_before_unix_ms
    }

    fn prunable_at(&self, now_unix_ms: i64) -> bool {
        !self.disabled && now_unix_ms > self.prune_after_unix_ms
    }
}

/// The identity a verified session token claims, as the revocation check needs it.
#[derive(Debug, Clone, Copy)]
pub struct SessionIdentity<'a> {
    pub session_id: &'a str,
    pub user_id: &'a str,
    pub passkey_id: &'a str,
    pub issued_unix_ms: i64,
}

/// Map of id → value; ids are short strings chosen by the control plane.
type IdMap<V> = DashMap<Box<str>, V, BuildHasherDefault<IdHasher>>;

/// A fast hasher for the id maps: one folded multiply (the full 128-bit product, its halves
/// xored, as in foldhash) per 8 bytes. The maps' keys are chosen by the control plane and looked
/// up with ids from signature-verified tokens, never with whatever a client sends, so they need
/// no flood-resistant (and several times slower) SipHash; a verified session does three lookups.
#[derive(Clone, Copy)]
pub struct IdHasher(u64);

impl Default for IdHasher {
    fn default() -> Self {
        Self(0x243f_6a88_85a3_08d3)
    }
}

impl IdHasher {
    const MULTIPLIER: u64 = 0xf135_7aea_2e62_a9c5;

    #[inline]
    fn add(&mut self, word: u64) {
        let product = u128::from(self.0 ^ word) * u128::from(Self::MULTIPLIER);
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }
}

impl Hasher for IdHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let mut buffer = [0u8; 8];
            buffer.copy_from_slice(word);
            self.add(u64::from_le_bytes(buffer));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut buffer = [0u8; 8];
            buffer[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(buffer));
        }
    }

    #[inline]
    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    #[inline]
    fn write_usize(&mut self, value: usize) {
        self.add(value as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// One generation of the session state. The signing keys are few and change rarely, so they
/// are a plain map, copied on change into a new generation (lock-free reads); the revocation
/// sets can be large and change often, so they are sharded maps shared between generations
/// and changed in place, with one filter over all three in front of them.
#[derive(Default)]
struct Tables {
    signing_keys: HashMap<Box<str>, SigningKey, BuildHasherDefault<IdHasher>>,
    /// Revoked session id → prune after.
    sessions: Arc<IdMap<i64>>,
    /// Revoked passkey id → prune after.
    passkeys: Arc<IdMap<i64>>,
    users: Arc<IdMap<User>>,
    revoked: Arc<RevokedFilter>,
}

/// Which set an id is in, for [`RevokedFilter`]: each set hashes from its own seed.
#[derive(Clone, Copy)]
enum Set {
    Sessions = 0,
    Passkeys = 1,
    Users = 2,
}

impl Set {
    #[inline]
    fn hash(self, id: &str) -> u64 {
        const SEEDS: [u64; 3] = [
            0x243f_6a88_85a3_08d3,
            0x1319_8a2e_0370_7344,
            0xa409_3822_299f_31d0,
        ];
        let mut hasher = IdHasher(SEEDS[self as usize]);
        hasher.write(id.as_bytes());
        hasher.finish()
    }
}

/// The combined revocation lookup: one bit per id of the three sets (revoked sessions,
/// revoked passkeys, user states), set when the id is added. A session whose three ids all
/// find their bit clear is in no set, which is the answer for nearly every request: three bit
/// reads in one small array instead of three sharded-map lookups. A set bit only sends the
/// check to that id's map, which decides.
///
/// **Invariant:** no false negatives. A bit is set (by the one writer, under the replica's
/// writer lock) whenever an id enters a set, before the revision moves; bits are never
/// cleared, only a new filter is built, and only by that writer from the maps as they are then
/// (pruning only removes entries, so a stale bit costs one map lookup, never a missed
/// revocation). It is built with 64 bits per id it holds (at least 1 024 ids' worth) and
/// rebuilt once as many ids again have been added, so at most 1 in 32 bits is set: about 3 %
/// of the ids of no set find a set bit and cost one map lookup.
struct RevokedFilter {
    words: Box<[AtomicU64]>,
    added: AtomicUsize,
    /// Ids that may be added before it is rebuilt.
    room: usize,
}

impl Default for RevokedFilter {
    fn default() -> Self {
        Self::for_entries(0)
    }
}

impl RevokedFilter {
    fn for_entries(entries: usize) -> Self {
        let room = entries.max(1024);
        let words = (room * 2 * 32 / 64).next_power_of_two();
        Self {
            words: std::iter::repeat_with(AtomicU64::default)
                .take(words)
                .collect(),
            added: AtomicUsize::new(0),
            room,
        }
    }

    /// A filter of every id in `tables`' sets.
    fn of(tables: &Tables) -> Self {
        let filter =
            Self::for_entries(tables.sessions.len() + tables.passkeys.len() + tables.users.len());
        for entry in tables.sessions.iter() {
            filter.add(Set::Sessions, entry.key());
        }
        for entry in tables.passkeys.iter() {
            filter.add(Set::Passkeys, entry.key());
        }
        for entry in tables.users.iter() {
            filter.add(Set::Users, entry.key());
        }
        filter
    }

    #[inline]
    fn position(&self, hash: u64) -> (usize, u64) {
        (
            (hash >> 6) as usize & (self.words.len() - 1),
            1 << (hash & 63),
        )
    }

    /// Adds `id` of `set`; false once more ids have been added than it was sized for.
    fn add(&self, set: Set, id: &str) -> bool {
        let (word, bit) = self.position(set.hash(id));
        self.words[word].fetch_or(bit, Ordering::Release);
        self.added.fetch_add(1, Ordering::Relaxed) < self.room
    }

    /// Whether `id` may be in `set` (false: it is not).
    #[inline]
    fn may_contain(&self, set: Set, id: &str) -> bool {
        let (word, bit) = self.position(set.hash(id));
        self.words[word].load(Ordering::Acquire) & bit != 0
    }
}

impl Tables {
    /// Applies a revocation-set change in place (signing keys and key events are not handled
    /// here). Returns false when the filter is full and must be rebuilt.
    fn apply(&self, change: &Change) -> bool {
        match change {
            Change::SessionRevoked(revoked) => self.insert_revoked_session(revoked),
            Change::PasskeyRevoked(revoked) => self.insert_revoked_passkey(revoked),
            Change::UserState(user) => self.insert_user(user),
            Change::SigningKey(_)
            | Change::KeyUpserted(_)
            | Change::KeyDeleted { .. }
            | Change::IdentityUpserted(_)
            | Change::IdentityDeleted { .. }
            | Change::CreditsChanged { .. } => true,
        }
    }

    /// The next generation: the same sets, and a filter built afresh from them.
    fn with_new_filter(&self) -> Self {
        let mut next = self.share();
        next.revoked = Arc::new(RevokedFilter::of(&next));
        next
    }

    /// The next generation, sharing everything.
    fn share(&self) -> Self {
        Self {
            signing_keys: self.signing_keys.clone(),
            sessions: Arc::clone(&self.sessions),
            passkeys: Arc::clone(&self.passkeys),
            users: Arc::clone(&self.users),
            revoked: Arc::clone(&self.revoked),
        }
    }

    /// Upsert by key id: a retirement or a revocation replaces the key's earlier record.
    fn insert_signing_key(&mut self, key: &SessionVerifyingKey) {
        self.signing_keys
            .insert(key.key_id.as_str().into(), SigningKey::from(key));
    }

    /// The next generation, with `key` upserted and the same revocation sets.
    fn with_signing_key(&self, key: &SessionVerifyingKey) -> Self {
        let mut next = self.share();
        next.insert_signing_key(key);
        next
    }

    fn insert_revoked_session(&self, revoked: &SessionRevocation) -> bool {
        keep_latest(
            &self.sessions,
            &revoked.session_id,
            revoked.prune_after_unix_ms,
        );
        self.revoked.add(Set::Sessions, &revoked.session_id)
    }

    fn insert_revoked_passkey(&self, revoked: &PasskeyRevocation) -> bool {
        keep_latest(
            &self.passkeys,
            &revoked.passkey_id,
            revoked.prune_after_unix_ms,
        );
        self.revoked.add(Set::Passkeys, &revoked.passkey_id)
    }

    /// The whole state: replaces any earlier one (an enable clears `disabled`).
    fn insert_user(&self, user: &UserState) -> bool {
        self.users.insert(
            user.user_id.as_str().into(),
            User {
                disabled: user.disabled,
                revoked_before_unix_ms: user.sessions_revoked_before_unix_ms,
                prune_after_unix_ms: user.prune_after_unix_ms,
            },
        );
        self.revoked.add(Set::Users, &user.user_id)
    }

    fn sizes(&self) -> SessionStateSizes {
        SessionStateSizes {
            signing_keys: self.signing_keys.len(),
            revoked_sessions: self.sessions.len(),
            revoked_passkeys: self.passkeys.len(),
            users: self.users.len(),
        }
    }
}

/// A revocation seen twice (e.g. a passkey revoked, then revoked again) is kept until the later
/// of its two prune instants.
fn keep_latest(map: &IdMap<i64>, id: &str, prune_after_unix_ms: i64) {
    map.entry(id.into())
        .and_modify(|kept| *kept = (*kept).max(prune_after_unix_ms))
        .or_insert(prune_after_unix_ms);
}

/// Entry counts, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStateSizes {
    pub signing_keys: usize,
    pub revoked_sessions: usize,
    pub revoked_passkeys: usize,
    pub users: usize,
}

/// The session state a gateway holds.
pub struct SessionState {
    tables: ArcSwap<Tables>,
}

impl Default for SessionState {
    fn default() -> Self {
        Self::new()
    }
}

impl SessionState {
    /// No keys, nothing revoked.
    pub fn new() -> Self {
        Self {
            tables: ArcSwap::from_pointee(Tables::default()),
        }
    }

    /// Applies one event's change. Only the replica calls this, under its writer lock, so no
    /// other writer can come between the load and the store of a signing-key change.
    pub(crate) fn apply(&self, change: &Change) {
        let tables = self.tables.load();
        match change {
            Change::SigningKey(key) => self.tables.store(Arc::new(tables.with_signing_key(key))),
            _ => {
                if !tables.apply(change) {
                    self.tables.store(Arc::new(tables.with_new_filter()));
                }
            }
        }
    }

    /// Replaces everything with `snapshot`. Only the replica calls this, under its writer lock.
    pub(crate) fn install(&self, snapshot: SessionSnapshot) {
        let mut tables = snapshot.tables;
        tables.revoked = Arc::new(RevokedFilter::of(&tables));
        let previous = self.tables.swap(Arc::new(tables));
        drop(previous);
    }

    /// A consistent view for one verification: the signing key and the revocation sets are
    /// read from the same generation.
    #[inline]
    pub fn view(&self) -> SessionView {
        SessionView {
            tables: self.tables.load(),
        }
    }

    /// Entry counts.
    pub fn sizes(&self) -> SessionStateSizes {
        self.tables.load().sizes()
    }

    /// Drops revocations and user states whose `prune_after` has passed at `now_unix_ms`
    /// (users only while enabled); returns how many. Signing keys are never pruned here: the
    /// control plane's snapshot decides which keys exist, and a retired or revoked key must
    /// keep answering REVOKED rather than MALFORMED (a snapshot keeps a revoked key until
    /// every token it signed has expired).
    pub fn prune(&self, now_unix_ms: i64) -> usize {
        let tables = self.tables.load();
        prune_map(&tables.sessions, |prune_after| now_unix_ms > *prune_after)
            + prune_map(&tables.passkeys, |prune_after| now_unix_ms > *prune_after)
            + prune_map(&tables.users, |user| user.prunable_at(now_unix_ms))
    }
}

/// Removes the entries `prunable` picks. Candidates are collected under shard read locks
/// (readers are never blocked by them), then each is removed in one map operation, re-checked
/// so that an entry replaced meanwhile by a newer state is kept.
fn prune_map<V>(map: &IdMap<V>, prunable: impl Fn(&V) -> bool) -> usize {
    let candidates: Vec<Box<str>> = map
        .iter()
        .filter(|entry| prunable(entry.value()))
        .map(|entry| entry.key().clone())
        .collect();
    candidates
        .iter()
        .filter(|id| {
            map.remove_if(id.as_ref(), |_, value| prunable(value))
                .is_some()
        })
        .count()
}

/// One request's view of the session state.
pub struct SessionView {
    tables: arc_swap::Guard<Arc<Tables>>,
}

impl SessionView {
    /// The signing key with this id, if the gateway has it.
    #[inline]
    pub fn signing_key(&self, key_id: &str) -> Option<SigningKey> {
        self.tables.signing_keys.get(key_id).copied()
    }

    /// Whether the session is revoked: its id, its passkey, or its user (disabled, or signed
    /// out everywhere after it was issued).
    #[inline]
    pub fn is_revoked(&self, session: SessionIdentity<'_>) -> bool {
        let tables = &*self.tables;
        let filter = &tables.revoked;
        (filter.may_contain(Set::Sessions, session.session_id)
            && tables.sessions.contains_key(session.session_id))
            || (filter.may_contain(Set::Passkeys, session.passkey_id)
                && tables.passkeys.contains_key(session.passkey_id))
            || (filter.may_contain(Set::Users, session.user_id)
                && tables
                    .users
                    .get(session.user_id)
                    .is_some_and(|user| user.refuses(session.issued_unix_ms)))
    }
}

/// Session state being built from snapshot chunks; installed with the snapshot's keys.
#[derive(Default)]
pub struct SessionSnapshot {
    tables: Tables,
}

impl SessionSnapshot {
    /// Adds a signing key.
    pub fn insert_signing_key(&mut self, key: &SessionVerifyingKey) {
        self.tables.insert_signing_key(key);
    }

    /// Adds a revoked session.
    pub fn insert_revoked_session(&mut self, revoked: &SessionRevocation) {
        // The filter is built afresh when the snapshot is installed.
        self.tables.insert_revoked_session(revoked);
    }

    /// Adds a revoked passkey.
    pub fn insert_revoked_passkey(&mut self, revoked: &PasskeyRevocation) {
        self.tables.insert_revoked_passkey(revoked);
    }

    /// Adds a user's state.
    pub fn insert_user(&mut self, user: &UserState) {
        self.tables.insert_user(user);
    }

    /// Entry counts so far.
    pub fn sizes(&self) -> SessionStateSizes {
        self.tables.sizes()
    }
}

/// Prunes the session state of `replica` (the gateway's [`crate::replica::Replica`], which
/// holds it) every `every` until `shutdown`, reading the wall clock from `now_unix_ms` (a
/// parameter so tests can drive it).
pub(crate) async fn prune_periodically(
    replica: Arc<impl AsRef<SessionState>>,
    every: Duration,
    now_unix_ms: impl Fn() -> i64,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; nothing is old enough to prune at start.
    ticker.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {
                let pruned = (*replica).as_ref().prune(now_unix_ms());
                if pruned > 0 {
                    tracing::debug!(pruned, "pruned session revocations");
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    use keygate_proto::{Event, Revision};

    use super::*;
    use crate::replica::Replica;

    pub(crate) fn signing_key(
        key_id: &str,
        public_key: [u8; 32],
        verify_until_unix_ms: Option<i64>,
    ) -> Change {
        Change::SigningKey(SessionVerifyingKey {
            key_id: key_id.into(),
            public_key,
            created_unix_ms: 0,
            verify_until_unix_ms,
            revoked: false,
            max_session_lifetime_ms: None,
        })
    }

    pub(crate) fn session_revoked(session_id: &str, prune_after_unix_ms: i64) -> Change {
        Change::SessionRevoked(SessionRevocation {
            session_id: session_id.into(),
            user_id: "alice".into(),
            prune_after_unix_ms,
        })
    }

    pub(crate) fn passkey_revoked(passkey_id: &str, prune_after_unix_ms: i64) -> Change {
        Change::PasskeyRevoked(PasskeyRevocation {
            user_id: "alice".into(),
            passkey_id: passkey_id.into(),
            revoked_unix_ms: 0,
            prune_after_unix_ms,
        })
    }

    pub(crate) fn user(
        user_id: &str,
        disabled: bool,
        revoked_before_unix_ms: i64,
        prune_after_unix_ms: i64,
    ) -> Change {
        Change::UserState(UserState {
            user_id: user_id.into(),
            disabled,
            sessions_revoked_before_unix_ms: revoked_before_unix_ms,
            prune_after_unix_ms,
        })
    }

    pub(crate) fn event(revision: u64, change: Change) -> Event {
        Event {
            revision: Revision(revision),
            committed_unix_ms: 0,
            change,
        }
    }

    fn identity<'a>(
        session_id: &'a str,
        user_id: &'a str,
        passkey_id: &'a str,
    ) -> SessionIdentity<'a> {
        SessionIdentity {
            session_id,
            user_id,
            passkey_id,
            issued_unix_ms: 1_000,
        }
    }

    fn revoked(replica: &Replica, session: SessionIdentity<'_>) -> bool {
        replica.sessions().view().is_revoked(session)
    }

    /// The combined filter is rebuilt as it fills (from 1 024 ids on) and after a snapshot:
    /// no revocation is ever missed across a rebuild, and ids of no set stay unrevoked.
    #[test]
    fn every_revocation_holds_across_filter_rebuilds() {
        let replica = Replica::new();
        let mut revision = 0;
        let mut apply = |change: Change| {
            revision += 1;
            replica.apply(&event(revision, change)).expect("in order");
        };
        for index in 0..3_000 {
            apply(session_revoked(&format!("ses_{index}"), 9_000));
            if index % 3 == 0 {
                apply(passkey_revoked(&format!("pk_{index}"), 9_000));
                apply(user(&format!("user_{index}"), true, 0, 9_000));
            }
        }
        let check = |replica: &Replica| {
            for index in 0..3_000 {
                let (ses, pk, user) = (
                    format!("ses_{index}"),
                    format!("pk_{index}"),
                    format!("user_{index}"),
                );
                assert!(revoked(replica, identity(&ses, "nobody", "pk_none")));
                assert_eq!(
                    revoked(replica, identity("ses_none", "nobody", &pk)),
                    index % 3 == 0
                );
                assert_eq!(
                    revoked(replica, identity("ses_none", &user, "pk_none")),
                    index % 3 == 0
                );
                let live = format!("ses_live_{index}");
                assert!(!revoked(replica, identity(&live, "nobody", "pk_none")));
            }
        };
        check(&replica);
        let mut snapshot = crate::replica::Snapshot::new(Revision(10_000), 0);
        for index in 0..3_000 {
            if let Change::SessionRevoked(revoked) = session_revoked(&format!("ses_{index}"), 9_000)
            {
                snapshot.sessions_mut().insert_revoked_session(&revoked);
            }
            if index % 3 == 0 {
                if let Change::PasskeyRevoked(revoked) =
                    passkey_revoked(&format!("pk_{index}"), 9_000)
                {
                    snapshot.sessions_mut().insert_revoked_passkey(&revoked);
                }
                if let Change::UserState(state) = user(&format!("user_{index}"), true, 0, 9_000) {
                    snapshot.sessions_mut().insert_user(&state);
                }
            }
        }
        let installed = Replica::new();
        installed.install_snapshot(snapshot);
        check(&installed);
    }

    #[test]
    fn events_apply_in_revision_order_with_the_revision() {
        let replica = Replica::new();
        let ses = identity("ses_1", "alice", "pk_1");
        replica
            .apply(&event(1, signing_key("sk_1", [1; 32], None)))
            .expect("1 follows 0");
        assert_eq!(
            replica.sessions().view().signing_key("sk_1"),
            Some(SigningKey {
                public_key: [1; 32],
                verify_until_unix_ms: None,
                revoked: false,
                max_session_lifetime_ms: None,
            })
        );
        assert!(!revoked(&replica, ses));
        // A session event out of order is a gap like any other and changes nothing.
        assert!(
            replica
                .apply(&event(3, session_revoked("ses_1", 9_000)))
                .is_err()
        );
        assert!(!revoked(&replica, ses));
        assert_eq!(replica.applied_revision(), Revision(1));

        replica
            .apply(&event(2, session_revoked("ses_1", 9_000)))
            .expect("2 follows 1");
        assert!(revoked(&replica, ses));
        assert!(!revoked(&replica, identity("ses_2", "alice", "pk_1")));
        replica
            .apply(&event(3, passkey_revoked("pk_2", 9_000)))
            .expect("in order");
        assert!(revoked(&replica, identity("ses_3", "alice", "pk_2")));
        assert!(!revoked(&replica, identity("ses_3", "bob", "pk_3")));

        // Signed out everywhere at 1 000: sessions issued before are revoked, later ones not.
        replica
            .apply(&event(4, user("bob", false, 1_001, 9_000)))
            .expect("in order");
        assert!(revoked(&replica, identity("ses_4", "bob", "pk_3")));
        replica
            .apply(&event(5, user("bob", false, 1_000, 9_000)))
            .expect("in order");
        assert!(
            !revoked(&replica, identity("ses_4", "bob", "pk_3")),
            "issued at the instant: not before it"
        );
        // Disabled: every session; enabled again (whole state replaces): none of the later ones.
        replica
            .apply(&event(6, user("bob", true, 0, 9_000)))
            .expect("in order");
        assert!(revoked(&replica, identity("ses_4", "bob", "pk_3")));
        replica
            .apply(&event(7, user("bob", false, 0, 9_000)))
            .expect("in order");
        assert!(!revoked(&replica, identity("ses_4", "bob", "pk_3")));
        assert_eq!(replica.applied_revision(), Revision(7));
        assert_eq!(
            replica.sessions().sizes(),
            SessionStateSizes {
                signing_keys: 1,
                revoked_sessions: 1,
                revoked_passkeys: 1,
                users: 1
            }
        );
    }

    #[test]
    fn a_snapshot_replaces_the_session_state_only_when_installed() {
        let replica = Replica::new();
        replica
            .apply(&event(1, signing_key("sk_old", [1; 32], None)))
            .expect("in order");
        replica
            .apply(&event(2, session_revoked("ses_old", 9_000)))
            .expect("in order");

        let mut snapshot = crate::replica::Snapshot::new(Revision(10), 0);
        let sessions = snapshot.sessions_mut();
        sessions.insert_signing_key(&SessionVerifyingKey {
            key_id: "sk_new".into(),
            public_key: [2; 32],
            created_unix_ms: 0,
            verify_until_unix_ms: None,
            revoked: false,
            max_session_lifetime_ms: None,
        });
        sessions.insert_revoked_passkey(&PasskeyRevocation {
            user_id: "alice".into(),
            passkey_id: "pk_gone".into(),
            revoked_unix_ms: 0,
            prune_after_unix_ms: 9_000,
        });
        sessions.insert_user(&UserState {
            user_id: "carol".into(),
            disabled: true,
            sessions_revoked_before_unix_ms: 0,
            prune_after_unix_ms: 0,
        });
        // Still the old state while the snapshot is being built.
        assert!(revoked(&replica, identity("ses_old", "alice", "pk_1")));
        assert!(replica.sessions().view().signing_key("sk_new").is_none());

        replica.install_snapshot(snapshot);
        let view = replica.sessions().view();
        assert!(view.signing_key("sk_old").is_none());
        assert_eq!(
            view.signing_key("sk_new").map(|key| key.public_key),
            Some([2; 32])
        );
        assert!(!view.is_revoked(identity("ses_old", "alice", "pk_1")));
        assert!(view.is_revoked(identity("ses_x", "alice", "pk_gone")));
        assert!(view.is_revoked(identity("ses_y", "carol", "pk_9")));
        assert_eq!(replica.applied_revision(), Revision(10));
        replica
            .apply(&event(11, session_revoked("ses_z", 9_000)))
            .expect("events continue after the snapshot");
        assert!(revoked(&replica, identity("ses_z", "dave", "pk_9")));
    }

    #[test]
    fn the_id_hasher_spreads_similar_ids() {
        use std::collections::HashSet;
        use std::hash::BuildHasher;

        let hasher = BuildHasherDefault::<IdHasher>::default();
        let ids: Vec<String> = (0..100_000).map(|i| format!("ses_{i:022}")).collect();
        // Low bits pick the bucket, the top 7 bits tag it: both must look uniform. 100 000
        // uniform draws from 65 536 values give about 51 300 distinct ones.
        let low: HashSet<u64> = ids
            .iter()
            .map(|id| hasher.hash_one(id.as_str()) & 0xffff)
            .collect();
        let top: HashSet<u64> = ids
            .iter()
            .map(|id| hasher.hash_one(id.as_str()) >> 57)
            .collect();
        assert!(low.len() > 50_000, "{} distinct low 16 bits", low.len());
        assert_eq!(top.len(), 128);
    }

    #[test]
    fn pruning_drops_only_what_can_no_longer_match() {
        let state = SessionState::new();
        for change in [
            signing_key("sk_retired", [1; 32], Some(100)),
            session_revoked("ses_a", 1_000),
            session_revoked("ses_b", 2_000),
            passkey_revoked("pk_a", 1_000),
            // Revoked again later: kept until the later instant.
            passkey_revoked("pk_a", 3_000),
            user("enabled", false, 500, 1_000),
            user("disabled", true, 500, 1_000),
        ] {
            state.apply(&change);
        }
        assert_eq!(state.prune(1_000), 0, "never at the instant itself");
        assert_eq!(state.prune(1_001), 2, "ses_a and the enabled user");
        let view = state.view();
        assert!(!view.is_revoked(identity("ses_a", "x", "y")));
        assert!(view.is_revoked(identity("ses_b", "x", "y")));
        assert!(view.is_revoked(identity("ses_c", "x", "pk_a")));
        assert!(
            view.is_revoked(identity("ses_c", "disabled", "y")),
            "a disabled user is never pruned"
        );
        assert_eq!(state.prune(5_000), 2, "ses_b and pk_a");
        assert_eq!(
            state.sizes(),
            SessionStateSizes {
                signing_keys: 1,
                revoked_sessions: 0,
                revoked_passkeys: 0,
                users: 1
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_pruning_task_runs_on_its_interval() {
        let replica = Arc::new(Replica::new());
        replica
            .apply(&event(1, session_revoked("ses_a", 1_000)))
            .expect("in order");
        let clock = Arc::new(AtomicI64::new(2_000));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(prune_periodically(
            Arc::clone(&replica),
            PRUNE_INTERVAL,
            {
                let clock = Arc::clone(&clock);
                move || clock.load(Ordering::SeqCst)
            },
            shutdown.clone(),
        ));
        // Let the task start and take its immediate first tick.
        tokio::task::yield_now().await;
        assert_eq!(replica.sessions().sizes().revoked_sessions, 1);
        tokio::time::advance(PRUNE_INTERVAL - Duration::from_millis(1)).await;
        tokio::task::yield_now().await;
        assert_eq!(
            replica.sessions().sizes().revoked_sessions,
            1,
            "not before the interval"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        let mut turns = 0;
        while replica.sessions().sizes().revoked_sessions != 0 {
            assert!(turns < 100, "the pruning task did not run");
            turns += 1;
            tokio::task::yield_now().await;
        }
        shutdown.cancel();
        task.await.expect("the task ends on shutdown");
    }
}
