//! Building a signed bundle (operator side): golden vectors computed with the same engine the device runs, so the
//! on-device quality gate compares like with like.

use super::{
    now_unix, sha256, write_bundle, BundleError, Manifest, SigningKeyFile, Variant, VariantForm,
};
use crate::inference::onnx::{compile, int8_operators, NnefForm};
use crate::inference::{
    nnef, preprocess::image_to_tensor, DecodeLimits, Dtype, Engine, Int8Mode, ModelSpec,
    TensorData, TensorValue,
};

/// Which forms of each ONNX variant a bundle carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Forms {
    /// The ONNX files only: for agents from before NNEF variants (they take format 1 bundles).
    Onnx,
    /// The NNEF forms only: the smallest download for a fleet of slim device builds.
    Nnef,
    /// Both (the default): full and slim agents alike can install it, and a full agent keeps the NNEF form beside
    /// the ONNX one it chose, so an upgrade to the slim build finds a form it reads.
    #[default]
    Both,
}

impl std::str::FromStr for Forms {
    type Err = String;
    fn from_str(s: &str) -> Result<Forms, String> {
        match s {
            "onnx" => Ok(Forms::Onnx),
            "nnef" => Ok(Forms::Nnef),
            "both" => Ok(Forms::Both),
            other => Err(format!(
                "'{other}' is not a set of forms: use onnx, nnef or both"
            )),
        }
    }
}

/// One model file going into the bundle, with the engine its NNEF form must answer like (when it is one).
struct Candidate {
    name: String,
    bytes: Vec<u8>,
    form: VariantForm,
    reference: Option<Engine>,
}

/// The variants a given file becomes: itself (an NNEF file as it is), and for an ONNX file the forms asked for:
/// `NAME-nnef` as it is (integer operators kept), plus `NAME-nnef-qdq` when it holds real-int8 operators.
fn candidates(
    name: String,
    bytes: Vec<u8>,
    spec: &ModelSpec,
    forms: Forms,
) -> Result<Vec<Candidate>, BundleError> {
    let bad = |e: crate::inference::InferenceError| BundleError::Variant {
        variant: name.clone(),
        message: e.to_string(),
    };
    if nnef::is_nnef(&bytes) {
        return Ok(vec![Candidate {
            name,
            bytes,
            form: VariantForm::Nnef {
                tract_version: nnef::TRACT_VERSION.into(),
                int8_kernels: false,
            },
            reference: None,
        }]);
    }
    let mut out = Vec::new();
    if forms != Forms::Onnx {
        let int8 = int8_operators(&bytes);
        let mut nnef_forms = vec![(format!("{name}-nnef"), NnefForm::Kernels, Int8Mode::Native)];
        if int8 > 0 {
            nnef_forms.push((format!("{name}-nnef-qdq"), NnefForm::Qdq, Int8Mode::Float));
        }
        for (variant, form, mode) in nnef_forms {
            let compiled = compile(&bytes, spec, form).map_err(bad)?;
            out.push(Candidate {
                name: variant,
                bytes: compiled.bytes,
                form: VariantForm::Nnef {
                    tract_version: nnef::TRACT_VERSION.into(),
                    int8_kernels: form == NnefForm::Kernels && int8 > 0,
                },
                reference: Some(Engine::load_int8(&bytes, spec.clone(), mode).map_err(bad)?),
            });
        }
    }
    if forms != Forms::Nnef {
        out.insert(
            0,
            Candidate {
                name,
                bytes,
                form: VariantForm::Onnx,
                reference: None,
            },
        );
    }
    Ok(out)
}

/// The largest difference between two runs' outputs, with the output's name (NaN counts as infinite).
fn worst_difference(a: &[TensorValue], b: &[TensorValue]) -> (f64, String) {
    let mut worst = (0f64, String::new());
    for (x, y) in a.iter().zip(b) {
        let d = x.max_abs_diff(y);
        if d > worst.0 || worst.1.is_empty() {
            worst = (d, x.name.clone());
        }
    }
    worst
}

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
    /// Which forms of each ONNX variant to carry.
    pub forms: Forms,
    /// The release's forward budget (`None`: the device's configuration decides).
    pub budget: Option<super::ForwardBudget>,
    /// Encoded images of the release's calibration data: the drift baseline is the first variant's hardness on them
    /// (none when empty).
    pub calibration: Vec<Vec<u8>>,
}

