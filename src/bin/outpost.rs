//! `outpost`: the device agent. A thin shell over the library: parse flags, call in, map errors to exit codes.

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "outpost", version, about = "Edge inference agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Classify image files with a local model and print one result per image.
    Infer(InferArgs),
    /// Run the agent: serve the local inference API until SIGTERM or Ctrl-C.
    Run(Box<RunArgs>),
    /// Install a signed bundle into the inactive slot and make it live on trial (a running agent picks it up).
    Install {
        #[command(flatten)]
        state: StateArgs,
        /// Trusted operator keys (overrides slots.trusted_keys).
        #[arg(long)]
        trusted_keys: Option<PathBuf>,
        /// Distinct trusted keys required (overrides slots.threshold).
        #[arg(long)]
        threshold: Option<usize>,
        /// Stage it as the candidate beside the live model (shadow and A/B, see [shadow]) instead of making it
        /// live on trial; `outpost activate <version>` makes it live later.
        #[arg(long)]
        candidate: bool,
        bundle: PathBuf,
    },
    /// Make the staged candidate of this version live, on trial (a running agent picks it up).
    Activate {
        #[command(flatten)]
        state: StateArgs,
        version: u64,
    },
    /// Go back to the model that served before (a running agent picks it up).
    Rollback {
        #[command(flatten)]
        state: StateArgs,
    },
    /// End the trial of the new model now and keep it (a running agent picks it up).
    Promote {
        #[command(flatten)]
        state: StateArgs,
    },
    /// Print the slot record as JSON.
    Status {
        #[command(flatten)]
        state: StateArgs,
    },
    /// The keys this device trusts: its signed, versioned trust document (README, Keys and rotation).
    #[command(subcommand)]
    Trust(TrustCommand),
}

