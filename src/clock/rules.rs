//! The pure rules: how a reading of the clock and the floor judges an expiry, how a signed time raises the floor,
//! and when the clock looks wrong. No I/O here, so every rule is a unit test.

use super::{show, span};
use crate::wire::status::ClockHealth;

/// How far past the clock one signed time may lift the floor while the clock looks right. Small, because the floor
/// must never pass the expiry of what a correct operator signs next: the shortest-lived message is a command
/// (`outpostctl cmd --expires-in`, 300 s by default), so a bound of 60 s leaves a fresh command 4 minutes of life
/// even right after a message from a machine whose clock runs ahead, and an operator whose clock is off by
/// seconds still raises the floor to nearly its own time. Measured from the clock, not from the floor, so a stream
/// of messages from a machine that reads 2040 cannot ratchet it forward.
pub const AHEAD_OF_CLOCK_S: u64 = 60;

/// How far one signed time may lift the floor when the clock is behind it (the clock is wrong: no RTC before time
/// sync, or a clock that stepped back), so that the floor is the only estimate of now. A day: enough that a device
/// at 1970 built yesterday learns today's date from the first bundle it takes, small enough that a message from a
/// machine that reads 2040 moves such a device's floor by at most a day, so that once its clock is synced it
/// refuses fresh commands for at most that day per such message rather than for years.
pub const STEP_WHEN_BEHIND_S: u64 = 86_400;

/// A clock further than this past the floor is reported as far ahead, and an expiry that only such a clock sees is
/// blamed on the clock. A year: a device that is on, synced and in touch sees a signed time (a bundle, a command, a
/// cloud answer) far more often, and a floor is never older than the agent's build.
pub const FAR_AHEAD_S: u64 = 365 * 86_400;

/// One reading: the system clock and the floor, taken together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    pub clock_unix: u64,
    pub floor_unix: u64,
}

/// Why a signed message's expiry refuses it, in words that name the real cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Expired {
    /// The clock says so and nothing contradicts it: the message is old.
    #[error("expired at {} (this device's clock reads {})", show(*.expires), show(*.clock))]
    Stale { expires: u64, clock: u64 },
    /// The device has already seen a later signed time, whatever its clock says (it may read 1970).
    #[error("expired at {}, before the newest signed time this device has seen ({}; its clock reads {})", show(*.expires), show(*.seen), show(*.clock))]
    BeforeSeen { expires: u64, seen: u64, clock: u64 },
    /// Only a clock far ahead of everything signed the device has seen says so: the clock is the likely cause.
    #[error("this device's clock reads {}, {} after the newest signed time it has seen ({}): check its time sync (it expires at {} by any other measure)", show(*.clock), span(.clock.saturating_sub(*.seen)), show(*.seen), show(*.expires))]
    ClockAhead { expires: u64, seen: u64, clock: u64 },
}

impl Expired {
    /// The clock, not the message, is at fault: the refusal goes away when the clock is fixed.
    pub fn blames_clock(&self) -> bool {
        matches!(self, Expired::ClockAhead { .. })
    }

    /// The refusal of a `what` (bundle, command) as a sentence: what to do about an old message (`remedy`), or,
    /// when the clock is to blame, only that: no fresh message would pass until the clock is fixed.
    pub fn sentence(&self, what: &str, remedy: &str) -> String {
        if self.blames_clock() {
            format!("{what} refused: {self}")
        } else {
            format!("{what} {self}; {remedy}")
        }
    }
}

impl Reading {
    /// A reading with no floor (the operator's side, which keeps none): the clock alone.
    pub fn clock_only(clock_unix: u64) -> Reading {
        Reading {
            clock_unix,
            floor_unix: 0,
        }
    }

    /// The time expiries are judged at: the later of the clock and the floor.
    pub fn effective(&self) -> u64 {
        self.clock_unix.max(self.floor_unix)
    }

    /// The best estimate of now for stamping the device's own records (a hard case's creation time): the clock,
    /// unless it is far ahead of everything signed the device has seen, or behind the floor.
    pub fn trusted_now(&self) -> u64 {
        match self.health() {
            ClockHealth::FarAhead => self.floor_unix,
            _ => self.effective(),
        }
    }

