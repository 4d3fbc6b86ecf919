//! Key owners, interned once per process: each distinct owner name is stored once, with its
//! `x-keygate-owner` header value built once, and named everywhere else by a 32-bit
//! [`OwnerId`].
//!
//! Why: the replica's slot holds an owner as 4 bytes instead of a 16-byte `Arc<str>`, and a
//! valid key's grant copies that number instead of touching a reference count on a cache line
//! shared by every key of the owner (a second random memory access per verification, measured
//! at ~200 ns at 1M keys on 2026-11-22). The header value is backed by static bytes, so cloning
//! it for a forwarded request touches no reference count either.
//!
//! **Invariant:** an interned owner is never freed. Memory is bounded by the distinct owner
//! names the process has seen (each name once, however many keys, snapshots or events carry
//! it): about twice the name's length plus 80 bytes each. Owner names are chosen by operators
//! through the control plane, not by clients.
//!
//! Reads ([`OwnerId::name`], [`OwnerId::header`]) take no lock: the table is a list of chunks
//! of doubling size, each written once. Interning (writers only: snapshots, events, looked-up
//! keys) takes one process-wide mutex.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;
use http::HeaderValue;

/// One interned owner.
#[derive(Debug)]
struct Record {
    name: &'static str,
    /// `None` when the name cannot be a header value.
    header: Option<HeaderValue>,
}

/// An interned owner name: a number, copied freely.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct OwnerId(u32);

/// Indices of chunk 0; chunk `c` holds `FIRST_CHUNK << c`.
const FIRST_CHUNK: usize = 64;
/// Enough chunks for every `u32` index.
const CHUNKS: usize = 27;

type Chunk = Box<[OnceLock<&'static Record>]>;

static CHUNK_TABLE: [OnceLock<Chunk>; CHUNKS] = [const { OnceLock::new() }; CHUNKS];
static BY_NAME: OnceLock<Mutex<HashMap<&'static str, OwnerId>>> = OnceLock::new();

/// Chunk and offset of an index.
#[inline]
fn position(index: u32) -> (usize, usize) {
    let shifted = index as usize + FIRST_CHUNK;
    let chunk = (usize::BITS - 1 - shifted.leading_zeros()) as usize
        - FIRST_CHUNK.trailing_zeros() as usize;
    (chunk, shifted - (FIRST_CHUNK << chunk))
}

impl OwnerId {
    /// The id of `name`, interning it the first time it is seen.
    pub fn intern(name: &str) -> Self {
        let by_name = BY_NAME.get_or_init(Default::default);
        // Every update is one map insert after the table slot is written: a panic elsewhere
        // cannot leave it inconsistent.
        let mut by_name = by_name
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(id) = by_name.get(name) {
            return *id;
        }
        let index = u32::try_from(by_name.len()).unwrap_or(u32::MAX);
        let name: &'static str = Box::leak(Box::from(name));
        let header = HeaderValue::from_maybe_shared(Bytes::from_static(name.as_bytes())).ok();
        let record: &'static Record = Box::leak(Box::new(Record { name, header }));
        let (chunk, offset) = position(index);
        let slots = CHUNK_TABLE[chunk.min(CHUNKS - 1)].get_or_init(|| {
            std::iter::repeat_with(OnceLock::new)
                .take(FIRST_CHUNK << chunk.min(CHUNKS - 1))
                .collect()
        });
        if let Some(slot) = slots.get(offset) {
            let _ = slot.set(record);
        }
        let id = OwnerId(index);
        by_name.insert(name, id);
        id
    }

    #[inline]
    fn record(self) -> Option<&'static Record> {
        let (chunk, offset) = position(self.0);
        CHUNK_TABLE.get(chunk)?.get()?.get(offset)?.get().copied()
    }

    /// The owner's name.
    #[inline]
    pub fn name(self) -> &'static str {
        // An id is only made by `intern`, after its slot was written.
        self.record().map_or("", |record| record.name)
    }

    /// `x-keygate-owner`'s value, built once; `None` when the name is not a valid header value.
    /// Cloning it copies a pointer to static bytes (no reference count).
    #[inline]
    pub fn header(self) -> Option<&'static HeaderValue> {
        self.record().and_then(|record| record.header.as_ref())
    }

    /// The raw number, for a replica slot.
    #[inline]
    pub(crate) fn bits(self) -> u32 {
        self.0
    }

    /// The id a replica slot stored with [`OwnerId::bits`].
    #[inline]
    pub(crate) fn from_bits(bits: u32) -> Self {
        Self(bits)
    }
}

impl std::fmt::Debug for OwnerId {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.name(), formatter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_cover_every_index_once() {
        assert_eq!(position(0), (0, 0));
        assert_eq!(position(63), (0, 63));
        assert_eq!(position(64), (1, 0));
        assert_eq!(position(191), (1, 127));
        assert_eq!(position(192), (2, 0));
        let (chunk, offset) = position(u32::MAX);
        assert!(chunk < CHUNKS && offset < FIRST_CHUNK << chunk);
    }

    #[test]
    fn a_name_is_interned_once_with_its_header() {
        let alice = OwnerId::intern("owners-test-alice");
        assert_eq!(OwnerId::intern("owners-test-alice"), alice);
        assert_ne!(OwnerId::intern("owners-test-bob"), alice);
        assert_eq!(alice.name(), "owners-test-alice");
        assert_eq!(
            alice.header().map(HeaderValue::as_bytes),
            Some(&b"owners-test-alice"[..])
        );
        assert_eq!(OwnerId::intern("owners\ntest").header(), None);
        assert_eq!(OwnerId::from_bits(alice.bits()), alice);
        for index in 0..1000 {
            let name = format!("owners-test-{index}");
            assert_eq!(OwnerId::intern(&name).name(), name);
        }
    }
}
