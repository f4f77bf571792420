//! The update path: an offer becomes a resumable chunked download, its signed header is checked before the rest
//! is fetched, and the finished bundle is installed through the same library call as `outpost install`.

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use std::time::Instant;

use super::{Link, RecordError, Refused};
use crate::bundle::Policy;
use crate::fleet::topics;
use crate::fleet::transfer::{decode_chunk, Accepted, ChunkRequest, Download, TransferError};
use crate::repo::RepoError;
use crate::trust::live::RoleKeysNow;
use crate::trust::Role;
use crate::wire::command::Offer;
use crate::wire::status::{AckResult, Already, CommandName, Outcome, Serving};

/// The record of offers waiting for the running download (another model's): one per model, oldest first.
const QUEUE: &str = "transfer.queue";

/// An offer that waits for the download of another model to end.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct Queued {
    pub offer: Offer,
    pub seq: u64,
    pub candidate: bool,
}

impl Link {
    /// A download's progress, for the status of the model it is for (a model this device does not serve yet has no
    /// status to show it in until it starts).
    pub(super) fn progress(
        &self,
        model: &str,
        summary: Option<crate::wire::status::TransferSummary>,
    ) {
        if let Some(service) = self.registry.get(model) {
            service.set_download(summary);
        }
    }

    pub(super) async fn start_download(
        &mut self,
        client: &AsyncClient,
        offer: Offer,
        seq: u64,
        candidate: bool,
    ) -> Option<Result<AckResult, Refused>> {
        if let Err(e) = offer.check(self.config.fleet.max_bundle_bytes) {
            return Some(Err(e.into()));
        }
        if let Some(e) = &self.download_unread {
            return Some(Err(RecordError::DownloadUnread(e.clone()).into()));
        }
        // The bundle installs into the model it names: a model this device does not hold yet is added, within the
        // cap, and its own version floor applies.
        let slots = match self.model_slots(&offer.name) {
            Ok(s) => s,
            Err(e) => return Some(Err(e.into())),
        };
        // The bundle's size bounds its largest variant: checked before a byte is fetched.
        if let Err(e) = self.engine_room(&offer.name, offer.size) {
            return Some(Err(e.into()));
        }
        let st = slots.clone();
        let state = match crate::blocking::run(move || st.load()).await {
            Ok(s) => s,
            Err(source) => {
                return Some(Err(RecordError::SlotsUnread {
                    model: offer.name.clone(),
                    source,
                }
                .into()))
            }
        };
        // The same offer again (a rollout resent it after a restart): already done, say so.
        let staged = state.candidate_info().map(|i| i.version);
        let live = state.active_info().map(|i| i.version);
        if (candidate && staged == Some(offer.version)) || live == Some(offer.version) {
            return Some(Ok(AckResult::done(Outcome {
                already: Some(if live == Some(offer.version) {
                    Already::Live
                } else {
                    Already::Staged
                }),
                version: Some(offer.version),
                ..Outcome::default()
            })));
        }
        let highest = state.highest_version;
        if offer.version <= highest {
            return Some(Err(Refused::NotNewer {
                offered: offer.version,
                highest,
            }));
        }
        if let Some(d) = &self.download {
            if d.offer.bundle == offer.bundle {
                return Some(Ok(AckResult::done(Outcome {
                    download: Some("already in progress".into()),
                    ..Outcome::default()
                })));
            }
            // A device fetches one bundle at a time; another model's offer waits its turn instead of replacing
            // that download (two rollouts of two models at once must not cancel each other).
            if d.offer.name != offer.name {
                let running = d.offer.name.clone();
                return Some(self.enqueue(offer, seq, candidate).await.map(|n| {
                    AckResult::done(Outcome {
                        download: Some(format!(
                            "queued behind the download of {running} ({n} waiting)"
                        )),
                        ..Outcome::default()
                    })
                }));
            }
        }
        // Room for the download and the staged variants, and the reserve beside them, checked before a byte is
        // fetched. A filesystem whose free space cannot be read refuses too.
        let room = crate::store::space::check_room(
            &self.config.agent.state_dir,
            offer.size.saturating_mul(2),
            self.config.storage.keep_free(),
        );
        let downloads = self.registry.storage().map(|s| s.downloads());
        match room {
            Ok(_) => {
                if let Some(alarm) = downloads {
                    alarm.succeeded();
                }
            }
            Err(e) => {
                if let Some(alarm) = downloads {
                    alarm.failed(
                        matches!(e, crate::store::space::RoomError::Short { .. }),
                        &e.to_string(),
                    );
                }
                return Some(Err(Refused::NoRoom {
                    size: offer.size,
                    source: e,
                }));
            }
        }
        if let Some(old) = &self.download {
            tracing::info!(bundle = %old.offer.bundle_hex(), "a newer offer replaces an unfinished download");
            if let Err(e) = self.drop_download(|_| true).await {
                return Some(Err(e.into()));
            }
        }
        let (r, dir) = (self.records.clone(), self.incoming.clone());
        let name = offer.name.clone();
        match crate::blocking::run(move || Download::start(r, &dir, offer, seq, candidate)).await {
            Ok(d) => {
                tracing::info!(bundle = %d.offer.bundle_hex(), name = %name, version = d.offer.version, chunks = d.total(), "download started");
                self.download = Some(d);
                self.pump(client).await;
                None
            }
            Err(e) => Some(Err(RecordError::StartDownload(e).into())),
        }
    }

