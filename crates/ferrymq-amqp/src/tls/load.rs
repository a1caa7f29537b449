//! PEM files to a rustls server configuration.

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// Largest PEM file read. Certificate chains and keys are a few KiB; a bound keeps a wrong
/// path (a log file, a disk image) from being read whole into memory.
pub const MAX_PEM_FILE: u64 = 1024 * 1024;

/// Where the certificate, key and client CA bundle are, and whether clients must present a
/// certificate (RabbitMQ's `ssl_options`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM certificate chain, the server's certificate first (RabbitMQ's `certfile`).
    pub certfile: PathBuf,
    /// PEM private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC) (RabbitMQ's `keyfile`).
    pub keyfile: PathBuf,
    /// PEM bundle of the CAs client certificates must chain to (RabbitMQ's `cacertfile`).
    pub cacertfile: Option<PathBuf>,
    /// Ask clients for a certificate and verify it if they send one (`verify_peer`).
    pub verify_peer: bool,
    /// With `verify_peer`, refuse clients that send no certificate.
    pub fail_if_no_peer_cert: bool,
}

/// Why a TLS configuration could not be built.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is larger than [`MAX_PEM_FILE`].
    #[error("{} is larger than {MAX_PEM_FILE} bytes, not a PEM certificate or key", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// A file is not valid PEM, or holds none of what was looked for.
    #[error("{}: {what}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The certificate and key do not go together, or rustls cannot use them.
    #[error("certificate {} with key {}: {source}", cert.display(), key.display())]
    Identity {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
    /// The client CA bundle cannot be used.
    #[error("CA bundle {}: {what}", path.display())]
    CaBundle {
        /// The CA file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The settings contradict each other.
    #[error("{0}")]
    Settings(String),
}

/// Builds the rustls configuration `s` describes: TLS 1.2 and 1.3 with the ring provider,
/// and a client certificate verifier when `verify_peer` is set.
pub fn server_config(s: &TlsSettings) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Settings(format!("TLS versions: {e}")))?;
    let builder = match (s.verify_peer, &s.cacertfile) {
        (false, _) if s.fail_if_no_peer_cert => {
            return Err(TlsError::Settings(
                "fail_if_no_peer_cert needs verify = \"verify_peer\"".into(),
            ))
        }
        (false, _) => builder.with_no_client_auth(),
        (true, None) => {
            return Err(TlsError::Settings(
                "verify = \"verify_peer\" needs cacertfile, the CAs client certificates are checked against".into(),
            ))
        }
        (true, Some(ca)) => {
            let mut roots = RootCertStore::empty();
            for c in certificates(ca)? {
                roots.add(c).map_err(|e| TlsError::CaBundle {
                    path: ca.clone(),
                    what: e.to_string(),
                })?;
            }
            let mut v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if !s.fail_if_no_peer_cert {
                v = v.allow_unauthenticated();
            }
            let v = v.build().map_err(|e| TlsError::CaBundle {
                path: ca.clone(),
                what: e.to_string(),
            })?;
            builder.with_client_cert_verifier(v)
        }
    };
    let chain = certificates(&s.certfile)?;
    let key = private_key(&s.keyfile)?;
    let cfg = builder
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Identity {
            cert: s.certfile.clone(),
            key: s.keyfile.clone(),
            source,
        })?;
    Ok(Arc::new(cfg))
}

/// Reads a file of at most [`MAX_PEM_FILE`] bytes.
fn read_bounded(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read_err = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(read_err)?;
    let mut buf = Vec::new();
    // One byte more than allowed tells a file that is too large from one that fits.
    f.take(MAX_PEM_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(read_err)?;
    if buf.len() as u64 > MAX_PEM_FILE {
        return Err(TlsError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(buf)
}

fn pem_error(path: &Path, e: pem::Error) -> TlsError {
    // The file's own bytes are shown as text, shortened (pki-types prints them as numbers).
    let text = |b: &[u8]| String::from_utf8_lossy(&b[..b.len().min(64)]).into_owned();
    TlsError::Pem {
        path: path.to_path_buf(),
        what: match e {
            pem::Error::NoItemsFound => "no PEM section of the expected kind".into(),
            pem::Error::MissingSectionEnd { end_marker } => {
                format!("bad PEM: no '-----END {}-----' line", text(&end_marker))
            }
            pem::Error::IllegalSectionStart { line } => {
                format!("bad PEM: malformed line '{}'", text(&line))
            }
            e => format!("bad PEM: {e}"),
        },
    }
}

/// Every certificate in a PEM file, in file order; at least one.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_bounded(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(pem_error(path, pem::Error::NoItemsFound));
    }
    Ok(certs)
}

/// The first private key in a PEM file.
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_bounded(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| pem_error(path, e))
}
