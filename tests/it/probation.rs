//! Probation on a real daemon: a healthy model commits; a model that errors, slows down or loses confidence is
//! rolled back by the daemon itself; and continuous traffic across a swap and a rollback never fails a request.

use crate::common;

use crate::common::{outpost, s, status, wait_until, Daemon, Fixture};
use outpost::inference::{DecodeLimits, Engine};
use outpost::wire::status::TransitionKind;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn digest_of(model: &str) -> String {
    outpost::inference::digest_hex(
        &std::fs::read(common::models().join(format!("{model}.onnx"))).unwrap(),
    )
}

fn write_config(f: &Fixture, body: &str) -> String {
    let path = f.path("outpost.toml");
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

/// Latency is the subject of one test only: the others give it a 50 ms slack, since six daemons of this file on two
/// cores have let a scheduler stall roll a model back on its p99 before the verdict under test.
const PROBATION: &str = "[cache]\nenabled = false\n\n[probation]\nrequests = 40\nseconds = 3600\nmin_samples = 20\nlatency_slack_ms = 50.0\n";

/// Sends `n` test images; every one must be answered 200. Returns the answers.
fn send(daemon: &Daemon, n: usize) -> Vec<serde_json::Value> {
    let agent = common::http();
    common::test_images()
        .iter()
        .take(n)
        .map(|(p, _)| {
            let (code, v) = daemon.infer(&agent, &std::fs::read(p).unwrap(), "image/png");
            assert_eq!(code, 200, "{v}");
            v
        })
        .collect()
}

fn counted(metrics: &str, transition: &str, cause: &str) -> bool {
    metrics.lines().any(|l| {
        l.starts_with("outpost_slot_transitions_total")
            && l.contains(&format!("transition=\"{transition}\""))
            && l.contains(&format!("cause=\"{cause}\""))
            && l.ends_with(" 1")
    })
}

/// Installs `bundle` with the CLI and waits until the daemon serves `digest` on trial.
fn install_and_wait(f: &Fixture, daemon: &Daemon, state: &Path, bundle: &Path, digest: &str) {
    let out = f.install(state, bundle, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(
        "the daemon puts the new model on trial",
        Duration::from_secs(20),
        || {
            let st = daemon.local_status().service;
            st.model.digest == digest && st.trial.is_some()
        },
    );
}

#[test]
fn a_healthy_model_is_committed_after_its_trial() {
    let f = Fixture::new();
    let state = f.path("state");
    let config = write_config(&f, PROBATION);
    let daemon = Daemon::start(&state, &["--config", &config]);
    send(&daemon, 40); // the built-in model's baseline
    let fp32 = digest_of("edge-fp32");
    let b = f.bundle("v2.bundle", "edge-fp32", 2, &[&f.key1], &[]);
    install_and_wait(&f, &daemon, &state, &b, &fp32);
    let answers = send(&daemon, 40);
    assert!(
        answers
            .iter()
            .all(|a| a["model"]["digest"] == fp32.as_str()),
        "an answer from another model: {}",
        daemon.get_json("/v1/status")
    );
    wait_until("the trial is committed", Duration::from_secs(10), || {
        status(&state)["trial"].is_null()
    });
    // The record is written first, then the service ends the trial: the daemon's status may lag by a moment.
    wait_until("the daemon ends the trial", Duration::from_secs(5), || {
        daemon.local_status().service.trial.is_none()
    });
    let st = daemon.local_status().service;
    assert_eq!(st.model.digest, fp32);
    assert_eq!(
        st.last_transition.as_ref().map(|t| t.transition),
        Some(TransitionKind::Commit),
        "{st:?}"
    );
    let m = daemon.metrics();
    assert!(counted(&m, "trial", "install"), "{m}");
    assert!(counted(&m, "commit", "probation"), "{m}");
    assert!(
        m.contains("outpost_trial_active{model=\"edge-int8\"} 0"),
        "{m}"
    );
    assert!(daemon.stop().success());
}

/// Installs a model that passes its install gate but fails on live traffic; returns the rollback reason.
fn rolled_back(model: &str, spec: &str, env: &[(&str, &str)], probation: &str) -> String {
    let f = Fixture::new();
    let state = f.path("state");
    let config = write_config(&f, probation);
    let daemon = Daemon::start_with_env(&state, &["--config", &config], env);
    let builtin = daemon.local_status().service.model.digest;
    send(&daemon, 40);
    let digest = digest_of(model);
    let b = f.bundle_with_spec("v2.bundle", model, spec, 2, &[&f.key1], &[]);
    install_and_wait(&f, &daemon, &state, &b, &digest);
    // Every request is answered, by the model on trial or, after the verdict, by the previous one.
    send(&daemon, 40);
    wait_until("the daemon rolls back", Duration::from_secs(20), || {
        daemon.local_status().service.model.digest == builtin
    });
    let record = status(&state);
    assert!(record["trial"].is_null(), "{record}");
    assert!(
        record["active"].is_null(),
        "back to the built-in model: {record}"
    );
    assert_eq!(
        record["highest_version"], 2,
        "the bad version can never return"
    );
    let last = daemon
        .local_status()
        .service
        .last_transition
        .expect("a transition");
    assert_eq!(last.transition, TransitionKind::Rollback, "{last:?}");
    let m = daemon.metrics();
    assert!(counted(&m, "rollback", "probation"), "{m}");
    assert!(
        m.contains("outpost_trial_active{model=\"edge-int8\"} 0"),
        "{m}"
    );
    // A reinstall of the same version is refused as a replay.
    let again = f.install(&state, &b, &[]);
    assert!(!again.status.success());
    assert!(daemon.stop().success());
    last.detail
}

#[test]
fn a_model_whose_confidence_collapses_is_rolled_back() {
    let why = rolled_back("edge-flat", "edge-flat", &[], PROBATION);
    assert!(why.contains("confidence drifted"), "{why}");
}

#[test]
fn a_model_much_slower_than_the_previous_one_is_rolled_back() {
    let why = rolled_back(
        "mobilenetv2-fp32",
        "mobilenetv2-fp32",
        &[],
        &PROBATION.replace("latency_slack_ms = 50.0", "latency_slack_ms = 2.0"),
    );
    assert!(why.contains("latency p99"), "{why}");
}

#[test]
fn a_model_that_fails_its_runs_is_rolled_back_and_no_request_fails() {
    let digest = digest_of("edge-fp32");
    let why = rolled_back(
        "edge-fp32",
        "edge-int8",
        &[("OUTPOST_FAULT_FAIL_RUN", digest.as_str())],
        PROBATION,
    );
    assert!(why.contains("failed run"), "{why}");
}

/// What each model answers for each image, computed in-process with the same library.
fn expected(models: &[&str], images: &[Vec<u8>]) -> HashMap<String, Vec<(String, f32)>> {
    let mut out = HashMap::new();
    for m in models {
        let engine = Engine::load_files(
            &common::models().join(format!("{m}.onnx")),
            Some(&common::models().join("edge-int8.spec.json")),
        )
        .unwrap();
        let mut session = engine.session().unwrap();
        let answers = images
            .iter()
            .map(|img| {
                let t = engine
                    .tensor_from_image(img, &DecodeLimits::default())
                    .unwrap();
                let p = session.classify(&t).unwrap();
                (p.label, p.confidence)
            })
            .collect();
        out.insert(engine.digest().to_string(), answers);
    }
    out
}

#[test]
fn continuous_requests_across_a_swap_and_a_rollback_never_fail() {
    let f = Fixture::new();
    let state = f.path("state");
    // A long trial, so that only the install and the operator's rollback change the model.
    let config = write_config(
        &f,
        "[cache]\nenabled = false\n\n[probation]\nrequests = 1000000\nseconds = 3600\n",
    );
    let daemon = Arc::new(Daemon::start(&state, &["--config", &config]));
    let images: Arc<Vec<Vec<u8>>> = Arc::new(
        common::test_images()
            .iter()
            .take(200)
            .map(|(p, _)| std::fs::read(p).unwrap())
            .collect(),
    );
    let want = expected(&["edge-int8", "edge-fp32"], &images);
    let (int8, fp32) = (digest_of("edge-int8"), digest_of("edge-fp32"));
    assert_eq!(
        daemon.get_json("/v1/status")["model"]["digest"],
        int8.as_str()
    );

    let stop = Arc::new(AtomicBool::new(false));
    // (client, image, status, body)
    let log = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (daemon, images, stop, log) =
                (daemon.clone(), images.clone(), stop.clone(), log.clone());
            std::thread::spawn(move || {
                let agent = common::http();
                let mut i = c * 50;
                while !stop.load(Ordering::SeqCst) {
                    let idx = i % images.len();
                    let (code, v) = daemon.infer(&agent, &images[idx], "image/png");
                    log.lock().unwrap().push((c, idx, code, v));
                    i += 1;
                }
            })
        })
        .collect();
    let seen = |digest: &str| {
        let d = digest.to_string();
        let log = log.clone();
        move || {
            log.lock()
                .unwrap()
                .iter()
                .rev()
                .take(20)
                .filter(|e| e.3["model"]["digest"] == d.as_str())
                .count()
                == 20
        }
    };
    // Facts, not time: the clients are sending, then each phase carries on for 20 more answers.
    let answered = |n: usize| {
        let log = log.clone();
        move || log.lock().unwrap().len() >= n
    };
    let so_far = || log.lock().unwrap().len();
    wait_until(
        "the clients are sending",
        Duration::from_secs(20),
        answered(20),
    );
    let b = f.bundle("v2.bundle", "edge-fp32", 2, &[&f.key1], &[]);
    let out = f.install(&state, &b, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(
        "answers come from the new model",
        Duration::from_secs(20),
        seen(&fp32),
    );
    wait_until(
        "20 more answers on the new model",
        Duration::from_secs(20),
        answered(so_far() + 20),
    );
    assert!(outpost(&["rollback", "--state-dir", s(&state)])
        .status
        .success());
    wait_until(
        "answers come from the old model again",
        Duration::from_secs(20),
        seen(&int8),
    );
    wait_until(
        "20 more answers on the old model",
        Duration::from_secs(20),
        answered(so_far() + 20),
    );
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }

    let log = log.lock().unwrap();
    let failed: Vec<_> = log.iter().filter(|e| e.2 != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        log.len(),
        failed.first()
    );
    let mut per_model: HashMap<String, usize> = HashMap::new();
    let mut changes = [0usize; 4];
    let mut last: [Option<String>; 4] = Default::default();
    for (c, idx, _, v) in log.iter() {
        let digest = v["model"]["digest"].as_str().unwrap().to_string();
        let answers = want
            .get(&digest)
            .unwrap_or_else(|| panic!("an answer names an unknown model {digest}"));
        let (label, confidence) = &answers[*idx];
        assert_eq!(v["label"], label.as_str(), "image {idx} on {digest}");
        assert_eq!(
            v["confidence"].as_f64().unwrap() as f32,
            *confidence,
            "image {idx}: the answer does not come from the model it names ({digest})"
        );
        if last[*c].as_ref().is_some_and(|l| *l != digest) {
            changes[*c] += 1;
        }
        last[*c] = Some(digest.clone());
        *per_model.entry(digest).or_default() += 1;
    }
    // Each client sees int8, then fp32, then int8: a swap is clean, answers never flip back and forth.
    assert!(
        changes.iter().all(|&n| n == 2),
        "model changes per client: {changes:?}"
    );
    eprintln!(
        "{} requests, {:?} per model, 0 failed",
        log.len(),
        per_model
    );
    assert!(per_model.get(&fp32).copied().unwrap_or(0) >= 20);
    assert!(per_model.get(&int8).copied().unwrap_or(0) >= 40);
    let daemon = Arc::try_unwrap(daemon).ok().unwrap();
    assert!(daemon.stop().success());
}

