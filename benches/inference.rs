//! Inference benchmark (issues 2 and 13): tract through the library's [`Engine`], with each lever tract offers,
//! printed as JSON lines in the shape `models/bench_ort.py` prints for onnxruntime (`scripts/bench.sh` joins both
//! into one table).
//!
//! ```text
//! cargo bench --bench inference                                   # every default model, all levers
//! cargo bench --bench inference -- --json edge-int8               # JSON lines only, one model
//! cargo bench --bench inference -- --threads 1,2,4 --batch 8 --seconds 5 --loads 5 edge-fp32
//! ```
//!
//! Per model, the rows (`lever`):
//! - `onnx`: cold load from the ONNX file (parse + type + optimise + plan, median of `--loads` fresh loads, no plan
//!   shared between them) and the first answer after it (`first_ms`), then latency on 1 thread;
//! - for real-int8 files, `int8=auto (<form>)` instead of `onnx` (the engine as a device loads it: both forms timed at
//!   load, the faster kept), then `int8=native` (tract's integer kernels) and `int8=float` (the QDQ rewrite on float
//!   kernels) forced;
//! - `nnef`: the same from tract's NNEF form of the model (made once beforehand, not timed), checked to give the
//!   ONNX plan's output;
//! - `threads=N` for each N of `--threads` above 1: latency with `engine.threads = N` (the engine runs a plan on
//!   tract's multithreaded executor only when its single-thread run is long enough to gain), and `threads=N forced`
//!   (every plan on the executor);
//! - `batch=B`: a plan for B samples, latency per run divided by B (per-sample cost).
//!
//! Latency: warmup on golden input #0, then about `--seconds` of timed runs (at least 10) unless `--iters` fixes
//! it; p50/p99 nearest rank, like bench_ort.py. Unknown flags (cargo passes `--bench`) are ignored.

use outpost::inference::{self, Engine, ModelSpec, Session};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const DEFAULT_MODELS: &[&str] = &[
    "edge-fp32",
    "edge-qdq",
    "edge-int8",
    "cloud-fp32",
    "mobilenetv2-fp32",
    "mobilenetv2-int8",
];
const MIN_ITERS: usize = 10;
const MAX_ITERS: usize = 200_000;

/// tract inference benchmark: cold load, latency percentiles, threads, batching and NNEF per model.
#[derive(clap::Parser)]
#[command(name = "inference")]
struct Args {
    /// Print only the JSON lines.
    #[arg(long = "json")]
    json_only: bool,
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/models"))]
    models_dir: PathBuf,
    /// Seconds of timed runs per model and lever.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Cold loads timed per model and format.
    #[arg(long, default_value_t = 3)]
    loads: usize,
    /// Fixed number of timed runs (instead of --seconds).
    #[arg(long)]
    iters: Option<usize>,
    #[arg(long)]
    warmup: Option<usize>,
    /// Executor sizes to time, comma separated (1 is always timed).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// Batch size of the batching lever; 0 or 1 skips it.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Skip the NNEF lever.
    #[arg(long)]
    no_nnef: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
    /// Model stems under --models-dir (default: all the committed models).
    stems: Vec<String>,
}

fn parse_args() -> Args {
    let mut args = <Args as clap::Parser>::parse();
    if !args.seconds.is_finite() || args.seconds < 0.0 {
        eprintln!("error: --seconds takes a number of seconds, 0 or more");
        std::process::exit(2);
    }
    args.loads = args.loads.max(1);
    args.iters = args.iters.map(|n| n.max(1));
    args.stems = args
        .stems
        .iter()
        .map(|s| s.trim_end_matches(".onnx").to_string())
        .collect();
    if args.stems.is_empty() {
        args.stems = DEFAULT_MODELS.iter().map(|s| s.to_string()).collect();
    }
    args
}

/// The tract version actually linked, read from Cargo.lock (falls back to the requirement in Cargo.toml).
fn tract_version() -> String {
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock");
    if let Ok(text) = std::fs::read_to_string(lock) {
        let mut lines = text.lines();
        while let Some(l) = lines.next() {
            if l.trim() == "name = \"tract-onnx\"" {
                if let Some(v) = lines
                    .next()
                    .and_then(|v| v.trim().strip_prefix("version = "))
                {
                    return v.trim_matches('"').to_string();
                }
            }
        }
    }
    "0.23".to_string()
}

