//! `outpostctl`: the operator's tool. Same library as the agent, so signing and verifying cannot drift.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use outpost::bundle::{self, Policy, SigningKeyFile, TrustedKeys};
use outpost::fleet::operator::{self, Outgoing};
use outpost::inference::ModelSpec;
use outpost::wire::command::Action;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "outpostctl",
    version,
    about = "Operator tool for Outpost: keys, bundles, fleet commands, updates and status"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a signing key (written 0600); prints the line to append to a trusted-keys file.
    Keygen {
        /// Private key file to create.
        #[arg(long)]
        out: PathBuf,
        /// Comment for the trusted-keys line.
        #[arg(long, default_value = "operator")]
        name: String,
    },
    /// Build and sign a bundle.
    Bundle(BundleArgs),
    /// Compile an ONNX model into tract's NNEF form, the form the slim device build reads (`outpost infer` and
    /// `--model` take it as they take ONNX). Bundles do this themselves (`bundle --forms`).
    Compile {
        #[arg(long)]
        model: PathBuf,
        /// Model spec (JSON); defaults to <model stem>.spec.json beside the model.
        #[arg(long)]
        spec: Option<PathBuf>,
        /// kernels: as it is (a real-int8 file keeps tract's integer operators); qdq: a real-int8 file in its QDQ
        /// form on float kernels (what CPUs without int8 dot products run); qdq-float-ops: the QDQ form with
        /// quantization spelled out in tract-core's float operators.
        #[arg(long, default_value = "kernels")]
        form: outpost::inference::onnx::NnefForm,
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a bundle's signatures and model digests against a trusted-keys file.
    Verify {
        #[arg(long)]
        keys: PathBuf,
        #[arg(long, default_value_t = 1)]
        threshold: usize,
        bundle: PathBuf,
    },
    /// Show a bundle's manifest (no trust implied).
    Inspect {
        #[arg(long)]
        json: bool,
        bundle: PathBuf,
    },
    /// Offer a signed bundle to a device or group over MQTT, serve its chunks, and wait for the install.
    Publish(PublishArgs),
    /// Send a signed command: status, rollback, promote, set KEY VALUE, purge-cache.
    Cmd(CmdArgs),
    /// Show the live status of every device (retained status messages).
    Watch(WatchArgs),
    /// Run a reference cloud-tier worker: answer hard cases with the bigger model and keep them as a dataset.
    Cloud(CloudArgs),
    /// Gradual rollout of a bundle over a group: waves, shadow evaluation, gates, automatic halt.
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// Run N simulated agents in this process against a broker (each its own MQTT session, state and slots).
    Simulate(SimulateArgs),
    /// The fleet's trust document: the keys devices trust for each role, rotated and revoked over the air (README,
    /// Keys and rotation).
    #[command(subcommand)]
    Trust(TrustCommand),
    /// Add signatures to a bundle without changing its manifest or models (what `bundle resign` would be: after a
    /// rotation removed the key that signed it).
    Resign {
        /// Signing key file(s) to add.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        bundle: PathBuf,
    },
    /// Serve bundle chunks to devices through the broker (several servers may run at once).
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct PublishArgs {
    #[command(flatten)]
    mqtt: MqttArgs,
    #[command(flatten)]
    to: TargetArgs,
    /// Signing key(s) for the offer.
    #[arg(long = "key", required = true)]
    keys: Vec<PathBuf>,
    /// Chunk size in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    chunk_size: u32,
    /// Seconds to wait for the device's acknowledgement (for a group: to collect them).
    #[arg(long, default_value_t = 600)]
    wait: u64,
    /// Do not serve chunks from this process (other `outpostctl serve` processes do).
    #[arg(long)]
    no_serve: bool,
    /// Print acknowledgements as JSON lines, no progress bar.
    #[arg(long)]
    json: bool,
    bundle: PathBuf,
}

#[derive(clap::Args)]
struct CmdArgs {
    #[command(flatten)]
    mqtt: MqttArgs,
    #[command(flatten)]
    to: TargetArgs,
    #[arg(long = "key", required = true)]
    keys: Vec<PathBuf>,
    /// Sequence number (default: Unix milliseconds).
    #[arg(long)]
    seq: Option<u64>,
    /// Seconds until the command expires.
    #[arg(long, default_value_t = 300)]
    expires_in: u64,
    /// Seconds to wait for acknowledgements.
    #[arg(long, default_value_t = 15)]
    wait: u64,
    /// The model the command acts on (default: the device's default model). Agents from before the model
    /// repository refuse a command that names one.
    #[arg(long)]
    model: Option<String>,
    /// status | rollback | promote | set KEY VALUE | purge-cache | remove (needs --model)
    #[arg(required = true, num_args = 1..=3)]
    command: Vec<String>,
}

#[derive(clap::Args)]
struct WatchArgs {
    #[command(flatten)]
    mqtt: MqttArgs,
    /// JSON lines instead of a table.
    #[arg(long)]
    json: bool,
    /// Stop after this many seconds.
    #[arg(long = "for")]
    duration: Option<u64>,
}

#[derive(clap::Args)]
struct CloudArgs {
    #[command(flatten)]
    mqtt: MqttArgs,
    /// The cloud model: PATH answers every case; NAME=PATH (repeatable) answers the cases of the device model
    /// NAME. Each spec is <model stem>.spec.json beside it, or --spec for a single PATH, or NAME=PATH:SPEC.
    #[arg(long, default_value = "models/cloud-fp32.onnx")]
    model: Vec<String>,
    /// The spec of a single --model PATH (default: <model stem>.spec.json beside it).
    #[arg(long)]
    spec: Option<PathBuf>,
    /// Where the received cases go (cases.jsonl and the images).
    #[arg(long, default_value = "cloud-dataset")]
    dataset: PathBuf,
    /// The worker's signing key (`outpostctl keygen --out cloud.key`). Devices believe only answers signed by
    /// a key listed in their forward.cloud_keys file.
    #[arg(long)]
    key: PathBuf,
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    mqtt: MqttArgs,
    #[arg(long, default_value_t = 64 * 1024)]
    chunk_size: u32,
    #[arg(required = true)]
    bundles: Vec<PathBuf>,
}

#[derive(Subcommand)]
enum TrustCommand {
    /// Version 1 from the devices' key files, byte for byte what a device derives from the same files: the base
    /// the first rotation signs on top of.
    Init {
        /// slots.trusted_keys (the root and bundle keys of version 1).
        #[arg(long)]
        trusted_keys: PathBuf,
        /// fleet.command_keys, when the devices set it.
        #[arg(long)]
        command_keys: Option<PathBuf>,
        /// forward.cloud_keys, when the devices set it.
        #[arg(long)]
        cloud_keys: Option<PathBuf>,
        /// slots.threshold.
        #[arg(long, default_value_t = 1)]
        threshold: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// The next version: keys added to or removed from roles, thresholds changed; signed by a threshold of the
    /// current root keys and of the new root keys. Built on the newest version published on --broker (refusing a
    /// --from file that is older), or on --from alone.
    Rotate {
        #[command(flatten)]
        mqtt: MqttArgs,
        /// Build on this document instead of reading the broker (an offline signing machine); with --online too,
        /// it must be the newest published.
        #[arg(long)]
        from: Option<PathBuf>,
        /// Read the newest published version from --broker.
        #[arg(long)]
        online: bool,
        /// ROLE=KEY: adds a key (a private key file or a trusted-keys line file) to root, bundles, commands or cloud.
        #[arg(long)]
        add: Vec<String>,
        /// ROLE=KEYID: removes a key from a role (a key no role names leaves the document).
        #[arg(long)]
        remove: Vec<String>,
        /// ROLE=N: how many distinct keys of the role must sign.
        #[arg(long)]
        threshold: Vec<String>,
        /// Signing key file(s): a threshold of the current root's and of the new root's.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Publish versions (retained, one topic each) after checking that they chain onto the newest published one;
    /// then re-sign (with --resign-key) or clear the retained commands the newest version would refuse.
    Publish {
        #[command(flatten)]
        mqtt: MqttArgs,
        /// Keys of the new commands role to re-sign retained commands with (without: they are cleared).
        #[arg(long = "resign-key")]
        resign_keys: Vec<PathBuf>,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print a document (FILE) or the published chain (--online) as JSON.
    Show {
        #[command(flatten)]
        mqtt: MqttArgs,
        #[arg(long)]
        online: bool,
        file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RolloutCommand {
    /// Plan a rollout and drive it until done, halted or aborted (exit 0, 3 or 4). Progress is kept in --state:
    /// after a kill, `outpostctl rollout continue` picks it up.
    Start(RolloutStart),
    /// Drive the rollout recorded in --state from where it was.
    Continue {
        #[command(flatten)]
        mqtt: MqttArgs,
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        #[arg(long)]
        state: PathBuf,
        /// Summaries as JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Hold the rollout where it is: no new commands, no gate decisions (takes effect within a second).
    Pause {
        #[arg(long)]
        state: PathBuf,
    },
    Resume {
        #[arg(long)]
        state: PathBuf,
    },
    /// Stop the rollout and abandon the version on every device of the group.
    Abort {
        #[arg(long)]
        state: PathBuf,
        #[arg(long, default_value = "aborted by the operator")]
        reason: String,
    },
    /// Print the recorded progress.
    Status {
        #[arg(long)]
        state: PathBuf,
    },
}

#[derive(clap::Args)]
struct RolloutStart {
    #[command(flatten)]
    mqtt: MqttArgs,
    #[arg(long = "key", required = true)]
    keys: Vec<PathBuf>,
    /// Directory for the rollout's durable progress (created).
    #[arg(long)]
    state: PathBuf,
    #[arg(long)]
    group: String,
    /// Rollout name on the broker (default: <bundle name>-v<version>).
    #[arg(long)]
    name: Option<String>,
    /// Cumulative percentages of the group, the last 100.
    #[arg(long, value_delimiter = ',', default_value = "1,10,50,100")]
    waves: Vec<f64>,
    /// Seconds of shadow evaluation per wave before it goes live (0: straight to trial).
    #[arg(long, default_value_t = 60)]
    shadow_s: u64,
    /// Fraction of requests the candidate shadows (sent with it; default: each device's setting).
    #[arg(long)]
    shadow_fraction: Option<f32>,
    /// A/B: fraction of inputs the candidate answers during the shadow phase.
    #[arg(long)]
    split: Option<f32>,
    /// Gate: devices that must report, at least...
    #[arg(long, default_value_t = 1)]
    min_devices: usize,
    /// ...and this share of the wave.
    #[arg(long, default_value_t = 0.9)]
    min_reporting: f64,
    /// Gate: seconds each phase is observed at least.
    #[arg(long, default_value_t = 60)]
    observe_s: u64,
    /// Gate: halt above this share of rollbacks and failures in a wave.
    #[arg(long, default_value_t = 0.2)]
    max_failure_rate: f64,
    /// Gate: halt below this shadow agreement with the live model.
    #[arg(long, default_value_t = 0.9)]
    min_agreement: f64,
    /// Shadow runs a device needs before its figures count.
    #[arg(long, default_value_t = 20)]
    min_shadow_runs: u64,
    /// Gate: halt when the candidate's mean confidence in shadow is this much below the live model's (1 disables).
    #[arg(long, default_value_t = 0.1)]
    max_confidence_drop: f64,
    /// Halt when a phase has not passed its gate after this many seconds (0: wait for the devices forever).
    #[arg(long, default_value_t = 0)]
    phase_timeout_s: u64,
    #[arg(long, default_value_t = 64 * 1024)]
    chunk_size: u32,
    #[arg(long)]
    json: bool,
    bundle: PathBuf,
}

#[derive(clap::Args)]
struct SimulateArgs {
    #[command(flatten)]
    mqtt: MqttArgs,
    #[arg(long, default_value_t = 100)]
    agents: usize,
    #[arg(long, default_value = "sim")]
    group: String,
    #[arg(long, default_value = "sim")]
    prefix: String,
    /// Root of the agents' state directories.
    #[arg(long, default_value = "sim-state")]
    dir: PathBuf,
    /// Trusted operator keys for every agent.
    #[arg(long)]
    trusted_keys: PathBuf,
    #[arg(long, default_value = "models/data/test")]
    images: PathBuf,
    /// Requests per second over the whole fleet.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Probation: runs until a trial commits.
    #[arg(long, default_value_t = 40)]
    probation_requests: u64,
    /// Probation: runs needed on each side before drift and latency are judged.
    #[arg(long, default_value_t = 30)]
    probation_min_samples: u64,
    /// Probation latency check: ratio (generous by default: many agents share two cores).
    #[arg(long, default_value_t = 20.0)]
    probation_latency_ratio: f64,
    /// Probation latency check: slack added to the bound (ms). Scheduler stalls of 50 ms are common with many agents
    /// on two cores, and with a fast live model (the int8 edge model runs in ~0.1 ms) the ratio alone gives no room.
    #[arg(long, default_value_t = 100.0)]
    probation_latency_slack_ms: f64,
    #[arg(long, default_value_t = 1)]
    heartbeat_s: u64,
    /// Inference threads shared by all agents (0: one per core).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Share of one core for all shadow runs together.
    #[arg(long, default_value_t = 0.5)]
    shadow_cpu_share: f64,
    /// Stop after this many seconds (default: at Ctrl-C or SIGTERM).
    #[arg(long = "for")]
    duration: Option<u64>,
    /// Write one JSON line per agent here at exit.
    #[arg(long)]
    report: Option<PathBuf>,
    /// A model every agent serves (its spec beside it, `<stem>.spec.json`); repeat for several models per agent,
    /// the first being each agent's default. Default: the built-in edge model alone.
    #[arg(long = "model")]
    models: Vec<PathBuf>,
}

#[derive(clap::Args, Clone)]
struct MqttArgs {
    /// mqtt://host:port or mqtts://host:port
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    broker: String,
    /// CA certificate of the broker (PEM), for mqtts://.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    #[arg(long)]
    cert_file: Option<PathBuf>,
    #[arg(long)]
    key_file: Option<PathBuf>,
}

impl MqttArgs {
    fn settings(&self, role: &str) -> Result<outpost::fleet::mqtt::Settings> {
        let mut id = [0u8; 4];
        let _ = getrandom::fill(&mut id);
        Ok(outpost::fleet::mqtt::Settings {
            broker: outpost::fleet::mqtt::Broker::parse(&self.broker)?,
            client_id: format!("outpostctl-{role}-{}", hex::encode(id)),
            tls: outpost::fleet::mqtt::TlsFiles {
                ca: self.ca_file.clone(),
                cert: self.cert_file.clone(),
                key: self.key_file.clone(),
            },
            keep_alive: std::time::Duration::from_secs(30),
            max_packet: 8 * 1024 * 1024,
            session_expiry_s: 0,
            last_will: None,
        })
    }
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct TargetArgs {
    /// Target device id.
    #[arg(long)]
    device: Option<String>,
    /// Target group.
    #[arg(long)]
    group: Option<String>,
}

impl TargetArgs {
    fn target(&self) -> outpost::wire::command::Target {
        use outpost::wire::command::Target;
        match (&self.device, &self.group) {
            (Some(d), _) => Target::Device(d.clone()),
            (None, Some(g)) => Target::Group(g.clone()),
            (None, None) => unreachable!("clap requires one of --device and --group"),
        }
    }
}

#[derive(clap::Args)]
struct BundleArgs {
    /// The model (variant named `default`), or use --variant.
    #[arg(long)]
    model: Option<PathBuf>,
    /// NAME=PATH, repeatable: several variants of one model (e.g. int8=edge-int8.onnx fp32=edge-fp32.onnx).
    #[arg(long = "variant")]
    variants: Vec<String>,
    #[arg(long)]
    spec: PathBuf,
    /// The model this bundle is a release of, on the device (default: the spec's name). A device installs it into
    /// that model's slots, adding the model if it does not hold it yet.
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    version: u64,
    /// Signing key file(s); repeat for k-of-n.
    #[arg(long = "key", required = true)]
    keys: Vec<PathBuf>,
    #[arg(long)]
    out: PathBuf,
    /// Days until the bundle expires.
    #[arg(long, default_value_t = 30)]
    expires_days: u64,
    /// Directory of PNG/JPEG images for the on-device quality gate (first 8 used).
    #[arg(long)]
    golden_images: Option<PathBuf>,
    /// For a raw tensor model (a spec that lists tensors): a JSON file of golden cases for the on-device gate, a
    /// list of cases each a list of {name, datatype, shape, data} in the spec's input order (first 8 used).
    #[arg(long)]
    golden_tensors: Option<PathBuf>,
    #[arg(long, default_value_t = 0.05)]
    tolerance: f32,
    #[arg(long)]
    hardness_threshold: Option<f32>,
    /// Which forms of each ONNX variant the bundle carries: both (default: the ONNX file and tract's NNEF form of
    /// it, plus its QDQ form for a real-int8 file, so full and slim device builds both install it), nnef (slim
    /// fleets: the smallest download) or onnx (agents from before NNEF variants).
    #[arg(long, default_value = "both")]
    forms: bundle::build::Forms,
    /// The release's forward budget: at most this share (0..1) of its model runs go to the cloud (the device's
    /// forward.max_fraction, when set, wins).
    #[arg(long)]
    max_fraction: Option<f32>,
    /// ... and at most this many cases per second.
    #[arg(long)]
    max_per_s: Option<f32>,
    /// Directory of PNG/JPEG calibration images: the release's hardness on them is its drift baseline, which the
    /// device compares live traffic with (first 4096 used).
    #[arg(long)]
    calibration: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Rollout { command } => rollout(command),
        Command::Simulate(args) => {
            let _ = outpost::telemetry::init_tracing(outpost::config::LogFormat::Plain, "warn");
            raise_fd_limit();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(simulate(args))
        }
        c @ (Command::Publish(_)
        | Command::Cmd(_)
        | Command::Watch(_)
        | Command::Serve(_)
        | Command::Cloud(_)) => {
            let _ = outpost::telemetry::init_tracing(outpost::config::LogFormat::Plain, "warn");
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(fleet(c))
        }
        Command::Trust(t) => {
            let _ = outpost::telemetry::init_tracing(outpost::config::LogFormat::Plain, "warn");
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(trust(t))
        }
        Command::Resign { keys, out, bundle } => {
            let keys = load_keys(&keys)?;
            let refs: Vec<&SigningKeyFile> = keys.iter().collect();
            let mut r = std::io::BufReader::new(
                std::fs::File::open(&bundle)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", bundle.display()))?,
            );
            let mut buf = Vec::new();
            let added = outpost::bundle::resign(&mut r, &mut buf, &refs)?;
            outpost::fsutil::write_atomic(&out, &buf)
                .map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
            eprintln!("added {added} signature(s); wrote {}", out.display());
            Ok(())
        }
        Command::Keygen { out, name } => {
            let key = SigningKeyFile::generate()?;
            key.save(&out)?;
            eprintln!(
                "wrote private key {} (id {}); append this line to the devices' trusted keys:",
                out.display(),
                key.id()
            );
            println!("{}", key.trusted_line(&name));
            Ok(())
        }
        Command::Bundle(args) => make_bundle(args),
        Command::Compile {
            model,
            spec,
            form,
            out,
        } => {
            use outpost::inference::onnx::compile;
            let spec_path = spec.unwrap_or_else(|| ModelSpec::default_path_for(&model));
            let spec = ModelSpec::from_file(&spec_path)?;
            let bytes = std::fs::read(&model).with_context(|| model.display().to_string())?;
            let compiled =
                compile(&bytes, &spec, form).with_context(|| model.display().to_string())?;
            outpost::fsutil::write_atomic(&out, &compiled.bytes)
                .with_context(|| out.display().to_string())?;
            eprintln!(
                "wrote {} ({} bytes, tract {}, {} int8 operator(s) kept, {} rewritten to QDQ)",
                out.display(),
                compiled.bytes.len(),
                outpost::inference::nnef::TRACT_VERSION,
                compiled.int8_kernel_ops,
                compiled.dequantized_ops
            );
            Ok(())
        }
        Command::Verify {
            keys,
            threshold,
            bundle,
        } => {
            let keys = TrustedKeys::from_file(&keys)?;
            let mut f = std::io::BufReader::new(
                std::fs::File::open(&bundle).with_context(|| bundle.display().to_string())?,
            );
            let policy = Policy {
                keys: &keys,
                threshold,
                time: outpost::clock::Reading::clock_only(bundle::now_unix()),
                agent_version: env!("CARGO_PKG_VERSION"),
                trust_version: None,
            };
            let header = bundle::read_header(&mut f, &policy)
                .with_context(|| bundle.display().to_string())?;
            for v in &header.manifest.variants {
                bundle::copy_variant(&mut f, &mut std::io::sink(), v)
                    .with_context(|| bundle.display().to_string())?;
            }
            bundle::expect_end(&mut f).with_context(|| bundle.display().to_string())?;
            println!(
                "OK: {} version {} signed by {} ({} variant(s))",
                header.manifest.name,
                header.manifest.version,
                header.signers.join(", "),
                header.manifest.variants.len()
            );
            Ok(())
        }
        Command::Inspect { json, bundle } => {
            let mut f = std::io::BufReader::new(
                std::fs::File::open(&bundle).with_context(|| bundle.display().to_string())?,
            );
            let (m, _, _, sigs) = bundle::read_header_unverified(&mut f)
                .with_context(|| bundle.display().to_string())?;
            let variants: Vec<_> = m
                .variants
                .iter()
                .map(|v| serde_json::json!({"name": v.name, "size": v.size, "sha256": hex::encode(v.sha256)}))
                .collect();
            let summary = serde_json::json!({
                "name": m.name, "version": m.version, "created_unix": m.created_unix, "expires_unix": m.expires_unix,
                "min_agent_version": m.min_agent_version, "input_shape": m.spec.input.shape, "labels": m.spec.labels.len(),
                "golden_cases": m.golden_inputs.len() + m.golden_tensors.len(), "golden_tolerance": m.golden_tolerance,
                "tensors": m.spec.tensors, "task": m.spec.kind(), "budget": m.budget,
                "baseline": m.baseline.as_ref().map(|b| serde_json::json!({
                    "score": b.score, "values": b.hardness.len(), "forward_rate": b.forward_rate,
                })),
                "hardness_threshold": m.hardness_threshold, "variants": variants,
                "signatures": sigs.iter().map(|s| s.key_id.clone()).collect::<Vec<_>>(),
            });
            if json {
                println!("{summary}");
            } else {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            }
            Ok(())
        }
    }
}

fn make_bundle(args: BundleArgs) -> Result<()> {
    let mut spec = ModelSpec::from_file(&args.spec)?;
    if let Some(name) = &args.name {
        spec.name = name.clone();
    }
    outpost::repo::check_name(&spec.name)
        .map_err(|e| anyhow::anyhow!("{e} (set it with --name, or fix the spec's name)"))?;
    let mut named: Vec<(String, PathBuf)> = Vec::new();
    if let Some(m) = &args.model {
        named.push(("default".into(), m.clone()));
    }
    for v in &args.variants {
        let (n, p) = v.split_once('=').context("--variant takes NAME=PATH")?;
        named.push((n.to_string(), PathBuf::from(p)));
    }
    if named.is_empty() {
        bail!("give the model with --model <onnx> or --variant NAME=PATH");
    }
    let images_in = |dir: &std::path::Path, max: usize| -> Result<Vec<Vec<u8>>> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| dir.display().to_string())?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|x| x == "png" || x == "jpg" || x == "jpeg")
            })
            .collect();
        paths.sort();
        paths
            .into_iter()
            .take(max)
            .map(|p| std::fs::read(&p).with_context(|| p.display().to_string()))
            .collect()
    };
    let golden_images = match &args.golden_images {
        Some(dir) => images_in(dir, bundle::build::MAX_GOLDEN)?,
        None => Vec::new(),
    };
    let calibration = match &args.calibration {
        Some(dir) => images_in(dir, bundle::MAX_BASELINE)?,
        None => Vec::new(),
    };
    let golden_tensors = match &args.golden_tensors {
        Some(p) => bundle::build::golden_tensors_from_json(
            &std::fs::read(p).with_context(|| p.display().to_string())?,
        )
        .with_context(|| p.display().to_string())?,
        None => Vec::new(),
    };
    let mut variants = Vec::new();
    for (name, path) in &named {
        let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
        variants.push((name.clone(), bytes));
    }
    let keys = args
        .keys
        .iter()
        .map(|k| SigningKeyFile::load(k))
        .collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<&SigningKeyFile> = keys.iter().collect();
    let buf = bundle::build::build(bundle::build::Build {
        spec,
        variants,
        golden_images,
        golden_tensors,
        version: args.version,
        expires_in_s: args.expires_days * 86_400,
        tolerance: args.tolerance,
        hardness_threshold: args.hardness_threshold,
        keys: &refs,
        forms: args.forms,
        budget: (args.max_fraction.is_some() || args.max_per_s.is_some()).then_some(
            bundle::ForwardBudget {
                max_fraction: args.max_fraction,
                max_per_s: args.max_per_s,
            },
        ),
        calibration,
    })?;
    outpost::fsutil::write_atomic(&args.out, &buf)
        .with_context(|| args.out.display().to_string())?;
    let (manifest, ..) = bundle::read_header_unverified(&mut buf.as_slice())?;
    let names: Vec<&str> = manifest.variants.iter().map(|v| v.name.as_str()).collect();
    eprintln!(
        "wrote {} ({} bytes, version {}, variants {}, {} signature(s))",
        args.out.display(),
        buf.len(),
        args.version,
        names.join(", "),
        keys.len()
    );
    Ok(())
}

fn load_keys(paths: &[PathBuf]) -> Result<Vec<SigningKeyFile>> {
    paths
        .iter()
        .map(|p| SigningKeyFile::load(p).with_context(|| p.display().to_string()))
        .collect()
}

/// Shows a download's progress from the device's status, and acknowledgements.
struct Shown {
    bar: Option<indicatif::ProgressBar>,
    json: bool,
}

impl outpost::fleet::operator::Progress for Shown {
    fn status(&mut self, status: &outpost::wire::status::OnlineStatus) {
        if let (Some(bar), Some(d)) = (&self.bar, &status.service.download) {
            bar.set_length(d.chunks_total);
            bar.set_position(d.chunks_done);
            bar.set_message(format!("{}: version {}", status.device, d.version));
        }
    }

    fn ack(&mut self, ack: &outpost::wire::status::Ack) {
        if self.json {
            println!("{}", ack.to_json());
        }
    }
}

/// The fleet commands: one signal (Ctrl-C) cancels whichever runs.
async fn fleet(c: Command) -> Result<()> {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        token.cancel();
    });
    match c {
        Command::Serve(a) => serve(a, shutdown).await,
        Command::Watch(a) => watch(a, shutdown).await,
        Command::Cmd(a) => cmd(a, shutdown).await,
        Command::Publish(a) => publish(a, shutdown).await,
        Command::Cloud(a) => cloud(a, shutdown).await,
        _ => unreachable!("only fleet commands come here"),
    }
}

