//! The models the daemon serves: one request service and one slot controller per model of the repository, started
//! at boot, added when an install brings a model the device did not serve, and dropped when a model is removed.
//!
//! The default model always serves: from its slots, else from its base (the configured file or the model built
//! into the binary). Any other model serves while its record names a live release; it has no base to fall back on.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use super::{controller, AgentError};
use crate::blocking::run;
use crate::config::Config;
use crate::inference::{Engine, InferenceError, ModelSpec};
use crate::repo::Repository;
use crate::serve::{Registry, Service};
use crate::slots::SlotStore;
use crate::store::ResultCache;
use crate::wire::status::Serving;
use crate::worker::Pool;

/// What serves a model whose slots hold no live release.
#[derive(Debug, Clone, PartialEq)]
pub enum Base {
    /// The edge model built into the binary.
    Builtin,
    /// A model file of the configuration.
    File {
        path: PathBuf,
        spec: Option<PathBuf>,
    },
    /// Nothing: the model serves only a release installed in its slots.
    None,
}

impl Base {
    /// The base of model `name`: its configured file, the built-in model when nothing is configured, or none.
    pub fn of(config: &Config, name: &str) -> Result<Base, AgentError> {
        let configured = super::configured_models(config)?;
        if let Some((_, base)) = configured.iter().find(|(n, _)| n == name) {
            return Ok(base.clone());
        }
        if configured.is_empty() && name == super::builtin_name()? {
            return Ok(Base::Builtin);
        }
        Ok(Base::None)
    }

    /// Where a model served from this base says it came from.
    pub fn serving(&self) -> Serving {
        match self {
            Base::File { .. } => Serving::File,
            _ => Serving::Builtin,
        }
    }

    /// Loads the base model; `Ok(None)` for a model without one.
    pub fn load(&self) -> Result<Option<Engine>, AgentError> {
        match self {
            Base::None => Ok(None),
            Base::File { path, spec } => Engine::load_files(path, spec.as_deref())
                .map(Some)
                .map_err(|source| AgentError::Model {
                    path: path.clone(),
                    source,
                }),
            Base::Builtin => {
                let builtin = PathBuf::from("<built-in edge-int8>");
                let spec: ModelSpec =
                    serde_json::from_str(super::BUILTIN_SPEC).map_err(|e| AgentError::Model {
                        path: builtin.clone(),
                        source: InferenceError::Spec(e.to_string()),
                    })?;
                Engine::load_builtin(spec)
                    .map(Some)
                    .map_err(|source| AgentError::Model {
                        path: builtin,
                        source,
                    })
            }
        }
    }
}

/// What the daemon shares between its models.
#[derive(Clone)]
pub struct Shared {
    pub config: Config,
    pub pool: Arc<Pool>,
    pub cache: Option<Arc<ResultCache>>,
    pub background: Option<Arc<crate::worker::Background>>,
    /// The hard-case forwarder, once the fleet link has one: every model's service gets it.
    pub forwarder: Arc<std::sync::OnceLock<Arc<crate::forward::Forwarder>>>,
}

/// One served model: its service and the controller task that follows its record.
struct Running {
    service: Arc<Service>,
    stop: CancellationToken,
    controller: tokio::task::JoinHandle<()>,
}

