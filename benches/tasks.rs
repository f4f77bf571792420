//! Task models, the forward budget and drift (issue 20), in one run:
//!
//! 1. Detection latency: for each detector, p50/p99 of the model alone (`Session::run_tensors` on a preprocessed
//!    input), of the decoder + NMS alone (`Task::decode` on those outputs) and of the whole `Session::run_task`
//!    (the input copied into a tensor, the model, the decoder), in process, on one thread, measured in rounds of one
//!    call of each so that drift of the machine falls on all alike. Beside them onnxruntime on the same model and the
//!    same input bytes (`models/bench_det_ort.py`, one intra-op thread, run by this bench as a subprocess right after
//!    the rounds of its model), and the largest |difference| between onnxruntime's and tract's outputs.
//! 2. The detection cascade on the 200 test canvases (`models/data/det/test`): mAP@0.5 of the edge detector, the cloud
//!    detector and the cascade through a forward budget (`forward::budget::Budget`, 60 s window, inputs 10 ms apart in
//!    a fixed order, bar 0.0 on the edge's hardness; a forwarded input is answered by the cloud detector) at several
//!    `max_fraction`s.
//! 3. The digit classifiers under drift: edge-int8, the cloud model(s), the cascade without a budget (forward when
//!    max-prob < 0.9, i.e. hardness 1 - max-prob > 0.1) and with a budget of `max_fraction` 0.1 (bar 0.1), on the
//!    shifted stream (`models/data/shifted/digits.bin`) and the clean test PNGs, over all inputs and over those after
//!    the first 500.
//!
//! ```text
//! cargo bench --bench tasks                       # 2 s of rounds per latency measurement
//! cargo bench --bench tasks -- --seconds 5
//! OUTPOST_BENCH_PYTHON=/path/to/python cargo bench --bench tasks    # default /tmp/mvenv/bin/python
//! ```
//!
//! mAP is VOC all-point AP at IoU 0.5, averaged over the 10 classes: per class, detections of all images sorted by
//! score; each is a true positive when the ground-truth box of its image and class it overlaps most has IoU >= 0.5
//! and was not matched yet (the rule of `models/make_detectors.py`). The detections scored are the decoder's with
//! `score_threshold` 0.05 and `max_detections` 100 (call overrides) so that the precision-recall curve is complete;
//! the edge's hardness does not depend on the override (it is read from the spec's uncertain band). The column "at
//! the spec's threshold" scores only the boxes the daemon would answer.
//! p50/p99 nearest rank. Unknown flags (cargo passes `--bench`) are ignored.

use outpost::forward::budget::{Budget, BudgetLimits, Decision};
use outpost::inference::task::{iou, Detections, Overrides, TaskAnswer};
use outpost::inference::{preprocess, DecodeLimits, Engine, TensorData, TensorValue};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

fn p(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let seconds: f64 = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    println!(
        "machine: {} cores, CPU {cpu}; int8 dot products (tract's integer kernels run): {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        outpost::inference::cpu_has_fast_int8()
    );
    println!();
    latency(seconds);
    println!();
    detection_cascade();
    println!();
    drift();
}

// ---------------------------------------------------------------------------------------------------------------
// 1. Detection latency

/// (row name, model file, spec file, image) under `models/`.
const DETECTORS: &[(&str, &str, &str, &str)] = &[
    (
        "det-edge-fp32",
        "det/det-edge-fp32.onnx",
        "det/det-edge-fp32.spec.json",
        "data/det/test/0000.png",
    ),
    (
        "det-edge-int8",
        "det/det-edge-int8.onnx",
        "det/det-edge-int8.spec.json",
        "data/det/test/0000.png",
    ),
    (
        "det-cloud-fp32",
        "det/det-cloud-fp32.onnx",
        "det/det-cloud-fp32.spec.json",
        "data/det/test/0000.png",
    ),
    (
        "blazeface-128",
        "blazeface/blazeface-128.onnx",
        "blazeface/blazeface-128.spec.json",
        "blazeface/astronaut.png",
    ),
];

