//! Signed model bundles: a postcard manifest, ed25519 signatures over its exact bytes, and the model variants.
//!
//! Layout of a bundle file (all lengths little-endian u32, each capped before anything is allocated):
//!
//! ```text
//! b"OUTPOSTB" | 1u8 | manifest_len | manifest (postcard) | sigs_len | signatures (postcard) | variant 0 | variant 1 ...
//! ```
//!
//! Only the manifest is signed; it pins every variant's size and SHA-256, so the (large) model bytes can be streamed
//! to disk and checked as they arrive, and nothing past the signed size is ever read.

pub mod build;
pub mod keys;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};

use crate::inference::ModelSpec;
pub use keys::{KeyId, SigningKeyFile, TrustedKeys};

pub const MAGIC: &[u8; 8] = b"OUTPOSTB";
pub const FORMAT: u8 = 1;
/// Caps on what an untrusted bundle may make us allocate.
pub const MAX_MANIFEST: usize = 8 * 1024 * 1024;
pub const MAX_SIGNATURES: usize = 64 * 1024;
pub const MAX_VARIANTS: usize = 8;
pub const MAX_MODEL_BYTES: u64 = 1024 * 1024 * 1024;
/// Signatures cover this domain tag then the manifest bytes, so a signature made for anything else never verifies.
const DOMAIN: &[u8] = b"outpost-bundle-manifest-v1\0";

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("not an Outpost bundle (bad magic or format)")]
    NotABundle,
    #[error("bundle is truncated: {0}")]
    Truncated(String),
    #[error("{what} is {size} bytes, more than the cap of {cap}")]
    TooLarge {
        what: &'static str,
        size: u64,
        cap: u64,
    },
    #[error("manifest does not decode: {0}")]
    Manifest(String),
    #[error("signature check failed: {0}")]
    Signature(String),
    #[error("only {valid} valid signature(s) from distinct trusted keys, {needed} required")]
    TooFewSignatures { valid: usize, needed: usize },
    #[error("bundle expired at {expires} (now {now}); ask for a fresh bundle")]
    Expired { expires: u64, now: u64 },
    #[error("bundle needs agent version {needed} or newer (this is {have})")]
    AgentTooOld { needed: String, have: String },
    #[error("variant `{variant}`: {message}")]
    Variant { variant: String, message: String },
    #[error("key file {path}: {message}")]
    Key { path: String, message: String },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// One model file in the bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    /// e.g. `int8`, `qdq`, `fp32`.
    pub name: String,
    pub size: u64,
    pub sha256: [u8; 32],
    /// The outputs this variant gave on `Manifest::golden_inputs` when the bundle was made.
    pub golden_outputs: Vec<Vec<f32>>,
}

/// What the operator signs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    /// Strictly increasing across a model's releases: the device refuses anything not above the highest it accepted.
    pub version: u64,
    pub created_unix: u64,
    pub expires_unix: u64,
    pub min_agent_version: String,
    pub spec: ModelSpec,
    /// Confidence below which an input counts as hard (forwarded to the cloud tier).
    pub hardness_threshold: Option<f32>,
    /// On-device quality gate: inputs and, per variant, the expected outputs.
    pub golden_inputs: Vec<Vec<f32>>,
    /// Largest |output - expected| allowed per value in the gate.
    pub golden_tolerance: f32,
    pub variants: Vec<Variant>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleSignature {
    pub key_id: KeyId,
    pub signature: Vec<u8>,
}

impl Manifest {
    /// Saturating: sizes come from outside, and a wrapped sum would slip under the cap (found by fuzzing).
    pub fn total_model_bytes(&self) -> u64 {
        self.variants
            .iter()
            .fold(0u64, |a, v| a.saturating_add(v.size))
    }

