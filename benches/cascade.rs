//! Cascade benchmark (issue 6): on a held-out split, accuracy of edge-only, cloud-only and the edge -> cloud
//! cascade for each hardness score over a range of thresholds, with the fraction of inputs forwarded to the cloud.
//!
//! ```text
//! cargo bench --bench cascade                                   # edge-int8 -> cloud-fp32 on models/data/test
//! cargo bench --bench cascade -- --edge edge-fp32 --split calib --tolerance 0.5
//! cargo bench --bench cascade -- --max-prob 0.9,0.99,0.999 --margin 0.5,0.9 --entropy 0.05,0.5
//! scripts/bench-cascade.sh                                      # the same, built in the dev profile (fast build)
//! ```
//!
//! Every image of `<models-dir>/data/<split>/NNNN_L.png` (L = true label) goes through the library path the daemon
//! uses (`Engine::tensor_from_image` + `Session::classify`) for the cascade's edge model, the cloud model and the
//! `--compare` edge models. The cascade answers with the cloud's label when the edge prediction is *hard* and with
//! the edge's label otherwise, for three hardness scores of the edge prediction:
//!
//! * max-prob: hard when `confidence < t` (top-1 probability);
//! * margin:   hard when `margin < t` (top-1 minus top-2 probability);
//! * entropy:  hard when `entropy > t` (nats).
//!
//! Per score it prints a markdown table over the thresholds (`forwarded` = fraction of inputs sent to the cloud,
//! accuracy, difference from cloud-only in percentage points) and the operating point: the threshold of the grid
//! that forwards the fewest inputs while staying within `--tolerance` points (default 0.3) of cloud-only accuracy.
//! It also prints the exact in-sample optimum over every distinct score value (optimistic: chosen on the same split
//! it is measured on). `--split calib` runs the same on the 500 calibration digits, but there edge-int8 and
//! cloud-fp32 differ by 2 images only, so any tolerance of a few tenths of a point is met by forwarding ~1 image.
//! Progress and timings go to stderr, results to stdout. `--bench` (passed by `cargo bench`) is accepted and ignored.