/// onnxruntime's figures for one model and input, or why there are none.
struct Ort {
    p50: f64,
    p99: f64,
    runs: u64,
    version: String,
    outputs: Vec<TensorValue>,
}

fn python() -> String {
    std::env::var("OUTPOST_BENCH_PYTHON").unwrap_or_else(|_| "/tmp/mvenv/bin/python".into())
}

/// Runs `models/bench_det_ort.py` on `model` with `input` (the tensor tract ran on) for `seconds`.
fn ort(model: &Path, input: &TensorValue, seconds: f64) -> Result<Ort, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (x, y) = (dir.path().join("x.bin"), dir.path().join("y.bin"));
    let TensorData::Fp32(v) = &input.data else {
        return Err("input is not FP32".into());
    };
    let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
    std::fs::write(&x, bytes).map_err(|e| e.to_string())?;
    let shape = input
        .shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let py = python();
    let out = Command::new(&py)
        .arg(models_dir().join("bench_det_ort.py"))
        .arg("--model")
        .arg(model)
        .arg("--input")
        .arg(&x)
        .args(["--name", &input.name, "--shape", &shape])
        .args(["--seconds", &seconds.to_string()])
        .arg("--outputs")
        .arg(&y)
        .output()
        .map_err(|e| format!("no Python at {py} ({e})"))?;
    let line = String::from_utf8_lossy(&out.stdout);
    let j: serde_json::Value = serde_json::from_str(line.trim()).map_err(|_| {
        format!(
            "bench_det_ort.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("no output")
        )
    })?;
    if let Some(e) = j["error"].as_str() {
        return Err(format!("{py}: {e}"));
    }
    let raw = std::fs::read(&y).map_err(|e| e.to_string())?;
    let floats: Vec<f32> = raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let mut outputs = Vec::new();
    let mut at = 0;
    for o in j["outputs"].as_array().cloned().unwrap_or_default() {
        let shape: Vec<usize> = o["shape"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|d| d.as_u64().map(|d| d as usize))
            .collect();
        let n: usize = shape.iter().product();
        let data = floats.get(at..at + n).ok_or("short outputs file")?.to_vec();
        at += n;
        outputs.push(TensorValue {
            name: o["name"].as_str().unwrap_or_default().to_string(),
            shape,
            data: TensorData::Fp32(data),
        });
    }
    Ok(Ort {
        p50: j["p50_us"].as_f64().unwrap_or(f64::NAN),
        p99: j["p99_us"].as_f64().unwrap_or(f64::NAN),
        runs: j["runs"].as_u64().unwrap_or(0),
        version: j["version"].as_str().unwrap_or("?").to_string(),
        outputs,
    })
}

