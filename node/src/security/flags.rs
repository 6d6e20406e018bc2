//! The security flags of `raft-node` (named like etcd's), each also read from
//! `KUBERAFT_<FLAG>`, and the settings they describe once checked.

use std::path::PathBuf;
use std::sync::Arc;

use super::auth::Authenticator;
use super::ratelimit::RateLimiter;
use super::tls::{ClientAuth, ClientTlsFiles, Port, ReloadingServerConfig, TlsFiles};

#[derive(clap::Args, Clone, Debug, Default)]
pub struct SecurityArgs {
    /// Certificate (PEM, chain) served on the client port; needed for https:// client
    /// URLs. Re-read when the file changes.
    #[arg(long, env = "KUBERAFT_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Private key of --cert-file.
    #[arg(long, env = "KUBERAFT_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// CA that client certificates (and other members' client ports) are verified with.
    #[arg(long, env = "KUBERAFT_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Refuse clients without a certificate signed by --trusted-ca-file.
    #[arg(long, env = "KUBERAFT_CLIENT_CERT_AUTH", default_value_t = false)]
    pub client_cert_auth: bool,
    /// Certificate of this member on the peer port (server and client side of mutual
    /// TLS); needed for https:// peer URLs.
    #[arg(long, env = "KUBERAFT_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    #[arg(long, env = "KUBERAFT_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// CA of the cluster's peer certificates: a peer whose certificate does not chain to
    /// it cannot connect, in either direction.
    #[arg(long, env = "KUBERAFT_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Peers always use mutual TLS when peer TLS is on; accepted for etcd compatibility
    /// (`false` is refused).
    #[arg(long, env = "KUBERAFT_PEER_CLIENT_CERT_AUTH", num_args = 0..=1, default_missing_value = "true")]
    pub peer_client_cert_auth: Option<bool>,
    /// Turns authentication on: lines `token role name` (roles admin, readwrite,
    /// readonly; token `-` for an identity that logs in with a certificate whose CN is
    /// `name`). Re-read when the file changes.
    #[arg(long, env = "KUBERAFT_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// Requests per second per client identity (0: no limit).
    #[arg(long, env = "KUBERAFT_RATE_LIMIT_RPS", default_value_t = 0.0)]
    pub rate_limit_rps: f64,
    /// Requests a client identity may make at once above the rate (0: the rate, at least 1).
    #[arg(long, env = "KUBERAFT_RATE_LIMIT_BURST", default_value_t = 0)]
    pub rate_limit_burst: u32,
    /// Concurrent HTTP/2 streams (calls, watches) per client connection.
    #[arg(long, env = "KUBERAFT_MAX_CONCURRENT_STREAMS", default_value_t = 1000)]
    pub max_concurrent_streams: u32,
}

/// A security flag that cannot work as given.
#[derive(Debug)]
pub struct Refused {
    pub flag: &'static str,
    pub reason: String,
}

fn refuse<T>(flag: &'static str, reason: impl Into<String>) -> Result<T, Refused> {
    Err(Refused {
        flag,
        reason: reason.into(),
    })
}

/// The security of one member, ready to serve with.
pub struct Security {
    pub client_tls: Option<Arc<ReloadingServerConfig>>,
    pub peer_tls: Option<Arc<ReloadingServerConfig>>,
    /// How this member dials its peers.
    pub peer_client: Option<ClientTlsFiles>,
    /// How this member dials other members' client ports (to forward to the leader).
    pub client_port_client: Option<ClientTlsFiles>,
    pub auth: Arc<Authenticator>,
    pub rate_limiter: Option<Arc<RateLimiter>>,
}

