//! The request service of the device: what a request does, whatever the protocol that carried it (decode, cache,
//! worker pool hand-off, probation, shadow, hard cases). `api` maps HTTP onto it; `fleet` and the agent's
//! controller drive its model changes. It imports neither of them.
//!
//! A protocol hands over a [`Request`] checked against the releases [`Service::admit`] took; [`Service::handle`]
//! runs it on those same releases through the one request path (`service/pipeline.rs`), whatever the model's kind
//! (what differs by kind: `service/kind.rs`), and gives back an [`Answer`] of that kind.

pub mod answer;
pub mod drift;
pub mod probation;
mod registry;
pub mod request;
mod service;
pub mod settings;
pub mod shadow;

pub use answer::{Answer, InferResponse, ModelInfo, TaskResponse, TensorsResponse};
pub use registry::Registry;
pub use request::{bytes_like, Admitted, Input, Request};
pub use service::{Answered, Handoff, Service, ServiceError};
