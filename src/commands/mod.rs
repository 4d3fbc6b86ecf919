//! Operator commands: each calls the control plane's Admin API (`store` works on databases
//! directly instead) and prints either one JSON object (`--json`) or short lines for a person.

pub mod audit;
pub mod bulk_enrollments;
pub mod enrollments;
pub mod gateways;
pub mod identities;
pub mod keys;
pub mod limit_flags;
pub mod passkeys;
pub mod sessions;
pub mod signing_keys;
pub mod store;
pub mod tokens;
pub mod users;
pub mod wait;
