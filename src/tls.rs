//! rustls server configuration from PEM files (TLS 1.2+, ALPN h2, optional client
//! certificates), reloaded when the files change ([`crate::watch`]: their contents are polled,
//! as Kubernetes Secret volumes and cert-manager swap a `..data` symlink).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio_util::sync::CancellationToken;

use crate::{
    config::Problem,
    watch::{FileReads, Watched},
};

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

fn read(files: &mut FileReads, path: &Path) -> Result<Vec<u8>, TlsError> {
    files.read(path).map_err(|reason| TlsError::Read {
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
    /// The current contents of every file, read through `files`.
    fn contents(&self, files: &mut FileReads) -> Result<Vec<Vec<u8>>, TlsError> {
        let mut all = vec![read(files, &self.cert)?, read(files, &self.key)?];
        if let Some(ca) = &self.client_ca {
            all.push(read(files, ca)?);
        }
        Ok(all)
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

    /// A server configuration from the files, read through `files`.
    fn load(&self, files: &mut FileReads) -> Result<ServerConfig, TlsError> {
        self.build(&self.contents(files)?)
    }

    fn build(&self, contents: &[Vec<u8>]) -> Result<ServerConfig, TlsError> {
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
        Ok(config)
    }
}

/// The TLS configuration in force, swapped when the files change; new connections get the
/// newest certificate, established ones keep theirs.
#[derive(Debug)]
pub struct ReloadingConfig {
    current: Watched<ServerConfig>,
}

impl ReloadingConfig {
    /// Loads the files once.
    ///
    /// # Errors
    /// A [`TlsError`] naming the file at fault.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let cert = files.cert.clone();
        let current = Watched::load(
            move |reads| files.load(reads),
            move |outcome, _| match outcome {
                Ok(_) => tracing::info!(cert = %cert.display(), "TLS certificate reloaded"),
                Err(err) => tracing::warn!(
                    error = %err,
                    "TLS files changed but cannot be used; keeping the previous certificate"
                ),
            },
        )?;
        Ok(Arc::new(Self { current }))
    }

    /// The configuration for the next handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.current()
    }

    /// Compares the files every `interval` in the background until `stop` is cancelled (or the
    /// configuration is dropped); a change that makes a valid configuration is swapped in.
    pub fn watch(&self, interval: Duration, stop: &CancellationToken) {
        self.current.poll(interval, stop);
    }
}
