//! The operator's side (`outpostctl publish`, `cmd`, `watch`): sign a command, send it, wait for the
//! acknowledgements, follow the fleet's retained status.

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::command::{self, Action, CommandBody, Target};
use super::mqtt::{self, LinkEvent, Settings};
use super::{topics, FleetError};
use crate::bundle::{now_unix, SigningKeyFile};

/// Connects and waits for the broker's CONNACK; the first failure is an error (an operator wants to know now).
pub async fn connect(
    settings: &Settings,
    shutdown: CancellationToken,
) -> Result<(AsyncClient, mpsc::Receiver<LinkEvent>), FleetError> {
    let (client, mut events) = mqtt::connect(settings, shutdown)?;
    loop {
        match tokio::time::timeout(Duration::from_secs(15), events.recv()).await {
            Ok(Some(LinkEvent::Connected { .. })) => return Ok((client, events)),
            Ok(Some(LinkEvent::Disconnected { error, .. })) => {
                return Err(FleetError::Connect(error))
            }
            Ok(Some(LinkEvent::Message(_))) => continue,
            Ok(None) => return Err(FleetError::Connect("connection task ended".into())),
            Err(_) => {
                return Err(FleetError::Connect(format!(
                    "no answer from {} within 15 s",
                    settings.broker
                )))
            }
        }
    }
}

/// A command ready to send.
pub struct Outgoing {
    pub target: Target,
    pub action: Action,
    pub seq: u64,
    pub expires_in: Duration,
}

/// Unix milliseconds: increasing across invocations on one operator machine, so a good default sequence number.
pub fn default_seq() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How waiting for answers shows itself.
pub trait Progress: Send {
    /// A device's status arrived (for downloads: its progress).
    fn status(&mut self, device: &str, status: &serde_json::Value);
    fn ack(&mut self, ack: &serde_json::Value);
}

/// Sends a signed command and collects acknowledgements: for a device, until its final one; for a group, until
/// `wait` runs out. An update's final acknowledgement comes after the install.
pub async fn send(
    client: &AsyncClient,
    events: &mut mpsc::Receiver<LinkEvent>,
    out: &Outgoing,
    keys: &[&SigningKeyFile],
    wait: Duration,
    progress: &mut dyn Progress,
) -> Result<Vec<serde_json::Value>, FleetError> {
    let (ack_topic, status_topic) = match &out.target {
        Target::Device(d) => (topics::ack(d), topics::status(d)),
        Target::Group(_) => (topics::ALL_ACKS.to_string(), topics::ALL_STATUS.to_string()),
    };
    client.subscribe(&ack_topic, QoS::AtLeastOnce).await?;
    client.subscribe(&status_topic, QoS::AtMostOnce).await?;
    // Let the subscriptions settle before the command goes out, so a fast device's answer is not missed.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let now = now_unix();
    let body = CommandBody {
        target: out.target.clone(),
        seq: out.seq,
        issued_unix: now,
        expires_unix: now + out.expires_in.as_secs(),
        action: out.action.clone(),
    };
    let bytes = command::sign(&body, keys);
    let topic = match &out.target {
        Target::Device(d) => topics::device_cmd(d),
        Target::Group(g) => topics::group_cmd(g),
    };
    client
        .publish(topic, QoS::AtLeastOnce, false, bytes)
        .await?;
    let is_update = out.action.offer().is_some();
    let mut saw_other_model = false;
    let deadline = Instant::now() + wait;
    let mut acks = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let ev = match tokio::time::timeout(left, events.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) | Err(_) => break,
        };
        let p = match ev {
            LinkEvent::Message(p) => p,
            LinkEvent::Connected {
                session_present: false,
            } => {
                // The broker restarted without our session: listen again.
                client.subscribe(&ack_topic, QoS::AtLeastOnce).await?;
                client.subscribe(&status_topic, QoS::AtMostOnce).await?;
                continue;
            }
            _ => continue,
        };
        let t = mqtt::topic_of(&p);
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&p.payload) else {
            continue;
        };
        if t.ends_with("/status") {
            let device = v["device"].as_str().unwrap_or("?").to_string();
            progress.status(&device, &v);
            // The device's own status turning to the offered model also ends an update: its acknowledgement can
            // be lost when this clean session reconnects after a broker restart while the device installs. Only a
            // change counts: a device that already ran that version answers for itself (a refusal or "already").
            if let (Some(offer), Target::Device(d)) = (out.action.offer(), &out.target) {
                let offered = v["model"]["name"] == offer.name.as_str()
                    && v["model"]["version"].as_u64() == Some(offer.version);
                if v["device"] != d.as_str() {
                    continue;
                }
                if !offered && v["model"].is_object() {
                    saw_other_model = true;
                } else if saw_other_model {
                    acks.push(serde_json::json!({
                        "device": d,
                        "seq": out.seq,
                        "command": out.action.name(),
                        "ok": true,
                        "result": {"installed": {"version": offer.version}, "seen_in": "status"},
                    }));
                    break;
                }
            }
            continue;
        }
        if v["seq"].as_u64() != Some(out.seq) {
            continue;
        }
        progress.ack(&v);
        // An update's first answer may be an early refusal (final) or nothing until the install.
        let final_ack = !is_update
            || v["command"] == out.action.name()
            || v["ok"] == false
            || !v["result"]["already"].is_null();
        if final_ack {
            acks.push(v);
            if matches!(out.target, Target::Device(_)) {
                break;
            }
        }
    }
    Ok(acks)
}

