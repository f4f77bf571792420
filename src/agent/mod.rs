//! The daemon: wires the engine, the cache, the worker pool and the API together, and shuts them down as one.
//!
//! Shutdown follows mini-redis: one `CancellationToken` is cancelled on SIGTERM/SIGINT and every task watches a
//! clone of it. The API stops accepting, in-flight requests finish, the pool drains its queue, the database is
//! flushed, then `run` returns.

mod controller;
pub mod models;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use crate::repo::Repository;
use crate::serve::Registry;

use crate::blocking;
use crate::config::Config;
use crate::inference::{Engine, InferenceError, ModelSpec};
use crate::store::{Storage, StoreError};
use crate::wire::status::{Cause, Serving, TransitionKind};
use crate::worker::Pool;

pub use crate::inference::BUILTIN_SPEC;

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
    /// The release the slot record names does not load from its slot.
    #[error(transparent)]
    Slot(#[from] crate::slots::install::LoadError),
    #[error("the model has no live release and no base to serve")]
    NothingToServe,
    #[error(transparent)]
    Panicked(#[from] crate::blocking::Panicked),
}

/// Applies the `[engine]` settings (intra-op threads, int8 mode) process-wide. Called before the first model loads,
/// by the daemon and by the commands that load models (install times variants with the settings that will serve
/// them).
pub fn configure_engine(config: &Config) {
    crate::inference::set_threads(config.engine_threads());
    crate::inference::set_int8_mode(config.engine.int8);
    // `auto` remembers what it measured, so a restart does not time the same model again.
    crate::inference::int8::remember_in(&config.agent.state_dir);
}

/// The configured model files by name (their specs' names), in order, checked: names valid and distinct.
pub fn configured_models(config: &Config) -> Result<Vec<(String, models::Base)>, AgentError> {
    let mut out: Vec<(String, models::Base)> = Vec::new();
    for m in config.model.entries() {
        let Some(path) = m.path else { continue };
        let spec_path = m
            .spec
            .clone()
            .unwrap_or_else(|| ModelSpec::default_path_for(&path));
        let spec = ModelSpec::from_file(&spec_path).map_err(|source| AgentError::Model {
            path: path.clone(),
            source,
        })?;
        crate::repo::check_name(&spec.name).map_err(|e| {
            AgentError::Internal(format!(
                "{} (spec {}): {e}",
                path.display(),
                spec_path.display()
            ))
        })?;
        if out.iter().any(|(n, _)| *n == spec.name) {
            return Err(AgentError::Internal(format!(
                "two configured models are named {:?}: every model needs its own name (the spec's `name`)",
                spec.name
            )));
        }
        out.push((spec.name, models::Base::File { path, spec: m.spec }));
    }
    Ok(out)
}

/// The name of the model this agent serves by default: `repository.default`, else the first configured model's
/// (its spec's name), else the built-in model's. A single-model agent's slots become this model's in the
/// repository.
pub fn default_model_name(config: &Config) -> Result<String, AgentError> {
    let configured = configured_models(config)?;
    if let Some(d) = &config.repository.default {
        if configured.iter().any(|(n, _)| n == d)
            || (configured.is_empty() && *d == builtin_name()?)
        {
            return Ok(d.clone());
        }
        let names: Vec<&str> = configured.iter().map(|(n, _)| n.as_str()).collect();
        return Err(AgentError::Internal(format!(
            "repository.default names {d:?}, which is not a configured model (configured: {})",
            if names.is_empty() {
                "none, so only the built-in model".to_string()
            } else {
                names.join(", ")
            }
        )));
    }
    match configured.into_iter().next() {
        Some((name, _)) => Ok(name),
        None => builtin_name(),
    }
}

fn builtin_name() -> Result<String, AgentError> {
    serde_json::from_str::<ModelSpec>(BUILTIN_SPEC)
        .map(|s| s.name)
        .map_err(|e| AgentError::Model {
            path: PathBuf::from("<built-in edge-int8>"),
            source: InferenceError::Spec(e.to_string()),
        })
}

/// The state directory's model repository (a single-model agent's `<state>/slots` is moved there first, as the
/// default model's) and the default model's name.
pub fn open_repository(config: &Config) -> Result<(Repository, String), AgentError> {
    let name = default_model_name(config)?;
    let state_dir = &config.agent.state_dir;
    std::fs::create_dir_all(state_dir).map_err(|source| AgentError::StateDir {
        path: state_dir.clone(),
        source,
    })?;
    let repo =
        Repository::open(state_dir, &name).map_err(|e| AgentError::Internal(e.to_string()))?;
    Ok((repo, name))
}

/// The default model's slots (`<state>/models/<name>`).
pub fn default_slots(config: &Config) -> Result<crate::slots::SlotStore, AgentError> {
    let (repo, name) = open_repository(config)?;
    repo.slots(&name)
        .map_err(|e| AgentError::Internal(e.to_string()))
}

/// The slots of the model an operator names on the device (`outpost rollback --model NAME`...). Without a name:
/// the only model the device holds, else a clear error listing them.
pub fn model_slots(
    config: &Config,
    model: Option<&str>,
) -> Result<(String, crate::slots::SlotStore), AgentError> {
    let (repo, default) = open_repository(config)?;
    let internal = |e: crate::repo::RepoError| AgentError::Internal(e.to_string());
    let mut names = repo.names().map_err(internal)?;
    if !names.contains(&default) {
        names.push(default.clone());
        names.sort();
    }
    let name = match model {
        Some(n) if names.iter().any(|x| x == n) => n.to_string(),
        Some(n) => {
            return Err(AgentError::Internal(format!(
                "no model named {n:?} on this device (it has: {})",
                names.join(", ")
            )))
        }
        None if names.len() == 1 => default,
        None => {
            return Err(AgentError::Internal(format!(
                "this device holds several models ({}): say which with --model NAME",
                names.join(", ")
            )))
        }
    };
    let slots = repo.slots(&name).map_err(internal)?;
    Ok((name, slots))
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
    let (repo, default) = blocking::run(move || open_repository(&cfg)).await?;
    let slots = repo
        .slots(&default)
        .map_err(|e| AgentError::Internal(e.to_string()))?;

    let (sd, options) = (state_dir.clone(), config.storage.options(&config.cache));
    let storage = Arc::new(blocking::value(move || Storage::open(&sd, &options)).await?);
    storage.make_room_for_promises();

    let pool = Arc::new(Pool::start(config.worker_count(), config.workers.queue));
    let shared = models::Shared {
        config: config.clone(),
        pool: pool.clone(),
        cache: storage.cache(),
        background: None,
        forwarder: Default::default(),
    };
    let (registry, default_controller) =
        models::start_default(&default, slots.clone(), &shared, &shutdown).await?;
    registry.set_storage(storage.clone());

    // The fleet link (and the forwarder it carries) is in place before the API answers, so the first request
    // and the first status already see it. Records that cannot be opened yet (a disk that fails to read) leave
    // the agent serving; the link starts once they open.
    let link = match &config.fleet.broker {
        Some(_) => {
            let ready = match storage.records() {
                Ok(records) => Some(
                    fleet_link(&config, &registry, &storage, &shared, records, repo.clone())
                        .await?,
                ),
                Err(_) => None,
            };
            let (config, registry, storage, shared, repo, token) = (
                config.clone(),
                registry.clone(),
                storage.clone(),
                shared.clone(),
                repo.clone(),
                shutdown.clone(),
            );
            Some(tokio::spawn(async move {
                let link = match ready {
                    Some(link) => link,
                    None => {
                        let mut tick = tokio::time::interval(TEND_EVERY);
                        let records = loop {
                            tokio::select! {
                                _ = token.cancelled() => return,
                                _ = tick.tick() => {}
                            }
                            if let Ok(r) = storage.records() {
                                break r;
                            }
                        };
                        match fleet_link(&config, &registry, &storage, &shared, records, repo).await
                        {
                            Ok(link) => link,
                            Err(e) => {
                                tracing::error!(error = %e, "the fleet link cannot start");
                                return;
                            }
                        }
                    }
                };
                if let Err(e) = link.run(token).await {
                    tracing::error!(error = %e, "the fleet link stopped");
                }
            }))
        }
        // Without a fleet link (which compares the trust file every second and republishes), a trust applied by
        // hand beside the daemon is picked up here.
        None => {
            let (trust, token) = (registry.trust().clone(), shutdown.clone());
            Some(tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = token.cancelled() => break,
                        _ = tick.tick() => {
                            let t = trust.clone();
                            let _ = blocking::value(move || t.refresh()).await;
                        }
                    }
                }
            }))
        }
    };
    // The stores are tended off the request path: the reserve put back, a closed cache or outbox reopened.
    let tending = {
        let (storage, token) = (storage.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TEND_EVERY);
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tick.tick() => {
                        let s = storage.clone();
                        let _ = blocking::value(move || s.tend()).await;
                    }
                }
            }
        })
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
    blocking::run(move || {
        crate::fsutil::write_promise(&af, addr_text.as_bytes())
            .map_err(|source| AgentError::Write { path: af, source })
    })
    .await?;
    tracing::info!(addr = %local, workers = pool.workers(), "API listening");

    let app = crate::api::router(registry.clone());
    let token = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await
    });

    crate::telemetry::notify::ready();
    let watcher = default_controller();
    let others = tokio::spawn(models::follow(
        registry.clone(),
        repo,
        shared,
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
    let _ = others.await;
    if let Some(l) = link {
        let _ = l.await;
    }
    if let Some(w) = watchdog {
        let _ = w.await;
    }
    let _ = tending.await;
    let p = pool.clone();
    blocking::value(move || p.drain()).await?;
    blocking::run(move || storage.flush().map_err(AgentError::from)).await?;
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

/// How often the stores are tended ([`Storage::tend`]).
const TEND_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// The device's fleet link, with the forwarder of hard cases when forwarding is on (its outbox opened here).
async fn fleet_link(
    config: &Config,
    registry: &Arc<Registry>,
    storage: &Arc<Storage>,
    shared: &models::Shared,
    records: crate::store::Records,
    repo: Repository,
) -> Result<crate::fleet::device::Link, AgentError> {
    let mut link = crate::fleet::device::Link::new(registry.clone(), config, records, repo)
        .map_err(|e| AgentError::Internal(e.to_string()))?;
    // Sending data off the device stays a local setting: a cloud role in the trust never turns it on.
    let cloud = config.forward.enabled
        && match registry.trust().role(crate::trust::Role::Cloud) {
            Ok(role) if !role.keys.is_empty() => true,
            Ok(_) => {
                tracing::warn!("hard cases stay on the device: the trust has no cloud role, so no cloud answer could be believed (list the cloud workers' keys in forward.cloud_keys before the first start, or add a cloud role with `outpostctl trust rotate`; or set forward.enabled = false)");
                false
            }
            Err(_) => false,
        };
    if cloud {
        let (s, me, mb) = (
            storage.clone(),
            config.forward.outbox_max_entries,
            config.forward.outbox_max_bytes,
        );
        let outbox = blocking::value(move || s.outbox(me, mb)).await?;
        let service = registry.default_service();
        let (f, rx) = crate::forward::Forwarder::new(
            &config.fleet.device_id,
            registry.trust().clone(),
            outbox,
            service.cache(),
            &config.forward,
            registry.clock().clone(),
        );
        // Every model forwards its hard cases, the ones that start later too.
        for (_, s) in registry.all() {
            s.set_forwarder(f.clone());
        }
        let _ = shared.forwarder.set(f.clone());
        link = link.with_forwarder(f, rx);
    }
    Ok(link)
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
) -> Result<(Arc<Registry>, Vec<tokio::task::JoinHandle<()>>), AgentError> {
    let cfg = config.clone();
    let (repo, default) = blocking::run(move || open_repository(&cfg)).await?;
    let slots = repo
        .slots(&default)
        .map_err(|e| AgentError::Internal(e.to_string()))?;
    let shared = models::Shared {
        config: config.clone(),
        pool,
        cache: None,
        background: Some(background),
        forwarder: Default::default(),
    };
    let (registry, controller) = models::start_default(&default, slots, &shared, &shutdown).await?;
    let link = crate::fleet::device::Link::new(registry.clone(), &config, records, repo.clone())
        .map_err(|e| AgentError::Internal(e.to_string()))?;
    let token = shutdown.clone();
    let link = tokio::spawn(async move {
        if let Err(e) = link.run(token).await {
            tracing::error!(error = %e, "the fleet link stopped");
        }
    });
    // The other models (configured, or brought by a bundle), as the daemon serves them.
    let others = tokio::spawn(models::follow(
        registry.clone(),
        repo,
        shared,
        shutdown.clone(),
    ));
    Ok((registry, vec![link, controller(), others]))
}

/// What start-up chose to serve.
pub(crate) struct Started {
    engine: Engine,
    slot: Serving,
    /// The live slot is a model on trial.
    on_trial: bool,
    /// The model that served before the trial, when it loads.
    previous: Option<Engine>,
    /// The record's generation after start-up's own write.
    generation: u64,
    /// The live slot's record (its manifest's hardness threshold, budget and baseline).
    release: Option<crate::slots::SlotInfo>,
}

/// At start: count the start against a pending trial (boot counting), then load the live slot's model, falling back
/// to the configured or built-in model.
fn start_model(
    name: &str,
    config: &Config,
    slots: &crate::slots::SlotStore,
    base: &models::Base,
) -> Result<Option<Started>, AgentError> {
    use crate::slots::{install::load_active, BootAction};
    let internal = |e: crate::slots::SlotError| AgentError::Internal(e.to_string());
    // Persisted before the model loads: a model that crashes the agent on load still gets counted.
    let (state, action) = slots
        .update(|s| Ok(s.boot(config.slots.max_boots)))
        .map_err(internal)?;
    match &action {
        BootAction::RolledBack { version, boots } => {
            metrics::counter!(crate::telemetry::SLOT_TRANSITIONS, "model" => name.to_string(), "transition" => TransitionKind::Rollback.name(), "cause" => Cause::BootCount.name()).increment(1);
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
        Ok(None) => match base.load()? {
            Some(engine) => (engine, base.serving(), false),
            None => return Ok(None),
        },
        Err(e) => {
            tracing::error!(error = %e, "the live slot cannot be loaded; serving the configured or built-in model");
            match base.load()? {
                Some(engine) => (engine, Serving::Fallback, false),
                None => return Ok(None),
            }
        }
    };
    let previous = match state.trial.as_ref().filter(|_| on_trial) {
        Some(t) => {
            let mut before = state.clone();
            before.active = t.previous;
            match load_active(slots, &before) {
                Ok(Some(e)) => Some(e),
                Ok(None) => base.load().ok().flatten(),
                Err(_) => None,
            }
        }
        None => None,
    };
    let release = if matches!(slot, Serving::A | Serving::B) {
        state.active_info().cloned()
    } else {
        None
    };
    Ok(Some(Started {
        engine,
        slot,
        on_trial,
        previous,
        generation: state.generation,
        release,
    }))
}
