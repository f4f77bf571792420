//! Trust rotations over a real mosquitto: a simulated fleet of 100 agents (`outpostctl simulate`) takes a rotation
//! that removes a key, after which everything that key signs is refused everywhere with a typed reason; a real
//! daemon that was offline through three rotations walks the chain when it comes back.

use crate::common;

use crate::common::*;
use outpost::wire::status::{Ack, OnlineStatus, Refusal};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

fn ctl(m: &Mosquitto, args: &[&str]) -> Output {
    let mut a: Vec<&str> = args.to_vec();
    let url = m.url();
    a.extend(["--broker", &url]);
    outpostctl(&a)
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Acknowledgements printed by `outpostctl cmd`/`publish --json`, read through the library's type.
fn acks(o: &Output) -> Vec<Ack> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| Ack::from_json(l.as_bytes()).ok())
        .collect()
}

fn trust_version(s: &OnlineStatus) -> Option<u64> {
    s.host.trust.as_ref().and_then(|t| t.version)
}

/// `outpostctl trust rotate --online` with `edits`, signed by `key`, written to `out`.
fn rotate(m: &Mosquitto, edits: &[String], key: &Path, out: &Path) {
    let mut a = vec![
        "trust",
        "rotate",
        "--online",
        "--key",
        s(key),
        "--out",
        s(out),
    ];
    a.extend(edits.iter().map(String::as_str));
    ok(&ctl(m, &a));
}

fn keygen(f: &Fixture, name: &str) -> PathBuf {
    let p = f.path(name);
    ok(&outpostctl(&["keygen", "--out", s(&p)]));
    p
}

fn key_id(p: &Path) -> String {
    outpost::bundle::SigningKeyFile::load(p).unwrap().id()
}

/// Publishes `bundle` to group `sim` with the offer signed by `key`; the acknowledgements collected over `wait_s`.
fn offer(m: &Mosquitto, key: &Path, bundle: &Path, wait_s: u64) -> Vec<Ack> {
    let w = wait_s.to_string();
    acks(&ctl(
        m,
        &[
            "publish",
            "--group",
            "sim",
            "--key",
            s(key),
            "--json",
            "--wait",
            &w,
            s(bundle),
        ],
    ))
}

fn command(m: &Mosquitto, key: &Path, wait_s: u64) -> Vec<Ack> {
    let w = wait_s.to_string();
    acks(&ctl(
        m,
        &[
            "cmd",
            "--group",
            "sim",
            "--key",
            s(key),
            "--wait",
            &w,
            "status",
        ],
    ))
}

#[test]
fn a_rotation_reaches_100_agents_and_what_the_removed_key_signs_is_refused_on_all() {
    const N: usize = 100;
    let m = Mosquitto::start();
    let f = Fixture::new();
    let sim = simulate(&m, &f, N, 50);
    let k3 = keygen(&f, "k3.key");
    let (k1, k2) = (f.key1.clone(), f.key2.clone());

    // Before the rotation key 1 signs a bundle and a command that every agent takes.
    let before = f.bundle("k1-v2.bundle", "edge-fp32", 2, &[&k1], &[]);
    let a = offer(&m, &k1, &before, 45);
    assert_eq!(a.iter().filter(|a| a.ok).count(), N, "{a:?}");
    let a = command(&m, &k1, 10);
    assert_eq!(a.iter().filter(|a| a.ok).count(), N, "{a:?}");
    let st = online_statuses(&m, N);
    assert!(
        st.values().all(|s| trust_version(s) == Some(1)),
        "every agent on version 1"
    );

    // Version 1 as the devices derived it, published as the chain's base; version 2 removes key 1 everywhere and
    // adds key 3 for bundles, signed by key 2 (a root key of version 1 and the root of version 2).
    publish_v1(&m, &f, false);
    let v2 = f.path("v2.trust");
    let id1 = key_id(&k1);
    let edits = [
        format!("--remove=root={id1}"),
        format!("--remove=bundles={id1}"),
        format!("--remove=commands={id1}"),
        format!("--add=bundles={}", s(&k3)),
    ];
    rotate(&m, &edits, &k2, &v2);
    let published = Instant::now();
    ok(&ctl(&m, &["trust", "publish", s(&v2)]));
    let mut seen = 0;
    wait_until(
        "every agent on trust version 2",
        Duration::from_secs(60),
        || {
            seen = online_statuses(&m, N)
                .values()
                .filter(|s| trust_version(s) == Some(2))
                .count();
            seen == N
        },
    );
    let took = published.elapsed();
    eprintln!(
        "{N} agents rotated to trust version 2 in {:.2} s",
        took.as_secs_f64()
    );

    // Key 1's command and bundle are refused on every agent, with the typed reason.
    let a = command(&m, &k1, 10);
    assert_eq!(a.len(), N, "{a:?}");
    assert!(
        a.iter()
            .all(|a| !a.ok && a.refusal == Some(Refusal::KeyNotTrusted)),
        "{a:?}"
    );
    let after_k1 = f.bundle("k1-v3.bundle", "edge-fp32", 3, &[&k1], &[]);
    let a = offer(&m, &k2, &after_k1, 15);
    assert_eq!(a.len(), N, "{a:?}");
    assert!(
        a.iter()
            .all(|a| !a.ok && a.refusal == Some(Refusal::KeyNotTrusted)),
        "{a:?}"
    );
    // Key 2's command and key 3's bundle are taken.
    let a = command(&m, &k2, 10);
    assert_eq!(a.iter().filter(|a| a.ok).count(), N, "{a:?}");
    let new = f.bundle("k3-v4.bundle", "edge-fp32", 4, &[&k3], &[]);
    let a = offer(&m, &k2, &new, 45);
    assert_eq!(a.iter().filter(|a| a.ok).count(), N, "{a:?}");
    let st = online_statuses(&m, N);
    assert!(st
        .values()
        .all(|s| s.service.model.version == 4 && trust_version(s) == Some(2)));
    let report = sim.stop();
    assert_eq!(report.len(), N);
}