/// Golden input #0 of `models/<stem>.golden.json` (raw little-endian f32 in the `.golden.bin` beside it).
fn golden_input0(dir: &Path, stem: &str) -> Result<Vec<f32>, String> {
    let json_path = dir.join(format!("{stem}.golden.json"));
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&json_path).map_err(|e| format!("{}: {e}", json_path.display()))?,
    )
    .map_err(|e| format!("{}: {e}", json_path.display()))?;
    let input_file = json["input_file"]
        .as_str()
        .ok_or_else(|| format!("{}: no input_file", json_path.display()))?;
    let n: usize = json["input_shape"]
        .as_array()
        .ok_or_else(|| format!("{}: no input_shape", json_path.display()))?
        .iter()
        .map(|d| d.as_u64().unwrap_or(0) as usize)
        .product();
    let bin_path = dir.join(input_file);
    let raw = std::fs::read(&bin_path).map_err(|e| format!("{}: {e}", bin_path.display()))?;
    if n == 0 || raw.len() < 4 * n {
        return Err(format!(
            "{}: {} bytes, need {} for case 0",
            bin_path.display(),
            raw.len(),
            4 * n
        ));
    }
    Ok(raw[..4 * n]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// Nearest-rank percentile of an ascending slice (same rule as bench_ort.py).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let k = ((q / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[k]
}