    /// Structural checks on decoded (not yet trusted) content.
    fn check_shape(&self) -> Result<(), BundleError> {
        let bad = |m: String| Err(BundleError::Manifest(m));
        if self.variants.is_empty() || self.variants.len() > MAX_VARIANTS {
            return bad(format!(
                "needs 1 to {MAX_VARIANTS} variants, has {}",
                self.variants.len()
            ));
        }
        if self.total_model_bytes() > MAX_MODEL_BYTES {
            return Err(BundleError::TooLarge {
                what: "model data",
                size: self.total_model_bytes(),
                cap: MAX_MODEL_BYTES,
            });
        }
        self.spec.validate().map_err(BundleError::Manifest)?;
        let n = self.spec.input_len();
        if self.golden_inputs.iter().any(|g| g.len() != n) {
            return bad(format!("golden inputs must have {n} values each"));
        }
        for v in &self.variants {
            if v.golden_outputs.len() != self.golden_inputs.len() {
                return bad(format!(
                    "variant `{}` has {} golden outputs for {} inputs",
                    v.name,
                    v.golden_outputs.len(),
                    self.golden_inputs.len()
                ));
            }
        }
        Ok(())
    }
}

fn message(manifest_bytes: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + manifest_bytes.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(manifest_bytes);
    m
}

/// Writes a signed bundle: the manifest is completed with each variant's size and digest, then signed by `keys`.
pub fn write_bundle(
    out: &mut impl Write,
    manifest: &Manifest,
    models: &[Vec<u8>],
    keys: &[&SigningKeyFile],
) -> Result<(), BundleError> {
    let manifest_bytes =
        postcard::to_stdvec(manifest).map_err(|e| BundleError::Manifest(e.to_string()))?;
    let sigs: Vec<BundleSignature> = keys
        .iter()
        .map(|k| k.sign(&message(&manifest_bytes)))
        .collect();
    let sig_bytes = postcard::to_stdvec(&sigs).map_err(|e| BundleError::Manifest(e.to_string()))?;
    out.write_all(MAGIC)?;
    out.write_all(&[FORMAT])?;
    out.write_all(&(manifest_bytes.len() as u32).to_le_bytes())?;
    out.write_all(&manifest_bytes)?;
    out.write_all(&(sig_bytes.len() as u32).to_le_bytes())?;
    out.write_all(&sig_bytes)?;
    for m in models {
        out.write_all(m)?;
    }
    Ok(())
}

fn read_exact_or(r: &mut impl Read, buf: &mut [u8], what: &str) -> Result<(), BundleError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            BundleError::Truncated(format!("ends inside the {what}"))
        }
        _ => BundleError::Io(e),
    })
}

fn read_section(r: &mut impl Read, what: &'static str, cap: usize) -> Result<Vec<u8>, BundleError> {
    let mut len = [0u8; 4];
    read_exact_or(r, &mut len, what)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > cap {
        return Err(BundleError::TooLarge {
            what,
            size: len as u64,
            cap: cap as u64,
        });
    }
    // Allocation follows the bytes actually present, not the declared length.
    let mut buf = Vec::new();
    r.take(len as u64).read_to_end(&mut buf)?;
    if buf.len() != len {
        return Err(BundleError::Truncated(format!("ends inside the {what}")));
    }
    Ok(buf)
}

/// The header of a bundle, read and verified; the variants follow in the reader.
#[derive(Debug, Clone)]
pub struct VerifiedHeader {
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
    /// Key ids whose signatures verified.
    pub signers: Vec<KeyId>,
}

/// Reads the header without checking any signature (for `inspect`).
pub fn read_header_unverified(
    r: &mut impl Read,
) -> Result<(Manifest, Vec<u8>, Vec<BundleSignature>), BundleError> {
    let (manifest_bytes, sigs) = read_sections(r)?;
    let manifest: Manifest =
        postcard::from_bytes(&manifest_bytes).map_err(|e| BundleError::Manifest(e.to_string()))?;
    Ok((manifest, manifest_bytes, sigs))
}

/// The raw manifest bytes and the decoded (small, capped) signature list.
fn read_sections(r: &mut impl Read) -> Result<(Vec<u8>, Vec<BundleSignature>), BundleError> {
    let mut magic = [0u8; 9];
    r.read_exact(&mut magic)
        .map_err(|_| BundleError::NotABundle)?;
    if &magic[..8] != MAGIC || magic[8] != FORMAT {
        return Err(BundleError::NotABundle);
    }
    let manifest_bytes = read_section(r, "manifest", MAX_MANIFEST)?;
    let sig_bytes = read_section(r, "signatures", MAX_SIGNATURES)?;
    let sigs: Vec<BundleSignature> = postcard::from_bytes(&sig_bytes)
        .map_err(|e| BundleError::Signature(format!("signature list does not decode: {e}")))?;
    Ok((manifest_bytes, sigs))
}

