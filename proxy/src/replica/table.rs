//! The replica's key table: one flat open-addressing array of 64-byte slots, probed linearly,
//! read without locks while the one writer changes it.
//!
//! Why not a sharded hash map: at 1M keys nearly every lookup is a cache miss, and what a
//! lookup costs is the number of dependent memory accesses. Here a slot holds everything a
//! verdict needs (the 128-bit hash prefix, the key id, expiry and enabled, the interned owner,
//! a meta stamp), aligned to one cache line, and a key is in its home slot or a few after it:
//! one line per probe, usually one probe. A reader writes nothing shared (no lock word, no
//! reference count), so readers on many cores never contend.
//!
//! **Invariant:** one writer at a time (the replica's writer mutex). Each slot is a sequence
//! lock over atomic words: the writer makes the sequence odd, writes, and makes it even again;
//! a reader retries a slot whose sequence was odd or changed while it read. So a reader sees a
//! slot's old state or its new one, never a mix, and waits only while the writer is inside that
//! one slot's write. Deletions leave tombstones (probes continue past them; a later insert of
//! another key reuses them), so no entry ever moves while readers probe.
//!
//! **Invariant:** at most 5/8 of the slots are ever used (live or tombstone), so every probe
//! ends at an empty slot, and soon: a table is built half full (1.5 slots read on average to
//! find a key, 2.5 to learn one is absent; at 7/8, the first layout measured, an absent key
//! took ~32 and the negative-cache path got slower than before). A table that would pass 5/8
//! is copied into one twice its live keys' size, which the replica swaps in whole (readers of
//! the old one finish on it).
//!
//! A key's extras (its meta map, its limits policy) are rare and of any size, so they live
//! beside the slots, in an append-only slab indexed by a stamp the slot names. A stamp is
//! given once per table and its extras are written before the slot that names it, so a reader
//! reaches them with two plain loads, no lock and no hashing (a sharded map cost a lock word's
//! two atomic writes and a hash per read: BENCHMARKS.md, "Limits per key").
//!
//! **Invariant:** a stamp's extras stay in the slab, unchanged, until the table is dropped:
//! a reader that read a slot's old stamp gets the old extras, which is the slot's old state,
//! whole. Replaced extras are kept (retired) until there are as many retired as live ones (at
//! least [`MIN_RETIRED`]); then the table reports [`Full::Extras`] and the replica copies it
//! into a table of the same size with a fresh slab, so retired extras cost at most as much
//! memory again as the live ones. A plain key has stamp 0 and no extras: its lookup never
//! touches the slab.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, OnceLock};

use super::HashPrefix;
use crate::verdict::KeyExtras;

const EMPTY: u64 = 0;
const LIVE: u64 = 1;
const TOMBSTONE: u64 = 2;

/// One cache line: a sequence word and seven data words.
#[repr(C, align(64))]
#[derive(Default)]
struct Slot {
    sequence: AtomicU64,
    kind: AtomicU64,
    prefix: [AtomicU64; 2],
    id: [AtomicU64; 2],
    state: AtomicU64,
    /// The owner id (low 32 bits) and the extras stamp (high 32 bits; 0: no extras).
    owner_meta: AtomicU64,
}

/// A slot's contents, copied out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Record {
    pub prefix: [u64; 2],
    pub id: u128,
    pub state: u64,
    pub owner: u32,
    pub meta_stamp: u32,
}

impl Slot {
    /// A consistent copy of the slot: its kind and record.
    #[inline]
    fn read(&self) -> (u64, Record) {
        loop {
            let before = self.sequence.load(Ordering::Acquire);
            if before & 1 == 0 {
                let kind = self.kind.load(Ordering::Relaxed);
                let prefix = [
                    self.prefix[0].load(Ordering::Relaxed),
                    self.prefix[1].load(Ordering::Relaxed),
                ];
                let id = u128::from(self.id[0].load(Ordering::Relaxed))
                    | u128::from(self.id[1].load(Ordering::Relaxed)) << 64;
                let state = self.state.load(Ordering::Relaxed);
                let owner_meta = self.owner_meta.load(Ordering::Relaxed);
                fence(Ordering::Acquire);
                if self.sequence.load(Ordering::Relaxed) == before {
                    let record = Record {
                        prefix,
                        id,
                        state,
                        owner: owner_meta as u32,
                        meta_stamp: (owner_meta >> 32) as u32,
                    };
                    return (kind, record);
                }
            }
            std::hint::spin_loop();
        }
    }

