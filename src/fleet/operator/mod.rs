//! The operator's side (`outpostctl publish`, `cmd`, `watch`): sign a command, send it, wait for the
//! acknowledgements (this file), follow the fleet's retained status and show it (`watch.rs`). `outpostctl` is a thin
//! shell over these calls: what it prints is built here, where a test can read it.

mod watch;

pub use watch::{watch, Fleet};

use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::mqtt::{self, LinkEvent, Settings};
use super::{topics, FleetError};
use crate::bundle::{now_unix, SigningKeyFile};
use crate::slots::SlotInfo;
use crate::wire::command::{self, Action, CommandBody, Target};
use crate::wire::status::{Ack, AckResult, DeviceStatus, OnlineStatus, Outcome, SeenIn};

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
            Ok(Some(LinkEvent::Message(_) | LinkEvent::Subscribed)) => continue,
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
    /// The model it acts on (None: the device's default; an update's model is its bundle's).
    pub model: Option<String>,
    pub seq: u64,
    pub expires_in: Duration,
}

/// Why the words of `outpostctl cmd` are not a command.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum WordsError {
    #[error("remove needs --model NAME (the default model cannot be removed)")]
    RemoveNeedsModel,
    #[error("unknown command {0:?}: use status, rollback, promote, set KEY VALUE, purge-cache or remove")]
    Unknown(Vec<String>),
}

/// The action `outpostctl cmd` words name; `with_model`: the command names a model (`--model`).
pub fn action_of(words: &[String], with_model: bool) -> Result<Action, WordsError> {
    match words
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["status"] => Ok(Action::Status),
        ["rollback"] => Ok(Action::Rollback),
        ["promote"] => Ok(Action::Promote),
        ["purge-cache"] => Ok(Action::PurgeCache),
        ["remove"] if with_model => Ok(Action::Remove),
        ["remove"] => Err(WordsError::RemoveNeedsModel),
        ["set", key, value] => Ok(Action::Set {
            key: key.to_string(),
            value: value.to_string(),
        }),
        _ => Err(WordsError::Unknown(words.to_vec())),
    }
}

