//! Hard cases to the cloud tier against a real mosquitto and real `outpostctl cloud` workers: answers in time, local
//! fallback within the deadline, nothing lost across a broker outage and an agent SIGKILL, shared subscriptions, and
//! the outbox bound.

use crate::common;

use crate::common::KillOnDrop;

use crate::common::{s, wait_until, Daemon, Fixture, Mosquitto};
use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn worker(f: &Fixture, broker: &Mosquitto, dataset: &Path) -> KillOnDrop {
    f.cloud_worker(&broker.url(), dataset, &[])
}

/// Every input is hard (max-prob below 1.01), so every request goes to the cloud.
fn agent(f: &Fixture, broker_url: &str, id: &str, extra: &[&str]) -> Daemon {
    let mut args = f.fleet_args(broker_url, id);
    args.extend_from_slice(&["--hardness", "max-prob:1.01"]);
    args.extend_from_slice(extra);
    Daemon::start(&f.path(&format!("state-{id}")), &args)
}

fn image(i: usize) -> Vec<u8> {
    std::fs::read(&common::test_images()[i].0).unwrap()
}

fn infer(d: &Daemon, i: usize) -> serde_json::Value {
    let (code, v) = d.infer(&common::http(), &image(i), "image/png");
    assert_eq!(code, 200, "{v}");
    v
}