/// The fleet as `watch` sees it: device statuses and rollout summaries, by id and by rollout name.
#[derive(Debug, Default)]
pub struct Fleet {
    pub devices: BTreeMap<String, serde_json::Value>,
    pub rollouts: BTreeMap<String, serde_json::Value>,
}

async fn watch_subscribe(client: &AsyncClient) -> Result<(), FleetError> {
    client
        .subscribe(topics::ALL_STATUS, QoS::AtLeastOnce)
        .await?;
    client
        .subscribe(super::rollout::ALL_ROLLOUTS, QoS::AtLeastOnce)
        .await?;
    Ok(())
}

/// Follows the retained status of every device and every rollout; calls `show` with the whole picture on each
/// change, until `duration` (forever if None) or `shutdown`.
pub async fn watch(
    client: &AsyncClient,
    events: &mut mpsc::Receiver<LinkEvent>,
    duration: Option<Duration>,
    shutdown: CancellationToken,
    mut show: impl FnMut(&Fleet, &serde_json::Value),
) -> Result<(), FleetError> {
    watch_subscribe(client).await?;
    let mut fleet = Fleet::default();
    let end = duration.map(|d| Instant::now() + d);
    loop {
        let left = end
            .map(|e| e.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(3600));
        if left.is_zero() {
            return Ok(());
        }
        let ev = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = tokio::time::timeout(left, events.recv()) => match r {
                Ok(Some(ev)) => ev,
                Ok(None) => return Ok(()),
                Err(_) => continue,
            },
        };
        match ev {
            LinkEvent::Message(p) => {
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(&p.payload) else {
                    continue;
                };
                let topic = mqtt::topic_of(&p);
                if let Some(name) = topic
                    .strip_prefix("outpost/v1/rollout/")
                    .and_then(|r| r.strip_suffix("/status"))
                {
                    fleet.rollouts.insert(name.to_string(), v.clone());
                } else {
                    let device = topic
                        .strip_prefix("outpost/v1/device/")
                        .and_then(|r| r.strip_suffix("/status"))
                        .unwrap_or("?")
                        .to_string();
                    fleet.devices.insert(device, v.clone());
                }
                show(&fleet, &v);
            }
            LinkEvent::Connected { session_present } => {
                if !session_present {
                    watch_subscribe(client).await?;
                }
            }
            LinkEvent::Disconnected { error, .. } => {
                tracing::warn!(%error, "lost the broker; reconnecting")
            }
        }
    }
}
