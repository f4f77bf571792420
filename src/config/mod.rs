//! Configuration: one TOML file with documented defaults (see `deploy/outpost.toml`), overridable by flags.
//!
//! Every key has a default, so `outpost run` with no file at all serves the bundled model on localhost. Unknown keys
//! are errors (a typo must not silently fall back to a default), and each check names the key and the fix.

mod validate;

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub agent: AgentConfig,
    /// `[model]` (one model, as before the repository) or `[[model]]` entries (several).
    pub model: Models,
    pub api: ApiConfig,
    pub workers: WorkersConfig,
    pub engine: EngineConfig,
    pub cache: CacheConfig,
    pub storage: StorageConfig,
    pub log: LogConfig,
    pub slots: SlotsConfig,
    pub repository: RepositoryConfig,
    pub probation: ProbationConfig,
    pub fleet: FleetConfig,
    pub forward: ForwardConfig,
    pub shadow: ShadowConfig,
}

/// Evaluation of a staged candidate model on live traffic (see `outpostctl rollout`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShadowConfig {
    /// Fraction of requests (0..1) that the candidate also runs on, after the live model has answered. Forwarded
    /// hard cases always run, so the cloud's label can say which model was right. A rollout may set it.
    pub fraction: f64,
    /// Fraction of inputs (0..1), sticky per input, that the candidate answers instead of the live model (A/B).
    /// A rollout may set it.
    pub split: f64,
    /// Most of one core that shadow runs may use: after a run of t, the shadow thread rests t * (1/share - 1).
    pub max_cpu_share: f64,
    /// Shadow runs waiting at most; beyond it a sample is skipped (and counted), never the answer delayed.
    pub queue: usize,
}

impl Default for ShadowConfig {
    fn default() -> Self {
        ShadowConfig {
            fraction: 0.1,
            split: 0.0,
            max_cpu_share: 0.25,
            queue: 64,
        }
    }
}

/// Which score decides that an input is hard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum HardnessScore {
    /// Hard when the top probability is below the threshold.
    #[default]
    MaxProb,
    /// Hard when top-1 minus top-2 probability is below the threshold.
    Margin,
    /// Hard when the entropy of the distribution (nats) is above the threshold.
    Entropy,
}

impl HardnessScore {
    pub fn parse(s: &str) -> Option<HardnessScore> {
        match s {
            "max-prob" => Some(HardnessScore::MaxProb),
            "margin" => Some(HardnessScore::Margin),
            "entropy" => Some(HardnessScore::Entropy),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            HardnessScore::MaxProb => "max-prob",
            HardnessScore::Margin => "margin",
            HardnessScore::Entropy => "entropy",
        }
    }

    /// How hard a prediction is on this score, as one number that grows with hardness (1 - top probability,
    /// 1 - margin, or the entropy): what the forward budget ranks and the drift alarm compares.
    pub fn hardness(self, confidence: f32, margin: f32, entropy: f32) -> f32 {
        match self {
            HardnessScore::MaxProb => 1.0 - confidence,
            HardnessScore::Margin => 1.0 - margin,
            HardnessScore::Entropy => entropy,
        }
    }

    /// The hardness above which a prediction is hard at `threshold` ([`HardnessScore::is_hard`] as a bar on
    /// [`HardnessScore::hardness`]).
    pub fn hardness_bar(self, threshold: f32) -> f32 {
        match self {
            HardnessScore::MaxProb | HardnessScore::Margin => 1.0 - threshold,
            HardnessScore::Entropy => threshold,
        }
    }

    /// Is a prediction with these scores hard at `threshold`?
    pub fn is_hard(self, threshold: f32, confidence: f32, margin: f32, entropy: f32) -> bool {
        match self {
            HardnessScore::MaxProb => confidence < threshold,
            HardnessScore::Margin => margin < threshold,
            HardnessScore::Entropy => entropy > threshold,
        }
    }
}

