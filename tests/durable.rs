//! Durable or refused (issue 25, item 1), end to end: a real daemon on a real mosquitto whose records (the command
//! sequence floors among them) fail on demand through `OUTPOST_FAULT_RECORDS`, a control file the test writes and
//! removes while the daemon runs. A command whose sequence number cannot be read or recorded is refused with a
//! sentence, is not carried out, and stays refused when replayed after the store recovers; a new command then works.
//! The tests act on facts the agent reports (its retained status, its acknowledgements, its `/v1/status`), read
//! through the library's own types.
//!
//! The second test makes the real disk fail under the agent (root only): its state dir on a tmpfs shrunk to what it
//! holds, so sled's next page of log cannot be allocated (ENOSPC).

mod common;

use common::{s, Daemon, Fixture, Mosquitto};
use outpost::bundle::SigningKeyFile;
use outpost::wire::command::{self, Action, CommandBody, Target};
use outpost::wire::status::{Ack, CommandName, DeviceStatus, LocalStatus};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{Client, Event, MqttOptions};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

const DEVICE: &str = "durable-1";
const WAIT: Duration = Duration::from_secs(20);

/// What the operator's connection saw.
enum Seen {
    Subscribed,
    Ack(Ack),
    Status(DeviceStatus),
}

/// An operator's MQTT session: subscribed to the device's acknowledgements and status before anything is sent.
struct Operator {
    client: Client,
    seen: Receiver<Seen>,
    device: String,
}

impl Operator {
    fn connect(broker: &Mosquitto, device: &str) -> Operator {
        let mut opts = MqttOptions::new(
            format!("durable-op-{device}-{}", std::process::id()),
            "127.0.0.1",
            broker.port,
        );
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut connection) = Client::new(opts, 64);
        let (tx, seen) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for event in connection.iter() {
                let sent = match event {
                    Ok(Event::Incoming(Packet::SubAck(_))) => tx.send(Seen::Subscribed),
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic.ends_with(b"/ack") => {
                        match Ack::from_json(&p.payload) {
                            Ok(a) => tx.send(Seen::Ack(a)),
                            Err(_) => Ok(()),
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic.ends_with(b"/status") => {
                        match serde_json::from_slice(&p.payload) {
                            Ok(st) => tx.send(Seen::Status(st)),
                            Err(_) => Ok(()),
                        }
                    }
                    Ok(_) => Ok(()),
                    // The broker goes away when the test ends.
                    Err(_) => return,
                };
                if sent.is_err() {
                    return;
                }
            }
        });
        let op = Operator {
            client,
            seen,
            device: device.to_string(),
        };
        for topic in [
            format!("outpost/v1/device/{device}/ack"),
            format!("outpost/v1/device/{device}/status"),
        ] {
            op.client.subscribe(topic, QoS::AtLeastOnce).unwrap();
            op.next(
                |s| matches!(s, Seen::Subscribed).then_some(()),
                "a subscription",
            );
        }
        op
    }

    /// The first event `pick` takes, within [`WAIT`].
    fn next<T>(&self, mut pick: impl FnMut(Seen) -> Option<T>, what: &str) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.seen.recv_timeout(left) {
                Ok(s) => {
                    if let Some(t) = pick(s) {
                        return t;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!("timed out waiting for {what}"),
                Err(RecvTimeoutError::Disconnected) => panic!("the operator's connection ended"),
            }
        }
    }

    /// Waits for the device's retained status to say online: its command subscription is in place by then (the
    /// agent subscribes before it publishes its status, on the same connection).
    fn wait_online(&self) {
        self.next(
            |s| match s {
                Seen::Status(DeviceStatus::Online(_)) => Some(()),
                _ => None,
            },
            "the device's online status",
        );
    }

    /// Waits for the device's last will (it was killed).
    fn wait_offline(&self) {
        self.next(
            |s| match s {
                Seen::Status(DeviceStatus::Offline { .. }) => Some(()),
                _ => None,
            },
            "the device's last will",
        );
    }

    /// Publishes a signed command and returns the device's acknowledgement of its sequence number.
    fn send(&self, signed: &[u8]) -> Ack {
        let seq = command::peek_seq(signed).expect("a signed command has a sequence number");
        self.client
            .publish(
                format!("outpost/v1/device/{}/cmd", self.device),
                QoS::AtLeastOnce,
                false,
                signed.to_vec(),
            )
            .unwrap();
        self.next(
            |s| match s {
                Seen::Ack(a) if a.seq == Some(seq) => Some(a),
                _ => None,
            },
            &format!("the acknowledgement of command {seq}"),
        )
    }
}

