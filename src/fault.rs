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