    /// Stops the running download if `which` picks it, its record removed first: `Ok(true)` when one was dropped.
    /// When the record cannot be removed the download goes on (a download whose record stays would resume at the
    /// next start), and the caller refuses what it was doing.
    pub(super) async fn drop_download(
        &mut self,
        which: impl FnOnce(&Download) -> bool,
    ) -> Result<bool, RecordError> {
        let Some(d) = self.download.as_ref().filter(|d| which(d)) else {
            return Ok(false);
        };
        crate::blocking::run(d.discard_job())
            .await
            .map_err(RecordError::DropDownload)?;
        self.progress(&d.offer.name, None);
        self.download = None;
        Ok(true)
    }

    /// Records `offer` to start when the running download ends (durably: a restart keeps the queue), replacing an
    /// earlier offer for the same model. Returns how many wait.
    async fn enqueue(&mut self, offer: Offer, seq: u64, candidate: bool) -> Result<usize, Refused> {
        let mut queue = self.queue().await?;
        queue.retain(|q| q.offer.name != offer.name);
        if queue.len() >= self.config.repository.max_models {
            return Err(Refused::QueueFull {
                waiting: queue.len(),
            });
        }
        tracing::info!(name = %offer.name, version = offer.version, "offer queued behind the running download");
        queue.push(Queued {
            offer,
            seq,
            candidate,
        });
        let n = queue.len();
        self.put_queue(queue).await?;
        Ok(n)
    }

    /// Writes the queue (a flushed record: blocking work, off the async threads).
    async fn put_queue(&self, queue: Vec<Queued>) -> Result<(), RecordError> {
        let records = self.records.clone();
        crate::blocking::run(move || records.put(QUEUE, &queue))
            .await
            .map_err(RecordError::QueueWrite)
    }

    /// Drops a queued offer of `name` at `version` (an abandoned release); fails, changing nothing, when the queue
    /// cannot be read or written.
    pub(super) async fn drop_queued(
        &mut self,
        name: &str,
        version: u64,
    ) -> Result<(), RecordError> {
        let mut queue = self.queue().await?;
        let before = queue.len();
        queue.retain(|q| !(q.offer.name == name && q.offer.version == version));
        if queue.len() != before {
            tracing::info!(%name, version, "a queued offer of an abandoned release is dropped");
            self.put_queue(queue).await?;
        }
        Ok(())
    }

    /// The queued offers; a record that does not read is an error, never an empty queue (offers would be lost).
    async fn queue(&self) -> Result<Vec<Queued>, RecordError> {
        let records = self.records.clone();
        crate::blocking::run(move || records.get::<Vec<Queued>>(QUEUE))
            .await
            .map(Option::unwrap_or_default)
            .map_err(RecordError::QueueRead)
    }

