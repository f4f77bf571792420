//! The engine: a loaded, optimised model (one shared plan and its spec) and the ways to load one (files, bytes,
//! batched, the built-in model, real-int8 forms chosen by timing), with one-call helpers that open a session.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tract_nnef::prelude::*;

use super::*;

/// The edge model built into the binary: what `outpost run` serves with no configuration at all. Builds with the
/// ONNX front end embed the ONNX file; the slim device build embeds its two NNEF forms (`outpostctl compile`; a
/// test checks they are what compiling the ONNX file gives today) and serves the one `engine.int8` picks.
pub fn builtin_model() -> &'static [u8] {
    #[cfg(feature = "onnx")]
    {
        BUILTIN_ONNX
    }
    #[cfg(not(feature = "onnx"))]
    {
        if Int8Mode::current().as_float() {
            BUILTIN_NNEF_QDQ
        } else {
            BUILTIN_NNEF
        }
    }
}

#[cfg(feature = "onnx")]
pub const BUILTIN_ONNX: &[u8] = include_bytes!("../../models/edge-int8.onnx");
/// The built-in model's NNEF form as it is (integer kernels), and its QDQ form (float kernels).
pub const BUILTIN_NNEF: &[u8] = include_bytes!("../../models/edge-int8.nnef.tar");
pub const BUILTIN_NNEF_QDQ: &[u8] = include_bytes!("../../models/edge-int8-qdq.nnef.tar");
pub const BUILTIN_SPEC: &str = include_str!("../../models/edge-int8.spec.json");

/// A loaded, optimised model. Cheap to clone (the plan is shared).
#[derive(Clone)]
pub struct Engine {
    pub(super) plan: Arc<SharedPlan>,
    pub(super) spec: Arc<ModelSpec>,
    pub(super) digest: String,
    pub(super) release: Arc<(Release, String)>,
    pub(super) load_time: Duration,
    /// How `engine.int8 = auto` settled this real-int8 model here (its form and both timings).
    pub(super) int8: Option<Int8Choice>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.spec.name)
            .field("digest", &self.digest)
            .finish()
    }
}

