//! The rollout driver: carries a [`crate::rollout::Progress`] out over MQTT. It follows the group's retained status
//! and acknowledgements, sends each device the commands its wave owes (signed, one sequence number each, reserved
//! durably before use), serves the bundle's chunks, applies the gates, and on a halt or abort abandons the version
//! fleet-wide with one retained group command, so a device offline at that moment gets it when it returns.
//!
//! Its MQTT session is persistent (fixed client id, one hour of expiry): acknowledgements that arrive while the
//! operator process is down wait at the broker, and a restarted driver reads the retained statuses again.

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use super::mqtt::{self, LinkEvent, Settings};
use super::topics;
use crate::bundle::{now_unix, SigningKeyFile};
use crate::rollout::{
    Control, Decision, DeviceView, Owed, Phase, Progress, ProgressFile, RolloutError,
};
use crate::wire::command::{self, Action, CommandBody, Target};
use crate::wire::status::{Ack, DeviceStatus};

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn fleet_err(e: impl std::fmt::Display) -> RolloutError {
    RolloutError::Fleet(e.to_string())
}

/// How often gates are judged and owed commands sent.
const TICK: Duration = Duration::from_millis(200);
/// A device command's lifetime; the fleet-wide abandon lives a week.
const COMMAND_TTL_S: u64 = 3600;
const ABANDON_TTL_S: u64 = 7 * 24 * 3600;

