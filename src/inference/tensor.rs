//! Raw tensors: what a model that takes tensors (not an image) and gives tensors (not labels) is served with.
//!
//! A spec may list a model's inputs and outputs by name, datatype and shape ([`TensorIo`]); the engine then binds
//! each input to its declared fact and keeps each declared output, and requests carry [`TensorValue`]s that are
//! checked against the list before they reach tract. The datatypes are the ones the Open Inference Protocol names
//! and tract runs on every CPU.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Largest tensor (elements) a spec may declare or a request may bring; the same cap as an image model's input.
pub const MAX_TENSOR_ELEMENTS: usize = super::spec::MAX_INPUT_ELEMENTS;
/// At most this many inputs or outputs per model.
pub const MAX_TENSORS: usize = 16;

/// A tensor element type (the protocol's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Dtype {
    Fp32,
    Int64,
    Int32,
    Uint8,
    Int8,
}

impl Dtype {
    /// Bytes per element in the protocol's binary form (little-endian).
    pub fn size(self) -> usize {
        match self {
            Dtype::Fp32 | Dtype::Int32 => 4,
            Dtype::Int64 => 8,
            Dtype::Uint8 | Dtype::Int8 => 1,
        }
    }

    /// The protocol's name: `FP32`, `INT64`, ...
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Fp32 => "FP32",
            Dtype::Int64 => "INT64",
            Dtype::Int32 => "INT32",
            Dtype::Uint8 => "UINT8",
            Dtype::Int8 => "INT8",
        }
    }
}

/// One declared input or output.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: Dtype,
    /// Fixed shape (a scalar is `[]`).
    pub shape: Vec<usize>,
}

