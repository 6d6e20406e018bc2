//! An in-repo fuzz harness that runs on stable Rust (cargo-fuzz needs nightly): every
//! decoder of bytes that come from outside the process is fed mutations of a committed
//! seed corpus, chosen by a seeded RNG, for a bounded time. A decoder may refuse an
//! input; it must not panic (debug assertions and overflow checks are on in the `sim`
//! profile that CI uses), and a decoded value must survive encode-then-decode.
//!
//!     FUZZ_SECONDS=60 FUZZ_SEED=123 cargo test --profile sim -p kuberaft-node --test fuzz -- --nocapture [target]
//!
//! - Seed corpus: `node/fuzz/corpus/<target>/`, written by
//!   `FUZZ_WRITE_CORPUS=1 cargo test -p kuberaft-node --test fuzz write_corpus -- --ignored`
//!   from the real encoders.
//! - Regressions: `node/fuzz/regressions/<target>/`, run first, every time.
//! - A crash is written to `node/fuzz/found/<target>-<hash>.bin` with the panic printed;
//!   move the file into `regressions/<target>/` once it is fixed.
//!
//! Each target runs `FUZZ_SECONDS` (default 1 s, so a plain `cargo test` stays quick);
//! `FUZZ_SEED` fixes the RNG (default: a new seed, printed). Inputs with checksums (WAL
//! frames, segment headers, snapshot files) get their checksums recomputed after half
//! of the mutations, so the decoders behind the checksum are reached too.

use std::cell::Cell;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kuberaft_node::kv::{Compare, CompareResult, CompareTarget, KvCommand, KvStore, Txn, TxnOp};
use kuberaft_node::members::{MemberCommand, MemberTable};
use kuberaft_node::raft::types::{
    ConfChange, Entry, EntryPayload, HardState, Membership, SnapshotMeta, Timing,
};
use kuberaft_node::storage::codec::{
    self, FrameHeader, Record, SegmentHeader, FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};
use kuberaft_node::storage::{dump_wal, LogStore, SnapshotStore, WalConfig, WalLogStore};
use kuberaft_node::transport::convert;
use kuberaft_proto::raft as pb;
use prost::Message as _;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const CLUSTER: u64 = 0xf022;
const NODE: u64 = 1;

type Target = fn(&[u8]);

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

// ---------------------------------------------------------------- targets

/// A WAL record body: first byte the record type, the rest the body.
fn wal_record(data: &[u8]) {
    let Some((&ty, body)) = data.split_first() else {
        return;
    };
    if let Ok(record) = Record::decode_body(ty, Bytes::copy_from_slice(body)) {
        let mut framed = Vec::new();
        if record.encode_framed(&mut framed).is_ok() {
            let again = Record::decode_body(
                record.type_byte(),
                Bytes::copy_from_slice(&framed[FRAME_HEADER_BYTES..]),
            )
            .expect("a re-encoded record decodes");
            assert_eq!(again, record, "a record survives encode and decode");
        }
    }
    let _ = codec::decode_entry_bytes(Bytes::copy_from_slice(data));
}

/// A segment header, and the frame header after it.
fn wal_segment_header(data: &[u8]) {
    let mut buf = [0u8; SEGMENT_HEADER_BYTES];
    let n = data.len().min(SEGMENT_HEADER_BYTES);
    buf[..n].copy_from_slice(&data[..n]);
    if let Ok(header) = SegmentHeader::decode(&buf) {
        assert_eq!(SegmentHeader::decode(&header.encode()).unwrap(), header);
    }
    let mut frame = [0u8; FRAME_HEADER_BYTES];
    let rest = &data[n..];
    let m = rest.len().min(FRAME_HEADER_BYTES);
    frame[..m].copy_from_slice(&rest[..m]);
    let parsed = FrameHeader::parse(&frame);
    let _ = parsed.computed_crc(&frame, &rest[m..]);
}

fn wal_config() -> WalConfig {
    let mut config = WalConfig::new(CLUSTER, NODE);
    config.segment_bytes_max = 16 << 10;
    config
}

