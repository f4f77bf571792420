//! Outpost: an edge inference agent. The binaries in `src/bin/` are thin shells over this library.

pub mod agent;
pub mod api;
pub mod blocking;
pub mod bundle;
pub mod clock;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod fault;
pub mod fleet;
pub mod forward;
pub mod fsutil;
pub mod inference;
pub mod repo;
pub mod rollout;
pub mod serve;
pub mod sim;
pub mod slots;
pub mod store;
pub mod telemetry;
pub mod trust;
pub mod wire;
pub mod worker;
