//! The agent's side of the fleet link: one task that owns the MQTT client, takes commands and update offers,
//! runs downloads, and publishes status.
//!
//! Slot changes go through the same library calls as `outpost install` / `rollback` / `promote` (a locked record
//! transition); the daemon's slot controller then swaps the model, exactly as it does for an operator on the device.

use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use super::command::{self, Action, Checker, CommandBody, Offer};
use super::mqtt::{self, Broker, LinkEvent, Settings, TlsFiles};
use super::transfer::{decode_chunk, Accepted, ChunkRequest, Download};
use super::{topics, FleetError};
use crate::agent::Service;
use crate::bundle::{now_unix, Policy, TrustedKeys};
use crate::config::Config;
use crate::slots::SlotStore;
use crate::store::Records;

/// A slot-record change run off the async threads.
type SlotJob = Box<dyn FnOnce(&SlotStore) -> Result<serde_json::Value, String> + Send>;

const LAST_SEQ: &str = "command.last_seq";
const SETTINGS: &str = "settings";

/// Runtime settings that the `set` command may change, and their checks.
pub const SETTABLE: &[&str] = &[
    "hardness.threshold",
    "telemetry.heartbeat_s",
    "shadow.fraction",
    "shadow.split",
];

fn check_setting(key: &str, value: &str) -> Result<(), String> {
    match key {
        "hardness.threshold" => match value.parse::<f32>() {
            Ok(v) if v.is_finite() && (0.0..=100.0).contains(&v) => Ok(()),
            _ => Err(format!("{key} takes a number from 0 to 100, not {value:?}")),
        },
        "shadow.fraction" | "shadow.split" => match value.parse::<f64>() {
            Ok(v) if (0.0..=1.0).contains(&v) => Ok(()),
            _ => Err(format!("{key} takes a fraction from 0 to 1, not {value:?}")),
        },
        "telemetry.heartbeat_s" => match value.parse::<u64>() {
            Ok(v) if (1..=86_400).contains(&v) => Ok(()),
            _ => Err(format!(
                "{key} takes whole seconds from 1 to 86400, not {value:?}"
            )),
        },
        _ => Err(format!(
            "{key} cannot be set remotely (allowed: {})",
            SETTABLE.join(", ")
        )),
    }
}

/// Everything the link works with.
pub struct Link {
    service: Arc<Service>,
    config: Config,
    device: String,
    records: Records,
    slots: SlotStore,
    keys: TrustedKeys,
    incoming: PathBuf,
    download: Option<Download>,
    heartbeat: Duration,
    started: Instant,
    last_marker: Option<(u64, Option<usize>, u64)>,
    last_published: Instant,
    last_requests: (u64, Instant),
    /// Hard cases: the forwarder, new cases from the request path, and cases sent and not yet answered.
    forward: Option<(
        Arc<crate::forward::Forwarder>,
        tokio::sync::mpsc::Receiver<Vec<u8>>,
    )>,
    in_flight: std::collections::HashMap<String, Instant>,
}

/// Connection settings for the agent, from the config.
pub fn settings(config: &Config) -> Result<Settings, FleetError> {
    let f = &config.fleet;
    let url = f
        .broker
        .as_deref()
        .ok_or_else(|| FleetError::BrokerUrl(String::new(), "no broker configured".into()))?;
    let offline = serde_json::json!({"device": f.device_id, "state": "offline"}).to_string();
    Ok(Settings {
        broker: Broker::parse(url)?,
        client_id: format!("outpost-{}", f.device_id),
        tls: TlsFiles {
            ca: f.ca_file.clone(),
            cert: f.cert_file.clone(),
            key: f.key_file.clone(),
        },
        keep_alive: Duration::from_secs(f.keep_alive_s),
        max_packet: f.max_packet_bytes,
        session_expiry_s: 3600,
        last_will: Some((topics::status(&f.device_id), offline.into_bytes())),
    })
}