/// Runs the rollout in `file` until it is done, halted or aborted (or `shutdown`); returns the final phase.
/// `show` gets the summary on every change.
pub async fn drive(
    file: ProgressFile,
    mut settings: Settings,
    keys: Vec<SigningKeyFile>,
    shutdown: CancellationToken,
    mut show: impl FnMut(&crate::rollout::RolloutSummary),
) -> Result<Phase, RolloutError> {
    let mut progress = file
        .load()?
        .ok_or_else(|| RolloutError::NoRollout(file.path().display().to_string()))?;
    let name = progress.plan.name.clone();
    settings.client_id = format!("outpost-rollout-{name}");
    settings.session_expiry_s = 3600;
    let mut serve_settings = settings.clone();
    serve_settings.client_id = format!("outpost-rollout-{name}-serve");
    serve_settings.session_expiry_s = 0;

    let (client, mut events) = super::operator::connect(&settings, shutdown.clone())
        .await
        .map_err(fleet_err)?;
    subscribe(&client).await?;
    let serving = shutdown.child_token();
    let served = Arc::new(super::serve::Served::default());
    let server = tokio::spawn(super::serve::serve(
        serve_settings,
        vec![(progress.plan.offer.clone(), progress.plan.bundle.clone())],
        served.clone(),
        serving.clone(),
    ));
    let keys: Vec<&SigningKeyFile> = keys.iter().collect();
    let mut devices: BTreeMap<String, DeviceView> = BTreeMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_shown = String::new();
    let mut last_published = std::time::Instant::now() - Duration::from_secs(60);
    // Statuses retained at the broker arrive right after subscribing; give them a moment before the first
    // decisions, so a restarted driver does not mistake "not heard yet" for "not there".
    let settle_until = std::time::Instant::now() + Duration::from_millis(1500);
    loop {
        let mut dirty = false;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            ev = events.recv() => {
                let Some(ev) = ev else { break };
                match ev {
                    LinkEvent::Message(p) => {
                        let topic = mqtt::topic_of(&p);
                        let Some(device) = topic.strip_prefix("outpost/v1/device/").and_then(|r| r.split('/').next()) else {
                            continue;
                        };
                        if topic.ends_with("/status") {
                            match DeviceStatus::from_json(&p.payload) {
                                Ok(DeviceStatus::Offline { .. }) => {
                                    if let Some(d) = devices.get_mut(device) {
                                        d.online = false;
                                    }
                                }
                                Ok(DeviceStatus::Online(s)) => {
                                    if let Some(view) = DeviceView::from_status(&s, &progress.plan.group, &progress.plan.offer.name) {
                                        dirty |= progress.observe(device, &view, now_ms());
                                        devices.insert(device.to_string(), view);
                                    }
                                }
                                Err(e) => tracing::warn!(%device, error = %e, "ignored a status that does not decode"),
                            }
                        } else if topic.ends_with("/ack") {
                            match Ack::from_json(&p.payload) {
                                Ok(Ack { ok: false, seq: Some(seq), error, .. }) => {
                                    let error = error.unwrap_or_else(|| "failed".into());
                                    dirty |= progress.command_failed(device, seq, &error, now_ms());
                                }
                                Ok(_) => {}
                                Err(e) => tracing::warn!(%device, error = %e, "ignored an acknowledgement that does not decode"),
                            }
                        }
                    }
                    LinkEvent::Connected { session_present } => {
                        if !session_present {
                            subscribe(&client).await?;
                        }
                    }
                    LinkEvent::Disconnected { error, .. } => tracing::warn!(%error, "lost the broker; reconnecting"),
                    LinkEvent::Subscribed => {}
                }
            }
            _ = tick.tick() => {
                let now = now_ms();
                let f = file.clone();
                let control = crate::blocking::run(move || f.control()).await?;
                dirty |= apply_control(control, &mut progress, now);
                if std::time::Instant::now() >= settle_until {
                    if !progress.phase.finished() && !progress.paused {
                        dirty |= send_owed(&file, &client, &keys, &mut progress, &devices).await?;
                        let reading = progress.read(&devices, now);
                        match progress.decide(&reading) {
                            Decision::Advance => {
                                progress = progress.advance(now);
                                tracing::info!(wave = progress.wave + 1, phase = progress.phase.name(), "gate passed");
                                dirty = true;
                            }
                            Decision::Halt(reason) => {
                                tracing::warn!(%reason, "gate failed: halting the rollout");
                                progress = progress.halt(reason, now);
                                dirty = true;
                            }
                            Decision::Wait(_) => {}
                        }
                    }
                    if matches!(progress.phase, Phase::Halted(_) | Phase::Aborted(_)) && progress.abandon_seq.is_none() {
                        abandon(&file, &client, &keys, &mut progress, &devices).await?;
                        dirty = true;
                    }
                }
                let summary = progress.summary(&devices, now);
                let text = serde_json::to_string(&summary).unwrap_or_default();
                // Published on change and every 2 s (observed time moves on).
                if text != last_shown || last_published.elapsed() >= Duration::from_secs(2) {
                    if text != last_shown {
                        show(&summary);
                    }
                    client
                        .publish(topics::rollout_status(&name), QoS::AtLeastOnce, true, text.clone())
                        .await
                        .map_err(fleet_err)?;
                    last_shown = text;
                    last_published = std::time::Instant::now();
                }
                if progress.phase.finished() && progress.abandon_seq.is_some() || progress.phase == Phase::Done {
                    if dirty {
                        save(&file, &progress).await?;
                    }
                    break;
                }
            }
        }
        if dirty {
            save(&file, &progress).await?;
        }
    }
    serving.cancel();
    let _ = server.await;
    // Let the last publishes out before the session goes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = client.disconnect().await;
    Ok(progress.phase)
}

async fn subscribe(client: &AsyncClient) -> Result<(), RolloutError> {
    client
        .subscribe(topics::ALL_STATUS, QoS::AtLeastOnce)
        .await
        .map_err(fleet_err)?;
    client
        .subscribe(topics::ALL_ACKS, QoS::AtLeastOnce)
        .await
        .map_err(fleet_err)
}

/// The one durable write of progress (temp file, fsync, rename), off the async threads.
async fn save(file: &ProgressFile, progress: &Progress) -> Result<(), RolloutError> {
    let (f, p) = (file.clone(), progress.clone());
    crate::blocking::run(move || f.save(&p)).await
}

/// Pause, resume and abort requests from `outpostctl rollout`.
fn apply_control(control: Control, p: &mut Progress, now: u64) -> bool {
    let Control { paused, abort } = control;
    if p.phase.finished() {
        return false;
    }
    if let Some(reason) = abort {
        *p = p.abort(reason, now);
        return true;
    }
    if paused != p.paused {
        p.paused = paused;
        p.note(
            now,
            if paused {
                "paused by the operator"
            } else {
                "resumed by the operator"
            }
            .to_string(),
        );
        return true;
    }
    false
}

