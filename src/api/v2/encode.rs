//! Writing a reply: each output's data in the JSON, or appended to the binary part after it.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::protocol::{
    Datatype, InferReply, OutputBinary, OutputData, ResponseOutput, HEADER_LENGTH,
};
use super::ApiError;

/// One output of a reply: its data in the JSON, or appended to `binary` (the reply's binary part) when given.
pub(super) fn output(
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
pub(super) fn reply(reply: InferReply, binary: Vec<u8>) -> Result<Response, ApiError> {
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
