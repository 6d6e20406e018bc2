//! Micro-benchmark of the consensus core alone: a 3-member cluster in one thread,
//! messages delivered in memory, persistence reported at once (no I/O at all).
//!
//! Prints simulated cluster steps per second (a step is one input handed to one
//! core: a tick, a message, a proposal or a persistence report) and committed
//! entries per CPU second, for proposals arriving one at a time and in batches.
//! Figures are reported, never asserted.
//!
//!     cargo bench -p kuberaft-node --bench core

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use kuberaft_node::raft::{Command, Config, Message, RaftCore, Role, Timing};

/// CPU time of this thread in nanoseconds (Linux: /proc/thread-self/schedstat).
fn thread_cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

struct Cluster {
    cores: Vec<RaftCore>,
    queue: VecDeque<Message>,
    steps: u64,
    applied: u64,
}

impl Cluster {
    fn new() -> Self {
        let voters = [1, 2, 3];
        let cores = voters
            .iter()
            .map(|&id| {
                let mut cfg = Config::new(id);
                cfg.timing = Timing {
                    heartbeat_ticks: 1,
                    election_ticks: 10,
                };
                cfg.snapshot_entries = 0;
                cfg.max_uncommitted_entries = 1 << 20;
                RaftCore::bootstrap(cfg, &voters).expect("bootstrap")
            })
            .collect();
        let mut cluster = Cluster {
            cores,
            queue: VecDeque::new(),
            steps: 0,
            applied: 0,
        };
        for i in 0..3 {
            cluster.drain(i);
        }
        while cluster.cores[0].role() != Role::Leader {
            cluster.cores[0].tick();
            cluster.steps += 1;
            cluster.drain(0);
            cluster.deliver();
        }
        cluster
    }

    fn drain(&mut self, i: usize) {
        loop {
            let commands = self.cores[i].take_commands();
            if commands.is_empty() {
                return;
            }
            for command in commands {
                match command {
                    Command::Persist { seq, .. } => {
                        self.cores[i].persisted(seq);
                        self.steps += 1;
                    }
                    Command::Send(m) => self.queue.push_back(m),
                    Command::Apply(entries) if i == 0 => self.applied += entries.len() as u64,
                    _ => {}
                }
            }
        }
    }

    fn deliver(&mut self) {
        while let Some(m) = self.queue.pop_front() {
            let to = (m.to - 1) as usize;
            self.cores[to].step(m);
            self.steps += 1;
            self.drain(to);
        }
    }
}

fn run(batch: usize, entries: u64) {
    let mut cluster = Cluster::new();
    let payload = Bytes::from(vec![7u8; 256]);
    let (steps0, applied0) = (cluster.steps, cluster.applied);
    let cpu0 = thread_cpu_ns();
    let wall = Instant::now();
    let mut proposed = 0;
    while proposed < entries {
        for _ in 0..batch {
            cluster.cores[0].propose(payload.clone()).expect("leader accepts");
            cluster.steps += 1;
        }
        proposed += batch as u64;
        cluster.drain(0);
        cluster.deliver();
        if proposed % (batch as u64 * 16) == 0 {
            for i in 0..3 {
                cluster.cores[i].tick();
                cluster.steps += 1;
                cluster.drain(i);
            }
            cluster.deliver();
        }
    }
    let wall = wall.elapsed().as_secs_f64();
    let cpu = match (cpu0, thread_cpu_ns()) {
        (Some(a), Some(b)) => (b - a) as f64 / 1e9,
        _ => wall,
    };
    let steps = cluster.steps - steps0;
    let committed = cluster.applied - applied0;
    assert_eq!(committed, proposed, "every proposal committed");
    println!(
        "batch {batch:>4}: {:>10.0} cluster steps/s  {:>10.0} committed entries per CPU second  ({committed} entries, {steps} steps, {cpu:.2} CPU s)",
        steps as f64 / wall,
        committed as f64 / cpu
    );
}

fn main() {
    println!("kuberaft consensus core, 3 members in one thread, no I/O, 256-byte entries");
    for batch in [1, 16, 256] {
        run(batch, 200_000);
    }
}