#[derive(Subcommand)]
enum TrustCommand {
    /// Take newer versions of the trust document, each signed by the version before (a running agent picks them
    /// up). Versions already held are skipped; an older one is refused.
    Apply {
        #[command(flatten)]
        state: StateArgs,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// When the root keys are lost or leaked: replace the trust with FILE, a document signed by a threshold of its
    /// own root keys, whatever the device trusted before. Logged and shown in the status.
    Reset {
        #[command(flatten)]
        state: StateArgs,
        file: PathBuf,
    },
    /// Print the trust's status as JSON: version, root keys, warnings (on a device that stored none yet, the version 1
    /// its key files make).
    Show {
        #[command(flatten)]
        state: StateArgs,
    },
}

#[derive(clap::Args)]
struct StateArgs {
    #[arg(long, short)]
    config: Option<PathBuf>,
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The model to act on (default: the only model the device holds; `install` takes it from the bundle).
    #[arg(long)]
    model: Option<String>,
}

impl StateArgs {
    fn config(&self) -> Result<outpost::config::Config> {
        let mut c = match &self.config {
            Some(p) => outpost::config::Config::from_file(p)?,
            None => outpost::config::Config::default(),
        };
        if let Some(d) = &self.state_dir {
            c.agent.state_dir = d.clone();
        }
        outpost::agent::configure_engine(&c);
        Ok(c)
    }
}

#[derive(clap::Args)]
struct RunArgs {
    /// TOML configuration file (see deploy/outpost.toml for every key and its default).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Address of the local HTTP API (overrides api.listen); port 0 picks a free one.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// State directory (overrides agent.state_dir).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// ONNX model to serve, repeatable (replaces the config's [model] / [[model]] files); default: the built-in
    /// edge model. The first is the default model unless repository.default says otherwise.
    #[arg(long)]
    model: Vec<PathBuf>,
    /// The spec of the --model of the same position (default: `<model stem>.spec.json` beside it).
    #[arg(long)]
    spec: Vec<PathBuf>,
    /// Inference worker threads (overrides workers.count; 0 = one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Queue length before 503 (overrides workers.queue).
    #[arg(long)]
    queue: Option<usize>,
    /// Threads one model run may use (overrides engine.threads; 0 = the cores the workers leave free).
    #[arg(long)]
    engine_threads: Option<usize>,
    /// Log format, plain or json (overrides log.format).
    #[arg(long)]
    log_format: Option<String>,
    /// MQTT broker of the fleet, mqtt://host:port or mqtts://host:port (overrides fleet.broker).
    #[arg(long)]
    broker: Option<String>,
    /// This device's id in the fleet (overrides fleet.device_id).
    #[arg(long)]
    device_id: Option<String>,
    /// Fleet group (overrides fleet.group).
    #[arg(long)]
    group: Option<String>,
    /// CA certificate of the broker, PEM (overrides fleet.ca_file).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Client certificate and key for mutual TLS, PEM (override fleet.cert_file and fleet.key_file).
    #[arg(long)]
    cert_file: Option<PathBuf>,
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Trusted operator keys (overrides slots.trusted_keys).
    #[arg(long)]
    trusted_keys: Option<PathBuf>,
    /// When an input is hard enough for the cloud: SCORE:THRESHOLD with SCORE max-prob, margin or entropy
    /// (overrides forward.score and forward.threshold), e.g. max-prob:0.9.
    #[arg(long)]
    hardness: Option<String>,
    /// How long a hard request waits for the cloud before answering from the edge (overrides forward.deadline_ms).
    #[arg(long)]
    cloud_deadline_ms: Option<u64>,
    /// Public keys of the cloud workers whose signed answers are believed (overrides forward.cloud_keys).
    #[arg(long)]
    cloud_keys: Option<PathBuf>,
}

#[derive(clap::Args)]
struct InferArgs {
    /// ONNX model file.
    #[arg(long)]
    model: PathBuf,
    /// Model spec (JSON); defaults to <model stem>.spec.json beside the model.
    #[arg(long)]
    spec: Option<PathBuf>,
    /// Print one JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// How a real-int8 model runs: auto (both forms timed at load on this device, the faster kept; `--bench` prints
    /// both timings), native (tract's integer kernels) or float (its QDQ form on float kernels); engine.int8.
    #[arg(long, default_value = "auto", value_parser = outpost::inference::Int8Mode::parse)]
    int8: outpost::inference::Int8Mode,
    /// Instead of classifying, time the model on the first image for this many seconds and print one JSON line:
    /// cold load (parse, optimise, plan, the validating dry run), load to first answer, and the p50/p99 of runs
    /// (how a device's own build and CPU fare; BENCHMARKS.md compares builds with it).
    #[arg(long, value_name = "SECONDS")]
    bench: Option<f64>,
    /// PNG or JPEG files.
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Infer(args) => infer(args),
        Command::Run(args) => run(*args),
        Command::Install {
            state,
            trusted_keys,
            threshold,
            candidate,
            bundle,
        } => install(state, trusted_keys, threshold, candidate, bundle),
        Command::Activate { state, version } => activate(state, version),
        Command::Rollback { state } => rollback(state),
        Command::Status { state } => status(state),
        Command::Promote { state } => promote(state),
        Command::Trust(t) => trust(t),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn infer(args: InferArgs) -> Result<ExitCode> {
    use outpost::inference::{DecodeLimits, Engine};
    outpost::inference::set_int8_mode(args.int8);
    let start = std::time::Instant::now();
    let engine = Engine::load_files(&args.model, args.spec.as_deref())
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.model.display()))?;
    let loaded = start.elapsed();
    let mut session = engine.session()?;
    let limits = DecodeLimits::default();
    if engine.task().is_some() {
        return infer_task(&args, &engine, &mut session, loaded, start);
    }
    if let Some(seconds) = args.bench {
        let bytes = std::fs::read(&args.images[0])?;
        let input = engine.tensor_from_image(&bytes, &limits)?;
        session.classify(&input)?;
        let first = start.elapsed();
        print_bench(
            &args,
            (engine.digest(), engine.int8_choice()),
            loaded,
            first,
            seconds,
            || session.run(&input).map(|_| ()),
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut failed = 0usize;
    for path in &args.images {
        let start = std::time::Instant::now();
        let result = std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                engine
                    .tensor_from_image(&bytes, &limits)
                    .map_err(|e| e.to_string())
            })
            .and_then(|t| session.classify(&t).map_err(|e| e.to_string()));
        let latency_us = start.elapsed().as_micros() as u64;
        match result {
            Ok(p) if args.json => {
                let line = serde_json::json!({
                    "image": path.display().to_string(),
                    "label": p.label,
                    "confidence": p.confidence,
                    "margin": p.margin,
                    "entropy": p.entropy,
                    "latency_us": latency_us,
                    "model": engine.spec().name,
                });
                println!("{line}");
            }
            Ok(p) => println!(
                "{}\tlabel={}\tconfidence={:.4}\tmargin={:.4}\tlatency={}us",
                path.display(),
                p.label,
                p.confidence,
                p.margin,
                latency_us
            ),
            Err(e) => {
                failed += 1;
                eprintln!("error: {}: {e}", path.display());
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `--bench`: times `run` for `seconds` (at least 10 runs) and prints one JSON line with the load and first-answer
/// times and the p50 and p99 of the runs.
fn print_bench(
    args: &InferArgs,
    (digest, int8): (&str, Option<outpost::inference::Int8Choice>),
    loaded: std::time::Duration,
    first: std::time::Duration,
    seconds: f64,
    mut run: impl FnMut() -> Result<(), outpost::inference::InferenceError>,
) -> Result<()> {
    let mut times = Vec::new();
    let until = std::time::Instant::now() + std::time::Duration::from_secs_f64(seconds.max(0.01));
    while std::time::Instant::now() < until || times.len() < 10 {
        let t = std::time::Instant::now();
        run()?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    let line = serde_json::json!({
        "model": args.model.display().to_string(),
        "digest": digest,
        "load_ms": loaded.as_secs_f64() * 1e3,
        "first_answer_ms": first.as_secs_f64() * 1e3,
        "p50_us": at(0.5),
        "p99_us": at(0.99),
        "runs": times.len(),
        "int8": int8,
    });
    println!("{line}");
    Ok(())
}

/// `outpost infer` with a detector or a scorer: each image's boxes (in its pixels) or scores, or `--bench` timing
/// of the whole run (model, decoder and NMS).
fn infer_task(
    args: &InferArgs,
    engine: &outpost::inference::Engine,
    session: &mut outpost::inference::Session,
    loaded: std::time::Duration,
    start: std::time::Instant,
) -> Result<ExitCode> {
    use outpost::inference::task::{AnswerView, Overrides, TaskAnswer, TaskKind};
    use outpost::inference::DecodeLimits;
    #[derive(serde::Serialize)]
    struct Line<'a> {
        image: String,
        task: TaskKind,
        #[serde(flatten)]
        answer: AnswerView<'a>,
        hardness: f32,
        latency_us: u64,
        model: &'a str,
    }
    let limits = DecodeLimits::default();
    let none = Overrides::default();
    if let Some(seconds) = args.bench {
        let bytes = std::fs::read(&args.images[0])?;
        let (input, fit) = engine.task_input_from_image(&bytes, &limits)?;
        session.run_task(&input, &fit, &none)?;
        let first = start.elapsed();
        print_bench(
            args,
            (engine.digest(), engine.int8_choice()),
            loaded,
            first,
            seconds,
            || session.run_task(&input, &fit, &none).map(|_| ()),
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut failed = 0usize;
    for path in &args.images {
        let t = std::time::Instant::now();
        let result = std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                engine
                    .task_input_from_image(&bytes, &limits)
                    .map_err(|e| e.to_string())
            })
            .and_then(|(input, fit)| {
                session
                    .run_task(&input, &fit, &none)
                    .map(|r| r.0)
                    .map_err(|e| e.to_string())
            });
        let latency_us = t.elapsed().as_micros() as u64;
        match result {
            Ok(d) if args.json => {
                let line = Line {
                    image: path.display().to_string(),
                    task: d.answer.kind(),
                    answer: d.answer.view(),
                    hardness: d.hardness,
                    latency_us,
                    model: &engine.spec().name,
                };
                println!("{}", serde_json::to_string(&line)?);
            }
            Ok(d) => {
                let what = match &d.answer {
                    TaskAnswer::Detections(x) => x
                        .detections
                        .iter()
                        .map(|b| {
                            format!(
                                "{} {:.3} [{:.0} {:.0} {:.0} {:.0}]",
                                b.label, b.score, b.bbox[0], b.bbox[1], b.bbox[2], b.bbox[3]
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; "),
                    TaskAnswer::Scores(x) => x
                        .iter()
                        .map(|s| {
                            format!(
                                "{}={:.4} ({} threshold {})",
                                s.name,
                                s.value,
                                if s.positive { "at or above" } else { "below" },
                                s.threshold
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; "),
                };
                println!(
                    "{}\t{}\t{}\thardness={:.3}\tlatency={}us",
                    path.display(),
                    d.answer.summary(),
                    what,
                    d.hardness,
                    latency_us
                );
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: {}: {e}", path.display());
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn run(args: RunArgs) -> Result<ExitCode> {
    use outpost::config::{Config, LogFormat};
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(v) = args.listen {
        config.api.listen = v;
    }
    if let Some(v) = args.state_dir {
        config.agent.state_dir = v;
    }
    if args.spec.len() > args.model.len() {
        anyhow::bail!(
            "{} --spec for {} --model: give each --spec after its --model",
            args.spec.len(),
            args.model.len()
        );
    }
    if !args.model.is_empty() {
        let entries = args
            .model
            .iter()
            .enumerate()
            .map(|(i, path)| outpost::config::ModelConfig {
                path: Some(path.clone()),
                spec: args.spec.get(i).cloned(),
            })
            .collect();
        config.model.set(entries);
    }
    if let Some(v) = args.workers {
        config.workers.count = v;
    }
    if let Some(v) = args.queue {
        config.workers.queue = v;
    }
    if let Some(v) = args.engine_threads {
        config.engine.threads = v;
    }
    if let Some(v) = args.broker {
        config.fleet.broker = Some(v);
    }
    if let Some(v) = args.device_id {
        config.fleet.device_id = v;
    }
    if let Some(v) = args.group {
        config.fleet.group = Some(v);
    }
    if let Some(v) = args.ca_file {
        config.fleet.ca_file = Some(v);
    }
    if let Some(v) = args.cert_file {
        config.fleet.cert_file = Some(v);
    }
    if let Some(v) = args.key_file {
        config.fleet.key_file = Some(v);
    }
    if let Some(v) = args.trusted_keys {
        config.slots.trusted_keys = Some(v);
    }
    if let Some(v) = args.hardness {
        let (score, t) = v.split_once(':').unwrap_or((v.as_str(), ""));
        config.forward.score = outpost::config::HardnessScore::parse(score).ok_or_else(|| {
            anyhow::anyhow!(
                "--hardness {v}: the score must be max-prob, margin or entropy (e.g. max-prob:0.9)"
            )
        })?;
        config.forward.threshold = Some(t.parse().map_err(|_| {
            anyhow::anyhow!("--hardness {v}: give a number after the colon (e.g. max-prob:0.9)")
        })?);
    }
    if let Some(v) = args.cloud_deadline_ms {
        config.forward.deadline_ms = v;
    }
    if let Some(v) = args.cloud_keys {
        config.forward.cloud_keys = Some(v);
    }
    if let Some(v) = args.log_format {
        config.log.format = match v.as_str() {
            "plain" => LogFormat::Plain,
            "json" => LogFormat::Json,
            other => anyhow::bail!("--log-format {other}: use plain or json"),
        };
    }
    config.validate()?;
    outpost::telemetry::init_tracing(config.log.format, &config.log.level)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            signals.cancel();
        });
        outpost::agent::run(config, shutdown).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM (systemd stop) or SIGINT (Ctrl-C).
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn install(
    state: StateArgs,
    keys: Option<PathBuf>,
    threshold: Option<usize>,
    candidate: bool,
    bundle: PathBuf,
) -> Result<ExitCode> {
    use outpost::bundle::Policy;
    use outpost::slots::install;
    let mut config = state.config()?;
    // The flags stand for the key files, which only a device without a stored trust reads (its version 1).
    let flags = keys.is_some() || threshold.is_some();
    if let Some(k) = keys {
        config.slots.trusted_keys = Some(k);
    }
    if let Some(t) = threshold {
        config.slots.threshold = t;
    }
    let had = outpost::trust::TrustDir::new(&config.agent.state_dir)
        .read()
        .ok()
        .flatten()
        .is_some();
    let trust = outpost::trust::console::stored_or_derived(&config, false)
        .map_err(|e| anyhow::anyhow!("{}: refused: {e}", bundle.display()))?;
    if had && flags {
        eprintln!(
            "note: this device's trust (version {}) decides which keys sign bundles; --trusted-keys and --threshold \
             are read only before its first trust (README, Keys and rotation)",
            trust.version()
        );
    }
    let (keys, threshold) = trust
        .role(outpost::trust::Role::Bundles)
        .map(|(k, t)| (k.clone(), t))
        .unwrap_or_default();
    // The device's time floor, as the daemon keeps it: a hand-run install judges expiry the same way, and raises it.
    let clock = outpost::clock::Clock::open(&config.agent.state_dir);
    let policy = Policy {
        keys: &keys,
        threshold,
        time: clock.reading(),
        agent_version: env!("CARGO_PKG_VERSION"),
        trust_version: Some(trust.version()),
    };
    let file =
        std::fs::File::open(&bundle).map_err(|e| anyhow::anyhow!("{}: {e}", bundle.display()))?;
    let mut reader = std::io::BufReader::new(file);
    let refused = |e: &dyn std::fmt::Display| anyhow::anyhow!("{}: refused: {e}", bundle.display());
    let header = outpost::bundle::read_header(&mut reader, &policy).map_err(|e| refused(&e))?;

    // The bundle installs into the model it names, which the device adds if it does not hold it yet.
    let name = header.manifest.name.clone();
    if let Some(m) = state.model.as_deref().filter(|m| *m != name) {
        return Err(refused(&format!(
            "the bundle is a release of model {name:?}, not of {m:?}"
        )));
    }
    let (repo, _) = outpost::agent::open_repository(&config)?;
    // Its signature holds, so its issue time is a time that has passed (the state dir exists from here).
    clock.observe(header.manifest.created_unix);
    repo.check_room(&name, config.repository.max_models)
        .map_err(|e| refused(&e))?;
    // The largest variant is what the chosen one may weigh.
    let largest = header
        .manifest
        .variants
        .iter()
        .map(|v| v.size)
        .max()
        .unwrap_or(0);
    repo.check_engine_bytes(
        &name,
        largest,
        outpost::repo::base_bytes(&config),
        config.repository.max_engine_bytes,
    )
    .map_err(|e| refused(&e))?;
    // Room for every variant (they are staged beside the slots until one passes its gate), checked before a byte
    // is written.
    let variants: u64 = header.manifest.variants.iter().map(|v| v.size).sum();
    outpost::store::space::check_room(repo.root(), variants, config.storage.keep_free())
        .map_err(|e| refused(&e))?;
    // A model the device does not hold yet appears only once its install succeeds.
    let staged = repo.stage(&name).map_err(|e| refused(&e))?;
    let mode = if candidate {
        install::Mode::Candidate
    } else {
        install::Mode::Trial
    };
    let (installed, _) = install::install_verified(&staged.store, &header, &mut reader, mode)
        .map_err(|e| refused(&e))?;
    staged.commit().map_err(|e| refused(&e))?;
    println!(
        "{}",
        serde_json::json!({
            "model": name,
            "installed": installed.info,
            "slot": installed.slot.name(),
            "candidate": candidate,
            "variants": installed.trials.iter().map(|(n, r)| match r {
                Ok(us) => serde_json::json!({"variant": n, "median_us": us}),
                Err(e) => serde_json::json!({"variant": n, "rejected": e.to_string()}),
            }).collect::<Vec<_>>(),
        })
    );
    Ok(ExitCode::SUCCESS)
}

/// The bundles role a rollback or activation checks the target release's signers against; none on a device that
/// never had a trust (no key files: nothing was ever revoked there). A trust file gone or corrupt is an error.
fn bundle_keys(
    config: &outpost::config::Config,
) -> Result<Option<(outpost::bundle::TrustedKeys, usize)>> {
    match outpost::trust::console::stored_or_derived(config, false) {
        Ok(trust) => Ok(trust
            .role(outpost::trust::Role::Bundles)
            .map(|(k, t)| (k.clone(), t))),
        Err(outpost::trust::TrustError::NoTrust) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn rollback(state: StateArgs) -> Result<ExitCode> {
    let config = state.config()?;
    let keys = bundle_keys(&config)?;
    let (_, store) = outpost::agent::model_slots(&config, state.model.as_deref())?;
    let (next, ()) = store.update(|s| match &keys {
        Some((k, t)) => Ok((s.rollback_trusted(k, *t)?, ())),
        None => Ok((s.rollback()?, ())),
    })?;
    println!("{}", serde_json::to_string(&next)?);
    Ok(ExitCode::SUCCESS)
}

fn activate(state: StateArgs, version: u64) -> Result<ExitCode> {
    let config = state.config()?;
    let keys = bundle_keys(&config)?;
    let (_, store) = outpost::agent::model_slots(&config, state.model.as_deref())?;
    let (next, ()) = store.update(|s| match &keys {
        Some((k, t)) => Ok((s.activate_trusted(version, k, *t)?, ())),
        None => Ok((s.activate(version)?, ())),
    })?;
    println!("{}", serde_json::to_string(&next)?);
    Ok(ExitCode::SUCCESS)
}

fn promote(state: StateArgs) -> Result<ExitCode> {
    let config = state.config()?;
    let (_, store) = outpost::agent::model_slots(&config, state.model.as_deref())?;
    let (next, ()) = store.update(|s| Ok((s.commit()?, ())))?;
    println!("{}", serde_json::to_string(&next)?);
    Ok(ExitCode::SUCCESS)
}

fn status(state: StateArgs) -> Result<ExitCode> {
    let config = state.config()?;
    let (_, store) = outpost::agent::model_slots(&config, state.model.as_deref())?;
    println!("{}", serde_json::to_string(&store.load()?)?);
    Ok(ExitCode::SUCCESS)
}

fn trust(command: TrustCommand) -> Result<ExitCode> {
    use outpost::trust::{console, LiveTrust};
    match command {
        TrustCommand::Apply { state, files } => {
            let config = state.config()?;
            let applied = console::apply(&config, &files)?;
            if applied.to == applied.from {
                println!("trust unchanged at version {}", applied.to);
            } else {
                println!("trust version {} -> {}", applied.from, applied.to);
            }
        }
        TrustCommand::Reset { state, file } => {
            let config = state.config()?;
            let t = console::reset(&config, &file)?;
            println!(
                "trust reset to version {} (root {:?}); recorded in the status",
                t.version(),
                t.root_ids()
            );
        }
        TrustCommand::Show { state } => {
            let config = state.config()?;
            let derived = outpost::trust::live::from_config(&config);
            let live = LiveTrust::open_with(&config.agent.state_dir, derived, false);
            println!("{}", serde_json::to_string_pretty(&live.status())?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
