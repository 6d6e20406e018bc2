//! Digests of the store for `HashKV` and `Hash`, and its size for `Status`.
//!
//! Every member applies the same log to the same store (compactions included), so
//! members that applied the same revision give the same digest; a difference means
//! their states diverged.

use super::{KvStore, Version};

impl KvStore {
    /// CRC32C over every version held (live or deleted) with a revision at or below
    /// `revision`, in key order, then revision order. What compaction dropped is not
    /// covered (so `HashKV` answers with the compacted revision too, as etcd does).
    pub fn hash_kv(&self, revision: i64) -> u32 {
        let mut crc = 0u32;
        for (key, history) in self.keys.iter() {
            for version in history.iter() {
                if version.revision() > revision {
                    break;
                }
                crc = crc32c::crc32c_append(crc, &(key.len() as u64).to_le_bytes());
                crc = crc32c::crc32c_append(crc, key);
                match version {
                    Version::Live(kv) => {
                        let mut numbers = [0u8; 40];
                        for (i, n) in [kv.mod_revision, kv.create_revision, kv.version, kv.lease]
                            .into_iter()
                            .enumerate()
                        {
                            numbers[8 * i..8 * i + 8].copy_from_slice(&n.to_le_bytes());
                        }
                        numbers[32..].copy_from_slice(&(kv.value.len() as u64).to_le_bytes());
                        crc = crc32c::crc32c_append(crc, &numbers);
                        crc = crc32c::crc32c_append(crc, &kv.value);
                    }
                    Version::Tombstone(at) => {
                        crc = crc32c::crc32c_append(crc, b"tombstone");
                        crc = crc32c::crc32c_append(crc, &at.to_le_bytes());
                    }
                }
            }
        }
        crc
    }

    /// Bytes the history holds: keys and values of every version, plus a fixed
    /// 48 bytes per version for revisions and bookkeeping. An estimate of memory, as
    /// there is no database file (what `Status.dbSize` reports).
    pub fn size_bytes(&self) -> u64 {
        self.keys
            .iter()
            .map(|(key, history)| {
                history
                    .iter()
                    .map(|version| {
                        48 + key.len() as u64
                            + match version {
                                Version::Live(kv) => kv.value.len() as u64,
                                Version::Tombstone(_) => 0,
                            }
                    })
                    .sum::<u64>()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::KvCommand;
    use super::*;

    fn put(store: &mut KvStore, key: &str, value: &str) {
        let index = store.applied() + 1;
        store.apply(
            index,
            &KvCommand::Put {
                key: Bytes::from(key.to_string()),
                value: Bytes::from(value.to_string()),
                lease: 0,
                prev_kv: false,
            },
        );
    }

    #[test]
    fn equal_histories_hash_equal_and_any_difference_shows() {
        let mut a = KvStore::default();
        let mut b = KvStore::default();
        for store in [&mut a, &mut b] {
            put(store, "k1", "v1");
            put(store, "k2", "v2");
        }
        assert_eq!(a.hash_kv(i64::MAX), b.hash_kv(i64::MAX));
        let at_two = a.hash_kv(2);
        put(&mut a, "k1", "v3");
        assert_ne!(a.hash_kv(i64::MAX), b.hash_kv(i64::MAX));
        assert_eq!(
            a.hash_kv(2),
            at_two,
            "a later write does not change an earlier revision's hash"
        );
        put(&mut b, "k1", "v4");
        assert_ne!(
            a.hash_kv(i64::MAX),
            b.hash_kv(i64::MAX),
            "same revision, other value"
        );
        assert!(a.size_bytes() >= 3 * (48 + 4));
    }
}
