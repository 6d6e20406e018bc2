//! Timing: the core's tick, and the heartbeat and election timeouts in milliseconds
//! (flags and `SetTiming`) checked and turned into ticks. The tick is the runtime's:
//! it drives the core with one `tick()` every `TICK_MS`.

use crate::raft::Timing;

/// Length of one core tick; heartbeat and election timeouts are multiples of it.
pub const TICK_MS: u64 = 10;

/// Upper bound on the heartbeat interval (flags and `SetTiming`).
pub const HEARTBEAT_INTERVAL_MS_MAX: u64 = 5_000;
/// Upper bound on the election timeout (etcd's own limit).
pub const ELECTION_TIMEOUT_MS_MAX: u64 = 50_000;

/// Which of the two timing values is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimingValue {
    HeartbeatInterval,
    ElectionTimeout,
}

impl TimingValue {
    pub fn flag(self) -> &'static str {
        match self {
            TimingValue::HeartbeatInterval => "heartbeat-interval",
            TimingValue::ElectionTimeout => "election-timeout",
        }
    }

    /// The field's name in the admin API.
    pub fn field(self) -> &'static str {
        match self {
            TimingValue::HeartbeatInterval => "heartbeat_interval_ms",
            TimingValue::ElectionTimeout => "election_timeout_ms",
        }
    }
}

/// Timing that no member may run with, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimingRefused {
    pub value: TimingValue,
    pub reason: String,
}

/// Checks timing given in milliseconds (flags or `SetTiming`, one rule for both) and
/// turns it into ticks: whole ticks, election timeout at least 3x the heartbeat
/// interval, within the hard bounds.
pub fn timing_from_ms(heartbeat_interval_ms: u64, election_timeout_ms: u64) -> Result<Timing, TimingRefused> {
    let refuse = |value, reason: String| Err(TimingRefused { value, reason });
    use TimingValue::{ElectionTimeout, HeartbeatInterval};
    if heartbeat_interval_ms < TICK_MS || !heartbeat_interval_ms.is_multiple_of(TICK_MS) {
        return refuse(
            HeartbeatInterval,
            format!("{heartbeat_interval_ms} ms must be a multiple of {TICK_MS} ms"),
        );
    }
    if heartbeat_interval_ms > HEARTBEAT_INTERVAL_MS_MAX {
        return refuse(
            HeartbeatInterval,
            format!("{heartbeat_interval_ms} ms is above the limit of {HEARTBEAT_INTERVAL_MS_MAX} ms"),
        );
    }
    if !election_timeout_ms.is_multiple_of(TICK_MS) {
        return refuse(
            ElectionTimeout,
            format!("{election_timeout_ms} ms must be a multiple of {TICK_MS} ms"),
        );
    }
    if election_timeout_ms < 3 * heartbeat_interval_ms {
        return refuse(
            ElectionTimeout,
            format!(
                "{election_timeout_ms} ms must be at least 3x the heartbeat interval ({heartbeat_interval_ms} ms)"
            ),
        );
    }
    if election_timeout_ms > ELECTION_TIMEOUT_MS_MAX {
        return refuse(
            ElectionTimeout,
            format!("{election_timeout_ms} ms is above the limit of {ELECTION_TIMEOUT_MS_MAX} ms"),
        );
    }
    let timing = Timing {
        heartbeat_ticks: (heartbeat_interval_ms / TICK_MS) as u32,
        election_ticks: (election_timeout_ms / TICK_MS) as u32,
    };
    timing.validate().map_err(|e| TimingRefused {
        value: ElectionTimeout,
        reason: e.to_string(),
    })?;
    Ok(timing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_in_milliseconds_is_checked_by_one_rule_naming_the_bad_value() {
        assert_eq!(
            timing_from_ms(50, 500),
            Ok(Timing {
                heartbeat_ticks: 5,
                election_ticks: 50
            })
        );
        let cases = [
            (0, 1000, TimingValue::HeartbeatInterval),
            (15, 1000, TimingValue::HeartbeatInterval),
            (10_000, 50_000, TimingValue::HeartbeatInterval),
            (100, 1005, TimingValue::ElectionTimeout),
            (100, 200, TimingValue::ElectionTimeout),
            (1000, 60_000, TimingValue::ElectionTimeout),
        ];
        for (heartbeat, election, value) in cases {
            let refused = timing_from_ms(heartbeat, election).expect_err("must be refused");
            assert_eq!(refused.value, value, "{heartbeat}/{election}: {}", refused.reason);
        }
    }
}