#[test]
fn an_agent_offline_through_three_rotations_walks_the_chain_then_takes_the_newest_bundle() {
    let m = Mosquitto::start();
    let f = Fixture::new();
    let state = f.path("state");
    let url = m.url();
    let mut args = f.fleet_args(&url, "away");
    args.extend(["--group", "sim"]);
    let d = Daemon::start(&state, &args);
    assert_eq!(local(&d).host.trust.unwrap().version, Some(1));
    assert!(d.stop().success());

    // Three rotations while it is away, each moving bundles to a new key (signed by key 2, the root throughout).
    let mut bundle_key = f.key1.clone();
    for v in 2..=4 {
        let next = keygen(&f, &format!("bundles-{v}.key"));
        let edits = [
            format!("--remove=bundles={}", key_id(&bundle_key)),
            format!("--add=bundles={}", s(&next)),
        ];
        rotate_published(&m, &f, &edits, &format!("v{v}.trust"));
        bundle_key = next;
    }
    let d = Daemon::start(&state, &args);
    wait_until(
        "the chain walked to version 4",
        Duration::from_secs(30),
        || local(&d).host.trust.and_then(|t| t.version) == Some(4),
    );
    // /metrics and `outpostctl watch` show the version and the root.
    assert!(
        d.metrics().contains("outpost_trust_version 4"),
        "{}",
        d.metrics()
    );
    let root = local(&d).host.trust.unwrap().root_keys.join(",");
    let watch = ok(&ctl(&m, &["watch", "--for", "2"]));
    assert!(watch.contains(&format!("v4 root {root}")), "{watch}");
    // The bundle signed by version 4's key, offered under version 4, is taken.
    let b = f.bundle("v2.bundle", "edge-fp32", 2, &[&bundle_key], &[]);
    let out = ctl(
        &m,
        &[
            "publish",
            "--device",
            "away",
            "--key",
            s(&f.key2),
            "--json",
            "--wait",
            "60",
            s(&b),
        ],
    );
    let a = acks(&out);
    assert!(a.last().is_some_and(|a| a.ok), "{a:?}");
    // The daemon's controller swaps the model in after the install.
    wait_until("version 2 serving", Duration::from_secs(30), || {
        local(&d).service.model.version == 2
    });
    assert!(d.stop().success());
}

fn local(d: &Daemon) -> outpost::wire::status::LocalStatus {
    serde_json::from_value(d.get_json("/v1/status")).unwrap()
}

/// Publishes version 1 as an agent derives it from the fixture's files (with its cloud keys when `cloud`), once.
fn publish_v1(m: &Mosquitto, f: &Fixture, cloud: bool) {
    let v1 = f.path("v1.trust");
    if v1.exists() {
        return;
    }
    let mut args = vec![
        "trust",
        "init",
        "--trusted-keys",
        s(&f.trusted),
        "--out",
        s(&v1),
    ];
    if cloud {
        args.extend(["--cloud-keys", s(&f.cloud_keys)]);
    }
    ok(&outpostctl(&args));
    ok(&ctl(m, &["trust", "publish", s(&v1)]));
}

/// Publishes version 1 (as agents with the fixture's fleet flags derive it) and a rotation `edits` signed by key 2.
fn rotate_published(m: &Mosquitto, f: &Fixture, edits: &[String], out: &str) {
    publish_v1(m, f, true);
    let path = f.path(out);
    rotate(m, edits, &f.key2, &path);
    ok(&ctl(m, &["trust", "publish", s(&path)]));
}

