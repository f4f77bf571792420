//! The cloud's answer to a case: its signed forms (format 1 for classifiers, format 2 with a task's answer), the
//! digest that binds it to the input it answers, and every check a device makes before believing it.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Case, ForwardError};
use crate::bundle::keys::{SigningKeyFile, TrustedKeys};
use crate::inference::task::{Task, TaskAnswer};

/// Largest answer accepted by a device.
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
        task.check()
            .map_err(|e| ForwardError::Malformed(e.to_string()))?;
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
