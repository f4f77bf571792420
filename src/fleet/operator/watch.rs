//! `outpostctl watch`: the fleet's retained device statuses and rollout summaries, followed live, and the table an
//! operator reads (one row per model of each device, then one per rollout).

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::fleet::mqtt::{self, LinkEvent};
use crate::fleet::{topics, FleetError};
use crate::wire::status::DeviceStatus;

/// The fleet as `watch` sees it: device statuses and rollout summaries, by id and by rollout name.
#[derive(Debug, Default)]
pub struct Fleet {
    pub devices: BTreeMap<String, DeviceStatus>,
    pub rollouts: BTreeMap<String, crate::rollout::RolloutSummary>,
}

async fn watch_subscribe(client: &AsyncClient) -> Result<(), FleetError> {
    client
        .subscribe(topics::ALL_STATUS, QoS::AtLeastOnce)
        .await?;
    client
        .subscribe(topics::ALL_ROLLOUTS, QoS::AtLeastOnce)
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
    mut show: impl FnMut(&Fleet, &[u8]),
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
                let topic = mqtt::topic_of(&p);
                if let Some(name) = topic
                    .strip_prefix("outpost/v1/rollout/")
                    .and_then(|r| r.strip_suffix("/status"))
                {
                    // A summary that does not read (another version's driver) is left out of the view.
                    let Ok(v) =
                        serde_json::from_slice::<crate::rollout::RolloutSummary>(&p.payload)
                    else {
                        continue;
                    };
                    fleet.rollouts.insert(name.to_string(), v);
                } else {
                    let device = topic
                        .strip_prefix("outpost/v1/device/")
                        .and_then(|r| r.strip_suffix("/status"))
                        .unwrap_or("?")
                        .to_string();
                    match DeviceStatus::from_json(&p.payload) {
                        Ok(s) => {
                            fleet.devices.insert(device, s);
                        }
                        Err(e) => {
                            tracing::warn!(%device, error = %e, "ignored a status that does not decode");
                            continue;
                        }
                    }
                }
                show(&fleet, &p.payload);
            }
            LinkEvent::Connected { session_present } => {
                if !session_present {
                    watch_subscribe(client).await?;
                }
            }
            LinkEvent::Disconnected { error, .. } => {
                tracing::warn!(%error, "lost the broker; reconnecting")
            }
            LinkEvent::Subscribed => {}
        }
    }
}

impl Fleet {
    /// The table `outpostctl watch` prints: a row per model of each device (the default model first, with the
    /// device's request rate and its clock and trust), then a row per rollout. `-` stands for what an older agent
    /// does not report.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<20} {:<8} {:<14} {:>8} {:<6} {:<8} {:>9} {:>9} {:>7} {:>13} {:<6} {:<12} TRUST",
            "DEVICE",
            "STATE",
            "MODEL",
            "VERSION",
            "SLOT",
            "TRIAL",
            "P50_US",
            "P99_US",
            "REQ/S",
            "FWD/SKIPPED",
            "DRIFT",
            "CLOCK"
        );
        let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        for (device, s) in &self.devices {
            let Some(s) = s.online() else {
                let _ = writeln!(out, "{device:<20} offline");
                continue;
            };
            let state = match &s.service.download {
                None => "online".to_string(),
                Some(dl) => format!("dl {}/{}", dl.chunks_done, dl.chunks_total),
            };
            // The device's clock: its health, `-` from agents before the time floor.
            let clock = s.host.clock.as_ref().map_or("-", |c| c.health.name());
            // Its trust version and root key ids; agents before trust documents report none.
            let trust = match &s.host.trust {
                None => "no trust support".to_string(),
                Some(t) => match t.version {
                    Some(v) => format!("v{v} root {}", t.root_keys.join(",")),
                    None => "NO TRUST (see status)".to_string(),
                },
            };
            let rows = std::iter::once((&s.service, Some(s.request_rate)))
                .chain(s.models.values().map(|m| (m, None)));
            for (i, (svc, rate)) in rows.enumerate() {
                let trial = svc
                    .trial
                    .as_ref()
                    .map_or("-".to_string(), |t| t.requests.to_string());
                // The forward budget's spend (forwarded/skipped) and the drift alarm.
                let budget = svc
                    .forward
                    .as_ref()
                    .and_then(|f| f.budget.as_ref())
                    .map_or("-".to_string(), |b| {
                        format!("{}/{}", b.forwarded, b.skipped)
                    });
                let drift = svc
                    .drift
                    .as_ref()
                    .map_or("-", |d| if d.drift { "DRIFT" } else { "ok" });
                let first = i == 0;
                let _ = writeln!(
                    out,
                    "{:<20} {:<8} {:<14} {:>8} {:<6} {:<8} {:>9} {:>9} {:>7} {:>13} {:<6} {:<12} {}",
                    if first { device.as_str() } else { "" },
                    if first { state.as_str() } else { "" },
                    svc.model.name,
                    svc.model.version,
                    svc.slot.name(),
                    trial,
                    opt(svc.latency_us.p50),
                    opt(svc.latency_us.p99),
                    rate.map_or("-".to_string(), |r| r.to_string()),
                    budget,
                    drift,
                    if first { clock } else { "" },
                    if first { trust.as_str() } else { "" }
                );
            }
        }
        if !self.rollouts.is_empty() {
            let _ = writeln!(
                out,
                "\n{:<24} {:<10} {:>5} {:<8} {:>9} {:>7} {:>9}  GATE",
                "ROLLOUT", "GROUP", "WAVE", "PHASE", "REPORTED", "FAILED", "LIVE"
            );
        }
        for (name, r) in &self.rollouts {
            let _ = writeln!(
                out,
                "{:<24} {:<10} {:>5} {:<8} {:>9} {:>7} {:>9}  {}",
                name,
                r.group,
                format!("{}/{}", r.wave, r.waves.len()),
                format!("{}{}", r.phase, if r.paused { "*" } else { "" }),
                format!("{}/{}", r.gate.reporting, r.gate.targeted),
                r.failed,
                r.live_on_version,
                r.reason.as_deref().unwrap_or(&r.decision)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An offline device is one row that says so, under the header; no rollout section without rollouts.
    #[test]
    fn the_table_shows_an_offline_device_and_no_empty_rollout_section() {
        let mut fleet = Fleet::default();
        fleet.devices.insert(
            "dev-1".into(),
            DeviceStatus::Offline {
                device: "dev-1".into(),
            },
        );
        let table = fleet.table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("DEVICE") && lines[0].ends_with("TRUST"));
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["dev-1", "offline"]
        );
        assert_eq!(lines.len(), 2, "{table}");
        assert!(!table.contains("ROLLOUT"));
    }
}
