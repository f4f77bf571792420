//! The forwarder between the request path and the fleet link: hard cases written to the outbox first, handed to the
//! link, waited for within the deadline; answers verified against their pending case, cached and counted.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

use crate::config::{ForwardConfig, HardnessScore};
use crate::store::{CacheKey, CachedAnswer, CachedResult, Outbox, ResultCache};
use crate::wire::status::{ForwardStatus, OutboxStatus};

use super::*;

pub struct Forwarder {
    device: String,
    /// The cloud role of the device's trust, read at each answer: a worker key a rotation removed is refused at once.
    trust: Arc<crate::trust::LiveTrust>,
    outbox: Outbox,
    cache: Option<Arc<ResultCache>>,
    to_link: mpsc::Sender<Vec<u8>>,
    /// Requests waiting for a case's answer: more than one when the same input came again while it was pending.
    waiters: Mutex<HashMap<String, Vec<oneshot::Sender<Answer>>>>,
    score: HardnessScore,
    /// The configured threshold. Each model has its own `set` and manifest thresholds (see [`Forwarder::policy`]).
    configured: Option<f32>,
    deadline: Duration,
    /// Ids answered lately, so a second delivery of a good answer is told apart from an answer to no case.
    recent: Mutex<(VecDeque<String>, HashSet<String>)>,
    /// Answers by result (`accepted` or a refusal reason), for the status.
    answers: Mutex<BTreeMap<&'static str, u64>>,
    /// The device's clock and time floor: cases are stamped by it, verified answers raise it.
    clock: Arc<crate::clock::Clock>,
}

