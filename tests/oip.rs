//! The Open Inference Protocol v2 (issue 18, item 3), driven by the real `tritonclient` HTTP client from the
//! package registry, as an ML engineer's code would call Triton: health, server and model metadata, readiness by
//! version, JSON and binary tensors, Triton's classification extension, an encoded image as BYTES, and the 4xx of
//! requests that do not fit. `scripts/test.sh` builds the client's venv (scripts/lib/pyenv.sh) and exports
//! `OUTPOST_PYTHON`; the script is `tests/oip/triton_client.py`.

mod common;

use common::{s, Daemon, Fixture};

fn python() -> String {
    std::env::var("OUTPOST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "OUTPOST_PYTHON is unset: run the tests with scripts/test.sh, which builds the tritonclient venv \
             (or `source scripts/lib/pyenv.sh && outpost_pyenv` first)"
        )
    })
}

#[test]
fn tritonclient_drives_the_agent_through_the_open_inference_protocol() {
    let f = Fixture::new();
    let daemon = Daemon::start(&f.path("state"), &[]);
    let (image, label) = common::test_images()[3].clone();
    let out = std::process::Command::new(python())
        .arg(common::repo().join("tests/oip/triton_client.py"))
        .args(["--url", &daemon.addr])
        .args(["--models", s(&common::models())])
        .args(["--image", s(&image)])
        .args(["--label", &label])
        .output()
        .expect("run the tritonclient script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The bad requests changed nothing: the daemon answers /v1 as before.
    let agent = common::http();
    let (code, v) = daemon.infer(&agent, &std::fs::read(&image).unwrap(), "image/png");
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["label"], label.as_str(), "{v}");
    assert!(daemon.stop().success());
}