    /// Starts the oldest queued offer, if no download runs (after one ends, and at start); acknowledges its outcome
    /// when it ends at once (refused, or already there). When the queue cannot be read or written, or the recorded
    /// download cannot, nothing starts and the link tries again at its next tick.
    pub(super) async fn start_queued(&mut self, client: &AsyncClient) {
        while self.download.is_none() {
            if self.download_unread.is_some() {
                self.queue_retry = true;
                return;
            }
            let queue = self.queue().await;
            let mut queue = match queue {
                Ok(q) => q,
                Err(e) => {
                    if !self.queue_retry {
                        tracing::error!(error = %e, "cannot start the queued offers; trying again every tick");
                    }
                    self.queue_retry = true;
                    return;
                }
            };
            if queue.is_empty() {
                self.queue_retry = false;
                return;
            }
            let next = queue.remove(0);
            if let Err(e) = self.put_queue(queue).await {
                if !self.queue_retry {
                    tracing::error!(error = %e, "cannot start the queued offers; trying again every tick");
                }
                self.queue_retry = true;
                return;
            }
            self.queue_retry = false;
            let action = if next.candidate {
                CommandName::Candidate
            } else {
                CommandName::Update
            };
            tracing::info!(name = %next.offer.name, version = next.offer.version, "starting a queued offer");
            if let Some(result) = self
                .start_download(client, next.offer, next.seq, next.candidate)
                .await
            {
                self.ack(client, Some(next.seq), action, result).await;
            }
        }
    }

