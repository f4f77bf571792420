//! The Open Inference Protocol v2 (issue 18, item 3), driven by the real `tritonclient` HTTP client from the
//! package registry, as an ML engineer's code would call Triton: health, server and model metadata, readiness by
//! version, JSON and binary tensors, Triton's classification extension, an encoded image as BYTES, and the 4xx of
//! requests that do not fit. `scripts/test.sh` builds the client's venv (scripts/lib/pyenv.sh) and exports
//! `OUTPOST_PYTHON`; the script is `tests/oip/triton_client.py`.

use crate::common;

use crate::common::{s, Daemon, Fixture};

fn python() -> String {
    std::env::var("OUTPOST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "OUTPOST_PYTHON is unset: run the tests with scripts/test.sh, which builds the tritonclient venv \
             (or `source scripts/lib/pyenv.sh && outpost_pyenv` first)"
        )
    })
}

/// Runs `tests/oip/<script>` against the daemon; it must print "all checks passed".
fn client_script(script: &str, daemon: &Daemon, extra: &[&str]) {
    let out = std::process::Command::new(python())
        .arg(common::repo().join("tests/oip").join(script))
        .args(["--url", &daemon.addr])
        .args(["--models", s(&common::models())])
        .args(extra)
        .output()
        .expect("run the tritonclient script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn tritonclient_drives_the_agent_through_the_open_inference_protocol() {
    let f = Fixture::new();
    let daemon = Daemon::start(&f.path("state"), &[]);
    let (image, label) = common::test_images()[3].clone();
    client_script(
        "triton_client.py",
        &daemon,
        &["--image", s(&image), "--label", &label],
    );
    // The bad requests changed nothing: the daemon answers /v1 as before.
    let agent = common::http();
    let (code, v) = daemon.infer(&agent, &std::fs::read(&image).unwrap(), "image/png");
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["label"], label.as_str(), "{v}");
    assert!(daemon.stop().success());
}

/// Raw tensor models beside the classifier (issue 18, item 3): the real Silero VAD (three inputs, its recurrent
/// state passed back by the client, so never cached) streamed over real speech and compared with onnxruntime's
/// golden probabilities, and a small model that carries UINT8, INT32, INT64 and FP32 in and out. Driven by
/// tritonclient (`tests/oip/raw_models.py`).
#[test]
fn tritonclient_streams_a_stateful_multi_input_model_and_every_datatype() {
    let f = Fixture::new();
    let models = common::models();
    let daemon = Daemon::start(
        &f.path("state"),
        &[
            "--model",
            s(&models.join("edge-int8.onnx")),
            "--model",
            s(&models.join("vad/silero-vad-16k.onnx")),
            "--model",
            s(&models.join("dtypes/dtypes.onnx")),
        ],
    );
    client_script("raw_models.py", &daemon, &[]);
    // /v1 still serves the default model, and an image sent to a raw model is a clear 400.
    let agent = common::http();
    let (image, label) = common::test_images()[3].clone();
    let bytes = std::fs::read(&image).unwrap();
    let (code, v) = daemon.infer(&agent, &bytes, "image/png");
    assert_eq!(
        (code, v["label"].as_str()),
        (200, Some(label.as_str())),
        "{v}"
    );
    let mut r = agent
        .post(&daemon.url("/v1/models/silero-vad/infer"))
        .header("content-type", "image/png")
        .send(&bytes[..])
        .expect("HTTP request");
    let code = r.status().as_u16();
    let body: serde_json::Value =
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("takes tensors"),
        "{body}"
    );
    assert!(daemon.stop().success());
}