impl SecurityArgs {
    /// Checks the flags against the URL schemes (no file is read).
    pub fn check(&self, client_https: bool, peer_https: bool) -> Result<(), Refused> {
        match (&self.cert_file, &self.key_file) {
            (None, None) if client_https => {
                return refuse("listen-client-urls", "https:// needs --cert-file and --key-file")
            }
            (Some(_), None) => return refuse("key-file", "--cert-file needs --key-file"),
            (None, Some(_)) => return refuse("cert-file", "--key-file needs --cert-file"),
            _ => {}
        }
        if self.client_cert_auth && client_https && self.trusted_ca_file.is_none() {
            return refuse("client-cert-auth", "needs --trusted-ca-file");
        }
        if peer_https {
            if self.peer_client_cert_auth == Some(false) {
                return refuse(
                    "peer-client-cert-auth",
                    "peers always use mutual TLS when peer TLS is on",
                );
            }
            if self.peer_cert_file.is_none()
                || self.peer_key_file.is_none()
                || self.peer_trusted_ca_file.is_none()
            {
                return refuse(
                    "listen-peer-urls",
                    "https:// needs --peer-cert-file, --peer-key-file and --peer-trusted-ca-file",
                );
            }
        }
        if !(self.rate_limit_rps >= 0.0 && self.rate_limit_rps.is_finite()) {
            return refuse("rate-limit-rps", "must be a number, 0 or more");
        }
        if self.max_concurrent_streams == 0 {
            return refuse("max-concurrent-streams", "must be at least 1");
        }
        Ok(())
    }

    /// Checks the flags and loads every file once, so a bad file stops start-up with
    /// its name.
    pub fn load(&self, client_https: bool, peer_https: bool) -> Result<Security, Refused> {
        self.check(client_https, peer_https)?;
        let client_tls = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) if client_https => {
                let mode = match (&self.trusted_ca_file, self.client_cert_auth) {
                    (None, _) => ClientAuth::None,
                    (Some(_), true) => ClientAuth::Required,
                    (Some(_), false) => ClientAuth::Optional,
                };
                let files = TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    ca: self.trusted_ca_file.clone(),
                };
                Some(
                    ReloadingServerConfig::new(files, mode, Port::Client)
                        .or_else(|e| refuse("cert-file", e.to_string()))?,
                )
            }
            (Some(_), Some(_)) => {
                // etcd's behaviour: the URL scheme decides.
                tracing::warn!(
                    "--cert-file is set but the client URL is http://: clients are served in plaintext \
                     and --client-cert-auth has no effect"
                );
                None
            }
            _ => None,
        };
        let (peer_tls, peer_client) = match (
            &self.peer_cert_file,
            &self.peer_key_file,
            &self.peer_trusted_ca_file,
        ) {
            (Some(cert), Some(key), Some(ca)) if peer_https => {
                let files = TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    ca: Some(ca.clone()),
                };
                let server = ReloadingServerConfig::new(files, ClientAuth::Required, Port::Peer)
                    .or_else(|e| refuse("peer-cert-file", e.to_string()))?;
                let client = ClientTlsFiles {
                    ca: Some(ca.clone()),
                    identity: Some((cert.clone(), key.clone())),
                };
                (Some(server), Some(client))
            }
            _ => {
                if self.peer_cert_file.is_some() {
                    tracing::warn!(
                        "--peer-cert-file is set but the peer URL is http://: peers talk in plaintext"
                    );
                }
                (None, None)
            }
        };
        if client_tls.is_some() && self.trusted_ca_file.is_none() {
            tracing::warn!(
                "no --trusted-ca-file: a follower cannot verify the leader's client port to forward writes"
            );
        }
        let client_port_client = client_tls.as_ref().map(|_| ClientTlsFiles {
            ca: self.trusted_ca_file.clone(),
            identity: self.cert_file.clone().zip(self.key_file.clone()),
        });
        let auth = Authenticator::new(self.auth_token_file.clone())
            .or_else(|e| refuse("auth-token-file", e.to_string()))?;
        let burst = if self.rate_limit_burst == 0 {
            self.rate_limit_rps.ceil().max(1.0) as u32
        } else {
            self.rate_limit_burst
        };
        Ok(Security {
            client_tls,
            peer_tls,
            peer_client,
            client_port_client,
            auth,
            rate_limiter: RateLimiter::new(self.rate_limit_rps, burst),
        })
    }
}
