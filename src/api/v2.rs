//! The Open Inference Protocol v2 over HTTP, as Triton, KServe, OpenVINO Model Server and MLServer speak it, beside
//! `/v1` on the same listener: server health and metadata, model metadata and readiness (also under
//! `/versions/{v}`, for the live and the staged candidate version), and inference with JSON tensors, the binary tensor
//! data extension (`Inference-Header-Content-Length`), an encoded PNG/JPEG as a `BYTES` input under the model's
//! input name (as OpenVINO Model Server takes images), and Triton's `classification` output parameter.
//!
//! A request goes through the same service as `/v1` (cache, probation, shadow). What does not fit the model (an
//! unknown model, version or input, a wrong datatype, shape or byte count, an oversized body) is a 4xx
//! `{"error": ...}` and changes nothing.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;

use super::{counted, ApiError};
use crate::inference::TensorIo;
use crate::serve::{Admitted, Answer, Input, Registry, Request, Service};
use crate::wire::status::Source;

mod decode;
mod encode;
mod protocol;
mod task;

use decode::{read_input, read_tensors, split};
use encode::{output, reply};
use protocol::*;
pub use protocol::{Datatype, HEADER_LENGTH};

fn bad(message: String) -> ApiError {
    ApiError::Client {
        status: StatusCode::BAD_REQUEST,
        code: "bad_request",
        message,
    }
}

fn not_found(message: String) -> ApiError {
    ApiError::Client {
        status: StatusCode::NOT_FOUND,
        code: "not_found",
        message,
    }
}

pub async fn server_metadata() -> Response {
    Json(ServerMetadata {
        name: "outpost",
        version: env!("CARGO_PKG_VERSION"),
        extensions: vec!["binary_tensor_data", "classification"],
    })
    .into_response()
}

pub async fn live() -> StatusCode {
    StatusCode::OK
}

/// Ready: the API listens only once the default model serves.
pub async fn ready() -> StatusCode {
    StatusCode::OK
}

/// The service of model `name` and, when a version is named, that it is the live one or the staged candidate.
/// `live_only`: inference runs on the live version alone (the candidate answers in shadow).
fn lookup(
    registry: &Registry,
    name: &str,
    version: Option<&str>,
    live_only: bool,
) -> Result<(Arc<Service>, Admitted), ApiError> {
    let service = registry.get(name).ok_or_else(|| {
        not_found(format!(
            "no model named {name:?} is served here (served: {})",
            registry.names().join(", ")
        ))
    })?;
    // The releases this request is judged by and, for an inference, run on.
    let admitted = service.admit();
    if let Some(v) = version {
        let live = admitted.engine().spec().version.to_string();
        let candidate = admitted.candidate().map(|c| c.spec().version.to_string());
        if v == live {
            return Ok((service, admitted));
        }
        if candidate.as_deref() == Some(v) {
            if live_only {
                return Err(bad(format!(
                    "version {v} of {name} is a staged candidate: it answers in shadow only; infer on the live version {live}"
                )));
            }
            return Ok((service, admitted));
        }
        return Err(not_found(format!(
            "model {name} has no version {v} here (live: {live}{})",
            candidate
                .map(|c| format!(", candidate: {c}"))
                .unwrap_or_default()
        )));
    }
    Ok((service, admitted))
}

fn metadata_of(admitted: &Admitted, name: &str) -> ModelMetadata {
    let engine = admitted.engine();
    let spec = engine.spec();
    let mut versions = vec![spec.version.to_string()];
    if let Some(c) = admitted.candidate() {
        versions.push(c.spec().version.to_string());
    }
    // An image model's one input: FP32 of its input shape (or an encoded image as BYTES).
    let image_input = || TensorMetadata {
        name: spec.input.name.clone(),
        datatype: Datatype::Fp32,
        shape: spec.input.shape.iter().map(|d| *d as i64).collect(),
    };
    if engine.image_task().is_some() {
        return ModelMetadata {
            name: name.to_string(),
            versions,
            platform: "onnx_onnxv1",
            inputs: vec![image_input()],
            outputs: task::output_metadata(engine),
        };
    }
    if let Some(io) = spec.raw() {
        let list = |l: &[crate::inference::TensorSpec]| {
            l.iter()
                .map(|t| TensorMetadata {
                    name: t.name.clone(),
                    datatype: t.datatype.into(),
                    shape: t.shape.iter().map(|d| *d as i64).collect(),
                })
                .collect()
        };
        return ModelMetadata {
            name: name.to_string(),
            versions,
            platform: "onnx_onnxv1",
            inputs: list(&io.inputs),
            outputs: list(&io.outputs),
        };
    }
    ModelMetadata {
        name: name.to_string(),
        versions,
        platform: "onnx_onnxv1",
        inputs: vec![image_input()],
        outputs: vec![TensorMetadata {
            name: spec.output.name.clone(),
            datatype: Datatype::Fp32,
            shape: vec![1, spec.labels.len() as i64],
        }],
    }
}

