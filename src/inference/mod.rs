//! Local inference: the only module that knows tract.
//!
//! An [`Engine`] loads an ONNX model once, binds it to the batch-1 shape its [`ModelSpec`] gives, optimises it and
//! keeps one immutable plan that any number of threads share; each thread runs it through its own [`Session`]
//! (tract's per-run state), so workers never contend on a lock.
//!
//! Plans are shared across engines of the process only under a key of everything that shapes them, and every
//! engine, shared or not, is checked against its own spec before it is returned: sharing saves the build, never the
//! checks. Real-int8 files run in their QDQ form where tract's integer kernels are slow ([`Int8Mode`]), and plans
//! long enough to gain split their products over a shared executor ([`set_threads`]).
//!
//! Files: `engine.rs` (the engine and its loads), `session.rs` (one thread's runs), `plan.rs` (building, keying,
//! sharing and checking plans), `identity.rs` (what names a release), `settings.rs` (the process-wide int8 mode,
//! threads and kernels), `convert.rs` (tensors to and from tract); the model forms (`onnx`, `nnef`, `int8`,
//! `dequantize`), specs, tensors, pre- and postprocessing and tasks have their own modules. This file holds the
//! error type every path shares.

#[cfg(feature = "onnx")]
mod dequantize;
pub mod int8;
pub mod nnef;
#[cfg(feature = "onnx")]
pub mod onnx;
pub mod postprocess;
pub mod preprocess;
pub mod spec;
pub mod task;
pub mod tensor;

mod convert;
mod engine;
mod identity;
mod plan;
mod session;
mod settings;

use std::path::PathBuf;

use convert::*;
pub use engine::*;
pub use identity::*;
pub use int8::{Int8Choice, Int8Form};
use plan::*;
pub use postprocess::Prediction;
pub use preprocess::DecodeLimits;
pub use session::Session;
pub use settings::*;
pub use spec::ModelSpec;
pub use tensor::{Dtype, TensorData, TensorIo, TensorSpec, TensorValue};

/// Everything that can go wrong between bytes on disk or on the wire and an answer.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad model spec: {0}")]
    Spec(String),
    #[error("cannot load the model: {0}")]
    Model(String),
    #[error("{0}")]
    Image(String),
    #[error("{what} is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge {
        what: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("input tensor has {got} values, the model takes {expected} ({shape:?})")]
    InputShape {
        expected: usize,
        got: usize,
        shape: Vec<usize>,
    },
    #[error("inference failed: {0}")]
    Run(String),
    /// The request's tensors do not fit the model (names, datatypes, shapes, counts).
    #[error("{0}")]
    Tensors(String),
    /// A task's refusal: a call's overrides out of range (the caller's fault), or outputs its decoder cannot read.
    #[error(transparent)]
    Task(#[from] task::TaskError),
}

/// A model run (or load) whose blocking work stopped part way failed.
impl From<crate::blocking::Panicked> for InferenceError {
    fn from(p: crate::blocking::Panicked) -> Self {
        InferenceError::Run(p.to_string())
    }
}

/// Errors from tract and the decoders can span lines and dump tensors; callers print one line per failure, so the
/// cause is folded onto one line and cut at a readable length.
pub(crate) fn one_line(e: &dyn std::fmt::Display) -> String {
    let text = format!("{e:#}");
    let mut folded = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if folded.len() > 300 {
        let cut = (0..=300)
            .rev()
            .find(|&i| folded.is_char_boundary(i))
            .unwrap_or(0);
        folded.truncate(cut);
        folded.push_str("...");
    }
    folded
}

/// Whether this build reads ONNX files (the `onnx` feature); the slim device build reads NNEF only.
pub const READS_ONNX: bool = cfg!(feature = "onnx");