#[test]
fn a_rollback_to_a_release_whose_signer_was_removed_is_refused_while_the_live_one_serves() {
    let m = Mosquitto::start();
    let f = Fixture::new();
    let url = m.url();
    let d = Daemon::start(&f.path("state"), &f.fleet_args(&url, "rb"));
    let send = |args: &[&str]| ctl(&m, args);
    // Version 2 signed by key 2, then version 3 signed by key 1, each promoted.
    for (v, key) in [(2, &f.key2), (3, &f.key1)] {
        let b = f.bundle(&format!("v{v}.bundle"), "edge-fp32", v, &[key], &[]);
        let a = acks(&send(&[
            "publish",
            "--device",
            "rb",
            "--key",
            s(&f.key1),
            "--json",
            "--wait",
            "60",
            s(&b),
        ]));
        assert!(a.last().is_some_and(|a| a.ok), "{a:?}");
        let a = acks(&send(&[
            "cmd",
            "--device",
            "rb",
            "--key",
            s(&f.key1),
            "promote",
        ]));
        assert!(a.last().is_some_and(|a| a.ok), "{a:?}");
    }
    wait_until("version 3 live", Duration::from_secs(30), || {
        local(&d).service.model.version == 3
    });
    // Key 2 leaves the bundles role: version 2, its only signer gone, cannot come back.
    rotate_published(
        &m,
        &f,
        &[format!("--remove=bundles={}", key_id(&f.key2))],
        "v2.trust",
    );
    wait_until("trust version 2", Duration::from_secs(20), || {
        local(&d).host.trust.and_then(|t| t.version) == Some(2)
    });
    let a = acks(&send(&[
        "cmd",
        "--device",
        "rb",
        "--key",
        s(&f.key1),
        "rollback",
    ]));
    let last = a.last().expect("an acknowledgement");
    assert!(!last.ok, "{a:?}");
    assert!(
        last.error
            .as_deref()
            .is_some_and(|e| e.contains("cannot be made live again")),
        "{a:?}"
    );
    let st = local(&d);
    assert_eq!(st.service.model.version, 3, "the live release is untouched");
    assert!(st.host.trust.unwrap().unsigned_live.is_empty());
    let (code, _) = d.infer(
        &common::http(),
        &std::fs::read(&common::test_images()[0].0).unwrap(),
        "image/png",
    );
    assert_eq!(code, 200);
    // Key 1 leaves too (key 3 signs from now on): the live release keeps serving, flagged in the status.
    let k3 = keygen(&f, "k3.key");
    rotate_published(
        &m,
        &f,
        &[
            format!("--remove=bundles={}", key_id(&f.key1)),
            format!("--add=bundles={}", s(&k3)),
        ],
        "v3.trust",
    );
    wait_until("the live release flagged", Duration::from_secs(20), || {
        local(&d)
            .host
            .trust
            .is_some_and(|t| t.unsigned_live == vec!["edge-int8".to_string()])
    });
    let (code, _) = d.infer(
        &common::http(),
        &std::fs::read(&common::test_images()[1].0).unwrap(),
        "image/png",
    );
    assert_eq!(code, 200, "a flagged live release keeps serving");
    assert!(d.stop().success());
}

#[test]
fn a_worker_key_removed_from_the_cloud_role_is_refused_counted_and_a_current_worker_answers_the_case(
) {
    let m = Mosquitto::start();
    let f = Fixture::new();
    let url = m.url();
    let mut args = f.fleet_args(&url, "cw");
    args.extend(["--hardness", "max-prob:1.01", "--cloud-deadline-ms", "200"]);
    let d = Daemon::start(&f.path("state"), &args);
    let image = |i: usize| std::fs::read(&common::test_images()[i].0).unwrap();
    let infer = |i: usize| {
        let (code, v) = d.infer(&common::http(), &image(i), "image/png");
        assert_eq!(code, 200, "{v}");
        v
    };
    let forward = || local(&d).service.forward.expect("forwarding is on");
    // The worker with the key of version 1 answers.
    let old = f.cloud_worker(&url, &f.path("ds-old"), &[]);
    infer(0);
    wait_until(
        "the old worker's answer accepted",
        Duration::from_secs(20),
        || forward().answers.get("accepted") == Some(&1),
    );
    // Version 2 replaces the worker key.
    let new_key = keygen(&f, "cloud2.key");
    let old_id = {
        let line = std::fs::read_to_string(&f.cloud_keys).unwrap();
        outpost::bundle::TrustedKeys::parse(&line)
            .unwrap()
            .entries()[0]
            .0
            .clone()
    };
    rotate_published(
        &m,
        &f,
        &[
            format!("--remove=cloud={old_id}"),
            format!("--add=cloud={}", s(&new_key)),
        ],
        "v2.trust",
    );
    wait_until("trust version 2", Duration::from_secs(20), || {
        local(&d).host.trust.and_then(|t| t.version) == Some(2)
    });
    // The old worker's answer to a new case is refused and counted; the case stays queued.
    infer(1);
    wait_until(
        "the removed key's answer counted",
        Duration::from_secs(20),
        || forward().answers.get("unknown_key") == Some(&1),
    );
    assert_eq!(forward().outbox.pending, 1, "the case stays queued");
    assert!(d
        .metrics()
        .contains("outpost_cloud_answers_total{result=\"unknown_key\"} 1"));
    drop(old);
    // A worker with the current key answers it (the outbox resends).
    let _new = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_outpostctl"))
            .args(["cloud", "--broker", &url, "--dataset", s(&f.path("ds-new"))])
            .args(["--model", s(&common::models().join("cloud-fp32.onnx"))])
            .args(["--key", s(&new_key)])
            .spawn()
            .unwrap(),
    );
    wait_until(
        "the case answered by the current worker",
        Duration::from_secs(60),
        || {
            let fw = forward();
            fw.answers.get("accepted") == Some(&2) && fw.outbox.pending == 0
        },
    );
    assert!(d.stop().success());
}

