//! Building a signed bundle (operator side): golden vectors computed with the same engine the device runs, so the
//! on-device quality gate compares like with like.

use super::{now_unix, sha256, write_bundle, BundleError, Manifest, SigningKeyFile, Variant};
use crate::inference::{preprocess::image_to_tensor, DecodeLimits, Engine, ModelSpec};

/// Golden images kept per bundle: enough to catch a broken variant, small enough to keep manifests small.
pub const MAX_GOLDEN: usize = 8;

pub struct Build<'a> {
    pub spec: ModelSpec,
    /// (variant name, model bytes)
    pub variants: Vec<(String, Vec<u8>)>,
    /// Encoded images for the quality gate (the first [`MAX_GOLDEN`] are used).
    pub golden_images: Vec<Vec<u8>>,
    pub version: u64,
    pub expires_in_s: u64,
    pub tolerance: f32,
    pub hardness_threshold: Option<f32>,
    pub keys: &'a [&'a SigningKeyFile],
}

/// The bundle's bytes.
pub fn build(b: Build) -> Result<Vec<u8>, BundleError> {
    if b.variants.is_empty() {
        return Err(BundleError::Manifest(
            "a bundle needs at least one model variant".into(),
        ));
    }
    let bad = |e: crate::inference::InferenceError| BundleError::Manifest(e.to_string());
    let golden_inputs = b
        .golden_images
        .iter()
        .take(MAX_GOLDEN)
        .map(|img| image_to_tensor(img, &b.spec, &DecodeLimits::default()).map_err(bad))
        .collect::<Result<Vec<_>, _>>()?;
    let mut models = Vec::new();
    let mut variants = Vec::new();
    for (name, bytes) in b.variants {
        let engine = Engine::load(&bytes, b.spec.clone()).map_err(bad)?;
        let golden_outputs = golden_inputs
            .iter()
            .map(|i| engine.run(i))
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad)?;
        variants.push(Variant {
            name,
            size: bytes.len() as u64,
            sha256: sha256(&bytes),
            golden_outputs,
        });
        models.push(bytes);
    }
    let now = now_unix();
    let manifest = Manifest {
        name: b.spec.name.clone(),
        version: b.version,
        created_unix: now,
        expires_unix: now + b.expires_in_s,
        min_agent_version: env!("CARGO_PKG_VERSION").into(),
        spec: b.spec,
        hardness_threshold: b.hardness_threshold,
        golden_inputs,
        golden_tolerance: b.tolerance,
        variants,
    };
    let mut buf = Vec::new();
    write_bundle(&mut buf, &manifest, &models, b.keys)?;
    Ok(buf)
}
