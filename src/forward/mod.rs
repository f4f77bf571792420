//! Hard cases to the cloud tier: the hardness policy, the case and answer messages, and the forwarder that sits
//! between the request path and the fleet link.
//!
//! A hard case is written to the durable outbox before anything else happens, then handed to the fleet link, which
//! sends it as an MQTT 5 request (response topic + correlation data) and resends it, paced, after reconnects and
//! restarts until the cloud answers. The request waits at most the deadline for that answer; after it the client
//! gets the edge result and the case stays queued. The answer removes the case from the outbox and is cached, so a
//! repeated hard case does not travel twice.
//!
//! Whoever can publish on a device's answer topic would otherwise decide what the device answers for that input for
//! as long as the cache keeps it, so an answer is believed only when it is signed by a cloud key the device trusts
//! (`forward.cloud_keys`) and binds the pending case it answers: case id, device, digest of the image sent, and an
//! issue time no earlier than the case. Everything else is refused before it touches the outbox or the cache, and
//! counted by reason (`outpost_cloud_answers_total{result}`); the request is answered from the edge.

pub mod budget;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

use crate::bundle::keys::{SigningKeyFile, TrustedKeys};
use crate::config::{ForwardConfig, HardnessScore};
use crate::inference::task::{Overrides, Task, TaskAnswer};
use crate::store::{CacheKey, CachedAnswer, CachedResult, Outbox, ResultCache};
use crate::wire::status::{ForwardStatus, OutboxStatus};

/// Largest case accepted by a cloud worker, and largest answer accepted by a device.
pub const MAX_CASE: usize = 8 * 1024 * 1024;
pub const MAX_ANSWER: usize = 64 * 1024;

/// MQTT 5 content type of a classifier's answer; anything but the two answer types on the answer topic is refused
/// unread.
pub const ANSWER_CONTENT_TYPE: &str = "application/vnd.outpost.answer.v1+postcard";
/// Content type of an answer that carries a task's answer (detections, scores): format 2 of the signed answer.
/// Classifier answers stay format 1, so agents from before task models keep reading them.
pub const ANSWER_V2_CONTENT_TYPE: &str = "application/vnd.outpost.answer.v2+postcard";
/// Signatures over answers are domain-separated, so no other signed Outpost message (bundle, command) can pass as one,
/// and an answer of one format never verifies as the other.
const ANSWER_DOMAIN: &[u8] = b"outpost-cloud-answer-v1\0";
const ANSWER_V2_DOMAIN: &[u8] = b"outpost-cloud-answer-v2\0";
/// Clock difference between device and cloud tolerated when an answer's issue time is compared with its case's.
pub const CLOCK_SKEW_S: u64 = 3600;
/// Largest label accepted in an answer.
const MAX_LABEL: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("cannot queue the hard case: {0}")]
    Outbox(String),
    #[error("answer of {0} bytes exceeds {MAX_ANSWER}")]
    Oversized(usize),
    #[error("content type {0:?} is not {ANSWER_CONTENT_TYPE:?}")]
    ContentType(Option<String>),
    #[error("malformed answer: {0}")]
    Malformed(String),
    /// The outbox could not take the case for lack of space (its alarm has said so once); the edge answers.
    #[error("the hard case was not queued: {0}")]
    DiskFull(String),
    #[error("the answer is not signed")]
    Unsigned,
    #[error("the answer is signed by key {0}, which the device's trust does not list for the cloud role (removed by \
             a rotation, or never trusted)")]
    UnknownKey(String),
    #[error("no answer can be believed: {0}")]
    NoTrust(String),
    #[error("the answer's signature does not verify (forged or altered)")]
    Forged,
    #[error("the answer's {0} does not match its case")]
    Mismatch(&'static str),
    #[error("the answer for case {0} was issued before the case was created")]
    Stale(String),
    #[error("no pending case {0} (unknown, or answered already)")]
    UnknownCase(String),
    #[error("case {0} was answered already")]
    Duplicate(String),
    #[error(transparent)]
    Panicked(#[from] crate::blocking::Panicked),
}

impl ForwardError {
    /// What a request's answer says became of its hard case when forwarding failed. A full disk is logged once, by
    /// the outbox; anything else here.
    pub fn forwarded(&self) -> crate::wire::status::Forwarded {
        use crate::wire::status::Forwarded;
        match self {
            ForwardError::DiskFull(_) => Forwarded::DiskFull,
            e => {
                tracing::error!(error = %e, "a hard case could not be queued; answering from the edge");
                Forwarded::Failed
            }
        }
    }

    /// The `result` label of `outpost_cloud_answers_total` for a refused answer.
    pub fn reason(&self) -> &'static str {
        match self {
            ForwardError::Outbox(_) => "outbox",
            ForwardError::DiskFull(_) => "disk_full",
            ForwardError::Oversized(_) => "oversized",
            ForwardError::ContentType(_) => "content_type",
            ForwardError::Malformed(_) => "malformed",
            ForwardError::Unsigned => "unsigned",
            ForwardError::UnknownKey(_) => "unknown_key",
            ForwardError::NoTrust(_) => "no_trust",
            ForwardError::Forged => "forged",
            ForwardError::Mismatch(_) => "mismatch",
            ForwardError::Stale(_) => "stale",
            ForwardError::UnknownCase(_) => "unknown_case",
            ForwardError::Duplicate(_) => "duplicate",
            ForwardError::Panicked(_) => "internal",
        }
    }
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
    /// The device's model that found the case hard, so the cloud answers with its counterpart. Empty in cases of
    /// agents before the model repository (their one model). Last, so those agents' workers still read a case.
    pub model: String,
    /// The input as a tensor, when the request brought one (the Open Inference Protocol) instead of an image: the
    /// edge model's input tensor, which the cloud model takes as is. Empty for image cases, which are then encoded
    /// without this field ([`encode_case`]): workers from before tensor cases read them unchanged.
    pub tensor: Vec<f32>,
    /// A task model's case (detection, score): the call's thresholds, which the cloud answers with too, and the
    /// edge model's answer. Last and `None` for a classifier's case, which is then encoded without it.
    pub task: Option<TaskCase>,
}

