//! Hard cases to the cloud tier: the hardness policy, the case and answer messages, and the forwarder that sits
//! between the request path and the fleet link.
//!
//! A hard case is written to the durable outbox before anything else happens, then handed to the fleet link, which
//! sends it as an MQTT 5 request (response topic + correlation data) and resends it, paced, after reconnects and
//! restarts until the cloud answers. The request waits at most the deadline for that answer; after it the client
//! gets the edge result and the case stays queued. The answer removes the case from the outbox and is cached, so a
//! repeated hard case does not travel twice.

pub mod cloud;

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

use crate::config::{ForwardConfig, HardnessScore};
use crate::store::{CacheKey, CachedResult, Outbox, ResultCache};

/// Largest case accepted by a cloud worker, and largest answer accepted by a device.
pub const MAX_CASE: usize = 8 * 1024 * 1024;
pub const MAX_ANSWER: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("cannot queue the hard case: {0}")]
    Outbox(String),
}

/// A hard case as sent to the cloud. `id` comes first: the outbox indexes cases by it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Case {
    pub id: String,
    pub device: String,
    /// The encoded image as the client sent it: the cloud model preprocesses for itself.
    #[serde(with = "serde_bytes")]
    pub image: Vec<u8>,
    pub edge_label: String,
    pub edge_confidence: f32,
    pub edge_model: String,
    /// Where the device caches the cloud's answer.
    #[serde(with = "serde_bytes")]
    pub cache_key: Vec<u8>,
    pub created_unix: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub id: String,
    pub label: String,
    pub index: u32,
    pub confidence: f32,
    pub margin: f32,
    pub entropy: f32,
    /// Digest of the cloud model.
    pub model: String,
}

pub fn decode_case(bytes: &[u8]) -> Result<Case, String> {
    if bytes.len() > MAX_CASE {
        return Err(format!("case of {} bytes exceeds {MAX_CASE}", bytes.len()));
    }
    postcard::from_bytes(bytes).map_err(|e| format!("malformed case: {e}"))
}

pub fn decode_answer(bytes: &[u8]) -> Result<Answer, String> {
    if bytes.len() > MAX_ANSWER {
        return Err(format!(
            "answer of {} bytes exceeds {MAX_ANSWER}",
            bytes.len()
        ));
    }
    postcard::from_bytes(bytes).map_err(|e| format!("malformed answer: {e}"))
}

/// A fresh case id: 16 random bytes in hex.
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    let _ = getrandom::fill(&mut b);
    hex::encode(b)
}

