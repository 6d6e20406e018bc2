//! Transactions: compares on the current state, then one branch of operations, all
//! applied at one new revision (or none, when the branch only reads).
//!
//! A txn travels through the log in our own binary format; every count and nesting
//! depth is bounded, and decoding refuses anything malformed before allocating for it.

use std::collections::BTreeSet;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{
    get_bool, get_field, get_i64, get_u8, in_range, put_field, CodecError, KeyValue, KvError, KvResult,
    KvStore, RangeQuery, RangeResult, SortOrder, SortTarget,
};

/// etcd's default `--max-txn-ops`: the most compares, or operations in one branch.
pub const TXN_OPS_MAX: usize = 128;

/// How deep txns may nest inside txns (etcd has no bound; the log needs one).
pub const TXN_DEPTH_MAX: usize = 8;

/// One condition of a txn: every key of `[key, range_end)` must satisfy it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    pub key: Bytes,
    pub range_end: Bytes,
    pub result: CompareResult,
    pub target: CompareTarget,
}

/// How the key's field relates to the target: `field <result> target`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareResult {
    Equal,
    Greater,
    Less,
    NotEqual,
}

/// The field compared, with the value it is compared to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    Version(i64),
    Create(i64),
    Mod(i64),
    Value(Bytes),
    Lease(i64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    Range(RangeQuery),
    Put {
        key: Bytes,
        value: Bytes,
        lease: i64,
        prev_kv: bool,
        /// Keep the key's current value (`value` must be empty); the key must exist.
        ignore_value: bool,
        /// Keep the key's current lease (`lease` must be 0); the key must exist.
        ignore_lease: bool,
    },
    DeleteRange {
        key: Bytes,
        range_end: Bytes,
        prev_kv: bool,
    },
    Txn(Txn),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

/// What one operation of the branch taken did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResult {
    Range(RangeResult),
    Put {
        prev: Option<KeyValue>,
    },
    DeleteRange {
        deleted: i64,
        prev: Vec<KeyValue>,
    },
    Txn {
        succeeded: bool,
        responses: Vec<OpResult>,
    },
}

/// The keys one branch puts and the ranges it deletes.
#[derive(Default)]
struct Writes {
    puts: BTreeSet<Bytes>,
    deletes: Vec<(Bytes, Bytes)>,
}

impl Txn {
    /// Refuses what etcd refuses before a txn runs: too many operations, and a key
    /// written twice by one branch (put twice, or put and deleted).
    pub fn check(&self) -> Result<(), KvError> {
        self.check_at(0).map(|_| ())
    }

    fn check_at(&self, depth: usize) -> Result<(Writes, Writes), KvError> {
        if depth >= TXN_DEPTH_MAX {
            return Err(KvError::TooDeep);
        }
        if self.compares.len() > TXN_OPS_MAX
            || self.success.len() > TXN_OPS_MAX
            || self.failure.len() > TXN_OPS_MAX
        {
            return Err(KvError::TooManyOps);
        }
        Ok((
            branch_writes(&self.success, depth)?,
            branch_writes(&self.failure, depth)?,
        ))
    }

    /// Does any branch, at any depth, write?
    pub fn writes(&self) -> bool {
        self.success.iter().chain(&self.failure).any(|op| match op {
            TxnOp::Range(_) => false,
            TxnOp::Put { .. } | TxnOp::DeleteRange { .. } => true,
            TxnOp::Txn(inner) => inner.writes(),
        })
    }

