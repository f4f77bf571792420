//! Hard cases to the cloud tier against a real mosquitto and real `outpostctl cloud` workers: answers in time, local
//! fallback within the deadline, nothing lost across a broker outage and an agent SIGKILL, shared subscriptions, and
//! the outbox bound.

mod common;

use common::KillOnDrop;

use common::{s, wait_until, Daemon, Fixture, Mosquitto};
use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn worker(broker: &Mosquitto, dataset: &Path) -> KillOnDrop {
    let w = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_outpostctl"))
            .args(["cloud", "--broker", &broker.url(), "--dataset", s(dataset)])
            .args(["--model", s(&common::models().join("cloud-fp32.onnx"))])
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(500)); // subscribed
    w
}

/// Every input is hard (max-prob below 1.01), so every request goes to the cloud.
fn agent(f: &Fixture, broker_url: &str, id: &str, extra: &[&str]) -> Daemon {
    let mut args = vec![
        "--broker",
        broker_url,
        "--device-id",
        id,
        "--trusted-keys",
        s(&f.trusted),
    ];
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
    let w = worker(&broker, &ds);
    let d = agent(&f, &broker.url(), "f1", &["--cloud-deadline-ms", "1500"]);
    std::thread::sleep(Duration::from_millis(500));
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
    std::thread::sleep(Duration::from_millis(500));
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
    let d = Daemon::start(
        &state,
        &[
            "--broker",
            &url,
            "--device-id",
            "f2",
            "--trusted-keys",
            s(&f.trusted),
            "--hardness",
            "max-prob:1.01",
        ],
    );
    assert_eq!(
        d.get_json("/v1/status")["forward"]["outbox"]["pending"],
        n as u64,
        "the outbox survived SIGKILL"
    );
    broker.restart();
    let ds = f.path("dataset");
    let _w = worker(&broker, &ds);
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
    let _wa = worker(&broker, &a);
    let _wb = worker(&broker, &b);
    let d = agent(&f, &broker.url(), "f3", &["--cloud-deadline-ms", "2000"]);
    std::thread::sleep(Duration::from_millis(500));
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
    let d = Daemon::start(
        &state,
        &[
            "--broker",
            &url,
            "--device-id",
            "f5",
            "--trusted-keys",
            s(&f.trusted),
        ],
    );
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
    let d = Daemon::start(
        &state,
        &[
            "--broker",
            &url,
            "--device-id",
            "f5",
            "--trusted-keys",
            s(&f.trusted),
            "--hardness",
            "margin:0.3",
        ],
    );
    let st = d.get_json("/v1/status")["forward"].clone();
    assert_eq!(st["score"], "margin");
    assert!(
        (st["threshold"].as_f64().unwrap() - 0.3).abs() < 1e-6,
        "{st}"
    );
    assert!(d.stop().success());
}
