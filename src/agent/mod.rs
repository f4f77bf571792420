//! The daemon: wires the engine, the cache, the worker pool and the API together, and shuts them down as one.
//!
//! Shutdown follows mini-redis: one `CancellationToken` is cancelled on SIGTERM/SIGINT and every task watches a
//! clone of it. The API stops accepting, in-flight requests finish, the pool drains its queue, the database is
//! flushed, then `run` returns.

mod controller;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use crate::serve::Service;

use crate::config::Config;
use crate::inference::{Engine, InferenceError, ModelSpec};
use crate::store::{Store, StoreError};
use crate::wire::status::{Cause, Serving, TransitionKind};
use crate::worker::Pool;

/// The edge model built into the binary: what `outpost run` serves with no configuration at all.
pub const BUILTIN_MODEL: &[u8] = include_bytes!("../../models/edge-int8.onnx");
pub const BUILTIN_SPEC: &str = include_str!("../../models/edge-int8.spec.json");

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot create the state directory {}: {source} (set agent.state_dir or --state-dir to a writable directory)", path.display())]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model {}: {source}", path.display())]
    Model {
        path: PathBuf,
        source: InferenceError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source} (is another process using it? pick another with --listen)")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
}

/// Applies the `[engine]` settings (intra-op threads, int8 mode) process-wide. Called before the first model loads,
/// by the daemon and by the commands that load models (install times variants with the settings that will serve
/// them).
pub fn configure_engine(config: &Config) {
    crate::inference::set_threads(config.engine_threads());
    crate::inference::set_int8_mode(config.engine.int8);
}

/// The name of the model this agent serves by default: the configured model's (its spec's name), else the built-in
/// model's. A single-model agent's slots become this model's in the repository.
pub fn default_model_name(config: &Config) -> Result<String, AgentError> {
    let spec = match &config.model.path {
        Some(path) => {
            let spec_path = config
                .model
                .spec
                .clone()
                .unwrap_or_else(|| ModelSpec::default_path_for(path));
            ModelSpec::from_file(&spec_path).map_err(|source| AgentError::Model {
                path: path.clone(),
                source,
            })?
        }
        None => serde_json::from_str::<ModelSpec>(BUILTIN_SPEC).map_err(|e| AgentError::Model {
            path: PathBuf::from("<built-in edge-int8>"),
            source: InferenceError::Spec(e.to_string()),
        })?,
    };
    crate::repo::check_name(&spec.name).map_err(|e| AgentError::Internal(e.to_string()))?;
    Ok(spec.name)
}

/// The default model's slots, in the state directory's model repository (`<state>/models/<name>`; a single-model
/// agent's `<state>/slots` is moved there first).
pub fn default_slots(config: &Config) -> Result<crate::slots::SlotStore, AgentError> {
    let name = default_model_name(config)?;
    let state_dir = &config.agent.state_dir;
    std::fs::create_dir_all(state_dir).map_err(|source| AgentError::StateDir {
        path: state_dir.clone(),
        source,
    })?;
    crate::repo::Repository::open(state_dir, &name)
        .and_then(|r| r.slots(&name))
        .map_err(|e| AgentError::Internal(e.to_string()))
}

