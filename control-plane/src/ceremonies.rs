//! WebAuthn ceremonies in progress: the state between a `…/begin` and its `…/finish`, kept in
//! the store under a random ceremony id ([`crate::store::CeremonyStore`]), so a finish may reach
//! another control-plane replica than its begin (no sticky sessions behind a load balancer).
//! Each is taken exactly once, atomically in the store (a replayed finish finds nothing),
//! expires after a few minutes, and their number is bounded, so unfinished ceremonies cannot
//! grow without limit: in all, and per client (an IPv4 address or an IPv6 /64, the bucket
//! `keygate_ratelimit::client_bucket` names), so that one client cannot fill the table and
//! keep everyone else from signing in.
//!
//! The state is the relying party's, serialised as JSON: it holds the challenge and the
//! expected user, nothing that signs anyone in by itself.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use keygate_proto::time::now_unix_ms;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ids;
use keygate_ratelimit::client_bucket;

use crate::store::{CeremonyLimits, CeremonyPut, CeremonyTaken, NewCeremony, Store, StoreError};

/// How long a ceremony may take from begin to finish.
pub const CEREMONY_TTL: Duration = Duration::from_secs(5 * 60);
/// Most ceremonies in progress at once (across every replica).
pub const MAX_CEREMONIES: usize = 10_000;
/// Most ceremonies one client may have in progress, unless configured
/// (`max_ceremonies_per_address`).
pub const MAX_CEREMONIES_PER_CLIENT: usize = 20;

/// What [`Ceremonies::take`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken<T> {
    Found(T),
    /// Never issued, already finished, forgotten, or kept by a version that wrote another state.
    Unknown,
    /// Issued, but too long ago. (It is gone now as well.)
    Expired,
}

/// The ceremonies in progress are at their cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many sign-in ceremonies in progress; try again in a minute")]
pub struct Full;

/// The client has as many ceremonies in progress as it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "this address has {limit} passkey ceremonies in progress already; finish one, or begin \
     again once one has expired"
)]
pub struct ClientFull {
    pub limit: usize,
    /// Until the first of the client's ceremonies expires.
    pub retry_after: Duration,
}

/// Why a ceremony was not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRoom {
    Full(Full),
    Client(ClientFull),
}

/// Ceremonies in progress, in the store.
pub struct Ceremonies {
    store: Arc<dyn Store>,
    ttl: Duration,
    limits: CeremonyLimits,
}

impl Ceremonies {
    /// Ceremonies that live `ttl`, of which at most `limits.capacity` are kept, and at most
    /// `limits.per_client` (0: any number) of one client.
    pub fn new(store: Arc<dyn Store>, ttl: Duration, limits: CeremonyLimits) -> Self {
        Self { store, ttl, limits }
    }

    /// Keeps `state`, begun by `client`, under a fresh random id, which it returns;
    /// `Ok(Err(NoRoom))` at either cap.
    pub async fn insert<T: Serialize>(
        &self,
        state: &T,
        client: IpAddr,
    ) -> Result<Result<String, NoRoom>, StoreError> {
        let state_json = serde_json::to_string(state)
            .map_err(|e| StoreError::Corrupt(format!("serialising a ceremony: {e}")))?;
        let now = now_unix_ms();
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        let ceremony_id = ids::random_id("cer");
        let put = self
            .store
            .put_ceremony(
                NewCeremony {
                    ceremony_id: ceremony_id.clone(),
                    state_json,
                    expires_unix_ms: now.saturating_add(ttl_ms),
                    client: client_bucket(client).to_string(),
                },
                self.limits,
                now,
            )
            .await?;
        Ok(match put {
            CeremonyPut::Kept => Ok(ceremony_id),
            CeremonyPut::Full => Err(NoRoom::Full(Full)),
            CeremonyPut::ClientFull {
                next_expiry_unix_ms,
            } => {
                let wait_ms = u64::try_from(next_expiry_unix_ms.saturating_sub(now)).unwrap_or(0);
                Err(NoRoom::Client(ClientFull {
                    limit: self.limits.per_client,
                    retry_after: Duration::from_millis(wait_ms),
                }))
            }
        })
    }