    /// Writer only (one at a time).
    fn write(&self, kind: u64, record: &Record) {
        let sequence = self.sequence.load(Ordering::Relaxed);
        self.sequence
            .store(sequence.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        self.kind.store(kind, Ordering::Relaxed);
        self.prefix[0].store(record.prefix[0], Ordering::Relaxed);
        self.prefix[1].store(record.prefix[1], Ordering::Relaxed);
        self.id[0].store(record.id as u64, Ordering::Relaxed);
        self.id[1].store((record.id >> 64) as u64, Ordering::Relaxed);
        self.state.store(record.state, Ordering::Relaxed);
        self.owner_meta.store(
            u64::from(record.owner) | u64::from(record.meta_stamp) << 32,
            Ordering::Relaxed,
        );
        self.sequence
            .store(sequence.wrapping_add(2), Ordering::Release);
    }

    /// Writer only: the kind and prefix, which only the writer changes.
    #[inline]
    fn kind_and_prefix(&self) -> (u64, [u64; 2]) {
        (
            self.kind.load(Ordering::Relaxed),
            [
                self.prefix[0].load(Ordering::Relaxed),
                self.prefix[1].load(Ordering::Relaxed),
            ],
        )
    }
}

/// The table cannot take the change: copy it ([`Table::rebuilt`]) and make it there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Full {
    /// No room for another key: copy into a bigger table.
    Slots,
    /// Too many retired extras, or no stamp left: copy into a table of the same size.
    Extras,
}

/// Stamps per slab chunk; chunks are allocated when their first stamp is given.
const CHUNK: usize = 1024;

/// Retired extras a table keeps however few are live, before it asks to be copied.
pub(super) const MIN_RETIRED: usize = 4096;

/// One chunk of the extras slab: stamp `n` is at index `n - 1` of the whole slab.
type Chunk = Box<[OnceLock<Arc<KeyExtras>>]>;

/// The slots, the extras beside them, and counts.
pub(super) struct Table {
    slots: Box<[Slot]>,
    /// The extras slab: as many stamps as slots, so a fresh table holds every live key's.
    extras: Box<[OnceLock<Chunk>]>,
    /// Live keys.
    live: AtomicUsize,
    /// Live keys and tombstones.
    used: AtomicUsize,
    /// Stamps given so far (the next is this plus one). Writer only.
    stamps: AtomicUsize,
    /// Live keys with extras. Writer only.
    live_extras: AtomicUsize,
}

/// `count` empty slots, on 2 MiB pages where the kernel gives them: a lookup of a key read
/// lately by nobody reads one line at a random place in the table, and on 4 KiB pages that is
/// also a TLB miss and a page walk (at 1M keys, 479–621 against 306–320 ns a verification:
/// BENCHMARKS.md, "huge pages for the key table"). The advice is given before the slots are
/// written, since the first write is what picks the page size.
fn slots_on_huge_pages(count: usize) -> Box<[Slot]> {
    let mut slots = Vec::with_capacity(count);
    if let Err(error) = keygate_hugepages::advise(slots.spare_capacity_mut()) {
        tracing::debug!(%error, "the key table stays on 4 KiB pages");
    }
    slots.resize_with(count, Slot::default);
    slots.into_boxed_slice()
}

/// Where a key is, or would go.
enum Place {
    Live(usize),
    /// A tombstone to reuse.
    Reuse(usize),
    /// An empty slot.
    Empty(usize),
}

impl Table {
    /// A table that holds `keys` keys without growing, half full when it holds them.
    pub fn with_capacity(keys: usize) -> Self {
        // Stamps are 32 bits wide: a table never has more slots than that.
        let slots = keys.saturating_mul(2).clamp(8, u32::MAX as usize);
        Self {
            slots: slots_on_huge_pages(slots),
            extras: std::iter::repeat_with(OnceLock::new)
                .take(slots.div_ceil(CHUNK))
                .collect(),
            live: AtomicUsize::new(0),
            used: AtomicUsize::new(0),
            stamps: AtomicUsize::new(0),
            live_extras: AtomicUsize::new(0),
        }
    }

