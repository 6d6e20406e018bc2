//! The etcd Auth service (`etcdserverpb.Auth`) and the permission checks of the other
//! services.
//!
//! Every change (users, roles, permissions, enable, disable) is a log command
//! (`kv::auth::AuthCommand`) proposed like any write, so every member applies it
//! alike; a follower forwards it to the leader over the peer connection. Passwords are
//! hashed here with bcrypt at etcd's cost before proposing; the log, the state store
//! and the snapshots hold only the hashes, and no password is ever logged.
//!
//! `Authenticate` checks the password against this member's applied auth store, then
//! proposes an etcd "simple" token (random) for the user through the log, as etcd
//! does, so every member knows it: a client given several endpoints may use it on any
//! of them. Members keep tokens in memory only, valid `kv::auth::TOKEN_TTL` (300 s)
//! after their last use on that member.
//!
//! Who calls: with auth enabled, the `token` metadata names the user; without a token,
//! the subject CN of a verified client certificate does (etcd's `--client-cert-auth`);
//! without either the request has no user and anything needing a permission is refused
//! with etcd's `user name is empty`. With auth disabled tokens are ignored, as by etcd.
//!
//! Checks are made by the handler against the auth store this member applied last,
//! before proposing (etcd checks at apply time against the auth revision the request
//! carried; a permission revoked between the check and the apply does not stop a write
//! already checked).

use bytes::Bytes;
use kuberaft_proto::authpb;
use kuberaft_proto::etcdserverpb as pb;
use kuberaft_proto::etcdserverpb::auth_server::Auth;
use rand::Rng;
use tonic::{Request, Response, Status};

use super::KvService;
pub use crate::kv::auth::PermKind;
use crate::kv::auth::{AuthCommand, AuthError, AuthState, Permission, NAME_BYTES_MAX};
use crate::kv::{KvCommand, KvResult, Txn, TxnOp};

/// etcd's bcrypt cost (Go's `bcrypt.DefaultCost`).
pub const BCRYPT_COST: u32 = 10;
/// Longest password accepted (bcrypt uses the first 72 bytes).
pub const PASSWORD_BYTES_MAX: usize = 1024;

/// Maps an auth error to etcd's gRPC code and message.
pub(crate) fn auth_status(error: AuthError) -> Status {
    let message = error.to_string();
    match error {
        AuthError::UserEmpty
        | AuthError::RoleEmpty
        | AuthError::AuthFailed
        | AuthError::InvalidAuthMgmt
        | AuthError::TooLarge => Status::invalid_argument(message),
        AuthError::PermissionDenied => Status::permission_denied(message),
        AuthError::InvalidAuthToken => Status::unauthenticated(message),
        AuthError::RootUserNotExist
        | AuthError::RootRoleNotExist
        | AuthError::UserAlreadyExist
        | AuthError::UserNotFound
        | AuthError::RoleAlreadyExist
        | AuthError::RoleNotFound
        | AuthError::RoleNotGranted
        | AuthError::PermissionNotGranted
        | AuthError::AuthNotEnabled => Status::failed_precondition(message),
    }
}

/// A new simple token: random letters, then `.` and a number (etcd's form).
fn new_token() -> String {
    let random: String = rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(16)
        .map(char::from)
        .collect();
    format!("{random}.{}", rand::thread_rng().gen::<u32>())
}

/// The caller of a request, for permission checks.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    /// `None`: no token and no client certificate (or auth is disabled).
    pub user: Option<String>,
}

impl KvService {
    /// For the token-file layer: whether a token is a valid etcd token of this member
    /// while etcd auth is enabled.
    pub fn etcd_token_check(&self) -> crate::security::auth::EtcdTokenCheck {
        let kv = self.clone();
        std::sync::Arc::new(move |token: &str| {
            let state = kv.auth_state();
            state.enabled && state.tokens.0.user(token).is_some()
        })
    }

    /// The auth store this member applied last.
    pub(crate) fn auth_state(&self) -> std::sync::Arc<AuthState> {
        self.node.auth_state()
    }

