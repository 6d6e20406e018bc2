//! Round-trip times and link state of the peer streams, as this member sees them.
//!
//! RTT is measured on the streams themselves, from the traffic Raft sends anyway:
//! the sender marks some of the batches that carry heartbeats or appends with a
//! probe number ([`Prober`]); the receiving transport echoes the number on the
//! response side of the same call the moment the batch arrives. The time from
//! handing the batch to the stream to reading the echo is one sample: both
//! directions of the link, without the peer's disk or core in it (the WAL's fsync
//! latency is measured apart, by the writer). There is no extra traffic when Raft is
//! silent, and at most one probe per [`PROBE_INTERVAL_MIN`].
//!
//! [`PeerLinks`] keeps, per peer, a sliding window of samples (EWMA, p50, p99 for the
//! admin API), a cumulative histogram (for `/metrics`) and the state of the stream
//! (up, or down and backing off before the next attempt). It is shared by the
//! per-peer tasks that write it and by the admin API and `/metrics` that read it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::raft::NodeId;
use crate::stats::{Histogram, LatencySummary, LatencyWindow, RTT_BUCKETS_SECONDS};

/// Samples older than this fall out of the percentiles.
pub const RTT_WINDOW: Duration = Duration::from_secs(60);
/// Samples kept per peer (the newest), whatever their age.
pub const RTT_WINDOW_SAMPLES_MAX: usize = 1024;
/// Least time between two probes on one stream (at most 100 samples per second).
pub const PROBE_INTERVAL_MIN: Duration = Duration::from_millis(10);
/// Probes awaiting their echo per stream; past it the oldest counts as lost.
pub const PROBES_IN_FLIGHT_MAX: usize = 64;

/// What a member knows of its link to one peer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkStatus {
    pub rtt: LatencySummary,
    /// Round trips measured since start-up.
    pub rtt_samples_total: u64,
    /// Whether the stream to the peer is open.
    pub stream_up: bool,
    /// Attempts in a row that failed to open the stream (0 while it is up).
    pub reconnect_failures: u32,
    /// Time left before the next attempt (zero while the stream is up).
    pub backoff_remaining: Duration,
}

#[derive(Debug)]
struct Link {
    rtt: LatencyWindow,
    histogram: Histogram,
    stream_up: bool,
    reconnect_failures: u32,
    retry_at: Option<Instant>,
}

impl Link {
    fn new() -> Self {
        Link {
            rtt: LatencyWindow::new(RTT_WINDOW, RTT_WINDOW_SAMPLES_MAX),
            histogram: Histogram::new(&RTT_BUCKETS_SECONDS),
            stream_up: false,
            reconnect_failures: 0,
            retry_at: None,
        }
    }
}

/// Every peer's link, shared between the transport and the readers.
#[derive(Debug, Default)]
pub struct PeerLinks {
    links: Mutex<HashMap<NodeId, Link>>,
}

impl PeerLinks {
    fn with_link<T>(&self, peer: NodeId, f: impl FnOnce(&mut Link) -> T) -> T {
        let mut links = self.links.lock().expect("not poisoned");
        f(links.entry(peer).or_insert_with(Link::new))
    }

    pub fn record_rtt(&self, peer: NodeId, at: Instant, rtt: Duration) {
        self.with_link(peer, |link| {
            link.rtt.record(at, rtt);
            link.histogram.observe(rtt);
        });
    }

    pub fn stream_up(&self, peer: NodeId) {
        self.with_link(peer, |link| {
            link.stream_up = true;
            link.reconnect_failures = 0;
            link.retry_at = None;
        });
    }

    /// The stream failed (or could not be opened); the next attempt is at `retry_at`.
    pub fn stream_down(&self, peer: NodeId, retry_at: Instant) {
        self.with_link(peer, |link| {
            link.stream_up = false;
            link.reconnect_failures = link.reconnect_failures.saturating_add(1);
            link.retry_at = Some(retry_at);
        });
    }

    /// The link to `peer` at `now`; `None` when this member never tried to reach it.
    pub fn status(&self, peer: NodeId, now: Instant) -> Option<LinkStatus> {
        let mut links = self.links.lock().expect("not poisoned");
        let link = links.get_mut(&peer)?;
        Some(LinkStatus {
            rtt: link.rtt.summary(now),
            rtt_samples_total: link.histogram.count(),
            stream_up: link.stream_up,
            reconnect_failures: link.reconnect_failures,
            backoff_remaining: link
                .retry_at
                .map_or(Duration::ZERO, |at| at.saturating_duration_since(now)),
        })
    }

    /// `kuberaft_peer_round_trip_time_seconds`, one series per peer (ids in hex).
    pub fn write_prometheus(&self, out: &mut String) {
        let links = self.links.lock().expect("not poisoned");
        let mut peers: Vec<_> = links.iter().collect();
        if peers.is_empty() {
            return;
        }
        peers.sort_by_key(|(id, _)| **id);
        out.push_str(
            "# HELP kuberaft_peer_round_trip_time_seconds round trip of heartbeat and append batches on the stream to a peer\n\
             # TYPE kuberaft_peer_round_trip_time_seconds histogram\n",
        );
        for (id, link) in peers {
            link.histogram.write_prometheus(
                out,
                "kuberaft_peer_round_trip_time_seconds",
                &format!("peer=\"{id:x}\""),
            );
        }
    }
}

