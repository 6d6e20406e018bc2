//! A real tonic server and client on 127.0.0.1: proves that the generated KV
//! service code works end to end (HTTP/2, framing, prost codec, method paths).

use std::collections::BTreeMap;
use std::sync::Mutex;

use kuberaft_proto::etcdserverpb::kv_client::KvClient;
use kuberaft_proto::etcdserverpb::kv_server::{Kv, KvServer};
use kuberaft_proto::etcdserverpb::{
    compare, request_op, response_op, CompactionRequest, CompactionResponse, Compare, DeleteRangeRequest,
    DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseHeader,
    ResponseOp, TxnRequest, TxnResponse,
};
use kuberaft_proto::mvccpb::KeyValue;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// A single-member, in-memory KV with just enough MVCC bookkeeping for the test.
#[derive(Default)]
struct TinyKv {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    revision: i64,
    keys: BTreeMap<Vec<u8>, KeyValue>,
}

impl State {
    fn header(&self) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: 1,
            member_id: 2,
            revision: self.revision,
            raft_term: 3,
        })
    }

    fn in_range<'a>(&'a self, key: &'a [u8], end: &'a [u8]) -> impl Iterator<Item = &'a KeyValue> + 'a {
        self.keys.values().filter(move |kv| {
            if end.is_empty() {
                kv.key == key
            } else {
                kv.key.as_slice() >= key && (end == [0] || kv.key.as_slice() < end)
            }
        })
    }

    fn range(&self, req: &RangeRequest) -> RangeResponse {
        let all: Vec<KeyValue> = self.in_range(&req.key, &req.range_end).cloned().collect();
        let count = all.len() as i64;
        let limit = if req.limit > 0 {
            req.limit as usize
        } else {
            usize::MAX
        };
        let more = all.len() > limit;
        let kvs = if req.count_only {
            vec![]
        } else {
            all.into_iter().take(limit).collect()
        };
        RangeResponse {
            header: self.header(),
            kvs,
            more,
            count,
        }
    }

    fn put(&mut self, req: &PutRequest) -> PutResponse {
        self.revision += 1;
        let prev = self.keys.get(&req.key).cloned();
        let kv = KeyValue {
            key: req.key.clone(),
            create_revision: prev.as_ref().map_or(self.revision, |p| p.create_revision),
            mod_revision: self.revision,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value: req.value.clone(),
            lease: req.lease,
        };
        self.keys.insert(req.key.clone(), kv);
        PutResponse {
            header: self.header(),
            prev_kv: if req.prev_kv { prev } else { None },
        }
    }

    fn delete(&mut self, req: &DeleteRangeRequest) -> DeleteRangeResponse {
        let doomed: Vec<KeyValue> = self.in_range(&req.key, &req.range_end).cloned().collect();
        if !doomed.is_empty() {
            self.revision += 1;
        }
        for kv in &doomed {
            self.keys.remove(&kv.key);
        }
        DeleteRangeResponse {
            header: self.header(),
            deleted: doomed.len() as i64,
            prev_kvs: if req.prev_kv { doomed } else { vec![] },
        }
    }

    fn holds(&self, c: &Compare) -> bool {
        use compare::{CompareResult, TargetUnion};
        let kv = self.keys.get(&c.key);
        let ord = match &c.target_union {
            Some(TargetUnion::Version(v)) => kv.map_or(0, |kv| kv.version).cmp(v),
            Some(TargetUnion::CreateRevision(v)) => kv.map_or(0, |kv| kv.create_revision).cmp(v),
            Some(TargetUnion::ModRevision(v)) => kv.map_or(0, |kv| kv.mod_revision).cmp(v),
            Some(TargetUnion::Value(v)) => match kv {
                Some(kv) => kv.value.cmp(v),
                None => return false,
            },
            Some(TargetUnion::Lease(v)) => kv.map_or(0, |kv| kv.lease).cmp(v),
            None => return false,
        };
        match CompareResult::try_from(c.result) {
            Ok(CompareResult::Equal) => ord.is_eq(),
            Ok(CompareResult::Greater) => ord.is_gt(),
            Ok(CompareResult::Less) => ord.is_lt(),
            Ok(CompareResult::NotEqual) => ord.is_ne(),
            Err(_) => false,
        }
    }

    fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse, Status> {
        let succeeded = req.compare.iter().all(|c| self.holds(c));
        let ops = if succeeded { &req.success } else { &req.failure };
        let mut responses = Vec::new();
        for op in ops {
            let response = match &op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    response_op::Response::ResponseRange(self.range(r))
                }
                Some(request_op::Request::RequestPut(p)) => response_op::Response::ResponsePut(self.put(p)),
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    response_op::Response::ResponseDeleteRange(self.delete(d))
                }
                Some(request_op::Request::RequestTxn(t)) => response_op::Response::ResponseTxn(self.txn(t)?),
                None => return Err(Status::invalid_argument("empty request op")),
            };
            responses.push(ResponseOp {
                response: Some(response),
            });
        }
        Ok(TxnResponse {
            header: self.header(),
            succeeded,
            responses,
        })
    }
}

