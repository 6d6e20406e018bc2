//! Watches: the events of the history, and the set of watchers of one stream.
//!
//! Every watcher reads its events from the MVCC history, whether they are old or
//! new: a watcher holds the next revision it has to report, and each round it reads
//! the revisions from there up to the store's current one. There is no second,
//! "live" path fed by the apply loop, so the switch from history to live events
//! cannot lose or repeat one, and a member serves the same events in the same order
//! as any other (the history is the replicated state). A slow watcher buffers
//! nothing: it simply stays behind in the history (etcd's "unsynced" watchers) and
//! is canceled with the compact revision if a compaction overtakes it.
//!
//! The store records the keys written at each revision, in write order, from the
//! compacted revision on (`KvStore::changes`); an event is built from the key's
//! history. Compaction keeps the tombstone at the compacted revision, so a watch from
//! the compacted revision still sees every event at it (as in etcd, `prev_kv` of an
//! event at the compacted revision may be missing: the version before it is gone).

use std::collections::BTreeMap;
use std::io::{Read, Write};

use bytes::{BufMut, Bytes, BytesMut};
use imbl::OrdMap;

use super::{in_range, put_field, CodecError, KeyValue, KvStore, Version, FIELD_BYTES_MAX};

/// Most watchers one stream may hold.
pub const WATCHERS_PER_STREAM_MAX: usize = 1024;

/// A change to one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// After a put: the new version. After a delete: the key, with `mod_revision` set
    /// to the deleting revision and every other field zero (as etcd reports it).
    pub kv: KeyValue,
    /// The version before the change, when the watcher asked for it and the history
    /// still holds it.
    pub prev: Option<KeyValue>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

impl KvStore {
    /// The keys written at each revision of `[from, through]`, in revision order and,
    /// within a revision, in the order they were written.
    pub fn changes(&self, from: i64, through: i64) -> impl Iterator<Item = (i64, &Bytes)> + '_ {
        let from = from.max(1);
        let keys = if from > through {
            None
        } else {
            Some(self.changes.range(from..=through))
        };
        keys.into_iter()
            .flatten()
            .flat_map(|(revision, keys)| keys.iter().map(move |key| (*revision, key)))
    }

    /// The event of `key` at `revision` (which must be one of `changes`).
    pub fn event(&self, key: &Bytes, revision: i64, with_prev: bool) -> Event {
        let history = self.keys.get(key).expect("a changed key has a history");
        let at = history
            .binary_search_by(|v| v.revision().cmp(&revision))
            .expect("a change has its version");
        let prev = if with_prev && at > 0 {
            history[at - 1].live().map(|meta| self.key_value(key, meta))
        } else {
            None
        };
        match &history[at] {
            Version::Live(meta) => Event {
                kind: EventKind::Put,
                kv: self.key_value(key, meta),
                prev,
            },
            Version::Tombstone(revision) => Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: key.clone(),
                    value: Bytes::new(),
                    create_revision: 0,
                    mod_revision: *revision,
                    version: 0,
                    lease: 0,
                },
                prev,
            },
        }
    }

    pub(super) fn write_changes_section(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let mut section = BytesMut::new();
        section.put_slice(CHANGES_SECTION_TAG);
        section.put_u64_le(self.changes.len() as u64);
        out.write_all(&section)?;
        for (revision, keys) in self.changes.iter() {
            section.clear();
            section.put_i64_le(*revision);
            section.put_u64_le(keys.len() as u64);
            for key in keys.iter() {
                put_field(&mut section, key);
            }
            out.write_all(&section)?;
        }
        Ok(())
    }

    pub(super) fn read_changes_section(&mut self, input: &mut dyn Read) -> Result<(), CodecError> {
        let bad = |what: &str| CodecError::Snapshot(what.to_string());
        let io = |e: std::io::Error| CodecError::Snapshot(e.to_string());
        let read_u64 = |input: &mut dyn Read| -> Result<u64, CodecError> {
            let mut n = [0u8; 8];
            input.read_exact(&mut n).map_err(io)?;
            Ok(u64::from_le_bytes(n))
        };
        let mut tag = [0u8; CHANGES_SECTION_TAG.len()];
        input.read_exact(&mut tag).map_err(io)?;
        if tag != CHANGES_SECTION_TAG {
            return Err(bad("watch changes section missing"));
        }
        let count = read_u64(input)?;
        if count > (self.revision - self.compacted + 1) as u64 {
            return Err(bad("more changed revisions than revisions"));
        }
        let mut changes = OrdMap::new();
        let mut last = self.compacted - 1;
        for _ in 0..count {
            let revision = read_u64(input)? as i64;
            if revision <= last || revision > self.revision {
                return Err(bad("changed revisions out of order"));
            }
            last = revision;
            let keys = read_u64(input)?;
            if keys == 0 || keys > self.keys.len() as u64 {
                return Err(bad("changed key count out of range"));
            }
            let mut written = Vec::with_capacity((keys as usize).min(1024));
            for _ in 0..keys {
                let mut len = [0u8; 4];
                input.read_exact(&mut len).map_err(io)?;
                let len = u32::from_le_bytes(len) as u64;
                if len > FIELD_BYTES_MAX {
                    return Err(CodecError::TooLarge(len));
                }
                let mut key = vec![0u8; len as usize];
                input.read_exact(&mut key).map_err(io)?;
                // Share the key with its history rather than holding a second copy.
                let (key, history) = self
                    .keys
                    .get_key_value(key.as_slice())
                    .ok_or_else(|| bad("a changed key has no history"))?;
                if history.binary_search_by(|v| v.revision().cmp(&revision)).is_err() {
                    return Err(bad("a changed key has no version at its revision"));
                }
                written.push(key.clone());
            }
            changes.insert(revision, std::sync::Arc::new(written));
        }
        self.changes = changes;
        Ok(())
    }
}

