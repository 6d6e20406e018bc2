//! The gRPC transport between members (`kuberaft.raft.v1.Peer`).
//!
//! Each member opens one long-lived stream to every peer and sends it batches of
//! messages; messages in the other direction travel on the stream that peer opened.
//! A per-peer task owns the connection and a bounded queue: when the queue is full
//! the message is dropped (Raft retries) rather than blocking the core. A broken
//! stream is reported to the core (`report_unreachable`, so pipelined appends are
//! resent) and reopened with exponential back-off and jitter, capped below the
//! election timeout.
//!
//! Snapshots travel on their own call (`InstallSnapshot`), in chunks; the receiver
//! writes them to its snapshot store, checks the checksum, and only then is the
//! `InstallSnapshot` message handed to the core.
//!
//! Every stream starts with a `Hello`: a peer of another cluster (token or id) or a
//! message for another member is refused with FAILED_PRECONDITION and changes nothing.
//!
//! Round-trip times are measured on the streams themselves: the receiver echoes the
//! probe number some batches carry on the response side of the same call ([`rtt`]);
//! the per-peer tasks also record whether their stream is up and how long they back
//! off, in `TransportConfig::links`, for the admin API and `/metrics`.

pub mod convert;
pub mod rtt;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kuberaft_proto::raft as pb;
use kuberaft_proto::raft::peer_client::PeerClient;
use kuberaft_proto::raft::peer_server::{Peer, PeerServer};
use rand::Rng;
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::raft::{Message, MessageBody, NodeId};
use crate::runtime::{Input, Outbox};
use crate::storage::SnapshotStore;

pub const PROTOCOL_VERSION: u32 = 1;

/// Settings shared by both directions.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    pub id: NodeId,
    pub cluster_token: String,
    pub cluster_id: u64,
    /// Messages queued per peer before new ones are dropped.
    pub queue_capacity: usize,
    /// Messages per envelope.
    pub batch_messages_max: usize,
    /// Largest decoded envelope accepted from a peer.
    pub envelope_bytes_max: usize,
    /// Back-off toward an unreachable peer: starts here, doubles, never above `max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Snapshot data per chunk.
    pub snapshot_chunk_bytes: usize,
    /// Batches whose encoding reaches this size are sent zstd-compressed (0: never).
    pub compress_threshold_bytes: usize,
    pub zstd_level: i32,
    /// This member's advertised client URLs, told to every peer in the hello.
    pub client_urls: Vec<String>,
    /// Client URLs peers told us, by member id.
    pub directory: Directory,
    /// Ids removed from the cluster: their streams are refused (kept in step with the
    /// member table by `join::follow_members`).
    pub removed: RemovedSet,
    /// Set when a peer refused this member because it was removed.
    pub removed_notice: Arc<tokio::sync::watch::Sender<bool>>,
    /// Round-trip times and stream state per peer (read by the admin API and metrics).
    pub links: Arc<rtt::PeerLinks>,
    /// Mutual TLS toward peers (https:// peer URLs): the peer CA and this member's
    /// peer certificate, read at each connection so a rotated one is used next time.
    pub tls: Option<crate::security::tls::ClientTlsFiles>,
}

/// Ids of removed members.
pub type RemovedSet = Arc<Mutex<std::collections::HashSet<NodeId>>>;

/// In the status a peer refuses a removed member with; the removed member looks for it.
pub const REMOVED_MESSAGE: &str = "was removed from the cluster";

/// The client URLs of the members, as they announced them.
pub type Directory = Arc<Mutex<HashMap<NodeId, Vec<String>>>>;

impl TransportConfig {
    pub fn new(id: NodeId, cluster_token: String, cluster_id: u64) -> Self {
        TransportConfig {
            id,
            cluster_token,
            cluster_id,
            queue_capacity: 4096,
            batch_messages_max: 64,
            envelope_bytes_max: 64 << 20,
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(400),
            snapshot_chunk_bytes: 1 << 20,
            compress_threshold_bytes: 64 << 10,
            zstd_level: 1,
            client_urls: Vec::new(),
            directory: Directory::default(),
            removed: RemovedSet::default(),
            removed_notice: Arc::new(tokio::sync::watch::channel(false).0),
            links: Arc::default(),
            tls: None,
        }
    }

