//! Authentication and authorization of client requests, as a tower layer in front of
//! every service on the client port.
//!
//! Who: a bearer token (`authorization: Bearer T`, or etcd's `token: T` metadata) from
//! `--auth-token-file`, else the subject CN of a verified client certificate. The file
//! has one line per identity, `token role name` (`#` starts a comment); a token of `-`
//! names an identity that can only log in with a certificate whose CN is `name`. The
//! file is re-read when it changes; a file that does not parse leaves the previous one
//! in use.
//!
//! What: each gRPC method path needs a role ([`required_role`]): reads `readonly`,
//! writes `readwrite`, the admin service, membership changes, compaction and
//! maintenance `admin`; a method this table does not know needs `admin`, so a service
//! added later is closed until it is listed. Health checks are public.
//!
//! Without `--auth-token-file` authentication is off (as before): every caller may do
//! everything; a verified client certificate still names the caller for rate limits.
//!
//! etcd's own auth (users, roles, key permissions, `etcdctl auth enable`; `api::auth`)
//! coexists with this layer rather than replacing it; the two answer different
//! questions. The token file is the operator's and the administrators' own access,
//! by method, configured outside the cluster (it works before any etcd user exists
//! and while etcd auth is disabled); etcd auth is the applications' access, by key,
//! replicated through the log and managed with etcdctl. A request passes this layer
//! first, then the etcd checks of the service that handles it:
//! - without a token file this layer lets everything through and etcd auth alone
//!   decides (the etcd-compatible set-up; a verified client certificate's CN is the
//!   etcd user when the request has no token, as with etcd's `--client-cert-auth`);
//! - with a token file, `Authenticate` is public (the password is its credential),
//!   and a request whose `token` metadata is not in the file but is a valid etcd token
//!   of this member (see [`Authenticator::set_etcd_tokens`]) passes with role `admin`:
//!   the etcd permission checks then decide what that user may do. A token in the file
//!   is checked as before; with etcd auth enabled, such a caller (who names no etcd
//!   user) gets etcd's `user name is empty` from any service that needs a permission,
//!   unless its certificate CN is an etcd user.
//!
//! Nothing migrates: the token file keeps working unchanged, and etcd users are
//! created with etcdctl (or the Auth API) when wanted.
//!
//! A follower checks the caller itself before it proposes: writes (put, delete, txn,
//! compaction, lease grant and revoke) then travel to the leader over the peer
//! connection as proposals, with no identity attached (the leader trusts its peers, as
//! etcd's members do). The requests a follower still relays over the leader's client
//! port (lease keep-alive and time-to-live, membership changes, alarms) carry the
//! caller's token (taken from the request by this layer, see [`forward`]), so the
//! leader checks the same identity; a caller that logged in with a certificate is
//! relayed with the member's own certificate (`--cert-file`), whose CN then needs a
//! role that may do the request.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use tonic::Status;

use super::tls::{ConnInfo, RELOAD_CHECK_INTERVAL};
use super::{Error, Result, COUNTERS};