const RECENT: usize = 4096;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Forwarder {
    /// The forwarder and the receiving end the fleet link reads new cases from.
    pub fn new(
        device: &str,
        trust: Arc<crate::trust::LiveTrust>,
        outbox: Outbox,
        cache: Option<Arc<ResultCache>>,
        config: &ForwardConfig,
        clock: Arc<crate::clock::Clock>,
    ) -> (Arc<Forwarder>, mpsc::Receiver<Vec<u8>>) {
        let (tx, rx) = mpsc::channel(1024);
        (
            Arc::new(Forwarder {
                device: device.to_string(),
                trust,
                outbox,
                cache,
                to_link: tx,
                waiters: Mutex::new(HashMap::new()),
                score: config.score,
                configured: config.threshold,
                deadline: Duration::from_millis(config.deadline_ms),
                recent: Mutex::new((VecDeque::new(), HashSet::new())),
                answers: Mutex::new(BTreeMap::new()),
                clock,
            }),
            rx,
        )
    }

    /// The time a hard case is stamped with: the device's trusted estimate of now (the clock, unless it is far ahead
    /// of every signed time seen or behind them), so that a device whose clock reads 2040 still matches the answers
    /// of a worker whose clock is right, and its cases are answered once the clock is fixed.
    pub fn now_unix(&self) -> u64 {
        self.clock.reading().trusted_now()
    }

    /// The hardness policy of one model: its `set hardness.threshold` (`runtime`), then the configured threshold,
    /// then its release's manifest threshold, then the score's default.
    pub fn policy(&self, runtime: Option<f32>, manifest: Option<f32>) -> (HardnessScore, f32) {
        let t = runtime
            .or(self.configured)
            .or(manifest)
            .unwrap_or_else(|| ForwardConfig::default_threshold(self.score));
        (self.score, t)
    }

    /// Queues the case durably, hands it to the link and waits up to the deadline for the cloud's answer.
    pub async fn forward(&self, case: Case) -> Result<Option<Answer>, ForwardError> {
        let bytes = encode_case(&case)?;
        let outbox = self.outbox.clone();
        let (id, b) = (case.id.clone(), bytes.clone());
        // The same case may be queued already (a retried request): it is then neither stored nor sent twice.
        let (dropped, fresh) = crate::blocking::run(move || outbox.push(&id, &b))
            .await
            .map_err(|e| match e {
                e @ (crate::store::StoreError::DiskFull { .. }
                | crate::store::StoreError::DbDiskFull(_)
                | crate::store::StoreError::Unavailable { .. }) => {
                    metrics::counter!(crate::telemetry::FORWARDED, "result" => "disk_full")
                        .increment(1);
                    ForwardError::DiskFull(e.to_string())
                }
                e => ForwardError::Outbox(e.to_string()),
            })?;
        if dropped > 0 {
            metrics::counter!(crate::telemetry::OUTBOX_DROPPED).increment(dropped);
            tracing::warn!(dropped, "outbox full: dropped the oldest hard cases");
        }
        metrics::gauge!(crate::telemetry::OUTBOX_PENDING).set(self.outbox.len() as f64);
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters)
            .entry(case.id.clone())
            .or_default()
            .push(tx);
        // A full channel is fine: the case is in the outbox and the link's resend picks it up.
        if fresh {
            let _ = self.to_link.try_send(bytes);
        }
        let answer = tokio::time::timeout(self.deadline, rx)
            .await
            .ok()
            .and_then(|r| r.ok());
        {
            let mut waiters = lock(&self.waiters);
            if let Some(w) = waiters.get_mut(&case.id) {
                w.retain(|tx| !tx.is_closed());
                if w.is_empty() {
                    waiters.remove(&case.id);
                }
            }
        }
        metrics::counter!(crate::telemetry::FORWARDED, "result" => if answer.is_some() { "cloud" } else { "queued" }).increment(1);
        Ok(answer)
    }

    /// An answer arrived on the answer topic (blocking). It is verified ([`verify_answer`]) and matched with its
    /// pending case (same input digest, issued no earlier than the case) before anything changes; only then is the
    /// case removed from the outbox, the answer cached and a waiting request woken. Every outcome is counted.
    pub fn receive(
        &self,
        bytes: &[u8],
        content_type: Option<&str>,
        correlation: Option<&[u8]>,
    ) -> Result<Answer, ForwardError> {
        let result = self.check_and_take(bytes, content_type, correlation);
        let label = match &result {
            Ok(_) => "accepted",
            Err(e) => e.reason(),
        };
        *lock(&self.answers).entry(label).or_insert(0) += 1;
        metrics::counter!(crate::telemetry::CLOUD_ANSWERS, "result" => label).increment(1);
        let answer = result?;
        for w in lock(&self.waiters).remove(&answer.id).unwrap_or_default() {
            let _ = w.send(answer.clone());
        }
        Ok(answer)
    }

    fn check_and_take(
        &self,
        bytes: &[u8],
        content_type: Option<&str>,
        correlation: Option<&[u8]>,
    ) -> Result<Answer, ForwardError> {
        let role = self
            .trust
            .role(crate::trust::Role::Cloud)
            .map_err(|e| ForwardError::NoTrust(e.to_string()))?;
        let answer = verify_answer(bytes, content_type, correlation, &role.keys, &self.device)?;
        // A worker's signature holds: its issue time has passed, and raises the device's time floor.
        self.clock.observe(answer.issued_unix);
        let store = |e: crate::store::StoreError| ForwardError::Outbox(e.to_string());
        let Some(raw) = self.outbox.get(&answer.id).map_err(store)? else {
            return Err(if lock(&self.recent).1.contains(&answer.id) {
                ForwardError::Duplicate(answer.id)
            } else {
                ForwardError::UnknownCase(answer.id)
            });
        };
        let case = decode_case(&raw)?;
        if case.input_digest() != answer.input {
            return Err(ForwardError::Mismatch("input digest"));
        }
        if answer.issued_unix + CLOCK_SKEW_S < case.created_unix {
            return Err(ForwardError::Stale(answer.id));
        }
        self.outbox.take(&answer.id).map_err(store)?;
        metrics::gauge!(crate::telemetry::OUTBOX_PENDING).set(self.outbox.len() as f64);
        {
            let mut recent = lock(&self.recent);
            if recent.1.insert(answer.id.clone()) {
                recent.0.push_back(answer.id.clone());
            }
            while recent.0.len() > RECENT {
                if let Some(old) = recent.0.pop_front() {
                    recent.1.remove(&old);
                }
            }
        }
        if let (Some(cache), Some(key)) = (&self.cache, CacheKey::from_bytes(&case.cache_key)) {
            let entry = CachedResult {
                label: answer.label.clone(),
                index: answer.index,
                confidence: answer.confidence,
                margin: answer.margin,
                entropy: answer.entropy,
                tier: crate::store::Tier::Cloud,
                output: Vec::new(),
                tensors: Vec::new(),
                answer: answer.task.clone().map(|a| CachedAnswer {
                    answer: a,
                    hardness: 0.0,
                }),
            };
            if let Err(e) = cache.insert(&key, &entry) {
                tracing::warn!(error = %e, "cannot cache the cloud's answer");
            }
        }
        Ok(answer)
    }

    /// Answers received, by result: `accepted` or the reason they were refused.
    pub fn answer_counts(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.answers).clone()
    }

    /// Up to `n` queued cases, oldest first (blocking).
    pub fn queued(&self, n: usize) -> Vec<Vec<u8>> {
        self.outbox.oldest(n).unwrap_or_default()
    }

    pub fn outbox_len(&self) -> u64 {
        self.outbox.len()
    }

    /// The forwarding status as one model sees it (its own thresholds; the outbox and answers are shared).
    pub fn status(&self, runtime: Option<f32>, manifest: Option<f32>) -> ForwardStatus {
        let (score, threshold) = self.policy(runtime, manifest);
        ForwardStatus {
            score,
            threshold,
            deadline_ms: self.deadline.as_millis() as u64,
            outbox: OutboxStatus {
                pending: self.outbox.len(),
                bytes: self.outbox.bytes(),
                dropped: self.outbox.dropped(),
                refused_disk_full: self.outbox.refused_disk_full(),
            },
            answers: self
                .answer_counts()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            budget: None,
        }
    }
}
