//! Plans: building one from model bytes (bound to its batch, optimised, dry-run once), the key of everything that
//! shapes it, the process-wide table that lets engines of the same key share one, and the check of a spec against a
//! plan that every load passes, shared or not.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tract_nnef::prelude::*;

use super::*;

pub(super) type Plan = TypedSimplePlan;

/// An optimised plan with what its dry run measured. Shared between [`Engine`]s whose loads have the same
/// [`PlanKey`]; each engine still checks its own spec against it (see [`fits`]).
pub(super) struct SharedPlan {
    pub(super) plan: Arc<Plan>,
    /// The facts the plan was built for, kept so that a spec is compared with the plan itself, not with the key
    /// that found it.
    pub(super) key: PlanKey,
    /// The input shape the plan is bound to (`key.plan_shape()`, kept so that a run allocates no shape).
    pub(super) shape: Vec<usize>,
    /// Number of output values per sample, measured by the dry run that built the plan.
    pub(super) output_len: usize,
    /// Parse + type + optimise + plan time of the build.
    pub(super) build_time: Duration,
    /// How many quantized operators were rewritten to their QDQ form.
    pub(super) dequantized_ops: usize,
    /// The executor its runs split their products over, if it was set and the plan is slow enough to gain.
    pub(super) parallel: Option<tract_linalg::multithread::Executor>,
    /// What the dry run gave for each output of a raw tensor model: datatype (None when not one Outpost serves) and
    /// shape, compared with the spec by [`fits`].
    pub(super) raw_outputs: OutputFacts,
}

/// Each output's datatype (None when not one Outpost serves) and shape, as a dry run gave them.
pub(super) type OutputFacts = Vec<(Option<Dtype>, Vec<usize>)>;

/// Everything that shapes a plan: the model bytes (by digest) and their format, the input shape and batch it is bound
/// to, the one output it is cut to, the int8 mode and the executor setting. Two loads share a plan only when all
/// match.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct PlanKey {
    pub(super) digest: String,
    /// Where the digest's bytes came from: an ONNX file or tract's NNEF form of one.
    pub(super) format: Format,
    /// The spec's batch-1 input shape.
    pub(super) input_shape: Vec<usize>,
    pub(super) output_name: String,
    /// Samples per run (the plan's input is `input_shape` with its first dimension set to this).
    pub(super) batch: usize,
    /// Quantized operators rewritten to their QDQ form (run on float kernels).
    pub(super) int8_as_float: bool,
    /// Executor threads and threshold in force at load (they decide whether the plan runs on the executor).
    pub(super) threads: (usize, Duration),
    /// A raw tensor model's inputs and outputs (then `input_shape` and `output_name` are empty).
    pub(super) io: Option<TensorIo>,
}

/// The form of a model file, told by its content ([`Format::of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Format {
    Onnx,
    /// tract's NNEF tar, compiled from an ONNX file on the operator's side ([`onnx::compile`]).
    Nnef,
}

impl Format {
    pub(super) fn of(bytes: &[u8]) -> Format {
        if nnef::is_nnef(bytes) {
            Format::Nnef
        } else {
            Format::Onnx
        }
    }
}

impl PlanKey {
    pub(super) fn new(
        digest: &str,
        format: Format,
        spec: &ModelSpec,
        batch: usize,
        int8: Int8Mode,
    ) -> PlanKey {
        PlanKey {
            digest: digest.to_string(),
            format,
            input_shape: spec.input.shape.clone(),
            output_name: spec.output.name.clone(),
            batch,
            int8_as_float: format == Format::Onnx && int8.as_float(),
            threads: parallel_setting().map_or((1, Duration::ZERO), |(_, n, min)| (n, min)),
            io: spec.io(),
        }
    }

    /// The shape the plan is bound to.
    pub(super) fn plan_shape(&self) -> Vec<usize> {
        let mut shape = self.input_shape.clone();
        if let Some(b) = shape.first_mut() {
            *b = self.batch;
        }
        shape
    }
}

/// Plans loaded in this process; weak, so an unused model is freed.
pub(super) fn loaded_plans(
) -> &'static std::sync::Mutex<HashMap<PlanKey, std::sync::Weak<SharedPlan>>> {
    static PLANS: std::sync::OnceLock<
        std::sync::Mutex<HashMap<PlanKey, std::sync::Weak<SharedPlan>>>,
    > = std::sync::OnceLock::new();
    PLANS.get_or_init(Default::default)
}

/// Checks a spec against a plan, whether the plan was just built or found alive in the process: a spec that does
/// not fit is refused the same way on either path, so a bundle cannot go live by reusing another load's checks.
pub(super) fn fits(plan: &SharedPlan, spec: &ModelSpec) -> Result<(), InferenceError> {
    let io = spec.io();
    if plan.key.io != io {
        return Err(InferenceError::Model(
            "the plan was built for other inputs and outputs than the spec lists".into(),
        ));
    }
    if let Some(io) = &io {
        for (want, (dt, shape)) in io.outputs.iter().zip(&plan.raw_outputs) {
            if *dt != Some(want.datatype) || *shape != want.shape {
                return Err(InferenceError::Model(format!(
                    "output {} is {} of shape {shape:?}, but the spec says {} of shape {:?}",
                    want.name,
                    dt.map_or("a datatype Outpost does not serve", Dtype::name),
                    want.datatype.name(),
                    want.shape
                )));
            }
        }
        return Ok(());
    }
    if plan.key.output_name != spec.output.name {
        return Err(InferenceError::Model(format!(
            "the plan reads output '{}' but the spec names '{}'",
            plan.key.output_name, spec.output.name
        )));
    }
    // The same shape is the same input length.
    if plan.key.input_shape != spec.input.shape {
        return Err(InferenceError::Model(format!(
            "the plan is bound to input shape {:?} but the spec gives {:?}",
            plan.key.input_shape, spec.input.shape
        )));
    }
    if plan.output_len != spec.labels.len() {
        return Err(InferenceError::Model(format!(
            "the model outputs {} values but the spec lists {} labels",
            plan.output_len,
            spec.labels.len()
        )));
    }
    Ok(())
}

