//! The broker ACL shipped in `deploy/mosquitto/` against a real mosquitto with real client certificates (rcgen): one
//! device cannot publish as another nor read another's topics, and the whole flow (status, commands to a device and
//! to its group, an update served in chunks, a hard case answered by the cloud) still works with the ACL on.

use crate::common;

use crate::common::{outpostctl, s, wait_until, Daemon, Fixture, KillOnDrop, Mosquitto};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const IDENTITIES: [&str; 5] = [
    "acl-a",
    "acl-b",
    "outpost-operator",
    "outpost-cloud",
    "outpost-serve",
];

/// The certificates, and a mosquitto running the shipped config and ACL (plus `extra_acl`, e.g. group blocks) with
/// its paths moved into the temp dir and its listener on a free loopback port.
struct Fleet {
    certs: tempfile::TempDir,
    broker: Mosquitto,
    f: Fixture,
}

impl Fleet {
    fn start(extra_acl: &str) -> Fleet {
        let certs = tempfile::tempdir().unwrap();
        common::make_certs(certs.path(), &IDENTITIES);
        let deploy = common::repo().join("deploy/mosquitto");
        let acl = std::fs::read_to_string(deploy.join("acl")).unwrap() + extra_acl;
        std::fs::write(certs.path().join("acl"), acl).unwrap();
        let shipped = std::fs::read_to_string(deploy.join("outpost.conf")).unwrap();
        let dir = format!("{}/", certs.path().display());
        let broker = Mosquitto::start_with(move |_, port| {
            // Persistence and socket options come from the test harness (its own temp dir).
            shipped
                .lines()
                .filter(|l| {
                    !["persistence", "autosave_interval", "set_tcp_nodelay"]
                        .iter()
                        .any(|k| l.starts_with(k))
                })
                .map(|l| match l {
                    "listener 8883" => format!("listener {port} 127.0.0.1"),
                    l => l.replace("/etc/mosquitto/outpost/", &dir),
                })
                .collect::<Vec<_>>()
                .join("\n")
                + "\n"
        });
        Fleet {
            certs,
            broker,
            f: Fixture::new(),
        }
    }

