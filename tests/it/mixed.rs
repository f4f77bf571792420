//! Commands per model and a mixed fleet (issue 18, items 1, 4 and 7): commands that name a model act on that model
//! alone (version-2 commands, signed under their own tag), `remove` leaves a tombstone whose version floor an old
//! bundle cannot pass, and the commands an operator tool from before the model repository sent (captured in
//! `tests/fixtures/v0/messages`, made by commit e70c3cc) still drive this agent's default model, an update included.

use crate::common;

use crate::common::{
    next_ack, outpost, outpostctl, raw_publish, s, wait_until, Daemon, Fixture, Mosquitto,
};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn v0() -> PathBuf {
    common::repo().join("tests/fixtures/v0")
}

#[test]
fn commands_act_on_the_model_they_name_and_remove_leaves_a_tombstone() {
    let broker = Mosquitto::start();
    let url = broker.url();
    let f = Fixture::new();
    let state = f.path("state");
    let mut args = f.fleet_args(&url, "m1");
    args.extend(["--group", "g"]);
    let daemon = Daemon::start(&state, &args);
    let b1 = f.named_bundle("d1.bundle", "edge-fp32", "digits", 1);
    let out = f.install(&state, &b1, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("digits serves", Duration::from_secs(20), || {
        !daemon.get_json("/v1/status")["models"]["digits"].is_null()
    });
    let cmd = |extra: &[&str]| {
        let mut a = vec![
            "cmd",
            "--broker",
            &url,
            "--device",
            "m1",
            "--key",
            s(&f.key1),
        ];
        a.extend_from_slice(extra);
        outpostctl(&a)
    };

    // The retained status lists both models.
    wait_until("the status lists digits", Duration::from_secs(10), || {
        broker
            .retained("outpost/v1/device/m1/status", 2)
            .is_some_and(|st| st["models"]["digits"]["model"]["version"] == 1)
    });
    let st = broker.retained("outpost/v1/device/m1/status", 2).unwrap();
    assert_eq!(st["default_model"], "edge-int8", "{st}");

    // A command for a model the device does not hold, or a remove of the default model: refused, nothing changes.
    let out = cmd(&["--model", "nope", "rollback"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no model named \"nope\""));
    let out = cmd(&["--model", "edge-int8", "remove"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be removed"));

    // Promote acts on digits alone: its trial ends, the default model never had one.
    let out = cmd(&["--model", "digits", "promote"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("digits committed", Duration::from_secs(10), || {
        daemon.get_json("/v1/status")["models"]["digits"]["trial"].is_null()
    });
    // A setting for digits is its own.
    let out = cmd(&["--model", "digits", "set", "hardness.threshold", "0.7"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = daemon.get_json("/v1/status");
    assert_eq!(
        st["models"]["digits"]["settings"]["hardness.threshold"], "0.7",
        "{st}"
    );
    assert!(st["settings"]["hardness.threshold"].is_null(), "{st}");

    // Remove: digits stops serving; its floor stays, so v1 cannot come back, v2 can.
    let out = cmd(&["--model", "digits", "remove"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ack: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(ack["result"]["removed"], "digits", "{ack}");
    wait_until("digits is gone", Duration::from_secs(10), || {
        daemon.get_json("/v1/status")["models"]["digits"].is_null()
    });
    let out = f.install(&state, &b1, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not newer than version 1"));
    let out = outpost(&["status", "--state-dir", s(&state), "--model", "digits"]);
    assert!(!out.status.success(), "a removed model is not listed");
    let b2 = f.named_bundle("d2.bundle", "edge-fp32", "digits", 2);
    let out = f.install(&state, &b2, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("digits is back at v2", Duration::from_secs(20), || {
        daemon.get_json("/v1/status")["models"]["digits"]["model"]["version"] == 2
    });
    assert_eq!(
        daemon.get_json("/v1/status")["model"]["version"],
        1,
        "the default model never moved"
    );
    assert!(daemon.stop().success());
}

#[test]
fn commands_from_an_operator_tool_before_the_repository_still_drive_the_default_model() {
    let broker = Mosquitto::start();
    let url = broker.url();
    let f = Fixture::new();
    let fixture = v0();
    let state = f.path("state");
    let daemon = Daemon::start(
        &state,
        &[
            "--broker",
            &url,
            "--device-id",
            "fixture-device",
            "--group",
            "fixture-group",
            "--trusted-keys",
            s(&fixture.join("trusted-keys")),
        ],
    );
    let msgs = fixture.join("messages/generated");
    let send = |file: &str| {
        let bytes = std::fs::read(msgs.join(file)).unwrap();
        next_ack(&broker, "fixture-device", || {
            raw_publish(
                &broker,
                "outpost/v1/device/fixture-device/cmd",
                &bytes,
                f.dir.path(),
            )
        })
    };
    wait_until("online", Duration::from_secs(10), || {
        broker
            .retained("outpost/v1/device/fixture-device/status", 2)
            .is_some_and(|v| v["state"] == "online")
    });

    // Signed by the old tool, version-1 commands: decoded and run on the default model.
    let ack = send("cmd-0010-status.bin");
    assert!(ack.ok, "{ack:?}");
    assert_eq!(ack.seq, Some(10), "{ack:?}");
    match &ack.result {
        Some(outpost::wire::status::AckResult::Status(st)) => {
            assert_eq!(st.service.model.name, "edge-int8", "{ack:?}")
        }
        other => panic!("a status command answers with the status: {other:?}"),
    }

    // The old tool's update (v4, offered in 16 KiB chunks) installs into the default model.
    let mut server = Command::new(env!("CARGO_BIN_EXE_outpostctl"));
    server
        .args(["serve", "--broker", &url, "--chunk-size", "16384"])
        .arg(fixture.join("bundles/edge-int8-v4.bundle"))
        .stdout(std::process::Stdio::null());
    let _server = common::spawn_ready(server, "bundle server ready");
    let bytes = std::fs::read(msgs.join("cmd-0012-update-v4.bin")).unwrap();
    raw_publish(
        &broker,
        "outpost/v1/device/fixture-device/cmd",
        &bytes,
        f.dir.path(),
    );
    wait_until(
        "v4 serves on the default model",
        Duration::from_secs(30),
        || {
            let st = daemon.get_json("/v1/status");
            st["model"]["version"] == 4 && st["model"]["name"] == "edge-int8"
        },
    );
    let ack = send("cmd-0013-set-hardness-threshold-0.8.bin");
    assert!(ack.ok, "{ack:?}");
    assert_eq!(
        daemon.get_json("/v1/status")["settings"]["hardness.threshold"],
        "0.8"
    );
    let ack = send("cmd-0015-rollback.bin");
    assert!(ack.ok, "{ack:?}");
    wait_until(
        "back on the built-in model",
        Duration::from_secs(10),
        || daemon.get_json("/v1/status")["model"]["version"] == 1,
    );
    assert!(daemon.stop().success());
}

/// The status and acknowledgements an agent from before the repository publishes decode in this operator's types
/// (the rollout gates and `outpostctl watch` read them), with its one model as the default.
#[test]
fn statuses_and_acks_of_an_agent_before_the_repository_decode() {
    use outpost::wire::status::{Ack, DeviceStatus};
    let dir = v0().join("messages");
    for file in [
        "status-v2-committed.json",
        "status-v3-trial.json",
        "status-offline.json",
    ] {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let st = DeviceStatus::from_json(&bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(st.device(), "fixture-device", "{file}");
        if let Some(online) = st.online() {
            assert!(
                online.models.is_empty() && online.default_model.is_none(),
                "{file}"
            );
            assert_eq!(online.service.model.name, "edge-int8", "{file}");
        }
    }
    let trial =
        DeviceStatus::from_json(&std::fs::read(dir.join("status-v3-trial.json")).unwrap()).unwrap();
    assert_eq!(
        trial
            .online()
            .unwrap()
            .service
            .trial
            .as_ref()
            .unwrap()
            .version,
        3
    );
    for file in [
        "ack-status-ok.json",
        "ack-set-ok.json",
        "ack-refused-replay.json",
    ] {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let ack = Ack::from_json(&bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(ack.device, "fixture-device", "{file}");
    }
}

/// A hard case as an agent before the repository sent it (and keeps it in its outbox across the upgrade) still
/// decodes, as a case of no named model, which a worker answers with its model for any.
#[test]
fn a_case_of_an_agent_before_the_repository_decodes() {
    let bytes = std::fs::read(v0().join("messages/captured/cloud-case-sample.bin")).unwrap();
    let case = outpost::forward::decode_case(&bytes).unwrap();
    assert_eq!(case.device, "fixture-device");
    assert_eq!(case.model, "");
    assert!(!case.image.is_empty());
}
