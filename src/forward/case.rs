//! A hard case as the device sends it to the cloud: its current form, the forms earlier agents wrote (still in
//! outboxes after an upgrade) and workers read, its id, and its bytes both ways.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::input_digest;
use crate::inference::task::{Overrides, TaskAnswer};

/// Largest case accepted by a cloud worker.
pub const MAX_CASE: usize = 8 * 1024 * 1024;

/// Why a case's bytes do not make a case (or a case does not make bytes).
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    #[error("case of {0} bytes exceeds {MAX_CASE}")]
    TooLarge(usize),
    #[error("malformed case: {0}")]
    Malformed(String),
    #[error("cannot encode the case: {0}")]
    Encode(String),
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
pub(super) struct CaseV3 {
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
pub fn encode_case(case: &Case) -> Result<Vec<u8>, CaseError> {
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
    r.map_err(|e| CaseError::Encode(e.to_string()))
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

/// A case from its bytes, in any form an agent wrote.
pub fn decode_case(bytes: &[u8]) -> Result<Case, CaseError> {
    if bytes.len() > MAX_CASE {
        return Err(CaseError::TooLarge(bytes.len()));
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
        postcard::take_from_bytes(bytes).map_err(|e| CaseError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CaseError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        )));
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