    /// Who sends `request`: the user of its `token` metadata, else the CN of its
    /// verified client certificate. With auth disabled, nobody in particular.
    pub(crate) fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        self.caller_of(request.metadata(), request.extensions())
    }

    pub(crate) fn caller_of(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        extensions: &http::Extensions,
    ) -> Result<Caller, Status> {
        let state = self.auth_state();
        if !state.enabled {
            return Ok(Caller::default());
        }
        if let Some(token) = metadata.get("token").and_then(|v| v.to_str().ok()) {
            return match state.tokens.0.user(token.trim()) {
                Some(user) => Ok(Caller { user: Some(user) }),
                None => Err(auth_status(AuthError::InvalidAuthToken)),
            };
        }
        let cn = extensions
            .get::<crate::security::tls::ConnInfo>()
            .and_then(|c| c.certificate_identity.clone());
        Ok(Caller {
            user: cn.map(|cn| cn.to_string()),
        })
    }

    /// Refuses unless the caller may `kind` the keys `[key, range_end)`.
    pub(crate) fn check_range(
        &self,
        caller: &Caller,
        key: &[u8],
        range_end: &[u8],
        kind: PermKind,
    ) -> Result<(), Status> {
        self.auth_state()
            .check_range(caller.user.as_deref(), key, range_end, kind)
            .map_err(|e| deny(caller, e))
    }

    /// Refuses unless the caller is a root user (or auth is disabled).
    pub(crate) fn check_admin(&self, caller: &Caller) -> Result<(), Status> {
        self.auth_state()
            .is_admin(caller.user.as_deref())
            .map_err(|e| deny(caller, e))
    }

    /// etcd's txn check: reads of every compare and range, writes of every put and
    /// delete, in both branches and nested txns.
    pub(crate) fn check_txn(&self, caller: &Caller, txn: &Txn) -> Result<(), Status> {
        let state = self.auth_state();
        if !state.enabled {
            return Ok(());
        }
        check_txn_in(&state, caller, txn).map_err(|e| deny(caller, e))
    }
}

fn check_txn_in(state: &AuthState, caller: &Caller, txn: &Txn) -> Result<(), AuthError> {
    let user = caller.user.as_deref();
    for compare in &txn.compares {
        state.check_range(user, &compare.key, &compare.range_end, PermKind::Read)?;
    }
    for op in txn.success.iter().chain(txn.failure.iter()) {
        match op {
            TxnOp::Range(q) => state.check_range(user, &q.key, &q.range_end, PermKind::Read)?,
            TxnOp::Put { key, prev_kv, .. } => {
                state.check_range(user, key, &[], PermKind::Write)?;
                if *prev_kv {
                    state.check_range(user, key, &[], PermKind::Read)?;
                }
            }
            TxnOp::DeleteRange {
                key,
                range_end,
                prev_kv,
            } => {
                state.check_range(user, key, range_end, PermKind::Write)?;
                if *prev_kv {
                    state.check_range(user, key, range_end, PermKind::Read)?;
                }
            }
            TxnOp::Txn(inner) => check_txn_in(state, caller, inner)?,
        }
    }
    Ok(())
}

fn deny(caller: &Caller, error: AuthError) -> Status {
    if error == AuthError::PermissionDenied {
        crate::security::COUNTERS
            .permission_denied
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(
            user = caller.user.as_deref().unwrap_or(""),
            "request refused: etcd permission denied"
        );
    }
    auth_status(error)
}

/// The etcd Auth service.
#[derive(Clone)]
pub struct AuthService {
    kv: KvService,
}

fn check_name(name: &str, empty: AuthError) -> Result<(), Status> {
    if name.is_empty() {
        return Err(auth_status(empty));
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(Status::invalid_argument(format!(
            "etcdserver: name is longer than {NAME_BYTES_MAX} bytes"
        )));
    }
    Ok(())
}

/// Hashes `password` on a blocking thread (bcrypt takes tens of milliseconds).
async fn hash_password(password: String) -> Result<String, Status> {
    if password.len() > PASSWORD_BYTES_MAX {
        return Err(Status::invalid_argument(format!(
            "etcdserver: password is longer than {PASSWORD_BYTES_MAX} bytes"
        )));
    }
    tokio::task::spawn_blocking(move || bcrypt::hash(password.as_bytes(), BCRYPT_COST))
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::internal(format!("hashing the password: {e}")))
}

