//! WebAuthn ceremonies in progress: the state between a `…/begin` and its `…/finish`, kept in
//! the store so that any control-plane replica can finish a ceremony another one began (no
//! sticky sessions behind a load balancer).
//!
//! Each ceremony is taken exactly once, atomically: of two concurrent finishes, on one replica
//! or two, only one finds it.
//!
//! Each is kept with the client bucket that began it (`client`: an IPv4 address or an IPv6 /64,
//! as text), so a put can refuse a client that has too many open already: one address (or one
//! /64) cannot fill the table that everyone shares.

use async_trait::async_trait;

use super::StoreError;

/// A ceremony to keep until its finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCeremony {
    /// `cer_…`, random: the only handle a client has on it.
    pub ceremony_id: String,
    /// The relying party's state, serialised by the caller (it names the kind of ceremony).
    pub state_json: String,
    pub expires_unix_ms: i64,
    /// The client bucket that began it (`keygate_ratelimit::client_bucket`, as text).
    pub client: String,
}

/// How many ceremonies a put may leave in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CeremonyLimits {
    /// Most ceremonies kept at once, across every client (and every replica).
    pub capacity: usize,
    /// Most unexpired ceremonies one client may have open; 0: no per-client cap.
    pub per_client: usize,
}

/// What [`CeremonyStore::put_ceremony`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CeremonyPut {
    Kept,
    /// The table is at its capacity, even without its expired ceremonies.
    Full,
    /// This client has `per_client` unexpired ceremonies open already; the first of them
    /// expires at `next_expiry_unix_ms`.
    ClientFull {
        next_expiry_unix_ms: i64,
    },
}

/// What [`CeremonyStore::take_ceremony`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CeremonyTaken {
    Found(String),
    /// Never issued, already finished, or pruned.
    Unknown,
    /// Issued, but expired. (It is gone now as well.)
    Expired,
}

impl CeremonyTaken {
    /// What a take at `now_unix_ms` found: the ceremony it deleted, as its state and expiry,
    /// if there was one. A ceremony has expired from its `expires_unix_ms` on (as a prune
    /// judges it).
    pub fn at(now_unix_ms: i64, deleted: Option<(String, i64)>) -> Self {
        match deleted {
            Some((state_json, expires_unix_ms)) if expires_unix_ms > now_unix_ms => {
                Self::Found(state_json)
            }
            Some(_) => Self::Expired,
            None => Self::Unknown,
        }
    }
}

/// Ceremonies in progress.
#[async_trait]
pub trait CeremonyStore: Send + Sync {
    /// Keeps `ceremony` unless its client has `limits.per_client` unexpired ceremonies open
    /// ([`CeremonyPut::ClientFull`]) or `limits.capacity` ceremonies are kept already; then
    /// expired ones are deleted and, if there is still no room, [`CeremonyPut::Full`].
    async fn put_ceremony(
        &self,
        ceremony: NewCeremony,
        limits: CeremonyLimits,
        now_unix_ms: i64,
    ) -> Result<CeremonyPut, StoreError>;

    /// Deletes the ceremony and returns its state: a second call finds nothing.
    async fn take_ceremony(
        &self,
        ceremony_id: &str,
        now_unix_ms: i64,
    ) -> Result<CeremonyTaken, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ceremony_has_expired_from_its_expiry_on() {
        let deleted = |expires| Some(("{}".to_owned(), expires));
        assert_eq!(
            CeremonyTaken::at(100, deleted(101)),
            CeremonyTaken::Found("{}".into())
        );
        assert_eq!(CeremonyTaken::at(100, deleted(100)), CeremonyTaken::Expired);
        assert_eq!(CeremonyTaken::at(100, None), CeremonyTaken::Unknown);
    }
}
