//! The ONNX front end (feature `onnx`): parsing ONNX files into tract's typed graph, the QDQ rewrite of real-int8
//! files, and compiling a model into the NNEF form that the slim device build reads ([`compile`]).
//!
//! Only this file and [`super::dequantize`] know tract-onnx, so the device build can leave it out: tract-onnx,
//! tract-hir and their protobuf code are about 4 MiB of a binary that loads NNEF only (BENCHMARKS.md, issue 19).

use super::{
    bind_input, datum, dequantize, digest_hex, init_kernels, model_err, nnef, Format,
    InferenceError, Int8Mode, ModelSpec, PlanKey, TensorIo,
};
use std::collections::HashMap;
use tract_onnx::prelude::*;

/// Parses the ONNX file, keeps the key's output, binds every symbol (a dynamic batch `N`) and the input fact: the
/// typed graph that both the plan and the NNEF form start from. Returns it with the number of quantized operators
/// rewritten to their QDQ form.
pub(super) fn typed_onnx(
    model_bytes: &[u8],
    key: &PlanKey,
) -> Result<(TypedModel, usize), InferenceError> {
    let onnx = tract_onnx::onnx();
    let mut proto = onnx
        .proto_model_for_read(&mut std::io::Cursor::new(model_bytes))
        .map_err(|e| model_err("not a readable ONNX model", e))?;
    let mut dequantized_ops = 0;
    if key.int8_as_float {
        if let Some(graph) = proto.graph.as_ref() {
            // On a copy: a graph the pass cannot rewrite whole is served as it is.
            let mut rewritten = graph.clone();
            match dequantize::rewrite(&mut rewritten) {
                Ok(n) if n > 0 => {
                    proto.graph = Some(rewritten);
                    dequantized_ops = n;
                }
                Ok(_) => {}
                Err(why) => tracing::info!(%why, "quantized operators kept as they are"),
            }
        }
    }
    let mut inference = onnx
        .model_for_proto_model(&proto)
        .map_err(|e| model_err("not a readable ONNX model", e))?;
    if let Some(io) = &key.io {
        return Ok((typed_raw(inference, io, key.batch)?, dequantized_ops));
    }
    if inference
        .input_outlets()
        .map_err(|e| model_err("inputs", e))?
        .len()
        != 1
    {
        return Err(InferenceError::Model(
            "the model must have exactly one input".into(),
        ));
    }
    // Keep only the declared output, so an extra debugging output in the file cannot change what we read.
    inference
        .select_outputs_by_name([key.output_name.as_str()])
        .map_err(|e| {
            model_err(
                &format!("the model has no output named '{}'", key.output_name),
                e,
            )
        })?;
    let typed = inference
        .into_typed()
        .map_err(|e| model_err("typing the graph", e))?;
    Ok((bind_input(typed, key)?, dequantized_ops))
}

/// A raw tensor model: its inputs put in the spec's order (by name; the file must have exactly those), each bound to
/// its declared datatype and shape, and only the declared outputs kept, in the spec's order.
fn typed_raw(
    mut inference: InferenceModel,
    io: &TensorIo,
    batch: usize,
) -> Result<TypedModel, InferenceError> {
    let outlets = inference
        .input_outlets()
        .map_err(|e| model_err("inputs", e))?
        .to_vec();
    let mut have: Vec<String> = outlets
        .iter()
        .map(|o| inference.node(o.node).name.clone())
        .collect();
    let mut want: Vec<String> = io.inputs.iter().map(|t| t.name.clone()).collect();
    have.sort();
    want.sort();
    if have != want {
        return Err(InferenceError::Model(format!(
            "the model's inputs are {have:?} but the spec lists {want:?}"
        )));
    }
    inference
        .set_input_names(io.inputs.iter().map(|t| t.name.as_str()))
        .map_err(|e| model_err("ordering the inputs", e))?;
    inference
        .select_outputs_by_name(io.outputs.iter().map(|t| t.name.as_str()))
        .map_err(|e| model_err("the model lacks an output the spec lists", e))?;
    for (i, t) in io.inputs.iter().enumerate() {
        inference = inference
            .with_input_fact(i, InferenceFact::dt_shape(datum(t.datatype), &t.shape))
            .map_err(|e| model_err(&format!("input {} as {:?}", t.name, t.shape), e))?;
    }
    let typed = inference
        .into_typed()
        .map_err(|e| model_err("typing the graph", e))?;
    let subs: HashMap<Symbol, TDim> = typed
        .symbols
        .all_symbols()
        .into_iter()
        .map(|s| (s, TDim::Val(batch as i64)))
        .collect();
    if subs.is_empty() {
        Ok(typed)
    } else {
        typed
            .set_symbols(&subs)
            .map_err(|e| model_err("binding the model's symbols", e))
    }
}

