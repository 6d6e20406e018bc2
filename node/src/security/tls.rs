//! TLS with rustls (ring) on the client and peer ports.
//!
//! The server side accepts TCP connections itself and hands finished TLS streams to
//! tonic (`serve_with_incoming_shutdown`), so it controls three things tonic's own TLS
//! does not: the certificate, key and CA are re-read when their files change (checked
//! at most once a second, on a new connection; connections already open keep the
//! session they have), a half-written rotation keeps the previous files in use, and
//! the verified client certificate's subject CN travels with every request
//! ([`ConnInfo`]) for the authentication layer.
//!
//! Bounds: at most [`HANDSHAKES_MAX`] handshakes run at once per port, each within
//! [`HANDSHAKE_TIMEOUT`]; a connection past that is closed.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use super::authority::AuthorityFilter;
use super::{Error, Result, COUNTERS};

/// Handshakes in progress at once on one port.
pub const HANDSHAKES_MAX: usize = 256;
/// Time a client has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Changed certificate files are noticed within this long (on the next connection).
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The files of one TLS identity and the CA it trusts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
}

/// Whether a server asks for client certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificates.
    None,
    /// Verified against the CA when presented (they then name the caller).
    Optional,
    /// Refused without a certificate that chains to the CA.
    Required,
}

/// Which listener, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    Client,
    Peer,
}

impl Port {
    fn name(self) -> &'static str {
        match self {
            Port::Client => "client",
            Port::Peer => "peer",
        }
    }

    /// Where `/metrics` shows the expiry of the certificate this port serves.
    fn expiry(self) -> &'static std::sync::atomic::AtomicU64 {
        match self {
            Port::Client => &COUNTERS.client_certificate_not_after,
            Port::Peer => &COUNTERS.peer_certificate_not_after,
        }
    }
}

/// Records the expiry (Unix seconds) of the leaf certificate in `path` for `port`.
fn record_expiry(path: &Path, port: Port) {
    let not_after = read_certs(path).ok().and_then(|certs| {
        let (_, cert) = x509_parser::parse_x509_certificate(&certs[0]).ok()?;
        u64::try_from(cert.validity().not_after.timestamp()).ok()
    });
    port.expiry().store(not_after.unwrap_or(0), Ordering::Relaxed);
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn invalid(path: &Path, reason: impl ToString) -> Error {
    Error::Invalid {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// The certificates in a PEM file (a chain: leaf first).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| invalid(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, e))?;
    if certs.is_empty() {
        return Err(invalid(path, "no certificate in the file"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| invalid(path, format!("no usable private key: {e}")))
}

fn read_roots(path: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert).map_err(|e| invalid(path, e))?;
    }
    Ok(roots)
}

/// What identifies a file's content without reading it: a rotation (rewrite, rename
/// or Kubernetes' symlink swap) changes one of these.
type Fingerprint = Vec<Option<(SystemTime, u64, u64)>>;

fn fingerprint(paths: &[&Path]) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), m.ino()))
        })
        .collect()
}

impl TlsFiles {
    fn paths(&self) -> Vec<&Path> {
        let mut paths = vec![self.cert.as_path(), self.key.as_path()];
        paths.extend(self.ca.as_deref());
        paths
    }

