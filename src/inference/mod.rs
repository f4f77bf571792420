//! Local inference: the only module that knows tract.
//!
//! An [`Engine`] loads an ONNX model once, binds it to the batch-1 shape its [`ModelSpec`] gives, optimises it and
//! keeps one immutable plan that any number of threads share; each thread runs it through its own [`Session`]
//! (tract's per-run state), so workers never contend on a lock.

pub mod postprocess;
pub mod preprocess;
pub mod spec;

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tract_onnx::prelude::*;

pub use postprocess::Prediction;
pub use preprocess::DecodeLimits;
pub use spec::ModelSpec;

/// Everything that can go wrong between bytes on disk or on the wire and an answer.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad model spec: {0}")]
    Spec(String),
    #[error("cannot load the model: {0}")]
    Model(String),
    #[error("{0}")]
    Image(String),
    #[error("{what} is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge {
        what: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("input tensor has {got} values, the model takes {expected} ({shape:?})")]
    InputShape {
        expected: usize,
        got: usize,
        shape: Vec<usize>,
    },
    #[error("inference failed: {0}")]
    Run(String),
}

type Plan = TypedSimplePlan;

/// Errors from tract and the decoders can span lines and dump tensors; callers print one line per failure, so the
/// cause is folded onto one line and cut at a readable length.
pub(crate) fn one_line(e: &dyn std::fmt::Display) -> String {
    let text = format!("{e:#}");
    let mut folded = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if folded.len() > 300 {
        let cut = (0..=300)
            .rev()
            .find(|&i| folded.is_char_boundary(i))
            .unwrap_or(0);
        folded.truncate(cut);
        folded.push_str("...");
    }
    folded
}

/// A loaded, optimised model. Cheap to clone (the plan is shared).
#[derive(Clone)]
pub struct Engine {
    plan: Arc<Plan>,
    spec: Arc<ModelSpec>,
    digest: String,
    load_time: Duration,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.spec.name)
            .field("digest", &self.digest)
            .finish()
    }
}

/// Plans loaded in this process, by model digest and input shape; weak, so an unused model is freed.
type PlanKey = (String, Vec<usize>);
fn loaded_plans() -> &'static std::sync::Mutex<HashMap<PlanKey, std::sync::Weak<Plan>>> {
    static PLANS: std::sync::OnceLock<std::sync::Mutex<HashMap<PlanKey, std::sync::Weak<Plan>>>> =
        std::sync::OnceLock::new();
    PLANS.get_or_init(Default::default)
}

