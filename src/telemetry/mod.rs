//! Logs, metrics and service-manager notifications.
//!
//! Metrics go through the `metrics` facade and are rendered in Prometheus text format by
//! `metrics-exporter-prometheus`; the few numbers that `/v1/status` and fleet telemetry also show are kept in atomics
//! here, because a recorder cannot be read back.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use crate::config::LogFormat;
use crate::wire::status::{Counts, Latency};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("bad log filter `{0}`: {1} (try \"info\")")]
    Filter(String, String),
    #[error("cannot install the metrics recorder: {0}")]
    Metrics(String),
}

/// Logs to stderr, plain or JSON. `RUST_LOG` wins over `level`. Filters are `level` or `target=level` lists
/// (`outpost=debug,info`): tracing-subscriber's `Targets`, which needs no regex engine in the device binary.
pub fn init_tracing(format: LogFormat, level: &str) -> Result<(), TelemetryError> {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let text = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => v,
        _ => level.to_string(),
    };
    let filter: Targets =
        text.trim()
            .parse()
            .map_err(|e: tracing_subscriber::filter::ParseError| {
                TelemetryError::Filter(text.clone(), e.to_string())
            })?;
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry();
    let _ = match format {
        LogFormat::Plain => registry.with(layer.with_filter(filter)).try_init(),
        LogFormat::Json => registry.with(layer.json().with_filter(filter)).try_init(),
    };
    Ok(())
}

/// Buckets for confidences (top probability, 0..1).
const CONFIDENCE_BUCKETS: [f64; 10] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95];
pub const REQUEST_SECONDS: &str = "outpost_request_duration_seconds";
pub const REQUESTS: &str = "outpost_requests_total";
pub const CACHE_HITS: &str = "outpost_cache_hits_total";
pub const CACHE_MISSES: &str = "outpost_cache_misses_total";
pub const CACHE_EVICTIONS: &str = "outpost_cache_evictions_total";
pub const QUEUE_DEPTH: &str = "outpost_queue_depth";
pub const MODEL_INFO: &str = "outpost_model_info";
pub const SLOT_TRANSITIONS: &str = "outpost_slot_transitions_total";
pub const TRIAL_ACTIVE: &str = "outpost_trial_active";
pub const COMMANDS: &str = "outpost_fleet_commands_total";
pub const FORWARDED: &str = "outpost_forwarded_total";
/// Hard cases the forward budget kept on the device (answered by the edge), by model.
pub const FORWARD_SKIPPED: &str = "outpost_forward_skipped_total";
/// 1 while a model's drift alarm is raised, by model.
pub const DRIFT: &str = "outpost_drift";
/// The drift alarm's last KS distance and the forward rate the policy wants, by model.
pub const DRIFT_KS: &str = "outpost_drift_ks";
pub const DRIFT_FORWARD_RATE: &str = "outpost_drift_forward_rate";
/// Answers from the cloud tier by `result`: `accepted`, or why they were refused (forged, unknown_key, ...).
pub const CLOUD_ANSWERS: &str = "outpost_cloud_answers_total";
/// The system clock and the time floor (Unix seconds), and the clock's health (1 for the current one, by `health`).
pub const CLOCK_UNIX: &str = "outpost_clock_unix_seconds";
/// The version of the trust document in force (0: none usable), and its root key ids (`keys`, comma-separated; 1).
pub const TRUST_VERSION: &str = "outpost_trust_version";
pub const TRUST_ROOT: &str = "outpost_trust_root";
pub const CLOCK_FLOOR_UNIX: &str = "outpost_clock_floor_unix_seconds";
pub const CLOCK_HEALTH: &str = "outpost_clock_health";
/// Writes of the time floor that failed (the floor held in memory).
pub const CLOCK_FLOOR_WRITE_FAILURES: &str = "outpost_clock_floor_write_failures_total";
pub const OUTBOX_DROPPED: &str = "outpost_outbox_dropped_total";
pub const OUTBOX_PENDING: &str = "outpost_outbox_pending";
/// Shadow runs of the staged candidate, by whether it agreed with the live model.
pub const SHADOW_RUNS: &str = "outpost_shadow_runs_total";
/// Shadow samples skipped because the shadow thread's CPU share was used up.
pub const SHADOW_DROPPED: &str = "outpost_shadow_dropped_total";
pub const SHADOW_CONFIDENCE: &str = "outpost_shadow_confidence";
pub const SHADOW_RUN_SECONDS: &str = "outpost_shadow_run_seconds";
/// Forwarded hard cases where the live (`model="active"`) or the candidate model agreed with the cloud's label.
pub const SHADOW_CLOUD_AGREED: &str = "outpost_shadow_cloud_agreed_total";
/// A/B split: requests, confidence and run time per arm (`arm="active"|"candidate"`).
pub const AB_REQUESTS: &str = "outpost_ab_requests_total";
pub const AB_CONFIDENCE: &str = "outpost_ab_confidence";
pub const AB_RUN_SECONDS: &str = "outpost_ab_run_seconds";
/// 1 while a candidate model is staged.
pub const CANDIDATE_ACTIVE: &str = "outpost_candidate_staged";

