//! The replicated state machine: a multi-version key-value store.
//!
//! Every applied write bumps one global revision, as in etcd; each key carries its
//! create revision, mod revision and version. The map is a persistent (structurally
//! shared) ordered map, so taking a snapshot is an O(1) clone that the snapshot task
//! serialises while writes continue.
//!
//! Commands reach the store through the Raft log in the encoding of [`KvCommand`];
//! the log format is ours and does not change when the client API does.
//!
//! History for reads at old revisions, Txn, leases and watches arrive with the etcd
//! API issue; today the store keeps the latest version of each key.

use std::io::{Read, Write};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use imbl::OrdMap;

use crate::raft::types::Index;

/// One key's current version, as etcd reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Bytes,
    pub value: Bytes,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

/// A write, as it travels through the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvCommand {
    Put {
        key: Bytes,
        value: Bytes,
        lease: i64,
        prev_kv: bool,
    },
    /// Deletes `key`, or the range `[key, range_end)` when `range_end` is not empty
    /// (`range_end == [0]` means every key from `key` on), as etcd defines it.
    DeleteRange {
        key: Bytes,
        range_end: Bytes,
        prev_kv: bool,
    },
}

/// What a write did, for the client that asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvResult {
    Put {
        revision: i64,
        prev: Option<KeyValue>,
    },
    DeleteRange {
        revision: i64,
        deleted: i64,
        prev: Vec<KeyValue>,
    },
}

impl KvResult {
    pub fn revision(&self) -> i64 {
        match self {
            KvResult::Put { revision, .. } | KvResult::DeleteRange { revision, .. } => *revision,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("command is truncated")]
    Truncated,
    #[error("unknown command type {0}")]
    UnknownType(u8),
    #[error("field of {0} bytes is over the limit")]
    TooLarge(u64),
    #[error("snapshot data is malformed: {0}")]
    Snapshot(String),
}

/// Upper bound of one key or value inside a command or a snapshot record; anything
/// larger is refused before it is allocated.
pub const FIELD_BYTES_MAX: u64 = 64 << 20;

fn put_field(out: &mut BytesMut, data: &[u8]) {
    out.put_u32_le(data.len() as u32);
    out.put_slice(data);
}

fn get_field(buf: &mut Bytes) -> Result<Bytes, CodecError> {
    if buf.remaining() < 4 {
        return Err(CodecError::Truncated);
    }
    let len = buf.get_u32_le() as u64;
    if len > FIELD_BYTES_MAX {
        return Err(CodecError::TooLarge(len));
    }
    if (buf.remaining() as u64) < len {
        return Err(CodecError::Truncated);
    }
    Ok(buf.split_to(len as usize))
}

fn get_u8(buf: &mut Bytes) -> Result<u8, CodecError> {
    if buf.remaining() < 1 {
        return Err(CodecError::Truncated);
    }
    Ok(buf.get_u8())
}

fn get_i64(buf: &mut Bytes) -> Result<i64, CodecError> {
    if buf.remaining() < 8 {
        return Err(CodecError::Truncated);
    }
    Ok(buf.get_i64_le())
}

impl KvCommand {
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        match self {
            KvCommand::Put {
                key,
                value,
                lease,
                prev_kv,
            } => {
                out.put_u8(1);
                put_field(&mut out, key);
                put_field(&mut out, value);
                out.put_i64_le(*lease);
                out.put_u8(u8::from(*prev_kv));
            }
            KvCommand::DeleteRange {
                key,
                range_end,
                prev_kv,
            } => {
                out.put_u8(2);
                put_field(&mut out, key);
                put_field(&mut out, range_end);
                out.put_u8(u8::from(*prev_kv));
            }
        }
        out.freeze()
    }

    pub fn decode(mut buf: Bytes) -> Result<KvCommand, CodecError> {
        let command = match get_u8(&mut buf)? {
            1 => KvCommand::Put {
                key: get_field(&mut buf)?,
                value: get_field(&mut buf)?,
                lease: get_i64(&mut buf)?,
                prev_kv: get_u8(&mut buf)? == 1,
            },
            2 => KvCommand::DeleteRange {
                key: get_field(&mut buf)?,
                range_end: get_field(&mut buf)?,
                prev_kv: get_u8(&mut buf)? == 1,
            },
            other => return Err(CodecError::UnknownType(other)),
        };
        Ok(command)
    }
}

/// Is `key` inside the etcd range `[start, end)`? An empty `end` means `start` only;
/// `end == [0]` means every key from `start` on.
pub fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        key == start
    } else if end == [0] {
        key >= start
    } else {
        key >= start && key < end
    }
}

/// The state machine. Cheap to clone (structural sharing).
#[derive(Clone, Debug, Default)]
pub struct KvStore {
    map: OrdMap<Bytes, KeyValue>,
    /// The store's revision: bumped by every write that changed something.
    revision: i64,
    /// The last log index applied.
    applied: Index,
}

/// The answer to a range read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// Keys in the range, before `limit`.
    pub count: i64,
    pub more: bool,
    pub revision: i64,
}

impl KvStore {
    pub fn revision(&self) -> i64 {
        self.revision
    }

