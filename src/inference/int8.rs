//! `engine.int8 = auto`: a real-int8 model runs in whichever of its two forms is faster on this device, measured.
//!
//! tract runs a QOperator model (QLinearConv, QLinearMatMul) either on its integer kernels or, rewritten to its QDQ
//! form ([`super::dequantize`]), on float kernels. Which is faster depends on the kernels tract has for the CPU and
//! on the model, and CPU flags do not predict it: on a Xeon with AVX-512 VNNI the integer kernels were 10.7x slower
//! than the float form on MobileNetV2-int8 (BENCHMARKS.md, issue 27). So `auto` builds both forms at load (off the
//! request path: loads run on blocking threads, before the model serves), times a bounded number of runs of each
//! on zeros, and keeps the faster; the choice and both timings go into the status. The result is remembered per
//! model file, plan shape, threads and CPU in the state dir ([`remember_in`]), so a restart loads only the form it
//! chose.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use super::{Engine, InferenceError, TensorData, TensorValue};

/// The two ways a real-int8 model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Int8Form {
    /// tract's integer kernels on the QOperator graph.
    Native,
    /// The QDQ rewrite on float kernels.
    Float,
}

impl Int8Form {
    /// The mode that loads this form.
    pub fn mode(self) -> super::Int8Mode {
        match self {
            Int8Form::Native => super::Int8Mode::Native,
            Int8Form::Float => super::Int8Mode::Float,
        }
    }
}

/// How `auto` settled one model on this device: the form kept and what each form took per run (µs; `None` when
/// that form did not load).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Int8Choice {
    pub chosen: Int8Form,
    pub native_us: Option<f64>,
    pub float_us: Option<f64>,
    /// Read from the state dir (timed at an earlier load on this CPU), not timed by this load.
    #[serde(default)]
    pub remembered: bool,
}

/// The integer kernels are kept unless the float form is faster by more than this: at equal speed the model runs
/// as its file says (the integer arithmetic onnxruntime also runs), and timing noise does not flip the choice.
const FLOAT_MARGIN: f64 = 1.10;

/// Keeps the faster form (by [`FLOAT_MARGIN`]); a form that did not load loses.
pub fn pick(native_us: Option<f64>, float_us: Option<f64>) -> Option<Int8Form> {
    match (native_us, float_us) {
        (Some(n), Some(f)) if f * FLOAT_MARGIN < n => Some(Int8Form::Float),
        (Some(_), _) => Some(Int8Form::Native),
        (None, Some(_)) => Some(Int8Form::Float),
        (None, None) => None,
    }
}

/// Where choices outlive the process (the daemon's state dir).
pub trait Int8Memory: Send + Sync {
    fn recall(&self, key: &str) -> Option<Int8Choice>;
    fn remember(&self, key: &str, choice: &Int8Choice);
}

fn memory() -> &'static RwLock<Option<Arc<dyn Int8Memory>>> {
    static MEMORY: OnceLock<RwLock<Option<Arc<dyn Int8Memory>>>> = OnceLock::new();
    MEMORY.get_or_init(Default::default)
}

/// Choices made in this process, so that loading the same model again (a fallback, another slot) does not time it
/// again.
fn made() -> &'static Mutex<HashMap<String, Int8Choice>> {
    static MADE: OnceLock<Mutex<HashMap<String, Int8Choice>>> = OnceLock::new();
    MADE.get_or_init(Default::default)
}

/// Remember `auto`'s choices in `<state_dir>/int8-choices.json` from now on (the daemon and the commands that load
/// models call it with their state dir).
pub fn remember_in(state_dir: &Path) {
    *memory().write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(FileMemory {
        path: state_dir.join("int8-choices.json"),
    }));
}

/// The choices file: a JSON map, rewritten atomically. A failed write (a full disk) only means the next start
/// times again.
struct FileMemory {
    path: PathBuf,
}

impl FileMemory {
    fn read(&self) -> HashMap<String, Int8Choice> {
        std::fs::read(&self.path)
            .ok()
            .filter(|b| b.len() <= 1 << 20)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }
}

impl Int8Memory for FileMemory {
    fn recall(&self, key: &str) -> Option<Int8Choice> {
        self.read().get(key).copied()
    }

    fn remember(&self, key: &str, choice: &Int8Choice) {
        let mut all = self.read();
        // Bounded: the models a device has held on this CPU, not a history.
        if all.len() >= 256 {
            all.clear();
        }
        all.insert(
            key.to_string(),
            Int8Choice {
                remembered: false,
                ..*choice
            },
        );
        let bytes = serde_json::to_vec_pretty(&all).unwrap_or_default();
        if let Err(e) = crate::fsutil::write_atomic(&self.path, &bytes) {
            tracing::debug!(error = %e, path = %self.path.display(), "cannot remember the int8 choice; the next start times again");
        }
    }
}

