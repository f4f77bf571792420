//! Durable or refused (issue 25, item 1), end to end: a real daemon on a real mosquitto whose records (the command
//! sequence floors among them) fail on demand through `OUTPOST_FAULT_RECORDS`, a control file the test writes and
//! removes while the daemon runs. A command whose sequence number cannot be read or recorded is refused with a
//! sentence, is not carried out, and stays refused when replayed after the store recovers; a new command then works.
//! The tests act on facts the agent reports (its retained status, its acknowledgements, its `/v1/status`), read
//! through the library's own types.
//!
//! The second test makes the real disk fail under the agent (root only): its state dir on a tmpfs shrunk to what it
//! holds, so sled's next page of log cannot be allocated (ENOSPC).

use crate::common;

use crate::common::{s, Daemon, Fixture, Mosquitto, Tmpfs};
use outpost::bundle::SigningKeyFile;
use outpost::wire::command::{self, Action, CommandBody, Target};
use outpost::wire::status::{Ack, CommandName, DeviceStatus, LocalStatus, StoreName, StoreState};
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

/// The disk itself fills: the state dir's tmpfs is shrunk to what it holds. The first record that does not fit
/// takes the reserve (`storage.reserve_bytes`), so commands are still carried out; once the disk is filled again
/// the first command whose sequence number cannot be written is refused with the device's sentence ("the disk is
/// full") and is not carried out, and its replay is refused. With room again the records recover without a restart
/// (they are files: a failed write leaves nothing behind), the reserve is put back, the refused command's replay is
/// still refused and a new command works; after a SIGKILL and restart the same holds.
#[test]
fn a_state_dir_whose_disk_is_full_refuses_what_it_cannot_record() {
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
    common::wait_until("the reserve is in place", Duration::from_secs(20), || {
        daemon
            .local_status()
            .host
            .storage
            .is_some_and(|s| s.reserve_held)
    });
    let key = SigningKeyFile::load(&f.key1).unwrap();
    let base = now_ms();
    assert_ok(&op.send(&set_threshold_on(ID, &key, base, "0.5")));

    // Full: the reserve makes room for the records.
    disk.fill();
    assert_ok(&op.send(&set_threshold_on(ID, &key, base + 1, "0.51")));
    assert_eq!(threshold(&daemon).as_deref(), Some("0.51"));
    let st = daemon.local_status().host.storage.expect("storage status");
    assert!(!st.reserve_held, "the reserve was released: {st:?}");

    // Full again, with the reserve spent: refused, not carried out.
    disk.fill();
    let refused = set_threshold_on(ID, &key, base + 2, "0.52");
    assert_refused(
        &op.send(&refused),
        &[
            "cannot record the command's sequence number",
            "the disk is full",
            "the command is refused",
        ],
    );
    assert_eq!(
        threshold(&daemon).as_deref(),
        Some("0.51"),
        "not carried out"
    );
    assert_refused(&op.send(&refused), &[]);
    assert_eq!(threshold(&daemon).as_deref(), Some("0.51"));
    let records = daemon.local_status().host.storage.unwrap().stores[&StoreName::Records].clone();
    assert_eq!(records.state, StoreState::DiskFull, "{records:?}");

    // Room again, no restart: the records are written again and the reserve comes back.
    disk.resize("24m");
    common::wait_until("the reserve is back", Duration::from_secs(20), || {
        daemon
            .local_status()
            .host
            .storage
            .is_some_and(|s| s.reserve_held)
    });
    assert_refused(&op.send(&refused), &["not above"]);
    assert_ok(&op.send(&set_threshold_on(ID, &key, base + 3, "0.53")));
    assert_eq!(threshold(&daemon).as_deref(), Some("0.53"));
    let records = daemon.local_status().host.storage.unwrap().stores[&StoreName::Records].clone();
    assert_eq!(records.state, StoreState::Ok, "{records:?}");

    // A SIGKILL and restart keep all of it.
    drop(daemon);
    op.wait_offline();
    let daemon = Daemon::start(&state, &args);
    op.wait_online();
    assert_eq!(threshold(&daemon).as_deref(), Some("0.53"));
    assert_refused(&op.send(&refused), &["not above"]);
    assert_ok(&op.send(&set_threshold_on(ID, &key, base + 1000, "0.95")));
    assert_eq!(threshold(&daemon).as_deref(), Some("0.95"));
    drop(daemon);
    drop(disk);
}