use anyhow::{bail, Context, Result};
use clap::Parser;
use outpost::inference::{DecodeLimits, Engine, Prediction};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Default grids: dense where the operating points of the digit models fall (max-prob 0.6-0.8, margin 0.3-0.5,
/// entropy 0.7-1.1 nats), plus points near 1 (near 0 for entropy) because the models are confident: about half of
/// the test digits get a top-1 probability above 0.999.
const MAX_PROB: &[f32] = &[
    0.5, 0.55, 0.6, 0.625, 0.65, 0.675, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99,
    0.995, 0.998, 0.999, 0.9995, 0.9999, 0.99999,
];
const MARGIN: &[f32] = &[
    0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98,
    0.99, 0.995, 0.999, 0.9999, 0.99999,
];
const ENTROPY: &[f32] = &[
    1.5, 1.25, 1.1, 1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.15, 0.1, 0.05,
    0.02, 0.01, 0.005, 0.001, 0.0001,
];

#[derive(Parser, Debug)]
#[command(
    name = "cascade",
    about = "Edge -> cloud cascade accuracy vs fraction forwarded, per hardness score (issue 6)"
)]
struct Args {
    /// Edge model of the cascade: <models-dir>/<EDGE>.onnx with <EDGE>.spec.json beside it.
    #[arg(long, default_value = "edge-int8")]
    edge: String,
    /// Cloud model: <models-dir>/<CLOUD>.onnx with its .spec.json.
    #[arg(long, default_value = "cloud-fp32")]
    cloud: String,
    /// Other edge models whose edge-only accuracy is reported too (comma separated; "" for none).
    #[arg(long, value_delimiter = ',', default_value = "edge-fp32")]
    compare: Vec<String>,
    /// Directory holding the models and data/<split>/.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/models"))]
    models_dir: PathBuf,
    /// Split under <models-dir>/data/: test (held out, 1500 digits) or calib (500).
    #[arg(long, default_value = "test")]
    split: String,
    /// How far below cloud-only accuracy an operating point may be, in percentage points.
    #[arg(long, default_value_t = 0.3)]
    tolerance: f64,
    /// Max-prob thresholds (comma separated; default: a grid from 0.5 to 0.99999).
    #[arg(long, value_delimiter = ',')]
    max_prob: Vec<f32>,
    /// Margin thresholds (comma separated; default: a grid from 0.05 to 0.99999).
    #[arg(long, value_delimiter = ',')]
    margin: Vec<f32>,
    /// Entropy thresholds in nats (comma separated; default: a grid from 1.5 down to 0.0001).
    #[arg(long, value_delimiter = ',')]
    entropy: Vec<f32>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// One labelled image of the split.
struct Sample {
    name: String,
    label: String,
    bytes: Vec<u8>,
}

/// Every `NNNN_L.png` of `dir`, sorted by name.
fn load_split(dir: &Path) -> Result<Vec<Sample>> {
    let mut samples = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("png") {
            continue;
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .context("non-UTF-8 file name")?
            .to_string();
        let stem = name.trim_end_matches(".png");
        let Some((_, label)) = stem.rsplit_once('_') else {
            bail!("{}: expected a name like NNNN_L.png", path.display());
        };
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        samples.push(Sample {
            label: label.to_string(),
            name,
            bytes,
        });
    }
    if samples.is_empty() {
        bail!("no NNNN_L.png images in {}", dir.display());
    }
    samples.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(samples)
}

/// One model's predictions over the split.
struct Run {
    stem: String,
    preds: Vec<Prediction>,
    correct: Vec<bool>,
    load: Duration,
    infer: Duration,
}

impl Run {
    fn n_correct(&self) -> usize {
        self.correct.iter().filter(|&&c| c).count()
    }
}

fn run_model(models_dir: &Path, stem: &str, samples: &[Sample]) -> Result<Run> {
    let model = models_dir.join(format!("{stem}.onnx"));
    let spec = models_dir.join(format!("{stem}.spec.json"));
    let engine = Engine::load_files(&model, Some(&spec))
        .with_context(|| format!("loading {}", model.display()))?;
    let mut session = engine.session()?;
    let limits = DecodeLimits::default();
    let start = Instant::now();
    let mut preds = Vec::with_capacity(samples.len());
    for s in samples {
        let tensor = engine
            .tensor_from_image(&s.bytes, &limits)
            .with_context(|| format!("{stem}: {}", s.name))?;
        preds.push(
            session
                .classify(&tensor)
                .with_context(|| format!("{stem}: {}", s.name))?,
        );
    }
    let infer = start.elapsed();
    let correct = preds
        .iter()
        .zip(samples)
        .map(|(p, s)| p.label == s.label)
        .collect();
    Ok(Run {
        stem: stem.to_string(),
        preds,
        correct,
        load: engine.load_time(),
        infer,
    })
}

#[derive(Clone, Copy, Debug)]
enum Score {
    MaxProb,
    Margin,
    Entropy,
}

impl Score {
    const ALL: [Score; 3] = [Score::MaxProb, Score::Margin, Score::Entropy];

    fn name(self) -> &'static str {
        match self {
            Score::MaxProb => "max-prob",
            Score::Margin => "margin",
            Score::Entropy => "entropy",
        }
    }

    fn rule(self) -> &'static str {
        match self {
            Score::MaxProb => "forward when confidence < t",
            Score::Margin => "forward when margin < t",
            Score::Entropy => "forward when entropy > t (nats)",
        }
    }

    fn value(self, p: &Prediction) -> f32 {
        match self {
            Score::MaxProb => p.confidence,
            Score::Margin => p.margin,
            Score::Entropy => p.entropy,
        }
    }

    /// Orientation: hardness key = value for entropy, -value for the others; an input is hard when key > key(t).
    fn key(self, v: f32) -> f32 {
        match self {
            Score::Entropy => v,
            Score::MaxProb | Score::Margin => -v,
        }
    }

    fn hard(self, p: &Prediction, t: f32) -> bool {
        self.key(self.value(p)) > self.key(t)
    }
}

/// The cascade at one threshold.
#[derive(Clone, Copy, Debug)]
struct Point {
    /// `None` for "forward everything" (no threshold of the score's range does it).
    threshold: Option<f32>,
    forwarded: usize,
    correct: usize,
}

fn sweep(score: Score, thresholds: &[f32], edge: &Run, cloud: &Run) -> Vec<Point> {
    thresholds
        .iter()
        .map(|&t| {
            let (mut forwarded, mut correct) = (0, 0);
            for (i, p) in edge.preds.iter().enumerate() {
                let hard = score.hard(p, t);
                forwarded += hard as usize;
                correct += if hard {
                    cloud.correct[i]
                } else {
                    edge.correct[i]
                } as usize;
            }
            Point {
                threshold: Some(t),
                forwarded,
                correct,
            }
        })
        .collect()
}

