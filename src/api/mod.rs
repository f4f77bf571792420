//! The local HTTP API (JSON on loopback): a thin mapping from HTTP to [`Service`].
//!
//! Every failure is a JSON body `{"error": "...", "code": "..."}` with a 4xx that says what the caller should change,
//! or 503 with `Retry-After` when the agent is saturated or stopping.

use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;

use crate::inference::task::Overrides;
use crate::inference::InferenceError;
use crate::serve::{Answer, Input, Registry, Request, Service, ServiceError};
use crate::telemetry::Outcome;
use crate::wire::status::Source;
use crate::worker::PoolError;

pub mod v2;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    Client {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, retry) = match &self {
            ApiError::Client { status, code, .. } => (*status, *code, false),
            ApiError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy", true),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", false),
        };
        let body = Json(serde_json::json!({"error": self.to_string(), "code": code}));
        if retry {
            (status, [(header::RETRY_AFTER, "1")], body).into_response()
        } else {
            (status, body).into_response()
        }
    }
}

impl From<ServiceError> for ApiError {
    /// The status says who must act: the caller (4xx, by what is wrong with the input), or nobody (503: retry), or
    /// the agent (500).
    fn from(e: ServiceError) -> Self {
        let client = |status, code, message| ApiError::Client {
            status,
            code,
            message,
        };
        match e {
            ServiceError::BadInput(InferenceError::TooLarge { .. }) => {
                client(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
            }
            // Tensors that do not fit the model (or a request for another kind of model): the request is wrong.
            ServiceError::BadInput(
                InferenceError::Tensors(_)
                | InferenceError::InputShape { .. }
                | InferenceError::Task(_),
            ) => client(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
            // An encoded image that does not decode.
            ServiceError::BadInput(inner) => client(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad_image",
                format!("{inner}; send one PNG or JPEG image"),
            ),
            ServiceError::Busy(PoolError::Closed) => {
                ApiError::Busy("the agent is shutting down".into())
            }
            ServiceError::Busy(p) => ApiError::Busy(p.to_string()),
            e @ (ServiceError::Failed(_)
            | ServiceError::WorkerLost
            | ServiceError::Internal(_)
            | ServiceError::Panicked(_)) => ApiError::Internal(e.to_string()),
        }
    }
}

impl ApiError {
    /// How a request that ends in this error is counted.
    fn outcome(&self) -> Outcome {
        match self {
            ApiError::Client { .. } => Outcome::BadInput,
            ApiError::Busy(_) => Outcome::Busy,
            ApiError::Internal(_) => Outcome::Error,
        }
    }
}

/// Counts an inference request once, whichever protocol brought it and wherever it was refused (reading the body,
/// judging it against the model, running it), so `/metrics` and the status see every request.
async fn counted(
    service: &Service,
    handle: impl std::future::Future<Output = Result<(Response, Source), ApiError>>,
) -> Result<Response, ApiError> {
    let start = std::time::Instant::now();
    let result = handle.await;
    service.count(
        match &result {
            Ok((_, source)) => Ok(*source),
            Err(e) => Err(e.outcome()),
        },
        start,
    );
    result.map(|(r, _)| r)
}

pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/v1/infer", post(infer_default))
        .route("/v1/models/{name}/infer", post(infer_named))
        .route("/v1/status", get(status))
        // The Open Inference Protocol v2 (Triton, KServe, OpenVINO Model Server clients).
        .route("/v2", get(v2::server_metadata))
        .route("/v2/health/live", get(v2::live))
        .route("/v2/health/ready", get(v2::ready))
        .route("/v2/models/{name}", get(v2::model_metadata))
        .route("/v2/models/{name}/ready", get(v2::model_ready))
        .route("/v2/models/{name}/infer", post(v2::infer))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(v2::model_version_metadata),
        )
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(v2::model_version_ready),
        )
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(v2::infer_version),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        // The handler enforces the configured limit itself, answering in JSON.
        .layer(DefaultBodyLimit::disable())
        .with_state(registry)
}

/// The named model's service, or a 404 that lists the models served.
fn model(registry: &Registry, name: &str) -> Result<Arc<Service>, ApiError> {
    registry.get(name).ok_or_else(|| ApiError::Client {
        status: StatusCode::NOT_FOUND,
        code: "unknown_model",
        message: format!(
            "no model named {name:?} is served here (served: {})",
            registry.names().join(", ")
        ),
    })
}