/// This CPU, as far as kernel choice goes: its model and feature flags (and tract's version, whose kernels are
/// timed), hashed short.
fn cpu_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        use sha2::{Digest, Sha256};
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let mut h = Sha256::new();
        for field in [
            "model name",
            "flags",
            "Features",
            "CPU implementer",
            "CPU part",
        ] {
            if let Some(line) = info.lines().find(|l| l.starts_with(field)) {
                h.update(line.as_bytes());
            }
        }
        h.update(std::env::consts::ARCH.as_bytes());
        h.update(env!("CARGO_PKG_VERSION").as_bytes());
        hex::encode(&h.finalize()[..8])
    })
}

/// The key of a choice: the model file and what shapes its plan (batch, threads, inputs), on this CPU.
pub(super) fn key(digest: &str, plan_facts: &str) -> String {
    use sha2::{Digest, Sha256};
    let facts = hex::encode(&Sha256::digest(plan_facts.as_bytes())[..6]);
    format!("{}-{facts}-{}", &digest[..digest.len().min(16)], cpu_id())
}

/// The median run of `engine` on zeros (a classifier's flat tensor, or a raw model's declared inputs), after a
/// warm-up. A form whose warm-up run alone is slower than `bound` µs (three times the other form's median) is not
/// timed further: it loses whatever its median, and a second of MobileNetV2's integer kernels is not spent twice.
fn time_runs(engine: &Engine, _form: Int8Form, bound: Option<f64>) -> Result<f64, InferenceError> {
    let mut session = engine.session()?;
    let io = engine.spec().io();
    let flat = vec![0f32; engine.plan.shape.iter().product()];
    let raw: Vec<TensorValue> = io
        .iter()
        .flat_map(|io| io.inputs.iter())
        .map(|t| TensorValue {
            name: t.name.clone(),
            shape: t.shape.clone(),
            data: TensorData::zeros(t.datatype, t.len()),
        })
        .collect();
    let mut once = || -> Result<(), InferenceError> {
        if io.is_some() {
            session.run_tensors(&raw).map(drop)
        } else {
            session.run(&flat).map(drop)
        }
    };
    // A warm-up, then at least 3 timed runs and at most 15, for about 200 ms (at most ~2 s for a slow form).
    let warm = Instant::now();
    once()?;
    let warm_us = warm.elapsed().as_secs_f64() * 1e6;
    if bound.is_some_and(|b| warm_us > b) {
        return Ok(warm_us);
    }
    let start = Instant::now();
    let mut times = Vec::new();
    while times.len() < 15 {
        let t = Instant::now();
        once()?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
        let spent = start.elapsed();
        if (times.len() >= 3 && spent >= Duration::from_millis(200))
            || spent >= Duration::from_secs(2)
        {
            break;
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// `auto` for one model: the form remembered for `key`, else both forms loaded and timed, the faster kept.
/// `load(form)` builds the engine of a form.
pub(super) fn choose(
    key: &str,
    load: impl Fn(Int8Form) -> Result<Engine, InferenceError>,
) -> Result<Engine, InferenceError> {
    let remembered = memory().read().unwrap_or_else(|p| p.into_inner()).clone();
    choose_with(key, load, time_runs, made(), remembered.as_deref())
}

/// [`choose`] with its timer, its in-process memo and its memory given (tests inject them).
fn choose_with(
    key: &str,
    load: impl Fn(Int8Form) -> Result<Engine, InferenceError>,
    time: impl Fn(&Engine, Int8Form, Option<f64>) -> Result<f64, InferenceError>,
    made: &Mutex<HashMap<String, Int8Choice>>,
    memory: Option<&dyn Int8Memory>,
) -> Result<Engine, InferenceError> {
    let known = made
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(key)
        .copied()
        .or_else(|| {
            memory.and_then(|m| m.recall(key)).map(|c| Int8Choice {
                remembered: true,
                ..c
            })
        });
    if let Some(choice) = known {
        if let Ok(engine) = load(choice.chosen) {
            made.lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key.to_string(), choice);
            return Ok(engine.with_int8(choice));
        }
    }
    let native = load(Int8Form::Native);
    let float = load(Int8Form::Float);
    let timed = |e: &Result<Engine, InferenceError>, form, bound| {
        e.as_ref().ok().and_then(|e| match time(e, form, bound) {
            Ok(us) => Some(us),
            Err(err) => {
                tracing::warn!(error = %err, ?form, "an int8 form loads but does not run; the other is kept");
                None
            }
        })
    };
    // The float form first (the faster on every CPU measured so far), then the integer one, cut short when it is
    // plainly slower.
    let float_us = timed(&float, Int8Form::Float, None);
    let native_us = timed(&native, Int8Form::Native, float_us.map(|f| 3.0 * f));
    let Some(chosen) = pick(native_us, float_us) else {
        // Neither runs: the integer form's error says why (it is the file as written).
        return native.and(Err(InferenceError::Model(
            "neither form of this int8 model runs on this device".into(),
        )));
    };
    let choice = Int8Choice {
        chosen,
        native_us,
        float_us,
        remembered: false,
    };
    tracing::info!(
        ?chosen,
        native_us,
        float_us,
        "engine.int8 = auto: timed both forms of a real-int8 model, kept the faster"
    );
    made.lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key.to_string(), choice);
    if let Some(m) = memory {
        m.remember(key, &choice);
    }
    let engine = match chosen {
        Int8Form::Native => native?,
        Int8Form::Float => float?,
    };
    Ok(engine.with_int8(choice))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An injected timer makes the form the CPU flags would pick (integer kernels where the CPU has int8 dot
    /// products) the slower one: the faster is kept, whatever the flags say. The choice is remembered in the state
    /// dir's file, so a later load (a restart: a fresh memo) loads only that form and times nothing.
    #[test]
    fn auto_keeps_the_faster_form_whatever_the_cpu_flags_say_and_remembers_it() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let spec: super::super::ModelSpec =
            serde_json::from_str(super::super::BUILTIN_SPEC).unwrap();
        let load = |form: Int8Form| {
            let bytes = match form {
                Int8Form::Native => super::super::BUILTIN_NNEF,
                Int8Form::Float => super::super::BUILTIN_NNEF_QDQ,
            };
            Engine::load_int8(bytes, spec.clone(), super::super::Int8Mode::Native)
        };
        let flagged = if super::super::cpu_has_fast_int8() {
            Int8Form::Native
        } else {
            Int8Form::Float
        };
        let faster = match flagged {
            Int8Form::Native => Int8Form::Float,
            Int8Form::Float => Int8Form::Native,
        };
        let calls = AtomicUsize::new(0);
        let timer = |_: &Engine, form: Int8Form, _: Option<f64>| {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(if form == flagged { 1000.0 } else { 100.0 })
        };
        let dir = tempfile::tempdir().unwrap();
        let memory = FileMemory {
            path: dir.path().join("int8-choices.json"),
        };
        let memo = Mutex::new(HashMap::new());
        let e = choose_with("k", load, timer, &memo, Some(&memory)).unwrap();
        let choice = e.int8_choice().unwrap();
        assert_eq!(choice.chosen, faster);
        assert!(!choice.remembered);
        let (fast_us, slow_us) = match faster {
            Int8Form::Native => (choice.native_us, choice.float_us),
            Int8Form::Float => (choice.float_us, choice.native_us),
        };
        assert_eq!((fast_us, slow_us), (Some(100.0), Some(1000.0)));
        assert_eq!(
            e.digest(),
            load(faster).unwrap().digest(),
            "the faster form serves"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        // A restart: nothing in memory, the file remembers.
        let fresh = Mutex::new(HashMap::new());
        let again = choose_with("k", load, timer, &fresh, Some(&memory)).unwrap();
        let c = again.int8_choice().unwrap();
        assert!(c.remembered && c.chosen == faster, "{c:?}");
        assert_eq!(again.digest(), e.digest());
        assert_eq!(calls.load(Ordering::SeqCst), 2, "not timed again");
        // Another CPU or model is another key: timed.
        choose_with("other", load, timer, &fresh, Some(&memory)).unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn the_faster_form_wins_by_a_margin_and_a_form_that_fails_loses() {
        assert_eq!(pick(Some(100.0), Some(50.0)), Some(Int8Form::Float));
        assert_eq!(
            pick(Some(100.0), Some(95.0)),
            Some(Int8Form::Native),
            "within the margin"
        );
        assert_eq!(pick(Some(50.0), Some(100.0)), Some(Int8Form::Native));
        assert_eq!(pick(None, Some(100.0)), Some(Int8Form::Float));
        assert_eq!(pick(Some(100.0), None), Some(Int8Form::Native));
        assert_eq!(pick(None, None), None);
    }
}