    pub(super) fn encode_into(&self, out: &mut BytesMut) {
        out.put_u32_le(self.compares.len() as u32);
        for c in &self.compares {
            put_field(out, &c.key);
            put_field(out, &c.range_end);
            out.put_u8(match c.result {
                CompareResult::Equal => 0,
                CompareResult::Greater => 1,
                CompareResult::Less => 2,
                CompareResult::NotEqual => 3,
            });
            match &c.target {
                CompareTarget::Version(n) => {
                    out.put_u8(0);
                    out.put_i64_le(*n);
                }
                CompareTarget::Create(n) => {
                    out.put_u8(1);
                    out.put_i64_le(*n);
                }
                CompareTarget::Mod(n) => {
                    out.put_u8(2);
                    out.put_i64_le(*n);
                }
                CompareTarget::Value(v) => {
                    out.put_u8(3);
                    put_field(out, v);
                }
                CompareTarget::Lease(n) => {
                    out.put_u8(4);
                    out.put_i64_le(*n);
                }
            }
        }
        for branch in [&self.success, &self.failure] {
            out.put_u32_le(branch.len() as u32);
            for op in branch {
                encode_op(op, out);
            }
        }
    }

    pub(super) fn decode_from(buf: &mut Bytes, depth: usize) -> Result<Txn, CodecError> {
        if depth >= TXN_DEPTH_MAX {
            return Err(CodecError::TooMany("txn nesting"));
        }
        let count = get_count(buf)?;
        let mut compares = Vec::with_capacity(count);
        for _ in 0..count {
            let key = get_field(buf)?;
            let range_end = get_field(buf)?;
            let result = match get_u8(buf)? {
                0 => CompareResult::Equal,
                1 => CompareResult::Greater,
                2 => CompareResult::Less,
                3 => CompareResult::NotEqual,
                other => return Err(CodecError::UnknownType(other)),
            };
            let target = match get_u8(buf)? {
                0 => CompareTarget::Version(get_i64(buf)?),
                1 => CompareTarget::Create(get_i64(buf)?),
                2 => CompareTarget::Mod(get_i64(buf)?),
                3 => CompareTarget::Value(get_field(buf)?),
                4 => CompareTarget::Lease(get_i64(buf)?),
                other => return Err(CodecError::UnknownType(other)),
            };
            compares.push(Compare {
                key,
                range_end,
                result,
                target,
            });
        }
        let success = decode_branch(buf, depth)?;
        let failure = decode_branch(buf, depth)?;
        Ok(Txn {
            compares,
            success,
            failure,
        })
    }
}

fn branch_writes(ops: &[TxnOp], depth: usize) -> Result<Writes, KvError> {
    let mut writes = Writes::default();
    for op in ops {
        match op {
            TxnOp::Range(_) => {}
            TxnOp::Put { key, .. } => {
                if !writes.puts.insert(key.clone()) {
                    return Err(KvError::DuplicateKey);
                }
            }
            TxnOp::DeleteRange { key, range_end, .. } => {
                writes.deletes.push((key.clone(), range_end.clone()))
            }
            TxnOp::Txn(inner) => {
                let (success, failure) = inner.check_at(depth + 1)?;
                // Only one inner branch runs, so they may share keys with each other,
                // but not with what this branch writes.
                for key in success.puts.union(&failure.puts) {
                    if writes.puts.contains(key) {
                        return Err(KvError::DuplicateKey);
                    }
                }
                writes.puts.extend(success.puts.into_iter().chain(failure.puts));
                writes
                    .deletes
                    .extend(success.deletes.into_iter().chain(failure.deletes));
            }
        }
    }
    for (start, end) in &writes.deletes {
        if writes.puts.iter().any(|key| in_range(key, start, end)) {
            return Err(KvError::DuplicateKey);
        }
    }
    Ok(writes)
}

const OP_PUT: u8 = 1;
const OP_DELETE_RANGE: u8 = 2;
const OP_TXN: u8 = 4;
const OP_RANGE: u8 = 5;