/// `model`: named only where it must be (the rollout's model is not the device's default), so that agents from
/// before the model repository, which know only unnamed commands, keep taking rollouts of their one model.
fn signed(
    target: Target,
    seq: u64,
    ttl_s: u64,
    action: Action,
    model: Option<String>,
    keys: &[&SigningKeyFile],
) -> Vec<u8> {
    let now = now_unix();
    command::sign(
        &CommandBody {
            target,
            seq,
            issued_unix: now,
            expires_unix: now + ttl_s,
            action,
            model,
        },
        keys,
    )
}

/// Sends what the current phase owes. Sequence numbers are reserved and saved first; a device is marked as sent
/// only after its command is out, so a kill in between resends (devices take a repeat as a no-op) rather than skip.
async fn send_owed(
    file: &ProgressFile,
    client: &AsyncClient,
    keys: &[&SigningKeyFile],
    progress: &mut Progress,
    devices: &BTreeMap<String, DeviceView>,
) -> Result<bool, RolloutError> {
    let owed = progress.owed(devices);
    if owed.is_empty() {
        return Ok(false);
    }
    let first = progress.reserve(owed.len() as u64, now_ms());
    save(file, progress).await?;
    let plan = progress.plan.clone();
    for (i, (device, what)) in owed.into_iter().enumerate() {
        let seq = first + i as u64;
        let action = match what {
            Owed::Candidate => Action::Candidate {
                offer: plan.offer.clone(),
                shadow: plan.shadow_fraction,
                split: plan.split,
            },
            Owed::Activate => Action::Activate {
                version: plan.version(),
            },
            Owed::Update => Action::Update(plan.offer.clone()),
        };
        // An update or candidate names its model in the offer; activate names it when it is not the default.
        let named = devices.get(&device).is_some_and(|v| !v.default_model)
            && matches!(action, Action::Activate { .. });
        let bytes = signed(
            Target::Device(device.clone()),
            seq,
            COMMAND_TTL_S,
            action,
            named.then(|| plan.offer.name.clone()),
            keys,
        );
        client
            .publish(topics::device_cmd(&device), QoS::AtLeastOnce, false, bytes)
            .await
            .map_err(fleet_err)?;
        let wave = progress.wave;
        let s = progress.sent.entry(device).or_default();
        s.wave = s.wave.max(wave);
        match what {
            Owed::Candidate => s.candidate = Some(seq),
            Owed::Activate => s.activate = Some(seq),
            Owed::Update => s.update = Some(seq),
        }
    }
    Ok(true)
}

/// The fleet-wide rollback: one retained group command that drops the version wherever it is.
async fn abandon(
    file: &ProgressFile,
    client: &AsyncClient,
    keys: &[&SigningKeyFile],
    progress: &mut Progress,
    devices: &BTreeMap<String, DeviceView>,
) -> Result<(), RolloutError> {
    let seq = progress.reserve(1, now_ms());
    save(file, progress).await?;
    let version = progress.plan.version();
    // One retained command for the group: it names the model unless every device heard from has it as its default
    // (a group of agents before the repository, or of one model), so that it never reaches a device's other model.
    // Heard from none (a halt before any status arrived): named, for the same reason.
    let named = devices.is_empty() || devices.values().any(|v| !v.default_model);
    let bytes = signed(
        Target::Group(progress.plan.group.clone()),
        seq,
        ABANDON_TTL_S,
        Action::Abandon { version },
        named.then(|| progress.plan.offer.name.clone()),
        keys,
    );
    client
        .publish(
            topics::group_cmd(&progress.plan.group),
            QoS::AtLeastOnce,
            true,
            bytes,
        )
        .await
        .map_err(fleet_err)?;
    progress.abandon_seq = Some(seq);
    let now = now_ms();
    progress.note(
        now,
        format!(
            "abandon of version {version} sent to group {}",
            progress.plan.group
        ),
    );
    Ok(())
}