const ACCEPTED: [&str; 4] = [
    "image/png",
    "image/jpeg",
    "image/jpg",
    "application/octet-stream",
];

/// `/v1/infer`: the default model.
async fn infer_default(
    State(registry): State<Arc<Registry>>,
    overrides: Result<Query<Overrides>, QueryRejection>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    infer(registry.default_service(), overrides, headers, body).await
}

/// `/v1/models/{name}/infer`.
async fn infer_named(
    State(registry): State<Arc<Registry>>,
    Path(name): Path<String>,
    overrides: Result<Query<Overrides>, QueryRejection>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    infer(model(&registry, &name)?, overrides, headers, body).await
}

/// A call's thresholds from the query string, or a JSON error that names the parameters there are.
fn query(q: Result<Query<Overrides>, QueryRejection>) -> Result<Overrides, ApiError> {
    q.map(|Query(o)| o).map_err(|e| ApiError::Client {
        status: StatusCode::BAD_REQUEST,
        code: "bad_request",
        message: format!(
            "{}: the query parameters are score_threshold and iou_threshold (0 to 1) and max_detections (1 to {})",
            e.body_text(),
            crate::inference::task::MAX_DETECTIONS
        ),
    })
}

/// A classifier answers with its label; a detector or scorer with its task's answer. Query parameters
/// (`score_threshold`, `iou_threshold`, `max_detections`) change a detector's thresholds for this call.
async fn infer(
    service: Arc<Service>,
    overrides: Result<Query<Overrides>, QueryRejection>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    counted(&service, async {
        let admitted = service.admit();
        // The body is read before the query is judged: a client still sending a large image gets the 400, not a
        // connection closed under it.
        let body = read_body(&service, &headers, body).await?;
        let request = Request {
            input: Input::Image(body),
            overrides: query(overrides)?,
            want_outputs: false,
        };
        let answered = service.handle(&admitted, request).await?;
        let source = answered.answer.source();
        let response = match answered.answer {
            Answer::Class(a) => Json(a).into_response(),
            Answer::Task(a) => Json(a).into_response(),
            Answer::Tensors(_) => {
                return Err(ApiError::Internal("a raw model answered an image".into()))
            }
        };
        Ok((response, source))
    })
    .await
}

/// Checks the content type and reads the body within the configured limit.
async fn read_body(
    service: &Service,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<axum::body::Bytes, ApiError> {
    let max = service.max_body_bytes();
    let too_large = |what: String| ApiError::Client {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        code: "too_large",
        message: format!(
            "{what}, more than the limit of {max} bytes (api.max_body_bytes): send a smaller image"
        ),
    };
    // Refuse from the announced length alone: the body is never read, so a 50 MB upload costs nothing.
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(len) = announced.filter(|&l| l > max as u64) {
        return Err(too_large(format!("the body is {len} bytes")));
    }
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct
            .to_str()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if !ACCEPTED.contains(&ct.as_str()) {
            return Err(ApiError::Client {
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                code: "unsupported_media_type",
                message: format!(
                    "content type `{ct}` is not accepted: send the image bytes as image/png, image/jpeg or application/octet-stream"
                ),
            });
        }
    }
    // Without a length (chunked), read at most the limit.
    let body = axum::body::to_bytes(body, max).await.map_err(|e| {
        if announced.is_none() {
            too_large("the chunked body grew past the limit".into())
        } else {
            ApiError::Client {
                status: StatusCode::BAD_REQUEST,
                code: "bad_body",
                message: format!("cannot read the request body: {e}"),
            }
        }
    })?;
    if body.is_empty() {
        return Err(ApiError::Client {
            status: StatusCode::BAD_REQUEST,
            code: "empty",
            message: "the request body is empty: send one PNG or JPEG image as the body".into(),
        });
    }
    Ok(body)
}

async fn status(State(registry): State<Arc<Registry>>) -> Json<crate::wire::status::LocalStatus> {
    Json(registry.status())
}

async fn metrics(State(registry): State<Arc<Registry>>) -> Response {
    // The clock's gauges are set when read, so that a scrape sees the clock of now.
    registry.clock().status();
    match crate::telemetry::prometheus() {
        Ok(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        Err(e) => ApiError::Internal(e.to_string()).into_response(),
    }
}