const CHANGES_SECTION_TAG: &[u8] = b"CHANGES1";

/// What a client asks to watch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchSpec {
    pub key: Bytes,
    /// etcd's range end: empty for `key` alone, `[0]` for every key from `key` on.
    pub range_end: Bytes,
    /// First revision to report; 0: the next one.
    pub start_revision: i64,
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
    pub progress_notify: bool,
    /// The client's id for the watcher; 0: the set picks one.
    pub watch_id: i64,
}

/// What a stream sends, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// The watcher exists and reports every event from its start revision.
    Created { watch_id: i64, revision: i64 },
    /// The create request was refused (`created` and `canceled`, watch id -1, as
    /// etcd answers).
    Refused { reason: String, revision: i64 },
    /// The watcher is gone: canceled by the client, or overtaken by a compaction
    /// (then `compact_revision` is the compacted revision, as etcd reports it).
    Canceled {
        watch_id: i64,
        revision: i64,
        compact_revision: i64,
        reason: String,
    },
    /// Events of whole revisions; every event up to `revision` has been sent.
    Events {
        watch_id: i64,
        revision: i64,
        events: Vec<Event>,
    },
    /// Nothing new: every event up to `revision` has been sent (watch id -1: for
    /// every watcher of the stream).
    Progress { watch_id: i64, revision: i64 },
}

#[derive(Debug)]
struct Watcher {
    spec: WatchSpec,
    /// The next revision to report.
    next: i64,
}

impl Watcher {
    fn wants(&self, key: &[u8]) -> bool {
        in_range(key, &self.spec.key, &self.spec.range_end)
    }
}

/// The watchers of one stream. Pure: the caller hands it the store to read.
#[derive(Debug, Default)]
pub struct WatcherSet {
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    /// Where the next round starts, so every watcher gets its turn.
    cursor: i64,
}

/// How much one round may read and hand out.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Events per response (a revision's events are never split, so one response
    /// may hold more when a single revision does).
    pub events_per_response: usize,
    /// Key and value bytes per response (the same exception).
    pub bytes_per_response: usize,
    /// Revisions one watcher reads per round, matching or not.
    pub revisions_per_round: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            events_per_response: 1000,
            bytes_per_response: 1 << 20,
            revisions_per_round: 10_000,
        }
    }
}

impl WatcherSet {
    pub fn len(&self) -> usize {
        self.watchers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.watchers.is_empty()
    }