    pub fn applied(&self) -> Index {
        self.applied
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Records that a log entry without a state-machine effect was applied.
    pub fn skip(&mut self, index: Index) {
        assert!(
            index > self.applied,
            "entry {index} applied twice (applied {})",
            self.applied
        );
        self.applied = index;
    }

    /// Applies the command of log entry `index`. Deterministic: every member gets the
    /// same result from the same log.
    pub fn apply(&mut self, index: Index, command: &KvCommand) -> KvResult {
        self.skip(index);
        match command {
            KvCommand::Put {
                key,
                value,
                lease,
                prev_kv,
            } => {
                let revision = self.revision + 1;
                let prev = self.map.get(key).cloned();
                let kv = KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                    create_revision: prev.as_ref().map_or(revision, |p| p.create_revision),
                    mod_revision: revision,
                    version: prev.as_ref().map_or(1, |p| p.version + 1),
                    lease: *lease,
                };
                self.map.insert(key.clone(), kv);
                self.revision = revision;
                KvResult::Put {
                    revision,
                    prev: if *prev_kv { prev } else { None },
                }
            }
            KvCommand::DeleteRange {
                key,
                range_end,
                prev_kv,
            } => {
                let doomed: Vec<KeyValue> = self.scan(key, range_end).cloned().collect();
                if !doomed.is_empty() {
                    self.revision += 1;
                    for kv in &doomed {
                        self.map.remove(&kv.key);
                    }
                }
                KvResult::DeleteRange {
                    revision: self.revision,
                    deleted: doomed.len() as i64,
                    prev: if *prev_kv { doomed } else { Vec::new() },
                }
            }
        }
    }

