//! etcd's auth store as part of the replicated state machine: users (a bcrypt hash of
//! the password, the roles granted), roles (key permissions), whether auth is enabled,
//! and the auth revision (bumped by every change that took effect, as etcd's).
//!
//! Every change is a log command ([`AuthCommand`]) applied on every member alike, with
//! etcd's validation: a refused command changes nothing and answers etcd's error.
//! Passwords never reach the log: the handler hashes them before proposing (as etcd
//! does), so apply never spends bcrypt time and never sees a password.
//!
//! The state lives in memory (behind an `Arc` the published stores share), is written to
//! the engine's `meta` table (`auth`) in the same commit as the applied index, and is a
//! section of the store's snapshot.
//!
//! Simple tokens are assigned through the log too ([`AuthCommand::Token`], as etcd's
//! `Authenticate` is), so every member knows every token; each member keeps them in
//! memory only ([`Tokens`], never in the engine or a snapshot: a restarted member has
//! none, as etcd) and expires them by its own clock, [`TOKEN_TTL`] after their last use.
//!
//! Checks ([`AuthState::check_range`], [`AuthState::is_admin`]) follow etcd's: the root
//! role may do everything; otherwise the user's permissions of the asked type (a
//! READWRITE permission counts for both) are merged into disjoint intervals, and the
//! asked key or range must lie inside one of them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{get_field, get_u8, CodecError};

/// The user and role etcd gives every permission and requires for enabling auth.
pub const ROOT: &str = "root";

/// Longest user or role name.
pub const NAME_BYTES_MAX: usize = 256;
/// Most users, and most roles, the store holds.
pub const USERS_MAX: usize = 10_000;
pub const ROLES_MAX: usize = 10_000;
/// Most roles granted to one user.
pub const ROLES_PER_USER_MAX: usize = 256;
/// Most permissions of one role.
pub const PERMISSIONS_PER_ROLE_MAX: usize = 1024;
/// Longest key or range end of a permission.
pub const PERMISSION_KEY_BYTES_MAX: usize = 64 * 1024;
/// Longest stored password hash (bcrypt's are 60 bytes).
pub const HASH_BYTES_MAX: usize = 128;

/// etcd's simple tokens' default TTL (`--auth-token-ttl`, 300 s).
pub const TOKEN_TTL: Duration = Duration::from_secs(300);
/// Most tokens a member holds at once; past it, the one closest to expiry goes.
pub const TOKENS_MAX: usize = 100_000;
/// Longest token accepted in a command.
pub const TOKEN_BYTES_MAX: usize = 256;

struct Issued {
    user: String,
    expires: Instant,
}

/// The simple tokens this member knows (memory only; shared by every clone of the
/// auth state, so a change of the auth store keeps them).
pub struct Tokens {
    issued: Mutex<HashMap<String, Issued>>,
    ttl: Duration,
}

impl Default for Tokens {
    fn default() -> Self {
        Tokens::with_ttl(TOKEN_TTL)
    }
}

impl Tokens {
    pub fn with_ttl(ttl: Duration) -> Tokens {
        Tokens {
            issued: Mutex::default(),
            ttl,
        }
    }

    /// Records `token` for `user`.
    pub fn assign(&self, user: &str, token: &str) {
        let now = Instant::now();
        let mut issued = self.issued.lock().expect("not poisoned");
        if issued.len() >= TOKENS_MAX {
            issued.retain(|_, t| t.expires > now);
            if issued.len() >= TOKENS_MAX {
                if let Some(oldest) = issued
                    .iter()
                    .min_by_key(|(_, t)| t.expires)
                    .map(|(k, _)| k.clone())
                {
                    issued.remove(&oldest);
                }
            }
        }
        issued.insert(
            token.to_string(),
            Issued {
                user: user.to_string(),
                expires: now + self.ttl,
            },
        );
    }

    /// The user of a valid token; its TTL starts again (etcd's simple tokens are
    /// extended on use).
    pub fn user(&self, token: &str) -> Option<String> {
        let now = Instant::now();
        let mut issued = self.issued.lock().expect("not poisoned");
        match issued.get_mut(token) {
            Some(t) if t.expires > now => {
                t.expires = now + self.ttl;
                Some(t.user.clone())
            }
            Some(_) => {
                issued.remove(token);
                None
            }
            None => None,
        }
    }

    /// Forgets the tokens of `user` (deleted, or its password changed).
    pub fn revoke_user(&self, user: &str) {
        self.issued
            .lock()
            .expect("not poisoned")
            .retain(|_, t| t.user != user);
    }

    /// Forgets every token (auth disabled).
    pub fn clear(&self) {
        self.issued.lock().expect("not poisoned").clear();
    }
}