/// Binds every symbol to the batch (tract cannot unify a symbol with a concrete input fact, so files exported with
/// a dynamic batch `N` get it bound on the whole graph first), then sets the input fact.
pub(super) fn bind_input(typed: TypedModel, key: &PlanKey) -> Result<TypedModel, InferenceError> {
    let subs: HashMap<Symbol, TDim> = typed
        .symbols
        .all_symbols()
        .into_iter()
        .map(|s| (s, TDim::Val(key.batch as i64)))
        .collect();
    let typed = if subs.is_empty() {
        typed
    } else {
        typed
            .set_symbols(&subs)
            .map_err(|e| model_err("binding the batch dimension", e))?
    };
    let shape: TVec<usize> = key.plan_shape().into_iter().collect();
    typed
        .with_input_fact(0, f32::fact(&shape))
        .map_err(|e| model_err(&format!("input shape {shape:?}"), e))
}

pub(super) fn model_err(stage: &str, e: TractError) -> InferenceError {
    InferenceError::Model(format!("{stage}: {}", one_line(&e)))
}

/// Builds the plan for `key` from model bytes in its format, then dry-runs it once on zeros: a model that types but
/// cannot run (unsupported kernel, wrong shape) fails here, at load, not on the first request.
pub(super) fn build_plan(model_bytes: &[u8], key: PlanKey) -> Result<SharedPlan, InferenceError> {
    init_kernels();
    let start = Instant::now();
    let (typed, dequantized_ops) = match key.format {
        #[cfg(feature = "onnx")]
        Format::Onnx => onnx::typed_onnx(model_bytes, &key)?,
        #[cfg(not(feature = "onnx"))]
        Format::Onnx => return Err(InferenceError::Model(NEEDS_NNEF.into())),
        Format::Nnef => (nnef::typed_nnef(model_bytes, &key)?, 0),
    };
    let optimized = typed
        .into_optimized()
        .map_err(|e| model_err("optimising", e))?;
    let plan = optimized
        .into_runnable()
        .map_err(|e| model_err("planning", e))?;
    let build_time = start.elapsed();
    let mut state = TypedSimpleState::new(&plan).map_err(|e| model_err("planning", e))?;
    if let Some(io) = &key.io {
        let raw_outputs = dry_run_raw(&mut state, io)?;
        drop(state);
        return Ok(SharedPlan {
            plan,
            output_len: 0,
            shape: Vec::new(),
            key,
            build_time,
            dequantized_ops,
            parallel: None,
            raw_outputs,
        });
    }
    let shape = key.plan_shape();
    let n: usize = shape.iter().product();
    let zeros =
        Tensor::from_shape(&shape, &vec![0f32; n]).map_err(|e| model_err("dry run input", e))?;
    let out = state.run(tvec!(zeros.into())).map_err(|e| {
        InferenceError::Model(format!(
            "the model does not run on input shape {shape:?}: {}",
            one_line(&e)
        ))
    })?;
    let total = out
        .first()
        .map(|t| t.len())
        .ok_or_else(|| InferenceError::Model("the model produced no output".into()))?;
    // A second (warm) single-thread run decides whether this plan gains from the shared executor.
    let parallel = match parallel_setting() {
        Some((executor, _, min_run)) => {
            let zeros = Tensor::from_shape(&shape, &vec![0f32; n])
                .map_err(|e| model_err("dry run input", e))?;
            let t = Instant::now();
            state
                .run(tvec!(zeros.into()))
                .map_err(|e| model_err("second dry run", e))?;
            (t.elapsed() >= min_run).then_some(executor)
        }
        None => None,
    };
    if !total.is_multiple_of(key.batch) {
        return Err(InferenceError::Model(format!(
            "the model outputs {total} values for a batch of {}",
            key.batch
        )));
    }
    drop(state);
    Ok(SharedPlan {
        plan,
        output_len: total / key.batch,
        shape,
        key,
        build_time,
        dequantized_ops,
        parallel,
        raw_outputs: Vec::new(),
    })
}

/// Runs a raw tensor model once on zeros of every declared input: a model that types but cannot run fails at load.
/// Returns each output's datatype and shape, for [`fits`].
pub(super) fn dry_run_raw(
    state: &mut TypedSimpleState,
    io: &TensorIo,
) -> Result<OutputFacts, InferenceError> {
    let inputs = io
        .inputs
        .iter()
        .map(|t| {
            to_tract(&TensorValue {
                name: t.name.clone(),
                shape: t.shape.clone(),
                data: TensorData::zeros(t.datatype, t.len()),
            })
            .map(TValue::from)
        })
        .collect::<TractResult<TVec<TValue>>>()
        .map_err(|e| model_err("dry run input", e))?;
    let out = state.run(inputs).map_err(|e| {
        InferenceError::Model(format!(
            "the model does not run on the inputs the spec lists: {}",
            one_line(&e)
        ))
    })?;
    if out.len() != io.outputs.len() {
        return Err(InferenceError::Model(format!(
            "the model gives {} outputs, the spec lists {}",
            out.len(),
            io.outputs.len()
        )));
    }
    Ok(out
        .iter()
        .map(|t| (dtype_of(t.datum_type()), t.shape().to_vec()))
        .collect())
}