/// Starts one model: boot counting on its record, then its live release (or its base). `Ok(None)` when it has
/// nothing to serve (a model without a base whose slots hold no live release).
pub async fn start(
    name: &str,
    slots: SlotStore,
    base: Base,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> Result<Option<(Arc<Service>, impl FnOnce() -> tokio::task::JoinHandle<()>)>, AgentError> {
    let (cfg, st, b, n) = (
        shared.config.clone(),
        slots.clone(),
        base.clone(),
        name.to_string(),
    );
    let Some(started) = run(move || super::start_model(&n, &cfg, &st, &b)).await? else {
        return Ok(None);
    };
    tracing::info!(
        model = name,
        version = started.engine.spec().version,
        digest = %started.engine.digest(),
        slot = started.slot.name(),
        load_ms = started.engine.load_time().as_millis() as u64,
        "model loaded"
    );
    let service = Arc::new(Service::new(
        name,
        started.engine,
        shared.pool.clone(),
        shared.cache.clone(),
        &shared.config,
    ));
    if let Some(bg) = &shared.background {
        service.set_background(bg.clone());
    }
    if let Some(f) = shared.forwarder.get() {
        service.set_forwarder(f.clone());
    }
    service.set_slot(started.slot);
    service.set_release_info(started.release.as_ref());
    if started.on_trial {
        // A trial found at start: no baseline from this run, but the previous model is kept for failed runs.
        let current = service.engine();
        service.begin_trial(current, started.slot, started.previous.map(Arc::new));
    }
    let (svc, token, generation) = (service.clone(), shutdown.clone(), started.generation);
    let spawn = move || tokio::spawn(controller::run(svc, slots, base, generation, token));
    Ok(Some((service, spawn)))
}

/// Starts the default model, which always serves (from its slots, else its base), and the registry around it.
pub async fn start_default(
    name: &str,
    slots: SlotStore,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> Result<(Arc<Registry>, impl FnOnce() -> tokio::task::JoinHandle<()>), AgentError> {
    let base = Base::of(&shared.config, name)?;
    let (service, controller) = start(name, slots, base, shared, shutdown)
        .await?
        .ok_or_else(|| {
            AgentError::Internal(format!("the default model {name} has nothing to serve"))
        })?;
    // Reads the floor's file: off the async threads, like every other read of the state dir.
    let dir = shared.config.agent.state_dir.clone();
    let clock = Arc::new(run(move || Ok::<_, AgentError>(crate::clock::Clock::open(&dir))).await?);
    // The trust: stored, or version 1 from the key files on a device that has none yet.
    let (dir, derived) = (
        shared.config.agent.state_dir.clone(),
        crate::trust::live::from_config(&shared.config),
    );
    let trust = Arc::new(
        run(move || Ok::<_, AgentError>(crate::trust::LiveTrust::open(&dir, derived))).await?,
    );
    Ok((
        Arc::new(Registry::new(name, service, clock, trust)),
        controller,
    ))
}

/// Keeps the registry in step with the repository: a model that an install brought is started, a removed one (or
/// one left with nothing to serve) is dropped. The default model is never dropped.
pub async fn follow(
    registry: Arc<Registry>,
    repo: Repository,
    shared: Shared,
    shutdown: CancellationToken,
) {
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    // Models that could not start, with their record's generation then.
    let mut tried: BTreeMap<String, Option<u64>> = BTreeMap::new();
    let configured = match super::configured_models(&shared.config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "the configured models cannot be read: only the default model serves");
            Vec::new()
        }
    };
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let r = repo.clone();
        let Ok(records) = run(move || serving_names(&r)).await else {
            continue;
        };
        let mut wanted: Vec<String> = records.keys().cloned().collect();
        // Configured models always serve (their file is their base).
        for (name, _) in &configured {
            if !wanted.contains(name) {
                wanted.push(name.clone());
            }
        }
        let new: Vec<String> = wanted
            .iter()
            .filter(|n| n.as_str() != registry.default_name() && !running.contains_key(n.as_str()))
            // A model that could not start is tried again only once its record changes: each try counts as a
            // start of a model on trial (boot counting), and retrying a broken slot every tick would roll its
            // trial back for starts that never happened.
            .filter(|n| tried.get(n.as_str()) != Some(&records.get(n.as_str()).copied()))
            .cloned()
            .collect();
        for name in &new {
            let Ok(slots) = repo.slots(name) else {
                continue;
            };
            let base = configured
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, b)| b.clone())
                .unwrap_or(Base::None);
            let stop = shutdown.child_token();
            match start(name, slots, base, &shared, &stop).await {
                Ok(Some((service, spawn))) => {
                    tried.remove(name);
                    registry.insert(name, service.clone());
                    tracing::info!(model = %name, "serving a new model");
                    running.insert(
                        name.clone(),
                        Running {
                            service,
                            stop,
                            controller: spawn(),
                        },
                    );
                }
                Ok(None) => {
                    tried.insert(name.clone(), records.get(name).copied());
                }
                Err(e) => {
                    tracing::error!(model = %name, error = %e, "cannot start the model; trying again when its record changes");
                    tried.insert(name.clone(), records.get(name).copied());
                }
            }
        }
        let gone: Vec<String> = running
            .keys()
            .filter(|n| !wanted.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(r) = running.remove(&name) {
                registry.remove(&name);
                r.stop.cancel();
                let _ = r.controller.await;
                tracing::info!(model = %name, version = r.service.engine().spec().version, "stopped serving a model");
            }
        }
    }
    for (_, r) in running {
        let _ = r.controller.await;
    }
}

/// The models of the repository that have a live release to serve, with their record's generation.
fn serving_names(repo: &Repository) -> Result<BTreeMap<String, u64>, crate::repo::RepoError> {
    let mut names = BTreeMap::new();
    for name in repo.names()? {
        let state = repo.slots(&name)?.load()?;
        if state.active.is_some() {
            names.insert(name, state.generation);
        }
    }
    Ok(names)
}
