//! Leases in the state machine: which leases exist, their granted TTL and the keys
//! attached to them.
//!
//! Only what every member must agree on lives here. Time does not: a lease's
//! deadline is kept in memory by the leader alone (`api::lease`), which proposes a
//! [`KvCommand::LeaseRevoke`](super::KvCommand::LeaseRevoke) through the log when it
//! passes. So applying the log never reads a clock, and a new leader starts every
//! lease's countdown afresh from its full TTL (as etcd does), so no lease expires
//! early because of a failover.
//!
//! Keys are attached by puts (plain or in a txn) that name a lease, detached by a
//! put with another lease (or none) and by deletes; revoking a lease deletes its keys
//! at one new revision, in key order (as etcd does), so watchers see the deletes.

use std::io::{Read, Write};

use bytes::{BufMut, Bytes, BytesMut};
use imbl::{OrdMap, OrdSet};

use super::{CodecError, KvError, KvResult, KvStore};
use crate::raft::types::Index;

/// etcd's `MaxLeaseTTL`: the longest TTL a lease may be granted, in seconds.
pub const LEASE_TTL_MAX_SECONDS: i64 = 9_000_000_000;

/// Upper bound of leases in the store (etcd has none; a bounded store needs one).
pub const LEASES_MAX: usize = 1_000_000;

/// One lease, as every member knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    /// Granted time to live, in seconds.
    pub ttl: i64,
    /// Keys whose live version names this lease.
    pub keys: OrdSet<Bytes>,
}

/// Every lease, by id.
pub(super) type Leases = OrdMap<i64, Lease>;

impl KvStore {
    /// The lease `id`, if it exists.
    pub fn lease(&self, id: i64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    /// The log index that last granted or revoked a lease (or of the snapshot the
    /// store was read from): the lease set has not changed since.
    pub fn leases_changed_at(&self) -> Index {
        self.leases_changed_at
    }

    /// Every lease id with its granted TTL, in id order.
    pub fn leases(&self) -> impl Iterator<Item = (i64, &Lease)> + '_ {
        self.leases.iter().map(|(id, lease)| (*id, lease))
    }

    pub(super) fn grant_lease(&mut self, id: i64, ttl: i64) -> KvResult {
        let refuse = |error| KvResult::Failed {
            revision: self.revision,
            error,
        };
        if id == 0 {
            // 0 means "no lease" (the API layer picks an id before proposing).
            return refuse(KvError::LeaseNotFound);
        }
        if ttl > LEASE_TTL_MAX_SECONDS {
            return refuse(KvError::LeaseTtlTooLarge);
        }
        if self.leases.contains_key(&id) {
            return refuse(KvError::LeaseExists);
        }
        if self.leases.len() >= LEASES_MAX {
            return refuse(KvError::TooManyLeases);
        }
        self.leases.insert(
            id,
            Lease {
                ttl,
                keys: OrdSet::new(),
            },
        );
        self.pending.leases.insert(id, Some(ttl));
        self.leases_changed_at = self.applied;
        KvResult::LeaseGrant {
            revision: self.revision,
            id,
            ttl,
        }
    }

    /// Deletes the lease and its keys (at one new revision when there were any).
    pub(super) fn revoke_lease(&mut self, id: i64) -> KvResult {
        let Some(lease) = self.leases.get(&id).cloned() else {
            return KvResult::Failed {
                revision: self.revision,
                error: KvError::LeaseNotFound,
            };
        };
        let revision = self.revision + 1;
        let mut deleted = 0;
        for key in lease.keys.iter() {
            deleted += self.write_delete(revision, key, &[]).len() as i64;
        }
        assert_eq!(deleted as usize, lease.keys.len(), "every attached key is live");
        if deleted > 0 {
            self.revision = revision;
        }
        self.leases.remove(&id);
        self.pending.leases.insert(id, None);
        self.leases_changed_at = self.applied;
        KvResult::LeaseRevoke {
            revision: self.revision,
            deleted,
        }
    }

