//! Issue 18, item 5: a state directory written by the single-model agent (`tests/fixtures/v0/state`, made by the
//! binaries of commit e70c3cc, see its README) starts under this agent with its live model, slot record, trial,
//! version floor and queued hard cases intact, and nothing is fetched again.

use crate::common;

use crate::common::{outpost, s, status, Daemon, Fixture, Mosquitto};
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    common::repo().join("tests/fixtures/v0")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn a_single_model_state_directory_starts_with_its_live_model_trial_version_floor_and_outbox() {
    let f = Fixture::new();
    let v0 = fixture();
    let state = f.path("state");
    copy_dir(&v0.join("state"), &state);
    let old = json(&state.join("slots/state.json"));
    assert_eq!(old["highest_version"], 3, "the fixture changed: {old}");
    assert_eq!(old["trial"]["slot"], "B", "{old}");

    let broker = Mosquitto::start();
    let url = broker.url();
    let config = v0.join("outpost.toml");
    let trusted = v0.join("trusted-keys");
    let cloud = v0.join("cloud-keys");
    let args = [
        "--config",
        s(&config),
        "--broker",
        &url,
        "--device-id",
        "fixture-device",
        "--group",
        "fixture-group",
        "--trusted-keys",
        s(&trusted),
        "--cloud-keys",
        s(&cloud),
    ];
    let daemon = Daemon::start(&state, &args);

    // The slots moved, whole, under the default model's name.
    assert!(
        !state.join("slots").exists(),
        "the old layout is still there"
    );
    let record = json(&state.join("models/edge-int8/state.json"));
    for key in ["active", "slots", "highest_version", "candidate"] {
        assert_eq!(record[key], old[key], "{key}: {record} against {old}");
    }
    assert_eq!(record["trial"]["slot"], "B", "{record}");
    assert_eq!(record["trial"]["previous"], "A", "{record}");
    assert_eq!(record["trial"]["boots"], 1, "this start counts: {record}");

    // It serves what it served: v3 from slot b, on trial, with v2 kept to fall back on.
    let st = daemon.get_json("/v1/status");
    assert_eq!(st["model"]["version"], 3, "{st}");
    assert_eq!(
        st["model"]["digest"],
        old["slots"][1]["digest"].as_str().unwrap(),
        "{st}"
    );
    assert_eq!(st["slot"], "b", "{st}");
    assert_eq!(st["trial"]["version"], 3, "{st}");
    // The hard cases the old agent queued are still queued (no cloud worker runs here).
    common::wait_until(
        "the fleet link reports the outbox",
        std::time::Duration::from_secs(10),
        || daemon.get_json("/v1/status")["forward"]["outbox"]["pending"] == 3,
    );
    // The single database became three stores (issue 27): the records and the outbox moved out of the cache's.
    assert!(state.join("outbox").is_dir() && state.join("cache").is_dir());
    let records = outpost::store::Records::open(&state.join("records"), None).unwrap();
    assert_eq!(
        records.get::<u64>("command.last_seq").unwrap(),
        Some(3),
        "the command sequence floor moved"
    );
    assert_eq!(
        st["settings"]["hardness.threshold"], "0.85",
        "the recorded setting moved: {st}"
    );
    let agent = common::http();
    let image = std::fs::read(&common::test_images()[0].0).unwrap();
    let (code, v) = daemon.infer(&agent, &image, "image/png");
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["model"]["version"], 3, "{v}");

    // Nothing was fetched again.
    assert!(
        st["last_transfer"].is_null() && st["download"].is_null(),
        "{st}"
    );
    let incoming = state.join("incoming");
    assert!(
        !incoming.exists() || std::fs::read_dir(&incoming).unwrap().next().is_none(),
        "a download was started"
    );
    // The trial is the old one, still open to the operator: a second start counts its boot and still serves v3
    // on trial; then a promote commits it.
    assert!(daemon.stop().success());
    let daemon = Daemon::start(&state, &args);
    let st = daemon.get_json("/v1/status");
    assert_eq!(st["model"]["version"], 3, "{st}");
    assert_eq!(st["trial"]["version"], 3, "{st}");
    assert_eq!(status(&state)["trial"]["boots"], 2);
    let out = outpost(&["promote", "--state-dir", s(&state)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::wait_until(
        "the daemon commits v3",
        std::time::Duration::from_secs(10),
        || daemon.get_json("/v1/status")["trial"].is_null(),
    );
    assert_eq!(daemon.get_json("/v1/status")["model"]["version"], 3);

    // The version floor holds: v2 is refused as not newer.
    let out = outpost(&[
        "install",
        "--state-dir",
        s(&state),
        "--trusted-keys",
        s(&trusted),
        s(&v0.join("bundles/edge-int8-v2.bundle")),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not newer than version 3"), "{err}");
    assert_eq!(status(&state)["highest_version"], 3);
    assert!(daemon.stop().success());
}
