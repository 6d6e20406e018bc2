//! Adaptive timing: the heartbeat interval and election timeout derived from what the
//! members report.
//!
//! The rule (also in the README):
//!
//! ```text
//! base      = max(RTT p99 over the leader's peers, fsync p99 over all members)
//! heartbeat = clamp(ceil_to_tick(base × SAFETY_FACTOR), minHeartbeat, maxHeartbeat)
//! election  = clamp(ELECTION_MULTIPLE × heartbeat,      minElection,  maxElection)
//!             and never below 3 × heartbeat (raft-node's own rule; heartbeat shrinks
//!             to election / 3 when the bounds force it)
//! change only if |heartbeat − current| > HYSTERESIS × current (or the current values lie
//!             outside the bounds), and at least COOL_DOWN after the last change.
//! ```
//!
//! Why these parts: a heartbeat must outlast one round trip and one fsync on the slow
//! end (p99), or followers see gaps and start pre-votes; the election timeout must cover
//! several lost heartbeats. The hysteresis margin keeps noise in the percentiles from
//! turning into a stream of timing entries in the log, and the cool-down bounds how often
//! the cluster's behaviour changes even when latency really swings.

/// Heartbeat = this × max(RTT p99, fsync p99).
pub const SAFETY_FACTOR: f64 = 2.0;
/// Election timeout = this × heartbeat (etcd's recommended ratio).
pub const ELECTION_MULTIPLE: u32 = 10;
/// A new heartbeat must differ from the current one by more than this fraction.
pub const HYSTERESIS: f64 = 0.2;
/// Minimum time between two changes, unless `spec.timing.adaptiveCoolDownSeconds` says
/// otherwise.
pub const COOL_DOWN_MS: u64 = 5 * 60 * 1000;
/// raft-node's tick (`node/src/runtime/timing.rs` TICK_MS): timing is in whole ticks.
pub const TICK_MS: u32 = 10;

/// A heartbeat and election timeout pair in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimingMs {
    pub heartbeat_interval_ms: u32,
    pub election_timeout_ms: u32,
}

/// Where adaptive tuning may go (from `spec.timing`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    pub heartbeat_min_ms: u32,
    pub heartbeat_max_ms: u32,
    pub election_min_ms: u32,
    pub election_max_ms: u32,
}

impl Bounds {
    pub fn from_spec(timing: &crate::crd::Timing) -> Self {
        Bounds {
            heartbeat_min_ms: timing.min_heartbeat_interval_ms,
            heartbeat_max_ms: timing.max_heartbeat_interval_ms,
            election_min_ms: timing.min_election_timeout_ms,
            election_max_ms: timing.max_election_timeout_ms,
        }
    }

    fn contains(&self, t: TimingMs) -> bool {
        (self.heartbeat_min_ms..=self.heartbeat_max_ms).contains(&t.heartbeat_interval_ms)
            && (self.election_min_ms..=self.election_max_ms).contains(&t.election_timeout_ms)
    }
}

/// What the members report; `None` when nobody reported a sample.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Latency {
    pub rtt_p99_ms: Option<f64>,
    pub fsync_p99_ms: Option<f64>,
}

fn ceil_to_tick(ms: f64) -> u32 {
    let ticks = (ms / TICK_MS as f64).ceil().max(1.0);
    (ticks as u32).saturating_mul(TICK_MS)
}

/// The timing the rule asks for, ignoring hysteresis and cool-down; `None` without
/// any latency sample.
pub fn target(latency: Latency, bounds: Bounds) -> Option<TimingMs> {
    let base = match (latency.rtt_p99_ms, latency.fsync_p99_ms) {
        (None, None) => return None,
        (a, b) => a.unwrap_or(0.0).max(b.unwrap_or(0.0)),
    };
    let mut heartbeat =
        ceil_to_tick(base * SAFETY_FACTOR).clamp(bounds.heartbeat_min_ms, bounds.heartbeat_max_ms);
    let election = heartbeat
        .saturating_mul(ELECTION_MULTIPLE)
        .clamp(bounds.election_min_ms, bounds.election_max_ms);
    if election < 3 * heartbeat {
        heartbeat = (election / 3 / TICK_MS * TICK_MS).max(TICK_MS);
    }
    Some(TimingMs {
        heartbeat_interval_ms: heartbeat,
        election_timeout_ms: election,
    })
}

/// The timing to apply now, or `None` to keep the current one.
///
/// `last_change_ms` is when the operator last changed timing (recorded in the
/// RaftCluster's status, so a restarted operator keeps the cool-down).
pub fn decide(
    current: TimingMs,
    latency: Latency,
    bounds: Bounds,
    last_change_ms: Option<u64>,
    now_ms: u64,
) -> Option<TimingMs> {
    decide_with_cool_down(current, latency, bounds, last_change_ms, now_ms, COOL_DOWN_MS)
}