/// [`Tokens`] as a field of the auth state: not part of its value (equality, codec).
#[derive(Clone, Default)]
pub struct SharedTokens(pub Arc<Tokens>);

impl PartialEq for SharedTokens {
    fn eq(&self, _: &SharedTokens) -> bool {
        true
    }
}

impl Eq for SharedTokens {}

impl std::fmt::Debug for SharedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens")
    }
}

/// etcd's permission types (`authpb.Permission.Type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PermKind {
    Read = 0,
    Write = 1,
    ReadWrite = 2,
}

impl PermKind {
    pub fn from_i32(n: i32) -> Option<PermKind> {
        match n {
            0 => Some(PermKind::Read),
            1 => Some(PermKind::Write),
            2 => Some(PermKind::ReadWrite),
            _ => None,
        }
    }

    fn allows(self, asked: PermKind) -> bool {
        self == PermKind::ReadWrite || self == asked
    }
}

/// Access of one type to the key `key`, or to `[key, range_end)` (`range_end == [0]`:
/// every key from `key` on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permission {
    pub kind: PermKind,
    pub key: Bytes,
    pub range_end: Bytes,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct User {
    /// bcrypt hash; `None` for a user added with `--no-password` (it cannot
    /// authenticate with a password).
    pub password_hash: Option<String>,
    pub roles: BTreeSet<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Role {
    /// In the order etcd lists them: by key, then range end.
    pub permissions: Vec<Permission>,
}

/// A change of the auth store, as it travels through the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthCommand {
    Enable,
    Disable,
    UserAdd {
        name: String,
        /// `None`: no password (`--no-password`).
        password_hash: Option<String>,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        password_hash: String,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        user: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        name: String,
    },
    RoleGrantPermission {
        role: String,
        permission: Permission,
    },
    RoleRevokePermission {
        role: String,
        key: Bytes,
        range_end: Bytes,
    },
    /// `user` logged in (its password was checked by the member that took the
    /// request, against this store); every member records `token` for it.
    Token {
        user: String,
        token: String,
    },
}

/// etcd's auth errors, with its messages (etcd 3.4's `rpctypes`).
#[derive(Clone, Copy, Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    /// Not etcd's: a request over one of this store's bounds.
    #[error("etcdserver: auth request is over a limit (names, users, roles or permissions)")]
    TooLarge,
}

/// The auth store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthState {
    pub enabled: bool,
    /// etcd's auth revision: 1 on a new store, bumped by every change that took effect.
    pub revision: u64,
    pub users: BTreeMap<String, User>,
    pub roles: BTreeMap<String, Role>,
    /// The simple tokens this member knows (memory only).
    pub tokens: SharedTokens,
}

impl Default for AuthState {
    fn default() -> Self {
        AuthState {
            enabled: false,
            revision: 1,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
            tokens: SharedTokens::default(),
        }
    }
}

fn check_name(name: &str, empty: AuthError) -> Result<(), AuthError> {
    if name.is_empty() {
        return Err(empty);
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(AuthError::TooLarge);
    }
    Ok(())
}

/// Is `[key, end)` (etcd's range notation) inside `[start, stop)`? Ends of `[0]` are
/// unbounded; an empty end is the single key.
fn interval(key: &[u8], end: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    if end.is_empty() {
        // The single key `key`: [key, key + "\0").
        let mut stop = key.to_vec();
        stop.push(0);
        (key.to_vec(), Some(stop))
    } else if end == [0] {
        (key.to_vec(), None)
    } else {
        (key.to_vec(), Some(end.to_vec()))
    }
}

impl AuthState {
    /// Applies `command`; on an error nothing changed.
    pub fn apply(&mut self, command: &AuthCommand) -> Result<(), AuthError> {
        let changed = self.apply_inner(command)?;
        if changed {
            self.revision += 1;
        }
        // As etcd's token provider: tokens go with the user or its password, and all
        // of them when auth is disabled.
        match command {
            AuthCommand::UserDelete { name } | AuthCommand::UserChangePassword { name, .. } => {
                self.tokens.0.revoke_user(name)
            }
            AuthCommand::Disable => self.tokens.0.clear(),
            AuthCommand::Token { user, token } => self.tokens.0.assign(user, token),
            _ => {}
        }
        Ok(())
    }