fn round_to(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median cold load and load-to-first-answer (ms) over `loads` fresh loads; each engine is dropped before the next
/// load, so no plan is shared between them.
fn cold_loads(
    loads: usize,
    input: &[f32],
    load: impl Fn() -> Result<Engine, String>,
) -> Result<(f64, f64, Engine), String> {
    let mut load_ms = Vec::new();
    let mut first_ms = Vec::new();
    let mut last = None;
    for _ in 0..loads {
        drop(last.take());
        let t = Instant::now();
        let e = load()?;
        let loaded = t.elapsed();
        e.run(input).map_err(|e| e.to_string())?;
        first_ms.push(t.elapsed().as_secs_f64() * 1e3);
        load_ms.push(loaded.as_secs_f64() * 1e3);
        last = Some(e);
    }
    Ok((median(load_ms), median(first_ms), last.expect("loads >= 1")))
}

struct Latency {
    p50: f64,
    p99: f64,
    mean: f64,
    iters: usize,
}

/// Warmup (a fixed count if asked, else about 10 % of the budget, at least 3 runs, which also sizes N), then N
/// timed runs on the calling thread.
fn latency(args: &Args, session: &mut Session, input: &[f32]) -> Result<Latency, String> {
    let warm_start = Instant::now();
    let mut warm_runs = 0usize;
    loop {
        std::hint::black_box(session.run(input).map_err(|e| e.to_string())?);
        warm_runs += 1;
        let done = match args.warmup {
            Some(w) => warm_runs >= w.max(1),
            None => {
                warm_runs >= 3
                    && warm_start.elapsed() >= Duration::from_secs_f64(args.seconds * 0.1)
            }
        };
        if done {
            break;
        }
    }
    let per_run = warm_start.elapsed().as_secs_f64() / warm_runs as f64;
    let iters = args.iters.unwrap_or_else(|| {
        ((args.seconds / per_run.max(1e-9)) as usize).clamp(MIN_ITERS, MAX_ITERS)
    });
    let mut times_us = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        let out = session.run(input).map_err(|e| e.to_string())?;
        times_us.push(t.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(out);
    }
    let mean = times_us.iter().sum::<f64>() / times_us.len() as f64;
    times_us.sort_by(f64::total_cmp);
    Ok(Latency {
        p50: percentile(&times_us, 50.0),
        p99: percentile(&times_us, 99.0),
        mean,
        iters,
    })
}

/// One JSON line, keys in bench_ort.py's order (serde_json's map would sort them).
#[allow(clippy::too_many_arguments)]
fn line(
    version: &str,
    stem: &str,
    lever: &str,
    threads: usize,
    batch: usize,
    load: Option<(f64, f64)>,
    lat: &Latency,
) -> String {
    let per_sample = |x: f64| round_to(x / batch as f64, 2);
    format!(
        "{{\"runtime\":\"tract\",\"version\":{},\"model\":{},\"lever\":{},\"threads\":{threads},\"batch\":{batch},\
         \"load_ms\":{},\"first_ms\":{},\"p50_us\":{},\"p99_us\":{},\"mean_us\":{},\"iters\":{}}}",
        serde_json::Value::from(version),
        serde_json::Value::from(format!("{stem}.onnx")),
        serde_json::Value::from(lever),
        load.map_or("null".into(), |l| round_to(l.0, 3).to_string()),
        load.map_or("null".into(), |l| round_to(l.1, 3).to_string()),
        per_sample(lat.p50),
        per_sample(lat.p99),
        per_sample(lat.mean),
        lat.iters
    )
}

/// A cold-load row: `--loads` fresh loads timed, then the last engine's single-thread latency. Returns the row and
/// the engine.
fn cold_row(
    args: &Args,
    version: &str,
    stem: &str,
    lever: &str,
    input: &[f32],
    load: impl Fn() -> Result<Engine, String>,
) -> Result<(String, Engine), String> {
    let (load_ms, first_ms, engine) = cold_loads(args.loads, input, load)?;
    let mut session = engine.session().map_err(|e| e.to_string())?;
    let lat = latency(args, &mut session, input)?;
    let row = line(version, stem, lever, 1, 1, Some((load_ms, first_ms)), &lat);
    Ok((row, engine))
}

fn bench_model(args: &Args, version: &str, stem: &str) -> Result<Vec<String>, String> {
    let model = args.models_dir.join(format!("{stem}.onnx"));
    let spec_path = ModelSpec::default_path_for(&model);
    let spec = ModelSpec::from_file(&spec_path).map_err(|e| e.to_string())?;
    let bytes = std::fs::read(&model).map_err(|e| format!("{}: {e}", model.display()))?;
    let input = golden_input0(&args.models_dir, stem)?;
    let mut lines = Vec::new();
    inference::set_threads(1);

    // A real-int8 file has quantized operators for the QDQ rewrite to turn into float ones.
    let dequantized = Engine::load_int8(&bytes, spec.clone(), inference::Int8Mode::Float)
        .map_err(|e| e.to_string())?
        .dequantized_ops();
    // The engine as the device loads it (`engine.int8 = auto` on a real-int8 file: both forms timed at load, the
    // faster kept; its cold load includes that timing the first time, and later loads reuse the choice).
    let (row, engine) = cold_row(args, version, stem, "onnx", &input, || {
        Engine::load(&bytes, spec.clone()).map_err(|e| e.to_string())
    })?;
    let row = match engine.int8_choice() {
        Some(c) => row.replace(
            "\"lever\":\"onnx\"",
            &format!(
                "\"lever\":\"int8=auto ({})\"",
                match c.chosen {
                    inference::Int8Form::Native => "native",
                    inference::Int8Form::Float => "float",
                }
            ),
        ),
        None => row,
    };
    lines.push(row);
    let reference = engine.run(&input).map_err(|e| e.to_string())?;
    drop(engine);
    // Each thread count: the engine's own choice (only plans slow enough to gain use the threads) and forced (every
    // plan uses them). Fresh loads, as the setting is read at load.
    for &t in args.threads.iter().filter(|&&t| t > 1) {
        for (lever, min_run) in [
            (format!("threads={t}"), None),
            (format!("threads={t} forced"), Some(Duration::ZERO)),
        ] {
            match min_run {
                Some(m) => inference::set_threads_with(t, m),
                None => inference::set_threads(t),
            }
            let engine = Engine::load(&bytes, spec.clone()).map_err(|e| e.to_string())?;
            let mut session = engine.session().map_err(|e| e.to_string())?;
            let lat = latency(args, &mut session, &input)?;
            lines.push(line(version, stem, &lever, t, 1, None, &lat));
        }
    }
    inference::set_threads(1);

    if dequantized > 0 {
        // Both forms forced, beside `auto`'s row: what it chose between.
        for (lever, mode) in [
            ("int8=native", inference::Int8Mode::Native),
            ("int8=float", inference::Int8Mode::Float),
        ] {
            let (row, _) = cold_row(args, version, stem, lever, &input, || {
                Engine::load_int8(&bytes, spec.clone(), mode).map_err(|e| e.to_string())
            })?;
            lines.push(row);
        }
    }

    // The NNEF form the device would keep of this file under the process's int8 mode (what bundles carry).
    let nnef = if args.no_nnef {
        None
    } else {
        let form = if dequantized > 0 {
            inference::onnx::NnefForm::Qdq
        } else {
            inference::onnx::NnefForm::Kernels
        };
        match inference::onnx::compile(&bytes, &spec, form) {
            Ok(n) => Some(n.bytes),
            Err(e) => {
                eprintln!("{stem}: no NNEF lever: {e}");
                None
            }
        }
    };
    if let Some(nnef) = nnef {
        let (row, engine) = cold_row(args, version, stem, "nnef", &input, || {
            Engine::load(&nnef, spec.clone()).map_err(|e| e.to_string())
        })?;
        let out = engine.run(&input).map_err(|e| e.to_string())?;
        let worst = out
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        if out.len() != reference.len() || worst > 1e-3 {
            return Err(format!(
                "{stem}: the NNEF plan's output differs from the ONNX plan's (max |diff| {worst})"
            ));
        }
        lines.push(row);
    }

    if args.batch > 1 {
        let b = args.batch;
        let engine = Engine::load_batched(&bytes, spec.clone(), b).map_err(|e| e.to_string())?;
        let batch_input: Vec<f32> = (0..b).flat_map(|_| input.iter().copied()).collect();
        let mut session = engine.session().map_err(|e| e.to_string())?;
        let out = session.run(&batch_input).map_err(|e| e.to_string())?;
        if out.len() != b * reference.len() {
            return Err(format!("{stem}: batch of {b} gave {} values", out.len()));
        }
        let lat = latency(args, &mut session, &batch_input)?;
        lines.push(line(version, stem, &format!("batch={b}"), 1, b, None, &lat));
    }
    Ok(lines)
}

fn main() {
    let args = parse_args();
    let version = tract_version();
    let mut failed = false;
    for stem in &args.stems {
        if !args.json_only {
            eprintln!("tract {version}: benchmarking {stem} ...");
        }
        match bench_model(&args, &version, stem) {
            Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
            Err(e) => {
                eprintln!("error: {stem}: {e}");
                failed = true;
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}