    fn url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.broker.port)
    }

    fn cert(&self, name: &str) -> PathBuf {
        self.certs.path().join(name)
    }

    /// TLS flags for identity `cn`, as both binaries and the mosquitto clients take them (the clients spell them
    /// `--cert`/`--key`).
    fn tls(&self, cn: &str, c_client: bool) -> Vec<String> {
        let (cert, key) = if c_client {
            ("--cert", "--key")
        } else {
            ("--cert-file", "--key-file")
        };
        let ca = if c_client { "--cafile" } else { "--ca-file" };
        vec![
            ca.into(),
            self.cert("ca.pem").display().to_string(),
            cert.into(),
            self.cert(&format!("{cn}.pem")).display().to_string(),
            key.into(),
            self.cert(&format!("{cn}.key")).display().to_string(),
        ]
    }

    /// An agent as device `id` with its own certificate; every input is hard, and answers from the fixture's cloud key
    /// are believed.
    fn agent(&self, id: &str, group: Option<&str>) -> Daemon {
        let url = self.url();
        let mut args: Vec<String> = [
            &self.f.fleet_args(&url, id)[..],
            &["--hardness", "max-prob:1.01", "--cloud-deadline-ms", "5000"],
        ]
        .concat()
        .iter()
        .map(|x| x.to_string())
        .collect();
        if let Some(g) = group {
            let conf = self.f.path(&format!("{id}.toml"));
            std::fs::write(&conf, format!("[fleet]\ngroup = \"{g}\"\n")).unwrap();
            args.extend(["--config".into(), conf.display().to_string()]);
        }
        args.extend(self.tls(id, false));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Daemon::start(&self.f.path(&format!("state-{id}")), &args)
    }

    /// `outpostctl` as the operator.
    fn operator(&self, args: &[&str]) -> Output {
        let url = self.url();
        let mut a: Vec<String> = args.iter().map(|x| x.to_string()).collect();
        a.extend(["--broker".into(), url]);
        a.extend(self.tls("outpost-operator", false));
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        outpostctl(&a)
    }

    /// `outpostctl <verb> --<to> <target> --key <operator key> <rest>` as the operator.
    fn signed(&self, verb: &str, to: &str, target: &str, rest: &[&str]) -> Output {
        let mut a = vec![verb, to, target, "--key", s(&self.f.key1)];
        a.extend_from_slice(rest);
        self.operator(&a)
    }

    /// Publishes `payload` on `topic` as identity `cn` with mosquitto_pub (MQTT 5, QoS 1). The broker's refusal is
    /// not what the test looks at: what the other side receives is.
    fn publish_as(&self, cn: &str, topic: &str, payload: &str, retain: bool) {
        let mut cmd = Command::new("mosquitto_pub");
        cmd.args(["-V", "mqttv5", "-h", "127.0.0.1", "-q", "1"])
            .args([
                "-p",
                &self.broker.port.to_string(),
                "-t",
                topic,
                "-m",
                payload,
            ])
            .args(self.tls(cn, true));
        if retain {
            cmd.arg("-r");
        }
        let out = cmd.output().expect("mosquitto_pub");
        eprintln!(
            "{cn} -> {topic}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Subscribes as identity `cn` to `filters` for `secs` seconds, printing "topic payload" lines.
    fn subscribe_as(&self, cn: &str, filters: &[&str], secs: u32) -> std::process::Child {
        let mut cmd = Command::new("mosquitto_sub");
        cmd.args(["-V", "mqttv5", "-h", "127.0.0.1", "-v", "-q", "1"])
            .args(["-p", &self.broker.port.to_string(), "-W", &secs.to_string()])
            .args(self.tls(cn, true))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for t in filters {
            cmd.args(["-t", t]);
        }
        cmd.spawn().expect("mosquitto_sub")
    }

    /// Reads the retained status of `device` as the operator.
    fn retained_status(&self, device: &str) -> Option<serde_json::Value> {
        let out = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &self.broker.port.to_string()])
            .args(["-t", &format!("outpost/v1/device/{device}/status")])
            .args(["-C", "1", "-W", "2"])
            .args(self.tls("outpost-operator", true))
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).ok()
    }

    fn wait_online(&self, device: &str) {
        wait_until(
            &format!("{device} is online through the ACL"),
            Duration::from_secs(30),
            || {
                self.retained_status(device)
                    .is_some_and(|v| v["state"] == "online")
            },
        );
    }
}