/// Every achievable operating point of a score: inputs sorted hardest first, forwarded one group of equal score at
/// a time. The threshold of a point is the score of the first input *not* forwarded, so that the rule
/// (`confidence < t`, `entropy > t`, ...) forwards exactly that set.
fn frontier(score: Score, edge: &Run, cloud: &Run) -> Vec<Point> {
    let mut order: Vec<usize> = (0..edge.preds.len()).collect();
    let key = |i: usize| score.key(score.value(&edge.preds[i]));
    order.sort_by(|&a, &b| key(b).total_cmp(&key(a)));
    let mut correct = edge.n_correct();
    let mut points = Vec::with_capacity(order.len() + 1);
    let mut i = 0;
    loop {
        let threshold = order.get(i).map(|&j| score.value(&edge.preds[j]));
        points.push(Point {
            threshold,
            forwarded: i,
            correct,
        });
        let Some(&first) = order.get(i) else { break };
        let k = key(first);
        while i < order.len() && key(order[i]) == k {
            let j = order[i];
            correct = correct + cloud.correct[j] as usize - edge.correct[j] as usize;
            i += 1;
        }
    }
    points
}

/// Fewest forwarded among the points reaching `min_correct` (ties: the more accurate).
fn best(points: &[Point], min_correct: f64) -> Option<Point> {
    points
        .iter()
        .filter(|p| p.correct as f64 >= min_correct)
        .min_by(|a, b| {
            a.forwarded
                .cmp(&b.forwarded)
                .then(b.correct.cmp(&a.correct))
        })
        .copied()
}

fn pct(k: usize, n: usize) -> f64 {
    100.0 * k as f64 / n as f64
}

fn fmt_t(t: Option<f32>) -> String {
    t.map_or_else(|| "(all)".to_string(), |t| t.to_string())
}

fn describe(score: Score, p: &Point, n: usize, cloud_correct: usize) -> String {
    format!(
        "{} t = {}: forwards {:.2} % ({}/{}), accuracy {:.2} % ({:+.2} points vs cloud-only)",
        score.name(),
        fmt_t(p.threshold),
        pct(p.forwarded, n),
        p.forwarded,
        n,
        pct(p.correct, n),
        pct(p.correct, n) - pct(cloud_correct, n),
    )
}

