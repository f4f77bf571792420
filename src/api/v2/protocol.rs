//! The protocol's messages as Triton, KServe and OpenVINO Model Server clients send and read them: datatypes,
//! metadata, inference requests and replies, and the binary tensor data extension's header.

use serde::{Deserialize, Serialize};

use crate::inference::task::Overrides;
use crate::inference::{Dtype, TensorData};

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
pub(super) struct ServerMetadata {
    pub(super) name: &'static str,
    pub(super) version: &'static str,
    pub(super) extensions: Vec<&'static str>,
}

#[derive(Debug, Serialize)]
pub(super) struct TensorMetadata {
    pub(super) name: String,
    pub(super) datatype: Datatype,
    pub(super) shape: Vec<i64>,
}

#[derive(Debug, Serialize)]
pub(super) struct ModelMetadata {
    pub(super) name: String,
    pub(super) versions: Vec<String>,
    pub(super) platform: &'static str,
    pub(super) inputs: Vec<TensorMetadata>,
    pub(super) outputs: Vec<TensorMetadata>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct InputParameters {
    pub(super) binary_data_size: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RequestInput {
    pub(super) name: String,
    pub(super) shape: Vec<i64>,
    pub(super) datatype: Datatype,
    #[serde(default)]
    pub(super) parameters: InputParameters,
    #[serde(default)]
    pub(super) data: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct OutputParameters {
    #[serde(default)]
    pub(super) binary_data: bool,
    #[serde(default)]
    pub(super) classification: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RequestOutput {
    pub(super) name: String,
    #[serde(default)]
    pub(super) parameters: OutputParameters,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RequestParameters {
    /// Every output in binary form when the request names no outputs (what tritonclient sends then).
    #[serde(default)]
    pub(super) binary_data_output: bool,
    /// A detector's thresholds for this call ([`task`]).
    #[serde(default)]
    pub(super) score_threshold: Option<f32>,
    #[serde(default)]
    pub(super) iou_threshold: Option<f32>,
    #[serde(default)]
    pub(super) max_detections: Option<u32>,
    /// A task model's answer as `/v1` gives it, in the reply parameter `outpost_answer`.
    #[serde(default)]
    pub(super) decoded: bool,
}

impl RequestParameters {
    /// The call's detector thresholds (the service refuses them for a model without any).
    pub(super) fn overrides(&self) -> Overrides {
        Overrides {
            score_threshold: self.score_threshold,
            iou_threshold: self.iou_threshold,
            max_detections: self.max_detections,
        }
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct InferRequest {
    #[serde(default)]
    pub(super) id: Option<String>,
    #[serde(default)]
    pub(super) parameters: RequestParameters,
    pub(super) inputs: Vec<RequestInput>,
    #[serde(default)]
    pub(super) outputs: Vec<RequestOutput>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(super) enum OutputData {
    Floats(Vec<f32>),
    Strings(Vec<String>),
    Int64(Vec<i64>),
    Int32(Vec<i32>),
    Uint8(Vec<u8>),
    Int8(Vec<i8>),
}

impl OutputData {
    /// A tensor's values, as a reply carries them.
    pub(super) fn of(d: &TensorData) -> OutputData {
        match d {
            TensorData::Fp32(v) => OutputData::Floats(v.clone()),
            TensorData::Int64(v) => OutputData::Int64(v.clone()),
            TensorData::Int32(v) => OutputData::Int32(v.clone()),
            TensorData::Uint8(v) => OutputData::Uint8(v.clone()),
            TensorData::Int8(v) => OutputData::Int8(v.clone()),
        }
    }

    /// The binary tensor data form: little-endian elements; a BYTES element is a u32 length then its bytes.
    pub(super) fn write_binary(&self, out: &mut Vec<u8>) {
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
    pub(super) fn dtype(self) -> Option<Dtype> {
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
pub(super) struct OutputBinary {
    pub(super) binary_data_size: u64,
}

#[derive(Debug, Serialize)]
pub(super) struct ResponseOutput {
    pub(super) name: String,
    pub(super) datatype: Datatype,
    pub(super) shape: Vec<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) data: Option<OutputData>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) parameters: Option<OutputBinary>,
}

#[derive(Debug, Serialize)]
pub(super) struct InferReply {
    pub(super) model_name: String,
    pub(super) model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) id: Option<String>,
    /// Which tier decided a classifier's answer, and what became of a hard case (clients that do not know these
    /// parameters ignore them, as the protocol lets them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) parameters: Option<ReplyParameters>,
    pub(super) outputs: Vec<ResponseOutput>,
}

#[derive(Debug, Serialize)]
pub(super) struct ReplyParameters {
    pub(super) outpost_source: crate::wire::status::Source,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) outpost_forwarded: Option<crate::wire::status::Forwarded>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) outpost_case_id: Option<String>,
    /// A task model's answer as `/v1` gives it (JSON text), when the request asked with `decoded: true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) outpost_answer: Option<String>,
}
