//! A detector and a scorer served next to the classifier (issue 20, "done when"), each through every part of the
//! pipeline, on a real daemon with a real mosquitto and a real `outpostctl cloud` worker:
//! - the cache, and hard cases forwarded to the cloud's bigger model of the same task with signed (format 2)
//!   answers, an answer signed by an untrusted key refused;
//! - probation rolling back a degraded release of each;
//! - shadow agreement of a staged candidate (F1 of the boxes; scores on the same side of their threshold);
//! - a staged rollout of a detector release over two devices, and one of a degraded release halting on its gate.
//!
//! Models: models/make_detectors.py (digits on 64 x 64 canvases; autoencoder anomaly scores on 28 x 28 digits).

use crate::common;

use crate::common::{post_image, s, wait_until, Daemon, Fixture, Mosquitto};
use std::process::Command;
use std::time::Duration;

fn canvases(split: &str) -> Vec<Vec<u8>> {
    let dir = common::models().join("data/det").join(split);
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    paths.sort();
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

fn digits(n: usize) -> Vec<Vec<u8>> {
    common::test_images()
        .iter()
        .take(n)
        .map(|(p, _)| std::fs::read(p).unwrap())
        .collect()
}

fn model(path: &str) -> String {
    common::models().join(path).display().to_string()
}

fn config(f: &Fixture, body: &str) -> String {
    let p = f.path("outpost.toml");
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

/// Sends every image to the model; each must be a 200. Returns the answers.
fn send(d: &Daemon, name: &str, images: &[Vec<u8>]) -> Vec<serde_json::Value> {
    images
        .iter()
        .map(|img| {
            let (code, v) = post_image(d, &format!("/v1/models/{name}/infer"), img);
            assert_eq!(code, 200, "{v}");
            v
        })
        .collect()
}

#[test]
fn detector_and_scorer_go_through_the_cache_and_the_cloud_with_signed_answers() {
    let broker = Mosquitto::start();
    let url = broker.url();
    let f = Fixture::new();
    let ds = f.path("dataset");
    let det_cloud = format!("det-edge={}", model("det/det-cloud-fp32.onnx"));
    let score_cloud = format!("score-edge={}", model("score/score-cloud-fp32.onnx"));
    let _w = f.cloud_worker(&url, &ds, &["--model", &det_cloud, "--model", &score_cloud]);
    let cfg = config(&f, "[forward]\ndeadline_ms = 5000\n");
    let (m1, m2, m3) = (
        model("edge-int8.onnx"),
        model("det/det-edge-int8.onnx"),
        model("score/score-edge-fp32.onnx"),
    );
    let mut args = vec![
        "--config", &cfg, "--model", &m1, "--model", &m2, "--model", &m3,
    ];
    args.extend(f.fleet_args(&url, "tasks-1"));
    let d = Daemon::start(&f.path("state"), &args);
    d.wait_model("det-edge");
    d.wait_model("score-edge");
    d.wait_link_up();

    // The detector: the canvases whose edge answer has an unsure box go to the cloud detector and come back signed.
    let images = canvases("test");
    let answers = send(&d, "det-edge", &images[..80]);
    let hard: Vec<usize> = (0..80)
        .filter(|i| answers[*i]["case_id"].is_string())
        .collect();
    let easy: Vec<usize> = (0..80)
        .filter(|i| answers[*i]["case_id"].is_null())
        .collect();
    assert!(
        hard.len() >= 5 && easy.len() >= 20,
        "{} hard, {} easy",
        hard.len(),
        easy.len()
    );
    for &i in &hard {
        let v = &answers[i];
        assert_eq!(v["task"], "detection", "{v}");
        assert_eq!(
            v["source"], "cloud",
            "the cloud detector answered in time: {v}"
        );
        assert_eq!(v["forwarded"], "answered", "{v}");
        assert!(
            v["edge_answer"]["detections"].is_array(),
            "the edge's boxes beside the cloud's: {v}"
        );
        assert!(v["hardness"].as_f64().unwrap() > 0.0, "{v}");
    }
    for &i in &easy {
        assert_eq!(answers[i]["source"], "edge");
        assert_eq!(answers[i]["hardness"], 0.0);
    }
    // Repeats: the cloud's answer from the cache for a hard canvas, the edge's for an easy one; nothing travels.
    let (_, again) = post_image(&d, "/v1/models/det-edge/infer", &images[hard[0]]);
    assert_eq!(again["source"], "cloud-cache", "{again}");
    assert_eq!(again["detections"], answers[hard[0]]["detections"]);
    let (_, again) = post_image(&d, "/v1/models/det-edge/infer", &images[easy[0]]);
    assert_eq!(again["source"], "cache", "{again}");

    // The scorer: shifted digits near its threshold go to the cloud's scorer, whose own threshold comes back.
    let shifted: Vec<Vec<u8>> = common::shifted_stream()
        .into_iter()
        .take(150)
        .map(|x| x.0)
        .collect();
    let answers = send(&d, "score-edge", &shifted);
    let cloud: Vec<&serde_json::Value> =
        answers.iter().filter(|v| v["source"] == "cloud").collect();
    assert!(
        cloud.len() >= 5,
        "{} scores answered by the cloud",
        cloud.len()
    );
    let cloud_threshold = outpost::inference::ModelSpec::from_file(
        &common::models().join("score/score-cloud-fp32.spec.json"),
    )
    .unwrap();
    let Some(outpost::inference::task::Task::Score(cs)) = cloud_threshold.task else {
        panic!()
    };
    for v in &cloud {
        assert_eq!(v["task"], "score", "{v}");
        let t = v["scores"][0]["threshold"].as_f64().unwrap() as f32;
        assert!(
            (t - cs.thresholds[0]).abs() < 1e-6,
            "the cloud scorer's answer: {v}"
        );
        assert!(v["edge_answer"]["scores"][0]["value"].is_number(), "{v}");
    }
    let positives = answers
        .iter()
        .filter(|v| v["scores"][0]["positive"] == true)
        .count();
    assert!(
        positives > 30,
        "the shifted digits are anomalies to the scorer: {positives} of 150"
    );

    // The classifier beside them still answers.
    let (code, c) = post_image(&d, "/v1/infer", &digits(1)[0]);
    assert_eq!((code, c["label"].is_string()), (200, true), "{c}");

    // Every answer was verified: accepted, and the worker kept each case once, with its task.
    let st = d.get_json("/v1/status");
    let accepted = st["forward"]["answers"]["accepted"].as_u64().unwrap_or(0);
    assert!(accepted as usize >= hard.len() + cloud.len(), "{st}");
    wait_until(
        "the worker stored the cases",
        Duration::from_secs(10),
        || {
            let text = std::fs::read_to_string(ds.join("cases.jsonl")).unwrap_or_default();
            text.lines()
                .filter(|l| l.contains("\"task\":\"detection\""))
                .count()
                == hard.len()
                && text
                    .lines()
                    .filter(|l| l.contains("\"task\":\"score\""))
                    .count()
                    == cloud.len()
        },
    );

    // A format 2 answer signed by a key the device does not trust is refused and counted, and changes nothing.
    let stranger = outpost::bundle::keys::SigningKeyFile::generate().unwrap();
    let case = outpost::forward::Case {
        id: "forged-1".into(),
        device: "tasks-1".into(),
        image: images[0].clone(),
        edge_label: String::new(),
        edge_confidence: 0.0,
        edge_model: String::new(),
        cache_key: vec![0; 64],
        created_unix: 1,
        model: "det-edge".into(),
        tensor: Vec::new(),
        task: None,
    };
    let forged = outpost::forward::Answer::to_task_case(
        &case,
        "x",
        &outpost::inference::ModelSpec::from_file(
            &common::models().join("det/det-edge-int8.spec.json"),
        )
        .unwrap()
        .task
        .unwrap(),
        outpost::inference::task::TaskAnswer::Detections(outpost::inference::task::Detections {
            detections: Vec::new(),
            width: 64,
            height: 64,
        }),
    );
    let file = f.path("forged.bin");
    std::fs::write(&file, forged.sign(&stranger)).unwrap();
    let out = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-V",
            "5",
            "-q",
            "1",
        ])
        .args(["-t", "outpost/v1/device/tasks-1/cloud"])
        .args([
            "-D",
            "publish",
            "content-type",
            outpost::forward::ANSWER_V2_CONTENT_TYPE,
        ])
        .args(["-f", s(&file)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(
        "the forged answer is counted",
        Duration::from_secs(10),
        || d.get_json("/v1/status")["forward"]["answers"]["unknown_key"] == 1,
    );
    assert!(d.stop().success());
}

/// Installs `bundle` and waits until `name` serves `version` on trial.
fn on_trial(f: &Fixture, d: &Daemon, bundle: &std::path::Path, name: &str, version: u64) {
    f.install_ok(&d.state_dir, bundle, &[]);
    wait_until("the release is on trial", Duration::from_secs(20), || {
        let st = &d.get_json("/v1/status")["models"][name];
        st["model"]["version"] == version && !st["trial"].is_null()
    });
}

#[test]
fn degraded_releases_of_a_detector_and_a_scorer_are_rolled_back_on_live_traffic() {
    let f = Fixture::new();
    let state = f.path("state");
    let det_v1 = f.named_bundle("d1.bundle", "det/det-edge-int8", "det-edge", 1);
    let score_v1 = f.named_bundle("s1.bundle", "score/score-edge-fp32", "score-edge", 1);
    f.install_committed(&state, &det_v1, "det-edge");
    f.install_committed(&state, &score_v1, "score-edge");
    let cfg = config(
        &f,
        "[cache]\nenabled = false\n\n[probation]\nrequests = 60\nseconds = 3600\nmin_samples = 30\nlatency_slack_ms = 50.0\n",
    );
    let d = Daemon::start(&state, &["--config", &cfg]);
    d.wait_model("det-edge");
    d.wait_model("score-edge");
    let det_images = canvases("test");
    let score_images = digits(200);
    // Baselines: the live releases' runs.
    send(&d, "det-edge", &det_images[..60]);
    send(&d, "score-edge", &score_images[..60]);

    // The degraded detector (its boxes fall below the threshold): every request is answered, and it goes back.
    let det_v2 = f.named_bundle("d2.bundle", "det/det-edge-degraded", "det-edge", 2);
    on_trial(&f, &d, &det_v2, "det-edge", 2);
    send(&d, "det-edge", &det_images[60..140]);
    wait_until(
        "the detector is rolled back",
        Duration::from_secs(20),
        || d.get_json("/v1/status")["models"]["det-edge"]["model"]["version"] == 1,
    );
    let st = d.get_json("/v1/status")["models"]["det-edge"].clone();
    assert_eq!(st["last_transition"]["transition"], "rollback", "{st}");
    let why = st["last_transition"]["detail"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(why.contains("drifted"), "{why}");

    // The degraded scorer (it calls every digit an anomaly, sure of it): rolled back on its positives per input.
    let score_v2 = f.named_bundle("s2.bundle", "score/score-edge-degraded", "score-edge", 2);
    on_trial(&f, &d, &score_v2, "score-edge", 2);
    send(&d, "score-edge", &score_images[60..200]);
    wait_until("the scorer is rolled back", Duration::from_secs(20), || {
        d.get_json("/v1/status")["models"]["score-edge"]["model"]["version"] == 1
    });
    let st = d.get_json("/v1/status")["models"]["score-edge"].clone();
    assert_eq!(st["last_transition"]["transition"], "rollback", "{st}");
    let why = st["last_transition"]["detail"].as_str().unwrap_or_default();
    assert!(why.contains("per input"), "{why}");
    assert!(d.stop().success());
}

/// Stages `bundle` as the candidate of `name` and waits for its shadow figures after `images`.
fn shadow_agreement(
    f: &Fixture,
    d: &Daemon,
    bundle: &std::path::Path,
    name: &str,
    version: u64,
    images: &[Vec<u8>],
) -> f64 {
    f.install_ok(&d.state_dir, bundle, &["--candidate"]);
    wait_until("the candidate is staged", Duration::from_secs(20), || {
        d.get_json("/v1/status")["models"][name]["candidate"]["version"] == version
    });
    send(d, name, images);
    let mut agreement = 0.0;
    wait_until(
        "the shadow runs are counted",
        Duration::from_secs(20),
        || {
            let sh = &d.get_json("/v1/status")["models"][name]["shadow"];
            agreement = sh["agreement"].as_f64().unwrap_or(-1.0);
            sh["runs"].as_u64().unwrap_or(0) as usize >= images.len() / 2
        },
    );
    agreement
}

#[test]
fn staged_candidates_are_shadowed_with_the_tasks_own_agreement() {
    let f = Fixture::new();
    let state = f.path("state");
    f.install_committed(
        &state,
        &f.named_bundle("d1.bundle", "det/det-edge-int8", "det-edge", 1),
        "det-edge",
    );
    f.install_committed(
        &state,
        &f.named_bundle("s1.bundle", "score/score-edge-fp32", "score-edge", 1),
        "score-edge",
    );
    let cfg = config(
        &f,
        "[cache]\nenabled = false\n\n[shadow]\nfraction = 1.0\nsplit = 0.3\nmax_cpu_share = 0.9\n",
    );
    let d = Daemon::start(&state, &["--config", &cfg]);
    d.wait_model("det-edge");
    d.wait_model("score-edge");
    let det_images = canvases("test");
    // The fp32 form of the same detector finds the same boxes: F1 near 1.
    let good = f.named_bundle("d2.bundle", "det/det-edge-fp32", "det-edge", 2);
    let a = shadow_agreement(&f, &d, &good, "det-edge", 2, &det_images[..60]);
    assert!(a > 0.9, "fp32 against int8 boxes: F1 {a}");
    // The A/B split: the candidate answers about 30 % of the inputs, the same ones every time, each arm with its
    // figures.
    let first = send(&d, "det-edge", &det_images[..40]);
    let second = send(&d, "det-edge", &det_images[..40]);
    let arms: Vec<&str> = first
        .iter()
        .map(|v| {
            v["arm"]
                .as_str()
                .unwrap_or_else(|| panic!("{v}\n{}", d.get_json("/v1/status")))
        })
        .collect();
    assert_eq!(
        arms,
        second
            .iter()
            .map(|v| v["arm"].as_str().unwrap())
            .collect::<Vec<_>>(),
        "sticky per input"
    );
    let by_candidate = arms.iter().filter(|a| **a == "candidate").count();
    assert!(
        (4..=24).contains(&by_candidate),
        "{by_candidate} of 40 answered by the candidate"
    );
    for v in first.iter().filter(|v| v["arm"] == "candidate") {
        assert_eq!(v["model"]["version"], 2, "{v}");
    }
    let ab = d.get_json("/v1/status")["models"]["det-edge"]["ab"].clone();
    assert!(
        ab["candidate"]["requests"].as_u64().unwrap() >= by_candidate as u64 * 2,
        "{ab}"
    );
    assert!(
        ab["candidate"]["mean_confidence"].as_f64().unwrap() > 0.5,
        "{ab}"
    );
    // The degraded one misses most of them.
    let bad = f.named_bundle("d3.bundle", "det/det-edge-degraded", "det-edge", 3);
    let b = shadow_agreement(&f, &d, &bad, "det-edge", 3, &det_images[60..120]);
    assert!(b < 0.6, "degraded against int8 boxes: F1 {b}");
    // Scores: the same scorer agrees on every side; the degraded one calls the digits anomalies.
    let digits = digits(100);
    let same = f.named_bundle("s2.bundle", "score/score-edge-fp32", "score-edge", 2);
    let _ = same;
    let degraded = f.named_bundle("s3.bundle", "score/score-edge-degraded", "score-edge", 3);
    let c = shadow_agreement(&f, &d, &degraded, "score-edge", 3, &digits[..60]);
    assert!(
        c < 0.2,
        "a scorer that flags everything agrees on the few anomalies only: {c}"
    );
    assert!(d.stop().success());
}

/// Runs a rollout of `bundle` to the group `tasks` and returns its exit code (0 completed, 3 halted).
fn rollout(url: &str, f: &Fixture, name: &str, bundle: &std::path::Path) -> Option<i32> {
    let mut run = common::rollout(
        url,
        f,
        &f.path(name),
        "tasks",
        bundle,
        &["--phase-timeout-s", "120"],
    );
    run.0.wait().unwrap().code()
}

#[test]
fn detector_and_scorer_releases_roll_out_over_two_devices_and_a_degraded_one_halts() {
    let broker = Mosquitto::start();
    let url = broker.url();
    let f = Fixture::new();
    let cfg = config(
        &f,
        "[cache]\nenabled = false\n\n[probation]\nrequests = 30\nseconds = 3600\nmin_samples = 10\nlatency_slack_ms = 50.0\n",
    );
    let det_v1 = f.named_bundle("d1.bundle", "det/det-edge-int8", "det-edge", 1);
    let score_v1 = f.named_bundle("s1.bundle", "score/score-edge-fp32", "score-edge", 1);
    let mut daemons = Vec::new();
    for i in 0..2 {
        let id = format!("tasks-{i}");
        let state = f.path(&id);
        f.install_committed(&state, &det_v1, "det-edge");
        f.install_committed(&state, &score_v1, "score-edge");
        let mut args = f.fleet_args(&url, &id);
        args.extend(["--group", "tasks", "--config", &cfg]);
        daemons.push(Daemon::start(&state, &args));
    }
    for d in &daemons {
        d.wait_model("det-edge");
        d.wait_model("score-edge");
    }
    // Steady traffic to both task models of both devices; every answer must be a 200.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (det_images, score_images) = (canvases("test"), digits(200));
    let clients: Vec<_> = daemons
        .iter()
        .map(|d| {
            let urls = [
                (d.url("/v1/models/det-edge/infer"), det_images.clone()),
                (d.url("/v1/models/score-edge/infer"), score_images.clone()),
            ];
            let (stop, failed) = (stop.clone(), failed.clone());
            std::thread::spawn(move || {
                let agent = common::http();
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    for (u, images) in &urls {
                        let r = agent
                            .post(u)
                            .header("content-type", "image/png")
                            .send(&images[i % images.len()][..]);
                        if !matches!(r, Ok(ref r) if r.status() == 200) {
                            failed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                    i += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    let version =
        |d: &Daemon, m: &str| d.get_json("/v1/status")["models"][m]["model"]["version"].clone();
    // The detector's fp32 form as release 2 and the scorer's release 2: both complete on both devices.
    let det_v2 = f.named_bundle("d2.bundle", "det/det-edge-fp32", "det-edge", 2);
    assert_eq!(
        rollout(&url, &f, "r-det-2", &det_v2),
        Some(0),
        "the detector's rollout completes"
    );
    let score_v2 = f.named_bundle("s2.bundle", "score/score-edge-fp32", "score-edge", 2);
    assert_eq!(
        rollout(&url, &f, "r-score-2", &score_v2),
        Some(0),
        "the scorer's rollout completes"
    );
    for d in &daemons {
        wait_until("both releases 2 live", Duration::from_secs(30), || {
            version(d, "det-edge") == 2 && version(d, "score-edge") == 2
        });
    }
    // Degraded releases halt on the gate (shadow agreement, confidence), and nothing changes on the devices.
    let det_bad = f.named_bundle("d3.bundle", "det/det-edge-degraded", "det-edge", 3);
    assert_eq!(
        rollout(&url, &f, "r-det-3", &det_bad),
        Some(3),
        "the degraded detector's rollout halts"
    );
    let score_bad = f.named_bundle("s3.bundle", "score/score-edge-degraded", "score-edge", 3);
    assert_eq!(
        rollout(&url, &f, "r-score-3", &score_bad),
        Some(3),
        "the degraded scorer's rollout halts"
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    for d in &daemons {
        assert_eq!(
            (version(d, "det-edge"), version(d, "score-edge")),
            (2.into(), 2.into())
        );
    }
    assert_eq!(
        failed.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "requests failed during the rollouts"
    );
}

/// A real pretrained scorer of sensor data: Silero VAD (from the silero-vad wheel; three tensor inputs, one a
/// recurrent state the client passes back) served as a scorer of speech probability, streamed over real speech
/// through v2. Its decoded answers match onnxruntime's golden probabilities, and the one frame whose probability lies
/// within the band of 0.5 goes to the cloud with its tensors and comes back signed.
#[test]
fn a_real_scorer_of_tensors_streams_speech_and_forwards_its_unsure_frame() {
    let broker = Mosquitto::start();
    let url = broker.url();
    let f = Fixture::new();
    let vad = model("vad/silero-vad-16k.onnx");
    let spec = model("vad/silero-vad-score.spec.json");
    let cloud = format!("silero-vad={vad}:{spec}");
    let _w = f.cloud_worker(&url, &f.path("dataset"), &["--model", &cloud]);
    let cfg = config(&f, "[forward]\ndeadline_ms = 5000\n");
    let mut args = vec!["--config", &cfg, "--model", &vad, "--spec", &spec];
    args.extend(f.fleet_args(&url, "vad-1"));
    let d = Daemon::start(&f.path("state"), &args);
    d.wait_link_up();
    let md = d.get_json("/v2/models/silero-vad");
    assert_eq!(md["inputs"].as_array().unwrap().len(), 3, "{md}");

    let golden: serde_json::Value =
        serde_json::from_slice(&std::fs::read(common::models().join("vad/golden.json")).unwrap())
            .unwrap();
    let frames: Vec<f32> = std::fs::read(common::models().join("vad/frames.bin"))
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let mut state = vec![0f32; 256];
    let mut forwarded = Vec::new();
    for (i, expected) in golden["expected"].as_array().unwrap().iter().enumerate() {
        let body = serde_json::json!({
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": [1, 576], "data": &frames[i * 576..(i + 1) * 576]},
                {"name": "state", "datatype": "FP32", "shape": [2, 1, 128], "data": state},
                {"name": "sr", "datatype": "INT64", "shape": [], "data": [16000]},
            ],
            "parameters": {"decoded": true},
        });
        let (code, r) = d.post_json("/v2/models/silero-vad/infer", &body);
        assert_eq!(code, 200, "{r}");
        let out = |n: &str| {
            r["outputs"]
                .as_array()
                .unwrap()
                .iter()
                .find(|o| o["name"] == n)
                .unwrap()
                .clone()
        };
        state = out("stateN")["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let answer: serde_json::Value =
            serde_json::from_str(r["parameters"]["outpost_answer"].as_str().unwrap()).unwrap();
        assert_eq!(answer["task"], "score", "{answer}");
        let want = expected["prob"].as_f64().unwrap();
        let edge = if answer["source"] == "cloud" {
            &answer["edge_answer"]
        } else {
            &answer
        };
        let got = edge["scores"][0]["value"].as_f64().unwrap();
        assert!((got - want).abs() < 1e-4, "frame {i}: {got} vs {want}");
        assert_eq!(
            answer["scores"][0]["positive"],
            want >= 0.5,
            "frame {i}: {answer}"
        );
        if (want - 0.5).abs() < 0.2 {
            assert_eq!(
                r["parameters"]["outpost_forwarded"], "answered",
                "frame {i}: {r}"
            );
            assert_eq!(answer["source"], "cloud", "{answer}");
            let cloud = answer["scores"][0]["value"].as_f64().unwrap();
            assert!(
                (cloud - want).abs() < 1e-4,
                "the cloud ran the same frame and state: {cloud}"
            );
            forwarded.push(i);
        } else {
            assert!(
                r["parameters"]["outpost_forwarded"].is_null(),
                "frame {i}: {r}"
            );
        }
    }
    assert_eq!(
        forwarded.len(),
        1,
        "one unsure frame (p = 0.339): {forwarded:?}"
    );
    let st = d.get_json("/v1/status");
    assert_eq!(st["forward"]["answers"]["accepted"], 1, "{st}");
    assert!(d.stop().success());
}

/// The digit detector as slim fleets get it: a bundle with its NNEF forms (its QDQ form keeps its int8 weights and
/// writes ONNX's Slice as tract's), installed on the slim device build, answering the canvases as the full build does.
#[test]
fn the_detector_bundled_with_its_nnef_forms_serves_on_the_slim_build() {
    let f = Fixture::new();
    let bundle = f.bundle_with_spec(
        "d1.bundle",
        "det/det-edge-int8",
        "det/det-edge-int8",
        1,
        &[&f.key1],
        &["--name", "det-edge", "--forms", "both"],
    );
    let images = canvases("test");
    let mut answers = Vec::new();
    for slim in [false, true] {
        let state = f.path(if slim { "slim" } else { "full" });
        f.install_committed(&state, &bundle, "det-edge");
        let d = if slim {
            Daemon::start_bin(&common::slim_outpost(), &state, &[], &[])
        } else {
            Daemon::start(&state, &[])
        };
        d.wait_model("det-edge");
        answers.push(send(&d, "det-edge", &images[..20]));
        assert!(d.stop().success());
    }
    for (full, slim) in answers[0].iter().zip(&answers[1]) {
        assert_eq!(
            full["detections"].as_array().map(Vec::len),
            slim["detections"].as_array().map(Vec::len)
        );
        for (a, b) in full["detections"]
            .as_array()
            .unwrap()
            .iter()
            .zip(slim["detections"].as_array().unwrap())
        {
            assert_eq!(a["label"], b["label"], "{full}\n{slim}");
            for (x, y) in a["box"]
                .as_array()
                .unwrap()
                .iter()
                .zip(b["box"].as_array().unwrap())
            {
                assert!(
                    (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 0.5,
                    "{full}\n{slim}"
                );
            }
        }
    }
}