    pub fn health(&self) -> ClockHealth {
        if self.clock_unix.saturating_add(AHEAD_OF_CLOCK_S) < self.floor_unix {
            ClockHealth::BehindFloor
        } else if self.clock_unix > self.floor_unix.saturating_add(FAR_AHEAD_S) {
            ClockHealth::FarAhead
        } else {
            ClockHealth::Ok
        }
    }

    /// Judges a signed message that expires at `expires_unix` and was issued at `issued_unix` (0 when it carries no
    /// issue time).
    pub fn check_expiry(&self, expires_unix: u64, issued_unix: u64) -> Result<(), Expired> {
        if self.effective() < expires_unix {
            return Ok(());
        }
        let (expires, clock) = (expires_unix, self.clock_unix);
        if self.floor_unix >= expires_unix {
            return Err(Expired::BeforeSeen {
                expires,
                seen: self.floor_unix,
                clock,
            });
        }
        // Only the clock says it expired. The newest signed time known counts this message's own (authentic) issue
        // time, which a message issued just before the clock's reading would not be blamed on.
        let seen = self.floor_unix.max(issued_unix.min(expires_unix));
        if clock > seen.saturating_add(FAR_AHEAD_S) {
            Err(Expired::ClockAhead {
                expires,
                seen,
                clock,
            })
        } else {
            Err(Expired::Stale { expires, clock })
        }
    }