/// `set hardness.threshold <value>` for [`DEVICE`], signed with `key`, as sequence number `seq`.
fn set_threshold(key: &SigningKeyFile, seq: u64, value: &str) -> Vec<u8> {
    set_threshold_on(DEVICE, key, seq, value)
}

fn set_threshold_on(device: &str, key: &SigningKeyFile, seq: u64, value: &str) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let body = CommandBody {
        target: Target::Device(device.into()),
        seq,
        issued_unix: now,
        expires_unix: now + 600,
        action: Action::Set {
            key: "hardness.threshold".into(),
            value: value.into(),
        },
        model: None,
    };
    command::sign(&body, &[key])
}

/// The threshold the daemon applies now, from its typed status.
fn threshold(daemon: &Daemon) -> Option<String> {
    let st: LocalStatus = serde_json::from_value(daemon.get_json("/v1/status")).unwrap();
    st.service.settings.get("hardness.threshold").cloned()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn assert_ok(ack: &Ack) {
    assert!(ack.ok, "{ack:?}");
    assert_eq!(ack.command, CommandName::Set, "{ack:?}");
}

/// Refused before it ran, with a sentence holding every part of `says`.
fn assert_refused(ack: &Ack, says: &[&str]) {
    assert!(!ack.ok, "{ack:?}");
    assert_eq!(ack.command, CommandName::Refused, "{ack:?}");
    let error = ack.error.as_deref().unwrap_or_default();
    for part in says {
        assert!(error.contains(part), "{part:?} not in {error:?}");
    }
}

#[test]
fn a_command_whose_sequence_cannot_be_read_or_recorded_is_refused_and_stays_refused() {
    let broker = Mosquitto::start();
    let f = Fixture::new();
    let control = f.path("records-fault");
    let state = f.path("state");
    let url = broker.url();
    let op = Operator::connect(&broker, DEVICE);
    let daemon = Daemon::start_with_env(
        &state,
        &[
            "--broker",
            &url,
            "--device-id",
            DEVICE,
            "--trusted-keys",
            s(&f.trusted),
        ],
        &[("OUTPOST_FAULT_RECORDS", s(&control))],
    );
    op.wait_online();
    let key = SigningKeyFile::load(&f.key1).unwrap();
    let base = now_ms();

    // The store works: two commands are carried out.
    let first = set_threshold(&key, base + 1, "0.5");
    assert_ok(&op.send(&first));
    assert_ok(&op.send(&set_threshold(&key, base + 2, "0.6")));
    assert_eq!(threshold(&daemon).as_deref(), Some("0.6"));

    // Writes fail, then reads: each command is refused, says why and what to do, and is not carried out.
    let mut refused = Vec::new();
    for (fault, seq, says) in [
        (
            "write",
            base + 3,
            "cannot record the command's sequence number",
        ),
        (
            "read",
            base + 4,
            "cannot read this device's command sequence record",
        ),
    ] {
        std::fs::write(&control, fault).unwrap();
        let signed = set_threshold(&key, seq, "0.9");
        assert_refused(&op.send(&signed), &[says, "refused", "disk"]);
        assert_eq!(threshold(&daemon).as_deref(), Some("0.6"), "{fault}");
        refused.push(signed);
    }
    // Not even an old command gets through while reads fail (a failed read is not a floor of 0).
    assert_refused(&op.send(&first), &["cannot read"]);
    assert_eq!(threshold(&daemon).as_deref(), Some("0.6"));

    // The store recovers: the refused commands, replayed byte for byte, are still refused, and so is the old one.
    std::fs::remove_file(&control).unwrap();
    for signed in refused.iter().chain([&first]) {
        assert_refused(&op.send(signed), &["not above"]);
    }
    assert_eq!(threshold(&daemon).as_deref(), Some("0.6"), "no replay ran");

    // A new command, a new number: carried out.
    assert_ok(&op.send(&set_threshold(&key, base + 5, "0.7")));
    assert_eq!(threshold(&daemon).as_deref(), Some("0.7"));
    assert!(daemon.stop().success());
}

/// A tmpfs mounted on a directory for one test, unmounted when the test ends (after the daemon on it is dropped:
/// declare it first).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let opts = format!("size={size}");
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &opts, "tmpfs", s(dir)])
            .status()
            .unwrap();
        assert!(st.success(), "mount -t tmpfs failed (as root: {st})");
        Tmpfs(dir.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let opts = format!("remount,size={size}");
        let st = std::process::Command::new("mount")
            .args(["-o", &opts, s(&self.0)])
            .status()
            .unwrap();
        assert!(st.success(), "mount -o {opts}: {st}");
    }

    /// Shrinks the tmpfs to the pages it holds now: nothing more can be allocated in it.
    fn fill(&self) {
        let st = nix::sys::statvfs::statvfs(&self.0).unwrap();
        #[allow(clippy::unnecessary_cast)]
        let used = (st.blocks() - st.blocks_free()) as u64 * st.fragment_size() as u64;
        self.resize(&format!("{}k", used.div_ceil(1024)));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .args(["-l", s(&self.0)])
            .status();
    }
}