/// A whole WAL directory of one segment: `raft-node wal dump` and recovery read it.
fn wal_segment_file(data: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(format!("{:016x}-{:016x}.wal", 1, 1)), data).unwrap();
    let _ = dump_wal(dir.path(), true, &mut std::io::sink());
    if let Ok(store) = WalLogStore::open(dir.path(), wal_config()) {
        let _ = store.entries(store.first_index(), store.last_index() + 1, u64::MAX);
    }
}

/// A snapshot file: header, metadata, data and trailer checks, then the data read
/// as a key-value snapshot.
fn snapshot_file(data: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path(), CLUSTER, 2).unwrap();
    let path = dir.path().join(format!("snap-{:016x}-{:016x}.snap", 5, 2));
    std::fs::write(&path, data).unwrap();
    if let Ok(info) = store.verify(&path) {
        if let Ok(mut reader) = store.open_reader(&info) {
            let mut bytes = Vec::new();
            if reader.read_to_end(&mut bytes).is_ok() {
                let _ = KvStore::read_snapshot(&mut bytes.as_slice());
            }
        }
    }
    let _ = store.latest();
}

/// The state machine's snapshot data (`KvStore::read_snapshot`, being rewritten in
/// issue 12: adapt this target to the new signature).
fn kv_snapshot(data: &[u8]) {
    if let Ok(store) = KvStore::read_snapshot(&mut &data[..]) {
        let mut again = Vec::new();
        store.write_snapshot(&mut again).unwrap();
        let reread = KvStore::read_snapshot(&mut again.as_slice()).expect("a re-written snapshot reads");
        let mut third = Vec::new();
        reread.write_snapshot(&mut third).unwrap();
        assert_eq!(again, third, "a snapshot survives write and read");
    }
}

fn member_snapshot(data: &[u8]) {
    if let Ok(table) = MemberTable::read_snapshot(&mut &data[..]) {
        let mut again = Vec::new();
        table.write_snapshot(&mut again).unwrap();
        MemberTable::read_snapshot(&mut again.as_slice()).expect("a re-written member table reads");
    }
}

/// A peer envelope as it arrives on the peer stream (possibly zstd-compressed),
/// then every message in it.
fn peer_envelope(data: &[u8]) {
    if let Ok(envelope) = pb::PeerEnvelope::decode(data) {
        if let Ok(messages) = kuberaft_node::transport::decode_envelope(envelope, 1 << 20) {
            for message in messages {
                if let Ok(m) = convert::message_from_pb(message) {
                    let again =
                        convert::message_from_pb(convert::message_to_pb(&m)).expect("re-encoded message");
                    assert_eq!(format!("{again:?}"), format!("{m:?}"));
                }
            }
        }
    }
    if let Ok(message) = pb::Message::decode(data) {
        let _ = convert::message_from_pb(message);
    }
}

/// The first chunk of a snapshot transfer (its metadata).
fn snapshot_chunk(data: &[u8]) {
    if let Ok(chunk) = pb::SnapshotChunk::decode(data) {
        if let Some(meta) = chunk.meta {
            if let Ok(meta) = convert::snapshot_meta_from_pb(meta) {
                assert_eq!(
                    convert::snapshot_meta_from_pb(convert::snapshot_meta_to_pb(&meta)).unwrap(),
                    meta
                );
            }
        }
    }
}

/// A KV command from the log (and, through `Txn`, nested transactions).
fn kv_command(data: &[u8]) {
    if let Ok(command) = KvCommand::decode(Bytes::copy_from_slice(data)) {
        let again = KvCommand::decode(command.encode()).expect("a re-encoded command decodes");
        assert_eq!(again, command);
    }
}

fn member_command(data: &[u8]) {
    if MemberCommand::is_member_command(data) {
        if let Ok(command) = MemberCommand::decode(Bytes::copy_from_slice(data)) {
            let again = MemberCommand::decode(command.encode()).expect("a re-encoded command decodes");
            assert_eq!(again, command);
        }
    }
    let _ = MemberCommand::decode(Bytes::copy_from_slice(data));
}

