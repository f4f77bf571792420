//! One thread's state for running an engine's plan (tract's per-run state): workers each hold one, so runs never
//! contend on a lock.

use tract_nnef::prelude::*;

use super::*;

/// One thread's state for running an [`Engine`]'s plan.
pub struct Session {
    pub(super) engine: Engine,
    pub(super) state: TypedSimpleState,
}

impl Session {
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Runs the model on one flat input tensor and returns its flat output.
    pub fn run(&mut self, input: &[f32]) -> Result<Vec<f32>, InferenceError> {
        let shape = &self.engine.plan.shape;
        let expected: usize = shape.iter().product();
        if input.len() != expected {
            return Err(InferenceError::InputShape {
                expected,
                got: input.len(),
                shape: shape.clone(),
            });
        }
        let tensor =
            Tensor::from_shape(shape, input).map_err(|e| InferenceError::Run(one_line(&e)))?;
        let state = &mut self.state;
        let out = match &self.engine.plan.parallel {
            Some(executor) => {
                tract_linalg::multithread::multithread_tract_scope(executor.clone(), || {
                    state.run(tvec!(tensor.into()))
                })
            }
            None => state.run(tvec!(tensor.into())),
        }
        .map_err(|e| InferenceError::Run(one_line(&e)))?;
        let view = out[0]
            .to_plain_array_view::<f32>()
            .map_err(|e| InferenceError::Run(one_line(&e)))?;
        Ok(view.iter().copied().collect())
    }

    /// Runs a raw tensor model on one request's inputs (in the spec's order, each checked against its declaration)
    /// and returns its outputs in the spec's order.
    pub fn run_tensors(
        &mut self,
        inputs: &[TensorValue],
    ) -> Result<Vec<TensorValue>, InferenceError> {
        let io = self.engine.plan.key.io.as_ref().ok_or_else(|| {
            InferenceError::Run(format!(
                "model {} is an image classifier, not a raw tensor model",
                self.engine.spec.name
            ))
        })?;
        if inputs.len() != io.inputs.len() {
            return Err(InferenceError::Tensors(format!(
                "model {} takes {} inputs ({}), the request has {}",
                self.engine.spec.name,
                io.inputs.len(),
                io.inputs
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                inputs.len()
            )));
        }
        for (v, t) in inputs.iter().zip(&io.inputs) {
            v.check(t).map_err(InferenceError::Tensors)?;
        }
        let tensors = inputs
            .iter()
            .map(|v| to_tract(v).map(TValue::from))
            .collect::<TractResult<TVec<TValue>>>()
            .map_err(|e| InferenceError::Run(one_line(&e)))?;
        let out = self
            .state
            .run(tensors)
            .map_err(|e| InferenceError::Run(one_line(&e)))?;
        io.outputs
            .iter()
            .zip(out.iter())
            .map(|(t, o)| from_tract(&t.name, o))
            .collect()
    }

    /// Runs a task model (detector, scorer) on one preprocessed image and decodes its outputs; returns the decoded
    /// answer and the outputs it was decoded from. A model whose outputs do not fit its task is an error, never
    /// boxes.
    pub fn run_task(
        &mut self,
        input: &[f32],
        fit: &task::Fit,
        overrides: &task::Overrides,
    ) -> Result<(task::Decoded, Vec<TensorValue>), InferenceError> {
        let spec = self.engine.spec.clone();
        let task = spec.task.as_ref().ok_or_else(|| {
            InferenceError::Run(format!(
                "model {} has no task (detection, score)",
                spec.name
            ))
        })?;
        overrides.validate()?;
        let expected = spec.input_len();
        if input.len() != expected {
            return Err(InferenceError::InputShape {
                expected,
                got: input.len(),
                shape: spec.input.shape.clone(),
            });
        }
        let value = TensorValue {
            name: spec.input.name.clone(),
            shape: spec.input.shape.clone(),
            data: TensorData::Fp32(input.to_vec()),
        };
        let outputs = self.run_tensors(std::slice::from_ref(&value))?;
        let (w, h) = (
            spec.preprocess.width as usize,
            spec.preprocess.height as usize,
        );
        let decoded = task.decode(&outputs, &spec.labels, (w, h), fit, overrides)?;
        Ok((decoded, outputs))
    }

    pub fn classify(&mut self, input: &[f32]) -> Result<Prediction, InferenceError> {
        if self.engine.batch() != 1 {
            return Err(InferenceError::Run(format!(
                "classify takes one sample; this engine runs batches of {}",
                self.engine.batch()
            )));
        }
        let out = self.run(input)?;
        if out.is_empty() || out.iter().any(|x| !x.is_finite()) {
            return Err(InferenceError::Run(
                "the model produced an empty or non-finite output".into(),
            ));
        }
        Ok(postprocess::predict(&out, &self.engine.spec, 5))
    }
}