fn encode_op(op: &TxnOp, out: &mut BytesMut) {
    match op {
        TxnOp::Put {
            key,
            value,
            lease,
            prev_kv,
            ignore_value,
            ignore_lease,
        } => {
            out.put_u8(OP_PUT);
            put_field(out, key);
            put_field(out, value);
            out.put_i64_le(*lease);
            out.put_u8(u8::from(*prev_kv) | u8::from(*ignore_value) << 1 | u8::from(*ignore_lease) << 2);
        }
        TxnOp::DeleteRange {
            key,
            range_end,
            prev_kv,
        } => {
            out.put_u8(OP_DELETE_RANGE);
            put_field(out, key);
            put_field(out, range_end);
            out.put_u8(u8::from(*prev_kv));
        }
        TxnOp::Txn(inner) => {
            out.put_u8(OP_TXN);
            inner.encode_into(out);
        }
        TxnOp::Range(q) => {
            out.put_u8(OP_RANGE);
            put_field(out, &q.key);
            put_field(out, &q.range_end);
            out.put_i64_le(q.revision);
            out.put_i64_le(q.limit);
            out.put_u8(match q.sort_order {
                SortOrder::None => 0,
                SortOrder::Ascend => 1,
                SortOrder::Descend => 2,
            });
            out.put_u8(match q.sort_target {
                SortTarget::Key => 0,
                SortTarget::Version => 1,
                SortTarget::Create => 2,
                SortTarget::Mod => 3,
                SortTarget::Value => 4,
            });
            out.put_u8(u8::from(q.keys_only));
            out.put_u8(u8::from(q.count_only));
            for n in [
                q.min_mod_revision,
                q.max_mod_revision,
                q.min_create_revision,
                q.max_create_revision,
            ] {
                out.put_i64_le(n);
            }
        }
    }
}

fn get_count(buf: &mut Bytes) -> Result<usize, CodecError> {
    if buf.remaining() < 4 {
        return Err(CodecError::Truncated);
    }
    let count = buf.get_u32_le() as usize;
    if count > TXN_OPS_MAX {
        return Err(CodecError::TooMany("txn operation count"));
    }
    Ok(count)
}

fn decode_branch(buf: &mut Bytes, depth: usize) -> Result<Vec<TxnOp>, CodecError> {
    let count = get_count(buf)?;
    let mut ops = Vec::with_capacity(count);
    for _ in 0..count {
        let op = match get_u8(buf)? {
            OP_PUT => {
                let (key, value, lease) = (get_field(buf)?, get_field(buf)?, get_i64(buf)?);
                let flags = get_u8(buf)?;
                if flags > 0b111 {
                    return Err(CodecError::UnknownType(flags));
                }
                TxnOp::Put {
                    key,
                    value,
                    lease,
                    prev_kv: flags & 1 != 0,
                    ignore_value: flags & 2 != 0,
                    ignore_lease: flags & 4 != 0,
                }
            }
            OP_DELETE_RANGE => TxnOp::DeleteRange {
                key: get_field(buf)?,
                range_end: get_field(buf)?,
                prev_kv: get_bool(buf)?,
            },
            OP_TXN => TxnOp::Txn(Txn::decode_from(buf, depth + 1)?),
            OP_RANGE => TxnOp::Range(RangeQuery {
                key: get_field(buf)?,
                range_end: get_field(buf)?,
                revision: get_i64(buf)?,
                limit: get_i64(buf)?,
                sort_order: match get_u8(buf)? {
                    0 => SortOrder::None,
                    1 => SortOrder::Ascend,
                    2 => SortOrder::Descend,
                    other => return Err(CodecError::UnknownType(other)),
                },
                sort_target: match get_u8(buf)? {
                    0 => SortTarget::Key,
                    1 => SortTarget::Version,
                    2 => SortTarget::Create,
                    3 => SortTarget::Mod,
                    4 => SortTarget::Value,
                    other => return Err(CodecError::UnknownType(other)),
                },
                keys_only: get_bool(buf)?,
                count_only: get_bool(buf)?,
                min_mod_revision: get_i64(buf)?,
                max_mod_revision: get_i64(buf)?,
                min_create_revision: get_i64(buf)?,
                max_create_revision: get_i64(buf)?,
            }),
            other => return Err(CodecError::UnknownType(other)),
        };
        ops.push(op);
    }
    Ok(ops)
}

