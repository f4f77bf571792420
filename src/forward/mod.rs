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

mod answer;
mod case;
mod forwarder;

pub use answer::*;
pub use case::*;
pub use forwarder::Forwarder;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("cannot queue the hard case: {0}")]
    Outbox(String),
    /// A case that does not encode, or a queued one that no longer decodes.
    #[error("cannot queue the hard case: {0}")]
    Case(#[from] CaseError),
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
            ForwardError::Outbox(_) | ForwardError::Case(_) => "outbox",
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

#[cfg(test)]
mod tests {
    use super::case::CaseV3;
    use super::*;
    use crate::bundle::keys::{SigningKeyFile, TrustedKeys};
    use crate::inference::task::{Detection, Detections};
    use crate::inference::task::{Overrides, Task, TaskAnswer};

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
