//! Process-wide engine settings, set once at start before the first model loads: how real-int8 models run
//! ([`Int8Mode`]), how many threads one run may split its products over, and tract's kernel choice. They are
//! globals because tract's executor and kernels are; every engine loaded afterwards follows them.

use std::time::Duration;

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

/// A word that is not an `engine.int8` mode (a flag's value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not an int8 mode: use auto, native or float")]
pub struct UnknownInt8Mode(String);

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
    pub fn parse(s: &str) -> Result<Int8Mode, UnknownInt8Mode> {
        match s {
            "auto" => Ok(Int8Mode::Auto),
            "native" => Ok(Int8Mode::Native),
            "float" => Ok(Int8Mode::Float),
            other => Err(UnknownInt8Mode(other.to_string())),
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
pub(super) fn has_qoperators(bytes: &[u8]) -> bool {
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
pub(super) type Parallel = Option<(tract_linalg::multithread::Executor, usize, Duration)>;
static PARALLEL: std::sync::Mutex<Parallel> = std::sync::Mutex::new(None);

/// A plan whose single-thread run takes at least this long runs on the shared executor; shorter ones stay on the
/// calling thread. Measured (BENCHMARKS.md, issue 13): splitting made the 65 µs edge model and the 270 µs cloud
/// model 1.5-2x slower on 2 threads, and MobileNetV2 (23 ms) 1.4x faster.
pub(super) const PARALLEL_MIN_RUN: Duration = Duration::from_millis(2);

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
pub(super) fn init_kernels() {
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

pub(super) fn parallel_setting() -> Parallel {
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
