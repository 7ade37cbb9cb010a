//! Transport security shared by grantd and its clients: PEM files in,
//! tonic TLS settings out, and workload identity the SPIFFE way (an
//! X.509-SVID names its workload in exactly one `spiffe://` URI SAN).
//!
//! Servers are verified like SPIFFE workloads, not web sites: the chain
//! must lead to the configured CA bundle, and the certificate's SPIFFE ID
//! must satisfy the caller's rule (in the trust domain, or a peer's role).
//! No DNS name is required, so certificates from SPIRE work as they are.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, TrustAnchor, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
    #[error("certificate carries no SPIFFE ID (a spiffe:// URI SAN)")]
    NoSpiffeId,
    #[error("certificate carries {0} URI SANs; an X.509-SVID has exactly one")]
    SeveralUris(usize),
    #[error("certificate cannot be parsed: {0}")]
    Parse(String),
    #[error("{0}")]
    Config(String),
}

/// The SPIFFE ID of a certificate: its single URI SAN, which must be a
/// `spiffe://` URI. Anything else (none, several, another scheme) is an
/// error: such a certificate names no single workload.
pub fn spiffe_id_of(der: &[u8]) -> Result<String, TlsError> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::Parse(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::Parse(e.to_string()))?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|s| s.value.general_names.iter())
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err(TlsError::NoSpiffeId),
        [one] if one.starts_with("spiffe://") => Ok(one.to_string()),
        [_] => Err(TlsError::NoSpiffeId),
        more => Err(TlsError::SeveralUris(more.len())),
    }
}

/// `example.org` of `spiffe://example.org/a/b`.
pub fn trust_domain_of(id: &str) -> Option<&str> {
    let rest = id.strip_prefix("spiffe://")?;
    Some(rest.split_once('/').map_or(rest, |(td, _)| td))
}

/// Which server identities a client accepts.
pub type AcceptServer = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Where one workload's TLS material lives: the CA bundle it trusts, and
/// its own certificate (chain) and private key, all PEM.
#[derive(Clone, Debug, PartialEq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Loaded and checked TLS material.
#[derive(Clone)]
pub struct Tls {
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    roots: Arc<Vec<TrustAnchor<'static>>>,
    /// The SPIFFE ID of our own certificate.
    pub id: String,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("id", &self.id).finish()
    }
}

/// The trust anchors of a PEM CA bundle (at least one).
fn parse_roots(path: &Path, pem: &[u8]) -> Result<Vec<TrustAnchor<'static>>, TlsError> {
    let bad = |msg: String| TlsError::File {
        path: path.into(),
        msg,
    };
    let mut roots = Vec::new();
    for c in CertificateDer::pem_slice_iter(pem) {
        let c = c.map_err(|e| bad(e.to_string()))?;
        let anchor = webpki::anchor_from_trusted_cert(&c)
            .map_err(|e| bad(format!("not a CA certificate: {e}")))?;
        roots.push(anchor.to_owned());
    }
    if roots.is_empty() {
        return Err(bad("holds no PEM certificate".into()));
    }
    Ok(roots)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        path: path.into(),
        msg: e.to_string(),
    })
}

impl Tls {
    /// Read and check the three files: the bundle holds at least one CA
    /// certificate, the certificate carries one SPIFFE ID, the key parses.
    pub fn load(files: &TlsFiles) -> Result<Tls, TlsError> {
        let bad = |path: &Path, msg: String| TlsError::File {
            path: path.into(),
            msg,
        };
        let ca_pem = read(&files.ca)?;
        let cert_pem = read(&files.cert)?;
        let key_pem = read(&files.key)?;
        let roots = parse_roots(&files.ca, &ca_pem)?;
        let leaf = CertificateDer::pem_slice_iter(&cert_pem)
            .next()
            .ok_or_else(|| bad(&files.cert, "holds no PEM certificate".into()))?
            .map_err(|e| bad(&files.cert, e.to_string()))?;
        let id = spiffe_id_of(&leaf).map_err(|e| bad(&files.cert, e.to_string()))?;
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| bad(&files.key, e.to_string()))?;
        Ok(Tls {
            ca_pem,
            cert_pem,
            key_pem,
            roots: Arc::new(roots),
            id,
        })
    }

    /// Only a CA bundle, no identity of our own: for a client that presents
    /// a bearer token instead of a certificate.
    pub fn ca_only(ca: &Path) -> Result<Tls, TlsError> {
        let ca_pem = read(ca)?;
        let roots = parse_roots(ca, &ca_pem)?;
        Ok(Tls {
            ca_pem,
            cert_pem: Vec::new(),
            key_pem: Vec::new(),
            roots: Arc::new(roots),
            id: String::new(),
        })
    }

    /// The trust domain of our own identity ("" without one).
    pub fn trust_domain(&self) -> &str {
        trust_domain_of(&self.id).unwrap_or_default()
    }

    /// A server that requires a client certificate chaining to the bundle
    /// (unknown CA, expired, or no certificate: the handshake fails).
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
    }

    /// Make `endpoint` (an `https://` URI) present our certificate and
    /// accept only a server whose chain leads to the bundle and whose
    /// SPIFFE ID `accept` allows.
    pub fn client_endpoint(
        &self,
        endpoint: Endpoint,
        accept: AcceptServer,
    ) -> Result<Endpoint, TlsError> {
        let verifier = SpiffeServerVerifier {
            roots: self.roots.clone(),
            algs: rustls::crypto::ring::default_provider().signature_verification_algorithms,
            accept,
        };
        let mut config = ClientTlsConfig::new();
        if !self.cert_pem.is_empty() {
            config = config.identity(Identity::from_pem(&self.cert_pem, &self.key_pem));
        }
        endpoint
            .tls_config_with_verifier(config, Arc::new(verifier))
            .map_err(|e| TlsError::Config(e.to_string()))
    }
}

struct SpiffeServerVerifier {
    roots: Arc<Vec<TrustAnchor<'static>>>,
    algs: WebPkiSupportedAlgorithms,
    accept: AcceptServer,
}

impl std::fmt::Debug for SpiffeServerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpiffeServerVerifier")
    }
}

fn cert_error(e: webpki::Error) -> rustls::Error {
    use webpki::Error as E;
    rustls::Error::InvalidCertificate(match e {
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        _ => CertificateError::Other(rustls::OtherError(Arc::new(e))),
    })
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(cert_error)?;
        cert.verify_for_usage(
            self.algs.all,
            &self.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(cert_error)?;
        let id = spiffe_id_of(end_entity).map_err(|e| {
            rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                Arc::new(e),
            )))
        })?;
        if !(self.accept)(&id) {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
