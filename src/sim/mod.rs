//! A fleet on one machine: N headless agents in one process (`outpostctl simulate`), each with its own MQTT session,
//! state directory, slots and records, sharing model plans, one inference pool and one shadow thread. They run the
//! daemon's own code (fleet link, install, shadow, probation, rollback; see [`crate::agent::start_headless`]) and are
//! fed live traffic from a directory of images, so rollouts can be exercised at fleet scale against a real broker.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::agent::AgentError;
use crate::config::{Config, ProbationConfig};
use crate::serve::{Registry, Service};
use crate::store::Records;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("no images in {0} (point --images at a directory of PNG or JPEG files, e.g. models/data/test)")]
    NoImages(String),
    #[error("cannot read {path}: {message}")]
    Io { path: String, message: String },
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub agents: usize,
    pub broker: String,
    pub group: String,
    /// Device ids are `<prefix>-0000`, `<prefix>-0001`...
    pub prefix: String,
    /// Each agent's state directory is `<dir>/<device id>`.
    pub dir: PathBuf,
    pub trusted_keys: PathBuf,
    pub images: PathBuf,
    /// Requests per second over the whole fleet.
    pub rate: f64,
    pub probation: ProbationConfig,
    pub heartbeat_s: u64,
    /// Inference threads shared by every agent.
    pub workers: usize,
    /// Share of one core for all the agents' shadow runs together.
    pub shadow_cpu_share: f64,
    /// The models every agent serves (`[[model]]` entries: model file, spec beside it); empty: the built-in one.
    /// The first is each agent's default model; traffic goes round-robin over every model an agent serves.
    pub models: Vec<PathBuf>,
}

/// One simulated device.
pub struct SimAgent {
    pub id: String,
    /// Its default model's service.
    pub service: Arc<Service>,
    /// Every model it serves.
    pub registry: Arc<Registry>,
    pub state_dir: PathBuf,
}

/// Counters of the traffic generator.
#[derive(Debug, Default)]
pub struct Traffic {
    pub sent: AtomicU64,
    pub ok: AtomicU64,
    /// Answered with an error by the agent.
    pub failed: AtomicU64,
    /// Not sent: 256 requests were already waiting (the machine is saturated; the generator sheds, as a client
    /// with a timeout would).
    pub shed: AtomicU64,
}