#[tonic::async_trait]
impl Kv for TinyKv {
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        Ok(Response::new(self.state.lock().unwrap().range(request.get_ref())))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        if request.get_ref().key.is_empty() {
            return Err(Status::invalid_argument("etcdserver: key is not provided"));
        }
        Ok(Response::new(self.state.lock().unwrap().put(request.get_ref())))
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        Ok(Response::new(
            self.state.lock().unwrap().delete(request.get_ref()),
        ))
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        Ok(Response::new(self.state.lock().unwrap().txn(request.get_ref())?))
    }

    async fn compact(
        &self,
        _request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        Ok(Response::new(CompactionResponse {
            header: self.state.lock().unwrap().header(),
        }))
    }
}

#[tokio::test]
async fn kv_service_round_trip_over_tcp() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(KvServer::new(TinyKv::default()))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stop_rx.await;
            }),
    );

    let mut client = KvClient::connect(format!("http://{addr}")).await.unwrap();

    let put = |key: &str, value: &str| PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    };
    let r = client.put(put("foo", "bar")).await.unwrap().into_inner();
    let header = r.header.unwrap();
    assert_eq!(
        (
            header.cluster_id,
            header.member_id,
            header.revision,
            header.raft_term
        ),
        (1, 2, 1, 3)
    );
    assert!(r.prev_kv.is_none());

    let r = client
        .put(PutRequest {
            prev_kv: true,
            ..put("foo", "baz")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.prev_kv.unwrap().value, b"bar");
    client.put(put("fop", "1")).await.unwrap();

    // Prefix read of "fo": range_end = "fp".
    let r = client
        .range(RangeRequest {
            key: b"fo".to_vec(),
            range_end: b"fp".to_vec(),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.count, 2);
    assert!(r.more);
    assert_eq!(r.kvs.len(), 1);
    let kv = &r.kvs[0];
    assert_eq!(
        (kv.key.as_slice(), kv.value.as_slice()),
        (&b"foo"[..], &b"baz"[..])
    );
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (1, 2, 2));

    // Compare-and-swap: succeeds when the mod revision matches, fails afterwards.
    let cas = |expected_mod: i64| TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Mod as i32,
            key: b"foo".to_vec(),
            target_union: Some(compare::TargetUnion::ModRevision(expected_mod)),
            ..Default::default()
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(put("foo", "cas"))),
        }],
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: b"foo".to_vec(),
                ..Default::default()
            })),
        }],
    };
    let r = client.txn(cas(2)).await.unwrap().into_inner();
    assert!(r.succeeded);
    assert!(matches!(
        r.responses[0].response,
        Some(response_op::Response::ResponsePut(_))
    ));
    let r = client.txn(cas(2)).await.unwrap().into_inner();
    assert!(!r.succeeded);
    match &r.responses[0].response {
        Some(response_op::Response::ResponseRange(rr)) => assert_eq!(rr.kvs[0].value, b"cas"),
        other => panic!("unexpected {other:?}"),
    }

    let r = client
        .delete_range(DeleteRangeRequest {
            key: b"f".to_vec(),
            range_end: vec![0],
            prev_kv: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.deleted, 2);
    assert_eq!(r.prev_kvs.len(), 2);

    let r = client
        .compact(CompactionRequest {
            revision: 1,
            physical: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.header.unwrap().revision, 5);

    // Errors travel as gRPC statuses, as etcd's do.
    let err = client.put(put("", "x")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(err.message(), "etcdserver: key is not provided");

    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}