impl KvStore {
    /// Runs a txn: compares and the reads' revision checks see the store as it was
    /// before the txn; operations run in order (a read sees the writes before it), and
    /// every write lands at one new revision. A refused txn changes nothing.
    pub(super) fn apply_txn(&mut self, txn: &Txn) -> KvResult {
        let before = self.clone(); // O(1): structural sharing
        if let Err(error) = txn.check().and_then(|()| before.check_txn_reads(txn)) {
            return KvResult::Failed {
                revision: self.revision,
                error,
            };
        }
        let pending = self.revision + 1;
        let mut changed = false;
        let (succeeded, mut responses) = self.run_txn(&before, txn, pending, &mut changed);
        if changed {
            self.revision = pending;
        }
        stamp_revision(&mut responses, self.revision);
        KvResult::Txn {
            revision: self.revision,
            succeeded,
            responses,
        }
    }

    /// Answers a txn that only reads, without the log (on a linearizable store, the
    /// answer is linearizable).
    pub fn evaluate_read_only_txn(&self, txn: &Txn) -> KvResult {
        assert!(!txn.writes(), "only read-only txns are evaluated off the log");
        self.clone().apply_txn(txn)
    }

    fn compares_hold(&self, txn: &Txn) -> bool {
        txn.compares.iter().all(|c| self.compare_holds(c))
    }

    fn compare_holds(&self, c: &Compare) -> bool {
        let with_value = matches!(c.target, CompareTarget::Value(_));
        let kvs: Vec<KeyValue> = self
            .scan_at(&c.key, &c.range_end, self.revision)
            .map(|(key, meta)| {
                if with_value {
                    self.key_value(key, meta)
                } else {
                    KeyValue {
                        key: key.clone(),
                        value: Bytes::new(),
                        create_revision: meta.create_revision,
                        mod_revision: meta.mod_revision,
                        version: meta.version,
                        lease: meta.lease,
                    }
                }
            })
            .collect();
        if kvs.is_empty() {
            // A missing key has no value to compare; its numbers count as zero.
            if matches!(c.target, CompareTarget::Value(_)) {
                return false;
            }
            let absent = KeyValue {
                key: c.key.clone(),
                value: Bytes::new(),
                create_revision: 0,
                mod_revision: 0,
                version: 0,
                lease: 0,
            };
            return compare_kv(c, &absent);
        }
        kvs.iter().all(|kv| compare_kv(c, kv))
    }

    /// What etcd checks before a txn runs, on the state before it: the revisions of
    /// the reads, and that a put keeping a value or lease has one to keep.
    fn check_txn_reads(&self, txn: &Txn) -> Result<(), KvError> {
        let branch = if self.compares_hold(txn) {
            &txn.success
        } else {
            &txn.failure
        };
        for op in branch {
            match op {
                TxnOp::Range(q) => {
                    self.check_read_revision(q.revision)?;
                }
                TxnOp::Txn(inner) => self.check_txn_reads(inner)?,
                TxnOp::Put {
                    key,
                    lease,
                    ignore_value,
                    ignore_lease,
                    ..
                } => {
                    if (*ignore_value || *ignore_lease)
                        && self.scan_at(key, &[], self.revision).next().is_none()
                    {
                        return Err(KvError::KeyNotFound);
                    }
                    if !*ignore_lease && *lease != 0 && self.lease(*lease).is_none() {
                        return Err(KvError::LeaseNotFound);
                    }
                }
                TxnOp::DeleteRange { .. } => {}
            }
        }
        Ok(())
    }