    /// Whether something changed (a change bumps the auth revision).
    fn apply_inner(&mut self, command: &AuthCommand) -> Result<bool, AuthError> {
        match command {
            AuthCommand::Enable => {
                if self.enabled {
                    return Ok(false);
                }
                let root = self.users.get(ROOT).ok_or(AuthError::RootUserNotExist)?;
                if !root.roles.contains(ROOT) {
                    return Err(AuthError::RootRoleNotExist);
                }
                self.enabled = true;
            }
            AuthCommand::Disable => {
                if !self.enabled {
                    return Ok(false);
                }
                self.enabled = false;
            }
            AuthCommand::UserAdd { name, password_hash } => {
                check_name(name, AuthError::UserEmpty)?;
                if password_hash.as_ref().is_some_and(|h| h.len() > HASH_BYTES_MAX) {
                    return Err(AuthError::TooLarge);
                }
                if self.users.contains_key(name) {
                    return Err(AuthError::UserAlreadyExist);
                }
                if self.users.len() >= USERS_MAX {
                    return Err(AuthError::TooLarge);
                }
                self.users.insert(
                    name.clone(),
                    User {
                        password_hash: password_hash.clone(),
                        roles: BTreeSet::new(),
                    },
                );
            }
            AuthCommand::UserDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.users.remove(name).ok_or(AuthError::UserNotFound)?;
            }
            AuthCommand::UserChangePassword { name, password_hash } => {
                if password_hash.len() > HASH_BYTES_MAX {
                    return Err(AuthError::TooLarge);
                }
                let user = self.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
                user.password_hash = Some(password_hash.clone());
            }
            AuthCommand::UserGrantRole { user, role } => {
                let Some(found) = self.users.get(user) else {
                    return Err(AuthError::UserNotFound);
                };
                if role != ROOT && !self.roles.contains_key(role) {
                    return Err(AuthError::RoleNotFound);
                }
                if found.roles.contains(role) {
                    // etcd 3.4 ignores a role granted twice.
                    return Ok(false);
                }
                if found.roles.len() >= ROLES_PER_USER_MAX {
                    return Err(AuthError::TooLarge);
                }
                self.users
                    .get_mut(user)
                    .expect("found above")
                    .roles
                    .insert(role.clone());
            }
            AuthCommand::UserRevokeRole { user, role } => {
                if self.enabled && user == ROOT && role == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let found = self.users.get_mut(user).ok_or(AuthError::UserNotFound)?;
                if !found.roles.remove(role) {
                    return Err(AuthError::RoleNotGranted);
                }
            }
            AuthCommand::RoleAdd { name } => {
                check_name(name, AuthError::RoleEmpty)?;
                if self.roles.contains_key(name) {
                    return Err(AuthError::RoleAlreadyExist);
                }
                if self.roles.len() >= ROLES_MAX {
                    return Err(AuthError::TooLarge);
                }
                self.roles.insert(name.clone(), Role::default());
            }
            AuthCommand::RoleDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.roles.remove(name).ok_or(AuthError::RoleNotFound)?;
                for user in self.users.values_mut() {
                    user.roles.remove(name);
                }
            }
            AuthCommand::RoleGrantPermission { role, permission } => {
                if permission.key.len() > PERMISSION_KEY_BYTES_MAX
                    || permission.range_end.len() > PERMISSION_KEY_BYTES_MAX
                {
                    return Err(AuthError::TooLarge);
                }
                let found = self.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
                let at = found.permissions.binary_search_by(|p| {
                    (&p.key, &p.range_end).cmp(&(&permission.key, &permission.range_end))
                });
                match at {
                    // The same key and range: its type is replaced, as etcd does.
                    Ok(i) => found.permissions[i].kind = permission.kind,
                    Err(i) => {
                        if found.permissions.len() >= PERMISSIONS_PER_ROLE_MAX {
                            return Err(AuthError::TooLarge);
                        }
                        found.permissions.insert(i, permission.clone());
                    }
                }
            }
            AuthCommand::RoleRevokePermission { role, key, range_end } => {
                let found = self.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
                let Some(i) = found
                    .permissions
                    .iter()
                    .position(|p| p.key == *key && p.range_end == *range_end)
                else {
                    return Err(AuthError::PermissionNotGranted);
                };
                found.permissions.remove(i);
            }
            AuthCommand::Token { user, token } => {
                if !self.enabled {
                    return Err(AuthError::AuthNotEnabled);
                }
                if token.is_empty() || token.len() > TOKEN_BYTES_MAX {
                    return Err(AuthError::TooLarge);
                }
                if !self.users.contains_key(user) {
                    return Err(AuthError::AuthFailed);
                }
                // Not a change of the store: no new auth revision.
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether `user` exists and holds the root role.
    pub fn has_root_role(&self, user: &str) -> bool {
        self.users.get(user).is_some_and(|u| u.roles.contains(ROOT))
    }

    /// etcd's `IsAdminPermitted`: with auth enabled only a root user may administer.
    pub fn is_admin(&self, user: Option<&str>) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        let user = user.ok_or(AuthError::UserEmpty)?;
        if !self.users.contains_key(user) {
            return Err(AuthError::UserNotFound);
        }
        if !self.has_root_role(user) {
            return Err(AuthError::PermissionDenied);
        }
        Ok(())
    }