/// The release's hardness on its calibration images, as the device will measure it: a classifier's max-prob
/// hardness (1 - top probability) with its forward threshold (the manifest's, else 0.9), or a task model's own
/// hardness (hard above 0). A sample of at most [`super::MAX_BASELINE`], sorted.
pub fn baseline(
    engine: &Engine,
    images: &[Vec<u8>],
    hardness_threshold: Option<f32>,
) -> Result<Option<super::Baseline>, BundleError> {
    if images.is_empty() {
        return Ok(None);
    }
    let limits = DecodeLimits::default();
    let bad =
        |e: crate::inference::InferenceError| BundleError::Manifest(format!("calibration: {e}"));
    let mut hardness = Vec::new();
    let mut wanted = 0usize;
    for img in images.iter().take(super::MAX_BASELINE) {
        let h = if engine.task().is_some() {
            let (t, fit) = engine.task_input_from_image(img, &limits).map_err(bad)?;
            let h = engine
                .run_task(&t, &fit, &Default::default())
                .map_err(bad)?
                .hardness;
            wanted += usize::from(h > 0.0);
            h
        } else {
            let t = image_to_tensor(img, engine.spec(), &limits).map_err(bad)?;
            let p = engine.classify(&t).map_err(bad)?;
            wanted += usize::from(p.confidence < hardness_threshold.unwrap_or(0.9));
            1.0 - p.confidence
        };
        hardness.push(h);
    }
    let score = if engine.task().is_some() {
        super::BaselineScore::Task
    } else {
        super::BaselineScore::MaxProb
    };
    let n = hardness.len();
    hardness.sort_by(f32::total_cmp);
    Ok(Some(super::Baseline {
        hardness,
        forward_rate: wanted as f32 / n as f32,
        score,
    }))
}

/// The bundle's bytes.
pub fn build(b: Build) -> Result<Vec<u8>, BundleError> {
    if b.variants.is_empty() {
        return Err(BundleError::Manifest(
            "a bundle needs at least one model variant".into(),
        ));
    }
    let bad = |e: crate::inference::InferenceError| BundleError::Manifest(e.to_string());
    let mut golden_inputs = b
        .golden_images
        .iter()
        .take(MAX_GOLDEN)
        .map(|img| image_to_tensor(img, &b.spec, &DecodeLimits::default()).map_err(bad))
        .collect::<Result<Vec<_>, _>>()?;
    // A task model's gate compares every output its decoder reads: its golden images go in as tensor cases.
    let mut task_tensors = Vec::new();
    if b.spec.task.is_some() {
        if !b.golden_tensors.is_empty() {
            return Err(BundleError::Manifest(
                "a detector's or scorer's golden cases are images (--golden), not tensors".into(),
            ));
        }
        task_tensors = golden_inputs
            .drain(..)
            .map(|t| {
                vec![TensorValue {
                    name: b.spec.input.name.clone(),
                    shape: b.spec.input.shape.clone(),
                    data: TensorData::Fp32(t),
                }]
            })
            .collect();
    }
    if b.spec.io().is_none() && !b.golden_tensors.is_empty() {
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
    let golden_tensors: Vec<Vec<TensorValue>> = b
        .golden_tensors
        .into_iter()
        .chain(task_tensors)
        .take(MAX_GOLDEN)
        .collect();
    let mut models = Vec::new();
    let mut variants = Vec::new();
    let mut given = Vec::new();
    let mut given_first: Option<Engine> = None;
    for (name, bytes) in b.variants {
        given.extend(candidates(name, bytes, &b.spec, b.forms)?);
    }
    for c in given {
        let bad = |e: crate::inference::InferenceError| BundleError::Variant {
            variant: c.name.clone(),
            message: e.to_string(),
        };
        let engine = Engine::load(&c.bytes, b.spec.clone()).map_err(bad)?;
        if given_first.is_none() {
            given_first = Some(engine.clone());
        }
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
        // A compiled form must answer as the file it came from: the device's gate only compares a variant with its
        // own golden outputs, so a form that tract writes wrong would otherwise pass it.
        if let Some(reference) = &c.reference {
            for (i, (input, got)) in golden_inputs.iter().zip(&golden_outputs).enumerate() {
                let want = reference.run(input).map_err(bad)?;
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(
                        0f32,
                        |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
                    );
                if got.len() != want.len() || worst > b.tolerance {
                    return Err(BundleError::Variant {
                        variant: c.name.clone(),
                        message: format!(
                            "the NNEF form answers golden image {i} differently from its ONNX file (max difference \
                             {worst} > tolerance {}): build the bundle with --forms onnx",
                            b.tolerance
                        ),
                    });
                }
            }
            for (i, (inputs, got)) in golden_tensors
                .iter()
                .zip(&golden_tensor_outputs)
                .enumerate()
            {
                let want = reference.run_tensors(inputs).map_err(bad)?;
                let (worst, output) = worst_difference(got, &want);
                if worst > b.tolerance as f64 {
                    return Err(BundleError::Variant {
                        variant: c.name.clone(),
                        message: format!(
                            "the NNEF form answers golden case {i} differently from its ONNX file (output {output} \
                             differs by {worst} > tolerance {}; tract's NNEF writer has known gaps, e.g. INT64 \
                             constants beyond 32 bits): build the bundle with --forms onnx",
                            b.tolerance
                        ),
                    });
                }
            }
        }
        variants.push(Variant {
            name: c.name,
            size: c.bytes.len() as u64,
            sha256: sha256(&c.bytes),
            golden_outputs,
            golden_tensor_outputs,
            form: c.form,
        });
        models.push(c.bytes);
    }
    // The baseline of the first variant (the operator lists the reference variant first).
    let baseline = match given_first {
        Some(e) => baseline(&e, &b.calibration, b.hardness_threshold)?,
        None => None,
    };
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
        budget: b.budget,
        baseline,
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
