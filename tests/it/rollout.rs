//! Gradual rollouts at fleet scale: `outpostctl simulate` runs hundreds of agents (each its own MQTT session, state
//! directory and slots, running the daemon's code) against a real mosquitto; `outpostctl rollout` drives waves,
//! shadow evaluation and gates. Everything is a real process; the operator is killed with SIGKILL.

use crate::common::*;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use outpost::rollout::{members, Phase, Progress};

fn rollout_args(m: &str, f: &Fixture, state: &Path, bundle: &Path) -> Vec<String> {
    [
        "rollout",
        "start",
        "--broker",
        m,
        "--key",
        s(&f.key1),
        "--state",
        s(state),
        "--group",
        "sim",
        "--waves",
        "1,10,50,100",
        "--shadow-s",
        "2",
        "--observe-s",
        "2",
        "--min-shadow-runs",
        "5",
        "--shadow-fraction",
        "1",
        s(bundle),
    ]
    .iter()
    .map(|x| x.to_string())
    .collect()
}

fn progress(state: &Path) -> Progress {
    try_progress(state).expect("the rollout wrote its progress")
}

/// The progress, once the driver has written it (None before, or while it is being replaced).
fn try_progress(state: &Path) -> Option<Progress> {
    std::fs::read(state.join("rollout.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// `outpostctl <args>` in the background, stopped with the test.
fn spawn_ctl(args: &[String], stderr: Stdio) -> KillOnDrop {
    KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_outpostctl"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap(),
    )
}

fn run_rollout(args: &[String], timeout: Duration) -> std::process::ExitStatus {
    wait_exit(&mut spawn_ctl(args, Stdio::inherit()), timeout)
}

/// The wave (0-based) a device first belongs to, among `ids`.
fn first_wave(p: &Progress, ids: &[String], device: &str) -> usize {
    (0..p.plan.waves.len())
        .find(|w| members(&p.plan, *w, ids.iter()).contains(device))
        .unwrap()
}

#[test]
fn a_good_bundle_reaches_200_agents_wave_by_wave_and_a_bad_one_halts_in_the_canary_wave() {
    let m = Mosquitto::start();
    let f = Fixture::new();
    let good = f.bundle_with_spec("good.bundle", "edge-fp32", "edge-fp32", 2, &[&f.key1], &[]);
    let bad = f.bundle_with_spec("bad.bundle", "edge-flat", "edge-flat", 3, &[&f.key1], &[]);
    let sim = simulate(&m, &f, 200, 600);
    let ids = sim.ids.clone();

    // The good bundle: every wave passes its shadow and trial gates, and all 200 agents end on version 2.
    let state = f.path("rollout-good");
    let url = m.url();
    let st = run_rollout(
        &rollout_args(&url, &f, &state, &good),
        Duration::from_secs(300),
    );
    assert!(st.success(), "good rollout exited with {st}");
    let p = progress(&state);
    assert_eq!(p.phase, Phase::Done);
    assert!(p.failed.is_empty(), "failures: {:?}", p.failed);
    assert_eq!(p.sent.len(), 200, "every agent was sent the bundle");
    // Wave by wave: each device got its command in the wave its hash puts it in, not earlier, not later.
    let mut per_wave = [0usize; 4];
    for (d, sent) in &p.sent {
        assert_eq!(
            sent.wave,
            first_wave(&p, &ids, d),
            "{d} was sent in the wrong wave"
        );
        assert!(
            sent.candidate.is_some() && sent.activate.is_some(),
            "{d}: {sent:?}"
        );
        per_wave[sent.wave] += 1;
    }
    assert!(
        per_wave.iter().all(|n| *n > 0),
        "each wave had devices: {per_wave:?}"
    );
    let steps: Vec<&str> = p.history.iter().map(|(_, h)| h.as_str()).collect();
    let order = [
        "wave 2 (10 %): shadow",
        "wave 2 (10 %): active",
        "wave 3 (50 %): shadow",
        "wave 4 (100 %): active",
        "done: every wave passed",
    ];
    let at: Vec<usize> = order
        .iter()
        .map(|o| {
            steps
                .iter()
                .position(|h| h == o)
                .unwrap_or_else(|| panic!("no {o:?} in {steps:?}"))
        })
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
    eprintln!("good rollout: devices per wave {per_wave:?}");

    // The bad bundle (edge-flat: passes its golden gate, live confidence collapses): halted in wave 1. The shadow
    // confidence gate is off here, so the canaries put it live and their own probation rolls it back.
    let state_bad = f.path("rollout-bad");
    let mut args = rollout_args(&url, &f, &state_bad, &bad);
    args.splice(2..2, ["--max-confidence-drop".to_string(), "1".to_string()]);
    let st = run_rollout(&args, Duration::from_secs(120));
    assert_eq!(st.code(), Some(3), "a halted rollout exits 3");
    let pb = progress(&state_bad);
    let Phase::Halted(reason) = &pb.phase else {
        panic!("not halted: {:?}", pb.phase)
    };
    assert_eq!(pb.wave, 0, "halted in the canary wave: {reason}");
    assert!(
        pb.abandon_seq.is_some(),
        "the version was abandoned fleet-wide"
    );
    let canaries = members(&pb.plan, 0, ids.iter());
    let sent: BTreeSet<String> = pb.sent.keys().cloned().collect();
    assert_eq!(
        sent, canaries,
        "only the canary wave was sent the bad bundle"
    );
    assert!(!pb.failed.is_empty());

    // The same model as version 4 with the shadow confidence gate on (the default): halted in the canaries' shadow
    // phase, before any device serves it.
    let flat4 = f.bundle_with_spec("flat4.bundle", "edge-flat", "edge-flat", 4, &[&f.key1], &[]);
    let state4 = f.path("rollout-flat4");
    let st = run_rollout(
        &rollout_args(&url, &f, &state4, &flat4),
        Duration::from_secs(120),
    );
    assert_eq!(st.code(), Some(3));
    let p4 = progress(&state4);
    let Phase::Halted(reason4) = &p4.phase else {
        panic!("not halted: {:?}", p4.phase)
    };
    assert!(reason4.contains("confidence"), "{reason4}");
    assert_eq!(p4.wave, 0);
    assert!(
        p4.sent.values().all(|s| s.activate.is_none()),
        "nothing went live"
    );
    assert_eq!(p4.sent.keys().cloned().collect::<BTreeSet<_>>(), canaries);
    // The halt abandons version 4 where it was staged: the canaries report it gone before the simulation stops.
    wait_until(
        "every canary's status drops version 4",
        Duration::from_secs(60),
        || {
            let statuses = online_statuses(&m, 200);
            canaries.iter().all(|d| {
                statuses
                    .get(d)
                    .is_some_and(|st| st.service.candidate.as_ref().is_none_or(|c| c.version != 4))
            })
        },
    );

    let report = sim.stop();
    assert_eq!(report.len(), 200);
    for (d, r) in &report {
        assert_eq!(
            r["model"]["version"], 2,
            "{d} does not serve version 2: {r}"
        );
        assert!(
            r["candidate"].is_null(),
            "{d} still stages a candidate: {r}"
        );
        let rolled_back_v3 = r["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["transition"] == "rollback" && t["version"] == 3);
        if canaries.contains(d) {
            assert!(
                rolled_back_v3,
                "canary {d} did not roll version 3 back: {r}"
            );
        } else {
            assert_ne!(
                r["last_transfer"]["version"], 3,
                "{d} downloaded the bad bundle: {r}"
            );
            assert!(!rolled_back_v3, "{d} never had version 3: {r}");
        }
    }
    eprintln!(
        "bad rollout: halted in wave 1 with {} canaries ({reason}); {} other agents untouched",
        canaries.len(),
        200 - canaries.len()
    );
}

#[test]
fn the_operator_killed_mid_rollout_continues_where_it_was_and_pause_holds_it() {
    let m = Mosquitto::start();
    let f = Fixture::new();
    let good = f.bundle_with_spec("good.bundle", "edge-fp32", "edge-fp32", 2, &[&f.key1], &[]);
    let sim = simulate(&m, &f, 60, 300);
    let url = m.url();
    let state = f.path("rollout");
    let args = rollout_args(&url, &f, &state, &good);
    let mut child = spawn_ctl(&args, Stdio::null());
    // Killed once wave 2 is under way.
    wait_until("wave 2", Duration::from_secs(120), || {
        try_progress(&state).is_some_and(|p| p.wave >= 1)
    });
    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();
    let before = progress(&state);
    assert!(!before.phase.finished());

    // Paused before it is continued: the driver holds it (no sends, no gates) until resumed.
    assert!(outpostctl(&["rollout", "pause", "--state", s(&state)])
        .status
        .success());
    let cont: Vec<String> = [
        "rollout",
        "continue",
        "--broker",
        &url,
        "--key",
        s(&f.key1),
        "--state",
        s(&state),
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    let mut child = spawn_ctl(&cont, Stdio::inherit());
    wait_until("paused", Duration::from_secs(10), || {
        progress(&state).paused
    });
    let held = progress(&state);
    std::thread::sleep(Duration::from_secs(4));
    let still = progress(&state);
    assert_eq!(
        (still.wave, &still.phase, still.sent.len()),
        (held.wave, &held.phase, held.sent.len()),
        "a paused rollout moved"
    );
    assert!(outpostctl(&["rollout", "resume", "--state", s(&state)])
        .status
        .success());
    let st = wait_exit(&mut child, Duration::from_secs(240));
    assert!(st.success(), "continued rollout exited with {st}");
    let p = progress(&state);
    assert_eq!(p.phase, Phase::Done);
    // Continued, not restarted: the history before the kill is intact and no wave began twice.
    assert_eq!(&p.history[..before.history.len()], &before.history[..]);
    for w in [
        "wave 2 (10 %): shadow",
        "wave 3 (50 %): shadow",
        "wave 4 (100 %): shadow",
    ] {
        assert_eq!(
            p.history.iter().filter(|(_, h)| h == w).count(),
            1,
            "{w}: {:?}",
            p.history
        );
    }
    for (d, sent) in &before.sent {
        // Devices sent before the kill kept their commands (at most resent once if the kill fell between the
        // send and the save); none went back to an earlier wave.
        assert_eq!(p.sent[d].wave, sent.wave, "{d}");
    }
    let report = sim.stop();
    assert!(
        report.values().all(|r| r["model"]["version"] == 2),
        "not every agent serves version 2"
    );
}

#[test]
fn devices_joining_mid_rollout_get_their_wave_and_an_abort_abandons_the_version() {
    let m = Mosquitto::start();
    let f = Fixture::new();
    let good = f.bundle_with_spec("good.bundle", "edge-fp32", "edge-fp32", 2, &[&f.key1], &[]);
    let first = simulate_as(&m, &f, "sim", 40, 200, 40, &[]);
    let url = m.url();
    let state = f.path("rollout");
    let mut child = spawn_ctl(&rollout_args(&url, &f, &state, &good), Stdio::null());
    wait_until("wave 2", Duration::from_secs(120), || {
        try_progress(&state).is_some_and(|p| p.wave >= 1)
    });
    // 20 more devices join the group while wave 2 runs.
    let joined_at = progress(&state).wave;
    let late = simulate_as(&m, &f, "late", 20, 100, 60, &[]);
    let online_at = progress(&state).wave;
    let st = wait_exit(&mut child, Duration::from_secs(240));
    assert!(st.success(), "rollout exited with {st}");
    let p = progress(&state);
    let all: Vec<String> = first.ids.iter().chain(&late.ids).cloned().collect();
    for d in &late.ids {
        let sent = p
            .sent
            .get(d)
            .unwrap_or_else(|| panic!("late device {d} never got the bundle"));
        let hash_wave = first_wave(&p, &all, d);
        // Never before its hash's wave; a wave already reached when it joined: at once (in the wave then in
        // progress); a later one: in exactly that wave.
        let why = format!(
            "{d}: sent in wave {}, hash wave {hash_wave}, joined during waves {joined_at}..={online_at}",
            sent.wave
        );
        assert!(sent.wave >= hash_wave, "{why}");
        if hash_wave > online_at {
            assert_eq!(sent.wave, hash_wave, "{why}");
        } else {
            assert!((joined_at..=online_at).contains(&sent.wave), "{why}");
        }
    }

    // A second rollout, aborted by the operator in its first wave: the version is abandoned where it arrived.
    let v3 = f.bundle_with_spec("v3.bundle", "edge-int8", "edge-int8", 3, &[&f.key1], &[]);
    let state3 = f.path("rollout-v3");
    let mut args = rollout_args(&url, &f, &state3, &v3);
    // Long enough observation that the abort lands before the gate could pass.
    let i = args.iter().position(|a| a == "--observe-s").unwrap();
    args[i + 1] = "600".into();
    let mut child = spawn_ctl(&args, Stdio::null());
    wait_until(
        "the canaries stage version 3",
        Duration::from_secs(60),
        || try_progress(&state3).is_some_and(|p| !p.sent.is_empty()),
    );
    // The abort comes once a canary reports version 3 staged, so it has something to drop.
    wait_until(
        "a canary's status shows version 3 staged",
        Duration::from_secs(60),
        || {
            let sent = progress(&state3).sent;
            online_statuses(&m, 60).iter().any(|(d, st)| {
                sent.contains_key(d)
                    && st
                        .service
                        .candidate
                        .as_ref()
                        .is_some_and(|c| c.version == 3)
            })
        },
    );
    assert!(outpostctl(&["rollout", "abort", "--state", s(&state3)])
        .status
        .success());
    let st = wait_exit(&mut child, Duration::from_secs(30));
    assert_eq!(st.code(), Some(4), "an aborted rollout exits 4");
    let p3 = progress(&state3);
    assert!(
        matches!(p3.phase, Phase::Aborted(_)) && p3.abandon_seq.is_some(),
        "{:?}",
        p3.phase
    );
    let canaries: Vec<String> = p3.sent.keys().cloned().collect();
    wait_until(
        "every canary's status drops version 3",
        Duration::from_secs(60),
        || {
            let statuses = online_statuses(&m, 60);
            canaries.iter().all(|d| {
                statuses
                    .get(d)
                    .is_some_and(|st| st.service.candidate.as_ref().is_none_or(|c| c.version != 3))
            })
        },
    );
    let mut report = first.stop();
    report.extend(late.stop());
    assert_eq!(report.len(), 60);
    for (d, r) in &report {
        assert_eq!(r["model"]["version"], 2, "{d}: {r}");
        assert!(
            r["candidate"].is_null(),
            "{d} still stages version 3 after the abort: {r}"
        );
    }
    eprintln!(
        "late joiners: 20 of 20 got version 2; abort dropped version 3 from {} canaries",
        canaries.len()
    );
}

/// `outpostctl simulate --model A --model B`: every simulated agent serves two models (traffic to both), and a
/// rollout of the second model's release reaches every agent while the default model stays on its version.
#[test]
fn simulated_agents_serve_two_models_and_a_rollout_of_the_second_leaves_the_default_untouched() {
    let m = Mosquitto::start();
    let f = Fixture::new();
    // A release 2 of the model named edge-fp32 (the int8 bytes under that name).
    let second = f.named_bundle("second.bundle", "edge-int8", "edge-fp32", 2);
    let (a, b) = (
        models().join("edge-int8.onnx"),
        models().join("edge-fp32.onnx"),
    );
    let sim = simulate_as(
        &m,
        &f,
        "sim",
        20,
        300,
        20,
        &["--model", s(&a), "--model", s(&b)],
    );
    let state = f.path("rollout-second");
    let st = run_rollout(
        &rollout_args(&m.url(), &f, &state, &second),
        Duration::from_secs(300),
    );
    assert!(st.success(), "the second model's rollout exited with {st}");
    let p = progress(&state);
    assert!(p.failed.is_empty(), "failures: {:?}", p.failed);
    let report = sim.stop();
    assert_eq!(report.len(), 20);
    for (d, r) in &report {
        assert_eq!(r["model"]["name"], "edge-int8", "{d}: {r}");
        assert_eq!(
            r["model"]["version"], 1,
            "{d}: the default model untouched: {r}"
        );
        let other = &r["models"]["edge-fp32"];
        assert_eq!(other["model"]["version"], 2, "{d}: {r}");
        assert!(r["counters"]["requests"].as_u64().unwrap() > 0, "{d}: {r}");
        assert!(
            other["counters"]["requests"].as_u64().unwrap() > 0,
            "{d}: {r}"
        );
        assert_eq!(other["counters"]["errors"], 0, "{d}: {r}");
    }
}