/// What a caller may do; each role includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    ReadOnly,
    ReadWrite,
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::ReadOnly => "readonly",
            Role::ReadWrite => "readwrite",
            Role::Admin => "admin",
        }
    }

    fn parse(text: &str) -> Option<Role> {
        match text {
            "readonly" => Some(Role::ReadOnly),
            "readwrite" => Some(Role::ReadWrite),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// The role a gRPC method (by its path, `/package.Service/Method`) needs; `None` for
/// the public health service. Unknown methods need `admin`.
pub fn required_role(path: &str) -> Option<Role> {
    if path.starts_with("/grpc.health.v1.Health/") || path == "/etcdserverpb.Auth/Authenticate" {
        return None;
    }
    let role = match path {
        "/etcdserverpb.KV/Range"
        | "/etcdserverpb.Watch/Watch"
        | "/etcdserverpb.Lease/LeaseTimeToLive"
        | "/etcdserverpb.Lease/LeaseLeases"
        | "/etcdserverpb.Cluster/MemberList"
        | "/etcdserverpb.Maintenance/Status"
        | "/etcdserverpb.Maintenance/Hash"
        | "/etcdserverpb.Maintenance/HashKV"
        | "/etcdserverpb.Auth/AuthStatus" => Role::ReadOnly,
        // A txn may write; one that only reads still needs readwrite (the layer does
        // not decode request bodies).
        "/etcdserverpb.KV/Put"
        | "/etcdserverpb.KV/DeleteRange"
        | "/etcdserverpb.KV/Txn"
        | "/etcdserverpb.Lease/LeaseGrant"
        | "/etcdserverpb.Lease/LeaseRevoke"
        | "/etcdserverpb.Lease/LeaseKeepAlive" => Role::ReadWrite,
        // Compaction, membership (MemberAdd/Remove/Update/Promote), the rest of
        // Maintenance (Defragment, Alarm, Snapshot, MoveLeader), Auth, the admin service
        // (kuberaft.admin.v1.Admin) and anything not listed above.
        _ => Role::Admin,
    };
    Some(role)
}

/// The caller of a request, as the layers after authentication see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub name: Arc<str>,
    pub role: Role,
    /// False when authentication is off and the name is only the certificate CN or
    /// the remote address.
    pub authenticated: bool,
}

/// Largest token file read.
pub const TOKEN_FILE_BYTES_MAX: u64 = 1 << 20;

/// The parsed `--auth-token-file`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TokenFile {
    by_token: HashMap<String, (Role, Arc<str>)>,
    by_name: HashMap<String, Role>,
}

impl TokenFile {
    pub fn parse(text: &str) -> Result<TokenFile, String> {
        let mut file = TokenFile::default();
        for (number, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [token, role, name] = fields[..] else {
                return Err(format!(
                    "line {}: expected `token role name`, found {} fields",
                    number + 1,
                    fields.len()
                ));
            };
            let role = Role::parse(role).ok_or_else(|| {
                format!(
                    "line {}: role {role:?} is not admin, readwrite or readonly",
                    number + 1
                )
            })?;
            if file.by_name.insert(name.to_string(), role).is_some() {
                return Err(format!("line {}: name {name:?} appears twice", number + 1));
            }
            if token != "-"
                && file
                    .by_token
                    .insert(token.to_string(), (role, Arc::from(name)))
                    .is_some()
            {
                return Err(format!("line {}: a token appears twice", number + 1));
            }
        }
        Ok(file)
    }

