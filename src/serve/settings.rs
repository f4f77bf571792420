//! The settings the fleet's `set` command changes at run time, per model: a closed set of keys, each value parsed
//! and checked once, when it is set, so a request reads a number and never parses a string.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// A setting `set` may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SettingKey {
    /// `hardness.threshold`: the forward threshold, over the configuration's and the release's.
    HardnessThreshold,
    /// `telemetry.heartbeat_s`: how often the device publishes its status unasked.
    HeartbeatS,
    /// `shadow.fraction`: the share of requests a staged candidate runs in shadow.
    ShadowFraction,
    /// `shadow.split`: the share of inputs a staged candidate answers (A/B).
    ShadowSplit,
    /// `forward.max_fraction`: the forward budget's share of runs.
    ForwardMaxFraction,
    /// `forward.max_per_s`: the forward budget's cases per second.
    ForwardMaxPerS,
}

impl SettingKey {
    pub const ALL: [SettingKey; 6] = [
        SettingKey::HardnessThreshold,
        SettingKey::HeartbeatS,
        SettingKey::ShadowFraction,
        SettingKey::ShadowSplit,
        SettingKey::ForwardMaxFraction,
        SettingKey::ForwardMaxPerS,
    ];

    /// Its name in commands, records and the status.
    pub fn name(self) -> &'static str {
        match self {
            SettingKey::HardnessThreshold => "hardness.threshold",
            SettingKey::HeartbeatS => "telemetry.heartbeat_s",
            SettingKey::ShadowFraction => "shadow.fraction",
            SettingKey::ShadowSplit => "shadow.split",
            SettingKey::ForwardMaxFraction => "forward.max_fraction",
            SettingKey::ForwardMaxPerS => "forward.max_per_s",
        }
    }

    pub fn parse(name: &str) -> Option<SettingKey> {
        SettingKey::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The values it takes, in the words of a refusal.
    fn takes(self) -> &'static str {
        match self {
            SettingKey::HardnessThreshold => "a number from 0 to 100",
            SettingKey::HeartbeatS => "whole seconds from 1 to 86400",
            SettingKey::ShadowFraction
            | SettingKey::ShadowSplit
            | SettingKey::ForwardMaxFraction => "a fraction from 0 to 1",
            SettingKey::ForwardMaxPerS => "a number of cases per second, 0 or more",
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SettingError {
    #[error("{key} cannot be set remotely (allowed: {})", SettingKey::ALL.map(SettingKey::name).join(", "))]
    Unknown { key: String },
    #[error("{} takes {}, not {value:?}", key.name(), key.takes())]
    Invalid { key: SettingKey, value: String },
}

/// A setting's value, checked when it was set.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    pub key: SettingKey,
    pub value: f64,
    /// As it was given (what the status shows).
    text: String,
}

impl Setting {
    /// Parses and checks `value` for `key`.
    pub fn parse(key: &str, value: &str) -> Result<Setting, SettingError> {
        let k = SettingKey::parse(key).ok_or_else(|| SettingError::Unknown {
            key: key.to_string(),
        })?;
        let fraction = |v: f64| (0.0..=1.0).contains(&v);
        let parsed = match k {
            SettingKey::HeartbeatS => value
                .parse::<u64>()
                .ok()
                .filter(|v| (1..=86_400).contains(v))
                .map(|v| v as f64),
            SettingKey::HardnessThreshold => value
                .parse::<f32>()
                .ok()
                .filter(|v| v.is_finite() && (0.0..=100.0).contains(v))
                .map(f64::from),
            SettingKey::ForwardMaxPerS => value
                .parse::<f32>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .map(f64::from),
            SettingKey::ShadowFraction
            | SettingKey::ShadowSplit
            | SettingKey::ForwardMaxFraction => value.parse::<f64>().ok().filter(|v| fraction(*v)),
        };
        let value_f = parsed.ok_or_else(|| SettingError::Invalid {
            key: k,
            value: value.to_string(),
        })?;
        Ok(Setting {
            key: k,
            value: value_f,
            text: value.to_string(),
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

/// One model's settings in force.
#[derive(Debug, Default)]
pub struct Settings(Mutex<BTreeMap<SettingKey, Setting>>);

impl Settings {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<SettingKey, Setting>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set(&self, s: Setting) {
        self.lock().insert(s.key, s);
    }

    pub fn get(&self, key: SettingKey) -> Option<f64> {
        self.lock().get(&key).map(|s| s.value)
    }

    /// By name, as given: what the status shows.
    pub fn shown(&self) -> BTreeMap<String, String> {
        self.lock()
            .values()
            .map(|s| (s.key.name().to_string(), s.text.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_checked_when_set_and_read_as_numbers() {
        let s = Settings::default();
        s.set(Setting::parse("shadow.fraction", "0.25").unwrap());
        assert_eq!(s.get(SettingKey::ShadowFraction), Some(0.25));
        assert_eq!(s.get(SettingKey::ShadowSplit), None);
        assert_eq!(s.shown()["shadow.fraction"], "0.25");
        for (k, v) in [
            ("shadow.fraction", "1.5"),
            ("forward.max_fraction", "lots"),
            ("telemetry.heartbeat_s", "0"),
            ("hardness.threshold", "NaN"),
            ("forward.max_per_s", "-1"),
        ] {
            let e = Setting::parse(k, v).unwrap_err();
            assert!(matches!(e, SettingError::Invalid { .. }), "{k}={v}: {e}");
            assert!(e.to_string().starts_with(k), "{e}");
        }
        let e = Setting::parse("cache.enabled", "false").unwrap_err();
        assert!(e.to_string().contains("allowed: hardness.threshold"), "{e}");
    }
}