    /// A rustls server configuration from the files as they are now.
    pub fn server_config(&self, client_auth: ClientAuth) -> Result<ServerConfig> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?;
        let builder = match (client_auth, &self.ca) {
            (ClientAuth::None, _) => builder.with_no_client_auth(),
            (_, None) => return Err(Error::Tls("client certificates need a trusted CA file".into())),
            (mode, Some(ca)) => {
                let roots = Arc::new(read_roots(ca)?);
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider());
                let verifier = if mode == ClientAuth::Optional {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                builder.with_client_cert_verifier(verifier.build().map_err(|e| invalid(ca, e))?)
            }
        };
        let mut config = builder
            .with_single_cert(read_certs(&self.cert)?, read_key(&self.key)?)
            .map_err(|e| invalid(&self.key, format!("does not match the certificate: {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

struct Loaded {
    fingerprint: Fingerprint,
    config: Arc<ServerConfig>,
    checked: Instant,
}

/// A server configuration that follows its files: re-read when they change; if the
/// new files cannot be used (a rotation half done), the previous ones stay in use.
pub struct ReloadingServerConfig {
    files: TlsFiles,
    client_auth: ClientAuth,
    port: Port,
    loaded: Mutex<Loaded>,
}

impl ReloadingServerConfig {
    pub fn new(files: TlsFiles, client_auth: ClientAuth, port: Port) -> Result<Arc<Self>> {
        let fingerprint = fingerprint(&files.paths());
        let config = Arc::new(files.server_config(client_auth)?);
        record_expiry(&files.cert, port);
        Ok(Arc::new(ReloadingServerConfig {
            files,
            client_auth,
            port,
            loaded: Mutex::new(Loaded {
                fingerprint,
                config,
                checked: Instant::now(),
            }),
        }))
    }

    /// The configuration for a new connection.
    pub fn current(&self) -> Arc<ServerConfig> {
        let mut loaded = self.loaded.lock().expect("not poisoned");
        if loaded.checked.elapsed() < RELOAD_CHECK_INTERVAL {
            return loaded.config.clone();
        }
        loaded.checked = Instant::now();
        let now = fingerprint(&self.files.paths());
        if now != loaded.fingerprint {
            match self.files.server_config(self.client_auth) {
                Ok(config) => {
                    tracing::info!(port = self.port.name(), cert = %self.files.cert.display(), "certificate files changed: reloaded");
                    COUNTERS.certificate_reloads.fetch_add(1, Ordering::Relaxed);
                    record_expiry(&self.files.cert, self.port);
                    loaded.config = Arc::new(config);
                    loaded.fingerprint = now;
                }
                Err(e) => {
                    // Not recorded as seen: tried again on a later connection.
                    tracing::warn!(port = self.port.name(), error = %e, "changed certificate files cannot be used yet; keeping the previous ones");
                    COUNTERS
                        .certificate_reload_failures
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        loaded.config.clone()
    }
}

/// What the services learn about the connection a request came on.
#[derive(Clone, Debug, Default)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    /// Subject CN of the client certificate, verified against the trusted CA.
    pub certificate_identity: Option<Arc<str>>,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// An accepted connection, plain or TLS. What the client sends passes through an
/// [`AuthorityFilter`] (etcd clients' malformed `:authority`; a no-op for every other
/// client once its first request is seen).
pub struct Conn {
    io: Io,
    info: ConnInfo,
    filter: AuthorityFilter,
    /// Bytes read from the socket while the filter examines the connection.
    scratch: Box<[u8]>,
}

impl Conn {
    fn new(io: Io, info: ConnInfo) -> Conn {
        Conn {
            io,
            info,
            filter: AuthorityFilter::new(),
            scratch: Box::default(),
        }
    }
}

impl Io {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.filter.has_output() {
                let n = this.filter.read_output(buf.initialize_unfilled());
                buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.filter.passes_through() {
                if !this.scratch.is_empty() {
                    this.scratch = Box::default();
                }
                return this.io.poll_read(cx, buf);
            }
            if this.scratch.is_empty() {
                this.scratch = vec![0; 16 * 1024].into_boxed_slice();
            }
            let mut read = ReadBuf::new(&mut this.scratch);
            std::task::ready!(this.io.poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.filter.finish();
                if this.filter.has_output() {
                    continue;
                }
                return Poll::Ready(Ok(()));
            }
            let filled = read.filled().len();
            this.filter.feed(&this.scratch[..filled])?;
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// The subject common name of a DER certificate.
pub fn subject_cn(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    Some(cn.to_string())
}

/// Binds `addr` and yields its connections, through a TLS handshake when `tls` is set.
/// The listener closes when the returned stream is dropped.
pub async fn incoming(
    addr: SocketAddr,
    tls: Option<Arc<ReloadingServerConfig>>,
) -> io::Result<ReceiverStream<io::Result<Conn>>> {
    let listener = TcpListener::bind(addr).await?;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, tls, tx));
    Ok(ReceiverStream::new(rx))
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<ReloadingServerConfig>>,
    tx: mpsc::Sender<io::Result<Conn>>,
) {
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_MAX));
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = tx.closed() => return,
        };
        let _ = stream.set_nodelay(true);
        let Some(tls) = &tls else {
            let info = ConnInfo {
                remote: Some(remote),
                certificate_identity: None,
            };
            let conn = Conn::new(Io::Plain(stream), info);
            if tx.send(Ok(conn)).await.is_err() {
                return;
            }
            continue;
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            tracing::warn!(%remote, "too many TLS handshakes in progress: connection closed");
            continue;
        };
        let (tls, tx) = (tls.clone(), tx.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let port = tls.port;
            let acceptor = TlsAcceptor::from(tls.current());
            let failure = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let certificate_identity = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|certs| certs.first())
                        .and_then(|leaf| subject_cn(leaf))
                        .map(Arc::from);
                    let info = ConnInfo {
                        remote: Some(remote),
                        certificate_identity,
                    };
                    let conn = Conn::new(Io::Tls(Box::new(stream)), info);
                    let _ = tx.send(Ok(conn)).await;
                    return;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("not finished within {HANDSHAKE_TIMEOUT:?}"),
            };
            let counter = match port {
                Port::Client => &COUNTERS.client_handshake_failures,
                Port::Peer => &COUNTERS.peer_handshake_failures,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            tracing::info!(port = port.name(), %remote, error = %failure, "TLS handshake refused");
        });
    }
}

/// What a member uses when it connects out over TLS: the CA to verify the server
/// with and, for mutual TLS, its own certificate. Files are read at each connection,
/// so a rotated certificate is used from the next connection on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTlsFiles {
    pub ca: Option<PathBuf>,
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl ClientTlsFiles {
    pub fn config(&self) -> Result<tonic::transport::ClientTlsConfig> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| Error::Io {
                path: path.display().to_string(),
                source,
            })
        };
        let mut config = tonic::transport::ClientTlsConfig::new();
        if let Some(ca) = &self.ca {
            config = config.ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
        }
        if let Some((cert, key)) = &self.identity {
            config = config.identity(tonic::transport::Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(config)
    }

    /// An endpoint for `url`, with TLS when it is an https:// URL.
    pub fn endpoint(this: Option<&Self>, url: &str) -> Result<tonic::transport::Endpoint> {
        let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
            .map_err(|e| Error::Tls(format!("bad URL {url:?}: {e}")))?;
        if !url.starts_with("https://") {
            return Ok(endpoint);
        }
        let Some(files) = this else {
            return Err(Error::Tls(format!(
                "{url} needs TLS, and this member has no TLS client settings"
            )));
        };
        endpoint
            .tls_config(files.config()?)
            .map_err(|e| Error::Tls(e.to_string()))
    }
}

