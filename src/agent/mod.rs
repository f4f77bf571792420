//! The daemon: wires the engine, the cache, the worker pool and the API together, and shuts them down as one.
//!
//! Shutdown follows mini-redis: one `CancellationToken` is cancelled on SIGTERM/SIGINT and every task watches a
//! clone of it. The API stops accepting, in-flight requests finish, the pool drains its queue, the database is
//! flushed, then `run` returns.

mod service;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub use service::{InferResponse, ModelInfo, Service, ServiceError};

use crate::config::Config;
use crate::inference::{Engine, InferenceError, ModelSpec};
use crate::store::{Store, StoreError};
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
    let addr_file = api_addr_file(&state_dir);
    let _ = std::fs::remove_file(&addr_file);

    let cfg = config.clone();
    let sd = state_dir.clone();
    let (engine, slot_name) = blocking(move || start_model(&cfg, &sd)).await??;
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
    let service = Arc::new(Service::new(engine, pool.clone(), cache, &config)?);
    service.set_slot(&slot_name);

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
    let watcher = tokio::spawn(watch_slots(
        service.clone(),
        state_dir.clone(),
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

/// At start: count the start against a pending trial (boot counting), then load the live slot's model, falling back
/// to the configured or built-in model. Returns the engine and where it came from.
fn start_model(config: &Config, state_dir: &Path) -> Result<(Engine, String), AgentError> {
    use crate::slots::{install::load_active, BootAction, SlotStore};
    let slots = SlotStore::new(state_dir).map_err(|e| AgentError::Internal(e.to_string()))?;
    let state = slots
        .load()
        .map_err(|e| AgentError::Internal(e.to_string()))?;
    let (state, action) = state.boot(config.slots.max_boots);
    if action != BootAction::Normal {
        // Persisted before the model loads: a model that crashes the agent on load still gets counted.
        slots
            .save(&state)
            .map_err(|e| AgentError::Internal(e.to_string()))?;
    }
    match &action {
        BootAction::RolledBack { version, boots } => {
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
    match load_active(&slots, &state) {
        Ok(Some(engine)) => {
            let slot = state
                .active
                .map(|s| s.name())
                .unwrap_or("builtin")
                .to_string();
            Ok((engine, slot))
        }
        Ok(None) => {
            let slot = if config.model.path.is_some() {
                "file"
            } else {
                "builtin"
            };
            Ok((load_model(config)?, slot.to_string()))
        }
        Err(e) => {
            tracing::error!(error = %e, "the live slot cannot be loaded; serving the configured or built-in model");
            Ok((load_model(config)?, "fallback".to_string()))
        }
    }
}

/// Picks up slot changes made by `outpost install` / `outpost rollback` while the daemon runs.
async fn watch_slots(service: Arc<Service>, state_dir: PathBuf, shutdown: CancellationToken) {
    use crate::slots::{install::load_active, SlotStore};
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    let mut seen: Option<u64> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let sd = state_dir.clone();
        let Ok(Ok(Some((generation, loaded)))) = tokio::task::spawn_blocking(move || {
            let slots = SlotStore::new(&sd).map_err(|e| e.to_string())?;
            let state = slots.load().map_err(|e| e.to_string())?;
            Ok::<_, String>(Some((
                state.generation,
                (state.active, load_active(&slots, &state)),
            )))
        })
        .await
        else {
            continue;
        };
        if seen.is_none() {
            seen = Some(generation);
            continue;
        }
        if seen == Some(generation) {
            continue;
        }
        seen = Some(generation);
        match loaded {
            (Some(slot), Ok(Some(engine))) if engine.digest() != service.engine().digest() => {
                tracing::info!(slot = slot.name(), digest = %engine.digest(), "switching to the new live slot");
                service.swap(engine, slot.name());
            }
            (None, _) => {
                if let Ok(engine) = load_model(service.config()) {
                    if engine.digest() != service.engine().digest() {
                        service.swap(engine, "builtin");
                    }
                }
            }
            (_, Err(e)) => {
                tracing::error!(error = %e, "cannot load the new live slot; keeping the current model")
            }
            _ => {}
        }
    }
}
