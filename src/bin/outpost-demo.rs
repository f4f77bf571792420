//! `outpost-demo`: the whole system in one process with an embedded broker, narrated (see `outpost::demo`).
//! Built only with `--features demo`, so the device binary never carries the broker.

use std::process::ExitCode;

fn main() -> ExitCode {
    // The embedded broker logs every client disconnect as an error: quiet it, the narration says what matters.
    let _ =
        outpost::telemetry::init_tracing(outpost::config::LogFormat::Plain, "error,rumqttd=off");
    let models = std::env::args_os()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("models"));
    // The demo's own HTTP client blocks, so give the runtime threads to spare for the agent.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(8)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(outpost::demo::run(models)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
