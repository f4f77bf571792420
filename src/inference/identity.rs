//! What names a model release: its name, version, file digest and spec together ([`Release`]), and the digests they
//! are made of. Cache keys, trials, shadow figures and slot records compare releases, never file digests alone.

use sha2::{Digest, Sha256};

use super::*;

/// A model release: its name, version, file digest and spec, together. Two engines serve the same release only when
/// all four match: the same bytes with a new version, labels or preprocessing are another release (their answers,
/// cache entries, trials and shadow figures are their own).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Release {
    pub name: String,
    pub version: u64,
    /// Hex SHA-256 of the model file.
    pub digest: String,
    /// Hex SHA-256 of the spec's canonical JSON.
    pub spec_digest: String,
}

impl Release {
    pub fn of(digest: &str, spec: &ModelSpec) -> Release {
        Release {
            name: spec.name.clone(),
            version: spec.version,
            digest: digest.to_string(),
            spec_digest: spec_digest(spec),
        }
    }

    /// One hex string naming the release (cache keys, logs).
    pub fn id(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"outpost-release-v1\0");
        h.update(self.name.as_bytes());
        h.update([0]);
        h.update(self.version.to_le_bytes());
        h.update(self.digest.as_bytes());
        h.update([0]);
        h.update(self.spec_digest.as_bytes());
        hex::encode(h.finalize())
    }
}

/// Hex SHA-256 of a spec's JSON (serde's field order, so the same spec always hashes the same). A classifier's spec
/// is hashed in its form from before raw tensor models ([`spec::ModelSpecV1`]), so its releases keep their ids.
pub fn spec_digest(spec: &ModelSpec) -> String {
    // A raw model's spec is hashed as format 2 carried it (no `task` key), a task model's whole.
    let json = match (&spec.tensors, &spec.task) {
        (None, None) => serde_json::to_vec(&spec.v1_view()),
        (Some(_), None) => serde_json::to_vec(&spec.v2_view()),
        (_, Some(_)) => serde_json::to_vec(spec),
    };
    digest_hex(&json.unwrap_or_default())
}

/// Hex SHA-256 of a model file: the identity under which results are cached and reported.
pub fn digest_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
