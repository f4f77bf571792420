//! The fleet link against a real mosquitto: updates end to end, resumption across a broker restart and an agent
//! SIGKILL, signed commands and their refusals, the last will, and mutual TLS.

use crate::common;

use crate::common::KillOnDrop;

use crate::common::{outpostctl, s, wait_until, Daemon, Fixture, Mosquitto};
use outpost::bundle::SigningKeyFile;
use outpost::wire::command::{self, Action, CommandBody, Target};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn digest_of(model: &str) -> String {
    outpost::inference::digest_hex(
        &std::fs::read(common::models().join(format!("{model}.onnx"))).unwrap(),
    )
}

/// An agent on the broker as device `id`, with the fixture's trusted keys and an optional config file body.
fn agent(f: &Fixture, broker: &Mosquitto, id: &str, config: &str) -> Daemon {
    let state = f.path(&format!("state-{id}"));
    let conf = f.path(&format!("{id}.toml"));
    std::fs::write(&conf, config).unwrap();
    Daemon::start(
        &state,
        &[
            "--config",
            s(&conf),
            "--broker",
            &broker.url(),
            "--device-id",
            id,
            "--trusted-keys",
            s(&f.trusted),
        ],
    )
}

/// [`agent`] started again on the state and config file of its first start (after a SIGKILL).
fn agent_again(f: &Fixture, url: &str, state: &Path, id: &str) -> Daemon {
    Daemon::start(
        state,
        &[
            "--config",
            s(&f.path(&format!("{id}.toml"))),
            "--broker",
            url,
            "--device-id",
            id,
            "--trusted-keys",
            s(&f.trusted),
        ],
    )
}

fn wait_online(broker: &Mosquitto, id: &str) -> serde_json::Value {
    let topic = format!("outpost/v1/device/{id}/status");
    let mut last = None;
    wait_until(
        "the agent's retained status says online",
        Duration::from_secs(20),
        || {
            last = broker.retained(&topic, 2);
            last.as_ref().is_some_and(|v| v["state"] == "online")
        },
    );
    last.unwrap()
}

fn ctl(broker: &Mosquitto, args: &[&str]) -> Output {
    let mut a = args.to_vec();
    let url = broker.url();
    a.extend_from_slice(&["--broker", &url]);
    outpostctl(&a)
}

