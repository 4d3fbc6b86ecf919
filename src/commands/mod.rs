//! Operator commands: each calls the control plane's Admin API and prints either one JSON
//! object (`--json`) or short lines for a person.

pub mod audit;
pub mod gateways;
pub mod keys;