fn lines(child: std::process::Child) -> Vec<String> {
    let out = child.wait_with_output().unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn image(i: usize) -> Vec<u8> {
    std::fs::read(&common::test_images()[i].0).unwrap()
}

fn acks(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn dataset_lines(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("cases.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_device_cannot_publish_as_another_nor_read_its_topics() {
    let fleet = Fleet::start(
        "\nuser acl-a\ntopic read outpost/v1/group/line-1/cmd\n\nuser acl-b\ntopic read outpost/v1/group/line-2/cmd\n",
    );
    let b = fleet.agent("acl-b", Some("line-2"));
    fleet.wait_online("acl-b");
    let ds = fleet.f.path("dataset");
    let _worker = cloud_worker(&fleet, &ds);

    // Observers with the services' identities (they may read these topics), and device A spying on B.
    let watched = [
        "outpost/v1/device/+/status",
        "outpost/v1/device/+/ack",
        "outpost/v1/rollout/+/status",
        "outpost/v1/trust/+",
    ];
    let op_watch = fleet.subscribe_as("outpost-operator", &watched, 12);
    let serve_watch = fleet.subscribe_as("outpost-serve", &["outpost/v1/bundles/+/get/+"], 12);
    let spy = fleet.subscribe_as(
        "acl-a",
        &[
            "outpost/v1/device/acl-b/#",
            "outpost/v1/device/+/cmd",
            "outpost/v1/device/+/cloud",
            "outpost/v1/device/+/chunk",
            "outpost/v1/device/+/status",
            "outpost/v1/group/line-2/cmd",
            "outpost/v1/cloud/infer/+",
            "outpost/v1/bundles/+/get/+",
        ],
        12,
    );
    std::thread::sleep(Duration::from_millis(800));

    // A publishes in its own name (the controls) and in B's.
    for who in ["acl-a", "acl-b"] {
        fleet.publish_as(
            "acl-a",
            &format!("outpost/v1/device/{who}/status"),
            &format!("{{\"device\":\"{who}\",\"state\":\"from-a\"}}"),
            true,
        );
        fleet.publish_as(
            "acl-a",
            &format!("outpost/v1/device/{who}/ack"),
            "from-a",
            false,
        );
        fleet.publish_as(
            "acl-a",
            &format!("outpost/v1/bundles/{}/get/{who}", "00".repeat(32)),
            "from-a",
            false,
        );
        fleet.publish_as(
            "acl-a",
            &format!("outpost/v1/cloud/infer/{who}"),
            "from-a",
            false,
        );
    }
    // ...and on topics only others may write: B's commands, chunks and cloud answers, a group's commands, a rollout's
    // summary.
    for topic in [
        "outpost/v1/device/acl-b/cmd",
        "outpost/v1/device/acl-b/chunk",
        "outpost/v1/device/acl-b/cloud",
        "outpost/v1/group/line-2/cmd",
        "outpost/v1/rollout/r1/status",
        "outpost/v1/trust/9",
    ] {
        fleet.publish_as("acl-a", topic, "from-a", false);
    }

    // Meanwhile B has real traffic A must not see: a command and its ack, a group command, a hard case and its
    // answer.
    let out = fleet.signed("cmd", "--device", "acl-b", &["status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = fleet.signed("cmd", "--group", "line-2", &["--wait", "3", "status"]);
    assert!(
        acks(&out)
            .iter()
            .any(|a| a["device"] == "acl-b" && a["ok"] == true),
        "B takes its group's commands: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (code, v) = b.infer(&common::http(), &image(0), "image/png");
    assert_eq!(code, 200);
    assert_eq!(v["source"], "cloud", "{v}");

    // The spy's control: what is A's to read reaches it.
    fleet.publish_as(
        "outpost-operator",
        "outpost/v1/device/acl-a/cmd",
        "for-a",
        false,
    );
    let spied = lines(spy);
    let op_seen = lines(op_watch);
    let serve_seen = lines(serve_watch);
    eprintln!("spy: {spied:?}\noperator: {op_seen:?}\nserve: {serve_seen:?}");
    assert!(
        spied
            .iter()
            .all(|l| !l.contains("acl-b") && !l.contains("line-2")),
        "device A read B's traffic: {spied:?}"
    );
    assert!(
        spied.contains(&"outpost/v1/device/acl-a/cmd for-a".to_string()),
        "{spied:?}"
    );
    // The controls: A's publications in its own name arrive...
    assert!(
        op_seen
            .iter()
            .any(|l| l.starts_with("outpost/v1/device/acl-a/status") && l.contains("from-a")),
        "{op_seen:?}"
    );
    assert!(
        op_seen
            .iter()
            .any(|l| l.starts_with("outpost/v1/device/acl-a/ack")),
        "{op_seen:?}"
    );
    assert!(
        serve_seen.iter().any(|l| l.ends_with("/get/acl-a from-a")),
        "{serve_seen:?}"
    );
    // ...and none in B's name, nor on topics only services write.
    assert!(
        op_seen.iter().all(|l| !(l.contains("from-a")
            && (l.contains("acl-b") || l.contains("rollout") || l.contains("trust")))),
        "A published as B: {op_seen:?}"
    );
    assert!(
        op_seen
            .iter()
            .any(|l| l.starts_with("outpost/v1/device/acl-b/ack") && l.contains("\"ok\":true")),
        "the operator sees B's real acks: {op_seen:?}"
    );
    assert!(
        serve_seen.iter().all(|l| !l.contains("acl-b")),
        "{serve_seen:?}"
    );
    assert_eq!(
        fleet.retained_status("acl-b").unwrap()["state"],
        "online",
        "B's retained status is B's own"
    );
    // B got nothing from A: no refused command acknowledged, no answer counted but the cloud's one.
    let answers = b.get_json("/v1/status")["forward"]["answers"].clone();
    assert_eq!(answers, serde_json::json!({"accepted": 1}), "{answers}");
    // The worker stored B's case only: A's case in its own name but claiming B was refused by the worker, and the
    // one on B's topic never reached it.
    let stored = dataset_lines(&ds);
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert!(stored[0].contains("\"device\":\"acl-b\""));
    assert!(b.stop().success());
}

fn cloud_worker(fleet: &Fleet, ds: &Path) -> KillOnDrop {
    let url = fleet.url();
    let tls = fleet.tls("outpost-cloud", false);
    let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
    fleet.f.cloud_worker(&url, ds, &tls)
}

#[test]
fn the_whole_flow_works_with_the_acl_on() {
    let fleet = Fleet::start("\nuser acl-a\ntopic read outpost/v1/group/line-1/cmd\n");
    let a = fleet.agent("acl-a", Some("line-1"));
    fleet.wait_online("acl-a");
    let ds = fleet.f.path("dataset");
    let _worker = cloud_worker(&fleet, &ds);

    // Commands to the device and to its group, acknowledged.
    let out = fleet.signed("cmd", "--device", "acl-a", &["status"]);
    assert!(
        out.status.success() && acks(&out).iter().any(|a| a["ok"] == true),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = fleet.signed(
        "cmd",
        "--group",
        "line-1",
        &["--wait", "3", "set", "hardness.threshold", "1.01"],
    );
    assert!(
        acks(&out)
            .iter()
            .any(|a| a["device"] == "acl-a" && a["ok"] == true),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A hard case answered by the cloud worker, signed, through the ACL.
    let (code, v) = a.infer(&common::http(), &image(0), "image/png");
    assert_eq!(code, 200);
    assert_eq!(v["source"], "cloud", "{v}");

    // An update offered by the operator, its chunks requested by the device and served through the ACL.
    let bundle = fleet
        .f
        .bundle("v2.bundle", "edge-fp32", 2, &[&fleet.f.key1], &[]);
    let out = fleet.signed(
        "publish",
        "--device",
        "acl-a",
        &["--json", "--wait", "60", s(&bundle)],
    );
    let ack = common::final_ack(&out);
    assert_eq!(ack["result"]["installed"]["version"], 2, "{ack}");
    wait_until(
        "the retained status names version 2",
        Duration::from_secs(20),
        || {
            fleet
                .retained_status("acl-a")
                .is_some_and(|v| v["model"]["version"] == 2)
        },
    );
    // A trust rotation published by the operator reaches the device through the ACL.
    let v1 = fleet.f.path("v1.trust");
    let v2 = fleet.f.path("v2.trust");
    let o = outpostctl(&[
        "trust",
        "init",
        "--trusted-keys",
        s(&fleet.f.trusted),
        "--cloud-keys",
        s(&fleet.f.cloud_keys),
        "--out",
        s(&v1),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = outpostctl(&[
        "trust",
        "rotate",
        "--from",
        s(&v1),
        "--threshold",
        "commands=2",
        "--key",
        s(&fleet.f.key1),
        "--out",
        s(&v2),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = fleet.operator(&["trust", "publish", s(&v1), s(&v2)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    wait_until(
        "the device on trust version 2",
        Duration::from_secs(20),
        || {
            fleet
                .retained_status("acl-a")
                .is_some_and(|v| v["trust"]["version"] == 2)
        },
    );
    assert!(a.stop().success());
    assert_eq!(fleet.retained_status("acl-a").unwrap()["state"], "offline");
}
