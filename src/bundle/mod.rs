//! Signed model bundles: a postcard manifest, ed25519 signatures over its exact bytes, and the model variants.
//!
//! Layout of a bundle file (all lengths little-endian u32, each capped before anything is allocated):
//!
//! ```text
//! b"OUTPOSTB" | format u8 | manifest_len | manifest (postcard) | sigs_len | signatures (postcard) | variant 0 | ...
//! ```
//!
//! Format 1 is the image classifier's manifest ([`ManifestV1`]); format 2 ([`ManifestV2`]) adds raw tensor models
//! (a spec that lists several inputs and outputs, golden tensors of any datatype); format 3 ([`Manifest`]) adds task
//! kinds (detection, score: [`crate::inference::task`]), the release's forward budget and its hardness baseline on
//! calibration data. A bundle is written in the oldest format its manifest fits, so older agents still take the
//! updates they can serve from a new tool; every agent reads all the formats up to its own. Each format signs under
//! its own domain tag, so a signed manifest of one format can never be read as another.
//!
//! A variant is an ONNX file or tract's NNEF form of one ([`VariantForm`], format 2 only): the slim device build
//! reads NNEF only, and refuses a bundle with no variant it can read before downloading it.
//!
//! Only the manifest is signed; it pins every variant's size and SHA-256, so the (large) model bytes can be streamed
//! to disk and checked as they arrive, and nothing past the signed size is ever read.

#[cfg(feature = "onnx")]
pub mod build;
pub mod keys;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};

use crate::inference::spec::{ModelSpecV1, ModelSpecV2};
use crate::inference::{ModelSpec, TensorValue};
pub use keys::{KeyId, SigningKeyFile, TrustedKeys};

pub const MAGIC: &[u8; 8] = b"OUTPOSTB";
/// The format [`Manifest`] encodes as (postcard of the struct itself).
pub const FORMAT: u8 = 3;
/// The raw tensor model's format ([`ManifestV2`]).
pub const FORMAT_V2: u8 = 2;
/// The image classifier's format, read by every agent ([`ManifestV1`]).
pub const FORMAT_V1: u8 = 1;
/// Caps on what an untrusted bundle may make us allocate.
pub const MAX_MANIFEST: usize = 8 * 1024 * 1024;
pub const MAX_SIGNATURES: usize = 64 * 1024;
pub const MAX_VARIANTS: usize = 8;
pub const MAX_MODEL_BYTES: u64 = 1024 * 1024 * 1024;
/// Signatures cover the format's domain tag then the manifest bytes, so a signature made for anything else (or for
/// the other format's reading of the same bytes) never verifies.
const DOMAIN_V1: &[u8] = b"outpost-bundle-manifest-v1\0";
const DOMAIN_V2: &[u8] = b"outpost-bundle-manifest-v2\0";
const DOMAIN_V3: &[u8] = b"outpost-bundle-manifest-v3\0";

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("not an Outpost bundle (bad magic)")]
    NotABundle,
    #[error("bundle format {0} is newer than this agent reads (1 to 3): upgrade the agent, or rebuild the bundle with the operator tool of this agent's version")]
    UnknownFormat(u8),
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
    /// Signed by keys the device's trust does not list for bundles: revoked by a rotation, or never trusted.
    #[error("key no longer trusted: signed by {keys:?}, which this device's trust does not list for bundles \
             ({valid} valid signature(s) from trusted keys, {needed} required); sign it with a current key \
             (`outpostctl bundle resign`)")]
    KeyNotTrusted {
        keys: Vec<String>,
        valid: usize,
        needed: usize,
    },
    #[error("{}", .0.sentence("bundle", "ask for a fresh bundle"))]
    Expired(crate::clock::Expired),
    #[error("bundle needs agent version {needed} or newer (this is {have})")]
    AgentTooOld { needed: String, have: String },
    #[error("variant `{variant}`: {message}")]
    Variant { variant: String, message: String },
    #[error("key file {path}: {message}")]
    Key { path: String, message: String },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// No variant is in a form this agent reads (an ONNX-only bundle on the slim build, NNEF from another tract).
    #[error("this agent can read none of the bundle's variants: {0}")]
    Unreadable(String),
}

