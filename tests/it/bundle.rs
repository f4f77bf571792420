//! Signed bundles and A/B slots through the real binaries: the attack matrix, a SIGKILL loop, live pick-up.

use crate::common;

use outpost::bundle::{self, Manifest, SigningKeyFile, Variant};
use outpost::inference::{Engine, ModelSpec};
use outpost::slots::{install::load_active, SlotStore};

/// The default (built-in) model's slots in the state directory's repository.
fn slots_of(state: &Path) -> SlotStore {
    outpost::repo::Repository::open(state, "edge-int8")
        .and_then(|r| r.slots("edge-int8"))
        .unwrap()
}
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{outpost, outpostctl, s, status, Fixture};

fn slot_files(state: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v = Vec::new();
    for slot in ["a", "b"] {
        let d = state.join("models/edge-int8").join(slot);
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                v.push((e.path(), std::fs::read(e.path()).unwrap()));
            }
        }
    }
    v.sort();
    v
}

fn flip_byte(src: &Path, dst: &Path, at: usize) {
    let mut b = std::fs::read(src).unwrap();
    let i = at.min(b.len() - 1);
    b[i] ^= 0x01;
    std::fs::write(dst, b).unwrap();
}

fn header_len(bundle: &Path) -> (usize, usize) {
    let b = std::fs::read(bundle).unwrap();
    let m = u32::from_le_bytes(b[9..13].try_into().unwrap()) as usize;
    let sig_at = 13 + m;
    let sl = u32::from_le_bytes(b[sig_at..sig_at + 4].try_into().unwrap()) as usize;
    (13, sig_at + 4 + sl) // manifest starts at 13; models start at the second value
}