impl Link {
    pub fn new(
        service: Arc<Service>,
        config: &Config,
        records: Records,
    ) -> Result<Link, FleetError> {
        let keys_path = config
            .fleet
            .command_keys
            .clone()
            .or(config.slots.trusted_keys.clone());
        let keys = match keys_path {
            Some(p) => TrustedKeys::from_file(&p).map_err(|e| FleetError::Keys(e.to_string()))?,
            None => {
                tracing::warn!("no trusted keys (slots.trusted_keys): every command and update will be refused");
                TrustedKeys::default()
            }
        };
        let state_dir = &config.agent.state_dir;
        let slots = SlotStore::new(state_dir).map_err(|e| FleetError::Io {
            path: state_dir.display().to_string(),
            message: e.to_string(),
        })?;
        let stored = records
            .get::<Vec<(String, String)>>(SETTINGS)?
            .unwrap_or_default();
        // Settings made by `set` survive restarts.
        for (k, v) in &stored {
            service.set_setting(k, v);
        }
        let heartbeat = stored
            .iter()
            .find(|(k, _)| k == "telemetry.heartbeat_s")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(config.fleet.heartbeat_s);
        Ok(Link {
            service,
            device: config.fleet.device_id.clone(),
            incoming: state_dir.join("incoming"),
            config: config.clone(),
            records,
            slots,
            keys,
            download: None,
            heartbeat: Duration::from_secs(heartbeat),
            started: Instant::now(),
            last_marker: None,
            last_published: Instant::now(),
            last_requests: (0, Instant::now()),
            forward: None,
            in_flight: std::collections::HashMap::new(),
        })
    }

    /// Carries hard cases to the cloud tier.
    pub fn with_forwarder(
        mut self,
        f: Arc<crate::forward::Forwarder>,
        rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    ) -> Link {
        self.forward = Some((f, rx));
        self
    }

