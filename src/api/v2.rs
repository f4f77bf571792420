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
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use super::{counted, ApiError};
use crate::inference::task::Overrides;
use crate::inference::{Dtype, Engine, TensorData, TensorIo, TensorValue};
use crate::serve::{Admitted, Answer, Input, Registry, Request, Service};
use crate::wire::status::Source;

mod task;

/// The header that splits a binary request or response into its JSON part and its tensors.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// The protocol's tensor datatypes (the closed set the spec names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Datatype {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
    Bytes,
}

#[derive(Debug, Serialize)]
struct ServerMetadata {
    name: &'static str,
    version: &'static str,
    extensions: Vec<&'static str>,
}

#[derive(Debug, Serialize)]
struct TensorMetadata {
    name: String,
    datatype: Datatype,
    shape: Vec<i64>,
}

#[derive(Debug, Serialize)]
struct ModelMetadata {
    name: String,
    versions: Vec<String>,
    platform: &'static str,
    inputs: Vec<TensorMetadata>,
    outputs: Vec<TensorMetadata>,
}

#[derive(Debug, Default, Deserialize)]
struct InputParameters {
    binary_data_size: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct RequestInput {
    name: String,
    shape: Vec<i64>,
    datatype: Datatype,
    #[serde(default)]
    parameters: InputParameters,
    #[serde(default)]
    data: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
struct OutputParameters {
    #[serde(default)]
    binary_data: bool,
    #[serde(default)]
    classification: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct RequestOutput {
    name: String,
    #[serde(default)]
    parameters: OutputParameters,
}

#[derive(Debug, Default, Deserialize)]
struct RequestParameters {
    /// Every output in binary form when the request names no outputs (what tritonclient sends then).
    #[serde(default)]
    binary_data_output: bool,
    /// A detector's thresholds for this call ([`task`]).
    #[serde(default)]
    score_threshold: Option<f32>,
    #[serde(default)]
    iou_threshold: Option<f32>,
    #[serde(default)]
    max_detections: Option<u32>,
    /// A task model's answer as `/v1` gives it, in the reply parameter `outpost_answer`.
    #[serde(default)]
    decoded: bool,
}

impl RequestParameters {
    /// The call's detector thresholds (the service refuses them for a model without any).
    fn overrides(&self) -> Overrides {
        Overrides {
            score_threshold: self.score_threshold,
            iou_threshold: self.iou_threshold,
            max_detections: self.max_detections,
        }
    }
}

#[derive(Debug, Deserialize)]
struct InferRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: RequestParameters,
    inputs: Vec<RequestInput>,
    #[serde(default)]
    outputs: Vec<RequestOutput>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum OutputData {
    Floats(Vec<f32>),
    Strings(Vec<String>),
    Int64(Vec<i64>),
    Int32(Vec<i32>),
    Uint8(Vec<u8>),
    Int8(Vec<i8>),
}

impl OutputData {
    /// A tensor's values, as a reply carries them.
    fn of(d: &TensorData) -> OutputData {
        match d {
            TensorData::Fp32(v) => OutputData::Floats(v.clone()),
            TensorData::Int64(v) => OutputData::Int64(v.clone()),
            TensorData::Int32(v) => OutputData::Int32(v.clone()),
            TensorData::Uint8(v) => OutputData::Uint8(v.clone()),
            TensorData::Int8(v) => OutputData::Int8(v.clone()),
        }
    }

    /// The binary tensor data form: little-endian elements; a BYTES element is a u32 length then its bytes.
    fn write_binary(&self, out: &mut Vec<u8>) {
        match self {
            OutputData::Floats(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            OutputData::Strings(v) => v.iter().for_each(|s| {
                out.extend((s.len() as u32).to_le_bytes());
                out.extend(s.as_bytes());
            }),
            OutputData::Int64(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            OutputData::Int32(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            OutputData::Uint8(v) => out.extend(v),
            OutputData::Int8(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        }
    }
}

impl From<Dtype> for Datatype {
    fn from(d: Dtype) -> Datatype {
        match d {
            Dtype::Fp32 => Datatype::Fp32,
            Dtype::Int64 => Datatype::Int64,
            Dtype::Int32 => Datatype::Int32,
            Dtype::Uint8 => Datatype::Uint8,
            Dtype::Int8 => Datatype::Int8,
        }
    }
}

impl std::fmt::Display for Datatype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The protocol's own spelling (FP32, INT64, BYTES...), as serde writes it.
        let name = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        f.write_str(&name)
    }
}

impl Datatype {
    /// The engine's element type for this protocol datatype, if Outpost serves it.
    fn dtype(self) -> Option<Dtype> {
        match self {
            Datatype::Fp32 => Some(Dtype::Fp32),
            Datatype::Int64 => Some(Dtype::Int64),
            Datatype::Int32 => Some(Dtype::Int32),
            Datatype::Uint8 => Some(Dtype::Uint8),
            Datatype::Int8 => Some(Dtype::Int8),
            _ => None,
        }
    }
}

#[derive(Debug, Serialize)]
struct OutputBinary {
    binary_data_size: u64,
}

#[derive(Debug, Serialize)]
struct ResponseOutput {
    name: String,
    datatype: Datatype,
    shape: Vec<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<OutputData>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<OutputBinary>,
}

#[derive(Debug, Serialize)]
struct InferReply {
    model_name: String,
    model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    /// Which tier decided a classifier's answer, and what became of a hard case (clients that do not know these
    /// parameters ignore them, as the protocol lets them).
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<ReplyParameters>,
    outputs: Vec<ResponseOutput>,
}

#[derive(Debug, Serialize)]
struct ReplyParameters {
    outpost_source: crate::wire::status::Source,
    #[serde(skip_serializing_if = "Option::is_none")]
    outpost_forwarded: Option<crate::wire::status::Forwarded>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outpost_case_id: Option<String>,
    /// A task model's answer as `/v1` gives it (JSON text), when the request asked with `decoded: true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    outpost_answer: Option<String>,
}

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

/// Splits the body into the JSON header and the binary tensors after it.
fn split(headers: &HeaderMap, body: &[u8]) -> Result<(usize, usize), ApiError> {
    match headers.get(HEADER_LENGTH) {
        None => Ok((body.len(), body.len())),
        Some(v) => {
            let n = v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| bad(format!("{HEADER_LENGTH} must be a byte count")))?;
            if n > body.len() {
                return Err(bad(format!(
                    "{HEADER_LENGTH} says the JSON part is {n} bytes, but the body has {}",
                    body.len()
                )));
            }
            Ok((n, n))
        }
    }
}

/// Flattens JSON tensor data (flat or nested, row-major) into numbers, at most `max` of them.
fn flat_numbers(v: &serde_json::Value, max: usize, out: &mut Vec<f32>) -> Result<(), String> {
    match v {
        serde_json::Value::Array(items) => {
            for item in items {
                flat_numbers(item, max, out)?;
            }
            Ok(())
        }
        serde_json::Value::Number(n) => {
            if out.len() >= max {
                return Err(format!("more than the {max} values the input takes"));
            }
            let x = n.as_f64().ok_or("a number out of range")?;
            out.push(x as f32);
            Ok(())
        }
        other => Err(format!("a {} where FP32 data holds numbers", kind(other))),
    }
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// Reads the one input of an image model (an FP32 tensor, or an encoded image as BYTES), checked against its spec.
fn read_input(
    name: &str,
    engine: &Engine,
    request: &InferRequest,
    binary: &[u8],
) -> Result<Input, ApiError> {
    let spec = engine.spec();
    let [input] = request.inputs.as_slice() else {
        return Err(bad(format!(
            "model {} takes one input, {:?}; the request has {}",
            name,
            spec.input.name,
            request.inputs.len()
        )));
    };
    if input.name != spec.input.name {
        return Err(bad(format!(
            "model {} has no input {:?}: its input is {:?}",
            name, input.name, spec.input.name
        )));
    }
    let binary_len = input.parameters.binary_data_size;
    if binary_len.is_some_and(|n| n != binary.len() as u64) {
        return Err(bad(format!(
            "input {} announces {} binary bytes, the body carries {}",
            input.name,
            binary_len.unwrap_or(0),
            binary.len()
        )));
    }
    match input.datatype {
        Datatype::Fp32 => {
            let want: Vec<i64> = spec.input.shape.iter().map(|d| *d as i64).collect();
            if input.shape != want {
                return Err(bad(format!(
                    "input {} has shape {:?}; model {} takes {want:?}",
                    input.name,
                    input.shape,
                    name
                )));
            }
            let n = spec.input.shape.iter().product::<usize>();
            let values = match (&input.data, binary_len) {
                (_, Some(_)) => {
                    if binary.len() != n * 4 {
                        return Err(bad(format!(
                            "input {} needs {} bytes of FP32 data, the body carries {}",
                            input.name,
                            n * 4,
                            binary.len()
                        )));
                    }
                    binary
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect::<Vec<f32>>()
                }
                (Some(data), None) => {
                    let mut v = Vec::with_capacity(n);
                    flat_numbers(data, n, &mut v)
                        .map_err(|e| bad(format!("input {}: {e}", input.name)))?;
                    if v.len() != n {
                        return Err(bad(format!(
                            "input {} holds {} values; shape {:?} needs {n}",
                            input.name,
                            v.len(),
                            input.shape
                        )));
                    }
                    v
                }
                (None, None) => {
                    return Err(bad(format!(
                        "input {} has neither data nor binary_data_size",
                        input.name
                    )))
                }
            };
            if values.iter().any(|x| !x.is_finite()) {
                return Err(bad(format!(
                    "input {} holds a value that is not a finite number",
                    input.name
                )));
            }
            Ok(Input::Tensor(values))
        }
        Datatype::Bytes => {
            if input.shape != [1] {
                return Err(bad(format!(
                    "an encoded image is one BYTES element (shape [1]), not shape {:?}",
                    input.shape
                )));
            }
            let image = match (&input.data, binary_len) {
                (_, Some(_)) => {
                    // One element: a little-endian u32 length, then the bytes.
                    if binary.len() < 4 {
                        return Err(bad("the BYTES element has no length prefix".into()));
                    }
                    let len = u32::from_le_bytes([binary[0], binary[1], binary[2], binary[3]])
                        as usize;
                    if len != binary.len() - 4 {
                        return Err(bad(format!(
                            "the BYTES element says {len} bytes, {} follow",
                            binary.len() - 4
                        )));
                    }
                    axum::body::Bytes::copy_from_slice(&binary[4..])
                }
                (Some(serde_json::Value::Array(items)), None) => match items.as_slice() {
                    [serde_json::Value::String(s)] => axum::body::Bytes::from(s.clone().into_bytes()),
                    _ => return Err(bad("BYTES data in JSON is one string".into())),
                },
                _ => {
                    return Err(bad(format!(
                        "input {} has no image bytes (send them as binary data)",
                        input.name
                    )))
                }
            };
            Ok(Input::Image(image))
        }
        other => Err(bad(format!(
            "input {} is {other}; model {} takes FP32 tensors of shape {:?}, or one encoded PNG/JPEG as BYTES",
            input.name,
            name,
            spec.input.shape
        ))),
    }
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

/// Reads one input's values from JSON data (flat or nested, row-major): numbers of its datatype, at most `max`.
fn json_values(
    v: &serde_json::Value,
    dtype: Dtype,
    max: usize,
    name: &str,
) -> Result<TensorData, ApiError> {
    let mut flat = Vec::new();
    fn walk<'a>(
        v: &'a serde_json::Value,
        max: usize,
        out: &mut Vec<&'a serde_json::Number>,
    ) -> Result<(), String> {
        match v {
            serde_json::Value::Array(items) => items.iter().try_for_each(|i| walk(i, max, out)),
            serde_json::Value::Number(n) if out.len() < max => {
                out.push(n);
                Ok(())
            }
            serde_json::Value::Number(_) => {
                Err(format!("more than the {max} values the input takes"))
            }
            other => Err(format!("a {} where the data holds numbers", kind(other))),
        }
    }
    walk(v, max, &mut flat).map_err(|e| bad(format!("input {name}: {e}")))?;
    let int = |n: &serde_json::Number| {
        n.as_i64()
            .ok_or_else(|| bad(format!("input {name}: {n} is not an integer")))
    };
    let narrow = |x: i64, lo: i64, hi: i64| {
        if (lo..=hi).contains(&x) {
            Ok(x)
        } else {
            Err(bad(format!(
                "input {name}: {x} is out of range for {}",
                dtype.name()
            )))
        }
    };
    Ok(match dtype {
        Dtype::Fp32 => TensorData::Fp32(
            flat.iter()
                .map(|n| {
                    n.as_f64()
                        .map(|x| x as f32)
                        .ok_or_else(|| bad(format!("input {name}: a number out of range")))
                })
                .collect::<Result<_, _>>()?,
        ),
        Dtype::Int64 => TensorData::Int64(flat.iter().map(|n| int(n)).collect::<Result<_, _>>()?),
        Dtype::Int32 => TensorData::Int32(
            flat.iter()
                .map(|n| narrow(int(n)?, i32::MIN as i64, i32::MAX as i64).map(|x| x as i32))
                .collect::<Result<_, _>>()?,
        ),
        Dtype::Uint8 => TensorData::Uint8(
            flat.iter()
                .map(|n| narrow(int(n)?, 0, 255).map(|x| x as u8))
                .collect::<Result<_, _>>()?,
        ),
        Dtype::Int8 => TensorData::Int8(
            flat.iter()
                .map(|n| narrow(int(n)?, -128, 127).map(|x| x as i8))
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// Reads a raw tensor model's inputs (by name, in any order; binary parts in the order of the request) and puts
/// them in the spec's order. Everything is checked here against the spec so the error names the input.
fn read_tensors(
    name: &str,
    io: &TensorIo,
    request: &InferRequest,
    binary: &[u8],
) -> Result<Vec<TensorValue>, ApiError> {
    let mut by_name: Vec<Option<TensorValue>> = vec![None; io.inputs.len()];
    let mut offset = 0usize;
    for input in &request.inputs {
        let Some(i) = io.inputs.iter().position(|t| t.name == input.name) else {
            return Err(bad(format!(
                "model {} has no input {:?}: its inputs are {}",
                name,
                input.name,
                io.inputs
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        if by_name[i].is_some() {
            return Err(bad(format!("input {} is given twice", input.name)));
        }
        let spec = &io.inputs[i];
        let dtype = input
            .datatype
            .dtype()
            .filter(|d| *d == spec.datatype)
            .ok_or_else(|| {
                bad(format!(
                    "input {} is {}; model {} takes {} of shape {:?}",
                    input.name,
                    input.datatype,
                    name,
                    spec.datatype.name(),
                    spec.shape
                ))
            })?;
        let want: Vec<i64> = spec.shape.iter().map(|d| *d as i64).collect();
        if input.shape != want {
            return Err(bad(format!(
                "input {} has shape {:?}; model {} takes {want:?}",
                input.name, input.shape, name
            )));
        }
        let n = spec.len();
        let data = match (&input.data, input.parameters.binary_data_size) {
            (_, Some(size)) => {
                let size = usize::try_from(size).unwrap_or(usize::MAX);
                if size != n * dtype.size() {
                    return Err(bad(format!(
                        "input {} announces {size} binary bytes; {} of shape {:?} is {} bytes",
                        input.name,
                        dtype.name(),
                        spec.shape,
                        n * dtype.size()
                    )));
                }
                let end = offset.checked_add(size).filter(|e| *e <= binary.len()).ok_or_else(|| {
                    bad(format!(
                        "input {} needs {size} binary bytes at offset {offset}; the body carries {} after its JSON part",
                        input.name,
                        binary.len()
                    ))
                })?;
                let d = TensorData::from_le_bytes(dtype, &binary[offset..end])
                    .ok_or_else(|| bad(format!("input {}: a partial element", input.name)))?;
                offset = end;
                d
            }
            (Some(data), None) => json_values(data, dtype, n, &input.name)?,
            (None, None) => {
                return Err(bad(format!(
                    "input {} has neither data nor binary_data_size",
                    input.name
                )))
            }
        };
        let value = TensorValue {
            name: spec.name.clone(),
            shape: spec.shape.clone(),
            data,
        };
        value.check(spec).map_err(bad)?;
        by_name[i] = Some(value);
    }
    if offset != binary.len() {
        return Err(bad(format!(
            "the body carries {} binary bytes after its JSON part; the inputs announce {offset}",
            binary.len()
        )));
    }
    by_name
        .into_iter()
        .zip(&io.inputs)
        .map(|(v, t)| v.ok_or_else(|| bad(format!("input {} is missing", t.name))))
        .collect()
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

/// One output of a reply: its data in the JSON, or appended to `binary` (the reply's binary part) when given.
fn output(
    name: String,
    datatype: Datatype,
    shape: Vec<u64>,
    data: OutputData,
    binary: Option<&mut Vec<u8>>,
) -> ResponseOutput {
    match binary {
        Some(tail) => {
            let start = tail.len();
            data.write_binary(tail);
            ResponseOutput {
                name,
                datatype,
                shape,
                data: None,
                parameters: Some(OutputBinary {
                    binary_data_size: (tail.len() - start) as u64,
                }),
            }
        }
        None => ResponseOutput {
            name,
            datatype,
            shape,
            data: Some(data),
            parameters: None,
        },
    }
}

/// The JSON reply, followed by its binary outputs when there are any.
fn reply(reply: InferReply, binary: Vec<u8>) -> Result<Response, ApiError> {
    let json = serde_json::to_vec(&reply).map_err(|e| ApiError::Internal(e.to_string()))?;
    if binary.is_empty() {
        return Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response());
    }
    let json_len = json.len();
    let mut body = json;
    body.extend(binary);
    let mut response = ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response();
    response.headers_mut().insert(
        HEADER_LENGTH,
        HeaderValue::from_str(&json_len.to_string())
            .map_err(|e| ApiError::Internal(e.to_string()))?,
    );
    Ok(response)
}
