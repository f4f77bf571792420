//! The forward budget and the drift alarm under a real shift (issue 20, items 3 and 4), against a real mosquitto, a
//! real `outpostctl cloud` worker and the daemon: 3,000 rotated, rescaled and noisy digits (models/data/shifted,
//! made by models/make_detectors.py from held-out digits), on which the edge model's policy wants to forward about
//! 60 % of the runs, against a budget of 10 %.

use crate::common;

use crate::common::{s, wait_until, Daemon, Fixture, Mosquitto};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One answer as the client saw it.
struct Seen {
    at: Duration,
    label: String,
    edge_label: String,
    truth: String,
    hardness: f32,
    forwarded: bool,
}

/// Sends `images` with 4 client threads at most 400 per second (a steady camera-like rate, so that the budget's
/// window holds a known share of the stream); every answer must be a 200 from a model run (no repeats, no cache hits).
fn send(d: &Daemon, images: &[(Vec<u8>, String)], start: Instant) -> Vec<Seen> {
    let next = AtomicUsize::new(0);
    let seen = Mutex::new(Vec::new());
    std::thread::scope(|sc| {
        for _ in 0..4 {
            sc.spawn(|| {
                let agent = common::http();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((png, truth)) = images.get(i) else {
                        break;
                    };
                    let due = Duration::from_micros(2500 * i as u64);
                    if let Some(wait) = due.checked_sub(start.elapsed()) {
                        std::thread::sleep(wait);
                    }
                    let (code, v) = d.infer(&agent, png, "image/png");
                    assert_eq!(code, 200, "{v}");
                    let label = v["label"].as_str().unwrap().to_string();
                    seen.lock().unwrap().push(Seen {
                        at: start.elapsed(),
                        edge_label: v["edge_label"].as_str().unwrap_or(&label).to_string(),
                        label,
                        truth: truth.clone(),
                        hardness: v["hardness"]
                            .as_f64()
                            .expect("a model run reports its hardness")
                            as f32,
                        forwarded: v["case_id"].is_string(),
                    });
                }
            });
        }
    });
    seen.into_inner().unwrap()
}

fn status_drift(d: &Daemon) -> serde_json::Value {
    d.get_json("/v1/status")["drift"].clone()
}