    /// etcd's `isOpPermitted`: may `user` access `[key, range_end)` for `kind` (Read or
    /// Write)? Always with auth disabled.
    pub fn check_range(
        &self,
        user: Option<&str>,
        key: &[u8],
        range_end: &[u8],
        kind: PermKind,
    ) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        let name = user.ok_or(AuthError::UserEmpty)?;
        let found = self.users.get(name).ok_or(AuthError::UserNotFound)?;
        if found.roles.contains(ROOT) {
            return Ok(());
        }
        // The user's intervals of this kind, merged.
        let mut intervals: Vec<(Vec<u8>, Option<Vec<u8>>)> = found
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| r.permissions.iter())
            .filter(|p| p.kind.allows(kind))
            .map(|p| interval(&p.key, &p.range_end))
            .collect();
        intervals.sort();
        let mut merged: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::with_capacity(intervals.len());
        for (start, stop) in intervals {
            if let Some(last) = merged.last_mut() {
                let touches = match &last.1 {
                    None => true,
                    Some(end) => start <= *end,
                };
                if touches {
                    last.1 = match (&last.1, stop) {
                        (None, _) | (_, None) => None,
                        (Some(a), Some(b)) => Some(if *a >= b { a.clone() } else { b }),
                    };
                    continue;
                }
            }
            merged.push((start, stop));
        }
        let (want_start, want_stop) = interval(key, range_end);
        let covered = merged.iter().any(|(start, stop)| {
            *start <= want_start
                && match (stop, &want_stop) {
                    (None, _) => true,
                    (Some(_), None) => false,
                    (Some(stop), Some(want)) => want <= stop,
                }
        });
        if covered {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// The state, for the engine's `meta` table and the snapshot.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        out.put_u8(1); // format
        out.put_u8(u8::from(self.enabled));
        out.put_u64_le(self.revision);
        out.put_u32_le(self.users.len() as u32);
        for (name, user) in &self.users {
            super::put_field(&mut out, name.as_bytes());
            match &user.password_hash {
                Some(hash) => {
                    out.put_u8(1);
                    super::put_field(&mut out, hash.as_bytes());
                }
                None => out.put_u8(0),
            }
            out.put_u32_le(user.roles.len() as u32);
            for role in &user.roles {
                super::put_field(&mut out, role.as_bytes());
            }
        }
        out.put_u32_le(self.roles.len() as u32);
        for (name, role) in &self.roles {
            super::put_field(&mut out, name.as_bytes());
            out.put_u32_le(role.permissions.len() as u32);
            for p in &role.permissions {
                encode_permission(&mut out, p);
            }
        }
        out.freeze()
    }

    pub fn decode(mut buf: Bytes) -> Result<AuthState, CodecError> {
        let bad = |what: &str| CodecError::Snapshot(format!("auth state: {what}"));
        if get_u8(&mut buf)? != 1 {
            return Err(bad("unknown format"));
        }
        let enabled = super::get_bool(&mut buf)?;
        let revision = super::get_i64(&mut buf)? as u64;
        let mut state = AuthState {
            enabled,
            revision,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
            tokens: SharedTokens::default(),
        };
        let users = get_u32(&mut buf)? as usize;
        if users > USERS_MAX {
            return Err(CodecError::TooMany("users"));
        }
        for _ in 0..users {
            let name = get_name(&mut buf)?;
            let password_hash = match get_u8(&mut buf)? {
                0 => None,
                1 => Some(get_string(&mut buf, HASH_BYTES_MAX)?),
                _ => return Err(bad("password tag")),
            };
            let count = get_u32(&mut buf)? as usize;
            if count > ROLES_PER_USER_MAX {
                return Err(CodecError::TooMany("roles of a user"));
            }
            let mut roles = BTreeSet::new();
            for _ in 0..count {
                roles.insert(get_name(&mut buf)?);
            }
            state.users.insert(name, User { password_hash, roles });
        }
        let roles = get_u32(&mut buf)? as usize;
        if roles > ROLES_MAX {
            return Err(CodecError::TooMany("roles"));
        }
        for _ in 0..roles {
            let name = get_name(&mut buf)?;
            let count = get_u32(&mut buf)? as usize;
            if count > PERMISSIONS_PER_ROLE_MAX {
                return Err(CodecError::TooMany("permissions of a role"));
            }
            let mut permissions = Vec::with_capacity(count);
            for _ in 0..count {
                permissions.push(decode_permission(&mut buf)?);
            }
            state.roles.insert(name, Role { permissions });
        }
        if buf.has_remaining() {
            return Err(CodecError::Trailing);
        }
        Ok(state)
    }
}