    /// Adds a watcher, as etcd 3.4 does: ids are the client's or the lowest free one
    /// counting from 0; a watch from the past is served from the history.
    pub fn create(&mut self, spec: WatchSpec, store: &KvStore) -> Output {
        let revision = store.revision();
        let refuse = |reason: &str| Output::Refused {
            reason: reason.to_string(),
            revision,
        };
        let range_end: &[u8] = &spec.range_end;
        if !range_end.is_empty() && range_end != [0] && spec.key >= spec.range_end {
            return refuse("mvcc: watcher range is empty");
        }
        if self.watchers.len() >= WATCHERS_PER_STREAM_MAX {
            return refuse("etcdserver: too many watchers on this stream");
        }
        let id = if spec.watch_id != 0 {
            if self.watchers.contains_key(&spec.watch_id) {
                return refuse("mvcc: duplicate watch ID provided on the WatchStream");
            }
            spec.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        };
        // As in etcd, only 0 means "from the next revision" (a negative start reads
        // whatever history is left, or is canceled like any compacted start).
        let next = if spec.start_revision != 0 {
            spec.start_revision
        } else {
            revision + 1
        };
        self.watchers.insert(id, Watcher { spec, next });
        Output::Created {
            watch_id: id,
            revision,
        }
    }

    /// Removes a watcher; `None` when there is none of that id (etcd then says
    /// nothing).
    pub fn cancel(&mut self, watch_id: i64, store: &KvStore) -> Option<Output> {
        self.watchers.remove(&watch_id).map(|_| Output::Canceled {
            watch_id,
            revision: store.revision(),
            compact_revision: 0,
            reason: String::new(),
        })
    }

    /// Is some watcher behind `store`?
    pub fn behind(&self, store: &KvStore) -> bool {
        self.watchers.values().any(|w| w.next <= store.revision())
    }

