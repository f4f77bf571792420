//! Local inference: the only module that knows tract.
//!
//! An [`Engine`] loads an ONNX model once, binds it to the batch-1 shape its [`ModelSpec`] gives, optimises it and
//! keeps one immutable plan that any number of threads share; each thread runs it through its own [`Session`]
//! (tract's per-run state), so workers never contend on a lock.
//!
//! Plans are shared across engines of the process only under a key of everything that shapes them, and every
//! engine, shared or not, is checked against its own spec before it is returned: sharing saves the build, never the
//! checks. Real-int8 files run in their QDQ form where tract's integer kernels are slow ([`Int8Mode`]), and plans
//! long enough to gain split their products over a shared executor ([`set_threads`]).

#[cfg(feature = "onnx")]
mod dequantize;
pub mod int8;
pub mod nnef;
#[cfg(feature = "onnx")]
pub mod onnx;
pub mod postprocess;
pub mod preprocess;
pub mod spec;
pub mod task;
pub mod tensor;

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tract_nnef::prelude::*;

pub use int8::{Int8Choice, Int8Form};
pub use postprocess::Prediction;
pub use preprocess::DecodeLimits;
pub use spec::ModelSpec;
pub use tensor::{Dtype, TensorData, TensorIo, TensorSpec, TensorValue};

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
    /// The request's tensors do not fit the model (names, datatypes, shapes, counts).
    #[error("{0}")]
    Tensors(String),
}

/// A model run (or load) whose blocking work stopped part way failed.
impl From<crate::blocking::Panicked> for InferenceError {
    fn from(p: crate::blocking::Panicked) -> Self {
        InferenceError::Run(p.to_string())
    }
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

/// An optimised plan with what its dry run measured. Shared between [`Engine`]s whose loads have the same
/// [`PlanKey`]; each engine still checks its own spec against it (see [`fits`]).
struct SharedPlan {
    plan: Arc<Plan>,
    /// The facts the plan was built for, kept so that a spec is compared with the plan itself, not with the key
    /// that found it.
    key: PlanKey,
    /// The input shape the plan is bound to (`key.plan_shape()`, kept so that a run allocates no shape).
    shape: Vec<usize>,
    /// Number of output values per sample, measured by the dry run that built the plan.
    output_len: usize,
    /// Parse + type + optimise + plan time of the build.
    build_time: Duration,
    /// How many quantized operators were rewritten to their QDQ form.
    dequantized_ops: usize,
    /// The executor its runs split their products over, if it was set and the plan is slow enough to gain.
    parallel: Option<tract_linalg::multithread::Executor>,
    /// What the dry run gave for each output of a raw tensor model: datatype (None when not one Outpost serves) and
    /// shape, compared with the spec by [`fits`].
    raw_outputs: OutputFacts,
}

/// Each output's datatype (None when not one Outpost serves) and shape, as a dry run gave them.
type OutputFacts = Vec<(Option<Dtype>, Vec<usize>)>;

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
    plan: Arc<SharedPlan>,
    spec: Arc<ModelSpec>,
    digest: String,
    release: Arc<(Release, String)>,
    load_time: Duration,
    /// How `engine.int8 = auto` settled this real-int8 model here (its form and both timings).
    int8: Option<Int8Choice>,
}

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

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.spec.name)
            .field("digest", &self.digest)
            .finish()
    }
}

/// Everything that shapes a plan: the model bytes (by digest) and their format, the input shape and batch it is bound
/// to, the one output it is cut to, the int8 mode and the executor setting. Two loads share a plan only when all
/// match.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PlanKey {
    digest: String,
    /// Where the digest's bytes came from: an ONNX file or tract's NNEF form of one.
    format: Format,
    /// The spec's batch-1 input shape.
    input_shape: Vec<usize>,
    output_name: String,
    /// Samples per run (the plan's input is `input_shape` with its first dimension set to this).
    batch: usize,
    /// Quantized operators rewritten to their QDQ form (run on float kernels).
    int8_as_float: bool,
    /// Executor threads and threshold in force at load (they decide whether the plan runs on the executor).
    threads: (usize, Duration),
    /// A raw tensor model's inputs and outputs (then `input_shape` and `output_name` are empty).
    io: Option<TensorIo>,
}

