//! Shadow and A/B evaluation of a staged candidate on a real daemon: the candidate runs after the answer, never
//! before it, within its CPU share; an A/B split is sticky per input with per-arm metrics; forwarded hard cases say
//! which model agreed with the cloud.

use crate::common;

use crate::common::{s, wait_until, Daemon, Fixture, Mosquitto};
use std::collections::HashMap;
use std::time::Duration;

fn config(f: &Fixture, body: &str) -> String {
    let path = f.path("outpost.toml");
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

fn stage(f: &Fixture, d: &Daemon, bundle: &std::path::Path, version: u64) {
    let out = f.install(&d.state_dir, bundle, &["--candidate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(
        "the daemon stages the candidate",
        Duration::from_secs(20),
        || {
            d.local_status()
                .service
                .candidate
                .is_some_and(|c| c.version == version)
        },
    );
}

fn images(n: usize) -> Vec<Vec<u8>> {
    common::test_images()
        .iter()
        .take(n)
        .map(|(p, _)| std::fs::read(p).unwrap())
        .collect()
}

#[test]
fn a_candidate_shadows_live_traffic_and_an_ab_split_is_sticky_with_per_arm_metrics() {
    let f = Fixture::new();
    let good = f.bundle_with_spec("v2.bundle", "edge-fp32", "edge-fp32", 2, &[&f.key1], &[]);
    let cfg = config(
        &f,
        "[cache]\nenabled = false\n\n[shadow]\nfraction = 1.0\nsplit = 0.3\n",
    );
    let d = Daemon::start(&f.path("state"), &["--config", &cfg]);
    stage(&f, &d, &good, 2);
    let st = d.local_status().service;
    assert_eq!(
        st.model.version, 1,
        "staging does not change the live model: {st:?}"
    );
    assert!(st.trial.is_none());

    let agent = common::http();
    let imgs = images(200);
    let mut arm_of: HashMap<usize, String> = HashMap::new();
    for round in 0..2 {
        for (i, img) in imgs.iter().enumerate() {
            let (code, v) = d.infer(&agent, img, "image/png");
            assert_eq!(code, 200, "{v}");
            let arm = v["arm"]
                .as_str()
                .expect("an arm during a split")
                .to_string();
            let want = if arm == "candidate" { 2 } else { 1 };
            assert_eq!(v["model"]["version"], want, "{v}");
            if round == 1 {
                assert_eq!(arm_of[&i], arm, "image {i} changed arm");
            }
            arm_of.insert(i, arm);
        }
    }
    let on_candidate = arm_of.values().filter(|a| *a == "candidate").count();
    assert!(
        (30..=90).contains(&on_candidate),
        "{on_candidate} of 200 inputs on the candidate at split 0.3"
    );

    let on_active = 200 - on_candidate as u64;
    wait_until("shadow runs recorded", Duration::from_secs(10), || {
        d.local_status()
            .service
            .shadow
            .is_some_and(|sh| sh.runs == 2 * on_active)
    });
    let st = d.local_status().service;
    let sh = st.shadow.as_ref().expect("shadow figures");
    assert!(
        sh.agreement.is_some_and(|a| a > 0.97),
        "fp32 and int8 agree: {sh:?}"
    );
    assert!(
        sh.candidate_mean_confidence.is_some_and(|c| c > 0.8),
        "{sh:?}"
    );
    assert!(sh.candidate_run_us.p50.is_some_and(|p| p > 0), "{sh:?}");
    let ab = st.ab.as_ref().expect("A/B figures");
    assert_eq!(ab.candidate.requests, 2 * on_candidate as u64, "{ab:?}");
    assert_eq!(ab.active.requests, 2 * on_active, "{ab:?}");
    let m = d.metrics();
    for want in [
        "outpost_candidate_staged{model=\"edge-int8\"} 1",
        &format!(
            "outpost_ab_requests_total{{arm=\"candidate\"}} {}",
            2 * on_candidate
        ),
        "outpost_shadow_runs_total{agreed=\"true\"}",
        "outpost_shadow_confidence_bucket{model=\"candidate\"",
        "outpost_ab_confidence_bucket{arm=\"active\"",
    ] {
        assert!(m.contains(want), "no {want} in /metrics");
    }

    // Activated: the candidate goes live on trial and stops shadowing.
    let out = common::outpost(&["activate", "--state-dir", s(&d.state_dir), "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(
        "the candidate goes live on trial",
        Duration::from_secs(20),
        || {
            let st = d.local_status().service;
            st.model.version == 2 && st.trial.is_some() && st.candidate.is_none()
        },
    );
    let (_, v) = d.infer(&agent, &imgs[0], "image/png");
    assert!(v["arm"].is_null(), "no split without a candidate: {v}");
    assert!(d.stop().success());
}

#[test]
fn a_slow_candidate_never_delays_an_answer_and_keeps_to_its_cpu_share() {
    let f = Fixture::new();
    // MobileNetV2 (224x224x3, ~100x the edge model's run time) staged beside the 8x8 edge model.
    let slow = f.bundle_with_spec(
        "slow.bundle",
        "mobilenetv2-fp32",
        "mobilenetv2-fp32",
        2,
        &[&f.key1],
        &[],
    );
    let cfg = config(
        &f,
        "[cache]\nenabled = false\n\n[shadow]\nfraction = 1.0\nmax_cpu_share = 0.25\nqueue = 2\n",
    );
    let d = Daemon::start(&f.path("state"), &["--config", &cfg]);
    stage(&f, &d, &slow, 2);
    let agent = common::http();
    let mut latencies = Vec::new();
    for img in images(300) {
        let (code, v) = d.infer(&agent, &img, "image/png");
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["model"]["version"], 1, "the live model answers");
        latencies.push(v["latency_us"].as_u64().unwrap());
    }
    latencies.sort_unstable();
    let answer_p50 = latencies[latencies.len() / 2];
    // The samples still queued when the last answer went out run at the shadow thread's pace.
    let settled = |sh: &serde_json::Value| {
        ["runs", "dropped", "failures"]
            .iter()
            .map(|k| sh[k].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    wait_until(
        "the queued shadow runs finish",
        Duration::from_secs(10),
        || settled(&d.get_json("/v1/status")["shadow"]) == 300,
    );
    let sh = d.get_json("/v1/status")["shadow"].clone();
    let runs = sh["runs"].as_u64().unwrap();
    let dropped = sh["dropped"].as_u64().unwrap();
    let shadow_p50 = sh["candidate_run_us"]["p50"].as_u64().unwrap();
    // Answers did not wait for the candidate: they are faster than one candidate run.
    assert!(
        answer_p50 < shadow_p50,
        "answer p50 {answer_p50} us vs candidate run p50 {shadow_p50} us"
    );
    // The share held: most samples were skipped rather than queued behind the slow model.
    assert!(
        runs > 0 && dropped > runs,
        "{runs} shadow runs, {dropped} skipped: {sh}"
    );
    assert_eq!(
        runs + dropped + sh["failures"].as_u64().unwrap(),
        300,
        "every request was sampled: {sh}"
    );
    eprintln!("answer p50 {answer_p50} us, candidate run p50 {shadow_p50} us, {runs} shadow runs, {dropped} skipped");
    assert!(d.stop().success());
}

#[test]
fn forwarded_hard_cases_say_which_model_agreed_with_the_cloud() {
    let broker = Mosquitto::start();
    let f = Fixture::new();
    let candidate = f.bundle_with_spec("v2.bundle", "edge-fp32", "edge-fp32", 2, &[&f.key1], &[]);
    let _w = f.cloud_worker(&broker.url(), &f.path("dataset"), &[]);
    let cfg = config(&f, "[cache]\nenabled = false\n\n[shadow]\nfraction = 0.0\n");
    // Every input is hard, so every request is forwarded; with fraction 0 only hard cases are shadowed.
    let d = Daemon::start(
        &f.path("state"),
        &[
            &["--config", cfg.as_str()][..],
            &f.fleet_args(&broker.url(), "sh1"),
            &["--hardness", "max-prob:1.01", "--cloud-deadline-ms", "3000"],
        ]
        .concat(),
    );
    stage(&f, &d, &candidate, 2);
    let agent = common::http();
    let n = 20;
    for img in images(n) {
        let (code, v) = d.infer(&agent, &img, "image/png");
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["source"], "cloud", "{v}");
    }
    wait_until(
        "every forwarded case compared",
        Duration::from_secs(10),
        || d.get_json("/v1/status")["shadow"]["cloud"]["cases"] == n as u64,
    );
    let sh = d.get_json("/v1/status")["shadow"].clone();
    assert_eq!(
        sh["runs"], n as u64,
        "only the hard cases were shadowed: {sh}"
    );
    let (a, c) = (
        sh["cloud"]["active_agreed"].as_u64().unwrap(),
        sh["cloud"]["candidate_agreed"].as_u64().unwrap(),
    );
    assert!(
        a >= 15 && c >= 15,
        "both edge models mostly agree with the cloud on easy digits: {sh}"
    );
    assert!(d
        .metrics()
        .contains("outpost_shadow_cloud_agreed_total{model=\"candidate\"}"));
    assert!(d.stop().success());
}

/// A candidate whose runs fail, on its share of an A/B split: each such request is answered again by the active
/// release (200, its version, arm `active`: the arm that answered), and the arms' figures take only runs of their own
/// release on their own share: the candidate's arm records none, the active's fewer than the requests (the
/// candidate's share answered by it is on neither arm).
#[test]
fn a_failed_run_on_the_candidates_share_is_answered_by_the_active_release_and_on_neither_arm() {
    use outpost::serve::InferResponse;
    use outpost::wire::status::ArmName;
    let f = Fixture::new();
    let good = f.bundle_with_spec("v2.bundle", "edge-fp32", "edge-fp32", 2, &[&f.key1], &[]);
    // The bundle holds the ONNX file alone: the candidate's digest is the file's.
    let digest = outpost::inference::digest_hex(
        &std::fs::read(common::models().join("edge-fp32.onnx")).unwrap(),
    );
    let cfg = config(
        &f,
        "[cache]\nenabled = false\n\n[shadow]\nfraction = 0.0\nsplit = 0.5\n",
    );
    let d = Daemon::start_with_env(
        &f.path("state"),
        &["--config", &cfg],
        &[("OUTPOST_FAULT_FAIL_RUN", &digest)],
    );
    stage(&f, &d, &good, 2);
    let agent = common::http();
    let n = 60;
    for img in images(n) {
        let (code, v) = d.infer(&agent, &img, "image/png");
        assert_eq!(code, 200, "{v}");
        let r: InferResponse = serde_json::from_value(v).unwrap();
        assert_eq!(r.model.version, 1, "the active release answered: {r:?}");
        assert_eq!(r.arm, Some(ArmName::Active), "{r:?}");
    }
    let ab = d
        .local_status()
        .service
        .ab
        .expect("A/B figures during a split");
    assert_eq!(ab.candidate.requests, 0, "{ab:?}");
    // At split 0.5, some of 60 inputs fall on the candidate's share (all 60 on one side: 2^-59).
    assert!(
        (1..n as u64).contains(&ab.active.requests),
        "the active arm counts its own share only: {ab:?}"
    );
    assert!(d.stop().success());
}