/// The `:authority` front layer (node/src/security/authority.rs), fed in chunks as a
/// socket would: it must not panic, and while it has not started rewriting, what it
/// hands to h2 is exactly what came in.
fn http2_authority(data: &[u8]) {
    use kuberaft_node::security::authority::AuthorityFilter;
    let mut filter = AuthorityFilter::new();
    let mut out = Vec::new();
    let chunk = 1 + data.first().map_or(0, |b| *b as usize % 61);
    let mut buf = [0u8; 97];
    for piece in data.chunks(chunk) {
        if filter.feed(piece).is_err() {
            assert!(filter.rewriting(), "only a rewritten connection is closed");
            return;
        }
        while filter.has_output() {
            let n = filter.read_output(&mut buf);
            out.extend_from_slice(&buf[..n]);
        }
    }
    filter.finish();
    while filter.has_output() {
        let n = filter.read_output(&mut buf);
        out.extend_from_slice(&buf[..n]);
    }
    if !filter.rewriting() {
        assert_eq!(out, data, "bytes changed on a connection that needs no rewrite");
    }
}

const TARGETS: &[(&str, Target)] = &[
    ("wal-record", wal_record),
    ("wal-segment-header", wal_segment_header),
    ("wal-segment-file", wal_segment_file),
    ("snapshot-file", snapshot_file),
    ("kv-snapshot", kv_snapshot),
    ("member-snapshot", member_snapshot),
    ("peer-envelope", peer_envelope),
    ("snapshot-chunk", snapshot_chunk),
    ("kv-command", kv_command),
    ("member-command", member_command),
    ("http2-authority", http2_authority),
];

// ---------------------------------------------------------------- checksum fix-ups

/// Recomputes the segment header's and every frame's CRC, so mutations reach the
/// record decoders behind them.
fn fix_wal_crcs(data: &mut [u8]) {
    if data.len() >= SEGMENT_HEADER_BYTES {
        let crc = crc32c::crc32c(&data[..56]);
        data[56..60].copy_from_slice(&crc.to_le_bytes());
    }
    let mut at = SEGMENT_HEADER_BYTES;
    while at + FRAME_HEADER_BYTES <= data.len() {
        let header: [u8; FRAME_HEADER_BYTES] = data[at..at + FRAME_HEADER_BYTES].try_into().unwrap();
        let frame = FrameHeader::parse(&header);
        let end = at + FRAME_HEADER_BYTES + frame.body_len;
        if frame.body_len == 0 || end > data.len() {
            break;
        }
        let crc = frame.computed_crc(&header, &data[at + FRAME_HEADER_BYTES..end]);
        data[at..at + 4].copy_from_slice(&crc.to_le_bytes());
        at = end;
    }
}

/// Recomputes a snapshot file's header and data checksums (layout in storage/snapshot.rs).
fn fix_snapshot_crcs(data: &mut [u8]) {
    if data.len() < 24 {
        return;
    }
    let meta_len = u32::from_le_bytes(data[20..24].try_into().unwrap()) as usize;
    let data_start = 24 + meta_len + 4;
    if data_start + 20 > data.len() {
        return;
    }
    let crc = crc32c::crc32c(&data[..24 + meta_len]);
    data[24 + meta_len..data_start].copy_from_slice(&crc.to_le_bytes());
    let trailer = data.len() - 20;
    let body_crc = crc32c::crc32c(&data[data_start..trailer]);
    let body_len = (trailer - data_start) as u64;
    data[trailer..trailer + 8].copy_from_slice(&body_len.to_le_bytes());
    data[trailer + 8..trailer + 12].copy_from_slice(&body_crc.to_le_bytes());
    data[trailer + 12..].copy_from_slice(b"KRSNAPND");
}

// ---------------------------------------------------------------- mutation engine

