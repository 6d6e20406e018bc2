//! What `raftctl` shows, as pure functions over the admin API's answers, so that the
//! binary only dials and prints.
//!
//! `raftctl status` asks every endpoint for its `Status` and reads the cluster from
//! the answers: the leader is the member that says it leads (with the highest term
//! when two do, as during a partition), the lag of a member is how far its applied
//! index is behind the leader's commit index, and a member is healthy when it
//! answered, knows the current leader, is not far behind, and the leader hears from it.
//! The RTT of a member is the leader's view of its link to it (p99 over the leader's
//! window); fsync is each member's own WAL commit latency (p99 over its window).
//!
//! Every command's answer is also a JSON value, printed as JSON or YAML by `-o`.

use kuberaft_proto::admin::{
    Event, EventKind, LatencyStats, PeerStatus, Reachability, Role, StatusResponse, TimingInfo, TimingSource,
};
use kuberaft_proto::etcdserverpb::Member as EtcdMember;
use serde_json::{json, Value};

/// A member is reported `lagging` beyond this many entries behind the leader's commit.
pub const LAG_ENTRIES_HEALTHY_MAX: u64 = 1_000;

/// One endpoint's answer, or why it gave none.
#[derive(Clone, Debug)]
pub struct Probe {
    pub endpoint: String,
    pub answer: Result<StatusResponse, String>,
}

/// One row of `raftctl status`.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberRow {
    pub endpoint: String,
    pub id: Option<u64>,
    pub name: String,
    pub role: String,
    pub term: Option<u64>,
    pub commit: Option<u64>,
    pub applied: Option<u64>,
    /// Entries behind the leader's commit index; `None` when unknown.
    pub lag: Option<u64>,
    /// p99 round-trip time from the leader to this member, in ms; `None` for the
    /// leader itself and when the leader has no sample.
    pub rtt_p99_ms: Option<f64>,
    /// p99 of this member's recent WAL commits, in ms; `None` without a sample.
    pub fsync_p99_ms: Option<f64>,
    pub health: String,
}

pub fn role_name(role: i32) -> &'static str {
    match Role::try_from(role).unwrap_or(Role::Unspecified) {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::PreCandidate => "pre-candidate",
        Role::Learner => "learner",
        Role::Unspecified => "unknown",
    }
}

pub fn source_name(source: i32) -> &'static str {
    match TimingSource::try_from(source).unwrap_or(TimingSource::Unspecified) {
        TimingSource::Flags => "flags",
        TimingSource::Admin => "admin",
        TimingSource::Log => "log",
        TimingSource::Unspecified => "unknown",
    }
}

/// The leader's answer, when the leader is among the probes.
pub fn leader_of(probes: &[Probe]) -> Option<&StatusResponse> {
    probes
        .iter()
        .filter_map(|p| p.answer.as_ref().ok())
        .filter(|s| s.role == Role::Leader as i32)
        .max_by_key(|s| s.term)
}

pub fn rows(probes: &[Probe]) -> Vec<MemberRow> {
    let leader = leader_of(probes);
    probes
        .iter()
        .map(|probe| match &probe.answer {
            Err(error) => MemberRow {
                endpoint: probe.endpoint.clone(),
                id: None,
                name: String::new(),
                role: "-".into(),
                term: None,
                commit: None,
                applied: None,
                lag: None,
                rtt_p99_ms: None,
                fsync_p99_ms: None,
                health: format!("unreachable: {error}"),
            },
            Ok(status) => {
                let lag = leader.map(|l| l.commit_index.saturating_sub(status.applied_index));
                let seen_by_leader: Option<&PeerStatus> =
                    leader.and_then(|l| l.peers.iter().find(|p| p.id == status.id));
                let health = if status.role == Role::Leader as i32 {
                    if leader.is_some_and(|l| l.id == status.id) {
                        "healthy".to_string()
                    } else {
                        "stale leader".to_string()
                    }
                } else if status.leader_id == 0 {
                    "no leader".to_string()
                } else if leader.is_some_and(|l| l.id != status.leader_id) {
                    "stale leader view".to_string()
                } else if lag.is_some_and(|lag| lag > LAG_ENTRIES_HEALTHY_MAX) {
                    "lagging".to_string()
                } else {
                    match seen_by_leader.map(|p| Reachability::try_from(p.reachability)) {
                        Some(Ok(Reachability::Failed)) => "unreachable from leader".to_string(),
                        Some(Ok(Reachability::Suspect)) => "slow".to_string(),
                        _ => "healthy".to_string(),
                    }
                };
                MemberRow {
                    endpoint: probe.endpoint.clone(),
                    id: Some(status.id),
                    name: status.name.clone(),
                    role: role_name(status.role).to_string(),
                    term: Some(status.term),
                    commit: Some(status.commit_index),
                    applied: Some(status.applied_index),
                    lag,
                    rtt_p99_ms: seen_by_leader.and_then(|p| p99_ms(p.rtt.as_ref())),
                    fsync_p99_ms: p99_ms(status.fsync.as_ref()),
                    health,
                }
            }
        })
        .collect()
}