/// The retained message on `topic` (empty when there is none), read with mosquitto_sub.
fn retained_payload(m: &Mosquitto, topic: &str) -> Vec<u8> {
    let out = std::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &m.port.to_string()])
        .args(["-t", topic, "-C", "1", "-W", "2", "-N", "--retained-only"])
        .output()
        .unwrap();
    out.stdout
}

#[test]
fn publishing_a_rotation_re_signs_or_clears_the_retained_commands_it_would_refuse() {
    use outpost::bundle::{SigningKeyFile, TrustedKeys};
    use outpost::wire::command::{self, Action, CommandBody, Target};
    let m = Mosquitto::start();
    let f = Fixture::new();
    let (k1, k2) = (
        SigningKeyFile::load(&f.key1).unwrap(),
        SigningKeyFile::load(&f.key2).unwrap(),
    );
    // Retained group commands, as a rollout's abandon is left: one signed by key 1, one by key 2.
    let now = outpost::bundle::now_unix();
    let body = |group: &str| CommandBody {
        target: Target::Group(group.into()),
        seq: now * 1000,
        issued_unix: now,
        expires_unix: now + 3600,
        action: Action::Status,
        model: None,
    };
    let (t1, t2) = ("outpost/v1/group/g1/cmd", "outpost/v1/group/g2/cmd");
    let by_k1 = command::sign(&body("g1"), &[&k1]);
    let by_k2 = command::sign(&body("g2"), &[&k2]);
    for (topic, bytes) in [(t1, &by_k1), (t2, &by_k2)] {
        common::raw_publish_retained(&m, topic, bytes, f.dir.path());
    }
    assert_eq!(retained_payload(&m, t1), by_k1);
    // Version 2 removes key 1 from commands; key 2 re-signs what key 1 signed, body byte for byte.
    publish_v1(&m, &f, false);
    let v2 = f.path("v2.trust");
    rotate(
        &m,
        &[format!("--remove=commands={}", k1.id())],
        &f.key2,
        &v2,
    );
    let out = ok(&ctl(
        &m,
        &["trust", "publish", "--resign-key", s(&f.key2), s(&v2)],
    ));
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["published_version"], 2);
    assert_eq!(
        report["retained_commands"],
        serde_json::json!([{"topic": t1, "action": "resigned"}]),
        "only key 1's command needed it: {report}"
    );
    let now_t1 = retained_payload(&m, t1);
    let only_k2 = TrustedKeys::parse(&k2.trusted_line("k2")).unwrap();
    assert!(command::signed_enough(&now_t1, &only_k2, 1).unwrap());
    assert_eq!(
        command::decode(&now_t1).unwrap().0.body,
        command::decode(&by_k1).unwrap().0.body
    );
    assert_eq!(
        retained_payload(&m, t2),
        by_k2,
        "key 2's command was left alone"
    );
    // Version 3 moves commands to key 3 with no key to re-sign: both retained commands are cleared.
    let k3 = keygen(&f, "k3.key");
    let v3 = f.path("v3.trust");
    let edits = [
        format!("--add=commands={}", s(&k3)),
        format!("--remove=commands={}", k2.id()),
    ];
    rotate(&m, &edits, &f.key2, &v3);
    let out = ok(&ctl(&m, &["trust", "publish", s(&v3)]));
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        report["retained_commands"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );
    assert!(retained_payload(&m, t1).is_empty() && retained_payload(&m, t2).is_empty());
}
