//! The configuration's checks, one function per section: a value out of range is refused at start with the key
//! and what it takes, before anything runs on it.

use super::{Config, ConfigError, FleetConfig, ForwardConfig, ProbationConfig, ShadowConfig};

impl Config {
    /// Checks every section; the first value out of range is the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        limits(self)?;
        probation(&self.probation)?;
        shadow(&self.shadow)?;
        fleet(&self.fleet)?;
        forward(&self.forward)?;
        if self.log.level.trim().is_empty() {
            return Err(invalid("log.level", "must not be empty; try \"info\""));
        }
        Ok(())
    }
}

/// A refusal of one key, in words that say what it takes.
fn invalid(key: &'static str, message: &str) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.to_string(),
    }
}

/// What the device may hold and take: models, engines, state, request bodies, workers, the cache.
fn limits(c: &Config) -> Result<(), ConfigError> {
    if c.repository.max_engine_bytes == 0 {
        return Err(invalid(
            "repository.max_engine_bytes",
            "must be above 0 (bytes of model files the engines may hold)",
        ));
    }
    if !(1..=256).contains(&c.repository.max_models) {
        return Err(invalid(
            "repository.max_models",
            "must be 1 to 256 (models each take their own slots, memory and topics)",
        ));
    }
    if c.agent.state_dir.as_os_str().is_empty() {
        return Err(invalid(
            "agent.state_dir",
            "must not be empty; set a writable directory",
        ));
    }
    if c.api.max_body_bytes < 1024 || c.api.max_body_bytes > 256 * 1024 * 1024 {
        return Err(invalid(
            "api.max_body_bytes",
            "must be between 1024 and 268435456 (256 MiB)",
        ));
    }
    if !(16..=16384).contains(&c.api.max_image_side) {
        return Err(invalid(
            "api.max_image_side",
            "must be between 16 and 16384 pixels",
        ));
    }
    if c.workers.count > 256 {
        return Err(invalid(
            "workers.count",
            "must be at most 256 (0 = one per core)",
        ));
    }
    if c.workers.queue == 0 || c.workers.queue > 100_000 {
        return Err(invalid("workers.queue", "must be between 1 and 100000"));
    }
    if c.cache.enabled && (c.cache.max_entries == 0 || c.cache.max_bytes < 4096) {
        return Err(invalid(
            "cache.max_entries",
            "cache.max_entries must be at least 1 and cache.max_bytes at least 4096 (or set cache.enabled = false)",
        ));
    }
    Ok(())
}

/// A trial's length and its bars.
fn probation(p: &ProbationConfig) -> Result<(), ConfigError> {
    if p.requests == 0 && p.seconds == 0 {
        return Err(invalid(
            "probation.requests",
            "probation.requests and probation.seconds cannot both be 0",
        ));
    }
    if !p.max_latency_ratio.is_finite() || p.max_latency_ratio < 1.0 {
        return Err(invalid(
            "probation.max_latency_ratio",
            "must be at least 1.0",
        ));
    }
    if !p.latency_slack_ms.is_finite() || p.latency_slack_ms < 0.0 {
        return Err(invalid("probation.latency_slack_ms", "must be 0 or more"));
    }
    if !(0.0..=1.0).contains(&p.max_confidence_drift) {
        return Err(invalid(
            "probation.max_confidence_drift",
            "must be between 0 and 1 (1 disables the check)",
        ));
    }
    if !(0.0..=1.0).contains(&p.min_confidence_drop) {
        return Err(invalid(
            "probation.min_confidence_drop",
            "must be between 0 and 1",
        ));
    }
    if p.min_samples == 0 || p.min_samples > 100_000 {
        return Err(invalid(
            "probation.min_samples",
            "must be between 1 and 100000",
        ));
    }
    Ok(())
}