/// The sentence the slim device build answers an ONNX file with.
pub const NEEDS_NNEF: &str = "this agent is the slim device build, which reads models in tract's NNEF form only, \
    and this file is ONNX: rebuild the bundle with `outpostctl bundle` (it adds each variant's NNEF form), or \
    convert the file with `outpostctl compile`";

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[cfg(feature = "onnx")]
    fn dtypes() -> Engine {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/dtypes");
        Engine::load_files(
            &dir.join("dtypes.onnx"),
            Some(&dir.join("dtypes.spec.json")),
        )
        .unwrap()
    }

    #[cfg(feature = "onnx")]
    fn inputs(pixels: [u8; 4], offset: [i32; 4], scale: i64) -> Vec<TensorValue> {
        vec![
            TensorValue {
                name: "pixels".into(),
                shape: vec![1, 4],
                data: TensorData::Uint8(pixels.to_vec()),
            },
            TensorValue {
                name: "offset".into(),
                shape: vec![1, 4],
                data: TensorData::Int32(offset.to_vec()),
            },
            TensorValue {
                name: "scale".into(),
                shape: vec![1],
                data: TensorData::Int64(vec![scale]),
            },
        ]
    }

    #[cfg(feature = "onnx")]
    #[test]
    fn a_raw_model_runs_every_datatype_and_refuses_tensors_that_do_not_fit() {
        let e = dtypes();
        let out = e
            .run_tensors(&inputs([0, 7, 200, 255], [-5, 3, 100_000, -255], 7))
            .unwrap();
        let names: Vec<&str> = out.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["sum", "scaled", "shift", "mean", "floor"]);
        assert_eq!(out[0].data, TensorData::Int32(vec![-5, 10, 100_200, 0]));
        assert_eq!(out[1].data, TensorData::Int64(vec![-35, 70, 701_400, 0]));
        assert_eq!(out[2].data, TensorData::Int64(vec![5_000_000_007]));
        assert_eq!(out[3].data, TensorData::Fp32(vec![25_051.25]));
        assert_eq!(out[4].data, TensorData::Uint8(vec![10, 10, 200, 255]));
        // Values beyond 32 bits travel whole when no Cast is involved (see models/make_dtypes.py).
        let out = e
            .run_tensors(&inputs([0; 4], [0; 4], -9_000_000_000))
            .unwrap();
        assert_eq!(out[2].data, TensorData::Int64(vec![-4_000_000_000]));
        let mut wrong = inputs([0; 4], [0; 4], 1);
        wrong[2].data = TensorData::Int32(vec![1]);
        assert!(
            matches!(e.run_tensors(&wrong), Err(InferenceError::Tensors(m)) if m.contains("INT32"))
        );
        assert!(matches!(
            e.run_tensors(&wrong[..2]),
            Err(InferenceError::Tensors(_))
        ));
    }

    /// A raw tensor model's NNEF form keeps its inputs and outputs in the spec's order and answers as its ONNX form,
    /// except where tract 0.23.9's NNEF writer loses an INT64 constant beyond 32 bits (see [`onnx::compile`]): the
    /// datatype model's `shift` adds 5,000,000,000. This asserts that loss too, so a tract that fixes it shows here.
    #[cfg(feature = "onnx")]
    #[test]
    fn a_raw_model_compiles_to_nnef_and_answers_the_same() {
        let onnx = dtypes();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/dtypes");
        let bytes = std::fs::read(dir.join("dtypes.onnx")).unwrap();
        let compiled = onnx::compile(&bytes, onnx.spec(), onnx::NnefForm::Kernels).unwrap();
        let nnef = Engine::load(&compiled.bytes, onnx.spec().clone()).unwrap();
        for case in [
            inputs([0, 7, 200, 255], [-5, 3, 100_000, -255], 7),
            inputs([1, 2, 3, 4], [0; 4], -9_000_000_000),
        ] {
            let (a, b) = (
                nnef.run_tensors(&case).unwrap(),
                onnx.run_tensors(&case).unwrap(),
            );
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(&b) {
                if x.name == "shift" {
                    assert_ne!(
                        x, y,
                        "tract's NNEF writer keeps INT64 literals now: drop the workaround note"
                    );
                } else {
                    assert_eq!(x, y);
                }
            }
        }
        let mut renamed = onnx.spec().clone();
        if let Some(io) = renamed.tensors.as_mut() {
            io.inputs.swap(0, 1);
        }
        let err = Engine::load(&compiled.bytes, renamed)
            .unwrap_err()
            .to_string();
        assert!(err.contains("inputs are"), "{err}");
    }

    /// The slim build's embedded NNEF forms are what compiling the built-in ONNX file gives with this tract (run
    /// `outpostctl compile --model models/edge-int8.onnx [--form qdq] --out models/edge-int8[-qdq].nnef.tar` when
    /// this fails), and answer as it does.
    #[cfg(feature = "onnx")]
    #[test]
    fn the_embedded_nnef_forms_are_current() {
        let spec: ModelSpec = serde_json::from_str(BUILTIN_SPEC).unwrap();
        for (bytes, form, int8) in [
            (BUILTIN_NNEF, onnx::NnefForm::Kernels, Int8Mode::Native),
            (BUILTIN_NNEF_QDQ, onnx::NnefForm::Qdq, Int8Mode::Float),
        ] {
            let fresh = onnx::compile(BUILTIN_ONNX, &spec, form).unwrap();
            assert!(
                fresh.bytes == bytes,
                "models/edge-int8*.nnef.tar are stale ({form:?})"
            );
            let a = Engine::load(bytes, spec.clone()).unwrap();
            let b = Engine::load_int8(BUILTIN_ONNX, spec.clone(), int8).unwrap();
            let input = vec![0.25; spec.input_len()];
            assert_eq!(a.run(&input).unwrap(), b.run(&input).unwrap());
        }
    }

    /// The slim build answers an ONNX file with the sentence that says what to do, and serves the built-in model
    /// from its embedded NNEF form.
    #[cfg(not(feature = "onnx"))]
    #[test]
    fn the_slim_build_refuses_onnx_and_serves_its_builtin_nnef_form() {
        let spec: ModelSpec = serde_json::from_str(BUILTIN_SPEC).unwrap();
        let onnx =
            std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/edge-int8.onnx"))
                .unwrap();
        let err = Engine::load(&onnx, spec.clone()).unwrap_err().to_string();
        assert!(err.contains(NEEDS_NNEF), "{err}");
        let e = Engine::load(builtin_model(), spec).unwrap();
        assert_eq!(e.run(&vec![0.0; e.spec().input_len()]).unwrap().len(), 10);
    }

    /// The NNEF version rule, and the pinned tract version against the lock file.
    #[test]
    fn nnef_from_another_tract_minor_is_refused_with_a_sentence() {
        assert!(nnef::readable(nnef::TRACT_VERSION).is_ok());
        assert!(nnef::readable("0.23.1").is_ok());
        let err = nnef::readable("0.24.0").unwrap_err();
        assert!(
            err.contains("tract 0.24.0") && err.contains("rebuild the bundle"),
            "{err}"
        );
        assert!(nnef::readable("garbage").is_err());
        let lock = include_str!("../../Cargo.lock");
        let pinned = format!(
            "name = \"tract-core\"\nversion = \"{}\"",
            nnef::TRACT_VERSION
        );
        assert!(
            lock.contains(&pinned),
            "nnef::TRACT_VERSION is not Cargo.lock's tract-core"
        );
    }
}
