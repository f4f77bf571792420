//! The operator's side of trust documents over MQTT (`outpostctl trust publish`, `rotate`, `show`): read the
//! versions published (retained, one topic per version), publish the next ones after checking that they chain onto
//! the newest, and re-sign or clear the retained commands that the newest would refuse.

use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use super::mqtt::{self, LinkEvent};
use super::{topics, FleetError};
use crate::bundle::SigningKeyFile;
use crate::trust::{chain, Role, Trust, TrustError};
use crate::wire::command;

/// How long the broker may stay quiet after a subscription before everything retained is taken as delivered.
const QUIET: Duration = Duration::from_millis(400);

/// Why publishing trust documents stopped.
#[derive(Debug, thiserror::Error)]
pub enum TrustPublishError {
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error("version {version}: {source}")]
    Document { version: u64, source: TrustError },
    #[error("version {version} does not follow anything: publish version {} first (a fleet's version 1 is what \
             `outpostctl trust init` makes from the devices' key files)", .version - 1)]
    NoPredecessor { version: u64 },
    #[error("version {version} is already published with other bytes: a version is published once (rotate from \
             the newest published version instead)")]
    Conflict { version: u64 },
    #[error("the broker did not echo version {0} within 15 s: it may not be published (check the operator's ACL: \
             readwrite outpost/v1/trust/+)")]
    NotEchoed(u64),
}

