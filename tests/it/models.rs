//! Several models per device (issue 18, item 1): a signed bundle for a name the device does not serve yet adds a
//! model beside the default one, served on its own route with its own slots, trial and version floor; the operator
//! acts on one model by name; names and the number of models are checked; the default model never notices.

use crate::common;

use crate::common::{outpost, outpostctl, s, wait_until, Daemon, Fixture};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Sends the test digits to `/v1/infer` until stopped; counts answers and failures.
fn steady_client(
    daemon: &Daemon,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(usize, usize)> {
    let url = daemon.url("/v1/infer");
    let images: Vec<Vec<u8>> = common::test_images()
        .iter()
        .take(50)
        .map(|(p, _)| std::fs::read(p).unwrap())
        .collect();
    std::thread::spawn(move || {
        let agent = common::http();
        let (ok, failed) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let mut i = 0;
        while !stop.load(Ordering::SeqCst) {
            let r = agent
                .post(&url)
                .header("content-type", "image/png")
                .send(&images[i % images.len()][..]);
            match r {
                Ok(resp) if resp.status() == 200 => ok.fetch_add(1, Ordering::SeqCst),
                _ => failed.fetch_add(1, Ordering::SeqCst),
            };
            i += 1;
        }
        (ok.into_inner(), failed.into_inner())
    })
}

#[test]
fn a_bundle_for_a_new_name_adds_a_model_beside_the_default_and_the_operator_acts_on_it_by_name() {
    let f = Fixture::new();
    let state = f.path("state");
    let daemon = Daemon::start(&state, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let client = steady_client(&daemon, stop.clone());
    let agent = common::http();
    let (image, truth) = common::test_images()[3].clone();
    let image = std::fs::read(image).unwrap();

    let b1 = f.named_bundle("digits-v1.bundle", "edge-fp32", "digits", 1);
    let out = f.install(&state, &b1, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["model"], "digits", "{report}");

    wait_until(
        "the daemon serves the new model",
        Duration::from_secs(20),
        || daemon.get_json("/v1/status")["models"]["digits"]["model"]["version"] == 1,
    );
    let st = daemon.get_json("/v1/status");
    assert_eq!(st["default_model"], "edge-int8", "{st}");
    assert_eq!(
        st["model"]["name"], "edge-int8",
        "the default model is untouched: {st}"
    );
    assert!(st["trial"].is_null(), "{st}");
    assert_eq!(st["models"]["digits"]["slot"], "a", "{st}");
    assert_eq!(st["models"]["digits"]["trial"]["version"], 1, "{st}");

    let url = daemon.url("/v1/models/digits/infer");
    let r = agent
        .post(&url)
        .header("content-type", "image/png")
        .send(&image[..])
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value =
        serde_json::from_str(&r.into_body().read_to_string().unwrap()).unwrap();
    assert_eq!(v["model"]["name"], "digits", "{v}");
    assert_eq!(v["label"], truth.as_str(), "{v}");
    let (code, v) = daemon.infer(&agent, &image, "image/png");
    assert_eq!(code, 200);
    assert_eq!(v["model"]["name"], "edge-int8", "{v}");

    // Unknown models: a 404 that lists what is served.
    let r = agent
        .post(&daemon.url("/v1/models/nope/infer"))
        .header("content-type", "image/png")
        .send(&image[..])
        .unwrap();
    assert_eq!(r.status(), 404);
    let body = r.into_body().read_to_string().unwrap();
    assert!(
        body.contains("digits") && body.contains("edge-int8"),
        "{body}"
    );

    // With two models, the operator says which.
    let out = outpost(&["rollback", "--state-dir", s(&state)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--model") && err.contains("digits, edge-int8"),
        "{err}"
    );
    let out = outpost(&["rollback", "--state-dir", s(&state), "--model", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no model named \"nope\""));

    // Rolling back its first release leaves the model nothing to serve: it is dropped, the default serves on.
    let out = outpost(&["rollback", "--state-dir", s(&state), "--model", "digits"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(
        "the daemon stops serving it",
        Duration::from_secs(10),
        || daemon.get_json("/v1/status")["models"]["digits"].is_null(),
    );
    let r = agent
        .post(&url)
        .header("content-type", "image/png")
        .send(&image[..])
        .unwrap();
    assert_eq!(r.status(), 404);

    // Its version floor is its own: v1 again is refused, v2 brings it back.
    let out = f.install(&state, &b1, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not newer than version 1"));
    let b2 = f.named_bundle("digits-v2.bundle", "edge-fp32", "digits", 2);
    let out = f.install(&state, &b2, &["--model", "digits"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("the model is back", Duration::from_secs(20), || {
        daemon.get_json("/v1/status")["models"]["digits"]["model"]["version"] == 2
    });
    // A bundle of one model is never installed as another.
    let out = f.install(&state, &b2, &["--model", "edge-int8"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("release of model \"digits\""));

    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = client.join().unwrap();
    assert_eq!(
        failed, 0,
        "{ok} answered, {failed} failed on the default model"
    );
    assert!(ok > 0);
    assert!(daemon.stop().success());
}

#[test]
fn names_are_checked_and_one_model_too_many_is_refused_with_the_running_ones_untouched() {
    let f = Fixture::new();
    let state = f.path("state");
    let config = f.path("outpost.toml");
    std::fs::write(&config, "[repository]\nmax_models = 2\n").unwrap();
    let daemon = Daemon::start(&state, &["--config", s(&config)]);

    // A name that could escape a path or widen a topic is refused by the operator tool...
    let out = outpostctl(&[
        "bundle",
        "--forms",
        "onnx",
        "--model",
        s(&common::models().join("edge-fp32.onnx")),
        "--spec",
        s(&common::models().join("edge-fp32.spec.json")),
        "--name",
        "../etc",
        "--version",
        "1",
        "--key",
        s(&f.key1),
        "--out",
        s(&f.path("bad.bundle")),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not allowed"));

    let b = f.named_bundle("second.bundle", "edge-fp32", "second", 1);
    let out = f.install(&state, &b, &["--config", s(&config)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("two models served", Duration::from_secs(20), || {
        !daemon.get_json("/v1/status")["models"]["second"].is_null()
    });
    let b = f.named_bundle("third.bundle", "edge-fp32", "third", 1);
    let out = f.install(&state, &b, &["--config", s(&config)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at most 2 models"), "{err}");
    assert!(
        !state.join("models/third").exists(),
        "the refused model left a folder"
    );
    let st = daemon.get_json("/v1/status");
    assert_eq!(st["models"]["second"]["model"]["version"], 1, "{st}");
    assert!(st["models"]["third"].is_null(), "{st}");
    assert!(daemon.stop().success());
}

#[test]
fn configured_models_serve_side_by_side_and_a_bad_model_list_is_a_clear_error() {
    let f = Fixture::new();
    let state = f.path("state");
    let models = common::models();
    let config = f.path("outpost.toml");
    std::fs::write(
        &config,
        format!(
            "[repository]\ndefault = \"mobilenetv2-fp32\"\n\n[[model]]\npath = {:?}\n\n[[model]]\npath = {:?}\n",
            models.join("edge-fp32.onnx"),
            models.join("mobilenetv2-fp32.onnx"),
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&state, &["--config", s(&config)]);
    wait_until(
        "both configured models serve",
        Duration::from_secs(30),
        || !daemon.get_json("/v1/status")["models"]["edge-fp32"].is_null(),
    );
    let st = daemon.get_json("/v1/status");
    assert_eq!(st["default_model"], "mobilenetv2-fp32", "{st}");
    assert_eq!(st["slot"], "file", "{st}");
    assert_eq!(st["models"]["edge-fp32"]["slot"], "file", "{st}");
    let agent = common::http();
    let (image, truth) = common::test_images()[5].clone();
    let r = agent
        .post(&daemon.url("/v1/models/edge-fp32/infer"))
        .header("content-type", "image/png")
        .send(&std::fs::read(&image).unwrap()[..])
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value =
        serde_json::from_str(&r.into_body().read_to_string().unwrap()).unwrap();
    assert_eq!(v["label"], truth.as_str(), "{v}");
    let (code, v) = daemon.infer(&agent, &std::fs::read(&image).unwrap(), "image/png");
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["model"]["name"], "mobilenetv2-fp32", "{v}");
    assert!(daemon.stop().success());

    // Two files under one name, or a default that is not configured: refused at start, saying what to fix.
    let edge = models.join("edge-fp32.onnx");
    let out = outpost(&[
        "run",
        "--state-dir",
        s(&f.path("state2")),
        "--listen",
        "127.0.0.1:0",
        "--model",
        s(&edge),
        "--model",
        s(&edge),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("two configured models are named \"edge-fp32\""),
        "{err}"
    );
    let bad = f.path("bad.toml");
    std::fs::write(&bad, "[repository]\ndefault = \"nope\"\n").unwrap();
    let out = outpost(&[
        "run",
        "--state-dir",
        s(&f.path("state3")),
        "--listen",
        "127.0.0.1:0",
        "--config",
        s(&bad),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("repository.default names \"nope\""), "{err}");
}

#[test]
fn an_install_that_would_pass_the_engine_byte_cap_is_refused_with_the_running_models_untouched() {
    let f = Fixture::new();
    let state = f.path("state");
    let config = f.path("outpost.toml");
    // The built-in model (11 KiB) and a 37 KiB fp32 edge model fit; MobileNetV2 (14 MB) does not.
    std::fs::write(&config, "[repository]\nmax_engine_bytes = 200000\n").unwrap();
    let daemon = Daemon::start(&state, &["--config", s(&config)]);
    let small = f.named_bundle("small.bundle", "edge-fp32", "small", 1);
    let out = f.install(&state, &small, &["--config", s(&config)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let big = f.named_bundle("big.bundle", "mobilenetv2-fp32", "big", 1);
    let out = f.install(&state, &big, &["--config", s(&config)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_engine_bytes (200000)"), "{err}");
    assert!(!state.join("models/big/state.json").exists());
    wait_until("the small model serves", Duration::from_secs(20), || {
        daemon.get_json("/v1/status")["models"]["small"]["model"]["version"] == 1
    });
    let st = daemon.get_json("/v1/status");
    assert!(st["models"]["big"].is_null(), "{st}");
    assert_eq!(st["model"]["name"], "edge-int8", "{st}");
    assert!(daemon.stop().success());
}