/// The retained alarm message, read with mosquitto_sub.
fn alarm(broker: &Mosquitto, device: &str) -> serde_json::Value {
    let out = std::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args([
            "-t",
            &format!("outpost/v1/device/{device}/alarm"),
            "-C",
            "1",
            "-W",
            "5",
        ])
        .output()
        .expect("mosquitto_sub");
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

#[test]
fn under_drift_the_budget_holds_sends_the_hardest_and_the_alarm_rises_then_clears() {
    let broker = Mosquitto::start();
    let f = Fixture::new();
    // The cloud tier's model for edge-int8: trained on varied digits (models/make_robust.py), as a cloud model is.
    let robust = common::models().join("cloud-robust-fp32.onnx");
    let by_model = format!("edge-int8={}", s(&robust));
    let _w = f.cloud_worker(&broker.url(), &f.path("dataset"), &["--model", &by_model]);
    // The release carries its budget (10 %) and its baseline (its hardness on the calibration digits).
    let calib = common::models().join("data/calib");
    let bundle = f.bundle(
        "edge.bundle",
        "edge-int8",
        2,
        &[&f.key1],
        &["--calibration", s(&calib), "--max-fraction", "0.1"],
    );
    let state = f.path("state");
    f.install_committed(&state, &bundle, "edge-int8");
    let config = f.path("outpost.toml");
    std::fs::write(
        &config,
        "[forward]\ndeadline_ms = 3000\nbudget_window_s = 2\ndrift_window = 300\n",
    )
    .unwrap();
    let url = broker.url();
    let mut args = vec!["--config", s(&config)];
    args.extend(f.fleet_args(&url, "drift-1"));
    let d = Daemon::start(&state, &args);
    d.wait_link_up();

    // In distribution: no alarm.
    let clean = common::test_images();
    let clean: Vec<(Vec<u8>, String)> = clean
        .iter()
        .take(400)
        .map(|(p, l)| (std::fs::read(p).unwrap(), l.clone()))
        .collect();
    send(&d, &clean, Instant::now());
    assert_eq!(status_drift(&d)["drift"], false, "{}", status_drift(&d));

    // The shifted stream.
    let start = Instant::now();
    let seen = send(&d, &common::shifted_stream(), start);
    let after: Vec<&Seen> = seen
        .iter()
        .filter(|x| x.at > Duration::from_secs(2))
        .collect();
    assert!(
        after.len() >= 2000,
        "only {} answers after the first window",
        after.len()
    );
    let bar = 0.1; // max-prob below 0.9
    let wanted = after.iter().filter(|x| x.hardness > bar).count() as f64 / after.len() as f64;
    let forwarded: Vec<f32> = after
        .iter()
        .filter(|x| x.forwarded)
        .map(|x| x.hardness)
        .collect();
    let skipped: Vec<f32> = after
        .iter()
        .filter(|x| !x.forwarded && x.hardness > bar)
        .map(|x| x.hardness)
        .collect();
    let share = forwarded.len() as f64 / after.len() as f64;
    let mean = |v: &[f32]| v.iter().map(|x| *x as f64).sum::<f64>() / v.len().max(1) as f64;
    let acc = |f: &dyn Fn(&Seen) -> bool| {
        after.iter().filter(|x| f(x)).count() as f64 / after.len() as f64
    };
    let cascade = acc(&|x| x.label == x.truth);
    let edge = acc(&|x| x.edge_label == x.truth);
    eprintln!(
        "shifted: {} answers after the first window; the policy wants {:.3}, forwarded {:.4} (budget 0.1); mean \
         hardness forwarded {:.3} vs skipped {:.3}; accuracy cascade {cascade:.4} vs edge {edge:.4}",
        after.len(),
        wanted,
        share,
        mean(&forwarded),
        mean(&skipped)
    );
    assert!(wanted > 0.3, "the shift makes most inputs hard: {wanted}");
    assert!(
        (share - 0.1).abs() <= 0.01,
        "the budget holds within 1 point: {share}"
    );
    // The hardest go first: the forwarded cases are harder than the skipped ones (a token bucket would send hard
    // cases of every hardness alike, and the two means would match).
    assert!(
        mean(&forwarded) > mean(&skipped) + 0.1,
        "{} vs {}",
        mean(&forwarded),
        mean(&skipped)
    );
    assert!(
        cascade > edge + 0.02,
        "the cascade beats edge-only: {cascade} vs {edge}"
    );
    let status = d.get_json("/v1/status");
    let budget = &status["forward"]["budget"];
    assert_eq!(budget["max_fraction"], 0.1, "{status}");
    assert!(budget["skipped"].as_u64().unwrap() > 1000, "{budget}");
    assert!(
        d.metrics()
            .contains("outpost_forward_skipped_total{model=\"edge-int8\"}"),
        "skips are counted in /metrics"
    );

    // The drift alarm: raised in status, /metrics and the retained alarm message.
    let drift = status_drift(&d);
    assert_eq!(drift["drift"], true, "{drift}");
    assert!(d.metrics().contains("outpost_drift{model=\"edge-int8\"} 1"));
    wait_until(
        "the retained alarm names the model",
        Duration::from_secs(10),
        || alarm(&broker, "drift-1")["drift"]["edge-int8"]["drift"] == true,
    );
    let watch = common::outpostctl(&["watch", "--broker", &broker.url(), "--for", "2"]);
    let text = String::from_utf8_lossy(&watch.stdout);
    assert!(
        text.lines()
            .any(|l| l.contains("edge-int8") && l.contains("DRIFT")),
        "outpostctl watch shows the alarm:\n{text}"
    );

    // Traffic comes back: the alarm clears (in-distribution digits the device has not seen yet).
    let back: Vec<(Vec<u8>, String)> = common::test_images()
        .iter()
        .skip(400)
        .take(800)
        .map(|(p, l)| (std::fs::read(p).unwrap(), l.clone()))
        .collect();
    send(&d, &back, Instant::now());
    let drift = status_drift(&d);
    assert_eq!(drift["drift"], false, "{drift}");
    assert_eq!(
        drift["raised_total"], 1,
        "raised once, no flapping: {drift}"
    );
    assert_eq!(drift["cleared_total"], 1, "{drift}");
    wait_until(
        "the retained alarm is cleared",
        Duration::from_secs(10),
        || {
            alarm(&broker, "drift-1")["drift"]
                .as_object()
                .is_some_and(|m| m.is_empty())
        },
    );
    assert!(d.stop().success());
}