/// The disk itself fails: the state dir's tmpfs is shrunk to what it holds. Commands are carried out while sled's
/// log still fits in the pages it has, then the first one whose sequence number cannot be written is refused with
/// the device's sentence and the OS's cause, and is not carried out; its replay is refused. sled keeps its first I/O
/// error for the rest of the process, so the store recovers when the agent restarts on a disk with room: the
/// database opens as it was last flushed, the refused command's replay is still refused (its number outlived the
/// restart in the reserve that a full disk cannot stop: src/fleet/device/spent.rs), and a new command works.
#[test]
fn a_state_dir_whose_disk_is_full_refuses_what_it_cannot_record() {
    let uid = std::process::Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        eprintln!("skipped: mounting the tmpfs that fills up needs root (CI runs as root)");
        return;
    }
    const ID: &str = "durable-full";
    let broker = Mosquitto::start();
    let f = Fixture::new();
    let state = f.path("state");
    let disk = Tmpfs::mount(&state, "24m");
    let url = broker.url();
    let op = Operator::connect(&broker, ID);
    let args = [
        "--broker",
        &url,
        "--device-id",
        ID,
        "--trusted-keys",
        s(&f.trusted),
    ];
    let daemon = Daemon::start(&state, &args);
    op.wait_online();
    let key = SigningKeyFile::load(&f.key1).unwrap();
    let base = now_ms();
    assert_ok(&op.send(&set_threshold_on(ID, &key, base, "0.5")));

    disk.fill();
    let mut carried = "0.5".to_string();
    let mut refused = None;
    for i in 1..=500u64 {
        let value = format!("0.{i}");
        let signed = set_threshold_on(ID, &key, base + i, &value);
        let ack = op.send(&signed);
        if ack.ok {
            carried = value;
        } else {
            assert_refused(
                &ack,
                &[
                    "cannot record the command's sequence number",
                    "No space left on device",
                    "disk",
                ],
            );
            eprintln!(
                "full disk: {} commands carried out, then refused: {:?}",
                i - 1,
                ack.error
            );
            refused = Some(signed);
            break;
        }
    }
    let refused = refused.expect("500 small records fit in a full tmpfs: nothing failed");
    assert_eq!(
        threshold(&daemon).as_deref(),
        Some(carried.as_str()),
        "not carried out"
    );
    assert_refused(&op.send(&refused), &[]);
    assert_eq!(threshold(&daemon).as_deref(), Some(carried.as_str()));

    // Room again; the agent restarts (SIGKILL, as a watchdog would) and its store opens as last flushed.
    disk.resize("24m");
    drop(daemon);
    op.wait_offline();
    let daemon = Daemon::start(&state, &args);
    op.wait_online();
    assert_eq!(threshold(&daemon).as_deref(), Some(carried.as_str()));
    // The refused command's number outlived the restart (the reserve that a full disk cannot stop): its replay is
    // still refused, now by the durable floor that the restarted agent wrote.
    assert_refused(&op.send(&refused), &["not above"]);
    assert_eq!(threshold(&daemon).as_deref(), Some(carried.as_str()));
    assert_ok(&op.send(&set_threshold_on(ID, &key, base + 1000, "0.95")));
    assert_eq!(threshold(&daemon).as_deref(), Some("0.95"));
    drop(daemon);
    drop(disk);
}