    fn hello(&self, to: NodeId) -> pb::Hello {
        pb::Hello {
            cluster_token: self.cluster_token.clone(),
            cluster_id: self.cluster_id,
            from_id: self.id,
            to_id: to,
            protocol_version: PROTOCOL_VERSION,
            client_urls: self.client_urls.clone(),
        }
    }

    fn check_not_removed(&self, from: NodeId) -> Result<(), Status> {
        if self.removed.lock().expect("not poisoned").contains(&from) {
            return Err(Status::failed_precondition(format!(
                "member {from:#x} {REMOVED_MESSAGE}"
            )));
        }
        Ok(())
    }

    /// Why a peer's hello is refused, if it is.
    fn check_hello(&self, hello: &pb::Hello) -> Result<(), Status> {
        if hello.cluster_token != self.cluster_token {
            return Err(Status::failed_precondition(format!(
                "cluster token mismatch: peer {:#x} has {:?}, this member has {:?}",
                hello.from_id, hello.cluster_token, self.cluster_token
            )));
        }
        if hello.cluster_id != self.cluster_id {
            return Err(Status::failed_precondition(format!(
                "cluster id mismatch: peer {:#x} belongs to cluster {:#x}, this member to {:#x}",
                hello.from_id, hello.cluster_id, self.cluster_id
            )));
        }
        if hello.to_id != self.id {
            return Err(Status::failed_precondition(format!(
                "this member is {:#x}, not {:#x}",
                self.id, hello.to_id
            )));
        }
        if hello.from_id == 0 || hello.from_id == self.id {
            return Err(Status::invalid_argument("hello from an invalid member id"));
        }
        self.check_not_removed(hello.from_id)?;
        if hello.protocol_version != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "peer speaks protocol version {}, this member {PROTOCOL_VERSION}",
                hello.protocol_version
            )));
        }
        Ok(())
    }
}

/// The sending side: one queue and one task per peer.
pub struct GrpcTransport {
    config: TransportConfig,
    peers: Mutex<HashMap<NodeId, mpsc::Sender<Message>>>,
    urls: Mutex<HashMap<NodeId, String>>,
    inbox: Mutex<Option<mpsc::Sender<Input>>>,
    snapshots: Mutex<Option<SnapshotStore>>,
}

impl GrpcTransport {
    pub fn new(config: TransportConfig, peer_urls: HashMap<NodeId, String>) -> Arc<Self> {
        Arc::new(GrpcTransport {
            config,
            peers: Mutex::new(HashMap::new()),
            urls: Mutex::new(peer_urls),
            inbox: Mutex::new(None),
            snapshots: Mutex::new(None),
        })
    }

    /// Connects the transport to the node it serves (known only once it started).
    pub fn attach(&self, inbox: mpsc::Sender<Input>, snapshots: SnapshotStore) {
        *self.inbox.lock().expect("not poisoned") = Some(inbox);
        *self.snapshots.lock().expect("not poisoned") = Some(snapshots);
    }

    /// The address this transport uses for a member.
    pub fn peer_url(&self, id: NodeId) -> Option<String> {
        self.urls.lock().expect("not poisoned").get(&id).cloned()
    }

    /// Learns (or changes) the address of a member.
    pub fn set_peer_url(&self, id: NodeId, url: String) {
        self.urls.lock().expect("not poisoned").insert(id, url);
        self.peers.lock().expect("not poisoned").remove(&id);
    }

