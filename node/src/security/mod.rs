//! Security in front of the services: transport encryption, authentication,
//! authorization and rate limiting, each a small layer that can be reasoned about and
//! tested on its own.
//!
//! Layout:
//! - [`tls`]: rustls on the client and peer ports. Certificates, keys and CAs are
//!   re-read when their files change, so rotation needs no restart; peers always use
//!   mutual TLS when peer TLS is on.
//! - [`auth`]: who is calling (a verified client certificate's subject CN, or a bearer
//!   token from `--auth-token-file`) and what the caller may do (roles `readonly`,
//!   `readwrite`, `admin`, keyed by gRPC method path), as a tower layer.
//!   etcd's own users, roles and key permissions are not here: they are replicated
//!   state (`kv::auth`) checked by the services (`api::auth`); the two coexist (see
//!   [`auth`] for how and why).
//! - [`flags`]: the command-line flags and the checked [`flags::Security`] they load.
//! - [`ratelimit`]: a token bucket per client identity, as a tower layer.
//!
//! Every denial is logged and counted; [`write_metrics`] renders the counters for
//! `/metrics`.

pub mod auth;
pub mod authority;
pub mod flags;
pub mod ratelimit;
pub mod tls;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a security setting cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("TLS configuration: {0}")]
    Tls(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Counters of what the security layers refused, for `/metrics`.
#[derive(Default)]
pub struct Counters {
    pub unauthenticated: AtomicU64,
    pub permission_denied: AtomicU64,
    pub rate_limited: AtomicU64,
    pub client_handshake_failures: AtomicU64,
    pub peer_handshake_failures: AtomicU64,
    pub certificate_reloads: AtomicU64,
    pub certificate_reload_failures: AtomicU64,
    /// Expiry (Unix seconds) of the certificate each port serves now; 0 without TLS.
    pub client_certificate_not_after: AtomicU64,
    pub peer_certificate_not_after: AtomicU64,
}

/// Process-wide: one member per process, and the metrics endpoint reads them.
pub static COUNTERS: Counters = Counters {
    unauthenticated: AtomicU64::new(0),
    permission_denied: AtomicU64::new(0),
    rate_limited: AtomicU64::new(0),
    client_handshake_failures: AtomicU64::new(0),
    peer_handshake_failures: AtomicU64::new(0),
    certificate_reloads: AtomicU64::new(0),
    certificate_reload_failures: AtomicU64::new(0),
    client_certificate_not_after: AtomicU64::new(0),
    peer_certificate_not_after: AtomicU64::new(0),
};

/// Appends the security counters in Prometheus text format.
pub fn write_metrics(out: &mut String) {
    let c = &COUNTERS;
    let load = |v: &AtomicU64| v.load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "# HELP kuberaft_auth_denied_total client requests refused by authentication or authorization\n\
         # TYPE kuberaft_auth_denied_total counter\n\
         kuberaft_auth_denied_total{{reason=\"unauthenticated\"}} {}\n\
         kuberaft_auth_denied_total{{reason=\"permission_denied\"}} {}",
        load(&c.unauthenticated),
        load(&c.permission_denied)
    );
    let _ = writeln!(
        out,
        "# HELP kuberaft_rate_limited_total client requests refused by the per-identity rate limit\n\
         # TYPE kuberaft_rate_limited_total counter\nkuberaft_rate_limited_total {}",
        load(&c.rate_limited)
    );
    let _ = writeln!(
        out,
        "# HELP kuberaft_tls_handshake_failures_total TLS handshakes that failed, by port\n\
         # TYPE kuberaft_tls_handshake_failures_total counter\n\
         kuberaft_tls_handshake_failures_total{{port=\"client\"}} {}\n\
         kuberaft_tls_handshake_failures_total{{port=\"peer\"}} {}",
        load(&c.client_handshake_failures),
        load(&c.peer_handshake_failures)
    );
    let _ = writeln!(
        out,
        "# HELP kuberaft_tls_certificate_reloads_total certificate files re-read after they changed\n\
         # TYPE kuberaft_tls_certificate_reloads_total counter\n\
         kuberaft_tls_certificate_reloads_total {}\n\
         # HELP kuberaft_tls_certificate_reload_failures_total changed certificate files that could not be used (the previous ones stay)\n\
         # TYPE kuberaft_tls_certificate_reload_failures_total counter\n\
         kuberaft_tls_certificate_reload_failures_total {}",
        load(&c.certificate_reloads),
        load(&c.certificate_reload_failures)
    );
    // Only for ports that serve TLS (a zero would look like an expired certificate).
    let _ = writeln!(
        out,
        "# HELP kuberaft_tls_certificate_expiry_timestamp_seconds when the certificate a port serves now expires\n\
         # TYPE kuberaft_tls_certificate_expiry_timestamp_seconds gauge"
    );
    for (port, value) in [
        ("client", load(&c.client_certificate_not_after)),
        ("peer", load(&c.peer_certificate_not_after)),
    ] {
        if value > 0 {
            let _ = writeln!(
                out,
                "kuberaft_tls_certificate_expiry_timestamp_seconds{{port=\"{port}\"}} {value}"
            );
        }
    }
}
