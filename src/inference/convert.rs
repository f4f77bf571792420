//! Conversions between Outpost's tensors ([`TensorValue`], [`Dtype`]) and tract's, in one place so the rest of the
//! crate never sees a tract type.

use tract_nnef::prelude::*;

use super::*;

pub(super) fn datum(d: Dtype) -> DatumType {
    match d {
        Dtype::Fp32 => f32::datum_type(),
        Dtype::Int64 => i64::datum_type(),
        Dtype::Int32 => i32::datum_type(),
        Dtype::Uint8 => u8::datum_type(),
        Dtype::Int8 => i8::datum_type(),
    }
}

pub(super) fn dtype_of(d: DatumType) -> Option<Dtype> {
    // tract computes some integer arithmetic in its symbolic dimension type; its values are INT64.
    if d == TDim::datum_type() {
        return Some(Dtype::Int64);
    }
    [
        Dtype::Fp32,
        Dtype::Int64,
        Dtype::Int32,
        Dtype::Uint8,
        Dtype::Int8,
    ]
    .into_iter()
    .find(|x| datum(*x) == d)
}

/// A tract tensor from a request's value (already checked against the spec).
pub(super) fn to_tract(v: &TensorValue) -> TractResult<Tensor> {
    let shape = &v.shape;
    match &v.data {
        TensorData::Fp32(d) => Tensor::from_shape(shape, d),
        TensorData::Int64(d) => Tensor::from_shape(shape, d),
        TensorData::Int32(d) => Tensor::from_shape(shape, d),
        TensorData::Uint8(d) => Tensor::from_shape(shape, d),
        TensorData::Int8(d) => Tensor::from_shape(shape, d),
    }
}

/// An answer's value from a tract output.
pub(super) fn from_tract(name: &str, t: &Tensor) -> Result<TensorValue, InferenceError> {
    let run = |e: TractError| InferenceError::Run(one_line(&e));
    let cast;
    let t = if t.datum_type() == TDim::datum_type() {
        cast = t.cast_to::<i64>().map_err(run)?;
        &*cast
    } else {
        t
    };
    let data = match dtype_of(t.datum_type()) {
        Some(Dtype::Fp32) => TensorData::Fp32(
            t.to_plain_array_view::<f32>()
                .map_err(run)?
                .iter()
                .copied()
                .collect(),
        ),
        Some(Dtype::Int64) => TensorData::Int64(
            t.to_plain_array_view::<i64>()
                .map_err(run)?
                .iter()
                .copied()
                .collect(),
        ),
        Some(Dtype::Int32) => TensorData::Int32(
            t.to_plain_array_view::<i32>()
                .map_err(run)?
                .iter()
                .copied()
                .collect(),
        ),
        Some(Dtype::Uint8) => TensorData::Uint8(
            t.to_plain_array_view::<u8>()
                .map_err(run)?
                .iter()
                .copied()
                .collect(),
        ),
        Some(Dtype::Int8) => TensorData::Int8(
            t.to_plain_array_view::<i8>()
                .map_err(run)?
                .iter()
                .copied()
                .collect(),
        ),
        None => {
            return Err(InferenceError::Run(format!(
                "output {name} is {:?}, not a datatype Outpost serves",
                t.datum_type()
            )))
        }
    };
    Ok(TensorValue {
        name: name.to_string(),
        shape: t.shape().to_vec(),
        data,
    })
}