/// What a variant's bytes are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum VariantForm {
    /// An ONNX file (needs the agent's ONNX front end: not in the slim device build).
    #[default]
    Onnx,
    /// tract's NNEF form, compiled by outpostctl ([`crate::inference::onnx::compile`]).
    Nnef {
        /// The tract release that wrote it: an agent reads NNEF from its own tract minor release only.
        tract_version: String,
        /// Whether it keeps tract's integer operators (fast only where the CPU has int8 dot products); false for a
        /// float model and a QDQ form.
        int8_kernels: bool,
    },
}

impl VariantForm {
    /// Whether this build can load a variant of this form; otherwise a sentence saying why and what to do.
    pub fn readable(&self) -> Result<(), String> {
        match self {
            VariantForm::Onnx if crate::inference::READS_ONNX => Ok(()),
            VariantForm::Onnx => Err(crate::inference::NEEDS_NNEF.to_string()),
            VariantForm::Nnef { tract_version, .. } => {
                crate::inference::nnef::readable(tract_version)
            }
        }
    }
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
    /// A raw tensor model's outputs on `Manifest::golden_tensors` (empty for a classifier).
    pub golden_tensor_outputs: Vec<Vec<TensorValue>>,
    /// ONNX or NNEF (format 1 knows ONNX only).
    pub form: VariantForm,
}

/// A variant in a format 1 manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantV1 {
    pub name: String,
    pub size: u64,
    pub sha256: [u8; 32],
    pub golden_outputs: Vec<Vec<f32>>,
}

/// A format 1 manifest (an image classifier), as agents before raw tensor models read and sign it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestV1 {
    pub name: String,
    pub version: u64,
    pub created_unix: u64,
    pub expires_unix: u64,
    pub min_agent_version: String,
    pub spec: ModelSpecV1,
    pub hardness_threshold: Option<f32>,
    pub golden_inputs: Vec<Vec<f32>>,
    pub golden_tolerance: f32,
    pub variants: Vec<VariantV1>,
}

impl From<ManifestV1> for Manifest {
    fn from(m: ManifestV1) -> Manifest {
        Manifest {
            name: m.name,
            version: m.version,
            created_unix: m.created_unix,
            expires_unix: m.expires_unix,
            min_agent_version: m.min_agent_version,
            spec: m.spec.into(),
            hardness_threshold: m.hardness_threshold,
            golden_inputs: m.golden_inputs,
            golden_tolerance: m.golden_tolerance,
            variants: m
                .variants
                .into_iter()
                .map(|v| Variant {
                    name: v.name,
                    size: v.size,
                    sha256: v.sha256,
                    golden_outputs: v.golden_outputs,
                    golden_tensor_outputs: Vec::new(),
                    form: VariantForm::Onnx,
                })
                .collect(),
            golden_tensors: Vec::new(),
            budget: None,
            baseline: None,
        }
    }
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
    /// A raw tensor model's gate: sets of inputs (in the spec's order); each variant's outputs on them are its
    /// `golden_tensor_outputs`. Empty for a classifier.
    pub golden_tensors: Vec<Vec<TensorValue>>,
    /// The forward budget this release asks for; `None` leaves the device's configuration.
    pub budget: Option<ForwardBudget>,
    /// The release's hardness on its calibration data: what the device's drift alarm compares live traffic with.
    pub baseline: Option<Baseline>,
}

/// How many hard cases a model may send to the cloud tier (`forward.max_fraction`, `forward.max_per_s`).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ForwardBudget {
    /// Largest share of model runs forwarded over the budget window (0 to 1).
    pub max_fraction: Option<f32>,
    /// Largest number of cases forwarded per second, averaged over the window.
    pub max_per_s: Option<f32>,
}

/// At most this many hardness values a baseline keeps (a sample, sorted).
pub const MAX_BASELINE: usize = 4096;

/// A release's hardness scores on its calibration data, sorted (a sample of at most [`MAX_BASELINE`]), and the share
/// of them its forward threshold calls hard.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Baseline {
    pub hardness: Vec<f32>,
    pub forward_rate: f32,
    /// The hardness the values are. A device compares live traffic with a baseline of the score it uses only.
    pub score: BaselineScore,
}