/// How this member connects to other members' client ports (to forward a request to
/// the leader): set once at start-up by the server.
static CLIENT_PORT_TLS: OnceLock<ClientTlsFiles> = OnceLock::new();

pub fn set_client_port_tls(files: ClientTlsFiles) {
    let _ = CLIENT_PORT_TLS.set(files);
}

/// How this member dials other members' peer ports outside the Raft streams (the
/// member list when joining, publishing its attributes): set once at start-up.
static PEER_PORT_TLS: OnceLock<ClientTlsFiles> = OnceLock::new();

pub fn set_peer_port_tls(files: ClientTlsFiles) {
    let _ = PEER_PORT_TLS.set(files);
}

/// An endpoint for another member's peer URL (mutual TLS when it is https://).
pub fn peer_port_endpoint(url: &str) -> Result<tonic::transport::Endpoint> {
    ClientTlsFiles::endpoint(PEER_PORT_TLS.get(), url)
}

/// An endpoint for another member's client URL (https:// when the cluster uses TLS).
pub fn client_port_endpoint(url: &str) -> Result<tonic::transport::Endpoint, tonic::Status> {
    ClientTlsFiles::endpoint(CLIENT_PORT_TLS.get(), url)
        .map_err(|e| tonic::Status::unavailable(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue(ca: &rcgen::Certificate, ca_key: &rcgen::KeyPair) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let cert = params.signed_by(&key, ca, ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn write(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn a_half_done_rotation_keeps_the_previous_certificate_until_the_key_matches() {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&ca_key).unwrap();
        let files = TlsFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            ca: Some(dir.path().join("ca.crt")),
        };
        write(files.ca.as_ref().unwrap(), &ca.pem());
        let (cert_a, key_a) = issue(&ca, &ca_key);
        write(&files.cert, &cert_a);
        write(&files.key, &key_a);
        let server = ReloadingServerConfig::new(files.clone(), ClientAuth::Required, Port::Client).unwrap();
        let first = server.current();
        assert!(
            Arc::ptr_eq(&first, &server.current()),
            "unchanged files: the same config"
        );

        // The new certificate is there, its key not yet.
        let (cert_b, key_b) = issue(&ca, &ca_key);
        write(&files.cert, &cert_b);
        std::thread::sleep(RELOAD_CHECK_INTERVAL + Duration::from_millis(100));
        assert!(
            Arc::ptr_eq(&first, &server.current()),
            "a mismatched pair is not used"
        );

        write(&files.key, &key_b);
        std::thread::sleep(RELOAD_CHECK_INTERVAL + Duration::from_millis(100));
        let second = server.current();
        assert!(!Arc::ptr_eq(&first, &second), "the completed rotation is used");
    }

    #[test]
    fn missing_or_bad_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("missing.crt"),
            key: dir.path().join("missing.key"),
            ca: None,
        };
        let error = files.server_config(ClientAuth::None).unwrap_err().to_string();
        assert!(error.contains("missing.crt"), "{error}");
        std::fs::write(&files.cert, "not a certificate").unwrap();
        let error = files.server_config(ClientAuth::None).unwrap_err().to_string();
        assert!(
            error.contains("missing.crt") && error.contains("no certificate"),
            "{error}"
        );
    }
}