/// Loads the configured model, or the built-in one.
pub fn load_model(config: &Config) -> Result<Engine, AgentError> {
    match &config.model.path {
        Some(path) => Engine::load_files(path, config.model.spec.as_deref()).map_err(|source| {
            AgentError::Model {
                path: path.clone(),
                source,
            }
        }),
        None => {
            let builtin = PathBuf::from("<built-in edge-int8>");
            let spec: ModelSpec =
                serde_json::from_str(BUILTIN_SPEC).map_err(|e| AgentError::Model {
                    path: builtin.clone(),
                    source: InferenceError::Spec(e.to_string()),
                })?;
            Engine::load(BUILTIN_MODEL, spec).map_err(|source| AgentError::Model {
                path: builtin,
                source,
            })
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AgentError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AgentError::Internal(format!("blocking task failed: {e}")))
}

/// File in the state dir holding the API's bound address (useful with port 0).
pub fn api_addr_file(state_dir: &Path) -> PathBuf {
    state_dir.join("api.addr")
}

/// Runs the agent until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), AgentError> {
    let state_dir = config.agent.state_dir.clone();
    std::fs::create_dir_all(&state_dir).map_err(|source| AgentError::StateDir {
        path: state_dir.clone(),
        source,
    })?;
    crate::telemetry::prometheus().map_err(|e| AgentError::Internal(e.to_string()))?;
    configure_engine(&config);
    let addr_file = api_addr_file(&state_dir);
    let _ = std::fs::remove_file(&addr_file);

    let cfg = config.clone();
    let slots = blocking(move || default_slots(&cfg)).await??;
    let (cfg, st) = (config.clone(), slots.clone());
    let started = blocking(move || start_model(&cfg, &st)).await??;
    let engine = started.engine;
    tracing::info!(
        model = %engine.spec().name,
        version = engine.spec().version,
        digest = %engine.digest(),
        load_ms = engine.load_time().as_millis() as u64,
        "model loaded"
    );

    let cache_dir = state_dir.join("cache");
    let store = blocking(move || Store::open(&cache_dir)).await??;
    let cache = if config.cache.enabled {
        let (s, me, mb) = (
            store.clone(),
            config.cache.max_entries,
            config.cache.max_bytes,
        );
        Some(blocking(move || s.result_cache(me, mb)).await??)
    } else {
        None
    };

    let pool = Arc::new(Pool::start(config.worker_count(), config.workers.queue));
    let service = Arc::new(Service::new(engine, pool.clone(), cache, &config));
    service.set_slot(started.slot);
    service.set_model_threshold(started.hardness_threshold);
    if started.on_trial {
        // A trial found at start: no baseline from this run, but the previous model is kept for failed runs.
        let current = service.engine();
        service.begin_trial(current, started.slot, started.previous.map(Arc::new));
    }

    // The fleet link (and the forwarder it carries) is in place before the API answers, so the first request
    // and the first status already see it.
    let link = match &config.fleet.broker {
        Some(_) => {
            let s = store.clone();
            let records = blocking(move || s.records()).await??;
            let mut link =
                crate::fleet::device::Link::new(service.clone(), &config, records, slots.clone())
                    .map_err(|e| AgentError::Internal(e.to_string()))?;
            let cloud_keys = match (&config.forward.cloud_keys, config.forward.enabled) {
                (Some(p), true) => Some(
                    crate::bundle::TrustedKeys::from_file(p)
                        .map_err(|e| AgentError::Internal(format!("forward.cloud_keys: {e}")))?,
                ),
                (None, true) => {
                    tracing::warn!("hard cases stay on the device: forward.cloud_keys is unset, so no cloud answer could be believed (list the cloud workers' public keys there, or set forward.enabled = false)");
                    None
                }
                _ => None,
            };
            if let Some(cloud_keys) = cloud_keys {
                let (s, me, mb) = (
                    store.clone(),
                    config.forward.outbox_max_entries,
                    config.forward.outbox_max_bytes,
                );
                let outbox = blocking(move || s.outbox(me, mb)).await??;
                let (f, rx) = crate::forward::Forwarder::new(
                    &config.fleet.device_id,
                    cloud_keys,
                    outbox,
                    service.cache(),
                    &config.forward,
                );
                if let Some(t) = service
                    .setting("hardness.threshold")
                    .and_then(|v| v.parse().ok())
                {
                    f.set_threshold(t);
                }
                service.set_forwarder(f.clone());
                link = link.with_forwarder(f, rx);
            }
            let token = shutdown.clone();
            Some(tokio::spawn(async move {
                if let Err(e) = link.run(token).await {
                    tracing::error!(error = %e, "the fleet link stopped");
                }
            }))
        }
        None => None,
    };

    let listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .map_err(|source| AgentError::Listen {
            addr: config.api.listen,
            source,
        })?;
    let local = listener
        .local_addr()
        .map_err(|e| AgentError::Internal(e.to_string()))?;
    let addr_text = local.to_string();
    let af = addr_file.clone();
    blocking(move || crate::fsutil::write_atomic(&af, addr_text.as_bytes()))
        .await?
        .map_err(|source| AgentError::Write {
            path: addr_file.clone(),
            source,
        })?;
    tracing::info!(addr = %local, workers = pool.workers(), "API listening");

    let app = crate::api::router(service.clone());
    let token = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await
    });

    crate::telemetry::notify::ready();
    let watcher = tokio::spawn(controller::run(
        service.clone(),
        slots,
        started.generation,
        shutdown.clone(),
    ));
    let watchdog = crate::telemetry::notify::watchdog_interval().map(|every| {
        let token = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tick.tick() => crate::telemetry::notify::watchdog(),
                }
            }
        })
    });

    shutdown.cancelled().await;
    tracing::info!("shutting down: finishing requests in flight");
    crate::telemetry::notify::stopping();
    let served = server.await;
    let _ = watcher.await;
    if let Some(l) = link {
        let _ = l.await;
    }
    if let Some(w) = watchdog {
        let _ = w.await;
    }
    let p = pool.clone();
    blocking(move || p.drain()).await?;
    blocking(move || store.flush()).await??;
    let _ = std::fs::remove_file(api_addr_file(&state_dir));
    match served {
        Ok(Ok(())) => {
            tracing::info!("stopped");
            Ok(())
        }
        Ok(Err(e)) => Err(AgentError::Internal(format!("API server failed: {e}"))),
        Err(e) => Err(AgentError::Internal(format!("API task failed: {e}"))),
    }
}

