//! Snapshot transfer over real gRPC: an interrupted transfer resumes where the
//! receiver stopped, and the result is checked end to end.

use std::io::Read;

use kuberaft_node::raft::{Membership, SnapshotMeta};
use kuberaft_node::storage::SnapshotStore;
use kuberaft_node::transport::{PeerService, TransportConfig};
use kuberaft_proto::raft as pb;
use tokio::sync::mpsc;

const CLUSTER_ID: u64 = 7;

fn hello() -> pb::Hello {
    pb::Hello {
        cluster_token: "token".into(),
        cluster_id: CLUSTER_ID,
        from_id: 2,
        to_id: 1,
        protocol_version: 1,
        client_urls: vec![],
    }
}

fn meta() -> SnapshotMeta {
    SnapshotMeta {
        index: 500,
        term: 4,
        membership: Membership::new([1, 2, 3]),
        timing: None,
    }
}

fn chunk(data: &[u8], offset: usize, len: usize, first: bool, total: usize, crc: u32) -> pb::SnapshotChunk {
    let end = (offset + len).min(total);
    let last = end == total;
    pb::SnapshotChunk {
        hello: first.then(hello),
        meta: first.then(|| kuberaft_node::transport::convert::snapshot_meta_to_pb(&meta())),
        offset: offset as u64,
        data: data[offset..end].to_vec().into(),
        total_size: total as u64,
        last,
        crc32c: if last { crc } else { 0 },
    }
}

/// A receiving member's peer service on a real port, and a client connected to it.
/// The returned inbox receiver keeps the service's inbox open.
async fn serve_peer(
    dir: &std::path::Path,
) -> (
    SnapshotStore,
    pb::peer_client::PeerClient<tonic::transport::Channel>,
    mpsc::Receiver<kuberaft_node::runtime::Input>,
) {
    let store = SnapshotStore::open(dir, CLUSTER_ID, 2).unwrap();
    let (inbox, inbox_rx) = mpsc::channel(16);
    let service = PeerService::new(
        TransportConfig::new(1, "token".into(), CLUSTER_ID),
        inbox,
        store.clone(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service.into_server())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let client = pb::peer_client::PeerClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    (store, client, inbox_rx)
}

#[tokio::test]
async fn an_interrupted_snapshot_transfer_resumes_where_the_receiver_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let (store, mut client, _inbox) = serve_peer(dir.path()).await;

    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let total = data.len();
    let crc = crc32c::crc32c(&data);
    let piece = 256 * 1024;

    // First attempt: the sender dies after four chunks (the stream just ends).
    let partial: Vec<pb::SnapshotChunk> = (0..4)
        .map(|i| chunk(&data, i * piece, piece, i == 0, total, crc))
        .collect();
    let ack = client
        .install_snapshot(tokio_stream::iter(partial))
        .await
        .unwrap()
        .into_inner();
    assert!(!ack.complete);
    assert_eq!(ack.received_offset, (4 * piece) as u64);
    assert!(
        store.latest().unwrap().is_none(),
        "nothing is visible before the transfer completes"
    );

    // The sender asks again from the start: the receiver answers with what it holds.
    let ack = client
        .install_snapshot(tokio_stream::iter(vec![chunk(&data, 0, piece, true, total, crc)]))
        .await
        .unwrap()
        .into_inner();
    assert!(!ack.complete);
    assert_eq!(ack.received_offset, (4 * piece) as u64, "{}", ack.error);
    assert!(ack.error.starts_with("resume"), "{}", ack.error);

    // It resumes from there and finishes.
    let rest: Vec<pb::SnapshotChunk> = (4..total.div_ceil(piece))
        .map(|i| chunk(&data, i * piece, piece, i == 4, total, crc))
        .collect();
    let ack = client
        .install_snapshot(tokio_stream::iter(rest))
        .await
        .unwrap()
        .into_inner();
    assert!(ack.complete, "{}", ack.error);
    assert_eq!(ack.received_offset, total as u64);

    let info = store.latest().unwrap().expect("the snapshot is stored");
    assert_eq!(info.meta, meta());
    let mut stored = Vec::new();
    store
        .open_reader(&info)
        .unwrap()
        .read_to_end(&mut stored)
        .unwrap();
    assert!(stored == data, "the stored data is exactly what was sent");
}

#[tokio::test]
async fn a_corrupted_transfer_is_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let (store, mut client, _inbox) = serve_peer(dir.path()).await;
    let data = vec![7u8; 100_000];
    let wrong_crc = crc32c::crc32c(&data) ^ 1;
    let ack = client
        .install_snapshot(tokio_stream::iter(vec![chunk(
            &data,
            0,
            data.len(),
            true,
            data.len(),
            wrong_crc,
        )]))
        .await
        .unwrap()
        .into_inner();
    assert!(!ack.complete);
    assert!(ack.error.contains("checksum mismatch"), "{}", ack.error);
    assert!(store.latest().unwrap().is_none());
}