fn mutate(rng: &mut ChaCha8Rng, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut data = input.to_vec();
    let rounds = 1 + rng.gen_range(0..4);
    for _ in 0..rounds {
        let len = data.len();
        match rng.gen_range(0..11) {
            0 if len > 0 => {
                let i = rng.gen_range(0..len);
                data[i] ^= 1 << rng.gen_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.gen_range(0..len);
                data[i] = rng.gen();
            }
            2 => {
                let i = rng.gen_range(0..=len);
                let n = rng.gen_range(1..9);
                let bytes: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
                data.splice(i..i, bytes);
            }
            3 if len > 0 => {
                let i = rng.gen_range(0..len);
                let n = rng.gen_range(1..=(len - i).min(16));
                data.drain(i..i + n);
            }
            4 if len > 0 => data.truncate(rng.gen_range(0..len)),
            5 if len >= 4 => {
                // An interesting little-endian integer at a random place.
                let values: [u64; 9] = [0, 1, 0x7f, 0x80, 0xff, 0xffff, 0x7fff_ffff, 0xffff_ffff, u64::MAX];
                let v = values[rng.gen_range(0..values.len())];
                let width = [1usize, 2, 4, 8][rng.gen_range(0..4)].min(len);
                let i = rng.gen_range(0..=len - width);
                data[i..i + width].copy_from_slice(&v.to_le_bytes()[..width]);
            }
            6 if len > 0 => {
                // Duplicate a range.
                let i = rng.gen_range(0..len);
                let n = rng.gen_range(1..=(len - i).min(64));
                let copy = data[i..i + n].to_vec();
                let at = rng.gen_range(0..=len);
                data.splice(at..at, copy);
            }
            7 if !corpus.is_empty() => {
                // Splice in part of another input.
                let other = &corpus[rng.gen_range(0..corpus.len())];
                if !other.is_empty() {
                    let i = rng.gen_range(0..other.len());
                    let n = rng.gen_range(1..=(other.len() - i).min(128));
                    let at = rng.gen_range(0..=len);
                    data.splice(at..at, other[i..i + n].iter().copied());
                }
            }
            8 if len > 0 => {
                // Add or subtract a small number to a byte.
                let i = rng.gen_range(0..len);
                data[i] = data[i]
                    .wrapping_add(rng.gen_range(1..8))
                    .wrapping_sub(rng.gen_range(0..8));
            }
            9 if len > 1 => {
                let (a, b) = (rng.gen_range(0..len), rng.gen_range(0..len));
                data.swap(a, b);
            }
            _ => {
                if len < 1 << 16 {
                    data.push(rng.gen());
                }
            }
        }
    }
    data.truncate(1 << 20);
    data
}

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

fn install_quiet_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                default(info);
            }
        }));
    });
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(non-string panic)".into())
}

fn read_dir_inputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect()
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Runs one target: regressions, the corpus, then mutations until the time is up.
fn fuzz(name: &str) {
    let target = TARGETS.iter().find(|(n, _)| *n == name).unwrap().1;
    install_quiet_hook();
    let seconds = env_u64("FUZZ_SECONDS").unwrap_or(1);
    let seed = env_u64("FUZZ_SEED").unwrap_or_else(|| rand::thread_rng().gen());
    let mut rng = ChaCha8Rng::seed_from_u64(
        seed ^ {
            let mut h = DefaultHasher::new();
            name.hash(&mut h);
            h.finish()
        },
    );

    let run = |input: &[u8]| -> Result<(), String> {
        QUIET.with(|q| q.set(true));
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| target(input)));
        QUIET.with(|q| q.set(false));
        outcome.map_err(|p| panic_message(&*p))
    };

    // Regressions must pass as they are.
    for (path, input) in read_dir_inputs(&fuzz_dir().join("regressions").join(name)) {
        if let Err(message) = run(&input) {
            panic!("fuzz regression {} panics again: {message}", path.display());
        }
    }
    let mut corpus: Vec<Vec<u8>> = read_dir_inputs(&fuzz_dir().join("corpus").join(name))
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    assert!(
        !corpus.is_empty(),
        "no seed corpus for {name} in node/fuzz/corpus/{name}"
    );
    for input in corpus.clone() {
        if let Err(message) = run(&input) {
            panic!("fuzz target {name} panics on its own seed corpus: {message}");
        }
    }
    let seeds = corpus.len();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut execs = 0u64;
    let mut crashes: Vec<String> = Vec::new();
    while Instant::now() < deadline && crashes.len() < 5 {
        let base = &corpus[rng.gen_range(0..corpus.len())];
        let mut input = mutate(&mut rng, base, &corpus);
        if rng.gen_bool(0.5) {
            match name {
                "wal-segment-file" | "wal-segment-header" => fix_wal_crcs(&mut input),
                "snapshot-file" => fix_snapshot_crcs(&mut input),
                _ => {}
            }
        }
        execs += 1;
        if let Err(message) = run(&input) {
            let mut h = DefaultHasher::new();
            input.hash(&mut h);
            let found = fuzz_dir().join("found");
            std::fs::create_dir_all(&found).unwrap();
            let path = found.join(format!("{name}-{:016x}.bin", h.finish()));
            std::fs::write(&path, &input).unwrap();
            let hex: String = input.iter().take(256).map(|b| format!("{b:02x}")).collect();
            crashes.push(format!(
                "{name}: panic `{message}` on {} ({} bytes; first bytes {hex})",
                path.display(),
                input.len()
            ));
        } else if corpus.len() < seeds + 256 && rng.gen_ratio(1, 64) {
            // Keep some mutants as new bases, so mutations compound.
            corpus.push(input);
        }
    }
    println!(
        "fuzz {name}: seed {seed}, {execs} inputs in {seconds} s, {} crashes",
        crashes.len()
    );
    assert!(
        crashes.is_empty(),
        "fuzz target {name} (FUZZ_SEED={seed}) crashed:\n{}",
        crashes.join("\n")
    );
}

