//! A token bucket per client identity, as a tower layer after authentication.
//!
//! Each request (a unary call, or the opening of a stream) takes one token from its
//! caller's bucket; the bucket refills at `--rate-limit-rps` and holds at most
//! `--rate-limit-burst`. An empty bucket answers RESOURCE_EXHAUSTED with the time until
//! the next token, in the message and in the `retry-after-ms` metadata. The caller is
//! the authenticated name, else the client certificate CN, else the remote IP address.
//! `admin` identities (operators, and members forwarding with their own certificate)
//! are not limited. Health checks are not limited. Off by default (rate 0).
//!
//! Bounded: at most [`BUCKETS_MAX`] identities are tracked; past that, buckets that have
//! refilled completely are forgotten (they hold nothing a new bucket would not).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::Status;

use super::auth::{Identity, Role};
use super::COUNTERS;

/// Identities tracked at once.
pub const BUCKETS_MAX: usize = 10_000;

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

/// Buckets of one member, shared by its connections.
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<Arc<str>, Bucket>>,
}

impl RateLimiter {
    /// `None` when `per_second` is 0 (no limit).
    pub fn new(per_second: f64, burst: u32) -> Option<Arc<RateLimiter>> {
        (per_second > 0.0).then(|| {
            Arc::new(RateLimiter {
                per_second,
                burst: f64::from(burst.max(1)),
                buckets: Mutex::default(),
            })
        })
    }

    /// Takes a token for `who`, or says how long until one is there.
    pub fn take(&self, who: &Arc<str>, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().expect("not poisoned");
        if buckets.len() >= BUCKETS_MAX && !buckets.contains_key(who) {
            let (per_second, burst) = (self.per_second, self.burst);
            buckets
                .retain(|_, b| b.tokens + now.duration_since(b.refilled).as_secs_f64() * per_second < burst);
            if buckets.len() >= BUCKETS_MAX {
                // Every tracked caller is busy: forget them all rather than grow.
                buckets.clear();
            }
        }
        let bucket = buckets.entry(who.clone()).or_insert(Bucket {
            tokens: self.burst,
            refilled: now,
        });
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - bucket.tokens) / self.per_second;
        Err(Duration::from_secs_f64(wait).max(Duration::from_millis(1)))
    }
}

/// The layer; a pass-through when no limit is set.
#[derive(Clone)]
pub struct RateLimitLayer {
    limiter: Option<Arc<RateLimiter>>,
}

impl RateLimitLayer {
    pub fn new(limiter: Option<Arc<RateLimiter>>) -> Self {
        RateLimitLayer { limiter }
    }
}

impl<S> tower_layer::Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> RateLimitService<S> {
        RateLimitService {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RateLimitService<S> {
    inner: S,
    limiter: Option<Arc<RateLimiter>>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, ResBody> tower_service::Service<http::Request<B>> for RateLimitService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if let Some(limiter) = &self.limiter {
            let path = request.uri().path();
            let identity = request.extensions().get::<Identity>();
            let exempt = path.starts_with("/grpc.health.v1.Health/")
                || identity.is_some_and(|i| i.authenticated && i.role == Role::Admin);
            if !exempt {
                let who = identity
                    .map(|i| i.name.clone())
                    .unwrap_or_else(|| Arc::from("anonymous"));
                if let Err(wait) = limiter.take(&who, Instant::now()) {
                    COUNTERS.rate_limited.fetch_add(1, Ordering::Relaxed);
                    let wait_ms = wait.as_millis().max(1);
                    tracing::debug!(identity = %who, method = path, wait_ms, "request refused: rate limit");
                    let mut status = Status::resource_exhausted(format!(
                        "etcdserver: too many requests: {who:?} is over its rate limit; retry after {wait_ms} ms"
                    ));
                    if let Ok(value) = wait_ms.to_string().parse() {
                        status.metadata_mut().insert("retry-after-ms", value);
                    }
                    return Box::pin(std::future::ready(Ok(status.into_http())));
                }
            }
        }
        Box::pin(inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_the_rate_and_recovers() {
        let limiter = RateLimiter::new(10.0, 3).unwrap();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limiter.take(&a, start).is_ok());
        }
        let wait = limiter.take(&a, start).unwrap_err();
        assert!(
            wait > Duration::from_millis(50) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert!(
            limiter.take(&b, start).is_ok(),
            "another caller has its own bucket"
        );
        assert!(limiter.take(&a, start + Duration::from_millis(100)).is_ok());
        assert!(limiter.take(&a, start + Duration::from_millis(100)).is_err());
        for _ in 0..3 {
            assert!(limiter.take(&a, start + Duration::from_secs(10)).is_ok());
        }
        assert!(
            limiter.take(&a, start + Duration::from_secs(10)).is_err(),
            "never above the burst"
        );
    }

    #[test]
    fn no_rate_means_no_limiter() {
        assert!(RateLimiter::new(0.0, 10).is_none());
    }

    #[test]
    fn the_number_of_tracked_identities_is_bounded() {
        let limiter = RateLimiter::new(1.0, 1).unwrap();
        let now = Instant::now();
        for i in 0..BUCKETS_MAX + 10 {
            let _ = limiter.take(&Arc::from(format!("c{i}")), now);
        }
        assert!(limiter.buckets.lock().unwrap().len() <= BUCKETS_MAX);
    }
}
