//! tract's NNEF form: what the slim device build loads (bundles carry it, compiled on the operator's side by
//! [`super::onnx::compile`]), and what every build can load.
//!
//! tract-nnef has no serializer for the fused per-tensor quantize and dequantize operators that a real-int8 or QDQ
//! ONNX file turns into (`QuantizeLinearU8`, `QuantizeLinearI8`, `DequantizeLinearF32`): issue 13 stopped there. The
//! `outpost` registry below writes and reads them as three NNEF operators of its own, so the loaded graph is the one
//! tract builds from the ONNX file, operator for operator.

use super::{bind_input, model_err, InferenceError, PlanKey, TensorIo};
use std::any::TypeId;
use tract_core::ops::element_wise::ElementWiseOp;
use tract_core::ops::quant::{
    DequantizeLinearF32, LookupTable, QuantizeLinearI8, QuantizeLinearU8,
};
use tract_nnef::internal::*;
use tract_onnx_opl::WithOnnx;

/// The tract release this build reads and writes NNEF with (checked against Cargo.lock by a test).
pub const TRACT_VERSION: &str = "0.23.9";

/// The NNEF framework of every load and write: tract-core's operators, the ONNX-only ones (tract_onnx) and ours.
/// Built once per process: building it parses NNEF's standard fragments and fills the registries (8 ms here, more
/// than reading the edge model's NNEF form, 3 ms), so only the first load of a process pays it.
pub(super) fn framework() -> &'static tract_nnef::framework::Nnef {
    static FRAMEWORK: std::sync::OnceLock<tract_nnef::framework::Nnef> = std::sync::OnceLock::new();
    FRAMEWORK.get_or_init(|| {
        tract_nnef::nnef()
            .with_onnx()
            .with_registry(outpost_registry())
    })
}

/// Whether the bytes are an NNEF tar (as [`super::onnx::compile`] writes it) rather than an ONNX protobuf: a tar
/// has `ustar` at byte 257, which a protobuf of that length cannot start a valid ONNX file with by chance.
pub fn is_nnef(bytes: &[u8]) -> bool {
    bytes.get(257..262) == Some(b"ustar")
}

/// Whether NNEF written by tract `writer` can be read by this build. tract's NNEF extensions (`tract_core_*`
/// operators and their parameters) change between its minor releases and stay within one: the same major.minor
/// reads. Returns a sentence saying what to do otherwise.
pub fn readable(writer: &str) -> Result<(), String> {
    let minor = |v: &str| {
        let mut it = v.split('.');
        (it.next().map(str::to_owned), it.next().map(str::to_owned))
    };
    if minor(writer) == minor(TRACT_VERSION) && minor(writer).1.is_some() {
        Ok(())
    } else {
        Err(format!(
            "its NNEF form was written by tract {writer}, and this agent's tract {TRACT_VERSION} reads NNEF \
             from tract {} only: rebuild the bundle with an outpostctl of this agent's release",
            TRACT_VERSION.rsplit_once('.').map_or(TRACT_VERSION, |(mm, _)| mm)
        ))
    }
}

/// Reads an NNEF tar into a typed graph bound to the key: the single input's shape for a classifier; for a raw
/// tensor model, the inputs and outputs the spec lists, in its order.
pub(super) fn typed_nnef(bytes: &[u8], key: &PlanKey) -> Result<TypedModel, InferenceError> {
    let model = framework()
        .model_for_read(&mut std::io::Cursor::new(bytes))
        .map_err(|e| model_err("not a readable NNEF model", e))?;
    let inputs = model.input_outlets().map(|o| o.len()).unwrap_or(0);
    let outputs = model.output_outlets().map(|o| o.len()).unwrap_or(0);
    match &key.io {
        Some(io) => raw(model, io),
        None if inputs != 1 || outputs != 1 => Err(InferenceError::Model(format!(
            "the NNEF model has {inputs} input(s) and {outputs} output(s); a classifier has one of each"
        ))),
        None => bind_input(model, key),
    }
}