macro_rules! fuzz_tests {
    ($($test:ident => $name:literal),* $(,)?) => {
        $(#[test] fn $test() { fuzz($name); })*
    };
}

fuzz_tests! {
    fuzz_wal_record => "wal-record",
    fuzz_wal_segment_header => "wal-segment-header",
    fuzz_wal_segment_file => "wal-segment-file",
    fuzz_snapshot_file => "snapshot-file",
    fuzz_kv_snapshot => "kv-snapshot",
    fuzz_member_snapshot => "member-snapshot",
    fuzz_peer_envelope => "peer-envelope",
    fuzz_snapshot_chunk => "snapshot-chunk",
    fuzz_kv_command => "kv-command",
    fuzz_member_command => "member-command",
    fuzz_http2_authority => "http2-authority",
}

// ---------------------------------------------------------------- seed corpus

fn sample_meta(index: u64) -> SnapshotMeta {
    let mut membership = Membership::new([1, 2, 3]);
    membership.learners.insert(4);
    SnapshotMeta {
        index,
        term: 2,
        membership,
        timing: Some(Timing::default()),
    }
}

fn sample_entries() -> Vec<Entry> {
    let kv = sample_kv_commands();
    let mut entries = vec![
        Entry {
            term: 1,
            index: 1,
            payload: EntryPayload::Noop,
        },
        Entry {
            term: 1,
            index: 2,
            payload: EntryPayload::ConfChange(ConfChange::AddLearner(4)),
        },
    ];
    for (i, command) in kv.iter().enumerate() {
        entries.push(Entry {
            term: 2,
            index: 3 + i as u64,
            payload: EntryPayload::Normal(command.encode()),
        });
    }
    entries
}

fn sample_kv_commands() -> Vec<KvCommand> {
    let put = TxnOp::Put {
        key: Bytes::from_static(b"k"),
        value: Bytes::from_static(b"v2"),
        lease: 0,
        prev_kv: false,
        ignore_value: false,
        ignore_lease: false,
    };
    vec![
        KvCommand::Put {
            key: Bytes::from_static(b"key"),
            value: Bytes::from_static(b"value"),
            lease: 0,
            prev_kv: true,
        },
        KvCommand::DeleteRange {
            key: Bytes::from_static(b"a"),
            range_end: Bytes::from_static(b"z"),
            prev_kv: false,
        },
        KvCommand::Compact { revision: 3 },
        KvCommand::LeaseGrant { id: 77, ttl: 10 },
        KvCommand::LeaseRevoke { id: 77 },
        KvCommand::Txn(Txn {
            compares: vec![
                Compare {
                    key: Bytes::from_static(b"k"),
                    range_end: Bytes::new(),
                    result: CompareResult::Equal,
                    target: CompareTarget::Value(Bytes::from_static(b"v1")),
                },
                Compare {
                    key: Bytes::from_static(b"k"),
                    range_end: Bytes::new(),
                    result: CompareResult::Greater,
                    target: CompareTarget::Mod(2),
                },
            ],
            success: vec![put.clone()],
            failure: vec![TxnOp::DeleteRange {
                key: Bytes::from_static(b"k"),
                range_end: Bytes::new(),
                prev_kv: true,
            }],
        }),
    ]
}

fn write_files(target: &str, inputs: &[Vec<u8>]) {
    let dir = fuzz_dir().join("corpus").join(target);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (i, input) in inputs.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), input).unwrap();
    }
}