    /// Moves `key` from lease `from` to lease `to` (0: none) as a write changes it.
    pub(super) fn reattach(&mut self, key: &Bytes, from: i64, to: i64) {
        if from == to {
            return;
        }
        if from != 0 {
            let lease = self.leases.get_mut(&from).expect("a live key's lease exists");
            lease.keys.remove(key);
        }
        if to != 0 {
            let lease = self
                .leases
                .get_mut(&to)
                .expect("the lease was checked before the write");
            lease.keys.insert(key.clone());
        }
    }

    /// Writes the lease section of a snapshot: every lease id and TTL (the attached
    /// keys follow from the keys' own records).
    pub(super) fn write_lease_section(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let mut section = BytesMut::new();
        section.put_slice(LEASE_SECTION_TAG);
        section.put_u64_le(self.leases.len() as u64);
        for (id, lease) in self.leases.iter() {
            section.put_i64_le(*id);
            section.put_i64_le(lease.ttl);
        }
        out.write_all(&section)
    }

    /// Reads the lease section and attaches every live key that names a lease.
    pub(super) fn read_lease_section(&mut self, input: &mut dyn Read) -> Result<(), CodecError> {
        let bad = |what: &str| CodecError::Snapshot(what.to_string());
        let io = |e: std::io::Error| CodecError::Snapshot(e.to_string());
        let mut header = [0u8; LEASE_SECTION_TAG.len() + 8];
        input.read_exact(&mut header).map_err(io)?;
        if &header[..LEASE_SECTION_TAG.len()] != LEASE_SECTION_TAG {
            return Err(bad("lease section missing"));
        }
        let count = u64::from_le_bytes(header[LEASE_SECTION_TAG.len()..].try_into().expect("8 bytes"));
        if count > LEASES_MAX as u64 {
            return Err(bad("too many leases"));
        }
        let mut leases = Leases::new();
        let mut last = None;
        for _ in 0..count {
            let mut record = [0u8; 16];
            input.read_exact(&mut record).map_err(io)?;
            let id = i64::from_le_bytes(record[..8].try_into().expect("8 bytes"));
            let ttl = i64::from_le_bytes(record[8..].try_into().expect("8 bytes"));
            if id == 0 || last.is_some_and(|last| id <= last) {
                return Err(bad("lease ids out of order"));
            }
            last = Some(id);
            leases.insert(
                id,
                Lease {
                    ttl,
                    keys: OrdSet::new(),
                },
            );
        }
        for (key, history) in self.keys.iter() {
            if let Some(kv) = history.last().and_then(super::Version::live) {
                if kv.lease != 0 {
                    let lease = leases
                        .get_mut(&kv.lease)
                        .ok_or_else(|| bad("a key names a lease that does not exist"))?;
                    lease.keys.insert(key.clone());
                }
            }
        }
        self.leases = leases;
        Ok(())
    }
}