    fn run_txn(
        &mut self,
        before: &KvStore,
        txn: &Txn,
        pending: i64,
        changed: &mut bool,
    ) -> (bool, Vec<OpResult>) {
        let succeeded = before.compares_hold(txn);
        let branch = if succeeded { &txn.success } else { &txn.failure };
        let mut responses = Vec::with_capacity(branch.len());
        for op in branch {
            let response = match op {
                TxnOp::Range(q) => {
                    let at = if q.revision > 0 { q.revision } else { i64::MAX };
                    OpResult::Range(self.query_at(q, at))
                }
                TxnOp::Put {
                    key,
                    value,
                    lease,
                    prev_kv,
                    ignore_value,
                    ignore_lease,
                } => {
                    let current = if *ignore_value || *ignore_lease {
                        self.current(key)
                    } else {
                        None
                    };
                    let kept = |keep: bool| if keep { current.as_ref() } else { None };
                    let value = kept(*ignore_value).map_or(value, |kv| &kv.value).clone();
                    let lease = kept(*ignore_lease).map_or(*lease, |kv| kv.lease);
                    let prev = self.write_put(pending, key, &value, lease);
                    *changed = true;
                    OpResult::Put {
                        prev: if *prev_kv {
                            prev.map(|meta| self.key_value(key, &meta))
                        } else {
                            None
                        },
                    }
                }
                TxnOp::DeleteRange {
                    key,
                    range_end,
                    prev_kv,
                } => {
                    let doomed = self.write_delete(pending, key, range_end);
                    *changed |= !doomed.is_empty();
                    OpResult::DeleteRange {
                        deleted: doomed.len() as i64,
                        prev: if *prev_kv {
                            doomed.iter().map(|(k, meta)| self.key_value(k, meta)).collect()
                        } else {
                            Vec::new()
                        },
                    }
                }
                TxnOp::Txn(inner) => {
                    let (succeeded, responses) = self.run_txn(before, inner, pending, changed);
                    OpResult::Txn { succeeded, responses }
                }
            };
            responses.push(response);
        }
        (succeeded, responses)
    }
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    let ordering = match &c.target {
        CompareTarget::Version(n) => kv.version.cmp(n),
        CompareTarget::Create(n) => kv.create_revision.cmp(n),
        CompareTarget::Mod(n) => kv.mod_revision.cmp(n),
        CompareTarget::Value(v) => kv.value.cmp(v),
        CompareTarget::Lease(n) => kv.lease.cmp(n),
    };
    match c.result {
        CompareResult::Equal => ordering.is_eq(),
        CompareResult::Greater => ordering.is_gt(),
        CompareResult::Less => ordering.is_lt(),
        CompareResult::NotEqual => ordering.is_ne(),
    }
}