/// The form of a model file, told by its content ([`Format::of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Format {
    Onnx,
    /// tract's NNEF tar, compiled from an ONNX file on the operator's side ([`onnx::compile`]).
    Nnef,
}

impl Format {
    fn of(bytes: &[u8]) -> Format {
        if nnef::is_nnef(bytes) {
            Format::Nnef
        } else {
            Format::Onnx
        }
    }
}

/// Whether this build reads ONNX files (the `onnx` feature); the slim device build reads NNEF only.
pub const READS_ONNX: bool = cfg!(feature = "onnx");

/// The sentence the slim device build answers an ONNX file with.
pub const NEEDS_NNEF: &str = "this agent is the slim device build, which reads models in tract's NNEF form only, \
    and this file is ONNX: rebuild the bundle with `outpostctl bundle` (it adds each variant's NNEF form), or \
    convert the file with `outpostctl compile`";

impl PlanKey {
    fn new(
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
    fn plan_shape(&self) -> Vec<usize> {
        let mut shape = self.input_shape.clone();
        if let Some(b) = shape.first_mut() {
            *b = self.batch;
        }
        shape
    }
}

/// Plans loaded in this process; weak, so an unused model is freed.
fn loaded_plans() -> &'static std::sync::Mutex<HashMap<PlanKey, std::sync::Weak<SharedPlan>>> {
    static PLANS: std::sync::OnceLock<
        std::sync::Mutex<HashMap<PlanKey, std::sync::Weak<SharedPlan>>>,
    > = std::sync::OnceLock::new();
    PLANS.get_or_init(Default::default)
}

/// Checks a spec against a plan, whether the plan was just built or found alive in the process: a spec that does
/// not fit is refused the same way on either path, so a bundle cannot go live by reusing another load's checks.
fn fits(plan: &SharedPlan, spec: &ModelSpec) -> Result<(), InferenceError> {
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

/// How a real-int8 (QOperator) model runs; see [`dequantize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Int8Mode {
    /// Both forms timed at load on this device, the faster kept and remembered ([`int8`]).
    #[default]
    Auto,
    /// Always tract's integer kernels.
    Native,
    /// Always the QDQ form on float kernels.
    Float,
}

static INT8_MODE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Sets how engines loaded from now on run real-int8 models (process-wide, like the executor).
pub fn set_int8_mode(mode: Int8Mode) {
    let v = match mode {
        Int8Mode::Auto => 0,
        Int8Mode::Native => 1,
        Int8Mode::Float => 2,
    };
    INT8_MODE.store(v, std::sync::atomic::Ordering::Relaxed);
}

impl Int8Mode {
    /// The mode set by [`set_int8_mode`].
    pub fn current() -> Int8Mode {
        match INT8_MODE.load(std::sync::atomic::Ordering::Relaxed) {
            1 => Int8Mode::Native,
            2 => Int8Mode::Float,
            _ => Int8Mode::Auto,
        }
    }

    /// Parses the words of `engine.int8` (`auto`, `native`, `float`), for flags.
    pub fn parse(s: &str) -> Result<Int8Mode, String> {
        match s {
            "auto" => Ok(Int8Mode::Auto),
            "native" => Ok(Int8Mode::Native),
            "float" => Ok(Int8Mode::Float),
            other => Err(format!(
                "'{other}' is not an int8 mode: use auto, native or float"
            )),
        }
    }

    /// Whether a quantized model loaded in this mode is rewritten to its QDQ form.
    pub fn as_float(self) -> bool {
        match self {
            Int8Mode::Native => false,
            Int8Mode::Float => true,
            // `auto` is settled per model by timing ([`int8::choose`]), never here: a model that reaches a plan
            // key in `auto` has no quantized operators, so its forms are one.
            Int8Mode::Auto => false,
        }
    }
}