impl Engine {
    /// Loads `model` with the spec beside it (or `spec` when given). Errors name the model file.
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
        Engine::load(&bytes, spec).map_err(|e| match e {
            InferenceError::Model(m) => InferenceError::Model(format!(
                "{} (spec {}): {m}",
                model.display(),
                spec_path.display()
            )),
            other => other,
        })
    }

    /// Parses, types, binds the batch symbol, optimises and plans the model. A model already loaded in this
    /// process (same [`PlanKey`]) shares its plan: a rollback to the model kept as fallback, or
    /// many simulated agents, cost one plan, not one each. Shared or not, the spec is checked against the plan
    /// before the engine is returned.
    /// The file may be ONNX or tract's NNEF form ([`onnx::compile`]); the slim device build refuses ONNX with a
    /// sentence that says what to do ([`NEEDS_NNEF`]).
    pub fn load(model_bytes: &[u8], spec: ModelSpec) -> Result<Engine, InferenceError> {
        Engine::load_int8(model_bytes, spec, Int8Mode::current())
    }

    /// [`Engine::load`] with a given [`Int8Mode`] instead of the process's.
    pub fn load_int8(
        model_bytes: &[u8],
        spec: ModelSpec,
        int8: Int8Mode,
    ) -> Result<Engine, InferenceError> {
        Engine::load_as(model_bytes, spec, 1, int8)
    }

    /// The same for a plan that runs `batch` samples at once ([`Session::run`] then takes and returns `batch`
    /// samples back to back).
    pub fn load_batched(
        model_bytes: &[u8],
        spec: ModelSpec,
        batch: usize,
    ) -> Result<Engine, InferenceError> {
        Engine::load_as(model_bytes, spec, batch, Int8Mode::current())
    }

    pub(super) fn load_as(
        model_bytes: &[u8],
        spec: ModelSpec,
        batch: usize,
        int8: Int8Mode,
    ) -> Result<Engine, InferenceError> {
        spec.validate().map_err(InferenceError::Spec)?;
        if !(1..=1024).contains(&batch) {
            return Err(InferenceError::Spec(format!(
                "batch must be 1 to 1024, got {batch}"
            )));
        }
        let digest = digest_hex(model_bytes);
        let format = Format::of(model_bytes);
        if int8 == Int8Mode::Auto && format == Format::Onnx && has_qoperators(model_bytes) {
            return Engine::load_auto(model_bytes, spec, batch, &digest);
        }
        let key = PlanKey::new(&digest, format, &spec, batch, int8);
        let shared = loaded_plans()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .and_then(std::sync::Weak::upgrade);
        let (plan, load_time) = match shared {
            Some(plan) => (plan, Duration::ZERO),
            None => {
                let built = build_plan(model_bytes, key.clone());
                release_freed_memory();
                let plan = Arc::new(built?);
                let mut plans = loaded_plans().lock().unwrap_or_else(|p| p.into_inner());
                plans.retain(|_, w| w.strong_count() > 0);
                plans.insert(key, Arc::downgrade(&plan));
                let t = plan.build_time;
                (plan, t)
            }
        };
        fits(&plan, &spec)?;
        let release = Release::of(&digest, &spec);
        let id = release.id();
        let release = Arc::new((release, id));
        Ok(Engine {
            plan,
            spec: Arc::new(spec),
            digest,
            release,
            load_time,
            int8: None,
        })
    }

    /// `engine.int8 = auto` on an ONNX file with quantized operators: both forms timed, the faster kept
    /// ([`int8::choose`]).
    pub(super) fn load_auto(
        model_bytes: &[u8],
        spec: ModelSpec,
        batch: usize,
        digest: &str,
    ) -> Result<Engine, InferenceError> {
        let facts = format!(
            "{:?}",
            PlanKey::new(digest, Format::Onnx, &spec, batch, Int8Mode::Native)
        );
        int8::choose(&int8::key(digest, &facts), |form| {
            Engine::load_as(model_bytes, spec.clone(), batch, form.mode())
        })
    }

    /// The model built into the binary ([`builtin_model`]). The slim build holds its two NNEF forms, and under
    /// `engine.int8 = auto` times both like any real-int8 model.
    pub fn load_builtin(spec: ModelSpec) -> Result<Engine, InferenceError> {
        #[cfg(not(feature = "onnx"))]
        if Int8Mode::current() == Int8Mode::Auto {
            let digest = digest_hex(BUILTIN_NNEF);
            let facts = format!(
                "builtin {:?}",
                PlanKey::new(&digest, Format::Nnef, &spec, 1, Int8Mode::Native)
            );
            return int8::choose(&int8::key(&digest, &facts), |form| {
                let bytes = match form {
                    Int8Form::Native => BUILTIN_NNEF,
                    Int8Form::Float => BUILTIN_NNEF_QDQ,
                };
                Engine::load_as(bytes, spec.clone(), 1, Int8Mode::Native)
            });
        }
        Engine::load(builtin_model(), spec)
    }

    pub(super) fn with_int8(mut self, choice: Int8Choice) -> Engine {
        self.int8 = Some(choice);
        self
    }

    /// How `engine.int8 = auto` settled this model on this device, when it is a real-int8 model loaded in `auto`.
    pub fn int8_choice(&self) -> Option<Int8Choice> {
        self.int8
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Hex SHA-256 of the model file.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The release this engine serves: what decides whether two engines are the same model.
    pub fn release(&self) -> &Release {
        &self.release.0
    }

    /// [`Release::id`] of [`Engine::release`], computed once at load.
    pub fn release_id(&self) -> &str {
        &self.release.1
    }

    /// Parse + type + optimise + plan time; zero when the plan was shared with an engine already loaded.
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// How many quantized operators run on float kernels (their QDQ form; see [`Int8Mode`]); 0 for a float model
    /// or integer kernels.
    pub fn dequantized_ops(&self) -> usize {
        self.plan.dequantized_ops
    }

    /// Whether runs split their products over the shared executor (see [`set_threads`]).
    pub fn parallel(&self) -> bool {
        self.plan.parallel.is_some()
    }

    /// Samples per run.
    pub fn batch(&self) -> usize {
        self.plan.key.batch
    }

    /// A per-thread runner over the shared plan.
    pub fn session(&self) -> Result<Session, InferenceError> {
        let state = TypedSimpleState::new(&self.plan.plan)
            .map_err(|e| InferenceError::Run(one_line(&e)))?;
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
        Ok(self.task_input_from_image(bytes, limits)?.0)
    }

    /// Decodes and preprocesses an encoded image, and says how it was fitted to the input (what maps a detector's
    /// boxes back to the image).
    pub fn task_input_from_image(
        &self,
        bytes: &[u8],
        limits: &DecodeLimits,
    ) -> Result<(Vec<f32>, task::Fit), InferenceError> {
        if self.spec.tensors.is_some() {
            return Err(InferenceError::Image(format!(
                "model {} takes tensors, not an image: send its inputs through the Open Inference Protocol \
                 (POST /v2/models/{}/infer)",
                self.spec.name, self.spec.name
            )));
        }
        preprocess::image_to_task_input(bytes, &self.spec, limits)
    }

    /// The task of a detector or scorer (`None` for a classifier or a raw tensor model).
    pub fn task(&self) -> Option<&task::Task> {
        self.spec.task.as_ref()
    }

    /// The task of a model that takes an image (`None` for a scorer of tensors, served as a raw model).
    pub fn image_task(&self) -> Option<&task::Task> {
        self.task().filter(|_| !self.is_raw())
    }

    /// Convenience for one-off calls of a task model; workers keep a [`Session`].
    pub fn run_task(
        &self,
        input: &[f32],
        fit: &task::Fit,
        overrides: &task::Overrides,
    ) -> Result<task::Decoded, InferenceError> {
        Ok(self.session()?.run_task(input, fit, overrides)?.0)
    }

    /// A scorer of tensors: runs on the request's tensors and decodes its scores; the outputs come back too.
    pub fn run_task_tensors(
        &self,
        inputs: &[TensorValue],
    ) -> Result<(task::Decoded, Vec<TensorValue>), InferenceError> {
        let outputs = self.run_tensors(inputs)?;
        let decoded = self.decode_tensors(&outputs)?;
        Ok((decoded, outputs))
    }

    /// A scorer of tensors' answer from its outputs (`None` task: an error).
    pub fn decode_tensors(&self, outputs: &[TensorValue]) -> Result<task::Decoded, InferenceError> {
        let task =
            self.spec.task.as_ref().ok_or_else(|| {
                InferenceError::Run(format!("model {} has no task", self.spec.name))
            })?;
        let fit = task::Fit::new(task::Resize::Stretch, 0, 0, 0, 0);
        task.decode(
            outputs,
            &self.spec.labels,
            (0, 0),
            &fit,
            &task::Overrides::default(),
        )
        .map_err(InferenceError::Task)
    }

    /// Whether this is a raw tensor model (its spec lists tensors).
    pub fn is_raw(&self) -> bool {
        self.spec.tensors.is_some()
    }

    /// Convenience for one-off calls of a raw tensor model; workers keep a [`Session`].
    pub fn run_tensors(&self, inputs: &[TensorValue]) -> Result<Vec<TensorValue>, InferenceError> {
        self.session()?.run_tensors(inputs)
    }
}