/// Hard cases to the cloud tier (needs `fleet.broker`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForwardConfig {
    pub enabled: bool,
    pub score: HardnessScore,
    /// Unset: 0.9 (max-prob), 0.4 (margin) or 0.5 (entropy); see the cascade table in BENCHMARKS.md.
    pub threshold: Option<f32>,
    /// How long a request waits for the cloud before answering from the edge (the case stays queued).
    pub deadline_ms: u64,
    /// Outbox bounds; beyond them the oldest cases are dropped and counted.
    pub outbox_max_entries: u64,
    pub outbox_max_bytes: u64,
    /// Queued cases resent per second after a reconnect (pacing, so a backlog does not flood the cloud).
    pub resend_per_s: u32,
    /// A sent case with no answer after this long is sent again (the cloud drops duplicates by id).
    pub retry_ms: u64,
    /// Public keys of the cloud workers (`outpostctl keygen` lines): only answers signed by one of them are
    /// believed. Unset: hard cases are not forwarded (the device answers them from the edge).
    pub cloud_keys: Option<PathBuf>,
    /// The forward budget of each model: at most this share (0..1) of its model runs over the window is forwarded
    /// (cache hits and resends are not runs); over it the hardest cases still go first. Unset: no share cap (a
    /// release's bundle or the `set` command may set one).
    pub max_fraction: Option<f32>,
    /// At most this many cases per second per model, averaged over the window. Unset: no rate cap.
    pub max_per_s: Option<f32>,
    /// The budget's sliding window (seconds).
    pub budget_window_s: u64,
    /// The drift alarm's window: the last this many model runs are compared with the release's baseline.
    pub drift_window: u64,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            enabled: true,
            score: HardnessScore::MaxProb,
            threshold: None,
            deadline_ms: 300,
            outbox_max_entries: 10_000,
            outbox_max_bytes: 64 * 1024 * 1024,
            resend_per_s: 50,
            retry_ms: 10_000,
            cloud_keys: None,
            max_fraction: None,
            max_per_s: None,
            budget_window_s: 60,
            drift_window: 500,
        }
    }
}

impl ForwardConfig {
    pub fn default_threshold(score: HardnessScore) -> f32 {
        match score {
            HardnessScore::MaxProb => 0.9,
            HardnessScore::Margin => 0.4,
            HardnessScore::Entropy => 0.5,
        }
    }
}

/// The link to the fleet through an MQTT broker. Without `broker` the agent runs alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// `mqtt://host:port` or `mqtts://host:port` (TLS). Unset: no fleet link.
    pub broker: Option<String>,
    /// This device's id in topics (`outpost/v1/device/<id>/...`). Default: the host name.
    pub device_id: String,
    /// A group whose commands and updates this device also takes (`outpost/v1/group/<group>/...`).
    pub group: Option<String>,
    /// CA certificate (PEM) that signs the broker's certificate, for `mqtts://`.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for brokers that require mutual TLS.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Operator keys that may sign commands and update offers. Default: `slots.trusted_keys`.
    pub command_keys: Option<PathBuf>,
    /// MQTT keep-alive; the broker publishes the last will (`offline`) within about 1.5x this after a crash.
    pub keep_alive_s: u64,
    /// Status is republished at least this often.
    pub heartbeat_s: u64,
    /// A requested chunk that has not arrived after this long is requested again.
    pub chunk_timeout_ms: u64,
    /// Chunks requested at once during an update.
    pub window: usize,
    /// Largest bundle an update offer may announce.
    pub max_bundle_bytes: u64,
    /// Largest MQTT packet accepted from the broker.
    pub max_packet_bytes: u32,
    /// Cap on update download speed (bytes/s), for metered or shared links; 0 = no cap.
    pub max_download_bytes_per_s: u64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            broker: None,
            device_id: default_device_id(),
            group: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            command_keys: None,
            keep_alive_s: 30,
            heartbeat_s: 30,
            chunk_timeout_ms: 3000,
            window: 8,
            max_bundle_bytes: 512 * 1024 * 1024,
            max_packet_bytes: 4 * 1024 * 1024,
            max_download_bytes_per_s: 0,
        }
    }
}

fn default_device_id() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "outpost".to_string())
}

/// A topic level: no wildcards, separators or control characters, so an id can never widen a subscription.
pub fn valid_topic_level(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// How a newly activated model is judged on live traffic before it is committed.
///
/// The trial ends with a commit after `requests` model runs or `seconds`, whichever comes first, unless a check
/// fails first: then the previous model comes back at once. Latency and confidence are compared with the previous
/// model's last runs on this device (its baseline); with fewer than `min_samples` runs on either side those two
/// checks wait, and with no baseline at all (a trial found at start-up) only errors and boot counting judge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbationConfig {
    /// Model runs on the new model after which it is committed.
    pub requests: u64,
    /// Seconds after which it is committed, however few requests came.
    pub seconds: u64,
    /// Failed runs tolerated; one more rolls back.
    pub max_errors: u64,
    /// Rolled back when its p99 run time exceeds the previous model's p99 times this...
    pub max_latency_ratio: f64,
    /// ...plus this many milliseconds (absorbs scheduler noise on sub-millisecond models).
    pub latency_slack_ms: f64,
    /// Rolled back when the Kolmogorov-Smirnov distance between its confidences and the previous model's exceeds
    /// this (0..1) while its mean confidence is lower.
    pub max_confidence_drift: f64,
    /// ...and its mean confidence is lower by more than this (an effect worth a rollback: fp32 and int8 builds of
    /// one model differ measurably but harmlessly).
    pub min_confidence_drop: f64,
    /// Runs needed on each side before latency and drift are judged.
    pub min_samples: u64,
}

