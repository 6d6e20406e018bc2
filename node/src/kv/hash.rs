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
                    Version::Live(meta) => {
                        let value = self.value_of(key, meta.mod_revision);
                        let mut numbers = [0u8; 40];
                        for (i, n) in [meta.mod_revision, meta.create_revision, meta.version, meta.lease]
                            .into_iter()
                            .enumerate()
                        {
                            numbers[8 * i..8 * i + 8].copy_from_slice(&n.to_le_bytes());
                        }
                        numbers[32..].copy_from_slice(&(value.len() as u64).to_le_bytes());
                        crc = crc32c::crc32c_append(crc, &numbers);
                        crc = crc32c::crc32c_append(crc, &value);
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

    /// Bytes of the engine's file (what `Status.dbSize` reports) and the bytes its
    /// data uses (`dbSizeInUse`).
    pub fn size_bytes(&self) -> (u64, u64) {
        self.engine().sizes()
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
        let before = a.hash_kv(i64::MAX);
        a.commit(true, None).unwrap();
        assert_eq!(
            a.hash_kv(i64::MAX),
            before,
            "values read back from the engine hash as they did before the commit"
        );
        // The bytes in use are measured off the apply path, after the durable commit.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while a.size_bytes().1 == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let (size, in_use) = a.size_bytes();
        assert!(in_use > 0 && size >= in_use, "sizes {size} {in_use}");
    }
}