fn get_u32(buf: &mut Bytes) -> Result<u32, CodecError> {
    if buf.remaining() < 4 {
        return Err(CodecError::Truncated);
    }
    Ok(buf.get_u32_le())
}

fn get_string(buf: &mut Bytes, max: usize) -> Result<String, CodecError> {
    let field = get_field(buf)?;
    if field.len() > max {
        return Err(CodecError::TooLarge(field.len() as u64));
    }
    String::from_utf8(field.to_vec()).map_err(|_| CodecError::Snapshot("a name is not UTF-8".into()))
}

fn get_name(buf: &mut Bytes) -> Result<String, CodecError> {
    get_string(buf, NAME_BYTES_MAX)
}

fn encode_permission(out: &mut BytesMut, p: &Permission) {
    out.put_u8(p.kind as u8);
    super::put_field(out, &p.key);
    super::put_field(out, &p.range_end);
}

fn decode_permission(buf: &mut Bytes) -> Result<Permission, CodecError> {
    let kind = get_u8(buf)?;
    let kind = PermKind::from_i32(i32::from(kind)).ok_or(CodecError::UnknownType(kind))?;
    let key = get_field(buf)?;
    let range_end = get_field(buf)?;
    if key.len() > PERMISSION_KEY_BYTES_MAX || range_end.len() > PERMISSION_KEY_BYTES_MAX {
        return Err(CodecError::TooLarge(key.len().max(range_end.len()) as u64));
    }
    Ok(Permission { kind, key, range_end })
}

const A_ENABLE: u8 = 1;
const A_DISABLE: u8 = 2;
const A_USER_ADD: u8 = 3;
const A_USER_DELETE: u8 = 4;
const A_USER_PASSWORD: u8 = 5;
const A_USER_GRANT: u8 = 6;
const A_USER_REVOKE: u8 = 7;
const A_ROLE_ADD: u8 = 8;
const A_ROLE_DELETE: u8 = 9;
const A_ROLE_GRANT: u8 = 10;
const A_ROLE_REVOKE: u8 = 11;
const A_TOKEN: u8 = 12;

impl AuthCommand {
    pub(crate) fn encode_into(&self, out: &mut BytesMut) {
        let name = |out: &mut BytesMut, s: &str| super::put_field(out, s.as_bytes());
        match self {
            AuthCommand::Enable => out.put_u8(A_ENABLE),
            AuthCommand::Disable => out.put_u8(A_DISABLE),
            AuthCommand::UserAdd {
                name: n,
                password_hash,
            } => {
                out.put_u8(A_USER_ADD);
                name(out, n);
                match password_hash {
                    Some(h) => {
                        out.put_u8(1);
                        name(out, h);
                    }
                    None => out.put_u8(0),
                }
            }
            AuthCommand::UserDelete { name: n } => {
                out.put_u8(A_USER_DELETE);
                name(out, n);
            }
            AuthCommand::UserChangePassword {
                name: n,
                password_hash,
            } => {
                out.put_u8(A_USER_PASSWORD);
                name(out, n);
                name(out, password_hash);
            }
            AuthCommand::UserGrantRole { user, role } => {
                out.put_u8(A_USER_GRANT);
                name(out, user);
                name(out, role);
            }
            AuthCommand::UserRevokeRole { user, role } => {
                out.put_u8(A_USER_REVOKE);
                name(out, user);
                name(out, role);
            }
            AuthCommand::RoleAdd { name: n } => {
                out.put_u8(A_ROLE_ADD);
                name(out, n);
            }
            AuthCommand::RoleDelete { name: n } => {
                out.put_u8(A_ROLE_DELETE);
                name(out, n);
            }
            AuthCommand::RoleGrantPermission { role, permission } => {
                out.put_u8(A_ROLE_GRANT);
                name(out, role);
                encode_permission(out, permission);
            }
            AuthCommand::RoleRevokePermission { role, key, range_end } => {
                out.put_u8(A_ROLE_REVOKE);
                name(out, role);
                super::put_field(out, key);
                super::put_field(out, range_end);
            }
            AuthCommand::Token { user, token } => {
                out.put_u8(A_TOKEN);
                name(out, user);
                name(out, token);
            }
        }
    }

