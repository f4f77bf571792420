//! The reference cloud tier (`outpostctl cloud`): runs the bigger model on hard cases, answers through the broker,
//! and keeps every case it receives, with the edge and cloud labels, as a dataset for retraining.
//!
//! Workers join one MQTT 5 shared subscription, so any number of them split the load and each request reaches one
//! of them. Each answer is signed with the worker's key and bound to its case (id, device, input digest), since the
//! device believes nothing else. A case is taken only when the topic it came on, the device it names and the topic
//! it asks the answer to go to all name the same device: with the broker's ACL, a device cannot send cases, or have
//! answers sent, in another's name. A case that comes again (a device resent it after a reconnect) is answered again
//! but stored once: the dataset is keyed by case id.

use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;
use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use super::mqtt::{self, LinkEvent, Settings};
use super::{topics, FleetError};
use crate::bundle::keys::SigningKeyFile;
use crate::forward::{decode_case, Answer, Case};
use crate::inference::task::{Fit, Resize};
use crate::inference::{DecodeLimits, Engine, InferenceError};

/// The cloud model's answer to one case: a classifier's label, or a task model's answer with the case's thresholds.
fn answer_case(engine: &Engine, case: &Case) -> Result<Answer, InferenceError> {
    let limits = DecodeLimits::default();
    match (engine.task(), &case.task) {
        (Some(task), Some(t)) if !t.inputs.is_empty() => {
            // A scorer of tensors: the case's inputs as they are (the cloud model must take them).
            let (decoded, _) = engine.run_task_tensors(&t.inputs)?;
            Ok(Answer::to_task_case(
                case,
                engine.digest(),
                task,
                decoded.answer,
            ))
        }
        (Some(task), Some(t)) => {
            let (tensor, fit) = if case.tensor.is_empty() {
                engine.task_input_from_image(&case.image, &limits)?
            } else {
                let p = &engine.spec().preprocess;
                (
                    case.tensor.clone(),
                    Fit::new(Resize::Stretch, p.width, p.height, p.width, p.height),
                )
            };
            let decoded = engine.run_task(&tensor, &fit, &t.overrides)?;
            Ok(Answer::to_task_case(
                case,
                engine.digest(),
                task,
                decoded.answer,
            ))
        }
        (None, None) => {
            let t = if case.tensor.is_empty() {
                engine.tensor_from_image(&case.image, &limits)?
            } else {
                case.tensor.clone()
            };
            let p = engine.session()?.classify(&t)?;
            Ok(Answer::to_case(case, engine.digest(), &p))
        }
        _ => Err(InferenceError::Run(format!(
            "the cloud model {} is a {} and the case comes from a {}",
            engine.spec().name,
            engine.spec().kind().name(),
            case.task
                .as_ref()
                .map_or("classifier", |t| t.edge_answer.kind().name())
        ))),
    }
}

#[derive(Debug, Default)]
pub struct WorkerStats {
    pub answered: AtomicU64,
    pub stored: AtomicU64,
    pub duplicates: AtomicU64,
    pub refused: AtomicU64,
}