/// Reads inside a txn report the txn's final revision, as etcd's headers do.
fn stamp_revision(responses: &mut [OpResult], revision: i64) {
    for response in responses {
        match response {
            OpResult::Range(r) => r.revision = revision,
            OpResult::Txn { responses, .. } => stamp_revision(responses, revision),
            OpResult::Put { .. } | OpResult::DeleteRange { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::KvCommand;
    use crate::raft::types::Index;

    fn b(s: &str) -> Bytes {
        Bytes::from(s.to_string())
    }

    fn put(key: &str, value: &str) -> TxnOp {
        TxnOp::Put {
            key: b(key),
            value: b(value),
            lease: 0,
            prev_kv: true,
            ignore_value: false,
            ignore_lease: false,
        }
    }

    fn delete(key: &str, range_end: &str) -> TxnOp {
        TxnOp::DeleteRange {
            key: b(key),
            range_end: b(range_end),
            prev_kv: true,
        }
    }

    fn get(key: &str) -> TxnOp {
        TxnOp::Range(RangeQuery::new(key.to_string(), Bytes::new()))
    }

    fn cmp(key: &str, result: CompareResult, target: CompareTarget) -> Compare {
        Compare {
            key: b(key),
            range_end: Bytes::new(),
            result,
            target,
        }
    }

    struct Store {
        kv: KvStore,
        index: Index,
    }

    impl Store {
        /// k1 = "v1" (rev 2), k2 = "v2" (rev 3), k1 = "v1b" (rev 4); revision 1 is the
        /// empty store, as in etcd.
        fn new() -> Store {
            let mut store = Store {
                kv: KvStore::default(),
                index: 0,
            };
            for (key, value) in [("k1", "v1"), ("k2", "v2"), ("k1", "v1b")] {
                store.run(KvCommand::Put {
                    key: b(key),
                    value: b(value),
                    lease: 0,
                    prev_kv: false,
                });
            }
            store
        }

        fn run(&mut self, command: KvCommand) -> KvResult {
            self.index += 1;
            self.kv.apply(self.index, &command)
        }

        fn txn(&mut self, compares: Vec<Compare>, success: Vec<TxnOp>, failure: Vec<TxnOp>) -> KvResult {
            self.run(KvCommand::Txn(Txn {
                compares,
                success,
                failure,
            }))
        }

        fn holds(&mut self, compare: Compare) -> bool {
            match self.txn(vec![compare], vec![], vec![]) {
                KvResult::Txn { succeeded, .. } => succeeded,
                other => panic!("{other:?}"),
            }
        }

        fn value(&self, key: &str) -> Option<Bytes> {
            self.kv
                .range(key.as_bytes(), b"", 0, false, false)
                .kvs
                .first()
                .map(|kv| kv.value.clone())
        }
    }

    #[test]
    fn compares_check_every_target_with_every_relation() {
        use CompareResult::*;
        use CompareTarget::*;
        let mut s = Store::new();
        // k1: version 2, create 2, mod 4, value "v1b", lease 0.
        for (compare, expected) in [
            (cmp("k1", Equal, Version(2)), true),
            (cmp("k1", Greater, Version(1)), true),
            (cmp("k1", Less, Version(2)), false),
            (cmp("k1", NotEqual, Version(2)), false),
            (cmp("k1", Equal, Create(2)), true),
            (cmp("k1", Greater, Create(2)), false),
            (cmp("k1", Greater, Create(1)), true),
            (cmp("k1", Equal, Mod(4)), true),
            (cmp("k1", Less, Mod(5)), true),
            (cmp("k1", Less, Mod(4)), false),
            (cmp("k1", Equal, Value(b("v1b"))), true),
            (cmp("k1", Greater, Value(b("v1a"))), true),
            (cmp("k1", Less, Value(b("v1a"))), false),
            (cmp("k1", NotEqual, Value(b("v1b"))), false),
            (cmp("k1", Equal, Lease(0)), true),
            (cmp("k1", NotEqual, Lease(7)), true),
            // A missing key has version, revisions and lease 0, and no value at all.
            (cmp("nope", Equal, Version(0)), true),
            (cmp("nope", Equal, Create(0)), true),
            (cmp("nope", Equal, Value(Bytes::new())), false),
            (cmp("nope", NotEqual, Value(b("x"))), false),
        ] {
            assert_eq!(s.holds(compare.clone()), expected, "{compare:?}");
        }
        assert_eq!(s.kv.revision(), 4, "compares alone write nothing");
    }

    #[test]
    fn a_range_compare_holds_only_when_every_key_in_it_holds() {
        let mut s = Store::new();
        let ranged = |result, target| Compare {
            range_end: b("k3"),
            ..cmp("k", result, target)
        };
        assert!(s.holds(ranged(CompareResult::Greater, CompareTarget::Mod(2))));
        assert!(!s.holds(ranged(CompareResult::Greater, CompareTarget::Mod(3))));
        assert!(s.holds(ranged(CompareResult::Less, CompareTarget::Value(b("w")))));
        assert!(!s.holds(ranged(CompareResult::Equal, CompareTarget::Version(1))));
    }

    #[test]
    fn the_branch_taken_writes_atomically_at_one_new_revision() {
        let mut s = Store::new();
        let result = s.txn(
            vec![cmp("k1", CompareResult::Equal, CompareTarget::Value(b("v1b")))],
            vec![put("k1", "new"), put("k9", "nine"), delete("k2", ""), get("k9")],
            vec![put("k1", "failure")],
        );
        let KvResult::Txn {
            revision,
            succeeded,
            responses,
        } = result
        else {
            panic!("{result:?}")
        };
        assert_eq!((revision, succeeded), (5, true));
        assert!(matches!(&responses[0], OpResult::Put { prev: Some(p) } if p.value == b("v1b")));
        assert!(matches!(&responses[1], OpResult::Put { prev: None }));
        assert!(matches!(&responses[2], OpResult::DeleteRange { deleted: 1, .. }));
        // A read inside the txn sees the writes before it, and reports the txn's revision.
        let OpResult::Range(read) = &responses[3] else {
            panic!()
        };
        assert_eq!(
            (read.kvs[0].value.clone(), read.kvs[0].mod_revision, read.revision),
            (b("nine"), 5, 5)
        );
        assert_eq!(
            (s.value("k1"), s.value("k9"), s.value("k2")),
            (Some(b("new")), Some(b("nine")), None)
        );
        let k1 = &s.kv.range(b"k1", b"", 0, false, false).kvs[0];
        assert_eq!((k1.create_revision, k1.mod_revision, k1.version), (2, 5, 3));
        // The failure branch runs when a compare fails.
        let result = s.txn(
            vec![cmp("k1", CompareResult::Equal, CompareTarget::Version(1))],
            vec![put("k1", "success")],
            vec![put("k1", "failure")],
        );
        assert!(matches!(
            result,
            KvResult::Txn {
                revision: 6,
                succeeded: false,
                ..
            }
        ));
        assert_eq!(s.value("k1"), Some(b("failure")));
    }

    #[test]
    fn a_txn_that_only_reads_or_deletes_nothing_does_not_bump_the_revision() {
        let mut s = Store::new();
        let result = s.txn(vec![], vec![get("k1"), delete("zz", "")], vec![]);
        assert!(matches!(
            result,
            KvResult::Txn {
                revision: 4,
                succeeded: true,
                ..
            }
        ));
        assert_eq!(s.kv.revision(), 4);
        let txn = Txn {
            compares: vec![],
            success: vec![get("k2")],
            failure: vec![],
        };
        assert!(!txn.writes());
        let before = s.kv.applied();
        assert!(matches!(
            s.kv.evaluate_read_only_txn(&txn),
            KvResult::Txn { revision: 4, .. }
        ));
        assert_eq!(s.kv.applied(), before);
    }

    #[test]
    fn nested_txns_see_the_state_before_the_outer_txn_wrote() {
        let mut s = Store::new();
        let inner = Txn {
            // Before the outer txn, k1 is at version 2; the outer put does not change that
            // for the inner compare.
            compares: vec![cmp("k1", CompareResult::Equal, CompareTarget::Version(2))],
            success: vec![put("inner", "yes")],
            failure: vec![put("inner", "no")],
        };
        let result = s.txn(vec![], vec![put("k1", "x"), TxnOp::Txn(inner)], vec![]);
        let KvResult::Txn {
            revision, responses, ..
        } = result
        else {
            panic!()
        };
        assert_eq!(revision, 5);
        assert!(matches!(&responses[1], OpResult::Txn { succeeded: true, .. }));
        assert_eq!(s.value("inner"), Some(b("yes")));
    }

    #[test]
    fn duplicate_keys_and_too_many_ops_are_refused_like_etcd_and_change_nothing() {
        let mut s = Store::new();
        let nested = |ops| {
            TxnOp::Txn(Txn {
                compares: vec![],
                success: ops,
                failure: vec![],
            })
        };
        for success in [
            vec![put("a", "1"), put("a", "2")],
            vec![put("a", "1"), delete("a", "")],
            vec![delete("a", "c"), put("b", "1")],
            vec![put("a", "1"), nested(vec![put("a", "2")])],
            vec![nested(vec![delete("a", "\0")]), put("b", "1")],
        ] {
            assert_eq!(
                s.txn(vec![], success.clone(), vec![]),
                KvResult::Failed {
                    revision: 4,
                    error: KvError::DuplicateKey
                },
                "{success:?}"
            );
        }
        // Allowed: overlapping deletes, and the same key in the two branches.
        assert!(matches!(
            s.txn(
                vec![],
                vec![delete("k1", ""), delete("k", "l")],
                vec![put("k1", "x")]
            ),
            KvResult::Txn { revision: 5, .. }
        ));
        let many = (0..=TXN_OPS_MAX).map(|i| put(&format!("key{i}"), "v")).collect();
        assert_eq!(
            s.txn(vec![], many, vec![]),
            KvResult::Failed {
                revision: 5,
                error: KvError::TooManyOps
            }
        );
        assert_eq!(
            KvError::DuplicateKey.to_string(),
            "etcdserver: duplicate key given in txn request"
        );
        assert_eq!(
            KvError::TooManyOps.to_string(),
            "etcdserver: too many operations in txn request"
        );
    }

    #[test]
    fn a_read_below_the_compacted_revision_fails_the_whole_txn() {
        let mut s = Store::new();
        s.run(KvCommand::Compact { revision: 3 });
        let old_read = TxnOp::Range(RangeQuery {
            revision: 2,
            ..RangeQuery::new("k1", Bytes::new())
        });
        assert_eq!(
            s.txn(vec![], vec![put("k2", "x"), old_read], vec![]),
            KvResult::Failed {
                revision: 4,
                error: KvError::Compacted
            }
        );
        let future_read = TxnOp::Range(RangeQuery {
            revision: 5,
            ..RangeQuery::new("k1", Bytes::new())
        });
        assert_eq!(
            s.txn(vec![], vec![put("k2", "x"), future_read], vec![]),
            KvResult::Failed {
                revision: 4,
                error: KvError::FutureRevision
            }
        );
        assert_eq!(s.value("k2"), Some(b("v2")));
        // A read at an old revision that is still kept works inside a txn.
        let kept = TxnOp::Range(RangeQuery {
            revision: 3,
            ..RangeQuery::new("k1", Bytes::new())
        });
        let KvResult::Txn { responses, .. } = s.txn(vec![], vec![kept], vec![]) else {
            panic!()
        };
        assert!(matches!(&responses[0], OpResult::Range(r) if r.kvs[0].value == b("v1")));
    }

    #[test]
    fn a_put_that_ignores_the_value_keeps_it_and_needs_the_key_to_exist() {
        let mut s = Store::new();
        let keep_value = |key: &str| TxnOp::Put {
            key: b(key),
            value: Bytes::new(),
            lease: 0,
            prev_kv: false,
            ignore_value: true,
            ignore_lease: true,
        };
        assert!(matches!(
            s.txn(vec![], vec![keep_value("k1")], vec![]),
            KvResult::Txn { revision: 5, .. }
        ));
        let k1 = &s.kv.range(b"k1", b"", 0, false, false).kvs[0];
        assert_eq!((k1.value.clone(), k1.version, k1.mod_revision), (b("v1b"), 3, 5));
        assert_eq!(
            s.txn(vec![], vec![put("k2", "x"), keep_value("missing")], vec![]),
            KvResult::Failed {
                revision: 5,
                error: KvError::KeyNotFound
            }
        );
        assert_eq!(s.value("k2"), Some(b("v2")));
        let command = KvCommand::Txn(Txn {
            compares: vec![],
            success: vec![keep_value("k1")],
            failure: vec![],
        });
        assert_eq!(KvCommand::decode(command.encode()).unwrap(), command);
    }
}
