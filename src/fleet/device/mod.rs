//! The agent's side of the fleet link: one task that owns the MQTT client (the only event loop on the device),
//! dispatches what arrives to the command (`commands`), update (`update`) and hard-case (`cases`) paths, and
//! publishes status.
//!
//! Slot changes go through the same library calls as `outpost install` / `rollback` / `promote` (a locked record
//! transition). An install then hands its release (the record it wrote and the gated engine) to the model's slot
//! controller, which serves it at once; a rollback, promote or activate reaches the controller through its poll of the
//! record, as a change made by an operator on the device does. Every refusal is acknowledged as a typed
//! [`refused::Refused`]: its sentence, and the kind operators act on.

use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

mod cases;
mod commands;
mod floors;
mod refused;
mod spent;
mod trust;
mod update;

use crate::config::Config;
use crate::fleet::mqtt::{self, Broker, LinkEvent, Settings, TlsFiles};
use crate::fleet::transfer::{Download, TransferError};
use crate::fleet::{topics, FleetError};
use crate::repo::Repository;
use crate::serve::{Registry, Service};
use crate::slots::SlotError;
use crate::slots::SlotStore;
use crate::store::{Records, StoreError};
use crate::wire::status::{DeviceStatus, OnlineStatus};
use refused::Refused;

const LAST_SEQ: &str = "command.last_seq";
const SETTINGS: &str = "settings";

/// A record that an action depends on cannot be read or written: the action is refused (acknowledged with this
/// sentence) and does not happen.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordError {
    #[error("cannot read the record of offers queued behind the running download ({0}): refused, since acting on a \
             queue that may hold more offers could lose one or start one the operator withdrew; check the disk of \
             the state dir, then send the command again")]
    QueueRead(StoreError),
    #[error("cannot record the queue of offers behind the running download ({0}): refused, nothing changed; check \
             the disk of the state dir, then send the command again")]
    QueueWrite(StoreError),
    #[error("cannot record the setting ({0}): it is not applied, since it would be lost at the next restart; check \
             the disk of the state dir, then send the command again")]
    Settings(StoreError),
    #[error("cannot drop the record of the download in progress ({0}): refused, since that download could resume \
             and complete into a slot after a restart; check the disk of the state dir, then send the command again")]
    DropDownload(TransferError),
    #[error("cannot read the record of the download in progress ({0}): the offer is refused so that it does not \
             replace a download this device cannot see; check the disk of the state dir, then send it again")]
    DownloadUnread(String),
    #[error("cannot read the slot record of {model} ({source}): the offer is refused, since the versions this \
             device holds are unknown; check the disk of the state dir, then send it again")]
    SlotsUnread { model: String, source: SlotError },
    #[error("cannot start the download ({0}): the offer is refused; check the disk of the state dir, then send it \
             again")]
    StartDownload(TransferError),
}

/// Everything the link works with.
pub struct Link {
    /// The default model's service and slots: what commands act on.
    service: Arc<Service>,
    slots: SlotStore,
    /// Every model served, and the repository an update installs into (the model its bundle names).
    registry: Arc<Registry>,
    repo: Repository,
    config: Config,
    device: String,
    records: Records,
    /// The replay guard of commands: sequence-number floors per model.
    floors: floors::Floors,
    incoming: PathBuf,
    download: Option<Download>,
    /// Set while the recorded download cannot be read (a failing disk): retried every tick, and offers are refused
    /// meanwhile rather than replace a download this device cannot see.
    download_unread: Option<String>,
    /// The queue of offers could not be read or written when a download ended: retried every tick.
    queue_retry: bool,
    heartbeat: Duration,
    started: Instant,
    last_marker: Option<(u64, Option<usize>, u64)>,
    /// The models whose drift alarm was raised in the last alarm message published (None: none published yet).
    last_alarm: Option<Vec<String>>,
    last_published: Instant,
    /// When the trust file was last compared with the one loaded.
    last_trust_check: Instant,
    /// Trust documents ahead of the device's version, by version, until the ones between arrive.
    pending_trust: std::collections::BTreeMap<u64, Vec<u8>>,
    /// Commands signed under a trust version the device does not have yet (see `trust`).
    held: std::collections::VecDeque<trust::Held>,
    held_due: Vec<trust::Held>,
    trust_unusable_logged: bool,
    last_requests: (u64, Instant),
    /// Hard cases: the forwarder, new cases from the request path, and cases sent and not yet answered.
    forward: Option<(
        Arc<crate::forward::Forwarder>,
        tokio::sync::mpsc::Receiver<Vec<u8>>,
    )>,
    in_flight: std::collections::HashMap<String, Instant>,
    /// Models whose recorded settings have been applied (a model that starts later gets its own).
    settings_applied: std::collections::BTreeSet<String>,
    /// Models whose recorded settings could not be read (retried every tick; logged once).
    settings_unread: std::collections::BTreeSet<String>,
}