/// What a task model's hard case adds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskCase {
    pub overrides: Overrides,
    pub edge_answer: TaskAnswer,
    pub edge_hardness: f32,
    /// A scorer of tensors' inputs (the case's `image` and `tensor` are then empty); empty for an image's case.
    pub inputs: Vec<crate::inference::TensorValue>,
}

/// A case as agents before task models wrote it (and as a classifier's tensor case is still encoded).
#[derive(Serialize, Deserialize)]
struct CaseV3 {
    id: String,
    device: String,
    #[serde(with = "serde_bytes")]
    image: Vec<u8>,
    edge_label: String,
    edge_confidence: f32,
    edge_model: String,
    #[serde(with = "serde_bytes")]
    cache_key: Vec<u8>,
    created_unix: u64,
    model: String,
    tensor: Vec<f32>,
}

/// A case as agents before tensor cases wrote it (and as image cases are still encoded).
#[derive(Serialize, Deserialize)]
struct CaseV2 {
    id: String,
    device: String,
    #[serde(with = "serde_bytes")]
    image: Vec<u8>,
    edge_label: String,
    edge_confidence: f32,
    edge_model: String,
    #[serde(with = "serde_bytes")]
    cache_key: Vec<u8>,
    created_unix: u64,
    model: String,
}

impl Case {
    /// SHA-256 of what the case asks about, as the signed answer binds it: the image as sent or, for a tensor case,
    /// the tensor's little-endian bytes under a domain tag (so no image can collide with a tensor).
    pub fn input_digest(&self) -> [u8; 32] {
        if let Some(t) = self.task.as_ref().filter(|t| !t.inputs.is_empty()) {
            let mut h = Sha256::new();
            h.update(b"outpost-case-tensors-v1\0");
            h.update(crate::inference::tensor::tensors_digest(&t.inputs));
            return h.finalize().into();
        }
        if self.tensor.is_empty() {
            return input_digest(&self.image);
        }
        let mut h = Sha256::new();
        h.update(b"outpost-case-tensor-v1\0");
        for x in &self.tensor {
            h.update(x.to_le_bytes());
        }
        h.finalize().into()
    }
}

