//! The slim device build (no ONNX front end, issue 19), as a device runs it: the real `outpost` binary built with
//! `--no-default-features` (scripts/test.sh builds it and names it in OUTPOST_SLIM_BIN), bundles from the real
//! `outpostctl`, installs through the gate, and an agent upgraded from the full build on the same state.

use crate::common;

use crate::common::{outpostctl, s, slim_outpost, status, Daemon, Fixture};
use outpost::bundle::{self, SigningKeyFile, VariantForm};
use std::path::Path;
use std::process::{Command, Output};

fn slim(args: &[&str]) -> Output {
    Command::new(slim_outpost()).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn slim_install(f: &Fixture, state: &Path, bundle: &Path) -> Output {
    slim(&[
        "install",
        "--state-dir",
        s(state),
        "--trusted-keys",
        s(&f.trusted),
        s(bundle),
    ])
}

/// The bundle's manifest and model files (read without trust: the test re-signs what it changes).
fn unpack(path: &Path) -> (bundle::Manifest, Vec<Vec<u8>>) {
    let mut r = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let (m, _, _, _) = bundle::read_header_unverified(&mut r).unwrap();
    let models = m
        .variants
        .iter()
        .map(|v| {
            let mut out = Vec::new();
            bundle::copy_variant(&mut r, &mut out, v).unwrap();
            out
        })
        .collect();
    (m, models)
}

fn resign(f: &Fixture, m: &bundle::Manifest, models: &[Vec<u8>], out: &Path) {
    let key = SigningKeyFile::load(&f.key1).unwrap();
    let mut buf = Vec::new();
    bundle::write_bundle(&mut buf, m, models, &[&key]).unwrap();
    std::fs::write(out, buf).unwrap();
}

/// An ONNX-only bundle is refused before anything is installed, with the sentence that says what to do; the same
/// release with its NNEF forms installs through the gate (the ONNX variant skipped, an NNEF one chosen); an NNEF
/// variant whose golden outputs do not match fails the gate; `infer` refuses an ONNX file and runs its NNEF form.
#[test]
fn the_slim_build_refuses_onnx_only_bundles_and_installs_nnef_variants_through_the_gate() {
    let f = Fixture::new();
    let state = f.path("state");
    let onnx_only = f.bundle(
        "onnx.bundle",
        "edge-int8",
        2,
        &[&f.key1],
        &["--forms", "onnx"],
    );
    let o = slim_install(&f, &state, &onnx_only);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("slim device build") && t.contains("outpostctl bundle"),
        "{t}"
    );
    // Nothing was installed: the default model's record has no live slot and its version floor is untouched (read
    // through the library's type; the old check read a key `outpost status` never prints, so it could not fail).
    let record: outpost::slots::SlotState = serde_json::from_value(status(&state)).unwrap();
    assert!(
        record.active.is_none() && record.highest_version == 0,
        "{record:?}"
    );

    let both = f.bundle(
        "both.bundle",
        "edge-int8",
        2,
        &[&f.key1],
        &["--forms", "both"],
    );
    let (m, models) = unpack(&both);
    let forms: Vec<(&str, &VariantForm)> = m
        .variants
        .iter()
        .map(|v| (v.name.as_str(), &v.form))
        .collect();
    assert_eq!(forms.len(), 3, "{forms:?}");
    assert_eq!(forms[0], ("default", &VariantForm::Onnx));
    assert!(
        matches!(forms[1], ("default-nnef", VariantForm::Nnef { int8_kernels: true, tract_version }) if tract_version == outpost::inference::nnef::TRACT_VERSION),
        "{forms:?}"
    );
    assert!(
        matches!(
            forms[2],
            (
                "default-nnef-qdq",
                VariantForm::Nnef {
                    int8_kernels: false,
                    ..
                }
            )
        ),
        "{forms:?}"
    );
    let o = slim_install(&f, &state, &both);
    assert!(o.status.success(), "{}", text(&o));
    let st = status(&state);
    let live = &st["models"]["edge-int8"];
    let installed = serde_json::to_string(&st).unwrap();
    assert!(
        installed.contains("\"version\": 2") || installed.contains("\"version\":2"),
        "{installed}"
    );
    assert!(
        installed.contains("default-nnef"),
        "an NNEF form was chosen: {installed}"
    );
    assert!(
        installed.contains("default skipped: this agent is the slim device build"),
        "the ONNX variant is skipped with the reason: {installed} {live}"
    );

    let o = slim(&["promote", "--state-dir", s(&state)]);
    assert!(o.status.success(), "{}", text(&o));
    // The NNEF variants' golden outputs changed and re-signed: both fail the gate, the ONNX one cannot be read.
    let mut bad = m.clone();
    bad.version = 3;
    for v in bad.variants.iter_mut().skip(1) {
        for out in &mut v.golden_outputs {
            out[0] += 1.0;
        }
    }
    let tampered = f.path("tampered.bundle");
    resign(&f, &bad, &models, &tampered);
    let o = slim_install(&f, &state, &tampered);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("quality gate") && t.contains("default-nnef-qdq: golden case 0"),
        "{t}"
    );

    // `infer` takes the NNEF form and answers as the full build does on the ONNX file; an ONNX file is refused.
    let models_dir = common::models();
    let images: Vec<String> = common::test_images()
        .iter()
        .take(20)
        .map(|(p, _)| p.display().to_string())
        .collect();
    let spec = models_dir.join("edge-int8.spec.json");
    let run = |bin: &Path, model: &str| {
        let mut args = vec![
            "infer".to_string(),
            "--json".into(),
            "--model".into(),
            models_dir.join(model).display().to_string(),
            "--spec".into(),
            spec.display().to_string(),
        ];
        args.extend(images.iter().cloned());
        Command::new(bin).args(&args).output().unwrap()
    };
    let o = run(&slim_outpost(), "edge-int8.onnx");
    assert!(!o.status.success());
    assert!(text(&o).contains("outpostctl compile"), "{}", text(&o));
    let labels = |o: &Output| -> Vec<String> {
        assert!(o.status.success(), "{}", text(o));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["label"].to_string())
            .collect()
    };
    let slim_labels = labels(&run(&slim_outpost(), "edge-int8-qdq.nnef.tar"));
    let full_labels = labels(&run(
        Path::new(env!("CARGO_BIN_EXE_outpost")),
        "edge-int8.onnx",
    ));
    assert_eq!(slim_labels.len(), 20);
    assert_eq!(slim_labels, full_labels);
}