    fn read(path: &PathBuf) -> Result<TokenFile> {
        let io = |source| Error::Io {
            path: path.display().to_string(),
            source,
        };
        let size = std::fs::metadata(path).map_err(io)?.len();
        if size > TOKEN_FILE_BYTES_MAX {
            return Err(Error::Invalid {
                path: path.display().to_string(),
                reason: format!("{size} bytes is over the limit of {TOKEN_FILE_BYTES_MAX}"),
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        TokenFile::parse(&text).map_err(|reason| Error::Invalid {
            path: path.display().to_string(),
            reason,
        })
    }
}

struct LoadedTokens {
    modified: Option<(SystemTime, u64)>,
    file: Arc<TokenFile>,
    checked: Instant,
}

/// Whether a token is a valid etcd token of this member (`api::auth`).
pub type EtcdTokenCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Decides who a request comes from and whether it may proceed.
pub struct Authenticator {
    path: Option<PathBuf>,
    loaded: Mutex<LoadedTokens>,
    etcd_tokens: std::sync::OnceLock<EtcdTokenCheck>,
}

fn modified(path: &PathBuf) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl Authenticator {
    /// Authentication is on when `token_file` is set; the file must parse now.
    pub fn new(token_file: Option<PathBuf>) -> Result<Arc<Authenticator>> {
        let (file, stamp) = match &token_file {
            Some(path) => (TokenFile::read(path)?, modified(path)),
            None => (TokenFile::default(), None),
        };
        Ok(Arc::new(Authenticator {
            path: token_file,
            loaded: Mutex::new(LoadedTokens {
                modified: stamp,
                file: Arc::new(file),
                checked: Instant::now(),
            }),
            etcd_tokens: std::sync::OnceLock::new(),
        }))
    }

    /// Lets requests with a valid etcd token (the `token` metadata) through when the
    /// token file is on; the etcd permission checks then decide. Set once, at start-up.
    pub fn set_etcd_tokens(&self, check: EtcdTokenCheck) {
        let _ = self.etcd_tokens.set(check);
    }

    pub fn enabled(&self) -> bool {
        self.path.is_some()
    }

    fn tokens(&self) -> Arc<TokenFile> {
        let mut loaded = self.loaded.lock().expect("not poisoned");
        if let Some(path) = &self.path {
            if loaded.checked.elapsed() >= RELOAD_CHECK_INTERVAL {
                loaded.checked = Instant::now();
                let now = modified(path);
                if now != loaded.modified {
                    match TokenFile::read(path) {
                        Ok(file) => {
                            tracing::info!(path = %path.display(), "auth token file changed: reloaded");
                            loaded.file = Arc::new(file);
                            loaded.modified = now;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "auth token file cannot be used; keeping the previous one")
                        }
                    }
                }
            }
        }
        loaded.file.clone()
    }

    /// The caller of a request to `path`, or why it is refused.
    pub fn check(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        conn: Option<&ConnInfo>,
    ) -> Result<Identity, Status> {
        let certificate = conn.and_then(|c| c.certificate_identity.clone());
        let token = bearer_token(headers);
        if !self.enabled() {
            let name = certificate
                .or_else(|| conn.and_then(|c| c.remote).map(|a| Arc::from(a.ip().to_string())))
                .unwrap_or_else(|| Arc::from("anonymous"));
            return Ok(Identity {
                name,
                role: Role::Admin,
                authenticated: false,
            });
        }
        let Some(required) = required_role(path) else {
            return Ok(Identity {
                name: Arc::from("anonymous"),
                role: Role::ReadOnly,
                authenticated: false,
            });
        };
        let tokens = self.tokens();
        let identity = if let Some(token) = token {
            let Some((role, name)) = tokens.by_token.get(token) else {
                let etcd_token = headers.get("token").and_then(|v| v.to_str().ok()).map(str::trim);
                if etcd_token == Some(token) && self.etcd_tokens.get().is_some_and(|check| check(token)) {
                    // An etcd user: the services' etcd permission checks decide.
                    return Ok(Identity {
                        name: Arc::from("etcd-user"),
                        role: Role::Admin,
                        authenticated: false,
                    });
                }
                return Err(deny_unauthenticated(path, "etcdserver: invalid auth token"));
            };
            Identity {
                name: name.clone(),
                role: *role,
                authenticated: true,
            }
        } else if let Some(cn) = certificate {
            let Some(role) = tokens.by_name.get(cn.as_ref()) else {
                return Err(deny_permission(
                    path,
                    &cn,
                    format!("etcdserver: permission denied: certificate identity {cn:?} has no role"),
                ));
            };
            Identity {
                name: cn,
                role: *role,
                authenticated: true,
            }
        } else {
            return Err(deny_unauthenticated(
                path,
                "etcdserver: authentication required: present a client certificate or a bearer token",
            ));
        };
        if identity.role < required {
            return Err(deny_permission(
                path,
                &identity.name,
                format!(
                    "etcdserver: permission denied: {:?} has role {}, {path} needs {}",
                    identity.name,
                    identity.role.name(),
                    required.name()
                ),
            ));
        }
        Ok(identity)
    }
}

fn deny_unauthenticated(path: &str, message: &str) -> Status {
    COUNTERS.unauthenticated.fetch_add(1, Ordering::Relaxed);
    tracing::info!(
        method = path,
        reason = message,
        "request refused: unauthenticated"
    );
    Status::unauthenticated(message)
}

fn deny_permission(path: &str, who: &str, message: String) -> Status {
    COUNTERS.permission_denied.fetch_add(1, Ordering::Relaxed);
    tracing::info!(method = path, identity = who, reason = %message, "request refused: permission denied");
    Status::permission_denied(message)
}

/// `authorization: Bearer T`, or etcd's `token: T`.
fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    if let Some(value) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(token) = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
        {
            return Some(token.trim());
        }
    }
    headers.get("token").and_then(|v| v.to_str().ok()).map(str::trim)
}