async fn publish(a: PublishArgs, shutdown: tokio_util::sync::CancellationToken) -> Result<()> {
    let PublishArgs {
        mqtt,
        to,
        keys,
        chunk_size,
        wait,
        no_serve,
        json,
        bundle,
    } = a;
    let offer = outpost::fleet::serve::make_offer(&bundle, chunk_size)?;
    let keys = load_keys(&keys)?;
    let refs: Vec<&SigningKeyFile> = keys.iter().collect();
    let settings = mqtt.settings("publish")?;
    if !no_serve {
        let (s, o, b, t) = (
            mqtt.settings("serve")?,
            offer.clone(),
            bundle.clone(),
            shutdown.clone(),
        );
        let served = std::sync::Arc::new(outpost::fleet::serve::Served::default());
        tokio::spawn(async move {
            if let Err(e) = outpost::fleet::serve::serve(s, vec![(o, b)], served, t).await {
                eprintln!("error: serving chunks: {e}");
            }
        });
    }
    let (client, mut events) = operator::connect(&settings, shutdown.clone()).await?;
    let bar = (!json).then(|| {
        let b = indicatif::ProgressBar::new(offer.chunks.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {pos}/{len} chunks {elapsed}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    if !json {
        eprintln!(
            "offering {} version {} ({} bytes, {} chunks of {chunk_size})",
            offer.name,
            offer.version,
            offer.size,
            offer.chunks.len()
        );
    }
    let started = std::time::Instant::now();
    let out = Outgoing {
        target: to.target(),
        action: Action::Update(offer),
        model: None,
        seq: operator::default_seq(),
        expires_in: Duration::from_secs(wait.max(60)),
    };
    let mut shown = Shown { bar, json };
    let acks = operator::send(
        &client,
        &mut events,
        &out,
        &refs,
        Duration::from_secs(wait),
        &mut shown,
    )
    .await?;
    if let Some(b) = &shown.bar {
        b.finish_and_clear();
    }
    shutdown.cancel();
    let _ = client.disconnect().await;
    if acks.is_empty() {
        bail!("no device acknowledged the update within {wait} s (is it online? see `outpostctl watch`)");
    }
    if !json {
        for a in &acks {
            eprintln!("{}", operator::update_line(a, started.elapsed()));
        }
    }
    if acks.iter().any(|a| !a.ok) {
        bail!("the update was refused");
    }
    Ok(())
}

async fn cmd(a: CmdArgs, shutdown: tokio_util::sync::CancellationToken) -> Result<()> {
    let CmdArgs {
        mqtt,
        to,
        keys,
        seq,
        expires_in,
        wait,
        model,
        command,
    } = a;
    let action = operator::action_of(&command, model.is_some())?;
    if let Some(m) = &model {
        outpost::repo::check_name(m)?;
    }
    let keys = load_keys(&keys)?;
    let refs: Vec<&SigningKeyFile> = keys.iter().collect();
    let (client, mut events) = operator::connect(&mqtt.settings("cmd")?, shutdown).await?;
    let out = Outgoing {
        target: to.target(),
        action,
        model,
        seq: seq.unwrap_or_else(operator::default_seq),
        expires_in: Duration::from_secs(expires_in),
    };
    let mut shown = Shown {
        bar: None,
        json: true,
    };
    let acks = operator::send(
        &client,
        &mut events,
        &out,
        &refs,
        Duration::from_secs(wait),
        &mut shown,
    )
    .await?;
    let _ = client.disconnect().await;
    if acks.is_empty() {
        bail!("no acknowledgement within {wait} s (is the device online? see `outpostctl watch`)");
    }
    if acks.iter().any(|a| !a.ok) {
        bail!(
            "refused or failed: {}",
            acks.iter()
                .filter_map(|a| a.error.as_deref())
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(())
}

async fn watch(a: WatchArgs, shutdown: tokio_util::sync::CancellationToken) -> Result<()> {
    let WatchArgs {
        mqtt,
        json,
        duration,
    } = a;
    let (client, mut events) =
        operator::connect(&mqtt.settings("watch")?, shutdown.clone()).await?;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    operator::watch(
        &client,
        &mut events,
        duration.map(Duration::from_secs),
        shutdown,
        |fleet, last| {
            if json {
                println!("{}", String::from_utf8_lossy(last));
            } else {
                // On a terminal the table replaces the last one.
                if tty {
                    print!("\x1b[2J\x1b[H");
                }
                print!("{}", fleet.table());
            }
        },
    )
    .await?;
    Ok(())
}

async fn cloud(a: CloudArgs, shutdown: tokio_util::sync::CancellationToken) -> Result<()> {
    let CloudArgs {
        mqtt,
        model,
        spec,
        dataset,
        key,
    } = a;
    let key = std::sync::Arc::new(SigningKeyFile::load(&key).with_context(|| {
        format!(
            "the cloud worker signs its answers with {}: make it with `outpostctl keygen --out {}`",
            key.display(),
            key.display()
        )
    })?);
    let (models, engine) = outpost::fleet::cloud::CloudModels::from_args(&model, spec.as_deref())?;
    let models = std::sync::Arc::new(models);
    eprintln!(
        "cloud worker: {} ({}), signing key {}, dataset in {}",
        engine.spec().name,
        engine.digest(),
        key.id(),
        dataset.display()
    );
    let stats = std::sync::Arc::new(outpost::fleet::cloud::WorkerStats::default());
    outpost::fleet::cloud::run_worker(
        mqtt.settings("cloud")?,
        models,
        key,
        dataset,
        stats.clone(),
        shutdown,
    )
    .await?;
    use std::sync::atomic::Ordering::Relaxed;
    eprintln!(
        "answered {}, stored {}, duplicates {}, refused {}",
        stats.answered.load(Relaxed),
        stats.stored.load(Relaxed),
        stats.duplicates.load(Relaxed),
        stats.refused.load(Relaxed)
    );
    Ok(())
}

async fn serve(a: ServeArgs, shutdown: tokio_util::sync::CancellationToken) -> Result<()> {
    let ServeArgs {
        mqtt,
        chunk_size,
        bundles,
    } = a;
    let mut offers = Vec::new();
    for b in &bundles {
        let o = outpost::fleet::serve::make_offer(b, chunk_size)?;
        eprintln!(
            "serving {} version {} ({} bytes, {} chunks) as {}",
            o.name,
            o.version,
            o.size,
            o.chunks.len(),
            o.bundle_hex()
        );
        offers.push((o, b.clone()));
    }
    let served = std::sync::Arc::new(outpost::fleet::serve::Served::default());
    outpost::fleet::serve::serve(mqtt.settings("serve")?, offers, served.clone(), shutdown).await?;
    eprintln!(
        "served {} chunks",
        served.chunks.load(std::sync::atomic::Ordering::Relaxed)
    );
    Ok(())
}

/// Many agents mean many sockets and files: take the hard limit on open files.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn exit_for(phase: &outpost::rollout::Phase) -> Result<()> {
    use outpost::rollout::Phase;
    match phase {
        Phase::Done => Ok(()),
        Phase::Halted(r) => {
            eprintln!("rollout halted: {r}");
            std::process::exit(3)
        }
        Phase::Aborted(r) => {
            eprintln!("rollout aborted: {r}");
            std::process::exit(4)
        }
        other => {
            eprintln!(
                "rollout stopped in phase {} (run `outpostctl rollout continue` to go on)",
                other.name()
            );
            std::process::exit(5)
        }
    }
}

fn rollout(c: RolloutCommand) -> Result<()> {
    use outpost::rollout::{Control, Gates, Plan, Progress, ProgressFile};
    let control = |state: &PathBuf, f: &dyn Fn(&mut Control)| -> Result<()> {
        let file = ProgressFile::new(state)?;
        let p = file.load()?.ok_or_else(|| {
            outpost::rollout::RolloutError::NoRollout(state.display().to_string())
        })?;
        if p.phase.finished() {
            bail!(
                "the rollout is already {}: nothing to change",
                p.phase.name()
            );
        }
        let mut c = file.control()?;
        f(&mut c);
        file.set_control(&c)?;
        eprintln!("recorded; the driver applies it within a second (or when `outpostctl rollout continue` runs)");
        Ok(())
    };
    let (mqtt, keys, state, json, start) = match c {
        RolloutCommand::Pause { state } => return control(&state, &|c| c.paused = true),
        RolloutCommand::Resume { state } => return control(&state, &|c| c.paused = false),
        RolloutCommand::Abort { state, reason } => {
            return control(&state, &|c| c.abort = Some(reason.clone()))
        }
        RolloutCommand::Status { state } => {
            let p = ProgressFile::new(&state)?.load()?.ok_or_else(|| {
                outpost::rollout::RolloutError::NoRollout(state.display().to_string())
            })?;
            println!(
                "{}",
                serde_json::to_string(
                    &p.summary(&Default::default(), outpost::fleet::rollout::now_ms())
                )?
            );
            return Ok(());
        }
        RolloutCommand::Continue {
            mqtt,
            keys,
            state,
            json,
        } => (mqtt, keys, state, json, None),
        RolloutCommand::Start(a) => (
            a.mqtt.clone(),
            a.keys.clone(),
            a.state.clone(),
            a.json,
            Some(a),
        ),
    };
    let file = ProgressFile::new(&state)?;
    if let Some(a) = start {
        if let Some(p) = file.load()? {
            bail!(
                "{} already holds rollout {} ({}): use `outpostctl rollout continue`, or another --state",
                state.display(),
                p.plan.name,
                p.phase.name()
            );
        }
        let offer = outpost::fleet::serve::make_offer(&a.bundle, a.chunk_size)?;
        let plan = Plan {
            name: a
                .name
                .clone()
                .unwrap_or_else(|| format!("{}-v{}", offer.name, offer.version)),
            group: a.group.clone(),
            bundle: std::fs::canonicalize(&a.bundle)?,
            offer,
            waves: a.waves.clone(),
            gates: Gates {
                min_devices: a.min_devices,
                min_reporting: a.min_reporting,
                observe_s: a.observe_s,
                max_failure_rate: a.max_failure_rate,
                min_agreement: a.min_agreement,
                min_shadow_runs: a.min_shadow_runs,
                max_confidence_drop: a.max_confidence_drop,
                phase_timeout_s: a.phase_timeout_s,
            },
            shadow_s: a.shadow_s,
            shadow_fraction: a.shadow_fraction,
            split: a.split,
        };
        plan.check()?;
        file.save(&Progress::new(plan, outpost::fleet::rollout::now_ms()))?;
    }
    let keys = load_keys(&keys)?;
    let _ = outpost::telemetry::init_tracing(outpost::config::LogFormat::Plain, "warn");
    let phase = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let shutdown = tokio_util::sync::CancellationToken::new();
            let token = shutdown.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                token.cancel();
            });
            let mut last = String::new();
            outpost::fleet::rollout::drive(file, mqtt.settings("rollout")?, keys, shutdown, |s| {
                if json {
                    println!("{}", serde_json::to_string(s).unwrap_or_default());
                    return;
                }
                let line = format!(
                    "wave {}/{} {}{}: {} of {} reported, {} failed, {} live on v{}",
                    s.wave,
                    s.waves.len(),
                    s.phase,
                    if s.paused { " (paused)" } else { "" },
                    s.gate.reporting,
                    s.gate.targeted,
                    s.failed,
                    s.live_on_version,
                    s.bundle.version,
                );
                // One line per change of substance (the agreement moves with every shadow run).
                if line != last {
                    let why = s.reason.as_deref().unwrap_or(&s.decision);
                    // As JSON: `null` until devices report, `1.0` for full agreement.
                    let agreement = serde_json::to_string(&s.gate.agreement).unwrap_or_default();
                    eprintln!("{line}, shadow agreement {agreement}: {why}");
                    last = line;
                }
            })
            .await
            .map_err(anyhow::Error::from)
        })?;
    exit_for(&phase)
}

