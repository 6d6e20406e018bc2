//! The three candidate engines behind one small trait.

use std::path::Path;
use std::time::{Duration, Instant};

/// (16-byte revision key, encoded KeyValue blob)
pub type Batch = Vec<([u8; 16], Vec<u8>)>;

const CONSISTENT_INDEX: &str = "consistent_index";

pub trait Store: Sized + 'static {
    /// A consistent read snapshot that can be moved to another thread.
    type Snap: Send + 'static;
    fn open(dir: &Path) -> Self;
    /// One write transaction: all puts plus meta/consistent_index. `durable`
    /// means fsync before returning; otherwise the engine's non-durable mode.
    fn commit(&self, batch: Batch, consistent_index: u64, durable: bool);
    fn snapshot(&self) -> Self::Snap;
    fn snap_consistent_index(snap: &Self::Snap) -> u64;
    /// Visit every row of table "key" with lo <= key < hi, in key order.
    fn snap_range(snap: &Self::Snap, lo: &[u8], hi: &[u8], f: &mut dyn FnMut(&[u8], &[u8]));
    /// Bytes of live data as the engine accounts it.
    fn in_use_bytes(&self) -> u64;
    /// Wait (bounded) for background work to finish.
    fn settle(&self, _max: Duration) {}
}

// Compile-time API facts reported in ENGINES.md.
#[allow(dead_code)]
fn assert_send_sync_static<T: Send + Sync + 'static>() {}
#[allow(dead_code)]
fn assert_send_static<T: Send + 'static>() {}
#[allow(dead_code)]
fn api_facts() {
    assert_send_sync_static::<redb::Database>();
    assert_send_sync_static::<redb::ReadTransaction>();
    assert_send_sync_static::<redb::ReadOnlyTable<&'static [u8], &'static [u8]>>();
    assert_send_sync_static::<fjall::Database>();
    assert_send_sync_static::<fjall::Snapshot>();
    assert_send_sync_static::<fjall::Keyspace>();
    assert_send_sync_static::<heed::Env<heed::WithoutTls>>();
    // heed's RoTxn is Send (with WithoutTls) but not Sync: it cannot sit in an
    // Arc shared by threads; move it, or wrap it in a Mutex.
    assert_send_static::<heed::RoTxn<'static, heed::WithoutTls>>();
}

// ---------------------------------------------------------------- redb

const REDB_KEY: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("key");
const REDB_META: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");

/// Optional redb page-cache size (redb's default is 1 GiB).
pub static REDB_CACHE_BYTES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

pub struct RedbStore {
    db: redb::Database,
}

pub struct RedbSnap {
    key: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    meta: redb::ReadOnlyTable<&'static str, u64>,
    _txn: redb::ReadTransaction,
}

impl Store for RedbStore {
    type Snap = RedbSnap;

    fn open(dir: &Path) -> Self {
        // Database::create opens an existing file or initialises a new one.
        let mut builder = redb::Database::builder();
        if let Some(bytes) = REDB_CACHE_BYTES.get() {
            builder.set_cache_size(*bytes);
        }
        let db = builder.create(dir.join("state.redb")).expect("redb open");
        let tx = db.begin_write().expect("redb begin_write");
        tx.open_table(REDB_KEY).expect("create key table");
        tx.open_table(REDB_META).expect("create meta table");
        tx.commit().expect("redb commit");
        RedbStore { db }
    }

    fn commit(&self, batch: Batch, ci: u64, durable: bool) {
        let mut tx = self.db.begin_write().expect("redb begin_write");
        let d = if durable { redb::Durability::Immediate } else { redb::Durability::None };
        tx.set_durability(d).expect("set_durability");
        {
            let mut t = tx.open_table(REDB_KEY).expect("open key");
            for (k, v) in &batch {
                t.insert(&k[..], &v[..]).expect("insert");
            }
            let mut m = tx.open_table(REDB_META).expect("open meta");
            m.insert(CONSISTENT_INDEX, ci).expect("insert ci");
        }
        tx.commit().expect("redb commit");
    }

    fn snapshot(&self) -> RedbSnap {
        use redb::ReadableDatabase;
        let txn = self.db.begin_read().expect("begin_read");
        RedbSnap {
            key: txn.open_table(REDB_KEY).expect("open key"),
            meta: txn.open_table(REDB_META).expect("open meta"),
            _txn: txn,
        }
    }

    fn snap_consistent_index(s: &RedbSnap) -> u64 {
        use redb::ReadableTable;
        s.meta.get(CONSISTENT_INDEX).expect("get ci").map(|g| g.value()).unwrap_or(0)
    }

    fn snap_range(s: &RedbSnap, lo: &[u8], hi: &[u8], f: &mut dyn FnMut(&[u8], &[u8])) {
        use redb::ReadableTable;
        for item in s.key.range(lo..hi).expect("range") {
            let (k, v) = item.expect("range item");
            f(k.value(), v.value());
        }
    }

    fn in_use_bytes(&self) -> u64 {
        let tx = self.db.begin_write().expect("begin_write");
        let st = tx.stats().expect("stats");
        let used = st.stored_bytes() + st.metadata_bytes();
        tx.abort().expect("abort");
        used
    }
}

// ---------------------------------------------------------------- fjall

pub struct FjallStore {
    db: fjall::Database,
    key: fjall::Keyspace,
    meta: fjall::Keyspace,
}

pub struct FjallSnap {
    snap: fjall::Snapshot,
    key: fjall::Keyspace,
    meta: fjall::Keyspace,
}

