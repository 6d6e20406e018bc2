//! Latency statistics shared by the transport (peer round-trip times) and the WAL
//! writer (fsync latency).
//!
//! - [`LatencyWindow`]: an exponentially weighted moving average plus the samples of a
//!   sliding window (bounded in time and in count), from which the admin API reports
//!   p50 and p99. Old samples fall out, so a disk or link that recovers stops looking
//!   slow once the window has passed.
//! - [`Histogram`]: cumulative counts over fixed bucket bounds, in the Prometheus
//!   text format (`_bucket{le=...}`, `_sum`, `_count`).
//!
//! Both take the time as an argument where it matters, so they are tested without a
//! clock.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// Weight of a new sample in the moving average (1/8, as TCP's smoothed RTT).
pub const EWMA_WEIGHT: f64 = 0.125;

/// The latency of recent events.
#[derive(Clone, Debug)]
pub struct LatencyWindow {
    /// (when it was taken, the sample in seconds), oldest first.
    samples: VecDeque<(Instant, f64)>,
    span: Duration,
    samples_max: usize,
    ewma_seconds: Option<f64>,
}

/// What a [`LatencyWindow`] says at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LatencySummary {
    pub ewma_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Samples in the window the percentiles come from.
    pub samples: u64,
    /// Age of the oldest sample a window may hold.
    pub window_ms: u64,
}

impl LatencyWindow {
    /// Keeps the samples of the last `span`, at most `samples_max` of them (the newest).
    pub fn new(span: Duration, samples_max: usize) -> Self {
        assert!(samples_max > 0, "a window holds at least one sample");
        LatencyWindow {
            samples: VecDeque::with_capacity(samples_max.min(1024)),
            span,
            samples_max,
            ewma_seconds: None,
        }
    }

    pub fn record(&mut self, at: Instant, sample: Duration) {
        let seconds = sample.as_secs_f64();
        self.ewma_seconds = Some(match self.ewma_seconds {
            None => seconds,
            Some(average) => average + EWMA_WEIGHT * (seconds - average),
        });
        if self.samples.len() == self.samples_max {
            self.samples.pop_front();
        }
        self.samples.push_back((at, seconds));
        self.expire(at);
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, _)) = self.samples.front() {
            if now.saturating_duration_since(at) > self.span {
                self.samples.pop_front();
            } else {
                break;
            }
        }
    }

    /// Percentiles over the samples not older than the window at `now` (nearest rank);
    /// zeros when there are none. The average covers every sample ever recorded.
    pub fn summary(&mut self, now: Instant) -> LatencySummary {
        self.expire(now);
        let mut sorted: Vec<f64> = self.samples.iter().map(|&(_, s)| s).collect();
        sorted.sort_by(f64::total_cmp);
        let rank = |q: f64| -> f64 {
            if sorted.is_empty() {
                return 0.0;
            }
            let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
            sorted[index]
        };
        LatencySummary {
            ewma_ms: self.ewma_seconds.unwrap_or(0.0) * 1e3,
            p50_ms: rank(0.5) * 1e3,
            p99_ms: rank(0.99) * 1e3,
            samples: sorted.len() as u64,
            window_ms: self.span.as_millis() as u64,
        }
    }
}

/// Bucket bounds of peer round-trip times in seconds: 0.1 ms doubling to 3.3 s, as
/// etcd's `etcd_network_peer_round_trip_time_seconds`.
pub const RTT_BUCKETS_SECONDS: [f64; 16] = [
    0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064, 0.0128, 0.0256, 0.0512, 0.1024, 0.2048, 0.4096,
    0.8192, 1.6384, 3.2768,
];

/// Counts of observations per bucket since start-up (Prometheus histograms are
/// cumulative; rates and windows are the query's business).
#[derive(Clone, Debug)]
pub struct Histogram {
    bounds_seconds: &'static [f64],
    /// One per bound, plus one for larger values.
    counts: Vec<u64>,
    sum_seconds: f64,
}

