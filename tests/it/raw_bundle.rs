//! A raw tensor model through the signed update path (issue 18, item 3): a bundle of the real Silero VAD (three
//! inputs of two datatypes) is bundle format 2, with golden tensors of real speech for the on-device gate; installed
//! beside the running default model it is served through the Open Inference Protocol with onnxruntime's answers,
//! on trial like any release. A bundle whose golden outputs were tampered with is refused by the gate, and a
//! classifier's bundle is still written and read as format 1.

use crate::common;

use crate::common::{outpostctl, s, wait_until, Daemon, Fixture};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn vad_dir() -> PathBuf {
    common::models().join("vad")
}

/// The model input of frame `i` of the golden speech (`models/vad/frames.bin`, 576 floats a frame).
fn frame(i: usize) -> Vec<f32> {
    let bytes = std::fs::read(vad_dir().join("frames.bin")).unwrap();
    bytes[i * 576 * 4..(i + 1) * 576 * 4]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// One request's tensors for frame `i` from a zero state, as JSON (a golden case, or a v2 request's inputs).
fn case(i: usize) -> serde_json::Value {
    serde_json::json!([
        {"name": "input", "datatype": "FP32", "shape": [1, 576], "data": frame(i)},
        {"name": "state", "datatype": "FP32", "shape": [2, 1, 128], "data": vec![0.0f32; 256]},
        {"name": "sr", "datatype": "INT64", "shape": [], "data": [16000]},
    ])
}

fn vad_bundle(
    f: &Fixture,
    version: u64,
    golden: &Path,
    out: &str,
) -> (PathBuf, std::process::Output) {
    raw_bundle(
        f,
        &vad_dir().join("silero-vad-16k.onnx"),
        &vad_dir().join("silero-vad-16k.spec.json"),
        version,
        golden,
        out,
        "both",
    )
}

/// `forms` is `outpostctl bundle --forms`.
fn raw_bundle(
    f: &Fixture,
    model: &Path,
    spec: &Path,
    version: u64,
    golden: &Path,
    out: &str,
    forms: &str,
) -> (PathBuf, std::process::Output) {
    let path = f.path(out);
    let o = outpostctl(&[
        "bundle",
        "--forms",
        forms,
        "--model",
        s(model),
        "--spec",
        s(spec),
        "--version",
        &version.to_string(),
        "--golden-tensors",
        s(golden),
        "--tolerance",
        "0.0001",
        "--key",
        s(&f.key1),
        "--out",
        s(&path),
    ]);
    (path, o)
}

fn format_byte(bundle: &Path) -> u8 {
    std::fs::read(bundle).unwrap()[8]
}

#[test]
fn a_raw_tensor_model_is_bundled_in_format_2_gated_on_golden_tensors_and_served_after_install() {
    let f = Fixture::new();
    let state = f.path("state");
    let config = f.path("outpost.toml");
    std::fs::write(&config, "[shadow]\nfraction = 1.0\n").unwrap();
    let daemon = Daemon::start(&state, &["--config", s(&config)]);
    let golden = f.path("golden.json");
    let cases: Vec<serde_json::Value> = [0, 40, 80].into_iter().map(case).collect();
    std::fs::write(&golden, serde_json::to_vec(&cases).unwrap()).unwrap();

    let (bundle, o) = vad_bundle(&f, 1, &golden, "vad-v1.bundle");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(format_byte(&bundle), 2, "a raw tensor model needs format 2");
    // A classifier's ONNX-only bundle stays format 1, so agents from before format 2 still take it; with its NNEF
    // forms (the default) it is format 2.
    let classic = f.bundle(
        "classic.bundle",
        "edge-fp32",
        2,
        &[&f.key1],
        &["--forms", "onnx"],
    );
    assert_eq!(format_byte(&classic), 1);
    let both = f.bundle(
        "both.bundle",
        "edge-fp32",
        2,
        &[&f.key1],
        &["--forms", "both"],
    );
    assert_eq!(format_byte(&both), 2);

    f.install_ok(&state, &bundle, &[]);
    wait_until(
        "the daemon serves the new raw model",
        Duration::from_secs(20),
        || daemon.get_json("/v1/status")["models"]["silero-vad"]["model"]["version"] == 1,
    );
    let md = daemon.get_json("/v2/models/silero-vad");
    assert_eq!(md["inputs"][2]["datatype"], "INT64", "{md}");

    // The answers are the in-process call's on the same tensors, and frame 0 (a stream's start, zero state) is
    // onnxruntime's (models/vad/golden.json); the release is on trial.
    let want: serde_json::Value =
        serde_json::from_slice(&std::fs::read(vad_dir().join("golden.json")).unwrap()).unwrap();
    let engine = outpost::inference::Engine::load_files(
        &vad_dir().join("silero-vad-16k.onnx"),
        Some(&vad_dir().join("silero-vad-16k.spec.json")),
    )
    .unwrap();
    let in_process = |i: usize| {
        let golden = outpost::bundle::build::golden_tensors_from_json(
            &serde_json::to_vec(&serde_json::json!([case(i)])).unwrap(),
        )
        .unwrap();
        match &engine.run_tensors(&golden[0]).unwrap()[0].data {
            outpost::inference::TensorData::Fp32(v) => v[0] as f64,
            other => panic!("{other:?}"),
        }
    };
    let infer = |i: usize| {
        let (code, v) = daemon.post_json(
            "/v2/models/silero-vad/infer",
            &serde_json::json!({"inputs": case(i)}),
        );
        assert_eq!(code, 200, "{v}");
        v
    };
    for i in [0usize, 40, 80] {
        let v = infer(i);
        assert_eq!(v["model_version"], "1", "{v}");
        let p = v["outputs"][0]["data"][0].as_f64().unwrap();
        assert_eq!(
            p as f32,
            in_process(i) as f32,
            "frame {i}: the daemon and the in-process call differ"
        );
        if i == 0 {
            let g = want["expected"][0]["prob"].as_f64().unwrap();
            assert!(
                (p - g).abs() < 1e-5,
                "frame 0: {p} against onnxruntime's {g}"
            );
        }
        assert_eq!(
            v["outputs"][1]["shape"],
            serde_json::json!([2, 1, 128]),
            "{v}"
        );
    }
    let st = daemon.get_json("/v1/status");
    assert_eq!(st["models"]["silero-vad"]["trial"]["version"], 1, "{st}");
    assert!(
        st["models"]["silero-vad"]["trial"]["requests"]
            .as_u64()
            .unwrap()
            >= 3,
        "{st}"
    );

    // Golden outputs changed after the bundle was made and re-signed (a broken build, or a variant that is not the
    // model the outputs came from): only the on-device gate can catch it. Refused; version 1 keeps serving.
    let (m1, _, _, _) =
        outpost::bundle::read_header_unverified(&mut std::fs::File::open(&bundle).unwrap())
            .unwrap();
    let mut forged = m1.clone();
    forged.version = 2;
    // The ONNX variant only (the bundle also carries its NNEF form).
    assert_eq!(forged.variants[1].name, "default-nnef");
    forged.variants.truncate(1);
    match &mut forged.variants[0].golden_tensor_outputs[0][0].data {
        outpost::inference::TensorData::Fp32(v) => v[0] += 0.5,
        other => panic!("the VAD's first output is FP32, got {other:?}"),
    }
    let key = outpost::bundle::SigningKeyFile::load(&f.key1).unwrap();
    let mut buf = Vec::new();
    outpost::bundle::write_bundle(
        &mut buf,
        &forged,
        &[std::fs::read(vad_dir().join("silero-vad-16k.onnx")).unwrap()],
        &[&key],
    )
    .unwrap();
    let o = common::outpost(&["promote", "--state-dir", s(&state), "--model", "silero-vad"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let forged_path = f.path("vad-v2-forged.bundle");
    std::fs::write(&forged_path, buf).unwrap();
    let out = f.install(&state, &forged_path, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("golden case 0") && err.contains("output"),
        "{err}"
    );
    let st = daemon.get_json("/v1/status");
    assert_eq!(st["models"]["silero-vad"]["model"]["version"], 1, "{st}");

    // A golden case that does not fit the spec is refused by the operator's tool, naming the input.
    let bad_golden = f.path("golden-bad.json");
    let mut bad = case(0);
    bad[2]["datatype"] = serde_json::json!("INT32");
    std::fs::write(
        &bad_golden,
        serde_json::to_vec(&serde_json::json!([bad])).unwrap(),
    )
    .unwrap();
    let (_, o) = vad_bundle(&f, 3, &bad_golden, "vad-bad.bundle");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("sr is INT32"), "{err}");

    // A re-release of the same bytes staged as the candidate (a release, not a digest: it shadows like any other):
    // every sampled request runs it after the answer, and its outputs agree with the live model's.
    let (v3, o) = vad_bundle(&f, 3, &golden, "vad-v3.bundle");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    f.install_ok(&state, &v3, &["--candidate"]);
    wait_until(
        "the daemon stages the raw candidate",
        Duration::from_secs(20),
        || daemon.get_json("/v1/status")["models"]["silero-vad"]["candidate"]["version"] == 3,
    );
    for i in 0..10 {
        infer(i);
    }
    wait_until("the shadow runs are in", Duration::from_secs(20), || {
        daemon.get_json("/v1/status")["models"]["silero-vad"]["shadow"]["runs"].as_u64() == Some(10)
    });
    let sh = &daemon.get_json("/v1/status")["models"]["silero-vad"]["shadow"];
    assert_eq!(sh["agreements"], 10, "{sh}");
    assert!(daemon.stop().success());
}

/// Probation judges a raw model's trial on its errors (it has no confidence): a release of the datatype model whose
/// runs fail on this device (fault injection) is answered by the previous release, so no request fails, and rolled
/// back; the version floor keeps it out.
#[test]
fn a_raw_model_failing_on_trial_is_answered_by_the_previous_release_and_rolled_back() {
    let f = Fixture::new();
    let state = f.path("state");
    let dir = common::models().join("dtypes");
    let bad =
        outpost::inference::digest_hex(&std::fs::read(dir.join("dtypes-floor11.onnx")).unwrap());
    let config = f.path("outpost.toml");
    std::fs::write(
        &config,
        "[cache]\nenabled = false\n\n[probation]\nrequests = 50\nseconds = 3600\nmin_samples = 5\nlatency_slack_ms = 50.0\n",
    )
    .unwrap();
    let daemon = Daemon::start_with_env(
        &state,
        &["--config", s(&config)],
        &[("OUTPOST_FAULT_FAIL_RUN", bad.as_str())],
    );
    let inputs = serde_json::json!([
        {"name": "pixels", "datatype": "UINT8", "shape": [1, 4], "data": [0, 7, 200, 255]},
        {"name": "offset", "datatype": "INT32", "shape": [1, 4], "data": [-5, 3, 100000, -255]},
        {"name": "scale", "datatype": "INT64", "shape": [1], "data": [7]},
    ]);
    let golden = f.path("golden.json");
    std::fs::write(
        &golden,
        serde_json::to_vec(&serde_json::json!([inputs])).unwrap(),
    )
    .unwrap();
    let spec = dir.join("dtypes.spec.json");
    // tract's NNEF writer loses the model's INT64 constant beyond 32 bits (see inference::onnx::compile): the bundle
    // builder finds that its NNEF form answers differently and refuses it, naming the output and what to do.
    let (_, o) = raw_bundle(
        &f,
        &dir.join("dtypes.onnx"),
        &spec,
        1,
        &golden,
        "d0.bundle",
        "both",
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("output shift differs") && err.contains("--forms onnx"),
        "{err}"
    );
    let (v1, o) = raw_bundle(
        &f,
        &dir.join("dtypes.onnx"),
        &spec,
        1,
        &golden,
        "d1.bundle",
        "onnx",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    f.install_committed(&state, &v1, "dtypes");
    wait_until("dtypes v1 serves", Duration::from_secs(20), || {
        daemon.get_json("/v1/status")["models"]["dtypes"]["model"]["version"] == 1
    });
    let floor = |v: &serde_json::Value| v["outputs"][4]["data"].clone();
    let infer = || {
        let (code, v) = daemon.post_json(
            "/v2/models/dtypes/infer",
            &serde_json::json!({"inputs": inputs}),
        );
        assert_eq!(code, 200, "no request fails: {v}");
        v
    };
    for _ in 0..10 {
        assert_eq!(floor(&infer()), serde_json::json!([10, 10, 200, 255]));
    }
    let (v2, o) = raw_bundle(
        &f,
        &dir.join("dtypes-floor11.onnx"),
        &spec,
        2,
        &golden,
        "d2.bundle",
        "onnx",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    f.install_ok(&state, &v2, &[]);
    wait_until("dtypes v2 goes on trial", Duration::from_secs(20), || {
        daemon.get_json("/v1/status")["models"]["dtypes"]["transitions"]
            .as_array()
            .is_some_and(|t| {
                t.iter()
                    .any(|t| t["transition"] == "trial" && t["version"] == 2)
            })
    });
    // Every request is answered by v1: when v2's run fails, and after the rollback.
    for _ in 0..10 {
        let v = infer();
        assert_eq!(v["model_version"], "1", "{v}");
        assert_eq!(floor(&v), serde_json::json!([10, 10, 200, 255]), "{v}");
    }
    wait_until(
        "the failing release is rolled back",
        Duration::from_secs(20),
        || daemon.get_json("/v1/status")["models"]["dtypes"]["model"]["version"] == 1,
    );
    let st = daemon.get_json("/v1/status");
    let t = &st["models"]["dtypes"]["last_transition"];
    assert_eq!(t["transition"], "rollback", "{st}");
    assert!(t["detail"].as_str().unwrap().contains("failed run"), "{st}");
    let o = common::outpost(&["status", "--state-dir", s(&state), "--model", "dtypes"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let record: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        record["highest_version"], 2,
        "v2 can never return: {record}"
    );
    assert!(daemon.stop().success());
}