impl Default for ProbationConfig {
    fn default() -> Self {
        ProbationConfig {
            requests: 500,
            seconds: 600,
            max_errors: 0,
            max_latency_ratio: 2.0,
            latency_slack_ms: 2.0,
            max_confidence_drift: 0.3,
            min_confidence_drop: 0.05,
            min_samples: 30,
        }
    }
}

/// The models a device holds (`<state_dir>/models/<name>/`, one folder per model).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RepositoryConfig {
    /// Most models the device holds: an install of one more is refused, the running models untouched.
    pub max_models: usize,
    /// The model `/v1/infer` serves and unaddressed commands act on: one of the configured models' names. Unset:
    /// the first configured model, else the built-in one.
    pub default: Option<String>,
    /// Most bytes of model files the engines may hold together: every model's live and other slot (its fallback
    /// or candidate), the configured and built-in models, and the install in flight. An install that would pass it
    /// is refused, the running models untouched. Engines take about 1-3 times their file in memory.
    pub max_engine_bytes: u64,
}

impl Default for RepositoryConfig {
    fn default() -> Self {
        RepositoryConfig {
            max_models: 8,
            default: None,
            max_engine_bytes: 512 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlotsConfig {
    /// File of trusted operator public keys (`outpostctl keygen` lines). Unset: no bundle can be installed.
    pub trusted_keys: Option<PathBuf>,
    /// Distinct trusted keys that must sign a bundle.
    pub threshold: usize,
    /// Starts allowed while a new model is on trial before it is rolled back (boot counting).
    pub max_boots: u32,
}

impl Default for SlotsConfig {
    fn default() -> Self {
        SlotsConfig {
            trusted_keys: None,
            threshold: 1,
            max_boots: 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Where the slots, cache and outbox live. Default: `$STATE_DIRECTORY` (set by systemd's `StateDirectory=`), else
    /// `./outpost-state`.
    pub state_dir: PathBuf,
}

/// The model files a device serves from its configuration (beside the releases bundles bring).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Models {
    /// `[model]`: one.
    One(ModelConfig),
    /// `[[model]]`: any number; their names are their specs'.
    Many(Vec<ModelConfig>),
}

impl Default for Models {
    fn default() -> Self {
        Models::One(ModelConfig::default())
    }
}

impl Models {
    /// The configured model files, in order (entries without a path left out).
    pub fn entries(&self) -> Vec<ModelConfig> {
        let all = match self {
            Models::One(m) => vec![m.clone()],
            Models::Many(v) => v.clone(),
        };
        all.into_iter().filter(|m| m.path.is_some()).collect()
    }

    /// Replaces the configured files (the `--model`/`--spec` flags).
    pub fn set(&mut self, entries: Vec<ModelConfig>) {
        *self = Models::Many(entries);
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// ONNX file to serve. Unset: the edge model built into the binary.
    pub path: Option<PathBuf>,
    /// Its spec; unset: `<model stem>.spec.json` beside it.
    pub spec: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Address of the local HTTP API. Port 0 picks a free port (written to `<state_dir>/api.addr`).
    pub listen: SocketAddr,
    /// Largest request body accepted (bytes); larger gets 413.
    pub max_body_bytes: usize,
    /// Largest decoded image accepted (pixels per side); larger gets 422.
    pub max_image_side: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkersConfig {
    /// Inference threads; 0 means one per core.
    pub count: usize,
    /// Requests waiting for a worker before new ones get 503.
    pub queue: usize,
}

/// How one model run uses the CPU.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Threads one model run may split its matrix products over (tract's multithreaded executor, shared by all
    /// workers). 0: the cores the workers leave free, at least 1 (so with one worker per core, 1). More than 1 pays
    /// on large models (MobileNet-sized) served by few workers; see BENCHMARKS.md.
    pub threads: usize,
    /// How real-int8 (QOperator) models run: `auto` (both forms timed at load on this device, the faster kept and
    /// remembered: [`crate::inference::int8`]), `native` (integer kernels) or `float` (the QDQ form).
    pub int8: crate::inference::Int8Mode,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    pub enabled: bool,
    /// Most entries kept; the oldest are evicted beyond it.
    pub max_entries: u64,
    /// Most bytes of keys and values kept; the oldest are evicted beyond it.
    pub max_bytes: u64,
}

/// The state dir's stores on a disk that fills (README, "A full disk").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Bytes kept allocated in `<state_dir>/reserve` and released when the disk is full, so that the records a
    /// command or a download depends on can still be written. Downloads and installs also leave this much (and
    /// 1 MiB more) free, and the cache and the outbox stop taking entries below it. 0: no reserve.
    pub reserve_bytes: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            reserve_bytes: 4 * 1024 * 1024,
        }
    }
}

impl StorageConfig {
    /// What [`crate::store::Storage::open`] needs.
    pub fn options(&self, cache: &CacheConfig) -> crate::store::StorageOptions {
        crate::store::StorageOptions {
            reserve_bytes: self.reserve_bytes,
            cache: cache
                .enabled
                .then_some((cache.max_entries, cache.max_bytes)),
        }
    }

    /// Free bytes a download or an install must leave beside itself.
    pub fn keep_free(&self) -> u64 {
        self.reserve_bytes + crate::store::layout::MIN_FREE
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `plain` or `json`, to stderr.
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `outpost=debug,info`. `RUST_LOG` wins when set.
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Plain,
    Json,
}

impl Default for AgentConfig {
    fn default() -> Self {
        let state_dir = std::env::var_os("STATE_DIRECTORY")
            .map(|v| {
                // systemd may list several directories separated by ':'; the first is ours.
                let v = v.to_string_lossy().into_owned();
                PathBuf::from(v.split(':').next().unwrap_or_default())
            })
            .unwrap_or_else(|| PathBuf::from("outpost-state"));
        AgentConfig { state_dir }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 4 * 1024 * 1024,
            max_image_side: 4096,
        }
    }
}

impl Default for WorkersConfig {
    fn default() -> Self {
        WorkersConfig {
            count: 0,
            queue: 64,
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            max_entries: 100_000,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Plain,
            level: "info".into(),
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Worker threads to start: the configured count, or one per core.
    pub fn worker_count(&self) -> usize {
        if self.workers.count == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            self.workers.count
        }
    }

    /// Threads of the shared intra-op executor: the configured count, or the cores the workers leave free.
    pub fn engine_threads(&self) -> usize {
        if self.engine.threads == 0 {
            let cores = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1);
            cores.saturating_sub(self.worker_count()).max(1)
        } else {
            self.engine.threads
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(Config::from_toml("").unwrap().api, ApiConfig::default());
    }

    #[test]
    fn the_example_config_parses_and_matches_the_defaults() {
        let text = include_str!("../../deploy/outpost.toml");
        let c = Config::from_toml(text).unwrap();
        let d = Config::default();
        assert_eq!(
            (c.api, c.workers, c.engine, c.cache, c.storage, c.log),
            (d.api, d.workers, d.engine, d.cache, d.storage, d.log)
        );
        assert_eq!((c.slots, c.probation), (d.slots, d.probation));
        let mut f = c.fleet.clone();
        f.device_id = d.fleet.device_id.clone(); // the example names one; the default is the host name
        assert_eq!(f, d.fleet);
        assert_eq!(c.forward, d.forward);
        assert_eq!(c.shadow, d.shadow);
    }

    #[test]
    fn engine_threads_default_to_the_cores_the_workers_leave() {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let c = Config::from_toml("[workers]\ncount = 1\n").unwrap();
        assert_eq!(c.engine_threads(), cores.saturating_sub(1).max(1));
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.engine_threads(), 1, "one worker per core leaves none");
        let c = Config::from_toml("[engine]\nthreads = 3\n").unwrap();
        assert_eq!(c.engine_threads(), 3);
        assert!(Config::from_toml("[engine]\nthread = 3\n").is_err());
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::from_toml("[workers]\nqueue = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("workers.queue"), "{e}");
        let e = Config::from_toml("[api]\nlisten = \"nowhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen"), "{e}");
        let e = Config::from_toml("[cache]\nmax_entires = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_entires"), "{e}");
    }
}