fn cmd(
    f: &Fixture,
    broker: &Mosquitto,
    device: &str,
    extra: &[&str],
) -> (bool, Vec<serde_json::Value>, String) {
    let mut a = vec!["cmd", "--device", device, "--key", s(&f.key1)];
    a.extend_from_slice(extra);
    let out = ctl(broker, &a);
    let acks = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (
        out.status.success(),
        acks,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A big bundle: MobileNetV2 fp32 (14 MB) with its own spec.
fn big_bundle(f: &Fixture, version: u64) -> PathBuf {
    f.bundle_with_spec(
        &format!("mnv2-{version}.bundle"),
        "mobilenetv2-fp32",
        "mobilenetv2-fp32",
        version,
        &[&f.key1],
        &[],
    )
}

#[test]
fn publish_installs_a_big_bundle_and_the_retained_status_reports_it() {
    let broker = Mosquitto::start();
    let f = Fixture::new();
    let daemon = agent(&f, &broker, "d1", "");
    wait_online(&broker, "d1");
    let b = big_bundle(&f, 2);
    assert!(std::fs::metadata(&b).unwrap().len() > 5_000_000);
    let out = ctl(
        &broker,
        &[
            "publish",
            "--device",
            "d1",
            "--key",
            s(&f.key1),
            "--json",
            "--wait",
            "120",
            s(&b),
        ],
    );
    let ack = common::final_ack(&out);
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(ack["result"]["installed"]["version"], 2);
    let mnv2 = digest_of("mobilenetv2-fp32");
    wait_until(
        "the retained status names the new model",
        Duration::from_secs(30),
        || {
            broker
                .retained("outpost/v1/device/d1/status", 2)
                .is_some_and(|v| {
                    v["model"]["digest"] == mnv2.as_str() && v["model"]["version"] == 2
                })
        },
    );
    assert_eq!(
        daemon.get_json("/v1/status")["model"]["digest"],
        mnv2.as_str()
    );
    // The same offer again: the device answers for itself ("already"), the status showing that version live does
    // not stand in for its acknowledgement.
    let again = ctl(
        &broker,
        &[
            "publish",
            "--device",
            "d1",
            "--key",
            s(&f.key1),
            "--json",
            "--wait",
            "30",
            s(&b),
        ],
    );
    let ack = common::final_ack(&again);
    assert_eq!(ack["result"]["already"], "live", "{ack}");
    assert!(ack["result"]["seen_in"].is_null(), "{ack}");
    assert!(daemon.stop().success());
    let last = broker.retained("outpost/v1/device/d1/status", 2).unwrap();
    assert_eq!(
        last["state"], "offline",
        "a clean stop says offline: {last}"
    );
}

fn download(daemon: &Daemon) -> serde_json::Value {
    daemon.get_json("/v1/status")["download"].clone()
}

#[test]
fn a_transfer_survives_a_broker_restart_and_resumes_after_an_agent_sigkill() {
    let mut broker = Mosquitto::start();
    let f = Fixture::new();
    // Download speed capped, so the transfer lasts long enough to interrupt twice.
    let config = "[fleet]\nwindow = 4\nchunk_timeout_ms = 500\nmax_download_bytes_per_s = 400000\n";
    let daemon = agent(&f, &broker, "d2", config);
    wait_online(&broker, "d2");
    let b = f.bundle_with_spec(
        "cloud.bundle",
        "cloud-fp32",
        "cloud-fp32",
        2,
        &[&f.key1],
        &[],
    );
    let total = std::fs::metadata(&b).unwrap().len().div_ceil(4096);
    let url = broker.url();
    let mut serve = Command::new(env!("CARGO_BIN_EXE_outpostctl"));
    serve.args(["serve", "--broker", &url, "--chunk-size", "4096", s(&b)]);
    let _serve = common::spawn_ready(serve, "bundle server ready");
    // The publisher only sends the offer here; the device carries on by itself.
    let _publisher = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_outpostctl"))
            .args([
                "publish",
                "--device",
                "d2",
                "--key",
                s(&f.key1),
                "--json",
                "--no-serve",
            ])
            .args([
                "--chunk-size",
                "4096",
                "--wait",
                "60",
                "--broker",
                &url,
                s(&b),
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let done = |d: &Daemon| download(d)["chunks_done"].as_u64().unwrap_or(0);
    wait_until(
        "a fifth of the chunks arrived",
        Duration::from_secs(60),
        || done(&daemon) >= total / 5,
    );

    broker.kill();
    let at_kill = done(&daemon);
    // The broker is gone for as long as the agent takes to notice: its status says the link is down.
    wait_until(
        "the agent sees the broker gone",
        Duration::from_secs(60),
        || {
            daemon
                .local_status()
                .host
                .link
                .is_some_and(|l| !l.connected)
        },
    );
    broker.restart();
    wait_until(
        "the transfer moves on after the broker restart",
        Duration::from_secs(60),
        || done(&daemon) >= at_kill + total / 5,
    );

    // SIGKILL the agent mid-transfer, then start it again on the same state.
    let state = daemon.state_dir.clone();
    let before_kill = download(&daemon)["chunks_synced"].as_u64().unwrap_or(0);
    drop(daemon); // SIGKILL
    let daemon = agent_again(&f, &url, &state, "d2");
    let mnv2 = digest_of("cloud-fp32");
    wait_until(
        "the resumed transfer installs the model",
        Duration::from_secs(120),
        || daemon.get_json("/v1/status")["model"]["digest"] == mnv2.as_str(),
    );
    let t = daemon.get_json("/v1/status")["last_transfer"].clone();
    let (resumed, fetched) = (
        t["resumed_from"].as_u64().unwrap(),
        t["fetched"].as_u64().unwrap(),
    );
    eprintln!("transfer of {total} chunks: killed at {before_kill}, resumed from {resumed}, fetched {fetched} after the restart");
    assert_eq!(t["chunks_total"], total);
    assert!(
        resumed >= before_kill,
        "progress recorded before the kill is kept: {t}"
    );
    assert_eq!(
        resumed + fetched,
        total,
        "nothing fetched twice after the restart: {t}"
    );
    assert!(daemon.stop().success());
}

#[test]
fn commands_are_verified_refusals_are_reported_and_rollback_works() {
    let broker = Mosquitto::start();
    let f = Fixture::new();
    let daemon = agent(&f, &broker, "d3", "");
    wait_online(&broker, "d3");
    let builtin = daemon.get_json("/v1/status")["model"]["digest"].clone();

    // status: acknowledged with the status.
    let (ok, acks, err) = cmd(&f, &broker, "d3", &["status"]);
    assert!(ok, "{err}");
    assert_eq!(acks[0]["ok"], true);
    assert_eq!(acks[0]["result"]["device"], "d3");

    // Replayed: the same sequence number twice.
    let (ok, _, err) = cmd(&f, &broker, "d3", &["--seq", "42", "status"]);
    assert!(!ok && err.contains("not above"), "{err}");
    let (ok, _, err) = cmd(&f, &broker, "d3", &["--seq", "99999999999999", "status"]);
    assert!(ok, "{err}");
    let (ok, acks, err) = cmd(&f, &broker, "d3", &["--seq", "99999999999999", "status"]);
    assert!(!ok && err.contains("replayed"), "{err} {acks:?}");

    // Expired.
    let (ok, _, err) = cmd(
        &f,
        &broker,
        "d3",
        &["--expires-in", "0", "--seq", "99999999999999999", "status"],
    );
    assert!(!ok && err.contains("expired"), "{err}");

    // Unknown key (not in the trusted list).
    let stranger = f.path("stranger.key");
    assert!(outpostctl(&["keygen", "--out", s(&stranger)])
        .status
        .success());
    let out = ctl(
        &broker,
        &["cmd", "--device", "d3", "--key", s(&stranger), "status"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("signature"), "{err}");

    // Mis-targeted: signed for d9, delivered on d3's topic.
    let key = SigningKeyFile::load(&f.key1).unwrap();
    let now = outpost::bundle::now_unix();
    let body = |target: Target, seq: u64| CommandBody {
        target,
        seq,
        issued_unix: now,
        expires_unix: now + 60,
        action: Action::Status,
        model: None,
    };
    let bytes = command::sign(&body(Target::Device("d9".into()), u64::MAX - 10), &[&key]);
    let ack = common::next_ack(&broker, "d3", || {
        common::raw_publish(&broker, "outpost/v1/device/d3/cmd", &bytes, f.dir.path())
    });
    assert!(!ack.ok);
    assert!(
        ack.error.as_deref().unwrap().contains("device d9"),
        "{ack:?}"
    );

    // Tampered: one flipped byte in a signed command.
    let mut bytes = command::sign(&body(Target::Device("d3".into()), u64::MAX - 9), &[&key]);
    let n = bytes.len();
    bytes[n / 3] ^= 0x01;
    let ack = common::next_ack(&broker, "d3", || {
        common::raw_publish(&broker, "outpost/v1/device/d3/cmd", &bytes, f.dir.path())
    });
    assert!(!ack.ok, "{ack:?}");

    // Garbage and an oversized message: refused, the link lives on.
    let ack = common::next_ack(&broker, "d3", || {
        common::raw_publish(
            &broker,
            "outpost/v1/device/d3/cmd",
            b"\xff\xfe not a command",
            f.dir.path(),
        )
    });
    assert!(!ack.ok, "{ack:?}");
    let big = vec![7u8; 2 * 1024 * 1024];
    let ack = common::next_ack(&broker, "d3", || {
        common::raw_publish(&broker, "outpost/v1/device/d3/cmd", &big, f.dir.path())
    });
    assert!(!ack.ok, "{ack:?}");

    // set: whitelisted keys only.
    let (ok, _, err) = cmd(
        &f,
        &broker,
        "d3",
        &[
            "--seq",
            &(u64::MAX - 8).to_string(),
            "set",
            "api.listen",
            "0.0.0.0:80",
        ],
    );
    assert!(!ok && err.contains("cannot be set remotely"), "{err}");

    // A valid rollback after a local install: acknowledged, and the agent serves the old model again.
    let b = f.bundle("v2.bundle", "edge-fp32", 2, &[&f.key1], &[]);
    assert!(f.install(&daemon.state_dir, &b, &[]).status.success());
    let fp32 = digest_of("edge-fp32");
    wait_until("the agent serves v2", Duration::from_secs(10), || {
        daemon.get_json("/v1/status")["model"]["digest"] == fp32.as_str()
    });
    // The sequence numbers above used u64::MAX - 9: the next default (Unix ms) would be refused, so go higher.
    let (ok, acks, err) = cmd(
        &f,
        &broker,
        "d3",
        &["--seq", &(u64::MAX - 5).to_string(), "rollback"],
    );
    assert!(ok, "{err} {acks:?}");
    wait_until(
        "the agent serves the built-in model again",
        Duration::from_secs(10),
        || daemon.get_json("/v1/status")["model"]["digest"] == builtin,
    );
    let (ok, acks, err) = cmd(
        &f,
        &broker,
        "d3",
        &["--seq", &(u64::MAX - 4).to_string(), "purge-cache"],
    );
    assert!(ok && acks[0]["result"]["purged"].is_u64(), "{err}");
    let (ok, _, err) = cmd(
        &f,
        &broker,
        "d3",
        &[
            "--seq",
            &(u64::MAX - 3).to_string(),
            "set",
            "hardness.threshold",
            "0.8",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(
        daemon.get_json("/v1/status")["settings"]["hardness.threshold"],
        "0.8"
    );
    assert!(daemon.stop().success());
}

#[test]
fn the_last_will_says_offline_after_a_sigkill() {
    let broker = Mosquitto::start();
    let f = Fixture::new();
    let daemon = agent(
        &f,
        &broker,
        "d4",
        "[fleet]\nkeep_alive_s = 5\ngroup = \"g1\"\n",
    );
    wait_online(&broker, "d4");
    // A group command reaches the device; the operator collects the acknowledgements for --wait seconds.
    let out = ctl(
        &broker,
        &[
            "cmd",
            "--group",
            "g1",
            "--key",
            s(&f.key1),
            "--wait",
            "3",
            "status",
        ],
    );
    let acks = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        acks.contains("\"device\":\"d4\"") && acks.contains("\"ok\":true"),
        "{acks}"
    );
    // `watch --json` prints the fleet's retained status.
    let out = ctl(&broker, &["watch", "--json", "--for", "2"]);
    let seen = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success());
    let line: serde_json::Value =
        serde_json::from_str(seen.lines().next().unwrap_or("null")).unwrap();
    assert_eq!(
        (line["device"].as_str(), line["state"].as_str()),
        (Some("d4"), Some("online")),
        "{seen}"
    );
    let killed = std::time::Instant::now();
    drop(daemon); // SIGKILL
    wait_until(
        "the retained status says offline",
        Duration::from_secs(8),
        || {
            broker
                .retained("outpost/v1/device/d4/status", 1)
                .is_some_and(|v| v["state"] == "offline")
        },
    );
    eprintln!(
        "offline seen {} ms after SIGKILL",
        killed.elapsed().as_millis()
    );
}

#[test]
fn mutual_tls_connects_with_a_client_certificate_and_fails_clearly_without() {
    let certs = tempfile::tempdir().unwrap();
    common::make_certs(certs.path(), &["d5"]);
    let c = certs.path().to_path_buf();
    let broker = Mosquitto::start_with(move |_, port| {
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\ncafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\nrequire_certificate true\nuse_identity_as_username true\n",
            c.display()
        )
    });
    let f = Fixture::new();
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    let p = |n: &str| certs.path().join(n).display().to_string();
    let state = f.path("state-d5");
    let daemon = Daemon::start(
        &state,
        &[
            "--broker",
            &url,
            "--device-id",
            "d5",
            "--trusted-keys",
            s(&f.trusted),
            "--ca-file",
            &p("ca.pem"),
            "--cert-file",
            &p("d5.pem"),
            "--key-file",
            &p("d5.key"),
        ],
    );
    // Read the retained status over TLS with the C client and the same client certificate.
    let read = || {
        let out = Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &broker.port.to_string(),
                "-t",
                "outpost/v1/device/d5/status",
            ])
            .args([
                "--cafile",
                &p("ca.pem"),
                "--cert",
                &p("d5.pem"),
                "--key",
                &p("d5.key"),
            ])
            .args(["-C", "1", "-W", "2"])
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).ok()
    };
    wait_until(
        "the agent is online over mutual TLS",
        Duration::from_secs(20),
        || read().is_some_and(|v| v["state"] == "online"),
    );
    assert!(daemon.stop().success());

    // Without a client certificate: the agent keeps serving locally and says why the link is down (waited for in its
    // log, then the agent is killed).
    let mut agent = Command::new(env!("CARGO_BIN_EXE_outpost"));
    agent
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            s(&f.path("state-d6")),
        ])
        .args([
            "--broker",
            &url,
            "--device-id",
            "d6",
            "--ca-file",
            &p("ca.pem"),
        ]);
    drop(common::spawn_ready(agent, "cannot connect to the broker"));
}