async fn simulate(a: SimulateArgs) -> Result<()> {
    use std::time::{Duration, Instant};
    let shutdown = tokio_util::sync::CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        token.cancel();
    });
    let workers = if a.workers == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        a.workers
    };
    let (base_peak, _) = outpost::sim::rss();
    let opts = outpost::sim::SimOptions {
        agents: a.agents,
        broker: a.mqtt.broker.clone(),
        group: a.group.clone(),
        prefix: a.prefix.clone(),
        dir: a.dir.clone(),
        trusted_keys: a.trusted_keys.clone(),
        images: a.images.clone(),
        rate: a.rate,
        probation: outpost::config::ProbationConfig {
            requests: a.probation_requests,
            min_samples: a.probation_min_samples,
            max_latency_ratio: a.probation_latency_ratio,
            latency_slack_ms: a.probation_latency_slack_ms,
            ..Default::default()
        },
        heartbeat_s: a.heartbeat_s,
        workers,
        shadow_cpu_share: a.shadow_cpu_share,
        models: a.models.clone(),
    };
    let started = Instant::now();
    let sim = outpost::sim::Sim::start(&opts, shutdown.clone()).await?;
    eprintln!(
        "simulating {} agents in group {} against {} ({} inference threads, {:.0} requests/s); started in {:.1} s",
        a.agents,
        a.group,
        a.mqtt.broker,
        workers,
        a.rate,
        started.elapsed().as_secs_f64()
    );
    println!("ready {}", a.agents);
    let end = a.duration.map(|d| Instant::now() + Duration::from_secs(d));
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        if end.is_some_and(|e| Instant::now() >= e) {
            shutdown.cancel();
            break;
        }
        let (peak, now) = outpost::sim::rss();
        let t = &sim.traffic;
        eprintln!(
            "versions {:?}  requests {} ok {} failed {} shed {}  rss {} MiB (peak {} MiB, {:.0} KiB/agent)",
            sim.versions(),
            t.sent.load(std::sync::atomic::Ordering::Relaxed),
            t.ok.load(std::sync::atomic::Ordering::Relaxed),
            t.failed.load(std::sync::atomic::Ordering::Relaxed),
            t.shed.load(std::sync::atomic::Ordering::Relaxed),
            now >> 20,
            peak >> 20,
            peak.saturating_sub(base_peak) as f64 / 1024.0 / a.agents.max(1) as f64
        );
    }
    let report = sim.report();
    let (peak, _) = outpost::sim::rss();
    let t = sim.traffic.clone();
    sim.finish().await;
    if let Some(path) = &a.report {
        let mut text = String::new();
        for line in &report {
            text.push_str(&line.to_string());
            text.push('\n');
        }
        outpost::fsutil::write_atomic(path, text.as_bytes())?;
    }
    eprintln!(
        "stopped: {} requests ({} failed, {} shed); peak RSS {} MiB, {:.0} KiB per agent",
        t.sent.load(std::sync::atomic::Ordering::Relaxed),
        t.failed.load(std::sync::atomic::Ordering::Relaxed),
        t.shed.load(std::sync::atomic::Ordering::Relaxed),
        peak >> 20,
        peak.saturating_sub(base_peak) as f64 / 1024.0 / a.agents.max(1) as f64
    );
    Ok(())
}