pub async fn model_metadata(
    State(registry): State<Arc<Registry>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let (_, admitted) = lookup(&registry, &name, None, false)?;
    Ok(Json(metadata_of(&admitted, &name)).into_response())
}

pub async fn model_version_metadata(
    State(registry): State<Arc<Registry>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (_, admitted) = lookup(&registry, &name, Some(&version), false)?;
    Ok(Json(metadata_of(&admitted, &name)).into_response())
}

pub async fn model_ready(
    State(registry): State<Arc<Registry>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    lookup(&registry, &name, None, false).map(|_| StatusCode::OK)
}

pub async fn model_version_ready(
    State(registry): State<Arc<Registry>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    lookup(&registry, &name, Some(&version), false).map(|_| StatusCode::OK)
}

pub async fn infer(
    State(registry): State<Arc<Registry>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let (service, admitted) = lookup(&registry, &name, None, true)?;
    counted(&service, run(&service, admitted, name, headers, body)).await
}

pub async fn infer_version(
    State(registry): State<Arc<Registry>>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let (service, admitted) = lookup(&registry, &name, Some(&version), true)?;
    counted(&service, run(&service, admitted, name, headers, body)).await
}

/// One inference, judged and run by the releases `admitted` took.
async fn run(
    service: &Service,
    admitted: Admitted,
    name: String,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<(Response, Source), ApiError> {
    let max = service.max_body_bytes();
    let body = axum::body::to_bytes(body, max)
        .await
        .map_err(|_| ApiError::Client {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "too_large",
            message: format!(
                "the request is larger than the limit of {max} bytes (api.max_body_bytes)"
            ),
        })?;
    let (json_len, binary_start) = split(&headers, &body)?;
    let request: InferRequest = serde_json::from_slice(&body[..json_len])
        .map_err(|e| bad(format!("the request is not an inference request: {e}")))?;
    let engine = admitted.engine().clone();
    if engine.image_task().is_some() {
        return task::run_task(service, &admitted, name, request, &body[binary_start..]).await;
    }
    if let Some(io) = engine.spec().raw().cloned() {
        return run_raw(
            service,
            &admitted,
            name,
            &io,
            request,
            &body[binary_start..],
        )
        .await;
    }
    let input = read_input(&name, &engine, &request, &body[binary_start..])?;
    let spec = engine.spec();
    for o in &request.outputs {
        if o.name != spec.output.name {
            return Err(bad(format!(
                "model {name} has no output {:?}: its output is {:?}",
                o.name, spec.output.name
            )));
        }
    }
    let overrides = request.parameters.overrides();
    let answered = service
        .handle(
            &admitted,
            Request {
                input,
                overrides,
                want_outputs: true,
            },
        )
        .await?;
    let Answer::Class(answer) = answered.answer else {
        return Err(ApiError::Internal(
            "a classifier gave another kind of answer".into(),
        ));
    };
    // The labels of the release that answered (the previous one, when a release on trial failed the run).
    let spec = answered.release.spec();
    let requested = match request.outputs.as_slice() {
        [] => vec![RequestOutput {
            name: spec.output.name.clone(),
            parameters: OutputParameters {
                binary_data: request.parameters.binary_data_output,
                classification: None,
            },
        }],
        _ => request.outputs,
    };
    let mut outputs = Vec::new();
    let mut binary: Vec<u8> = Vec::new();
    for o in requested {
        let (datatype, shape, data) = match o.parameters.classification {
            Some(k) => {
                // Triton's form: "score:index:label" for the k best classes, by the edge model's output; when the
                // cloud decided a hard case, its class comes first with its confidence.
                let k = (k as usize).clamp(1, answer.output.len().max(1));
                let mut order: Vec<usize> = (0..answer.output.len()).collect();
                order.sort_by(|a, b| answer.output[*b].total_cmp(&answer.output[*a]));
                let cloud = matches!(answer.source, Source::Cloud | Source::CloudCache)
                    .then(|| spec.labels.iter().position(|l| *l == answer.label))
                    .flatten();
                let mut labels: Vec<String> = Vec::new();
                if let Some(c) = cloud {
                    labels.push(format!("{}:{c}:{}", answer.confidence, answer.label));
                    order.retain(|i| *i != c);
                }
                labels.extend(order.into_iter().take(k - labels.len()).map(|i| {
                    format!(
                        "{}:{i}:{}",
                        answer.output[i],
                        spec.labels.get(i).map(String::as_str).unwrap_or("")
                    )
                }));
                (
                    Datatype::Bytes,
                    vec![1, labels.len() as u64],
                    OutputData::Strings(labels),
                )
            }
            None => (
                Datatype::Fp32,
                vec![1, answer.output.len() as u64],
                OutputData::Floats(answer.output.clone()),
            ),
        };
        outputs.push(output(
            o.name,
            datatype,
            shape,
            data,
            o.parameters.binary_data.then_some(&mut binary),
        ));
    }
    let response = reply(
        InferReply {
            model_name: name,
            model_version: answer.model.version.to_string(),
            id: request.id,
            parameters: Some(ReplyParameters {
                outpost_source: answer.source,
                outpost_forwarded: answer.forwarded,
                outpost_case_id: answer.case_id.clone(),
                outpost_answer: None,
            }),
            outputs,
        },
        binary,
    )?;
    Ok((response, answer.source))
}

/// Inference on a raw tensor model: every output (or the ones asked for), as JSON or binary.
async fn run_raw(
    service: &Service,
    admitted: &Admitted,
    name: String,
    io: &TensorIo,
    request: InferRequest,
    binary: &[u8],
) -> Result<(Response, Source), ApiError> {
    let inputs = read_tensors(&name, io, &request, binary)?;
    for o in &request.outputs {
        if !io.outputs.iter().any(|t| t.name == o.name) {
            return Err(bad(format!(
                "model {name} has no output {:?}: its outputs are {}",
                o.name,
                io.outputs
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if o.parameters.classification.is_some() {
            return Err(bad(format!(
                "model {name} is a raw tensor model: it has no classes to report"
            )));
        }
    }
    let decoded = request.parameters.decoded;
    let overrides = request.parameters.overrides();
    let answered = service
        .handle(
            admitted,
            Request {
                input: Input::Tensors(inputs),
                overrides,
                want_outputs: true,
            },
        )
        .await?;
    let Answer::Tensors(answer) = answered.answer else {
        return Err(ApiError::Internal(
            "a raw model gave another kind of answer".into(),
        ));
    };
    let requested: Vec<(String, bool)> = match request.outputs.as_slice() {
        [] => io
            .outputs
            .iter()
            .map(|t| (t.name.clone(), request.parameters.binary_data_output))
            .collect(),
        some => some
            .iter()
            .map(|o| (o.name.clone(), o.parameters.binary_data))
            .collect(),
    };
    let mut outputs = Vec::new();
    let mut tail: Vec<u8> = Vec::new();
    for (out_name, as_binary) in requested {
        let Some(t) = answer.outputs.iter().find(|t| t.name == out_name) else {
            return Err(ApiError::Internal(format!(
                "the model gave no output {out_name}"
            )));
        };
        let data = OutputData::of(&t.data);
        outputs.push(output(
            out_name,
            t.data.dtype().into(),
            t.shape.iter().map(|d| *d as u64).collect(),
            data,
            as_binary.then_some(&mut tail),
        ));
    }
    let source = answer.source;
    let response = reply(
        InferReply {
            model_name: name,
            model_version: answer.model.version.to_string(),
            id: request.id,
            // A scorer of tensors says what became of a hard case, and gives its answer as `/v1` shows task answers
            // when asked (`decoded: true`).
            parameters: Some(ReplyParameters {
                outpost_source: answer.source,
                outpost_forwarded: answer.task.as_ref().and_then(|t| t.forwarded),
                outpost_case_id: answer.task.as_ref().and_then(|t| t.case_id.clone()),
                outpost_answer: match (&answer.task, decoded) {
                    (Some(t), true) => Some(
                        serde_json::to_string(t).map_err(|e| ApiError::Internal(e.to_string()))?,
                    ),
                    _ => None,
                },
            }),
            outputs,
        },
        tail,
    )?;
    Ok((response, source))
}