pub struct Forwarder {
    outbox: Outbox,
    cache: Option<Arc<ResultCache>>,
    to_link: mpsc::Sender<Vec<u8>>,
    waiters: Mutex<HashMap<String, oneshot::Sender<Answer>>>,
    score: HardnessScore,
    /// Precedence: `set` at run time, then the config, then the serving model's manifest, then the default.
    runtime: Mutex<Option<f32>>,
    configured: Option<f32>,
    manifest: Mutex<Option<f32>>,
    deadline: Duration,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Forwarder {
    /// The forwarder and the receiving end the fleet link reads new cases from.
    pub fn new(
        outbox: Outbox,
        cache: Option<Arc<ResultCache>>,
        config: &ForwardConfig,
    ) -> (Arc<Forwarder>, mpsc::Receiver<Vec<u8>>) {
        let (tx, rx) = mpsc::channel(1024);
        (
            Arc::new(Forwarder {
                outbox,
                cache,
                to_link: tx,
                waiters: Mutex::new(HashMap::new()),
                score: config.score,
                runtime: Mutex::new(None),
                configured: config.threshold,
                manifest: Mutex::new(None),
                deadline: Duration::from_millis(config.deadline_ms),
            }),
            rx,
        )
    }

    /// The `set hardness.threshold` command.
    pub fn set_threshold(&self, t: f32) {
        *lock(&self.runtime) = Some(t);
    }

    /// The serving model's manifest threshold (None for the built-in model or a bundle without one).
    pub fn set_manifest_threshold(&self, t: Option<f32>) {
        *lock(&self.manifest) = t;
    }

    pub fn policy(&self) -> (HardnessScore, f32) {
        let t = (*lock(&self.runtime))
            .or(self.configured)
            .or(*lock(&self.manifest))
            .unwrap_or_else(|| ForwardConfig::default_threshold(self.score));
        (self.score, t)
    }

    pub fn is_hard(&self, confidence: f32, margin: f32, entropy: f32) -> bool {
        let (score, t) = self.policy();
        score.is_hard(t, confidence, margin, entropy)
    }

    /// Queues the case durably, hands it to the link and waits up to the deadline for the cloud's answer.
    pub async fn forward(&self, case: Case) -> Result<Option<Answer>, ForwardError> {
        let bytes = postcard::to_stdvec(&case).map_err(|e| ForwardError::Outbox(e.to_string()))?;
        let outbox = self.outbox.clone();
        let (id, b) = (case.id.clone(), bytes.clone());
        let dropped = tokio::task::spawn_blocking(move || outbox.push(&id, &b))
            .await
            .map_err(|e| ForwardError::Outbox(e.to_string()))?
            .map_err(|e| ForwardError::Outbox(e.to_string()))?;
        if dropped > 0 {
            metrics::counter!(crate::telemetry::OUTBOX_DROPPED).increment(dropped);
            tracing::warn!(dropped, "outbox full: dropped the oldest hard cases");
        }
        metrics::gauge!(crate::telemetry::OUTBOX_PENDING).set(self.outbox.len() as f64);
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters).insert(case.id.clone(), tx);
        // A full channel is fine: the case is in the outbox and the link's resend picks it up.
        let _ = self.to_link.try_send(bytes);
        let answer = tokio::time::timeout(self.deadline, rx)
            .await
            .ok()
            .and_then(|r| r.ok());
        lock(&self.waiters).remove(&case.id);
        metrics::counter!(crate::telemetry::FORWARDED, "result" => if answer.is_some() { "cloud" } else { "queued" }).increment(1);
        Ok(answer)
    }

    /// The cloud answered (blocking: removes the case and caches the answer). Returns false for an unknown or
    /// already answered case.
    pub fn answered(&self, answer: Answer) -> bool {
        let case = match self.outbox.take(&answer.id) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot remove an answered case from the outbox");
                None
            }
        };
        metrics::gauge!(crate::telemetry::OUTBOX_PENDING).set(self.outbox.len() as f64);
        let known = case.is_some();
        if let (Some(cache), Some(case)) = (
            &self.cache,
            case.as_deref().and_then(|c| decode_case(c).ok()),
        ) {
            if let Some(key) = CacheKey::from_bytes(&case.cache_key) {
                let entry = CachedResult {
                    label: answer.label.clone(),
                    index: answer.index,
                    confidence: answer.confidence,
                    margin: answer.margin,
                    entropy: answer.entropy,
                    tier: "cloud".into(),
                };
                if let Err(e) = cache.insert(&key, &entry) {
                    tracing::warn!(error = %e, "cannot cache the cloud's answer");
                }
            }
        }
        if let Some(w) = lock(&self.waiters).remove(&answer.id) {
            let _ = w.send(answer);
        }
        known
    }

    /// Up to `n` queued cases, oldest first (blocking).
    pub fn queued(&self, n: usize) -> Vec<Vec<u8>> {
        self.outbox.oldest(n).unwrap_or_default()
    }

    pub fn outbox_len(&self) -> u64 {
        self.outbox.len()
    }

    pub fn status(&self) -> serde_json::Value {
        let (score, t) = self.policy();
        serde_json::json!({
            "score": score.name(),
            "threshold": t,
            "deadline_ms": self.deadline.as_millis() as u64,
            "outbox": {"pending": self.outbox.len(), "bytes": self.outbox.bytes(), "dropped": self.outbox.dropped()},
        })
    }
}