    fn queue_for(self: &Arc<Self>, to: NodeId) -> Option<mpsc::Sender<Message>> {
        let mut peers = self.peers.lock().expect("not poisoned");
        if let Some(tx) = peers.get(&to) {
            if !tx.is_closed() {
                return Some(tx.clone());
            }
        }
        let url = self.urls.lock().expect("not poisoned").get(&to).cloned()?;
        let inbox = self.inbox.lock().expect("not poisoned").clone()?;
        let snapshots = self.snapshots.lock().expect("not poisoned").clone()?;
        let (tx, rx) = mpsc::channel(self.config.queue_capacity);
        peers.insert(to, tx.clone());
        let task = PeerTask {
            config: self.config.clone(),
            to,
            url,
            inbox,
            snapshots,
        };
        tokio::spawn(task.run(rx));
        Some(tx)
    }
}

impl Outbox for Arc<GrpcTransport> {
    fn send(&self, message: Message) {
        let to = message.to;
        match self.queue_for(to) {
            Some(queue) => {
                if queue.try_send(message).is_err() {
                    tracing::debug!(to, "peer queue full: message dropped");
                }
            }
            None => tracing::debug!(to, "no address for peer: message dropped"),
        }
    }
}

struct PeerTask {
    config: TransportConfig,
    to: NodeId,
    url: String,
    inbox: mpsc::Sender<Input>,
    snapshots: SnapshotStore,
}

impl PeerTask {
    async fn run(self, mut queue: mpsc::Receiver<Message>) {
        let mut backoff = self.config.backoff_initial;
        loop {
            let mut was_up = false;
            match self.connect_and_send(&mut queue, &mut was_up).await {
                Ok(()) => return, // queue closed: the node stopped
                Err(e) => {
                    if e.contains(REMOVED_MESSAGE) {
                        tracing::error!(to = self.to, error = %e, "a peer says this member was removed from the cluster");
                        self.config.removed_notice.send_replace(true);
                    }
                    tracing::debug!(to = self.to, error = %e, "peer stream ended");
                    let _ = self.inbox.try_send(Input::Unreachable(self.to));
                }
            }
            if was_up {
                backoff = self.config.backoff_initial;
            }
            // Drop what queued up meanwhile: it is stale, and Raft resends.
            while queue.try_recv().is_ok() {}
            let jitter = rand::thread_rng().gen_range(0..=backoff.as_millis() as u64 / 2);
            let wait = backoff + Duration::from_millis(jitter);
            self.config.links.stream_down(self.to, Instant::now() + wait);
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(self.config.backoff_max);
        }
    }