/// Whether an ONNX file holds the quantized operators the QDQ rewrite handles: the op type names are plain strings
/// in the protobuf, so a scan tells without parsing (a false positive only costs timing two equal forms).
fn has_qoperators(bytes: &[u8]) -> bool {
    [&b"QLinearConv"[..], b"QLinearMatMul"]
        .iter()
        .any(|op| bytes.windows(op.len()).any(|w| w == *op))
}

/// Whether this CPU has an int8 dot-product instruction that tract's integer kernels use. Reported (benches print
/// it), never used to choose a form: that is measured ([`int8`]).
pub fn cpu_has_fast_int8() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512vnni")
            || std::arch::is_x86_feature_detected!("avxvnni")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("dotprod")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// The shared intra-op executor when `engine.threads` > 1, its size, and the shortest run that uses it.
type Parallel = Option<(tract_linalg::multithread::Executor, usize, Duration)>;
static PARALLEL: std::sync::Mutex<Parallel> = std::sync::Mutex::new(None);

/// A plan whose single-thread run takes at least this long runs on the shared executor; shorter ones stay on the
/// calling thread. Measured (BENCHMARKS.md, issue 13): splitting made the 65 µs edge model and the 270 µs cloud
/// model 1.5-2x slower on 2 threads, and MobileNetV2 (23 ms) 1.4x faster.
const PARALLEL_MIN_RUN: Duration = Duration::from_millis(2);

/// Sets how many threads one model run may split its matrix products over, for the engines loaded from now on
/// (the agent sets it once at start). 1 runs every product on the calling thread. Only models whose run is long
/// enough to gain from it use the threads (see [`PARALLEL_MIN_RUN`]).
pub fn set_threads(n: usize) {
    set_threads_with(n, PARALLEL_MIN_RUN)
}

/// Chooses tract's kernels before it probes the CPU (once per process; every entry that reaches tract calls it).
///
/// tract 0.23.9's AMX int8 kernel (`avx512amx_mmm_i32_16x16`) crashed the process with SIGSEGV on the first
/// real-int8 run on a Sapphire Rapids-class CPU here (amx_int8 in /proc/cpuinfo), while every other kernel ran:
/// AMX is taken out of tract's kernel pool unless the operator chose the ISA set with `TRACT_CPU_ISA`.
fn init_kernels() {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        // Naming another architecture's feature is an error to tract: x86_64 only.
        #[cfg(target_arch = "x86_64")]
        if std::env::var_os("TRACT_CPU_ISA").is_none() {
            tract_linalg::knobs::TRACT_CPU_ISA.set(Some("-amx-int8,-amx-bf16".to_string()));
        }
    });
}

/// [`set_threads`] with another threshold (zero: every plan uses the threads; the benchmark's forced rows).
pub fn set_threads_with(n: usize, min_run: Duration) {
    use tract_linalg::multithread::Executor;
    init_kernels();
    let n = n.clamp(1, 256);
    let executor = (n > 1).then(|| (Executor::multithread_with_name(n, "outpost-mm"), n, min_run));
    *PARALLEL.lock().unwrap_or_else(|p| p.into_inner()) = executor;
}