/// `<dataset>/cases.jsonl` (one line per case) and `<dataset>/<id>.img` (the image as sent).
pub fn dataset_ids(dataset: &std::path::Path) -> HashSet<String> {
    std::fs::read_to_string(dataset.join("cases.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["id"].as_str().map(str::to_string))
        .collect()
}

/// The cloud models a worker answers with: by the device model they stand behind, and one for any other model
/// (`outpostctl cloud --model PATH`, as before several models; cases of agents before the repository name none).
#[derive(Default)]
pub struct CloudModels {
    pub by_model: std::collections::BTreeMap<String, Arc<Engine>>,
    pub any: Option<Arc<Engine>>,
}

/// Why `outpostctl cloud --model` arguments do not give a worker its models.
#[derive(Debug, thiserror::Error)]
pub enum CloudModelError {
    #[error(transparent)]
    Name(#[from] crate::repo::RepoError),
    #[error("{path}: {source}")]
    Load {
        path: String,
        source: InferenceError,
    },
    #[error("no cloud model: pass --model PATH or --model NAME=PATH")]
    None,
}

impl CloudModels {
    /// The models of `outpostctl cloud --model` arguments: `PATH` answers any model's cases (with `spec`, else the
    /// spec beside it), `NAME=PATH` the cases of the device model `NAME`, and `NAME=PATH:SPEC.json` names its spec.
    /// Returns them with the model a worker reports it answers with (the `PATH` one, else the first by name).
    pub fn from_args(
        args: &[String],
        spec: Option<&std::path::Path>,
    ) -> Result<(CloudModels, Arc<Engine>), CloudModelError> {
        use std::path::Path;
        let load = |path: &str, spec: Option<&Path>| {
            Engine::load_files(Path::new(path), spec)
                .map(Arc::new)
                .map_err(|source| CloudModelError::Load {
                    path: path.to_string(),
                    source,
                })
        };
        let mut models = CloudModels::default();
        for m in args {
            match m.split_once('=') {
                Some((name, path)) => {
                    crate::repo::check_name(name)?;
                    let (path, spec) = match path.rsplit_once(':') {
                        Some((p, s)) if s.ends_with(".json") => (p, Some(Path::new(s))),
                        _ => (path, None),
                    };
                    models.by_model.insert(name.to_string(), load(path, spec)?);
                }
                None => models.any = Some(load(m, spec)?),
            }
        }
        let shown = models
            .any
            .clone()
            .or_else(|| models.by_model.values().next().cloned())
            .ok_or(CloudModelError::None)?;
        Ok((models, shown))
    }

    pub fn one(engine: Arc<Engine>) -> CloudModels {
        CloudModels {
            by_model: Default::default(),
            any: Some(engine),
        }
    }

    fn for_case(&self, model: &str) -> Option<Arc<Engine>> {
        self.by_model.get(model).or(self.any.as_ref()).cloned()
    }
}

pub async fn run_worker(
    settings: Settings,
    models: Arc<CloudModels>,
    key: Arc<SigningKeyFile>,
    dataset: PathBuf,
    stats: Arc<WorkerStats>,
    shutdown: CancellationToken,
) -> Result<(), FleetError> {
    std::fs::create_dir_all(&dataset).map_err(|e| FleetError::Io {
        path: dataset.display().to_string(),
        message: e.to_string(),
    })?;
    let mut seen = dataset_ids(&dataset);
    let (client, mut events) = mqtt::connect(&settings, shutdown.clone())?;
    let mut connected_once = false;
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => break,
            ev = events.recv() => match ev { Some(ev) => ev, None => break },
        };
        let p = match ev {
            LinkEvent::Connected { session_present } => {
                connected_once = true;
                if !session_present {
                    client
                        .subscribe(topics::CLOUD_SHARED, QoS::AtLeastOnce)
                        .await?;
                } else {
                    tracing::info!("cloud worker ready");
                }
                continue;
            }
            // Said once the broker acknowledged the subscription: from then on a case sent reaches this worker.
            LinkEvent::Subscribed => {
                tracing::info!("cloud worker ready");
                continue;
            }
            LinkEvent::Disconnected { error, .. } => {
                if !connected_once {
                    return Err(FleetError::Connect(error));
                }
                tracing::warn!(%error, "lost the broker; reconnecting");
                continue;
            }
            LinkEvent::Message(p) => p,
        };
        let props = p.properties.clone().unwrap_or_default();
        let (Some(reply_to), Some(corr)) =
            (props.response_topic.clone(), props.correlation_data.clone())
        else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let case = match decode_case(&p.payload) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "refused a case");
                stats.refused.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let topic = mqtt::topic_of(&p);
        if topics::cloud_request_device(&topic) != Some(case.device.as_str())
            || reply_to != topics::cloud_reply(&case.device)
        {
            tracing::warn!(%topic, %reply_to, device = %case.device, "refused a case sent in another device's name");
            stats.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let Some(engine) = models.for_case(&case.model) else {
            tracing::warn!(model = %case.model, id = %case.id, "no cloud model stands behind this device model; the edge answers for it");
            stats.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let e = engine.clone();
        let c = case.clone();
        // An image is preprocessed by the cloud model's own spec; a tensor case (the Open Inference Protocol) is the
        // edge model's input tensor, which the cloud model must take as is (its input length is checked by the run).
        // A task model's case is answered by the cloud's model of the same task, with the call's thresholds.
        let ran = crate::blocking::run(move || answer_case(&e, &c)).await;
        let answer = match ran {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, id = %case.id, "the cloud model cannot answer this case");
                stats.refused.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let props = PublishProperties {
            correlation_data: Some(corr),
            content_type: Some(answer.content_type().into()),
            ..Default::default()
        };
        let bytes = answer.sign(&key);
        client
            .publish_with_properties(reply_to, QoS::AtLeastOnce, false, bytes, props)
            .await?;
        stats.answered.fetch_add(1, Ordering::Relaxed);
        if !seen.insert(case.id.clone()) {
            stats.duplicates.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let line = serde_json::json!({
            "id": case.id,
            "device": case.device,
            "model": case.model,
            "task": case.task.as_ref().map(|t| t.edge_answer.kind()),
            "edge_label": case.edge_label,
            "edge_confidence": case.edge_confidence,
            "edge_model": case.edge_model,
            "cloud_label": answer.label,
            "cloud_confidence": answer.confidence,
            "image": format!("{}.img", case.id),
            "input": if case.tensor.is_empty() { "image" } else { "tensor (little-endian f32)" },
            "created_unix": case.created_unix,
        });
        let ds = dataset.clone();
        let stored = crate::blocking::run(move || -> std::io::Result<()> {
            let input: Vec<u8> = if case.tensor.is_empty() {
                case.image.clone()
            } else {
                case.tensor.iter().flat_map(|x| x.to_le_bytes()).collect()
            };
            std::fs::write(ds.join(format!("{}.img", case.id)), &input)?;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(ds.join("cases.jsonl"))?;
            writeln!(f, "{line}")?;
            f.sync_data()
        })
        .await;
        match stored {
            Ok(()) => {
                stats.stored.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::error!(error = %e, "cannot store a case in the dataset"),
        }
    }
    let _ = client.disconnect().await;
    Ok(())
}
