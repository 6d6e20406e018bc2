//! The etcd Lease service and the leader's lease clock.
//!
//! Which leases exist, their TTL and their keys are replicated state (`kv::lease`).
//! When they expire is not: the leader alone keeps a deadline per lease in memory
//! ([`Lessor`]) and proposes a revocation through the log once it passes
//! ([`run_expiry`]). A member that becomes leader starts every lease's countdown
//! from its full TTL, as etcd does, so a failover never makes a lease expire early
//! (it may make one live up to a TTL longer).
//!
//! Any member accepts any request: grants and revocations are proposed (and
//! forwarded to the leader by a follower); keepalives and TimeToLive need the
//! leader's clock, so a follower forwards them to the leader; LeaseLeases answers
//! from this member's applied state, as etcd does. TTLs below the minimum
//! (1.5 election timeouts, rounded up to whole seconds, as etcd computes it) are
//! raised to it.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kuberaft_proto::etcdserverpb as pb;
use kuberaft_proto::etcdserverpb::lease_client::LeaseClient;
use kuberaft_proto::etcdserverpb::lease_server::Lease;
use rand::Rng;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::{kv_status, to_status, KvService};
use crate::kv::{KvCommand, KvError, KvResult, KvStore, LEASE_TTL_MAX_SECONDS};
use crate::raft::{Index, Role, Term};
use crate::runtime::{self, NodeHandle};

/// Keepalive responses queued per stream.
const KEEPALIVE_RESPONSES_MAX: usize = 16;
/// Keepalive streams one member serves at once.
pub const KEEPALIVE_STREAMS_MAX: usize = 4096;
/// Revocations the leader proposes at once, and per round of [`run_expiry`].
const REVOCATIONS_IN_FLIGHT_MAX: usize = 16;
/// How often the leader looks for expired leases.
const EXPIRY_CHECK_INTERVAL: Duration = Duration::from_millis(200);
/// When a proposed revocation has not taken effect by then, it is proposed again.
const REVOKE_RETRY_AFTER: Duration = Duration::from_secs(3);

/// The leader's deadlines. Pure: callers pass the time.
#[derive(Debug, Default)]
pub struct Lessor {
    /// The leader term these deadlines were set in; `None` while not leader.
    term: Option<Term>,
    deadlines: HashMap<i64, Instant>,
    /// Revocations proposed and not yet applied, with when to propose again.
    revoking: HashMap<i64, Instant>,
    /// `KvStore::leases_changed_at` of the last store synced with (`None`: none
    /// yet in this term).
    synced: Option<Index>,
}

impl Lessor {
    /// Follows the store as leader of `leader_term` (`None`: not leader). Leases the
    /// store holds and the lessor does not get a full TTL from `now`; so does every
    /// lease when a new term of leadership starts. Leases gone from the store are
    /// forgotten.
    pub fn sync(&mut self, leader_term: Option<Term>, store: &KvStore, now: Instant) {
        self.follow_term(leader_term);
        if self.term.is_none() || self.synced == Some(store.leases_changed_at()) {
            return;
        }
        self.synced = Some(store.leases_changed_at());
        for (id, lease) in store.leases() {
            self.deadlines
                .entry(id)
                .or_insert_with(|| now + ttl_duration(lease.ttl));
        }
        self.deadlines.retain(|id, _| store.lease(*id).is_some());
        self.revoking.retain(|id, _| store.lease(*id).is_some());
    }

    /// Called by request handlers on the leader before they use the deadlines: if
    /// leadership changed since the last [`Lessor::sync`], the old deadlines are
    /// dropped at once (the next sync starts every lease afresh).
    pub fn follow_term(&mut self, leader_term: Option<Term>) {
        if leader_term != self.term {
            self.deadlines.clear();
            self.revoking.clear();
            self.term = leader_term;
            self.synced = None;
        }
    }

    /// A keepalive (or a grant) on the leader: the lease lives `ttl` seconds from now.
    pub fn renew(&mut self, id: i64, ttl: i64, now: Instant) {
        self.deadlines.insert(id, now + ttl_duration(ttl));
        self.revoking.remove(&id);
    }

