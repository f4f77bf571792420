//! The install path shared by `outpost install` and the fleet link: verify, stream into the inactive slot, check,
//! pick a variant, flip. Refusals are typed: the install's ([`InstallError`]), each variant's ([`VariantRefused`],
//! the install goes on with the others), and a slot that does not load as its record says ([`LoadError`]).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{SlotError, SlotId, SlotInfo, SlotState, SlotStore};
use crate::bundle::{self, BundleError, Manifest, Policy};
use crate::inference::{Engine, InferenceError};

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Slot(#[from] SlotError),
    #[error("no variant passed the quality gate: {0}")]
    QualityGate(String),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Why one variant of a bundle is not used on this device. The install goes on with the others, and is refused with
/// every variant's reason ([`InstallError::QualityGate`]) when none is left.
#[derive(Debug, thiserror::Error)]
pub enum VariantRefused {
    /// Not tried here: a form this build cannot read, or int8 kernels where `engine.int8 = float` says so.
    #[error("{0}")]
    Skipped(String),
    /// The engine could not be built, or failed to run a golden case.
    #[error(transparent)]
    Engine(#[from] InferenceError),
    #[error("golden case {case}: max difference {worst} > tolerance {tolerance}")]
    Golden {
        case: usize,
        worst: f32,
        tolerance: f32,
    },
    #[error("golden case {case}: output {output} is {got}, expected {want}")]
    OutputShape {
        case: usize,
        output: String,
        got: String,
        want: String,
    },
    #[error("golden case {case}: output {output} differs by {worst} > tolerance {tolerance}")]
    OutputValues {
        case: usize,
        output: String,
        worst: f64,
        tolerance: f32,
    },
}

/// Why the release a slot record names cannot be served from its slot's files.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("slot {} is live but empty in the record", .0.name())]
    Empty(SlotId),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The slot's spec or model file does not load.
    #[error("slot {}: {source}", slot.name())]
    Engine {
        slot: SlotId,
        source: InferenceError,
    },
    #[error("slot {} holds a model whose digest differs from the record", .0.name())]
    Digest(SlotId),
    #[error("slot {} holds {held} version {held_version} but the record names {named} version {named_version} (or another spec)", slot.name())]
    NotTheRecord {
        slot: SlotId,
        held: String,
        held_version: u64,
        named: String,
        named_version: u64,
    },
}

/// What an install did.
#[derive(Debug)]
pub struct Installed {
    pub state: SlotState,
    pub slot: SlotId,
    pub info: SlotInfo,
    /// (variant, median µs or the reason it was rejected)
    pub trials: Vec<(String, Result<f64, VariantRefused>)>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn is_nnef(v: &bundle::Variant) -> bool {
    matches!(v.form, bundle::VariantForm::Nnef { .. })
}

/// Per variant, why it is not even tried here: a form this build cannot read (ONNX on the slim build, NNEF from
/// another tract), or, where `engine.int8 = float` says so, tract's integer operators when the bundle has another
/// form. Under `auto` every readable variant is timed by the gate below: the faster form wins by measurement.
fn skipped_variants(manifest: &Manifest) -> Vec<Option<String>> {
    let mut skip: Vec<Option<String>> = manifest
        .variants
        .iter()
        .map(|v| v.form.readable().err())
        .collect();
    if crate::inference::Int8Mode::current().as_float() {
        let kernels = |v: &bundle::Variant| {
            matches!(
                v.form,
                bundle::VariantForm::Nnef {
                    int8_kernels: true,
                    ..
                }
            )
        };
        let others = manifest
            .variants
            .iter()
            .zip(&skip)
            .any(|(v, s)| s.is_none() && !kernels(v));
        for (v, s) in manifest.variants.iter().zip(skip.iter_mut()) {
            if others && s.is_none() && kernels(v) {
                *s = Some("int8 kernels, and engine.int8 = float runs int8 models as QDQ".into());
            }
        }
    }
    skip
}

/// Runs a variant's golden vectors; returns the median latency (µs) of a short timing when it passes. The timing
/// only serves to choose between variants, so a single-variant bundle skips it (returns 0).
fn gate(engine: &Engine, manifest: &Manifest, variant: usize) -> Result<f64, VariantRefused> {
    // Raw and task models (detection, score) compare every output they keep.
    if engine.spec().io().is_some() {
        return gate_tensors(engine, manifest, variant);
    }
    let mut session = engine.session()?;
    let expected = &manifest.variants[variant].golden_outputs;
    for (i, (input, want)) in manifest.golden_inputs.iter().zip(expected).enumerate() {
        let got = session.run(input)?;
        let worst = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let argmax = |v: &[f32]| {
            v.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|x| x.0)
        };
        if got.len() != want.len()
            || worst > manifest.golden_tolerance
            || argmax(&got) != argmax(want)
        {
            return Err(VariantRefused::Golden {
                case: i,
                worst,
                tolerance: manifest.golden_tolerance,
            });
        }
    }
    if manifest.variants.len() == 1 {
        return Ok(0.0);
    }
    let input = manifest
        .golden_inputs
        .first()
        .cloned()
        .unwrap_or_else(|| vec![0.0; manifest.spec.input_len()]);
    let mut times = Vec::new();
    let deadline = Instant::now() + std::time::Duration::from_millis(300);
    while times.len() < 5 || (times.len() < 50 && Instant::now() < deadline) {
        let t = Instant::now();
        session.run(&input)?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// [`gate`] for a raw tensor model: every output of every golden case within the tolerance (the same datatype,
/// shape and values), then the same short timing.
fn gate_tensors(
    engine: &Engine,
    manifest: &Manifest,
    variant: usize,
) -> Result<f64, VariantRefused> {
    let mut session = engine.session()?;
    let expected = &manifest.variants[variant].golden_tensor_outputs;
    for (i, (inputs, want)) in manifest.golden_tensors.iter().zip(expected).enumerate() {
        let got = session.run_tensors(inputs)?;
        for (g, w) in got.iter().zip(want) {
            if g.data.dtype() != w.data.dtype() || g.shape != w.shape {
                return Err(VariantRefused::OutputShape {
                    case: i,
                    output: g.name.clone(),
                    got: format!("{} {:?}", g.data.dtype().name(), g.shape),
                    want: format!("{} {:?}", w.data.dtype().name(), w.shape),
                });
            }
            // A NaN anywhere (a non-finite output) fails the case.
            let worst = g.max_abs_diff(w);
            if worst > manifest.golden_tolerance as f64 {
                return Err(VariantRefused::OutputValues {
                    case: i,
                    output: g.name.clone(),
                    worst,
                    tolerance: manifest.golden_tolerance,
                });
            }
        }
    }
    if manifest.variants.len() == 1 {
        return Ok(0.0);
    }
    let Some(inputs) = manifest.golden_tensors.first() else {
        return Ok(0.0);
    };
    let mut times = Vec::new();
    let deadline = Instant::now() + std::time::Duration::from_millis(300);
    while times.len() < 5 || (times.len() < 50 && Instant::now() < deadline) {
        let t = Instant::now();
        session.run_tensors(inputs)?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// What an install does with the checked slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Make it live on trial (probation then commits or rolls it back).
    Trial,
    /// Keep it staged beside the live model, as the candidate for shadow and A/B evaluation.
    Candidate,
}

/// The staging folder of one install, removed with whatever it still holds when the install ends (refused, or done
/// after its chosen files were moved out). A SIGKILL leaves it behind; the next install starts by removing it.
struct Staging(std::path::PathBuf);

impl Staging {
    fn new(dir: std::path::PathBuf) -> Result<Staging, InstallError> {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(Staging(dir))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Installs a bundle read from `r` into the inactive slot and makes it live on trial.
pub fn install(
    store: &SlotStore,
    r: &mut impl Read,
    policy: &Policy,
) -> Result<(Installed, Engine), InstallError> {
    install_as(store, r, policy, Mode::Trial)
}

/// Installs a bundle read from `r` into the inactive slot, then makes it live on trial or stages it, per `mode`.
pub fn install_as(
    store: &SlotStore,
    r: &mut impl Read,
    policy: &Policy,
    mode: Mode,
) -> Result<(Installed, Engine), InstallError> {
    let header = bundle::read_header(r, policy)?;
    install_verified(store, &header, r, mode)
}

/// The rest of [`install_as`], once the caller has read and verified the header (and chosen `store` by the model
/// the manifest names): `r` is positioned after the header.
pub fn install_verified(
    store: &SlotStore,
    header: &bundle::VerifiedHeader,
    r: &mut impl Read,
    mode: Mode,
) -> Result<(Installed, Engine), InstallError> {
    let manifest = &header.manifest;
    // Held to the final write: nothing else may change the record while the slot is being filled.
    let _lock = store.lock()?;
    // Checked now, recorded only once a variant has passed its gate: until then the variants are written to a
    // staging folder beside the slots, so a refused install (a bad variant, a failed gate, a full disk) leaves the
    // record and the slot it would replace (the rollback target) as they were.
    let (state, target) = store.load()?.begin_install(manifest.version)?;
    let staging = Staging::new(store.staging_dir())?;
    let mut files = Vec::new();
    for (i, v) in manifest.variants.iter().enumerate() {
        let path = staging.0.join(format!("variant-{i}"));
        let mut f = std::fs::File::create(&path).map_err(io(&path))?;
        bundle::copy_variant(r, &mut f, v)?;
        f.flush().map_err(io(&path))?;
        f.sync_all().map_err(io(&path))?;
        files.push(path);
    }
    bundle::expect_end(r)?;

    // The served model reports the bundle's name and version, whatever the spec file said when it was bundled; the
    // engines are built with that spec, so the one chosen here is the release the record names (and can serve as is).
    let mut spec = manifest.spec.clone();
    spec.name = manifest.name.clone();
    spec.version = manifest.version;
    let skip = skipped_variants(manifest);
    let mut trials = Vec::new();
    // The fastest variant that passes, and the fastest NNEF form that passes (the spare below); other engines are
    // dropped as soon as they lose, so an install holds at most two plans.
    let mut best: Option<(usize, f64, Engine)> = None;
    let mut best_nnef: Option<(usize, f64, String)> = None;
    for (i, path) in files.iter().enumerate() {
        let name = manifest.variants[i].name.clone();
        if let Some(why) = &skip[i] {
            trials.push((name, Err(VariantRefused::Skipped(why.clone()))));
            continue;
        }
        let bytes = std::fs::read(path).map_err(io(path))?;
        let outcome = Engine::load(&bytes, spec.clone())
            .map_err(VariantRefused::from)
            .and_then(|engine| gate(&engine, manifest, i).map(|us| (us, engine)));
        match outcome {
            Ok((us, engine)) => {
                trials.push((name, Ok(us)));
                if is_nnef(&manifest.variants[i]) && best_nnef.as_ref().is_none_or(|b| us < b.1) {
                    best_nnef = Some((i, us, engine.digest().to_string()));
                }
                if best.as_ref().is_none_or(|b| us < b.1) {
                    best = Some((i, us, engine));
                }
            }
            Err(e) => trials.push((name, Err(e))),
        }
    }
    let Some((chosen, us, engine)) = best else {
        let why = trials
            .iter()
            .map(|(n, r)| match r {
                Ok(_) => format!("{n}: passed"),
                Err(e) => format!("{n}: {e}"),
            })
            .collect::<Vec<_>>();
        return Err(InstallError::QualityGate(why.join("; ")));
    };
    // Beside a chosen ONNX variant, the fastest NNEF form that passed stays on disk: an agent upgraded to the slim
    // device build reads NNEF only, and serves this slot from it.
    let spare = if is_nnef(&manifest.variants[chosen]) {
        None
    } else {
        best_nnef.map(|(i, _, digest)| (i, digest))
    };
    // From here the target slot's files are replaced: the record says it is empty first.
    store.save(&state)?;
    let dir = store.slot_dir(target);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let model_path = store.model_path_for(target, is_nnef(&manifest.variants[chosen]));
    std::fs::rename(&files[chosen], &model_path).map_err(io(&model_path))?;
    if let Some((i, _)) = &spare {
        let path = store.spare_path(target);
        std::fs::rename(&files[*i], &path).map_err(io(&path))?;
    }
    let spec_bytes = serde_json::to_vec_pretty(&spec).unwrap_or_default();
    crate::fsutil::write_atomic(&store.spec_path(target), &spec_bytes).map_err(io(&model_path))?;
    drop(staging);
    crate::fsutil::sync_dir(&dir).map_err(io(&dir))?;
    let reason = if manifest.variants.len() == 1 {
        "only variant".to_string()
    } else {
        format!(
            "fastest variant passing the quality gate on this device ({})",
            trials
                .iter()
                .map(|(n, r)| match r {
                    Ok(us) => format!("{n} {us:.0} us"),
                    Err(VariantRefused::Skipped(e)) => format!("{n} skipped: {e}"),
                    Err(_) => format!("{n} failed"),
                })
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let info = SlotInfo {
        name: manifest.name.clone(),
        version: manifest.version,
        digest: engine.digest().to_string(),
        variant: manifest.variants[chosen].name.clone(),
        reason,
        hardness_threshold: manifest.hardness_threshold,
        budget: manifest.budget,
        baseline: manifest.baseline.clone(),
        spec_digest: Some(crate::inference::spec_digest(&spec)),
        spare: spare.map(|(i, digest)| crate::slots::Spare {
            variant: manifest.variants[i].name.clone(),
            digest,
        }),
        signers: header.signers.clone(),
        trust_version: header.trust_version,
    };
    tracing::info!(version = info.version, variant = %info.variant, median_us = us, slot = target.name(), "bundle installed");
    let state = match mode {
        Mode::Trial => state.flip(target, info.clone()),
        Mode::Candidate => state.stage(target, info.clone()),
    };
    store.save(&state)?;
    Ok((
        Installed {
            state,
            slot: target,
            info,
            trials,
        },
        engine,
    ))
}

/// Loads the model of the live slot, checking that its file is the one the record names.
pub fn load_active(store: &SlotStore, state: &SlotState) -> Result<Option<Engine>, LoadError> {
    let Some(slot) = state.active else {
        return Ok(None);
    };
    load_slot(store, state, slot).map(Some)
}

/// Loads the model in `slot`, checking that its file is the one the record names.
pub fn load_slot(store: &SlotStore, state: &SlotState, slot: SlotId) -> Result<Engine, LoadError> {
    let info = state.slot(slot).ok_or(LoadError::Empty(slot))?;
    let mut model_path = store.model_path(slot);
    // The slim build reads NNEF only: a slot whose chosen variant is ONNX is served from its spare NNEF form.
    if !crate::inference::READS_ONNX
        && !model_path.ends_with("model.nnef.tar")
        && info.spare.is_some()
        && store.spare_path(slot).exists()
    {
        model_path = store.spare_path(slot);
    }
    let bytes = std::fs::read(&model_path).map_err(|source| LoadError::Read {
        path: model_path.clone(),
        source,
    })?;
    let engine_err = |source| LoadError::Engine { slot, source };
    let mut spec =
        crate::inference::ModelSpec::from_file(&store.spec_path(slot)).map_err(engine_err)?;
    // The record names the release. Specs written before installs set the name kept the spec file's own.
    if info.spec_digest.is_none() {
        spec.name = info.name.clone();
        spec.version = info.version;
    }
    let engine = Engine::load(&bytes, spec).map_err(engine_err)?;
    let digest_ok = engine.digest() == info.digest
        || info
            .spare
            .as_ref()
            .is_some_and(|s| s.digest == engine.digest());
    if !digest_ok {
        return Err(LoadError::Digest(slot));
    }
    if !info.matches(engine.release()) {
        return Err(LoadError::NotTheRecord {
            slot,
            held: engine.spec().name.clone(),
            held_version: engine.spec().version,
            named: info.name.clone(),
            named_version: info.version,
        });
    }
    Ok(engine)
}
