//! What each way in costs (issue 18): the same input through `/v1` (an encoded PNG), the Open Inference Protocol v2
//! with a JSON tensor and with a binary tensor, against the in-process call of the same service with the same tensor
//! (no decoding on either side), in one run; and the daemon's resident memory serving one model and two.
//!
//! ```text
//! cargo bench --bench protocols                      # edge-int8 and mobilenetv2-fp32, 2 s of requests per row
//! cargo bench --bench protocols -- --seconds 5 edge-int8
//! OUTPOST_BASELINE_BIN=/path/to/other/outpost cargo bench --bench protocols   # another build's daemon beside
//! ```
//!
//! Every daemon is the `outpost` binary of this build (`CARGO_BIN_EXE_outpost`), one worker, cache off, on
//! loopback; one keep-alive client sends requests one after the other. The rows of a model are measured in rounds
//! of one call each way (in-process, /v1, v2 JSON, v2 binary, repeated) so that drift of the machine falls on all
//! alike.
//! With `OUTPOST_BASELINE_BIN`, a daemon of that binary (the build before a change) serves beside this build's and
//! its three HTTP ways join the same rounds, so a before/after comparison shares the machine's every moment.
//! p50/p99 nearest rank. RSS is VmRSS after 50 requests to each model served and 1.5 s idle.

use outpost::inference::{DecodeLimits, Engine};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MODELS: &[&str] = &["edge-int8", "mobilenetv2-fp32"];

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

struct Daemon {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start(models: &[&str]) -> Daemon {
        Daemon::start_bin(env!("CARGO_BIN_EXE_outpost"), models)
    }

    /// A daemon of `bin` (this build's, or a baseline build's to compare with in the same rounds).
    fn start_bin(bin: &str, models: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("outpost.toml");
        std::fs::write(
            &config,
            "[cache]\nenabled = false\n\n[log]\nlevel = \"warn\"\n",
        )
        .unwrap();
        let mut cmd = Command::new(bin);
        cmd.args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--config",
        ])
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.path().join("state"));
        for m in models {
            cmd.arg("--model")
                .arg(models_dir().join(format!("{m}.onnx")));
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr_file = dir.path().join("state/api.addr");
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = loop {
            if let Ok(a) = std::fs::read_to_string(&addr_file) {
                break a;
            }
            assert!(Instant::now() < deadline, "the daemon did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        Daemon {
            child,
            addr,
            _dir: dir,
        }
    }

    fn rss_mib(&self) -> f64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kib| kib / 1024.0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

/// One way in: sends one request and checks the answer names the expected label.
type Call<'a> = Box<dyn FnMut() -> String + 'a>;

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
    let named: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with("--") && a.parse::<f64>().is_err())
        .map(String::as_str)
        .collect();
    let picked: Vec<&str> = if named.is_empty() {
        MODELS.to_vec()
    } else {
        named
    };
    println!("| model | way in | p50 µs | p99 µs | runs | p50 / in-process |");
    println!("|---|---|---|---|---|---|");
    for stem in &picked {
        bench(stem, seconds);
    }
    rss();
}

fn bench(stem: &str, seconds: f64) {
    let engine = Engine::load_files(&models_dir().join(format!("{stem}.onnx")), None).unwrap();
    let spec = engine.spec().clone();
    let image = std::fs::read(models_dir().join("data/test/0003_2.png")).unwrap();
    let tensor = engine
        .tensor_from_image(&image, &DecodeLimits::default())
        .unwrap();
    let want = engine.classify(&tensor).unwrap().label;

    // In process: the same service the daemon runs, the same tensor, no HTTP.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let config = outpost::config::Config::default();
    let pool = Arc::new(outpost::worker::Pool::start(1, 64));
    let service = outpost::serve::Service::new(&spec.name, engine.clone(), pool, None, &config);

    let daemon = Daemon::start(&[stem]);
    // `OUTPOST_BASELINE_BIN`: another build's daemon (the commit before a change), measured in the same rounds.
    let baseline = std::env::var("OUTPOST_BASELINE_BIN")
        .ok()
        .map(|bin| Daemon::start_bin(&bin, &[stem]));
    let http = agent();
    let shape: Vec<usize> = spec.input.shape.clone();
    let json_body = serde_json::json!({
        "inputs": [{"name": spec.input.name, "shape": shape, "datatype": "FP32", "data": tensor}],
        "outputs": [{"name": spec.output.name, "parameters": {"classification": 1}}],
    })
    .to_string();
    let header = serde_json::json!({
        "inputs": [{"name": spec.input.name, "shape": shape, "datatype": "FP32",
                    "parameters": {"binary_data_size": tensor.len() * 4}}],
        "outputs": [{"name": spec.output.name, "parameters": {"classification": 1, "binary_data": false}}],
    })
    .to_string();
    let mut binary_body = header.clone().into_bytes();
    for x in &tensor {
        binary_body.extend(x.to_le_bytes());
    }
    let bodies = Bodies {
        image: &image,
        json: &json_body,
        binary: &binary_body,
        header_len: header.len(),
    };
    let mut ways: Vec<(String, Call)> = vec![(
        "in-process (service, tensor)".into(),
        Box::new(|| {
            let request = outpost::serve::Request {
                want_outputs: true,
                ..outpost::serve::Request::of(outpost::serve::Input::Tensor(tensor.clone()))
            };
            match rt.block_on(service.answer(request)).unwrap().answer {
                outpost::serve::Answer::Class(a) => a.label,
                other => panic!("a classifier answered {other:?}"),
            }
        }),
    )];
    ways.extend(http_ways(&http, &daemon.addr, &spec.name, &bodies, ""));
    if let Some(b) = &baseline {
        ways.extend(http_ways(
            &http,
            &b.addr,
            &spec.name,
            &bodies,
            ", baseline binary",
        ));
    }
    // Warm every way up, checking each answers the same label.
    for (name, call) in ways.iter_mut() {
        for _ in 0..3 {
            let got = call();
            assert_eq!(got, want, "{stem} {name}");
        }
    }
    // Rounds of one call each way: the machine's slow and fast moments (this box's speed moved by 15 % between runs)
    // fall on every way alike, so their ratios hold even when the absolute figures drift.
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); ways.len()];
    let start = Instant::now();
    // Each round runs the ways in a new shuffled order, so no way always follows the same one (a way that follows
    // itself, or the in-process run, finds the caches and the clock in another state).
    let mut order: Vec<usize> = (0..ways.len()).collect();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    while start.elapsed().as_secs_f64() < seconds * ways.len() as f64 {
        for k in (1..order.len()).rev() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            order.swap(k, (seed % (k as u64 + 1)) as usize);
        }
        for &i in &order {
            let t = Instant::now();
            std::hint::black_box((ways[i].1)());
            times[i].push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    let base = {
        let mut t = times[0].clone();
        t.sort_by(f64::total_cmp);
        p(&t, 0.5)
    };
    for ((name, _), mut t) in ways.iter().zip(times) {
        t.sort_by(f64::total_cmp);
        println!(
            "| {stem} | {name} | {:.0} | {:.0} | {} | {:.3} |",
            p(&t, 0.5),
            p(&t, 0.99),
            t.len(),
            p(&t, 0.5) / base
        );
    }
}