/// An agent without its HTTP API, cache or forwarder: the slot record, the model (and candidate), the slot
/// controller and the fleet link, sharing `pool`, `background` and (through `records`) a database with other such
/// agents. A fleet simulation runs hundreds in one process; each still has its own MQTT session, state directory
/// and slots, and goes through exactly the daemon's install, shadow, probation and rollback code.
pub async fn start_headless(
    config: Config,
    pool: Arc<Pool>,
    background: Arc<crate::worker::Background>,
    records: crate::store::Records,
    shutdown: CancellationToken,
) -> Result<(Arc<Service>, Vec<tokio::task::JoinHandle<()>>), AgentError> {
    let state_dir = config.agent.state_dir.clone();
    std::fs::create_dir_all(&state_dir).map_err(|source| AgentError::StateDir {
        path: state_dir.clone(),
        source,
    })?;
    let cfg = config.clone();
    let slots = blocking(move || default_slots(&cfg)).await??;
    let (cfg, st) = (config.clone(), slots.clone());
    let started = blocking(move || start_model(&cfg, &st)).await??;
    let service = Arc::new(Service::new(started.engine, pool, None, &config));
    service.set_background(background);
    service.set_slot(started.slot);
    service.set_model_threshold(started.hardness_threshold);
    if started.on_trial {
        let current = service.engine();
        service.begin_trial(current, started.slot, started.previous.map(Arc::new));
    }
    let link = crate::fleet::device::Link::new(service.clone(), &config, records, slots.clone())
        .map_err(|e| AgentError::Internal(e.to_string()))?;
    let token = shutdown.clone();
    let link = tokio::spawn(async move {
        if let Err(e) = link.run(token).await {
            tracing::error!(error = %e, "the fleet link stopped");
        }
    });
    let controller = tokio::spawn(controller::run(
        service.clone(),
        slots,
        started.generation,
        shutdown,
    ));
    Ok((service, vec![link, controller]))
}

/// What start-up chose to serve.
struct Started {
    engine: Engine,
    slot: Serving,
    /// The live slot is a model on trial.
    on_trial: bool,
    /// The model that served before the trial, when it loads.
    previous: Option<Engine>,
    /// The record's generation after start-up's own write.
    generation: u64,
    /// The live slot's manifest hardness threshold.
    hardness_threshold: Option<f32>,
}

/// At start: count the start against a pending trial (boot counting), then load the live slot's model, falling back
/// to the configured or built-in model.
fn start_model(config: &Config, slots: &crate::slots::SlotStore) -> Result<Started, AgentError> {
    use crate::slots::{install::load_active, BootAction};
    let internal = |e: crate::slots::SlotError| AgentError::Internal(e.to_string());
    // Persisted before the model loads: a model that crashes the agent on load still gets counted.
    let (state, action) = slots
        .update(|s| Ok(s.boot(config.slots.max_boots)))
        .map_err(internal)?;
    match &action {
        BootAction::RolledBack { version, boots } => {
            metrics::counter!(crate::telemetry::SLOT_TRANSITIONS, "transition" => TransitionKind::Rollback.name(), "cause" => Cause::BootCount.name()).increment(1);
            tracing::warn!(
                version,
                boots,
                "the model on trial crashed the agent too often: rolled back"
            )
        }
        BootAction::TrialContinues { boots } => tracing::info!(boots, "model on trial"),
        BootAction::Normal => {}
    }
    crate::fault::maybe_abort_on_load(state.active_info().map(|i| i.digest.as_str()));
    let (engine, slot, on_trial) = match load_active(slots, &state) {
        Ok(Some(engine)) => {
            let slot = state.active.map(Serving::slot).unwrap_or(Serving::Builtin);
            (engine, slot, state.trial.is_some())
        }
        Ok(None) => {
            let slot = if config.model.path.is_some() {
                Serving::File
            } else {
                Serving::Builtin
            };
            (load_model(config)?, slot, false)
        }
        Err(e) => {
            tracing::error!(error = %e, "the live slot cannot be loaded; serving the configured or built-in model");
            (load_model(config)?, Serving::Fallback, false)
        }
    };
    let previous = match state.trial.as_ref().filter(|_| on_trial) {
        Some(t) => {
            let mut before = state.clone();
            before.active = t.previous;
            match load_active(slots, &before) {
                Ok(Some(e)) => Some(e),
                Ok(None) => load_model(config).ok(),
                Err(_) => None,
            }
        }
        None => None,
    };
    let hardness_threshold = if matches!(slot, Serving::A | Serving::B) {
        state.active_info().and_then(|i| i.hardness_threshold)
    } else {
        None
    };
    Ok(Started {
        engine,
        slot,
        on_trial,
        previous,
        generation: state.generation,
        hardness_threshold,
    })
}