/// Which NNEF form [`compile`] writes of a model. For a float model all three are the same graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NnefForm {
    /// The model as it is: a real-int8 file keeps tract's integer operators (fast where the CPU has int8 dot
    /// products). Its float-to-int8 boundaries are written as Outpost's own NNEF operators ([`super::nnef`]).
    Kernels,
    /// A real-int8 file rewritten to its QDQ form (float kernels, int8 activations), as `engine.int8 = "auto"` runs
    /// it on CPUs without int8 dot products. The weights stay int8 in the file and are dequantized at load.
    Qdq,
    /// The QDQ form with every quantize and dequantize spelled out in tract-core's float operators (cast, multiply,
    /// round half to even, add, clamp), so the file needs no operator outside tract-core. The other way to ship int8
    /// weights, measured against [`NnefForm::Qdq`] in BENCHMARKS.md (issue 19).
    QdqFloatOps,
}

impl std::str::FromStr for NnefForm {
    type Err = String;
    /// The words of `outpostctl compile --form`.
    fn from_str(s: &str) -> Result<NnefForm, String> {
        match s {
            "kernels" => Ok(NnefForm::Kernels),
            "qdq" => Ok(NnefForm::Qdq),
            "qdq-float-ops" => Ok(NnefForm::QdqFloatOps),
            other => Err(format!(
                "'{other}' is not a form: use kernels, qdq or qdq-float-ops"
            )),
        }
    }
}

/// What [`compile`] wrote.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The NNEF tar.
    pub bytes: Vec<u8>,
    /// Quantized operators the form keeps (tract's integer kernels run them); 0 for a float model or a QDQ form.
    pub int8_kernel_ops: usize,
    /// Quantized operators rewritten to their QDQ form (0 unless the form is a QDQ one and the file is real-int8).
    pub dequantized_ops: usize,
}

/// Compiles an ONNX model into tract's NNEF form, typed and bound to the spec's input(s): loading it skips ONNX
/// parsing and typing, and needs no ONNX front end. The tar is deterministic (fixed timestamps), so the same model
/// and tract give the same bytes, the same digest and the same release.
pub fn compile(
    model_bytes: &[u8],
    spec: &ModelSpec,
    form: NnefForm,
) -> Result<Compiled, InferenceError> {
    init_kernels();
    spec.validate().map_err(InferenceError::Spec)?;
    let int8 = match form {
        NnefForm::Kernels => Int8Mode::Native,
        NnefForm::Qdq | NnefForm::QdqFloatOps => Int8Mode::Float,
    };
    let key = PlanKey::new(&digest_hex(model_bytes), Format::Onnx, spec, 1, int8);
    let (typed, dequantized_ops) = typed_onnx(model_bytes, &key)?;
    let mut typed = if dequantized_ops > 0 {
        // tract folds each weight's dequantization into a float constant while typing (4x the bytes of the int8
        // weight): the weights go back to int8 with their dequantization as operators, which the device folds
        // when it optimises the model at load. Written before decluttering, which would fold them again.
        let mut typed = typed;
        let weights = tract_onnx::onnx()
            .proto_model_for_read(&mut std::io::Cursor::new(model_bytes))
            .ok()
            .and_then(|p| p.graph)
            .map(|g| dequantize::weights(&g))
            .unwrap_or_default();
        requantize_weights(&mut typed, &weights)
            .map_err(|e| model_err("keeping the weights int8", e))?;
        strided_slices_to_slices(&mut typed)
            .map_err(|e| model_err("rewriting strided slices", e))?;
        typed
    } else {
        typed
            .into_decluttered()
            .map_err(|e| model_err("decluttering", e))?
    };
    if form == NnefForm::QdqFloatOps {
        quant_ops_to_float(&mut typed).map_err(|e| model_err("spelling out quantization", e))?;
    }
    let int8_kernel_ops = match form {
        NnefForm::Kernels => int8_operators(model_bytes),
        NnefForm::Qdq | NnefForm::QdqFloatOps => 0,
    };
    // tract 0.23.9 writes small constants inline as literals and reads an INT64 literal beyond 32 bits back wrong
    // (5,000,000,000 came back as 705,032,711; its option to write every constant to a file cannot read its own
    // string properties back). The bundle builder compares every NNEF form with its ONNX form on the golden cases
    // and refuses one that differs, naming the output.
    let bytes = nnef::framework()
        .write_to_tar_with_config(&typed, Vec::new(), false, true)
        .map_err(|e| model_err("writing NNEF", e))?;
    Ok(Compiled {
        bytes,
        int8_kernel_ops,
        dequantized_ops,
    })
}

