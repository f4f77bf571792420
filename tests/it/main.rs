//! The integration tests, one crate: tract and the library are linked once for all of them (issue 28), instead of
//! once per file. Each module is one area; `common` is the shared harness (real mosquitto on a free port, the
//! daemon started and stopped by pid, fixtures, bundles, typed status reads, waits for conditions the agent
//! reports). Tests run in parallel threads of one process, so a test that changes process-wide state (the engine's
//! thread setting) runs its body in a child process of its own ([`common::alone`]).

mod common;

mod acl;
mod budget;
mod bundle;
mod cli;
mod clock;
mod daemon;
mod demo;
mod detection;
mod durable;
mod engine;
mod engine_threads;
mod fleet;
mod forward;
mod full_disk;
mod fuzz_regressions;
mod migration;
mod mixed;
mod models;
mod oip;
mod probation;
mod race;
mod raw_bundle;
mod rollout;
mod rollout_models;
mod shadow;
mod slim;
mod soak;
mod tasks;
mod trust;
mod trust_fleet;
mod two_models;