fn latency(seconds: f64) {
    println!("### Detection latency (µs, one thread; rounds of model / decode / run_task)");
    println!();
    println!(
        "| model | decoder | model alone p50 / p99 | decode + NMS p50 / p99 | run_task p50 / p99 | \
         decode share of run_task (p50) | boxes | onnxruntime p50 / p99 | ORT p50 / tract model p50 | \
         max abs diff ORT vs tract (max abs output) | rounds |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut ort_version = None;
    for &(name, model, spec, image) in DETECTORS {
        let dir = models_dir();
        let engine = Engine::load_files(&dir.join(model), Some(&dir.join(spec))).unwrap();
        let spec = engine.spec().clone();
        let task = engine.task().unwrap().clone();
        let png = std::fs::read(dir.join(image)).unwrap();
        let (tensor, fit) = engine
            .task_input_from_image(&png, &DecodeLimits::default())
            .unwrap();
        let input = TensorValue {
            name: spec.input.name.clone(),
            shape: spec.input.shape.clone(),
            data: TensorData::Fp32(tensor.clone()),
        };
        let size = (
            spec.preprocess.width as usize,
            spec.preprocess.height as usize,
        );
        let over = Overrides::default();
        let mut session = engine.session().unwrap();
        let outputs = session.run_tensors(std::slice::from_ref(&input)).unwrap();
        let want = task
            .decode(&outputs, &spec.labels, size, &fit, &over)
            .unwrap();
        let boxes = match &want.answer {
            TaskAnswer::Detections(d) => d.detections.len(),
            _ => 0,
        };
        for _ in 0..20 {
            std::hint::black_box(session.run_tensors(std::slice::from_ref(&input)).unwrap());
            let (got, _) = session.run_task(&tensor, &fit, &over).unwrap();
            assert_eq!(got, want, "{name}: run_task answers as the model + decode");
        }
        let mut times: [Vec<f64>; 3] = Default::default();
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < seconds * 3.0 {
            let t = Instant::now();
            let out = session.run_tensors(std::slice::from_ref(&input)).unwrap();
            times[0].push(t.elapsed().as_secs_f64() * 1e6);
            std::hint::black_box(&out);
            let t = Instant::now();
            let d = task
                .decode(&outputs, &spec.labels, size, &fit, &over)
                .unwrap();
            times[1].push(t.elapsed().as_secs_f64() * 1e6);
            std::hint::black_box(&d);
            let t = Instant::now();
            let r = session.run_task(&tensor, &fit, &over).unwrap();
            times[2].push(t.elapsed().as_secs_f64() * 1e6);
            std::hint::black_box(&r);
        }
        for t in times.iter_mut() {
            t.sort_by(f64::total_cmp);
        }
        let pp = |t: &[f64]| format!("{:.1} / {:.1}", p(t, 0.5), p(t, 0.99));
        let (ort_cols, ratio, diff) = match ort(&dir.join(model), &input, seconds) {
            Ok(o) => {
                ort_version = Some(o.version.clone());
                let mut worst = 0f64;
                let mut scale = 0f64;
                let mut missing = Vec::new();
                for t in &outputs {
                    match o.outputs.iter().find(|x| x.name == t.name) {
                        Some(x) => {
                            worst = worst.max(t.max_abs_diff(x));
                            scale = t.data.as_f64().iter().fold(scale, |m, v| m.max(v.abs()));
                        }
                        None => missing.push(t.name.clone()),
                    }
                }
                let diff = if missing.is_empty() {
                    format!("{worst:.2e} ({scale:.3})")
                } else {
                    format!("ORT lacks {}", missing.join(", "))
                };
                (
                    format!("{:.1} / {:.1} ({} runs)", o.p50, o.p99, o.runs),
                    format!("{:.2}", o.p50 / p(&times[0], 0.5)),
                    diff,
                )
            }
            Err(e) => (e, "-".into(), "-".into()),
        };
        println!(
            "| {name} | {} | {} | {} | {} | {:.1} % | {boxes} | {ort_cols} | {ratio} | {diff} | {} |",
            match &task {
                outpost::inference::task::Task::Detection(d) => d.decoder.name(),
                _ => "-",
            },
            pp(&times[0]),
            pp(&times[1]),
            pp(&times[2]),
            100.0 * p(&times[1], 0.5) / p(&times[2], 0.5),
            times[0].len(),
        );
        if engine.dequantized_ops() > 0 {
            eprintln!(
                "{name}: {} quantized operators run on float kernels",
                engine.dequantized_ops()
            );
        }
    }
    if let Some(v) = ort_version {
        println!();
        println!("onnxruntime {v}, `{}`", python());
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 2. The detection cascade

/// One ground-truth object: box and class.
type Truth = Vec<([f32; 4], u32)>;

/// The test canvases in name order, with their ground truth.
fn det_test() -> Vec<(String, Vec<u8>, Truth)> {
    let dir = models_dir().join("data/det/test");
    let labels: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("labels.json")).unwrap()).unwrap();
    let mut names: Vec<String> = labels.as_object().unwrap().keys().cloned().collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let truth = labels[&n]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| {
                    let b: Vec<f32> = o["box"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_f64().unwrap() as f32)
                        .collect();
                    (
                        [b[0], b[1], b[2], b[3]],
                        o["label"].as_u64().unwrap() as u32,
                    )
                })
                .collect();
            let png = std::fs::read(dir.join(&n)).unwrap();
            (n, png, truth)
        })
        .collect()
}