fn parallel_setting() -> Parallel {
    PARALLEL.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Hands the heap memory a model load freed back to the system. Parsing, typing and optimising a model allocate
/// several times its size (the protobuf, the inference graph, the typed and the optimised graph) and free it all
/// before the plan is returned, but glibc keeps freed memory in its arenas, so without this the daemon's RSS stays
/// at the load's peak: measured on MobileNetV2 fp32 beside the edge model, 85 MiB before and 62 MiB after a trim
/// (the second model then costs 2.1x its file, not 3.8x). The workers call it too once they have been idle for a
/// second after runs (the runs' tensors and scratch buffers, freed across the decoding threads' arenas). A no-op
/// where the C library is not glibc.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes a byte count and has no preconditions; glibc locks each arena it trims, so it may
    // run while other threads allocate.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Hex SHA-256 of a model file: the identity under which results are cached and reported.
pub fn digest_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn datum(d: Dtype) -> DatumType {
    match d {
        Dtype::Fp32 => f32::datum_type(),
        Dtype::Int64 => i64::datum_type(),
        Dtype::Int32 => i32::datum_type(),
        Dtype::Uint8 => u8::datum_type(),
        Dtype::Int8 => i8::datum_type(),
    }
}

fn dtype_of(d: DatumType) -> Option<Dtype> {
    // tract computes some integer arithmetic in its symbolic dimension type; its values are INT64.
    if d == TDim::datum_type() {
        return Some(Dtype::Int64);
    }
    [
        Dtype::Fp32,
        Dtype::Int64,
        Dtype::Int32,
        Dtype::Uint8,
        Dtype::Int8,
    ]
    .into_iter()
    .find(|x| datum(*x) == d)
}

/// A tract tensor from a request's value (already checked against the spec).
fn to_tract(v: &TensorValue) -> TractResult<Tensor> {
    let shape = &v.shape;
    match &v.data {
        TensorData::Fp32(d) => Tensor::from_shape(shape, d),
        TensorData::Int64(d) => Tensor::from_shape(shape, d),
        TensorData::Int32(d) => Tensor::from_shape(shape, d),
        TensorData::Uint8(d) => Tensor::from_shape(shape, d),
        TensorData::Int8(d) => Tensor::from_shape(shape, d),
    }
}

/// An answer's value from a tract output.
fn from_tract(name: &str, t: &Tensor) -> Result<TensorValue, InferenceError> {
    let run = |e: TractError| InferenceError::Run(one_line(&e));
    let cast;
    let t = if t.datum_type() == TDim::datum_type() {
        cast = t.cast_to::<i64>().map_err(run)?;
        &*cast
    } else {
        t
    };
    let data = match dtype_of(t.datum_type()) {
        Some(Dtype::Fp32) => TensorData::Fp32(
            t.to_plain_array_view::<f32>()
                .map_err(run)?
                .iter()
                .copied()
                .collect(),
        ),
        Some(Dtype::Int64) => TensorData::Int64(
            t.to_plain_array_view::<i64>()
                .map_err(run)?
                .iter()
                .copied()
                .collect(),
        ),
        Some(Dtype::Int32) => TensorData::Int32(
            t.to_plain_array_view::<i32>()
                .map_err(run)?
                .iter()
                .copied()
                .collect(),
        ),
        Some(Dtype::Uint8) => TensorData::Uint8(
            t.to_plain_array_view::<u8>()
                .map_err(run)?
                .iter()
                .copied()
                .collect(),
        ),
        Some(Dtype::Int8) => TensorData::Int8(
            t.to_plain_array_view::<i8>()
                .map_err(run)?
                .iter()
                .copied()
                .collect(),
        ),
        None => {
            return Err(InferenceError::Run(format!(
                "output {name} is {:?}, not a datatype Outpost serves",
                t.datum_type()
            )))
        }
    };
    Ok(TensorValue {
        name: name.to_string(),
        shape: t.shape().to_vec(),
        data,
    })
}

/// Binds every symbol to the batch (tract cannot unify a symbol with a concrete input fact, so files exported with
/// a dynamic batch `N` get it bound on the whole graph first), then sets the input fact.
fn bind_input(typed: TypedModel, key: &PlanKey) -> Result<TypedModel, InferenceError> {
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

fn model_err(stage: &str, e: TractError) -> InferenceError {
    InferenceError::Model(format!("{stage}: {}", one_line(&e)))
}

/// Builds the plan for `key` from model bytes in its format, then dry-runs it once on zeros: a model that types but
/// cannot run (unsupported kernel, wrong shape) fails here, at load, not on the first request.
fn build_plan(model_bytes: &[u8], key: PlanKey) -> Result<SharedPlan, InferenceError> {
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
fn dry_run_raw(state: &mut TypedSimpleState, io: &TensorIo) -> Result<OutputFacts, InferenceError> {
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

    fn load_as(
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
    fn load_auto(
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

    fn with_int8(mut self, choice: Int8Choice) -> Engine {
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
        .map_err(InferenceError::Run)
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
        let shape = &self.engine.plan.shape;
        let expected: usize = shape.iter().product();
        if input.len() != expected {
            return Err(InferenceError::InputShape {
                expected,
                got: input.len(),
                shape: shape.clone(),
            });
        }
        let tensor =
            Tensor::from_shape(shape, input).map_err(|e| InferenceError::Run(one_line(&e)))?;
        let state = &mut self.state;
        let out = match &self.engine.plan.parallel {
            Some(executor) => {
                tract_linalg::multithread::multithread_tract_scope(executor.clone(), || {
                    state.run(tvec!(tensor.into()))
                })
            }
            None => state.run(tvec!(tensor.into())),
        }
        .map_err(|e| InferenceError::Run(one_line(&e)))?;
        let view = out[0]
            .to_plain_array_view::<f32>()
            .map_err(|e| InferenceError::Run(one_line(&e)))?;
        Ok(view.iter().copied().collect())
    }

    /// Runs a raw tensor model on one request's inputs (in the spec's order, each checked against its declaration)
    /// and returns its outputs in the spec's order.
    pub fn run_tensors(
        &mut self,
        inputs: &[TensorValue],
    ) -> Result<Vec<TensorValue>, InferenceError> {
        let io = self.engine.plan.key.io.as_ref().ok_or_else(|| {
            InferenceError::Run(format!(
                "model {} is an image classifier, not a raw tensor model",
                self.engine.spec.name
            ))
        })?;
        if inputs.len() != io.inputs.len() {
            return Err(InferenceError::Tensors(format!(
                "model {} takes {} inputs ({}), the request has {}",
                self.engine.spec.name,
                io.inputs.len(),
                io.inputs
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                inputs.len()
            )));
        }
        for (v, t) in inputs.iter().zip(&io.inputs) {
            v.check(t).map_err(InferenceError::Tensors)?;
        }
        let tensors = inputs
            .iter()
            .map(|v| to_tract(v).map(TValue::from))
            .collect::<TractResult<TVec<TValue>>>()
            .map_err(|e| InferenceError::Run(one_line(&e)))?;
        let out = self
            .state
            .run(tensors)
            .map_err(|e| InferenceError::Run(one_line(&e)))?;
        io.outputs
            .iter()
            .zip(out.iter())
            .map(|(t, o)| from_tract(&t.name, o))
            .collect()
    }

    /// Runs a task model (detector, scorer) on one preprocessed image and decodes its outputs; returns the decoded
    /// answer and the outputs it was decoded from. A model whose outputs do not fit its task is an error, never
    /// boxes.
    pub fn run_task(
        &mut self,
        input: &[f32],
        fit: &task::Fit,
        overrides: &task::Overrides,
    ) -> Result<(task::Decoded, Vec<TensorValue>), InferenceError> {
        let spec = self.engine.spec.clone();
        let task = spec.task.as_ref().ok_or_else(|| {
            InferenceError::Run(format!(
                "model {} has no task (detection, score)",
                spec.name
            ))
        })?;
        overrides.validate().map_err(InferenceError::Tensors)?;
        let expected = spec.input_len();
        if input.len() != expected {
            return Err(InferenceError::InputShape {
                expected,
                got: input.len(),
                shape: spec.input.shape.clone(),
            });
        }
        let value = TensorValue {
            name: spec.input.name.clone(),
            shape: spec.input.shape.clone(),
            data: TensorData::Fp32(input.to_vec()),
        };
        let outputs = self.run_tensors(std::slice::from_ref(&value))?;
        let (w, h) = (
            spec.preprocess.width as usize,
            spec.preprocess.height as usize,
        );
        let decoded = task
            .decode(&outputs, &spec.labels, (w, h), fit, overrides)
            .map_err(InferenceError::Run)?;
        Ok((decoded, outputs))
    }

    pub fn classify(&mut self, input: &[f32]) -> Result<Prediction, InferenceError> {
        if self.engine.batch() != 1 {
            return Err(InferenceError::Run(format!(
                "classify takes one sample; this engine runs batches of {}",
                self.engine.batch()
            )));
        }
        let out = self.run(input)?;
        if out.is_empty() || out.iter().any(|x| !x.is_finite()) {
            return Err(InferenceError::Run(
                "the model produced an empty or non-finite output".into(),
            ));
        }
        Ok(postprocess::predict(&out, &self.engine.spec, 5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "onnx")]
    fn dtypes() -> Engine {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/dtypes");
        Engine::load_files(
            &dir.join("dtypes.onnx"),
            Some(&dir.join("dtypes.spec.json")),
        )
        .unwrap()
    }

    #[cfg(feature = "onnx")]
    fn inputs(pixels: [u8; 4], offset: [i32; 4], scale: i64) -> Vec<TensorValue> {
        vec![
            TensorValue {
                name: "pixels".into(),
                shape: vec![1, 4],
                data: TensorData::Uint8(pixels.to_vec()),
            },
            TensorValue {
                name: "offset".into(),
                shape: vec![1, 4],
                data: TensorData::Int32(offset.to_vec()),
            },
            TensorValue {
                name: "scale".into(),
                shape: vec![1],
                data: TensorData::Int64(vec![scale]),
            },
        ]
    }

    #[cfg(feature = "onnx")]
    #[test]
    fn a_raw_model_runs_every_datatype_and_refuses_tensors_that_do_not_fit() {
        let e = dtypes();
        let out = e
            .run_tensors(&inputs([0, 7, 200, 255], [-5, 3, 100_000, -255], 7))
            .unwrap();
        let names: Vec<&str> = out.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["sum", "scaled", "shift", "mean", "floor"]);
        assert_eq!(out[0].data, TensorData::Int32(vec![-5, 10, 100_200, 0]));
        assert_eq!(out[1].data, TensorData::Int64(vec![-35, 70, 701_400, 0]));
        assert_eq!(out[2].data, TensorData::Int64(vec![5_000_000_007]));
        assert_eq!(out[3].data, TensorData::Fp32(vec![25_051.25]));
        assert_eq!(out[4].data, TensorData::Uint8(vec![10, 10, 200, 255]));
        // Values beyond 32 bits travel whole when no Cast is involved (see models/make_dtypes.py).
        let out = e
            .run_tensors(&inputs([0; 4], [0; 4], -9_000_000_000))
            .unwrap();
        assert_eq!(out[2].data, TensorData::Int64(vec![-4_000_000_000]));
        let mut wrong = inputs([0; 4], [0; 4], 1);
        wrong[2].data = TensorData::Int32(vec![1]);
        assert!(
            matches!(e.run_tensors(&wrong), Err(InferenceError::Tensors(m)) if m.contains("INT32"))
        );
        assert!(matches!(
            e.run_tensors(&wrong[..2]),
            Err(InferenceError::Tensors(_))
        ));
    }

    /// A raw tensor model's NNEF form keeps its inputs and outputs in the spec's order and answers as its ONNX form,
    /// except where tract 0.23.9's NNEF writer loses an INT64 constant beyond 32 bits (see [`onnx::compile`]): the
    /// datatype model's `shift` adds 5,000,000,000. This asserts that loss too, so a tract that fixes it shows here.
    #[cfg(feature = "onnx")]
    #[test]
    fn a_raw_model_compiles_to_nnef_and_answers_the_same() {
        let onnx = dtypes();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/dtypes");
        let bytes = std::fs::read(dir.join("dtypes.onnx")).unwrap();
        let compiled = onnx::compile(&bytes, onnx.spec(), onnx::NnefForm::Kernels).unwrap();
        let nnef = Engine::load(&compiled.bytes, onnx.spec().clone()).unwrap();
        for case in [
            inputs([0, 7, 200, 255], [-5, 3, 100_000, -255], 7),
            inputs([1, 2, 3, 4], [0; 4], -9_000_000_000),
        ] {
            let (a, b) = (
                nnef.run_tensors(&case).unwrap(),
                onnx.run_tensors(&case).unwrap(),
            );
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(&b) {
                if x.name == "shift" {
                    assert_ne!(
                        x, y,
                        "tract's NNEF writer keeps INT64 literals now: drop the workaround note"
                    );
                } else {
                    assert_eq!(x, y);
                }
            }
        }
        let mut renamed = onnx.spec().clone();
        if let Some(io) = renamed.tensors.as_mut() {
            io.inputs.swap(0, 1);
        }
        let err = Engine::load(&compiled.bytes, renamed)
            .unwrap_err()
            .to_string();
        assert!(err.contains("inputs are"), "{err}");
    }

    /// The slim build's embedded NNEF forms are what compiling the built-in ONNX file gives with this tract (run
    /// `outpostctl compile --model models/edge-int8.onnx [--form qdq] --out models/edge-int8[-qdq].nnef.tar` when
    /// this fails), and answer as it does.
    #[cfg(feature = "onnx")]
    #[test]
    fn the_embedded_nnef_forms_are_current() {
        let spec: ModelSpec = serde_json::from_str(BUILTIN_SPEC).unwrap();
        for (bytes, form, int8) in [
            (BUILTIN_NNEF, onnx::NnefForm::Kernels, Int8Mode::Native),
            (BUILTIN_NNEF_QDQ, onnx::NnefForm::Qdq, Int8Mode::Float),
        ] {
            let fresh = onnx::compile(BUILTIN_ONNX, &spec, form).unwrap();
            assert!(
                fresh.bytes == bytes,
                "models/edge-int8*.nnef.tar are stale ({form:?})"
            );
            let a = Engine::load(bytes, spec.clone()).unwrap();
            let b = Engine::load_int8(BUILTIN_ONNX, spec.clone(), int8).unwrap();
            let input = vec![0.25; spec.input_len()];
            assert_eq!(a.run(&input).unwrap(), b.run(&input).unwrap());
        }
    }

    /// The slim build answers an ONNX file with the sentence that says what to do, and serves the built-in model
    /// from its embedded NNEF form.
    #[cfg(not(feature = "onnx"))]
    #[test]
    fn the_slim_build_refuses_onnx_and_serves_its_builtin_nnef_form() {
        let spec: ModelSpec = serde_json::from_str(BUILTIN_SPEC).unwrap();
        let onnx =
            std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/edge-int8.onnx"))
                .unwrap();
        let err = Engine::load(&onnx, spec.clone()).unwrap_err().to_string();
        assert!(err.contains(NEEDS_NNEF), "{err}");
        let e = Engine::load(builtin_model(), spec).unwrap();
        assert_eq!(e.run(&vec![0.0; e.spec().input_len()]).unwrap().len(), 10);
    }

    /// The NNEF version rule, and the pinned tract version against the lock file.
    #[test]
    fn nnef_from_another_tract_minor_is_refused_with_a_sentence() {
        assert!(nnef::readable(nnef::TRACT_VERSION).is_ok());
        assert!(nnef::readable("0.23.1").is_ok());
        let err = nnef::readable("0.24.0").unwrap_err();
        assert!(
            err.contains("tract 0.24.0") && err.contains("rebuild the bundle"),
            "{err}"
        );
        assert!(nnef::readable("garbage").is_err());
        let lock = include_str!("../../Cargo.lock");
        let pinned = format!(
            "name = \"tract-core\"\nversion = \"{}\"",
            nnef::TRACT_VERSION
        );
        assert!(
            lock.contains(&pinned),
            "nnef::TRACT_VERSION is not Cargo.lock's tract-core"
        );
    }
}
