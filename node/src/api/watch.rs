//! The etcd Watch service: one task per stream serves its watchers from this
//! member's applied store (see `kv::watch` for why that yields every event once, in
//! order, from history and live alike).
//!
//! Bounds: streams per member ([`WATCH_STREAMS_MAX`], then RESOURCE_EXHAUSTED),
//! watchers per stream (`kv::watch::WATCHERS_PER_STREAM_MAX`, then a create is
//! refused), responses queued per stream ([`STREAM_RESPONSES_MAX`]) and events per
//! response (`kv::watch::Budget`). A client that does not read its stream makes the
//! task wait; its watchers stay behind in the history and are canceled with the
//! compact revision if a compaction overtakes them. `fragment` is ignored: a
//! revision's events always travel in one response.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kuberaft_proto::etcdserverpb as pb;
use kuberaft_proto::etcdserverpb::watch_server::Watch;
use kuberaft_proto::mvccpb;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::{kv_to_pb, KvService};
use crate::kv::watch::{Budget, Event, EventKind, Output, WatchSpec, WatcherSet};
use crate::kv::KvStore;

/// Watch streams one member serves at once.
pub const WATCH_STREAMS_MAX: usize = 1024;

/// Responses queued for one stream's client. With `Budget`'s 1 MiB per response
/// (a single revision may exceed it), a stream holds about 8 MiB at most while its
/// client does not read.
pub const STREAM_RESPONSES_MAX: usize = 8;

/// etcd's default `--experimental-watch-progress-notify-interval`.
pub const PROGRESS_NOTIFY_INTERVAL: Duration = Duration::from_secs(600);

#[derive(Clone)]
pub struct WatchService {
    kv: KvService,
    store: watch::Receiver<KvStore>,
    streams: Arc<Semaphore>,
    progress_notify_interval: Duration,
}

impl WatchService {
    pub fn new(kv: KvService, progress_notify_interval: Duration) -> WatchService {
        WatchService {
            store: kv.node.applied_store(),
            kv,
            streams: Arc::new(Semaphore::new(WATCH_STREAMS_MAX)),
            progress_notify_interval,
        }
    }

    pub fn into_server(self) -> pb::watch_server::WatchServer<WatchService> {
        pb::watch_server::WatchServer::new(self).max_decoding_message_size(super::DECODING_BYTES_MAX)
    }
}

type Responses = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = Responses;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        // The stream's user, for the permission check of each watch it creates (etcd
        // takes it from the stream's token too).
        let caller = self.kv.caller(&request)?;
        let permit = self
            .streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| Status::resource_exhausted("etcdserver: too many watch streams"))?;
        let (tx, rx) = mpsc::channel(STREAM_RESPONSES_MAX);
        let stream = StreamTask {
            kv: self.kv.clone(),
            store: self.store.clone(),
            tx,
            set: WatcherSet::default(),
            caller,
            _permit: permit,
        };
        tokio::spawn(stream.run(request.into_inner(), self.progress_notify_interval));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct StreamTask {
    kv: KvService,
    store: watch::Receiver<KvStore>,
    tx: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    set: WatcherSet,
    caller: super::auth::Caller,
    _permit: OwnedSemaphorePermit,
}

