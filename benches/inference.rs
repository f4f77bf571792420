//! Inference benchmark (issue 2): load+optimize time and single-thread latency of each model with the library's
//! [`Engine`], printed as one JSON line per model in the shape `models/bench_ort.py` prints for onnxruntime.
//!
//! ```text
//! cargo bench --bench inference                         # every default model
//! cargo bench --bench inference -- --json edge-int8     # JSON lines only, one model
//! cargo bench --bench inference -- --seconds 5 --loads 5 --iters 1000 --warmup 50 --models-dir models
//! ```
//!
//! Each model: `--loads` full loads (parse + type + optimize + plan, as `Engine::load_time` reports it; median kept),
//! then warmup runs on golden input #0, then N timed runs on the calling thread. N is adaptive (about `--seconds`
//! of timed runs, at least 10) unless `--iters` fixes it. p50/p99 are nearest-rank, like bench_ort.py.
//! Unknown flags (cargo passes `--bench`) are ignored.

use outpost::inference::Engine;
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

/// tract inference benchmark: load time, latency percentiles and throughput per model.
#[derive(clap::Parser)]
#[command(name = "inference")]
struct Args {
    /// Print only the JSON summary.
    #[arg(long = "json")]
    json_only: bool,
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/models"))]
    models_dir: PathBuf,
    /// Seconds of timed runs per model.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Model loads timed per model.
    #[arg(long, default_value_t = 3)]
    loads: usize,
    /// Fixed number of timed runs (instead of --seconds).
    #[arg(long)]
    iters: Option<usize>,
    #[arg(long)]
    warmup: Option<usize>,
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

fn bench_model(args: &Args, version: &str, stem: &str) -> Result<String, String> {
    let model = args.models_dir.join(format!("{stem}.onnx"));
    let input = golden_input0(&args.models_dir, stem)?;

    // Load + optimize, median of `loads` (the first one also warms the file cache).
    let mut load_times = Vec::with_capacity(args.loads);
    let mut engine = None;
    for _ in 0..args.loads {
        let e = Engine::load_files(&model, None).map_err(|e| format!("{stem}: {e}"))?;
        load_times.push(e.load_time().as_secs_f64() * 1e3);
        engine = Some(e);
    }
    load_times.sort_by(f64::total_cmp);
    let load_ms = load_times[load_times.len() / 2];
    let engine = engine.expect("at least one load");
    let mut session = engine.session().map_err(|e| format!("{stem}: {e}"))?;

    // Warmup: a fixed count if asked, else about 10 % of the time budget (at least 3 runs); it also estimates the
    // per-run time that sizes N.
    let warm_start = Instant::now();
    let mut warm_runs = 0usize;
    loop {
        std::hint::black_box(session.run(&input).map_err(|e| format!("{stem}: {e}"))?);
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
        let out = session.run(&input).map_err(|e| format!("{stem}: {e}"))?;
        times_us.push(t.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(out);
    }
    let mean = times_us.iter().sum::<f64>() / times_us.len() as f64;
    times_us.sort_by(f64::total_cmp);

    // Written by hand to keep bench_ort.py's key order (serde_json's map would sort the keys).
    Ok(format!(
        "{{\"runtime\":\"tract\",\"version\":{},\"model\":{},\"load_ms\":{},\"p50_us\":{},\"p99_us\":{},\
         \"mean_us\":{},\"iters\":{}}}",
        serde_json::Value::from(version),
        serde_json::Value::from(format!("{stem}.onnx")),
        round_to(load_ms, 3),
        round_to(percentile(&times_us, 50.0), 2),
        round_to(percentile(&times_us, 99.0), 2),
        round_to(mean, 2),
        iters
    ))
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
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}