    /// Sets `was_up` once the peer accepted the stream.
    async fn connect_and_send(
        &self,
        queue: &mut mpsc::Receiver<Message>,
        was_up: &mut bool,
    ) -> Result<(), String> {
        let endpoint = crate::security::tls::ClientTlsFiles::endpoint(self.config.tls.as_ref(), &self.url)
            .map_err(|e| format!("peer url {}: {e}", self.url))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true);
        let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
        let mut client = PeerClient::new(channel.clone())
            .max_decoding_message_size(self.config.envelope_bytes_max)
            .max_encoding_message_size(self.config.envelope_bytes_max);
        let (tx, rx) = mpsc::channel::<pb::PeerEnvelope>(16);
        tx.send(pb::PeerEnvelope {
            content: Some(pb::peer_envelope::Content::Hello(self.config.hello(self.to))),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
        let response = client
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|e| e.to_string())?;
        let mut replies = response.into_inner();
        *was_up = true;
        self.config.links.stream_up(self.to);
        let mut prober = rtt::Prober::default();
        // The peer answers with its hello, then echoes probes; nothing else comes back.
        let mut batch = Vec::with_capacity(self.config.batch_messages_max);
        loop {
            tokio::select! {
                message = queue.recv() => {
                    let Some(message) = message else { return Ok(()) };
                    // Bounded in messages and in bytes (a batch of forwarded proposals of
                    // the largest size would otherwise exceed what the peer decodes).
                    let mut bytes = message.body.size_bytes();
                    batch.push(message);
                    while batch.len() < self.config.batch_messages_max && bytes < self.config.envelope_bytes_max / 4 {
                        match queue.try_recv() {
                            Ok(m) => {
                                bytes += m.body.size_bytes();
                                batch.push(m);
                            }
                            Err(_) => break,
                        }
                    }
                    let mut plain = Vec::with_capacity(batch.len());
                    let mut timed = false;
                    for message in batch.drain(..) {
                        timed |= matches!(
                            message.body,
                            MessageBody::Heartbeat { .. } | MessageBody::AppendRequest { .. }
                        );
                        if let MessageBody::InstallSnapshot { meta } = &message.body {
                            // Data first, then the announcement on the stream.
                            match self.send_snapshot(&mut client, meta).await {
                                Ok(()) => plain.push(convert::message_to_pb(&message)),
                                Err(e) => {
                                    tracing::warn!(to = self.to, error = %e, "snapshot transfer failed");
                                    let _ = self.inbox.try_send(Input::SnapshotFailed(self.to));
                                }
                            }
                        } else {
                            plain.push(convert::message_to_pb(&message));
                        }
                    }
                    if plain.is_empty() {
                        continue;
                    }
                    let mut envelope = encode_batch(plain, self.config.compress_threshold_bytes, self.config.zstd_level);
                    envelope.probe = prober.probe(Instant::now(), timed);
                    tx.send(envelope).await.map_err(|_| "stream closed".to_string())?;
                }
                reply = replies.next() => {
                    match reply {
                        Some(Ok(envelope)) => {
                            if envelope.probe_echo != 0 {
                                let now = Instant::now();
                                if let Some(rtt) = prober.echoed(envelope.probe_echo, now) {
                                    self.config.links.record_rtt(self.to, now, rtt);
                                }
                            }
                        }
                        Some(Err(status)) => return Err(format!("{}: {}", status.code(), status.message())),
                        None => return Err("peer closed the stream".into()),
                    }
                }
            }
        }
    }

    /// Streams the snapshot, resuming where the receiver stopped if a transfer is
    /// interrupted (a few attempts, then the core is told it failed).
    async fn send_snapshot(
        &self,
        client: &mut PeerClient<tonic::transport::Channel>,
        meta: &crate::raft::SnapshotMeta,
    ) -> Result<(), String> {
        let mut start = 0u64;
        let mut last_error = String::new();
        for attempt in 0..SNAPSHOT_ATTEMPTS {
            match self.stream_snapshot(client, meta, start).await {
                Ok(ack) if ack.complete => return Ok(()),
                Ok(ack) if ack.error.starts_with(RESUME_PREFIX) => {
                    tracing::info!(
                        to = self.to,
                        offset = ack.received_offset,
                        "resuming snapshot transfer"
                    );
                    start = ack.received_offset;
                }
                Ok(ack) => return Err(format!("peer refused the snapshot: {}", ack.error)),
                Err(e) => {
                    last_error = e;
                    // Ask again from the start; the receiver answers with what it holds.
                    start = 0;
                    tokio::time::sleep(self.config.backoff_initial * (attempt + 1)).await;
                }
            }
        }
        Err(format!(
            "gave up after {SNAPSHOT_ATTEMPTS} attempts: {last_error}"
        ))
    }

    async fn stream_snapshot(
        &self,
        client: &mut PeerClient<tonic::transport::Channel>,
        meta: &crate::raft::SnapshotMeta,
        start: u64,
    ) -> Result<pb::SnapshotAck, String> {
        let info = {
            let snapshots = self.snapshots.clone();
            let wanted = meta.clone();
            tokio::task::spawn_blocking(move || snapshots.for_sending(&wanted))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("snapshot {} is no longer held", meta.index))?
        };
        let reader = self.snapshots.open_reader(&info).map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::channel::<pb::SnapshotChunk>(4);
        let reading = tokio::task::spawn_blocking({
            let hello = self.config.hello(self.to);
            let meta = convert::snapshot_meta_to_pb(meta);
            let chunk_bytes = self.config.snapshot_chunk_bytes;
            let total = info.data_bytes;
            move || send_chunks(reader, tx, hello, meta, total, start, chunk_bytes)
        });
        let ack = client
            .install_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|s| format!("{}: {}", s.code(), s.message()))?
            .into_inner();
        // The receiver may answer early (to ask for a resume); the reader then stops.
        let _ = reading.await;
        Ok(ack)
    }
}

