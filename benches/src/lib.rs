//! keygate's measurement tools, as a library so that the `keygate-bench` binary stays thin and
//! the CI smoke test can drive the same code in-process.
//!
//! - [`load`]: the load generator (open loop with coordinated-omission-corrected latency, or
//!   closed loop, keep-alive or one request per connection, plain or over [`tls`]), fed by a
//!   [`mix`] of credentials read from [`keyfile`]s; results as a [`report::LoadReport`], with
//!   the CPU of the proxy under test read by [`cpu`].
//! - [`synthetic_cp`]: a control plane that serves a fixed snapshot of N generated keys
//!   ([`keyset`]), so real gateways can hold millions of keys.
//! - [`summary`] and [`chart`]: the side-by-side comparison's medians, target checks and SVG;
//!   [`syscalls`]: its `strace -c` census, system calls per request.
//! - [`replica_memory`], [`ready_time`], [`cp_load`], [`disable_latency`]: scale and
//!   propagation figures.
//! - [`propagation`]: revocation (of a key, or of a passkey and its sessions) → refused at
//!   every gateway, [`probe`]d by real requests, as [`percentiles`]; passkeys are enrolled
//!   ([`enrollment`]) with the software [`authenticator`] the integration tests use too.
//! - [`wan`]: the region simulator: the same measurements with gateways behind WAN relays.
//! - [`limits`]: rate-limit overshoot, stranded credits and control-plane CPU across gateways.

#![forbid(unsafe_code)]

pub mod authenticator;
pub mod chart;
pub mod cp_load;
pub mod cpu;
pub mod disable_latency;
pub mod enrollment;
pub mod keyfile;
pub mod keyset;
pub mod limits;
pub mod load;
pub mod memory_latency;
pub mod mix;
pub mod percentiles;
pub mod probe;
pub mod propagation;
pub mod ready_time;
pub mod replica_memory;
pub mod report;
pub mod summary;
pub mod synthetic_cp;
pub mod syscalls;
pub mod tls;
pub mod wan;
pub mod zipf;
