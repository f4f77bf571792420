//! Reading a request's inputs off the wire and checking them against the admitted release's spec: the JSON part and
//! the binary part, an image model's one input (an FP32 tensor or an encoded image as `BYTES`), a raw model's named
//! tensors. Every refusal names the input and what the model takes.

use axum::http::HeaderMap;

use super::protocol::{Datatype, InferRequest, HEADER_LENGTH};
use super::{bad, ApiError};
use crate::inference::{Dtype, Engine, TensorData, TensorIo, TensorValue};
use crate::serve::Input;

/// Splits the body into the JSON header and the binary tensors after it.
pub(super) fn split(headers: &HeaderMap, body: &[u8]) -> Result<(usize, usize), ApiError> {
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

/// What is wrong with an input's JSON data (named with the input by the caller; a 400).
#[derive(Debug, thiserror::Error)]
enum DataError {
    #[error("more than the {0} values the input takes")]
    TooMany(usize),
    #[error("a number out of range")]
    OutOfRange,
    #[error("a {0} where the data holds numbers")]
    NotANumber(&'static str),
}

/// Flattens JSON tensor data (flat or nested, row-major) into numbers, at most `max` of them.
fn flat_numbers(v: &serde_json::Value, max: usize, out: &mut Vec<f32>) -> Result<(), DataError> {
    match v {
        serde_json::Value::Array(items) => {
            for item in items {
                flat_numbers(item, max, out)?;
            }
            Ok(())
        }
        serde_json::Value::Number(n) => {
            if out.len() >= max {
                return Err(DataError::TooMany(max));
            }
            let x = n.as_f64().ok_or(DataError::OutOfRange)?;
            out.push(x as f32);
            Ok(())
        }
        other => Err(DataError::NotANumber(kind(other))),
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
pub(super) fn read_input(
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
    ) -> Result<(), DataError> {
        match v {
            serde_json::Value::Array(items) => items.iter().try_for_each(|i| walk(i, max, out)),
            serde_json::Value::Number(n) if out.len() < max => {
                out.push(n);
                Ok(())
            }
            serde_json::Value::Number(_) => Err(DataError::TooMany(max)),
            other => Err(DataError::NotANumber(kind(other))),
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
pub(super) fn read_tensors(
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