/// Probe echoes queued on one stream's response side before new ones are dropped.
const ECHOES_QUEUED_MAX: usize = 64;
/// Attempts at one snapshot transfer (each resuming the last) before giving up.
const SNAPSHOT_ATTEMPTS: u32 = 4;
/// How a receiver asks the sender to continue from the offset it holds.
const RESUME_PREFIX: &str = "resume";

/// Reads `reader` from `start` (hashing what it skips, since the checksum covers all
/// of the data) and sends it in chunks; the first chunk carries hello and metadata.
fn send_chunks(
    mut reader: crate::storage::SnapshotReader,
    tx: mpsc::Sender<pb::SnapshotChunk>,
    hello: pb::Hello,
    meta: pb::SnapshotMeta,
    total: u64,
    start: u64,
    chunk_bytes: usize,
) -> Result<(), String> {
    let mut crc = 0u32;
    let mut skipped = 0u64;
    let mut buffer = vec![0u8; chunk_bytes.max(1)];
    while skipped < start {
        let want = ((start - skipped) as usize).min(buffer.len());
        reader
            .read_exact(&mut buffer[..want])
            .map_err(|e| e.to_string())?;
        crc = crc32c::crc32c_append(crc, &buffer[..want]);
        skipped += want as u64;
    }
    let mut offset = start;
    let mut first = true;
    loop {
        let mut filled = 0;
        while filled < buffer.len() && offset + (filled as u64) < total {
            let n = reader.read(&mut buffer[filled..]).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        let data = &buffer[..filled];
        crc = crc32c::crc32c_append(crc, data);
        let last = offset + filled as u64 >= total;
        let chunk = pb::SnapshotChunk {
            hello: first.then(|| hello.clone()),
            meta: first.then(|| meta.clone()),
            offset,
            data: data.to_vec().into(),
            total_size: total,
            last,
            crc32c: if last { crc } else { 0 },
        };
        first = false;
        offset += filled as u64;
        if tx.blocking_send(chunk).is_err() {
            return Err("the receiver stopped reading".into());
        }
        if last {
            return Ok(());
        }
    }
}

/// A transfer in progress on the receiving side.
struct Partial {
    meta: crate::raft::SnapshotMeta,
    writer: crate::storage::SnapshotWriter,
    received: u64,
    crc: u32,
}

enum Received {
    Complete { received: u64 },
    Interrupted(Box<Partial>),
    Failed(String),
}

/// Crash point before a received snapshot chunk is written; an `error` fails the
/// transfer.
fn snapshot_chunk_point() -> std::io::Result<()> {
    crate::fail_point!("transport-snapshot-chunk", Err);
    Ok(())
}

fn receive_chunks(mut partial: Partial, mut rx: mpsc::Receiver<pb::SnapshotChunk>) -> Received {
    while let Some(chunk) = rx.blocking_recv() {
        if chunk.offset != partial.received {
            return Received::Failed(format!(
                "chunk at {} while {} bytes were received",
                chunk.offset, partial.received
            ));
        }
        if let Err(e) = snapshot_chunk_point().and_then(|()| partial.writer.write_all(&chunk.data)) {
            return Received::Failed(format!("cannot write the snapshot: {e}"));
        }
        partial.crc = crc32c::crc32c_append(partial.crc, &chunk.data);
        partial.received += chunk.data.len() as u64;
        if chunk.last {
            if partial.crc != chunk.crc32c {
                return Received::Failed(format!(
                    "checksum mismatch: computed {:#010x}, sender said {:#010x}",
                    partial.crc, chunk.crc32c
                ));
            }
            let received = partial.received;
            return match partial.writer.finish() {
                Ok(_) => {
                    crate::fail_point!("transport-snapshot-received");
                    Received::Complete { received }
                }
                Err(e) => Received::Failed(format!("cannot store the snapshot: {e}")),
            };
        }
    }
    Received::Interrupted(Box::new(partial))
}

/// The receiving side, served on the peer port.
#[derive(Clone)]
pub struct PeerService {
    config: TransportConfig,
    inbox: mpsc::Sender<Input>,
    snapshots: SnapshotStore,
    /// Interrupted snapshot transfers, one per sender, to resume.
    partials: Arc<Mutex<HashMap<NodeId, Partial>>>,
}

impl PeerService {
    pub fn new(config: TransportConfig, inbox: mpsc::Sender<Input>, snapshots: SnapshotStore) -> Self {
        PeerService {
            config,
            inbox,
            snapshots,
            partials: Arc::default(),
        }
    }

    pub fn into_server(self) -> PeerServer<PeerService> {
        let max = self.config.envelope_bytes_max;
        PeerServer::new(self)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max)
    }
}