/// A hash a 3.5+ client computed: accepted only if it is a well-formed bcrypt hash.
fn client_hash(hash: &str) -> Result<String, Status> {
    let ok =
        hash.len() == 60 && hash.starts_with("$2") && hash.is_ascii() && bcrypt::verify("", hash).is_ok();
    if !ok {
        return Err(Status::invalid_argument(
            "etcdserver: hashed password is not a bcrypt hash",
        ));
    }
    Ok(hash.to_string())
}

impl AuthService {
    pub fn new(kv: KvService) -> AuthService {
        AuthService { kv }
    }

    pub fn into_server(self) -> pb::auth_server::AuthServer<AuthService> {
        pb::auth_server::AuthServer::new(self)
    }

    fn header(&self, revision: i64) -> Option<pb::ResponseHeader> {
        self.kv.header(revision)
    }

    /// Only a root user may administer auth once it is enabled.
    fn admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let caller = self.kv.caller(request)?;
        self.kv.check_admin(&caller)
    }

    /// Proposes `command` and answers with the header of its apply.
    async fn change(&self, command: AuthCommand) -> Result<Option<pb::ResponseHeader>, Status> {
        let response = self
            .kv
            .propose_or_forward(KvCommand::Auth(command), |result| match result {
                KvResult::Auth { revision } => Ok(Response::new(self.header(revision))),
                KvResult::Failed { error, .. } => Err(super::kv_status(error)),
                other => Err(Status::internal(format!("unexpected result {other:?}"))),
            })
            .await?;
        Ok(response.into_inner())
    }
}