/// The probes of one stream, on the sending side. A new stream starts a new prober.
#[derive(Debug)]
pub struct Prober {
    next: u64,
    in_flight: VecDeque<(u64, Instant)>,
    last_probe_at: Option<Instant>,
}

impl Default for Prober {
    fn default() -> Self {
        Prober {
            next: 1,
            in_flight: VecDeque::new(),
            last_probe_at: None,
        }
    }
}

impl Prober {
    /// The probe number to put on a batch about to be sent at `now` (0: none). Only
    /// batches that carry heartbeats or appends are probed, at most one per
    /// [`PROBE_INTERVAL_MIN`].
    pub fn probe(&mut self, now: Instant, carries_heartbeat_or_append: bool) -> u64 {
        if !carries_heartbeat_or_append
            || self
                .last_probe_at
                .is_some_and(|at| now.saturating_duration_since(at) < PROBE_INTERVAL_MIN)
        {
            return 0;
        }
        if self.in_flight.len() == PROBES_IN_FLIGHT_MAX {
            self.in_flight.pop_front();
        }
        let probe = self.next;
        self.next += 1;
        self.in_flight.push_back((probe, now));
        self.last_probe_at = Some(now);
        probe
    }

    /// The round trip of `probe`, echoed at `now`; `None` for an echo of nothing
    /// awaited. Probes sent before it and still awaited are lost.
    pub fn echoed(&mut self, probe: u64, now: Instant) -> Option<Duration> {
        while let Some(&(number, sent_at)) = self.in_flight.front() {
            if number > probe {
                return None;
            }
            self.in_flight.pop_front();
            if number == probe {
                return Some(now.saturating_duration_since(sent_at));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_gives_the_round_trip_of_its_own_probe_and_drops_older_lost_ones() {
        let start = Instant::now();
        let mut prober = Prober::default();
        let first = prober.probe(start, true);
        assert_eq!(
            prober.probe(start + Duration::from_millis(1), true),
            0,
            "too soon"
        );
        assert_eq!(
            prober.probe(start + Duration::from_millis(20), false),
            0,
            "nothing to time"
        );
        let second = prober.probe(start + Duration::from_millis(20), true);
        let third = prober.probe(start + Duration::from_millis(40), true);
        assert!(first < second && second < third);
        // The first echo never came; the second's answers for itself only.
        assert_eq!(
            prober.echoed(second, start + Duration::from_millis(25)),
            Some(Duration::from_millis(5))
        );
        assert_eq!(prober.echoed(first, start + Duration::from_millis(26)), None);
        assert_eq!(
            prober.echoed(second, start + Duration::from_millis(26)),
            None,
            "once"
        );
        assert_eq!(
            prober.echoed(third, start + Duration::from_millis(47)),
            Some(Duration::from_millis(7))
        );
    }

    #[test]
    fn probes_in_flight_are_bounded() {
        let start = Instant::now();
        let mut prober = Prober::default();
        let probes: Vec<u64> = (0..PROBES_IN_FLIGHT_MAX as u64 + 10)
            .map(|i| prober.probe(start + PROBE_INTERVAL_MIN * i as u32, true))
            .collect();
        assert!(prober.in_flight.len() <= PROBES_IN_FLIGHT_MAX);
        assert_eq!(
            prober.echoed(probes[0], start + Duration::from_secs(5)),
            None,
            "forgotten"
        );
        assert!(prober
            .echoed(*probes.last().unwrap(), start + Duration::from_secs(5))
            .is_some());
    }

    #[test]
    fn a_link_reports_its_window_and_its_back_off() {
        let links = PeerLinks::default();
        let now = Instant::now();
        assert!(links.status(7, now).is_none());
        links.stream_down(7, now + Duration::from_millis(300));
        links.stream_down(7, now + Duration::from_millis(400));
        let down = links.status(7, now).unwrap();
        assert!(!down.stream_up);
        assert_eq!(down.reconnect_failures, 2);
        assert_eq!(down.backoff_remaining, Duration::from_millis(400));
        links.stream_up(7);
        for ms in [2, 4, 6] {
            links.record_rtt(7, now, Duration::from_millis(ms));
        }
        let up = links.status(7, now).unwrap();
        assert!(up.stream_up);
        assert_eq!((up.reconnect_failures, up.backoff_remaining), (0, Duration::ZERO));
        assert_eq!((up.rtt.samples, up.rtt_samples_total), (3, 3));
        assert_eq!(up.rtt.p50_ms.round() as u64, 4);
        let mut out = String::new();
        links.write_prometheus(&mut out);
        assert!(
            out.contains("kuberaft_peer_round_trip_time_seconds_count{peer=\"7\"} 3"),
            "{out}"
        );
    }
}
