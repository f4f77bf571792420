//! Running a real-int8 (QOperator) ONNX model as float on CPUs without fast int8 kernels.
//!
//! tract runs `QLinearConv`/`QLinearMatMul` with integer kernels, which on many CPUs are 9-30x slower than its f32
//! kernels for the same shapes (BENCHMARKS.md, issues 2 and 27), even some with int8 dot products; `engine.int8 =
//! auto` times both forms and keeps the faster ([`super::int8`]). This pass
//! rewrites each quantized operator into its QDQ form before tract parses the graph:
//!
//! ```text
//! QLinearConv(x, xs, xz, w, ws, wz, ys, yz, B)
//!   -> QuantizeLinear(Conv(DequantizeLinear(x, xs, xz), DequantizeLinear(w, ws, wz), DequantizeLinear(B, xs*ws)), ys, yz)
//! QLinearMatMul(a, as, az, b, bs, bz, ys, yz)
//!   -> QuantizeLinear(MatMul(DequantizeLinear(a, as, az), DequantizeLinear(b, bs, bz)), ys, yz)
//! ```
//!
//! Activations stay quantized between operators (each output is re-quantized with the file's own scale and zero
//! point), so the answers are those of the int8 model up to float rounding, while the products run on f32 kernels
//! (tract folds the constant weight dequantization at optimisation). The rewritten graph goes through the same
//! typing, dry run and spec checks as any other.

use std::collections::HashMap;
use tract_onnx::pb;

const FLOAT: i32 = 1;

/// Values of a float initializer, from `float_data` or little-endian `raw_data`.
fn float_values(t: &pb::TensorProto) -> Option<Vec<f32>> {
    if t.data_type != FLOAT {
        return None;
    }
    if !t.float_data.is_empty() {
        return Some(t.float_data.clone());
    }
    if !t.raw_data.is_empty() && t.raw_data.len().is_multiple_of(4) {
        return Some(
            t.raw_data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        );
    }
    None
}

fn node(
    op: &str,
    inputs: Vec<String>,
    output: String,
    attrs: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        input: inputs,
        output: vec![output.clone()],
        name: format!("{output}__node"),
        op_type: op.to_string(),
        attribute: attrs,
        ..Default::default()
    }
}

fn axis(a: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: "axis".into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: a,
        ..Default::default()
    }
}

/// `DequantizeLinear(x, scale[, zero])`; a per-axis scale (more than one value) gets `axis`.
fn dequantize(
    x: &str,
    scale: &str,
    zero: Option<&str>,
    per_axis: Option<i64>,
    out: String,
) -> pb::NodeProto {
    let mut inputs = vec![x.to_string(), scale.to_string()];
    if let Some(z) = zero.filter(|z| !z.is_empty()) {
        inputs.push(z.to_string());
    }
    node(
        "DequantizeLinear",
        inputs,
        out,
        per_axis.map(axis).into_iter().collect(),
    )
}

/// `QuantizeLinear(y, scale, zero)` into the quantized operator's own output name, so its consumers are unchanged.
fn requantize(y: &str, scale: &str, zero: &str, out: &str) -> pb::NodeProto {
    let inputs = vec![y.to_string(), scale.to_string(), zero.to_string()];
    node("QuantizeLinear", inputs, out.to_string(), vec![])
}

/// A quantized weight of the file, as [`rewrite`] dequantizes it: tract folds that dequantization into a float
/// constant while typing, and [`super::onnx::compile`] puts the int8 weight back in the NNEF form (4x fewer bytes).
pub struct QuantWeight {
    /// Name of the DequantizeLinear node [`rewrite`] makes for it (tract names the folded constant after it).
    pub node: String,
    /// The int8 or uint8 values, their shape, and whether they are signed.
    pub values: Vec<i32>,
    pub dims: Vec<usize>,
    pub signed: bool,
    /// One scale and zero point, or one per index of `axis`.
    pub scale: Vec<f32>,
    pub zero_point: Vec<i32>,
    pub axis: usize,
}

/// Integer values of an INT8 (3) or UINT8 (2) initializer.
fn int8_values(t: &pb::TensorProto) -> Option<(Vec<i32>, bool)> {
    let signed = match t.data_type {
        3 => true,
        2 => false,
        _ => return None,
    };
    if !t.raw_data.is_empty() {
        return Some((
            t.raw_data
                .iter()
                .map(|&b| if signed { b as i8 as i32 } else { b as i32 })
                .collect(),
            signed,
        ));
    }
    Some((t.int32_data.clone(), signed))
}