fn permission_from_pb(p: &authpb::Permission) -> Result<Permission, Status> {
    let kind = PermKind::from_i32(p.perm_type)
        .ok_or_else(|| Status::invalid_argument("etcdserver: invalid permission type"))?;
    if p.key.len() > crate::kv::auth::PERMISSION_KEY_BYTES_MAX
        || p.range_end.len() > crate::kv::auth::PERMISSION_KEY_BYTES_MAX
    {
        return Err(Status::invalid_argument("etcdserver: permission key is too long"));
    }
    Ok(Permission {
        kind,
        key: Bytes::from(p.key.clone()),
        range_end: Bytes::from(p.range_end.clone()),
    })
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        request: Request<pb::AuthEnableRequest>,
    ) -> Result<Response<pb::AuthEnableResponse>, Status> {
        self.admin(&request)?;
        let header = self.change(AuthCommand::Enable).await?;
        Ok(Response::new(pb::AuthEnableResponse { header }))
    }

    async fn auth_disable(
        &self,
        request: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthDisableResponse>, Status> {
        self.admin(&request)?;
        let header = self.change(AuthCommand::Disable).await?;
        Ok(Response::new(pb::AuthDisableResponse { header }))
    }

    async fn auth_status(
        &self,
        _request: Request<pb::AuthStatusRequest>,
    ) -> Result<Response<pb::AuthStatusResponse>, Status> {
        let store = self.kv.node.read_local();
        let state = store.auth();
        Ok(Response::new(pb::AuthStatusResponse {
            header: self.header(store.revision()),
            enabled: state.enabled,
            auth_revision: state.revision,
        }))
    }

    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let r = request.into_inner();
        let store = self.kv.node.read_local();
        let state = store.auth().clone();
        if !state.enabled {
            return Err(auth_status(AuthError::AuthNotEnabled));
        }
        if r.name.len() > NAME_BYTES_MAX || r.password.len() > PASSWORD_BYTES_MAX {
            return Err(auth_status(AuthError::AuthFailed));
        }
        let hash = state.users.get(&r.name).and_then(|u| u.password_hash.clone());
        let Some(hash) = hash else {
            tracing::info!(user = %r.name, "authentication failed: no such user or no password");
            return Err(auth_status(AuthError::AuthFailed));
        };
        let password = r.password;
        let matched = tokio::task::spawn_blocking(move || bcrypt::verify(password.as_bytes(), &hash))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .unwrap_or(false);
        if !matched {
            tracing::info!(user = %r.name, "authentication failed: wrong password");
            return Err(auth_status(AuthError::AuthFailed));
        }
        let token = new_token();
        let header = self
            .change(AuthCommand::Token {
                user: r.name,
                token: token.clone(),
            })
            .await?;
        Ok(Response::new(pb::AuthenticateResponse { header, token }))
    }

    async fn user_add(
        &self,
        request: Request<pb::AuthUserAddRequest>,
    ) -> Result<Response<pb::AuthUserAddResponse>, Status> {
        self.admin(&request)?;
        let r = request.into_inner();
        check_name(&r.name, AuthError::UserEmpty)?;
        let no_password = r.options.as_ref().is_some_and(|o| o.no_password);
        let password_hash = if no_password {
            None
        } else if !r.hashed_password.is_empty() {
            Some(client_hash(&r.hashed_password)?)
        } else {
            Some(hash_password(r.password).await?)
        };
        let header = self
            .change(AuthCommand::UserAdd {
                name: r.name,
                password_hash,
            })
            .await?;
        Ok(Response::new(pb::AuthUserAddResponse { header }))
    }

    async fn user_get(
        &self,
        request: Request<pb::AuthUserGetRequest>,
    ) -> Result<Response<pb::AuthUserGetResponse>, Status> {
        self.admin(&request)?;
        let r = request.into_inner();
        let store = self.kv.node.read_local();
        let user = store
            .auth()
            .users
            .get(&r.name)
            .ok_or_else(|| auth_status(AuthError::UserNotFound))?;
        Ok(Response::new(pb::AuthUserGetResponse {
            header: self.header(store.revision()),
            roles: user.roles.iter().cloned().collect(),
        }))
    }

    async fn user_list(
        &self,
        request: Request<pb::AuthUserListRequest>,
    ) -> Result<Response<pb::AuthUserListResponse>, Status> {
        self.admin(&request)?;
        let store = self.kv.node.read_local();
        Ok(Response::new(pb::AuthUserListResponse {
            header: self.header(store.revision()),
            users: store.auth().users.keys().cloned().collect(),
        }))
    }

    async fn user_delete(
        &self,
        request: Request<pb::AuthUserDeleteRequest>,
    ) -> Result<Response<pb::AuthUserDeleteResponse>, Status> {
        self.admin(&request)?;
        let r = request.into_inner();
        check_name(&r.name, AuthError::UserEmpty)?;
        let header = self.change(AuthCommand::UserDelete { name: r.name }).await?;
        Ok(Response::new(pb::AuthUserDeleteResponse { header }))
    }

    async fn user_change_password(
        &self,
        request: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<pb::AuthUserChangePasswordResponse>, Status> {
        self.admin(&request)?;
        let r = request.into_inner();
        check_name(&r.name, AuthError::UserEmpty)?;
        if !self.kv.auth_state().users.contains_key(&r.name) {
            return Err(auth_status(AuthError::UserNotFound));
        }
        let password_hash = if !r.hashed_password.is_empty() {
            client_hash(&r.hashed_password)?
        } else {
            hash_password(r.password).await?
        };
        let header = self
            .change(AuthCommand::UserChangePassword {
                name: r.name,
                password_hash,
            })
            .await?;
        Ok(Response::new(pb::AuthUserChangePasswordResponse { header }))
    }

    async fn user_grant_role(
        &self,
        request: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<pb::AuthUserGrantRoleResponse>, Status> {
        self.admin(&request)?;
        let r = request.into_inner();
        check_name(&r.user, AuthError::UserEmpty)?;
        check_name(&r.role, AuthError::RoleEmpty)?;
        let header = self
            .change(AuthCommand::UserGrantRole {
                user: r.user,
                role: r.role,
            })
            .await?;
        Ok(Response::new(pb::AuthUserGrantRoleResponse { header }))
    }

    async fn user_revoke_role(
        &self,
        request: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<pb::AuthUserRevokeRoleResponse>, Status> {
        self.admin(&request)?;
        let r = request.into_inner();
        check_name(&r.name, AuthError::UserEmpty)?;
        check_name(&r.role, AuthError::RoleEmpty)?;
        let header = self
            .change(AuthCommand::UserRevokeRole {
                user: r.name,
                role: r.role,
            })
            .await?;
        Ok(Response::new(pb::AuthUserRevokeRoleResponse { header }))
    }

    async fn role_add(
        &self,
        request: Request<pb::AuthRoleAddRequest>,
    ) -> Result<Response<pb::AuthRoleAddResponse>, Status> {
        self.admin(&request)?;
        let r = request.into_inner();
        check_name(&r.name, AuthError::RoleEmpty)?;
        let header = self.change(AuthCommand::RoleAdd { name: r.name }).await?;
        Ok(Response::new(pb::AuthRoleAddResponse { header }))
    }

    async fn role_get(
        &self,
        request: Request<pb::AuthRoleGetRequest>,
    ) -> Result<Response<pb::AuthRoleGetResponse>, Status> {
        self.admin(&request)?;
        let r = request.into_inner();
        let store = self.kv.node.read_local();
        let state = store.auth();
        let perm = if r.role == crate::kv::auth::ROOT && !state.roles.contains_key(&r.role) {
            return Err(auth_status(AuthError::RoleNotFound));
        } else {
            state
                .roles
                .get(&r.role)
                .ok_or_else(|| auth_status(AuthError::RoleNotFound))?
                .permissions
                .iter()
                .map(|p| authpb::Permission {
                    perm_type: p.kind as i32,
                    key: p.key.to_vec(),
                    range_end: p.range_end.to_vec(),
                })
                .collect()
        };
        Ok(Response::new(pb::AuthRoleGetResponse {
            header: self.header(store.revision()),
            perm,
        }))
    }

    async fn role_list(
        &self,
        request: Request<pb::AuthRoleListRequest>,
    ) -> Result<Response<pb::AuthRoleListResponse>, Status> {
        self.admin(&request)?;
        let store = self.kv.node.read_local();
        Ok(Response::new(pb::AuthRoleListResponse {
            header: self.header(store.revision()),
            roles: store.auth().roles.keys().cloned().collect(),
        }))
    }

    async fn role_delete(
        &self,
        request: Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<Response<pb::AuthRoleDeleteResponse>, Status> {
        self.admin(&request)?;
        let r = request.into_inner();
        check_name(&r.role, AuthError::RoleEmpty)?;
        let header = self.change(AuthCommand::RoleDelete { name: r.role }).await?;
        Ok(Response::new(pb::AuthRoleDeleteResponse { header }))
    }

    async fn role_grant_permission(
        &self,
        request: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<pb::AuthRoleGrantPermissionResponse>, Status> {
        self.admin(&request)?;
        let r = request.into_inner();
        check_name(&r.name, AuthError::RoleEmpty)?;
        let permission = permission_from_pb(
            r.perm
                .as_ref()
                .ok_or_else(|| Status::invalid_argument("etcdserver: permission is not provided"))?,
        )?;
        let header = self
            .change(AuthCommand::RoleGrantPermission {
                role: r.name,
                permission,
            })
            .await?;
        Ok(Response::new(pb::AuthRoleGrantPermissionResponse { header }))
    }

    async fn role_revoke_permission(
        &self,
        request: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<pb::AuthRoleRevokePermissionResponse>, Status> {
        self.admin(&request)?;
        let r = request.into_inner();
        check_name(&r.role, AuthError::RoleEmpty)?;
        if r.key.len() > crate::kv::auth::PERMISSION_KEY_BYTES_MAX
            || r.range_end.len() > crate::kv::auth::PERMISSION_KEY_BYTES_MAX
        {
            return Err(Status::invalid_argument("etcdserver: permission key is too long"));
        }
        let header = self
            .change(AuthCommand::RoleRevokePermission {
                role: r.role,
                key: Bytes::from(r.key),
                range_end: Bytes::from(r.range_end),
            })
            .await?;
        Ok(Response::new(pb::AuthRoleRevokePermissionResponse { header }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_of_etcds_form() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        let (random, number) = a.split_once('.').unwrap();
        assert_eq!(random.len(), 16);
        assert!(number.parse::<u32>().is_ok());
    }

    #[test]
    fn auth_errors_carry_etcds_codes() {
        assert_eq!(
            auth_status(AuthError::UserAlreadyExist).code(),
            tonic::Code::FailedPrecondition
        );
        assert_eq!(
            auth_status(AuthError::PermissionDenied).message(),
            "etcdserver: permission denied"
        );
        assert_eq!(
            auth_status(AuthError::InvalidAuthToken).code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            auth_status(AuthError::UserEmpty).code(),
            tonic::Code::InvalidArgument
        );
    }
}
