//! rustls server configuration from PEM files (TLS 1.2+, ALPN h2, optional client
//! certificates), reloaded when the files change.
//!
//! Kubernetes Secret volumes and cert-manager replace files by swapping a `..data` symlink, so
//! changes are found by polling the files' contents rather than watching inodes.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio_util::sync::CancellationToken;

use crate::config::Problem;

/// A TLS configuration problem, naming the file.
///
/// Each message carries its cause in full, and no variant also reports it as `source()`: a
/// printer that walks the chain would repeat it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: std::io::Error,
    },
    /// A PEM file held nothing usable.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
    /// rustls refused the combination (e.g. key does not match certificate).
    #[error("certificate {cert} with key {key}: {reason}")]
    Config {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
        /// rustls's reason.
        reason: rustls::Error,
    },
    /// The client CA bundle could not build a verifier.
    #[error("client CA {path}: {what}")]
    ClientCa {
        /// The CA file.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
}

/// The PEM files of a TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA bundle for client certificates; `None`: no client authentication.
    pub client_ca: Option<PathBuf>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|reason| TlsError::Read {
        path: path.to_path_buf(),
        reason,
    })
}

fn pem_error(path: &Path, what: impl ToString) -> TlsError {
    TlsError::Pem {
        path: path.to_path_buf(),
        what: what.to_string(),
    }
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| pem_error(path, format!("invalid PEM: {err}")))?;
    if certs.is_empty() {
        return Err(pem_error(path, "no CERTIFICATE block found"));
    }
    Ok(certs)
}

/// The process-wide rustls crypto provider: the one installed (a custom server's `main` may have
/// chosen its own), else ring, installed now. Called at start ([`crate::App::builder`]) so that
/// everything speaking TLS uses the same one: these listeners, tonic's OTLP channel, reqwest's
/// JWKS and OTLP/HTTP clients (which panic when none is installed).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    if let Some(installed) = CryptoProvider::get_default() {
        return installed.clone();
    }
    // Losing a race to another installer is fine: the winner is the default either way.
    let _ = rustls::crypto::ring::default_provider().install_default();
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

impl TlsFiles {
    /// The current contents of every file, to notice changes.
    fn contents(&self) -> Result<Vec<Vec<u8>>, TlsError> {
        let mut all = vec![read(&self.cert)?, read(&self.key)?];
        if let Some(ca) = &self.client_ca {
            all.push(read(ca)?);
        }
        Ok(all)
    }

    /// Checks that the files make a server configuration, as the server will at start.
    ///
    /// # Errors
    /// The problem, keyed by the setting of the file at fault.
    pub fn check(&self) -> Result<(), Problem> {
        self.server_config()
            .map(drop)
            .map_err(|err| self.problem(&err))
    }

    /// `err` as a configuration problem: under the key of the file at fault, with the key and
    /// certificate named when they do not belong together.
    pub fn problem(&self, err: &TlsError) -> Problem {
        let key_of = |path: &Path| {
            if path == self.key {
                "tls_key"
            } else if Some(path) == self.client_ca.as_deref() {
                "tls_client_ca"
            } else {
                "tls_cert"
            }
        };
        match err {
            TlsError::Read { path, .. } | TlsError::Pem { path, .. } => {
                Problem::new(key_of(path), err.to_string())
            }
            TlsError::ClientCa { .. } => Problem::new("tls_client_ca", err.to_string()),
            TlsError::Config {
                cert,
                key,
                reason: rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch),
            } => Problem::new(
                "tls_key",
                format!(
                    "the key in {} does not match the certificate in {}",
                    key.display(),
                    cert.display()
                ),
            ),
            TlsError::Config { .. } => Problem::new("tls_cert", err.to_string()),
        }
    }

    /// Builds a server configuration from the files.
    ///
    /// # Errors
    /// A [`TlsError`] naming the file at fault.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        self.build(&self.contents()?)
    }

    fn build(&self, contents: &[Vec<u8>]) -> Result<Arc<ServerConfig>, TlsError> {
        let chain = certificates(&self.cert, &contents[0])?;
        let key = PrivateKeyDer::from_pem_slice(&contents[1])
            .map_err(|err| pem_error(&self.key, format!("no usable private key: {err}")))?;
        let provider = crypto_provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|reason| TlsError::Config {
                cert: self.cert.clone(),
                key: self.key.clone(),
                reason,
            })?;
        let builder = match (&self.client_ca, contents.get(2)) {
            (Some(path), Some(pem)) => {
                let mut roots = RootCertStore::empty();
                for cert in certificates(path, pem)? {
                    roots.add(cert).map_err(|err| TlsError::ClientCa {
                        path: path.clone(),
                        what: err.to_string(),
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|err| TlsError::ClientCa {
                            path: path.clone(),
                            what: err.to_string(),
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config =
            builder
                .with_single_cert(chain, key)
                .map_err(|reason| TlsError::Config {
                    cert: self.cert.clone(),
                    key: self.key.clone(),
                    reason,
                })?;
        // gRPC is HTTP/2 only.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The TLS configuration in force, swapped when the files change; new connections get the
/// newest certificate, established ones keep theirs.
#[derive(Debug)]
pub struct ReloadingConfig {
    files: TlsFiles,
    current: ArcSwap<ServerConfig>,
    contents: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl ReloadingConfig {
    /// Loads the files once.
    ///
    /// # Errors
    /// A [`TlsError`] naming the file at fault.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let contents = files.contents()?;
        let config = files.build(&contents)?;
        Ok(Arc::new(Self {
            files,
            current: ArcSwap::new(config),
            contents: std::sync::Mutex::new(contents),
        }))
    }

    /// The configuration for the next handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Re-reads the files; swaps the configuration when they changed and still make a valid
    /// one. Returns whether it swapped.
    ///
    /// # Errors
    /// When the changed files do not make a valid configuration (the old one stays).
    pub fn reload(&self) -> Result<bool, TlsError> {
        let contents = self.files.contents()?;
        let mut known = self
            .contents
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *known == contents {
            return Ok(false);
        }
        let config = self.files.build(&contents)?;
        self.current.store(config);
        *known = contents;
        Ok(true)
    }

    /// Polls the files every `interval` until `stop` is cancelled.
    pub async fn watch(self: Arc<Self>, interval: Duration, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            match self.reload() {
                Ok(true) => {
                    tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded")
                }
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "TLS files changed but cannot be used; keeping the previous certificate")
                }
            }
        }
    }
}
