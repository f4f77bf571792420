//! Serving benchmark (issue 3): what the HTTP daemon costs on top of the in-process engine, in one run.
//!
//! ```text
//! scripts/bench-serve.sh                                   # builds the release daemon, then runs this
//! OUTPOST_BIN=target/release/outpost cargo bench --bench serve -- edge-int8 mobilenetv2-fp32
//! cargo bench --bench serve -- --iters 200 --seconds 5 --clients 4 --slow-iters 5 --slow-seconds 10
//! ```
//!
//! For each model (default: edge-int8, mobilenetv2-fp32, mobilenetv2-int8):
//! - in-process: one `Engine` session on the calling thread, `tensor_from_image` + `classify` on the same PNGs the
//!   HTTP client sends (so decode is on both sides);
//! - HTTP: the real release daemon (`outpost run --listen 127.0.0.1:0 --workers 1`, cache disabled by a TOML config),
//!   one keep-alive ureq client sending `POST /v1/infer` one after the other on loopback; every answer must say
//!   `source: "edge"`;
//! - cache hit: a daemon with the cache enabled, one image primed, then repeated (every answer must say `cache`);
//! - throughput: `--clients` threads (one keep-alive connection each) sending distinct images for `--seconds` to the
//!   cache-disabled daemon with `--workers 1`, then a second one with `--workers 2`; requests/s = completed requests /
//!   time to the last completion (the workers are busy the whole time, so this is the service rate);
//! - peak RSS (VmHWM in /proc/<pid>/status) of each serving daemon, read after it served, before it is stopped;
//! - the size of the daemon binary, and of a stripped copy of it (`strip`).
//!
//! p50/p99 are nearest-rank (with fewer than 100 runs p99 is the maximum). Each latency phase runs about 5 s worth
//! of requests, between `--slow-iters` and `--iters`; models slower than 20 ms per inference get one warmup run and
//! `--slow-seconds` of throughput.
//! Daemons get SIGTERM (then SIGKILL after 10 s) when their phase ends, also on error or panic.
//! The daemon binary: `OUTPOST_BIN`, else `$CARGO_TARGET_DIR/release/outpost`, else `target/release/outpost`.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use outpost::inference::{DecodeLimits, Engine};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DEFAULT_MODELS: &[&str] = &["edge-int8", "mobilenetv2-fp32", "mobilenetv2-int8"];
/// Distinct images per model (edge: the first N test digits; MobileNet: N seeded-noise 224x224 RGB PNGs).
const IMAGES: usize = 16;
/// Per-inference time above which a model counts as slow (fewer iterations).
const SLOW: Duration = Duration::from_millis(20);
/// Target duration of each timed latency phase (in-process, HTTP), within `--slow-iters..=--iters` runs.
const LATENCY_SECONDS: f64 = 5.0;

/// Serving benchmark: the HTTP daemon against the in-process engine on the same models.
#[derive(clap::Parser)]
#[command(name = "serve")]
struct Args {
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/models"))]
    models_dir: PathBuf,
    /// Timed runs per latency phase for fast models (clamped to 1..=100000).
    #[arg(long, default_value_t = 200)]
    iters: usize,
    /// The same for slow models (clamped to 1..=1000).
    #[arg(long, default_value_t = 5)]
    slow_iters: usize,
    /// Seconds of the throughput phase (at most 600).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    #[arg(long, default_value_t = 10.0)]
    slow_seconds: f64,
    /// Concurrent HTTP clients (clamped to 1..=16).
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// The daemon binary (default: $OUTPOST_BIN, else the release build in the target dir).
    #[arg(long = "bin")]
    bin_flag: Option<PathBuf>,
    #[arg(skip)]
    bin: PathBuf,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
    /// Model stems under --models-dir.
    stems: Vec<String>,
}

fn usage_and_exit(msg: &str) -> ! {
    eprintln!("error: {msg} (see --help)");
    std::process::exit(2)
}

fn default_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("OUTPOST_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("release").join("outpost")
}

fn parse_args() -> Args {
    let mut args = <Args as clap::Parser>::parse();
    for (name, v) in [
        ("--seconds", args.seconds),
        ("--slow-seconds", args.slow_seconds),
    ] {
        if !v.is_finite() || v <= 0.0 {
            eprintln!("error: {name} takes a positive number of seconds");
            std::process::exit(2);
        }
    }
    args.seconds = args.seconds.min(600.0);
    args.slow_seconds = args.slow_seconds.min(600.0);
    args.clients = args.clients.clamp(1, 16);
    args.iters = args.iters.clamp(1, 100_000);
    args.slow_iters = args.slow_iters.clamp(1, 1_000);
    args.bin = args.bin_flag.clone().unwrap_or_else(default_bin);
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

/// Nearest-rank percentile of an ascending slice.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let k = ((q / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[k]
}