/// A case's bytes: a classifier's image case in the form workers before tensor cases read, its tensor case in the
/// form workers before task models read, a task model's case whole.
pub fn encode_case(case: &Case) -> Result<Vec<u8>, String> {
    let r = if case.task.is_some() {
        postcard::to_stdvec(case)
    } else if !case.tensor.is_empty() {
        postcard::to_stdvec(&CaseV3 {
            id: case.id.clone(),
            device: case.device.clone(),
            image: case.image.clone(),
            edge_label: case.edge_label.clone(),
            edge_confidence: case.edge_confidence,
            edge_model: case.edge_model.clone(),
            cache_key: case.cache_key.clone(),
            created_unix: case.created_unix,
            model: case.model.clone(),
            tensor: case.tensor.clone(),
        })
    } else if case.tensor.is_empty() {
        postcard::to_stdvec(&CaseV2 {
            id: case.id.clone(),
            device: case.device.clone(),
            image: case.image.clone(),
            edge_label: case.edge_label.clone(),
            edge_confidence: case.edge_confidence,
            edge_model: case.edge_model.clone(),
            cache_key: case.cache_key.clone(),
            created_unix: case.created_unix,
            model: case.model.clone(),
        })
    } else {
        postcard::to_stdvec(case)
    };
    r.map_err(|e| e.to_string())
}

/// A case as agents before the model repository wrote it (still in their outboxes after an upgrade).
#[derive(Deserialize)]
struct CaseV1 {
    id: String,
    device: String,
    #[serde(with = "serde_bytes")]
    image: Vec<u8>,
    edge_label: String,
    edge_confidence: f32,
    edge_model: String,
    #[serde(with = "serde_bytes")]
    cache_key: Vec<u8>,
    created_unix: u64,
}

/// The cloud's answer to one case. Every field is covered by the signature of the [`SignedAnswer`] that carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub id: String,
    /// The device that sent the case.
    pub device: String,
    /// SHA-256 of the image the case carried.
    pub input: [u8; 32],
    /// Digest of the cloud model.
    pub model: String,
    pub issued_unix: u64,
    pub label: String,
    pub index: u32,
    pub confidence: f32,
    pub margin: f32,
    pub entropy: f32,
    /// A task model's answer (format 2): `label` is then its summary and `confidence` the task's confidence. Last;
    /// a classifier's answer is signed without it, as format 1 ([`AnswerV1`]).
    pub task: Option<TaskAnswer>,
}

/// A classifier's answer as format 1 signs it (what agents before task models read).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerV1 {
    pub id: String,
    pub device: String,
    pub input: [u8; 32],
    pub model: String,
    pub issued_unix: u64,
    pub label: String,
    pub index: u32,
    pub confidence: f32,
    pub margin: f32,
    pub entropy: f32,
}