    /// Has the lease's deadline passed (a revocation is then on its way)?
    pub fn expired(&self, id: i64, now: Instant) -> bool {
        self.deadlines.get(&id).is_some_and(|deadline| *deadline <= now)
    }

    /// Time left; `None` when this lessor does not track the lease (yet).
    pub fn remaining(&self, id: i64, now: Instant) -> Option<Duration> {
        self.deadlines
            .get(&id)
            .map(|deadline| deadline.saturating_duration_since(now))
    }

    /// Up to `max` leases of `store` whose deadline passed and whose revocation is
    /// not already on its way; each is marked as being revoked. Deadlines of leases
    /// `store` no longer holds (revoked while a keepalive renewed them) are dropped.
    pub fn due(&mut self, store: &KvStore, now: Instant, max: usize) -> Vec<i64> {
        if self.term.is_none() {
            return Vec::new();
        }
        let gone: Vec<i64> = self
            .deadlines
            .iter()
            .filter(|(id, deadline)| **deadline <= now && store.lease(**id).is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.deadlines.remove(&id);
            self.revoking.remove(&id);
        }
        let mut due: Vec<(Instant, i64)> = self
            .deadlines
            .iter()
            .filter(|(id, deadline)| {
                **deadline <= now && self.revoking.get(id).is_none_or(|retry| *retry <= now)
            })
            .map(|(id, deadline)| (*deadline, *id))
            .collect();
        due.sort_unstable();
        due.truncate(max);
        for (_, id) in &due {
            self.revoking.insert(*id, now + REVOKE_RETRY_AFTER);
        }
        due.into_iter().map(|(_, id)| id).collect()
    }
}

fn ttl_duration(ttl: i64) -> Duration {
    Duration::from_secs(ttl.max(0) as u64)
}

/// The leader's expiry loop: follows leadership and the applied store, and proposes
/// the revocation of every lease whose deadline passed.
pub async fn run_expiry(node: NodeHandle, lessor: Arc<Mutex<Lessor>>, mut shutdown: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(EXPIRY_CHECK_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let in_flight = Arc::new(Semaphore::new(REVOCATIONS_IN_FLIGHT_MAX));
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let (role, term) = {
            let status = node.status();
            let status = status.borrow();
            (status.role, status.term)
        };
        let leader_term = (role == Role::Leader).then_some(term);
        let store = node.read_local();
        let now = Instant::now();
        let due = {
            let mut lessor = lessor.lock().expect("not poisoned");
            lessor.sync(leader_term, &store, now);
            lessor.due(&store, now, in_flight.available_permits())
        };
        for id in due {
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                break; // marked; retried after REVOKE_RETRY_AFTER
            };
            let node = node.clone();
            tokio::spawn(async move {
                match node.propose(KvCommand::LeaseRevoke { id }).await {
                    Ok(_) => tracing::debug!(lease = id, "lease expired and revoked"),
                    Err(e) => tracing::debug!(lease = id, error = %e, "lease revocation deferred"),
                }
                drop(permit);
            });
        }
    }
}

#[derive(Clone)]
pub struct LeaseService {
    kv: KvService,
    lessor: Arc<Mutex<Lessor>>,
    streams: Arc<Semaphore>,
}

impl LeaseService {
    pub fn new(kv: KvService) -> LeaseService {
        LeaseService {
            kv,
            lessor: Arc::default(),
            streams: Arc::new(Semaphore::new(KEEPALIVE_STREAMS_MAX)),
        }
    }

    /// The lessor [`run_expiry`] drives.
    pub fn lessor(&self) -> Arc<Mutex<Lessor>> {
        self.lessor.clone()
    }

    pub fn into_server(self) -> pb::lease_server::LeaseServer<LeaseService> {
        pb::lease_server::LeaseServer::new(self).max_decoding_message_size(super::DECODING_BYTES_MAX)
    }

    fn node(&self) -> &NodeHandle {
        &self.kv.node
    }

    fn is_leader(&self) -> bool {
        self.node().status().borrow().role == Role::Leader
    }