/// One device's answer to `outpostctl publish`, as the operator reads it: installed where, already there, or the
/// refusal's sentence.
pub fn update_line(ack: &Ack, elapsed: Duration) -> String {
    let outcome = ack.outcome();
    match (ack.ok, outcome.and_then(|o| o.installed.as_ref())) {
        (true, Some(installed)) => format!(
            "{}: installed version {} in slot {} after {:.1} s",
            ack.device,
            installed.version,
            outcome.and_then(|o| o.slot).map_or("?", |s| s.name()),
            elapsed.as_secs_f64()
        ),
        (true, None) => format!(
            "{}: version {} was already {}",
            ack.device,
            outcome.and_then(|o| o.version).unwrap_or(0),
            match outcome.and_then(|o| o.already) {
                Some(crate::wire::status::Already::Staged) => "staged",
                _ => "live",
            }
        ),
        (false, _) => format!(
            "{}: refused: {}",
            ack.device,
            ack.error.as_deref().unwrap_or("no reason given")
        ),
    }
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
    fn status(&mut self, status: &OnlineStatus);
    fn ack(&mut self, ack: &Ack);
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
) -> Result<Vec<Ack>, FleetError> {
    let (ack_topic, status_topic) = match &out.target {
        Target::Device(d) => (topics::ack(d), topics::status(d)),
        Target::Group(_) => (topics::ALL_ACKS.to_string(), topics::ALL_STATUS.to_string()),
    };
    client.subscribe(&ack_topic, QoS::AtLeastOnce).await?;
    client.subscribe(&status_topic, QoS::AtMostOnce).await?;
    client.subscribe(topics::ALL_TRUST, QoS::AtMostOnce).await?;
    // Let the subscriptions settle before the command goes out, so a fast device's answer is not missed; meanwhile
    // the retained trust documents name the version this command is signed under.
    let mut early = std::collections::VecDeque::new();
    let mut trust_version: Option<u64> = None;
    let settle = Instant::now() + Duration::from_millis(150);
    while let Ok(Some(ev)) = tokio::time::timeout(
        settle.saturating_duration_since(Instant::now()),
        events.recv(),
    )
    .await
    {
        match ev {
            LinkEvent::Message(p) if topics::trust_version(&mqtt::topic_of(&p)).is_some() => {
                if !p.payload.is_empty() {
                    trust_version = trust_version.max(topics::trust_version(&mqtt::topic_of(&p)));
                }
            }
            other => early.push_back(other),
        }
    }
    client.unsubscribe(topics::ALL_TRUST).await?;
    let now = now_unix();
    let body = CommandBody {
        target: out.target.clone(),
        seq: out.seq,
        issued_unix: now,
        expires_unix: now + out.expires_in.as_secs(),
        action: out.action.clone(),
        model: out.model.clone(),
    };
    let bytes = command::sign(&body, keys);
    let topic = match &out.target {
        Target::Device(d) => topics::device_cmd(d),
        Target::Group(g) => topics::group_cmd(g),
    };
    // The trust version travels as a user property, outside the signed body: an agent that lacks it fetches the
    // chain before judging the command; older agents ignore it.
    let props = PublishProperties {
        user_properties: trust_version
            .map(|v| vec![(topics::TRUST_PROPERTY.to_string(), v.to_string())])
            .unwrap_or_default(),
        ..Default::default()
    };
    client
        .publish_with_properties(topic, QoS::AtLeastOnce, false, bytes, props)
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
        let ev = match early.pop_front() {
            Some(ev) => ev,
            None => match tokio::time::timeout(left, events.recv()).await {
                Ok(Some(ev)) => ev,
                Ok(None) | Err(_) => break,
            },
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
        if topics::trust_version(&t).is_some() {
            continue;
        }
        if t.ends_with("/status") {
            let status = match DeviceStatus::from_json(&p.payload) {
                Ok(DeviceStatus::Online(s)) => s,
                Ok(DeviceStatus::Offline { .. }) => continue,
                Err(e) => {
                    tracing::warn!(topic = %t, error = %e, "ignored a status that does not decode");
                    continue;
                }
            };
            progress.status(&status);
            // The device's own status turning to the offered model also ends an update: its acknowledgement can
            // be lost when this clean session reconnects after a broker restart while the device installs. Only a
            // change counts: a device that already ran that version answers for itself (a refusal or "already").
            if let (Some(offer), Target::Device(d)) = (out.action.offer(), &out.target) {
                let model = &status.service.model;
                let offered = model.name == offer.name && model.version == offer.version;
                if status.device != *d {
                    continue;
                }
                if !offered {
                    saw_other_model = true;
                } else if saw_other_model {
                    acks.push(Ack {
                        device: d.clone(),
                        seq: Some(out.seq),
                        command: out.action.kind(),
                        ok: true,
                        unix: now_unix(),
                        result: Some(AckResult::done(Outcome {
                            installed: Some(SlotInfo {
                                name: model.name.clone(),
                                version: model.version,
                                digest: model.digest.clone(),
                                variant: String::new(),
                                reason:
                                    "seen in the device's status (its acknowledgement was lost)"
                                        .into(),
                                hardness_threshold: None,
                                budget: None,
                                baseline: None,
                                spec_digest: None,
                                spare: None,
                                signers: Vec::new(),
                                trust_version: None,
                            }),
                            slot: Some(status.service.slot),
                            seen_in: Some(SeenIn::Status),
                            ..Outcome::default()
                        })),
                        error: None,
                        refusal: None,
                    });
                    break;
                }
            }
            continue;
        }
        let ack = match Ack::from_json(&p.payload) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(topic = %t, error = %e, "ignored an acknowledgement that does not decode");
                continue;
            }
        };
        if ack.seq != Some(out.seq) {
            continue;
        }
        progress.ack(&ack);
        // An update's first answer may be an early refusal (final) or nothing until the install.
        let final_ack = !is_update
            || ack.command == out.action.kind()
            || !ack.ok
            || ack.outcome().is_some_and(|o| o.already.is_some());
        if final_ack {
            acks.push(ack);
            if matches!(out.target, Target::Device(_)) {
                break;
            }
        }
    }
    Ok(acks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::status::CommandName;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    /// The words of `outpostctl cmd` map to their actions; `remove` needs a model, anything else is named back.
    #[test]
    fn command_words_name_their_action() {
        assert_eq!(action_of(&words(&["status"]), false), Ok(Action::Status));
        assert_eq!(
            action_of(&words(&["set", "shadow.fraction", "0.5"]), false),
            Ok(Action::Set {
                key: "shadow.fraction".into(),
                value: "0.5".into()
            })
        );
        assert_eq!(action_of(&words(&["remove"]), true), Ok(Action::Remove));
        assert_eq!(
            action_of(&words(&["remove"]), false),
            Err(WordsError::RemoveNeedsModel)
        );
        assert_eq!(
            action_of(&words(&["reboot", "now"]), false),
            Err(WordsError::Unknown(words(&["reboot", "now"])))
        );
    }

    /// A refused update reads as the device and the refusal's sentence.
    #[test]
    fn a_refused_update_reads_as_its_sentence() {
        let ack = Ack {
            device: "dev-1".into(),
            seq: Some(7),
            command: CommandName::Update,
            ok: false,
            unix: 0,
            result: None,
            error: Some("version 2 is not newer than version 3".into()),
            refusal: None,
        };
        assert_eq!(
            update_line(&ack, Duration::from_secs(1)),
            "dev-1: refused: version 2 is not newer than version 3"
        );
    }
}