impl StreamTask {
    async fn run(mut self, mut incoming: Streaming<pb::WatchRequest>, progress_every: Duration) {
        let mut progress =
            tokio::time::interval_at(tokio::time::Instant::now() + progress_every, progress_every);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let store = self.store.borrow_and_update().clone();
            let behind = self.set.behind(&store);
            let tx = self.tx.clone();
            let sent = tokio::select! {
                biased;
                _ = tx.closed() => return,
                message = incoming.next() => match message {
                    Some(Ok(request)) => self.handle(request, &store).await,
                    Some(Err(_)) | None => return,
                },
                _ = progress.tick() => {
                    let outputs = self.set.progress_notify(&store);
                    self.send(outputs).await
                }
                _ = std::future::ready(()), if behind => {
                    let outputs = self.set.poll(&store, Budget::default());
                    if outputs.is_empty() {
                        // A round that only skipped revisions: let other tasks run.
                        tokio::task::yield_now().await;
                    }
                    self.send(outputs).await
                }
                changed = self.store.changed(), if !behind => changed.is_ok(),
            };
            if !sent {
                return;
            }
        }
    }

    /// Answers one request; false when the client is gone.
    async fn handle(&mut self, request: pb::WatchRequest, store: &KvStore) -> bool {
        use pb::watch_request::RequestUnion;
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => {
                let permitted = self.kv.check_range(
                    &self.caller,
                    &create.key,
                    &create.range_end,
                    super::auth::PermKind::Read,
                );
                if permitted.is_err() {
                    // etcd's answer: a watch created and canceled at once, with the reason.
                    let refused = pb::WatchResponse {
                        header: self.kv.header(store.revision()),
                        watch_id: -1,
                        created: true,
                        canceled: true,
                        cancel_reason: "etcdserver: permission denied".to_string(),
                        ..Default::default()
                    };
                    return self.tx.send(Ok(refused)).await.is_ok();
                }
                let spec = WatchSpec {
                    key: Bytes::from(create.key),
                    range_end: Bytes::from(create.range_end),
                    start_revision: create.start_revision,
                    prev_kv: create.prev_kv,
                    no_put: create
                        .filters
                        .contains(&(pb::watch_create_request::FilterType::Noput as i32)),
                    no_delete: create
                        .filters
                        .contains(&(pb::watch_create_request::FilterType::Nodelete as i32)),
                    progress_notify: create.progress_notify,
                    watch_id: create.watch_id,
                };
                let output = self.set.create(spec, store);
                self.send(vec![output]).await
            }
            Some(RequestUnion::CancelRequest(cancel)) => {
                let output = self.set.cancel(cancel.watch_id, store);
                self.send(output.into_iter().collect()).await
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // Everything up to the revision reported must have been sent first: bring
                // every watcher up to this store, then report its revision.
                for _ in 0..1_000_000 {
                    if !self.set.behind(store) {
                        break;
                    }
                    let outputs = self.set.poll(store, Budget::default());
                    if !self.send(outputs).await {
                        return false;
                    }
                }
                let progress = Output::Progress {
                    watch_id: -1,
                    revision: store.revision(),
                };
                self.send(vec![progress]).await
            }
            None => true,
        }
    }

    async fn send(&self, outputs: Vec<Output>) -> bool {
        for output in outputs {
            let response = self.response(output);
            if self.tx.send(Ok(response)).await.is_err() {
                return false;
            }
        }
        true
    }

    fn response(&self, output: Output) -> pb::WatchResponse {
        match output {
            Output::Created { watch_id, revision } => pb::WatchResponse {
                header: self.kv.header(revision),
                watch_id,
                created: true,
                ..Default::default()
            },
            Output::Refused { reason, revision } => pb::WatchResponse {
                header: self.kv.header(revision),
                watch_id: -1,
                created: true,
                canceled: true,
                cancel_reason: reason,
                ..Default::default()
            },
            Output::Canceled {
                watch_id,
                revision,
                compact_revision,
                reason,
            } => pb::WatchResponse {
                // As etcd: a watcher canceled because compaction overtook it is told so
                // by a response whose header carries no revision (etcd sends the
                // compacted watcher's response, which has none); a cancel the client
                // asked for carries the current one.
                header: self.kv.header(if compact_revision != 0 { 0 } else { revision }),
                watch_id,
                canceled: true,
                compact_revision,
                cancel_reason: reason,
                ..Default::default()
            },
            Output::Events {
                watch_id,
                revision,
                events,
            } => pb::WatchResponse {
                header: self.kv.header(revision),
                watch_id,
                events: events.iter().map(event_to_pb).collect(),
                ..Default::default()
            },
            Output::Progress { watch_id, revision } => pb::WatchResponse {
                header: self.kv.header(revision),
                watch_id,
                ..Default::default()
            },
        }
    }
}

fn event_to_pb(event: &Event) -> mvccpb::Event {
    mvccpb::Event {
        r#type: match event.kind {
            EventKind::Put => mvccpb::event::EventType::Put as i32,
            EventKind::Delete => mvccpb::event::EventType::Delete as i32,
        },
        kv: Some(kv_to_pb(&event.kv)),
        prev_kv: event.prev.as_ref().map(kv_to_pb),
    }
}