/// A raw tensor model's NNEF form keeps the inputs and outputs its ONNX form was compiled with; they must be the
/// spec's, in the spec's order, with its datatypes and shapes.
fn raw(model: TypedModel, io: &TensorIo) -> Result<TypedModel, InferenceError> {
    let inputs = model
        .input_outlets()
        .map_err(|e| model_err("inputs", e))?
        .to_vec();
    let names: Vec<String> = inputs
        .iter()
        .map(|o| model.node(o.node).name.clone())
        .collect();
    let want: Vec<String> = io.inputs.iter().map(|t| t.name.clone()).collect();
    if names != want {
        return Err(InferenceError::Model(format!(
            "the NNEF model's inputs are {names:?} but the spec lists {want:?} (compile it from this spec)"
        )));
    }
    for (o, t) in inputs.iter().zip(&io.inputs) {
        let fact = model.outlet_fact(*o).map_err(|e| model_err("inputs", e))?;
        let shape: Option<Vec<usize>> = fact.shape.as_concrete().map(|s| s.to_vec());
        if fact.datum_type != super::datum(t.datatype) || shape.as_ref() != Some(&t.shape) {
            return Err(InferenceError::Model(format!(
                "the NNEF model's input {} is {:?} of shape {:?}, but the spec says {} of shape {:?}",
                t.name,
                fact.datum_type,
                fact.shape,
                t.datatype.name(),
                t.shape
            )));
        }
    }
    let outputs = model.output_outlets().map(|o| o.len()).unwrap_or(0);
    if outputs != io.outputs.len() {
        return Err(InferenceError::Model(format!(
            "the NNEF model gives {outputs} outputs, the spec lists {}",
            io.outputs.len()
        )));
    }
    Ok(model)
}

/// An int8 weight kept int8 in an NNEF file: its cast to float, in a form tract does not fold while writing (tract's
/// NNEF writer folds every constant expression, and would store the dequantized float weight, 4x the bytes). At
/// load, decluttering turns it into a plain cast, and the weight's dequantization folds into a float constant as
/// it does from the ONNX file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Int8Weight;

impl Op for Int8Weight {
    fn name(&self) -> StaticName {
        "OutpostInt8Weight".into()
    }
    op_as_typed_op!();
}

impl EvalOp for Int8Weight {
    not_out_of_plan!();
    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = inputs[0].cast_to::<f32>()?.into_owned();
        Ok(tvec!(x.into_tvalue()))
    }
}

impl TypedOp for Int8Weight {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }

    fn declutter(
        &self,
        model: &TypedModel,
        node: &TypedNode,
    ) -> TractResult<Option<TypedModelPatch>> {
        let cast = tract_core::ops::cast::cast(f32::datum_type());
        Ok(Some(TypedModelPatch::replace_single_op(
            model,
            node,
            &node.inputs,
            cast,
        )?))
    }

    as_op!();
}