    /// Live keys.
    #[inline]
    pub fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Slots that may be used (live or tombstone): 5/8 of them.
    fn max_used(&self) -> usize {
        self.slots.len() / 8 * 5 + self.slots.len() % 8 * 5 / 8
    }

    /// The home slot of a prefix: its first word scaled to the table (already uniform).
    #[inline]
    fn home(&self, prefix: &[u64; 2]) -> usize {
        ((u128::from(prefix[0]) * self.slots.len() as u128) >> 64) as usize
    }

    /// The live record for `prefix`, if any. Lock-free.
    #[inline]
    pub fn get(&self, prefix: &HashPrefix) -> Option<Record> {
        let words = prefix.words();
        let len = self.slots.len();
        let mut index = self.home(&words);
        for _ in 0..len {
            let (kind, record) = self.slots[index].read();
            if kind == EMPTY {
                return None;
            }
            if kind == LIVE && record.prefix == words {
                return Some(record);
            }
            index += 1;
            if index == len {
                index = 0;
            }
        }
        None
    }

    /// The extras a record names; `None` when the record has none. Lock-free.
    #[inline]
    pub fn extras(&self, record: &Record) -> Option<&Arc<KeyExtras>> {
        if record.meta_stamp == 0 {
            return None;
        }
        let extras = self.stamped(record.meta_stamp);
        // Written before the slot that names the stamp, and kept while the table lives.
        debug_assert!(extras.is_some(), "a slot names a stamp with no extras");
        extras
    }

    #[inline]
    fn stamped(&self, stamp: u32) -> Option<&Arc<KeyExtras>> {
        let index = (stamp as usize).checked_sub(1)?;
        self.extras
            .get(index / CHUNK)?
            .get()?
            .get(index % CHUNK)?
            .get()
    }

    /// Gives `extras` the next stamp. Writer only.
    fn stamp(&self, extras: &Arc<KeyExtras>) -> Result<u32, Full> {
        let stamps = self.stamps.load(Ordering::Relaxed);
        let live = self.live_extras.load(Ordering::Relaxed);
        let retired = stamps - live;
        if stamps >= self.slots.len() || retired >= live.max(MIN_RETIRED) {
            return Err(Full::Extras);
        }
        let chunk = self.extras[stamps / CHUNK]
            .get_or_init(|| std::iter::repeat_with(OnceLock::new).take(CHUNK).collect());
        // A stamp is given once, so its cell is empty.
        let _ = chunk[stamps % CHUNK].set(Arc::clone(extras));
        self.stamps.store(stamps + 1, Ordering::Relaxed);
        self.live_extras.store(live + 1, Ordering::Relaxed);
        // At most as many stamps as slots, and slots fit in 32 bits.
        Ok((stamps + 1) as u32)
    }