/// Left-aligned columns separated by two spaces, a header first.
pub fn render(header: &[&str], lines: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for line in lines {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    let all = std::iter::once(header.iter().map(|h| h.to_string()).collect::<Vec<_>>())
        .chain(lines.iter().cloned());
    for line in all {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn cell(value: Option<u64>) -> String {
    value.map_or("-".to_string(), |v| v.to_string())
}

fn p99_ms(stats: Option<&LatencyStats>) -> Option<f64> {
    stats.filter(|s| s.samples > 0).map(|s| s.p99_ms)
}

/// Milliseconds for people: three significant digits at most, unit attached.
pub fn ms_cell(value: Option<f64>) -> String {
    match value {
        None => "-".into(),
        Some(ms) if ms < 10.0 => format!("{ms:.2}ms"),
        Some(ms) if ms < 100.0 => format!("{ms:.1}ms"),
        Some(ms) => format!("{ms:.0}ms"),
    }
}

pub fn status_table(probes: &[Probe]) -> String {
    let lines: Vec<Vec<String>> = rows(probes)
        .into_iter()
        .map(|r| {
            vec![
                r.endpoint,
                r.id.map_or("-".to_string(), |id| format!("{id:x}")),
                if r.name.is_empty() { "-".into() } else { r.name },
                r.role,
                cell(r.term),
                cell(r.commit),
                cell(r.applied),
                cell(r.lag),
                ms_cell(r.rtt_p99_ms),
                ms_cell(r.fsync_p99_ms),
                r.health,
            ]
        })
        .collect();
    let mut out = render(
        &[
            "ENDPOINT",
            "ID",
            "NAME",
            "ROLE",
            "TERM",
            "COMMIT",
            "APPLIED",
            "LAG",
            "RTT_P99",
            "FSYNC_P99",
            "HEALTH",
        ],
        &lines,
    );
    out.push('\n');
    match leader_of(probes) {
        Some(leader) => {
            out.push_str(&format!(
                "leader {} ({:x}), term {}",
                leader.name, leader.id, leader.term
            ));
            if let Some(timing) = &leader.timing {
                out.push_str(&format!("; timing {}", describe_timing(timing)));
            }
            out.push('\n');
        }
        None => out.push_str("no leader among the members that answered\n"),
    }
    out
}

pub fn describe_timing(timing: &TimingInfo) -> String {
    let mut text = format!(
        "heartbeat {} ms, election {} ms (from {}",
        timing.heartbeat_interval_ms,
        timing.election_timeout_ms,
        source_name(timing.source)
    );
    if timing.index > 0 {
        text.push_str(&format!(", entry {}", timing.index));
    }
    text.push(')');
    text
}

pub fn timing_table(probes: &[Probe]) -> String {
    let lines: Vec<Vec<String>> = probes
        .iter()
        .map(|p| match &p.answer {
            Ok(s) => {
                let t = s.timing.unwrap_or_default();
                vec![
                    p.endpoint.clone(),
                    s.name.clone(),
                    t.heartbeat_interval_ms.to_string(),
                    t.election_timeout_ms.to_string(),
                    source_name(t.source).to_string(),
                    t.index.to_string(),
                ]
            }
            Err(e) => vec![
                p.endpoint.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                format!("unreachable: {e}"),
                "-".into(),
            ],
        })
        .collect();
    render(
        &[
            "ENDPOINT",
            "NAME",
            "HEARTBEAT_MS",
            "ELECTION_MS",
            "SOURCE",
            "INDEX",
        ],
        &lines,
    )
}

pub fn timing_json(timing: &TimingInfo) -> Value {
    json!({
        "heartbeat_interval_ms": timing.heartbeat_interval_ms,
        "election_timeout_ms": timing.election_timeout_ms,
        "source": source_name(timing.source),
        "index": timing.index,
        "since_unix_ms": timing.since_unix_ms,
        "tick_ms": timing.tick_ms,
    })
}

/// `raftctl status -o json`: one object per endpoint, with the computed lag and health.
pub fn status_json(probes: &[Probe]) -> Value {
    let rows = rows(probes);
    let members: Vec<Value> = probes
        .iter()
        .zip(rows)
        .map(|(probe, row)| match &probe.answer {
            Err(error) => json!({ "endpoint": probe.endpoint, "error": error, "health": row.health }),
            Ok(s) => json!({
                "endpoint": probe.endpoint,
                "id": format!("{:x}", s.id),
                "name": s.name,
                "role": row.role,
                "term": s.term,
                "leader_id": format!("{:x}", s.leader_id),
                "commit_index": s.commit_index,
                "applied_index": s.applied_index,
                "last_log_index": s.last_log_index,
                "first_log_index": s.first_log_index,
                "snapshot_index": s.snapshot_index,
                "lag": row.lag,
                "rtt_p99_ms": row.rtt_p99_ms,
                "fsync_p99_ms": row.fsync_p99_ms,
                "health": row.health,
                "voters": s.voters.iter().map(|v| format!("{v:x}")).collect::<Vec<_>>(),
                "learners": s.learners.iter().map(|v| format!("{v:x}")).collect::<Vec<_>>(),
                "fsync": s.fsync.as_ref().map(latency_json),
                "timing": s.timing.as_ref().map(timing_json),
                "peers": s.peers.iter().map(|p| json!({
                    "id": format!("{:x}", p.id),
                    "name": p.name,
                    "learner": p.learner,
                    "match_index": p.match_index,
                    "next_index": p.next_index,
                    "inflight": p.inflight,
                    "replication_state": p.replication_state().as_str_name(),
                    "reachability": p.reachability().as_str_name(),
                    "last_contact_ms": p.last_contact_ms,
                    "rtt": p.rtt.as_ref().map(latency_json),
                    "stream_up": p.stream_up,
                    "reconnect_failures": p.reconnect_failures,
                    "backoff_ms": p.backoff_ms,
                })).collect::<Vec<_>>(),
                "revision": s.revision,
                "uptime_seconds": s.uptime_seconds,
                "version": s.version,
            }),
        })
        .collect();
    Value::Array(members)
}

/// `raftctl member list`: one row per member, sorted by id as the server lists them.
pub fn members_table(members: &[EtcdMember]) -> String {
    let lines: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            vec![
                format!("{:x}", m.id),
                if m.name.is_empty() {
                    "-".into()
                } else {
                    m.name.clone()
                },
                if m.name.is_empty() { "unstarted" } else { "started" }.into(),
                if m.is_learner { "learner" } else { "voter" }.into(),
                m.peer_ur_ls.join(","),
                if m.client_ur_ls.is_empty() {
                    "-".into()
                } else {
                    m.client_ur_ls.join(",")
                },
            ]
        })
        .collect();
    render(
        &["ID", "NAME", "STATUS", "ROLE", "PEER_URLS", "CLIENT_URLS"],
        &lines,
    )
}

pub fn member_json(m: &EtcdMember) -> Value {
    json!({
        "id": format!("{:x}", m.id),
        "name": m.name,
        "started": !m.name.is_empty(),
        "learner": m.is_learner,
        "peer_urls": m.peer_ur_ls,
        "client_urls": m.client_ur_ls,
    })
}

/// The member a user means by `who`: a name, or an id in hex (as etcdctl and
/// `member list` print it, with or without `0x`). A name wins over an id that reads
/// the same.
pub fn resolve_member(members: &[EtcdMember], who: &str) -> Result<u64, String> {
    let by_name: Vec<&EtcdMember> = members
        .iter()
        .filter(|m| !m.name.is_empty() && m.name == who)
        .collect();
    match by_name.as_slice() {
        [one] => return Ok(one.id),
        [] => {}
        _ => {
            return Err(format!(
                "{who:?} names {} members; give the id instead",
                by_name.len()
            ))
        }
    }
    let hex = who.strip_prefix("0x").unwrap_or(who);
    if let Ok(id) = u64::from_str_radix(hex, 16) {
        if members.iter().any(|m| m.id == id) {
            return Ok(id);
        }
    }
    let known: Vec<String> = members
        .iter()
        .map(|m| {
            if m.name.is_empty() {
                format!("{:x}", m.id)
            } else {
                format!("{} ({:x})", m.name, m.id)
            }
        })
        .collect();
    Err(format!(
        "no member named or with id {who:?} (members: {})",
        known.join(", ")
    ))
}

/// The `--initial-cluster` a member added as `name` is started with: every member
/// with a name and peer URL, plus the new one.
pub fn initial_cluster_for(members: &[EtcdMember], added_id: u64, name: &str) -> String {
    members
        .iter()
        .filter_map(|m| {
            let label = if m.id == added_id { name } else { m.name.as_str() };
            (!label.is_empty()).then(|| m.peer_ur_ls.iter().map(move |url| format!("{label}={url}")))
        })
        .flatten()
        .collect::<Vec<_>>()
        .join(",")
}

pub fn latency_json(stats: &LatencyStats) -> Value {
    json!({
        "ewma_ms": stats.ewma_ms,
        "p50_ms": stats.p50_ms,
        "p99_ms": stats.p99_ms,
        "samples": stats.samples,
        "window_ms": stats.window_ms,
    })
}

pub fn event_kind_name(kind: i32) -> &'static str {
    match EventKind::try_from(kind).unwrap_or(EventKind::Unspecified) {
        EventKind::Join => "JOIN",
        EventKind::Leave => "LEAVE",
        EventKind::Promoted => "PROMOTED",
        EventKind::Failure => "FAILURE",
        EventKind::Recovered => "RECOVERED",
        EventKind::LeaderChanged => "LEADER_CHANGED",
        EventKind::TimingChanged => "TIMING_CHANGED",
        EventKind::Snapshot => "SNAPSHOT",
        EventKind::Unspecified => "UNKNOWN",
    }
}

