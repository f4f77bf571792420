//! The request service of the device: what a request does, whatever the protocol that carried it (decode, cache,
//! worker pool hand-off, probation, shadow, hard cases). `api` maps HTTP onto it; `fleet` and the agent's
//! controller drive its model changes. It imports neither of them.

pub mod drift;
pub mod probation;
mod registry;
mod service;
pub mod shadow;

pub use registry::Registry;
pub use service::{
    bytes_like, InferResponse, ModelInfo, Service, ServiceError, TaskRequestInput, TaskResponse,
    TensorsResponse,
};