/// An agent upgraded from the full build to the slim one on the same state keeps serving: the full agent kept the
/// release's NNEF form beside the ONNX variant it chose (the spare), and the slim agent serves the slot from it.
/// A slot holding an ONNX-only release (bundled before NNEF forms) is refused by the package's pre-install check,
/// and if the agent meets one anyway it serves its built-in model and says why.
#[test]
fn an_upgrade_to_the_slim_build_serves_the_spare_nnef_form() {
    let f = Fixture::new();
    let models = common::models();
    // The fast ONNX variant wins the full agent's timing by 4x; the slower variant is an NNEF file (the cloud model
    // compiled, same labels), so the full agent keeps it as the spare.
    let cloud_nnef = f.path("cloud.nnef.tar");
    let o = outpostctl(&[
        "compile",
        "--model",
        s(&models.join("cloud-fp32.onnx")),
        "--spec",
        s(&models.join("cloud-fp32.spec.json")),
        "--out",
        s(&cloud_nnef),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let bundle = f.path("spare.bundle");
    let o = outpostctl(&[
        "bundle",
        "--variant",
        &format!("fast={}", models.join("edge-fp32.onnx").display()),
        "--variant",
        &format!("slow={}", cloud_nnef.display()),
        "--forms",
        "onnx",
        "--spec",
        s(&models.join("edge-fp32.spec.json")),
        "--name",
        "edge-int8",
        "--version",
        "2",
        "--golden-images",
        s(&models.join("data/calib")),
        "--key",
        s(&f.key1),
        "--out",
        s(&bundle),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let state = f.path("state");
    f.install_committed(&state, &bundle, "edge-int8");
    let record = std::fs::read_to_string(state.join("models/edge-int8/state.json")).unwrap();
    let rec: serde_json::Value = serde_json::from_str(&record).unwrap();
    let active = rec["active"].as_str().unwrap().to_lowercase();
    assert!(record.contains("\"variant\": \"fast\""), "{record}");
    assert!(record.contains("\"spare\""), "{record}");
    let slot = state.join("models/edge-int8").join(&active);
    assert!(slot.join("model.onnx").is_file() && slot.join("spare.nnef.tar").is_file());

    // The package's pre-install check passes this state.
    let preinst = common::repo().join("deploy/preinst");
    let check = |state: &Path| {
        Command::new("sh")
            .arg(&preinst)
            .arg("upgrade")
            .arg("0.1.0")
            .env("OUTPOST_STATE_DIR", state)
            .output()
            .unwrap()
    };
    let o = check(&state);
    assert!(o.status.success(), "{}", text(&o));

    let d = Daemon::start_bin(&slim_outpost(), &state, &[], &[]);
    let st = d.get_json("/v1/status");
    let text_st = st.to_string();
    assert!(text_st.contains("\"version\":2"), "{text_st}");
    let spare_digest = outpost::inference::digest_hex(&std::fs::read(&cloud_nnef).unwrap());
    assert!(
        text_st.contains(&spare_digest),
        "serves the spare form: {text_st}"
    );
    let img = std::fs::read(&common::test_images()[0].0).unwrap();
    let (code, body) = d.infer(&common::http(), &img, "image/png");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["model"]["version"], 2, "{body}");
    assert_eq!(body["model"]["digest"], spare_digest.as_str(), "{body}");
    drop(d);

    // A release bundled before NNEF forms: the pre-install check refuses the upgrade, naming the model and what to
    // do, and an agent that meets it anyway serves its built-in model.
    let old = f.bundle(
        "old.bundle",
        "edge-int8",
        3,
        &[&f.key1],
        &["--forms", "onnx"],
    );
    let state2 = f.path("state2");
    f.install_committed(&state2, &old, "edge-int8");
    let o = check(&state2);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("edge-int8") && t.contains("NNEF"), "{t}");
    let d = Daemon::start_bin(&slim_outpost(), &state2, &[], &[]);
    let (code, body) = d.infer(&common::http(), &img, "image/png");
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["model"]["version"], 1,
        "the built-in model answers: {body}"
    );
    assert!(
        d.get_json("/v1/status").to_string().contains("fallback"),
        "the status says it serves the fallback"
    );
}
