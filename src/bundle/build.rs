//! Building a signed bundle (operator side): golden vectors computed with the same engine the device runs, so the
//! on-device quality gate compares like with like.

use super::{now_unix, sha256, write_bundle, BundleError, Manifest, SigningKeyFile, Variant};
use crate::inference::{
    preprocess::image_to_tensor, DecodeLimits, Dtype, Engine, ModelSpec, TensorData, TensorValue,
};

/// Golden images kept per bundle: enough to catch a broken variant, small enough to keep manifests small.
pub const MAX_GOLDEN: usize = 8;

pub struct Build<'a> {
    pub spec: ModelSpec,
    /// (variant name, model bytes)
    pub variants: Vec<(String, Vec<u8>)>,
    /// Encoded images for the quality gate (the first [`MAX_GOLDEN`] are used).
    pub golden_images: Vec<Vec<u8>>,
    /// A raw tensor model's gate: sets of inputs (the first [`MAX_GOLDEN`] are used; see [`golden_tensors_from_json`]).
    pub golden_tensors: Vec<Vec<TensorValue>>,
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
    if b.spec.tensors.is_none() && !b.golden_tensors.is_empty() {
        return Err(BundleError::Manifest(
            "golden tensors are for raw tensor models (a spec that lists tensors); a classifier's golden cases are images"
                .into(),
        ));
    }
    if b.spec.tensors.is_some() && !golden_inputs.is_empty() {
        return Err(BundleError::Manifest(
            "a raw tensor model takes golden tensors (--golden-tensors), not images".into(),
        ));
    }
    let golden_tensors: Vec<Vec<TensorValue>> =
        b.golden_tensors.into_iter().take(MAX_GOLDEN).collect();
    let mut models = Vec::new();
    let mut variants = Vec::new();
    for (name, bytes) in b.variants {
        let engine = Engine::load(&bytes, b.spec.clone()).map_err(bad)?;
        let golden_outputs = golden_inputs
            .iter()
            .map(|i| engine.run(i))
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad)?;
        let golden_tensor_outputs = golden_tensors
            .iter()
            .map(|i| engine.run_tensors(i))
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad)?;
        variants.push(Variant {
            name,
            size: bytes.len() as u64,
            sha256: sha256(&bytes),
            golden_outputs,
            golden_tensor_outputs,
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
        golden_tensors,
    };
    let mut buf = Vec::new();
    write_bundle(&mut buf, &manifest, &models, b.keys)?;
    Ok(buf)
}

/// One tensor of a golden tensors file, as an Open Inference Protocol request writes it.
#[derive(serde::Deserialize)]
struct GoldenTensor {
    name: String,
    datatype: Dtype,
    shape: Vec<usize>,
    data: Vec<serde_json::Number>,
}

/// Reads a golden tensors file: a JSON list of cases, each a list of `{name, datatype, shape, data}` (data flat,
/// row-major), in the spec's input order.
pub fn golden_tensors_from_json(bytes: &[u8]) -> Result<Vec<Vec<TensorValue>>, BundleError> {
    let bad = |m: String| BundleError::Manifest(format!("golden tensors: {m}"));
    let cases: Vec<Vec<GoldenTensor>> =
        serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    cases
        .into_iter()
        .map(|case| {
            case.into_iter()
                .map(|t| {
                    let ints = || {
                        t.data
                            .iter()
                            .map(|n| {
                                n.as_i64().ok_or_else(|| {
                                    bad(format!("{}: {n} is not an integer", t.name))
                                })
                            })
                            .collect::<Result<Vec<i64>, _>>()
                    };
                    let data = match t.datatype {
                        Dtype::Fp32 => TensorData::Fp32(
                            t.data
                                .iter()
                                .map(|n| n.as_f64().unwrap_or(f64::NAN) as f32)
                                .collect(),
                        ),
                        Dtype::Int64 => TensorData::Int64(ints()?),
                        Dtype::Int32 => TensorData::Int32(narrow(&t.name, ints()?)?),
                        Dtype::Uint8 => TensorData::Uint8(narrow(&t.name, ints()?)?),
                        Dtype::Int8 => TensorData::Int8(narrow(&t.name, ints()?)?),
                    };
                    Ok(TensorValue {
                        name: t.name,
                        shape: t.shape,
                        data,
                    })
                })
                .collect()
        })
        .collect()
}

/// Integers into a narrower type, refusing any that does not fit.
fn narrow<T: TryFrom<i64>>(name: &str, v: Vec<i64>) -> Result<Vec<T>, BundleError> {
    v.into_iter()
        .map(|x| {
            T::try_from(x).map_err(|_| {
                BundleError::Manifest(format!(
                    "golden tensors: {name}: {x} is out of range for its datatype"
                ))
            })
        })
        .collect()
}