impl Store for FjallStore {
    type Snap = FjallSnap;

    fn open(dir: &Path) -> Self {
        let db = fjall::Database::builder(dir.join("fjall")).open().expect("fjall open");
        let key = db.keyspace("key", fjall::KeyspaceCreateOptions::default).expect("keyspace key");
        let meta = db.keyspace("meta", fjall::KeyspaceCreateOptions::default).expect("keyspace meta");
        FjallStore { db, key, meta }
    }

    fn commit(&self, batch: Batch, ci: u64, durable: bool) {
        // Database::batch() flushes the journal to OS buffers on commit
        // (PersistMode::Buffer) unless manual_journal_persist is set; no fsync.
        let mut b = self.db.batch();
        for (k, v) in batch {
            b.insert(&self.key, k.to_vec(), v);
        }
        b.insert(&self.meta, CONSISTENT_INDEX, ci.to_be_bytes().to_vec());
        b.commit().expect("fjall batch commit");
        if durable {
            self.db.persist(fjall::PersistMode::SyncAll).expect("fjall persist");
        }
    }

    fn snapshot(&self) -> FjallSnap {
        FjallSnap { snap: self.db.snapshot(), key: self.key.clone(), meta: self.meta.clone() }
    }

    fn snap_consistent_index(s: &FjallSnap) -> u64 {
        use fjall::Readable;
        match s.snap.get(&s.meta, CONSISTENT_INDEX).expect("get ci") {
            Some(v) => u64::from_be_bytes(v[..8].try_into().unwrap()),
            None => 0,
        }
    }

    fn snap_range(s: &FjallSnap, lo: &[u8], hi: &[u8], f: &mut dyn FnMut(&[u8], &[u8])) {
        use fjall::Readable;
        for g in s.snap.range(&s.key, lo..hi) {
            let (k, v) = g.into_inner().expect("range item");
            f(&k, &v);
        }
    }

    fn in_use_bytes(&self) -> u64 {
        self.db.disk_space().expect("disk_space")
    }

    fn settle(&self, max: Duration) {
        let t = Instant::now();
        while t.elapsed() < max
            && (self.db.outstanding_flushes() > 0 || self.db.active_compactions() > 0)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

// ---------------------------------------------------------------- heed (LMDB)

type HeedDb = heed::Database<'static, heed::types::Bytes, heed::types::Bytes>;

pub struct HeedStore {
    env: heed::Env<heed::WithoutTls>,
    key: HeedDb,
    meta: HeedDb,
}

pub struct HeedSnap {
    txn: heed::RoTxn<'static, heed::WithoutTls>,
    key: HeedDb,
    meta: HeedDb,
}

impl Store for HeedStore {
    type Snap = HeedSnap;

    fn open(dir: &Path) -> Self {
        let path = dir.join("lmdb");
        std::fs::create_dir_all(&path).expect("mkdir lmdb");
        let mut opts = heed::EnvOpenOptions::new().read_txn_without_tls();
        opts.map_size(64 << 30).max_dbs(4);
        // SAFETY: NO_SYNC trades durability for speed (a system crash may lose
        // recent commits); we call force_sync() for the durable points.
        unsafe { opts.flags(heed::EnvFlags::NO_SYNC) };
        // SAFETY: the environment is opened once per process and never
        // concurrently by another process with different flags.
        let env = unsafe { opts.open(&path) }.expect("lmdb open");
        let wtxn = env.write_txn().expect("write_txn");
        let (key, meta) = env
            .create_databases_and_commit(wtxn, |wdo, wtxn| -> heed::Result<_> {
                let key = wdo.create_database(wtxn, Some("key"))?;
                let meta = wdo.create_database(wtxn, Some("meta"))?;
                Ok(heed::CommitOrAbort::<_, ()>::Commit((key, meta)))
            })
            .expect("create databases")
            .unwrap_commit();
        HeedStore { env, key, meta }
    }

    fn commit(&self, batch: Batch, ci: u64, durable: bool) {
        let mut w = self.env.write_txn().expect("write_txn");
        for (k, v) in &batch {
            self.key.put(&mut w, &k[..], &v[..]).expect("put");
        }
        self.meta.put(&mut w, CONSISTENT_INDEX.as_bytes(), &ci.to_be_bytes()).expect("put ci");
        w.commit().expect("lmdb commit");
        if durable {
            self.env.force_sync().expect("force_sync");
        }
    }

    fn snapshot(&self) -> HeedSnap {
        let txn = self.env.clone().static_read_txn().expect("static_read_txn");
        HeedSnap { txn, key: self.key, meta: self.meta }
    }

    fn snap_consistent_index(s: &HeedSnap) -> u64 {
        match s.meta.get(&s.txn, CONSISTENT_INDEX.as_bytes()).expect("get ci") {
            Some(v) => u64::from_be_bytes(v[..8].try_into().unwrap()),
            None => 0,
        }
    }

    fn snap_range(s: &HeedSnap, lo: &[u8], hi: &[u8], f: &mut dyn FnMut(&[u8], &[u8])) {
        use std::ops::Bound;
        let r = (Bound::Included(lo), Bound::Excluded(hi));
        for item in s.key.range(&s.txn, &r).expect("range") {
            let (k, v) = item.expect("range item");
            f(k, v);
        }
    }

    fn in_use_bytes(&self) -> u64 {
        let info = self.env.info();
        (info.last_page_number as u64 + 1) * 4096
    }
}