    /// Removes and returns the ceremony `id`: a second call, here or on another replica, finds
    /// nothing.
    pub async fn take<T: DeserializeOwned>(&self, id: &str) -> Result<Taken<T>, StoreError> {
        Ok(match self.store.take_ceremony(id, now_unix_ms()).await? {
            CeremonyTaken::Found(json) => match serde_json::from_str(&json) {
                Ok(state) => Taken::Found(state),
                Err(error) => {
                    // Begun by another keygate version with another state shape: start again.
                    tracing::warn!(%error, "a ceremony's stored state does not decode");
                    Taken::Unknown
                }
            },
            CeremonyTaken::Unknown => Taken::Unknown,
            CeremonyTaken::Expired => Taken::Expired,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::CommitObserver;
    use crate::store::sqlite::SqliteStore;

    struct Ignore;
    impl CommitObserver for Ignore {
        fn committed(&self, _: &[keygate_proto::Event]) {}
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn at_most(capacity: usize) -> CeremonyLimits {
        CeremonyLimits {
            capacity,
            per_client: 0,
        }
    }

    async fn store(dir: &tempfile::TempDir) -> Arc<dyn Store> {
        Arc::new(
            SqliteStore::open(&dir.path().join("k.db"), Arc::new(Ignore))
                .await
                .unwrap(),
        )
    }

    #[tokio::test]
    async fn a_ceremony_is_taken_exactly_once_even_through_another_handle() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let begin = Ceremonies::new(Arc::clone(&store), CEREMONY_TTL, at_most(10));
        let finish = Ceremonies::new(store, CEREMONY_TTL, at_most(10));
        let id = begin.insert(&("state", 7), CLIENT).await.unwrap().unwrap();
        assert!(id.starts_with("cer_"));
        assert_eq!(
            finish.take::<(String, u8)>(&id).await.unwrap(),
            Taken::Found(("state".to_owned(), 7))
        );
        assert_eq!(
            begin.take::<(String, u8)>(&id).await.unwrap(),
            Taken::Unknown,
            "replayed finish"
        );
        assert_eq!(
            finish.take::<(String, u8)>("cer_forged").await.unwrap(),
            Taken::Unknown
        );
    }

    #[tokio::test]
    async fn ceremonies_expire_and_the_table_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let expired = Ceremonies::new(Arc::clone(&store), Duration::ZERO, at_most(10));
        let id = expired.insert(&1, CLIENT).await.unwrap().unwrap();
        assert_eq!(expired.take::<i32>(&id).await.unwrap(), Taken::Expired);
        assert_eq!(
            expired.take::<i32>(&id).await.unwrap(),
            Taken::Unknown,
            "gone"
        );

        let bounded = Ceremonies::new(Arc::clone(&store), CEREMONY_TTL, at_most(2));
        bounded.insert(&'a', CLIENT).await.unwrap().unwrap();
        bounded.insert(&'b', CLIENT).await.unwrap().unwrap();
        assert_eq!(
            bounded.insert(&'c', CLIENT).await.unwrap(),
            Err(NoRoom::Full(Full))
        );
    }

    #[tokio::test]
    async fn one_64_shares_its_cap_and_other_clients_keep_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let limits = CeremonyLimits {
            capacity: 100,
            per_client: 2,
        };
        let ceremonies = Ceremonies::new(store(&dir).await, CEREMONY_TTL, limits);
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        ceremonies
            .insert(&1, ip("2001:db8::1"))
            .await
            .unwrap()
            .unwrap();
        ceremonies
            .insert(&2, ip("2001:db8::2"))
            .await
            .unwrap()
            .unwrap();
        let Err(NoRoom::Client(refused)) = ceremonies.insert(&3, ip("2001:db8::3")).await.unwrap()
        else {
            panic!("a third ceremony from the same /64 was kept");
        };
        assert_eq!(refused.limit, 2);
        assert!(refused.retry_after <= CEREMONY_TTL);
        assert!(
            ceremonies
                .insert(&4, ip("2001:db8:0:1::1"))
                .await
                .unwrap()
                .is_ok()
        );
        assert!(
            ceremonies
                .insert(&5, ip("192.0.2.1"))
                .await
                .unwrap()
                .is_ok()
        );
    }

    #[tokio::test]
    async fn a_state_of_another_shape_is_unknown_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let ceremonies = Ceremonies::new(store(&dir).await, CEREMONY_TTL, at_most(10));
        let id = ceremonies.insert(&"text", CLIENT).await.unwrap().unwrap();
        assert_eq!(ceremonies.take::<u64>(&id).await.unwrap(), Taken::Unknown);
    }
}
