//! What time it is, as far as the signature checks are concerned.
//!
//! A device's clock can be wrong in both directions: a board without a real-time clock boots at 1970 until time
//! sync, and a bad RTC or a mistyped `date` can put it years ahead. Expiry checks that trust the clock blindly then
//! take bundles that expired long ago (1970) or refuse every fresh one (2040). So the checks read the clock together
//! with a **time floor**: the latest time the device knows has passed, kept durably in the state dir. The floor
//! starts at the agent's build time and is raised by the issue time of every verified bundle, command and cloud
//! answer (bounded per message, see [`rules`]); expiry is checked against the later of the clock and the floor,
//! as Bottlerocket's updog keeps a latest known time. Serving never reads it.

pub mod floor;
pub mod rules;

pub use floor::Clock;
pub use rules::{Expired, Reading};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A date this source was written after (2026-12-07): the floor's last resort when the build set no time.
const SOURCE_UNIX: u64 = 1_796_601_600;

/// The agent's build time ([`build.rs`]: `SOURCE_DATE_EPOCH`, else the commit time), never earlier than a date in
/// this source. A device's floor never sits below it: whatever the clock says, it is no earlier than the day this
/// agent was built.
pub fn build_unix() -> u64 {
    let built = env!("OUTPOST_BUILD_UNIX").parse::<u64>().unwrap_or(0);
    built.max(SOURCE_UNIX)
}

/// Where the time comes from: the system clock on a device, a fixed or stepped value in tests.
pub trait TimeSource: Send + Sync {
    fn now_unix(&self) -> u64;
}

/// The system's real-time clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl TimeSource for SystemClock {
    fn now_unix(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

/// A time source that reads a shared value: tests set it, and move it.
#[derive(Debug, Clone, Default)]
pub struct FixedClock(pub std::sync::Arc<std::sync::atomic::AtomicU64>);

impl FixedClock {
    pub fn at(unix: u64) -> FixedClock {
        FixedClock(std::sync::Arc::new(unix.into()))
    }

    pub fn set(&self, unix: u64) {
        self.0.store(unix, std::sync::atomic::Ordering::SeqCst);
    }
}

impl TimeSource for FixedClock {
    fn now_unix(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// `unix` as an RFC 3339 date and time in UTC (`2040-01-01T00:00:00Z`), for sentences a person reads; a value past
/// year 9999 (an issue time of `u64::MAX`) as its number of seconds.
pub fn show(unix: u64) -> String {
    const LAST_RFC3339: u64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    if unix > LAST_RFC3339 {
        return format!("{unix} s after 1970");
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

/// A span of seconds in the largest unit that fits (`13 years`, `5 days`, `40 minutes`).
pub fn span(seconds: u64) -> String {
    const UNITS: [(u64, &str); 5] = [
        (365 * 86_400, "year"),
        (86_400, "day"),
        (3_600, "hour"),
        (60, "minute"),
        (1, "second"),
    ];
    for (size, name) in UNITS {
        if seconds >= size {
            let n = seconds / size;
            return format!("{n} {name}{}", if n == 1 { "" } else { "s" });
        }
    }
    "0 seconds".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_read_as_dates_and_huge_values_do_not_panic() {
        assert_eq!(show(2_208_988_800), "2040-01-01T00:00:00Z");
        assert_eq!(show(0), "1970-01-01T00:00:00Z");
        assert!(show(u64::MAX).contains("after 1970"));
        assert_eq!(span(13 * 365 * 86_400 + 5), "13 years");
        assert_eq!(span(86_400), "1 day");
        assert_eq!(span(0), "0 seconds");
    }

    #[test]
    fn the_build_time_is_set_and_no_earlier_than_the_source() {
        assert!(build_unix() >= SOURCE_UNIX);
    }
}