/// Writes the seed corpus from the real encoders (run once, then commit the files).
#[test]
#[ignore = "writes node/fuzz/corpus; run with FUZZ_WRITE_CORPUS=1 after a format change"]
fn write_corpus() {
    if std::env::var("FUZZ_WRITE_CORPUS").is_err() {
        return;
    }
    let entries = sample_entries();
    let records: Vec<Record> = entries
        .iter()
        .cloned()
        .map(Record::Entry)
        .chain([
            Record::HardState(HardState {
                term: 2,
                vote: 1,
                commit: 4,
            }),
            Record::Truncate { from: 3 },
            Record::Snapshot(sample_meta(5)),
            Record::Compact { upto: 4 },
            Record::SegmentSnapshot(sample_meta(5)),
        ])
        .collect();
    write_files(
        "wal-record",
        &records
            .iter()
            .map(|r| {
                let mut framed = Vec::new();
                r.encode_framed(&mut framed).unwrap();
                let mut out = vec![r.type_byte()];
                out.extend_from_slice(&framed[FRAME_HEADER_BYTES..]);
                out
            })
            .collect::<Vec<_>>(),
    );

    // Real WAL segments, written by the WAL itself.
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = WalLogStore::open(dir.path(), wal_config()).unwrap();
        store
            .set_hard_state(HardState {
                term: 2,
                vote: 1,
                commit: 3,
            })
            .unwrap();
        store.append(&entries).unwrap();
        store.sync().unwrap();
    }
    let mut segments: Vec<Vec<u8>> = read_dir_inputs(dir.path())
        .into_iter()
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "wal"))
        .map(|(_, d)| d)
        .collect();
    assert!(!segments.is_empty());
    write_files("wal-segment-file", &segments);
    segments
        .iter_mut()
        .for_each(|s| s.truncate(SEGMENT_HEADER_BYTES + 64));
    write_files("wal-segment-header", &segments);

    // A key-value store with history, a deletion, a compaction and a lease.
    let mut kv = KvStore::default();
    for (index, command) in sample_kv_commands()
        .into_iter()
        .chain([KvCommand::Put {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v1"),
            lease: 0,
            prev_kv: false,
        }])
        .chain(sample_kv_commands())
        .enumerate()
    {
        kv.apply(index as u64 + 1, &command);
    }
    let mut kv_bytes = Vec::new();
    kv.write_snapshot(&mut kv_bytes).unwrap();
    let mut empty = Vec::new();
    KvStore::default().write_snapshot(&mut empty).unwrap();
    write_files("kv-snapshot", &[kv_bytes.clone(), empty]);

    let dir = tempfile::tempdir().unwrap();
    let snapshots = SnapshotStore::open(dir.path(), CLUSTER, 2).unwrap();
    let mut writer = snapshots.create(&sample_meta(5)).unwrap();
    std::io::Write::write_all(&mut writer, &kv_bytes).unwrap();
    let info = writer.finish().unwrap();
    write_files("snapshot-file", &[std::fs::read(&info.path).unwrap()]);

    let mut table = MemberTable::default();
    let commands = vec![
        MemberCommand::Add {
            id: 4,
            peer_urls: vec!["http://127.0.0.1:2380".into()],
            is_learner: true,
        },
        MemberCommand::Publish {
            id: 4,
            name: "m4".into(),
            peer_urls: vec!["http://127.0.0.1:2380".into()],
            client_urls: vec!["http://127.0.0.1:2379".into(), "http://10.0.0.1:2379".into()],
        },
        MemberCommand::UpdatePeerUrls {
            id: 4,
            peer_urls: vec!["http://127.0.0.2:2380".into()],
        },
    ];
    table.apply_conf_change(&ConfChange::AddVoter(1));
    for command in &commands {
        table.apply_command(command);
    }
    table.apply_conf_change(&ConfChange::AddLearner(4));
    table.apply_conf_change(&ConfChange::Remove(2));
    let mut member_bytes = Vec::new();
    table.write_snapshot(&mut member_bytes).unwrap();
    write_files("member-snapshot", &[member_bytes]);
    write_files(
        "member-command",
        &commands.iter().map(|c| c.encode().to_vec()).collect::<Vec<_>>(),
    );
    write_files(
        "kv-command",
        &sample_kv_commands()
            .iter()
            .map(|c| c.encode().to_vec())
            .collect::<Vec<_>>(),
    );

    // Peer messages: every kind the core sends, plain and compressed.
    use kuberaft_node::raft::{Message, MessageBody};
    let bodies = vec![
        MessageBody::VoteRequest {
            pre_vote: true,
            last_log_index: 4,
            last_log_term: 2,
            leadership_transfer: true,
        },
        MessageBody::VoteResponse {
            pre_vote: false,
            granted: true,
        },
        MessageBody::AppendRequest {
            prev_log_index: 0,
            prev_log_term: 0,
            entries: entries.clone(),
            leader_commit: 3,
        },
        MessageBody::AppendResponse {
            index: 3,
            rejected: true,
            hint_index: 2,
            hint_term: 1,
        },
        MessageBody::Heartbeat {
            leader_commit: 3,
            read_seq: 9,
        },
        MessageBody::HeartbeatResponse {
            read_seq: 9,
            last_log_index: 4,
        },
        MessageBody::InstallSnapshot { meta: sample_meta(5) },
        MessageBody::TimeoutNow,
        MessageBody::ReadIndexRequest { id: 3 },
        MessageBody::ReadIndexResponse {
            id: 3,
            index: Some(4),
        },
        MessageBody::ReadIndexResponse { id: 4, index: None },
    ];
    let messages: Vec<pb::Message> = bodies
        .into_iter()
        .map(|body| {
            convert::message_to_pb(&Message {
                from: 1,
                to: 2,
                term: 2,
                body,
            })
        })
        .collect();
    let mut envelopes: Vec<Vec<u8>> = messages.iter().map(|m| m.encode_to_vec()).collect();
    envelopes.push(kuberaft_node::transport::encode_batch(messages.clone(), usize::MAX, 1).encode_to_vec());
    envelopes.push(kuberaft_node::transport::encode_batch(messages.clone(), 1, 1).encode_to_vec());
    write_files("peer-envelope", &envelopes);
    let chunk = pb::SnapshotChunk {
        meta: Some(convert::snapshot_meta_to_pb(&sample_meta(5))),
        offset: 0,
        data: kv_bytes[..kv_bytes.len().min(64)].to_vec().into(),
        last: true,
        crc32c: 0,
        ..Default::default()
    };
    write_files("snapshot-chunk", &[chunk.encode_to_vec()]);
    write_files(
        "http2-authority",
        &[
            http2_client_stream("http://127.0.0.1:2379", 3),
            http2_client_stream("#initially=[https://example.com:2379]", 2),
            http2_client_stream("127.0.0.1:2379", 2),
        ],
    );
}

/// What an etcd client sends on a connection: preface, SETTINGS, then `requests` gRPC
/// calls, headers encoded with indexing (later requests use the dynamic table).
fn http2_client_stream(authority: &str, requests: u32) -> Vec<u8> {
    use httlib_hpack::Encoder;
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }
    let mut encoder = Encoder::with_dynamic_size(4096);
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[0, 4, 0, 0, 0xff, 0xff]));
    for i in 0..requests {
        let mut block = Vec::new();
        for (name, value) in [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/etcdserverpb.KV/Range"),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ] {
            let flags = Encoder::WITH_INDEXING | Encoder::BEST_FORMAT | Encoder::HUFFMAN_VALUE;
            encoder
                .encode(
                    (name.as_bytes().to_vec(), value.as_bytes().to_vec(), flags),
                    &mut block,
                )
                .unwrap();
        }
        out.extend(frame(0x1, 0x4, 1 + 2 * i, &block));
        out.extend(frame(0x0, 0x1, 1 + 2 * i, &[0, 0, 0, 0, 3, 0x0a, 0x01, b'k']));
    }
    out
}