pub struct Sim {
    pub agents: Vec<SimAgent>,
    pub traffic: Arc<Traffic>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn load_images(dir: &Path) -> Result<Vec<crate::serve::bytes_like::Bytes>, SimError> {
    let io = |e: std::io::Error| SimError::Io {
        path: dir.display().to_string(),
        message: e.to_string(),
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("png" | "jpg" | "jpeg")
            )
        })
        .collect();
    files.sort();
    let images = files
        .iter()
        .map(|p| {
            std::fs::read(p)
                .map(crate::serve::bytes_like::Bytes::from)
                .map_err(io)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if images.is_empty() {
        return Err(SimError::NoImages(dir.display().to_string()));
    }
    Ok(images)
}

/// The config of simulated agent `id`.
fn agent_config(o: &SimOptions, id: &str) -> Config {
    let mut c = Config::default();
    c.agent.state_dir = o.dir.join(id);
    c.cache.enabled = false;
    c.slots.trusted_keys = Some(o.trusted_keys.clone());
    c.probation = o.probation.clone();
    c.fleet.broker = Some(o.broker.clone());
    c.fleet.device_id = id.to_string();
    c.fleet.group = Some(o.group.clone());
    c.fleet.heartbeat_s = o.heartbeat_s;
    c.forward.enabled = false;
    c.shadow.max_cpu_share = o.shadow_cpu_share;
    if !o.models.is_empty() {
        c.model.set(
            o.models
                .iter()
                .map(|p| crate::config::ModelConfig {
                    path: Some(p.clone()),
                    spec: None,
                })
                .collect(),
        );
    }
    c
}

impl Sim {
    /// Starts every agent (a few milliseconds apart, so the broker sees a ramp, not a stampede) and the traffic.
    pub async fn start(o: &SimOptions, shutdown: CancellationToken) -> Result<Sim, SimError> {
        let images = Arc::new(load_images(&o.images)?);
        std::fs::create_dir_all(&o.dir).map_err(|e| SimError::Io {
            path: o.dir.display().to_string(),
            message: e.to_string(),
        })?;
        let dir = o.dir.join("records");
        let store = crate::blocking::run(move || Records::open(&dir, None)).await?;
        let pool = Arc::new(crate::worker::Pool::start(o.workers.max(1), 4096));
        let background = crate::worker::Background::start(o.shadow_cpu_share, 1024);
        let mut agents = Vec::with_capacity(o.agents);
        let mut tasks = Vec::new();
        for i in 0..o.agents {
            let id = format!("{}-{i:04}", o.prefix);
            let config = agent_config(o, &id);
            let records = store.named(&id)?;
            let (registry, t) = crate::agent::start_headless(
                config.clone(),
                pool.clone(),
                background.clone(),
                records,
                shutdown.clone(),
            )
            .await?;
            tasks.extend(t);
            agents.push(SimAgent {
                id,
                service: registry.default_service(),
                registry,
                state_dir: config.agent.state_dir,
            });
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let traffic = Arc::new(Traffic::default());
        let registries: Vec<Arc<Registry>> = agents.iter().map(|a| a.registry.clone()).collect();
        tasks.push(tokio::spawn(feed(
            registries,
            images,
            o.rate,
            traffic.clone(),
            shutdown,
        )));
        Ok(Sim {
            agents,
            traffic,
            tasks,
        })
    }

    /// Live versions across the fleet: version → agents serving it.
    pub fn versions(&self) -> BTreeMap<u64, usize> {
        let mut m = BTreeMap::new();
        for a in &self.agents {
            *m.entry(a.service.engine().spec().version).or_default() += 1;
        }
        m
    }

    /// One JSON line per agent: what it serves, stages and went through.
    pub fn report(&self) -> Vec<serde_json::Value> {
        self.agents
            .iter()
            .map(|a| {
                let s = a.service.status();
                // The agent's other models, by name, with the same figures.
                let others: BTreeMap<String, serde_json::Value> = a
                    .registry
                    .all()
                    .into_iter()
                    .filter(|(name, _)| name != a.registry.default_name())
                    .map(|(name, svc)| {
                        let s = svc.status();
                        (
                            name,
                            serde_json::json!({"model": s.model, "slot": s.slot, "trial": s.trial.is_some(),
                                "candidate": s.candidate, "transitions": s.transitions, "counters": s.counters}),
                        )
                    })
                    .collect();
                serde_json::json!({
                    "device": a.id,
                    "model": s.model,
                    "slot": s.slot,
                    "trial": s.trial.is_some(),
                    "candidate": s.candidate,
                    "transitions": s.transitions,
                    "last_transfer": s.last_transfer,
                    "shadow": s.shadow,
                    "counters": s.counters,
                    "models": others,
                })
            })
            .collect()
    }

    /// Waits for every task to stop (after `shutdown`). The records are durable as written.
    pub async fn finish(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Sends `rate` requests per second, round-robin over the agents and, within an agent, over the models it serves
/// now (a model a bundle adds joins the traffic), each a random image.
async fn feed(
    registries: Vec<Arc<Registry>>,
    images: Arc<Vec<crate::serve::bytes_like::Bytes>>,
    rate: f64,
    traffic: Arc<Traffic>,
    shutdown: CancellationToken,
) {
    if rate <= 0.0 || registries.is_empty() {
        return;
    }
    // Ticks of 10 ms, each sending its share, so high rates do not need a timer per request.
    let per_tick = rate / 100.0;
    let mut owed = 0.0;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let limit = Arc::new(tokio::sync::Semaphore::new(256));
    let mut next = 0usize;
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        owed += per_tick;
        while owed >= 1.0 {
            owed -= 1.0;
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                traffic.shed.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let image = images[(seed % images.len() as u64) as usize].clone();
            let registry = &registries[next % registries.len()];
            let all = registry.all();
            let service: Arc<Service> = all
                .get((next / registries.len()) % all.len().max(1))
                .map(|(_, s)| s.clone())
                .unwrap_or_else(|| registry.default_service());
            next += 1;
            let t = traffic.clone();
            t.sent.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                match service
                    .answer(crate::serve::Request::of(crate::serve::Input::Image(image)))
                    .await
                {
                    Ok(_) => {
                        t.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if t.failed.fetch_add(1, Ordering::Relaxed) < 5 {
                            tracing::warn!(error = %e, "a simulated request failed");
                        }
                    }
                }
                drop(permit);
            });
        }
    }
}

/// Peak and current resident memory of this process, in bytes (Linux; zeros elsewhere).
pub fn rss() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmHWM:"), field("VmRSS:"))
}
