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

/// `OUTPOST_FAULT_RECORDS=<control file>` makes the agent's small durable records (command sequence floors, a
/// download's progress, queued offers, settings) fail as a failing disk would, so an end-to-end test can watch the agent
/// refuse what it cannot record. While the control file exists and its first word is `read`, `write` or `both`,
/// those operations fail; a second word limits them to record keys starting with it. The file is read at each
/// records operation, so a test switches the fault on and off while the daemon runs. Unset (always, in
/// production), this costs one check of a value read once.
pub fn records(write: bool, key: &str) -> bool {
    static CONTROL: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    let Some(control) = CONTROL.get_or_init(|| {
        std::env::var_os("OUTPOST_FAULT_RECORDS")
            .filter(|p| !p.is_empty())
            .map(std::path::PathBuf::from)
    }) else {
        return false;
    };
    let Ok(text) = std::fs::read_to_string(control) else {
        return false;
    };
    let mut words = text.split_whitespace();
    let fails = match words.next() {
        Some("both") => true,
        Some("write") => write,
        Some("read") => !write,
        _ => false,
    };
    fails && key.starts_with(words.next().unwrap_or(""))
}