/// `raftctl events -o json|yaml`: one object per event.
pub fn event_json(event: &Event) -> Value {
    json!({
        "kind": event_kind_name(event.kind),
        "time_unix_ms": event.time_unix_ms,
        "term": event.term,
        "index": event.index,
        "member_id": format!("{:x}", event.member_id),
        "member_name": event.member_name,
        "reporter_id": format!("{:x}", event.reporter_id),
        "timing": event.timing.as_ref().map(timing_json),
        "detail": event.detail,
    })
}

/// One event, in the columns of [`event_header`].
pub fn event_line(event: &Event) -> String {
    let time = u64::try_from(event.time_unix_ms).unwrap_or(0);
    let (seconds, millis) = (time / 1000, time % 1000);
    let (h, m, s) = ((seconds / 3600) % 24, (seconds / 60) % 60, seconds % 60);
    let member = if event.member_name.is_empty() {
        format!("{:x}", event.member_id)
    } else {
        event.member_name.clone()
    };
    format!(
        "{h:02}:{m:02}:{s:02}.{millis:03}Z  {:<14}  {:<8}  {:>5}  {:>8}  {}",
        event_kind_name(event.kind),
        member,
        event.term,
        event.index,
        event.detail
    )
}

/// The header above [`event_line`]s.
pub fn event_header() -> String {
    format!(
        "{:<13}  {:<14}  {:<8}  {:>5}  {:>8}  DETAIL",
        "TIME (UTC)", "KIND", "MEMBER", "TERM", "INDEX"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, name: &str, role: Role, leader: u64, commit: u64, applied: u64) -> Probe {
        Probe {
            endpoint: format!("127.0.0.1:{}", 2379 + id),
            answer: Ok(StatusResponse {
                id,
                name: name.into(),
                role: role as i32,
                term: 3,
                leader_id: leader,
                commit_index: commit,
                applied_index: applied,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn lag_is_measured_against_the_leaders_commit_and_unreachable_members_stay_in_the_table() {
        let probes = vec![
            member(1, "a", Role::Leader, 1, 5000, 5000),
            member(2, "b", Role::Follower, 1, 4990, 4990),
            member(3, "c", Role::Follower, 1, 2000, 1500),
            Probe {
                endpoint: "127.0.0.1:9".into(),
                answer: Err("connection refused".into()),
            },
        ];
        let rows = rows(&probes);
        assert_eq!(rows[0].health, "healthy");
        assert_eq!(rows[1].lag, Some(10));
        assert_eq!(rows[1].health, "healthy");
        assert_eq!(rows[2].lag, Some(3500));
        assert_eq!(rows[2].health, "lagging");
        assert_eq!(rows[3].health, "unreachable: connection refused");
        let table = status_table(&probes);
        assert_eq!(table.lines().filter(|l| l.contains(" leader ")).count(), 1);
        assert!(table.contains("leader a (1), term 3"), "{table}");
    }

    #[test]
    fn the_rtt_column_shows_the_leaders_view_of_each_follower() {
        let mut probes = vec![
            member(1, "a", Role::Leader, 1, 50, 50),
            member(2, "b", Role::Follower, 1, 50, 50),
            member(3, "c", Role::Follower, 1, 50, 50),
        ];
        let rtt = |p99_ms, samples| LatencyStats {
            p99_ms,
            samples,
            ..Default::default()
        };
        if let Ok(leader) = &mut probes[0].answer {
            leader.peers = vec![
                PeerStatus {
                    id: 2,
                    rtt: Some(rtt(1.234, 10)),
                    reachability: Reachability::Ok as i32,
                    ..Default::default()
                },
                PeerStatus {
                    id: 3,
                    rtt: Some(rtt(0.0, 0)),
                    reachability: Reachability::Ok as i32,
                    ..Default::default()
                },
            ];
        }
        if let Ok(b) = &mut probes[1].answer {
            b.fsync = Some(rtt(4.5, 3));
        }
        let rows = rows(&probes);
        assert_eq!(rows[0].rtt_p99_ms, None, "the leader has no link to itself");
        assert_eq!(rows[1].rtt_p99_ms, Some(1.234));
        assert_eq!(rows[2].rtt_p99_ms, None, "no sample yet");
        assert_eq!(rows[1].fsync_p99_ms, Some(4.5));
        let table = status_table(&probes);
        let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
        let b: Vec<&str> = table.lines().nth(2).unwrap().split_whitespace().collect();
        let column = header.iter().position(|h| *h == "RTT_P99").unwrap();
        assert_eq!(b[column], "1.23ms", "{table}");
        assert_eq!(b[column + 1], "4.50ms", "{table}");
    }

    #[test]
    fn an_event_line_names_the_kind_the_member_and_the_position_in_the_log() {
        let event = Event {
            kind: EventKind::Failure as i32,
            time_unix_ms: 3_723_004, // 01:02:03.004 on the first day
            term: 7,
            index: 42,
            member_id: 0xab,
            member_name: "m2".into(),
            reporter_id: 1,
            timing: None,
            detail: "m2 silent for 1200 ms".into(),
        };
        let line = event_line(&event);
        assert!(line.starts_with("01:02:03.004Z  FAILURE "), "{line}");
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(&words[1..5], ["FAILURE", "m2", "7", "42"], "{line}");
        assert_eq!(event_json(&event)["kind"], "FAILURE");
        assert_eq!(event_json(&event)["member_id"], "ab");
    }

    #[test]
    fn without_an_answering_leader_lag_is_unknown() {
        let probes = vec![member(2, "b", Role::Follower, 1, 10, 10)];
        assert_eq!(rows(&probes)[0].lag, None);
        assert!(status_table(&probes).contains("no leader among the members that answered"));
    }

    fn etcd_member(id: u64, name: &str, learner: bool) -> EtcdMember {
        EtcdMember {
            id,
            name: name.into(),
            peer_ur_ls: vec![format!("http://127.0.0.1:{}", 2380 + id)],
            client_ur_ls: if name.is_empty() {
                vec![]
            } else {
                vec![format!("http://127.0.0.1:{}", 2379 + id)]
            },
            is_learner: learner,
        }
    }

    #[test]
    fn members_are_found_by_name_or_hex_id_and_a_miss_lists_the_members() {
        let members = vec![etcd_member(0xab, "a", false), etcd_member(0x1f, "", true)];
        assert_eq!(resolve_member(&members, "a"), Ok(0xab));
        assert_eq!(resolve_member(&members, "1f"), Ok(0x1f));
        assert_eq!(resolve_member(&members, "0xab"), Ok(0xab));
        let error = resolve_member(&members, "zz").unwrap_err();
        assert!(error.contains("a (ab)") && error.contains("1f"), "{error}");
        let table = members_table(&members);
        assert!(table.lines().nth(1).unwrap().contains("started"), "{table}");
        assert!(table.lines().nth(2).unwrap().contains("unstarted"), "{table}");
        assert_eq!(
            initial_cluster_for(&members, 0x1f, "new"),
            "a=http://127.0.0.1:2551,new=http://127.0.0.1:2411"
        );
    }
}