/// The candidate's share of requests and of the CPU.
fn shadow(sh: &ShadowConfig) -> Result<(), ConfigError> {
    for (key, v) in [("shadow.fraction", sh.fraction), ("shadow.split", sh.split)] {
        if !(0.0..=1.0).contains(&v) {
            return Err(invalid(key, "must be between 0 and 1"));
        }
    }
    if !(sh.max_cpu_share > 0.0 && sh.max_cpu_share <= 1.0) {
        return Err(invalid(
            "shadow.max_cpu_share",
            "must be above 0 and at most 1",
        ));
    }
    if sh.queue == 0 || sh.queue > 100_000 {
        return Err(invalid("shadow.queue", "must be between 1 and 100000"));
    }
    Ok(())
}

/// The link: identity, broker, keep-alive, downloads.
fn fleet(f: &FleetConfig) -> Result<(), ConfigError> {
    if !super::valid_topic_level(&f.device_id) {
        return Err(invalid(
            "fleet.device_id",
            "must be 1-64 characters of letters, digits, '-', '_' or '.'",
        ));
    }
    if f.group
        .as_deref()
        .is_some_and(|g| !super::valid_topic_level(g))
    {
        return Err(invalid(
            "fleet.group",
            "must be 1-64 characters of letters, digits, '-', '_' or '.'",
        ));
    }
    if let Some(b) = &f.broker {
        if !(b.starts_with("mqtt://") || b.starts_with("mqtts://")) {
            return Err(invalid(
                "fleet.broker",
                "must look like mqtt://host:port or mqtts://host:port",
            ));
        }
    }
    if f.cert_file.is_some() != f.key_file.is_some() {
        return Err(invalid(
            "fleet.cert_file",
            "fleet.cert_file and fleet.key_file go together (mutual TLS needs both)",
        ));
    }
    if !(5..=3600).contains(&f.keep_alive_s) || !(1..=86_400).contains(&f.heartbeat_s) {
        return Err(invalid(
            "fleet.keep_alive_s",
            "keep_alive_s must be 5..3600 and heartbeat_s 1..86400",
        ));
    }
    if f.window == 0 || f.window > 256 || f.chunk_timeout_ms < 50 {
        return Err(invalid(
            "fleet.window",
            "window must be 1..256 and chunk_timeout_ms at least 50",
        ));
    }
    if f.max_packet_bytes < 64 * 1024 {
        return Err(invalid(
            "fleet.max_packet_bytes",
            "must be at least 65536 (a chunk and its envelope must fit)",
        ));
    }
    Ok(())
}

/// Hard cases: threshold, deadline, budget, drift window, outbox.
fn forward(w: &ForwardConfig) -> Result<(), ConfigError> {
    if w.threshold
        .is_some_and(|t| !t.is_finite() || !(0.0..=100.0).contains(&t))
    {
        return Err(invalid(
            "forward.threshold",
            "must be a number from 0 to 100",
        ));
    }
    if !(1..=60_000).contains(&w.deadline_ms) {
        return Err(invalid("forward.deadline_ms", "must be 1..60000"));
    }
    if w.max_fraction.is_some_and(|f| !(0.0..=1.0).contains(&f)) {
        return Err(invalid(
            "forward.max_fraction",
            "must be a fraction from 0 to 1",
        ));
    }
    if w.max_per_s.is_some_and(|r| !r.is_finite() || r < 0.0) {
        return Err(invalid(
            "forward.max_per_s",
            "must be a number of cases per second, 0 or more",
        ));
    }
    if !(1..=86_400).contains(&w.budget_window_s) {
        return Err(invalid(
            "forward.budget_window_s",
            "must be 1..86400 seconds",
        ));
    }
    if !(50..=100_000).contains(&w.drift_window) {
        return Err(invalid(
            "forward.drift_window",
            "must be 50..100000 model runs",
        ));
    }
    if w.outbox_max_entries == 0
        || w.outbox_max_bytes < 4096
        || w.resend_per_s == 0
        || w.retry_ms < 100
    {
        return Err(invalid(
            "forward.outbox_max_entries",
            "outbox_max_entries and resend_per_s must be at least 1, outbox_max_bytes at least 4096, retry_ms at least 100",
        ));
    }
    Ok(())
}