/// The process-wide Prometheus recorder (installed once; later calls get the same handle).
pub fn prometheus() -> Result<PrometheusHandle, TelemetryError> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let buckets = [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(REQUEST_SECONDS.into()), &buckets)
        .map_err(|e| TelemetryError::Metrics(e.to_string()))?
        .set_buckets_for_metric(Matcher::Full(SHADOW_RUN_SECONDS.into()), &buckets)
        .map_err(|e| TelemetryError::Metrics(e.to_string()))?
        .set_buckets_for_metric(Matcher::Full(AB_RUN_SECONDS.into()), &buckets)
        .map_err(|e| TelemetryError::Metrics(e.to_string()))?
        .set_buckets_for_metric(Matcher::Full(SHADOW_CONFIDENCE.into()), &CONFIDENCE_BUCKETS)
        .map_err(|e| TelemetryError::Metrics(e.to_string()))?
        .set_buckets_for_metric(Matcher::Full(AB_CONFIDENCE.into()), &CONFIDENCE_BUCKETS)
        .map_err(|e| TelemetryError::Metrics(e.to_string()))?
        .install_recorder()
        .map_err(|e| TelemetryError::Metrics(e.to_string()))?;
    metrics::describe_histogram!(
        REQUEST_SECONDS,
        metrics::Unit::Seconds,
        "Time to answer POST /v1/infer"
    );
    metrics::describe_counter!(REQUESTS, "Inference requests by outcome");
    metrics::describe_counter!(
        CLOUD_ANSWERS,
        "Cloud answers by result: accepted, or the reason they were refused"
    );
    metrics::describe_counter!(CACHE_HITS, "Requests answered from the result cache");
    metrics::describe_counter!(CACHE_MISSES, "Requests that ran a model");
    metrics::describe_counter!(CACHE_EVICTIONS, "Cache entries evicted by the size bounds");
    metrics::describe_gauge!(QUEUE_DEPTH, "Requests waiting for an inference worker");
    metrics::describe_gauge!(MODEL_INFO, "The model being served (labels), value 1");
    metrics::describe_counter!(
        SLOT_TRANSITIONS,
        "Model slot transitions (trial, commit, rollback) by cause"
    );
    metrics::describe_gauge!(TRIAL_ACTIVE, "1 while a new model is on probation");
    metrics::describe_counter!(
        COMMANDS,
        "Fleet commands by name and whether they succeeded"
    );
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// Counters that status reports read back, of one model (its name labels the metrics).
#[derive(Debug, Default)]
pub struct Counters {
    model: String,
    pub requests: AtomicU64,
    pub ok: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub bad_input: AtomicU64,
    pub busy: AtomicU64,
    pub errors: AtomicU64,
    /// The last request latencies (µs), for the p50/p99 that status reports.
    recent: std::sync::Mutex<std::collections::VecDeque<u64>>,
}