    /// Runs until `shutdown`; the last status published says `offline`.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), FleetError> {
        let settings = settings(&self.config)?;
        tracing::info!(broker = %settings.broker, device = %self.device, "fleet link starting");
        let (client, mut events) = mqtt::connect(&settings, shutdown.clone())?;
        self.download = {
            let (r, dir) = (self.records.clone(), self.incoming.clone());
            tokio::task::spawn_blocking(move || Download::resume(r, &dir))
                .await
                .map_err(|e| FleetError::Client(e.to_string()))?
                .unwrap_or_else(|e| {
                    tracing::error!(error = %e, "cannot resume the recorded download; dropping it");
                    None
                })
        };
        if let Some(d) = &self.download {
            tracing::info!(bundle = %d.offer.bundle_hex(), done = d.done_count(), total = d.total(), "resuming a download");
            self.service.set_download(Some(d.summary()));
        }
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut connected = false;
        let mut ever_connected = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                ev = events.recv() => {
                    let Some(ev) = ev else { break };
                    match ev {
                        LinkEvent::Connected { session_present } => {
                            connected = true;
                            ever_connected = true;
                            tracing::info!(session_present, "connected to the broker");
                            if !session_present {
                                self.subscribe(&client).await?;
                            }
                            if let Some(d) = self.download.as_mut() {
                                d.forget_in_flight();
                            }
                            self.publish_status(&client, true).await;
                            self.advance(&client).await;
                        }
                        LinkEvent::Disconnected { error, retry_in } => {
                            if connected {
                                tracing::warn!(%error, retry_in_ms = retry_in.as_millis() as u64, "lost the broker; reconnecting");
                            } else if ever_connected {
                                tracing::warn!(%error, retry_in_ms = retry_in.as_millis() as u64, "the broker is still unreachable; retrying");
                            } else {
                                tracing::error!(%error, retry_in_ms = retry_in.as_millis() as u64, "cannot connect to the broker (check fleet.broker, fleet.ca_file, fleet.cert_file and fleet.key_file)");
                            }
                            connected = false;
                        }
                        LinkEvent::Message(p) => {
                            if connected {
                                self.on_message(&client, p).await;
                            }
                        }
                    }
                }
                _ = tick.tick() => {
                    if connected {
                        self.on_tick(&client).await;
                        self.resend(&client).await;
                    }
                }
                case = async {
                    match self.forward.as_mut() {
                        Some((_, rx)) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    // Offline, the case waits in the outbox for the paced resend; one the resend already sent is
                    // not sent twice.
                    if let (Some(case), true) = (case, connected) {
                        let sent = crate::store::outbox::case_id(&case)
                            .is_some_and(|id| self.in_flight.contains_key(&id));
                        if !sent {
                            self.send_case(&client, case).await;
                        }
                    }
                }
            }
        }
        let offline = serde_json::json!({"device": self.device, "state": "offline"}).to_string();
        let _ = client
            .publish(
                topics::status(&self.device),
                QoS::AtLeastOnce,
                true,
                offline,
            )
            .await;
        let _ = client.disconnect().await;
        Ok(())
    }

    async fn subscribe(&self, client: &AsyncClient) -> Result<(), FleetError> {
        client
            .subscribe(topics::device_cmd(&self.device), QoS::AtLeastOnce)
            .await?;
        client
            .subscribe(topics::chunk(&self.device), QoS::AtLeastOnce)
            .await?;
        if let Some(g) = &self.config.fleet.group {
            client
                .subscribe(topics::group_cmd(g), QoS::AtLeastOnce)
                .await?;
        }
        if self.forward.is_some() {
            client
                .subscribe(topics::cloud_reply(&self.device), QoS::AtLeastOnce)
                .await?;
        }
        Ok(())
    }

    async fn on_message(&mut self, client: &AsyncClient, p: Publish) {
        let topic = mqtt::topic_of(&p);
        if topic == topics::chunk(&self.device) {
            self.on_chunk(client, &p.payload).await;
        } else if topic == topics::cloud_reply(&self.device) {
            self.on_answer(&p).await;
        } else if topic.ends_with("/cmd") {
            self.on_command(client, &p.payload, p.retain).await;
        } else {
            tracing::debug!(%topic, "ignored a message on an unexpected topic");
        }
    }

    async fn send_case(&mut self, client: &AsyncClient, case: Vec<u8>) {
        let Some(id) = crate::store::outbox::case_id(&case) else {
            return;
        };
        let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
            response_topic: Some(topics::cloud_reply(&self.device)),
            correlation_data: Some(id.clone().into_bytes().into()),
            ..Default::default()
        };
        match client
            .publish_with_properties(
                topics::cloud_request(&self.device),
                QoS::AtLeastOnce,
                false,
                case,
                props,
            )
            .await
        {
            Ok(()) => {
                self.in_flight.insert(id, Instant::now());
            }
            Err(e) => tracing::warn!(error = %e, "cannot send a hard case; it stays queued"),
        }
    }

    /// Resends queued cases that are not in flight (or whose answer is overdue), at most `resend_per_s`.
    async fn resend(&mut self, client: &AsyncClient) {
        let Some((f, _)) = &self.forward else {
            return;
        };
        if f.outbox_len() == 0 {
            self.in_flight.clear();
            return;
        }
        let per_tick = (self.config.forward.resend_per_s as usize / 10).max(1);
        let retry = Duration::from_millis(self.config.forward.retry_ms);
        let f = f.clone();
        let scan = per_tick + self.in_flight.len();
        let queued = tokio::task::spawn_blocking(move || f.queued(scan))
            .await
            .unwrap_or_default();
        let now = Instant::now();
        let mut sent = 0;
        for case in queued {
            if sent >= per_tick {
                break;
            }
            let Some(id) = crate::store::outbox::case_id(&case) else {
                continue;
            };
            if self
                .in_flight
                .get(&id)
                .is_some_and(|t| now.saturating_duration_since(*t) < retry)
            {
                continue;
            }
            self.send_case(client, case).await;
            sent += 1;
        }
    }

    /// An answer is believed only after the forwarder has verified it; a refused one changes nothing but a counter.
    async fn on_answer(&mut self, p: &Publish) {
        let Some((f, _)) = &self.forward else {
            return;
        };
        let props = p.properties.clone().unwrap_or_default();
        let (f, payload) = (f.clone(), p.payload.clone());
        let received = tokio::task::spawn_blocking(move || {
            f.receive(
                &payload,
                props.content_type.as_deref(),
                props.correlation_data.as_deref(),
            )
        })
        .await;
        match received {
            Ok(Ok(answer)) => {
                self.in_flight.remove(&answer.id);
                self.service.note_cloud_label(&answer.id, &answer.label);
            }
            Ok(Err(e @ crate::forward::ForwardError::Duplicate(_))) => {
                tracing::debug!(error = %e, "dropped a repeated cloud answer")
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, reason = e.reason(), "refused a cloud answer; the edge answers for it")
            }
            Err(e) => tracing::error!(error = %e, "the answer check failed"),
        }
    }

    async fn ack(
        &self,
        client: &AsyncClient,
        seq: Option<u64>,
        action: &str,
        result: Result<serde_json::Value, String>,
    ) {
        let (ok, detail) = match result {
            Ok(v) => (true, serde_json::json!({"result": v})),
            Err(e) => (false, serde_json::json!({"error": e})),
        };
        let mut msg = serde_json::json!({
            "device": self.device,
            "seq": seq,
            "command": action,
            "ok": ok,
            "unix": now_unix(),
        });
        if let (Some(m), Some(d)) = (msg.as_object_mut(), detail.as_object()) {
            m.extend(d.clone());
        }
        metrics::counter!(crate::telemetry::COMMANDS, "command" => action.to_string(), "ok" => ok.to_string()).increment(1);
        if !ok {
            tracing::warn!(seq, command = action, error = %msg["error"], "command refused or failed");
        }
        let _ = client
            .publish(
                topics::ack(&self.device),
                QoS::AtLeastOnce,
                false,
                msg.to_string(),
            )
            .await;
    }

    /// `retained`: the broker delivered a retained command at subscription (a rollout's fleet-wide abandon). Once
    /// seen, it comes again at every new session; that repeat is expected, so it is not acknowledged as a refusal.
    async fn on_command(&mut self, client: &AsyncClient, payload: &[u8], retained: bool) {
        if !self.in_flight.is_empty() && self.in_flight.len() > 100_000 {
            self.in_flight.clear(); // bounded: a lost answer only costs a resend
        }
        let last_seq: u64 = self.records.get(LAST_SEQ).ok().flatten().unwrap_or(0);
        let checker = Checker {
            keys: &self.keys,
            threshold: self.config.slots.threshold,
            device: &self.device,
            group: self.config.fleet.group.as_deref(),
            now_unix: now_unix(),
            last_seq,
        };
        let body = match command::verify(payload, &checker) {
            Ok(b) => b,
            Err(command::CommandError::Replayed { seq, .. }) if retained => {
                tracing::debug!(seq, "a retained command already applied");
                return;
            }
            Err(e) => {
                self.ack(
                    client,
                    command::peek_seq(payload),
                    "refused",
                    Err(e.to_string()),
                )
                .await;
                return;
            }
        };
        // The sequence number is durable before anything runs: a crash cannot make a command run twice.
        let records = self.records.clone();
        let seq = body.seq;
        if let Err(e) = tokio::task::spawn_blocking(move || records.put(LAST_SEQ, &seq)).await {
            tracing::error!(error = %e, "cannot record the command sequence");
            return;
        }
        let action = body.action.name();
        let result = self.execute(client, &body).await;
        if let Some(r) = result {
            self.ack(client, Some(body.seq), action, r).await;
        }
    }

    /// Runs a verified command; `None` when the acknowledgement comes later (an update acks when installed).
    async fn execute(
        &mut self,
        client: &AsyncClient,
        body: &CommandBody,
    ) -> Option<Result<serde_json::Value, String>> {
        let slots = self.slots.clone();
        let blocking = |f: SlotJob| async move {
            tokio::task::spawn_blocking(move || f(&slots))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r)
        };
        match &body.action {
            Action::Status => {
                self.publish_status(client, true).await;
                Some(Ok(self.status()))
            }
            Action::Rollback => Some(
                blocking(Box::new(|s| {
                    let (st, ()) = s
                        .update(|s| Ok((s.rollback()?, ())))
                        .map_err(|e| e.to_string())?;
                    Ok(serde_json::json!({"now_active": st.active_info().map(|i| i.version)}))
                }))
                .await,
            ),
            Action::Promote => Some(
                blocking(Box::new(|s| {
                    let (st, ()) = s
                        .update(|s| Ok((s.commit()?, ())))
                        .map_err(|e| e.to_string())?;
                    Ok(serde_json::json!({"committed": st.active_info().map(|i| i.version)}))
                }))
                .await,
            ),
            Action::Set { key, value } => {
                if let Err(e) = check_setting(key, value) {
                    return Some(Err(e));
                }
                Some(
                    self.store_settings(&[(key.clone(), value.clone())])
                        .await
                        .map(|()| serde_json::json!({key.as_str(): value})),
                )
            }
            Action::PurgeCache => {
                let svc = self.service.clone();
                Some(
                    tokio::task::spawn_blocking(move || svc.purge_cache())
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r)
                        .map(|n| serde_json::json!({"purged": n})),
                )
            }
            Action::Update(offer) => {
                self.start_download(client, offer.clone(), body.seq, false)
                    .await
            }
            Action::Candidate {
                offer,
                shadow,
                split,
            } => {
                let mut settings = Vec::new();
                for (key, v) in [("shadow.fraction", shadow), ("shadow.split", split)] {
                    if let Some(v) = v {
                        if let Err(e) = check_setting(key, &v.to_string()) {
                            return Some(Err(e));
                        }
                        settings.push((key.to_string(), v.to_string()));
                    }
                }
                if let Err(e) = self.store_settings(&settings).await {
                    return Some(Err(e));
                }
                self.start_download(client, offer.clone(), body.seq, true)
                    .await
            }
            Action::Activate { version } => {
                let v = *version;
                Some(
                    blocking(Box::new(move |s| {
                        let (st, ()) = s
                            .update(|s| Ok((s.activate(v)?, ())))
                            .map_err(|e| e.to_string())?;
                        Ok(serde_json::json!({"now_active": st.active_info().map(|i| i.version), "trial": st.trial.is_some()}))
                    }))
                    .await,
                )
            }
            Action::Abandon { version } => {
                let v = *version;
                // A download of the abandoned version stops here: it must never complete into a slot.
                if let Some(d) = self.download.take() {
                    if d.offer.version == v {
                        let _ = tokio::task::spawn_blocking(move || d.discard()).await;
                        self.service.set_download(None);
                    } else {
                        self.download = Some(d);
                    }
                }
                Some(
                    blocking(Box::new(move |s| {
                        let (st, changed) = s
                            .update(|now| {
                                Ok(match now.abandon(v)? {
                                    Some(next) => (next, true),
                                    None => (now.clone(), false),
                                })
                            })
                            .map_err(|e| e.to_string())?;
                        Ok(serde_json::json!({
                            "abandoned": v,
                            "changed": changed,
                            "now_active": st.active_info().map(|i| i.version),
                        }))
                    }))
                    .await,
                )
            }
        }
    }

    /// Records runtime settings durably (they survive restarts), then applies them.
    async fn store_settings(&mut self, settings: &[(String, String)]) -> Result<(), String> {
        if settings.is_empty() {
            return Ok(());
        }
        let records = self.records.clone();
        let new = settings.to_vec();
        tokio::task::spawn_blocking(move || {
            let mut all: Vec<(String, String)> = records.get(SETTINGS)?.unwrap_or_default();
            all.retain(|(x, _)| !new.iter().any(|(k, _)| k == x));
            all.extend(new);
            records.put(SETTINGS, &all)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        for (key, value) in settings {
            if key == "telemetry.heartbeat_s" {
                self.heartbeat = Duration::from_secs(value.parse().unwrap_or(30));
            }
            self.service.set_setting(key, value);
        }
        Ok(())
    }

    async fn start_download(
        &mut self,
        client: &AsyncClient,
        offer: Offer,
        seq: u64,
        candidate: bool,
    ) -> Option<Result<serde_json::Value, String>> {
        if let Err(e) = offer.check(self.config.fleet.max_bundle_bytes) {
            return Some(Err(e.to_string()));
        }
        let state = self.slots.load().unwrap_or_default();
        // The same offer again (a rollout resent it after a restart): already done, say so.
        let staged = state.candidate_info().map(|i| i.version);
        let live = state.active_info().map(|i| i.version);
        if (candidate && staged == Some(offer.version)) || live == Some(offer.version) {
            return Some(Ok(serde_json::json!({
                "already": if live == Some(offer.version) { "live" } else { "staged" },
                "version": offer.version,
            })));
        }
        let highest = state.highest_version;
        if offer.version <= highest {
            return Some(Err(format!(
                "version {} is not newer than version {highest}, the highest ever accepted",
                offer.version
            )));
        }
        if let Some(d) = &self.download {
            if d.offer.bundle == offer.bundle {
                return Some(Ok(serde_json::json!({"download": "already in progress"})));
            }
        }
        // Room for the download and the slot copy, checked before a byte is fetched.
        if let Ok(st) = nix::sys::statvfs::statvfs(&self.config.agent.state_dir) {
            // The field types differ by target (32-bit on armv7 without LFS), hence the casts.
            #[allow(clippy::unnecessary_cast)]
            let free = st.blocks_available() as u64 * st.fragment_size() as u64;
            if free < offer.size.saturating_mul(2) {
                return Some(Err(format!(
                    "not enough disk: the bundle needs {} bytes twice (download and slot), {free} free",
                    offer.size
                )));
            }
        }
        if let Some(old) = self.download.take() {
            tracing::info!(bundle = %old.offer.bundle_hex(), "a newer offer replaces an unfinished download");
            let _ = tokio::task::spawn_blocking(move || old.discard()).await;
        }
        let (r, dir) = (self.records.clone(), self.incoming.clone());
        let name = offer.name.clone();
        match tokio::task::spawn_blocking(move || Download::start(r, &dir, offer, seq, candidate))
            .await
        {
            Ok(Ok(d)) => {
                tracing::info!(bundle = %d.offer.bundle_hex(), name = %name, version = d.offer.version, chunks = d.total(), "download started");
                self.download = Some(d);
                self.pump(client).await;
                None
            }
            Ok(Err(e)) => Some(Err(e)),
            Err(e) => Some(Err(e.to_string())),
        }
    }

    /// Requests chunks up to the window.
    async fn pump(&mut self, client: &AsyncClient) {
        let Some(d) = self.download.as_mut() else {
            return;
        };
        let reply_to = topics::chunk(&self.device);
        let topic = topics::bundle_get(&d.offer.bundle_hex(), &self.device);
        let mut window = self.config.fleet.window;
        let rate = self.config.fleet.max_download_bytes_per_s;
        if rate > 0 {
            // Token bucket: what this run may have fetched by now, plus one chunk of burst.
            let chunk = d.offer.chunk_size as u64;
            let budget = (rate as f64 * d.started.elapsed().as_secs_f64()) as u64 + chunk;
            let used = (d.fetched + d.in_flight()) as u64 * chunk;
            let room = (budget.saturating_sub(used) / chunk) as usize;
            window = window.min(d.in_flight() + room);
        }
        for index in d.next_requests(window, Instant::now()) {
            let req = ChunkRequest {
                bundle: d.offer.bundle,
                index,
                reply_to: reply_to.clone(),
            };
            let bytes = postcard::to_stdvec(&req).unwrap_or_default();
            if let Err(e) = client.publish(&topic, QoS::AtLeastOnce, false, bytes).await {
                tracing::warn!(error = %e, "cannot request a chunk");
            }
        }
    }

    async fn on_chunk(&mut self, client: &AsyncClient, payload: &[u8]) {
        let max = self.config.fleet.max_packet_bytes as usize;
        let chunk = match decode_chunk(payload, max) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "dropped a chunk message");
                return;
            }
        };
        let Some(mut d) = self.download.take() else {
            return; // a late duplicate of a finished download
        };
        if chunk.bundle != d.offer.bundle {
            self.download = Some(d);
            return;
        }
        let joined = tokio::task::spawn_blocking(move || {
            let r = d.accept(&chunk);
            (d, r)
        })
        .await;
        let Ok((d, res)) = joined else {
            // The download stays recorded on disk; the next start resumes it.
            tracing::error!("the chunk writer failed; the download resumes at the next start");
            return;
        };
        match res {
            Ok(Accepted::New) | Ok(Accepted::Duplicate) => {}
            Err(e) => tracing::warn!(error = %e, "chunk refused"),
        }
        self.service.set_download(Some(d.summary()));
        self.download = Some(d);
        self.advance(client).await;
    }

    /// Moves the download on: checks the header once its chunks are in, installs once all are, else requests more.
    /// Also the first step after a restart, when the recorded chunks may already hold the header or everything.
    async fn advance(&mut self, client: &AsyncClient) {
        let Some(mut d) = self.download.take() else {
            return;
        };
        if !d.header_checked && d.header_ready() {
            match self.check_header(&d).await {
                Ok(()) => d.header_checked = true,
                Err(e) => {
                    let seq = d.seq;
                    let action = if d.candidate { "candidate" } else { "update" };
                    let _ = tokio::task::spawn_blocking(move || d.discard()).await;
                    self.service.set_download(None);
                    self.ack(
                        client,
                        Some(seq),
                        action,
                        Err(format!("refused before download: {e}")),
                    )
                    .await;
                    return;
                }
            }
        }
        if d.complete() {
            self.finish(client, d).await;
            return;
        }
        self.download = Some(d);
        self.pump(client).await;
    }

    fn policy_keys(&self) -> (TrustedKeys, usize) {
        (self.keys.clone(), self.config.slots.threshold)
    }

    /// The signed header, read from the first chunks: signatures, expiry, agent version, and the offer's claims.
    async fn check_header(&self, d: &Download) -> Result<(), String> {
        let (keys, threshold) = self.policy_keys();
        let path = d.path.clone();
        let (version, name) = (d.offer.version, d.offer.name.clone());
        let slots = self.slots.clone();
        tokio::task::spawn_blocking(move || {
            let mut f = std::fs::File::open(&path).map_err(|e| e.to_string())?;
            let policy = Policy {
                keys: &keys,
                threshold,
                now_unix: now_unix(),
                agent_version: env!("CARGO_PKG_VERSION"),
            };
            let h = crate::bundle::read_header(&mut f, &policy).map_err(|e| e.to_string())?;
            if h.manifest.version != version || h.manifest.name != name {
                return Err(format!(
                    "the offer announced {name} version {version} but the bundle holds {} version {}",
                    h.manifest.name, h.manifest.version
                ));
            }
            let highest = slots.load().map_err(|e| e.to_string())?.highest_version;
            if version <= highest {
                return Err(format!("version {version} is not newer than {highest}"));
            }
            Ok(())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    async fn finish(&mut self, client: &AsyncClient, d: Download) {
        let (keys, threshold) = self.policy_keys();
        let slots = self.slots.clone();
        let summary = d.summary();
        let seq = d.seq;
        let (mode, action) = if d.candidate {
            (crate::slots::install::Mode::Candidate, "candidate")
        } else {
            (crate::slots::install::Mode::Trial, "update")
        };
        let result = tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&d.path).map_err(|e| e.to_string());
            let r = f.and_then(|f| {
                let policy = Policy {
                    keys: &keys,
                    threshold,
                    now_unix: now_unix(),
                    agent_version: env!("CARGO_PKG_VERSION"),
                };
                crate::slots::install::install_as(
                    &slots,
                    &mut std::io::BufReader::new(f),
                    &policy,
                    mode,
                )
                .map(|(i, _)| i)
                .map_err(|e| e.to_string())
            });
            d.discard();
            r
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        self.service.set_last_transfer(summary.clone());
        self.service.set_download(None);
        match result {
            Ok(installed) => {
                tracing::info!(
                    version = installed.info.version,
                    slot = installed.slot.name(),
                    "update installed from the fleet"
                );
                self.ack(
                    client,
                    Some(seq),
                    action,
                    Ok(serde_json::json!({
                        "installed": installed.info,
                        "slot": installed.slot.name(),
                        "transfer": summary,
                    })),
                )
                .await;
            }
            Err(e) => self.ack(client, Some(seq), action, Err(e)).await,
        }
        self.publish_status(client, true).await;
    }

    async fn on_tick(&mut self, client: &AsyncClient) {
        let timeout = Duration::from_millis(self.config.fleet.chunk_timeout_ms);
        let mut expired = 0;
        if let Some(d) = self.download.as_mut() {
            expired = d.expire(Instant::now(), timeout);
        }
        if expired > 0 {
            tracing::debug!(expired, "chunk requests timed out; asking again");
        }
        // Also refills the window when the download-speed cap held requests back.
        self.pump(client).await;
        self.publish_status(client, false).await;
    }

    fn status(&self) -> serde_json::Value {
        let mut s = self.service.status();
        let now = Instant::now();
        let requests = self
            .service
            .counters
            .requests
            .load(std::sync::atomic::Ordering::Relaxed);
        let dt = now
            .saturating_duration_since(self.last_requests.1)
            .as_secs_f64();
        let rate = if dt > 0.0 {
            (requests.saturating_sub(self.last_requests.0)) as f64 / dt
        } else {
            0.0
        };
        if let Some(m) = s.as_object_mut() {
            m.insert("device".into(), self.device.clone().into());
            m.insert("group".into(), self.config.fleet.group.clone().into());
            m.insert("state".into(), "online".into());
            m.insert(
                "link_uptime_s".into(),
                self.started.elapsed().as_secs().into(),
            );
            m.insert(
                "request_rate".into(),
                serde_json::json!((rate * 100.0).round() / 100.0),
            );
            m.insert(
                "download".into(),
                self.download
                    .as_ref()
                    .map(|d| d.summary())
                    .unwrap_or(serde_json::Value::Null),
            );
        }
        s
    }

    /// Publishes the retained status when it changed in substance, or when the heartbeat is due.
    async fn publish_status(&mut self, client: &AsyncClient, force: bool) {
        // What makes a status worth publishing before the heartbeat, read without building the status: the
        // service's change counter (model, slot, trial, candidate, transitions, transfers), download progress, and
        // every 20th shadow run.
        let marker = (
            self.service.changes(),
            self.download.as_ref().map(|d| d.done_count()),
            self.service.shadow_runs() / 20,
        );
        let changed = self.last_marker != Some(marker);
        let due = self.last_published.elapsed() >= self.heartbeat;
        let download_tick =
            self.download.is_some() && self.last_published.elapsed() >= Duration::from_millis(500);
        if !(force || due || (changed && (self.download.is_none() || download_tick))) {
            return;
        }
        let requests = self
            .service
            .counters
            .requests
            .load(std::sync::atomic::Ordering::Relaxed);
        self.last_requests = (requests, Instant::now());
        self.last_published = Instant::now();
        let text = self.status().to_string();
        self.last_marker = Some(marker);
        if let Err(e) = client
            .publish(topics::status(&self.device), QoS::AtLeastOnce, true, text)
            .await
        {
            tracing::warn!(error = %e, "cannot publish status");
        }
    }
}