/// How many real-int8 operators (`QLinearConv`, `QLinearMatMul`) an ONNX file holds: when some, a bundle carries
/// both its [`NnefForm::Kernels`] and its [`NnefForm::Qdq`] form, and the device keeps the faster.
pub fn int8_operators(model_bytes: &[u8]) -> usize {
    let Ok(proto) = tract_onnx::onnx().proto_model_for_read(&mut std::io::Cursor::new(model_bytes))
    else {
        return 0;
    };
    let Some(mut graph) = proto.graph else {
        return 0;
    };
    dequantize::rewrite(&mut graph).unwrap_or(0)
}

/// Puts each quantized weight that typing folded into a float constant back as its int8 values followed by the
/// dequantization (cast, subtract the zero point, multiply by the scale), after checking that those operators give
/// the folded constant bit for bit; a weight that does not check out stays float. Returns how many went back.
/// Rewrites each `StridedSlice` (what ONNX's Slice types to) into what its own declutter makes of it (a plain
/// `Slice` when its bounds are constant), without decluttering the rest of the graph (which would fold the int8
/// weights back to float): tract's NNEF writer knows `Slice` and not `StridedSlice`.
fn strided_slices_to_slices(model: &mut TypedModel) -> TractResult<usize> {
    let ids: Vec<usize> = model
        .nodes()
        .iter()
        .filter(|n| n.op.name() == "StridedSlice")
        .map(|n| n.id)
        .collect();
    let mut done = 0;
    for id in ids {
        let node = model.node(id);
        if let Some(patch) = node.op.declutter(model, node)? {
            patch.apply(model)?;
            done += 1;
        }
    }
    Ok(done)
}

fn requantize_weights(
    model: &mut TypedModel,
    weights: &[dequantize::QuantWeight],
) -> TractResult<usize> {
    use tract_core::ops::konst::Const;
    use tract_core::ops::math::{mul, sub};
    let mut done = 0;
    for w in weights {
        let Some(node) = model
            .nodes()
            .iter()
            .find(|n| n.name.starts_with(&w.node) && n.op_is::<Const>())
        else {
            continue;
        };
        let (id, name) = (node.id, node.name.clone());
        let Some(folded) = node.op_as::<Const>().map(|c| c.val().clone()) else {
            continue;
        };
        if folded.datum_type() != f32::datum_type() || folded.shape() != w.dims.as_slice() {
            continue;
        }
        let rank = w.dims.len();
        let inner: usize = w.dims.iter().skip(w.axis + 1).product();
        let per = |v: usize, i: usize| if v == 1 { 0 } else { (i / inner.max(1)) % v };
        let float = folded.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
        let same = w.values.len() == float.len()
            && w.values.iter().enumerate().all(|(i, &q)| {
                let s = w.scale[per(w.scale.len(), i)];
                let z = w.zero_point[per(w.zero_point.len(), i)];
                ((q - z) as f32 * s).to_bits() == float[i].to_bits()
            });
        if !same {
            continue;
        }
        let q = if w.signed {
            let v: Vec<i8> = w.values.iter().map(|&x| x as i8).collect();
            Tensor::from_shape(&w.dims, &v)?
        } else {
            let v: Vec<u8> = w.values.iter().map(|&x| x as u8).collect();
            Tensor::from_shape(&w.dims, &v)?
        };
        let along_axis = |v: Vec<f32>| -> TractResult<Tensor> {
            let mut shape = vec![1usize; rank];
            if v.len() > 1 {
                shape[w.axis] = v.len();
            }
            Tensor::from_shape(&shape, &v)
        };
        let zero: Vec<f32> = w.zero_point.iter().map(|&z| z as f32).collect();
        let mut patch = TypedModelPatch::default();
        let q = patch.add_const(format!("{name}.int8"), q)?;
        let z = patch.add_const(format!("{name}.zero_point"), along_axis(zero)?)?;
        let s = patch.add_const(format!("{name}.scale"), along_axis(w.scale.clone())?)?;
        let x = patch.wire_node(format!("{name}.f32"), super::nnef::Int8Weight, &[q])?;
        let x = patch.wire_node(format!("{name}.sub"), sub(), &[x[0], z])?;
        let x = patch.wire_node(format!("{name}.mul"), mul(), &[x[0], s])?;
        patch.shunt_outside(model, OutletId::new(id, 0), x[0])?;
        patch.apply(model)?;
        done += 1;
    }
    model.compact()?;
    Ok(done)
}