#[derive(Clone, Copy)]
struct Stats {
    p50_us: f64,
    p99_us: f64,
}

fn stats(mut times_us: Vec<f64>) -> Stats {
    times_us.sort_by(f64::total_cmp);
    Stats {
        p50_us: percentile(&times_us, 50.0),
        p99_us: percentile(&times_us, 99.0),
    }
}

/// splitmix64: a seeded, dependency-free noise source for the generated images.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// PNG bodies for the model: the test digits for 28x28 gray models, seeded noise at the model's input size otherwise.
fn images_for(engine: &Engine, models_dir: &Path) -> Result<Vec<Vec<u8>>, String> {
    let pre = &engine.spec().preprocess;
    let (w, h) = (pre.width, pre.height);
    if (w, h) == (28, 28) {
        let dir = models_dir.join("data").join("test");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "png"))
            .collect();
        files.sort();
        files.truncate(IMAGES);
        if files.is_empty() {
            return Err(format!("no PNG in {}", dir.display()));
        }
        return files
            .iter()
            .map(|p| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display())))
            .collect();
    }
    let mut rng = SplitMix(0x5EED_0003);
    (0..IMAGES)
        .map(|_| {
            let img = image::RgbImage::from_fn(w, h, |_, _| {
                let v = rng.next();
                image::Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
            });
            let mut out = Cursor::new(Vec::new());
            img.write_to(&mut out, image::ImageFormat::Png)
                .map_err(|e| e.to_string())?;
            Ok(out.into_inner())
        })
        .collect()
}

/// In-process: decode + classify on one session, cycling over `images`, after `warmup` untimed runs.
fn in_process(
    engine: &Engine,
    images: &[Vec<u8>],
    warmup: usize,
    iters: usize,
) -> Result<Stats, String> {
    let mut session = engine.session().map_err(|e| e.to_string())?;
    let limits = DecodeLimits::default();
    let mut times = Vec::with_capacity(iters);
    for i in 0..warmup + iters {
        let img = &images[i % images.len()];
        let t = Instant::now();
        let tensor = engine
            .tensor_from_image(img, &limits)
            .map_err(|e| e.to_string())?;
        let p = session.classify(&tensor).map_err(|e| e.to_string())?;
        let dt = t.elapsed();
        std::hint::black_box(p);
        if i >= warmup {
            times.push(dt.as_secs_f64() * 1e6);
        }
    }
    Ok(stats(times))
}