fn dataset_ids(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("cases.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn a_hard_case_comes_back_from_the_cloud_or_from_the_edge_within_the_deadline() {
    let broker = Mosquitto::start();
    let f = Fixture::new();
    let ds = f.path("dataset");
    let w = worker(&f, &broker, &ds);
    let d = agent(&f, &broker.url(), "f1", &["--cloud-deadline-ms", "1500"]);
    d.wait_link_up();
    let v = infer(&d, 0);
    assert_eq!(v["source"], "cloud", "{v}");
    assert_eq!(v["forwarded"], "answered");
    assert!(v["edge_label"].is_string());
    assert_eq!(
        v["label"],
        common::test_images()[0].1.as_str(),
        "the cloud model gets this digit right"
    );
    // The same input again: the cloud's answer comes from the cache, nothing travels.
    let again = infer(&d, 0);
    assert_eq!(again["source"], "cloud-cache", "{again}");
    assert_eq!(again["label"], v["label"]);
    wait_until("the worker stored the case", Duration::from_secs(5), || {
        dataset_ids(&ds).len() == 1
    });

    drop(w);
    let t = std::time::Instant::now();
    let v = infer(&d, 1);
    let took = t.elapsed();
    assert_eq!(v["source"], "edge", "{v}");
    assert_eq!(v["forwarded"], "queued");
    assert!(
        took < Duration::from_millis(1500 + 700),
        "answered from the edge after {took:?}"
    );
    assert!(
        took >= Duration::from_millis(1400),
        "waited the deadline for the cloud: {took:?}"
    );
    assert!(d.stop().success());
}

#[test]
fn an_outage_and_a_sigkill_lose_no_hard_case_and_deliver_each_once() {
    let mut broker = Mosquitto::start();
    let f = Fixture::new();
    let d = agent(&f, &broker.url(), "f2", &["--cloud-deadline-ms", "100"]);
    d.wait_link_up();
    broker.kill();
    let n = 10;
    let ids: HashSet<String> = (0..n)
        .map(|i| {
            let v = infer(&d, 100 + i);
            assert_eq!(
                (v["source"].as_str(), v["forwarded"].as_str()),
                (Some("edge"), Some("queued")),
                "{v}"
            );
            v["case_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(ids.len(), n);
    assert_eq!(
        d.get_json("/v1/status")["forward"]["outbox"]["pending"],
        n as u64
    );
    let state = d.state_dir.clone();
    drop(d); // SIGKILL
    let url = broker.url();
    let mut args = f.fleet_args(&url, "f2");
    args.extend_from_slice(&["--hardness", "max-prob:1.01"]);
    let d = Daemon::start(&state, &args);
    assert_eq!(
        d.get_json("/v1/status")["forward"]["outbox"]["pending"],
        n as u64,
        "the outbox survived SIGKILL"
    );
    broker.restart();
    let ds = f.path("dataset");
    let _w = worker(&f, &broker, &ds);
    wait_until(
        "every queued case reached the worker",
        Duration::from_secs(60),
        || dataset_ids(&ds).len() >= n,
    );
    wait_until("the outbox is empty", Duration::from_secs(20), || {
        d.get_json("/v1/status")["forward"]["outbox"]["pending"] == 0
    });
    let got = dataset_ids(&ds);
    assert_eq!(got.len(), n, "each case stored once: {got:?}");
    assert_eq!(got.into_iter().collect::<HashSet<_>>(), ids);
    assert!(d.stop().success());
}

#[test]
fn two_workers_on_a_shared_subscription_split_the_work() {
    let broker = Mosquitto::start();
    let f = Fixture::new();
    let (a, b) = (f.path("ds-a"), f.path("ds-b"));
    let _wa = worker(&f, &broker, &a);
    let _wb = worker(&f, &broker, &b);
    let d = agent(&f, &broker.url(), "f3", &["--cloud-deadline-ms", "2000"]);
    d.wait_link_up();
    let n = 30;
    let ids: Vec<String> = (0..n)
        .map(|i| {
            let v = infer(&d, 200 + i);
            assert_eq!(v["source"], "cloud", "{v}");
            v["case_id"].as_str().unwrap().to_string()
        })
        .collect();
    let (ia, ib) = (dataset_ids(&a), dataset_ids(&b));
    eprintln!("worker a: {}, worker b: {}", ia.len(), ib.len());
    assert!(
        !ia.is_empty() && !ib.is_empty(),
        "both workers got work: {} / {}",
        ia.len(),
        ib.len()
    );
    let (sa, sb): (HashSet<_>, HashSet<_>) = (ia.iter().collect(), ib.iter().collect());
    assert!(sa.is_disjoint(&sb), "no case answered by both");
    // Every answered case is in exactly one dataset. (An HTTP client that retries a request makes a new case: it
    // is still stored once, so the datasets may hold more ids than answers.)
    for id in &ids {
        assert!(
            sa.contains(id) ^ sb.contains(id),
            "case {id} must be stored by exactly one worker"
        );
    }
    assert!(d.stop().success());
}

#[test]
fn the_outbox_bound_drops_the_oldest_and_counts_it() {
    let f = Fixture::new();
    let conf = f.path("o.toml");
    std::fs::write(
        &conf,
        "[forward]\noutbox_max_entries = 5\ndeadline_ms = 20\n",
    )
    .unwrap();
    // A broker that is not there: every case stays queued.
    let dead = format!("mqtt://127.0.0.1:{}", common::free_port());
    let d = agent(&f, &dead, "f4", &["--config", s(&conf)]);
    for i in 0..12 {
        assert_eq!(infer(&d, 300 + i)["forwarded"], "queued");
    }
    let st = d.get_json("/v1/status");
    assert_eq!(st["forward"]["outbox"]["pending"], 5, "{st}");
    assert_eq!(st["forward"]["outbox"]["dropped"], 7, "{st}");
    let m = d.metrics();
    assert!(m.contains("outpost_outbox_dropped_total 7"), "{m}");
    assert!(d.stop().success());
}

#[test]
fn the_threshold_comes_from_the_manifest_unless_the_config_or_set_overrides_it() {
    let broker = Mosquitto::start();
    let f = Fixture::new();
    let url = broker.url();
    let state = f.path("state-f5");
    let d = Daemon::start(&state, &f.fleet_args(&url, "f5"));
    let threshold = |d: &Daemon| {
        d.get_json("/v1/status")["forward"]["threshold"]
            .as_f64()
            .unwrap()
    };
    assert!((threshold(&d) - 0.9).abs() < 1e-6, "the max-prob default");
    let b = f.bundle(
        "v2.bundle",
        "edge-fp32",
        2,
        &[&f.key1],
        &["--hardness-threshold", "0.42"],
    );
    assert!(f.install(&state, &b, &[]).status.success());
    wait_until(
        "the manifest's threshold applies",
        Duration::from_secs(10),
        || (threshold(&d) - 0.42).abs() < 1e-6,
    );
    assert!(d.stop().success());
    // The config wins over the manifest, also after a restart.
    let mut args = f.fleet_args(&url, "f5");
    args.extend_from_slice(&["--hardness", "margin:0.3"]);
    let d = Daemon::start(&state, &args);
    let st = d.get_json("/v1/status")["forward"].clone();
    assert_eq!(st["score"], "margin");
    assert!(
        (st["threshold"].as_f64().unwrap() - 0.3).abs() < 1e-6,
        "{st}"
    );
    assert!(d.stop().success());
}

/// Publishes `payload` on the device's answer topic as a cloud worker would (MQTT 5, QoS 1), with the given content
/// type and correlation data (mosquitto_pub, so the bytes are exactly what the test made).
fn publish_answer(
    broker: &Mosquitto,
    device: &str,
    payload: &[u8],
    content_type: Option<&str>,
    correlation: &str,
) {
    let file = broker
        .dir
        .path()
        .join(format!("answer-{}", rand::random::<u64>()));
    std::fs::write(&file, payload).unwrap();
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-V", "mqttv5", "-h", "127.0.0.1", "-q", "1"])
        .args(["-p", &broker.port.to_string()])
        .args(["-t", &format!("outpost/v1/device/{device}/cloud")])
        .args(["-f", s(&file)])
        .args(["-D", "publish", "correlation-data", correlation]);
    if let Some(ct) = content_type {
        cmd.args(["-D", "publish", "content-type", ct]);
    }
    let out = cmd.output().expect("mosquitto_pub");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The answer a worker holding `key` would give to case `id` of `device` carrying image `i`.
fn answer_for(id: &str, device: &str, i: usize, label: &str) -> outpost::forward::Answer {
    outpost::forward::Answer {
        id: id.to_string(),
        device: device.to_string(),
        input: outpost::forward::input_digest(&image(i)),
        model: "test-cloud-model".into(),
        issued_unix: outpost::bundle::now_unix(),
        label: label.to_string(),
        index: 0,
        confidence: 0.999,
        margin: 0.99,
        entropy: 0.01,
        task: None,
    }
}

fn answer_counts(d: &Daemon) -> serde_json::Value {
    d.get_json("/v1/status")["forward"]["answers"].clone()
}

/// Waits until the agent has counted `n` answers with this result.
fn wait_counted(d: &Daemon, result: &str, n: u64) {
    wait_until(
        &format!("{n} cloud answer(s) counted as {result}"),
        Duration::from_secs(10),
        || answer_counts(d)[result].as_u64() == Some(n),
    );
}

/// A queued hard case (no worker runs): its id from the response.
fn queued_case(d: &Daemon, i: usize) -> String {
    let v = infer(d, i);
    assert_eq!(v["forwarded"], "queued", "{v}");
    v["case_id"].as_str().unwrap().to_string()
}

#[test]
fn forged_replayed_and_unknown_key_answers_are_refused_and_the_cache_keeps_nothing_from_them() {
    use outpost::bundle::keys::SigningKeyFile;
    use outpost::forward::{SignedAnswer, ANSWER_CONTENT_TYPE as CT};
    let broker = Mosquitto::start();
    let f = Fixture::new();
    let dev = "f7";
    let d = agent(&f, &broker.url(), dev, &["--cloud-deadline-ms", "100"]);
    d.wait_link_up();
    let cloud = SigningKeyFile::load(&f.cloud_key).unwrap();
    let stranger = SigningKeyFile::generate().unwrap();
    let truth = common::test_images()[0].1.clone();

    let x = queued_case(&d, 0);
    let y = queued_case(&d, 1);
    // A genuine answer for y: accepted, cached.
    let y_answer = answer_for(&y, dev, 1, &common::test_images()[1].1).sign(&cloud);
    publish_answer(&broker, dev, &y_answer, Some(CT), &y);
    wait_counted(&d, "accepted", 1);
    assert_eq!(infer(&d, 1)["source"], "cloud-cache");

    // 1. Forged: a trusted signature over other bytes (the label changed after signing).
    let genuine = answer_for(&x, dev, 0, &truth).sign(&cloud);
    let mut forged: SignedAnswer = postcard::from_bytes(&genuine).unwrap();
    let mut inner: outpost::forward::AnswerV1 = postcard::from_bytes(&forged.answer).unwrap();
    inner.label = "forged".into();
    forged.answer = postcard::to_stdvec(&inner).unwrap();
    publish_answer(
        &broker,
        dev,
        &postcard::to_stdvec(&forged).unwrap(),
        Some(CT),
        &x,
    );
    wait_counted(&d, "forged", 1);
    // 2. Signed by a key the device does not trust.
    let unknown = answer_for(&x, dev, 0, "unknown-key").sign(&stranger);
    publish_answer(&broker, dev, &unknown, Some(CT), &x);
    wait_counted(&d, "unknown_key", 1);
    // 3. Unsigned.
    let unsigned = SignedAnswer {
        answer: postcard::to_stdvec(&answer_for(&x, dev, 0, "unsigned")).unwrap(),
        key_id: String::new(),
        signature: vec![],
    };
    publish_answer(
        &broker,
        dev,
        &postcard::to_stdvec(&unsigned).unwrap(),
        Some(CT),
        &x,
    );
    wait_counted(&d, "unsigned", 1);
    // 4. Replays of y's genuine answer: to case x (correlation x) and again as itself.
    publish_answer(&broker, dev, &y_answer, Some(CT), &x);
    wait_counted(&d, "mismatch", 1);
    publish_answer(&broker, dev, &y_answer, Some(CT), &y);
    wait_counted(&d, "duplicate", 1);
    // 5. Signed by the cloud but bound to other things: x's id with y's image, another device, an answer issued
    //    before the case existed.
    let mut wrong_input = answer_for(&x, dev, 1, "wrong-input");
    wrong_input.id = x.clone();
    publish_answer(&broker, dev, &wrong_input.sign(&cloud), Some(CT), &x);
    wait_counted(&d, "mismatch", 2);
    let other_device = answer_for(&x, "someone-else", 0, "other-device").sign(&cloud);
    publish_answer(&broker, dev, &other_device, Some(CT), &x);
    wait_counted(&d, "mismatch", 3);
    let mut old = answer_for(&x, dev, 0, "stale");
    old.issued_unix -= 2 * outpost::forward::CLOCK_SKEW_S;
    publish_answer(&broker, dev, &old.sign(&cloud), Some(CT), &x);
    wait_counted(&d, "stale", 1);

    // Nothing of them was cached or removed x from the outbox: the edge answers x, and x is still pending.
    let v = infer(&d, 0);
    assert_eq!(v["source"], "cache", "the edge's own cached answer: {v}");
    let status = d.get_json("/v1/status");
    assert_eq!(status["forward"]["outbox"]["pending"], 1, "{status}");
    let metrics = d.metrics();
    for reason in ["forged", "unknown_key", "unsigned", "duplicate", "stale"] {
        assert!(
            metrics.contains(&format!(
                "outpost_cloud_answers_total{{result=\"{reason}\"}} 1"
            )),
            "{reason} counted in /metrics:\n{metrics}"
        );
    }
    assert!(metrics.contains("outpost_cloud_answers_total{result=\"mismatch\"} 3"));

    // The genuine answer for x still goes through, and only it is cached.
    publish_answer(&broker, dev, &genuine, Some(CT), &x);
    wait_counted(&d, "accepted", 2);
    let v = infer(&d, 0);
    assert_eq!(v["source"], "cloud-cache", "{v}");
    assert_eq!(v["label"], truth.as_str());
    assert_eq!(d.get_json("/v1/status")["forward"]["outbox"]["pending"], 0);
    assert!(d.stop().success());
}

#[test]
fn malformed_oversized_mistyped_or_unknown_answers_are_dropped_counted_and_the_agent_serves() {
    use outpost::bundle::keys::SigningKeyFile;
    use outpost::forward::ANSWER_CONTENT_TYPE as CT;
    let broker = Mosquitto::start();
    let f = Fixture::new();
    let dev = "f8";
    let d = agent(&f, &broker.url(), dev, &["--cloud-deadline-ms", "100"]);
    d.wait_link_up();
    let cloud = SigningKeyFile::load(&f.cloud_key).unwrap();
    let x = queued_case(&d, 0);
    let truth = common::test_images()[0].1.clone();
    let genuine = answer_for(&x, dev, 0, &truth).sign(&cloud);

    publish_answer(&broker, dev, b"\xff\xff\xff\xff not postcard", Some(CT), &x);
    wait_counted(&d, "malformed", 1);
    publish_answer(&broker, dev, &vec![7u8; 70 * 1024], Some(CT), &x);
    wait_counted(&d, "oversized", 1);
    publish_answer(&broker, dev, &genuine, Some("application/json"), &x);
    wait_counted(&d, "content_type", 1);
    publish_answer(&broker, dev, &genuine, None, &x);
    wait_counted(&d, "content_type", 2);
    let unknown_case = answer_for(&"ab".repeat(16), dev, 0, &truth).sign(&cloud);
    publish_answer(&broker, dev, &unknown_case, Some(CT), &"ab".repeat(16));
    wait_counted(&d, "unknown_case", 1);
    // Well signed but out of range: a NaN confidence.
    let mut nan = answer_for(&x, dev, 0, &truth);
    nan.confidence = f32::NAN;
    publish_answer(&broker, dev, &nan.sign(&cloud), Some(CT), &x);
    wait_counted(&d, "malformed", 2);

    // The agent serves on, x is still pending, and its genuine answer is then accepted.
    for i in 1..4 {
        assert_eq!(infer(&d, i)["forwarded"], "queued");
    }
    assert_eq!(d.get_json("/v1/status")["forward"]["outbox"]["pending"], 4);
    assert_eq!(answer_counts(&d).get("accepted"), None);
    publish_answer(&broker, dev, &genuine, Some(CT), &x);
    wait_counted(&d, "accepted", 1);
    assert_eq!(infer(&d, 0)["source"], "cloud-cache");
    assert!(d.stop().success());
}

/// Every model forwards its own hard cases, tagged with its name, and the worker answers each with the cloud model
/// that stands behind that model (`--model NAME=PATH`); a model without one is answered by the edge.
#[test]
fn each_model_forwards_its_hard_cases_and_the_worker_answers_with_that_models_counterpart() {
    let broker = Mosquitto::start();
    let f = Fixture::new();
    let ds = f.path("dataset");
    let mut worker = std::process::Command::new(env!("CARGO_BIN_EXE_outpostctl"));
    worker
        .args(["cloud", "--broker", &broker.url(), "--dataset", s(&ds)])
        .arg("--model")
        .arg(format!(
            "digits={}",
            common::models().join("cloud-fp32.onnx").display()
        ))
        .args(["--key", s(&f.cloud_key)]);
    let _w = common::spawn_ready(worker, "cloud worker ready");
    let d = agent(&f, &broker.url(), "f9", &["--cloud-deadline-ms", "1500"]);
    d.wait_link_up();
    let b = f.named_bundle("d1.bundle", "edge-fp32", "digits", 1);
    let out = f.install(&d.state_dir, &b, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::wait_until("digits serves", Duration::from_secs(20), || {
        !d.get_json("/v1/status")["models"]["digits"].is_null()
    });
    let agent = common::http();
    let r = agent
        .post(&d.url("/v1/models/digits/infer"))
        .header("content-type", "image/png")
        .send(&image(4)[..])
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&r.into_body().read_to_string().unwrap()).unwrap();
    assert_eq!(v["source"], "cloud", "{v}");
    assert_eq!(v["model"]["name"], "digits", "{v}");
    // The default model's case reaches a worker with no counterpart for it: the edge answers, the case waits.
    let v = infer(&d, 5);
    assert_eq!(v["source"], "edge", "{v}");
    assert_eq!(v["forwarded"], "queued", "{v}");
    let lines = std::fs::read_to_string(ds.join("cases.jsonl")).unwrap();
    let cases: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(cases.len(), 1, "{lines}");
    assert_eq!(cases[0]["model"], "digits", "{lines}");
    let st = d.get_json("/v1/status");
    assert_eq!(
        st["models"]["digits"]["forward"]["outbox"]["pending"], 1,
        "the default model's case waits: {st}"
    );
    assert!(d.stop().success());
}

/// The Open Inference Protocol's hard cases (issue 18, item 3): a classifier's input sent as a tensor (no image) is
/// forwarded as a tensor case, the worker runs its model on that tensor and signs an answer bound to the tensor's
/// digest; the reply names the tier (`outpost_source`) and puts the cloud's class first in the classification
/// output, while the output tensor stays the edge model's. Asked again, the cloud's answer comes from the cache and
/// nothing travels. An encoded image sent as BYTES is forwarded as an image case.
#[test]
fn a_v2_tensor_request_is_forwarded_as_a_tensor_case_and_answered_by_the_cloud() {
    let broker = Mosquitto::start();
    let f = Fixture::new();
    let ds = f.path("dataset");
    let _w = worker(&f, &broker, &ds);
    let d = agent(&f, &broker.url(), "f-v2", &["--cloud-deadline-ms", "3000"]);
    d.wait_link_up();
    let engine =
        outpost::inference::Engine::load_files(&common::models().join("edge-int8.onnx"), None)
            .unwrap();
    let (path, truth) = common::test_images()[5].clone();
    let tensor = engine
        .tensor_from_image(&std::fs::read(&path).unwrap(), &Default::default())
        .unwrap();
    let edge = engine.session().unwrap().run(&tensor).unwrap();
    let request = serde_json::json!({
        "inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": tensor}],
        "outputs": [{"name": "logits", "parameters": {"classification": 2}},
                    {"name": "logits"}],
    });
    let post = || {
        let (code, v) = d.post_json("/v2/models/edge-int8/infer", &request);
        assert_eq!(code, 200, "{v}");
        v
    };
    let v = post();
    assert_eq!(v["parameters"]["outpost_source"], "cloud", "{v}");
    assert_eq!(v["parameters"]["outpost_forwarded"], "answered", "{v}");
    let top = v["outputs"][0]["data"][0].as_str().unwrap();
    assert_eq!(
        top.split(':').nth(2),
        Some(truth.as_str()),
        "the cloud's class first: {v}"
    );
    let logits: Vec<f32> = serde_json::from_value(v["outputs"][1]["data"].clone()).unwrap();
    assert_eq!(logits, edge, "the output tensor is the edge model's");
    wait_until(
        "the worker stored the tensor case",
        Duration::from_secs(5),
        || dataset_ids(&ds).len() == 1,
    );
    let line: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(ds.join("cases.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(line["input"], "tensor (little-endian f32)", "{line}");
    let stored = std::fs::read(ds.join(format!("{}.img", line["id"].as_str().unwrap()))).unwrap();
    assert_eq!(stored.len(), 784 * 4, "the tensor as sent");

    let again = post();
    assert_eq!(
        again["parameters"]["outpost_source"], "cloud-cache",
        "{again}"
    );
    assert_eq!(again["outputs"][0]["data"][0], v["outputs"][0]["data"][0]);
    let answers = &d.get_json("/v1/status")["forward"]["answers"];
    assert_eq!(
        answers["accepted"], 1,
        "one signed answer, verified: {answers}"
    );
    // Nothing travelled the second time: the agent forwarded one case in all, and the worker kept one.
    let forwarded: f64 = d
        .metrics()
        .lines()
        .filter(|l| l.starts_with("outpost_forwarded_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(forwarded, 1.0, "one hard case forwarded in all");
    assert_eq!(dataset_ids(&ds).len(), 1, "the worker kept one case");
    assert!(d.stop().success());
}