/// Collects retained messages on `filters` until the broker has been quiet for [`QUIET`].
async fn retained(
    client: &AsyncClient,
    events: &mut mpsc::Receiver<LinkEvent>,
    filters: &[&str],
) -> Result<Vec<(String, Vec<u8>)>, FleetError> {
    for f in filters {
        client.subscribe(*f, QoS::AtLeastOnce).await?;
    }
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let wait = QUIET.min(deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(wait, events.recv()).await {
            Ok(Some(LinkEvent::Message(p))) if p.retain => {
                out.push((mqtt::topic_of(&p), p.payload.to_vec()))
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    Ok(out)
}

/// The trust documents published on the broker, by the version their topic names (cleared topics left out).
pub async fn published(
    client: &AsyncClient,
    events: &mut mpsc::Receiver<LinkEvent>,
) -> Result<BTreeMap<u64, Vec<u8>>, FleetError> {
    Ok(retained(client, events, &[topics::ALL_TRUST])
        .await?
        .into_iter()
        .filter(|(_, b)| !b.is_empty())
        .filter_map(|(t, b)| topics::trust_version(&t).map(|v| (v, b)))
        .collect())
}

/// The newest trust the published chain reaches from its lowest version, checking each link (what a device that
/// walks it would take).
pub fn newest(published: &BTreeMap<u64, Vec<u8>>) -> Result<Option<Trust>, TrustPublishError> {
    let mut current: Option<Trust> = None;
    for (version, bytes) in published {
        let doc = |source| TrustPublishError::Document {
            version: *version,
            source,
        };
        current = Some(match &current {
            None => chain::decode(bytes).map_err(doc)?.1,
            Some(c) => chain::verify_next(c, bytes).map_err(doc)?,
        });
    }
    Ok(current)
}

/// Publishes `docs` (any order) after the newest published version, each retained on its own topic, once each
/// chains onto the one before (published or among `docs`); waits for the broker to echo each. Returns the newest
/// trust.
pub async fn publish(
    client: &AsyncClient,
    events: &mut mpsc::Receiver<LinkEvent>,
    docs: &[Vec<u8>],
) -> Result<Trust, TrustPublishError> {
    let mut chain_now = published(client, events).await?;
    let mut sorted = Vec::new();
    for d in docs {
        let (_, t) = chain::decode(d)
            .map_err(|source| TrustPublishError::Document { version: 0, source })?;
        sorted.push((t.version(), d.clone()));
    }
    sorted.sort_by_key(|(v, _)| *v);
    let mut current = newest(&chain_now)?;
    let mut to_send = Vec::new();
    for (version, bytes) in sorted {
        if let Some(old) = chain_now.get(&version) {
            if *old == bytes {
                continue;
            }
            return Err(TrustPublishError::Conflict { version });
        }
        let doc = |source| TrustPublishError::Document { version, source };
        let next = match &current {
            Some(c) => chain::verify_next(c, &bytes).map_err(doc)?,
            None if version == 1 => chain::decode(&bytes).map_err(doc)?.1,
            None => return Err(TrustPublishError::NoPredecessor { version }),
        };
        chain_now.insert(version, bytes.clone());
        to_send.push((version, bytes));
        current = Some(next);
    }
    for (version, bytes) in &to_send {
        client
            .publish(
                topics::trust(*version),
                QoS::AtLeastOnce,
                true,
                bytes.clone(),
            )
            .await
            .map_err(FleetError::from)?;
    }
    // The subscription of `published` is still on: the broker echoes each publication back.
    let expected = to_send
        .into_iter()
        .map(|(v, b)| (topics::trust(v), b))
        .collect();
    if let Some(topic) = echoed(events, expected).await {
        return Err(TrustPublishError::NotEchoed(
            topics::trust_version(&topic).unwrap_or(0),
        ));
    }
    current.ok_or(TrustPublishError::NoPredecessor { version: 1 })
}

/// What happened to a retained command the newest trust would refuse.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RetainedFix {
    pub topic: String,
    /// `resigned` (same body, signed by the given keys) or `cleared` (no key given could sign it).
    pub action: &'static str,
}

/// Re-signs with `keys` (when they meet the commands role of `trust`) or clears every retained command whose
/// signatures `trust` would refuse, so that a device coming back does not meet a refusal it cannot act on.
pub async fn fix_retained_commands(
    client: &AsyncClient,
    events: &mut mpsc::Receiver<LinkEvent>,
    trust: &Trust,
    keys: &[&SigningKeyFile],
) -> Result<Vec<RetainedFix>, FleetError> {
    let (role_keys, threshold) = trust
        .role(Role::Commands)
        .map(|(k, t)| (k.clone(), t))
        .unwrap_or_default();
    let found = retained(
        client,
        events,
        &["outpost/v1/device/+/cmd", "outpost/v1/group/+/cmd"],
    )
    .await?;
    let mut fixes = Vec::new();
    let mut expected = BTreeMap::new();
    for (topic, bytes) in found {
        if bytes.is_empty()
            || command::signed_enough(&bytes, &role_keys, threshold).unwrap_or(false)
        {
            continue;
        }
        let resigned = command::resign(&bytes, keys)
            .ok()
            .filter(|b| command::signed_enough(b, &role_keys, threshold).unwrap_or(false));
        let (payload, action) = match resigned {
            Some(b) => (b, "resigned"),
            None => (Vec::new(), "cleared"),
        };
        let payload_copy = payload.clone();
        let props = PublishProperties {
            user_properties: vec![(
                topics::TRUST_PROPERTY.to_string(),
                trust.version().to_string(),
            )],
            ..Default::default()
        };
        client
            .publish_with_properties(topic.clone(), QoS::AtLeastOnce, true, payload, props)
            .await?;
        expected.insert(topic.clone(), payload_copy);
        fixes.push(RetainedFix { topic, action });
    }
    if let Some(topic) = echoed(events, expected).await {
        return Err(FleetError::Client(format!(
            "the broker did not echo the fixed retained command on {topic} within 15 s (check the operator's ACL: \
             readwrite on the command topics)"
        )));
    }
    Ok(fixes)
}

/// Waits until the broker echoed each publication in `expected` (topic → payload) to this client's subscriptions;
/// the first topic still missing after 15 s, if any.
async fn echoed(
    events: &mut mpsc::Receiver<LinkEvent>,
    mut expected: BTreeMap<String, Vec<u8>>,
) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while let Some(first) = expected.keys().next().cloned() {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Some(LinkEvent::Message(p))) => {
                let t = mqtt::topic_of(&p);
                if expected.get(&t).is_some_and(|b| **b == p.payload[..]) {
                    expected.remove(&t);
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return Some(first),
        }
    }
    None
}