impl Histogram {
    pub fn new(bounds_seconds: &'static [f64]) -> Self {
        assert!(
            bounds_seconds.windows(2).all(|w| w[0] < w[1]),
            "bucket bounds must increase"
        );
        Histogram {
            bounds_seconds,
            counts: vec![0; bounds_seconds.len() + 1],
            sum_seconds: 0.0,
        }
    }

    pub fn observe(&mut self, sample: Duration) {
        let seconds = sample.as_secs_f64();
        let bucket = self.bounds_seconds.partition_point(|&bound| bound < seconds);
        self.counts[bucket] += 1;
        self.sum_seconds += seconds;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Appends the series of one histogram (`labels` like `peer="a1"`, or empty); the
    /// caller writes `# HELP` and `# TYPE` once per metric name.
    pub fn write_prometheus(&self, out: &mut String, name: &str, labels: &str) {
        let separator = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, count) in self.bounds_seconds.iter().zip(&self.counts) {
            cumulative += count;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{separator}le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += self.counts[self.bounds_seconds.len()];
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{separator}le=\"+Inf\"}} {cumulative}"
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum_seconds);
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn percentiles_cover_only_the_window_and_the_newest_samples() {
        let start = Instant::now();
        let mut window = LatencyWindow::new(Duration::from_secs(10), 100);
        for i in 1..=100 {
            window.record(start, ms(i));
        }
        let summary = window.summary(start);
        assert_eq!(summary.samples, 100);
        assert_eq!(summary.p50_ms.round() as u64, 50);
        assert_eq!(summary.p99_ms.round() as u64, 99);
        // Past the count bound the oldest go first.
        for _ in 0..50 {
            window.record(start, ms(1000));
        }
        let summary = window.summary(start);
        assert_eq!(summary.samples, 100);
        assert_eq!(summary.p50_ms.round() as u64, 100, "51..=100 and 50 of 1000 ms");
        // Past the time bound every sample goes: a slow spell is forgotten.
        let later = start + Duration::from_secs(11);
        let summary = window.summary(later);
        assert_eq!((summary.samples, summary.p50_ms, summary.p99_ms), (0, 0.0, 0.0));
        window.record(later, ms(2));
        assert_eq!(window.summary(later).p99_ms.round() as u64, 2);
    }

    #[test]
    fn the_moving_average_follows_a_step_gradually() {
        let now = Instant::now();
        let mut window = LatencyWindow::new(Duration::from_secs(60), 10);
        window.record(now, ms(10));
        assert_eq!(window.summary(now).ewma_ms.round() as u64, 10);
        window.record(now, ms(90));
        assert_eq!(
            window.summary(now).ewma_ms.round() as u64,
            20,
            "10 + (90 - 10) / 8"
        );
        for _ in 0..100 {
            window.record(now, ms(90));
        }
        assert_eq!(window.summary(now).ewma_ms.round() as u64, 90);
    }

    #[test]
    fn the_histogram_counts_cumulatively_in_the_prometheus_format() {
        let mut histogram = Histogram::new(&RTT_BUCKETS_SECONDS);
        histogram.observe(Duration::from_micros(50));
        histogram.observe(Duration::from_micros(100));
        histogram.observe(ms(30));
        histogram.observe(Duration::from_secs(10));
        assert_eq!(histogram.count(), 4);
        let mut out = String::new();
        histogram.write_prometheus(&mut out, "x_seconds", "peer=\"a\"");
        assert!(
            out.contains("x_seconds_bucket{peer=\"a\",le=\"0.0001\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{peer=\"a\",le=\"0.0256\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{peer=\"a\",le=\"0.0512\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{peer=\"a\",le=\"3.2768\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{peer=\"a\",le=\"+Inf\"} 4\n"),
            "{out}"
        );
        assert!(out.contains("x_seconds_count{peer=\"a\"} 4\n"), "{out}");
        let mut bare = String::new();
        histogram.write_prometheus(&mut bare, "y", "");
        assert!(
            bare.contains("y_bucket{le=\"+Inf\"} 4\n") && bare.contains("y_count 4\n"),
            "{bare}"
        );
    }
}
