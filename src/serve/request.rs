//! What a request brings to the service, whatever protocol carried it, and the releases it is judged by.
//!
//! A protocol reads its wire format into one [`Request`]; the releases it checks that request against are the ones
//! [`Admitted`] took when the request came in, and the service runs it on those same releases. A model swap that
//! lands in between changes nothing for a request already admitted: it is judged and run by one release.

use std::sync::Arc;

use crate::inference::task::Overrides;
use crate::inference::{Engine, TensorValue};

/// The body type the service takes (re-exported so the API layer and tests need not name axum's).
pub mod bytes_like {
    pub use axum::body::Bytes;
}

/// The one input of a request, as read off the wire (its fit to the model is checked by the service).
#[derive(Debug, Clone)]
pub enum Input {
    /// An encoded image (PNG or JPEG): every image model decodes it its own way.
    Image(bytes_like::Bytes),
    /// One FP32 tensor already preprocessed for an image model's input (a detector's boxes are then in the model's
    /// input pixels).
    Tensor(Vec<f32>),
    /// A raw tensor model's inputs, in its spec's order.
    Tensors(Vec<TensorValue>),
}

impl Input {
    /// The encoded image, if that is what came: what a model of another preprocessing decodes again.
    pub fn image(&self) -> Option<&bytes_like::Bytes> {
        match self {
            Input::Image(b) => Some(b),
            _ => None,
        }
    }
}

/// One request to a model.
#[derive(Debug, Clone)]
pub struct Request {
    pub input: Input,
    /// A detector's thresholds for this call (refused for a model without them).
    pub overrides: Overrides,
    /// The answer must carry the model's outputs (the Open Inference Protocol): a cached answer without them does
    /// not serve it, and the model runs.
    pub want_outputs: bool,
}

impl Request {
    /// A request of one input, with no overrides and no outputs asked for (what `/v1` sends).
    pub fn of(input: Input) -> Request {
        Request {
            input,
            overrides: Overrides::default(),
            want_outputs: false,
        }
    }
}

/// The releases a request is judged and run by, read once when it is admitted: the serving one, the one that
/// served before it while it is on trial (it answers again a run that fails), and a staged candidate (shadow, A/B).
#[derive(Clone)]
pub struct Admitted {
    pub(crate) engine: Arc<Engine>,
    pub(crate) fallback: Option<Arc<Engine>>,
    pub(crate) candidate: Option<Arc<Engine>>,
}

impl Admitted {
    /// The serving release the request is checked against and runs on.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The staged candidate, if any (the Open Inference Protocol names its version).
    pub fn candidate(&self) -> Option<&Arc<Engine>> {
        self.candidate.as_ref()
    }
}