    /// The term this member leads, if it does.
    fn leader_term(&self) -> Option<Term> {
        let status = self.node().status();
        let status = status.borrow();
        (status.role == Role::Leader).then_some(status.term)
    }

    /// The lessor, brought up to this member's current leadership.
    fn lessor_now(&self) -> std::sync::MutexGuard<'_, Lessor> {
        let term = self.leader_term();
        let mut lessor = self.lessor.lock().expect("not poisoned");
        lessor.follow_term(term);
        lessor
    }

    /// `None` on the leader; otherwise a client for the leader.
    fn leader(&self) -> Result<Option<LeaseClient<tonic::transport::Channel>>, Status> {
        let (role, leader) = {
            let status = self.node().status();
            let status = status.borrow();
            (status.role, status.leader)
        };
        if role == Role::Leader {
            return Ok(None);
        }
        Ok(Some(LeaseClient::new(self.kv.leader_channel(leader)?)))
    }

    /// etcd's minimum TTL: 1.5 election timeouts, in whole seconds rounded up.
    fn min_ttl(&self) -> i64 {
        let election_ms = self.node().timing().borrow().timing.election_ticks as i64
            * crate::runtime::timing::TICK_MS as i64;
        (3 * election_ms / 2 + 999) / 1000
    }

    /// The lease as of the leader's latest commit: the local store first, a
    /// linearizable read when the lease is not (yet) there.
    async fn lookup(&self, id: i64) -> Result<(KvStore, Option<crate::kv::Lease>), Status> {
        let store = self.node().read_local();
        if let Some(lease) = store.lease(id).cloned() {
            return Ok((store, Some(lease)));
        }
        let store = self.node().read_linearizable().await.map_err(to_status)?;
        let lease = store.lease(id).cloned();
        Ok((store, lease))
    }

    /// A keepalive on the leader: the granted TTL, or 0 when the lease is gone.
    async fn keep_alive_here(&self, id: i64) -> Result<pb::LeaseKeepAliveResponse, Status> {
        let (store, lease) = self.lookup(id).await?;
        let now = Instant::now();
        let ttl = match lease {
            Some(lease) => {
                let mut lessor = self.lessor_now();
                if lessor.expired(id, now) {
                    0
                } else {
                    lessor.renew(id, lease.ttl, now);
                    lease.ttl
                }
            }
            None => 0,
        };
        Ok(pb::LeaseKeepAliveResponse {
            header: self.kv.header(store.revision()),
            id,
            ttl,
        })
    }

    async fn keep_alive_one(&self, id: i64) -> Result<pb::LeaseKeepAliveResponse, Status> {
        match self.leader()? {
            None => self.keep_alive_here(id).await,
            Some(mut leader) => {
                let mut answers = leader
                    .lease_keep_alive(crate::security::auth::forward(tokio_stream::once(
                        pb::LeaseKeepAliveRequest { id },
                    )))
                    .await?
                    .into_inner();
                let mut answer = answers
                    .message()
                    .await?
                    .ok_or_else(|| Status::unavailable("etcdserver: leader changed"))?;
                self.kv.restamp(&mut answer.header);
                Ok(answer)
            }
        }
    }
}

