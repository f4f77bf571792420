//! Trust documents over the fleet link: each version is retained on its own topic; the device subscribes to all of
//! them at every connect (the broker sends what is retained), takes the versions after its own in order, and holds
//! a command signed under a version it does not have yet until the chain arrives.

use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::AsyncClient;
use std::time::{Duration, Instant};

use super::Link;
use crate::fleet::topics;
use crate::trust::chain::MAX_SIGNED;

/// Versions ahead of the device's kept while the ones between arrive (each at most [`MAX_SIGNED`]).
pub(super) const MAX_PENDING: usize = 32;
/// Commands held for a trust version the device does not have yet.
pub(super) const MAX_HELD: usize = 64;
/// How long a held command waits for its trust version before it is judged under the trust the device has.
pub(super) const HOLD: Duration = Duration::from_secs(30);

/// A command that arrived signed under a newer trust version than the device's.
pub(super) struct Held {
    pub payload: Vec<u8>,
    pub retained: bool,
    pub version: u64,
    pub since: Instant,
}

/// The trust version a command's publisher named (none from operator tools before trust documents).
pub(super) fn named_version(p: &Publish) -> Option<u64> {
    p.properties.as_ref().and_then(|props| {
        props
            .user_properties
            .iter()
            .find(|(k, _)| k == topics::TRUST_PROPERTY)
            .and_then(|(_, v)| v.parse().ok())
    })
}

impl Link {
    fn trust_version(&self) -> Option<u64> {
        self.registry.trust().current().ok().map(|t| t.version())
    }

    /// A retained trust document arrived: kept when it is ahead of the device, then the chain is walked as far as
    /// it reaches.
    pub(super) async fn on_trust(&mut self, client: &AsyncClient, p: &Publish) {
        let topic = crate::fleet::mqtt::topic_of(p);
        let Some(version) = topics::trust_version(&topic) else {
            tracing::warn!(%topic, "ignored a trust document on a topic that names no version");
            return;
        };
        if p.payload.is_empty() {
            return; // a cleared topic
        }
        if p.payload.len() > MAX_SIGNED {
            tracing::warn!(
                version,
                size = p.payload.len(),
                cap = MAX_SIGNED,
                "ignored an oversized trust document"
            );
            return;
        }
        let current = self.trust_version();
        if current.is_some_and(|c| version <= c) {
            return;
        }
        self.pending_trust.insert(version, p.payload.to_vec());
        while self.pending_trust.len() > MAX_PENDING {
            self.pending_trust.pop_last();
        }
        self.advance_trust(client).await;
    }

    /// Takes the pending versions that follow the device's own, in order (off the async threads: a verification
    /// and an atomic write each).
    async fn advance_trust(&mut self, client: &AsyncClient) {
        let Some(current) = self.trust_version() else {
            if !self.pending_trust.is_empty() && !self.trust_unusable_logged {
                self.trust_unusable_logged = true;
                tracing::error!("trust documents arrived but this device has no usable trust to check them against (see the status)");
            }
            return;
        };
        let mut docs = Vec::new();
        let mut next = current + 1;
        while let Some(d) = self.pending_trust.get(&next) {
            docs.push(d.clone());
            next += 1;
        }
        if docs.is_empty() {
            return;
        }
        let (trust, clock) = (self.registry.trust().clone(), self.registry.clock().clone());
        let result = crate::blocking::value(move || {
            let r = trust.apply(&docs);
            if let Ok(t) = trust.current() {
                // Its signatures hold: its issue time has passed.
                clock.observe(t.document().issued_unix);
            }
            r
        })
        .await;
        let now = self.trust_version().unwrap_or(current);
        match result {
            Ok(Ok(a)) => {
                tracing::info!(
                    from = a.from,
                    to = a.to,
                    "took trust documents from the fleet"
                )
            }
            Ok(Err(e)) => {
                // The version after `now` was refused: dropped, so that it is not tried again until the topic
                // carries another document.
                tracing::error!(version = now + 1, error = %e, "refused a trust document from the fleet; the trust stays at version {now}");
                self.pending_trust.remove(&(now + 1));
            }
            Err(e) => tracing::error!(error = %e, "taking trust documents failed"),
        }
        self.pending_trust.retain(|v, _| *v > now);
        if now != current {
            self.flag_live_releases().await;
            self.publish_status(client, true).await;
            self.release_held(client).await;
        }
    }

    /// Flags the models whose live release the trust's bundles role no longer signs (off the async threads: a slot
    /// record read per model).
    pub(super) async fn flag_live_releases(&self) {
        let Ok(role) = self.registry.trust().role(crate::trust::Role::Bundles) else {
            return;
        };
        let (repo, names, trust) = (
            self.repo.clone(),
            self.registry.names(),
            self.registry.trust().clone(),
        );
        let _ = crate::blocking::value(move || {
            let flagged = names
                .into_iter()
                .filter(|n| {
                    repo.slots(n)
                        .ok()
                        .and_then(|s| s.load().ok())
                        .and_then(|st| {
                            st.active_info().map(|i| {
                                crate::slots::still_signed(i, &role.keys, role.threshold).is_err()
                            })
                        })
                        .unwrap_or(false)
                })
                .collect();
            trust.set_unsigned_live(flagged);
        })
        .await;
    }

    /// Holds a command signed under a trust version the device does not have yet; true when held.
    pub(super) fn hold_if_ahead(&mut self, p: &Publish) -> bool {
        let Some(version) = named_version(p) else {
            return false;
        };
        if self.trust_version().is_none_or(|c| version <= c) {
            return false;
        }
        tracing::info!(version, "a command names a trust version this device does not have yet; holding it for the chain");
        if self.held.len() >= MAX_HELD {
            // The oldest is judged now rather than dropped.
            if let Some(h) = self.held.pop_front() {
                self.held_due.push(h);
            }
        }
        self.held.push_back(Held {
            payload: p.payload.to_vec(),
            retained: p.retain,
            version,
            since: Instant::now(),
        });
        true
    }

    /// Judges the held commands whose trust version arrived, and those that waited long enough.
    pub(super) async fn release_held(&mut self, client: &AsyncClient) {
        let current = self.trust_version().unwrap_or(0);
        let mut ready: Vec<Held> = std::mem::take(&mut self.held_due);
        let mut keep = std::collections::VecDeque::new();
        while let Some(h) = self.held.pop_front() {
            if h.version <= current || h.since.elapsed() >= HOLD {
                ready.push(h);
            } else {
                keep.push_back(h);
            }
        }
        self.held = keep;
        for h in ready {
            if h.version > current {
                tracing::warn!(version = h.version, current, "the trust version a held command names never arrived; judging it under the trust this device has");
            }
            self.on_command(client, &h.payload, h.retained).await;
        }
    }
}