/// How a request ended, for the counters and the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Edge,
    Cache,
    BadInput,
    Busy,
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Edge => "edge",
            Outcome::Cache => "cache",
            Outcome::BadInput => "bad_input",
            Outcome::Busy => "busy",
            Outcome::Error => "error",
        }
    }
}

impl Counters {
    pub fn for_model(model: &str) -> Counters {
        Counters {
            model: model.to_string(),
            ..Counters::default()
        }
    }

    /// p50 and p99 of the last 1024 requests (µs).
    pub fn latency_percentiles(&self) -> Latency {
        let v: Vec<u64> = self
            .recent
            .lock()
            .map(|r| r.iter().copied().collect())
            .unwrap_or_default();
        Latency {
            p50: percentile(&v, 0.5),
            p99: percentile(&v, 0.99),
            n: v.len() as u64,
        }
    }

    /// Hits over lookups since start.
    pub fn cache_hit_rate(&self) -> f64 {
        let h = self.cache_hits.load(Ordering::Relaxed) as f64;
        let m = self.cache_misses.load(Ordering::Relaxed) as f64;
        if h + m == 0.0 {
            0.0
        } else {
            h / (h + m)
        }
    }

    pub fn record(&self, outcome: Outcome, elapsed: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if matches!(outcome, Outcome::Edge | Outcome::Cache) {
            if let Ok(mut r) = self.recent.lock() {
                if r.len() == 1024 {
                    r.pop_front();
                }
                r.push_back(elapsed.as_micros().min(u64::MAX as u128) as u64);
            }
        }
        let c = match outcome {
            Outcome::Edge => {
                self.cache_misses.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(CACHE_MISSES, "model" => self.model.clone()).increment(1);
                &self.ok
            }
            Outcome::Cache => {
                self.cache_hits.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(CACHE_HITS, "model" => self.model.clone()).increment(1);
                &self.ok
            }
            Outcome::BadInput => &self.bad_input,
            Outcome::Busy => &self.busy,
            Outcome::Error => &self.errors,
        };
        c.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(REQUESTS, "model" => self.model.clone(), "outcome" => outcome.as_str())
            .increment(1);
        if matches!(outcome, Outcome::Edge | Outcome::Cache) {
            metrics::histogram!(REQUEST_SECONDS, "model" => self.model.clone())
                .record(elapsed.as_secs_f64());
        }
    }

    pub fn snapshot(&self) -> Counts {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            requests: g(&self.requests),
            ok: g(&self.ok),
            cache_hits: g(&self.cache_hits),
            cache_misses: g(&self.cache_misses),
            bad_input: g(&self.bad_input),
            busy: g(&self.busy),
            errors: g(&self.errors),
        }
    }
}

/// Nearest-rank percentile (q in 0..=1) of unsorted values.
pub fn percentile(values: &[u64], q: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// systemd notifications; each is a no-op outside systemd (no `NOTIFY_SOCKET`).
pub mod notify {
    use std::time::Duration;

    pub fn ready() {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    }

    pub fn stopping() {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    }

    pub fn watchdog() {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
    }

    /// Half the watchdog period systemd asked for, when it asked (`WATCHDOG_USEC`). As in libsystemd's
    /// `sd_watchdog_enabled`, `WATCHDOG_PID` restricts it to one process when set; the sd-notify crate instead
    /// requires it, which would silently disable the watchdog under managers that only set `WATCHDOG_USEC`.
    pub fn watchdog_interval() -> Option<Duration> {
        let usec: u64 = std::env::var("WATCHDOG_USEC")
            .ok()?
            .parse()
            .ok()
            .filter(|&u| u > 0)?;
        if let Ok(pid) = std::env::var("WATCHDOG_PID") {
            if pid.parse::<u32>().ok() != Some(std::process::id()) {
                return None;
            }
        }
        Some(Duration::from_micros(usec / 2))
    }
}