    /// Writer only: the extras named by a slot being replaced or removed are retired.
    fn retire(&self, stamp: u32) {
        if stamp != 0 {
            self.live_extras.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Writer only.
    fn place(&self, words: &[u64; 2]) -> Place {
        let len = self.slots.len();
        let mut index = self.home(words);
        let mut reuse = None;
        for _ in 0..len {
            let (kind, prefix) = self.slots[index].kind_and_prefix();
            match kind {
                EMPTY => break,
                LIVE if prefix == *words => return Place::Live(index),
                TOMBSTONE if reuse.is_none() => reuse = Some(index),
                _ => {}
            }
            index += 1;
            if index == len {
                index = 0;
            }
        }
        match reuse {
            Some(index) => Place::Reuse(index),
            None => Place::Empty(index),
        }
    }

    /// Inserts or replaces the key `prefix`. Writer only.
    pub fn put(
        &self,
        prefix: &HashPrefix,
        id: u128,
        state: u64,
        owner: u32,
        meta: Option<&Arc<KeyExtras>>,
    ) -> Result<(), Full> {
        let words = prefix.words();
        let place = self.place(&words);
        let used = self.used.load(Ordering::Relaxed);
        if matches!(place, Place::Empty(_)) && used + 1 > self.max_used() {
            return Err(Full::Slots);
        }
        let meta_stamp = match meta {
            None => 0,
            Some(meta) => self.stamp(meta)?,
        };
        let record = Record {
            prefix: words,
            id,
            state,
            owner,
            meta_stamp,
        };
        let (index, old_stamp) = match place {
            Place::Live(index) => (index, self.slots[index].read().1.meta_stamp),
            Place::Reuse(index) => {
                self.live.fetch_add(1, Ordering::Relaxed);
                (index, 0)
            }
            Place::Empty(index) => {
                self.live.fetch_add(1, Ordering::Relaxed);
                self.used.store(used + 1, Ordering::Relaxed);
                (index, 0)
            }
        };
        self.slots[index].write(LIVE, &record);
        self.retire(old_stamp);
        Ok(())
    }

    /// Removes the key `prefix`, leaving a tombstone. Writer only.
    pub fn remove(&self, prefix: &HashPrefix) {
        let Place::Live(index) = self.place(&prefix.words()) else {
            return;
        };
        let (_, record) = self.slots[index].read();
        self.slots[index].write(TOMBSTONE, &record);
        self.live.fetch_sub(1, Ordering::Relaxed);
        self.retire(record.meta_stamp);
    }

    /// Every live record with its extras. Writer only.
    pub fn for_each(&self, mut visit: impl FnMut(&HashPrefix, &Record, Option<&Arc<KeyExtras>>)) {
        for slot in &self.slots {
            let (kind, record) = slot.read();
            if kind != LIVE {
                continue;
            }
            let prefix = HashPrefix::from_words(record.prefix);
            visit(&prefix, &record, self.extras(&record));
        }
    }

    /// A copy with room for at least `keys` keys, without tombstones or retired extras.
    /// Writer only.
    pub fn grown(&self, keys: usize) -> Self {
        let bigger = Self::with_capacity(keys.max(self.len()));
        self.for_each(|prefix, record, meta| {
            // Room for every live key was made above, and a fresh slab has a stamp per slot.
            let _ = bigger.put(prefix, record.id, record.state, record.owner, meta);
        });
        bigger
    }

    /// The copy that can take the change refused with `full`: twice the live keys' room for
    /// [`Full::Slots`], the same size (or that, if larger) for [`Full::Extras`]. Writer only.
    pub fn rebuilt(&self, full: Full) -> Self {
        let doubled = (self.len() + 1) * 2;
        match full {
            Full::Slots => self.grown(doubled),
            Full::Extras => self.grown(doubled.max(self.slots.len() / 2)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(n: u64) -> HashPrefix {
        // Clustered home slots: the high bits of the first word pick the slot.
        HashPrefix::from_words([n << 60 | n, !n])
    }

    #[test]
    fn slots_are_one_cache_line() {
        assert_eq!(std::mem::size_of::<Slot>(), 64);
        assert_eq!(std::mem::align_of::<Slot>(), 64);
    }

    #[test]
    fn put_get_remove_and_tombstones() {
        let table = Table::with_capacity(6);
        for n in 0..6 {
            table
                .put(&prefix(n), u128::from(n), n, 7, None)
                .expect("room");
        }
        assert_eq!(table.len(), 6);
        for n in 0..6 {
            assert_eq!(table.get(&prefix(n)).map(|record| record.state), Some(n));
        }
        assert_eq!(table.get(&prefix(9)), None);
        table.remove(&prefix(2));
        assert_eq!(table.get(&prefix(2)), None);
        // Keys after the tombstone are still found; the tombstone is reused.
        assert_eq!(table.get(&prefix(3)).map(|record| record.state), Some(3));
        table.put(&prefix(2), 2, 22, 7, None).expect("reuses");
        assert_eq!(table.get(&prefix(2)).map(|record| record.state), Some(22));
        assert_eq!(table.len(), 6);
        // Replacing a key does not add one.
        table.put(&prefix(2), 2, 23, 7, None).expect("replaces");
        assert_eq!(table.len(), 6);
        let mut filled = 6;
        while table.put(&prefix(100 + filled), 0, 0, 0, None).is_ok() {
            filled += 1;
        }
        assert!(
            filled < table.slots.len() as u64,
            "an empty slot is always left"
        );
        let grown = table.grown(table.len() * 2);
        assert_eq!(grown.len(), table.len());
        assert_eq!(grown.get(&prefix(2)).map(|record| record.state), Some(23));
        grown
            .put(&prefix(999), 0, 1, 0, None)
            .expect("room after growing");
    }

    fn extras(plan: &str) -> Arc<KeyExtras> {
        Arc::new(KeyExtras {
            meta: Some(keygate_proto::Meta::from([(
                "plan".to_owned(),
                plan.to_owned(),
            )])),
            policy: None,
        })
    }

    #[test]
    fn extras_follow_their_key_and_old_readers_keep_the_old_ones() {
        let table = Table::with_capacity(4);
        let pro = extras("pro");
        table.put(&prefix(1), 1, 1, 0, Some(&pro)).expect("room");
        let old = table.get(&prefix(1)).expect("present");
        assert!(Arc::ptr_eq(table.extras(&old).expect("has extras"), &pro));
        let team = extras("team");
        table
            .put(&prefix(1), 1, 1, 0, Some(&team))
            .expect("replaces");
        // A reader that read the slot before the change still reaches what it named.
        assert!(Arc::ptr_eq(table.extras(&old).expect("kept"), &pro));
        let new = table.get(&prefix(1)).expect("present");
        assert!(Arc::ptr_eq(table.extras(&new).expect("has extras"), &team));
        table.put(&prefix(1), 1, 1, 0, None).expect("replaces");
        let plain = table.get(&prefix(1)).expect("present");
        assert!(table.extras(&plain).is_none());
        assert_eq!(table.live_extras.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn retired_extras_ask_for_a_copy_of_the_same_size_that_drops_them() {
        let table = Table::with_capacity(MIN_RETIRED * 2);
        let slots = table.slots.len();
        let mut changes = 0;
        let full = loop {
            match table.put(&prefix(changes % 3), 0, 1, 0, Some(&extras("x"))) {
                Ok(()) => changes += 1,
                Err(full) => break full,
            }
        };
        assert_eq!(full, Full::Extras);
        // Three live, the rest retired: at most MIN_RETIRED of them.
        assert_eq!(changes, MIN_RETIRED as u64 + 3);
        let copy = table.rebuilt(full);
        assert_eq!(copy.slots.len(), slots, "the same size");
        assert_eq!(copy.len(), 3);
        assert_eq!(
            copy.stamps.load(Ordering::Relaxed),
            3,
            "retired extras dropped"
        );
        for n in 0..3 {
            let record = copy.get(&prefix(n)).expect("copied");
            let kept = copy.extras(&record).expect("with its extras");
            assert_eq!(
                kept.meta.as_ref().and_then(|meta| meta.get("plan")),
                Some(&"x".to_owned())
            );
        }
        copy.put(&prefix(0), 0, 1, 0, Some(&extras("y")))
            .expect("room again");
    }

    #[test]
    fn readers_see_whole_states_while_the_writer_changes_them() {
        let table = Arc::new(Table::with_capacity(64));
        for n in 0..32 {
            table
                .put(&prefix(n), u128::from(n), 0, 0, None)
                .expect("room");
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (table, stop) = (Arc::clone(&table), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) || reads < 10_000 {
                    for n in 0..32 {
                        if let Some(record) = table.get(&prefix(n)) {
                            // The writer writes key n with id n and owner = state % 1000:
                            // a torn read would pair one write's state with another's owner.
                            assert_eq!(record.id, u128::from(n));
                            assert_eq!(u64::from(record.owner), record.state % 1000);
                        }
                        reads += 1;
                    }
                }
            })
        };
        for round in 1..20_000u64 {
            let n = round % 32;
            if round % 7 == 0 {
                table.remove(&prefix(n));
            } else {
                table
                    .put(
                        &prefix(n),
                        u128::from(n),
                        round,
                        (round % 1000) as u32,
                        None,
                    )
                    .expect("room");
            }
        }
        stop.store(true, Ordering::Relaxed);
        reader.join().expect("no torn read");
    }
}