/// A daemon this bench started: stopped (SIGTERM, then SIGKILL) when dropped, whatever happened.
struct Daemon {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Daemon {
    fn start(bin: &Path, model: &Path, workers: usize, cache: bool) -> Result<Daemon, String> {
        let dir = tempfile::Builder::new()
            .prefix("outpost-bench-serve-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let state = dir.path().join("state");
        let config = dir.path().join("outpost.toml");
        std::fs::write(
            &config,
            format!("[cache]\nenabled = {cache}\n\n[log]\nlevel = \"warn\"\n"),
        )
        .map_err(|e| e.to_string())?;
        let log = dir.path().join("daemon.log");
        let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .arg("run")
            .args(["--listen", "127.0.0.1:0"])
            .arg("--state-dir")
            .arg(&state)
            .arg("--model")
            .arg(model)
            .args(["--workers", &workers.to_string()])
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        let mut daemon = Daemon {
            child,
            url: String::new(),
            _dir: dir,
            log,
        };
        let addr_file = state.join("api.addr");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(addr) = std::fs::read_to_string(&addr_file) {
                if !addr.trim().is_empty() {
                    daemon.url = format!("http://{}/v1/infer", addr.trim());
                    return Ok(daemon);
                }
            }
            if let Ok(Some(status)) = daemon.child.try_wait() {
                return Err(format!("daemon exited ({status}): {}", daemon.log_tail()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "daemon not ready after 120 s: {}",
                    daemon.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// Peak resident set (VmHWM) so far, in KiB.
    fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

/// One `POST /v1/infer`; returns the answer's `source`.
fn post(agent: &ureq::Agent, url: &str, png: &[u8]) -> Result<String, String> {
    let mut resp = agent
        .post(url)
        .header("content-type", "image/png")
        .send(png)
        .map_err(|e| format!("POST {url}: {e}"))?;
    let body = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("POST {url}: {e}"))?;
    let v: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("POST {url}: {e}: {body}"))?;
    v["source"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("POST {url}: no source in {body}"))
}

/// Sequential requests on one keep-alive connection, cycling over `images`; each answer must have `source`.
fn http_latency(
    url: &str,
    images: &[Vec<u8>],
    warmup: usize,
    iters: usize,
    want: &str,
) -> Result<Stats, String> {
    let agent = agent();
    let mut times = Vec::with_capacity(iters);
    for i in 0..warmup + iters {
        let img = &images[i % images.len()];
        let t = Instant::now();
        let source = post(&agent, url, img)?;
        let dt = t.elapsed();
        if source != want {
            return Err(format!("answer from {source}, expected {want}"));
        }
        if i >= warmup {
            times.push(dt.as_secs_f64() * 1e6);
        }
    }
    Ok(stats(times))
}

/// `clients` threads, each on its own keep-alive connection, sending distinct images until `seconds` have passed
/// (in-flight requests finish). Returns requests/s over the time to the last completion.
fn throughput(
    url: &str,
    images: &Arc<Vec<Vec<u8>>>,
    clients: usize,
    seconds: f64,
) -> Result<f64, String> {
    // Warm every worker (sessions, caches): one concurrent request per client, untimed.
    let run = |deadline: Option<Instant>, start: Instant| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let (url, images) = (url.to_string(), images.clone());
                std::thread::spawn(move || -> Result<(usize, Duration), String> {
                    let agent = agent();
                    let mut done = 0usize;
                    let mut i = c;
                    let last = loop {
                        post(&agent, &url, &images[i % images.len()])?;
                        done += 1;
                        let now = start.elapsed();
                        i += clients;
                        match deadline {
                            Some(d) if Instant::now() < d => {}
                            _ => break now,
                        }
                    };
                    Ok((done, last))
                })
            })
            .collect();
        let mut total = 0usize;
        let mut last = Duration::ZERO;
        for h in handles {
            let (n, l) = h
                .join()
                .map_err(|_| "client thread panicked".to_string())??;
            total += n;
            last = last.max(l);
        }
        Ok::<_, String>((total, last))
    };
    run(None, Instant::now())?;
    let start = Instant::now();
    let (n, last) = run(Some(start + Duration::from_secs_f64(seconds)), start)?;
    Ok(n as f64 / last.as_secs_f64().max(1e-9))
}

struct Row {
    stem: String,
    iters: usize,
    in_proc: Stats,
    http: Stats,
    hit: Stats,
    rps: [f64; 2],
    rss_mib: [f64; 3],
}

fn bench_model(args: &Args, stem: &str) -> Result<Row, String> {
    let model = args.models_dir.join(format!("{stem}.onnx"));
    let engine = Engine::load_files(&model, None).map_err(|e| format!("{stem}: {e}"))?;
    let images = images_for(&engine, &args.models_dir)?;

    // One untimed run sizes the iteration counts.
    let probe = in_process(&engine, &images, 0, 1)?;
    let slow = probe.p50_us > SLOW.as_secs_f64() * 1e6;
    // About `LATENCY_SECONDS` of timed runs per latency phase, between `--slow-iters` and `--iters`.
    let budget = (LATENCY_SECONDS * 1e6 / probe.p50_us.max(1.0)) as usize;
    let iters = budget.clamp(args.slow_iters.min(args.iters), args.iters);
    let (warmup, seconds) = if slow {
        (1, args.slow_seconds)
    } else {
        ((iters / 10).max(3), args.seconds)
    };

    eprintln!("{stem}: in-process, {iters} runs ...");
    let in_proc = in_process(&engine, &images, warmup, iters)?;
    drop(engine);

    let rss = |d: &Daemon| d.peak_rss_kib().map_or(f64::NAN, |k| k as f64 / 1024.0);
    let images = Arc::new(images);

    eprintln!(
        "{stem}: HTTP (cache off, 1 worker), {iters} requests, then {seconds} s x {} clients ...",
        args.clients
    );
    let d1 = Daemon::start(&args.bin, &model, 1, false)?;
    let http = http_latency(&d1.url, &images, warmup, iters, "edge")?;
    let rps1 = throughput(&d1.url, &images, args.clients, seconds)?;
    let rss1 = rss(&d1);
    drop(d1);

    eprintln!(
        "{stem}: throughput with 2 workers, {seconds} s x {} clients ...",
        args.clients
    );
    let d2 = Daemon::start(&args.bin, &model, 2, false)?;
    let rps2 = throughput(&d2.url, &images, args.clients, seconds)?;
    let rss2 = rss(&d2);
    drop(d2);

    let hit_iters = args.iters;
    eprintln!("{stem}: cache hits, {hit_iters} requests ...");
    let dc = Daemon::start(&args.bin, &model, 1, true)?;
    let one = std::slice::from_ref(&images[0]);
    http_latency(&dc.url, one, 0, 1, "edge")?; // prime the cache
    let hit = http_latency(&dc.url, one, (hit_iters / 10).max(3), hit_iters, "cache")?;
    let rssc = rss(&dc);
    drop(dc);

    Ok(Row {
        stem: stem.to_string(),
        iters,
        in_proc,
        http,
        hit,
        rps: [rps1, rps2],
        rss_mib: [rss1, rss2, rssc],
    })
}

/// Thousands separators, like the other tables in BENCHMARKS.md; one decimal below 1000.
fn fmt_us(x: f64) -> String {
    if x < 1000.0 {
        return format!("{x:.1}");
    }
    let s = format!("{:.0}", x);
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn fmt_rps(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn file_size(p: &Path) -> Option<u64> {
    std::fs::metadata(p).ok().map(|m| m.len())
}

/// Size of a stripped copy of the binary (`strip` from binutils), if it is installed.
fn stripped_size(bin: &Path) -> Option<u64> {
    let dir = tempfile::tempdir().ok()?;
    let copy = dir.path().join("outpost");
    std::fs::copy(bin, &copy).ok()?;
    let ok = Command::new("strip")
        .arg(&copy)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?
        .success();
    if ok {
        file_size(&copy)
    } else {
        None
    }
}

fn main() {
    let args = parse_args();
    if !args.bin.is_file() {
        usage_and_exit(&format!(
            "no daemon binary at {}: run scripts/bench-serve.sh, or `cargo build --release --bin outpost` and set OUTPOST_BIN",
            args.bin.display()
        ));
    }
    let mut rows = Vec::new();
    let mut failed = false;
    for stem in &args.stems {
        match bench_model(&args, stem) {
            Ok(r) => rows.push(r),
            Err(e) => {
                eprintln!("error: {stem}: {e}");
                failed = true;
            }
        }
    }

    let mib = |b: Option<u64>| {
        b.map_or("?".to_string(), |b| {
            format!("{:.1} MiB", b as f64 / 1048576.0)
        })
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "?".into());
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "Machine: {cpu}, {cores} cores online; {} {}; load average {load}",
        std::env::consts::OS,
        std::env::consts::ARCH
    );
    println!(
        "Daemon: {} ({}; stripped {}). Client and daemon share the machine; loopback; {} client threads for throughput.",
        args.bin.display(),
        mib(file_size(&args.bin)),
        mib(stripped_size(&args.bin)),
        args.clients
    );
    println!();
    println!(
        "| model | runs | in-process p50 µs | p99 µs | HTTP p50 µs | p99 µs | HTTP/in-process (p50) | HTTP − in-process p50 µs \
         | cache hit p50 µs | p99 µs | req/s 1 worker | req/s 2 workers | peak RSS MiB (1 w / 2 w / cache) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | **{:.2}x** | {} | {} | {} | {} | {} | {:.0} / {:.0} / {:.0} |",
            r.stem,
            r.iters,
            fmt_us(r.in_proc.p50_us),
            fmt_us(r.in_proc.p99_us),
            fmt_us(r.http.p50_us),
            fmt_us(r.http.p99_us),
            r.http.p50_us / r.in_proc.p50_us,
            fmt_us(r.http.p50_us - r.in_proc.p50_us),
            fmt_us(r.hit.p50_us),
            fmt_us(r.hit.p99_us),
            fmt_rps(r.rps[0]),
            fmt_rps(r.rps[1]),
            r.rss_mib[0],
            r.rss_mib[1],
            r.rss_mib[2],
        );
    }
    if failed {
        std::process::exit(1);
    }
}
