//! HTTPS for `/metrics`: the serving certificate (files given by flags,
//! re-read when they change, or a self-signed one made at start) and a
//! listener that hands axum finished TLS connections.
//!
//! ```text
//!  TcpListener ─accept─► spawn: TLS handshake (≤ 10 s) ─► channel ─► axum::serve
//!                                  │ certificate: FileCert (mtime checked ≤ every 10 s)
//!                                  │           or self-signed (rcgen, at start)
//! ```
//!
//! Handshakes run in their own tasks: a client that connects and says
//! nothing must not hold up the others.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

/// How long a client may take for the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more connections wait in the backlog.
const CONCURRENT_HANDSHAKES: usize = 64;
/// How often the certificate files are checked for a renewal.
const RELOAD_CHECK: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{flag} {path}: {source}")]
    Read {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{flag} {path}: {message}")]
    Invalid {
        flag: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("generating the self-signed serving certificate: {0}")]
    SelfSigned(String),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    // Explicit, not the process default: kube's client and this server
    // then agree on ring whatever else is linked in.
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Where the serving certificate comes from.
#[derive(Clone, Debug)]
pub enum CertSource {
    /// `--tls-cert-file` (PEM chain, leaf first) and `--tls-private-key-file`
    /// (PEM, PKCS#8, PKCS#1 or SEC1), e.g. a mounted kubernetes.io/tls Secret.
    Files { cert: PathBuf, key: PathBuf },
    /// Made at start for these subject alternative names (DNS names or IP
    /// addresses); scrapers cannot verify it (README: "Authenticated metrics").
    SelfSigned { names: Vec<String> },
}

/// The rustls server configuration for `source`; fails on unreadable or
/// invalid files with the flag and path in the message.
pub fn server_config(source: &CertSource) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let resolver: Arc<dyn ResolvesServerCert> = match source {
        CertSource::Files { cert, key } => Arc::new(FileCert::load(cert, key, provider.clone())?),
        CertSource::SelfSigned { names } => {
            let ck = rcgen::generate_simple_self_signed(names.clone())
                .map_err(|e| TlsError::SelfSigned(e.to_string()))?;
            let key = PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
            let signing = provider.key_provider.load_private_key(key)?;
            Arc::new(Fixed(Arc::new(CertifiedKey::new(
                vec![ck.cert.der().clone()],
                signing,
            ))))
        }
    };
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    // Prometheus speaks HTTP/1.1 to scrape targets.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A certificate from files, re-read when their modification times change
/// (a renewed Secret: the kubelet swaps the mounted files atomically).
#[derive(Debug)]
struct FileCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    state: Mutex<FileState>,
}

#[derive(Debug)]
struct FileState {
    current: Arc<CertifiedKey>,
    mtimes: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl FileCert {
    fn load(cert: &Path, key: &Path, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let current = Arc::new(read_pair(cert, key, &provider)?);
        Ok(FileCert {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            state: Mutex::new(FileState {
                current,
                mtimes: (mtime(cert), mtime(key)),
                checked: Instant::now(),
            }),
            provider,
        })
    }
}

impl ResolvesServerCert for FileCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.checked.elapsed() >= RELOAD_CHECK {
            s.checked = Instant::now();
            let now = (mtime(&self.cert), mtime(&self.key));
            if now != s.mtimes {
                // A half-written pair fails to load: keep serving the old
                // one and try again at the next check.
                match read_pair(&self.cert, &self.key, &self.provider) {
                    Ok(ck) => {
                        s.current = Arc::new(ck);
                        s.mtimes = now;
                        tracing::info!(cert = %self.cert.display(), "serving certificate reloaded");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "serving certificate changed but cannot be loaded; keeping the previous one")
                    }
                }
            }
        }
        Some(s.current.clone())
    }
}

fn read_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let read = |flag: &'static str, path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            flag,
            path: path.to_path_buf(),
            source,
        })
    };
    let invalid = |flag: &'static str, path: &Path, message: String| TlsError::Invalid {
        flag,
        path: path.to_path_buf(),
        message,
    };
    let cert_pem = read("--tls-cert-file", cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            invalid(
                "--tls-cert-file",
                cert,
                format!("not PEM certificates: {e}"),
            )
        })?;
    if chain.is_empty() {
        return Err(invalid(
            "--tls-cert-file",
            cert,
            "no CERTIFICATE block found".into(),
        ));
    }
    let key_pem = read("--tls-private-key-file", key)?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        invalid(
            "--tls-private-key-file",
            key,
            format!("no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| invalid("--tls-private-key-file", key, e.to_string()))?;
    let ck = CertifiedKey::new(chain, signing);
    // The key must belong to the leaf certificate, or every handshake
    // would fail later with a less helpful message.
    ck.keys_match().map_err(|e| {
        invalid(
            "--tls-private-key-file",
            key,
            format!("does not match the certificate in {}: {e}", cert.display()),
        )
    })?;
    Ok(ck)
}

/// A listener for axum that yields connections whose TLS handshake is done.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(CONCURRENT_HANDSHAKES);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let limit = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_HANDSHAKES));
        let accept = tokio::spawn(async move {
            loop {
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    return;
                };
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::debug!(error = %e, "metrics listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "metrics: TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "metrics: TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { rx, local, accept })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_certificate_is_made_and_bad_files_are_named() {
        server_config(&CertSource::SelfSigned {
            names: vec!["node-1".into(), "127.0.0.1".into()],
        })
        .expect("self-signed certificate");
        let dir = std::env::temp_dir().join(format!("segwatch-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        let missing = server_config(&CertSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        })
        .expect_err("missing files");
        assert!(
            missing.to_string().starts_with("--tls-cert-file ")
                && missing.to_string().contains("tls.crt"),
            "{missing}"
        );
        let ck = rcgen::generate_simple_self_signed(vec!["a".to_string()]).expect("cert");
        let other = rcgen::generate_simple_self_signed(vec!["b".to_string()]).expect("cert");
        std::fs::write(&cert, ck.cert.pem()).expect("write");
        std::fs::write(&key, "garbage").expect("write");
        let bad = server_config(&CertSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        })
        .expect_err("bad key");
        assert!(
            bad.to_string().starts_with("--tls-private-key-file "),
            "{bad}"
        );
        std::fs::write(&key, other.signing_key.serialize_pem()).expect("write");
        let mismatch = server_config(&CertSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        })
        .expect_err("key of another certificate");
        assert!(
            mismatch.to_string().contains("does not match"),
            "{mismatch}"
        );
        std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write");
        server_config(&CertSource::Files { cert, key }).expect("a matching pair loads");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