/// What travels on the answer topic: the encoded [`Answer`] and one signature over it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedAnswer {
    #[serde(with = "serde_bytes")]
    pub answer: Vec<u8>,
    pub key_id: String,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl Answer {
    /// The answer to `case`, bound to it, issued now.
    pub fn to_case(case: &Case, model: &str, p: &crate::inference::Prediction) -> Answer {
        Answer {
            id: case.id.clone(),
            device: case.device.clone(),
            input: case.input_digest(),
            model: model.to_string(),
            issued_unix: crate::bundle::now_unix(),
            label: p.label.clone(),
            index: p.index as u32,
            confidence: p.confidence,
            margin: p.margin,
            entropy: p.entropy,
            task: None,
        }
    }

    /// A task model's answer to `case`, bound to it, issued now.
    pub fn to_task_case(case: &Case, model: &str, task: &Task, answer: TaskAnswer) -> Answer {
        Answer {
            id: case.id.clone(),
            device: case.device.clone(),
            input: case.input_digest(),
            model: model.to_string(),
            issued_unix: crate::bundle::now_unix(),
            label: answer.summary(),
            index: 0,
            confidence: answer.confidence(task).clamp(0.0, 1.0),
            margin: 0.0,
            entropy: 0.0,
            task: Some(answer),
        }
    }

    /// The MQTT 5 content type this answer travels with (its format).
    pub fn content_type(&self) -> &'static str {
        if self.task.is_some() {
            ANSWER_V2_CONTENT_TYPE
        } else {
            ANSWER_CONTENT_TYPE
        }
    }

    /// Encodes and signs the answer (the cloud worker's side): format 1 for a classifier, 2 for a task's answer.
    pub fn sign(&self, key: &SigningKeyFile) -> Vec<u8> {
        let answer = match self.task {
            Some(_) => postcard::to_stdvec(self),
            None => postcard::to_stdvec(&AnswerV1 {
                id: self.id.clone(),
                device: self.device.clone(),
                input: self.input,
                model: self.model.clone(),
                issued_unix: self.issued_unix,
                label: self.label.clone(),
                index: self.index,
                confidence: self.confidence,
                margin: self.margin,
                entropy: self.entropy,
            }),
        }
        .expect("an answer always encodes");
        let sig = key.sign(&signed_message(self.content_type(), &answer));
        postcard::to_stdvec(&SignedAnswer {
            answer,
            key_id: sig.key_id,
            signature: sig.signature,
        })
        .expect("a signed answer always encodes")
    }
}

fn signed_message(content_type: &str, answer: &[u8]) -> Vec<u8> {
    let domain = if content_type == ANSWER_V2_CONTENT_TYPE {
        ANSWER_V2_DOMAIN
    } else {
        ANSWER_DOMAIN
    };
    [domain, answer].concat()
}

/// SHA-256 of the image a case carries, as an answer binds it.
pub fn input_digest(image: &[u8]) -> [u8; 32] {
    Sha256::digest(image).into()
}

/// A hard case's id: derived from the device and the cache key (model digest + input digest), so a request that is
/// retried after a crash queues the same case again rather than a second one, and the cloud stores it once.
pub fn case_id(device: &str, cache_key: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"outpost-case-v1\0");
    h.update((device.len() as u64).to_be_bytes());
    h.update(device.as_bytes());
    h.update(cache_key);
    hex::encode(&h.finalize()[..16])
}