    pub(crate) fn decode_from(buf: &mut Bytes) -> Result<AuthCommand, CodecError> {
        // Names in a command are bounded by the handler; the codec bounds them by the
        // field limit only, and apply refuses what is over the store's limits.
        let s = |buf: &mut Bytes| -> Result<String, CodecError> {
            let field = get_field(buf)?;
            String::from_utf8(field.to_vec()).map_err(|_| CodecError::UnknownType(0))
        };
        Ok(match get_u8(buf)? {
            A_ENABLE => AuthCommand::Enable,
            A_DISABLE => AuthCommand::Disable,
            A_USER_ADD => AuthCommand::UserAdd {
                name: s(buf)?,
                password_hash: match get_u8(buf)? {
                    0 => None,
                    1 => Some(s(buf)?),
                    other => return Err(CodecError::UnknownType(other)),
                },
            },
            A_USER_DELETE => AuthCommand::UserDelete { name: s(buf)? },
            A_USER_PASSWORD => AuthCommand::UserChangePassword {
                name: s(buf)?,
                password_hash: s(buf)?,
            },
            A_USER_GRANT => AuthCommand::UserGrantRole {
                user: s(buf)?,
                role: s(buf)?,
            },
            A_USER_REVOKE => AuthCommand::UserRevokeRole {
                user: s(buf)?,
                role: s(buf)?,
            },
            A_ROLE_ADD => AuthCommand::RoleAdd { name: s(buf)? },
            A_ROLE_DELETE => AuthCommand::RoleDelete { name: s(buf)? },
            A_ROLE_GRANT => AuthCommand::RoleGrantPermission {
                role: s(buf)?,
                permission: {
                    let kind = get_u8(buf)?;
                    Permission {
                        kind: PermKind::from_i32(i32::from(kind)).ok_or(CodecError::UnknownType(kind))?,
                        key: get_field(buf)?,
                        range_end: get_field(buf)?,
                    }
                },
            },
            A_ROLE_REVOKE => AuthCommand::RoleRevokePermission {
                role: s(buf)?,
                key: get_field(buf)?,
                range_end: get_field(buf)?,
            },
            A_TOKEN => AuthCommand::Token {
                user: s(buf)?,
                token: s(buf)?,
            },
            other => return Err(CodecError::UnknownType(other)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> String {
        x.to_string()
    }

    fn user_add(name: &str) -> AuthCommand {
        AuthCommand::UserAdd {
            name: s(name),
            password_hash: Some(s("$2b$04$hash")),
        }
    }

    fn grant(role: &str, kind: PermKind, key: &str, end: &str) -> AuthCommand {
        AuthCommand::RoleGrantPermission {
            role: s(role),
            permission: Permission {
                kind,
                key: Bytes::from(key.to_string()),
                range_end: Bytes::from(end.to_string()),
            },
        }
    }

    fn grant_role(user: &str, role: &str) -> AuthCommand {
        AuthCommand::UserGrantRole {
            user: s(user),
            role: s(role),
        }
    }

    /// A store with root (root role) and alice (role `app`: readwrite on [a, c)).
    fn populated() -> AuthState {
        let mut st = AuthState::default();
        for c in [
            user_add("root"),
            grant_role("root", "root"),
            user_add("alice"),
            AuthCommand::RoleAdd { name: s("app") },
            grant("app", PermKind::ReadWrite, "a", "c"),
            grant_role("alice", "app"),
        ] {
            st.apply(&c).unwrap();
        }
        st
    }

    #[test]
    fn enabling_needs_a_root_user_with_the_root_role() {
        let mut st = AuthState::default();
        assert_eq!(st.revision, 1);
        assert_eq!(st.apply(&AuthCommand::Enable), Err(AuthError::RootUserNotExist));
        st.apply(&user_add("root")).unwrap();
        assert_eq!(st.apply(&AuthCommand::Enable), Err(AuthError::RootRoleNotExist));
        assert!(!st.enabled);
        st.apply(&grant_role("root", "root")).unwrap();
        st.apply(&AuthCommand::Enable).unwrap();
        assert!(st.enabled);
        assert_eq!(st.revision, 4);
        // Enabling twice changes nothing, as etcd.
        st.apply(&AuthCommand::Enable).unwrap();
        assert_eq!(st.revision, 4);
    }

    #[test]
    fn validation_errors_are_etcds_and_change_nothing() {
        let mut st = populated();
        let before = st.clone();
        for (command, error) in [
            (user_add("alice"), AuthError::UserAlreadyExist),
            (user_add(""), AuthError::UserEmpty),
            (
                AuthCommand::RoleAdd { name: s("app") },
                AuthError::RoleAlreadyExist,
            ),
            (AuthCommand::RoleAdd { name: s("") }, AuthError::RoleEmpty),
            (grant_role("bob", "app"), AuthError::UserNotFound),
            (grant_role("alice", "nope"), AuthError::RoleNotFound),
            (
                AuthCommand::UserRevokeRole {
                    user: s("alice"),
                    role: s("other"),
                },
                AuthError::RoleNotGranted,
            ),
            (grant("nope", PermKind::Read, "a", ""), AuthError::RoleNotFound),
            (
                AuthCommand::RoleRevokePermission {
                    role: s("app"),
                    key: Bytes::from("a"),
                    range_end: Bytes::from("b"),
                },
                AuthError::PermissionNotGranted,
            ),
            (
                AuthCommand::UserDelete { name: s("bob") },
                AuthError::UserNotFound,
            ),
            (
                AuthCommand::RoleDelete { name: s("nope") },
                AuthError::RoleNotFound,
            ),
            (user_add(&"x".repeat(NAME_BYTES_MAX + 1)), AuthError::TooLarge),
        ] {
            assert_eq!(st.apply(&command), Err(error), "{command:?}");
            assert_eq!(st, before, "{command:?} changed nothing");
        }
        // A role granted twice is ignored (etcd 3.4), without a new auth revision.
        st.apply(&grant_role("alice", "app")).unwrap();
        assert_eq!(st, before);
    }

    #[test]
    fn root_rules_hold_while_auth_is_enabled() {
        let mut st = populated();
        st.apply(&AuthCommand::Enable).unwrap();
        let revoke_root = AuthCommand::UserRevokeRole {
            user: s("root"),
            role: s("root"),
        };
        assert_eq!(st.apply(&revoke_root), Err(AuthError::InvalidAuthMgmt));
        assert_eq!(
            st.apply(&AuthCommand::UserDelete { name: s("root") }),
            Err(AuthError::InvalidAuthMgmt)
        );
        st.apply(&AuthCommand::Disable).unwrap();
        st.apply(&revoke_root).unwrap();
        st.apply(&AuthCommand::UserDelete { name: s("root") }).unwrap();
    }

    #[test]
    fn permissions_cover_keys_and_ranges_like_etcds() {
        let mut st = populated();
        let alice = Some("alice");
        // Disabled: everything is allowed, even to nobody.
        assert!(st.check_range(None, b"zzz", b"", PermKind::Write).is_ok());
        st.apply(&AuthCommand::Enable).unwrap();
        assert!(st.check_range(alice, b"a", b"", PermKind::Read).is_ok());
        assert!(st.check_range(alice, b"b", b"", PermKind::Write).is_ok());
        assert!(st.check_range(alice, b"a", b"c", PermKind::Read).is_ok());
        assert_eq!(
            st.check_range(alice, b"c", b"", PermKind::Write),
            Err(AuthError::PermissionDenied)
        );
        assert_eq!(
            st.check_range(alice, b"a", b"d", PermKind::Read),
            Err(AuthError::PermissionDenied)
        );
        assert_eq!(
            st.check_range(alice, b"a", b"\0", PermKind::Read),
            Err(AuthError::PermissionDenied)
        );
        assert_eq!(
            st.check_range(Some("bob"), b"a", b"", PermKind::Read),
            Err(AuthError::UserNotFound)
        );
        assert!(st
            .check_range(Some("root"), b"zzz", b"\0", PermKind::Write)
            .is_ok());
        // Read-only on [c, d) and on the single key "d": adjacent intervals merge.
        st.apply(&AuthCommand::RoleAdd { name: s("ro") }).unwrap();
        st.apply(&grant("ro", PermKind::Read, "c", "d")).unwrap();
        st.apply(&grant("ro", PermKind::Read, "d", "")).unwrap();
        st.apply(&grant_role("alice", "ro")).unwrap();
        assert!(st.check_range(alice, b"a", b"d\0", PermKind::Read).is_ok());
        assert_eq!(
            st.check_range(alice, b"c", b"", PermKind::Write),
            Err(AuthError::PermissionDenied)
        );
        // From-key permission.
        st.apply(&grant("ro", PermKind::Write, "x", "\0")).unwrap();
        assert!(st.check_range(alice, b"y", b"\0", PermKind::Write).is_ok());
        assert!(st.check_range(alice, b"x", b"", PermKind::Write).is_ok());
        assert_eq!(
            st.check_range(alice, b"w", b"\0", PermKind::Write),
            Err(AuthError::PermissionDenied)
        );
        // Admin: only root.
        assert!(st.is_admin(Some("root")).is_ok());
        assert_eq!(st.is_admin(alice), Err(AuthError::PermissionDenied));
        // Deleting a role takes it from its users.
        st.apply(&AuthCommand::RoleDelete { name: s("app") }).unwrap();
        assert_eq!(
            st.check_range(alice, b"a", b"", PermKind::Read),
            Err(AuthError::PermissionDenied)
        );
    }

    #[test]
    fn tokens_are_assigned_through_apply_and_go_with_their_user() {
        let mut st = populated();
        let token = |user: &str, token: &str| AuthCommand::Token {
            user: s(user),
            token: s(token),
        };
        assert_eq!(st.apply(&token("alice", "t1")), Err(AuthError::AuthNotEnabled));
        st.apply(&AuthCommand::Enable).unwrap();
        let revision = st.revision;
        st.apply(&token("alice", "t1")).unwrap();
        st.apply(&token("root", "t2")).unwrap();
        assert_eq!(st.revision, revision, "a login is not a change of the store");
        assert_eq!(st.apply(&token("bob", "t3")), Err(AuthError::AuthFailed));
        let clone = st.clone();
        assert_eq!(
            clone.tokens.0.user("t1").as_deref(),
            Some("alice"),
            "clones share tokens"
        );
        assert_eq!(st.tokens.0.user("t3"), None);
        st.apply(&AuthCommand::UserChangePassword {
            name: s("alice"),
            password_hash: s("$2b$04$other"),
        })
        .unwrap();
        assert_eq!(st.tokens.0.user("t1"), None);
        assert_eq!(st.tokens.0.user("t2").as_deref(), Some("root"));
        st.apply(&AuthCommand::Disable).unwrap();
        assert_eq!(st.tokens.0.user("t2"), None);
        let decoded = AuthState::decode(st.encode()).unwrap();
        assert_eq!(decoded, st);
    }

    #[test]
    fn a_token_expires_its_ttl_after_its_last_use() {
        let tokens = Tokens::with_ttl(Duration::from_millis(300));
        tokens.assign("alice", "t1");
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(150));
            assert_eq!(tokens.user("t1").as_deref(), Some("alice"), "use extends it");
        }
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(tokens.user("t1"), None);
    }

    #[test]
    fn commands_and_state_round_trip_and_bad_bytes_are_refused() {
        let st = populated();
        assert_eq!(AuthState::decode(st.encode()).unwrap(), st);
        let encoded = st.encode();
        for cut in 0..encoded.len() {
            assert!(AuthState::decode(encoded.slice(..cut)).is_err(), "cut at {cut}");
        }
        for command in [
            AuthCommand::Enable,
            AuthCommand::Disable,
            user_add("u"),
            AuthCommand::UserAdd {
                name: s("n"),
                password_hash: None,
            },
            grant("r", PermKind::Write, "k", "\0"),
            AuthCommand::Token {
                user: s("u"),
                token: s("abc.1"),
            },
            AuthCommand::RoleRevokePermission {
                role: s("r"),
                key: Bytes::from("k"),
                range_end: Bytes::new(),
            },
        ] {
            let mut out = BytesMut::new();
            command.encode_into(&mut out);
            let mut buf = out.freeze();
            assert_eq!(AuthCommand::decode_from(&mut buf).unwrap(), command);
            assert!(!buf.has_remaining());
        }
    }

    #[test]
    fn the_store_applies_commits_loads_and_snapshots_the_auth_state() {
        use crate::kv::{Engine, KvCommand, KvError, KvResult, KvStore};
        let engine = Engine::in_memory();
        let mut store = KvStore::empty(engine.clone()).unwrap();
        let mut index = 0;
        let mut apply = |store: &mut KvStore, command: AuthCommand| {
            index += 1;
            store.apply(index, &KvCommand::Auth(command))
        };
        assert!(matches!(
            apply(&mut store, user_add("root")),
            KvResult::Auth { .. }
        ));
        assert_eq!(
            apply(&mut store, user_add("root")),
            KvResult::Failed {
                revision: 1,
                error: KvError::Auth(AuthError::UserAlreadyExist)
            }
        );
        apply(&mut store, grant_role("root", "root"));
        apply(&mut store, AuthCommand::RoleAdd { name: s("app") });
        apply(&mut store, grant("app", PermKind::Read, "a", "b"));
        apply(&mut store, AuthCommand::Enable);
        assert!(store.auth().enabled);
        assert_eq!(
            store.revision(),
            1,
            "auth changes do not bump the key-value revision"
        );
        let expected = (**store.auth()).clone();
        // The command survives the log codec.
        let command = KvCommand::Auth(grant("app", PermKind::Write, "k", "\0"));
        assert_eq!(KvCommand::decode(command.encode()).unwrap(), command);
        store.commit(true, None).unwrap();
        let (loaded, _) = KvStore::load(engine).unwrap();
        assert_eq!(**loaded.auth(), expected, "restored on load");
        let mut buf = Vec::new();
        store.write_snapshot(&mut buf).unwrap();
        let restored = KvStore::read_snapshot(&mut buf.as_slice()).unwrap();
        assert_eq!(**restored.auth(), expected, "carried in snapshots");
        for cut in [buf.len() - 1, buf.len() - 20] {
            assert!(KvStore::read_snapshot(&mut &buf[..cut]).is_err());
        }
    }
}