    /// One round: each watcher behind `store` reads at most one response's worth of
    /// its events. A watcher overtaken by a compaction is canceled.
    pub fn poll(&mut self, store: &KvStore, budget: Budget) -> Vec<Output> {
        let mut out = Vec::new();
        let ids: Vec<i64> = self
            .watchers
            .range(self.cursor..)
            .chain(self.watchers.range(..self.cursor))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let w = self.watchers.get_mut(&id).expect("listed");
            if w.next > store.revision() {
                continue;
            }
            if w.next < store.compacted() {
                self.watchers.remove(&id);
                out.push(Output::Canceled {
                    watch_id: id,
                    revision: store.revision(),
                    compact_revision: store.compacted(),
                    // etcd sets no reason: clients read the compact revision.
                    reason: String::new(),
                });
                continue;
            }
            let mut events = Vec::new();
            let mut bytes = 0;
            let mut reached = store.revision();
            let mut revisions = 0;
            let mut current = 0;
            for (revision, key) in store.changes(w.next, store.revision()) {
                if revision != current {
                    // Only between revisions: a response never splits one.
                    if events.len() >= budget.events_per_response
                        || bytes >= budget.bytes_per_response
                        || revisions >= budget.revisions_per_round
                    {
                        reached = current;
                        break;
                    }
                    current = revision;
                    revisions += 1;
                }
                if !w.wants(key) {
                    continue;
                }
                let event = store.event(key, revision, w.spec.prev_kv);
                let dropped = match event.kind {
                    EventKind::Put => w.spec.no_put,
                    EventKind::Delete => w.spec.no_delete,
                };
                if !dropped {
                    bytes += event.kv.key.len()
                        + event.kv.value.len()
                        + event.prev.as_ref().map_or(0, |p| p.value.len());
                    events.push(event);
                }
            }
            w.next = reached + 1;
            if !events.is_empty() {
                out.push(Output::Events {
                    watch_id: id,
                    revision: reached,
                    events,
                });
            }
            self.cursor = id + 1;
        }
        out
    }

    /// Progress notifications for the watchers that asked for them and have seen
    /// everything up to `store` (etcd's periodic progress notify).
    pub fn progress_notify(&self, store: &KvStore) -> Vec<Output> {
        self.watchers
            .iter()
            .filter(|(_, w)| w.spec.progress_notify && w.next > store.revision())
            .map(|(id, _)| Output::Progress {
                watch_id: *id,
                revision: store.revision(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{KvCommand, Txn, TxnOp};
    use crate::raft::types::Index;

    fn b(s: &str) -> Bytes {
        Bytes::from(s.to_string())
    }

    struct S {
        kv: KvStore,
        index: Index,
    }

    impl S {
        fn new() -> S {
            S {
                kv: KvStore::default(),
                index: 0,
            }
        }

        fn run(&mut self, command: KvCommand) {
            self.index += 1;
            self.kv.apply(self.index, &command);
        }

        fn put(&mut self, key: &str, value: &str) {
            self.run(KvCommand::Put {
                key: b(key),
                value: b(value),
                lease: 0,
                prev_kv: false,
            });
        }

        fn del(&mut self, key: &str, end: &str) {
            self.run(KvCommand::DeleteRange {
                key: b(key),
                range_end: b(end),
                prev_kv: false,
            });
        }
    }

    fn spec(key: &str, end: &str, start: i64) -> WatchSpec {
        WatchSpec {
            key: b(key),
            range_end: b(end),
            start_revision: start,
            ..WatchSpec::default()
        }
    }

    /// Polls until nothing is behind; answers the events as (kind, key, value, mod revision).
    fn drain(set: &mut WatcherSet, store: &KvStore, budget: Budget) -> Vec<Output> {
        let mut out = Vec::new();
        for _ in 0..10_000 {
            if !set.behind(store) {
                return out;
            }
            out.extend(set.poll(store, budget));
        }
        panic!("never caught up");
    }

    fn events_of(out: &[Output], id: i64) -> Vec<(EventKind, String, String, i64)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Events { watch_id, events, .. } if *watch_id == id => Some(events),
                _ => None,
            })
            .flatten()
            .map(|e| {
                (
                    e.kind,
                    String::from_utf8_lossy(&e.kv.key).into_owned(),
                    String::from_utf8_lossy(&e.kv.value).into_owned(),
                    e.kv.mod_revision,
                )
            })
            .collect()
    }

    #[test]
    fn a_watch_from_the_past_reports_history_then_live_events_without_gap_or_repeat() {
        let mut s = S::new();
        // Revision 1 is the empty store, as in etcd.
        s.put("a", "1"); // 2
        s.put("b", "1"); // 3
        s.put("a", "2"); // 4
        s.del("a", ""); // 5
        let mut set = WatcherSet::default();
        let created = set.create(spec("a", "", 1), &s.kv);
        assert_eq!(
            created,
            Output::Created {
                watch_id: 0,
                revision: 5
            }
        );
        let mut out = drain(&mut set, &s.kv, Budget::default());
        s.put("a", "3"); // 6
        s.put("c", "1"); // 7
        out.extend(drain(&mut set, &s.kv, Budget::default()));
        use EventKind::*;
        assert_eq!(
            events_of(&out, 0),
            vec![
                (Put, "a".into(), "1".into(), 2),
                (Put, "a".into(), "2".into(), 4),
                (Delete, "a".into(), "".into(), 5),
                (Put, "a".into(), "3".into(), 6),
            ]
        );
        // Headers say how far the watcher has seen: revision 7 too, which holds
        // nothing for it.
        assert!(matches!(out.last(), Some(Output::Events { revision: 7, .. })));
        assert!(
            !set.behind(&s.kv),
            "revision 7 does not concern the watcher but is passed"
        );
    }

    #[test]
    fn prefixes_from_key_filters_and_prev_kv_follow_etcd() {
        let mut s = S::new();
        let mut set = WatcherSet::default();
        let ids: Vec<i64> = [
            spec("p/", "p0", 0),
            spec("b", "\0", 0),
            WatchSpec {
                no_put: true,
                ..spec("p/", "p0", 0)
            },
            WatchSpec {
                no_delete: true,
                prev_kv: true,
                watch_id: 42,
                ..spec("p/", "p0", 0)
            },
        ]
        .into_iter()
        .map(|spec| match set.create(spec, &s.kv) {
            Output::Created { watch_id, .. } => watch_id,
            other => panic!("{other:?}"),
        })
        .collect();
        assert_eq!(ids, vec![0, 1, 2, 42]);
        s.put("p/x", "1");
        s.put("a", "1");
        s.put("p/x", "2");
        s.put("q", "1");
        s.del("p/", "p0");
        let out = drain(&mut set, &s.kv, Budget::default());
        use EventKind::*;
        assert_eq!(
            events_of(&out, 0),
            vec![
                (Put, "p/x".into(), "1".into(), 2),
                (Put, "p/x".into(), "2".into(), 4),
                (Delete, "p/x".into(), "".into(), 6),
            ]
        );
        assert_eq!(
            events_of(&out, 1),
            vec![
                (Put, "p/x".into(), "1".into(), 2),
                (Put, "p/x".into(), "2".into(), 4),
                (Put, "q".into(), "1".into(), 5),
                (Delete, "p/x".into(), "".into(), 6)
            ]
        );
        assert_eq!(events_of(&out, 2), vec![(Delete, "p/x".into(), "".into(), 6)]);
        assert_eq!(events_of(&out, 42).len(), 2);
        let prevs: Vec<Option<Bytes>> = out
            .iter()
            .filter_map(|o| match o {
                Output::Events {
                    watch_id: 42, events, ..
                } => Some(events),
                _ => None,
            })
            .flatten()
            .map(|e| e.prev.as_ref().map(|p| p.value.clone()))
            .collect();
        assert_eq!(prevs, vec![None, Some(b("1"))]);
    }

    #[test]
    fn a_txn_reports_its_writes_in_order_in_one_response() {
        let mut s = S::new();
        let mut set = WatcherSet::default();
        set.create(spec("a", "\0", 0), &s.kv);
        let put = |k: &str| TxnOp::Put {
            key: b(k),
            value: b("v"),
            lease: 0,
            prev_kv: false,
            ignore_value: false,
            ignore_lease: false,
        };
        s.run(KvCommand::Txn(Txn {
            compares: vec![],
            success: vec![put("z"), put("b"), put("m")],
            failure: vec![],
        }));
        let out = drain(&mut set, &s.kv, Budget::default());
        assert_eq!(out.len(), 1);
        let keys: Vec<String> = events_of(&out, 0).into_iter().map(|e| e.1).collect();
        assert_eq!(keys, vec!["z", "b", "m"]);
    }

    #[test]
    fn ids_are_the_clients_or_the_lowest_free_and_bad_requests_are_refused() {
        let s = S::new();
        let mut set = WatcherSet::default();
        assert!(matches!(
            set.create(spec("a", "", 0), &s.kv),
            Output::Created { watch_id: 0, .. }
        ));
        assert!(matches!(
            set.create(
                WatchSpec {
                    watch_id: 1,
                    ..spec("a", "", 0)
                },
                &s.kv
            ),
            Output::Created { watch_id: 1, .. }
        ));
        assert!(matches!(
            set.create(spec("a", "", 0), &s.kv),
            Output::Created { watch_id: 2, .. }
        ));
        let refused = set.create(
            WatchSpec {
                watch_id: 2,
                ..spec("a", "", 0)
            },
            &s.kv,
        );
        assert_eq!(
            refused,
            Output::Refused {
                reason: "mvcc: duplicate watch ID provided on the WatchStream".into(),
                revision: 1
            }
        );
        assert!(matches!(
            set.create(spec("b", "a", 0), &s.kv),
            Output::Refused { .. }
        ));
        assert!(matches!(
            set.cancel(1, &s.kv),
            Some(Output::Canceled {
                watch_id: 1,
                compact_revision: 0,
                ..
            })
        ));
        assert_eq!(set.cancel(1, &s.kv), None, "a second cancel says nothing");
        while set.len() < WATCHERS_PER_STREAM_MAX {
            assert!(matches!(
                set.create(spec("a", "", 0), &s.kv),
                Output::Created { .. }
            ));
        }
        assert!(matches!(
            set.create(spec("a", "", 0), &s.kv),
            Output::Refused { .. }
        ));
    }

    #[test]
    fn a_compacted_start_or_a_watcher_overtaken_by_compaction_is_canceled_with_the_compact_revision() {
        let mut s = S::new();
        for i in 0..10 {
            s.put("k", &i.to_string()); // revisions 2..=11
        }
        let mut set = WatcherSet::default();
        set.create(spec("k", "", 3), &s.kv); // id 0, behind
        s.run(KvCommand::Compact { revision: 5 });
        set.create(spec("k", "", 5), &s.kv); // id 1: at the compacted revision: served
        set.create(spec("k", "", 4), &s.kv); // id 2: below: canceled
        let out = drain(&mut set, &s.kv, Budget::default());
        let canceled: Vec<(i64, i64)> = out
            .iter()
            .filter_map(|o| match o {
                Output::Canceled {
                    watch_id,
                    compact_revision,
                    ..
                } => Some((*watch_id, *compact_revision)),
                _ => None,
            })
            .collect();
        assert_eq!(canceled, vec![(0, 5), (2, 5)]);
        let revisions: Vec<i64> = events_of(&out, 1).into_iter().map(|e| e.3).collect();
        assert_eq!(revisions, (5..=11).collect::<Vec<_>>());
    }

    #[test]
    fn a_delete_at_the_compacted_revision_is_still_reported() {
        let mut s = S::new();
        s.put("k", "1"); // 2
        s.del("k", ""); // 3
        s.run(KvCommand::Compact { revision: 3 });
        let mut set = WatcherSet::default();
        set.create(spec("k", "", 3), &s.kv);
        let out = drain(&mut set, &s.kv, Budget::default());
        assert_eq!(
            events_of(&out, 0),
            vec![(EventKind::Delete, "k".into(), "".into(), 3)]
        );
    }

    #[test]
    fn a_small_budget_splits_between_revisions_only_and_loses_nothing() {
        let mut s = S::new();
        let mut set = WatcherSet::default();
        set.create(spec("k", "\0", 1), &s.kv);
        set.create(spec("k", "\0", 1), &s.kv);
        for i in 0..50 {
            if i % 7 == 0 {
                s.del("k", "\0");
            } else {
                s.put(&format!("k{}", i % 4), &i.to_string());
            }
        }
        let budget = Budget {
            events_per_response: 2,
            bytes_per_response: 1 << 20,
            revisions_per_round: 3,
        };
        let small = drain(&mut set, &s.kv, budget);
        let mut again = WatcherSet::default();
        again.create(spec("k", "\0", 1), &s.kv);
        let whole = drain(&mut again, &s.kv, Budget::default());
        assert_eq!(events_of(&small, 0), events_of(&whole, 0));
        assert_eq!(events_of(&small, 1), events_of(&whole, 0));
        // Revisions strictly increase across responses; a revision is never split.
        let mut last = 0;
        for o in &small {
            if let Output::Events {
                events,
                revision,
                watch_id: 0,
            } = o
            {
                assert!(events.first().unwrap().kv.mod_revision > last);
                last = events.last().unwrap().kv.mod_revision;
                assert!(*revision >= last);
            }
        }
    }

    #[test]
    fn progress_notify_goes_only_to_watchers_that_asked_and_are_caught_up() {
        let mut s = S::new();
        let mut set = WatcherSet::default();
        set.create(
            WatchSpec {
                progress_notify: true,
                ..spec("k", "", 0)
            },
            &s.kv,
        );
        set.create(spec("k", "", 0), &s.kv);
        s.put("k", "1");
        assert!(set.progress_notify(&s.kv).is_empty(), "behind: events come first");
        drain(&mut set, &s.kv, Budget::default());
        assert_eq!(
            set.progress_notify(&s.kv),
            vec![Output::Progress {
                watch_id: 0,
                revision: 2
            }]
        );
    }

    #[test]
    fn the_order_of_writes_survives_a_snapshot() {
        let mut s = S::new();
        let put = |k: &str| TxnOp::Put {
            key: b(k),
            value: b("v"),
            lease: 0,
            prev_kv: false,
            ignore_value: false,
            ignore_lease: false,
        };
        s.put("x", "1");
        s.run(KvCommand::Txn(Txn {
            compares: vec![],
            success: vec![put("z"), put("b")],
            failure: vec![],
        }));
        s.del("b", "");
        let mut buf = Vec::new();
        s.kv.write_snapshot(&mut buf).unwrap();
        let restored = KvStore::read_snapshot(&mut buf.as_slice()).unwrap();
        let a: Vec<_> = s.kv.changes(1, 10).map(|(r, k)| (r, k.clone())).collect();
        let b: Vec<_> = restored.changes(1, 10).map(|(r, k)| (r, k.clone())).collect();
        assert_eq!(a, b);
        assert_eq!((a[0].0, a[1].0, a[1].1.clone()), (2, 3, Bytes::from("z")));
    }
}
