//! What a request does, independent of how it arrived: decode, look up the cache, queue for a worker, cache the
//! answer. The HTTP API is a thin mapping over this.

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::AgentError;
use crate::config::Config;
use crate::inference::{DecodeLimits, Engine, InferenceError};
use crate::store::{CacheKey, CachedResult, ResultCache};
use crate::telemetry::{Counters, Outcome};
use crate::worker::{Pool, PoolError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub version: u64,
    pub digest: String,
}

impl ModelInfo {
    pub fn of(engine: &Engine) -> ModelInfo {
        ModelInfo {
            name: engine.spec().name.clone(),
            version: engine.spec().version,
            digest: engine.digest().to_string(),
        }
    }
}

/// The answer to one inference request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferResponse {
    pub label: String,
    pub confidence: f32,
    pub margin: f32,
    pub entropy: f32,
    /// `edge` (the local model ran) or `cache`.
    pub source: String,
    pub model: ModelInfo,
    pub latency_us: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The input is at fault (not an image, too large, corrupt...): the caller should fix it.
    #[error("{0}")]
    BadInput(InferenceError),
    #[error(transparent)]
    Busy(PoolError),
    #[error("internal error: {0}")]
    Internal(String),
}

pub struct Service {
    model: ArcSwap<Engine>,
    pool: Arc<Pool>,
    cache: Option<Arc<ResultCache>>,
    limits: DecodeLimits,
    pub counters: Counters,
    started: Instant,
    /// Where the served model came from: `builtin`, `file`, or slot `a`/`b`.
    slot: arc_swap::ArcSwap<String>,
    config: Config,
}

impl Service {
    pub fn new(
        engine: Engine,
        pool: Arc<Pool>,
        cache: Option<ResultCache>,
        config: &Config,
    ) -> Result<Service, AgentError> {
        let limits = DecodeLimits {
            max_bytes: config.api.max_body_bytes,
            max_width: config.api.max_image_side,
            max_height: config.api.max_image_side,
            ..DecodeLimits::default()
        };
        let service = Service {
            model: ArcSwap::from_pointee(engine),
            pool,
            cache: cache.map(Arc::new),
            limits,
            counters: Counters::default(),
            started: Instant::now(),
            slot: ArcSwap::from_pointee(String::new()),
            config: config.clone(),
        };
        service.publish_model_info();
        Ok(service)
    }

    fn publish_model_info(&self) {
        let m = ModelInfo::of(&self.model.load());
        metrics::gauge!(crate::telemetry::MODEL_INFO, "name" => m.name, "version" => m.version.to_string(), "digest" => m.digest).set(1.0);
    }

    pub fn set_slot(&self, slot: &str) {
        self.slot.store(Arc::new(slot.to_string()));
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Makes `engine` serve new requests; requests already admitted finish on the engine they started with.
    pub fn swap(&self, engine: Engine, slot: &str) {
        self.model.store(Arc::new(engine));
        self.set_slot(slot);
        self.publish_model_info();
    }

    /// Largest request body accepted (`api.max_body_bytes`).
    pub fn max_body_bytes(&self) -> usize {
        self.limits.max_bytes
    }

    /// The model serving new requests.
    pub fn engine(&self) -> Arc<Engine> {
        self.model.load_full()
    }

    /// Answers one encoded image (PNG or JPEG).
    pub async fn infer(&self, body: bytes_like::Bytes) -> Result<InferResponse, ServiceError> {
        let start = Instant::now();
        let result = self.infer_inner(body, start).await;
        let outcome = match &result {
            Ok(r) if r.source == "cache" => Outcome::Cache,
            Ok(_) => Outcome::Edge,
            Err(ServiceError::BadInput(_)) => Outcome::BadInput,
            Err(ServiceError::Busy(_)) => Outcome::Busy,
            Err(ServiceError::Internal(_)) => Outcome::Error,
        };
        self.counters.record(outcome, start.elapsed());
        metrics::gauge!(crate::telemetry::QUEUE_DEPTH).set(self.pool.depth() as f64);
        result
    }

    async fn infer_inner(
        &self,
        body: bytes_like::Bytes,
        start: Instant,
    ) -> Result<InferResponse, ServiceError> {
        // The engine is chosen once, at admission: the whole request runs against it even if a swap happens.
        let engine = self.engine();
        let limits = self.limits;
        let cache = self.cache.clone();
        let e = engine.clone();
        // Decoding and the cache lookup are blocking work too.
        let (tensor, key, hit) = tokio::task::spawn_blocking(move || {
            let tensor = e
                .tensor_from_image(&body, &limits)
                .map_err(ServiceError::BadInput)?;
            let key = CacheKey::new(e.digest(), &tensor);
            let hit = match &cache {
                Some(c) => c.get(&key).unwrap_or_else(|err| {
                    tracing::warn!(error = %err, "cache lookup failed; running the model");
                    None
                }),
                None => None,
            };
            Ok::<_, ServiceError>((tensor, key, hit))
        })
        .await
        .map_err(|e| ServiceError::Internal(e.to_string()))??;

        let model = ModelInfo::of(&engine);
        if let Some(hit) = hit {
            return Ok(InferResponse {
                label: hit.label,
                confidence: hit.confidence,
                margin: hit.margin,
                entropy: hit.entropy,
                source: "cache".into(),
                model,
                latency_us: micros(start.elapsed()),
            });
        }

        let rx = self
            .pool
            .submit((*engine).clone(), tensor)
            .map_err(ServiceError::Busy)?;
        let prediction = rx
            .await
            .map_err(|_| ServiceError::Internal("the worker stopped before answering".into()))?
            .map_err(|e| match e {
                InferenceError::InputShape { .. } => ServiceError::BadInput(e),
                other => ServiceError::Internal(other.to_string()),
            })?;
        if let Some(cache) = self.cache.clone() {
            let entry = CachedResult {
                label: prediction.label.clone(),
                index: prediction.index as u32,
                confidence: prediction.confidence,
                margin: prediction.margin,
                entropy: prediction.entropy,
                tier: "edge".into(),
            };
            let stored =
                tokio::task::spawn_blocking(move || cache.insert(&key, &entry).map(|n| (n, cache)))
                    .await;
            match stored {
                Ok(Ok((evicted, _))) if evicted > 0 => {
                    metrics::counter!(crate::telemetry::CACHE_EVICTIONS).increment(evicted)
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot cache the result"),
                _ => {}
            }
        }
        Ok(InferResponse {
            label: prediction.label,
            confidence: prediction.confidence,
            margin: prediction.margin,
            entropy: prediction.entropy,
            source: "edge".into(),
            model,
            latency_us: micros(start.elapsed()),
        })
    }

    /// What `GET /v1/status` shows.
    pub fn status(&self) -> serde_json::Value {
        let engine = self.engine();
        let cache = self.cache.as_ref().map(|c| {
            serde_json::json!({"entries": c.len(), "bytes": c.bytes(), "evictions": c.evictions()})
        });
        serde_json::json!({
            "agent_version": env!("CARGO_PKG_VERSION"),
            "model": ModelInfo::of(&engine),
            "slot": self.slot.load().as_str(),
            "uptime_s": self.started.elapsed().as_secs(),
            "workers": self.pool.workers(),
            "queue_depth": self.pool.depth(),
            "counters": self.counters.snapshot(),
            "cache": cache,
        })
    }
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

/// The body type the service takes (re-exported so the API layer and tests need not name axum's).
pub mod bytes_like {
    pub use axum::body::Bytes;
}