/// Replaces tract's per-tensor quantize and dequantize operators by the same arithmetic in tract-core's float
/// operators, with results equal to the fused operators':
/// `quantize(x) = cast(clamp(round_half_to_even(x * (1 / scale)) + zero_point, lo, hi))` and
/// `dequantize(q) = (cast_f32(q) - zero_point) * scale`.
fn quant_ops_to_float(model: &mut TypedModel) -> TractResult<()> {
    use tract_core::ops::cast::cast;
    use tract_core::ops::element_wise::ElementWiseOp;
    use tract_core::ops::math::{add, max, min, mul, round_half_to_even, sub};
    use tract_core::ops::quant::{DequantizeLinearF32, QuantizeLinearI8, QuantizeLinearU8};
    enum Q {
        Quantize {
            scale: f32,
            zero_point: f32,
            dt: DatumType,
            lo: f32,
            hi: f32,
        },
        Dequantize {
            scale: f32,
            zero_point: f32,
        },
    }
    let found: Vec<(usize, Q)> = model
        .nodes()
        .iter()
        .filter_map(|n| {
            if let Some(op) = n.op_as::<DequantizeLinearF32>() {
                return Some((
                    n.id,
                    Q::Dequantize {
                        scale: op.scale,
                        zero_point: op.zero_point as f32,
                    },
                ));
            }
            let ew = n.op_as::<ElementWiseOp>()?;
            if let Some(q) = ew.0.downcast_ref::<QuantizeLinearU8>() {
                Some((
                    n.id,
                    Q::Quantize {
                        scale: q.scale,
                        zero_point: q.zero_point as f32,
                        dt: u8::datum_type(),
                        lo: 0.0,
                        hi: 255.0,
                    },
                ))
            } else {
                ew.0.downcast_ref::<QuantizeLinearI8>().map(|q| {
                    (
                        n.id,
                        Q::Quantize {
                            scale: q.scale,
                            zero_point: q.zero_point as f32,
                            dt: i8::datum_type(),
                            lo: -128.0,
                            hi: 127.0,
                        },
                    )
                })
            }
        })
        .collect();
    for (id, q) in found {
        let node = model.node(id).clone();
        let name = node.name.clone();
        let mut patch = TypedModelPatch::default();
        let x = patch.tap_model(model, node.inputs[0])?;
        let rank = model.outlet_fact(node.inputs[0])?.rank();
        let konst = |patch: &mut TypedModelPatch, suffix: &str, v: f32| {
            patch.add_const(
                format!("{name}.{suffix}"),
                tensor0(v).broadcast_into_rank(rank)?,
            )
        };
        let out = match q {
            Q::Quantize {
                scale,
                zero_point,
                dt,
                lo,
                hi,
            } => {
                let s = konst(&mut patch, "scale", scale)?;
                let z = konst(&mut patch, "zero_point", zero_point)?;
                let lo = konst(&mut patch, "lo", lo)?;
                let hi = konst(&mut patch, "hi", hi)?;
                let mut w =
                    patch.wire_node(format!("{name}.f32"), cast(f32::datum_type()), &[x])?;
                w = patch.wire_node(format!("{name}.mul"), mul(), &[w[0], s])?;
                w = patch.wire_node(format!("{name}.round"), round_half_to_even(), &w)?;
                w = patch.wire_node(format!("{name}.add"), add(), &[w[0], z])?;
                w = patch.wire_node(format!("{name}.max"), max(), &[w[0], lo])?;
                w = patch.wire_node(format!("{name}.min"), min(), &[w[0], hi])?;
                patch.wire_node(format!("{name}.cast"), cast(dt), &w)?
            }
            Q::Dequantize { scale, zero_point } => {
                let s = konst(&mut patch, "scale", scale)?;
                let z = konst(&mut patch, "zero_point", zero_point)?;
                let mut w =
                    patch.wire_node(format!("{name}.f32"), cast(f32::datum_type()), &[x])?;
                w = patch.wire_node(format!("{name}.sub"), sub(), &[w[0], z])?;
                patch.wire_node(format!("{name}.mul"), mul(), &[w[0], s])?
            }
        };
        patch.shunt_outside(model, OutletId::new(id, 0), out[0])?;
        patch.apply(model)?;
    }
    model.compact()
}