/// The hardness a baseline's values are. Signed as its name (`max-prob`, `margin`, `entropy`, `task`), as
/// manifests always carried it: a name this agent does not know decodes too, and is never compared.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(into = "String", from = "String")]
pub enum BaselineScore {
    /// A classifier's 1 - top probability.
    #[default]
    MaxProb,
    /// A classifier's 1 - (top-1 minus top-2).
    Margin,
    /// A classifier's entropy.
    Entropy,
    /// A detector's or scorer's own hardness.
    Task,
    /// A score of a newer builder.
    Other(String),
}

impl From<BaselineScore> for String {
    fn from(s: BaselineScore) -> String {
        match s {
            BaselineScore::MaxProb => "max-prob".into(),
            BaselineScore::Margin => "margin".into(),
            BaselineScore::Entropy => "entropy".into(),
            BaselineScore::Task => "task".into(),
            BaselineScore::Other(s) => s,
        }
    }
}

impl From<String> for BaselineScore {
    fn from(s: String) -> BaselineScore {
        match s.as_str() {
            "max-prob" => BaselineScore::MaxProb,
            "margin" => BaselineScore::Margin,
            "entropy" => BaselineScore::Entropy,
            "task" => BaselineScore::Task,
            _ => BaselineScore::Other(s),
        }
    }
}

/// A format 2 manifest (raw tensor models), as agents before task kinds read and sign it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestV2 {
    pub name: String,
    pub version: u64,
    pub created_unix: u64,
    pub expires_unix: u64,
    pub min_agent_version: String,
    pub spec: ModelSpecV2,
    pub hardness_threshold: Option<f32>,
    pub golden_inputs: Vec<Vec<f32>>,
    pub golden_tolerance: f32,
    pub variants: Vec<Variant>,
    pub golden_tensors: Vec<Vec<TensorValue>>,
}

