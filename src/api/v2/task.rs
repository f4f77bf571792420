//! v2 for task models (detectors, scorers). The input is the model's image input: an encoded PNG/JPEG as one
//! `BYTES` element (boxes come back in its pixels) or the preprocessed FP32 tensor (boxes in input pixels).
//!
//! The answer is tensors. With no outputs named, the decoded answer:
//! - a detector: `detection_boxes` FP32 `[K, 4]` (x1, y1, x2, y2), `detection_scores` FP32 `[K]`,
//!   `detection_classes` INT64 `[K]` (indices into the labels);
//! - a scorer: `score_values` FP32 `[K]` and `score_positive` UINT8 `[K]` (1 at or above the threshold).
//!
//! The model's own outputs (by their names in the spec) may be named too, as a client that decodes them itself
//! does. Request parameters `score_threshold`, `iou_threshold` and `max_detections` change a detector's thresholds
//! for the call; `decoded: true` adds the answer as `/v1` gives it, as the JSON string parameter `outpost_answer`.

use super::{bad, output, reply, Datatype, InferReply, InferRequest, OutputData, ReplyParameters};
use crate::api::ApiError;
use crate::inference::task::TaskAnswer;
use crate::serve::{Admitted, Answer, Request, Service};
use crate::wire::status::Source;

/// The decoded answer's tensors: (name, datatype, shape, data).
fn decoded_tensors(answer: &TaskAnswer) -> Vec<(&'static str, Datatype, Vec<u64>, OutputData)> {
    match answer {
        TaskAnswer::Detections(d) => {
            let k = d.detections.len() as u64;
            vec![
                (
                    "detection_boxes",
                    Datatype::Fp32,
                    vec![k, 4],
                    OutputData::Floats(d.detections.iter().flat_map(|x| x.bbox).collect()),
                ),
                (
                    "detection_scores",
                    Datatype::Fp32,
                    vec![k],
                    OutputData::Floats(d.detections.iter().map(|x| x.score).collect()),
                ),
                (
                    "detection_classes",
                    Datatype::Int64,
                    vec![k],
                    OutputData::Int64(d.detections.iter().map(|x| x.index as i64).collect()),
                ),
            ]
        }
        TaskAnswer::Scores(s) => {
            let k = s.len() as u64;
            vec![
                (
                    "score_values",
                    Datatype::Fp32,
                    vec![k],
                    OutputData::Floats(s.iter().map(|x| x.value).collect()),
                ),
                (
                    "score_positive",
                    Datatype::Uint8,
                    vec![k],
                    OutputData::Uint8(s.iter().map(|x| u8::from(x.positive)).collect()),
                ),
            ]
        }
    }
}

/// The metadata of a task model's outputs: the decoded tensors (K is -1: it varies), then the model's own.
pub(super) fn output_metadata(engine: &crate::inference::Engine) -> Vec<super::TensorMetadata> {
    let decoded =
        decoded_tensors(&empty_answer(engine))
            .into_iter()
            .map(|(name, datatype, shape, _)| super::TensorMetadata {
                name: name.to_string(),
                datatype,
                shape: shape
                    .iter()
                    .map(|d| if *d == 0 { -1 } else { *d as i64 })
                    .collect(),
            });
    let raw = engine
        .spec()
        .io()
        .into_iter()
        .flat_map(|io| io.outputs)
        .map(|t| super::TensorMetadata {
            name: t.name,
            datatype: t.datatype.into(),
            shape: t.shape.iter().map(|d| *d as i64).collect(),
        });
    decoded.chain(raw).collect()
}

pub(super) async fn run_task(
    service: &Service,
    admitted: &Admitted,
    name: String,
    request: InferRequest,
    binary: &[u8],
) -> Result<(axum::response::Response, Source), ApiError> {
    let params = &request.parameters;
    let overrides = params.overrides();
    overrides.validate().map_err(|e| bad(e.to_string()))?;
    let engine = admitted.engine();
    let io = engine.spec().io().ok_or_else(|| {
        ApiError::Internal(format!("model {name} is a task model without its tensors"))
    })?;
    let probe = decoded_tensors(&empty_answer(engine));
    for o in &request.outputs {
        let known =
            io.outputs.iter().any(|t| t.name == o.name) || probe.iter().any(|p| p.0 == o.name);
        if !known {
            return Err(bad(format!(
                "model {name} has no output {:?}: its outputs are {}",
                o.name,
                probe
                    .iter()
                    .map(|p| p.0.to_string())
                    .chain(io.outputs.iter().map(|t| t.name.clone()))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if o.parameters.classification.is_some() {
            return Err(bad(format!(
                "model {name} is a {}: it has no classification output",
                engine.spec().kind().name()
            )));
        }
    }
    let input = super::read_input(&name, engine, &request, binary)?;
    let want_outputs = request
        .outputs
        .iter()
        .any(|o| io.outputs.iter().any(|t| t.name == o.name));
    let answered = service
        .handle(
            admitted,
            Request {
                input,
                overrides,
                want_outputs,
            },
        )
        .await?;
    let Answer::Task(answer) = answered.answer else {
        return Err(ApiError::Internal(
            "a task model gave another kind of answer".into(),
        ));
    };
    let decoded = decoded_tensors(&answer.answer);
    let requested: Vec<(String, bool)> = match request.outputs.as_slice() {
        [] => decoded
            .iter()
            .map(|d| (d.0.to_string(), request.parameters.binary_data_output))
            .collect(),
        some => some
            .iter()
            .map(|o| (o.name.clone(), o.parameters.binary_data))
            .collect(),
    };
    let mut outputs = Vec::new();
    let mut tail: Vec<u8> = Vec::new();
    let mut decoded = decoded.into_iter().map(Some).collect::<Vec<_>>();
    for (out_name, as_binary) in requested {
        let (datatype, shape, data) = if let Some(d) = decoded
            .iter_mut()
            .find(|d| d.as_ref().is_some_and(|d| d.0 == out_name))
            .and_then(Option::take)
        {
            (d.1, d.2, d.3)
        } else {
            let t = answer
                .outputs
                .iter()
                .find(|t| t.name == out_name)
                .ok_or_else(|| {
                    ApiError::Internal(format!("the model gave no output {out_name}"))
                })?;
            let data = OutputData::of(&t.data);
            (
                t.data.dtype().into(),
                t.shape.iter().map(|d| *d as u64).collect(),
                data,
            )
        };
        outputs.push(output(
            out_name,
            datatype,
            shape,
            data,
            as_binary.then_some(&mut tail),
        ));
    }
    let outpost_answer = if params.decoded {
        Some(serde_json::to_string(&answer).map_err(|e| ApiError::Internal(e.to_string()))?)
    } else {
        None
    };
    let source = answer.source;
    let response = reply(
        InferReply {
            model_name: name,
            model_version: answer.model.version.to_string(),
            id: request.id,
            parameters: Some(ReplyParameters {
                outpost_source: answer.source,
                outpost_forwarded: answer.forwarded,
                outpost_case_id: answer.case_id.clone(),
                outpost_answer,
            }),
            outputs,
        },
        tail,
    )?;
    Ok((response, source))
}

/// An answer of the engine's task with nothing in it: what names the decoded outputs.
fn empty_answer(engine: &crate::inference::Engine) -> TaskAnswer {
    match engine.task() {
        Some(crate::inference::task::Task::Score(_)) => TaskAnswer::Scores(Vec::new()),
        _ => TaskAnswer::Detections(crate::inference::task::Detections {
            detections: Vec::new(),
            width: 0,
            height: 0,
        }),
    }
}
