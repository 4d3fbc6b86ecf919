//! The keygate contract shared by every crate: the API key format and its hash, identifiers,
//! the records a gateway replicates, the events of the sync log, and the keygate.v1 gRPC wire
//! types.
//!
//! Only this crate and the gRPC service modules of the other crates see prost types; the
//! conversions between wire and domain types live in [`convert`].

#![forbid(unsafe_code)]

pub mod base62;
pub mod convert;
pub mod error_chain;
pub mod ids;
pub mod key;
pub mod limits;
pub mod model;
pub mod session;
pub mod time;

/// Generated keygate.v1 messages, clients and servers.
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used)]
pub mod pb {
    tonic::include_proto!("keygate.v1");
}

/// Generated messages, client and server of the subset of Envoy's external authorization API
/// (`envoy.service.auth.v3.Authorization/Check`) the gateway serves; see `proto/envoy/`. The
/// modules nest like the protobuf packages, as the generated code expects.
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used)]
pub mod envoy_pb {
    pub mod envoy {
        pub mod service {
            pub mod auth {
                pub mod v3 {
                    tonic::include_proto!("envoy.service.auth.v3");
                }
            }
        }
        pub mod config {
            pub mod core {
                pub mod v3 {
                    tonic::include_proto!("envoy.config.core.v3");
                }
            }
        }
        pub mod r#type {
            pub mod v3 {
                tonic::include_proto!("envoy.r#type.v3");
            }
        }
    }
    pub mod google {
        pub mod rpc {
            tonic::include_proto!("google.rpc");
        }
    }
}

pub use error_chain::error_chain;
pub use ids::KeyId;
pub use key::{ApiKey, KeyFormatError, KeyHash, KeyPrefix};
pub use limits::{Holder, Identity, KeyLimits, RateLimit, RefillSpec};
pub use model::{
    Change, Event, LogId, Meta, PasskeyRevocation, ReplicaKey, Revision, SessionRevocation,
    SessionVerifyingKey, UserState,
};

/// The version string gateways report in their hello.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