fn main() -> Result<()> {
    let wall = Instant::now();
    let args = Args::parse();
    if !(args.tolerance.is_finite() && args.tolerance >= 0.0) {
        bail!("--tolerance must be a non-negative number of points");
    }
    let data_dir = args.models_dir.join("data").join(&args.split);
    let samples = load_split(&data_dir)?;
    let n = samples.len();
    eprintln!("{n} images from {}", data_dir.display());

    let mut stems = vec![args.edge.clone(), args.cloud.clone()];
    for s in &args.compare {
        if !s.is_empty() && !stems.contains(s) {
            stems.push(s.clone());
        }
    }
    let mut runs = Vec::new();
    for stem in &stems {
        let run = run_model(&args.models_dir, stem, &samples)?;
        eprintln!(
            "{stem}: load {:.1} ms, {n} images in {:.2} s ({:.0} µs/image, decode included), top-1 {:.2} %",
            run.load.as_secs_f64() * 1e3,
            run.infer.as_secs_f64(),
            run.infer.as_secs_f64() * 1e6 / n as f64,
            pct(run.n_correct(), n)
        );
        runs.push(run);
    }
    let (edge, cloud) = (&runs[0], &runs[1]);
    let cloud_correct = cloud.n_correct();
    let min_correct = cloud_correct as f64 - args.tolerance / 100.0 * n as f64 - 1e-9;

    println!(
        "# Cascade {} -> {} on data/{} (n = {n})\n",
        edge.stem, cloud.stem, args.split
    );
    let edge_only: Vec<String> = runs
        .iter()
        .filter(|r| r.stem != cloud.stem)
        .map(|r| {
            format!(
                "{} {:.2} % ({}/{n})",
                r.stem,
                pct(r.n_correct(), n),
                r.n_correct()
            )
        })
        .collect();
    println!("- edge-only: {}", edge_only.join(", "));
    println!(
        "- cloud-only: {} {:.2} % ({cloud_correct}/{n})",
        cloud.stem,
        pct(cloud_correct, n)
    );
    let count = |f: &dyn Fn(usize) -> bool| (0..n).filter(|&i| f(i)).count();
    let rescuable = count(&|i| !edge.correct[i] && cloud.correct[i]);
    println!(
        "- {} wrong and {} right: {rescuable}; {} right and {} wrong: {}; both wrong: {} \
         (oracle cascade: {:.2} % forwarding {:.2} %)",
        edge.stem,
        cloud.stem,
        edge.stem,
        cloud.stem,
        count(&|i| edge.correct[i] && !cloud.correct[i]),
        count(&|i| !edge.correct[i] && !cloud.correct[i]),
        pct(edge.n_correct() + rescuable, n),
        pct(rescuable, n)
    );
    println!(
        "- target: cascade accuracy >= {:.2} % (cloud-only - {} points, i.e. >= {} correct)",
        pct(cloud_correct, n) - args.tolerance,
        args.tolerance,
        min_correct.ceil()
    );

    let mut summary = Vec::new();
    for score in Score::ALL {
        let (given, default) = match score {
            Score::MaxProb => (&args.max_prob, MAX_PROB),
            Score::Margin => (&args.margin, MARGIN),
            Score::Entropy => (&args.entropy, ENTROPY),
        };
        let grid = if given.is_empty() {
            default
        } else {
            given.as_slice()
        };
        let points = sweep(score, grid, edge, cloud);
        println!("\n## {} ({})\n", score.name(), score.rule());
        println!("| t | forwarded | forwarded % | cascade accuracy % | vs cloud-only (points) | within {} |", args.tolerance);
        println!("|---:|---:|---:|---:|---:|:---:|");
        for p in &points {
            println!(
                "| {} | {} | {:.2} | {:.2} | {:+.2} | {} |",
                fmt_t(p.threshold),
                p.forwarded,
                pct(p.forwarded, n),
                pct(p.correct, n),
                pct(p.correct, n) - pct(cloud_correct, n),
                if p.correct as f64 >= min_correct {
                    "yes"
                } else {
                    ""
                }
            );
        }
        let grid_best = best(&points, min_correct);
        let exact_best = best(&frontier(score, edge, cloud), min_correct);
        println!();
        match &grid_best {
            Some(p) => println!(
                "operating point (grid): {}",
                describe(score, p, n, cloud_correct)
            ),
            None => {
                println!("operating point (grid): none of these thresholds is within the tolerance")
            }
        }
        if let Some(p) = &exact_best {
            println!(
                "exact optimum (in-sample, every distinct score value): {}",
                describe(score, p, n, cloud_correct)
            );
        }
        // Most accurate grid point (fewest forwarded among equals): the cascade can beat cloud-only, since the
        // edge model is right on some inputs the cloud model gets wrong.
        if let Some(p) = points.iter().max_by(|a, b| {
            a.correct
                .cmp(&b.correct)
                .then(b.forwarded.cmp(&a.forwarded))
        }) {
            println!(
                "most accurate (grid): {}",
                describe(score, p, n, cloud_correct)
            );
        }
        summary.push((score, grid_best, exact_best));
    }

    println!("\n## Summary\n");
    println!("- edge-only: {}", edge_only.join(", "));
    println!(
        "- cloud-only: {} {:.2} %",
        cloud.stem,
        pct(cloud_correct, n)
    );
    for (score, grid, exact) in &summary {
        match grid {
            Some(p) => println!("- {}", describe(*score, p, n, cloud_correct)),
            None => println!("- {}: no grid threshold within the tolerance", score.name()),
        }
        if let Some(p) = exact {
            println!(
                "  - exact in-sample: {}",
                describe(*score, p, n, cloud_correct)
            );
        }
    }
    // Across scores: fewest forwarded, then the more accurate.
    let overall = |picked: Vec<(Score, Point)>| {
        picked.into_iter().min_by(|a, b| {
            a.1.forwarded
                .cmp(&b.1.forwarded)
                .then(b.1.correct.cmp(&a.1.correct))
        })
    };
    match overall(summary.iter().filter_map(|s| Some((s.0, s.1?))).collect()) {
        Some((score, p)) => println!(
            "- **overall best (grid)**: {}",
            describe(score, &p, n, cloud_correct)
        ),
        None => println!("- overall best (grid): none within the tolerance"),
    }
    if let Some((score, p)) = overall(summary.iter().filter_map(|s| Some((s.0, s.2?))).collect()) {
        println!(
            "- overall best (exact, in-sample): {}",
            describe(score, &p, n, cloud_correct)
        );
    }
    eprintln!("total {:.1} s", wall.elapsed().as_secs_f64());
    Ok(())
}