type EnvelopeStream = Pin<Box<dyn Stream<Item = Result<pb::PeerEnvelope, Status>> + Send>>;

#[tonic::async_trait]
impl Peer for PeerService {
    type StreamStream = EnvelopeStream;

    async fn stream(
        &self,
        request: Request<Streaming<pb::PeerEnvelope>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let mut incoming = request.into_inner();
        let first = incoming
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("stream closed before hello"))?;
        let Some(pb::peer_envelope::Content::Hello(hello)) = first.content else {
            return Err(Status::invalid_argument("the first envelope must be a hello"));
        };
        self.config.check_hello(&hello)?;
        let from = hello.from_id;
        self.config
            .directory
            .lock()
            .expect("not poisoned")
            .insert(from, hello.client_urls.clone());
        let me = self.config.id;
        let envelope_bytes_max = self.config.envelope_bytes_max;
        let inbox = self.inbox.clone();
        let snapshots = self.snapshots.clone();
        let config = self.config.clone();
        let (replies, replies_rx) = mpsc::channel(ECHOES_QUEUED_MAX);
        let hello = pb::PeerEnvelope {
            content: Some(pb::peer_envelope::Content::Hello(self.config.hello(from))),
            ..Default::default()
        };
        replies
            .try_send(Ok(hello))
            .expect("an empty queue takes the hello");
        tokio::spawn(async move {
            loop {
                if let Err(refused) = config.check_not_removed(from) {
                    // Removed while its stream was open: tell it, and take nothing more.
                    let _ = replies.send(Err(refused)).await;
                    return;
                }
                let envelope = match incoming.message().await {
                    Ok(Some(envelope)) => {
                        if envelope.probe != 0 {
                            // Echoed before anything else is done with the batch. A full
                            // queue loses the echo: the sender counts the probe as lost.
                            let _ = replies.try_send(Ok(pb::PeerEnvelope {
                                probe_echo: envelope.probe,
                                ..Default::default()
                            }));
                        }
                        envelope
                    }
                    Ok(None) => return,
                    Err(status) => {
                        tracing::debug!(from, %status, "peer stream broke");
                        return;
                    }
                };
                crate::fail_point_async!("transport-peer-batch");
                let messages = match decode_envelope(envelope, envelope_bytes_max) {
                    Ok(messages) => messages,
                    Err(reason) => {
                        tracing::warn!(from, %reason, "bad envelope on a peer stream: ignored");
                        continue;
                    }
                };
                for message in messages {
                    let message = match convert::message_from_pb(message) {
                        Ok(m) if m.from == from && m.to == me => m,
                        Ok(m) => {
                            tracing::warn!(
                                from,
                                claimed = m.from,
                                to = m.to,
                                "misaddressed peer message dropped"
                            );
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(from, error = %e, "malformed peer message dropped");
                            continue;
                        }
                    };
                    if let MessageBody::InstallSnapshot { meta } = &message.body {
                        let held = snapshots.latest().ok().flatten().is_some_and(|i| &i.meta == meta);
                        if !held {
                            tracing::warn!(
                                from,
                                index = meta.index,
                                "snapshot announced before its data: dropped"
                            );
                            continue;
                        }
                    }
                    if inbox.send(Input::Message(message)).await.is_err() {
                        return;
                    }
                }
            }
        });
        // The response side carries the hello and the echoes, for as long as the peer
        // keeps its side open.
        let stream = tokio_stream::wrappers::ReceiverStream::new(replies_rx);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::SnapshotAck>, Status> {
        let mut chunks = request.into_inner();
        let first = chunks
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("no snapshot chunk"))?;
        let hello = first
            .hello
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("the first chunk must carry a hello"))?;
        self.config.check_hello(hello)?;
        let from = hello.from_id;
        let meta = convert::snapshot_meta_from_pb(
            first
                .meta
                .clone()
                .ok_or_else(|| Status::invalid_argument("the first chunk must carry the metadata"))?,
        )
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // What an earlier, interrupted transfer of the same snapshot left here.
        let partial = {
            let mut partials = self.partials.lock().expect("not poisoned");
            match partials.remove(&from) {
                Some(p) if p.meta == meta => Some(p),
                _ => None,
            }
        };
        let held = partial.as_ref().map_or(0, |p| p.received);
        if first.offset != held {
            if let Some(p) = partial {
                self.partials.lock().expect("not poisoned").insert(from, p);
            }
            return Ok(Response::new(pb::SnapshotAck {
                received_offset: held,
                complete: false,
                error: format!("{RESUME_PREFIX} from offset {held}"),
                term: 0,
            }));
        }
        let partial = match partial {
            Some(p) => p,
            None => {
                let writer = self
                    .snapshots
                    .create(&meta)
                    .map_err(|e| Status::internal(format!("cannot store the snapshot: {e}")))?;
                Partial {
                    meta: meta.clone(),
                    writer,
                    received: 0,
                    crc: 0,
                }
            }
        };
        let (tx, rx) = mpsc::channel::<pb::SnapshotChunk>(4);
        let writing = tokio::task::spawn_blocking(move || receive_chunks(partial, rx));
        tx.send(first)
            .await
            .map_err(|_| Status::internal("snapshot writer stopped"))?;
        loop {
            match chunks.message().await {
                Ok(Some(chunk)) => {
                    if tx.send(chunk).await.is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    tracing::info!(from, %status, "snapshot transfer interrupted; keeping what arrived");
                    break;
                }
            }
        }
        drop(tx);
        let outcome = writing.await.map_err(|e| Status::internal(e.to_string()))?;
        let ack = match outcome {
            Received::Complete { received } => pb::SnapshotAck {
                received_offset: received,
                complete: true,
                error: String::new(),
                term: 0,
            },
            Received::Interrupted(partial) => {
                let received = partial.received;
                self.partials.lock().expect("not poisoned").insert(from, *partial);
                pb::SnapshotAck {
                    received_offset: received,
                    complete: false,
                    error: format!("{RESUME_PREFIX} from offset {received}"),
                    term: 0,
                }
            }
            Received::Failed(reason) => pb::SnapshotAck {
                received_offset: 0,
                complete: false,
                error: reason,
                term: 0,
            },
        };
        Ok(Response::new(ack))
    }
}