impl TensorSpec {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The inputs and outputs of a raw tensor model, in the order requests and answers carry them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TensorIo {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// The model carries state from one request to the next through its inputs (a recurrent state the client passes
    /// back): its answers are never cached, since the same input is not a repeat of the same question.
    #[serde(default)]
    pub stateful: bool,
}

impl TensorIo {
    /// Checks names, counts and sizes, so that a bad list is an error at load rather than a wrong answer.
    pub fn validate(&self) -> Result<(), String> {
        for (what, list) in [("inputs", &self.inputs), ("outputs", &self.outputs)] {
            if list.is_empty() || list.len() > MAX_TENSORS {
                return Err(format!(
                    "tensors.{what} must list 1 to {MAX_TENSORS} tensors, has {}",
                    list.len()
                ));
            }
            let mut names = std::collections::HashSet::new();
            for t in list {
                if t.name.is_empty() || t.name.len() > 128 {
                    return Err(format!(
                        "tensors.{what}: a name must be 1 to 128 characters, got {:?}",
                        t.name
                    ));
                }
                if !names.insert(t.name.as_str()) {
                    return Err(format!("tensors.{what}: {:?} is listed twice", t.name));
                }
                if t.shape.len() > 8 {
                    return Err(format!(
                        "tensors.{what}: {} has {} dimensions, more than 8",
                        t.name,
                        t.shape.len()
                    ));
                }
                let n = t
                    .shape
                    .iter()
                    .try_fold(1usize, |a, &d| a.checked_mul(d))
                    .filter(|&n| n > 0 && n <= MAX_TENSOR_ELEMENTS);
                if n.is_none() {
                    return Err(format!(
                        "tensors.{what}: {} has shape {:?}: empty or larger than {MAX_TENSOR_ELEMENTS} elements",
                        t.name, t.shape
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Tensor data, by element type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TensorData {
    Fp32(Vec<f32>),
    Int64(Vec<i64>),
    Int32(Vec<i32>),
    Uint8(Vec<u8>),
    Int8(Vec<i8>),
}

impl TensorData {
    pub fn dtype(&self) -> Dtype {
        match self {
            TensorData::Fp32(_) => Dtype::Fp32,
            TensorData::Int64(_) => Dtype::Int64,
            TensorData::Int32(_) => Dtype::Int32,
            TensorData::Uint8(_) => Dtype::Uint8,
            TensorData::Int8(_) => Dtype::Int8,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            TensorData::Fp32(v) => v.len(),
            TensorData::Int64(v) => v.len(),
            TensorData::Int32(v) => v.len(),
            TensorData::Uint8(v) => v.len(),
            TensorData::Int8(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Zeros of `dtype` (a dry run's input).
    pub fn zeros(dtype: Dtype, n: usize) -> TensorData {
        match dtype {
            Dtype::Fp32 => TensorData::Fp32(vec![0.0; n]),
            Dtype::Int64 => TensorData::Int64(vec![0; n]),
            Dtype::Int32 => TensorData::Int32(vec![0; n]),
            Dtype::Uint8 => TensorData::Uint8(vec![0; n]),
            Dtype::Int8 => TensorData::Int8(vec![0; n]),
        }
    }

    /// The protocol's binary form: elements back to back, little-endian.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            TensorData::Fp32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::Int64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::Int32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::Uint8(v) => v.clone(),
            TensorData::Int8(v) => v.iter().map(|x| *x as u8).collect(),
        }
    }

    /// Reads the binary form of `dtype`; `None` when the byte count is not a whole number of elements.
    pub fn from_le_bytes(dtype: Dtype, b: &[u8]) -> Option<TensorData> {
        if !b.len().is_multiple_of(dtype.size()) {
            return None;
        }
        Some(match dtype {
            Dtype::Fp32 => TensorData::Fp32(
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            Dtype::Int64 => TensorData::Int64(
                b.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                    .collect(),
            ),
            Dtype::Int32 => TensorData::Int32(
                b.chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            Dtype::Uint8 => TensorData::Uint8(b.to_vec()),
            Dtype::Int8 => TensorData::Int8(b.iter().map(|x| *x as i8).collect()),
        })
    }

    /// Every value as f64 (comparisons within a tolerance: the golden gate, shadow agreement).
    pub fn as_f64(&self) -> Vec<f64> {
        match self {
            TensorData::Fp32(v) => v.iter().map(|x| *x as f64).collect(),
            TensorData::Int64(v) => v.iter().map(|x| *x as f64).collect(),
            TensorData::Int32(v) => v.iter().map(|x| *x as f64).collect(),
            TensorData::Uint8(v) => v.iter().map(|x| *x as f64).collect(),
            TensorData::Int8(v) => v.iter().map(|x| *x as f64).collect(),
        }
    }
}

/// A named tensor with its shape: one input of a request or one output of an answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorValue {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl TensorValue {
    /// The largest |difference| between two values of one output, infinite when their datatypes or shapes differ
    /// or any difference is NaN (a non-finite output must fail a comparison; `max` would pass over a NaN). The one
    /// comparison of the golden gate on the device and of the bundle builder's check of compiled forms.
    pub fn max_abs_diff(&self, other: &TensorValue) -> f64 {
        if self.data.dtype() != other.data.dtype() || self.shape != other.shape {
            return f64::INFINITY;
        }
        self.data
            .as_f64()
            .iter()
            .zip(other.data.as_f64())
            .map(|(p, q)| (p - q).abs())
            .map(|d| if d.is_nan() { f64::INFINITY } else { d })
            .fold(0f64, f64::max)
    }

    /// Checks this value against its declared spec (name, datatype, shape, element count).
    pub fn check(&self, spec: &TensorSpec) -> Result<(), String> {
        if self.name != spec.name {
            return Err(format!(
                "expected tensor {:?}, got {:?}",
                spec.name, self.name
            ));
        }
        if self.data.dtype() != spec.datatype {
            return Err(format!(
                "{} is {}, the model takes {}",
                self.name,
                self.data.dtype().name(),
                spec.datatype.name()
            ));
        }
        if self.shape != spec.shape {
            return Err(format!(
                "{} has shape {:?}, the model takes {:?}",
                self.name, self.shape, spec.shape
            ));
        }
        if self.data.len() != spec.len() {
            return Err(format!(
                "{} holds {} values, shape {:?} needs {}",
                self.name,
                self.data.len(),
                spec.shape,
                spec.len()
            ));
        }
        if let TensorData::Fp32(v) = &self.data {
            if v.iter().any(|x| !x.is_finite()) {
                return Err(format!(
                    "{} holds a value that is not a finite number",
                    self.name
                ));
            }
        }
        Ok(())
    }
}

/// SHA-256 of a request's tensors (names, types, shapes and bytes, in order): the input half of a cache key and the
/// digest a signed cloud answer binds.
pub fn tensors_digest(values: &[TensorValue]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"outpost-tensors-v1\0");
    for v in values {
        h.update(v.name.as_bytes());
        h.update([0]);
        h.update(v.data.dtype().name().as_bytes());
        h.update((v.shape.len() as u64).to_le_bytes());
        for d in &v.shape {
            h.update((*d as u64).to_le_bytes());
        }
        h.update(v.data.to_le_bytes());
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_forms_round_trip_and_odd_byte_counts_are_refused() {
        for d in [
            TensorData::Fp32(vec![1.5, -2.0]),
            TensorData::Int64(vec![16000, -1]),
            TensorData::Int32(vec![7, -7]),
            TensorData::Uint8(vec![0, 255]),
            TensorData::Int8(vec![-128, 127]),
        ] {
            let b = d.to_le_bytes();
            assert_eq!(TensorData::from_le_bytes(d.dtype(), &b), Some(d.clone()));
            if d.dtype().size() > 1 {
                assert_eq!(TensorData::from_le_bytes(d.dtype(), &b[1..]), None);
            }
        }
    }

    #[test]
    fn a_value_that_does_not_fit_its_spec_is_refused_with_the_reason() {
        let spec = TensorSpec {
            name: "state".into(),
            datatype: Dtype::Fp32,
            shape: vec![2, 1, 2],
        };
        let ok = TensorValue {
            name: "state".into(),
            shape: vec![2, 1, 2],
            data: TensorData::Fp32(vec![0.0; 4]),
        };
        assert!(ok.check(&spec).is_ok());
        let mut wrong = ok.clone();
        wrong.shape = vec![4];
        assert!(wrong.check(&spec).unwrap_err().contains("shape"));
        let mut wrong = ok.clone();
        wrong.data = TensorData::Int64(vec![0; 4]);
        assert!(wrong.check(&spec).unwrap_err().contains("INT64"));
        let mut wrong = ok.clone();
        wrong.data = TensorData::Fp32(vec![0.0, f32::NAN, 0.0, 0.0]);
        assert!(wrong.check(&spec).unwrap_err().contains("finite"));
        let mut wrong = ok;
        wrong.data = TensorData::Fp32(vec![0.0; 3]);
        assert!(wrong.check(&spec).unwrap_err().contains("3 values"));
    }

    #[test]
    fn the_digest_tells_tensors_apart_by_name_type_shape_and_bytes() {
        let a = TensorValue {
            name: "x".into(),
            shape: vec![2],
            data: TensorData::Int32(vec![1, 2]),
        };
        let mut b = a.clone();
        b.name = "y".into();
        let mut c = a.clone();
        c.shape = vec![1, 2];
        let mut d = a.clone();
        d.data = TensorData::Fp32(vec![1.0, 2.0]);
        let all = [&a, &b, &c, &d].map(|v| tensors_digest(std::slice::from_ref(v)));
        for i in 0..4 {
            for j in i + 1..4 {
                assert_ne!(all[i], all[j]);
            }
        }
    }
}