impl From<ManifestV2> for Manifest {
    fn from(m: ManifestV2) -> Manifest {
        Manifest {
            name: m.name,
            version: m.version,
            created_unix: m.created_unix,
            expires_unix: m.expires_unix,
            min_agent_version: m.min_agent_version,
            spec: m.spec.into(),
            hardness_threshold: m.hardness_threshold,
            golden_inputs: m.golden_inputs,
            golden_tolerance: m.golden_tolerance,
            variants: m.variants,
            golden_tensors: m.golden_tensors,
            budget: None,
            baseline: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleSignature {
    pub key_id: KeyId,
    pub signature: Vec<u8>,
}

impl Manifest {
    /// The format 2 form of this manifest, when it has one (no task, budget or baseline).
    pub fn as_v2(&self) -> Option<ManifestV2> {
        if self.budget.is_some() || self.baseline.is_some() {
            return None;
        }
        Some(ManifestV2 {
            name: self.name.clone(),
            version: self.version,
            created_unix: self.created_unix,
            expires_unix: self.expires_unix,
            min_agent_version: self.min_agent_version.clone(),
            spec: self.spec.v2_view()?,
            hardness_threshold: self.hardness_threshold,
            golden_inputs: self.golden_inputs.clone(),
            golden_tolerance: self.golden_tolerance,
            variants: self.variants.clone(),
            golden_tensors: self.golden_tensors.clone(),
        })
    }

    /// The format 1 form of this manifest, when it has one (an image classifier with no golden tensors).
    pub fn as_v1(&self) -> Option<ManifestV1> {
        if self.spec.tensors.is_some()
            || self.spec.task.is_some()
            || self.budget.is_some()
            || self.baseline.is_some()
            || !self.golden_tensors.is_empty()
            || self
                .variants
                .iter()
                .any(|v| !v.golden_tensor_outputs.is_empty() || v.form != VariantForm::Onnx)
        {
            return None;
        }
        Some(ManifestV1 {
            name: self.name.clone(),
            version: self.version,
            created_unix: self.created_unix,
            expires_unix: self.expires_unix,
            min_agent_version: self.min_agent_version.clone(),
            spec: self.spec.v1_view(),
            hardness_threshold: self.hardness_threshold,
            golden_inputs: self.golden_inputs.clone(),
            golden_tolerance: self.golden_tolerance,
            variants: self
                .variants
                .iter()
                .map(|v| VariantV1 {
                    name: v.name.clone(),
                    size: v.size,
                    sha256: v.sha256,
                    golden_outputs: v.golden_outputs.clone(),
                })
                .collect(),
        })
    }

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
        if let Some(b) = &self.baseline {
            if b.hardness.len() > MAX_BASELINE
                || b.hardness.iter().any(|h| !h.is_finite())
                || !(0.0..=1.0).contains(&b.forward_rate)
            {
                return bad(format!(
                    "the baseline needs at most {MAX_BASELINE} finite hardness values and a forward rate in 0..1"
                ));
            }
        }
        if let Some(b) = &self.budget {
            if b.max_fraction.is_some_and(|f| !(0.0..=1.0).contains(&f))
                || b.max_per_s.is_some_and(|r| !r.is_finite() || r < 0.0)
            {
                return bad(
                    "the budget's max_fraction must be in 0..1 and max_per_s at least 0".into(),
                );
            }
        }
        if let Some(io) = &self.spec.io() {
            if !self.golden_inputs.is_empty() {
                return bad("a raw tensor model's golden cases are golden_tensors".into());
            }
            for (i, set) in self.golden_tensors.iter().enumerate() {
                if set.len() != io.inputs.len() {
                    return bad(format!(
                        "golden case {i} has {} tensors, the spec lists {} inputs",
                        set.len(),
                        io.inputs.len()
                    ));
                }
                for (v, t) in set.iter().zip(&io.inputs) {
                    v.check(t)
                        .map_err(|e| BundleError::Manifest(format!("golden case {i}: {e}")))?;
                }
            }
            for v in &self.variants {
                if v.golden_tensor_outputs.len() != self.golden_tensors.len() {
                    return bad(format!(
                        "variant `{}` has {} golden outputs for {} cases",
                        v.name,
                        v.golden_tensor_outputs.len(),
                        self.golden_tensors.len()
                    ));
                }
                for (i, outs) in v.golden_tensor_outputs.iter().enumerate() {
                    if outs.len() != io.outputs.len()
                        || outs
                            .iter()
                            .zip(&io.outputs)
                            .any(|(o, t)| o.check(t).is_err())
                    {
                        return bad(format!(
                            "variant `{}`: golden case {i}'s outputs do not fit the spec's outputs",
                            v.name
                        ));
                    }
                }
            }
            return Ok(());
        }
        if !self.golden_tensors.is_empty() {
            return bad(
                "golden_tensors are for raw tensor models; a classifier's are golden_inputs".into(),
            );
        }
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

fn message(format: u8, manifest_bytes: &[u8]) -> Vec<u8> {
    let domain = match format {
        FORMAT_V1 => DOMAIN_V1,
        FORMAT_V2 => DOMAIN_V2,
        _ => DOMAIN_V3,
    };
    let mut m = Vec::with_capacity(domain.len() + manifest_bytes.len());
    m.extend_from_slice(domain);
    m.extend_from_slice(manifest_bytes);
    m
}

/// The manifest in the bytes of its format.
fn encode_manifest(manifest: &Manifest) -> Result<(u8, Vec<u8>), BundleError> {
    let enc = |e: postcard::Error| BundleError::Manifest(e.to_string());
    if let Some(v1) = manifest.as_v1() {
        return Ok((FORMAT_V1, postcard::to_stdvec(&v1).map_err(enc)?));
    }
    match manifest.as_v2() {
        Some(v2) => Ok((FORMAT_V2, postcard::to_stdvec(&v2).map_err(enc)?)),
        None => Ok((FORMAT, postcard::to_stdvec(manifest).map_err(enc)?)),
    }
}

/// Decodes a manifest of any format this agent reads.
pub fn decode_manifest(format: u8, bytes: &[u8]) -> Result<Manifest, BundleError> {
    let dec = |e: postcard::Error| BundleError::Manifest(e.to_string());
    match format {
        FORMAT_V1 => Ok(postcard::from_bytes::<ManifestV1>(bytes)
            .map_err(dec)?
            .into()),
        FORMAT_V2 => Ok(postcard::from_bytes::<ManifestV2>(bytes)
            .map_err(dec)?
            .into()),
        FORMAT => postcard::from_bytes::<Manifest>(bytes).map_err(dec),
        other => Err(BundleError::UnknownFormat(other)),
    }
}

/// Writes a signed bundle: the manifest is completed with each variant's size and digest, then signed by `keys`.
pub fn write_bundle(
    out: &mut impl Write,
    manifest: &Manifest,
    models: &[Vec<u8>],
    keys: &[&SigningKeyFile],
) -> Result<(), BundleError> {
    let (format, manifest_bytes) = encode_manifest(manifest)?;
    let sigs: Vec<BundleSignature> = keys
        .iter()
        .map(|k| k.sign(&message(format, &manifest_bytes)))
        .collect();
    let sig_bytes = postcard::to_stdvec(&sigs).map_err(|e| BundleError::Manifest(e.to_string()))?;
    write_header(out, format, &manifest_bytes, &sig_bytes)?;
    for m in models {
        out.write_all(m)?;
    }
    Ok(())
}

/// Magic, format, the manifest and the signatures, each section prefixed by its length.
fn write_header(
    out: &mut impl Write,
    format: u8,
    manifest_bytes: &[u8],
    sig_bytes: &[u8],
) -> Result<(), BundleError> {
    out.write_all(MAGIC)?;
    out.write_all(&[format])?;
    out.write_all(&(manifest_bytes.len() as u32).to_le_bytes())?;
    out.write_all(manifest_bytes)?;
    out.write_all(&(sig_bytes.len() as u32).to_le_bytes())?;
    out.write_all(sig_bytes)?;
    Ok(())
}

/// Adds `keys`' signatures to a bundle without changing a byte of its manifest or models (a key removed by a trust
/// rotation leaves bundles that need a current key's signature): reads `r`, writes the same bundle with the
/// signatures appended to `out`. A key that already signed is not added twice. Returns how many were added.
pub fn resign(
    r: &mut impl Read,
    out: &mut impl Write,
    keys: &[&SigningKeyFile],
) -> Result<usize, BundleError> {
    let (format, manifest_bytes, mut sigs) = read_sections(r)?;
    let msg = message(format, &manifest_bytes);
    let mut added = 0;
    for k in keys {
        if !sigs.iter().any(|s| s.key_id == k.id()) {
            sigs.push(k.sign(&msg));
            added += 1;
        }
    }
    let sig_bytes = postcard::to_stdvec(&sigs).map_err(|e| BundleError::Manifest(e.to_string()))?;
    if sig_bytes.len() > MAX_SIGNATURES {
        return Err(BundleError::TooLarge {
            what: "signatures",
            size: sig_bytes.len() as u64,
            cap: MAX_SIGNATURES as u64,
        });
    }
    write_header(out, format, &manifest_bytes, &sig_bytes)?;
    std::io::copy(r, out)?;
    Ok(added)
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
    /// The format byte the manifest bytes are in.
    pub format: u8,
    pub manifest_bytes: Vec<u8>,
    /// Key ids whose signatures verified.
    pub signers: Vec<KeyId>,
    /// The trust version the signatures were checked under.
    pub trust_version: Option<u64>,
}

/// Reads the header without checking any signature (for `inspect`).
/// Returns the manifest, its format, its bytes and the signatures.
pub fn read_header_unverified(
    r: &mut impl Read,
) -> Result<(Manifest, u8, Vec<u8>, Vec<BundleSignature>), BundleError> {
    let (format, manifest_bytes, sigs) = read_sections(r)?;
    let manifest = decode_manifest(format, &manifest_bytes)?;
    Ok((manifest, format, manifest_bytes, sigs))
}

/// The format byte, the raw manifest bytes and the decoded (small, capped) signature list.
fn read_sections(r: &mut impl Read) -> Result<(u8, Vec<u8>, Vec<BundleSignature>), BundleError> {
    let mut magic = [0u8; 9];
    r.read_exact(&mut magic)
        .map_err(|_| BundleError::NotABundle)?;
    if &magic[..8] != MAGIC {
        return Err(BundleError::NotABundle);
    }
    let format = magic[8];
    if !(FORMAT_V1..=FORMAT).contains(&format) {
        return Err(BundleError::UnknownFormat(format));
    }
    let manifest_bytes = read_section(r, "manifest", MAX_MANIFEST)?;
    let sig_bytes = read_section(r, "signatures", MAX_SIGNATURES)?;
    let sigs: Vec<BundleSignature> = postcard::from_bytes(&sig_bytes)
        .map_err(|e| BundleError::Signature(format!("signature list does not decode: {e}")))?;
    Ok((format, manifest_bytes, sigs))
}

/// What a device checks before it writes a byte of model data.
pub struct Policy<'a> {
    pub keys: &'a TrustedKeys,
    pub threshold: usize,
    /// The device's clock and time floor: expiry is judged at the later of the two.
    pub time: crate::clock::Reading,
    pub agent_version: &'a str,
    /// The version of the trust document `keys` come from, recorded with the release (None: checked against a key
    /// file, as `outpostctl verify` does).
    pub trust_version: Option<u64>,
}

/// Reads the header and checks signatures (k distinct trusted keys), expiry and agent version.
pub fn read_header(r: &mut impl Read, policy: &Policy) -> Result<VerifiedHeader, BundleError> {
    let (format, manifest_bytes, sigs) = read_sections(r)?;
    // Signatures first, over the raw bytes: an unsigned manifest is never decoded, so it cannot make the decoder
    // allocate more than the bytes it came in (found by fuzzing: empty vectors cost 24 bytes per input byte).
    check_signatures(format, &manifest_bytes, &sigs, policy)?;
    let manifest = decode_manifest(format, &manifest_bytes)?;
    verify_manifest(manifest, format, manifest_bytes, &sigs, policy)
}

/// The distinct trusted keys that signed `manifest_bytes`; an error below the threshold.
fn check_signatures(
    format: u8,
    manifest_bytes: &[u8],
    sigs: &[BundleSignature],
    policy: &Policy,
) -> Result<Vec<KeyId>, BundleError> {
    let msg = message(format, manifest_bytes);
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
        let strangers = crate::bundle::keys::strangers(policy.keys, sigs);
        if !strangers.is_empty() {
            return Err(BundleError::KeyNotTrusted {
                keys: strangers,
                valid: signers.len(),
                needed,
            });
        }
        return Err(BundleError::TooFewSignatures {
            valid: signers.len(),
            needed,
        });
    }
    Ok(signers)
}

pub fn verify_manifest(
    manifest: Manifest,
    format: u8,
    manifest_bytes: Vec<u8>,
    sigs: &[BundleSignature],
    policy: &Policy,
) -> Result<VerifiedHeader, BundleError> {
    let signers = check_signatures(format, &manifest_bytes, sigs, policy)?;
    manifest.check_shape()?;
    // Before any model byte is downloaded: a bundle this build cannot load is refused with what to do.
    if !manifest.variants.iter().any(|v| v.form.readable().is_ok()) {
        let mut why: Vec<String> = manifest
            .variants
            .iter()
            .filter_map(|v| v.form.readable().err())
            .collect();
        why.dedup();
        return Err(BundleError::Unreadable(why.join("; ")));
    }
    policy
        .time
        .check_expiry(manifest.expires_unix, manifest.created_unix)
        .map_err(BundleError::Expired)?;
    if version_tuple(policy.agent_version) < version_tuple(&manifest.min_agent_version) {
        return Err(BundleError::AgentTooOld {
            needed: manifest.min_agent_version.clone(),
            have: policy.agent_version.to_string(),
        });
    }
    Ok(VerifiedHeader {
        manifest,
        format,
        manifest_bytes,
        signers,
        trust_version: policy.trust_version,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::{Dtype, TensorData, TensorIo, TensorSpec};

    fn raw_spec() -> ModelSpec {
        let t = |name: &str, datatype, shape: Vec<usize>| TensorSpec {
            name: name.into(),
            datatype,
            shape,
        };
        let mut spec: ModelSpec = serde_json::from_str(r#"{"name": "raw", "version": 1}"#).unwrap();
        spec.tensors = Some(TensorIo {
            inputs: vec![t("x", Dtype::Int64, vec![2])],
            outputs: vec![t("y", Dtype::Fp32, vec![1])],
            stateful: false,
        });
        spec.validate().unwrap();
        spec
    }

    fn value(name: &str, data: TensorData) -> TensorValue {
        TensorValue {
            name: name.into(),
            shape: vec![data.len()],
            data,
        }
    }

    fn manifest() -> Manifest {
        Manifest {
            name: "raw".into(),
            version: 2,
            created_unix: 0,
            expires_unix: u64::MAX,
            min_agent_version: "0.1.0".into(),
            spec: raw_spec(),
            hardness_threshold: None,
            golden_inputs: vec![],
            golden_tolerance: 0.01,
            variants: vec![Variant {
                name: "v".into(),
                size: 1,
                sha256: [0; 32],
                golden_outputs: vec![],
                golden_tensor_outputs: vec![vec![value("y", TensorData::Fp32(vec![0.5]))]],
                form: VariantForm::Onnx,
            }],
            golden_tensors: vec![vec![value("x", TensorData::Int64(vec![1, 2]))]],
            budget: None,
            baseline: None,
        }
    }

    #[test]
    fn a_raw_manifest_is_format_2_and_its_golden_cases_must_fit_the_spec() {
        let m = manifest();
        assert!(m.as_v1().is_none(), "a raw spec has no format 1 form");
        let (format, bytes) = encode_manifest(&m).unwrap();
        assert_eq!(
            format, FORMAT_V2,
            "a raw model is written for agents from before task kinds"
        );
        assert_eq!(decode_manifest(format, &bytes).unwrap(), m);
        m.check_shape().unwrap();
        let refused = |f: fn(&mut Manifest), why: &str| {
            let mut bad = manifest();
            f(&mut bad);
            let e = bad.check_shape().unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        };
        refused(
            |m| m.golden_tensors[0][0].data = TensorData::Int32(vec![1, 2]),
            "INT32",
        );
        refused(
            |m| m.golden_tensors[0].push(value("z", TensorData::Fp32(vec![0.0]))),
            "2 tensors",
        );
        refused(
            |m| m.variants[0].golden_tensor_outputs.clear(),
            "0 golden outputs",
        );
        refused(
            |m| m.variants[0].golden_tensor_outputs[0][0].data = TensorData::Fp32(vec![0.5, 1.0]),
            "do not fit",
        );
        refused(|m| m.golden_inputs = vec![vec![0.0; 2]], "golden_tensors");
    }

    #[test]
    fn a_classifier_manifest_stays_format_1_and_the_formats_sign_under_their_own_domains() {
        let spec: ModelSpec = serde_json::from_str(crate::inference::BUILTIN_SPEC).unwrap();
        let m = Manifest {
            spec,
            golden_tensors: vec![],
            budget: None,
            baseline: None,
            variants: vec![Variant {
                golden_tensor_outputs: vec![],
                ..manifest().variants[0].clone()
            }],
            ..manifest()
        };
        let (format, bytes) = encode_manifest(&m).unwrap();
        assert_eq!(format, FORMAT_V1, "a classifier is written for every agent");
        assert_eq!(decode_manifest(format, &bytes).unwrap(), m);
        assert_ne!(message(FORMAT_V1, &bytes), message(FORMAT, &bytes));
        // A newer format is refused with a sentence, not misread.
        let mut framed = MAGIC.to_vec();
        framed.push(4);
        let e = read_header_unverified(&mut &framed[..]).unwrap_err();
        assert!(matches!(e, BundleError::UnknownFormat(4)), "{e}");
        assert!(e.to_string().contains("upgrade the agent"), "{e}");
    }

    /// A task (detection, score), a budget or a baseline make a manifest format 3; the same bytes verify under no
    /// other format's domain; format 2 bytes still decode as they did.
    #[test]
    fn task_budget_and_baseline_are_format_3() {
        let v2 = manifest();
        let (f2, b2) = encode_manifest(&v2).unwrap();
        assert_eq!(f2, FORMAT_V2);
        let with_budget = Manifest {
            budget: Some(ForwardBudget {
                max_fraction: Some(0.05),
                max_per_s: None,
            }),
            baseline: Some(Baseline {
                hardness: vec![0.0, 0.1, 0.5],
                forward_rate: 0.05,
                score: BaselineScore::MaxProb,
            }),
            ..manifest()
        };
        let (f3, b3) = encode_manifest(&with_budget).unwrap();
        assert_eq!(f3, FORMAT);
        assert_eq!(decode_manifest(f3, &b3).unwrap(), with_budget);
        assert_eq!(decode_manifest(f2, &b2).unwrap(), v2);
        assert!(
            decode_manifest(f2, &b3).is_err() || decode_manifest(f2, &b3).unwrap() != with_budget
        );
        assert_ne!(message(FORMAT_V2, &b3), message(FORMAT, &b3));
        let mut bad = with_budget.clone();
        bad.budget = Some(ForwardBudget {
            max_fraction: Some(1.5),
            max_per_s: None,
        });
        assert!(bad
            .check_shape()
            .unwrap_err()
            .to_string()
            .contains("max_fraction"));
        let spec: ModelSpec = serde_json::from_str(DETECTOR_SPEC).unwrap();
        spec.validate().unwrap();
        let task = Manifest {
            spec: spec.clone(),
            golden_tensors: vec![],
            variants: vec![Variant {
                golden_tensor_outputs: vec![],
                ..manifest().variants[0].clone()
            }],
            ..manifest()
        };
        task.check_shape().unwrap();
        let (f, bytes) = encode_manifest(&task).unwrap();
        assert_eq!(f, FORMAT, "a detector needs an agent that knows tasks");
        assert_eq!(decode_manifest(f, &bytes).unwrap().spec, spec);
    }

    const DETECTOR_SPEC: &str = r#"{"name": "det", "version": 1,
        "input": {"name": "input", "shape": [1, 1, 64, 64], "layout": "NCHW"},
        "preprocess": {"color": "gray", "width": 64, "height": 64, "scale": 255.0, "mean": [0.0], "std": [1.0]},
        "labels": ["0", "1"],
        "task": {"detection": {"decoder": {"yolov8": {"output": {"name": "output0", "shape": [1, 6, 64]}}},
            "score_threshold": 0.25, "iou_threshold": 0.5, "max_detections": 10, "uncertain": [0.2, 0.6]}}}"#;

    /// A bundle whose variants are all NNEF from another tract minor release is refused at the header, before any
    /// model byte is read, with the sentence that says what to do; one readable variant is enough to go on.
    #[test]
    fn a_bundle_with_no_variant_this_agent_reads_is_refused_at_the_header() {
        let key = SigningKeyFile::generate().unwrap();
        let keys = TrustedKeys::parse(&key.trusted_line("test")).unwrap();
        let policy = Policy {
            keys: &keys,
            threshold: 1,
            time: crate::clock::Reading::clock_only(1),
            agent_version: "9.9.9",
            trust_version: None,
        };
        let header = |forms: &[VariantForm]| {
            let mut m = manifest();
            m.variants = forms
                .iter()
                .enumerate()
                .map(|(i, f)| Variant {
                    name: format!("v{i}"),
                    form: f.clone(),
                    ..manifest().variants[0].clone()
                })
                .collect();
            let mut buf = Vec::new();
            let models = vec![vec![0u8]; forms.len()];
            write_bundle(&mut buf, &m, &models, &[&key]).unwrap();
            read_header(&mut buf.as_slice(), &policy)
        };
        let newer = VariantForm::Nnef {
            tract_version: "0.24.0".into(),
            int8_kernels: false,
        };
        match header(std::slice::from_ref(&newer)) {
            Err(BundleError::Unreadable(m)) => {
                assert!(
                    m.contains("tract 0.24.0") && m.contains("rebuild the bundle"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
        let ours = VariantForm::Nnef {
            tract_version: crate::inference::nnef::TRACT_VERSION.into(),
            int8_kernels: false,
        };
        assert!(header(&[newer.clone(), ours]).is_ok());
        // ONNX reads only where the ONNX front end is built in.
        assert_eq!(
            header(&[VariantForm::Onnx]).is_ok(),
            crate::inference::READS_ONNX
        );
    }
}