    fn scan<'a>(&'a self, key: &'a [u8], range_end: &'a [u8]) -> Box<dyn Iterator<Item = &'a KeyValue> + 'a> {
        if range_end.is_empty() {
            return Box::new(self.map.get(key).into_iter());
        }
        let start = Bytes::copy_from_slice(key);
        Box::new(
            self.map
                .range(start..)
                .map(|(_, v)| v)
                .take_while(move |kv| in_range(&kv.key, key, range_end)),
        )
    }

    /// Reads `[key, range_end)` at the current revision, at most `limit` keys (0:
    /// all).
    pub fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
        limit: usize,
        count_only: bool,
        keys_only: bool,
    ) -> RangeResult {
        let mut kvs = Vec::new();
        let mut count = 0i64;
        for kv in self.scan(key, range_end) {
            count += 1;
            if count_only || (limit > 0 && kvs.len() >= limit) {
                continue;
            }
            let mut kv = kv.clone();
            if keys_only {
                kv.value = Bytes::new();
            }
            kvs.push(kv);
        }
        let more = !count_only && limit > 0 && count > kvs.len() as i64;
        RangeResult {
            kvs,
            count,
            more,
            revision: self.revision,
        }
    }

    /// Writes the store to `out` (streamed, record by record).
    pub fn write_snapshot(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let mut header = BytesMut::new();
        header.put_slice(b"KRKV1");
        header.put_i64_le(self.revision);
        header.put_u64_le(self.applied);
        header.put_u64_le(self.map.len() as u64);
        out.write_all(&header)?;
        let mut record = BytesMut::new();
        for kv in self.map.values() {
            record.clear();
            put_field(&mut record, &kv.key);
            put_field(&mut record, &kv.value);
            record.put_i64_le(kv.create_revision);
            record.put_i64_le(kv.mod_revision);
            record.put_i64_le(kv.version);
            record.put_i64_le(kv.lease);
            out.write_all(&record)?;
        }
        Ok(())
    }

    /// Reads a store written by [`KvStore::write_snapshot`].
    pub fn read_snapshot(input: &mut dyn Read) -> Result<KvStore, CodecError> {
        let io = |e: std::io::Error| CodecError::Snapshot(e.to_string());
        let mut header = [0u8; 5 + 24];
        input.read_exact(&mut header).map_err(io)?;
        if &header[..5] != b"KRKV1" {
            return Err(CodecError::Snapshot("not a kuberaft key-value snapshot".into()));
        }
        let mut h = Bytes::copy_from_slice(&header[5..]);
        let revision = h.get_i64_le();
        let applied = h.get_u64_le();
        let count = h.get_u64_le();
        let mut map = OrdMap::new();
        let read_field = |input: &mut dyn Read| -> Result<Bytes, CodecError> {
            let mut len = [0u8; 4];
            input.read_exact(&mut len).map_err(io)?;
            let len = u32::from_le_bytes(len) as u64;
            if len > FIELD_BYTES_MAX {
                return Err(CodecError::TooLarge(len));
            }
            let mut data = vec![0u8; len as usize];
            input.read_exact(&mut data).map_err(io)?;
            Ok(Bytes::from(data))
        };
        for _ in 0..count {
            let key = read_field(input)?;
            let value = read_field(input)?;
            let mut numbers = [0u8; 32];
            input.read_exact(&mut numbers).map_err(io)?;
            let mut n = Bytes::copy_from_slice(&numbers);
            let kv = KeyValue {
                key: key.clone(),
                value,
                create_revision: n.get_i64_le(),
                mod_revision: n.get_i64_le(),
                version: n.get_i64_le(),
                lease: n.get_i64_le(),
            };
            map.insert(key, kv);
        }
        Ok(KvStore {
            map,
            revision,
            applied,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> KvCommand {
        KvCommand::Put {
            key: Bytes::from(key.to_string()),
            value: Bytes::from(value.to_string()),
            lease: 0,
            prev_kv: true,
        }
    }

    #[test]
    fn puts_bump_the_revision_and_track_versions_like_etcd() {
        let mut store = KvStore::default();
        assert_eq!(store.apply(1, &put("a", "1")).revision(), 1);
        assert_eq!(store.apply(2, &put("b", "1")).revision(), 2);
        let result = store.apply(3, &put("a", "2"));
        match result {
            KvResult::Put {
                revision: 3,
                prev: Some(prev),
            } => assert_eq!(prev.value, Bytes::from("1")),
            other => panic!("{other:?}"),
        }
        let a = &store.range(b"a", b"", 0, false, false).kvs[0];
        assert_eq!((a.create_revision, a.mod_revision, a.version), (1, 3, 2));
    }

    #[test]
    fn ranges_follow_etcd_conventions() {
        let mut store = KvStore::default();
        for (i, key) in ["a", "ab", "abc", "b", "c"].iter().enumerate() {
            store.apply(i as Index + 1, &put(key, "v"));
        }
        let keys = |r: RangeResult| r.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>();
        assert_eq!(
            keys(store.range(b"ab", b"", 0, false, false)),
            vec![Bytes::from("ab")]
        );
        assert_eq!(keys(store.range(b"a", b"b", 0, false, false)).len(), 3);
        assert_eq!(keys(store.range(b"b", &[0], 0, false, false)).len(), 2);
        let limited = store.range(b"a", &[0], 2, false, false);
        assert_eq!((limited.kvs.len(), limited.count, limited.more), (2, 5, true));
        let counted = store.range(b"a", b"b", 0, true, false);
        assert_eq!((counted.kvs.len(), counted.count), (0, 3));
        assert!(store.range(b"a", b"", 0, false, true).kvs[0].value.is_empty());
    }

    #[test]
    fn delete_range_bumps_the_revision_once_and_only_when_something_went() {
        let mut store = KvStore::default();
        store.apply(1, &put("a", "1"));
        store.apply(2, &put("a2", "1"));
        let nothing = store.apply(
            3,
            &KvCommand::DeleteRange {
                key: Bytes::from("z"),
                range_end: Bytes::new(),
                prev_kv: false,
            },
        );
        assert_eq!(
            nothing,
            KvResult::DeleteRange {
                revision: 2,
                deleted: 0,
                prev: vec![]
            }
        );
        let both = store.apply(
            4,
            &KvCommand::DeleteRange {
                key: Bytes::from("a"),
                range_end: Bytes::from("b"),
                prev_kv: false,
            },
        );
        assert_eq!(both.revision(), 3);
        assert!(store.is_empty());
        // A re-created key starts a new life.
        store.apply(5, &put("a", "x"));
        let a = &store.range(b"a", b"", 0, false, false).kvs[0];
        assert_eq!((a.create_revision, a.version), (4, 1));
    }

    #[test]
    fn commands_round_trip_and_garbage_is_refused() {
        for command in [
            put("k", "v"),
            KvCommand::DeleteRange {
                key: Bytes::from("a"),
                range_end: Bytes::from_static(&[0]),
                prev_kv: true,
            },
        ] {
            assert_eq!(KvCommand::decode(command.encode()).unwrap(), command);
        }
        assert_eq!(
            KvCommand::decode(Bytes::from_static(&[9])),
            Err(CodecError::UnknownType(9))
        );
        assert_eq!(
            KvCommand::decode(Bytes::from_static(&[1, 5, 0])),
            Err(CodecError::Truncated)
        );
        assert_eq!(
            KvCommand::decode(Bytes::from_static(&[1, 255, 255, 255, 255])),
            Err(CodecError::TooLarge(u32::MAX as u64))
        );
    }

    #[test]
    fn a_snapshot_restores_the_same_store_and_a_clone_is_unaffected_by_later_writes() {
        let mut store = KvStore::default();
        for i in 0..100 {
            store.apply(i + 1, &put(&format!("key{i:03}"), &format!("value{i}")));
        }
        let frozen = store.clone();
        store.apply(101, &put("key000", "changed"));
        let mut buf = Vec::new();
        frozen.write_snapshot(&mut buf).unwrap();
        let restored = KvStore::read_snapshot(&mut buf.as_slice()).unwrap();
        assert_eq!(restored.revision(), 100);
        assert_eq!(restored.applied(), 100);
        assert_eq!(
            restored.range(b"key000", b"", 0, false, false).kvs[0].value,
            Bytes::from("value0")
        );
        assert_eq!(restored.len(), 100);
        assert!(KvStore::read_snapshot(&mut &b"nope"[..]).is_err());
    }
}