/// A public key from a private key file or a file whose first key line is a trusted-keys line.
fn public_key(path: &std::path::Path) -> Result<ed25519_dalek::VerifyingKey> {
    if let Ok(k) = SigningKeyFile::load(path) {
        let bytes: [u8; 32] = hex::decode(k.public_hex())?
            .try_into()
            .map_err(|_| anyhow::anyhow!("bad key length"))?;
        return Ok(ed25519_dalek::VerifyingKey::from_bytes(&bytes)?);
    }
    let keys = outpost::bundle::TrustedKeys::from_file(path).map_err(|e| {
        anyhow::anyhow!(
            "{}: neither a signing key nor a trusted-keys line: {e}",
            path.display()
        )
    })?;
    keys.entries()
        .first()
        .map(|(_, k)| *k)
        .ok_or_else(|| anyhow::anyhow!("{}: no key in it", path.display()))
}

fn trust_json(bytes: &[u8]) -> Result<serde_json::Value> {
    let (signed, t) = outpost::trust::chain::decode(bytes)?;
    let d = t.document();
    Ok(serde_json::json!({
        "version": d.version,
        "issued_unix": d.issued_unix,
        "keys": d.keys.iter().map(|k| &k.id).collect::<Vec<_>>(),
        "roles": d.roles.iter().map(|(n, r)| (n.clone(), serde_json::json!({"keys": r.keys, "threshold": r.threshold}))).collect::<serde_json::Map<_, _>>(),
        "signed_by": signed.signatures.iter().map(|s| &s.key_id).collect::<Vec<_>>(),
    }))
}

