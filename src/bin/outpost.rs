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
    /// PNG or JPEG files.
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Infer(args) => infer(args),
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
    let engine = Engine::load_files(&args.model, args.spec.as_deref())
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.model.display()))?;
    let mut session = engine.session()?;
    let limits = DecodeLimits::default();
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
