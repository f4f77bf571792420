//! Fault injection for crash tests, in the spirit of failpoints: inert unless the environment asks for it.

/// `OUTPOST_FAULT_ABORT_ON_LOAD=<model digest>` makes the agent abort while loading that model, standing in for a
/// model that crashes the runtime, so boot counting can be tested with a real crash.
pub fn maybe_abort_on_load(digest: Option<&str>) {
    if let (Ok(target), Some(d)) = (std::env::var("OUTPOST_FAULT_ABORT_ON_LOAD"), digest) {
        if !target.is_empty() && target == d {
            eprintln!("fault injection: aborting while loading model {d}");
            std::process::abort();
        }
    }
}

/// `OUTPOST_FAULT_FAIL_RUN=<model digest>` makes every run of that model fail, standing in for a model that errors
/// at run time, so probation's error check can be tested on a real daemon.
pub fn maybe_fail_run(digest: &str) -> Result<(), crate::inference::InferenceError> {
    static TARGET: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let target = TARGET.get_or_init(|| {
        std::env::var("OUTPOST_FAULT_FAIL_RUN")
            .ok()
            .filter(|t| !t.is_empty())
    });
    match target {
        Some(t) if t == digest => Err(crate::inference::InferenceError::Run(format!(
            "fault injection: runs of model {digest} fail"
        ))),
        _ => Ok(()),
    }
}