pub fn decode_case(bytes: &[u8]) -> Result<Case, String> {
    if bytes.len() > MAX_CASE {
        return Err(format!("case of {} bytes exceeds {MAX_CASE}", bytes.len()));
    }
    if let Ok((case, [])) = postcard::take_from_bytes::<Case>(bytes) {
        return Ok(case);
    }
    if let Ok((v3, [])) = postcard::take_from_bytes::<CaseV3>(bytes) {
        return Ok(Case {
            id: v3.id,
            device: v3.device,
            image: v3.image,
            edge_label: v3.edge_label,
            edge_confidence: v3.edge_confidence,
            edge_model: v3.edge_model,
            cache_key: v3.cache_key,
            created_unix: v3.created_unix,
            model: v3.model,
            tensor: v3.tensor,
            task: None,
        });
    }
    if let Ok((v2, [])) = postcard::take_from_bytes::<CaseV2>(bytes) {
        return Ok(Case {
            id: v2.id,
            device: v2.device,
            image: v2.image,
            edge_label: v2.edge_label,
            edge_confidence: v2.edge_confidence,
            edge_model: v2.edge_model,
            cache_key: v2.cache_key,
            created_unix: v2.created_unix,
            model: v2.model,
            tensor: Vec::new(),
            task: None,
        });
    }
    let (v1, rest): (CaseV1, _) =
        postcard::take_from_bytes(bytes).map_err(|e| format!("malformed case: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("malformed case: {} trailing bytes", rest.len()));
    }
    Ok(Case {
        id: v1.id,
        device: v1.device,
        image: v1.image,
        edge_label: v1.edge_label,
        edge_confidence: v1.edge_confidence,
        edge_model: v1.edge_model,
        cache_key: v1.cache_key,
        created_unix: v1.created_unix,
        model: String::new(),
        tensor: Vec::new(),
        task: None,
    })
}

/// Checks everything an answer says about itself: size, content type, encoding, a valid signature by a trusted cloud
/// key, sane values and the device it is for. Whether it answers a pending case is for [`Forwarder::receive`].
pub fn verify_answer(
    bytes: &[u8],
    content_type: Option<&str>,
    correlation: Option<&[u8]>,
    keys: &TrustedKeys,
    device: &str,
) -> Result<Answer, ForwardError> {
    if bytes.len() > MAX_ANSWER {
        return Err(ForwardError::Oversized(bytes.len()));
    }
    let content_type = match content_type {
        Some(t @ (ANSWER_CONTENT_TYPE | ANSWER_V2_CONTENT_TYPE)) => t,
        other => return Err(ForwardError::ContentType(other.map(str::to_string))),
    };
    let signed: SignedAnswer =
        postcard::from_bytes(bytes).map_err(|e| ForwardError::Malformed(e.to_string()))?;
    if signed.signature.is_empty() || signed.key_id.is_empty() {
        return Err(ForwardError::Unsigned);
    }
    if !keys.knows(&signed.key_id) {
        return Err(ForwardError::UnknownKey(signed.key_id));
    }
    if !keys.verify(
        &signed.key_id,
        &signed_message(content_type, &signed.answer),
        &signed.signature,
    ) {
        return Err(ForwardError::Forged);
    }
    let malformed = |e: postcard::Error| ForwardError::Malformed(e.to_string());
    let answer: Answer = if content_type == ANSWER_V2_CONTENT_TYPE {
        let a: Answer = postcard::from_bytes(&signed.answer).map_err(malformed)?;
        let Some(task) = &a.task else {
            return Err(ForwardError::Malformed(
                "a format 2 answer carries a task's answer".into(),
            ));
        };
        task.check().map_err(ForwardError::Malformed)?;
        a
    } else {
        let v: AnswerV1 = postcard::from_bytes(&signed.answer).map_err(malformed)?;
        Answer {
            id: v.id,
            device: v.device,
            input: v.input,
            model: v.model,
            issued_unix: v.issued_unix,
            label: v.label,
            index: v.index,
            confidence: v.confidence,
            margin: v.margin,
            entropy: v.entropy,
            task: None,
        }
    };
    let unit = |x: f32| x.is_finite() && (0.0..=1.0).contains(&x);
    if answer.label.is_empty()
        || answer.label.len() > MAX_LABEL
        || !unit(answer.confidence)
        || !unit(answer.margin)
        || !answer.entropy.is_finite()
    {
        return Err(ForwardError::Malformed(
            "label or scores out of range".into(),
        ));
    }
    if correlation.is_some_and(|c| c != answer.id.as_bytes()) {
        return Err(ForwardError::Mismatch("correlation data"));
    }
    if answer.device != device {
        return Err(ForwardError::Mismatch("device"));
    }
    Ok(answer)
}

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
        let bytes = encode_case(&case).map_err(ForwardError::Outbox)?;
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
        let case = decode_case(&raw).map_err(ForwardError::Outbox)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::task::{Detection, Detections};

    fn case(task: bool) -> Case {
        Case {
            id: "c1".into(),
            device: "d1".into(),
            image: vec![1, 2, 3],
            edge_label: "1 boxes".into(),
            edge_confidence: 0.5,
            edge_model: "m".into(),
            cache_key: vec![0; 64],
            created_unix: 1,
            model: "det".into(),
            tensor: Vec::new(),
            task: task.then(|| TaskCase {
                overrides: Overrides::default(),
                edge_answer: detections(0.5),
                edge_hardness: 1.0,
                inputs: Vec::new(),
            }),
        }
    }

    fn detections(score: f32) -> TaskAnswer {
        TaskAnswer::Detections(Detections {
            detections: vec![Detection {
                label: "7".into(),
                index: 7,
                score,
                bbox: [1.0, 2.0, 3.0, 4.0],
            }],
            width: 64,
            height: 64,
        })
    }

    /// A task case travels whole; a classifier's image and tensor cases keep the forms older workers read.
    #[test]
    fn task_cases_round_trip_and_classifier_cases_keep_their_old_forms() {
        for task in [false, true] {
            let c = case(task);
            assert_eq!(decode_case(&encode_case(&c).unwrap()).unwrap(), c);
        }
        let mut tensor = case(false);
        tensor.tensor = vec![0.5; 4];
        let bytes = encode_case(&tensor).unwrap();
        assert!(postcard::take_from_bytes::<CaseV3>(&bytes).is_ok_and(|(_, rest)| rest.is_empty()));
        assert_eq!(decode_case(&bytes).unwrap(), tensor);
    }

    /// A task's answer is format 2: it verifies under its own content type only, a classifier's answer stays format 1
    /// (what agents before task models verify), and neither signature passes as the other format.
    #[test]
    fn task_answers_are_format_2_and_formats_never_pass_as_each_other() {
        let key = SigningKeyFile::generate().unwrap();
        let keys = TrustedKeys::parse(&key.trusted_line("cloud")).unwrap();
        let task = Task::Score(crate::inference::task::ScoreSpec {
            output: crate::inference::task::OutputRef {
                name: "s".into(),
                shape: vec![1, 1],
            },
            names: vec!["s".into()],
            thresholds: vec![0.5],
            band: 0.1,
            activation: Default::default(),
        });
        let c = case(true);
        let a = Answer::to_task_case(&c, "cloud", &task, detections(0.9));
        assert_eq!(a.content_type(), ANSWER_V2_CONTENT_TYPE);
        let signed = a.sign(&key);
        let got = verify_answer(&signed, Some(ANSWER_V2_CONTENT_TYPE), None, &keys, "d1").unwrap();
        assert_eq!(got, a);
        assert!(matches!(
            verify_answer(&signed, Some(ANSWER_CONTENT_TYPE), None, &keys, "d1"),
            Err(ForwardError::Forged)
        ));
        let p = crate::inference::Prediction {
            label: "7".into(),
            index: 7,
            confidence: 0.9,
            margin: 0.5,
            entropy: 0.1,
            top: vec![],
            output: vec![],
        };
        let v1 = Answer::to_case(&case(false), "cloud", &p);
        assert_eq!(v1.content_type(), ANSWER_CONTENT_TYPE);
        let signed = v1.sign(&key);
        assert!(postcard::from_bytes::<SignedAnswer>(&signed)
            .is_ok_and(|s| postcard::from_bytes::<AnswerV1>(&s.answer).is_ok()));
        assert_eq!(
            verify_answer(&signed, Some(ANSWER_CONTENT_TYPE), None, &keys, "d1").unwrap(),
            v1
        );
        assert!(matches!(
            verify_answer(&signed, Some(ANSWER_V2_CONTENT_TYPE), None, &keys, "d1"),
            Err(ForwardError::Forged)
        ));
        // A format 2 answer with a NaN score or too many boxes is malformed, however well signed.
        let mut bad = a.clone();
        bad.task = Some(detections(f32::NAN));
        assert!(matches!(
            verify_answer(
                &bad.sign(&key),
                Some(ANSWER_V2_CONTENT_TYPE),
                None,
                &keys,
                "d1"
            ),
            Err(ForwardError::Malformed(_))
        ));
    }
}