/// [`decide`] with the cool-down the spec asks for.
pub fn decide_with_cool_down(
    current: TimingMs,
    latency: Latency,
    bounds: Bounds,
    last_change_ms: Option<u64>,
    now_ms: u64,
    cool_down_ms: u64,
) -> Option<TimingMs> {
    let wanted = target(latency, bounds)?;
    if wanted == current {
        return None;
    }
    // Values outside the bounds (the user narrowed them) are corrected at once.
    if !bounds.contains(current) {
        return Some(wanted);
    }
    if last_change_ms.is_some_and(|last| now_ms.saturating_sub(last) < cool_down_ms) {
        return None;
    }
    let current_heartbeat = current.heartbeat_interval_ms.max(1) as f64;
    let relative = (wanted.heartbeat_interval_ms as f64 - current_heartbeat).abs() / current_heartbeat;
    (relative > HYSTERESIS).then_some(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: Bounds = Bounds {
        heartbeat_min_ms: 20,
        heartbeat_max_ms: 500,
        election_min_ms: 200,
        election_max_ms: 5000,
    };

    fn timing(heartbeat: u32, election: u32) -> TimingMs {
        TimingMs {
            heartbeat_interval_ms: heartbeat,
            election_timeout_ms: election,
        }
    }

    fn latency(rtt: f64, fsync: f64) -> Latency {
        Latency {
            rtt_p99_ms: Some(rtt),
            fsync_p99_ms: Some(fsync),
        }
    }

    #[test]
    fn heartbeat_follows_the_slower_of_rtt_and_fsync_times_the_safety_factor() {
        assert_eq!(target(latency(12.0, 3.0), BOUNDS), Some(timing(30, 300)));
        assert_eq!(target(latency(3.0, 41.0), BOUNDS), Some(timing(90, 900)));
    }

    #[test]
    fn timing_stays_within_the_spec_bounds() {
        assert_eq!(target(latency(0.2, 0.1), BOUNDS), Some(timing(20, 200)));
        assert_eq!(target(latency(900.0, 5.0), BOUNDS), Some(timing(500, 5000)));
        let tight = Bounds {
            election_max_ms: 600,
            ..BOUNDS
        };
        // 10 x 300 is capped at 600, so the heartbeat shrinks to keep election >= 3x it.
        let t = target(latency(150.0, 1.0), tight).unwrap();
        assert_eq!(t, timing(200, 600));
    }

    #[test]
    fn no_samples_means_no_opinion() {
        assert_eq!(target(Latency::default(), BOUNDS), None);
        assert_eq!(
            decide(timing(100, 1000), Latency::default(), BOUNDS, None, 0),
            None
        );
    }

    #[test]
    fn small_changes_are_ignored_by_the_hysteresis_margin() {
        // Wanted 110 vs current 100: 10% < 20%.
        assert_eq!(
            decide(timing(100, 1000), latency(55.0, 1.0), BOUNDS, None, 0),
            None
        );
        // Wanted 130 vs current 100: 30% > 20%.
        assert_eq!(
            decide(timing(100, 1000), latency(65.0, 1.0), BOUNDS, None, 0),
            Some(timing(130, 1300))
        );
        // Downwards too.
        assert_eq!(
            decide(timing(100, 1000), latency(20.0, 1.0), BOUNDS, None, 0),
            Some(timing(40, 400))
        );
    }

    #[test]
    fn a_change_waits_for_the_cool_down() {
        let now = 10 * COOL_DOWN_MS;
        let slow = latency(100.0, 1.0);
        assert_eq!(
            decide(timing(100, 1000), slow, BOUNDS, Some(now - 1_000), now),
            None
        );
        assert_eq!(
            decide(timing(100, 1000), slow, BOUNDS, Some(now - COOL_DOWN_MS), now),
            Some(timing(200, 2000))
        );
    }

    #[test]
    fn values_outside_narrowed_bounds_are_corrected_despite_cool_down_and_hysteresis() {
        let narrowed = Bounds {
            heartbeat_max_ms: 90,
            ..BOUNDS
        };
        let now = COOL_DOWN_MS;
        assert_eq!(
            decide(
                timing(100, 1000),
                latency(44.0, 1.0),
                narrowed,
                Some(now - 1),
                now
            ),
            Some(timing(90, 900))
        );
    }

    #[test]
    fn the_same_latency_never_flaps() {
        let bounds = BOUNDS;
        let mut current = timing(100, 1000);
        let mut changes = 0;
        let mut last = None;
        for step in 0..100u64 {
            let now = step * COOL_DOWN_MS;
            // Latency wobbles by +-15% around 50 ms.
            let rtt = if step % 2 == 0 { 43.0 } else { 57.0 };
            if let Some(next) = decide(current, latency(rtt, 1.0), bounds, last, now) {
                current = next;
                last = Some(now);
                changes += 1;
            }
        }
        assert!(changes <= 1, "changed {changes} times");
    }
}