/// VOC 2010+ all-point AP of one class from its detections' true-positive flags (sorted by score) and the number
/// of ground-truth objects.
fn voc_ap(tp: &[bool], n_truth: usize) -> f64 {
    let mut rec = vec![0.0];
    let mut prec = vec![0.0];
    let mut hits = 0usize;
    for (k, &t) in tp.iter().enumerate() {
        hits += t as usize;
        rec.push(hits as f64 / n_truth as f64);
        prec.push(hits as f64 / (k + 1) as f64);
    }
    rec.push(1.0);
    prec.push(0.0);
    for i in (0..prec.len() - 1).rev() {
        prec[i] = prec[i].max(prec[i + 1]);
    }
    (1..rec.len())
        .filter(|&i| rec[i] != rec[i - 1])
        .map(|i| (rec[i] - rec[i - 1]) * prec[i])
        .sum()
}

/// mAP@0.5 over the classes with ground truth, of `answers[i]` for image `i`, counting boxes scoring `>= min_score`.
fn map50(answers: &[&Detections], truth: &[Truth], classes: u32, min_score: f32) -> f64 {
    let mut aps = Vec::new();
    for c in 0..classes {
        let n_truth: usize = truth
            .iter()
            .map(|t| t.iter().filter(|o| o.1 == c).count())
            .sum();
        if n_truth == 0 {
            continue;
        }
        let mut cands: Vec<(f32, usize, [f32; 4])> = answers
            .iter()
            .enumerate()
            .flat_map(|(i, a)| {
                a.detections
                    .iter()
                    .filter(move |d| d.index == c && d.score >= min_score)
                    .map(move |d| (d.score, i, d.bbox))
            })
            .collect();
        // Stable sort: ties keep image order, as Python's sort does.
        cands.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut used: Vec<Vec<bool>> = truth.iter().map(|t| vec![false; t.len()]).collect();
        let tp: Vec<bool> = cands
            .iter()
            .map(|&(_, i, b)| {
                let best = truth[i]
                    .iter()
                    .enumerate()
                    .filter(|(_, o)| o.1 == c)
                    .map(|(j, o)| (j, iou(&b, &o.0)))
                    .fold(None, |m: Option<(usize, f32)>, x| match m {
                        Some(m) if m.1 >= x.1 => Some(m),
                        _ => Some(x),
                    });
                match best {
                    Some((j, o)) if o >= 0.5 && !used[i][j] => {
                        used[i][j] = true;
                        true
                    }
                    _ => false,
                }
            })
            .collect();
        aps.push(voc_ap(&tp, n_truth));
    }
    aps.iter().sum::<f64>() / aps.len().max(1) as f64
}

fn detections(d: &TaskAnswer) -> &Detections {
    match d {
        TaskAnswer::Detections(d) => d,
        _ => panic!("not a detector's answer"),
    }
}

