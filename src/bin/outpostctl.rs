//! `outpostctl`: the operator's tool. Same library as the agent, so signing and verifying cannot drift.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use outpost::bundle::{self, Manifest, Policy, SigningKeyFile, TrustedKeys, Variant};
use outpost::inference::{DecodeLimits, Engine, ModelSpec};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "outpostctl",
    version,
    about = "Operator tool for Outpost: keys, bundles"
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
    #[arg(long, default_value_t = 0.05)]
    tolerance: f32,
    #[arg(long)]
    hardness_threshold: Option<f32>,
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
                now_unix: bundle::now_unix(),
                agent_version: env!("CARGO_PKG_VERSION"),
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
            let (m, _, sigs) = bundle::read_header_unverified(&mut f)
                .with_context(|| bundle.display().to_string())?;
            let variants: Vec<_> = m
                .variants
                .iter()
                .map(|v| serde_json::json!({"name": v.name, "size": v.size, "sha256": hex::encode(v.sha256)}))
                .collect();
            let summary = serde_json::json!({
                "name": m.name, "version": m.version, "created_unix": m.created_unix, "expires_unix": m.expires_unix,
                "min_agent_version": m.min_agent_version, "input_shape": m.spec.input.shape, "labels": m.spec.labels.len(),
                "golden_cases": m.golden_inputs.len(), "golden_tolerance": m.golden_tolerance,
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
    let spec = ModelSpec::from_file(&args.spec)?;
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
    let mut golden_inputs: Vec<Vec<f32>> = Vec::new();
    if let Some(dir) = &args.golden_images {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| dir.display().to_string())?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|x| x == "png" || x == "jpg" || x == "jpeg")
            })
            .collect();
        paths.sort();
        for p in paths.into_iter().take(8) {
            let bytes = std::fs::read(&p)?;
            golden_inputs.push(outpost::inference::preprocess::image_to_tensor(
                &bytes,
                &spec,
                &DecodeLimits::default(),
            )?);
        }
    }
    let mut models = Vec::new();
    let mut variants = Vec::new();
    for (name, path) in &named {
        let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
        let engine =
            Engine::load(&bytes, spec.clone()).with_context(|| path.display().to_string())?;
        let golden_outputs = golden_inputs
            .iter()
            .map(|i| engine.run(i))
            .collect::<Result<Vec<_>, _>>()?;
        variants.push(Variant {
            name: name.clone(),
            size: bytes.len() as u64,
            sha256: bundle::sha256(&bytes),
            golden_outputs,
        });
        models.push(bytes);
    }
    let now = bundle::now_unix();
    let manifest = Manifest {
        name: spec.name.clone(),
        version: args.version,
        created_unix: now,
        expires_unix: now + args.expires_days * 86_400,
        min_agent_version: env!("CARGO_PKG_VERSION").into(),
        spec,
        hardness_threshold: args.hardness_threshold,
        golden_inputs,
        golden_tolerance: args.tolerance,
        variants,
    };
    let keys = args
        .keys
        .iter()
        .map(|k| SigningKeyFile::load(k))
        .collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<&SigningKeyFile> = keys.iter().collect();
    let mut buf = Vec::new();
    bundle::write_bundle(&mut buf, &manifest, &models, &refs)?;
    outpost::fsutil::write_atomic(&args.out, &buf)
        .with_context(|| args.out.display().to_string())?;
    eprintln!(
        "wrote {} ({} bytes, version {}, {} variant(s), {} signature(s))",
        args.out.display(),
        buf.len(),
        args.version,
        models.len(),
        keys.len()
    );
    Ok(())
}
