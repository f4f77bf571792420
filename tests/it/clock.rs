//! A device whose clock is wrong, end to end: the release build of `outpost` (scripts/test.sh builds it and names it in
//! `OUTPOST_RELEASE_BIN`) under libfaketime (Debian's `faketime`,
//! which scripts/test.sh installs), with bundles signed by the real `outpostctl` at chosen dates. The agent reads no
//! variable of its own for time: only the faked system clock and its durable time floor decide.

use crate::common;

use std::path::Path;

use crate::common::{faketime_env, release_outpost, s, Daemon, Fixture, Mosquitto};
use outpost::wire::status::{ClockHealth, LocalStatus};

const HOUR: u64 = 3_600;
const DAY: u64 = 86_400;
/// 2040-01-01T00:00:00Z.
const Y2040: u64 = 2_208_988_800;
/// A board without a real-time clock before time sync.
const Y1970: u64 = 2 * DAY;

fn env_of<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// A bundle of the edge model signed by `outpostctl` whose clock reads `unix`, valid for `days`.
fn bundle_at(f: &Fixture, file: &str, version: u64, unix: u64, days: u64) -> std::path::PathBuf {
    let env = faketime_env(unix);
    let days = days.to_string();
    f.bundle_env(
        file,
        "edge-int8",
        "edge-int8",
        version,
        &[&f.key1],
        &["--expires-days", &days],
        &env_of(&env),
    )
}