fn detection_cascade() {
    let dir = models_dir();
    let load = |stem: &str| {
        Engine::load_files(
            &dir.join(format!("det/{stem}.onnx")),
            Some(&dir.join(format!("det/{stem}.spec.json"))),
        )
        .unwrap()
    };
    let (edge, cloud) = (load("det-edge-int8"), load("det-cloud-fp32"));
    let spec_threshold = match edge.task() {
        Some(outpost::inference::task::Task::Detection(d)) => d.score_threshold,
        _ => unreachable!(),
    };
    let over = Overrides {
        score_threshold: Some(0.05),
        iou_threshold: None,
        max_detections: Some(100),
    };
    let test = det_test();
    let truth: Vec<Truth> = test.iter().map(|t| t.2.clone()).collect();
    let classes = edge.spec().labels.len() as u32;
    let (mut es, mut cs) = (edge.session().unwrap(), cloud.session().unwrap());
    let mut edge_out = Vec::new();
    let mut cloud_out = Vec::new();
    for (_, png, _) in &test {
        let (x, fit) = edge
            .task_input_from_image(png, &DecodeLimits::default())
            .unwrap();
        edge_out.push(es.run_task(&x, &fit, &over).unwrap().0);
        let (x, fit) = cloud
            .task_input_from_image(png, &DecodeLimits::default())
            .unwrap();
        cloud_out.push(cs.run_task(&x, &fit, &over).unwrap().0);
    }
    println!(
        "### Detection cascade: det-edge-int8 -> det-cloud-fp32 on {} test canvases ({} objects)",
        test.len(),
        truth.iter().map(Vec::len).sum::<usize>()
    );
    println!();
    println!(
        "| system | forwarded | mAP@0.5 (boxes >= 0.05) | mAP@0.5 (boxes >= {spec_threshold}, the spec's threshold) |"
    );
    println!("|---|---|---|---|");
    let row = |name: &str, fwd: usize, answers: Vec<&Detections>| {
        println!(
            "| {name} | {fwd} ({:.1} %) | {:.4} | {:.4} |",
            100.0 * fwd as f64 / test.len() as f64,
            map50(&answers, &truth, classes, 0.0),
            map50(&answers, &truth, classes, spec_threshold),
        );
    };
    row(
        "edge alone (det-edge-int8)",
        0,
        edge_out.iter().map(|d| detections(&d.answer)).collect(),
    );
    row(
        "cloud alone (det-cloud-fp32)",
        test.len(),
        cloud_out.iter().map(|d| detections(&d.answer)).collect(),
    );
    let t0 = Instant::now();
    for max_fraction in [Some(0.05f32), Some(0.1), Some(0.2), None] {
        let limits = BudgetLimits {
            max_fraction,
            max_per_s: None,
            window: Duration::from_secs(60),
        };
        let mut budget = Budget::default();
        let mut fwd = 0;
        let answers: Vec<&Detections> = edge_out
            .iter()
            .zip(&cloud_out)
            .enumerate()
            .map(|(i, (e, c))| {
                let now = t0 + Duration::from_millis(10 * i as u64);
                if budget.decide(&limits, 0.0, e.hardness, now) == Decision::Forward {
                    fwd += 1;
                    detections(&c.answer)
                } else {
                    detections(&e.answer)
                }
            })
            .collect();
        let name = match max_fraction {
            Some(f) => format!("cascade, budget max_fraction {f}"),
            None => "cascade, no budget (every hard input)".to_string(),
        };
        row(&name, fwd, answers);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 3. The classifiers under drift

/// One stream: the edge's and each cloud model's (label index, max-prob) per input, and the true labels.
struct Stream {
    name: &'static str,
    truth: Vec<usize>,
    edge: Vec<(usize, f32)>,
    clouds: Vec<Vec<(usize, f32)>>,
}

fn drift() {
    let dir = models_dir();
    let load = |stem: &str| Engine::load_files(&dir.join(format!("{stem}.onnx")), None).unwrap();
    let edge = load("edge-int8");
    let mut cloud_names = Vec::new();
    if dir.join("cloud-robust-fp32.onnx").exists() {
        cloud_names.push("cloud-robust-fp32");
    }
    cloud_names.push("cloud-fp32");
    let clouds: Vec<Engine> = cloud_names.iter().map(|s| load(s)).collect();
    let predict = |engine: &Engine, inputs: &[image::DynamicImage]| -> Vec<(usize, f32)> {
        let mut s = engine.session().unwrap();
        inputs
            .iter()
            .map(|img| {
                let p = s
                    .classify(&preprocess::to_tensor(img, engine.spec()))
                    .unwrap();
                (p.index, p.confidence)
            })
            .collect()
    };
    let mut streams = Vec::new();
    // The shifted stream: 785-byte records, label then 28x28 pixels.
    let raw = std::fs::read(dir.join("data/shifted/digits.bin")).unwrap();
    let (mut imgs, mut truth) = (Vec::new(), Vec::new());
    for r in raw.chunks_exact(785) {
        truth.push(r[0] as usize);
        let g = image::GrayImage::from_raw(28, 28, r[1..].to_vec()).unwrap();
        imgs.push(image::DynamicImage::ImageLuma8(g));
    }
    streams.push(Stream {
        name: "shifted (digits.bin)",
        edge: predict(&edge, &imgs),
        clouds: clouds.iter().map(|c| predict(c, &imgs)).collect(),
        truth,
    });
    // The clean test PNGs, NNNN_L.png in name order.
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("data/test"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    files.sort();
    let (mut imgs, mut truth) = (Vec::new(), Vec::new());
    for f in &files {
        let stem = f.file_stem().unwrap().to_str().unwrap();
        truth.push(stem.rsplit_once('_').unwrap().1.parse().unwrap());
        let bytes = std::fs::read(f).unwrap();
        imgs.push(preprocess::decode(&bytes, &DecodeLimits::default()).unwrap());
    }
    streams.push(Stream {
        name: "clean (data/test PNGs)",
        edge: predict(&edge, &imgs),
        clouds: clouds.iter().map(|c| predict(c, &imgs)).collect(),
        truth,
    });

    const SKIP: usize = 500;
    println!("### Classifiers under drift: edge-int8 -> cloud, forward when max-prob < 0.9 (hardness > 0.1)");
    println!();
    println!(
        "| stream | system | forwarded (all) | top-1 (all) | forwarded (after the first {SKIP}) | top-1 (after the first {SKIP}) |"
    );
    println!("|---|---|---|---|---|---|");
    for s in &streams {
        let n = s.truth.len();
        let row = |system: &str, fwd: &[bool], answer: &[usize]| {
            let stats = |from: usize| {
                let m = (n - from) as f64;
                let f = fwd[from..].iter().filter(|&&f| f).count();
                let ok = answer[from..]
                    .iter()
                    .zip(&s.truth[from..])
                    .filter(|(a, t)| a == t)
                    .count();
                format!("{f} ({:.1} %) | {:.4}", 100.0 * f as f64 / m, ok as f64 / m)
            };
            println!(
                "| {} ({n}) | {system} | {} | {} |",
                s.name,
                stats(0),
                stats(SKIP)
            );
        };
        let edge_labels: Vec<usize> = s.edge.iter().map(|e| e.0).collect();
        row("edge-int8 alone", &vec![false; n], &edge_labels);
        for (ci, cname) in cloud_names.iter().enumerate() {
            let cloud = &s.clouds[ci];
            let cloud_labels: Vec<usize> = cloud.iter().map(|c| c.0).collect();
            row(&format!("{cname} alone"), &vec![true; n], &cloud_labels);
            for max_fraction in [None, Some(0.1f32)] {
                let limits = BudgetLimits {
                    max_fraction,
                    max_per_s: None,
                    window: Duration::from_secs(60),
                };
                let mut budget = Budget::default();
                let t0 = Instant::now();
                let fwd: Vec<bool> = s
                    .edge
                    .iter()
                    .enumerate()
                    .map(|(i, e)| {
                        let now = t0 + Duration::from_millis(10 * i as u64);
                        budget.decide(&limits, 0.1, 1.0 - e.1, now) == Decision::Forward
                    })
                    .collect();
                let answer: Vec<usize> = (0..n)
                    .map(|i| if fwd[i] { cloud[i].0 } else { s.edge[i].0 })
                    .collect();
                let what = match max_fraction {
                    None => "no budget".to_string(),
                    Some(f) => format!("budget max_fraction {f}"),
                };
                row(&format!("cascade -> {cname}, {what}"), &fwd, &answer);
            }
        }
    }
}