#[test]
fn attack_matrix_leaves_the_device_untouched() {
    let f = Fixture::new();
    let state = f.path("state");
    let good = f.bundle("v5.bundle", "edge-fp32", 5, &[&f.key1], &[]);
    let o = f.install(&state, &good, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = outpost(&["rollback", "--state-dir", s(&state)]); // end the trial (back to built-in) so installs can proceed
    assert!(o.status.success());
    let o = f.install(
        &state,
        &f.bundle("v6.bundle", "edge-fp32", 6, &[&f.key1], &[]),
        &[],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Commit the trial by rolling forward: simplest is to read the record and clear the trial through the library.
    let store = slots_of(&state);
    store
        .save(&store.load().unwrap().commit().unwrap())
        .unwrap();

    let v7 = f.bundle("v7.bundle", "edge-qdq", 7, &[&f.key1], &[]);
    let (man_at, models_at) = header_len(&v7);
    let mut cases: Vec<(&str, PathBuf, Vec<&str>, &str)> = Vec::new();
    let p = f.path("model-flip.bundle");
    flip_byte(&v7, &p, models_at + 500);
    cases.push(("flipped model byte", p, vec![], "sha-256 does not match"));
    let p = f.path("manifest-flip.bundle");
    flip_byte(&v7, &p, man_at + 3);
    cases.push(("flipped manifest byte", p, vec![], "signature"));
    let stranger = f.path("stranger.key");
    assert!(outpostctl(&["keygen", "--out", s(&stranger)])
        .status
        .success());
    cases.push((
        "unknown key",
        f.bundle("stranger.bundle", "edge-qdq", 7, &[&stranger], &[]),
        vec![],
        "signature",
    ));
    cases.push((
        "older version",
        f.bundle("v4.bundle", "edge-qdq", 4, &[&f.key1], &[]),
        vec![],
        "not newer",
    ));
    cases.push((
        "same version replayed",
        f.bundle("v6b.bundle", "edge-qdq", 6, &[&f.key1], &[]),
        vec![],
        "not newer",
    ));
    cases.push((
        "expired",
        f.bundle(
            "expired.bundle",
            "edge-qdq",
            8,
            &[&f.key1],
            &["--expires-days", "0"],
        ),
        vec![],
        "expired",
    ));
    let p = f.path("endless.bundle");
    let mut b = std::fs::read(&v7).unwrap();
    b.extend(std::iter::repeat_n(0u8, 4096));
    std::fs::write(&p, b).unwrap();
    cases.push((
        "more bytes than signed",
        p,
        vec![],
        "more model bytes than the manifest signed",
    ));
    let other = f.bundle("other.bundle", "edge-fp32", 9, &[&f.key1], &[]);
    let p = f.path("mix.bundle");
    let mut b = std::fs::read(&v7).unwrap()[..models_at].to_vec();
    b.extend_from_slice(&std::fs::read(&other).unwrap()[header_len(&other).1..]);
    std::fs::write(&p, b).unwrap();
    cases.push(("manifest of X with the model of Y", p, vec![], "bundle"));
    let p = f.path("truncated.bundle");
    let b = std::fs::read(&v7).unwrap();
    std::fs::write(&p, &b[..b.len() - 100]).unwrap();
    cases.push(("truncated", p, vec![], "truncated"));
    cases.push((
        "golden vectors the model fails",
        golden_failing_bundle(&f),
        vec![],
        "quality gate",
    ));
    // Key rotation: trust version 2 no longer lists key 2 for bundles (signed by key 1, a root key of version 1).
    let k1 = SigningKeyFile::load(&f.key1).unwrap();
    let rotated = f.path("trust-v2");
    let cfg = f.trust_config(&state);
    let mut v2 = common::with_role(&f.trust_v1(), "bundles", &[&k1], 1);
    v2.version = 2;
    common::sign_trust(&v2, &[&k1], &rotated);
    let by_removed = f.bundle("removed.bundle", "edge-qdq", 10, &[&f.key2], &[]);

    let before_status = status(&state);
    let before_files = slot_files(&state);
    let check = |what: &str, out: Output, cause: &str| {
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(!out.status.success(), "{what}: accepted!");
        assert!(!err.contains("panicked"), "{what}: {err}");
        assert!(
            err.contains(&cause.to_lowercase()),
            "{what}: expected '{cause}' in: {err}"
        );
        let after = status(&state);
        // Issue 27: a refused install leaves the whole record as it was (the variants are staged beside the
        // slots until one passes its gate), so the rollback target in the other slot survives too.
        assert_eq!(after, before_status, "{what}: the record changed");
        assert_eq!(
            slot_files(&state),
            before_files,
            "{what}: a slot's files changed"
        );
        assert!(
            !state.join("models/edge-int8/staging").exists(),
            "{what}: the staged variants were left behind"
        );
        assert_eq!(
            after["active"], before_status["active"],
            "{what}: active slot changed"
        );
        assert_eq!(
            after["slots"], before_status["slots"],
            "{what}: slot record changed"
        );
        assert_eq!(
            after["highest_version"], before_status["highest_version"],
            "{what}"
        );
        let live = before_status["active"].as_str().unwrap().to_lowercase();
        let live_files: Vec<_> = slot_files(&state)
            .into_iter()
            .filter(|(p, _)| {
                p.to_string_lossy()
                    .contains(&format!("/models/edge-int8/{live}/"))
            })
            .collect();
        let before_live: Vec<_> = before_files
            .iter()
            .filter(|(p, _)| {
                p.to_string_lossy()
                    .contains(&format!("/models/edge-int8/{live}/"))
            })
            .cloned()
            .collect();
        assert_eq!(
            live_files, before_live,
            "{what}: the live slot's files changed"
        );
    };
    for (what, bundle, extra, cause) in cases {
        check(what, f.install(&state, &bundle, &extra), cause);
    }
    let out = outpost(&["trust", "apply", "-c", s(&cfg), s(&rotated)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = f.install(&state, &by_removed, &[]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("key no longer trusted"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check("signed only by a removed key", out, "signature");
    // Version 3 asks two distinct keys for bundles: one signature is too few.
    let k2 = SigningKeyFile::load(&f.key2).unwrap();
    let mut v3 = common::with_role(&v2, "bundles", &[&k1, &k2], 2);
    v3.version = 3;
    let path = f.path("trust-v3");
    common::sign_trust(&v3, &[&k1], &path);
    let out = outpost(&["trust", "apply", "-c", s(&cfg), s(&path)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check(
        "too few signatures for k=2",
        f.install(&state, &v7, &[]),
        "2 required",
    );
    let mut v4 = common::with_role(&v3, "bundles", &[&k1], 1);
    v4.version = 4;
    let path = f.path("trust-v4");
    common::sign_trust(&v4, &[&k1], &path);
    let out = outpost(&["trust", "apply", "-c", s(&cfg), s(&path)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And the good one still goes in.
    let o = f.install(&state, &v7, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(status(&state)["slots"][1]["version"], 7);
    // outpostctl verify agrees.
    let o = outpostctl(&["verify", "--keys", s(&f.trusted), s(&v7)]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).starts_with("OK"));
    let o = outpostctl(&["inspect", "--json", s(&v7)]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["version"], 7);
}

/// A bundle of one model file signed with `f.key1`, one golden input of 0.5s, golden outputs from the model run
/// with the right edge spec and then passed through `tamper_out`, and the manifest's spec passed through
/// `tamper_spec`: well signed, wrong inside.
fn signed_bundle(
    f: &Fixture,
    model: &str,
    version: u64,
    file: &str,
    tamper_out: impl FnOnce(&mut Vec<f32>),
    tamper_spec: impl FnOnce(&mut ModelSpec),
) -> PathBuf {
    let mut spec = ModelSpec::from_file(&common::models().join("edge-int8.spec.json")).unwrap();
    let bytes = std::fs::read(common::models().join(format!("edge-{model}.onnx"))).unwrap();
    let engine = Engine::load(&bytes, spec.clone()).unwrap();
    let input = vec![0.5f32; spec.input_len()];
    let mut out = engine.run(&input).unwrap();
    tamper_out(&mut out);
    tamper_spec(&mut spec);
    let manifest = Manifest {
        name: "edge-int8".into(), // a release of the built-in model
        version,
        created_unix: bundle::now_unix(),
        expires_unix: bundle::now_unix() + 3600,
        min_agent_version: "0.1.0".into(),
        spec,
        hardness_threshold: None,
        golden_inputs: vec![input],
        golden_tolerance: 0.05,
        variants: vec![Variant {
            name: model.into(),
            size: bytes.len() as u64,
            sha256: bundle::sha256(&bytes),
            golden_outputs: vec![out],
            golden_tensor_outputs: vec![],
            form: bundle::VariantForm::Onnx,
        }],
        golden_tensors: vec![],
        budget: None,
        baseline: None,
    };
    let key = SigningKeyFile::load(&f.key1).unwrap();
    let mut buf = Vec::new();
    bundle::write_bundle(&mut buf, &manifest, &[bytes], &[&key]).unwrap();
    let p = f.path(file);
    std::fs::write(&p, buf).unwrap();
    p
}

/// A properly signed bundle whose golden outputs the model cannot reproduce.
fn golden_failing_bundle(f: &Fixture) -> PathBuf {
    signed_bundle(f, "fp32", 11, "golden-fail.bundle", |o| o.reverse(), |_| {})
}

/// A properly signed bundle of the edge-int8 model whose spec lists only 5 labels (the model outputs 10).
fn wrong_labels_bundle(f: &Fixture, version: u64) -> PathBuf {
    let file = format!("wrong-labels-v{version}.bundle");
    signed_bundle(f, "int8", version, &file, |_| {}, |s| s.labels.truncate(5))
}

/// Issue 13: a bundle whose spec does not fit its model is refused at install even while the same model file is
/// loaded in the process (so its plan is shared), and the running model is untouched. In-process first (the path a
/// fleet update takes inside the daemon), then through `outpost install` beside a serving daemon.
#[test]
fn a_bundle_whose_spec_does_not_fit_is_refused_while_the_same_model_serves() {
    use outpost::bundle::{Policy, TrustedKeys};
    use outpost::slots::install::{install_as, Mode};
    let f = Fixture::new();
    let state = f.path("state");
    let good = f.bundle("v1.bundle", "edge-int8", 1, &[&f.key1], &[]);
    let o = f.install(&state, &good, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = outpost(&["promote", "--state-dir", s(&state)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let store = slots_of(&state);
    let serving = load_active(&store, &store.load().unwrap())
        .unwrap()
        .expect("v1 is live");
    let input = vec![0.25f32; serving.spec().input_len()];
    let before = serving.run(&input).unwrap();
    let files_before = slot_files(&state);
    let record_before = status(&state);

    let bad = wrong_labels_bundle(&f, 2);
    let keys = TrustedKeys::from_file(&f.trusted).unwrap();
    let policy = Policy {
        keys: &keys,
        threshold: 1,
        time: outpost::clock::Reading::clock_only(bundle::now_unix()),
        agent_version: env!("CARGO_PKG_VERSION"),
        trust_version: None,
    };
    let err = install_as(
        &store,
        &mut std::fs::File::open(&bad).unwrap(),
        &policy,
        Mode::Trial,
    )
    .expect_err("a spec that does not fit must be refused although the plan is shared")
    .to_string();
    assert!(
        err.contains("outputs 10 values but the spec lists 5 labels"),
        "{err}"
    );
    let after = status(&state);
    assert_eq!(after["active"], record_before["active"], "{after}");
    assert!(after["trial"].is_null(), "{after}");
    assert_eq!(serving.run(&input).unwrap(), before);

    // The CLI, with a daemon serving v1 from the same state directory.
    let daemon = common::Daemon::start(&state, &[]);
    let digest = daemon.get_json("/v1/status")["model"]["digest"].clone();
    let bad3 = wrong_labels_bundle(&f, 3);
    let o = f.install(&state, &bad3, &[]);
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("outputs 10 values but the spec lists 5 labels"),
        "{stderr}"
    );
    assert_eq!(daemon.get_json("/v1/status")["model"]["digest"], digest);
    let (code, v) = daemon.infer(
        &common::http(),
        &std::fs::read(&common::test_images()[0].0).unwrap(),
        "image/png",
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["model"]["version"], 1, "{v}");
    assert!(daemon.stop().success());
    // Only the record may have changed (begin_install marks the target empty); v1's slot files are as they were.
    let files_after = slot_files(&state);
    for (p, bytes) in &files_before {
        if p.extension().is_some_and(|e| e == "onnx") {
            assert!(
                files_after.iter().any(|(q, b)| q == p && b == bytes),
                "{p:?} changed"
            );
        }
    }
}

#[test]
fn variants_are_timed_on_the_device_and_the_fastest_passing_one_wins() {
    let f = Fixture::new();
    let state = f.path("state");
    let models = common::models();
    let out = f.path("multi.bundle");
    let o = outpostctl(&[
        "bundle",
        "--variant",
        &format!("int8={}", models.join("edge-int8.onnx").display()),
        "--variant",
        &format!("fp32={}", models.join("edge-fp32.onnx").display()),
        "--spec",
        s(&models.join("edge-int8.spec.json")),
        "--version",
        "3",
        "--golden-images",
        s(&models.join("data/calib")),
        "--key",
        s(&f.key1),
        "--out",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = f.install(&state, &out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // Every variant is timed, but for a form the device skips by rule: tract's int8 kernels on a CPU without int8
    // dot products (where int8 models run as QDQ), which this machine's CPU decides, not the test.
    let mut times: Vec<(String, f64)> = Vec::new();
    for v in report["variants"].as_array().unwrap() {
        let name = v["variant"].as_str().unwrap().to_string();
        match v["median_us"].as_f64() {
            Some(us) => times.push((name, us)),
            None => assert!(
                v["rejected"]
                    .as_str()
                    .is_some_and(|r| r.contains("no int8 dot product")),
                "a variant neither timed nor skipped by rule: {v}"
            ),
        }
    }
    for both in ["int8", "fp32"] {
        assert!(
            times.iter().any(|(n, _)| n == both),
            "variant {both} was not timed: {report}"
        );
    }
    let fastest = times
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap()
        .0
        .clone();
    assert_eq!(report["installed"]["variant"], fastest.as_str(), "{report}");
    assert!(
        report["installed"]["reason"]
            .as_str()
            .unwrap()
            .contains("fastest"),
        "{report}"
    );
}

#[test]
fn sigkill_at_random_instants_never_leaves_a_mix() {
    use rand::Rng;
    let iterations = common::kill_iterations();
    let f = Fixture::new();
    let state = f.path("state");
    let key = SigningKeyFile::load(&f.key1).unwrap();
    let spec = ModelSpec::from_file(&common::models().join("edge-int8.spec.json")).unwrap();
    let models: Vec<Vec<u8>> = ["edge-fp32", "edge-int8", "edge-qdq"]
        .iter()
        .map(|m| std::fs::read(common::models().join(format!("{m}.onnx"))).unwrap())
        .collect();
    let digests: Vec<String> = models
        .iter()
        .map(|m| outpost::inference::digest_hex(m))
        .collect();
    let bundle_path = f.path("b.bundle");
    let mut rng = rand::rng();
    let (mut installs, mut rollbacks, mut promotes, mut killed) = (0, 0, 0, 0);
    let (mut staged, mut activates) = (0, 0);
    let mut timer = common::KillTimer::new(std::time::Duration::from_millis(20));
    for i in 0..iterations {
        let store = slots_of(&state);
        let before = store.load().expect("the record decodes");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpost"));
        if before.trial.is_some() && rng.random_bool(0.5) {
            rollbacks += 1;
            cmd.args(["rollback", "--state-dir", s(&state)]);
        } else if before.trial.is_some() {
            promotes += 1;
            cmd.args(["promote", "--state-dir", s(&state)]);
        } else if before.candidate.is_some() && rng.random_bool(0.5) {
            activates += 1;
            let v = before.candidate_info().unwrap().version.to_string();
            cmd.args(["activate", "--state-dir", s(&state), &v]);
        } else {
            installs += 1;
            let m = &models[i % models.len()];
            let manifest = Manifest {
                name: "edge-int8".into(), // a release of the built-in model
                version: before.highest_version + 1,
                created_unix: bundle::now_unix(),
                expires_unix: bundle::now_unix() + 3600,
                min_agent_version: "0.1.0".into(),
                spec: spec.clone(),
                hardness_threshold: None,
                golden_inputs: vec![],
                golden_tolerance: 0.05,
                variants: vec![Variant {
                    name: "v".into(),
                    size: m.len() as u64,
                    sha256: bundle::sha256(m),
                    golden_outputs: vec![],
                    golden_tensor_outputs: vec![],
                    form: bundle::VariantForm::Onnx,
                }],
                golden_tensors: vec![],
                budget: None,
                baseline: None,
            };
            let mut buf = Vec::new();
            bundle::write_bundle(&mut buf, &manifest, std::slice::from_ref(m), &[&key]).unwrap();
            std::fs::write(&bundle_path, buf).unwrap();
            cmd.args([
                "install",
                "--state-dir",
                s(&state),
                "--trusted-keys",
                s(&f.trusted),
            ]);
            // Half the installs stage a candidate beside the live model instead of putting it on trial.
            if rng.random_bool(0.5) {
                staged += 1;
                cmd.arg("--candidate");
            }
            cmd.arg(s(&bundle_path));
        }
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Killed anywhere from the first instruction to just after the end.
        if timer.run(&mut child, i, 1.2 * rng.random_range(0.0..1.0)) {
            killed += 1;
        }
        // What the agent does at start: decode the record, load the live slot, check its digest.
        let after = store
            .load()
            .unwrap_or_else(|e| panic!("iteration {i}: record does not decode: {e}"));
        match load_active(&store, &after) {
            Ok(Some(engine)) => assert!(
                digests.contains(&engine.digest().to_string()),
                "iteration {i}: unknown digest"
            ),
            Ok(None) => {}
            Err(e) => panic!("iteration {i}: the live slot does not load: {e}"),
        }
        // A staged candidate is complete too: what the agent loads for shadow runs.
        if let Some(c) = after.candidate {
            let engine =
                outpost::slots::install::load_slot(&store, &after, c).unwrap_or_else(|e| {
                    panic!("iteration {i}: the staged candidate does not load: {e}")
                });
            assert!(digests.contains(&engine.digest().to_string()));
            assert_ne!(
                Some(c),
                after.active,
                "iteration {i}: the candidate is in the live slot"
            );
        }
        let old = before.active_info().map(|x| x.digest.clone());
        let new = after.active_info().map(|x| x.digest.clone());
        let allowed_new = new == old || after.generation > before.generation;
        assert!(
            allowed_new,
            "iteration {i}: live model changed without a record write"
        );
    }
    eprintln!("{iterations} iterations: {installs} installs ({staged} as candidates), {activates} activates, {rollbacks} rollbacks, {promotes} promotes, {killed} killed mid-way");
    assert!(installs > 0 && rollbacks > 0 && promotes > 0 && staged > 0 && activates > 0);
    assert!(
        killed > iterations / 10,
        "too few kills landed mid-operation ({killed})"
    );
    // Finally the real daemon starts on whatever state is left and serves the recorded model.
    let store = slots_of(&state);
    let rec = store.load().unwrap();
    let daemon = common::Daemon::start(&state, &[]);
    let st = daemon.get_json("/v1/status");
    match rec.active_info() {
        Some(info) => assert_eq!(st["model"]["digest"], info.digest.as_str()),
        None => assert_eq!(st["slot"], "builtin"),
    }
    assert!(daemon.stop().success());
}

#[test]
fn a_running_agent_picks_up_install_and_rollback_and_boot_counting_rolls_back_a_crashing_model() {
    let f = Fixture::new();
    let state = f.path("state");
    let daemon = common::Daemon::start(&state, &[]);
    let builtin = daemon.get_json("/v1/status")["model"]["digest"].clone();
    let b = f.bundle("v2.bundle", "edge-fp32", 2, &[&f.key1], &[]);
    assert!(f.install(&state, &b, &[]).status.success());
    let fp32 = outpost::inference::digest_hex(
        &std::fs::read(common::models().join("edge-fp32.onnx")).unwrap(),
    );
    let wait_for = |want: &serde_json::Value| {
        for _ in 0..100 {
            if &daemon.get_json("/v1/status")["model"]["digest"] == want {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("the daemon did not switch to {want}");
    };
    wait_for(&serde_json::json!(fp32));
    let agent = common::http();
    let (code, v) = daemon.infer(
        &agent,
        &std::fs::read(&common::test_images()[0].0).unwrap(),
        "image/png",
    );
    assert_eq!(code, 200);
    assert_eq!(v["model"]["digest"], fp32.as_str());
    assert!(outpost(&["rollback", "--state-dir", s(&state)])
        .status
        .success());
    wait_for(&builtin);
    assert!(daemon.stop().success());

    // Boot counting: v3 aborts the agent on load (fault injection); after max_boots starts it is rolled back.
    let b3 = f.bundle("v3.bundle", "edge-qdq", 3, &[&f.key1], &[]);
    assert!(f.install(&state, &b3, &[]).status.success());
    let qdq = outpost::inference::digest_hex(
        &std::fs::read(common::models().join("edge-qdq.onnx")).unwrap(),
    );
    for start in 1..=3 {
        let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
            .args(["run", "--listen", "127.0.0.1:0", "--state-dir", s(&state)])
            .env("OUTPOST_FAULT_ABORT_ON_LOAD", &qdq)
            .output()
            .unwrap();
        assert!(!out.status.success(), "start {start} should crash");
        assert_eq!(status(&state)["trial"]["boots"], start);
    }
    let daemon =
        common::Daemon::start_with_env(&state, &[], &[("OUTPOST_FAULT_ABORT_ON_LOAD", &qdq)]);
    assert_eq!(
        daemon.get_json("/v1/status")["model"]["digest"],
        builtin,
        "rolled back after 3 crashed starts"
    );
    let st = status(&state);
    assert!(st["trial"].is_null() && st["highest_version"] == 3, "{st}");
    let metrics = daemon.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("outpost_slot_transitions_total")
                && l.contains("cause=\"boot_count\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
    assert!(daemon.stop().success());
}