    /// Requests chunks up to the window.
    pub(super) async fn pump(&mut self, client: &AsyncClient) {
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

    pub(super) async fn on_chunk(&mut self, client: &AsyncClient, payload: &[u8]) {
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
        let joined = crate::blocking::value(move || {
            let r = d.accept(&chunk);
            (d, r)
        })
        .await;
        let (d, res) = match joined {
            Ok(j) => j,
            Err(e) => {
                // The download stays recorded on disk; the next start resumes it.
                tracing::error!(error = %e, "the chunk writer failed; the download resumes at the next start");
                return;
            }
        };
        match res {
            Ok(Accepted::New) | Ok(Accepted::Duplicate) => {}
            Err(e @ (TransferError::Record(_) | TransferError::Io { .. })) => {
                tracing::warn!(error = %e, "chunks not recorded as durable; they are fetched again")
            }
            Err(e) => tracing::warn!(error = %e, "chunk refused"),
        }
        self.progress(&d.offer.name, Some(d.summary()));
        self.download = Some(d);
        self.advance(client).await;
    }

    /// Moves the download on: checks the header once its chunks are in, installs once all are, else requests more.
    /// Also the first step after a restart, when the recorded chunks may already hold the header or everything.
    pub(super) async fn advance(&mut self, client: &AsyncClient) {
        let Some(mut d) = self.download.take() else {
            return;
        };
        if !d.header_checked && d.header_ready() {
            match self.check_header(&d).await {
                Ok(()) => d.header_checked = true,
                Err(e) => {
                    let seq = d.seq;
                    let action = if d.candidate {
                        CommandName::Candidate
                    } else {
                        CommandName::Update
                    };
                    // A record that stays resumes this download at the next start, where its header is refused
                    // again: logged, not fatal.
                    if let Err(e) = crate::blocking::run(d.discard_job()).await {
                        tracing::error!(error = %e, "cannot drop the record of the refused download");
                    }
                    self.progress(&d.offer.name, None);
                    self.ack(client, Some(seq), action, Err(Refused::Header(Box::new(e))))
                        .await;
                    self.start_queued(client).await;
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

    /// The slots of the model `name` names, if the device holds it or has room for one more; read-only, so a
    /// refused offer of a new model leaves no folder behind (the install stages one: [`crate::repo::Staged`]).
    pub(super) fn model_slots(&self, name: &str) -> Result<crate::slots::SlotStore, RepoError> {
        self.repo
            .check_room(name, self.config.repository.max_models)
            .and_then(|()| self.repo.view(name))
    }

    /// Room in memory for `incoming` bytes of model into `name` (repository.max_engine_bytes).
    pub(super) fn engine_room(&self, name: &str, incoming: u64) -> Result<(), RepoError> {
        let cap = &self.config.repository;
        self.repo.check_engine_bytes(
            name,
            incoming,
            crate::repo::base_bytes(&self.config),
            cap.max_engine_bytes,
        )
    }

    /// The bundles role of the trust in force: every bundle is checked against it, read afresh at each check so
    /// that a rotation taken during a download refuses what it removed.
    pub(super) fn policy_keys(&self) -> Result<RoleKeysNow, Refused> {
        Ok(self.registry.trust().role(Role::Bundles)?)
    }

    /// The signed header, read from the first chunks: signatures, expiry, agent version, and the offer's claims.
    pub(super) async fn check_header(&self, d: &Download) -> Result<(), Refused> {
        let role = self.policy_keys()?;
        let path = d.path.clone();
        let (version, name) = (d.offer.version, d.offer.name.clone());
        let slots = self.model_slots(&name)?;
        let clock = self.registry.clock().clone();
        crate::blocking::run(move || {
            let mut f = std::fs::File::open(&path)
                .map_err(|source| Refused::Downloaded { path, source })?;
            let policy = Policy {
                keys: &role.keys,
                threshold: role.threshold,
                time: clock.reading(),
                agent_version: env!("CARGO_PKG_VERSION"),
                trust_version: Some(role.version),
            };
            let h = crate::bundle::read_header(&mut f, &policy)?;
            // Its signatures hold: its issue time has passed, and raises the device's time floor.
            clock.observe(h.manifest.created_unix);
            if h.manifest.version != version || h.manifest.name != name {
                return Err(Refused::NotTheOffer {
                    name,
                    version,
                    held_name: h.manifest.name,
                    held_version: h.manifest.version,
                });
            }
            let highest = slots.load()?.highest_version;
            if version <= highest {
                return Err(Refused::NotNewer {
                    offered: version,
                    highest,
                });
            }
            Ok(())
        })
        .await
    }

    pub(super) async fn finish(&mut self, client: &AsyncClient, d: Download) {
        let role = self.policy_keys();
        let slots = self
            .model_slots(&d.offer.name)
            .and_then(|_| self.repo.stage(&d.offer.name));
        let service = self.registry.get(&d.offer.name);
        let model_service = service.clone();
        let summary = d.summary();
        let seq = d.seq;
        let (mode, action) = if d.candidate {
            (
                crate::slots::install::Mode::Candidate,
                CommandName::Candidate,
            )
        } else {
            (crate::slots::install::Mode::Trial, CommandName::Update)
        };
        let discard = d.discard_job();
        let clock = self.registry.clock().clone();
        let result = crate::blocking::run(move || {
            let f = std::fs::File::open(&d.path).map_err(|source| Refused::Downloaded {
                path: d.path.clone(),
                source,
            });
            let r = role
                .and_then(|role| slots.map_err(Refused::from).map(|slots| (role, slots)))
                .and_then(|(role, slots)| f.map(|f| (role, slots, f)))
                .and_then(|(role, slots, f)| {
                    let policy = Policy {
                        keys: &role.keys,
                        threshold: role.threshold,
                        time: clock.reading(),
                        agent_version: env!("CARGO_PKG_VERSION"),
                        trust_version: Some(role.version),
                    };
                    crate::slots::install::install_as(
                        &slots.store,
                        &mut std::io::BufReader::new(f),
                        &policy,
                        mode,
                    )
                    .map_err(Refused::from)
                    // A new model's folder takes its place only now.
                    .and_then(|done| slots.commit().map(|_| done).map_err(Refused::from))
                    .map(|(installed, engine)| {
                        // A model already served takes the gated engine as is; a new one loads when it starts.
                        if let Some(service) = &service {
                            service.hand_over(crate::serve::Handoff {
                                state: installed.state.clone(),
                                slot: installed.slot,
                                engine: std::sync::Arc::new(engine),
                            });
                        }
                        installed
                    })
                });
            // Installed or refused, the download is over; a record that stays only resumes a download whose
            // install is then refused as not newer.
            if let Err(e) = discard() {
                tracing::error!(error = %e, "cannot drop the record of the finished download");
            }
            r
        })
        .await;
        if let Some(service) = &model_service {
            service.set_last_transfer(summary.clone());
            service.set_download(None);
        }
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
                    Ok(AckResult::done(Outcome {
                        installed: Some(installed.info),
                        slot: Some(Serving::slot(installed.slot)),
                        transfer: Some(summary),
                        ..Outcome::default()
                    })),
                )
                .await;
            }
            Err(e) => self.ack(client, Some(seq), action, Err(e)).await,
        }
        self.flag_live_releases().await;
        self.publish_status(client, true).await;
        self.start_queued(client).await;
    }
}
