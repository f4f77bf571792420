//! What a device trusts, as one signed, versioned document that rotates like TUF's root (issue 26).
//!
//! Today a device's trust is four files (`slots.trusted_keys`, `fleet.command_keys`, `slots.threshold`,
//! `forward.cloud_keys`) that nothing signed can change, so a leaked key cannot be revoked over the air. A trust
//! document names the keys and, for each role (`root`, `bundles`, `commands`, `cloud`), which of them count and how
//! many must sign. Version N+1 is taken only when it is exactly N+1 and signed by a threshold of version N's root
//! keys and a threshold of its own: a leaked key below the root threshold cannot rotate anything, and a new root
//! set must prove it holds its keys. Thresholds count distinct keys, never signatures (python-tuf
//! GHSA-r7vq-6425-j94w).
//!
//! This step holds the document, its checks and the chain rule, pure and unit-tested; the device's stored trust,
//! its delivery over MQTT and the operator's commands build on it.

pub mod chain;
pub mod console;
pub mod document;
pub mod live;
pub mod rotate;
pub mod stored;

pub use chain::{sign, verify_next, SignedTrust};
pub use document::{Role, RoleKeys, Trust, TrustDocument, TrustKey};
pub use live::LiveTrust;
pub use stored::TrustDir;

/// Why a trust document is refused. Every refusal leaves the trust as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("the trust document is {size} bytes, more than the cap of {cap} (a managed broker carries 128 KB)")]
    TooLarge { size: usize, cap: usize },
    #[error("the trust document does not decode: {0}")]
    Malformed(String),
    #[error("key {0} is listed twice")]
    DuplicateKey(String),
    #[error("key {id} is not the id of its public key (expected {expected})")]
    KeyIdMismatch { id: String, expected: String },
    #[error(
        "key {id} has the type {kind:?}, which this agent does not know (it knows \"ed25519\")"
    )]
    UnknownKeyType { id: String, kind: String },
    #[error("key {0} is not a valid ed25519 public key")]
    BadKey(String),
    #[error("role {0} is listed twice")]
    DuplicateRole(String),
    #[error("the document has no {0} role")]
    MissingRole(&'static str),
    #[error("role {0} lists no keys")]
    EmptyRole(&'static str),
    #[error("role {role} names key {key}, which the document does not list")]
    UnknownKeyInRole { role: &'static str, key: String },
    #[error("role {role} names key {key} twice")]
    DuplicateKeyInRole { role: &'static str, key: String },
    #[error("role {role} has a threshold of 0: it would accept anything unsigned")]
    ZeroThreshold { role: &'static str },
    #[error("role {role} needs {threshold} signatures but lists only {keys} keys: nothing could ever satisfy it")]
    ThresholdAboveKeys {
        role: &'static str,
        threshold: u32,
        keys: usize,
    },
    #[error("role cloud must have a threshold of 1 (an answer carries one signature), not {0}")]
    CloudThreshold(u32),
    #[error("version {version} is not newer than the trusted version {current}: a replay")]
    Replay { version: u64, current: u64 },
    #[error("version {version} skips versions after {current}: take {next} first (each version is signed by the one before)", next = .current + 1)]
    Gap { version: u64, current: u64 },
    #[error("the stored trust {0} is gone, though this device took a trust document: every signed bundle, \
             command and answer is refused (the key files are never read again for trust, since a rotation may have \
             revoked them); restore the file, or run `outpost trust reset` from the device's console (README, Keys \
             and rotation)")]
    Missing(String),
    #[error("the stored trust {path} does not read as a trust document ({message}): every signed bundle, command \
             and answer is refused; restore the file, or run `outpost trust reset` from the device's console")]
    Corrupt { path: String, message: String },
    /// An operator's rotation edit that does not parse (`outpostctl trust rotate`).
    #[error("{0}")]
    BadEdit(String),
    #[error("cannot read or write {path}: {message}")]
    Io { path: String, message: String },
    #[error("this device holds no trust yet: start the agent once with slots.trusted_keys set (its version 1 comes \
             from the key files), or run `outpost trust reset` with a document signed by its own root")]
    NoTrust,
    #[error("this device's trust has no root (its key files name no slots.trusted_keys), so no version can follow \
             it: set slots.trusted_keys and restart the agent, or run `outpost trust reset` with a document signed by \
             its own root")]
    NoRoot,
    #[error("only {valid} valid signature(s) from distinct root keys of version {version}, {needed} required")]
    TooFewRootSignatures {
        version: u64,
        valid: usize,
        needed: usize,
    },
}
