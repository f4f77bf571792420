//! The models a device serves, by name: what the API routes a request to and what the fleet link reports.
//!
//! One [`Service`] per model (its own engine, trial, candidate, shadow, counters and settings), all sharing the
//! worker pool and the result cache (whose keys name the release, so models never meet there). The default model
//! is the one `/v1/infer` serves; it is always present.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use super::Service;
use crate::clock::Clock;
use crate::trust::LiveTrust;
use crate::wire::status::{HostStatus, LocalStatus};

pub struct Registry {
    default: String,
    models: RwLock<BTreeMap<String, Arc<Service>>>,
    /// The device's clock and time floor: one per state dir, read by every check of a signed time.
    clock: Arc<Clock>,
    /// The keys the device trusts, by role: read by every signature check (bundles, commands, cloud answers).
    trust: Arc<LiveTrust>,
    /// The state dir's stores, for the status (the daemon's; a headless simulated agent has none).
    storage: std::sync::OnceLock<Arc<crate::store::Storage>>,
    /// The fleet link's state, as it reports it (none without a broker).
    link: Link,
}

/// What the fleet link says of its connection, for the status.
#[derive(Default)]
pub struct Link {
    /// `None` until the link first connects (or without one).
    state: std::sync::Mutex<Option<(crate::wire::status::LinkStatus, usize)>>,
}

impl Link {
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Option<(crate::wire::status::LinkStatus, usize)>) -> T,
    ) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Connected, with `subscribes` SUBSCRIBEs sent and not yet acknowledged.
    pub fn connected(&self, subscribes: usize) {
        self.with(|s| {
            let connects = s.as_ref().map_or(0, |(l, _)| l.connects) + 1;
            *s = Some((
                crate::wire::status::LinkStatus {
                    connected: true,
                    subscribed: subscribes == 0,
                    connects,
                },
                subscribes,
            ));
        })
    }

    /// One subscription acknowledged.
    pub fn subscribed(&self) {
        self.with(|s| {
            if let Some((l, pending)) = s.as_mut() {
                *pending = pending.saturating_sub(1);
                l.subscribed = l.connected && *pending == 0;
            }
        })
    }

    pub fn disconnected(&self) {
        self.with(|s| {
            if let Some((l, pending)) = s.as_mut() {
                l.connected = false;
                l.subscribed = false;
                *pending = 0;
            }
        })
    }

    pub fn status(&self) -> Option<crate::wire::status::LinkStatus> {
        self.with(|s| s.as_ref().map(|(l, _)| *l))
    }
}

impl Registry {
    pub fn new(
        default: &str,
        service: Arc<Service>,
        clock: Arc<Clock>,
        trust: Arc<LiveTrust>,
    ) -> Registry {
        Registry {
            default: default.to_string(),
            models: RwLock::new([(default.to_string(), service)].into()),
            clock,
            trust,
            storage: std::sync::OnceLock::new(),
            link: Link::default(),
        }
    }

    /// Reports `storage` in the status from now on.
    pub fn set_storage(&self, storage: Arc<crate::store::Storage>) {
        let _ = self.storage.set(storage);
    }

    /// The fleet link's connection, as it reports it.
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// The state dir's stores, when the agent has them (the daemon does; a simulated agent does not).
    pub fn storage(&self) -> Option<&Arc<crate::store::Storage>> {
        self.storage.get()
    }

    /// The storage's status, when the agent has one.
    pub fn storage_status(&self) -> Option<crate::wire::status::StorageStatus> {
        self.storage.get().map(|s| s.status())
    }

    pub fn clock(&self) -> &Arc<Clock> {
        &self.clock
    }

    pub fn trust(&self) -> &Arc<LiveTrust> {
        &self.trust
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Service>>> {
        self.models.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Service>>> {
        self.models.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The name of the model `/v1/infer` serves.
    pub fn default_name(&self) -> &str {
        &self.default
    }

    pub fn default_service(&self) -> Arc<Service> {
        self.get(&self.default)
            .expect("the default model is never removed from the registry")
    }

    pub fn get(&self, name: &str) -> Option<Arc<Service>> {
        self.read().get(name).cloned()
    }

    /// Every model served, by name.
    pub fn all(&self) -> Vec<(String, Arc<Service>)> {
        self.read()
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect()
    }

    pub fn names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    /// The device as a whole, for both statuses (local and retained).
    pub fn host_status(&self) -> HostStatus {
        HostStatus {
            clock: Some(self.clock.status()),
            trust: Some(self.trust.status()),
            storage: self.storage_status(),
            link: self.link.status(),
        }
    }

    /// The default model's status at the top (what single-model clients read), every other model's by name.
    pub fn status(&self) -> LocalStatus {
        let mut models = BTreeMap::new();
        for (name, service) in self.all() {
            if name != self.default {
                models.insert(name, service.status());
            }
        }
        LocalStatus {
            default_model: self.default.clone(),
            host: self.host_status(),
            service: self.default_service().status(),
            models,
        }
    }

    /// Serves `service` as `name` (replacing any earlier one of that name).
    pub fn insert(&self, name: &str, service: Arc<Service>) {
        self.write().insert(name.to_string(), service);
    }

    /// Stops serving `name`; the default model stays.
    pub fn remove(&self, name: &str) -> Option<Arc<Service>> {
        if name == self.default {
            return None;
        }
        self.write().remove(name)
    }
}