/// Wraps a batch for the wire, compressed when it is large.
pub fn encode_batch(messages: Vec<pb::Message>, threshold_bytes: usize, level: i32) -> pb::PeerEnvelope {
    use prost::Message as _;
    let batch = pb::MessageBatch { messages };
    let size = batch.encoded_len();
    if threshold_bytes > 0 && size >= threshold_bytes {
        let plain = batch.encode_to_vec();
        match zstd::bulk::compress(&plain, level) {
            Ok(compressed) if compressed.len() < plain.len() => {
                return pb::PeerEnvelope {
                    content: Some(pb::peer_envelope::Content::Compressed(compressed.into())),
                    compression: pb::Compression::Zstd as i32,
                    uncompressed_size: size as u64,
                    ..Default::default()
                };
            }
            Ok(_) => {} // incompressible: send as is
            Err(e) => tracing::warn!(error = %e, "compression failed; sending uncompressed"),
        }
    }
    pb::PeerEnvelope {
        content: Some(pb::peer_envelope::Content::Batch(batch)),
        ..Default::default()
    }
}

/// Unwraps a batch from the wire; refuses a batch that would inflate past `max_bytes`
/// before inflating it.
pub fn decode_envelope(envelope: pb::PeerEnvelope, max_bytes: usize) -> Result<Vec<pb::Message>, String> {
    use prost::Message as _;
    match envelope.content {
        Some(pb::peer_envelope::Content::Batch(batch)) => Ok(batch.messages),
        Some(pb::peer_envelope::Content::Compressed(data)) => {
            if envelope.compression != pb::Compression::Zstd as i32 {
                return Err(format!("unknown compression {}", envelope.compression));
            }
            let size = envelope.uncompressed_size as usize;
            if size > max_bytes {
                return Err(format!("batch of {size} bytes is over the limit of {max_bytes}"));
            }
            let plain = zstd::bulk::decompress(&data, size).map_err(|e| format!("cannot decompress: {e}"))?;
            pb::MessageBatch::decode(plain.as_slice())
                .map(|batch| batch.messages)
                .map_err(|e| format!("cannot decode batch: {e}"))
        }
        Some(pb::peer_envelope::Content::Hello(_)) => Err("a second hello".into()),
        None => Err("empty envelope".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{Entry, EntryPayload};

    fn batch(entries: usize) -> Vec<pb::Message> {
        let message = Message {
            from: 1,
            to: 2,
            term: 3,
            body: MessageBody::AppendRequest {
                prev_log_index: 0,
                prev_log_term: 0,
                entries: (1..=entries as u64)
                    .map(|index| Entry {
                        term: 3,
                        index,
                        payload: EntryPayload::Normal(bytes::Bytes::from(vec![b'a'; 256])),
                    })
                    .collect(),
                leader_commit: 0,
            },
        };
        vec![convert::message_to_pb(&message)]
    }

    #[test]
    fn large_batches_are_compressed_and_come_back_intact() {
        let messages = batch(1000);
        let envelope = encode_batch(messages.clone(), 64 << 10, 1);
        assert_eq!(envelope.compression, pb::Compression::Zstd as i32);
        let Some(pb::peer_envelope::Content::Compressed(data)) = &envelope.content else {
            panic!("expected a compressed envelope");
        };
        assert!(
            data.len() * 10 < envelope.uncompressed_size as usize,
            "repetitive data compresses well"
        );
        assert_eq!(decode_envelope(envelope, 64 << 20).unwrap(), messages);
    }

    #[test]
    fn small_batches_go_as_they_are() {
        let envelope = encode_batch(batch(2), 64 << 10, 1);
        assert!(matches!(
            envelope.content,
            Some(pb::peer_envelope::Content::Batch(_))
        ));
    }

    #[test]
    fn a_batch_that_would_inflate_past_the_limit_is_refused_before_inflating() {
        let envelope = encode_batch(batch(1000), 1024, 1);
        let error = decode_envelope(envelope, 4096).unwrap_err();
        assert!(error.contains("over the limit"), "{error}");
        let mut lying = encode_batch(batch(1000), 1024, 1);
        lying.uncompressed_size = 100; // claims less than it holds
        assert!(decode_envelope(lying, 64 << 20).is_err());
    }
}