/// What the HTTP ways send: the PNG, the tensor as JSON, and as binary after its JSON header.
struct Bodies<'a> {
    image: &'a [u8],
    json: &'a str,
    binary: &'a [u8],
    header_len: usize,
}

/// The three ways in over HTTP to the daemon at `addr`, each answering the label (`tag` names the daemon's build).
fn http_ways<'a>(
    http: &'a ureq::Agent,
    addr: &str,
    model: &str,
    bodies: &'a Bodies<'a>,
    tag: &str,
) -> Vec<(String, Call<'a>)> {
    let v1 = format!("http://{addr}/v1/infer");
    let v2 = format!("http://{addr}/v2/models/{model}/infer");
    let v2b = v2.clone();
    vec![
        (
            format!("/v1/infer (PNG, decoded by the agent){tag}"),
            Box::new(move || {
                let mut r = http
                    .post(&v1)
                    .header("content-type", "image/png")
                    .send(bodies.image)
                    .unwrap();
                let v: serde_json::Value =
                    serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
                v["label"].as_str().unwrap_or_default().to_string()
            }),
        ),
        (
            format!("v2 JSON tensor{tag}"),
            Box::new(move || {
                let mut r = http
                    .post(&v2)
                    .header("content-type", "application/json")
                    .send(bodies.json)
                    .unwrap();
                label_of_v2(&r.body_mut().read_to_string().unwrap())
            }),
        ),
        (
            format!("v2 binary tensor{tag}"),
            Box::new(move || {
                let mut r = http
                    .post(&v2b)
                    .header(
                        "inference-header-content-length",
                        bodies.header_len.to_string(),
                    )
                    .header("content-type", "application/octet-stream")
                    .send(bodies.binary)
                    .unwrap();
                label_of_v2(&r.body_mut().read_to_string().unwrap())
            }),
        ),
    ]
}

/// The label of a v2 reply's classification output ("score:index:label").
fn label_of_v2(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    let s = v["outputs"][0]["data"][0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    s.split(':').nth(2).unwrap_or_default().to_string()
}

/// Resident memory of the daemon serving the edge model alone, then with a second model beside it (MobileNetV2 fp32,
/// then its real-int8 file), after 50 requests to each model served: what each second model adds, against its file.
fn rss() {
    let image = std::fs::read(models_dir().join("data/test/0003_2.png")).unwrap();
    let http = agent();
    let measure = |models: &[&str]| {
        let d = Daemon::start(models);
        // The other models start beside the default: wait until each says it is ready.
        for m in models {
            let deadline = Instant::now() + Duration::from_secs(60);
            let ready = format!("http://{}/v2/models/{m}/ready", d.addr);
            while http.get(&ready).call().map(|r| r.status().as_u16()).ok() != Some(200) {
                assert!(
                    Instant::now() < deadline,
                    "model {m} is not ready after 60 s"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for m in models {
            for _ in 0..50 {
                http.post(&format!("http://{}/v1/models/{m}/infer", d.addr))
                    .header("content-type", "image/png")
                    .send(&image[..])
                    .unwrap();
            }
        }
        // Idle a moment, as a device between bursts: the worker hands what the runs freed back after 1 s.
        std::thread::sleep(Duration::from_millis(1500));
        d.rss_mib()
    };
    let mib = |m: &str| {
        std::fs::metadata(models_dir().join(format!("{m}.onnx")))
            .unwrap()
            .len() as f64
            / (1024.0 * 1024.0)
    };
    let base = measure(&["edge-int8"]);
    println!();
    println!("| daemon serving | RSS MiB | second model's file MiB | added MiB | added / file |");
    println!("|---|---|---|---|---|");
    println!("| edge-int8 | {base:.1} | | | |");
    for second in ["mobilenetv2-fp32", "mobilenetv2-int8"] {
        let rss = measure(&["edge-int8", second]);
        let file = mib(second);
        println!(
            "| edge-int8 + {second} | {rss:.1} | {file:.1} | {:.1} | {:.2} |",
            rss - base,
            (rss - base) / file
        );
    }
}
