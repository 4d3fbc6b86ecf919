//! The store interface: the control plane's durable state behind object-safe async traits, one
//! per aggregate, in domain types only (never the gRPC wire types), so that SQLite and
//! PostgreSQL sit side by side behind [`Store`].
//!
//! - [`KeyStore`] (`keys`), [`UserStore`] (`users`), [`EnrollmentStore`] (`enrollments`),
//!   [`PasskeyStore`] (`passkeys`), [`SessionStore`] (`sessions`), [`SigningKeyStore`]
//!   (`signing_keys`): the state operators and users change;
//! - [`EventLogStore`] (`log`): the replicated event log, its identity and its snapshots;
//! - [`AuditStore`] (`audit`): who did what;
//! - [`CeremonyStore`] (`ceremonies`): WebAuthn ceremonies between begin and finish, so any
//!   replica can finish what another began;
//! - [`GatewayStore`] (`gateways`): the gateway registry as each replica publishes it, so
//!   `keygate gateways` and `--wait` on any replica see every gateway;
//! - [`LimitStore`] (`limits`): identities, credit balances and the leases gateways spend
//!   them through;
//! - [`TokenStore`] (`tokens`): named operator tokens and per-gateway credentials, by hash;
//! - [`CopyStore`] (`copy`): the whole store exported and imported (`keygate store copy`).
//!
//! Every write that changes replicated state is one transaction that changes the tables,
//! appends the change's events with contiguous revisions (each event takes the previous
//! head + 1; the backends do this in one place, their `log` module) and writes one audit row.
//! After the commit, and before the next write can start, the store hands the new events to
//! its [`CommitObserver`], so observers see every event exactly once and in revision order.

pub mod audit;
pub mod ceremonies;
pub mod copy;
pub mod enrollments;
pub mod event_codec;
pub mod gateways;
pub mod keys;
pub mod limits;
pub mod log;
pub mod passkeys;
pub mod postgres;
pub mod sessions;
pub mod signing_keys;
pub mod sqlite;
#[cfg(test)]
pub(crate) mod suite;
pub mod tokens;
pub mod users;

use keygate_proto::KeyId;

pub use audit::{AuditEntry, AuditNote, AuditStore};
pub use ceremonies::{CeremonyLimits, CeremonyPut, CeremonyStore, CeremonyTaken, NewCeremony};
pub use copy::{CopyStore, Dump, DumpSummary};
pub use enrollments::{
    EnrollmentCreated, EnrollmentRecord, EnrollmentRevoked, EnrollmentState, EnrollmentStore,
    NewEnrollment, VoidReason, Voided,
};
pub use gateways::{GatewayRecord, GatewayStore, PublishedGateway};
pub use keys::{
    EnabledChange, KeyQuery, KeyRecord, KeyStore, NewKey, OwnerRevoked, Reroll, Rerolled,
};
pub use limits::{
    CreditState, CreditsChange, IdentityRecord, IdentityUpdate, LeaseGranted, LimitStore,
    LimitsUpdate, NewIdentity, NewLease, RefillChange, UsageRow,
};
pub use log::{CommitObserver, EventLogStore, LogBounds, Snapshot};
pub use passkeys::{
    LoggedIn, Login, NewPasskey, PasskeyRecord, PasskeyRemoval, PasskeyRemoved, PasskeyRename,
    PasskeyRenamed, PasskeyStore, Registered, RegisteredVia, Registration, UpdatedCredential,
};
pub use sessions::{NewSession, Pruned, SessionContext, SessionRecord, SessionState, SessionStore};
pub use signing_keys::{Rotated, SigningKeyRecord, SigningKeyRevoked, SigningKeyStore};
pub use tokens::{NewToken, OperatorTokenRecord, TokenCreated, TokenStore};
pub use users::{UserChanged, UserCreated, UserRecord, UserStore};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {0} not found")]
    KeyNotFound(KeyId),
    #[error("identity {0:?} not found")]
    IdentityNotFound(String),
    /// An identity that keys still name cannot be deleted.
    #[error("identity {id:?} is still named by {keys} key(s); move or delete them first")]
    IdentityInUse { id: String, keys: u64 },
    /// A unique constraint was hit (an id or hash collision: practically impossible).
    #[error("conflict: {0}")]
    Conflict(String),
    /// Stored data that does not decode; points at a bug or a hand-edited database.
    #[error("corrupt store data: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("could not open the database at {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Another store holds the database (SQLite only: one control plane per file).
    #[error(
        "another keygate control plane is already using the SQLite database at {path}; \
         SQLite is single-node: run one control plane per file, or use PostgreSQL \
         (--database postgres://…) for several replicas"
    )]
    InUse { path: String },
    #[error("database task failed: {0}")]
    Task(String),
    /// An import into a store that is not freshly initialised ([`CopyStore::import`]).
    #[error(
        "the store to copy into is not empty ({found}); copy into a freshly initialised \
         database"
    )]
    NotEmpty { found: String },
}

/// The control plane's durable state: every aggregate. Object-safe: the server holds an
/// `Arc<dyn Store>`.
pub trait Store:
    KeyStore
    + EventLogStore
    + AuditStore
    + UserStore
    + EnrollmentStore
    + PasskeyStore
    + SessionStore
    + SigningKeyStore
    + CeremonyStore
    + GatewayStore
    + TokenStore
    + LimitStore
    + CopyStore
    + Send
    + Sync
    + 'static
{
}

impl<T> Store for T where
    T: KeyStore
        + EventLogStore
        + AuditStore
        + UserStore
        + EnrollmentStore
        + PasskeyStore
        + SessionStore
        + SigningKeyStore
        + CeremonyStore
        + GatewayStore
        + TokenStore
        + LimitStore
        + CopyStore
        + Send
        + Sync
        + 'static
{
}