/// The constant quantized weights of the `QLinearConv` (weight) and `QLinearMatMul` (right operand) operators.
pub fn weights(graph: &pb::GraphProto) -> Vec<QuantWeight> {
    let inits: HashMap<&str, &pb::TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let mut out = Vec::new();
    for n in &graph.node {
        let (part, ok) = match n.op_type.as_str() {
            "QLinearConv" => ("w", (8..=9).contains(&n.input.len())),
            "QLinearMatMul" => ("b", n.input.len() == 8),
            _ => continue,
        };
        if !ok || n.output.len() != 1 {
            continue;
        }
        let i = &n.input;
        let (Some(w), Some(s), Some(z)) = (
            inits.get(i[3].as_str()),
            inits.get(i[4].as_str()).and_then(|t| float_values(t)),
            inits.get(i[5].as_str()).and_then(|t| int8_values(t)),
        ) else {
            continue;
        };
        let Some((values, signed)) = int8_values(w) else {
            continue;
        };
        let dims: Vec<usize> = w.dims.iter().map(|&d| d.max(0) as usize).collect();
        let axis = if part == "w" {
            0
        } else {
            dims.len().saturating_sub(1)
        };
        out.push(QuantWeight {
            node: format!("{}__outpost_{part}__node", n.output[0]),
            values,
            dims,
            signed,
            scale: s,
            zero_point: z.0,
            axis,
        });
    }
    out
}

/// Rewrites every `QLinearConv` and `QLinearMatMul` of the graph into its QDQ form; returns how many it rewrote.
/// An operator whose scales are not constant initializers is an error (the bias scale must be computed here), and
/// the caller then keeps the model as it is.
pub fn rewrite(graph: &mut pb::GraphProto) -> Result<usize, String> {
    let floats: HashMap<String, Vec<f32>> = graph
        .initializer
        .iter()
        .filter_map(|t| float_values(t).map(|v| (t.name.clone(), v)))
        .collect();
    let scale_len = |name: &str| floats.get(name).map(Vec::len).unwrap_or(1);
    let mut nodes = Vec::with_capacity(graph.node.len() * 3);
    let mut initializers = Vec::new();
    let mut rewritten = 0;
    for n in std::mem::take(&mut graph.node) {
        let standard = n.domain.is_empty() || n.domain == "ai.onnx";
        let i = &n.input;
        match n.op_type.as_str() {
            "QLinearConv" if standard && (8..=9).contains(&i.len()) && n.output.len() == 1 => {
                let out = &n.output[0];
                let name = |s: &str| format!("{out}__outpost_{s}");
                nodes.push(dequantize(&i[0], &i[1], Some(&i[2]), None, name("x")));
                let w_axis = (scale_len(&i[4]) > 1).then_some(0);
                nodes.push(dequantize(&i[3], &i[4], Some(&i[5]), w_axis, name("w")));
                let mut conv_inputs = vec![name("x"), name("w")];
                if i.len() == 9 && !i[8].is_empty() {
                    let xs = floats.get(&i[1]).filter(|v| v.len() == 1).ok_or_else(|| {
                        format!("{out}: the input scale is not a constant scalar")
                    })?;
                    let ws = floats
                        .get(&i[4])
                        .ok_or_else(|| format!("{out}: the weight scale is not a constant"))?;
                    let bs: Vec<f32> = ws.iter().map(|w| w * xs[0]).collect();
                    initializers.push(pb::TensorProto {
                        name: name("bias_scale"),
                        data_type: FLOAT,
                        dims: if bs.len() > 1 {
                            vec![bs.len() as i64]
                        } else {
                            vec![]
                        },
                        float_data: bs,
                        ..Default::default()
                    });
                    let b_axis = (scale_len(&i[4]) > 1).then_some(0);
                    nodes.push(dequantize(
                        &i[8],
                        &name("bias_scale"),
                        None,
                        b_axis,
                        name("b"),
                    ));
                    conv_inputs.push(name("b"));
                }
                nodes.push(node("Conv", conv_inputs, name("y"), n.attribute.clone()));
                nodes.push(requantize(&name("y"), &i[6], &i[7], out));
                rewritten += 1;
            }
            "QLinearMatMul" if standard && i.len() == 8 && n.output.len() == 1 => {
                let out = &n.output[0];
                let name = |s: &str| format!("{out}__outpost_{s}");
                if scale_len(&i[1]) > 1 || scale_len(&i[6]) > 1 {
                    return Err(format!(
                        "{out}: per-row activation scales are not rewritten"
                    ));
                }
                nodes.push(dequantize(&i[0], &i[1], Some(&i[2]), None, name("a")));
                let b_axis = (scale_len(&i[4]) > 1).then_some(-1);
                nodes.push(dequantize(&i[3], &i[4], Some(&i[5]), b_axis, name("b")));
                let product = vec![name("a"), name("b")];
                nodes.push(node("MatMul", product, name("y"), vec![]));
                nodes.push(requantize(&name("y"), &i[6], &i[7], out));
                rewritten += 1;
            }
            _ => nodes.push(n),
        }
    }
    graph.node = nodes;
    graph.initializer.extend(initializers);
    Ok(rewritten)
}