/// Connection settings for the agent, from the config.
pub fn settings(config: &Config) -> Result<Settings, FleetError> {
    let f = &config.fleet;
    let url = f
        .broker
        .as_deref()
        .ok_or_else(|| FleetError::BrokerUrl(String::new(), "no broker configured".into()))?;
    let offline = DeviceStatus::Offline {
        device: f.device_id.clone(),
    }
    .to_json();
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
        registry: Arc<Registry>,
        config: &Config,
        records: Records,
        repo: Repository,
    ) -> Result<Link, FleetError> {
        let service = registry.default_service();
        let slots = repo
            .slots(registry.default_name())
            .map_err(|e| FleetError::Io {
                path: repo.root().display().to_string(),
                message: e.to_string(),
            })?;
        let state_dir = &config.agent.state_dir;
        let service_name = service.name().to_string();
        let stored = records
            .get::<Vec<(String, String)>>(SETTINGS)?
            .unwrap_or_default();
        // Settings made by `set` survive restarts.
        for (k, v) in &stored {
            apply_recorded_setting(&service, k, v);
        }
        let heartbeat = stored
            .iter()
            .filter_map(|(k, v)| crate::serve::settings::Setting::parse(k, v).ok())
            .find(|s| s.key == crate::serve::settings::SettingKey::HeartbeatS)
            .map_or(config.fleet.heartbeat_s, |s| s.value as u64);
        Ok(Link {
            service,
            registry,
            repo,
            device: config.fleet.device_id.clone(),
            incoming: state_dir.join("incoming"),
            config: config.clone(),
            floors: floors::Floors::new(records.clone(), state_dir),
            records,
            slots,
            download: None,
            download_unread: None,
            queue_retry: false,
            heartbeat: Duration::from_secs(heartbeat),
            started: Instant::now(),
            last_marker: None,
            last_alarm: None,
            last_published: Instant::now(),
            last_trust_check: Instant::now(),
            pending_trust: Default::default(),
            held: Default::default(),
            held_due: Vec::new(),
            trust_unusable_logged: false,
            last_requests: (0, Instant::now()),
            forward: None,
            in_flight: std::collections::HashMap::new(),
            settings_applied: [service_name].into(),
            settings_unread: Default::default(),
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
        self.resume_download().await;
        self.flag_live_releases().await;
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
                            let mut subscribes = 0;
                            if !session_present {
                                subscribes += self.subscribe(&client).await?;
                            }
                            // At every connect, so the broker sends the retained trust versions again: a device
                            // checks for a newer trust whenever it comes back.
                            client.subscribe(topics::ALL_TRUST, QoS::AtLeastOnce).await?;
                            // The status says "subscribed" once the broker has acknowledged them all: from then on
                            // a command, a chunk or a cloud answer sent to this device reaches it.
                            self.registry.link().connected(subscribes + 1);
                            if let Some(d) = self.download.as_mut() {
                                d.forget_in_flight();
                            }
                            self.publish_status(&client, true).await;
                            self.advance(&client).await;
                            // Offers queued behind a download that ended before a restart.
                            self.start_queued(&client).await;
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
                            self.registry.link().disconnected();
                        }
                        LinkEvent::Subscribed => self.registry.link().subscribed(),
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
        let offline = DeviceStatus::Offline {
            device: self.device.clone(),
        }
        .to_json();
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

    /// Subscribes to the device's topics; returns how many SUBSCRIBEs it sent.
    async fn subscribe(&self, client: &AsyncClient) -> Result<usize, FleetError> {
        let mut topics = vec![
            topics::device_cmd(&self.device),
            topics::chunk(&self.device),
        ];
        if let Some(g) = &self.config.fleet.group {
            topics.push(topics::group_cmd(g));
        }
        if self.forward.is_some() {
            topics.push(topics::cloud_reply(&self.device));
        }
        for t in &topics {
            client.subscribe(t, QoS::AtLeastOnce).await?;
        }
        Ok(topics.len())
    }

    async fn on_message(&mut self, client: &AsyncClient, p: Publish) {
        let topic = mqtt::topic_of(&p);
        if topic == topics::chunk(&self.device) {
            self.on_chunk(client, &p.payload).await;
        } else if topic == topics::cloud_reply(&self.device) {
            self.on_answer(&p).await;
        } else if topics::trust_version(&topic).is_some() || topic.starts_with("outpost/v1/trust/")
        {
            self.on_trust(client, &p).await;
        } else if topic.ends_with("/cmd") {
            if !self.hold_if_ahead(&p) {
                self.on_command(client, &p.payload, p.retain).await;
            }
        } else {
            tracing::debug!(%topic, "ignored a message on an unexpected topic");
        }
    }

    /// Takes over the download recorded before a restart. A record that does not read because the disk fails is
    /// not taken as "no download": it is tried again every tick, and offers are refused meanwhile. A corrupt
    /// record (it reads, as garbage) is dropped, as it can never resume.
    async fn resume_download(&mut self) {
        let (r, dir) = (self.records.clone(), self.incoming.clone());
        match crate::blocking::run(move || Download::resume(r, &dir)).await {
            Ok(d) => {
                if self.download_unread.take().is_some() {
                    tracing::info!("the recorded download reads again");
                }
                if let Some(d) = &d {
                    tracing::info!(bundle = %d.offer.bundle_hex(), done = d.done_count(), total = d.total(), "resuming a download");
                    self.progress(&d.offer.name, Some(d.summary()));
                }
                self.download = d;
            }
            Err(e @ TransferError::Record(StoreError::Corrupt(_))) => {
                tracing::error!(error = %e, "the recorded download is corrupt; dropping it");
                self.download_unread = None;
            }
            Err(e) => {
                if self.download_unread.is_none() {
                    tracing::error!(error = %e, "cannot read the recorded download; trying again every tick, and refusing offers meanwhile");
                }
                self.download_unread = Some(e.to_string());
            }
        }
    }

    async fn on_tick(&mut self, client: &AsyncClient) {
        self.apply_new_models_settings().await;
        // A version applied by hand beside the daemon (`outpost trust apply`) is in force within a second.
        if !self.held.is_empty() || !self.held_due.is_empty() {
            self.release_held(client).await;
        }
        if self.last_trust_check.elapsed() >= Duration::from_secs(1) {
            self.last_trust_check = Instant::now();
            let trust = self.registry.trust().clone();
            if crate::blocking::value(move || trust.refresh())
                .await
                .unwrap_or(false)
            {
                self.publish_status(client, true).await;
            }
        }
        self.floors.settle().await;
        if self.download_unread.is_some() {
            self.resume_download().await;
            if self.download.is_some() {
                self.advance(client).await;
            }
        }
        if self.queue_retry && self.download.is_none() && self.download_unread.is_none() {
            self.start_queued(client).await;
        }
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

    fn status(&self) -> OnlineStatus {
        let mut service = self.service.status();
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
        service.download = self.download.as_ref().map(|d| d.summary());
        let mut models = std::collections::BTreeMap::new();
        for (name, s) in self.registry.all() {
            if name != self.registry.default_name() {
                models.insert(name, s.status());
            }
        }
        OnlineStatus {
            device: self.device.clone(),
            group: self.config.fleet.group.clone(),
            link_uptime_s: self.started.elapsed().as_secs(),
            request_rate: (rate * 100.0).round() / 100.0,
            default_model: Some(self.registry.default_name().to_string()),
            host: self.registry.host_status(),
            service,
            models,
        }
    }

    /// Publishes the retained status when it changed in substance, or when the heartbeat is due.
    async fn publish_status(&mut self, client: &AsyncClient, force: bool) {
        // What makes a status worth publishing before the heartbeat, read without building the status: the
        // service's change counter (model, slot, trial, candidate, transitions, transfers), download progress, and
        // every 20th shadow run.
        let all = self.registry.all();
        let marker = (
            all.iter().map(|(_, s)| s.changes()).sum::<u64>() + all.len() as u64,
            self.download.as_ref().map(|d| d.done_count()),
            all.iter().map(|(_, s)| s.shadow_runs() / 20).sum::<u64>(),
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
        let text = DeviceStatus::Online(Box::new(self.status())).to_json();
        self.last_marker = Some(marker);
        if let Err(e) = client
            .publish(topics::status(&self.device), QoS::AtLeastOnce, true, text)
            .await
        {
            tracing::warn!(error = %e, "cannot publish status");
        }
        self.publish_alarm(client, force).await;
    }

    /// Publishes the retained alarm message when the set of models in drift changed (or on `force`: a fresh session).
    async fn publish_alarm(&mut self, client: &AsyncClient, force: bool) {
        let mut drift = std::collections::BTreeMap::new();
        for (name, service) in self.registry.all() {
            if let Some(d) = service.status().drift.filter(|d| d.drift) {
                drift.insert(name.to_string(), d);
            }
        }
        let raised: Vec<String> = drift.keys().cloned().collect();
        if !force && self.last_alarm.as_ref() == Some(&raised) {
            return;
        }
        let alarm = crate::wire::status::Alarm {
            device: self.device.clone(),
            unix: crate::bundle::now_unix(),
            drift,
        };
        match client
            .publish(
                topics::alarm(&self.device),
                QoS::AtLeastOnce,
                true,
                alarm.to_json(),
            )
            .await
        {
            Ok(()) => self.last_alarm = Some(raised),
            Err(e) => tracing::warn!(error = %e, "cannot publish the alarm"),
        }
    }
}

/// Applies a setting read back from the records. Every recorded one passed its check when it was set; one that no
/// longer parses (a key of a newer agent) is skipped, said once.
fn apply_recorded_setting(service: &crate::serve::Service, key: &str, value: &str) {
    match crate::serve::settings::Setting::parse(key, value) {
        Ok(s) => service.set(s),
        Err(e) => {
            tracing::warn!(model = %service.name(), error = %e, "a recorded setting is skipped")
        }
    }
}