    /// The floor after a verified message issued at `issued_unix`: raised to it, but by no more than the bounds
    /// above ([`AHEAD_OF_CLOCK_S`] past a clock that looks right, [`STEP_WHEN_BEHIND_S`] past the floor when the
    /// clock is behind it). Never lowered.
    pub fn raised(&self, issued_unix: u64) -> u64 {
        let cap = match self.health() {
            ClockHealth::BehindFloor => self.floor_unix.saturating_add(STEP_WHEN_BEHIND_S),
            _ => self.clock_unix.saturating_add(AHEAD_OF_CLOCK_S),
        };
        self.floor_unix.max(issued_unix.min(cap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;
    /// 2026-12-07, the day these rules were written.
    const TODAY: u64 = 1_796_601_600;
    const Y1970: u64 = 3_600;
    const Y2040: u64 = 2_208_988_800;

    fn at(clock: u64, floor: u64) -> Reading {
        Reading {
            clock_unix: clock,
            floor_unix: floor,
        }
    }

    #[test]
    fn a_device_at_1970_that_never_synced_takes_a_fresh_bundle() {
        let built = TODAY - 10 * DAY;
        let r = at(Y1970, built);
        assert_eq!(r.health(), ClockHealth::BehindFloor);
        // Issued today, valid 30 days.
        assert_eq!(r.check_expiry(TODAY + 30 * DAY, TODAY), Ok(()));
        // Without a floor (an agent of before), a bundle that expired 60 days ago passed at 1970; the build time alone
        // refuses it now.
        let old = r
            .check_expiry(TODAY - 60 * DAY, TODAY - 90 * DAY)
            .unwrap_err();
        assert!(matches!(old, Expired::BeforeSeen { .. }), "{old}");
        assert!(!old.blames_clock());
    }

    #[test]
    fn the_same_device_after_seeing_today_refuses_what_expired_yesterday() {
        let built = TODAY - 12 * 3_600;
        let r = at(Y1970, built);
        // Expired yesterday but after the build: the build time alone does not refuse it...
        assert_eq!(r.check_expiry(TODAY - 6 * 3_600, TODAY - 30 * DAY), Ok(()));
        // ...until the device has seen a bundle issued today: its floor rises to today (within a day of the floor)...
        let floor = r.raised(TODAY);
        assert_eq!(floor, TODAY);
        let seen = at(Y1970, floor);
        // ...and the expired bundle is refused, blaming the bundle, not the clock.
        let e = seen
            .check_expiry(TODAY - 6 * 3_600, TODAY - 30 * DAY)
            .unwrap_err();
        assert_eq!(
            e,
            Expired::BeforeSeen {
                expires: TODAY - 6 * 3_600,
                seen: TODAY,
                clock: Y1970
            }
        );
        assert!(e.to_string().contains("newest signed time"), "{e}");
    }

    #[test]
    fn a_message_issued_in_2040_raises_the_floor_by_no_more_than_the_bound() {
        // A clock that looks right: at most a minute past the clock, however many such messages come.
        let mut r = at(TODAY, TODAY - DAY);
        for _ in 0..100 {
            r.floor_unix = r.raised(Y2040);
            assert!(r.floor_unix <= TODAY + AHEAD_OF_CLOCK_S);
        }
        assert_eq!(r.floor_unix, TODAY + AHEAD_OF_CLOCK_S);
        // A fresh command (issued now, 300 s of life) still passes after them.
        assert_eq!(r.check_expiry(TODAY + 300, TODAY), Ok(()));
        // A clock behind the floor: at most a day per message.
        let behind = at(Y1970, TODAY);
        assert_eq!(behind.raised(Y2040), TODAY + STEP_WHEN_BEHIND_S);
        assert_eq!(behind.raised(u64::MAX), TODAY + STEP_WHEN_BEHIND_S);
    }

    #[test]
    fn issue_times_of_zero_and_max_neither_lower_nor_overflow() {
        let r = at(TODAY, TODAY - DAY);
        assert_eq!(r.raised(0), TODAY - DAY);
        assert_eq!(r.raised(u64::MAX), TODAY + AHEAD_OF_CLOCK_S);
        let far = at(u64::MAX, u64::MAX);
        assert_eq!(far.raised(u64::MAX), u64::MAX);
        assert_eq!(far.health(), ClockHealth::Ok);
        assert!(far.check_expiry(u64::MAX, 0).is_err());
        assert_eq!(at(0, 0).raised(u64::MAX), AHEAD_OF_CLOCK_S);
    }

    #[test]
    fn a_device_at_2040_blames_its_clock_for_a_fresh_message() {
        let r = at(Y2040, TODAY);
        assert_eq!(r.health(), ClockHealth::FarAhead);
        let e = r.check_expiry(TODAY + 30 * DAY, TODAY).unwrap_err();
        assert!(e.blames_clock());
        let text = e.to_string();
        assert!(
            text.starts_with("this device's clock reads 2040-01-01T00:00:00Z, 13 years after the newest signed time it has seen (2026-12-07T00:00:00Z): check its time sync"),
            "{text}"
        );
        // Its own records are stamped with the floor, not with 2040.
        assert_eq!(r.trusted_now(), TODAY);
    }

    #[test]
    fn commands_follow_the_same_rules() {
        // A command lives 300 s: fresh at a correct clock, refused and blamed on the clock at 2040, refused as old
        // by a correct clock an hour later, and by the floor at 1970 once a later time was seen.
        let issued = TODAY;
        let expires = TODAY + 300;
        assert_eq!(
            at(TODAY + 10, TODAY - DAY).check_expiry(expires, issued),
            Ok(())
        );
        assert!(at(Y2040, TODAY - DAY)
            .check_expiry(expires, issued)
            .unwrap_err()
            .blames_clock());
        assert!(matches!(
            at(TODAY + 3_600, TODAY - DAY).check_expiry(expires, issued),
            Err(Expired::Stale { .. })
        ));
        assert!(matches!(
            at(Y1970, TODAY + 3_600).check_expiry(expires, issued),
            Err(Expired::BeforeSeen { .. })
        ));
        assert_eq!(at(Y1970, TODAY - DAY).check_expiry(expires, issued), Ok(()));
    }

    #[test]
    fn health_names_each_kind_of_wrong_clock() {
        assert_eq!(at(TODAY, TODAY).health(), ClockHealth::Ok);
        assert_eq!(at(TODAY, TODAY + 30).health(), ClockHealth::Ok);
        assert_eq!(at(Y1970, TODAY).health(), ClockHealth::BehindFloor);
        assert_eq!(
            at(TODAY + 2 * FAR_AHEAD_S, TODAY).health(),
            ClockHealth::FarAhead
        );
    }
}