/// Issue 18's stuck device: a signed re-release whose model bytes equal the live model's, under a new version and
/// with other labels. The daemon must serve it without a restart (answers name version 2 and its labels, none from
/// the cache of version 1), put it on trial, let probation judge it, and then take the next install.
#[test]
fn a_re_release_of_the_same_bytes_goes_live_on_trial_is_judged_and_never_answers_from_the_old_cache(
) {
    let f = Fixture::new();
    let state = f.path("state");
    let config = write_config(
        &f,
        // With the cache on; latency is not this test's subject (CI once rolled the re-release back on a 13.6 ms p99).
        "[probation]\nrequests = 40\nseconds = 3600\nmin_samples = 20\nlatency_slack_ms = 50.0\n",
    );
    let daemon = Daemon::start(&state, &["--config", &config]);
    let agent = common::http();
    let image = std::fs::read(&common::test_images()[0].0).unwrap();
    for _ in 0..2 {
        let (code, v) = daemon.infer(&agent, &image, "image/png");
        assert_eq!(code, 200, "{v}");
    }
    let (_, cached) = daemon.infer(&agent, &image, "image/png");
    assert_eq!(cached["source"], "cache", "{cached}");
    let v1_label = cached["label"].as_str().unwrap().to_string();
    send(&daemon, 40); // the built-in model's baseline
    let int8 = digest_of("edge-int8");
    assert_eq!(
        daemon.get_json("/v1/status")["model"]["digest"],
        int8.as_str()
    );

    // The same bytes, version 2, labels renamed.
    let mut spec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(common::models().join("edge-int8.spec.json")).unwrap(),
    )
    .unwrap();
    let renamed: Vec<String> = (0..10).map(|i| format!("digit-{i}")).collect();
    spec["labels"] = serde_json::json!(renamed);
    let spec_path = f.path("renamed.spec.json");
    std::fs::write(&spec_path, serde_json::to_vec(&spec).unwrap()).unwrap();
    let bundle = f.path("v2.bundle");
    let models = common::models();
    let o = common::outpostctl(&[
        "bundle",
        "--forms",
        "onnx",
        "--model",
        s(&models.join("edge-int8.onnx")),
        "--spec",
        s(&spec_path),
        "--version",
        "2",
        "--golden-images",
        s(&models.join("data/calib")),
        "--out",
        s(&bundle),
        "--key",
        s(&f.key1),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = f.install(&state, &bundle, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(
        "the daemon serves version 2 on trial",
        Duration::from_secs(20),
        || {
            let st = daemon.local_status().service;
            st.model.version == 2 && st.trial.is_some()
        },
    );
    let st = daemon.local_status().service;
    assert_eq!(st.model.digest, int8, "the same bytes: {st:?}");
    assert_eq!(st.trial.as_ref().map(|t| t.version), Some(2), "{st:?}");

    // The input cached under version 1 is answered by version 2, with version 2's label for the same class.
    let (code, v) = daemon.infer(&agent, &image, "image/png");
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["model"]["version"], 2, "{v}");
    assert_eq!(v["source"], "edge", "an answer of version 1's cache: {v}");
    assert_eq!(v["label"], format!("digit-{v1_label}"), "{v}");

    let answers = send(&daemon, 40);
    assert!(
        answers
            .iter()
            .all(|a| a["model"]["version"] == 2
                && a["label"].as_str().unwrap().starts_with("digit-")),
        "an answer from another release: {}",
        daemon.get_json("/v1/status")
    );
    wait_until("the trial is committed", Duration::from_secs(10), || {
        status(&state)["trial"].is_null()
    });
    // The record is written first, then the service ends the trial.
    wait_until("the daemon ends the trial", Duration::from_secs(5), || {
        daemon.local_status().service.trial.is_none()
    });
    let last = daemon.local_status().service.last_transition;
    assert_eq!(
        last.as_ref().map(|t| (t.transition, t.version)),
        Some((TransitionKind::Commit, 2)),
        "{last:?}"
    );

    // Not stuck: the next release installs and goes on trial.
    let fp32 = digest_of("edge-fp32");
    let b3 = f.bundle("v3.bundle", "edge-fp32", 3, &[&f.key1], &[]);
    install_and_wait(&f, &daemon, &state, &b3, &fp32);
    assert!(daemon.stop().success());
}