type KeepAlives = Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let r = request.into_inner();
        if r.ttl > LEASE_TTL_MAX_SECONDS {
            return Err(kv_status(KvError::LeaseTtlTooLarge));
        }
        let ttl = r.ttl.max(self.min_ttl());
        // A server-chosen id is random and positive (like etcd's); a collision is
        // retried with another (up to 3 times). A grant no leader took (none known, or
        // the one asked had stepped down) waits for the next leader and is proposed
        // again (`KvService::propose_or_forward`), as writes are.
        let deadline = tokio::time::Instant::now() + super::FORWARD_WAIT;
        let mut collisions = 0;
        while collisions < 3 {
            let id = if r.id != 0 {
                r.id
            } else {
                rand::thread_rng().gen_range(1..i64::MAX)
            };
            let grant = KvCommand::LeaseGrant { id, ttl };
            self.kv.check_quota(&grant, 16).await?;
            let asked = self.node().status().borrow().leader;
            match self.node().propose(grant).await {
                Ok(KvResult::LeaseGrant { revision, id, ttl }) => {
                    // The leader's clock starts now; elsewhere the next leader term
                    // starts it (a grant is never answered for a lease that then
                    // expires early).
                    if self.is_leader() {
                        self.lessor_now().renew(id, ttl, Instant::now());
                    }
                    return Ok(Response::new(pb::LeaseGrantResponse {
                        header: self.kv.header(revision),
                        id,
                        ttl,
                        error: String::new(),
                    }));
                }
                Ok(KvResult::Failed {
                    error: KvError::LeaseExists,
                    ..
                }) if r.id == 0 => collisions += 1,
                Ok(KvResult::Failed { error, .. }) => return Err(kv_status(error)),
                Ok(other) => return Err(Status::internal(format!("unexpected result {other:?}"))),
                Err(runtime::Error::NotLeader { .. }) if self.kv.another_leader(asked, deadline).await => {}
                Err(e) => return Err(to_status(e)),
            }
        }
        Err(kv_status(KvError::LeaseExists))
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let caller = self.kv.caller(&request)?;
        let r = request.into_inner();
        // etcd: revoking deletes the lease's keys, so the caller needs write access to
        // each of them.
        if self.kv.auth_state().enabled {
            let store = self.kv.node.read_local();
            if let Some(lease) = store.lease(r.id) {
                for key in lease.keys.iter() {
                    self.kv
                        .check_range(&caller, key, &[], super::auth::PermKind::Write)?;
                }
            }
        }
        self.kv
            .propose_or_forward(KvCommand::LeaseRevoke { id: r.id }, |result| match result {
                KvResult::LeaseRevoke { revision, .. } => Ok(Response::new(pb::LeaseRevokeResponse {
                    header: self.kv.header(revision),
                })),
                KvResult::Failed { error, .. } => Err(kv_status(error)),
                other => Err(Status::internal(format!("unexpected result {other:?}"))),
            })
            .await
    }

    type LeaseKeepAliveStream = KeepAlives;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let permit = self
            .streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| Status::resource_exhausted("etcdserver: too many lease keepalive streams"))?;
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(KEEPALIVE_RESPONSES_MAX);
        let service = self.clone();
        // Keepalives a follower forwards go out as the caller.
        let token = crate::security::auth::current_token();
        tokio::spawn(crate::security::auth::with_caller_token(token, async move {
            let _permit = permit;
            loop {
                let request = tokio::select! {
                    _ = tx.closed() => return,
                    request = incoming.next() => request,
                };
                let Some(Ok(request)) = request else { return };
                let answer = service.keep_alive_one(request.id).await;
                let failed = answer.is_err();
                if tx.send(answer).await.is_err() || failed {
                    return;
                }
            }
        }));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let r = request.into_inner();
        if let Some(mut leader) = self.leader()? {
            return leader
                .lease_time_to_live(crate::security::auth::forward(r))
                .await
                .map(|mut response| {
                    self.kv.restamp(&mut response.get_mut().header);
                    response
                });
        }
        let (store, lease) = self.lookup(r.id).await?;
        let Some(lease) = lease else {
            // etcd answers an unknown lease with TTL -1, not an error.
            return Ok(Response::new(pb::LeaseTimeToLiveResponse {
                header: self.kv.header(store.revision()),
                id: r.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            }));
        };
        let remaining = self
            .lessor_now()
            .remaining(r.id, Instant::now())
            .map_or(lease.ttl, |left| left.as_secs() as i64);
        Ok(Response::new(pb::LeaseTimeToLiveResponse {
            header: self.kv.header(store.revision()),
            id: r.id,
            ttl: remaining,
            granted_ttl: lease.ttl,
            keys: if r.keys {
                lease.keys.iter().map(|k| k.to_vec()).collect()
            } else {
                Vec::new()
            },
        }))
    }

    async fn lease_leases(
        &self,
        _request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let store = self.node().read_local();
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: self.kv.header(store.revision()),
            leases: store.leases().map(|(id, _)| pb::LeaseStatus { id }).collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::KvCommand;

    fn store_with(leases: &[(i64, i64)]) -> KvStore {
        let mut store = KvStore::default();
        for (i, (id, ttl)) in leases.iter().enumerate() {
            store.apply(i as Index + 1, &KvCommand::LeaseGrant { id: *id, ttl: *ttl });
        }
        store
    }

    #[test]
    fn only_a_leader_expires_leases_and_a_renewal_pushes_the_deadline() {
        let store = store_with(&[(1, 5), (2, 10)]);
        let t0 = Instant::now();
        let mut lessor = Lessor::default();
        lessor.sync(None, &store, t0);
        assert!(
            lessor.due(&store, t0 + Duration::from_secs(60), 10).is_empty(),
            "a follower expires nothing"
        );
        lessor.sync(Some(3), &store, t0);
        assert!(lessor.due(&store, t0 + Duration::from_secs(4), 10).is_empty());
        lessor.renew(1, 5, t0 + Duration::from_secs(4));
        assert!(lessor.due(&store, t0 + Duration::from_secs(8), 10).is_empty());
        assert_eq!(
            lessor.remaining(1, t0 + Duration::from_secs(8)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(lessor.due(&store, t0 + Duration::from_secs(9), 10), vec![1]);
        assert!(lessor.expired(1, t0 + Duration::from_secs(9)));
        assert!(
            lessor.due(&store, t0 + Duration::from_secs(10), 10) == vec![2],
            "lease 1 is being revoked and is not proposed twice at once"
        );
        // Not applied after the retry delay: proposed again (the oldest first).
        assert_eq!(
            lessor.due(&store, t0 + Duration::from_secs(9) + REVOKE_RETRY_AFTER, 10),
            vec![1]
        );
    }

    #[test]
    fn a_new_term_of_leadership_restarts_every_lease_from_its_full_ttl() {
        let store = store_with(&[(1, 5)]);
        let t0 = Instant::now();
        let mut lessor = Lessor::default();
        lessor.sync(Some(2), &store, t0);
        // Leadership lost at t0+3, regained at t0+4 in term 4: the lease gets 5 s
        // from t0+4, not the 2 s it had left.
        lessor.sync(None, &store, t0 + Duration::from_secs(3));
        lessor.sync(Some(4), &store, t0 + Duration::from_secs(4));
        assert!(lessor.due(&store, t0 + Duration::from_secs(8), 10).is_empty());
        assert_eq!(lessor.due(&store, t0 + Duration::from_secs(9), 10), vec![1]);
        // A handler that sees a newer term before the expiry loop does drops the old
        // deadlines at once; the next sync starts the lease afresh.
        lessor.follow_term(Some(5));
        assert_eq!(lessor.remaining(1, t0), None);
        assert!(lessor.due(&store, t0 + Duration::from_secs(60), 10).is_empty());
        lessor.sync(Some(5), &store, t0 + Duration::from_secs(20));
        assert_eq!(
            lessor.remaining(1, t0 + Duration::from_secs(20)),
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn leases_gone_from_the_store_are_forgotten_and_new_ones_picked_up() {
        let mut store = store_with(&[(1, 5)]);
        let t0 = Instant::now();
        let mut lessor = Lessor::default();
        lessor.sync(Some(1), &store, t0);
        store.apply(2, &KvCommand::LeaseRevoke { id: 1 });
        store.apply(3, &KvCommand::LeaseGrant { id: 7, ttl: 2 });
        lessor.sync(Some(1), &store, t0 + Duration::from_secs(1));
        assert_eq!(lessor.remaining(1, t0), None);
        assert_eq!(lessor.due(&store, t0 + Duration::from_secs(10), 10), vec![7]);
        // A keepalive that renewed lease 1 just as it was revoked leaves a deadline
        // without a lease: it is dropped, never proposed for revocation.
        lessor.renew(1, 5, t0 + Duration::from_secs(10));
        assert!(lessor
            .due(&store, t0 + Duration::from_secs(16) + REVOKE_RETRY_AFTER, 10)
            .iter()
            .all(|id| *id != 1));
        assert_eq!(lessor.remaining(1, t0), None);
    }
}