/// Hex SHA-256 of a model file: the identity under which results are cached and reported.
pub fn digest_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Engine {
    /// Loads `model` with the spec beside it (or `spec` when given).
    pub fn load_files(model: &Path, spec: Option<&Path>) -> Result<Engine, InferenceError> {
        let spec_path = spec
            .map(Path::to_path_buf)
            .unwrap_or_else(|| ModelSpec::default_path_for(model));
        if !spec_path.exists() {
            return Err(InferenceError::Spec(format!(
                "no spec file at {} (pass --spec <file>; every model needs one describing its input and labels)",
                spec_path.display()
            )));
        }
        let spec = ModelSpec::from_file(&spec_path)?;
        let bytes = std::fs::read(model).map_err(|source| InferenceError::Io {
            path: model.to_path_buf(),
            source,
        })?;
        Engine::load(&bytes, spec)
    }

    /// Parses, types, binds the batch symbol, optimises and plans the model. A model already loaded in this
    /// process (same bytes, same input shape) shares its plan: a rollback to the model kept as fallback, or many
    /// simulated agents, cost one plan, not one each.
    pub fn load(model_bytes: &[u8], spec: ModelSpec) -> Result<Engine, InferenceError> {
        spec.validate().map_err(InferenceError::Spec)?;
        let digest = digest_hex(model_bytes);
        let key = (digest.clone(), spec.input.shape.clone());
        let shared = loaded_plans()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .and_then(std::sync::Weak::upgrade);
        if let Some(plan) = shared {
            return Ok(Engine {
                plan,
                spec: Arc::new(spec),
                digest,
                load_time: Duration::ZERO,
            });
        }
        let engine = Engine::load_new(model_bytes, spec)?;
        let mut plans = loaded_plans().lock().unwrap_or_else(|p| p.into_inner());
        plans.retain(|_, w| w.strong_count() > 0);
        plans.insert(key, Arc::downgrade(&engine.plan));
        Ok(engine)
    }

    fn load_new(model_bytes: &[u8], spec: ModelSpec) -> Result<Engine, InferenceError> {
        let start = Instant::now();
        let model_err = |stage: &str, e: TractError| {
            InferenceError::Model(format!("{stage}: {}", one_line(&e)))
        };
        let mut inference = tract_onnx::onnx()
            .model_for_read(&mut std::io::Cursor::new(model_bytes))
            .map_err(|e| model_err("not a readable ONNX model", e))?;
        if inference
            .input_outlets()
            .map_err(|e| model_err("inputs", e))?
            .len()
            != 1
        {
            return Err(InferenceError::Model(
                "the model must have exactly one input".into(),
            ));
        }
        // Keep only the declared output, so an extra debugging output in the file cannot change what we read.
        inference
            .select_outputs_by_name([spec.output.name.as_str()])
            .map_err(|e| {
                model_err(
                    &format!("the model has no output named '{}'", spec.output.name),
                    e,
                )
            })?;
        let typed = inference
            .into_typed()
            .map_err(|e| model_err("typing the graph", e))?;
        // Files exported with a dynamic batch name it with a symbol (often `N`). tract cannot unify a symbol with
        // the concrete input fact, so every symbol is bound to 1 on the whole graph first.
        let subs: HashMap<Symbol, TDim> = typed
            .symbols
            .all_symbols()
            .into_iter()
            .map(|s| (s, TDim::Val(1)))
            .collect();
        let typed = if subs.is_empty() {
            typed
        } else {
            typed
                .set_symbols(&subs)
                .map_err(|e| model_err("binding the batch dimension to 1", e))?
        };
        let shape: TVec<usize> = spec.input.shape.iter().copied().collect();
        let typed = typed
            .with_input_fact(0, f32::fact(&shape))
            .map_err(|e| model_err(&format!("input shape {:?}", spec.input.shape), e))?;
        let optimized = typed
            .into_optimized()
            .map_err(|e| model_err("optimising", e))?;
        let plan = optimized
            .into_runnable()
            .map_err(|e| model_err("planning", e))?;
        let engine = Engine {
            plan,
            spec: Arc::new(spec),
            digest: digest_hex(model_bytes),
            load_time: start.elapsed(),
        };
        // One dry run: a model that types but cannot run (wrong output size, unsupported kernel) fails here, at
        // load, not on the first request.
        let out = engine
            .session()?
            .run(&vec![0.0; engine.spec.input_len()])
            .map_err(|e| {
                InferenceError::Model(format!(
                    "the model does not run on input shape {:?}: {e}",
                    engine.spec.input.shape
                ))
            })?;
        if out.len() != engine.spec.labels.len() {
            return Err(InferenceError::Model(format!(
                "the model outputs {} values but the spec lists {} labels",
                out.len(),
                engine.spec.labels.len()
            )));
        }
        Ok(engine)
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Hex SHA-256 of the model file.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Parse + type + optimise + plan time.
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// A per-thread runner over the shared plan.
    pub fn session(&self) -> Result<Session, InferenceError> {
        let state =
            TypedSimpleState::new(&self.plan).map_err(|e| InferenceError::Run(one_line(&e)))?;
        Ok(Session {
            engine: self.clone(),
            state,
        })
    }

    /// Convenience for one-off calls; workers keep a [`Session`] instead.
    pub fn run(&self, input: &[f32]) -> Result<Vec<f32>, InferenceError> {
        self.session()?.run(input)
    }

    pub fn classify(&self, input: &[f32]) -> Result<Prediction, InferenceError> {
        self.session()?.classify(input)
    }

    /// Decodes and preprocesses an encoded image for this model.
    pub fn tensor_from_image(
        &self,
        bytes: &[u8],
        limits: &DecodeLimits,
    ) -> Result<Vec<f32>, InferenceError> {
        preprocess::image_to_tensor(bytes, &self.spec, limits)
    }
}

/// One thread's state for running an [`Engine`]'s plan.
pub struct Session {
    engine: Engine,
    state: TypedSimpleState,
}

impl Session {
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Runs the model on one flat input tensor and returns its flat output.
    pub fn run(&mut self, input: &[f32]) -> Result<Vec<f32>, InferenceError> {
        let spec = &self.engine.spec;
        if input.len() != spec.input_len() {
            return Err(InferenceError::InputShape {
                expected: spec.input_len(),
                got: input.len(),
                shape: spec.input.shape.clone(),
            });
        }
        let tensor = Tensor::from_shape(&spec.input.shape, input)
            .map_err(|e| InferenceError::Run(one_line(&e)))?;
        let out = self
            .state
            .run(tvec!(tensor.into()))
            .map_err(|e| InferenceError::Run(one_line(&e)))?;
        let view = out[0]
            .to_plain_array_view::<f32>()
            .map_err(|e| InferenceError::Run(one_line(&e)))?;
        Ok(view.iter().copied().collect())
    }

    pub fn classify(&mut self, input: &[f32]) -> Result<Prediction, InferenceError> {
        let out = self.run(input)?;
        if out.is_empty() || out.iter().any(|x| !x.is_finite()) {
            return Err(InferenceError::Run(
                "the model produced an empty or non-finite output".into(),
            ));
        }
        Ok(postprocess::predict(&out, &self.engine.spec, 5))
    }
}