const LEASE_SECTION_TAG: &[u8] = b"LEASES01";

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

        fn run(&mut self, command: KvCommand) -> KvResult {
            self.index += 1;
            let result = self.kv.apply(self.index, &command);
            let encoded = command.encode();
            assert_eq!(KvCommand::decode(encoded).unwrap(), command, "round trip");
            result
        }

        fn put(&mut self, key: &str, lease: i64) -> KvResult {
            self.run(KvCommand::Put {
                key: b(key),
                value: b("v"),
                lease,
                prev_kv: false,
            })
        }

        fn keys(&self, id: i64) -> Vec<Bytes> {
            self.kv.lease(id).unwrap().keys.iter().cloned().collect()
        }
    }

    #[test]
    fn a_grant_refuses_duplicates_and_too_large_ttls_with_etcds_errors() {
        let mut s = S::new();
        assert_eq!(
            s.run(KvCommand::LeaseGrant { id: 7, ttl: 10 }),
            KvResult::LeaseGrant {
                revision: 1,
                id: 7,
                ttl: 10
            },
            "a grant does not bump the revision"
        );
        let failed = |error| KvResult::Failed { revision: 1, error };
        assert_eq!(
            s.run(KvCommand::LeaseGrant { id: 7, ttl: 10 }),
            failed(KvError::LeaseExists)
        );
        assert_eq!(
            s.run(KvCommand::LeaseGrant {
                id: 8,
                ttl: LEASE_TTL_MAX_SECONDS + 1
            }),
            failed(KvError::LeaseTtlTooLarge)
        );
        assert_eq!(
            KvError::LeaseExists.to_string(),
            "etcdserver: lease already exists"
        );
        assert_eq!(
            KvError::LeaseTtlTooLarge.to_string(),
            "etcdserver: too large lease TTL"
        );
        assert_eq!(
            s.run(KvCommand::LeaseRevoke { id: 9 }),
            failed(KvError::LeaseNotFound)
        );
        assert_eq!(
            KvError::LeaseNotFound.to_string(),
            "etcdserver: requested lease not found"
        );
        assert_eq!(
            s.kv.leases().map(|(id, l)| (id, l.ttl)).collect::<Vec<_>>(),
            vec![(7, 10)]
        );
    }

    #[test]
    fn puts_attach_and_move_keys_and_revoke_deletes_them_at_one_revision() {
        let mut s = S::new();
        s.run(KvCommand::LeaseGrant { id: 1, ttl: 10 });
        s.run(KvCommand::LeaseGrant { id: 2, ttl: 10 });
        assert_eq!(
            s.put("a", 3),
            KvResult::Failed {
                revision: 1,
                error: KvError::LeaseNotFound
            },
            "a put naming an unknown lease changes nothing"
        );
        s.put("a", 1);
        s.put("b", 1);
        s.put("c", 2);
        s.put("free", 0);
        assert_eq!(s.keys(1), vec![b("a"), b("b")]);
        // Moving b to lease 2, and a to no lease.
        s.put("b", 2);
        s.put("a", 0);
        assert!(s.keys(1).is_empty());
        assert_eq!(s.keys(2), vec![b("b"), b("c")]);
        // A txn put keeping the lease (ignore_lease) keeps the attachment.
        s.run(KvCommand::Txn(Txn {
            compares: vec![],
            success: vec![TxnOp::Put {
                key: b("c"),
                value: b("w"),
                lease: 0,
                prev_kv: false,
                ignore_value: false,
                ignore_lease: true,
            }],
            failure: vec![],
        }));
        assert_eq!(s.keys(2), vec![b("b"), b("c")]);
        // A txn put naming an unknown lease is refused as a whole.
        let refused = s.run(KvCommand::Txn(Txn {
            compares: vec![],
            success: vec![TxnOp::Put {
                key: b("d"),
                value: b("w"),
                lease: 99,
                prev_kv: false,
                ignore_value: false,
                ignore_lease: false,
            }],
            failure: vec![],
        }));
        assert!(matches!(
            refused,
            KvResult::Failed {
                error: KvError::LeaseNotFound,
                ..
            }
        ));
        // A delete detaches.
        s.run(KvCommand::DeleteRange {
            key: b("c"),
            range_end: Bytes::new(),
            prev_kv: false,
        });
        assert_eq!(s.keys(2), vec![b("b")]);
        let before = s.kv.revision();
        assert_eq!(
            s.run(KvCommand::LeaseRevoke { id: 2 }),
            KvResult::LeaseRevoke {
                revision: before + 1,
                deleted: 1
            }
        );
        assert!(s.kv.range(b"b", b"", 0, false, false).kvs.is_empty());
        assert!(s.kv.lease(2).is_none());
        // Revoking a lease without keys writes nothing.
        assert_eq!(
            s.run(KvCommand::LeaseRevoke { id: 1 }),
            KvResult::LeaseRevoke {
                revision: before + 1,
                deleted: 0
            }
        );
        assert_eq!(s.kv.len(), 2, "a and free stay");
    }

    #[test]
    fn leases_and_their_keys_survive_a_snapshot() {
        let mut s = S::new();
        s.run(KvCommand::LeaseGrant { id: 5, ttl: 30 });
        s.run(KvCommand::LeaseGrant { id: 6, ttl: 60 });
        s.put("x", 5);
        s.put("y", 5);
        s.put("y", 6);
        let mut buf = Vec::new();
        s.kv.write_snapshot(&mut buf).unwrap();
        let restored = KvStore::read_snapshot(&mut buf.as_slice()).unwrap();
        for id in [5, 6] {
            assert_eq!(restored.lease(id), s.kv.lease(id));
        }
        assert_eq!(restored.leases().count(), 2);
    }
}