/// What a device checks before it writes a byte of model data.
pub struct Policy<'a> {
    pub keys: &'a TrustedKeys,
    pub threshold: usize,
    pub now_unix: u64,
    pub agent_version: &'a str,
}

/// Reads the header and checks signatures (k distinct trusted keys), expiry and agent version.
pub fn read_header(r: &mut impl Read, policy: &Policy) -> Result<VerifiedHeader, BundleError> {
    let (manifest_bytes, sigs) = read_sections(r)?;
    // Signatures first, over the raw bytes: an unsigned manifest is never decoded, so it cannot make the decoder
    // allocate more than the bytes it came in (found by fuzzing: empty vectors cost 24 bytes per input byte).
    check_signatures(&manifest_bytes, &sigs, policy)?;
    let manifest: Manifest =
        postcard::from_bytes(&manifest_bytes).map_err(|e| BundleError::Manifest(e.to_string()))?;
    verify_manifest(manifest, manifest_bytes, &sigs, policy)
}

/// The distinct trusted keys that signed `manifest_bytes`; an error below the threshold.
fn check_signatures(
    manifest_bytes: &[u8],
    sigs: &[BundleSignature],
    policy: &Policy,
) -> Result<Vec<KeyId>, BundleError> {
    let msg = message(manifest_bytes);
    let mut signers: Vec<KeyId> = Vec::new();
    for s in sigs {
        if signers.contains(&s.key_id) {
            continue;
        }
        if policy.keys.verify(&s.key_id, &msg, &s.signature) {
            signers.push(s.key_id.clone());
        }
    }
    let needed = policy.threshold.max(1);
    if signers.len() < needed {
        return Err(BundleError::TooFewSignatures {
            valid: signers.len(),
            needed,
        });
    }
    Ok(signers)
}

pub fn verify_manifest(
    manifest: Manifest,
    manifest_bytes: Vec<u8>,
    sigs: &[BundleSignature],
    policy: &Policy,
) -> Result<VerifiedHeader, BundleError> {
    let signers = check_signatures(&manifest_bytes, sigs, policy)?;
    manifest.check_shape()?;
    if policy.now_unix >= manifest.expires_unix {
        return Err(BundleError::Expired {
            expires: manifest.expires_unix,
            now: policy.now_unix,
        });
    }
    if version_tuple(policy.agent_version) < version_tuple(&manifest.min_agent_version) {
        return Err(BundleError::AgentTooOld {
            needed: manifest.min_agent_version.clone(),
            have: policy.agent_version.to_string(),
        });
    }
    Ok(VerifiedHeader {
        manifest,
        manifest_bytes,
        signers,
    })
}

fn version_tuple(v: &str) -> Vec<u64> {
    v.split('.')
        .map(|p| p.trim().parse().unwrap_or(0))
        .collect()
}

/// Copies exactly `variant.size` bytes from `r` to `w`, hashing as it goes, and checks the digest.
pub fn copy_variant(
    r: &mut impl Read,
    w: &mut impl Write,
    variant: &Variant,
) -> Result<(), BundleError> {
    let mut hasher = Sha256::new();
    let mut left = variant.size;
    let mut buf = vec![0u8; 64 * 1024];
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(BundleError::Truncated(format!(
                "variant `{}` ends {left} bytes early",
                variant.name
            )));
        }
        hasher.update(&buf[..n]);
        w.write_all(&buf[..n])?;
        left -= n as u64;
    }
    if hasher.finalize()[..] != variant.sha256[..] {
        return Err(BundleError::Variant {
            variant: variant.name.clone(),
            message: "SHA-256 does not match the signed manifest (tampered or mixed-up model)"
                .into(),
        });
    }
    Ok(())
}

/// After the last variant: anything more is data nobody signed.
pub fn expect_end(r: &mut impl Read) -> Result<(), BundleError> {
    let mut one = [0u8; 1];
    match r.read(&mut one)? {
        0 => Ok(()),
        _ => Err(BundleError::Variant {
            variant: "*".into(),
            message: "more model bytes than the manifest signed".into(),
        }),
    }
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
