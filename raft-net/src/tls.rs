//! The node's TLS identity: the cluster CA, its own certificate chain and key, loaded from PEM
//! files and checked before anything listens or dials.
//!
//! Both directions are mutual TLS with the ring provider (no OpenSSL). A listener requires a
//! client certificate that chains to the cluster CA; a dialer requires the listener's
//! certificate to chain to the CA and to cover the name or IP the peer is configured with.
//! Which node a certificate may speak for is checked after the handshake
//! ([`certificate_covers`], docs/transport.md).

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the PEM files are.
#[derive(Clone, Debug)]
pub struct TlsPaths {
    /// The cluster CA's certificate: peers must hold certificates it signed.
    pub ca: PathBuf,
    /// This node's certificate chain (leaf first).
    pub cert: PathBuf,
    /// This node's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// What is wrong with the TLS files. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("{path}: cannot read: {reason}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The file holds no certificate or key of the kind wanted.
    #[error("{path}: no {what} found in the PEM file")]
    Empty {
        /// The file.
        path: PathBuf,
        /// What was looked for.
        what: &'static str,
    },
    /// A certificate does not parse.
    #[error("{path}: not a valid X.509 certificate: {reason}")]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A certificate is outside its validity period.
    #[error("{path}: the certificate is not valid now (valid from {not_before} to {not_after})")]
    Expired {
        /// The file.
        path: PathBuf,
        /// Start of validity.
        not_before: String,
        /// End of validity.
        not_after: String,
    },
    /// The key is not the one the certificate was issued for.
    #[error("{key}: this key does not match the certificate in {cert}")]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// rustls refused the material.
    #[error("{path}: {reason}")]
    Rejected {
        /// The file most likely at fault.
        path: PathBuf,
        /// rustls's reason.
        reason: String,
    },
}

/// The loaded, checked identity: the configurations for both sides of a connection.
#[derive(Clone)]
pub struct TlsIdentity {
    pub(crate) server: Arc<ServerConfig>,
    pub(crate) client: Arc<ClientConfig>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsIdentity")
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let unreadable = |reason: String| TlsError::Unreadable { path: path.into(), reason };
    let bytes = std::fs::read(path).map_err(|e| unreadable(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Empty { path: path.into(), what: "CERTIFICATE" });
    }
    for cert in &certs {
        check_validity(path, cert)?;
    }
    Ok(certs)
}

fn check_validity(path: &Path, cert: &CertificateDer<'_>) -> Result<(), TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| TlsError::BadCertificate { path: path.into(), reason: e.to_string() })?;
    let validity = parsed.validity();
    if !validity.is_valid() {
        return Err(TlsError::Expired {
            path: path.into(),
            not_before: validity.not_before.to_string(),
            not_after: validity.not_after.to_string(),
        });
    }
    Ok(())
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path)
        .map_err(|e| TlsError::Unreadable { path: path.into(), reason: e.to_string() })?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|_| TlsError::Empty { path: path.into(), what: "PRIVATE KEY" })
}

/// Fails unless `key` (read from `key_path`) is the private half of the public key of
/// `leaf` (read from `cert_path`).
fn check_key_matches(
    (cert_path, leaf): (&Path, &CertificateDer<'_>),
    (key_path, key): (&Path, &PrivateKeyDer<'_>),
) -> Result<(), TlsError> {
    let signing = provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| TlsError::Rejected { path: key_path.into(), reason: e.to_string() })?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| TlsError::BadCertificate { path: cert_path.into(), reason: e.to_string() })?;
    let from_cert = parsed.tbs_certificate.subject_pki.raw;
    match signing.public_key() {
        Some(from_key) if from_key.as_ref() == from_cert => Ok(()),
        _ => Err(TlsError::KeyMismatch { key: key_path.into(), cert: cert_path.into() }),
    }
}

/// The roots `ca` (a PEM file of certificates) holds.
fn roots(ca: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::Rejected { path: ca.into(), reason: e.to_string() })?;
    }
    Ok(roots)
}

/// What rustls said against the material in `path`.
fn rejected(path: &Path) -> impl FnOnce(rustls::Error) -> TlsError {
    let path = path.to_path_buf();
    move |e| TlsError::Rejected { path, reason: e.to_string() }
}

/// A listener's rustls configuration: the certificate `chain` and its `key` (both from the
/// file `cert`); with `client_roots` (read from the file `ca`), a client must present a
/// certificate that chains to them, and without, none is asked for.
fn listener_config(
    (cert, chain, key): (&Path, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
    client_roots: Option<(&Path, Arc<RootCertStore>)>,
) -> Result<ServerConfig, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rejected(cert))?;
    let builder = match client_roots {
        Some((ca, roots)) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(roots, provider())
                    .build()
                    .map_err(|e| TlsError::Rejected { path: ca.into(), reason: e.to_string() })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder.with_single_cert(chain, key).map_err(rejected(cert))
}

/// The rustls configuration of a listener for clients (the gRPC API), checked as a peer
/// identity is: `cert` (chain, leaf first) and its `key`; with `client_ca`, a client must
/// present a certificate that chains to it, and without, none is asked for. It offers the
/// application protocols `alpn` (HTTP/2 is `h2`).
pub fn client_listener_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certificates(cert)?;
    let private = private_key(key)?;
    check_key_matches((cert, &chain[0]), (key, &private))?;
    let client_roots = client_ca.map(|ca| roots(ca).map(|roots| (ca, Arc::new(roots))));
    let mut config = listener_config((cert, chain, private), client_roots.transpose()?)?;
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Ok(Arc::new(config))
}

impl TlsIdentity {
    /// Loads and checks the files: each must be readable PEM, every certificate valid now, the
    /// key must match the leaf certificate.
    pub fn load(paths: &TlsPaths) -> Result<TlsIdentity, TlsError> {
        let roots = roots(&paths.ca)?;
        let chain = certificates(&paths.cert)?;
        let key = private_key(&paths.key)?;
        check_key_matches((&paths.cert, &chain[0]), (&paths.key, &key))?;
        TlsIdentity::from_parts(Arc::new(roots), chain, key, paths)
    }

    /// The listener's rustls configuration (client certificates required).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// The dialer's rustls configuration (presents this node's certificate).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client.clone()
    }

    fn from_parts(
        roots: Arc<RootCertStore>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        paths: &TlsPaths,
    ) -> Result<TlsIdentity, TlsError> {
        let server = listener_config(
            (&paths.cert, chain.clone(), key.clone_key()),
            Some((&paths.ca, roots.clone())),
        )?;
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(rejected(&paths.cert))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(rejected(&paths.key))?;
        Ok(TlsIdentity { server: Arc::new(server), client: Arc::new(client) })
    }
}

/// Whether `cert` may be used by a TLS server: its extended key usage allows server
/// authentication (or it names no usage at all, which allows every usage).
pub fn may_serve_tls(cert: &CertificateDer<'_>) -> bool {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert) else { return false };
    match parsed.extended_key_usage() {
        Ok(Some(usage)) => usage.value.server_auth || usage.value.any,
        Ok(None) => true,
        Err(_) => false,
    }
}

/// Whether `cert` is valid for `host` (a DNS name or an IP address), by its subject
/// alternative names, as a TLS client checks a server.
pub fn certificate_covers(cert: &CertificateDer<'_>, host: &str) -> bool {
    let Ok(name) = ServerName::try_from(host) else { return false };
    let Ok(cert) = webpki::EndEntityCert::try_from(cert) else { return false };
    cert.verify_is_valid_for_subject_name(&name).is_ok()
}