fn install_at(f: &Fixture, state: &Path, bundle: &Path, unix: u64) -> (bool, String) {
    let env = faketime_env(unix);
    let out = f.install_with(&release_outpost(), state, bundle, &[], &env_of(&env));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The daemon's status under a clock that reads `unix`.
fn status_at(state: &Path, unix: u64) -> LocalStatus {
    let env = faketime_env(unix);
    let daemon = Daemon::start_bin(&release_outpost(), state, &[], &env_of(&env));
    let status: LocalStatus = serde_json::from_value(daemon.get_json("/v1/status")).unwrap();
    daemon.stop();
    status
}

/// A device whose clock reads 2040 refuses a bundle made today, and a command sent today, with a sentence that names
/// its clock, not the message; it reports its clock as far ahead in its status, `/metrics` and `outpostctl watch`;
/// it serves all along.
#[test]
fn a_device_at_2040_names_its_clock_and_reports_it() {
    let f = Fixture::new();
    let today = outpost::bundle::now_unix();
    let fresh = bundle_at(&f, "fresh.bundle", 2, today, 30);
    let state = f.path("state-2040");
    let (ok, err) = install_at(&f, &state, &fresh, Y2040);
    assert!(
        !ok,
        "a device at 2040 took a bundle that expires 30 days from today"
    );
    assert!(
        err.contains("bundle refused: this device's clock reads 2040-01-01T00:00:00Z, 13 years after the newest signed time it has seen")
            && err.contains("check its time sync")
            && !err.contains("ask for a fresh bundle"),
        "{err}"
    );

    // The daemon at 2040, on a real broker: a command signed now is refused the same way, and acknowledged so.
    let broker = Mosquitto::start();
    let url = broker.url();
    let env = faketime_env(Y2040);
    let daemon = Daemon::start_bin(
        &release_outpost(),
        &state,
        &f.fleet_args(&url, "d2040"),
        &env_of(&env),
    );
    let online = broker.retained("outpost/v1/device/d2040/status", 30);
    assert!(
        online.as_ref().is_some_and(|v| v["state"] == "online"),
        "the device did not come online: {online:?}"
    );
    let out = common::outpostctl(&[
        "cmd",
        "--broker",
        &url,
        "--device",
        "d2040",
        "--key",
        s(&f.key1),
        "set",
        "hardness.threshold",
        "0.5",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a command signed today ran on a device at 2040"
    );
    assert!(
        err.contains("command refused: this device's clock reads 2040-01-01T00:00:00Z")
            && err.contains("check its time sync"),
        "{err}"
    );
    let status: LocalStatus = serde_json::from_value(daemon.get_json("/v1/status")).unwrap();
    let clock = status.host.clock.clone().expect("the status has a clock");
    assert_eq!(clock.health, ClockHealth::FarAhead);
    assert_eq!(clock.system_unix, Y2040);
    assert!(clock.floor_unix < today + DAY, "{clock:?}");
    assert!(
        !status.service.settings.contains_key("hardness.threshold"),
        "the refused command took effect: {:?}",
        status.service.settings
    );
    // It serves: a digit is answered at 2040.
    let (code, answer) = common::post_image(
        &daemon,
        "/v1/infer",
        &std::fs::read(&common::test_images()[0].0).unwrap(),
    );
    assert_eq!(code, 200, "{answer}");
    let metrics = daemon.metrics();
    assert!(
        metrics.contains("outpost_clock_health{health=\"far-ahead\"} 1"),
        "/metrics shows the clock:\n{metrics}"
    );
    let watch = common::outpostctl(&["watch", "--broker", &url, "--for", "2"]);
    let text = String::from_utf8_lossy(&watch.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("d2040") && l.contains("far-ahead")),
        "outpostctl watch shows the clock:\n{text}"
    );
    daemon.stop();

    // Nothing was installed or changed: the same bundle installs once the clock is right.
    let (ok, err) = install_at(&f, &state, &fresh, today + HOUR);
    assert!(ok, "{err}");
}

/// A device at 1970 takes a bundle that has not expired by its floor (its build time), but once it has installed a
/// bundle issued later, and has restarted, it refuses a bundle that expired before that: the floor survived. Its
/// status says its clock is behind the floor.
#[test]
fn a_device_at_1970_remembers_the_newest_signed_time_across_restarts() {
    let f = Fixture::new();
    let built = outpost::clock::build_unix();
    // Today, as far as this test goes: a day's step above the build time.
    let today = built + 20 * HOUR;
    // Expired twelve hours after the build, eight hours before "today".
    let expired = bundle_at(&f, "expired.bundle", 3, built - 12 * HOUR, 1);
    let fresh = bundle_at(&f, "fresh.bundle", 2, today, 30);

    // A device that never synced and has seen nothing newer than its build takes it (no floor says otherwise).
    let never = f.path("state-never");
    let (ok, err) = install_at(&f, &never, &expired, Y1970);
    assert!(ok, "{err}");

    // A device that installed today's bundle, then (a new process: a restart) is offered the expired one.
    let state = f.path("state-1970");
    let (ok, err) = install_at(&f, &state, &fresh, Y1970);
    assert!(ok, "{err}");
    let (ok, err) = install_at(&f, &state, &expired, Y1970);
    assert!(
        !ok,
        "a device that had seen today took a bundle that expired before it"
    );
    assert!(
        err.contains("before the newest signed time this device has seen")
            && err.contains("ask for a fresh bundle"),
        "{err}"
    );
    let clock = status_at(&state, Y1970).host.clock.unwrap();
    assert_eq!(clock.health, ClockHealth::BehindFloor);
    assert_eq!(clock.floor_unix, today);
    assert_eq!(clock.floor_error, None);
}

/// A floor record that is not a number: the agent starts, uses its build time and says so in the status.
#[test]
fn a_corrupt_floor_is_reported_and_the_agent_serves() {
    let f = Fixture::new();
    let state = f.path("state-corrupt");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join(outpost::clock::floor::FILE), b"\xff\xfe garbage").unwrap();
    let now = outpost::clock::build_unix() + HOUR;
    let clock = status_at(&state, now).host.clock.unwrap();
    assert_eq!(clock.floor_unix, outpost::clock::build_unix());
    assert_eq!(clock.health, ClockHealth::Ok);
    assert!(
        clock
            .floor_error
            .as_deref()
            .unwrap_or("")
            .contains("corrupt"),
        "{clock:?}"
    );
}