tokio::task_local! {
    /// The token of the request being handled, for a follower that forwards it.
    static FORWARD_TOKEN: Option<String>;
}

/// A request to forward `message` to the leader on behalf of the current caller:
/// carries the caller's token when it logged in with one.
pub fn forward<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let token = FORWARD_TOKEN.try_with(|t| t.clone()).ok().flatten();
    if let Some(value) = token.and_then(|t| format!("Bearer {t}").parse().ok()) {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// The token of the request being handled, to carry into a task it spawns.
pub fn current_token() -> Option<String> {
    FORWARD_TOKEN.try_with(|t| t.clone()).ok().flatten()
}

/// Runs `future` (a task spawned by a handler) with the caller's token, so what it
/// forwards is checked as the caller.
pub async fn with_caller_token<F: std::future::Future>(token: Option<String>, future: F) -> F::Output {
    FORWARD_TOKEN.scope(token, future).await
}

/// The layer: authenticates, authorizes, and hands the [`Identity`] on in the request's
/// extensions.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    pub fn new(auth: Arc<Authenticator>) -> Self {
        AuthLayer { auth }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, ResBody> tower_service::Service<http::Request<B>> for AuthService<S>
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

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was not driven to readiness stays behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let checked = self.auth.check(
            request.uri().path(),
            request.headers(),
            request.extensions().get::<ConnInfo>(),
        );
        match checked {
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
            Ok(identity) => {
                let token = if identity.authenticated {
                    bearer_token(request.headers()).map(str::to_string)
                } else {
                    None
                };
                request.extensions_mut().insert(identity);
                Box::pin(FORWARD_TOKEN.scope(token, inner.call(request)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_need_the_role_their_effect_calls_for() {
        assert_eq!(required_role("/etcdserverpb.KV/Range"), Some(Role::ReadOnly));
        assert_eq!(required_role("/etcdserverpb.KV/Put"), Some(Role::ReadWrite));
        assert_eq!(required_role("/etcdserverpb.KV/Txn"), Some(Role::ReadWrite));
        assert_eq!(required_role("/etcdserverpb.KV/Compact"), Some(Role::Admin));
        for method in ["MemberAdd", "MemberRemove", "MemberPromote", "MemberUpdate"] {
            assert_eq!(
                required_role(&format!("/etcdserverpb.Cluster/{method}")),
                Some(Role::Admin)
            );
        }
        assert_eq!(
            required_role("/etcdserverpb.Cluster/MemberList"),
            Some(Role::ReadOnly)
        );
        assert_eq!(
            required_role("/kuberaft.admin.v1.Admin/TransferLeader"),
            Some(Role::Admin)
        );
        assert_eq!(required_role("/some.New/Service"), Some(Role::Admin));
        assert_eq!(required_role("/grpc.health.v1.Health/Check"), None);
    }

    #[test]
    fn the_token_file_is_parsed_and_bad_lines_are_named() {
        let file = TokenFile::parse(
            "# who\nt1 admin ops\n\n- readonly reader-cert  # cert only\nt3 readwrite app\n",
        )
        .unwrap();
        assert_eq!(file.by_token.len(), 2);
        assert_eq!(file.by_name.get("reader-cert"), Some(&Role::ReadOnly));
        assert_eq!(file.by_token.get("t3").map(|(r, _)| *r), Some(Role::ReadWrite));
        for (text, says) in [
            ("t1 admin", "line 1"),
            ("t1 root ops", "root"),
            ("t1 admin a\nt2 admin a", "twice"),
            ("t1 admin a\nt1 admin b", "twice"),
        ] {
            let error = TokenFile::parse(text).unwrap_err();
            assert!(error.contains(says), "{text:?}: {error}");
        }
    }

    fn authenticator(text: &str) -> (tempfile::TempDir, Arc<Authenticator>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, text).unwrap();
        let auth = Authenticator::new(Some(path)).unwrap();
        (dir, auth)
    }

    fn headers(token: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
        headers
    }

    #[test]
    fn callers_are_refused_by_the_code_that_says_why() {
        let (_dir, auth) = authenticator("r readonly reader\nw readwrite writer\n- admin ops-cert\n");
        let put = "/etcdserverpb.KV/Put";
        let none = http::HeaderMap::new();
        assert_eq!(
            auth.check(put, &none, None).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            auth.check(put, &headers("nope"), None).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let denied = auth.check(put, &headers("r"), None).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(
            denied.message().contains("needs readwrite"),
            "{}",
            denied.message()
        );
        assert_eq!(
            auth.check(put, &headers("w"), None).unwrap().name.as_ref(),
            "writer"
        );
        let cert = |cn: &str| ConnInfo {
            remote: None,
            certificate_identity: Some(Arc::from(cn)),
        };
        let admin = auth
            .check("/etcdserverpb.Cluster/MemberAdd", &none, Some(&cert("ops-cert")))
            .unwrap();
        assert_eq!(admin.role, Role::Admin);
        assert_eq!(
            auth.check(put, &none, Some(&cert("stranger")))
                .unwrap_err()
                .code(),
            tonic::Code::PermissionDenied
        );
        assert!(auth.check("/grpc.health.v1.Health/Check", &none, None).is_ok());
    }

    #[test]
    fn a_changed_token_file_is_used_and_a_broken_one_is_not() {
        let (dir, auth) = authenticator("old readwrite app\n");
        let put = "/etcdserverpb.KV/Put";
        assert!(auth.check(put, &headers("old"), None).is_ok());
        let path = dir.path().join("tokens");
        std::fs::write(&path, "new readwrite app\n").unwrap();
        std::thread::sleep(RELOAD_CHECK_INTERVAL + std::time::Duration::from_millis(100));
        assert!(auth.check(put, &headers("new"), None).is_ok());
        assert!(auth.check(put, &headers("old"), None).is_err());
        std::fs::write(&path, "this line is broken\n").unwrap();
        std::thread::sleep(RELOAD_CHECK_INTERVAL + std::time::Duration::from_millis(100));
        assert!(
            auth.check(put, &headers("new"), None).is_ok(),
            "the previous file stays"
        );
    }

    #[test]
    fn without_a_token_file_everyone_may_do_everything() {
        let auth = Authenticator::new(None).unwrap();
        let identity = auth
            .check(
                "/kuberaft.admin.v1.Admin/SetTiming",
                &http::HeaderMap::new(),
                None,
            )
            .unwrap();
        assert_eq!(identity.role, Role::Admin);
        assert!(!identity.authenticated);
    }

    #[test]
    fn with_a_token_file_a_valid_etcd_token_passes_to_the_etcd_checks() {
        let (_dir, auth) = authenticator("w readwrite writer\n");
        let put = "/etcdserverpb.KV/Put";
        let etcd = |token: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("token", token.parse().unwrap());
            headers
        };
        // Before the etcd tokens are known, and for a token they do not know: refused.
        assert_eq!(
            auth.check(put, &etcd("etcd-1"), None).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        auth.set_etcd_tokens(Arc::new(|t: &str| t == "etcd-1"));
        let identity = auth.check(put, &etcd("etcd-1"), None).unwrap();
        assert!(
            !identity.authenticated,
            "the etcd checks decide, not the token file"
        );
        assert_eq!(
            auth.check(put, &etcd("etcd-2"), None).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        // Only etcd's `token` metadata, never a bearer token, is taken as an etcd token.
        assert!(auth.check(put, &headers("etcd-1"), None).is_err());
        // Authenticate is public: the password is its credential.
        assert!(auth
            .check("/etcdserverpb.Auth/Authenticate", &http::HeaderMap::new(), None)
            .is_ok());
        assert_eq!(
            auth.check("/etcdserverpb.Auth/UserAdd", &http::HeaderMap::new(), None)
                .unwrap_err()
                .code(),
            tonic::Code::Unauthenticated
        );
    }
}