async fn trust(c: TrustCommand) -> Result<()> {
    use outpost::fleet::trust as ft;
    use outpost::trust::rotate::{next_version, Edit};
    use outpost::trust::{chain, TrustDocument};
    let shutdown = tokio_util::sync::CancellationToken::new();
    match c {
        TrustCommand::Init {
            trusted_keys,
            command_keys,
            cloud_keys,
            threshold,
            out,
        } => {
            let read = |p: &PathBuf| {
                outpost::bundle::TrustedKeys::from_file(p)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
            };
            let bundles = read(&trusted_keys)?;
            let commands = command_keys.as_ref().map(read).transpose()?;
            let cloud = cloud_keys.as_ref().map(read).transpose()?;
            let doc = TrustDocument::from_files(
                Some(&bundles),
                threshold,
                commands.as_ref(),
                cloud.as_ref(),
            );
            doc.clone().check()?;
            let bytes = outpost::trust::stored::unsigned(&doc);
            outpost::fsutil::write_atomic(&out, &bytes)?;
            println!("{}", trust_json(&bytes)?);
        }
        TrustCommand::Rotate {
            mqtt,
            from,
            online,
            add,
            remove,
            threshold,
            keys,
            out,
        } => {
            let published_newest = if online {
                let (client, mut events) =
                    outpost::fleet::operator::connect(&mqtt.settings("trust")?, shutdown.clone())
                        .await?;
                let published = ft::published(&client, &mut events).await?;
                let _ = client.disconnect().await;
                ft::newest(&published)?.map(|t| {
                    let v = t.version();
                    (v, published[&v].clone())
                })
            } else {
                None
            };
            let base = match (&from, published_newest) {
                (Some(f), newest) => {
                    let bytes = outpost::trust::console::read_capped(f)?;
                    let (_, t) = chain::decode(&bytes)?;
                    if let Some((v, _)) = &newest {
                        if t.version() < *v {
                            anyhow::bail!(
                                "{} is version {}, but version {v} is published: rotate from the newest (drop --from, \
                                 or pass the newest published document)",
                                f.display(),
                                t.version()
                            );
                        }
                    }
                    t
                }
                (None, Some((_, bytes))) => chain::decode(&bytes)?.1,
                (None, None) if online => anyhow::bail!(
                    "no trust document is published on the broker: publish version 1 first (`outpostctl trust init`, \
                     then `outpostctl trust publish`), or pass --from"
                ),
                (None, None) => anyhow::bail!("pass --from FILE (the newest version) or --online"),
            };
            let mut edits = Vec::new();
            for a in &add {
                let (role, path) = Edit::split(a)?;
                edits.push(Edit::Add {
                    role,
                    key: public_key(std::path::Path::new(path))?,
                });
            }
            for r in &remove {
                let (role, id) = Edit::split(r)?;
                edits.push(Edit::Remove {
                    role,
                    id: id.to_string(),
                });
            }
            for t in &threshold {
                let (role, n) = Edit::split(t)?;
                edits.push(Edit::Threshold {
                    role,
                    threshold: n
                        .parse()
                        .map_err(|_| anyhow::anyhow!("{t:?}: ROLE=N with N a number"))?,
                });
            }
            let next = next_version(base.document(), &edits, outpost::bundle::now_unix())?;
            let keys = load_keys(&keys)?;
            let refs: Vec<&SigningKeyFile> = keys.iter().collect();
            let bytes = chain::sign(&next, &refs);
            // What a device would do with it: refused here, before it is written, when the signatures fall short.
            chain::verify_next(&base, &bytes)?;
            outpost::fsutil::write_atomic(&out, &bytes)?;
            println!("{}", trust_json(&bytes)?);
        }
        TrustCommand::Publish {
            mqtt,
            resign_keys,
            files,
        } => {
            let docs = files
                .iter()
                .map(|f| outpost::trust::console::read_capped(f))
                .collect::<Result<Vec<_>, _>>()?;
            let resign = load_keys(&resign_keys)?;
            let refs: Vec<&SigningKeyFile> = resign.iter().collect();
            let (client, mut events) =
                outpost::fleet::operator::connect(&mqtt.settings("trust")?, shutdown.clone())
                    .await?;
            let newest = ft::publish(&client, &mut events, &docs).await?;
            let fixes = ft::fix_retained_commands(&client, &mut events, &newest, &refs).await?;
            let _ = client.disconnect().await;
            println!(
                "{}",
                serde_json::json!({"published_version": newest.version(), "retained_commands": fixes})
            );
        }
        TrustCommand::Show { mqtt, online, file } => match (file, online) {
            (Some(f), _) => println!(
                "{}",
                trust_json(&outpost::trust::console::read_capped(&f)?)?
            ),
            (None, true) => {
                let (client, mut events) =
                    outpost::fleet::operator::connect(&mqtt.settings("trust")?, shutdown.clone())
                        .await?;
                let published = ft::published(&client, &mut events).await?;
                let _ = client.disconnect().await;
                for bytes in published.values() {
                    println!("{}", trust_json(bytes)?);
                }
            }
            (None, false) => anyhow::bail!("pass a document FILE or --online"),
        },
    }
    Ok(())
}
