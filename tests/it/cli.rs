//! `outpost infer` as a user runs it: real files, real exit codes, one-line errors, never a panic.

use crate::common;

use std::path::Path;
use std::process::{Command, Output};

fn outpost(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(args)
        .output()
        .expect("run outpost")
}

fn edge_model() -> String {
    common::path_str(&common::models().join("edge-int8.onnx"))
}

#[test]
fn infer_json_prints_label_and_confidence() {
    let images = common::test_images();
    let (img, label) = &images[0];
    let out = outpost(&[
        "infer",
        "--json",
        "--model",
        &edge_model(),
        &common::path_str(img),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(v["label"].as_str().unwrap(), label);
    let c = v["confidence"].as_f64().unwrap();
    assert!(c > 0.0 && c <= 1.0);
    assert!(v["margin"].as_f64().is_some() && v["latency_us"].as_u64().is_some());
}

/// Writes a grayscale PNG of the given size (all black: compresses to almost nothing, like a decompression bomb).
fn write_png(path: &Path, w: u32, h: u32) {
    image::GrayImage::new(w, h).save(path).unwrap();
}

fn assert_one_line_error(out: &Output, file: &Path, cause: &str) {
    assert!(
        !out.status.success(),
        "expected failure for {}",
        file.display()
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "panic: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected, got: {err}");
    assert!(
        lines[0].contains(&common::path_str(file)),
        "error must name the file: {err}"
    );
    assert!(
        lines[0].to_lowercase().contains(cause),
        "error must say '{cause}': {err}"
    );
}

#[test]
fn bad_images_give_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(&common::test_images()[0].0).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.png", vec![], "empty"),
        (
            "truncated.png",
            good[..good.len() / 2].to_vec(),
            "cannot decode",
        ),
        (
            "corrupt.png",
            {
                let mut b = good.clone();
                for x in b.iter_mut().skip(40).step_by(7) {
                    *x ^= 0x5a;
                }
                b
            },
            "cannot decode",
        ),
        (
            "text.png",
            b"hello, this is not an image\n".to_vec(),
            "not a png or jpeg",
        ),
        ("huge.png", vec![0u8; 17 * 1024 * 1024], "limit"),
    ];
    for (name, bytes, cause) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let out = outpost(&["infer", "--model", &edge_model(), &common::path_str(&p)]);
        assert_one_line_error(&out, &p, cause);
    }
    // Decompression bomb: small file, 9000 x 9000 pixels claimed.
    let bomb = dir.path().join("bomb.png");
    write_png(&bomb, 9000, 9000);
    assert!(std::fs::metadata(&bomb).unwrap().len() < 1024 * 1024);
    let out = outpost(&["infer", "--model", &edge_model(), &common::path_str(&bomb)]);
    assert_one_line_error(&out, &bomb, "limit");
    let missing = dir.path().join("missing.png");
    let out = outpost(&[
        "infer",
        "--model",
        &edge_model(),
        &common::path_str(&missing),
    ]);
    assert_one_line_error(&out, &missing, "no such file");
}

#[test]
fn good_images_still_answered_beside_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jpg");
    std::fs::write(&bad, b"\xff\xd8\xff\xe0 broken jpeg").unwrap();
    let good = common::test_images()[1].0.clone();
    let out = outpost(&[
        "infer",
        "--json",
        "--model",
        &edge_model(),
        &common::path_str(&good),
        &common::path_str(&bad),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    assert_one_line_error(&out, &bad, "cannot decode");
}

#[test]
fn bad_model_and_missing_spec_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let img = common::path_str(&common::test_images()[0].0);
    // A model file that is not ONNX, with a valid spec beside it.
    let bad = dir.path().join("bad.onnx");
    std::fs::write(&bad, b"garbage").unwrap();
    std::fs::copy(
        common::models().join("edge-int8.spec.json"),
        dir.path().join("bad.spec.json"),
    )
    .unwrap();
    let out = outpost(&["infer", "--model", &common::path_str(&bad), &img]);
    assert_one_line_error(&out, &bad, "cannot load the model");
    // A model without a spec.
    let lone = dir.path().join("lone.onnx");
    std::fs::copy(common::models().join("edge-int8.onnx"), &lone).unwrap();
    let out = outpost(&["infer", "--model", &common::path_str(&lone), &img]);
    assert_one_line_error(&out, &lone, "--spec");
    // A spec whose input shape does not fit the model: a wrong-sized tensor.
    let spec_path = dir.path().join("wrong.spec.json");
    let mut spec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(common::models().join("edge-int8.spec.json")).unwrap(),
    )
    .unwrap();
    spec["input"]["shape"] = serde_json::json!([1, 1, 32, 32]);
    spec["preprocess"]["width"] = serde_json::json!(32);
    spec["preprocess"]["height"] = serde_json::json!(32);
    std::fs::write(&spec_path, serde_json::to_vec(&spec).unwrap()).unwrap();
    let out = outpost(&[
        "infer",
        "--model",
        &edge_model(),
        "--spec",
        &common::path_str(&spec_path),
        &img,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("panicked") && err.lines().count() == 1,
        "{err}"
    );
    assert!(
        err.contains("edge-int8.onnx") && err.contains("cannot load the model"),
        "{err}"
    );
}