/// Outpost's NNEF operators: tract's fused quantize and dequantize, with their parameters.
fn outpost_registry() -> Registry {
    let mut registry = Registry::new("outpost")
        .with_doc("Extension `outpost`: tract's per-tensor quantize and dequantize operators.");
    let params = |zero_point: TypeName| {
        vec![
            TypeName::Scalar.tensor().named("input"),
            TypeName::Scalar.named("scale"),
            zero_point.named("zero_point"),
        ]
    };
    // The two quantize operators differ only in their output type.
    macro_rules! quantize {
        ($id:literal, $op:ident, $zp:ty) => {
            registry.register_element_wise(
                $id,
                TypeId::of::<$op>(),
                Box::new(|ast, node| {
                    Ok(mini_op::<$op>(node)
                        .map(|op| quant_invocation(ast, node, $id, op.scale, op.zero_point as i64)))
                }),
                params(TypeName::Integer),
                |builder, invocation| {
                    let input = invocation.named_arg_as(builder, "input")?;
                    let scale: f32 = invocation.named_arg_as(builder, "scale")?;
                    let zero_point: i64 = invocation.named_arg_as(builder, "zero_point")?;
                    let zero_point = <$zp>::try_from(zero_point)
                        .with_context(|| format!("zero_point {zero_point} out of range"))?;
                    builder.wire(
                        ElementWiseOp(Box::new($op { scale, zero_point }), None),
                        &[input],
                    )
                },
            );
        };
    }
    quantize!("outpost_quantize_linear_u8", QuantizeLinearU8, u8);
    quantize!("outpost_quantize_linear_i8", QuantizeLinearI8, i8);
    // Decluttering fuses a dequantize, elementwise float operators and a quantize on int8 values into one 256-entry
    // table (`LookupTable`): written as its table.
    registry.register_element_wise(
        "outpost_lookup_table",
        TypeId::of::<LookupTable>(),
        Box::new(|ast, node| {
            let Some(op) = mini_op::<LookupTable>(node) else {
                return Ok(None);
            };
            let table = ast.konst(format!("{}.table", node.name), &rctensor1(op.table.table()))?;
            let input = ast.mapping[&node.inputs[0]].clone();
            Ok(Some(invocation(
                "outpost_lookup_table",
                &[input],
                &[("table", table.as_ref().clone())],
            )))
        }),
        vec![
            TypeName::Scalar.tensor().named("input"),
            TypeName::Integer.tensor().named("table"),
        ],
        |builder, invocation| {
            let input = invocation.named_arg_as(builder, "input")?;
            let table: Arc<Tensor> = invocation.named_arg_as(builder, "table")?;
            let table = table.cast_to::<u8>()?;
            let table = table.try_as_plain_ram()?.as_slice::<u8>()?.to_vec();
            ensure!(
                table.len() == 256,
                "a lookup table has 256 entries, not {}",
                table.len()
            );
            let lut = tract_linalg::routines::lut_u8(&table)?;
            builder.wire(
                ElementWiseOp(Box::new(LookupTable { table: lut }), None),
                &[input],
            )
        },
    );
    registry.register_dumper(|ast, node, _: &Int8Weight| {
        let input = ast.mapping[&node.inputs[0]].clone();
        Ok(Some(invocation("outpost_int8_weight", &[input], &[])))
    });
    registry.register_primitive(
        "outpost_int8_weight",
        &[TypeName::Scalar.tensor().named("input")],
        &[("output", TypeName::Scalar.tensor())],
        |builder, invocation| {
            let input = invocation.named_arg_as(builder, "input")?;
            builder.wire(Int8Weight, &[input])
        },
    );
    registry.register_dumper(|ast, node, op: &DequantizeLinearF32| {
        Ok(Some(quant_invocation(
            ast,
            node,
            "outpost_dequantize_linear_f32",
            op.scale,
            op.zero_point as i64,
        )))
    });
    registry.register_primitive(
        "outpost_dequantize_linear_f32",
        &params(TypeName::Integer),
        &[("output", TypeName::Scalar.tensor())],
        |builder, invocation| {
            let input = invocation.named_arg_as(builder, "input")?;
            let scale: f32 = invocation.named_arg_as(builder, "scale")?;
            let zero_point: i64 = invocation.named_arg_as(builder, "zero_point")?;
            let zero_point = i32::try_from(zero_point).context("zero_point out of i32 range")?;
            builder.wire(DequantizeLinearF32 { scale, zero_point }, &[input])
        },
    );
    registry
}

fn mini_op<T: tract_core::ops::element_wise::ElementWiseMiniOp>(node: &TypedNode) -> Option<&T> {
    node.op_as::<ElementWiseOp>()?.0.downcast_ref::<T>()
}

fn quant_invocation(
    ast: &mut IntoAst,
    node: &TypedNode,
    id: &str,
    scale: f32,
    zero_point: i64,
) -> Arc<RValue> {
    let input = ast.mapping[&node.inputs[0]].clone();
    invocation(
        id,
        &[input],
        &[
            ("scale", numeric(scale)),
            ("zero_point", numeric(zero_point)),
        ],
    )
}