/// A device fetches one bundle at a time: an offer for another model while a download runs waits in a queue kept in
/// the device's store (acknowledged `queued behind the download of ...`), and survives a SIGKILL: after the restart the
/// running download resumes, and then the queued one is fetched and installed, neither replacing the other.
#[test]
fn another_models_offer_waits_behind_the_running_download_across_a_sigkill() {
    let broker = Mosquitto::start();
    let f = Fixture::new();
    let config = "[fleet]\nwindow = 4\nchunk_timeout_ms = 500\nmax_download_bytes_per_s = 300000\n";
    let daemon = agent(&f, &broker, "d6", config);
    wait_online(&broker, "d6");
    // The default model's release 2 (1.7 MB: ~6 s at the cap) and a first release of a second model.
    let first = f.bundle_with_spec(
        "cloud.bundle",
        "cloud-fp32",
        "cloud-fp32",
        2,
        &[&f.key1],
        &[],
    );
    let second = f.named_bundle("digits.bundle", "edge-fp32", "digits", 1);
    let url = broker.url();
    let mut serve = Command::new(env!("CARGO_BIN_EXE_outpostctl"));
    serve
        .args(["serve", "--broker", &url, "--chunk-size", "4096"])
        .args([s(&first), s(&second)]);
    let _serve = common::spawn_ready(serve, "bundle server ready");
    let publish = |bundle: &Path, out: &Path| {
        KillOnDrop(
            Command::new(env!("CARGO_BIN_EXE_outpostctl"))
                .args(["publish", "--device", "d6", "--key", s(&f.key1), "--json"])
                .args(["--no-serve", "--chunk-size", "4096", "--wait", "90"])
                .args(["--broker", &url, s(bundle)])
                .stdout(std::fs::File::create(out).unwrap())
                .spawn()
                .unwrap(),
        )
    };
    let _p1 = publish(&first, &f.path("p1.jsonl"));
    wait_until("the first download runs", Duration::from_secs(30), || {
        download(&daemon)["chunks_done"].as_u64().unwrap_or(0) > 10
    });
    let acks2 = f.path("p2.jsonl");
    let _p2 = publish(&second, &acks2);
    wait_until(
        "the second offer is queued",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(&acks2)
                .unwrap_or_default()
                .contains("queued behind the download of edge-int8")
        },
    );

    // SIGKILL mid-download, with the second offer waiting.
    let state = daemon.state_dir.clone();
    drop(daemon);
    let daemon = agent_again(&f, &url, &state, "d6");
    let cloud = digest_of("cloud-fp32");
    wait_until(
        "the resumed download installs the default model's release, then the queued one installs",
        Duration::from_secs(120),
        || {
            let st = daemon.get_json("/v1/status");
            st["model"]["digest"] == cloud.as_str()
                && st["models"]["digits"]["model"]["version"] == 1
        },
    );
    let st = daemon.get_json("/v1/status");
    assert_eq!(st["model"]["version"], 2, "{st}");
    assert!(
        st["last_transfer"]["chunks_total"].as_u64().unwrap() > 0,
        "{st}"
    );
    assert!(daemon.stop().success());
}
